//! When each token was last used, kept beside the token index and written
//! back to the source in batches (`last_used_at`, the contract's §4).
//!
//! A request that authenticates with a token only stores the current unix
//! second into the token's [`UsageCell`] (a relaxed load, and a relaxed
//! store at most once a second); the token loader calls [`TokenUsage::flush`]
//! every [`FLUSH_INTERVAL`], which hands every use since the last flush to
//! the source in one `record_use` call. Invariant: the request path never
//! locks, allocates or waits on the source for this, and a use that could
//! not be written is kept for the next flush rather than lost.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use time::OffsetDateTime;

use super::{Source, SourceError};

/// How often uses are written back; `last_used_at` is therefore written at
/// most once a minute per token (per gateway).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// How many client addresses a token remembers having authenticated from.
pub const PROVEN_ADDRESSES: usize = 4;

/// The last use of one token, and the addresses it was last used from.
#[derive(Debug, Default)]
pub struct UsageCell {
    /// Unix second of the latest use (0: none since the gateway started).
    used: AtomicI64,
    /// The `used` value last written to the source.
    flushed: AtomicI64,
    /// Fingerprints of the last client addresses (non-zero; 0 is empty)
    /// the token authenticated from: the failed-auth guard lets it through
    /// from them during a lockout.
    proven: [AtomicU64; PROVEN_ADDRESSES],
    /// The slot the next new address takes.
    next_proven: AtomicUsize,
}

impl UsageCell {
    /// Records a use at unix second `now`. Cheap enough for every request:
    /// a hot token writes the shared cache line once a second, not once a
    /// request.
    #[inline]
    pub fn touch(&self, now: i64) {
        if self.used.load(Ordering::Relaxed) < now {
            self.used.store(now, Ordering::Relaxed);
        }
    }

    /// Notes that the token authenticated from the address with fingerprint
    /// `addr` (non-zero). A few relaxed loads; a store only for an address
    /// not yet among the last [`PROVEN_ADDRESSES`].
    #[inline]
    pub fn prove(&self, addr: u64) {
        if self.proven_from(addr) {
            return;
        }
        let slot = self.next_proven.fetch_add(1, Ordering::Relaxed) % PROVEN_ADDRESSES;
        self.proven[slot].store(addr, Ordering::Relaxed);
    }

    /// Whether the token authenticated from the address `addr` lately.
    #[inline]
    pub fn proven_from(&self, addr: u64) -> bool {
        addr != 0
            && self
                .proven
                .iter()
                .any(|p| p.load(Ordering::Relaxed) == addr)
    }

    /// The latest use, if any since the gateway started.
    pub fn last_used(&self) -> Option<i64> {
        Some(self.used.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }
}

/// The usage cells of every token id, kept across reloads.
///
/// Called when a token is first used after a reload, never per request:
/// the index stores the returned cell in the token's entry.
#[derive(Debug, Default)]
pub struct TokenUsage {
    by_id: DashMap<Arc<str>, Arc<UsageCell>>,
}

/// Uses taken out of the registry for one write: ids, the second of their
/// last use, and the cells to mark once the write succeeded.
#[derive(Debug, Default)]
pub struct Batch {
    pub uses: Vec<(String, OffsetDateTime)>,
    cells: Vec<(Arc<UsageCell>, i64)>,
}

impl TokenUsage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cell of token `id`, created on first use.
    pub fn cell(&self, id: &str) -> Arc<UsageCell> {
        if let Some(cell) = self.by_id.get(id) {
            return Arc::clone(&cell);
        }
        Arc::clone(&self.by_id.entry(Arc::from(id)).or_default())
    }

    /// Every token used since its last successful flush.
    pub fn pending(&self) -> Batch {
        let mut batch = Batch::default();
        for item in self.by_id.iter() {
            let cell = item.value();
            let used = cell.used.load(Ordering::Relaxed);
            if used > cell.flushed.load(Ordering::Relaxed) {
                if let Ok(at) = OffsetDateTime::from_unix_timestamp(used) {
                    batch.uses.push((item.key().to_string(), at));
                    batch.cells.push((Arc::clone(cell), used));
                }
            }
        }
        batch
    }

