//! Database token sources through the real server and the real
//! `tollgate token` command: revocation reaching a running gateway, outages
//! and recovery, a gateway started while the database is down, `last_used_at`,
//! and the NetBox preset's custom query.
//!
//! PostgreSQL tests need `TOLLGATE_TEST_DATABASE_URL` (without it they return
//! early and are listed as skipped when the test binary exits); each works
//! in a schema of its own, dropped at the end.
//! "The database is down" is a TCP forwarder in front of the shared server
//! that the test stops and restarts, since the server itself is shared.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::support::*;

mod rows;
mod secrets;
mod split;

/// A schema of its own in the test database.
struct Pg {
    /// The database URL as given (no schema).
    base: String,
    /// The URL with this test's schema as search_path.
    url: String,
    schema: String,
    admin: PgPool,
}

impl Pg {
    /// `None` (a recorded skip) when no test database is configured.
    async fn new() -> Option<Pg> {
        let base = test_servers(&["TOLLGATE_TEST_DATABASE_URL"])?.remove(0);
        let schema = format!("tg_it_{}", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}");
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("cannot connect to TOLLGATE_TEST_DATABASE_URL");
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        Some(Pg {
            base,
            url,
            schema,
            admin,
        })
    }

    async fn exec(&self, statement: &str) {
        sqlx::raw_sql(statement).execute(&self.admin).await.unwrap();
    }

    /// Where the database server listens.
    async fn server(&self) -> SocketAddr {
        let options = PgConnectOptions::from_str(&self.base).unwrap();
        let host = options.get_host().to_owned();
        tokio::net::lookup_host((host, options.get_port()))
            .await
            .unwrap()
            .next()
            .expect("the test database host resolves")
    }

    /// This test's URL with the server address replaced by `addr`.
    fn url_via(&self, addr: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{addr}{tail}")
    }
}

impl Drop for Pg {
    /// Drops the schema, first ending every other connection of this test
    /// (they carry its schema as application_name): a gateway dropped
    /// mid-load leaves its connection to a task of the test's runtime,
    /// which cannot run while this blocks it, and its open transaction
    /// would make `DROP SCHEMA` wait forever.
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // On a thread of its own: the test's runtime may be gone or unwinding.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                conn.execute(&*format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = '{schema}' AND pid <> pg_backend_pid()"
                ))
                .await?;
                conn.execute("SET lock_timeout = '10s'").await?;
                conn.execute(&*format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await?;
                conn.close().await
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
    }
}

/// A TCP forwarder to the database that can be stopped (the port then
/// refuses connections and every forwarded connection is cut) and started
/// again on the same port.
struct Forwarder {
    addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Forwarder {
    /// A forwarder on a free port, not started.
    async fn reserve(target: SocketAddr) -> Forwarder {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        Forwarder {
            addr,
            target,
            accept: None,
            connections: Arc::default(),
        }
    }

    async fn start(&mut self) {
        assert!(self.accept.is_none(), "already running");
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (target, connections) = (self.target, self.connections.clone());
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(pipe.abort_handle());
            }
        }));
    }

    fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for pipe in self.connections.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The standard gateway config with `tokens` as its token source block.
fn config_with_tokens(up: SocketAddr, tokens: &str) -> String {
    let standard = "tokens:\n  source: file\n  path: tokens.yaml\n  refresh_interval: 200ms\n";
    let config = gateway_yaml(up, "");
    assert!(
        config.contains(standard),
        "gateway_yaml changed its tokens block"
    );
    config.replace(standard, tokens)
}

fn postgres_config(up: SocketAddr, url: &str, refresh: &str) -> String {
    config_with_tokens(
        up,
        &format!("tokens:\n  source: postgres\n  url: \"{url}\"\n  refresh_interval: {refresh}\n"),
    )
}

fn sqlite_config(up: SocketAddr, refresh: &str) -> String {
    config_with_tokens(
        up,
        &format!("tokens:\n  source: sqlite\n  path: tokens.db\n  refresh_interval: {refresh}\n"),
    )
}

/// Runs the real `tollgate` binary with `-c config`.
async fn tollgate(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(args).arg("-c").arg(config);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// `tollgate token create --id ID --scope scope:agent-ui`; the secret.
async fn create(config: &Path, id: &str) -> String {
    let out = tollgate(
        config,
        &["token", "create", "--id", id, "--scope", "scope:agent-ui"],
    )
    .await;
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("tg_"), "not a secret on stdout");
    secret
}

