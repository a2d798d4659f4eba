//! What the engine did, as counters and latency samples, readable as a snapshot.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::types::Millis;

/// Bounded reservoir of the most recent samples (for percentiles without unbounded memory).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    values: Vec<u64>,
    next: usize,
}

const SAMPLES_KEPT: usize = 512;

impl Samples {
    pub fn record(&mut self, v: u64) {
        if self.values.len() < SAMPLES_KEPT {
            self.values.push(v);
        } else {
            self.values[self.next] = v;
            self.next = (self.next + 1) % SAMPLES_KEPT;
        }
    }

    /// The p-th percentile (0.0–1.0) of the kept samples.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        crate::collections::sort_by(&mut sorted, Ord::cmp);
        Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
    }

    pub fn count(&self) -> usize {
        self.values.len()
    }
}

/// Time spent in each connection state, in ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTimes {
    pub live_ms: Millis,
    pub polling_ms: Millis,
    pub connecting_ms: Millis,
    pub offline_ms: Millis,
    pub paused_ms: Millis,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// HTTP requests asked of the driver (fetches, long-polls, write batches).
    pub requests: u64,
    pub long_polls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub socket_messages_in: u64,
    pub socket_messages_out: u64,
    /// Messages heard from the other tabs (none while asleep).
    #[serde(default)]
    pub tab_messages_in: u64,
    /// Whole query data heard from the leader (`TabMessage::Data`). A tab that wakes, or meets a new leader,
    /// with a copy gets the changes it lacks instead.
    #[serde(default)]
    pub tab_data_in: u64,
    /// Sockets opened after the first.
    pub reconnects: u64,
    pub socket_opens: u64,
    /// Requests not made because the same query was already being fetched (here or for another tab).
    pub dedupe_hits: u64,
    /// Changes applied to cached data directly.
    pub deltas_applied: u64,
    /// Queries refetched because a change could not be applied or made them stale.
    pub invalidations: u64,
    pub writes_sent: u64,
    pub conflicts: u64,
    /// Fetch round trips, ms.
    pub fetch_latency: Samples,
    /// Server commit of a change → the frame that shows it, ms (server clock vs. this device's clock).
    pub change_to_screen: Samples,
    /// Time in each connection state.
    pub states: StateTimes,
    /// The counters every [`HISTORY_STEP_MS`] over the last [`HISTORY_SPAN_MS`], oldest first: rates and charts
    /// are differences between points.
    pub history: VecDeque<MetricsPoint>,
}

/// Spacing of [`Metrics::history`] points.
pub const HISTORY_STEP_MS: Millis = 10_000;
/// How far back [`Metrics::history`] goes.
pub const HISTORY_SPAN_MS: Millis = 10 * 60_000;

/// The cumulative counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsPoint {
    pub at: Millis,
    pub requests: u64,
    pub bytes: u64,
    pub socket_messages: u64,
    pub reconnects: u64,
}

impl Metrics {
    pub fn point(&self, at: Millis) -> MetricsPoint {
        MetricsPoint {
            at,
            requests: self.requests,
            bytes: self.bytes_in + self.bytes_out,
            socket_messages: self.socket_messages_in + self.socket_messages_out,
            reconnects: self.reconnects,
        }
    }

    /// Adds a history point when the last one is a step old, and forgets points beyond the span.
    pub fn sample(&mut self, now: Millis) {
        if self.history.back().is_none_or(|p| now >= p.at + HISTORY_STEP_MS) {
            let point = self.point(now);
            self.history.push_back(point);
        }
        while self.history.front().is_some_and(|p| p.at + HISTORY_SPAN_MS + HISTORY_STEP_MS < now) {
            self.history.pop_front();
        }
    }

    /// Requests over the last minute (or since the first point, if younger), as of `now`.
    pub fn requests_per_minute(&self, now: Millis) -> u64 {
        let from = self.history.iter().find(|p| p.at + 60_000 >= now).copied().unwrap_or_else(|| self.point(now));
        self.requests - from.requests
    }
}
