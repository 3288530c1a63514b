//! The command line (§1): `serve`, `check`, `explain`, `token …`, `demo`,
//! and `completions` / `man`, generated from the same definition.
//!
//! Parses arguments and calls the library; exit codes are 0 success,
//! 1 runtime or validation error, 2 usage error. Errors go to stderr as one
//! line each. Invariant: nothing here prints a secret except `token create`,
//! once, on stdout.

pub mod token;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Settings};
use crate::tokens::{Source, TokenIndex};

/// `--version`: the package version and the commit it was built from
/// (`unknown` where the build had no git; see `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TOLLGATE_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "tollgate", version = VERSION, about = "An authenticating reverse proxy")]
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
    /// Print a shell completion script on stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `tollgate man | man -l -`.
    Man,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One style for every error the command prints: the problem
            // itself (after the file it is about, where there is one),
            // without clap's `error:` label; clap's usage lines follow.
            let text = e.render().to_string();
            eprint!("{}", text.strip_prefix("error: ").unwrap_or(&text));
            return 2;
        }
        Err(e) => {
            let _ = e.print();
            return 0;
        }
    };
    // One current-thread runtime per core (`TOLLGATE_WORKERS` overrides the
    // count): this one, which also runs the token loader, the admin listener
    // and signals, and `n - 1` more that the server starts, so a request
    // stays on the thread that accepted its connection. Measured against
    // tokio's work-stealing runtime on one core (docs/performance.md): 52 vs
    // 79 µs of CPU per proxied request.
    let workers = std::env::var("TOLLGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = rt.block_on(run(cli, workers - 1));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

/// Runs a command; `extra_workers` is how many more runtimes serve data
/// connections beside this thread's.
async fn run(cli: Cli, extra_workers: usize) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(&cli.config, extra_workers).await,
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
                &settings,
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
        Command::Demo => crate::demo::run(&cli.config, extra_workers).await,
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "tollgate", &mut out);
            Ok(())
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            Ok(())
        }
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

async fn serve(path: &Path, extra_workers: usize) -> anyhow::Result<()> {
    let settings = load(path)?;
    crate::diagnostics::init(&settings);
    let descriptors = crate::server::accept::raise_descriptor_limit();
    tracing::debug!(limit = ?descriptors, "open-file limit");
    let options = crate::server::launch::Options {
        sink: Box::new(std::io::stdout()),
        extra_workers,
    };
    let launched = crate::server::launch::launch_with(settings, options).await?;
    for addr in &launched.data_addrs {
        tracing::info!(%addr, "listening");
    }
    crate::server::signal::run_until_stopped(launched).await
}

async fn check(path: &Path) -> anyhow::Result<()> {
    let settings = load(path)?;
    let source = Source::open(&settings.tokens)?;
    // The contract: check never writes; it reports what serve would create.
    if let Err(e) = source.verify_schema().await {
        anyhow::bail!("{}: tokens: {e}", path.display());
    }
    let source_warnings = source.warnings().await;
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
    let published = crate::tokens::published::warnings(&records);
    let index = TokenIndex::build(records)
        .map_err(|e| anyhow::anyhow!("{}: tokens: {e}", path.display()))?;
    // The policy (TLS files, CA bundles) is built too, as serve would.
    let retained = crate::policy::Retained::new(crate::metrics::Metrics::new());
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
    crate::policy::Policy::build(&settings, &retained)?;
    for w in &settings.warnings {
        eprintln!("warning: {w}");
    }
    for w in published.iter().chain(&source_warnings) {
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
