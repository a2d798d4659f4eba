//! Fan-out across instances: each instance tails the shared log for the streams its own clients follow and
//! publishes what the other instances committed to its hub, in cursor order.
//!
//! [`Tailer`] is the sans-IO part (which streams, from which cursor, what to publish), driven by the server's tail
//! task (`run`, PostgreSQL only) and by the simulation. One batched read per round covers every followed stream.
//! A round runs on a short interval, and sooner when a NOTIFY hint arrives — sent after commit, outside the write
//! transaction; a lost hint, or a listener connection that drops, costs latency, never a change: the next round
//! reads from the cursors. (A change published here out of order — a local write racing the tail — is a gap to
//! the feed sessions, which fill it from the log.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use syncline_kanban::Change;
use syncline_protocol::{Cursor, StreamName};

use crate::args;
use crate::db::Conn;
use crate::feed::{Hub, read_change};
use crate::store::{Store, StoreResult};

/// A bug the simulation can switch on to show it catches it (feature `bug-injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// After its listener connection reconnects, the instance forgets the streams it was tailing (until a client
    /// subscribes to them anew): other instances' changes stop reaching its clients.
    ForgetsStreamsOnReconnect,
    /// A newly followed stream is tailed from its head instead of one change before it: a change that committed
    /// between a client's subscribe and the first head read reaches nobody until the stream's next change.
    StartsAtHead,
}

/// Streams read per statement.
const STREAMS_PER_READ: usize = 100;
/// Changes read per round (the rest comes next round).
const ROWS_PER_READ: usize = 2_000;

/// What a tail round must read.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Streams newly followed: start from their current head (their sessions read the log up to there).
    pub heads: Vec<StreamName>,
    /// Streams to read after their cursor.
    pub reads: Vec<(StreamName, Cursor)>,
}

/// Which streams this instance tails, and the last cursor it published in each.
#[derive(Debug, Default)]
pub struct Tailer {
    /// `None`: followed, head not read yet.
    cursors: BTreeMap<StreamName, Option<Cursor>>,
    bug: Option<InjectedBug>,
}

impl Tailer {
    pub fn with_bug(bug: Option<InjectedBug>) -> Tailer {
        Tailer { cursors: BTreeMap::new(), bug }
    }

    /// A client of this instance started listening to `stream`.
    pub fn follow(&mut self, stream: StreamName) {
        self.cursors.entry(stream).or_insert(None);
    }

    /// No client of this instance listens to `stream` any more.
    pub fn unfollow(&mut self, stream: &StreamName) {
        self.cursors.remove(stream);
    }

    /// The streams followed.
    pub fn followed(&self) -> impl Iterator<Item = &StreamName> {
        self.cursors.keys()
    }

    pub fn follows(&self, stream: &StreamName) -> bool {
        self.cursors.contains_key(stream)
    }

    /// This instance published (its own write, or a tail) up to `cursor` in `stream`.
    pub fn published(&mut self, stream: &StreamName, cursor: Cursor) {
        if let Some(c) = self.cursors.get_mut(stream) {
            *c = Some(c.map_or(cursor, |c| c.max(cursor)));
        }
    }

    /// The listener connection (NOTIFY) was lost and is back: hints may have been missed, which the next round
    /// covers from the cursors — nothing to forget.
    pub fn listener_reconnected(&mut self) {
        if self.bug == Some(InjectedBug::ForgetsStreamsOnReconnect) {
            self.cursors.clear();
        }
    }

