//! HTTP/2 from clients on a plain listener (prior knowledge) to an
//! HTTP/1.1 upstream, `Upgrade: h2c`, which is never forwarded, and
//! `timeouts.send` for a stream the client stops reading.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty, Full};
use tokio::net::TcpStream;

use crate::support::*;
use crate::tls::{h2_client, read_answer};

#[tokio::test]
async fn an_h2_client_by_prior_knowledge_reaches_an_http1_upstream_with_identity_and_forwarded_host(
) {
    let (up, gw) = standard().await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut client = h2_client(tcp).await;

    let req = Request::get("http://api.example.test:8080/api/v1/items?page=2&token=x")
        .header("authorization", format!("Bearer {AGENT}"))
        .header("x-tollgate-token-id", "forged")
        .header("x-request-id", "h2-request-1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let a = read_answer(client.send_request(req).await.unwrap()).await;

    assert_eq!(a.status, 200);
    assert_eq!(a.version, Version::HTTP_2);
    assert_eq!(&a.body[..], b"upstream says hi");
    assert_eq!(a.headers["x-request-id"], "h2-request-1");
    // The upstream's hop-by-hop headers never reach an HTTP/2 client.
    assert!(a.headers.get("connection").is_none());
    assert!(a.headers.get("x-hop").is_none());

    let seen = up.only();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/api/v1/items?page=2&token=x");
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("x-tollgate-scopes"), Some("scope:agent-ui"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("api.example.test:8080")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-request-id"), Some("h2-request-1"));
    assert_eq!(seen.header("authorization"), None);
    // An HTTP/1.1 upstream needs a Host: the upstream's own authority.
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
}

#[tokio::test]
async fn h2_streams_on_one_connection_are_judged_one_by_one() {
    let (up, gw) = standard().await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut client = h2_client(tcp).await;

    let post = Request::post("http://gw.test/api/v1/upload")
        .header("authorization", format!("Bearer {AGENT}"))
        .body(Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let denied = Request::post("http://gw.test/api/v2/query")
        .header("authorization", format!("Bearer {GRAFANA}"))
        .body(Full::new(Bytes::from_static(b"nope")))
        .unwrap();
    let (ok, refused) = tokio::join!(client.send_request(post), client.send_request(denied));
    let (ok, refused) = (
        read_answer(ok.unwrap()).await,
        read_answer(refused.unwrap()).await,
    );

    assert_eq!(ok.status, 200);
    assert_eq!(refused.status, 403);
    let v: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(v["error"], "read_only_token");
    let seen = up.only();
    assert_eq!(seen.target, "/api/v1/upload");
    assert_eq!(&seen.body[..], b"h2 body");
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_forwarded_and_the_answer_stays_http1() {
    let (up, gw) = standard().await;
    let r = raw(
        gw.addr(),
        format!(
            "GET /api/v1/x HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n{}\r\n\r\n",
            bearer(AGENT)
        )
        .as_bytes(),
    )
    .await;

    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
    assert_eq!(r.header("upgrade"), None);
    assert_eq!(r.body, b"upstream says hi");
    let seen = up.only();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
    assert_eq!(seen.header("connection"), None);
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_at_the_idle_limit() {
    let (_up, gw) = standard().await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut client = h2_client(tcp).await;
    let req = Request::get("http://gw.test/api/v1/x")
        .header("authorization", format!("Bearer {AGENT}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        read_answer(client.send_request(req).await.unwrap())
            .await
            .status,
        200
    );
    let started = std::time::Instant::now();
    // idle is 2 s in the test config (header_read 1 s does not apply).
    while !client.is_closed() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "an idle HTTP/2 connection was kept open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1800),
        "closed after {took:?}"
    );
}

/// The frames in `bytes`, as (type, flags, payload), up to the last whole one.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[4], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

#[tokio::test]
async fn an_idle_h2_connection_gets_a_goaway_without_error_before_it_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    let (_up, gw) = standard().await;
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    // The preface and empty SETTINGS; the server's SETTINGS acknowledged;
    // then no stream at all.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut acked = false;
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("an idle HTTP/2 connection was kept open");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
        if !acked
            && frames(&received)
                .iter()
                .any(|f| f.0 == SETTINGS && f.1 == 0)
        {
            tcp.write_all(b"\0\0\0\x04\x01\0\0\0\0").await.unwrap();
            acked = true;
        }
    }
    // idle is 2 s in the test config.
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1800),
        "closed after {took:?}"
    );
    let goaway = frames(&received)
        .into_iter()
        .find(|f| f.0 == GOAWAY)
        .expect("closed without a GOAWAY");
    assert_eq!(&goaway.2[4..8], &[0, 0, 0, 0], "GOAWAY error code NO_ERROR");
}

/// An upstream that answers `GET /api/v1/big` with 1 GiB, streamed for as
/// long as it is taken, and notes when that connection is closed under it;
/// anything else gets a short `ok`.
async fn big_upstream() -> (std::net::SocketAddr, Arc<AtomicBool>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let noted = closed.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let noted = noted.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while let Some(head) = read_head(&mut stream, &mut pending).await {
                    if !head.starts_with("GET /api/v1/big ") {
                        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        stream.write_all(ok.as_bytes()).await.unwrap();
                        continue;
                    }
                    if send_gigabyte(&mut stream).await {
                        noted.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, closed)
}

fn h2_get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://gw.test{path}"))
        .header("authorization", format!("Bearer {AGENT}"))
        .body(Empty::<Bytes>::new())
        .unwrap()
}

#[tokio::test]
async fn an_h2_stream_the_client_stops_reading_is_cut_after_the_send_timeout_freeing_the_upstream()
{
    let (addr, closed) = big_upstream().await;
    // A long idle limit: the connection must stay open for the second
    // request whatever happens to the first stream.
    let config = gateway_yaml(addr, "").replace("  idle: 2s\n", "  idle: 10s\n  send: 1s\n");
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut client = h2_client(tcp).await;
    let resp = client.send_request(h2_get("/api/v1/big")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let headed = std::time::Instant::now();
    // The body is kept but never read: the client sends no WINDOW_UPDATE,
    // and the stream stalls once its window is spent.
    let (_, stalled) = resp.into_parts();
    while !closed.load(Ordering::SeqCst) {
        assert!(
            headed.elapsed() < Duration::from_secs(5),
            "the upstream connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = headed.elapsed();
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    let line = gw.access.lines(1).await.pop().unwrap();
    assert_eq!(line["path"], "/api/v1/big", "{line}");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    // The connection and its other streams are unaffected.
    let other = read_answer(client.send_request(h2_get("/api/v1/x")).await.unwrap()).await;
    assert_eq!(other.status, 200);
    assert_eq!(&other.body[..], b"ok");
    let lines = gw.access.lines(2).await;
    assert_eq!(lines[1]["status"], 200, "{}", lines[1]);
    // Read at last, the cut stream gives what was buffered, then an error
    // (the gateway reset it).
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.collect())
        .await
        .expect("the cut stream ends");
    assert!(read.is_err(), "the cut stream ended without an error");
}

#[tokio::test]
async fn an_h2_answer_that_waits_for_a_slow_upstream_is_never_cut_by_the_send_timeout() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream, &mut Vec::new()).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stream.write_all(b" rest").await.unwrap();
        // Held open until the gateway is done with it.
        let _ = read_head(&mut stream, &mut Vec::new()).await;
    });
    let config = gateway_yaml(addr, "").replace("  idle: 2s\n", "  idle: 2s\n  send: 1s\n");
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut client = h2_client(tcp).await;
    let started = std::time::Instant::now();
    let a = read_answer(client.send_request(h2_get("/api/v1/slow")).await.unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"first rest");
    assert!(started.elapsed() >= Duration::from_millis(2400));
    let line = gw.access.lines(1).await.pop().unwrap();
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["error"].is_null(), "{line}");
}
