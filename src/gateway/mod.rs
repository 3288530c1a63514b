//! The per-request path: one outer function, [`Gateway::handle`], runs a
//! request through named phases over one [`Exchange`]:
//!
//! ```text
//! admit (steps 1–8) → [settle a Redis limit] → prepare → forward → filter → log
//! ```
//!
//! `admit` is pure and shared with `tollgate explain`; `prepare` does all
//! request-header work, `respond` all response-header work and the one
//! access-log line; only `forward` (and a Redis-kept limit) does I/O. Any
//! phase's `Reject` becomes the gateway's own answer.
//!
//! Invariant: a credential is read and hashed during admission; it is never
//! stored, logged or forwarded (unless `forward_credentials`).

pub mod admit;
mod ids;
mod login;
mod prepare;
pub mod respond;

pub use admit::{Admission, Head, Trace, Who, MAX_URI_BYTES};
pub use ids::RequestIds;
pub use respond::{Body, Finish};

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;

use crate::accesslog::{AccessLog, Record};
use crate::clientip::{self, ClientAddr};
use crate::policy::{Current, Policy, Retained, Route};
use crate::proxy::{self, headers};
use crate::ratelimit::{Allowed, Limited};
use crate::reject::{self, Reject};
use crate::tokens::{TokenEntry, TokenUsage};

use self::respond::LogOnce;

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Whether the listener terminates TLS (`X-Forwarded-Proto`).
    pub tls: bool,
    /// `peer`'s address as a header value, formatted once per connection.
    pub peer_value: HeaderValue,
}

impl Conn {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Conn {
            peer,
            tls,
            peer_value: headers::peer_value(peer.ip()),
        }
    }

    /// `ip` as text: the connection's own formatted peer when `ip` is the
    /// peer (as for every client not behind a trusted proxy), else newly
    /// formatted.
    pub fn ip_value(&self, ip: IpAddr) -> HeaderValue {
        if ip == self.peer.ip().to_canonical() {
            self.peer_value.clone()
        } else {
            headers::peer_value(ip)
        }
    }
}

/// The gateway's shared state: the current snapshot and what outlives it.
pub struct Gateway {
    pub current: Current,
    /// Pools, metrics and limiter state that outlive policies.
    pub retained: Retained,
    pub access_log: Arc<AccessLog>,
    /// When each token was last used (written back by the token loader).
    pub usage: TokenUsage,
    listening: AtomicBool,
    draining: AtomicBool,
    request_ids: RequestIds,
}

/// One request's facts, filled in phase by phase: what admission found,
/// what the limit said, and what the access log will say.
pub struct Exchange<'p> {
    pub started: Instant,
    pub ts: SystemTime,
    /// The client's valid `X-Request-Id`, else a new one; sent upstream.
    pub request_id: HeaderValue,
    /// `request_id` is the client's own (it is always the one answered).
    pub client_request_id: bool,
    /// The upstream's own valid `X-Request-Id`, answered to a client that
    /// sent none.
    pub upstream_request_id: Option<HeaderValue>,
    pub client: ClientAddr,
    /// The matched route, also when the request was refused after step 4.
    pub route: Option<&'p Route>,
    /// The authenticated token; `None` for an anonymous request.
    pub token: Option<&'p TokenEntry>,
    /// The token came from a browser session cookie.
    pub session: bool,
    /// The request arrived on a TLS listener (its own scheme is https).
    pub tls: bool,
    /// The request counts as writing.
    pub writes: bool,
    /// The request asks for a WebSocket upgrade.
    pub websocket: bool,
    /// Origin-form target for the upstream, set when admitted.
    pub upstream_target: Uri,
    /// The token's limit is kept in Redis and still to be checked.
    pub limit_pending: bool,
    /// The token's quota after this request (`RateLimit-*` fields).
    pub quota: Option<Allowed>,
    /// Set when the token's own limit refused the request.
    pub limited: Option<Limited>,
    /// The `error` code of a gateway-made answer.
    pub error: Option<&'static str>,
}

