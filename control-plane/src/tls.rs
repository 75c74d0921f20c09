//! TLS for the node's listeners and its connections to other nodes (rustls, ring).
//!
//! A node started with `--tls-cert`, `--tls-key` and `--tls-ca` (PEM files: its
//! certificate chain, its key, and the CA that signed every node's certificate):
//!
//! - serves TLS on the control port and on the function port;
//! - connects to other nodes (Raft, blobs, joins, worker streams, the gateway hop)
//!   over TLS, verifying the peer against the CA and presenting its own certificate
//!   (mutual TLS);
//! - refuses internal RPCs from a client without a certificate signed by the CA
//!   (the admin API and function requests need none: tokens and keys protect them).
//!
//! The identity is process-wide ([`install`]): a node has exactly one. Without it,
//! everything is plain TCP, and the node warns when it listens on a non-loopback
//! address. Nothing here is durable; the PEM files are read at start.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::internal_auth::{ClusterSecret, InternalChannel};

/// A node's TLS identity and the cluster's CA, as PEM.
#[derive(Clone)]
pub struct NodeTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls { .. }")
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl NodeTls {
    /// Read and check the three PEM files; every problem names its file.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<NodeTls, String> {
        let tls = NodeTls {
            cert_pem: read("tls-cert", cert)?,
            key_pem: read("tls-key", key)?,
            ca_pem: read("tls-ca", ca)?,
        };
        let certs =
            certs_of(&tls.cert_pem).map_err(|e| format!("tls-cert {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("tls-cert {}: no certificate in it", cert.display()));
        }
        PrivateKeyDer::from_pem_slice(&tls.key_pem)
            .map_err(|e| format!("tls-key {}: no private key found ({e})", key.display()))?;
        let roots = certs_of(&tls.ca_pem).map_err(|e| format!("tls-ca {}: {e}", ca.display()))?;
        if roots.is_empty() {
            return Err(format!("tls-ca {}: no certificate in it", ca.display()));
        }
        // Building both configs checks that the key matches the certificate.
        tls.rustls_server()
            .map_err(|e| format!("tls-cert/tls-key {}: {e}", cert.display()))?;
        Ok(tls)
    }

    /// The control port's TLS: this node's identity; client certificates are
    /// verified against the CA when presented (internal services require them).
    pub fn tonic_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// Connections to other nodes: verify them against the CA, present this node.
    /// The handshake has a deadline: a frozen peer accepts the TCP connection (its
    /// kernel does) but never answers the ClientHello.
    pub fn tonic_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_of(&self.ca_pem)? {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        Ok(roots)
    }

    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| e.to_string())?;
        Ok((certs_of(&self.cert_pem)?, key))
    }

    /// The function port's TLS (HTTP/2 and HTTP/1.1 by ALPN; client certificates
    /// verified when presented, never required).
    pub fn rustls_server(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
        let (certs, key) = self.identity()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The gateway hop's TLS client: the CA as the only root, this node's identity.
    pub fn rustls_client(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (certs, key) = self.identity()?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())
    }
}

fn certs_of(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate ({e})"))
}

static NODE_TLS: OnceLock<NodeTls> = OnceLock::new();

/// Make `tls` this process's identity (once; later calls are ignored).
pub fn install(tls: NodeTls) {
    let _ = NODE_TLS.set(tls);
}

/// This process's identity, if it has one.
pub fn current() -> Option<&'static NodeTls> {
    NODE_TLS.get()
}

/// A TLS client config for clients that only ever speak plain HTTP (a node
/// without TLS): no roots, so it could verify nothing, and it is never used.
pub fn plain_http_only() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The URL of another node's port from its advertised `host:port`.
pub fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if current().is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// A channel to another node's control port (mutual TLS when this node has an
/// identity; this node's proof of membership on every call).
pub async fn channel(
    addr: &str,
    connect_timeout: Duration,
    secret: &ClusterSecret,
) -> Result<InternalChannel, String> {
    let url = url(addr);
    let endpoint = crate::peers::endpoint(&url)
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout);
    let connect = endpoint.connect();
    // The TCP connect and the TLS handshake each have theirs; this bounds both.
    let limit = connect_timeout + HANDSHAKE_TIMEOUT;
    let channel: Channel = tokio::time::timeout(limit, connect)
        .await
        .map_err(|_| format!("{url}: no connection within {limit:?}"))?
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    Ok(crate::internal_auth::internal(channel, secret))
}

/// How long a TLS handshake with another node may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole chain of an error (tonic's transport errors hide the cause), each
/// cause once: layers that repeat their source's text ("tcp connect error: tcp
/// connect error") are said once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Interceptor for internal services: with TLS on, the caller must have presented
/// a certificate the CA signed (the TLS layer verified it).
#[derive(Clone, Copy)]
pub struct RequirePeerCert;

impl tonic::service::Interceptor for RequirePeerCert {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if current().is_none() {
            return Ok(request);
        }
        match request.peer_certs() {
            Some(certs) if !certs.is_empty() => Ok(request),
            _ => Err(Status::unauthenticated(
                "internal service: a node certificate signed by the cluster CA is required",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let e = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(Layer("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }

    /// A node identity signed by a CA made here, as `strom serve --tls-*` loads it.
    fn node_tls() -> (tempfile::TempDir, NodeTls) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let path = |f: &str| dir.path().join(f);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("n.pem"), cert.pem()).unwrap();
        std::fs::write(path("n.key"), key.serialize_pem()).unwrap();
        let tls = NodeTls::load(&path("n.pem"), &path("n.key"), &path("ca.pem")).unwrap();
        (dir, tls)
    }

    /// A frozen peer: its kernel accepts the connection, nothing ever answers.
    fn silent_peer() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        (listener, url)
    }

    /// The TLS handshake with a peer that never answers gives up (and so does
    /// every node-to-node channel built with it) instead of waiting forever.
    #[tokio::test(start_paused = true)]
    async fn a_handshake_with_a_frozen_peer_has_a_deadline() {
        let (_dir, tls) = node_tls();
        let (_listener, url) = silent_peer();
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .tls_config(tls.tonic_client())
            .unwrap();
        let connect = endpoint.connect();
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(600), connect).await;
        assert!(
            matches!(outcome, Ok(Err(_))),
            "the handshake ended on its own"
        );
        assert!(started.elapsed() <= HANDSHAKE_TIMEOUT + Duration::from_secs(1));
    }
}
