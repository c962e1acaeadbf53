//! Node configuration from a TOML file and `THRONG_*` environment variables (the environment wins),
//! as the reference deployment configures its cluster: node name, seeds, secret, ring size,
//! detection timings, and transport security. Every bad value is a [`ConfigError`] that names the
//! setting.
//!
//! Transport security: with `tls_ca`, `tls_cert` and `tls_key` (PEM files; `THRONG_TLS_CA`,
//! `THRONG_TLS_CERT`, `THRONG_TLS_KEY`) the node uses mutual TLS ([`Security::Tls`]) and its name
//! must be the DNS name its certificate is issued for; with none of them it uses the shared secret
//! ([`Security::SharedSecret`], for development). The secret is required in both modes: it seals
//! membership gossip.
//!
//! Durable store: `data_dir` (`THRONG_DATA_DIR`, the embedded store, one directory per node) or
//! `store_url` (`THRONG_STORE_URL`, a PostgreSQL database shared by the nodes), not both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use throng_core::{NodeId, RingConfig};
use throng_membership::{ClusterSecret, DetectionProfile, MembershipConfig, MulticastConfig};

use super::tls::{PemFile, Security, TlsConfig, TlsError};
use super::NodeOptions;

/// Smallest accepted secret, in bytes: shorter secrets are guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a configuration with both stores is refused: what each is set to (the URL without its
/// password).
pub(crate) fn both_stores(data_dir: &Path, store_url: &str) -> String {
    format!(
        "both `data_dir` ({}) and `store_url` ({}) are set: a node has one durable store, so \
         give `data_dir` (THRONG_DATA_DIR) or `store_url` (THRONG_STORE_URL), not both",
        data_dir.display(),
        throng_store::redact_url(store_url)
    )
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("invalid TOML config: {0}")]
    Toml(String),
    /// A required setting is missing.
    #[error("missing setting `{0}` (TOML key, or THRONG_{1} in the environment)")]
    Missing(&'static str, &'static str),
    /// Some but not all of the TLS settings are given.
    #[error("incomplete TLS settings: `tls_ca`, `tls_cert` and `tls_key` go together, and `{missing}` (THRONG_{env}) is missing")]
    IncompleteTls {
        /// The missing setting.
        missing: &'static str,
        /// Its environment variable, without the `THRONG_` prefix.
        env: &'static str,
    },
    /// The TLS files cannot be read or used.
    #[error("invalid `{key}`: {source}")]
    Tls {
        /// The setting the failure is about.
        key: &'static str,
        /// Why.
        source: TlsError,
    },
    /// A setting has a bad value.
    #[error("invalid `{key}`: {why}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The settings as written in TOML; all optional so that the environment can fill in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    rpc_bind: Option<String>,
    gossip_bind: Option<String>,
    gossip_advertise: Option<String>,
    seeds: Option<Vec<String>>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    detection: Option<String>,
    ring_vnodes: Option<u32>,
    max_frame_bytes: Option<usize>,
    max_handshakes: Option<usize>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    multicast: Option<String>,
    multicast_interface: Option<String>,
    data_dir: Option<PathBuf>,
    store_url: Option<String>,
}

