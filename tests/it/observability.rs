//! Observability through the real server: `/metrics` moving with the
//! traffic, and everything the `tollgate` binary prints at `trace` level
//! scanned for secrets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};
use tokio::net::TcpStream;

use crate::support::*;
use crate::tls::{client_config, connect_tls, h1_client, h2_client, read_answer, Pki};

/// The samples of a Prometheus text exposition, by series
/// (`name{labels}`).
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let r = get(admin, "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    let value = |m: &HashMap<String, f64>| m.get(series).copied().unwrap_or(0.0);
    value(after) - value(before)
}

/// Polls the metrics until `done` holds (5 s at most).
async fn scrape_until(
    admin: SocketAddr,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(admin).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what} within 5 s: {m:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LIMITED: &str = "limited-secret";

#[tokio::test]
async fn metrics_follow_requests_refusals_limits_upstream_time_and_token_loads() {
    let up = Upstream::start().await;
    let config = gateway_yaml(up.addr, "").replacen(
        "routes:\n",
        "limits:\n  failed_auth_per_ip: { requests: 2, per: 1h, burst: 2 }\nroutes:\n",
        1,
    );
    let tokens = format!(
        "{}  - id: limited\n    sha256: {}\n    scopes: [scope:agent-ui]\n    rate_limit: {{ requests: 1, per: 1h, burst: 1 }}\n",
        tokens_yaml(),
        sha(LIMITED)
    );
    let gw = Gw::start(&config, &tokens).await;
    let admin = gw.admin();
    let before = scrape(admin).await;
    assert_eq!(before["tollgate_tokens_loaded"], 8.0);
    assert_eq!(before["tollgate_token_source_up"], 1.0);
    assert!(before["tollgate_token_reloads_total{result=\"success\"}"] >= 1.0);
    assert_eq!(before["tollgate_access_log_dropped_total"], 0.0);

    let addr = gw.addr();
    assert_eq!(get(addr, "/api/v1/a", &[&bearer(AGENT)]).await.status, 200);
    assert_eq!(get(addr, "/api/v1/a", &[]).await.status, 401);
    assert_eq!(
        get(addr, "/api/v3/a", &[&bearer(LIMITED)]).await.status,
        200
    );
    assert_eq!(
        get(addr, "/api/v3/a", &[&bearer(LIMITED)]).await.status,
        429
    );
    for _ in 0..2 {
        let r = get(addr, "/api/v1/a", &[&bearer("not-a-token")]).await;
        assert_eq!(r.status, 401);
    }
    // The address has used up its failed-auth burst: even a good token
    // waits, unless it authenticated from this address before (`agent` did).
    assert_eq!(get(addr, "/api/v1/a", &[&bearer(ADMIN)]).await.status, 429);
    let after = scrape(admin).await;

    let d = |series: &str| delta(&before, &after, series);
    assert_eq!(
        d("tollgate_requests_total{route=\"/api/v1\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        d("tollgate_requests_total{route=\"/api/v1\",status=\"401\"}"),
        3.0
    );
    assert_eq!(
        d("tollgate_requests_total{route=\"/api/v3\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        d("tollgate_requests_total{route=\"/api/v3\",status=\"429\"}"),
        1.0
    );
    // The failed-auth guard answers before any route is looked up.
    assert_eq!(d("tollgate_requests_total{route=\"\",status=\"429\"}"), 1.0);
    assert_eq!(
        d("tollgate_auth_denied_total{reason=\"missing_token\"}"),
        1.0
    );
    assert_eq!(
        d("tollgate_auth_denied_total{reason=\"invalid_token\"}"),
        2.0
    );
    assert_eq!(
        d("tollgate_auth_denied_total{reason=\"rate_limited\"}"),
        2.0
    );
    assert_eq!(d("tollgate_rate_limited_total{reason=\"token\"}"), 1.0);
    assert_eq!(
        d("tollgate_rate_limited_total{reason=\"failed_auth\"}"),
        1.0
    );
    assert_eq!(
        d("tollgate_upstream_duration_seconds_count{route=\"/api/v1\"}"),
        1.0
    );
    assert_eq!(
        d("tollgate_upstream_duration_seconds_count{route=\"/api/v3\"}"),
        1.0
    );
    assert!(d("tollgate_upstream_duration_seconds_sum{route=\"/api/v1\"}") > 0.0);
    assert_eq!(
        d("tollgate_upstream_duration_seconds_bucket{le=\"+Inf\",route=\"/api/v1\"}"),
        1.0
    );

    // A broken token file: the source is down, the last index keeps serving.
    replace_file(&gw.path("tokens.yaml"), "tokens: [\n");
    let broken = scrape_until(admin, "a failed token load", |m| {
        m["tollgate_token_source_up"] == 0.0
            && m.get("tollgate_token_reloads_total{result=\"failure\"}")
                .is_some_and(|&n| n >= 1.0)
    })
    .await;
    assert_eq!(broken["tollgate_tokens_loaded"], 8.0);
    // A good file again, one token fewer.
    replace_file(&gw.path("tokens.yaml"), &tokens_yaml());
    scrape_until(admin, "the repaired token file", |m| {
        m["tollgate_token_source_up"] == 1.0 && m["tollgate_tokens_loaded"] == 7.0
    })
    .await;
}

// ---------------------------------------------------------------------------
// Secrets at trace level, through the real binary.

/// Distinctive secrets, so a match cannot be a coincidence.
const VALID: &str = "scan-valid-Hq7Zr2Lx9Vb4";
const HEADER: &str = "scan-header-Mw3Kd8Pn5Tc1";
const PLAIN_IN_FILE: &str = "scan-plain-Fj6Ys1Qe0Ua7";
const INVALID: &str = "scan-invalid-Rb2Gt9Wm4Xh8";
const QUERY: &str = "scan-query-Nv5Cz3Ji8Lo6";
const BASIC_PASSWORD: &str = "scan-basic-Ek4Sa7Ud2Py9";
const PROXY_PASSWORD: &str = "scan-proxy-Tg1Hb6Vq3Wn0";
const COOKIE: &str = "scan-cookie-Zp8Df5Kr1Me2";

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Every string that must never be printed: the secrets, their hashes,
/// and the credential header values as sent.
fn forbidden() -> Vec<String> {
    let mut out = Vec::new();
    for secret in [VALID, HEADER, PLAIN_IN_FILE, INVALID] {
        out.push(secret.to_string());
        out.push(sha(secret));
        out.push(sha(secret).to_ascii_uppercase());
    }
    for secret in [QUERY, BASIC_PASSWORD, PROXY_PASSWORD, COOKIE] {
        out.push(secret.to_string());
    }
    out.push(basic("scanner", BASIC_PASSWORD));
    out.push(basic("proxy-user", PROXY_PASSWORD));
    out
}

/// `tollgate serve` as a child process, its output going to two files
/// outside the config directory.
struct Served {
    child: Child,
    logs: tempfile::TempDir,
    _dir: tempfile::TempDir,
    /// The base64 body of the listener's private key.
    key_body: String,
}

impl Served {
    fn start(format: &str, level: &str, up: SocketAddr, pki: &Pki) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let leaf = pki.leaf("scan", 1);
        std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
        let config = gateway_yaml(up, "")
            .replacen(
                "listen:\n  - addr: 127.0.0.1:0\n",
                "listen:\n  - addr: 127.0.0.1:0\n  - addr: 127.0.0.1:0\n    tls:\n      cert: cert.pem\n      key: key.pem\n",
                1,
            )
            .replacen(
                "log:\n  format: json\n  level: warn\n",
                &format!("log:\n  format: {format}\n  level: {level:?}\n"),
                1,
            );
        assert!(config.contains("level: \"trace"));
        std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
        let tokens = format!(
            "tokens:\n  - id: scan-valid\n    sha256: {}\n    scopes: [scope:all]\n  - id: scan-header\n    sha256: {}\n    scopes: [scope:agent-ui]\n  - id: scan-plain\n    token: {PLAIN_IN_FILE}\n    scopes: [scope:all]\n",
            sha(VALID),
            sha(HEADER),
        );
        std::fs::write(dir.path().join("tokens.yaml"), tokens).unwrap();
        let file = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("serve")
            .arg("-c")
            .arg(dir.path().join("gateway.yaml"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("the tollgate binary starts");
        let key_body = leaf
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        Served {
            child,
            logs,
            _dir: dir,
            key_body,
        }
    }

    fn output(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.logs.path().join(name)).unwrap()).into_owned()
    }

    /// The data addresses, from the "listening" lines on stderr.
    async fn data_addrs(&self) -> Vec<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stderr = strip_ansi(&self.output("stderr"));
            let addrs: Vec<SocketAddr> = stderr
                .lines()
                .filter(|l| l.contains("listening") && !l.contains("admin"))
                .filter_map(|l| {
                    let at = l.find("127.0.0.1:")?;
                    let rest = &l[at..];
                    let end = rest
                        .char_indices()
                        .find(|&(i, c)| i > 10 && !c.is_ascii_digit())
                        .map_or(rest.len(), |(i, _)| i);
                    rest[..end].parse().ok()
                })
                .collect();
            if addrs.len() == 2 {
                return addrs;
            }
            assert!(Instant::now() < deadline, "no listening lines: {stderr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// SIGTERM, then waits for a clean exit (without blocking the test's
    /// runtime, so client connections can close meanwhile).
    async fn stop(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(Instant::now() < deadline, "tollgate did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Requests that carry every kind of secret, over HTTP/1.1, HTTP/2 and TLS.
async fn send_secrets(plain: SocketAddr, tls: SocketAddr, pki: &Pki) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(plain, "/api/v1/ready", &[&bearer(VALID)]).await.status == 503 {
        assert!(Instant::now() < deadline, "tollgate never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy_auth = format!(
        "Proxy-Authorization: Basic {}",
        basic("proxy-user", PROXY_PASSWORD)
    );
    let cookie = format!("Cookie: session={COOKIE}");
    let cases: Vec<(String, Vec<String>, u16)> = vec![
        (
            "/api/v1/valid".into(),
            vec![bearer(VALID), cookie.clone()],
            200,
        ),
        ("/api/v1/invalid".into(), vec![bearer(INVALID)], 401),
        (
            "/api/v1/header".into(),
            vec![format!("xc-token: {HEADER}")],
            200,
        ),
        (
            "/api/v1/plain".into(),
            vec![format!("Authorization: Token {PLAIN_IN_FILE}")],
            200,
        ),
        (
            "/api/v3/basic".into(),
            vec![
                format!("Authorization: Basic {}", basic("scanner", BASIC_PASSWORD)),
                proxy_auth,
            ],
            200,
        ),
        (
            format!("/api/v3/query?access_token={QUERY}&x=1"),
            vec![],
            200,
        ),
        (format!("/api/v1/query?api_key={QUERY}"), vec![], 401),
        (
            "/api/v1/both".into(),
            vec![bearer(VALID), format!("xc-token: {HEADER}")],
            400,
        ),
    ];
    for (path, headers, status) in &cases {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let r = get(plain, path, &headers).await;
        assert_eq!(r.status, *status, "{path}: {}", r.head);
    }

    // HTTP/2 by prior knowledge on the plain listener.
    let mut h2 = h2_client(TcpStream::connect(plain).await.unwrap()).await;
    for (secret, status) in [(VALID, 200), (INVALID, 401)] {
        let req = Request::post(format!("http://gw.test/api/v1/h2?token={QUERY}"))
            .header("authorization", format!("Bearer {secret}"))
            .header("cookie", format!("session={COOKIE}"))
            .body(Full::new(Bytes::from_static(b"body")))
            .unwrap();
        assert_eq!(
            read_answer(h2.send_request(req).await.unwrap())
                .await
                .status,
            status
        );
    }

    // TLS: HTTP/2 by ALPN, then HTTP/1.1.
    let h2_tls = connect_tls(tls, client_config(&pki.ca_pem(), &[b"h2"])).await;
    let mut h2_tls = h2_client(h2_tls).await;
    let req = Request::get("https://localhost/api/v1/tls-h2")
        .header("xc-token", HEADER)
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        read_answer(h2_tls.send_request(req).await.unwrap())
            .await
            .status,
        200
    );
    let h1_tls = connect_tls(tls, client_config(&pki.ca_pem(), &[b"http/1.1"])).await;
    let mut h1_tls = h1_client(h1_tls).await;
    let req = Request::get("/api/v1/tls-h1")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {INVALID}"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        read_answer(h1_tls.send_request(req).await.unwrap())
            .await
            .status,
        401
    );
}

/// Log targets of the protocol crates the default filter caps at `info`.
const PROTOCOL_TARGETS: &[&str] = &["h2::", "rustls::", "hyper_util::", "notify::"];

/// Runs the binary at `level` through [`send_secrets`] twice (with a
/// SIGHUP between) and scans what it printed; returns stderr.
async fn scan_one_run(format: &str, level: &str) -> String {
    let up = Upstream::start().await;
    let pki = Pki::new("scan CA");
    let mut served = Served::start(format, level, up.addr, &pki);
    let addrs = served.data_addrs().await;
    send_secrets(addrs[0], addrs[1], &pki).await;
    // A reload (SIGHUP) logs too.
    served.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served.output("stderr").contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send_secrets(addrs[0], addrs[1], &pki).await;
    served.stop().await;

    let stdout = served.output("stdout");
    let stderr = served.output("stderr");
    // The run really logged below info (the gateway's own debug lines),
    // and the access log saw the requests by token id.
    assert!(
        stderr.contains("token index loaded"),
        "no debug line in {format} output:\n{stderr}"
    );
    assert!(!stderr.contains("shutdown grace elapsed"), "{stderr}");
    assert!(
        stdout.contains("scan-valid") && stdout.contains("scan-header"),
        "{stdout}"
    );
    assert!(stdout.lines().count() >= 2 * 12, "{stdout}");
    assert_no_secret(&format!("{format} stdout"), &stdout);
    assert_no_secret(&format!("{format} stderr"), &stderr);
    for chunk in served.key_body.as_bytes().chunks_exact(32) {
        let chunk = std::str::from_utf8(chunk).unwrap();
        assert!(
            !stdout.contains(chunk) && !stderr.contains(chunk),
            "{format} output holds private key material"
        );
    }
    // Nothing the upstream needed was lost on the way: it did get the
    // query string (forwarded by design), the proof the scan had something
    // to find.
    assert!(up.seen().iter().any(|s| s.target.contains(QUERY)));
    strip_ansi(&stderr)
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in forbidden() {
        if let Some(at) = text.find(&secret) {
            let line = text[..at].lines().count();
            // Name the line, not the secret's context, to keep the failure
            // message short.
            panic!(
                "{what} line {line} contains a secret ({} bytes)",
                secret.len()
            );
        }
    }
}

#[tokio::test]
async fn nothing_the_binary_prints_at_trace_level_in_text_holds_a_secret() {
    let stderr = scan_one_run("text", "trace").await;
    // `level: trace` caps the protocol crates at info.
    for target in PROTOCOL_TARGETS {
        assert!(
            !stderr
                .lines()
                .any(|l| l.contains("TRACE") && l.contains(target)),
            "{target} traced despite the cap"
        );
    }
}

#[tokio::test]
async fn nothing_the_binary_prints_at_trace_level_in_json_holds_a_secret_even_from_protocol_crates()
{
    // Naming the crates lifts the cap: their frame and handshake traces
    // are scanned too.
    let stderr = scan_one_run(
        "json",
        "trace,h2=trace,hyper=trace,hyper_util=trace,rustls=trace,notify=trace",
    )
    .await;
    // `hyper_util::` only logs from the client of `https` upstreams, which
    // this run has none of.
    for target in PROTOCOL_TARGETS.iter().filter(|t| **t != "hyper_util::") {
        assert!(
            stderr.contains(&format!("\"target\":\"{target}")),
            "no {target} lines to scan"
        );
    }
}
