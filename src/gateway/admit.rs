//! Admission: the contract's steps 1–8, in order, over a request head.
//!
//! The same code judges every request the gateway serves and every
//! question `tollgate explain` answers; explain only passes a [`Trace`]
//! that writes down why, and names its token by id instead of presenting
//! a secret. Invariant: pure apart from the limiters and the token's
//! last-use mark; reads no body, does no I/O, never keeps a credential.

use std::fmt;
use std::time::UNIX_EPOCH;

use http::header::{ACCEPT, CONTENT_LENGTH, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

use super::Exchange;
use crate::config::RouteScopes;
use crate::metrics::Limit;
use crate::policy::{Policy, Retained, Route};
use crate::ratelimit::{Allowed, IpKey, Limited};
use crate::reject::Reject;
use crate::tokens::{TokenEntry, TokenIndex, TokenUsage};
use crate::{auth, method, target};

/// Longest request target accepted (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The parts of a request that admission reads.
#[derive(Debug, Clone, Copy)]
pub struct Head<'r> {
    pub method: &'r Method,
    pub uri: &'r Uri,
    pub version: Version,
    pub headers: &'r HeaderMap,
}

impl<'r> Head<'r> {
    pub fn of<B>(req: &'r http::Request<B>) -> Self {
        Head {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
        }
    }
}

/// Who the request claims to be.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// Whatever credential the request's headers carry (the gateway).
    Headers,
    /// The token with this id, or none (`tollgate explain`).
    TokenId(Option<&'a str>),
}

/// Where admission writes down why it decided as it did.
pub trait Trace {
    /// Whether notes are kept (details that cost something to put
    /// together are skipped otherwise).
    fn on(&self) -> bool {
        false
    }

    fn note(&mut self, _step: &'static str, _detail: fmt::Arguments<'_>) {}
}

/// No trace: the gateway's.
impl Trace for () {}

/// A trace as lines of `step: detail`.
impl Trace for String {
    fn on(&self) -> bool {
        true
    }

    fn note(&mut self, step: &'static str, detail: fmt::Arguments<'_>) {
        use fmt::Write as _;
        let _ = writeln!(self, "{step}: {detail}");
    }
}

/// What admission judges by: one snapshot's policy and tokens, the state
/// that outlives it, and whether the gateway is serving.
pub struct Admission<'p> {
    pub policy: &'p Policy,
    /// `None` until the first token load.
    pub tokens: Option<&'p TokenIndex>,
    pub retained: &'p Retained,
    pub usage: &'p TokenUsage,
    /// The data listeners are bound.
    pub listening: bool,
    pub draining: bool,
}

