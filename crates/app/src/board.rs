//! One board: its columns and cards, with create / rename / delete / edit, drag-and-drop and keyboard moves.
//!
//! Keyboard: focus a card (Tab), press Space to pick it up, move it with the arrow keys (each press is
//! saved), press Space or Escape to put it down; Enter opens the card editor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use leptos::prelude::*;
use syncline_kanban::moves::Direction;
use syncline_kanban::{
    AddMember, BoardSnapshot, Card, CardId, CreateCard, CreateColumn, Member, MoveCard, QueryKey, Rename, Role,
    SetRole, UpdateCard, WriteOp, same_id,
};
use uuid::Uuid;
use wasm_bindgen::JsCast;

use syncline_engine::{Notification, Seen};

use crate::{KanbanRuntime, rt};

/// Shared state of the board screen.
#[derive(Clone, Copy)]
struct Ctx {
    id: Uuid,
    /// Bumped on every notification about this board: views re-read the runtime.
    version: RwSignal<u64>,
    error: RwSignal<Option<String>>,
    /// The card picked up for keyboard moves.
    picked: RwSignal<Option<CardId>>,
    /// Whether a card is `picked` / `editing`, per card: a card's view reads only its own answer, so picking up
    /// or opening one card re-renders that card (and the one before), not every card on the board.
    picked_card: StoredValue<Selector<Option<CardId>>>,
    editing_card: StoredValue<Selector<Option<CardId>>>,
    /// The card whose editor is open.
    editing: RwSignal<Option<CardId>>,
    /// The card being dragged.
    dragging: RwSignal<Option<CardId>>,
    /// The board as the runtime has it (with this browser's pending writes applied).
    board: Memo<Option<BoardSnapshot>>,
    /// The signed-in user's role on it (`None`: not a member, or not known yet). A signal set only when the role
    /// changes, not a memo of the board: every card reads it, and a memo would make each change to the board
    /// visit all of them (the reactive graph marks a memo's readers to be checked whenever its source changes).
    role: RwSignal<Option<Role>>,
    /// Each card's own signals, kept in step with the board by `sync_cells`: a change to one card sets the
    /// signals of that card only, so rendering a change costs the same on a 1,000-card board as on a small one.
    cells: StoredValue<Cells>,
    /// Bumped by `sync_cells` when cards are added, removed or moved: what the columns' lists of cards follow,
    /// rather than the board itself — an edit of a card's text (nearly every change) does not recompute them, nor
    /// re-check the reactive nodes below them (on a 1,000-card board, 100 blocks' memos and their readers).
    layout: RwSignal<u64>,
}

/// The mounted cards' cells and what they were last brought in line with.
#[derive(Default)]
struct Cells {
    by_id: HashMap<CardId, CardCell>,
    /// The board's cards at the last `sync_cells` (shared with the board, not copied) and where each is.
    last: Vec<Arc<Card>>,
    index: HashMap<CardId, usize>,
    /// Cards that had pending writes or a conflict at the last pass.
    marked: HashSet<CardId>,
}

/// What one card's view reads.
#[derive(Clone)]
struct CardCell {
    /// Title and description.
    text: ArcRwSignal<(String, String)>,
    /// Writes of this card not yet on the server.
    pending: ArcRwSignal<usize>,
    /// A write of this card is in a conflict that waits for the user.
    conflicted: ArcRwSignal<bool>,
    /// What the signals were last set from, as plain values, so that bringing a cell in line reads no signal:
    /// the card (shared with the board: the same pointer is the same card), its pending writes, its conflict.
    card: Option<Arc<Card>>,
    pending_count: usize,
    in_conflict: bool,
}

impl CardCell {
    fn new(card: Option<&Arc<Card>>) -> CardCell {
        CardCell {
            text: ArcRwSignal::new(card.map(|c| (c.title.clone(), c.description.clone())).unwrap_or_default()),
            pending: ArcRwSignal::new(0),
            conflicted: ArcRwSignal::new(false),
            card: card.cloned(),
            pending_count: 0,
            in_conflict: false,
        }
    }

    /// Sets the text from `card` if it is not the card the text came from and says something else.
    fn show(&mut self, card: &Arc<Card>) {
        if self.card.as_ref().is_some_and(|c| Arc::ptr_eq(c, card)) {
            return;
        }
        if self.text.with_untracked(|(t, d)| *t != card.title || *d != card.description) {
            self.text.set((card.title.clone(), card.description.clone()));
        }
        self.card = Some(card.clone());
    }

    fn mark(&mut self, pending_count: usize, in_conflict: bool) {
        if pending_count != self.pending_count {
            self.pending_count = pending_count;
            self.pending.set(pending_count);
        }
        if in_conflict != self.in_conflict {
            self.in_conflict = in_conflict;
            self.conflicted.set(in_conflict);
        }
    }
}

