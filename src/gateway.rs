//! The per-request functions: judge a request against the current snapshot
//! in the SPEC's order, then forward it or refuse it, and log it once.
//!
//! `handle` is the one outer function: it loads the snapshot once, runs the
//! pure steps of `judge` (which return `Result<_, Reject>`), does the one
//! I/O step (`proxy::forward`), turns any `Reject` into its response, and
//! hands the access-log record to the response body. With
//! `limits.backend: redis`, step 8 is I/O too: `judge` leaves the token's
//! limit pending and `handle` settles it in Redis before forwarding; the
//! local backend decides it inside `judge`, synchronously.
//!
//! Invariant: a credential is read here and hashed; it is never stored,
//! logged or forwarded (unless `forward_credentials`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;

use crate::accesslog::{AccessLog, Record};
use crate::config::RouteScopes;
use crate::metrics::Limit;
use crate::proxy;
use crate::proxy::body::ResponseBody;
use crate::proxy::headers::{self, Forwarding, Hygiene};
use crate::ratelimit::{self, Allowed, Limited};
use crate::reject::Reject;
use crate::snapshot::{Current, Lasting, Route, Runtime, Snapshot};
use crate::tokens::{secret, TokenEntry, TokenHash, TokenUsage};
use crate::{clientip, credential, method, target};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static CHUNKED: HeaderValue = HeaderValue::from_static("chunked");

/// Longest request target accepted (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;

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
    /// Pools, metrics and limiter state that outlive snapshots.
    pub lasting: Lasting,
    pub access_log: Arc<AccessLog>,
    /// When each token was last used (written back by the token loader).
    pub usage: TokenUsage,
    listening: AtomicBool,
    draining: AtomicBool,
    request_ids: RequestIds,
}

/// A request that passed every check, ready to be forwarded.
pub struct Permit<'s> {
    pub route: &'s Route,
    /// Token id and scopes headers; `None` for an anonymous request.
    pub identity: Option<(HeaderValue, HeaderValue)>,
    /// Origin-form: path and query (taken when the request is forwarded).
    pub upstream_uri: Uri,
    pub websocket: bool,
    /// The token's quota after this request (`RateLimit-*` headers).
    pub quota: Option<Allowed>,
    /// The token whose limit is kept in Redis and still to be checked
    /// (step 8 with `limits.backend: redis`); `None` once decided.
    pub pending_limit: Option<&'s TokenEntry>,
}

/// What the access log and the metrics learn while a request is judged.
#[derive(Default)]
struct Outcome<'s> {
    /// The matched route, also when the request was refused after step 4.
    route: Option<&'s Route>,
    token_id: Option<HeaderValue>,
    /// Set when the token's own limit refused the request.
    limited: Option<Limited>,
}

