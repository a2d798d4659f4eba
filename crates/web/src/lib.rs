//! The browser runtime: drives the sans-IO [`Engine`] with real browser APIs, for any app's [`Model`]. It is a
//! translator — every timer, retry and decision comes from the engine's outputs; this crate only carries them out
//! and reports what happened, one file per browser API:
//!
//! | engine output | browser API | file |
//! |---|---|---|
//! | `OpenSocket` / `SendSocket` / `CloseSocket` | `WebSocket` (`/api/feed?client=<tab>`) | `socket.rs` |
//! | `Http` / `CancelHttp` | `fetch` with an `AbortController` | `http.rs` |
//! | `Broadcast`, `ListenToTabs`, `QueueForLock` / `ClaimLeadership` | `BroadcastChannel`, Web Locks | `leader.rs` |
//! | `HoldTabLock` / `WatchTab` | Web Locks (a lock per tab, held for its life) | `leader.rs` |
//! | `Persist` / `Load` | IndexedDB (`outbox`, `cache` stores), in order | `storage.rs` |
//! | `Timeout(deadline)` | one `setTimeout` | here |
//!
//! and the other way: `visibilitychange`, `online`/`offline`, `navigator.connection` `change`, the `storage` event
//! (preferences set in another tab) and `pagehide` (`environment.rs`), the lock granted or lost, socket and fetch
//! results, IndexedDB answers.

mod environment;
pub mod http;
mod js;
mod leader;
mod socket;
mod storage;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use syncline_engine::{
    ConflictPolicy, Engine, EngineConfig, Freshness, Input, Millis, Model, Notification, Output, Preferences, Priority,
    RequestId, Role, Seen,
};
use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{AbortController, BroadcastChannel};

pub use storage::stored_preferences;
pub use syncline_engine::{ConnectionStatus, Metrics};

/// Long tasks seen on this page (PerformanceObserver `longtask`: main-thread work over 50 ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LongTasks {
    /// Whether this browser reports long tasks at all.
    pub observed: bool,
    pub count: u64,
    pub max_ms: f64,
    pub total_ms: f64,
}

type Listener<M> = Rc<dyn Fn(&Notification<M>)>;
/// A browser event handler, kept alive as long as the page.
type Handler = Closure<dyn FnMut(JsValue)>;

struct Inner<M: Model> {
    engine: RefCell<Engine<M>>,
    tab: u64,
    /// Names the IndexedDB database, the BroadcastChannel and the Web Lock: tabs of one namespace share them.
    namespace: String,
    socket: RefCell<Option<socket::Socket>>,
    socket_generation: Cell<u64>,
    fetches: RefCell<HashMap<RequestId, Option<AbortController>>>,
    timer: Cell<Option<i32>>,
    timer_callback: RefCell<Option<Closure<dyn FnMut()>>>,
    /// The deadline the armed timer is for.
    armed_for: Cell<Millis>,
    /// The channel this tab listens on; `None` while it is asleep (`Output::ListenToTabs(false)`).
    channel: RefCell<Option<BroadcastChannel>>,
    /// Its `message` handler, made once for the page and set on each channel opened.
    on_tab_message: RefCell<Option<Handler>>,
    lock_queued: Cell<bool>,
    storage: RefCell<storage::Storage<M>>,
    listeners: RefCell<Vec<(u64, Listener<M>)>>,
    long_tasks_observed: bool,
    next_listener: Cell<u64>,
    /// Closures registered with the browser for the page's lifetime.
    keep: RefCell<Vec<Handler>>,
}

/// The sync runtime of this tab, for the app's model `M`. Cheap to clone.
pub struct Runtime<M: Model> {
    inner: Rc<Inner<M>>,
}

impl<M: Model> Clone for Runtime<M> {
    fn clone(&self) -> Self {
        Runtime { inner: self.inner.clone() }
    }
}

fn window() -> web_sys::Window {
    web_sys::window().expect("a browser window")
}

