//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::writes::Outcome;

/// Counts one thing in a gauge for as long as it lives: dropped (whatever the way out — an answer, an error, a
/// client that went away mid-wait), the gauge goes down.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Counter,
    pub websockets_open: Gauge,
    pub ws_messages_out: Counter,
    pub ws_bytes_out: Counter,
    pub writes_applied: Counter,
    pub writes_refused: Counter,
    pub write_conflicts: Counter,
    pub duplicate_writes: Counter,
    pub longpolls_waiting: Gauge,
    /// Commit of a write → its changes handed to a subscriber's socket.
    pub fanout_latency: Histogram,
    /// Times a live reader fell behind the hub and re-read the log instead.
    pub feed_resyncs: Counter,
    pub changes_pruned: Counter,
}

impl Metrics {
    /// A long-poll waits for a change until the guard is dropped.
    pub fn longpoll_waiting(&self) -> GaugeGuard {
        self.longpolls_waiting.inc();
        GaugeGuard(self.longpolls_waiting.clone())
    }

    /// A WebSocket is open until the guard is dropped.
    pub fn websocket_open(&self) -> GaugeGuard {
        self.websockets_open.inc();
        GaugeGuard(self.websockets_open.clone())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("syncline");
        let m = Metrics {
            http_requests: Counter::default(),
            websockets_open: Gauge::default(),
            ws_messages_out: Counter::default(),
            ws_bytes_out: Counter::default(),
            writes_applied: Counter::default(),
            writes_refused: Counter::default(),
            write_conflicts: Counter::default(),
            duplicate_writes: Counter::default(),
            longpolls_waiting: Gauge::default(),
            // 50 µs .. ~1.6 s
            fanout_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            feed_resyncs: Counter::default(),
            changes_pruned: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests served", m.http_requests.clone());
        registry.register("websockets_open", "Open feed WebSockets", m.websockets_open.clone());
        registry.register("ws_messages_out", "Feed messages sent", m.ws_messages_out.clone());
        registry.register("ws_bytes_out", "Feed bytes sent", m.ws_bytes_out.clone());
        registry.register("writes_applied", "Writes applied", m.writes_applied.clone());
        registry.register("writes_refused", "Writes refused (validation, not found)", m.writes_refused.clone());
        registry.register("write_conflicts", "Writes refused for a stale base version", m.write_conflicts.clone());
        registry.register(
            "duplicate_writes",
            "Replayed write ids answered from the record",
            m.duplicate_writes.clone(),
        );
        registry.register("longpolls_waiting", "Long-polls waiting for a change", m.longpolls_waiting.clone());
        registry.register(
            "fanout_latency_seconds",
            "Write commit to changes handed to a subscriber socket",
            m.fanout_latency.clone(),
        );
        registry.register("feed_resyncs", "Live readers that lagged and re-read the log", m.feed_resyncs.clone());
        registry.register("changes_pruned", "Changes dropped by retention", m.changes_pruned.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn record_write(&self, outcome: &Outcome) {
        if outcome.replayed {
            self.duplicate_writes.inc();
        } else if outcome.status == axum::http::StatusCode::CONFLICT {
            self.write_conflicts.inc();
        } else if outcome.status.is_success() {
            self.writes_applied.inc();
        } else {
            self.writes_refused.inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
