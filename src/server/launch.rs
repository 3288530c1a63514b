//! Starting a gateway from a config file: compile, bind, start the token
//! loader, the admin listener and the data listeners.
//!
//! Used by `tollgate serve`, `tollgate demo` and the integration tests, so
//! all three run exactly the same server. Invariant: the data listeners are
//! bound before the token index is first loaded, and requests that arrive
//! before it answer 503 `not_ready`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::reload::Control;
use crate::accesslog::AccessLog;
use crate::config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::policy::{Policy, Retained};

/// How long a stopping gateway spends writing the last token uses.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// A running gateway.
pub struct Launched {
    pub gateway: Arc<Gateway>,
    pub control: Arc<Control>,
    /// Bound data addresses, in `listen` order (port 0 resolved).
    pub data_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
}

impl Launched {
    /// Drains (as SIGTERM does) and waits for the server to stop.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.stopped().await;
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the server has stopped (after a drain), then writes the
    /// token uses not yet recorded (for at most [`FINAL_FLUSH`]).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.server).await;
        match tokio::time::timeout(FINAL_FLUSH, self.control.flush_usage()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "token use since the last flush not recorded"),
            Err(_) => tracing::warn!("token use since the last flush not recorded: timed out"),
        }
    }
}

/// How a gateway is started.
pub struct Options {
    /// Where access-log lines go.
    pub sink: Box<dyn Write + Send>,
    /// More threads, each with a current-thread runtime, that accept and
    /// serve data connections beside the caller's runtime (the command
    /// line: one per further core; tests: 0).
    pub extra_workers: usize,
}

/// Loads `config_path` and starts serving. Access-log lines go to `sink`.
pub async fn launch(config_path: &Path, sink: Box<dyn Write + Send>) -> anyhow::Result<Launched> {
    let settings = config::load(config_path)?;
    launch_with(
        settings,
        Options {
            sink,
            extra_workers: 0,
        },
    )
    .await
}

/// Starts serving the loaded `settings`.
pub async fn launch_with(settings: config::Settings, options: Options) -> anyhow::Result<Launched> {
    let config_path = settings.file.clone();
    let retained = Retained::new(Metrics::new());
    let policy = Policy::build(&settings, &retained)?;
    retained.adopt(&policy);
    let access_log = AccessLog::start(options.sink, settings.log.format);
    let listen: Vec<_> = settings.listeners.iter().map(|l| l.addr).collect();
    let admin = settings.admin;
    if let Some(redis) = &policy.shared_limits {
        // Connect now, so the first requests find the connection up (or
        // Redis known to be down, and logged) rather than wait on it.
        redis.connect();
    }
    let gateway = Arc::new(Gateway::new(policy, retained, access_log));

    let mut listeners = Vec::with_capacity(listen.len());
    let mut data_addrs = Vec::with_capacity(listen.len());
    for addr in listen {
        let l = super::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        data_addrs.push(l.local_addr()?);
        listeners.push(l);
    }
    let (admin_addr, admin) = match admin {
        Some(addr) => {
            let l =
                super::bind(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?;
            let bound = l.local_addr()?;
            tracing::info!(admin_addr = %bound, "admin listening");
            (
                Some(bound),
                Some(tokio::spawn(crate::admin::serve(gateway.clone(), l))),
            )
        }
        None => (None, None),
    };

    tokio::spawn(sweep_failed_auth(gateway.clone()));
    let control = Control::new(gateway.clone(), config_path);
    control.start_tokens();
    let (stop_tx, stop_rx) = oneshot::channel();
    let server = tokio::spawn(super::serve(
        gateway.clone(),
        listeners,
        options.extra_workers,
        async {
            let _ = stop_rx.await;
        },
    ));
    Ok(Launched {
        gateway,
        control,
        data_addrs,
        admin_addr,
        stop: Some(stop_tx),
        server,
        admin,
    })
}

/// Drops failed-auth state of addresses whose buckets are full again, so
/// its memory follows the attack rather than its history.
async fn sweep_failed_auth(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let guard = gateway.current.load().policy.failed_auth.clone();
        guard.retain_recent();
    }
}