    /// Marks a batch as written: a later use makes the token pending again.
    pub fn written(&self, batch: Batch) {
        for (cell, used) in batch.cells {
            cell.flushed.fetch_max(used, Ordering::Relaxed);
        }
    }

    /// Writes every pending use to `source` in one call; returns how many
    /// tokens were written. On failure nothing is marked, so the next
    /// flush tries again.
    pub async fn flush(&self, source: &Source) -> Result<usize, SourceError> {
        let batch = self.pending();
        if batch.uses.is_empty() {
            return Ok(0);
        }
        source.record_use(&batch.uses).await?;
        let n = batch.uses.len();
        self.written(batch);
        Ok(n)
    }

    /// Drops the cells of ids for which `live` is false (tokens no longer
    /// loaded); call after each reload. A use not yet flushed of a token
    /// that is gone is dropped with it.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.by_id.retain(|id, _| live(id));
    }

    /// How many token ids have a cell.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::id::id;

    fn ids(batch: &Batch) -> Vec<(&str, i64)> {
        let mut v: Vec<_> = batch
            .uses
            .iter()
            .map(|(id, at)| (id.as_str(), at.unix_timestamp()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_use_is_pending_until_written_and_again_after_a_later_use() {
        let usage = TokenUsage::new();
        let a = usage.cell("a");
        let _b = usage.cell("b");
        assert!(usage.pending().uses.is_empty());
        a.touch(1_000);
        a.touch(999);
        let batch = usage.pending();
        assert_eq!(ids(&batch), [("a", 1_000)]);
        // A use between taking the batch and marking it stays pending.
        a.touch(1_001);
        usage.written(batch);
        assert_eq!(ids(&usage.pending()), [("a", 1_001)]);
        usage.written(usage.pending());
        assert!(usage.pending().uses.is_empty());
        a.touch(1_001);
        assert!(usage.pending().uses.is_empty(), "same second again");
    }

    #[test]
    fn a_batch_that_was_not_written_is_offered_again() {
        let usage = TokenUsage::new();
        usage.cell("a").touch(5);
        let first = usage.pending();
        drop(first);
        assert_eq!(ids(&usage.pending()), [("a", 5)]);
    }

    #[test]
    fn the_same_id_gets_the_same_cell_until_it_is_no_longer_loaded() {
        let usage = TokenUsage::new();
        let a = usage.cell("a");
        assert!(Arc::ptr_eq(&a, &usage.cell("a")));
        a.touch(7);
        usage.retain(|id| id != "a");
        assert!(usage.is_empty());
        assert_eq!(usage.cell("a").last_used(), None);
    }

    #[tokio::test]
    async fn flush_writes_pending_uses_to_the_source_once() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::TokenSourceSettings {
            kind: crate::config::SourceKind::Sqlite {
                path: dir.path().join("tokens.db"),
            },
            query: None,
            refresh_interval: Duration::from_secs(5),
            split: None,
            notify_trigger_on: None,
        };
        let source = Source::open(&settings).unwrap();
        source.ensure_schema().await.unwrap();
        source
            .create(&crate::tokens::TokenRecord::new(
                id("a"),
                crate::tokens::TokenHash::of(b"s"),
                vec![],
            ))
            .await
            .unwrap();
        let usage = TokenUsage::new();
        assert_eq!(usage.flush(&source).await.unwrap(), 0);
        usage.cell("a").touch(1_750_000_000);
        assert_eq!(usage.flush(&source).await.unwrap(), 1);
        assert_eq!(usage.flush(&source).await.unwrap(), 0);
        let stored = source.list().await.unwrap();
        assert_eq!(
            stored[0].last_used_at.map(|t| t.unix_timestamp()),
            Some(1_750_000_000)
        );
    }
}
