//! One rule for token ids, and rows another application wrote that break
//! it: the command line refuses such an id on every source, and a database
//! row with one is skipped alone while every other row serves.

use super::*;

/// `token create` and `token import` with `ops bot` exit 2 (usage), name
/// the rule, print no secret and store nothing.
async fn an_id_with_a_space_is_refused_and_nothing_is_stored(config: &Path) {
    for command in ["create", "import"] {
        let out = tollgate(
            config,
            &["token", command, "--id", "ops bot", "--scope", "scope:a"],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "token {command}: {stderr}");
        assert!(
            stderr.contains("the id must be 1 to 128 visible ASCII characters without spaces"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "token {command} printed something");
    }
    assert!(list(config).await.is_empty(), "a refused id was stored");
}

#[tokio::test]
async fn file_token_create_refuses_an_id_with_a_space() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&gateway_yaml(up.addr, ""), "tokens: []\n").await;
    an_id_with_a_space_is_refused_and_nothing_is_stored(&gw.path("gateway.yaml")).await;
}

#[tokio::test]
async fn sqlite_token_create_refuses_an_id_with_a_space() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&sqlite_config(up.addr, "200ms"), "").await;
    an_id_with_a_space_is_refused_and_nothing_is_stored(&gw.path("gateway.yaml")).await;
}

#[tokio::test]
async fn postgres_token_create_refuses_an_id_with_a_space() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "30s"), "").await;
    an_id_with_a_space_is_refused_and_nothing_is_stored(&gw.path("gateway.yaml")).await;
}

/// Two tokens made by the CLI and a third row written by another
/// application with an id the rule refuses.
const BAD_ID: &str = "ops bot";

/// The other rows authenticate, the bad one does not, the gauge says 1,
/// and `check` exits 1 naming the row by position (its id is invalid, so
/// it is not quoted).
async fn one_bad_row_of_three_is_skipped(
    gw: &Gw,
    insert_bad: impl std::future::Future<Output = ()>,
) {
    let config = gw.path("gateway.yaml");
    let alpha = create(&config, "alpha").await;
    let beta = create(&config, "beta").await;
    insert_bad.await;
    wait_ready(gw, Duration::from_secs(10)).await;
    within(Duration::from_secs(5), "the bad row counted", || async {
        metrics(gw).await.contains("tollgate_token_rows_invalid 1")
    })
    .await;
    wait_tokens(gw, 2).await;
    assert_eq!(status(gw, &alpha).await, 200);
    assert_eq!(status(gw, &beta).await, 200);
    assert_eq!(status(gw, "the-bad-rows-secret").await, 401);
    let m = metrics(gw).await;
    assert!(m.contains("tollgate_tokens_loaded 2"), "{m}");
    assert!(m.contains("tollgate_token_source_up 1"), "{m}");

    let out = tollgate(&config, &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "tokens: row 3: id: must be 1 to 128 visible ASCII characters without spaces"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("1 invalid row(s)"), "{stderr}");
    assert!(
        !stderr.contains(BAD_ID),
        "check quoted the bad id: {stderr}"
    );
}

fn bad_row_insert() -> String {
    format!(
        "INSERT INTO tollgate_tokens (id, sha256, scopes) VALUES ('{BAD_ID}', '{}', 'scope:agent-ui')",
        sha("the-bad-rows-secret")
    )
}

#[tokio::test]
async fn sqlite_a_row_with_an_invalid_id_is_skipped_and_the_others_serve() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&sqlite_config(up.addr, "200ms"), "").await;
    let db = gw.path("tokens.db");
    one_bad_row_of_three_is_skipped(&gw, async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql(&bad_row_insert())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_a_row_with_an_invalid_id_is_skipped_and_the_others_serve() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "30s"), "").await;
    one_bad_row_of_three_is_skipped(&gw, pg.exec(&bad_row_insert())).await;
}

/// The contract: a custom query over another application's table is read
/// with a read-only connection, and nothing is created in that database.
#[tokio::test]
async fn sqlite_a_custom_query_reads_an_application_database_without_changing_it() {
    use sqlx::Connection;
    let up = Upstream::start().await;
    let tokens = "tokens:\n  source: sqlite\n  path: app.db\n  refresh_interval: 200ms\n  \
                  query: \"SELECT 'app-' || n AS id, k AS token, 'scope:agent-ui' AS scopes, \
                  NOT rw AS read_only FROM api_keys\"\n";
    let gw = Gw::start_unready(&config_with_tokens(up.addr, tokens), "").await;
    let app = gw.path("app.db");
    let url = |mode: &str| format!("sqlite://{}?mode={mode}", app.display());
    let mut conn = sqlx::SqliteConnection::connect(&url("rwc")).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE api_keys (n INTEGER PRIMARY KEY, k TEXT NOT NULL, rw INTEGER NOT NULL);
         INSERT INTO api_keys VALUES (1, 'app-key-1', 1), (2, 'app-key-2', 0);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(gw.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = (
        std::fs::read(&app).unwrap(),
        std::fs::metadata(&app).unwrap().modified().unwrap(),
        files(),
    );

    wait_ready(&gw, Duration::from_secs(10)).await;
    assert_eq!(status(&gw, "app-key-1").await, 200);
    assert_eq!(
        up.seen().last().unwrap().header("x-tollgate-token-id"),
        Some("app-1")
    );
    // Several refreshes and a check, none of which may write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tollgate(&gw.path("gateway.yaml"), &["check"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        std::fs::read(&app).unwrap() == before.0,
        "the database changed"
    );
    assert_eq!(
        std::fs::metadata(&app).unwrap().modified().unwrap(),
        before.1,
        "the database was written"
    );
    assert_eq!(files(), before.2, "files were created beside it");
    let mut conn = sqlx::SqliteConnection::connect(&url("ro")).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, ["api_keys"]);
    conn.close().await.unwrap();
}
