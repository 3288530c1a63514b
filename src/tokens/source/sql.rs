//! What the SQLite and PostgreSQL sources share: the `tollgate_tokens`
//! columns (§4), the checks that turn a result row into a [`TokenRecord`],
//! and the values a record is stored as.
//!
//! Invariant: a message built here names a row by its id (or its position)
//! and a column, and never quotes a cell: a secret pasted into the wrong
//! column must not reach a log line or `tollgate check`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use futures_core::Stream;

use super::SourceError;
use crate::config::Rate;
use crate::tokens::{secret, IndexBuilder, Scope, TokenHash, TokenId, TokenIndex, TokenRecord};

/// The table every database source reads (unless a custom query is set).
pub const TABLE: &str = "tollgate_tokens";

/// Why a custom-query source refuses writes.
pub const READ_ONLY_QUERY: &str =
    "tokens come from a custom query; manage them in the application that owns the table";

/// How long one load may take before the source counts as unavailable.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A streamed load gives other tasks on its thread a turn this often (rows).
const YIELD_EVERY: usize = 4096;

/// Every column a result may carry, in the order of the default `SELECT`.
/// `token` (plaintext) is not a table column; only a custom query returns it.
const COLUMNS: [&str; 15] = [
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
];
const TABLE_COLUMNS: usize = COLUMNS.len() - 1;
/// The leading columns the token index uses; the rest are for `token list`.
const INDEX_COLUMNS: usize = 10;

/// `SELECT <every table column> FROM tollgate_tokens`.
pub(super) fn default_query() -> String {
    format!(
        "SELECT {} FROM {TABLE} ORDER BY id",
        COLUMNS[..TABLE_COLUMNS].join(", ")
    )
}

/// `SELECT <the columns the index uses> FROM tollgate_tokens`, unordered:
/// what the gateway loads. `last_used_at` is left out, so the gateway's own
/// once-a-minute writes do not change what it reads.
pub(super) fn index_query() -> String {
    format!(
        "SELECT {} FROM {TABLE}",
        COLUMNS[..INDEX_COLUMNS].join(", ")
    )
}

/// Reads one cell of a result row, accepting the SQL types that can sensibly
/// mean the value. `Err` is a short problem, such as `has SQL type INT4,
/// expected text`, that never quotes the cell; `Ok(None)` is SQL NULL.
pub(super) trait Cells {
    fn text(&self, i: usize) -> Result<Option<String>, Bad>;
    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad>;
    fn integer(&self, i: usize) -> Result<Option<i64>, Bad>;
    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad>;
}

/// Which known columns a result carries, and at which position.
#[derive(Debug)]
pub(super) struct Shape {
    at: [Option<usize>; COLUMNS.len()],
}

impl Shape {
    /// Checks a result's column names (ASCII case-insensitively): `id`,
    /// `scopes`, and `sha256` or `token` are required; a name that is not
    /// a column of §4 is refused, so a misspelt `read_only` cannot silently
    /// give write access.
    pub(super) fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Shape, String> {
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
        if shape.index("sha256").is_none() && shape.index("token").is_none() {
            return Err("returns neither a \"sha256\" nor a \"token\" column".into());
        }
        Ok(shape)
    }

    fn index(&self, column: &str) -> Option<usize> {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .and_then(|k| self.at[k])
    }
}

/// Why a cell cannot be read. Neither kind quotes the cell.
#[derive(Debug, PartialEq)]
pub(super) enum Bad {
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
pub(super) fn records<R: Cells>(
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
/// is a hint.
pub(super) async fn build<R, S>(
    origin: &str,
    shape: &Shape,
    capacity: usize,
    mut rows: S,
    db_error: impl Fn(sqlx::Error) -> SourceError,
) -> Result<(TokenIndex, Vec<InvalidRow>), SourceError>
where
    R: Cells,
    S: Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    let mut builder = IndexBuilder::with_capacity(capacity);
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
            tokio::task::yield_now().await;
        }
    }
    Ok((builder.finish(), invalid))
}

/// The invalid rows a source has logged, so that a re-read logs each one
/// once rather than every `refresh_interval`.
#[derive(Debug, Default)]
pub(super) struct Reported(std::sync::Mutex<HashSet<InvalidRow>>);

