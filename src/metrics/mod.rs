//! Prometheus metrics (§6), served by the admin listener.
//!
//! Handles are resolved when a config is compiled or on first use and kept,
//! so the request path increments an atomic rather than formatting label
//! strings. Invariant: labels are route prefixes, status codes, reason codes
//! and result words — never a token, a hash or a header value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod histogram;
pub use histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Which limit refused a request with 429 (the `reason` label of
/// `tollgate_rate_limited_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The token's own rate limit (the contract, §5 step 8).
    Token,
    /// The client address's `failed_auth_per_ip` guard (step 3).
    FailedAuth,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Token => "token",
            Limit::FailedAuth => "failed_auth",
        }
    }
}

/// Every `error` code a refusal can carry (the `reason` label).
pub const REASONS: &[&str] = &[
    "bad_path",
    "ambiguous_credentials",
    "method_not_allowed",
    "no_route",
    "missing_token",
    "invalid_token",
    "ip_not_allowed",
    "insufficient_scope",
    "read_only_token",
    "cross_site_request",
    "body_too_large",
    "uri_too_long",
    "bad_request",
    "client_closed",
    "rate_limited",
    "not_ready",
    "bad_gateway",
    "gateway_timeout",
];

/// The handles of one route (or of requests that matched none).
pub struct RouteMetrics {
    route: String,
    requests: Family<RequestLabels, Counter>,
    statuses: Box<[OnceLock<Counter>]>,
    pub upstream_duration: Histogram,
}

impl RouteMetrics {
    /// Counts one answered request.
    #[inline]
    pub fn count(&self, status: u16) {
        let slot = (status as usize).wrapping_sub(100);
        match self.statuses.get(slot) {
            Some(cell) => cell.get_or_init(|| self.counter(status)).inc(),
            None => self.counter(status).inc(),
        };
    }

