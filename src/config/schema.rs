//! The serde mirror of `gateway.yaml` (the contract, §2), exactly as written.
//!
//! Invariant: every struct denies unknown keys, and every optional key is
//! an `Option` so that defaults are applied in one place (`compile.rs`),
//! where they are documented. Enumerations and durations stay strings here
//! so `${NAME}` expansion applies to them and their errors carry our words.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub listen: Vec<ListenSpec>,
    #[serde(default)]
    pub admin: Option<AdminSpec>,
    #[serde(default)]
    pub log: Option<LogSpec>,
    pub tokens: TokensSpec,
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    #[serde(default)]
    pub client_ip: Option<ClientIpSpec>,
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    #[serde(default)]
    pub forwarding: Option<ForwardingSpec>,
    #[serde(default)]
    pub sessions: Option<SessionsSpec>,
    #[serde(default)]
    pub paths: Option<PathsSpec>,
    pub routes: Vec<RouteSpec>,
}

/// `sessions:` (the contract, §7.4): browser sessions after a login.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionsSpec {
    pub secret: String,
    #[serde(default)]
    pub lifetime: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

/// Never shows the secret (it may be written inline).
impl std::fmt::Debug for SessionsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsSpec")
            .field("lifetime", &self.lifetime)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathsSpec {
    #[serde(default)]
    pub merge_slashes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardingSpec {
    #[serde(default)]
    pub remove_request_headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenSpec {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSpec {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSpec {
    pub addr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSpec {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub access: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokensSpec {
    pub source: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub refresh_interval: Option<String>,
    #[serde(default)]
    pub notify_trigger_on: Option<String>,
    #[serde(default)]
    pub split: Option<SplitSpec>,
    /// Pepper values are secrets: `TokensSpec`'s `Debug` is derived, so
    /// they sit behind [`Peppers`], whose `Debug` shows ids only.
    #[serde(default)]
    pub peppers: Option<Peppers>,
}

/// `tokens.split` (the contract, §7.2): the shape of a split token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SplitSpec {
    pub prefix: String,
    pub separator: String,
}

/// `tokens.peppers`: HMAC keys by pepper id. Never shows a value.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct Peppers(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for Peppers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSpec {
    #[serde(default)]
    pub schemes: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    #[serde(default)]
    pub all_scope: Option<String>,
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub forward_credentials: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientIpSpec {
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSpec {
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub per_token: Option<RateSpec>,
    #[serde(default)]
    pub failed_auth_per_ip: Option<RateSpec>,
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub max_connections: Option<u64>,
}

/// `{ requests: N, per: DURATION, burst: N }`; shared with the token file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateSpec {
    pub requests: u32,
    pub per: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsSpec {
    #[serde(default)]
    pub header_read: Option<String>,
    #[serde(default)]
    pub upstream_connect: Option<String>,
    #[serde(default)]
    pub upstream_response: Option<String>,
    #[serde(default)]
    pub idle: Option<String>,
    #[serde(default)]
    pub send: Option<String>,
    #[serde(default)]
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSpec {
    pub prefix: String,
    pub upstream: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub anonymous: Option<String>,
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    #[serde(default)]
    pub upstream_response_timeout: Option<String>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub upstream_ca: Option<String>,
    #[serde(default)]
    pub read_methods: Option<Vec<String>>,
    #[serde(default)]
    pub remove_request_headers: Option<Vec<String>>,
    #[serde(default)]
    pub browser: Option<bool>,
    #[serde(default)]
    pub send_keep_alive: Option<bool>,
}
