//! Turning result rows into [`TokenRecord`]s: reading each cell, checking
//! every column's value, and deciding whether a bad row is skipped or
//! fails the whole load.
//!
//! Invariant: a row that was read completely but is invalid is skipped and
//! reported by its id (when valid) or position, never by a value; a column
//! of the wrong SQL type, a duplicate or a failed read fails the load.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use ipnet::IpNet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Cells, Shape};
use crate::config::Rate;
use crate::tokens::source::SourceError;
use crate::tokens::split::{SplitDigest, SplitKey, SplitTokens};
use crate::tokens::{secret, IndexBuilder, Scope, TokenHash, TokenId, TokenIndex, TokenRecord};

/// A streamed load gives other tasks on its thread a turn this often (rows).
const YIELD_EVERY: usize = 4096;

/// Why a cell cannot be read. Neither kind quotes the cell.
#[derive(Debug, PartialEq)]
pub(crate) enum Bad {
    /// The column's SQL type cannot mean the value (PostgreSQL types are
    /// per column, so this is the query's fault, not one row's): the whole
    /// load fails.
    Type(String),
    /// This row's value is not valid: the row is skipped.
    Value(String),
}

impl From<String> for Bad {
    fn from(problem: String) -> Self {
        Bad::Value(problem)
    }
}

impl From<&str> for Bad {
    fn from(problem: &str) -> Self {
        Bad::Value(problem.to_owned())
    }
}

/// A row that was read completely but is invalid, so it is skipped (§7.3).
/// Named by its id when the id itself is valid, else by its position in
/// the result; never by a value (a secret may sit in the wrong column).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InvalidRow {
    /// 1-based position in the result.
    pub row: usize,
    pub id: Option<TokenId>,
    pub column: &'static str,
    pub problem: String,
}

impl std::fmt::Display for InvalidRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "token {id:?}")?,
            None => write!(f, "row {}", self.row)?,
        }
        write!(f, ": {}: {}", self.column, self.problem)
    }
}

/// Every valid record of a complete read, and the rows skipped as invalid.
/// A duplicate id or secret among the valid rows fails the whole load
/// (which of the two would be the right one cannot be told).
pub(crate) fn records<R: Cells>(
    origin: &str,
    shape: &Shape,
    rows: &[R],
) -> Result<(Vec<TokenRecord>, Vec<InvalidRow>), SourceError> {
    let mut out: Vec<TokenRecord> = Vec::with_capacity(rows.len());
    let mut invalid = Vec::new();
    let mut ids: HashSet<TokenId> = HashSet::with_capacity(rows.len());
    let mut hashes: HashMap<TokenHash, usize> = HashMap::with_capacity(rows.len());
    for (n, row) in rows.iter().enumerate() {
        let record = match (Reader { row, shape }).record() {
            Ok(record) => record,
            Err(e) => {
                invalid.push(e.into_invalid(origin, n)?);
                continue;
            }
        };
        if !ids.insert(record.id.clone()) {
            return Err(SourceError::Invalid(format!(
                "{origin}: the id {:?} appears twice",
                record.id
            )));
        }
        if let Some(&other) = hashes.get(&record.hash) {
            return Err(SourceError::Invalid(format!(
                "{origin}: tokens {:?} and {:?} have the same secret",
                out[other].id, record.id
            )));
        }
        hashes.insert(record.hash, out.len());
        out.push(record);
    }
    Ok((out, invalid))
}

/// Validates streamed rows straight into an index, so neither the rows nor
/// the records are ever all held at once. An invalid row is skipped and
/// counted in the index; a duplicate id or secret, a column of the wrong
/// SQL type or a database error part-way fails the whole load. `capacity`
/// is a hint. Rows arriving mark `progress` (every few thousand), so the
/// caller can bound the load by lack of progress rather than by its
/// length: ten million rows take longer than any fixed timeout.
pub(crate) async fn build<R, S>(
    origin: &str,
    shape: &Shape,
    split: Option<&Arc<SplitTokens>>,
    capacity: usize,
    mut rows: S,
    progress: &crate::progress::Progress,
    db_error: impl Fn(sqlx::Error) -> SourceError,
) -> Result<(TokenIndex, Vec<InvalidRow>), SourceError>
where
    R: Cells,
    S: Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    let mut builder = IndexBuilder::with_capacity(capacity);
    builder.split_rules(split.cloned());
    let mut invalid = Vec::new();
    let mut n = 0;
    while let Some(row) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut rows).poll_next(cx)).await
    {
        let read = Reader {
            row: &row.map_err(&db_error)?,
            shape,
        }
        .record();
        match read {
            Ok(record) => builder
                .push(record)
                .map_err(|e| SourceError::Invalid(format!("{origin}: {e}")))?,
            Err(e) => {
                invalid.push(e.into_invalid(origin, n)?);
                builder.skip_invalid();
            }
        }
        n += 1;
        if n % YIELD_EVERY == 0 {
            progress.touch();
            tokio::task::yield_now().await;
        }
    }
    Ok((builder.finish(), invalid))
}

