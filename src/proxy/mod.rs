//! Forwarding: the pooled upstream clients and the one step of a request
//! that does I/O.
//!
//! Plain `http` upstreams are reached through each worker's own pool of
//! HTTP/1.1 connections (`pool`). For `https` upstreams and WebSocket
//! upgrades, one `hyper_util` client per distinct (connect timeout, CA
//! bundle) is shared by every route and connection. Both kinds of pool
//! survive reloads, so upstream keep-alive connections are reused. Both
//! legs set `TCP_NODELAY`.
//! Invariant: bodies stream both ways; nothing here buffers a body.

pub mod body;
pub mod headers;
mod pool;

pub use pool::Lease;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use self::body::{BodyTooLarge, ClientBodyError, Progress, RequestBody};
use crate::progress::within;
use crate::reject::Reject;

/// A pooled HTTP/1.1 client to upstreams, `http` or `https`.
pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Idle upstream connections are closed before common upstream keep-alive
/// timeouts (nginx 75 s) so a reused connection is rarely stale.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(50);

/// What makes two upstream clients differ: connect timeout and CA bundle.
type ClientKey = (Duration, Option<PathBuf>);

/// A built client and the CA bundle bytes it trusts.
type BuiltClient = (Option<Vec<u8>>, Client);

/// The clients, by what makes them differ. Consulted when a config is
/// compiled, never per request.
#[derive(Default)]
pub struct Upstreams {
    /// By connect timeout and CA bundle path: the bundle's bytes when the
    /// client was built, and the client.
    clients: Mutex<HashMap<ClientKey, BuiltClient>>,
}

impl Upstreams {
    /// The client for this connect timeout and optional CA bundle. The
    /// bundle is read on every call (every compile), so a bundle replaced
    /// in place is trusted from the next reload on.
    pub fn client(&self, connect_timeout: Duration, ca: Option<&Path>) -> Result<Client, String> {
        let pem = ca
            .map(|p| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())))
            .transpose()?;
        let key = (connect_timeout, ca.map(Path::to_path_buf));
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_from, c)) = clients.get(&key) {
            if *built_from == pem {
                return Ok(c.clone());
            }
        }
        let client = build_client(connect_timeout, ca.zip(pem.as_deref()))?;
        clients.insert(key, (pem, client.clone()));
        Ok(client)
    }
}

/// One route's upstream, compiled for the request path: where to connect,
/// what to send as `Host`, how long to wait, and the client to use.
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The upstream URL's path without a trailing `/` ("" for none).
    pub base_path: Box<str>,
    /// `Host` as sent upstream (the upstream's own, as a client would send it).
    pub host: HeaderValue,
    /// The upstream's number in the per-worker pools.
    number: usize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The route this upstream serves, for log lines.
    pub route: Arc<str>,
    /// The pooled client for `https` and WebSocket upgrades (shared across
    /// routes and reloads where the settings match).
    client: Client,
}

impl Upstream {
    /// The upstream at `url`, with `ca` trusted besides the web PKI roots.
    /// Errors name what is wrong, for the config key they came from.
    pub fn new(
        route: Arc<str>,
        url: &Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
        ca: Option<&Path>,
        upstreams: &Upstreams,
    ) -> Result<Upstream, UpstreamError> {
        let scheme = url
            .scheme()
            .cloned()
            .ok_or(UpstreamError::Url("has no scheme".into()))?;
        let authority = url
            .authority()
            .cloned()
            .ok_or(UpstreamError::Url("has no host".into()))?;
        let host = host_header(&scheme, &authority).map_err(UpstreamError::Url)?;
        let client = upstreams
            .client(connect_timeout, ca)
            .map_err(UpstreamError::Ca)?;
        Ok(Upstream {
            number: pool::upstream_number(&authority),
            base_path: url.path().trim_end_matches('/').into(),
            scheme,
            authority,
            host,
            connect_timeout,
            response_timeout,
            route,
            client,
        })
    }

    /// The upstream request's target, origin-form: the upstream URL's path,
    /// `path` (already canonical, its prefix stripped if the route says so)
    /// and the untouched query.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<Uri, Reject> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq))
            .map(Uri::from)
            .map_err(|_| Reject::BadPath)
    }
}

/// Why an upstream could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL (the `upstream` key).
    #[error("{0}")]
    Url(String),
    /// The CA bundle (the `upstream_ca` key).
    #[error("{0}")]
    Ca(String),
}

fn build_client(connect_timeout: Duration, ca: Option<(&Path, &[u8])>) -> Result<Client, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let tls = tls_client_config(ca)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .timer(TokioTimer::new())
            .build(connector),
    )
}