    pub fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        for (stream, cursor) in &self.cursors {
            match cursor {
                None => plan.heads.push(stream.clone()),
                Some(c) => plan.reads.push((stream.clone(), *c)),
            }
        }
        plan
    }

    /// The heads of newly followed streams, read in this round. The tail goes on from one change before the head:
    /// a session that subscribed before the head was read may be one change behind it, or more (its log read
    /// raced a commit), and nothing else would tell it until the stream's next change. Publishing the last change
    /// again tells it: a session already past it ignores it, one behind by more sees a gap and reads the log.
    pub fn on_heads(&mut self, heads: Vec<(StreamName, Cursor)>) {
        for (stream, head) in heads {
            if let Some(c @ None) = self.cursors.get_mut(&stream) {
                let from = if self.bug == Some(InjectedBug::StartsAtHead) { head } else { head.saturating_sub(1) };
                *c = Some(from);
            }
        }
    }

    /// The changes a round read (in stream, cursor order): those to publish, by stream, each run continuing the
    /// stream's cursor.
    pub fn on_read(&mut self, changes: Vec<Change>) -> Vec<Vec<Change>> {
        let mut out: Vec<Vec<Change>> = Vec::new();
        for change in changes {
            let Some(Some(cursor)) = self.cursors.get_mut(&change.stream) else { continue };
            if change.cursor <= *cursor {
                continue;
            }
            *cursor = change.cursor;
            match out.last_mut() {
                Some(run) if run.last().is_some_and(|c| c.stream == change.stream) => run.push(change),
                _ => out.push(vec![change]),
            }
        }
        out
    }
}

/// What a round read: the heads of newly followed streams, and the changes after the cursors.
pub type Read = (Vec<(StreamName, Cursor)>, Vec<Change>);

/// Carries out a plan on `tx`: heads, then one statement per `STREAMS_PER_READ` streams. Returns the heads and the
/// changes read, in stream and cursor order.
pub fn read_plan(tx: &dyn Conn, plan: &Plan) -> StoreResult<Read> {
    let mut heads = Vec::with_capacity(plan.heads.len());
    for stream in &plan.heads {
        heads.push((stream.clone(), crate::feed::stream_head(tx, stream.clone())?));
    }
    // New streams are read from one change before their head, in this same round (see `Tailer::on_heads`).
    let mut reads = plan.reads.clone();
    reads.extend(heads.iter().map(|(s, head)| (s.clone(), head.saturating_sub(1))));
    let mut changes = Vec::new();
    for chunk in reads.chunks(STREAMS_PER_READ) {
        let mut sql = String::from("SELECT stream, seq, at_ms, write_id, body FROM changes WHERE ");
        let mut params = Vec::with_capacity(chunk.len() * 2 + 1);
        for (i, (stream, cursor)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!("(stream = ?{} AND seq > ?{})", 2 * i + 1, 2 * i + 2));
            params.extend_from_slice(args![stream.as_str(), *cursor]);
        }
        sql.push_str(&format!(" ORDER BY stream, seq LIMIT ?{}", params.len() + 1));
        params.extend_from_slice(args![ROWS_PER_READ]);
        for row in tx.query(&sql, &params)? {
            let stream: StreamName = row.text(0)?.parse().map_err(|e: String| {
                crate::store::StoreError::Internal(anyhow::anyhow!("corrupt stream name in the log: {e}"))
            })?;
            changes.push(read_change(&stream, row.i64(1)?, row.i64(2)?, row.opt_text(3)?, &row.text(4)?)?);
        }
    }
    Ok((heads, changes))
}

/// The NOTIFY channel writers hint on after they commit.
pub const CHANNEL: &str = "syncline_changes";

/// The tail task of an instance on PostgreSQL: a round on every hint and every `interval` (`--tail-interval-secs`),
/// until shutdown. (On SQLite there is one instance; nothing to tail.)
pub async fn run(store: Store, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(url) = store.postgres_url() else { return };
    let wake = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (wake, stop, hub) = (wake.clone(), stop.clone(), store.hub().clone());
        std::thread::Builder::new()
            .name("syncline-listen".into())
            .spawn(move || listen(&url, &wake, &stop, &hub))
            .expect("a thread");
    }
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = crate::stopped(&mut shutdown) => {
                stop.store(true, Ordering::Relaxed);
                return;
            }
        }
        loop {
            match round(&store).await {
                // A full read may have left more behind: read on at once.
                Ok(read) if read >= ROWS_PER_READ => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = ?e, "tailing the log failed; the next round tries again");
                    break;
                }
            }
        }
    }
}

