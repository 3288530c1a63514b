//! What every accept loop shares: the descriptor limit raised at start, a
//! back-off when accepting fails for want of descriptors or memory, and the
//! global connection cap (`limits.max_connections`).
//!
//! Invariant: an accept loop never spins. A failed accept that the next
//! one would repeat (EMFILE, ENFILE, ENOBUFS, ENOMEM) waits 10 ms, doubling
//! to 1 s while it lasts, and is logged at most once per [`LOG_EVERY`]; at
//! the cap, a loop does not call accept at all, so new connections wait in
//! the kernel's backlog instead of being accepted and dropped.

use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// First wait after an accept failed for want of resources.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between two such attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this long for the same listener's failures.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often a loop held at the cap reads the cap again, so a reload that
/// raises it applies without waiting for a connection to close.
const CAP_RECHECK: Duration = Duration::from_secs(1);

/// Raises the soft limit on open descriptors to the hard limit, so a
/// gateway serving many connections is bounded by what the administrator
/// allows rather than by a conservative default (often 1,024). Returns the
/// soft limit in force afterwards, `None` where it is unlimited.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            return limit.current;
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Whether a failed accept is one the next attempt would repeat at once:
/// out of descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM).
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| errno.raw_os_error() == code)
}

/// The back-off of one accept loop.
#[derive(Debug)]
pub struct Backoff {
    listener: &'static str,
    next: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Backoff {
    /// For the listener named in log lines (`data`, `admin`).
    pub fn new(listener: &'static str) -> Self {
        Backoff {
            listener,
            next: FIRST_BACKOFF,
            last_log: None,
            suppressed: 0,
        }
    }

    /// An accept succeeded: the next failure waits [`FIRST_BACKOFF`] again.
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    /// An accept failed with `e`: logs it (rate-limited) and, if the next
    /// attempt would fail the same way, waits before it.
    pub async fn failed(&mut self, e: &io::Error) {
        if !is_resource_exhaustion(e) {
            // One connection's trouble (aborted before it was accepted and
            // the like): the next one may be fine.
            tracing::debug!(listener = self.listener, error = %e, "accept failed");
            return;
        }
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
        {
            tracing::warn!(
                listener = self.listener,
                error = %e,
                repeated = self.suppressed,
                "cannot accept connections; backing off"
            );
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(self.step()).await;
    }

    /// The wait for this failure; doubles the next one's, up to
    /// [`MAX_BACKOFF`].
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }
}

/// Open data connections, counted over every listener and worker runtime:
/// the cap's count and what a drain waits on. A slot is taken before
/// `accept` is called, so the cap holds exactly however many loops accept
/// at once; a loop cancelled in between gives its slot back.
#[derive(Debug, Default)]
pub struct Slots {
    open: AtomicUsize,
    /// Accept loops waiting for a slot.
    waiting: AtomicUsize,
    freed: Notify,
    /// Notified when the last connection closes.
    idle: Notify,
}

/// One taken slot; given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    /// How many slots are taken.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Takes a slot once fewer than `cap()` are taken (at once when the cap
    /// is `None`). `cap` is read again after every close and every
    /// [`CAP_RECHECK`], so a reload's new cap applies.
    pub async fn take(self: &Arc<Self>, cap: impl Fn() -> Option<usize>) -> Slot {
        loop {
            let Some(max) = cap() else {
                self.open.fetch_add(1, Ordering::SeqCst);
                return Slot(self.clone());
            };
            let freed = self.freed.notified();
            let mut freed = pin!(freed);
            // Registered before the count is read: a close after the read
            // finds `waiting` raised and wakes this wait (see `Slot::drop`).
            freed.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let taken = self
                .open
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if !taken {
                let _ = tokio::time::timeout(CAP_RECHECK, freed).await;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if taken {
                return Slot(self.clone());
            }
        }
    }

    /// Returns once no slot is taken.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.0;
        let before = slots.open.fetch_sub(1, Ordering::SeqCst);
        if slots.waiting.load(Ordering::SeqCst) > 0 {
            slots.freed.notify_waiters();
        }
        if before == 1 {
            slots.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error())
    }

    #[test]
    fn descriptor_and_memory_exhaustion_back_off_a_lost_connection_does_not() {
        assert!(is_resource_exhaustion(&emfile()));
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(
            rustix::io::Errno::NFILE.raw_os_error()
        )));
        assert!(!is_resource_exhaustion(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }

    #[tokio::test]
    async fn the_backoff_doubles_from_10_ms_to_1_s_and_resets_on_success() {
        let mut b = Backoff::new("test");
        let waits: Vec<u128> = (0..9).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.step(), FIRST_BACKOFF);
        // A lost connection does not wait, nor advance the back-off.
        b.failed(&io::Error::from(io::ErrorKind::ConnectionAborted))
            .await;
        assert_eq!(b.step(), FIRST_BACKOFF * 2);
    }

    #[tokio::test]
    async fn a_loop_at_the_cap_waits_until_a_connection_closes() {
        let slots = Arc::new(Slots::default());
        let first = slots.take(|| Some(2)).await;
        let _second = slots.take(|| Some(2)).await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(|| Some(2)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(slots.open(), 2);
        drop(first);
        let third = waiter.await.unwrap();
        assert_eq!(slots.open(), 2);
        // No cap: never waits.
        let _fourth = slots.take(|| None).await;
        assert_eq!(slots.open(), 3);
        drop(third);
        assert_eq!(slots.open(), 2);
    }
}
