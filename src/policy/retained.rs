//! State that outlives policies: upstream connection pools and clients,
//! metrics, rate-limit buckets, the failed-auth guard and the Redis limit
//! backend. A reload builds a new policy against it, so pools stay warm and
//! quotas are never reset by a reload.
//!
//! Invariant: building a policy only reads what is retained (a client
//! cache aside, which changes no behaviour); [`Retained::adopt`] is the one
//! place where retained state follows a new policy.

use std::sync::{Arc, Mutex};

use super::Policy;
use crate::config::Rate;
use crate::metrics::Metrics;
use crate::proxy::Upstreams;
use crate::ratelimit::{FailedAuthGuard, RedisLimiter, TokenLimiters, DEFAULT_MAX_KEYS};

/// What outlives every policy.
pub struct Retained {
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub limiters: TokenLimiters,
    /// The failed-auth guard of the running policy.
    failed_auth: Mutex<Option<Arc<FailedAuthGuard>>>,
    /// The Redis limit backend of the running policy, if it uses one.
    redis: Mutex<Option<Arc<RedisLimiter>>>,
}

impl Retained {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Retained {
            upstreams: Upstreams::default(),
            metrics,
            limiters: TokenLimiters::new(),
            failed_auth: Default::default(),
            redis: Default::default(),
        }
    }

    /// The failed-auth guard for `rate`: the running one, carried over to
    /// `rate` (its buckets kept), or a new one before the first policy.
    pub(super) fn failed_auth_for(&self, rate: Rate) -> Arc<FailedAuthGuard> {
        let running = self.failed_auth.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref() {
            Some(g) => g.for_rate(rate),
            None => Arc::new(FailedAuthGuard::new(rate, DEFAULT_MAX_KEYS)),
        }
    }

    /// The Redis limit backend for `url`: the running one if its URL is
    /// unchanged, else a new, unconnected one (a changed URL on reload gets
    /// a new client). Parses the URL; does no I/O and changes nothing.
    pub(super) fn redis_for(&self, url: &str) -> Result<Arc<RedisLimiter>, String> {
        let running = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref() {
            Some(r) if r.is_for(url) => Ok(r.clone()),
            _ => RedisLimiter::open(url, self.metrics.limit_backend_up.clone()),
        }
    }

    /// Makes `policy`'s guard and limit backend the running ones. Called
    /// once a policy is built and about to serve.
    pub fn adopt(&self, policy: &Policy) {
        *self.failed_auth.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(policy.failed_auth.clone());
        self.keep_redis(policy.shared_limits.clone());
    }

    /// Makes `next` the running Redis backend (`None`: local limits). A
    /// replaced backend stops reporting; the gauge starts over at 1 (a new
    /// backend is presumed up until a check or its probe says otherwise;
    /// local limits are always up).
    fn keep_redis(&self, next: Option<Arc<RedisLimiter>>) {
        let mut running = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (running.as_ref(), next.as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = running.take() {
            old.retire();
        }
        self.metrics.limit_backend_up.set(1);
        *running = next;
    }
}
