//! Header hygiene: what the gateway deletes from a request before it goes
//! upstream, what it adds, and what it deletes from the upstream's answer.
//!
//! Invariant: no client-sent header can pose as the gateway's. Every
//! `X-Tollgate-*` header is deleted, and the identity and forwarding headers
//! are added only after cleaning, so naming one in `Connection` cannot remove
//! the gateway's own. Cleaning is one scan over the header names and
//! allocates only when more than a handful of headers must go.

use std::net::IpAddr;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::auth::Credentials;

/// The authenticated token's id, set by the gateway.
pub const X_TOLLGATE_TOKEN_ID: HeaderName = HeaderName::from_static("x-tollgate-token-id");
/// The authenticated token's scopes, space-separated, set by the gateway.
pub const X_TOLLGATE_SCOPES: HeaderName = HeaderName::from_static("x-tollgate-scopes");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Request-Id`, on every response and sent upstream.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `Keep-Alive` (hop-by-hop).
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection` (hop-by-hop, non-standard).
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `HTTP2-Settings` (hop-by-hop, part of an `h2c` upgrade).
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Headers with which some upstream frameworks and servers replace the
/// request path (Symfony and IIS URL Rewrite: `X-Original-URL`,
/// `X-Rewrite-URL`; nginx `auth_request`: `X-Original-URI`; Traefik and
/// path-prefix aware frameworks: `X-Forwarded-Prefix`, `X-Forwarded-Uri`,
/// `X-Forwarded-Path`). Always deleted.
pub const URL_OVERRIDE_HEADERS: [&str; 6] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
];

/// Longest client `X-Request-Id` the gateway reuses.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// How a request is cleaned.
#[derive(Debug, Clone, Copy)]
pub struct Hygiene<'a> {
    /// The peer is one of `client_ip.trusted_proxies`: its `X-Forwarded-*`,
    /// `Forwarded` and `X-Real-IP` are kept.
    pub trusted_peer: bool,
    /// The credential headers, removed unless `auth.forward_credentials`.
    pub credentials: &'a Credentials,
    /// The request is an authorised WebSocket upgrade: keep
    /// `Upgrade: websocket` and send `Connection: upgrade`.
    pub websocket: bool,
}

/// Deletes from a client request every header that must not reach the
/// upstream (the contract, §5 Forwarding):
///
/// - every header whose name contains `_`;
/// - every `X-Tollgate-*`, even from a trusted proxy;
/// - `X-Forwarded-*`, `Forwarded`, `X-Real-IP`, unless `trusted_peer`;
/// - hop-by-hop: `Connection` and every header it names, `Keep-Alive`,
///   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
///   `Proxy-Authorization`, `HTTP2-Settings`; so `Upgrade: h2c` never goes
///   upstream;
/// - `Authorization` (any scheme) and the token headers, unless
///   `forward_credentials`;
/// - the URL-override headers ([`URL_OVERRIDE_HEADERS`]: `X-Original-URL`,
///   `X-Original-URI`, `X-Rewrite-URL`, `X-Forwarded-Prefix`,
///   `X-Forwarded-Uri`, `X-Forwarded-Path`), from every peer, trusted or
///   not: the gateway authorised one path, and an upstream that routes by
///   one of these would serve another.
///
/// A header that `Connection` names but that a rule above decides on (the
/// credential, forwarding and `X-Tollgate-*` headers, `X-Request-Id`), and
/// `Host` and `Content-Length`, follow their own rule rather than the
/// client's nomination.
///
/// With `websocket`, ends with exactly `Upgrade: websocket` and
/// `Connection: upgrade`. `Host` is left in place.
pub fn clean_request(headers: &mut HeaderMap, opts: &Hygiene<'_>) {
    let connection = Nominations::of(headers);
    remove_where(headers, |name| {
        request_rule_removes(name, opts)
            || (connection.names(name) && !request_rule_decides(name, opts))
    });
    if opts.websocket {
        headers.insert(UPGRADE, WEBSOCKET);
        headers.insert(CONNECTION, UPGRADE_TOKEN);
    }
}

