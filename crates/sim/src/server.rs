//! The simulated server: the real store and write path (`writes::execute_locked` on SQLite in memory) and the
//! real feed session (`syncline_server::session`) for every socket and long-poll. What is modelled is only what
//! is not code: latency, loss, the server being down or refusing WebSocket upgrades.
//!
//! Several instances share the store, as on PostgreSQL behind a load balancer: each connection or request goes to
//! one that is up; a write's changes reach the sessions of its own instance at once (its hub) and the others'
//! through their real tailers (`syncline_server::tail`) — on a commit hint, which may be lost or come late, or
//! on the tail interval — with the log read a snapshot delivered after a delay, so tails race local writes and
//! subscribes. Instances crash (their sockets and long-polls cut, their tailer gone) and lose their listener
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::Rng;
use rusqlite::Connection;
use syncline_engine::{HttpRequest, HttpResult};
use syncline_kanban::{
    ClientMessage, Cursor, Role as BoardRole, ServerMessage, StreamCursor, StreamId, StreamName, UserId, WriteBatch,
    WriteBatchResult, WriteOp, WriteOutcome,
};
use syncline_server::access;
use syncline_server::feed::Published;
use syncline_server::session::{self, Session, Settings};
use syncline_server::store;
use syncline_server::tail::{self, Tailer};
use syncline_server::writes::{self, WriteContext};
use uuid::Uuid;

use crate::{Event, Input, Invariant, SIM_EPOCH_MS, WRITE_ID_TTL_MS, World};

/// Changes per log read, as the real server.
const PAGE: usize = 500;

pub(crate) struct ServerSocket {
    pub b: usize,
    pub t: usize,
    /// The instance serving it.
    pub inst: usize,
    /// When it was accepted.
    pub opened_at: u64,
    pub session: Session,
    /// Streams the session listens to live.
    pub listening: BTreeSet<StreamName>,
    /// Per stream, the last cursor the client was sent (to check the feed never skips one).
    pub sent: BTreeMap<StreamName, Cursor>,
    /// Per stream, the last cursor of the live batches handed to the session (a `synced` must not be behind it).
    pub handed: BTreeMap<StreamName, Cursor>,
}

/// A long-poll that found nothing new and waits for a change.
pub(crate) struct Parked {
    pub b: usize,
    pub t: usize,
    pub inst: usize,
    pub id: u64,
    /// The stream as the client named it, and as the log does.
    pub stream: StreamName,
    pub listen: StreamName,
    pub session: Session,
    pub epoch: u64,
}

pub(crate) struct Server {
    pub conn: Connection,
    pub log_id: Uuid,
    pub sockets: BTreeMap<u64, ServerSocket>,
    pub parked: BTreeMap<u64, Parked>,
    pub next_id: u64,
    pub up: bool,
    pub epoch: u64,
    pub refuse_upgrades: bool,
    /// When the last refusal of upgrades ended.
    pub refused_until: Option<u64>,
    pub feed_bug: Option<session::InjectedBug>,
    pub tail_bug: Option<tail::InjectedBug>,
    /// The server instances (one to three, sharing the store).
    pub instances: Vec<Instance>,
    /// Per stream, the last cursor committed and when.
    pub heads: BTreeMap<StreamName, (Cursor, u64)>,
    /// Commits so far (to skip tail reads that could find nothing new).
    pub commits: u64,
}

/// One server process.
pub(crate) struct Instance {
    pub up: bool,
    /// Bumped when it crashes: what was in flight for the old process is void.
    pub epoch: u64,
    pub tailer: Tailer,
    /// Its LISTEN connection is up (hints reach it).
    pub listening: bool,
    /// A tail read is in flight; `again`: another round was asked for meanwhile.
    pub reading: bool,
    pub again: bool,
    /// `Server::commits` when its last read was taken.
    pub read_at: Option<u64>,
}

impl Instance {
    pub fn new(bug: Option<tail::InjectedBug>) -> Instance {
        Instance {
            up: true,
            epoch: 0,
            tailer: Tailer::with_bug(bug),
            listening: true,
            reading: false,
            again: false,
            read_at: None,
        }
    }

