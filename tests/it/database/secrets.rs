//! A secret pasted into the wrong place of the token file or a token row
//! is never quoted back — not by `check`, not by a refused reload, not in
//! the log — while the message still names the file, line and key path
//! (or the row and column).

use super::*;

const SECRET: &str = "tg_ThisIsASecretPastedByMistake01234";

fn assert_unquoted(text: &str) {
    assert!(
        !text.contains("ThisIsASecret"),
        "a secret was quoted:\n{text}"
    );
}

/// A token file whose second entry carries `line` (with the secret in it).
fn tokens_with(line: &str) -> String {
    format!(
        "tokens:\n  - id: good\n    sha256: {}\n  - id: pasted\n    sha256: {}\n{line}\n",
        sha("good-secret"),
        sha("other-secret")
    )
}

/// Every key of a token entry a secret could be pasted into, and the
/// message `check` must give for it at line 6.
const FILE_CASES: [(&str, &str); 4] = [
    (
        "    expires_at: SECRET",
        "tokens.yaml:6: tokens[1].expires_at: is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)",
    ),
    (
        "    allowed_ips: [10.0.0.0/8, SECRET]",
        "tokens.yaml:6: tokens[1].allowed_ips[1]: is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7 or ::1)",
    ),
    (
        "    rate_limit: { requests: 5, per: SECRET }",
        "tokens.yaml:6: tokens[1].rate_limit.per: is not a duration greater than zero (e.g. 1s, 500ms, 1m)",
    ),
    (
        "    scopes: [\"SECRET x\"]",
        "tokens.yaml:6: tokens[1].scopes[0]: must be visible ASCII characters without spaces",
    ),
];

#[tokio::test]
async fn check_names_the_key_of_a_secret_in_the_token_file_without_quoting_it() {
    let up = Upstream::start().await;
    for (line, message) in FILE_CASES {
        let gw = Gw::start_unready(
            &gateway_yaml(up.addr, ""),
            &tokens_with(&line.replace("SECRET", SECRET)),
        )
        .await;
        let out = tollgate(&gw.path("gateway.yaml"), &["check"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_unquoted(&stderr);
        assert!(stderr.contains(message), "{line}: {stderr}");
    }
}

/// The config of `gateway_yaml` (with `tokens` as its tokens block, if
/// any), logging at info so `serve_process` sees its address.
fn served_config(dir: &Path, up: SocketAddr, tokens: &str) -> std::path::PathBuf {
    let yaml = match tokens {
        "" => gateway_yaml(up, ""),
        tokens => config_with_tokens(up, tokens),
    }
    .replace("level: warn", "level: info");
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    config
}

async fn log_line(served: &Served, needle: &str) -> String {
    within(Duration::from_secs(10), needle, || async {
        served.log_count(needle) > 0
    })
    .await;
    served.log.lock().unwrap().join("\n")
}

#[tokio::test]
async fn a_refused_token_file_reload_logs_the_key_without_quoting_the_secret() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = served_config(dir.path(), up.addr, "");
    std::fs::write(dir.path().join("tokens.yaml"), tokens_with("")).unwrap();
    let served = serve_process(&config);
    let (line, message) = FILE_CASES[0];
    replace_file(
        &dir.path().join("tokens.yaml"),
        &tokens_with(&line.replace("SECRET", SECRET)),
    );
    let log = log_line(&served, "keeping the last good index").await;
    assert_unquoted(&log);
    assert!(log.contains(message.split_once(": ").unwrap().1), "{log}");
    assert!(log.contains("tokens.yaml:6"), "{log}");
}

#[tokio::test]
async fn a_secret_in_a_token_row_is_named_by_row_and_column_and_never_quoted() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = served_config(
        dir.path(),
        up.addr,
        "tokens:\n  source: sqlite\n  path: tokens.db\n  refresh_interval: 200ms\n",
    );
    create(&config, "good").await;
    {
        use sqlx::Connection;
        let db = dir.path().join("tokens.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql(&format!(
            "INSERT INTO tollgate_tokens (id, sha256, scopes, expires_at) \
               VALUES ('late', '{}', 's', '{SECRET}');
             INSERT INTO tollgate_tokens (id, sha256, scopes, allowed_ips) \
               VALUES ('where', '{}', 's', '10.0.0.0/8 {SECRET}');",
            sha("s1"),
            sha("s2"),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let expected = [
        "token \"late\": expires_at: is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)",
        "token \"where\": allowed_ips: the address at position 2 is not an IP address or CIDR",
    ];

    let out = tollgate(&config, &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_unquoted(&stderr);
    for message in expected {
        assert!(stderr.contains(message), "{stderr}");
    }

    let served = serve_process(&config);
    let log = log_line(&served, "token row skipped").await;
    assert_unquoted(&log);
    for message in expected {
        let in_json = message.replace('"', "\\\"");
        assert!(log.contains(&in_json), "{log}");
    }
}
