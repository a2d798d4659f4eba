//! The engine: told what happens (`handle_input`, `handle_timeout`), it says what to do (`poll_output`, until
//! `Output::Timeout`). It holds no clock, does no I/O and draws randomness only from the seeded generator it
//! owns, so the same inputs always give the same outputs.
//!
//! It is composed of parts, each in its own file and owning its state: the query cache (`queries.rs`), the
//! transport and its streams (`transport.rs`), the outbox (`outbox.rs`), the other tabs (`tabs.rs`) and the
//! status shown to the user (`status.rs`). This file keeps the environment (visibility, network, link, role,
//! clocks), dispatches inputs, orders the reconciliation that follows every input, and merges the parts' timers.

use crate::collections::{Map, Set};
use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use syncline_protocol::{Change, StreamName};
use uuid::Uuid;

use crate::config::{EngineConfig, InjectedBug, Preferences};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::outbox::Outbox;
use crate::queries::Queries;
use crate::status::{Status, add_state_time};
use crate::tabs::Tabs;
use crate::timers::{Soonest, Timer};
use crate::transport::Transport;
use crate::types::*;

/// What the browser says about where this tab stands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Environment {
    pub visible: bool,
    pub online: bool,
    pub link: LinkQuality,
}

/// What a request in flight is for.
#[derive(Debug, Clone)]
pub(crate) enum Purpose<M: Model> {
    Query(M::Key),
    LongPoll(StreamName),
    Writes(Vec<Uuid>),
}

#[derive(Debug)]
pub(crate) struct InFlight<M: Model> {
    pub purpose: Purpose<M>,
    pub sent_at: Millis,
}

/// The sans-IO sync engine of one tab, for the app's data model `M`.
pub struct Engine<M: Model> {
    pub(crate) cfg: EngineConfig,
    pub(crate) prefs: Preferences,
    pub(crate) tab: TabId,
    pub(crate) rng: SmallRng,
    pub(crate) now: Millis,
    pub(crate) env: Environment,
    pub(crate) role: Role,
    /// Wall-clock time (Unix ms) at engine time `clock_origin`: write ids are UUIDv7 with their creation time, and
    /// presence messages carry theirs.
    epoch_at_origin: u64,
    clock_origin: Millis,
    pub(crate) queries: Queries<M>,
    pub(crate) transport: Transport,
    pub(crate) outbox: Outbox<M>,
    pub(crate) tabs: Tabs<M>,
    pub(crate) status: Status,
    pub(crate) requests: Map<RequestId, InFlight<M>>,
    next_request: RequestId,
    /// Outbox reads asked for, and the one whose answer makes this tab the leader (the lock was granted).
    pub(crate) outbox_loads_issued: u32,
    outbox_loads_done: u32,
    pub(crate) lead_after_load: Option<u32>,
    /// The outbox read asked for when this tab woke (`Engine::wake`): its answer says which writes settled while
    /// it slept.
    pub(crate) woke_load: Option<u32>,
    pub(crate) metrics: Metrics,
    /// The session ended (401, or the feed closed with 4001): no more requests.
    pub(crate) signed_out: bool,
    pub(crate) out: VecDeque<Output<M>>,
    /// Queries whose views must re-read, told at the end of the reconcile — or, while the tab is hidden, when it
    /// is shown (with the latest connection status and outbox count held back meanwhile).
    pub(crate) to_notify: Set<M::Key>,
    held_connection: Option<ConnectionStatus>,
    held_outbox: Option<usize>,
    /// Changes the leader shared while this tab was a hidden follower, not yet applied (`tabs.rs`
    /// `hold_changes`), and whether some were dropped for being too many.
    pub(crate) held_changes: Vec<(StreamName, Vec<Change<M::Change>>)>,
    pub(crate) held_dropped: Set<StreamName>,
    pub(crate) held_count: usize,
    /// Server commit time (epoch ms) of the oldest change applied since the UI last said it rendered.
    pub(crate) unrendered_since: Option<u64>,
    /// The deadline the driver was last given (`Output::Timeout`).
    promised_deadline: Millis,
}

/// Woken this long after its deadline, a tab was frozen by the browser.
const FROZEN_AFTER_MS: Millis = 3_000;

/// The WebSocket close code of a feed whose session ended (signed out, or expired).
pub const SESSION_ENDED_CLOSE_CODE: u16 = syncline_protocol::feed::close_code::SESSION_ENDED;

