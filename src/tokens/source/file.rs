//! The YAML token file (SPEC §3): parsing into [`TokenRecord`]s, watching
//! the file for changes, and the atomic rewrites behind `tollgate token
//! create` and `revoke`.
//!
//! Invariant: neither a secret nor a hash is ever put into an error or log
//! message, and the file on disk is only ever replaced whole (temporary
//! file, fsync, rename) by a text that itself parses, so a reader sees the
//! old file or the new one, never a torn or invalid write of ours.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::{sql, Fingerprint, SourceError};
use crate::config::schema::RateSpec;
use crate::config::yaml::{self, Report};
use crate::config::{values, ConfigErrors};
use crate::tokens::{Scope, TokenHash, TokenId, TokenIndex, TokenRecord};

/// Largest token file accepted; larger deployments belong in a database.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Header written at the top of a file created by [`FileSource::create`].
const NEW_FILE_HEADER: &str = "\
# Tollgate token file (SPEC §3). Secrets are stored as SHA-256 hashes only.
# Written by `tollgate token`: comments below this header are not kept.
";

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenSpec>,
}

/// One entry as written. No `Debug`: `token` may hold a plaintext secret.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed_ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

/// A token file at a path.
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// A source reading `path` (already resolved against the config's
    /// directory). Nothing is read until [`load`](Self::load).
    pub fn new(path: PathBuf) -> Self {
        FileSource { path }
    }

    /// The file this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses the text of a token file; `path` names it in errors. Pure.
    ///
    /// Every problem is reported, each as `<file>:<line>: tokens[i].key:
    /// message`. An empty file is an error (an editor that truncates before
    /// writing must not revoke every token for a moment): a file without
    /// tokens says `tokens: []`.
    pub fn parse(path: &Path, text: &str) -> Result<Vec<TokenRecord>, ConfigErrors> {
        Ok(parse_file(path, text)?.1)
    }

    /// Reads and parses the file: [`SourceError::Unavailable`] if it
    /// cannot be read, [`SourceError::Invalid`] with every problem if it
    /// does not validate.
    pub async fn load(&self) -> Result<Vec<TokenRecord>, SourceError> {
        let path = self.path.clone();
        blocking(move || {
            let text = read_existing(&path)?;
            Ok(Self::parse(&path, &text)?)
        })
        .await
    }

    /// Reads the file and, unless its bytes are those `previous` was taken
    /// of, parses it and builds the index — all on a blocking thread, so a
    /// refresh never parses or hashes on a runtime that serves requests,
    /// and an unchanged file costs one read and one SHA-256. `None`: the
    /// file is unchanged.
    pub async fn load_index(
        &self,
        previous: Option<&Fingerprint>,
    ) -> Result<Option<(TokenIndex, Fingerprint)>, SourceError> {
        let path = self.path.clone();
        let previous = previous.cloned();
        blocking(move || {
            let text = read_existing(&path)?;
            let fingerprint = Fingerprint(hex::encode(Sha256::digest(text.as_bytes())));
            if previous.as_ref() == Some(&fingerprint) {
                return Ok(None);
            }
            let index = TokenIndex::build(Self::parse(&path, &text)?)?;
            Ok(Some((index, fingerprint)))
        })
        .await
    }

    /// Notifies `changed` whenever the file is written, replaced (also by
    /// an atomic rename, or a Kubernetes `..data` swap), or removed.
    ///
    /// Watches the parent directory, so a file that does not exist yet or
    /// is replaced keeps being watched. The watcher lives in a spawned task
    /// for as long as anyone else holds `changed`. If watching fails it is
    /// logged; the periodic re-read still picks changes up. Must be called
    /// inside a tokio runtime.
    pub fn watch(&self, changed: Arc<Notify>) {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = self.path.file_name().map(OsStr::to_os_string) else {
            tracing::warn!(path = %self.path.display(), "token file path names no file; not watching it");
            return;
        };
        let target: Weak<Notify> = Arc::downgrade(&changed);
        let notify_target = target.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_change_of(&event, &name) => {
                if let Some(n) = notify_target.upgrade() {
                    n.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "token file watcher error"),
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the token file; relying on refresh_interval");
                return;
            }
        };
        use notify::Watcher;
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the token file's directory; relying on refresh_interval");
            return;
        }
        drop(changed);
        tokio::spawn(async move {
            let _watcher = watcher;
            while target.strong_count() > 0 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
    }

    /// Every token in the file (as [`load`](Self::load)).
    pub async fn list(&self) -> Result<Vec<TokenRecord>, SourceError> {
        self.load().await
    }

    /// Appends `record`, stored as `sha256:`. Creates the file (mode 0600)
    /// with `tokens: []` if it does not exist. Fails if the id or the
    /// secret is already in the file, or if the file does not validate.
    pub async fn create(&self, record: &TokenRecord) -> Result<(), SourceError> {
        check_new_record(record)?;
        let spec = spec_of(record)?;
        let (id, hash) = (record.id.clone(), record.hash);
        self.update(move |specs, records| {
            if records.iter().any(|r| r.id == id) {
                return Err(SourceError::Invalid(format!(
                    "a token with id {id:?} already exists"
                )));
            }
            if let Some(other) = records.iter().find(|r| r.hash == hash) {
                return Err(SourceError::Invalid(format!(
                    "token {:?} already has this secret",
                    other.id
                )));
            }
            specs.push(spec.clone());
            Ok(true)
        })
        .await
    }

    /// Sets `disabled: true` on the token `id`. Fails if there is none.
    pub async fn revoke(&self, id: &TokenId) -> Result<(), SourceError> {
        let id = id.clone();
        let path = self.path.clone();
        self.update(move |specs, _| {
            let spec = specs
                .iter_mut()
                .find(|s| id == s.id.as_str())
                .ok_or_else(|| {
                    SourceError::Invalid(format!("no token with id {id:?} in {}", path.display()))
                })?;
            let changed = spec.disabled != Some(true);
            spec.disabled = Some(true);
            Ok(changed)
        })
        .await
    }

    /// Reads, edits and atomically rewrites the file. `edit` returns
    /// whether it changed anything. If another writer replaced the file
    /// meanwhile, starts over from the new contents.
    async fn update<F>(&self, edit: F) -> Result<(), SourceError>
    where
        F: Fn(&mut Vec<TokenSpec>, &[TokenRecord]) -> Result<bool, SourceError> + Send + 'static,
    {
        let path = self.path.clone();
        blocking(move || {
            for _ in 0..5 {
                let original = read_text(&path)?;
                let (header, mut specs, records) = match original.as_deref() {
                    None => (NEW_FILE_HEADER.to_string(), Vec::new(), Vec::new()),
                    Some(text) if is_blank(text) => (text.to_string(), Vec::new(), Vec::new()),
                    Some(text) => {
                        let (specs, records) = parse_file(&path, text).map_err(|e| {
                            SourceError::Invalid(format!(
                                "fix the token file before changing it:\n{e}"
                            ))
                        })?;
                        (leading_comments(text), specs, records)
                    }
                };
                if !edit(&mut specs, &records)? {
                    return Ok(());
                }
                let body = serde_norway::to_string(&TokenFileRef { tokens: &specs })
                    .map_err(|e| SourceError::Invalid(format!("cannot write tokens: {e}")))?;
                let text = format!("{header}{body}");
                Self::parse(&path, &text)?;
                if write_atomic(&path, &text, original.as_deref())? {
                    return Ok(());
                }
            }
            Err(SourceError::Unavailable(format!(
                "{} kept changing while it was being updated; try again",
                path.display()
            )))
        })
        .await
    }
}

