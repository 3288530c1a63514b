//! Framing and smuggling: Content-Length against Transfer-Encoding, pipelining, upgrades.

use super::*;

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
