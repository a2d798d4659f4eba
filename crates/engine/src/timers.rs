//! Named timers: each part of the engine says when it next needs to act and why (`poll_timeout`), and the
//! engine's deadline is the soonest of them (as str0m's `Soonest`), with its reason for traces.

use crate::types::Millis;

/// Why the engine wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Send the presence heartbeat.
    Presence,
    /// A peer tab falls silent for good (crashed).
    PeerTimeout,
    /// A follower hidden for `hidden_sleep_ms` stops listening to the other tabs.
    Sleep,
    /// No tab has been visible for the hidden grace period: let go of the network.
    HiddenGrace,
    /// Take leadership from a hidden leader.
    LeaderHandover,
    /// A shown tab's leader did not answer: take over.
    LeaderAnswer,
    /// Reconnect the socket after a backoff.
    Reconnect,
    /// Give up on a socket that does not open.
    OpenTimeout,
    /// Ping the server over the socket.
    Ping,
    /// Nothing heard on the socket for two ping periods.
    Heartbeat,
    /// While long-polling, try the socket again.
    Probe,
    /// The next long-poll of a stream.
    LongPoll,
    /// A timed refetch of a query (no live feed keeps it fresh).
    Poll,
    /// Retry a failed fetch.
    FetchRetry,
    /// Retry sending the outbox.
    OutboxRetry,
    /// Save changed queries to the persistent cache.
    CacheSave,
    /// Drop the data of a query nobody has read for `gc_time`.
    Gc,
}

/// The soonest future time among several, with its reason. Times not after `now` are ignored: a timer already
/// due was handled by the last reconcile, and if it still waits it waits on something else (an answer, a slot)
/// that brings its own input — counting it again would spin the driver.
#[derive(Debug, Clone, Copy)]
pub struct Soonest {
    now: Millis,
    best: Option<(Millis, Timer)>,
}

impl Soonest {
    pub fn after(now: Millis) -> Soonest {
        Soonest { now, best: None }
    }

    pub fn at(&mut self, at: Millis, why: Timer) {
        if at > self.now && self.best.is_none_or(|(t, _)| at < t) {
            self.best = Some((at, why));
        }
    }

    pub fn maybe(&mut self, at: Option<Millis>, why: Timer) {
        if let Some(at) = at {
            self.at(at, why);
        }
    }

    pub fn get(self) -> Option<(Millis, Timer)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soonest_future_time_wins_with_its_reason() {
        let mut s = Soonest::after(100);
        s.at(90, Timer::Ping);
        s.at(100, Timer::Ping);
        s.at(300, Timer::Gc);
        s.at(200, Timer::Presence);
        s.maybe(None, Timer::Probe);
        assert_eq!(s.get(), Some((200, Timer::Presence)));
    }
}