async fn revoke(config: &Path, id: &str) {
    let out = tollgate(config, &["token", "revoke", id]).await;
    assert!(
        out.status.success(),
        "token revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tollgate token list --json`, by id.
async fn list(config: &Path) -> std::collections::HashMap<String, serde_json::Value> {
    let out = tollgate(config, &["token", "list", "--json"]).await;
    assert!(
        out.status.success(),
        "token list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    listed
        .into_iter()
        .map(|t| (t["id"].as_str().unwrap().to_string(), t))
        .collect()
}

async fn status(gw: &Gw, secret: &str) -> u16 {
    get(gw.addr(), "/api/v1/x", &[&bearer(secret)]).await.status
}

async fn metrics(gw: &Gw) -> String {
    String::from_utf8(get(gw.admin(), "/metrics", &[]).await.body).unwrap()
}

/// Polls `check` every 20 ms until it holds; the time it took, or a panic
/// naming `what` after `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(gw: &Gw, limit: Duration) {
    within(limit, "gateway ready", || async {
        gw.launched.gateway.is_ready()
    })
    .await;
}

/// Waits until the gateway serves an index of `n` tokens.
async fn wait_tokens(gw: &Gw, n: usize) {
    within(Duration::from_secs(10), "tokens loaded", || async {
        let current = gw.launched.gateway.current.load();
        current.tokens.as_ref().is_some_and(|t| t.len() == n)
    })
    .await;
}

/// The seconds since the epoch of an RFC 3339 time.
fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Creates token `ci` through the CLI while `gw` waits for its first load,
/// checks that the gateway then accepts it (the upstream sees its id),
/// revokes it, and returns how long until the gateway refused it.
async fn create_use_revoke(gw: &Gw, up: &Upstream, ready_within: Duration) -> Duration {
    let config = gw.path("gateway.yaml");
    let secret = create(&config, "ci").await;
    wait_ready(gw, ready_within).await;
    within(Duration::from_secs(2), "created token accepted", || async {
        status(gw, &secret).await == 200
    })
    .await;
    assert_eq!(
        up.seen().last().unwrap().header("x-tollgate-token-id"),
        Some("ci")
    );
    revoke(&config, "ci").await;
    within(Duration::from_secs(5), "revoked token refused", || async {
        status(gw, &secret).await == 401
    })
    .await
}

#[tokio::test]
async fn postgres_a_token_created_by_the_cli_works_and_its_revocation_arrives_within_a_second() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    // A long refresh_interval: only the notification can make it in time.
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "30s"), "").await;
    let delay = create_use_revoke(&gw, &up, Duration::from_secs(10)).await;
    assert!(delay < Duration::from_secs(1), "revocation took {delay:?}");
    eprintln!("postgres revocation reached the gateway in {delay:?}");
}

/// Notifications are database-wide: one that names no token (a statement
/// that changed over 100 rows, an application table's trigger, a bare
/// `NOTIFY`) makes every listening gateway read in full. Tests that send
/// such notifications hold this shared; a test that counts full reads
/// holds it alone.
static WHOLE_READS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// How many tokens the serving index has applied one by one since its
/// last full load.
fn changed_since_load(gw: &Gw) -> usize {
    let current = gw.launched.gateway.current.load();
    current
        .tokens
        .as_ref()
        .map_or(0, |t| t.changed_since_load())
}

#[tokio::test]
async fn postgres_a_change_to_one_token_is_applied_alone_and_the_periodic_check_still_catches_the_rest(
) {
    let _alone = WHOLE_READS.write().await;
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "1s"), "").await;
    let config = gw.path("gateway.yaml");
    let kept = create(&config, "one-kept").await;
    let doomed = create(&config, "one-doomed").await;
    let hidden = create(&config, "one-hidden").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    // A notification that names no token asks for a full load, which
    // starts from nothing changed.
    pg.exec("NOTIFY tollgate_tokens").await;
    within(Duration::from_secs(5), "a full load", || async {
        status(&gw, &hidden).await == 200 && changed_since_load(&gw) == 0
    })
    .await;

    revoke(&config, "one-doomed").await;
    let delay = within(Duration::from_secs(5), "revoked token refused", || async {
        status(&gw, &doomed).await == 401
    })
    .await;
    assert!(delay < Duration::from_secs(1), "revocation took {delay:?}");
    assert_eq!(changed_since_load(&gw), 1, "not applied on its own");
    let fresh = create(&config, "one-fresh").await;
    within(Duration::from_secs(1), "created token accepted", || async {
        status(&gw, &fresh).await == 200
    })
    .await;
    assert_eq!(
        up.seen().last().unwrap().header("x-tollgate-token-id"),
        Some("one-fresh")
    );
    // Periodic checks (every second) take the table's fingerprint afresh
    // instead of re-reading it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(changed_since_load(&gw), 2, "re-read in full");
    assert_eq!(status(&gw, &kept).await, 200);

    // A change no trigger announces is caught by the fingerprint.
    pg.exec(
        "BEGIN; ALTER TABLE tollgate_tokens DISABLE TRIGGER USER; \
         UPDATE tollgate_tokens SET disabled = true WHERE id = 'one-hidden'; \
         ALTER TABLE tollgate_tokens ENABLE TRIGGER USER; COMMIT",
    )
    .await;
    within(Duration::from_secs(5), "unannounced revocation", || async {
        status(&gw, &hidden).await == 401
    })
    .await;
    assert_eq!(changed_since_load(&gw), 0, "not a full load");
    assert_eq!(status(&gw, &kept).await, 200);
    assert_eq!(status(&gw, &fresh).await, 200);
    assert_eq!(status(&gw, &doomed).await, 401);
}

