//! The distributed supervisor's directory: which keyed children this node runs, which backups it
//! holds for other nodes, and what to do when either changes.
//!
//! One [`Directory`] per distributed supervisor per node. It is a pure state machine: the runtime
//! feeds it inputs (a start request, a child that was spawned or exited, a state snapshot, a
//! message from a peer's directory, a new membership view, the current time) and executes the
//! [`Action`]s it returns (spawn or stop a local child, send a [`DirMsg`] to a peer, answer a
//! request, tell listeners). The seeded simulator (`throng-sim`) drives the same code.
//!
//! # Model
//! - **Ownership.** Each key is owned by `owner(key)` over the current view (the consistent-hash
//!   ring of the eligible nodes, or a user [`Distribution`]). There is no global child table: a
//!   node knows only the children it runs ([`Directory::owned`]) and the backups it holds.
//! - **Backups.** The owner replicates each child's record — spec (type, args, policy) and, for
//!   actors that opt in, the latest state snapshot with its version — to the key's *backup*: the
//!   node that would own the key if the owner disappeared (`successors(key, 2)[1]` on the ring). On
//!   every view change, the owner re-replicates the keys whose backup changed and tells the old
//!   backup to drop them.
//! - **Failover.** When the view loses a node (it is in neither the owners nor the leaving
//!   nodes: *down*), every backup whose origin left the view and whose key this node now owns is
//!   promoted: the child is spawned from its latest snapshot (or its args) and replicated to its
//!   new backup. A backup whose key is now owned by a third node (two nodes lost at once, or views
//!   that disagree) is sent there as [`DirMsg::Adopt`].
//! - **Leaving.** [`Directory::set_members`] takes the owners (the ring) and the *leaving* nodes
//!   (alive, announced a graceful leave): a leaving node owns nothing and is nobody's backup, but
//!   what it runs or holds is not failed over — it hands its children off itself. On the leaving
//!   node, [`Directory::leave`] moves every child to its new owner (drain-stop, final snapshot,
//!   [`DirMsg::Adopt`]); [`Directory::handed_off`] says when it may exit.
//! - **Moves.** A running child whose key now belongs to another node (a node joined or leaves,
//!   views converged) is drain-stopped, its final snapshot taken, and handed to the new owner as
//!   [`DirMsg::Adopt`]; at most [`DirConfig::max_moves`] children move at once.
//! - **Make before break.** A node that hands a copy off (or stops being a key's backup) keeps
//!   its copy until the receiver's copy is safe (replicated to the receiver's backup) and the
//!   receiver confirms with a tagged [`DirMsg::Drop`]. Every [`DirMsg::Drop`] is acknowledged
//!   ([`DirMsg::Dropped`]): a terminate is answered, and `Stopped` emitted, only once every node
//!   that held a copy dropped it (or left the view), so a terminated child does not come back.
//! - **Removals chase copies.** A removal's drops ([`DirMsg::Drop`] with `remove`) also reach
//!   the copies their holders made meanwhile: a holder that failed its copy over stops that child
//!   and answers once it is removed; one that handed its copy on names the receiver, which the
//!   remover chases ([`DirMsg::Chase`]). The removed child's [`Record::generation`] is buried on
//!   every node the removal reaches, so a late copy of it (a replication or hand-off overtaken by
//!   the removal) is refused instead of failed over, and a copy that survived the removal on the
//!   far side of a partition is stopped ([`DirMsg::Removed`]).
//! - **Reconciliation.** When a peer (re)joins the view or its connection is re-established,
//!   each side lists the copies it holds for the other ([`DirMsg::Held`]); the other answers
//!   with drops for the copies it no longer needs and with replications for the ones missing.
//!   An acknowledgement of a replication the owner no longer needs is answered with a drop.
//! - **Conflicts.** Two copies of one key meet when an adoption (or an orphaned backup) reaches a
//!   node that runs the key: the running copy wins (after views converge it is the copy on
//!   `owner(key)`, as every other copy moves there), and when the other copy has a snapshot its
//!   state is merged into the winner: [`Action::Merge`] drain-stops the winner and the runtime
//!   reports `resolve_conflict(ours, theirs)` with [`Directory::merged`]; the winner restarts from
//!   the merged state with a version above both. Both sides see [`ChildEvent::Conflict`]
//!   (`here_lost: true` on the node whose copy was merged away, told by [`DirMsg::Conflict`]).
//! - **Restarts.** A child that exits is restarted or removed by its [`RestartPolicy`](crate::RestartPolicy); a child that
//!   restarts more than the supervisor's [`Intensity`] allows within its window is removed with
//!   [`ChildEvent::GaveUp`] (intensity is counted per child, so one crashing child cannot take its
//!   siblings down). Restarts resume from the child's latest snapshot.
//! - **Quorum.** With [`DirConfig::quorum`] set to the configured cluster size, a node that sees
//!   fewer than half of it stops every child it runs and refuses starts with
//!   [`StartError::NoQuorum`] until the view grows back (the majority side fails the children
//!   over). It keeps every copy it holds (backups, hand-off copies, orphans) and still takes and
//!   acknowledges replications and removals — holding a copy runs nothing — because when no side
//!   has a majority those copies are the children's last; an adoption is kept likewise, as an
//!   orphan copy (not confirmed: its sender keeps its copy too). When the quorum returns it
//!   reconciles with every peer in its view ([`DirMsg::Held`]).
//!   A child stopped for quorum is not removed: nothing is buried and no copy elsewhere is told to
//!   go (the majority side runs it from its backup). Its final record is kept here as an orphan
//!   copy held for this node itself, failed over like any orphan once the quorum returns: if the
//!   other side never failed it over (its view kept this node, so nobody ran it meanwhile), this
//!   is what runs it again; if it did, the two copies meet and merge (the conflict rule).
//!
//! # Files
//! One file per protocol, each an `impl Directory` block over the state declared here:
//! - `msg.rs`: the wire contract, [`DirMsg`] and the types it carries ([`Record`], [`Epoch`],
//!   [`Holder`], and the newtypes [`Generation`], [`Version`] and [`Tag`]), and what a start
//!   request carries ([`StartSpec`]).
//! - `lifecycle.rs`: a child's life on its owner: start, spawn, snapshot, exit and restart,
//!   terminate, merge.
//! - `copies.rs`: the copies held here: backups, hand-off copies, orphans; replication,
//!   acknowledgement, drops and reconciliation ([`DirMsg::Held`]); conflicts between copies.
//! - `handoff.rs`: moving children: leave, rebalance, the move throttle, hand-offs and adoptions.
//! - `removal.rs`: removing a child for good: drops that remove, chases, tombstones.
//! - `view.rs`: membership: view changes, quorum loss and return, nodes down, reconnections.
//! - `receive.rs`: the dispatcher of [`DirMsg`]s and what a node without a quorum does with them.
//! - `check.rs`: the invariants that hold after every input ([`Directory::check`]).
//! - `capped.rs`: the bounded first-in-first-out memory of hand-offs taken and of tombstones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Intensity, NodeId, RestartWindow};
use crate::{Ring, RingConfig};

