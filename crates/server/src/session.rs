//! One client's session on the change feed, sans-IO: the streams it follows and the cursor delivered in each;
//! a live batch is forwarded only if it continues that cursor exactly, anything else (a lag, a gap, a subscribe)
//! is served by re-reading the log from the cursor, in pages, then `synced` — or `reset` when the cursor cannot be
//! served. The WebSocket handler (`ws.rs`), the long-poll handler (`api.rs`) and the simulation all drive this
//! one type: they read the log and listen to the hub when it asks, and carry its messages to the client.
//!
//! A session belongs to a user. The client's `boards` is that user's own list (`user:<id>` in the log); a
//! board's stream is read only as the user may (the driver authorizes each read: `access::read_log_as`), and a
//! `member_removed` of this user in a board's changes — live or from the log — ends the stream there: the
//! changes before it are delivered, then `revoked`, and nothing after it.
//!
//! The contract: give it `Input`s, then drain `poll_output` until `None`; answer every `ReadLog` with a
//! `LogRead` for the same stream and cursor.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use syncline_kanban::{Change, ChangeOp, ServerMessage, StreamId, UserId};
use syncline_protocol::feed::close_code;
use syncline_protocol::{ClientMessage, Cursor, StreamCursor, StreamName};
use uuid::Uuid;

use crate::access::user_stream;
use crate::feed::{LogRead, Published};

/// What the session's driver tells it. Streams in inputs and in `Listen`/`Unlisten`/`ReadLog` are the log's
/// names (`user:<id>`, `board:<id>`); in messages to the client, the client's (`boards`, `board:<id>`).
#[derive(Debug)]
pub enum Input {
    /// A message from the client.
    Client(ClientMessage),
    /// A live batch for a stream the session listens to, as published after its commit.
    Published(Arc<Published>),
    /// The driver's live listener for a stream fell behind and dropped batches.
    Lagged { stream: StreamName },
    /// The answer to `Output::ReadLog`.
    LogRead { stream: StreamName, since: Cursor, read: LogRead },
}

/// What the session asks of its driver.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send this to the client.
    Send(ServerMessage),
    /// Send this live batch to the client as published: the message `changes` of its stream, whose encoding every
    /// session that forwards the batch shares ([`Published::encoded`]).
    Forward(Arc<Published>),
    /// Start listening to live batches of this stream (before the log is read, so nothing committed in between is
    /// missed).
    Listen(StreamName),
    Unlisten(StreamName),
    /// Read the log after `since` (at most a page), and answer with `Input::LogRead`.
    ReadLog {
        stream: StreamName,
        since: Cursor,
        client_log_id: Option<Uuid>,
    },
    /// Close the connection with this code and reason (the client broke the protocol or a limit).
    Close {
        code: u16,
        reason: String,
    },
}

/// Limits and sizes of a session.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_subscriptions: usize,
    /// Changes per log read.
    pub page_size: usize,
    /// A page is split into messages of about this many bytes (`usize::MAX`: one message per page).
    pub message_target_bytes: usize,
}

/// A bug the simulation can switch on to show it catches it (feature `bug-injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// A live batch that arrives while the log is being read is dropped, and the stream is said `synced` when the
    /// read ends, as if the read had covered it.
    DropsBatchesDuringCatchUp,
    /// Access is checked when a stream is subscribed (the first read), not at delivery: a member removed while
    /// following a board keeps receiving its changes.
    AuthorizesOnlyAtSubscribe,
}

#[derive(Debug)]
struct Followed {
    /// The stream's name for the client.
    client: StreamName,
    /// The last cursor delivered to the client.
    cursor: Cursor,
    /// A log read is outstanding for this stream.
    reading: bool,
    /// A live batch arrived while the read was outstanding: read again before saying `synced`.
    stale: bool,
    /// The log the client's cursors belong to (from its subscribe), for the first read.
    client_log_id: Option<Uuid>,
}

/// One client's feed session.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    user: UserId,
    /// Keyed by the log's name of the stream.
    streams: BTreeMap<StreamName, Followed>,
    out: VecDeque<Output>,
    bug: Option<InjectedBug>,
}

