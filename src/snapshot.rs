//! The running configuration: one `ArcSwap<Snapshot>` that every request
//! loads once, and the compiled values inside it.
//!
//! A snapshot is built completely off the request path — config compiled
//! into a [`Runtime`], tokens into a [`TokenIndex`] — and swapped in with one
//! store, so a request sees either the old or the new state, never a mix.
//! Invariant: a failed build never replaces what is serving.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};

use crate::config::{LimitBackend, RouteScopes, Settings};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::Upstreams;
use crate::ratelimit::{FailedAuthGuard, RedisLimiter, TokenLimiters, DEFAULT_MAX_KEYS};
use crate::reject::Challenges;
use crate::routes::RouteTable;
use crate::tokens::TokenIndex;

/// One route, compiled for the request path.
pub struct Route {
    /// The prefix, also the `route` label of logs and metrics.
    pub prefix: Arc<str>,
    /// Position in config order (metrics handles are indexed by it).
    pub index: usize,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The upstream URL's path without a trailing `/` ("" for none).
    pub base_path: Box<str>,
    pub scopes: RouteScopes,
    /// `WWW-Authenticate` for `insufficient_scope` on this route.
    pub scope_challenge: HeaderValue,
    pub anonymous_read: bool,
    pub strip_prefix: bool,
    /// The upstream's number ([`crate::proxy::upstream_number`]).
    pub upstream: usize,
    /// `Host` as sent upstream (the upstream's own, as a client would send it).
    pub host: HeaderValue,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_body_bytes: Option<u64>,
    /// The pooled client for this route's upstream (shared across routes
    /// and reloads where the settings match).
    pub client: crate::proxy::Client,
    pub metrics: Arc<RouteMetrics>,
}

