//! Deterministic simulation of syncline: B browsers × T tabs, each tab running the real [`Engine`], against the
//! real server store (SQLite in memory, the same write and change-log code as the server), over a simulated
//! network with delays, loss, partitions and offline periods, with tabs hidden, crashed, closed and opened,
//! the server restarted and WebSocket upgrades refused — all from one seed.
//!
//! Checked invariants (see [`Invariant`]): every write the UI accepted is applied on the server or surfaced to
//! the user; after the faults stop every visible tab converges to the server's state within [`SETTLE_MS`] of
//! simulated time, and every hidden one within [`SHOWN_MS`] of being shown; at most one live socket per browser except during a bounded handover; followers (hidden
//! or not) make no network requests; the long-poll rate stays within its budget; no stored outbox entry
//! outlives its write; a card deleted in a tab's view never comes back there; every tab shows its leader's
//! connection state; the app long-polls only when the WebSocket itself was refused; a tab that is shown
//! while its leader is frozen takes over, and none takes over from a leader that is visible, awake and not
//! busy; no user's edit overwrites a change to the same field made after what that user saw when they began it
//! (half the card edits are made in an editor that stays open a few seconds).
//!
//! The model is as hostile as a browser: IndexedDB requests complete after a random delay, in order per tab
//! but not across tabs, so a put may land after BroadcastChannel messages sent later (and after another
//! tab's delete); the requests of a crashed tab are lost; hidden tabs are frozen (timers and messages held,
//! the Web Lock kept, the socket closed) and later resumed or discarded; a page just shown may run a long task
//! (what arrives meanwhile waits, then runs in any order with a timer that came due); the tabs' wall clocks
//! differ by a few ms; the server may be down for long stretches and forgets write ids after
//! [`WRITE_ID_TTL_MS`].
//!
//! [`InjectedBug`]s prove the invariants bite: `run_with` switches one on in every engine, and the test suite
//! checks that each is caught within a few seeds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use syncline_engine::{
    BackgroundMode, ConflictPolicy, ConnectionStatus, EffectiveType, EngineConfig, HttpRequest, HttpResult,
    InjectedBug, LinkQuality, Load, Millis, Preferences, Priority, Role, Seen, Settled,
};
use syncline_kanban::{
    AddMember, BoardSnapshot, ClientMessage, CreateBoard, CreateCard, CreateColumn, Cursor, Kanban, KanbanViews,
    MoveCard, QueryData, QueryKey, Rename, Role as BoardRole, SetRole, UpdateCard, UserId, WriteOp,
};
use syncline_server::access;
use syncline_server::feed::{Retention, prune};
use syncline_server::session;
use syncline_server::store;
use syncline_server::writes::{self, WriteContext};
use uuid::Uuid;

mod server;

use server::{Server, ServerSocket};

type Engine = syncline_engine::Engine<Kanban>;
type Input = syncline_engine::Input<Kanban>;
type Output = syncline_engine::Output<Kanban>;
type TabMessage = syncline_engine::TabMessage<Kanban>;
type PendingWrite = syncline_engine::PendingWrite<Kanban>;
type PersistOp = syncline_engine::PersistOp<Kanban>;
type Notification = syncline_engine::Notification<Kanban>;

/// Faults and user writes happen during this much simulated time.
pub const FAULT_MS: Millis = 40_000;
/// A tab shown at the end must show the server's data within this bound (a hidden follower applies what it
/// held; an asleep one wakes and gets the leader's copy).
pub const SHOWN_MS: Millis = 50;
/// ... and have no write pending that settled while it slept within this one: it reads the stored outbox when
/// it wakes (IndexedDB, up to 150 ms in this model, queued behind the tab's earlier requests).
pub const SHOWN_OUTBOX_MS: Millis = 1_000;

/// After the faults stop, every tab must have converged within this bound.
pub const SETTLE_MS: Millis = 30_000;
/// Two live sockets in one browser are tolerated this long (a leader handover).
pub const HANDOVER_MS: Millis = 3_000;
/// Long-polls one browser may make in any 60 s window.
pub const LONG_POLL_BUDGET_PER_MIN: usize = 150;
/// The wall clock (Unix ms) at simulated time 0: write ids carry it, the server judges them by it.
pub const SIM_EPOCH_MS: u64 = 1_780_000_000_000;
/// The simulated server remembers write ids this long (the real default is 24 h; shorter here, so that writes
/// held longer than it — and stored entries that outlived their write — meet a server that forgot them).
pub const WRITE_ID_TTL_MS: u64 = 25_000;
/// A follower shows its leader's connection state within this bound.
pub const STATUS_BOUND_MS: Millis = 1_000;
/// Long-polling without the WebSocket having been refused is tolerated this long (a probe's round trip).
pub const POLLING_GRACE_MS: Millis = 2_000;
/// A change committed through any instance has been sent to every socket listening to its stream within this.
pub const FRESH_BOUND_MS: Millis = 1_500;
/// The wall clocks of two tabs differ by up to this much.
pub const MAX_TAB_CLOCK_SKEW_MS: u64 = 4;
/// A page shown renders what it held back: half the time a long task of up to this long, which delays
/// everything else the tab would run (`Tab::busy_until`).
pub const MAX_SHOWN_TASK_MS: Millis = 150;
/// A leader visible, awake and not busy for this long answers any tab (`Invariant::NeedlessTakeover`).
pub const NEEDLESS_TAKEOVER_MS: Millis = 20;
/// A tab shown while its leader is frozen has taken over within this bound.
pub const SHOWN_TAKEOVER_MS: Millis = 150;

/// The invariants the simulation checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// A write the UI accepted was neither applied on the server nor surfaced to the user.
    WriteLost,
    /// The server applied one write id more than once (it had forgotten it, and it was sent again).
    WriteAppliedTwice,
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
    /// A stored outbox entry was (re)written after its write had settled: it would outlive it.
    OutboxOutlivesWrite,
    /// At the end, a browser's stored outbox still holds entries no tab has pending.
    OutboxLeftover,
    /// A card that was deleted in a tab's copy came back in that tab.
    DeletedReappeared,
    /// A follower (awake: not a hidden one that stopped listening) showed another connection state than its leader
    /// for longer than [`STATUS_BOUND_MS`].
    StatusMismatch,
    /// The leader long-polled ("the WebSocket is unavailable") though no WebSocket was refused by a server that
    /// answered since it was last live.
    PollingWithoutCause,
    /// At the end, a tab still counts as asleep (and keeps fresh what it wanted, if it leads) a tab that is gone.
    GoneTabKept,
    /// A tab was shown while its leader was frozen, and the frozen tab still held the lock after
    /// [`SHOWN_TAKEOVER_MS`].
    FrozenLeaderKept,
    /// A tab took the lock from a leader that was visible, awake and not busy (and had been for a while): it
    /// would have answered — the browser's one connection was dropped and opened again for nothing.
    NeedlessTakeover,
    /// The feed sent a socket changes of a stream that do not continue what it sent before (a gap).
    FeedGap,
    /// The feed told a socket a stream is synced at a cursor behind live changes its session had been handed.
    SyncedBehind,
    /// A change of the board committed after a user's removal from it reached that user (socket or long-poll).
    RevokedDelivered,
    /// A write of a user not allowed to make it (removed, or a viewer) was applied.
    UnauthorizedWriteApplied,
    /// After faults stop, a removed user's tab still holds the board's data.
    RevokedDataKept,
    /// A socket listening to the board was not sent a change [`FRESH_BOUND_MS`] after it committed (while the
    /// socket's instance and the server were up): a change stuck between instances.
    Stale,
    /// A user's save overwrote a field of a card or a column's or the board's title that another user changed after the version
    /// this user saw when they began the edit (an editor opened or a title focused, or the write made), without
    /// this user choosing "keep mine".
    LostUpdate,
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
    /// Server instances sharing the store.
    pub instances: usize,
    pub events: u64,
    pub writes_accepted: usize,
    pub writes_applied: usize,
    pub surfaced: usize,
    pub http_requests: u64,
    pub max_long_polls_per_min: usize,
}

#[derive(Debug)]
pub(crate) enum Event {
    Timer {
        b: usize,
        t: usize,
    },
    ToTab {
        b: usize,
        t: usize,
        input: Input,
    },
    /// The socket of this attempt could not be opened (a driver ignores the close of a socket it replaced).
    SocketRefused {
        b: usize,
        t: usize,
        attempt: u64,
    },
    /// An IndexedDB request of a tab completes.
    IdbDone {
        b: usize,
        t: usize,
        op: PersistOp,
    },
    /// A feed session's log read comes back.
    LogRead {
        sock: u64,
        stream: syncline_kanban::StreamName,
        since: syncline_kanban::Cursor,
        read: syncline_server::feed::LogRead,
    },
    /// An IndexedDB read of a tab completes.
    IdbLoad {
        b: usize,
        t: usize,
        what: Load<Kanban>,
    },
    /// A frozen tab is resumed (or discarded by the browser).
    Unfreeze {
        b: usize,
        t: usize,
        discard: bool,
    },
    /// A tab's long task ends: what waited behind it runs.
    BusyDone {
        b: usize,
        t: usize,
    },
    /// Has the tab shown at `shown_at` taken over from its frozen leader?
    CheckShownTakeover {
        b: usize,
        t: usize,
        shown_at: Millis,
    },
    /// The server forgets write ids older than its TTL.
    Prune,
    /// A user saves the card editor they opened earlier (`seen`: the card as they saw it then).
    UserSaves {
        b: usize,
        t: usize,
        op: WriteOp,
        policy: ConflictPolicy,
        seen: Seen,
    },
    HttpAtServer {
        b: usize,
        t: usize,
        id: u64,
        request: HttpRequest,
        epoch: u64,
    },
    SocketOpenAtServer {
        b: usize,
        t: usize,
        attempt: u64,
    },
    SocketMsgAtServer {
        sock: u64,
        msg: ClientMessage,
    },
    LongPollTimeout {
        park: u64,
    },
    /// A commit hint reaches an instance (of the given process epoch).
    TailWake {
        inst: usize,
        epoch: u64,
    },
    /// An instance's tail interval.
    TailTick {
        inst: usize,
    },
    /// An instance's tail read comes back.
    TailRead {
        inst: usize,
        epoch: u64,
        heads: Vec<(syncline_kanban::StreamName, syncline_kanban::Cursor)>,
        changes: Vec<syncline_kanban::Change>,
    },
    UserWrite {
        b: usize,
    },
    UserResolve {
        b: usize,
    },
    Fault,
    Recover {
        what: Recover,
    },
    LockGrant {
        b: usize,
    },
    EndFaults,
}