/// Everything a node needs to join a cluster. Its `Debug` output shows no secret: neither the
/// cluster secret nor `store_url`'s password.
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster.
    pub name: NodeId,
    /// TCP address for node-to-node messages.
    pub rpc_bind: SocketAddr,
    /// Membership (gossip and failure detection) settings, secret included.
    pub membership: MembershipConfig,
    /// Placement ring settings.
    pub ring: RingConfig,
    /// Transport limits and security (`transport.security`: shared secret or mutual TLS).
    pub transport: NodeOptions,
    /// Where the node keeps its durable store (`data_dir`, `THRONG_DATA_DIR`): the records of
    /// the children of supervisors with a [`Durability`](crate::cluster::Durability) other
    /// than `None`. One directory per node; `None` keeps nothing on disk (unless `store_url`
    /// is set: at most one of the two is).
    pub data_dir: Option<PathBuf>,
    /// The PostgreSQL database that keeps the durable store instead (`store_url`,
    /// `THRONG_STORE_URL`): a `postgres://user:password@host:port/database` URL or a
    /// `key=value` connection string. One database for every node of the cluster, each node's
    /// rows under its name ([`throng_store::PgStore`]). Messages show it without its password.
    pub store_url: Option<String>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a new field does not compile until it is shown here (or hidden).
        let NodeConfig {
            name,
            rpc_bind,
            membership,
            ring,
            transport,
            data_dir,
            store_url,
        } = self;
        f.debug_struct("NodeConfig")
            .field("name", name)
            .field("rpc_bind", rpc_bind)
            .field("membership", membership)
            .field("ring", ring)
            .field("transport", transport)
            .field("data_dir", data_dir)
            .field(
                "store_url",
                &store_url.as_deref().map(throng_store::redact_url),
            )
            .finish()
    }
}

impl NodeConfig {
    /// A configuration for tests and embedding: loopback, ephemeral ports, the fast detection
    /// profile, and `secret`.
    pub fn local(name: &str, secret: &[u8]) -> Result<Self, ConfigError> {
        let name = NodeId::new(name).map_err(|e| invalid("name", e))?;
        let mut membership = MembershipConfig::new(loopback(), ClusterSecret::new(secret.to_vec()));
        membership.profile = DetectionProfile::Fast;
        Ok(NodeConfig {
            name,
            rpc_bind: loopback(),
            membership,
            ring: RingConfig::default(),
            transport: NodeOptions::default(),
            data_dir: None,
            store_url: None,
        })
    }

