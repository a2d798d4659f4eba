//! Scheduling policy as pure functions: how long to wait before the next reconnect, poll or retry.

use rand::Rng;

use crate::config::{BackgroundMode, EngineConfig, Preferences};
use crate::types::{EffectiveType, LinkQuality, Millis};

/// Exponential backoff with full jitter: uniform in `[0, min(cap, base · 2^attempt)]` (AWS's "full jitter"),
/// so many clients that failed together do not come back together.
pub fn full_jitter(rng: &mut impl Rng, attempt: u32, base: Millis, cap: Millis) -> Millis {
    let ceiling = base.saturating_mul(1u64 << attempt.min(30)).min(cap);
    rng.random_range(0..=ceiling)
}

/// How much slower to go on a poor or metered link.
pub fn link_factor(link: &LinkQuality, prefs: &Preferences) -> u64 {
    let by_type = match link.effective_type {
        EffectiveType::Slow2g => 4,
        EffectiveType::TwoG => 3,
        EffectiveType::ThreeG => 2,
        EffectiveType::FourG => 1,
    };
    if link.save_data || prefs.data_saver { by_type * 2 } else { by_type }
}

/// Where the browser stands, as far as polling is concerned.
#[derive(Debug, Clone, Copy)]
pub struct PollContext {
    pub online: bool,
    /// Some tab of this browser is visible.
    pub visible: bool,
    pub link: LinkQuality,
    /// The query (or stream) is marked critical.
    pub critical: bool,
}

/// Period between timed refetches of a query when no live feed keeps it fresh; `None` = do not poll.
pub fn poll_interval(prefs: &Preferences, ctx: &PollContext) -> Option<Millis> {
    if !ctx.online {
        return None;
    }
    let base = if ctx.visible {
        prefs.foreground_interval_ms
    } else {
        match prefs.background {
            BackgroundMode::Pause => return None,
            BackgroundMode::CriticalOnly if !ctx.critical => return None,
            BackgroundMode::CriticalOnly | BackgroundMode::Slower => prefs.background_interval_ms,
        }
    };
    Some(base.saturating_mul(link_factor(&ctx.link, prefs)))
}

/// Pause between two long-polls of a stream. A long-poll already waits for changes, so on a good link the next
/// one follows soon; the pause batches bursts of changes into one answer and slows down on poor links.
pub fn longpoll_gap(prefs: &Preferences, ctx: &PollContext) -> Option<Millis> {
    if !ctx.online {
        return None;
    }
    if ctx.visible { Some(1_000 * link_factor(&ctx.link, prefs)) } else { poll_interval(prefs, ctx) }
}

/// Delay before retrying after `failures` consecutive failures (of a fetch, a poll or a write batch).
pub fn retry_delay(rng: &mut impl Rng, cfg: &EngineConfig, prefs: &Preferences, failures: u32) -> Millis {
    // At least the minimum: a zero delay after a failure would hammer a struggling server.
    full_jitter(rng, failures.saturating_sub(1), cfg.backoff_min_ms * 2, prefs.max_retry_delay_ms)
        .max(cfg.backoff_min_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn ctx(visible: bool, critical: bool) -> PollContext {
        PollContext { online: true, visible, link: LinkQuality::default(), critical }
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling_and_the_cap() {
        let mut rng = SmallRng::seed_from_u64(1);
        for attempt in 0..40 {
            for _ in 0..200 {
                let d = full_jitter(&mut rng, attempt, 500, 30_000);
                assert!(d <= (500u64 << attempt.min(30)).min(30_000));
            }
        }
        // It spreads: over many draws both low and high values appear.
        let draws: Vec<_> = (0..1000).map(|_| full_jitter(&mut rng, 6, 500, 30_000)).collect();
        assert!(draws.iter().any(|&d| d < 5_000) && draws.iter().any(|&d| d > 25_000));
    }

    #[test]
    fn hidden_tabs_pause_or_poll_critical_data_slowly_by_preference() {
        let pause = Preferences::default();
        assert_eq!(poll_interval(&pause, &ctx(false, true)), None);
        let critical = Preferences { background: BackgroundMode::CriticalOnly, ..Preferences::default() };
        assert_eq!(poll_interval(&critical, &ctx(false, true)), Some(60_000));
        assert_eq!(poll_interval(&critical, &ctx(false, false)), None);
        let slower = Preferences {
            background: BackgroundMode::Slower,
            background_interval_ms: 45_000,
            ..Preferences::default()
        };
        assert_eq!(poll_interval(&slower, &ctx(false, false)), Some(45_000));
        assert_eq!(poll_interval(&slower, &ctx(true, false)), Some(5_000), "visible uses the foreground interval");
    }

    #[test]
    fn poor_links_and_data_saver_slow_polling_down_and_offline_stops_it() {
        let prefs = Preferences::default();
        let mut c = ctx(true, false);
        c.link.effective_type = EffectiveType::TwoG;
        assert_eq!(poll_interval(&prefs, &c), Some(15_000));
        c.link.save_data = true;
        assert_eq!(poll_interval(&prefs, &c), Some(30_000));
        let saver = Preferences { data_saver: true, ..Preferences::default() };
        assert_eq!(poll_interval(&saver, &ctx(true, false)), Some(10_000));
        c.online = false;
        assert_eq!(poll_interval(&prefs, &c), None);
        assert_eq!(longpoll_gap(&prefs, &c), None);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_preferred_cap() {
        let mut rng = SmallRng::seed_from_u64(7);
        let cfg = EngineConfig::default();
        let prefs = Preferences { max_retry_delay_ms: 10_000, ..Preferences::default() };
        for failures in 1..20 {
            let d = retry_delay(&mut rng, &cfg, &prefs, failures);
            assert!(d >= cfg.backoff_min_ms && d <= 10_000, "{failures}: {d}");
        }
        let early: u64 = (0..500).map(|_| retry_delay(&mut rng, &cfg, &prefs, 1)).max().unwrap();
        assert!(early <= 1_000, "the first retry comes soon");
    }
}