#[derive(Debug, Clone, Copy)]
enum Recover {
    Online(usize),
    Unpartition(usize),
    ServerUp,
    AllowUpgrades,
    InstanceUp(usize),
    ListenerBack(usize),
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
    /// A tab's IndexedDB requests complete in the order it made them.
    idb_fifo: Millis,
    /// Frozen by the browser: inputs (and the timer) wait in `held` until it is resumed.
    frozen: bool,
    /// Its BroadcastChannel is open (`Output::ListenToTabs`): a closed one receives nothing, not even what was
    /// already on its way.
    listening: bool,
    held: Vec<Input>,
    /// Cards seen in this tab's copy of the board, and those that left it (deleted).
    cards_seen: BTreeSet<Uuid>,
    cards_gone: BTreeSet<Uuid>,
    /// Since when this follower's status differs from its leader's.
    status_differs_since: Option<Millis>,
    /// Since when this leader has been long-polling.
    polling_since: Option<Millis>,
    /// The page's main thread runs a long task until then (rendering what it held back when it was shown):
    /// what arrives meanwhile — messages, socket frames, IndexedDB results — waits in `queued`, and a timer due
    /// meanwhile (`timer_waits`) runs after it, in any order with them (browsers order tasks of different
    /// sources as they please).
    busy_until: Millis,
    queued: Vec<Input>,
    timer_waits: bool,
    /// When its engine last heard it was shown or hidden.
    visibility_since: Millis,
}

struct Browser {
    tabs: Vec<Tab>,
    online: bool,
    partitioned: bool,
    latency: (Millis, Millis),
    loss: f64,
    prefs: Preferences,
    /// The engine settings of its tabs (a short hidden grace in some browsers, so that what happens after it is
    /// exercised often).
    cfg: EngineConfig,
    link: LinkQuality,
    idb_outbox: BTreeMap<Uuid, PendingWrite>,
    idb_cache: BTreeMap<QueryKey, QueryData>,
    /// Outbox deletes requested and not yet landed (or aborted), per write.
    idb_deletes_in_flight: BTreeMap<Uuid, u32>,
    leader: Option<usize>,
    /// When the leader got the lock.
    leader_since: Millis,
    long_polls: Vec<Millis>,
    two_sockets_since: Option<Millis>,
    /// Since when no tab of this browser is visible.
    hidden_since: Option<Millis>,
    /// Last time a server that was up (and reachable) refused this browser's WebSocket.
    ws_refused_at: Option<Millis>,
    /// Last time this browser's leader was live.
    live_at: Millis,
    /// Tab locks waited for (`Output::WatchTab`): (watching tab, watched tab). A living tab holds its lock
    /// (`Output::HoldTabLock`: from its start, so `alive` is the lock); when it dies the watchers are granted it.
    tab_watches: Vec<(usize, usize)>,
}

pub(crate) struct World {
    now: Millis,
    seq: u64,
    rng: SmallRng,
    events: BinaryHeap<Reverse<Queued>>,
    server: Server,
    browsers: Vec<Browser>,
    trace: Option<Vec<String>>,
    board: Uuid,
    faults: bool,
    /// Every write id stored in a browser's outbox, with the browser.
    written: BTreeMap<Uuid, usize>,
    superseded: BTreeMap<Uuid, Uuid>,
    surfaced: BTreeSet<Uuid>,
    /// Writes some tab settled (told every tab they ended).
    settled: BTreeSet<Uuid>,
    /// How many times the server applied each write id.
    applied: BTreeMap<Uuid, u32>,
    /// Every edit users made, by its key (`edit_keys`: the unique value it sets, or for a move the browser and
    /// where it puts the card): the entity's version its user saw when they began, and whether they chose "keep
    /// mine" over someone else's change.
    edits: BTreeMap<String, Edit>,
    edit_seq: u64,
    /// The last change to each field on the server: the entity's version then, the browser that made it, and the
    /// value it set (a write that sets a field to the value it has changes nothing: moving a card where it is).
    field_changed: BTreeMap<(Uuid, &'static str), (u64, usize, serde_json::Value)>,
    stats: RunStats,
    violation: Option<(Invariant, String)>,
    next_tab_seed: u64,
    bug: Option<Bug>,
    /// The user of each browser (browser 0's owns the board).
    users: Vec<UserId>,
    /// Each user's role on the board, as the owner set it (removed users are absent).
    roles: BTreeMap<UserId, BoardRole>,
    /// The board's stream name.
    board_stream: syncline_kanban::StreamName,
    /// The board stream's cursor at which a user was removed: nothing from there on may reach them.
    revoked_at: BTreeMap<UserId, Cursor>,
}

/// An edit a user made (see `World::edits`).
struct Edit {
    seen_version: Option<u64>,
    /// For a move: the card as the user saw it (the tab's server data), so a card moved away and back meanwhile
    /// counts as unchanged — as the engine counts it (`fields_changed`).
    saw: Option<serde_json::Value>,
    kept: bool,
}

/// How the server-side check (`check_lost_update`) knows which edit it applies: the values a user's edit sets
/// (each unique), or for a move, which browser moves which card where (not unique if one browser makes the same
/// move twice: then the later one's view counts, which can only hide a lost update, never invent one).
fn edit_keys(b: usize, op: &WriteOp) -> Vec<String> {
    match op {
        WriteOp::UpdateCard { body, .. } => [&body.title, &body.description].into_iter().flatten().cloned().collect(),
        WriteOp::RenameColumn { body, .. } | WriteOp::RenameBoard { body, .. } => vec![body.title.clone()],
        WriteOp::MoveCard { id, body } => vec![move_key(b, *id, body)],
        _ => Vec::new(),
    }
}

/// A move's key in `World::edits`: which browser moves which card where.
fn move_key(b: usize, card: Uuid, body: &MoveCard) -> String {
    format!("browser {b} moves {card} to {} after {:?}", body.column_id, body.after_card_id)
}

/// A known bug the simulation can switch on, in the engine or in the server's feed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    Engine(InjectedBug),
    Feed(session::InjectedBug),
    Tail(syncline_server::tail::InjectedBug),
}

/// Runs one seed. With `trace`, the violation (if any) carries a readable log of the whole run.
pub fn run(seed: u64, trace: bool) -> Result<RunStats, Violation> {
    run_with(seed, trace, None)
}

/// The injected bugs by their command-line names.
pub const INJECTED_BUGS: [(&str, Bug); 10] = [
    ("new-leader-drops-outbox", Bug::Engine(InjectedBug::NewLeaderDropsOutbox)),
    ("edit-based-on-save-time", Bug::Engine(InjectedBug::EditBasedOnSaveTime)),
    ("hidden-tabs-count-as-active", Bug::Engine(InjectedBug::HiddenTabsCountAsActive)),
    ("followers-fetch", Bug::Engine(InjectedBug::FollowersFetch)),
    ("follower-persists-after-broadcasting", Bug::Engine(InjectedBug::FollowerPersistsAfterBroadcasting)),
    ("ignores-tab-gone", Bug::Engine(InjectedBug::IgnoresTabGone)),
    ("feed-drops-batches-during-catch-up", Bug::Feed(session::InjectedBug::DropsBatchesDuringCatchUp)),
    ("feed-authorizes-only-at-subscribe", Bug::Feed(session::InjectedBug::AuthorizesOnlyAtSubscribe)),
    ("tail-forgets-streams-on-reconnect", Bug::Tail(syncline_server::tail::InjectedBug::ForgetsStreamsOnReconnect)),
    ("tail-starts-at-head", Bug::Tail(syncline_server::tail::InjectedBug::StartsAtHead)),
];

