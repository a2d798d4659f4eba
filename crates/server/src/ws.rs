//! The live feed: `GET /api/feed` upgraded to a WebSocket, driving one feed [`Session`] per connection.
//!
//! The session holds, per stream it follows, the last cursor it delivered; live batches from the hub are
//! forwarded when they continue that cursor exactly, anything else (a lag, a gap, a resubscribe) is served by
//! re-reading the log from the cursor, in pages. So a connection's memory is bounded by one page and the socket's
//! buffers, whatever the write rate or however slowly the client reads.
//!
//! A connection needs a signed-in session and belongs to its user (the session authorizes each log read, and cuts
//! a board off at its user's removal). When the session ends — sign-out, a password change, expiry — the
//! connection closes with 4001.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use futures_util::stream::StreamExt;
use syncline_kanban::{ServerMessage, StreamId};
use syncline_protocol::feed::close_code;
use syncline_protocol::{ClientMessage, ErrorCode, StreamName};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::AppState;
use crate::access;
use crate::auth::CurrentUser;
use crate::error::AppError;
use crate::feed::Published;
use crate::guard::Origins;
use crate::session::{self, Session, Settings};

/// Refuses cross-site WebSocket hijacking: a browser always sends `Origin`; it must be one of this server's public
/// origins (never compared with `Host`, which a rebound DNS name controls) or one the operator allowed. Clients
/// that are not browsers send none and are let through (they still need a session).
pub fn check_origin(headers: &HeaderMap, origins: &Origins) -> Result<(), AppError> {
    let Some(origin) = headers.get("origin") else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default();
    if origins.may_open_feed(origin) {
        Ok(())
    } else {
        Err(AppError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            format!("origin {origin:?} may not open this feed"),
        ))
    }
}

pub async fn feed(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<CurrentUser, AppError>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Err(e) = check_origin(&headers, &state.origins) {
        return e.into_response();
    }
    let user = match user {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    if !state.websockets.load(std::sync::atomic::Ordering::Relaxed) {
        return AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::WebsocketUnavailable,
            "the WebSocket feed is turned off here; use GET /api/changes",
        )
        .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let message = format!("the feed is a WebSocket: {}", rejection.body_text());
            return AppError::new(StatusCode::UPGRADE_REQUIRED, ErrorCode::UpgradeRequired, message).into_response();
        }
    };
    let held = match state.usage.hold(crate::usage::Held::Socket, user.id) {
        Ok(held) => held,
        Err(e) => return e.into_response(),
    };
    let max = state.feed.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small buffers: idle connections are the common case and must stay cheap.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _open = state.metrics.websocket_open();
            let _held = held;
            Connection::new(state.clone(), user).run(socket).await;
        })
}

/// Largest message we write: a replay page is split into messages up to about this size.
const MESSAGE_TARGET_BYTES: usize = 256 * 1024;
/// tungstenite refuses to buffer more than this per socket; one change (at most ~50 KB) always fits.
const MAX_WRITE_BUFFER: usize = 4 * MESSAGE_TARGET_BYTES;

/// Why a connection ends.
enum End {
    /// The peer closed or the transport failed: nothing more to send.
    Gone,
    /// We close with this code and reason.
    Close(u16, String),
}

/// Drives one connection's feed [`Session`]: reads the log and listens to the hub when it asks, and carries its
/// messages to the socket.
struct Connection {
    state: AppState,
    user: CurrentUser,
    session: Session,
    live: StreamMap<StreamName, BroadcastStream<Arc<Published>>>,
}

impl Connection {
    fn new(state: AppState, user: CurrentUser) -> Connection {
        let settings = Settings {
            max_subscriptions: state.feed.max_subscriptions,
            page_size: state.feed.page_size,
            message_target_bytes: MESSAGE_TARGET_BYTES,
        };
        let session = Session::new(settings, user.id);
        Connection { state, user, session, live: StreamMap::new() }
    }

