//! A bad-token spray against a running gateway, for the failed-auth
//! memory benchmark.
//!
//! Starts nothing itself: given a gateway address, it sends `--requests`
//! requests, each with a distinct random bearer token, over `--connections`
//! keep-alive connections in parallel (`--pipeline` requests in flight on
//! each), counts the statuses, and fails unless every answer is 401 or 429.
//! With `--random-xff`, each request carries a random `X-Forwarded-For`
//! address, so a gateway that trusts 127.0.0.1 as a proxy sees that many
//! distinct clients and its failed-auth table fills up to its cap. With
//! `--pid`, the gateway's VmRSS and VmHWM (from /proc) are read before and
//! after, and `--max-rss-growth-mib` turns the growth into a pass/fail.
//!
//! ```text
//! cargo run --release --example spray -- --addr 127.0.0.1:8080 \
//!     --requests 1000000 --random-xff --pid "$(pidof tollgate)" --max-rss-growth-mib 10
//! ```
//!
//! Invariant: the load is bounded in count (`--requests`) and time
//! (`--max-seconds`), and goes only to the address given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(about = "Spray a gateway with distinct bad tokens and count the answers")]
struct Args {
    /// The gateway's data listener.
    #[arg(long)]
    addr: SocketAddr,
    /// How many requests in all.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Keep-alive connections in parallel.
    #[arg(long, default_value_t = 8)]
    connections: u64,
    /// Requests written before their answers are read, per connection.
    #[arg(long, default_value_t = 16)]
    pipeline: u64,
    /// The path requested (a route that needs a token).
    #[arg(long, default_value = "/api/v1/spray")]
    path: String,
    /// Add a random `X-Forwarded-For` address to every request.
    #[arg(long)]
    random_xff: bool,
    /// The gateway's process id, to read its memory before and after.
    #[arg(long)]
    pid: Option<u32>,
    /// Fail when the gateway's VmRSS grew by more than this many MiB.
    #[arg(long)]
    max_rss_growth_mib: Option<u64>,
    /// Stop after this long, whatever is left.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A small xorshift generator: random enough for tokens nobody will ever
/// hold, and cheap enough not to be what is measured.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Appends one request with a fresh token (random, plus the connection and
/// sequence number, so no two are alike).
fn write_request(out: &mut Vec<u8>, args: &Args, rng: &mut Rng, conn: u64, seq: u64) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(args.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: spray\r\nAuthorization: Bearer spray-");
    for _ in 0..24 {
        out.push(ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize]);
    }
    out.extend_from_slice(format!("-{conn}-{seq}\r\n").as_bytes());
    if args.random_xff {
        let ip = (rng.next() as u32).to_be_bytes();
        out.extend_from_slice(
            format!(
                "X-Forwarded-For: {}.{}.{}.{}\r\n",
                ip[0], ip[1], ip[2], ip[3]
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads exactly one response from `buf` (refilled from `stream`) and
/// returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
            let text = String::from_utf8_lossy(head).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection's share of the requests; reconnects when the gateway
/// closes. Returns the statuses it saw.
async fn spray(
    args: Arc<Args>,
    conn: u64,
    share: u64,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> BTreeMap<u16, u64> {
    let mut counts = BTreeMap::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (conn + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut sent = 0;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    'connect: while sent < share && Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect(args.addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        buf.clear();
        while sent < share && Instant::now() < deadline {
            let batch = args.pipeline.min(share - sent);
            out.clear();
            for i in 0..batch {
                write_request(&mut out, &args, &mut rng, conn, sent + i);
            }
            if stream.write_all(&out).await.is_err() {
                continue 'connect;
            }
            for _ in 0..batch {
                match read_response(&mut stream, &mut buf).await {
                    Ok(status) => {
                        *counts.entry(status).or_insert(0) += 1;
                        sent += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // Closed mid-batch: the unanswered ones are sent again.
                    Err(_) => continue 'connect,
                }
            }
        }
    }
    counts
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Arc::new(Args::parse());
    let before = args.pid.and_then(memory);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let done = Arc::new(AtomicU64::new(0));

    let conns = args.connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let share = args.requests / conns + u64::from(c < args.requests % conns);
        tasks.push(tokio::spawn(spray(
            args.clone(),
            c,
            share,
            deadline,
            done.clone(),
        )));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{} answered", done.load(Ordering::Relaxed));
            }
        })
    };
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        for (status, n) in t.await.expect("spray task") {
            *counts.entry(status).or_insert(0) += n;
        }
    }
    progress.abort();
    let elapsed = started.elapsed();
    let total: u64 = counts.values().sum();
    println!(
        "{total} answers in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for (status, n) in &counts {
        println!("  {status}: {n}");
    }

    let mut failed = false;
    if total < args.requests {
        println!("only {total} of {} answered in time", args.requests);
        failed = true;
    }
    if counts.keys().any(|s| *s != 401 && *s != 429) {
        println!("an answer other than 401 or 429");
        failed = true;
    }
    if let (Some(pid), Some((rss0, hwm0))) = (args.pid, before) {
        let after = memory(pid);
        if let Some((rss1, hwm1)) = after {
            let growth = rss1.saturating_sub(rss0);
            println!(
                "gateway VmRSS {rss0} kB -> {rss1} kB (+{:.1} MiB), VmHWM {hwm0} kB -> {hwm1} kB",
                growth as f64 / 1024.0
            );
            if let Some(max) = args.max_rss_growth_mib {
                if growth > max * 1024 {
                    println!("RSS grew by more than {max} MiB");
                    failed = true;
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
