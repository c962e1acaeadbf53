//! Actor types that run as distributed children: the [`Keyed`] trait, snapshots, and the erased
//! host that starts a child of a registered type from its record.
//!
//! Closures cannot cross nodes, so a distributed child is `(actor type, key, serde args)`: every
//! node registers the types it can host ([`super::Node::register`]); a node asked to host a type it
//! has not registered answers [`ChildError::UnknownType`]. An actor that opts in to state transfer
//! exports its state with [`Keyed::snapshot`] and is rebuilt from it with [`Keyed::restore`] — after
//! a crash, on the node that takes over when its node dies, and when it moves.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use throng_core::directory::Record;
use throng_core::RestartPolicy;
use tokio::sync::mpsc;

use super::node::Shared;
use super::RemoteActor;
use crate::actor::Observer;
use crate::supervisor::Shutdown;
use crate::{ActorHandle, ExitReason, SpawnOptions};

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
}

/// Where a child's snapshots go: the latest pending one (coalesced) and the final one taken when
/// the child stops cleanly.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) pending: Mutex<Option<Vec<u8>>>,
    pub(crate) last: Mutex<Option<Vec<u8>>>,
}

/// What a running child tells its supervisor's driver.
pub(crate) enum ChildNote {
    /// A snapshot is waiting in the child's slot.
    Snapshot { key: Arc<str>, slot: Arc<Slot> },
}

struct SnapObserver<A> {
    key: Arc<str>,
    slot: Arc<Slot>,
    notes: mpsc::UnboundedSender<super::dist::Note>,
    policy: SnapshotPolicy,
    since: u32,
    last: Instant,
    /// Hash of the last snapshot sent: an unchanged state is not replicated again.
    last_hash: u64,
    _a: PhantomData<fn() -> A>,
}

impl<A: Keyed> Observer<A> for SnapObserver<A> {
    fn after_message(&mut self, actor: &A) {
        self.since += 1;
        let by_count = self.policy.every_messages != 0 && self.since >= self.policy.every_messages;
        let by_time = self.policy.every.is_some_and(|t| self.last.elapsed() >= t);
        if !(by_count || by_time || actor.snapshot_due()) {
            return;
        }
        self.since = 0;
        self.last = Instant::now();
        let Some(state) = actor.snapshot() else {
            return;
        };
        let Ok(bytes) = postcard::to_allocvec(&state) else {
            tracing::warn!(key = %self.key, "snapshot could not be encoded");
            return;
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        if hash == self.last_hash {
            return;
        }
        self.last_hash = hash;
        let first = self
            .slot
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(bytes)
            .is_none();
        if first {
            let _ = self
                .notes
                .send(super::dist::Note::Child(ChildNote::Snapshot {
                    key: self.key.clone(),
                    slot: self.slot.clone(),
                }));
        }
    }

    fn on_stop(&mut self, actor: &A, reason: &ExitReason) {
        if reason.is_abnormal() {
            return;
        }
        if let Some(bytes) = actor
            .snapshot()
            .and_then(|s| postcard::to_allocvec(&s).ok())
        {
            *self.slot.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        }
    }
}

/// A registered type, erased: starts a child from its record on this node.
pub(crate) trait HostType: Send + Sync {
    /// Start the child of `record` (restoring its snapshot if any), export it as `export`, and
    /// return its handle.
    fn spawn<'a>(
        &'a self,
        shared: &'a Arc<Shared>,
        export: &'a str,
        record: &'a Record,
        key: Arc<str>,
        slot: Arc<Slot>,
        notes: mpsc::UnboundedSender<super::dist::Note>,
    ) -> super::dist::BoxFuture<'a, Result<ActorHandle, String>>;

    /// How children of this type are stopped ([`Keyed::shutdown`]).
    fn shutdown(&self) -> Shutdown;

    /// `resolve_conflict(key, ours, theirs)` on encoded states; `None` when `ours` is missing or
    /// a state does not decode (the directory then keeps its latest snapshot).
    fn merge(&self, key: &str, ours: Option<&[u8]>, theirs: Option<&[u8]>) -> Option<Vec<u8>>;
}

pub(crate) struct Host<A>(pub(crate) PhantomData<fn() -> A>);

impl<A: Keyed> HostType for Host<A> {
    fn shutdown(&self) -> Shutdown {
        A::shutdown()
    }

    fn merge(&self, key: &str, ours: Option<&[u8]>, theirs: Option<&[u8]>) -> Option<Vec<u8>> {
        let ours: A::State = postcard::from_bytes(ours?).ok()?;
        let Some(theirs) = theirs.and_then(|t| postcard::from_bytes::<A::State>(t).ok()) else {
            return postcard::to_allocvec(&ours).ok();
        };
        postcard::to_allocvec(&A::resolve_conflict(key, ours, theirs)).ok()
    }

    fn spawn<'a>(
        &'a self,
        shared: &'a Arc<Shared>,
        export: &'a str,
        record: &'a Record,
        key: Arc<str>,
        slot: Arc<Slot>,
        notes: mpsc::UnboundedSender<super::dist::Note>,
    ) -> super::dist::BoxFuture<'a, Result<ActorHandle, String>> {
        Box::pin(async move {
            let args: A::Args =
                postcard::from_bytes(&record.args).map_err(|e| format!("bad args: {e}"))?;
            let actor = match &record.snapshot {
                Some(bytes) => match postcard::from_bytes::<A::State>(bytes) {
                    Ok(state) => A::restore(&record.key, args, state),
                    Err(e) => {
                        tracing::warn!(key = %record.key, error = %e,
                            "snapshot does not decode; starting from args");
                        A::start(&record.key, args)
                    }
                },
                None => A::start(&record.key, args),
            };
            let observer = SnapObserver::<A> {
                key,
                slot,
                notes,
                policy: A::snapshot_policy(),
                since: 0,
                last: Instant::now(),
                // The state it starts from is the one the directory already holds.
                last_hash: record
                    .snapshot
                    .as_deref()
                    .map(xxhash_rust::xxh3::xxh3_64)
                    .unwrap_or(0),
                _a: PhantomData,
            };
            let child =
                crate::actor::start_observed(actor, SpawnOptions::default(), Box::new(observer))
                    .await
                    .map_err(|r| r.to_string())?;
            let _ = shared.export_typed(export, &child, true);
            Ok(child.handle().clone())
        })
    }
}
