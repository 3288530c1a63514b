//! The failed-auth guard (the contract, §5 step 3): a GCRA bucket per client address
//! at `limits.failed_auth_per_ip`, drained by each `invalid_token` answer.
//! Once an address's burst is used up, [`FailedAuthGuard::blocked`] answers
//! `Some(retry_after)` until one unit has come back — "until the bucket
//! refills" is read as "until the next failure would be counted again",
//! which is also the earliest moment a further guess could be made.
//!
//! Invariant: memory is bounded. Keys are compact ([`IpKey`]: an IPv4
//! address, or an IPv6 address aggregated to its /64, so one host cannot mint
//! keys by rotating its interface identifier), only `record_failure` creates
//! one, and the map never holds more than `max_keys` of them. When it is
//! full, a new address first triggers a sweep of refilled buckets (at most
//! once a second, so a spray of fresh addresses cannot make every failure
//! scan the map) and, if there is still no room, is counted in one shared
//! overflow bucket. While the map is full, an address without its own bucket
//! is judged by the overflow bucket: the guard fails closed for untracked
//! addresses under a distributed attack rather than letting a spray from
//! fresh addresses guess without limit. Addresses already tracked keep their
//! own buckets throughout. Memory at the default cap is a few MiB.
//!
//! Why not governor's keyed limiter: it has no way to ask "would this key
//! be limited now?" without consuming a cell, its positive outcome hides the
//! theoretical arrival time (so the exact "blocked until" cannot be derived
//! from it), and its store inserts a key on every check with no cap. The
//! guard therefore keeps the one number GCRA needs per key, the theoretical
//! arrival time (TAT), in its own capped map, with governor's arithmetic
//! (emission interval T = per / requests, tolerance τ = T·(burst − 1); a
//! unit is available when now ≥ TAT − τ; the bucket is full when now ≥ TAT)
//! and governor's [`Clock`] for time.
//!
//! The rate is fixed for a guard's life: a reload that changes
//! `failed_auth_per_ip` builds a fresh guard ([`FailedAuthGuard::for_rate`]),
//! which resets the failed-auth state; an unchanged rate keeps it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};

use super::{replenish_interval, retry_after_secs};
use crate::config::Rate;

/// The default cap on tracked client addresses.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The least time between two sweeps that a failure on a full map may start.
const SWEEP_SPACING: Duration = Duration::from_secs(1);

/// The failed-auth key of a client address: an IPv4 address (IPv4-mapped
/// IPv6 included) or the /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    /// The upper 64 bits of the address.
    V6Prefix(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => IpKey::V4(u32::from(a)),
            IpAddr::V6(a) => IpKey::V6Prefix((u128::from(a) >> 64) as u64),
        }
    }
}

impl IpKey {
    /// A non-zero number standing for the key (IPv4 addresses above 2^32,
    /// IPv6 prefixes as they are, the all-zero prefix as 1).
    pub fn fingerprint(self) -> u64 {
        match self {
            IpKey::V4(a) => (1 << 32) | u64::from(a),
            IpKey::V6Prefix(p) => p.max(1),
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpKey::V4(a) => Ipv4Addr::from(a).fmt(f),
            IpKey::V6Prefix(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(p) << 64)),
        }
    }
}

/// GCRA parameters in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Emission interval: one unit's worth of time.
    t: u64,
    /// Tolerance: the burst beyond the first unit.
    tau: u64,
}

impl Gcra {
    fn new(rate: Rate) -> Self {
        let t = nanos(replenish_interval(rate));
        Gcra {
            t,
            tau: t.saturating_mul(u64::from(rate.burst.get() - 1)),
        }
    }

    /// How long from `now` until a unit is available, if none is.
    fn wait(&self, tat: u64, now: u64) -> Option<u64> {
        let earliest = tat.saturating_sub(self.tau);
        (now < earliest).then(|| earliest - now)
    }

