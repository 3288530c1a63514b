//! Reading the token file and replacing it atomically.
//!
//! Invariant: the file is only ever replaced whole (temporary file, fsync,
//! rename), and only if it still holds what the edit was based on.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::MAX_FILE_BYTES;
use crate::tokens::source::SourceError;

/// The file's text; a missing file is [`SourceError::Unavailable`].
pub(super) fn read_existing(path: &Path) -> Result<String, SourceError> {
    read_text(path)?.ok_or_else(|| unavailable(path, io::ErrorKind::NotFound.into()))
}

/// The file's text, `None` if it does not exist. Reads at most one byte
/// over the limit so a huge file is refused without reading it whole.
pub(super) fn read_text(path: &Path) -> Result<Option<String>, SourceError> {
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
pub(super) fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// The comment block at the top of the file, kept across rewrites.
pub(super) fn leading_comments(text: &str) -> String {
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
pub(super) fn write_atomic(
    path: &Path,
    text: &str,
    expected: Option<&str>,
) -> Result<bool, SourceError> {
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