impl<M: Model> Engine<M> {
    /// A new engine for tab `tab`, starting at `now`, visible and online until told otherwise, follower until it
    /// wins the leader lock. `seed` feeds its random choices (jitter, ids); `epoch_ms` is the wall clock (Unix ms) at
    /// `now`. Its first outputs read the stored outbox and queue for the leader lock.
    pub fn new(cfg: EngineConfig, prefs: Preferences, tab: TabId, seed: u64, now: Millis, epoch_ms: u64) -> Engine<M> {
        let mut engine = Engine {
            cfg,
            prefs,
            tab,
            rng: SmallRng::seed_from_u64(seed),
            now,
            env: Environment { visible: true, online: true, link: LinkQuality::default() },
            role: Role::Follower,
            epoch_at_origin: epoch_ms,
            clock_origin: now,
            queries: Queries::default(),
            transport: Transport::default(),
            outbox: Outbox::default(),
            // Nothing is said until the driver has told the engine where it stands (visibility first): the first
            // presence goes out with the first input, so a tab that opens hidden never announces itself visible.
            tabs: Tabs::new(now),
            status: Status::default(),
            requests: Map::new(),
            next_request: 1,
            outbox_loads_issued: 1,
            outbox_loads_done: 0,
            lead_after_load: None,
            woke_load: None,
            metrics: Metrics::default(),
            signed_out: false,
            out: VecDeque::new(),
            to_notify: Set::new(),
            held_connection: None,
            held_changes: Vec::new(),
            held_dropped: Set::new(),
            held_count: 0,
            held_outbox: None,
            unrendered_since: None,
            promised_deadline: Millis::MAX,
        };
        engine.out.push_back(Output::HoldTabLock { tab });
        engine.out.push_back(Output::Load(Load::Outbox));
        engine.out.push_back(Output::QueueForLock);
        engine
    }

    // ---- the driver contract ------------------------------------------------------------------------------------

    /// Tells the engine something happened at `now`. Then drain [`Engine::poll_output`].
    pub fn handle_input(&mut self, now: Millis, input: Input<M>) {
        self.advance(now);
        match input {
            Input::Visibility { visible } => self.on_visibility(visible),
            Input::Network { online } => self.on_network(online),
            Input::Link(link) => self.env.link = link,
            Input::LockGranted => self.on_lock_granted(),
            Input::LockLost => self.on_lock_lost(),
            Input::Closing => self.on_closing(),
            Input::SignOut => self.sign_out(true),
            Input::Preferences(prefs) => self.on_preferences(prefs),
            Input::OutboxLoaded { outbox } => {
                self.outbox_loads_done += 1;
                if self.woke_load.is_some_and(|n| self.outbox_loads_done >= n) {
                    self.woke_load = None;
                    self.settled_while_asleep(&outbox);
                }
                self.on_outbox_loaded(outbox);
                if self.lead_after_load.is_some_and(|n| self.outbox_loads_done >= n) {
                    self.lead_after_load = None;
                    self.on_role(Role::Leader);
                }
            }
            Input::CacheLoaded { key, data } => self.on_cache_loaded(key, data),
            Input::Subscribe(key) => self.subscribe(key),
            Input::Unsubscribe(key) => self.unsubscribe(key),
            Input::Critical { key, critical } => self.set_critical(key, critical),
            Input::Write { op, priority, policy, seen } => {
                self.write(op, priority, policy, seen);
            }
            Input::ResolveConflict { write_id, keep_mine } => self.resolve_conflict(write_id, keep_mine),
            Input::RetryNow => {
                if self.is_leader() {
                    self.retry_now()
                } else {
                    self.out.push_back(Output::Broadcast(TabMessage::RetryNow));
                }
            }
            Input::Prefetch(key) => self.prefetch(key),
            Input::Persisted { write_id } => self.on_persisted(write_id),
            Input::SocketOpened => self.on_socket_opened(),
            // The server closes a feed whose session ended with 4001.
            Input::SocketClosed { code: Some(SESSION_ENDED_CLOSE_CODE), .. } => {
                self.on_socket_closed();
                self.sign_out(true);
            }
            Input::SocketClosed { .. } => self.on_socket_closed(),
            Input::SocketMessage(text) => self.on_socket_message(&text),
            Input::Http { id, result } => self.on_http(id, result),
            Input::TabGone { tab } => self.on_tab_gone(tab),
            Input::Tab(msg) => self.on_tab(msg),
        }
        self.reconcile();
    }