/// Every row of `rows`, marking `progress` as they arrive (every few
/// thousand), so a whole read is bounded by lack of progress too.
pub(crate) async fn collect<R, S>(
    mut rows: S,
    progress: &crate::progress::Progress,
    db_error: impl Fn(sqlx::Error) -> SourceError,
) -> Result<Vec<R>, SourceError>
where
    S: Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    let mut all = Vec::new();
    while let Some(row) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut rows).poll_next(cx)).await
    {
        all.push(row.map_err(&db_error)?);
        if all.len() % YIELD_EVERY == 0 {
            progress.touch();
        }
    }
    Ok(all)
}

/// The invalid rows a source has logged, so that a re-read logs each one
/// once rather than every `refresh_interval`.
#[derive(Debug, Default)]
pub(crate) struct Reported(std::sync::Mutex<HashSet<InvalidRow>>);

impl Reported {
    /// Logs each row of `invalid` not logged by the previous read, and
    /// remembers this read's.
    pub(crate) fn log(&self, origin: &str, invalid: Vec<InvalidRow>) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for row in &invalid {
            if !seen.contains(row) {
                tracing::warn!(
                    source = origin,
                    row = %row,
                    "token row skipped: it is invalid and authenticates nothing"
                );
            }
        }
        *seen = invalid.into_iter().collect();
    }
}

/// A problem with one cell.
struct RowError {
    id: Option<TokenId>,
    column: &'static str,
    problem: Bad,
}

impl RowError {
    /// The row to skip, or (for a column of the wrong SQL type) the error
    /// that fails the whole load.
    fn into_invalid(self, origin: &str, n: usize) -> Result<InvalidRow, SourceError> {
        let row = InvalidRow {
            row: n + 1,
            id: self.id,
            column: self.column,
            problem: String::new(),
        };
        match self.problem {
            Bad::Value(problem) => Ok(InvalidRow { problem, ..row }),
            Bad::Type(problem) => Err(SourceError::Invalid(format!(
                "{origin}: {}",
                InvalidRow { problem, ..row }
            ))),
        }
    }
}

struct Reader<'a, R> {
    row: &'a R,
    shape: &'a Shape,
}

impl<R: Cells> Reader<'_, R> {
    fn record(&self) -> Result<TokenRecord, RowError> {
        let id = self
            .cell(None, "id", Cells::text)?
            .ok_or_else(|| problem(None, "id", "is null"))?;
        let id = TokenId::parse(&id).map_err(|p| problem(None, "id", p))?;
        let who = Some(&id);
        let err = |column: &'static str, p: &str| problem(who, column, p);

        let sha256 = self.cell(who, "sha256", Cells::text)?;
        let token = self.cell(who, "token", Cells::text)?;
        let split = self.split(who)?;
        let (hash, from_plaintext) = match (sha256, token, &split) {
            (None, None, Some(split)) => (split.binding_hash(), false),
            (_, _, Some(_)) => return Err(err("key", "is set together with sha256 or token")),
            (Some(hex), None, None) => (
                TokenHash::from_hex(&hex)
                    .ok_or_else(|| err("sha256", "is not 64 lowercase hex characters"))?,
                false,
            ),
            (None, Some(plain), None) => {
                if plain.is_empty() {
                    return Err(err("token", "is empty"));
                }
                if secret::is_mistyped(plain.as_bytes()) {
                    return Err(err(
                        "token",
                        "is a tg_ secret with a wrong checksum, so it could never be accepted",
                    ));
                }
                (TokenHash::of(plain.as_bytes()), true)
            }
            (Some(_), Some(_), None) => return Err(err("token", "is set together with sha256")),
            (None, None, None) => {
                let column = ["sha256", "token", "key"]
                    .into_iter()
                    .find(|c| self.shape.index(c).is_some())
                    .unwrap_or("sha256");
                return Err(err(column, "is null"));
            }
        };

        let scopes = self
            .cell(who, "scopes", Cells::text)?
            .ok_or_else(|| err("scopes", "is null"))?;
        let allowed_ips = match self.cell(who, "allowed_ips", Cells::text)? {
            Some(text) => parse_ips(&text).map_err(|p| err("allowed_ips", &p))?,
            None => Vec::new(),
        };
        let rate = rate(
            self.cell(who, "rate_requests", Cells::integer)?,
            self.cell(who, "rate_per_ms", Cells::integer)?,
            self.cell(who, "rate_burst", Cells::integer)?,
        )
        .map_err(|(column, p)| err(column, &p))?;

        Ok(TokenRecord {
            hash,
            scopes: Scope::parse_list(&scopes).map_err(|p| err("scopes", p))?,
            read_only: self.flag(who, "read_only")?,
            expires_at: self.cell(who, "expires_at", Cells::timestamp)?,
            allowed_ips,
            rate_limit: rate,
            disabled: self.flag(who, "disabled")?,
            description: self.cell(who, "description", Cells::text)?,
            created_at: self.cell(who, "created_at", Cells::timestamp)?,
            updated_at: self.cell(who, "updated_at", Cells::timestamp)?,
            last_used_at: self.cell(who, "last_used_at", Cells::timestamp)?,
            from_plaintext,
            split,
            id,
        })
    }

    /// The split-token columns (the contract, §7.2): all NULL for a plain
    /// token; otherwise a key, a digest and a pepper id (an integer or
    /// text).
    fn split(&self, who: Option<&TokenId>) -> Result<Option<SplitKey>, RowError> {
        let err = |column: &'static str, p: &str| problem(who, column, p);
        let key = self.cell(who, "key", Cells::text)?;
        let digest = self.cell(who, "hmac_digest", Cells::text)?;
        let pepper = match self.cell(who, "pepper_id", Cells::integer) {
            Ok(n) => n.map(|n| n.to_string()),
            Err(_) => self.cell(who, "pepper_id", Cells::text)?,
        };
        let (key, digest, pepper) = match (key, digest, pepper) {
            (None, None, None) => return Ok(None),
            (None, _, _) => {
                return Err(err("key", "is null while hmac_digest or pepper_id is set"))
            }
            (_, None, _) => return Err(err("hmac_digest", "is null while key is set")),
            (_, _, None) => return Err(err("pepper_id", "is null while key is set")),
            (Some(k), Some(d), Some(p)) => (k, d, p),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err("key", "is not one or more visible ASCII characters"));
        }
        if pepper.is_empty() {
            return Err(err("pepper_id", "is empty"));
        }
        let digest = SplitDigest::from_hex(&pepper, &digest)
            .ok_or_else(|| err("hmac_digest", "is not 64 lowercase hex characters"))?;
        Ok(Some(SplitKey {
            key: key.into_boxed_str(),
            digest,
        }))
    }

    /// An absent column reads as NULL.
    fn cell<T>(
        &self,
        who: Option<&TokenId>,
        column: &'static str,
        read: impl Fn(&R, usize) -> Result<Option<T>, Bad>,
    ) -> Result<Option<T>, RowError> {
        match self.shape.index(column) {
            Some(i) => read(self.row, i).map_err(|problem| RowError {
                id: who.cloned(),
                column,
                problem,
            }),
            None => Ok(None),
        }
    }

    /// A boolean column: absent means false; NULL is refused rather than
    /// guessed (a NULL `disabled` must not enable a token).
    fn flag(&self, who: Option<&TokenId>, column: &'static str) -> Result<bool, RowError> {
        if self.shape.index(column).is_none() {
            return Ok(false);
        }
        self.cell(who, column, Cells::boolean)?
            .ok_or_else(|| problem(who, column, "is null"))
    }
}