    /// The TAT after one failure at `now`. As in governor, a failure with no
    /// unit available (only in a race with `blocked`) does not move the TAT,
    /// so a block cannot be stretched by failures made while it holds.
    fn consume(&self, tat: u64, now: u64) -> u64 {
        match self.wait(tat, now) {
            Some(_) => tat,
            None => tat.max(now).saturating_add(self.t),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Failed-auth buckets per client address, with a hard cap on their number.
pub struct FailedAuthGuard<C: Clock + Clone = DefaultClock> {
    rate: Rate,
    gcra: Gcra,
    clock: C,
    /// Time zero of the TATs below.
    start: C::Instant,
    max_keys: usize,
    /// TAT in nanoseconds since `start`, per key.
    buckets: DashMap<IpKey, u64>,
    /// Keys in `buckets` plus slots reserved for keys being inserted; never
    /// above `max_keys`. Read first by `blocked`, so an idle guard costs one
    /// atomic load.
    tracked: AtomicUsize,
    /// TAT of the shared bucket of addresses that found the map full.
    overflow: AtomicU64,
    /// Failures counted in the overflow bucket.
    overflowed: AtomicU64,
    /// Nanoseconds since `start` before which a full map is not swept again.
    next_sweep: AtomicU64,
}

impl FailedAuthGuard<DefaultClock> {
    /// A guard at `rate` tracking at most `max_keys` addresses (at least 1),
    /// on the default clock.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self::with_clock(rate, max_keys, DefaultClock::default())
    }
}

impl<C: Clock + Clone> FailedAuthGuard<C> {
    /// A guard at `rate` tracking at most `max_keys` addresses (at least 1),
    /// reading time from `clock`.
    pub fn with_clock(rate: Rate, max_keys: usize, clock: C) -> Self {
        let start = clock.now();
        FailedAuthGuard {
            rate,
            gcra: Gcra::new(rate),
            clock,
            start,
            max_keys: max_keys.max(1),
            buckets: DashMap::new(),
            tracked: AtomicUsize::new(0),
            overflow: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            next_sweep: AtomicU64::new(0),
        }
    }

    /// The guard to use at `rate` after a reload: this one (state kept) if
    /// its rate is `rate`, else a fresh one with the same cap and clock.
    pub fn for_rate(self: &Arc<Self>, rate: Rate) -> Arc<Self> {
        if self.rate == rate {
            Arc::clone(self)
        } else {
            Arc::new(Self::with_clock(rate, self.max_keys, self.clock.clone()))
        }
    }

    /// `Some(retry_after_secs)` (whole seconds, at least 1) while `ip` has
    /// used up its burst of failures; `None` otherwise. Never creates state
    /// and never allocates: one atomic load when no address has state, else
    /// one read of the map.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let tracked = self.tracked.load(Relaxed);
        if tracked == 0 {
            return None;
        }
        let own = self.buckets.get(&IpKey::from(ip)).map(|tat| *tat);
        let tat = match own {
            Some(tat) => tat,
            None if tracked >= self.max_keys => self.overflow.load(Relaxed),
            None => return None,
        };
        let wait = self.gcra.wait(tat, self.now())?;
        Some(retry_after_secs(Duration::from_nanos(wait)))
    }

    /// Counts one `invalid_token` answer against `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        let key = IpKey::from(ip);
        let now = self.now();
        if let Some(mut tat) = self.buckets.get_mut(&key) {
            *tat = self.gcra.consume(*tat, now);
            return;
        }
        if !self.claim_slot(now) {
            self.overflowed.fetch_add(1, Relaxed);
            let _ = self
                .overflow
                .fetch_update(Relaxed, Relaxed, |tat| Some(self.gcra.consume(tat, now)));
            return;
        }
        match self.buckets.entry(key) {
            Entry::Occupied(mut e) => {
                // Another thread inserted the key since the lookup above.
                self.tracked.fetch_sub(1, Relaxed);
                let tat = e.get_mut();
                *tat = self.gcra.consume(*tat, now);
            }
            Entry::Vacant(e) => {
                e.insert(self.gcra.consume(now, now));
            }
        }
    }

    /// Drops the buckets that are full again (indistinguishable from an
    /// address with no state). Call periodically.
    pub fn retain_recent(&self) {
        let now = self.now();
        self.next_sweep
            .store(now.saturating_add(nanos(SWEEP_SPACING)), Relaxed);
        self.sweep(now);
    }