    /// Whether this connection's session still exists and has not expired.
    async fn session_alive(&self) -> bool {
        let (id, now) = (self.user.session.clone(), (crate::feed::now_ms() / 1000) as i64);
        self.state
            .store
            .read(move |tx| {
                tx.query_one(
                    "SELECT EXISTS(SELECT 1 FROM sessions WHERE id = ?1 AND expires_at > ?2)",
                    crate::args![id, now],
                )?
                .bool(0)
            })
            .await
            .unwrap_or(true)
    }

    /// (One socket, not split in two: its reads and writes take turns in this loop anyway, and a split socket
    /// locks its halves — a `BiLock`, ~3 % of the server's CPU at 10,000 subscribers — on every use.)
    async fn run(mut self, mut socket: WebSocket) {
        let heartbeat_every = self.state.feed.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
        let mut last_heard = Instant::now();
        // The listeners that live as long as the connection are made once, not at each turn of the loop: a
        // broadcast or watch future made anew registers with its channel (under the channel's lock) and
        // unregisters when dropped — for every connection on every change it is sent.
        let mut shutdown = self.state.shutdown.clone();
        let stopped = crate::stopped(&mut shutdown);
        tokio::pin!(stopped);
        let mut ended = BroadcastStream::new(self.state.store.hub().ended_sessions());
        let signed_out = || End::Close(close_code::SESSION_ENDED, "the session ended: sign in again".into());
        let hello = ServerMessage::Hello {
            log_id: self.state.store.log_id(),
            heartbeat_ms: heartbeat_every.as_millis() as u64,
        };
        let mut end = self.send(&mut socket, &hello).await.err();
        while end.is_none() {
            let step = tokio::select! {
                msg = socket.recv() => {
                    last_heard = Instant::now();
                    match msg {
                        None => Err(End::Gone),
                        Some(Err(e)) => Err(read_error(&e)),
                        Some(Ok(msg)) => match client_message(msg) {
                            Ok(Some(msg)) => self.step(&mut socket, session::Input::Client(msg), None).await,
                            Ok(None) => Ok(()),
                            Err(end) => Err(end),
                        },
                    }
                }
                Some((stream, item)) = self.live.next() => match item {
                    Ok(published) => {
                        let committed_at = published.committed_at;
                        self.step(&mut socket, session::Input::Published(published), Some(committed_at)).await
                    }
                    Err(BroadcastStreamRecvError::Lagged(_)) => {
                        self.state.metrics.feed_resyncs.inc();
                        self.step(&mut socket, session::Input::Lagged { stream }, None).await
                    }
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > heartbeat_every * 2 {
                        Err(End::Close(close_code::HEARTBEAT_TIMEOUT, "no answer to pings".into()))
                    } else if !self.session_alive().await {
                        // Expired (ended sessions are announced; expiry is found here, within a heartbeat).
                        Err(signed_out())
                    } else {
                        socket.send(Message::Ping(Default::default())).await.map_err(|_| End::Gone)
                    }
                }
                Some(ended_session) = ended.next() => match ended_session {
                    Ok(id) if *id == *self.user.session => Err(signed_out()),
                    Ok(_) => Ok(()),
                    // Missed some announcements: look.
                    Err(_) => if self.session_alive().await { Ok(()) } else { Err(signed_out()) },
                },
                _ = &mut stopped => Err(End::Close(1001, "server shutting down".into())),
            };
            end = step.err();
        }
        if let Some(End::Close(code, reason)) = end {
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            let _ = socket.send(Message::Close(Some(frame))).await;
            let _ = SinkExt::close(&mut socket).await;
        }
    }

