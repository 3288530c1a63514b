//! `tollgate token …` (§1): create, import, list, revoke and hash tokens in
//! the configured source.
//!
//! Invariant: a secret reaches the terminal only as the one line `create`
//! prints on stdout; no message or error carries a secret or a stored hash
//! (`hash` prints one because that is what it is asked for).

use std::io::{self, IsTerminal, Read, Write};
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{parse_duration, Rate, Settings};
use crate::tokens::source::{sql, Change};
use crate::tokens::{secret, Scope, Source, TokenHash, TokenId, TokenRecord};

/// The `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once on stdout and only its SHA-256 is stored
    Create {
        #[command(flatten)]
        options: TokenOptions,
    },
    /// Like create, but the secret (issued by another system) is read from stdin
    Import {
        #[command(flatten)]
        options: TokenOptions,
    },
    /// List tokens: id, scopes, read-only, expiry, state, last use (never a secret or hash)
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Disable a token; running gateways stop accepting it
    Revoke {
        /// The token's id
        #[arg(value_parser = parse_id)]
        id: TokenId,
    },
    /// Enable a disabled token again
    Enable {
        /// The token's id
        #[arg(value_parser = parse_id)]
        id: TokenId,
    },
    /// Delete a token for good (revoke keeps it, disabled, for the record)
    Delete {
        /// The token's id
        #[arg(value_parser = parse_id)]
        id: TokenId,
    },
    /// Give a token a new secret, printed once on stdout; scopes and limits stay
    Rotate {
        /// The token's id
        #[arg(value_parser = parse_id)]
        id: TokenId,
        /// Keep the old secret valid this long (e.g. 1h, 7d), as token ID.previous
        #[arg(long, value_name = "DURATION", value_parser = parse_overlap)]
        overlap: Option<Duration>,
    },
    /// Read a secret on stdin and print its lowercase hex SHA-256
    Hash,
}

/// What `create` and `import` store besides the secret.
#[derive(Debug, Clone, Args)]
pub struct TokenOptions {
    /// Unique, non-secret id (appears in logs, metrics and identity headers)
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub id: TokenId,
    /// A scope the token carries (repeatable)
    #[arg(long = "scope", value_name = "S", value_parser = parse_scope)]
    pub scopes: Vec<Scope>,
    /// Allow only GET, HEAD and OPTIONS
    #[arg(long)]
    pub read_only: bool,
    /// Expiry: a duration from now (30d, 12h) or an RFC 3339 time
    #[arg(long, value_name = "30d|RFC3339", value_parser = parse_expiry)]
    pub expires: Option<Expiry>,
    /// An address or CIDR the token may be used from (repeatable; none: any)
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = sql::parse_ip)]
    pub allow_ips: Vec<IpNet>,
    /// Rate-limit override N/DURATION, e.g. 10/1s (burst N)
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Free text shown to operators
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// `--expires`: relative to the moment the command runs, or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    In(Duration),
    At(OffsetDateTime),
}

/// Runs a `token` command against the configured source. Database
/// sources get their table first when it is missing.
pub async fn run(cmd: TokenCommand, settings: &Settings) -> anyhow::Result<()> {
    if let TokenCommand::Hash = cmd {
        return hash_stdin();
    }
    let source = Source::open(&settings.tokens)?;
    let mut io = Io::std();
    execute(cmd, &source, &mut io).await
}

/// `tollgate token hash`, which needs no config: reads a secret on stdin
/// (one trailing newline stripped) and prints its lowercase hex SHA-256.
pub fn hash_stdin() -> anyhow::Result<()> {
    let mut io = Io::std();
    let secret = io.read_secret()?;
    writeln!(io.out, "{}", TokenHash::of(&secret).to_hex())?;
    Ok(())
}

/// Standard streams, or buffers in tests.
struct Io<'a> {
    input: Box<dyn Read + Send + 'a>,
    out: Box<dyn Write + Send + 'a>,
    err: Box<dyn Write + Send + 'a>,
    /// Whether to tell a person at a terminal how to end their input.
    prompt: bool,
}

impl Io<'static> {
    fn std() -> Self {
        Io {
            input: Box::new(io::stdin()),
            out: Box::new(io::stdout()),
            err: Box::new(io::stderr()),
            prompt: io::stdin().is_terminal(),
        }
    }
}

