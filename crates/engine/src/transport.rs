//! The transport: one WebSocket to the feed (or long-polls when it fails), the streams it follows and the cursor
//! each is at. Socket states closed → opening → open (hello) → live; full-jitter backoff on one counter of
//! failed attempts by any transport; fallback to long-poll after repeated socket failures — provisionally, since
//! long-polls that fail too mean the server is out of reach, not its WebSocket; probes back to the socket;
//! heartbeat; letting go when no tab is visible.
//!
//! State: [`Transport`]. Policy: the `impl Engine` block below.

use crate::collections::Map;

use rand::Rng;
use syncline_protocol::{ClientMessage, Cursor, ServerMessage, StreamCursor, StreamName};
use uuid::Uuid;

use crate::engine::{Engine, Purpose};
use crate::model::Model;
use crate::policy::{self, PollContext};
use crate::timers::{Soonest, Timer};
use crate::types::*;

/// Where a stream's subscription on the socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    None,
    Subscribing,
    Synced,
}

/// One followed stream.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub sub: Sub,
    /// Last cursor the socket delivered (what the server thinks we have).
    pub delivered: Option<Cursor>,
    pub longpoll: Option<RequestId>,
    pub next_longpoll: Millis,
    pub poll_failures: u32,
    /// A long-poll has answered since the last failure: the stream is followed.
    pub polled_ok: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Stream { sub: Sub::None, delivered: None, longpoll: None, next_longpoll: 0, poll_failures: 0, polled_ok: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conn {
    Closed,
    Opening { since: Millis },
    Open { hello: bool, last_heard: Millis, next_ping: Millis },
    Backoff { until: Millis },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Socket,
    /// Long-poll; try the socket again at `next_probe`.
    Fallback {
        next_probe: Millis,
    },
}

/// The transport's state.
#[derive(Debug)]
pub(crate) struct Transport {
    pub conn: Conn,
    pub mode: Mode,
    pub streams: Map<StreamName, Stream>,
    /// Consecutive socket failures: reaching `fallback_after_failures` switches to long-poll.
    pub socket_failures: u32,
    /// Consecutive failed attempts to reach the server by any transport (socket or long-poll): the reconnect
    /// backoff grows with it, whichever transport is tried next.
    pub reconnect_attempts: u32,
    /// The last HTTP request that ended since the socket was last live (or since start) got an answer.
    pub http_answered: bool,
    /// The last socket failure came while the server answered HTTP (it is the WebSocket that fails, not the
    /// server); otherwise it may have been the server, down at the time.
    pub socket_blamed: bool,
    /// `http_answered` when the current socket attempt began: an answer that came while the attempt was under
    /// way does not say the server was up when the attempt was refused (it may have come up in between).
    pub answered_before_attempt: bool,
    pub ever_opened: bool,
    /// The change log the server said it serves (`hello`).
    pub log_id: Option<Uuid>,
    pub next_nonce: u64,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            conn: Conn::Closed,
            mode: Mode::Socket,
            streams: Map::new(),
            socket_failures: 0,
            reconnect_attempts: 0,
            http_answered: false,
            socket_blamed: false,
            answered_before_attempt: false,
            ever_opened: false,
            log_id: None,
            next_nonce: 1,
        }
    }
}

/// A socket that has not opened after this long is given up on (counts as a failure).
const OPEN_TIMEOUT_MS: Millis = 10_000;

impl Transport {
    pub fn socket_ready(&self) -> bool {
        matches!(self.conn, Conn::Open { hello: true, .. })
    }

    /// A socket is on its way up (opening, or open without its `hello` yet).
    pub fn opening(&self) -> bool {
        matches!(self.conn, Conn::Opening { .. } | Conn::Open { hello: false, .. })
    }

    pub fn in_fallback(&self) -> bool {
        matches!(self.mode, Mode::Fallback { .. })
    }

