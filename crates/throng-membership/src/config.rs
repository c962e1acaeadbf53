//! Configuration of a node's membership, and its validation.
//!
//! Every knob has a bound, checked once by [`MembershipConfig::validate`] (which
//! [`crate::Membership::start`] calls), so the running task never meets a value it has to guess about.
//! The failure detector's timings come from a [`DetectionProfile`] rather than from a dozen loose
//! durations: the two presets are known to work together, and `Custom` is there for the rest.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::seal;

/// Smallest accepted [`MembershipConfig::max_datagram_size`]: room for a seal, foca's header
/// (two identities) and a few membership updates.
pub const MIN_DATAGRAM_SIZE: usize = 512;
/// Largest accepted [`MembershipConfig::max_datagram_size`]: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM_SIZE: usize = 65_507;
/// Default [`MembershipConfig::max_datagram_size`]: below a 1500-byte Ethernet MTU after IP and UDP
/// headers, so gossip is never fragmented.
pub const DEFAULT_DATAGRAM_SIZE: usize = 1400;
/// Shortest accepted cluster secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest accepted cluster secret, in bytes.
pub const MAX_SECRET_LEN: usize = 1024;
/// Most seed entries a configuration may list.
pub const MAX_SEEDS: usize = 64;
/// Most addresses taken from resolving all seeds in one announce round (a headless service may
/// resolve to many); the rest are ignored for that round.
pub const MAX_SEED_ADDRS: usize = 256;
/// Upper bound of [`MembershipConfig::max_members`].
pub const MAX_MEMBERS_LIMIT: usize = 65_536;
/// Default [`MembershipConfig::max_members`].
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Upper bound of [`MembershipConfig::event_capacity`].
pub const MAX_EVENT_CAPACITY: usize = 65_536;
/// Default [`MembershipConfig::event_capacity`].
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
/// Upper bound of [`MembershipConfig::announce_interval`] and [`MembershipConfig::leave_timeout`].
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest accepted [`MulticastConfig::interval`]: a LAN is shared, so discovery chatter is kept
/// to a few datagrams per node per second at most.
pub const MIN_MULTICAST_INTERVAL: Duration = Duration::from_millis(100);
/// Largest accepted [`MulticastConfig::ttl`] (the IP header's field is one byte).
pub const MAX_MULTICAST_TTL: u32 = 255;
/// Default [`MulticastConfig::group`]: `239.255.47.32:45892`.
///
/// The address is in `239.255.0.0/16`, the *IPv4 Local Scope* of the administratively scoped
/// block (RFC 2365 §6.1): it is meant for exactly this kind of site-local use without an IANA
/// assignment, and routers at a site's boundary do not forward it. (libcluster's Gossip strategy
/// defaults to `233.252.1.32`, which lies in IANA's AD-HOC Block III, handed out by assignment;
/// the documentation range `233.252.0.0/24` is for examples, not for real traffic.) The port is
/// libcluster's.
pub const DEFAULT_MULTICAST_GROUP: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(239, 255, 47, 32), 45892);
/// Default [`MulticastConfig::interval`].
pub const DEFAULT_MULTICAST_INTERVAL: Duration = Duration::from_secs(5);
/// Cluster size the [`DetectionProfile::Lan`] preset is tuned for (foca scales its suspicion time
/// and retransmissions with the logarithm of this).
pub const LAN_CLUSTER_SIZE_HINT: u32 = 32;

/// The shared secret that admits a node to a cluster.
///
/// Every datagram is sealed with a key derived from it; nodes with different secrets cannot read
/// or influence each other. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// A secret made of `bytes` (validated by [`MembershipConfig::validate`]:
    /// [`MIN_SECRET_LEN`]..=[`MAX_SECRET_LEN`] bytes).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}

/// How quickly, and how nervously, failed nodes are detected.
#[derive(Debug, Clone)]
pub enum DetectionProfile {
    /// foca's LAN preset ([`foca::Config::new_lan`], sized for [`LAN_CLUSTER_SIZE_HINT`] nodes):
    /// probes every second, a crashed node is declared down after about 7–9 s. For production
    /// on a data-centre network.
    Lan,
    /// Aggressive timings for demos and tests: probes every 250 ms with a 100 ms round trip and a
    /// 500 ms suspicion, so a killed node is declared down everywhere within about 2 s on
    /// loopback. Too nervous for a loaded or lossy network.
    Fast,
    /// Any foca configuration. `max_packet_size` is ignored: it is derived from
    /// [`MembershipConfig::max_datagram_size`].
    Custom(foca::Config),
}

