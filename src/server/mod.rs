//! Listeners and connections: accept, TLS, HTTP/1.1 or HTTP/2, and drain.
//!
//! The server takes already-bound listeners and a shutdown future, so tests
//! bind port 0 and pass their own. HTTP/2 is chosen by ALPN on TLS and by
//! the client preface on plain listeners — read under the header-read
//! timeout (so a silent client cannot hold a connection open) and handed to
//! the protocol with the bytes already read ([`preface`]).
//!
//! Runtime shape: connections are accepted and served by the runtime that
//! calls [`serve`] and by `extra_workers` more threads, each running
//! its own current-thread runtime with its own accept loop on a duplicate of
//! each listening socket (one kernel accept queue; whichever runtime is free
//! takes the next connection). A connection stays on the runtime that
//! accepted it, so a request never crosses threads and no work is stolen.
//! The command line runs one runtime per core; tests and embedders that
//! leave the count at 0 serve on their own runtime only. Invariant: every
//! connection is counted until it closes ([`accept::Slots`], which also
//! holds `limits.max_connections`), and shutdown waits for them up to
//! `shutdown_grace`, then stops the extra runtimes.

pub mod accept;
pub mod activity;
pub mod launch;
pub mod preface;
pub mod reload;
pub mod signal;
pub mod streams;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use self::accept::{Backoff, Slots};
use self::activity::{Activity, InFlight, Served, Start, Unparsable, Watch, Watched};
use self::streams::Streamed;
use crate::gateway::{self, Conn, Gateway};

/// Binds a TCP listener with `SO_REUSEADDR` (so a restart does not wait for
/// TIME_WAIT) and `TCP_NODELAY` inherited by accepted sockets where the OS
/// supports it.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Serves the data listeners until `shutdown` resolves, then drains:
/// stops accepting, lets in-flight requests finish (up to
/// `timeouts.shutdown_grace`), and returns. `extra_workers` more threads,
/// each with its own current-thread runtime, accept and serve data
/// connections beside the caller's runtime.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Vec<TcpListener>,
    extra_workers: usize,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Slots::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let mut workers = Vec::with_capacity(extra_workers);
    for n in 0..extra_workers {
        let duplicates: std::io::Result<Vec<std::net::TcpListener>> = listeners
            .iter()
            .map(|l| socket2::SockRef::from(l).try_clone().map(Into::into))
            .collect();
        let spawned = duplicates.and_then(|duplicates| {
            let (gateway, slots) = (gateway.clone(), slots.clone());
            let (stop, done) = (stop_rx.clone(), done_rx.clone());
            std::thread::Builder::new()
                .name(format!("tollgate-worker-{}", n + 1))
                .spawn(move || worker(gateway, duplicates, slots, stop, done))
        });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a worker thread; serving with fewer");
                break;
            }
        }
    }
    let mut accept_tasks = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        accept_tasks.push(tokio::spawn(accept_loop(
            gateway.clone(),
            listener,
            index,
            slots.clone(),
            stop_rx.clone(),
        )));
    }
    gateway.set_listening();
    shutdown.await;
    gateway.start_draining();
    let _ = stop_tx.send(true);
    for task in accept_tasks {
        task.abort();
    }
    let grace = gateway
        .current
        .load()
        .policy
        .settings
        .timeouts
        .shutdown_grace;
    if tokio::time::timeout(grace, slots.idle()).await.is_err() {
        tracing::warn!(
            open = slots.open(),
            "shutdown grace elapsed with connections still open"
        );
    }
    // The extra runtimes drop whatever they still serve, and end.
    let _ = done_tx.send(true);
    // Keep the access-log lines of the last requests.
    let log = gateway.access_log.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
        log.flush(Duration::from_secs(1));
    })
    .await;
}

