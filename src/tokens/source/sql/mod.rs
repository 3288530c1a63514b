//! What the SQLite and PostgreSQL sources share: the `tollgate_tokens`
//! columns (§4) and the rules for a query's columns (this module), turning
//! result rows into records (`row`), and the values a record is stored as
//! (`stored`), so that neither source writes them again.
//!
//! Invariant: a message built here names a row by its id (or its position)
//! and a column, and never quotes a cell: a secret pasted into the wrong
//! column must not reach a log line or `tollgate check`.

mod row;
mod stored;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Column, Statement};
use time::OffsetDateTime;

pub use row::InvalidRow;
pub(crate) use row::{
    build, collect, int_bool, parse_ip, parse_time, records, Bad, Reported, NOT_A_TIME,
};
pub(crate) use stored::{format_time, now, Stored};

use super::SourceError;
use crate::tokens::split::SplitTokens;
use crate::tokens::{TokenId, TokenRecord};

/// The table every database source reads (unless a custom query is set).
pub const TABLE: &str = "tollgate_tokens";

/// Why a custom-query source refuses writes.
pub const READ_ONLY_QUERY: &str =
    "tokens come from a custom query; manage them in the application that owns the table";

/// How long a query may make no progress before the source counts as
/// unavailable: a read of every token (an index load, `check`, `token
/// list`) may take as long as it needs while rows keep arriving; a short
/// query (a fingerprint, the rows of a few changed tokens) gets this in all.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every column a result may carry, in the order of the default `SELECT`.
/// `token` (plaintext) and the split-token columns `key`, `hmac_digest` and
/// `pepper_id` (the contract, §7.2) are not table columns; only a custom
/// query returns them.
const COLUMNS: [&str; 18] = [
    "id",
    "sha256",
    "scopes",
    "read_only",
    "expires_at",
    "allowed_ips",
    "rate_requests",
    "rate_per_ms",
    "rate_burst",
    "disabled",
    "description",
    "created_at",
    "updated_at",
    "last_used_at",
    "token",
    "key",
    "hmac_digest",
    "pepper_id",
];
const TABLE_COLUMNS: usize = 14;
/// The leading columns the token index uses; the rest are for `token list`.
const INDEX_COLUMNS: usize = 10;

/// Each id of `ids` that a token may have, with its record among
/// `records` or `None` (gone): what a partial read hands the index.
pub(crate) fn by_id(ids: &[String], records: Vec<TokenRecord>) -> super::Changed {
    let mut found: HashMap<TokenId, TokenRecord> =
        records.into_iter().map(|r| (r.id.clone(), r)).collect();
    ids.iter()
        .filter_map(|id| TokenId::parse(id).ok())
        .map(|id| {
            let record = found.remove(&id);
            (id, record)
        })
        .collect()
}

/// [`index_query`] for the rows whose id `predicate` accepts (`= ANY($1)`):
/// a partial read by primary key.
pub(crate) fn index_query_where(predicate: &str) -> String {
    format!(
        "SELECT * FROM ({}) AS t WHERE t.id {predicate}",
        index_query()
    )
}

/// `SELECT <every table column> FROM tollgate_tokens`.
pub(crate) fn default_query() -> String {
    format!(
        "SELECT {} FROM {TABLE} ORDER BY id",
        COLUMNS[..TABLE_COLUMNS].join(", ")
    )
}

/// `SELECT <the columns the index uses> FROM tollgate_tokens`, unordered:
/// what the gateway loads. `last_used_at` is left out, so the gateway's own
/// once-a-minute writes do not change what it reads.
pub(crate) fn index_query() -> String {
    format!(
        "SELECT {} FROM {TABLE}",
        COLUMNS[..INDEX_COLUMNS].join(", ")
    )
}