fn now() -> Millis {
    window().performance().map(|p| p.now() as Millis).unwrap_or(0)
}

impl<M: Model> Runtime<M> {
    /// Starts the runtime: tells the engine where the tab stands, listens to the browser and the other tabs of
    /// `namespace` (its IndexedDB database, BroadcastChannel and Web Lock), and carries out the engine's first
    /// outputs (reading the stored outbox, queueing for the leader lock).
    pub fn start(namespace: &str, cfg: EngineConfig) -> Runtime<M> {
        let tab = (js_sys::Math::random() * 9_007_199_254_740_991.0) as u64;
        let engine = Engine::new(cfg, stored_preferences(), tab, tab, now(), js_sys::Date::now() as u64);
        storage::use_database(namespace);
        let rt = Runtime {
            inner: Rc::new(Inner {
                engine: RefCell::new(engine),
                tab,
                namespace: namespace.to_owned(),
                socket: RefCell::new(None),
                socket_generation: Cell::new(0),
                fetches: RefCell::new(HashMap::new()),
                timer: Cell::new(None),
                timer_callback: RefCell::new(None),
                armed_for: Cell::new(0),
                channel: RefCell::new(None),
                on_tab_message: RefCell::new(None),
                lock_queued: Cell::new(false),
                storage: RefCell::new(storage::Storage::default()),
                listeners: RefCell::new(Vec::new()),
                long_tasks_observed: js::observe_long_tasks(),
                next_listener: Cell::new(1),
                keep: RefCell::new(Vec::new()),
            }),
        };
        // Listen before anything can answer: the leader answers this tab's presence (with its status) at once.
        rt.listen_to_tabs(true);
        rt.listen_to_environment();
        rt.input(Input::Visibility { visible: environment::visible() });
        rt.input(Input::Network { online: environment::online() });
        if let Some(link) = environment::link_quality() {
            rt.input(Input::Link(link));
        }
        rt.expose_for_tests();
        rt
    }

    // ---- what the app calls -------------------------------------------------------------------------------------

    pub fn tab(&self) -> u64 {
        self.inner.tab
    }

    pub fn subscribe(&self, key: M::Key) {
        self.input(Input::Subscribe(key));
    }

    pub fn unsubscribe(&self, key: M::Key) {
        self.input(Input::Unsubscribe(key));
    }

    /// Queues a user write (applied optimistically at once) with how urgent it is and what to do on a conflict;
    /// returns its id.
    pub fn write(&self, op: M::Op, priority: Priority, policy: ConflictPolicy) -> Uuid {
        let id = self.inner.engine.borrow_mut().write_at(now(), op, priority, policy);
        self.pump();
        id
    }

    /// What the user sees of `entity` now, for a write they make later from it (`write_seen`): take it when they
    /// begin changing it (an editor opens).
    pub fn seen(&self, entity: Uuid) -> Seen {
        self.inner.engine.borrow().seen(entity)
    }

    /// As `write`, based on what the user saw when they began (`seen`) rather than on the entity as it is now.
    pub fn write_seen(&self, op: M::Op, priority: Priority, policy: ConflictPolicy, seen: Seen) -> Uuid {
        let id = self.inner.engine.borrow_mut().write_seen_at(now(), op, priority, policy, seen);
        self.pump();
        id
    }

    /// A new id for an entity the user creates.
    pub fn new_id(&self) -> Uuid {
        self.inner.engine.borrow_mut().new_id()
    }

    /// Marks a query critical: kept fresh while no tab is visible when the user chose "critical data only".
    pub fn set_critical(&self, key: M::Key, critical: bool) {
        self.input(Input::Critical { key, critical });
    }

    /// The user is about to open this (hovers or focuses a link to it): fetch it now if it is missing or stale.
    pub fn prefetch(&self, key: M::Key) {
        self.input(Input::Prefetch(key));
    }

    /// The app drew what it last read: records change → screen latency (call it from the frame after).
    pub fn rendered(&self) {
        self.inner.engine.borrow_mut().rendered(js_sys::Date::now() as u64);
    }

