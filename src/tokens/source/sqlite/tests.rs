use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::tokens::id::id;
use crate::tokens::source::shared_tests::{self, record};
use crate::tokens::TokenHash;

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    (dir, path)
}

/// A full read's index.
async fn full(source: &SqliteSource) -> TokenIndex {
    source.load_index(None).await.unwrap().unwrap().0
}

async fn raw(path: &Path, statement: &str) {
    let mut conn = sqlx::SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn load_of_a_missing_file_is_unavailable_and_creates_nothing() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    assert!(matches!(
        source.load().await,
        Err(SourceError::Unavailable(_))
    ));
    assert!(!path.exists());
}

#[tokio::test]
async fn ensure_schema_creates_the_file_and_is_idempotent() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    source.ensure_schema().await.unwrap();
    let (a, b) = tokio::join!(source.ensure_schema(), source.ensure_schema());
    a.unwrap();
    b.unwrap();
    assert!(path.exists());
    assert_eq!(source.load().await.unwrap(), vec![]);
}

#[tokio::test]
async fn load_index_streams_every_row_and_skips_only_a_bad_one() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    let rows: Vec<String> = (0..5_000)
        .map(|i| {
            let hash = TokenHash::of(format!("s{i}").as_bytes()).to_hex();
            format!("('t{i}', '{hash}', 'scope:a')")
        })
        .collect();
    raw(
        &path,
        &format!(
            "INSERT INTO tollgate_tokens (id, sha256, scopes) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    let index = full(&source).await;
    assert_eq!(index.len(), 5_000);
    assert_eq!(
        index.get(&TokenHash::of(b"s4321")).unwrap().id_str(),
        "t4321"
    );
    raw(
        &path,
        "UPDATE tollgate_tokens SET expires_at = 'soon' WHERE id = 't4999'",
    )
    .await;
    let index = full(&source).await;
    assert_eq!((index.len(), index.rows_invalid()), (4_999, 1));
    assert!(index.get(&TokenHash::of(b"s4999")).is_none());
    assert!(index.get(&TokenHash::of(b"s4998")).is_some());
}

#[tokio::test]
async fn a_missing_table_is_invalid_and_says_how_to_create_it() {
    let (_dir, path) = temp();
    raw(&path, "CREATE TABLE other (x INTEGER)").await;
    let err = SqliteSource::new(path, None).load().await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Invalid(m) if m.contains("`tollgate token create` or `tollgate serve` creates it")),
        "{err:?}"
    );
}

#[tokio::test]
async fn create_list_revoke_round_trip() {
    let (_dir, path) = temp();
    let source = super::super::Source::Sqlite(SqliteSource::new(path, None));
    shared_tests::create_list_revoke_round_trip(&source).await;
}

#[tokio::test]
async fn enable_rotate_delete() {
    let (_dir, path) = temp();
    let source = super::super::Source::Sqlite(SqliteSource::new(path, None));
    shared_tests::enable_rotate_delete(&source).await;
}

#[tokio::test]
async fn an_invalid_row_is_skipped_and_read_names_it_by_id_and_column() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    source.create(&record("good", "s1")).await.unwrap();
    raw(
        &path,
        "INSERT INTO tollgate_tokens (id, sha256, scopes, read_only) \
             VALUES ('bad', 'abcd', 's', 0)",
    )
    .await;
    let problem = || async {
        let (records, invalid) = source.read().await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, "good");
        assert_eq!(invalid.len(), 1);
        invalid[0].to_string()
    };
    assert_eq!(
        problem().await,
        "token \"bad\": sha256: is not 64 lowercase hex characters"
    );
    raw(
        &path,
        "UPDATE tollgate_tokens SET sha256 = printf('%064d', 0), read_only = 2 WHERE id = 'bad'",
    )
    .await;
    assert_eq!(
        problem().await,
        "token \"bad\": read_only: is not a boolean (0 or 1)"
    );
    raw(
        &path,
        "UPDATE tollgate_tokens SET read_only = 'yes' WHERE id = 'bad'",
    )
    .await;
    assert!(problem()
        .await
        .ends_with("read_only: holds TEXT, expected a boolean (0 or 1)"));
    assert_eq!(source.load().await.unwrap().len(), 1);
}