impl Session {
    pub fn new(settings: Settings, user: UserId) -> Session {
        Session { settings, user, streams: BTreeMap::new(), out: VecDeque::new(), bug: None }
    }

    pub fn user(&self) -> UserId {
        self.user
    }

    /// The log's name of a stream the client names (its `boards` is its own list).
    pub fn log_name(&self, client: &StreamName) -> StreamName {
        if *client == StreamId::Boards { user_stream(self.user) } else { client.clone() }
    }

    /// The same session with a known bug switched on (simulation only).
    #[cfg(feature = "bug-injection")]
    pub fn with_bug(mut self, bug: Option<InjectedBug>) -> Session {
        self.bug = bug;
        self
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Streams followed (by the client's name), with the cursor delivered in each.
    pub fn cursors(&self) -> impl Iterator<Item = (&StreamName, Cursor)> {
        self.streams.values().map(|f| (&f.client, f.cursor))
    }

    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Client(msg) => self.on_client(msg),
            Input::Published(batch) => self.on_published(batch),
            Input::Lagged { stream } => self.read(&stream),
            Input::LogRead { stream, since, read } => self.on_log_read(stream, since, read),
        }
    }

    fn on_client(&mut self, msg: ClientMessage) {
        match msg {
            ClientMessage::Ping { nonce } => self.out.push_back(Output::Send(ServerMessage::Pong { nonce })),
            ClientMessage::Unsubscribe { streams } => {
                for client in streams {
                    let stream = self.log_name(&client);
                    if self.streams.remove(&stream).is_some() {
                        self.out.push_back(Output::Unlisten(stream));
                    }
                }
            }
            ClientMessage::Subscribe { streams, log_id } => {
                let new: BTreeSet<StreamName> = streams
                    .iter()
                    .map(|s| self.log_name(&s.stream))
                    .filter(|s| !self.streams.contains_key(s))
                    .collect();
                if self.streams.len() + new.len() > self.settings.max_subscriptions {
                    let reason = format!("at most {} streams per connection", self.settings.max_subscriptions);
                    self.out.push_back(Output::Close { code: close_code::POLICY_VIOLATION, reason });
                    return;
                }
                for StreamCursor { stream: client, since } in streams {
                    let stream = self.log_name(&client);
                    if !self.streams.contains_key(&stream) {
                        self.out.push_back(Output::Listen(stream.clone()));
                    }
                    let followed =
                        Followed { client, cursor: since, reading: false, stale: false, client_log_id: log_id };
                    self.streams.insert(stream.clone(), followed);
                    self.read(&stream);
                }
            }
        }
    }

    /// Catches the stream up from its cursor (unless a read is already on its way).
    fn read(&mut self, stream: &StreamName) {
        let Some(f) = self.streams.get_mut(stream) else { return };
        if f.reading {
            f.stale = true;
            return;
        }
        f.reading = true;
        f.stale = false;
        let (since, client_log_id) = (f.cursor, f.client_log_id.take());
        self.out.push_back(Output::ReadLog { stream: stream.clone(), since, client_log_id });
    }

    fn on_published(&mut self, batch: Arc<Published>) {
        let stream = &batch.stream;
        let Some(f) = self.streams.get_mut(stream) else { return };
        if f.reading {
            // The read may end before this batch: read again then.
            f.stale = self.bug != Some(InjectedBug::DropsBatchesDuringCatchUp);
            return;
        }
        let Some(from) = batch.changes.iter().map(|c| c.cursor).find(|&c| c > f.cursor) else { return };
        if from != f.cursor + 1 {
            // A gap: fill it from the log (which also covers this batch).
            self.read(stream);
            return;
        }
        // The usual case — the whole batch continues the cursor, under the name the client knows it by, without
        // this user's removal, in one message — is forwarded as published, its encoding shared.
        let whole = batch.changes.first().is_some_and(|c| c.cursor == from)
            && f.client == *stream
            && self.removal(&batch.changes).is_none()
            && batch.encoded().len() <= self.settings.message_target_bytes;
        if whole {
            if let (Some(f), Some(last)) = (self.streams.get_mut(stream), batch.changes.last()) {
                f.cursor = last.cursor;
            }
            self.out.push_back(Output::Forward(batch));
            return;
        }
        let fresh: Vec<Change> = batch.changes.iter().filter(|c| c.cursor >= from).cloned().collect();
        self.deliver(stream, fresh);
    }

