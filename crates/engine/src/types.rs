//! The engine's vocabulary: what drivers tell it ([`Input`]) and what it asks of them ([`Output`]), generic over
//! the app's [`Model`].

use serde::{Deserialize, Serialize};
use syncline_protocol::{Change, ClientMessage, Cursor, ServerMessage, StreamName, StreamPosition};
use uuid::Uuid;

use crate::config::Preferences;
use crate::model::Model;

/// Milliseconds on the driver's monotonic clock (`performance.now()` in a browser, simulated time in tests).
pub type Millis = u64;

/// Identifies a tab (an engine instance) within one browser.
pub type TabId = u64;

/// Identifies a request the engine asked a driver to make.
pub type RequestId = u64;

/// How fresh a query is, for the UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Freshness {
    /// Up to date: the live feed keeps it so, or it was fetched within its stale time.
    Fresh,
    /// Possibly out of date; `age_ms` since it was last known current (`None`: never known current, e.g. data
    /// restored from the cache of an earlier visit).
    Stale { age_ms: Option<u64> },
    /// Being fetched (and no usable data yet, or a refetch is under way).
    Fetching,
    /// Offline: shows the last data, `age_ms` old; nothing will be fetched until online.
    Paused { age_ms: Option<u64> },
    /// The last fetch failed; next attempt at `retry_at`.
    Error { message: String, retry_at: Millis },
}

/// Which tab holds the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
}

/// `navigator.connection.effectiveType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EffectiveType {
    #[serde(rename = "slow-2g")]
    Slow2g,
    #[serde(rename = "2g")]
    TwoG,
    #[serde(rename = "3g")]
    ThreeG,
    #[default]
    #[serde(rename = "4g")]
    FourG,
}

/// What the browser says about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LinkQuality {
    pub effective_type: EffectiveType,
    pub rtt_ms: Option<u32>,
    pub save_data: bool,
}

/// Order in which queued writes are sent: user-visible edits before background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    UserVisible,
    Background,
}

/// What to do when a write's base version is stale (the server answered 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Re-send on the current version when the fields we change are not the ones that changed on the server;
    /// otherwise ask the user. The default.
    #[default]
    RebaseOrAsk,
    /// Re-send when the fields do not overlap; otherwise the server's version stands (and the user is told).
    RebaseOrServerWins,
    /// The server's version stands; the user is told.
    ServerWins,
    /// Always ask the user: keep mine or take theirs.
    AskUser,
}

/// The server refused a write because its base version was stale: the entity as it is now, and where that state
/// stands in its streams.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub current: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at: Vec<StreamPosition>,
}

/// A conflict as stored: this version's shape (`{"current": …, "at": […]}`), or an earlier one's — the bare
/// entity — so an outbox stored by an earlier version still loads. (By hand rather than serde's `untagged`,
/// which would bring its private buffer into the browser's wasm for this alone.)
impl<'de> Deserialize<'de> for Conflict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if let serde_json::Value::Object(map) = &value
            && map.contains_key("current")
            && let Some(at) = map.get("at").map_or(Some(Vec::new()), |at| Vec::<StreamPosition>::deserialize(at).ok())
            && let serde_json::Value::Object(mut map) = value
        {
            return Ok(Conflict { current: map.remove("current").unwrap_or_default(), at });
        }
        Ok(Conflict { current: value, at: Vec::new() })
    }
}

/// A write the UI accepted and the server has not yet answered for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PendingWrite<M: Model> {
    pub write_id: Uuid,
    pub op: M::Op,
    pub priority: Priority,
    pub policy: ConflictPolicy,
    /// Order of acceptance across the browser's tabs: a Lamport clock carried by tab messages (ties broken by
    /// write id). Writes of one entity go out in this order.
    #[serde(rename = "seq")]
    pub lamport: u64,
    /// The entity as the user saw it when writing (server data), to tell which fields changed since.
    pub base: Option<serde_json::Value>,
    /// Set when the server refused for a conflict and the policy asks the user.
    pub conflict: Option<Conflict>,
}

