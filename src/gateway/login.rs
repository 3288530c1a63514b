//! The gateway's own pages when `sessions` is configured (the contract, §7.4):
//! `GET /.tollgate/login` (the form), `POST /.tollgate/login` (check a
//! token as §5 does, set the session cookie, 303 to `next`), `POST
//! /.tollgate/logout` (clear it). Never forwarded.
//!
//! A login is judged like a request with that token: not ready → 503, an
//! address locked out by `failed_auth_per_ip` → 429, an unknown, disabled,
//! expired or mistyped token → 401 and counted against the address,
//! `allowed_ips` → 403; a POST from another site's page → 403
//! `cross_site_request` (login CSRF). Invariant: the submitted token is read, hashed
//! and dropped; no page ever contains it, and `next` leads only to a path
//! of this site.

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{Admission, Exchange};
use crate::auth::session::{self, Sessions, LOGIN_PATH, LOGOUT_PATH};
use crate::metrics::Limit;
use crate::proxy::body::{BodyEnd, ResponseBody};
use crate::reject::Reject;

/// Largest login form accepted (413 beyond).
pub const MAX_FORM_BYTES: usize = 8 * 1024;

/// One of the gateway's own pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Login,
    Logout,
}

impl Page {
    /// The page at `path`, if it is one.
    pub fn at(path: &str) -> Option<Page> {
        match path {
            LOGIN_PATH => Some(Page::Login),
            LOGOUT_PATH => Some(Page::Logout),
            _ => None,
        }
    }
}

/// Answers a request for one of the gateway's pages.
pub async fn answer<'p, E: BodyEnd>(
    admission: &Admission<'p>,
    sessions: &Sessions,
    page: Page,
    ex: &mut Exchange<'p>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody<E>>, Reject> {
    let policy = admission.policy;
    if admission.draining {
        return Err(Reject::Draining);
    }
    let Some(tokens) = admission.tokens.filter(|_| admission.listening) else {
        return Err(Reject::NotReady);
    };
    let name = policy.settings.auth.realm.as_str();
    let next = req
        .uri()
        .query()
        .and_then(|q| session::form_field(q.as_bytes(), "next"));
    if let Some(retry_after) = policy.failed_auth.blocked(ex.client.ip) {
        admission.retained.metrics.rate_limited(Limit::FailedAuth);
        ex.error = Some(Reject::RateLimited { retry_after }.code());
        let mut resp = form(
            StatusCode::TOO_MANY_REQUESTS,
            name,
            next.as_deref(),
            Some("Too many failed sign-ins from this address. Try again later."),
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
        return Ok(resp);
    }
    // A form posted from another site must not sign the browser in (or
    // out): a browser's POST says where it comes from; a script's says
    // nothing and is judged by its token alone.
    if req.method() == Method::POST && !from_this_site(&req, ex.tls) {
        return Err(Reject::CrossSiteRequest);
    }
    match (page, req.method()) {
        (Page::Login, &Method::GET | &Method::HEAD) => {
            return Ok(form(StatusCode::OK, name, next.as_deref(), None));
        }
        (Page::Login, &Method::POST) => {}
        (Page::Logout, &Method::POST) => {
            let mut resp = redirect(LOGIN_PATH);
            resp.headers_mut()
                .insert(SET_COOKIE, sessions.clear_cookie(ex.tls));
            return Ok(resp);
        }
        _ => return Ok(method_not_allowed(page)),
    }
    // POST /.tollgate/login.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(Reject::BodyTooLarge);
    }
    let body = match Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Reject::BodyTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    let next = session::form_field(&body, "next").or(next);
    let token = session::form_field(&body, "token").unwrap_or_default();
    if token.is_empty() {
        return Ok(form(
            StatusCode::UNAUTHORIZED,
            name,
            next.as_deref(),
            Some("Enter an API token."),
        ));
    }
    let now = ex
        .ts
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let Some(entry) = crate::auth::lookup(tokens, &token, now) else {
        drop(token);
        policy.failed_auth.record_failure(ex.client.ip);
        ex.error = Some(Reject::InvalidToken.code());
        admission
            .retained
            .metrics
            .denied(Reject::InvalidToken.code());
        return Ok(form(
            StatusCode::UNAUTHORIZED,
            name,
            next.as_deref(),
            Some("That token is not valid."),
        ));
    };
    drop(token);
    if !entry.allows_ip(ex.client.ip) {
        ex.error = Some(Reject::IpNotAllowed.code());
        admission
            .retained
            .metrics
            .denied(Reject::IpNotAllowed.code());
        return Ok(form(
            StatusCode::FORBIDDEN,
            name,
            next.as_deref(),
            Some("That token may not be used from this address."),
        ));
    }
    ex.token = Some(entry);
    let lifetime = match entry.expires_at {
        Some(at) => sessions.lifetime_secs.min(at - now),
        None => sessions.lifetime_secs,
    }
    .max(1);
    let value = sessions.issue(entry.id_str(), entry.hash(), now.saturating_add(lifetime));
    let target = next
        .as_deref()
        .filter(|n| session::is_local_path(n))
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("/");
    let mut resp = redirect(target);
    resp.headers_mut()
        .insert(SET_COOKIE, sessions.set_cookie(&value, lifetime, ex.tls));
    Ok(resp)
}

