//! Keeping the snapshot fresh: the token loader and SIGHUP config reloads.
//!
//! The token loader re-reads its source when the source announces a change
//! and every `refresh_interval`; before the first success it retries with
//! backoff. A source that names the tokens that changed (PostgreSQL's
//! table) has just those read and applied beside the loaded index, so a
//! change costs the same at ten tokens and at ten million; the periodic
//! check then takes the source's fingerprint afresh, and a full load
//! (which empties the changes) happens when the listener may have missed
//! one, or when the changes since the last full load pile up. A failed
//! load or config keeps what is serving and says why.
//! The loader also owns writing `last_used_at` back (every
//! [`FLUSH_INTERVAL`], and on demand), since it owns the source.
//! Invariant: only complete, validated results are swapped in, and a
//! replaced index is freed by the loader, never by a request.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{self, TokenSourceSettings};
use crate::gateway::Gateway;
use crate::policy::Policy;
use crate::tokens::source::{Announced, Fingerprint, Loaded, Pending};
use crate::tokens::usage::FLUSH_INTERVAL;
use crate::tokens::{Source, TokenIndex};

/// First retry delay before any load has succeeded.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Change notifications arriving within this window are loaded once.
const COALESCE: Duration = Duration::from_millis(25);
/// Tokens changed since the last full load beyond which the next change
/// is applied by a full load instead (which starts the count again).
const MAX_CHANGES: usize = 10_000;
/// How often a replaced index still held by a request is checked on.
const RELEASE_POLL: Duration = Duration::from_millis(50);

/// A request to write usage now, answered with how many tokens were
/// written or why not.
type FlushRequest = oneshot::Sender<Result<usize, String>>;

/// The running token loader and the config it was started from.
struct Loader {
    settings: TokenSourceSettings,
    kick: Arc<Announced>,
    flush: mpsc::Sender<FlushRequest>,
    task: JoinHandle<()>,
}

/// Reload control for one gateway.
pub struct Control {
    gateway: Arc<Gateway>,
    config_path: PathBuf,
    loader: Mutex<Option<Loader>>,
}

impl Control {
    pub fn new(gateway: Arc<Gateway>, config_path: PathBuf) -> Arc<Control> {
        Arc::new(Control {
            gateway,
            config_path,
            loader: Mutex::new(None),
        })
    }

    /// Starts (or restarts, if the source settings changed) the token
    /// loader for the current config; otherwise asks it to load now.
    pub fn start_tokens(&self) {
        let settings = self.gateway.current.load().policy.settings.tokens.clone();
        let mut loader = self.loader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loader.as_ref() {
            if l.settings == settings {
                l.kick.anything();
                return;
            }
            l.task.abort();
        }
        let kick = Arc::new(Announced::default());
        let (flush, flushes) = mpsc::channel(4);
        let task = tokio::spawn(load_loop(
            self.gateway.clone(),
            settings.clone(),
            kick.clone(),
            flushes,
        ));
        *loader = Some(Loader {
            settings,
            kick,
            flush,
            task,
        });
    }

    /// Writes every token use not yet written to the source now (as the
    /// loader does every [`FLUSH_INTERVAL`]); returns how many tokens were
    /// written. Used on shutdown and by tests.
    pub async fn flush_usage(&self) -> Result<usize, String> {
        let flush = self
            .loader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| l.flush.clone())
            .ok_or("no token loader is running")?;
        let (reply, answer) = oneshot::channel();
        flush
            .send(reply)
            .await
            .map_err(|_| "the token loader has stopped")?;
        answer.await.map_err(|_| "the token loader has stopped")?
    }

    /// SIGHUP: reload the config file and the tokens. A config that fails
    /// to load or compile keeps the running one; the error is returned.
    /// A config naming another token source is refused too unless that
    /// source loads (as `tollgate check` judges it): the new config starts
    /// serving with the new source's index, never with the old one's.
    pub async fn reload(&self) -> Result<(), String> {
        let settings = config::load(&self.config_path).map_err(|e| e.to_string())?;
        let gw = &self.gateway;
        let policy = Policy::build(&settings, &gw.retained).map_err(|e| e.to_string())?;
        let running = gw.current.load().policy.settings.tokens.clone();
        if settings.tokens != running {
            let index = load_new_source(&settings.tokens).await.map_err(|e| {
                gw.retained.metrics.token_reload(false);
                format!("{}: tokens: {e}", self.config_path.display())
            })?;
            gw.retained.metrics.token_reload(true);
            gw.retained.metrics.token_source_up.set(1);
            install(gw, index);
        }
        gw.retained.adopt(&policy);
        gw.access_log.set_format(settings.log.format);
        crate::diagnostics::apply_level(&settings.log.level);
        gw.current.set_policy(policy);
        self.start_tokens();
        tracing::info!(config = %self.config_path.display(), "configuration reloaded");
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(l) = self.loader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            l.task.abort();
        }
    }
}