mod capped;
mod check;
mod copies;
mod durable;
mod handoff;
mod lifecycle;
mod msg;
mod receive;
mod removal;
mod view;

#[cfg(test)]
mod tests;

use capped::CappedSet;
use handoff::HandOff;
use removal::{Removal, Source};

pub use check::Broken;
pub use durable::DurableEntry;
pub use msg::{
    DirMsg, Epoch, Generation, Holder, Record, StartSpec, Tag, Version, Writer, MAX_ABSORBED,
};

/// Where a key lives, given the eligible nodes. The ring ([`Uniform`]) is the default.
pub trait Distribution: Send + Sync + 'static {
    /// The owner of `key` among the nodes of `ring` (`None` only if the ring is empty). Must be a
    /// pure function of its inputs: every node computes it locally and must agree.
    fn owner(&self, key: &[u8], ring: &Ring) -> Option<NodeId>;

    /// The node that would own `key` if `owner(key)` left: where its backup is kept. The default
    /// evaluates [`Distribution::owner`] on the ring without the owner.
    fn backup(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        let owner = self.owner(key, ring)?;
        let mut without = ring.clone();
        without.remove(&owner);
        self.owner(key, &without)
    }

    /// Whether taking nodes off the ring changes the owner only of the keys those nodes owned,
    /// and the backup only of the keys they owned or backed up (true of consistent and
    /// rendezvous hashing). When it is, a node lost or leaving costs each directory work in
    /// proportion to what that node owned and backed up, not a pass over every child
    /// (`Directory::work`). The default is `false`: every change re-derives every placement.
    fn removal_is_local(&self) -> bool {
        false
    }
}

