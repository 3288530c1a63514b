//! The adversarial suite: one test per attack on the gateway's parsing,
//! over raw sockets, each asserting the gateway's answer and what the
//! upstream received (nothing, or exactly the safe bytes).
//!
//! Where hyper itself refuses a request before the gateway sees it (a bare
//! 400, 414 or 431, or a closed connection), that is accepted: what the
//! gateway guarantees is that such a request is never forwarded.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

mod credentials;
mod framing;
mod h2;
mod headers;
mod methods;
mod paths;
mod reloads;
mod resources;

// Helpers shared by the attack files.

/// The standard gateway with a failed-auth guard that does not trip within
/// one test (several tests send dozens of invalid tokens from 127.0.0.1),
/// and `top` (whole top-level sections) inserted into the config.
async fn setup_with(top: &str) -> (Upstream, Gw) {
    let up = Upstream::start().await;
    let config = gateway_yaml(up.addr, "").replace(
        "timeouts:",
        &format!(
            "limits:\n  failed_auth_per_ip: {{ requests: 1000, per: 1m, burst: 1000 }}\n{top}timeouts:"
        ),
    );
    let gw = Gw::start(&config, &tokens_yaml()).await;
    (up, gw)
}

async fn setup() -> (Upstream, Gw) {
    setup_with("").await
}

/// One request over a fresh connection that the client closes after it:
/// `METHOD TARGET HTTP/1.1`, `Host: gw.test`, `Connection: close`, the
/// given header lines, then `body` as is (the caller frames it).
fn close_req(method: &str, target: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// Writes `bytes` and reads until the gateway closes the connection or has
/// been quiet for `quiet`. Returns every response read (bodies delimited by
/// Content-Length) and whether the connection was closed.
async fn converse(stream: &mut TcpStream, bytes: &[u8], quiet: Duration) -> (Vec<Raw>, bool) {
    // The gateway may answer and close before reading everything; a failed
    // write is then part of the outcome, not a test failure.
    let _ = stream.write_all(bytes).await;
    read_all(stream, quiet).await
}

async fn read_all(stream: &mut TcpStream, quiet: Duration) -> (Vec<Raw>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    (parse_responses(&buf), closed)
}

/// Splits a byte stream into HTTP/1.1 responses.
fn parse_responses(mut buf: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a response head: {head:?}"));
        let mut headers = std::collections::HashMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let rest = &buf[end + 4..];
        let body = rest[..len.min(rest.len())].to_vec();
        buf = &rest[len.min(rest.len())..];
        out.push(Raw {
            status,
            headers,
            head,
            body,
        });
    }
    out
}

/// Sends one request over a fresh connection and returns the answer, or
/// `None` when the gateway closed the connection without one.
async fn try_send(gw: &Gw, bytes: &[u8]) -> Option<Raw> {
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut rs, _) = converse(&mut stream, bytes, Duration::from_secs(3)).await;
    (!rs.is_empty()).then(|| rs.remove(0))
}

/// Asserts that the gateway refused `bytes` with `status` and the contract's
/// JSON body `code`.
async fn assert_gateway_refuses(gw: &Gw, bytes: &[u8], status: u16, code: &str) {
    let r = raw(gw.addr(), bytes).await;
    assert_eq!(
        r.status,
        status,
        "{:?} gave {}",
        String::from_utf8_lossy(bytes),
        r.head
    );
    assert_refusal(&r, status, code);
}

/// Asserts that `bytes` got a 4xx (the gateway's or hyper's) or a closed
/// connection.
async fn assert_refused_somehow(gw: &Gw, bytes: &[u8], allowed: &[u16]) {
    if let Some(r) = try_send(gw, bytes).await {
        assert!(
            allowed.contains(&r.status),
            "{:?} gave {} (allowed {allowed:?})",
            String::from_utf8_lossy(bytes),
            r.head
        );
    }
}

fn assert_nothing_forwarded(up: &Upstream) {
    let seen = up.seen();
    assert!(seen.is_empty(), "the upstream received {seen:#?}");
}

fn targets(up: &Upstream) -> Vec<String> {
    up.seen().into_iter().map(|s| s.target).collect()
}

/// A request hidden after a body: without a credential, so the upstream
/// can only ever see it if some framing disagreement let it past the
/// gateway unjudged.
const SMUGGLED: &str = "GET /api/v1/admin/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";

/// A request hidden in a body with the admin token: it reaches the
/// upstream if the body is ever read as a request.
const SMUGGLED_ADMIN: &str = "GET /api/v1/admin/smuggled HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer admin-secret\r\n\r\n";

fn assert_never_smuggled(up: &Upstream) {
    for seen in up.seen() {
        assert!(
            !seen.target.contains("smuggled"),
            "the smuggled request reached the upstream: {seen:#?}"
        );
        let framed = [
            seen.headers.contains_key("content-length"),
            seen.headers.contains_key("transfer-encoding"),
        ];
        assert_ne!(framed, [true, true], "both framings forwarded: {seen:#?}");
    }
}
