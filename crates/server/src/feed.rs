//! The change log: recording changes inside a write's transaction, reading them back from a cursor, pruning
//! by retention, and the in-process hub that tells live readers a stream advanced.
//!
//! The log (table `changes`) is the single source of truth. The hub is only an accelerator: a reader that
//! misses a notification (it lagged, or the batch skipped ahead) re-reads the log from its cursor, so nothing is
//! lost and no reader needs an unbounded queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::args;
use crate::db::Conn;
use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use syncline_kanban::{Change, ChangeOp, ServerMessage};
use syncline_protocol::{Cursor, StreamName};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::store::{StoreError, StoreResult};
use crate::tail::Tailer;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Collects the changes one write records, to publish them once it commits.
#[derive(Debug)]
pub struct Recorder {
    write_id: Option<Uuid>,
    at_ms: u64,
    changes: Vec<Change>,
}

impl Recorder {
    pub fn new(write_id: Option<Uuid>, at_ms: u64) -> Recorder {
        Recorder { write_id, at_ms, changes: Vec::new() }
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The time the write is recorded at (Unix ms).
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// Forgets what was recorded (the write's savepoint was rolled back).
    pub fn clear(&mut self) {
        self.changes.clear();
    }
}

/// Appends a change to `stream`'s log, advancing the stream's head, on the caller's transaction.
pub fn record(tx: &dyn Conn, rec: &mut Recorder, stream: impl Into<StreamName>, op: ChangeOp) -> StoreResult<()> {
    let stream = stream.into();
    let name = stream.to_string();
    // The UPSERT takes the stream row's write lock until commit: cursors of one stream commit in order.
    let head = tx
        .query_one(
            "INSERT INTO streams (stream, head) VALUES (?1, 1)
             ON CONFLICT (stream) DO UPDATE SET head = streams.head + 1 RETURNING head",
            args![name],
        )?
        .i64(0)?;
    let body = serde_json::to_string(&op).map_err(|e| StoreError::Internal(e.into()))?;
    tx.execute(
        "INSERT INTO changes (stream, seq, at_ms, write_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![name, head, rec.at_ms, rec.write_id, body],
    )?;
    rec.changes.push(Change { stream, cursor: head as Cursor, at_ms: rec.at_ms, write_id: rec.write_id, op });
    Ok(())
}

/// The last cursor handed out in `stream` (0 if it has none).
pub fn stream_head(tx: &dyn Conn, stream: impl Into<StreamName>) -> StoreResult<Cursor> {
    let stream = stream.into();
    let head = tx.query_opt("SELECT head FROM streams WHERE stream = ?1", args![stream.as_str()])?;
    Ok(head.map(|r| r.u64(0)).transpose()?.unwrap_or(0))
}

/// What a reader gets for a cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRead {
    /// The changes right after the cursor, in order (at most the limit asked; empty when caught up).
    Changes(Vec<Change>),
    /// The cursor cannot be served; the reason says why.
    Reset(String),
    /// The reader may not see this stream (see `access::read_log_as`).
    Revoked(String),
}

/// Reads `stream` after `since`, or says why that cursor cannot be served.
pub fn read_log(
    tx: &dyn Conn,
    log_id: Uuid,
    stream: &StreamName,
    since: Cursor,
    client_log_id: Option<Uuid>,
    limit: usize,
) -> StoreResult<LogRead> {
    if let Some(theirs) = client_log_id.filter(|&theirs| theirs != log_id) {
        return Ok(LogRead::Reset(format!(
            "the cursor belongs to change log {theirs}, this server's is {log_id}: refetch"
        )));
    }
    let head = stream_head(tx, stream.clone())?;
    if since > head {
        return Ok(LogRead::Reset(format!("cursor {since} is ahead of the log (head {head}): refetch")));
    }
    if since == head {
        return Ok(LogRead::Changes(Vec::new()));
    }
    let name = stream.to_string();
    let oldest = tx.query_one("SELECT MIN(seq) FROM changes WHERE stream = ?1", args![name])?.opt_i64(0)?;
    match oldest {
        Some(oldest) if oldest as Cursor <= since + 1 => {}
        Some(oldest) => {
            return Ok(LogRead::Reset(format!(
                "cursor {since} is older than retention (oldest change kept is {oldest}): refetch"
            )));
        }
        None => return Ok(LogRead::Reset(format!("cursor {since} is older than retention: refetch"))),
    }
    let rows = tx.query(
        "SELECT seq, at_ms, write_id, body FROM changes WHERE stream = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        args![name, since, limit],
    )?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        changes.push(read_change(stream, row.i64(0)?, row.i64(1)?, row.opt_text(2)?, &row.text(3)?)?);
    }
    Ok(LogRead::Changes(changes))
}

/// A change as the log stores it.
pub fn read_change(
    stream: &StreamName,
    seq: i64,
    at_ms: i64,
    write_id: Option<String>,
    body: &str,
) -> StoreResult<Change> {
    let name = stream.as_str();
    let op: ChangeOp = serde_json::from_str(body)
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt change {name}@{seq}: {e}")))?;
    let write_id = write_id.and_then(|w| Uuid::parse_str(&w).ok());
    Ok(Change { stream: stream.clone(), cursor: seq as Cursor, at_ms: at_ms as u64, write_id, op })
}

/// How long the log keeps changes and write outcomes.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Changes kept per stream, at most.
    pub max_changes_per_stream: u64,
    /// Changes older than this are dropped.
    pub max_change_age: Duration,
    /// Write outcomes (idempotency keys) are kept at least this long (from their first use, or from the time
    /// a UUIDv7 id carries if that is later).
    pub write_ttl: Duration,
}