impl Ctx {
    /// Whether the signed-in user may change the board (editors and owners; viewers only look).
    fn can_edit(self) -> bool {
        self.role.get().is_some_and(|r| r >= Role::Editor)
    }

    fn is_picked(self, card: CardId) -> bool {
        self.picked_card.with_value(|s| s.selected(&Some(card)))
    }

    fn is_editing(self, card: CardId) -> bool {
        self.editing_card.with_value(|s| s.selected(&Some(card)))
    }

    fn is_owner(self) -> bool {
        self.role.get() == Some(Role::Owner)
    }

    /// Queues a write: the view shows it at once; the runtime sends it (now or when back online).
    fn write(self, op: WriteOp) {
        rt().edit(op);
    }

    fn current(self) -> Option<BoardSnapshot> {
        rt().board(self.id)
    }

    fn move_card(self, card: CardId, mv: MoveCard, refocus: bool) {
        self.write(WriteOp::MoveCard { id: card, body: mv });
        if refocus {
            focus_card(card);
        }
    }

    /// Brings the cells of the mounted cards in line with the board and the outbox, setting signals only for the
    /// cards that changed. When the board has the same cards in the same places as at the last pass (a change to
    /// one card's text or marks: nearly every change), what changed is found by comparing pointers, with no
    /// lookup or string compare for the rest; otherwise (a card added, moved or removed) every cell is checked,
    /// and `layout` is bumped. Cells are made when a card mounts, so a long column still filling does not pay for
    /// cards not yet shown.
    fn sync_cells(self, board: Option<&BoardSnapshot>) {
        let runtime = rt();
        let mut pending: HashMap<Uuid, usize> = HashMap::new();
        for entity in runtime.pending_entities() {
            *pending.entry(entity).or_default() += 1;
        }
        let conflicted: HashSet<Uuid> = runtime.conflicts().into_iter().map(|(_, entity, _)| entity).collect();
        let cards: &[Arc<Card>] = board.map_or(&[], |b| &b.cards);
        let mut moved = false;
        self.cells.update_value(|cells| {
            // (The same places: the same card at each index, in the same column — the last card of one column
            // moved to the top of the next keeps its index.)
            let same_places = cells.last.len() == cards.len()
                && cells.last.iter().zip(cards).all(|(was, now)| {
                    Arc::ptr_eq(was, now) || (same_id(was.id, now.id) && same_id(was.column_id, now.column_id))
                });
            moved = !same_places;
            if same_places {
                for (was, now) in cells.last.iter().zip(cards) {
                    if !Arc::ptr_eq(was, now)
                        && let Some(cell) = cells.by_id.get_mut(&now.id)
                    {
                        cell.show(now);
                    }
                }
            } else {
                cells.index = cards.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
                let index = &cells.index;
                cells.by_id.retain(|id, cell| match index.get(id) {
                    Some(&i) => {
                        cell.show(&cards[i]);
                        true
                    }
                    None => false,
                });
            }
            cells.last = cards.to_vec();
            let marked: HashSet<CardId> = pending.keys().chain(&conflicted).copied().collect();
            for id in marked.union(&cells.marked) {
                if let Some(cell) = cells.by_id.get_mut(id) {
                    cell.mark(pending.get(id).copied().unwrap_or(0), conflicted.contains(id));
                }
            }
            cells.marked = marked;
        });
        if moved {
            self.layout.update(|n| *n += 1);
        }
    }

    /// The card's cell, made on first use from the board as it is now.
    fn cell(self, card: CardId) -> CardCell {
        if let Some(cell) = self.cells.with_value(|cells| cells.by_id.get(&card).cloned()) {
            return cell;
        }
        let known = self.cells.with_value(|cells| {
            cells.index.get(&card).and_then(|&i| cells.last.get(i)).filter(|c| c.id == card).cloned()
        });
        let mut cell = match known {
            Some(c) => CardCell::new(Some(&c)),
            None => self
                .board
                .with_untracked(|b| CardCell::new(b.as_ref().and_then(|b| b.cards.iter().find(|c| c.id == card)))),
        };
        let runtime = rt();
        cell.mark(runtime.pending_for(card), runtime.conflicts().iter().any(|(_, entity, _)| *entity == card));
        self.cells.update_value(|cells| {
            cells.by_id.insert(card, cell.clone());
        });
        cell
    }
}

thread_local! {
    /// How many times each card's view re-ran a part of itself (title, marks, body, classes): what the tests
    /// count to show that one change re-renders one card (`window.__cardRenders()`).
    static CARD_RENDERS: std::cell::RefCell<HashMap<CardId, u32>> = Default::default();
    /// The board on screen (for `window.__boardCards()`).
    static OPEN_BOARD: std::cell::Cell<Option<Uuid>> = const { std::cell::Cell::new(None) };
}

fn rendered(card: CardId) {
    CARD_RENDERS.with_borrow_mut(|r| *r.entry(card).or_default() += 1);
}

