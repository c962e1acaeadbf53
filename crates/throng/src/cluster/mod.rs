//! Throng across machines: nodes, the authenticated transport between them, and actors addressed
//! on other nodes.
//!
//! - `wire` (crate-private): handshake, per-frame seal, frames; total decoders.
//! - [`tls`]: mutual TLS (the production security mode); `dev_certs` (feature `dev-certs`) a
//!   development certificate generator.
//! - [`node`]: a [`Node`] listens for peers, keeps one connection per peer pair, exports local
//!   actors under names, and hands out [`crate::ActorRef`]s to actors on other nodes.
//! - `transport` (crate-private): connections, frames, exports, remote references and calls;
//!   it hands what it does not own to the node (its `Sink`).
//! - `outbox`: a peer's outgoing lanes, into which senders encode frames directly.

pub mod config;
#[cfg(feature = "dev-certs")]
pub mod dev_certs;
pub mod dist;
mod export_id;
pub mod keyed;
pub mod names;
pub mod node;
mod outbox;
pub mod tls;
pub(crate) mod transport;
mod view;
pub(crate) mod wire;

#[doc(hidden)]
pub mod testing;

pub use config::{ConfigError, NodeConfig};
pub use dist::{
    ChildInfo, DistEvent, DistOptions, DistStats, DistSupervisor, Durability, DEFAULT_SUPERVISOR,
};
pub use keyed::{ChildError, Keyed, SnapshotPolicy};
pub use names::{NameError, Names, NamesConfig, NamesError, NamesEvent, OnConflict};
pub use node::{
    ConnectionStats, ExportError, Node, NodeError, NodeOptions, RemoteActor,
    DEFAULT_MAX_HANDSHAKES, MAX_HANDSHAKES_LIMIT,
};
pub use throng_core::directory::{ChildEvent, Distribution, Uniform};
pub use throng_core::strategies::{Explicit, UniformRandom};
pub use throng_core::{Incarnation, NodeId};
pub use throng_membership::{ClusterSecret, DetectionProfile, MemberInfo};
pub use tls::{Security, TlsConfig, TlsError};
pub use view::{ClusterEvent, ClusterSubscription, MemberStatus, EVENT_CAPACITY};