    /// Whether the transport keeps this stream current without timed refetches.
    pub fn follows(&self, stream: &StreamName) -> bool {
        let s = self.streams.get(stream);
        if self.socket_ready() {
            return s.is_some_and(|s| s.sub == Sub::Synced);
        }
        self.in_fallback() && s.is_some_and(|s| s.polled_ok)
    }

    /// Whether it followed this stream up to now (synced on the socket, or long-polled successfully).
    pub fn was_following(&self, stream: &StreamName) -> bool {
        self.streams.get(stream).is_some_and(|s| s.sub == Sub::Synced || s.polled_ok)
    }

    /// Whether the socket has (or is asking for) a subscription to this stream.
    pub fn subscribed(&self, stream: &StreamName) -> bool {
        self.streams.get(stream).is_some_and(|s| s.sub != Sub::None)
    }

    /// A snapshot at `cursor` arrived while the socket had already delivered past it: replay from the snapshot.
    pub fn replay_if_past(&mut self, stream: &StreamName, cursor: Cursor) {
        if let Some(s) = self.streams.get_mut(stream)
            && s.delivered.is_some_and(|d| d > cursor)
        {
            s.sub = Sub::None;
        }
    }

    /// Some long-poll answered since the last failure.
    pub fn polled_ok(&self) -> bool {
        self.streams.values().any(|s| s.polled_ok)
    }

    fn reset_subscriptions(&mut self) {
        for s in self.streams.iter_mut().map(|(_, v)| v) {
            s.sub = Sub::None;
            s.delivered = None;
        }
    }

    /// When the transport next needs the engine (`leader`: long-polls are the leader's).
    pub fn poll_timeout(&self, leader: bool, ping_interval: Millis, soonest: &mut Soonest) {
        match self.conn {
            Conn::Backoff { until } => soonest.at(until, Timer::Reconnect),
            Conn::Open { last_heard, next_ping, .. } => {
                soonest.at(next_ping, Timer::Ping);
                soonest.at(last_heard + 2 * ping_interval, Timer::Heartbeat);
            }
            Conn::Opening { since } => soonest.at(since + OPEN_TIMEOUT_MS, Timer::OpenTimeout),
            Conn::Closed => {}
        }
        if let Mode::Fallback { next_probe } = self.mode {
            soonest.at(next_probe, Timer::Probe);
            if leader {
                for s in self.streams.values().filter(|s| s.longpoll.is_none()) {
                    soonest.at(s.next_longpoll, Timer::LongPoll);
                }
            }
        }
    }
}

impl<M: Model> Engine<M> {
    fn socket_wanted(&self) -> bool {
        self.env.online && self.prefs.realtime && self.active() && !self.wanted_streams().is_empty()
    }

    /// Brings the socket where it should be: open when wanted (after any backoff or probe delay), closed when
    /// offline, hidden past the grace period or realtime is off; heartbeats and timeouts.
    pub(crate) fn transport(&mut self) {
        let online = self.env.online;
        if !online || !self.socket_wanted() {
            if !online || !self.active() || !self.prefs.realtime {
                self.drop_socket(if !online { "offline" } else { "no visible tab" });
                if !online || !self.prefs.realtime {
                    return;
                }
            }
            if matches!(self.transport.conn, Conn::Backoff { until } if self.now >= until) {
                self.transport.conn = Conn::Closed;
            }
            return;
        }
        match self.transport.conn {
            Conn::Backoff { until } if self.now >= until => self.open_socket(),
            Conn::Closed => match self.transport.mode {
                Mode::Socket => self.open_socket(),
                Mode::Fallback { next_probe } if self.now >= next_probe => {
                    let wait = self.probe_delay();
                    self.transport.mode = Mode::Fallback { next_probe: self.now + wait };
                    self.open_socket();
                }
                Mode::Fallback { .. } => {}
            },
            Conn::Opening { since } if self.now >= since + OPEN_TIMEOUT_MS => {
                self.out.push_back(Output::CloseSocket { code: 1000, reason: "open timed out".into() });
                self.on_socket_closed();
            }
            Conn::Open { last_heard, next_ping, hello } => {
                if self.now >= last_heard + 2 * self.cfg.ping_interval_ms {
                    self.out.push_back(Output::CloseSocket { code: 4000, reason: "heartbeat timeout".into() });
                    self.on_socket_closed();
                } else if self.now >= next_ping && hello {
                    let nonce = self.transport.next_nonce;
                    self.transport.next_nonce += 1;
                    self.send_socket(ClientMessage::Ping { nonce });
                    self.transport.conn =
                        Conn::Open { hello, last_heard, next_ping: self.now + self.cfg.ping_interval_ms };
                }
            }
            _ => {}
        }
    }