/// `window.__cardRenders()` returns `{card id: renders}` since the last call (and starts counting afresh).
pub(crate) fn expose_render_counts() {
    let f = wasm_bindgen::closure::Closure::<dyn Fn() -> wasm_bindgen::JsValue>::new(|| {
        let counts: HashMap<String, u32> =
            CARD_RENDERS.with_borrow_mut(std::mem::take).into_iter().map(|(id, n)| (id.to_string(), n)).collect();
        wasm_bindgen::JsValue::from_str(&serde_json::to_string(&counts).unwrap_or_default())
    });
    let _ = js_sys::Reflect::set(&window(), &wasm_bindgen::JsValue::from_str("__cardRenders"), f.as_ref());
    f.forget();
    // `window.__boardCards()`: how many cards the runtime's copy of the open board has in each column, so a test
    // that finds the page showing something else can tell a view behind its data from data behind the server.
    let f = wasm_bindgen::closure::Closure::<dyn Fn() -> wasm_bindgen::JsValue>::new(|| {
        let counts: HashMap<String, usize> = OPEN_BOARD
            .get()
            .and_then(|id| rt().board(id))
            .map(|b| b.columns.iter().map(|c| (c.id.to_string(), b.cards_in(c.id).count())).collect())
            .unwrap_or_default();
        wasm_bindgen::JsValue::from_str(&serde_json::to_string(&counts).unwrap_or_default())
    });
    let _ = js_sys::Reflect::set(&window(), &wasm_bindgen::JsValue::from_str("__boardCards"), f.as_ref());
    f.forget();
}

/// Puts keyboard focus back on a card after the board re-rendered.
fn focus_card(card: CardId) {
    request_animation_frame(move || {
        let selector = format!("[data-card-id=\"{card}\"]");
        if let Some(el) = document().query_selector(&selector).ok().flatten()
            && let Ok(el) = el.dyn_into::<web_sys::HtmlElement>()
        {
            let _ = el.focus();
        }
    });
}