impl DetectionProfile {
    /// The foca configuration of this profile (before the packet size is set).
    pub fn foca_config(&self) -> foca::Config {
        match self {
            DetectionProfile::Lan => foca::Config::new_lan(lan_size()),
            DetectionProfile::Fast => fast(),
            DetectionProfile::Custom(config) => config.clone(),
        }
    }
}

fn lan_size() -> NonZeroU32 {
    NonZeroU32::new(LAN_CLUSTER_SIZE_HINT).unwrap_or(NonZeroU32::MIN)
}

fn fast() -> foca::Config {
    let every = |ms, n| {
        Some(foca::PeriodicParams {
            frequency: Duration::from_millis(ms),
            num_members: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
        })
    };
    foca::Config {
        probe_period: Duration::from_millis(250),
        probe_rtt: Duration::from_millis(100),
        suspect_to_down_after: Duration::from_millis(500),
        max_transmissions: NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN),
        notify_down_members: true,
        periodic_announce: every(1000, 1),
        periodic_announce_to_down_members: every(2000, 1),
        periodic_gossip: every(100, 3),
        ..foca::Config::new_lan(lan_size())
    }
}

/// Discovery of the other nodes on the local network by UDP multicast (like libcluster's Gossip
/// strategy); see [`MembershipConfig::multicast`].
///
/// Every `interval` (with ±20 % jitter) the node sends a sealed `Hello` — the same hand-shake it
/// sends to seeds — from its gossip socket to `group`; it also listens on `group` with a second
/// socket (`SO_REUSEADDR` and, where available, `SO_REUSEPORT`, so several nodes on one host share
/// the group). A `Hello` from a node that is not yet a member is answered like a seed's, which
/// makes the sender announce itself to the answering node. Nodes with another cluster secret
/// cannot read, send or answer these datagrams. IPv4 only: `bind_addr` must be IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastConfig {
    /// The multicast group and port. Must be an IPv4 multicast address (`224.0.0.0/4`), with a
    /// port other than `bind_addr`'s. Default [`DEFAULT_MULTICAST_GROUP`].
    pub group: SocketAddrV4,
    /// Local interface (by its IPv4 address) on which to join the group and send to it.
    /// `0.0.0.0` (the default) lets the kernel choose (the interface of the route to the group,
    /// usually the default route's). Set it to the address of the interface the gossip socket
    /// uses — `127.0.0.1` for a cluster on loopback.
    pub interface: Ipv4Addr,
    /// IP time-to-live of the multicast `Hello`s: `1` (the default) keeps them on the local
    /// link, `0` on this host. At most [`MAX_MULTICAST_TTL`].
    pub ttl: u32,
    /// How often a `Hello` is sent to the group, also the period over which answers to `Hello`s
    /// are rate-limited. [`MIN_MULTICAST_INTERVAL`]..=[`MAX_INTERVAL`]; default
    /// [`DEFAULT_MULTICAST_INTERVAL`].
    pub interval: Duration,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        Self {
            group: DEFAULT_MULTICAST_GROUP,
            interface: Ipv4Addr::UNSPECIFIED,
            ttl: 1,
            interval: DEFAULT_MULTICAST_INTERVAL,
        }
    }
}

impl MulticastConfig {
    fn validate(&self, bind_addr: SocketAddr) -> Result<(), ConfigError> {
        if !self.group.ip().is_multicast() || self.group.port() == 0 {
            return Err(ConfigError::MulticastGroup { group: self.group });
        }
        if self.group.port() == bind_addr.port() {
            return Err(ConfigError::MulticastPortClash {
                port: self.group.port(),
            });
        }
        if !bind_addr.is_ipv4() {
            return Err(ConfigError::MulticastNeedsIpv4 { bind_addr });
        }
        let interface = self.interface;
        if interface.is_multicast() || interface.is_broadcast() {
            return Err(ConfigError::MulticastInterface { interface });
        }
        if self.ttl > MAX_MULTICAST_TTL {
            return Err(ConfigError::MulticastTtl { ttl: self.ttl });
        }
        if self.interval < MIN_MULTICAST_INTERVAL || self.interval > MAX_INTERVAL {
            return Err(ConfigError::MulticastInterval {
                interval: self.interval,
            });
        }
        Ok(())
    }
}

