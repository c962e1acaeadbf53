//! Throng's cluster membership: which nodes are up, found through seeds, watched by SWIM.
//!
//! A node calls [`Membership::start`] with its name, its incarnation and a [`MembershipConfig`]; it
//! then learns about the other nodes through [`Membership::members`] and a stream of
//! [`MembershipEvent`]s, and leaves with [`Membership::leave`].
//!
//! # Why it is shaped this way
//!
//! - **foca does the thinking.** Failure detection and dissemination are foca's SWIM, which is
//!   sans-io: it receives datagrams and timer firings and returns datagrams to send, timers to set
//!   and notifications. The crate-private `machine` module wraps it, together with everything else
//!   this crate decides (sealing, discovery hand-shake, the leaving protocol, the member view), in
//!   one state machine with the same shape; randomness is seeded into it and time only enters as
//!   timer firings. The tokio part (`membership`) is a single task that owns the machine and the
//!   socket and carries inputs in and outputs out.
//! - **Every datagram is sealed** (XChaCha20-Poly1305, key derived from the cluster secret), because
//!   foca trusts whatever reaches it. A node without the secret can neither join nor read.
//! - **A node is its [`NodeId`] and a run is its [`Incarnation`].** foca keeps one identity per
//!   name; a restarted node (same name, higher incarnation) replaces its previous run, which is
//!   reported down *before* the new run is reported up — never both at once.
//! - **Discovery by seeds, resolved every round.** foca can only announce to an identity it
//!   already knows, so a small sealed hand-shake (`Hello` → `Welcome` carrying the seed's identity)
//!   turns a seed address into a foca announce. Seeds are resolved again at every round, so a DNS
//!   name behind which nodes come and go keeps working.
//! - **Or by multicast on the local network.** With [`MembershipConfig::multicast`] set, a node
//!   also sends the same sealed `Hello` to a multicast group at intervals and answers `Hello`s
//!   heard there from nodes it does not know yet (rate-limited), so nodes on one LAN find each
//!   other with no seed list, like libcluster's Gossip strategy. See [`MulticastConfig`].
//! - **Leaving is announced.** A leaving node first tells every member it is leaving and waits
//!   (bounded) for their acknowledgements, so they report [`MembershipEvent::NodeLeaving`] before
//!   [`MembershipEvent::NodeDown`] and can tell a hand-off from a crash.
//! - **Bounded everywhere:** datagram size, member view, event channel, command channel, timer
//!   queue, seed addresses per round; see [`MembershipConfig`] and the constants.
//!
//! # Example
//!
//! ```no_run
//! use throng_core::{Incarnation, NodeId};
//! use throng_membership::{ClusterSecret, DetectionProfile, Membership, MembershipConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = MembershipConfig::new(
//!     "127.0.0.1:7946".parse()?,
//!     ClusterSecret::new(*b"change me, I am the cluster secret"),
//! );
//! config.seeds = vec!["throng-headless.default.svc.cluster.local:7946".into()];
//! config.profile = DetectionProfile::Lan;
//!
//! let membership = Membership::start(
//!     NodeId::new("gotham")?,
//!     Incarnation(1_767_225_600_000), // e.g. wall-clock milliseconds at start-up
//!     "127.0.0.1:9000".parse()?,       // this node's RPC address, carried to the others
//!     config,
//! )
//! .await?;
//!
//! let (members, mut events) = membership.subscribe_with_members();
//! println!("already up: {members:?}");
//! while let Ok(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! membership.leave().await?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use throng_core::{Incarnation, NodeId};

mod config;
mod identity;
mod machine;
mod membership;
mod seal;
#[cfg(test)]
mod sim;
mod timers;

pub use config::{
    ClusterSecret, ConfigError, DetectionProfile, MembershipConfig, MulticastConfig,
    DEFAULT_DATAGRAM_SIZE, DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_MEMBERS, DEFAULT_MULTICAST_GROUP,
    DEFAULT_MULTICAST_INTERVAL, LAN_CLUSTER_SIZE_HINT, MAX_DATAGRAM_SIZE, MAX_EVENT_CAPACITY,
    MAX_INTERVAL, MAX_MEMBERS_LIMIT, MAX_MULTICAST_TTL, MAX_SECRET_LEN, MAX_SEEDS, MAX_SEED_ADDRS,
    MIN_DATAGRAM_SIZE, MIN_MULTICAST_INTERVAL, MIN_SECRET_LEN,
};
pub use foca::{Config as FocaConfig, PeriodicParams};
pub use membership::{Membership, MembershipError, MembershipStats};

/// One run of one node, as the cluster knows it.
///
/// Two runs of the same node (same `id`) differ at least in `incarnation`; consumers must treat
/// them as different members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's name.
    pub id: NodeId,
    /// Which run of the node this is.
    pub incarnation: Incarnation,
    /// Where the node's gossip (UDP) socket is reached.
    pub gossip_addr: SocketAddr,
    /// Where the node serves RPC; opaque to membership, carried for the runtime's transport.
    pub rpc_addr: SocketAddr,
}

impl MemberInfo {
    /// The node and run as a [`throng_core::node::Member`].
    pub fn member(&self) -> throng_core::node::Member {
        throng_core::node::Member::new(self.id.clone(), self.incarnation)
    }
}

/// A change in the set of live members, as seen from this node.
///
/// For a given run of a node, events come in the order `NodeUp`, optionally `NodeLeaving`, then
/// `NodeDown`. A restarted node's previous run is reported `NodeDown` before its new run is reported
/// `NodeUp`, so two runs of a node are never up together. A run that was declared down wrongly
/// (a pause, a partition) and rejoins is reported `NodeUp` again, with the same incarnation; that
/// node itself receives [`MembershipEvent::Rejoined`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// The member is up: reachable and taking part in the cluster.
    NodeUp(MemberInfo),
    /// The member announced that it is leaving gracefully; it is still up (and reachable) until the
    /// matching `NodeDown`. Only sent if the member's notice reached this node before it left.
    NodeLeaving(MemberInfo),
    /// The member left, crashed, was partitioned away, or was replaced by a newer run.
    NodeDown(MemberInfo),
    /// The cluster had declared *this* node down (e.g. after a pause or a partition) and it has
    /// rejoined under the same run. The others have seen this node `NodeDown` then `NodeUp`: work
    /// they took over while it was down may now exist twice.
    Rejoined(MemberInfo),
}

impl MembershipEvent {
    /// The member the event is about.
    pub fn member(&self) -> &MemberInfo {
        match self {
            MembershipEvent::NodeUp(m)
            | MembershipEvent::NodeLeaving(m)
            | MembershipEvent::NodeDown(m)
            | MembershipEvent::Rejoined(m) => m,
        }
    }
}
