//! One board: its columns and cards, with create / rename / delete / edit, drag-and-drop and keyboard moves.
//!
//! Keyboard: focus a card (Tab), press Space to pick it up, move it with the arrow keys (each press is
//! saved), press Space or Escape to put it down; Enter opens the card editor.

use std::future::Future;

use leptos::prelude::*;
use leptos::task::spawn_local;
use syncline_protocol::moves::Direction;
use syncline_protocol::{
    BoardSnapshot, Card, CardId, Column, ColumnId, CreateCard, CreateColumn, MoveCard, Rename, UpdateCard,
};
use uuid::Uuid;
use wasm_bindgen::JsCast;

use crate::http::{self, CallError};

/// Shared state of the board screen.
#[derive(Clone, Copy)]
struct Ctx {
    id: Uuid,
    snapshot: RwSignal<Option<Result<BoardSnapshot, CallError>>>,
    error: RwSignal<Option<String>>,
    /// The card picked up for keyboard moves.
    picked: RwSignal<Option<CardId>>,
    /// The card whose editor is open.
    editing: RwSignal<Option<CardId>>,
    /// The card being dragged.
    dragging: RwSignal<Option<CardId>>,
}

impl Ctx {
    fn reload(self) -> impl Future<Output = ()> {
        async move {
            let result = http::get::<BoardSnapshot>(format!("/api/boards/{}", self.id)).await;
            self.snapshot.set(Some(result));
        }
    }

    /// Runs a write, shows its error if any, then reloads the board.
    fn write<T: 'static>(self, call: impl Future<Output = Result<T, CallError>> + 'static) {
        self.write_then(call, || {});
    }

    fn write_then<T: 'static>(self, call: impl Future<Output = Result<T, CallError>> + 'static, then: impl FnOnce() + 'static) {
        spawn_local(async move {
            match call.await {
                Ok(_) => self.error.set(None),
                Err(e) => self.error.set(Some(e.0)),
            }
            self.reload().await;
            then();
        });
    }

    fn current(self) -> Option<BoardSnapshot> {
        self.snapshot.get_untracked().and_then(Result::ok)
    }

    fn move_card(self, card: CardId, mv: MoveCard, refocus: bool) {
        self.write_then(http::post::<_, Card>(format!("/api/cards/{card}/move"), mv), move || {
            if refocus {
                focus_card(card);
            }
        });
    }
}

/// Puts keyboard focus back on a card after the board re-rendered.
fn focus_card(card: CardId) {
    request_animation_frame(move || {
        let selector = format!("[data-card-id=\"{card}\"]");
        if let Some(el) = document().query_selector(&selector).ok().flatten() {
            if let Ok(el) = el.dyn_into::<web_sys::HtmlElement>() {
                let _ = el.focus();
            }
        }
    });
}

#[component]
pub fn BoardView(id: Uuid) -> impl IntoView {
    let ctx = Ctx {
        id,
        snapshot: RwSignal::new(None),
        error: RwSignal::new(None),
        picked: RwSignal::new(None),
        editing: RwSignal::new(None),
        dragging: RwSignal::new(None),
    };
    spawn_local(ctx.reload());

    view! {
        <section class="board">
            {move || ctx.error.get().map(|e| view! {
                <p class="error" role="alert">{e}
                    <button class="link" on:click=move |_| ctx.error.set(None)>"Dismiss"</button>
                </p>
            })}
            {move || match ctx.snapshot.get() {
                None => view! { <p class="notice">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! {
                    <p class="error" role="alert">{e.0} " " <a href="#/">"Back to the boards"</a></p>
                }.into_any(),
                Some(Ok(snapshot)) => board_body(ctx, snapshot).into_any(),
            }}
        </section>
    }
}

fn board_body(ctx: Ctx, snapshot: BoardSnapshot) -> impl IntoView {
    let board = snapshot.board.clone();
    let rename_board = move |ev: leptos::ev::Event| {
        let title = event_target_value(&ev);
        ctx.write(http::patch::<_, syncline_protocol::Board>(
            format!("/api/boards/{}", ctx.id),
            Rename { title, base_version: None },
        ));
    };
    let delete_board = move |_| {
        if window().confirm_with_message("Delete this board with all its columns and cards?").unwrap_or(false) {
            spawn_local(async move {
                match http::delete(format!("/api/boards/{}", ctx.id)).await {
                    Ok(()) => crate::navigate("/"),
                    Err(e) => ctx.error.set(Some(e.0)),
                }
            });
        }
    };
    let new_column = RwSignal::new(String::new());
    let add_column = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let title = new_column.get_untracked();
        new_column.set(String::new());
        ctx.write(http::post::<_, Column>(
            format!("/api/boards/{}/columns", ctx.id),
            CreateColumn { id: None, title },
        ));
    };
    let columns_view = snapshot.columns.iter().cloned().map(|col| column_view(ctx, &snapshot, col)).collect_view();

    view! {
        <div class="board-header">
            <a href="#/" class="back" aria-label="All boards">"←"</a>
            <label for="board-title" class="visually-hidden">"Board title"</label>
            <input id="board-title" class="board-title" maxlength="200" prop:value=board.title on:change=rename_board />
            <button class="danger" on:click=delete_board>"Delete board"</button>
        </div>
        <p class="hint">"Drag cards, or focus one and press Space, then the arrow keys, then Space to put it down."</p>
        <div class="columns">
            {columns_view}
            <form class="add-column" on:submit=add_column>
                <label for="new-column-title" class="visually-hidden">"New column title"</label>
                <input id="new-column-title" placeholder="New column" maxlength="200"
                    prop:value=move || new_column.get()
                    on:input=move |ev| new_column.set(event_target_value(&ev)) />
                <button type="submit">"Add column"</button>
            </form>
        </div>
    }
}

