//! Reloads, signals, drain and slow clients.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn a_token_revoked_in_the_file_is_refused_within_the_refresh_interval() {
    let (_up, gw) = standard().await;
    assert_eq!(
        get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await.status,
        200
    );
    let revoked = tokens_yaml().replacen(
        "scopes: [scope:agent-ui]",
        "scopes: [scope:agent-ui]\n    disabled: true",
        1,
    );
    let changed = Instant::now();
    replace_file(&gw.path("tokens.yaml"), &revoked);
    loop {
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
        if r.status == 401 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delay = changed.elapsed();
    // refresh_interval is 200 ms; the file watcher usually beats it.
    assert!(
        delay <= Duration::from_millis(700),
        "revocation took {delay:?}"
    );
}

#[tokio::test]
async fn a_broken_token_file_keeps_the_last_good_index() {
    let (_up, gw) = standard().await;
    replace_file(&gw.path("tokens.yaml"), "tokens:\n  - id: [broken\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await.status,
        200
    );
    let m = String::from_utf8(get(gw.admin(), "/metrics", &[]).await.body).unwrap();
    assert!(m.contains("tollgate_token_source_up 0"), "{m}");
    assert!(
        m.contains("tollgate_token_reloads_total{result=\"failure\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn a_reload_with_a_broken_config_keeps_the_running_one() {
    let (up, gw) = standard().await;
    std::fs::write(
        gw.path("gateway.yaml"),
        gateway_yaml(up.addr, "").replace("scopes: [scope:agent-ui]", "scopes: []"),
    )
    .unwrap();
    let err = gw.launched.control.reload().await.unwrap_err();
    assert!(err.contains("scopes"), "{err}");
    assert_eq!(
        get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await.status,
        200
    );
    // A good config takes effect for the next request on the same server.
    std::fs::write(
        gw.path("gateway.yaml"),
        gateway_yaml(up.addr, "").replace("scopes: [scope:agent-ui]", "scopes: [scope:other]"),
    )
    .unwrap();
    gw.launched.control.reload().await.unwrap();
    assert_refusal(
        &get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await,
        403,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn a_reload_to_a_token_source_that_cannot_be_loaded_is_refused() {
    let (up, gw) = standard().await;
    let metrics = || async {
        let m = String::from_utf8(get(gw.admin(), "/metrics", &[]).await.body).unwrap();
        m.lines()
            .find(|l| l.starts_with("tollgate_token_reloads_total{result=\"failure\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
            .unwrap_or_else(|| "0".into())
    };
    let failures_before = metrics().await;
    // Config B: another (missing) token file, and a scope change that would
    // show if B were applied.
    std::fs::write(
        gw.path("gateway.yaml"),
        gateway_yaml(up.addr, "")
            .replace("path: tokens.yaml", "path: missing.yaml")
            .replace("scopes: [scope:agent-ui]", "scopes: [scope:other]"),
    )
    .unwrap();
    let err = gw.launched.control.reload().await.unwrap_err();
    assert!(err.contains("gateway.yaml: tokens:"), "{err}");
    assert!(err.contains("missing.yaml"), "{err}");
    assert_eq!(
        get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await.status,
        200,
        "the running config and index stay"
    );
    assert_eq!(get(gw.admin(), "/readyz", &[]).await.status, 200);
    let failures_after = metrics().await;
    assert_ne!(failures_before, failures_after, "the refusal is counted");
}

#[tokio::test]
async fn a_reload_to_another_token_source_serves_its_index_as_soon_as_it_returns() {
    let (up, gw) = standard().await;
    let beta = format!(
        "tokens:\n  - id: beta\n    sha256: {}\n    scopes: [scope:agent-ui]\n",
        sha("beta-secret")
    );
    std::fs::write(gw.path("other.yaml"), beta).unwrap();
    std::fs::write(
        gw.path("gateway.yaml"),
        gateway_yaml(up.addr, "").replace("path: tokens.yaml", "path: other.yaml"),
    )
    .unwrap();
    gw.launched.control.reload().await.unwrap();
    assert_eq!(
        get(gw.addr(), "/api/v1/x", &[&bearer("beta-secret")])
            .await
            .status,
        200
    );
    assert_refusal(
        &get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await,
        401,
        "invalid_token",
    );
}

#[tokio::test]
async fn a_reload_applies_to_requests_on_connections_opened_before_it() {
    let (up, gw) = standard().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: x\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    std::fs::write(
        gw.path("gateway.yaml"),
        gateway_yaml(up.addr, "").replace("scopes: [scope:agent-ui]", "scopes: [scope:other]"),
    )
    .unwrap();
    gw.launched.control.reload().await.unwrap();
    stream.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut stream).await.status, 403);
}

#[tokio::test]
async fn a_drain_finishes_the_in_flight_request_then_stops() {
    let (up, gw) = standard().await;
    up.behaviour.lock().unwrap().delay = Some(Duration::from_millis(500));
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move { get(addr, "/api/v1/x", &[&bearer(AGENT)]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut launched = gw.launched;
    launched.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!launched.gateway.is_ready());
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"upstream says hi");
    tokio::time::timeout(Duration::from_secs(5), launched.stopped())
        .await
        .expect("server stops");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after the drain"
    );
}

#[tokio::test]
async fn a_new_request_on_a_kept_alive_connection_during_a_drain_gets_503_and_close() {
    let (up, gw) = standard().await;
    up.behaviour.lock().unwrap().delay = Some(Duration::from_millis(400));
    let addr = gw.addr();
    let slow = tokio::spawn(async move { get(addr, "/api/v1/x", &[&bearer(AGENT)]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A second connection that is mid-request when the drain starts.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut launched = gw.launched;
    stream
        .write_all(b"GET /api/v1/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    launched.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(format!("{}\r\n\r\n", bearer(AGENT)).as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_refusal(&r, 503, "not_ready");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_at_header_read() {
    let (up, gw) = standard().await;
    // Half a request head, then silence.
    let mut partial = TcpStream::connect(gw.addr()).await.unwrap();
    partial
        .write_all(b"GET /api/v1/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // And a client that never says anything.
    let mut silent = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    for stream in [&mut partial, &mut silent] {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => {
                        // hyper may answer 408 before closing.
                        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
                    }
                }
            }
        })
        .await
        .expect("connection closed by the gateway");
        assert_eq!(n, 0);
    }
    // header_read is 1 s in the test config.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (up, gw) = standard().await;
    let big = format!("X-Big: {}", "a".repeat(70 * 1024));
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: x\r\n{big}\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    let _ = stream.write_all(req.as_bytes()).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 431"), "{head}");
    let long = format!("/api/v1/{}", "a".repeat(9000));
    let r = get(gw.addr(), &long, &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 414, "{}", r.head);
    assert!(up.seen().is_empty());
}

/// A `tollgate serve` child process; killed on drop.
struct Proc {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("gateway printed its address").unwrap();
        if let Some(i) = line.find("\"addr\":\"") {
            let rest = &line[i + 8..];
            break rest[..rest.find('"').unwrap()].parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Proc { child, addr }
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The standard config (logging at `info`) and token file in a new
/// directory, for a gateway process; the directory lives as long as the
/// first value. Returns the config's path and text.
fn config_files(up: &Upstream) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let yaml = gateway_yaml(up.addr, "").replace("level: warn", "level: info");
    std::fs::write(&config, &yaml).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    (dir, config, yaml)
}

async fn wait_status(addr: std::net::SocketAddr, secret: &str, want: u16) {
    for _ in 0..200 {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        {
            let req = format!(
                "GET /api/v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n\r\n",
                bearer(secret)
            );
            if s.write_all(req.as_bytes()).await.is_ok()
                && read_response(&mut s).await.status == want
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never got {want}");
}

#[tokio::test]
async fn sighup_with_a_broken_config_keeps_serving_and_sigterm_drains_and_exits_0() {
    let up = Upstream::start().await;
    let (_dir, config, yaml) = config_files(&up);
    let mut p = spawn_serve(&config);
    wait_status(p.addr, AGENT, 200).await;

    std::fs::write(
        &config,
        yaml.replace("read_only", "x").replace(
            "refresh_interval: 200ms",
            "refresh_interval: 200ms\n  bogus: 1",
        ),
    )
    .unwrap();
    signal(&p, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_status(p.addr, AGENT, 200).await;

    std::fs::write(
        &config,
        yaml.replace("scopes: [scope:agent-ui]", "scopes: [scope:other]"),
    )
    .unwrap();
    signal(&p, "-HUP");
    wait_status(p.addr, AGENT, 403).await;

    up.behaviour.lock().unwrap().delay = Some(Duration::from_millis(600));
    let addr = p.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/api/v1/x", &[&bearer(ADMIN)]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&p, "-TERM");
    assert_eq!(in_flight.await.unwrap().status, 200);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sighup_applies_a_new_log_level() {
    let up = Upstream::start().await;
    let (_dir, config, yaml) = config_files(&up);
    let served = serve_process(&config);
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &served.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    wait_status(served.addr, AGENT, 200).await;

    // At `warn` the reload's own info line is no longer written; the new
    // scopes show the reload happened.
    let quiet = yaml
        .replace("level: info", "level: warn")
        .replace("scopes: [scope:agent-ui]", "scopes: [scope:other]");
    std::fs::write(&config, quiet).unwrap();
    hup();
    wait_status(served.addr, AGENT, 403).await;
    // Back at `info`, it is.
    std::fs::write(&config, &yaml).unwrap();
    hup();
    wait_status(served.addr, AGENT, 200).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while served.log_count("configuration reloaded") == 0 {
        assert!(Instant::now() < deadline, "no reload line at info");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served.log_count("configuration reloaded"), 1);
}

#[tokio::test]
async fn a_dead_upstream_is_logged_at_warn_with_route_upstream_and_cause_once_a_second() {
    // An address where nothing listens: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::start().await;
    let (dir, _config, yaml) = config_files(&up);
    let yaml = yaml.replace(
        "routes:\n",
        &format!("routes:\n  - prefix: /gone\n    upstream: http://{dead}\n    scopes: [\"*\"]\n"),
    );
    let config = dir.path().join("dead.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let served = serve_process(&config);
    wait_status(served.addr, AGENT, 200).await;
    for _ in 0..5 {
        let r = get(served.addr, "/gone/x", &[&bearer(AGENT)]).await;
        assert_refusal(&r, 502, "bad_gateway");
    }
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = served
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("upstream request failed"))
            .cloned()
            .collect();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The five failures of one burst: one line (more only if the burst
    // crossed a second boundary), at warn, naming route, upstream, cause.
    assert!((1..=2).contains(&lines.len()), "{lines:?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["route"], "/gone", "{line}");
    assert_eq!(line["fields"]["upstream"], dead.to_string(), "{line}");
    let cause = line["fields"]["cause"].as_str().unwrap();
    assert!(cause.contains("onnect"), "{cause}");
    assert!(!lines.iter().any(|l| l.contains(AGENT)));
}