/// One complete load of a source the running config does not use yet.
async fn load_new_source(settings: &TokenSourceSettings) -> Result<TokenIndex, String> {
    let source = Source::open(settings).map_err(|e| e.to_string())?;
    source.ensure_schema().await.map_err(|e| e.to_string())?;
    let mut loaded = None;
    source
        .load_index(None, |index| loaded = Some(index))
        .await
        .map_err(|e| e.to_string())?;
    loaded.ok_or_else(|| "the source returned no index".to_string())
}

async fn load_loop(
    gateway: Arc<Gateway>,
    settings: TokenSourceSettings,
    kick: Arc<Announced>,
    mut flushes: mpsc::Receiver<FlushRequest>,
) {
    let source = match Source::open(&settings) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "token source cannot be opened");
            gateway.retained.metrics.token_source_up.set(0);
            // Still answer flush requests, so callers do not wait forever.
            while let Some(reply) = flushes.recv().await {
                let _ = reply.send(Err(e.to_string()));
            }
            return;
        }
    };
    source.watch(kick.clone());
    // The contract: serve creates the table (and trigger) when missing. A
    // failure is logged; the load reports the source as down and retries.
    let mut schema_ready = false;
    let mut fingerprint = None;
    // Tokens were applied one by one since `fingerprint` was taken, so it
    // no longer describes the index serving.
    let mut applied_since = false;
    let mut backoff = FIRST_BACKOFF;
    let mut next_load = Instant::now();
    let mut flush_tick = tokio::time::interval_at(Instant::now() + FLUSH_INTERVAL, FLUSH_INTERVAL);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let due = tokio::select! {
            _ = tokio::time::sleep_until(next_load) => true,
            _ = kick.notified() => {
                tokio::time::sleep(COALESCE).await;
                false
            }
            _ = flush_tick.tick() => {
                if let Err(error) = flush(&gateway, &source).await {
                    tracing::warn!(%error, "cannot record token use; will retry");
                }
                continue;
            }
            Some(reply) = flushes.recv() => {
                let _ = reply.send(flush(&gateway, &source).await);
                continue;
            }
        };
        if !schema_ready {
            match source.ensure_schema().await {
                Ok(()) => schema_ready = true,
                Err(error) => tracing::warn!(%error, "cannot create the token table"),
            }
        }
        let announced = kick.take();
        let mut in_full = false;
        if !announced.is_empty() {
            if apply_changes(&gateway, &source, &announced).await {
                applied_since = true;
            } else {
                in_full = true;
            }
        }
        if !in_full && !due {
            continue;
        }
        // Every change since the last fingerprint was announced and
        // applied: the source's fingerprint now is the new reference (a
        // source that takes none is read in full).
        let taken = match in_full || !applied_since {
            true => Ok(None),
            false => source.fingerprint().await,
        };
        let ok = match taken {
            Ok(Some(taken)) => {
                gateway.retained.metrics.token_source_up.set(1);
                fingerprint = Some(taken);
                applied_since = false;
                true
            }
            Ok(None) => {
                let ok = load_once(&gateway, &source, &mut fingerprint, applied_since).await;
                applied_since &= !ok;
                ok
            }
            Err(error) => {
                gateway.retained.metrics.token_source_up.set(0);
                tracing::warn!(%error, "token source unavailable; keeping the index serving");
                false
            }
        };
        let wait = if ok || gateway.current.load().tokens.is_some() {
            backoff = FIRST_BACKOFF;
            settings.refresh_interval
        } else {
            let wait = backoff;
            backoff = (backoff * 2).min(settings.refresh_interval.max(FIRST_BACKOFF));
            wait
        };
        next_load = Instant::now() + wait;
    }
}

