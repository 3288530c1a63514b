//! TLS through the real server: HTTPS listeners serving HTTP/1.1 and, by
//! ALPN, HTTP/2; certificates rotated by a reload; HTTPS upstreams verified
//! against the web roots or a route's `upstream_ca`.
//!
//! Certificates come from a test CA made with rcgen at test time; clients
//! trust only that CA and connect by the name `localhost`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client_h1, http2 as client_h2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A throwaway certificate authority.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate for `localhost` and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `localhost` with this common name and serial number.
    pub fn leaf(&self, common_name: &str, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir` (atomically each) and
    /// returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        replace_file(&cert, &self.cert_pem);
        replace_file(&key, &self.key_pem);
        (cert, key)
    }
}

/// A rustls client that trusts only `ca_pem` and offers `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` verified for the name `localhost`.
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway")
}

/// The leaf certificate the server presented.
pub fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub async fn read_answer(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// An HTTP/1.1 client connection over `io`.
pub async fn h1_client<I>(io: I) -> client_h1::SendRequest<Empty<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = client_h1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 client connection over `io`.
pub async fn h2_client<I, B>(io: I) -> client_h2::SendRequest<B>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = client_h2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET path` with a bearer token, in the form HTTP/1.1 wants.
fn h1_get(path: &str, secret: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "gw.test")
        .header("authorization", format!("Bearer {secret}"))
        .body(Empty::new())
        .unwrap()
}

/// A gateway whose `listen[1]` is TLS with the files `leaf` is written to
/// in `dir`.
async fn tls_gateway(up: &Upstream, leaf: &Leaf, dir: &Path, extra_routes: &str) -> Gw {
    let (cert, key) = leaf.write(dir);
    let config = gateway_yaml(up.addr, extra_routes).replacen(
        "listen:\n  - addr: 127.0.0.1:0\n",
        &format!(
            "listen:\n  - addr: 127.0.0.1:0\n  - addr: 127.0.0.1:0\n    tls:\n      cert: {}\n      key: {}\n",
            cert.display(),
            key.display()
        ),
        1,
    );
    Gw::start(&config, &tokens_yaml()).await
}