#[tokio::test]
async fn postgres_a_change_during_a_full_read_is_applied_at_once_and_kept_by_the_read() {
    let _shared = WHOLE_READS.read().await;
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "60s"), "").await;
    let config = gw.path("gateway.yaml");
    let doomed = create(&config, "during-doomed").await;
    // Enough rows that a full read takes a while.
    pg.exec(
        "INSERT INTO tollgate_tokens (id, sha256, scopes) SELECT 'bulk-' || i, \
         encode(sha256(convert_to('bulk-' || i, 'UTF8')), 'hex'), 'scope:agent-ui' \
         FROM generate_series(1, 200000) AS i",
    )
    .await;
    wait_ready(&gw, Duration::from_secs(20)).await;
    within(Duration::from_secs(20), "bulk loaded", || async {
        status(&gw, "bulk-200000").await == 200 && status(&gw, &doomed).await == 200
    })
    .await;
    let full_reads = || async {
        let text = metrics(&gw).await;
        text.lines()
            .find(|l| l.starts_with("tollgate_token_reloads_total{result=\"success\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    let before = full_reads().await;
    // A statement that changes more rows than a notification names: a full
    // read, during which one token is revoked.
    pg.exec("UPDATE tollgate_tokens SET description = 'x' WHERE id LIKE 'bulk-1%'")
        .await;
    pg.exec("UPDATE tollgate_tokens SET scopes = 'scope:agent-ui scope:x' WHERE id LIKE 'bulk-2%'")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    revoke(&config, "during-doomed").await;
    let delay = within(
        Duration::from_secs(5),
        "revoked during the read",
        || async { status(&gw, &doomed).await == 401 },
    )
    .await;
    within(Duration::from_secs(30), "the full read done", || async {
        full_reads().await > before
    })
    .await;
    // 401, or 429 once this address has failed often enough.
    assert_ne!(
        status(&gw, &doomed).await,
        200,
        "the full read brought the revoked token back"
    );
    eprintln!("revocation during a full read of 200,000 rows: {delay:?}");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
}

/// `tollgate token ARGS…` that must succeed; its stdout and stderr.
async fn token(config: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = tollgate(config, &all).await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "token {args:?}: {stderr}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        stderr,
    )
}

/// Rotate with an overlap, rotate without, disable and enable, delete —
/// each through the CLI against a running gateway, checked at its door
/// and by what the upstream received.
async fn rotate_enable_delete(gw: &Gw, up: &Upstream) {
    let config = gw.path("gateway.yaml");
    let old = create(&config, "rot").await;
    let accepted = |secret: String| async move { status(gw, &secret).await == 200 };
    let refused = |secret: String| async move { status(gw, &secret).await == 401 };
    within(Duration::from_secs(5), "created", || accepted(old.clone())).await;

    let (new, said) = token(&config, &["rotate", "rot", "--overlap", "1h"]).await;
    assert!(new.starts_with("tg_") && new != old);
    assert!(said.contains("\"rot.previous\""), "{said}");
    assert!(!said.contains(&new) && !said.contains(&old), "{said}");
    within(Duration::from_secs(5), "new secret", || {
        accepted(new.clone())
    })
    .await;
    assert_eq!(
        up.seen().last().unwrap().header("x-tollgate-token-id"),
        Some("rot")
    );
    assert_eq!(
        status(gw, &old).await,
        200,
        "the old one, within the overlap"
    );
    assert_eq!(
        up.seen().last().unwrap().header("x-tollgate-token-id"),
        Some("rot.previous")
    );
    let listed = list(&config).await;
    assert_eq!(listed["rot.previous"]["scopes"], listed["rot"]["scopes"]);

    let (newest, said) = token(&config, &["rotate", "rot"]).await;
    assert!(said.contains("the old one no longer works"), "{said}");
    within(Duration::from_secs(5), "rotated without overlap", || {
        refused(new.clone())
    })
    .await;
    assert_eq!(status(gw, &newest).await, 200);

    revoke(&config, "rot").await;
    within(Duration::from_secs(5), "revoked", || {
        refused(newest.clone())
    })
    .await;
    token(&config, &["enable", "rot"]).await;
    within(Duration::from_secs(5), "enabled", || {
        accepted(newest.clone())
    })
    .await;

    token(&config, &["delete", "rot"]).await;
    token(&config, &["delete", "rot.previous"]).await;
    within(Duration::from_secs(5), "deleted", || {
        refused(newest.clone())
    })
    .await;
    within(Duration::from_secs(5), "previous deleted", || {
        refused(old.clone())
    })
    .await;
    let listed = list(&config).await;
    assert!(!listed.contains_key("rot") && !listed.contains_key("rot.previous"));
    let out = tollgate(&config, &["token", "delete", "rot"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token with id \"rot\""));
}

#[tokio::test]
async fn postgres_rotate_enable_and_delete_reach_a_running_gateway() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "30s"), "").await;
    token(&gw.path("gateway.yaml"), &["list"]).await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    rotate_enable_delete(&gw, &up).await;
}

