//! `Reject`: every answer the gateway makes itself instead of forwarding.
//!
//! One exhaustive `match` maps a variant to status, `error` code, message and
//! headers, so a new variant forces a decision. Invariant: a response body
//! never carries anything the client did not already know — no token, no
//! hash, no upstream address — and the answer for an unknown, revoked,
//! expired or mistyped token is one and the same.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::proxy::body::{BodyEnd, ResponseBody};

/// Why the gateway answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    // Caused by the client (4xx).
    BadPath,
    AmbiguousCredentials,
    MethodNotAllowed,
    NoRoute,
    MissingToken,
    InvalidToken,
    IpNotAllowed,
    /// Carries the route's prebuilt `WWW-Authenticate` challenge.
    InsufficientScope(HeaderValue),
    ReadOnlyToken,
    /// A session-authenticated write that did not come from the same
    /// origin.
    CrossSiteRequest,
    /// No credential on a `browser: true` route, asked by a browser: 303
    /// to the login page at this `Location` (a `missing_token` answer).
    SignIn(HeaderValue),
    BodyTooLarge,
    UriTooLong,
    /// The request body's framing is malformed (bad chunked encoding).
    BadRequest,
    /// The request head is not HTTP/1.1 (hyper could not parse it).
    MalformedHead,
    /// The request head is larger than `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The client went away before its answer (logged as 499, never
    /// answered: there is no one to answer).
    ClientClosed,
    /// The token's own limit; whole seconds to wait, at least 1.
    RateLimited {
        retry_after: u64,
    },
    /// The client address is locked out by the failed-auth guard (code
    /// `rate_limited`, a message of its own).
    LockedOut {
        retry_after: u64,
    },
    // The gateway is not serving (503).
    NotReady,
    Draining,
    // Caused by the upstream (502/504).
    BadGateway,
    GatewayTimeout,
}

/// What the gateway answers for one kind of refusal.
#[derive(Debug)]
pub struct Answer {
    /// The status code (499 for a client that went away, which has no
    /// `StatusCode` constant).
    pub status: u16,
    /// The `error` field of the body.
    pub code: &'static str,
    /// The `message` field of the body: one sentence.
    pub message: &'static str,
    /// `{"error":"<code>","message":"<message>"}`.
    pub body: &'static str,
}

/// An [`Answer`] whose JSON body is put together by the compiler. Codes and
/// messages hold no `"` or `\` (a test parses every body).
macro_rules! answer {
    ($status:literal, $code:literal, $message:literal) => {
        Answer {
            status: $status,
            code: $code,
            message: $message,
            body: concat!("{\"error\":\"", $code, "\",\"message\":\"", $message, "\"}"),
        }
    };
}

impl Reject {
    /// Status, `error` code, message and the JSON body, all fixed when
    /// compiled: a refusal formats nothing.
    pub fn answer(&self) -> &'static Answer {
        use Reject::*;
        match self {
            BadPath => &answer!(
                400,
                "bad_path",
                "The request target is not a canonical origin-form path."
            ),
            AmbiguousCredentials => &answer!(
                400,
                "ambiguous_credentials",
                "The request carries more than one credential."
            ),
            MethodNotAllowed => &answer!(
                405,
                "method_not_allowed",
                "TRACE and CONNECT are not allowed."
            ),
            NoRoute => &answer!(404, "no_route", "No route matches this path."),
            MissingToken => &answer!(401, "missing_token", "This route requires an API token."),
            InvalidToken => &answer!(401, "invalid_token", "The API token is not valid."),
            IpNotAllowed => &answer!(
                403,
                "ip_not_allowed",
                "The token may not be used from this address."
            ),
            InsufficientScope(_) => &answer!(
                403,
                "insufficient_scope",
                "The token has none of the scopes this route requires."
            ),
            ReadOnlyToken => &answer!(
                403,
                "read_only_token",
                "This request writes and the token is read-only."
            ),
            CrossSiteRequest => &answer!(
                403,
                "cross_site_request",
                "A request that writes with a browser session must come from this site."
            ),
            SignIn(_) => &answer!(303, "missing_token", "Sign in to continue."),
            BodyTooLarge => &answer!(
                413,
                "body_too_large",
                "The request body is larger than this route allows."
            ),
            BadRequest => &answer!(400, "bad_request", "The request body is malformed."),
            MalformedHead => &answer!(400, "bad_request", "The request is not valid HTTP."),
            HeadersTooLarge => &answer!(
                431,
                "headers_too_large",
                "The request headers are larger than this gateway accepts."
            ),
            ClientClosed => &answer!(
                499,
                "client_closed",
                "The client closed the connection before the answer."
            ),
            UriTooLong => &answer!(414, "uri_too_long", "The request target is too long."),
            RateLimited { .. } => &answer!(429, "rate_limited", "Too many requests; retry later."),
            LockedOut { .. } => &answer!(
                429,
                "rate_limited",
                "Too many failed credentials from this client address; it is locked out for now."
            ),
            NotReady | Draining => &answer!(
                503,
                "not_ready",
                "The gateway is not ready to serve requests."
            ),
            BadGateway => &answer!(502, "bad_gateway", "The upstream could not be reached."),
            GatewayTimeout => &answer!(
                504,
                "gateway_timeout",
                "The upstream did not answer in time."
            ),
        }
    }

    /// The `error` code, also the `reason` label of metrics.
    pub fn code(&self) -> &'static str {
        self.answer().code
    }

    /// Builds the response. `challenges` holds the realm-specific
    /// `WWW-Authenticate` values of the current snapshot.
    pub fn into_response<E: BodyEnd>(self, challenges: &Challenges) -> Response<ResponseBody<E>> {
        let answer = self.answer();
        let mut resp = Response::new(ResponseBody::full(Bytes::from_static(
            answer.body.as_bytes(),
        )));
        *resp.status_mut() =
            StatusCode::from_u16(answer.status).expect("every answer's status is in range");
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Reject::MissingToken => {
                h.insert(WWW_AUTHENTICATE, challenges.missing.clone());
            }
            Reject::InvalidToken => {
                h.insert(WWW_AUTHENTICATE, challenges.invalid.clone());
            }
            Reject::InsufficientScope(challenge) => {
                h.insert(WWW_AUTHENTICATE, challenge);
            }
            Reject::RateLimited { retry_after } | Reject::LockedOut { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            Reject::Draining => {
                h.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Reject::SignIn(location) => {
                h.insert(LOCATION, location);
            }
            Reject::BadPath
            | Reject::AmbiguousCredentials
            | Reject::MethodNotAllowed
            | Reject::NoRoute
            | Reject::IpNotAllowed
            | Reject::ReadOnlyToken
            | Reject::CrossSiteRequest
            | Reject::BodyTooLarge
            | Reject::UriTooLong
            | Reject::BadRequest
            | Reject::MalformedHead
            | Reject::HeadersTooLarge
            | Reject::ClientClosed
            | Reject::NotReady
            | Reject::BadGateway
            | Reject::GatewayTimeout => {}
        }
        resp
    }
}

