//! Tests of `compile`: defaults, expansion, and each validation rule with
//! the line and key path it reports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "UPSTREAM" => Some("http://10.0.0.5:8000".into()),
        "PORT" => Some("9000".into()),
        "LONG_SECRET" => Some("s3cr3t-0123456789-0123456789-0123456789".into()),
        "SHORT_SECRET" => Some("s3cr3t-short".into()),
        _ => None,
    }
}

const MINIMAL: &str = "\
listen:
  - addr: 127.0.0.1:8080
tokens:
  source: file
  path: tokens.yaml
routes:
  - prefix: /api
    upstream: http://127.0.0.1:19999
    scopes: [\"*\"]
";

fn compile_at(path: &Path, text: &str) -> Result<Settings, ConfigErrors> {
    compile_with(path, text, &env)
}

fn ok(text: &str) -> Settings {
    compile_at(Path::new("config/gateway.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// Every error line of loading `text` as `g.yaml`.
fn errors(text: &str) -> Vec<String> {
    match compile_at(Path::new("g.yaml"), text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// MINIMAL with `line` replaced by `with`.
fn edit(line: &str, with: &str) -> String {
    assert!(MINIMAL.contains(line), "{line}");
    MINIMAL.replacen(line, with, 1)
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let s = ok(MINIMAL);
    assert_eq!(s.file, PathBuf::from("config/gateway.yaml"));
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.listeners[0].addr.to_string(), "127.0.0.1:8080");
    assert!(s.listeners[0].tls.is_none());
    assert!(s.admin.is_none());
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.log.level, "info");
    assert!(s.log.access);
    assert_eq!(
        s.tokens.kind,
        SourceKind::File {
            path: PathBuf::from("config/tokens.yaml")
        }
    );
    assert_eq!(s.tokens.query, None);
    assert_eq!(s.tokens.refresh_interval, Duration::from_secs(5));
    assert_eq!(s.auth.schemes, vec!["bearer", "token"]);
    assert!(s.auth.headers.is_empty());
    assert_eq!(s.auth.all_scope, "scope:all");
    assert_eq!(s.auth.realm, "tollgate");
    assert!(!s.auth.forward_credentials);
    assert!(s.client_ip.trusted_proxies.is_empty());
    assert_eq!(s.limits.backend, LimitBackend::Local);
    assert_eq!(
        (
            s.limits.per_token.requests.get(),
            s.limits.per_token.per,
            s.limits.per_token.burst.get()
        ),
        (100, Duration::from_secs(1), 200)
    );
    let f = s.limits.failed_auth_per_ip;
    assert_eq!(
        (f.requests.get(), f.per, f.burst.get()),
        (20, Duration::from_secs(60), 20)
    );
    assert_eq!(s.limits.max_header_bytes, 16_384);
    assert_eq!(s.limits.max_body_bytes, None);
    assert_eq!(s.limits.max_connections, None);
    let t = s.timeouts;
    assert_eq!(
        [
            t.header_read,
            t.upstream_connect,
            t.upstream_response,
            t.idle,
            t.shutdown_grace
        ],
        [10, 3, 30, 60, 30].map(Duration::from_secs)
    );
    let r = &s.routes[0];
    assert_eq!(r.prefix, "/api");
    assert_eq!(r.upstream, "http://127.0.0.1:19999/");
    assert_eq!(r.scopes, RouteScopes::AnyToken);
    assert!(!r.anonymous_read && !r.strip_prefix);
    assert_eq!(
        (
            r.upstream_response_timeout,
            r.max_body_bytes,
            &r.upstream_ca
        ),
        (None, None, &None)
    );
    assert!(s.warnings.is_empty());
}

#[test]
fn every_section_of_the_spec_sample_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    for f in ["tls/cert.pem", "tls/key.pem", "ca.pem"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let text = "\
listen:
  - addr: 0.0.0.0:8080
  - addr: \"[::]:8443\"
    tls:
      cert: tls/cert.pem
      key: tls/key.pem
admin:
  addr: 127.0.0.1:9901
log: { format: text, level: \"info,tollgate=debug\", access: false }
tokens:
  source: sqlite
  path: tokens.db
  query: SELECT id, token, scopes FROM t
  refresh_interval: 250ms
auth:
  schemes: [Bearer]
  headers: [XC-Token]
  all_scope: admin
  realm: api
  forward_credentials: true
client_ip:
  trusted_proxies: [10.0.0.0/8, 192.168.1.7, \"::1\"]
limits:
  backend: redis
  redis_url: redis://127.0.0.1:6379/0
  per_token: { requests: 10, per: 1s }
  failed_auth_per_ip: { requests: 5, per: 1m, burst: 7 }
  max_header_bytes: 8192
  max_body_bytes: 1048576
timeouts: { header_read: 1s, upstream_connect: 2s, upstream_response: 3s, idle: 4s, shutdown_grace: 0s }
routes:
  - prefix: /api/v3
    upstream: https://api.internal/base
    scopes: [scope:agent-ui, scope:grafana-plugin]
    anonymous: read
    strip_prefix: true
    upstream_response_timeout: 60s
    max_body_bytes: 10485760
    upstream_ca: ca.pem
  - prefix: /
    upstream: http://127.0.0.1:19999
    scopes: [x]
    anonymous: none
";
    let path = dir.path().join("gateway.yaml");
    let s = compile_at(&path, text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.listeners[1].addr.to_string(), "[::]:8443");
    assert_eq!(
        s.listeners[1].tls,
        Some(TlsFiles {
            cert: dir.path().join("tls/cert.pem"),
            key: dir.path().join("tls/key.pem"),
        })
    );
    assert_eq!(s.admin.unwrap().to_string(), "127.0.0.1:9901");
    assert_eq!((s.log.format, s.log.access), (LogFormat::Text, false));
    assert_eq!(
        s.tokens.kind,
        SourceKind::Sqlite {
            path: dir.path().join("tokens.db")
        }
    );
    assert_eq!(
        s.tokens.query.as_deref(),
        Some("SELECT id, token, scopes FROM t")
    );
    assert_eq!(s.tokens.refresh_interval, Duration::from_millis(250));
    assert_eq!(s.auth.schemes, vec!["bearer"]);
    assert_eq!(
        s.auth.headers,
        vec![http::HeaderName::from_static("xc-token")]
    );
    assert_eq!(
        (s.auth.all_scope.as_str(), s.auth.realm.as_str()),
        ("admin", "api")
    );
    assert!(s.auth.forward_credentials);
    let proxies: Vec<String> = s
        .client_ip
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
    assert_eq!(
        s.limits.backend,
        LimitBackend::Redis {
            url: "redis://127.0.0.1:6379/0".into()
        }
    );
    assert_eq!(
        s.limits.per_token.burst.get(),
        10,
        "burst defaults to requests"
    );
    assert_eq!(s.limits.failed_auth_per_ip.burst.get(), 7);
    assert_eq!(
        (s.limits.max_header_bytes, s.limits.max_body_bytes),
        (8192, Some(1_048_576))
    );
    assert_eq!(s.timeouts.idle, Duration::from_secs(4));
    assert_eq!(s.timeouts.shutdown_grace, Duration::ZERO);
    let r = &s.routes[0];
    assert_eq!(
        r.scopes,
        RouteScopes::OneOf(vec!["scope:agent-ui".into(), "scope:grafana-plugin".into()])
    );
    assert!(r.anonymous_read && r.strip_prefix);
    assert_eq!(r.upstream_response_timeout, Some(Duration::from_secs(60)));
    assert_eq!(r.max_body_bytes, Some(10_485_760));
    assert_eq!(r.upstream_ca, Some(dir.path().join("ca.pem")));
    assert!(!s.routes[1].anonymous_read);
}

#[test]
fn environment_references_expand_after_yaml_parsing() {
    let text = edit("http://127.0.0.1:19999", "\"${UPSTREAM}\"")
        .replace("127.0.0.1:8080", "'127.0.0.1:${PORT}'")
        .replace("path: tokens.yaml", "path: ${TOKENS:-other.yaml}");
    let s = ok(&text);
    assert_eq!(s.routes[0].upstream, "http://10.0.0.5:8000/");
    assert_eq!(s.listeners[0].addr.port(), 9000);
    assert_eq!(
        s.tokens.kind,
        SourceKind::File {
            path: "config/other.yaml".into()
        }
    );
}

#[test]
fn unset_environment_variable_names_the_key_and_line() {
    let e = errors(&edit("path: tokens.yaml", "path: ${TOKENS_PATH}"));
    assert_eq!(
        e,
        [
            "g.yaml:5: tokens.path: environment variable TOKENS_PATH is not set \
          (set it, or write ${TOKENS_PATH:-default})"
        ]
    );
}

#[test]
fn only_unquoted_lowercase_booleans_are_accepted() {
    for bad in [
        "no",
        "off",
        "\"false\"",
        "'true'",
        "False",
        "TRUE",
        "yes",
        "0",
    ] {
        let text = format!("{MINIMAL}log:\n  access: {bad}\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with("g.yaml:11: log.access: expected true or false"),
            "{bad}: {e:?}"
        );
    }
    assert!(!ok(&format!("{MINIMAL}log:\n  access: false\n")).log.access);
}

#[test]
fn unknown_keys_name_the_path_line_and_allowed_keys() {
    let e = errors(&edit("    scopes:", "    scope: [a]\n    scopes:"));
    assert_eq!(
        e,
        [
            "g.yaml:9: routes[0].scope: unknown key; allowed keys: prefix, upstream, scopes, \
          anonymous, strip_prefix, upstream_response_timeout, max_body_bytes, upstream_ca, read_methods, remove_request_headers, browser, send_keep_alive"
        ]
    );
    let e = errors(&format!(
        "{MINIMAL}limits:\n  per_token: {{ requests: 1, per: 1s, brust: 2 }}\n"
    ));
    assert_eq!(
        e,
        ["g.yaml:11: limits.per_token.brust: unknown key; allowed keys: requests, per, burst"]
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_eq!(
        errors(&edit("    scopes: [\"*\"]\n", "")),
        ["g.yaml:7: routes[0].scopes: is required"]
    );
    assert_eq!(
        errors(&edit("  source: file\n", "")),
        ["g.yaml:3: tokens.source: is required"]
    );
}

#[test]
fn every_validation_error_is_reported_in_file_order() {
    let text = "\
listen:
  - addr: localhost:8080
tokens:
  source: file
routes:
  - prefix: /api/v1/
    upstream: http://127.0.0.1:19999
    scopes: []
  - prefix: /api/v2
    upstream: 127.0.0.1:19999
    scopes: [a]
";
    assert_eq!(
        errors(text),
        [
            "g.yaml:2: listen[0].addr: \"localhost:8080\" is not an IP address and port such as 0.0.0.0:8080 or [::]:8443",
            "g.yaml:3: tokens.path: is required with source: file",
            "g.yaml:6: routes[0].prefix: \"/api/v1/\" must not end with \"/\"",
            "g.yaml:8: routes[0].scopes: is empty; list the scopes that may use this route, or [\"*\"] for any valid token",
            "g.yaml:10: routes[1].upstream: must be an absolute http(s) URL such as http://127.0.0.1:19999",
        ]
    );
}

#[test]
fn duplicate_prefixes_name_both_routes_without_a_line() {
    let text = format!("{MINIMAL}  - prefix: /other\n    upstream: http://h\n    scopes: [a]\n  - prefix: /api\n    upstream: http://h\n    scopes: [a]\n");
    assert_eq!(
        errors(&text),
        ["g.yaml: routes[2].prefix: \"/api\" duplicates routes[0]"]
    );
}

#[test]
fn star_scope_must_stand_alone() {
    let e = errors(&edit("[\"*\"]", "[a, \"*\"]"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("g.yaml:9: routes[0].scopes[1]: \"*\" (any valid token) cannot"),
        "{e:?}"
    );
    let s = ok(&edit("[\"*\"]", "[a, b]"));
    assert_eq!(
        s.routes[0].scopes,
        RouteScopes::OneOf(vec!["a".into(), "b".into()])
    );
}

#[test]
fn at_least_one_listener_and_route_are_required() {
    assert_eq!(
        errors(&edit("  - addr: 127.0.0.1:8080", "  []").replace("listen:\n  []", "listen: []")),
        ["g.yaml:1: listen: needs at least one listener, e.g. - addr: 0.0.0.0:8080"]
    );
    let text = MINIMAL.split("routes:").next().unwrap().to_string() + "routes: []\n";
    assert!(errors(&text)[0].starts_with("g.yaml:6: routes: needs at least one route"));
}

#[test]
fn notify_trigger_on_needs_postgres_a_query_and_a_plain_table_name() {
    let postgres = |extra: &str| {
        edit(
            "  source: file\n  path: tokens.yaml\n",
            &format!("  source: postgres\n  url: postgres://x/y\n{extra}"),
        )
    };
    let s = ok(&postgres(
        "  query: SELECT id, sha256, scopes FROM app.keys\n  notify_trigger_on: app.keys\n",
    ));
    assert_eq!(s.tokens.notify_trigger_on.as_deref(), Some("app.keys"));
    assert_eq!(
        errors(&postgres("  notify_trigger_on: keys\n")),
        ["g.yaml:6: tokens.notify_trigger_on: is only used with source: postgres and a tokens.query (the tollgate_tokens table has its own triggers)"]
    );
    for bad in ["\"keys; DROP TABLE x\"", "a.b.c", "1keys", "\"\""] {
        let e = errors(&postgres(&format!(
            "  query: SELECT id, sha256, scopes FROM keys\n  notify_trigger_on: {bad}\n"
        )));
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].contains("tokens.notify_trigger_on: is not a table name"),
            "{e:?}"
        );
        assert!(!e[0].contains("DROP"), "the value is echoed: {e:?}");
    }
}

#[test]
fn token_source_keys_must_match_the_source() {
    assert_eq!(
        errors(&edit(
            "  source: file\n  path: tokens.yaml\n",
            "  source: postgres\n"
        )),
        ["g.yaml:3: tokens.url: is required with source: postgres"]
    );
    let e = errors(&edit(
        "  path: tokens.yaml\n",
        "  path: tokens.yaml\n  url: postgres://x\n  query: SELECT 1\n",
    ));
    assert_eq!(
        e,
        [
            "g.yaml:6: tokens.url: is only used with source: postgres (source is file; use path)",
            "g.yaml:7: tokens.query: is only used with source: sqlite or postgres",
        ]
    );
    let e = errors(&edit(
        "  source: file\n  path: tokens.yaml\n",
        "  source: postgres\n  url: mysql://x\n",
    ));
    assert_eq!(
        e,
        ["g.yaml:5: tokens.url: must start with postgres:// or postgresql://"]
    );
    let e = errors(&edit("  source: file", "  source: ldap"));
    assert_eq!(
        e,
        ["g.yaml:4: tokens.source: \"ldap\" is not a token source; use file, sqlite or postgres"]
    );
    let s = ok(&edit(
        "  source: file\n  path: tokens.yaml\n",
        "  source: postgres\n  url: ${DB:-postgres://localhost/x}\n",
    ));
    assert_eq!(
        s.tokens.kind,
        SourceKind::Postgres {
            url: "postgres://localhost/x".into()
        }
    );
}

#[test]
fn redis_backend_needs_its_url_and_only_it() {
    let e = errors(&format!("{MINIMAL}limits:\n  backend: redis\n"));
    assert_eq!(
        e,
        ["g.yaml:10: limits.redis_url: is required with backend: redis"]
    );
    let e = errors(&format!("{MINIMAL}limits:\n  redis_url: redis://h\n"));
    assert!(e[0].starts_with("g.yaml:11: limits.redis_url: is only used with backend: redis"));
    let e = errors(&format!(
        "{MINIMAL}limits:\n  backend: redis\n  redis_url: http://user:secret@h\n"
    ));
    assert_eq!(e.len(), 1);
    assert!(!e[0].contains("secret"), "{e:?}");
}

#[test]
fn zero_rates_and_limits_are_refused() {
    let text = format!(
        "{MINIMAL}limits:\n  per_token: {{ requests: 0, per: 1s }}\n  failed_auth_per_ip: {{ requests: 1, per: 0s, burst: 0 }}\n  max_header_bytes: 0\n  max_connections: 0\n"
    );
    assert_eq!(
        errors(&text),
        [
            "g.yaml:11: limits.per_token.requests: must be at least 1",
            "g.yaml:12: limits.failed_auth_per_ip.burst: must be at least 1",
            "g.yaml:12: limits.failed_auth_per_ip.per: \"0s\" must be greater than zero",
            "g.yaml:13: limits.max_header_bytes: must be greater than zero",
            "g.yaml:14: limits.max_connections: must be at least 1 (null for no limit)",
        ]
    );
}

#[test]
fn tls_files_must_be_readable_and_resolve_against_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    let text = edit(
        "  - addr: 127.0.0.1:8080\n",
        "  - addr: 127.0.0.1:8443\n    tls:\n      cert: cert.pem\n      key: missing.pem\n",
    );
    let path = dir.path().join("gateway.yaml");
    let e = compile_at(&path, &text).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        (e.0[0].line, e.0[0].path.as_str()),
        (Some(5), "listen[0].tls.key")
    );
    assert!(
        e.0[0]
            .message
            .starts_with("cannot open \"missing.pem\" (resolved to"),
        "{e}"
    );
    std::fs::write(dir.path().join("missing.pem"), "x").unwrap();
    let s = compile_at(&path, &text).unwrap();
    assert_eq!(
        s.listeners[0].tls.as_ref().unwrap().cert,
        dir.path().join("cert.pem")
    );
}

#[test]
fn listener_and_admin_addresses_must_be_distinct() {
    let text = edit(
        "  - addr: 127.0.0.1:8080\n",
        "  - addr: 127.0.0.1:8080\n  - addr: 127.0.0.1:8080\n",
    ) + "admin:\n  addr: 127.0.0.1:8080\n";
    assert_eq!(
        errors(&text),
        [
            "g.yaml: listen[1].addr: 127.0.0.1:8080 duplicates listen[0].addr",
            "g.yaml: admin.addr: 127.0.0.1:8080 duplicates listen[0].addr; use another port",
        ]
    );
}

#[test]
fn auth_settings_are_checked() {
    let text = format!(
        "{MINIMAL}auth:\n  schemes: [Bearer, bearer]\n  headers: [xc_token, X-Api-Key]\n  realm: 'a\"b'\n  all_scope: 'scope all'\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("g.yaml:11: auth.schemes[1]: \"bearer\" duplicates auth.schemes[0]"));
    assert!(e[1].starts_with("g.yaml:12: auth.headers[0]: \"xc_token\" contains \"_\""));
    assert!(e[2].starts_with("g.yaml:13: auth.realm:"));
    assert!(e[3].starts_with("g.yaml:14: auth.all_scope:"));
    let e = errors(&format!("{MINIMAL}auth:\n  schemes: []\n"));
    assert!(e[0].starts_with("g.yaml:10: auth: schemes and headers are both empty"));
}

#[test]
fn trusted_proxies_and_log_level_are_checked() {
    let e = errors(&format!("{MINIMAL}client_ip:\n  trusted_proxies: [10.0.0.0/8, proxy.local]\nlog:\n  level: infoo\n  format: xml\n"));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("g.yaml:11: client_ip.trusted_proxies[1]: \"proxy.local\" is not an IP")
    );
    assert!(e[1].starts_with("g.yaml:13: log.level: \"infoo\" is not a level"));
    assert!(e[2].starts_with("g.yaml:14: log.format: \"xml\" is not a log format"));
}

#[test]
fn route_options_are_checked() {
    let text = edit(
        "    scopes: [\"*\"]\n",
        "    scopes: [\"*\"]\n    anonymous: write\n    upstream_response_timeout: 0s\n    upstream_ca: ca.pem\n",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("g.yaml:10: routes[0].anonymous: \"write\" is not an anonymous mode"));
    assert!(e[1].starts_with("g.yaml:11: routes[0].upstream_response_timeout:"));
    assert_eq!(
        e[2],
        "g.yaml:12: routes[0].upstream_ca: is only used with an https upstream"
    );
    assert!(e[3].starts_with("g.yaml:12: routes[0].upstream_ca: cannot open"));
}

#[test]
fn alias_bombs_are_refused_quickly() {
    let mut text = String::from(
        "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let p = format!("*a{}", i - 1);
        text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![p; 9].join(",")));
    }
    text.push_str(&MINIMAL.replace("[\"*\"]", "*a9"));
    let start = Instant::now();
    let e = errors(&text);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("g.yaml:2: a1: YAML aliases"), "{e:?}");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let text = format!("listen: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let start = Instant::now();
    let e = errors(&text);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(e[0].contains("nested deeper than"), "{e:?}");
    let e = errors(&"[".repeat(10_000));
    assert!(e[0].contains("nested deeper than"), "{e:?}");
}