impl<'p> Admission<'p> {
    /// Steps 1–8 of the contract, in order; the first that refuses
    /// answers. Returns the route of an admitted request. A token limit
    /// kept in Redis is left for the caller (`Exchange::limit_pending`),
    /// since checking it is I/O.
    pub fn admit(
        &self,
        head: Head<'_>,
        who: Who<'_>,
        ex: &mut Exchange<'p>,
        trace: &mut impl Trace,
    ) -> Result<&'p Route, Reject> {
        let policy = self.policy;
        // 1. Method and target.
        if *head.method == Method::TRACE || *head.method == Method::CONNECT {
            trace.note(
                "method",
                format_args!("TRACE and CONNECT are always refused"),
            );
            return Err(Reject::MethodNotAllowed);
        }
        if head.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES {
            return Err(Reject::UriTooLong);
        }
        let target = target::parse_versioned(head.version, head.uri, policy.merge_slashes)
            .map_err(|e| {
                trace.note("path", format_args!("refused ({e})"));
                Reject::BadPath
            })?;
        // 2. Readiness.
        if self.draining {
            return Err(Reject::Draining);
        }
        let Some(tokens) = self.tokens else {
            return Err(Reject::NotReady);
        };
        if !self.listening {
            return Err(Reject::NotReady);
        }
        let unix_now = ex
            .ts
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let address = IpKey::from(ex.client.ip).fingerprint();
        // 3. Addresses that keep presenting bad credentials, unless the
        // request's token authenticated from this address before.
        if let Some(retry_after) = policy.failed_auth.blocked(ex.client.ip) {
            if !self.proven(head, tokens, unix_now, address) {
                self.retained.metrics.rate_limited(Limit::FailedAuth);
                trace.note(
                    "client",
                    format_args!("locked out after failed credentials"),
                );
                return Err(Reject::LockedOut { retry_after });
            }
        }
        // 4. Route.
        let Some(route) = policy.routes.lookup(&target.path) else {
            trace.note("route", format_args!("none matches {}", target.path));
            return Err(Reject::NoRoute);
        };
        ex.route = Some(route);
        if trace.on() {
            let up = &route.upstream;
            trace.note(
                "route",
                format_args!(
                    "{} -> {}://{}{}",
                    route.prefix, up.scheme, up.authority, up.base_path
                ),
            );
            let scopes = match &route.access.scopes {
                RouteScopes::AnyToken => "any valid token".to_string(),
                RouteScopes::OneOf(s) => {
                    format!("any of [{}] or {}", s.join(", "), policy.all_scope)
                }
            };
            trace.note(
                "route requires",
                format_args!("{scopes}; anonymous read: {}", route.access.anonymous_read),
            );
            if route.access.browser && policy.sessions.is_some() {
                trace.note(
                    "session",
                    format_args!(
                        "a browser session (cookie from {}) is accepted here instead of a token (browser: true); writes with it must come from the same origin",
                        crate::auth::session::LOGIN_PATH
                    ),
                );
            }
        }
        ex.websocket = method::is_websocket_upgrade(head.headers);
        ex.writes = ex.websocket
            || method::writes_by_method(
                head.method,
                head.headers,
                target.query,
                &route.read_methods,
            );
        if trace.on() {
            trace.note(
                "read methods",
                format_args!("[{}]", route.read_methods.list().join(", ")),
            );
            if let Some(names) = &route.remove_headers {
                let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
                trace.note(
                    "removed before forwarding",
                    format_args!("{}", names.join(", ")),
                );
            }
        }
        trace.note("writes", format_args!("{}", ex.writes));
        // 5. Credentials.
        let entry = match who {
            Who::Headers => {
                let credential = policy
                    .credentials
                    .extract(head.headers)
                    .map_err(|_| Reject::AmbiguousCredentials)?;
                // On a browser route the session cookie is one more
                // credential: beside another one it is ambiguous.
                let session = match &policy.sessions {
                    Some(sessions) if route.access.browser => sessions
                        .find(head.headers)
                        .map_err(|_| Reject::AmbiguousCredentials)?
                        .map(|cookie| (sessions, cookie)),
                    _ => None,
                };
                let found = match (credential, session) {
                    (Some(_), Some(_)) => return Err(Reject::AmbiguousCredentials),
                    (None, None) => None,
                    (Some(credential), None) => {
                        Some(auth::lookup(tokens, &credential.token, unix_now))
                    }
                    (None, Some((sessions, cookie))) => {
                        ex.session = true;
                        Some(session_token(sessions, tokens, cookie, unix_now))
                    }
                };
                match found {
                    None => None,
                    Some(Some(entry)) => Some(entry),
                    Some(None) => {
                        policy.failed_auth.record_failure(ex.client.ip);
                        return Err(Reject::InvalidToken);
                    }
                }
            }
            Who::TokenId(None) => None,
            Who::TokenId(Some(id)) => Some(by_id(tokens, id, unix_now, trace)?),
        };
        let Some(entry) = entry else {
            if route.access.anonymous_read && !ex.writes {
                trace.note(
                    "anonymous",
                    format_args!("allowed (read on an anonymous: read route)"),
                );
                return self.finish(route, &target, ex);
            }
            trace.note("anonymous", format_args!("refused"));
            if route.access.browser && policy.sessions.is_some() && accepts_html(head.headers) {
                return Err(Reject::SignIn(sign_in_location(head.uri)));
            }
            return Err(Reject::MissingToken);
        };
        if ex.session && ex.writes && !same_origin(head, ex.tls) {
            return Err(Reject::CrossSiteRequest);
        }
        ex.token = Some(entry);
        let usage = entry.usage.get_or_init(|| self.usage.cell(entry.id_str()));
        usage.touch(unix_now);
        usage.prove(address);
        // 6. Address, scope, read-only.
        auth::authorize(
            &route.access,
            entry,
            ex.writes,
            ex.client.ip,
            &policy.all_scope,
        )?;
        // 7. Declared body size.
        if let (Some(max), Some(declared)) = (route.max_body_bytes, declared_length(head.headers)) {
            if declared > max {
                return Err(Reject::BodyTooLarge);
            }
        }
        // 8. The token's rate limit: here if local, else left to the caller.
        let rate = entry.rate_limit.unwrap_or(policy.per_token);
        trace.note(
            "rate limit",
            format_args!(
                "{} per {:?}, burst {}{}",
                rate.requests,
                rate.per,
                rate.burst,
                if entry.rate_limit.is_some() {
                    " (token override)"
                } else {
                    " (limits.per_token)"
                }
            ),
        );
        if policy.shared_limits.as_ref().is_some_and(|r| r.is_up()) {
            ex.limit_pending = true;
        } else {
            match self.local_limit(entry) {
                Ok(allowed) => ex.quota = Some(allowed),
                Err(limited) => return Err(ex.rate_limited(limited)),
            }
        }
        self.finish(route, &target, ex)
    }

    /// Whether the request's credential is a live token that authenticated
    /// from this address before (contract §7.6: it keeps working there
    /// during a lockout; any other request, valid or not, is refused alike).
    fn proven(&self, head: Head<'_>, tokens: &TokenIndex, unix_now: i64, address: u64) -> bool {
        let Ok(Some(credential)) = self.policy.credentials.extract(head.headers) else {
            return false;
        };
        auth::lookup(tokens, &credential.token, unix_now)
            .and_then(|e| e.usage.get())
            .is_some_and(|usage| usage.proven_from(address))
    }

    /// The upstream target of an admitted request.
    fn finish(
        &self,
        route: &'p Route,
        target: &target::Target<'_>,
        ex: &mut Exchange<'p>,
    ) -> Result<&'p Route, Reject> {
        let path = if route.strip_prefix {
            target::strip_prefix_path(&target.path, &route.prefix)
        } else {
            &target.path
        };
        ex.upstream_target = route.upstream.target(path, target.query)?;
        Ok(route)
    }

    /// Step 8 on the token's local limiter (taken from the registry, which
    /// keeps its state across reloads, on first use). Allocation-free.
    #[inline]
    pub fn local_limit(&self, entry: &TokenEntry) -> Result<Allowed, Limited> {
        let limiter = entry.limiter.get_or_init(|| {
            let rate = entry.rate_limit.unwrap_or(self.policy.per_token);
            self.retained.limiters.get_or_create(entry.id_str(), rate)
        });
        limiter.check()
    }
}

