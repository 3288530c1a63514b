//! Against a real PostgreSQL named by `TOLLGATE_TEST_DATABASE_URL`;
//! each test works in its own schema, so they run in parallel. Tests
//! that assert on notifications (which are database-wide) run alone.

use super::schema::CREATE_TABLE;
use std::time::Instant;

use sqlx::postgres::PgListener;

use super::*;
use crate::tokens::id::{id, scopes};
use crate::tokens::source::shared_tests::{self, record};
use crate::tokens::TokenHash;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static NOTIFICATIONS: RwLock<()> = RwLock::const_new(());

#[allow(dead_code)] // held for its Drop
enum Guard {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

struct TestDb {
    url: String,
    schema: String,
    admin: PgPool,
    _guard: Guard,
}

impl TestDb {
    /// `None` (after a loud message) when no test database is set.
    async fn new(exclusive: bool) -> Option<TestDb> {
        let Ok(base) = std::env::var("TOLLGATE_TEST_DATABASE_URL") else {
            eprintln!("SKIPPED: TOLLGATE_TEST_DATABASE_URL not set");
            return None;
        };
        let guard = match exclusive {
            true => Guard::Exclusive(NOTIFICATIONS.write().await),
            false => Guard::Shared(NOTIFICATIONS.read().await),
        };
        let schema = format!("tg_test_{}", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}");
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("cannot connect to TOLLGATE_TEST_DATABASE_URL");
        admin
            .execute(&*format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        Some(TestDb {
            url,
            schema,
            admin,
            _guard: guard,
        })
    }

    fn source(&self, query: Option<&str>) -> PostgresSource {
        PostgresSource::new(self.url.clone(), query.map(str::to_owned))
    }

    async fn exec(&self, statement: &str) {
        sqlx::raw_sql(statement).execute(&self.admin).await.unwrap();
    }
}

/// Drops the schema even when the test panicked (on a thread of its
/// own: the test's runtime may be gone or unwinding).
impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                conn.execute(&*format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await?;
                conn.close().await
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
    }
}

fn t(s: &str) -> OffsetDateTime {
    sql::parse_time(s).unwrap()
}

/// What was announced, once something was within `within`; `None` if
/// nothing was.
async fn announced(
    changed: &Announced,
    within: Duration,
) -> Option<crate::tokens::source::Pending> {
    tokio::time::timeout(within, changed.notified())
        .await
        .ok()?;
    // Announcements made together arrive together.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Some(changed.take())
}

fn ids(names: &[&str]) -> std::collections::HashSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn ensure_schema_is_idempotent_and_safe_to_run_at_once() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let (a, b) = (db.source(None), db.source(None));
    let (ra, rb) = tokio::join!(a.ensure_schema(), b.ensure_schema());
    ra.unwrap();
    rb.unwrap();
    a.ensure_schema().await.unwrap();
    a.ensure_schema().await.unwrap();
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('tollgate_tokens') \
             AND NOT tgisinternal",
    )
    .fetch_one(&db.admin)
    .await
    .unwrap();
    assert_eq!(triggers, 4);
    assert_eq!(a.load().await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_missing_table_is_invalid_and_says_how_to_create_it() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let err = db.source(None).load().await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Invalid(m) if m.contains("tollgate check")),
        "{err:?}"
    );
}

/// The compose demo seeds the table before any gateway has created it,
/// so `deploy/compose/init.sql` carries its own copy of the definition:
/// it must stay the one the gateway creates.
#[test]
fn the_compose_seed_creates_the_same_table() {
    let seed = include_str!("../../../../deploy/compose/init.sql");
    assert!(
        seed.contains(&format!("{CREATE_TABLE};")),
        "deploy/compose/init.sql no longer creates tollgate_tokens as CREATE_TABLE does"
    );
}

#[tokio::test]
async fn create_list_revoke_round_trip() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = super::super::Source::Postgres(db.source(None));
    shared_tests::create_list_revoke_round_trip(&source).await;
}

#[tokio::test]
async fn enable_rotate_delete() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = super::super::Source::Postgres(db.source(None));
    shared_tests::enable_rotate_delete(&source).await;
}

