//! The list of boards, with a form to create one. Read through the sync runtime (the `boards` stream keeps it
//! fresh); a new board is a queued write, so it opens at once, even offline.

use leptos::prelude::*;
use syncline_engine::Notification;
use syncline_kanban::{CreateBoard, QueryKey, WriteOp};

use crate::{KanbanRuntime, rt};

#[component]
pub fn BoardList() -> impl IntoView {
    let version = RwSignal::new(0u64);
    let runtime = rt();
    let listener = runtime.on_notify(move |n| match n {
        Notification::Query { key: QueryKey::Boards }
        | Notification::Outbox { .. }
        | Notification::Connection { .. } => version.update(|v| *v += 1),
        _ => {}
    });
    runtime.subscribe(QueryKey::Boards);
    on_cleanup(move || {
        rt().off(listener);
        rt().unsubscribe(QueryKey::Boards);
    });

    let new_title = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let title = new_title.get_untracked();
        if let Err(message) = syncline_kanban::limits::validate_title(&title) {
            error.set(Some(message));
            return;
        }
        let id = rt().new_id();
        rt().edit(WriteOp::CreateBoard { body: CreateBoard { id: Some(id), title } });
        new_title.set(String::new());
        error.set(None);
        crate::navigate(&format!("/boards/{id}"));
    };

    view! {
        <section class="boards">
            <h1>"Boards"</h1>
            {crate::sync_ui::freshness_line(QueryKey::Boards, version)}
            {move || {
                version.get();
                match rt().boards() {
                    None => view! { <p class="notice">"Loading…"</p> }.into_any(),
                    Some(list) if list.boards.is_empty() => {
                        view! { <p class="notice">"No boards yet. Create the first one below."</p> }.into_any()
                    }
                    Some(list) => view! {
                        <ul class="board-list">
                            {list.boards.into_iter().map(|b| view! {
                                // Hovering or focusing a link prefetches the board, so it opens from cache.
                                <li><a class="board-link" href=format!("#/boards/{}", b.id)
                                    on:mouseenter=move |_| rt().prefetch(QueryKey::Board(b.id))
                                    on:focus=move |_| rt().prefetch(QueryKey::Board(b.id))>{b.title}</a></li>
                            }).collect_view()}
                        </ul>
                    }.into_any(),
                }
            }}
            <form class="inline-form" on:submit=create>
                <label for="new-board-title" class="visually-hidden">"New board title"</label>
                <input id="new-board-title" placeholder="New board title" maxlength="200"
                    prop:value=move || new_title.get()
                    on:input=move |ev| new_title.set(event_target_value(&ev)) />
                <button type="submit">"Create board"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
}
