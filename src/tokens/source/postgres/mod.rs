//! The PostgreSQL token source (§4): `tollgate_tokens`, a trigger that
//! announces every change on channel `tollgate_tokens`, and a listener that
//! turns those announcements into reloads.
//!
//! This module owns the source itself (loads, fingerprints, writes);
//! `schema` the table and trigger, `listen` the notification listener,
//! `cells` the decoding of a result cell.
//!
//! Invariant: connections are made lazily and fail within
//! `CONNECT_TIMEOUT`, so a dead database never blocks a caller for long.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Statement};
use time::OffsetDateTime;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use super::sql::{self, InvalidRow, Stored};
use super::{Announced, Change, Changed, Fingerprint, Loaded, SourceError};
use crate::progress::{within, Progress};
use crate::tokens::split::SplitTokens;
use crate::tokens::{TokenId, TokenIndex, TokenRecord};

mod cells;
mod listen;
mod schema;
#[cfg(test)]
mod tests;

/// The channel the trigger notifies and every gateway listens on.
pub const CHANNEL: &str = "tollgate_tokens";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_CONNECTIONS: u32 = 3;
/// [`Change`]'s statements: times are `timestamptz`.
const CHANGE_SQL: sql::ChangeSql = sql::ChangeSql {
    disable: "UPDATE tollgate_tokens SET disabled = $2, updated_at = $3 WHERE id = $1",
    delete: "DELETE FROM tollgate_tokens WHERE id = $1",
    rehash: "UPDATE tollgate_tokens SET sha256 = $2, updated_at = $3 WHERE id = $1",
    rename: "UPDATE tollgate_tokens SET id = $2 WHERE id = $1",
    copy: concat!(
        "INSERT INTO tollgate_tokens (id, sha256, ",
        sql::copied_columns!(),
        ", updated_at, last_used_at) SELECT $1, $2, ",
        sql::copied_columns!(),
        ", $3, NULL FROM tollgate_tokens WHERE id = $4"
    ),
    cap_expiry: "UPDATE tollgate_tokens SET expires_at = $2, updated_at = $3 WHERE id = $1 \
                 AND (expires_at IS NULL OR expires_at > $2)",
};

/// Tokens in a PostgreSQL database.
pub struct PostgresSource {
    /// The parsed URL (boxed: it is large and read once per connection);
    /// `Err` holds why it does not parse.
    options: Result<Box<PgConnectOptions>, String>,
    query: Option<String>,
    /// `tokens.notify_trigger_on`: the application table whose changes a
    /// trigger announces (a custom query's own table).
    notify_on: Option<String>,
    /// `tokens.split` and its peppers, for the indexes this source builds.
    split: Option<Arc<SplitTokens>>,
    pool: OnceCell<PgPool>,
    listener: Mutex<Option<AbortHandle>>,
    reported: sql::Reported,
}

impl PostgresSource {
    /// A source over the database at `url` (libpq-style URL; `options`,
    /// e.g. `?options=-csearch_path%3Dtollgate`, is passed to the server).
    /// `query` replaces the default `SELECT` (and makes the source
    /// read-only). Connects to nothing yet.
    pub fn new(url: String, query: Option<String>) -> Self {
        let options = PgConnectOptions::from_str(&url)
            .map(Box::new)
            .map_err(|e| format!("postgres url: {}", sql::one_line(e)));
        PostgresSource {
            options,
            query,
            notify_on: None,
            split: None,
            pool: OnceCell::new(),
            listener: Mutex::new(None),
            reported: sql::Reported::default(),
        }
    }

    /// The split-token rules the indexes it builds verify split tokens with.
    pub fn with_split(mut self, split: Option<Arc<SplitTokens>>) -> Self {
        self.split = split;
        self
    }

    /// The application table a trigger is to announce changes of
    /// (`tokens.notify_trigger_on`, a validated SQL identifier).
    pub fn with_notify_on(mut self, table: Option<String>) -> Self {
        self.notify_on = table;
        self
    }

    /// Whether the URL parsed (checked by `Source::open`).
    pub(super) fn check_url(&self) -> Result<(), SourceError> {
        match &self.options {
            Ok(_) => Ok(()),
            Err(e) => Err(SourceError::Invalid(e.clone())),
        }
    }

