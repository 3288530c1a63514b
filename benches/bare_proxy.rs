//! The reference for the instruction-count harness: a bare hyper 1 reverse
//! proxy with no policy at all, to measure Tollgate against.
//!
//! One current-thread tokio runtime, an HTTP/1 server, and one pooled
//! hyper-util legacy client to one upstream (TCP_NODELAY on both legs, as
//! Tollgate does). It forwards the method, path, query and headers as they
//! came and streams both bodies; an upstream error is a bare 502.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy 127.0.0.1:18090 127.0.0.1:18080
//! ```
//!
//! Invariant: it reads nothing but the request line and forwards it
//! unchanged; anything it did per request would be counted as the baseline.

use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Client<HttpConnector, Incoming>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR is host:port");
    let authority: Authority = upstream.parse().expect("UPSTREAM_ADDR is host:port");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, authority))
}

async fn serve(listen: SocketAddr, authority: Authority) -> std::io::Result<()> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(http);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, authority) = (client.clone(), authority.clone());
        let service = service_fn(move |req| forward(client.clone(), authority.clone(), req));
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Upstream,
    authority: Authority,
    mut req: Request<Incoming>,
) -> Result<Response<Either<Incoming, Empty<Bytes>>>, http::Error> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = req.uri().path_and_query().cloned();
    *req.uri_mut() = Uri::from_parts(parts)?;
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(Either::Left)),
        Err(_) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Either::Right(Empty::new())),
    }
}
