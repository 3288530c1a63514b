//! Credential tricks: ambiguity, schemes, whitespace, huge and mistyped tokens.

use super::*;

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