/// Reads the tokens that changed (as `announced`, or the source's change
/// log, names them) and applies them to the index serving; `false` when a
/// full load must do it instead (the source reads only in full, no index
/// serves yet, too many changes since the last full load, or the read
/// failed).
async fn apply_changes(gateway: &Gateway, source: &Source, announced: &Pending) -> bool {
    let Some(serving) = gateway.current.load().tokens.clone() else {
        return false;
    };
    if serving.changed_since_load() + announced.ids.len() > MAX_CHANGES {
        return false;
    }
    let changed = match source.read_changes(announced).await {
        Ok(Some(changed)) if changed.is_empty() => return true,
        Ok(Some(changed)) if serving.changed_since_load() + changed.len() > MAX_CHANGES => {
            return false
        }
        Ok(Some(changed)) => changed,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(%error, "cannot read the changed tokens; loading in full");
            return false;
        }
    };
    match serving.with_changes(changed) {
        Ok(index) => {
            tracing::debug!(tokens = index.changed_since_load(), "token changes applied");
            gateway.retained.metrics.token_source_up.set(1);
            install(gateway, index);
            true
        }
        Err(error) => {
            tracing::debug!(%error, "token changes conflict; loading in full");
            false
        }
    }
}

/// Writes pending token uses to the source.
async fn flush(gateway: &Gateway, source: &Source) -> Result<usize, String> {
    let written = gateway
        .usage
        .flush(source)
        .await
        .map_err(|e| e.to_string())?;
    if written > 0 {
        tracing::debug!(tokens = written, "recorded token use");
    }
    Ok(written)
}

/// One load; swaps the index in on success. `fingerprint` is that of the
/// index serving (if the source takes fingerprints), updated here; with
/// `stale` it is not compared (tokens were applied since it was taken).
async fn load_once(
    gateway: &Gateway,
    source: &Source,
    fingerprint: &mut Option<Fingerprint>,
    stale: bool,
) -> bool {
    let metrics = &gateway.retained.metrics;
    // Only compare with the fingerprint of an index that is serving.
    let previous = fingerprint
        .take()
        .filter(|_| !stale && gateway.current.load().tokens.is_some());
    match source
        .load_index(previous.as_ref(), |index| install(gateway, index))
        .await
    {
        Ok(loaded) => {
            metrics.token_source_up.set(1);
            metrics.token_reload(true);
            *fingerprint = match loaded {
                Loaded::Unchanged => {
                    tracing::debug!("token source unchanged");
                    previous
                }
                Loaded::Applied(taken) => taken,
            };
            true
        }
        Err(error) => {
            metrics.token_source_up.set(0);
            metrics.token_reload(false);
            tracing::warn!(%error, "token load failed; keeping the last good index");
            *fingerprint = previous;
            false
        }
    }
}

/// Makes `index` the one requests are judged by, and drops limiter and
/// usage state of tokens that are gone.
fn install(gateway: &Gateway, index: TokenIndex) {
    let metrics = &gateway.retained.metrics;
    metrics.tokens_loaded.set(index.len() as i64);
    metrics.token_rows_invalid.set(index.rows_invalid() as i64);
    tracing::debug!(tokens = index.len(), "token index loaded");
    let limiters = &gateway.retained.limiters;
    if !limiters.is_empty() {
        limiters.retain(|id| index.contains_id(id));
    }
    if !gateway.usage.is_empty() {
        gateway.usage.retain(|id| index.contains_id(id));
    }
    let replaced = gateway.current.load().tokens.clone();
    gateway.current.set_tokens(index);
    if let Some(old) = replaced {
        tokio::spawn(release(old));
    }
}

/// Frees a replaced index once no request holds it any more, on a blocking
/// thread: dropping a million entries takes tens of milliseconds, which
/// must not land on whichever request happened to hold the last reference.
async fn release(mut old: Arc<TokenIndex>) {
    loop {
        match Arc::try_unwrap(old) {
            Ok(index) => {
                let _ = tokio::task::spawn_blocking(move || drop(index)).await;
                return;
            }
            Err(shared) => {
                old = shared;
                tokio::time::sleep(RELEASE_POLL).await;
            }
        }
    }
}