/// Web PKI roots, plus the certificates of the bundle `ca` (its path, for
/// errors, and its PEM bytes) when given.
fn tls_client_config(ca: Option<(&Path, &[u8])>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some((ca, mut pem)) = ca {
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!("{} holds no PEM certificate", ca.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The `Host` an upstream at `authority` is sent: its host, and its port
/// unless the scheme's default (as `hyper_util`'s client writes it).
pub fn host_header(
    scheme: &Scheme,
    authority: &http::uri::Authority,
) -> Result<HeaderValue, String> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_string(),
    };
    HeaderValue::from_str(&host).map_err(|e| format!("{host}: {e}"))
}

/// What came back from the upstream: the response head, and its body
/// streaming or, after `101 Switching Protocols`, the tunnel both sides
/// now speak through.
pub struct Forwarded {
    pub head: http::response::Parts,
    pub body: Upstreamed,
}

/// The body of a [`Forwarded`] response.
pub enum Upstreamed {
    /// The body streaming, and the pooled connection it arrives on (to be
    /// dropped once the body is done).
    Streaming(Incoming, Option<Lease>),
    /// A WebSocket upgrade both sides accepted: bytes now flow through a
    /// tunnel task; the response has no body.
    Tunnel,
}

/// Sends a prepared request (origin-form target, every header rule already
/// applied) upstream and returns its response head with the body
/// streaming. Waits at most the upstream's response timeout for the head.
/// The response's headers are the upstream's as sent; filtering them is
/// the caller's.
///
/// With `progress` (a request body that streams), the wait is bounded by
/// lack of progress instead: the body may take as long as it needs while
/// it keeps moving, and the head must arrive within the timeout of the
/// body's last frame.
pub async fn forward(
    upstream: &Upstream,
    mut req: Request<RequestBody>,
    websocket: Option<hyper::upgrade::OnUpgrade>,
    progress: Option<Arc<Progress>>,
) -> Result<Forwarded, Reject> {
    *req.version_mut() = Version::HTTP_11;
    let sent = async {
        if websocket.is_none() && upstream.scheme == Scheme::HTTP {
            let (resp, lease) = pool::send(
                upstream.number,
                &upstream.authority,
                upstream.connect_timeout,
                req,
            )
            .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((resp, Some(lease)))
        } else {
            // `hyper_util`'s client reads the upstream from an absolute URI.
            let mut uri = std::mem::take(req.uri_mut()).into_parts();
            uri.scheme = Some(upstream.scheme.clone());
            uri.authority = Some(upstream.authority.clone());
            *req.uri_mut() = Uri::from_parts(uri)?;
            Ok((upstream.client.request(req).await?, None))
        }
    };
    let (mut resp, lease) = match within(upstream.response_timeout, progress.as_deref(), sent).await
    {
        Err(_) => {
            warn_upstream(upstream, &"no response head within the timeout");
            return Err(Reject::GatewayTimeout);
        }
        Ok(Err(e)) => {
            let reject = classify(&*e);
            if reject == Reject::BadGateway {
                warn_upstream(upstream, &Chain(&*e));
            }
            return Err(reject);
        }
        Ok(Ok(sent)) => sent,
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_side = switching.then(|| hyper::upgrade::on(&mut resp));
    let (head, body) = resp.into_parts();
    match (upstream_side, websocket) {
        (Some(upstream_side), Some(client_side)) => {
            tokio::spawn(tunnel(client_side, upstream_side));
            Ok(Forwarded {
                head,
                body: Upstreamed::Tunnel,
            })
        }
        (Some(_), None) => Err(Reject::BadGateway),
        (None, _) => Ok(Forwarded {
            head,
            body: Upstreamed::Streaming(body, lease),
        }),
    }
}

/// Copies bytes both ways once both sides have switched protocols.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Whose fault a failed exchange was: 413 when our own body limit stopped
/// the request, 400 or 499 when the client's body failed (malformed, or
/// the client went away), else the upstream's 502.
fn classify(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Reject {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<BodyTooLarge>() {
            return Reject::BodyTooLarge;
        }
        if let Some(client) = err.downcast_ref::<ClientBodyError>() {
            return if client.closed {
                Reject::ClientClosed
            } else {
                Reject::BadRequest
            };
        }
        source = err.source();
    }
    Reject::BadGateway
}

/// An error and its sources, `: `-separated (hyper's top-level errors say
/// only "client error (Connect)"; the cause is below).
struct Chain<'e>(&'e (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Upstream failures are logged at `warn`, at most once a second: the
/// upstream and the cause (its source chain; hyper's errors name no request
/// data), with how many were held back since the last line.
fn warn_upstream(upstream: &Upstream, cause: &dyn std::fmt::Display) {
    static GATE: crate::diagnostics::OncePerSecond = crate::diagnostics::OncePerSecond::new();
    if let Some(held_back) = GATE.allow() {
        tracing::warn!(
            route = %upstream.route,
            upstream = %upstream.authority,
            cause = %cause,
            held_back,
            "upstream request failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(url: &str) -> HeaderValue {
        let uri: Uri = url.parse().unwrap();
        host_header(uri.scheme().unwrap(), uri.authority().unwrap()).unwrap()
    }

    #[test]
    fn the_upstream_host_leaves_out_only_the_schemes_default_port() {
        assert_eq!(host("http://api.internal"), "api.internal");
        assert_eq!(host("http://api.internal:80"), "api.internal");
        assert_eq!(host("http://api.internal:8080"), "api.internal:8080");
        assert_eq!(host("http://api.internal:443"), "api.internal:443");
        assert_eq!(host("https://api.internal:443"), "api.internal");
        assert_eq!(host("https://api.internal:80"), "api.internal:80");
        assert_eq!(host("http://[::1]:19999"), "[::1]:19999");
    }
}
