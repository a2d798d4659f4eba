//! The connection as the user should see it, derived after every input from where the other parts stand: the
//! leader works it out; followers show the leader's (rebased onto their own clock).

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::transport::Conn;
use crate::types::*;

/// The status part's state.
#[derive(Debug)]
pub(crate) struct Status {
    pub current: ConnectionStatus,
    /// The leader's status, as it last said (followers).
    pub leader: Option<ConnectionStatus>,
    /// As leader, this tab has told the others its status (a new leader always does, even when its status is the
    /// one it showed as a follower).
    pub announced: bool,
}

impl Default for Status {
    fn default() -> Self {
        Status { current: ConnectionStatus::Idle, leader: None, announced: false }
    }
}

impl<M: Model> Engine<M> {
    pub(crate) fn update_status(&mut self) {
        let t = &self.transport;
        let status = if !self.env.online {
            ConnectionStatus::Offline { pending_writes: self.outbox.len() }
        } else if !self.is_leader() {
            self.status.leader.clone().unwrap_or(ConnectionStatus::Idle)
        } else if self.wanted_streams().is_empty() {
            // Nothing to follow (no query, or only ones that are gone).
            ConnectionStatus::Idle
        } else if !self.prefs.realtime {
            ConnectionStatus::Polling { reason: "realtime is off".into(), retry_socket_at: None }
        } else if !self.active() {
            ConnectionStatus::Paused
        } else if let Some(next_probe) = self.next_probe() {
            // Long-polls failing too: the server is out of reach, not just its WebSocket.
            let unreachable = t.streams.values().filter(|s| s.poll_failures > 0).map(|s| s.next_longpoll).min();
            let reachable = t.polled_ok();
            if t.socket_ready() {
                ConnectionStatus::Connecting
            } else if let (Some(retry_at), false) = (unreachable, reachable) {
                ConnectionStatus::Reconnecting { retry_at: retry_at.min(next_probe) }
            } else if !reachable {
                ConnectionStatus::Connecting // no long-poll has answered yet: polling is not established
            } else {
                ConnectionStatus::Polling {
                    reason: "the WebSocket is unavailable".into(),
                    retry_socket_at: Some(next_probe),
                }
            }
        } else {
            match t.conn {
                Conn::Backoff { until } => ConnectionStatus::Reconnecting { retry_at: until },
                Conn::Open { hello: true, .. } if self.live() => ConnectionStatus::Live,
                _ => ConnectionStatus::Connecting,
            }
        };
        let changed = status != self.status.current;
        if self.is_leader() && (changed || !self.status.announced) {
            let message = TabMessage::Status { status: status.clone(), sent_at: self.now, tab: self.tab };
            self.out.push_back(Output::Broadcast(message));
            self.status.announced = true;
        }
        if changed {
            self.status.current = status.clone();
            self.out.push_back(Output::Notify(Notification::Connection { status }));
            self.notify_all_queries();
        }
    }
}

/// Counts `spent` toward the time spent in `status`.
pub(crate) fn add_state_time(metrics: &mut Metrics, status: &ConnectionStatus, spent: Millis) {
    let times = &mut metrics.states;
    match status {
        ConnectionStatus::Live => times.live_ms += spent,
        ConnectionStatus::Polling { .. } => times.polling_ms += spent,
        ConnectionStatus::Offline { .. } => times.offline_ms += spent,
        ConnectionStatus::Paused => times.paused_ms += spent,
        ConnectionStatus::Connecting | ConnectionStatus::Reconnecting { .. } => times.connecting_ms += spent,
        ConnectionStatus::Idle => {}
    }
}