#[tokio::test]
async fn file_rotate_enable_and_delete_reach_a_running_gateway() {
    let up = Upstream::start().await;
    let gw = Gw::start(&gateway_yaml(up.addr, ""), "tokens: []\n").await;
    rotate_enable_delete(&gw, &up).await;
}

#[tokio::test]
async fn sqlite_a_change_to_one_token_is_read_from_the_change_log_alone() {
    let up = Upstream::start().await;
    // Only the file watch and the change log can make it in time.
    let gw = Gw::start_unready(&sqlite_config(up.addr, "60s"), "").await;
    let config = gw.path("gateway.yaml");
    let kept = create(&config, "kept").await;
    let doomed = create(&config, "doomed").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    within(Duration::from_secs(5), "tokens loaded", || async {
        status(&gw, &doomed).await == 200
    })
    .await;
    // A full read would start the count of changes again from 0. Let the
    // reads the start-up's writes caused settle first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = changed_since_load(&gw);
    let third = create(&config, "third").await;
    within(Duration::from_secs(1), "created token accepted", || async {
        status(&gw, &third).await == 200
    })
    .await;
    assert_eq!(
        changed_since_load(&gw),
        before + 1,
        "not from the change log"
    );
    revoke(&config, "third").await;
    revoke(&config, "doomed").await;
    let delay = within(Duration::from_secs(5), "revoked tokens refused", || async {
        status(&gw, &doomed).await == 401 && status(&gw, &third).await == 401
    })
    .await;
    assert!(delay < Duration::from_secs(1), "revocation took {delay:?}");
    let after = changed_since_load(&gw);
    assert!(after > before, "re-read in full");
    // The gateway's own last_used_at writes change the file but log
    // nothing: no full read follows.
    let flushed = gw.launched.control.flush_usage().await.unwrap();
    assert!(flushed >= 1, "{flushed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(changed_since_load(&gw), after, "re-read in full");
    assert_eq!(status(&gw, &kept).await, 200);
}

#[tokio::test]
async fn sqlite_a_token_created_by_the_cli_works_and_its_revocation_arrives_within_the_refresh_interval(
) {
    let up = Upstream::start().await;
    let refresh = Duration::from_secs(1);
    let gw = Gw::start_unready(&sqlite_config(up.addr, "1s"), "").await;
    let delay = create_use_revoke(&gw, &up, Duration::from_secs(5)).await;
    // The file watcher usually beats the periodic re-read by far.
    assert!(
        delay <= refresh + Duration::from_millis(250),
        "revocation took {delay:?}"
    );
    eprintln!("sqlite revocation reached the gateway in {delay:?}");
}

#[tokio::test]
async fn sqlite_a_corrupt_database_keeps_the_last_good_index_until_it_is_repaired() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&sqlite_config(up.addr, "200ms"), "").await;
    let config = gw.path("gateway.yaml");
    let secret = create(&config, "ci").await;
    wait_ready(&gw, Duration::from_secs(5)).await;
    within(Duration::from_secs(2), "created token accepted", || async {
        status(&gw, &secret).await == 200
    })
    .await;
    let db = gw.path("tokens.db");
    let good = std::fs::read(&db).unwrap();

    let garbage: Vec<u8> = (0..good.len()).map(|i| (i * 7 % 251) as u8).collect();
    replace_file(&db, &String::from_utf8_lossy(&garbage));
    within(Duration::from_secs(3), "source reported down", || async {
        metrics(&gw).await.contains("tollgate_token_source_up 0")
    })
    .await;
    for _ in 0..3 {
        assert_eq!(status(&gw, &secret).await, 200, "last good index dropped");
    }
    assert_eq!(status(&gw, "tg_unknown").await, 401);

    let repaired = db.with_extension("repaired");
    std::fs::write(&repaired, &good).unwrap();
    std::fs::rename(&repaired, &db).unwrap();
    within(
        Duration::from_secs(3),
        "source reported up again",
        || async { metrics(&gw).await.contains("tollgate_token_source_up 1") },
    )
    .await;
    assert_eq!(status(&gw, &secret).await, 200);
}