impl Gateway {
    pub fn new(runtime: Runtime, lasting: Lasting, access_log: Arc<AccessLog>) -> Self {
        Gateway {
            current: Current::new(runtime),
            lasting,
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

    /// Answers one request.
    pub async fn handle(&self, conn: Conn, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let ts = SystemTime::now();
        let snap = self.current.load_full();
        let rt = &*snap.runtime;
        let request_id =
            headers::request_id(req.headers()).unwrap_or_else(|| self.request_ids.next());
        let client_ip = clientip::resolve(
            conn.peer.ip(),
            req.headers(),
            &rt.settings.client_ip.trusted_proxies,
        );
        let mut outcome = Outcome::default();
        let judged = match self.judge(&snap, client_ip, ts, &req, &mut outcome) {
            Ok(permit) if permit.pending_limit.is_some() => {
                self.settle_limit(rt, permit, &mut outcome).await
            }
            judged => judged,
        };
        let log_path: Option<Box<str>> = rt.settings.log.access.then(|| req.uri().path().into());
        let method = rt.settings.log.access.then(|| req.method().clone());
        let metrics = &self.lasting.metrics;
        let (mut resp, route_metrics) = match judged {
            Ok(mut permit) => {
                let route_metrics = &*permit.route.metrics;
                let upgrade = permit.websocket.then(|| hyper::upgrade::on(&mut req));
                let mut resp = match self
                    .forward(rt, &conn, &mut permit, &request_id, req, upgrade)
                    .await
                {
                    Ok(resp) => resp,
                    Err(reject) => self.refuse(rt, reject),
                };
                if let Some(quota) = &permit.quota {
                    for (k, v) in ratelimit::ratelimit_headers(quota) {
                        resp.headers_mut().insert(k, v);
                    }
                }
                (resp, route_metrics)
            }
            Err(reject) => {
                let route_metrics = match outcome.route {
                    Some(route) => &*route.metrics,
                    None => &*metrics.no_route,
                };
                let mut resp = self.refuse(rt, reject);
                if let Some(limited) = &outcome.limited {
                    metrics.rate_limited(Limit::Token);
                    for (k, v) in ratelimit::limited_headers(limited) {
                        resp.headers_mut().insert(k, v);
                    }
                }
                (resp, route_metrics)
            }
        };
        let status = resp.status().as_u16();
        route_metrics.count(status);
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        if let (Some(path), Some(method)) = (log_path, method) {
            let record = Record {
                ts,
                request_id,
                client_ip: conn.ip_value(client_ip),
                method,
                path,
                route: outcome.route.map(|r| r.prefix.clone()),
                token_id: outcome.token_id,
                status,
                duration: started.elapsed(),
                bytes_out: 0,
            };
            resp.body_mut()
                .log_when_done(self.access_log.clone(), record);
        }
        resp
    }

    fn refuse(&self, rt: &Runtime, reject: Reject) -> Response<ResponseBody> {
        self.lasting.metrics.denied(reject.code());
        reject.into_response(&rt.challenges)
    }

    /// Steps 1–8 of SPEC §5, in order; pure apart from the limiters. A
    /// limit kept in Redis is left in `Permit::pending_limit` for
    /// `settle_limit`.
    fn judge<'s>(
        &self,
        snap: &'s Snapshot,
        client_ip: IpAddr,
        now: SystemTime,
        req: &Request<Incoming>,
        outcome: &mut Outcome<'s>,
    ) -> Result<Permit<'s>, Reject> {
        let rt = &*snap.runtime;
        // 1. Method and target.
        if req.method() == Method::TRACE || req.method() == Method::CONNECT {
            return Err(Reject::MethodNotAllowed);
        }
        if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES {
            return Err(Reject::UriTooLong);
        }
        let target =
            target::parse_versioned(req.version(), req.uri()).map_err(|_| Reject::BadPath)?;
        // 2. Readiness.
        if self.is_draining() {
            return Err(Reject::Draining);
        }
        let Some(tokens) = snap.tokens.as_deref() else {
            return Err(Reject::NotReady);
        };
        if !self.listening.load(Ordering::Acquire) {
            return Err(Reject::NotReady);
        }
        // 3. Addresses that keep presenting bad credentials.
        if let Some(retry_after) = rt.failed_auth.blocked(client_ip) {
            self.lasting.metrics.rate_limited(Limit::FailedAuth);
            return Err(Reject::RateLimited { retry_after });
        }
        // 4. Route.
        let route = rt.routes.lookup(&target.path).ok_or(Reject::NoRoute)?;
        outcome.route = Some(route);
        let writes = method::is_write(req.method(), req.headers(), target.query);
        let websocket = method::is_websocket_upgrade(req.headers());
        // 5. Credentials.
        let credential = credential::extract(req.headers(), rt.schemes(), rt.token_headers())
            .map_err(|_| Reject::AmbiguousCredentials)?;
        let identity = match credential {
            None if route.anonymous_read && !writes => None,
            None => return Err(Reject::MissingToken),
            Some(credential) => {
                let unix_now = now
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let Some(entry) = lookup(tokens, credential.token, unix_now) else {
                    rt.failed_auth.record_failure(client_ip);
                    return Err(Reject::InvalidToken);
                };
                outcome.token_id = Some(entry.id.header().clone());
                entry
                    .usage
                    .get_or_init(|| self.usage.cell(entry.id_str()))
                    .touch(unix_now);
                // 6. Address, scope, read-only.
                authorize(route, entry, writes, client_ip, &rt.settings.auth.all_scope)?;
                Some(entry)
            }
        };
        // 7. Declared body size.
        if let (Some(max), Some(declared)) = (route.max_body_bytes, declared_length(req)) {
            if declared > max {
                return Err(Reject::BodyTooLarge);
            }
        }
        // 8. The token's rate limit: here if local, else left to `settle_limit`.
        let (quota, pending_limit) = match identity {
            None => (None, None),
            Some(entry) if rt.shared_limits.as_ref().is_some_and(|r| r.is_up()) => {
                (None, Some(entry))
            }
            Some(entry) => match self.local_limit(rt, entry) {
                Ok(allowed) => (Some(allowed), None),
                Err(limited) => return Err(rate_limited(limited, outcome)),
            },
        };
        let upstream_uri = proxy::upstream_uri(route, &target.path, target.query)?;
        Ok(Permit {
            route,
            identity: identity.map(|e| (e.id.header().clone(), e.scopes.header.clone())),
            upstream_uri,
            websocket,
            quota,
            pending_limit,
        })
    }