impl Io<'_> {
    /// All of stdin less one trailing `\n` or `\r\n`; empty is refused.
    fn read_secret(&mut self) -> anyhow::Result<Vec<u8>> {
        if self.prompt {
            writeln!(
                self.err,
                "reading the secret from stdin (end with Enter, then Ctrl-D)"
            )?;
        }
        let mut secret = Vec::new();
        self.input
            .read_to_end(&mut secret)
            .context("cannot read the secret from stdin")?;
        if secret.ends_with(b"\r\n") {
            secret.truncate(secret.len() - 2);
        } else if secret.ends_with(b"\n") {
            secret.truncate(secret.len() - 1);
        }
        if secret.is_empty() {
            bail!("no secret on stdin");
        }
        Ok(secret)
    }
}

async fn execute(cmd: TokenCommand, source: &Source, io: &mut Io<'_>) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Hash => {
            let secret = io.read_secret()?;
            writeln!(io.out, "{}", TokenHash::of(&secret).to_hex())?;
        }
        TokenCommand::Create { options } => {
            let secret = secret::generate();
            let record = options.record(TokenHash::of(secret.as_bytes()), sql::now())?;
            source.ensure_schema().await?;
            source.create(&record).await?;
            writeln!(io.out, "{secret}")?;
            io.out.flush()?;
            writeln!(
                io.err,
                "created token {:?}; the secret above is shown only this once",
                record.id
            )?;
            warn_unscoped(io, &record)?;
        }
        TokenCommand::Import { options } => {
            let now = sql::now();
            // Refuse bad options before anyone types a secret.
            options.record(TokenHash::of(b""), now)?;
            let secret = io.read_secret()?;
            if secret::is_mistyped(&secret) {
                bail!("the secret has the tg_ format but a wrong checksum; check it for a typo");
            }
            let record = options.record(TokenHash::of(&secret), now)?;
            let length = secret.len();
            drop(secret);
            source.ensure_schema().await?;
            source.create(&record).await?;
            writeln!(io.err, "imported token {:?}", record.id)?;
            warn_unscoped(io, &record)?;
            // The contract takes any non-empty secret; a short one is
            // stored, and said to be weak.
            if length < MIN_STRONG_SECRET {
                writeln!(
                    io.err,
                    "warning: the secret is only {length} bytes long and may be guessed; \
                     use at least {MIN_STRONG_SECRET} random characters, or `tollgate token create`"
                )?;
            }
        }
        TokenCommand::List { json } => {
            source.ensure_schema().await?;
            let mut tokens = source.list().await?;
            tokens.sort_by(|a, b| a.id.cmp(&b.id));
            let now = OffsetDateTime::now_utc();
            if json {
                serde_json::to_writer_pretty(&mut *io.out, &list_json(&tokens, now))?;
                writeln!(io.out)?;
            } else {
                write!(io.out, "{}", list_table(&tokens, now))?;
            }
        }
        TokenCommand::Revoke { id } => {
            source.ensure_schema().await?;
            source.revoke(&id).await?;
            writeln!(io.err, "revoked token {id:?}")?;
        }
        TokenCommand::Enable { id } => {
            source.ensure_schema().await?;
            source.change(&id, &Change::Disabled(false)).await?;
            writeln!(io.err, "enabled token {id:?}")?;
        }
        TokenCommand::Delete { id } => {
            source.ensure_schema().await?;
            source.change(&id, &Change::Delete).await?;
            writeln!(io.err, "deleted token {id:?}")?;
        }
        TokenCommand::Rotate { id, overlap } => {
            let secret = secret::generate();
            let previous_until = overlap.filter(|d| !d.is_zero()).map(|d| sql::now() + d);
            source.ensure_schema().await?;
            let change = Change::Rotate {
                hash: TokenHash::of(secret.as_bytes()),
                previous_until,
            };
            source.change(&id, &change).await?;
            writeln!(io.out, "{secret}")?;
            io.out.flush()?;
            write!(
                io.err,
                "rotated token {id:?}; the new secret above is shown only this once; "
            )?;
            match previous_until {
                Some(until) => writeln!(
                    io.err,
                    "the old one works until {} as token \"{id}.previous\"",
                    sql::format_time(until)
                )?,
                None => writeln!(io.err, "the old one no longer works")?,
            }
        }
    }
    Ok(())
}

/// Imported secrets shorter than this get a warning.
const MIN_STRONG_SECRET: usize = 16;

