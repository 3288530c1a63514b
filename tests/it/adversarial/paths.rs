//! Path tricks: encodings, dot segments, separators, fragments and target forms.

use super::*;

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
