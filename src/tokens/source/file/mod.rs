//! The YAML token file (the contract, §3): parsing into [`TokenRecord`]s, watching
//! the file for changes, and the atomic rewrites behind `tollgate token
//! create` and `revoke`.
//!
//! Invariant: neither a secret nor a hash is ever put into an error or log
//! message, and the file on disk is only ever replaced whole (temporary
//! file, fsync, rename) by a text that itself parses, so a reader sees the
//! old file or the new one, never a torn or invalid write of ours.
//!
//! This module owns the source (reads, watching, rewrites); `parse` the
//! file's format and its validation, `disk` reading and atomically
//! replacing the file.

mod disk;
mod parse;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{overlap_expiry, Announced, Change, Fingerprint, SourceError};
use crate::config::ConfigErrors;
use crate::tokens::{TokenId, TokenIndex, TokenRecord};
use disk::{is_blank, leading_comments, read_existing, read_text, write_atomic};
use parse::{check_new_record, parse_file, spec_of, TokenFileRef, TokenSpec};

/// Largest token file accepted; larger deployments belong in a database.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Header written at the top of a file created by [`FileSource::create`].
const NEW_FILE_HEADER: &str = "\
# Tollgate token file (see docs/configuration.md). Secrets are stored as SHA-256 hashes only.
# Written by `tollgate token`: comments below this header are not kept.
";

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

    /// Announces to `changed` whenever the file is written, replaced (also by
    /// an atomic rename, or a Kubernetes `..data` swap), or removed.
    ///
    /// Watches the parent directory, so a file that does not exist yet or
    /// is replaced keeps being watched. The watcher lives in a spawned task
    /// for as long as anyone else holds `changed`. If watching fails it is
    /// logged; the periodic re-read still picks changes up. Must be called
    /// inside a tokio runtime.
    pub fn watch(&self, changed: Arc<Announced>) {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = self.path.file_name().map(OsStr::to_os_string) else {
            tracing::warn!(path = %self.path.display(), "token file path names no file; not watching it");
            return;
        };
        let target: Weak<Announced> = Arc::downgrade(&changed);
        let notify_target = target.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_change_of(&event, &name) => {
                if let Some(n) = notify_target.upgrade() {
                    n.anything();
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
        self.change(id, &Change::Disabled(true)).await
    }

    /// Applies `change` to the token `id` in one atomic rewrite. Fails if
    /// there is none.
    pub async fn change(&self, id: &TokenId, change: &Change) -> Result<(), SourceError> {
        let id = id.clone();
        let path = self.path.clone();
        let change = change.clone();
        let previous = change.previous(&id)?;
        self.update(move |specs, records| {
            let at = specs
                .iter()
                .position(|s| id == s.id.as_str())
                .ok_or_else(|| {
                    SourceError::Invalid(format!("no token with id {id:?} in {}", path.display()))
                })?;
            match &change {
                Change::Disabled(disabled) => {
                    let changed = specs[at].disabled.unwrap_or(false) != *disabled;
                    specs[at].disabled = disabled.then_some(true);
                    Ok(changed)
                }
                Change::Delete => {
                    specs.remove(at);
                    Ok(true)
                }
                Change::Rotate {
                    hash,
                    previous_until,
                } => {
                    if let Some(other) = records.iter().find(|r| r.hash == *hash) {
                        return Err(SourceError::Invalid(format!(
                            "token {:?} already has this secret",
                            other.id
                        )));
                    }
                    let mut old = specs[at].clone();
                    specs[at].sha256 = Some(hash.to_hex());
                    specs[at].token = None;
                    if let (Some(until), Some(previous)) = (previous_until, &previous) {
                        let expires = records
                            .iter()
                            .find(|r| r.id == id)
                            .and_then(|r| r.expires_at);
                        let expires = overlap_expiry(expires, *until);
                        specs.retain(|s| previous != s.id.as_str());
                        old.id = previous.to_string();
                        old.expires_at = Some(crate::tokens::source::sql::format_time(expires));
                        specs.push(old);
                    }
                    Ok(true)
                }
            }
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

async fn blocking<T, F>(f: F) -> Result<T, SourceError>
where
    F: FnOnce() -> Result<T, SourceError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::Unavailable(format!("token file task failed: {e}")))?
}