fn column_view(ctx: Ctx, snapshot: &BoardSnapshot, column: Column) -> impl IntoView + use<> {
    let column_id = column.id;
    let cards: Vec<Card> = snapshot.cards_in(column_id).cloned().collect();
    let count = cards.len();
    let rename = move |ev: leptos::ev::Event| {
        let title = event_target_value(&ev);
        ctx.write(http::patch::<_, Column>(format!("/api/columns/{column_id}"), Rename { title, base_version: None }));
    };
    let delete = move |_| {
        if window().confirm_with_message("Delete this column and its cards?").unwrap_or(false) {
            ctx.write(async move { http::delete(format!("/api/columns/{column_id}")).await });
        }
    };
    let new_card = RwSignal::new(String::new());
    let add_card = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let title = new_card.get_untracked();
        new_card.set(String::new());
        ctx.write(http::post::<_, Card>(
            format!("/api/columns/{column_id}/cards"),
            CreateCard { id: None, title, description: String::new() },
        ));
    };
    let drop_at_end = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        if let (Some(card), Some(snapshot)) = (ctx.dragging.get_untracked(), ctx.current()) {
            ctx.dragging.set(None);
            if let Some(mv) = snapshot.drop_move(card, column_id, None) {
                ctx.move_card(card, mv, false);
            }
        }
    };
    let input_id = format!("new-card-{column_id}");

    view! {
        <section class="column" data-column-id=column_id.to_string() aria-label=column.title.clone()>
            <header class="column-header">
                <input class="column-title" aria-label="Column title" maxlength="200"
                    prop:value=column.title.clone() on:change=rename />
                <span class="count" aria-label="cards">{count}</span>
                <button class="icon danger" aria-label="Delete column" title="Delete column" on:click=delete>"×"</button>
            </header>
            <ol class="cards" on:dragover=|ev: leptos::ev::DragEvent| ev.prevent_default() on:drop=drop_at_end>
                {cards.into_iter().map(|card| card_view(ctx, column_id, card)).collect_view()}
            </ol>
            <form class="add-card" on:submit=add_card>
                <label for=input_id.clone() class="visually-hidden">"New card title"</label>
                <input id=input_id class="new-card-title" placeholder="Add a card" maxlength="200"
                    prop:value=move || new_card.get()
                    on:input=move |ev| new_card.set(event_target_value(&ev)) />
                <button type="submit">"Add"</button>
            </form>
        </section>
    }
}

