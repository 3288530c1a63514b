//! `tollgate demo`: the real gateway on a config (by default the bundled
//! Netdata-style sample) plus a built-in echo upstream on every loopback
//! upstream address the routes name, and ready-to-paste curl commands.
//!
//! The echo upstream answers every request with a JSON description of what
//! it received (method, path, query, headers), so a newcomer sees exactly
//! what the gateway forwards. Invariant: the secrets printed are the
//! documented demo-only ones of `config/tokens.yaml`, never real ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config;

/// The demo-only secrets whose hashes `config/tokens.yaml` holds.
pub const DEMO_SECRETS: &[(&str, &str)] = &[
    ("demo-admin", "demo-admin-secret"),
    ("demo-grafana", "demo-grafana-secret"),
    ("demo-agent", "demo-agent-secret"),
    ("demo-revoked", "demo-revoked-secret"),
];

/// Runs the demo until SIGTERM/SIGINT.
pub async fn run(config_path: &Path, extra_workers: usize) -> anyhow::Result<()> {
    let settings = config::load(config_path)?;
    crate::diagnostics::init(&settings);
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    for route in &settings.routes {
        let Some(authority) = route.upstream.authority() else {
            continue;
        };
        if route.upstream.scheme_str() != Some("http") {
            continue;
        }
        let port = authority.port_u16().unwrap_or(80);
        let Ok(ip) = authority
            .host()
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, port);
        if ip.is_loopback() && !upstreams.contains(&addr) {
            upstreams.push(addr);
        }
    }
    for addr in &upstreams {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::spawn(serve_echo(listener));
            }
            Err(e) => eprintln!("demo: echo upstream not started on {addr}: {e} (something else may be serving there)"),
        }
    }
    let options = crate::server::launch::Options {
        sink: Box::new(std::io::stdout()),
        extra_workers,
    };
    let launched = crate::server::launch::launch_with(settings, options).await?;
    let base = match launched.data_addrs.first() {
        Some(addr) if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        Some(addr) => format!("http://{addr}"),
        None => anyhow::bail!("the config has no listener"),
    };
    eprintln!("{}", instructions(&base, launched.admin_addr));
    crate::server::signal::run_until_stopped(launched).await
}

/// The curl commands printed by the demo.
pub fn instructions(base: &str, admin: Option<SocketAddr>) -> String {
    let mut s = format!(
        "\nTollgate demo is running on {base} in front of a built-in echo upstream.\n\
         Demo-only tokens (see config/tokens.yaml): demo-admin-secret (scope:all), \
         demo-agent-secret (scope:agent-ui), demo-grafana-secret (scope:grafana-plugin, read-only), \
         demo-revoked-secret (disabled).\n\n\
         # 200: a token with the route's scope; the echo shows X-Tollgate-Token-Id\n\
         curl -i -H 'Authorization: Bearer demo-agent-secret' {base}/api/v1/info\n\n\
         # 401 missing_token, then 401 invalid_token (a revoked token)\n\
         curl -i {base}/api/v1/info\n\
         curl -i -H 'Authorization: Bearer demo-revoked-secret' {base}/api/v1/info\n\n\
         # 403 read_only_token: a read-only token that writes\n\
         curl -i -X POST -H 'Authorization: Bearer demo-grafana-secret' {base}/api/v2/query\n\n\
         # 403 insufficient_scope: the grafana token on the agent route\n\
         curl -i -H 'Authorization: Bearer demo-grafana-secret' {base}/api/v1/info\n\n\
         # 200 without a token: /api/v3 allows anonymous reads\n\
         curl -i {base}/api/v3/info\n"
    );
    if let Some(admin) = admin {
        s.push_str(&format!(
            "\n# metrics and readiness\ncurl http://{admin}/metrics\ncurl http://{admin}/readyz\n"
        ));
    }
    s.push_str("\nCtrl-C stops the demo.\n");
    s
}

/// Serves the echo upstream on `listener` forever.
pub async fn serve_echo(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let json = serde_json::json!({
        "upstream": "tollgate demo echo",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{json:#}\n"))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