#[component]
pub fn BoardView(id: Uuid) -> impl IntoView {
    let version = RwSignal::new(0u64);
    let board_memo = Memo::new(move |_| {
        version.get();
        rt().board(id)
    });
    let me = crate::account::me().id;
    // A board always has an owner on the server; one with no members yet is one this browser just created (its
    // memberships are on their way): its creator owns it. (The server decides in the end.)
    let role_in = move |b: &Option<BoardSnapshot>| {
        b.as_ref().and_then(|b| b.role_of(me).or_else(|| b.members.is_empty().then_some(Role::Owner)))
    };
    let role = RwSignal::new(board_memo.with_untracked(role_in));
    let revoked = RwSignal::new(false);
    let (picked, editing) = (RwSignal::new(None), RwSignal::new(None));
    let ctx = Ctx {
        id,
        version,
        error: RwSignal::new(None),
        picked,
        editing,
        picked_card: StoredValue::new(Selector::new(move || picked.get())),
        editing_card: StoredValue::new(Selector::new(move || editing.get())),
        dragging: RwSignal::new(None),
        board: board_memo,
        role,
        cells: StoredValue::new(Cells::default()),
        layout: RwSignal::new(0),
    };
    Effect::new(move |_| {
        version.get();
        board_memo.with(|b| {
            let now = role_in(b);
            if role.get_untracked() != now {
                role.set(now);
            }
            ctx.sync_cells(b.as_ref())
        });
    });
    let runtime = rt();
    // A burst of changes re-renders once per frame, not once per change.
    let frame = crate::FrameBatch::new();
    let bump = move || frame.schedule(move || ctx.version.update(|v| *v += 1));
    let listener = runtime.on_notify(move |n| match n {
        Notification::Query { key: QueryKey::Board(b) | QueryKey::BoardSummary(b) } if *b == id => bump(),
        Notification::Outbox { .. } | Notification::Connection { .. } => bump(),
        Notification::WriteRejected { message, .. } => ctx.error.set(Some(message.clone())),
        Notification::Revoked { key: QueryKey::Board(b) } if *b == id => revoked.set(true),
        Notification::Conflict { needs_decision: false, current, .. } => {
            ctx.error.set(Some(format!("Someone else changed {}; their version was kept.", what_changed(current))))
        }
        _ => {}
    });
    runtime.subscribe(QueryKey::Board(id));
    // The open board is what "critical data only" keeps fresh in the background; lists and summaries wait.
    runtime.set_critical(QueryKey::Board(id), true);
    let has_board = Memo::new(move |_| board_memo.with(Option::is_some));
    let summary_open = RwSignal::new(false);
    OPEN_BOARD.set(Some(id));
    on_cleanup(move || {
        if OPEN_BOARD.get() == Some(id) {
            OPEN_BOARD.set(None);
        }
        let runtime = rt();
        runtime.off(listener);
        runtime.unsubscribe(QueryKey::Board(id));
        runtime.set_critical(QueryKey::Board(id), false);
        if summary_open.get_untracked() {
            runtime.unsubscribe(QueryKey::BoardSummary(id));
        }
    });
    // The summary is computed by the server: no change can update it in place, so while it is open it is
    // refetched (once per batch of changes) whenever the board changes.
    let toggle_summary = move |ev: leptos::ev::Event| {
        let open = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlDetailsElement>().ok()).is_some_and(|d| d.open());
        if open != summary_open.get_untracked() {
            summary_open.set(open);
            if open { rt().subscribe(QueryKey::BoardSummary(id)) } else { rt().unsubscribe(QueryKey::BoardSummary(id)) }
        }
    };

    view! {
        <section class="board">
            {move || ctx.error.get().map(|e| view! {
                <p class="error" role="alert">{e}
                    <button class="link" on:click=move |_| ctx.error.set(None)>"Dismiss"</button>
                </p>
            })}
            {crate::sync_ui::freshness_line(QueryKey::Board(id), ctx.version)}
            <details id="board-summary" class="board-summary" on:toggle=toggle_summary>
                <summary>"Summary"
                    // Only an open summary is read (and kept fresh); a closed one has no freshness to show.
                    <Show when=move || summary_open.get()>
                        {crate::sync_ui::freshness_mark(QueryKey::BoardSummary(id), ctx.version)}
                    </Show>
                </summary>
                {move || {
                    ctx.version.get();
                    match rt().summary(id) {
                        Some(s) => view! {
                            <p class="summary-figures" data-total=s.total_cards.to_string()>
                                {format!("{} cards, {} with a description · ", s.total_cards, s.described_cards)}
                                {s.columns.iter().map(|c| format!("{}: {}", c.title, c.cards)).collect::<Vec<_>>().join(", ")}
                            </p>
                        }.into_any(),
                        None => view! { <p class="notice">"Loading…"</p> }.into_any(),
                    }
                }}
            </details>
            {move || {
                ctx.version.get();
                rt().conflicts().into_iter().map(|(write_id, _, theirs)| {
                    let what = what_changed(&theirs);
                    // To what: its title, or the role.
                    let field = if theirs.get("role").is_some() { "role" } else { "title" };
                    let title = theirs.get(field).and_then(|t| t.as_str()).unwrap_or("").to_owned();
                    view! {
                        <div class="conflict" role="alert" data-write-id=write_id.to_string()>
                            <span>"Someone else changed " {what} " to “" {title} "” while you were editing it."</span>
                            <button class="keep-mine" on:click=move |_| rt().resolve_conflict(write_id, true)>"Keep mine"</button>
                            <button class="take-theirs link" on:click=move |_| rt().resolve_conflict(write_id, false)>"Take theirs"</button>
                        </div>
                    }
                }).collect_view()
            }}
            {move || {
                // Only the presence of the board decides this branch; its content updates in place below, keyed
                // by entity, so inputs being typed into and focus survive live changes.
                if revoked.get() {
                    view! {
                        <p id="access-revoked" class="notice revoked" role="alert">
                            "You no longer have access to this board. " <a href="#/">"Back to your boards"</a>
                        </p>
                    }.into_any()
                } else if has_board.get() {
                    board_body(ctx).into_any()
                } else if rt().board_gone(ctx.id) {
                    view! {
                        <p class="notice">"This board was deleted, or you no longer have access to it. "
                            <a href="#/">"Back to your boards"</a></p>
                    }.into_any()
                } else {
                    view! { <p class="notice">"Loading…"</p> }.into_any()
                }
            }}
        </section>
    }
}

fn board_body(ctx: Ctx) -> impl IntoView {
    // What the header and the columns show of the board are memos: a change to a card changes the board, and a
    // view that read the board itself would re-run on every change — setting an input's value each time, which
    // also threw away what someone was typing into a title. A memo tells its readers only when it changes.
    let title = Memo::new(move |_| ctx.board.with(|s| s.as_ref().map(|s| s.board.title.clone()).unwrap_or_default()));
    let title_field = TitleField::new(ctx.id, title);
    let rename_board = move |ev: leptos::ev::Event| {
        let title = event_target_value(&ev);
        title_field.commit(WriteOp::RenameBoard { id: ctx.id, body: Rename { title, base_version: None } });
    };
    let delete_board = move |_| {
        if window().confirm_with_message("Delete this board with all its columns and cards?").unwrap_or(false) {
            ctx.write(WriteOp::DeleteBoard { id: ctx.id, base_version: None });
            crate::navigate("/");
        }
    };
    let new_column = RwSignal::new(String::new());
    let add_column = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let title = new_column.get_untracked();
        new_column.set(String::new());
        ctx.write(WriteOp::CreateColumn { board_id: ctx.id, body: CreateColumn { id: None, title } });
    };
    let columns = Memo::new(move |_| {
        ctx.board
            .with(|s| s.as_ref().map(|s| s.columns.iter().map(|c| c.id).collect::<Vec<Uuid>>()).unwrap_or_default())
    });

    view! {
        <div class="board-header">
            <a href="#/" class="back" aria-label="All boards">"←"</a>
            <label for="board-title" class="visually-hidden">"Board title"</label>
            <input id="board-title" class="board-title" maxlength="200" node_ref=title_field.input
                on:focus=move |_| title_field.begin() on:change=rename_board
                prop:readOnly=move || !ctx.can_edit() />
            <Show when=move || ctx.is_owner()>
                <button class="danger" on:click=delete_board>"Delete board"</button>
            </Show>
        </div>
        {members_panel(ctx)}
        <Show when=move || ctx.can_edit()
            fallback=|| view! { <p id="read-only" class="notice read-only">"You can see this board but not change it (viewer)."</p> }>
            <p class="hint">"Drag cards, or focus one and press Space, then the arrow keys, then Space to put it down."</p>
        </Show>
        <div class="columns">
            <For each=move || columns.get() key=|c: &Uuid| *c let:column_id>
                {column_view(ctx, column_id)}
            </For>
            <Show when=move || ctx.can_edit()>
                <form class="add-column" on:submit=add_column>
                    <label for="new-column-title" class="visually-hidden">"New column title"</label>
                    <input id="new-column-title" placeholder="New column" maxlength="200"
                        prop:value=move || new_column.get()
                        on:input=move |ev| new_column.set(event_target_value(&ev)) />
                    <button type="submit">"Add column"</button>
                </form>
            </Show>
        </div>
    }
}

