//! Several gateways, one truth: three `tollgate serve` processes sharing one
//! PostgreSQL token table (the contract, §4) and one Redis for token limits (§2,
//! `limits.backend: redis`).
//!
//! Needs TOLLGATE_TEST_DATABASE_URL and TOLLGATE_TEST_REDIS_URL; without
//! them each test returns early, listed as skipped when the binary exits.
//! Each test works in its own PostgreSQL schema with its own token ids, so
//! it runs beside anything else on those servers; the outage test stops and starts a
//! `redis-server` of its own, never the shared one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;

use crate::support::*;

/// The servers the tests share.
struct Env {
    database: String,
    redis: String,
}

fn env() -> Option<Env> {
    let mut values = test_servers(&["TOLLGATE_TEST_DATABASE_URL", "TOLLGATE_TEST_REDIS_URL"])?;
    let redis = values.pop()?;
    let database = values.pop()?;
    Some(Env { database, redis })
}

/// A PostgreSQL schema of the test's own, named in the URL the gateways
/// and the CLI use.
struct Schema {
    name: String,
    url: String,
    admin: sqlx::PgPool,
}

impl Schema {
    async fn create(base: &str) -> Schema {
        let name = format!("tg_scale_{}", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(base)
            .await
            .expect("cannot connect to TOLLGATE_TEST_DATABASE_URL");
        admin
            .execute(&*format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Schema { name, url, admin }
    }

    async fn drop(self) {
        let sql = format!("DROP SCHEMA {} CASCADE", self.name);
        let _ = self.admin.execute(&*sql).await;
    }
}

/// A config for one of several gateways: tokens in `database`, limits in
/// `redis`; polling is slow so that revocations are seen to travel by
/// notification.
fn gateway_config(up: SocketAddr, database: &str, redis: &str) -> String {
    format!(
        r#"listen:
  - addr: 127.0.0.1:0
admin:
  addr: 127.0.0.1:0
log:
  format: json
  level: info
  access: false
tokens:
  source: postgres
  url: "{database}"
  refresh_interval: 30s
limits:
  backend: redis
  redis_url: "{redis}"
  per_token: {{ requests: 1000, per: 1s }}
  failed_auth_per_ip: {{ requests: 1000, per: 1s }}
routes:
  - prefix: /api
    upstream: http://{up}
    scopes: ["*"]
"#
    )
}

/// Three gateways started from one config, and what they forward to.
struct Cluster {
    _dir: tempfile::TempDir,
    config: PathBuf,
    up: Upstream,
    gateways: Vec<Served>,
    /// Tokens in the table (so far as this test made them).
    tokens: AtomicUsize,
}

/// What a gateway logs when it falls back to local limits.
const FELL_BACK: &str = "Redis limit backend unreachable";
/// What it logs when Redis answers again.
const CAME_BACK: &str = "Redis limit backend answers again";

impl Cluster {
    /// Writes the config and lets `prepare` run CLI commands against it
    /// (the token table must exist before the gateways start), then starts
    /// three gateways and waits until each is ready.
    async fn start(database: &str, redis: &str, first_token: &str) -> (Cluster, String) {
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, gateway_config(up.addr, database, redis)).unwrap();
        let secret = create_token(&config, first_token, &[]);
        let gateways: Vec<Served> = (0..3).map(|_| serve_process(&config)).collect();
        for g in &gateways {
            wait_until(Duration::from_secs(10), "a gateway is ready", || async {
                get(g.admin.unwrap(), "/readyz", &[]).await.status == 200
            })
            .await;
        }
        let cluster = Cluster {
            _dir: dir,
            config,
            up,
            gateways,
            tokens: AtomicUsize::new(1),
        };
        (cluster, secret)
    }

    /// Creates a token through the CLI and waits until every gateway has
    /// it (without spending any of its quota); returns the secret.
    async fn create(&self, id: &str, extra: &[&str]) -> String {
        let secret = create_token(&self.config, id, extra);
        let n = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        self.wait_metric("tollgate_tokens_loaded", n as f64, Duration::from_secs(2))
            .await;
        secret
    }

    /// Fallbacks to local limits logged so far, per gateway.
    fn fallbacks(&self) -> Vec<usize> {
        self.gateways
            .iter()
            .map(|g| g.log_count(FELL_BACK))
            .collect()
    }

    /// `n` requests, round-robin and all at once, with a fresh token
    /// limited to 5 a minute: the answers of the shared limit. On a loaded
    /// machine a Redis check can miss its 50 ms and that request is judged
    /// locally (by design); such a round says nothing about the shared
    /// limit, so it is run again with another fresh token, at most 8 times.
    async fn shared_burst(&self, name: &str, n: usize) -> Vec<Raw> {
        for round in 0..8 {
            let id = format!("{name}-{round}");
            let secret = self.create(&id, &["--rate", "5/1m"]).await;
            let before = self.fallbacks();
            let answers = burst(&self.addrs(), &secret, n).await;
            // Let a fallback's log line, if any, reach us.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.fallbacks() == before {
                let through_upstream = self
                    .up
                    .seen()
                    .iter()
                    .filter(|s| s.header("x-tollgate-token-id") == Some(id.as_str()))
                    .count();
                assert_eq!(through_upstream, count(&answers, 200));
                return answers;
            }
            eprintln!("round {round}: a Redis check missed its timeout; running it again");
            self.wait_metric("tollgate_limit_backend_up", 1.0, Duration::from_secs(3))
                .await;
        }
        panic!("Redis checks kept missing their timeout in 8 rounds");
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.addr).collect()
    }

    /// A metric's value on every gateway.
    async fn metric(&self, name: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for g in &self.gateways {
            values.push(metric(g.admin.unwrap(), name).await);
        }
        values
    }

    async fn wait_metric(&self, name: &str, want: f64, within: Duration) {
        let what = format!("{name} {want} on every gateway");
        wait_until(within, &what, || async {
            self.metric(name).await.iter().all(|v| *v == want)
        })
        .await;
    }
}