#[tokio::test]
async fn sqlite_last_used_at_is_written_by_the_flush_and_listed() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&sqlite_config(up.addr, "1s"), "").await;
    let config = gw.path("gateway.yaml");
    let used = create(&config, "used").await;
    create(&config, "idle").await;
    wait_tokens(&gw, 2).await;
    last_used_at_is_recorded(&gw, &config, &used).await;
}

#[tokio::test]
async fn postgres_last_used_at_is_written_by_the_flush_and_listed() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "30s"), "").await;
    let config = gw.path("gateway.yaml");
    let used = create(&config, "used").await;
    create(&config, "idle").await;
    wait_tokens(&gw, 2).await;
    last_used_at_is_recorded(&gw, &config, &used).await;
    let (stored,): (Option<time::OffsetDateTime>,) =
        sqlx::query_as("SELECT last_used_at FROM tollgate_tokens WHERE id = 'used'")
            .fetch_one(&pg.admin)
            .await
            .unwrap();
    assert!(stored.is_some());
}

/// A request with `used`, then a flush: `token list` shows its last use
/// (and none for `idle`); a second flush with no new use writes nothing.
async fn last_used_at_is_recorded(gw: &Gw, config: &Path, used: &str) {
    assert!(list(config).await["used"]["last_used_at"].is_null());
    let before = now();
    assert_eq!(status(gw, used).await, 200);
    let control = &gw.launched.control;
    assert_eq!(control.flush_usage().await, Ok(1));
    assert_eq!(control.flush_usage().await, Ok(0));
    let listed = list(config).await;
    let at = unix(
        listed["used"]["last_used_at"]
            .as_str()
            .expect("last use listed"),
    );
    assert!(
        (before..=now()).contains(&at),
        "last use {at}, request at {before}"
    );
    assert!(listed["idle"]["last_used_at"].is_null());
}

#[tokio::test]
async fn postgres_outage_keeps_serving_reports_down_and_recovers_with_notifications() {
    let Some(pg) = Pg::new().await else { return };
    let mut db = Forwarder::reserve(pg.server().await).await;
    db.start().await;
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url_via(db.addr), "30s"), "").await;
    // The CLI talks to the database directly, also while the gateway cannot.
    let direct = gw.path("direct.yaml");
    std::fs::write(&direct, postgres_config(up.addr, &pg.url, "30s")).unwrap();
    let kept = create(&direct, "kept").await;
    let doomed = create(&direct, "doomed").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    within(Duration::from_secs(3), "tokens loaded", || async {
        status(&gw, &doomed).await == 200
    })
    .await;

    db.stop();
    within(Duration::from_secs(10), "source reported down", || async {
        metrics(&gw).await.contains("tollgate_token_source_up 0")
    })
    .await;
    for secret in [&kept, &doomed] {
        assert_eq!(
            status(&gw, secret).await,
            200,
            "valid token refused during the outage"
        );
    }
    assert!(
        gw.launched.gateway.is_ready(),
        "not ready during the outage"
    );
    let during = create(&direct, "during").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&gw, &during).await,
        401,
        "seen while the database was away"
    );

    db.start().await;
    let recovery = within(
        Duration::from_secs(15),
        "token created during the outage",
        || async { status(&gw, &during).await == 200 },
    )
    .await;
    assert!(metrics(&gw).await.contains("tollgate_token_source_up 1"));
    eprintln!("recovered {recovery:?} after the database came back");

    // The listener is subscribed again: a revocation arrives by notification.
    revoke(&direct, "doomed").await;
    let delay = within(Duration::from_secs(5), "revoked token refused", || async {
        status(&gw, &doomed).await == 401
    })
    .await;
    assert!(
        delay < Duration::from_secs(1),
        "revocation after reconnect took {delay:?}"
    );
    assert_eq!(status(&gw, &kept).await, 200);
}

#[tokio::test]
async fn postgres_a_gateway_started_while_the_database_is_down_answers_not_ready_then_serves() {
    let Some(pg) = Pg::new().await else { return };
    let mut db = Forwarder::reserve(pg.server().await).await;
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url_via(db.addr), "30s"), "").await;
    let direct = gw.path("direct.yaml");
    std::fs::write(&direct, postgres_config(up.addr, &pg.url, "30s")).unwrap();
    let secret = create(&direct, "early").await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(&secret)]).await;
    assert_refusal(&r, 503, "not_ready");
    assert_eq!(get(gw.admin(), "/readyz", &[]).await.status, 503);
    assert!(metrics(&gw).await.contains("tollgate_token_source_up 0"));
    assert!(up.seen().is_empty());

    db.start().await;
    let delay = within(
        Duration::from_secs(15),
        "ready after the database came up",
        || async { get(gw.admin(), "/readyz", &[]).await.status == 200 },
    )
    .await;
    eprintln!("ready {delay:?} after the database came up");
    assert_eq!(status(&gw, &secret).await, 200);
}