#[test]
fn oversized_config_is_refused_with_the_limit() {
    let text = format!("{MINIMAL}# {}\n", "x".repeat(MAX_CONFIG_BYTES));
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("the limit is 4194304 bytes"), "{e:?}");
}

#[test]
fn every_shipped_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut loaded = 0;
    for dir in ["config", "config/examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.extension().is_none_or(|e| e != "yaml") || name == "tokens.yaml" {
                continue;
            }
            // The NetBox preset needs NetBox's pepper, which has no default.
            let text = std::fs::read_to_string(&path).unwrap();
            let env = |name: &str| match name {
                "NETBOX_API_TOKEN_PEPPER_1" => Some("p".repeat(50)),
                _ => super::env::process_env(name),
            };
            let settings = compile_with(&path, &text, &env).unwrap_or_else(|e| panic!("{e}"));
            // A preset whose token file the operator creates ships none.
            if let SourceKind::File { path } = &settings.tokens.kind {
                if !path.exists() {
                    loaded += 1;
                    continue;
                }
                let text = std::fs::read_to_string(path).unwrap();
                crate::tokens::source::file::FileSource::parse(path.as_path(), &text)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 5, "found only {loaded} configs");
}

#[test]
fn unreadable_config_names_the_file() {
    let e = super::super::load(Path::new("/nonexistent/gateway.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/gateway.yaml: cannot read config:"),
        "{e}"
    );
}

