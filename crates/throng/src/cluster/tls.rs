//! Mutual TLS between nodes: the production transport security mode, and a generator of
//! development certificates.
//!
//! A node's identity is its name. In TLS mode every node holds a certificate signed by the
//! cluster's CA whose subject alternative name (a DNS name) is the node name, and nothing else is
//! trusted: the dialer checks that the acceptor's certificate chains to the CA *and* names the node
//! it meant to reach; the acceptor requires a client certificate from the same CA and checks that
//! the name the dialer claims in its hello is the name on that certificate. So a node can only
//! speak as the name it was issued, and a stolen secret alone opens no connection.
//!
//! TLS encrypts and authenticates every byte, so records are not sealed a second time (see
//! [`super::wire::Sealer::unsealed`]); the hello exchange still runs inside TLS for the protocol
//! version and the incarnations. The cluster secret still seals membership gossip.
//!
//! Only TLS 1.3 with the `ring` provider is built in: the cluster controls both ends, so there is
//! no older peer to accommodate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use throng_core::NodeId;

/// How a node's connections to its peers are authenticated and encrypted.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Security {
    /// Development mode: peers prove they hold the cluster secret in the handshake, and every
    /// record is sealed with AES-256-GCM under per-connection keys derived from it.
    #[default]
    SharedSecret,
    /// Production mode: mutual TLS with certificates from the cluster CA, the node name as the
    /// certificate's DNS name.
    Tls(TlsConfig),
}

impl Security {
    /// Whether this is TLS mode.
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }
}

/// Which of the three PEM inputs of [`TlsConfig`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The cluster CA certificate.
    Ca,
    /// This node's certificate (chain).
    Cert,
    /// This node's private key.
    Key,
}

impl std::fmt::Display for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemFile::Ca => "CA certificate",
            PemFile::Cert => "node certificate",
            PemFile::Key => "private key",
        })
    }
}

/// TLS material that cannot be loaded or generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {file} file {path}: {source}")]
    Read {
        /// Which input.
        file: PemFile,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM input holds nothing usable of the expected kind.
    #[error("invalid {file}: {why}")]
    Pem {
        /// Which input.
        file: PemFile,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("TLS setup failed: {0}")]
    Setup(String),
    /// This node's certificate does not chain to the CA or is not issued for the node's name.
    #[error("the node certificate is not valid for node {node:?} under the CA (certificate names: {names:?}): {why}")]
    NotForNode {
        /// The node name.
        node: String,
        /// DNS names the certificate carries.
        names: Vec<String>,
        /// What the verifier said.
        why: String,
    },
    /// A node name cannot be a certificate's DNS name.
    #[error("node name {name:?} cannot be used as a certificate name: {why}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The generator would overwrite an existing file.
    #[error("refusing to overwrite existing {0}")]
    Exists(PathBuf),
    /// A generated file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl TlsError {
    /// The PEM input this error is about, if it is about one.
    pub fn file(&self) -> Option<PemFile> {
        match self {
            TlsError::Read { file, .. } | TlsError::Pem { file, .. } => Some(*file),
            TlsError::NotForNode { .. } => Some(PemFile::Cert),
            _ => None,
        }
    }
}

/// A node's TLS identity and trust: its certificate and key, and the cluster CA it trusts for
/// peers. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// To check our own certificate against the CA and a name.
    verifier: Arc<WebPkiServerVerifier>,
    chain: Arc<[CertificateDer<'static>]>,
    names: Arc<[String]>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(file: PemFile, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            file,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            file,
            why: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn read(file: PemFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        file,
        path: path.to_owned(),
        source,
    })
}

/// The DNS names a certificate is issued for (empty if it does not parse).
pub(crate) fn cert_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(String::from).collect())
        .unwrap_or_default()
}

/// The certificate name for `node`.
pub fn server_name(node: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(node.to_owned()).map_err(|e| TlsError::Name {
        name: node.to_owned(),
        why: format!("{e}; in TLS mode node names must be DNS names"),
    })
}