/// Everything a node needs to take part in cluster membership.
///
/// Start from [`MembershipConfig::new`] and set the public fields; [`crate::Membership::start`]
/// validates the result.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Local UDP address to bind for gossip. Port 0 picks a free port.
    pub bind_addr: SocketAddr,
    /// The gossip address other nodes should use to reach this one. `None` means the address
    /// actually bound, which requires `bind_addr` to have a specific (not unspecified) IP.
    pub advertise_addr: Option<SocketAddr>,
    /// Seed nodes as `host:port` strings. Each is resolved again (DNS included) at every announce
    /// round, so a name resolving to many addresses — e.g. a Kubernetes headless service — works as
    /// a discovery mechanism. The node's own address may be listed; it is skipped.
    pub seeds: Vec<String>,
    /// The cluster secret; nodes with different secrets never see each other.
    pub secret: ClusterSecret,
    /// Failure-detection timings.
    pub profile: DetectionProfile,
    /// How often seed addresses that are not yet known members are (re)contacted. A node keeps
    /// announcing, at this pace, to every resolved seed address it does not see as a member, so
    /// nodes started in any order find each other and split clusters seeded alike merge.
    pub announce_interval: Duration,
    /// Largest datagram sent or accepted, seal included. Larger incoming datagrams are refused.
    pub max_datagram_size: usize,
    /// Most members (other than this node) reported by [`crate::Membership::members`] and events.
    /// At the bound, further nodes are left out of the view — counted in
    /// [`crate::MembershipStats::members_over_limit`] and logged — and are added when room frees up.
    /// foca itself still probes them.
    pub max_members: usize,
    /// Capacity of the event channel behind [`crate::Membership::subscribe`]. A subscriber that falls
    /// further behind gets `RecvError::Lagged` and must resynchronise from `members()`.
    pub event_capacity: usize,
    /// How long a graceful leave waits for the other members to acknowledge that this node is
    /// leaving, before leaving anyway.
    pub leave_timeout: Duration,
    /// Discovery on the local network by UDP multicast, in addition to (or instead of) `seeds`.
    /// `None` (the default) disables it.
    pub multicast: Option<MulticastConfig>,
}

impl MembershipConfig {
    /// A configuration binding `bind_addr` with `secret`, no seeds, the [`DetectionProfile::Lan`]
    /// profile, a 1 s announce interval, [`DEFAULT_DATAGRAM_SIZE`], [`DEFAULT_MAX_MEMBERS`],
    /// [`DEFAULT_EVENT_CAPACITY`], a 1 s leave timeout and no multicast discovery.
    pub fn new(bind_addr: SocketAddr, secret: ClusterSecret) -> Self {
        Self {
            bind_addr,
            advertise_addr: None,
            seeds: Vec::new(),
            secret,
            profile: DetectionProfile::Lan,
            announce_interval: Duration::from_secs(1),
            max_datagram_size: DEFAULT_DATAGRAM_SIZE,
            max_members: DEFAULT_MAX_MEMBERS,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            leave_timeout: Duration::from_secs(1),
            multicast: None,
        }
    }

    /// Checks every bound; [`crate::Membership::start`] calls this first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secret = self.secret.as_bytes().len();
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret) {
            return Err(ConfigError::SecretLength { len: secret });
        }
        if self.advertise_addr.is_none() && self.bind_addr.ip().is_unspecified() {
            return Err(ConfigError::AdvertiseAddrRequired {
                bind_addr: self.bind_addr,
            });
        }
        if let Some(addr) = self.advertise_addr {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(ConfigError::InvalidAdvertiseAddr { addr });
            }
        }
        if self.seeds.len() > MAX_SEEDS {
            return Err(ConfigError::TooManySeeds {
                count: self.seeds.len(),
            });
        }
        if let Some(seed) = self.seeds.iter().find(|s| !is_host_port(s)) {
            return Err(ConfigError::InvalidSeed { seed: seed.clone() });
        }
        if !(MIN_DATAGRAM_SIZE..=MAX_DATAGRAM_SIZE).contains(&self.max_datagram_size) {
            return Err(ConfigError::DatagramSize {
                size: self.max_datagram_size,
            });
        }
        if !(1..=MAX_MEMBERS_LIMIT).contains(&self.max_members) {
            return Err(ConfigError::MaxMembers {
                max: self.max_members,
            });
        }
        if !(1..=MAX_EVENT_CAPACITY).contains(&self.event_capacity) {
            return Err(ConfigError::EventCapacity {
                capacity: self.event_capacity,
            });
        }
        check_interval("announce_interval", self.announce_interval)?;
        check_interval("leave_timeout", self.leave_timeout)?;
        if let Some(multicast) = &self.multicast {
            multicast.validate(self.bind_addr)?;
        }
        check_detection(&self.profile.foca_config())
    }

    /// The foca configuration to run: the profile's, with the packet size that leaves room for the
    /// seal and the frame kind byte.
    pub(crate) fn foca_config(&self) -> foca::Config {
        let mut config = self.profile.foca_config();
        let packet = self.max_datagram_size.saturating_sub(seal::OVERHEAD + 1);
        config.max_packet_size = NonZeroUsize::new(packet).unwrap_or(NonZeroUsize::MIN);
        config
    }
}

