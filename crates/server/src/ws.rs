//! The live feed: `GET /api/feed` upgraded to a WebSocket.
//!
//! Each connection holds, per stream it follows, the last cursor it delivered. Live batches from the hub are
//! forwarded when they continue that cursor exactly; anything else (a lag, a gap, a resubscribe) is served
//! by re-reading the log from the cursor, in pages. So a connection's memory is bounded by one page and the
//! socket's buffers, whatever the write rate or however slowly the client reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use syncline_protocol::feed::close_code;
use syncline_protocol::{Change, ClientMessage, Cursor, ErrorCode, ServerMessage, StreamCursor, StreamId};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use uuid::Uuid;

use crate::AppState;
use crate::error::AppError;
use crate::feed::{LogRead, Published, read_log};

/// Refuses cross-site WebSocket hijacking: a browser always sends `Origin`; it must be this server's own
/// origin or one the operator allowed. Clients that are not browsers send none and are let through.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), AppError> {
    let Some(origin) = headers.get("origin") else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let same_origin = [format!("http://{host}"), format!("https://{host}")].iter().any(|o| o == origin);
    if same_origin || allowed.iter().any(|a| a == origin || a == "*") {
        Ok(())
    } else {
        Err(AppError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            format!("origin {origin:?} may not open the feed of {host}"),
        ))
    }
}

pub async fn feed(State(state): State<AppState>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if let Err(e) = check_origin(&headers, &state.feed.allowed_origins) {
        return e.into_response();
    }
    if !state.websockets.load(std::sync::atomic::Ordering::Relaxed) {
        return AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::WebsocketUnavailable,
            "the WebSocket feed is turned off here; use GET /api/changes",
        )
        .into_response();
    }
    let max = state.feed.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small buffers: idle connections are the common case and must stay cheap.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            state.metrics.websockets_open.inc();
            Connection::new(state.clone()).run(socket).await;
            state.metrics.websockets_open.dec();
        })
}

type Sink = SplitSink<WebSocket, Message>;

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

struct Connection {
    state: AppState,
    /// Last cursor delivered, per followed stream.
    cursors: HashMap<StreamId, Cursor>,
    live: StreamMap<StreamId, BroadcastStream<Arc<Published>>>,
}

