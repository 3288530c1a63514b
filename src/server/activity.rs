//! A connection's two waits and their limits: `timeouts.header_read` (a
//! request head must arrive whole within it, counted from its first byte, or
//! from the connection's start for the first request) and `timeouts.idle`
//! (a keep-alive connection with no request in flight closes after it).
//!
//! hyper has one timer for both: it arms its header-read timeout as soon as
//! it waits for the next request, so an idle connection would close at
//! `header_read`. The gateway keeps its own instead. [`Activity`] is shared
//! by the connection's service (each request holds an [`InFlight`] until its
//! response body is done), by [`Watched`] (bytes read while idle start a
//! head) and by [`Activity::expired`], the watchdog the connection is served
//! beside.
//!
//! With a request in flight, the watchdog looks every `min(header_read,
//! idle)` whether writes to the client have been blocked for longer than
//! `timeouts.send` (a client that stopped reading, holding its upstream
//! connection): then the connection is dropped, as nginx's `send_timeout`
//! does. A response merely waiting for the upstream blocks no write. On
//! HTTP/2, where one stream never blocks the socket, it cuts instead each
//! stream that has waited for the client for `timeouts.send`
//! ([`super::streams`]), looking at least every `timeouts.send` while
//! streams are watched.
//!
//! Cost: a request takes and drops one `InFlight` (an `Arc` clone and a few
//! uncontended atomics) and reads the clock once, when it ends; a head read
//! after an idle wait reads it once more. The watchdog's timer is re-armed
//! only when it fires (the deadline it finds moved on is slept to again), so
//! no timer is registered or removed per request, as hyper's was; it and the
//! stop signal are polled only when they woke the task, not on the
//! connection's own wake-ups ([`serve_watched`]). On an
//! HTTP/1.1 connection it fires at least every `park_after` (2 s) until the
//! connection parks; on an HTTP/2 connection at least every `timeouts.send`
//! (by default 60 s, as `idle`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::streams::{Streamed, Streams};

/// The low bit of `Activity::deadline`: the wait is for a request head.
const HEAD: u64 = 1;

/// What a connection is waiting for, and until when.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Requests whose responses are not done yet.
    in_flight: AtomicU32,
    /// When the current wait ends, in microseconds since `opened`, shifted
    /// left one bit; the low bit is [`HEAD`] for a head, 0 for idleness.
    deadline: AtomicU64,
    header_read: u64,
    /// The idle limit in microseconds; shortened to `header_read` by a drain.
    idle: AtomicU64,
    /// `timeouts.send` in microseconds: how long writes to the client may
    /// stay blocked while a request is in flight, or a watched stream may
    /// wait for the client.
    send: u64,
    /// The answers' streams, where they are watched (HTTP/2); boxed, so
    /// that an HTTP/1 connection's `Activity` grows by a pointer only.
    streams: Option<Box<Streams>>,
    /// Since when (microseconds since `opened`, plus one) a write to the
    /// client has been blocked; 0 while writes go through.
    write_blocked: AtomicU64,
    /// How long a connection is idle before it is parked, in microseconds;
    /// 0: never (HTTP/2).
    park_after: u64,
    /// [`NOT_PARKING`], [`PARKING`] (hyper was told to stop, and no
    /// request came since: the transport's shutdown is then not a close)
    /// or [`PARK_INTERRUPTED`] (a request came: hyper answers it with
    /// `Connection: close` and closes, and the park is off).
    parking: AtomicU8,
}

const NOT_PARKING: u8 = 0;
const PARKING: u8 = 1;
const PARK_INTERRUPTED: u8 = 2;

/// What a connection's watchdog enforces besides the two waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch {
    /// `timeouts.send`: how long writes to the client may stay blocked
    /// while a request is in flight (where the transport is [`Watched`]),
    /// or a watched stream may wait for the client; `None`: no limit.
    pub send: Option<Duration>,
    /// The answers' streams are watched ([`Activity::stream`]; HTTP/2,
    /// where one stream never blocks the transport).
    pub streams: bool,
    /// Idle this long, the connection parks ([`serve_watched`] hands it
    /// back to be parked); `None`: never.
    pub park_after: Option<Duration>,
}