#[tokio::test]
async fn load_reads_every_column() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    let hash = TokenHash::of(b"test");
    db.exec(&format!(
        "INSERT INTO tollgate_tokens VALUES ('grafana', '{}', 'scope:a scope:b', true, \
             '2027-01-01T00:00:00Z', '10.0.0.0/8 192.168.1.7', 10, 1000, NULL, false, \
             'Grafana datasource', '2025-01-01T00:00:00Z', '2025-01-02T00:00:00Z', \
             '2025-01-03T00:00:00Z')",
        hash.to_hex()
    ))
    .await;
    let mut want = TokenRecord::new(id("grafana"), hash, scopes(&["scope:a", "scope:b"]));
    want.read_only = true;
    want.expires_at = Some(t("2027-01-01T00:00:00Z"));
    want.allowed_ips = vec![
        sql::parse_ip("10.0.0.0/8").unwrap(),
        sql::parse_ip("192.168.1.7").unwrap(),
    ];
    want.rate_limit = Some(crate::config::Rate {
        requests: 10.try_into().unwrap(),
        per: Duration::from_secs(1),
        burst: 10.try_into().unwrap(),
    });
    want.description = Some("Grafana datasource".into());
    want.created_at = Some(t("2025-01-01T00:00:00Z"));
    want.updated_at = Some(t("2025-01-02T00:00:00Z"));
    want.last_used_at = Some(t("2025-01-03T00:00:00Z"));
    assert_eq!(source.load().await.unwrap(), vec![want]);
}

#[tokio::test]
async fn an_invalid_row_is_skipped_and_read_names_it_by_id_and_column() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    source.create(&record("good", "s1")).await.unwrap();
    db.exec(&format!(
        "INSERT INTO tollgate_tokens (id, sha256, scopes, allowed_ips) \
             VALUES ('bad', '{}', 's', '10.0.0.0/8 not-an-ip')",
        TokenHash::of(b"s2").to_hex()
    ))
    .await;
    let problem = || async {
        let (records, invalid) = source.read().await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, "good");
        assert_eq!(invalid.len(), 1);
        invalid[0].to_string()
    };
    assert!(problem().await.starts_with("token \"bad\": allowed_ips: "));
    db.exec("UPDATE tollgate_tokens SET allowed_ips = NULL, rate_per_ms = 1000 WHERE id = 'bad'")
        .await;
    assert_eq!(
        problem().await,
        "token \"bad\": rate_requests: is null while rate_per_ms or rate_burst is set"
    );
    db.exec("UPDATE tollgate_tokens SET rate_requests = 5 WHERE id = 'bad'")
        .await;
    assert_eq!(source.load().await.unwrap().len(), 2);
}

/// Loads through `load_index`; the applied index, if any, and the result.
async fn load_index(
    source: &PostgresSource,
    previous: Option<&Fingerprint>,
) -> (Option<TokenIndex>, Loaded) {
    let mut applied = None;
    let loaded = source
        .load_index(previous, |index| applied = Some(index))
        .await
        .unwrap();
    (applied, loaded)
}

#[tokio::test]
async fn load_index_skips_an_unchanged_table_but_not_a_revocation() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    source.create(&record("a", "s1")).await.unwrap();
    source.create(&record("b", "s2")).await.unwrap();
    let (index, loaded) = load_index(&source, None).await;
    assert_eq!(index.unwrap().len(), 2);
    let Loaded::Applied(Some(first)) = loaded else {
        panic!("no fingerprint: {loaded:?}");
    };
    assert!(first.0.starts_with("r/2/"), "{first:?}");

    let (index, loaded) = load_index(&source, Some(&first)).await;
    assert!(index.is_none());
    assert_eq!(loaded, Loaded::Unchanged);
    // Recorded uses are not a change.
    source
        .record_use(&[("a".into(), sql::now())])
        .await
        .unwrap();
    assert_eq!(load_index(&source, Some(&first)).await.1, Loaded::Unchanged);

    source.revoke(&id("a")).await.unwrap();
    let (index, loaded) = load_index(&source, Some(&first)).await;
    let index = index.expect("a revocation is a change");
    assert!(index.find_id("a").unwrap().disabled);
    assert!(matches!(loaded, Loaded::Applied(Some(f)) if f != first));
}

#[tokio::test]
async fn load_index_applies_nothing_on_a_duplicate_and_skips_only_a_bad_row() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let same_secret = "SELECT 'a' AS id, 'x' AS token, 's' AS scopes \
                           UNION ALL SELECT 'b', 'x', 's'";
    let mut applied = false;
    let err = db
        .source(Some(same_secret))
        .load_index(None, |_| applied = true)
        .await
        .unwrap_err();
    assert!(!applied);
    assert!(err.to_string().contains("hash duplicates"), "{err}");
    assert!(!err.to_string().contains(&TokenHash::of(b"x").to_hex()));

    let bad_ip = "SELECT 'a' AS id, 'x' AS token, 's' AS scopes, NULL AS allowed_ips \
                      UNION ALL SELECT 'b', 'y', 's', '10.0.0.0/8 nope'";
    let (index, _) = load_index(&db.source(Some(bad_ip)), None).await;
    let index = index.expect("the good row applies");
    assert_eq!((index.len(), index.rows_invalid()), (1, 1));
    assert!(index.contains_id("a") && !index.contains_id("b"));
}

