//! The SQLite token source (§4): `tollgate_tokens` in a database file, with
//! RFC 3339 text timestamps and 0/1 booleans; changes are noticed by
//! watching the file and its `-wal`.
//!
//! Invariant: a plain load never creates the database file; only
//! `ensure_schema` (the `token` commands, `check`) does, and never for a
//! custom query, whose database is only ever opened read-only.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{
    Column, Connection, Decode, Executor, Row, Sqlite, Statement, Type, TypeInfo, ValueRef,
};
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::sql::{self, Bad, Cells, InvalidRow, Shape, Stored};
use super::SourceError;
use crate::tokens::{TokenId, TokenIndex, TokenRecord};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tollgate_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    sha256        TEXT UNIQUE NOT NULL,
    scopes        TEXT NOT NULL,
    read_only     INTEGER NOT NULL DEFAULT 0,
    expires_at    TEXT,
    allowed_ips   TEXT,
    rate_requests INTEGER,
    rate_per_ms   INTEGER,
    rate_burst    INTEGER,
    disabled      INTEGER NOT NULL DEFAULT 0,
    description   TEXT,
    created_at    TEXT,
    updated_at    TEXT,
    last_used_at  TEXT
)";

/// Tokens in a SQLite database file.
pub struct SqliteSource {
    path: PathBuf,
    query: Option<String>,
    /// The pool and the identity of the file it was opened on.
    pool: Mutex<Option<(SqlitePool, Option<FileId>)>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    reported: sql::Reported,
}

impl SqliteSource {
    /// A source over the file at `path`; `query` replaces the default
    /// `SELECT` (and makes the source read-only). Opens nothing yet.
    pub fn new(path: PathBuf, query: Option<String>) -> Self {
        SqliteSource {
            path,
            query,
            pool: Mutex::new(None),
            watcher: Mutex::new(None),
            reported: sql::Reported::default(),
        }
    }

    /// The valid tokens of one `SELECT` (invalid rows skipped). A missing
    /// file is `Unavailable`.
    pub async fn load(&self) -> Result<Vec<TokenRecord>, SourceError> {
        Ok(self.read().await?.0)
    }

    /// Reads every token in one `SELECT`: the valid records and the rows
    /// skipped as invalid. A failure part-way is an error.
    pub async fn read(&self) -> Result<(Vec<TokenRecord>, Vec<InvalidRow>), SourceError> {
        let pool = self.pool().await?;
        let sql = self.query.clone().unwrap_or_else(sql::default_query);
        let read = async {
            let mut conn = pool.acquire().await.map_err(|e| self.db_error(e))?;
            let statement = conn.prepare(&sql).await.map_err(|e| self.db_error(e))?;
            let shape = Shape::of(statement.columns().iter().map(|c| c.name()))
                .map_err(|p| SourceError::Invalid(format!("{}: {p}", self.origin())))?;
            let rows = statement
                .query()
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| self.db_error(e))?;
            sql::records(&self.origin(), &shape, &rows)
        };
        tokio::time::timeout(sql::QUERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query timed out")))
    }

    /// Streams every token straight into an index, in one `SELECT`; an
    /// invalid row is skipped (and logged once), a failure part-way is an
    /// error.
    pub async fn load_index(&self) -> Result<TokenIndex, SourceError> {
        let pool = self.pool().await?;
        let sql = self.query.clone().unwrap_or_else(sql::index_query);
        let origin = self.origin();
        let read = async {
            let db = |e| self.db_error(e);
            let mut conn = pool.acquire().await.map_err(db)?;
            let statement = conn.prepare(&sql).await.map_err(db)?;
            let shape = Shape::of(statement.columns().iter().map(|c| c.name()))
                .map_err(|p| SourceError::Invalid(format!("{origin}: {p}")))?;
            let stream = statement.query().fetch(&mut *conn);
            sql::build(&origin, &shape, 0, stream, db).await
        };
        let (index, invalid) = tokio::time::timeout(sql::QUERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query timed out")))?;
        self.reported.log(&origin, invalid);
        Ok(index)
    }

    /// Creates the database file and `tollgate_tokens` when missing. A
    /// no-op with a custom query (the table belongs to the application).
    pub async fn ensure_schema(&self) -> Result<(), SourceError> {
        if self.query.is_some() {
            return Ok(());
        }
        let options = self.options().create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| self.db_error(e))?;
        conn.execute(SCHEMA).await.map_err(|e| self.db_error(e))?;
        conn.close().await.map_err(|e| self.db_error(e))
    }