#[tokio::test]
async fn custom_query_reads_an_application_table_and_refuses_writes() {
    let (_dir, path) = temp();
    raw(
            &path,
            "CREATE TABLE api_keys (n INTEGER, k TEXT, rw INTEGER, until TEXT);
             INSERT INTO api_keys VALUES (1, 'plain-1', 1, NULL), (2, 'plain-2', 0, '2027-01-01T00:00:00Z');",
        )
        .await;
    let query = "SELECT 'k-' || n AS id, k AS token, 'scope:all' AS scopes, \
                     NOT rw AS read_only, until AS expires_at FROM api_keys ORDER BY n";
    let source = SqliteSource::new(path, Some(query.into()));
    source.ensure_schema().await.unwrap();
    let got = source.load().await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].hash, TokenHash::of(b"plain-1"));
    assert!(got[0].from_plaintext && !got[0].read_only && got[0].expires_at.is_none());
    assert!(got[1].read_only);
    assert_eq!(
        got[1].expires_at,
        Some(sql::parse_time("2027-01-01T00:00:00Z").unwrap())
    );
    for err in [
        source.create(&record("x", "y")).await.unwrap_err(),
        source.revoke(&id("k-1")).await.unwrap_err(),
    ] {
        assert!(matches!(&err, SourceError::Unsupported(m) if m == sql::READ_ONLY_QUERY));
    }
    source
        .record_use(&[("k-1".into(), sql::now())])
        .await
        .unwrap();
}

#[tokio::test]
async fn custom_query_with_an_unknown_column_is_refused_even_when_empty() {
    let (_dir, path) = temp();
    raw(&path, "CREATE TABLE t (a TEXT)").await;
    let query = "SELECT a AS id, a AS sha256, a AS scopes, 1 AS readonly FROM t";
    let err = SqliteSource::new(path, Some(query.into()))
        .load()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Invalid(m) if m.contains("\"readonly\"")),
        "{err:?}"
    );
}

#[tokio::test]
async fn record_use_moves_last_used_at_forward_only() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path, None);
    source.ensure_schema().await.unwrap();
    source.create(&record("a", "s1")).await.unwrap();
    source.create(&record("b", "s2")).await.unwrap();
    let t = |s: &str| sql::parse_time(s).unwrap();
    source
        .record_use(&[
            ("a".into(), t("2025-06-01T10:00:00Z")),
            ("a".into(), t("2025-06-01T09:00:00Z")),
            ("gone".into(), t("2025-06-01T09:00:00Z")),
        ])
        .await
        .unwrap();
    source
        .record_use(&[("a".into(), t("2025-06-01T08:00:00Z"))])
        .await
        .unwrap();
    let got = source.load().await.unwrap();
    assert_eq!(got[0].last_used_at, Some(t("2025-06-01T10:00:00Z")));
    assert_eq!(got[1].last_used_at, None);
}

#[tokio::test]
async fn a_file_replaced_by_another_is_read_afresh() {
    let (dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    source.create(&record("old", "s1")).await.unwrap();
    assert_eq!(source.load().await.unwrap()[0].id, "old");

    let other = dir.path().join("new.db");
    let writer = SqliteSource::new(other.clone(), None);
    writer.ensure_schema().await.unwrap();
    writer.create(&record("new", "s2")).await.unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(source.load().await.unwrap()[0].id, "new");
}

#[tokio::test]
async fn watch_notices_a_write_from_another_connection() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    let changed = Arc::new(crate::tokens::source::Announced::default());
    source.watch(changed.clone());
    let writer = SqliteSource::new(path, None);
    writer.create(&record("a", "s1")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), changed.notified())
        .await
        .expect("no change notification within 5 s");
}

#[tokio::test]
async fn watch_ignores_other_files_in_the_directory() {
    let (dir, path) = temp();
    let source = SqliteSource::new(path, None);
    source.ensure_schema().await.unwrap();
    let changed = Arc::new(crate::tokens::source::Announced::default());
    source.watch(changed.clone());
    std::fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(500), changed.notified()).await;
    assert!(heard.is_err(), "a change to another file was reported");
}

/// What `read_logged` names, by id, sorted; `None` when it asks for a full
/// read.
async fn logged(source: &SqliteSource) -> Option<Vec<(String, bool)>> {
    let mut named: Vec<(String, bool)> = source
        .read_logged()
        .await
        .unwrap()?
        .into_iter()
        .map(|(id, record)| (id.to_string(), record.is_some()))
        .collect();
    named.sort();
    Some(named)
}

