//! The PostgreSQL token source (§4): `tollgate_tokens`, a trigger that
//! announces every change on channel `tollgate_tokens`, and a listener that
//! turns those announcements into reloads.
//!
//! Invariant: connections are made lazily and fail within
//! `CONNECT_TIMEOUT`, so a dead database never blocks a caller for long;
//! the listener retries forever and reports every (re)connection as a
//! possible change, since a notification may have been lost meanwhile.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow, PgTypeInfo};
use sqlx::{Column, Decode, Executor, Postgres, Row, Statement, Type, TypeInfo, ValueRef};
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::sync::{Notify, OnceCell};
use tokio::task::AbortHandle;

use super::sql::{self, Bad, Cells, InvalidRow, Shape, Stored};
use super::{Fingerprint, Loaded, SourceError};
use crate::tokens::{TokenId, TokenIndex, TokenRecord};

/// The channel the trigger notifies and every gateway listens on.
pub const CHANNEL: &str = "tollgate_tokens";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_CONNECTIONS: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Serialises schema installation across gateways starting at once
/// (`pg_advisory_xact_lock`); the bytes spell "tollgate".
const SCHEMA_LOCK: i64 = 0x746f_6c6c_6761_7465;

const SCHEMA_READY: &str = "SELECT EXISTS (SELECT 1 FROM pg_trigger \
     WHERE tgrelid = to_regclass('tollgate_tokens') AND tgname = 'tollgate_tokens_notify')";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS tollgate_tokens (
    id            text PRIMARY KEY,
    sha256        text UNIQUE NOT NULL,
    scopes        text NOT NULL,
    read_only     boolean NOT NULL DEFAULT false,
    expires_at    timestamptz,
    allowed_ips   text,
    rate_requests integer,
    rate_per_ms   integer,
    rate_burst    integer,
    disabled      boolean NOT NULL DEFAULT false,
    description   text,
    created_at    timestamptz,
    updated_at    timestamptz,
    last_used_at  timestamptz
)";

/// `record_use` sets `tollgate.skip_notify` for its own transaction, so the
/// once-a-minute `last_used_at` writes do not make every gateway reload.
const CREATE_FUNCTION: &str = "CREATE OR REPLACE FUNCTION tollgate_tokens_notify() \
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tollgate.skip_notify', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('tollgate_tokens', '');
    RETURN NULL;
END
$$";

const CREATE_TRIGGER: &str = "CREATE TRIGGER tollgate_tokens_notify \
     AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tollgate_tokens \
     FOR EACH STATEMENT EXECUTE FUNCTION tollgate_tokens_notify()";