    /// This tab's clock, the one `retry_at` and other engine times are on.
    pub fn now(&self) -> Millis {
        now()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.engine.borrow().role() == Role::Leader
    }

    pub fn preferences(&self) -> Preferences {
        self.inner.engine.borrow().preferences().clone()
    }

    pub fn long_tasks(&self) -> LongTasks {
        let v = js::long_tasks();
        LongTasks {
            observed: self.inner.long_tasks_observed,
            count: v.first().copied().unwrap_or(0.0) as u64,
            max_ms: v.get(1).copied().unwrap_or(0.0),
            total_ms: v.get(2).copied().unwrap_or(0.0),
        }
    }

    pub fn resolve_conflict(&self, write_id: Uuid, keep_mine: bool) {
        self.input(Input::ResolveConflict { write_id, keep_mine });
    }

    /// The user signs out: the engine stops using the network and tells the other tabs.
    pub fn sign_out(&self) {
        self.input(Input::SignOut);
    }

    pub fn retry_now(&self) {
        self.input(Input::RetryNow);
    }

    /// Saves preferences for every tab (they follow through the `storage` event) and applies them here.
    pub fn set_preferences(&self, prefs: Preferences) -> Result<(), String> {
        prefs.validate()?;
        storage::save_preferences(&prefs);
        self.input(Input::Preferences(prefs));
        Ok(())
    }

    /// Reads the engine (its views, its data): `rt.read(|e| e.view(&key))`.
    pub fn read<R>(&self, f: impl FnOnce(&Engine<M>) -> R) -> R {
        f(&self.inner.engine.borrow())
    }

    /// A query's data as the user should see it (pending writes laid over).
    pub fn view(&self, key: &M::Key) -> Option<M::Data> {
        self.inner.engine.borrow().view(key)
    }

    pub fn freshness(&self, key: &M::Key) -> Freshness {
        self.inner.engine.borrow().freshness(key)
    }

    pub fn status(&self) -> ConnectionStatus {
        self.inner.engine.borrow().status().clone()
    }

    pub fn pending_for(&self, entity: Uuid) -> usize {
        self.inner.engine.borrow().pending_for(entity)
    }

    /// Writes waiting for the user's decision (keep mine / take theirs): (write id, entity id, their version).
    pub fn conflicts(&self) -> Vec<(Uuid, Uuid, serde_json::Value)> {
        let engine = self.inner.engine.borrow();
        engine
            .conflicts()
            .iter()
            .map(|w| (w.write_id, M::entity(&w.op), w.conflict.as_ref().map(|c| c.current.clone()).unwrap_or_default()))
            .collect()
    }

    /// The entity of each write not yet on the server (one entry per write).
    pub fn pending_entities(&self) -> Vec<Uuid> {
        self.inner.engine.borrow().pending().iter().map(|w| M::entity(&w.op)).collect()
    }

    pub fn pending_count(&self) -> usize {
        self.inner.engine.borrow().pending().len()
    }

    pub fn metrics(&self) -> Metrics {
        self.inner.engine.borrow().metrics_at(now())
    }

    /// Calls `f` on every notification; returns an id for [`Runtime::off`].
    pub fn on_notify(&self, f: impl Fn(&Notification<M>) + 'static) -> u64 {
        let id = self.inner.next_listener.get();
        self.inner.next_listener.set(id + 1);
        self.inner.listeners.borrow_mut().push((id, Rc::new(f)));
        id
    }

    pub fn off(&self, id: u64) {
        self.inner.listeners.borrow_mut().retain(|(i, _)| *i != id);
    }

    // ---- the driver loop ----------------------------------------------------------------------------------------

    fn input(&self, input: Input<M>) {
        self.inner.engine.borrow_mut().handle_input(now(), input);
        self.pump();
    }

