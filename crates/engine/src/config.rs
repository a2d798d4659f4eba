//! Engine settings (for the developer) and preferences (for the user), with documented defaults.

use serde::{Deserialize, Serialize};

use crate::types::Millis;

/// Tuning of the engine. The defaults are what a user gets; each is explained where it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Fetched data is fresh this long when no live feed keeps it so (TanStack Query's `staleTime`).
    pub stale_time_ms: Millis,
    /// Data of a query nobody reads is dropped after this long (`gcTime`).
    pub gc_time_ms: Millis,
    /// Reconnect backoff: full jitter between 0 and `min(max, min * 2^attempt)`.
    pub backoff_min_ms: Millis,
    pub backoff_max_ms: Millis,
    /// After this many consecutive socket failures, fall back to long-poll.
    pub fallback_after_failures: u32,
    /// While on long-poll, try the socket again this often (with jitter).
    pub probe_interval_ms: Millis,
    /// Client ping period on the socket; the link is dead if nothing is heard for `2 ×` this.
    pub ping_interval_ms: Millis,
    /// With no visible tab, the socket stays open this long before it closes.
    pub hidden_grace_ms: Millis,
    /// Fetches in flight at once, at most (ramp-up after recovery, not a thundering herd).
    pub max_concurrent_fetches: usize,
    /// Seconds a long-poll asks the server to wait.
    pub longpoll_wait_s: u32,
    /// Presence heartbeat between tabs; a tab silent for `peer_timeout_ms` is considered gone.
    pub presence_interval_ms: Millis,
    pub peer_timeout_ms: Millis,
    /// A follower hidden this long falls asleep: it stops listening to the other tabs (no message, no timer but a
    /// heartbeat a minute) until it is shown or takes the lead, and then asks the leader for what it shows.
    pub hidden_sleep_ms: Millis,
    /// Writes per batch request.
    pub max_batch_writes: usize,
    /// Where the server's sync endpoints are.
    pub endpoints: Endpoints,
    /// A bug to inject on purpose, so the simulation can show it catches it (feature `bug-injection`, which
    /// only the simulation enables).
    #[cfg(feature = "bug-injection")]
    pub injected_bug: Option<InjectedBug>,
}

/// The paths of the syncline server's sync endpoints (the app's own query paths come from its `Model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// `POST` a batch of writes.
    pub writes: String,
    /// `GET` changes of a stream (the long-poll).
    pub changes: String,
    /// The WebSocket feed (for drivers).
    pub feed: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints { writes: "/api/writes".into(), changes: "/api/changes".into(), feed: "/api/feed".into() }
    }
}

/// Bugs the simulation injects to prove its invariants catch them (see `crates/sim`). Without the
/// `bug-injection` feature none can be switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InjectedBug {
    /// A tab that becomes leader forgets the outbox it restored (writes are lost).
    NewLeaderDropsOutbox,
    /// Hidden tabs count as active: the socket and long-polls never pause (hidden traffic).
    HiddenTabsCountAsActive,
    /// Followers fetch for themselves instead of asking the leader.
    FollowersFetch,
    /// A write is shared with the other tabs before it is stored, and only the leader deletes stored entries,
    /// so the leader may settle it and delete its entry before the put lands (an entry that outlives its
    /// write) — what a real browser showed.
    FollowerPersistsAfterBroadcasting,
    /// A tab's lock released (`Input::TabGone`) is not heard: an asleep tab that is gone is kept for good.
    IgnoresTabGone,
    /// A write the user began earlier (an editor opened) is based on the entity as the tab has it when saved, not
    /// as the user saw it: a change that arrived in between is overwritten unseen — what a real browser showed.
    EditBasedOnSaveTime,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            stale_time_ms: 30_000,
            gc_time_ms: 5 * 60_000,
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
            fallback_after_failures: 3,
            probe_interval_ms: 30_000,
            ping_interval_ms: 20_000,
            hidden_grace_ms: 30_000,
            max_concurrent_fetches: 2,
            longpoll_wait_s: 25,
            presence_interval_ms: 2_000,
            peer_timeout_ms: 5_000,
            hidden_sleep_ms: 2_000,
            max_batch_writes: 20,
            endpoints: Endpoints::default(),
            #[cfg(feature = "bug-injection")]
            injected_bug: None,
        }
    }
}

/// What hidden tabs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundMode {
    /// No network at all while no tab is visible (after the grace period).
    #[default]
    Pause,
    /// Poll only critical queries, every `background_interval_ms`.
    CriticalOnly,
    /// Poll every query, every `background_interval_ms`.
    Slower,
}

/// The user's sync preferences (persisted in `localStorage`, followed across tabs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preferences {
    /// Use the WebSocket feed. Off: refetch by timer instead.
    pub realtime: bool,
    /// Refetch period of visible queries when not live.
    pub foreground_interval_ms: Millis,
    pub background: BackgroundMode,
    /// Poll period while hidden (when `background` polls): 30–600 s.
    pub background_interval_ms: Millis,
    /// Fewer, later requests (as when the browser's Save-Data is on).
    pub data_saver: bool,
    /// Cap of every retry delay.
    pub max_retry_delay_ms: Millis,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            realtime: true,
            foreground_interval_ms: 5_000,
            background: BackgroundMode::Pause,
            background_interval_ms: 60_000,
            data_saver: false,
            max_retry_delay_ms: 60_000,
        }
    }
}

impl Preferences {
    /// Refuses settings that would hammer the server or never retry.
    pub fn validate(&self) -> Result<(), String> {
        if !(1_000..=3_600_000).contains(&self.foreground_interval_ms) {
            return Err("the foreground interval must be between 1 s and 1 h".into());
        }
        if !(30_000..=3_600_000).contains(&self.background_interval_ms) {
            return Err("the background interval must be between 30 s and 1 h".into());
        }
        if !(1_000..=3_600_000).contains(&self.max_retry_delay_ms) {
            return Err("the maximum retry delay must be between 1 s and 1 h".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_intervals_are_not() {
        assert!(Preferences::default().validate().is_ok());
        let zero = Preferences { foreground_interval_ms: 0, ..Preferences::default() };
        assert!(zero.validate().is_err());
        let fast_background = Preferences { background_interval_ms: 5_000, ..Preferences::default() };
        assert!(fast_background.validate().is_err());
    }
}
