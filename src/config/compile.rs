//! Schema structs → validated [`Settings`]: `${NAME}` expansion, defaults,
//! relative paths, and every check of the contract's §2.
//!
//! Defaults (the contract, §2): log json/info/access true; tokens.refresh_interval
//! 5s; auth schemes [bearer, token], headers [] (the contract's sample lists
//! `xc-token`, but a header is only a credential when configured),
//! all_scope `scope:all`, realm `tollgate`, forward_credentials false;
//! client_ip.trusted_proxies []; limits backend local, per_token
//! {100, 1s, 200}, failed_auth_per_ip {20, 1m, 20}, max_header_bytes 16384,
//! max_body_bytes unlimited, max_connections unlimited; timeouts header_read 10s, upstream_connect 3s,
//! upstream_response 30s, idle 60s, shutdown_grace 30s; sessions none (with
//! it: lifetime 12h, cookie `tollgate_session`); paths.merge_slashes false;
//! routes[].browser false. Required: at least one `listen` entry,
//! `tokens.source`, and at least one route.
//!
//! Invariant: every problem is collected before returning, and a
//! [`Settings`] is returned only when none was found. The only I/O is
//! checking that TLS and CA files can be opened.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::schema::{self, Config, RateSpec};
use super::yaml::{self, Report};
use super::{env, values};
use super::{
    AuthSettings, ClientIpSettings, ConfigErrors, LimitBackend, LimitSettings, Lines, Listener,
    LogFormat, LogSettings, RouteScopes, RouteSettings, SessionSecret, SessionSettings, Settings,
    SourceKind, Timeouts, TlsFiles, TokenSourceSettings,
};
use crate::tokens::split::SplitTokens;

/// Shortest `sessions.secret` accepted, in bytes.
const MIN_SESSION_SECRET_BYTES: usize = 32;

/// Largest config file accepted.
pub(crate) const MAX_CONFIG_BYTES: usize = 4 << 20;

pub(super) fn compile(path: &Path, text: &str) -> Result<Settings, ConfigErrors> {
    compile_with(path, text, &env::process_env)
}

/// [`compile`] with an explicit environment (tests use a fake one).
pub(super) fn compile_with(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigErrors> {
    let (config, spans) = yaml::parse::<Config>(path, text, MAX_CONFIG_BYTES, "the file is empty")?;
    let mut c = Compiler {
        report: Report::new(path, &spans),
        env,
        dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
    };
    let mut settings = c.settings(path, config);
    c.report.finish()?;
    settings.lines = Lines(std::sync::Arc::new(spans));
    Ok(settings)
}

struct Compiler<'a> {
    report: Report<'a>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Directory of the config file, for relative paths.
    dir: PathBuf,
}