/// NetBox 4.5's `users_token` (the columns the preset reads, as NetBox's
/// migrations create them), in the current schema.
const NETBOX_USERS_TOKEN: &str = include_str!("../fixtures/netbox_users_token.sql");

const NB_WRITE: &str = "a123456789abcdef0123456789abcdef01234567";
const NB_READ: &str = "1123456789abcdef0123456789abcdef01234567";
const NB_EXPIRED: &str = "2123456789abcdef0123456789abcdef01234567";
const NB_DISABLED: &str = "3123456789abcdef0123456789abcdef01234567";
const NB_ELSEWHERE: &str = "4123456789abcdef0123456789abcdef01234567";
/// The public key of a v2 token whose digest matches nothing: must never
/// pass as a credential.
const NB_V2_KEY: &str = "AbCdEfGh01234567";

/// config/examples/netbox.yaml with only the addresses, the database URL
/// and the refresh interval changed; its query is used as shipped.
fn netbox_config(up: SocketAddr, url: &str) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/netbox.yaml"),
    )
    .unwrap();
    let mut config = shipped;
    for (from, to) in [
        (
            "${DATABASE_URL:-postgres://localhost/netbox}",
            format!("\"{url}\""),
        ),
        ("0.0.0.0:8080", "127.0.0.1:0".into()),
        ("127.0.0.1:9901", "127.0.0.1:0".into()),
        ("http://127.0.0.1:8000", format!("http://{up}")),
        ("refresh_interval: 5s", "refresh_interval: 1s".into()),
        (
            "${NETBOX_API_TOKEN_PEPPER_1}",
            format!("\"{}\"", split::PEPPER),
        ),
    ] {
        assert!(config.contains(from), "netbox.yaml no longer has {from:?}");
        config = config.replace(from, &to);
    }
    config
}

/// NetBox's `users_token` and `users_user` with one user and two tokens
/// (ids 1 and 2: `NB_WRITE` and `NB_READ`).
async fn netbox_two_tokens(pg: &Pg) {
    pg.exec(NETBOX_USERS_TOKEN).await;
    pg.exec(&format!(
        "INSERT INTO users_user (id, username, is_active) VALUES (1, 'admin', true);
         INSERT INTO users_token (id, version, enabled, write_enabled, plaintext, user_id) \
           VALUES (1, 1, true, true, '{NB_WRITE}', 1), (2, 1, true, true, '{NB_READ}', 1);"
    ))
    .await;
}

/// How many `tollgate_tokens_notify` triggers `users_token` has.
async fn netbox_triggers(pg: &Pg) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'tollgate_tokens_notify' \
         AND tgrelid = to_regclass('users_token')",
    )
    .fetch_one(&pg.admin)
    .await
    .unwrap()
}

/// The status of a NetBox API read through the gateway with `key`.
async fn netbox_read(addr: std::net::SocketAddr, key: &str) -> u16 {
    let auth = format!("Authorization: Token {key}");
    get(addr, "/api/dcim/devices/", &[&auth]).await.status
}

#[tokio::test]
async fn netbox_preset_installs_its_trigger_and_a_deleted_token_is_refused_at_once() {
    let _shared = WHOLE_READS.read().await;
    let Some(pg) = Pg::new().await else { return };
    netbox_two_tokens(&pg).await;
    let up = Upstream::start().await;
    // Only the trigger can make it in time.
    let yaml =
        netbox_config(up.addr, &pg.url).replace("refresh_interval: 1s", "refresh_interval: 60s");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let out = tollgate(&config, &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: tokens.notify_trigger_on: no trigger announces changes to users_token")
            && stderr.contains("CREATE TRIGGER tollgate_tokens_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users_token"),
        "{stderr}"
    );
    assert_eq!(netbox_triggers(&pg).await, 0, "check installed the trigger");

    let gw = Gw::start_unready(&yaml, "").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    assert_eq!(
        netbox_triggers(&pg).await,
        1,
        "serve did not install the trigger"
    );
    let read = |key: &'static str| netbox_read(gw.addr(), key);
    assert_eq!(read(NB_WRITE).await, 200);
    pg.exec("DELETE FROM users_token WHERE id = 1").await;
    let delay = within(Duration::from_secs(5), "deleted token refused", || async {
        read(NB_WRITE).await == 401
    })
    .await;
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
    assert_eq!(read(NB_READ).await, 200);
    let out = tollgate(&config, &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("notify_trigger_on"), "{stderr}");
}

/// `url` with its user replaced by `user` (trust authentication: no
/// password).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{user}@{host}{tail}")
}