    fn open_socket(&mut self) {
        self.transport.conn = Conn::Opening { since: self.now };
        self.transport.answered_before_attempt = self.transport.http_answered;
        self.out.push_back(Output::OpenSocket);
    }

    /// Waits before the next socket attempt, longer after each failed attempt to reach the server.
    pub(crate) fn socket_backoff(&mut self) {
        let cap = self.cfg.backoff_max_ms.min(self.prefs.max_retry_delay_ms);
        let delay = policy::full_jitter(&mut self.rng, self.transport.reconnect_attempts, self.cfg.backoff_min_ms, cap);
        self.transport.conn = Conn::Backoff { until: self.now + delay };
    }

    /// The server answered an HTTP request. If the socket is waiting out a backoff after failures that came while
    /// nothing on the server answered (it was down or out of reach), the server is back: try the socket now
    /// rather than at the end of a backoff grown during the outage. (A failure that came while HTTP worked blames
    /// the WebSocket itself; that backoff stands, on its way to the long-poll fallback.)
    pub(crate) fn on_server_answered(&mut self) {
        let t = &mut self.transport;
        t.http_answered = true;
        if !t.socket_blamed && matches!(t.conn, Conn::Backoff { until } if until > self.now) {
            t.conn = Conn::Backoff { until: self.now };
        }
    }

    /// While on long-poll, the next try of the socket: half to one probe interval away.
    fn probe_delay(&mut self) -> Millis {
        self.cfg.probe_interval_ms / 2 + self.rng.random_range(0..=self.cfg.probe_interval_ms / 2)
    }

    pub(crate) fn on_socket_opened(&mut self) {
        if let Conn::Opening { .. } = self.transport.conn {
            let t = &mut self.transport;
            t.conn = Conn::Open { hello: false, last_heard: self.now, next_ping: self.now + self.cfg.ping_interval_ms };
            self.metrics.socket_opens += 1;
            if t.ever_opened {
                self.metrics.reconnects += 1;
            }
            t.ever_opened = true;
        }
    }

    /// The socket closed (or we gave up on it): a failure, counted toward the fallback to long-poll.
    pub(crate) fn on_socket_closed(&mut self) {
        let was = self.transport.conn;
        if matches!(was, Conn::Closed | Conn::Backoff { .. }) {
            return; // we closed it ourselves, or already handled
        }
        self.mark_current_now();
        let t = &mut self.transport;
        t.reset_subscriptions();
        let worked = matches!(was, Conn::Open { hello: true, .. });
        if worked {
            t.http_answered = false;
        }
        t.socket_blamed = t.http_answered && t.answered_before_attempt;
        t.socket_failures = if worked { 1 } else { t.socket_failures + 1 };
        t.reconnect_attempts = if worked { 1 } else { t.reconnect_attempts + 1 };
        t.conn = Conn::Closed;
        if !self.env.online || !self.is_leader() {
            return;
        }
        if self.transport.socket_failures >= self.cfg.fallback_after_failures {
            // Long-poll, provisionally: if the long-polls fail too, it is the server that is out of reach, not its
            // WebSocket, and `on_long_poll_result` goes back to the socket.
            let next_probe = self.now + self.probe_delay();
            self.transport.mode = Mode::Fallback { next_probe };
            for s in self.transport.streams.iter_mut().map(|(_, v)| v) {
                s.polled_ok = false;
                s.poll_failures = 0;
                s.next_longpoll = self.now;
            }
        } else {
            self.socket_backoff();
        }
    }