    /// Gives the session an input and carries out what it asks, log reads included (answered before anything
    /// else reaches it). `committed_at`: when the live batch in `input` committed, for the fan-out latency.
    async fn step(
        &mut self,
        socket: &mut WebSocket,
        input: session::Input,
        committed_at: Option<Instant>,
    ) -> Result<(), End> {
        self.session.handle(input);
        let observe_fanout = |state: &AppState| {
            if let Some(at) = committed_at {
                state.metrics.fanout_latency.observe(at.elapsed().as_secs_f64());
            }
        };
        while let Some(out) = self.session.poll_output() {
            match out {
                session::Output::Send(msg) => {
                    let live_batch = matches!(msg, ServerMessage::Changes { .. });
                    self.state.stats.delivered(self.user.id, &msg);
                    self.send(socket, &msg).await?;
                    if live_batch {
                        observe_fanout(&self.state);
                    }
                }
                session::Output::Forward(batch) => {
                    self.state.stats.delivered_batch(self.user.id, &batch.stream, &batch.changes);
                    self.send_text(socket, batch.encoded().clone()).await?;
                    observe_fanout(&self.state);
                }
                session::Output::Listen(stream) => {
                    let rx = self.state.store.hub().subscribe(stream.clone());
                    self.live.insert(stream, BroadcastStream::new(rx));
                }
                session::Output::Unlisten(stream) => {
                    self.live.remove(&stream);
                }
                session::Output::ReadLog { stream, since, client_log_id } => {
                    let store = self.state.store.clone();
                    let (own_log, page, me) = (store.log_id(), self.state.feed.page_size, self.user.id);
                    let s = stream.clone();
                    let read = store
                        .read(move |tx| access::read_log_as(tx, me, own_log, &s, since, client_log_id, page))
                        .await
                        .map_err(|_| End::Close(1011, "could not read the change log".into()))?;
                    self.session.handle(session::Input::LogRead { stream, since, read });
                }
                session::Output::Close { code, reason } => return Err(End::Close(code, reason)),
            }
        }
        Ok(())
    }

    async fn send(&self, socket: &mut WebSocket, msg: &ServerMessage) -> Result<(), End> {
        let text = serde_json::to_string(msg).map_err(|_| End::Close(1011, "could not encode a message".into()))?;
        self.send_text(socket, text.into()).await
    }

    async fn send_text(&self, socket: &mut WebSocket, text: Utf8Bytes) -> Result<(), End> {
        self.state.metrics.ws_messages_out.inc();
        self.state.metrics.ws_bytes_out.inc_by(text.len() as u64);
        // A client that takes no bytes at all for two heartbeat periods is gone; it resumes from its cursor when it
        // comes back, so dropping it loses nothing.
        match tokio::time::timeout(self.state.feed.heartbeat * 2, socket.send(Message::Text(text))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }
}

/// A frame from the client as a feed message (`None`: nothing to act on), or why the connection ends.
fn client_message(msg: Message) -> Result<Option<ClientMessage>, End> {
    let text = match msg {
        Message::Text(text) => text,
        Message::Binary(_) => {
            return Err(End::Close(close_code::UNSUPPORTED_DATA, "the feed speaks JSON text frames only".into()));
        }
        Message::Close(_) => return Err(End::Gone),
        Message::Ping(_) | Message::Pong(_) => return Ok(None),
    };
    let msg: ClientMessage = serde_json::from_str(&text)
        .map_err(|e| End::Close(close_code::INVALID_PAYLOAD, truncate(format!("invalid message: {e}"))))?;
    let streams: Vec<&StreamName> = match &msg {
        ClientMessage::Subscribe { streams, .. } => streams.iter().map(|s| &s.stream).collect(),
        ClientMessage::Unsubscribe { streams } => streams.iter().collect(),
        ClientMessage::Ping { .. } => Vec::new(),
    };
    if let Some(unknown) = streams.into_iter().find(|s| StreamId::try_from(*s).is_err()) {
        return Err(End::Close(close_code::INVALID_PAYLOAD, truncate(format!("no stream {unknown} here"))));
    }
    Ok(Some(msg))
}

/// Close reasons must fit a control frame (125 bytes, 2 of them for the code).
fn truncate(mut reason: String) -> String {
    if reason.len() > 120 {
        let mut cut = 117;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
}

fn read_error(e: &axum::Error) -> End {
    let text = e.to_string();
    // tungstenite reports an over-limit frame or message as a capacity error.
    if text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big") {
        End::Close(close_code::MESSAGE_TOO_BIG, truncate(format!("message too big: {text}")))
    } else if text.contains("UTF-8") || text.contains("utf-8") {
        End::Close(close_code::INVALID_PAYLOAD, "text frame is not valid UTF-8".into())
    } else if text.contains("protocol error") {
        // An unmasked frame, reserved bits, a bad opcode...: say so (1002) before closing.
        End::Close(1002, truncate(text))
    } else {
        End::Gone
    }
}
