//! The token file's format (§3) and its validation into [`TokenRecord`]s,
//! and the entry written for a new record.
//!
//! Invariant: every problem names the file, line and key path, and no
//! message quotes a value of an entry (a secret may sit in the wrong key).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::MAX_FILE_BYTES;
use crate::config::schema::RateSpec;
use crate::config::yaml::{self, Report};
use crate::config::{values, ConfigErrors};
use crate::tokens::source::{sql, SourceError};
use crate::tokens::{Scope, TokenHash, TokenId, TokenRecord};

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenFile {
    pub(super) tokens: Vec<TokenSpec>,
}

/// One entry as written. No `Debug`: `token` may hold a plaintext secret.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenSpec {
    pub(super) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) allowed_ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rate_limit: Option<RateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
}

#[derive(Serialize)]
pub(super) struct TokenFileRef<'a> {
    pub(super) tokens: &'a [TokenSpec],
}

/// Parses and validates; returns the entries as written and as records.
pub(super) fn parse_file(
    path: &Path,
    text: &str,
) -> Result<(Vec<TokenSpec>, Vec<TokenRecord>), ConfigErrors> {
    let (file, spans) = yaml::parse::<TokenFile>(
        path,
        text,
        MAX_FILE_BYTES,
        "the file is empty; write `tokens: []` for a file without tokens",
    )?;
    let mut report = Report::new(path, &spans);
    let mut records = Vec::with_capacity(file.tokens.len());
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut hashes: HashMap<TokenHash, usize> = HashMap::new();
    for (i, spec) in file.tokens.iter().enumerate() {
        let p = format!("tokens[{i}]");
        if let Some(r) = record(&mut report, &p, spec) {
            if let Some(j) = ids.get(r.id.as_str()) {
                let m = format!("{:?} duplicates tokens[{j}]", r.id);
                report.error_unlocated(&format!("{p}.id"), m);
            } else {
                ids.insert(&spec.id, i);
            }
            if let Some(&j) = hashes.get(&r.hash) {
                let key = if spec.sha256.is_some() {
                    "sha256"
                } else {
                    "token"
                };
                let m = format!(
                    "duplicates the hash of tokens[{j}] ({:?})",
                    file.tokens[j].id
                );
                report.error_unlocated(&format!("{p}.{key}"), m);
            } else {
                hashes.insert(r.hash, i);
            }
            records.push(r);
        }
    }
    report.finish()?;
    Ok((file.tokens, records))
}