    /// The valid tokens of one `SELECT` (one snapshot; invalid rows
    /// skipped).
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
            let shape = sql::shape_of(self.origin(), &statement, self.split.as_ref())?;
            let rows = sql::collect(statement.query().fetch(&mut *conn), &progress, db).await?;
            sql::records(self.origin(), &shape, &rows)
        };
        within(sql::QUERY_TIMEOUT, Some(&progress), read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query made no progress for 30 s")))
    }

    /// Streams every token into an index inside one read-only
    /// `REPEATABLE READ` transaction and hands it to `apply`. Given the
    /// fingerprint of the last load, it first takes the rows' fingerprint
    /// (a count and a sum of 64-bit row hashes, computed by the server) and
    /// stops there when it is the same; after `apply` it takes the new
    /// fingerprint in the same snapshot. The default query leaves out
    /// `last_used_at`, so recorded uses never count as a change.
    /// An invalid row is skipped (and logged once); a failure part-way
    /// applies nothing.
    pub async fn load_index(
        &self,
        previous: Option<&Fingerprint>,
        apply: impl FnOnce(TokenIndex) + Send,
    ) -> Result<Loaded, SourceError> {
        let pool = self.pool().await?;
        let sql = self.query.clone().unwrap_or_else(sql::index_query);
        let db = |e| self.db_error(e);
        let progress = Progress::new();
        let read = async {
            let mut tx = pool.begin().await.map_err(db)?;
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(db)?;
            let mut before = None;
            if let Some(previous) = previous {
                before = fingerprint(&mut tx, &sql).await;
                if before.as_ref().is_some_and(|(now, _)| now == previous) {
                    tx.commit().await.map_err(db)?;
                    return Ok(None);
                }
            }
            let statement = (&mut *tx).prepare(&sql).await.map_err(db)?;
            let shape = sql::shape_of(self.origin(), &statement, self.split.as_ref())?;
            let rows = before.as_ref().map_or(0, |(_, rows)| *rows);
            let stream = statement.query().fetch(&mut *tx);
            let (index, invalid) = sql::build(
                self.origin(),
                &shape,
                self.split.as_ref(),
                rows,
                stream,
                &progress,
                db,
            )
            .await?;
            self.reported.log(self.origin(), invalid);
            Ok(Some((tx, index, before.map(|(f, _)| f))))
        };
        let read = within(sql::QUERY_TIMEOUT, Some(&progress), read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query made no progress for 30 s")))?;
        let Some((mut tx, index, before)) = read else {
            return Ok(Loaded::Unchanged);
        };
        apply(index);
        // Taken after `apply`, so that a new index is not kept waiting.
        let taken = match before {
            Some(f) => Some(f),
            None => tokio::time::timeout(sql::QUERY_TIMEOUT, fingerprint(&mut tx, &sql))
                .await
                .ok()
                .flatten()
                .map(|(f, _)| f),
        };
        let _ = tx.commit().await;
        Ok(Loaded::Applied(taken))
    }

    /// The fingerprint of what [`load_index`](Self::load_index) would
    /// read now, in a read-only transaction; `None` when it cannot be
    /// taken.
    pub async fn fingerprint(&self) -> Option<Fingerprint> {
        let pool = self.pool().await.ok()?;
        let sql = self.query.clone().unwrap_or_else(sql::index_query);
        let take = async {
            let mut tx = pool.begin().await.ok()?;
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .ok()?;
            let taken = fingerprint(&mut tx, &sql).await;
            let _ = tx.commit().await;
            taken.map(|(f, _)| f)
        };
        tokio::time::timeout(sql::QUERY_TIMEOUT, take)
            .await
            .ok()
            .flatten()
    }

    /// The current records of `ids` in one indexed `SELECT` (see
    /// [`Source::read_changes`](super::Source::read_changes)); `Ok(None)`
    /// with a custom query, whose notifications name no tokens, and when
    /// a named row is invalid (a full load skips, logs and counts it with
    /// the others). An id that no token may have is answered as gone.
    pub async fn read_tokens(&self, ids: &[String]) -> Result<Option<Changed>, SourceError> {
        if self.query.is_some() {
            return Ok(None);
        }
        let pool = self.pool().await?;
        let sql = sql::index_query_where("= ANY($1)");
        let db = |e| self.db_error(e);
        let read = async {
            let mut conn = pool.acquire().await.map_err(db)?;
            let statement = conn.prepare(&sql).await.map_err(db)?;
            let shape = sql::shape_of(self.origin(), &statement, None)?;
            let rows = statement
                .query()
                .bind(ids)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            sql::records(self.origin(), &shape, &rows)
        };
        let (records, invalid) = tokio::time::timeout(sql::QUERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query timed out")))?;
        if !invalid.is_empty() {
            // A full load logs and counts it with the others.
            return Ok(None);
        }
        Ok(Some(sql::by_id(ids, records)))
    }

    /// Inserts a token; refuses a duplicate id or secret.
    pub async fn create(&self, record: &TokenRecord) -> Result<(), SourceError> {
        self.writable()?;
        let s = Stored::of(record)?;
        let pool = self.pool().await?;
        let done = sqlx::query(
            "INSERT INTO tollgate_tokens (id, sha256, scopes, read_only, expires_at, \
             allowed_ips, rate_requests, rate_per_ms, rate_burst, disabled, description, \
             created_at, updated_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT DO NOTHING",
        )
        .bind(s.id)
        .bind(&s.sha256)
        .bind(&s.scopes)
        .bind(s.read_only)
        .bind(s.expires_at)
        .bind(&s.allowed_ips)
        .bind(s.rate_requests)
        .bind(s.rate_per_ms)
        .bind(s.rate_burst)
        .bind(s.disabled)
        .bind(s.description)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.last_used_at)
        .execute(pool)
        .await
        .map_err(|e| self.db_error(e))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let existing = sqlx::query_scalar(
            "SELECT id FROM tollgate_tokens WHERE id = $1 OR sha256 = $2 \
             ORDER BY id = $1 DESC LIMIT 1",
        )
        .bind(s.id)
        .bind(&s.sha256)
        .fetch_optional(pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Err(sql::conflict(s.id, existing))
    }

    /// Sets `disabled` and `updated_at`; an unknown id is an error. The
    /// trigger announces it, so running gateways stop accepting the token.
    pub async fn revoke(&self, id: &TokenId) -> Result<(), SourceError> {
        self.change(id, &Change::Disabled(true)).await
    }

    /// Applies `change` in one transaction; an unknown id is an error. The
    /// trigger announces it at commit, so running gateways see it at once.
    pub async fn change(&self, id: &TokenId, change: &Change) -> Result<(), SourceError> {
        self.writable()?;
        let previous = change.previous(id)?;
        let previous = previous.as_ref().map_or("", TokenId::as_str);
        let pool = self.pool().await?;
        let now = sql::now();
        let run = async {
            let mut tx = pool.begin().await?;
            let found = sql::apply_change!(
                tx,
                CHANGE_SQL,
                id.as_str(),
                previous,
                change,
                now,
                std::convert::identity
            );
            Ok::<_, sqlx::Error>(found)
        };
        sql::changed(run.await.map_err(|e| self.db_error(e))?, id.as_str())
    }

    /// Moves `last_used_at` forward for these ids in one statement, without
    /// announcing it on the channel. A no-op with a custom query.
    pub async fn record_use(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), SourceError> {
        if self.query.is_some() || uses.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<&str>, Vec<OffsetDateTime>) =
            sql::latest_uses(uses).into_iter().unzip();
        let pool = self.pool().await?;
        let update = async {
            let mut tx = pool.begin().await?;
            tx.execute("SELECT set_config('tollgate.skip_notify', 'on', true)")
                .await?;
            sqlx::query(
                "UPDATE tollgate_tokens AS t SET last_used_at = u.at \
                 FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) \
                 WHERE t.id = u.id AND (t.last_used_at IS NULL OR t.last_used_at < u.at)",
            )
            .bind(ids)
            .bind(times)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        };
        update.await.map_err(|e| self.db_error(e))
    }

    /// Listens on [`CHANNEL`] in a background task, announcing to `changed`
    /// the tokens each notification names (anything, for one that names
    /// none, and after every (re)connection); a dropped
    /// connection is retried with backoff (100 ms doubling to 5 s) forever.
    /// The task ends when the source is dropped. Must run inside a Tokio
    /// runtime.
    pub fn watch(&self, changed: Arc<Announced>) {
        let options = match &self.options {
            Ok(options) => (**options).clone(),
            Err(error) => {
                tracing::warn!(%error, "not listening for token changes");
                return;
            }
        };
        let task = tokio::spawn(listen::listen(options, changed));
        let previous = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task.abort_handle());
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    async fn pool(&self) -> Result<&PgPool, SourceError> {
        let options = self
            .options
            .as_ref()
            .map_err(|e| SourceError::Invalid(e.clone()))?;
        Ok(self
            .pool
            .get_or_init(|| async {
                PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_lazy_with((**options).clone())
            })
            .await)
    }

    fn writable(&self) -> Result<(), SourceError> {
        match self.query {
            Some(_) => Err(SourceError::Unsupported(sql::READ_ONLY_QUERY.into())),
            None => Ok(()),
        }
    }

    fn origin(&self) -> &'static str {
        match self.query {
            Some(_) => "postgres (custom query)",
            None => "postgres",
        }
    }

    fn unavailable(&self, problem: &str) -> SourceError {
        SourceError::Unavailable(format!("{}: {problem}", self.origin()))
    }

    /// Connection trouble (SQLSTATE classes 08, 53, 57, 58, and anything
    /// that is not an answer from the server) is `Unavailable`; any other
    /// answer (missing table, syntax error, permission) is `Invalid`.
    fn db_error(&self, error: sqlx::Error) -> SourceError {
        match &error {
            sqlx::Error::PoolTimedOut => self.unavailable(&format!(
                "no connection within {}s (database down or unreachable)",
                CONNECT_TIMEOUT.as_secs()
            )),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let mut message = format!("{}: {}", self.origin(), sql::one_line(&error));
                if ["08", "53", "57", "58"]
                    .iter()
                    .any(|class| code.starts_with(class))
                {
                    return SourceError::Unavailable(message);
                }
                if self.query.is_none() && code == "42P01" {
                    message.push_str(" (`tollgate check` creates it)");
                }
                SourceError::Invalid(message)
            }
            _ => self.unavailable(&sql::one_line(&error)),
        }
    }
}