/// What the user saw of an entity when they began changing it (an editor opened): the server's data and the
/// version a write would be based on (`Engine::seen`). A write made later from it (`Engine::write_seen_at`) is
/// based on this rather than on what the tab holds by then.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub(crate) entity: Uuid,
    pub(crate) data: Option<serde_json::Value>,
    pub(crate) version: Option<u64>,
}

impl Seen {
    /// The version a write made from this is based on (`None`: the entity was not in the tab's data).
    pub fn version(&self) -> Option<u64> {
        self.version
    }
}

/// How a write ended, told to every tab.
#[derive(Debug, Clone, PartialEq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Settled {
    /// Applied; the entity as committed (`null` for a delete), and where its changes committed.
    Applied {
        status: u16,
        body: serde_json::Value,
        #[serde(default)]
        at: Vec<StreamPosition>,
    },
    /// Applied: its change came through the feed (at `at`) before its answer did. Nothing to lay over; every
    /// copy gets the change from the feed.
    Confirmed {
        #[serde(default)]
        at: Vec<StreamPosition>,
    },
    /// Not applied, for good (unknown entity, invalid, too old); the server's error body.
    Rejected { status: u16, body: serde_json::Value },
    /// Not applied: the server's version stood (by policy or by the user's choice).
    Overridden {
        conflict: Conflict,
        /// The user chose theirs (no need to tell them).
        #[serde(default)]
        chosen: bool,
    },
    /// Replaced by a new write (new id) re-based on the current version.
    Rebased { new_write_id: Uuid },
    /// It settled earlier (said again to a tab that missed it, e.g. one opened meanwhile); its effect, if any,
    /// reaches that tab through the feed.
    Earlier,
}

/// Where a tab's copy of a query's data stands in its stream (`TabMessage::Interest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAt<K> {
    pub key: K,
    pub cursor: Cursor,
    #[serde(default)]
    pub log_id: Option<Uuid>,
}

/// Messages between the tabs of one browser (BroadcastChannel).
#[derive(Debug, Clone, PartialEq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "type", rename_all = "snake_case", bound = "")]
pub enum TabMessage<M: Model> {
    /// Sent on start, on every change of visibility or role, and as a heartbeat. `sent_at`: the sender's wall
    /// clock (Unix ms; 0 if unknown), so a message held while the receiver was frozen is recognised as stale.
    Presence {
        tab: TabId,
        visible: bool,
        leader: bool,
        #[serde(default)]
        sent_at: u64,
    },
    /// A hidden follower stopped listening to the other tabs (it wakes when shown or when it takes the lead, and
    /// then announces itself with `Presence`). Sent once, when it falls asleep: the leader keeps its interests
    /// fresh, so it is current as soon as it wakes, until its tab lock says it is gone (`Output::WatchTab`).
    /// (Earlier versions repeated it once a minute; a repeat is heard as the same news.)
    Asleep {
        tab: TabId,
        #[serde(default)]
        sent_at: u64,
    },
    /// A tab is gone (closed); crashed tabs are noticed by their missing heartbeat (asleep ones by their tab
    /// lock: `Input::TabGone`).
    Goodbye { tab: TabId },
    /// Leader → all: the server revoked this user's access to a stream; drop what it holds.
    Revoked { stream: StreamName },
    /// Any tab → all: the session ended; stop.
    SignedOut,
    /// A follower's queries: the leader keeps them fresh and shares their data.
    /// `critical`: those of `keys` the tab marked critical (polled while hidden under "critical data only").
    /// `copies`: where the data this tab holds stands, so the leader can bring it up to date with the changes
    /// since, or tell it it is current (`Current`), rather than send all the data again.
    Interest {
        tab: TabId,
        keys: Vec<M::Key>,
        #[serde(default)]
        critical: Vec<M::Key>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        copies: Vec<CopyAt<M::Key>>,
    },
    /// A follower wants this query refetched (it became visible and the data is stale, or it missed changes).
    /// `copy`: where the data it holds stands, when that can be brought up to date with the changes since
    /// (`Current`) — a copy that only missed changes; none when a change could not be applied to it.
    Refetch {
        key: M::Key,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copy: Option<CopyAt<M::Key>>,
    },
    /// Leader → all: a query's data as fetched.
    Data { key: M::Key, data: M::Data, fetched_at: Millis },
    /// Leader → all: changes from the feed, in order.
    Changes { stream: StreamName, changes: Vec<Change<M::Change>> },
    /// Leader → all: a copy of the query's data at `cursor` of change log `log_id` is current, once it applies
    /// `changes` (said instead of `Data` to a follower whose copy is there, or lacks only those changes).
    Current {
        key: M::Key,
        cursor: Cursor,
        log_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changes: Vec<Change<M::Change>>,
    },
    /// Any tab → all: a write was queued (and is stored in the shared persistent outbox).
    WriteQueued { write: PendingWrite<M> },
    /// Follower → leader: a write this tab holds that the leader may not know (a new leader, or a write read back
    /// from storage). Only the leader acts on it — it takes the write (and tells every tab it is queued) or says
    /// it settled — since the write may have settled long ago: the follower may have been frozen, its messages
    /// late, and a tab that opened since must not show it again.
    HandOver { write: PendingWrite<M> },
    /// Leader → all: a write ended.
    WriteSettled { write_id: Uuid, settled: Settled },
    /// A tab's decision on a conflict that asks the user.
    ConflictResolved { write_id: Uuid, keep_mine: bool },
    /// Leader → all: the connection state, for badges and freshness. Times in `status` are on the leader's
    /// clock, which read `sent_at` when it was sent; receivers shift them onto their own clock.
    Status {
        status: ConnectionStatus,
        sent_at: Millis,
        /// The leader that sent it (followers ignore a tab that has since stopped leading).
        #[serde(default)]
        tab: TabId,
    },
    /// Follower → leader: the user pressed "retry now".
    RetryNow,
}