fn request_rule_removes(name: &HeaderName, opts: &Hygiene<'_>) -> bool {
    let s = name.as_str();
    match s {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade"
        | "proxy-authorization"
        | "http2-settings" => true,
        "authorization" => opts.credentials.removes(name),
        _ if URL_OVERRIDE_HEADERS.contains(&s) => true,
        "forwarded" | "x-real-ip" => !opts.trusted_peer,
        _ if s.contains('_') || s.starts_with("x-tollgate-") => true,
        _ if s.starts_with("x-forwarded-") => !opts.trusted_peer,
        _ => opts.credentials.removes(name),
    }
}

/// Headers whose fate a rule of their own decides, whatever `Connection`
/// names.
fn request_rule_decides(name: &HeaderName, opts: &Hygiene<'_>) -> bool {
    let s = name.as_str();
    matches!(
        s,
        "host" | "content-length" | "forwarded" | "x-real-ip" | "x-request-id"
    ) || s.starts_with("x-tollgate-")
        || s.starts_with("x-forwarded-")
        || opts.credentials.is_credential_header(name)
}

/// Deletes the hop-by-hop headers from an upstream response: `Connection`
/// and every header it names (but never `Content-Length`), `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, and `Upgrade`
/// unless the response is a `101` WebSocket switch, which then carries
/// `Connection: upgrade`.
pub fn clean_response(headers: &mut HeaderMap, websocket_101: bool) {
    let connection = Nominations::of(headers);
    remove_where(headers, |name| {
        let s = name.as_str();
        match s {
            "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer"
            | "transfer-encoding" => true,
            "upgrade" => !websocket_101,
            "content-length" => false,
            _ => connection.names(name),
        }
    });
    if websocket_101 {
        headers.insert(CONNECTION, UPGRADE_TOKEN);
    }
}

/// What the gateway adds to a cleaned request.
#[derive(Debug, Clone)]
pub struct Forwarding<'a> {
    /// The TCP peer's address as a header value ([`peer_value`]).
    pub peer: &'a HeaderValue,
    /// The peer is a trusted proxy: its forwarding headers are built on.
    pub trusted_peer: bool,
    /// The listener's scheme, `"http"` or `"https"`.
    pub proto: &'static str,
    /// The client's `Host` or `:authority` ([`client_host`]).
    pub host: Option<HeaderValue>,
    /// Token id and space-separated scopes of an authenticated request.
    pub identity: Option<(&'a HeaderValue, &'a HeaderValue)>,
    /// This request's id ([`request_id`] or a new one).
    pub request_id: &'a HeaderValue,
}

/// Adds the identity and forwarding headers to a request already passed
/// through [`clean_request`]:
///
/// - `X-Tollgate-Token-Id` and `X-Tollgate-Scopes` when authenticated;
/// - `X-Forwarded-For`: the peer appended (`, `) to what a trusted proxy
///   sent (several such headers combined into one), or the peer alone;
/// - `X-Forwarded-Proto` and `X-Forwarded-Host`, each unless a trusted
///   proxy already sent it;
/// - `X-Request-Id`, replacing any.
pub fn add_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    if let Some((id, scopes)) = f.identity {
        headers.insert(X_TOLLGATE_TOKEN_ID, id.clone());
        headers.insert(X_TOLLGATE_SCOPES, scopes.clone());
    }

    let xff = forwarded_for(headers, f.peer, f.trusted_peer);
    headers.insert(X_FORWARDED_FOR, xff);

    if !(f.trusted_peer && headers.contains_key(X_FORWARDED_PROTO)) {
        let proto = match f.proto {
            "https" => Some(HTTPS),
            "http" => Some(HTTP),
            other => HeaderValue::from_str(other).ok(),
        };
        if let Some(proto) = proto {
            headers.insert(X_FORWARDED_PROTO, proto);
        }
    }
    if !(f.trusted_peer && headers.contains_key(X_FORWARDED_HOST)) {
        if let Some(host) = &f.host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }

    headers.insert(X_REQUEST_ID, f.request_id.clone());
}