#[tokio::test]
async fn https_over_http1_reaches_the_upstream_marked_https() {
    let pki = Pki::new("tls test CA");
    let certs = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let gw = tls_gateway(&up, &pki.leaf("gateway", 1), certs.path(), "").await;

    let tls = connect_tls(
        gw.launched.data_addrs[1],
        client_config(&pki.ca_pem(), &[b"http/1.1"]),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut client = h1_client(tls).await;
    let a = read_answer(
        client
            .send_request(h1_get("/api/v1/items?q=1", AGENT))
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(a.status, 200);
    assert_eq!(a.version, Version::HTTP_11);
    assert_eq!(&a.body[..], b"upstream says hi");
    let seen = up.only();
    assert_eq!(seen.target, "/api/v1/items?q=1");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gw.test"));
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn https_with_alpn_h2_is_served_over_http2_and_marked_https() {
    let pki = Pki::new("tls test CA");
    let certs = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let gw = tls_gateway(&up, &pki.leaf("gateway", 1), certs.path(), "").await;

    let tls = connect_tls(
        gw.launched.data_addrs[1],
        client_config(&pki.ca_pem(), &[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut client = h2_client(tls).await;
    let req = Request::post("https://api.example.test/api/v1/items")
        .header("authorization", format!("Bearer {AGENT}"))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let a = read_answer(client.send_request(req).await.unwrap()).await;

    assert_eq!(a.status, 200);
    assert_eq!(a.version, Version::HTTP_2);
    assert_eq!(&a.body[..], b"upstream says hi");
    let seen = up.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/v1/items");
    assert_eq!(&seen.body[..], b"over h2");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.test"));
    assert_eq!(seen.header("x-tollgate-token-id"), Some("agent"));
}

#[tokio::test]
async fn a_reload_serves_a_rotated_certificate_to_new_connections_while_old_ones_keep_working() {
    let pki = Pki::new("tls test CA");
    let certs = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let before = pki.leaf("gateway-before", 1001);
    let gw = tls_gateway(&up, &before, certs.path(), "").await;
    let addr = gw.launched.data_addrs[1];
    let config = client_config(&pki.ca_pem(), &[b"http/1.1"]);

    let old_tls = connect_tls(addr, config.clone()).await;
    assert_eq!(presented(&old_tls), before.der);
    let mut old = h1_client(old_tls).await;
    let first = old
        .send_request(h1_get("/api/v1/one", AGENT))
        .await
        .unwrap();
    assert_eq!(read_answer(first).await.status, 200);

    let after = pki.leaf("gateway-after", 2002);
    after.write(certs.path());
    gw.launched
        .control
        .reload()
        .await
        .expect("reload accepts the new files");

    let new_tls = connect_tls(addr, config.clone()).await;
    assert_eq!(
        presented(&new_tls),
        after.der,
        "a new connection gets the new leaf"
    );
    assert_ne!(before.der, after.der);
    let mut new = h1_client(new_tls).await;
    let fresh = new
        .send_request(h1_get("/api/v1/new", AGENT))
        .await
        .unwrap();
    assert_eq!(read_answer(fresh).await.status, 200);

    // The connection opened before the reload still serves requests.
    let again = old
        .send_request(h1_get("/api/v1/two", AGENT))
        .await
        .unwrap();
    assert_eq!(read_answer(again).await.status, 200);
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/api/v1/one", "/api/v1/new", "/api/v1/two"]);
}

#[tokio::test]
async fn a_reload_with_an_unusable_key_keeps_the_running_certificate() {
    let pki = Pki::new("tls test CA");
    let certs = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let leaf = pki.leaf("gateway", 1);
    let gw = tls_gateway(&up, &leaf, certs.path(), "").await;

    let other = pki.leaf("gateway-other", 2);
    replace_file(&certs.path().join("cert.pem"), &other.cert_pem);
    replace_file(&certs.path().join("key.pem"), "not a key\n");
    let err = gw.launched.control.reload().await.unwrap_err();
    assert!(err.contains("key.pem"), "{err}");
    assert!(
        !err.contains("not a key"),
        "the error quotes no key material: {err}"
    );

    let tls = connect_tls(
        gw.launched.data_addrs[1],
        client_config(&pki.ca_pem(), &[b"http/1.1"]),
    )
    .await;
    assert_eq!(presented(&tls), leaf.der);
}

/// What the TLS upstream saw: path and `X-Forwarded-Proto`, per request.
type Hits = Arc<Mutex<Vec<String>>>;

/// An HTTPS upstream on 127.0.0.1 serving `leaf` (HTTP/1.1).
async fn tls_upstream(leaf: &Leaf) -> (SocketAddr, Hits) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::try_from(leaf.key_der.clone()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Hits = Arc::default();
    let recorded = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let host = req
                            .headers()
                            .get("host")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        recorded
                            .lock()
                            .unwrap()
                            .push(format!("{} {proto} {host}", req.uri().path()));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                            b"tls upstream",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A gateway with `/secure` (trusting `ca.pem`) and `/untrusted` (web roots
/// only), both to the same HTTPS upstream.
/// Also returns the upstream's port.
async fn https_upstream_gateway() -> (Gw, Hits, tempfile::TempDir, u16) {
    let pki = Pki::new("upstream test CA");
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let (addr, hits) = tls_upstream(&pki.leaf("upstream", 7)).await;
    let plain = Upstream::start().await;
    let routes = format!(
        "  - prefix: /secure\n    upstream: https://localhost:{port}\n    scopes: [\"*\"]\n    upstream_ca: {ca}\n  - prefix: /untrusted\n    upstream: https://localhost:{port}\n    scopes: [\"*\"]\n",
        port = addr.port(),
        ca = ca.display(),
    );
    let gw = Gw::start(&gateway_yaml(plain.addr, &routes), &tokens_yaml()).await;
    (gw, hits, files, addr.port())
}

#[tokio::test]
async fn an_https_upstream_signed_by_the_routes_upstream_ca_is_trusted() {
    let (gw, hits, _files, port) = https_upstream_gateway().await;
    let r = get(gw.addr(), "/secure/x", &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"tls upstream");
    // The Host sent is the upstream's own, port included (not 443).
    let sent = format!("/secure/x http localhost:{port}");
    assert_eq!(*hits.lock().unwrap(), [sent]);
}

#[tokio::test]
async fn an_https_upstream_outside_the_web_roots_without_upstream_ca_is_a_bad_gateway() {
    let (gw, hits, _files, _) = https_upstream_gateway().await;
    let r = get(gw.addr(), "/untrusted/x", &[&bearer(AGENT)]).await;
    assert_refusal(&r, 502, "bad_gateway");
    assert!(hits.lock().unwrap().is_empty(), "no request reached it");
}

#[tokio::test]
async fn a_reload_rereads_an_upstream_ca_bundle_replaced_in_place() {
    let pki = Pki::new("upstream test CA");
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    // At first the bundle holds some other CA.
    std::fs::write(&ca, Pki::new("some other CA").ca_pem()).unwrap();
    let (addr, hits) = tls_upstream(&pki.leaf("upstream", 7)).await;
    let plain = Upstream::start().await;
    let routes = format!(
        "  - prefix: /secure\n    upstream: https://localhost:{}\n    scopes: [\"*\"]\n    upstream_ca: {}\n",
        addr.port(),
        ca.display(),
    );
    let gw = Gw::start(&gateway_yaml(plain.addr, &routes), &tokens_yaml()).await;
    let r = get(gw.addr(), "/secure/x", &[&bearer(AGENT)]).await;
    assert_refusal(&r, 502, "bad_gateway");

    replace_file(&ca, &pki.ca_pem());
    gw.launched.control.reload().await.unwrap();
    let r = get(gw.addr(), "/secure/x", &[&bearer(AGENT)]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let sent = format!("/secure/x http localhost:{}", addr.port());
    assert_eq!(*hits.lock().unwrap(), [sent]);
}