/// Consistent hashing over the ring's virtual nodes: each node owns about `1/n` of the keys, and a
/// view change moves only the keys of the nodes that came or went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uniform;

impl Distribution for Uniform {
    fn owner(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        ring.node_for(key).cloned()
    }

    fn backup(&self, key: &[u8], ring: &Ring) -> Option<NodeId> {
        ring.successors(key, 2).nth(1).cloned()
    }

    /// The first two distinct successors of the key's point: removing any other node leaves both.
    fn removal_is_local(&self) -> bool {
        true
    }
}

/// How many hand-offs taken a directory remembers, to recognize one sent again.
pub const MAX_ADOPTIONS: usize = 4096;

/// How many bytes of removed keys a [`DirMsg::Buried`] carries at most (the newest first).
pub const MAX_BURIED_BYTES: usize = 64 * 1024;

/// How many removed children (key and generation) a directory remembers, to refuse their late copies.
pub const MAX_TOMBSTONES: usize = 4096;

/// How many hand-offs a removal follows to reach a copy made from one of its copies.
const MAX_CHASES: u8 = 16;

/// Files `key` under `node` in `index` (nothing for `None`).
fn index(index: &mut BTreeMap<NodeId, BTreeSet<String>>, node: Option<&NodeId>, key: &str) {
    if let Some(node) = node {
        if let Some(keys) = index.get_mut(node) {
            if !keys.contains(key) {
                keys.insert(key.to_owned());
            }
        } else {
            index.insert(node.clone(), BTreeSet::from([key.to_owned()]));
        }
    }
}

/// Removes `key` from under `node` in `index` (nothing for `None`).
fn unindex(index: &mut BTreeMap<NodeId, BTreeSet<String>>, node: Option<&NodeId>, key: &str) {
    if let Some(node) = node {
        if let Some(keys) = index.get_mut(node) {
            keys.remove(key);
            if keys.is_empty() {
                index.remove(node);
            }
        }
    }
}

/// Adds `h` to `list` unless it is named there already.
fn add_holder(list: &mut Vec<Holder>, h: Holder) {
    if !list.contains(&h) {
        list.push(h);
    }
}

/// Why a start request failed on the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartError {
    /// A child with this key already runs here.
    #[error("child {0:?} already started")]
    AlreadyStarted(String),
    /// This node does not own the key in its current view (or it is leaving); the caller should
    /// retry at `owner`.
    #[error("not the owner of the key; owner is {owner:?}")]
    NotOwner {
        /// The owner in this node's view, if any.
        owner: Option<NodeId>,
    },
    /// The child failed to start (bad arguments, `started` failed or panicked).
    #[error("child failed to start: {0}")]
    Failed(String),
    /// The supervisor is limited to a quorum and this node does not see one.
    #[error("no quorum: this node sees {seen} of {needed} required nodes")]
    NoQuorum {
        /// Nodes in view.
        seen: usize,
        /// Nodes needed.
        needed: usize,
    },
    /// The key is not running here.
    #[error("no child {0:?}")]
    NoSuchChild(String),
    /// The owner does not host children of this actor type (it was not registered there).
    #[error("actor type {actor_type:?} is not hosted here")]
    UnknownType {
        /// The type.
        actor_type: String,
    },
}

/// Why the runtime could not spawn a child ([`Directory::spawned`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// This node does not host children of the record's actor type.
    #[error("actor type {0:?} is not hosted here")]
    UnknownType(String),
    /// The child failed to start (bad arguments, `started` failed or panicked).
    #[error("{0}")]
    Failed(String),
}

impl From<SpawnError> for StartError {
    fn from(e: SpawnError) -> Self {
        match e {
            SpawnError::UnknownType(actor_type) => StartError::UnknownType { actor_type },
            SpawnError::Failed(why) => StartError::Failed(why),
        }
    }
}