/// One round: read what the plan asks, publish what other instances committed. Returns how many changes it read.
pub async fn round(store: &Store) -> StoreResult<usize> {
    let plan = store.hub().tailer().plan();
    if plan.heads.is_empty() && plan.reads.is_empty() {
        return Ok(0);
    }
    let (heads, changes) = store.read(move |tx| read_plan(tx, &plan)).await?;
    let read = changes.len();
    let batches = {
        let mut tailer = store.hub().tailer();
        tailer.on_heads(heads);
        tailer.on_read(changes)
    };
    for batch in batches {
        store.hub().publish(&batch);
    }
    Ok(read)
}

/// Holds a connection that LISTENs for commit hints and wakes the tail task; reconnects when it drops (the next
/// round covers whatever was missed meanwhile).
fn listen(url: &str, wake: &tokio::sync::Notify, stop: &AtomicBool, hub: &Hub) {
    use postgres::fallible_iterator::FallibleIterator;
    let mut connected_before = false;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        if client.batch_execute(&format!("LISTEN {CHANNEL}")).is_err() {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if connected_before {
            hub.tailer().listener_reconnected();
        }
        connected_before = true;
        wake.notify_one();
        while !stop.load(Ordering::Relaxed) {
            let mut notifications = client.notifications();
            let mut hints = notifications.timeout_iter(Duration::from_millis(500));
            match hints.next() {
                // Wake at once (hints arriving meanwhile coalesce into one pending wake-up).
                Ok(Some(_)) => wake.notify_one(),
                Ok(None) => {}
                Err(_) => break, // the connection dropped: reconnect
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncline_kanban::{ChangeOp, StreamId};
    use uuid::Uuid;

    fn change(stream: &StreamName, cursor: Cursor) -> Change {
        Change {
            stream: stream.clone(),
            cursor,
            at_ms: 0,
            write_id: None,
            op: ChangeOp::BoardDeleted { id: Uuid::nil() },
        }
    }

    #[test]
    fn a_new_stream_starts_one_change_before_its_head_then_each_round_publishes_what_came_after_once() {
        let s = StreamId::Board(Uuid::from_u128(1)).name();
        let mut t = Tailer::default();
        t.follow(s.clone());
        assert_eq!(t.plan(), Plan { heads: vec![s.clone()], reads: vec![] });
        t.on_heads(vec![(s.clone(), 5)]);
        assert_eq!(t.plan().reads, vec![(s.clone(), 4)]);
        let out = t.on_read(vec![change(&s, 4), change(&s, 5), change(&s, 6), change(&s, 7)]);
        assert_eq!(out.len(), 1);
        // 5 again: a session that subscribed just before it committed (and before the head was read) would
        // otherwise not hear of it until the stream's next change.
        assert_eq!(out[0].iter().map(|c| c.cursor).collect::<Vec<_>>(), vec![5, 6, 7]);
        // A local write published 9 meanwhile: the tail does not publish it again.
        t.published(&s, 9);
        assert!(t.on_read(vec![change(&s, 8), change(&s, 9)]).is_empty());
        assert_eq!(t.plan().reads, vec![(s.clone(), 9)]);
    }

    #[test]
    fn an_empty_stream_starts_at_zero() {
        let s = StreamId::Board(Uuid::from_u128(2)).name();
        let mut t = Tailer::default();
        t.follow(s.clone());
        t.on_heads(vec![(s.clone(), 0)]);
        assert_eq!(t.plan().reads, vec![(s.clone(), 0)]);
        assert_eq!(t.on_read(vec![change(&s, 1)])[0][0].cursor, 1);
    }

    #[test]
    fn a_reconnected_listener_forgets_nothing() {
        let s = StreamId::Board(Uuid::from_u128(1)).name();
        let mut t = Tailer::default();
        t.follow(s.clone());
        t.on_heads(vec![(s.clone(), 3)]);
        t.listener_reconnected();
        assert_eq!(t.plan().reads, vec![(s.clone(), 2)]);
    }
}