    pub(crate) fn on_socket_message(&mut self, text: &str) {
        self.metrics.socket_messages_in += 1;
        self.metrics.bytes_in += text.len() as u64;
        if let Conn::Open { last_heard, .. } = &mut self.transport.conn {
            *last_heard = self.now;
        } else {
            return;
        }
        let Ok(msg) = serde_json::from_str::<ServerMessage<M::Change>>(text) else { return };
        match msg {
            ServerMessage::Hello { log_id, .. } => {
                if self.transport.log_id.is_some_and(|known| known != log_id) {
                    self.forget_cursors();
                }
                let t = &mut self.transport;
                t.log_id = Some(log_id);
                if let Conn::Open { hello, .. } = &mut t.conn {
                    *hello = true;
                }
                t.socket_failures = 0;
                t.reconnect_attempts = 0;
                if t.in_fallback() {
                    // The probe worked: upgrade back to live.
                    t.mode = Mode::Socket;
                    self.cancel_long_polls();
                }
            }
            ServerMessage::Changes { stream, changes } => {
                if let Some(last) = changes.last() {
                    self.transport.streams.entry(stream.clone()).or_default().delivered = Some(last.cursor);
                }
                self.apply_changes(&stream, &changes);
                self.confirm_from_feed(&changes);
                self.share_changes(stream, changes);
            }
            ServerMessage::Synced { stream, cursor } => {
                let s = self.transport.streams.entry(stream.clone()).or_default();
                s.sub = Sub::Synced;
                s.delivered = Some(cursor);
                self.mark_stream_current(&stream);
            }
            ServerMessage::Reset { stream, .. } => {
                let s = self.transport.streams.entry(stream.clone()).or_default();
                s.sub = Sub::None;
                s.delivered = None;
                self.invalidate_stream(&stream);
            }
            ServerMessage::Revoked { stream, .. } => {
                self.transport.streams.remove(&stream);
                self.revoke_stream(&stream);
            }
            ServerMessage::Pong { .. } => {}
        }
    }

    fn send_socket(&mut self, msg: ClientMessage) {
        self.metrics.socket_messages_out += 1;
        self.metrics.bytes_out += serde_json::to_string(&msg).map_or(0, |t| t.len() as u64);
        self.out.push_back(Output::SendSocket(msg));
    }

    pub(crate) fn drop_socket(&mut self, reason: &str) {
        if matches!(self.transport.conn, Conn::Opening { .. } | Conn::Open { .. }) {
            self.mark_current_now();
            self.out.push_back(Output::CloseSocket { code: 1000, reason: reason.into() });
        }
        self.transport.conn = Conn::Closed;
        self.transport.reset_subscriptions();
    }

    /// The server serves another change log than the one our cursors belong to: every copy is suspect.
    fn forget_cursors(&mut self) {
        self.tabs.recent.clear();
        for q in self.queries.map.iter_mut().map(|(_, v)| v) {
            q.invalidated = true;
            q.ahead_to = 0;
        }
        self.transport.reset_subscriptions();
    }

    /// Every wanted stream with a cursor is subscribed on the socket; streams no longer wanted are dropped.
    pub(crate) fn subscriptions(&mut self) {
        if !self.transport.socket_ready() {
            return;
        }
        let wanted = self.wanted_streams();
        let mut subscribe = Vec::new();
        for (stream, cursor) in &wanted {
            let s = self.transport.streams.entry(stream.clone()).or_default();
            if let (Sub::None, Some(since)) = (s.sub, cursor) {
                s.sub = Sub::Subscribing;
                subscribe.push(StreamCursor { stream: stream.clone(), since: *since });
            }
        }
        let unwanted: Vec<StreamName> = self
            .transport
            .streams
            .iter()
            .filter(|(s, st)| st.sub != Sub::None && !wanted.contains_key(*s))
            .map(|(s, _)| s.clone())
            .collect();
        if !subscribe.is_empty() {
            self.send_socket(ClientMessage::Subscribe { streams: subscribe, log_id: self.transport.log_id });
        }
        if !unwanted.is_empty() {
            for s in &unwanted {
                self.transport.streams.remove(s);
            }
            self.send_socket(ClientMessage::Unsubscribe { streams: unwanted });
        }
    }

