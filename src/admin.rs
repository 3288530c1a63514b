//! The admin listener: `GET /healthz`, `/readyz` and `/metrics`.
//!
//! Plain HTTP/1.1 on its own address, meant for orchestrators and
//! Prometheus. Invariant: it exposes no token, hash or request data, and
//! it stays reachable when the data listeners have used every descriptor
//! the process may open (it keeps a few in reserve).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::server::accept::{is_resource_exhaustion, Backoff};

/// Descriptors the admin listener keeps in reserve: when the process is
/// out of them (the data listeners full), one is given up to accept an
/// admin connection, so `/readyz` and `/metrics` still answer.
const RESERVE: usize = 4;

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) {
    let reserve = Arc::new(Reserve::default());
    reserve.refill();
    let mut backoff = Backoff::new("admin");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_resource_exhaustion(&e) && reserve.release_one() => continue,
            Err(e) => {
                backoff.failed(&e).await;
                reserve.refill();
                continue;
            }
        };
        backoff.reset();
        let gateway = gateway.clone();
        let reserve = reserve.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(answer(&gateway, &req)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            reserve.refill();
        });
    }
}

/// Open descriptors (of `/dev/null`) held only to be given up.
#[derive(Default)]
struct Reserve(Mutex<Vec<std::fs::File>>);

impl Reserve {
    /// Opens descriptors up to [`RESERVE`], as far as the process has any.
    fn refill(&self) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while held.len() < RESERVE {
            match std::fs::File::open("/dev/null") {
                Ok(file) => held.push(file),
                Err(_) => return,
            }
        }
    }

    /// Closes one reserved descriptor; false when none is left.
    fn release_one(&self) -> bool {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.pop().is_some()
    }
}

fn answer<B>(gateway: &Gateway, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let body = gateway
                .retained
                .metrics
                .render(gateway.access_log.dropped());
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
