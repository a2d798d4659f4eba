//! The syncline Kanban app: Leptos, client-side rendered, compiled to wasm32.
//!
//! Two screens, chosen by the URL hash: `#/` lists the boards, `#/boards/<id>` shows one board. A hash router
//! is all two screens need, and it keeps the static server trivial (every path is `index.html`).

mod account;
mod board;
mod boards;
mod sync_ui;

use std::cell::RefCell;

use syncline_engine::{ConflictPolicy, EngineConfig, Priority, Seen};
use syncline_kanban::{BoardList, BoardSnapshot, BoardSummary, Kanban, KanbanViews, WriteOp};

/// The sync runtime, for the Kanban model.
pub(crate) type Runtime = syncline_web::Runtime<Kanban>;

thread_local! {
    /// The tab's sync runtime, started before the app mounts.
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
}

/// The sync runtime of this tab.
pub(crate) fn rt() -> Runtime {
    RUNTIME.with(|r| r.borrow().clone()).expect("the runtime starts before the app mounts")
}

/// What the Kanban screens read and write through the runtime.
pub(crate) trait KanbanRuntime {
    fn board(&self, id: Uuid) -> Option<BoardSnapshot>;
    fn board_gone(&self, id: Uuid) -> bool;
    fn boards(&self) -> Option<BoardList>;
    fn summary(&self, id: Uuid) -> Option<BoardSummary>;
    /// A user's edit: shown at once, sent now or when back online. Every Kanban edit is something the user is
    /// looking at (so it goes first), and a stale edit is re-sent when it touches other fields than the
    /// concurrent change and put to the user otherwise.
    fn edit(&self, op: WriteOp) -> Uuid;
    /// An edit the user began earlier, from what they saw then (`Runtime::seen` when the editor opened).
    fn edit_seen(&self, op: WriteOp, seen: Seen) -> Uuid;
}

impl KanbanRuntime for Runtime {
    fn board(&self, id: Uuid) -> Option<BoardSnapshot> {
        self.read(|e| e.board(id))
    }

    fn board_gone(&self, id: Uuid) -> bool {
        self.read(|e| e.board_gone(id))
    }

    fn boards(&self) -> Option<BoardList> {
        self.read(|e| e.boards())
    }

    fn summary(&self, id: Uuid) -> Option<BoardSummary> {
        self.read(|e| e.summary(id).cloned())
    }

    fn edit(&self, op: WriteOp) -> Uuid {
        self.write(op, Priority::UserVisible, ConflictPolicy::RebaseOrAsk)
    }

    fn edit_seen(&self, op: WriteOp, seen: Seen) -> Uuid {
        self.write_seen(op, Priority::UserVisible, ConflictPolicy::RebaseOrAsk, seen)
    }
}

/// The namespace of a user's IndexedDB database, BroadcastChannel and leader lock: per user, so two accounts
/// on one browser never share a leader, a cache or an outbox.
fn namespace(user: Uuid) -> String {
    format!("syncline-{user}")
}

use leptos::prelude::*;
use uuid::Uuid;
use wasm_bindgen::prelude::*;

/// Which screen the URL hash asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Boards,
    Board(Uuid),
    NotFound,
}

fn current_route() -> Route {
    let hash = window().location().hash().unwrap_or_default();
    let path = hash.trim_start_matches('#');
    match path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice() {
        [""] => Route::Boards,
        ["boards", id] => Uuid::parse_str(id).map(Route::Board).unwrap_or(Route::NotFound),
        _ => Route::NotFound,
    }
}

pub(crate) fn navigate(to: &str) {
    let _ = window().location().set_hash(to);
}

/// Runs `f` in the next animation frame when the page is visible (so a burst of changes costs one render per
/// frame), or soon when it is hidden (hidden pages get no frames). Several calls before it runs make one.
///
/// Every batch waits for the same frame (`NextFrame`): one animation-frame request per frame for the whole app,
/// not one per batch — a change re-renders the board and marks its change → screen time, and each request
/// crosses into JavaScript and allocates a callback there.
pub(crate) struct FrameBatch {
    scheduled: std::cell::Cell<bool>,
}

impl FrameBatch {
    pub(crate) fn new() -> std::rc::Rc<FrameBatch> {
        std::rc::Rc::new(FrameBatch { scheduled: std::cell::Cell::new(false) })
    }

    pub(crate) fn schedule(self: &std::rc::Rc<Self>, f: impl FnOnce() + 'static) {
        if self.scheduled.replace(true) {
            return;
        }
        let this = self.clone();
        NEXT_FRAME.with(|next| {
            next.queue.borrow_mut().push(Box::new(move || {
                this.scheduled.set(false);
                f();
            }))
        });
        NextFrame::ask();
    }
}

/// The work waiting for the next frame, in the order it was asked for.
#[derive(Default)]
struct NextFrame {
    queue: RefCell<Vec<Box<dyn FnOnce()>>>,
    asked: std::cell::Cell<bool>,
}