/// A token without scopes passes only routes that accept any token
/// (`scopes: ["*"]`); the contract allows it, so it is a warning.
fn warn_unscoped(io: &mut Io<'_>, record: &TokenRecord) -> io::Result<()> {
    if record.scopes.is_empty() {
        writeln!(
            io.err,
            "warning: token {:?} has no scope, so only routes with scopes: [\"*\"] accept it; \
             give --scope (repeatable), e.g. --scope scope:all",
            record.id
        )?;
    }
    Ok(())
}

impl TokenOptions {
    /// The record to store, created and updated `now`.
    fn record(&self, hash: TokenHash, now: OffsetDateTime) -> anyhow::Result<TokenRecord> {
        let expires_at = match self.expires {
            None => None,
            Some(Expiry::At(at)) => Some(at),
            Some(Expiry::In(after)) => Some(
                time::Duration::try_from(after)
                    .ok()
                    .and_then(|d| now.checked_add(d))
                    .filter(|at| at.year() <= 9999)
                    .context("--expires is too far in the future")?,
            ),
        };
        if expires_at.is_some_and(|at| at <= now) {
            bail!("--expires is not in the future");
        }
        Ok(TokenRecord {
            read_only: self.read_only,
            expires_at,
            allowed_ips: self.allow_ips.clone(),
            rate_limit: self.rate,
            description: self.description.clone(),
            created_at: Some(now),
            updated_at: Some(now),
            ..TokenRecord::new(self.id.clone(), hash, self.scopes.clone())
        })
    }
}

/// `active`, `disabled` or `expired` (a disabled token counts as disabled
/// whatever its expiry).
pub fn state(record: &TokenRecord, now: OffsetDateTime) -> &'static str {
    if record.disabled {
        "disabled"
    } else if record.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn list_json(tokens: &[TokenRecord], now: OffsetDateTime) -> serde_json::Value {
    tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "scopes": t.scopes,
                "read_only": t.read_only,
                "expires_at": t.expires_at.map(sql::format_time),
                "state": state(t, now),
                "last_used_at": t.last_used_at.map(sql::format_time),
                "allowed_ips": t.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "rate_limit": t.rate_limit.as_ref().map(|r| serde_json::json!({
                    "requests": r.requests.get(),
                    "per_ms": u64::try_from(r.per.as_millis()).unwrap_or(u64::MAX),
                    "burst": r.burst.get(),
                })),
                "description": t.description,
                "created_at": t.created_at.map(sql::format_time),
                "updated_at": t.updated_at.map(sql::format_time),
            })
        })
        .collect()
}

fn list_table(tokens: &[TokenRecord], now: OffsetDateTime) -> String {
    let time_or = |t: Option<OffsetDateTime>, none: &str| t.map_or(none.into(), sql::format_time);
    let mut rows = vec![[
        "ID",
        "SCOPES",
        "READ-ONLY",
        "EXPIRES",
        "STATE",
        "LAST USED",
        "RATE",
        "ALLOWED IPS",
        "DESCRIPTION",
    ]
    .map(String::from)];
    for t in tokens {
        rows.push([
            t.id.to_string(),
            if t.scopes.is_empty() {
                "-".into()
            } else {
                t.scopes.join(",")
            },
            if t.read_only { "yes" } else { "no" }.into(),
            time_or(t.expires_at, "never"),
            state(t, now).into(),
            time_or(t.last_used_at, "never"),
            t.rate_limit.as_ref().map_or("default".into(), rate_text),
            if t.allowed_ips.is_empty() {
                "any".into()
            } else {
                let ips: Vec<String> = t.allowed_ips.iter().map(ToString::to_string).collect();
                ips.join(",")
            },
            // One line per token: a description's own line breaks are spaces.
            t.description.as_deref().map_or("-".into(), |d| {
                d.split_whitespace().collect::<Vec<_>>().join(" ")
            }),
        ]);
    }
    let mut widths = [0; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A rate as `--rate` takes it, with its burst: `10/1s burst 20`.
fn rate_text(rate: &Rate) -> String {
    let ms = rate.per.as_millis();
    let per = if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    format!("{}/{per} burst {}", rate.requests, rate.burst)
}

/// The contract's one rule for ids; refused before anything is stored.
fn parse_id(s: &str) -> Result<TokenId, String> {
    TokenId::parse(s).map_err(|p| format!("the id {p}"))
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).map_err(|p| format!("a scope {p}"))
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if let Ok(at) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(Expiry::At(at));
    }
    match parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be after now".into()),
        Ok(d) => Ok(Expiry::In(d)),
        Err(_) => Err(format!(
            "{s:?} is neither a duration (30d, 12h) nor an RFC 3339 time"
        )),
    }
}

