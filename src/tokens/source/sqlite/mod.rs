//! The SQLite token source (§4): `tollgate_tokens` in a database file, with
//! RFC 3339 text timestamps and 0/1 booleans; changes are noticed by
//! watching the file and its `-wal`, and found in a change log that
//! triggers keep (`tollgate_token_changes`: a sequence number and the id of
//! each token inserted, changed or deleted), so a change is applied by
//! reading its row alone.
//!
//! This module owns the source (loads and writes); `watch` noticing
//! changes, `cells` decoding a result cell.
//!
//! Invariant: a plain load never creates the database file; only
//! `ensure_schema` (the `token` commands, `serve`) does, and never for a
//! custom query, whose database is only ever opened read-only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Executor, Statement};
use time::OffsetDateTime;

use super::sql::{self, InvalidRow, Stored};
use super::{Change, Fingerprint, SourceError};
use crate::progress::{within, Progress};
use crate::tokens::split::SplitTokens;
use crate::tokens::{TokenId, TokenIndex, TokenRecord};

mod cells;
#[cfg(test)]
mod tests;
mod watch;

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

/// The change log and the triggers that fill it. An update of
/// `last_used_at` alone (the gateway's own writes) or of the description
/// is not logged. The log keeps the last 10,000 or so entries (pruned
/// every thousandth); a reader that fell further behind reads in full.
const CHANGE_LOG: &str = "CREATE TABLE IF NOT EXISTS tollgate_token_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS tollgate_tokens_inserted AFTER INSERT ON tollgate_tokens
BEGIN INSERT INTO tollgate_token_changes (id) VALUES (NEW.id); END;
CREATE TRIGGER IF NOT EXISTS tollgate_tokens_updated AFTER UPDATE OF id, sha256, scopes,
    read_only, expires_at, allowed_ips, rate_requests, rate_per_ms, rate_burst, disabled
    ON tollgate_tokens
BEGIN
    INSERT INTO tollgate_token_changes (id) VALUES (OLD.id);
    INSERT INTO tollgate_token_changes (id) SELECT NEW.id WHERE NEW.id IS NOT OLD.id;
END;
CREATE TRIGGER IF NOT EXISTS tollgate_tokens_deleted AFTER DELETE ON tollgate_tokens
BEGIN INSERT INTO tollgate_token_changes (id) VALUES (OLD.id); END;
CREATE TRIGGER IF NOT EXISTS tollgate_token_changes_pruned AFTER INSERT ON tollgate_token_changes
    WHEN NEW.seq % 1000 = 0
BEGIN DELETE FROM tollgate_token_changes WHERE seq <= NEW.seq - 10000; END;";

/// More logged changes than this since the index's position are read in
/// full.
const MAX_LOGGED: i64 = 1_000;

/// [`Change`]'s statements: times are RFC 3339 text, compared as Julian days.
const CHANGE_SQL: sql::ChangeSql = sql::ChangeSql {
    disable: "UPDATE tollgate_tokens SET disabled = ?2, updated_at = ?3 WHERE id = ?1",
    delete: "DELETE FROM tollgate_tokens WHERE id = ?1",
    rehash: "UPDATE tollgate_tokens SET sha256 = ?2, updated_at = ?3 WHERE id = ?1",
    rename: "UPDATE tollgate_tokens SET id = ?2 WHERE id = ?1",
    copy: concat!(
        "INSERT INTO tollgate_tokens (id, sha256, ",
        sql::copied_columns!(),
        ", updated_at, last_used_at) SELECT ?1, ?2, ",
        sql::copied_columns!(),
        ", ?3, NULL FROM tollgate_tokens WHERE id = ?4"
    ),
    cap_expiry: "UPDATE tollgate_tokens SET expires_at = ?2, updated_at = ?3 WHERE id = ?1 \
                 AND (expires_at IS NULL OR julianday(expires_at) > julianday(?2))",
};

/// Tokens in a SQLite database file.
pub struct SqliteSource {
    path: PathBuf,
    query: Option<String>,
    /// `tokens.split` and its peppers, for the indexes this source builds.
    split: Option<Arc<SplitTokens>>,
    /// The pool and the identity of the file it was opened on.
    pool: Mutex<Option<(SqlitePool, Option<FileId>)>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    reported: sql::Reported,
    /// The change-log position the last index read reflects (`None`:
    /// unknown, or no log).
    logged: Mutex<Option<i64>>,
}