    /// Inserts a token; refuses a duplicate id or secret.
    pub async fn create(&self, record: &TokenRecord) -> Result<(), SourceError> {
        self.writable()?;
        let s = Stored::of(record)?;
        let pool = self.pool().await?;
        let text = |t: Option<OffsetDateTime>| t.map(sql::format_time);
        let done = sqlx::query(
            "INSERT INTO tollgate_tokens (id, sha256, scopes, read_only, expires_at, \
             allowed_ips, rate_requests, rate_per_ms, rate_burst, disabled, description, \
             created_at, updated_at, last_used_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT DO NOTHING",
        )
        .bind(s.id)
        .bind(&s.sha256)
        .bind(&s.scopes)
        .bind(s.read_only)
        .bind(text(s.expires_at))
        .bind(&s.allowed_ips)
        .bind(s.rate_requests)
        .bind(s.rate_per_ms)
        .bind(s.rate_burst)
        .bind(s.disabled)
        .bind(s.description)
        .bind(sql::format_time(s.created_at))
        .bind(sql::format_time(s.updated_at))
        .bind(text(s.last_used_at))
        .execute(&pool)
        .await
        .map_err(|e| self.db_error(e))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let existing = sqlx::query_scalar(
            "SELECT id FROM tollgate_tokens WHERE id = ?1 OR sha256 = ?2 \
             ORDER BY id = ?1 DESC LIMIT 1",
        )
        .bind(s.id)
        .bind(&s.sha256)
        .fetch_optional(&pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Err(sql::conflict(s.id, existing))
    }

    /// Sets `disabled` and `updated_at`; an unknown id is an error.
    pub async fn revoke(&self, id: &TokenId) -> Result<(), SourceError> {
        self.writable()?;
        let done =
            sqlx::query("UPDATE tollgate_tokens SET disabled = 1, updated_at = ?2 WHERE id = ?1")
                .bind(id.as_str())
                .bind(sql::format_time(sql::now()))
                .execute(&self.pool().await?)
                .await
                .map_err(|e| self.db_error(e))?;
        match done.rows_affected() {
            0 => Err(sql::no_such_token(id.as_str())),
            _ => Ok(()),
        }
    }

    /// Moves `last_used_at` forward for these ids, in one transaction. A
    /// no-op with a custom query.
    pub async fn record_use(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), SourceError> {
        if self.query.is_some() || uses.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool()
            .await?
            .begin()
            .await
            .map_err(|e| self.db_error(e))?;
        for (id, at) in sql::latest_uses(uses) {
            sqlx::query(
                "UPDATE tollgate_tokens SET last_used_at = ?2 WHERE id = ?1 \
                 AND coalesce(julianday(last_used_at), 0) < julianday(?2)",
            )
            .bind(id)
            .bind(sql::format_time(at))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))
    }

    /// Watches the file and its `-wal` (through their directory, so a
    /// replaced or newly created file is seen); `changed` is notified on
    /// every change. Failing to watch is logged: the periodic refresh
    /// still applies.
    pub fn watch(&self, changed: Arc<Notify>) {
        let Some(name) = self.path.file_name() else {
            tracing::warn!(path = %self.path.display(), "not watching the token database: no file name");
            return;
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut wal = name.to_owned();
        wal.push("-wal");
        let names: [OsString; 2] = [name.to_owned(), wal];
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.kind.is_access() && touches(&event.paths, &names) => {
                changed.notify_one()
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "watching the token database failed"),
        };
        let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match started {
            Ok(watcher) => {
                *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
            }
            Err(error) => tracing::warn!(
                %error,
                dir = %dir.display(),
                "cannot watch the token database; relying on refresh_interval"
            ),
        }
    }

