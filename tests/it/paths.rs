//! the contract's §5 Paths over raw sockets: every `bad_path` class is refused and
//! never forwarded; what is forwarded is the canonical path with the query
//! byte for byte.

use crate::support::*;

async fn target_status(target: &str) -> (Raw, Vec<Seen>) {
    let (up, gw) = standard().await;
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\n{}\r\nConnection: close\r\n\r\n",
        bearer(ADMIN)
    );
    let r = raw(gw.addr(), req.as_bytes()).await;
    (r, up.seen())
}

async fn assert_bad_path(target: &str) {
    let (r, seen) = target_status(target).await;
    assert_eq!(r.status, 400, "{target} gave {}", r.head);
    assert_eq!(r.error(), "bad_path", "{target}");
    assert!(seen.is_empty(), "{target} reached the upstream: {seen:?}");
}

#[tokio::test]
async fn dot_segments_raw_or_encoded_are_bad_path() {
    for t in [
        "/api/v1/../admin",
        "/api/v1/./x",
        "/api/v1/%2e%2e/admin",
        "/api/v1/%2E%2E/admin",
        "/api/v1/.%2e/admin",
        "/api/v1/%2e/x",
        "/api/v1/..",
    ] {
        assert_bad_path(t).await;
    }
}

#[tokio::test]
async fn empty_segments_are_bad_path_but_one_trailing_slash_is_fine() {
    assert_bad_path("/api//v1/x").await;
    assert_bad_path("/api/v1//x").await;
    let (r, seen) = target_status("/api/v1/x/").await;
    assert_eq!(r.status, 200);
    assert_eq!(seen[0].target, "/api/v1/x/");
}

#[tokio::test]
async fn semicolons_backslashes_and_encoded_separators_are_bad_path() {
    for t in [
        "/api/v1/..;/admin",
        "/api/v1;x/y",
        "/api/v1/a%2Fb",
        "/api/v1/a%2fb",
        "/api/v1/a%5Cb",
        "/api/v1/a%5cb",
        "/api/v1/a%00b",
        "/api/v1/a%1Fb",
        "/api/v1/a%7Fb",
    ] {
        assert_bad_path(t).await;
    }
}

#[tokio::test]
async fn malformed_escapes_are_bad_path() {
    for t in ["/api/v1/%zz", "/api/v1/%4", "/api/v1/x%", "/api/v1/%g1"] {
        assert_bad_path(t).await;
    }
}

#[tokio::test]
async fn targets_not_in_origin_form_are_bad_path() {
    assert_bad_path("http://evil.example/api/v1/x").await;
    let (up, gw) = standard().await;
    let r = raw(
        gw.addr(),
        format!(
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n{}\r\nConnection: close\r\n\r\n",
            bearer(ADMIN)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn encoded_unreserved_characters_are_decoded_before_matching_and_forwarding() {
    let (r, seen) = target_status("/api/%761/%7Euser/%41b").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(seen[0].target, "/api/v1/~user/Ab");
}

#[tokio::test]
async fn other_escapes_are_forwarded_exactly_and_never_decoded_twice() {
    let (r, seen) = target_status("/api/v1/%252e%252e/a%20b/%e2%80%AE?q=%2F..%2f&x=%zz").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        seen[0].target,
        "/api/v1/%252e%252e/a%20b/%e2%80%AE?q=%2F..%2f&x=%zz"
    );
}

#[tokio::test]
async fn an_encoded_prefix_cannot_reach_another_route() {
    // /api/v1/admin spelled with an escape must still match the admin route.
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/%61dmin/x", &[&bearer(AGENT)]).await;
    assert_refusal(&r, 403, "insufficient_scope");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_fragment_is_never_forwarded() {
    let (r, seen) = target_status("/api/v1/x#frag").await;
    if r.status == 200 {
        assert_eq!(seen[0].target, "/api/v1/x");
    } else {
        assert_eq!(r.status, 400);
        assert!(seen.is_empty());
    }
}