thread_local! {
    static NEXT_FRAME: NextFrame = NextFrame::default();
    /// A page hidden before its next frame gets no frame until it is shown again: what waits for that frame
    /// runs as a task instead, at once (or a render asked for just before the tab was hidden would hold back
    /// every later one — a hidden follower showing the old board). Listening for that, rather than arming a
    /// fallback timer with every frame, saves a timer set and cleared per change (~50 µs of a change's ~1 ms of
    /// script in the visible tab). Registered with the first frame asked for; lives as long as the page.
    static NEXT_FRAME_WHEN_HIDDEN: () = std::mem::forget(window_event_listener_untyped("visibilitychange", |_| {
        if document().hidden() && NEXT_FRAME.with(|n| n.asked.get()) {
            set_timeout(NextFrame::run, std::time::Duration::ZERO);
        }
    }));
}

impl NextFrame {
    /// Asks for the next frame (once until it comes), or for a task when the page is hidden.
    fn ask() {
        if NEXT_FRAME.with(|n| n.asked.replace(true)) {
            return;
        }
        if document().hidden() {
            set_timeout(NextFrame::run, std::time::Duration::ZERO);
        } else {
            NEXT_FRAME_WHEN_HIDDEN.with(|_| ());
            request_animation_frame(NextFrame::run);
        }
    }

    /// Runs what waited (what it asks for meanwhile waits for the frame after).
    fn run() {
        let queued = NEXT_FRAME.with(|n| {
            n.asked.set(false);
            std::mem::take(&mut *n.queue.borrow_mut())
        });
        for f in queued {
            f();
        }
    }
}

/// After data changed, the frame after the one that drew it tells the runtime the change is on screen.
fn measure_change_to_screen() {
    let batch = FrameBatch::new();
    rt().on_notify(move |n| {
        if matches!(n, syncline_engine::Notification::Query { .. }) {
            // In the frame the views re-render (they re-read in the same frame); a task queued then runs once that
            // frame is painted (asking for a second frame instead would make the browser draw one more frame).
            batch.schedule(|| set_timeout(|| rt().rendered(), std::time::Duration::ZERO));
        }
    });
}

#[component]
fn App() -> impl IntoView {
    let route = RwSignal::new(current_route());
    let on_hash = Closure::<dyn Fn()>::new(move || route.set(current_route()));
    let _ = window().add_event_listener_with_callback("hashchange", on_hash.as_ref().unchecked_ref());
    // The listener lives as long as the page.
    on_hash.forget();
    sync_ui::provide();
    measure_change_to_screen();
    board::expose_render_counts();
    let prefs_open = RwSignal::new(false);
    let metrics_open = RwSignal::new(false);

    view! {
        <header class="topbar">
            <a class="brand" href="#/">"syncline"</a>
            <span class="tagline">"Kanban, kept fresh"</span>
            <sync_ui::ConnectionBadge />
            <nav class="topbar-actions">
                <span id="signed-in-as" class="topbar-user">{account::me().username}</span>
                <button id="sign-out" class="topbar-button" on:click=move |_| account::sign_out()>"Sign out"</button>
                <button id="open-preferences" class="topbar-button" aria-expanded=move || prefs_open.get().to_string()
                    aria-controls="preferences-panel"
                    on:click=move |_| { metrics_open.set(false); prefs_open.update(|o| *o = !*o) }>"Preferences"</button>
                <button id="open-metrics" class="topbar-button" aria-expanded=move || metrics_open.get().to_string()
                    aria-controls="metrics-panel"
                    on:click=move |_| { prefs_open.set(false); metrics_open.update(|o| *o = !*o) }>"Metrics"</button>
            </nav>
        </header>
        <sync_ui::Announcer />
        <sync_ui::PreferencesPanel open=prefs_open />
        <sync_ui::MetricsPanel open=metrics_open />
        <main>
            {move || match route.get() {
                Route::Boards => boards::BoardList().into_any(),
                Route::Board(id) => view! { <board::BoardView id=id /> }.into_any(),
                Route::NotFound => view! {
                    <p class="notice">"Nothing here. " <a href="#/">"Back to the boards"</a></p>
                }.into_any(),
            }}
        </main>
    }
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    wasm_bindgen_futures::spawn_local(async {
        match account::who_is_signed_in().await {
            Some(user) => {
                // Leptos' own executor starts with the mount; the runtime starts before it, named for the user.
                let runtime = Runtime::start(&namespace(user.id), EngineConfig::default());
                account::set_me(user);
                RUNTIME.with(|r| *r.borrow_mut() = Some(runtime));
                account::sign_in_again_when_the_session_ends();
                leptos::mount::mount_to_body(App);
            }
            None => leptos::mount::mount_to_body(account::SignIn),
        }
    });
}
