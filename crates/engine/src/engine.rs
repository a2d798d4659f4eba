//! The engine: one struct that is told what happens (`handle_input`, `handle_timeout`) and says what to do
//! (`poll_output`, until `Output::Timeout`). It holds no clock, does no I/O and draws randomness only from the
//! seeded generator it owns, so the same inputs always give the same outputs.
//!
//! After every input the engine *reconciles*: from where things stand (role, visibility, network, socket,
//! queries, outbox) it derives what should be happening and emits the outputs that make it so. Policies live
//! in small functions named after them; `reconcile` calls them in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use syncline_protocol::{
    BoardList, BoardSnapshot, BoardSummary, Change, ClientMessage, Cursor, ServerMessage, StreamCursor, StreamId,
    StreamPosition, Write, WriteBatch, WriteBatchResult, WriteOp,
};
use uuid::Uuid;

use crate::apply::{self, Applied};
use crate::config::{EngineConfig, InjectedBug, Preferences};
use crate::metrics::Metrics;
use crate::policy::{self, PollContext};
use crate::types::*;

#[derive(Debug, Clone)]
struct Peer {
    visible: bool,
    leader: bool,
    last_seen: Millis,
    interests: BTreeSet<QueryKey>,
    /// Those of its interests it marked critical.
    critical: BTreeSet<QueryKey>,
}

#[derive(Debug, Clone, Default)]
struct Query {
    subscribers: u32,
    data: Option<QueryData>,
    etag: Option<String>,
    /// When the data was last known to be current.
    current_at: Option<Millis>,
    fetching: Option<RequestId>,
    /// The data may be out of date and must be refetched.
    invalidated: bool,
    failures: u32,
    error: Option<String>,
    retry_at: Option<Millis>,
    /// Next timed refetch, when polling by timer.
    next_poll: Option<Millis>,
    unused_since: Option<Millis>,
    critical: bool,
    /// Prefetched: wanted until its data arrives, then kept (unused) for `gc_time`.
    prefetch: bool,
    /// The data holds entities the server returned for writes, at stream positions up to this one, ahead of
    /// the data's own cursor (their changes have not come through the feed yet).
    ahead_to: Cursor,
}

impl Query {
    /// A view reads it, or a prefetch waits for it.
    fn held(&self) -> bool {
        self.subscribers > 0 || self.prefetch
    }

