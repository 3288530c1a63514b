//! The `tollgate_tokens` table and the trigger that announces its changes
//! on [`CHANNEL`](super::CHANNEL), and installing them.
//!
//! Invariant: installing is safe from several gateways at once and does
//! no DDL when both exist, so a role that may only read and write rows
//! can start a gateway.

use sqlx::Executor;

use super::PostgresSource;
use crate::tokens::source::SourceError;

/// Serialises schema installation across gateways starting at once
/// (`pg_advisory_xact_lock`); the bytes spell "tollgate".
const SCHEMA_LOCK: i64 = 0x746f_6c6c_6761_7465;

const SCHEMA_READY: &str = "SELECT EXISTS (SELECT 1 FROM pg_trigger \
     WHERE tgrelid = to_regclass('tollgate_tokens') AND tgname = 'tollgate_tokens_notify')";

pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS tollgate_tokens (
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

/// Whether the table and the trigger exist, in one query.
const SCHEMA_STATE: &str = "SELECT to_regclass('tollgate_tokens') IS NOT NULL, EXISTS (SELECT 1 \
     FROM pg_trigger WHERE tgrelid = to_regclass('tollgate_tokens') \
     AND tgname = 'tollgate_tokens_notify')";

impl PostgresSource {
    /// Whether `tollgate_tokens` and its notify trigger exist, without any
    /// DDL (`tollgate check`). Always `Ok` with a custom query.
    pub async fn verify_schema(&self) -> Result<(), SourceError> {
        if self.query.is_some() {
            return Ok(());
        }
        let pool = self.pool().await?;
        let (table, trigger): (bool, bool) = sqlx::query_as(SCHEMA_STATE)
            .fetch_one(pool)
            .await
            .map_err(|e| self.db_error(e))?;
        let missing = match (table, trigger) {
            (true, true) => return Ok(()),
            (false, _) => "the table tollgate_tokens is missing",
            (true, false) => "the trigger tollgate_tokens_notify is missing (without it changes arrive only every refresh_interval)",
        };
        Err(SourceError::Invalid(format!(
            "{}: {missing}; `tollgate token create` or `tollgate serve` creates it",
            self.origin()
        )))
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
}