/// The connection as the user should see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Nothing to do yet (no queries), or waiting for a leader.
    Idle,
    Connecting,
    /// The WebSocket is up and caught up.
    Live,
    /// Fresh by long-poll (or timed refetches); `reason` says why not live; the WebSocket is tried again at
    /// `retry_socket_at` (none when realtime is off).
    Polling {
        reason: String,
        retry_socket_at: Option<Millis>,
    },
    /// Waiting to reconnect at `retry_at`.
    Reconnecting {
        retry_at: Millis,
    },
    /// No visible tab: the connection is paused to save the battery and the server.
    Paused,
    /// No network; `pending_writes` are saved on this device.
    Offline {
        pending_writes: usize,
    },
}

impl ConnectionStatus {
    /// The same status with its times moved from a clock that reads `from` to one that reads `to` at the same
    /// instant (tabs each have their own `performance.now()`).
    pub fn rebased(self, from: Millis, to: Millis) -> ConnectionStatus {
        let shift = |t: Millis| (t + to).saturating_sub(from);
        match self {
            ConnectionStatus::Reconnecting { retry_at } => ConnectionStatus::Reconnecting { retry_at: shift(retry_at) },
            ConnectionStatus::Polling { reason, retry_socket_at } => {
                ConnectionStatus::Polling { reason, retry_socket_at: retry_socket_at.map(shift) }
            }
            other => other,
        }
    }
}

/// An HTTP request the driver makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: &'static str,
    /// Path and query, e.g. `/api/changes?stream=inbox&since=4&wait=25`.
    pub path: String,
    /// JSON body, for POST.
    pub body: Option<String>,
    /// `If-None-Match`, for snapshot GETs the engine already holds.
    pub if_none_match: Option<String>,
}

/// What the driver got back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HttpResult {
    /// Any HTTP answer (including 4xx/5xx): status, body text, ETag header.
    Response { status: u16, body: String, etag: Option<String> },
    /// No answer: network down, connection refused or reset, or the request could not be made at all.
    NetworkError(String),
}