    /// Drains the engine's outputs and carries them out. Outputs are collected first, so callbacks that read the
    /// engine never meet it borrowed.
    fn pump(&self) {
        let mut outputs = Vec::new();
        let deadline = {
            let mut engine = self.inner.engine.borrow_mut();
            loop {
                match engine.poll_output() {
                    Output::Timeout(deadline) => break deadline,
                    out => outputs.push(out),
                }
            }
        };
        for out in outputs {
            self.carry_out(out);
        }
        self.arm_timer(deadline);
    }

    /// One browser timer for the engine's next deadline. Not re-armed when the deadline did not move, and one
    /// callback made once for the page: a pump per message (a hidden tab gets one per change and per heartbeat)
    /// leaves no JS garbage behind.
    fn arm_timer(&self, deadline: Millis) {
        if self.inner.timer.get().is_some() && self.inner.armed_for.get() == deadline {
            return;
        }
        if let Some(t) = self.inner.timer.take() {
            window().clear_timeout_with_handle(t);
        }
        self.inner.armed_for.set(deadline);
        if deadline == Millis::MAX {
            return; // no timer (an asleep tab): nothing runs until an input
        }
        if self.inner.timer_callback.borrow().is_none() {
            let rt = self.clone();
            let callback = Closure::<dyn FnMut()>::new(move || {
                rt.inner.timer.set(None);
                rt.inner.engine.borrow_mut().handle_timeout(now());
                rt.pump();
            });
            *self.inner.timer_callback.borrow_mut() = Some(callback);
        }
        let delay = deadline.saturating_sub(now()).min(i32::MAX as u64) as i32;
        let handle = self.inner.timer_callback.borrow().as_ref().and_then(|callback| {
            window()
                .set_timeout_with_callback_and_timeout_and_arguments_0(callback.as_ref().unchecked_ref(), delay)
                .ok()
        });
        self.inner.timer.set(handle);
    }

    fn carry_out(&self, out: Output<M>) {
        match out {
            Output::OpenSocket => self.open_socket(),
            Output::CloseSocket { code, reason } => self.close_socket(code, &reason),
            Output::SendSocket(msg) => self.send_socket(&serde_json::to_string(&msg).expect("messages serialize")),
            Output::Http { id, request } => self.fetch(id, request),
            Output::CancelHttp { id } => self.cancel_fetch(id),
            Output::Broadcast(msg) => self.broadcast(&msg),
            Output::ListenToTabs(listen) => self.listen_to_tabs(listen),
            Output::Persist(op) => self.storage(storage::Request::Persist(op)),
            Output::Load(what) => self.storage(storage::Request::Load(what)),
            Output::Notify(n) => {
                let listeners: Vec<Listener<M>> =
                    self.inner.listeners.borrow().iter().map(|(_, f)| f.clone()).collect();
                for f in listeners {
                    f(&n);
                }
            }
            Output::HoldTabLock { tab } => self.hold_tab_lock(tab),
            Output::WatchTab { tab } => self.watch_tab(tab),
            Output::QueueForLock => self.request_lock(false),
            Output::ClaimLeadership => self.request_lock(true),
            Output::Timeout(_) => {}
        }
    }

    /// `window.__syncline()` returns this tab's role, connection status and metrics, for tests and debugging.
    fn expose_for_tests(&self) {
        let rt = self.clone();
        let f = Closure::<dyn Fn() -> JsValue>::new(move || {
            let engine = rt.inner.engine.borrow();
            let state = serde_json::json!({
                "namespace": rt.inner.namespace,
                "tab": rt.inner.tab.to_string(),
                "leader": engine.role() == Role::Leader,
                "asleep": engine.is_asleep(),
                "asleep_peers": engine.asleep_peers().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "status": engine.status(),
                "pending": engine.pending().len(),
                "metrics": engine.metrics_at(now()),
                "preferences": engine.preferences(),
                "long_tasks": rt.long_tasks(),
            });
            JsValue::from_str(&state.to_string())
        });
        let _ = js_sys::Reflect::set(&window(), &JsValue::from_str("__syncline"), f.as_ref());
        f.forget();
    }
}