    /// A new process in its place: nothing of this one's memory, and what was in flight for it is void.
    pub fn restart(&mut self, bug: Option<tail::InjectedBug>) {
        let epoch = self.epoch + 1;
        *self = Instance::new(bug);
        self.epoch = epoch;
    }
}

/// Between two tail rounds of an instance when no hint comes (the server's default).
pub(crate) const TAIL_INTERVAL_MS: u64 = 250;

impl Server {
    fn session(&self, user: UserId, message_target_bytes: usize, max_subscriptions: usize) -> Session {
        let settings = Settings { max_subscriptions, page_size: PAGE, message_target_bytes };
        Session::new(settings, user).with_bug(self.feed_bug)
    }
}

/// The stream's name for the client: a user's own list is `boards`.
fn client_name(log: &StreamName) -> StreamName {
    if log.as_str().starts_with("user:") { StreamId::Boards.name() } else { log.clone() }
}

/// What a session asked that the world must carry out.
enum Said {
    Message(ServerMessage),
    Close(u16, String),
}

impl World {
    /// Drives a session until it has nothing more to ask, keeps `listening` up to date, and returns what it
    /// said. Log reads are answered at once (`reads: None`, as the long-poll handler does), or read now — a
    /// snapshot, as SQLite's — and handed back after a delay, meanwhile live batches keep coming (`reads`).
    fn run_session(
        conn: &Connection,
        log_id: Uuid,
        session: &mut Session,
        listening: &mut BTreeSet<StreamName>,
        input: session::Input,
        mut reads: Option<&mut Vec<(StreamName, Cursor, syncline_server::feed::LogRead)>>,
    ) -> Vec<Said> {
        let mut said = Vec::new();
        session.handle(input);
        while let Some(out) = session.poll_output() {
            match out {
                session::Output::Send(msg) => said.push(Said::Message(msg)),
                // What the client receives is the batch's shared encoding: decode it as the client would.
                session::Output::Forward(batch) => said.push(Said::Message(
                    serde_json::from_str(batch.encoded().as_str()).expect("a forwarded batch decodes"),
                )),
                session::Output::Listen(stream) => {
                    listening.insert(stream);
                }
                session::Output::Unlisten(stream) => {
                    listening.remove(&stream);
                }
                session::Output::ReadLog { stream, since, client_log_id } => {
                    let user = session.user();
                    let read =
                        access::read_log_as(conn, user, log_id, &stream, since, client_log_id, PAGE).expect("sqlite");
                    match reads.as_deref_mut() {
                        Some(later) => later.push((stream, since, read)),
                        None => session.handle(session::Input::LogRead { stream, since, read }),
                    }
                }
                session::Output::Close { code, reason } => said.push(Said::Close(code, reason)),
            }
        }
        said
    }

    /// Gives a socket's session an input and sends what it says; its log reads come back a moment later.
    pub(crate) fn socket_session(&mut self, sock: u64, input: session::Input) {
        let Some(s) = self.server.sockets.get_mut(&sock) else { return };
        let mut reads = Vec::new();
        let before = s.listening.clone();
        let said = Self::run_session(
            &self.server.conn,
            self.server.log_id,
            &mut s.session,
            &mut s.listening,
            input,
            Some(&mut reads),
        );
        // The hub's subscribe: the instance's tailer follows what its sessions start listening to.
        let inst = s.inst;
        for stream in s.listening.difference(&before) {
            self.server.instances[inst].tailer.follow(stream.clone());
        }
        for (stream, since, read) in reads {
            let delay = self.rng.random_range(0..25);
            self.schedule(delay, Event::LogRead { sock, stream, since, read });
        }
        for what in said {
            match what {
                Said::Message(msg) => self.send_on_socket(sock, msg),
                Said::Close(code, reason) => {
                    self.log(|| format!("server closes socket {sock}: {code} {reason}"));
                    self.drop_sockets(|id, _| id == sock);
                }
            }
        }
    }

    /// Whether a message may reach browser `b`'s user: no change of the board at or after their removal.
    fn check_delivery(&mut self, b: usize, msg: &ServerMessage) -> bool {
        let ServerMessage::Changes { stream, changes } = msg else { return true };
        let Some(&removed_at) = self.revoked_at.get(&self.users[b]) else { return true };
        if *stream != StreamId::Board(self.board) {
            return true;
        }
        if let Some(c) = changes.iter().find(|c| c.cursor >= removed_at) {
            let detail = format!(
                "browser {b}'s user was removed from the board at cursor {removed_at}, yet was sent cursor {}",
                c.cursor
            );
            self.fail(Invariant::RevokedDelivered, detail);
            return false;
        }
        true
    }