/// What the watchdog found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A wait ran out: the connection is to end.
    Expired,
    /// Idle for `park_after`: the protocol's buffers may go.
    Park,
}

/// Which wait a connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// HTTP/1: the first request head, under `header_read`.
    Head,
    /// HTTP/2: idle until the first stream (the preface has arrived).
    Idle,
}

impl Activity {
    pub fn new(header_read: Duration, idle: Duration, start: Start) -> Arc<Self> {
        Self::watching(header_read, idle, start, Watch::default())
    }

    /// An activity whose watchdog also enforces `watch`.
    pub fn watching(
        header_read: Duration,
        idle: Duration,
        start: Start,
        watch: Watch,
    ) -> Arc<Self> {
        let header_read = micros(header_read);
        let idle = micros(idle);
        let deadline = match start {
            Start::Head => header_read << 1 | HEAD,
            Start::Idle => idle << 1,
        };
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            deadline: AtomicU64::new(deadline),
            header_read,
            idle: AtomicU64::new(idle),
            send: watch.send.map_or(u64::MAX >> 2, micros),
            streams: watch.streams.then(Box::default),
            write_blocked: AtomicU64::new(0),
            park_after: watch.park_after.map_or(0, |p| micros(p).max(1)),
            parking: AtomicU8::new(NOT_PARKING),
        })
    }

    /// `body` as hyper is to send it: watched where the connection's
    /// streams are, as it is elsewhere.
    pub fn stream<B: Send + 'static>(&self, body: B) -> Streamed<B> {
        match &self.streams {
            Some(streams) => streams.watch(body),
            None => Streamed::direct(body),
        }
    }

    /// Cuts the streams that have waited for the client past `send`; how
    /// long until another may have, in microseconds (at most `send`;
    /// `u64::MAX` where streams are not watched).
    fn cut_stalled_streams(&self) -> u64 {
        self.streams.as_ref().map_or(u64::MAX, |streams| {
            micros(streams.cut_stalled(Duration::from_micros(self.send)))
        })
    }

    /// How often the watchdog looks at a connection whose streams are
    /// watched, also while it is idle: every `send`, so that a stream that
    /// begins while it sleeps is looked at in time to be cut on time.
    fn streams_check(&self) -> u64 {
        if self.streams.is_some() {
            self.send
        } else {
            u64::MAX
        }
    }

    /// A parked connection serves again.
    pub fn resume(&self) {
        self.parking.store(NOT_PARKING, Ordering::Relaxed);
    }

    /// A write to the client could not go through: the client is not
    /// reading. Notes since when, once.
    fn write_blocked(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == 0 {
            self.write_blocked
                .store(self.now().saturating_add(1), Ordering::Relaxed);
        }
    }

    /// A write went through.
    fn write_done(&self) {
        if self.write_blocked.load(Ordering::Relaxed) != 0 {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    /// A request has arrived; it is in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.parking.load(Ordering::Relaxed) == PARKING {
            // A request came in while hyper was being told to stop: it
            // answers it with `Connection: close`, and then it closes.
            self.parking.store(PARK_INTERRUPTED, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    /// Bytes arrived: after an idle wait they start a request head, which
    /// must then be whole within `header_read`.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.deadline.load(Ordering::Relaxed) & HEAD == 0
        {
            self.wait(self.header_read, HEAD);
        }
    }

    fn wait(&self, limit: u64, kind: u64) {
        let until = self.now().saturating_add(limit);
        self.deadline.store(until << 1 | kind, Ordering::Release);
    }

    fn now(&self) -> u64 {
        micros(self.opened.elapsed())
    }

    /// From now on idleness is limited to `header_read` (a draining
    /// gateway's connections close sooner), also a wait already begun.
    pub fn drain(&self) {
        let idle = self.idle.load(Ordering::Relaxed).min(self.header_read);
        self.idle.store(idle, Ordering::Relaxed);
        let current = self.deadline.load(Ordering::Acquire);
        if current & HEAD == 0 {
            let until = (current >> 1).min(self.now().saturating_add(idle));
            self.deadline.store(until << 1, Ordering::Release);
        }
    }

    /// A connection told to shut down gets `header_read` more to end.
    fn last_wait(&self) {
        self.wait(self.header_read, 0);
    }

    /// How long until the current wait ends, or what is due now. With a
    /// request in flight there is no wait: the answer is when to look
    /// again (and whether writes have been blocked past `send`); watched
    /// streams that have waited for the client past `send` are cut on the
    /// way.
    fn remaining(&self) -> Result<Duration, Due> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            let blocked = self.write_blocked.load(Ordering::Relaxed);
            if blocked != 0 && self.now().saturating_sub(blocked - 1) >= self.send {
                return Err(Due::Expired);
            }
            let recheck = self
                .header_read
                .min(self.idle.load(Ordering::Relaxed))
                .min(self.park_check())
                .min(self.cut_stalled_streams());
            return Ok(Duration::from_micros(recheck.max(1)));
        }
        let deadline = self.deadline.load(Ordering::Acquire);
        let now = self.now();
        let until = deadline >> 1;
        let left = until.checked_sub(now).filter(|&left| left > 0);
        let Some(mut left) = left else {
            return Err(Due::Expired);
        };
        left = left.min(self.park_check()).min(self.streams_check());
        if self.park_after > 0
            && deadline & HEAD == 0
            && self.parking.load(Ordering::Relaxed) == NOT_PARKING
        {
            // Idle since the deadline was set `idle` before it.
            let idle = self.idle.load(Ordering::Relaxed);
            let park_at = until.saturating_sub(idle).saturating_add(self.park_after);
            match park_at.checked_sub(now).filter(|&l| l > 0) {
                None => return Err(Due::Park),
                Some(to_park) => left = left.min(to_park),
            }
        }
        Ok(Duration::from_micros(left))
    }

    /// How often the watchdog looks at a connection that may park: every
    /// `park_after`, so that a park is at most that late; never more
    /// often than needed otherwise.
    fn park_check(&self) -> u64 {
        if self.park_after > 0 && self.parking.load(Ordering::Relaxed) == NOT_PARKING {
            self.park_after
        } else {
            u64::MAX
        }
    }

    /// Resolves with what is due: a wait that ran out (for a head, idle
    /// with nothing in flight, or — with a request in flight — a client
    /// that has accepted no bytes for `timeouts.send`), or a park.
    pub async fn due(&self) -> Due {
        loop {
            match self.remaining() {
                Ok(left) => tokio::time::sleep(left).await,
                Err(due) => return due,
            }
        }
    }

    /// Resolves when a wait has run out (never parks).
    pub async fn expired(&self) {
        while let Ok(left) = self.remaining() {
            tokio::time::sleep(left).await;
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 2)
}