    /// Where in these changes this user is removed from their board (the stream ends there).
    fn removal(&self, changes: &[Change]) -> Option<usize> {
        let me = self.user;
        changes
            .iter()
            .position(|c| matches!(c.op, ChangeOp::MemberRemoved { user_id, .. } if user_id == me))
            .filter(|_| self.bug != Some(InjectedBug::AuthorizesOnlyAtSubscribe))
    }

    /// Sends changes that continue the stream's cursor — up to this user's removal from the board, if they carry
    /// it: then the stream ends here, with `revoked`. Returns whether the stream is still followed.
    fn deliver(&mut self, stream: &StreamName, mut changes: Vec<Change>) -> bool {
        let removal = self.removal(&changes);
        if let Some(at) = removal {
            changes.truncate(at);
        }
        let Some(f) = self.streams.get_mut(stream) else { return false };
        let client = f.client.clone();
        if let Some(last) = changes.last() {
            f.cursor = last.cursor;
        }
        for mut changes in split_by_size(changes, self.settings.message_target_bytes) {
            for c in &mut changes {
                c.stream = client.clone();
            }
            self.out.push_back(Output::Send(ServerMessage::Changes { stream: client.clone(), changes }));
        }
        if removal.is_some() {
            self.revoke(stream, "your access to this board was removed".into());
            return false;
        }
        true
    }

    /// Stops following a stream the user may not (or no longer) see, and tells the client.
    fn revoke(&mut self, stream: &StreamName, reason: String) {
        if let Some(f) = self.streams.remove(stream) {
            self.out.push_back(Output::Unlisten(stream.clone()));
            self.out.push_back(Output::Send(ServerMessage::Revoked { stream: f.client, reason }));
        }
    }

    fn on_log_read(&mut self, stream: StreamName, since: Cursor, read: LogRead) {
        let Some(f) = self.streams.get_mut(&stream) else { return };
        if !f.reading || f.cursor != since {
            return; // not the read we asked for (the client resubscribed meanwhile)
        }
        f.reading = false;
        match read {
            LogRead::Reset(reason) => {
                let client = f.client.clone();
                self.streams.remove(&stream);
                self.out.push_back(Output::Unlisten(stream.clone()));
                self.out.push_back(Output::Send(ServerMessage::Reset { stream: client, reason }));
            }
            LogRead::Revoked(reason) => self.revoke(&stream, reason),
            LogRead::Changes(changes) => {
                let full = changes.len() >= self.settings.page_size;
                let stale = f.stale;
                if !self.deliver(&stream, changes) {
                    return;
                }
                let f = self.streams.get(&stream).expect("still followed");
                let (client, cursor) = (f.client.clone(), f.cursor);
                if full || stale {
                    self.read(&stream);
                } else {
                    self.out.push_back(Output::Send(ServerMessage::Synced { stream: client, cursor }));
                }
            }
        }
    }
}