#[tokio::test]
async fn a_custom_query_ending_in_a_comment_and_a_semicolon_gets_a_fingerprint() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let query = "SELECT 'a' AS id, 'secret' AS token, 'x' AS scopes -- the only one\n;\n";
    let source = db.source(Some(query));
    let (index, loaded) = load_index(&source, None).await;
    assert_eq!(index.unwrap().len(), 1);
    let Loaded::Applied(Some(first)) = loaded else {
        panic!("no fingerprint: {loaded:?}");
    };
    assert_eq!(load_index(&source, Some(&first)).await.1, Loaded::Unchanged);

    // One the wrapping does not suit still loads, just without one.
    let odd = "SELECT 'a' AS id, 'secret' AS token, 'x' AS scopes; -- the only one";
    let (index, loaded) = load_index(&db.source(Some(odd)), None).await;
    assert_eq!(index.unwrap().len(), 1);
    assert_eq!(loaded, Loaded::Applied(None));
}

#[tokio::test]
async fn custom_query_reads_a_netbox_style_table() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    db.exec(
        "CREATE TABLE users_token (id integer PRIMARY KEY, key text NOT NULL, \
               write_enabled boolean NOT NULL, expires timestamptz NULL, \
               allowed_ips text NULL, enabled boolean NOT NULL);
             INSERT INTO users_token VALUES
               (1, '0123456789abcdef0123456789abcdef01234567', true, NULL, NULL, true),
               (2, 'fedcba9876543210fedcba9876543210fedcba98', false, '2027-01-01T00:00:00Z',
                '10.0.0.0/8', false);",
    )
    .await;
    let query = "SELECT 'nb-' || id AS id, key AS token, 'scope:all' AS scopes, \
                     NOT write_enabled AS read_only, expires AS expires_at, \
                     NOT enabled AS disabled FROM users_token";
    let source = db.source(Some(query));
    source.ensure_schema().await.unwrap();
    let mut got = source.load().await.unwrap();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    let mut one = TokenRecord::new(
        id("nb-1"),
        TokenHash::of(b"0123456789abcdef0123456789abcdef01234567"),
        scopes(&["scope:all"]),
    );
    one.from_plaintext = true;
    let mut two = TokenRecord::new(
        id("nb-2"),
        TokenHash::of(b"fedcba9876543210fedcba9876543210fedcba98"),
        scopes(&["scope:all"]),
    );
    two.from_plaintext = true;
    two.read_only = true;
    two.disabled = true;
    two.expires_at = Some(t("2027-01-01T00:00:00Z"));
    assert_eq!(got, vec![one, two]);

    let no_table: Option<bool> =
        sqlx::query_scalar("SELECT to_regclass('tollgate_tokens') IS NOT NULL")
            .fetch_optional(&db.admin)
            .await
            .unwrap();
    assert_eq!(
        no_table,
        Some(false),
        "ensure_schema created a table for a custom query"
    );
    for err in [
        source.create(&record("x", "y")).await.unwrap_err(),
        source.revoke(&id("nb-1")).await.unwrap_err(),
    ] {
        assert!(matches!(&err, SourceError::Unsupported(m) if m == sql::READ_ONLY_QUERY));
    }
    source
        .record_use(&[("nb-1".into(), sql::now())])
        .await
        .unwrap();
}

