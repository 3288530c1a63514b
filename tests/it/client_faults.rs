//! A client's fault is never reported as the upstream's: a malformed
//! request body is the client's 400 `bad_request`, a client that goes away
//! mid-upload is logged as 499 `client_closed`, and neither is counted as a
//! 502 or as `bad_gateway`.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

async fn metrics_text(gw: &Gw) -> String {
    let r = get(gw.admin(), "/metrics", &[]).await;
    String::from_utf8(r.body).unwrap()
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_a_502() {
    let (up, gw) = standard().await;
    let request = format!(
        "POST /api/v1/upload HTTP/1.1\r\nHost: t\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz-not-a-chunk-size\r\n\r\n",
        bearer(AGENT)
    );
    let r = raw(gw.addr(), request.as_bytes()).await;
    assert_refusal(&r, 400, "bad_request");
    let line = gw.access.lines(1).await.pop().unwrap();
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["error"], "bad_request", "{line}");
    assert_eq!(line["token_id"], "agent", "{line}");
    let metrics = metrics_text(&gw).await;
    assert!(!metrics.contains("status=\"502\""), "{metrics}");
    assert!(
        metrics.contains("tollgate_auth_denied_total{reason=\"bad_gateway\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_auth_denied_total{reason=\"bad_request\"} 1"),
        "{metrics}"
    );
    drop(up);
}

#[tokio::test]
async fn a_client_that_goes_away_mid_upload_is_logged_as_499_and_never_as_an_upstream_error() {
    let (_up, gw) = standard().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /api/v1/upload HTTP/1.1\r\nHost: t\r\n{}\r\nContent-Length: 100000\r\n\r\n",
        bearer(AGENT)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 1000]).await.unwrap();
    // Let the gateway start forwarding, then go away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let line = gw.access.lines(1).await.pop().unwrap();
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    let metrics = metrics_text(&gw).await;
    assert!(!metrics.contains("status=\"502\""), "{metrics}");
    assert!(
        metrics.contains("tollgate_auth_denied_total{reason=\"bad_gateway\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_forwarded_answer_is_logged_with_a_null_error_and_a_refusal_with_its_code() {
    let (_up, gw) = standard().await;
    let ok = get(gw.addr(), "/api/v1/data", &[&bearer(AGENT)]).await;
    assert_eq!(ok.status, 200);
    let refused = get(gw.addr(), "/api/v1/data", &[]).await;
    assert_refusal(&refused, 401, "missing_token");
    let lines = gw.access.lines(2).await;
    assert!(lines[0]["error"].is_null(), "{}", lines[0]);
    assert_eq!(lines[1]["error"], "missing_token", "{}", lines[1]);
}

#[tokio::test]
async fn a_head_that_is_not_http_gets_the_json_400_a_log_line_without_the_head_and_a_count() {
    let (up, gw) = standard().await;
    // hyper cannot parse these heads; it never hands them to the gateway's
    // service. The last carries a key, as Netdata's streaming handshake
    // does, in a target that is not a URI.
    let heads: [&[u8]; 3] = [
        b"\x16\x03\x01\x02\x00 not http\r\n\r\n",
        b"GET /api/v1/info HTTP/9.9\r\nHost: t\r\n\r\n",
        b"STREAM key=0f5f6d2c-secret-key|hostname=x HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for head in heads {
        let r = raw(gw.addr(), head).await;
        assert_refusal(&r, 400, "bad_request");
        assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
        assert!(r.header("date").is_some(), "{}", r.head);
    }
    let lines = gw.access.lines(3).await;
    for line in &lines {
        assert_eq!(line["status"], 400, "{line}");
        assert_eq!(line["error"], "bad_request", "{line}");
        assert_eq!(line["method"], "-", "{line}");
        assert_eq!(line["path"], "-", "{line}");
        assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert!(!gw.access.text().contains("secret-key"));
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("tollgate_auth_denied_total{reason=\"bad_request\"} 3"),
        "{metrics}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn after_answered_requests_a_bad_head_on_the_same_connection_gets_the_json_400() {
    let (up, gw) = standard().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let good = format!(
        "GET /api/v1/info HTTP/1.1\r\nHost: t\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    for _ in 0..2 {
        stream.write_all(good.as_bytes()).await.unwrap();
        let r = read_response(&mut stream).await;
        assert_eq!(r.status, 200, "{}", r.head);
    }
    // The connection has been through requests and idle waits; a head
    // hyper rejects now is still told apart from the answers before it.
    stream
        .write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_refusal(&r, 400, "bad_request");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout_freeing_the_upstream() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    // An upstream that streams a large answer for as long as it is taken,
    // and notes when its connection is closed under it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let noted = closed.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream, &mut Vec::new()).await.unwrap();
        if send_gigabyte(&mut stream).await {
            noted.store(true, Ordering::SeqCst);
        }
    });
    let config = gateway_yaml(addr, "").replace("  idle: 2s\n", "  idle: 2s\n  send: 1s\n");
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let mut client = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "GET /api/v1/big HTTP/1.1\r\nHost: t\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // Reads nothing: the buffers fill, the gateway's writes block.
    let started = std::time::Instant::now();
    while !closed.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the upstream connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = gw.access.lines(1).await.pop().unwrap();
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    // The client finds its connection closed after what was buffered.
    let mut sink = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the client connection was not closed");
}

#[tokio::test]
async fn an_answer_that_waits_for_the_upstream_is_never_cut_by_the_send_timeout() {
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().delay = Some(Duration::from_millis(1500));
    let config = gateway_yaml(up.addr, "").replace("  idle: 2s\n", "  idle: 2s\n  send: 1s\n");
    let gw = Gw::start(&config, &tokens_yaml()).await;
    // No write is blocked while the gateway waits: only a client that
    // does not take what is sent is cut.
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"upstream says hi");
}

#[tokio::test]
async fn a_keep_alive_connection_idle_past_its_park_serves_again_on_the_same_socket() {
    let up = Upstream::start().await;
    // Idle connections park after 2 s without a request; 10 s idle limit.
    let config = gateway_yaml(up.addr, "").replace("  idle: 2s\n", "  idle: 10s\n");
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let mut client = TcpStream::connect(gw.addr()).await.unwrap();
    let get = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: t\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    let post = format!(
        "POST /api/v1/upload HTTP/1.1\r\nHost: t\r\n{}\r\nContent-Length: 5\r\n\r\nhello",
        bearer(AGENT)
    );
    for round in 0..3 {
        client.write_all(get.as_bytes()).await.unwrap();
        let r = read_response(&mut client).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.head);
        tokio::time::sleep(Duration::from_millis(2600)).await;
        // Two requests in one write after the park: both answered.
        client
            .write_all(format!("{post}{get}").as_bytes())
            .await
            .unwrap();
        for _ in 0..2 {
            let r = read_response(&mut client).await;
            assert_eq!(r.status, 200, "round {round}: {}", r.head);
        }
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 9);
    assert_eq!(&seen[1].body[..], b"hello");
}