    /// Sends a feed message on a socket, checking first that the feed never skips a cursor.
    fn send_on_socket(&mut self, sock: u64, msg: ServerMessage) {
        let Some(b) = self.server.sockets.get(&sock).map(|s| s.b) else { return };
        if !self.check_delivery(b, &msg) {
            return;
        }
        let Some(s) = self.server.sockets.get_mut(&sock) else { return };
        match &msg {
            ServerMessage::Changes { stream, changes } => {
                let have = s.sent.get(stream).copied();
                if let (Some(have), Some(first)) = (have, changes.first())
                    && first.cursor != have + 1
                {
                    let (b, t) = (s.b, s.t);
                    let detail = format!("b{b}/t{t}'s socket was sent {stream} from {} after {have}", first.cursor);
                    self.fail(Invariant::FeedGap, detail);
                    return;
                }
                if let Some(last) = changes.last() {
                    s.sent.insert(stream.clone(), last.cursor);
                }
            }
            ServerMessage::Synced { stream, cursor } => {
                if let Some(&handed) = s.handed.get(stream).filter(|&&h| h > *cursor) {
                    let (b, t) = (s.b, s.t);
                    let detail = format!(
                        "b{b}/t{t}'s socket was told {stream} is synced at {cursor}; live changes up to {handed} had reached its session"
                    );
                    self.fail(Invariant::SyncedBehind, detail);
                    return;
                }
                s.sent.insert(stream.clone(), *cursor);
            }
            ServerMessage::Reset { stream, .. } | ServerMessage::Revoked { stream, .. } => {
                s.sent.remove(stream);
            }
            _ => {}
        }
        self.send_to_socket(sock, Some(msg));
    }

    /// Delivers a socket message (or the open event, for `None`) to the socket's tab, in order.
    pub(crate) fn send_to_socket(&mut self, sock: u64, msg: Option<ServerMessage>) {
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

    /// The load balancer's choice: an instance that is up, if any.
    pub(crate) fn pick_instance(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.server.instances.len()).filter(|&i| self.server.instances[i].up).collect();
        (!up.is_empty()).then(|| up[self.rng.random_range(0..up.len())])
    }

    /// Instance `inst` accepts a WebSocket: a new session, and `hello`.
    pub(crate) fn accept_socket(&mut self, b: usize, t: usize, inst: usize) {
        let sock = self.server.next_id;
        self.server.next_id += 1;
        let session = self.server.session(self.users[b], 256 * 1024, 64);
        let socket = ServerSocket {
            b,
            t,
            inst,
            opened_at: self.now,
            session,
            listening: BTreeSet::new(),
            sent: BTreeMap::new(),
            handed: BTreeMap::new(),
        };
        self.server.sockets.insert(sock, socket);
        self.browsers[b].tabs[t].socket = Some(sock);
        self.send_to_socket(sock, None);
        let hello = ServerMessage::Hello { log_id: self.server.log_id, heartbeat_ms: 25_000 };
        self.send_to_socket(sock, Some(hello));
    }

    pub(crate) fn server_socket_message(&mut self, sock: u64, msg: ClientMessage) {
        let Some(s) = self.server.sockets.get_mut(&sock) else { return };
        if let ClientMessage::Subscribe { streams, .. } = &msg {
            // What the client says it has is where the feed continues from.
            for StreamCursor { stream, since } in streams {
                s.sent.insert(stream.clone(), *since);
            }
        }
        self.socket_session(sock, session::Input::Client(msg));
    }

    pub(crate) fn respond(&mut self, b: usize, t: usize, id: u64, status: u16, body: String) {
        let lost_after = self.faults && self.rng.random_bool(self.browsers[b].loss / 2.0);
        let lat = self.latency(b);
        let result = if lost_after || !self.browsers[b].online || self.browsers[b].partitioned {
            HttpResult::NetworkError("connection reset".into())
        } else {
            HttpResult::Response { status, body, etag: None }
        };
        self.schedule(lat, Event::ToTab { b, t, input: Input::Http { id, result } });
    }