    /// On the socket and caught up on every stream it follows.
    pub(crate) fn live(&self) -> bool {
        // Streams without data yet are being fetched; they join once they have a cursor and do not hold back
        // the others (or the outbox that may be what creates them).
        self.transport.socket_ready()
            && self
                .wanted_streams()
                .iter()
                .filter(|(_, c)| c.is_some())
                .all(|(s, _)| self.transport.streams.get(s).is_some_and(|st| st.sub == Sub::Synced))
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

    /// While falling back, one long-poll per followed stream, each after the previous answered (and its gap).
    pub(crate) fn long_polls(&mut self) {
        let fallback = self.transport.in_fallback() && self.prefs.realtime && !self.transport.socket_ready();
        let ctx = PollContext { visible: self.active(), ..self.poll_context(true) };
        let wanted = if fallback && self.env.online { self.wanted_streams() } else { Map::new() };
        // No tab active: long-polls continue only if the background preference polls at all.
        let allowed = ctx.visible || policy::poll_interval(&self.prefs, &ctx).is_some();
        let cancel: Vec<RequestId> = self
            .transport
            .streams
            .iter()
            .filter(|(s, st)| st.longpoll.is_some() && (!wanted.contains_key(*s) || !allowed))
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
            let s = self.transport.streams.entry(stream.clone()).or_default();
            if s.longpoll.is_some() || self.now < s.next_longpoll {
                continue;
            }
            // The first long-poll of a stream (or the first after a failure) asks without waiting: it is also how
            // the engine learns that the server answers at all (a held request says nothing for 25 s).
            let wait = if ctx.visible && s.polled_ok { self.cfg.longpoll_wait_s } else { 0 };
            let mut path = format!("{}?stream={stream}&since={since}&wait={wait}", self.cfg.endpoints.changes);
            if let Some(log) = self.transport.log_id {
                path.push_str(&format!("&log_id={log}"));
            }
            let request = HttpRequest { method: "GET", path, body: None, if_none_match: None };
            let id = self.request(Purpose::LongPoll(stream.clone()), request);
            self.metrics.long_polls += 1;
            self.transport.streams.get_mut(&stream).expect("present").longpoll = Some(id);
        }
    }