/// Everything compiled from one config file.
pub struct Runtime {
    pub settings: Settings,
    pub routes: RouteTable<Route>,
    pub challenges: Challenges,
    /// The failed-auth guard for `limits.failed_auth_per_ip` (the same one
    /// across reloads while the rate is unchanged).
    pub failed_auth: Arc<FailedAuthGuard>,
    /// With `limits.backend: redis`, where token limits are kept (the same
    /// one across reloads while the URL is unchanged); `None` for `local`.
    pub shared_limits: Option<Arc<RedisLimiter>>,
    /// TLS server config per listener, by position in `listen`.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

impl Runtime {
    /// Compiles validated settings into request-path values.
    pub fn compile(settings: Settings, lasting: &Lasting) -> Result<Runtime, String> {
        let (upstreams, metrics) = (&lasting.upstreams, &*lasting.metrics);
        let challenges = Challenges::new(&settings.auth.realm);
        let mut entries = Vec::with_capacity(settings.routes.len());
        for (index, r) in settings.routes.iter().enumerate() {
            let scheme = r
                .upstream
                .scheme()
                .cloned()
                .ok_or_else(|| format!("routes[{index}].upstream has no scheme"))?;
            let authority = r
                .upstream
                .authority()
                .cloned()
                .ok_or_else(|| format!("routes[{index}].upstream has no host"))?;
            let scope_names = match &r.scopes {
                RouteScopes::AnyToken => vec!["*".to_string()],
                RouteScopes::OneOf(s) => s.clone(),
            };
            let client = upstreams
                .client(settings.timeouts.upstream_connect, r.upstream_ca.as_deref())
                .map_err(|e| format!("routes[{index}].upstream_ca: {e}"))?;
            let host = crate::proxy::host_header(&scheme, &authority)
                .map_err(|e| format!("routes[{index}].upstream: {e}"))?;
            let route = Route {
                host,
                upstream: crate::proxy::upstream_number(&authority),
                connect_timeout: settings.timeouts.upstream_connect,
                prefix: r.prefix.as_str().into(),
                index,
                scheme,
                authority,
                base_path: r.upstream.path().trim_end_matches('/').into(),
                scopes: r.scopes.clone(),
                scope_challenge: challenges.insufficient_scope(&scope_names),
                anonymous_read: r.anonymous_read,
                strip_prefix: r.strip_prefix,
                response_timeout: r
                    .upstream_response_timeout
                    .unwrap_or(settings.timeouts.upstream_response),
                max_body_bytes: r.max_body_bytes.or(settings.limits.max_body_bytes),
                client,
                metrics: metrics.route(&r.prefix),
            };
            entries.push((r.prefix.clone(), route));
        }
        let tls = settings
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.tls
                    .as_ref()
                    .map(|files| {
                        crate::server::tls::server_config(files)
                            .map_err(|e| format!("listen[{i}].tls: {e}"))
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let shared_limits = match &settings.limits.backend {
            LimitBackend::Local => None,
            LimitBackend::Redis { url } => Some(
                lasting
                    .redis_for(url)
                    .map_err(|e| format!("limits.redis_url: {e}"))?,
            ),
        };
        // Nothing below fails: from here on the lasting state follows this config.
        lasting.keep_redis(shared_limits.clone());
        let failed_auth = {
            let mut guard = lasting
                .failed_auth
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let rate = settings.limits.failed_auth_per_ip;
            let next = match guard.as_ref() {
                Some(g) => g.for_rate(rate),
                None => Arc::new(FailedAuthGuard::new(rate, DEFAULT_MAX_KEYS)),
            };
            *guard = Some(next.clone());
            next
        };
        Ok(Runtime {
            failed_auth,
            shared_limits,
            tls,
            routes: RouteTable::new(entries),
            challenges,
            settings,
        })
    }

    /// Configured `Authorization` schemes, lowercased.
    pub fn schemes(&self) -> &[String] {
        &self.settings.auth.schemes
    }

    /// Configured raw-token headers.
    pub fn token_headers(&self) -> &[HeaderName] {
        &self.settings.auth.headers
    }
}

/// State that outlives snapshots: upstream connection pools, metrics,
/// rate-limit buckets, the Redis limit backend and its connection. A reload
/// builds a new snapshot against it, so pools stay warm and quotas are never
/// reset by a reload.
pub struct Lasting {
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub limiters: TokenLimiters,
    failed_auth: std::sync::Mutex<Option<Arc<FailedAuthGuard>>>,
    /// The Redis limit backend of the running config, if it uses one.
    redis: std::sync::Mutex<Option<Arc<RedisLimiter>>>,
}

impl Lasting {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Lasting {
            upstreams: Upstreams::default(),
            metrics,
            limiters: TokenLimiters::new(),
            failed_auth: Default::default(),
            redis: Default::default(),
        }
    }

    /// The Redis limit backend for `url`: the running one if its URL is
    /// unchanged, else a new, unconnected one (a changed URL on reload gets
    /// a new client). Parses the URL; does no I/O and changes nothing.
    fn redis_for(&self, url: &str) -> Result<Arc<RedisLimiter>, String> {
        let running = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref() {
            Some(r) if r.is_for(url) => Ok(r.clone()),
            _ => RedisLimiter::open(url, self.metrics.limit_backend_up.clone()),
        }
    }

    /// Makes `next` the running Redis backend (`None`: local limits). A
    /// replaced backend stops reporting; the gauge starts over at 1 (a new
    /// backend is presumed up until a check or its probe says otherwise;
    /// local limits are always up).
    fn keep_redis(&self, next: Option<Arc<RedisLimiter>>) {
        let mut running = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (running.as_ref(), next.as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = running.take() {
            old.retire();
        }
        self.metrics.limit_backend_up.set(1);
        *running = next;
    }
}

/// What a request is judged by.
pub struct Snapshot {
    pub runtime: Arc<Runtime>,
    /// `None` until the first successful token load.
    pub tokens: Option<Arc<TokenIndex>>,
}

/// The current snapshot, swapped whole on every reload.
pub struct Current(ArcSwap<Snapshot>);

impl Current {
    pub fn new(runtime: Runtime) -> Self {
        Current(ArcSwap::from_pointee(Snapshot {
            runtime: Arc::new(runtime),
            tokens: None,
        }))
    }

    /// The snapshot a request is judged by.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Replaces the config, keeping the token index.
    pub fn set_runtime(&self, runtime: Runtime) {
        let runtime = Arc::new(runtime);
        self.0.rcu(|old| Snapshot {
            runtime: runtime.clone(),
            tokens: old.tokens.clone(),
        });
    }

    /// Replaces the token index, keeping the config.
    pub fn set_tokens(&self, tokens: TokenIndex) {
        let tokens = Arc::new(tokens);
        self.0.rcu(|old| Snapshot {
            runtime: old.runtime.clone(),
            tokens: Some(tokens.clone()),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(backend: Option<&str>) -> Settings {
        let limits = match backend {
            None => String::new(),
            Some(url) => format!("limits:\n  backend: redis\n  redis_url: {url}\n"),
        };
        let text = format!(
            "listen:\n  - addr: 127.0.0.1:0\ntokens:\n  source: file\n  path: tokens.yaml\n\
             {limits}routes:\n  - prefix: /api\n    upstream: http://127.0.0.1:19999\n    scopes: [\"*\"]\n"
        );
        crate::config::load_str(Path::new("g.yaml"), &text).unwrap()
    }

    #[test]
    fn a_reload_keeps_the_redis_backend_while_its_url_is_unchanged_and_replaces_it_otherwise() {
        let lasting = Lasting::new(Metrics::new());
        let backend = |url: Option<&str>| {
            Runtime::compile(settings(url), &lasting)
                .unwrap()
                .shared_limits
        };
        let first = backend(Some("redis://127.0.0.1:6379/1")).unwrap();
        let same = backend(Some("redis://127.0.0.1:6379/1")).unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        let moved = backend(Some("redis://127.0.0.1:6379/2")).unwrap();
        assert!(!Arc::ptr_eq(&first, &moved));
        assert!(moved.is_for("redis://127.0.0.1:6379/2"));
        // Back to local limits: always up.
        lasting.metrics.limit_backend_up.set(0);
        assert!(backend(None).is_none());
        assert_eq!(lasting.metrics.limit_backend_up.get(), 1);
        let again = backend(Some("redis://127.0.0.1:6379/2")).unwrap();
        assert!(!Arc::ptr_eq(&moved, &again));
    }

    #[test]
    fn a_redis_url_the_client_cannot_use_fails_the_compile_and_keeps_the_running_backend() {
        let lasting = Lasting::new(Metrics::new());
        let running = Runtime::compile(settings(Some("redis://127.0.0.1:6379/1")), &lasting)
            .unwrap()
            .shared_limits
            .unwrap();
        let e = Runtime::compile(settings(Some("redis://:pw@127.0.0.1:6379/x")), &lasting)
            .err()
            .unwrap();
        assert!(
            e.starts_with("limits.redis_url: not a usable Redis URL"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
        let kept = Runtime::compile(settings(Some("redis://127.0.0.1:6379/1")), &lasting)
            .unwrap()
            .shared_limits
            .unwrap();
        assert!(Arc::ptr_eq(&running, &kept));
    }
}
