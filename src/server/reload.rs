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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{self, TokenSourceSettings};
use crate::gateway::Gateway;
use crate::policy::Policy;
use crate::tokens::source::{Announced, Changed, Fingerprint, Loaded, Pending, SourceError};
use crate::tokens::usage::FLUSH_INTERVAL;
use crate::tokens::{Source, TokenId, TokenIndex, TokenRecord};

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
        Ok(s) => Arc::new(s),
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
    let mut state = LoadState::default();
    let mut backoff = FIRST_BACKOFF;
    let mut next_load = Instant::now();
    let mut flush_tick = tokio::time::interval_at(Instant::now() + FLUSH_INTERVAL, FLUSH_INTERVAL);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let due = tokio::select! {
            _ = tokio::time::sleep_until(next_load), if state.reading.is_none() => true,
            _ = kick.notified() => {
                tokio::time::sleep(COALESCE).await;
                false
            }
            index = async { state.arriving.as_mut().expect("a load in flight").await },
                if state.arriving.is_some() =>
            {
                state.arriving = None;
                if let Ok(index) = index {
                    state.install(&gateway, &kick, index);
                }
                false
            }
            read = async { state.reading.as_mut().expect("a read in flight").await },
                if state.reading.is_some() =>
            {
                state.reading = None;
                let ok = match read {
                    Ok(read) => state.finish(&gateway, &kick, read),
                    Err(_) => false,
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
        let first_read = state.arriving.is_some() && gateway.current.load().tokens.is_none();
        if first_read && !announced.anything {
            // Nothing serves yet to apply them to: once the read in flight
            // does, they are read again (it may have been read before them).
            state.deferred.extend(announced.ids);
        } else if !announced.is_empty() {
            match apply_changes(&gateway, &source, &announced).await {
                Some(applied) => state.applied(applied),
                None => state.full_wanted = true,
            }
        }
        if (due || state.full_wanted) && state.reading.is_none() {
            state.start(&gateway, &source);
        }
    }
}

/// What a read in the background brought back.
enum Read {
    /// A full load: what it did (its index arrives on its own, before the
    /// load takes the fingerprint of what it read).
    Load(Result<Loaded, SourceError>),
    /// The source's fingerprint, to be the new reference.
    Fingerprint(Result<Option<Fingerprint>, SourceError>),
}

/// The loader's reads: at most one in flight (a full load, or a
/// fingerprint), in a task of its own, so that changes keep being applied
/// while ten million rows are read or scanned.
#[derive(Default)]
struct LoadState {
    /// The fingerprint of the last full load or of an adopted state.
    fingerprint: Option<Fingerprint>,
    /// Tokens were applied one by one since `fingerprint` was taken, so
    /// it no longer describes the index serving.
    applied_since: bool,
    /// Only a full load can tell what changed.
    full_wanted: bool,
    reading: Option<JoinHandle<Read>>,
    /// The index of the full load in flight, once it is read.
    arriving: Option<oneshot::Receiver<TokenIndex>>,
    /// Changes applied while the read in flight runs: a full load's index
    /// gets them again (it may have been read before them).
    during: HashMap<TokenId, Option<TokenRecord>>,
    /// Tokens announced while the first full load reads, with no index
    /// serving to apply them to: announced again once its index serves.
    deferred: HashSet<String>,
}

impl LoadState {
    /// Starts a full load (comparing fingerprints when the one held still
    /// describes the index serving), or, when every change since the last
    /// one was announced and applied, takes the fingerprint afresh.
    fn start(&mut self, gateway: &Gateway, source: &Arc<Source>) {
        let source = source.clone();
        self.during.clear();
        // Announced before this read began: it reads them.
        self.deferred.clear();
        if self.full_wanted || !self.applied_since {
            self.full_wanted = false;
            // Only compare with the fingerprint of an index that is serving.
            let previous = self
                .fingerprint
                .clone()
                .filter(|_| !self.applied_since && gateway.current.load().tokens.is_some());
            let (read, arriving) = oneshot::channel();
            self.arriving = Some(arriving);
            self.reading = Some(tokio::spawn(async move {
                let loaded = source
                    .load_index(previous.as_ref(), |index| {
                        let _ = read.send(index);
                    })
                    .await;
                Read::Load(loaded)
            }));
        } else {
            self.reading = Some(tokio::spawn(async move {
                Read::Fingerprint(source.fingerprint().await)
            }));
        }
    }

    /// Notes tokens applied one by one.
    fn applied(&mut self, changed: Changed) {
        if changed.is_empty() {
            return;
        }
        self.applied_since = true;
        if self.reading.is_some() {
            self.during.extend(changed);
        }
    }

    /// Installs a full load's index, with the changes applied while it was
    /// read applied again on top, and announces again the tokens that
    /// waited for an index to serve.
    fn install(&mut self, gateway: &Gateway, kick: &Announced, index: TokenIndex) {
        if !self.deferred.is_empty() {
            kick.tokens(std::mem::take(&mut self.deferred));
        }
        let during = std::mem::take(&mut self.during);
        let reapplied = !during.is_empty();
        let index = match reapplied {
            true => index.with_changes(during),
            false => Ok(index),
        };
        match index {
            Ok(index) => {
                // The fingerprint the load takes next describes `index`
                // without what was applied on top.
                self.applied_since = reapplied;
                install(gateway, index);
            }
            // Changes that conflict with what was read: read again.
            Err(_) => self.full_wanted = true,
        }
    }

    /// Acts on a finished read; whether the source answered.
    fn finish(&mut self, gateway: &Gateway, kick: &Announced, read: Read) -> bool {
        let metrics = &gateway.retained.metrics;
        // The index is sent before the load ends; both can be ready at once.
        if let Some(index) = self.arriving.take().and_then(|mut a| a.try_recv().ok()) {
            self.install(gateway, kick, index);
        }
        let during = std::mem::take(&mut self.during);
        let ok = match read {
            Read::Load(Ok(Loaded::Applied(taken))) => {
                metrics.token_reload(true);
                self.fingerprint = taken;
                true
            }
            Read::Load(Ok(Loaded::Unchanged)) => {
                metrics.token_reload(true);
                tracing::debug!("token source unchanged");
                true
            }
            Read::Fingerprint(Ok(Some(taken))) => {
                self.fingerprint = Some(taken);
                self.applied_since = !during.is_empty();
                true
            }
            // A source that takes no fingerprint is read in full.
            Read::Fingerprint(Ok(None)) => {
                self.full_wanted = true;
                true
            }
            Read::Load(Err(error)) | Read::Fingerprint(Err(error)) => {
                metrics.token_reload(false);
                tracing::warn!(%error, "token load failed; keeping the last good index");
                false
            }
        };
        metrics.token_source_up.set(i64::from(ok));
        ok
    }
}

/// Reads the tokens that changed (as `announced`, or the source's change
/// log, names them) and applies them to the index serving: what was
/// applied, or `None` when a full load must do it instead (the source
/// reads only in full, no index serves yet, too many changes since the
/// last full load, or the read failed).
async fn apply_changes(gateway: &Gateway, source: &Source, announced: &Pending) -> Option<Changed> {
    let serving = gateway.current.load().tokens.clone()?;
    if serving.changed_since_load() + announced.ids.len() > MAX_CHANGES {
        return None;
    }
    let changed = match source.read_changes(announced).await {
        // An id that is not ours and still is not (another schema's token,
        // announced on the same channel) changes nothing.
        Ok(Some(mut changed)) => {
            changed.retain(|(id, now)| now.is_some() || serving.concerns(id.as_str()));
            changed
        }
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(%error, "cannot read the changed tokens; loading in full");
            return None;
        }
    };
    if changed.is_empty() {
        return Some(changed);
    }
    if serving.changed_since_load() + changed.len() > MAX_CHANGES {
        return None;
    }
    match serving.with_changes(changed.iter().cloned()) {
        Ok(index) => {
            tracing::debug!(tokens = index.changed_since_load(), "token changes applied");
            gateway.retained.metrics.token_source_up.set(1);
            install(gateway, index);
            Some(changed)
        }
        Err(error) => {
            tracing::debug!(%error, "token changes conflict; loading in full");
            None
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