/// Reads one cell of a result row, accepting the SQL types that can sensibly
/// mean the value. `Err` is a short problem, such as `has SQL type INT4,
/// expected text`, that never quotes the cell; `Ok(None)` is SQL NULL.
pub(crate) trait Cells {
    fn text(&self, i: usize) -> Result<Option<String>, Bad>;
    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad>;
    fn integer(&self, i: usize) -> Result<Option<i64>, Bad>;
    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad>;
}

/// Which known columns a result carries, and at which position.
#[derive(Debug)]
pub(crate) struct Shape {
    at: [Option<usize>; COLUMNS.len()],
}

impl Shape {
    /// Checks a result's column names (ASCII case-insensitively): `id`,
    /// `scopes`, and `sha256`, `token` or the three split-token columns
    /// are required; a name that is not
    /// a column of §4 is refused, so a misspelt `read_only` cannot silently
    /// give write access.
    pub(crate) fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Shape, String> {
        let mut at = [None; COLUMNS.len()];
        for (i, name) in names.into_iter().enumerate() {
            let Some(k) = COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) else {
                return Err(format!(
                    "returns a column {name:?}, which is not one of {}",
                    COLUMNS.join(", ")
                ));
            };
            if at[k].replace(i).is_some() {
                return Err(format!("returns the column {:?} twice", COLUMNS[k]));
            }
        }
        let shape = Shape { at };
        for required in ["id", "scopes"] {
            if shape.index(required).is_none() {
                return Err(format!("does not return the column {required:?}"));
            }
        }
        let split = SPLIT_COLUMNS.map(|c| shape.index(c).is_some());
        if split.contains(&true) && split.contains(&false) {
            return Err(format!(
                "returns some but not all of the split-token columns {}",
                SPLIT_COLUMNS.join(", ")
            ));
        }
        if shape.index("sha256").is_none() && shape.index("token").is_none() && !split[0] {
            return Err(
                "returns none of \"sha256\", \"token\" and the split-token columns \"key\", \"hmac_digest\", \"pepper_id\""
                    .into(),
            );
        }
        Ok(shape)
    }

    /// Whether the result carries split tokens' columns.
    pub(crate) fn has_split(&self) -> bool {
        self.index("key").is_some()
    }

    fn index(&self, column: &str) -> Option<usize> {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .and_then(|k| self.at[k])
    }
}

/// The columns of a split token (the contract, §7.2).
const SPLIT_COLUMNS: [&str; 3] = ["key", "hmac_digest", "pepper_id"];

/// The [`Shape`] of a prepared statement's columns; `origin` names the
/// source in the error. Split-token columns need the config's split rules
/// (`split`), without which their rows could never be verified.
pub(crate) fn shape_of<'q, S: Statement<'q>>(
    origin: &str,
    statement: &S,
    split: Option<&Arc<SplitTokens>>,
) -> Result<Shape, SourceError> {
    let shape = Shape::of(statement.columns().iter().map(|c| c.name()))
        .map_err(|p| SourceError::Invalid(format!("{origin}: {p}")))?;
    if shape.has_split() && split.is_none() {
        return Err(SourceError::Invalid(format!(
            "{origin}: returns split tokens (key, hmac_digest, pepper_id) but tokens.split and tokens.peppers are not configured"
        )));
    }
    Ok(shape)
}

/// Why `create` stored nothing: `existing` is the id of the row that holds
/// the same id or the same secret.
pub(crate) fn conflict(new_id: &str, existing: Option<String>) -> SourceError {
    match existing {
        Some(existing) if existing != new_id => SourceError::Invalid(format!(
            "this secret is already stored as token {existing:?}"
        )),
        _ => SourceError::Invalid(format!("a token with id {new_id:?} already exists")),
    }
}

