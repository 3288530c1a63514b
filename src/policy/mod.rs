//! The policy: everything a request is judged and forwarded by, built
//! from validated [`Settings`] — the route table with each route's
//! upstream, the credential rules, the limiters, the TLS configs — and the
//! state that outlives it ([`Retained`]).
//!
//! `Settings → Policy` happens once per config load, off the request path;
//! the request path reads the policy's prepared values and never the
//! settings' nested fields. Invariant: a build that fails changes nothing —
//! retained state follows a new policy only when [`Retained::adopt`] is
//! called with a policy that was built completely.

mod current;
mod retained;

pub use current::{Current, Snapshot};
pub use retained::Retained;

use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;

use crate::auth::{Credentials, RouteAccess, Sessions};
use crate::config::{ConfigErrors, LimitBackend, Rate, RouteScopes, Settings};
use crate::method::ReadMethods;
use crate::metrics::RouteMetrics;
use crate::proxy::{Upstream, UpstreamError};
use crate::ratelimit::{FailedAuthGuard, RedisLimiter};
use crate::reject::Challenges;
use crate::routes::RouteTable;

/// One route, built for the request path.
pub struct Route {
    /// The prefix, also the `route` label of logs and metrics.
    pub prefix: Arc<str>,
    /// Who may use the route: scopes, their challenge, anonymous reads.
    pub access: RouteAccess,
    pub strip_prefix: bool,
    pub max_body_bytes: Option<u64>,
    /// The methods that count as reading here (`read_methods`).
    pub read_methods: ReadMethods,
    /// Headers never forwarded: `forwarding.remove_request_headers`, then
    /// the route's own; `None` when there are none.
    pub remove_headers: Option<Arc<[HeaderName]>>,
    /// `send_keep_alive`: ask the upstream to keep the connection open.
    pub send_keep_alive: bool,
    pub upstream: Upstream,
    pub metrics: Arc<RouteMetrics>,
}

