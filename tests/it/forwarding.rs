//! the contract's §5 Forwarding and route matching: what the upstream receives.

use crate::support::*;

#[tokio::test]
async fn prefixes_match_on_segment_boundaries_and_the_longest_wins_whatever_the_order() {
    let (up, gw) = standard().await;
    // /api/v1/admin is listed before /api/v1 in the config; a shorter one
    // listed later must not shadow it, and /api/v1x is no match.
    assert_eq!(
        get(gw.addr(), "/api/v1", &[&bearer(AGENT)]).await.status,
        200
    );
    assert_eq!(
        get(gw.addr(), "/api/v1/", &[&bearer(AGENT)]).await.status,
        200
    );
    assert_refusal(
        &get(gw.addr(), "/api/v1x", &[&bearer(AGENT)]).await,
        404,
        "no_route",
    );
    assert_refusal(
        &get(gw.addr(), "/API/v1/x", &[&bearer(AGENT)]).await,
        404,
        "no_route",
    );
    assert_refusal(
        &get(gw.addr(), "/api/v1/admin", &[&bearer(AGENT)]).await,
        403,
        "insufficient_scope",
    );
    assert_eq!(
        get(gw.addr(), "/api/v1/administrator", &[&bearer(AGENT)])
            .await
            .status,
        200
    );
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn the_longest_prefix_wins_when_it_is_listed_last() {
    let up = Upstream::start().await;
    let config = gateway_yaml(up.addr, "").replace(
        "  - prefix: /api/v1/admin\n    upstream: http://{up}\n    scopes: [scope:admin]\n",
        "",
    );
    let extra = format!(
        "  - prefix: /api/v2/private\n    upstream: http://{}\n    scopes: [scope:admin]\n",
        up.addr
    );
    let gw = Gw::start(&format!("{config}{extra}"), &tokens_yaml()).await;
    assert_refusal(
        &get(gw.addr(), "/api/v2/private/x", &[&bearer(GRAFANA)]).await,
        403,
        "insufficient_scope",
    );
    assert_eq!(
        get(gw.addr(), "/api/v2/public", &[&bearer(GRAFANA)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn strip_prefix_sends_the_rest_under_the_upstream_path_and_the_prefix_as_slash() {
    let (up, gw) = standard().await;
    get(gw.addr(), "/strip/a/b?q=1", &[&bearer(ADMIN)]).await;
    get(gw.addr(), "/strip", &[&bearer(ADMIN)]).await;
    let seen = up.seen();
    assert_eq!(seen[0].target, "/base/a/b?q=1");
    assert_eq!(seen[1].target, "/base/");
}

#[tokio::test]
async fn spoofed_identity_and_forwarding_headers_are_replaced() {
    let (up, gw) = standard().await;
    get(
        gw.addr(),
        "/api/v1/x",
        &[
            &bearer(AGENT),
            "X-Tollgate-Token-Id: admin",
            "x-TOLLGATE-scopes: scope:all",
            "X-Tollgate-Other: 1",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Host: evil.example",
            "X-Forwarded-Proto: https",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
        ],
    )
    .await;
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("x-tollgate-scopes"), Some("scope:agent-ui"));
    assert_eq!(seen.header("x-tollgate-other"), None);
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gw.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-real-ip"), None);
}

#[tokio::test]
async fn anonymous_requests_carry_no_identity_even_if_the_client_sends_one() {
    let (up, gw) = standard().await;
    get(gw.addr(), "/api/v3/x", &["X-Tollgate-Token-Id: admin"]).await;
    assert_eq!(up.only().header("x-tollgate-token-id"), None);
}

#[tokio::test]
async fn hop_by_hop_and_connection_nominated_headers_are_removed() {
    let (up, gw) = standard().await;
    get(
        gw.addr(),
        "/api/v1/x",
        &[
            &bearer(AGENT),
            "Connection: close, X-Custom, X-Tollgate-Token-Id",
            "X-Custom: 1",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Trailer: X-T",
            "Upgrade: h2c",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "X-Kept: yes",
        ],
    )
    .await;
    let seen = up.only();
    for h in [
        "x-custom",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert_eq!(seen.header(h), None, "{h} was forwarded");
    }
    assert_eq!(seen.header("x-kept"), Some("yes"));
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
}

#[tokio::test]
async fn credential_headers_and_underscored_headers_are_not_forwarded() {
    let (up, gw) = standard().await;
    get(
        gw.addr(),
        "/api/v1/x",
        &[
            &format!("xc-token: {AGENT}"),
            "x_custom: 1",
            &format!("xc_token: {ADMIN}"),
        ],
    )
    .await;
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("xc-token"), None);
    assert_eq!(seen.header("x_custom"), None);
    assert_eq!(seen.header("xc_token"), None);
}

#[tokio::test]
async fn an_authorization_header_of_another_scheme_is_removed_too() {
    let (up, gw) = standard().await;
    get(
        gw.addr(),
        "/api/v3/x",
        &["Authorization: Basic dXNlcjpwYXNz"],
    )
    .await;
    assert_eq!(up.only().header("authorization"), None);
}

#[tokio::test]
async fn the_upstream_host_is_the_upstreams_authority() {
    let (up, gw) = standard().await;
    get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    assert_eq!(up.only().header("host"), Some(up.addr.to_string().as_str()));
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_response_are_removed() {
    let (_up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert_eq!(r.header("x-hop"), None);
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_intact() {
    let (up, gw) = standard().await;
    let body = "x".repeat(100_000);
    let r = request(gw.addr(), "POST", "/api/v1/x", &[&bearer(AGENT)], &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().body.len(), 100_000);
}

#[tokio::test]
async fn keep_alive_connections_to_the_upstream_are_reused() {
    let (up, gw) = standard().await;
    for _ in 0..20 {
        assert_eq!(
            get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await.status,
            200
        );
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_keep_alive_connection_the_upstream_closed_while_idle_is_not_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    // An upstream that promises keep-alive, then closes each connection
    // 50 ms after its one answer (an idle timeout shorter than the gap).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if read_head(&mut stream, &mut Vec::new()).await.is_none() {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer).await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            });
        }
    });
    let gw = Gw::start(&gateway_yaml(addr, ""), &tokens_yaml()).await;
    for _ in 0..3 {
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"ok");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn concurrent_requests_get_a_connection_each_and_give_it_back() {
    let (up, gw) = standard().await;
    up.behaviour.lock().unwrap().delay = Some(std::time::Duration::from_millis(200));
    let addr = gw.addr();
    let concurrent: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/api/v1/x", &[&bearer(AGENT)]).await }))
        .collect();
    for r in concurrent {
        assert_eq!(r.await.unwrap().status, 200);
    }
    let opened = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(opened, 5, "one upstream connection per request in flight");
    up.behaviour.lock().unwrap().delay = None;
    for _ in 0..10 {
        assert_eq!(get(addr, "/api/v1/x", &[&bearer(AGENT)]).await.status, 200);
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        opened,
        "later requests reuse the connections handed back"
    );
    assert_eq!(up.seen().len(), 15);
}

#[tokio::test]
async fn an_upload_that_keeps_moving_may_outlast_the_response_timeout() {
    use tokio::io::AsyncWriteExt;
    let (up, gw) = standard().await;
    // /slow has upstream_response_timeout: 300ms. The body takes about a
    // second, a piece every 100 ms: the timeout bounds lack of progress,
    // and runs from the body's end, so the upload goes through.
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /slow/upload HTTP/1.1\r\nHost: gw.test\r\n{}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        bearer(ADMIN)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stream.write_all(&[b'u'; 10]).await.unwrap();
    }
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(up.only().body.len(), 100);
}

/// An upstream like Netdata 1.x: it keeps an HTTP/1.1 connection open only
/// when the request says `Connection: keep-alive`. Counts connections and
/// keeps every request head, lowercased.
struct CloseByDefault {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CloseByDefault {
    async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = CloseByDefault {
            addr: listener.local_addr().unwrap(),
            accepted: Default::default(),
            heads: Default::default(),
        };
        let (counter, seen) = (up.accepted.clone(), up.heads.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    while let Some(head) = read_head(&mut stream, &mut pending).await {
                        let head = head.to_ascii_lowercase();
                        let keep = head.contains("\r\nconnection: keep-alive\r\n");
                        seen.lock().unwrap().push(head);
                        let answer: &[u8] = if keep {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        };
                        if stream.write_all(answer).await.is_err() || !keep {
                            return;
                        }
                    }
                });
            }
        });
        up
    }

    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn send_keep_alive_keeps_a_close_by_default_upstream_on_one_connection() {
    let kept = CloseByDefault::start().await;
    let plain = CloseByDefault::start().await;
    let extra = format!(
        "  - prefix: /kept\n    upstream: http://{}\n    scopes: [\"*\"]\n    send_keep_alive: true\n",
        kept.addr
    );
    let gw = Gw::start(&gateway_yaml(plain.addr, &extra), &tokens_yaml()).await;
    for _ in 0..5 {
        // The client's own `Connection` never decides it.
        let r = get(gw.addr(), "/kept/x", &[&bearer(AGENT), "Connection: close"]).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{}", r.head);
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
        assert_eq!(r.status, 200, "{}", r.head);
    }
    assert_eq!(
        kept.connections(),
        1,
        "asked to keep it: one upstream connection"
    );
    assert_eq!(
        plain.connections(),
        5,
        "not asked: a connection per request"
    );
    for head in kept.heads.lock().unwrap().iter() {
        assert_eq!(head.matches("\r\nconnection:").count(), 1, "{head}");
        assert!(head.contains("\r\nconnection: keep-alive\r\n"), "{head}");
    }
    for head in plain.heads.lock().unwrap().iter() {
        assert!(!head.contains("\r\nconnection:"), "{head}");
    }
}

#[tokio::test]
async fn an_http_1_0_upstream_is_answered_to_an_http_1_1_client_in_http_1_1_on_a_kept_connection() {
    use tokio::io::AsyncWriteExt;
    // Like Python's http.server: answers in HTTP/1.0 and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream, &mut Vec::new()).await.is_none() {
                    return;
                }
                let answer =
                    b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer).await;
            });
        }
    });
    let gw = Gw::start(&gateway_yaml(addr, ""), &tokens_yaml()).await;
    let mut client = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: t\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    for _ in 0..2 {
        client.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut client).await;
        assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
        assert_eq!(r.body, b"ok");
    }
}