/// Tokens in a PostgreSQL database.
pub struct PostgresSource {
    /// The parsed URL (boxed: it is large and read once per connection);
    /// `Err` holds why it does not parse.
    options: Result<Box<PgConnectOptions>, String>,
    query: Option<String>,
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
            pool: OnceCell::new(),
            listener: Mutex::new(None),
            reported: sql::Reported::default(),
        }
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
            sql::records(self.origin(), &shape, &rows)
        };
        tokio::time::timeout(sql::QUERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query timed out")))
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
            let shape = Shape::of(statement.columns().iter().map(|c| c.name()))
                .map_err(|p| SourceError::Invalid(format!("{}: {p}", self.origin())))?;
            let rows = before.as_ref().map_or(0, |(_, rows)| *rows);
            let stream = statement.query().fetch(&mut *tx);
            let (index, invalid) = sql::build(self.origin(), &shape, rows, stream, db).await?;
            self.reported.log(self.origin(), invalid);
            Ok(Some((tx, index, before.map(|(f, _)| f))))
        };
        let read = tokio::time::timeout(sql::QUERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the query timed out")))?;
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

    /// Creates `tollgate_tokens` and its notify trigger when missing. Safe
    /// to run from several gateways at once; does no DDL when both exist,
    /// so a role that may only read and write rows can run it. A no-op
    /// with a custom query (the table belongs to the application).
    pub async fn ensure_schema(&self) -> Result<(), SourceError> {
        if self.query.is_some() {
            return Ok(());
        }
        let pool = self.pool().await?;
        let ready: bool = sqlx::query_scalar(SCHEMA_READY)
            .fetch_one(pool)
            .await
            .map_err(|e| self.db_error(e))?;
        if ready {
            return Ok(());
        }
        let install = async {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SCHEMA_LOCK)
                .execute(&mut *tx)
                .await?;
            tx.execute(CREATE_TABLE).await?;
            tx.execute(CREATE_FUNCTION).await?;
            let ready: bool = sqlx::query_scalar(SCHEMA_READY).fetch_one(&mut *tx).await?;
            if !ready {
                tx.execute(CREATE_TRIGGER).await?;
            }
            tx.commit().await
        };
        install.await.map_err(|e| self.db_error(e))
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
        self.writable()?;
        let done = sqlx::query(
            "UPDATE tollgate_tokens SET disabled = true, updated_at = $2 WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(sql::now())
        .execute(self.pool().await?)
        .await
        .map_err(|e| self.db_error(e))?;
        match done.rows_affected() {
            0 => Err(sql::no_such_token(id.as_str())),
            _ => Ok(()),
        }
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

    /// Listens on [`CHANNEL`] in a background task: `changed` is notified
    /// on every notification and after every (re)connection; a dropped
    /// connection is retried with backoff (100 ms doubling to 5 s) forever.
    /// The task ends when the source is dropped. Must run inside a Tokio
    /// runtime.
    pub fn watch(&self, changed: Arc<Notify>) {
        let options = match &self.options {
            Ok(options) => (**options).clone(),
            Err(error) => {
                tracing::warn!(%error, "not listening for token changes");
                return;
            }
        };
        let task = tokio::spawn(listen(options, changed));
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

/// The listener loop behind [`PostgresSource::watch`].
async fn listen(options: PgConnectOptions, changed: Arc<Notify>) {
    // Its own pool of one, so the listening connection never takes a slot
    // that loads need.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let mut backoff = MIN_BACKOFF;
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                let since = Instant::now();
                changed.notify_one();
                let error = loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => changed.notify_one(),
                        Ok(None) => break "connection lost".to_owned(),
                        Err(e) => break sql::one_line(e),
                    }
                };
                tracing::warn!(%error, "token change listener disconnected; reconnecting");
                // A load now finds out whether the database itself is gone
                // (and says so on `tollgate_token_source_up`) rather than at
                // the next refresh_interval.
                changed.notify_one();
                if since.elapsed() > MAX_BACKOFF {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(error) => {
                tracing::warn!(error = %sql::one_line(error), "token change listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Reconnect here, with backoff and a notification, not inside sqlx.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

impl Cells for PgRow {
    fn text(&self, i: usize) -> Result<Option<String>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<String>(&ty) => decode(self, i).map(Some),
            Some(ty) => Err(mismatch(&ty, "text")),
        }
    }

    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<bool>(&ty) => decode(self, i).map(Some),
            Some(ty) if is::<i16>(&ty) || is::<i32>(&ty) || is::<i64>(&ty) => {
                Ok(self.integer(i)?.map(sql::int_bool).transpose()?)
            }
            Some(ty) => Err(mismatch(&ty, "boolean")),
        }
    }

    fn integer(&self, i: usize) -> Result<Option<i64>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<i32>(&ty) => decode::<i32>(self, i).map(|n| Some(n.into())),
            Some(ty) if is::<i64>(&ty) => decode::<i64>(self, i).map(Some),
            Some(ty) if is::<i16>(&ty) => decode::<i16>(self, i).map(|n| Some(n.into())),
            Some(ty) => Err(mismatch(&ty, "integer")),
        }
    }

    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<OffsetDateTime>(&ty) => decode(self, i).map(Some),
            Some(ty) if is::<String>(&ty) => {
                Ok(Some(sql::parse_time(&decode::<String>(self, i)?)?))
            }
            Some(ty) if is::<PrimitiveDateTime>(&ty) => Err(Bad::Type(
                "is a timestamp without time zone; convert it, e.g. `expires AT TIME ZONE 'UTC'`"
                    .into(),
            )),
            Some(ty) => Err(mismatch(&ty, "timestamptz or RFC 3339 text")),
        }
    }
}

/// The type of a non-NULL cell.
fn sql_type(row: &PgRow, i: usize) -> Result<Option<PgTypeInfo>, Bad> {
    let value = row
        .try_get_raw(i)
        .map_err(|e| Bad::Type(sql::one_line(e)))?;
    Ok((!value.is_null()).then(|| value.type_info().into_owned()))
}

