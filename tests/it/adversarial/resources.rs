//! Resource limits: header and URI sizes, slow clients, idle connections.

use super::*;

#[tokio::test]
async fn a_70_kib_header_in_one_line_or_many_is_431_and_never_forwarded() {
    let (up, gw) = setup().await;
    let one = format!("X-Big: {}", "a".repeat(70 * 1024));
    let many: Vec<String> = (0..70)
        .map(|i| format!("X-Part-{i}: {}", "b".repeat(1000)))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for headers in [vec![one.as_str()], many] {
        let mut h = vec![bearer(AGENT)];
        h.extend(headers.iter().map(|s| s.to_string()));
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        let req = close_req("GET", "/api/v1/x", &h, "");
        assert_gateway_refuses(&gw, &req, 431, "headers_too_large").await;
    }
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn more_than_100_headers_are_refused() {
    let (up, gw) = setup().await;
    let lines: Vec<String> = (0..120).map(|i| format!("X-H{i}: 1")).collect();
    let mut h = vec![bearer(AGENT)];
    h.extend(lines);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let req = close_req("GET", "/api/v1/x", &h, "");
    assert_gateway_refuses(&gw, &req, 431, "headers_too_large").await;
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn a_16_kib_uri_is_431_with_the_head_and_an_8_kib_one_is_414() {
    let (up, gw) = setup().await;
    // Over `limits.max_header_bytes` with the rest of the head: the head
    // as a whole is too large.
    let long = format!("/api/v1/{}", "a".repeat(16 * 1024));
    let req = close_req("GET", &long, &[&bearer(AGENT)], "");
    assert_gateway_refuses(&gw, &req, 431, "headers_too_large").await;
    let long = format!("/api/v1/x?{}", "q".repeat(8 * 1024));
    let req = close_req("GET", &long, &[&bearer(AGENT)], "");
    assert_gateway_refuses(&gw, &req, 414, "uri_too_long").await;
    assert_nothing_forwarded(&up);
}

#[tokio::test]
async fn slowloris_headers_trickled_byte_by_byte_are_cut_off_at_header_read() {
    let (up, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\nX-Slow: {}\r\n\r\n",
        bearer(AGENT),
        "z".repeat(200)
    );
    let started = Instant::now();
    // One byte every 20 ms: the head would take over 5 s; header_read is 1 s.
    let mut cut_off = false;
    for b in head.as_bytes() {
        if stream.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => {
                let s = String::from_utf8_lossy(&buf[..n]);
                assert!(s.starts_with("HTTP/1.1 408"), "{s}");
                cut_off = true;
                break;
            }
        }
    }
    assert!(cut_off, "the whole head was accepted");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "cut off only after {took:?}"
    );
    assert_nothing_forwarded(&up);
}

/// A GET on `/api/v1/x` that leaves the connection open.
fn kept_alive_get() -> String {
    format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\n\r\n",
        bearer(AGENT)
    )
}

/// Asserts the gateway closed the connection within `window` of `started`.
fn assert_closed_within(started: Instant, window: std::ops::Range<Duration>) {
    let took = started.elapsed();
    assert!(window.contains(&took), "closed after {took:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_header_read_and_closes_at_idle() {
    let (up, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let req = kept_alive_get();
    // header_read is 1 s and idle 2 s in the test config: 1.5 s of
    // silence between requests is idleness, not a slow head.
    let (rs, closed) = converse(&mut stream, req.as_bytes(), Duration::from_millis(1500)).await;
    assert_eq!((rs.len(), rs[0].status, closed), (1, 200, false));
    let started = Instant::now();
    let (rs, closed) = converse(&mut stream, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rs.len(), 1, "the connection was closed while idle");
    assert_eq!(rs[0].status, 200);
    assert!(closed, "an idle connection was kept open");
    assert_closed_within(
        started,
        Duration::from_millis(1800)..Duration::from_millis(3500),
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_head_begun_after_an_idle_wait_must_be_whole_within_header_read() {
    let (up, gw) = setup().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let req = kept_alive_get();
    let (rs, _) = converse(&mut stream, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(rs.len(), 1);
    // Half a head after 0.5 s idle, then silence: cut off at header_read
    // (1 s) from its first byte, sooner than the idle limit (2 s).
    let started = Instant::now();
    let (rs, closed) = converse(
        &mut stream,
        b"GET /api/v1/y HTTP/1.1\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a half head was waited for past header_read");
    assert!(rs.iter().all(|r| r.status == 408), "{rs:?}");
    assert_closed_within(
        started,
        Duration::from_millis(800)..Duration::from_millis(1800),
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_slow_body_is_bounded_by_the_upstream_response_timeout() {
    let (up, gw) = setup().await;
    // /slow has upstream_response_timeout: 300ms; the upstream waits for
    // the whole body before it answers, so the gateway's wait for the
    // response head bounds a body that never completes.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /slow/x HTTP/1.1\r\nHost: gw.test\r\n{}\r\nContent-Length: 1000\r\n\r\n0123456789",
        bearer(ADMIN)
    );
    let started = Instant::now();
    let (rs, _) = converse(&mut stream, head.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_refusal(&rs[0], 504, "gateway_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The upstream never got a whole request.
    assert_nothing_forwarded(&up);

    // A refused request's slow body does not hold the connection open.
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    let (rs, closed) = converse(
        &mut stream,
        b"POST /api/v1/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\n0123456789",
        Duration::from_secs(3),
    )
    .await;
    assert_refusal(&rs[0], 401, "missing_token");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413_whether_declared_or_chunked() {
    let (up, gw) = setup().await;
    // Declared: refused before anything is forwarded, however large.
    let declared = |cl: &str| {
        format!(
            "POST /small/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nContent-Length: {cl}\r\n\r\n0123456789A",
            bearer(ADMIN)
        )
    };
    for cl in ["11", "1000000000000", "18446744073709551613"] {
        let req = declared(cl);
        assert_gateway_refuses(&gw, req.as_bytes(), 413, "body_too_large").await;
    }
    // Lengths hyper cannot represent are refused by hyper (431).
    for cl in ["18446744073709551614", "18446744073709551615"] {
        assert_refused_somehow(&gw, declared(cl).as_bytes(), &[400, 413, 431]).await;
    }
    assert_nothing_forwarded(&up);
    // Chunked: cut off once past the limit; the upstream never gets a
    // complete request with more than the limit.
    for chunks in [
        "b\r\n0123456789A\r\n0\r\n\r\n",
        "5\r\n01234\r\n5\r\n56789\r\n1\r\nA\r\n0\r\n\r\n",
        "5;ext=1\r\n01234\r\n7;x=\"y\"\r\n56789AB\r\n0\r\n\r\n",
    ] {
        let req = format!(
            "POST /small/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}",
            bearer(ADMIN)
        );
        assert_gateway_refuses(&gw, req.as_bytes(), 413, "body_too_large").await;
    }
    // A chunk size that overflows is a framing error, never a body.
    let req = format!(
        "POST /small/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        bearer(ADMIN)
    );
    if let Some(r) = try_send(&gw, req.as_bytes()).await {
        assert!(matches!(r.status, 400 | 413 | 502), "{}", r.head);
    }
    assert!(
        up.seen().iter().all(|s| s.body.len() <= 10),
        "{:?}",
        up.seen()
    );
}
