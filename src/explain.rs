//! `tollgate explain`: the decision the config would take for a token (by
//! id) or an anonymous request, and why — built from the same steps the
//! gateway runs.
//!
//! Invariant: prints ids, scopes and settings only; never a secret or hash.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Uri};

use crate::config::{RouteScopes, Settings};
use crate::gateway::authorize;
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::snapshot::{Lasting, Runtime};
use crate::tokens::TokenIndex;
use crate::{method, target};

/// The decision, as text, for `token_id` (or anonymous when `None`).
pub fn explain(
    settings: Settings,
    index: &TokenIndex,
    token_id: Option<&str>,
    client_ip: Option<IpAddr>,
    method: &str,
    path: &str,
) -> anyhow::Result<String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| anyhow::anyhow!("{method:?} is not an HTTP method"))?;
    let rt = Runtime::compile(settings, &Lasting::new(Metrics::new()))
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut out = String::new();
    let decision = decide(&rt, index, token_id, client_ip, &method, path, &mut out);
    match decision {
        Ok(()) => writeln!(
            out,
            "decision: forward (200 from the upstream, unless rate-limited)"
        )?,
        Err(reject) => {
            let a = reject.answer();
            writeln!(
                out,
                "decision: {} {} — {}",
                a.status.as_u16(),
                a.code,
                a.message
            )?;
        }
    }
    Ok(out)
}

fn decide(
    rt: &Runtime,
    index: &TokenIndex,
    token_id: Option<&str>,
    client_ip: Option<IpAddr>,
    method: &Method,
    path: &str,
    out: &mut String,
) -> Result<(), Reject> {
    let _ = writeln!(out, "request: {method} {path}");
    if method == Method::TRACE || method == Method::CONNECT {
        let _ = writeln!(out, "method: TRACE and CONNECT are always refused");
        return Err(Reject::MethodNotAllowed);
    }
    let uri: Uri = path.parse().map_err(|_| Reject::BadPath)?;
    let target = target::parse(&uri).map_err(|e| {
        let _ = writeln!(out, "path: refused ({e:?})");
        Reject::BadPath
    })?;
    let route = rt.routes.lookup(&target.path).ok_or_else(|| {
        let _ = writeln!(out, "route: none matches {}", target.path);
        Reject::NoRoute
    })?;
    let _ = writeln!(
        out,
        "route: {} -> {}://{}{}",
        route.prefix, route.scheme, route.authority, route.base_path
    );
    let scopes = match &route.scopes {
        RouteScopes::AnyToken => "any valid token".to_string(),
        RouteScopes::OneOf(s) => format!(
            "any of [{}] or {}",
            s.join(", "),
            rt.settings.auth.all_scope
        ),
    };
    let _ = writeln!(
        out,
        "route requires: {scopes}; anonymous read: {}",
        route.anonymous_read
    );
    let writes = method::is_write(method, &HeaderMap::new(), target.query);
    let _ = writeln!(out, "writes: {writes}");
    let Some(id) = token_id else {
        if route.anonymous_read && !writes {
            let _ = writeln!(out, "anonymous: allowed (read on an anonymous: read route)");
            return Ok(());
        }
        let _ = writeln!(out, "anonymous: refused");
        return Err(Reject::MissingToken);
    };
    let Some(entry) = index.find_id(id) else {
        let _ = writeln!(out, "token: no token with id {id:?}");
        return Err(Reject::InvalidToken);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let _ = writeln!(
        out,
        "token: {id}; scopes [{}]; read-only {}; disabled {}; expires {}",
        entry.scopes.names.join(", "),
        entry.read_only,
        entry.disabled,
        entry.expires_at.map_or("never".to_string(), |t| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        })
    );
    if !entry.is_live(now) {
        let _ = writeln!(
            out,
            "token: {}",
            if entry.disabled {
                "disabled"
            } else {
                "expired"
            }
        );
        return Err(Reject::InvalidToken);
    }
    let ip = match client_ip {
        Some(ip) => ip,
        None if entry.allowed_ips.is_empty() => IpAddr::from([127, 0, 0, 1]),
        None => {
            let _ = writeln!(
                out,
                "allowed_ips: [{}] (pass --client-ip to check an address; assuming one in the list)",
                entry.allowed_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
            );
            entry.allowed_ips[0].addr()
        }
    };
    authorize(route, entry, writes, ip, &rt.settings.auth.all_scope)?;
    let rate = entry.rate_limit.unwrap_or(rt.settings.limits.per_token);
    let _ = writeln!(
        out,
        "rate limit: {} per {:?}, burst {}{}",
        rate.requests,
        rate.per,
        rate.burst,
        if entry.rate_limit.is_some() {
            " (token override)"
        } else {
            " (limits.per_token)"
        }
    );
    Ok(())
}
