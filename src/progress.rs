//! Deadlines that move with progress: a wait that may last as long as
//! something keeps moving (a request body streaming upstream, rows of a
//! token load arriving), and ends once it has not moved for a timeout.
//!
//! Invariant: marking progress is one relaxed atomic store, so it can be
//! done per frame or per batch of rows; only the waiter owns a timer.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When something last moved.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last movement.
    last_ms: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Marks a movement now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When it last moved (its creation, if never).
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// `fut`, or `Err` once `timeout` has passed without it: counted from now,
/// or — with `progress` — from the last movement.
pub async fn within<F: Future>(
    timeout: Duration,
    progress: Option<&Progress>,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, fut).await;
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        let deadline = tokio::time::Instant::from_std(progress.last() + timeout);
        match tokio::time::timeout_at(deadline, &mut fut).await {
            Ok(out) => return Ok(out),
            // It moved since this deadline was set: wait on.
            Err(_) if progress.last() + timeout > deadline.into_std() => continue,
            Err(elapsed) => return Err(elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_lasts_while_it_moves_and_ends_once_it_stops() {
        let timeout = Duration::from_millis(500);
        let progress = Progress::new();
        let moving = {
            let progress = progress.clone();
            async move {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    progress.touch();
                }
                "done"
            }
        };
        // Twice the timeout in all, never near it without a movement.
        let got = within(timeout, Some(&progress), moving).await;
        assert_eq!(got.unwrap(), "done");
        let stalled = within(timeout, Some(&progress), std::future::pending::<()>());
        assert!(stalled.await.is_err());
        let counted_from_now = within(timeout, None, std::future::pending::<()>());
        assert!(counted_from_now.await.is_err());
    }
}