    /// The deadline returned by `Output::Timeout` has come.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        self.reconcile();
    }

    /// The next thing to do; `Output::Timeout(deadline)` when there is nothing more.
    pub fn poll_output(&mut self) -> Output<M> {
        if let Some(out) = self.out.pop_front() {
            return out;
        }
        // No timer (an asleep tab): nothing to do until an input.
        let deadline = self.next_timer().map_or(Millis::MAX, |(t, _)| t);
        self.promised_deadline = deadline;
        Output::Timeout(deadline)
    }

    /// The soonest timer of every part, and why: `Output::Timeout` is its time.
    pub fn next_timer(&self) -> Option<(Millis, Timer)> {
        let mut soonest = Soonest::after(self.now);
        let leader = self.is_leader();
        self.tabs.poll_timeout(&self.cfg, &mut soonest);
        self.transport.poll_timeout(leader, self.cfg.ping_interval_ms, &mut soonest);
        self.queries.poll_timeout(leader, self.cfg.gc_time_ms, &mut soonest);
        self.outbox.poll_timeout(leader, &mut soonest);
        soonest.get()
    }

    /// Accepts a write from the UI; returns its id. (Same as `Input::Write`, with the id.)
    pub fn write_at(&mut self, now: Millis, op: M::Op, priority: Priority, policy: ConflictPolicy) -> Uuid {
        self.accept_write(now, op, priority, policy, None)
    }

    /// A write the user began from what they saw earlier (`seen`, from [`Engine::seen`] when they opened an
    /// editor): based on that, not on the entity as it is by now — so a change someone else made in between is
    /// a conflict the policy decides (rebased if it touched other fields), not overwritten unseen.
    pub fn write_seen_at(
        &mut self,
        now: Millis,
        op: M::Op,
        priority: Priority,
        policy: ConflictPolicy,
        seen: Seen,
    ) -> Uuid {
        self.accept_write(now, op, priority, policy, Some(seen))
    }

    fn accept_write(
        &mut self,
        now: Millis,
        op: M::Op,
        priority: Priority,
        policy: ConflictPolicy,
        seen: Option<Seen>,
    ) -> Uuid {
        self.advance(now);
        let id = self.write(op, priority, policy, seen);
        self.reconcile();
        id
    }

    /// The UI put on screen what it read (driver: the frame after a notification); `epoch_ms` is this device's
    /// wall clock. Records change → screen latency for the changes applied since the last render.
    pub fn rendered(&mut self, epoch_ms: u64) {
        if let Some(at) = self.unrendered_since.take() {
            self.metrics.change_to_screen.record(epoch_ms.saturating_sub(at));
        }
    }

    /// A fresh random id from the engine's generator (for entities the UI creates).
    pub fn new_id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    /// A write id: a UUIDv7 carrying the wall-clock time it was made, so a server that no longer remembers it can
    /// tell it is too old to apply safely.
    pub(crate) fn new_write_id(&mut self) -> Uuid {
        let epoch = self.epoch_now();
        uuid::Builder::from_unix_timestamp_millis(epoch, &self.rng.random()).into_uuid()
    }

    /// The wall clock now (Unix ms), as far as the driver told.
    pub(crate) fn epoch_now(&self) -> u64 {
        self.epoch_at_origin + self.now.saturating_sub(self.clock_origin)
    }

    // ---- what the UI reads --------------------------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn tab(&self) -> TabId {
        self.tab
    }

    pub fn status(&self) -> &ConnectionStatus {
        &self.status.current
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics as of `now`, counting the time spent in the current state since the last input.
    pub fn metrics_at(&self, now: Millis) -> Metrics {
        let mut m = self.metrics.clone();
        add_state_time(&mut m, &self.status.current, now.saturating_sub(self.now));
        m
    }

    pub fn preferences(&self) -> &Preferences {
        &self.prefs
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// A query's data as the server last gave it (no pending writes laid over).
    pub fn data(&self, key: &M::Key) -> Option<&M::Data> {
        self.queries.map.get(key)?.data.as_ref()
    }

    /// A query's data as the user should see it: the server's, with this browser's pending writes laid over.
    pub fn view(&self, key: &M::Key) -> Option<M::Data> {
        let pending: Vec<&M::Op> = self.outbox.sorted().into_iter().map(|w| &w.op).collect();
        M::overlay(key, self.data(key), &pending)
    }

    // ---- the environment ----------------------------------------------------------------------------------------

    fn advance(&mut self, now: Millis) {
        let now = now.max(self.now);
        // Woken long after the deadline it asked for (the presence heartbeat keeps that at most a couple of seconds
        // away): the browser froze this tab. What it knew of the others is stale; if it is hidden, count the frozen
        // time as time with no tab visible, so a hidden tab resumed after the grace period does not start using the
        // network again as if the others had just been hidden.
        let frozen = now > self.promised_deadline.saturating_add(FROZEN_AFTER_MS);
        if frozen && !self.env.visible && self.tabs.no_visible_since.is_none() {
            self.tabs.no_visible_since = Some(self.promised_deadline);
        }
        // A leader that timed this follower out shared nothing with it since (or only with others): it asks again.
        if frozen && !self.is_leader() && !self.tabs.asleep {
            self.tabs.resync_after_freeze = true;
        }
        add_state_time(&mut self.metrics, &self.status.current, now - self.now);
        self.now = now;
        self.metrics.sample(now);
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Whether the simulation switched this known bug on (never, without the `bug-injection` feature).
    #[inline]
    pub(crate) fn bug(&self, bug: InjectedBug) -> bool {
        #[cfg(feature = "bug-injection")]
        return self.cfg.injected_bug == Some(bug);
        #[cfg(not(feature = "bug-injection"))]
        {
            let _ = bug;
            false
        }
    }

    fn on_network(&mut self, online: bool) {
        if self.env.online == online {
            return;
        }
        self.env.online = online;
        if online {
            // Back online: reconnect at once (no waiting out a backoff timer) and catch up.
            self.transport_online();
            self.outbox.retry_at = self.now;
            self.outbox.failures = 0;
            for q in self.queries.map.iter_mut().map(|(_, v)| v) {
                q.retry_at = None;
                q.error = None;
                q.failures = 0;
            }
            self.catch_up_stale();
        } else {
            self.drop_socket("offline");
            self.cancel_long_polls();
            self.mark_current_now();
        }
        self.notify_all_queries();
    }

    fn on_preferences(&mut self, prefs: Preferences) {
        if prefs.validate().is_err() || prefs == self.prefs {
            return;
        }
        self.prefs = prefs;
        self.out.push_back(Output::Notify(Notification::Preferences));
        for q in self.queries.map.iter_mut().map(|(_, v)| v) {
            q.next_poll = None;
        }
        for s in self.transport.streams.iter_mut().map(|(_, v)| v) {
            s.next_longpoll = s.next_longpoll.min(self.now);
        }
    }

    pub(crate) fn retry_now(&mut self) {
        self.transport_retry_now();
        self.outbox.retry_at = self.now;
        for q in self.queries.map.iter_mut().map(|(_, v)| v) {
            if q.retry_at.is_some() {
                q.retry_at = Some(self.now);
            }
        }
    }

    // ---- requests -----------------------------------------------------------------------------------------------

    pub(crate) fn request(&mut self, purpose: Purpose<M>, request: HttpRequest) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.metrics.requests += 1;
        self.metrics.bytes_out += request.body.as_ref().map_or(0, |b| b.len() as u64);
        self.requests.insert(id, InFlight { purpose, sent_at: self.now });
        self.out.push_back(Output::Http { id, request });
        id
    }

    pub(crate) fn cancel(&mut self, id: RequestId) {
        if let Some(req) = self.requests.remove(&id) {
            if let Purpose::LongPoll(stream) = req.purpose
                && let Some(s) = self.transport.streams.get_mut(&stream)
            {
                s.longpoll = None;
            }
            self.out.push_back(Output::CancelHttp { id });
        }
    }

    fn on_http(&mut self, id: RequestId, result: HttpResult) {
        let Some(req) = self.requests.remove(&id) else { return };
        if matches!(result, HttpResult::Response { status: 401, .. }) {
            // No session (any more): nothing this tab asks will be answered until the user signs in again.
            self.sign_out(true);
            return;
        }
        match &result {
            HttpResult::Response { body, .. } => {
                self.metrics.bytes_in += body.len() as u64;
                self.on_server_answered();
            }
            HttpResult::NetworkError(_) => self.transport.http_answered = false,
        }
        match req.purpose {
            Purpose::Query(key) => {
                self.metrics.fetch_latency.record(self.now.saturating_sub(req.sent_at));
                self.on_query_result(key, id, result)
            }
            Purpose::LongPoll(stream) => self.on_long_poll_result(stream, id, result),
            Purpose::Writes(ids) => self.on_write_result(id, ids, result),
        }
    }

    // ---- reconcile ----------------------------------------------------------------------------------------------

    /// After every input: from where things stand, derive what should be happening and emit what makes it so — in
    /// this order, so the ramp-up after a recovery is catch up (socket, subscriptions, fetches), then the outbox,
    /// then live.
    /// The session ended: stop using the network for good (the app signs in again, with a new engine), and tell
    /// the user — and, when this tab found out, the other tabs.
    pub(crate) fn sign_out(&mut self, tell_tabs: bool) {
        if self.signed_out {
            return;
        }
        self.signed_out = true;
        self.drop_socket("signed out");
        self.cancel_long_polls();
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.cancel(id);
        }
        if tell_tabs {
            self.out.push_back(Output::Broadcast(TabMessage::SignedOut));
        }
        self.out.push_back(Output::Notify(Notification::SignedOut));
    }

    /// Whether this hidden follower fell asleep: it listens to no other tab until it is shown or leads.
    pub fn is_asleep(&self) -> bool {
        self.tabs.asleep
    }

    /// The other tabs this one counts as asleep (it keeps what they want fresh, if it leads), for tests and
    /// simulations.
    pub fn asleep_peers(&self) -> Vec<TabId> {
        self.tabs.peers.iter().filter(|(_, p)| p.asleep).map(|(tab, _)| *tab).collect()
    }

    /// Whether the session ended (see [`Engine::sign_out`]).
    pub fn is_signed_out(&self) -> bool {
        self.signed_out
    }

    fn reconcile(&mut self) {
        // Leading now (a hidden follower that took over): what it held is applied before the data is used.
        // (A tab that is shown applies it in `on_visibility`, before it checks what is stale.)
        if self.is_leader() {
            self.apply_held_changes();
        }
        self.presence_and_peers();
        self.fall_asleep_if_due();
        self.gc();
        if self.signed_out {
            // Nothing more goes to the server; the tabs still talk among themselves.
        } else if self.is_leader() {
            self.transport();
            self.subscriptions();
            self.long_polls();
            self.fetches();
            self.retry_outbox_when_reachable();
            self.flush_outbox();
            self.save_cache();
        } else {
            if self.tabs.resync_after_freeze && self.tabs.leader_known() {
                self.tabs.resync_after_freeze = false;
                self.send_interest();
            }
            self.follower_requests();
            self.seek_leadership();
        }
        self.update_status();
        self.notify_views();
    }

    /// Tells the views what changed. Nobody looks at a hidden tab: its data is kept current (the sync work goes
    /// on), but its views are told nothing until it is shown, and then once — one render for however many
    /// changes came meanwhile, instead of one per change. Events a user must hear of (a refused write, a
    /// conflict, a revocation, the end of the session) are not held.
    fn notify_views(&mut self) {
        if !self.env.visible {
            let (mut connection, mut outbox) = (None, None);
            self.out.retain(|o| match o {
                Output::Notify(Notification::Connection { status }) => {
                    connection = Some(status.clone());
                    false
                }
                Output::Notify(Notification::Outbox { pending }) => {
                    outbox = Some(*pending);
                    false
                }
                _ => true,
            });
            self.held_connection = connection.or(self.held_connection.take());
            self.held_outbox = outbox.or(self.held_outbox.take());
            // What is applied while nobody looks is no change → screen latency.
            self.unrendered_since = None;
            return;
        }
        if let Some(status) = self.held_connection.take() {
            self.out.push_back(Output::Notify(Notification::Connection { status }));
        }
        if let Some(pending) = self.held_outbox.take() {
            self.out.push_back(Output::Notify(Notification::Outbox { pending }));
        }
        let keys = std::mem::take(&mut self.to_notify);
        for key in keys {
            self.out.push_back(Output::Notify(Notification::Query { key }));
        }
    }
}

/// The `message` of an `ApiError` body, or the start of the body.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}
