//! The browser runtime: drives the sans-IO [`Engine`] with real browser APIs. It is a translator — every
//! timer, retry and decision comes from the engine's outputs; this crate only carries them out and reports
//! what happened:
//!
//! | engine output | browser API |
//! |---|---|
//! | `OpenSocket` / `SendSocket` / `CloseSocket` | `WebSocket` (`/api/feed?client=<tab>`) |
//! | `Http` / `CancelHttp` | `fetch` with an `AbortController` |
//! | `Broadcast` | `BroadcastChannel("syncline")` |
//! | `Persist` | IndexedDB (`outbox`, `cache` stores) |
//! | `ClaimLeadership` | Web Locks `request(…, {steal: true})` |
//! | `Timeout(deadline)` | one `setTimeout` |
//!
//! and the other way: `visibilitychange`, `online`/`offline`, `navigator.connection` `change`, the `storage`
//! event (preferences set in another tab), the leader lock granted or lost, socket and fetch results.

mod js;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use syncline_engine::{
    ConflictPolicy, EffectiveType, Engine, EngineConfig, Freshness, HttpRequest, HttpResult, Input, LinkQuality,
    Millis, Notification, Output, PendingWrite, PersistOp, Preferences, Priority, QueryData, QueryKey, RequestId, Role,
    TabMessage,
};
use syncline_protocol::{BoardList, BoardSnapshot, WriteOp};
use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{AbortController, BroadcastChannel, CloseEvent, MessageEvent, WebSocket};

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

const LOCK: &str = "syncline-leader";
const PREFERENCES_KEY: &str = "syncline.preferences";

type Listener = Rc<dyn Fn(&Notification)>;

struct Socket {
    ws: WebSocket,
    handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    /// Detaches the handlers from the WebSocket and lets go of them only after the current task: the browser
    /// may still deliver an event queued for this socket (a close after we closed it), and a handler dropped
    /// under it throws "closure invoked recursively or after being dropped" — into every error monitor.
    fn retire(self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let handlers = self.handlers;
        spawn_local(async move { drop(handlers) });
    }
}

struct Inner {
    engine: RefCell<Engine>,
    tab: u64,
    socket: RefCell<Option<Socket>>,
    socket_generation: Cell<u64>,
    fetches: RefCell<HashMap<RequestId, AbortController>>,
    timer: Cell<Option<i32>>,
    timer_callback: RefCell<Option<Closure<dyn FnMut()>>>,
    channel: BroadcastChannel,
    lock_queued: Cell<bool>,
    listeners: RefCell<Vec<(u64, Listener)>>,
    long_tasks_observed: bool,
    next_listener: Cell<u64>,
    /// Closures registered with the browser for the page's lifetime.
    keep: RefCell<Vec<Closure<dyn FnMut(JsValue)>>>,
    /// IndexedDB requests, carried out one at a time in the order the engine asked for them (a delete never
    /// overtakes the put it follows).
    persist_queue: RefCell<VecDeque<PersistOp>>,
    persisting: Cell<bool>,
}

/// The sync runtime of this tab. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Rc<Inner>,
}

fn window() -> web_sys::Window {
    web_sys::window().expect("a browser window")
}

fn now() -> Millis {
    window().performance().map(|p| p.now() as Millis).unwrap_or(0)
}

fn link_quality() -> Option<LinkQuality> {
    let info = js::connection_info();
    if info.is_null() || info.is_undefined() {
        return None;
    }
    let get = |k: &str| js_sys::Reflect::get(&info, &JsValue::from_str(k)).ok();
    let effective_type = match get("effectiveType").and_then(|v| v.as_string()).as_deref() {
        Some("slow-2g") => EffectiveType::Slow2g,
        Some("2g") => EffectiveType::TwoG,
        Some("3g") => EffectiveType::ThreeG,
        _ => EffectiveType::FourG,
    };
    Some(LinkQuality {
        effective_type,
        rtt_ms: get("rtt").and_then(|v| v.as_f64()).map(|r| r as u32),
        save_data: get("saveData").and_then(|v| v.as_bool()).unwrap_or(false),
    })
}