/// `--overlap`: a duration (`0s`: none).
fn parse_overlap(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|_| format!("{s:?} is not a duration like 1h or 7d"))
}

/// `N/DURATION`: N requests per DURATION, burst N.
fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?} is not a rate like 10/1s (N/DURATION)");
    let (n, per) = s.split_once('/').ok_or_else(bad)?;
    let requests: NonZeroU32 = n.trim().parse().map_err(|_| bad())?;
    let per = parse_duration(per).map_err(|e| format!("{s:?}: {e}"))?;
    if per.is_zero() {
        return Err(format!("{s:?}: the period must not be zero"));
    }
    Ok(Rate {
        requests,
        per,
        burst: requests,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::config::{SourceKind, TokenSourceSettings};
    use crate::tokens::id::id;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TokenCommand,
    }

    fn parse(args: &[&str]) -> Result<TokenCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("token").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn sqlite(path: &Path) -> Source {
        Source::open(&TokenSourceSettings {
            kind: SourceKind::Sqlite {
                path: path.to_owned(),
            },
            query: None,
            refresh_interval: Duration::from_secs(5),
            split: None,
            notify_trigger_on: None,
        })
        .unwrap()
    }

    /// Runs a command with `stdin`; returns (result, stdout, stderr).
    async fn exec(
        args: &[&str],
        source: &Source,
        stdin: &[u8],
    ) -> (anyhow::Result<()>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = Io {
            input: Box::new(stdin),
            out: Box::new(&mut out),
            err: Box::new(&mut err),
            prompt: false,
        };
        let result = execute(parse(args).unwrap(), source, &mut io).await;
        drop(io);
        (
            result,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn create_accepts_every_documented_option() {
        let cmd = parse(&[
            "create",
            "--id",
            "grafana",
            "--scope",
            "scope:a",
            "--scope",
            "scope:b",
            "--read-only",
            "--expires",
            "30d",
            "--allow-ip",
            "10.0.0.0/8",
            "--allow-ip",
            "192.168.1.7",
            "--rate",
            "10/1s",
            "--description",
            "Grafana datasource",
        ])
        .unwrap();
        let TokenCommand::Create { options } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(options.id, "grafana");
        assert_eq!(options.scopes, ["scope:a", "scope:b"]);
        assert!(options.read_only);
        assert_eq!(
            options.expires,
            Some(Expiry::In(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(options.allow_ips.len(), 2);
        let rate = options.rate.unwrap();
        assert_eq!(
            (rate.requests.get(), rate.per, rate.burst.get()),
            (10, Duration::from_secs(1), 10)
        );
        assert_eq!(options.description.as_deref(), Some("Grafana datasource"));

        let now = sql::now();
        let record = options.record(TokenHash::of(b"x"), now).unwrap();
        assert_eq!(record.expires_at, Some(now + time::Duration::days(30)));
        assert_eq!(record.created_at, Some(now));
    }

    #[test]
    fn malformed_options_are_usage_errors() {
        for args in [
            &["create", "--id", "x", "--rate", "10"][..],
            &["create", "--id", "x", "--rate", "0/1s"],
            &["create", "--id", "x", "--rate", "10/0s"],
            &["create", "--id", "x", "--expires", "tomorrow"],
            &["create", "--id", "x", "--allow-ip", "10.0.0.300"],
            &["create", "--id", "x", "--scope", "a b"],
            &["create", "--id", ""],
            &["create", "--scope", "a"],
            &["revoke"],
            &["list", "--yaml"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        let cmd = parse(&["import", "--id", "x", "--expires", "2027-01-01T00:00:00Z"]).unwrap();
        let TokenCommand::Import { options } = cmd else {
            panic!()
        };
        assert!(matches!(options.expires, Some(Expiry::At(_))));
    }

    /// `ops bot` used to be stored on SQLite, after which every load
    /// failed and a running gateway kept its old index.
    #[test]
    fn an_id_outside_the_one_rule_is_a_usage_error_for_every_command() {
        let long = "x".repeat(129);
        for args in [
            &["create", "--id", "ops bot"][..],
            &["import", "--id", "ops bot"],
            &["create", "--id", "tab\there"],
            &["create", "--id", "caf\u{e9}"],
            &["create", "--id", &long],
            &["revoke", "ops bot"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(
                err.to_string()
                    .contains("the id must be 1 to 128 visible ASCII characters without spaces"),
                "{err}"
            );
        }
        assert!(parse(&["create", "--id", &"x".repeat(128)]).is_ok());
    }

    #[test]
    fn an_expiry_in_the_past_or_beyond_year_9999_is_refused() {
        let TokenCommand::Create { options } =
            parse(&["create", "--id", "x", "--expires", "2001-01-01T00:00:00Z"]).unwrap()
        else {
            panic!()
        };
        assert!(options.record(TokenHash::of(b"x"), sql::now()).is_err());
        let TokenCommand::Create { options } =
            parse(&["create", "--id", "x", "--expires", "9999999d"]).unwrap()
        else {
            panic!()
        };
        let err = options.record(TokenHash::of(b"x"), sql::now()).unwrap_err();
        assert!(err.to_string().contains("too far"), "{err}");
    }

    #[tokio::test]
    async fn create_prints_only_the_secret_and_stores_only_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let source = sqlite(&db);
        let (result, out, err) = exec(&["create", "--id", "a", "--scope", "s"], &source, b"").await;
        result.unwrap();
        let secret = out.strip_suffix('\n').expect("one line");
        assert!(!secret.contains('\n'));
        assert!(secret::looks_like_tg(secret.as_bytes()) && secret::checksum_ok(secret.as_bytes()));
        assert!(!err.contains(secret));
        let stored = source.list().await.unwrap();
        assert_eq!(stored[0].hash, TokenHash::of(secret.as_bytes()));
        let file = std::fs::read(&db).unwrap();
        assert!(
            !file.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret stored"
        );
    }

    #[tokio::test]
    async fn import_strips_one_newline_and_refuses_empty_or_mistyped_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let source = sqlite(&dir.path().join("t.db"));
        let (result, out, _) = exec(&["import", "--id", "nb"], &source, b"abc\r\n").await;
        result.unwrap();
        assert_eq!(out, "");
        assert_eq!(source.list().await.unwrap()[0].hash, TokenHash::of(b"abc"));
        let (result, _, _) = exec(&["import", "--id", "two"], &source, b"abc\n\n").await;
        result.unwrap();
        assert_eq!(
            source.list().await.unwrap()[1].hash,
            TokenHash::of(b"abc\n")
        );

        let (result, _, _) = exec(&["import", "--id", "e"], &source, b"\n").await;
        assert_eq!(result.unwrap_err().to_string(), "no secret on stdin");
        let mistyped = b"tg_0123456789abcdefghijklmnopqrstuv0LNJdM\n";
        let (result, _, _) = exec(&["import", "--id", "m"], &source, mistyped).await;
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("checksum") && !message.contains("tg_0"),
            "{message}"
        );
        let good = b"tg_0123456789abcdefghijklmnopqrstuv0LNJdL\n";
        exec(&["import", "--id", "g"], &source, good)
            .await
            .0
            .unwrap();

        let (result, _, _) = exec(&["import", "--id", "dup"], &source, b"abc").await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "this secret is already stored as token \"nb\""
        );
        assert_eq!(source.list().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_token_without_scope_or_with_a_short_secret_is_stored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let source = sqlite(&dir.path().join("t.db"));
        let (result, _, err) = exec(&["create", "--id", "bare"], &source, b"").await;
        result.unwrap();
        assert!(
            err.contains("warning: token \"bare\" has no scope, so only routes with scopes: [\"*\"] accept it"),
            "{err}"
        );
        let (result, _, err) = exec(
            &["import", "--id", "short", "--scope", "s"],
            &source,
            b"hunter2\n",
        )
        .await;
        result.unwrap();
        assert!(
            err.contains("warning: the secret is only 7 bytes long"),
            "{err}"
        );
        assert!(
            !err.contains("hunter2") && !err.contains("no scope"),
            "{err}"
        );
        let strong = b"0123456789abcdef\n";
        let (result, _, err) =
            exec(&["import", "--id", "ok", "--scope", "s"], &source, strong).await;
        result.unwrap();
        assert!(!err.contains("warning"), "{err}");
        assert_eq!(source.list().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn list_shows_state_and_never_a_secret_or_hash() {
        let dir = tempfile::tempdir().unwrap();
        let source = sqlite(&dir.path().join("t.db"));
        exec(
            &[
                "import",
                "--id",
                "on",
                "--scope",
                "a",
                "--scope",
                "b",
                "--read-only",
            ],
            &source,
            b"s1",
        )
        .await
        .0
        .unwrap();
        exec(
            &["import", "--id", "off", "--expires", "1d"],
            &source,
            b"s2",
        )
        .await
        .0
        .unwrap();
        exec(&["revoke", "off"], &source, b"").await.0.unwrap();
        let (result, _, _) = exec(&["revoke", "nobody"], &source, b"").await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "no token with id \"nobody\""
        );

        let (result, table, _) = exec(&["list"], &source, b"").await;
        result.unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID ") && lines[0].ends_with("DESCRIPTION"));
        assert!(lines[1].starts_with("off ") && lines[1].contains(" disabled "));
        let on: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            on,
            ["on", "a,b", "yes", "never", "active", "never", "default", "any", "-"]
        );

        let (result, json, _) = exec(&["list", "--json"], &source, b"").await;
        result.unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["state"], "disabled");
        assert!(value[0]["expires_at"].is_string());
        assert_eq!(
            value[1],
            serde_json::json!({"id": "on", "scopes": ["a", "b"], "read_only": true,
                "expires_at": null, "state": "active", "last_used_at": null,
                "allowed_ips": [], "rate_limit": null, "description": null,
                "created_at": value[1]["created_at"], "updated_at": value[1]["updated_at"]})
        );
        assert!(value[1]["created_at"].is_string());
        for secret in [b"s1", b"s2"] {
            let hash = TokenHash::of(secret).to_hex();
            assert!(!table.contains(&hash) && !json.contains(&hash));
        }
    }

    #[tokio::test]
    async fn list_shows_rate_allowed_ips_and_description() {
        let dir = tempfile::tempdir().unwrap();
        let source = sqlite(&dir.path().join("t.db"));
        let args = [
            "import",
            "--id",
            "full",
            "--scope",
            "a",
            "--rate",
            "10/1s",
            "--allow-ip",
            "10.0.0.0/8",
            "--allow-ip",
            "192.168.1.7",
            "--description",
            "Grafana\ndatasource",
        ];
        exec(&args, &source, b"0123456789abcdef").await.0.unwrap();
        let (result, table, _) = exec(&["list"], &source, b"").await;
        result.unwrap();
        let row = table.lines().nth(1).unwrap();
        assert!(
            row.ends_with("10/1s burst 10  10.0.0.0/8,192.168.1.7/32  Grafana datasource"),
            "{row}"
        );
        let (_, json, _) = exec(&["list", "--json"], &source, b"").await;
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value[0]["rate_limit"],
            serde_json::json!({"requests": 10, "per_ms": 1000, "burst": 10})
        );
        assert_eq!(
            value[0]["allowed_ips"],
            serde_json::json!(["10.0.0.0/8", "192.168.1.7/32"])
        );
        assert_eq!(value[0]["description"], "Grafana\ndatasource");
    }

    #[test]
    fn state_prefers_disabled_then_expired() {
        let now = sql::now();
        let mut r = TokenRecord::new(id("x"), TokenHash::of(b"x"), vec![]);
        assert_eq!(state(&r, now), "active");
        r.expires_at = Some(now);
        assert_eq!(state(&r, now), "expired");
        r.disabled = true;
        assert_eq!(state(&r, now), "disabled");
    }

    #[tokio::test]
    async fn hash_prints_the_sha256_of_stdin_less_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let source = sqlite(&dir.path().join("unused.db"));
        let want = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n";
        for input in [&b"test"[..], b"test\n", b"test\r\n"] {
            let (result, out, _) = exec(&["hash"], &source, input).await;
            result.unwrap();
            assert_eq!(out, want);
        }
        let (_, out, _) = exec(&["hash"], &source, b"test\n\n").await;
        assert_ne!(out, want);
        assert!(exec(&["hash"], &source, b"").await.0.is_err());
        assert!(!dir.path().join("unused.db").exists());
    }
}
