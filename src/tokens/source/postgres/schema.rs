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

/// The triggers that announce changes: one per kind of statement, each
/// with the rows it changed (a transition table), so the announcement can
/// name the tokens. An older gateway installed one trigger, named like the
/// `TRUNCATE` one, for everything.
const TRIGGERS: [(&str, &str); 4] = [
    (
        "tollgate_tokens_notify_insert",
        "INSERT ON tollgate_tokens REFERENCING NEW TABLE AS tollgate_new",
    ),
    (
        "tollgate_tokens_notify_update",
        "UPDATE ON tollgate_tokens REFERENCING OLD TABLE AS tollgate_old NEW TABLE AS tollgate_new",
    ),
    (
        "tollgate_tokens_notify_delete",
        "DELETE ON tollgate_tokens REFERENCING OLD TABLE AS tollgate_old",
    ),
    ("tollgate_tokens_notify", "TRUNCATE ON tollgate_tokens"),
];

/// Most ids one notification names; a statement that changed more (or
/// whose ids would not fit the 8,000-byte payload) announces anything.
const MAX_NAMED: u32 = 100;

/// Announces the ids of the tokens a statement inserted, updated (old and
/// new id) or deleted as a JSON array; a `TRUNCATE` or a statement that
/// changed more than [`MAX_NAMED`] rows sends an empty payload (anything
/// changed), and one that changed no row sends nothing. `record_use` sets
/// `tollgate.skip_notify` for its own transaction, so the once-a-minute
/// `last_used_at` writes do not make every gateway re-read.
fn create_function() -> String {
    let more = MAX_NAMED + 1;
    format!(
        "CREATE OR REPLACE FUNCTION tollgate_tokens_notify() \
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named json;
BEGIN
    IF current_setting('tollgate.skip_notify', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT json_agg(id) INTO named FROM (SELECT id FROM tollgate_new LIMIT {more}) AS c;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT json_agg(id) INTO named FROM (SELECT id FROM tollgate_old
            UNION SELECT id FROM tollgate_new LIMIT {more}) AS c;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT json_agg(id) INTO named FROM (SELECT id FROM tollgate_old LIMIT {more}) AS c;
    END IF;
    IF TG_OP <> 'TRUNCATE' AND named IS NULL THEN
        RETURN NULL;
    END IF;
    IF named IS NULL OR json_array_length(named) > {MAX_NAMED}
        OR octet_length(named::text) > 7900 THEN
        PERFORM pg_notify('tollgate_tokens', '');
    ELSE
        PERFORM pg_notify('tollgate_tokens', named::text);
    END IF;
    RETURN NULL;
END
$$"
    )
}

/// Whether the table exists, whether a trigger of ours does, and whether
/// all of today's do, in one query.
fn schema_state() -> String {
    let names: Vec<String> = TRIGGERS.iter().map(|(n, _)| format!("'{n}'")).collect();
    format!(
        "SELECT to_regclass('tollgate_tokens') IS NOT NULL, \
         EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('tollgate_tokens') \
         AND tgname = 'tollgate_tokens_notify'), \
         (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('tollgate_tokens') \
         AND tgname IN ({})) = {}",
        names.join(", "),
        TRIGGERS.len()
    )
}

/// The trigger on an application's table (`tokens.notify_trigger_on`):
/// a custom query's rows are not found by token id, so it names nothing
/// and every change is checked by the fingerprint and re-read in full.
fn application_trigger(table: &str) -> [String; 3] {
    [
        "CREATE OR REPLACE FUNCTION tollgate_tokens_changed() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('tollgate_tokens', ''); \
         RETURN NULL; END $$"
            .to_owned(),
        format!("DROP TRIGGER IF EXISTS tollgate_tokens_notify ON {table}"),
        format!(
            "CREATE TRIGGER tollgate_tokens_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE \
             ON {table} FOR EACH STATEMENT EXECUTE FUNCTION tollgate_tokens_changed()"
        ),
    ]
}

const APPLICATION_TRIGGER_READY: &str = "SELECT EXISTS (SELECT 1 FROM pg_trigger \
     WHERE tgrelid = to_regclass($1) AND tgname = 'tollgate_tokens_notify')";

/// A transaction holding the schema lock, so gateways starting at once
/// install one after the other.
async fn locked(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

impl PostgresSource {
    /// Whether the trigger on `tokens.notify_trigger_on`'s table is
    /// missing: a warning for `tollgate check` with the SQL that installs
    /// it. Nothing when the table is not configured or the database cannot
    /// tell (the read that follows says why).
    pub async fn warnings(&self) -> Vec<String> {
        let Some(table) = &self.notify_on else {
            return Vec::new();
        };
        let Ok(pool) = self.pool().await else {
            return Vec::new();
        };
        let ready = sqlx::query_scalar::<_, bool>(APPLICATION_TRIGGER_READY)
            .bind(table)
            .fetch_one(pool)
            .await;
        match ready {
            Ok(false) => vec![format!(
                "tokens.notify_trigger_on: no trigger announces changes to {table}, so they arrive \
                 every refresh_interval; `tollgate serve` installs it when its role may, or run as \
                 the table's owner:\n{};",
                application_trigger(table).join(";\n")
            )],
            Ok(true) | Err(_) => Vec::new(),
        }
    }

    /// Installs the trigger on `tokens.notify_trigger_on`'s table when it
    /// is missing and the role may; otherwise says why and how, and the
    /// gateway relies on `refresh_interval`.
    async fn ensure_application_trigger(&self, table: &str) -> Result<(), SourceError> {
        let pool = self.pool().await?;
        let ready: bool = sqlx::query_scalar(APPLICATION_TRIGGER_READY)
            .bind(table)
            .fetch_one(pool)
            .await
            .map_err(|e| self.db_error(e))?;
        if ready {
            return Ok(());
        }
        let install = async {
            let mut tx = locked(pool).await?;
            for statement in application_trigger(table) {
                tx.execute(statement.as_str()).await?;
            }
            tx.commit().await
        };
        if let Err(error) = install.await {
            tracing::warn!(
                %table,
                error = %crate::tokens::source::sql::one_line(error),
                sql = %application_trigger(table).join("; "),
                "cannot install the trigger of tokens.notify_trigger_on; changes arrive every refresh_interval until the table's owner runs this SQL"
            );
        }
        Ok(())
    }

    /// Whether `tollgate_tokens` and its notify trigger exist, without any
    /// DDL (`tollgate check`). Always `Ok` with a custom query.
    pub async fn verify_schema(&self) -> Result<(), SourceError> {
        if self.query.is_some() {
            return Ok(());
        }
        let pool = self.pool().await?;
        let (table, trigger, triggers): (bool, bool, bool) = sqlx::query_as(&schema_state())
            .fetch_one(pool)
            .await
            .map_err(|e| self.db_error(e))?;
        let missing = match (table, trigger, triggers) {
            (true, _, true) => return Ok(()),
            (false, _, _) => "the table tollgate_tokens is missing",
            (true, false, _) => "the trigger tollgate_tokens_notify is missing (without it changes arrive only every refresh_interval)",
            (true, true, false) => "the triggers tollgate_tokens_notify_insert, _update and _delete are missing (an older Tollgate installed the table; until they are there every change is a full re-read)",
        };
        Err(SourceError::Invalid(format!(
            "{}: {missing}; `tollgate token create` or `tollgate serve` creates it",
            self.origin()
        )))
    }

    /// Creates `tollgate_tokens` and its notify trigger when missing. Safe
    /// to run from several gateways at once; does no DDL when both exist,
    /// so a role that may only read and write rows can run it. A no-op
    /// with a custom query (the table belongs to the application), except
    /// for the trigger `tokens.notify_trigger_on` asks for.
    pub async fn ensure_schema(&self) -> Result<(), SourceError> {
        if self.query.is_some() {
            return match &self.notify_on {
                Some(table) => self.ensure_application_trigger(table).await,
                None => Ok(()),
            };
        }
        let pool = self.pool().await?;
        let ready = |(_, _, all): (bool, bool, bool)| all;
        let state: (bool, bool, bool) = sqlx::query_as(&schema_state())
            .fetch_one(pool)
            .await
            .map_err(|e| self.db_error(e))?;
        if ready(state) {
            return Ok(());
        }
        let install = async {
            let mut tx = locked(pool).await?;
            tx.execute(CREATE_TABLE).await?;
            let state = sqlx::query_as(&schema_state()).fetch_one(&mut *tx).await?;
            if !ready(state) {
                // Replaces an older gateway's single trigger too.
                tx.execute(create_function().as_str()).await?;
                for (name, on) in TRIGGERS {
                    tx.execute(
                        format!("DROP TRIGGER IF EXISTS {name} ON tollgate_tokens").as_str(),
                    )
                    .await?;
                    tx.execute(
                        format!(
                            "CREATE TRIGGER {name} AFTER {on} FOR EACH STATEMENT \
                             EXECUTE FUNCTION tollgate_tokens_notify()"
                        )
                        .as_str(),
                    )
                    .await?;
                }
            }
            tx.commit().await
        };
        install.await.map_err(|e| self.db_error(e))
    }
}
