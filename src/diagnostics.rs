//! Diagnostics: the gateway's own log on stderr (the access log owns
//! stdout), its format and its level, which a reload may change.
//!
//! Invariant: protocol crates never log below `info` unless the level names
//! them, so raw header blocks and key exchanges stay out of a debug log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, Settings};

/// Sets up diagnostics on stderr (the access log owns stdout), with
/// colours only on a terminal. The filter can be replaced later by
/// [`apply_level`] (a reload).
pub fn init(settings: &Settings) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = reload::Layer::new(env_filter(&settings.log.level));
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry().with(filter);
    let installed = match settings.log.format {
        LogFormat::Json => subscriber.with(output.json()).try_init(),
        LogFormat::Text => subscriber.with(output).try_init(),
    };
    if installed.is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// The filter of the subscriber `init` installed.
static LEVEL: std::sync::OnceLock<reload::Handle<EnvFilter, Registry>> = std::sync::OnceLock::new();

/// Applies `log.level` to the running diagnostics (a reload); a no-op where
/// [`init`] did not install the subscriber (tests, embedders).
pub fn apply_level(level: &str) {
    if let Some(handle) = LEVEL.get() {
        let _ = handle.reload(env_filter(level));
    }
}

fn env_filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(log_filter(level)).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Dependencies whose `debug` and `trace` output is protocol detail (HTTP/2
/// frames, TLS handshakes, socket polls, file-watch events): they see raw
/// header blocks and key exchanges, and `notify` logs an event for every
/// write to a watched directory, its own log file included.
const QUIET_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "tokio_rustls",
    "notify",
    "mio",
];

/// `log.level` as an `EnvFilter` directive string: when its default level
/// is `debug` or `trace`, each of [`QUIET_TARGETS`] is capped at `info`
/// unless the level names that target itself (`trace,h2=trace` lifts the
/// cap for `h2`).
pub fn log_filter(level: &str) -> String {
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    let verbose = directives.iter().any(|d| {
        ["debug", "trace", "4", "5"]
            .iter()
            .any(|l| d.eq_ignore_ascii_case(l))
    });
    let mut filter = level.trim().to_string();
    if !verbose {
        return filter;
    }
    for target in QUIET_TARGETS {
        let named = directives.iter().any(|d| {
            d.strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['=', ':', '[']))
        });
        if !named {
            filter.push_str(&format!(",{target}=info"));
        }
    }
    filter
}

/// A log line that may be written at most once a second, however often
/// its event happens (a dead upstream under load must not write a line per
/// request); the lines held back are counted into the next one.
#[derive(Debug, Default)]
pub struct OncePerSecond {
    /// The unix second of the last line written.
    last: AtomicU64,
    held_back: AtomicU64,
}

impl OncePerSecond {
    pub const fn new() -> Self {
        OncePerSecond {
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be
    /// written now, else `None` (and this one is counted as held back).
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if last != now
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{log_filter, OncePerSecond};

    #[test]
    fn a_burst_writes_one_line_and_counts_the_rest_into_the_next() {
        let gate = OncePerSecond::new();
        assert_eq!(gate.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(gate.allow(), None);
        }
        // The next second's line carries the count.
        gate.last.store(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(gate.allow(), Some(5));
    }

    #[test]
    fn a_verbose_default_level_caps_protocol_crates_at_info() {
        assert_eq!(
            log_filter("trace"),
            "trace,h2=info,hyper=info,hyper_util=info,rustls=info,tokio_rustls=info,notify=info,mio=info"
        );
        assert!(log_filter("debug,tollgate=trace").starts_with("debug,tollgate=trace,h2=info,"));
    }

    #[test]
    fn a_quiet_default_level_is_left_alone_so_no_crate_gets_louder() {
        assert_eq!(log_filter("warn"), "warn");
        assert_eq!(log_filter("info"), "info");
        assert_eq!(log_filter("tollgate=trace"), "tollgate=trace");
    }

    #[test]
    fn a_target_the_level_names_keeps_the_level_it_was_given() {
        let f = log_filter("trace, h2=trace,rustls::server=debug");
        assert!(f.starts_with("trace, h2=trace,rustls::server=debug,hyper=info,"));
        assert!(
            !f.contains(",h2=info") && !f.contains(",rustls=info"),
            "{f}"
        );
        // A longer name that merely starts with a capped one is not it.
        assert!(log_filter("trace,h2c_thing=trace").contains(",h2=info"));
    }
}