impl Reported {
    /// Logs each row of `invalid` not logged by the previous read, and
    /// remembers this read's.
    pub(super) fn log(&self, origin: &str, invalid: Vec<InvalidRow>) {
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
        let (hash, from_plaintext) = match (sha256, token) {
            (Some(hex), None) => (
                TokenHash::from_hex(&hex)
                    .ok_or_else(|| err("sha256", "is not 64 lowercase hex characters"))?,
                false,
            ),
            (None, Some(plain)) => {
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
            (Some(_), Some(_)) => return Err(err("token", "is set together with sha256")),
            (None, None) => {
                let column = if self.shape.index("sha256").is_some() {
                    "sha256"
                } else {
                    "token"
                };
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
            id,
        })
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
fn rate(
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
pub(super) fn int_bool(n: i64) -> Result<bool, String> {
    match n {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err("is not a boolean (0 or 1)".to_owned()),
    }
}

/// An RFC 3339 timestamp stored as text; the error does not quote it.
pub(super) fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| NOT_A_TIME.to_owned())
}

/// A timestamp as RFC 3339 text in UTC, e.g. `2027-01-01T00:00:00Z`.
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The current time, to the second.
pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// A record as the columns store it (§4).
pub(super) struct Stored<'a> {
    pub id: &'a str,
    pub sha256: String,
    pub scopes: String,
    pub read_only: bool,
    pub expires_at: Option<OffsetDateTime>,
    pub allowed_ips: Option<String>,
    pub rate_requests: Option<i32>,
    pub rate_per_ms: Option<i32>,
    pub rate_burst: Option<i32>,
    pub disabled: bool,
    pub description: Option<&'a str>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

impl<'a> Stored<'a> {
    /// Checks that the record can be stored and read back unchanged;
    /// missing creation times are `now`.
    pub(super) fn of(record: &'a TokenRecord) -> Result<Self, SourceError> {
        let invalid = |column: &str, p: &str| {
            SourceError::Invalid(format!("token {:?}: {column}: {p}", record.id))
        };
        let int = |column: &str, n: u128| {
            i32::try_from(n).map_err(|_| invalid(column, "is too large to store"))
        };
        let (rate_requests, rate_per_ms, rate_burst) = match &record.rate_limit {
            None => (None, None, None),
            Some(rate) => {
                if rate.per.is_zero() || rate.per.subsec_nanos() % 1_000_000 != 0 {
                    return Err(invalid("rate", "the period must be whole milliseconds"));
                }
                (
                    Some(int("rate_requests", rate.requests.get().into())?),
                    Some(int("rate_per_ms", rate.per.as_millis())?),
                    Some(int("rate_burst", rate.burst.get().into())?),
                )
            }
        };
        let now = now();
        Ok(Stored {
            id: record.id.as_str(),
            sha256: record.hash.to_hex(),
            scopes: record.scopes.join(" "),
            read_only: record.read_only,
            expires_at: record.expires_at,
            allowed_ips: (!record.allowed_ips.is_empty()).then(|| {
                record
                    .allowed_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
            rate_requests,
            rate_per_ms,
            rate_burst,
            disabled: record.disabled,
            description: record.description.as_deref(),
            created_at: record.created_at.unwrap_or(now),
            updated_at: record.updated_at.unwrap_or(now),
            last_used_at: record.last_used_at,
        })
    }
}

/// Why `create` stored nothing: `existing` is the id of the row that holds
/// the same id or the same secret.
pub(super) fn conflict(new_id: &str, existing: Option<String>) -> SourceError {
    match existing {
        Some(existing) if existing != new_id => SourceError::Invalid(format!(
            "this secret is already stored as token {existing:?}"
        )),
        _ => SourceError::Invalid(format!("a token with id {new_id:?} already exists")),
    }
}

/// The error for `revoke` of an id that is not there.
pub(super) fn no_such_token(id: &str) -> SourceError {
    SourceError::Invalid(format!("no token with id {id:?}"))
}

/// The latest use per id (the gateway may report an id more than once).
pub(super) fn latest_uses(uses: &[(String, OffsetDateTime)]) -> Vec<(&str, OffsetDateTime)> {
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
pub(super) fn one_line(text: impl std::fmt::Display) -> String {
    text.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::id::{id, scopes};

    /// A row of text/integer/boolean cells, as a driver would give them.
    #[derive(Default, Clone)]
    struct FakeRow(Vec<Cell>);

    #[derive(Clone)]
    enum Cell {
        Null,
        Text(&'static str),
        Int(i64),
        Bool(bool),
        /// A column of a type no read accepts (as PostgreSQL reports it).
        Bytes,
    }

    impl Cells for FakeRow {
        fn text(&self, i: usize) -> Result<Option<String>, Bad> {
            match &self.0[i] {
                Cell::Null => Ok(None),
                Cell::Text(t) => Ok(Some((*t).to_owned())),
                Cell::Bytes => Err(Bad::Type("has SQL type BYTEA, expected text".into())),
                _ => Err("expected text".into()),
            }
        }
        fn boolean(&self, i: usize) -> Result<Option<bool>, Bad> {
            match &self.0[i] {
                Cell::Null => Ok(None),
                Cell::Bool(b) => Ok(Some(*b)),
                Cell::Int(n) => Ok(Some(int_bool(*n)?)),
                _ => Err("expected boolean".into()),
            }
        }
        fn integer(&self, i: usize) -> Result<Option<i64>, Bad> {
            match &self.0[i] {
                Cell::Null => Ok(None),
                Cell::Int(n) => Ok(Some(*n)),
                _ => Err("expected integer".into()),
            }
        }
        fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad> {
            match &self.0[i] {
                Cell::Null => Ok(None),
                Cell::Text(t) => Ok(Some(parse_time(t)?)),
                _ => Err("expected timestamp".into()),
            }
        }
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn three(id: &'static str, hash: &'static str) -> FakeRow {
        FakeRow(vec![Cell::Text(id), Cell::Text(hash), Cell::Text("a b")])
    }

    fn shape3() -> Shape {
        Shape::of(["id", "sha256", "scopes"]).unwrap()
    }

    type Read = Result<(Vec<TokenRecord>, Vec<InvalidRow>), SourceError>;

    /// A load that failed as a whole.
    fn invalid(result: Read) -> String {
        match result {
            Err(SourceError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// The records of a read that skipped nothing.
    fn valid(result: Read) -> Vec<TokenRecord> {
        let (records, invalid) = result.unwrap();
        assert_eq!(invalid, [], "rows were skipped");
        records
    }

    /// The one row a read skipped, and the ids of the rows it kept.
    fn skipped(result: Read) -> (String, Vec<String>) {
        let (records, invalid) = result.unwrap();
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        let kept = records.iter().map(|r| r.id.to_string()).collect();
        (invalid[0].to_string(), kept)
    }

    #[test]
    fn absent_optional_columns_take_their_defaults() {
        let records = valid(records("q", &shape3(), &[three("x", HASH)]));
        let mut want = TokenRecord::new(id("x"), TokenHash::from_hex(HASH).unwrap(), vec![]);
        want.scopes = scopes(&["a", "b"]);
        assert_eq!(records, vec![want]);
    }

    #[test]
    fn every_column_is_read() {
        let shape = Shape::of(COLUMNS[..TABLE_COLUMNS].iter().copied()).unwrap();
        let row = FakeRow(vec![
            Cell::Text("grafana"),
            Cell::Text(HASH),
            Cell::Text(" scope:a  scope:b "),
            Cell::Bool(true),
            Cell::Text("2027-01-01T00:00:00Z"),
            Cell::Text("10.1.2.3/8 192.168.1.7 ::1"),
            Cell::Int(10),
            Cell::Int(1000),
            Cell::Null,
            Cell::Int(0),
            Cell::Text("Grafana datasource"),
            Cell::Text("2025-01-01T00:00:00+02:00"),
            Cell::Text("2025-01-02T00:00:00Z"),
            Cell::Null,
        ]);
        let r = valid(records("t", &shape, &[row])).remove(0);
        assert_eq!(r.scopes, ["scope:a", "scope:b"]);
        assert!(r.read_only && !r.disabled && !r.from_plaintext);
        assert_eq!(
            r.expires_at,
            Some(parse_time("2027-01-01T00:00:00Z").unwrap())
        );
        assert_eq!(
            r.allowed_ips,
            ["10.0.0.0/8", "192.168.1.7/32", "::1/128"].map(|s| s.parse::<IpNet>().unwrap())
        );
        let rate = r.rate_limit.unwrap();
        assert_eq!((rate.requests.get(), rate.burst.get()), (10, 10));
        assert_eq!(rate.per, Duration::from_secs(1));
        assert_eq!(r.description.as_deref(), Some("Grafana datasource"));
        assert_eq!(
            r.created_at,
            Some(parse_time("2024-12-31T22:00:00Z").unwrap())
        );
        assert_eq!(r.last_used_at, None);
    }

    #[test]
    fn plaintext_token_is_hashed_and_marked() {
        let shape = Shape::of(["ID", "Token", "scopes"]).unwrap();
        let row = FakeRow(vec![
            Cell::Text("nb-1"),
            Cell::Text("test"),
            Cell::Text("s"),
        ]);
        let r = valid(records("q", &shape, &[row])).remove(0);
        assert_eq!(r.hash.to_hex(), HASH);
        assert!(r.from_plaintext);
    }

    #[test]
    fn shape_requires_id_scopes_and_a_secret_and_refuses_unknown_names() {
        assert!(Shape::of(["id", "scopes"]).unwrap_err().contains("neither"));
        assert!(Shape::of(["id", "sha256"]).unwrap_err().contains("scopes"));
        assert!(Shape::of(["sha256", "scopes"]).unwrap_err().contains("id"));
        let typo = Shape::of(["id", "sha256", "scopes", "read_onyl"]).unwrap_err();
        assert!(typo.contains("read_onyl"), "{typo}");
        assert!(Shape::of(["id", "sha256", "scopes", "ID"])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn one_bad_row_is_skipped_naming_id_and_column_and_the_others_kept() {
        let other = "0000000000000000000000000000000000000000000000000000000000000000";
        let rows = [
            three("good", HASH),
            three("bad", "ABC"),
            three("also", other),
        ];
        let (row, kept) = skipped(records("db", &shape3(), &rows));
        assert_eq!(
            row,
            "token \"bad\": sha256: is not 64 lowercase hex characters"
        );
        assert_eq!(kept, ["good", "also"]);
    }

    #[test]
    fn a_row_without_a_usable_id_is_named_by_position_never_by_its_id() {
        let rows = [three("good", HASH), three("", HASH)];
        assert_eq!(
            skipped(records("db", &shape3(), &rows)).0,
            "row 2: id: is empty"
        );
        let rows = [three("tg_pasted secret", HASH)];
        let (row, kept) = skipped(records("db", &shape3(), &rows));
        assert_eq!(
            row,
            "row 1: id: must be 1 to 128 visible ASCII characters without spaces"
        );
        assert!(kept.is_empty());
    }

    #[test]
    fn a_column_of_the_wrong_sql_type_fails_the_whole_load() {
        let rows = [
            three("good", HASH),
            FakeRow(vec![Cell::Text("x"), Cell::Text(HASH), Cell::Bytes]),
        ];
        assert_eq!(
            invalid(records("db", &shape3(), &rows)),
            "db: token \"x\": scopes: has SQL type BYTEA, expected text"
        );
    }

    #[test]
    fn duplicate_ids_and_secrets_are_refused_without_printing_the_hash() {
        let other = "0000000000000000000000000000000000000000000000000000000000000000";
        let m = invalid(records(
            "db",
            &shape3(),
            &[three("a", HASH), three("a", other)],
        ));
        assert!(m.contains("\"a\" appears twice"), "{m}");
        let m = invalid(records(
            "db",
            &shape3(),
            &[three("a", HASH), three("b", HASH)],
        ));
        assert!(m.contains("\"a\" and \"b\" have the same secret"), "{m}");
        assert!(!m.contains(HASH));
    }

    #[test]
    fn a_plaintext_secret_never_appears_in_an_error() {
        let shape = Shape::of(["id", "token", "scopes", "disabled"]).unwrap();
        let row = FakeRow(vec![
            Cell::Text("x"),
            Cell::Text("s3cret-value"),
            Cell::Text("s"),
            Cell::Null,
        ]);
        let (m, _) = skipped(records("q", &shape, &[row]));
        assert_eq!(m, "token \"x\": disabled: is null");
        let mistyped = FakeRow(vec![
            Cell::Text("x"),
            Cell::Text("tg_0123456789abcdefghijklmnopqrstuv0LNJdM"),
            Cell::Text("s"),
            Cell::Bool(false),
        ]);
        let (m, _) = skipped(records("q", &shape, &[mistyped]));
        assert!(m.contains("wrong checksum") && !m.contains("tg_0"), "{m}");
    }

    #[test]
    fn rate_columns_are_all_null_or_complete_and_positive() {
        assert_eq!(rate(None, None, None), Ok(None));
        let r = rate(Some(5), Some(250), Some(20)).unwrap().unwrap();
        assert_eq!(
            (r.requests.get(), r.per, r.burst.get()),
            (5, Duration::from_millis(250), 20)
        );
        assert_eq!(rate(Some(5), None, None).unwrap_err().0, "rate_per_ms");
        assert_eq!(rate(None, Some(5), None).unwrap_err().0, "rate_requests");
        assert_eq!(rate(None, None, Some(5)).unwrap_err().0, "rate_requests");
        assert_eq!(rate(Some(0), Some(5), None).unwrap_err().0, "rate_requests");
        assert_eq!(rate(Some(1), Some(-5), None).unwrap_err().0, "rate_per_ms");
        assert_eq!(rate(Some(1), Some(5), Some(0)).unwrap_err().0, "rate_burst");
        assert_eq!(
            rate(Some(1 << 40), Some(5), None).unwrap_err().0,
            "rate_requests"
        );
    }

    #[test]
    fn bad_cells_are_reported_by_column() {
        let shape = Shape::of(["id", "sha256", "scopes", "allowed_ips", "expires_at"]).unwrap();
        let row = |ips, exp| {
            FakeRow(vec![
                Cell::Text("x"),
                Cell::Text(HASH),
                Cell::Text("s"),
                ips,
                exp,
            ])
        };
        let (m, _) = skipped(records(
            "q",
            &shape,
            &[row(Cell::Text("10.0.0.300"), Cell::Null)],
        ));
        assert!(m.starts_with("token \"x\": allowed_ips: "), "{m}");
        let (m, _) = skipped(records(
            "q",
            &shape,
            &[row(Cell::Null, Cell::Text("tomorrow"))],
        ));
        assert!(m.starts_with("token \"x\": expires_at: "), "{m}");
        let (m, _) = skipped(records("q", &shape, &[row(Cell::Null, Cell::Int(3))]));
        assert_eq!(m, "token \"x\": expires_at: expected timestamp");
    }

    #[test]
    fn stored_values_read_back_to_the_same_record() {
        let mut r = TokenRecord::new(id("x"), TokenHash::of(b"s"), scopes(&["a", "b"]));
        r.allowed_ips = vec![parse_ip("10.0.0.0/8").unwrap(), parse_ip("::1").unwrap()];
        r.rate_limit = rate(Some(3), Some(1500), Some(7)).unwrap();
        let s = Stored::of(&r).unwrap();
        assert_eq!(s.scopes, "a b");
        assert_eq!(s.allowed_ips.as_deref(), Some("10.0.0.0/8 ::1/128"));
        assert_eq!(
            parse_ips(s.allowed_ips.as_deref().unwrap()).unwrap(),
            r.allowed_ips
        );
        assert_eq!(
            (s.rate_requests, s.rate_per_ms, s.rate_burst),
            (Some(3), Some(1500), Some(7))
        );
        assert_eq!(TokenHash::from_hex(&s.sha256), Some(r.hash));
    }

    #[test]
    fn a_sub_millisecond_period_cannot_be_stored() {
        let mut r = TokenRecord::new(id("x"), TokenHash::of(b"s"), scopes(&["a"]));
        r.rate_limit = Some(Rate {
            requests: NonZeroU32::new(1).unwrap(),
            per: Duration::from_micros(1500),
            burst: NonZeroU32::new(1).unwrap(),
        });
        assert!(Stored::of(&r).is_err());
    }

    #[test]
    fn latest_uses_keeps_the_newest_per_id() {
        let t = |s: &str| parse_time(s).unwrap();
        let uses = [
            ("a".to_owned(), t("2025-01-01T00:00:02Z")),
            ("b".to_owned(), t("2025-01-01T00:00:00Z")),
            ("a".to_owned(), t("2025-01-01T00:00:01Z")),
        ];
        assert_eq!(
            latest_uses(&uses),
            [
                ("a", t("2025-01-01T00:00:02Z")),
                ("b", t("2025-01-01T00:00:00Z"))
            ]
        );
    }

    #[test]
    fn format_time_is_utc_rfc3339() {
        let t = parse_time("2027-01-01T02:00:00+02:00").unwrap();
        assert_eq!(format_time(t), "2027-01-01T00:00:00Z");
    }
}