#[test]
fn sessions_get_their_defaults_and_browser_routes_need_them() {
    let s = ok(MINIMAL);
    assert!(s.sessions.is_none());
    assert!(!s.merge_slashes);
    assert!(!s.routes[0].browser);
    let text = format!(
        "{}    browser: true\nsessions:\n  secret: ${{LONG_SECRET}}\npaths:\n  merge_slashes: true\n",
        MINIMAL
    );
    let s = ok(&text);
    let sessions = s.sessions.as_ref().unwrap();
    assert_eq!(sessions.lifetime, Duration::from_secs(12 * 3600));
    assert_eq!(sessions.cookie, "tollgate_session");
    assert_eq!(
        &*sessions.secret.0,
        b"s3cr3t-0123456789-0123456789-0123456789"
    );
    assert!(s.routes[0].browser);
    assert!(s.merge_slashes);
    assert!(!format!("{s:?}").contains("s3cr3t"));
    assert_eq!(
        errors(&format!("{MINIMAL}    browser: true\n")),
        ["g.yaml:10: routes[0].browser: needs sessions (sessions.secret) to accept a session cookie; add sessions or remove browser"]
    );
}

#[test]
fn a_short_or_unset_session_secret_is_refused_without_showing_it() {
    for (secret, want) in [
        (
            "${SHORT_SECRET}",
            "g.yaml:11: sessions.secret: is shorter than 32 bytes",
        ),
        (
            "s3cr3t-inline",
            "g.yaml:11: sessions.secret: is shorter than 32 bytes",
        ),
        (
            "${NOPE}",
            "g.yaml:11: sessions.secret: environment variable NOPE is not set",
        ),
        (
            "s3cr3t-${bad name}-0123456789-0123456789",
            "g.yaml:11: sessions.secret: cannot be expanded",
        ),
    ] {
        let e = errors(&format!("{MINIMAL}sessions:\n  secret: \"{secret}\"\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(want), "{e:?}");
        assert!(!e[0].contains("s3cr3t"), "{e:?}");
    }
    let e = errors(&format!(
        "{MINIMAL}sessions:\n  secret: ${{LONG_SECRET}}\n  cookie: \"a b\"\n  lifetime: 0s\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("g.yaml:12: sessions.cookie: \"a b\" is not a cookie name"),
        "{e:?}"
    );
    assert!(e[1].starts_with("g.yaml:13: sessions.lifetime:"), "{e:?}");
}

#[test]
fn merge_slashes_is_a_strict_boolean() {
    let e = errors(&format!("{MINIMAL}paths:\n  merge_slashes: yes\n"));
    assert!(e[0].starts_with("g.yaml:11: paths.merge_slashes:"), "{e:?}");
}

#[test]
fn an_anonymous_root_route_warns_what_it_exposes() {
    let s = ok(&format!(
        "{MINIMAL}  - prefix: /\n    upstream: http://127.0.0.1:19999\n    scopes: [\"*\"]\n    anonymous: read\n"
    ));
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    let w = &s.warnings[0];
    assert!(
        w.starts_with("routes[1]: anonymous: read on prefix \"/\""),
        "{w}"
    );
    assert!(w.contains("everything except /api (e.g."), "{w}");
    // An anonymous leaf route covering nothing else is not a finding.
    let s = ok(&edit(
        "    scopes: [\"*\"]\n",
        "    scopes: [\"*\"]\n    anonymous: read\n",
    ));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}
