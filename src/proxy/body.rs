//! Bodies that stream through the gateway without buffering.
//!
//! [`ResponseBody`] is what every response carries: the upstream's body
//! streamed as it arrives, or a small gateway-made body. It counts the bytes
//! it yields and, once it has ended or is dropped, hands the count to its
//! [`BodyEnd`] — whatever the request attached (the access-log record, the
//! upstream connection's lease, the client connection's in-flight mark),
//! which this module knows nothing about. [`RequestBody`] streams the
//! client's body upstream and stops it with [`BodyTooLarge`] once it passes
//! the route's `max_body_bytes`; a client-side failure reaches the upstream
//! client as [`ClientBodyError`], so it is never mistaken for the upstream's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request or response body streamed from the other side.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body ended up larger than `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route allows")]
pub struct BodyTooLarge;

/// The client's body failed while it was streamed upstream: malformed
/// framing, or the client went away mid-body.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed")]
pub struct ClientBodyError {
    /// The client closed the connection before the body was complete.
    pub closed: bool,
}

/// How a response body finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every byte was yielded.
    Complete,
    /// The upstream's body failed part-way.
    UpstreamFailed,
    /// Dropped before its end: the client went away.
    Abandoned,
}

/// What a response body hands its byte count to, exactly once, when it
/// ends or is dropped.
pub trait BodyEnd: Send + Unpin + 'static {
    fn ended(self, bytes_out: u64, how: Ended);
}

/// Nothing attached.
impl BodyEnd for () {
    fn ended(self, _: u64, _: Ended) {}
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The body of every response the gateway sends.
pub struct ResponseBody<E: BodyEnd = ()> {
    inner: Inner,
    bytes_out: u64,
    upstream_failed: bool,
    end: Option<E>,
}

impl<E: BodyEnd> ResponseBody<E> {
    pub fn full(bytes: Bytes) -> Self {
        Self::with(Inner::Full(Some(bytes)))
    }

    pub fn empty() -> Self {
        Self::with(Inner::Full(None))
    }

    /// The upstream's body, streamed.
    pub fn upstream(body: Incoming) -> Self {
        Self::with(Inner::Upstream(body))
    }

    fn with(inner: Inner) -> Self {
        ResponseBody {
            inner,
            bytes_out: 0,
            upstream_failed: false,
            end: None,
        }
    }

    /// Whether the body streams from an upstream (else it is the gateway's
    /// own, whole).
    pub fn from_upstream(&self) -> bool {
        matches!(self.inner, Inner::Upstream(_))
    }

    /// Attaches `end`, told the byte count once the body ends or is dropped.
    pub fn on_end(&mut self, end: E) {
        self.end = Some(end);
    }

    fn at_end(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn finish(&mut self, how: Ended) {
        if let Some(end) = self.end.take() {
            end.ended(self.bytes_out, how);
        }
    }
}

impl<E: BodyEnd> Drop for ResponseBody<E> {
    fn drop(&mut self) {
        let how = if self.upstream_failed {
            Ended::UpstreamFailed
        } else if self.at_end() {
            Ended::Complete
        } else {
            Ended::Abandoned
        };
        self.finish(how);
    }
}

impl<E: BodyEnd> Body for ResponseBody<E> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.upstream_failed = true,
            // Ended: what is attached (the upstream connection above all)
            // is released now, not when hyper drops the body.
            Poll::Ready(None) => this.finish(Ended::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.at_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// When a request body last moved: the wait for the upstream's answer is
/// bounded by lack of progress while the body streams, and counted from
/// its end once it has ended.
pub use crate::progress::Progress;

/// The client's body on its way upstream, cut off past a limit.
pub struct RequestBody {
    inner: Incoming,
    /// Bytes still allowed; `None` = unlimited.
    remaining: Option<u64>,
    /// Header names removed from the body's trailers too.
    removed: Option<Arc<[HeaderName]>>,
    /// Where the body's progress is noted, for a body that streams.
    progress: Option<Arc<Progress>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, removed: Option<Arc<[HeaderName]>>) -> Self {
        RequestBody {
            inner,
            remaining: limit,
            removed,
            progress: None,
        }
    }

    /// Notes each frame and the end of the body in `progress`.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(progress), Poll::Ready(Some(Ok(_)) | None)) = (&this.progress, &polled) {
            progress.touch();
        }
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let (Some(remaining), Some(data)) = (&mut this.remaining, frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= n;
                }
                if let (Some(removed), Some(trailers)) = (&this.removed, frame.trailers_mut()) {
                    for name in removed.iter() {
                        trailers.remove(name);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let closed = client_went_away(&e);
                Poll::Ready(Some(Err(Box::new(ClientBodyError { closed }))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a client body error means the client went away (the connection
/// ended or was reset mid-body) rather than sent malformed framing.
fn client_went_away(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    if e.is_incomplete_message() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            );
        }
        source = err.source();
    }
    false
}