/// A request in flight on its connection; dropping it (with the response
/// body, or with the request when it is abandoned) starts the idle wait
/// once none is left.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle wait is set before the count drops, so a watchdog that
        // finds nothing in flight never finds a stale deadline.
        let activity = &self.0;
        activity.wait(activity.idle.load(Ordering::Relaxed), 0);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An HTTP/1 connection's transport, telling its [`Activity`] when bytes
/// arrive, and putting the gateway's own answer in place of hyper's bare
/// one when a request head cannot be parsed.
///
/// hyper answers an unparsable head (a request line that is not HTTP, a
/// target that is not a URI, headers over the buffer limit) itself, with
/// an empty 400, 414 or 431, and closes; the service never sees it. Such a
/// write is recognised by what only it can be: it comes while a head is
/// being read and no request is in flight, it has the shape hyper gives it
/// (status line, `content-length: 0`, nothing after the head), and it
/// lacks the `x-request-id` every answer of the gateway carries. `U` then
/// supplies the whole answer to write instead, which also counts and logs
/// it. The check costs a prefix comparison per write.
pub struct Watched<I, U> {
    io: I,
    activity: Arc<Activity>,
    unparsable: U,
    /// The replacement answer and how much of it is written.
    replacing: Option<(Bytes, usize)>,
    /// Bytes read while the connection was parked, read again first.
    unread: Bytes,
}