    /// Step 8 on the token's local limiter (taken from the registry, which
    /// keeps its state across reloads, on first use). Allocation-free.
    #[inline]
    fn local_limit(&self, rt: &Runtime, entry: &TokenEntry) -> Result<Allowed, Limited> {
        let limiter = entry.limiter.get_or_init(|| {
            let rate = entry.rate_limit.unwrap_or(rt.settings.limits.per_token);
            self.lasting.limiters.get_or_create(entry.id_str(), rate)
        });
        limiter.check()
    }

    /// Step 8 with `limits.backend: redis`: the token's limit in Redis, or
    /// its local limiter when Redis does not answer in time.
    async fn settle_limit<'s>(
        &self,
        rt: &Runtime,
        mut permit: Permit<'s>,
        outcome: &mut Outcome<'_>,
    ) -> Result<Permit<'s>, Reject> {
        let Some(entry) = permit.pending_limit.take() else {
            return Ok(permit);
        };
        let rate = entry.rate_limit.unwrap_or(rt.settings.limits.per_token);
        let shared = match &rt.shared_limits {
            // Boxed so the local path's request future does not carry its size.
            Some(redis) => Box::pin(redis.check(entry.id_str(), rate)).await,
            None => None,
        };
        match shared.unwrap_or_else(|| self.local_limit(rt, entry)) {
            Ok(allowed) => {
                permit.quota = Some(allowed);
                Ok(permit)
            }
            Err(limited) => Err(rate_limited(limited, outcome)),
        }
    }

    /// Step 9: hygiene, then the upstream.
    async fn forward(
        &self,
        rt: &Runtime,
        conn: &Conn,
        permit: &mut Permit<'_>,
        request_id: &HeaderValue,
        req: Request<Incoming>,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<ResponseBody>, Reject> {
        let (mut parts, body) = req.into_parts();
        let trusted_peer =
            clientip::is_trusted(conn.peer.ip(), &rt.settings.client_ip.trusted_proxies);
        let host = headers::client_host(&parts.headers, &parts.uri);
        headers::clean_request(
            &mut parts.headers,
            &Hygiene {
                trusted_peer,
                forward_credentials: rt.settings.auth.forward_credentials,
                token_headers: rt.token_headers(),
                websocket: permit.websocket,
            },
        );
        // The upstream's own Host; `hyper_util`'s client keeps a Host it finds.
        parts.headers.insert(HOST, permit.route.host.clone());
        // The client's framing is gone with Transfer-Encoding. A body of
        // unknown length goes upstream chunked: hyper's client would
        // otherwise send a GET or HEAD without one, silently dropping it.
        if !parts.headers.contains_key(CONTENT_LENGTH) && !http_body::Body::is_end_stream(&body) {
            parts.headers.insert(TRANSFER_ENCODING, CHUNKED.clone());
        }
        headers::add_forwarding(
            &mut parts.headers,
            &Forwarding {
                peer: &conn.peer_value,
                trusted_peer,
                proto: if conn.tls { "https" } else { "http" },
                host,
                identity: permit.identity.as_ref().map(|(id, scopes)| (id, scopes)),
                request_id,
            },
        );
        let route = permit.route;
        let req = proxy::upstream_request(
            parts,
            body,
            std::mem::take(&mut permit.upstream_uri),
            route.max_body_bytes,
        );
        let sent = Instant::now();
        let result = proxy::forward(route, req, upgrade).await;
        route
            .metrics
            .upstream_duration
            .observe(sent.elapsed().as_secs_f64());
        result
    }
}

