//! The access log: one line per request on stdout, written off the request
//! path.
//!
//! A request formats its line on its own thread when its response is done
//! (the record's data is still in that core's cache) and hands the bytes to
//! a bounded channel; one writer thread copies whole batches into one
//! buffer and writes it, so the hot path never makes a `write(2)`. After
//! each batch the writer lets lines gather for [`GATHER`] without waiting
//! on the channel, so under load queueing a line wakes no thread: the log
//! costs one wake-up and a few writes per interval, not per request. The
//! writer's own work is a copy per line, so a batch never holds a core
//! (shared with a worker) for longer than its writes take. When the channel
//! is full the line is dropped and counted ([`AccessLog::dropped`]) rather
//! than slowing requests down. Invariant: a record holds no credential,
//! token or hash — only the token id.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::LogFormat;

/// Lines buffered between requests and the writer before dropping.
const QUEUE: usize = 64 * 1024;

/// How long the writer lets records gather after writing a batch. Measured
/// (benches/load/run.sh, one core): waking the writer per record cost about a
/// tenth of the gateway's CPU time.
pub const GATHER: Duration = Duration::from_millis(10);

/// What travels to the writer: a formatted line, or a request to confirm
/// that everything queued before it is written.
enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// What one request leaves in the log.
#[derive(Debug)]
pub struct Record {
    pub ts: SystemTime,
    pub request_id: HeaderValue,
    /// The resolved client address, as text ([`crate::gateway::Conn::ip_value`]).
    pub client_ip: HeaderValue,
    pub method: Method,
    pub path: Box<str>,
    pub route: Option<Arc<str>>,
    pub token_id: Option<HeaderValue>,
    pub status: u16,
    /// The `error` code of a gateway-made answer; `None` for the upstream's.
    pub error: Option<&'static str>,
    /// The upstream's own `X-Request-Id`, if it answered with one.
    pub upstream_request_id: Option<HeaderValue>,
    pub duration: Duration,
    pub bytes_out: u64,
}

/// The process-wide access log.
pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: AtomicU64,
    format: AtomicU8,
}

impl AccessLog {
    /// Starts the writer thread over `sink` (stdout in production).
    pub fn start(sink: Box<dyn Write + Send>, format: LogFormat) -> Arc<AccessLog> {
        Self::with_queue(sink, format, QUEUE)
    }

