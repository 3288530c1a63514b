//! Bodies that stream through the gateway without buffering.
//!
//! [`ResponseBody`] is what every response carries: the upstream's body
//! streamed as it arrives, or a small gateway-made body. It counts the bytes
//! it yields and hands the request's access-log record over when it is done
//! or dropped, so a log line carries the real `bytes_out` of a streamed
//! response. [`RequestBody`] streams the client's body upstream and stops it
//! with [`BodyTooLarge`] once it passes the route's `max_body_bytes`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Lease;
use crate::accesslog::{AccessLog, Record};
use crate::server::activity::InFlight;

/// A request or response body streamed from the other side.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body ended up larger than `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route allows")]
pub struct BodyTooLarge;

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The body of every response the gateway sends.
pub struct ResponseBody {
    inner: Inner,
    log: Option<(Arc<AccessLog>, Record)>,
    /// The upstream connection the body arrives on, handed back to its
    /// pool once the body has ended or is dropped (after `inner`, declared
    /// before it).
    lease: Option<Lease>,
    /// Keeps the request in flight on its client connection until the body
    /// is done (its idle wait starts then).
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full(Some(bytes)),
            log: None,
            lease: None,
            in_flight: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody {
            inner: Inner::Full(None),
            log: None,
            lease: None,
            in_flight: None,
        }
    }

    /// The upstream's body; `lease`, if any, goes back to its pool once
    /// the body has ended or is dropped.
    pub fn upstream(body: Incoming, lease: Option<Lease>) -> Self {
        ResponseBody {
            inner: Inner::Upstream(body),
            log: None,
            lease,
            in_flight: None,
        }
    }

    /// Writes `record` to `log` once the body is finished or dropped, with
    /// `bytes_out` counted.
    pub fn log_when_done(&mut self, log: Arc<AccessLog>, record: Record) {
        self.log = Some((log, record));
    }

    /// Holds `in_flight` until the body is finished or dropped.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    fn count(&mut self, n: usize) {
        if let Some((_, r)) = &mut self.log {
            r.bytes_out += n as u64;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((log, record)) = self.log.take() {
            log.submit(record);
        }
    }
}

impl Body for ResponseBody {
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
                    let n = data.len();
                    this.count(n);
                }
            }
            // The upstream connection is free for the next request.
            Poll::Ready(None) => drop(this.lease.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// The client's body on its way upstream, cut off past a limit.
pub struct RequestBody {
    inner: Incoming,
    /// Bytes still allowed; `None` = unlimited.
    remaining: Option<u64>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        RequestBody {
            inner,
            remaining: limit,
        }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(remaining), Some(data)) = (&mut this.remaining, frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
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