impl Connection {
    fn new(state: AppState) -> Connection {
        Connection { state, cursors: HashMap::new(), live: StreamMap::new() }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut incoming) = socket.split();
        let heartbeat_every = self.state.feed.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
        let mut last_heard = Instant::now();
        let mut shutdown = self.state.shutdown.clone();
        let hello = ServerMessage::Hello {
            log_id: self.state.store.log_id(),
            heartbeat_ms: heartbeat_every.as_millis() as u64,
        };
        let mut end = self.send(&mut sink, &hello).await.err();
        while end.is_none() {
            let step = tokio::select! {
                msg = incoming.next() => {
                    last_heard = Instant::now();
                    match msg {
                        None => Err(End::Gone),
                        Some(Err(e)) => Err(read_error(&e)),
                        Some(Ok(msg)) => self.on_message(&mut sink, msg).await,
                    }
                }
                Some((stream, item)) = self.live.next() => match item {
                    Ok(published) => self.on_published(&mut sink, stream, &published).await,
                    Err(BroadcastStreamRecvError::Lagged(_)) => {
                        self.state.metrics.feed_resyncs.inc();
                        self.catch_up(&mut sink, stream, None).await
                    }
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > heartbeat_every * 2 {
                        Err(End::Close(close_code::HEARTBEAT_TIMEOUT, "no answer to pings".into()))
                    } else {
                        sink.send(Message::Ping(Default::default())).await.map_err(|_| End::Gone)
                    }
                }
                _ = crate::stopped(&mut shutdown) => Err(End::Close(1001, "server shutting down".into())),
            };
            end = step.err();
        }
        if let Some(End::Close(code, reason)) = end {
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            let _ = sink.send(Message::Close(Some(frame))).await;
            let _ = sink.close().await;
        }
    }

    async fn send(&self, sink: &mut Sink, msg: &ServerMessage) -> Result<(), End> {
        let text = serde_json::to_string(msg).map_err(|_| End::Close(1011, "could not encode a message".into()))?;
        self.state.metrics.ws_messages_out.inc();
        self.state.metrics.ws_bytes_out.inc_by(text.len() as u64);
        // A client that takes no bytes at all for two heartbeat periods is gone; it resumes from its cursor
        // when it comes back, so dropping it loses nothing.
        match tokio::time::timeout(self.state.feed.heartbeat * 2, sink.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    async fn on_message(&mut self, sink: &mut Sink, msg: Message) -> Result<(), End> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return Err(End::Close(close_code::UNSUPPORTED_DATA, "the feed speaks JSON text frames only".into()));
            }
            Message::Close(_) => return Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let msg: ClientMessage = serde_json::from_str(&text)
            .map_err(|e| End::Close(close_code::INVALID_PAYLOAD, truncate(format!("invalid message: {e}"))))?;
        match msg {
            ClientMessage::Ping { nonce } => self.send(sink, &ServerMessage::Pong { nonce }).await,
            ClientMessage::Unsubscribe { streams } => {
                for stream in streams {
                    self.cursors.remove(&stream);
                    self.live.remove(&stream);
                }
                Ok(())
            }
            ClientMessage::Subscribe { streams, log_id } => {
                let new = streams.iter().filter(|s| !self.cursors.contains_key(&s.stream)).count();
                if self.cursors.len() + new > self.state.feed.max_subscriptions {
                    return Err(End::Close(
                        close_code::POLICY_VIOLATION,
                        format!("at most {} streams per connection", self.state.feed.max_subscriptions),
                    ));
                }
                for StreamCursor { stream, since } in streams {
                    self.subscribe(sink, stream, since, log_id).await?;
                }
                Ok(())
            }
        }
    }

    async fn subscribe(
        &mut self,
        sink: &mut Sink,
        stream: StreamId,
        since: Cursor,
        log_id: Option<Uuid>,
    ) -> Result<(), End> {
        // Listen before reading the log, so nothing committed in between is missed.
        self.live.insert(stream, BroadcastStream::new(self.state.store.hub().subscribe(stream)));
        self.cursors.insert(stream, since);
        self.catch_up(sink, stream, log_id).await
    }

    async fn on_published(&mut self, sink: &mut Sink, stream: StreamId, published: &Published) -> Result<(), End> {
        let Some(&cursor) = self.cursors.get(&stream) else { return Ok(()) };
        let fresh: Vec<_> = published.changes.iter().filter(|c| c.cursor > cursor).cloned().collect();
        let Some(first) = fresh.first() else { return Ok(()) };
        if first.cursor != cursor + 1 {
            // A gap: fill it from the log (which also covers this batch).
            return self.catch_up(sink, stream, None).await;
        }
        let last = fresh.last().map(|c| c.cursor).unwrap_or(cursor);
        self.send(sink, &ServerMessage::Changes { stream, changes: fresh }).await?;
        self.state.metrics.fanout_latency.observe(published.committed_at.elapsed().as_secs_f64());
        self.cursors.insert(stream, last);
        Ok(())
    }

    /// Sends everything after the stream's cursor from the log, page by page, then `synced`; or `reset`.
    async fn catch_up(&mut self, sink: &mut Sink, stream: StreamId, log_id: Option<Uuid>) -> Result<(), End> {
        let page = self.state.feed.page_size;
        loop {
            let Some(&since) = self.cursors.get(&stream) else { return Ok(()) };
            let store = self.state.store.clone();
            let own_log = store.log_id();
            let read = store
                .transaction(move |tx| read_log(tx, own_log, stream, since, log_id, page))
                .await
                .map_err(|_| End::Close(1011, "could not read the change log".into()))?;
            match read {
                LogRead::Reset(reason) => {
                    self.cursors.remove(&stream);
                    self.live.remove(&stream);
                    return self.send(sink, &ServerMessage::Reset { stream, reason }).await;
                }
                LogRead::Changes(changes) if changes.is_empty() => {
                    return self.send(sink, &ServerMessage::Synced { stream, cursor: since }).await;
                }
                LogRead::Changes(changes) => {
                    let last = changes.last().map(|c| c.cursor).unwrap_or(since);
                    let full = changes.len() == page;
                    for changes in split_by_size(changes) {
                        self.send(sink, &ServerMessage::Changes { stream, changes }).await?;
                    }
                    self.cursors.insert(stream, last);
                    if !full {
                        return self.send(sink, &ServerMessage::Synced { stream, cursor: last }).await;
                    }
                }
            }
        }
    }
}

/// Splits a page of changes into runs whose JSON stays around [`MESSAGE_TARGET_BYTES`].
fn split_by_size(changes: Vec<Change>) -> Vec<Vec<Change>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for change in changes {
        // The size of a change's JSON, without building it twice: its op's payload dominates.
        let estimate = serde_json::to_vec(&change.op).map(|v| v.len()).unwrap_or(0) + 128;
        if size + estimate > MESSAGE_TARGET_BYTES && !out.last().is_some_and(Vec::is_empty) {
            out.push(Vec::new());
            size = 0;
        }
        size += estimate;
        out.last_mut().expect("never empty").push(change);
    }
    out
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
    } else {
        End::Gone
    }
}
