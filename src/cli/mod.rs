//! The command line (§1): `serve`, `check`, `explain`, `token …`, `demo`.
//!
//! Parses arguments and calls the library; exit codes are 0 success,
//! 1 runtime or validation error, 2 usage error. Errors go to stderr as one
//! line each. Invariant: nothing here prints a secret except `token create`,
//! once, on stdout.

pub mod token;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{self, Settings};
use crate::tokens::{Source, TokenIndex};

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "An authenticating reverse proxy")]
struct Cli {
    /// Config file.
    #[arg(short, long, global = true, env = "TOLLGATE_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Validate the config and the token source, print a summary.
    Check,
    /// Print the decision the config would take for a token, method and path.
    Explain {
        /// The token to explain, by id.
        #[arg(
            long,
            required_unless_present = "anonymous",
            conflicts_with = "anonymous"
        )]
        token_id: Option<String>,
        /// Explain a request without a token.
        #[arg(long)]
        anonymous: bool,
        /// Client address to check allowed_ips against.
        #[arg(long)]
        client_ip: Option<IpAddr>,
        /// Request method, e.g. GET.
        method: String,
        /// Request path (and query), e.g. /api/v1/info.
        path: String,
    },
    /// Manage tokens in the configured source.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run the gateway with a built-in echo upstream and print curl commands.
    Demo,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // One current-thread runtime per core (`TOLLGATE_WORKERS` overrides the
    // count): this one, which also runs the token loader, the admin listener
    // and signals, and `n - 1` more that the server starts, so a request
    // stays on the thread that accepted its connection. Measured against
    // tokio's work-stealing runtime on one core (README, Performance): 52 vs
    // 79 µs of CPU per proxied request.
    let workers = std::env::var("TOLLGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    crate::server::set_extra_workers(workers - 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = rt.block_on(run(cli));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(&cli.config).await,
        Command::Check => check(&cli.config).await,
        Command::Explain {
            token_id,
            anonymous: _,
            client_ip,
            method,
            path,
        } => {
            let settings = load(&cli.config)?;
            let index = load_tokens(&settings).await?;
            let text = crate::explain::explain(
                settings,
                &index,
                token_id.as_deref(),
                client_ip,
                &method,
                &path,
            )?;
            print!("{text}");
            Ok(())
        }
        Command::Token(token::TokenCommand::Hash) => token::hash_stdin(),
        Command::Token(cmd) => token::run(cmd, &load(&cli.config)?).await,
        Command::Demo => crate::demo::run(&cli.config).await,
    }
}

fn load(path: &Path) -> anyhow::Result<Settings> {
    config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn load_tokens(settings: &Settings) -> anyhow::Result<TokenIndex> {
    let source = Source::open(&settings.tokens)?;
    let records = source.load().await.context("token source")?;
    Ok(TokenIndex::build(records)?)
}

/// Sets up diagnostics on stderr (the access log owns stdout), with
/// colours only on a terminal. The filter can be replaced later by
/// [`apply_log_level`] (a reload).
pub fn init_tracing(settings: &Settings) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = reload::Layer::new(env_filter(&settings.log.level));
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry().with(filter);
    let installed = match settings.log.format {
        config::LogFormat::Json => subscriber.with(output.json()).try_init(),
        config::LogFormat::Text => subscriber.with(output).try_init(),
    };
    if installed.is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// The filter of the subscriber `init_tracing` installed.
static LEVEL: std::sync::OnceLock<reload::Handle<EnvFilter, Registry>> = std::sync::OnceLock::new();

/// Applies `log.level` to the running diagnostics (a reload); a no-op where
/// [`init_tracing`] did not install the subscriber (tests, embedders).
pub fn apply_log_level(level: &str) {
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

async fn serve(path: &Path) -> anyhow::Result<()> {
    let settings = load(path)?;
    init_tracing(&settings);
    let launched = crate::server::launch::launch(path, Box::new(std::io::stdout())).await?;
    for addr in &launched.data_addrs {
        tracing::info!(%addr, "listening");
    }
    crate::server::signal::run_until_stopped(launched).await
}

async fn check(path: &Path) -> anyhow::Result<()> {
    let settings = load(path)?;
    let source = Source::open(&settings.tokens)?;
    if let Err(e) = source.ensure_schema().await {
        anyhow::bail!("{}: tokens: {e}", path.display());
    }
    let rows = source
        .read()
        .await
        .map_err(|e| anyhow::anyhow!("{}: tokens: {e}", path.display()))?;
    let records = rows.records;
    let plaintext: Vec<String> = records
        .iter()
        .filter(|r| r.from_plaintext)
        .map(|r| r.id.to_string())
        .collect();
    let index = TokenIndex::build(records)
        .map_err(|e| anyhow::anyhow!("{}: tokens: {e}", path.display()))?;
    // Runtime values (TLS files, CA bundles) are built too, as serve would.
    let lasting = crate::snapshot::Lasting::new(crate::metrics::Metrics::new());
    let listeners: Vec<String> = settings
        .listeners
        .iter()
        .map(|l| format!("{}{}", l.addr, if l.tls.is_some() { " (tls)" } else { "" }))
        .collect();
    let routes: Vec<String> = settings
        .routes
        .iter()
        .map(|r| format!("{} -> {}", r.prefix, r.upstream))
        .collect();
    let warnings = settings.warnings.clone();
    crate::snapshot::Runtime::compile(settings, &lasting)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for id in &plaintext {
        eprintln!("warning: tokens: {id:?} is stored as plaintext `token:`; store its sha256 instead (development only)");
    }
    println!("{}: ok", path.display());
    println!("listeners: {}", listeners.join(", "));
    println!("routes: {}", routes.len());
    for r in routes {
        println!("  {r}");
    }
    println!("tokens: {}", index.len());
    // The contract: check lists every invalid row and exits 1, although a
    // gateway would serve the other rows.
    for row in &rows.invalid {
        eprintln!("{}: tokens: {row}", path.display());
    }
    if !rows.invalid.is_empty() {
        anyhow::bail!(
            "{}: tokens: {} invalid row(s), skipped by a running gateway; fix or delete them",
            path.display(),
            rows.invalid.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_filter;

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
