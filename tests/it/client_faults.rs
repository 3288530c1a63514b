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
