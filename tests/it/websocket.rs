//! WebSocket through the gateway: authorised like any request, tunnelled
//! only after the upstream answers 101, never for a read-only token, and
//! not at all when the upstream declines the upgrade.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::*;

/// An upstream that accepts every WebSocket upgrade and echoes each
/// message back; it records the head of every request it receives.
#[derive(Clone)]
struct EchoUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::request::Parts>>>,
}

impl EchoUpstream {
    async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = EchoUpstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
        };
        let seen = up.seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upgrade(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        up
    }

    fn seen(&self) -> Vec<http::request::Parts> {
        self.seen.lock().unwrap().clone()
    }
}

async fn upgrade(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<http::request::Parts>>>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    seen.lock().unwrap().push(req.into_parts().0);
    let Some(key) = key else {
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(resp);
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Empty::new())
        .unwrap();
    Ok(resp)
}

/// The standard gateway with `/ws` routed to `up` for `scope:agent-ui` and
/// `/ws-ro` for `scope:grafana-plugin`.
async fn gateway(up: &EchoUpstream, plain: &Upstream) -> Gw {
    let routes = format!(
        "  - prefix: /ws\n    upstream: http://{a}\n    scopes: [scope:agent-ui]\n  - prefix: /ws-ro\n    upstream: http://{a}\n    scopes: [scope:grafana-plugin]\n",
        a = up.addr
    );
    Gw::start(&gateway_yaml(plain.addr, &routes), &tokens_yaml()).await
}

#[tokio::test]
async fn a_websocket_with_a_scoped_token_is_tunnelled_and_messages_round_trip() {
    let up = EchoUpstream::start().await;
    let plain = Upstream::start().await;
    let gw = gateway(&up, &plain).await;

    let mut req = format!("ws://{}/ws/chat?room=1", gw.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {AGENT}").parse().unwrap());
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("the gateway completes the upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().get("x-request-id").is_some());

    for text in ["hello", "through the gateway"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    let binary = vec![0u8, 1, 2, 255];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data(), binary);
    ws.close(None).await.unwrap();

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let head = &seen[0];
    assert_eq!(
        head.uri.path_and_query().unwrap().as_str(),
        "/ws/chat?room=1"
    );
    assert_eq!(head.headers["upgrade"], "websocket");
    assert_eq!(head.headers["connection"], "upgrade");
    assert!(head.headers.contains_key("sec-websocket-key"));
    assert_eq!(head.headers["sec-websocket-version"], "13");
    assert_eq!(head.headers["x-tollgate-token-id"], "agent");
    assert!(!head.headers.contains_key("authorization"));
}

/// A WebSocket handshake request as raw bytes.
fn upgrade_request(path: &str, secret: &str, close: bool) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade{}\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {secret}\r\n\r\n",
        if close { ", close" } else { "" }
    )
}

#[tokio::test]
async fn a_read_only_token_cannot_open_a_websocket_and_the_upstream_never_sees_it() {
    let up = EchoUpstream::start().await;
    let plain = Upstream::start().await;
    let gw = gateway(&up, &plain).await;

    let r = raw(
        gw.addr(),
        upgrade_request("/ws-ro/feed", GRAFANA, true).as_bytes(),
    )
    .await;
    assert_refusal(&r, 403, "read_only_token");
    assert_eq!(r.header("upgrade"), None);

    // The same token may read the route without upgrading.
    let ok = get(gw.addr(), "/ws-ro/feed", &[&bearer(GRAFANA)]).await;
    assert_eq!(ok.status, 400, "the echo upstream answers a plain GET 400");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("upgrade"));
}

#[tokio::test]
async fn an_upgrade_the_upstream_declines_is_a_normal_response_and_opens_no_tunnel() {
    // The recording upstream answers every request 200 without switching.
    let (up, gw) = standard().await;
    let mut stream = TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(upgrade_request("/api/v1/socket", AGENT, false).as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"upstream says hi");
    assert_eq!(r.header("upgrade"), None);
    assert_ne!(
        r.header("connection").map(str::to_ascii_lowercase),
        Some("upgrade".into())
    );

    // The connection still speaks HTTP through the gateway: a tunnel would
    // have carried these bytes to the upstream untouched (no identity
    // headers, the credential still in place).
    stream
        .write_all(
            format!(
                "GET /api/v1/after HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{}\r\n\r\n",
                bearer(AGENT)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let next = read_response(&mut stream).await;
    assert_eq!(next.status, 200, "{}", next.head);
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(seen[1].target, "/api/v1/after");
    assert_eq!(seen[1].header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen[1].header("authorization"), None);
}