#[tokio::test]
async fn the_change_log_names_each_changed_token_once_and_not_the_gateways_own_writes() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    source.create(&record("a", "s1")).await.unwrap();
    source.create(&record("b", "s2")).await.unwrap();
    assert_eq!(
        logged(&source).await,
        None,
        "no position before a full read"
    );
    assert_eq!(full(&source).await.len(), 2);
    assert_eq!(logged(&source).await, Some(vec![]));

    source.revoke(&id("a")).await.unwrap();
    source.revoke(&id("a")).await.unwrap();
    let revoked = source.read_logged().await.unwrap().unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(revoked[0].1.as_ref().unwrap().disabled);
    assert_eq!(logged(&source).await, Some(vec![]), "read once");

    source
        .record_use(&[("b".into(), sql::now())])
        .await
        .unwrap();
    raw(&path, "UPDATE tollgate_tokens SET description = 'x'").await;
    assert_eq!(logged(&source).await, Some(vec![]), "use and description");

    source.change(&id("b"), &Change::Delete).await.unwrap();
    raw(&path, "UPDATE tollgate_tokens SET id = 'a2' WHERE id = 'a'").await;
    assert_eq!(
        logged(&source).await,
        Some(vec![
            ("a".into(), false),
            ("a2".into(), true),
            ("b".into(), false)
        ])
    );

    // More than a read applies at once: a full read.
    raw(
        &path,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1001) \
         INSERT INTO tollgate_tokens (id, sha256, scopes) SELECT 'bulk-' || i, lower(hex(randomblob(32))), 's' FROM n",
    )
    .await;
    assert_eq!(logged(&source).await, None);
    assert_eq!(full(&source).await.len(), 1002);
    assert_eq!(logged(&source).await, Some(vec![]));

    // An invalid row among the changed ones: left to a full read.
    raw(
        &path,
        "UPDATE tollgate_tokens SET allowed_ips = 'nowhere' WHERE id = 'a2'",
    )
    .await;
    assert_eq!(logged(&source).await, None);

    // Pruned past the position: a full read.
    assert_eq!(full(&source).await.len(), 1001);
    raw(
        &path,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000) \
         INSERT INTO tollgate_token_changes (id) SELECT 'x' FROM n",
    )
    .await;
    assert_eq!(logged(&source).await, None);
    let kept: i64 = {
        let pool = source.pool().await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM tollgate_token_changes")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!((10_000..=11_000).contains(&kept), "the log keeps {kept}");
}

#[tokio::test]
async fn a_custom_query_has_no_change_log() {
    let (_dir, path) = temp();
    raw(
        &path,
        "CREATE TABLE keys (id TEXT, sha256 TEXT, scopes TEXT)",
    )
    .await;
    let source = SqliteSource::new(path, Some("SELECT id, sha256, scopes FROM keys".into()));
    full(&source).await;
    assert_eq!(logged(&source).await, None);
}

#[tokio::test]
async fn a_load_stops_at_an_unchanged_change_log_and_reads_after_a_logged_change() {
    let (_dir, path) = temp();
    let source = SqliteSource::new(path.clone(), None);
    source.ensure_schema().await.unwrap();
    source.create(&record("a", "s1")).await.unwrap();
    let (index, taken) = source.load_index(None).await.unwrap().unwrap();
    assert_eq!(index.len(), 1);
    let taken = taken.expect("a fingerprint");
    assert_eq!(source.fingerprint().await.unwrap().as_ref(), Some(&taken));
    // The gateway's own writes log nothing: unchanged.
    source
        .record_use(&[("a".into(), sql::now())])
        .await
        .unwrap();
    assert!(source.load_index(Some(&taken)).await.unwrap().is_none());
    source.revoke(&id("a")).await.unwrap();
    let (index, again) = source.load_index(Some(&taken)).await.unwrap().unwrap();
    assert!(index.find_id("a").unwrap().disabled);
    assert_ne!(again, Some(taken));
    // A custom query has no log, so no fingerprint: always read.
    let custom = SqliteSource::new(
        path,
        Some("SELECT id, sha256, scopes FROM tollgate_tokens".into()),
    );
    let (_, none) = custom.load_index(None).await.unwrap().unwrap();
    assert_eq!(none, None);
    assert_eq!(custom.fingerprint().await.unwrap(), None);
}