    /// Whether `data` is at least as recent as what this copy already reflects: a snapshot older than the copy
    /// (a slow fetch that the feed overtook, or one read before a write whose answer was already applied) must
    /// not take it back in time — a card would vanish, then come back.
    fn not_older(&self, data: &QueryData) -> bool {
        let Some(old) = &self.data else { return true };
        if data.log_id() != old.log_id() {
            return true; // another change log (the server's database was replaced): cursors do not compare
        }
        match (data.cursor(), old.cursor()) {
            (Some(new), Some(have)) => new >= have.max(self.ahead_to),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    None,
    Subscribing,
    Synced,
}

#[derive(Debug, Clone)]
struct Stream {
    sub: Sub,
    /// Last cursor the socket delivered (what the server thinks we have).
    delivered: Option<Cursor>,
    longpoll: Option<RequestId>,
    next_longpoll: Millis,
    poll_failures: u32,
    /// A long-poll has answered since the last failure: the stream is followed.
    polled_ok: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Stream { sub: Sub::None, delivered: None, longpoll: None, next_longpoll: 0, poll_failures: 0, polled_ok: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Closed,
    Opening { since: Millis },
    Open { hello: bool, last_heard: Millis, next_ping: Millis },
    Backoff { until: Millis },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Socket,
    /// Long-poll; try the socket again at `next_probe`.
    Fallback {
        next_probe: Millis,
    },
}

#[derive(Debug, Clone)]
enum Purpose {
    Query(QueryKey),
    LongPoll(StreamId),
    Writes(Vec<Uuid>),
}

#[derive(Debug)]
struct InFlight {
    purpose: Purpose,
    sent_at: Millis,
}

/// The sans-IO sync engine of one tab.
pub struct Engine {
    cfg: EngineConfig,
    prefs: Preferences,
    tab: TabId,
    rng: SmallRng,
    now: Millis,
    visible: bool,
    online: bool,
    link: LinkQuality,
    role: Role,
    peers: BTreeMap<TabId, Peer>,
    queries: BTreeMap<QueryKey, Query>,
    streams: BTreeMap<StreamId, Stream>,
    conn: Conn,
    mode: Mode,
    /// Consecutive socket failures: reaching `fallback_after_failures` switches to long-poll.
    socket_failures: u32,
    /// Consecutive failed attempts to reach the server by any transport (socket or long-poll): the reconnect
    /// backoff grows with it, whichever transport is tried next.
    reconnect_attempts: u32,
    ever_opened: bool,
    log_id: Option<Uuid>,
    outbox: BTreeMap<Uuid, PendingWrite>,
    /// Writes accepted here whose `OutboxPut` the driver has not yet confirmed (`Input::Persisted`). They are
    /// neither shared with other tabs nor sent until stored: otherwise the leader could settle a write and
    /// delete its stored entry before this tab's put lands, and the put would bring it back for good.
    unstored: BTreeSet<Uuid>,
    /// Writes this tab stored itself: it deletes their entries when it learns they settled (as the leader
    /// does), so an entry never outlives its write, whoever settles it.
    stored_here: BTreeSet<Uuid>,
    /// Rebased writes (new id → old id) whose old one settles once the new one is stored.
    replacing: BTreeMap<Uuid, Uuid>,
    /// Recently settled write ids: a `WriteQueued` for one of them is a late echo (sent before the settle
    /// crossed it), not a new write.
    settled: VecDeque<Uuid>,
    batch: Option<RequestId>,
    outbox_failures: u32,
    outbox_retry_at: Millis,
    /// Queries changed by deltas and not yet saved to the persistent cache, with when they first changed.
    cache_dirty: BTreeMap<QueryKey, Millis>,
    /// The server was answering at the last reconcile (live feed, or long-polls getting through).
    reachable: bool,
    /// The last HTTP request that ended since the socket was last live (or since start) got an answer.
    http_answered: bool,
    /// The last socket failure came while the server answered HTTP (it is the WebSocket that fails, not the
    /// server); otherwise it may have been the server, down at the time.
    socket_blamed: bool,
    requests: BTreeMap<RequestId, InFlight>,
    next_request: RequestId,
    next_nonce: u64,
    /// Lamport clock ordering writes across the browser's tabs (see `PendingWrite::seq`).
    seq: u64,
    /// Wall-clock time (Unix ms) at engine time `clock_origin`: write ids are UUIDv7 with their creation time,
    /// which the server checks against how long it remembers write ids.
    epoch_at_origin: u64,
    clock_origin: Millis,
    next_presence: Millis,
    /// The deadline the driver was last given (`Output::Timeout`).
    promised_deadline: Millis,
    no_visible_since: Option<Millis>,
    leader_hidden_since: Option<Millis>,
    /// This follower was shown at this time and waits for a leader to answer its presence.
    leader_check_since: Option<Millis>,
    status: ConnectionStatus,
    leader_status: Option<ConnectionStatus>,
    status_since: Millis,
    out: VecDeque<Output>,
    notified: BTreeSet<QueryKey>,
    metrics: Metrics,
    /// Server commit time (epoch ms) of the oldest change applied since the UI last said it rendered.
    unrendered_since: Option<u64>,
}

impl Engine {
    /// A new engine for tab `tab`, starting at `now`, visible and online until told otherwise, follower until
    /// it wins the leader lock. `seed` feeds its random choices (jitter, ids); `epoch_ms` is the wall clock
    /// (Unix ms) at `now`, for the creation time in write ids.
    pub fn new(cfg: EngineConfig, prefs: Preferences, tab: TabId, seed: u64, now: Millis, epoch_ms: u64) -> Engine {
        let mut engine = Engine {
            cfg,
            prefs,
            tab,
            rng: SmallRng::seed_from_u64(seed),
            now,
            visible: true,
            online: true,
            link: LinkQuality::default(),
            role: Role::Follower,
            peers: BTreeMap::new(),
            queries: BTreeMap::new(),
            streams: BTreeMap::new(),
            conn: Conn::Closed,
            mode: Mode::Socket,
            socket_failures: 0,
            reconnect_attempts: 0,
            ever_opened: false,
            log_id: None,
            outbox: BTreeMap::new(),
            unstored: BTreeSet::new(),
            stored_here: BTreeSet::new(),
            replacing: BTreeMap::new(),
            settled: VecDeque::new(),
            batch: None,
            outbox_failures: 0,
            outbox_retry_at: 0,
            reachable: false,
            http_answered: false,
            socket_blamed: false,
            cache_dirty: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            next_nonce: 1,
            seq: 0,
            epoch_at_origin: epoch_ms,
            clock_origin: now,
            next_presence: now,
            promised_deadline: Millis::MAX,
            no_visible_since: None,
            leader_hidden_since: None,
            leader_check_since: None,
            status: ConnectionStatus::Idle,
            leader_status: None,
            status_since: now,
            out: VecDeque::new(),
            notified: BTreeSet::new(),
            metrics: Metrics::default(),
            unrendered_since: None,
        };
        // Nothing is said until the driver has told the engine where it stands (visibility first), so a tab
        // that opens hidden never announces itself as visible.
        engine.next_presence = now;
        engine
    }

    // ---- the driver contract ---------------------------------------------------------------------------------

    /// Tells the engine something happened at `now`. Then drain [`Engine::poll_output`].
    pub fn handle_input(&mut self, now: Millis, input: Input) {
        self.advance(now);
        match input {
            Input::Visibility { visible } => self.on_visibility(visible),
            Input::Network { online } => self.on_network(online),
            Input::Link(link) => self.link = link,
            Input::Role(role) => self.on_role(role),
            Input::Preferences(prefs) => {
                if prefs.validate().is_ok() && prefs != self.prefs {
                    self.prefs = prefs;
                    self.out.push_back(Output::Notify(Notification::Preferences));
                    for q in self.queries.values_mut() {
                        q.next_poll = None;
                    }
                    for s in self.streams.values_mut() {
                        s.next_longpoll = s.next_longpoll.min(self.now);
                    }
                }
            }
            Input::Restored { outbox, cache } => self.on_restored(outbox, cache),
            Input::Subscribe(key) => self.subscribe(key),
            Input::Unsubscribe(key) => self.unsubscribe(key),
            Input::Critical { key, critical } => {
                self.queries.entry(key).or_default().critical = critical;
                if !self.is_leader() {
                    self.send_interest();
                }
            }
            Input::Write { op, priority, policy } => {
                self.write(op, priority, policy);
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
            Input::SocketClosed { code, reason } => self.on_socket_closed(code, reason),
            Input::SocketMessage(text) => self.on_socket_message(&text),
            Input::Http { id, result } => self.on_http(id, result),
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
    pub fn poll_output(&mut self) -> Output {
        if let Some(out) = self.out.pop_front() {
            return out;
        }
        let deadline = self.deadline();
        self.promised_deadline = deadline;
        Output::Timeout(deadline)
    }

    /// Accepts a write from the UI; returns its id. (Same as `Input::Write`, with the id.)
    pub fn write_at(&mut self, now: Millis, op: WriteOp, priority: Priority, policy: ConflictPolicy) -> Uuid {
        self.advance(now);
        let id = self.write(op, priority, policy);
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

    /// A write id: a UUIDv7 carrying the wall-clock time it was made, so a server that no longer remembers it
    /// can tell it is too old to apply safely.
    fn new_write_id(&mut self) -> Uuid {
        let epoch = self.epoch_now();
        uuid::Builder::from_unix_timestamp_millis(epoch, &self.rng.random()).into_uuid()
    }

    /// The wall clock now (Unix ms), as far as the driver told.
    fn epoch_now(&self) -> u64 {
        self.epoch_at_origin + self.now.saturating_sub(self.clock_origin)
    }

    // ---- what the UI reads -----------------------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn tab(&self) -> TabId {
        self.tab
    }

    pub fn status(&self) -> &ConnectionStatus {
        &self.status
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics as of `now`, counting the time spent in the current state since the last input.
    pub fn metrics_at(&self, now: Millis) -> Metrics {
        let mut m = self.metrics.clone();
        add_state_time(&mut m, &self.status, now.saturating_sub(self.now));
        m
    }

    pub fn preferences(&self) -> &Preferences {
        &self.prefs
    }

    /// The board as the user should see it: server data with this browser's pending writes laid over.
    pub fn board(&self, id: Uuid) -> Option<BoardSnapshot> {
        match self.queries.get(&QueryKey::Board(id)).and_then(|q| q.data.as_ref()) {
            Some(QueryData::Board(snap)) => apply::overlay_board(snap, &self.pending_sorted()),
            // Created here and not yet confirmed: an empty board from the pending write, with what follows on it.
            _ => {
                let created = self.pending_create(id)?;
                let WriteOp::CreateBoard { body } = &created.op else { return None };
                let empty = BoardSnapshot {
                    board: syncline_protocol::Board { id, title: body.title.clone(), version: 0 },
                    columns: Vec::new(),
                    cards: Vec::new(),
                    log_id: self.log_id.unwrap_or_default(),
                    cursor: 0,
                };
                apply::overlay_board(&empty, &self.pending_sorted())
            }
        }
    }

    /// The pending write that creates this entity, if it has not reached the server yet.
    fn pending_create(&self, id: Uuid) -> Option<&PendingWrite> {
        self.outbox.values().find(|w| {
            matches!(&w.op, WriteOp::CreateBoard { .. } | WriteOp::CreateColumn { .. } | WriteOp::CreateCard { .. })
                && apply::entity_of(&w.op) == id
        })
    }

    /// The board's data as the server last gave it (no overlay).
    pub fn board_server_state(&self, id: Uuid) -> Option<&BoardSnapshot> {
        match &self.queries.get(&QueryKey::Board(id))?.data {
            Some(QueryData::Board(snap)) => Some(snap),
            _ => None,
        }
    }

    /// True when the board is known to be deleted.
    pub fn board_gone(&self, id: Uuid) -> bool {
        matches!(self.queries.get(&QueryKey::Board(id)).and_then(|q| q.data.as_ref()), Some(QueryData::Gone))
    }

    pub fn boards(&self) -> Option<BoardList> {
        match &self.queries.get(&QueryKey::Boards)?.data {
            Some(QueryData::Boards(list)) => Some(apply::overlay_list(list, &self.pending_sorted())),
            _ => None,
        }
    }

    pub fn summary(&self, id: Uuid) -> Option<&BoardSummary> {
        match &self.queries.get(&QueryKey::BoardSummary(id))?.data {
            Some(QueryData::Summary(s)) => Some(s),
            _ => None,
        }
    }

    /// Pending writes, in the order they will be sent.
    pub fn pending(&self) -> Vec<&PendingWrite> {
        self.pending_sorted()
    }

    /// Pending writes on one entity (card, column or board).
    pub fn pending_for(&self, entity: Uuid) -> usize {
        self.outbox.values().filter(|w| apply::entity_of(&w.op) == entity).count()
    }

    /// Writes waiting for the user's decision.
    pub fn conflicts(&self) -> Vec<&PendingWrite> {
        self.pending_sorted().into_iter().filter(|w| w.conflict.is_some()).collect()
    }

    /// How fresh a query is.
    pub fn freshness(&self, key: QueryKey) -> Freshness {
        let Some(q) = self.queries.get(&key) else { return Freshness::Fetching };
        let age = q.current_at.map(|t| self.now.saturating_sub(t)).unwrap_or(u64::MAX);
        if q.data.is_none() {
            return match (&q.error, q.retry_at) {
                (Some(message), Some(retry_at)) if self.online => {
                    Freshness::Error { message: message.clone(), retry_at }
                }
                _ if !self.online => Freshness::Paused { age_ms: age },
                _ => Freshness::Fetching,
            };
        }
        if !self.online {
            return Freshness::Paused { age_ms: age };
        }
        if let (Some(message), Some(retry_at)) = (&q.error, q.retry_at) {
            return Freshness::Error { message: message.clone(), retry_at };
        }
        if q.fetching.is_some() || (q.invalidated && self.is_leader()) {
            return Freshness::Fetching;
        }
        // The connection dropped: what is shown was current when it did, and ages from there.
        if matches!(self.status, ConnectionStatus::Reconnecting { .. }) {
            return Freshness::Stale { age_ms: age };
        }
        if !q.invalidated && (self.kept_fresh(key) || age < self.cfg.stale_time_ms) {
            return Freshness::Fresh;
        }
        Freshness::Stale { age_ms: age }
    }

    // ---- time -----------------------------------------------------------------------------------------------

    fn advance(&mut self, now: Millis) {
        let now = now.max(self.now);
        // Woken long after the deadline it asked for (the presence heartbeat keeps that at most a couple of
        // seconds away): the browser froze this tab. What it knew of the others is stale; if it is hidden, count
        // the frozen time as time with no tab visible, so a hidden tab resumed after the grace period does not
        // start using the network again as if the others had just been hidden.
        if now > self.promised_deadline.saturating_add(FROZEN_AFTER_MS)
            && !self.visible
            && self.no_visible_since.is_none()
        {
            self.no_visible_since = Some(self.promised_deadline);
        }
        add_state_time(&mut self.metrics, &self.status, now - self.now);
        self.now = now;
        self.metrics.sample(now);
    }

    /// The earliest future time at which some timer would change what the engine does. Timers already due
    /// were handled by the last reconcile; if they are still pending they wait on something else (an answer, a
    /// slot, a catch-up), which brings its own input — so only future times count.
    fn deadline(&self) -> Millis {
        let mut d = self.next_presence.max(self.now + 1);
        let now = self.now;
        let mut at = |t: Millis| {
            if t > now {
                d = d.min(t);
            }
        };
        for p in self.peers.values() {
            at(p.last_seen + self.cfg.peer_timeout_ms);
        }
        if let Some(since) = self.no_visible_since {
            at(since + self.cfg.hidden_grace_ms);
        }
        if let Some(since) = self.leader_hidden_since {
            at(since + LEADER_HANDOVER_DELAY_MS);
        }
        if let Some(since) = self.leader_check_since {
            at(since + LEADER_ANSWER_MS);
        }
        match self.conn {
            Conn::Backoff { until } => at(until),
            Conn::Open { last_heard, next_ping, .. } => {
                at(next_ping);
                at(last_heard + 2 * self.cfg.ping_interval_ms);
            }
            Conn::Opening { since } => at(since + OPEN_TIMEOUT_MS),
            Conn::Closed => {}
        }
        if let Mode::Fallback { next_probe } = self.mode {
            at(next_probe);
        }
        for since in self.cache_dirty.values() {
            at(since + CACHE_SAVE_DELAY_MS);
        }
        if self.is_leader() {
            for s in self.streams.values() {
                if s.longpoll.is_none() && matches!(self.mode, Mode::Fallback { .. }) {
                    at(s.next_longpoll);
                }
            }
            for q in self.queries.values() {
                if let Some(t) = q.next_poll {
                    at(t);
                }
                if let Some(t) = q.retry_at {
                    at(t);
                }
            }
            if !self.outbox.is_empty() && self.batch.is_none() {
                at(self.outbox_retry_at);
            }
        }
        for q in self.queries.values() {
            if let Some(t) = q.unused_since {
                at(t + self.cfg.gc_time_ms);
            }
        }
        d
    }

    // ---- inputs ---------------------------------------------------------------------------------------------

    fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Whether the simulation switched this known bug on (never, without the `bug-injection` feature).
    #[inline]
    fn bug(&self, bug: InjectedBug) -> bool {
        #[cfg(feature = "bug-injection")]
        return self.cfg.injected_bug == Some(bug);
        #[cfg(not(feature = "bug-injection"))]
        {
            let _ = bug;
            false
        }
    }

    fn visible_somewhere(&self) -> bool {
        self.visible || self.peers.values().any(|p| p.visible)
    }

    /// Some tab is visible, or was within the grace period.
    fn active(&self) -> bool {
        if self.bug(InjectedBug::HiddenTabsCountAsActive) {
            return true;
        }
        match self.no_visible_since {
            None => true,
            Some(since) => self.now < since + self.cfg.hidden_grace_ms,
        }
    }

    fn on_visibility(&mut self, visible: bool) {
        if self.visible == visible {
            return;
        }
        self.visible = visible;
        self.announce();
        if visible {
            if !self.is_leader() {
                self.leader_check_since = Some(self.now);
            }
            self.catch_up_stale();
        }
    }

    fn on_network(&mut self, online: bool) {
        if self.online == online {
            return;
        }
        self.online = online;
        if online {
            // Back online: reconnect at once (no waiting out a backoff timer) and catch up.
            if matches!(self.conn, Conn::Backoff { .. }) {
                self.conn = Conn::Closed;
            }
            self.socket_failures = 0;
            self.reconnect_attempts = 0;
            self.http_answered = false; // what answered before going offline says nothing about now
            if let Mode::Fallback { .. } = self.mode {
                self.mode = Mode::Socket;
            }
            self.outbox_retry_at = self.now;
            self.outbox_failures = 0;
            for q in self.queries.values_mut() {
                q.retry_at = None;
                q.error = None;
                q.failures = 0;
            }
            for s in self.streams.values_mut() {
                s.next_longpoll = self.now;
                s.poll_failures = 0;
            }
            self.catch_up_stale();
        } else {
            self.drop_socket("offline");
            self.cancel_long_polls();
            self.mark_current_now();
        }
        self.notify_all_queries();
    }

    fn on_role(&mut self, role: Role) {
        if self.role == role {
            return;
        }
        self.role = role;
        self.announce();
        self.leader_check_since = None;
        self.leader_hidden_since = None;
        match role {
            Role::Leader => {
                if self.bug(InjectedBug::NewLeaderDropsOutbox) {
                    self.outbox.clear();
                }
                self.leader_status = None;
                self.socket_failures = 0;
                self.reconnect_attempts = 0;
                self.mode = Mode::Socket;
                self.outbox_retry_at = self.now;
                // Followers re-announce what they need when they see the new leader's presence.
                for key in self.wanted_keys() {
                    if let Some(q) = self.queries.get_mut(&key)
                        && q.data.is_none()
                    {
                        q.invalidated = true;
                    }
                }
            }
            Role::Follower => {
                self.drop_socket("no longer the leader");
                self.cancel_long_polls();
                self.send_interest();
            }
        }
    }

    fn on_restored(&mut self, outbox: Vec<PendingWrite>, cache: Vec<(QueryKey, QueryData)>) {
        for w in outbox {
            self.seq = self.seq.max(w.seq);
            if self.settled.contains(&w.write_id) {
                // Stored, yet known to have settled (its delete was lost, e.g. with the tab that issued it).
                self.out.push_back(Output::Persist(PersistOp::OutboxDelete { write_id: w.write_id }));
            } else {
                self.outbox.entry(w.write_id).or_insert(w);
            }
        }
        for (key, data) in cache {
            let q = self.queries.entry(key).or_default();
            if q.data.is_none() {
                q.data = Some(data);
                // Cached data is of unknown age: stale until confirmed.
                q.invalidated = true;
                self.notified.insert(key);
            }
        }
        self.out.push_back(Output::Notify(Notification::Outbox { pending: self.outbox.len() }));
    }

    fn subscribe(&mut self, key: QueryKey) {
        let stale_time = self.cfg.stale_time_ms;
        let now = self.now;
        let q = self.queries.entry(key).or_default();
        q.subscribers += 1;
        q.unused_since = None;
        // Refetch on mount when stale (what TanStack Query users expect).
        if q.current_at.is_none_or(|t| now >= t + stale_time) && !self.kept_fresh(key) {
            self.queries.get_mut(&key).expect("just inserted").invalidated = true;
        }
        self.notified.insert(key);
        if !self.is_leader() {
            self.send_interest();
        }
    }

    fn prefetch(&mut self, key: QueryKey) {
        // Only for what a user is looking at, and never at the cost of their data plan.
        if !self.visible || !self.online || self.prefs.data_saver || self.link.save_data {
            return;
        }
        let stale_time = self.cfg.stale_time_ms;
        let now = self.now;
        let kept = self.kept_fresh(key);
        let q = self.queries.entry(key).or_default();
        let fresh = q.data.is_some() && !q.invalidated && (kept || q.current_at.is_some_and(|t| now < t + stale_time));
        if fresh || q.prefetch || q.fetching.is_some() {
            return;
        }
        q.prefetch = true;
        q.unused_since = None;
        if q.data.is_some() {
            q.invalidated = true;
        }
        if !self.is_leader() {
            self.send_interest();
        }
    }

    /// A prefetched query got its data: it is no longer held (it stays cached for `gc_time`).
    fn prefetch_done(&mut self, key: QueryKey) {
        let leader = self.is_leader();
        if let Some(q) = self.queries.get_mut(&key)
            && q.prefetch
        {
            q.prefetch = false;
            if !leader && q.subscribers == 0 {
                self.send_interest();
            }
        }
    }

    fn unsubscribe(&mut self, key: QueryKey) {
        if let Some(q) = self.queries.get_mut(&key) {
            q.subscribers = q.subscribers.saturating_sub(1);
            if q.subscribers == 0 {
                q.unused_since = Some(self.now);
                if !self.is_leader() {
                    self.send_interest();
                }
            }
        }
    }

    fn write(&mut self, mut op: WriteOp, priority: Priority, policy: ConflictPolicy) -> Uuid {
        // Creates get their id here, so later writes (and the optimistic view) can refer to the new entity.
        match &mut op {
            WriteOp::CreateBoard { body } if body.id.is_none() => body.id = Some(self.new_id()),
            WriteOp::CreateColumn { body, .. } if body.id.is_none() => body.id = Some(self.new_id()),
            WriteOp::CreateCard { body, .. } if body.id.is_none() => body.id = Some(self.new_id()),
            _ => {}
        }
        let entity = apply::entity_of(&op);
        let base = self.server_entity(entity);
        // Based on what the user saw: the server's version plus this browser's writes on it still ahead.
        if let Some(version) = base.as_ref().and_then(|b| b.get("version")).and_then(Value::as_u64) {
            let ahead =
                self.outbox.values().filter(|w| apply::entity_of(&w.op) == entity && w.conflict.is_none()).count();
            if let Some(slot @ None) = apply::base_version_slot(&mut op) {
                *slot = Some(version + ahead as u64);
            }
        }
        self.seq += 1;
        let write = PendingWrite {
            write_id: self.new_write_id(),
            op,
            priority,
            policy,
            seq: self.seq,
            base,
            conflict: None,
            conflict_at: Vec::new(),
        };
        let id = write.write_id;
        if self.bug(InjectedBug::FollowerPersistsAfterBroadcasting) {
            self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write: write.clone() }));
        }
        self.queue_write(write);
        id
    }

    /// A write accepted here: stored first; shared with the other tabs and sent once the driver confirms it is
    /// stored ([`Engine::on_persisted`]).
    fn queue_write(&mut self, write: PendingWrite) {
        self.notify_stream_of(&write.op);
        self.out.push_back(Output::Persist(PersistOp::OutboxPut { write: write.clone() }));
        self.unstored.insert(write.write_id);
        if !self.bug(InjectedBug::FollowerPersistsAfterBroadcasting) {
            self.stored_here.insert(write.write_id);
        }
        self.outbox.insert(write.write_id, write);
        self.out.push_back(Output::Notify(Notification::Outbox { pending: self.outbox.len() }));
    }

    /// The driver stored a write (or tried: a failed put is reported too, and the write lives on in memory).
    fn on_persisted(&mut self, write_id: Uuid) {
        if !self.unstored.remove(&write_id) {
            return;
        }
        if let Some(old) = self.replacing.remove(&write_id) {
            self.settle(old, Settled::Rebased { new_write_id: write_id });
        }
        if self.bug(InjectedBug::FollowerPersistsAfterBroadcasting) {
            return; // it was shared when it was accepted
        }
        if let Some(write) = self.outbox.get(&write_id).cloned() {
            self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write }));
        }
    }

    fn resolve_conflict(&mut self, write_id: Uuid, keep_mine: bool) {
        if !self.is_leader() {
            self.out.push_back(Output::Broadcast(TabMessage::ConflictResolved { write_id, keep_mine }));
            return;
        }
        let Some(w) = self.outbox.get(&write_id).cloned() else { return };
        let Some(current) = w.conflict.clone() else { return };
        let at = w.conflict_at.clone();
        if keep_mine {
            self.rebase(w, &current, &at);
        } else {
            self.apply_entity(&current, &at);
            self.settle(write_id, Settled::Overridden { current, at });
        }
    }

    fn retry_now(&mut self) {
        if matches!(self.conn, Conn::Backoff { .. }) {
            self.conn = Conn::Closed;
        }
        if let Mode::Fallback { .. } = self.mode {
            self.mode = Mode::Fallback { next_probe: self.now };
        }
        self.outbox_retry_at = self.now;
        for q in self.queries.values_mut() {
            if q.retry_at.is_some() {
                q.retry_at = Some(self.now);
            }
        }
        for s in self.streams.values_mut() {
            s.next_longpoll = s.next_longpoll.min(self.now);
        }
    }

    // ---- socket ---------------------------------------------------------------------------------------------

    fn on_socket_opened(&mut self) {
        if let Conn::Opening { .. } = self.conn {
            self.conn =
                Conn::Open { hello: false, last_heard: self.now, next_ping: self.now + self.cfg.ping_interval_ms };
            self.metrics.socket_opens += 1;
            if self.ever_opened {
                self.metrics.reconnects += 1;
            }
            self.ever_opened = true;
        }
    }

    fn on_socket_closed(&mut self, _code: Option<u16>, _reason: String) {
        let was = self.conn;
        if matches!(was, Conn::Closed | Conn::Backoff { .. }) {
            return; // we closed it ourselves, or already handled
        }
        self.mark_current_now();
        for s in self.streams.values_mut() {
            s.sub = Sub::None;
            s.delivered = None;
        }
        let worked = matches!(was, Conn::Open { hello: true, .. });
        if worked {
            self.http_answered = false;
        }
        self.socket_blamed = self.http_answered;
        self.socket_failures = if worked { 1 } else { self.socket_failures + 1 };
        self.reconnect_attempts = if worked { 1 } else { self.reconnect_attempts + 1 };
        self.conn = Conn::Closed;
        if !self.online || !self.is_leader() {
            return;
        }
        if self.socket_failures >= self.cfg.fallback_after_failures {
            // Long-poll, provisionally: if the long-polls fail too, it is the server that is out of reach, not
            // its WebSocket, and `on_long_poll_result` goes back to the socket.
            self.mode = Mode::Fallback { next_probe: self.now + self.probe_delay() };
            for s in self.streams.values_mut() {
                s.polled_ok = false;
                s.poll_failures = 0;
                s.next_longpoll = self.now;
            }
        } else {
            self.socket_backoff();
        }
    }

    /// Waits before the next socket attempt, longer after each failed attempt to reach the server.
    fn socket_backoff(&mut self) {
        let cap = self.cfg.backoff_max_ms.min(self.prefs.max_retry_delay_ms);
        let delay = policy::full_jitter(&mut self.rng, self.reconnect_attempts, self.cfg.backoff_min_ms, cap);
        self.conn = Conn::Backoff { until: self.now + delay };
    }

    /// While on long-poll, the next try of the socket: half to one probe interval away.
    fn probe_delay(&mut self) -> Millis {
        self.cfg.probe_interval_ms / 2 + self.rng.random_range(0..=self.cfg.probe_interval_ms / 2)
    }

    fn on_socket_message(&mut self, text: &str) {
        self.metrics.socket_messages_in += 1;
        self.metrics.bytes_in += text.len() as u64;
        if let Conn::Open { last_heard, .. } = &mut self.conn {
            *last_heard = self.now;
        } else {
            return;
        }
        let Ok(msg) = serde_json::from_str::<ServerMessage>(text) else { return };
        match msg {
            ServerMessage::Hello { log_id, .. } => {
                if self.log_id.is_some_and(|known| known != log_id) {
                    self.forget_cursors();
                }
                self.log_id = Some(log_id);
                if let Conn::Open { hello, .. } = &mut self.conn {
                    *hello = true;
                }
                self.socket_failures = 0;
                self.reconnect_attempts = 0;
                if let Mode::Fallback { .. } = self.mode {
                    // The probe worked: upgrade back to live.
                    self.mode = Mode::Socket;
                    self.cancel_long_polls();
                }
            }
            ServerMessage::Changes { stream, changes } => {
                if let Some(last) = changes.last() {
                    self.streams.entry(stream).or_default().delivered = Some(last.cursor);
                }
                self.apply_changes(stream, &changes);
                self.confirm_from_feed(&changes);
                self.out.push_back(Output::Broadcast(TabMessage::Changes { stream, changes }));
            }
            ServerMessage::Synced { stream, cursor } => {
                let s = self.streams.entry(stream).or_default();
                s.sub = Sub::Synced;
                s.delivered = Some(cursor);
                self.mark_stream_current(stream);
            }
            ServerMessage::Reset { stream, .. } => {
                let s = self.streams.entry(stream).or_default();
                s.sub = Sub::None;
                s.delivered = None;
                self.invalidate_stream(stream);
            }
            ServerMessage::Pong { .. } => {}
        }
    }

    fn send_socket(&mut self, msg: ClientMessage) {
        self.metrics.socket_messages_out += 1;
        self.metrics.bytes_out += serde_json::to_string(&msg).map_or(0, |t| t.len() as u64);
        self.out.push_back(Output::SendSocket(msg));
    }

    fn drop_socket(&mut self, reason: &str) {
        if matches!(self.conn, Conn::Opening { .. } | Conn::Open { .. }) {
            self.mark_current_now();
            self.out.push_back(Output::CloseSocket { code: 1000, reason: reason.into() });
        }
        self.conn = Conn::Closed;
        for s in self.streams.values_mut() {
            s.sub = Sub::None;
            s.delivered = None;
        }
    }

    fn forget_cursors(&mut self) {
        for q in self.queries.values_mut() {
            q.invalidated = true;
        }
        for s in self.streams.values_mut() {
            s.delivered = None;
            s.sub = Sub::None;
        }
    }

    // ---- changes --------------------------------------------------------------------------------------------

    /// Applies changes of one stream to every query that follows it; what cannot be applied, and what depends
    /// on what changed, is invalidated (each key once per batch).
    fn apply_changes(&mut self, stream: StreamId, changes: &[Change]) {
        let mut touched = false;
        let mut invalidate = BTreeSet::new();
        let is_leader = self.is_leader();
        let keys: Vec<QueryKey> = self.queries.keys().copied().filter(|k| k.stream() == stream).collect();
        for key in &keys {
            let q = self.queries.get_mut(key).expect("listed");
            let Some(data) = q.data.as_mut() else { continue };
            if !key.takes_deltas() {
                continue;
            }
            let mut changed = false;
            for change in changes {
                let at = data.cursor().unwrap_or(0);
                if change.cursor <= at {
                    continue; // already applied (replay, or the snapshot was newer)
                }
                if change.cursor != at + 1 {
                    invalidate.insert(*key); // a gap: this copy cannot be trusted
                    break;
                }
                match apply::apply_change(data, change) {
                    Applied::Changed => {
                        changed = true;
                        self.metrics.deltas_applied += 1;
                        self.unrendered_since =
                            Some(self.unrendered_since.map_or(change.at_ms, |t| t.min(change.at_ms)));
                    }
                    Applied::Unchanged => {}
                    Applied::CannotApply => {
                        invalidate.insert(*key);
                        break;
                    }
                }
                if matches!(data, QueryData::Gone) {
                    break;
                }
            }
            if changed {
                touched = true;
                self.notified.insert(*key);
                if is_leader && matches!(key, QueryKey::Board(_) | QueryKey::Boards) {
                    // Saved for the next page load at most once a second per query, not once per change.
                    self.cache_dirty.entry(*key).or_insert(self.now);
                }
            }
            q.current_at = Some(self.now);
        }
        if touched || !changes.is_empty() {
            // Everything that depends on this stream's data and cannot follow it by deltas.
            for key in &keys {
                if !key.takes_deltas() {
                    invalidate.insert(*key);
                }
            }
        }
        for key in invalidate {
            self.invalidate(key);
        }
    }

    /// A change on the feed that carries the id of a write still in the outbox: that write is applied (its
    /// answer was lost, or is still on its way). Settle it now, so its optimistic overlay does not outlive it —
    /// a card this browser created and another user deleted since must not come back as "not yet saved".
    fn confirm_from_feed(&mut self, changes: &[Change]) {
        let confirmed: Vec<(Uuid, Vec<StreamPosition>)> = changes
            .iter()
            .filter_map(|c| c.write_id.filter(|w| self.outbox.get(w).is_some_and(|w| w.conflict.is_none())))
            .collect::<BTreeSet<Uuid>>()
            .into_iter()
            .map(|w| {
                (w, StreamPosition::of(&changes.iter().filter(|c| c.write_id == Some(w)).cloned().collect::<Vec<_>>()))
            })
            .collect();
        for (write_id, at) in confirmed {
            self.settle(write_id, Settled::Confirmed { at });
        }
    }

    fn invalidate(&mut self, key: QueryKey) {
        if let Some(q) = self.queries.get_mut(&key)
            && !q.invalidated
        {
            q.invalidated = true;
            self.metrics.invalidations += 1;
            self.notified.insert(key);
        }
        // Transitively: whatever depends on this key.
        let dependents: Vec<QueryKey> = self.queries.keys().copied().filter(|k| k.depends_on() == Some(key)).collect();
        for d in dependents {
            self.invalidate(d);
        }
    }

    fn invalidate_stream(&mut self, stream: StreamId) {
        let keys: Vec<QueryKey> = self.queries.keys().copied().filter(|k| k.stream() == stream).collect();
        for k in keys {
            self.invalidate(k);
        }
    }

    /// A board this browser created is, once confirmed, an empty board at cursor 0 of its own stream: the feed
    /// brings everything after that (its columns and cards), so there is nothing to fetch and no gap to show.
    fn seed_created_board(&mut self, entity: &Value) {
        let Ok(board) = serde_json::from_value::<syncline_protocol::Board>(entity.clone()) else { return };
        if board.version != 1 {
            return;
        }
        let log_id = self.log_id.unwrap_or_default();
        let key = QueryKey::Board(board.id);
        if let Some(q) = self.queries.get_mut(&key)
            && q.data.is_none()
        {
            q.data = Some(QueryData::Board(BoardSnapshot {
                board,
                columns: Vec::new(),
                cards: Vec::new(),
                log_id,
                cursor: 0,
            }));
            q.invalidated = false;
            q.current_at = Some(self.now);
            self.notified.insert(key);
        }
    }

    /// An entity the server returned for a write (as written, or the current one of a conflict), laid over
    /// every copy that is behind it: a copy at or past the position the entity was at (`at`) has that state
    /// already, and maybe a newer one (a later delete) that a replayed or stale answer must not undo. Within a
    /// copy, versions decide.
    fn apply_entity(&mut self, entity: &Value, at: &[StreamPosition]) {
        let keys: Vec<QueryKey> = self.queries.keys().copied().collect();
        for key in keys {
            let Some(q) = self.queries.get_mut(&key) else { continue };
            let Some(data) = q.data.as_mut() else { continue };
            let stream = key.stream();
            let position = at.iter().find(|p| p.stream == stream).map(|p| p.cursor);
            if position.is_some_and(|p| data.cursor().is_some_and(|c| c >= p)) {
                continue; // this copy has it already
            }
            if apply::apply_entity(data, entity) == Applied::Changed {
                q.ahead_to = q.ahead_to.max(position.unwrap_or(0));
                self.notified.insert(key);
            }
        }
    }

    /// The server's copy of an entity, from whatever query holds it.
    fn server_entity(&self, id: Uuid) -> Option<Value> {
        for q in self.queries.values() {
            match &q.data {
                Some(QueryData::Board(snap)) => {
                    if snap.board.id == id {
                        return serde_json::to_value(&snap.board).ok();
                    }
                    if let Some(c) = snap.columns.iter().find(|c| c.id == id) {
                        return serde_json::to_value(c).ok();
                    }
                    if let Some(c) = snap.cards.iter().find(|c| c.id == id) {
                        return serde_json::to_value(c).ok();
                    }
                }
                Some(QueryData::Boards(list)) => {
                    if let Some(b) = list.boards.iter().find(|b| b.id == id) {
                        return serde_json::to_value(b).ok();
                    }
                }
                _ => {}
            }
        }
        None
    }

    // ---- HTTP results ---------------------------------------------------------------------------------------

    fn on_http(&mut self, id: RequestId, result: HttpResult) {
        let Some(req) = self.requests.remove(&id) else { return };
        match &result {
            HttpResult::Response { body, .. } => {
                self.metrics.bytes_in += body.len() as u64;
                self.http_answered = true;
            }
            HttpResult::NetworkError(_) => self.http_answered = false,
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

    fn on_query_result(&mut self, key: QueryKey, id: RequestId, result: HttpResult) {
        let Some(q) = self.queries.get_mut(&key) else { return };
        if q.fetching == Some(id) {
            q.fetching = None;
        }
        self.notified.insert(key);
        let parsed = match result {
            HttpResult::Response { status: 304, .. } => Ok(None),
            HttpResult::Response { status: 200, body, etag } => parse_query(key, &body).map(|d| Some((d, etag))),
            HttpResult::Response { status: 404, .. } => Ok(Some((QueryData::Gone, None))),
            HttpResult::Response { status, body, .. } => {
                Err(format!("the server answered {status}: {}", error_message(&body)))
            }
            HttpResult::NetworkError(e) => Err(format!("network error: {e}")),
        };
        let q = self.queries.get_mut(&key).expect("present");
        match parsed {
            Ok(fresh) => {
                q.failures = 0;
                q.error = None;
                q.retry_at = None;
                q.invalidated = false;
                q.current_at = Some(self.now);
                q.next_poll = None;
                self.prefetch_done(key);
                let q = self.queries.get_mut(&key).expect("present");
                let Some((data, etag)) = fresh else { return };
                q.etag = etag;
                let snapshot_cursor = data.cursor();
                // A query that cannot follow deltas, fetched while changes kept coming: if its answer is older
                // than what the feed already brought, it is stale on arrival and goes again.
                if !key.takes_deltas() {
                    let followed = self.queries.values().filter_map(|q| q.data.as_ref()).filter(|d| matches!(d, QueryData::Board(b) if QueryKey::Board(b.board.id).stream() == key.stream())).filter_map(QueryData::cursor).max();
                    if let (Some(have), Some(got)) = (followed, snapshot_cursor)
                        && got < have
                    {
                        self.queries.get_mut(&key).expect("present").invalidated = true;
                    }
                }
                let q = self.queries.get_mut(&key).expect("present");
                if !q.not_older(&data) {
                    // Our copy is newer; the feed (or the next fetch) brings what comes after it.
                    self.notified.remove(&key);
                    return;
                }
                q.ahead_to = 0; // the snapshot has all of it
                if q.data.as_ref() != Some(&data) {
                    q.data = Some(data.clone());
                    if matches!(key, QueryKey::Board(_) | QueryKey::Boards) {
                        // Saved a moment later, off the path from answer to screen.
                        self.cache_dirty.entry(key).or_insert(self.now);
                    }
                } else {
                    self.notified.remove(&key); // an unchanged result does not notify
                }
                // Tabs that appear later ask with `Interest` and get it then.
                if !self.peers.is_empty() {
                    self.out.push_back(Output::Broadcast(TabMessage::Data { key, data, fetched_at: self.now }));
                }
                // If the socket already delivered past this snapshot, ask it to replay from the snapshot.
                let stream = key.stream();
                if key.takes_deltas()
                    && let (Some(s), Some(c)) = (self.streams.get_mut(&stream), snapshot_cursor)
                    && s.delivered.is_some_and(|d| d > c)
                {
                    s.sub = Sub::None;
                }
            }
            Err(message) => {
                q.failures += 1;
                q.error = Some(message);
                let delay = policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, q.failures);
                q.retry_at = Some(self.now + delay);
            }
        }
    }

    fn on_long_poll_result(&mut self, stream: StreamId, id: RequestId, result: HttpResult) {
        let s = self.streams.entry(stream).or_default();
        if s.longpoll == Some(id) {
            s.longpoll = None;
        }
        // No answer at all (as opposed to an answer we cannot use).
        let unreachable = matches!(result, HttpResult::NetworkError(_));
        let msg = match result {
            HttpResult::Response { status: 200, body, .. } => serde_json::from_str::<ServerMessage>(&body).ok(),
            _ => None,
        };
        match msg {
            Some(ServerMessage::Changes { changes, .. }) => {
                let gap = self.longpoll_gap(changes.is_empty());
                // The first answer of a fallback whose last socket failure came while nothing on the server
                // answered: that failure may have been the server's (it was down, now it is back). Try the
                // socket now rather than at the next probe.
                let first_answer = !self.streams.values().any(|s| s.polled_ok);
                if first_answer
                    && !self.socket_blamed
                    && let Mode::Fallback { .. } = self.mode
                {
                    self.mode = Mode::Fallback { next_probe: self.now };
                }
                self.reconnect_attempts = 0;
                let s = self.streams.entry(stream).or_default();
                s.poll_failures = 0;
                s.polled_ok = true;
                s.next_longpoll = self.now.saturating_add(gap);
                self.apply_changes(stream, &changes);
                self.confirm_from_feed(&changes);
                self.mark_stream_current(stream);
                if !changes.is_empty() {
                    self.out.push_back(Output::Broadcast(TabMessage::Changes { stream, changes }));
                }
            }
            Some(ServerMessage::Reset { .. }) => {
                let s = self.streams.entry(stream).or_default();
                s.poll_failures = 0;
                s.next_longpoll = self.now;
                self.invalidate_stream(stream);
            }
            _ if unreachable
                && matches!(self.mode, Mode::Fallback { .. })
                && !self.streams.values().any(|s| s.polled_ok) =>
            {
                // Nothing on the server answers, long-polls included: the failures that brought us here say
                // nothing about its WebSocket. Back to the socket, which is tried first when the server returns.
                // One more socket failure and the long-poll checks again whether the server answers.
                self.reconnect_attempts += 1;
                self.socket_failures = self.cfg.fallback_after_failures.saturating_sub(1);
                self.mode = Mode::Socket;
                self.cancel_long_polls();
                if matches!(self.conn, Conn::Closed) {
                    self.socket_backoff();
                }
            }
            _ => {
                let s = self.streams.entry(stream).or_default();
                s.poll_failures += 1;
                s.polled_ok = false;
                let failures = s.poll_failures;
                let delay = policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, failures);
                self.streams.get_mut(&stream).expect("present").next_longpoll = self.now + delay;
            }
        }
    }

    fn on_write_result(&mut self, id: RequestId, ids: Vec<Uuid>, result: HttpResult) {
        if self.batch == Some(id) {
            self.batch = None;
        }
        let parsed = match result {
            HttpResult::Response { status: 200, body, .. } => serde_json::from_str::<WriteBatchResult>(&body).ok(),
            _ => None,
        };
        let Some(batch) = parsed else {
            self.outbox_failures += 1;
            let delay = policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, self.outbox_failures);
            self.outbox_retry_at = self.now + delay;
            return;
        };
        self.outbox_failures = 0;
        self.outbox_retry_at = self.now;
        for outcome in batch.results {
            if !ids.contains(&outcome.write_id) {
                continue;
            }
            let Some(w) = self.outbox.get(&outcome.write_id).cloned() else { continue };
            match outcome.status {
                200..=299 => {
                    if !outcome.body.is_null() {
                        if matches!(w.op, WriteOp::CreateBoard { .. }) {
                            self.seed_created_board(&outcome.body);
                        }
                        self.apply_entity(&outcome.body, &outcome.at);
                    }
                    self.settle(
                        w.write_id,
                        Settled::Applied { status: outcome.status, body: outcome.body, at: outcome.at },
                    );
                }
                409 => {
                    self.metrics.conflicts += 1;
                    let current = outcome.body.get("current").cloned().unwrap_or(Value::Null);
                    self.on_conflict(w, current, outcome.at);
                }
                500..=599 => {
                    self.outbox_retry_at = self.now + policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, 1);
                }
                status => {
                    let message = error_message(&outcome.body.to_string());
                    self.out.push_back(Output::Notify(Notification::WriteRejected { write_id: w.write_id, message }));
                    self.settle(w.write_id, Settled::Rejected { status, body: outcome.body });
                }
            }
        }
    }

    fn on_conflict(&mut self, w: PendingWrite, current: Value, at: Vec<StreamPosition>) {
        let theirs =
            w.base.as_ref().map(|b| apply::fields_changed(b, &current)).unwrap_or_else(|| ["*".to_owned()].into());
        let mine = apply::fields_written(&w.op);
        let overlap = mine.contains("*") || theirs.contains("*") || mine.iter().any(|f| theirs.contains(*f));
        enum Decision {
            Rebase,
            Ask,
            ServerWins,
        }
        let decision = match (w.policy, overlap) {
            (ConflictPolicy::RebaseOrAsk | ConflictPolicy::RebaseOrServerWins, false) => Decision::Rebase,
            (ConflictPolicy::RebaseOrAsk | ConflictPolicy::AskUser, _) => Decision::Ask,
            (ConflictPolicy::RebaseOrServerWins | ConflictPolicy::ServerWins, _) => Decision::ServerWins,
        };
        match decision {
            Decision::Rebase => self.rebase(w, &current, &at),
            Decision::ServerWins => {
                self.out.push_back(Output::Notify(Notification::Conflict {
                    write_id: w.write_id,
                    current: current.clone(),
                    needs_decision: false,
                }));
                self.apply_entity(&current, &at);
                self.settle(w.write_id, Settled::Overridden { current, at });
            }
            Decision::Ask => {
                let mut held = w.clone();
                held.conflict = Some(current.clone());
                held.conflict_at = at.clone();
                self.apply_entity(&current, &at);
                self.out.push_back(Output::Notify(Notification::Conflict {
                    write_id: w.write_id,
                    current,
                    needs_decision: true,
                }));
                self.out.push_back(Output::Persist(PersistOp::OutboxPut { write: held.clone() }));
                self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write: held.clone() }));
                self.outbox.insert(held.write_id, held);
                self.notify_stream_of(&w.op);
            }
        }
    }

    /// Re-sends a conflicting write on the current version, as a new write (the old id's outcome is the 409).
    fn rebase(&mut self, old: PendingWrite, current: &Value, at: &[StreamPosition]) {
        let mut op = old.op.clone();
        if let Some(v) = current.get("version").and_then(Value::as_u64) {
            apply::set_base_version(&mut op, v);
        }
        let new = PendingWrite {
            write_id: self.new_write_id(),
            op,
            base: Some(current.clone()),
            conflict: None,
            conflict_at: Vec::new(),
            ..old.clone()
        };
        self.apply_entity(current, at);
        // The old write settles once the new one is stored: a tab that dies in between leaves the old one
        // stored, to be sent (and rebased) again, rather than neither.
        if let Some(w) = self.outbox.remove(&old.write_id) {
            self.notify_stream_of(&w.op);
        }
        self.replacing.insert(new.write_id, old.write_id);
        self.queue_write(new);
    }

    /// A write ended: forget it here, in storage and in every tab.
    fn remember_settled(&mut self, write_id: Uuid) {
        if self.settled.len() == SETTLED_REMEMBERED {
            self.settled.pop_front();
        }
        self.settled.push_back(write_id);
    }

    fn settle(&mut self, write_id: Uuid, settled: Settled) {
        self.remember_settled(write_id);
        self.stored_here.remove(&write_id);
        self.unstored.remove(&write_id);
        if let Some(w) = self.outbox.remove(&write_id) {
            self.notify_stream_of(&w.op);
        }
        self.out.push_back(Output::Persist(PersistOp::OutboxDelete { write_id }));
        self.out.push_back(Output::Broadcast(TabMessage::WriteSettled { write_id, settled }));
        self.out.push_back(Output::Notify(Notification::Outbox { pending: self.outbox.len() }));
    }

    // ---- tabs -----------------------------------------------------------------------------------------------

    fn announce(&mut self) {
        self.next_presence = self.now + self.cfg.presence_interval_ms;
        self.out.push_back(Output::Broadcast(TabMessage::Presence {
            tab: self.tab,
            visible: self.visible,
            leader: self.is_leader(),
            sent_at: self.epoch_now(),
        }));
    }

    fn send_interest(&mut self) {
        let keys: Vec<QueryKey> = self.queries.iter().filter(|(_, q)| q.held()).map(|(k, _)| *k).collect();
        let critical = keys.iter().copied().filter(|k| self.queries[k].critical).collect();
        self.out.push_back(Output::Broadcast(TabMessage::Interest { tab: self.tab, keys, critical }));
    }

    fn on_tab(&mut self, msg: TabMessage) {
        match msg {
            TabMessage::Presence { tab, visible, leader, sent_at } => {
                // When it was said, on this tab's clock (the tabs share the wall clock): a message held while this
                // tab was frozen is old news.
                let said_at = if sent_at > 0 {
                    self.now.saturating_sub(self.epoch_now().saturating_sub(sent_at))
                } else {
                    self.now
                };
                if said_at + self.cfg.peer_timeout_ms < self.now {
                    return;
                }
                let known_leader = self.peers.get(&tab).is_some_and(|p| p.leader);
                let was = self.peers.get(&tab).map(|p| (p.visible, p.leader));
                if self.is_leader() && was != Some((visible, leader)) {
                    // A tab that just appeared, was just shown or hidden, or gave up leading, hears at once where
                    // the connection stands (it would show nothing, or another leader's state, until the status
                    // next changes) and that this leader is awake (a shown tab whose leader does not answer
                    // takes over at once: `seek_leadership`).
                    self.announce();
                    self.out.push_back(Output::Broadcast(TabMessage::Status {
                        status: self.status.clone(),
                        sent_at: self.now,
                        tab: self.tab,
                    }));
                }
                let peer = self.peers.entry(tab).or_insert(Peer {
                    visible,
                    leader,
                    last_seen: said_at,
                    interests: BTreeSet::new(),
                    critical: BTreeSet::new(),
                });
                peer.visible = visible;
                peer.leader = leader;
                peer.last_seen = peer.last_seen.max(said_at);
                if leader && !known_leader && !self.is_leader() {
                    // A (new) leader: tell it what this tab needs, and what this tab has queued.
                    self.send_interest();
                    let queued: Vec<PendingWrite> =
                        self.outbox.values().filter(|w| !self.unstored.contains(&w.write_id)).cloned().collect();
                    for write in queued {
                        self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write }));
                    }
                }
            }
            TabMessage::Goodbye { tab } => {
                self.peers.remove(&tab);
            }
            TabMessage::Interest { tab, keys, critical } => {
                let peer = self.peers.entry(tab).or_insert(Peer {
                    visible: false,
                    leader: false,
                    last_seen: self.now,
                    interests: BTreeSet::new(),
                    critical: BTreeSet::new(),
                });
                peer.interests = keys.iter().copied().collect();
                peer.critical = critical.into_iter().collect();
                if self.is_leader() {
                    for key in keys {
                        let q = self.queries.entry(key).or_default();
                        q.unused_since = None;
                        if let Some(data) = q.data.clone().filter(|_| !q.invalidated) {
                            let fetched_at = q.current_at.unwrap_or(self.now);
                            self.out.push_back(Output::Broadcast(TabMessage::Data { key, data, fetched_at }));
                        } else if q.fetching.is_some() {
                            self.metrics.dedupe_hits += 1;
                        }
                    }
                }
            }
            TabMessage::Refetch { key } => {
                if self.is_leader() {
                    let kept = self.kept_fresh(key);
                    if let Some(q) = self.queries.get_mut(&key) {
                        if q.fetching.is_some() {
                            self.metrics.dedupe_hits += 1;
                        } else if !kept || q.invalidated {
                            q.invalidated = true;
                        } else if let Some(data) = q.data.clone() {
                            // Our copy is current (the feed keeps it so): the follower missed something (it was
                            // frozen, or joined late). Share it rather than fetch it again.
                            let fetched_at = q.current_at.unwrap_or(self.now);
                            self.out.push_back(Output::Broadcast(TabMessage::Data { key, data, fetched_at }));
                        }
                    }
                }
            }
            TabMessage::Data { key, data, fetched_at: _ } => {
                if self.is_leader() {
                    return; // another leader during a handover; our own data is authoritative here
                }
                let q = self.queries.entry(key).or_default();
                let newer = q.not_older(&data) || matches!(q.data, Some(QueryData::Gone));
                if newer {
                    q.ahead_to = 0;
                }
                if newer && q.data.as_ref() != Some(&data) {
                    q.data = Some(data);
                    self.notified.insert(key);
                }
                let q = self.queries.get_mut(&key).expect("present");
                q.invalidated = false;
                q.current_at = Some(self.now);
                q.error = None;
                q.retry_at = None;
                self.prefetch_done(key);
            }
            TabMessage::Changes { stream, changes } => {
                if !self.is_leader() {
                    self.apply_changes(stream, &changes);
                    // What could not be applied here: ask the leader for it.
                    let stale: Vec<QueryKey> = self
                        .queries
                        .iter()
                        .filter(|(k, q)| k.stream() == stream && q.invalidated && q.subscribers > 0)
                        .map(|(k, _)| *k)
                        .collect();
                    for key in stale {
                        self.out.push_back(Output::Broadcast(TabMessage::Refetch { key }));
                    }
                }
            }
            TabMessage::WriteQueued { write } => {
                self.seq = self.seq.max(write.seq);
                if self.settled.contains(&write.write_id) {
                    // A late echo, or a tab that read the stored outbox before the settle's delete landed and
                    // opened after the settle was announced: tell it again, or it keeps the write forever.
                    if self.is_leader() {
                        let settled = Settled::Earlier;
                        self.out.push_back(Output::Broadcast(TabMessage::WriteSettled {
                            write_id: write.write_id,
                            settled,
                        }));
                    }
                    return;
                }
                if let Some(current) = &write.conflict
                    && self.outbox.get(&write.write_id).is_none_or(|w| w.conflict.is_none())
                {
                    self.out.push_back(Output::Notify(Notification::Conflict {
                        write_id: write.write_id,
                        current: current.clone(),
                        needs_decision: true,
                    }));
                }
                self.notify_stream_of(&write.op);
                self.outbox.insert(write.write_id, write);
                self.out.push_back(Output::Notify(Notification::Outbox { pending: self.outbox.len() }));
            }
            TabMessage::WriteSettled { write_id, settled } => {
                self.remember_settled(write_id);
                self.unstored.remove(&write_id);
                if self.stored_here.remove(&write_id) {
                    // This tab stored it, so this tab deletes it too: the leader's delete may have landed first.
                    self.out.push_back(Output::Persist(PersistOp::OutboxDelete { write_id }));
                }
                if let Some(w) = self.outbox.remove(&write_id) {
                    self.notify_stream_of(&w.op);
                    // Every tab tells its user what became of a write, whichever tab made it.
                    match &settled {
                        Settled::Applied { body, at, .. } if !body.is_null() => {
                            if matches!(w.op, WriteOp::CreateBoard { .. }) {
                                self.seed_created_board(body);
                            }
                            self.apply_entity(body, at)
                        }
                        Settled::Overridden { current, at } => {
                            self.apply_entity(current, at);
                            self.out.push_back(Output::Notify(Notification::Conflict {
                                write_id,
                                current: current.clone(),
                                needs_decision: false,
                            }));
                        }
                        Settled::Rejected { body, .. } => {
                            let message = error_message(&body.to_string());
                            self.out.push_back(Output::Notify(Notification::WriteRejected { write_id, message }));
                        }
                        _ => {}
                    }
                    self.out.push_back(Output::Notify(Notification::Outbox { pending: self.outbox.len() }));
                }
            }
            TabMessage::ConflictResolved { write_id, keep_mine } => {
                if self.is_leader() {
                    self.resolve_conflict(write_id, keep_mine);
                }
            }
            TabMessage::RetryNow => {
                if self.is_leader() {
                    self.retry_now();
                }
            }
            TabMessage::Status { status, sent_at, tab } => {
                if self.peers.get(&tab).is_some_and(|p| !p.leader) {
                    return; // from a tab that is no longer the leader (its message was on the way)
                }
                let status = status.rebased(sent_at, self.now);
                if !self.is_leader() && self.leader_status.as_ref() != Some(&status) {
                    self.leader_status = Some(status);
                    self.notify_all_queries();
                }
            }
        }
    }

    // ---- reconcile ------------------------------------------------------------------------------------------

    fn reconcile(&mut self) {
        self.presence_and_peers();
        self.gc();
        if self.is_leader() {
            self.transport();
            self.subscriptions();
            self.long_polls();
            self.fetches();
            self.retry_outbox_when_reachable();
            self.flush_outbox();
            self.save_cache();
        } else {
            self.follower_requests();
            self.seek_leadership();
        }
        self.update_status();
        let keys = std::mem::take(&mut self.notified);
        for key in keys {
            self.out.push_back(Output::Notify(Notification::Query { key }));
        }
    }

    fn presence_and_peers(&mut self) {
        if self.now >= self.next_presence {
            self.announce();
        }
        let timeout = self.cfg.peer_timeout_ms;
        let now = self.now;
        self.peers.retain(|_, p| now < p.last_seen + timeout);
        if self.visible_somewhere() {
            if self.no_visible_since.take().is_some() {
                // Active again: follow the streams now rather than at the background schedule.
                for s in self.streams.values_mut() {
                    s.next_longpoll = s.next_longpoll.min(self.now);
                }
            }
        } else if self.no_visible_since.is_none() {
            self.no_visible_since = Some(self.now);
        }
    }

    /// A visible follower takes over from a hidden leader (after a short delay, so quick tab switches do not
    /// bounce the connection): the connection should live in a tab the user looks at. A tab that was just shown
    /// announced itself; if no leader answers within `LEADER_ANSWER_MS` (the browser froze the leader: it keeps
    /// the lock but does nothing), it takes over at once.
    fn seek_leadership(&mut self) {
        if !self.visible {
            self.leader_check_since = None;
            self.leader_hidden_since = None;
            return;
        }
        if let Some(since) = self.leader_check_since {
            let answered = self.peers.values().any(|p| p.leader && p.last_seen >= since);
            if answered {
                self.leader_check_since = None;
            } else if self.now >= since + LEADER_ANSWER_MS {
                self.leader_check_since = None;
                self.leader_hidden_since = None;
                self.out.push_back(Output::ClaimLeadership);
                return;
            }
        }
        let leader_hidden = self.peers.values().any(|p| p.leader && !p.visible);
        if leader_hidden {
            let since = *self.leader_hidden_since.get_or_insert(self.now);
            if self.now >= since + LEADER_HANDOVER_DELAY_MS {
                self.leader_hidden_since = None;
                self.out.push_back(Output::ClaimLeadership);
            }
        } else {
            self.leader_hidden_since = None;
        }
    }

    fn gc(&mut self) {
        let now = self.now;
        let gc = self.cfg.gc_time_ms;
        let interests: BTreeSet<QueryKey> = self.peers.values().flat_map(|p| p.interests.iter().copied()).collect();
        let is_leader = self.is_leader();
        for (key, q) in self.queries.iter_mut() {
            let wanted = q.held() || (is_leader && interests.contains(key));
            if wanted {
                q.unused_since = None;
            } else if q.unused_since.is_none() {
                q.unused_since = Some(now);
            }
        }
        self.queries.retain(|_, q| q.unused_since.is_none_or(|t| now < t + gc) || q.fetching.is_some());
    }

    fn wanted_keys(&self) -> Vec<QueryKey> {
        let interests: BTreeSet<QueryKey> = self.peers.values().flat_map(|p| p.interests.iter().copied()).collect();
        self.queries
            .iter()
            .filter(|(k, q)| q.held() || (self.is_leader() && interests.contains(k)))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Streams to follow, with the cursor to follow each from (when there is data to follow).
    fn wanted_streams(&self) -> BTreeMap<StreamId, Option<Cursor>> {
        let mut out: BTreeMap<StreamId, Option<Cursor>> = BTreeMap::new();
        for key in self.wanted_keys() {
            let q = &self.queries[&key];
            let cursor = match &q.data {
                Some(QueryData::Gone) => continue,
                Some(d) if !q.invalidated || key.takes_deltas() => d.cursor(),
                _ => None,
            };
            let entry = out.entry(key.stream()).or_insert(None);
            // Prefer the cursor of the query that takes deltas (the board itself).
            if (key.takes_deltas() || entry.is_none())
                && let Some(c) = cursor
            {
                *entry = Some(c);
            }
        }
        out
    }

    fn socket_wanted(&self) -> bool {
        self.online && self.prefs.realtime && self.active() && !self.wanted_streams().is_empty()
    }

    fn transport(&mut self) {
        if !self.online || !self.socket_wanted() {
            if !self.online || !self.active() || !self.prefs.realtime {
                self.drop_socket(if !self.online { "offline" } else { "no visible tab" });
                if !self.online || !self.prefs.realtime {
                    return;
                }
            }
            if matches!(self.conn, Conn::Backoff { until } if self.now >= until) {
                self.conn = Conn::Closed;
            }
            return;
        }
        match self.conn {
            Conn::Backoff { until } if self.now >= until => self.open_socket(),
            Conn::Closed => match self.mode {
                Mode::Socket => self.open_socket(),
                Mode::Fallback { next_probe } if self.now >= next_probe => {
                    let wait = self.probe_delay();
                    self.mode = Mode::Fallback { next_probe: self.now + wait };
                    self.open_socket();
                }
                Mode::Fallback { .. } => {}
            },
            Conn::Opening { since } if self.now >= since + OPEN_TIMEOUT_MS => {
                self.out.push_back(Output::CloseSocket { code: 1000, reason: "open timed out".into() });
                self.conn = Conn::Opening { since }; // keep the state so the close counts as a failure
                self.on_socket_closed(None, "open timed out".into());
            }
            Conn::Open { last_heard, next_ping, hello } => {
                if self.now >= last_heard + 2 * self.cfg.ping_interval_ms {
                    self.out.push_back(Output::CloseSocket { code: 4000, reason: "heartbeat timeout".into() });
                    self.on_socket_closed(None, "heartbeat timeout".into());
                } else if self.now >= next_ping && hello {
                    let nonce = self.next_nonce;
                    self.next_nonce += 1;
                    self.send_socket(ClientMessage::Ping { nonce });
                    self.conn = Conn::Open { hello, last_heard, next_ping: self.now + self.cfg.ping_interval_ms };
                }
            }
            _ => {}
        }
    }

    fn open_socket(&mut self) {
        self.conn = Conn::Opening { since: self.now };
        self.out.push_back(Output::OpenSocket);
    }

    fn socket_ready(&self) -> bool {
        matches!(self.conn, Conn::Open { hello: true, .. })
    }

    /// Every wanted stream with a cursor is subscribed on the socket; streams no longer wanted are dropped.
    fn subscriptions(&mut self) {
        if !self.socket_ready() {
            return;
        }
        let wanted = self.wanted_streams();
        let mut subscribe = Vec::new();
        for (stream, cursor) in &wanted {
            let s = self.streams.entry(*stream).or_default();
            if let (Sub::None, Some(since)) = (s.sub, cursor) {
                s.sub = Sub::Subscribing;
                subscribe.push(StreamCursor { stream: *stream, since: *since });
            }
        }
        let unwanted: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(s, st)| st.sub != Sub::None && !wanted.contains_key(s))
            .map(|(s, _)| *s)
            .collect();
        if !subscribe.is_empty() {
            self.send_socket(ClientMessage::Subscribe { streams: subscribe, log_id: self.log_id });
        }
        if !unwanted.is_empty() {
            for s in &unwanted {
                self.streams.remove(s);
            }
            self.send_socket(ClientMessage::Unsubscribe { streams: unwanted });
        }
    }

    /// On the socket and caught up on every stream it follows.
    fn live(&self) -> bool {
        // Streams without data yet are being fetched; they join once they have a cursor and do not hold back
        // the others (or the outbox that may be what creates them).
        self.socket_ready()
            && self
                .wanted_streams()
                .iter()
                .filter(|(_, c)| c.is_some())
                .all(|(s, _)| self.streams.get(s).is_some_and(|st| st.sub == Sub::Synced))
    }

    /// Whether the transport keeps this query current without timed refetches.
    fn kept_fresh(&self, key: QueryKey) -> bool {
        if !self.is_leader() {
            return matches!(self.leader_status, Some(ConnectionStatus::Live) | Some(ConnectionStatus::Polling { .. }))
                && self.prefs.realtime;
        }
        let stream = self.streams.get(&key.stream());
        if self.socket_ready() {
            return stream.is_some_and(|s| s.sub == Sub::Synced);
        }
        matches!(self.mode, Mode::Fallback { .. }) && stream.is_some_and(|s| s.polled_ok)
    }

    fn poll_context(&self, critical: bool) -> PollContext {
        PollContext { online: self.online, visible: self.visible_somewhere(), link: self.link, critical }
    }

    /// Pause before the next long-poll of a stream: none after an empty (timed-out) one while a tab is active
    /// (it waited already); a short batching pause after changes; the background interval when no tab is
    /// active and the preference polls at all (`Millis::MAX` = not until something changes).
    fn longpoll_gap(&self, was_empty: bool) -> Millis {
        if self.active() {
            if was_empty {
                return 0;
            }
            let ctx = PollContext { visible: true, ..self.poll_context(true) };
            policy::longpoll_gap(&self.prefs, &ctx).unwrap_or(Millis::MAX)
        } else {
            let ctx = PollContext { visible: false, ..self.poll_context(true) };
            policy::poll_interval(&self.prefs, &ctx).unwrap_or(Millis::MAX)
        }
    }

    fn long_polls(&mut self) {
        let fallback = matches!(self.mode, Mode::Fallback { .. }) && self.prefs.realtime && !self.socket_ready();
        let ctx = PollContext { visible: self.active(), ..self.poll_context(true) };
        let wanted = if fallback && self.online { self.wanted_streams() } else { BTreeMap::new() };
        // No tab active: long-polls continue only if the background preference polls at all.
        let allowed = ctx.visible || policy::poll_interval(&self.prefs, &ctx).is_some();
        let cancel: Vec<RequestId> = self
            .streams
            .iter()
            .filter(|(s, st)| st.longpoll.is_some() && (!wanted.contains_key(s) || !allowed))
            .filter_map(|(_, st)| st.longpoll)
            .collect();
        for id in cancel {
            self.cancel(id);
        }
        if !allowed {
            return;
        }
        for (stream, cursor) in wanted {
            let Some(since) = cursor else { continue };
            let s = self.streams.entry(stream).or_default();
            if s.longpoll.is_some() || self.now < s.next_longpoll {
                continue;
            }
            // The first long-poll of a stream (or the first after a failure) asks without waiting: it is also
            // how the engine learns that the server answers at all (a held request says nothing for 25 s).
            let wait = if ctx.visible && s.polled_ok { self.cfg.longpoll_wait_s } else { 0 };
            let mut path = format!("/api/changes?stream={stream}&since={since}&wait={wait}");
            if let Some(log) = self.log_id {
                path.push_str(&format!("&log_id={log}"));
            }
            let id = self.request(
                Purpose::LongPoll(stream),
                HttpRequest { method: "GET", path, body: None, if_none_match: None },
            );
            self.metrics.long_polls += 1;
            self.streams.get_mut(&stream).expect("present").longpoll = Some(id);
        }
    }

    /// Fetches what has no data or is invalidated, and what is due for a timed refetch, a few at a time.
    fn fetches(&mut self) {
        if !self.online {
            return;
        }
        let in_flight = self.requests.values().filter(|r| matches!(r.purpose, Purpose::Query(_))).count();
        let mut slots = self.cfg.max_concurrent_fetches.saturating_sub(in_flight);
        // While the socket catches up, only fetch what it cannot bring (no data, or reset).
        let catching_up = self.socket_ready() && !self.live();
        let visible = self.visible_somewhere();
        let mut due: Vec<(u8, QueryKey)> = Vec::new();
        for key in self.wanted_keys() {
            let kept = self.kept_fresh(key);
            let q = &self.queries[&key];
            if q.fetching.is_some() || q.retry_at.is_some_and(|t| self.now < t) {
                continue;
            }
            // A board created here is fetched once the server has it (the write settles first).
            if let QueryKey::Board(b) | QueryKey::BoardSummary(b) = key
                && self.pending_create(b).is_some()
            {
                continue;
            }
            let no_data = q.data.is_none();
            let critical = q.critical || self.peers.values().any(|p| p.critical.contains(&key));
            let ctx = self.poll_context(critical);
            let polls_hidden = policy::poll_interval(&self.prefs, &ctx).is_some();
            // Missing data is fetched while a tab is active (or the background preference polls it): after the
            // grace period with "pause", nothing at all until a tab is shown.
            let missing = no_data && (visible || self.active() || polls_hidden);
            let timed = !kept && !no_data && !q.invalidated && {
                let interval =
                    if self.prefs.realtime && matches!(self.mode, Mode::Fallback { .. }) && key.takes_deltas() {
                        None // the long-poll follows it
                    } else if self.prefs.realtime
                        && matches!(self.mode, Mode::Socket)
                        && self.active()
                        && key.takes_deltas()
                    {
                        None // the socket will follow it once up
                    } else {
                        policy::poll_interval(&self.prefs, &ctx)
                    };
                match (interval, q.current_at) {
                    (Some(i), Some(t)) => self.now >= t + i,
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            };
            // While no tab is visible, invalidations wait (batched) until one is, unless the query is missing, or
            // critical and the background preference polls it.
            let invalid = q.invalidated && (visible || missing || (ctx.critical && polls_hidden));
            if catching_up && !no_data && !(q.invalidated && !key.takes_deltas()) {
                let s = self.streams.get(&key.stream());
                if s.is_some_and(|s| s.sub != Sub::None) {
                    continue;
                }
            }
            if missing || invalid || timed {
                let rank = if missing {
                    0
                } else if invalid {
                    1
                } else {
                    2
                };
                due.push((rank, key));
            } else if let Some(i) = (!kept && !no_data).then(|| policy::poll_interval(&self.prefs, &ctx)).flatten() {
                let next = q.current_at.map_or(self.now, |t| t + i);
                self.queries.get_mut(&key).expect("present").next_poll = Some(next);
                continue;
            }
            self.queries.get_mut(&key).expect("present").next_poll = None;
        }
        due.sort();
        for (_, key) in due {
            if slots == 0 {
                break;
            }
            slots -= 1;
            let etag = self.queries[&key].etag.clone();
            let id = self.request(
                Purpose::Query(key),
                HttpRequest { method: "GET", path: key.path(), body: None, if_none_match: etag },
            );
            let q = self.queries.get_mut(&key).expect("present");
            q.fetching = Some(id);
            q.retry_at = None;
            self.notified.insert(key);
        }
    }

    /// Persists the queries changed by deltas once they have been dirty for `CACHE_SAVE_DELAY_MS` (a burst of
    /// changes to a big board is one IndexedDB write, not hundreds of serialisations of the whole board).
    fn save_cache(&mut self) {
        let due: Vec<QueryKey> = self
            .cache_dirty
            .iter()
            .filter(|(_, since)| self.now >= **since + CACHE_SAVE_DELAY_MS)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.cache_dirty.remove(&key);
            if let Some(data) = self.queries.get(&key).and_then(|q| q.data.clone()) {
                self.out.push_back(Output::Persist(PersistOp::CachePut { key, data }));
            }
        }
    }

    /// The server answers again (the feed is live, or a long-poll came back): what waits in the outbox goes now,
    /// not at the end of a backoff that was computed while nothing got through.
    fn retry_outbox_when_reachable(&mut self) {
        let reachable =
            self.live() || (matches!(self.mode, Mode::Fallback { .. }) && self.streams.values().any(|s| s.polled_ok));
        if reachable && !self.reachable {
            self.outbox_retry_at = self.outbox_retry_at.min(self.now);
            self.outbox_failures = 0;
        }
        self.reachable = reachable;
    }

    fn flush_outbox(&mut self) {
        if !self.online || self.batch.is_some() || self.outbox.is_empty() || self.now < self.outbox_retry_at {
            return;
        }
        // Ramp-up: catch up first, then send the outbox, then go live.
        if matches!(self.conn, Conn::Opening { .. } | Conn::Open { hello: false, .. })
            || (self.socket_ready() && !self.live())
        {
            return;
        }
        let mut batch: Vec<&PendingWrite> = Vec::new();
        let mut blocked: BTreeSet<Uuid> = BTreeSet::new();
        let has_user_visible =
            self.outbox.values().any(|w| w.priority == Priority::UserVisible && w.conflict.is_none());
        for w in self.pending_sorted() {
            let entity = apply::entity_of(&w.op);
            if self.unstored.contains(&w.write_id) {
                blocked.insert(entity); // sent once stored; later writes on it wait behind it
                continue;
            }
            if w.conflict.is_some() {
                blocked.insert(entity); // later writes on it wait for the user's decision
                continue;
            }
            if blocked.contains(&entity)
                || (w.priority == Priority::Background
                    && has_user_visible
                    && batch.iter().all(|b| b.priority == Priority::UserVisible)
                    && !batch.is_empty())
            {
                continue;
            }
            batch.push(w);
            if batch.len() == self.cfg.max_batch_writes {
                break;
            }
        }
        if batch.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = batch.iter().map(|w| w.write_id).collect();
        let body =
            WriteBatch { writes: batch.iter().map(|w| Write { write_id: w.write_id, op: w.op.clone() }).collect() };
        let body = serde_json::to_string(&body).expect("writes serialize");
        self.metrics.writes_sent += ids.len() as u64;
        let id = self.request(
            Purpose::Writes(ids),
            HttpRequest { method: "POST", path: "/api/writes".into(), body: Some(body), if_none_match: None },
        );
        self.batch = Some(id);
    }

    /// Followers make no requests: they ask the leader for what they miss.
    fn follower_requests(&mut self) {
        let visible = self.visible;
        let wants: Vec<QueryKey> =
            self.queries.iter().filter(|(_, q)| q.held() && q.invalidated && visible).map(|(k, _)| *k).collect();
        for key in wants {
            if self.bug(InjectedBug::FollowersFetch) {
                let etag = self.queries[&key].etag.clone();
                let id = self.request(
                    Purpose::Query(key),
                    HttpRequest { method: "GET", path: key.path(), body: None, if_none_match: etag },
                );
                self.queries.get_mut(&key).expect("wanted").fetching = Some(id);
            }
            if let Some(q) = self.queries.get_mut(&key) {
                q.invalidated = false; // asked once; the leader's data clears it for good
            }
            if self.peers.values().any(|p| p.leader) {
                self.out.push_back(Output::Broadcast(TabMessage::Refetch { key }));
            }
        }
    }

    fn request(&mut self, purpose: Purpose, request: HttpRequest) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.metrics.requests += 1;
        self.metrics.bytes_out += request.body.as_ref().map_or(0, |b| b.len() as u64);
        self.requests.insert(id, InFlight { purpose, sent_at: self.now });
        self.out.push_back(Output::Http { id, request });
        id
    }

    fn cancel(&mut self, id: RequestId) {
        if let Some(req) = self.requests.remove(&id) {
            if let Purpose::LongPoll(stream) = req.purpose
                && let Some(s) = self.streams.get_mut(&stream)
            {
                s.longpoll = None;
            }
            self.out.push_back(Output::CancelHttp { id });
        }
    }

    fn cancel_long_polls(&mut self) {
        let ids: Vec<RequestId> = self.streams.values().filter_map(|s| s.longpoll).collect();
        for id in ids {
            self.cancel(id);
        }
    }

    fn update_status(&mut self) {
        let status = if !self.online {
            ConnectionStatus::Offline { pending_writes: self.outbox.len() }
        } else if !self.is_leader() {
            self.leader_status.clone().unwrap_or(ConnectionStatus::Idle)
        } else if self.wanted_keys().is_empty() {
            ConnectionStatus::Idle
        } else if !self.prefs.realtime {
            ConnectionStatus::Polling { reason: "realtime is off".into(), retry_socket_at: None }
        } else if !self.active() {
            ConnectionStatus::Paused
        } else if let Mode::Fallback { next_probe } = self.mode {
            // Long-polls failing too: the server is out of reach, not just its WebSocket.
            let unreachable = self.streams.values().filter(|s| s.poll_failures > 0).map(|s| s.next_longpoll).min();
            let reachable = self.streams.values().any(|s| s.polled_ok);
            if self.socket_ready() {
                ConnectionStatus::Connecting
            } else if let (Some(retry_at), false) = (unreachable, reachable) {
                ConnectionStatus::Reconnecting { retry_at: retry_at.min(next_probe) }
            } else if !reachable {
                ConnectionStatus::Connecting // no long-poll has answered yet: polling is not established
            } else {
                ConnectionStatus::Polling {
                    reason: "the WebSocket is unavailable".into(),
                    retry_socket_at: Some(next_probe),
                }
            }
        } else {
            match self.conn {
                Conn::Backoff { until } => ConnectionStatus::Reconnecting { retry_at: until },
                Conn::Open { hello: true, .. } if self.live() => ConnectionStatus::Live,
                _ => ConnectionStatus::Connecting,
            }
        };
        if status != self.status {
            self.status = status.clone();
            self.status_since = self.now;
            if self.is_leader() {
                self.out.push_back(Output::Broadcast(TabMessage::Status {
                    status: status.clone(),
                    sent_at: self.now,
                    tab: self.tab,
                }));
            }
            self.out.push_back(Output::Notify(Notification::Connection { status }));
            self.notify_all_queries();
        }
    }

    // ---- helpers --------------------------------------------------------------------------------------------

    fn pending_sorted(&self) -> Vec<&PendingWrite> {
        let mut v: Vec<&PendingWrite> = self.outbox.values().collect();
        v.sort_by_key(|w| (w.priority, w.seq, w.write_id));
        v
    }

    fn notify_stream_of(&mut self, op: &WriteOp) {
        let entity = apply::entity_of(op);
        let keys: Vec<QueryKey> = self
            .queries
            .iter()
            .filter(|(k, q)| match (k, &q.data) {
                (QueryKey::Boards, _) => matches!(op, WriteOp::CreateBoard { .. } | WriteOp::RenameBoard { .. } | WriteOp::DeleteBoard { .. }),
                (QueryKey::Board(b), Some(QueryData::Board(snap))) => {
                    *b == entity
                        || snap.columns.iter().any(|c| c.id == entity)
                        || snap.cards.iter().any(|c| c.id == entity)
                        || matches!(op, WriteOp::CreateColumn { board_id, .. } if board_id == b)
                        || matches!(op, WriteOp::CreateCard { column_id, .. } if snap.columns.iter().any(|c| c.id == *column_id))
                }
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        self.notified.extend(keys);
    }

    fn notify_all_queries(&mut self) {
        let keys: Vec<QueryKey> = self.queries.keys().copied().collect();
        self.notified.extend(keys);
    }

    fn mark_current_now(&mut self) {
        let now = self.now;
        let synced: Vec<StreamId> =
            self.streams.iter().filter(|(_, s)| s.sub == Sub::Synced || s.polled_ok).map(|(k, _)| *k).collect();
        for (key, q) in self.queries.iter_mut() {
            if synced.contains(&key.stream()) && !q.invalidated {
                q.current_at = Some(now);
            }
        }
    }

    fn mark_stream_current(&mut self, stream: StreamId) {
        let now = self.now;
        for (key, q) in self.queries.iter_mut() {
            if key.stream() == stream && key.takes_deltas() && !q.invalidated {
                q.current_at = Some(now);
                self.notified.insert(*key);
            }
        }
    }

    fn catch_up_stale(&mut self) {
        let now = self.now;
        let stale_time = self.cfg.stale_time_ms;
        let keys: Vec<QueryKey> = self.wanted_keys();
        for key in keys {
            if self.kept_fresh(key) {
                continue;
            }
            let q = self.queries.get_mut(&key).expect("wanted");
            if q.current_at.is_none_or(|t| now >= t + stale_time) {
                q.invalidated = true;
                self.notified.insert(key);
            }
        }
    }
}

/// Woken this long after its deadline, a tab was frozen by the browser.
const FROZEN_AFTER_MS: Millis = 3_000;
/// Settled write ids remembered to recognise late echoes of them.
const SETTLED_REMEMBERED: usize = 1024;
/// A socket that has not opened after this long is given up on (counts as a failure).
const OPEN_TIMEOUT_MS: Millis = 10_000;
/// Queries changed by a fetch or by deltas are saved to the persistent cache this long after their first unsaved
/// change.
const CACHE_SAVE_DELAY_MS: Millis = 1_000;
/// How long a visible follower waits before taking leadership from a hidden leader.
const LEADER_HANDOVER_DELAY_MS: Millis = 500;
/// A hidden leader answers a tab that was just shown within this (with its presence); one that does not is
/// frozen, and the shown tab takes over at once.
const LEADER_ANSWER_MS: Millis = 50;

fn add_state_time(metrics: &mut Metrics, status: &ConnectionStatus, spent: Millis) {
    let times = &mut metrics.states;
    match status {
        ConnectionStatus::Live => times.live_ms += spent,
        ConnectionStatus::Polling { .. } => times.polling_ms += spent,
        ConnectionStatus::Offline { .. } => times.offline_ms += spent,
        ConnectionStatus::Paused => times.paused_ms += spent,
        ConnectionStatus::Connecting | ConnectionStatus::Reconnecting { .. } => times.connecting_ms += spent,
        ConnectionStatus::Idle => {}
    }
}

fn parse_query(key: QueryKey, body: &str) -> Result<QueryData, String> {
    let bad = |e: serde_json::Error| format!("unexpected answer for {key:?}: {e}");
    Ok(match key {
        QueryKey::Boards => QueryData::Boards(serde_json::from_str(body).map_err(bad)?),
        QueryKey::Board(_) => {
            let mut snap: BoardSnapshot = serde_json::from_str(body).map_err(bad)?;
            apply::normalize(&mut snap);
            QueryData::Board(snap)
        }
        QueryKey::BoardSummary(_) => QueryData::Summary(serde_json::from_str(body).map_err(bad)?),
    })
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}
