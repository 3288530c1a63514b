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

/// One log line, newline included: JSON, or `key=value` text.
fn format_line(r: &Record, json: bool) -> Vec<u8> {
    // Room for a whole line with a UUID request id, a token id and a
    // route: one allocation, grown only for a long path or id.
    let mut out = Vec::with_capacity(512);
    if json {
        json_line(&mut out, r);
    } else {
        text_line(&mut out, r);
    }
    out.push(b'\n');
    out
}

/// The line as JSON, the fields in the contract's order, written straight
/// into `out` (a serializer would walk the same fields through a struct,
/// its options and a formatter; this is the hot path of every request).
fn json_line(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(b"{\"ts\":\"");
    write_time(out, r.ts);
    out.extend_from_slice(b"\",\"request_id\":");
    json_string(out, Some(r.request_id.to_str().unwrap_or("-")));
    out.extend_from_slice(b",\"client_ip\":");
    json_string(out, Some(r.client_ip.to_str().unwrap_or("-")));
    out.extend_from_slice(b",\"method\":");
    json_string(out, Some(r.method.as_str()));
    out.extend_from_slice(b",\"path\":");
    json_string(out, Some(&r.path));
    out.extend_from_slice(b",\"route\":");
    json_string(out, r.route.as_deref());
    out.extend_from_slice(b",\"token_id\":");
    json_string(out, r.token_id.as_ref().and_then(|v| v.to_str().ok()));
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.status).as_bytes());
    out.extend_from_slice(b",\"error\":");
    json_string(out, r.error);
    out.extend_from_slice(b",\"upstream_request_id\":");
    json_string(
        out,
        r.upstream_request_id.as_ref().and_then(|v| v.to_str().ok()),
    );
    out.extend_from_slice(b",\"duration_ms\":");
    write_millis(out, r.duration);
    out.extend_from_slice(b",\"bytes_out\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.bytes_out).as_bytes());
    out.push(b'}');
}

/// A header value as text, `-` when absent or not text.
fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// The line as `key=value` text (the time first, the path quoted).
fn text_line(out: &mut Vec<u8>, r: &Record) {
    write_time(out, r.ts);
    let mut millis = Vec::with_capacity(16);
    write_millis(&mut millis, r.duration);
    let _ = write!(
        out,
        " request_id={} client_ip={} method={} path={:?} route={} token_id={} status={} error={} upstream_request_id={} duration_ms={} bytes_out={}",
        text(Some(&r.request_id)),
        text(Some(&r.client_ip)),
        r.method,
        &*r.path,
        r.route.as_deref().unwrap_or("-"),
        text(r.token_id.as_ref()),
        r.status,
        r.error.unwrap_or("-"),
        text(r.upstream_request_id.as_ref()),
        String::from_utf8_lossy(&millis),
        r.bytes_out
    );
}

/// The bytes a JSON string cannot hold as they are: `"`, `\\` and the
/// control characters.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// A JSON string (escaped as JSON requires), or `null`. Values are nearly
/// always clean, so the scan for the first byte to escape is the hot loop:
/// one table load per byte.
fn json_string(out: &mut Vec<u8>, text: Option<&str>) {
    let Some(text) = text else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    let mut rest = text.as_bytes();
    while let Some(at) = first_escaped(rest) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Where the first byte of `bytes` that JSON must escape is: eight bytes
/// at a time while none is (word arithmetic that flags a byte below 0x20,
/// `"` or `\\`; exact about whether one is there), then byte by byte.
fn first_escaped(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let flags = |word: u64| {
        let zero_at = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
        control
            | zero_at(word ^ (ONES * u64::from(b'"')))
            | zero_at(word ^ (ONES * u64::from(b'\\')))
    };
    let mut start = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
        if flags(word) != 0 {
            break;
        }
        start += 8;
    }
    bytes[start..]
        .iter()
        .position(|&b| ESCAPED[usize::from(b)])
        .map(|at| start + at)
}

/// Milliseconds with up to three decimals, as the shortest JSON number
/// (`1.5`, `12.0`, `0.001`): the duration rounded to the microsecond.
fn write_millis(out: &mut Vec<u8>, duration: Duration) {
    // In 64 bits (`as_nanos` is 128, whose divisions are library calls).
    let micros = duration
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add((u64::from(duration.subsec_nanos()) + 500) / 1_000);
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1_000).as_bytes());
    out.push(b'.');
    let mut fraction = (micros % 1_000) as u32;
    let mut digits = 3;
    while digits > 1 && fraction % 10 == 0 {
        fraction /= 10;
        digits -= 1;
    }
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(fraction);
    out.extend(std::iter::repeat_n(b'0', digits - text.len()));
    out.extend_from_slice(text.as_bytes());
}