/// A peer's address as it goes into `X-Forwarded-For` (IPv4-mapped IPv6
/// as IPv4); formatted once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_canonical().to_string())
        .expect("an IP address is a valid header value")
}

fn forwarded_for(headers: &HeaderMap, peer: &HeaderValue, trusted_peer: bool) -> HeaderValue {
    let mut chain = Vec::new();
    if trusted_peer {
        for v in headers.get_all(X_FORWARDED_FOR) {
            let v = trim_ows(v.as_bytes());
            if v.is_empty() {
                continue;
            }
            chain.extend_from_slice(v);
            chain.extend_from_slice(b", ");
        }
    }
    if chain.is_empty() {
        return peer.clone();
    }
    chain.extend_from_slice(peer.as_bytes());
    // Parts of valid header values and an address; never panic on a
    // request all the same.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)).unwrap_or_else(|_| peer.clone())
}

/// The client's idea of the host: the URI authority (HTTP/2 `:authority`)
/// without any userinfo, else the one `Host` header (HTTP/1). `None` when
/// there is neither, several `Host` headers, or a `Host` that is not a
/// plain `host[:port]` (a path, a userinfo, a space), so a client cannot
/// smuggle a path into `X-Forwarded-Host`.
pub fn client_host(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    if let Some(authority) = uri.authority() {
        let s = authority.as_str();
        let host = s.rsplit_once('@').map_or(s, |(_, h)| h);
        return HeaderValue::from_str(host).ok();
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) if is_plain_authority(h.as_bytes()) => Some(h.clone()),
        _ => None,
    }
}

/// `host[:port]` as `http::uri::Authority` reads it, without a userinfo.
fn is_plain_authority(b: &[u8]) -> bool {
    is_simple_host_port(b) || (!b.contains(&b'@') && http::uri::Authority::try_from(b).is_ok())
}

/// The common `Host`, told apart without a parser: a name or IPv4 address
/// of letters, digits, `.` and `-`, and maybe a port of up to five digits
/// at most 65535. Every such value is a plain authority; anything else
/// (an IPv6 literal, say) goes to the parser.
fn is_simple_host_port(b: &[u8]) -> bool {
    let (host, port) = match b.iter().position(|&c| c == b':') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let host_ok = (1..=255).contains(&host.len())
        && host
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
    });
    host_ok && port_ok
}

/// The client's `X-Request-Id`, if it sent exactly one and it is 1 to 128
/// characters of `A–Z a–z 0–9 - _ . :`; else `None` (the caller makes one).
pub fn request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    let (Some(id), None) = (ids.next(), ids.next()) else {
        return None;
    };
    let b = id.as_bytes();
    let ok = (1..=MAX_REQUEST_ID_LEN).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    ok.then(|| id.clone())
}

/// The header names listed by the `Connection` headers of a message.
enum Nominations {
    None,
    One(HeaderValue),
    Many(Vec<HeaderValue>),
}

impl Nominations {
    fn of(headers: &HeaderMap) -> Self {
        let mut all = headers.get_all(CONNECTION).iter();
        match (all.next(), all.next()) {
            (None, _) => Nominations::None,
            // The usual values name no header that is not removed anyway
            // (`Keep-Alive` always is).
            (Some(v), None)
                if v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                    || v.as_bytes().eq_ignore_ascii_case(b"close") =>
            {
                Nominations::None
            }
            (Some(v), None) => Nominations::One(v.clone()),
            _ => Nominations::Many(headers.get_all(CONNECTION).iter().cloned().collect()),
        }
    }

    /// Whether `name` is among the comma-separated options (compared
    /// case-insensitively).
    fn names(&self, name: &HeaderName) -> bool {
        let listed = |v: &HeaderValue| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|opt| trim_ows(opt).eq_ignore_ascii_case(name.as_str().as_bytes()))
        };
        match self {
            Nominations::None => false,
            Nominations::One(v) => listed(v),
            Nominations::Many(vs) => vs.iter().any(listed),
        }
    }
}

