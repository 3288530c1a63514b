//! Header tricks: spoofed identity and forwarding headers, Connection nominations, Host games.

use super::*;

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