    /// How many addresses have their own bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address has its own bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Failures counted in the shared overflow bucket because the map was
    /// full (for a metric).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Relaxed)
    }

    /// The rate of every address's bucket.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The cap on addresses with their own bucket.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// Reserves room for one new key, sweeping a full map first if a sweep
    /// is due.
    fn claim_slot(&self, now: u64) -> bool {
        self.reserve_slot() || (self.sweep_if_due(now) && self.reserve_slot())
    }

    fn reserve_slot(&self) -> bool {
        self.tracked
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max_keys).then_some(n + 1))
            .is_ok()
    }

    /// Sweeps if no sweep happened in the last `SWEEP_SPACING`; says whether
    /// this call swept. Never called with a map reference held.
    fn sweep_if_due(&self, now: u64) -> bool {
        let due = self.next_sweep.load(Relaxed);
        if now < due {
            return false;
        }
        let next = now.saturating_add(nanos(SWEEP_SPACING));
        if self
            .next_sweep
            .compare_exchange(due, next, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        self.sweep(now);
        true
    }

    fn sweep(&self, now: u64) {
        self.buckets.retain(|_, tat| {
            let keep = *tat > now;
            if !keep {
                self.tracked.fetch_sub(1, Relaxed);
            }
            keep
        });
    }
}