/// Removes every header (all its values) whose name `doomed` picks, in one
/// scan; allocates only when more than a few names must go.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let mut picked: [Option<HeaderName>; 6] = Default::default();
    let mut n = 0;
    let mut overflow = false;
    for name in headers.keys() {
        if doomed(name) {
            match picked.get_mut(n) {
                Some(slot) => {
                    *slot = Some(name.clone());
                    n += 1;
                }
                None => {
                    overflow = true;
                    break;
                }
            }
        }
    }
    if overflow {
        let all: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
        for name in &all {
            headers.remove(name);
        }
    } else {
        for name in picked.iter().flatten() {
            headers.remove(name);
        }
    }
}

/// `s` without leading and trailing spaces and tabs (HTTP's optional
/// whitespace).
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const XC_TOKEN: HeaderName = HeaderName::from_static("xc-token");

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn opts(trusted_peer: bool, forward_credentials: bool) -> Hygiene<'static> {
        let credentials = Credentials::new(&crate::config::AuthSettings {
            schemes: vec!["bearer".into()],
            headers: vec![XC_TOKEN],
            all_scope: "scope:all".into(),
            realm: "tollgate".into(),
            forward_credentials,
        });
        Hygiene {
            trusted_peer,
            credentials: Box::leak(Box::new(credentials)),
            websocket: false,
        }
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        v.sort_unstable();
        v
    }

    fn values<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn peer(addr: &str) -> HeaderValue {
        peer_value(addr.parse().unwrap())
    }

    fn forwarding<'a>(
        peer: &'a HeaderValue,
        trusted_peer: bool,
        identity: Option<(&'a HeaderValue, &'a HeaderValue)>,
        request_id: &'a HeaderValue,
    ) -> Forwarding<'a> {
        Forwarding {
            peer,
            trusted_peer,
            proto: "https",
            host: Some(HeaderValue::from_static("api.example.com")),
            identity,
            request_id,
        }
    }

    #[test]
    fn headers_with_underscores_are_dropped() {
        let mut h = map(&[
            ("xc_token", "t"),
            ("x_forwarded_for", "1.2.3.4"),
            ("accept", "*/*"),
        ]);
        clean_request(&mut h, &opts(true, true));
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn spoofed_tollgate_headers_are_dropped_in_any_case_even_from_a_trusted_proxy() {
        for trusted in [false, true] {
            let mut h = map(&[
                ("X-Tollgate-Token-Id", "admin"),
                ("x-TOLLGATE-scopes", "scope:all"),
                ("x-tollgate-anything", "1"),
                ("accept", "*/*"),
            ]);
            clean_request(&mut h, &opts(trusted, false));
            assert_eq!(names(&h), ["accept"], "trusted={trusted}");
        }
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_dropped() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("accept", "*/*"),
        ]);
        clean_request(&mut h, &opts(false, false));
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn forwarding_headers_from_a_trusted_peer_are_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        clean_request(&mut h, &opts(true, false));
        assert_eq!(
            names(&h),
            [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic abc"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("content-length", "3"),
            ("accept", "*/*"),
        ]);
        clean_request(&mut h, &opts(false, true));
        assert_eq!(names(&h), ["accept", "content-length"]);
    }

    #[test]
    fn connection_nominated_headers_are_removed_across_headers_and_case() {
        let mut h = map(&[
            ("connection", "close, X-Foo"),
            ("connection", " x-bar ,,"),
            ("x-foo", "1"),
            ("X-Bar", "2"),
            ("x-baz", "3"),
        ]);
        clean_request(&mut h, &opts(false, false));
        assert_eq!(names(&h), ["x-baz"]);
    }

    #[test]
    fn connection_nominated_headers_are_removed_but_identity_headers_survive() {
        let mut h = map(&[
            (
                "connection",
                "x-tollgate-token-id, X-Tollgate-Scopes, x-request-id, x-forwarded-for",
            ),
            ("x-tollgate-token-id", "admin"),
        ]);
        clean_request(&mut h, &opts(false, false));
        assert!(h.is_empty(), "{:?}", names(&h));
        let (id, scopes) = (
            HeaderValue::from_static("grafana"),
            HeaderValue::from_static("scope:grafana-plugin"),
        );
        let rid = HeaderValue::from_static("req-1");
        add_forwarding(
            &mut h,
            &forwarding(&peer("10.0.0.9"), false, Some((&id, &scopes)), &rid),
        );
        assert_eq!(values(&h, "x-tollgate-token-id"), ["grafana"]);
        assert_eq!(values(&h, "x-tollgate-scopes"), ["scope:grafana-plugin"]);
        assert_eq!(values(&h, "x-request-id"), ["req-1"]);
        assert_eq!(values(&h, "x-forwarded-for"), ["10.0.0.9"]);
    }

    #[test]
    fn connection_cannot_remove_host_content_length_or_a_forwarded_credential() {
        let mut h = map(&[
            (
                "connection",
                "host, content-length, authorization, xc-token, x-forwarded-for",
            ),
            ("host", "api.example.com"),
            ("content-length", "3"),
            ("authorization", "Bearer t"),
            ("xc-token", "t"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        clean_request(&mut h, &opts(true, true));
        assert_eq!(
            names(&h),
            [
                "authorization",
                "content-length",
                "host",
                "x-forwarded-for",
                "xc-token"
            ]
        );
    }

    #[test]
    fn credentials_are_removed_unless_forwarded() {
        let pairs = [
            ("authorization", "Bearer t"),
            ("XC-Token", "t"),
            ("accept", "*/*"),
        ];
        let mut h = map(&pairs);
        clean_request(&mut h, &opts(false, false));
        assert_eq!(names(&h), ["accept"]);
        let mut h = map(&pairs);
        clean_request(&mut h, &opts(false, true));
        assert_eq!(names(&h), ["accept", "authorization", "xc-token"]);
    }

    #[test]
    fn authorization_with_another_scheme_is_removed_like_a_credential() {
        let mut h = map(&[("authorization", "Basic dXNlcjpwYXNz")]);
        clean_request(&mut h, &opts(false, false));
        assert!(h.is_empty());
    }

    #[test]
    fn h2c_upgrade_is_never_forwarded() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ]);
        clean_request(&mut h, &opts(false, false));
        assert!(h.is_empty(), "{:?}", names(&h));

        // Even alongside an authorised WebSocket upgrade.
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]);
        let mut o = opts(false, false);
        o.websocket = true;
        clean_request(&mut h, &o);
        assert_eq!(values(&h, "upgrade"), ["websocket"]);
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        let mut o = opts(false, false);
        o.websocket = true;
        clean_request(&mut h, &o);
        assert_eq!(values(&h, "upgrade"), ["websocket"]);
        assert_eq!(values(&h, "connection"), ["upgrade"]);
        assert_eq!(values(&h, "sec-websocket-version"), ["13"]);
        assert_eq!(
            values(&h, "sec-websocket-key"),
            ["dGhlIHNhbXBsZSBub25jZQ=="]
        );
    }

    #[test]
    fn many_doomed_headers_are_all_removed() {
        let mut pairs: Vec<(String, String)> = (0..20)
            .map(|i| (format!("x-tollgate-{i}"), i.to_string()))
            .collect();
        pairs.push(("accept".into(), "*/*".into()));
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let mut h = map(&borrowed);
        clean_request(&mut h, &opts(false, false));
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn xff_from_an_untrusted_peer_is_replaced_by_the_peer() {
        let mut h = map(&[("x-forwarded-for", "6.6.6.6")]);
        clean_request(&mut h, &opts(false, false));
        let rid = HeaderValue::from_static("r");
        add_forwarding(&mut h, &forwarding(&peer("203.0.113.7"), false, None, &rid));
        assert_eq!(values(&h, "x-forwarded-for"), ["203.0.113.7"]);
    }

    #[test]
    fn xff_from_a_trusted_peer_gets_the_peer_appended_in_one_header() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        clean_request(&mut h, &opts(true, false));
        let rid = HeaderValue::from_static("r");
        add_forwarding(&mut h, &forwarding(&peer("10.0.0.4"), true, None, &rid));
        assert_eq!(
            values(&h, "x-forwarded-for"),
            ["198.51.100.1, 10.0.0.2, 10.0.0.3, 10.0.0.4"]
        );
    }

    #[test]
    fn xff_of_an_ipv4_mapped_peer_is_written_as_ipv4() {
        let mut h = HeaderMap::new();
        let rid = HeaderValue::from_static("r");
        add_forwarding(
            &mut h,
            &forwarding(&peer("::ffff:192.0.2.1"), false, None, &rid),
        );
        assert_eq!(values(&h, "x-forwarded-for"), ["192.0.2.1"]);
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &forwarding(&peer("2001:db8::1"), false, None, &rid));
        assert_eq!(values(&h, "x-forwarded-for"), ["2001:db8::1"]);
    }

    #[test]
    fn proto_and_host_are_added_unless_a_trusted_proxy_sent_them() {
        let rid = HeaderValue::from_static("r");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &forwarding(&peer("10.0.0.1"), false, None, &rid));
        assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&h, "x-forwarded-host"), ["api.example.com"]);

        let mut h = map(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "front.example.com"),
        ]);
        clean_request(&mut h, &opts(true, false));
        add_forwarding(&mut h, &forwarding(&peer("10.0.0.1"), true, None, &rid));
        assert_eq!(values(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&h, "x-forwarded-host"), ["front.example.com"]);

        // A trusted proxy that sent only one of them gets the other added.
        let mut h = map(&[("x-forwarded-proto", "http")]);
        add_forwarding(&mut h, &forwarding(&peer("10.0.0.1"), true, None, &rid));
        assert_eq!(values(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&h, "x-forwarded-host"), ["api.example.com"]);
    }

    #[test]
    fn identity_headers_are_added_only_when_authenticated() {
        let rid = HeaderValue::from_static("r");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &forwarding(&peer("10.0.0.1"), false, None, &rid));
        assert!(!h.contains_key(X_TOLLGATE_TOKEN_ID));
        assert!(!h.contains_key(X_TOLLGATE_SCOPES));
    }

    #[test]
    fn request_id_is_replaced() {
        let mut h = map(&[("x-request-id", "client-id")]);
        let rid = HeaderValue::from_static("gateway-id");
        add_forwarding(&mut h, &forwarding(&peer("10.0.0.1"), false, None, &rid));
        assert_eq!(values(&h, "x-request-id"), ["gateway-id"]);
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-internal, content-length"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("trailer", "x-sum"),
            ("te", "trailers"),
            ("proxy-connection", "close"),
            ("upgrade", "h2c"),
            ("x-internal", "1"),
            ("content-length", "10"),
            ("content-type", "text/plain"),
        ]);
        clean_response(&mut h, false);
        assert_eq!(names(&h), ["content-length", "content-type"]);
    }

    #[test]
    fn a_lone_keep_alive_or_close_connection_header_goes_and_names_nothing_else() {
        for value in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut h = map(&[
                ("connection", value),
                ("keep-alive", "timeout=5"),
                ("content-length", "3"),
                ("content-type", "text/plain"),
                ("x-close", "kept"),
            ]);
            clean_response(&mut h, false);
            assert_eq!(
                names(&h),
                ["content-length", "content-type", "x-close"],
                "{value}"
            );
        }
    }

    #[test]
    fn websocket_101_keeps_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        clean_response(&mut h, true);
        assert_eq!(values(&h, "upgrade"), ["websocket"]);
        assert_eq!(values(&h, "connection"), ["upgrade"]);
        assert!(h.contains_key("sec-websocket-accept"));
    }

    #[test]
    fn request_id_accepts_only_safe_ids() {
        let ok = |v: &str| request_id(&map(&[("x-request-id", v)])).is_some();
        assert!(ok("0b8e3c1e-5d2f-4f7a-9c1d-2b3a4c5d6e7f"));
        assert!(ok("a"));
        assert!(ok("A-z_0.9:x"));
        assert!(ok(&"a".repeat(128)));
        assert!(!ok(&"a".repeat(129)));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!ok("a/b"));
        assert!(!ok("a\"b"));
        assert!(request_id(&HeaderMap::new()).is_none());
        assert!(request_id(&map(&[("x-request-id", "a"), ("x-request-id", "b")])).is_none());
        assert_eq!(request_id(&map(&[("X-Request-ID", "abc")])).unwrap(), "abc");
    }

    #[test]
    fn a_simple_host_is_one_the_authority_parser_accepts_too() {
        for ok in [
            "a",
            "api.example.com",
            "127.0.0.1:19081",
            "a-b.c:1",
            "x:65535",
            "X.Y",
        ] {
            assert!(is_simple_host_port(ok.as_bytes()), "{ok}");
            assert!(http::uri::Authority::try_from(ok).is_ok(), "{ok}");
        }
        for other in [
            "", ":80", "a:", "a:65536", "a:123456", "a:8a", "a b", "a/b", "u@h", "[::1]:80",
            "a:80:80", "a_b",
        ] {
            assert!(!is_simple_host_port(other.as_bytes()), "{other}");
        }
        // Those go to the parser, which still takes the IPv6 literal.
        assert!(is_plain_authority(b"[::1]:80"));
        assert!(!is_plain_authority(b"u@h"));
        assert!(!is_plain_authority(b"a/b"));
    }

    #[test]
    fn client_host_is_the_authority_or_the_host_header() {
        let h = map(&[("host", "a.example.com:8080")]);
        let origin: Uri = "/x".parse().unwrap();
        assert_eq!(client_host(&h, &origin).unwrap(), "a.example.com:8080");

        let h2: Uri = "https://b.example.com/x".parse().unwrap();
        assert_eq!(client_host(&h, &h2).unwrap(), "b.example.com");

        let userinfo: Uri = "https://user:pw@c.example.com:443/x".parse().unwrap();
        assert_eq!(
            client_host(&HeaderMap::new(), &userinfo).unwrap(),
            "c.example.com:443"
        );

        assert!(client_host(&HeaderMap::new(), &origin).is_none());
        let two = map(&[("host", "a"), ("host", "b")]);
        assert!(client_host(&two, &origin).is_none());
    }

    #[test]
    fn a_host_header_that_is_not_a_plain_authority_is_not_forwarded() {
        let origin: Uri = "/x".parse().unwrap();
        for bad in [
            "evil.example/admin",
            "user@evil.example",
            "evil.example?x",
            "evil.example#x",
            "a b",
            "",
        ] {
            let h = map(&[("host", bad)]);
            assert!(client_host(&h, &origin).is_none(), "{bad:?}");
        }
        for good in [
            "a.example.com",
            "a.example.com:8443",
            "[::1]:80",
            "10.0.0.1",
        ] {
            let h = map(&[("host", good)]);
            assert_eq!(client_host(&h, &origin).unwrap(), good);
        }
    }

    #[test]
    fn url_override_headers_are_dropped_even_from_a_trusted_proxy() {
        for trusted in [false, true] {
            let mut h = map(&[
                ("X-Original-URL", "/api/v1/admin"),
                ("x-original-uri", "/admin"),
                ("X-Rewrite-URL", "/admin"),
                ("X-Forwarded-Prefix", "/admin"),
                ("x-forwarded-uri", "/admin"),
                ("X-FORWARDED-PATH", "/admin"),
                ("x-forwarded-proto", "https"),
                ("accept", "*/*"),
            ]);
            clean_request(&mut h, &opts(trusted, false));
            let want: &[&str] = if trusted {
                &["accept", "x-forwarded-proto"]
            } else {
                &["accept"]
            };
            assert_eq!(names(&h), want, "trusted={trusted}");
        }
    }
}
