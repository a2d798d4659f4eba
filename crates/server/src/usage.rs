//! What one user, or one address, may use at a time — beside the sign-in limits (`auth.rs`), the connection caps
//! (`serve.rs`) and the creation quotas (`writes.rs`):
//!
//! - **writes per second**, per user and per address: token buckets (`governor`); a batch costs one token per
//!   write and is refused whole, before any of it runs (so the engine retries it later and no write is lost or
//!   half-applied): `429 rate_limited` with `Retry-After` and the limit in words;
//! - **open feed sockets** and **waiting long-polls** per user: counted while held (drop guards); over the cap, a
//!   `429 rate_limited` before the upgrade or the wait.
//!
//! Defaults are generous for a team (a person types and drags far below them; an outbox flushed after a day
//! offline fits in the burst), and every one is a flag.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use syncline_kanban::{ErrorCode, UserId};

use crate::error::AppError;

/// The limits (`Config`: `--writes-per-second-per-user` and the rest).
#[derive(Debug, Clone, Copy)]
pub struct UsageSettings {
    pub writes_per_second_per_user: u32,
    pub write_burst_per_user: u32,
    pub writes_per_second_per_address: u32,
    pub write_burst_per_address: u32,
    pub sockets_per_user: usize,
    pub longpolls_per_user: usize,
}

/// Something a user holds open while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Held {
    Socket,
    LongPoll,
}

pub struct Usage {
    settings: UsageSettings,
    writes_per_user: DefaultKeyedRateLimiter<UserId>,
    writes_per_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    held: Mutex<HashMap<(Held, UserId), usize>>,
}

/// Gives its place back when dropped.
pub struct Holding {
    usage: Arc<Usage>,
    key: (Held, UserId),
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut held = self.usage.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

fn rate_limited(message: String, retry_after_secs: u64) -> AppError {
    let mut err = AppError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, message);
    err.retry_after = Some(retry_after_secs.max(1));
    err
}

impl Usage {
    pub fn new(settings: UsageSettings) -> Arc<Usage> {
        let quota = |per_second: u32, burst: u32| {
            Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("at least one"))
                .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least one"))
        };
        Arc::new(Usage {
            settings,
            writes_per_user: RateLimiter::keyed(quota(
                settings.writes_per_second_per_user,
                settings.write_burst_per_user,
            )),
            writes_per_address: RateLimiter::keyed(quota(
                settings.writes_per_second_per_address,
                settings.write_burst_per_address,
            )),
            clock: DefaultClock::default(),
            held: Mutex::default(),
        })
    }

    /// Counts `n` writes (one request: a REST write or a batch) for this user and address, or refuses them all.
    pub fn writes(&self, user: UserId, address: Option<IpAddr>, n: usize) -> Result<(), AppError> {
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else { return Ok(()) };
        let now = self.clock.now();
        let s = &self.settings;
        let check = |result: Result<Result<(), governor::NotUntil<_>>, governor::InsufficientCapacity>,
                     per_second: u32,
                     burst: u32,
                     whom: &str| match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(now);
                Err(rate_limited(
                    format!(
                        "more than {per_second} writes per second {whom} (bursts up to {burst}); try again in {} s",
                        wait.as_secs_f64().ceil()
                    ),
                    wait.as_secs_f64().ceil() as u64,
                ))
            }
            Err(_) => Err(rate_limited(format!("{n} writes at once: at most {burst} {whom}"), 1)),
        };
        // The user's bucket first: a request it refuses costs the address nothing. (One the address refuses has
        // cost its user's tokens — governor cannot check a key without taking — which only slows that user.)
        let r = self.writes_per_user.check_key_n(&user, n);
        check(r, s.writes_per_second_per_user, s.write_burst_per_user, "per user")?;
        if let Some(address) = address {
            let r = self.writes_per_address.check_key_n(&address, n);
            check(r, s.writes_per_second_per_address, s.write_burst_per_address, "from one address")?;
        }
        Ok(())
    }

    /// Takes a place for an open socket or a waiting long-poll of `user`, or refuses over the cap.
    pub fn hold(self: &Arc<Self>, what: Held, user: UserId) -> Result<Holding, AppError> {
        let (cap, name) = match what {
            Held::Socket => (self.settings.sockets_per_user, "open feed sockets"),
            Held::LongPoll => (self.settings.longpolls_per_user, "waiting long-polls"),
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry((what, user)).or_default();
        if *n >= cap {
            if *n == 0 {
                held.remove(&(what, user));
            }
            return Err(rate_limited(format!("at most {cap} {name} per user; close one first"), 5));
        }
        *n += 1;
        Ok(Holding { usage: self.clone(), key: (what, user) })
    }

    /// Forgets buckets back to full (from the retention sweep), so memory stays bounded.
    pub fn sweep(&self) {
        self.writes_per_user.retain_recent();
        self.writes_per_address.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Arc<Usage> {
        Usage::new(UsageSettings {
            writes_per_second_per_user: 1,
            write_burst_per_user: 5,
            writes_per_second_per_address: 1,
            write_burst_per_address: 8,
            sockets_per_user: 2,
            longpolls_per_user: 1,
        })
    }

    #[test]
    fn writes_are_counted_per_user_and_per_address_and_a_batch_is_refused_whole() {
        let u = usage();
        let (alice, bob) = (UserId::from_u128(1), UserId::from_u128(2));
        let home: IpAddr = "10.0.0.1".parse().unwrap();
        u.writes(alice, Some(home), 4).unwrap();
        let refused = u.writes(alice, Some(home), 2).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        assert!(refused.body.message.contains("per user"), "{}", refused.body.message);
        u.writes(alice, Some(home), 1).unwrap(); // the refused batch took nothing
        // Bob, from the same address: his own bucket, but the address's is nearly spent (8 - 5).
        u.writes(bob, Some(home), 3).unwrap();
        let refused = u.writes(bob, Some(home), 1).unwrap_err();
        assert!(refused.body.message.contains("from one address"), "{}", refused.body.message);
        // More than a burst at once can never pass: said so.
        let refused = u.writes(UserId::from_u128(3), None, 6).unwrap_err();
        assert!(refused.body.message.contains("6 writes at once"), "{}", refused.body.message);
    }

    #[test]
    fn sockets_and_long_polls_are_capped_per_user_while_held() {
        let u = usage();
        let alice = UserId::from_u128(1);
        let a = u.hold(Held::Socket, alice).unwrap();
        let _b = u.hold(Held::Socket, alice).unwrap();
        assert_eq!(u.hold(Held::Socket, alice).err().map(|e| e.status), Some(StatusCode::TOO_MANY_REQUESTS));
        let _poll = u.hold(Held::LongPoll, alice).unwrap(); // another kind, another cap
        u.hold(Held::Socket, UserId::from_u128(2)).unwrap(); // another user
        drop(a);
        u.hold(Held::Socket, alice).unwrap();
    }
}
