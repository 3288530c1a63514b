//! Per-worker pools of plain HTTP/1.1 connections to upstreams.
//!
//! Each serving thread keeps its own connections per upstream address, so
//! taking one and putting it back touch no lock and no other core's memory.
//! (The shared `hyper_util` pool, still used for `https` upstreams and
//! WebSocket upgrades through [`super::Client`], locks one mutex shared by
//! all workers on every checkout and return, and spawns a task to hand each
//! connection back.)
//!
//! Invariants: a connection carries one request at a time (hyper's
//! `SendRequest` refuses a second until the first response is done, and
//! [`Pool::take`] only hands out ready ones); a connection last handed a
//! request more than [`super::POOL_IDLE`] ago is never used again, and the
//! worker's sweep closes it once it is idle; a request is retried on
//! another connection only when hyper handed it back unsent.

use std::cell::RefCell;
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

/// Most connections a worker keeps per upstream; more are closed once done.
const MAX_PER_UPSTREAM: usize = 1024;

/// How often a worker closes its connections idle past [`POOL_IDLE`].
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// TCP keep-alive probes on upstream connections start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// One connection and when it was last handed a request.
struct Conn {
    sender: SendRequest<RequestBody>,
    used: Instant,
}

/// The connections of one worker thread, by upstream address (a list: a
/// gateway has a handful of upstreams, and comparing a few addresses is
/// cheaper than hashing one).
#[derive(Default)]
struct Pool {
    by_upstream: Vec<(Authority, Vec<Conn>)>,
    /// Whether this worker's sweep was set up (or found impossible).
    sweep_tried: bool,
}

impl Pool {
    /// A connection to `upstream` ready for a request, most recently used
    /// first (its socket and buffers are the likeliest to be warm). Closed
    /// ones found on the way are dropped, and so is a ready one last handed
    /// a request longer than [`POOL_IDLE`] ago.
    fn take(&mut self, upstream: &Authority) -> Option<SendRequest<RequestBody>> {
        let conns = self.conns(upstream)?;
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            if conns[i].sender.is_closed() {
                conns.swap_remove(i);
            } else if conns[i].sender.is_ready() {
                let c = conns.swap_remove(i);
                if c.used.elapsed() <= POOL_IDLE {
                    return Some(c.sender);
                }
            }
        }
        None
    }

    /// Keeps a connection that was just handed a request; it becomes
    /// ready again once that request's response is done.
    fn put(&mut self, upstream: &Authority, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let i = match self.by_upstream.iter().position(|(a, _)| a == upstream) {
            Some(i) => i,
            None => {
                self.by_upstream.push((upstream.clone(), Vec::new()));
                self.by_upstream.len() - 1
            }
        };
        let conns = &mut self.by_upstream[i].1;
        if conns.len() < MAX_PER_UPSTREAM {
            conns.push(Conn {
                sender,
                used: Instant::now(),
            });
        }
    }

    /// Drops closed connections and idle ones past [`POOL_IDLE`] (dropping
    /// an idle connection's sender closes it).
    fn sweep(&mut self) {
        for (_, conns) in &mut self.by_upstream {
            conns.retain(|c| {
                !c.sender.is_closed() && !(c.sender.is_ready() && c.used.elapsed() > POOL_IDLE)
            });
        }
        self.by_upstream.retain(|(_, conns)| !conns.is_empty());
    }

    fn conns(&mut self, upstream: &Authority) -> Option<&mut Vec<Conn>> {
        self.by_upstream
            .iter_mut()
            .find(|(a, _)| a == upstream)
            .map(|(_, conns)| conns)
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `upstream` on one of this
/// worker's connections, or a new one, and returns the response head with
/// its body streaming.
pub async fn send(
    upstream: &Authority,
    connect_timeout: Duration,
    mut req: Request<RequestBody>,
) -> Result<Response<Incoming>, BoxError> {
    loop {
        let pooled = POOL.with_borrow_mut(|p| p.take(upstream));
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => connect(upstream, connect_timeout).await?,
        };
        let sent = sender.try_send_request(req);
        POOL.with_borrow_mut(|p| {
            p.put(upstream, sender);
            if !p.sweep_tried {
                p.sweep_tried = true;
                start_sweeping();
            }
        });
        match sent.await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                // Closed between the readiness check and the send: the
                // request never left, so another connection may carry it.
                Some(unsent) if reused => req = unsent,
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

/// A new connection to `upstream` with `TCP_NODELAY` and keep-alive
/// probes; its I/O runs as a task on this worker.
async fn connect(
    upstream: &Authority,
    timeout: Duration,
) -> Result<SendRequest<RequestBody>, BoxError> {
    let host = upstream
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = upstream.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connecting to {upstream} timed out"))??;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
    let (sender, conn) = http1::Builder::new()
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
