//! A record as the `tollgate_tokens` columns store it, and the times the
//! writes use.
//!
//! Invariant: a record is only stored if it reads back unchanged.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::tokens::source::SourceError;
use crate::tokens::TokenRecord;

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
pub(crate) struct Stored<'a> {
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
    pub(crate) fn of(record: &'a TokenRecord) -> Result<Self, SourceError> {
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
