//! Actor types that run as distributed children: the [`Keyed`] trait and its snapshot policy.
//! (The erased host that starts a child of a registered type is `dist::host`.)
//!
//! Closures cannot cross nodes, so a distributed child is `(actor type, key, serde args)`: every
//! node registers the types it can host ([`super::Node::register`]); a node asked to host a type it
//! has not registered answers [`ChildError::UnknownType`]. An actor that opts in to state transfer
//! exports its state with [`Keyed::snapshot`] and is rebuilt from it with [`Keyed::restore`] — after
//! a crash, on the node that takes over when its node dies, and when it moves.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use throng_core::RestartPolicy;

use super::transport::RemoteActor;
use crate::supervisor::Shutdown;

/// An actor type that can run as a distributed child anywhere in the cluster.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use throng::cluster::{Keyed, RemoteActor};
/// use throng::prelude::*;
///
/// struct Account { balance: i64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum Msg { Deposit(i64), Balance }
///
/// impl Actor for Account {
///     type Msg = Msg;
///     type Reply = i64;
///     async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) -> ActorResult<i64> {
///         if let Msg::Deposit(n) = msg { self.balance += n; }
///         Ok(self.balance)
///     }
/// }
///
/// impl RemoteActor for Account { const TYPE: &'static str = "bank.Account"; }
///
/// impl Keyed for Account {
///     type Args = i64;          // opening balance
///     type State = i64;         // what survives a crash, a failover or a move
///     fn start(_key: &str, opening: i64) -> Self { Account { balance: opening } }
///     fn snapshot(&self) -> Option<i64> { Some(self.balance) }
///     fn restore(_key: &str, _args: i64, balance: i64) -> Self { Account { balance } }
/// }
/// ```
pub trait Keyed: RemoteActor {
    /// What a child is started from; travels to the owner node, so it is serde.
    type Args: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// The state the child exports in snapshots (`()` for children that keep none).
    type State: Serialize + DeserializeOwned + Send + 'static;

    /// Build the child for `key` from its args (first start, and restarts with no snapshot).
    fn start(key: &str, args: Self::Args) -> Self;

    /// Restart policy of the children (default: permanent).
    fn restart() -> RestartPolicy {
        RestartPolicy::Permanent
    }

    /// How a child of this type is stopped when its supervisor stops it (terminate, a move, a
    /// lost quorum, the node shutting down): given this long to finish its mailbox and `stopped`
    /// before it is killed, killed at once, or waited for (the `shutdown` of an Elixir child
    /// spec; default [`Shutdown::default`], five seconds).
    fn shutdown() -> Shutdown {
        Shutdown::default()
    }

    /// The state to keep, or `None` (the default) if this type takes no snapshots. Called on the
    /// child's own task, after messages as [`Keyed::snapshot_policy`] says, and once when it stops
    /// cleanly (the state it moves with).
    fn snapshot(&self) -> Option<Self::State> {
        None
    }

    /// Rebuild the child from its last snapshot (default: ignore it and [`Keyed::start`]).
    fn restore(key: &str, args: Self::Args, state: Self::State) -> Self {
        let _ = state;
        Self::start(key, args)
    }

    /// When snapshots are taken (default: after every message).
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::default()
    }

    /// Two copies of the child ran at once (a network partition healed, or views disagreed) and
    /// the copy on the key's owner won: `ours` is the winner's state, `theirs` the loser's, and
    /// what this returns is the state the child goes on with. The default keeps the owner's.
    fn resolve_conflict(key: &str, ours: Self::State, theirs: Self::State) -> Self::State {
        let _ = (key, theirs);
        ours
    }

    /// Asked after every message: `true` takes a snapshot now, whatever the policy (on demand).
    fn snapshot_due(&self) -> bool {
        false
    }
}

/// When a child's state is snapshotted and replicated to its backup node. Snapshots are coalesced
/// (a child never has more than one snapshot waiting to be replicated, so a busy child costs at most
/// one replication in flight) and deduplicated (a snapshot equal to the last one is not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot after this many handled messages (0: never by count).
    pub every_messages: u32,
    /// Snapshot after a message when at least this long has passed since the last one.
    pub every: Option<Duration>,
}

impl Default for SnapshotPolicy {
    /// After every message.
    fn default() -> Self {
        SnapshotPolicy {
            every_messages: 1,
            every: None,
        }
    }
}

/// A distributed-child operation (start, terminate, list) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The owner node has not registered this actor type.
    #[error("node {node} does not host actor type {actor_type}")]
    UnknownType {
        /// The owner.
        node: String,
        /// The type.
        actor_type: String,
    },
    /// A child with this key already runs on its owner.
    #[error("child {0:?} already started")]
    AlreadyStarted(String),
    /// The child's start failed on its owner (bad args, `started` error or panic).
    #[error("child failed to start: {0}")]
    Failed(String),
    /// The owner is down, unreachable, or did not answer in time.
    #[error("owner node {0} is down or unreachable")]
    NodeDown(String),
    /// The arguments (or an answer) could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// No child with this key runs on its owner.
    #[error("no child {0:?}")]
    NoSuchChild(String),
    /// No distributed supervisor with this name runs on the node asked.
    #[error("no distributed supervisor {0:?} there")]
    NoSupervisor(String),
    /// The supervisor is in quorum mode and the owner side does not see a quorum.
    #[error("no quorum: {seen} of the {needed} nodes required are in view")]
    NoQuorum {
        /// Nodes seen (this one included).
        seen: usize,
        /// Nodes required: half the configured cluster size, plus one.
        needed: usize,
    },
    /// The views of the nodes kept disagreeing on the owner (retry once membership settles).
    #[error("owner of {0:?} unsettled: views disagree")]
    Unsettled(String),
    /// The supervisor asks for a [`Durability`](crate::cluster::Durability) this node cannot
    /// give (it has neither `data_dir` nor `store_url`).
    #[error("{0}")]
    NotDurable(String),
}
