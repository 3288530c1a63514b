//! Token limits shared by every gateway on one Redis (`limits.backend:
//! redis`): one GCRA state per token id, read and updated by a Lua script
//! in a single round trip, on Redis's own clock.
//!
//! The script keeps the token's theoretical arrival time (TAT, microseconds
//! of Redis `TIME`) under `tollgate:gcra:<token id>` and lets the key expire
//! when the bucket is full again (at most emission interval × burst), so an
//! idle token leaves nothing behind. Because every gateway runs the same
//! script against the same clock, the token's limit holds across all of
//! them whatever the interleaving.
//!
//! Invariant: Redis never refuses or stalls traffic. A check waits at most
//! [`CHECK_TIMEOUT`], and the caller falls back to the token's local limiter
//! for that request. An error marks the backend down at once (logged once,
//! `tollgate_limit_backend_up 0`); timeouts do after [`DOWN_AFTER`] in a row
//! ([`Streak`]), so one slow answer on a loaded host does not turn every
//! token's limit per-instance for a probe interval. While down, requests do not touch Redis at all; a
//! background probe sends `PING` (and loads the script) every
//! [`PROBE_INTERVAL`] and marks it up again once Redis answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{ceil_secs, replenish_interval, retry_after_secs, Allowed, Limited};
use crate::config::Rate;

/// The longest a request waits for its Redis limit check before it falls
/// back to the local limiter. A healthy Redis on the same network answers
/// in well under a millisecond; 50 ms bounds what an outage or a stalled
/// Redis adds to the requests in flight when it starts.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(50);

/// Timeouts in a row, with no answer between, that mark the backend down.
/// Timeouts within [`CHECK_TIMEOUT`] of the last one counted are one stall
/// and count once, however many requests were waiting on it.
pub const DOWN_AFTER: u32 = 3;

/// How often the probe asks a Redis marked down whether it is back.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the probe waits for Redis to answer (connecting included).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Prefix of every key this module writes; the token id follows.
pub const KEY_PREFIX: &str = "tollgate:gcra:";

/// GCRA in one round trip. KEYS[1]: the token's key. ARGV[1]: the emission
/// interval T in µs; ARGV[2]: the burst. Returns `{allowed (1|0),
/// remaining, retry_after_us, reset_us}`; `reset_us` is the time until the
/// bucket is full again.
///
/// A request is allowed when its new TAT, max(TAT, now) + T, is at most
/// T × burst ahead of now. `redis.replicate_commands()` lets the script
/// write after reading `TIME` on Redis before 5 (a no-op since).
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local over = new_tat - now - interval * burst
if over > 0 then
  return {0, 0, over, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((interval * burst - (new_tat - now)) / interval), 0, new_tat - now}
";

/// The script's reply: allowed, remaining, retry-after µs, reset µs.
type Reply = (i64, i64, i64, i64);

/// The Redis limit backend of one `limits.redis_url`.
///
/// Created when a config naming the URL is compiled (parsing only, no I/O);
/// connects on first use ([`RedisLimiter::connect`]). Kept across reloads
/// while the URL is unchanged.
pub struct RedisLimiter {
    /// As configured; compared on reload, never logged (it may carry a
    /// password).
    url: String,
    client: redis::Client,
    script: Script,
    /// Set on first use; `None` if the client could not be built (then
    /// every check falls back to the local limiter).
    conn: OnceLock<Option<ConnectionManager>>,
    up: AtomicBool,
    /// Timeouts since the last answer; `suspect` is set while it counts
    /// any, so an answer resets it without taking the lock.
    timeouts: Mutex<Streak>,
    suspect: AtomicBool,
    /// Set once a reload replaced this backend: it stops touching the gauge.
    retired: AtomicBool,
    gauge: Gauge,
}

impl RedisLimiter {
    /// A backend for `url`, reporting its state on `gauge`
    /// (`tollgate_limit_backend_up`). Parses the URL; connects to nothing.
    pub fn open(url: &str, gauge: Gauge) -> Result<Arc<RedisLimiter>, String> {
        // The crate's parse errors are fixed sentences; none repeats the URL.
        let client =
            redis::Client::open(url).map_err(|e| format!("not a usable Redis URL: {e}"))?;
        Ok(Arc::new(RedisLimiter {
            url: url.to_owned(),
            client,
            script: Script::new(GCRA_LUA),
            conn: OnceLock::new(),
            up: AtomicBool::new(true),
            timeouts: Mutex::new(Streak::default()),
            suspect: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            gauge,
        }))
    }