    pub(crate) fn server_http(&mut self, b: usize, t: usize, id: u64, request: HttpRequest, epoch: u64) {
        let inst = self.pick_instance();
        let (true, Some(inst)) = (self.server.up && epoch == self.server.epoch, inst) else {
            let lat = self.latency(b);
            let result = HttpResult::NetworkError("refused".into());
            self.schedule(lat, Event::ToTab { b, t, input: Input::Http { id, result } });
            return;
        };
        let log_id = self.server.log_id;
        let user = self.users[b];
        let path = request.path.clone();
        let not_found = |m: String| (404, serde_json::json!({"error": "not_found", "message": m}).to_string());
        let reply: (u16, String) = if request.method == "POST" && path == "/api/writes" {
            let batch: WriteBatch =
                serde_json::from_str(request.body.as_deref().unwrap_or("")).expect("the engine sends valid batches");
            let mut results = Vec::new();
            let mut changes = Vec::new();
            let ctx = WriteContext {
                now_ms: SIM_EPOCH_MS + self.now,
                write_id_ttl_ms: WRITE_ID_TTL_MS,
                quotas: Default::default(),
            };
            for w in batch.writes {
                let allowed = matches!(w.op, WriteOp::CreateBoard { .. })
                    || self.roles.get(&user).is_some_and(|r| *r >= BoardRole::Editor);
                let op = w.op.clone();
                let (outcome, rec) =
                    writes::execute_locked(&mut self.server.conn, user, Some(w.write_id), w.op, ctx).expect("sqlite");
                if outcome.status.is_success() && !outcome.replayed && !allowed {
                    let role = self.roles.get(&user).copied();
                    self.fail(
                        Invariant::UnauthorizedWriteApplied,
                        format!("browser {b}'s write {} was applied; its user's role is {role:?}", w.write_id),
                    );
                }
                changes.extend(rec.changes().iter().cloned());
                if outcome.status.is_success() && !outcome.replayed {
                    *self.applied.entry(w.write_id).or_default() += 1;
                    self.check_lost_update(b, &op, &outcome.body);
                }
                let status = outcome.status.as_u16();
                results.push(WriteOutcome { write_id: w.write_id, status, body: outcome.body, at: outcome.at });
            }
            self.commit(inst, &changes);
            (200, serde_json::to_string(&WriteBatchResult { results }).expect("json"))
        } else if let Some(query) = path.strip_prefix("/api/changes?") {
            let q = parse_query(query);
            let stream: StreamName = q["stream"].parse().expect("stream");
            let since: Cursor = q["since"].parse().expect("since");
            let wait: u64 = q.get("wait").map(|w| w.parse().expect("wait")).unwrap_or(0);
            let client_log = q.get("log_id").map(|l| Uuid::parse_str(l).expect("log id"));
            let hidden = match StreamId::try_from(&stream) {
                Ok(StreamId::Board(board)) => {
                    let tx = self.server.conn.transaction().expect("sqlite");
                    access::can(&tx, user, board, access::Action::Read).is_err()
                }
                _ => false,
            };
            if hidden {
                let (status, body) = not_found(format!("no board {stream}"));
                self.respond(b, t, id, status, body);
                return;
            }
            // A long-poll is a feed session of one stream, answered with its first page (or its reset).
            let mut session = self.server.session(user, usize::MAX, 1);
            let subscribe = ClientMessage::Subscribe {
                streams: vec![StreamCursor { stream: stream.clone(), since }],
                log_id: client_log,
            };
            let mut listening = BTreeSet::new();
            let input = session::Input::Client(subscribe);
            let said = Self::run_session(&self.server.conn, log_id, &mut session, &mut listening, input, None);
            match first_answer(said) {
                Some(msg) => {
                    if !self.check_delivery(b, &msg) {
                        return;
                    }
                    (200, serde_json::to_string(&msg).expect("json"))
                }
                None if wait > 0 => {
                    let park = self.server.next_id;
                    self.server.next_id += 1;
                    let listen = session.log_name(&stream);
                    let epoch = self.server.instances[inst].epoch;
                    self.server.instances[inst].tailer.follow(listen.clone());
                    self.server.parked.insert(park, Parked { b, t, inst, id, stream, listen, session, epoch });
                    self.schedule(wait * 1000, Event::LongPollTimeout { park });
                    return;
                }
                None => {
                    (200, serde_json::to_string(&ServerMessage::Changes { stream, changes: Vec::new() }).expect("json"))
                }
            }
        } else if let Some(rest) = path.strip_prefix("/api/boards/") {
            let (id_part, summary) = match rest.strip_suffix("/summary") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let board = Uuid::parse_str(id_part).expect("board id");
            let tx = self.server.conn.transaction().expect("sqlite");
            let result = if let Err(e) = access::can(&tx, user, board, access::Action::Read) {
                Err(e)
            } else if summary {
                store::board_summary(&tx, board).map(|s| serde_json::to_string(&s).expect("json"))
            } else {
                store::board_snapshot(&tx, board, log_id).map(|s| serde_json::to_string(&s).expect("json"))
            };
            drop(tx);
            match result {
                Ok(body) => (200, body),
                Err(store::StoreError::NotFound(m)) => not_found(m),
                Err(_) => (500, "{}".into()),
            }
        } else if path == "/api/boards" {
            let tx = self.server.conn.transaction().expect("sqlite");
            let list = store::list_boards(&tx, user, log_id).expect("sqlite");
            (200, serde_json::to_string(&list).expect("json"))
        } else {
            (404, "{}".into())
        };
        self.respond(b, t, id, reply.0, reply.1);
    }