/// One entry → record; `None` when a problem was recorded.
fn record(report: &mut Report<'_>, p: &str, spec: &TokenSpec) -> Option<TokenRecord> {
    let id = report.check(
        &format!("{p}.id"),
        TokenId::parse(&spec.id).map_err(String::from),
    );
    let mut ok = id.is_some();
    let hash = match (&spec.sha256, &spec.token) {
        (Some(hex), None) => TokenHash::from_hex(hex).map(|h| (h, false)).or_else(|| {
            report.error(
                &format!("{p}.sha256"),
                "must be 64 lowercase hex characters (`tollgate token hash` prints it)",
            );
            None
        }),
        (None, Some(t)) if t.is_empty() => {
            report.error(&format!("{p}.token"), "is empty");
            None
        }
        (None, Some(t)) => Some((TokenHash::of(t.as_bytes()), true)),
        (Some(_), Some(_)) => {
            report.error(&format!("{p}.token"), "and sha256 are both set; keep one");
            None
        }
        (None, None) => {
            report.error(
                p,
                "needs sha256 (the hex SHA-256 of the secret) or, for development, token",
            );
            None
        }
    };
    let mut scopes: Vec<Scope> = Vec::new();
    for (i, s) in spec.scopes.iter().flatten().enumerate() {
        let sp = format!("{p}.scopes[{i}]");
        if s == "*" {
            report.error(
                &sp,
                "\"*\" is for a route's scopes; give the token the all_scope instead",
            );
            ok = false;
        } else if let Some(scope) = report.check(&sp, Scope::parse(s).map_err(String::from)) {
            if let Some(j) = spec
                .scopes
                .iter()
                .flatten()
                .position(|x| scope == x.as_str())
            {
                if j < i {
                    report.error(&sp, format!("duplicates {p}.scopes[{j}]"));
                    ok = false;
                }
            }
            scopes.push(scope);
        } else {
            ok = false;
        }
    }
    let read_only = report.bool(&format!("{p}.read_only"), spec.read_only, false);
    let disabled = report.bool(&format!("{p}.disabled"), spec.disabled, false);
    // No value of an entry is quoted back: a secret pasted into the wrong
    // key must not reach `check`, a refused reload or the log.
    let expires_at = spec.expires_at.as_deref().map(|s| {
        let r = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| sql::NOT_A_TIME.to_owned());
        report.check(&format!("{p}.expires_at"), r)
    });
    let mut allowed_ips = Vec::new();
    for (i, s) in spec.allowed_ips.iter().flatten().enumerate() {
        let r = report.check(&format!("{p}.allowed_ips[{i}]"), sql::parse_ip(s));
        ok &= r.is_some();
        allowed_ips.extend(r);
    }
    let rate_limit = spec.rate_limit.as_ref().map(|r| rate(report, p, r));
    let (hash, from_plaintext) = hash?;
    let id = id?;
    if !ok
        || expires_at.as_ref().is_some_and(Option::is_none)
        || rate_limit.as_ref().is_some_and(Option::is_none)
    {
        return None;
    }
    Some(TokenRecord {
        read_only,
        expires_at: expires_at.flatten(),
        allowed_ips,
        rate_limit: rate_limit.flatten(),
        disabled,
        description: spec.description.clone(),
        from_plaintext,
        ..TokenRecord::new(id, hash, scopes)
    })
}

/// `rate_limit` as `values::rate` checks it, but with a message for `per`
/// that does not quote it.
fn rate(report: &mut Report<'_>, p: &str, spec: &RateSpec) -> Option<crate::config::Rate> {
    let path = format!("{p}.rate_limit");
    if values::duration(&spec.per, false).is_ok() {
        return values::rate(report, &path, spec);
    }
    report.error(
        &format!("{path}.per"),
        "is not a duration greater than zero (e.g. 1s, 500ms, 1m)",
    );
    // Still reports what else is wrong with the entry's rate.
    let checked = RateSpec {
        per: "1s".into(),
        ..spec.clone()
    };
    values::rate(report, &path, &checked);
    None
}

/// Checks a record about to be written, with errors in CLI terms (its id
/// and scopes are valid by type; the file also refuses a `*` scope).
pub(super) fn check_new_record(r: &TokenRecord) -> Result<(), SourceError> {
    if r.scopes.iter().any(|s| *s == "*") {
        return Err(SourceError::Invalid(
            "scope: \"*\" is for a route's scopes".into(),
        ));
    }
    Ok(())
}

/// The entry written for a new record: only non-default fields, and the
/// hash, never a plaintext.
pub(super) fn spec_of(r: &TokenRecord) -> Result<TokenSpec, SourceError> {
    let expires_at = r
        .expires_at
        .map(|t| t.format(&Rfc3339))
        .transpose()
        .map_err(|e| SourceError::Invalid(format!("expires_at: {e}")))?;
    Ok(TokenSpec {
        id: r.id.to_string(),
        sha256: Some(r.hash.to_hex()),
        token: None,
        scopes: Some(r.scopes.iter().map(ToString::to_string).collect()),
        read_only: r.read_only.then_some(true),
        expires_at,
        allowed_ips: (!r.allowed_ips.is_empty())
            .then(|| r.allowed_ips.iter().map(|n| n.to_string()).collect()),
        rate_limit: r.rate_limit.map(|rate| RateSpec {
            requests: rate.requests.get(),
            per: values::format_duration(rate.per),
            burst: Some(rate.burst.get()),
        }),
        disabled: r.disabled.then_some(true),
        description: r.description.clone(),
    })
}