    /// Read `path` (if given) and overlay the `THRONG_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_sources(&text, |k| std::env::var(k).ok())
    }

    /// Parse TOML `text` and overlay variables from `env` (a lookup such as `std::env::var`).
    /// Without the `toml-config` feature (on by default), `text` must be empty: the settings
    /// come from `env` alone.
    pub fn from_sources(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        #[cfg(feature = "toml-config")]
        let mut raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        #[cfg(not(feature = "toml-config"))]
        let mut raw = if text.trim().is_empty() {
            Raw::default()
        } else {
            return Err(ConfigError::Toml(
                "this build reads no TOML: enable throng's `toml-config` feature".into(),
            ));
        };
        let set = |slot: &mut Option<String>, var: &str| {
            if let Some(v) = env(var) {
                *slot = Some(v);
            }
        };
        set(&mut raw.name, "THRONG_NAME");
        set(&mut raw.rpc_bind, "THRONG_RPC_BIND");
        set(&mut raw.gossip_bind, "THRONG_GOSSIP_BIND");
        set(&mut raw.gossip_advertise, "THRONG_GOSSIP_ADVERTISE");
        set(&mut raw.secret, "THRONG_SECRET");
        set(&mut raw.detection, "THRONG_DETECTION");
        set(&mut raw.multicast, "THRONG_MULTICAST");
        set(&mut raw.multicast_interface, "THRONG_MULTICAST_INTERFACE");
        set(&mut raw.store_url, "THRONG_STORE_URL");
        if let Some(v) = env("THRONG_SEEDS") {
            raw.seeds = Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
        if let Some(v) = env("THRONG_SECRET_FILE") {
            raw.secret_file = Some(v.into());
        }
        if let Some(v) = env("THRONG_DATA_DIR") {
            raw.data_dir = Some(v.into());
        }
        for (slot, var) in [
            (&mut raw.tls_ca, "THRONG_TLS_CA"),
            (&mut raw.tls_cert, "THRONG_TLS_CERT"),
            (&mut raw.tls_key, "THRONG_TLS_KEY"),
        ] {
            if let Some(v) = env(var) {
                *slot = Some(v.into());
            }
        }
        if let Some(v) = env("THRONG_RING_VNODES") {
            raw.ring_vnodes = Some(v.parse().map_err(|e| invalid("ring_vnodes", e))?);
        }
        if let Some(v) = env("THRONG_MAX_FRAME_BYTES") {
            raw.max_frame_bytes = Some(v.parse().map_err(|e| invalid("max_frame_bytes", e))?);
        }
        if let Some(v) = env("THRONG_MAX_HANDSHAKES") {
            raw.max_handshakes = Some(v.parse().map_err(|e| invalid("max_handshakes", e))?);
        }
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Self, ConfigError> {
        let name = raw.name.ok_or(ConfigError::Missing("name", "NAME"))?;
        let name = NodeId::new(&name).map_err(|e| invalid("name", e))?;
        let secret = match (raw.secret, raw.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "secret",
                    "give `secret` or `secret_file`, not both",
                ))
            }
            (Some(s), None) => s.into_bytes(),
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::Read { path, source })?
                .trim_end()
                .as_bytes()
                .to_vec(),
            (None, None) => return Err(ConfigError::Missing("secret", "SECRET")),
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(invalid(
                "secret",
                format!(
                    "{} bytes is too short; use at least {MIN_SECRET_LEN}",
                    secret.len()
                ),
            ));
        }
        let addr = |key: &'static str,
                    v: Option<String>,
                    default: SocketAddr|
         -> Result<SocketAddr, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => s.parse().map_err(|e| invalid(key, format!("{s:?}: {e}"))),
            }
        };
        let rpc_bind = addr("rpc_bind", raw.rpc_bind, loopback())?;
        let gossip_bind = addr("gossip_bind", raw.gossip_bind, loopback())?;
        let mut membership = MembershipConfig::new(gossip_bind, ClusterSecret::new(secret));
        if let Some(a) = raw.gossip_advertise {
            membership.advertise_addr = Some(
                a.parse()
                    .map_err(|e| invalid("gossip_advertise", format!("{a:?}: {e}")))?,
            );
        }
        membership.seeds = raw.seeds.unwrap_or_default();
        membership.multicast = match raw.multicast.as_deref() {
            None | Some("off") => None,
            Some(group) => {
                let mut m = MulticastConfig::default();
                if group != "on" {
                    m.group = group.parse().map_err(|e| {
                        invalid(
                            "multicast",
                            format!(
                                "{group:?}: {e} (expected \"on\", \"off\" or an IPv4 group:port)"
                            ),
                        )
                    })?;
                }
                if let Some(i) = raw.multicast_interface.as_deref() {
                    m.interface = i
                        .parse()
                        .map_err(|e| invalid("multicast_interface", format!("{i:?}: {e}")))?;
                } else if gossip_bind.ip().is_loopback() {
                    // A cluster on loopback multicasts over loopback.
                    m.interface = std::net::Ipv4Addr::LOCALHOST;
                }
                Some(m)
            }
        };
        membership.profile = match raw.detection.as_deref() {
            None | Some("lan") => DetectionProfile::Lan,
            Some("fast") => DetectionProfile::Fast,
            Some(other) => {
                return Err(invalid(
                    "detection",
                    format!("{other:?}: expected \"lan\" or \"fast\""),
                ))
            }
        };
        membership
            .validate()
            .map_err(|e| invalid("membership", e))?;
        let ring = RingConfig::new(
            raw.ring_vnodes
                .unwrap_or(throng_core::placement::DEFAULT_VNODES_PER_NODE),
        )
        .map_err(|e| invalid("ring_vnodes", e))?;
        let mut transport = NodeOptions::default();
        if let Some(m) = raw.max_frame_bytes {
            if !(1024..=(1 << 30)).contains(&m) {
                return Err(invalid(
                    "max_frame_bytes",
                    format!("{m} is outside 1024..=1073741824"),
                ));
            }
            transport.max_frame = m;
        }
        if let Some(m) = raw.max_handshakes {
            let limit = super::node::MAX_HANDSHAKES_LIMIT;
            if !(1..=limit).contains(&m) {
                return Err(invalid(
                    "max_handshakes",
                    format!("{m} is outside 1..={limit}"),
                ));
            }
            transport.max_handshakes = m;
        }
        transport.security = security(&name, raw.tls_ca, raw.tls_cert, raw.tls_key)?;
        let data_dir = raw.data_dir.filter(|d| !d.as_os_str().is_empty());
        let store_url = raw.store_url.filter(|u| !u.trim().is_empty());
        if let (Some(dir), Some(url)) = (&data_dir, &store_url) {
            return Err(invalid("store_url", both_stores(dir, url)));
        }
        Ok(NodeConfig {
            name,
            rpc_bind,
            membership,
            ring,
            transport,
            data_dir,
            store_url,
        })
    }
}