#[tokio::test]
async fn custom_query_accepts_text_times_and_integer_flags_but_not_naive_times() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let query = "SELECT 'a' AS id, 'secret' AS token, 'x y' AS scopes, \
                     1 AS read_only, 0::smallint AS disabled, \
                     '2027-01-01T00:00:00+01:00'::varchar AS expires_at, \
                     5::bigint AS rate_requests, 1000 AS rate_per_ms";
    let got = db.source(Some(query)).load().await.unwrap();
    assert!(got[0].read_only && !got[0].disabled);
    assert_eq!(got[0].expires_at, Some(t("2026-12-31T23:00:00Z")));
    assert_eq!(got[0].rate_limit.unwrap().requests.get(), 5);

    let naive = "SELECT 'a' AS id, 'secret' AS token, '' AS scopes, \
                     '2027-01-01 00:00:00'::timestamp AS expires_at";
    let err = db.source(Some(naive)).load().await.unwrap_err();
    assert!(err.to_string().contains("without time zone"), "{err}");

    let wrong = "SELECT 'a' AS id, 'secret' AS token, '' AS scopes, 'yes' AS read_only";
    let err = db.source(Some(wrong)).load().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "postgres (custom query): token \"a\": read_only: has SQL type TEXT, expected boolean"
    );

    let typo = "SELECT 'a' AS id, 'secret' AS token, '' AS scopes WHERE false";
    assert!(db.source(Some(typo)).load().await.unwrap().is_empty());
    let typo = "SELECT 'a' AS id, 'secret' AS token, '' AS scopes, true AS readonly WHERE false";
    let err = db.source(Some(typo)).load().await.unwrap_err();
    assert!(err.to_string().contains("\"readonly\""), "{err}");
}

#[tokio::test]
async fn record_use_moves_last_used_at_forward_only() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    source.create(&record("a", "s1")).await.unwrap();
    source.create(&record("b", "s2")).await.unwrap();
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

/// The payloads of the notifications `statement` causes, within 500 ms.
async fn payloads(
    listener: &mut PgListener,
    writer: &mut sqlx::PgConnection,
    statement: &str,
) -> Vec<String> {
    writer.execute(statement).await.unwrap();
    let mut got = Vec::new();
    while let Ok(n) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        let n = n.unwrap();
        assert_eq!(n.channel(), CHANNEL, "{statement}");
        got.push(n.payload().to_owned());
    }
    got
}

/// A payload's ids, sorted.
fn named(payload: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        serde_json::from_str(payload).unwrap_or_else(|_| panic!("not a list of ids: {payload:?}"));
    ids.sort();
    ids
}

#[tokio::test]
async fn trigger_names_the_changed_tokens_but_announces_no_record_use() {
    let Some(db) = TestDb::new(true).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let mut writer = db.admin.acquire().await.unwrap();
    let w = &mut *writer;
    let insert = format!(
        "INSERT INTO tollgate_tokens (id, sha256, scopes) VALUES ('a', '{}', 's'), ('b \"x', '{}', 's')",
        TokenHash::of(b"s").to_hex(),
        TokenHash::of(b"t").to_hex()
    );
    let one = payloads(&mut listener, w, &insert).await;
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(named(&one[0]), ["a", "b \"x"]);
    // A rename names the old id and the new one.
    let one = payloads(
        &mut listener,
        w,
        "UPDATE tollgate_tokens SET id = 'a2' WHERE id = 'a'",
    )
    .await;
    assert_eq!(named(&one[0]), ["a", "a2"]);
    let one = payloads(
        &mut listener,
        w,
        "DELETE FROM tollgate_tokens WHERE id = 'a2'",
    )
    .await;
    assert_eq!(named(&one[0]), ["a2"]);
    // A statement that changed nothing announces nothing.
    let none = payloads(
        &mut listener,
        w,
        "DELETE FROM tollgate_tokens WHERE id = 'nobody'",
    )
    .await;
    assert_eq!(none, Vec::<String>::new());
    // Too many rows to name, and TRUNCATE: anything changed.
    let many = "INSERT INTO tollgate_tokens (id, sha256, scopes) \
                SELECT 'bulk-' || i, md5(i::text), 's' FROM generate_series(1, 150) AS i";
    assert_eq!(payloads(&mut listener, w, many).await, [""]);
    let long = format!(
        "INSERT INTO tollgate_tokens (id, sha256, scopes) \
         SELECT '{}' || i, md5('long' || i), 's' FROM generate_series(1, 90) AS i",
        "x".repeat(120)
    );
    assert_eq!(
        payloads(&mut listener, w, &long).await,
        [""],
        "over 7,900 bytes"
    );
    assert_eq!(
        payloads(&mut listener, w, "TRUNCATE tollgate_tokens").await,
        [""]
    );

    source.create(&record("b", "s2")).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no notification for create")
        .unwrap();
    assert_eq!(named(n.payload()), ["b"]);
    source
        .record_use(&[("b".into(), sql::now())])
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(quiet.is_err(), "record_use was announced");
    assert!(source.load().await.unwrap()[0].last_used_at.is_some());
}

