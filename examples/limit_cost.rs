//! What a token's rate-limit check costs per request: the local GCRA cell
//! next to the Redis backend (one Lua round trip), median and p99.
//!
//! ```text
//! cargo run --release --example limit_cost -- [REDIS_URL] [CHECKS] [CONCURRENCY]
//! ```
//!
//! REDIS_URL defaults to `$TOLLGATE_TEST_REDIS_URL`, else
//! `redis://127.0.0.1:6379/`. Redis checks run one after another (latency),
//! then CONCURRENCY at a time on the one multiplexed connection, as a busy
//! gateway issues them (latency under load, and checks per second). A check
//! that misses its timeout counts at the timeout (a gateway would judge that
//! request locally) and is reported. Keys are `tollgate:gcra:limit-cost-*`
//! and expire within a millisecond.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tollgate::config::Rate;
use tollgate::ratelimit::redis::CHECK_TIMEOUT;
use tollgate::ratelimit::{RedisLimiter, TokenLimiter};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| {
        std::env::var("TOLLGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
    });
    let checks: usize = args.next().map_or(20_000, |n| n.parse().expect("CHECKS"));
    let concurrency: usize = args.next().map_or(32, |n| n.parse().expect("CONCURRENCY"));
    // Always allowed, so every Redis check also writes its key.
    let rate = Rate {
        requests: NonZeroU32::new(1_000_000).unwrap(),
        per: Duration::from_secs(1),
        burst: NonZeroU32::new(1_000_000).unwrap(),
    };

    let local = TokenLimiter::new(rate);
    let mut times = Vec::with_capacity(checks);
    for _ in 0..checks {
        let t = Instant::now();
        std::hint::black_box(local.check()).ok();
        times.push(t.elapsed());
    }
    report("local (governor cell)", &mut times, None);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisLimiter::open(&url, Gauge::default()).expect("REDIS_URL");
        redis.connect();
        for _ in 0..1_000 {
            redis.check("limit-cost-warmup", rate).await;
        }

        let mut times = Vec::with_capacity(checks);
        let mut missed = 0;
        let started = Instant::now();
        for _ in 0..checks {
            let t = Instant::now();
            let verdict = redis.check("limit-cost-serial", rate).await;
            times.push(t.elapsed());
            missed += usize::from(verdict.is_none());
        }
        let wall = started.elapsed();
        report("redis, one at a time", &mut times, Some(wall));
        println!(
            "{:<24} {missed} checks missed the {CHECK_TIMEOUT:?} timeout",
            ""
        );

        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|task| {
                let redis = redis.clone();
                let id = format!("limit-cost-{task}");
                tokio::spawn(async move {
                    let mut times = Vec::with_capacity(checks / concurrency);
                    let mut missed = 0;
                    for _ in 0..checks / concurrency {
                        let t = Instant::now();
                        let verdict = redis.check(&id, rate).await;
                        times.push(t.elapsed());
                        missed += usize::from(verdict.is_none());
                    }
                    (times, missed)
                })
            })
            .collect();
        let (mut times, mut missed) = (Vec::with_capacity(checks), 0);
        for t in tasks {
            let (some, miss) = t.await.unwrap();
            times.extend(some);
            missed += miss;
        }
        let wall = started.elapsed();
        report(
            &format!("redis, {concurrency} at a time"),
            &mut times,
            Some(wall),
        );
        println!(
            "{:<24} {missed} checks missed the {CHECK_TIMEOUT:?} timeout",
            ""
        );
    });
}

fn report(what: &str, times: &mut [Duration], wall: Option<Duration>) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let rate = wall.map_or(String::new(), |w| {
        format!(", {:.0} checks/s", times.len() as f64 / w.as_secs_f64())
    });
    println!(
        "{what:<24} n={:<6} median {:>8.3} µs  p99 {:>8.3} µs  max {:>9.3} µs{rate}",
        times.len(),
        us(at(0.5)),
        us(at(0.99)),
        us(at(1.0)),
    );
}