/// A title edited in place (the board's, a column's). The input shows the title as it changes, except while the
/// user is typing into it (focused, holding something other than what it was last shown): a rename someone else
/// makes then does not throw the typing away. What the user commits is based on the entity as it was when they
/// began (`Runtime::seen` on focus), so that rename is a conflict put to the user, not overwritten unseen.
#[derive(Clone, Copy)]
struct TitleField {
    entity: Uuid,
    input: NodeRef<leptos::html::Input>,
    /// What the input was last given (or committed).
    shown: StoredValue<String>,
    seen: StoredValue<Option<Seen>>,
}

impl TitleField {
    fn new(entity: Uuid, title: Memo<String>) -> TitleField {
        let field = TitleField {
            entity,
            input: NodeRef::new(),
            shown: StoredValue::new(String::new()),
            seen: StoredValue::new(None),
        };
        Effect::new(move |_| {
            let title = title.get();
            let Some(input) = field.input.get() else { return };
            let element: &web_sys::Element = &input;
            let focused = document().active_element().as_ref() == Some(element);
            if focused && field.shown.with_value(|shown| input.value() != *shown) {
                return;
            }
            if input.value() != title {
                input.set_value(&title);
            }
            field.shown.set_value(title);
        });
        field
    }

    /// The user began editing (the field took focus).
    fn begin(self) {
        self.seen.set_value(Some(rt().seen(self.entity)));
    }

    /// The user committed `op` (the field's `change`): based on what they saw when they began.
    fn commit(self, op: WriteOp) {
        if let Some(input) = self.input.get_untracked() {
            self.shown.set_value(input.value());
        }
        match self.seen.get_value() {
            Some(seen) => rt().edit_seen(op, seen),
            None => rt().edit(op),
        };
        // Typing on in the same field is a new edit, of what the user sees now.
        self.begin();
    }
}

/// What a conflicting change (the entity as the server has it) changed: a card (it has a column), a membership
/// (a role), a column (it has a board), or the board.
fn what_changed(theirs: &serde_json::Value) -> &'static str {
    let has = |field: &str| theirs.get(field).is_some();
    if has("column_id") {
        "this card"
    } else if has("role") {
        "this member's role"
    } else if has("board_id") {
        "the column"
    } else {
        "the board"
    }
}

/// Cards a column mounts per animation frame while it fills (see `column_view`).
const CARDS_PER_FRAME: usize = 10;

/// Cards per block of a column. The browser skips the layout and paint of a block that is off screen
/// (`content-visibility: auto` on `.card-block`), and a change inside a block is laid out inside it. Blocks rather
/// than each card: on a 5,000-card board the browser would otherwise track 5,000 elements' visibility on every
/// frame of a scroll (that alone held scrolling to ~28 fps); 100 blocks cost nothing.
const CARDS_PER_BLOCK: usize = 50;