/// Whether a POST came from a page of this site, or from no page at all
/// (no `Origin`, no `Sec-Fetch-Site`).
fn from_this_site(req: &Request<Incoming>, tls: bool) -> bool {
    let h = req.headers();
    if !h.contains_key(http::header::ORIGIN) && !h.contains_key("sec-fetch-site") {
        return true;
    }
    super::admit::same_origin(super::Head::of(req), tls)
}

fn redirect<E: BodyEnd>(location: &str) -> Response<ResponseBody<E>> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let location =
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    resp.headers_mut().insert(LOCATION, location);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn method_not_allowed<E: BodyEnd>(page: Page) -> Response<ResponseBody<E>> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from_static(
        br#"{"error":"method_not_allowed","message":"This page takes GET or POST."}"#,
    )));
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    let allow = match page {
        Page::Login => "GET, HEAD, POST",
        Page::Logout => "POST",
    };
    let h = resp.headers_mut();
    h.insert(http::header::ALLOW, HeaderValue::from_static(allow));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The sign-in page: `status`, the gateway's name (`auth.realm`), the
/// page to return to, and an error to show.
fn form<E: BodyEnd>(
    status: StatusCode,
    name: &str,
    next: Option<&[u8]>,
    error: Option<&str>,
) -> Response<ResponseBody<E>> {
    let next = next
        .filter(|n| session::is_local_path(n))
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("/");
    let error = error.map_or(String::new(), |e| {
        format!(
            r#"<p class="error" role="alert" id="error">{}</p>"#,
            escape(e)
        )
    });
    let html = PAGE
        .replace("{name}", &escape(name))
        .replace("{error}", &error)
        .replace("{next}", &escape(next))
        .replace("{action}", LOGIN_PATH);
    let mut resp = Response::new(ResponseBody::full(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp
}

/// HTML-escapes text for an element or a quoted attribute.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · {name}</title>
<style>
  :root { color-scheme: light dark; }
  * { box-sizing: border-box; }
  body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
         font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         background: #eef1f5; color: #1d2330; }
  main { width: min(92vw, 24rem); background: #fff; border-radius: 12px; padding: 2rem;
         box-shadow: 0 1px 3px rgba(0,0,0,.08), 0 8px 24px rgba(0,0,0,.08); }
  .brand { font-size: .8rem; letter-spacing: .08em; text-transform: uppercase; color: #5b6475; margin: 0; }
  h1 { font-size: 1.4rem; margin: .25rem 0 1.25rem; }
  label { display: block; font-weight: 600; margin-bottom: .35rem; }
  input[type=password] { width: 100%; padding: .65rem .75rem; font: inherit; border: 1px solid #c3c9d4;
         border-radius: 8px; background: #fff; color: inherit; }
  input[type=password]:focus { outline: 2px solid #3461d1; outline-offset: 1px; border-color: #3461d1; }
  .hint { font-size: .85rem; color: #5b6475; margin: .4rem 0 1.25rem; }
  button { width: 100%; padding: .7rem; font: inherit; font-weight: 600; color: #fff; background: #3461d1;
         border: 0; border-radius: 8px; cursor: pointer; }
  button:hover { background: #2a50ad; }
  .error { background: #fdecec; color: #9b1c1c; border: 1px solid #f5c2c2; border-radius: 8px;
         padding: .6rem .75rem; margin: 0 0 1rem; }
  @media (prefers-color-scheme: dark) {
    body { background: #12151c; color: #e6e9ef; }
    main { background: #1c2029; box-shadow: none; }
    input[type=password] { background: #12151c; border-color: #3a4150; }
    .brand, .hint { color: #9aa3b5; }
    .error { background: #3a1618; color: #f6c9c9; border-color: #6b2a2e; }
  }
</style>
</head>
<body>
<main>
  <p class="brand">{name}</p>
  <h1>Sign in</h1>
  {error}
  <form method="post" action="{action}">
    <input type="hidden" name="next" value="{next}">
    <label for="token">API token</label>
    <input type="password" id="token" name="token" autocomplete="current-password" required autofocus
           aria-describedby="token-hint">
    <p class="hint" id="token-hint">Paste the API token you were given. It is checked and never shown.</p>
    <button type="submit">Sign in</button>
  </form>
</main>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