/// Everything built from one config file.
pub struct Policy {
    pub settings: Settings,
    pub routes: RouteTable<Route>,
    pub challenges: Challenges,
    /// Which headers carry a credential, and whether they are forwarded.
    pub credentials: Credentials,
    /// `sessions`: the login pages and the session cookie; `None` without.
    pub sessions: Option<Sessions>,
    /// `paths.merge_slashes`.
    pub merge_slashes: bool,
    /// `auth.all_scope`.
    pub all_scope: Box<str>,
    /// `client_ip.trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
    /// `limits.per_token`: the rate of every token without its own.
    pub per_token: Rate,
    /// `log.access`.
    pub log_access: bool,
    /// The failed-auth guard for `limits.failed_auth_per_ip` (the same one
    /// across reloads while the rate is unchanged).
    pub failed_auth: Arc<FailedAuthGuard>,
    /// With `limits.backend: redis`, where token limits are kept (the same
    /// one across reloads while the URL is unchanged); `None` for `local`.
    pub shared_limits: Option<Arc<RedisLimiter>>,
    /// TLS server config per listener, by position in `listen`.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

impl Policy {
    /// Builds the policy for `settings`, reusing what `retained` already
    /// holds (upstream clients, the failed-auth guard, the Redis backend)
    /// where the settings match. Every error is reported, each as
    /// `<file>:<line>: <key path>: <message>`. Changes nothing retained:
    /// see [`Retained::adopt`].
    pub fn build(settings: &Settings, retained: &Retained) -> Result<Policy, ConfigErrors> {
        let mut errors = Vec::new();
        let challenges = Challenges::new(&settings.auth.realm);
        let mut entries = Vec::with_capacity(settings.routes.len());
        for (index, r) in settings.routes.iter().enumerate() {
            let upstream = Upstream::new(
                r.prefix.as_str().into(),
                &r.upstream,
                settings.timeouts.upstream_connect,
                r.upstream_response_timeout
                    .unwrap_or(settings.timeouts.upstream_response),
                r.upstream_ca.as_deref(),
                &retained.upstreams,
            );
            let upstream = match upstream {
                Ok(u) => u,
                Err(e) => {
                    let key = match e {
                        UpstreamError::Url(_) => "upstream",
                        UpstreamError::Ca(_) => "upstream_ca",
                    };
                    errors.push(settings.error(&format!("routes[{index}].{key}"), e.to_string()));
                    continue;
                }
            };
            let scope_names = match &r.scopes {
                RouteScopes::AnyToken => vec!["*".to_string()],
                RouteScopes::OneOf(s) => s.clone(),
            };
            let route = Route {
                prefix: r.prefix.as_str().into(),
                access: RouteAccess {
                    scopes: r.scopes.clone(),
                    challenge: challenges.insufficient_scope(&scope_names),
                    anonymous_read: r.anonymous_read,
                    browser: r.browser,
                },
                strip_prefix: r.strip_prefix,
                max_body_bytes: r.max_body_bytes.or(settings.limits.max_body_bytes),
                read_methods: r
                    .read_methods
                    .clone()
                    .map_or_else(ReadMethods::default, ReadMethods::only),
                remove_headers: {
                    let mut names = settings.remove_request_headers.clone();
                    names.extend(r.remove_request_headers.iter().cloned());
                    (!names.is_empty()).then(|| names.into())
                },
                send_keep_alive: r.send_keep_alive,
                upstream,
                metrics: retained.metrics.route(&r.prefix),
            };
            entries.push((r.prefix.clone(), route));
        }
        let mut tls = Vec::with_capacity(settings.listeners.len());
        for (i, l) in settings.listeners.iter().enumerate() {
            match l.tls.as_ref().map(crate::tls::server_config).transpose() {
                Ok(config) => tls.push(config),
                Err(e) => errors.push(settings.error(&format!("listen[{i}].tls"), e)),
            }
        }
        let shared_limits = match &settings.limits.backend {
            LimitBackend::Local => None,
            LimitBackend::Redis { url } => match retained.redis_for(url) {
                Ok(redis) => Some(redis),
                Err(e) => {
                    errors.push(settings.error("limits.redis_url", e));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Policy {
            failed_auth: retained.failed_auth_for(settings.limits.failed_auth_per_ip),
            shared_limits,
            tls,
            routes: RouteTable::new(entries),
            challenges,
            credentials: Credentials::new(&settings.auth),
            sessions: settings.sessions.as_ref().map(Sessions::new),
            merge_slashes: settings.merge_slashes,
            all_scope: settings.auth.all_scope.as_str().into(),
            trusted_proxies: settings.client_ip.trusted_proxies.clone(),
            per_token: settings.limits.per_token,
            log_access: settings.log.access,
            settings: settings.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::metrics::Metrics;

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
        let retained = Retained::new(Metrics::new());
        let backend = |url: Option<&str>| {
            let policy = Policy::build(&settings(url), &retained).unwrap();
            retained.adopt(&policy);
            policy.shared_limits
        };
        let first = backend(Some("redis://127.0.0.1:6379/1")).unwrap();
        let same = backend(Some("redis://127.0.0.1:6379/1")).unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        let moved = backend(Some("redis://127.0.0.1:6379/2")).unwrap();
        assert!(!Arc::ptr_eq(&first, &moved));
        assert!(moved.is_for("redis://127.0.0.1:6379/2"));
        // Back to local limits: always up.
        retained.metrics.limit_backend_up.set(0);
        assert!(backend(None).is_none());
        assert_eq!(retained.metrics.limit_backend_up.get(), 1);
        let again = backend(Some("redis://127.0.0.1:6379/2")).unwrap();
        assert!(!Arc::ptr_eq(&moved, &again));
    }

    #[test]
    fn a_redis_url_the_client_cannot_use_fails_the_compile_and_keeps_the_running_backend() {
        let retained = Retained::new(Metrics::new());
        let policy = Policy::build(&settings(Some("redis://127.0.0.1:6379/1")), &retained).unwrap();
        retained.adopt(&policy);
        let running = policy.shared_limits.unwrap();
        let e = Policy::build(&settings(Some("redis://:pw@127.0.0.1:6379/x")), &retained)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("g.yaml:8: limits.redis_url: not a usable Redis URL"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
        let kept = Policy::build(&settings(Some("redis://127.0.0.1:6379/1")), &retained)
            .unwrap()
            .shared_limits
            .unwrap();
        assert!(Arc::ptr_eq(&running, &kept));
    }
}
