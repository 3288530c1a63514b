//! Test support: a recording upstream, a gateway started from a YAML
//! config on 127.0.0.1:0, and clients (hyper and raw sockets).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tollgate::server::launch::{launch, Launched};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request body's trailers, if any arrived.
    pub trailers: Option<HeaderMap>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// How the upstream answers.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Answer with this `X-Request-Id` of the upstream's own.
    pub request_id: Option<String>,
}

/// An upstream on 127.0.0.1:0 that records every request.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            behaviour: Arc::default(),
            connections: Arc::default(),
        };
        let server = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                server
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let server = server.clone();
                        async move { server.answer(req).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        up
    }

    async fn answer(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (parts, body) = req.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        let seen = Seen {
            method: parts.method.to_string(),
            target: parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_string())
                .unwrap_or_default(),
            headers: parts.headers,
            body,
            trailers,
        };
        self.seen.lock().unwrap().push(seen);
        let (delay, request_id) = {
            let b = self.behaviour.lock().unwrap();
            (b.delay, b.request_id.clone())
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut resp = Response::new(Full::new(Bytes::from_static(b"upstream says hi")));
        resp.headers_mut()
            .insert("x-upstream", "yes".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "keep-alive, x-hop".parse().unwrap());
        resp.headers_mut()
            .insert("x-hop", "secret-hop".parse().unwrap());
        if let Some(id) = request_id {
            resp.headers_mut()
                .insert("x-request-id", id.parse().unwrap());
        }
        Ok(resp)
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received so far (panics otherwise).
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "upstream saw {} requests: {seen:#?}",
            seen.len()
        );
        seen.into_iter().next().unwrap()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Secrets of the standard test tokens.
pub const AGENT: &str = "agent-secret";
pub const GRAFANA: &str = "grafana-secret";
pub const ADMIN: &str = "admin-secret";
pub const REVOKED: &str = "revoked-secret";
pub const EXPIRED: &str = "expired-secret";
pub const IPBOUND: &str = "ipbound-secret";
pub const ANYSCOPE: &str = "noscope-secret";

pub fn sha(secret: &str) -> String {
    tollgate::tokens::TokenHash::of(secret.as_bytes()).to_hex()
}

/// The standard token file.
pub fn tokens_yaml() -> String {
    format!(
        r#"tokens:
  - id: agent
    sha256: {agent}
    scopes: [scope:agent-ui]
  - id: grafana
    sha256: {grafana}
    scopes: [scope:grafana-plugin]
    read_only: true
  - id: admin
    sha256: {admin}
    scopes: [scope:all]
  - id: revoked
    sha256: {revoked}
    scopes: [scope:all]
    disabled: true
  - id: expired
    sha256: {expired}
    scopes: [scope:all]
    expires_at: 2020-01-01T00:00:00Z
  - id: ipbound
    sha256: {ipbound}
    scopes: [scope:all]
    allowed_ips: [10.9.9.9]
  - id: noscope
    sha256: {noscope}
    scopes: []
"#,
        agent = sha(AGENT),
        grafana = sha(GRAFANA),
        admin = sha(ADMIN),
        revoked = sha(REVOKED),
        expired = sha(EXPIRED),
        ipbound = sha(IPBOUND),
        noscope = sha(ANYSCOPE),
    )
}