/// The error for `revoke` of an id that is not there.
/// The statements of a [`Change`](super::Change) in one database's
/// dialect; parameters as [`apply_change!`] binds them.
pub(crate) struct ChangeSql {
    /// `id`, `disabled`, now.
    pub disable: &'static str,
    /// `id`.
    pub delete: &'static str,
    /// `id`, the new `sha256`, now.
    pub rehash: &'static str,
    /// `id`, the id to give the row.
    pub rename: &'static str,
    /// The new `id`, the new `sha256`, now, the id of the row to copy.
    pub copy: &'static str,
    /// `id`, the latest expiry, now: lowers `expires_at` to it.
    pub cap_expiry: &'static str,
}

/// The columns a rotation copies from the old row into the new one, after
/// `id, sha256`.
macro_rules! copied_columns {
    () => {
        "scopes, read_only, expires_at, allowed_ips, rate_requests, rate_per_ms, \
         rate_burst, disabled, description, created_at"
    };
}
pub(crate) use copied_columns;

/// Applies `change` to the token `id` inside the transaction `tx`, with
/// one database's statements (`sql`), its value of now (`now`) and its
/// conversion of a time (`time`); ends the transaction explicitly (a
/// dropped one would leave its connection idle in it, holding locks) and
/// evaluates to the rows found (0: no such token). `previous` is
/// [`Change::previous`](super::Change::previous)'s id, or `""`.
macro_rules! apply_change {
    ($tx:ident, $sql:expr, $id:expr, $previous:expr, $change:expr, $now:expr, $time:expr) => {{
        use $crate::tokens::source::Change;
        let id: &str = $id;
        let found = match $change {
            Change::Disabled(disabled) => sqlx::query($sql.disable)
                .bind(id)
                .bind(*disabled)
                .bind($now)
                .execute(&mut *$tx)
                .await?
                .rows_affected(),
            Change::Delete => sqlx::query($sql.delete)
                .bind(id)
                .execute(&mut *$tx)
                .await?
                .rows_affected(),
            Change::Rotate {
                hash,
                previous_until: None,
            } => sqlx::query($sql.rehash)
                .bind(id)
                .bind(hash.to_hex())
                .bind($now)
                .execute(&mut *$tx)
                .await?
                .rows_affected(),
            Change::Rotate {
                hash,
                previous_until: Some(until),
            } => {
                let previous: &str = $previous;
                sqlx::query($sql.delete)
                    .bind(previous)
                    .execute(&mut *$tx)
                    .await?;
                let found = sqlx::query($sql.rename)
                    .bind(id)
                    .bind(previous)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected();
                if found == 1 {
                    sqlx::query($sql.copy)
                        .bind(id)
                        .bind(hash.to_hex())
                        .bind($now)
                        .bind(previous)
                        .execute(&mut *$tx)
                        .await?;
                    sqlx::query($sql.cap_expiry)
                        .bind(previous)
                        .bind($time(*until))
                        .bind($now)
                        .execute(&mut *$tx)
                        .await?;
                }
                found
            }
        };
        if found > 0 {
            $tx.commit().await?;
        } else {
            $tx.rollback().await?;
        }
        found
    }};
}
pub(crate) use apply_change;

/// What a change that found `found` rows means.
pub(crate) fn changed(found: u64, id: &str) -> Result<(), SourceError> {
    match found {
        0 => Err(no_such_token(id)),
        _ => Ok(()),
    }
}

pub(crate) fn no_such_token(id: &str) -> SourceError {
    SourceError::Invalid(format!("no token with id {id:?}"))
}

/// The latest use per id (the gateway may report an id more than once).
pub(crate) fn latest_uses(uses: &[(String, OffsetDateTime)]) -> Vec<(&str, OffsetDateTime)> {
    let mut latest: HashMap<&str, OffsetDateTime> = HashMap::with_capacity(uses.len());
    for (id, at) in uses {
        let slot = latest.entry(id.as_str()).or_insert(*at);
        if *at > *slot {
            *slot = *at;
        }
    }
    let mut out: Vec<_> = latest.into_iter().collect();
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out
}

/// One line, whatever the driver put in its message.
pub(crate) fn one_line(text: impl std::fmt::Display) -> String {
    text.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