/// The gateway's answer to a head hyper could not parse: the whole
/// HTTP/1.1 response for hyper's `status` (400, 414 or 431), or `None` to
/// let hyper's own stand.
pub trait Unparsable {
    fn answer(&self, status: u16) -> Option<Bytes>;
}

impl Unparsable for () {
    fn answer(&self, _: u16) -> Option<Bytes> {
        None
    }
}

impl<I, U> Watched<I, U> {
    pub fn new(io: I, activity: Arc<Activity>, unparsable: U) -> Self {
        Watched {
            io,
            activity,
            unparsable,
            replacing: None,
            unread: Bytes::new(),
        }
    }

    /// Bytes to be read again before anything else from the transport.
    pub fn unread(&mut self, bytes: Bytes) {
        self.unread = bytes;
    }
}

impl Activity {
    /// A head is being read and no request has begun since.
    fn reading_head(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.deadline.load(Ordering::Acquire) & HEAD == HEAD
    }
}

/// hyper's status for an unparsable head, if `buf` is hyper's answer to one.
fn hypers_refusal(buf: &[u8]) -> Option<u16> {
    const PREFIX: &[u8] = b"HTTP/1.1 4";
    if buf.len() > 256 || !buf.starts_with(PREFIX) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status = match &buf[9..12] {
        b"400" => 400,
        b"414" => 414,
        b"431" => 431,
        _ => return None,
    };
    let head = &buf[12..];
    let has = |needle: &[u8]| {
        head.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    (has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\nx-request-id:")).then_some(status)
}

impl<I: AsyncRead + Unpin, U: Unpin> AsyncRead for Watched<I, U> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            self.activity.read_some();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin, U: Unparsable + Unpin> Watched<I, U> {
    /// Writes what is left of a replacement answer.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacing {
            if *written == bytes.len() {
                self.replacing = None;
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin, U: Unparsable + Unpin> AsyncWrite for Watched<I, U> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            std::task::ready!(this.poll_replacing(cx))?;
        } else if let Some(status) = hypers_refusal(buf) {
            if this.activity.reading_head() {
                if let Some(answer) = this.unparsable.answer(status) {
                    // hyper's bytes are taken whole; ours go out instead,
                    // finished by later writes, flushes or the shutdown.
                    this.replacing = Some((answer, 0));
                    if let Poll::Ready(Err(e)) = this.poll_replacing(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(buf.len()));
                }
            }
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        match &polled {
            Poll::Pending => this.activity.write_blocked(),
            Poll::Ready(_) => this.activity.write_done(),
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Never used by the gateway's connections (`writev(false)`); a
        // vectored write goes through `poll_write` one slice at a time.
        let buf = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacing(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacing(cx))?;
        if self.activity.parking.load(Ordering::Relaxed) == PARKING {
            // hyper stops for a park: the connection stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How [`serve_watched`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The connection is done (closed, or to be dropped).
    Ended,
    /// The protocol stopped for a park; the transport is still open.
    Parked,
}

/// Serves `connection` until it ends. `graceful` is the protocol's graceful
/// shutdown (HTTP/2's GOAWAY), if it has one: it is started once `stop`
/// resolves (`stopped` remembers it across parks) or the connection has
/// been idle too long, and the connection then gets `header_read` more to
/// end by itself. Without one (HTTP/1.1, where the gateway answers requests
/// during a drain itself), a connection that waited too long is dropped,
/// which closes it. `park` (HTTP/1.1) tells the protocol to stop when the
/// connection has been idle for `park_after`; it then ends `Parked`.
pub async fn serve_watched<C, S>(
    mut connection: Pin<&mut C>,
    activity: &Activity,
    mut stop: Pin<&mut S>,
    stopped: &mut bool,
    graceful: Option<fn(Pin<&mut C>)>,
    park: Option<fn(Pin<&mut C>)>,
) -> Served
where
    C: Future,
    S: Future,
{
    /// What woke the connection's task.
    enum Step {
        Ended,
        Due(Due),
        Stop,
    }
    let mut graceful = graceful;
    let watchers = Watchers::new();
    loop {
        let due = activity.due();
        let mut due = std::pin::pin!(due);
        watchers.look_next_time();
        let already_stopped = *stopped;
        let step = std::future::poll_fn(|cx| {
            if connection.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Ended);
            }
            // The watchdog and the stop signal, only when one of them woke
            // the task (or they are new): every other wake-up is the
            // connection's own, one or two per request.
            let Some(mut watching) = watchers.woken(cx) else {
                return Poll::Pending;
            };
            if let Poll::Ready(due) = due.as_mut().poll(&mut watching) {
                return Poll::Ready(Step::Due(due));
            }
            if !already_stopped && stop.as_mut().poll(&mut watching).is_ready() {
                return Poll::Ready(Step::Stop);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Ended => {
                // A park stays `PARKING` until `park` resumes it, so the
                // watchdog does not park it again meanwhile.
                if activity.parking.load(Ordering::Relaxed) == PARKING {
                    return Served::Parked;
                }
                activity.parking.store(NOT_PARKING, Ordering::Relaxed);
                return Served::Ended;
            }
            Step::Due(due) => match (due, park) {
                (Due::Park, Some(park)) => {
                    activity.parking.store(PARKING, Ordering::Relaxed);
                    park(connection.as_mut());
                }
                (Due::Park, None) => unreachable!("park_after is set only where parking is"),
                (Due::Expired, _) => match graceful.take() {
                    Some(shut_down) => {
                        shut_down(connection.as_mut());
                        activity.last_wait();
                    }
                    None => return Served::Ended,
                },
            },
            Step::Stop => {
                *stopped = true;
                activity.drain();
                if let Some(shut_down) = graceful.take() {
                    shut_down(connection.as_mut());
                }
            }
        }
    }
}

/// The wake-ups of a connection's watchdog and stop signal, told apart from
/// the connection's own: those two are polled with a waker of their own,
/// which notes that they woke and wakes the task. Polling them on every
/// wake-up of the task (a `select!`) cost about 500 instructions per
/// request, the timer's and the signal's checks (`benches/instructions.sh`).
struct Watchers {
    signal: Arc<Signal>,
    waker: Waker,
}

/// Whether the watchers woke, and the task to wake.
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

impl Watchers {
    fn new() -> Self {
        let signal = Arc::new(Signal::default());
        Watchers {
            waker: Waker::from(signal.clone()),
            signal,
        }
    }

    /// The next poll looks at the watchers whatever woke the task (they
    /// are new, and have not registered their wake-ups yet).
    fn look_next_time(&self) {
        self.signal.woken.store(true, Ordering::Release);
    }

    /// The context to poll the watchers with, when they woke (or are new);
    /// notes the task to wake for them either way.
    fn woken(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        {
            let mut task = self.signal.task.lock().unwrap_or_else(|e| e.into_inner());
            match &*task {
                Some(known) if known.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        // Cleared before they are polled: a wake-up from now on is seen
        // at the next poll.
        self.signal
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }
}

/// Waits on a parked connection's transport for its next byte, which is
/// kept to be read again; `false` when the connection is to close instead
/// (its idle wait ran out, or it closed).
pub async fn park<I: AsyncRead + Unpin, U>(
    io: &mut Watched<I, U>,
    activity: &Activity,
    mut stop: Pin<&mut impl Future>,
    stopped: &mut bool,
) -> bool {
    let mut byte = [0u8; 1];
    loop {
        let mut buf = ReadBuf::new(&mut byte);
        let read = std::future::poll_fn(|cx| Pin::new(&mut io.io).poll_read(cx, &mut buf));
        tokio::select! {
            biased;
            read = read => {
                if read.is_err() || buf.filled().is_empty() {
                    return false;
                }
                io.unread(Bytes::copy_from_slice(buf.filled()));
                activity.resume();
                return true;
            }
            _ = activity.expired() => return false,
            _ = stop.as_mut(), if !*stopped => {
                *stopped = true;
                activity.drain();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_hypers_own_bare_refusal_is_recognised() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\
                      date: Fri, 04 Dec 2026 03:09:43 GMT\r\n\r\n";
        assert_eq!(hypers_refusal(hyper), Some(400));
        let large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hypers_refusal(large), Some(431));
        // Every answer of the gateway carries X-Request-Id.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: a\r\n\r\n";
        assert_eq!(hypers_refusal(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(hypers_refusal(with_body), None);
        let other = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hypers_refusal(other), None);
        assert_eq!(hypers_refusal(b"HTTP/1.1 4"), None);
    }

    /// An idle connection (1 s header read, 60 s idle) watched for `send`,
    /// its HTTP/2 `streams` or parking after `park_after`.
    fn idle_watching(
        send: Option<Duration>,
        streams: bool,
        park_after: Option<Duration>,
    ) -> Arc<Activity> {
        Activity::watching(
            SECOND,
            60 * SECOND,
            Start::Idle,
            Watch {
                send,
                streams,
                park_after,
            },
        )
    }

    #[test]
    fn a_head_is_being_read_until_a_request_begins_and_again_after_an_idle_wait() {
        let activity = Activity::new(SECOND, 60 * SECOND, Start::Head);
        assert!(activity.reading_head());
        let request = activity.begin();
        assert!(!activity.reading_head());
        drop(request);
        assert!(!activity.reading_head(), "idle");
        activity.read_some();
        assert!(activity.reading_head());
    }

    #[test]
    fn a_request_in_flight_expires_only_once_writes_stay_blocked_past_send() {
        let activity = idle_watching(Some(20 * MS), false, None);
        let request = activity.begin();
        std::thread::sleep(30 * MS);
        assert!(
            activity.remaining().is_ok(),
            "no write blocked: waiting is fine"
        );
        activity.write_blocked();
        assert!(activity.remaining().is_ok(), "blocked only just now");
        std::thread::sleep(30 * MS);
        activity.write_blocked();
        assert_eq!(
            activity.remaining(),
            Err(Due::Expired),
            "blocked since the first note"
        );
        activity.write_done();
        assert!(activity.remaining().is_ok(), "a write went through");
        drop(request);
    }

    #[test]
    fn a_watched_stream_that_waits_for_the_client_past_send_is_cut_and_its_request_ends() {
        let activity = idle_watching(Some(20 * MS), true, None);
        let left = activity.remaining().unwrap();
        assert!(left <= 20 * MS, "idle, looked at every send: {left:?}");
        // A body that is never polled, holding its request's mark.
        let stream = activity.stream(activity.begin());
        assert!(activity.remaining().unwrap() <= 20 * MS);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1);
        std::thread::sleep(30 * MS);
        assert!(activity.remaining().is_ok(), "the connection goes on");
        assert_eq!(
            activity.in_flight.load(Ordering::Relaxed),
            0,
            "the request ended with its body"
        );
        drop(stream);
    }

    #[test]
    fn without_watched_streams_nothing_is_cut_or_looked_at_sooner() {
        let activity = idle_watching(Some(20 * MS), false, None);
        assert!(activity.remaining().unwrap() > 59 * SECOND);
        let stream = activity.stream(activity.begin());
        std::thread::sleep(30 * MS);
        assert_eq!(activity.remaining(), Ok(SECOND));
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1);
        drop(stream);
    }

    #[tokio::test]
    async fn a_first_head_must_arrive_within_header_read() {
        let activity = Activity::new(100 * MS, 60 * SECOND, Start::Head);
        let started = Instant::now();
        activity.expired().await;
        let took = started.elapsed();
        assert!(took >= 100 * MS && took < SECOND, "{took:?}");
    }

    #[test]
    fn idleness_starts_when_the_last_request_in_flight_ends() {
        let activity = Activity::new(SECOND, 60 * SECOND, Start::Head);
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.remaining(), Ok(SECOND), "a recheck, not a wait");
        drop(first);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1);
        drop(second);
        let left = activity.remaining().unwrap();
        assert!(left > 59 * SECOND && left <= 60 * SECOND, "{left:?}");
        assert_eq!(activity.deadline.load(Ordering::Relaxed) & HEAD, 0);
    }

    #[test]
    fn bytes_after_an_idle_wait_start_a_head_and_more_bytes_do_not_extend_it() {
        let activity = Activity::new(SECOND, 60 * SECOND, Start::Idle);
        activity.read_some();
        let deadline = activity.deadline.load(Ordering::Relaxed);
        assert_eq!(deadline & HEAD, HEAD);
        assert!(activity.remaining().unwrap() <= SECOND);
        std::thread::sleep(Duration::from_millis(2));
        activity.read_some();
        assert_eq!(activity.deadline.load(Ordering::Relaxed), deadline);
    }

    #[test]
    fn bytes_read_while_a_request_is_in_flight_change_nothing() {
        let activity = Activity::new(SECOND, 60 * SECOND, Start::Idle);
        let request = activity.begin();
        let deadline = activity.deadline.load(Ordering::Relaxed);
        activity.read_some();
        assert_eq!(activity.deadline.load(Ordering::Relaxed), deadline);
        drop(request);
    }

    #[test]
    fn a_drain_shortens_an_idle_wait_to_header_read_but_not_a_head() {
        let activity = Activity::new(SECOND, 60 * SECOND, Start::Idle);
        activity.drain();
        assert!(activity.remaining().unwrap() <= SECOND);
        drop(activity.begin());
        assert!(activity.remaining().unwrap() <= SECOND, "later waits too");

        let head = Activity::new(5 * SECOND, 60 * SECOND, Start::Head);
        head.drain();
        assert!(head.remaining().unwrap() > 4 * SECOND);
    }

    #[tokio::test]
    async fn the_watchdog_follows_a_deadline_that_moved_while_it_slept() {
        let activity = Activity::new(100 * MS, 300 * MS, Start::Idle);
        let started = Instant::now();
        let watchdog = activity.expired();
        tokio::pin!(watchdog);
        // A request in flight through the first 400 ms, then 300 ms idle.
        let request = activity.begin();
        tokio::select! {
            _ = watchdog.as_mut() => panic!("expired with a request in flight"),
            _ = tokio::time::sleep(400 * MS) => {}
        }
        drop(request);
        watchdog.await;
        let took = started.elapsed();
        assert!(took >= 700 * MS && took < 3 * SECOND, "{took:?}");
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn an_idle_connection_parks_after_park_after_and_a_park_waits_out_the_idle_limit() {
        let activity = Activity::watching(
            100 * MS,
            500 * MS,
            Start::Idle,
            Watch {
                send: None,
                park_after: Some(100 * MS),
                streams: false,
            },
        );
        drop(activity.begin());
        let started = Instant::now();
        // A connection that ends as soon as it is told to stop, as an idle
        // hyper connection does.
        let told = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = told.clone();
        let connection = std::pin::pin!(std::future::poll_fn(move |cx| {
            if stopped.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                let waker = cx.waker().clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    while !stopped.load(Ordering::Relaxed) {
                        tokio::time::sleep(10 * MS).await;
                    }
                    waker.wake();
                });
                Poll::Pending
            }
        }));
        static TOLD: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
            std::sync::OnceLock::new();
        TOLD.set(told).unwrap();
        let served = serve_watched(
            connection,
            &activity,
            std::pin::pin!(never()),
            &mut false,
            None,
            Some(|_| TOLD.get().unwrap().store(true, Ordering::Relaxed)),
        )
        .await;
        assert_eq!(served, Served::Parked);
        let took = started.elapsed();
        assert!(took >= 100 * MS && took < 450 * MS, "parked after {took:?}");
        // Parked, nothing arrives: it closes when the idle limit is up,
        // and the watchdog does not park it again meanwhile.
        let (client, server) = tokio::io::duplex(64);
        let mut io = Watched::new(server, activity.clone(), ());
        let resumed = park(&mut io, &activity, std::pin::pin!(never()), &mut false).await;
        assert!(!resumed);
        let took = started.elapsed();
        assert!(
            took >= 500 * MS && took < 3 * SECOND,
            "closed after {took:?}"
        );
        drop(client);
    }

    #[tokio::test]
    async fn a_parked_connection_resumes_with_its_first_byte_read_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let activity = idle_watching(None, false, Some(MS));
        drop(activity.begin());
        activity.parking.store(PARKING, Ordering::Relaxed);
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Watched::new(server, activity.clone(), ());
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(park(&mut io, &activity, std::pin::pin!(never()), &mut false).await);
        assert_eq!(activity.parking.load(Ordering::Relaxed), NOT_PARKING);
        let mut got = [0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        assert_eq!(
            activity.deadline.load(Ordering::Relaxed) & HEAD,
            HEAD,
            "a head began"
        );
    }

    #[tokio::test]
    async fn the_stop_signal_is_polled_when_it_wakes_not_on_each_of_the_connections_wake_ups() {
        static TOLD: AtomicBool = AtomicBool::new(false);
        let activity = Activity::new(SECOND, 60 * SECOND, Start::Idle);
        // A busy connection: woken every millisecond, ends once told.
        let mut connection_polls = 0u32;
        let connection = std::pin::pin!(std::future::poll_fn(|cx| {
            connection_polls += 1;
            if TOLD.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            let waker = cx.waker().clone();
            tokio::spawn(async move {
                tokio::time::sleep(MS).await;
                waker.wake();
            });
            Poll::Pending
        }));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mut stop_polls = 0u32;
        let mut waiting = std::pin::pin!(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let stop = std::pin::pin!(std::future::poll_fn(|cx| {
            stop_polls += 1;
            waiting.as_mut().poll(cx)
        }));
        tokio::spawn(async move {
            tokio::time::sleep(100 * MS).await;
            let _ = stop_tx.send(true);
        });
        let mut stopped = false;
        let served = serve_watched(
            connection,
            &activity,
            stop,
            &mut stopped,
            Some(|_| TOLD.store(true, Ordering::Relaxed)),
            None,
        )
        .await;
        assert_eq!(served, Served::Ended);
        assert!(stopped, "the stop signal was seen");
        assert!(connection_polls > 10, "{connection_polls} connection polls");
        assert!(
            stop_polls <= 3,
            "the stop signal was polled {stop_polls} times for {connection_polls} connection polls"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_without_a_graceful_shutdown_is_dropped_at_its_deadline() {
        let activity = Activity::new(100 * MS, 200 * MS, Start::Idle);
        let started = Instant::now();
        let (connection, stop) = (std::pin::pin!(never()), std::pin::pin!(never()));
        let served = serve_watched(connection, &activity, stop, &mut false, None, None).await;
        assert_eq!(served, Served::Ended);
        let took = started.elapsed();
        assert!(took >= 200 * MS && took < 2 * SECOND, "{took:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_with_a_graceful_shutdown_is_told_then_given_header_read() {
        static TOLD: AtomicU32 = AtomicU32::new(0);
        let activity = Activity::new(100 * MS, 200 * MS, Start::Idle);
        let started = Instant::now();
        let (connection, stop) = (std::pin::pin!(never()), std::pin::pin!(never()));
        serve_watched(
            connection,
            &activity,
            stop,
            &mut false,
            Some(|_| {
                TOLD.fetch_add(1, Ordering::Relaxed);
            }),
            None,
        )
        .await;
        assert_eq!(TOLD.load(Ordering::Relaxed), 1, "told once");
        let took = started.elapsed();
        assert!(took >= 300 * MS && took < 3 * SECOND, "{took:?}");
    }
}