fn column_view(ctx: Ctx, column_id: Uuid) -> impl IntoView {
    // A memo, as the board's title (see `board_body`).
    let column_title = Memo::new(move |_| {
        ctx.board
            .with(|s| s.as_ref().and_then(|s| s.columns.iter().find(|c| c.id == column_id).map(|c| c.title.clone())))
            .unwrap_or_default()
    });
    let card_ids = Memo::new(move |_| {
        ctx.layout.track();
        ctx.board.with_untracked(|s| {
            s.as_ref().map(|s| s.cards_in(column_id).map(|c| c.id).collect::<Vec<CardId>>()).unwrap_or_default()
        })
    });
    let count = move || card_ids.with(Vec::len);
    // A long column mounts its cards a few dozen per frame (the first ones at once): opening a big board never
    // holds the page up for long. Hidden pages get no frames and mount the rest when shown.
    let shown = RwSignal::new(CARDS_PER_FRAME);
    Effect::new(move |_| {
        if shown.get() < card_ids.with(Vec::len) {
            request_animation_frame(move || shown.update(|n| *n += CARDS_PER_FRAME));
        }
    });
    let blocks =
        move || (0..card_ids.with(Vec::len).min(shown.get()).div_ceil(CARDS_PER_BLOCK)).collect::<Vec<usize>>();
    let title_field = TitleField::new(column_id, column_title);
    let rename = move |ev: leptos::ev::Event| {
        let title = event_target_value(&ev);
        title_field.commit(WriteOp::RenameColumn { id: column_id, body: Rename { title, base_version: None } });
    };
    let delete = move |_| {
        if window().confirm_with_message("Delete this column and its cards?").unwrap_or(false) {
            ctx.write(WriteOp::DeleteColumn { id: column_id, base_version: None });
        }
    };
    let new_card = RwSignal::new(String::new());
    let add_card = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let title = new_card.get_untracked();
        new_card.set(String::new());
        ctx.write(WriteOp::CreateCard { column_id, body: CreateCard { id: None, title, description: String::new() } });
    };
    // The cards' events are handled here, once for the column, rather than by listeners on every card: on a
    // 5,000-card board those were 35,000 listeners (seven a card), each a JS function and a closure that the
    // page's garbage collector traces again and again.
    let key = move |ev: leptos::ev::KeyboardEvent| {
        if let Some((_, card_id)) = card_of(&ev) {
            card_key(ctx, card_id, &ev);
        }
    };
    let drag_start = move |ev: leptos::ev::DragEvent| {
        let Some((_, card_id)) = card_of(&ev) else { return };
        ctx.dragging.set(Some(card_id));
        if let Some(dt) = ev.data_transfer() {
            let _ = dt.set_data("text/plain", &card_id.to_string());
            dt.set_effect_allowed("move");
        }
    };
    let drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        let (Some(dragged), Some(snapshot)) = (ctx.dragging.get_untracked(), ctx.current()) else { return };
        ctx.dragging.set(None);
        let before = match card_of(&ev) {
            // Not on a card: at the end of the column.
            None => None,
            Some((card, card_id)) => {
                // On the lower half of a card: after it, i.e. before the next one.
                let rect = card.get_bounding_client_rect();
                if ev.client_y() > rect.top() + rect.height() / 2.0 {
                    let others: Vec<CardId> =
                        snapshot.cards_in(column_id).map(|c| c.id).filter(|&c| c != dragged).collect();
                    match others.iter().position(|&c| c == card_id) {
                        Some(i) => others.get(i + 1).copied(),
                        None => return,
                    }
                } else {
                    Some(card_id)
                }
            }
        };
        if let Some(mv) = snapshot.drop_move(dragged, column_id, before) {
            ctx.move_card(dragged, mv, false);
        }
    };
    // A card's Edit and Delete buttons say which they are (`data-action`).
    let click = move |ev: leptos::ev::MouseEvent| {
        let action = closest(&ev, "[data-action]").and_then(|button| button.get_attribute("data-action"));
        let (Some(action), Some((_, card_id))) = (action, card_of(&ev)) else { return };
        match action.as_str() {
            "edit" => ctx.editing.set(Some(card_id)),
            "delete" => ctx.write(WriteOp::DeleteCard { id: card_id, base_version: None }),
            _ => {}
        }
    };
    let input_id = format!("new-card-{column_id}");

    view! {
        <section class="column" data-column-id=column_id.to_string() aria-label=move || column_title.get()>
            <header class="column-header">
                <input class="column-title" aria-label="Column title" maxlength="200"
                    node_ref=title_field.input on:focus=move |_| title_field.begin()
                    on:change=rename prop:readOnly=move || !ctx.can_edit() />
                <span class="count" aria-label="cards">{count}</span>
                <Show when=move || ctx.can_edit()>
                    <button class="icon danger" aria-label="Delete column" title="Delete column" on:click=delete>"×"</button>
                </Show>
            </header>
            <div class="cards" role="list" on:keydown=key on:dragstart=drag_start
                on:dragover=|ev: leptos::ev::DragEvent| ev.prevent_default() on:drop=drop
                on:dragend=move |_| ctx.dragging.set(None) on:click=click>
                <For each=blocks key=|b: &usize| *b let:block>
                    {block_view(ctx, card_ids, shown, block)}
                </For>
            </div>
            <Show when=move || ctx.can_edit()>
                <form class="add-card" on:submit=add_card>
                    <label for=input_id.clone() class="visually-hidden">"New card title"</label>
                    <input id=input_id.clone() class="new-card-title" placeholder="Add a card" maxlength="200"
                        prop:value=move || new_card.get()
                        on:input=move |ev| new_card.set(event_target_value(&ev)) />
                    <button type="submit">"Add"</button>
                </form>
            </Show>
        </section>
    }
}

