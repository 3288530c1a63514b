//! The per-token limiter: one governor *direct* GCRA cell per token id,
//! kept in a registry beside the token index so that a reload which leaves
//! a token's rate unchanged keeps its quota.
//!
//! Invariant: [`TokenLimiter::check`] is one atomic compare-and-swap loop
//! plus arithmetic; it neither allocates nor locks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue};

use super::{ceil_secs, replenish_interval, retry_after_secs};
use crate::config::Rate;

/// `RateLimit-Limit`, as in draft-ietf-httpapi-ratelimit-headers-06.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`, as in draft-ietf-httpapi-ratelimit-headers-06.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`, as in draft-ietf-httpapi-ratelimit-headers-06.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A request the token's limit let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The token's burst: the most requests it may make at once.
    pub limit: u32,
    /// Requests the token may still make at once, after this one.
    pub remaining: u32,
    /// Seconds until the bucket is full again, rounded up. Governor does not
    /// expose the exact arrival time on a positive outcome, so this is
    /// derived from `remaining` and may exceed the exact value by less than
    /// one replenish interval (`per / requests`).
    pub reset_secs: u64,
}

/// A request the token's limit refused (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The token's burst.
    pub limit: u32,
    /// `Retry-After`: whole seconds until one request is allowed again,
    /// rounded up, at least 1.
    pub retry_after_secs: u64,
    /// Seconds until the bucket is full again, rounded up.
    pub reset_secs: u64,
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// One token's GCRA limiter: `rate.requests` per `rate.per`, at most
/// `rate.burst` at once.
pub struct TokenLimiter<C: Clock = DefaultClock> {
    limiter: Direct<C>,
    rate: Rate,
    /// Governor's emission interval T: one request's worth of time.
    interval: Duration,
}

impl TokenLimiter<DefaultClock> {
    /// A limiter for `rate` on the default clock, with a full bucket.
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> TokenLimiter<C> {
    /// A limiter for `rate` reading time from `clock`, with a full bucket.
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        let interval = replenish_interval(rate);
        let quota = Quota::with_period(interval)
            .expect("the interval is at least one nanosecond")
            .allow_burst(rate.burst);
        let limiter = RateLimiter::direct_with_clock(quota, clock)
            .with_middleware::<StateInformationMiddleware>();
        TokenLimiter {
            limiter,
            rate,
            interval,
        }
    }

    /// Takes one request from the bucket, or says how long until one is
    /// available. Allocation-free.
    pub fn check(&self) -> Result<Allowed, Limited> {
        let burst = self.rate.burst.get();
        match self.limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // GCRA: ceil((TAT - now) / T) == burst - remaining, so the
                // bucket is full again at most (burst - remaining) * T from now.
                let used = burst.saturating_sub(remaining);
                Ok(Allowed {
                    limit: burst,
                    remaining,
                    reset_secs: ceil_secs(self.interval.saturating_mul(used)),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // Full again once the other burst - 1 requests' worth has come back too.
                let tau = self.interval.saturating_mul(burst - 1);
                Err(Limited {
                    limit: burst,
                    retry_after_secs: retry_after_secs(wait),
                    reset_secs: ceil_secs(wait.saturating_add(tau)),
                })
            }
        }
    }