    /// Whether this backend was opened for `url`.
    pub fn is_for(&self, url: &str) -> bool {
        self.url == url
    }

    /// Whether requests check their limit in Redis now (else locally).
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Starts the connection and the probe, once; the probe's first `PING`
    /// and `SCRIPT LOAD` go out at once, so a gateway knows at startup
    /// whether Redis is there. Must run inside a Tokio runtime.
    pub fn connect(self: &Arc<Self>) -> Option<&ConnectionManager> {
        self.conn
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(PROBE_TIMEOUT))
                    .set_response_timeout(Some(PROBE_TIMEOUT))
                    // One attempt per reconnect: the probe is the retry loop.
                    .set_number_of_retries(0);
                match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
                    Ok(conn) => {
                        tokio::spawn(probe(Arc::downgrade(self), conn.clone()));
                        Some(conn)
                    }
                    Err(e) => {
                        self.mark_down(&e);
                        None
                    }
                }
            })
            .as_ref()
    }

    /// One GCRA step for token `id` at `rate`, in Redis. `None` when Redis
    /// did not answer within [`CHECK_TIMEOUT`] or answered with an error:
    /// the backend is then marked down and the caller uses the local
    /// limiter for this request.
    pub async fn check(self: &Arc<Self>, id: &str, rate: Rate) -> Option<Result<Allowed, Limited>> {
        let mut conn = self.connect()?.clone();
        let burst = rate.burst.get();
        let mut call = self.script.key(format!("{KEY_PREFIX}{id}"));
        call.arg(interval_micros(rate)).arg(burst);
        match tokio::time::timeout(CHECK_TIMEOUT, call.invoke_async::<Reply>(&mut conn)).await {
            Ok(Ok(reply)) => {
                if self.suspect.load(Ordering::Acquire) {
                    self.lock_timeouts().answered();
                    self.suspect.store(false, Ordering::Release);
                }
                Some(verdict(reply, burst))
            }
            Ok(Err(e)) => {
                self.mark_down(&e);
                None
            }
            Err(_) => {
                self.suspect.store(true, Ordering::Release);
                if self.lock_timeouts().timed_out(Instant::now()) {
                    self.mark_down(&format_args!(
                        "no answer within {CHECK_TIMEOUT:?}, {DOWN_AFTER} times in a row"
                    ));
                }
                None
            }
        }
    }

    /// Stops this backend from reporting on the gauge (a reload replaced it).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    fn lock_timeouts(&self) -> std::sync::MutexGuard<'_, Streak> {
        self.timeouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_down(&self, error: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) && !self.retired.load(Ordering::Acquire) {
            self.gauge.set(0);
            tracing::warn!(
                redis = %self.client.get_connection_info().addr(),
                %error,
                "Redis limit backend unreachable; token limits are local to this gateway until it answers"
            );
        }
    }

    fn mark_up(&self) {
        self.lock_timeouts().answered();
        self.suspect.store(false, Ordering::Release);
        if !self.up.swap(true, Ordering::AcqRel) && !self.retired.load(Ordering::Acquire) {
            self.gauge.set(1);
            tracing::info!(
                redis = %self.client.get_connection_info().addr(),
                "Redis limit backend answers again; token limits are shared"
            );
        }
    }
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("addr", &self.client.get_connection_info().addr())
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Check timeouts since Redis last answered: when enough of them, apart
/// in time, say the backend is down.
#[derive(Debug, Default)]
struct Streak {
    count: u32,
    last: Option<Instant>,
}

impl Streak {
    /// A check timed out at `now`; whether that makes [`DOWN_AFTER`] in a
    /// row. One within [`CHECK_TIMEOUT`] of the last one counted is part of
    /// the same stall and does not count again.
    fn timed_out(&mut self, now: Instant) -> bool {
        let same_stall = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < CHECK_TIMEOUT);
        if !same_stall {
            self.count += 1;
            self.last = Some(now);
        }
        self.count >= DOWN_AFTER
    }

    /// Redis answered: the streak is over.
    fn answered(&mut self) {
        *self = Streak::default();
    }
}