/// What listeners hear about children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildEvent {
    /// A child started here for the first time.
    Started {
        /// The key.
        key: String,
    },
    /// A child running here exited and was restarted.
    Restarted {
        /// The key.
        key: String,
    },
    /// A child running here stopped for good (policy, terminate, or intensity), and its backups
    /// confirmed they dropped their copies.
    Stopped {
        /// The key.
        key: String,
    },
    /// A child was started here from a copy held for a node that left the view: its backup
    /// here, or a copy passed on by `from` (a backup elsewhere, or a hand-off whose receiver
    /// left).
    FailedOver {
        /// The key.
        key: String,
        /// The node it came from.
        from: NodeId,
        /// Whether a state snapshot was restored (otherwise it restarted from its args).
        from_snapshot: bool,
    },
    /// A child was handed off to this node by `from` in a graceful move (its key changed owner,
    /// or `from` leaves) and started here from its final state.
    Adopted {
        /// The key.
        key: String,
        /// The node it came from.
        from: NodeId,
    },
    /// A child moved from this node to `to` (its key changed owner, or this node leaves).
    Migrated {
        /// The key.
        key: String,
        /// The new owner.
        to: NodeId,
    },
    /// Two copies of a child met. `here_lost: false`: the copy here is the winner; the other
    /// copy's state is merged into it ([`Action::Merge`]) when it has one. `here_lost: true`: the
    /// copy this node had sent to `other` met a copy running there and was merged into it.
    Conflict {
        /// The key.
        key: String,
        /// The other node holding a copy.
        other: NodeId,
        /// Whether the copy here was the loser.
        here_lost: bool,
    },
    /// A child restarted too often and was removed.
    GaveUp {
        /// The key.
        key: String,
        /// Restarts counted in the window.
        restarts: u32,
    },
}

/// Why the directory asks the runtime to stop a child ([`Action::Stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Terminated by a request, or removed by its policy: stop it for good.
    Terminate,
    /// Moving to another node (its key changed owner, or this node leaves): drain-stop it (what
    /// its mailbox accepted is processed, later messages are refused so callers retry at the new
    /// owner) and report its final snapshot.
    Move,
    /// This node lost its quorum: stop it; the majority side runs it.
    Quorum,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the child of `record` here, from `record.snapshot` if present (else from its args);
    /// then report [`Directory::spawned`].
    Spawn(Record),
    /// Stop the local child `key` (see [`StopReason`]); report its exit (with a final snapshot
    /// when it has one) through [`Directory::exited`].
    Stop {
        /// The key.
        key: String,
        /// Why.
        reason: StopReason,
    },
    /// A copy of the local child `key` met another copy, `theirs`, and the copy here wins: drain-
    /// stop the local child (as for [`StopReason::Move`]); with its final snapshot `ours` (or, if
    /// it exported none, the latest snapshot of [`Directory::owned`]), compute
    /// `resolve_conflict(key, ours, theirs.snapshot)` and report it with [`Directory::merged`].
    /// The directory then spawns the child again from the merged state. Every exit of the child
    /// after this action is reported through `merged`, not `exited` (if `exited` is called
    /// instead, the child restarts unmerged and the merge is asked again). `theirs` may be an
    /// older state of the same child (a backup promoted while views disagreed), so a resolver
    /// should be idempotent (union, max) or keep `ours` when `theirs` is older.
    Merge {
        /// The key.
        key: String,
        /// The other copy (its `snapshot` is always present).
        theirs: Record,
    },
    /// Send `msg` to the directory of the same supervisor on `to`.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: DirMsg,
    },
    /// Answer request `req`.
    Reply {
        /// The request.
        req: u64,
        /// The outcome.
        result: Result<(), StartError>,
    },
    /// Tell listeners.
    Event(ChildEvent),
    /// The running child `key`'s state up to `version` is held by its backup (acknowledged),
    /// or needs none (no other node to back it up): a `Sync` reply that waits for a state of
    /// that version or older may go once the state is also durable. Reported only with
    /// [`DirConfig::replies_wait_for_backup`].
    Replicated {
        /// The key.
        key: String,
        /// The newest version the backup holds.
        version: Version,
    },
}

/// Default for [`DirConfig::max_moves`].
pub const DEFAULT_MAX_MOVES: usize = 512;

/// Configuration of one directory.
#[derive(Clone)]
pub struct DirConfig {
    /// This node.
    pub me: NodeId,
    /// Ring parameters (virtual nodes per node).
    pub ring: RingConfig,
    /// Placement strategy.
    pub distribution: Arc<dyn Distribution>,
    /// Restart intensity, counted per child.
    pub intensity: Intensity,
    /// Uniform-quorum: the configured cluster size; a node seeing fewer than `size / 2 + 1` nodes
    /// (itself included) stops its children and refuses starts.
    pub quorum: Option<usize>,
    /// At most this many children of this node are moving (stopping to be handed off) at once;
    /// the others keep running until earlier moves complete. At least 1.
    pub max_moves: usize,
    /// This node's incarnation (e.g. its start time in milliseconds): must grow across restarts
    /// of the node, so the lineages ([`Epoch`]) of a new incarnation are above the old ones.
    pub incarnation: u64,
    /// Whether the node keeps this supervisor's records on disk: the directory then tracks the
    /// keys whose durable entry changed ([`Directory::take_touched`], [`Directory::durable`]).
    pub durable: bool,
    /// Whether the runtime holds replies until the backup acknowledged the state they produced
    /// (`Durability::Sync`): only then does the directory report [`Action::Replicated`] (it
    /// costs two lookups per acknowledgement, which nothing else needs). Default: `true`.
    pub replies_wait_for_backup: bool,
}