    /// The rate this limiter enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

impl<C: Clock> fmt::Debug for TokenLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimiter")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// The limiters of every token id, kept across reloads.
///
/// Called when a token index is built, never per request: the index stores
/// the returned `Arc<TokenLimiter>` in the token's entry.
pub struct TokenLimiters<C: Clock + Clone = DefaultClock> {
    clock: C,
    by_id: DashMap<Arc<str>, Arc<TokenLimiter<C>>>,
}

impl TokenLimiters<DefaultClock> {
    /// An empty registry on the default clock.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for TokenLimiters<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> TokenLimiters<C> {
    /// An empty registry whose limiters read time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        TokenLimiters {
            clock,
            by_id: DashMap::new(),
        }
    }

    /// The limiter of token `id` at `rate`: the existing one if its rate is
    /// unchanged (its state carries over), else a fresh, full one that
    /// replaces it (a changed rate takes effect with the reload that
    /// changed it).
    pub fn get_or_create(&self, id: &str, rate: Rate) -> Arc<TokenLimiter<C>> {
        if let Some(existing) = self.by_id.get(id) {
            if existing.rate == rate {
                return Arc::clone(&existing);
            }
        }
        let fresh = || Arc::new(TokenLimiter::with_clock(rate, self.clock.clone()));
        let mut entry = self.by_id.entry(Arc::from(id)).or_insert_with(fresh);
        if entry.rate != rate {
            *entry = fresh();
        }
        Arc::clone(&entry)
    }

    /// Drops the limiters of ids for which `live_ids` is false (tokens no
    /// longer in the index); call after each reload.
    pub fn retain(&self, live_ids: impl Fn(&str) -> bool) {
        self.by_id.retain(|id, _| live_ids(id));
    }

    /// How many token ids have a limiter.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no token id has a limiter.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl<C: Clock + Clone> fmt::Debug for TokenLimiters<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimiters")
            .field("tokens", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

/// The response fields of an allowed request, following
/// [draft-ietf-httpapi-ratelimit-headers-06] (December 2022), the last
/// revision with separate `RateLimit-Limit`, `RateLimit-Remaining` and
/// `RateLimit-Reset` fields (revision 07 folded them into one `RateLimit`
/// field beside `RateLimit-Policy`). Each is a bare integer; `Reset` is
/// delta-seconds. The optional `RateLimit-Policy` is not sent.
///
/// Values below [`SMALL`] (limits and resets most deployments have) come
/// from a table built once, so they cost no allocation; larger ones are
/// formatted (one allocation each).
///
/// [draft-ietf-httpapi-ratelimit-headers-06]: https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-ratelimit-headers-06
pub fn ratelimit_headers(a: &Allowed) -> [(HeaderName, HeaderValue); 3] {
    [
        (RATELIMIT_LIMIT, number(a.limit.into())),
        (RATELIMIT_REMAINING, number(a.remaining.into())),
        (RATELIMIT_RESET, number(a.reset_secs)),
    ]
}

/// The fields of a 429 for the token's limit: the same three fields as
/// [`ratelimit_headers`] (`RateLimit-Remaining: 0`) and `Retry-After`.
pub fn limited_headers(l: &Limited) -> [(HeaderName, HeaderValue); 4] {
    [
        (RATELIMIT_LIMIT, number(l.limit.into())),
        (RATELIMIT_REMAINING, number(0)),
        (RATELIMIT_RESET, number(l.reset_secs)),
        (http::header::RETRY_AFTER, number(l.retry_after_secs)),
    ]
}

/// Numbers below this are header values from a table (about 40 KiB).
const SMALL: u64 = 1000;

/// `n` as a header value; below [`SMALL`] a clone of a static one (no
/// allocation, no shared reference count).
fn number(n: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    match usize::try_from(n) {
        Ok(i) if n < SMALL => TABLE.get_or_init(|| {
            (0..SMALL)
                .map(|n| HeaderValue::from_static(n.to_string().leak()))
                .collect()
        })[i]
            .clone(),
        _ => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn numbers_read_the_same_from_the_table_and_formatted() {
        for n in [0, 7, 10, 99, 100, 999, 1000, 1001, 123_456, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    use crate::ratelimit::test_rate as rate;

    /// One request per 10 s, three at once.
    fn slow() -> Rate {
        rate(1, Duration::from_secs(10), 3)
    }

    #[test]
    fn burst_is_allowed_then_limited_with_retry_after_of_one_interval() {
        let clock = FakeRelativeClock::default();
        let l = TokenLimiter::with_clock(slow(), clock.clone());
        let allowed: Vec<Allowed> = (0..3).map(|_| l.check().unwrap()).collect();
        assert_eq!(
            allowed,
            [(2, 10), (1, 20), (0, 30)].map(|(remaining, reset_secs)| Allowed {
                limit: 3,
                remaining,
                reset_secs
            })
        );
        assert_eq!(
            l.check(),
            Err(Limited {
                limit: 3,
                retry_after_secs: 10,
                reset_secs: 30
            })
        );
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            l.check(),
            Err(Limited {
                limit: 3,
                retry_after_secs: 6,
                reset_secs: 26
            })
        );
    }

    #[test]
    fn one_request_comes_back_after_one_interval_and_the_burst_after_all() {
        let clock = FakeRelativeClock::default();
        let l = TokenLimiter::with_clock(slow(), clock.clone());
        for _ in 0..3 {
            l.check().unwrap();
        }
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.check().map(|a| a.remaining), Ok(0));
        assert!(l.check().is_err());
        clock.advance(Duration::from_secs(30));
        let a = l.check().unwrap();
        assert_eq!((a.remaining, a.reset_secs), (2, 10));
    }

    #[test]
    fn retry_after_rounds_sub_second_waits_up_to_one() {
        let clock = FakeRelativeClock::default();
        let l = TokenLimiter::with_clock(rate(10, Duration::from_secs(1), 1), clock.clone());
        assert_eq!(
            l.check(),
            Ok(Allowed {
                limit: 1,
                remaining: 0,
                reset_secs: 1
            })
        );
        clock.advance(Duration::from_millis(99));
        assert_eq!(l.check().map_err(|e| e.retry_after_secs), Err(1));
        clock.advance(Duration::from_millis(1));
        assert!(l.check().is_ok());
    }

    #[test]
    fn retry_after_rounds_fractional_seconds_up() {
        let clock = FakeRelativeClock::default();
        let l = TokenLimiter::with_clock(slow(), clock.clone());
        for _ in 0..3 {
            l.check().unwrap();
        }
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            l.check(),
            Err(Limited {
                limit: 3,
                retry_after_secs: 10,
                reset_secs: 30
            })
        );
    }

    #[test]
    fn per_token_overrides_get_their_own_rate_and_state() {
        let limiters = TokenLimiters::with_clock(FakeRelativeClock::default());
        let strict = limiters.get_or_create("strict", rate(1, Duration::from_secs(60), 1));
        let default = limiters.get_or_create("default", slow());
        assert!(strict.check().is_ok());
        assert_eq!(strict.check().map_err(|e| e.retry_after_secs), Err(60));
        for remaining in [2, 1, 0] {
            assert_eq!(default.check().map(|a| a.remaining), Ok(remaining));
        }
        assert!(default.check().is_err());
        assert_eq!(strict.rate(), rate(1, Duration::from_secs(60), 1));
        assert_eq!(default.rate(), slow());
    }

    #[test]
    fn an_unchanged_rate_keeps_the_limiter_and_its_state() {
        let limiters = TokenLimiters::with_clock(FakeRelativeClock::default());
        let before = limiters.get_or_create("grafana", slow());
        for _ in 0..3 {
            before.check().unwrap();
        }
        let after = limiters.get_or_create("grafana", slow());
        assert!(Arc::ptr_eq(&before, &after));
        assert!(after.check().is_err());
        assert_eq!(limiters.len(), 1);
    }

    #[test]
    fn a_changed_rate_replaces_the_limiter_with_a_full_one() {
        let limiters = TokenLimiters::with_clock(FakeRelativeClock::default());
        let before = limiters.get_or_create("grafana", slow());
        for _ in 0..3 {
            before.check().unwrap();
        }
        let raised = rate(1, Duration::from_secs(10), 5);
        let after = limiters.get_or_create("grafana", raised);
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(after.rate(), raised);
        assert_eq!(after.check().map(|a| a.remaining), Ok(4));
        assert!(Arc::ptr_eq(
            &after,
            &limiters.get_or_create("grafana", raised)
        ));
        assert_eq!(limiters.len(), 1);
    }

    #[test]
    fn retain_drops_the_limiters_of_removed_tokens() {
        let limiters = TokenLimiters::with_clock(FakeRelativeClock::default());
        let kept = limiters.get_or_create("kept", slow());
        let gone = limiters.get_or_create("gone", slow());
        for _ in 0..3 {
            gone.check().unwrap();
        }
        limiters.retain(|id| id == "kept");
        assert_eq!(limiters.len(), 1);
        assert!(Arc::ptr_eq(&kept, &limiters.get_or_create("kept", slow())));
        let back = limiters.get_or_create("gone", slow());
        assert!(!Arc::ptr_eq(&gone, &back));
        assert!(back.check().is_ok());
    }

    #[test]
    fn allowed_headers_are_the_three_draft_06_fields_as_integers() {
        let headers = ratelimit_headers(&Allowed {
            limit: 200,
            remaining: 0,
            reset_secs: 17,
        });
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("ratelimit-limit", "200"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "17")
            ]
        );
    }

    #[test]
    fn limited_headers_add_retry_after_and_zero_remaining() {
        let headers = limited_headers(&Limited {
            limit: 3,
            retry_after_secs: 4,
            reset_secs: 24,
        });
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("ratelimit-limit", "3"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "24"),
                ("retry-after", "4")
            ]
        );
    }
}