    /// [`AccessLog::start`] with `queue` lines of room before dropping.
    fn with_queue(sink: Box<dyn Write + Send>, format: LogFormat, queue: usize) -> Arc<AccessLog> {
        let (tx, rx) = sync_channel(queue);
        std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || write_loop(rx, sink))
            .expect("spawning the access-log thread");
        Arc::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            format: AtomicU8::new(format as u8),
        })
    }

    /// Switches between JSON and text (on reload).
    pub fn set_format(&self, format: LogFormat) {
        self.format.store(format as u8, Ordering::Relaxed);
    }

    /// Formats a record and queues the line; drops it (and counts) if the
    /// writer is behind.
    pub fn submit(&self, record: Record) {
        let json = self.format.load(Ordering::Relaxed) == LogFormat::Json as u8;
        match self.tx.try_send(Message::Line(format_line(&record, json))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Blocks until every record queued so far is written and flushed to the
    /// sink, or `timeout` passes (on shutdown, so the last lines are kept).
    pub fn flush(&self, timeout: Duration) {
        let (done_tx, done_rx) = sync_channel(1);
        let deadline = std::time::Instant::now() + timeout;
        let mut message = Message::Flush(done_tx);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = done_rx.recv_timeout(left);
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(rx: Receiver<Message>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut flushed = Vec::new();
    while let Ok(first) = rx.recv() {
        // Write whatever else is queued with it, then the batch at once.
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => flushed.push(done),
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        for done in flushed.drain(..) {
            let _ = done.try_send(());
        }
        std::thread::sleep(GATHER);
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: &'a str,
    request_id: &'a str,
    client_ip: &'a str,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    token_id: Option<&'a str>,
    status: u16,
    error: Option<&'a str>,
    upstream_request_id: Option<&'a str>,
    duration_ms: f64,
    bytes_out: u64,
}

/// One log line, newline included: JSON, or `key=value` text.
fn format_line(r: &Record, json: bool) -> Vec<u8> {
    // The time is formatted on the stack; the line is the only allocation.
    let mut ts = [0u8; 48];
    let line = Line {
        ts: format_into(&mut ts, |w| {
            OffsetDateTime::from(r.ts)
                .format_into(w, &Rfc3339)
                .map(drop)
                .map_err(std::io::Error::other)
        }),
        request_id: r.request_id.to_str().unwrap_or("-"),
        client_ip: r.client_ip.to_str().unwrap_or("-"),
        method: r.method.as_str(),
        path: &r.path,
        route: r.route.as_deref(),
        token_id: r.token_id.as_ref().and_then(|v| v.to_str().ok()),
        status: r.status,
        error: r.error,
        upstream_request_id: r.upstream_request_id.as_ref().and_then(|v| v.to_str().ok()),
        duration_ms: (r.duration.as_secs_f64() * 1e6).round() / 1e3,
        bytes_out: r.bytes_out,
    };
    let mut out = Vec::with_capacity(256);
    let _ = if json {
        serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)
    } else {
        write!(
            out,
            "{} request_id={} client_ip={} method={} path={:?} route={} token_id={} status={} error={} upstream_request_id={} duration_ms={} bytes_out={}",
            line.ts,
            line.request_id,
            line.client_ip,
            line.method,
            line.path,
            line.route.unwrap_or("-"),
            line.token_id.unwrap_or("-"),
            line.status,
            line.error.unwrap_or("-"),
            line.upstream_request_id.unwrap_or("-"),
            line.duration_ms,
            line.bytes_out
        )
    };
    out.push(b'\n');
    out
}

/// What `write` puts into `buf`, as text; empty if it did not fit.
fn format_into(
    buf: &mut [u8],
    write: impl FnOnce(&mut std::io::Cursor<&mut [u8]>) -> std::io::Result<()>,
) -> &str {
    let mut cursor = std::io::Cursor::new(&mut *buf);
    let n = match write(&mut cursor) {
        Ok(()) => cursor.position() as usize,
        Err(_) => 0,
    };
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record() -> Record {
        Record {
            ts: SystemTime::UNIX_EPOCH,
            request_id: HeaderValue::from_static("abc"),
            client_ip: HeaderValue::from_static("127.0.0.1"),
            method: Method::GET,
            path: "/api/v1/info".into(),
            route: Some("/api/v1".into()),
            token_id: None,
            status: 200,
            error: None,
            upstream_request_id: None,
            duration: Duration::from_micros(1500),
            bytes_out: 12,
        }
    }

    #[test]
    fn flush_returns_once_every_queued_line_is_written() {
        let sink = Shared::default();
        let log = AccessLog::start(Box::new(sink.clone()), LogFormat::Text);
        for _ in 0..100 {
            log.submit(record());
        }
        log.flush(Duration::from_secs(5));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 100);
    }

    #[test]
    fn json_line_has_every_spec_field() {
        let sink = Shared::default();
        let log = AccessLog::start(Box::new(sink.clone()), LogFormat::Json);
        log.submit(record());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00Z");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/api/v1/info");
        assert_eq!(v["route"], "/api/v1");
        assert!(v["token_id"].is_null());
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["bytes_out"], 12);
    }

    #[test]
    fn a_format_switch_applies_from_the_next_request_on() {
        let sink = Shared::default();
        let log = AccessLog::start(Box::new(sink.clone()), LogFormat::Json);
        log.submit(record());
        log.set_format(LogFormat::Text);
        log.submit(record());
        log.flush(Duration::from_secs(5));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("{\"ts\":\"1970-01-01T00:00:00Z\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1]
                .starts_with("1970-01-01T00:00:00Z request_id=abc client_ip=127.0.0.1 method=GET"),
            "{}",
            lines[1]
        );
    }

    /// A sink whose first write blocks until released, as a stalled pipe
    /// or terminal would.
    struct Stalled {
        entered: std::sync::mpsc::Sender<()>,
        release: Arc<(Mutex<bool>, std::sync::Condvar)>,
        lines: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let (lock, released) = &*self.release;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = released.wait(open).unwrap();
            }
            let n = b.iter().filter(|&&c| c == b'\n').count();
            self.lines.fetch_add(n, Ordering::Relaxed);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_dropped_and_counted_while_the_sink_is_stalled_and_requests_never_wait() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let release = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let lines = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        const ROOM: usize = 100;
        let log = AccessLog::with_queue(
            Box::new(Stalled {
                entered: entered_tx,
                release: release.clone(),
                lines: lines.clone(),
            }),
            LogFormat::Json,
            ROOM,
        );
        // The writer takes this line and then blocks in the sink with an
        // empty queue behind it.
        log.submit(record());
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer reaches the sink");

        // Every submit returns while the sink is still stalled: were one to
        // wait for the writer, this loop would never end.
        for _ in 0..ROOM + 25 {
            log.submit(record());
        }
        assert_eq!(log.dropped(), 25, "exactly what did not fit in the queue");

        let (lock, released) = &*release;
        *lock.lock().unwrap() = true;
        released.notify_all();
        let want = 1 + ROOM;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let count = || lines.load(Ordering::Relaxed);
        while count() < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(count(), want, "every queued line is written once released");
        assert_eq!(log.dropped(), 25);
    }
}