/// Shared secret with no TLS setting, TLS with all three; anything between is an error.
fn security(
    name: &NodeId,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Security, ConfigError> {
    let (ca, cert, key) = match (ca, cert, key) {
        (None, None, None) => return Ok(Security::SharedSecret),
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        (ca, cert, _) => {
            let (missing, env) = if ca.is_none() {
                ("tls_ca", "TLS_CA")
            } else if cert.is_none() {
                ("tls_cert", "TLS_CERT")
            } else {
                ("tls_key", "TLS_KEY")
            };
            return Err(ConfigError::IncompleteTls { missing, env });
        }
    };
    let tls_error = |source: TlsError| ConfigError::Tls {
        key: match source.file() {
            Some(PemFile::Ca) => "tls_ca",
            Some(PemFile::Key) => "tls_key",
            _ => "tls_cert",
        },
        source,
    };
    let tls = TlsConfig::from_files(&ca, &cert, &key).map_err(tls_error)?;
    // Peers would refuse a certificate that does not name this node: fail now, not at every dial.
    tls.check_identity(name).map_err(tls_error)?;
    Ok(Security::Tls(tls))
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn invalid(key: &'static str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn toml_with_env_overrides() {
        let text = format!(
            "name = \"gotham\"\nrpc_bind = \"127.0.0.1:9000\"\nseeds = [\"a:1\"]\nsecret = \"{SECRET}\"\ndetection = \"fast\"\nring_vnodes = 64\n"
        );
        let c = NodeConfig::from_sources(
            &text,
            env(&[("THRONG_NAME", "metropolis"), ("THRONG_SEEDS", "b:2, c:3")]),
        )
        .unwrap();
        assert_eq!(c.name.as_str(), "metropolis");
        assert_eq!(c.rpc_bind, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.membership.seeds, vec!["b:2", "c:3"]);
        assert!(matches!(c.membership.profile, DetectionProfile::Fast));
        assert_eq!(c.ring.vnodes_per_node(), 64);
    }

    #[test]
    fn multicast_discovery_settings() {
        let base = format!("name = \"x\"\nsecret = \"{SECRET}\"\n");
        let c = NodeConfig::from_sources(&base, env(&[("THRONG_MULTICAST", "on")])).unwrap();
        let m = c.membership.multicast.expect("multicast on");
        assert_eq!(m.group, throng_membership::DEFAULT_MULTICAST_GROUP);
        assert_eq!(m.interface, std::net::Ipv4Addr::LOCALHOST);
        let c = NodeConfig::from_sources(
            &format!("{base}multicast = \"239.255.1.2:4000\"\nmulticast_interface = \"0.0.0.0\"\n"),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            c.membership.multicast.unwrap().group,
            "239.255.1.2:4000".parse().unwrap()
        );
        assert!(NodeConfig::from_sources(&base, |_| None)
            .unwrap()
            .membership
            .multicast
            .is_none());
        let err = NodeConfig::from_sources(&format!("{base}multicast = \"nowhere\"\n"), |_| None)
            .unwrap_err();
        assert!(err.to_string().contains("`multicast`"), "{err}");
        let err =
            NodeConfig::from_sources(&format!("{base}multicast = \"10.0.0.1:4000\"\n"), |_| None)
                .unwrap_err();
        assert!(err.to_string().contains("membership"), "{err}");
    }

    #[test]
    fn env_alone_is_enough() {
        let c =
            NodeConfig::from_sources("", env(&[("THRONG_NAME", "n1"), ("THRONG_SECRET", SECRET)]))
                .unwrap();
        assert_eq!(c.name.as_str(), "n1");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let no = |_: &str| None;
        let err = |text: &str| NodeConfig::from_sources(text, no).unwrap_err().to_string();
        assert!(err("").contains("missing setting `name`"));
        assert!(err("name = \"x\"").contains("missing setting `secret`"));
        assert!(err("name = \"x\"\nsecret = \"short\"").contains("too short"));
        assert!(err(&format!("name = \"has space\"\nsecret = \"{SECRET}\"")).contains("`name`"));
        assert!(err(&format!(
            "name = \"x\"\nsecret = \"{SECRET}\"\nrpc_bind = \"nowhere\""
        ))
        .contains("`rpc_bind`"));
        assert!(err(&format!(
            "name = \"x\"\nsecret = \"{SECRET}\"\ndetection = \"slow\""
        ))
        .contains("`detection`"));
        assert!(err(&format!(
            "name = \"x\"\nsecret = \"{SECRET}\"\nring_vnodes = 0"
        ))
        .contains("`ring_vnodes`"));
        assert!(
            err(&format!("name = \"x\"\nsecret = \"{SECRET}\"\nbogus = 1"))
                .contains("invalid TOML")
        );
        assert!(err(&format!(
            "name = \"x\"\nsecret = \"{SECRET}\"\nmax_frame_bytes = 1"
        ))
        .contains("`max_frame_bytes`"));
        assert!(err(&format!(
            "name = \"x\"\nsecret = \"{SECRET}\"\nmax_handshakes = 0"
        ))
        .contains("`max_handshakes`"));
        let c = NodeConfig::from_sources(
            &format!("name = \"x\"\nsecret = \"{SECRET}\"\nmax_handshakes = 8"),
            env(&[("THRONG_MAX_HANDSHAKES", "16")]),
        )
        .unwrap();
        assert_eq!(c.transport.max_handshakes, 16);
    }

    #[test]
    fn store_settings_from_toml_and_env_one_store_at_most() {
        let base = format!("name = \"x\"\nsecret = \"{SECRET}\"\n");
        let url = "postgres://throng:hunter2@db:5432/throng";
        let c =
            NodeConfig::from_sources(&format!("{base}store_url = {url:?}\n"), |_| None).unwrap();
        assert_eq!(c.store_url.as_deref(), Some(url));
        assert!(c.data_dir.is_none());
        let debug = format!("{c:?}");
        assert!(
            debug.contains("postgres://throng@db:5432/throng") && !debug.contains("hunter2"),
            "{debug}"
        );
        let c = with(
            format!("{base}store_url = {url:?}\n"),
            "THRONG_STORE_URL",
            "postgres://other/db",
        )
        .unwrap();
        assert_eq!(c.store_url.as_deref(), Some("postgres://other/db"));
        let c = with(base.clone(), "THRONG_STORE_URL", "").unwrap();
        assert!(c.store_url.is_none(), "an empty store_url is none");
        let c = with(base.clone(), "THRONG_DATA_DIR", "/var/lib/throng").unwrap();
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/throng")));
        // Both, however given, are refused, naming both settings.
        for err in [
            NodeConfig::from_sources(
                &format!("{base}store_url = {url:?}\ndata_dir = \"/d\"\n"),
                |_| None,
            )
            .unwrap_err(),
            with(
                format!("{base}data_dir = \"/d\"\n"),
                "THRONG_STORE_URL",
                url,
            )
            .unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(
                text.contains("`store_url`")
                    && text.contains("(/d)")
                    && text.contains("THRONG_STORE_URL")
                    && text.contains("THRONG_DATA_DIR")
                    && !text.contains("hunter2"),
                "{text}"
            );
        }
    }

    fn with(text: String, var: &str, val: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_sources(&text, |k| (k == var).then(|| val.to_string()))
    }

    /// A temporary directory with a CA and certificates for `n1` and `n2`.
    fn certs(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("throng-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes = [NodeId::new("n1").unwrap(), NodeId::new("n2").unwrap()];
        crate::cluster::dev_certs::write_dev_certs(
            &dir,
            &nodes,
            crate::cluster::dev_certs::DEV_CERT_VALIDITY,
        )
        .unwrap();
        dir
    }

    fn tls_toml(dir: &Path, name: &str, cert: &str, key: &str) -> String {
        format!(
            "name = \"{name}\"\nsecret = \"{SECRET}\"\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            dir.join("ca.pem"),
            dir.join(cert),
            dir.join(key),
        )
    }

    #[test]
    fn no_tls_settings_means_shared_secret() {
        let c =
            NodeConfig::from_sources(&format!("name = \"n1\"\nsecret = \"{SECRET}\""), |_| None)
                .unwrap();
        assert!(matches!(c.transport.security, Security::SharedSecret));
    }

    #[test]
    fn tls_from_toml_and_env() {
        let dir = certs("ok");
        let c = NodeConfig::from_sources(&tls_toml(&dir, "n1", "n1.pem", "n1-key.pem"), |_| None)
            .unwrap();
        assert!(c.transport.security.is_tls());
        let env = |k: &str| {
            let f = match k {
                "THRONG_NAME" => return Some("n2".to_string()),
                "THRONG_SECRET" => return Some(SECRET.to_string()),
                "THRONG_TLS_CA" => "ca.pem",
                "THRONG_TLS_CERT" => "n2.pem",
                "THRONG_TLS_KEY" => "n2-key.pem",
                _ => return None,
            };
            Some(dir.join(f).display().to_string())
        };
        assert!(NodeConfig::from_sources("", env)
            .unwrap()
            .transport
            .security
            .is_tls());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_errors_name_the_setting() {
        let dir = certs("bad");
        let base = format!("name = \"n1\"\nsecret = \"{SECRET}\"\n");
        let err = |r: Result<NodeConfig, ConfigError>| r.unwrap_err().to_string();
        // Partial presence names the first missing setting.
        let ca = format!("{base}tls_ca = {:?}\n", dir.join("ca.pem"));
        let e = err(NodeConfig::from_sources(&ca, |_| None));
        assert!(
            e.contains("incomplete TLS")
                && e.contains("`tls_cert`")
                && e.contains("THRONG_TLS_CERT"),
            "{e}"
        );
        let e = err(with(
            ca.clone(),
            "THRONG_TLS_CERT",
            &dir.join("n1.pem").display().to_string(),
        ));
        assert!(
            e.contains("`tls_key`") && e.contains("THRONG_TLS_KEY"),
            "{e}"
        );
        let e = err(with(base.clone(), "THRONG_TLS_KEY", "k.pem"));
        assert!(e.contains("`tls_ca`"), "{e}");
        // Unreadable files.
        let e = err(NodeConfig::from_sources(
            &tls_toml(&dir, "n1", "nope.pem", "n1-key.pem"),
            |_| None,
        ));
        assert!(
            e.contains("invalid `tls_cert`") && e.contains("cannot read"),
            "{e}"
        );
        // Not PEM, or the wrong kind of PEM.
        std::fs::write(dir.join("junk.pem"), "not pem").unwrap();
        let e = err(NodeConfig::from_sources(
            &tls_toml(&dir, "n1", "n1.pem", "junk.pem"),
            |_| None,
        ));
        assert!(e.contains("invalid `tls_key`"), "{e}");
        let e = err(NodeConfig::from_sources(
            &tls_toml(&dir, "n1", "n1-key.pem", "n1-key.pem"),
            |_| None,
        ));
        assert!(e.contains("invalid `tls_cert`"), "{e}");
        // A key that is not the certificate's.
        let e = err(NodeConfig::from_sources(
            &tls_toml(&dir, "n1", "n1.pem", "n2-key.pem"),
            |_| None,
        ));
        assert!(e.contains("TLS setup failed"), "{e}");
        // A certificate issued for another node.
        let e = err(NodeConfig::from_sources(
            &tls_toml(&dir, "n1", "n2.pem", "n2-key.pem"),
            |_| None,
        ));
        assert!(
            e.contains("invalid `tls_cert`") && e.contains("\"n2\""),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