/// The emission interval in whole microseconds, at least 1.
fn interval_micros(rate: Rate) -> u64 {
    u64::try_from(replenish_interval(rate).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0).unsigned_abs())
}

/// The script's reply as the same values the local limiter returns.
fn verdict(
    (allowed, remaining, retry_us, reset_us): Reply,
    burst: u32,
) -> Result<Allowed, Limited> {
    if allowed == 1 {
        Ok(Allowed {
            limit: burst,
            remaining: u32::try_from(remaining.clamp(0, i64::from(burst))).unwrap_or(0),
            reset_secs: ceil_secs(micros(reset_us)),
        })
    } else {
        Err(Limited {
            limit: burst,
            retry_after_secs: retry_after_secs(micros(retry_us)),
            reset_secs: ceil_secs(micros(reset_us)),
        })
    }
}

/// Readies the connection at once (warming it up), then every
/// [`PROBE_INTERVAL`] while the backend is down; ends when the backend is
/// dropped.
async fn probe(backend: Weak<RedisLimiter>, mut conn: ConnectionManager) {
    let mut first = true;
    loop {
        {
            let Some(backend) = backend.upgrade() else {
                return;
            };
            if first || !backend.is_up() {
                match ready(&mut conn, &backend.script).await {
                    Ok(()) => backend.mark_up(),
                    Err(e) => backend.mark_down(&e),
                }
            }
        }
        first = false;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// `PING`, then `SCRIPT LOAD` (so that the first checks after a connect or
/// a Redis restart take one round trip, not three), within
/// [`PROBE_TIMEOUT`]. A command on a dead connection fails and starts a
/// reconnect, so a failed `PING` is followed by one more, which waits for
/// that reconnect.
async fn ready(conn: &mut ConnectionManager, script: &Script) -> Result<(), String> {
    let attempt = async {
        if redis::cmd("PING").query_async::<()>(conn).await.is_err() {
            redis::cmd("PING").query_async::<()>(conn).await?;
        }
        script.load_async(conn).await.map(drop)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Redis named by `TOLLGATE_TEST_REDIS_URL`; every test
    //! uses its own token ids, so they run in parallel with anything else
    //! on that Redis.

    use std::time::Instant;

    use super::*;

    use crate::ratelimit::test_rate as rate;

    fn test_url() -> Option<String> {
        let url = std::env::var("TOLLGATE_TEST_REDIS_URL").ok();
        if url.is_none() {
            eprintln!("SKIPPED: TOLLGATE_TEST_REDIS_URL not set");
        }
        url
    }

    fn unique_id(what: &str) -> String {
        format!("test-{what}-{}", uuid::Uuid::new_v4().simple())
    }

    async fn pttl(url: &str, id: &str) -> i64 {
        let mut c = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("PTTL")
            .arg(format!("{KEY_PREFIX}{id}"))
            .query_async(&mut c)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_burst_is_allowed_then_limited_with_the_local_limiters_values() {
        let Some(url) = test_url() else { return };
        let backend = RedisLimiter::open(&url, Gauge::default()).unwrap();
        let id = unique_id("burst");
        // One request per 10 s, three at once: the local limiter's own test case.
        let slow = rate(1, Duration::from_secs(10), 3);
        let mut allowed = Vec::new();
        for _ in 0..3 {
            allowed.push(backend.check(&id, slow).await.unwrap().unwrap());
        }
        assert_eq!(
            allowed,
            [(2, 10), (1, 20), (0, 30)].map(|(remaining, reset_secs)| Allowed {
                limit: 3,
                remaining,
                reset_secs
            })
        );
        assert_eq!(
            backend.check(&id, slow).await.unwrap(),
            Err(Limited {
                limit: 3,
                retry_after_secs: 10,
                reset_secs: 30
            })
        );
        // The key lives until the bucket is full again: 3 × 10 s at most.
        let ttl = pttl(&url, &id).await;
        assert!((29_000..=30_000).contains(&ttl), "PTTL {ttl}");
    }

    #[tokio::test]
    async fn two_backends_on_one_redis_share_one_bucket() {
        let Some(url) = test_url() else { return };
        let a = RedisLimiter::open(&url, Gauge::default()).unwrap();
        let b = RedisLimiter::open(&url, Gauge::default()).unwrap();
        let id = unique_id("shared");
        let r = rate(4, Duration::from_secs(60), 4);
        let mut granted = 0;
        for i in 0..10 {
            let backend = if i % 2 == 0 { &a } else { &b };
            granted += u32::from(backend.check(&id, r).await.unwrap().is_ok());
        }
        assert_eq!(granted, 4);
        // Another token has its own bucket.
        assert!(a.check(&unique_id("other"), r).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn the_bucket_refills_at_the_rate_and_an_idle_key_expires() {
        let Some(url) = test_url() else { return };
        let backend = RedisLimiter::open(&url, Gauge::default()).unwrap();
        let id = unique_id("refill");
        // 20 per second: one back every 50 ms; burst 2.
        let fast = rate(20, Duration::from_secs(1), 2);
        assert!(backend.check(&id, fast).await.unwrap().is_ok());
        assert!(backend.check(&id, fast).await.unwrap().is_ok());
        let limited = backend.check(&id, fast).await.unwrap().unwrap_err();
        assert_eq!(limited.retry_after_secs, 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Full again after 2 × 50 ms: the key is gone.
        assert_eq!(pttl(&url, &id).await, -2);
        assert_eq!(
            backend.check(&id, fast).await.unwrap().map(|a| a.remaining),
            Ok(1)
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_answers_none_within_the_timeout_and_sets_the_gauge_once() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gauge = Gauge::default();
        gauge.set(1);
        let backend =
            RedisLimiter::open(&format!("redis://127.0.0.1:{port}/"), gauge.clone()).unwrap();
        let r = rate(1, Duration::from_secs(1), 1);
        let started = Instant::now();
        assert_eq!(backend.check("x", r).await, None);
        assert!(started.elapsed() < CHECK_TIMEOUT + Duration::from_millis(50));
        assert!(!backend.is_up());
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn one_slow_answer_does_not_mark_the_backend_down_three_stalls_in_a_row_do() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut streak = Streak::default();
        // One stall: every request waiting on it times out at about once.
        assert!(!streak.timed_out(at(0)));
        for ms in [1, 10, 49] {
            assert!(!streak.timed_out(at(ms)), "the same stall at {ms} ms");
        }
        // An answer ends the streak; the next stall starts a new one.
        streak.answered();
        assert!(!streak.timed_out(at(100)));
        assert!(!streak.timed_out(at(150)));
        streak.answered();
        // Three stalls apart with no answer between: down.
        assert!(!streak.timed_out(at(200)));
        assert!(!streak.timed_out(at(250)));
        assert!(streak.timed_out(at(300)));
        // Later timeouts keep saying so until an answer.
        assert!(streak.timed_out(at(301)));
        streak.answered();
        assert!(!streak.timed_out(at(400)));
    }

    #[tokio::test]
    async fn a_check_timeout_alone_leaves_the_backend_up() {
        // A listener that accepts and never answers: every check times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        let gauge = Gauge::default();
        gauge.set(1);
        let backend = RedisLimiter::open(&format!("redis://{addr}/"), gauge.clone()).unwrap();
        let r = rate(1, Duration::from_secs(1), 1);
        assert_eq!(backend.check("x", r).await, None);
        assert!(backend.is_up(), "one timeout marked it down");
        assert_eq!(gauge.get(), 1);
        held.abort();
    }

    #[test]
    fn a_url_the_client_cannot_use_is_refused_without_repeating_it() {
        let e = RedisLimiter::open("redis://:hunter2@127.0.0.1:6379/notadb", Gauge::default())
            .unwrap_err();
        assert!(e.starts_with("not a usable Redis URL"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_interval_is_whole_microseconds_and_never_zero() {
        assert_eq!(
            interval_micros(rate(5, Duration::from_secs(60), 5)),
            12_000_000
        );
        assert_eq!(
            interval_micros(rate(u32::MAX, Duration::from_secs(1), 1)),
            1
        );
    }
}