/// The standard gateway config in front of `up`; `extra` is appended
/// verbatim to the routes list (indented as list items).
pub fn gateway_yaml(up: SocketAddr, extra_routes: &str) -> String {
    format!(
        r#"listen:
  - addr: 127.0.0.1:0
admin:
  addr: 127.0.0.1:0
log:
  format: json
  level: warn
  access: true
tokens:
  source: file
  path: tokens.yaml
  refresh_interval: 200ms
auth:
  headers: [xc-token]
timeouts:
  header_read: 1s
  idle: 2s
  upstream_response: 2s
  shutdown_grace: 5s
routes:
  - prefix: /api/v1/admin
    upstream: http://{up}
    scopes: [scope:admin]
  - prefix: /api/v1
    upstream: http://{up}
    scopes: [scope:agent-ui]
  - prefix: /api/v2
    upstream: http://{up}
    scopes: [scope:grafana-plugin]
  - prefix: /api/v3
    upstream: http://{up}
    scopes: [scope:agent-ui, scope:grafana-plugin]
    anonymous: read
  - prefix: /strip
    upstream: http://{up}/base
    scopes: ["*"]
    strip_prefix: true
  - prefix: /small
    upstream: http://{up}
    scopes: ["*"]
    max_body_bytes: 10
  - prefix: /slow
    upstream: http://{up}
    scopes: ["*"]
    upstream_response_timeout: 300ms
{extra_routes}"#
    )
}

/// A running gateway and the files it was started from.
pub struct Gw {
    pub launched: Launched,
    pub dir: tempfile::TempDir,
    pub access: SharedSink,
}

impl Gw {
    /// Starts a gateway on `config` with `tokens` beside it and waits
    /// until it is ready.
    pub async fn start(config: &str, tokens: &str) -> Gw {
        let gw = Gw::start_unready(config, tokens).await;
        gw.wait_ready().await;
        gw
    }

    pub async fn start_unready(config: &str, tokens: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
        if !tokens.is_empty() {
            std::fs::write(dir.path().join("tokens.yaml"), tokens).unwrap();
        }
        let access = SharedSink::default();
        let launched = launch(&dir.path().join("gateway.yaml"), Box::new(access.clone()))
            .await
            .expect("gateway starts");
        Gw {
            launched,
            dir,
            access,
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if self.launched.gateway.is_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gateway not ready after 5 s");
    }

    pub fn addr(&self) -> SocketAddr {
        self.launched.data_addrs[0]
    }

    pub fn admin(&self) -> SocketAddr {
        self.launched.admin_addr.unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Captures the access log.
#[derive(Clone, Default)]
pub struct SharedSink(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedSink {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits for at least `n` lines and returns them parsed.
    pub async fn lines(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..300 {
            let lines: Vec<serde_json::Value> = self
                .text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} access-log lines: {}", self.text());
    }
}

/// A parsed response from the raw client.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// For hand-written upstreams: reads until `pending` holds a whole request
/// head, takes it out and returns it; `None` when the peer closed first.
/// Bytes after the head stay in `pending` (a pipelined request).
pub async fn read_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..i + 4]).into_owned();
            pending.drain(..i + 4);
            return Some(head);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` bytes exactly as given and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Reads one HTTP/1.1 response (Content-Length or close-delimited).
pub async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = buf[head_end..].to_vec();
    if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().unwrap();
        while body.len() < len {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    }
    Raw {
        status,
        headers,
        head,
        body,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` with extra header lines, over a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Raw {
    request(addr, "GET", path, headers, "").await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Raw {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes()).await
}

pub fn bearer(secret: &str) -> String {
    format!("Authorization: Bearer {secret}")
}

/// The standard setup: a recording upstream and a gateway in front.
pub async fn standard() -> (Upstream, Gw) {
    let up = Upstream::start().await;
    let gw = Gw::start(&gateway_yaml(up.addr, ""), &tokens_yaml()).await;
    (up, gw)
}

/// Replaces a file atomically (write beside, rename), as editors and
/// deploy tools do.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Asserts the contract's JSON refusal shape and returns the code.
pub fn assert_refusal(r: &Raw, status: u16, code: &str) {
    assert_eq!(r.status, status, "status of {}\n{}", code, r.head);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.head
    );
    let v = r.json();
    assert_eq!(v["error"], code, "{}", String::from_utf8_lossy(&r.body));
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(r.header("x-request-id").is_some());
}

/// A `tollgate serve` child process and the addresses it logged; killed on
/// drop.
pub struct Served {
    pub child: std::process::Child,
    /// The first data listener.
    pub addr: SocketAddr,
    /// The admin listener, if the config has one.
    pub admin: Option<SocketAddr>,
    /// Every line it has written to stderr (its log), as it comes.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real binary, `tollgate serve -c config`, and waits until it
/// logs its data address. The config must log JSON at level `info`.
pub fn serve_process(config: &Path) -> Served {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(["serve", "-c"]).arg(config);
    serve_command(command)
}

/// [`serve_process`] with its open-file limit (soft and hard) set to
/// `nofile` by the shell that starts it.
pub fn serve_process_with_nofile(config: &Path, nofile: u32) -> Served {
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" serve -c \"$1\""))
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .arg(config);
    serve_command(command)
}