impl<C: Clock + Clone> fmt::Debug for FailedAuthGuard<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedAuthGuard")
            .field("rate", &self.rate)
            .field("max_keys", &self.max_keys)
            .field("tracked", &self.tracked.load(Relaxed))
            .field("overflowed", &self.overflowed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;

    /// Three failures at once, one more every 20 s.
    fn three_per_minute() -> Rate {
        Rate {
            requests: NonZeroU32::new(3).unwrap(),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(3).unwrap(),
        }
    }

    fn guard(max_keys: usize) -> (FailedAuthGuard<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let g = FailedAuthGuard::with_clock(three_per_minute(), max_keys, clock.clone());
        (g, clock)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_burst_of_failures_blocks_the_address_and_spares_others() {
        let (g, _) = guard(DEFAULT_MAX_KEYS);
        let bad = ip("203.0.113.7");
        for _ in 0..2 {
            g.record_failure(bad);
            assert_eq!(g.blocked(bad), None);
        }
        g.record_failure(bad);
        assert_eq!(g.blocked(bad), Some(20));
        assert_eq!(g.blocked(ip("203.0.113.8")), None);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_block_lasts_until_one_failure_has_come_back() {
        let (g, clock) = guard(DEFAULT_MAX_KEYS);
        let bad = ip("203.0.113.7");
        for _ in 0..3 {
            g.record_failure(bad);
        }
        clock.advance(Duration::from_millis(10_500));
        assert_eq!(g.blocked(bad), Some(10));
        clock.advance(Duration::from_millis(9_000));
        assert_eq!(g.blocked(bad), Some(1));
        clock.advance(Duration::from_millis(500));
        assert_eq!(g.blocked(bad), None);
        // Only one unit came back: the next failure blocks again.
        g.record_failure(bad);
        assert_eq!(g.blocked(bad), Some(20));
    }

    #[test]
    fn failures_while_blocked_do_not_extend_the_block() {
        let (g, _) = guard(DEFAULT_MAX_KEYS);
        let bad = ip("203.0.113.7");
        for _ in 0..10 {
            g.record_failure(bad);
        }
        assert_eq!(g.blocked(bad), Some(20));
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64() {
        let (g, _) = guard(DEFAULT_MAX_KEYS);
        g.record_failure(ip("2001:db8:1:2::1"));
        g.record_failure(ip("2001:db8:1:2:aaaa::2"));
        g.record_failure(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(g.blocked(ip("2001:db8:1:2::99")), Some(20));
        assert_eq!(g.blocked(ip("2001:db8:1:3::1")), None);
        assert_eq!(g.len(), 1);
        assert_eq!(
            IpKey::from(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_ipv4_address() {
        assert_eq!(
            IpKey::from(ip("::ffff:192.0.2.1")),
            IpKey::from(ip("192.0.2.1"))
        );
        assert_ne!(IpKey::from(ip("192.0.2.1")), IpKey::from(ip("192.0.2.2")));
    }

    #[test]
    fn asking_never_creates_state() {
        let (g, _) = guard(DEFAULT_MAX_KEYS);
        g.record_failure(ip("198.51.100.1"));
        for i in 0..1000u32 {
            assert_eq!(g.blocked(IpAddr::V4(Ipv4Addr::from(i))), None);
        }
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn retain_recent_drops_only_refilled_buckets() {
        let (g, clock) = guard(DEFAULT_MAX_KEYS);
        g.record_failure(ip("192.0.2.1")); // full again at 20 s
        clock.advance(secs(15));
        g.record_failure(ip("192.0.2.2")); // full again at 35 s
        clock.advance(secs(5));
        g.retain_recent();
        assert_eq!(g.len(), 1);
        clock.advance(secs(15));
        g.retain_recent();
        assert!(g.is_empty());
        // An emptied guard answers None from its fast path.
        assert_eq!(g.blocked(ip("192.0.2.2")), None);
    }

    #[test]
    fn the_cap_holds_against_many_distinct_addresses() {
        let (g, _) = guard(8);
        for i in 0..10_000u32 {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(g.len(), 8);
        assert_eq!(g.overflowed(), 10_000 - 8);
        for i in 0..10_000u64 {
            g.record_failure(IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64)));
        }
        assert_eq!(g.len(), 8);
    }

    #[test]
    fn the_cap_holds_when_threads_race_to_add_addresses() {
        let (g, _) = guard(100);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let g = &g;
                s.spawn(move || {
                    for i in 0..5_000u32 {
                        g.record_failure(IpAddr::V4(Ipv4Addr::from(t << 24 | i)));
                    }
                });
            }
        });
        assert_eq!(g.len(), 100);
        assert_eq!(g.overflowed(), 20_000 - 100);
    }

    #[test]
    fn a_full_map_sends_new_addresses_to_the_shared_overflow_bucket() {
        let (g, _) = guard(2);
        let tracked = ip("192.0.2.1");
        g.record_failure(tracked);
        g.record_failure(ip("192.0.2.2"));
        let sprayers = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
        for s in sprayers {
            g.record_failure(ip(s));
        }
        assert_eq!(g.overflowed(), 3);
        // The overflow bucket's burst is used up: untracked addresses,
        // even ones that never failed, are blocked while the map is full.
        assert_eq!(g.blocked(ip(sprayers[0])), Some(20));
        assert_eq!(g.blocked(ip("203.0.113.50")), Some(20));
        // Tracked addresses keep their own buckets.
        assert_eq!(g.blocked(tracked), None);
    }

    #[test]
    fn a_full_map_reclaims_refilled_buckets_before_overflowing() {
        let (g, clock) = guard(2);
        g.record_failure(ip("192.0.2.1"));
        g.record_failure(ip("192.0.2.2"));
        clock.advance(secs(20));
        g.record_failure(ip("192.0.2.3"));
        assert_eq!(g.overflowed(), 0);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_full_map_is_swept_at_most_once_a_second_by_failures() {
        let (g, clock) = guard(1);
        g.record_failure(ip("192.0.2.1")); // full again at 20 s
        clock.advance(Duration::from_millis(19_900));
        g.retain_recent(); // nothing to drop yet
        clock.advance(Duration::from_millis(100));
        g.record_failure(ip("192.0.2.2"));
        assert_eq!(g.overflowed(), 1, "swept 100 ms after the last sweep");
        clock.advance(Duration::from_millis(900));
        g.record_failure(ip("192.0.2.3"));
        assert_eq!(g.overflowed(), 1, "the sweep made room");
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn an_unchanged_rate_keeps_the_guard_and_a_changed_one_resets_it() {
        let (g, _) = guard(5);
        let g = Arc::new(g);
        let bad = ip("203.0.113.7");
        for _ in 0..3 {
            g.record_failure(bad);
        }
        let same = g.for_rate(three_per_minute());
        assert!(Arc::ptr_eq(&g, &same));
        assert_eq!(same.blocked(bad), Some(20));
        let looser = Rate {
            burst: NonZeroU32::new(10).unwrap(),
            ..three_per_minute()
        };
        let fresh = g.for_rate(looser);
        assert_eq!(fresh.blocked(bad), None);
        assert_eq!((fresh.rate(), fresh.max_keys()), (looser, 5));
    }
}
