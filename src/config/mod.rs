//! Configuration: YAML → serde schema structs → validation → runtime values.
//!
//! The request path never sees a serde struct: [`load`] returns a fully
//! validated [`Settings`] or every error found, each naming the file, the
//! YAML line and the key path. Loading does no network I/O.

mod compile;
#[cfg(test)]
mod doc_coverage;
mod env;
mod error;
pub(crate) mod schema;
mod spans;
pub mod units;
pub(crate) mod values;
mod warnings;
pub(crate) mod yaml;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

pub use error::{ConfigError, ConfigErrors};
pub use units::{parse_duration, Rate};

/// The default config path when neither `-c` nor `$TOLLGATE_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/gateway.yaml";

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file as named on the command line (used in messages).
    pub file: PathBuf,
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub log: LogSettings,
    pub tokens: TokenSourceSettings,
    pub auth: AuthSettings,
    pub client_ip: ClientIpSettings,
    pub limits: LimitSettings,
    pub timeouts: Timeouts,
    /// `forwarding.remove_request_headers`: removed on every route.
    pub remove_request_headers: Vec<HeaderName>,
    /// `sessions`: browser sessions after a login; `None` without the key.
    pub sessions: Option<SessionSettings>,
    /// `paths.merge_slashes`: runs of `/` collapse to one before matching.
    pub merge_slashes: bool,
    /// Routes in config order (the route table sorts them for matching).
    pub routes: Vec<RouteSettings>,
    /// Non-fatal findings, printed by `check` (e.g. plaintext tokens).
    pub warnings: Vec<String>,
    /// The line of every key path of the file, for errors found after
    /// loading (when a [`crate::policy::Policy`] is built).
    pub lines: Lines,
}

/// Where each key of a loaded config file is, by key path.
#[derive(Debug, Clone, Default)]
pub struct Lines(std::sync::Arc<spans::Spans>);

impl Settings {
    /// An error at `key_path` of this config file, with its line.
    pub fn error(&self, key_path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, self.lines.0.line(key_path), key_path, message)
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// Certificate chain and key paths, resolved against the config's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `tollgate=debug`.
    pub level: String,
    pub access: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A YAML token file (§3).
    File { path: PathBuf },
    /// A SQLite database file holding `tollgate_tokens` (§4).
    Sqlite { path: PathBuf },
    /// A PostgreSQL URL (§4).
    Postgres { url: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSourceSettings {
    pub kind: SourceKind,
    /// Custom SQL returning the columns of §4 (database sources only).
    pub query: Option<String>,
    pub refresh_interval: Duration,
    /// `tokens.split` and `tokens.peppers` (custom queries only).
    pub split: Option<std::sync::Arc<crate::tokens::split::SplitTokens>>,
    /// `tokens.notify_trigger_on`: the application table (PostgreSQL,
    /// custom query) whose changes are announced, as a plain or
    /// schema-qualified SQL identifier.
    pub notify_trigger_on: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `Authorization` schemes, lowercased (`bearer`, `token`).
    pub schemes: Vec<String>,
    /// Extra headers that carry a raw token, e.g. `xc-token`.
    pub headers: Vec<HeaderName>,
    pub all_scope: String,
    pub realm: String,
    pub forward_credentials: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ClientIpSettings {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBackend {
    Local,
    Redis { url: String },
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub backend: LimitBackend,
    pub per_token: Rate,
    pub failed_auth_per_ip: Rate,
    pub max_header_bytes: usize,
    /// `None`: unlimited, streamed.
    pub max_body_bytes: Option<u64>,
    /// Open data connections over every data listener; `None`: no cap.
    /// At the cap, new connections wait in the kernel's backlog.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub idle: Duration,
    /// How long a client may accept none of its answer (nginx's
    /// `send_timeout`).
    pub send: Duration,
    pub shutdown_grace: Duration,
}

/// `sessions` (the contract, §7.4).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub secret: SessionSecret,
    /// How long a session lasts (never beyond its token's expiry).
    pub lifetime: Duration,
    /// The cookie's name (an RFC 6265 token).
    pub cookie: String,
}

/// The key sessions are signed with (at least 32 bytes). `Debug` never
/// shows it.
#[derive(Clone)]
pub struct SessionSecret(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

/// Which tokens a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteScopes {
    /// `["*"]`: any valid token.
    AnyToken,
    /// Any one of these (or the `all_scope`), in config order.
    OneOf(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Validated prefix: starts with `/`, no trailing `/` (except `/`).
    pub prefix: String,
    /// Absolute `http`/`https` URL; its path (without a trailing `/`) is
    /// prepended to what is forwarded.
    pub upstream: http::Uri,
    pub scopes: RouteScopes,
    pub anonymous_read: bool,
    pub strip_prefix: bool,
    pub upstream_response_timeout: Option<Duration>,
    /// Per-route override; falls back to `limits.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// Extra CA bundle (PEM) to verify an `https` upstream with.
    pub upstream_ca: Option<PathBuf>,
    /// `read_methods`: `None` for the default `GET`, `HEAD`, `OPTIONS`.
    pub read_methods: Option<Vec<http::Method>>,
    /// `remove_request_headers` of this route.
    pub remove_request_headers: Vec<HeaderName>,
    /// `browser`: a session cookie is a credential here.
    pub browser: bool,
    /// `send_keep_alive`: requests to the upstream say
    /// `Connection: keep-alive`.
    pub send_keep_alive: bool,
}

/// Reads, expands, parses and validates the config at `path`.
///
/// On error every problem found is returned, not only the first.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    use std::io::Read;
    // One byte over the cap is enough for `load_str` to refuse the file.
    let limit = compile::MAX_CONFIG_BYTES as u64 + 1;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit).read_to_string(&mut text))
        .map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                path,
                None,
                "",
                format!("cannot read config: {e}"),
            ))
        })?;
    load_str(path, &text)
}

/// Like [`load`], with the text already read (`path` names it in messages
/// and anchors relative paths).
pub fn load_str(path: &Path, text: &str) -> Result<Settings, ConfigErrors> {
    compile::compile(path, text)
}

/// `NonZeroU32` from a `u32` known to be non-zero at a call site.
pub(crate) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}