impl Compiler<'_> {
    fn settings(&mut self, file: &Path, config: Config) -> Settings {
        let listeners = self.listeners(config.listen);
        let admin = config.admin.map(|a| self.addr("admin.addr", &a.addr));
        if let Some(admin) = admin.filter(|a| a.port() != 0) {
            if let Some(i) = listeners.iter().position(|l| l.addr == admin) {
                self.report.error_unlocated(
                    "admin.addr",
                    format!("{admin} duplicates listen[{i}].addr; use another port"),
                );
            }
        }
        let auth = self.auth(config.auth.unwrap_or_default());
        let forwarding = config.forwarding.unwrap_or_default();
        let remove_request_headers = self.removed_headers(
            "forwarding.remove_request_headers",
            forwarding.remove_request_headers.unwrap_or_default(),
            &auth,
        );
        let routes = self.routes(config.routes, &auth);
        let sessions = config.sessions.map(|s| self.sessions(s));
        if sessions.is_none() {
            for (i, r) in routes.iter().enumerate() {
                if r.browser {
                    self.report.error(
                        &format!("routes[{i}].browser"),
                        "needs sessions (sessions.secret) to accept a session cookie; add sessions or remove browser",
                    );
                }
            }
        }
        let merge_slashes = self.report.bool(
            "paths.merge_slashes",
            config.paths.unwrap_or_default().merge_slashes,
            false,
        );
        let warnings = super::warnings::anonymous_exposure(&routes);
        Settings {
            file: file.to_path_buf(),
            listeners,
            admin,
            log: self.log(config.log.unwrap_or_default()),
            tokens: self.tokens(config.tokens),
            auth,
            client_ip: self.client_ip(config.client_ip.unwrap_or_default()),
            limits: self.limits(config.limits.unwrap_or_default()),
            timeouts: self.timeouts(config.timeouts.unwrap_or_default()),
            remove_request_headers,
            sessions,
            merge_slashes,
            routes,
            warnings,
            lines: Lines::default(),
        }
    }

    /// A string value with `${NAME}` expanded.
    fn string(&mut self, path: &str, raw: &str) -> String {
        match env::expand(raw, self.env) {
            Ok(s) => s,
            Err(m) => {
                self.report.error(path, m);
                raw.to_string()
            }
        }
    }

    fn addr(&mut self, path: &str, raw: &str) -> SocketAddr {
        let s = self.string(path, raw);
        let parsed = s.parse::<SocketAddr>().map_err(|_| {
            format!("{s:?} is not an IP address and port such as 0.0.0.0:8080 or [::]:8443")
        });
        self.report
            .check(path, parsed)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn duration(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: &str,
        zero_ok: bool,
    ) -> Duration {
        let s = self.string(path, raw.unwrap_or(default));
        self.report
            .check(path, values::duration(&s, zero_ok))
            .unwrap_or(Duration::ZERO)
    }

    /// A file path, resolved against the config's directory; with
    /// `must_open`, the file must exist and be readable now.
    fn file(&mut self, path: &str, raw: &str, must_open: bool) -> PathBuf {
        let s = self.string(path, raw);
        if s.is_empty() {
            self.report.error(path, "is empty; give a file path");
            return PathBuf::new();
        }
        let resolved = self.dir.join(&s);
        if must_open {
            let shown = if Path::new(&s).is_absolute() {
                format!("{s:?}")
            } else {
                format!("{s:?} (resolved to {:?})", resolved.display().to_string())
            };
            match std::fs::File::open(&resolved).and_then(|f| f.metadata()) {
                Ok(m) if m.is_file() => {}
                Ok(_) => self.report.error(path, format!("{shown} is not a file")),
                Err(e) => self.report.error(path, format!("cannot open {shown}: {e}")),
            }
        }
        resolved
    }

    fn listeners(&mut self, specs: Vec<schema::ListenSpec>) -> Vec<Listener> {
        if specs.is_empty() {
            self.report.error(
                "listen",
                "needs at least one listener, e.g. - addr: 0.0.0.0:8080",
            );
        }
        let mut out: Vec<Listener> = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let p = format!("listen[{i}]");
            let addr = self.addr(&format!("{p}.addr"), &spec.addr);
            // Port 0 (any free port, as tests use) may appear more than once.
            if let Some(j) = out.iter().position(|l| l.addr == addr && addr.port() != 0) {
                self.report.error_unlocated(
                    &format!("{p}.addr"),
                    format!("{addr} duplicates listen[{j}].addr"),
                );
            }
            let tls = spec.tls.map(|t| TlsFiles {
                cert: self.file(&format!("{p}.tls.cert"), &t.cert, true),
                key: self.file(&format!("{p}.tls.key"), &t.key, true),
            });
            out.push(Listener { addr, tls });
        }
        out
    }

    fn log(&mut self, spec: schema::LogSpec) -> LogSettings {
        let format = match self
            .string("log.format", spec.format.as_deref().unwrap_or("json"))
            .as_str()
        {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                let m = format!("{other:?} is not a log format; use json or text");
                self.report.error("log.format", m);
                LogFormat::Json
            }
        };
        let level = self.string("log.level", spec.level.as_deref().unwrap_or("info"));
        self.report.check("log.level", values::log_level(&level));
        let access = self.report.bool("log.access", spec.access, true);
        LogSettings {
            format,
            level,
            access,
        }
    }

    fn tokens(&mut self, spec: schema::TokensSpec) -> TokenSourceSettings {
        let source = self.string("tokens.source", &spec.source);
        let needs_path = |this: &mut Self, raw: &Option<String>| match raw {
            Some(p) => this.file("tokens.path", p, false),
            None => {
                let m = format!("is required with source: {source}");
                this.report.error("tokens.path", m);
                PathBuf::new()
            }
        };
        let kind = match source.as_str() {
            "file" => SourceKind::File {
                path: needs_path(self, &spec.path),
            },
            "sqlite" => SourceKind::Sqlite {
                path: needs_path(self, &spec.path),
            },
            "postgres" => SourceKind::Postgres {
                url: self.postgres_url(spec.url.as_deref()),
            },
            other => {
                let m = format!("{other:?} is not a token source; use file, sqlite or postgres");
                self.report.error("tokens.source", m);
                SourceKind::File {
                    path: PathBuf::new(),
                }
            }
        };
        if spec.url.is_some() && matches!(source.as_str(), "file" | "sqlite") {
            let m = format!("is only used with source: postgres (source is {source}; use path)");
            self.report.error("tokens.url", m);
        }
        if spec.path.is_some() && source == "postgres" {
            self.report.error(
                "tokens.path",
                "is only used with source: file or sqlite (use url)",
            );
        }
        let query = spec.query.map(|q| self.string("tokens.query", &q));
        if query.is_some() && source == "file" {
            self.report.error(
                "tokens.query",
                "is only used with source: sqlite or postgres",
            );
        }
        if query.as_deref().is_some_and(|q| q.trim().is_empty()) {
            self.report.error(
                "tokens.query",
                "is empty; remove it to read the tollgate_tokens table",
            );
        }
        let refresh_interval = self.duration(
            "tokens.refresh_interval",
            spec.refresh_interval.as_deref(),
            "5s",
            false,
        );
        let split = self.split_tokens(spec.split, spec.peppers, query.is_some());
        let notify_trigger_on = spec.notify_trigger_on.and_then(|table| {
            let key = "tokens.notify_trigger_on";
            if source != "postgres" || query.is_none() {
                self.report.error(
                    key,
                    "is only used with source: postgres and a tokens.query (the tollgate_tokens table has its own triggers)",
                );
                return None;
            }
            match table_name(&table) {
                Ok(()) => Some(table),
                Err(problem) => {
                    self.report.error(key, problem);
                    None
                }
            }
        });
        TokenSourceSettings {
            kind,
            query,
            refresh_interval,
            split,
            notify_trigger_on,
        }
    }

    /// `tokens.split` and `tokens.peppers`: both or neither, and only with
    /// a custom query (the `tollgate_tokens` table has no split columns).
    /// A pepper's value is never quoted.
    fn split_tokens(
        &mut self,
        split: Option<schema::SplitSpec>,
        peppers: Option<schema::Peppers>,
        has_query: bool,
    ) -> Option<Arc<SplitTokens>> {
        let (split, peppers) = match (split, peppers) {
            (None, None) => return None,
            (Some(_), None) => {
                self.report.error(
                    "tokens.peppers",
                    "is required with tokens.split: the HMAC keys digests are made with, by pepper id",
                );
                return None;
            }
            (None, Some(_)) => {
                self.report
                    .error("tokens.peppers", "is only used with tokens.split");
                return None;
            }
            (Some(split), Some(peppers)) => (split, peppers),
        };
        if !has_query {
            self.report.error(
                "tokens.split",
                "needs a tokens.query that returns key, hmac_digest and pepper_id (the tollgate_tokens table has no split columns)",
            );
        }
        let prefix = self.string("tokens.split.prefix", &split.prefix);
        let separator = self.string("tokens.split.separator", &split.separator);
        for (key, value) in [("prefix", &prefix), ("separator", &separator)] {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                self.report.error(
                    &format!("tokens.split.{key}"),
                    "must be one or more visible ASCII characters",
                );
            }
        }
        if peppers.0.is_empty() {
            self.report
                .error("tokens.peppers", "is empty; give at least one pepper by id");
        }
        let mut keys = HashMap::new();
        for (id, raw) in peppers.0 {
            let path = format!("tokens.peppers.{id}");
            let Some(value) = self.secret(&path, &raw) else {
                continue;
            };
            if value.is_empty() {
                self.report.error(&path, "is empty");
                continue;
            }
            keys.insert(id.into_boxed_str(), value.into_bytes().into_boxed_slice());
        }
        Some(Arc::new(SplitTokens::new(&prefix, &separator, keys)))
    }

    /// A secret value with `${NAME}` expanded; an error never quotes it.
    fn secret(&mut self, path: &str, raw: &str) -> Option<String> {
        match env::expand(raw, self.env) {
            Ok(s) => Some(s),
            Err(m) => {
                // Other expansion errors quote text of the value.
                let m = if m.starts_with("environment variable") {
                    m
                } else {
                    "cannot be expanded; write ${NAME} and set NAME in the environment".into()
                };
                self.report.error(path, m);
                None
            }
        }
    }

    fn postgres_url(&mut self, raw: Option<&str>) -> String {
        let Some(raw) = raw else {
            self.report
                .error("tokens.url", "is required with source: postgres");
            return String::new();
        };
        let url = self.string("tokens.url", raw);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            self.report
                .error("tokens.url", "must start with postgres:// or postgresql://");
        }
        url
    }

    fn auth(&mut self, spec: schema::AuthSpec) -> AuthSettings {
        let default_schemes = || vec!["bearer".to_string(), "token".to_string()];
        let raw_schemes = spec.schemes.unwrap_or_else(default_schemes);
        let raw_headers = spec.headers.unwrap_or_default();
        let mut schemes: Vec<String> = Vec::new();
        for (i, raw) in raw_schemes.iter().enumerate() {
            let p = format!("auth.schemes[{i}]");
            let s = self.string(&p, raw);
            if let Some(s) = self.report.check(&p, values::scheme(&s)) {
                if let Some(j) = schemes.iter().position(|x| *x == s) {
                    self.report
                        .error(&p, format!("{s:?} duplicates auth.schemes[{j}]"));
                }
                schemes.push(s);
            }
        }
        let mut headers: Vec<http::HeaderName> = Vec::new();
        for (i, raw) in raw_headers.iter().enumerate() {
            let p = format!("auth.headers[{i}]");
            let s = self.string(&p, raw);
            if let Some(h) = self.report.check(&p, values::token_header(&s)) {
                if let Some(j) = headers.iter().position(|x| *x == h) {
                    let m = format!("{:?} duplicates auth.headers[{j}]", h.as_str());
                    self.report.error(&p, m);
                }
                headers.push(h);
            }
        }
        if raw_schemes.is_empty() && raw_headers.is_empty() {
            self.report.error(
                "auth",
                "schemes and headers are both empty, so no request could present a token",
            );
        }
        let all_scope = self.string(
            "auth.all_scope",
            spec.all_scope.as_deref().unwrap_or("scope:all"),
        );
        self.report
            .check("auth.all_scope", values::scope(&all_scope));
        let realm = self.string("auth.realm", spec.realm.as_deref().unwrap_or("tollgate"));
        self.report.check("auth.realm", values::realm(&realm));
        let forward_credentials =
            self.report
                .bool("auth.forward_credentials", spec.forward_credentials, false);
        AuthSettings {
            schemes,
            headers,
            all_scope,
            realm,
            forward_credentials,
        }
    }

    /// `sessions`: the secret is never quoted in a message.
    fn sessions(&mut self, spec: schema::SessionsSpec) -> SessionSettings {
        let secret = self.secret("sessions.secret", &spec.secret);
        if secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SESSION_SECRET_BYTES)
        {
            self.report.error(
                "sessions.secret",
                format!(
                    "is shorter than {MIN_SESSION_SECRET_BYTES} bytes; use a random value, e.g. from `openssl rand -base64 32`"
                ),
            );
        }
        let lifetime = self.duration("sessions.lifetime", spec.lifetime.as_deref(), "12h", false);
        let cookie = self.string(
            "sessions.cookie",
            spec.cookie.as_deref().unwrap_or("tollgate_session"),
        );
        self.report
            .check("sessions.cookie", values::cookie_name(&cookie));
        SessionSettings {
            secret: SessionSecret(secret.unwrap_or_default().into_bytes().into()),
            lifetime,
            cookie,
        }
    }

    fn client_ip(&mut self, spec: schema::ClientIpSpec) -> ClientIpSettings {
        let mut trusted_proxies = Vec::new();
        for (i, raw) in spec.trusted_proxies.unwrap_or_default().iter().enumerate() {
            let p = format!("client_ip.trusted_proxies[{i}]");
            let s = self.string(&p, raw);
            trusted_proxies.extend(self.report.check(&p, values::ip_net(&s)));
        }
        ClientIpSettings { trusted_proxies }
    }

    fn limits(&mut self, spec: schema::LimitsSpec) -> LimitSettings {
        let backend = self.string("limits.backend", spec.backend.as_deref().unwrap_or("local"));
        let backend = match (backend.as_str(), spec.redis_url) {
            ("local", None) => LimitBackend::Local,
            ("local", Some(_)) => {
                self.report.error(
                    "limits.redis_url",
                    "is only used with backend: redis; set backend: redis or remove it",
                );
                LimitBackend::Local
            }
            ("redis", None) => {
                self.report
                    .error("limits.redis_url", "is required with backend: redis");
                LimitBackend::Local
            }
            ("redis", Some(raw)) => {
                let url = self.string("limits.redis_url", &raw);
                let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
                if !schemes.iter().any(|s| url.starts_with(s)) {
                    self.report.error(
                        "limits.redis_url",
                        "must start with redis://, rediss://, redis+unix:// or unix://",
                    );
                }
                LimitBackend::Redis { url }
            }
            (other, _) => {
                let m = format!("{other:?} is not a limit backend; use local or redis");
                self.report.error("limits.backend", m);
                LimitBackend::Local
            }
        };
        let mut rate = |path: &str, spec: Option<RateSpec>, default: (u32, &str, u32)| {
            let spec = spec.unwrap_or(RateSpec {
                requests: default.0,
                per: default.1.to_string(),
                burst: Some(default.2),
            });
            let per = self.string(&format!("{path}.per"), &spec.per);
            let spec = RateSpec { per, ..spec };
            values::rate(&mut self.report, path, &spec).unwrap_or(super::Rate {
                requests: super::nz(1),
                per: Duration::from_secs(1),
                burst: super::nz(1),
            })
        };
        let per_token = rate("limits.per_token", spec.per_token, (100, "1s", 200));
        let failed_auth_per_ip = rate(
            "limits.failed_auth_per_ip",
            spec.failed_auth_per_ip,
            (20, "1m", 20),
        );
        let max_header_bytes = spec.max_header_bytes.unwrap_or(16_384);
        if max_header_bytes == 0 {
            self.report
                .error("limits.max_header_bytes", "must be greater than zero");
        }
        if spec.max_connections == Some(0) {
            self.report.error(
                "limits.max_connections",
                "must be at least 1 (null for no limit)",
            );
        }
        LimitSettings {
            backend,
            per_token,
            failed_auth_per_ip,
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_body_bytes: spec.max_body_bytes,
            max_connections: spec
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    fn timeouts(&mut self, spec: schema::TimeoutsSpec) -> Timeouts {
        Timeouts {
            header_read: self.duration(
                "timeouts.header_read",
                spec.header_read.as_deref(),
                "10s",
                false,
            ),
            upstream_connect: self.duration(
                "timeouts.upstream_connect",
                spec.upstream_connect.as_deref(),
                "3s",
                false,
            ),
            upstream_response: self.duration(
                "timeouts.upstream_response",
                spec.upstream_response.as_deref(),
                "30s",
                false,
            ),
            idle: self.duration("timeouts.idle", spec.idle.as_deref(), "60s", false),
            send: self.duration("timeouts.send", spec.send.as_deref(), "60s", false),
            shutdown_grace: self.duration(
                "timeouts.shutdown_grace",
                spec.shutdown_grace.as_deref(),
                "30s",
                true,
            ),
        }
    }

    /// A `remove_request_headers` list: header names, none of them a
    /// configured credential header (a removed header is never a
    /// credential).
    fn removed_headers(
        &mut self,
        path: &str,
        raw: Vec<String>,
        auth: &AuthSettings,
    ) -> Vec<http::HeaderName> {
        let mut out: Vec<http::HeaderName> = Vec::with_capacity(raw.len());
        for (i, raw) in raw.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let s = self.string(&p, raw);
            let Ok(name) = http::HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()) else {
                self.report
                    .error(&p, format!("{s:?} is not a valid header name"));
                continue;
            };
            if name == http::header::AUTHORIZATION && !auth.schemes.is_empty() {
                self.report.error(
                    &p,
                    "authorization carries the credential (auth.schemes); it cannot be removed here",
                );
            } else if let Some(j) = auth.headers.iter().position(|h| *h == name) {
                self.report.error(
                    &p,
                    format!(
                        "{:?} is auth.headers[{j}], a credential header; it cannot be removed here",
                        name.as_str()
                    ),
                );
            } else if let Some(j) = out.iter().position(|h| *h == name) {
                self.report
                    .error(&p, format!("{:?} duplicates {path}[{j}]", name.as_str()));
            } else {
                out.push(name);
            }
        }
        out
    }

    /// `routes[].read_methods`: method names, exactly as sent (methods are
    /// case-sensitive), no TRACE or CONNECT.
    fn read_methods(&mut self, path: &str, raw: Vec<String>) -> Vec<http::Method> {
        let mut out: Vec<http::Method> = Vec::with_capacity(raw.len());
        for (i, raw) in raw.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let s = self.string(&p, raw);
            match http::Method::from_bytes(s.as_bytes()) {
                Err(_) => self
                    .report
                    .error(&p, format!("{s:?} is not an HTTP method")),
                Ok(m) if m == http::Method::TRACE || m == http::Method::CONNECT => {
                    self.report
                        .error(&p, format!("{m} is always refused; it cannot read"));
                }
                Ok(m) if out.contains(&m) => {
                    self.report.error(&p, format!("{m} is listed twice"));
                }
                Ok(m) => out.push(m),
            }
        }
        out
    }

    fn routes(&mut self, specs: Vec<schema::RouteSpec>, auth: &AuthSettings) -> Vec<RouteSettings> {
        if specs.is_empty() {
            self.report.error(
                "routes",
                "needs at least one route, e.g. - { prefix: /api, upstream: http://127.0.0.1:8000, scopes: [\"*\"] }",
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let p = format!("routes[{i}]");
            let prefix = self.string(&format!("{p}.prefix"), &spec.prefix);
            if self
                .report
                .check(&format!("{p}.prefix"), values::prefix(&prefix))
                .is_some()
            {
                if let Some(j) = seen.get(&prefix) {
                    self.report.error_unlocated(
                        &format!("{p}.prefix"),
                        format!("{prefix:?} duplicates routes[{j}]"),
                    );
                } else {
                    seen.insert(prefix.clone(), i);
                }
            }
            let raw = self.string(&format!("{p}.upstream"), &spec.upstream);
            let upstream = self
                .report
                .check(&format!("{p}.upstream"), values::upstream(&raw))
                .unwrap_or_default();
            let scopes = self.route_scopes(&p, &spec.scopes);
            let anonymous_read = match spec
                .anonymous
                .as_deref()
                .map(|a| self.string(&format!("{p}.anonymous"), a))
                .as_deref()
            {
                None | Some("none") => false,
                Some("read") => true,
                Some(other) => {
                    let m = format!("{other:?} is not an anonymous mode; use none or read");
                    self.report.error(&format!("{p}.anonymous"), m);
                    false
                }
            };
            let strip_prefix =
                self.report
                    .bool(&format!("{p}.strip_prefix"), spec.strip_prefix, false);
            let upstream_response_timeout = spec.upstream_response_timeout.map(|raw| {
                self.duration(
                    &format!("{p}.upstream_response_timeout"),
                    Some(&raw),
                    "",
                    false,
                )
            });
            let upstream_ca = spec.upstream_ca.map(|raw| {
                let path = format!("{p}.upstream_ca");
                if upstream.scheme_str() == Some("http") {
                    self.report
                        .error(&path, "is only used with an https upstream");
                }
                self.file(&path, &raw, true)
            });
            let read_methods = spec
                .read_methods
                .map(|raw| self.read_methods(&format!("{p}.read_methods"), raw));
            let remove_request_headers = self.removed_headers(
                &format!("{p}.remove_request_headers"),
                spec.remove_request_headers.unwrap_or_default(),
                auth,
            );
            out.push(RouteSettings {
                prefix,
                upstream,
                scopes,
                anonymous_read,
                strip_prefix,
                upstream_response_timeout,
                max_body_bytes: spec.max_body_bytes,
                upstream_ca,
                read_methods,
                remove_request_headers,
                browser: self
                    .report
                    .bool(&format!("{p}.browser"), spec.browser, false),
                send_keep_alive: self.report.bool(
                    &format!("{p}.send_keep_alive"),
                    spec.send_keep_alive,
                    false,
                ),
            });
        }
        out
    }

    fn route_scopes(&mut self, route: &str, raw: &[String]) -> RouteScopes {
        let path = format!("{route}.scopes");
        if raw.is_empty() {
            self.report.error(
                &path,
                "is empty; list the scopes that may use this route, or [\"*\"] for any valid token",
            );
            return RouteScopes::OneOf(Vec::new());
        }
        let mut scopes: Vec<String> = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let s = self.string(&p, s);
            if s == "*" && raw.len() > 1 {
                self.report.error(
                    &p,
                    "\"*\" (any valid token) cannot be combined with other scopes; use [\"*\"] alone",
                );
            } else if self.report.check(&p, values::scope(&s)).is_some() {
                if let Some(j) = scopes.iter().position(|x| *x == s) {
                    self.report
                        .error(&p, format!("{s:?} duplicates {path}[{j}]"));
                }
            }
            scopes.push(s);
        }
        if scopes.len() == 1 && scopes[0] == "*" {
            RouteScopes::AnyToken
        } else {
            RouteScopes::OneOf(scopes)
        }
    }
}

/// Whether `name` is a table name a trigger can be installed on as
/// written: `table` or `schema.table`, each an unquoted SQL identifier
/// (letters, digits, `_`, not starting with a digit, at most 63 bytes),
/// so the statements built from it need no quoting.
fn table_name(name: &str) -> Result<(), &'static str> {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part(p)) {
        Ok(())
    } else {
        Err("is not a table name: `table` or `schema.table`, letters, digits and _ only")
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
