//! TLS for data listeners: rustls server configs built from PEM files, with
//! ALPN `h2` and `http/1.1`.
//!
//! Configs are built when a config is compiled (at start and on SIGHUP), so
//! a rotated certificate is picked up by the next connection while existing
//! ones keep theirs. Invariant: key material is never formatted into a
//! message; errors name the file only.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Builds the server config for one listener.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} / {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| format!("{}: not a PEM private key", path.display()))?
        .ok_or_else(|| {
            format!(
                "{} holds no PKCS#8, PKCS#1 or SEC1 private key",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    /// A self-signed certificate for `localhost` and its key, as files.
    fn files(cert_pem: Option<&str>, key_pem: Option<&str>) -> Files {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let real_cert = generated.cert.pem();
        let real_key = generated.signing_key.serialize_pem();
        std::fs::write(&cert, cert_pem.unwrap_or(&real_cert)).unwrap();
        std::fs::write(&key, key_pem.unwrap_or(&real_key)).unwrap();
        Files {
            dir,
            files: TlsFiles { cert, key },
        }
    }

    #[test]
    fn a_listener_offers_h2_before_http1_by_alpn() {
        let f = files(None, None);
        let config = server_config(&f.files).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let f = files(None, Some(&other));
        let err = server_config(&f.files).unwrap_err();
        assert!(err.contains("cert.pem") && err.contains("key.pem"), "{err}");
    }

    #[test]
    fn a_file_without_a_certificate_or_key_is_refused_by_name() {
        let f = files(Some("no pem here\n"), None);
        let err = server_config(&f.files).unwrap_err();
        assert!(err.ends_with("cert.pem holds no PEM certificate"), "{err}");

        let f = files(None, Some("no pem here\n"));
        let err = server_config(&f.files).unwrap_err();
        assert!(err.contains("key.pem holds no PKCS#8"), "{err}");

        let missing = TlsFiles {
            cert: f.dir.path().join("absent.pem"),
            key: f.files.key.clone(),
        };
        let err = server_config(&missing).unwrap_err();
        assert!(
            err.starts_with("cannot read ") && err.contains("absent.pem"),
            "{err}"
        );
    }

    #[test]
    fn errors_never_quote_key_material() {
        let broken =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw=!!\n-----END PRIVATE KEY-----\n";
        let f = files(None, Some(broken));
        let err = server_config(&f.files).unwrap_err();
        assert!(err.contains("key.pem"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