#[tokio::test]
async fn an_older_gateways_single_trigger_is_replaced_by_the_naming_ones() {
    let Some(db) = TestDb::new(true).await else {
        return;
    };
    db.exec(CREATE_TABLE).await;
    db.exec(
        "CREATE FUNCTION tollgate_tokens_notify() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify('tollgate_tokens', ''); RETURN NULL; END $$; \
         CREATE TRIGGER tollgate_tokens_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE \
         ON tollgate_tokens FOR EACH STATEMENT EXECUTE FUNCTION tollgate_tokens_notify()",
    )
    .await;
    let source = db.source(None);
    let e = source.verify_schema().await.unwrap_err().to_string();
    assert!(e.contains("an older Tollgate installed the table"), "{e}");
    source.ensure_schema().await.unwrap();
    source.verify_schema().await.unwrap();
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    source.create(&record("a", "s1")).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no notification")
        .unwrap();
    assert_eq!(named(n.payload()), ["a"]);
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "the old trigger still fires");
}

#[tokio::test]
async fn read_tokens_reads_just_the_named_tokens_as_they_are_now() {
    let Some(db) = TestDb::new(false).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    for (i, secret) in ["s1", "s2", "s3", "s4"].into_iter().enumerate() {
        source
            .create(&record(&format!("t{i}"), secret))
            .await
            .unwrap();
    }
    source.revoke(&id("t0")).await.unwrap();
    source.change(&id("t1"), &Change::Delete).await.unwrap();
    let asked: Vec<String> = ["t0", "t1", "t3", "not an id"].map(String::from).into();
    let got = source.read_tokens(&asked).await.unwrap().unwrap();
    let got: std::collections::HashMap<_, _> = got
        .into_iter()
        .map(|(id, record)| (id.to_string(), record))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got["t0"].as_ref().unwrap().disabled);
    assert!(got["t1"].is_none(), "deleted");
    assert_eq!(got["t3"].as_ref().unwrap().hash, TokenHash::of(b"s4"));
    // An invalid row is left to a full load, which counts it.
    db.exec("UPDATE tollgate_tokens SET allowed_ips = 'not-an-address' WHERE id = 't3'")
        .await;
    assert!(source.read_tokens(&asked).await.unwrap().is_none());
    // A custom query's rows are not found by token id: read in full.
    let custom = db.source(Some("SELECT id, sha256, scopes FROM tollgate_tokens"));
    assert!(custom.read_tokens(&asked).await.unwrap().is_none());
}

#[tokio::test]
async fn watch_announces_the_tokens_changed_and_anything_on_each_connection() {
    let Some(db) = TestDb::new(true).await else {
        return;
    };
    let source = db.source(None);
    source.ensure_schema().await.unwrap();
    let changed = Arc::new(Announced::default());
    source.watch(changed.clone());
    let first = announced(&changed, Duration::from_secs(5)).await;
    assert!(first.expect("no notice on connect").anything);
    assert_eq!(
        announced(&changed, Duration::from_millis(300)).await,
        None,
        "notice without a change"
    );

    let writer = db.source(None);
    writer.create(&record("a", "s1")).await.unwrap();
    let insert = announced(&changed, Duration::from_secs(5)).await.unwrap();
    assert_eq!((insert.anything, insert.ids), (false, ids(&["a"])));

    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&db.schema)
    .fetch_one(&db.admin)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    // Once on losing the connection, once on making it again.
    let lost = announced(&changed, Duration::from_secs(5)).await;
    assert!(lost.expect("no notice on losing the connection").anything);
    let reconnect = announced(&changed, Duration::from_secs(5)).await;
    assert!(reconnect.expect("no notice on reconnect").anything);
    writer.revoke(&id("a")).await.unwrap();
    let revoke = announced(&changed, Duration::from_secs(5)).await.unwrap();
    assert_eq!((revoke.anything, revoke.ids), (false, ids(&["a"])));
}

#[tokio::test]
async fn a_dead_database_fails_fast_as_unavailable() {
    let source = PostgresSource::new("postgres://nobody@127.0.0.1:1/none".into(), None);
    let started = Instant::now();
    let err = source.load().await.unwrap_err();
    assert!(matches!(err, SourceError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_bad_url_is_invalid_and_not_echoed() {
    let source = PostgresSource::new("postgres://u:hunter2@host:notaport/db".into(), None);
    let err = source.check_url().unwrap_err();
    assert!(
        matches!(&err, SourceError::Invalid(m) if !m.contains("hunter2")),
        "{err:?}"
    );
}