/// The `block`th run of `CARDS_PER_BLOCK` cards of a column (of those mounted so far).
fn block_view(ctx: Ctx, card_ids: Memo<Vec<CardId>>, shown: RwSignal<usize>, block: usize) -> impl IntoView {
    let ids = Memo::new(move |_| {
        let start = block * CARDS_PER_BLOCK;
        card_ids.with(|ids| {
            let end = (start + CARDS_PER_BLOCK).min(ids.len()).min(shown.get());
            ids.get(start..end).map(<[CardId]>::to_vec).unwrap_or_default()
        })
    });
    view! {
        <div class="card-block">
            <For each=move || ids.get() key=|id: &CardId| *id let:card_id>
                {card_view(ctx, card_id)}
            </For>
        </div>
    }
}

/// A key pressed on (or inside) a card: Space picks it up or puts it down, the arrows move it while picked up,
/// Enter opens its editor, Escape drops it.
fn card_key(ctx: Ctx, card_id: CardId, ev: &leptos::ev::KeyboardEvent) {
    // Keys typed inside the editor belong to the editor; a viewer moves nothing.
    if ctx.editing.get_untracked() == Some(card_id) || !ctx.can_edit() {
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
}

/// The element matching `selector` that an event happened on or inside.
fn closest(ev: &web_sys::Event, selector: &str) -> Option<web_sys::Element> {
    ev.target()?.dyn_into::<web_sys::Element>().ok()?.closest(selector).ok()?
}

/// The card an event happened on or inside: its element and its id.
fn card_of(ev: &web_sys::Event) -> Option<(web_sys::Element, CardId)> {
    let card = closest(ev, "[data-card-id]")?;
    let id = card.get_attribute("data-card-id")?.parse().ok()?;
    Some((card, id))
}

fn card_view(ctx: Ctx, card_id: CardId) -> impl IntoView {
    // The node lives as long as the card stays in this column; its content follows the data, so focus and an
    // open editor survive live changes.
    // The card's own signals: only the cards whose data or marks changed update their DOM.
    // (Copy handles owned by this view; the cell itself lives in `ctx.cells` while the card exists.)
    let cell = ctx.cell(card_id);
    on_cleanup(move || {
        ctx.picked_card.with_value(|s| s.remove(&Some(card_id)));
        ctx.editing_card.with_value(|s| s.remove(&Some(card_id)));
    });
    let text = RwSignal::from(cell.text);
    let pending = RwSignal::from(cell.pending);
    let conflicted = RwSignal::from(cell.conflicted);
    let title = move || {
        rendered(card_id);
        text.with(|(t, _)| t.clone())
    };
    let description = move || text.with(|(_, d)| d.clone());
    let pending = move || pending.get();
    let conflicted = move || conflicted.get();
    let class = move || {
        rendered(card_id);
        let mut class = String::from("card");
        if pending() > 0 {
            class.push_str(" pending");
        }
        if conflicted() {
            class.push_str(" conflicted");
        }
        if ctx.is_picked(card_id) {
            class.push_str(" picked");
        }
        class
    };

    view! {
        <div class=class role="listitem" tabindex="0" draggable=move || if ctx.can_edit() { "true" } else { "false" }
            data-card-id=card_id.to_string()
            data-pending=move || pending().to_string()
            aria-grabbed=move || ctx.is_picked(card_id).to_string()
            aria-label=move || format!("Card: {}", title())>
            {move || if ctx.is_editing(card_id) {
                rendered(card_id);
                // The editor starts from the card as it is now and then holds what the user types: a live change
                // to the card while it is open does not re-make it (that threw the typing away).
                let (title, description) = text.get_untracked();
                card_editor(ctx, card_id, title, description).into_any()
            } else {
                view! {
                    <div class="card-body">
                        <span class="card-title">{title}</span>
                        {move || {
                            rendered(card_id);
                            let (class, text) = if conflicted() {
                                ("card-mark conflict-mark", "Conflict — choose above")
                            } else if pending() > 0 {
                                ("card-mark pending-mark", "Not yet saved to the server")
                            } else {
                                return None;
                            };
                            Some(view! { <span class=class>{text}</span> })
                        }}
                        {move || { rendered(card_id); let d = description(); (!d.is_empty()).then(|| view! { <p class="card-description">{d}</p> }) }}
                    </div>
                    <Show when=move || ctx.can_edit()>
                        <div class="card-actions">
                            <button class="link" data-action="edit">"Edit"</button>
                            <button class="link danger" aria-label="Delete card" data-action="delete">"Delete"</button>
                        </div>
                    </Show>
                }.into_any()
            }}
        </div>
    }
}

fn card_editor(ctx: Ctx, card_id: CardId, title: String, description: String) -> impl IntoView {
    let (original_title, original_description) =
        (StoredValue::new(title.clone()), StoredValue::new(description.clone()));
    // What the user saw when the editor opened: the save is based on it, so someone else's change to the same
    // field meanwhile is a conflict put to the user, and a change to the other field is kept (rebased).
    let seen = StoredValue::new(rt().seen(card_id));
    let title = RwSignal::new(title);
    let description = RwSignal::new(description);
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        // Only the fields the user changed: an edit of the title and someone else's edit of the description are
        // not a conflict (the engine re-sends this write on their version).
        let changed = |now: String, before: StoredValue<String>| before.with_value(|b| *b != now).then_some(now);
        let update = UpdateCard {
            title: changed(title.get_untracked(), original_title),
            description: changed(description.get_untracked(), original_description),
            base_version: None,
        };
        ctx.editing.set(None);
        if update.title.is_some() || update.description.is_some() {
            rt().edit_seen(WriteOp::UpdateCard { id: card_id, body: update }, seen.get_value());
        }
        focus_card(card_id);
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

/// Who may see the board and what they may do; owners add members by username, change roles and remove
/// members; anyone may leave (a board keeps at least one owner: the server says so when a change would leave none).
fn members_panel(ctx: Ctx) -> impl IntoView {
    let me = crate::account::me().id;
    let members = Memo::new(move |_| ctx.board.with(|b| b.as_ref().map(|b| b.members.clone()).unwrap_or_default()));
    let new_member = RwSignal::new(String::new());
    let new_role = RwSignal::new(Role::Editor);
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let username = new_member.get_untracked().trim().to_owned();
        if username.is_empty() {
            return;
        }
        new_member.set(String::new());
        ctx.write(WriteOp::AddMember {
            board_id: ctx.id,
            body: AddMember { username, role: new_role.get_untracked() },
        });
    };
    let role_label = |r: Role| match r {
        Role::Owner => "Owner",
        Role::Editor => "Editor",
        Role::Viewer => "Viewer",
    };
    let parse_role = |s: &str| Role::parse(s).unwrap_or(Role::Viewer);
    view! {
        <details id="members" class="members">
            <summary>{move || format!("Members ({})", members.with(Vec::len))}</summary>
            <ul class="member-list">
                <For each=move || members.get() key=|m: &Member| (m.user_id, m.role, m.version) let:m>
                    {
                        let user = m.user_id;
                        let is_me = user == me;
                        let role = m.role;
                        let name = m.username.clone();
                        let set_role = move |ev: leptos::ev::Event| {
                            let role = parse_role(&event_target_value(&ev));
                            let body = SetRole { role, base_version: None };
                            ctx.write(WriteOp::SetMemberRole { board_id: ctx.id, user_id: user, body });
                        };
                        let remove = move |_| {
                            let question = if is_me { "Leave this board?" } else { "Remove this member from the board?" };
                            if window().confirm_with_message(question).unwrap_or(false) {
                                ctx.write(WriteOp::RemoveMember { board_id: ctx.id, user_id: user });
                                if is_me {
                                    crate::navigate("/");
                                }
                            }
                        };
                        view! {
                            <li class="member" data-username=m.username.clone() data-role=role.as_str()>
                                <span class="member-name">{m.username.clone()}{is_me.then_some(" (you)")}</span>
                                {move || if ctx.is_owner() {
                                    view! {
                                        <select class="member-role" aria-label=format!("Role of {name}") on:change=set_role>
                                            {[Role::Owner, Role::Editor, Role::Viewer].into_iter().map(|r| view! {
                                                <option value=r.as_str() selected=r == role>{role_label(r)}</option>
                                            }).collect_view()}
                                        </select>
                                    }.into_any()
                                } else {
                                    view! { <span class="member-role">{role_label(role)}</span> }.into_any()
                                }}
                                <Show when=move || ctx.is_owner() || is_me>
                                    <button class="link danger member-remove" on:click=remove>
                                        {if is_me { "Leave" } else { "Remove" }}
                                    </button>
                                </Show>
                            </li>
                        }
                    }
                </For>
            </ul>
            <Show when=move || ctx.is_owner()>
                <form id="add-member" class="inline-form" on:submit=add>
                    <label for="new-member" class="visually-hidden">"Username to add"</label>
                    <input id="new-member" placeholder="Username" maxlength="32"
                        prop:value=move || new_member.get() on:input=move |ev| new_member.set(event_target_value(&ev)) />
                    <label for="new-member-role" class="visually-hidden">"Role"</label>
                    <select id="new-member-role" on:change=move |ev| new_role.set(parse_role(&event_target_value(&ev)))>
                        <option value="editor" selected>"Editor"</option>
                        <option value="viewer">"Viewer"</option>
                        <option value="owner">"Owner"</option>
                    </select>
                    <button type="submit">"Add member"</button>
                </form>
            </Show>
        </details>
    }
}