#[derive(Serialize)]
struct TokenFileRef<'a> {
    tokens: &'a [TokenSpec],
}

/// Parses and validates; returns the entries as written and as records.
fn parse_file(path: &Path, text: &str) -> Result<(Vec<TokenSpec>, Vec<TokenRecord>), ConfigErrors> {
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
fn check_new_record(r: &TokenRecord) -> Result<(), SourceError> {
    if r.scopes.iter().any(|s| *s == "*") {
        return Err(SourceError::Invalid(
            "scope: \"*\" is for a route's scopes".into(),
        ));
    }
    Ok(())
}

/// The entry written for a new record: only non-default fields, and the
/// hash, never a plaintext.
fn spec_of(r: &TokenRecord) -> Result<TokenSpec, SourceError> {
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

/// A write to the watched file (not our own reads: inotify reports opens).
fn is_change_of(event: &notify::Event, name: &OsStr) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let writes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    };
    writes
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == name || n == "..data"))
}

/// The file's text; a missing file is [`SourceError::Unavailable`].
fn read_existing(path: &Path) -> Result<String, SourceError> {
    read_text(path)?.ok_or_else(|| unavailable(path, io::ErrorKind::NotFound.into()))
}

/// The file's text, `None` if it does not exist. Reads at most one byte
/// over the limit so a huge file is refused without reading it whole.
fn read_text(path: &Path) -> Result<Option<String>, SourceError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unavailable(path, e)),
    };
    let mut text = String::new();
    match file
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
    {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(SourceError::Invalid(format!(
            "{}: the file is not UTF-8 text",
            path.display()
        ))),
        Err(e) => Err(unavailable(path, e)),
    }
}

