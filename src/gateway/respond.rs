//! The answer: every response-header rule in one place, refusals, and the
//! one access-log line per request.
//!
//! An upstream's answer loses its hop-by-hop headers; every answer, the
//! upstream's or the gateway's own, gets `X-Request-Id` and the token's
//! `RateLimit-*` fields. What must happen when the response body is done —
//! the upstream connection back to its pool, the log line with the bytes
//! sent, the connection's in-flight mark — travels with the body as a
//! [`Finish`]. Invariant: each request is logged exactly once, also when
//! the client goes away before its answer (499 `client_closed`).

use std::sync::Arc;

use http::Response;

use super::Exchange;
use crate::accesslog::{AccessLog, Record};
use crate::metrics::{Limit, Metrics};
use crate::proxy::body::{BodyEnd, Ended, ResponseBody};
use crate::proxy::headers::{self, X_REQUEST_ID};
use crate::proxy::{Forwarded, Lease, Upstreamed};
use crate::ratelimit;
use crate::reject::{Challenges, Reject};

/// The body every response of the gateway carries.
pub type Body<G> = ResponseBody<Finish<G>>;

/// The upstream's answer with its hop-by-hop headers removed, and the
/// pooled connection its body arrives on. Notes the upstream's own request
/// id.
pub fn upstream_response<G: Send + Unpin + 'static>(
    forwarded: Forwarded,
    ex: &mut Exchange<'_>,
) -> (Response<Body<G>>, Option<Lease>) {
    let Forwarded { mut head, body } = forwarded;
    // The version is the hop's, not the upstream's: an HTTP/1.0 upstream
    // (Python's http.server) must not make the gateway answer an HTTP/1.1
    // client in HTTP/1.0. hyper itself answers an HTTP/1.0 client in kind.
    head.version = http::Version::HTTP_11;
    ex.upstream_request_id = headers::request_id(&head.headers);
    match body {
        Upstreamed::Tunnel => {
            headers::clean_response(&mut head.headers, true);
            (Response::from_parts(head, ResponseBody::empty()), None)
        }
        Upstreamed::Streaming(body, lease) => {
            headers::clean_response(&mut head.headers, false);
            (
                Response::from_parts(head, ResponseBody::upstream(body)),
                lease,
            )
        }
    }
}

/// The gateway's own answer for `reject`, counted by its reason.
pub fn refusal<G: Send + Unpin + 'static>(
    metrics: &Metrics,
    challenges: &Challenges,
    ex: &mut Exchange<'_>,
    reject: Reject,
) -> Response<Body<G>> {
    metrics.denied(reject.code());
    ex.error = Some(reject.code());
    if ex.limited.is_some() {
        metrics.rate_limited(Limit::Token);
    }
    reject.into_response(challenges)
}

/// The headers every answer gets: the token's quota, and `X-Request-Id` —
/// the client's own if it sent one, else the upstream's if it answered
/// with one, else the gateway's.
pub fn filter<B>(resp: &mut Response<B>, ex: &Exchange<'_>) {
    let h = resp.headers_mut();
    if let Some(quota) = &ex.quota {
        for (k, v) in ratelimit::ratelimit_headers(quota) {
            h.insert(k, v);
        }
    } else if let Some(limited) = &ex.limited {
        for (k, v) in ratelimit::limited_headers(limited) {
            h.insert(k, v);
        }
    }
    match &ex.upstream_request_id {
        Some(upstream) if !ex.client_request_id => h.insert(X_REQUEST_ID, upstream.clone()),
        _ => h.insert(X_REQUEST_ID, ex.request_id.clone()),
    };
}

/// A request's access-log record, written exactly once: when its response
/// body is done, or — if the answer never went out — when it is dropped.
pub struct LogOnce {
    log: Arc<AccessLog>,
    record: Option<Record>,
}

impl LogOnce {
    pub fn new(log: Arc<AccessLog>, record: Record) -> Self {
        LogOnce {
            log,
            record: Some(record),
        }
    }

    /// Fills in what the request learnt; `status` is the answer's.
    pub fn complete(&mut self, ex: &Exchange<'_>, status: u16) {
        if let Some(r) = &mut self.record {
            r.route = ex.route.map(|r| r.prefix.clone());
            r.token_id = ex.token.map(|e| e.id.header().clone());
            r.status = status;
            r.error = ex.error;
            r.upstream_request_id = ex.upstream_request_id.clone();
            r.duration = ex.started.elapsed();
        }
    }

    fn write(&mut self, bytes_out: u64, how: Ended) {
        if let Some(mut r) = self.record.take() {
            r.bytes_out = bytes_out;
            if how == Ended::Abandoned && r.error.is_none() {
                // The client went away before its answer was complete.
                r.status = 499;
                r.error = Some(Reject::ClientClosed.code());
            }
            self.log.submit(r);
        }
    }
}

impl Drop for LogOnce {
    fn drop(&mut self) {
        // Still here: the request ended before its answer was handed over.
        if let Some(r) = &mut self.record {
            r.status = 499;
            r.error = Some(Reject::ClientClosed.code());
        }
        self.write(0, Ended::Abandoned);
    }
}

/// What a response body releases when it is done: the upstream
/// connection, the log line, and the caller's guard `G` (the server's
/// in-flight mark of the client connection).
pub struct Finish<G> {
    pub lease: Option<Lease>,
    pub log: Option<LogOnce>,
    pub guard: G,
}

impl<G: Send + Unpin + 'static> BodyEnd for Finish<G> {
    fn ended(mut self, bytes_out: u64, how: Ended) {
        drop(self.lease.take());
        if let Some(log) = &mut self.log {
            log.write(bytes_out, how);
        }
    }
}
