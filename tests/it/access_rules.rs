//! Route access rules and more credential forms (the contract's §7.1 and
//! §7.2): `read_methods`, `remove_request_headers` on a route and for every
//! route, and the `basic` scheme — each asserted on what the upstream got.

use base64::Engine as _;

use crate::support::*;

/// The standard config plus the routes and settings these tests need.
fn config(up: std::net::SocketAddr) -> String {
    let extra = format!(
        "  - prefix: /graphql\n    upstream: http://{up}\n    scopes: [scope:grafana-plugin]\n    read_methods: [GET, HEAD, OPTIONS, POST]\n\
         \x20 - prefix: /manage\n    upstream: http://{up}\n    scopes: [scope:grafana-plugin, scope:agent-ui]\n    read_methods: []\n    anonymous: read\n\
         \x20 - prefix: /nocodb\n    upstream: http://{up}\n    scopes: [\"*\"]\n    remove_request_headers: [xc-auth, Cookie]\n"
    );
    gateway_yaml(up, &extra)
        .replace(
            "auth:\n  headers: [xc-token]\n",
            "auth:\n  schemes: [bearer, token, basic]\n  headers: [xc-token]\n",
        )
        .replace(
            "routes:\n",
            "forwarding:\n  remove_request_headers: [x-internal-user]\nroutes:\n",
        )
}

async fn start() -> (Upstream, Gw) {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(up.addr), &tokens_yaml()).await;
    (up, gw)
}

fn basic(user: &str, password: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {pair}")
}

#[tokio::test]
async fn a_read_only_token_may_post_where_post_reads_and_nowhere_else() {
    let (up, gw) = start().await;
    let query = r#"{"query":"{ sites { name } }"}"#;
    let r = request(gw.addr(), "POST", "/graphql/", &[&bearer(GRAFANA)], query).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, query.as_bytes());
    assert_eq!(seen.header("x-tollgate-token-id"), Some("grafana"));
    up.clear();
    // The same token and method on a route with the default read methods.
    let r = request(
        gw.addr(),
        "POST",
        "/api/v2/query",
        &[&bearer(GRAFANA)],
        query,
    )
    .await;
    assert_refusal(&r, 403, "read_only_token");
    // An override naming a method outside the route's list still writes.
    let r = request(
        gw.addr(),
        "POST",
        "/graphql/",
        &[&bearer(GRAFANA), "X-HTTP-Method-Override: DELETE"],
        query,
    )
    .await;
    assert_refusal(&r, 403, "read_only_token");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn with_empty_read_methods_every_request_writes() {
    let (up, gw) = start().await;
    let r = get(
        gw.addr(),
        "/manage/health?cmd=SILENCE%20ALL",
        &[&bearer(GRAFANA)],
    )
    .await;
    assert_refusal(&r, 403, "read_only_token");
    // Anonymous reads are allowed on the route, but nothing reads here.
    let r = get(gw.addr(), "/manage/health", &[]).await;
    assert_refusal(&r, 401, "missing_token");
    assert!(up.seen().is_empty());
    // A token that may write passes.
    let r = get(gw.addr(), "/manage/health", &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.only().target, "/manage/health");
}

