//! Deterministic simulation of syncline: B browsers × T tabs, each tab running the real [`Engine`], against the
//! real server store (SQLite in memory, the same write and change-log code as the server), over a simulated
//! network with delays, loss, partitions and offline periods, with tabs hidden, crashed, closed and opened,
//! the server restarted and WebSocket upgrades refused — all from one seed.
//!
//! Checked invariants (see [`Invariant`]): every write the UI accepted is applied on the server or surfaced to
//! the user; after the faults stop every tab converges to the server's state within [`SETTLE_MS`] of
//! simulated time; at most one live socket per browser except during a bounded handover; followers (hidden
//! or not) make no network requests; the long-poll rate stays within its budget.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use syncline_engine::{
    BackgroundMode, ConflictPolicy, EffectiveType, Engine, EngineConfig, HttpRequest, HttpResult, Input, LinkQuality,
    Millis, Notification, Output, PendingWrite, PersistOp, Preferences, Priority, QueryData, QueryKey, Role, Settled,
    TabMessage,
};
use syncline_protocol::{
    BoardSnapshot, Change, ClientMessage, CreateBoard, CreateCard, CreateColumn, Cursor, MoveCard, ServerMessage,
    StreamCursor, StreamId, UpdateCard, WriteBatch, WriteBatchResult, WriteOp, WriteOutcome,
};
use syncline_server::feed::{LogRead, read_log};
use syncline_server::{store, writes};
use uuid::Uuid;

/// Faults and user writes happen during this much simulated time.
pub const FAULT_MS: Millis = 40_000;
/// After the faults stop, every tab must have converged within this bound.
pub const SETTLE_MS: Millis = 30_000;
/// Two live sockets in one browser are tolerated this long (a leader handover).
pub const HANDOVER_MS: Millis = 3_000;
/// Long-polls one browser may make in any 60 s window.
pub const LONG_POLL_BUDGET_PER_MIN: usize = 150;

/// The invariants the simulation checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// A write the UI accepted was neither applied on the server nor surfaced to the user.
    WriteLost,
    /// A tab's data differs from the server's after the faults stopped and the settle bound passed.
    NotConverged,
    /// More than one socket per browser for longer than a handover.
    TwoSockets,
    /// A follower tab made a network request.
    FollowerRequest,
    /// Too many long-polls in a minute.
    PollBudget,
    /// A browser whose tabs have all been hidden past the grace period, with the "pause" preference, used the
    /// network for something other than sending the user's writes.
    HiddenTraffic,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub invariant: Invariant,
    pub at: Millis,
    pub detail: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {}: {:?} at {} ms: {}", self.seed, self.invariant, self.at, self.detail)
    }
}

/// What one run did, for reports.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub browsers: usize,
    pub events: u64,
    pub writes_accepted: usize,
    pub writes_applied: usize,
    pub surfaced: usize,
    pub http_requests: u64,
    pub max_long_polls_per_min: usize,
}

#[derive(Debug)]
enum Event {
    Timer { b: usize, t: usize },
    ToTab { b: usize, t: usize, input: Input },
    HttpAtServer { b: usize, t: usize, id: u64, request: HttpRequest, epoch: u64 },
    SocketOpenAtServer { b: usize, t: usize, attempt: u64 },
    SocketMsgAtServer { sock: u64, msg: ClientMessage },
    LongPollTimeout { park: u64 },
    UserWrite { b: usize },
    UserResolve { b: usize },
    Fault,
    Recover { what: Recover },
    LockGrant { b: usize },
    EndFaults,
}

#[derive(Debug, Clone, Copy)]
enum Recover {
    Online(usize),
    Unpartition(usize),
    ServerUp,
    AllowUpgrades,
}