    /// A parked long-poll's wait ran out: an empty answer.
    pub(crate) fn long_poll_timeout(&mut self, park: u64) {
        if let Some(p) = self.server.parked.remove(&park) {
            let msg = ServerMessage::Changes { stream: p.stream, changes: Vec::new() };
            self.respond(p.b, p.t, p.id, 200, serde_json::to_string(&msg).expect("json"));
        }
    }

    /// A write committed through instance `inst`: its hub publishes at once, the other instances get a hint (if
    /// their listener is up; a hint may be lost or late).
    pub(crate) fn commit(&mut self, inst: usize, changes: &[syncline_kanban::Change]) {
        for c in changes {
            self.server.heads.insert(c.stream.clone(), (c.cursor, self.now));
        }
        self.server.commits += 1;
        self.publish_on(inst, changes);
        if changes.is_empty() {
            return;
        }
        for other in 0..self.server.instances.len() {
            if other == inst || !self.server.instances[other].listening {
                continue;
            }
            if self.faults && self.rng.random_bool(0.05) {
                continue; // lost
            }
            let delay = self.rng.random_range(0..30);
            let epoch = self.server.instances[other].epoch;
            self.schedule(delay, Event::TailWake { inst: other, epoch });
        }
    }

    /// A tail round of instance `inst` (on a hint or its interval): reads the log now, as a snapshot, and hands
    /// the result back a moment later (`TailRead`); one read at a time, a round asked for meanwhile follows it.
    pub(crate) fn tail_round(&mut self, inst: usize) {
        let i = &mut self.server.instances[inst];
        if !i.up || !self.server.up {
            return;
        }
        if i.reading {
            i.again = true;
            return;
        }
        let plan = i.tailer.plan();
        // Nothing committed since the last read and no new stream: the read would find nothing to publish (its
        // cursors only moved forward since). Skipped to keep 10,000 seeds quick; the outcome is the same.
        let unchanged = i.read_at == Some(self.server.commits) && plan.heads.is_empty();
        if unchanged || (plan.heads.is_empty() && plan.reads.is_empty()) {
            return;
        }
        i.read_at = Some(self.server.commits);
        i.reading = true;
        let epoch = i.epoch;
        let tx = self.server.conn.transaction().expect("sqlite");
        let (heads, changes) = tail::read_plan(&tx, &plan).expect("sqlite");
        drop(tx);
        let delay = self.rng.random_range(0..25);
        self.schedule(delay, Event::TailRead { inst, epoch, heads, changes });
    }