/// A 429 for the token's own limit; its `RateLimit-*` values go to the
/// response through `outcome`.
fn rate_limited(limited: Limited, outcome: &mut Outcome<'_>) -> Reject {
    let retry_after = limited.retry_after_secs;
    outcome.limited = Some(limited);
    Reject::RateLimited { retry_after }
}

/// The live entry for a presented token, or `None` for every kind of
/// invalid token alike (empty, mistyped, unknown, disabled, expired).
#[inline]
fn lookup<'i>(
    tokens: &'i crate::tokens::TokenIndex,
    token: &[u8],
    unix_now: i64,
) -> Option<&'i TokenEntry> {
    if token.is_empty() || secret::is_mistyped(token) {
        return None;
    }
    tokens
        .get(&TokenHash::of(token))
        .filter(|e| e.is_live(unix_now))
}

/// Step 6 for an authenticated request: allowed IPs, scopes, read-only.
pub fn authorize(
    route: &Route,
    entry: &TokenEntry,
    writes: bool,
    client_ip: IpAddr,
    all_scope: &str,
) -> Result<(), Reject> {
    if !entry.allows_ip(client_ip) {
        return Err(Reject::IpNotAllowed);
    }
    let scoped = match &route.scopes {
        RouteScopes::AnyToken => true,
        RouteScopes::OneOf(scopes) => {
            entry.has_scope(all_scope) || scopes.iter().any(|s| entry.has_scope(s))
        }
    };
    if !scoped {
        return Err(Reject::InsufficientScope(route.scope_challenge.clone()));
    }
    if entry.read_only && writes {
        return Err(Reject::ReadOnlyToken);
    }
    Ok(())
}

/// `Content-Length` as a number; `None` when absent (hyper has already
/// refused malformed or conflicting framing).
fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Request ids for requests that bring none: a random per-process prefix
/// and a counter, `{prefix:016x}-{counter:012x}`, unique without a system
/// call per request. Formatting is done by hand into a stack buffer: the
/// one allocation is the header value's own.
pub struct RequestIds {
    /// The prefix in hex and the `-`.
    prefix: [u8; 17],
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        let mut prefix = [b'-'; 17];
        write_hex(&mut prefix[..16], rand::random());
        RequestIds {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 29];
        id[..17].copy_from_slice(&self.prefix);
        if n >> 48 != 0 {
            // Past 12 hex digits (2^48 requests) the counter grows wider.
            let mut long = id[..17].to_vec();
            long.extend_from_slice(format!("{n:x}").as_bytes());
            return HeaderValue::from_bytes(&long).expect("hex is a valid header value");
        }
        write_hex(&mut id[17..], n);
        HeaderValue::from_bytes(&id).expect("hex is a valid header value")
    }
}

/// Writes the low `out.len()` hex digits of `n`, zero-padded, into `out`.
fn write_hex(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
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

    #[test]
    fn generated_request_ids_are_the_prefix_a_dash_and_a_12_digit_counter() {
        let ids = RequestIds::new();
        let prefix = std::str::from_utf8(&ids.prefix[..16]).unwrap().to_string();
        assert_eq!(ids.next(), format!("{prefix}-000000000000").as_str());
        assert_eq!(ids.next(), format!("{prefix}-000000000001").as_str());
        ids.next.store(0xabc_def0_1234, Ordering::Relaxed);
        assert_eq!(ids.next(), format!("{prefix}-0abcdef01234").as_str());
        ids.next.store(1 << 48, Ordering::Relaxed);
        assert_eq!(ids.next(), format!("{prefix}-1000000000000").as_str());
        assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