    /// A custom query reads another application's database: opened
    /// read-only (`mode=ro`), so nothing is ever created or changed in it
    /// (no table, no journal-mode switch).
    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(false)
            .read_only(self.query.is_some())
            .busy_timeout(Duration::from_secs(5))
    }

    /// One long-lived pool: keeping its connections open avoids the `-wal`
    /// being created and removed (and so reported as a change) around
    /// every read. A file replaced by another (`mv new.db tokens.db`) gets
    /// a fresh pool, since open connections would go on reading the old one.
    async fn pool(&self) -> Result<SqlitePool, SourceError> {
        let metadata = match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.unavailable("no such file"))
            }
            Err(e) => return Err(self.unavailable(&sql::one_line(e))),
        };
        let id = file_id(&metadata);
        let mut slot = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some((pool, opened)) if *opened == id => Ok(pool.clone()),
            _ => {
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(5))
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with(self.options());
                if let Some((old, _)) = slot.replace((pool.clone(), id)) {
                    tokio::spawn(async move { old.close().await });
                }
                Ok(pool)
            }
        }
    }

    fn writable(&self) -> Result<(), SourceError> {
        match self.query {
            Some(_) => Err(SourceError::Unsupported(sql::READ_ONLY_QUERY.into())),
            None => Ok(()),
        }
    }

    fn origin(&self) -> String {
        match self.query {
            Some(_) => format!("sqlite {} (custom query)", self.path.display()),
            None => format!("sqlite {}", self.path.display()),
        }
    }

    fn unavailable(&self, problem: &str) -> SourceError {
        SourceError::Unavailable(format!("{}: {problem}", self.origin()))
    }

    /// Busy, locked, I/O and open failures are `Unavailable`; any other
    /// answer from SQLite (no such table, syntax error) is `Invalid`.
    fn db_error(&self, error: sqlx::Error) -> SourceError {
        let mut message = format!("{}: {}", self.origin(), sql::one_line(&error));
        match &error {
            sqlx::Error::Database(db) => {
                let primary = db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                if matches!(primary, Some(5 | 6 | 8 | 10 | 13 | 14)) {
                    return SourceError::Unavailable(message);
                }
                if self.query.is_none() && db.message().contains("no such table") {
                    message.push_str(" (`tollgate check` creates it)");
                }
                SourceError::Invalid(message)
            }
            _ => SourceError::Unavailable(message),
        }
    }
}

/// Device and inode: what tells a replaced file from the one a pool has
/// open.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(metadata: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<FileId> {
    None
}

fn touches(paths: &[PathBuf], names: &[OsString]) -> bool {
    paths
        .iter()
        .filter_map(|p| Path::file_name(p))
        .any(|n| names.iter().any(|w| w == n))
}

/// SQLite types are per cell, so a wrong one is that row's problem.
impl Cells for SqliteRow {
    fn text(&self, i: usize) -> Result<Option<String>, Bad> {
        get(self, i, "text")
    }

    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad> {
        Ok(get::<i64>(self, i, "a boolean (0 or 1)")?
            .map(sql::int_bool)
            .transpose()?)
    }

    fn integer(&self, i: usize) -> Result<Option<i64>, Bad> {
        get(self, i, "an integer")
    }

    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad> {
        Ok(get::<String>(self, i, "RFC 3339 text")?
            .map(|t| sql::parse_time(&t))
            .transpose()?)
    }
}

fn get<'r, T>(row: &'r SqliteRow, i: usize, expected: &str) -> Result<Option<T>, Bad>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get::<Option<T>, _>(i).map_err(|_| {
        let ty = row
            .try_get_raw(i)
            .map(|v| v.type_info().name().to_owned())
            .unwrap_or_default();
        Bad::Value(format!("holds {ty}, expected {expected}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::id::id;
    use crate::tokens::source::shared_tests::{self, record};
    use crate::tokens::TokenHash;

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.db");
        (dir, path)
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
        let index = source.load_index().await.unwrap();
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
        let index = source.load_index().await.unwrap();
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
            matches!(&err, SourceError::Invalid(m) if m.contains("tollgate check")),
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
        let changed = Arc::new(Notify::new());
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
        let changed = Arc::new(Notify::new());
        source.watch(changed.clone());
        std::fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
        let heard = tokio::time::timeout(Duration::from_millis(500), changed.notified()).await;
        assert!(heard.is_err(), "a change to another file was reported");
    }
}
