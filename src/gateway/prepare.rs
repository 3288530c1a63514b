//! Preparing the upstream request: every request-header rule in one place.
//!
//! In order: the client's `Host` is kept aside for `X-Forwarded-Host`;
//! hygiene deletes what must not reach the upstream (forwarding headers of
//! untrusted peers, hop-by-hop headers, the credential headers unless
//! forwarded, `_` names, `X-Tollgate-*`, the session cookie); then the gateway's own headers are
//! set (`Host`, framing, identity, forwarding, `X-Request-Id`), so nothing
//! a client sent can pose as one of them. Invariant: the target sent is the
//! one admission authorised; the body streams, limited to the route's size.

use std::sync::Arc;

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Request};
use hyper::body::Incoming;

use super::{Conn, Exchange};
use crate::policy::{Policy, Route};
use crate::proxy::body::{Progress, RequestBody};
use crate::proxy::headers::{self, Forwarding, Hygiene};

static CHUNKED: HeaderValue = HeaderValue::from_static("chunked");
static KEEP_ALIVE: HeaderValue = HeaderValue::from_static("keep-alive");

/// The request to send upstream for an admitted `req`, and — when its body
/// streams — where the body's progress is noted.
pub fn upstream_request(
    policy: &Policy,
    route: &Route,
    conn: &Conn,
    ex: &mut Exchange<'_>,
    req: Request<Incoming>,
) -> (Request<RequestBody>, Option<Arc<Progress>>) {
    let (mut parts, body) = req.into_parts();
    let trusted_peer = ex.client.peer_trusted;
    let host = headers::client_host(&parts.headers, &parts.uri);
    headers::clean_request(
        &mut parts.headers,
        &Hygiene {
            trusted_peer,
            credentials: &policy.credentials,
            websocket: ex.websocket,
        },
    );
    // The session cookie is the gateway's own on every route, a credential
    // or not; the other cookies pass.
    if let Some(sessions) = &policy.sessions {
        sessions.strip(&mut parts.headers);
    }
    // Never forwarded, whatever the spelling or count (names are lowercase).
    if let Some(names) = &route.remove_headers {
        for name in names.iter() {
            parts.headers.remove(name);
        }
    }
    // The upstream's own Host; `hyper_util`'s client keeps a Host it finds.
    parts.headers.insert(HOST, route.upstream.host.clone());
    // The gateway's own hop-by-hop header, for servers that close an
    // HTTP/1.1 connection after each answer unless asked (Netdata 1.x);
    // an upgrade keeps its `Connection: upgrade`.
    if route.send_keep_alive && !ex.websocket {
        parts.headers.insert(CONNECTION, KEEP_ALIVE.clone());
    }
    // The client's framing is gone with Transfer-Encoding. A body of
    // unknown length goes upstream chunked: hyper's client would otherwise
    // send a GET or HEAD without one, silently dropping it.
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
            identity: ex.token.map(|e| (e.id.header(), &e.scopes.header)),
            request_id: &ex.request_id,
        },
    );
    parts.uri = std::mem::take(&mut ex.upstream_target);
    let streams = !http_body::Body::is_end_stream(&body);
    let mut body = RequestBody::new(body, route.max_body_bytes, route.remove_headers.clone());
    let progress = streams.then(Progress::new);
    if let Some(progress) = &progress {
        body = body.with_progress(progress.clone());
    }
    (Request::from_parts(parts, body), progress)
}