fn card_view(ctx: Ctx, column_id: ColumnId, card: Card) -> impl IntoView {
    let card_id = card.id;
    let keydown = move |ev: leptos::ev::KeyboardEvent| {
        // Keys typed inside the editor belong to the editor.
        if ctx.editing.get_untracked() == Some(card_id) {
            return;
        }
        let picked = ctx.picked.get_untracked() == Some(card_id);
        let direction = match ev.key().as_str() {
            " " | "Spacebar" => {
                ev.prevent_default();
                ctx.picked.set(if picked { None } else { Some(card_id) });
                focus_card(card_id);
                return;
            }
            "Escape" => {
                ctx.picked.set(None);
                return;
            }
            "Enter" => {
                ev.prevent_default();
                ctx.editing.set(Some(card_id));
                return;
            }
            "ArrowUp" => Direction::Up,
            "ArrowDown" => Direction::Down,
            "ArrowLeft" => Direction::Left,
            "ArrowRight" => Direction::Right,
            _ => return,
        };
        if !picked {
            return;
        }
        ev.prevent_default();
        if let Some(mv) = ctx.current().and_then(|s| s.keyboard_move(card_id, direction)) {
            ctx.move_card(card_id, mv, true);
        }
    };
    let drag_start = move |ev: leptos::ev::DragEvent| {
        ctx.dragging.set(Some(card_id));
        if let Some(dt) = ev.data_transfer() {
            let _ = dt.set_data("text/plain", &card_id.to_string());
            dt.set_effect_allowed("move");
        }
    };
    let drop_here = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        ev.stop_propagation();
        let (Some(dragged), Some(snapshot)) = (ctx.dragging.get_untracked(), ctx.current()) else { return };
        ctx.dragging.set(None);
        // Dropped on the lower half of this card: place after it, i.e. before the next one.
        let lower_half = ev
            .current_target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .map(|el| {
                let rect = el.get_bounding_client_rect();
                f64::from(ev.client_y()) > rect.top() + rect.height() / 2.0
            })
            .unwrap_or(false);
        let before = if lower_half {
            let others: Vec<CardId> = snapshot.cards_in(column_id).map(|c| c.id).filter(|&c| c != dragged).collect();
            match others.iter().position(|&c| c == card_id) {
                Some(i) => others.get(i + 1).copied(),
                None => return,
            }
        } else {
            Some(card_id)
        };
        if let Some(mv) = snapshot.drop_move(dragged, column_id, before) {
            ctx.move_card(dragged, mv, false);
        }
    };
    let delete = move |_| ctx.write(async move { http::delete(format!("/api/cards/{card_id}")).await });
    let title = card.title.clone();
    let description = card.description.clone();

    view! {
        <li class="card" tabindex="0" draggable="true"
            data-card-id=card_id.to_string()
            class:picked=move || ctx.picked.get() == Some(card_id)
            aria-grabbed=move || (ctx.picked.get() == Some(card_id)).to_string()
            aria-label=format!("Card: {}", card.title)
            on:keydown=keydown on:dragstart=drag_start
            on:dragover=|ev: leptos::ev::DragEvent| ev.prevent_default()
            on:drop=drop_here
            on:dragend=move |_| ctx.dragging.set(None)>
            {move || if ctx.editing.get() == Some(card_id) {
                card_editor(ctx, card_id, title.clone(), description.clone()).into_any()
            } else {
                view! {
                    <div class="card-body">
                        <span class="card-title">{title.clone()}</span>
                        {(!description.is_empty()).then(|| view! { <p class="card-description">{description.clone()}</p> })}
                    </div>
                    <div class="card-actions">
                        <button class="link" on:click=move |_| ctx.editing.set(Some(card_id))>"Edit"</button>
                        <button class="link danger" aria-label="Delete card" on:click=delete>"Delete"</button>
                    </div>
                }.into_any()
            }}
        </li>
    }
}

fn card_editor(ctx: Ctx, card_id: CardId, title: String, description: String) -> impl IntoView {
    let title = RwSignal::new(title);
    let description = RwSignal::new(description);
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let update = UpdateCard {
            title: Some(title.get_untracked()),
            description: Some(description.get_untracked()),
            base_version: None,
        };
        ctx.editing.set(None);
        ctx.write_then(http::patch::<_, Card>(format!("/api/cards/{card_id}"), update), move || focus_card(card_id));
    };
    let cancel = move |_| {
        ctx.editing.set(None);
        focus_card(card_id);
    };
    view! {
        <form class="card-editor" on:submit=save
            on:keydown=move |ev: leptos::ev::KeyboardEvent| if ev.key() == "Escape" { ctx.editing.set(None); focus_card(card_id); }>
            <input class="edit-title" aria-label="Card title" maxlength="200" autofocus
                prop:value=move || title.get() on:input=move |ev| title.set(event_target_value(&ev)) />
            <textarea class="edit-description" aria-label="Card description" rows="3"
                prop:value=move || description.get() on:input=move |ev| description.set(event_target_value(&ev))></textarea>
            <div class="editor-actions">
                <button type="submit">"Save"</button>
                <button type="button" class="link" on:click=cancel>"Cancel"</button>
            </div>
        </form>
    }
}
