//! Build script: records the commit that `tollgate --version` shows.
//!
//! The short hash of `HEAD` from `git`, else `$TOLLGATE_COMMIT` (a container
//! or a packaged build without a `.git` can pass it), else `unknown`. Reruns
//! when `HEAD` or the branch it names moves, never on other files.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TOLLGATE_COMMIT");
    let commit = git(&["rev-parse", "--short", "HEAD"])
        .or_else(|| {
            std::env::var("TOLLGATE_COMMIT")
                .ok()
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TOLLGATE_COMMIT={commit}");
    // In a worktree HEAD lives in the worktree's git directory and the
    // branch in the common one; `--git-path` resolves both.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

/// `git ARGS` in the package directory, trimmed; `None` without git or a
/// repository.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}