/// One extra worker thread: a current-thread runtime accepting on its
/// duplicates of the listening sockets until `stop`, kept until `done`.
fn worker(
    gateway: Arc<Gateway>,
    listeners: Vec<std::net::TcpListener>,
    slots: Arc<Slots>,
    mut stop: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut accept_tasks = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_tasks.push(tokio::spawn(accept_loop(
                    gateway.clone(),
                    listener,
                    index,
                    slots.clone(),
                    stop.clone(),
                ))),
                Err(e) => tracing::warn!(error = %e, "worker cannot accept on a listener"),
            }
        }
        let _ = stop.wait_for(|s| *s).await;
        for task in accept_tasks {
            task.abort();
        }
        let _ = done.wait_for(|d| *d).await;
    });
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    index: usize,
    slots: Arc<Slots>,
    stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new("data");
    loop {
        // At `limits.max_connections`, no accept: new connections wait in
        // the kernel's backlog until one closes.
        let slot = slots
            .take(|| {
                gateway
                    .current
                    .load()
                    .policy
                    .settings
                    .limits
                    .max_connections
            })
            .await;
        let (stream, peer) = loop {
            match listener.accept().await {
                Ok(accepted) => break accepted,
                Err(e) => backoff.failed(&e).await,
            }
        };
        backoff.reset();
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(gateway, stream, peer, index, stop).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    stop: watch::Receiver<bool>,
) {
    let (tls, limits) = {
        let snap = gateway.current.load();
        let policy = &snap.policy;
        let limits = Limits {
            header_read: policy.settings.timeouts.header_read,
            idle: policy.settings.timeouts.idle,
            send: policy.settings.timeouts.send,
            max_header_bytes: policy.settings.limits.max_header_bytes,
        };
        (policy.tls.get(listener).cloned().flatten(), limits)
    };
    let header_read = limits.header_read;
    match tls {
        Some(config) => {
            // Boxed, here and below: a task's future is as large as its
            // largest state, and every connection's task holds one, also
            // while it is parked; the TLS handshake, rustls's stream and
            // hyper's connection are each allocated only while they live.
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let accept = Box::pin(acceptor.accept(stream));
            let Ok(Ok(stream)) = tokio::time::timeout(header_read, accept).await else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2);
            let conn = Conn::new(peer, true);
            Box::pin(run_http(gateway, stream, conn, h2, limits, stop)).await;
        }
        None => {
            let (h2, stream) =
                match tokio::time::timeout(header_read, preface::detect(stream)).await {
                    Ok(Ok(detected)) => detected,
                    _ => return,
                };
            let conn = Conn::new(peer, false);
            run_http(gateway, stream, conn, h2, limits, stop).await;
        }
    }
}

/// A connection's limits, read once from the snapshot it opened under.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
    send: Duration,
    max_header_bytes: usize,
}