/// Runs `tollgate ARGS -c config`, asserts success, returns its stdout.
fn tollgate(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tollgate {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `tollgate token create`, returning the secret it printed.
fn create_token(config: &Path, id: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--id", id, "--scope", "scope:all"];
    args.extend_from_slice(extra);
    let secret = tollgate(config, &args);
    assert!(secret.starts_with("tg_"), "not a secret: {secret:?}");
    secret
}

/// One metric's value from `/metrics` (unlabelled metrics only).
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let r = get(admin, "/metrics", &[]).await;
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn wait_until<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `requests` GETs with `secret`, round-robin over `addrs`, all at once;
/// the statuses in order of sending.
async fn burst(addrs: &[SocketAddr], secret: &str, requests: usize) -> Vec<Raw> {
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let auth = bearer(secret);
            tokio::spawn(async move { get(addr, "/api/x", &[&auth]).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(requests);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

fn count(answers: &[Raw], status: u16) -> usize {
    answers.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_tokens_revocations_and_one_limit() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env.database).await;
    // Ids of their own: the keys on the shared Redis are tollgate:gcra:<id>.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let alpha = format!("alpha-{run}");
    let (cluster, alpha_secret) = Cluster::start(&schema.url, &env.redis, &alpha).await;
    let addrs = cluster.addrs();

    // Created through one CLI, accepted by all three.
    for &addr in &addrs {
        let r = get(addr, "/api/x", &[&bearer(&alpha_secret)]).await;
        assert_eq!(r.status, 200, "{}", r.head);
    }

    // 5 a minute, burst 5: at most 5 across the three together, whatever
    // the interleaving (6 if one request's worth, 12 s, came back meanwhile);
    // local limits would let 15 through.
    let answers = cluster.shared_burst(&format!("limited-{run}"), 30).await;
    let (ok, refused) = (count(&answers, 200), count(&answers, 429));
    assert_eq!(ok + refused, 30, "only 200 and 429 expected");
    assert!(
        (5..=6).contains(&ok),
        "{ok} requests got through, burst is 5"
    );
    let allowed = answers.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(allowed.header("ratelimit-limit"), Some("5"));
    let limited = answers.iter().find(|r| r.status == 429).unwrap();
    assert_refusal(limited, 429, "rate_limited");
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");

    // Revoked through the CLI: refused by all three within 1 s.
    tollgate(&cluster.config, &["token", "revoke", &alpha]);
    let revoked = Instant::now();
    let mut delays = Vec::new();
    for &addr in &addrs {
        wait_until(
            Duration::from_secs(3),
            "the revocation reached a gateway",
            || async { get(addr, "/api/x", &[&bearer(&alpha_secret)]).await.status == 401 },
        )
        .await;
        delays.push(revoked.elapsed());
    }
    let slowest = *delays.iter().max().unwrap();
    eprintln!("revocation seen by all three gateways after {slowest:?} ({delays:?})");
    assert!(slowest <= Duration::from_secs(1), "{delays:?}");

    drop(cluster);
    schema.drop().await;
}

/// A `redis-server` of the test's own on a fixed loopback port, so it can be
/// stopped and started again where the gateways expect it.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = OwnRedis { port, child: None };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again) on its port and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the scale-out tests (CI installs it)");
        self.child = Some(child);
        let started = Instant::now();
        let client = redis::Client::open(self.url()).unwrap();
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request to each gateway with `secret`; every answer and the
/// slowest time.
async fn one_each(addrs: &[SocketAddr], secret: &str) -> (Vec<u16>, Duration) {
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for &addr in addrs {
        let sent = Instant::now();
        statuses.push(get(addr, "/api/x", &[&bearer(secret)]).await.status);
        slowest = slowest.max(sent.elapsed());
    }
    (statuses, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_or_stalled_every_gateway_serves_on_local_limits_until_it_is_back() {
    let Some(env) = env() else { return };
    let mut redis = OwnRedis::start();
    let schema = Schema::create(&env.database).await;
    let (cluster, plain) = Cluster::start(&schema.url, &redis.url(), "plain").await;
    let addrs = cluster.addrs();
    let shared = cluster.shared_burst("before", 15).await;
    assert!((5..=6).contains(&count(&shared, 200)));

    // Gone: every gateway keeps answering, at once, on its own limits, and
    // says so once.
    let logged = cluster.fallbacks();
    redis.stop();
    let (statuses, slowest) = one_each(&addrs, &plain).await;
    eprintln!("first requests after Redis stopped: slowest {slowest:?}");
    assert_eq!(statuses, [200; 3]);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(cluster.metric("tollgate_limit_backend_up").await, [0.0; 3]);
    // A token never used before: each gateway's local limiter is fresh.
    let local = cluster.create("local", &["--rate", "5/1m"]).await;
    let answers = burst(&addrs, &local, 18).await;
    assert_eq!(count(&answers, 200), 15, "5 per gateway");
    assert_eq!(count(&answers, 429), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let once: Vec<usize> = logged.iter().map(|n| n + 1).collect();
    assert_eq!(
        cluster.fallbacks(),
        once,
        "one line per gateway, not per request"
    );

    // Back: the probe finds it within about a second and limits are shared
    // again (the restarted Redis is empty: one fresh bucket for all).
    redis.restart();
    cluster
        .wait_metric("tollgate_limit_backend_up", 1.0, Duration::from_secs(3))
        .await;
    let again = cluster.shared_burst("after", 15).await;
    assert!((5..=6).contains(&count(&again, 200)));
    assert_eq!(count(&again, 429) + count(&again, 200), 15);

    // Stalled (alive but silent): each request waits at most the check
    // timeout, then is judged locally. One slow answer is not an outage;
    // three stalls in a row with no answer between are.
    let logged = cluster.fallbacks();
    redis.signal("-STOP");
    for round in 1..=3 {
        let (statuses, slowest) = one_each(&addrs, &plain).await;
        eprintln!("requests while Redis is stalled, round {round}: slowest {slowest:?}");
        assert_eq!(statuses, [200; 3]);
        assert!(slowest < Duration::from_secs(1), "{slowest:?}");
        if round == 1 {
            assert_eq!(cluster.metric("tollgate_limit_backend_up").await, [1.0; 3]);
        }
    }
    assert_eq!(cluster.metric("tollgate_limit_backend_up").await, [0.0; 3]);
    redis.signal("-CONT");
    cluster
        .wait_metric("tollgate_limit_backend_up", 1.0, Duration::from_secs(3))
        .await;
    let once: Vec<usize> = logged.iter().map(|n| n + 1).collect();
    assert_eq!(cluster.fallbacks(), once);
    for g in &cluster.gateways {
        wait_until(
            Duration::from_secs(2),
            "every fallback logged its end",
            || async { g.log_count(CAME_BACK) == g.log_count(FELL_BACK) },
        )
        .await;
    }

    drop(cluster);
    schema.drop().await;
}