impl std::fmt::Debug for DirConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirConfig")
            .field("me", &self.me)
            .field("ring", &self.ring)
            .field("intensity", &self.intensity)
            .field("quorum", &self.quorum)
            .field("max_moves", &self.max_moves)
            .field("incarnation", &self.incarnation)
            .field("durable", &self.durable)
            .field("replies_wait_for_backup", &self.replies_wait_for_backup)
            .finish_non_exhaustive()
    }
}

impl DirConfig {
    /// Uniform placement, default ring and intensity, no quorum, [`DEFAULT_MAX_MOVES`].
    pub fn new(me: NodeId) -> Self {
        DirConfig {
            me,
            ring: RingConfig::default(),
            distribution: Arc::new(Uniform),
            intensity: Intensity::default(),
            quorum: None,
            max_moves: DEFAULT_MAX_MOVES,
            incarnation: 0,
            durable: false,
            replies_wait_for_backup: true,
        }
    }
}

/// The lifecycle of a child this node is responsible for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Spawn requested, not yet reported.
    Starting,
    /// Running.
    Running,
    /// Asked to stop for good (terminate, policy, quorum loss).
    Stopping,
    /// Asked to stop in order to move to another node.
    Moving,
    /// Asked to stop in order to merge another copy's state into it ([`Action::Merge`]).
    Merging,
    /// Asked to stop because this node lost its quorum. Not a removal: once it exited, its final
    /// record is kept as an orphan copy (see [`Directory::backups`]) and run again, or handed to
    /// its owner, when the quorum returns.
    Abandoning,
}

/// A child this node runs.
#[derive(Debug, Clone)]
pub struct Owned {
    /// The child's record (latest snapshot included).
    pub record: Record,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Where its backup is kept, and whether that backup acknowledged the current version.
    pub backup: Option<NodeId>,
    /// The lineage of this copy (its backups are tagged with it).
    pub epoch: Epoch,
    acked: bool,
    /// Nodes holding a copy that must be dropped once the current backup acknowledged (make
    /// before break): former backups, and senders of copies this one took.
    old_backups: Vec<Holder>,
    /// Start requests waiting for the child to run and its backup to hold it.
    waiting: Vec<u64>,
    /// Terminate requests waiting for the child to stop.
    stopping_reqs: Vec<u64>,
    /// Allocated at the first exit.
    window: Option<Box<RestartWindow>>,
    /// Whether a `Started`/`FailedOver` event is still due (first successful spawn).
    /// (Boxed: present only until the first successful spawn, and an event is large.)
    first: Option<Box<ChildEvent>>,
    /// Other copies' records to merge into this one, one [`Action::Merge`] at a time.
    merges: Vec<Record>,
    /// The merge in progress ([`Phase::Merging`]).
    merging: Option<Box<Record>>,
    /// The copy this one was made from (a failed-over backup, an adoption), if any.
    source: Option<Box<Source>>,
}

impl Owned {
    /// This copy (on `me`) wrote `version` of its record: a new snapshot, or a merge.
    fn write(&mut self, version: Version, me: &NodeId) {
        self.record.write(version, Writer::of(me, self.epoch));
    }

    fn replicate(&self) -> DirMsg {
        DirMsg::Replicate {
            record: self.record.clone(),
            epoch: self.epoch,
        }
    }

    /// The holder of this copy's current backup.
    fn backup_holder(&self, me: &NodeId) -> Option<Holder> {
        self.backup
            .clone()
            .map(|n| Holder::backup(n, me, self.epoch))
    }
}