/// Splits a page of changes into runs whose JSON stays around `target` bytes (none if the page is empty).
fn split_by_size(changes: Vec<Change>, target: usize) -> Vec<Vec<Change>> {
    let mut out: Vec<Vec<Change>> = Vec::new();
    let mut size = 0;
    for change in changes {
        // The size of a change's JSON, without building it twice: its op's payload dominates.
        let estimate = serde_json::to_vec(&change.op).map(|v| v.len()).unwrap_or(0) + 128;
        if out.is_empty() || (size + estimate > target && !out.last().is_some_and(Vec::is_empty)) {
            out.push(Vec::new());
            size = 0;
        }
        size = size.saturating_add(estimate);
        out.last_mut().expect("never empty").push(change);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncline_kanban::{ChangeOp, StreamId};

    fn settings() -> Settings {
        Settings { max_subscriptions: 2, page_size: 3, message_target_bytes: usize::MAX }
    }

    fn stream() -> StreamName {
        StreamId::Board(Uuid::from_u128(5)).name()
    }

    fn change(cursor: Cursor) -> Change {
        Change {
            stream: stream(),
            cursor,
            at_ms: 0,
            write_id: None,
            op: ChangeOp::BoardDeleted { id: Uuid::from_u128(cursor as u128) },
        }
    }

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn subscribe(s: &mut Session, since: Cursor) -> Vec<Output> {
        let streams = vec![StreamCursor { stream: stream(), since }];
        s.handle(Input::Client(ClientMessage::Subscribe { streams, log_id: None }));
        drain(s)
    }

    #[test]
    fn a_subscribe_listens_then_reads_then_pages_then_says_synced() {
        let mut s = Session::new(settings(), Uuid::from_u128(77));
        let out = subscribe(&mut s, 2);
        assert_eq!(
            out,
            vec![Output::Listen(stream()), Output::ReadLog { stream: stream(), since: 2, client_log_id: None }]
        );
        s.handle(Input::LogRead {
            stream: stream(),
            since: 2,
            read: LogRead::Changes(vec![change(3), change(4), change(5)]),
        });
        let out = drain(&mut s);
        assert!(matches!(&out[0], Output::Send(ServerMessage::Changes { changes, .. }) if changes.len() == 3));
        assert_eq!(out[1], Output::ReadLog { stream: stream(), since: 5, client_log_id: None }, "a full page: read on");
        s.handle(Input::LogRead { stream: stream(), since: 5, read: LogRead::Changes(vec![change(6)]) });
        let out = drain(&mut s);
        assert_eq!(out[1], Output::Send(ServerMessage::Synced { stream: stream(), cursor: 6 }));
    }

    fn published(changes: Vec<Change>) -> Input {
        Input::Published(Arc::new(Published::new(stream(), changes, std::time::Instant::now())))
    }

    /// A session subscribed to `stream()` and synced at `cursor`.
    fn synced_at(user: UserId, cursor: Cursor) -> Session {
        let mut s = Session::new(settings(), user);
        subscribe(&mut s, cursor);
        s.handle(Input::LogRead { stream: stream(), since: cursor, read: LogRead::Changes(vec![]) });
        drain(&mut s);
        s
    }

    #[test]
    fn a_live_batch_goes_out_only_if_it_continues_the_cursor() {
        let mut s = synced_at(Uuid::from_u128(77), 0);
        s.handle(published(vec![change(1), change(2)]));
        assert!(matches!(&drain(&mut s)[..], [Output::Forward(batch)] if batch.changes.len() == 2));
        // A batch that skips cursor 3: the log fills the gap instead.
        s.handle(published(vec![change(4)]));
        assert_eq!(drain(&mut s), vec![Output::ReadLog { stream: stream(), since: 2, client_log_id: None }]);
        // A batch during the read is not lost: the read goes again before `synced`.
        s.handle(published(vec![change(5)]));
        assert!(drain(&mut s).is_empty());
        s.handle(Input::LogRead { stream: stream(), since: 2, read: LogRead::Changes(vec![change(3), change(4)]) });
        let out = drain(&mut s);
        assert_eq!(out.last(), Some(&Output::ReadLog { stream: stream(), since: 4, client_log_id: None }));
    }

    #[test]
    fn a_forwarded_batch_is_encoded_once_as_the_changes_message_it_stands_for() {
        let (mut a, mut b) = (synced_at(Uuid::from_u128(1), 0), synced_at(Uuid::from_u128(2), 0));
        let batch = Arc::new(Published::new(stream(), vec![change(1), change(2)], std::time::Instant::now()));
        a.handle(Input::Published(batch.clone()));
        b.handle(Input::Published(batch.clone()));
        let (Some(Output::Forward(x)), Some(Output::Forward(y))) = (a.poll_output(), b.poll_output()) else {
            panic!("both forward the batch")
        };
        assert!(std::ptr::eq(x.encoded().as_str(), y.encoded().as_str()), "one encoding, shared");
        let message = ServerMessage::Changes { stream: stream(), changes: vec![change(1), change(2)] };
        assert_eq!(x.encoded().as_str(), serde_json::to_string(&message).unwrap());
        assert_eq!(x.message(), message);
    }

    #[test]
    fn a_batch_not_forwarded_whole_is_sent_as_this_client_should_see_it() {
        // Part of it was delivered already (from the log): only the rest goes.
        let mut s = synced_at(Uuid::from_u128(77), 1);
        s.handle(published(vec![change(1), change(2)]));
        assert!(matches!(&drain(&mut s)[..],
            [Output::Send(ServerMessage::Changes { changes, .. })] if changes.iter().map(|c| c.cursor).eq([2])));
        // It removes this user from the board: the changes before it, then `revoked`.
        let me = Uuid::from_u128(77);
        let removed = Change { op: ChangeOp::MemberRemoved { board_id: Uuid::from_u128(5), user_id: me }, ..change(4) };
        s.handle(published(vec![change(3), removed]));
        let out = drain(&mut s);
        assert!(matches!(&out[0], Output::Send(ServerMessage::Changes { changes, .. }) if changes.len() == 1));
        assert_eq!(out[1], Output::Unlisten(stream()));
        assert!(matches!(&out[2], Output::Send(ServerMessage::Revoked { .. })));
        // Larger than a message: split.
        let settings = Settings { message_target_bytes: 200, ..settings() };
        let mut s = Session::new(settings, me);
        subscribe(&mut s, 0);
        s.handle(Input::LogRead { stream: stream(), since: 0, read: LogRead::Changes(vec![]) });
        drain(&mut s);
        s.handle(published(vec![change(1), change(2), change(3)]));
        let out = drain(&mut s);
        assert!(out.len() > 1 && out.iter().all(|o| matches!(o, Output::Send(ServerMessage::Changes { .. }))));
    }

    #[test]
    fn the_users_own_list_is_sent_under_the_name_the_client_knows() {
        let me = Uuid::from_u128(77);
        let mut s = Session::new(settings(), me);
        let streams = vec![StreamCursor { stream: StreamId::Boards.name(), since: 0 }];
        s.handle(Input::Client(ClientMessage::Subscribe { streams, log_id: None }));
        drain(&mut s);
        let own = user_stream(me);
        s.handle(Input::LogRead { stream: own.clone(), since: 0, read: LogRead::Changes(vec![]) });
        drain(&mut s);
        let change = Change { stream: own.clone(), ..change(1) };
        s.handle(Input::Published(Arc::new(Published::new(own, vec![change], std::time::Instant::now()))));
        let out = drain(&mut s);
        let [Output::Send(ServerMessage::Changes { stream, changes })] = &out[..] else { panic!("{out:?}") };
        assert_eq!(*stream, StreamId::Boards.name());
        assert_eq!(changes[0].stream, StreamId::Boards.name());
    }

    #[test]
    fn a_cursor_that_cannot_be_served_resets_and_too_many_streams_close() {
        let mut s = Session::new(settings(), Uuid::from_u128(77));
        subscribe(&mut s, 9);
        s.handle(Input::LogRead { stream: stream(), since: 9, read: LogRead::Reset("gone".into()) });
        let out = drain(&mut s);
        assert_eq!(out[0], Output::Unlisten(stream()));
        assert!(matches!(&out[1], Output::Send(ServerMessage::Reset { .. })));
        let streams =
            (0..3).map(|i| StreamCursor { stream: StreamId::Board(Uuid::from_u128(i)).name(), since: 0 }).collect();
        s.handle(Input::Client(ClientMessage::Subscribe { streams, log_id: None }));
        assert!(matches!(&drain(&mut s)[..], [Output::Close { code: 1008, .. }]));
    }
}
