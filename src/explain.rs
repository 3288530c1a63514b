//! `tollgate explain`: the decision the config would take for a token (by
//! id) or an anonymous request, and why — the gateway's own admission
//! (`gateway::admit`) run with a trace.
//!
//! Invariant: prints ids, scopes and settings only; never a secret or hash.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, Method, Uri, Version};

use crate::clientip::ClientAddr;
use crate::config::Settings;
use crate::gateway::{Admission, Exchange, Head, Who};
use crate::metrics::Metrics;
use crate::policy::{Policy, Retained};
use crate::tokens::{TokenIndex, TokenUsage};

/// The decision, as text, for `token_id` (or anonymous when `None`).
pub fn explain(
    settings: &Settings,
    index: &TokenIndex,
    token_id: Option<&str>,
    client_ip: Option<IpAddr>,
    method: &str,
    path: &str,
) -> anyhow::Result<String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| anyhow::anyhow!("{method:?} is not an HTTP method"))?;
    let retained = Retained::new(Metrics::new());
    let policy = Policy::build(settings, &retained)?;
    let usage = TokenUsage::new();
    let mut out = String::new();
    let _ = writeln!(out, "request: {method} {path}");
    // Without --client-ip: an address the token may use, so the other
    // rules are the ones explained.
    let entry = token_id.and_then(|id| index.find_id(id));
    if let Some(id) = token_id.filter(|_| entry.is_some()) {
        let _ = writeln!(out, "lookup: {}", lookup_rule(settings, index, id));
    }
    let ip = match (client_ip, entry) {
        (Some(ip), _) => ip,
        (None, Some(e)) if !e.allowed_ips.is_empty() => {
            let listed: Vec<String> = e.allowed_ips.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(
                out,
                "allowed_ips: [{}] (pass --client-ip to check an address; assuming one in the list)",
                listed.join(", ")
            );
            e.allowed_ips[0].addr()
        }
        _ => IpAddr::from([127, 0, 0, 1]),
    };
    let admission = Admission {
        policy: &policy,
        tokens: Some(index),
        retained: &retained,
        usage: &usage,
        listening: true,
        draining: false,
    };
    let decision = match path.parse::<Uri>() {
        Err(_) => Err(crate::reject::Reject::BadPath),
        Ok(uri) => {
            let headers = HeaderMap::new();
            let head = Head {
                method: &method,
                uri: &uri,
                version: Version::HTTP_11,
                headers: &headers,
            };
            let client = ClientAddr {
                ip,
                peer_trusted: false,
            };
            let mut ex = Exchange::new(http::HeaderValue::from_static("explain"), client);
            let decided = admission.admit(head, Who::TokenId(token_id), &mut ex, &mut out);
            if decided.is_ok() && ex.limit_pending {
                let _ = writeln!(
                    out,
                    "rate limit: kept in Redis (limits.backend: redis), not checked here"
                );
            }
            decided.map(drop)
        }
    };
    match decision {
        Ok(()) => writeln!(
            out,
            "decision: forward (200 from the upstream, unless rate-limited)"
        )?,
        Err(reject) => {
            let a = reject.answer();
            writeln!(out, "decision: {} {} — {}", a.status, a.code, a.message)?;
        }
    }
    Ok(out)
}

/// How a request made with the token `id` finds it: by the SHA-256 of the
/// whole credential, or as a split token by its public key and a digest.
fn lookup_rule(settings: &Settings, index: &TokenIndex, id: &str) -> String {
    let Some(split) = index.split_key_of(id) else {
        return "by the SHA-256 of the presented token".into();
    };
    let pepper = &split.digest.pepper_id;
    let rules = settings.tokens.split.as_deref();
    let shape = rules.map_or(String::new(), |r| {
        format!(
            " (sent as {}{}{}<secret>)",
            r.prefix(),
            split.key,
            r.separator()
        )
    });
    let verified = if rules.is_some_and(|r| r.has_pepper(pepper)) {
        format!("verified by HMAC-SHA256 under pepper {pepper}")
    } else {
        format!(
            "pepper {pepper} is not in tokens.peppers, so every request with this token is invalid_token"
        )
    };
    format!(
        "split token: found by its public key {:?}{shape}, {verified}",
        &*split.key
    )
}