fn serve_command(mut command: std::process::Command) -> Served {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, name: &str| -> Option<SocketAddr> {
        let i = line.find(name)? + name.len();
        let rest = &line[i..];
        rest[..rest.find('"')?].parse().ok()
    };
    let mut admin = None;
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!(
                "tollgate serve exited before logging its address:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        admin = admin.or_else(|| field(&line, "\"admin_addr\":\""));
        let addr = field(&line, "\"addr\":\"");
        log.lock().unwrap().push(line);
        if let Some(addr) = addr {
            break addr;
        }
    };
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Served {
        child,
        addr,
        admin,
        log,
    }
}

/// Tests that returned early because a server they need was not configured:
/// (test name, the variables it needed).
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The values of `vars` (e.g. `TOLLGATE_TEST_DATABASE_URL`), or `None` when
/// one is unset and the calling test should return early.
///
/// A skip is not silent: it is recorded, and when the test binary exits the
/// list of skipped tests and the variables they need go to stderr, after
/// libtest's own summary and past its output capture. Under CI (`CI` set and
/// not `false` or `0`) an unset variable fails the test instead, so a CI job
/// whose servers went missing cannot pass by skipping.
pub fn test_servers(vars: &[&str]) -> Option<Vec<String>> {
    let values: Vec<Option<String>> = vars
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    if values.iter().all(Option::is_some) {
        return Some(values.into_iter().flatten().collect());
    }
    let missing: Vec<&str> = vars
        .iter()
        .zip(&values)
        .filter(|(_, value)| value.is_none())
        .map(|(var, _)| *var)
        .collect();
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    assert!(!ci, "CI is set but {} is not", missing.join(" and "));
    let name = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    SKIPPED.lock().unwrap().push((name, missing.join(", ")));
    static REPORT: std::sync::Once = std::sync::Once::new();
    REPORT.call_once(|| {
        extern "C" {
            fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
        }
        // SAFETY: `atexit` only stores the pointer; the callback is a plain
        // function that touches nothing torn down before exit handlers run.
        unsafe {
            atexit(report_skipped);
        }
    });
    None
}

/// The exit handler `test_servers` registers: the skipped tests on stderr.
/// Written with `io::stderr()` directly, which libtest does not capture.
extern "C" fn report_skipped() {
    let skipped = match SKIPPED.lock() {
        Ok(list) => list.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if skipped.is_empty() {
        return;
    }
    let mut text = format!(
        "\n{} {} SKIPPED (returned early, counted as passed):\n",
        skipped.len(),
        if skipped.len() == 1 { "test" } else { "tests" }
    );
    let mut sorted = skipped;
    sorted.sort();
    for (name, vars) in &sorted {
        text.push_str(&format!("    {name}: needs {vars}\n"));
    }
    text.push_str(
        "Set TOLLGATE_TEST_DATABASE_URL (PostgreSQL) and TOLLGATE_TEST_REDIS_URL (Redis) \
         to run them, or run `bash .ci/run`.\n\n",
    );
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Answers 200 with a 1 GiB body, written for as long as the peer takes it;
/// `true` once the connection was closed under it.
pub async fn send_gigabyte(stream: &mut TcpStream) -> bool {
    let size = 1u64 << 30;
    let start = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
    if stream.write_all(start.as_bytes()).await.is_err() {
        return true;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        if stream.write_all(&chunk).await.is_err() {
            return true;
        }
        sent += chunk.len() as u64;
    }
    false
}