#[tokio::test]
async fn netbox_preset_under_a_role_that_may_not_install_the_trigger_serves_on_the_refresh() {
    let Some(pg) = Pg::new().await else { return };
    netbox_two_tokens(&pg).await;
    // The role the guide recommends: SELECT on the two tables, nothing more.
    let role = format!("tg_reader_{}", uuid::Uuid::new_v4().simple());
    pg.exec(&format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}; \
         GRANT SELECT ON users_token, users_user TO {role}",
        schema = pg.schema
    ))
    .await;
    let up = Upstream::start().await;
    let yaml = netbox_config(up.addr, &as_user(&pg.url, &role));
    let gw = Gw::start_unready(&yaml, "").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    let read = |key: &'static str| netbox_read(gw.addr(), key);
    assert_eq!(
        read(NB_WRITE).await,
        200,
        "serves although the install failed"
    );
    assert_eq!(netbox_triggers(&pg).await, 0, "the role could install it");
    let out = tollgate(&gw.path("gateway.yaml"), &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("CREATE TRIGGER tollgate_tokens_notify"),
        "{stderr}"
    );
    // Without the trigger the refresh (1 s here) still brings the change.
    pg.exec("DELETE FROM users_token WHERE id = 1").await;
    within(Duration::from_secs(5), "deleted token refused", || async {
        read(NB_WRITE).await == 401
    })
    .await;
    assert_eq!(read(NB_READ).await, 200);
    drop(gw);
    pg.exec(&format!(
        "REVOKE ALL ON users_token, users_user FROM {role}; \
         REVOKE USAGE ON SCHEMA {schema} FROM {role}; DROP ROLE {role}",
        schema = pg.schema
    ))
    .await;
}

#[tokio::test]
async fn netbox_preset_reads_users_token_as_it_is_and_follows_its_changes() {
    let _shared = WHOLE_READS.read().await;
    let Some(pg) = Pg::new().await else { return };
    pg.exec(NETBOX_USERS_TOKEN).await;
    pg.exec(&format!(
        "INSERT INTO users_user (id, username, is_active) VALUES (1, 'admin', true), \
           (2, 'leaver', true);
         INSERT INTO users_token (id, version, enabled, write_enabled, expires, plaintext, \
           allowed_ips, description, user_id) VALUES
         (1, 1, true, true, NULL, '{NB_WRITE}', NULL, 'automation', 1),
         (2, 1, true, false, now() + interval '30 days', '{NB_READ}', '{{127.0.0.0/8}}', '', 1),
         (3, 1, true, true, now() - interval '1 day', '{NB_EXPIRED}', NULL, '', 1),
         (4, 1, false, true, NULL, '{NB_DISABLED}', NULL, '', 1),
         (5, 1, true, true, NULL, '{NB_ELSEWHERE}', '{{10.0.0.0/8,192.168.0.0/16}}', '', 1);
         INSERT INTO users_token (id, version, enabled, write_enabled, key, pepper_id, \
           hmac_digest, user_id) VALUES (6, 2, true, true, '{NB_V2_KEY}', 1, '{}', 1), \
           (7, 2, true, false, '{v2_key}', 1, '{v2_digest}', 1), \
           (8, 2, true, true, 'LEAVERKEY000', 1, '{v2_digest}', 2);",
        "0".repeat(64),
        v2_key = split::V2_KEY,
        v2_digest = split::V2_DIGEST,
    ))
    .await;
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&netbox_config(up.addr, &pg.url), "").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    let token = |key: &str| format!("Authorization: Token {key}");
    let post = |key: &'static str| {
        let addr = gw.addr();
        async move { request(addr, "POST", "/api/dcim/devices/", &[&token(key)], "{}").await }
    };
    let read = |key: &'static str| {
        let addr = gw.addr();
        async move { get(addr, "/api/dcim/devices/", &[&token(key)]).await }
    };

    let r = post(NB_WRITE).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.only();
    assert_eq!(
        (seen.method.as_str(), seen.header("x-tollgate-token-id")),
        ("POST", Some("nb-1"))
    );
    // forward_credentials: NetBox sees its own key again.
    let forwarded = format!("Token {NB_WRITE}");
    assert_eq!(seen.header("authorization"), Some(forwarded.as_str()));
    up.clear();

    assert_eq!(read(NB_READ).await.status, 200);
    assert_refusal(&post(NB_READ).await, 403, "read_only_token");
    assert_refusal(&read(NB_EXPIRED).await, 401, "invalid_token");
    assert_refusal(&read(NB_DISABLED).await, 401, "invalid_token");
    assert_refusal(&read(NB_ELSEWHERE).await, 403, "ip_not_allowed");
    assert_refusal(&read(NB_V2_KEY).await, 401, "invalid_token");
    assert_eq!(
        up.seen().len(),
        1,
        "only the read-only key's GET went through"
    );
    up.clear();

    // A v2 token from the same query: Bearer nbt_<key>.<token>, verified
    // against NetBox's HMAC digest under the configured pepper, read-only
    // here (write_enabled = false), forwarded as sent.
    let v2 = format!("Bearer nbt_{}.{}", split::V2_KEY, split::V2_SECRET);
    let auth = format!("Authorization: {v2}");
    let r = get(gw.addr(), "/api/dcim/devices/", &[&auth]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), Some("nb-7"));
    assert_eq!(seen.header("authorization"), Some(v2.as_str()));
    up.clear();
    let r = request(gw.addr(), "POST", "/api/dcim/devices/", &[&auth], "{}").await;
    assert_refusal(&r, 403, "read_only_token");
    split::every_invalid_split_token_is_the_same_401(
        gw.addr(),
        "/api/dcim/devices/",
        "Bearer",
        &up,
    )
    .await;

    // A deactivated user's tokens stop working, v1 and v2 alike.
    let leaver = format!(
        "Authorization: Bearer nbt_LEAVERKEY000.{}",
        split::V2_SECRET
    );
    assert_eq!(
        get(gw.addr(), "/api/dcim/devices/", &[&leaver])
            .await
            .status,
        200
    );
    pg.exec("UPDATE users_user SET is_active = false WHERE id = 2")
        .await;
    within(
        Duration::from_secs(3),
        "deactivated user refused",
        || async {
            get(gw.addr(), "/api/dcim/devices/", &[&leaver])
                .await
                .status
                == 401
        },
    )
    .await;
    up.clear();

    // Changes made in NetBox arrive within the refresh interval (1 s).
    pg.exec(
        "UPDATE users_token SET enabled = false WHERE id = 1; \
             UPDATE users_token SET write_enabled = true WHERE id = 2",
    )
    .await;
    let delay = within(Duration::from_secs(3), "disabled key refused", || async {
        read(NB_WRITE).await.status == 401
    })
    .await;
    assert!(delay <= Duration::from_millis(1_250), "took {delay:?}");
    assert_eq!(post(NB_READ).await.status, 200, "write now enabled");
}