/// The whole HTTP/1.1 answer for `reject`, closing the connection, for a
/// request that never became a `Request` (a head hyper could not parse).
/// Only for refusals without headers of their own.
pub fn http1_bytes(reject: &Reject, request_id: &HeaderValue) -> Bytes {
    let answer = reject.answer();
    let reason = StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let date = time::OffsetDateTime::now_utc()
        .format(HTTP_DATE)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-request-id: ",
            answer.status,
            answer.body.len(),
        )
        .as_bytes(),
    );
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(format!("\r\nconnection: close\r\ndate: {date}\r\n\r\n").as_bytes());
    out.extend_from_slice(answer.body.as_bytes());
    out.into()
}

/// `Date`'s format (RFC 9110's IMF-fixdate).
const HTTP_DATE: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// The `WWW-Authenticate` values that depend on `auth.realm`.
#[derive(Debug, Clone)]
pub struct Challenges {
    pub missing: HeaderValue,
    pub invalid: HeaderValue,
    realm: String,
}

impl Challenges {
    pub fn new(realm: &str) -> Self {
        let realm = realm.replace(['\\', '"'], "");
        Challenges {
            missing: header(&format!("Bearer realm=\"{realm}\"")),
            invalid: header(&format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\""
            )),
            realm,
        }
    }

    /// The `insufficient_scope` challenge for a route's scopes, in order.
    pub fn insufficient_scope(&self, scopes: &[String]) -> HeaderValue {
        header(&format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
            self.realm,
            scopes.join(" ").replace(['\\', '"'], "")
        ))
    }
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<ResponseBody>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn every_body_is_the_json_of_its_code_and_message() {
        use Reject::*;
        let all = [
            BadPath,
            AmbiguousCredentials,
            MethodNotAllowed,
            NoRoute,
            MissingToken,
            InvalidToken,
            IpNotAllowed,
            InsufficientScope(HeaderValue::from_static("Bearer")),
            ReadOnlyToken,
            CrossSiteRequest,
            SignIn(HeaderValue::from_static("/.tollgate/login")),
            BodyTooLarge,
            UriTooLong,
            BadRequest,
            ClientClosed,
            RateLimited { retry_after: 1 },
            LockedOut { retry_after: 1 },
            NotReady,
            Draining,
            BadGateway,
            GatewayTimeout,
        ];
        for r in all {
            let a = r.answer();
            let v: serde_json::Value = serde_json::from_str(a.body).unwrap();
            assert_eq!(
                v,
                serde_json::json!({ "error": a.code, "message": a.message }),
                "{r:?}"
            );
            assert!(a.message.ends_with('.'), "{r:?}");
        }
    }

    #[tokio::test]
    async fn invalid_token_body_and_challenge_follow_the_spec() {
        let c = Challenges::new("tollgate");
        let r = Reject::InvalidToken.into_response::<()>(&c);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"tollgate\", error=\"invalid_token\""
        );
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["error"], "invalid_token");
        assert!(v["message"].as_str().unwrap().ends_with('.'));
    }

    #[test]
    fn insufficient_scope_lists_route_scopes_in_order() {
        let c = Challenges::new("tollgate");
        let v = c.insufficient_scope(&["scope:agent-ui".into(), "scope:grafana-plugin".into()]);
        assert_eq!(
            v,
            "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"scope:agent-ui scope:grafana-plugin\""
        );
    }

    #[test]
    fn rate_limited_retry_after_is_at_least_one_second() {
        let r = Reject::RateLimited { retry_after: 0 }.into_response::<()>(&Challenges::new("t"));
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
