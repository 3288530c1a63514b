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

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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

/// Asserts that the gateway refused `bytes` with `status` and the SPEC's
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

// ---------------------------------------------------------------------------
// Path tricks
// ---------------------------------------------------------------------------

/// Every target with the admin token (which may go anywhere), so only the
/// path rules can refuse it.
async fn assert_bad_paths(targets: &[&str]) {
    let (up, gw) = setup().await;
    for t in targets {
        let req = close_req("GET", t, &[&bearer(ADMIN)], "");
        assert_gateway_refuses(&gw, &req, 400, "bad_path").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn encoded_dots_and_slashes_in_mixed_case_are_bad_path() {
    assert_bad_paths(&[
        "/api/v1/%2e%2e/admin/x",
        "/api/v1/%2E%2E/admin/x",
        "/api/v1/%2e%2E/admin/x",
        "/api/v1/.%2E/admin/x",
        "/api/v1/%2E./admin/x",
        "/api/v1/%2e/admin/x",
        "/api/v1/x/%2E%2e",
        "/api/v1/a%2Fb",
        "/api/v1/a%2fb",
        "/api/v1/admin%2Fx",
    ])
    .await;
}

#[tokio::test]
async fn backslashes_raw_and_encoded_are_refused() {
    assert_bad_paths(&[
        "/api/v1/%5c..%5cadmin",
        "/api/v1/%5C..%5Cadmin",
        "/api/v1/x%5cy",
    ])
    .await;
    // A raw backslash: refused by the gateway, or by hyper before it.
    let (up, gw) = setup().await;
    for t in ["/api/v1\\..\\admin/x", "/api/v1/x\\y", "/api/v1\\admin"] {
        let req = close_req("GET", t, &[&bearer(ADMIN)], "");
        assert_refused_somehow(&gw, &req, &[400]).await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn double_encoding_is_forwarded_undecoded_within_the_matched_route() {
    let (up, gw) = setup().await;
    for t in [
        "/api/v1/%252e%252e/admin/x",
        "/api/v1/%252E%252E%252Fadmin",
        "/api/v1/%255c..%255cadmin",
        "/api/v1/%25%32%65%25%32%65/admin",
    ] {
        let r = raw(gw.addr(), &close_req("GET", t, &[&bearer(AGENT)], "")).await;
        assert_eq!(r.status, 200, "{t}: {}", r.head);
    }
    // Authorised by /api/v1 (agent's scope) and forwarded byte for byte,
    // `%25` and every other escape kept; only `%32` and `%65` (unreserved)
    // were decoded.
    assert_eq!(
        targets(&up),
        [
            "/api/v1/%252e%252e/admin/x",
            "/api/v1/%252E%252E%252Fadmin",
            "/api/v1/%255c..%255cadmin",
            "/api/v1/%252e%252e/admin",
        ]
    );
}

#[tokio::test]
async fn overlong_utf8_escapes_of_dots_and_slashes_are_bad_path() {
    assert_bad_paths(&[
        "/api/v1/%c0%ae%c0%ae/admin/x",
        "/api/v1/%C0%AE%C0%AE/admin/x",
        "/api/v1/%c0%af..%c0%afadmin",
        "/api/v1/%c1%9c",
        "/api/v1/%e0%80%ae%e0%80%ae/admin",
        "/api/v1/%f0%80%80%ae",
        "/api/v1/%f8%80%80%80%af",
        "/api/v1/%ff",
    ])
    .await;
}

#[tokio::test]
async fn fullwidth_dots_and_slashes_are_bad_path_but_other_fullwidth_characters_pass() {
    assert_bad_paths(&[
        "/api/v1/%ef%bc%8e%ef%bc%8e/admin/x",
        "/api/v1/%EF%BC%8E/x",
        "/api/v1/.%ef%bc%8e/admin",
        "/api/v1/%e2%80%a5/admin",
        "/api/v1/%ef%b9%92%ef%b9%92/admin",
        "/api/v1/x%ef%bc%8fadmin",
        "/api/v1/x%ef%bc%bcadmin",
        "/api/v1/x%ef%b9%a8admin",
    ])
    .await;
    let (up, gw) = setup().await;
    let t = "/api/v1/%ef%bc%a1%EF%BC%A2/%e2%80%a6/%e3%81%82";
    let r = raw(gw.addr(), &close_req("GET", t, &[&bearer(AGENT)], "")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(targets(&up), [t]);
}

#[tokio::test]
async fn path_parameters_are_bad_path_and_an_encoded_semicolon_is_kept() {
    assert_bad_paths(&[
        "/api/v1;x=1/admin/x",
        "/api/v1/..;/admin/x",
        "/api/v1/admin;/x",
        "/api/v1/x;jsessionid=0123",
        "/api/v1/;/x",
    ])
    .await;
    let (up, gw) = setup().await;
    let r = raw(
        gw.addr(),
        &close_req("GET", "/api/v1/x%3Bjsessionid=1", &[&bearer(AGENT)], ""),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(targets(&up), ["/api/v1/x%3Bjsessionid=1"]);
}

#[tokio::test]
async fn empty_segments_anywhere_are_bad_path() {
    assert_bad_paths(&[
        "//api/v1/x",
        "/api//v1/x",
        "/api/v1//admin/x",
        "/api/v1/x//",
        "///",
    ])
    .await;
}

#[tokio::test]
async fn fragments_are_never_forwarded() {
    let (up, gw) = setup().await;
    for t in [
        "/api/v1/x#/../admin",
        "/api/v1/x?q=1#frag",
        "/api/v1/x#%2e%2e/admin",
    ] {
        let req = close_req("GET", t, &[&bearer(AGENT)], "");
        if let Some(r) = try_send(&gw, &req).await {
            assert!(matches!(r.status, 200 | 400), "{t}: {}", r.head);
        }
    }
    for seen in targets(&up) {
        assert!(
            seen == "/api/v1/x" || seen == "/api/v1/x?q=1",
            "forwarded {seen:?}"
        );
    }
}

#[tokio::test]
async fn absolute_form_and_authority_form_targets_are_bad_path() {
    assert_bad_paths(&[
        "http://gw.test/api/v1/x",
        "http://evil.example/api/v1/admin/x",
        "https://127.0.0.1/api/v1/x",
        "HTTP://gw.test/api/v1/x",
        "gw.test:80",
        "127.0.0.1:8080",
    ])
    .await;
}

#[tokio::test]
async fn route_matching_is_case_sensitive_so_a_case_variant_falls_to_a_shorter_prefix() {
    let (up, gw) = setup().await;
    for t in ["/API/v1/x", "/api/V1/x", "/Api/v1/admin/x"] {
        let req = close_req("GET", t, &[&bearer(ADMIN)], "");
        assert_gateway_refuses(&gw, &req, 404, "no_route").await;
    }
    assert_nothing_forwarded(&up);
    // `/api/v1/ADMIN` is not `/api/v1/admin`: it is judged by `/api/v1`
    // and forwarded exactly as sent (SECURITY.md: case-insensitive
    // upstreams).
    let r = raw(
        gw.addr(),
        &close_req("GET", "/api/v1/ADMIN/x", &[&bearer(AGENT)], ""),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(targets(&up), ["/api/v1/ADMIN/x"]);
}

#[tokio::test]
async fn nul_control_and_raw_non_ascii_bytes_in_the_target_are_refused() {
    let (up, gw) = setup().await;
    let bearer = bearer(ADMIN);
    for target in [
        &b"/api/v1/\x00"[..],
        b"/api/v1/a\x00b",
        b"/api/v1/caf\xc3\xa9",
        b"/api/v1/\xff",
        b"/api/v1/\xc0\xae\xc0\xae/admin",
        b"/api/v1/\xef\xbc\x8e\xef\xbc\x8e/admin",
        b"/api/v1/a\x7fb",
        b"/api/v1/a\x01b",
        b"/api/v1/a\x1bb",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{bearer}\r\n\r\n")
                .as_bytes(),
        );
        assert_refused_somehow(&gw, &req, &[400]).await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn the_api_v1_prefix_cannot_be_left_through_encoded_separators_or_dots() {
    let (up, gw) = setup().await;
    for t in [
        "/api/v1%2f..%2fadmin/x",
        "/api/v1%2F..%2Fv1/admin",
        "/api/v1/..%2f",
        "/api/v1/..%2fadmin/x",
        "/api/v1/..%2Fv1/admin",
        "/api/v1%2F%2E%2E%2Fv1%2Fadmin",
        "/api/v1x/../v1/admin/x",
        "/api/v1/%2e%2e%2fadmin",
        "/api/v1/%2e%2e%5cadmin",
        "/api/v1/%c0%ae%c0%ae%c0%afadmin",
    ] {
        let req = close_req("GET", t, &[&bearer(AGENT)], "");
        assert_gateway_refuses(&gw, &req, 400, "bad_path").await;
    }
    assert_nothing_forwarded(&up);
    // And the one encoded spelling that means admin is judged as admin.
    let req = close_req("GET", "/api/v1/%61dmin/x", &[&bearer(AGENT)], "");
    assert_gateway_refuses(&gw, &req, 403, "insufficient_scope").await;
    assert_nothing_forwarded(&up);
}

// ---------------------------------------------------------------------------
// Method tricks
// ---------------------------------------------------------------------------

/// Sends `GET target` with `headers` as the read-only grafana token on
/// /api/v2 and anonymously on /api/v3: both must be refused as writing.
async fn assert_counts_as_writing(gw: &Gw, query: &str, headers: &[&str]) {
    let mut with_token = vec![bearer(GRAFANA)];
    with_token.extend(headers.iter().map(|h| h.to_string()));
    let with_token: Vec<&str> = with_token.iter().map(String::as_str).collect();
    let req = close_req("GET", &format!("/api/v2/x{query}"), &with_token, "");
    assert_gateway_refuses(gw, &req, 403, "read_only_token").await;
    let req = close_req("GET", &format!("/api/v3/x{query}"), headers, "");
    assert_gateway_refuses(gw, &req, 401, "missing_token").await;
}

#[tokio::test]
async fn method_override_headers_in_any_case_and_duplicated_count_as_writing() {
    let (up, gw) = setup().await;
    for headers in [
        &["X-HTTP-Method-Override: DELETE"][..],
        &["x-http-method-override: PUT"],
        &["X-HTTP-METHOD: PATCH"],
        &["x-http-method: POST"],
        &["X-Method-Override: DELETE"],
        &["x-METHOD-override: PROPPATCH"],
        &["X-HTTP-Method-Override: delete"],
        &["X-HTTP-Method-Override: get"],
        &["X-HTTP-Method-Override: GET, DELETE"],
        &[
            "X-HTTP-Method-Override: GET",
            "X-HTTP-Method-Override: DELETE",
        ],
        &["X-HTTP-Method-Override: GET", "x-http-method: PUT"],
        &["X-HTTP-Method-Override:"],
        &["X-HTTP-Method-Override: \"GET\""],
    ] {
        assert_counts_as_writing(&gw, "", headers).await;
    }
    assert_nothing_forwarded(&up);
    // Naming a read method is reading.
    let r = raw(
        gw.addr(),
        &close_req(
            "GET",
            "/api/v2/x",
            &[&bearer(GRAFANA), "X-HTTP-Method-Override: HEAD"],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn method_query_parameters_in_any_spelling_count_as_writing() {
    let (up, gw) = setup().await;
    for q in [
        "?_method=DELETE",
        "?%5Fmethod=PUT",
        "?%5fmethod=PUT",
        "?_%6Dethod=PATCH",
        "?_method=get",
        "?_method=%64elete",
        "?_METHOD=POST",
        "?a=1&_method=PATCH",
        "?a=1;_method=PATCH",
        "?_method=GET&_method=DELETE",
        "?_method[]=DELETE",
        "?_method",
        "?_method=",
        "?+_method=PUT",
        "?.method=PUT",
    ] {
        assert_counts_as_writing(&gw, q, &[]).await;
    }
    assert_nothing_forwarded(&up);
    // A read method, or a parameter that merely looks similar, passes, and
    // the query goes upstream byte for byte.
    for q in ["?_method=GET", "?_method=%47ET", "?x_method=DELETE"] {
        let r = raw(
            gw.addr(),
            &close_req("GET", &format!("/api/v2/x{q}"), &[&bearer(GRAFANA)], ""),
        )
        .await;
        assert_eq!(r.status, 200, "{q}");
    }
    assert_eq!(
        targets(&up),
        [
            "/api/v2/x?_method=GET",
            "/api/v2/x?_method=%47ET",
            "/api/v2/x?x_method=DELETE"
        ]
    );
}

#[tokio::test]
async fn lowercase_and_unknown_methods_count_as_writing() {
    let (up, gw) = setup().await;
    for m in ["get", "Get", "head", "options", "FOO", "PROPFIND", "GETS"] {
        let req = close_req(m, "/api/v2/x", &[&bearer(GRAFANA)], "");
        assert_gateway_refuses(&gw, &req, 403, "read_only_token").await;
        let req = close_req(m, "/api/v3/x", &[], "");
        assert_gateway_refuses(&gw, &req, 401, "missing_token").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn trace_is_405_for_every_token_and_route() {
    let (up, gw) = setup().await;
    for headers in [
        &[][..],
        &[bearer(ADMIN)],
        &[bearer(GRAFANA)],
        &["X-HTTP-Method-Override: GET".to_string()],
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        for path in ["/api/v3/x", "/api/v1/x", "/nothing"] {
            let req = close_req("TRACE", path, &headers, "");
            assert_gateway_refuses(&gw, &req, 405, "method_not_allowed").await;
        }
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn connect_in_any_form_is_405_and_opens_no_upstream_connection() {
    let (up, gw) = setup().await;
    let target = up.addr.to_string();
    for (t, headers) in [
        (target.as_str(), vec![bearer(ADMIN)]),
        (target.as_str(), vec![]),
        ("/api/v3/x", vec![]),
        ("/api/v1/x", vec![bearer(ADMIN)]),
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let req = close_req("CONNECT", t, &headers, "");
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let (rs, _) = converse(&mut stream, &req, Duration::from_millis(500)).await;
        assert_eq!(rs.len(), 1, "{t}: {rs:?}");
        assert_refusal(&rs[0], 405, "method_not_allowed");
        // Nothing was tunnelled: bytes after the refusal reach no one.
        let _ = stream
            .write_all(b"GET /api/v1/admin/x HTTP/1.1\r\n\r\n")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_nothing_forwarded(&up);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the upstream was connected to"
    );
}

#[tokio::test]
async fn http2_connect_and_extended_connect_are_refused_and_never_forwarded() {
    let (up, gw) = setup().await;
    // Plain CONNECT reaches the gateway and gets its 405. Extended CONNECT
    // (RFC 8441) is reset by h2 itself with PROTOCOL_ERROR: the gateway
    // never enables SETTINGS_ENABLE_CONNECT_PROTOCOL, so a `:protocol`
    // request never even becomes a request.
    type Fields = Vec<(&'static str, &'static str)>;
    let cases: [(&str, Fields, h2::Answer); 3] = [
        (
            "plain CONNECT",
            vec![(":method", "CONNECT"), (":authority", "127.0.0.1:1")],
            h2::Answer::Status(405),
        ),
        (
            "extended CONNECT, websocket",
            vec![
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", "/api/v3/x"),
                (":authority", "gw.test"),
                ("sec-websocket-version", "13"),
            ],
            h2::Answer::Reset,
        ),
        (
            "extended CONNECT with a token",
            vec![
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", "/api/v1/admin/x"),
                (":authority", "gw.test"),
                ("authorization", "Bearer admin-secret"),
            ],
            h2::Answer::Reset,
        ),
    ];
    for (what, fields, want) in cases {
        assert_eq!(h2::request(gw.addr(), &fields).await, want, "{what}");
    }
    assert_nothing_forwarded(&up);
    // The same raw client gets an ordinary answer to an ordinary request.
    let ok = h2::request(
        gw.addr(),
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/api/v3/x"),
            (":authority", "gw.test"),
        ],
    )
    .await;
    assert_eq!(ok, h2::Answer::Status(200));
}

#[tokio::test]
async fn http2_requests_meet_the_same_path_credential_and_header_rules() {
    let (up, gw) = setup().await;
    let base = |path: &'static str| {
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "gw.test"),
        ]
    };
    let with = |path: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut f = base(path);
        f.extend_from_slice(extra);
        f
    };
    let agent = ("authorization", "Bearer agent-secret");
    for (what, fields, want) in [
        (
            "encoded dot segment",
            with("/api/v1/%2e%2e/admin/x", &[agent]),
            h2::Answer::Status(400),
        ),
        (
            "overlong dots",
            with("/api/v1/%c0%ae%c0%ae/admin/x", &[agent]),
            h2::Answer::Status(400),
        ),
        (
            "absolute path in :path",
            with("http://evil.example/api/v1/x", &[agent]),
            h2::Answer::Reset,
        ),
        (
            "asterisk :path",
            with("*", &[agent]),
            h2::Answer::Status(400),
        ),
        (
            "two credentials",
            with("/api/v1/x", &[agent, ("xc-token", "agent-secret")]),
            h2::Answer::Status(400),
        ),
        (
            "no credential",
            base("/api/v1/admin/x"),
            h2::Answer::Status(401),
        ),
        (
            "a read-only token overriding the method",
            with(
                "/api/v2/x",
                &[
                    ("authorization", "Bearer grafana-secret"),
                    ("x-http-method-override", "DELETE"),
                ],
            ),
            h2::Answer::Status(403),
        ),
        // Connection-specific headers make an HTTP/2 request malformed (the
        // stream is reset); an upper-case name is a connection error.
        (
            "connection header",
            with("/api/v1/x", &[agent, ("connection", "x-tollgate-token-id")]),
            h2::Answer::Reset,
        ),
        (
            "transfer-encoding",
            with("/api/v1/x", &[agent, ("transfer-encoding", "chunked")]),
            h2::Answer::Reset,
        ),
        (
            "upper-case header name",
            with("/api/v1/x", &[agent, ("X-Tollgate-Token-Id", "admin")]),
            h2::Answer::GoAway,
        ),
    ] {
        assert_eq!(h2::request(gw.addr(), &fields).await, want, "{what}");
    }
    assert_nothing_forwarded(&up);

    // A header list over limits.max_header_bytes (16 KiB): 431 from h2,
    // never forwarded.
    let big = "a".repeat(20 * 1024);
    let mut fields = with("/api/v1/x", &[agent]);
    fields.push(("x-big", &big));
    let answer = h2::request(gw.addr(), &fields).await;
    assert!(
        matches!(answer, h2::Answer::Status(431) | h2::Answer::Reset),
        "{answer:?}"
    );
    assert_nothing_forwarded(&up);

    // Spoofed identity is replaced on HTTP/2 as on HTTP/1.1.
    let fields = with(
        "/api/v1/x",
        &[
            agent,
            ("x-tollgate-token-id", "admin"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-original-url", "/api/v1/admin/x"),
        ],
    );
    assert_eq!(
        h2::request(gw.addr(), &fields).await,
        h2::Answer::Status(200)
    );
    let seen = up.only();
    assert_eq!(seen.target, "/api/v1/x");
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gw.test"));
    assert_eq!(seen.header("x-original-url"), None);
}

#[tokio::test]
async fn http2_to_http1_injection_and_content_length_smuggling_never_reach_the_upstream() {
    let (up, gw) = setup().await;
    let agent = ("authorization", "Bearer agent-secret");
    let request = |method: &'static str, path: &'static str| {
        vec![
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "gw.test"),
        ]
    };
    // CR LF in a pseudo-header or a value would split the HTTP/1.1 request
    // the gateway writes upstream; h2 refuses them as malformed.
    for (what, mut fields) in [
        (
            "request line in :path",
            request(
                "GET",
                "/api/v1/x HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/admin/smuggled",
            ),
        ),
        (
            "request line in :method",
            request("GET /api/v1/admin/smuggled HTTP/1.1\r\nX: ", "/api/v1/x"),
        ),
        (
            "space in :path",
            request("GET", "/api/v1/x /api/v1/admin/smuggled"),
        ),
        ("header in a value", request("GET", "/api/v1/x")),
        ("header in :authority", request("GET", "/api/v1/x")),
    ] {
        fields.push(agent);
        match what {
            "header in a value" => fields.push((
                "x-foo",
                "bar\r\nAuthorization: Bearer admin-secret\r\nX-Tollgate-Token-Id: admin",
            )),
            "header in :authority" => {
                fields[3] = (":authority", "gw.test\r\nX-Tollgate-Token-Id: admin")
            }
            _ => {}
        }
        let answer = h2::request(gw.addr(), &fields).await;
        assert!(
            matches!(
                answer,
                h2::Answer::Reset | h2::Answer::GoAway | h2::Answer::Status(400)
            ),
            "{what}: {answer:?}"
        );
    }
    assert_nothing_forwarded(&up);

    // H2.CL: a declared length shorter or longer than the DATA sent. The
    // length travels upstream as Content-Length, so a body that disagreed
    // with it would be read there as the start of another request.
    let hidden = b"GET /api/v1/admin/smuggled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret\r\n\r\n";
    for declared in ["0", "5", "1000"] {
        let mut fields = request("POST", "/api/v1/x");
        fields.push(agent);
        fields.push(("content-length", declared));
        let answer = h2::request_with_body(gw.addr(), &fields, Some(hidden)).await;
        assert!(
            matches!(
                answer,
                h2::Answer::Reset | h2::Answer::GoAway | h2::Answer::Status(400 | 502)
            ),
            "content-length {declared}: {answer:?}"
        );
    }
    // Give an upstream that was sent anything time to record it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_never_smuggled(&up);
    for seen in up.seen() {
        assert!(seen.body.len() < hidden.len(), "{seen:?}");
    }
    // A body that matches its declared length goes through intact.
    up.clear();
    let mut fields = request("POST", "/api/v1/x");
    fields.push(agent);
    fields.push(("content-length", "5"));
    let answer = h2::request_with_body(gw.addr(), &fields, Some(b"hello")).await;
    assert_eq!(answer, h2::Answer::Status(200));
    assert_eq!(up.only().body, "hello");
}

#[tokio::test]
async fn a_body_on_get_is_never_written_past_its_framing_upstream() {
    let (up, gw) = setup().await;
    // A chunked body on GET, HEAD and OPTIONS hides a request with the
    // admin token. The gateway drops Transfer-Encoding and re-frames; were
    // the body written upstream after a GET without a length, the upstream
    // would read it as a second request. It goes upstream chunked, as the
    // body it is.
    let chunk = format!(
        "{:x}\r\n{SMUGGLED_ADMIN}\r\n0\r\n\r\n",
        SMUGGLED_ADMIN.len()
    );
    for method in ["GET", "HEAD", "OPTIONS", "DELETE"] {
        let req = format!(
            "{method} /api/v1/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}",
            bearer(AGENT)
        );
        let r = raw(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.status, 200, "{method}: {}", r.head);
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.method, method);
        assert_eq!(seen.body, SMUGGLED_ADMIN.as_bytes(), "{method}");
        // The same upstream connection then carries an ordinary request.
        let r = raw(
            gw.addr(),
            &close_req("GET", "/api/v1/after", &[&bearer(AGENT)], ""),
        )
        .await;
        assert_eq!(r.status, 200, "{method}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_never_smuggled(&up);
    assert_eq!(up.seen().len(), 8);
    // A GET without a body still goes without one.
    up.clear();
    let r = raw(
        gw.addr(),
        &close_req("GET", "/api/v1/x", &[&bearer(AGENT)], ""),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert!(seen.body.is_empty());
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_eq!(seen.header("content-length"), None);
}

#[tokio::test]
async fn websocket_upgrades_in_any_spelling_count_as_writing() {
    let (up, gw) = setup().await;
    for upgrade in [
        "Upgrade: websocket",
        "Upgrade: WebSocket",
        "upgrade: WEBSOCKET",
        "Upgrade: h2c, websocket",
        "Upgrade: websocket/13",
    ] {
        assert_counts_as_writing(
            &gw,
            "",
            &[
                "Connection: Upgrade",
                upgrade,
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
        )
        .await;
    }
    assert_nothing_forwarded(&up);
}

// ---------------------------------------------------------------------------
// Credential tricks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_authorization_headers_in_any_case_are_ambiguous() {
    let (up, gw) = setup().await;
    for headers in [
        &[
            "Authorization: Bearer agent-secret",
            "authorization: Bearer admin-secret",
        ][..],
        &[
            "Authorization: Bearer agent-secret",
            "AUTHORIZATION: Bearer agent-secret",
        ],
        &[
            "Authorization: Bearer agent-secret",
            "Authorization: Token x",
        ],
        &[
            "Authorization: Bearer nope",
            "Authorization: Bearer admin-secret",
        ],
        &["Authorization: Bearer", "Authorization: Bearer"],
    ] {
        let req = close_req("GET", "/api/v1/x", headers, "");
        assert_gateway_refuses(&gw, &req, 400, "ambiguous_credentials").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn authorization_and_a_token_header_together_are_ambiguous() {
    let (up, gw) = setup().await;
    for headers in [
        &[
            "Authorization: Bearer agent-secret",
            "xc-token: agent-secret",
        ][..],
        &[
            "Authorization: Bearer agent-secret",
            "XC-TOKEN: admin-secret",
        ],
        &["xc-token: agent-secret", "Xc-Token: agent-secret"],
        &["Authorization: Bearer ", "xc-token: admin-secret"],
    ] {
        let req = close_req("GET", "/api/v1/x", headers, "");
        assert_gateway_refuses(&gw, &req, 400, "ambiguous_credentials").await;
    }
    assert_nothing_forwarded(&up);
    // `Basic` is no credential, so beside a token header it is not
    // ambiguous; both are removed before forwarding.
    let req = close_req(
        "GET",
        "/api/v1/x",
        &[
            "Authorization: Basic dXNlcjpwYXNz",
            "xc-token: agent-secret",
        ],
        "",
    );
    assert_eq!(raw(gw.addr(), &req).await.status, 200);
    let seen = up.only();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("xc-token"), None);
}

#[tokio::test]
async fn comma_joined_bearer_values_are_one_invalid_token() {
    let (up, gw) = setup().await;
    for value in [
        "Bearer agent-secret, Bearer admin-secret",
        "Bearer agent-secret,Bearer admin-secret",
        "Bearer admin-secret, Basic x",
        "Bearer admin-secret admin-secret",
    ] {
        let req = close_req(
            "GET",
            "/api/v1/x",
            &[&format!("Authorization: {value}")],
            "",
        );
        assert_gateway_refuses(&gw, &req, 401, "invalid_token").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn bearer_with_tabs_and_runs_of_spaces_reads_the_token_after_them() {
    let (up, gw) = setup().await;
    for line in [
        "Authorization: Bearer  agent-secret",
        "Authorization: Bearer\tagent-secret",
        "Authorization: Bearer \t \tagent-secret",
        "Authorization:\t Bearer agent-secret",
        "Authorization: Bearer agent-secret \t ",
    ] {
        let r = raw(gw.addr(), &close_req("GET", "/api/v1/x", &[line], "")).await;
        assert_eq!(r.status, 200, "{line:?}: {}", r.head);
    }
    for seen in up.seen() {
        assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
        assert_eq!(seen.header("authorization"), None);
    }
    // Whitespace inside the token is part of it.
    let req = close_req(
        "GET",
        "/api/v1/x",
        &["Authorization: Bearer agent -secret"],
        "",
    );
    assert_gateway_refuses(&gw, &req, 401, "invalid_token").await;
}

#[tokio::test]
async fn schemes_are_case_insensitive_and_other_schemes_are_no_credential() {
    let (up, gw) = setup().await;
    for scheme in ["bearer", "BEARER", "BeArEr", "token", "TOKEN"] {
        let line = format!("Authorization: {scheme} agent-secret");
        let r = raw(gw.addr(), &close_req("GET", "/api/v1/x", &[&line], "")).await;
        assert_eq!(r.status, 200, "{line}");
    }
    assert_eq!(up.seen().len(), 5);
    up.clear();
    for line in [
        "Authorization: Bearer:agent-secret",
        "Authorization: Bearer=agent-secret",
        "Authorization: Bearer-agent-secret",
        "Authorization: Basic agent-secret",
        "Authorization: agent-secret",
    ] {
        let req = close_req("GET", "/api/v1/x", &[line], "");
        assert_gateway_refuses(&gw, &req, 401, "missing_token").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn an_underscored_token_header_is_dropped_and_never_a_credential() {
    let (up, gw) = setup().await;
    for line in ["xc_token: admin-secret", "XC_TOKEN: admin-secret"] {
        let req = close_req("GET", "/api/v1/x", &[line], "");
        assert_gateway_refuses(&gw, &req, 401, "missing_token").await;
        // On an anonymous route it passes as anonymous, without the header.
        let r = raw(gw.addr(), &close_req("GET", "/api/v3/x", &[line], "")).await;
        assert_eq!(r.status, 200);
    }
    for seen in up.seen() {
        assert_eq!(seen.header("x-tollgate-token-id"), None);
        assert_eq!(seen.header("xc_token"), None);
        assert_eq!(seen.header("xc-token"), None);
    }
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn tokens_in_the_query_string_do_not_authenticate_and_pass_through_untouched() {
    let (up, gw) = setup().await;
    for q in [
        "?token=agent-secret",
        "?access_token=agent-secret",
        "?xc-token=agent-secret",
        "?Authorization=Bearer%20agent-secret",
    ] {
        let req = close_req("GET", &format!("/api/v1/x{q}"), &[], "");
        assert_gateway_refuses(&gw, &req, 401, "missing_token").await;
    }
    assert_nothing_forwarded(&up);
    let t = "/api/v3/x?access_token=admin-secret&token=admin-secret";
    let r = raw(gw.addr(), &close_req("GET", t, &[], "")).await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.target, t);
    assert_eq!(seen.header("x-tollgate-token-id"), None);
    // The access log records the path without the query.
    let lines = gw.access.lines(5).await;
    assert!(!gw.access.text().contains("admin-secret"), "{lines:?}");
}

#[tokio::test]
async fn a_64_kib_token_is_refused_without_a_crash_and_never_forwarded() {
    let (up, gw) = setup().await;
    let huge = "A".repeat(64 * 1024);
    for line in [
        format!("Authorization: Bearer {huge}"),
        format!("xc-token: {huge}"),
    ] {
        let req = close_req("GET", "/api/v1/x", &[&line], "");
        assert_refused_somehow(&gw, &req, &[401, 431]).await;
    }
    assert_nothing_forwarded(&up);
    // The gateway is still there.
    let r = raw(
        gw.addr(),
        &close_req("GET", "/api/v1/x", &[&bearer(AGENT)], ""),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tg_tokens_with_bad_checksums_are_invalid_even_when_their_hash_is_known() {
    let up = Upstream::start().await;
    let good = tollgate::tokens::secret::generate();
    // A secret with a wrong checksum whose hash is nevertheless in the
    // index: refused without a lookup.
    let mut mistyped = good.clone().into_bytes();
    let last = mistyped.len() - 1;
    mistyped[last] = if mistyped[last] == b'0' { b'1' } else { b'0' };
    let mistyped = String::from_utf8(mistyped).unwrap();
    let tokens = format!(
        "{}  - id: generated\n    sha256: {}\n    scopes: [scope:all]\n  - id: mistyped\n    sha256: {}\n    scopes: [scope:all]\n",
        tokens_yaml(),
        sha(&good),
        sha(&mistyped),
    );
    let config = gateway_yaml(up.addr, "").replace(
        "timeouts:",
        "limits:\n  failed_auth_per_ip: { requests: 1000, per: 1m, burst: 1000 }\ntimeouts:",
    );
    let gw = Gw::start(&config, &tokens).await;
    let r = raw(
        gw.addr(),
        &close_req("GET", "/api/v1/x", &[&bearer(&good)], ""),
    )
    .await;
    assert_eq!(r.status, 200);
    up.clear();

    let mut variants = vec![mistyped.clone()];
    // Every single-character change of the random part breaks the checksum.
    for i in [3, 10, 34] {
        let mut b = good.clone().into_bytes();
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        variants.push(String::from_utf8(b).unwrap());
    }
    variants.push(good.to_ascii_uppercase());
    variants.push(format!("{}x", &good[..good.len() - 1]).replace("tg_", "TG_"));
    variants.push(good[..good.len() - 1].to_string());
    variants.push(format!("{good}0"));
    for v in &variants {
        if v == &good {
            continue;
        }
        let req = close_req("GET", "/api/v1/x", &[&bearer(v)], "");
        assert_gateway_refuses(&gw, &req, 401, "invalid_token").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn empty_and_whitespace_only_credentials_are_invalid() {
    let (up, gw) = setup().await;
    for line in [
        "Authorization: Bearer",
        "Authorization: Bearer   ",
        "Authorization: bearer\t",
        "xc-token:",
        "xc-token:    ",
    ] {
        let req = close_req("GET", "/api/v3/x", &[line], "");
        assert_gateway_refuses(&gw, &req, 401, "invalid_token").await;
    }
    assert_nothing_forwarded(&up);
}

// ---------------------------------------------------------------------------
// Header tricks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn spoofed_identity_headers_in_every_spelling_are_replaced() {
    let (up, gw) = setup().await;
    let spoofs = [
        "X-Tollgate-Token-Id: admin",
        "x-tollgate-token-id: admin",
        "X-TOLLGATE-TOKEN-ID: admin",
        "X-Tollgate-Scopes: scope:all",
        "X-TOLLGATE-SCOPES: scope:all",
        "x-tollgate-scopes: scope:admin",
        "X-Tollgate-Anything: 1",
        "X_Tollgate_Token_Id: admin",
    ];
    let mut headers = vec![bearer(AGENT)];
    headers.extend(spoofs.iter().map(|s| s.to_string()));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let r = raw(gw.addr(), &close_req("GET", "/api/v1/x", &headers, "")).await;
    assert_eq!(r.status, 200);
    // Anonymous: no identity at all.
    let r = raw(gw.addr(), &close_req("GET", "/api/v3/x", &spoofs, "")).await;
    assert_eq!(r.status, 200);
    let seen = up.seen();
    let values = |s: &Seen, n: &str| -> Vec<String> {
        s.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(values(&seen[0], "x-tollgate-token-id"), ["agent"]);
    assert_eq!(values(&seen[0], "x-tollgate-scopes"), ["scope:agent-ui"]);
    assert!(values(&seen[1], "x-tollgate-token-id").is_empty());
    assert!(values(&seen[1], "x-tollgate-scopes").is_empty());
    for s in &seen {
        assert!(values(s, "x-tollgate-anything").is_empty());
        assert!(values(s, "x_tollgate_token_id").is_empty());
    }
}

#[tokio::test]
async fn spoofed_forwarding_headers_in_every_spelling_are_replaced() {
    let (up, gw) = setup().await;
    let r = raw(
        gw.addr(),
        &close_req(
            "GET",
            "/api/v1/x",
            &[
                &bearer(AGENT),
                "X-Forwarded-For: 10.9.9.9",
                "x-forwarded-for: 10.9.9.8",
                "X-FORWARDED-HOST: evil.example",
                "X-Forwarded-Proto: https",
                "X-Forwarded-Port: 443",
                "X-Forwarded-Prefix: /admin",
                "Forwarded: for=10.9.9.9;proto=https",
                "FORWARDED: for=10.9.9.9",
                "X-Real-IP: 10.9.9.9",
                "x-real-ip: 10.9.9.9",
                "X_Forwarded_For: 10.9.9.9",
            ],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gw.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    for gone in [
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x_forwarded_for",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} was forwarded");
    }
    // An address spoofed through X-Forwarded-For does not unlock a token
    // bound to it (the peer is not a trusted proxy).
    let req = close_req(
        "GET",
        "/api/v1/x",
        &[&bearer(IPBOUND), "X-Forwarded-For: 10.9.9.9"],
        "",
    );
    assert_gateway_refuses(&gw, &req, 403, "ip_not_allowed").await;
}

#[tokio::test]
async fn connection_cannot_nominate_identity_or_framing_headers_away() {
    let (up, gw) = setup().await;
    let r = raw(
        gw.addr(),
        &close_req(
            "POST",
            "/api/v1/x",
            &[
                &bearer(AGENT),
                "Connection: X-Tollgate-Token-Id, Content-Length, Host",
                "Connection: X-Forwarded-For, X-Request-Id, X-Tollgate-Scopes",
                "Connection: Transfer-Encoding, Authorization, X-Custom",
                "X-Custom: nominated",
                "X-Request-Id: my-request-1",
                "Content-Length: 5",
            ],
            "hello",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.only();
    assert_eq!(seen.body, "hello");
    assert_eq!(seen.header("content-length"), Some("5"));
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("x-tollgate-scopes"), Some("scope:agent-ui"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-request-id"), Some("my-request-1"));
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("x-custom"), None);
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("connection"), None);
}

#[tokio::test]
async fn url_override_headers_never_reach_the_upstream_even_from_a_trusted_proxy() {
    let overrides = [
        "X-Original-URL: /api/v1/admin/x",
        "x-original-url: /api/v1/admin/x",
        "X-Original-URI: /api/v1/admin/x",
        "X-Rewrite-URL: /api/v1/admin/x",
        "X-Forwarded-Prefix: /api/v1/admin",
        "X-Forwarded-Uri: /api/v1/admin/x",
        "X-Forwarded-Path: /api/v1/admin/x",
    ];
    for trusted in [false, true] {
        let top = if trusted {
            "client_ip:\n  trusted_proxies: [127.0.0.1]\n"
        } else {
            ""
        };
        let (up, gw) = setup_with(top).await;
        let mut headers = vec![bearer(AGENT)];
        headers.extend(overrides.iter().map(|s| s.to_string()));
        headers.push("X-Forwarded-Proto: https".into());
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let r = raw(gw.addr(), &close_req("GET", "/api/v1/x", &headers, "")).await;
        assert_eq!(r.status, 200);
        let seen = up.only();
        assert_eq!(seen.target, "/api/v1/x");
        for name in [
            "x-original-url",
            "x-original-uri",
            "x-rewrite-url",
            "x-forwarded-prefix",
            "x-forwarded-uri",
            "x-forwarded-path",
        ] {
            assert_eq!(seen.header(name), None, "{name} (trusted={trusted})");
        }
        // A trusted proxy's ordinary forwarding headers are kept.
        let proto = if trusted { "https" } else { "http" };
        assert_eq!(seen.header("x-forwarded-proto"), Some(proto));
    }
}

#[tokio::test]
async fn host_games_never_reach_x_forwarded_host_and_never_pick_the_upstream() {
    let (up, gw) = setup().await;
    let cases: [&[u8]; 6] = [
        b"GET /api/v1/x HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\n",
        b"GET /api/v1/x HTTP/1.1\r\nHost: evil.example/api/v1/admin\r\n",
        b"GET /api/v1/x HTTP/1.1\r\nHost: user@evil.example\r\n",
        b"GET /api/v1/x HTTP/1.1\r\nHost: evil.example?x=1\r\n",
        b"GET /api/v1/x HTTP/1.1\r\nHost: \r\n",
        b"GET /api/v1/x HTTP/1.1\r\n",
    ];
    for head in cases {
        let mut req = head.to_vec();
        req.extend_from_slice(format!("Connection: close\r\n{}\r\n\r\n", bearer(AGENT)).as_bytes());
        if let Some(r) = try_send(&gw, &req).await {
            assert!(matches!(r.status, 200 | 400), "{}", r.head);
        }
    }
    for seen in up.seen() {
        assert_eq!(seen.target, "/api/v1/x");
        assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
        assert_eq!(seen.header("x-forwarded-host"), None);
    }
    // An absolute URI naming another host is not origin form.
    let req =
        b"GET http://evil.example/api/v1/admin/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    assert_gateway_refuses(&gw, req, 400, "bad_path").await;
    assert!(up.seen().len() <= cases.len());
}

#[tokio::test]
async fn malformed_header_lines_are_refused_before_judging() {
    let (up, gw) = setup().await;
    for head in [
        // Whitespace between the name and the colon (a classic smuggling
        // disagreement).
        &b"X-Tollgate-Token-Id : admin\r\n"[..],
        b"Authorization : Bearer admin-secret\r\n",
        // Obsolete line folding.
        b"X-Foo: a\r\n X-Tollgate-Token-Id: admin\r\n",
        b"X-Foo: a\r\n\tAuthorization: Bearer admin-secret\r\n",
        // A bare LF or CR inside the head.
        b"X-Foo: a\rAuthorization: Bearer admin-secret\r\n",
        b"X-Foo: a\x00b\r\n",
        // No colon at all.
        b"Authorization Bearer admin-secret\r\n",
    ] {
        let mut req =
            b"GET /api/v1/admin/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n".to_vec();
        req.extend_from_slice(head);
        req.extend_from_slice(b"\r\n");
        assert_refused_somehow(&gw, &req, &[400, 401]).await;
    }
    assert_nothing_forwarded(&up);
}

// ---------------------------------------------------------------------------
// Framing and smuggling
// ---------------------------------------------------------------------------

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

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_read_as_chunked_and_nothing_is_smuggled() {
    let (up, gw) = setup().await;
    let chunked = format!("0\r\n\r\n{SMUGGLED}");
    for headers in [
        ["Content-Length: 4", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 4"],
        ["Content-Length: 200", "Transfer-Encoding: chunked"],
    ] {
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let mut req = format!(
            "POST /api/v1/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\n",
            bearer(AGENT)
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&chunked);
        let (rs, _) = converse(&mut stream, req.as_bytes(), Duration::from_secs(1)).await;
        assert!(!rs.is_empty(), "{headers:?}: no answer");
        assert!(
            matches!(rs[0].status, 200 | 400),
            "{headers:?}: {}",
            rs[0].head
        );
        // Whatever follows the chunked body is never answered as a request
        // with the admin token (the connection is closed after a message
        // with both framings).
        assert!(rs.iter().skip(1).all(|r| r.status != 200), "{rs:?}");
    }
    assert_never_smuggled(&up);
    for seen in up.seen() {
        assert!(seen.body.is_empty(), "{seen:?}");
    }
}

#[tokio::test]
async fn duplicate_or_malformed_content_length_is_refused() {
    let (up, gw) = setup().await;
    for cl in [
        "Content-Length: 5, 6",
        "Content-Length: 5, 5",
        "Content-Length: +5",
        "Content-Length: -1",
        "Content-Length: 5 5",
        "Content-Length: 0x5",
        "Content-Length: 5.0",
        "Content-Length: 99999999999999999999999",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length:",
    ] {
        let req = close_req("POST", "/api/v1/x", &[&bearer(AGENT), cl], "hello");
        assert_refused_somehow(&gw, &req, &[400]).await;
    }
    assert_nothing_forwarded(&up);
    // Two equal lines are one length, forwarded once.
    let req = close_req(
        "POST",
        "/api/v1/x",
        &[&bearer(AGENT), "Content-Length: 5", "Content-Length: 5"],
        "hello",
    );
    assert_eq!(raw(gw.addr(), &req).await.status, 200);
    let seen = up.only();
    assert_eq!(seen.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(seen.body, "hello");
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused_or_decoded_as_chunked() {
    /// What the gateway may do with the message.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Read {
        /// Refused: 4xx or a closed connection, nothing forwarded.
        Refused,
        /// Decoded as chunked: the upstream gets exactly `hello`.
        Chunked,
        /// Not a transfer coding at all (an underscored name is dropped):
        /// no body; the chunked bytes are then a malformed next request.
        NoBody,
    }
    use Read::*;
    let (up, gw) = setup().await;
    let body = format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
    for (te, want) in [
        ("Transfer-Encoding: chunked, identity", Refused),
        ("Transfer-Encoding: xchunked", Refused),
        ("Transfer-Encoding: chunkedx", Refused),
        ("Transfer-Encoding: identity", Refused),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
            Refused,
        ),
        ("Transfer-Encoding: \"chunked\"", Refused),
        ("Transfer-Encoding: chunked;q=1", Refused),
        ("Transfer-Encoding:\x0bchunked", Refused),
        ("Transfer-Encoding : chunked", Refused),
        (
            "Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
            Chunked,
        ),
        ("Transfer-Encoding:  chunked", Chunked),
        ("Transfer-Encoding:\tchunked", Chunked),
        ("Transfer-Encoding: CHUNKED", Chunked),
        ("Transfer-Encoding: gzip, chunked", Chunked),
        ("Transfer_Encoding: chunked", NoBody),
    ] {
        up.clear();
        let req = format!(
            "POST /api/v1/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\n{te}\r\n\r\n{body}",
            bearer(AGENT)
        );
        let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
        let (rs, _) = converse(&mut stream, req.as_bytes(), Duration::from_secs(1)).await;
        assert_never_smuggled(&up);
        let got = match rs.first() {
            Some(r) if r.status == 200 => {
                if up.only().body.is_empty() {
                    NoBody
                } else {
                    assert_eq!(up.only().body, "hello", "{te:?}");
                    Chunked
                }
            }
            Some(r) => {
                assert!(matches!(r.status, 400 | 411 | 501), "{te:?}: {}", r.head);
                Refused
            }
            None => Refused,
        };
        assert_eq!(got, want, "{te:?}");
        if got == Refused {
            assert_nothing_forwarded(&up);
        }
        // Whatever follows is judged as a request of its own (and the
        // hidden one has no credential).
        assert!(rs.iter().skip(1).all(|r| r.status != 200), "{te:?}: {rs:?}");
    }
}

#[tokio::test]
async fn chunked_on_http_1_0_is_refused() {
    let (up, gw) = setup().await;
    let req = format!(
        "POST /api/v1/x HTTP/1.0\r\nHost: gw.test\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}",
        bearer(AGENT)
    );
    assert_refused_somehow(&gw, req.as_bytes(), &[400]).await;
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn an_unread_body_after_a_401_is_never_parsed_as_a_request() {
    let (up, gw) = setup().await;
    // The refused request's body is a complete request with the admin
    // token; a pipelined request follows it.
    let req = format!(
        "POST /api/v1/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{SMUGGLED_ADMIN}GET /api/v1/after HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        SMUGGLED_ADMIN.len()
    );
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (rs, _) = converse(&mut stream, req.as_bytes(), Duration::from_secs(1)).await;
    assert_refusal(&rs[0], 401, "missing_token");
    // The request after the body is judged on its own: no token, 401.
    for r in &rs[1..] {
        assert_refusal(r, 401, "missing_token");
    }
    assert!(rs.len() <= 2, "{rs:?}");
    assert_nothing_forwarded(&up);

    // The same with a body that has not fully arrived: the connection is
    // closed rather than waiting to skip it, so the rest is never read.
    let head = format!(
        "POST /api/v1/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\nGET /api",
        SMUGGLED_ADMIN.len() + 100
    );
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (rs, _) = converse(&mut stream, head.as_bytes(), Duration::from_millis(500)).await;
    assert_refusal(&rs[0], 401, "missing_token");
    let _ = stream.write_all(SMUGGLED_ADMIN.as_bytes()).await;
    let (rs, _) = read_all(&mut stream, Duration::from_millis(500)).await;
    assert!(rs.is_empty(), "{rs:?}");
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn pipelined_requests_are_each_judged_on_their_own() {
    let (up, gw) = setup().await;
    let agent = bearer(AGENT);
    let req = format!(
        "GET /api/v1/one HTTP/1.1\r\nHost: gw.test\r\n{agent}\r\n\r\n\
         GET /api/v1/admin/two HTTP/1.1\r\nHost: gw.test\r\n\r\n\
         GET /api/v1/admin/three HTTP/1.1\r\nHost: gw.test\r\n{agent}\r\n\r\n\
         GET /api/v1/%2e%2e/four HTTP/1.1\r\nHost: gw.test\r\n{agent}\r\n\r\n\
         POST /api/v2/five HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer grafana-secret\r\nContent-Length: 0\r\n\r\n\
         GET /api/v1/six HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{agent}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (rs, closed) = converse(&mut stream, req.as_bytes(), Duration::from_secs(2)).await;
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 403, 400, 403, 200]);
    assert!(closed);
    assert_eq!(targets(&up), ["/api/v1/one", "/api/v1/six"]);
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_leaves_the_connection_judged_as_http() {
    let (up, gw) = setup().await;
    // The upstream answers 200, not 101: nothing is tunnelled, and the next
    // bytes on the connection are a request like any other.
    let req = format!(
        "GET /api/v1/ws HTTP/1.1\r\nHost: gw.test\r\n{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        bearer(ADMIN)
    );
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (rs, closed) = converse(&mut stream, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].status, 200);
    assert_eq!(rs[0].header("upgrade"), None);
    if !closed {
        let (rs, _) = converse(
            &mut stream,
            b"GET /api/v1/admin/x HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            Duration::from_millis(500),
        )
        .await;
        for r in rs {
            assert_refusal(&r, 401, "missing_token");
        }
    }
    assert_eq!(targets(&up), ["/api/v1/ws"]);

    // `Upgrade: h2c` is never forwarded and never switched to.
    up.clear();
    let req = close_req(
        "GET",
        "/api/v1/x",
        &[
            &bearer(AGENT),
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
        ],
        "",
    );
    let r = raw(gw.addr(), &req).await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
}

// ---------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_70_kib_header_in_one_line_or_many_is_431_and_never_forwarded() {
    let (up, gw) = setup().await;
    let one = format!("X-Big: {}", "a".repeat(70 * 1024));
    let many: Vec<String> = (0..70)
        .map(|i| format!("X-Part-{i}: {}", "b".repeat(1000)))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for headers in [vec![one.as_str()], many] {
        let mut h = vec![bearer(AGENT)];
        h.extend(headers.iter().map(|s| s.to_string()));
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        assert_refused_somehow(&gw, &close_req("GET", "/api/v1/x", &h, ""), &[431]).await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn more_than_100_headers_are_refused() {
    let (up, gw) = setup().await;
    let lines: Vec<String> = (0..120).map(|i| format!("X-H{i}: 1")).collect();
    let mut h = vec![bearer(AGENT)];
    h.extend(lines);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    assert_refused_somehow(&gw, &close_req("GET", "/api/v1/x", &h, ""), &[431, 400]).await;
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn a_16_kib_uri_is_refused_and_an_8_kib_one_is_414() {
    let (up, gw) = setup().await;
    let long = format!("/api/v1/{}", "a".repeat(16 * 1024));
    let req = close_req("GET", &long, &[&bearer(AGENT)], "");
    assert_refused_somehow(&gw, &req, &[414, 431]).await;
    let long = format!("/api/v1/x?{}", "q".repeat(8 * 1024));
    let req = close_req("GET", &long, &[&bearer(AGENT)], "");
    assert_gateway_refuses(&gw, &req, 414, "uri_too_long").await;
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn slowloris_headers_trickled_byte_by_byte_are_cut_off_at_header_read() {
    let (up, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\nX-Slow: {}\r\n\r\n",
        bearer(AGENT),
        "z".repeat(200)
    );
    let started = Instant::now();
    // One byte every 20 ms: the head would take over 5 s; header_read is 1 s.
    let mut cut_off = false;
    for b in head.as_bytes() {
        if stream.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => {
                let s = String::from_utf8_lossy(&buf[..n]);
                assert!(s.starts_with("HTTP/1.1 408"), "{s}");
                cut_off = true;
                break;
            }
        }
    }
    assert!(cut_off, "the whole head was accepted");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "cut off only after {took:?}"
    );
    assert_nothing_forwarded(&up);
}

/// A GET on `/api/v1/x` that leaves the connection open.
fn kept_alive_get() -> String {
    format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\n\r\n",
        bearer(AGENT)
    )
}

/// Asserts the gateway closed the connection within `window` of `started`.
fn assert_closed_within(started: Instant, window: std::ops::Range<Duration>) {
    let took = started.elapsed();
    assert!(window.contains(&took), "closed after {took:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_header_read_and_closes_at_idle() {
    let (up, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let req = kept_alive_get();
    // header_read is 1 s and idle 2 s in the test config: 1.5 s of
    // silence between requests is idleness, not a slow head.
    let (rs, closed) = converse(&mut stream, req.as_bytes(), Duration::from_millis(1500)).await;
    assert_eq!((rs.len(), rs[0].status, closed), (1, 200, false));
    let started = Instant::now();
    let (rs, closed) = converse(&mut stream, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rs.len(), 1, "the connection was closed while idle");
    assert_eq!(rs[0].status, 200);
    assert!(closed, "an idle connection was kept open");
    assert_closed_within(
        started,
        Duration::from_millis(1800)..Duration::from_millis(3500),
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_head_begun_after_an_idle_wait_must_be_whole_within_header_read() {
    let (up, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let req = kept_alive_get();
    let (rs, _) = converse(&mut stream, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(rs.len(), 1);
    // Half a head after 0.5 s idle, then silence: cut off at header_read
    // (1 s) from its first byte, sooner than the idle limit (2 s).
    let started = Instant::now();
    let (rs, closed) = converse(
        &mut stream,
        b"GET /api/v1/y HTTP/1.1\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a half head was waited for past header_read");
    assert!(rs.iter().all(|r| r.status == 408), "{rs:?}");
    assert_closed_within(
        started,
        Duration::from_millis(800)..Duration::from_millis(1800),
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_slow_body_is_bounded_by_the_upstream_response_timeout() {
    let (up, gw) = setup().await;
    // /slow has upstream_response_timeout: 300ms; the upstream waits for
    // the whole body before it answers, so the gateway's wait for the
    // response head bounds a body that never completes.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /slow/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\nContent-Length: 1000\r\n\r\n0123456789",
        bearer(ADMIN)
    );
    let started = Instant::now();
    let (rs, _) = converse(&mut stream, head.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_refusal(&rs[0], 504, "gateway_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The upstream never got a whole request.
    assert_nothing_forwarded(&up);

    // A refused request's slow body does not hold the connection open.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    let (rs, closed) = converse(
        &mut stream,
        b"POST /api/v1/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\n0123456789",
        Duration::from_secs(3),
    )
    .await;
    assert_refusal(&rs[0], 401, "missing_token");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413_whether_declared_or_chunked() {
    let (up, gw) = setup().await;
    // Declared: refused before anything is forwarded, however large.
    let declared = |cl: &str| {
        format!(
            "POST /small/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nContent-Length: {cl}\r\n\r\n0123456789A",
            bearer(ADMIN)
        )
    };
    for cl in ["11", "1000000000000", "18446744073709551613"] {
        let req = declared(cl);
        assert_gateway_refuses(&gw, req.as_bytes(), 413, "body_too_large").await;
    }
    // Lengths hyper cannot represent are refused by hyper (431).
    for cl in ["18446744073709551614", "18446744073709551615"] {
        assert_refused_somehow(&gw, declared(cl).as_bytes(), &[400, 413, 431]).await;
    }
    assert_nothing_forwarded(&up);
    // Chunked: cut off once past the limit; the upstream never gets a
    // complete request with more than the limit.
    for chunks in [
        "b\r\n0123456789A\r\n0\r\n\r\n",
        "5\r\n01234\r\n5\r\n56789\r\n1\r\nA\r\n0\r\n\r\n",
        "5;ext=1\r\n01234\r\n7;x=\"y\"\r\n56789AB\r\n0\r\n\r\n",
    ] {
        let req = format!(
            "POST /small/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}",
            bearer(ADMIN)
        );
        assert_gateway_refuses(&gw, req.as_bytes(), 413, "body_too_large").await;
    }
    // A chunk size that overflows is a framing error, never a body.
    let req = format!(
        "POST /small/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        bearer(ADMIN)
    );
    if let Some(r) = try_send(&gw, req.as_bytes()).await {
        assert!(matches!(r.status, 400 | 413 | 502), "{}", r.head);
    }
    assert!(
        up.seen().iter().all(|s| s.body.len() <= 10),
        "{:?}",
        up.seen()
    );
}

// ---------------------------------------------------------------------------
// Hostile configuration on reload
// ---------------------------------------------------------------------------

/// A billion-laughs alias bomb: nine levels of ten aliases each.
fn alias_bomb() -> String {
    let mut s = String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let prev = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev}]\n"
        ));
    }
    s
}

/// Hostile variants of a working config, each named.
fn hostile_configs(good: &str) -> Vec<(&'static str, String)> {
    vec![
        ("alias bomb", format!("{good}{}", alias_bomb())),
        (
            "alias bomb inside a route",
            good.replace(
                "scopes: [scope:agent-ui]",
                "scopes: &s [scope:agent-ui]\n    description: [*s, *s, *s]",
            ),
        ),
        (
            "merge key",
            good.replace(
                "  - prefix: /api/v2\n",
                "  - &r { prefix: /api/x, upstream: http://127.0.0.1:1, scopes: [a] }\n  - <<: *r\n    prefix: /api/v2\n",
            ),
        ),
        ("deep flow nesting", format!("{good}x: {}\n", "[".repeat(100_000))),
        (
            "deep block nesting",
            format!(
                "{good}{}",
                (0..200)
                    .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
                    .collect::<String>()
            ),
        ),
        (
            "yaml 1.1 boolean: yes",
            good.replace("access: true", "access: yes"),
        ),
        (
            "yaml 1.1 boolean: off",
            good.replace("access: true", "access: off"),
        ),
        (
            "yaml 1.1 boolean: on",
            good.replace("    strip_prefix: true", "    strip_prefix: on"),
        ),
        (
            "quoted boolean",
            good.replace("access: true", "access: \"true\""),
        ),
        (
            "capitalised boolean",
            good.replace("access: true", "access: True"),
        ),
        ("misspelt top-level key", good.replace("routes:", "rotues:")),
        (
            "misspelt route key",
            good.replace("scopes: [scope:agent-ui]", "scope: [scope:agent-ui]"),
        ),
        (
            "misspelt anonymous value",
            good.replace("anonymous: read", "anonymous: reads"),
        ),
        (
            "duplicate key",
            good.replace("  access: true", "  access: true\n  access: false"),
        ),
        ("two documents", format!("{good}---\n{good}")),
        ("a tag", good.replace("access: true", "access: !!bool true")),
        (
            "a foreign tag",
            good.replace("access: true", "access: !!python/object:os.system true"),
        ),
        (
            "a file over the size cap",
            format!("{good}# {}\n", "x".repeat(5 << 20)),
        ),
        ("a NUL byte", good.replace("level: warn", "level: w\0arn")),
        ("tabs for indentation", good.replace("  access: true", "\taccess: true")),
        ("an empty file", String::new()),
        ("a lone null", "~\n".into()),
        ("not a mapping", "- a\n- b\n".into()),
        (
            "a huge number",
            good.replace("refresh_interval: 200ms", "refresh_interval: 99999999999999999999999d"),
        ),
        (
            "empty scopes",
            good.replace("scopes: [scope:agent-ui]", "scopes: []"),
        ),
        (
            "a prefix with a dot segment",
            good.replace("prefix: /api/v2", "prefix: /api/../v2"),
        ),
        (
            "a prefix with an escape",
            good.replace("prefix: /api/v2", "prefix: /api/%76%32"),
        ),
    ]
}

#[tokio::test]
async fn hostile_configs_are_refused_quickly_on_reload_and_the_running_config_keeps_serving() {
    let (up, gw) = standard().await;
    let good = gateway_yaml(up.addr, "");
    let path = gw.path("gateway.yaml");
    for (what, text) in hostile_configs(&good) {
        std::fs::write(&path, &text).unwrap();
        let started = Instant::now();
        let result = gw.launched.control.reload().await;
        let took = started.elapsed();
        assert!(result.is_err(), "{what}: accepted");
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
        let err = result.unwrap_err();
        assert!(err.contains("gateway.yaml"), "{what}: {err}");
        assert!(
            !err.contains("lol"),
            "{what}: the error quotes the file: {err}"
        );
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
        assert_eq!(r.status, 200, "{what}: no longer serving");
    }
    // The good config still reloads.
    std::fs::write(&path, &good).unwrap();
    gw.launched.control.reload().await.unwrap();
}

#[tokio::test]
async fn hostile_configs_are_refused_by_check_within_a_memory_cap() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let good = gateway_yaml(up.addr, "");
    for (what, text) in hostile_configs(&good)
        .into_iter()
        .filter(|(w, _)| w.starts_with("alias") || w.starts_with("deep") || w.contains("size"))
    {
        let path = dir.path().join("hostile.yaml");
        std::fs::write(&path, &text).unwrap();
        let started = Instant::now();
        // 512 MiB of address space: an expanded alias bomb would need far
        // more, and would abort instead of exiting 1 with an error line.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 524288; exec \"$0\" check -c \"$1\"")
            .arg(env!("CARGO_BIN_EXE_tollgate"))
            .arg(&path)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("hostile.yaml"), "{what}: {stderr}");
        assert!(took < Duration::from_secs(3), "{what}: took {took:?}");
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/2 client: just enough to send one HEADERS frame with any
// pseudo-headers (hyper's and h2's clients refuse to send `:protocol` to a
// server that has not enabled RFC 8441) and read the answer.
// ---------------------------------------------------------------------------

mod h2 {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    #[derive(Debug, PartialEq, Eq)]
    pub enum Answer {
        Status(u16),
        Reset,
        GoAway,
        Nothing,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK "literal header field without indexing, new name", no
    /// Huffman coding.
    fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x00];
        for s in [name, value] {
            length(&mut b, s.len());
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    /// An HPACK string length: a 7-bit prefix integer, H bit clear.
    fn length(b: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            b.push(n as u8);
            return;
        }
        b.push(127);
        n -= 127;
        while n >= 128 {
            b.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        b.push(n as u8);
    }

    /// Sends one request without a body on stream 1 and returns how the
    /// server answered.
    pub async fn request(addr: SocketAddr, fields: &[(&str, &str)]) -> Answer {
        request_with_body(addr, fields, None).await
    }

    /// Sends one request on stream 1, with `body` in one DATA frame, and
    /// returns how the server answered.
    pub async fn request_with_body(
        addr: SocketAddr,
        fields: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let block: Vec<u8> = fields.iter().flat_map(|(n, v)| literal(n, v)).collect();
        // The default SETTINGS_MAX_FRAME_SIZE: longer blocks continue in
        // CONTINUATION frames.
        let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let last = if i + 1 == pieces.len() {
                END_HEADERS
            } else {
                0
            };
            let end = if body.is_none() { END_STREAM } else { 0 };
            out.extend(if i == 0 {
                frame(HEADERS, last | end, 1, piece)
            } else {
                frame(CONTINUATION, last, 1, piece)
            });
        }
        if let Some(body) = body {
            out.extend(frame(DATA, END_STREAM, 1, body));
        }
        s.write_all(&out).await.unwrap();

        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // Parse whatever frames are complete.
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = (usize::from(buf[at]) << 16)
                    | (usize::from(buf[at + 1]) << 8)
                    | usize::from(buf[at + 2]);
                if buf.len() < at + 9 + len {
                    break;
                }
                let kind = buf[at + 3];
                let stream =
                    u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]])
                        & 0x7fff_ffff;
                let payload = &buf[at + 9..at + 9 + len];
                match (kind, stream) {
                    (HEADERS, 1) => return Answer::Status(status(payload)),
                    (RST_STREAM, 1) => return Answer::Reset,
                    (GOAWAY, _) => return Answer::GoAway,
                    _ => {}
                }
                at += 9 + len;
            }
            match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return Answer::Nothing,
            }
        }
    }

    /// The `:status` of a response header block: its first field, either
    /// indexed from the static table or a literal with the `:status` name,
    /// its value plain or Huffman-coded digits.
    fn status(block: &[u8]) -> u16 {
        let first = block[0];
        if first & 0x80 != 0 {
            return match first & 0x7f {
                8 => 200,
                9 => 204,
                10 => 206,
                11 => 304,
                12 => 400,
                13 => 404,
                14 => 500,
                i => panic!("indexed field {i} is not a :status"),
            };
        }
        let index = if first & 0x40 != 0 {
            first & 0x3f
        } else {
            first & 0x0f
        };
        assert_eq!(index, 8, "first field is not :status: {block:?}");
        let huffman = block[1] & 0x80 != 0;
        let len = usize::from(block[1] & 0x7f);
        let value = &block[2..2 + len];
        let digits = if huffman {
            huffman_digits(value)
        } else {
            String::from_utf8(value.to_vec()).unwrap()
        };
        digits.parse().unwrap()
    }

    /// Decodes a Huffman-coded string of ASCII digits (RFC 7541 Appendix B:
    /// `0`–`2` are 5-bit codes 00000–00010, `3`–`9` 6-bit 011001–011111).
    fn huffman_digits(bytes: &[u8]) -> String {
        let bits: Vec<u8> = bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
            .collect();
        let mut out = String::new();
        let mut i = 0;
        let code = |from: usize, n: usize| bits[from..from + n].iter().fold(0u8, |a, b| a << 1 | b);
        while i + 5 <= bits.len() {
            let five = code(i, 5);
            if five <= 0b00010 {
                out.push(char::from(b'0' + five));
                i += 5;
            } else if i + 6 <= bits.len() && (0b011001..=0b011111).contains(&code(i, 6)) {
                out.push(char::from(b'3' + code(i, 6) - 0b011001));
                i += 6;
            } else {
                break; // padding (all ones)
            }
        }
        out
    }
}