fn is_host_port(seed: &str) -> bool {
    match seed.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

fn check_interval(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() || value > MAX_INTERVAL {
        Err(ConfigError::Interval { field, value })
    } else {
        Ok(())
    }
}

fn check_detection(config: &foca::Config) -> Result<(), ConfigError> {
    let bad = |reason| Err(ConfigError::Detection { reason });
    if config.probe_rtt.is_zero() || config.probe_period.is_zero() {
        return bad("probe_period and probe_rtt must not be zero");
    }
    if config.probe_rtt >= config.probe_period {
        return bad("probe_rtt must be shorter than probe_period");
    }
    if config.suspect_to_down_after.is_zero() {
        return bad("suspect_to_down_after must not be zero");
    }
    let periodic = [
        &config.periodic_announce,
        &config.periodic_announce_to_down_members,
        &config.periodic_gossip,
    ];
    if periodic
        .iter()
        .any(|p| p.as_ref().is_some_and(|p| p.frequency.is_zero()))
    {
        return bad("periodic frequencies must not be zero");
    }
    Ok(())
}

/// Why a [`MembershipConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] or longer than [`MAX_SECRET_LEN`] bytes.
    #[error(
        "cluster secret is {len} bytes; it must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes"
    )]
    SecretLength {
        /// Length of the rejected secret.
        len: usize,
    },
    /// `bind_addr` has an unspecified IP (e.g. `0.0.0.0`) and no `advertise_addr` says how others
    /// reach this node.
    #[error("bind address {bind_addr} is unspecified: set advertise_addr to the address other nodes should use")]
    AdvertiseAddrRequired {
        /// The configured bind address.
        bind_addr: SocketAddr,
    },
    /// `advertise_addr` has an unspecified IP or port 0.
    #[error("advertise address {addr} must have a specific IP and a non-zero port")]
    InvalidAdvertiseAddr {
        /// The rejected address.
        addr: SocketAddr,
    },
    /// More than [`MAX_SEEDS`] seeds.
    #[error("{count} seeds configured; at most {MAX_SEEDS} are allowed")]
    TooManySeeds {
        /// Number of seeds configured.
        count: usize,
    },
    /// A seed is not of the form `host:port` with a non-zero port.
    #[error("seed {seed:?} is not of the form host:port")]
    InvalidSeed {
        /// The rejected seed.
        seed: String,
    },
    /// `max_datagram_size` is outside [`MIN_DATAGRAM_SIZE`]..=[`MAX_DATAGRAM_SIZE`].
    #[error("max_datagram_size {size} is outside {MIN_DATAGRAM_SIZE}..={MAX_DATAGRAM_SIZE}")]
    DatagramSize {
        /// The rejected size.
        size: usize,
    },
    /// `max_members` is outside 1..=[`MAX_MEMBERS_LIMIT`].
    #[error("max_members {max} is outside 1..={MAX_MEMBERS_LIMIT}")]
    MaxMembers {
        /// The rejected bound.
        max: usize,
    },
    /// `event_capacity` is outside 1..=[`MAX_EVENT_CAPACITY`].
    #[error("event_capacity {capacity} is outside 1..={MAX_EVENT_CAPACITY}")]
    EventCapacity {
        /// The rejected capacity.
        capacity: usize,
    },
    /// A duration is zero or longer than [`MAX_INTERVAL`].
    #[error("{field} of {value:?} must be non-zero and at most {MAX_INTERVAL:?}")]
    Interval {
        /// Name of the field.
        field: &'static str,
        /// The rejected value.
        value: Duration,
    },
    /// [`MulticastConfig::group`] is not an IPv4 multicast address, or its port is 0.
    #[error("multicast group {group} must be an IPv4 multicast address (224.0.0.0/4) with a non-zero port")]
    MulticastGroup {
        /// The rejected group.
        group: SocketAddrV4,
    },
    /// [`MulticastConfig::group`] uses the gossip socket's port.
    #[error("multicast group port {port} is also the gossip port; use another port")]
    MulticastPortClash {
        /// The port both use.
        port: u16,
    },
    /// Multicast discovery is IPv4-only, but `bind_addr` is IPv6.
    #[error("multicast discovery is IPv4-only; bind address {bind_addr} is not")]
    MulticastNeedsIpv4 {
        /// The configured bind address.
        bind_addr: SocketAddr,
    },
    /// [`MulticastConfig::interface`] is a multicast or broadcast address.
    #[error("multicast interface {interface} must be an interface's unicast address or 0.0.0.0")]
    MulticastInterface {
        /// The rejected interface address.
        interface: Ipv4Addr,
    },
    /// [`MulticastConfig::ttl`] is above [`MAX_MULTICAST_TTL`].
    #[error("multicast ttl {ttl} is above {MAX_MULTICAST_TTL}")]
    MulticastTtl {
        /// The rejected TTL.
        ttl: u32,
    },
    /// [`MulticastConfig::interval`] is outside [`MIN_MULTICAST_INTERVAL`]..=[`MAX_INTERVAL`].
    #[error(
        "multicast interval {interval:?} is outside {MIN_MULTICAST_INTERVAL:?}..={MAX_INTERVAL:?}"
    )]
    MulticastInterval {
        /// The rejected interval.
        interval: Duration,
    },
    /// The detection profile's foca configuration is inconsistent.
    #[error("invalid detection profile: {reason}")]
    Detection {
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> MembershipConfig {
        MembershipConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            ClusterSecret::new(*b"0123456789abcdef"),
        )
    }

    #[test]
    fn defaults_and_presets_are_valid() {
        valid().validate().unwrap();
        for profile in [DetectionProfile::Lan, DetectionProfile::Fast] {
            let config = MembershipConfig { profile, ..valid() };
            config.validate().unwrap();
        }
    }

    #[test]
    fn secret_length_is_bounded() {
        let mut config = valid();
        config.secret = ClusterSecret::new(vec![1; MIN_SECRET_LEN - 1]);
        assert_eq!(
            config.validate(),
            Err(ConfigError::SecretLength {
                len: MIN_SECRET_LEN - 1
            })
        );
        config.secret = ClusterSecret::new(vec![1; MAX_SECRET_LEN + 1]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::SecretLength { .. })
        ));
        config.secret = ClusterSecret::new(vec![1; MAX_SECRET_LEN]);
        config.validate().unwrap();
    }

    #[test]
    fn secret_is_not_printed() {
        let config = valid();
        let printed = format!("{config:?}");
        assert!(printed.contains("ClusterSecret(16 bytes)"));
        assert!(!printed.contains("0123456789abcdef"));
    }

    #[test]
    fn unspecified_bind_needs_an_advertised_address() {
        let mut config = valid();
        config.bind_addr = "0.0.0.0:7000".parse().unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::AdvertiseAddrRequired { .. })
        ));
        config.advertise_addr = Some("0.0.0.0:7000".parse().unwrap());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InvalidAdvertiseAddr { .. })
        ));
        config.advertise_addr = Some("10.0.0.5:0".parse().unwrap());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InvalidAdvertiseAddr { .. })
        ));
        config.advertise_addr = Some("10.0.0.5:7000".parse().unwrap());
        config.validate().unwrap();
    }

    #[test]
    fn seeds_must_be_host_port() {
        let mut config = valid();
        config.seeds = vec![
            "127.0.0.1:7000".into(),
            "throng.default.svc.cluster.local:7000".into(),
            "[::1]:7000".into(),
        ];
        config.validate().unwrap();
        for bad in ["nohost", ":7000", "host:", "host:0", "host:70000", "host:x"] {
            config.seeds = vec![bad.into()];
            assert_eq!(
                config.validate(),
                Err(ConfigError::InvalidSeed { seed: bad.into() }),
                "{bad}"
            );
        }
        config.seeds = vec!["h:1".into(); MAX_SEEDS + 1];
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooManySeeds { .. })
        ));
    }

    #[test]
    fn sizes_and_capacities_are_bounded() {
        let bad = [
            MembershipConfig {
                max_datagram_size: MIN_DATAGRAM_SIZE - 1,
                ..valid()
            },
            MembershipConfig {
                max_datagram_size: MAX_DATAGRAM_SIZE + 1,
                ..valid()
            },
            MembershipConfig {
                max_members: 0,
                ..valid()
            },
            MembershipConfig {
                max_members: MAX_MEMBERS_LIMIT + 1,
                ..valid()
            },
            MembershipConfig {
                event_capacity: 0,
                ..valid()
            },
            MembershipConfig {
                event_capacity: MAX_EVENT_CAPACITY + 1,
                ..valid()
            },
            MembershipConfig {
                announce_interval: Duration::ZERO,
                ..valid()
            },
            MembershipConfig {
                leave_timeout: MAX_INTERVAL + Duration::from_secs(1),
                ..valid()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn custom_profile_is_checked() {
        let mut foca = foca::Config::simple();
        foca.probe_rtt = foca.probe_period;
        let config = MembershipConfig {
            profile: DetectionProfile::Custom(foca),
            ..valid()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Detection { .. })
        ));

        let mut foca = foca::Config::simple();
        foca.suspect_to_down_after = Duration::ZERO;
        let config = MembershipConfig {
            profile: DetectionProfile::Custom(foca),
            ..valid()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Detection { .. })
        ));

        let config = MembershipConfig {
            profile: DetectionProfile::Custom(foca::Config::simple()),
            ..valid()
        };
        config.validate().unwrap();
    }

    #[test]
    fn multicast_defaults_are_valid_and_local() {
        let config = MembershipConfig {
            multicast: Some(MulticastConfig::default()),
            ..valid()
        };
        config.validate().unwrap();
        let group = DEFAULT_MULTICAST_GROUP.ip().octets();
        assert_eq!(&group[..2], &[239, 255], "IPv4 Local Scope (RFC 2365)");
        assert_eq!(MulticastConfig::default().ttl, 1);
        assert_eq!(MulticastConfig::default().interface, Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn multicast_is_checked() {
        let with = |multicast: MulticastConfig| MembershipConfig {
            multicast: Some(multicast),
            ..valid()
        };
        let base = MulticastConfig::default();
        let unicast: SocketAddrV4 = "10.0.0.1:45892".parse().unwrap();
        assert_eq!(
            with(MulticastConfig {
                group: unicast,
                ..base.clone()
            })
            .validate(),
            Err(ConfigError::MulticastGroup { group: unicast })
        );
        let port0: SocketAddrV4 = "239.255.47.32:0".parse().unwrap();
        assert_eq!(
            with(MulticastConfig {
                group: port0,
                ..base.clone()
            })
            .validate(),
            Err(ConfigError::MulticastGroup { group: port0 })
        );
        let mut clash = with(base.clone());
        clash.bind_addr = "127.0.0.1:45892".parse().unwrap();
        assert_eq!(
            clash.validate(),
            Err(ConfigError::MulticastPortClash { port: 45892 })
        );
        let mut v6 = with(base.clone());
        v6.bind_addr = "[::1]:7000".parse().unwrap();
        assert!(matches!(
            v6.validate(),
            Err(ConfigError::MulticastNeedsIpv4 { .. })
        ));
        for interface in [Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 1)] {
            assert_eq!(
                with(MulticastConfig {
                    interface,
                    ..base.clone()
                })
                .validate(),
                Err(ConfigError::MulticastInterface { interface })
            );
        }
        assert_eq!(
            with(MulticastConfig {
                ttl: 256,
                ..base.clone()
            })
            .validate(),
            Err(ConfigError::MulticastTtl { ttl: 256 })
        );
        for ttl in [0, 1, MAX_MULTICAST_TTL] {
            with(MulticastConfig {
                ttl,
                ..base.clone()
            })
            .validate()
            .unwrap();
        }
        for interval in [
            Duration::ZERO,
            MIN_MULTICAST_INTERVAL - Duration::from_millis(1),
            MAX_INTERVAL + Duration::from_secs(1),
        ] {
            assert_eq!(
                with(MulticastConfig {
                    interval,
                    ..base.clone()
                })
                .validate(),
                Err(ConfigError::MulticastInterval { interval })
            );
        }
        let loopback = MulticastConfig {
            interface: Ipv4Addr::LOCALHOST,
            interval: MIN_MULTICAST_INTERVAL,
            ..base
        };
        with(loopback).validate().unwrap();
    }

    #[test]
    fn packet_size_leaves_room_for_the_seal() {
        let config = MembershipConfig {
            max_datagram_size: 1000,
            ..valid()
        };
        assert_eq!(
            config.foca_config().max_packet_size.get(),
            1000 - seal::OVERHEAD - 1
        );
    }
}