/// A backup this node holds for another node's child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The node that replicated it (the owner at the time), or the node a hand-off from here
    /// went to (the copy is kept until it confirms), or this node itself for a child it stopped
    /// when it lost its quorum (an orphan, failed over when the quorum returns).
    pub from: NodeId,
    /// The record.
    pub record: Record,
    /// `Some(tag)`: a copy of a child handed off from here (see [`DirMsg::Adopt`]).
    pub handoff: Option<Tag>,
    /// For a backup: the lineage of the copy it backs up.
    pub epoch: Epoch,
    /// `from` left this node's view after this copy was made: the copy is failed over (or handed
    /// on to the owner) as soon as the view has an owner for it, even if a new incarnation of
    /// `from` joins meanwhile (the new incarnation does not run the child).
    pub orphan: bool,
    /// A copy this node took back from its disk ([`Directory::recover`]) for a key `from` owns:
    /// kept for `from` until `from` replicates the same record here (this copy is then its
    /// backup, and nothing moves) or says it recovered without it ([`DirMsg::Recovered`]: the
    /// copy is then an orphan, handed to the owner and merged there). After a full restart the
    /// owner and its backup both come back with the same record: no hand-off is needed.
    pub awaiting: bool,
}

/// The directory of one distributed supervisor on one node. See the module docs.
#[derive(Debug)]
pub struct Directory {
    config: DirConfig,
    /// The owners: nodes up and not leaving (this node unless it leaves).
    ring: Ring,
    /// Every node believed alive: the owners and the leaving nodes (and this node).
    view: BTreeSet<NodeId>,
    /// Nodes that are alive but leaving (not on the ring).
    leaving: BTreeSet<NodeId>,
    /// Whether this node leaves ([`Directory::leave`]).
    me_leaving: bool,
    owned: BTreeMap<String, Owned>,
    /// Copies held here, by key: backups (one per origin) and hand-off copies.
    backups: BTreeMap<String, Vec<Backup>>,
    /// Nodes that left the view (and have not come back): backups from them are orphans.
    departed: BTreeSet<NodeId>,
    /// Keys handed off ([`DirMsg::Adopt`]) whose copy is held in `backups` until the receiver
    /// confirms, with the copies to drop at the confirmation.
    handoffs: BTreeMap<String, HandOff>,
    /// The counter of hand-off copies' [`Tag`]s, of lineages ([`Epoch`]) and of generations
    /// (the last one used); starts at a point drawn from this node and incarnation.
    next_tag: u64,
    /// Removed children waiting for their backups to confirm the drop.
    removing: BTreeMap<String, Removal>,
    /// Answers due to removers ([`DirMsg::Dropped`], [`DirMsg::Chased`]) once the removal of the
    /// local copy of a key, made from one of their copies, is complete.
    notify: BTreeMap<String, Vec<(NodeId, DirMsg)>>,
    /// The generations of removed children this node learned of, by key (the newest
    /// [`MAX_TOMBSTONES`]): a copy of one arriving later (a replication or a hand-off sent
    /// before the removal and overtaken by it) is refused, not run again.
    tombstones: CappedSet<(String, Generation)>,
    /// The hand-offs taken here, by sender and tag (the newest [`MAX_ADOPTIONS`]): one sent again
    /// after its copy moved on is confirmed, not run a second time.
    adoptions: CappedSet<(NodeId, Tag)>,
    /// Drops of other copies sent and not confirmed yet, by key.
    dropping: BTreeMap<String, Vec<Holder>>,
    /// Running children whose key belongs to another node, waiting for a move slot.
    move_queue: BTreeSet<String>,
    /// Children in [`Phase::Moving`].
    moving: BTreeSet<String>,
    /// Whether this node sees fewer nodes than its quorum ([`DirConfig::quorum`]).
    quorum_lost: bool,
    /// Entries examined by the membership paths so far ([`Directory::work`]).
    work: u64,
    /// `owned` indexed by backup node: the keys of the children run here that each node backs
    /// up. A node lost or leaving the ring changes the backup of these children only.
    by_backup: BTreeMap<NodeId, BTreeSet<String>>,
    /// `backups` indexed by origin: the keys of the copies held here for each node. A node lost
    /// orphans these copies only.
    by_origin: BTreeMap<NodeId, BTreeSet<String>>,
    /// The keys that may hold an orphan copy (flagged orphan, or from a departed node): a
    /// superset, pruned by each failover pass, which visits these keys only.
    orphan_keys: BTreeSet<String>,
    /// The keys of children run here that another node owned at the last placement pass (moving
    /// away, or kept here while views disagreed): a superset. After a node leaves the ring only
    /// these and the children it backed up need a look.
    lodged: BTreeSet<String>,
    /// The keys whose drops or removal wait on each node (`dropping`, and a removal's
    /// `waiting_on` and `chasing`): a superset, visited for the nodes that left the view.
    waits: BTreeMap<NodeId, BTreeSet<String>>,
    /// Inputs since [`Directory::check`] last ran in a debug build (see `Directory::checked`).
    unchecked: usize,
    /// Keys whose durable entry may have changed since [`Directory::take_touched`] (only with
    /// [`DirConfig::durable`]).
    touched: BTreeSet<String>,
    /// What a previous run kept on disk, read at start ([`Directory::preload`]) and not taken
    /// back yet ([`Directory::recover`]): part of every durable entry written meanwhile, so the
    /// disk never loses it.
    preloaded: BTreeMap<String, DurableEntry>,
    /// Whether [`Directory::recover`] ran: from then on each peer joining the view or
    /// reconnecting is told, and asked ([`DirMsg::Recovered`]).
    recovered: bool,
}