fn unavailable(path: &Path, e: io::Error) -> SourceError {
    SourceError::Unavailable(format!("cannot read {}: {e}", path.display()))
}

/// Only blank lines and comments.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// The comment block at the top of the file, kept across rewrites.
fn leading_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Replaces `path` with `text` via a temporary file in the same directory,
/// fsynced before the rename. Returns `false`, writing nothing, if the file
/// no longer holds `expected` (another writer got there first). A new file
/// gets mode 0600; an existing one keeps its mode and, where permitted,
/// its owner.
fn write_atomic(path: &Path, text: &str, expected: Option<&str>) -> Result<bool, SourceError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let fail =
        |e: io::Error| SourceError::Unavailable(format!("cannot write {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .unwrap_or(OsStr::new("tokens.yaml"))
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let existing = std::fs::metadata(path).ok();
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some(m) = &existing {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            // Keeps a file owned by the gateway's user readable by it when
            // an administrator runs `tollgate token` as root.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        if read_text(path).ok().flatten().as_deref() != expected {
            return Ok(false);
        }
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    })();
    if !matches!(result, Ok(true)) {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

async fn blocking<T, F>(f: F) -> Result<T, SourceError>
where
    F: FnOnce() -> Result<T, SourceError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::Unavailable(format!("token file task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::id::{id, scopes};
    use std::os::unix::fs::PermissionsExt;

    const GRAFANA_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<Vec<TokenRecord>, ConfigErrors> {
        FileSource::parse(Path::new("tokens.yaml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn every_field_of_an_entry_is_read() {
        let text = format!(
            "tokens:
  - id: grafana
    sha256: {GRAFANA_HASH}
    scopes: [scope:grafana-plugin, scope:b]
    read_only: true
    expires_at: 2027-01-01T00:00:00Z
    allowed_ips: [10.0.0.0/8, 192.168.1.7, \"::1\"]
    rate_limit: {{ requests: 10, per: 1s, burst: 20 }}
    disabled: false
    description: Grafana datasource
  - id: minimal
    sha256: {}
",
            TokenHash::of(b"other").to_hex()
        );
        let records = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let r = &records[0];
        assert_eq!(r.id, "grafana");
        assert_eq!(r.hash, TokenHash::of(b"test"));
        assert_eq!(r.scopes, ["scope:grafana-plugin", "scope:b"]);
        assert!(r.read_only && !r.disabled && !r.from_plaintext);
        assert_eq!(
            r.expires_at,
            Some(time::macros::datetime!(2027-01-01 00:00:00 UTC))
        );
        let ips: Vec<String> = r.allowed_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(ips, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
        let rate = r.rate_limit.unwrap();
        assert_eq!(
            (rate.requests.get(), rate.per, rate.burst.get()),
            (10, Duration::from_secs(1), 20)
        );
        assert_eq!(r.description.as_deref(), Some("Grafana datasource"));
        let m = &records[1];
        assert!(m.scopes.is_empty() && !m.read_only && !m.disabled);
        assert_eq!(
            (m.expires_at, m.rate_limit, m.description.as_deref()),
            (None, None, None)
        );
        assert!(m.allowed_ips.is_empty());
        assert!(parse("tokens: []\n").unwrap().is_empty());
    }

    #[test]
    fn plaintext_tokens_are_hashed_and_marked() {
        let r = parse("tokens:\n  - id: dev\n    token: test\n").unwrap();
        assert_eq!(r[0].hash, TokenHash::of(b"test"));
        assert!(r[0].from_plaintext);
    }

    #[test]
    fn each_entry_error_names_its_path_and_line() {
        let text = "tokens:
  - id: \"\"
    sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
  - id: both
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    token: secret-value
  - id: neither
    scopes: [\"*\", \"a b\"]
  - id: fields
    token: x
    read_only: True
    expires_at: next year
    allowed_ips: [intranet]
    rate_limit: { requests: 0, per: 1s }
";
        assert_eq!(
            errors(text),
            [
                "tokens.yaml:2: tokens[0].id: is empty",
                "tokens.yaml:3: tokens[0].sha256: must be 64 lowercase hex characters (`tollgate token hash` prints it)",
                "tokens.yaml:6: tokens[1].token: and sha256 are both set; keep one",
                "tokens.yaml:7: tokens[2]: needs sha256 (the hex SHA-256 of the secret) or, for development, token",
                "tokens.yaml:8: tokens[2].scopes[0]: \"*\" is for a route's scopes; give the token the all_scope instead",
                "tokens.yaml:8: tokens[2].scopes[1]: must be visible ASCII characters without spaces",
                "tokens.yaml:11: tokens[3].read_only: expected true or false (unquoted, lowercase)",
                "tokens.yaml:12: tokens[3].expires_at: is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)",
                "tokens.yaml:13: tokens[3].allowed_ips[0]: is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7 or ::1)",
                "tokens.yaml:14: tokens[3].rate_limit.requests: must be at least 1",
            ]
        );
    }

    #[test]
    fn quoted_false_is_a_type_error() {
        let e = errors("tokens:\n  - id: a\n    token: x\n    disabled: \"false\"\n");
        assert_eq!(e, ["tokens.yaml:4: tokens[0].disabled: expected true or false (unquoted), found a string"]);
        let e = errors("tokens:\n  - id: a\n    token: x\n    disabled: off\n");
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn unknown_keys_and_empty_files_are_errors() {
        let e = errors("tokens:\n  - id: a\n    token: x\n    scope: [a]\n");
        assert!(e[0].starts_with("tokens.yaml:4: tokens[0].scope: unknown key; allowed keys: id, sha256, token, scopes"), "{e:?}");
        assert_eq!(
            errors("\n# nothing yet\n"),
            ["tokens.yaml: the file is empty; write `tokens: []` for a file without tokens"]
        );
    }

    #[test]
    fn duplicate_ids_and_hashes_name_both_entries_but_never_the_hash() {
        let text = format!(
            "tokens:
  - id: grafana
    sha256: {GRAFANA_HASH}
  - id: grafana
    sha256: {}
  - id: copy
    token: test
",
            TokenHash::of(b"x").to_hex()
        );
        let e = errors(&text);
        assert_eq!(
            e,
            [
                "tokens.yaml: tokens[1].id: \"grafana\" duplicates tokens[0]",
                "tokens.yaml: tokens[2].token: duplicates the hash of tokens[0] (\"grafana\")",
            ]
        );
    }

    #[test]
    fn errors_never_quote_a_secret_or_a_hash() {
        let text = format!(
            "tokens:\n  - id: a\n    token: [s3cr3t]\n  - id: b\n    sha256: {GRAFANA_HASH}x\n    read_only: s3cr3t\n"
        );
        let all = match parse(&text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected errors"),
        };
        assert!(
            !all.contains("s3cr3t") && !all.contains(GRAFANA_HASH),
            "{all}"
        );
        let text = format!("tokens:\n  - id: b\n    sha256: {GRAFANA_HASH}x\n");
        let all = errors(&text).join("\n");
        assert!(!all.contains(&GRAFANA_HASH[..16]), "{all}");
    }

    /// A secret pasted into the wrong key: every message names the file,
    /// the line and the key, and none quotes the value (a boolean key is
    /// `errors_never_quote_a_secret_or_a_hash`'s).
    #[test]
    fn a_secret_in_any_key_is_never_quoted_back() {
        const SECRET: &str = "tg_ThisIsASecretPastedByMistake0123";
        let text = format!(
            "tokens:
  - id: {SECRET} x
    sha256: {SECRET}
    scopes: [\"{SECRET} y\", ok, ok]
    expires_at: {SECRET}
    allowed_ips: [{SECRET}]
    rate_limit: {{ requests: 1, per: {SECRET} }}
"
        );
        let e = errors(&text);
        assert!(!e.join("\n").contains("ThisIsASecret"), "{e:#?}");
        for line in [
            "tokens.yaml:2: tokens[0].id: must be 1 to 128 visible ASCII characters without spaces",
            "tokens.yaml:3: tokens[0].sha256: must be 64 lowercase hex characters (`tollgate token hash` prints it)",
            "tokens.yaml:4: tokens[0].scopes[0]: must be visible ASCII characters without spaces",
            "tokens.yaml:4: tokens[0].scopes[2]: duplicates tokens[0].scopes[1]",
            "tokens.yaml:5: tokens[0].expires_at: is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)",
            "tokens.yaml:6: tokens[0].allowed_ips[0]: is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7 or ::1)",
            "tokens.yaml:7: tokens[0].rate_limit.per: is not a duration greater than zero (e.g. 1s, 500ms, 1m)",
        ] {
            assert!(e.iter().any(|m| m == line), "missing {line:?} in {e:#?}");
        }
    }

    #[tokio::test]
    async fn load_reports_missing_and_invalid_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let source = FileSource::new(dir.path().join("tokens.yaml"));
        assert!(matches!(
            source.load().await,
            Err(SourceError::Unavailable(_))
        ));
        std::fs::write(source.path(), "tokens:\n  - id: a\n").unwrap();
        match source.load().await {
            Err(SourceError::Invalid(m)) => {
                assert!(m.contains(":2: tokens[0]: needs sha256"), "{m}")
            }
            _ => panic!("expected Invalid"),
        }
    }

    fn record(name: &str, secret: &str) -> TokenRecord {
        TokenRecord::new(
            id(name),
            TokenHash::of(secret.as_bytes()),
            scopes(&["scope:a"]),
        )
    }

    #[tokio::test]
    async fn an_unchanged_file_is_recognised_by_its_fingerprint_and_not_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let source = FileSource::new(dir.path().join("tokens.yaml"));
        std::fs::write(
            source.path(),
            "tokens:\n  - { id: a, token: s1, scopes: [x] }\n",
        )
        .unwrap();
        let (index, first) = source.load_index(None).await.unwrap().unwrap();
        assert_eq!(index.len(), 1);
        assert!(source.load_index(Some(&first)).await.unwrap().is_none());
        std::fs::write(
            source.path(),
            "tokens:\n  - { id: b, token: s2, scopes: [x] }\n",
        )
        .unwrap();
        let (index, second) = source.load_index(Some(&first)).await.unwrap().unwrap();
        assert!(index.contains_id("b") && !index.contains_id("a"));
        assert_ne!(first, second);
        // An invalid file is an error, not "unchanged".
        std::fs::write(source.path(), "tokens:\n  - id: c\n").unwrap();
        assert!(matches!(
            source.load_index(Some(&second)).await,
            Err(SourceError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn create_list_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let source = FileSource::new(dir.path().join("tokens.yaml"));
        let mut full = record("full", "secret-1");
        full.read_only = true;
        full.expires_at = Some(time::macros::datetime!(2030-06-01 12:00:00 UTC));
        full.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
        full.rate_limit = Some(crate::config::Rate {
            requests: crate::config::nz(5),
            per: Duration::from_secs(60),
            burst: crate::config::nz(7),
        });
        full.description = Some("all fields".into());
        source.create(&full).await.unwrap();
        let mode = std::fs::metadata(source.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        source.create(&record("plain", "secret-2")).await.unwrap();

        let listed = source.list().await.unwrap();
        assert_eq!(listed, vec![full.clone(), record("plain", "secret-2")]);
        let text = std::fs::read_to_string(source.path()).unwrap();
        assert!(text.starts_with("# Tollgate token file"), "{text}");
        assert!(!text.contains("secret-1"), "{text}");

        let dup_id = source.create(&record("plain", "secret-3")).await;
        assert!(matches!(dup_id, Err(SourceError::Invalid(m)) if m.contains("already exists")));
        let dup_hash = source.create(&record("other", "secret-2")).await;
        assert!(
            matches!(dup_hash, Err(SourceError::Invalid(m)) if m.contains("\"plain\" already has this secret"))
        );

        source.revoke(&id("plain")).await.unwrap();
        let listed = source.list().await.unwrap();
        assert!(!listed[0].disabled);
        assert!(listed[1].disabled);
        let missing = source.revoke(&id("nobody")).await;
        assert!(
            matches!(missing, Err(SourceError::Invalid(m)) if m.contains("no token with id \"nobody\""))
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }

    #[tokio::test]
    async fn rewrites_keep_the_header_plaintext_entries_and_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let source = FileSource::new(dir.path().join("tokens.yaml"));
        std::fs::write(
            source.path(),
            "# my header\n\ntokens:\n  - id: dev # trailing comment\n    token: dev-secret\n",
        )
        .unwrap();
        std::fs::set_permissions(source.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
        source.create(&record("new", "secret")).await.unwrap();
        let text = std::fs::read_to_string(source.path()).unwrap();
        assert!(text.starts_with("# my header\n\ntokens:\n"), "{text}");
        let records = source.list().await.unwrap();
        assert_eq!(records[0].hash, TokenHash::of(b"dev-secret"));
        assert!(records[0].from_plaintext);
        let mode = std::fs::metadata(source.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[tokio::test]
    async fn an_invalid_file_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let source = FileSource::new(dir.path().join("tokens.yaml"));
        std::fs::write(source.path(), "tokens:\n  - id: a\n").unwrap();
        let e = source.create(&record("b", "s")).await;
        assert!(matches!(e, Err(SourceError::Invalid(m)) if m.starts_with("fix the token file")));
        assert_eq!(
            std::fs::read_to_string(source.path()).unwrap(),
            "tokens:\n  - id: a\n"
        );
        let star = TokenRecord::new(id("b"), TokenHash::of(b"s"), scopes(&["*"]));
        assert!(matches!(
            source.create(&star).await,
            Err(SourceError::Invalid(_))
        ));
    }

    #[test]
    fn only_writes_to_the_watched_name_count_as_changes() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode,
        };
        let name = OsStr::new("tokens.yaml");
        let ev = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        assert!(is_change_of(
            &ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/d/tokens.yaml"
            ),
            name
        ));
        assert!(is_change_of(
            &ev(EventKind::Create(CreateKind::File), "/d/tokens.yaml"),
            name
        ));
        assert!(is_change_of(
            &ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/d/tokens.yaml"
            ),
            name
        ));
        assert!(is_change_of(
            &ev(EventKind::Create(CreateKind::Any), "/d/..data"),
            name
        ));
        assert!(!is_change_of(
            &ev(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/d/tokens.yaml"
            ),
            name
        ));
        assert!(!is_change_of(
            &ev(EventKind::Create(CreateKind::File), "/d/.tokens.yaml.1.tmp"),
            name
        ));
    }

    #[tokio::test]
    async fn watcher_fires_on_an_atomic_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "tokens: []\n").unwrap();
        let changed = Arc::new(Notify::new());
        FileSource::new(path.clone()).watch(changed.clone());
        let tmp = dir.path().join("staging.yaml");
        std::fs::write(
            &tmp,
            format!("tokens:\n  - id: a\n    sha256: {GRAFANA_HASH}\n"),
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .expect("no change notification within 10 s");
    }
}