/// Drops what retention no longer keeps. Returns (changes, write outcomes) deleted.
pub fn prune(tx: &dyn Conn, retention: &Retention, now_ms: u64) -> StoreResult<(usize, usize)> {
    let age_limit = now_ms.saturating_sub(retention.max_change_age.as_millis() as u64);
    let mut changes = tx.execute("DELETE FROM changes WHERE at_ms < ?1", args![age_limit])?;
    changes += tx.execute(
        "DELETE FROM changes WHERE seq <= (SELECT s.head FROM streams s WHERE s.stream = changes.stream) - ?1",
        args![retention.max_changes_per_stream],
    )?;
    let write_limit = now_ms.saturating_sub(retention.write_ttl.as_millis() as u64);
    let writes = tx.execute("DELETE FROM writes WHERE at_ms < ?1", args![write_limit])?;
    Ok((changes as usize, writes as usize))
}

/// Changes of one stream, as published right after their commit.
#[derive(Debug)]
pub struct Published {
    /// The log's name of the stream (the changes' `stream`).
    pub stream: StreamName,
    pub changes: Vec<Change>,
    /// When the write at: fan-out latency is measured from here.
    pub committed_at: Instant,
    /// The batch as one `changes` message, encoded by the first session that forwards it whole and shared by all
    /// the others (see [`Published::encoded`]).
    encoded: OnceLock<Utf8Bytes>,
}

/// `ServerMessage::Changes` by reference: the same JSON (a test holds them equal) without copying the changes.
#[derive(Serialize)]
#[serde(tag = "type", rename = "changes")]
struct ChangesMessage<'a> {
    stream: &'a StreamName,
    changes: &'a [Change],
}

/// Two batches are the same if they carry the same changes of the same stream (however encoded, whenever committed).
impl PartialEq for Published {
    fn eq(&self, other: &Published) -> bool {
        self.stream == other.stream && self.changes == other.changes
    }
}

impl Published {
    pub fn new(stream: StreamName, changes: Vec<Change>, committed_at: Instant) -> Published {
        Published { stream, changes, committed_at, encoded: OnceLock::new() }
    }

    /// The batch as the message `changes` of its stream, in JSON — encoded once, however many subscribers take it
    /// (a clone is a reference count). At 10,000 subscribers of a board, encoding it for each was 10,000
    /// serialisations and copies of the same bytes per change.
    pub fn encoded(&self) -> &Utf8Bytes {
        self.encoded.get_or_init(|| {
            let message = ChangesMessage { stream: &self.stream, changes: &self.changes };
            Utf8Bytes::from(serde_json::to_string(&message).expect("changes encode as JSON"))
        })
    }

    /// The batch as the message `changes` of its stream (a copy, for drivers that hold messages as values).
    pub fn message(&self) -> ServerMessage {
        ServerMessage::Changes { stream: self.stream.clone(), changes: self.changes.clone() }
    }
}

/// Per-stream broadcast of committed changes to live readers in this process, and of sessions that ended (their
/// feed connections close).
#[derive(Debug)]
pub struct Hub {
    channels: Mutex<HashMap<StreamName, broadcast::Sender<Arc<Published>>>>,
    ended_sessions: broadcast::Sender<Arc<str>>,
    /// The streams this instance's clients listen to, tailed for other instances' changes (`tail.rs`).
    tailer: Mutex<Tailer>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub { channels: Mutex::default(), ended_sessions: broadcast::channel(1024).0, tailer: Mutex::default() }
    }
}

/// Batches a reader may fall behind before it lags and re-reads from the log instead.
const HUB_CAPACITY: usize = 128;

impl Hub {
    /// Receives every batch published to `stream` from now on.
    pub fn subscribe(&self, stream: StreamName) -> broadcast::Receiver<Arc<Published>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        self.tailer().follow(stream.clone());
        channels.entry(stream).or_insert_with(|| broadcast::channel(HUB_CAPACITY).0).subscribe()
    }

    /// The tail state (a round plans under it, then publishes through [`Hub::publish`]).
    pub fn tailer(&self) -> std::sync::MutexGuard<'_, Tailer> {
        self.tailer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes committed changes, grouped by stream (in the order given, which is cursor order).
    pub fn publish(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let committed_at = Instant::now();
        let mut by_stream: Vec<(StreamName, Vec<Change>)> = Vec::new();
        for change in changes {
            match by_stream.iter_mut().find(|(s, _)| *s == change.stream) {
                Some((_, list)) => list.push(change.clone()),
                None => by_stream.push((change.stream.clone(), vec![change.clone()])),
            }
        }
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut tailer = self.tailer();
            for (stream, changes) in &by_stream {
                if let Some(last) = changes.last() {
                    tailer.published(stream, last.cursor);
                }
            }
        }
        for (stream, changes) in by_stream {
            if let Some(tx) = channels.get(&stream)
                && tx.send(Arc::new(Published::new(stream.clone(), changes, committed_at))).is_err()
            {
                // Nobody listens any more.
                channels.remove(&stream);
                self.tailer().unfollow(&stream);
            }
        }
    }

    /// A session ended (signed out, replaced, expired): its feed connections close.
    pub fn session_ended(&self, session: &str) {
        let _ = self.ended_sessions.send(Arc::from(session));
    }

    /// Sessions ending from now on. A listener that lags has missed some: it must check its session itself.
    pub fn ended_sessions(&self) -> broadcast::Receiver<Arc<str>> {
        self.ended_sessions.subscribe()
    }

    /// Forgets channels nobody listens to (and stops tailing their streams).
    pub fn sweep(&self) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let mut tailer = self.tailer();
        channels.retain(|stream, tx| {
            let listened = tx.receiver_count() > 0;
            if !listened {
                tailer.unfollow(stream);
            }
            listened
        });
    }
}
