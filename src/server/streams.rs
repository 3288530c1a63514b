//! `timeouts.send` for HTTP/2: a response stream that waits for the client
//! longer than that is cut.
//!
//! On HTTP/2 one stream never blocks the socket: a client that stops
//! reading a stream just sends no WINDOW_UPDATE for it, and hyper then does
//! not poll that stream's body at all (it takes a frame, then waits for
//! window before it asks for the next). The body, and the upstream
//! connection it streams from, would be held for as long as the client
//! keeps the connection open. So a streamed answer's body is handed to
//! hyper as a [`Streamed`]: the body itself lives in a stream shared with
//! the connection's [`Streams`], beside since when hyper has not asked for
//! its next frame. The connection's watchdog ([`super::activity`]) looks
//! over its streams and drops the body of each one that has waited for the
//! client for `timeouts.send`. That ends the request as a client that went
//! away does: the upstream connection is closed (its body was not read to
//! the end), the access log says 499 `client_closed`, and the connection's
//! in-flight mark is released. The next time hyper polls the stream it
//! gets [`Stalled`], and resets the stream; the connection's other streams
//! go on.
//!
//! Invariants: a stream waits for the client from the moment hyper takes a
//! frame (or, before the first, from when the answer is handed over) until
//! hyper asks for the next one; a body that hyper polls and that waits for
//! its upstream is not waiting for the client, and is never cut; a body
//! being polled while the watchdog looks is not cut. Only bodies from an
//! upstream are watched: the gateway's own answers are small and hold
//! nothing.
//!
//! Cost, per streamed answer: an `Arc` clone of the connection's activity,
//! one allocation (the shared stream the body moves into) and a lock of the
//! connection's list to add a weak reference to it; per frame, an
//! uncontended lock and a clock read. No timer is registered per stream and
//! no task spawned (measured: a task with its own timer per stream, spawned
//! and aborted with it, costs 0.4–0.8 µs a stream; the list, under
//! 0.1 µs): the connection's watchdog, which runs anyway, looks at least
//! every `timeouts.send` and then sleeps until the first stream's deadline,
//! so each stream is cut on time from when it started waiting. Dead
//! references are dropped each time it looks and whenever the list would
//! grow, so the list stays within twice the streams open at once. Counted
//! as `benches/instructions.sh` counts, but over HTTP/2 (`h2load` without
//! `--h1`), a proxied request takes 90,609 instructions, 89,669 before
//! (+1 %). HTTP/1 connections have none of this: their writes block, and
//! [`super::activity::Watched`] notices (54,222 instructions per request,
//! 54,501 before: unchanged).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What hyper gets from a stream that was cut.
#[derive(Debug, thiserror::Error)]
#[error("the client accepted none of the answer for timeouts.send")]
pub struct Stalled;

/// A connection's watched streams.
#[derive(Default)]
pub struct Streams {
    /// Weak: a stream hyper has dropped is gone, body and all, at once.
    list: Mutex<Vec<Weak<dyn Waiting>>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("watched", &lock(&self.list).len())
            .finish()
    }
}

impl Streams {
    /// `body`, watched: cut once it has waited for the client too long.
    pub fn watch<B: Send + 'static>(&self, body: B) -> Streamed<B> {
        let stream = Arc::new(Mutex::new(Slot {
            body: Some(body),
            waiting: Some(Instant::now()),
        }));
        let weak: Weak<dyn Waiting> = Arc::downgrade(&stream) as Weak<dyn Waiting>;
        let mut list = lock(&self.list);
        if list.len() == list.capacity() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(weak);
        Streamed(Kind::Watched(stream))
    }

    /// Cuts every stream that has waited for the client for `limit`. How
    /// long until another may have: until the first deadline of a stream
    /// waiting now, at most `limit` (a stream may start waiting at any
    /// moment).
    pub fn cut_stalled(&self, limit: Duration) -> Duration {
        let now = Instant::now();
        let mut list = lock(&self.list);
        list.retain(|w| w.strong_count() > 0);
        let mut next = limit;
        for stream in list.iter().filter_map(Weak::upgrade) {
            if let Some(deadline) = stream.cut_if_waited(now, limit) {
                next = next.min(deadline.saturating_duration_since(now));
            }
        }
        next
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.list).len()
    }
}

/// A watched stream, as the watchdog sees it.
trait Waiting: Send + Sync {
    /// Drops the body if the stream has waited for the client for `limit`
    /// at `now`; else, if it is waiting, when it will have (`None` also
    /// for a deadline past what the clock can tell).
    fn cut_if_waited(&self, now: Instant, limit: Duration) -> Option<Instant>;
}

/// A stream's body and whether it waits for the client.
struct Slot<B> {
    /// `None` once cut.
    body: Option<B>,
    /// Since when hyper has not asked for the next frame after taking one
    /// (or, before the first, since the answer was handed over); `None`
    /// while the body waits for its own source, or has ended.
    waiting: Option<Instant>,
}

impl<B: Send> Waiting for Mutex<Slot<B>> {
    fn cut_if_waited(&self, now: Instant, limit: Duration) -> Option<Instant> {
        let mut slot = match self.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // hyper is polling it: no wait at all.
            Err(TryLockError::WouldBlock) => return None,
        };
        let deadline = slot.waiting?.checked_add(limit)?;
        if deadline > now {
            return Some(deadline);
        }
        slot.waiting = None;
        let body = slot.body.take();
        drop(slot);
        drop(body);
        None
    }
}

/// The body hyper sends on an HTTP/2 stream.
pub struct Streamed<B>(Kind<B>);

enum Kind<B> {
    /// Not watched.
    Direct(B),
    /// Shared with the connection's [`Streams`].
    Watched(Arc<Mutex<Slot<B>>>),
}