/// Records to keep across page loads (IndexedDB in a browser). Carry them out in the order given.
#[derive(Debug, Clone, PartialEq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "op", rename_all = "snake_case", bound = "")]
pub enum PersistOp<M: Model> {
    /// Store an outbox entry; say when done with `Input::Persisted` (whether it worked or not).
    OutboxPut {
        write: PendingWrite<M>,
    },
    OutboxDelete {
        write_id: Uuid,
    },
    /// A query's data, to render at once on the next load.
    CachePut {
        key: M::Key,
        data: M::Data,
    },
    CacheDelete {
        key: M::Key,
    },
}

/// Records to read back; answer with the matching input.
#[derive(Debug, Clone, PartialEq)]
pub enum Load<M: Model> {
    /// Every stored outbox entry (of every tab of this browser): `Input::OutboxLoaded`.
    Outbox,
    /// The cached data of one query, if any: `Input::CacheLoaded`.
    Cache { key: M::Key },
}

/// Everything a driver tells the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<M: Model> {
    /// This tab became visible or hidden.
    Visibility { visible: bool },
    /// `online` / `offline`.
    Network { online: bool },
    /// `navigator.connection` changed.
    Link(LinkQuality),
    /// This tab won the leader lock (it queued for it, or claimed it). The engine reads the stored outbox, then
    /// leads.
    LockGranted,
    /// Another tab took the lock from this one.
    LockLost,
    /// The tab is being closed (`pagehide`): last words to the other tabs, now.
    Closing,
    /// The user signs out: stop using the network now (the session is being ended), and tell the other tabs.
    SignOut,
    /// Preferences changed (here or in another tab).
    Preferences(Preferences),
    /// The stored outbox, as asked by `Load::Outbox`.
    OutboxLoaded { outbox: Vec<PendingWrite<M>> },
    /// A query's cached data (if there was any), as asked by `Load::Cache`.
    CacheLoaded { key: M::Key, data: Option<M::Data> },
    /// A view started reading this query.
    Subscribe(M::Key),
    /// A view stopped reading it.
    Unsubscribe(M::Key),
    /// Marks a query critical (polled while hidden under the "critical data only" preference) or not.
    Critical { key: M::Key, critical: bool },
    /// The user made a write; the app chooses how urgent it is and what to do on a conflict.
    Write {
        op: M::Op,
        priority: Priority,
        policy: ConflictPolicy,
        /// What the user saw when they began the change (`Engine::seen`, taken when an editor opened), or `None`:
        /// what the tab holds now.
        seen: Option<Seen>,
    },
    /// The user chose, for a write in conflict: keep mine (re-send on the current version) or take theirs.
    ResolveConflict { write_id: Uuid, keep_mine: bool },
    /// The user asked to retry now ("retry now" on the badge).
    RetryNow,
    /// The user is about to need this query (hovering or focusing a link to it in a visible tab): fetch it
    /// once if it is missing or stale, so the view opens from cache.
    Prefetch(M::Key),
    /// The driver carried out `PersistOp::OutboxPut` for this write (or failed to: report it either way). The
    /// write is shared with other tabs and sent only after this.
    Persisted { write_id: Uuid },
    /// The socket the engine asked for is open.
    SocketOpened,
    /// The socket closed (or failed to open).
    SocketClosed { code: Option<u16>, reason: String },
    /// A text frame from the server.
    SocketMessage(String),
    /// The answer to a request.
    Http { id: RequestId, result: HttpResult },
    /// A message from another tab.
    Tab(TabMessage<M>),
    /// The tab lock of a tab this one watches (`Output::WatchTab`) was released: that tab is gone (closed,
    /// crashed, or discarded by the browser).
    TabGone { tab: TabId },
}

/// Something the UI should re-read.
#[derive(Debug, Clone, PartialEq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "type", rename_all = "snake_case", bound = "")]
pub enum Notification<M: Model> {
    /// A query's data or freshness changed.
    Query { key: M::Key },
    /// The connection status changed.
    Connection { status: ConnectionStatus },
    /// The set of pending writes changed.
    Outbox { pending: usize },
    /// A write conflicted; `needs_decision` when the user must choose (keep mine / take theirs).
    Conflict { write_id: Uuid, current: serde_json::Value, needs_decision: bool },
    /// A write was refused for good.
    WriteRejected { write_id: Uuid, message: String },
    /// The preferences in force changed (set here or in another tab).
    Preferences,
    /// The server stopped this tab's access to a query's data (the user was removed from what it shows): the
    /// data is dropped here and from the persistent cache.
    Revoked { key: M::Key },
    /// The session ended (signed out here or elsewhere, or expired): the engine stops using the network. The app
    /// asks the user to sign in again.
    SignedOut,
}