struct Queued {
    at: Millis,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Tab {
    engine: Engine,
    alive: bool,
    visible: bool,
    deadline: Millis,
    socket: Option<u64>,
    socket_attempt: u64,
    /// Socket messages to this tab are delivered in order (TCP).
    socket_fifo: Millis,
}

struct Browser {
    tabs: Vec<Tab>,
    online: bool,
    partitioned: bool,
    latency: (Millis, Millis),
    loss: f64,
    prefs: Preferences,
    link: LinkQuality,
    idb_outbox: BTreeMap<Uuid, PendingWrite>,
    idb_cache: BTreeMap<QueryKey, QueryData>,
    leader: Option<usize>,
    long_polls: Vec<Millis>,
    two_sockets_since: Option<Millis>,
    /// Since when no tab of this browser is visible.
    hidden_since: Option<Millis>,
}

struct ServerSocket {
    b: usize,
    t: usize,
    subs: BTreeMap<StreamId, Cursor>,
}

struct Parked {
    b: usize,
    t: usize,
    id: u64,
    stream: StreamId,
    since: Cursor,
    log_id: Option<Uuid>,
    epoch: u64,
}

struct Server {
    conn: Connection,
    log_id: Uuid,
    sockets: BTreeMap<u64, ServerSocket>,
    parked: BTreeMap<u64, Parked>,
    next_id: u64,
    up: bool,
    epoch: u64,
    refuse_upgrades: bool,
}

struct World {
    now: Millis,
    seq: u64,
    rng: SmallRng,
    events: BinaryHeap<Reverse<Queued>>,
    server: Server,
    browsers: Vec<Browser>,
    trace: Option<Vec<String>>,
    board: Uuid,
    faults: bool,
    /// Every write id that entered an outbox, with the browser and whether the UI accepted it directly.
    written: BTreeMap<Uuid, usize>,
    superseded: BTreeMap<Uuid, Uuid>,
    surfaced: BTreeSet<Uuid>,
    stats: RunStats,
    violation: Option<(Invariant, String)>,
    next_tab_seed: u64,
}

/// Runs one seed. With `trace`, the violation (if any) carries a readable log of the whole run.
pub fn run(seed: u64, trace: bool) -> Result<RunStats, Violation> {
    let mut world = World::new(seed, trace);
    world.run();
    match world.violation.take() {
        None => Ok(world.stats),
        Some((invariant, detail)) => Err(Violation {
            seed,
            invariant,
            at: world.now,
            detail,
            trace: world.trace.take().unwrap_or_default(),
        }),
    }
}

impl World {
    fn new(seed: u64, trace: bool) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut conn, log_id) = store::open_connection(Path::new(":memory:")).expect("in-memory database");
        // The board everyone looks at: three columns, a few cards.
        let board = Uuid::from_u128(rng.random());
        let run = |conn: &mut Connection, op: WriteOp| {
            let (outcome, _) = writes::execute_locked(conn, None, op).expect("seeding");
            assert!(outcome.status.is_success(), "seeding: {}", outcome.body);
        };
        run(&mut conn, WriteOp::CreateBoard { body: CreateBoard { id: Some(board), title: "Sim".into() } });
        let mut columns = Vec::new();
        for title in ["Todo", "Doing", "Done"] {
            let id = Uuid::from_u128(rng.random());
            run(&mut conn, WriteOp::CreateColumn { board_id: board, body: CreateColumn { id: Some(id), title: title.into() } });
            columns.push(id);
        }
        for i in 0..4 {
            let body = CreateCard { id: Some(Uuid::from_u128(rng.random())), title: format!("seed {i}"), description: String::new() };
            run(&mut conn, WriteOp::CreateCard { column_id: columns[i % 3], body });
        }
        let browsers = rng.random_range(1..=3);
        let mut world = World {
            now: 0,
            seq: 0,
            rng,
            events: BinaryHeap::new(),
            server: Server { conn, log_id, sockets: BTreeMap::new(), parked: BTreeMap::new(), next_id: 1, up: true, epoch: 0, refuse_upgrades: false },
            browsers: Vec::new(),
            trace: trace.then(Vec::new),
            board,
            faults: true,
            written: BTreeMap::new(),
            superseded: BTreeMap::new(),
            surfaced: BTreeSet::new(),
            stats: RunStats { browsers, ..RunStats::default() },
            violation: None,
            next_tab_seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        for b in 0..browsers {
            let prefs = Preferences {
                background: [BackgroundMode::Pause, BackgroundMode::CriticalOnly, BackgroundMode::Slower][world.rng.random_range(0..3)],
                background_interval_ms: 30_000,
                data_saver: world.rng.random_bool(0.2),
                ..Preferences::default()
            };
            let link = LinkQuality {
                effective_type: [EffectiveType::FourG, EffectiveType::FourG, EffectiveType::ThreeG, EffectiveType::TwoG][world.rng.random_range(0..4)],
                rtt_ms: None,
                save_data: false,
            };
            let latency = (1, world.rng.random_range(2..40));
            world.browsers.push(Browser {
                tabs: Vec::new(),
                online: true,
                partitioned: false,
                latency,
                loss: [0.0, 0.02, 0.1][world.rng.random_range(0..3)],
                prefs,
                link,
                idb_outbox: BTreeMap::new(),
                idb_cache: BTreeMap::new(),
                leader: None,
                long_polls: Vec::new(),
                two_sockets_since: None,
                hidden_since: None,
            });
            let tabs = world.rng.random_range(1..=3);
            for _ in 0..tabs {
                world.open_tab(b);
            }
            let first = world.rng.random_range(FAULT_MS / 100..FAULT_MS / 10);
            world.schedule(first, Event::UserWrite { b });
            world.schedule(2_000, Event::UserResolve { b });
        }
        let first_fault = world.rng.random_range(500..3_000);
        world.schedule(first_fault, Event::Fault);
        world.schedule(FAULT_MS, Event::EndFaults);
        world
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let line = format!("[{:>6}.{:03}s] {}", self.now / 1000, self.now % 1000, line());
            if std::env::var_os("SYNCLINE_SIM_LIVE").is_some() {
                eprintln!("{line}");
            }
            trace.push(line);
        }
    }

    fn schedule(&mut self, delay: Millis, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Queued { at: self.now + delay, seq: self.seq, event }));
    }

    fn latency(&mut self, b: usize) -> Millis {
        let (lo, hi) = self.browsers[b].latency;
        self.rng.random_range(lo..=hi)
    }

    fn run(&mut self) {
        let end = FAULT_MS + SETTLE_MS;
        while let Some(Reverse(q)) = self.events.pop() {
            if q.at > end || self.violation.is_some() {
                break;
            }
            self.now = q.at;
            self.stats.events += 1;
            self.handle(q.event);
            self.check_sockets();
            self.track_visibility();
        }
        if self.violation.is_none() {
            self.now = end;
            self.check_end();
        }
    }

    // ---- tabs ----------------------------------------------------------------------------------------------

    fn open_tab(&mut self, b: usize) {
        self.next_tab_seed = self.next_tab_seed.wrapping_add(1);
        let t = self.browsers[b].tabs.len();
        let tab_id = (b * 100 + t) as u64;
        let prefs = self.browsers[b].prefs.clone();
        let engine = Engine::new(EngineConfig::default(), prefs, tab_id, self.next_tab_seed, self.now);
        let visible = self.browsers[b].tabs.iter().all(|t| !t.alive || !t.visible) || self.rng.random_bool(0.5);
        self.browsers[b].tabs.push(Tab { engine, alive: true, visible: true, deadline: Millis::MAX, socket: None, socket_attempt: 0, socket_fifo: 0 });
        self.log(|| format!("b{b}/t{t} opened"));
        if !visible {
            self.browsers[b].tabs[t].visible = false;
            self.input(b, t, Input::Visibility { visible: false });
        }
        let link = self.browsers[b].link;
        let online = self.browsers[b].online;
        let outbox: Vec<PendingWrite> = self.browsers[b].idb_outbox.values().cloned().collect();
        let cache: Vec<(QueryKey, QueryData)> = self.browsers[b].idb_cache.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.input(b, t, Input::Link(link));
        if !online {
            self.input(b, t, Input::Network { online: false });
        }
        self.input(b, t, Input::Restored { outbox, cache });
        self.input(b, t, Input::Subscribe(QueryKey::Board(self.board)));
        self.input(b, t, Input::Subscribe(QueryKey::BoardSummary(self.board)));
        if b.is_multiple_of(2) {
            self.input(b, t, Input::Critical { key: QueryKey::Board(self.board), critical: true });
        }
        if self.browsers[b].leader.is_none() {
            let delay = self.rng.random_range(1..30);
            self.schedule(delay, Event::LockGrant { b });
        }
    }

    fn alive_tabs(&self, b: usize) -> Vec<usize> {
        (0..self.browsers[b].tabs.len()).filter(|&t| self.browsers[b].tabs[t].alive).collect()
    }

    fn grant_lock(&mut self, b: usize) {
        if self.browsers[b].leader.is_some_and(|l| self.browsers[b].tabs[l].alive) {
            return;
        }
        // Web Locks grant in request order: the oldest living tab.
        if let Some(&t) = self.alive_tabs(b).first() {
            self.become_leader(b, t);
        } else {
            self.browsers[b].leader = None;
        }
    }

    fn become_leader(&mut self, b: usize, t: usize) {
        if let Some(old) = self.browsers[b].leader.filter(|&l| l != t && self.browsers[b].tabs[l].alive) {
            self.log(|| format!("b{b}/t{old} loses the lock to t{t}"));
            self.input(b, old, Input::Role(Role::Follower));
        }
        self.browsers[b].leader = Some(t);
        self.log(|| format!("b{b}/t{t} is leader"));
        // The driver reads the shared outbox when it gets the lock.
        let outbox: Vec<PendingWrite> = self.browsers[b].idb_outbox.values().cloned().collect();
        self.input(b, t, Input::Restored { outbox, cache: Vec::new() });
        self.input(b, t, Input::Role(Role::Leader));
    }

    fn kill_tab(&mut self, b: usize, t: usize, graceful: bool) {
        if !self.browsers[b].tabs[t].alive {
            return;
        }
        self.log(|| format!("b{b}/t{t} {}", if graceful { "closed" } else { "crashed" }));
        if graceful {
            let tab = self.browsers[b].tabs[t].engine.tab();
            self.broadcast(b, t, TabMessage::Goodbye { tab });
        }
        self.browsers[b].tabs[t].alive = false;
        if let Some(sock) = self.browsers[b].tabs[t].socket.take() {
            self.server.sockets.remove(&sock);
        }
        if self.browsers[b].leader == Some(t) {
            self.browsers[b].leader = None;
            let delay = self.rng.random_range(20..30);
            self.schedule(delay, Event::LockGrant { b });
        }
    }

    /// Gives an input to a tab's engine and carries out what it asks.
    fn input(&mut self, b: usize, t: usize, input: Input) {
        if !self.browsers[b].tabs[t].alive {
            return;
        }
        if self.trace.is_some() {
            let shown = describe_input(&input);
            self.log(|| format!("b{b}/t{t} <- {shown}"));
        }
        let now = self.now;
        self.browsers[b].tabs[t].engine.handle_input(now, input);
        self.drain(b, t);
    }

    fn drain(&mut self, b: usize, t: usize) {
        loop {
            let out = self.browsers[b].tabs[t].engine.poll_output();
            if let Output::Timeout(deadline) = out {
                let tab = &mut self.browsers[b].tabs[t];
                if deadline != tab.deadline {
                    tab.deadline = deadline;
                    let delay = deadline.saturating_sub(self.now);
                    self.schedule(delay, Event::Timer { b, t });
                }
                return;
            }
            self.output(b, t, out);
            if !self.browsers[b].tabs[t].alive {
                return;
            }
        }
    }

    fn broadcast(&mut self, b: usize, from: usize, msg: TabMessage) {
        for t in self.alive_tabs(b) {
            if t != from {
                self.schedule(1, Event::ToTab { b, t, input: Input::Tab(msg.clone()) });
            }
        }
    }

    fn output(&mut self, b: usize, t: usize, out: Output) {
        if self.trace.is_some() && !matches!(out, Output::Notify(Notification::Query { .. })) {
            let shown = describe_output(&out);
            self.log(|| format!("b{b}/t{t} -> {shown}"));
        }
        let role = self.browsers[b].tabs[t].engine.role();
        let is_write = matches!(&out, Output::Http { request, .. } if request.method == "POST");
        if matches!(out, Output::OpenSocket | Output::Http { .. }) && !is_write {
            let browser = &self.browsers[b];
            // A crashed tab that was visible counts as visible until its heartbeat times out.
            let cfg = EngineConfig::default();
            let grace = cfg.hidden_grace_ms + cfg.peer_timeout_ms;
            let visible_now = browser.tabs.iter().any(|t| t.alive && t.visible);
            if let Some(since) = browser.hidden_since.filter(|&s| !visible_now && self.now > s + grace + 1_000)
                && browser.prefs.background == BackgroundMode::Pause {
                    self.fail(Invariant::HiddenTraffic, format!("b{b}/t{t}: no tab visible since {since} ms, yet {out:?}"));
                }
        }
        match out {
            Output::OpenSocket | Output::Http { .. } if role == Role::Follower => {
                let visible = self.browsers[b].tabs[t].visible;
                self.fail(Invariant::FollowerRequest, format!("b{b}/t{t} (follower, visible: {visible}) asked for network: {out:?}"));
            }
            Output::OpenSocket => {
                self.stats.http_requests += 1;
                let tab = &mut self.browsers[b].tabs[t];
                tab.socket_attempt += 1;
                let attempt = tab.socket_attempt;
                let lat = self.latency(b);
                if !self.browsers[b].online || self.browsers[b].partitioned || !self.server.up || self.server.refuse_upgrades {
                    self.schedule(lat, Event::ToTab { b, t, input: Input::SocketClosed { code: Some(1006), reason: "refused".into() } });
                } else {
                    self.schedule(lat, Event::SocketOpenAtServer { b, t, attempt });
                }
            }
            Output::CloseSocket { .. } => {
                let tab = &mut self.browsers[b].tabs[t];
                tab.socket_attempt += 1;
                if let Some(sock) = tab.socket.take() {
                    self.server.sockets.remove(&sock);
                }
            }
            Output::SendSocket(msg) => {
                if let Some(sock) = self.browsers[b].tabs[t].socket {
                    let lat = self.latency(b);
                    self.schedule(lat, Event::SocketMsgAtServer { sock, msg });
                }
            }
            Output::Http { id, request } => {
                self.stats.http_requests += 1;
                if request.path.starts_with("/api/changes") {
                    let now = self.now;
                    let polls = &mut self.browsers[b].long_polls;
                    polls.push(now);
                    polls.retain(|&at| at + 60_000 > now);
                    let n = polls.len();
                    self.stats.max_long_polls_per_min = self.stats.max_long_polls_per_min.max(n);
                    if n > LONG_POLL_BUDGET_PER_MIN {
                        self.fail(Invariant::PollBudget, format!("browser {b} made {n} long-polls in a minute"));
                    }
                }
                let lat = self.latency(b);
                let reachable = self.browsers[b].online && !self.browsers[b].partitioned;
                let lost_before = self.faults && self.rng.random_bool(self.browsers[b].loss / 2.0);
                if !reachable || lost_before {
                    self.schedule(lat, Event::ToTab { b, t, input: Input::Http { id, result: HttpResult::NetworkError("unreachable".into()) } });
                } else {
                    let epoch = self.server.epoch;
                    self.schedule(lat, Event::HttpAtServer { b, t, id, request, epoch });
                }
            }
            Output::CancelHttp { .. } => {}
            Output::Broadcast(msg) => {
                if let TabMessage::WriteSettled { write_id, settled } = &msg {
                    match settled {
                        Settled::Rebased { new_write_id } => {
                            self.superseded.insert(*write_id, *new_write_id);
                        }
                        Settled::Rejected { .. } | Settled::Overridden { .. } => {
                            self.surfaced.insert(*write_id);
                        }
                        Settled::Applied { .. } => {}
                    }
                }
                self.broadcast(b, t, msg);
            }
            Output::Persist(op) => {
                let browser = &mut self.browsers[b];
                match op {
                    PersistOp::OutboxPut { write } => {
                        self.written.entry(write.write_id).or_insert(b);
                        browser.idb_outbox.insert(write.write_id, write);
                    }
                    PersistOp::OutboxDelete { write_id } => {
                        browser.idb_outbox.remove(&write_id);
                    }
                    PersistOp::CachePut { key, data } => {
                        browser.idb_cache.insert(key, data);
                    }
                    PersistOp::CacheDelete { key } => {
                        browser.idb_cache.remove(&key);
                    }
                }
            }
            Output::Notify(n) => match n {
                Notification::Conflict { write_id, .. } | Notification::WriteRejected { write_id, .. } => {
                    self.surfaced.insert(write_id);
                }
                _ => {}
            },
            Output::ClaimLeadership => {
                self.log(|| format!("b{b}/t{t} claims the lock"));
                self.become_leader(b, t);
            }
            Output::Timeout(_) => unreachable!("handled by drain"),
        }
    }

    fn fail(&mut self, invariant: Invariant, detail: String) {
        if self.violation.is_none() {
            self.log(|| format!("VIOLATION {invariant:?}: {detail}"));
            self.violation = Some((invariant, detail));
        }
    }

    // ---- events --------------------------------------------------------------------------------------------

    fn handle(&mut self, event: Event) {
        match event {
            Event::Timer { b, t } => {
                let tab = &mut self.browsers[b].tabs[t];
                if !tab.alive || tab.deadline > self.now {
                    return; // superseded by a later deadline
                }
                tab.deadline = Millis::MAX;
                let now = self.now;
                tab.engine.handle_timeout(now);
                self.drain(b, t);
            }
            Event::ToTab { b, t, input } => self.input(b, t, input),
            Event::HttpAtServer { b, t, id, request, epoch } => self.server_http(b, t, id, request, epoch),
            Event::SocketOpenAtServer { b, t, attempt } => {
                let tab = &self.browsers[b].tabs[t];
                if !tab.alive || tab.socket_attempt != attempt {
                    return;
                }
                if !self.server.up || self.server.refuse_upgrades || self.browsers[b].partitioned {
                    let lat = self.latency(b);
                    self.schedule(lat, Event::ToTab { b, t, input: Input::SocketClosed { code: Some(1006), reason: "refused".into() } });
                    return;
                }
                let sock = self.server.next_id;
                self.server.next_id += 1;
                self.server.sockets.insert(sock, ServerSocket { b, t, subs: BTreeMap::new() });
                self.browsers[b].tabs[t].socket = Some(sock);
                self.to_socket(sock, None);
                let hello = ServerMessage::Hello { log_id: self.server.log_id, heartbeat_ms: 25_000 };
                self.to_socket(sock, Some(hello));
            }
            Event::SocketMsgAtServer { sock, msg } => self.server_socket_message(sock, msg),
            Event::LongPollTimeout { park } => {
                if let Some(p) = self.server.parked.remove(&park) {
                    let msg = ServerMessage::Changes { stream: p.stream, changes: Vec::new() };
                    self.respond(p.b, p.t, p.id, 200, serde_json::to_string(&msg).expect("json"));
                }
            }
            Event::UserWrite { b } => {
                if self.faults {
                    self.user_write(b);
                    let gap = self.rng.random_range(300..4_000);
                    self.schedule(gap, Event::UserWrite { b });
                }
            }
            Event::UserResolve { b } => {
                self.user_resolve(b);
                self.schedule(1_500, Event::UserResolve { b });
            }
            Event::Fault => {
                if self.faults {
                    self.fault();
                    let gap = self.rng.random_range(1_000..6_000);
                    self.schedule(gap, Event::Fault);
                }
            }
            Event::Recover { what } => self.recover(what),
            Event::LockGrant { b } => self.grant_lock(b),
            Event::EndFaults => self.end_faults(),
        }
    }

    fn user_write(&mut self, b: usize) {
        let candidates: Vec<usize> = self.alive_tabs(b).into_iter().filter(|&t| self.browsers[b].tabs[t].visible).collect();
        if candidates.is_empty() {
            return;
        }
        let t = candidates[self.rng.random_range(0..candidates.len())];
        // Now and then the user hovers the link to the boards list (a prefetch) or presses "retry now".
        match self.rng.random_range(0..16) {
            0 | 1 => {
                self.log(|| format!("b{b}/t{t} user hovers the boards link"));
                self.input(b, t, Input::Prefetch(QueryKey::Boards));
                return;
            }
            2 => {
                self.log(|| format!("b{b}/t{t} user presses retry now"));
                self.input(b, t, Input::RetryNow);
                return;
            }
            _ => {}
        }
        let Some(view) = self.browsers[b].tabs[t].engine.board(self.board) else { return };
        if view.columns.is_empty() {
            return;
        }
        let op = match self.rng.random_range(0..10) {
            0..=3 if !view.cards.is_empty() => {
                let card = &view.cards[self.rng.random_range(0..view.cards.len())];
                let body = if self.rng.random_bool(0.5) {
                    UpdateCard { title: Some(format!("title {}", self.rng.random_range(0..1000))), ..Default::default() }
                } else {
                    UpdateCard { description: Some(format!("desc {}", self.rng.random_range(0..1000))), ..Default::default() }
                };
                WriteOp::UpdateCard { id: card.id, body }
            }
            4..=6 if !view.cards.is_empty() => {
                let card = view.cards[self.rng.random_range(0..view.cards.len())].clone();
                let column = view.columns[self.rng.random_range(0..view.columns.len())].id;
                let in_column: Vec<Uuid> = view.cards.iter().filter(|c| c.column_id == column && c.id != card.id).map(|c| c.id).collect();
                let after = if in_column.is_empty() || self.rng.random_bool(0.3) { None } else { Some(in_column[self.rng.random_range(0..in_column.len())]) };
                WriteOp::MoveCard { id: card.id, body: MoveCard { column_id: column, after_card_id: after, base_version: None } }
            }
            _ => {
                let column = view.columns[self.rng.random_range(0..view.columns.len())].id;
                let body = CreateCard { id: None, title: format!("new {}", self.rng.random_range(0..1000)), description: String::new() };
                WriteOp::CreateCard { column_id: column, body }
            }
        };
        self.stats.writes_accepted += 1;
        let policy = [ConflictPolicy::RebaseOrAsk, ConflictPolicy::RebaseOrServerWins, ConflictPolicy::ServerWins][self.rng.random_range(0..3)];
        self.log(|| format!("b{b}/t{t} user writes {op:?}"));
        self.input(b, t, Input::Write { op, priority: Priority::UserVisible, policy });
    }

    /// The user answers conflicts that ask for a decision.
    fn user_resolve(&mut self, b: usize) {
        for t in self.alive_tabs(b) {
            if !self.browsers[b].tabs[t].visible {
                continue;
            }
            let conflicts: Vec<Uuid> = self.browsers[b].tabs[t].engine.conflicts().iter().map(|w| w.write_id).collect();
            for write_id in conflicts {
                let keep_mine = self.rng.random_bool(0.5);
                self.input(b, t, Input::ResolveConflict { write_id, keep_mine });
            }
            return;
        }
    }

    fn fault(&mut self) {
        let b = self.rng.random_range(0..self.browsers.len());
        let alive = self.alive_tabs(b);
        let t = alive[self.rng.random_range(0..alive.len())];
        match self.rng.random_range(0..100) {
            0..=29 => {
                let visible = !self.browsers[b].tabs[t].visible;
                self.browsers[b].tabs[t].visible = visible;
                self.input(b, t, Input::Visibility { visible });
            }
            30..=44 => {
                if self.browsers[b].online {
                    self.set_online(b, false);
                    let d = self.rng.random_range(500..10_000);
                    self.schedule(d, Event::Recover { what: Recover::Online(b) });
                }
            }
            45..=52 => {
                if !self.browsers[b].partitioned {
                    self.log(|| format!("browser {b} partitioned from the server"));
                    self.browsers[b].partitioned = true;
                    self.drop_sockets(|s| s.b == b);
                    let d = self.rng.random_range(500..8_000);
                    self.schedule(d, Event::Recover { what: Recover::Unpartition(b) });
                }
            }
            53..=60 => {
                if self.server.up {
                    self.log(|| "server restarts".into());
                    self.server.up = false;
                    self.server.epoch += 1;
                    self.drop_sockets(|_| true);
                    let parked: Vec<Parked> = std::mem::take(&mut self.server.parked).into_values().collect();
                    for p in parked {
                        let lat = self.latency(p.b);
                        self.schedule(lat, Event::ToTab { b: p.b, t: p.t, input: Input::Http { id: p.id, result: HttpResult::NetworkError("reset".into()) } });
                    }
                    let d = self.rng.random_range(200..3_000);
                    self.schedule(d, Event::Recover { what: Recover::ServerUp });
                }
            }
            61..=66 => {
                if !self.server.refuse_upgrades {
                    self.log(|| "server refuses WebSocket upgrades".into());
                    self.server.refuse_upgrades = true;
                    self.drop_sockets(|_| true);
                    let d = self.rng.random_range(5_000..20_000);
                    self.schedule(d, Event::Recover { what: Recover::AllowUpgrades });
                }
            }
            67..=74 => {
                self.kill_tab(b, t, false);
                if self.alive_tabs(b).is_empty() {
                    self.open_tab(b);
                }
            }
            75..=82 => {
                self.kill_tab(b, t, true);
                if self.alive_tabs(b).is_empty() {
                    self.open_tab(b);
                }
            }
            83..=92 => {
                if self.browsers[b].tabs.len() < 8 {
                    self.open_tab(b);
                }
            }
            _ => {
                let effective_type = [EffectiveType::FourG, EffectiveType::ThreeG, EffectiveType::TwoG, EffectiveType::Slow2g][self.rng.random_range(0..4)];
                let link = LinkQuality { effective_type, rtt_ms: None, save_data: self.rng.random_bool(0.2) };
                self.browsers[b].link = link;
                for t in self.alive_tabs(b) {
                    self.input(b, t, Input::Link(link));
                }
            }
        }
    }

    fn set_online(&mut self, b: usize, online: bool) {
        self.log(|| format!("browser {b} goes {}", if online { "online" } else { "offline" }));
        self.browsers[b].online = online;
        for t in self.alive_tabs(b) {
            self.input(b, t, Input::Network { online });
        }
    }

    fn recover(&mut self, what: Recover) {
        match what {
            Recover::Online(b) => {
                if !self.browsers[b].online {
                    self.set_online(b, true);
                }
            }
            Recover::Unpartition(b) => {
                self.log(|| format!("browser {b} reaches the server again"));
                self.browsers[b].partitioned = false;
            }
            Recover::ServerUp => {
                self.log(|| "server is up".into());
                self.server.up = true;
            }
            Recover::AllowUpgrades => {
                self.log(|| "server accepts WebSocket upgrades again".into());
                self.server.refuse_upgrades = false;
            }
        }
    }

    fn end_faults(&mut self) {
        self.log(|| "faults stop; every browser is online with a visible tab".into());
        self.faults = false;
        self.server.up = true;
        self.server.refuse_upgrades = false;
        for b in 0..self.browsers.len() {
            self.browsers[b].partitioned = false;
            if !self.browsers[b].online {
                self.set_online(b, true);
            }
            if !self.alive_tabs(b).iter().any(|&t| self.browsers[b].tabs[t].visible) {
                let t = self.alive_tabs(b)[0];
                self.browsers[b].tabs[t].visible = true;
                self.input(b, t, Input::Visibility { visible: true });
            }
        }
    }

    fn drop_sockets(&mut self, which: impl Fn(&ServerSocket) -> bool) {
        let gone: Vec<u64> = self.server.sockets.iter().filter(|(_, s)| which(s)).map(|(id, _)| *id).collect();
        for sock in gone {
            let s = self.server.sockets.remove(&sock).expect("listed");
            let worst = self.browsers[s.b].latency.1;
            let tab = &mut self.browsers[s.b].tabs[s.t];
            if tab.socket == Some(sock) {
                tab.socket = None;
                let at = (self.now + worst).max(tab.socket_fifo);
                tab.socket_fifo = at;
                let delay = at - self.now;
                self.schedule(delay, Event::ToTab { b: s.b, t: s.t, input: Input::SocketClosed { code: Some(1006), reason: "dropped".into() } });
            }
        }
    }

    fn track_visibility(&mut self) {
        for b in 0..self.browsers.len() {
            let any_visible = self.browsers[b].tabs.iter().any(|t| t.alive && t.visible);
            let browser = &mut self.browsers[b];
            if any_visible {
                browser.hidden_since = None;
            } else if browser.hidden_since.is_none() {
                browser.hidden_since = Some(self.now);
            }
        }
    }

    fn check_sockets(&mut self) {
        for b in 0..self.browsers.len() {
            let n = self.server.sockets.values().filter(|s| s.b == b).count();
            if n > 1 {
                let since = *self.browsers[b].two_sockets_since.get_or_insert(self.now);
                if self.now > since + HANDOVER_MS {
                    self.fail(Invariant::TwoSockets, format!("browser {b} has held {n} sockets since {since} ms"));
                }
            } else {
                self.browsers[b].two_sockets_since = None;
            }
        }
    }

    // ---- the server ----------------------------------------------------------------------------------------

    /// Delivers a socket message (or the open event, for `None`) to the socket's tab, in order.
    fn to_socket(&mut self, sock: u64, msg: Option<ServerMessage>) {
        let Some(s) = self.server.sockets.get(&sock) else { return };
        let (b, t) = (s.b, s.t);
        let lat = self.latency(b);
        let tab = &mut self.browsers[b].tabs[t];
        let at = (self.now + lat).max(tab.socket_fifo);
        tab.socket_fifo = at;
        let input = match msg {
            None => Input::SocketOpened,
            Some(m) => Input::SocketMessage(serde_json::to_string(&m).expect("json")),
        };
        let delay = at - self.now;
        self.schedule(delay, Event::ToTab { b, t, input });
    }

    fn respond(&mut self, b: usize, t: usize, id: u64, status: u16, body: String) {
        let lost_after = self.faults && self.rng.random_bool(self.browsers[b].loss / 2.0);
        let lat = self.latency(b);
        let result = if lost_after || !self.browsers[b].online || self.browsers[b].partitioned {
            HttpResult::NetworkError("connection reset".into())
        } else {
            HttpResult::Response { status, body, etag: None }
        };
        self.schedule(lat, Event::ToTab { b, t, input: Input::Http { id, result } });
    }

    fn server_http(&mut self, b: usize, t: usize, id: u64, request: HttpRequest, epoch: u64) {
        if !self.server.up || epoch != self.server.epoch {
            let lat = self.latency(b);
            self.schedule(lat, Event::ToTab { b, t, input: Input::Http { id, result: HttpResult::NetworkError("refused".into()) } });
            return;
        }
        let log_id = self.server.log_id;
        let conn = &mut self.server.conn;
        let path = request.path.clone();
        let reply: Result<(u16, String), ()> = if request.method == "POST" && path == "/api/writes" {
            let batch: WriteBatch = serde_json::from_str(request.body.as_deref().unwrap_or("")).expect("the engine sends valid batches");
            let mut results = Vec::new();
            let mut changes: Vec<Change> = Vec::new();
            for w in batch.writes {
                let (outcome, rec) = writes::execute_locked(conn, Some(w.write_id), w.op).expect("sqlite");
                changes.extend(rec.changes().iter().cloned());
                results.push(WriteOutcome { write_id: w.write_id, status: outcome.status.as_u16(), body: outcome.body });
            }
            self.publish(&changes);
            Ok((200, serde_json::to_string(&WriteBatchResult { results }).expect("json")))
        } else if let Some(query) = path.strip_prefix("/api/changes?") {
            let q = parse_query(query);
            let stream: StreamId = q["stream"].parse().expect("stream");
            let since: Cursor = q["since"].parse().expect("since");
            let wait: u64 = q.get("wait").map(|w| w.parse().expect("wait")).unwrap_or(0);
            let client_log = q.get("log_id").map(|l| Uuid::parse_str(l).expect("log id"));
            let read = read_log(conn, log_id, stream, since, client_log, 500).expect("sqlite");
            match read {
                LogRead::Changes(changes) if changes.is_empty() && wait > 0 => {
                    let park = self.server.next_id;
                    self.server.next_id += 1;
                    self.server.parked.insert(park, Parked { b, t, id, stream, since, log_id: client_log, epoch });
                    self.schedule(wait * 1000, Event::LongPollTimeout { park });
                    return;
                }
                LogRead::Changes(changes) => Ok((200, serde_json::to_string(&ServerMessage::Changes { stream, changes }).expect("json"))),
                LogRead::Reset(reason) => Ok((200, serde_json::to_string(&ServerMessage::Reset { stream, reason }).expect("json"))),
            }
        } else if let Some(rest) = path.strip_prefix("/api/boards/") {
            let (id_part, summary) = match rest.strip_suffix("/summary") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let board = Uuid::parse_str(id_part).expect("board id");
            let tx = conn.transaction().expect("sqlite");
            let result = if summary {
                store::board_summary(&tx, board).map(|s| serde_json::to_string(&s).expect("json"))
            } else {
                store::board_snapshot(&tx, board, log_id).map(|s| serde_json::to_string(&s).expect("json"))
            };
            drop(tx);
            match result {
                Ok(body) => Ok((200, body)),
                Err(store::StoreError::NotFound(m)) => Ok((404, serde_json::json!({"error": "not_found", "message": m}).to_string())),
                Err(_) => Err(()),
            }
        } else if path == "/api/boards" {
            let tx = conn.transaction().expect("sqlite");
            let list = store::list_boards(&tx, log_id).expect("sqlite");
            Ok((200, serde_json::to_string(&list).expect("json")))
        } else {
            Ok((404, "{}".into()))
        };
        let (status, body) = reply.unwrap_or((500, "{}".into()));
        self.respond(b, t, id, status, body);
    }

    /// Fans committed changes out to subscribed sockets and parked long-polls, in commit order.
    fn publish(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let socks: Vec<u64> = self.server.sockets.keys().copied().collect();
        for sock in socks {
            let mut messages = Vec::new();
            if let Some(s) = self.server.sockets.get_mut(&sock) {
                for (stream, cursor) in s.subs.iter_mut() {
                    let fresh: Vec<Change> = changes.iter().filter(|c| c.stream == *stream && c.cursor > *cursor).cloned().collect();
                    if let Some(last) = fresh.last() {
                        *cursor = last.cursor;
                        messages.push(ServerMessage::Changes { stream: *stream, changes: fresh });
                    }
                }
            }
            for m in messages {
                self.to_socket(sock, Some(m));
            }
        }
        let streams: BTreeSet<StreamId> = changes.iter().map(|c| c.stream).collect();
        let woken: Vec<u64> = self.server.parked.iter().filter(|(_, p)| streams.contains(&p.stream)).map(|(k, _)| *k).collect();
        for park in woken {
            let p = self.server.parked.remove(&park).expect("listed");
            if p.epoch != self.server.epoch {
                continue;
            }
            let read = read_log(&self.server.conn, self.server.log_id, p.stream, p.since, p.log_id, 500).expect("sqlite");
            let msg = match read {
                LogRead::Changes(changes) => ServerMessage::Changes { stream: p.stream, changes },
                LogRead::Reset(reason) => ServerMessage::Reset { stream: p.stream, reason },
            };
            self.respond(p.b, p.t, p.id, 200, serde_json::to_string(&msg).expect("json"));
        }
    }

    fn server_socket_message(&mut self, sock: u64, msg: ClientMessage) {
        if !self.server.sockets.contains_key(&sock) {
            return;
        }
        match msg {
            ClientMessage::Ping { nonce } => self.to_socket(sock, Some(ServerMessage::Pong { nonce })),
            ClientMessage::Unsubscribe { streams } => {
                if let Some(s) = self.server.sockets.get_mut(&sock) {
                    for stream in streams {
                        s.subs.remove(&stream);
                    }
                }
            }
            ClientMessage::Subscribe { streams, log_id } => {
                for StreamCursor { stream, since } in streams {
                    let mut cursor = since;
                    loop {
                        let read = read_log(&self.server.conn, self.server.log_id, stream, cursor, log_id, 500).expect("sqlite");
                        match read {
                            LogRead::Reset(reason) => {
                                if let Some(s) = self.server.sockets.get_mut(&sock) {
                                    s.subs.remove(&stream);
                                }
                                self.to_socket(sock, Some(ServerMessage::Reset { stream, reason }));
                                break;
                            }
                            LogRead::Changes(changes) if changes.is_empty() => {
                                if let Some(s) = self.server.sockets.get_mut(&sock) {
                                    s.subs.insert(stream, cursor);
                                }
                                self.to_socket(sock, Some(ServerMessage::Synced { stream, cursor }));
                                break;
                            }
                            LogRead::Changes(changes) => {
                                cursor = changes.last().expect("non-empty").cursor;
                                self.to_socket(sock, Some(ServerMessage::Changes { stream, changes }));
                            }
                        }
                    }
                }
            }
        }
    }

    // ---- the end -------------------------------------------------------------------------------------------

    fn check_end(&mut self) {
        let tx = self.server.conn.transaction().expect("sqlite");
        let truth = store::board_snapshot(&tx, self.board, self.server.log_id).expect("board exists");
        let applied: BTreeSet<Uuid> = {
            let mut stmt = tx.prepare("SELECT write_id FROM writes WHERE status BETWEEN 200 AND 299").expect("sqlite");
            stmt.query_map([], |r| r.get::<_, String>(0)).expect("sqlite").map(|s| Uuid::parse_str(&s.expect("row")).expect("uuid")).collect()
        };
        drop(tx);
        self.stats.writes_applied = applied.len();
        self.stats.surfaced = self.surfaced.len();
        // Every write that entered an outbox ended well: applied, surfaced, or replaced by one that did.
        let written: Vec<(Uuid, usize)> = self.written.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, b) in written {
            let mut current = id;
            let mut hops = 0;
            while let Some(next) = self.superseded.get(&current) {
                current = *next;
                hops += 1;
                if hops > 1000 {
                    break;
                }
            }
            if !applied.contains(&current) && !self.surfaced.contains(&current) && !self.surfaced.contains(&id) {
                let pending_somewhere = self.browsers[b].idb_outbox.contains_key(&current);
                self.fail(
                    Invariant::WriteLost,
                    format!("write {id} (now {current}) of browser {b} was neither applied nor surfaced (still queued: {pending_somewhere})"),
                );
                return;
            }
        }
        for b in 0..self.browsers.len() {
            for t in self.alive_tabs(b) {
                let engine = &self.browsers[b].tabs[t].engine;
                let pending = engine.pending().len();
                let seen = engine.board_server_state(self.board).cloned();
                let problem = match seen {
                    None => Some("has no board data".to_owned()),
                    Some(seen) if !same_board(&seen, &truth) => Some(format!("sees {}\n  server {}", show(&seen), show(&truth))),
                    Some(_) if pending > 0 => {
                        let ids: Vec<String> = engine.pending().iter().map(|w| format!("{} applied={}", w.write_id, applied.contains(&w.write_id))).collect();
                        Some(format!("still has {pending} pending writes: {}", ids.join(", ")))
                    }
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    let role = engine.role();
                    let status = engine.status().clone();
                    self.fail(Invariant::NotConverged, format!("b{b}/t{t} ({role:?}, {status:?}) {problem}"));
                    return;
                }
            }
        }
    }
}