impl<'p> Exchange<'p> {
    pub fn new(request_id: HeaderValue, client: ClientAddr) -> Self {
        Exchange {
            started: Instant::now(),
            ts: SystemTime::now(),
            request_id,
            client_request_id: false,
            upstream_request_id: None,
            client,
            route: None,
            token: None,
            session: false,
            tls: false,
            writes: false,
            websocket: false,
            upstream_target: Uri::default(),
            limit_pending: false,
            quota: None,
            limited: None,
            error: None,
        }
    }

    /// A 429 for the token's own limit; its `RateLimit-*` values are kept
    /// for the answer.
    pub fn rate_limited(&mut self, limited: Limited) -> Reject {
        let retry_after = limited.retry_after_secs;
        self.limited = Some(limited);
        Reject::RateLimited { retry_after }
    }
}

impl Gateway {
    pub fn new(policy: Policy, retained: Retained, access_log: Arc<AccessLog>) -> Self {
        Gateway {
            current: Current::new(policy),
            retained,
            access_log,
            usage: TokenUsage::new(),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            request_ids: RequestIds::new(),
        }
    }

    /// Marks the data listeners bound (part of readiness).
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// From now on new requests get 503 `not_ready` with `Connection: close`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: listeners bound and a token index loaded, not draining.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && !self.is_draining()
            && self.current.load().tokens.is_some()
    }

    /// Answers one request. `guard` is released with the response body
    /// (the server's mark that the connection has a request in flight).
    pub async fn handle<G: Send + Unpin + 'static>(
        &self,
        conn: &Conn,
        mut req: Request<Incoming>,
        guard: G,
    ) -> Response<Body<G>> {
        let snap = self.current.load_full();
        let policy = &*snap.policy;
        let client_id = headers::request_id(req.headers());
        let client_request_id = client_id.is_some();
        let request_id = client_id.unwrap_or_else(|| self.request_ids.next());
        let client = clientip::client(conn.peer.ip(), req.headers(), &policy.trusted_proxies);
        let mut ex = Exchange::new(request_id, client);
        ex.client_request_id = client_request_id;
        ex.tls = conn.tls
            || (client.peer_trusted
                && req
                    .headers()
                    .get(headers::X_FORWARDED_PROTO)
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https")));
        let mut log = policy.log_access.then(|| {
            LogOnce::new(
                self.access_log.clone(),
                Record {
                    ts: ex.ts,
                    request_id: ex.request_id.clone(),
                    client_ip: conn.ip_value(client.ip),
                    method: req.method().clone(),
                    path: req.uri().path().into(),
                    route: None,
                    token_id: None,
                    status: 0,
                    error: None,
                    upstream_request_id: None,
                    duration: Default::default(),
                    bytes_out: 0,
                },
            )
        });
        let admission = Admission {
            policy,
            tokens: snap.tokens.as_deref(),
            retained: &self.retained,
            usage: &self.usage,
            listening: self.listening.load(Ordering::Acquire),
            draining: self.is_draining(),
        };
        // The gateway's own pages, when sessions are on.
        let page = policy
            .sessions
            .as_ref()
            .and_then(|s| login::Page::at(req.uri().path()).map(|p| (s, p)));
        if let Some((sessions, page)) = page {
            let metrics = &self.retained.metrics;
            let mut resp = match login::answer(&admission, sessions, page, &mut ex, req).await {
                Ok(resp) => resp,
                Err(reject) => respond::refusal(metrics, &policy.challenges, &mut ex, reject),
            };
            respond::filter(&mut resp, &ex);
            let status = resp.status().as_u16();
            metrics.no_route.count(status);
            if let Some(log) = &mut log {
                log.complete(&ex, status);
            }
            resp.body_mut().on_end(Finish {
                lease: None,
                log,
                guard,
            });
            return resp;
        }
        let mut admitted = admission.admit(Head::of(&req), Who::Headers, &mut ex, &mut ());
        if admitted.is_ok() && ex.limit_pending {
            if let Err(reject) = self.settle_limit(&admission, &mut ex).await {
                admitted = Err(reject);
            }
        }
        let metrics = &self.retained.metrics;
        let (mut resp, lease) = match admitted {
            Ok(route) => {
                let upgrade = ex.websocket.then(|| hyper::upgrade::on(&mut req));
                let (upstream_req, progress) =
                    prepare::upstream_request(policy, route, conn, &mut ex, req);
                let sent = Instant::now();
                let forwarded =
                    proxy::forward(&route.upstream, upstream_req, upgrade, progress).await;
                route
                    .metrics
                    .upstream_duration
                    .observe(sent.elapsed().as_secs_f64());
                match forwarded {
                    Ok(forwarded) => respond::upstream_response(forwarded, &mut ex),
                    Err(reject) => (
                        respond::refusal(metrics, &policy.challenges, &mut ex, reject),
                        None,
                    ),
                }
            }
            Err(reject) => (
                respond::refusal(metrics, &policy.challenges, &mut ex, reject),
                None,
            ),
        };
        respond::filter(&mut resp, &ex);
        let status = resp.status().as_u16();
        match ex.route {
            Some(route) => route.metrics.count(status),
            None => metrics.no_route.count(status),
        }
        if let Some(log) = &mut log {
            log.complete(&ex, status);
        }
        resp.body_mut().on_end(Finish { lease, log, guard });
        resp
    }

    /// The answer to a request head hyper could not parse (`status`:
    /// hyper's 400, 414 or 431), whole, counted and logged like every
    /// refusal. The head itself never reaches the log: it may carry a key
    /// (Netdata's streaming handshake is `STREAM key=… HTTP/1.1`), so the
    /// line's method and path are `-`.
    pub fn unparsable(&self, conn: &Conn, status: u16) -> Option<Bytes> {
        let reject = match status {
            400 => Reject::MalformedHead,
            414 => Reject::UriTooLong,
            431 => Reject::HeadersTooLarge,
            _ => return None,
        };
        let request_id = self.request_ids.next();
        let metrics = &self.retained.metrics;
        metrics.denied(reject.code());
        metrics.no_route.count(status);
        if self.current.load().policy.log_access {
            self.access_log.submit(Record {
                ts: SystemTime::now(),
                request_id: request_id.clone(),
                client_ip: conn.peer_value.clone(),
                method: Method::from_bytes(b"-").expect("`-` is a token"),
                path: "-".into(),
                route: None,
                token_id: None,
                status,
                error: Some(reject.code()),
                upstream_request_id: None,
                duration: Duration::ZERO,
                bytes_out: 0,
            });
        }
        Some(reject::http1_bytes(&reject, &request_id))
    }

    /// Step 8 with `limits.backend: redis`: the token's limit in Redis, or
    /// its local limiter when Redis does not answer in time.
    async fn settle_limit(
        &self,
        admission: &Admission<'_>,
        ex: &mut Exchange<'_>,
    ) -> Result<(), Reject> {
        ex.limit_pending = false;
        let Some(entry) = ex.token else {
            return Ok(());
        };
        let rate = entry.rate_limit.unwrap_or(admission.policy.per_token);
        let shared = match &admission.policy.shared_limits {
            // Boxed so the local path's request future does not carry its size.
            Some(redis) => Box::pin(redis.check(entry.id_str(), rate)).await,
            None => None,
        };
        match shared.unwrap_or_else(|| admission.local_limit(entry)) {
            Ok(allowed) => {
                ex.quota = Some(allowed);
                Ok(())
            }
            Err(limited) => Err(ex.rate_limited(limited)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_the_connections_formatted_peer_or_formatted_anew() {
        let conn = Conn::new("[::ffff:10.0.0.1]:4000".parse().unwrap(), false);
        assert_eq!(conn.peer_value, "10.0.0.1");
        assert_eq!(conn.ip_value("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(conn.ip_value("2001:db8::7".parse().unwrap()), "2001:db8::7");
    }
}