    /// The counter of `status` on this route, from the family.
    fn counter(&self, status: u16) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                status,
            })
            .clone()
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Family<RouteLabels, Histogram>,
    denied: HashMap<&'static str, Counter>,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    pub no_route: Arc<RouteMetrics>,
    pub tokens_loaded: Gauge,
    pub token_source_up: Gauge,
    /// Rows of the last database read that were skipped as invalid.
    pub token_rows_invalid: Gauge,
    token_reloads: Family<ResultLabels, Counter>,
    pub limit_backend_up: Gauge,
    pub failed_auth_overflow: Counter,
    rate_limited_token: Counter,
    rate_limited_failed_auth: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tollgate_requests",
            "Requests answered, by route prefix and status",
            requests.clone(),
        );
        let denied_family = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tollgate_auth_denied",
            "Requests refused by the gateway, by error code",
            denied_family.clone(),
        );
        let denied = REASONS
            .iter()
            .map(|r| {
                (
                    *r,
                    denied_family
                        .get_or_create(&ReasonLabels { reason: r })
                        .clone(),
                )
            })
            .collect();
        let upstream_duration = Family::<RouteLabels, Histogram>::default();
        registry.register(
            "tollgate_upstream_duration_seconds",
            "Time from sending a request upstream to its response head",
            upstream_duration.clone(),
        );
        let tokens_loaded = Gauge::default();
        registry.register(
            "tollgate_tokens_loaded",
            "Entries in the token index",
            tokens_loaded.clone(),
        );
        let token_source_up = Gauge::default();
        registry.register(
            "tollgate_token_source_up",
            "1 when the last token load succeeded",
            token_source_up.clone(),
        );
        let token_rows_invalid = Gauge::default();
        registry.register(
            "tollgate_token_rows_invalid",
            "Rows of the last token read skipped as invalid (database sources)",
            token_rows_invalid.clone(),
        );
        let token_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tollgate_token_reloads",
            "Token loads, by result",
            token_reloads.clone(),
        );
        let limit_backend_up = Gauge::default();
        limit_backend_up.set(1);
        registry.register(
            "tollgate_limit_backend_up",
            "1 while the rate-limit backend answers",
            limit_backend_up.clone(),
        );
        let failed_auth_overflow = Counter::default();
        registry.register(
            "tollgate_failed_auth_overflow",
            "Failed-auth addresses that found the tracking table full",
            failed_auth_overflow.clone(),
        );
        let rate_limited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tollgate_rate_limited",
            "Requests refused with 429, by the limit that refused them",
            rate_limited.clone(),
        );
        let limited = |limit: Limit| {
            rate_limited
                .get_or_create(&ReasonLabels {
                    reason: limit.label(),
                })
                .clone()
        };
        let (rate_limited_token, rate_limited_failed_auth) =
            (limited(Limit::Token), limited(Limit::FailedAuth));
        let no_route = Arc::new(RouteMetrics {
            route: String::new(),
            requests: requests.clone(),
            statuses: (100..600).map(|_| OnceLock::new()).collect(),
            upstream_duration: Histogram::default(),
        });
        Arc::new(Metrics {
            registry,
            requests,
            upstream_duration,
            denied,
            routes: Mutex::new(HashMap::new()),
            no_route,
            tokens_loaded,
            token_source_up,
            token_rows_invalid,
            token_reloads,
            limit_backend_up,
            failed_auth_overflow,
            rate_limited_token,
            rate_limited_failed_auth,
        })
    }

    /// The handles for a route prefix, shared across reloads.
    pub fn route(&self, prefix: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(prefix.to_string())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    route: prefix.to_string(),
                    requests: self.requests.clone(),
                    statuses: (100..600).map(|_| OnceLock::new()).collect(),
                    upstream_duration: self
                        .upstream_duration
                        .get_or_create(&RouteLabels {
                            route: prefix.to_string(),
                        })
                        .clone(),
                })
            })
            .clone()
    }

    /// Counts a refusal by its `error` code.
    #[inline]
    pub fn denied(&self, reason: &'static str) {
        if let Some(c) = self.denied.get(reason) {
            c.inc();
        }
    }

    /// Counts a 429 by the limit that refused it.
    #[inline]
    pub fn rate_limited(&self, limit: Limit) {
        match limit {
            Limit::Token => self.rate_limited_token.inc(),
            Limit::FailedAuth => self.rate_limited_failed_auth.inc(),
        };
    }

    /// Counts a token load.
    pub fn token_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.token_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self, access_log_dropped: u64) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let dropped = access_log_dropped;
        // OpenMetrics names the counter family without `_total`, its
        // sample with it.
        out.push_str(
            "# HELP tollgate_access_log_dropped Access-log lines dropped under back-pressure.\n\
             # TYPE tollgate_access_log_dropped counter\n",
        );
        out.push_str(&format!("tollgate_access_log_dropped_total {dropped}\n"));
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_requests_appear_with_route_and_status_labels() {
        let m = Metrics::new();
        let r = m.route("/api/v1");
        r.count(200);
        r.count(200);
        m.no_route.count(404);
        m.denied("no_route");
        let text = m.render(0);
        assert!(
            text.contains("tollgate_requests_total{route=\"/api/v1\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("tollgate_requests_total{route=\"\",status=\"404\"} 1"));
        assert!(text.contains("tollgate_auth_denied_total{reason=\"no_route\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn rate_limited_requests_are_counted_by_the_limit_that_refused_them() {
        let m = Metrics::new();
        let before = m.render(0);
        assert!(before.contains("tollgate_rate_limited_total{reason=\"token\"} 0"));
        assert!(before.contains("tollgate_rate_limited_total{reason=\"failed_auth\"} 0"));
        m.rate_limited(Limit::Token);
        m.rate_limited(Limit::Token);
        m.rate_limited(Limit::FailedAuth);
        let text = m.render(0);
        assert!(
            text.contains("tollgate_rate_limited_total{reason=\"token\"} 2"),
            "{text}"
        );
        assert!(text.contains("tollgate_rate_limited_total{reason=\"failed_auth\"} 1"));
    }

    #[test]
    fn access_log_drops_are_rendered_as_an_openmetrics_counter() {
        let text = Metrics::new().render(7);
        assert!(text.contains("# TYPE tollgate_access_log_dropped counter\n"));
        assert!(text.contains("\ntollgate_access_log_dropped_total 7\n# EOF\n"));
    }

    #[test]
    fn every_counter_family_is_named_without_total_and_sampled_with_it() {
        let m = Metrics::new();
        m.route("/a").count(200);
        m.denied("no_route");
        m.token_reload(true);
        let text = m.render(0);
        let counters: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        assert!(counters.len() >= 6, "{text}");
        for family in counters {
            assert!(!family.ends_with("_total"), "{family}");
            let sample = format!("{family}_total");
            assert!(
                text.lines().any(|l| l.starts_with(&sample)),
                "{family} has no {sample} sample"
            );
        }
    }

    #[test]
    fn the_same_prefix_shares_handles_across_reloads() {
        let m = Metrics::new();
        assert!(Arc::ptr_eq(&m.route("/a"), &m.route("/a")));
    }
}