fn problem(id: Option<&TokenId>, column: &'static str, problem: &str) -> RowError {
    RowError {
        id: id.cloned(),
        column,
        problem: Bad::Value(problem.to_owned()),
    }
}

/// Why a text is not an address; it does not quote the text.
pub(crate) const NOT_AN_IP: &str =
    "is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7 or ::1)";

/// Why a text is not a time; it does not quote the text.
pub(crate) const NOT_A_TIME: &str = "is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)";

/// One address or CIDR; a bare address is a /32 or /128 network, and host
/// bits of a CIDR are cleared. The error does not quote `text`.
pub(crate) fn parse_ip(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| NOT_AN_IP.to_owned())
}

/// Space-separated addresses or CIDRs; the error names the position of
/// the first bad one, never its text.
pub(crate) fn parse_ips(text: &str) -> Result<Vec<IpNet>, String> {
    text.split_ascii_whitespace()
        .enumerate()
        .map(|(i, t)| parse_ip(t).map_err(|p| format!("the address at position {} {p}", i + 1)))
        .collect()
}

/// The three rate columns: all NULL, or requests and period positive with
/// the burst defaulting to the requests.
pub(super) fn rate(
    requests: Option<i64>,
    per_ms: Option<i64>,
    burst: Option<i64>,
) -> Result<Option<Rate>, (&'static str, String)> {
    let positive = |column: &'static str, n: i64| {
        u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| (column, "is not a positive 32-bit number".to_owned()))
    };
    match (requests, per_ms, burst) {
        (None, None, None) => Ok(None),
        (Some(requests), Some(per_ms), burst) => {
            let requests = positive("rate_requests", requests)?;
            let per = positive("rate_per_ms", per_ms)?;
            let burst = match burst {
                Some(b) => positive("rate_burst", b)?,
                None => requests,
            };
            Ok(Some(Rate {
                requests,
                per: Duration::from_millis(per.get().into()),
                burst,
            }))
        }
        (None, _, _) => Err((
            "rate_requests",
            "is null while rate_per_ms or rate_burst is set".into(),
        )),
        (Some(_), None, _) => Err(("rate_per_ms", "is null while rate_requests is set".into())),
    }
}

/// `0`/`1` as a boolean (SQLite's booleans, integer columns in a query).
pub(crate) fn int_bool(n: i64) -> Result<bool, String> {
    match n {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err("is not a boolean (0 or 1)".to_owned()),
    }
}

/// An RFC 3339 timestamp stored as text; the error does not quote it.
pub(crate) fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| NOT_A_TIME.to_owned())
}
