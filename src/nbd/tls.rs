//! NBD over TLS (NBD_OPT_STARTTLS): the server's certificate and key, and
//! optionally the CA whose client certificates it accepts (mutual TLS).
//! rustls does the TLS; this module only loads the PEM files and says what
//! is wrong with them.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// `[nbd] tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No TLS: STARTTLS is answered "unsupported".
    #[default]
    Off,
    /// STARTTLS is offered; clients may also stay in plaintext.
    Allow,
    /// Every option but STARTTLS and ABORT is refused before TLS is on
    /// (NBD_REP_ERR_TLS_REQD); a plaintext NBD_OPT_EXPORT_NAME closes.
    Require,
}

/// What the NBD server needs to speak TLS.
#[derive(Clone)]
pub struct Tls {
    /// Accepts a TLS session on a connection that asked for STARTTLS.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Plaintext sessions are refused.
    pub require: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("require", &self.require).finish()
    }
}

impl Tls {
    /// Loads the server certificate chain and key (PEM) and, for mutual
    /// TLS, the CA certificates client certificates must chain to. Errors
    /// name the file and what is wrong.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>, require: bool) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("nbd.tls_key {}: no private key in it ({e})", key.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c).map_err(|e| format!("nbd.tls_client_ca {}: {e}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("nbd.tls_client_ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("nbd.tls_cert {} with nbd.tls_key: {e}", cert.display()))?;
        Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), require })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot be read ({e})", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}
