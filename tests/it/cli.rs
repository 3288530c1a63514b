//! The command line (§1): `check` like `nginx -t`, `explain`, `token hash`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::*;

fn tollgate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Writes a config (with the standard tokens beside it) and runs `check`.
fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let out = tollgate(&["check", "-c", path.to_str().unwrap()], None);
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "gateway.yaml");
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        stderr,
    )
}

fn base() -> String {
    gateway_yaml("127.0.0.1:9".parse().unwrap(), "")
}

/// The 1-based line of the first occurrence of `needle` in `yaml`.
fn line_of(yaml: &str, needle: &str, nth: usize) -> usize {
    yaml.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap()
        .0
        + 1
}

#[test]
fn check_prints_a_summary_and_exits_0() {
    let (code, out, err) = check(&base());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("routes: 7"), "{out}");
    assert!(out.contains("tokens: 7"), "{out}");
    assert!(out.contains("listeners: 127.0.0.1:0"), "{out}");
}

#[test]
fn check_names_the_line_and_key_of_an_unknown_key() {
    let yaml = base().replace(
        "    strip_prefix: true",
        "    strip_prefix: true\n    stirp: true",
    );
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1);
    let line = line_of(&yaml, "stirp", 0);
    assert!(
        err.contains(&format!("gateway.yaml:{line}: routes[4].stirp")),
        "{err}"
    );
}

#[test]
fn check_refuses_a_yaml_11_boolean() {
    let yaml = base().replace("    strip_prefix: true", "    strip_prefix: no");
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1);
    let line = line_of(&yaml, "strip_prefix: no", 0);
    assert!(
        err.contains(&format!("gateway.yaml:{line}: routes[4].strip_prefix")),
        "{err}"
    );
}

#[test]
fn check_refuses_read_only_no_in_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, base()).unwrap();
    let tokens = tokens_yaml().replace("read_only: true", "read_only: no");
    std::fs::write(dir.path().join("tokens.yaml"), &tokens).unwrap();
    let out = tollgate(&["check", "-c", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = line_of(&tokens, "read_only: no", 0);
    assert!(
        err.contains(&format!("tokens.yaml:{line}: tokens[1].read_only")),
        "{err}"
    );
}

#[test]
fn check_refuses_empty_scopes() {
    let yaml = base().replacen("scopes: [scope:agent-ui]", "scopes: []", 1);
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1);
    let line = line_of(&yaml, "scopes: []", 0);
    assert!(
        err.contains(&format!("gateway.yaml:{line}: routes[1].scopes")),
        "{err}"
    );
}