impl<B> Streamed<B> {
    /// `body` as it is, not watched: the gateway's own answers, answers
    /// without a body, and every answer where streams are not watched.
    pub fn direct(body: B) -> Self {
        Streamed(Kind::Direct(body))
    }
}

impl<B> Body for Streamed<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let stream = match &mut self.get_mut().0 {
            Kind::Direct(body) => return Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Watched(stream) => stream,
        };
        let mut slot = lock(stream);
        let Some(body) = &mut slot.body else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let polled = Pin::new(body).poll_frame(cx);
        // A frame taken: until hyper asks for the next, the stream waits
        // for the client. Pending: it waits for its own source.
        slot.waiting = matches!(polled, Poll::Ready(Some(Ok(_)))).then(Instant::now);
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Direct(body) => body.is_end_stream(),
            // A cut stream has not ended: hyper is to poll it for the error.
            Kind::Watched(stream) => lock(stream).body.as_ref().is_some_and(B::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Direct(body) => body.size_hint(),
            Kind::Watched(stream) => lock(stream)
                .body
                .as_ref()
                .map_or_else(SizeHint::default, B::size_hint),
        }
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A body of `frames` one-byte frames, `Pending` while `hold` is set;
    /// notes when it is dropped.
    struct Source {
        frames: u32,
        hold: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    impl Body for Source {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.hold.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
            if self.frames == 0 {
                return Poll::Ready(None);
            }
            self.frames -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    impl Drop for Source {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::Relaxed);
        }
    }

    /// A source of `frames` frames, whether it is held, whether it was dropped.
    fn source(frames: u32) -> (Source, Arc<AtomicBool>, Arc<AtomicBool>) {
        let (hold, dropped) = (Arc::default(), Arc::default());
        let source = Source {
            frames,
            hold: Arc::clone(&hold),
            dropped: Arc::clone(&dropped),
        };
        (source, hold, dropped)
    }

    /// What hyper gets from one poll.
    type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

    /// One poll, as hyper does it.
    fn poll(body: &mut Streamed<Source>) -> Polled {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    #[test]
    fn a_stream_not_asked_for_its_next_frame_is_cut_at_the_limit_and_then_fails() {
        let streams = Streams::default();
        let (source, _, dropped) = source(10);
        let mut body = streams.watch(source);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        let next = streams.cut_stalled(50 * MS);
        assert!(next <= 50 * MS && next > Duration::ZERO, "{next:?}");
        assert!(!dropped.load(Ordering::Relaxed));
        std::thread::sleep(60 * MS);
        assert_eq!(streams.cut_stalled(50 * MS), 50 * MS);
        assert!(dropped.load(Ordering::Relaxed), "the body was not dropped");
        assert!(!body.is_end_stream(), "hyper is to poll it once more");
        match poll(&mut body) {
            Poll::Ready(Some(Err(e))) => assert!(e.is::<Stalled>(), "{e}"),
            _ => panic!("a cut stream polled again gave no error"),
        }
    }

    #[test]
    fn a_stream_that_keeps_being_asked_for_frames_is_never_cut() {
        let streams = Streams::default();
        let (source, _, dropped) = source(10);
        let mut body = streams.watch(source);
        for _ in 0..4 {
            assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
            std::thread::sleep(10 * MS);
            streams.cut_stalled(200 * MS);
        }
        assert!(!dropped.load(Ordering::Relaxed));
    }

    #[test]
    fn a_body_waiting_for_its_own_source_is_never_cut() {
        let streams = Streams::default();
        let (source, hold, dropped) = source(10);
        let mut body = streams.watch(source);
        hold.store(true, Ordering::Relaxed);
        assert!(poll(&mut body).is_pending());
        std::thread::sleep(30 * MS);
        assert_eq!(streams.cut_stalled(10 * MS), 10 * MS);
        assert!(!dropped.load(Ordering::Relaxed));
        // Its source moves on; then hyper stops asking.
        hold.store(false, Ordering::Relaxed);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        std::thread::sleep(30 * MS);
        streams.cut_stalled(10 * MS);
        assert!(dropped.load(Ordering::Relaxed));
    }

    #[test]
    fn a_stream_never_polled_waits_from_when_it_was_handed_over() {
        let streams = Streams::default();
        let (source, _, dropped) = source(10);
        let _body = streams.watch(source);
        std::thread::sleep(30 * MS);
        streams.cut_stalled(10 * MS);
        assert!(dropped.load(Ordering::Relaxed));
    }

    #[test]
    fn a_stream_being_polled_is_not_cut() {
        let streams = Streams::default();
        let (source, _, dropped) = source(10);
        let body = streams.watch(source);
        std::thread::sleep(30 * MS);
        let Kind::Watched(stream) = &body.0 else {
            panic!("not watched");
        };
        let polling = lock(stream);
        assert_eq!(streams.cut_stalled(10 * MS), 10 * MS);
        drop(polling);
        assert!(!dropped.load(Ordering::Relaxed));
    }

    #[test]
    fn streams_hyper_dropped_leave_the_list_and_it_stays_within_twice_the_open_ones() {
        let streams = Streams::default();
        let open: Vec<_> = (0..3).map(|_| streams.watch(source(1).0)).collect();
        for _ in 0..1000 {
            drop(streams.watch(source(1).0));
        }
        assert!(streams.len() <= 8, "{} in the list", streams.len());
        drop(open);
        assert_eq!(streams.cut_stalled(SECOND), SECOND);
        assert_eq!(streams.len(), 0);
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_direct_body_is_passed_through() {
        let (source, _, _) = source(1);
        let mut body = Streamed::direct(source);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }
}