impl SqliteSource {
    /// A source over the file at `path`; `query` replaces the default
    /// `SELECT` (and makes the source read-only). Opens nothing yet.
    pub fn new(path: PathBuf, query: Option<String>) -> Self {
        SqliteSource {
            path,
            query,
            split: None,
            pool: Mutex::new(None),
            watcher: Mutex::new(None),
            reported: sql::Reported::default(),
            logged: Mutex::new(None),
        }
    }

    /// The split-token rules the indexes it builds verify split tokens with.
    pub fn with_split(mut self, split: Option<Arc<SplitTokens>>) -> Self {
        self.split = split;
        self
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
        let progress = Progress::new();
        let read = async {
            let db = |e| self.db_error(e);
            let mut conn = pool.acquire().await.map_err(db)?;
            let statement = conn.prepare(&sql).await.map_err(db)?;
            let shape = sql::shape_of(&self.origin(), &statement, self.split.as_ref())?;
            let rows = sql::collect(statement.query().fetch(&mut *conn), &progress, db).await?;
            sql::records(&self.origin(), &shape, &rows)
        };
        within(sql::QUERY_TIMEOUT, Some(&progress), read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query made no progress for 30 s")))
    }

    /// Streams every token straight into an index, in one `SELECT`; an
    /// invalid row is skipped (and logged once), a failure part-way is an
    /// error. With the fingerprint of the last load (which file, and its
    /// change log's last sequence number) it stops at `None` when that is
    /// unchanged: nothing was logged since, so nothing changed (a table
    /// with a change log is only written through its triggers). Otherwise
    /// the index and the fingerprint of what it read (none without a log).
    pub async fn load_index(
        &self,
        previous: Option<&Fingerprint>,
    ) -> Result<Option<(TokenIndex, Option<Fingerprint>)>, SourceError> {
        let pool = self.pool().await?;
        let file = self.opened_file();
        let sql = self.query.clone().unwrap_or_else(sql::index_query);
        let origin = self.origin();
        let progress = Progress::new();
        let read = async {
            let db = |e| self.db_error(e);
            let mut conn = pool.acquire().await.map_err(db)?;
            // One read transaction: the log position and the rows agree.
            let mut tx = conn.begin().await.map_err(db)?;
            let logged = match self.query {
                Some(_) => None,
                None => log_position(&mut tx).await,
            };
            let taken = logged.map(|seq| log_fingerprint(file, seq));
            if taken.is_some() && taken.as_ref() == previous {
                let _ = tx.commit().await;
                return Ok(None);
            }
            let statement = (&mut *tx).prepare(&sql).await.map_err(db)?;
            let shape = sql::shape_of(&origin, &statement, self.split.as_ref())?;
            let stream = statement.query().fetch(&mut *tx);
            let split = self.split.as_ref();
            let built = sql::build(&origin, &shape, split, 0, stream, &progress, db).await?;
            let _ = tx.commit().await;
            Ok(Some((built, logged, taken)))
        };
        let read = within(sql::QUERY_TIMEOUT, Some(&progress), read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query made no progress for 30 s")))?;
        let Some(((index, invalid), logged, taken)) = read else {
            return Ok(None);
        };
        self.reported.log(&origin, invalid);
        *self.logged.lock().unwrap_or_else(PoisonError::into_inner) = logged;
        Ok(Some((index, taken)))
    }

    /// The fingerprint a load would take now, without reading the tokens;
    /// `None` for a custom query or a database without a change log.
    pub async fn fingerprint(&self) -> Result<Option<Fingerprint>, SourceError> {
        if self.query.is_some() {
            return Ok(None);
        }
        let pool = self.pool().await?;
        let file = self.opened_file();
        let mut conn = pool.acquire().await.map_err(|e| self.db_error(e))?;
        Ok(log_position(&mut conn)
            .await
            .map(|seq| log_fingerprint(file, seq)))
    }

    /// The tokens the change log names since the last read, each with its
    /// current record (`None`: gone), read in one transaction; `Ok(None)`
    /// when only a full read can tell: a custom query, no position yet, a
    /// log pruned past the position, more than [`MAX_LOGGED`] changes, or
    /// an invalid row among them (a full read counts it). An empty list:
    /// nothing the index holds changed (the gateway's own `last_used_at`
    /// writes).
    pub async fn read_logged(&self) -> Result<Option<super::Changed>, SourceError> {
        let Some(since) = *self.logged.lock().unwrap_or_else(PoisonError::into_inner) else {
            return Ok(None);
        };
        if self.query.is_some() {
            return Ok(None);
        }
        let pool = self.pool().await?;
        let sql = sql::index_query_where("IN (SELECT value FROM json_each(?1))");
        let origin = self.origin();
        let db = |e| self.db_error(e);
        let read = async {
            let mut conn = pool.acquire().await.map_err(db)?;
            let mut tx = conn.begin().await.map_err(db)?;
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT min(seq) FROM tollgate_token_changes")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
            if oldest.is_some_and(|oldest| oldest > since + 1) {
                return Ok(None);
            }
            let logged: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, id FROM tollgate_token_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(since)
            .bind(MAX_LOGGED + 1)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            if logged.len() as i64 > MAX_LOGGED {
                return Ok(None);
            }
            let Some(&(last, _)) = logged.last() else {
                return Ok(Some((since, Vec::new(), Vec::new())));
            };
            let mut ids: Vec<String> = logged.into_iter().map(|(_, id)| id).collect();
            ids.sort_unstable();
            ids.dedup();
            let named = serde_json::to_string(&ids).unwrap_or_default();
            let statement = (&mut *tx).prepare(&sql).await.map_err(db)?;
            let shape = sql::shape_of(&origin, &statement, None)?;
            let rows = statement
                .query()
                .bind(named)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
            let (records, invalid) = sql::records(&origin, &shape, &rows)?;
            let _ = tx.commit().await;
            if !invalid.is_empty() {
                return Ok(None);
            }
            Ok(Some((last, ids, records)))
        };
        let read = tokio::time::timeout(sql::QUERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query timed out")))?;
        let Some((position, ids, records)) = read else {
            return Ok(None);
        };
        *self.logged.lock().unwrap_or_else(PoisonError::into_inner) = Some(position);
        Ok(Some(sql::by_id(&ids, records)))
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
        conn.execute(CHANGE_LOG)
            .await
            .map_err(|e| self.db_error(e))?;
        conn.close().await.map_err(|e| self.db_error(e))
    }

    /// Whether the database file and `tollgate_tokens` exist, without
    /// creating or writing anything (`tollgate check`). Always `Ok` with a
    /// custom query (reading it tells).
    pub async fn verify_schema(&self) -> Result<(), SourceError> {
        if self.query.is_some() {
            return Ok(());
        }
        let missing = |what: &str| {
            SourceError::Invalid(format!(
                "{}: {what}; `tollgate token create` or `tollgate serve` creates it",
                self.origin()
            ))
        };
        if tokio::fs::metadata(&self.path).await.is_err() {
            return Err(missing("no such file"));
        }
        let options = self.options().read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| self.db_error(e))?;
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tollgate_tokens'",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| self.db_error(e))?;
        conn.close().await.map_err(|e| self.db_error(e))?;
        if tables == 0 {
            return Err(missing("the table tollgate_tokens is missing"));
        }
        Ok(())
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
        self.change(id, &Change::Disabled(true)).await
    }

    /// Applies `change` in one transaction; an unknown id is an error.
    pub async fn change(&self, id: &TokenId, change: &Change) -> Result<(), SourceError> {
        self.writable()?;
        let previous = change.previous(id)?;
        let previous = previous.as_ref().map_or("", TokenId::as_str);
        let pool = self.pool().await?;
        let now = sql::format_time(sql::now());
        let run = async {
            let mut tx = pool.begin().await?;
            let found = sql::apply_change!(
                tx,
                CHANGE_SQL,
                id.as_str(),
                previous,
                change,
                &now,
                sql::format_time
            );
            Ok::<_, sqlx::Error>(found)
        };
        sql::changed(run.await.map_err(|e| self.db_error(e))?, id.as_str())
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
    /// The identity of the file the pool was opened on.
    fn opened_file(&self) -> Option<FileId> {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|(_, file)| *file)
    }

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
                    message.push_str(" (`tollgate token create` or `tollgate serve` creates it)");
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
/// Which file, and how far its change log goes: equal for two reads
/// between which nothing was logged.
fn log_fingerprint(file: Option<FileId>, seq: i64) -> Fingerprint {
    Fingerprint(format!("sqlite/{file:?}/{seq}"))
}

/// The change log's last sequence number (0 when empty), or `None` when the
/// database has no log (made by an older version, or read-only).
async fn log_position(conn: &mut sqlx::SqliteConnection) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(seq) FROM tollgate_token_changes")
        .fetch_one(conn)
        .await
        .ok()
        .map(|seq| seq.unwrap_or(0))
}

fn file_id(metadata: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<FileId> {
    None
}