#[test]
fn check_refuses_a_duplicate_prefix_naming_both_entries() {
    let yaml = base().replace("prefix: /api/v2", "prefix: /api/v1");
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[2].prefix") && err.contains("routes[1]"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_prefix_ending_in_a_slash() {
    let yaml = base().replace("prefix: /api/v2", "prefix: /api/v2/");
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1);
    let line = line_of(&yaml, "prefix: /api/v2/", 0);
    assert!(
        err.contains(&format!(
            "gateway.yaml:{line}: routes[2].prefix: \"/api/v2/\" must not end with \"/\""
        )),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_in_the_style_of_every_other_error() {
    let out = tollgate(&["serve", "--bogus"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("unexpected argument '--bogus' found"),
        "{stderr}"
    );
    assert!(stderr.contains("Usage: tollgate serve"), "{stderr}");
    let out = tollgate(&["token", "rotate", "x", "--overlap", "soon"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("invalid value 'soon' for '--overlap <DURATION>'"),
        "{stderr}"
    );
}

#[test]
fn token_hash_strips_one_trailing_newline() {
    let out = tollgate(&["token", "hash"], Some("test\n"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn explain_says_why_a_read_only_token_may_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, base()).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let c = path.to_str().unwrap();
    let out = tollgate(
        &[
            "explain",
            "-c",
            c,
            "--token-id",
            "grafana",
            "POST",
            "/api/v2/q",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("route: /api/v2"), "{text}");
    assert!(text.contains("403 read_only_token"), "{text}");
    let out = tollgate(
        &[
            "explain",
            "-c",
            c,
            "--token-id",
            "grafana",
            "GET",
            "/api/v2/q",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("decision: forward"));
    let out = tollgate(
        &["explain", "-c", c, "--anonymous", "GET", "/api/v1/q"],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("401 missing_token"));
    let out = tollgate(
        &[
            "explain",
            "-c",
            c,
            "--token-id",
            "expired",
            "GET",
            "/api/v1/q",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("expired") && text.contains("401 invalid_token"),
        "{text}"
    );
}

#[test]
fn bash_completions_name_every_subcommand() {
    let out = tollgate(&["completions", "bash"], None);
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8(out.stdout).unwrap();
    for name in [
        "serve",
        "check",
        "explain",
        "token",
        "demo",
        "completions",
        "man",
    ] {
        assert!(script.contains(name), "{name} missing from:\n{script}");
    }
    assert!(script.contains("complete -F"), "{script}");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = tollgate(&["completions", "tcsh"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_prints_a_roff_page_of_the_command_line() {
    let out = tollgate(&["man"], None);
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).unwrap();
    // clap_mangen opens with the `\*(Aq` string definition (`.ie`/`.el`),
    // then the title line.
    let first = page
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default();
    assert!(
        first.starts_with(".TH tollgate 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(page.contains("explain"), "{page}");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = tollgate(&["--version"], None);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    assert!(
        text.starts_with(concat!("tollgate ", env!("CARGO_PKG_VERSION"), " (commit ")),
        "{text}"
    );
    match expected {
        // cargo reruns build.rs when HEAD moves, so the binary under test
        // was built from HEAD.
        Some(head) => assert!(text.contains(&format!("(commit {head})")), "{text}"),
        None => assert!(text.contains("unknown"), "{text}"),
    }
}

/// `docs/configuration.md`, the reference these tests hold to the code.
fn configuration_reference() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap()
}

/// The keys `check` lists as allowed when a token file's first entry has
/// an unknown key (`entry` is that entry's YAML after `- `).
fn allowed_token_file_keys(entry: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, base()).unwrap();
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!("tokens:\n  - {entry}\n"),
    )
    .unwrap();
    let out = tollgate(&["check", "-c", path.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let list = err
        .split("allowed keys: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    list.lines()
        .next()
        .unwrap()
        .split(", ")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_configuration_reference_names_every_key_of_the_token_file() {
    let doc = configuration_reference();
    let entry = "{ id: a, sha256: x, scopes: [a], zz_probe: 1 }";
    let keys = allowed_token_file_keys(entry);
    assert!(keys.contains(&"sha256".to_string()), "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`tokens[].{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "token file keys not in docs/configuration.md: {missing:?}"
    );
    let rate =
        "{ id: a, sha256: x, scopes: [a], rate_limit: { requests: 1, per: 1s, zz_probe: 1 } }";
    let fields = allowed_token_file_keys(rate);
    assert!(fields.contains(&"burst".to_string()), "{fields:?}");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "rate fields not in docs/configuration.md: {missing:?}"
    );
}

#[tokio::test]
async fn the_configuration_reference_names_every_column_of_the_token_table() {
    use sqlx::Row;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let yaml = base().replace(
        "  source: file\n  path: tokens.yaml",
        "  source: sqlite\n  path: tokens.db",
    );
    assert!(yaml.contains("source: sqlite"), "{yaml}");
    std::fs::write(&config, yaml).unwrap();
    // Any `tollgate token` command creates the table when it is missing.
    let out = tollgate(&["token", "list", "-c", config.to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = dir.path().join("tokens.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = sqlx::query("PRAGMA table_info(tollgate_tokens)")
        .fetch_all(&pool)
        .await
        .unwrap();
    let columns: Vec<String> = rows.iter().map(|r| r.get::<String, _>("name")).collect();
    assert!(columns.contains(&"sha256".to_string()), "{columns:?}");
    let doc = configuration_reference();
    let missing: Vec<&String> = columns
        .iter()
        .filter(|c| !doc.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "token table columns not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn check_warns_about_published_demo_secrets_wherever_the_file_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, base()).unwrap();
    // The shipped demo file, copied under another name and edited a little.
    let shipped = include_str!("../../config/tokens.yaml").replace("Demo", "Ours");
    std::fs::write(dir.path().join("tokens.yaml"), shipped).unwrap();
    let out = tollgate(&["check", "-c", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "warning: tokens: \"demo-admin\" uses an example secret published with Tollgate (config/tokens.yaml)"
        ),
        "{stderr}"
    );
    // The standard test tokens are not published ones.
    let (code, _, stderr) = check(&base());
    assert_eq!(code, 0);
    assert!(!stderr.contains("published"), "{stderr}");
}

#[test]
fn check_warns_what_an_anonymous_root_route_exposes() {
    let yaml = base() + "  - prefix: /\n    upstream: http://127.0.0.1:9\n    scopes: [\"*\"]\n    anonymous: read\n";
    let (code, stdout, stderr) = check(&yaml);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: routes[7]: anonymous: read on prefix \"/\""))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(warning.contains("/api/v1"), "{warning}");
    assert!(
        !warning.contains("/api/v3,"),
        "an anonymous route protects nothing: {warning}"
    );
}

#[test]
fn explain_says_when_a_session_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let yaml = base()
        + "  - prefix: /app\n    upstream: http://127.0.0.1:9\n    scopes: [\"*\"]\n    browser: true\n"
        + "sessions:\n  secret: a-session-secret-of-at-least-32-bytes\n";
    std::fs::write(&path, yaml).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let cfg = path.to_str().unwrap();
    let out = tollgate(
        &[
            "explain",
            "-c",
            cfg,
            "--token-id",
            "agent",
            "POST",
            "/app/x",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("session: a browser session"), "{text}");
    assert!(text.contains("same origin"), "{text}");
    let out = tollgate(
        &[
            "explain",
            "-c",
            cfg,
            "--token-id",
            "agent",
            "GET",
            "/api/v1/x",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("session:"), "{text}");
}