    pub(crate) fn on_long_poll_result(&mut self, stream: StreamName, id: RequestId, result: HttpResult) {
        let s = self.transport.streams.entry(stream.clone()).or_default();
        if s.longpoll == Some(id) {
            s.longpoll = None;
        }
        // No answer at all (as opposed to an answer we cannot use).
        let unreachable = matches!(result, HttpResult::NetworkError(_));
        let msg = match result {
            HttpResult::Response { status: 200, body, .. } => {
                serde_json::from_str::<ServerMessage<M::Change>>(&body).ok()
            }
            // The stream is not ours to follow (never was, or no longer): as `revoked`.
            HttpResult::Response { status: 403 | 404, .. } => {
                Some(ServerMessage::Revoked { stream: stream.clone(), reason: "not found".into() })
            }
            _ => None,
        };
        match msg {
            Some(ServerMessage::Revoked { .. }) => {
                self.transport.streams.remove(&stream);
                self.revoke_stream(&stream);
            }
            Some(ServerMessage::Changes { changes, .. }) => {
                let gap = self.longpoll_gap(changes.is_empty());
                // The first answer of a fallback whose last socket failure came while nothing on the server
                // answered: that failure may have been the server's (it was down, now it is back). Try the socket
                // now rather than at the next probe.
                let t = &mut self.transport;
                if !t.polled_ok() && !t.socket_blamed && t.in_fallback() {
                    t.mode = Mode::Fallback { next_probe: self.now };
                }
                t.reconnect_attempts = 0;
                let s = t.streams.entry(stream.clone()).or_default();
                s.poll_failures = 0;
                s.polled_ok = true;
                s.next_longpoll = self.now.saturating_add(gap);
                self.apply_changes(&stream, &changes);
                self.confirm_from_feed(&changes);
                self.mark_stream_current(&stream);
                if !changes.is_empty() {
                    self.share_changes(stream, changes);
                }
            }
            Some(ServerMessage::Reset { .. }) => {
                let s = self.transport.streams.entry(stream.clone()).or_default();
                s.poll_failures = 0;
                s.next_longpoll = self.now;
                self.invalidate_stream(&stream);
            }
            _ if unreachable && self.transport.in_fallback() && !self.transport.polled_ok() => {
                // Nothing on the server answers, long-polls included: the failures that brought us here say nothing
                // about its WebSocket. Back to the socket, which is tried first when the server returns. One more
                // socket failure and the long-poll checks again whether the server answers.
                let t = &mut self.transport;
                t.reconnect_attempts += 1;
                t.socket_failures = self.cfg.fallback_after_failures.saturating_sub(1);
                t.mode = Mode::Socket;
                self.cancel_long_polls();
                if matches!(self.transport.conn, Conn::Closed) {
                    self.socket_backoff();
                }
            }
            _ => {
                let s = self.transport.streams.entry(stream.clone()).or_default();
                s.poll_failures += 1;
                s.polled_ok = false;
                let failures = s.poll_failures;
                let delay = policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, failures);
                self.transport.streams.get_mut(&stream).expect("present").next_longpoll = self.now + delay;
            }
        }
    }

    pub(crate) fn cancel_long_polls(&mut self) {
        let ids: Vec<RequestId> = self.transport.streams.values().filter_map(|s| s.longpoll).collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// The network is back: reconnect at once (no waiting out a backoff timer), socket first, and forget what
    /// the failures while offline said.
    pub(crate) fn transport_online(&mut self) {
        let t = &mut self.transport;
        if matches!(t.conn, Conn::Backoff { .. }) {
            t.conn = Conn::Closed;
        }
        t.socket_failures = 0;
        t.reconnect_attempts = 0;
        t.http_answered = false; // what answered before going offline says nothing about now
        t.mode = Mode::Socket;
        for s in t.streams.iter_mut().map(|(_, v)| v) {
            s.next_longpoll = self.now;
            s.poll_failures = 0;
        }
    }

    /// "Retry now": the next attempt is now, whatever the backoff said.
    pub(crate) fn transport_retry_now(&mut self) {
        let t = &mut self.transport;
        if matches!(t.conn, Conn::Backoff { .. }) {
            t.conn = Conn::Closed;
        }
        if t.in_fallback() {
            t.mode = Mode::Fallback { next_probe: self.now };
        }
        for s in t.streams.iter_mut().map(|(_, v)| v) {
            s.next_longpoll = s.next_longpoll.min(self.now);
        }
    }

    /// Becoming leader: start afresh on the socket.
    pub(crate) fn transport_take_over(&mut self) {
        let t = &mut self.transport;
        t.socket_failures = 0;
        t.reconnect_attempts = 0;
        t.mode = Mode::Socket;
        // What the server answered when this tab led before says nothing about now.
        t.http_answered = false;
        t.socket_blamed = false;
    }

    /// The earliest time a long-poll or probe is due (for status text).
    pub(crate) fn next_probe(&self) -> Option<Millis> {
        match self.transport.mode {
            Mode::Fallback { next_probe } => Some(next_probe),
            Mode::Socket => None,
        }
    }
}