/// Whether the (already CA-verified) certificate `cert` is issued for node `claimed`.
pub(crate) fn certified_as(cert: &CertificateDer<'_>, claimed: &str) -> bool {
    let (Ok(name), Ok(cert)) = (server_name(claimed), webpki::EndEntityCert::try_from(cert)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

impl TlsConfig {
    /// Build from PEM text: the cluster CA certificate(s), this node's certificate chain (its own
    /// certificate first), and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in certs(PemFile::Ca, ca)? {
            roots.add(c).map_err(|e| TlsError::Pem {
                file: PemFile::Ca,
                why: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certs(PemFile::Cert, cert)?;
        let names = cert_names(&chain[0]);
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            file: PemFile::Key,
            why: e.to_string(),
        })?;
        let provider = provider();
        let setup = |e: rustls::Error| TlsError::Setup(e.to_string());
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(setup)?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key)
            .map_err(setup)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok(TlsConfig {
            client: Arc::new(client),
            server: Arc::new(server),
            verifier,
            chain: chain.into(),
            names: names.into(),
        })
    }

    /// Read the three PEM files and build as [`TlsConfig::from_pem`].
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(
            &read(PemFile::Ca, ca)?,
            &read(PemFile::Cert, cert)?,
            &read(PemFile::Key, key)?,
        )
    }

    /// The DNS names this node's certificate is issued for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Check that this node's certificate chains to the CA, is valid now, and is issued for
    /// `node`: peers would refuse it otherwise.
    pub fn check_identity(&self, node: &NodeId) -> Result<(), TlsError> {
        let name = server_name(node.as_str())?;
        let (end_entity, intermediates) =
            self.chain.split_first().ok_or_else(|| TlsError::Pem {
                file: PemFile::Cert,
                why: "empty chain".into(),
            })?;
        self.verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| TlsError::NotForNode {
                node: node.to_string(),
                names: self.names.to_vec(),
                why: e.to_string(),
            })
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::dev_certs::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn generated_certs_load_and_name_their_node() {
        let ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
        let a = ca.issue("node-a").unwrap();
        let tls = TlsConfig::from_pem(
            ca.cert_pem().as_bytes(),
            a.cert_pem.as_bytes(),
            a.key_pem.as_bytes(),
        )
        .unwrap();
        assert_eq!(tls.names(), ["node-a".to_string()]);
        tls.check_identity(&id("node-a")).unwrap();
        let err = tls.check_identity(&id("node-b")).unwrap_err();
        assert!(matches!(err, TlsError::NotForNode { .. }), "{err}");
    }

    #[test]
    fn cert_from_another_ca_is_not_ours() {
        let ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
        let other = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
        let a = other.issue("a").unwrap();
        let tls = TlsConfig::from_pem(
            ca.cert_pem().as_bytes(),
            a.cert_pem.as_bytes(),
            a.key_pem.as_bytes(),
        )
        .unwrap();
        assert!(tls.check_identity(&id("a")).is_err());
    }

    #[test]
    fn bad_pem_names_the_input() {
        let ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
        let a = ca.issue("a").unwrap();
        let b = ca.issue("b").unwrap();
        let ca_pem = ca.cert_pem();
        let file = |r: Result<TlsConfig, TlsError>| r.unwrap_err().file();
        assert_eq!(
            file(TlsConfig::from_pem(
                b"junk",
                a.cert_pem.as_bytes(),
                a.key_pem.as_bytes()
            )),
            Some(PemFile::Ca)
        );
        assert_eq!(
            file(TlsConfig::from_pem(
                ca_pem.as_bytes(),
                b"",
                a.key_pem.as_bytes()
            )),
            Some(PemFile::Cert)
        );
        assert_eq!(
            file(TlsConfig::from_pem(
                ca_pem.as_bytes(),
                a.cert_pem.as_bytes(),
                a.cert_pem.as_bytes()
            )),
            Some(PemFile::Key)
        );
        // A key that does not belong to the certificate.
        let err = TlsConfig::from_pem(
            ca_pem.as_bytes(),
            a.cert_pem.as_bytes(),
            b.key_pem.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::Setup(_)), "{err}");
    }

    #[test]
    fn names_must_be_dns_names() {
        let ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
        assert!(matches!(
            ca.issue("n1@10.0.0.2"),
            Err(TlsError::Name { .. })
        ));
        assert!(matches!(ca.issue("../x"), Err(TlsError::Name { .. })));
    }

    #[test]
    fn writer_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("throng-tls-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let written = write_dev_certs(&dir, &[id("a"), id("b")], DEV_CERT_VALIDITY).unwrap();
        assert_eq!(written.len(), 6);
        assert!(dir.join("b-key.pem").exists());
        assert!(matches!(
            write_dev_certs(&dir, &[id("c")], DEV_CERT_VALIDITY),
            Err(TlsError::Exists(_))
        ));
        assert!(!dir.join("c.pem").exists());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            write_dev_certs(&dir, &[id("ca")], DEV_CERT_VALIDITY),
            Err(TlsError::Name { .. })
        ));
        assert!(!dir.exists());
    }
}