impl Drop for PostgresSource {
    fn drop(&mut self) {
        let listener = self
            .listener
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = listener.take() {
            task.abort();
        }
    }
}

/// Ways to fingerprint a result, fastest first: `hash_record_extended`
/// hashes each row by its column types (PostgreSQL 14 and later); hashing
/// the row's text works everywhere but takes about twice as long.
const FINGERPRINTS: [(&str, &str); 2] = [
    ("r", "hash_record_extended(t, 0)"),
    ("t", "hashtextextended(t::text, 0)"),
];

/// The fingerprint of what `query` returns, and its row count, in the
/// caller's transaction, or `None` when no way works for this query (each
/// is tried under a savepoint, so a failure leaves the transaction usable).
/// Costs one scan on the server: about 1 s for a million tokens.
async fn fingerprint(tx: &mut sqlx::PgConnection, query: &str) -> Option<(Fingerprint, usize)> {
    let query = query.trim_end().trim_end_matches(';');
    for (tag, row_hash) in FINGERPRINTS {
        let sql =
            format!("SELECT count(*), coalesce(sum({row_hash}), 0)::text FROM (\n{query}\n) AS t");
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await.ok()?;
        match sqlx::query_as::<_, (i64, String)>(&sql)
            .fetch_one(&mut *savepoint)
            .await
        {
            Ok((rows, sum)) => {
                savepoint.commit().await.ok()?;
                let rows = usize::try_from(rows).unwrap_or(0);
                return Some((Fingerprint(format!("{tag}/{rows}/{sum}")), rows));
            }
            Err(error) => {
                tracing::debug!(error = %sql::one_line(error), "no {tag} fingerprint for the token query");
                savepoint.rollback().await.ok()?;
            }
        }
    }
    None
}