impl Directory {
    /// A directory that sees only itself.
    pub fn new(config: DirConfig) -> Self {
        let ring = Ring::from_nodes(config.ring, [config.me.clone()])
            .unwrap_or_else(|_| Ring::new(config.ring));
        let view = BTreeSet::from([config.me.clone()]);
        let first_tag = generation_of(&config.me, config.incarnation, 0).get() >> 2;
        let mut d = Directory {
            config,
            ring,
            view,
            leaving: BTreeSet::new(),
            me_leaving: false,
            owned: BTreeMap::new(),
            backups: BTreeMap::new(),
            departed: BTreeSet::new(),
            handoffs: BTreeMap::new(),
            // Tags name hand-offs to other nodes, which remember them (a hand-off sent again is
            // recognized by its sender and tag): a new incarnation must not reuse the tags of the
            // previous one, so the counter starts at a point drawn from the incarnation.
            next_tag: first_tag,
            removing: BTreeMap::new(),
            notify: BTreeMap::new(),
            tombstones: CappedSet::new(MAX_TOMBSTONES),
            adoptions: CappedSet::new(MAX_ADOPTIONS),
            dropping: BTreeMap::new(),
            move_queue: BTreeSet::new(),
            moving: BTreeSet::new(),
            quorum_lost: false,
            work: 0,
            by_backup: BTreeMap::new(),
            by_origin: BTreeMap::new(),
            orphan_keys: BTreeSet::new(),
            lodged: BTreeSet::new(),
            waits: BTreeMap::new(),
            unchecked: 0,
            touched: BTreeSet::new(),
            preloaded: BTreeMap::new(),
            recovered: false,
        };
        d.quorum_lost = !d.has_quorum();
        d
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.config.me
    }

    /// The current placement ring: the nodes up and not leaving.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Every node this directory believes alive: the ring's nodes, the leaving ones, itself.
    pub fn view(&self) -> &BTreeSet<NodeId> {
        &self.view
    }

    /// The owner of `key` in this node's view.
    pub fn owner(&self, key: &str) -> Option<NodeId> {
        if self.quorum_lost {
            return None;
        }
        self.config.distribution.owner(key.as_bytes(), &self.ring)
    }

    /// The backup node of `key` in this node's view.
    pub fn backup_of(&self, key: &str) -> Option<NodeId> {
        let owner = self.owner(key);
        self.config
            .distribution
            .backup(key.as_bytes(), &self.ring)
            .filter(|b| owner.as_ref() != Some(b))
    }

    /// The children this node is responsible for, by key.
    pub fn owned(&self) -> &BTreeMap<String, Owned> {
        &self.owned
    }