/// Preferences saved in `localStorage` (shared by every tab of the origin).
pub fn stored_preferences() -> Preferences {
    window()
        .local_storage()
        .ok()
        .flatten()
        .and_then(|s| s.get_item(PREFERENCES_KEY).ok().flatten())
        .and_then(|json| serde_json::from_str::<Preferences>(&json).ok())
        .filter(|p| p.validate().is_ok())
        .unwrap_or_default()
}

async fn idb_strings(store: &str) -> Vec<String> {
    match js::idb_all(store).await {
        Ok(v) => js_sys::Array::from(&v).iter().filter_map(|x| x.as_string()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn stored_outbox() -> Vec<PendingWrite> {
    idb_strings("outbox").await.iter().filter_map(|s| serde_json::from_str(s).ok()).collect()
}

impl Runtime {
    /// Starts the runtime: reads the environment and what was persisted, listens to the browser, queues for the
    /// leader lock.
    pub async fn start() -> Runtime {
        let tab = (js_sys::Math::random() * 9_007_199_254_740_991.0) as u64;
        let engine =
            Engine::new(EngineConfig::default(), stored_preferences(), tab, tab, now(), js_sys::Date::now() as u64);
        let channel = BroadcastChannel::new("syncline").expect("BroadcastChannel");
        let rt = Runtime {
            inner: Rc::new(Inner {
                engine: RefCell::new(engine),
                tab,
                socket: RefCell::new(None),
                socket_generation: Cell::new(0),
                fetches: RefCell::new(HashMap::new()),
                timer: Cell::new(None),
                timer_callback: RefCell::new(None),
                channel,
                lock_queued: Cell::new(false),
                listeners: RefCell::new(Vec::new()),
                long_tasks_observed: js::observe_long_tasks(),
                next_listener: Cell::new(1),
                keep: RefCell::new(Vec::new()),
                persist_queue: RefCell::new(VecDeque::new()),
                persisting: Cell::new(false),
            }),
        };
        let document = window().document().expect("document");
        rt.input(Input::Visibility { visible: document.visibility_state() == web_sys::VisibilityState::Visible });
        rt.input(Input::Network { online: window().navigator().on_line() });
        if let Some(link) = link_quality() {
            rt.input(Input::Link(link));
        }
        // Listen before the first await: the leader answers this tab's presence (with its status) at once, and
        // an answer that arrives while nobody listens is lost.
        rt.listen();
        let cache: Vec<(QueryKey, QueryData)> =
            idb_strings("cache").await.iter().filter_map(|s| serde_json::from_str(s).ok()).collect();
        rt.input(Input::Restored { outbox: stored_outbox().await, cache });
        rt.request_lock(false);
        rt.expose_for_tests();
        rt
    }

    // ---- what the app calls ---------------------------------------------------------------------------------

    pub fn tab(&self) -> u64 {
        self.inner.tab
    }

    pub fn subscribe(&self, key: QueryKey) {
        self.input(Input::Subscribe(key));
    }

    pub fn unsubscribe(&self, key: QueryKey) {
        self.input(Input::Unsubscribe(key));
    }

    /// Queues a user write (applied optimistically at once); returns its id.
    pub fn write(&self, op: WriteOp) -> Uuid {
        let id = self.inner.engine.borrow_mut().write_at(now(), op, Priority::UserVisible, ConflictPolicy::default());
        self.pump();
        id
    }

    /// A new id for an entity the user creates.
    pub fn new_id(&self) -> Uuid {
        self.inner.engine.borrow_mut().new_id()
    }

    /// Marks a query critical: kept fresh while no tab is visible when the user chose "critical data only".
    pub fn set_critical(&self, key: QueryKey, critical: bool) {
        self.input(Input::Critical { key, critical });
    }

    /// The user is about to open this (hovers or focuses a link to it): fetch it now if it is missing or stale.
    pub fn prefetch(&self, key: QueryKey) {
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

    pub fn retry_now(&self) {
        self.input(Input::RetryNow);
    }

    /// Saves preferences for every tab (they follow through the `storage` event) and applies them here.
    pub fn set_preferences(&self, prefs: Preferences) -> Result<(), String> {
        prefs.validate()?;
        if let Some(storage) = window().local_storage().ok().flatten() {
            let _ = storage.set_item(PREFERENCES_KEY, &serde_json::to_string(&prefs).expect("prefs serialize"));
        }
        self.input(Input::Preferences(prefs));
        Ok(())
    }

    pub fn board(&self, id: Uuid) -> Option<BoardSnapshot> {
        self.inner.engine.borrow().board(id)
    }

    pub fn board_gone(&self, id: Uuid) -> bool {
        self.inner.engine.borrow().board_gone(id)
    }

    pub fn summary(&self, board: Uuid) -> Option<syncline_protocol::BoardSummary> {
        self.inner.engine.borrow().summary(board).cloned()
    }

    pub fn boards(&self) -> Option<BoardList> {
        self.inner.engine.borrow().boards()
    }

    pub fn freshness(&self, key: QueryKey) -> Freshness {
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
        self.inner
            .engine
            .borrow()
            .conflicts()
            .iter()
            .map(|w| (w.write_id, syncline_engine::apply::entity_of(&w.op), w.conflict.clone().unwrap_or_default()))
            .collect()
    }

    /// The entity of each write not yet on the server (one entry per write).
    pub fn pending_entities(&self) -> Vec<Uuid> {
        self.inner.engine.borrow().pending().iter().map(|w| syncline_engine::apply::entity_of(&w.op)).collect()
    }

    pub fn pending_count(&self) -> usize {
        self.inner.engine.borrow().pending().len()
    }

    pub fn metrics(&self) -> Metrics {
        self.inner.engine.borrow().metrics_at(now())
    }

    /// Calls `f` on every notification; returns an id for [`Runtime::off`].
    pub fn on_notify(&self, f: impl Fn(&Notification) + 'static) -> u64 {
        let id = self.inner.next_listener.get();
        self.inner.next_listener.set(id + 1);
        self.inner.listeners.borrow_mut().push((id, Rc::new(f)));
        id
    }

    pub fn off(&self, id: u64) {
        self.inner.listeners.borrow_mut().retain(|(i, _)| *i != id);
    }

    // ---- the driver loop ------------------------------------------------------------------------------------

    fn input(&self, input: Input) {
        self.inner.engine.borrow_mut().handle_input(now(), input);
        self.pump();
    }

    /// Drains the engine's outputs and carries them out. Outputs are collected first, so callbacks that read
    /// the engine never meet it borrowed.
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

    fn arm_timer(&self, deadline: Millis) {
        if let Some(t) = self.inner.timer.take() {
            window().clear_timeout_with_handle(t);
        }
        let rt = self.clone();
        let callback = Closure::<dyn FnMut()>::new(move || {
            rt.inner.timer.set(None);
            rt.inner.engine.borrow_mut().handle_timeout(now());
            rt.pump();
        });
        let delay = deadline.saturating_sub(now()).min(i32::MAX as u64) as i32;
        let handle = window()
            .set_timeout_with_callback_and_timeout_and_arguments_0(callback.as_ref().unchecked_ref(), delay)
            .ok();
        self.inner.timer.set(handle);
        *self.inner.timer_callback.borrow_mut() = Some(callback);
    }

    fn carry_out(&self, out: Output) {
        match out {
            Output::OpenSocket => self.open_socket(),
            Output::CloseSocket { code, reason } => {
                let socket = self.inner.socket.borrow_mut().take();
                if let Some(socket) = socket {
                    self.inner.socket_generation.set(self.inner.socket_generation.get() + 1);
                    let _ = socket.ws.close_with_code_and_reason(
                        if code == 1000 || (3000..5000).contains(&code) { code } else { 1000 },
                        &reason,
                    );
                    socket.retire();
                }
            }
            Output::SendSocket(msg) => {
                if let Some(socket) = self.inner.socket.borrow().as_ref() {
                    let _ = socket.ws.send_with_str(&serde_json::to_string(&msg).expect("messages serialize"));
                }
            }
            Output::Http { id, request } => self.fetch(id, request),
            Output::CancelHttp { id } => {
                if let Some(c) = self.inner.fetches.borrow_mut().remove(&id) {
                    c.abort();
                }
            }
            Output::Broadcast(msg) => {
                let _ = self
                    .inner
                    .channel
                    .post_message(&JsValue::from_str(&serde_json::to_string(&msg).expect("tab messages serialize")));
            }
            Output::Persist(op) => self.persist(op),
            Output::Notify(n) => {
                let listeners: Vec<Listener> = self.inner.listeners.borrow().iter().map(|(_, f)| f.clone()).collect();
                for f in listeners {
                    f(&n);
                }
            }
            Output::ClaimLeadership => self.request_lock(true),
            Output::Timeout(_) => {}
        }
    }

    fn open_socket(&self) {
        let generation = self.inner.socket_generation.get() + 1;
        self.inner.socket_generation.set(generation);
        let location = window().location();
        let scheme = if location.protocol().unwrap_or_default() == "https:" { "wss" } else { "ws" };
        let url = format!("{scheme}://{}/api/feed?client={}", location.host().unwrap_or_default(), self.inner.tab);
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(_) => {
                self.input(Input::SocketClosed { code: None, reason: "could not create the WebSocket".into() });
                return;
            }
        };
        let current = {
            let rt = self.clone();
            move || rt.inner.socket_generation.get() == generation
        };
        let rt = self.clone();
        let is_current = current.clone();
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if is_current() {
                rt.input(Input::SocketOpened);
            }
        });
        let rt = self.clone();
        let is_current = current.clone();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if !is_current() {
                return;
            }
            if let Some(text) = e.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()) {
                rt.input(Input::SocketMessage(text));
            }
        });
        let rt = self.clone();
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if !current() {
                return;
            }
            let socket = rt.inner.socket.borrow_mut().take();
            if let Some(socket) = socket {
                socket.retire(); // this very handler is among them: dropped after it returns
            }
            let (code, reason) =
                e.dyn_ref::<CloseEvent>().map(|c| (Some(c.code()), c.reason())).unwrap_or((None, String::new()));
            rt.input(Input::SocketClosed { code, reason });
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let replaced =
            self.inner.socket.borrow_mut().replace(Socket { ws, handlers: vec![on_open, on_message, on_close] });
        if let Some(old) = replaced {
            old.retire();
        }
    }

    /// Queues an IndexedDB request; one task carries them out in order and tells the engine when an outbox
    /// entry is stored (or could not be: the write then lives on in memory only, and is still sent).
    fn persist(&self, op: PersistOp) {
        self.inner.persist_queue.borrow_mut().push_back(op);
        if self.inner.persisting.replace(true) {
            return;
        }
        let rt = self.clone();
        spawn_local(async move {
            loop {
                let next = rt.inner.persist_queue.borrow_mut().pop_front();
                let Some(op) = next else { break };
                let stored = match &op {
                    PersistOp::OutboxPut { write } => Some(write.write_id),
                    _ => None,
                };
                persist(op).await;
                if let Some(write_id) = stored {
                    rt.input(Input::Persisted { write_id });
                }
            }
            rt.inner.persisting.set(false);
        });
    }

    fn fetch(&self, id: RequestId, request: HttpRequest) {
        let controller = AbortController::new().ok();
        let init = web_sys::RequestInit::new();
        init.set_method(request.method);
        if let Some(c) = &controller {
            init.set_signal(Some(&c.signal()));
        }
        let headers = web_sys::Headers::new().expect("Headers");
        let _ = headers.set("x-syncline-client", &self.inner.tab.to_string());
        if let Some(tag) = &request.if_none_match {
            let _ = headers.set("if-none-match", tag);
        }
        if let Some(body) = &request.body {
            let _ = headers.set("content-type", "application/json");
            init.set_body(&JsValue::from_str(body));
        }
        init.set_headers(&headers);
        if let Some(c) = controller {
            self.inner.fetches.borrow_mut().insert(id, c);
        }
        let rt = self.clone();
        spawn_local(async move {
            let result = match web_sys::Request::new_with_str_and_init(&request.path, &init) {
                Err(e) => HttpResult::NetworkError(format!("{e:?}")),
                Ok(req) => match JsFuture::from(window().fetch_with_request(&req)).await {
                    Err(e) => HttpResult::NetworkError(e.as_string().unwrap_or_else(|| "fetch failed".into())),
                    Ok(resp) => {
                        let resp: web_sys::Response = resp.unchecked_into();
                        let status = resp.status();
                        let etag = resp.headers().get("etag").ok().flatten();
                        let body = match resp.text() {
                            Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
                            Err(_) => String::new(),
                        };
                        HttpResult::Response { status, body, etag }
                    }
                },
            };
            if rt.inner.fetches.borrow_mut().remove(&id).is_some() {
                rt.input(Input::Http { id, result });
            }
        });
    }

    fn request_lock(&self, steal: bool) {
        if !steal {
            if self.inner.lock_queued.get() {
                return;
            }
            self.inner.lock_queued.set(true);
        }
        let rt = self.clone();
        let granted = Closure::once_into_js(move || {
            rt.inner.lock_queued.set(false);
            let rt2 = rt.clone();
            spawn_local(async move {
                // The outbox every tab of this browser persisted: the new leader sends what is still queued.
                let outbox = stored_outbox().await;
                rt2.input(Input::Restored { outbox, cache: Vec::new() });
                rt2.input(Input::Role(Role::Leader));
            });
        });
        let rt = self.clone();
        let lost = Closure::once_into_js(move || {
            rt.input(Input::Role(Role::Follower));
            rt.request_lock(false);
        });
        js::hold_lock(LOCK, steal, granted.unchecked_ref(), lost.unchecked_ref());
    }

    fn listen(&self) {
        let document = window().document().expect("document");
        let rt = self.clone();
        self.add_listener(document.as_ref(), "visibilitychange", move |_| {
            let visible =
                window().document().map(|d| d.visibility_state() == web_sys::VisibilityState::Visible).unwrap_or(true);
            rt.input(Input::Visibility { visible });
        });
        let rt = self.clone();
        self.add_listener(window().as_ref(), "online", move |_| rt.input(Input::Network { online: true }));
        let rt = self.clone();
        self.add_listener(window().as_ref(), "offline", move |_| rt.input(Input::Network { online: false }));
        let rt = self.clone();
        self.add_listener(window().as_ref(), "storage", move |e| {
            let Some(e) = e.dyn_ref::<web_sys::StorageEvent>() else { return };
            if e.key().as_deref() == Some(PREFERENCES_KEY) {
                rt.input(Input::Preferences(stored_preferences()));
            }
        });
        let rt = self.clone();
        self.add_listener(window().as_ref(), "pagehide", move |_| {
            let bye = TabMessage::Goodbye { tab: rt.inner.tab };
            let _ = rt.inner.channel.post_message(&JsValue::from_str(&serde_json::to_string(&bye).expect("json")));
        });
        let rt = self.clone();
        self.add_listener(self.inner.channel.as_ref(), "message", move |e| {
            let Some(text) = e.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()) else { return };
            if let Ok(msg) = serde_json::from_str::<TabMessage>(&text) {
                rt.input(Input::Tab(msg));
            }
        });
        let rt = self.clone();
        let on_link = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(link) = link_quality() {
                rt.input(Input::Link(link));
            }
        });
        js::on_connection_change(on_link.as_ref().unchecked_ref());
        self.inner.keep.borrow_mut().push(on_link);
    }

    fn add_listener(&self, target: &web_sys::EventTarget, event: &str, f: impl FnMut(JsValue) + 'static) {
        let closure = Closure::<dyn FnMut(JsValue)>::new(f);
        let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
        self.inner.keep.borrow_mut().push(closure);
    }

    /// `window.__syncline()` returns this tab's role, connection status and metrics, for tests and debugging.
    fn expose_for_tests(&self) {
        let rt = self.clone();
        let f = Closure::<dyn Fn() -> JsValue>::new(move || {
            let engine = rt.inner.engine.borrow();
            let state = serde_json::json!({
                "tab": rt.inner.tab.to_string(),
                "leader": engine.role() == Role::Leader,
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

async fn persist(op: PersistOp) {
    let result = match &op {
        PersistOp::OutboxPut { write } => {
            js::idb_put("outbox", &write.write_id.to_string(), &serde_json::to_string(write).expect("json")).await
        }
        PersistOp::OutboxDelete { write_id } => js::idb_delete("outbox", &write_id.to_string()).await,
        PersistOp::CachePut { key, data } => {
            let k = serde_json::to_string(key).expect("json");
            js::idb_put("cache", &k, &serde_json::to_string(&(key, data)).expect("json")).await
        }
        PersistOp::CacheDelete { key } => js::idb_delete("cache", &serde_json::to_string(key).expect("json")).await,
    };
    if let Err(e) = result {
        web_sys::console::warn_1(&JsValue::from_str(&format!("syncline: could not persist: {e:?}")));
    }
}