    /// A tail read comes back: the tailer decides what to publish.
    pub(crate) fn tail_read(
        &mut self,
        inst: usize,
        epoch: u64,
        heads: Vec<(StreamName, Cursor)>,
        changes: Vec<syncline_kanban::Change>,
    ) {
        let i = &mut self.server.instances[inst];
        if i.epoch != epoch || !i.up {
            return;
        }
        i.reading = false;
        i.tailer.on_heads(heads);
        let batches = i.tailer.on_read(changes);
        for batch in batches {
            self.publish_on(inst, &batch);
        }
        if std::mem::take(&mut self.server.instances[inst].again) {
            self.tail_round(inst);
        }
    }

    /// Each instance stops following streams none of its sockets and long-polls listen to any more (the hub's
    /// sweep). Following starts only when a session subscribes, as in the server.
    pub(crate) fn refresh_follows(&mut self) {
        for inst in 0..self.server.instances.len() {
            let (sockets, parked) = (&self.server.sockets, &self.server.parked);
            let listened = |stream: &StreamName| {
                sockets.values().any(|s| s.inst == inst && s.listening.contains(stream))
                    || parked.values().any(|p| p.inst == inst && p.listen == *stream)
            };
            // (Runs after every event: allocates only when something is to be dropped.)
            let gone: Vec<StreamName> =
                self.server.instances[inst].tailer.followed().filter(|s| !listened(s)).cloned().collect();
            for s in gone {
                self.server.instances[inst].tailer.unfollow(&s);
            }
        }
    }

    /// Changes reach the live sessions of instance `inst` listening to their streams, in the order given.
    pub(crate) fn publish_on(&mut self, inst: usize, changes: &[syncline_kanban::Change]) {
        let mut by_stream: Vec<(StreamName, Vec<syncline_kanban::Change>)> = Vec::new();
        for c in changes {
            match by_stream.iter_mut().find(|(s, _)| *s == c.stream) {
                Some((_, list)) => list.push(c.clone()),
                None => by_stream.push((c.stream.clone(), vec![c.clone()])),
            }
        }
        for (stream, batch) in by_stream {
            let published = Arc::new(Published::new(stream.clone(), batch.clone(), std::time::Instant::now()));
            if let Some(last) = batch.last() {
                self.server.instances[inst].tailer.published(&stream, last.cursor);
            }
            let socks: Vec<u64> = self
                .server
                .sockets
                .iter()
                .filter(|(_, s)| s.inst == inst && s.listening.contains(&stream))
                .map(|(k, _)| *k)
                .collect();
            for sock in socks {
                if let (Some(s), Some(last)) = (self.server.sockets.get_mut(&sock), batch.last()) {
                    s.handed.insert(client_name(&stream), last.cursor);
                }
                let input = session::Input::Published(published.clone());
                self.socket_session(sock, input);
            }
            let parked: Vec<u64> = self
                .server
                .parked
                .iter()
                .filter(|(_, p)| p.inst == inst && p.listen == stream)
                .map(|(k, _)| *k)
                .collect();
            for park in parked {
                let mut p = self.server.parked.remove(&park).expect("listed");
                if p.epoch != self.server.instances[inst].epoch {
                    continue;
                }
                let input = session::Input::Published(published.clone());
                let mut listening = BTreeSet::new();
                let said = Self::run_session(
                    &self.server.conn,
                    self.server.log_id,
                    &mut p.session,
                    &mut listening,
                    input,
                    None,
                );
                match first_answer(said) {
                    Some(msg) => {
                        if self.check_delivery(p.b, &msg) {
                            self.respond(p.b, p.t, p.id, 200, serde_json::to_string(&msg).expect("json"));
                        }
                    }
                    None => {
                        self.server.parked.insert(park, p);
                    }
                }
            }
        }
    }
}

/// The answer a long-poll gives: the first page of changes, a reset or a revocation (`None`: caught up, nothing
/// yet).
fn first_answer(said: Vec<Said>) -> Option<ServerMessage> {
    said.into_iter().find_map(|s| match s {
        Said::Message(
            msg @ (ServerMessage::Changes { .. } | ServerMessage::Reset { .. } | ServerMessage::Revoked { .. }),
        ) => Some(msg),
        _ => None,
    })
}

fn parse_query(q: &str) -> BTreeMap<&str, &str> {
    q.split('&').filter_map(|kv| kv.split_once('=')).collect()
}