    /// The keys of the children running here (spawned and not stopping).
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.owned
            .iter()
            .filter(|(_, o)| o.phase == Phase::Running)
            .map(|(k, _)| k.as_str())
    }

    /// The copies held here, by key: backups of other nodes' children (usually one per key; one
    /// per origin while views disagree), copies of children handed off from here and not yet
    /// confirmed by their receiver, and the final records of the children this node stopped when
    /// it lost its quorum (held from itself until the quorum returns).
    pub fn backups(&self) -> &BTreeMap<String, Vec<Backup>> {
        &self.backups
    }

    /// How many copies are held here (see [`Directory::backups`]).
    pub fn backup_count(&self) -> usize {
        self.backups.values().map(Vec::len).sum()
    }

    fn next_epoch(&mut self) -> Epoch {
        self.next_tag += 1;
        Epoch(self.config.incarnation, self.next_tag)
    }

    /// A fresh tag for a copy handed off (or held) here.
    fn next_hand_off_tag(&mut self) -> Tag {
        self.next_tag += 1;
        // The counter starts below 2^62 and only grows by one: it never wraps to 0.
        Tag::new(self.next_tag).expect("the tag counter never wraps")
    }

    /// A fresh generation for a child started here.
    fn next_generation(&mut self) -> Generation {
        self.next_tag += 1;
        generation_of(&self.config.me, self.config.incarnation, self.next_tag)
    }

    /// How many children run here whose current record is not yet held by their backup
    /// (replication in flight). Zero once every snapshot taken so far is replicated.
    pub fn unreplicated(&self) -> usize {
        self.owned.values().filter(|o| !o.acked).count()
    }

    /// How many children are moving away from this node, and how many wait for a move slot.
    pub fn moves(&self) -> (usize, usize) {
        (self.moving.len(), self.move_queue.len())
    }

    /// How many entries (children run here, copies held here, removals, drops waiting for a
    /// confirmation, tombstones) the membership paths have examined since this directory was
    /// made: view changes ([`Directory::set_members`]), nodes down, reconnections, the quorum's
    /// loss and return, and the re-derivation of placement they run (rebalance, failover of
    /// orphan copies). A counter, never reset: the cost of an input is the difference across
    /// it. It measures how the cost of a view change grows with what the directory holds.
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Adds `n` entries examined to [`Directory::work`].
    fn examined(&mut self, n: usize) {
        self.work = self.work.saturating_add(n as u64);
    }

    /// Whether this node sees a quorum (always true without [`DirConfig::quorum`]).
    pub fn has_quorum(&self) -> bool {
        match self.config.quorum {
            None => true,
            Some(size) => self.view.len() > size / 2,
        }
    }

    /// Whether this node leaves ([`Directory::leave`]).
    pub fn is_leaving(&self) -> bool {
        self.me_leaving
    }

    /// After [`Directory::leave`]: whether this node runs nothing any more, every child it handed
    /// off was confirmed by its receiver, every removal was confirmed by the backups, and it holds
    /// no backups for other nodes (their owners re-replicated elsewhere once they saw it leaving).
    /// The runtime can then leave the membership and exit. Also true when there is nowhere to hand
    /// off to (this node is the last one): its children stop with it.
    pub fn handed_off(&self) -> bool {
        if self.ring.is_empty() {
            return true;
        }
        self.owned.is_empty() && self.backups.is_empty() && self.removing.is_empty()
    }

    fn quorum_error(&self) -> StartError {
        self_quorum(self.view.len(), self.config.quorum)
    }
}

/// How many times an adoption is passed on between nodes whose views disagree before a node keeps
/// it anyway (bounds the traffic until views converge).
pub const MAX_HOPS: u8 = 8;

/// A generation ([`Record::generation`]) drawn by `me`: unique across nodes and their runs (a
/// collision needs equal 64-bit hashes); a hash of 0 is taken as 1.
fn generation_of(me: &NodeId, incarnation: u64, counter: u64) -> Generation {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(me.as_str().as_bytes());
    h.update(&incarnation.to_le_bytes());
    h.update(&counter.to_le_bytes());
    Generation::new(h.digest()).unwrap_or(Generation::MIN)
}

/// A copy of `record` held for `me` itself: a child it stopped when it lost its quorum (or a copy
/// that was to be merged into one), failed over as soon as the view has an owner for it.
fn orphan_copy(me: &NodeId, record: Record, handoff: Option<Tag>, epoch: Epoch) -> Backup {
    Backup {
        from: me.clone(),
        record,
        handoff,
        epoch,
        orphan: true,
        awaiting: false,
    }
}

/// The error of a start refused because this node sees only `seen` nodes.
fn self_quorum(seen: usize, quorum: Option<usize>) -> StartError {
    StartError::NoQuorum {
        seen,
        needed: quorum.map(|s| s / 2 + 1).unwrap_or(0),
    }
}

/// The answer to request `req`.
fn reply(req: u64, result: Result<(), StartError>) -> Action {
    Action::Reply { req, result }
}

/// Stop the local child `key`.
fn stop(key: &str, reason: StopReason) -> Action {
    Action::Stop {
        key: key.to_owned(),
        reason,
    }
}

/// Send `msg` to the directory on `to`.
fn send(to: &NodeId, msg: DirMsg) -> Action {
    Action::Send {
        to: to.clone(),
        msg,
    }
}