async fn run_http<I>(
    gateway: Arc<Gateway>,
    io: I,
    conn: Conn,
    h2: bool,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = if h2 { Start::Idle } else { Start::Head };
    // The transport of HTTP/1.1 reports blocked writes, and an idle
    // HTTP/1.1 connection parks (below). On HTTP/2 one stream never blocks
    // the transport: `send` applies to each answer's stream instead.
    let watch = Watch {
        send: Some(limits.send),
        streams: h2,
        park_after: (!h2).then_some(PARK_AFTER),
    };
    let activity = Activity::watching(limits.header_read, limits.idle, start, watch);
    let requests = activity.clone();
    let unparsable = Refuser {
        gateway: gateway.clone(),
        conn: conn.clone(),
    };
    let stop = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    let mut stopped = false;
    if h2 {
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            let activity = requests.clone();
            let in_flight = requests.begin();
            async move {
                let resp = gateway.handle(&conn, req, in_flight).await;
                Ok::<_, Infallible>(resp.map(|body| h2_body(&activity, body)))
            }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let mut connection = Box::pin(builder.serve_connection(TokioIo::new(io), service));
        activity::serve_watched(
            connection.as_mut(),
            &activity,
            stop,
            &mut stopped,
            Some(|c| c.graceful_shutdown()),
            None,
        )
        .await;
    } else {
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            let in_flight = requests.begin();
            async move { Ok::<_, Infallible>(gateway.handle(&conn, req, in_flight).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            // `Activity` keeps the header-read and idle limits apart.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true)
            // One flat write buffer instead of vectored writes: measured
            // less CPU per request for small and 1 MiB responses alike
            // (README, Performance).
            .writev(false);
        let mut io = Watched::new(io, activity.clone(), unparsable);
        let mut service = service;
        // No graceful_shutdown on a drain: hyper would drop a request
        // whose head is half read. The gateway answers every request that
        // arrives while draining with 503 and `Connection: close`, and an
        // idle keep-alive connection closes at its header-read timeout.
        //
        // A connection idle for `PARK_AFTER` parks: hyper is told to stop
        // (an idle HTTP/1.1 connection stops at once, without closing the
        // transport), its read and write buffers are freed, and the task
        // waits for the next byte with nothing but the socket; that byte
        // starts a new hyper connection on the same transport.
        loop {
            let mut connection = Box::new(
                builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            );
            let served = activity::serve_watched(
                Pin::new(&mut *connection),
                &activity,
                stop.as_mut(),
                &mut stopped,
                None,
                Some(|c| c.graceful_shutdown()),
            )
            .await;
            if served == Served::Ended {
                return;
            }
            let Some(parts) = connection.into_parts() else {
                return;
            };
            io = parts.io.into_inner();
            service = parts.service;
            if !parts.read_buf.is_empty() {
                // hyper had read ahead: no park, serve it at once.
                io.unread(parts.read_buf);
                activity.resume();
                continue;
            }
            // Even empty, it holds hyper's whole read buffer.
            drop(parts.read_buf);
            if !activity::park(&mut io, &activity, stop.as_mut(), &mut stopped).await {
                return;
            }
        }
    }
}

/// An HTTP/2 answer's body as hyper is to send it: an upstream's that is
/// still to stream is watched for a client that stops taking it
/// ([`streams`]); the gateway's own answers, and answers without a body,
/// go as they are.
fn h2_body(
    activity: &Activity,
    body: gateway::Body<InFlight>,
) -> Streamed<gateway::Body<InFlight>> {
    if body.from_upstream() && !http_body::Body::is_end_stream(&body) {
        activity.stream(body)
    } else {
        Streamed::direct(body)
    }
}

/// How long an HTTP/1.1 connection is idle before it parks. Short enough
/// that idle keep-alive connections cost little memory, long enough that a
/// client sending a request every second or so never pays for a park.
const PARK_AFTER: Duration = Duration::from_secs(2);

/// Answers, for an HTTP/1 connection, the heads hyper cannot parse.
struct Refuser {
    gateway: Arc<Gateway>,
    conn: Conn,
}

impl Unparsable for Refuser {
    fn answer(&self, status: u16) -> Option<bytes::Bytes> {
        self.gateway.unparsable(&self.conn, status)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::Path;

    use super::*;
    use crate::accesslog::AccessLog;
    use crate::config::{self, LogFormat};
    use crate::metrics::Metrics;
    use crate::policy::{Policy, Retained};
    use crate::tokens::id::{id, scopes};
    use crate::tokens::{TokenHash, TokenIndex, TokenRecord};

    fn gateway() -> Arc<Gateway> {
        let yaml = "listen:\n  - addr: 127.0.0.1:0\ntokens:\n  source: file\n  path: tokens.yaml\n\
                    routes:\n  - prefix: /api\n    upstream: http://127.0.0.1:9\n    scopes: [\"*\"]\n";
        let settings = config::load_str(Path::new("test.yaml"), yaml).unwrap();
        let retained = Retained::new(Metrics::new());
        let policy = Policy::build(&settings, &retained).unwrap();
        let log = AccessLog::start(Box::new(std::io::sink()), LogFormat::Json);
        let gateway = Arc::new(Gateway::new(policy, retained, log));
        let token = TokenRecord::new(id("t"), TokenHash::of(b"secret"), scopes(&["s"]));
        gateway
            .current
            .set_tokens(TokenIndex::build(vec![token]).unwrap());
        gateway
    }

    #[tokio::test]
    async fn an_extra_worker_serves_connections_while_the_callers_runtime_is_blocked() {
        let gateway = gateway();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(gateway.clone(), vec![listener], 1, async {
            let _ = stop_rx.await;
        }));
        while !gateway.is_ready() {
            tokio::task::yield_now().await;
        }
        // Blocking I/O on the test's only thread: its runtime cannot accept
        // or answer, so every answer below comes from the extra worker.
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        }
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connections_task_stays_small_whatever_its_protocol() {
        // Every connection's task holds this future, parked or not: the
        // TLS handshake, rustls's stream and hyper's connections are boxed
        // so that they do not set its size. 10 KiB unboxed in a debug
        // build; under 2 KiB boxed.
        let gateway = gateway();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let task = serve_connection(gateway, stream, addr, 0, stopped);
        let size = std::mem::size_of_val(&task);
        assert!(size < 3 * 1024, "{size} bytes");
    }

    #[test]
    fn each_status_hyper_refuses_with_gets_its_contract_answer_and_nothing_else_is_replaced() {
        let gateway = gateway();
        let conn = Conn::new("127.0.0.1:4000".parse().unwrap(), false);
        for (status, code) in [
            (400, "bad_request"),
            (414, "uri_too_long"),
            (431, "headers_too_large"),
        ] {
            let bytes = gateway.unparsable(&conn, status).unwrap();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains("\r\nx-request-id: "), "{head}");
            assert!(head.contains("\r\nconnection: close"), "{head}");
            assert!(
                head.contains(&format!("\r\ncontent-length: {}", body.len())),
                "{head}"
            );
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"], code);
        }
        assert!(gateway.unparsable(&conn, 505).is_none());
    }
}