/// Everything the engine asks of a driver. After every input, drain with `poll_output` until it returns
/// `Timeout`; call `handle_timeout` (or any input) at that deadline.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<M: Model> {
    OpenSocket,
    CloseSocket {
        code: u16,
        reason: String,
    },
    SendSocket(ClientMessage),
    Http {
        id: RequestId,
        request: HttpRequest,
    },
    /// Abandon a request (e.g. a long-poll no longer wanted); its result, if any, is ignored.
    CancelHttp {
        id: RequestId,
    },
    Broadcast(TabMessage<M>),
    /// Receive the other tabs' messages (`true`, the start) or not (`false`: a hidden follower fell asleep —
    /// close the channel, so the browser does not even deliver them). `Broadcast` works either way.
    ListenToTabs(bool),
    Persist(PersistOp<M>),
    Load(Load<M>),
    Notify(Notification<M>),
    /// Hold a lock named for this tab for as long as the tab lives (Web Locks `request`, never released; the
    /// browser releases it when the tab is closed, crashes or is discarded). Asked once, at the start: it is how
    /// the other tabs know this one is alive while it is asleep and says nothing (`WatchTab`).
    HoldTabLock {
        tab: TabId,
    },
    /// Queue for the lock `tab` holds (`HoldTabLock`) and, when it is granted — the tab is gone — release it at
    /// once and give `Input::TabGone`. Asked once per tab (the request waits as long as that tab lives).
    WatchTab {
        tab: TabId,
    },
    /// Queue for the leader lock (Web Locks `request`); `Input::LockGranted` when it comes.
    QueueForLock,
    /// Take the leader lock even though another tab holds it (Web Locks `steal`): this tab is visible and the
    /// leader is not, or does not answer.
    ClaimLeadership,
    /// Nothing more to do until this time (or the next input); `Millis::MAX`: no timer at all (an asleep tab).
    Timeout(Millis),
}

/// A server message as the input a socket would give (for tests and simulations that build inputs).
pub fn socket_message<M: Model>(msg: &ServerMessage<M::Change>) -> Input<M> {
    Input::SocketMessage(serde_json::to_string(msg).expect("server messages serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_conflict_loads_in_this_version_s_shape_and_in_the_earlier_bare_entity() {
        let position = json!({"stream": "board:x", "cursor": 4});
        let now: Conflict = serde_json::from_value(json!({"current": {"id": 1}, "at": [position]})).unwrap();
        assert_eq!(now.current, json!({"id": 1}));
        assert_eq!(now.at, vec![serde_json::from_value::<StreamPosition>(position).unwrap()]);
        let without_at: Conflict = serde_json::from_str(r#"{"current":{"id":1}}"#).unwrap();
        assert_eq!((without_at.current, without_at.at), (json!({"id": 1}), vec![]));
        // An earlier version stored the entity itself.
        let earlier: Conflict = serde_json::from_str(r#"{"id":1,"title":"t","version":3}"#).unwrap();
        assert_eq!((earlier.current, earlier.at), (json!({"id": 1, "title": "t", "version": 3}), vec![]));
        let deleted: Conflict = serde_json::from_str("null").unwrap();
        assert_eq!(deleted.current, serde_json::Value::Null);
        // `at` that is not a list of positions: as serde's untagged read it, the whole is the entity.
        let odd: Conflict = serde_json::from_str(r#"{"current":1,"at":"x"}"#).unwrap();
        assert_eq!(odd.current, json!({"current": 1, "at": "x"}));
        let round = Conflict { current: json!({"id": 2}), at: now.at };
        assert_eq!(serde_json::from_str::<Conflict>(&serde_json::to_string(&round).unwrap()).unwrap(), round);
    }
}