fn is<T: Type<Postgres>>(ty: &PgTypeInfo) -> bool {
    T::compatible(ty)
}

/// A cell of a type already checked to fit; a failure is the column's.
fn decode<'r, T: Decode<'r, Postgres> + Type<Postgres>>(
    row: &'r PgRow,
    i: usize,
) -> Result<T, Bad> {
    row.try_get(i).map_err(|e| Bad::Type(sql::one_line(e)))
}

/// PostgreSQL types are per column, so a wrong one fails the whole load.
fn mismatch(ty: &PgTypeInfo, expected: &str) -> Bad {
    Bad::Type(format!("has SQL type {}, expected {expected}", ty.name()))
}

#[cfg(test)]
mod tests {
    //! Against a real PostgreSQL named by `TOLLGATE_TEST_DATABASE_URL`;
    //! each test works in its own schema, so they run in parallel. Tests
    //! that assert on notifications (which are database-wide) run alone.

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
            let url =
                format!("{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}");
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

    async fn notified(changed: &Notify, within: Duration) -> bool {
        tokio::time::timeout(within, changed.notified())
            .await
            .is_ok()
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
        assert_eq!(triggers, 1);
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
        let seed = include_str!("../../../deploy/compose/init.sql");
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
        db.exec(
            "UPDATE tollgate_tokens SET allowed_ips = NULL, rate_per_ms = 1000 WHERE id = 'bad'",
        )
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
        let typo =
            "SELECT 'a' AS id, 'secret' AS token, '' AS scopes, true AS readonly WHERE false";
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

    #[tokio::test]
    async fn trigger_announces_every_kind_of_change_but_not_record_use() {
        let Some(db) = TestDb::new(true).await else {
            return;
        };
        let source = db.source(None);
        source.ensure_schema().await.unwrap();
        let mut listener = PgListener::connect(&db.url).await.unwrap();
        listener.listen(CHANNEL).await.unwrap();
        let mut writer = db.admin.acquire().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *writer)
            .await
            .unwrap();
        for statement in [
            format!(
                "INSERT INTO tollgate_tokens (id, sha256, scopes) VALUES ('a', '{}', 's')",
                TokenHash::of(b"s").to_hex()
            ),
            "UPDATE tollgate_tokens SET scopes = 't'".into(),
            "DELETE FROM tollgate_tokens WHERE id = 'nobody'".into(),
            "TRUNCATE tollgate_tokens".into(),
        ] {
            writer.execute(&*statement).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
                .await
                .unwrap_or_else(|_| panic!("no notification for {statement}"))
                .unwrap();
            assert_eq!(
                (n.channel(), n.process_id()),
                (CHANNEL, pid as u32),
                "{statement}"
            );
        }
        source.create(&record("b", "s2")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("no notification for create")
            .unwrap();
        source
            .record_use(&[("b".into(), sql::now())])
            .await
            .unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
        assert!(quiet.is_err(), "record_use was announced");
        assert!(source.load().await.unwrap()[0].last_used_at.is_some());
    }

    #[tokio::test]
    async fn watch_reports_an_insert_and_survives_a_killed_connection() {
        let Some(db) = TestDb::new(true).await else {
            return;
        };
        let source = db.source(None);
        source.ensure_schema().await.unwrap();
        let changed = Arc::new(Notify::new());
        source.watch(changed.clone());
        assert!(
            notified(&changed, Duration::from_secs(5)).await,
            "no notice on connect"
        );
        assert!(
            !notified(&changed, Duration::from_millis(300)).await,
            "notice without a change"
        );

        let writer = db.source(None);
        writer.create(&record("a", "s1")).await.unwrap();
        assert!(
            notified(&changed, Duration::from_secs(5)).await,
            "insert not reported"
        );

        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&db.schema)
        .fetch_one(&db.admin)
        .await
        .unwrap();
        assert_eq!(killed, 1);
        assert!(
            notified(&changed, Duration::from_secs(5)).await,
            "no notice on reconnect"
        );
        writer.revoke(&id("a")).await.unwrap();
        assert!(
            notified(&changed, Duration::from_secs(5)).await,
            "revoke not reported"
        );
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
}
