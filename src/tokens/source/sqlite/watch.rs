//! Noticing changes to a SQLite token database: its file and `-wal`,
//! watched through their directory.
//!
//! Invariant: only events for the database's own files count as changes,
//! and a failure to watch is logged, never fatal (the periodic refresh
//! still applies).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use notify::{RecursiveMode, Watcher};

use super::SqliteSource;
use crate::tokens::source::Announced;

impl SqliteSource {
    /// Watches the file and its `-wal` (through their directory, so a
    /// replaced or newly created file is seen); every change is announced
    /// to `changed`. Failing to watch is logged: the periodic refresh
    /// still applies.
    pub fn watch(&self, changed: Arc<Announced>) {
        let Some(name) = self.path.file_name() else {
            tracing::warn!(path = %self.path.display(), "not watching the token database: no file name");
            return;
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut wal = name.to_owned();
        wal.push("-wal");
        let names: [OsString; 2] = [name.to_owned(), wal];
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.kind.is_access() && touches(&event.paths, &names) => {
                changed.anything()
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "watching the token database failed"),
        };
        let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match started {
            Ok(watcher) => {
                *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
            }
            Err(error) => tracing::warn!(
                %error,
                dir = %dir.display(),
                "cannot watch the token database; relying on refresh_interval"
            ),
        }
    }
}

fn touches(paths: &[PathBuf], names: &[OsString]) -> bool {
    paths
        .iter()
        .filter_map(|p| Path::file_name(p))
        .any(|n| names.iter().any(|w| w == n))
}