/// The contract: `check` never writes; it reports a missing database file,
/// table or trigger and the command that creates it; `serve` creates them.
#[tokio::test]
async fn sqlite_check_never_creates_the_database_and_serve_does() {
    let up = Upstream::start().await;
    let config = sqlite_config(up.addr, "200ms");
    // A config alone, with no gateway: check must leave no file behind.
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("gateway.yaml");
    std::fs::write(&alone, &config).unwrap();
    let out = tollgate(&alone, &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no such file; `tollgate token create`"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("tokens.db").exists(),
        "check created the database"
    );
    // An empty file (no table): reported, not created.
    std::fs::write(dir.path().join("tokens.db"), b"").unwrap();
    let out = tollgate(&alone, &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the table tollgate_tokens is missing"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("tokens.db"))
            .unwrap()
            .len(),
        0
    );

    let gw = Gw::start_unready(&config, "").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    assert!(
        gw.path("tokens.db").exists(),
        "serve did not create the database"
    );
    let out = tollgate(&gw.path("gateway.yaml"), &["check"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn postgres_check_reports_a_missing_table_or_trigger_and_serve_creates_them() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let yaml = postgres_config(up.addr, &pg.url, "30s");
    std::fs::write(&config, &yaml).unwrap();
    let check = || async {
        let out = tollgate(&config, &["check"]).await;
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the table tollgate_tokens is missing; `tollgate token create` or `tollgate serve` creates it"
        ),
        "{stderr}"
    );
    let count = |sql: &'static str| {
        let admin = pg.admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'tollgate_tokens' \
                  AND schemaname = current_schema()";
    assert_eq!(count(tables).await, 0, "check created the table");

    // The table as the contract lists it, made by hand without the trigger.
    pg.exec(
        "CREATE TABLE tollgate_tokens (id text PRIMARY KEY, sha256 text UNIQUE NOT NULL, \
         scopes text NOT NULL, read_only boolean NOT NULL DEFAULT false, \
         expires_at timestamptz, allowed_ips text, rate_requests integer, \
         rate_per_ms integer, rate_burst integer, \
         disabled boolean NOT NULL DEFAULT false, description text, \
         created_at timestamptz, updated_at timestamptz, last_used_at timestamptz)",
    )
    .await;
    let (code, stderr) = check().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the trigger tollgate_tokens_notify is missing"),
        "{stderr}"
    );
    let triggers = "SELECT count(*) FROM pg_trigger WHERE tgname = 'tollgate_tokens_notify' \
                    AND tgrelid = to_regclass('tollgate_tokens')";
    assert_eq!(count(triggers).await, 0, "check installed the trigger");

    let gw = Gw::start_unready(&yaml, "").await;
    wait_ready(&gw, Duration::from_secs(10)).await;
    assert_eq!(
        count(triggers).await,
        1,
        "serve did not install the trigger"
    );
    let (code, stderr) = check().await;
    assert_eq!(code, Some(0), "{stderr}");
}
