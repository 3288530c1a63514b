//! The §5 decision table, one test per row, in the contract's order.

use crate::support::*;

#[tokio::test]
async fn a_token_with_the_route_scope_is_forwarded_with_its_identity() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/info?x=1", &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"upstream says hi");
    let seen = up.only();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/api/v1/info?x=1");
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("x-tollgate-scopes"), Some("scope:agent-ui"));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn trace_and_connect_are_refused_with_405() {
    let (up, gw) = standard().await;
    let r = request(gw.addr(), "TRACE", "/api/v1/info", &[&bearer(ADMIN)], "").await;
    assert_refusal(&r, 405, "method_not_allowed");
    let r = raw(
        gw.addr(),
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn no_matching_prefix_is_404_no_route() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/nothing/here", &[&bearer(ADMIN)]).await;
    assert_refusal(&r, 404, "no_route");
    let r = get(gw.addr(), "/api/v10", &[&bearer(ADMIN)]).await;
    assert_refusal(&r, 404, "no_route");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn two_credentials_are_400_ambiguous() {
    let (up, gw) = standard().await;
    let r = get(
        gw.addr(),
        "/api/v1/x",
        &[&bearer(AGENT), &format!("xc-token: {AGENT}")],
    )
    .await;
    assert_refusal(&r, 400, "ambiguous_credentials");
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT), &bearer(ADMIN)]).await;
    assert_refusal(&r, 400, "ambiguous_credentials");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn no_credential_is_401_missing_token_with_a_bearer_challenge() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/x", &[]).await;
    assert_refusal(&r, 401, "missing_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    // Another scheme is not a credential.
    let r = get(
        gw.addr(),
        "/api/v1/x",
        &["Authorization: Basic dXNlcjpwYXNz"],
    )
    .await;
    assert_refusal(&r, 401, "missing_token");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn unknown_revoked_expired_mistyped_and_empty_tokens_get_identical_401s() {
    let (up, gw) = standard().await;
    let mistyped = "tg_abcdefghijklmnopqrstuvwxyzABCDEF000000";
    let mut bodies = Vec::new();
    for header in [
        bearer("nope"),
        bearer(REVOKED),
        bearer(EXPIRED),
        bearer(mistyped),
        "Authorization: Bearer ".to_string(),
        format!("xc-token: {REVOKED}"),
    ] {
        let r = get(gw.addr(), "/api/v1/x", &[&header]).await;
        assert_refusal(&r, 401, "invalid_token");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"tollgate\", error=\"invalid_token\"")
        );
        let mut headers: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| *k != "x-request-id" && *k != "date")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        headers.sort();
        bodies.push((headers, r.body.clone()));
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:#?}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_invalid_token_is_refused_even_on_an_anonymous_route() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v3/x", &[&bearer("nope")]).await;
    assert_refusal(&r, 401, "invalid_token");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_client_outside_allowed_ips_is_403() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(IPBOUND)]).await;
    assert_refusal(&r, 403, "ip_not_allowed");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_token_without_the_route_scope_is_403_with_the_route_scopes() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(GRAFANA)]).await;
    assert_refusal(&r, 403, "insufficient_scope");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"scope:agent-ui\"")
    );
    let r = get(gw.addr(), "/api/v1/admin/x", &[&bearer(AGENT)]).await;
    assert_refusal(&r, 403, "insufficient_scope");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn scope_all_satisfies_every_route_and_star_accepts_any_valid_token() {
    let (up, gw) = standard().await;
    assert_eq!(
        get(gw.addr(), "/api/v1/admin/x", &[&bearer(ADMIN)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(gw.addr(), "/strip/x", &[&bearer(ANYSCOPE)])
            .await
            .status,
        200
    );
    assert_refusal(
        &get(gw.addr(), "/api/v1/x", &[&bearer(ANYSCOPE)]).await,
        403,
        "insufficient_scope",
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_read_only_token_may_read_but_not_write() {
    let (up, gw) = standard().await;
    assert_eq!(
        get(gw.addr(), "/api/v2/q", &[&bearer(GRAFANA)])
            .await
            .status,
        200
    );
    let r = request(gw.addr(), "POST", "/api/v2/q", &[&bearer(GRAFANA)], "{}").await;
    assert_refusal(&r, 403, "read_only_token");
    let r = get(
        gw.addr(),
        "/api/v2/q",
        &[&bearer(GRAFANA), "X-HTTP-Method-Override: DELETE"],
    )
    .await;
    assert_refusal(&r, 403, "read_only_token");
    let r = get(gw.addr(), "/api/v2/q?_method=PUT", &[&bearer(GRAFANA)]).await;
    assert_refusal(&r, 403, "read_only_token");
    let r = request(gw.addr(), "get", "/api/v2/q", &[&bearer(GRAFANA)], "").await;
    assert_refusal(&r, 403, "read_only_token");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn anonymous_reads_pass_on_an_anonymous_route_but_writes_and_overrides_do_not() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v3/info", &[]).await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), None);
    let r = request(gw.addr(), "POST", "/api/v3/info", &[], "x").await;
    assert_refusal(&r, 401, "missing_token");
    let r = get(gw.addr(), "/api/v3/info", &["X-HTTP-Method-Override: POST"]).await;
    assert_refusal(&r, 401, "missing_token");
    let r = get(gw.addr(), "/api/v3/info?_method=DELETE", &[]).await;
    assert_refusal(&r, 401, "missing_token");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_declared_body_over_the_route_limit_is_413_and_never_forwarded() {
    let (up, gw) = standard().await;
    let r = request(
        gw.addr(),
        "POST",
        "/small/x",
        &[&bearer(ADMIN)],
        "0123456789ABC",
    )
    .await;
    assert_refusal(&r, 413, "body_too_large");
    let r = request(
        gw.addr(),
        "POST",
        "/small/x",
        &[&bearer(ADMIN)],
        "0123456789",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().body, "0123456789");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_cut_off() {
    let (up, gw) = standard().await;
    let req = format!(
        "POST /small/x HTTP/1.1\r\nHost: x\r\n{}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\n01234567\r\n8\r\n89ABCDEF\r\n0\r\n\r\n",
        bearer(ADMIN)
    );
    let r = raw(gw.addr(), req.as_bytes()).await;
    assert_refusal(&r, 413, "body_too_large");
    assert!(up.seen().iter().all(|s| s.body.len() <= 10));
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let up = Upstream::start().await;
    let extra =
        format!("  - prefix: /dead\n    upstream: http://{dead_addr}\n    scopes: [\"*\"]\n");
    let gw = Gw::start(&gateway_yaml(up.addr, &extra), &tokens_yaml()).await;
    let r = get(gw.addr(), "/dead/x", &[&bearer(ADMIN)]).await;
    assert_refusal(&r, 502, "bad_gateway");
    up.behaviour.lock().unwrap().delay = Some(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let r = get(gw.addr(), "/slow/x", &[&bearer(ADMIN)]).await;
    assert_refusal(&r, 504, "gateway_timeout");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
}

#[tokio::test]
async fn before_the_first_token_load_requests_get_503_and_readyz_503() {
    let up = Upstream::start().await;
    // No tokens.yaml yet: the source cannot load.
    let gw = Gw::start_unready(&gateway_yaml(up.addr, ""), "").await;
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    assert_refusal(&r, 503, "not_ready");
    let ready = get(gw.admin(), "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(get(gw.admin(), "/healthz", &[]).await.status, 200);
    replace_file(&gw.path("tokens.yaml"), &tokens_yaml());
    gw.wait_ready().await;
    assert_eq!(get(gw.admin(), "/readyz", &[]).await.status, 200);
    assert_eq!(
        get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await.status,
        200
    );
    assert!(up.seen().len() == 1);
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_and_replaced_otherwise() {
    let (up, gw) = standard().await;
    let r = get(
        gw.addr(),
        "/api/v1/x",
        &[&bearer(AGENT), "X-Request-Id: abc-123_x.y:z"],
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123_x.y:z"));
    assert_eq!(up.only().header("x-request-id"), Some("abc-123_x.y:z"));
    up.clear();
    let r = get(
        gw.addr(),
        "/api/v1/x",
        &[&bearer(AGENT), "X-Request-Id: bad id!"],
    )
    .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "bad id!");
    assert_eq!(up.only().header("x-request-id"), Some(id.as_str()));
    let r = get(gw.addr(), "/nowhere", &[]).await;
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn a_client_without_an_id_gets_the_upstreams_and_the_log_keeps_both() {
    let (up, gw) = standard().await;
    up.behaviour.lock().unwrap().request_id = Some("nb-change-7".into());
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    assert_eq!(r.header("x-request-id"), Some("nb-change-7"));
    let sent = up.only().header("x-request-id").unwrap().to_string();
    let uuid = uuid::Uuid::parse_str(&sent).expect("a generated id is a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(uuid.hyphenated().to_string(), sent, "lowercase, hyphenated");
    // A client's own valid id is always the one it gets back.
    let r = get(
        gw.addr(),
        "/api/v1/x",
        &[&bearer(AGENT), "X-Request-Id: mine-1"],
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("mine-1"));
    let lines = gw.access.lines(2).await;
    assert_eq!(lines[0]["request_id"], sent.as_str());
    assert_eq!(lines[0]["upstream_request_id"], "nb-change-7");
    assert_eq!(lines[1]["request_id"], "mine-1");
    assert_eq!(lines[1]["upstream_request_id"], "nb-change-7");
    // A refusal has no upstream id.
    get(gw.addr(), "/api/v1/x", &[]).await;
    let lines = gw.access.lines(3).await;
    assert!(lines[2]["upstream_request_id"].is_null());
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_and_no_secret() {
    let (_up, gw) = standard().await;
    get(gw.addr(), "/api/v1/info?token=zzz", &[&bearer(AGENT)]).await;
    get(gw.addr(), "/api/v1/info", &[&bearer("wrong-secret")]).await;
    let lines = gw.access.lines(2).await;
    let ok = &lines[0];
    assert_eq!(ok["path"], "/api/v1/info");
    assert_eq!(ok["route"], "/api/v1");
    assert_eq!(ok["token_id"], "agent");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["bytes_out"], 16);
    assert!(ok["ts"].as_str().unwrap().contains('T'));
    assert!(ok["duration_ms"].is_number());
    assert!(ok["request_id"].is_string());
    assert_eq!(lines[1]["status"], 401);
    assert!(lines[1]["token_id"].is_null());
    let text = gw.access.text();
    for secret in [AGENT, "wrong-secret", &sha(AGENT), "zzz"] {
        assert!(!text.contains(secret), "access log leaks {secret}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let (_up, gw) = standard().await;
    get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    get(gw.addr(), "/api/v1/x", &[]).await;
    let m = String::from_utf8(get(gw.admin(), "/metrics", &[]).await.body).unwrap();
    assert!(
        m.contains("tollgate_requests_total{route=\"/api/v1\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_requests_total{route=\"/api/v1\",status=\"401\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_auth_denied_total{reason=\"missing_token\"} 1"),
        "{m}"
    );
    assert!(m.contains("tollgate_tokens_loaded 7"), "{m}");
    assert!(m.contains("tollgate_token_source_up 1"), "{m}");
    assert!(
        m.contains("tollgate_upstream_duration_seconds_count{route=\"/api/v1\"} 1"),
        "{m}"
    );
    assert!(!m.contains(AGENT));
}

#[tokio::test]
async fn the_access_log_names_the_client_a_trusted_proxy_forwarded_for() {
    let up = Upstream::start().await;
    let config = gateway_yaml(up.addr, "").replace(
        "timeouts:",
        "client_ip:\n  trusted_proxies: [127.0.0.1]\ntimeouts:",
    );
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let forwarded = "X-Forwarded-For: 203.0.113.9";
    get(gw.addr(), "/api/v1/x", &[&bearer(AGENT), forwarded]).await;
    get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    let lines = gw.access.lines(2).await;
    assert_eq!(lines[0]["client_ip"], "203.0.113.9");
    assert_eq!(lines[1]["client_ip"], "127.0.0.1");
    assert_eq!(
        up.seen()[0].header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
}