#[tokio::test]
async fn removed_headers_never_reach_the_upstream_in_any_spelling_or_count() {
    let (up, gw) = start().await;
    let r = get(
        gw.addr(),
        "/nocodb/api/v2/tables",
        &[
            &bearer(ADMIN),
            "xc-auth: other-users-jwt",
            "XC-Auth: second-copy",
            "Cookie: session=other-user",
            "X-Internal-User: root",
            "X-Kept: yes",
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert!(seen.header("xc-auth").is_none(), "{:?}", seen.headers);
    assert!(seen.header("cookie").is_none(), "{:?}", seen.headers);
    assert!(
        seen.header("x-internal-user").is_none(),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-kept"), Some("yes"));
    up.clear();
    // forwarding.remove_request_headers holds on every route; a route's own
    // list only on that route.
    let r = get(
        gw.addr(),
        "/api/v1/data",
        &[
            &bearer(AGENT),
            "X-Internal-User: root",
            "xc-auth: kept-here",
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert!(seen.header("x-internal-user").is_none());
    assert_eq!(seen.header("xc-auth"), Some("kept-here"));
}

#[tokio::test]
async fn a_removed_header_sent_as_a_trailer_never_reaches_the_upstream() {
    let (up, gw) = start().await;
    let req = format!(
        "POST /nocodb/upload HTTP/1.1\r\nHost: t\r\n{}\r\nTransfer-Encoding: chunked\r\nTrailer: xc-auth\r\n\r\n\
         5\r\nhello\r\n0\r\nxc-auth: other-users-jwt\r\n\r\n",
        bearer(ADMIN)
    );
    let r = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.only();
    assert_eq!(seen.body, "hello");
    assert!(seen.header("xc-auth").is_none());
    let trailers = seen.trailers.unwrap_or_default();
    assert!(trailers.get("xc-auth").is_none(), "{trailers:?}");
}

#[tokio::test]
async fn basic_with_the_token_as_password_authenticates_and_is_not_forwarded() {
    let (up, gw) = start().await;
    let r = get(
        gw.addr(),
        "/api/v1/data",
        &[&basic("netdata-pandas", AGENT)],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert!(seen.header("authorization").is_none());
    // A wrong password, a pair without ':' and bad base64 are invalid
    // tokens, answered alike.
    let wrong = get(gw.addr(), "/api/v1/data", &[&basic("u", "nope")]).await;
    assert_refusal(&wrong, 401, "invalid_token");
    let no_colon = base64::engine::general_purpose::STANDARD.encode(AGENT);
    let r = get(
        gw.addr(),
        "/api/v1/data",
        &[&format!("Authorization: Basic {no_colon}")],
    )
    .await;
    assert_refusal(&r, 401, "invalid_token");
    assert_eq!(r.body, wrong.body);
    let r = get(gw.addr(), "/api/v1/data", &["Authorization: Basic !!!"]).await;
    assert_refusal(&r, 401, "invalid_token");
    // Basic beside a bearer token is two credentials.
    let r = get(
        gw.addr(),
        "/api/v1/data",
        &[&basic("u", AGENT), "xc-token: agent-secret"],
    )
    .await;
    assert_refusal(&r, 400, "ambiguous_credentials");
}

#[tokio::test]
async fn without_basic_in_the_schemes_basic_is_not_a_credential() {
    let (up, gw) = standard().await;
    let r = get(gw.addr(), "/api/v1/data", &[&basic("u", AGENT)]).await;
    assert_refusal(&r, 401, "missing_token");
    assert!(up.seen().is_empty());
}

#[test]
fn a_credential_header_cannot_be_removed_and_check_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = config(up).replace(
        "remove_request_headers: [xc-auth, Cookie]",
        "remove_request_headers: [xc-auth, XC-Token]",
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &text).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = text.lines().position(|l| l.contains("XC-Token")).unwrap() + 1;
    let expected = format!(
        "gateway.yaml:{line}: routes[9].remove_request_headers[1]: \"xc-token\" is auth.headers[0], a credential header"
    );
    assert!(stderr.contains(&expected), "{stderr}\nwanted: {expected}");
}

#[test]
fn explain_names_the_read_methods_and_the_removed_headers() {
    let dir = tempfile::tempdir().unwrap();
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config(up)).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let explain = |method: &str, path_: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([
                "explain",
                "-c",
                path.to_str().unwrap(),
                "--token-id",
                "grafana",
                method,
                path_,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain("POST", "/graphql");
    assert!(
        text.contains("read methods: [GET, HEAD, OPTIONS, POST]"),
        "{text}"
    );
    assert!(text.contains("writes: false"), "{text}");
    assert!(text.contains("decision: forward"), "{text}");
    let text = explain("GET", "/manage/health");
    assert!(text.contains("read methods: []"), "{text}");
    assert!(text.contains("403 read_only_token"), "{text}");
    let text = explain("GET", "/nocodb/x");
    assert!(
        text.contains("removed before forwarding: x-internal-user, xc-auth, cookie"),
        "{text}"
    );
}
