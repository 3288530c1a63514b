//! Process signals: SIGHUP reloads, SIGTERM and SIGINT drain and stop.
//!
//! Invariant: a reload that fails leaves the running config in place and
//! is logged, never fatal.

use tokio::signal::unix::{signal, SignalKind};

use super::launch::Launched;

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then drains.
pub async fn run_until_stopped(mut launched: Launched) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Err(e) = launched.control.reload().await {
                    tracing::error!(error = %e, "reload refused; the running configuration stays");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("draining");
    launched.begin_shutdown();
    launched.stopped().await;
    tracing::info!("stopped");
    Ok(())
}
