//! Rate limits: the per-token GCRA limiter (the contract, §5 step 8), its shared
//! Redis backend (`limits.backend: redis`), and the failed-auth guard keyed
//! by client address (§5 step 3).
//!
//! Both are built off the request path, when an index or a snapshot is
//! built, and outlive snapshots so that a reload never resets a quota whose
//! rate is unchanged. On the request path a token's limit costs one atomic
//! compare-and-swap on a limiter the token entry already holds, and asking
//! whether an address is blocked costs one atomic load while no address has
//! failed-auth state, one concurrent-map read otherwise.
//!
//! With `limits.backend: redis` a token's limit is one Lua round trip to
//! Redis instead (see [`redis`]), with the local limiter as its fallback.
//!
//! Invariant: nothing here allocates per request on the local backend, and
//! nothing here ever creates state for an address except
//! [`FailedAuthGuard::record_failure`], whose map has a hard cap on its
//! number of keys.
//!
//! Times are taken from a governor [`Clock`] so tests drive them with
//! [`governor::clock::FakeRelativeClock`]; the default is governor's
//! [`DefaultClock`] (quanta, calibrated once per process).

mod failed_auth;
pub mod redis;
mod token;

use std::time::Duration;

pub use governor::clock::{Clock, DefaultClock};

pub use self::redis::RedisLimiter;
pub use failed_auth::{FailedAuthGuard, IpKey, DEFAULT_MAX_KEYS};
pub use token::{
    limited_headers, ratelimit_headers, Allowed, Limited, TokenLimiter, TokenLimiters,
    RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET,
};

/// Whole seconds in `d`, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1 (the contract, §5).
fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// The replenish interval governor will use for `rate`: `per / requests`,
/// at least one nanosecond (governor's own floor).
fn replenish_interval(rate: crate::config::Rate) -> Duration {
    rate.replenish_interval().max(Duration::from_nanos(1))
}

/// A rate for tests: `requests` per `per`, `burst` at once.
#[cfg(test)]
pub(crate) fn test_rate(requests: u32, per: Duration, burst: u32) -> crate::config::Rate {
    crate::config::Rate {
        requests: requests.try_into().unwrap(),
        per,
        burst: burst.try_into().unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_retry_after_is_at_least_one() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(9500)), 10);
    }
}
