//! Method tricks: overrides, CONNECT and TRACE, HTTP/2, WebSocket upgrades.

use super::*;

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
