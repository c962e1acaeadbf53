//! Development certificates: a generated cluster CA and node certificates (the `dev-certs`
//! feature; `throng-node certs` uses it). Production clusters bring their own PKI.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use throng_core::NodeId;

use super::tls::{server_name, TlsError};

/// Validity of generated development certificates (one year).
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far back generated certificates start, to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(3600);

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn validity(params: &mut rcgen::CertificateParams, valid_for: Duration) -> Result<(), TlsError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| TlsError::Generate(format!("clock before 1970: {e}")))?;
    let at = |secs: u64| {
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
            .map_err(|e| TlsError::Generate(format!("validity out of range: {e}")))
    };
    params.not_before = at(now.saturating_sub(BACKDATE).as_secs())?;
    params.not_after = at(now.saturating_add(valid_for).as_secs())?;
    Ok(())
}

/// A freshly generated cluster CA that issues node certificates (for development clusters and
/// tests; production clusters bring their own PKI).
pub struct CertAuthority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    valid_for: Duration,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

/// A node certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct NodeCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Generate a CA (ECDSA P-256) whose certificates are valid for `valid_for` from now.
    pub fn generate(valid_for: Duration) -> Result<Self, TlsError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, valid_for)?;
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        // A name of its own, so that a certificate from another generated CA is reported as from
        // an unknown issuer rather than as a bad signature from this one.
        let tag = blake3::hash(key.public_key_raw()).to_hex();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Throng cluster CA {}", &tag[..16]),
        );
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(gen_err)?;
        Ok(CertAuthority { issuer, valid_for })
    }

    /// The CA certificate, PEM encoded: every node's `tls_ca`.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA private key, PEM encoded: keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issue a certificate for node `node` (its only DNS name), usable as both TLS client and
    /// server.
    pub fn issue(&self, node: &str) -> Result<NodeCert, TlsError> {
        server_name(node)?;
        let mut params =
            rcgen::CertificateParams::new(vec![node.to_owned()]).map_err(|e| TlsError::Name {
                name: node.to_owned(),
                why: e.to_string(),
            })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, self.valid_for)?;
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Generate a CA and a certificate per node into `dir` (created if needed): `ca.pem`,
/// `ca-key.pem`, and `<node>.pem` / `<node>-key.pem` for each node. Existing files are never
/// overwritten; keys are written readable by the owner only. Returns the files written.
pub fn write_dev_certs(
    dir: &Path,
    nodes: &[NodeId],
    valid_for: Duration,
) -> Result<Vec<PathBuf>, TlsError> {
    let mut files: Vec<(PathBuf, bool)> =
        vec![(dir.join("ca.pem"), false), (dir.join("ca-key.pem"), true)];
    for n in nodes {
        server_name(n.as_str())?;
        files.push((dir.join(format!("{n}.pem")), false));
        files.push((dir.join(format!("{n}-key.pem")), true));
    }
    let mut seen = HashSet::new();
    for (path, _) in &files {
        if !seen.insert(path.clone()) {
            return Err(TlsError::Name {
                name: path.display().to_string(),
                why: "two outputs would share this file (a node listed twice, or named `ca`)"
                    .into(),
            });
        }
        if path.exists() {
            return Err(TlsError::Exists(path.clone()));
        }
    }
    let ca = CertAuthority::generate(valid_for)?;
    let mut contents = vec![ca.cert_pem(), ca.key_pem()];
    for n in nodes {
        let c = ca.issue(n.as_str())?;
        contents.push(c.cert_pem);
        contents.push(c.key_pem);
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for ((path, secret), text) in files.into_iter().zip(contents) {
        write_new(&path, text.as_bytes(), secret)?;
        written.push(path);
    }
    Ok(written)
}

fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(path.to_owned())
        } else {
            TlsError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    f.write_all(bytes).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}