pub fn bug_named(name: &str) -> Option<Bug> {
    INJECTED_BUGS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Runs one seed with a known bug switched on in every engine (to show the invariants catch it).
pub fn run_with(seed: u64, trace: bool, bug: Option<Bug>) -> Result<RunStats, Violation> {
    let mut world = World::new(seed, trace, bug);
    world.run();
    match world.violation.take() {
        None => Ok(world.stats),
        Some((invariant, detail)) => {
            Err(Violation { seed, invariant, at: world.now, detail, trace: world.trace.take().unwrap_or_default() })
        }
    }
}

impl World {
    fn new(seed: u64, trace: bool, bug: Option<Bug>) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut conn, log_id) = store::open_connection(Path::new(":memory:")).expect("in-memory database");
        // One user per browser; the first owns the board everyone looks at, the others edit it.
        let browsers = rng.random_range(1..=3);
        let users: Vec<UserId> = (0..browsers)
            .map(|b| {
                let tx = conn.transaction().expect("sqlite");
                let mut rec = syncline_server::feed::Recorder::new(None, SIM_EPOCH_MS);
                let user = access::create_user(&tx, &mut rec, &format!("user{b}"), "-", SIM_EPOCH_MS).expect("user");
                tx.commit().expect("sqlite");
                user.id
            })
            .collect();
        // The board: three columns, a few cards.
        let board = Uuid::from_u128(rng.random());
        let owner = users[0];
        let run = |conn: &mut rusqlite::Connection, op: WriteOp| {
            let ctx =
                WriteContext { now_ms: SIM_EPOCH_MS, write_id_ttl_ms: WRITE_ID_TTL_MS, quotas: Default::default() };
            let (outcome, _) = writes::execute_locked(conn, owner, None, op, ctx).expect("seeding");
            assert!(outcome.status.is_success(), "seeding: {}", outcome.body);
            outcome.body
        };
        run(&mut conn, WriteOp::CreateBoard { body: CreateBoard { id: Some(board), title: "Sim".into() } });
        for b in 1..browsers {
            let body = AddMember { username: format!("user{b}"), role: BoardRole::Editor };
            run(&mut conn, WriteOp::AddMember { board_id: board, body });
        }
        let mut columns = Vec::new();
        for title in ["Todo", "Doing", "Done"] {
            let id = Uuid::from_u128(rng.random());
            run(
                &mut conn,
                WriteOp::CreateColumn { board_id: board, body: CreateColumn { id: Some(id), title: title.into() } },
            );
            columns.push(id);
        }
        let mut seeded = Vec::new();
        for i in 0..4 {
            let body = CreateCard {
                id: Some(Uuid::from_u128(rng.random())),
                title: format!("seed {i}"),
                description: String::new(),
            };
            seeded.push(run(&mut conn, WriteOp::CreateCard { column_id: columns[i % 3], body }));
        }
        let instances = rng.random_range(1..=3);
        let tail_bug = match bug {
            Some(Bug::Tail(b)) => Some(b),
            _ => None,
        };
        let mut world = World {
            now: 0,
            seq: 0,
            rng,
            events: BinaryHeap::new(),
            server: Server {
                conn,
                log_id,
                sockets: BTreeMap::new(),
                parked: BTreeMap::new(),
                next_id: 1,
                up: true,
                epoch: 0,
                refuse_upgrades: false,
                refused_until: None,
                feed_bug: match bug {
                    Some(Bug::Feed(b)) => Some(b),
                    _ => None,
                },
                tail_bug,
                instances: (0..instances).map(|_| server::Instance::new(tail_bug)).collect(),
                heads: BTreeMap::new(),
                commits: 0,
            },
            browsers: Vec::new(),
            trace: trace.then(Vec::new),
            board,
            board_stream: syncline_kanban::StreamId::Board(board).name(),
            faults: true,
            written: BTreeMap::new(),
            superseded: BTreeMap::new(),
            surfaced: BTreeSet::new(),
            settled: BTreeSet::new(),
            applied: BTreeMap::new(),
            edits: BTreeMap::new(),
            edit_seq: 0,
            // Where the seeded cards are: a move that leaves one where it is changes nothing (`check_lost_update`).
            field_changed: seeded
                .iter()
                .flat_map(|card| {
                    let id = card["id"].as_str().and_then(|i| Uuid::parse_str(i).ok()).expect("a card's id");
                    let version = card["version"].as_u64().expect("a card's version");
                    ["column_id", "position"].map(|f| ((id, f), (version, usize::MAX, card[f].clone())))
                })
                .collect(),
            stats: RunStats { browsers, instances, ..RunStats::default() },
            violation: None,
            next_tab_seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            bug,
            roles: users
                .iter()
                .enumerate()
                .map(|(b, u)| (*u, if b == 0 { BoardRole::Owner } else { BoardRole::Editor }))
                .collect(),
            users,
            revoked_at: BTreeMap::new(),
        };
        for b in 0..browsers {
            let prefs = Preferences {
                background: [BackgroundMode::Pause, BackgroundMode::CriticalOnly, BackgroundMode::Slower]
                    [world.rng.random_range(0..3)],
                background_interval_ms: 30_000,
                data_saver: world.rng.random_bool(0.2),
                ..Preferences::default()
            };
            let link = LinkQuality {
                effective_type: [
                    EffectiveType::FourG,
                    EffectiveType::FourG,
                    EffectiveType::ThreeG,
                    EffectiveType::TwoG,
                ][world.rng.random_range(0..4)],
                rtt_ms: None,
                save_data: false,
            };
            let latency = (1, world.rng.random_range(2..40));
            let mut cfg = if world.rng.random_bool(0.5) {
                EngineConfig { hidden_grace_ms: 5_000, ..EngineConfig::default() }
            } else {
                EngineConfig::default()
            };
            // Hidden followers fall asleep soon, as by default, or late (after holding many changes).
            cfg.hidden_sleep_ms = [300, 2_000, 20_000][world.rng.random_range(0..3)];
            world.browsers.push(Browser {
                tabs: Vec::new(),
                online: true,
                partitioned: false,
                latency,
                loss: [0.0, 0.02, 0.1][world.rng.random_range(0..3)],
                prefs,
                cfg,
                link,
                idb_outbox: BTreeMap::new(),
                idb_cache: BTreeMap::new(),
                idb_deletes_in_flight: BTreeMap::new(),
                tab_watches: Vec::new(),
                leader: None,
                leader_since: 0,
                long_polls: Vec::new(),
                two_sockets_since: None,
                hidden_since: None,
                ws_refused_at: None,
                live_at: 0,
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
        world.schedule(5_000, Event::Prune);
        for inst in 0..instances {
            let first = world.rng.random_range(0..server::TAIL_INTERVAL_MS);
            world.schedule(first, Event::TailTick { inst });
        }
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
        self.run_until(end);
        if self.violation.is_some() {
            return;
        }
        self.now = end;
        // A hidden follower holds what its leader shares until it is shown: every tab is shown now, and each
        // must be current within `SHOWN_MS` of it.
        for b in 0..self.browsers.len() {
            for t in self.alive_tabs(b) {
                if !self.browsers[b].tabs[t].visible {
                    self.browsers[b].tabs[t].visible = true;
                    self.input(b, t, Input::Visibility { visible: true });
                }
            }
        }
        // ... counted from when it can run: a shown page may first render what it held back (a long task).
        let ready = (0..self.browsers.len())
            .flat_map(|b| self.browsers[b].tabs.iter().filter(|t| t.alive).map(|t| t.busy_until))
            .fold(end, Millis::max);
        self.run_until(ready + SHOWN_MS);
        if self.violation.is_some() {
            return;
        }
        self.now = ready + SHOWN_MS;
        self.check_shown();
        self.run_until(ready + SHOWN_OUTBOX_MS);
        if self.violation.is_none() {
            self.now = ready + SHOWN_OUTBOX_MS;
            self.check_end();
        }
    }

    fn run_until(&mut self, until: Millis) {
        while self.violation.is_none() && self.events.peek().is_some_and(|Reverse(q)| q.at <= until) {
            let Some(Reverse(q)) = self.events.pop() else { break };
            self.now = q.at;
            self.stats.events += 1;
            self.handle(q.event);
            self.check_sockets();
            self.track_visibility();
            self.check_status();
        }
    }

    // ---- tabs ----------------------------------------------------------------------------------------------

    fn open_tab(&mut self, b: usize) {
        self.next_tab_seed = self.next_tab_seed.wrapping_add(1);
        let t = self.browsers[b].tabs.len();
        let tab_id = (b * 100 + t) as u64;
        let prefs = self.browsers[b].prefs.clone();
        let injected_bug = match self.bug {
            Some(Bug::Engine(b)) => Some(b),
            _ => None,
        };
        let cfg = EngineConfig { injected_bug, ..self.browsers[b].cfg.clone() };
        // Each page's wall clock is its own reading of the system clock with its own rounding (and drift): the
        // tabs' clocks differ by a few ms.
        let skew = self.rng.random_range(0..=MAX_TAB_CLOCK_SKEW_MS);
        let engine = Engine::new(cfg, prefs, tab_id, self.next_tab_seed, self.now, SIM_EPOCH_MS + self.now + skew);
        let visible = self.browsers[b].tabs.iter().all(|t| !t.alive || !t.visible) || self.rng.random_bool(0.5);
        self.browsers[b].tabs.push(Tab {
            engine,
            alive: true,
            visible: true,
            deadline: Millis::MAX,
            socket: None,
            socket_attempt: 0,
            socket_fifo: 0,
            idb_fifo: 0,
            frozen: false,
            listening: true,
            held: Vec::new(),
            busy_until: 0,
            queued: Vec::new(),
            timer_waits: false,
            visibility_since: self.now,
            cards_seen: BTreeSet::new(),
            cards_gone: BTreeSet::new(),
            status_differs_since: None,
            polling_since: None,
        });
        self.log(|| format!("b{b}/t{t} opened"));
        if !visible {
            self.browsers[b].tabs[t].visible = false;
            self.input(b, t, Input::Visibility { visible: false });
        }
        let link = self.browsers[b].link;
        let online = self.browsers[b].online;
        self.input(b, t, Input::Link(link));
        if !online {
            self.input(b, t, Input::Network { online: false });
        }
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
            self.input(b, old, Input::LockLost);
        }
        self.browsers[b].leader = Some(t);
        self.browsers[b].leader_since = self.now;
        self.log(|| format!("b{b}/t{t} holds the lock"));
        // The engine reads the stored outbox (an IndexedDB request: messages may arrive meanwhile), then leads.
        self.input(b, t, Input::LockGranted);
    }

    /// How long an IndexedDB request takes: usually a few ms, now and then much longer (a busy or hidden tab).
    fn idb_delay(&mut self) -> Millis {
        if self.rng.random_bool(0.05) { self.rng.random_range(20..150) } else { self.rng.random_range(0..12) }
    }

    fn kill_tab(&mut self, b: usize, t: usize, graceful: bool) {
        if !self.browsers[b].tabs[t].alive {
            return;
        }
        self.log(|| format!("b{b}/t{t} {}", if graceful { "closed" } else { "crashed" }));
        if graceful && !self.browsers[b].tabs[t].frozen {
            self.input(b, t, Input::Closing);
        }
        self.browsers[b].tabs[t].alive = false;
        // Its lock is released: the tabs waiting for it are granted it (and learn it is gone); its own waits end.
        let watches = std::mem::take(&mut self.browsers[b].tab_watches);
        for (watcher, watched) in watches {
            if watched == t && watcher != t {
                let delay = self.rng.random_range(0..5);
                let tab = (b * 100 + t) as u64;
                self.schedule(delay, Event::ToTab { b, t: watcher, input: Input::TabGone { tab } });
            } else if watcher != t {
                self.browsers[b].tab_watches.push((watcher, watched));
            }
        }
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
        if self.browsers[b].tabs[t].frozen {
            self.browsers[b].tabs[t].held.push(input);
            return;
        }
        // (Visibility is the simulation's own switch, told at once: the model keeps `visible` and the engine's
        // view of it in step.)
        let shown = matches!(input, Input::Visibility { visible: true });
        if matches!(input, Input::Visibility { .. }) {
            self.browsers[b].tabs[t].visibility_since = self.now;
        }
        if self.browsers[b].tabs[t].busy_until > self.now && !matches!(input, Input::Visibility { .. }) {
            self.browsers[b].tabs[t].queued.push(input);
            return;
        }
        if self.trace.is_some() {
            let shown = describe_input(&input);
            self.log(|| format!("b{b}/t{t} <- {shown}"));
        }
        let now = self.now;
        self.browsers[b].tabs[t].engine.handle_input(now, input);
        self.drain(b, t);
        self.check_cards(b, t);
        if shown && self.browsers[b].tabs[t].alive && self.rng.random_bool(0.5) {
            // A shown page renders what it held back: a long task, after the engine heard it was shown.
            let busy = self.rng.random_range(1..=MAX_SHOWN_TASK_MS);
            self.log(|| format!("b{b}/t{t} busy for {busy} ms"));
            let tab = &mut self.browsers[b].tabs[t];
            tab.busy_until = tab.busy_until.max(now + busy);
            self.schedule(busy, Event::BusyDone { b, t });
        }
    }

    /// A tab's long task ended: the inputs that waited run in the order they came, and a timer that came due
    /// meanwhile runs among them at a random place.
    fn busy_done(&mut self, b: usize, t: usize) {
        let tab = &mut self.browsers[b].tabs[t];
        if !tab.alive || tab.busy_until > self.now {
            return; // dead, or a later long task
        }
        let mut queued = std::mem::take(&mut tab.queued);
        // The user's input first: browsers run input events ahead of other waiting tasks (and what the user
        // acted on is what the screen showed, which nothing that waited has changed yet).
        let user = |i: &Input| matches!(i, Input::Write { .. } | Input::ResolveConflict { .. } | Input::RetryNow);
        queued.sort_by_key(|i| !user(i));
        let timer_at = std::mem::take(&mut tab.timer_waits).then(|| self.rng.random_range(0..=queued.len()));
        let run_timer = |world: &mut World, i: usize| {
            if timer_at == Some(i) {
                let tab = &mut world.browsers[b].tabs[t];
                if tab.alive && !tab.frozen && tab.deadline <= world.now {
                    tab.deadline = Millis::MAX;
                    let now = world.now;
                    tab.engine.handle_timeout(now);
                    world.drain(b, t);
                }
            }
        };
        let n = queued.len();
        for (i, input) in queued.into_iter().enumerate() {
            run_timer(self, i);
            // A closed channel receives nothing, not even what waited.
            if matches!(input, Input::Tab(_)) && !self.browsers[b].tabs[t].listening {
                continue;
            }
            self.input(b, t, input);
        }
        run_timer(self, n);
    }

    /// A card that left this tab's copy of the board (it was deleted) never comes back in it, neither in the
    /// server's data nor in the view with pending writes laid over.
    fn check_cards(&mut self, b: usize, t: usize) {
        let tab = &self.browsers[b].tabs[t];
        if !tab.alive {
            return;
        }
        let Some(server) = tab.engine.board_server_state(self.board) else { return };
        let now_seen: BTreeSet<Uuid> = server.cards.iter().map(|c| c.id).collect();
        let shown: BTreeSet<Uuid> =
            tab.engine.board(self.board).map(|v| v.cards.iter().map(|c| c.id).collect()).unwrap_or_default();
        let back: Option<Uuid> = tab.cards_gone.iter().find(|id| now_seen.contains(id) || shown.contains(id)).copied();
        if let Some(id) = back {
            self.fail(
                Invariant::DeletedReappeared,
                format!("b{b}/t{t}: card {id} was deleted in this tab and is back"),
            );
            return;
        }
        let tab = &mut self.browsers[b].tabs[t];
        let gone: Vec<Uuid> = tab.cards_seen.difference(&now_seen).copied().collect();
        tab.cards_gone.extend(gone);
        tab.cards_seen = now_seen;
    }

    fn drain(&mut self, b: usize, t: usize) {
        loop {
            let out = self.browsers[b].tabs[t].engine.poll_output();
            if let Output::Timeout(deadline) = out {
                let tab = &mut self.browsers[b].tabs[t];
                if deadline != tab.deadline {
                    tab.deadline = deadline;
                    let why = tab.engine.next_timer().map(|(_, why)| why);
                    let delay = deadline.saturating_sub(self.now);
                    self.log(|| format!("b{b}t{t} wakes in {delay} ms ({why:?})"));
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
            let cfg = &browser.cfg;
            let grace = cfg.hidden_grace_ms + cfg.peer_timeout_ms;
            let visible_now = browser.tabs.iter().any(|t| t.alive && t.visible);
            if let Some(since) = browser.hidden_since.filter(|&s| !visible_now && self.now > s + grace + 1_000)
                && browser.prefs.background == BackgroundMode::Pause
            {
                self.fail(Invariant::HiddenTraffic, format!("b{b}/t{t}: no tab visible since {since} ms, yet {out:?}"));
            }
        }
        match out {
            Output::OpenSocket | Output::Http { .. } if role == Role::Follower => {
                let visible = self.browsers[b].tabs[t].visible;
                self.fail(
                    Invariant::FollowerRequest,
                    format!("b{b}/t{t} (follower, visible: {visible}) asked for network: {out:?}"),
                );
            }
            Output::OpenSocket => {
                self.stats.http_requests += 1;
                let tab = &mut self.browsers[b].tabs[t];
                tab.socket_attempt += 1;
                let attempt = tab.socket_attempt;
                let lat = self.latency(b);
                // The network decides now; the server (down, refusing upgrades) when the connection reaches it —
                // as for HTTP, so a request and a socket sent together meet the same server.
                if !self.browsers[b].online || self.browsers[b].partitioned {
                    self.schedule(lat, Event::SocketRefused { b, t, attempt });
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
                    self.schedule(
                        lat,
                        Event::ToTab {
                            b,
                            t,
                            input: Input::Http { id, result: HttpResult::NetworkError("unreachable".into()) },
                        },
                    );
                } else {
                    let epoch = self.server.epoch;
                    self.schedule(lat, Event::HttpAtServer { b, t, id, request, epoch });
                }
            }
            Output::CancelHttp { .. } => {}
            Output::ListenToTabs(listening) => self.browsers[b].tabs[t].listening = listening,
            Output::Broadcast(msg) => {
                if let TabMessage::WriteSettled { write_id, settled } = &msg {
                    self.settled.insert(*write_id);
                    match settled {
                        Settled::Rebased { new_write_id } => {
                            self.superseded.insert(*write_id, *new_write_id);
                        }
                        Settled::Rejected { .. } | Settled::Overridden { .. } => {
                            self.surfaced.insert(*write_id);
                        }
                        Settled::Applied { .. } | Settled::Confirmed { .. } | Settled::Earlier => {}
                    }
                }
                self.broadcast(b, t, msg);
            }
            Output::Persist(op) => {
                if let PersistOp::OutboxDelete { write_id } = &op {
                    *self.browsers[b].idb_deletes_in_flight.entry(*write_id).or_default() += 1;
                }
                // IndexedDB completes later: in order for this tab, in any order across tabs.
                let delay = self.idb_delay();
                let tab = &mut self.browsers[b].tabs[t];
                let at = (self.now + delay).max(tab.idb_fifo);
                tab.idb_fifo = at;
                let delay = at - self.now;
                self.schedule(delay, Event::IdbDone { b, t, op });
            }
            Output::Notify(n) => match n {
                Notification::Conflict { write_id, .. } | Notification::WriteRejected { write_id, .. } => {
                    self.surfaced.insert(write_id);
                }
                _ => {}
            },
            Output::Load(what) => {
                // IndexedDB answers later, in order with the tab's other requests.
                let delay = self.idb_delay();
                let tab = &mut self.browsers[b].tabs[t];
                let at = (self.now + delay).max(tab.idb_fifo);
                tab.idb_fifo = at;
                let delay = at - self.now;
                self.schedule(delay, Event::IdbLoad { b, t, what });
            }
            // Every tab is queued for the lock; `grant_lock` gives it to the oldest when it is free.
            Output::QueueForLock => {}
            // Held from its start (asked before anything else) until it dies: `alive`.
            Output::HoldTabLock { tab } => debug_assert_eq!(tab, (b * 100 + t) as u64),
            Output::WatchTab { tab } => {
                let watched = (tab % 100) as usize;
                if self.browsers[b].tabs.get(watched).is_some_and(|w| w.alive) {
                    self.browsers[b].tab_watches.push((t, watched));
                } else {
                    let delay = self.rng.random_range(0..5);
                    self.schedule(delay, Event::ToTab { b, t, input: Input::TabGone { tab } });
                }
            }
            Output::ClaimLeadership => {
                self.log(|| format!("b{b}/t{t} claims the lock"));
                let since = self.browsers[b].leader_since;
                let settled = |tab: &Tab| {
                    tab.alive
                        && tab.visible
                        && !tab.frozen
                        && self.now >= tab.busy_until.max(tab.visibility_since).max(since) + NEEDLESS_TAKEOVER_MS
                };
                if let Some(l) = self.browsers[b].leader.filter(|&l| l != t && settled(&self.browsers[b].tabs[l])) {
                    self.fail(
                        Invariant::NeedlessTakeover,
                        format!("b{b}/t{t} claimed the lock from t{l}, visible and awake"),
                    );
                }
                self.become_leader(b, t);
            }
            Output::Timeout(_) => unreachable!("handled by drain"),
        }
    }

    /// An IndexedDB request lands (unless its tab crashed first: its transaction is aborted), and the tab hears
    /// it completed.
    fn idb_done(&mut self, b: usize, t: usize, op: PersistOp) {
        let browser = &mut self.browsers[b];
        if let PersistOp::OutboxDelete { write_id } = &op
            && let Some(n) = browser.idb_deletes_in_flight.get_mut(write_id)
        {
            *n -= 1;
            if *n == 0 {
                browser.idb_deletes_in_flight.remove(write_id);
            }
        }
        if !browser.tabs[t].alive {
            return;
        }
        match op {
            PersistOp::OutboxPut { write } => {
                let write_id = write.write_id;
                browser.idb_outbox.insert(write_id, write);
                // Stored: from here on the write must not be lost (a tab that crashes before this loses it, as
                // a browser would: nothing was durable yet).
                self.written.entry(write_id).or_insert(b);
                // Stored after its write settled, with no delete on its way: it would stay for good.
                if self.settled.contains(&write_id) && !browser.idb_deletes_in_flight.contains_key(&write_id) {
                    self.fail(
                        Invariant::OutboxOutlivesWrite,
                        format!("b{b}/t{t} stored write {write_id} after it settled"),
                    );
                    return;
                }
                self.input(b, t, Input::Persisted { write_id });
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
                if !tab.alive || tab.deadline > self.now || tab.frozen {
                    return; // superseded by a later deadline, or held until the tab is resumed
                }
                if tab.busy_until > self.now {
                    tab.timer_waits = true; // runs when the long task ends (`busy_done`)
                    return;
                }
                tab.deadline = Millis::MAX;
                let now = self.now;
                tab.engine.handle_timeout(now);
                self.drain(b, t);
            }
            Event::ToTab { b, t, input: Input::Tab(_) } if !self.browsers[b].tabs[t].listening => {}
            Event::ToTab { b, t, input } => self.input(b, t, input),
            Event::IdbDone { b, t, op } => self.idb_done(b, t, op),
            Event::SocketRefused { b, t, attempt } => {
                if self.browsers[b].tabs[t].socket_attempt == attempt {
                    self.input(b, t, Input::SocketClosed { code: Some(1006), reason: "refused".into() });
                }
            }
            Event::IdbLoad { b, t, what } => {
                if !self.browsers[b].tabs[t].alive {
                    return;
                }
                let input = match what {
                    Load::Outbox => {
                        Input::OutboxLoaded { outbox: self.browsers[b].idb_outbox.values().cloned().collect() }
                    }
                    Load::Cache { key } => {
                        Input::CacheLoaded { data: self.browsers[b].idb_cache.get(&key).cloned(), key }
                    }
                };
                self.input(b, t, input);
            }
            Event::Unfreeze { b, t, discard } => self.unfreeze(b, t, discard),
            Event::BusyDone { b, t } => self.busy_done(b, t),
            Event::CheckShownTakeover { b, t, shown_at } => {
                let browser = &self.browsers[b];
                let still_shown = browser.tabs[t].alive && browser.tabs[t].visible && !browser.tabs[t].frozen;
                if let Some(l) =
                    browser.leader.filter(|&l| still_shown && browser.tabs[l].alive && browser.tabs[l].frozen)
                {
                    self.fail(
                        Invariant::FrozenLeaderKept,
                        format!("b{b}/t{t} was shown at {shown_at} ms; frozen t{l} still holds the lock"),
                    );
                }
            }
            Event::Prune => {
                let retention = Retention {
                    max_changes_per_stream: u64::MAX / 4,
                    max_change_age: std::time::Duration::from_secs(1 << 30),
                    write_ttl: std::time::Duration::from_millis(WRITE_ID_TTL_MS),
                };
                let tx = self.server.conn.transaction().expect("sqlite");
                prune(&tx, &retention, SIM_EPOCH_MS + self.now).expect("prune");
                tx.commit().expect("sqlite");
                self.schedule(5_000, Event::Prune);
            }
            Event::HttpAtServer { b, t, id, request, epoch } => self.server_http(b, t, id, request, epoch),
            Event::SocketOpenAtServer { b, t, attempt } => {
                let tab = &self.browsers[b].tabs[t];
                if !tab.alive || tab.socket_attempt != attempt {
                    return;
                }
                let inst = self.pick_instance();
                let Some(inst) =
                    inst.filter(|_| self.server.up && !self.server.refuse_upgrades && !self.browsers[b].partitioned)
                else {
                    if self.server.up && self.server.refuse_upgrades && !self.browsers[b].partitioned {
                        self.browsers[b].ws_refused_at = Some(self.now);
                    }
                    let lat = self.latency(b);
                    self.schedule(lat, Event::SocketRefused { b, t, attempt });
                    return;
                };
                self.accept_socket(b, t, inst);
            }
            Event::SocketMsgAtServer { sock, msg } => self.server_socket_message(sock, msg),
            Event::LongPollTimeout { park } => self.long_poll_timeout(park),
            Event::TailWake { inst, epoch } => {
                if self.server.instances[inst].epoch == epoch && self.server.instances[inst].listening {
                    self.tail_round(inst);
                }
            }
            Event::TailTick { inst } => {
                self.tail_round(inst);
                self.schedule(server::TAIL_INTERVAL_MS, Event::TailTick { inst });
            }
            Event::TailRead { inst, epoch, heads, changes } => self.tail_read(inst, epoch, heads, changes),
            Event::LogRead { sock, stream, since, read } => {
                self.socket_session(sock, session::Input::LogRead { stream, since, read });
            }
            Event::UserWrite { b } => {
                if self.faults {
                    self.user_write(b);
                    let gap = self.rng.random_range(300..4_000);
                    self.schedule(gap, Event::UserWrite { b });
                }
            }
            Event::UserSaves { b, t, op, policy, seen } => {
                if self.browsers[b].tabs[t].alive {
                    self.stats.writes_accepted += 1;
                    self.log(|| format!("b{b}/t{t} user saves the editor: {op:?}"));
                    self.input(b, t, Input::Write { op, priority: Priority::UserVisible, policy, seen: Some(seen) });
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
        let candidates: Vec<usize> =
            self.alive_tabs(b).into_iter().filter(|&t| self.browsers[b].tabs[t].visible).collect();
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
                let card = view.cards[self.rng.random_range(0..view.cards.len())].id;
                // Each value is unique, so the server can tell whose edit it applies (`check_lost_update`).
                self.edit_seq += 1;
                let body = if self.rng.random_bool(0.5) {
                    UpdateCard { title: Some(format!("title {b}.{}", self.edit_seq)), ..Default::default() }
                } else {
                    UpdateCard { description: Some(format!("desc {b}.{}", self.edit_seq)), ..Default::default() }
                };
                let seen = self.browsers[b].tabs[t].engine.seen(card);
                // Half the edits are made in the card editor: opened now, saved a few seconds later — changes
                // arriving meanwhile are not what the user saw.
                match self.edit(b, t, WriteOp::UpdateCard { id: card, body }, seen, "opens the card editor") {
                    Some(op) => op,
                    None => return,
                }
            }
            7 if self.rng.random_bool(0.5) => {
                let column = view.columns[self.rng.random_range(0..view.columns.len())].id;
                self.edit_seq += 1;
                let title = format!("column {b}.{}", self.edit_seq);
                let seen = self.browsers[b].tabs[t].engine.seen(column);
                // Half the renames are typed into the column's title field, focused a few seconds before they are
                // committed (the app's `TitleField` takes what the user saw on focus).
                let op = WriteOp::RenameColumn { id: column, body: Rename { title, base_version: None } };
                match self.edit(b, t, op, seen, "focuses a column title") {
                    Some(op) => op,
                    None => return,
                }
            }
            8 if self.rng.random_bool(0.25) => {
                self.edit_seq += 1;
                let title = format!("board {b}.{}", self.edit_seq);
                let seen = self.browsers[b].tabs[t].engine.seen(self.board);
                // As a column's: typed into the board's title field, focused earlier half the time.
                let op = WriteOp::RenameBoard { id: self.board, body: Rename { title, base_version: None } };
                match self.edit(b, t, op, seen, "focuses the board's title") {
                    Some(op) => op,
                    None => return,
                }
            }
            9 if !view.cards.is_empty() => {
                let card = &view.cards[self.rng.random_range(0..view.cards.len())];
                WriteOp::DeleteCard { id: card.id, base_version: None }
            }
            4..=6 if !view.cards.is_empty() => {
                let card = view.cards[self.rng.random_range(0..view.cards.len())].clone();
                let column = view.columns[self.rng.random_range(0..view.columns.len())].id;
                let in_column: Vec<Uuid> =
                    view.cards.iter().filter(|c| c.column_id == column && c.id != card.id).map(|c| c.id).collect();
                let after = if in_column.is_empty() || self.rng.random_bool(0.3) {
                    None
                } else {
                    Some(in_column[self.rng.random_range(0..in_column.len())])
                };
                let body = MoveCard { column_id: column, after_card_id: after, base_version: None };
                // A card is dragged where the user sees it, at once: what they saw is the tab's card now.
                let engine = &self.browsers[b].tabs[t].engine;
                let seen = engine.seen(card.id).version();
                let saw = engine
                    .board_server_state(self.board)
                    .and_then(|board| board.cards.iter().find(|c| c.id == card.id))
                    .and_then(|c| serde_json::to_value(c).ok());
                let key = move_key(b, card.id, &body);
                let edit = self.edits.entry(key).or_insert(Edit { seen_version: seen, saw: None, kept: false });
                edit.seen_version = edit.seen_version.max(seen);
                edit.saw = saw;
                WriteOp::MoveCard { id: card.id, body }
            }
            _ => {
                let column = view.columns[self.rng.random_range(0..view.columns.len())].id;
                let body = CreateCard {
                    id: None,
                    title: format!("new {}", self.rng.random_range(0..1000)),
                    description: String::new(),
                };
                WriteOp::CreateCard { column_id: column, body }
            }
        };
        self.stats.writes_accepted += 1;
        let policy = self.policy();
        self.log(|| format!("b{b}/t{t} user writes {op:?}"));
        self.input(b, t, Input::Write { op, priority: Priority::UserVisible, policy, seen: None });
    }

    /// A user's edit of what they see (`seen`: the entity then): recorded by the unique values it sets, then made
    /// at once (returned) or, half the time, saved a few seconds later (`Event::UserSaves`; `None`).
    fn edit(&mut self, b: usize, t: usize, op: WriteOp, seen: Seen, opens: &str) -> Option<WriteOp> {
        for key in edit_keys(b, &op) {
            self.edits.insert(key, Edit { seen_version: seen.version(), saw: None, kept: false });
        }
        if !self.rng.random_bool(0.5) {
            return Some(op);
        }
        let policy = self.policy();
        let after = self.rng.random_range(200..8_000);
        self.log(|| format!("b{b}/t{t} user {opens}, to save later: {op:?}"));
        self.schedule(after, Event::UserSaves { b, t, op, policy, seen });
        None
    }

    fn policy(&mut self) -> ConflictPolicy {
        [ConflictPolicy::RebaseOrAsk, ConflictPolicy::RebaseOrServerWins, ConflictPolicy::ServerWins]
            [self.rng.random_range(0..3)]
    }

    /// The server applied `op` from browser `b` (the entity as committed: `body`): a field it sets that another
    /// browser changed after the version its user saw is a lost update, unless the user chose to keep theirs.
    /// (Card titles and descriptions, where a card is — its column and its place —, column and board titles.)
    pub(crate) fn check_lost_update(&mut self, b: usize, op: &WriteOp, body: &serde_json::Value) {
        let Some(version) = body.get("version").and_then(serde_json::Value::as_u64) else { return };
        let committed_id = || body.get("id").and_then(|i| i.as_str()).and_then(|i| Uuid::parse_str(i).ok());
        let moved: String;
        // Each field the write sets, with what names the edit in `edits` (the value itself, but for a move).
        let (entity, fields): (Option<Uuid>, Vec<(&'static str, &String)>) = match op {
            WriteOp::UpdateCard { id, body } => (
                Some(*id),
                [("title", &body.title), ("description", &body.description)]
                    .into_iter()
                    .filter_map(|(f, v)| v.as_ref().map(|v| (f, v)))
                    .collect(),
            ),
            WriteOp::CreateCard { body, .. } => {
                (committed_id(), vec![("title", &body.title), ("description", &body.description)])
            }
            WriteOp::RenameColumn { id, body } => (Some(*id), vec![("title", &body.title)]),
            WriteOp::CreateColumn { body, .. } => (committed_id(), vec![("title", &body.title)]),
            WriteOp::RenameBoard { id, body } => (Some(*id), vec![("title", &body.title)]),
            WriteOp::CreateBoard { body } => (committed_id(), vec![("title", &body.title)]),
            WriteOp::MoveCard { id, body } => {
                moved = move_key(b, *id, body);
                (Some(*id), vec![("column_id", &moved), ("position", &moved)])
            }
            _ => return,
        };
        let Some(entity) = entity else { return };
        let is_edit = matches!(
            op,
            WriteOp::UpdateCard { .. }
                | WriteOp::RenameColumn { .. }
                | WriteOp::RenameBoard { .. }
                | WriteOp::MoveCard { .. }
        );
        for (field, value) in fields {
            let committed = body.get(field).cloned().unwrap_or_default();
            let last = self.field_changed.get(&(entity, field));
            if last.is_some_and(|(_, _, was)| *was == committed) {
                continue;
            }
            if is_edit
                && let Some(edit) = self.edits.get(value)
                && let Some((changed_at, by, was)) = last
                && *by != b
                && *changed_at > edit.seen_version.unwrap_or(0)
                && edit.saw.as_ref().is_none_or(|saw| saw[field] != *was)
                && !edit.kept
            {
                let seen = edit.seen_version;
                self.fail(
                    Invariant::LostUpdate,
                    format!(
                        "browser {b} set {field} of {entity} to {value:?} (version {version}), over browser {by}'s change at version {changed_at}; its user saw version {seen:?}"
                    ),
                );
            }
            self.field_changed.insert((entity, field), (version, b, committed));
        }
    }

    /// The user answers conflicts that ask for a decision.
    fn user_resolve(&mut self, b: usize) {
        for t in self.alive_tabs(b) {
            if !self.browsers[b].tabs[t].visible {
                continue;
            }
            let conflicts: Vec<(Uuid, WriteOp)> =
                self.browsers[b].tabs[t].engine.conflicts().iter().map(|w| (w.write_id, w.op.clone())).collect();
            for (write_id, op) in conflicts {
                let keep_mine = self.rng.random_bool(0.5);
                if keep_mine {
                    for key in edit_keys(b, &op) {
                        if let Some(edit) = self.edits.get_mut(&key) {
                            edit.kept = true;
                        }
                    }
                }
                self.input(b, t, Input::ResolveConflict { write_id, keep_mine });
            }
            return;
        }
    }

    fn fault(&mut self) {
        let b = self.rng.random_range(0..self.browsers.len());
        let alive = self.alive_tabs(b);
        let t = alive[self.rng.random_range(0..alive.len())];
        match self.rng.random_range(0..126) {
            114..=119 => {
                // One instance crashes (SIGKILL, or a deploy): its clients reconnect through the load balancer.
                if let Some(inst) = self.pick_instance() {
                    self.crash_instance(inst);
                    let d = self.rng.random_range(200..6_000);
                    self.schedule(d, Event::Recover { what: Recover::InstanceUp(inst) });
                }
            }
            120..=125 => {
                // An instance's LISTEN connection drops: hints stop reaching it until it reconnects.
                let inst = self.rng.random_range(0..self.server.instances.len());
                if self.server.instances[inst].listening {
                    self.log(|| format!("instance {inst} loses its listener connection"));
                    self.server.instances[inst].listening = false;
                    let d = self.rng.random_range(100..4_000);
                    self.schedule(d, Event::Recover { what: Recover::ListenerBack(inst) });
                }
            }
            0..=29 => {
                let visible = !self.browsers[b].tabs[t].visible;
                if visible && self.browsers[b].tabs[t].frozen {
                    self.unfreeze(b, t, false); // showing a frozen tab resumes it
                }
                self.browsers[b].tabs[t].visible = visible;
                self.input(b, t, Input::Visibility { visible });
                let leader = self.browsers[b].leader;
                if let Some(l) = leader.filter(|&l| visible && l != t && self.browsers[b].tabs[l].frozen) {
                    let shown_at = self.now;
                    self.log(|| format!("b{b}/t{t} shown while its leader t{l} is frozen"));
                    // Counted from when it can run (after the long task of being shown, if any).
                    let busy = self.browsers[b].tabs[t].busy_until.saturating_sub(self.now);
                    self.schedule(busy + SHOWN_TAKEOVER_MS, Event::CheckShownTakeover { b, t, shown_at });
                }
            }
            108..=113 => self.change_membership(),
            100..=107 => {
                // The browser freezes a hidden tab (often the leader): timers and messages held, the Web Lock
                // kept, its socket closed. Later it is resumed, or discarded.
                let hidden: Vec<usize> = self
                    .alive_tabs(b)
                    .into_iter()
                    .filter(|&t| !self.browsers[b].tabs[t].visible && !self.browsers[b].tabs[t].frozen)
                    .collect();
                let leader = self.browsers[b].leader.filter(|l| hidden.contains(l));
                let pick = leader
                    .filter(|_| self.rng.random_bool(0.7))
                    .or_else(|| (!hidden.is_empty()).then(|| hidden[self.rng.random_range(0..hidden.len())]));
                if let Some(t) = pick {
                    self.freeze(b, t);
                    let d = self.rng.random_range(1_000..15_000);
                    let discard = self.rng.random_bool(0.25);
                    self.schedule(d, Event::Unfreeze { b, t, discard });
                }
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
                    self.drop_sockets(|_, s| s.b == b);
                    let d = self.rng.random_range(500..8_000);
                    self.schedule(d, Event::Recover { what: Recover::Unpartition(b) });
                }
            }
            53..=60 => {
                if self.server.up {
                    self.log(|| "server goes down".into());
                    self.server.up = false;
                    self.server.epoch += 1;
                    // Every process restarts.
                    let bug = self.server.tail_bug;
                    for i in &mut self.server.instances {
                        i.restart(bug);
                    }
                    self.drop_sockets(|_, _| true);
                    let parked: Vec<server::Parked> = std::mem::take(&mut self.server.parked).into_values().collect();
                    for p in parked {
                        let lat = self.latency(p.b);
                        self.schedule(
                            lat,
                            Event::ToTab {
                                b: p.b,
                                t: p.t,
                                input: Input::Http { id: p.id, result: HttpResult::NetworkError("reset".into()) },
                            },
                        );
                    }
                    // Usually a restart; now and then a long outage.
                    let d = if self.rng.random_bool(0.3) {
                        self.rng.random_range(5_000..25_000)
                    } else {
                        self.rng.random_range(200..3_000)
                    };
                    self.schedule(d, Event::Recover { what: Recover::ServerUp });
                }
            }
            61..=66 => {
                if !self.server.refuse_upgrades {
                    self.log(|| "server refuses WebSocket upgrades".into());
                    self.server.refuse_upgrades = true;
                    self.drop_sockets(|_, _| true);
                    let d = self.rng.random_range(5_000..20_000);
                    self.schedule(d, Event::Recover { what: Recover::AllowUpgrades });
                }
            }
            67..=82 => {
                // Closed or crashed: often the leader — the tab the user works in holds the connection, and its
                // outbox is what a successor must take over.
                let leader = self.browsers[b].leader.filter(|l| alive.contains(l));
                let t = leader.filter(|_| self.rng.random_bool(0.5)).unwrap_or(t);
                let graceful = self.rng.random_bool(0.5);
                self.kill_tab(b, t, graceful);
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
                let effective_type =
                    [EffectiveType::FourG, EffectiveType::ThreeG, EffectiveType::TwoG, EffectiveType::Slow2g]
                        [self.rng.random_range(0..4)];
                let link = LinkQuality { effective_type, rtt_ms: None, save_data: self.rng.random_bool(0.2) };
                self.browsers[b].link = link;
                for t in self.alive_tabs(b) {
                    self.input(b, t, Input::Link(link));
                }
            }
        }
    }

    /// The owner (browser 0's user) changes another user's role, or removes them for good.
    fn change_membership(&mut self) {
        let members: Vec<usize> = (1..self.users.len()).filter(|&b| self.roles.contains_key(&self.users[b])).collect();
        if members.is_empty() || !self.server.up {
            return;
        }
        let Some(inst) = self.pick_instance() else { return };
        let b = members[self.rng.random_range(0..members.len())];
        let user = self.users[b];
        let op = match self.rng.random_range(0..3) {
            0 => WriteOp::RemoveMember { board_id: self.board, user_id: user },
            n => {
                let role = if n == 1 { BoardRole::Viewer } else { BoardRole::Editor };
                WriteOp::SetMemberRole {
                    board_id: self.board,
                    user_id: user,
                    body: SetRole { role, base_version: None },
                }
            }
        };
        self.log(|| format!("the owner: {op:?}"));
        let ctx = WriteContext {
            now_ms: SIM_EPOCH_MS + self.now,
            write_id_ttl_ms: WRITE_ID_TTL_MS,
            quotas: Default::default(),
        };
        let (outcome, rec) =
            writes::execute_locked(&mut self.server.conn, self.users[0], None, op.clone(), ctx).expect("sqlite");
        assert!(outcome.status.is_success(), "the owner's membership change: {}", outcome.body);
        match op {
            WriteOp::RemoveMember { .. } => {
                self.roles.remove(&user);
                let removed = rec.changes().iter().find(
                    |c| matches!(c.op, syncline_kanban::ChangeOp::MemberRemoved { user_id, .. } if user_id == user),
                );
                self.revoked_at.insert(user, removed.expect("recorded").cursor);
            }
            WriteOp::SetMemberRole { body, .. } => {
                self.roles.insert(user, body.role);
            }
            _ => {}
        }
        let changes = rec.changes().to_vec();
        self.commit(inst, &changes);
    }

    fn freeze(&mut self, b: usize, t: usize) {
        self.log(|| format!("b{b}/t{t} frozen"));
        self.browsers[b].tabs[t].frozen = true;
        // Freezing closes the page's sockets; it hears of it when resumed.
        if let Some(sock) = self.browsers[b].tabs[t].socket.take() {
            self.server.sockets.remove(&sock);
            self.browsers[b].tabs[t].held.push(Input::SocketClosed { code: Some(1006), reason: "frozen".into() });
        }
    }

    fn unfreeze(&mut self, b: usize, t: usize, discard: bool) {
        if !self.browsers[b].tabs[t].alive || !self.browsers[b].tabs[t].frozen {
            return;
        }
        if discard {
            self.log(|| format!("b{b}/t{t} discarded while frozen"));
            let tab = &mut self.browsers[b].tabs[t];
            tab.frozen = false;
            tab.held.clear();
            self.kill_tab(b, t, false);
            if self.alive_tabs(b).is_empty() {
                self.open_tab(b);
            }
            return;
        }
        self.log(|| format!("b{b}/t{t} resumed"));
        let tab = &mut self.browsers[b].tabs[t];
        tab.frozen = false;
        let held = std::mem::take(&mut tab.held);
        for input in held {
            self.input(b, t, input);
        }
        let now = self.now;
        if self.browsers[b].tabs[t].alive {
            self.browsers[b].tabs[t].engine.handle_timeout(now);
            self.drain(b, t);
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
                self.server.refused_until = Some(self.now);
            }
            Recover::InstanceUp(inst) => {
                self.log(|| format!("instance {inst} is up again"));
                self.server.instances[inst].up = true;
            }
            Recover::ListenerBack(inst) => {
                if !self.server.instances[inst].listening {
                    self.log(|| format!("instance {inst}'s listener reconnects"));
                    let i = &mut self.server.instances[inst];
                    i.listening = true;
                    i.tailer.listener_reconnected();
                    self.tail_round(inst);
                }
            }
        }
    }

    /// Instance `inst` dies: its sockets reset, its waiting long-polls fail, its memory (hub, tailer) is gone.
    fn crash_instance(&mut self, inst: usize) {
        self.log(|| format!("instance {inst} crashes"));
        self.drop_sockets(|_, s| s.inst == inst);
        let parked: Vec<u64> = self.server.parked.iter().filter(|(_, p)| p.inst == inst).map(|(id, _)| *id).collect();
        for park in parked {
            let p = self.server.parked.remove(&park).expect("listed");
            let lat = self.latency(p.b);
            let input = Input::Http { id: p.id, result: HttpResult::NetworkError("reset".into()) };
            self.schedule(lat, Event::ToTab { b: p.b, t: p.t, input });
        }
        let bug = self.server.tail_bug;
        let i = &mut self.server.instances[inst];
        i.restart(bug);
        i.up = false;
    }

    fn end_faults(&mut self) {
        self.log(|| "faults stop; every browser is online with a visible tab".into());
        self.faults = false;
        self.server.up = true;
        for inst in 0..self.server.instances.len() {
            if !self.server.instances[inst].up {
                self.recover(Recover::InstanceUp(inst));
            }
            if !self.server.instances[inst].listening {
                self.recover(Recover::ListenerBack(inst));
            }
        }
        if self.server.refuse_upgrades {
            self.server.refused_until = Some(self.now);
        }
        self.server.refuse_upgrades = false;
        for b in 0..self.browsers.len() {
            self.browsers[b].partitioned = false;
            for t in self.alive_tabs(b) {
                if self.browsers[b].tabs[t].frozen {
                    self.unfreeze(b, t, false);
                }
            }
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

    fn drop_sockets(&mut self, which: impl Fn(u64, &ServerSocket) -> bool) {
        let gone: Vec<u64> = self.server.sockets.iter().filter(|(id, s)| which(**id, s)).map(|(id, _)| *id).collect();
        for sock in gone {
            let s = self.server.sockets.remove(&sock).expect("listed");
            let worst = self.browsers[s.b].latency.1;
            let tab = &mut self.browsers[s.b].tabs[s.t];
            if tab.socket == Some(sock) {
                tab.socket = None;
                let at = (self.now + worst).max(tab.socket_fifo);
                tab.socket_fifo = at;
                let delay = at - self.now;
                self.schedule(
                    delay,
                    Event::ToTab {
                        b: s.b,
                        t: s.t,
                        input: Input::SocketClosed { code: Some(1006), reason: "dropped".into() },
                    },
                );
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

    /// Every follower shows its leader's connection state (within a bound), and a leader long-polls only when
    /// a server that answered refused its WebSocket since it was last live.
    fn check_status(&mut self) {
        let now = self.now;
        for b in 0..self.browsers.len() {
            let awake = |tab: &Tab| tab.alive && !tab.frozen;
            let leaders: Vec<usize> = (0..self.browsers[b].tabs.len())
                .filter(|&t| awake(&self.browsers[b].tabs[t]) && self.browsers[b].tabs[t].engine.role() == Role::Leader)
                .collect();
            let [leader] = leaders[..] else {
                for tab in &mut self.browsers[b].tabs {
                    tab.status_differs_since = None;
                }
                continue;
            };
            let leader_status = self.browsers[b].tabs[leader].engine.status().clone();
            if leader_status == ConnectionStatus::Live {
                self.browsers[b].live_at = now;
            }
            // Polling needs a cause.
            let polling = matches!(leader_status, ConnectionStatus::Polling { .. });
            let since = {
                let tab = &mut self.browsers[b].tabs[leader];
                if polling {
                    *tab.polling_since.get_or_insert(now)
                } else {
                    tab.polling_since = None;
                    now
                }
            };
            let browser = &self.browsers[b];
            // The WebSocket was refused by a server that answered, or the server refused upgrades at some time
            // since this browser was live (the engine may have learnt it from an attempt that failed then).
            let refused = browser.ws_refused_at.is_some_and(|r| r >= browser.live_at)
                || self.server.refuse_upgrades
                || self.server.refused_until.is_some_and(|r| r >= browser.live_at);
            if polling && !refused && now > since + POLLING_GRACE_MS {
                let live_at = browser.live_at;
                self.fail(Invariant::PollingWithoutCause, format!("b{b}/t{leader} long-polls since {since} ms; no WebSocket was refused by a reachable server since it was live at {live_at} ms"));
                return;
            }
            // Followers follow the leader's state.
            let kind = std::mem::discriminant(&leader_status);
            for t in 0..self.browsers[b].tabs.len() {
                if t == leader || !awake(&self.browsers[b].tabs[t]) {
                    continue;
                }
                let tab = &mut self.browsers[b].tabs[t];
                if !tab.listening {
                    // Asleep (hidden, hearing no one): it learns the state when it wakes, and is checked from then.
                    tab.status_differs_since = None;
                    continue;
                }
                let status = tab.engine.status().clone();
                if std::mem::discriminant(&status) == kind {
                    tab.status_differs_since = None;
                    continue;
                }
                let since = *tab.status_differs_since.get_or_insert(now);
                if now > since + STATUS_BOUND_MS {
                    self.fail(
                        Invariant::StatusMismatch,
                        format!(
                            "b{b}/t{t} shows {status:?} since {since} ms; its leader t{leader} shows {leader_status:?}"
                        ),
                    );
                    return;
                }
            }
        }
    }

    fn check_sockets(&mut self) {
        self.refresh_follows();
        self.check_fresh();
        for b in 0..self.browsers.len() {
            let n = self.server.sockets.values().filter(|s| s.b == b).count();
            // With the "pause" preference, a browser with no visible tab lets go of its socket after the grace
            // period (a crashed visible tab counts as visible until its heartbeat times out).
            let browser = &self.browsers[b];
            let grace = browser.cfg.hidden_grace_ms + browser.cfg.peer_timeout_ms + 1_000;
            if let Some(since) = browser.hidden_since.filter(|&s| n > 0 && self.now > s + grace)
                && browser.prefs.background == BackgroundMode::Pause
            {
                self.fail(
                    Invariant::HiddenTraffic,
                    format!("browser {b}: no tab visible since {since} ms, yet its socket is open"),
                );
                return;
            }
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

    /// Every socket listening to the board has been sent each change of it within [`FRESH_BOUND_MS`] of its
    /// commit — whichever instance the change was committed through and whichever serves the socket.
    fn check_fresh(&mut self) {
        // (Runs after every event: the cheap tests first.)
        let Some(&(head, at)) = self.server.heads.get(&self.board_stream) else { return };
        if !self.server.up || self.now <= at + FRESH_BOUND_MS {
            return;
        }
        let stream = self.board_stream.clone();
        let stale = self.server.sockets.iter().find(|(_, s)| {
            s.listening.contains(&stream)
                && s.opened_at < at
                && self.server.instances[s.inst].up
                && !self.revoked_at.contains_key(&self.users[s.b])
                && s.sent.get(&stream).is_some_and(|&sent| sent < head)
        });
        if let Some((sock, s)) = stale {
            let detail = format!(
                "b{}/t{}'s socket {sock} on instance {} was sent the board up to {}; {head} committed at {at} ms",
                s.b, s.t, s.inst, s.sent[&stream]
            );
            self.fail(Invariant::Stale, detail);
        }
    }

    // ---- the end -------------------------------------------------------------------------------------------

    /// `SHOWN_MS` after every tab was shown: each shows the server's board (pending writes are checked later).
    fn check_shown(&mut self) {
        let truth = self.server_board();
        for b in 0..self.browsers.len() {
            if !self.roles.contains_key(&self.users[b]) {
                continue; // removed from the board: checked at the end
            }
            for t in self.alive_tabs(b) {
                let engine = &self.browsers[b].tabs[t].engine;
                let Some(problem) = board_differs(engine.board_server_state(self.board), &truth) else { continue };
                let detail = format!("b{b}/t{t} ({:?}) {SHOWN_MS} ms after it was shown {problem}", engine.role());
                self.fail(Invariant::NotConverged, detail);
                return;
            }
        }
    }

    /// The board as the server has it now.
    fn server_board(&mut self) -> BoardSnapshot {
        let tx = self.server.conn.transaction().expect("sqlite");
        store::board_snapshot(&tx, self.board, self.server.log_id).expect("board exists")
    }

    fn check_end(&mut self) {
        let truth = self.server_board();
        // The server forgets write ids after its TTL: what it applied is counted as it applies it.
        let applied: BTreeSet<Uuid> = self.applied.keys().copied().collect();
        if let Some((id, n)) = self.applied.iter().find(|(_, n)| **n > 1) {
            let detail = format!("write {id} was applied {n} times");
            self.fail(Invariant::WriteAppliedTwice, detail);
            return;
        }
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
            let pending_anywhere: BTreeSet<Uuid> = self
                .alive_tabs(b)
                .iter()
                .flat_map(|&t| self.browsers[b].tabs[t].engine.pending().iter().map(|w| w.write_id).collect::<Vec<_>>())
                .collect();
            let leftover: Vec<Uuid> =
                self.browsers[b].idb_outbox.keys().filter(|id| !pending_anywhere.contains(id)).copied().collect();
            if !leftover.is_empty() {
                self.fail(
                    Invariant::OutboxLeftover,
                    format!(
                        "browser {b} still stores {} outbox entries no tab has pending: {leftover:?}",
                        leftover.len()
                    ),
                );
                return;
            }
            // (A frozen tab has not heard yet: the release waits with its other inputs.)
            for t in self.alive_tabs(b).into_iter().filter(|&t| !self.browsers[b].tabs[t].frozen) {
                let engine = &self.browsers[b].tabs[t].engine;
                let gone = engine.asleep_peers().into_iter().find(|&p| {
                    let p = (p % 100) as usize;
                    self.browsers[b].tabs.get(p).is_none_or(|tab| !tab.alive)
                });
                if let Some(gone) = gone {
                    self.fail(Invariant::GoneTabKept, format!("b{b}/t{t} counts tab {gone} as asleep; it is gone"));
                    return;
                }
            }
            let removed = !self.roles.contains_key(&self.users[b]);
            for t in self.alive_tabs(b) {
                let engine = &self.browsers[b].tabs[t].engine;
                let pending = engine.pending().len();
                let seen = engine.board_server_state(self.board).cloned();
                if removed {
                    // A removed user's tabs drop the board and whatever they had queued for it.
                    if seen.is_some() || pending > 0 {
                        let detail =
                            format!("b{b}/t{t} was removed from the board, yet holds its data ({pending} pending)");
                        self.fail(Invariant::RevokedDataKept, detail);
                        return;
                    }
                    continue;
                }
                let problem = board_differs(seen.as_ref(), &truth).or_else(|| {
                    (pending > 0).then(|| {
                        let ids: Vec<String> = engine
                            .pending()
                            .iter()
                            .map(|w| format!("{} applied={}", w.write_id, applied.contains(&w.write_id)))
                            .collect();
                        format!("still has {pending} pending writes: {}", ids.join(", "))
                    })
                });
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

/// What is wrong with a tab's copy of the board, if anything.
fn board_differs(seen: Option<&BoardSnapshot>, truth: &BoardSnapshot) -> Option<String> {
    match seen {
        None => Some("has no board data".to_owned()),
        Some(seen) if !same_board(seen, truth) => Some(format!("sees {}\n  server {}", show(seen), show(truth))),
        Some(_) => None,
    }
}

fn same_board(a: &BoardSnapshot, b: &BoardSnapshot) -> bool {
    a.board == b.board && a.columns == b.columns && a.cards == b.cards && a.members == b.members
}

fn show(s: &BoardSnapshot) -> String {
    let cards: Vec<String> =
        s.cards.iter().map(|c| format!("{}:{}@v{}", &c.id.to_string()[..4], c.title, c.version)).collect();
    format!("cursor {} [{}]", s.cursor, cards.join(", "))
}

fn describe_input(input: &Input) -> String {
    match input {
        Input::SocketMessage(text) => format!("socket {}", truncate(text, 160)),
        Input::Http { id, result: HttpResult::Response { status, body, .. } } => {
            format!("http #{id} {status} {}", truncate(body, 120))
        }
        Input::Http { id, result: HttpResult::NetworkError(e) } => format!("http #{id} failed: {e}"),
        Input::Tab(TabMessage::Presence { visible, leader, .. }) => {
            format!("presence visible={visible} leader={leader}")
        }
        other => truncate(&format!("{other:?}"), 200),
    }
}

fn describe_output(out: &Output) -> String {
    match out {
        Output::Http { id, request } => format!("http #{id} {} {}", request.method, request.path),
        Output::Broadcast(TabMessage::Presence { visible, leader, .. }) => {
            format!("presence visible={visible} leader={leader}")
        }
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
