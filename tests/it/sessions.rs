//! Browser sessions (the contract, §7.4) through the real server: the login page,
//! the session cookie as a credential on `browser: true` routes only, its
//! removal before forwarding, revocation, forged cookies, the same-origin
//! rule for writes, safe redirects, and `paths.merge_slashes`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use crate::tls::{client_config, connect_tls, Pki};

const SECRET: &str = "a-session-secret-of-at-least-32-bytes!";

/// The standard config with a `browser: true` route at `/app`, sessions,
/// and `top` inserted before `timeouts:` (e.g. limits).
fn browser_yaml(up: SocketAddr, top: &str) -> String {
    let routes = format!(
        "  - prefix: /app\n    upstream: http://{up}\n    scopes: [scope:agent-ui]\n    browser: true\n"
    );
    let config = gateway_yaml(up, &routes).replacen("timeouts:", &format!("{top}timeouts:"), 1);
    format!("{config}sessions:\n  secret: \"{SECRET}\"\n  lifetime: 1h\n")
}

async fn browser_gateway(top: &str) -> (Upstream, Gw) {
    let up = Upstream::start().await;
    let gw = Gw::start(&browser_yaml(up.addr, top), &tokens_yaml()).await;
    (up, gw)
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let mut s = format!("{k}=");
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    s.push(char::from(b));
                } else {
                    s.push_str(&format!("%{b:02X}"));
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn login(addr: SocketAddr, token: &str, next: &str) -> Raw {
    request(
        addr,
        "POST",
        "/.tollgate/login",
        &["Content-Type: application/x-www-form-urlencoded"],
        &form(&[("token", token), ("next", next)]),
    )
    .await
}

/// `name=value` of a `Set-Cookie` answer.
fn cookie_pair(r: &Raw) -> String {
    let set = r.header("set-cookie").expect("a Set-Cookie");
    set.split(';').next().unwrap().to_string()
}

async fn session(addr: SocketAddr, token: &str) -> String {
    let r = login(addr, token, "/app").await;
    assert_eq!(r.status, 303, "{}", r.head);
    cookie_pair(&r)
}

#[tokio::test]
async fn login_sets_a_session_cookie_that_is_a_credential_on_browser_routes_only() {
    let (up, gw) = browser_gateway("").await;
    let page = get(gw.addr(), "/.tollgate/login?next=%2Fapp%2Fdash", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains(r#"<label for="token">"#), "{html}");
    assert!(html.contains(r#"name="next" value="/app/dash""#), "{html}");
    assert!(html.contains("tollgate"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external asset: {html}"
    );

    let r = login(gw.addr(), AGENT, "/app/dash?tab=1").await;
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(r.header("location"), Some("/app/dash?tab=1"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("tollgate_session=v1."), "{set}");
    for attr in ["; Path=/", "; Max-Age=3600", "; HttpOnly", "; SameSite=Lax"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain listener: {set}");
    let cookie = cookie_pair(&r);
    assert!(!cookie.contains(AGENT) && !cookie.contains(&sha(AGENT)[..16]));
    assert!(up.seen().is_empty(), "the login was forwarded");

    // A credential on the browser route; the session cookie stays here,
    // the others pass.
    let with = format!("Cookie: theme=dark; {cookie}; lang=en");
    let r = get(gw.addr(), "/app/dash", &[&with]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
    let lines = gw.access.lines(3).await;
    assert_eq!(lines[0]["token_id"], serde_json::Value::Null, "the form");
    assert_eq!(
        lines[1]["token_id"], "agent",
        "the login line names the token"
    );
    assert_eq!(lines[2]["token_id"], "agent");
    up.clear();

    // Not a credential elsewhere, and removed there too.
    let r = get(gw.addr(), "/api/v1/x", &[&with]).await;
    assert_refusal(&r, 401, "missing_token");
    let r = get(gw.addr(), "/api/v1/x", &[&with, &bearer(AGENT)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().header("cookie"), Some("theme=dark; lang=en"));
    up.clear();

    // One credential per request: a session beside a token is ambiguous.
    let r = get(gw.addr(), "/app/dash", &[&with, &bearer(AGENT)]).await;
    assert_refusal(&r, 400, "ambiguous_credentials");
    let twice = format!("Cookie: {cookie}; {cookie}");
    assert_refusal(
        &get(gw.addr(), "/app", &[&twice]).await,
        400,
        "ambiguous_credentials",
    );

    // Logout clears the cookie.
    let r = request(gw.addr(), "POST", "/.tollgate/logout", &[], "").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/.tollgate/login"));
    let cleared = r.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with("tollgate_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_browser_without_a_credential_is_sent_to_the_login_page() {
    let (up, gw) = browser_gateway("").await;
    let html = "Accept: text/html,application/xhtml+xml;q=0.9";
    let r = get(gw.addr(), "/app/dash?tab=1&x=%2F", &[html]).await;
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(
        r.header("location"),
        Some("/.tollgate/login?next=/app/dash%3Ftab%3D1%26x%3D%252F")
    );
    // The login page puts it back as it was.
    let page = get(gw.addr(), r.header("location").unwrap(), &[]).await;
    let body = String::from_utf8_lossy(&page.body);
    assert!(
        body.contains(r#"value="/app/dash?tab=1&amp;x=%2F""#),
        "{body}"
    );
    // Scripts and API clients get the contract's answer.
    assert_refusal(
        &get(gw.addr(), "/app/dash", &[]).await,
        401,
        "missing_token",
    );
    let json = "Accept: application/json";
    assert_refusal(
        &get(gw.addr(), "/app/dash", &[json]).await,
        401,
        "missing_token",
    );
    // Not a browser route: 401 even for a browser.
    assert_refusal(
        &get(gw.addr(), "/api/v1/x", &[html]).await,
        401,
        "missing_token",
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn without_sessions_the_login_path_is_routed_like_any_other() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/.tollgate/login", &[]).await;
    assert_refusal(&r, 404, "no_route");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn revoking_the_token_ends_its_sessions() {
    let (up, gw) = browser_gateway("").await;
    let cookie = format!("Cookie: {}", session(gw.addr(), AGENT).await);
    assert_eq!(get(gw.addr(), "/app", &[&cookie]).await.status, 200);
    let revoked = tokens_yaml().replacen(
        "scopes: [scope:agent-ui]\n",
        "scopes: [scope:agent-ui]\n    disabled: true\n",
        1,
    );
    replace_file(&gw.path("tokens.yaml"), &revoked);
    let changed = std::time::Instant::now();
    loop {
        let r = get(gw.addr(), "/app", &[&cookie]).await;
        if r.status == 401 {
            assert_refusal(&r, 401, "invalid_token");
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "still accepted after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forwarded = up.seen().len();
    assert_refusal(
        &get(gw.addr(), "/app", &[&cookie]).await,
        401,
        "invalid_token",
    );
    assert_eq!(up.seen().len(), forwarded);
}

#[tokio::test]
async fn forged_tampered_or_expired_cookies_are_invalid_tokens() {
    let (up, gw) = browser_gateway("").await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let hash = tollgate::tokens::TokenHash::of(AGENT.as_bytes());
    let signer = |secret: &str| {
        tollgate::auth::Sessions::new(&tollgate::config::SessionSettings {
            secret: tollgate::config::SessionSecret(secret.as_bytes().into()),
            lifetime: Duration::from_secs(3600),
            cookie: "tollgate_session".into(),
        })
    };
    let ours = signer(SECRET);
    // The gateway's own signature is accepted.
    let good = ours.issue("agent", &hash, now + 600);
    let r = get(
        gw.addr(),
        "/app",
        &[&format!("Cookie: tollgate_session={good}")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let forged_elsewhere =
        signer("another-secret-another-secret-another").issue("agent", &hash, now + 600);
    let expired = ours.issue("agent", &hash, now - 1);
    let other_secret = ours.issue("agent", &tollgate::tokens::TokenHash::of(b"old"), now + 600);
    let tampered = good.replacen(".", ".YW", 1);
    let unknown = ours.issue("nobody", &hash, now + 600);
    for value in [
        forged_elsewhere,
        expired,
        other_secret,
        tampered,
        unknown,
        String::new(),
        "junk".into(),
    ] {
        let r = get(
            gw.addr(),
            "/app",
            &[&format!("Cookie: tollgate_session={value}")],
        )
        .await;
        assert_refusal(&r, 401, "invalid_token");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="tollgate", error="invalid_token""#)
        );
    }
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_write_with_a_session_must_come_from_the_same_origin() {
    let (up, gw) = browser_gateway("").await;
    let cookie = format!("Cookie: {}", session(gw.addr(), AGENT).await);
    for refused in [
        &[][..],
        &["Origin: http://evil.example"][..],
        &["Origin: https://gw.test"],
        &["Sec-Fetch-Site: cross-site"],
        &["Sec-Fetch-Site: same-site", "Origin: http://sub.gw.test"],
    ] {
        let mut headers = vec![cookie.as_str()];
        headers.extend_from_slice(refused);
        let r = request(gw.addr(), "POST", "/app/items", &headers, "x=1").await;
        assert_refusal(&r, 403, "cross_site_request");
    }
    // Reading is not restricted; a method override counts as writing.
    assert_eq!(get(gw.addr(), "/app/items", &[&cookie]).await.status, 200);
    let r = get(
        gw.addr(),
        "/app/items",
        &[&cookie, "X-HTTP-Method-Override: DELETE"],
    )
    .await;
    assert_refusal(&r, 403, "cross_site_request");
    for allowed in ["Origin: http://gw.test", "Sec-Fetch-Site: same-origin"] {
        let r = request(gw.addr(), "POST", "/app/items", &[&cookie, allowed], "x=1").await;
        assert_eq!(r.status, 200, "{allowed}: {}", r.head);
    }
    // A bearer token is not a session: no origin rule.
    let r = request(gw.addr(), "POST", "/app/items", &[&bearer(AGENT)], "x=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 4);
}

#[tokio::test]
async fn next_leads_only_to_a_path_of_this_site() {
    let (_up, gw) = browser_gateway("").await;
    for (next, want) in [
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        ("/\\evil", "/"),
        ("/\t/evil.example", "/"),
        ("evil", "/"),
        ("", "/"),
        ("/app/x?y=1", "/app/x?y=1"),
    ] {
        let r = login(gw.addr(), AGENT, next).await;
        assert_eq!(r.status, 303, "{next:?}");
        assert_eq!(r.header("location"), Some(want), "{next:?}");
    }
}

#[tokio::test]
async fn failed_logins_count_against_the_address_and_never_show_the_token() {
    let (up, gw) =
        browser_gateway("limits:\n  failed_auth_per_ip: { requests: 3, per: 1h, burst: 3 }\n")
            .await;
    let guess = "tg_guessed-secret-<b>\"value\"";
    let r = login(gw.addr(), guess, "/app").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.header("set-cookie").is_none());
    let html = String::from_utf8_lossy(&r.body);
    assert!(html.contains(r#"role="alert""#), "{html}");
    assert!(!html.contains("guessed") && !html.contains(guess), "{html}");
    // An empty field is not a guess.
    let r = login(gw.addr(), "", "/app").await;
    assert_eq!(r.status, 401);
    // A forged cookie counts like any invalid token.
    let r = get(
        gw.addr(),
        "/app",
        &["Cookie: tollgate_session=v1.YWdlbnQ.9999999999.AAAA"],
    )
    .await;
    assert_refusal(&r, 401, "invalid_token");
    let r = login(gw.addr(), "another-guess", "/app").await;
    assert_eq!(r.status, 401);
    // Locked out: the login, even with a valid token, and every request.
    let r = login(gw.addr(), AGENT, "/app").await;
    assert_eq!(r.status, 429, "{}", r.head);
    assert!(r.header("retry-after").is_some());
    assert!(r.header("set-cookie").is_none());
    assert_refusal(
        &get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await,
        429,
        "rate_limited",
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_login_body_over_8_kib_is_refused() {
    let (_up, gw) = browser_gateway("").await;
    let big = format!("token={}", "a".repeat(9000));
    let r = request(gw.addr(), "POST", "/.tollgate/login", &[], &big).await;
    assert_refusal(&r, 413, "body_too_large");
    let r = request(gw.addr(), "PUT", "/.tollgate/login", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
}

#[tokio::test]
async fn gateways_sharing_the_secret_accept_each_others_sessions() {
    let up = Upstream::start().await;
    let a = Gw::start(&browser_yaml(up.addr, ""), &tokens_yaml()).await;
    let b = Gw::start(&browser_yaml(up.addr, ""), &tokens_yaml()).await;
    let other = browser_yaml(up.addr, "").replace(SECRET, "a-different-secret-of-32-bytes-or-more");
    let c = Gw::start(&other, &tokens_yaml()).await;
    let cookie = format!("Cookie: {}", session(a.addr(), AGENT).await);
    let r = get(b.addr(), "/app", &[&cookie]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(up.only().header("x-tollgate-token-id"), Some("agent"));
    assert_refusal(
        &get(c.addr(), "/app", &[&cookie]).await,
        401,
        "invalid_token",
    );
}

#[tokio::test]
async fn merge_slashes_matches_and_forwards_the_merged_path() {
    let up = Upstream::start().await;
    let merging = gateway_yaml(up.addr, "") + "paths:\n  merge_slashes: true\n";
    let gw = Gw::start(&merging, &tokens_yaml()).await;
    let r = get(gw.addr(), "//api/v1//info///x?a=//b", &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(up.only().target, "/api/v1/info/x?a=//b");
    // Every other path rule still holds.
    assert_refusal(
        &get(gw.addr(), "//api/v1//./x", &[&bearer(AGENT)]).await,
        400,
        "bad_path",
    );
    assert_refusal(
        &get(gw.addr(), "//api/v1/%2e%2e/admin", &[&bearer(AGENT)]).await,
        400,
        "bad_path",
    );
    let (plain_up, plain) = standard().await;
    assert_refusal(
        &get(plain.addr(), "//api/v1/info", &[&bearer(AGENT)]).await,
        400,
        "bad_path",
    );
    assert_refusal(
        &get(plain.addr(), "/api/v1//info", &[&bearer(AGENT)]).await,
        400,
        "bad_path",
    );
    assert!(plain_up.seen().is_empty());
}

#[tokio::test]
async fn the_cookie_is_secure_on_a_tls_listener() {
    let pki = Pki::new("sessions test CA");
    let certs = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let (cert, key) = pki.leaf("gateway", 1).write(certs.path());
    let config = browser_yaml(up.addr, "").replacen(
        "listen:\n  - addr: 127.0.0.1:0\n",
        &format!(
            "listen:\n  - addr: 127.0.0.1:0\n  - addr: 127.0.0.1:0\n    tls:\n      cert: {}\n      key: {}\n",
            cert.display(),
            key.display()
        ),
        1,
    );
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let mut tls = connect_tls(
        gw.launched.data_addrs[1],
        client_config(&pki.ca_pem(), &[b"http/1.1"]),
    )
    .await;
    let body = form(&[("token", AGENT), ("next", "/app")]);
    let req = format!(
        "POST /.tollgate/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let set = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(set.ends_with("; Secure"), "{set}");
    // And not on the plain listener of the same gateway.
    let r = login(gw.addr(), AGENT, "/app").await;
    assert!(!r.header("set-cookie").unwrap().contains("Secure"));
}

#[tokio::test]
async fn another_site_cannot_sign_a_browser_in_or_out() {
    let (_up, gw) = browser_gateway("").await;
    let body = form(&[("token", AGENT), ("next", "/app")]);
    for from in ["Origin: http://evil.example", "Sec-Fetch-Site: cross-site"] {
        for path in ["/.tollgate/login", "/.tollgate/logout"] {
            let r = request(gw.addr(), "POST", path, &[from], &body).await;
            assert_refusal(&r, 403, "cross_site_request");
            assert!(r.header("set-cookie").is_none());
        }
    }
    let r = request(
        gw.addr(),
        "POST",
        "/.tollgate/login",
        &["Origin: http://gw.test"],
        &body,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.head);
}