fn same_board(a: &BoardSnapshot, b: &BoardSnapshot) -> bool {
    a.board == b.board && a.columns == b.columns && a.cards == b.cards
}

fn show(s: &BoardSnapshot) -> String {
    let cards: Vec<String> = s.cards.iter().map(|c| format!("{}:{}@v{}", &c.id.to_string()[..4], c.title, c.version)).collect();
    format!("cursor {} [{}]", s.cursor, cards.join(", "))
}

fn parse_query(q: &str) -> BTreeMap<&str, &str> {
    q.split('&').filter_map(|kv| kv.split_once('=')).collect()
}

fn describe_input(input: &Input) -> String {
    match input {
        Input::SocketMessage(text) => format!("socket {}", truncate(text, 160)),
        Input::Http { id, result: HttpResult::Response { status, body, .. } } => format!("http #{id} {status} {}", truncate(body, 120)),
        Input::Http { id, result: HttpResult::NetworkError(e) } => format!("http #{id} failed: {e}"),
        Input::Tab(TabMessage::Presence { .. }) => "presence".into(),
        other => truncate(&format!("{other:?}"), 200),
    }
}

fn describe_output(out: &Output) -> String {
    match out {
        Output::Http { id, request } => format!("http #{id} {} {}", request.method, request.path),
        Output::Broadcast(TabMessage::Presence { visible, leader, .. }) => format!("presence visible={visible} leader={leader}"),
        other => truncate(&format!("{other:?}"), 200),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &s[..cut])
    }
}
