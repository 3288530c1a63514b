//! Per-worker pools of plain HTTP/1.1 connections to upstreams.
//!
//! Each serving thread keeps its own idle connections per upstream, so
//! taking one and handing it back touch no lock and no other core's memory.
//! (The shared `hyper_util` pool, still used for `https` upstreams and
//! WebSocket upgrades through [`super::Client`], locks one mutex shared by
//! all workers on every checkout and return, and spawns a task to hand each
//! connection back.) A connection in use travels with its response as a
//! [`Lease`], which puts it back when the response body is done, so a pool
//! holds only idle connections and finding one is short however many
//! requests are in flight.
//!
//! Invariants: a connection carries one request at a time (it is out of
//! the pool from [`Pool::take`] until its lease is dropped, and hyper's
//! `SendRequest` refuses a second request before the first response is
//! done); one idle for more than [`super::POOL_IDLE`] is never used again
//! and the worker's sweep closes it; a request is retried on another
//! connection only when hyper handed it back unsent.

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;
use super::POOL_IDLE;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most idle connections a worker keeps per upstream; more are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// How often a worker closes its connections idle past [`POOL_IDLE`].
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// TCP keep-alive probes on upstream connections start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An idle connection and since when.
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl Idle {
    /// Open, and idle no longer than [`POOL_IDLE`].
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.since.elapsed() <= POOL_IDLE
    }
}

/// The idle connections of one worker thread, by upstream number
/// ([`upstream_number`]).
#[derive(Default)]
struct Pool {
    idle: Vec<Vec<Idle>>,
    /// Whether this worker's sweep was set up (or found impossible).
    sweep_tried: bool,
}

/// The number of the upstream at `authority`: the same for the life of the
/// process, whichever gateway or config asks (the pools of every worker are
/// indexed by it). Called when a config is compiled, never per request.
pub fn upstream_number(authority: &Authority) -> usize {
    static NUMBERS: Mutex<Vec<Authority>> = Mutex::new(Vec::new());
    let mut numbers = NUMBERS.lock().unwrap_or_else(|e| e.into_inner());
    match numbers.iter().position(|a| a == authority) {
        Some(n) => n,
        None => {
            numbers.push(authority.clone());
            numbers.len() - 1
        }
    }
}

impl Pool {
    /// An idle connection to `upstream` ready for a request, the most
    /// recently used first (its socket and buffers are the likeliest to be
    /// warm). Unusable ones are dropped on the way; one whose last response
    /// hyper has not finished with yet is left.
    fn take(&mut self, upstream: usize) -> Option<SendRequest<RequestBody>> {
        let idle = self.idle.get_mut(upstream)?;
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if !idle[i].usable() {
                idle.swap_remove(i);
            } else if idle[i].sender.is_ready() {
                return Some(idle.swap_remove(i).sender);
            }
        }
        None
    }

    /// Keeps a connection whose response is done.
    fn put(&mut self, upstream: usize, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        if self.idle.len() <= upstream {
            self.idle.resize_with(upstream + 1, Vec::new);
        }
        let idle = &mut self.idle[upstream];
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        if !self.sweep_tried {
            self.sweep_tried = true;
            start_sweeping();
        }
    }

    /// Drops unusable connections (dropping an idle connection's sender
    /// closes it).
    fn sweep(&mut self) {
        for idle in &mut self.idle {
            idle.retain(Idle::usable);
        }
    }
}

/// A pooled connection on loan to one response; dropping it (with the
/// response body) hands the connection back to this worker's pool.
pub struct Lease {
    upstream: usize,
    sender: Option<SendRequest<RequestBody>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        // Not during thread teardown, nor from inside the pool itself.
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.put(self.upstream, sender);
            }
        });
    }
}

/// Sends `req` (origin-form URI, `Host` set) to upstream number `upstream`
/// at `authority`, on one of this worker's idle connections or a new one.
/// Returns the response head, its body streaming, and the connection's
/// lease, to be dropped once the body is done.
pub async fn send(
    upstream: usize,
    authority: &Authority,
    connect_timeout: Duration,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease), BoxError> {
    loop {
        let pooled = POOL.with_borrow_mut(|p| p.take(upstream));
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => connect(authority, connect_timeout).await?,
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let lease = Lease {
                    upstream,
                    sender: Some(sender),
                };
                return Ok((resp, lease));
            }
            Err(mut e) => match e.take_message() {
                // Closed between the readiness check and the send: the
                // request never left, so another connection may carry it.
                Some(unsent) if reused => req = unsent,
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

/// A new connection to `authority` with `TCP_NODELAY` and keep-alive
/// probes; its I/O runs as a task on this worker.
async fn connect(
    authority: &Authority,
    timeout: Duration,
) -> Result<SendRequest<RequestBody>, BoxError> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connecting to {authority} timed out"))??;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
    // Flat writes, as on the server side (`server::run_http`).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Starts this worker's periodic sweep. Only on a current-thread runtime,
/// whose tasks stay on the thread whose pool they sweep; elsewhere idle
/// connections are still never reused, and close when the upstream closes
/// them.
fn start_sweeping() {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return;
    }
    rt.spawn(async {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            POOL.with_borrow_mut(Pool::sweep);
        }
    });
}