/// The live token a session cookie names, if its MAC and expiry hold.
fn session_token<'i>(
    sessions: &auth::Sessions,
    tokens: &'i TokenIndex,
    cookie: &[u8],
    unix_now: i64,
) -> Option<&'i TokenEntry> {
    let claim = sessions.claim(cookie)?;
    let entry = tokens.find_id(&claim.id)?;
    (sessions.verify(cookie, entry.hash(), &claim, unix_now) && entry.is_live(unix_now))
        .then_some(entry)
}

/// Whether the request's `Accept` names `text/html` (a browser navigating).
fn accepts_html(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"text/html"))
    })
}

/// `/.tollgate/login?next=<the target, percent-encoded>`.
fn sign_in_location(uri: &Uri) -> HeaderValue {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut location = format!("{}?next=", auth::session::LOGIN_PATH);
    crate::auth::session::percent_encode(target.as_bytes(), &mut location);
    HeaderValue::from_str(&location)
        .unwrap_or_else(|_| HeaderValue::from_static("/.tollgate/login"))
}

/// Whether a request comes from a page of the same origin:
/// `Sec-Fetch-Site: same-origin`, or an `Origin` equal to the request's own
/// scheme and host (the listener's scheme; the `Host` or `:authority`).
pub(super) fn same_origin(head: Head<'_>, tls: bool) -> bool {
    if head
        .headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin")
    {
        return true;
    }
    let (Some(origin), Some(host)) = (
        head.headers.get(ORIGIN),
        crate::proxy::headers::client_host(head.headers, head.uri),
    ) else {
        return false;
    };
    let scheme: &[u8] = if tls { b"https://" } else { b"http://" };
    let origin = origin.as_bytes();
    origin.len() == scheme.len() + host.len()
        && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
        && origin[scheme.len()..].eq_ignore_ascii_case(host.as_bytes())
}

/// `tollgate explain`'s token: the live entry with this id, and why not.
fn by_id<'i>(
    tokens: &'i TokenIndex,
    id: &str,
    unix_now: i64,
    trace: &mut impl Trace,
) -> Result<&'i TokenEntry, Reject> {
    let Some(entry) = tokens.find_id(id) else {
        trace.note("token", format_args!("no token with id {id:?}"));
        return Err(Reject::InvalidToken);
    };
    if trace.on() {
        let expires = entry.expires_at.map_or("never".to_string(), |t| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        });
        trace.note(
            "token",
            format_args!(
                "{id}; scopes [{}]; read-only {}; disabled {}; expires {expires}",
                entry.scopes.names.join(", "),
                entry.read_only,
                entry.disabled,
            ),
        );
    }
    if !entry.is_live(unix_now) {
        let why = if entry.disabled {
            "disabled"
        } else {
            "expired"
        };
        trace.note("token", format_args!("{why}"));
        return Err(Reject::InvalidToken);
    }
    Ok(entry)
}

/// `Content-Length` as a number; `None` when absent (hyper has already
/// refused malformed or conflicting framing).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