thread_local! {
    /// The last second formatted on this thread, `YYYY-MM-DDTHH:MM:SS`:
    /// lines within one second share it.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// An RFC 3339 UTC time as the `time` crate writes it: the second, then
/// the nanoseconds without trailing zeros (none when zero), then `Z`.
fn write_time(out: &mut Vec<u8>, at: SystemTime) {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs();
    let text = SECOND.with(|cached| {
        let (second, text) = cached.get();
        if second == seconds {
            return text;
        }
        let text = second_text(seconds);
        cached.set((seconds, text));
        text
    });
    out.extend_from_slice(&text);
    let mut nanos = since.subsec_nanos();
    if nanos != 0 {
        let mut digits = 9;
        while nanos % 10 == 0 {
            nanos /= 10;
            digits -= 1;
        }
        out.push(b'.');
        let mut buffer = itoa::Buffer::new();
        let text = buffer.format(nanos);
        out.extend(std::iter::repeat_n(b'0', digits - text.len()));
        out.extend_from_slice(text.as_bytes());
    }
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the epoch, in UTC.
fn second_text(seconds: u64) -> [u8; 19] {
    let mut text = [0u8; 19];
    let at = i64::try_from(seconds)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let _ = write!(
        cursor,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    text
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
    fn times_are_written_as_the_time_crate_writes_rfc_3339() {
        use time::format_description::well_known::Rfc3339;
        for (seconds, nanos) in [
            (0, 0),
            (0, 1),
            (1_764_825_345, 120_000_000),
            (1_764_825_345, 123_456_789),
            (1_764_825_346, 100),
            (4_102_444_799, 999_999_999),
            (951_782_400, 5_000), // 2000-02-29
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
            let mut ours = Vec::new();
            write_time(&mut ours, at);
            let theirs = OffsetDateTime::from(at).format(&Rfc3339).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs);
        }
    }

    #[test]
    fn the_first_byte_to_escape_is_found_at_every_position_for_every_byte() {
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[at] = b;
                let want = ESCAPED[usize::from(b)].then_some(at);
                assert_eq!(first_escaped(&bytes), want, "byte {b:#x} at {at}");
            }
        }
        // Bytes next to each other that borrow in the word arithmetic.
        assert_eq!(first_escaped(b"\x80\x21\x23\x5b\x5d\x1f\x00a"), Some(5));
        assert_eq!(first_escaped("ü€\u{1}".as_bytes()), Some(5));
        assert_eq!(first_escaped(b""), None);
    }

    #[test]
    fn json_strings_and_numbers_read_back_as_written() {
        for text in ["plain", "a\"b\\c", "tab\there\nline\u{1}", "ünï", ""] {
            let mut out = Vec::new();
            json_string(&mut out, Some(text));
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, text);
        }
        let mut out = Vec::new();
        json_string(&mut out, None);
        assert_eq!(out, b"null");
        for (micros, text) in [
            (1_500, "1.5"),
            (12_000, "12.0"),
            (1, "0.001"),
            (0, "0.0"),
            (123_456_789, "123456.789"),
            (10, "0.01"),
        ] {
            let mut out = Vec::new();
            write_millis(&mut out, Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        let mut out = Vec::new();
        write_millis(&mut out, Duration::from_nanos(1_499));
        assert_eq!(out, b"0.001", "rounded to the microsecond");
    }

    #[test]
    fn a_json_line_with_every_field_set_and_hostile_values_parses() {
        let mut r = record();
        r.path = "/a\"b\\c".into();
        r.token_id = Some(HeaderValue::from_static("id\"x"));
        r.error = Some("invalid_token");
        r.upstream_request_id = Some(HeaderValue::from_bytes(b"caf\xe9").unwrap());
        r.ts = SystemTime::UNIX_EPOCH + Duration::new(1_764_825_345, 5);
        let line = format_line(&r, true);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\\c");
        assert_eq!(v["token_id"], "id\"x");
        assert_eq!(v["error"], "invalid_token");
        assert!(v["upstream_request_id"].is_null(), "not text");
        assert_eq!(v["ts"], "2025-12-04T05:15:45.000000005Z");
        assert_eq!(line.last(), Some(&b'\n'));
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
