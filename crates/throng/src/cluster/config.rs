//! Node configuration from a TOML file and `THRONG_*` environment variables (the environment wins),
//! as the reference deployment configures its cluster: node name, seeds, secret, ring size,
//! detection timings. Every bad value is a [`ConfigError`] that names the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use throng_core::{NodeId, RingConfig};
use throng_membership::{ClusterSecret, DetectionProfile, MembershipConfig};

use super::NodeOptions;

/// Smallest accepted secret, in bytes: shorter secrets are guessable.
pub const MIN_SECRET_LEN: usize = 16;

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
}

/// Everything a node needs to join a cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster.
    pub name: NodeId,
    /// TCP address for node-to-node messages.
    pub rpc_bind: SocketAddr,
    /// Membership (gossip and failure detection) settings, secret included.
    pub membership: MembershipConfig,
    /// Placement ring settings.
    pub ring: RingConfig,
    /// Transport limits.
    pub transport: NodeOptions,
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
    pub fn from_sources(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
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
        if let Some(v) = env("THRONG_RING_VNODES") {
            raw.ring_vnodes = Some(v.parse().map_err(|e| invalid("ring_vnodes", e))?);
        }
        if let Some(v) = env("THRONG_MAX_FRAME_BYTES") {
            raw.max_frame_bytes = Some(v.parse().map_err(|e| invalid("max_frame_bytes", e))?);
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
        Ok(NodeConfig {
            name,
            rpc_bind,
            membership,
            ring,
            transport,
        })
    }
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
    }
}
