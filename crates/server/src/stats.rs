//! What the server saw: a bounded log of HTTP requests, for tests. (Open WebSockets and the rest are in
//! [`crate::metrics`].)
//!
//! Browser tests assert on these counts instead of on what the page says it did: a request the page thinks
//! it did not make still shows up here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use syncline_protocol::StreamName;

/// Header a client may set to say which tab sent a request, so tests can attribute requests to tabs.
pub const CLIENT_HEADER: &str = "x-syncline-client";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub client: Option<String>,
    pub status: u16,
}

/// Changes the feed sent a user (WebSocket or long-poll): which stream, up to which cursor, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub user: uuid::Uuid,
    /// The stream as the client names it.
    pub stream: String,
    pub first_cursor: u64,
    pub last_cursor: u64,
    pub at: std::time::Instant,
}

/// Bounded log of recent requests and feed deliveries, plus running totals.
#[derive(Debug, Default)]
pub struct Stats {
    requests_total: AtomicU64,
    recent: Mutex<std::collections::VecDeque<RequestRecord>>,
    /// Kept only once a test asks (`record_deliveries`): otherwise a lock and an allocation per message would sit
    /// on every fan-out (100,000 subscribers: 100,000 of each per change).
    deliveries_on: AtomicBool,
    deliveries: Mutex<std::collections::VecDeque<Delivery>>,
}

const RECENT_CAPACITY: usize = 10_000;

impl Stats {
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// The most recent requests (up to 10,000), oldest first.
    pub fn recent_requests(&self) -> Vec<RequestRecord> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// The most recent feed deliveries (up to 10,000), oldest first, since `record_deliveries`.
    pub fn recent_deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// From now on, keep the log of feed deliveries (`recent_deliveries`).
    pub fn record_deliveries(&self) {
        self.deliveries_on.store(true, Ordering::Relaxed);
    }

    /// Notes changes the feed sent `user` (if asked to: `record_deliveries`).
    pub fn delivered(&self, user: uuid::Uuid, msg: &syncline_kanban::ServerMessage) {
        if let syncline_kanban::ServerMessage::Changes { stream, changes } = msg {
            self.delivered_batch(user, stream, changes);
        }
    }

    /// Notes changes of `stream` the feed sent `user` (if asked to: `record_deliveries`).
    pub fn delivered_batch(&self, user: uuid::Uuid, stream: &StreamName, changes: &[syncline_kanban::Change]) {
        if !self.deliveries_on.load(Ordering::Relaxed) {
            return;
        }
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else { return };
        let d = Delivery {
            user,
            stream: stream.to_string(),
            first_cursor: first.cursor,
            last_cursor: last.cursor,
            at: std::time::Instant::now(),
        };
        let mut log = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == RECENT_CAPACITY {
            log.pop_front();
        }
        log.push_back(d);
    }

    fn record(&self, rec: RequestRecord) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(rec);
    }
}

/// Longest string a record keeps (path, query, client header): the log's memory is bounded whatever clients send
/// (10,000 records × 3 × 256 bytes at most).
const MAX_FIELD_BYTES: usize = 256;

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub async fn record_requests(State(state): State<crate::AppState>, req: Request, next: Next) -> Response {
    let method = bounded(req.method().as_str());
    let path = bounded(req.uri().path());
    let query = req.uri().query().map(bounded);
    let client = req.headers().get(CLIENT_HEADER).and_then(|v| v.to_str().ok()).map(bounded);
    let response = next.run(req).await;
    state.metrics.http_requests.inc();
    state.stats.record(RequestRecord { method, path, query, client, status: response.status().as_u16() });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_strings_are_cut_at_a_bound_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(400);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_FIELD_BYTES && cut.len() >= MAX_FIELD_BYTES - 1);
        assert!(long.starts_with(&cut));
    }
}
