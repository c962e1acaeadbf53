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
//! - **Restarts.** A child that exits is restarted or removed by its [`RestartPolicy`]; a child that
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ExitClass, Intensity, NodeId, RestartDecision, RestartPolicy, RestartWindow};
use crate::{Ring, RingConfig};

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
}

/// Everything a node needs to run a child, and what it replicates to the child's backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The child's key, unique within its supervisor.
    pub key: String,
    /// The registered actor type that runs it.
    pub actor_type: String,
    /// The start arguments, encoded by the runtime.
    pub args: Vec<u8>,
    /// Restart policy.
    pub policy: RestartPolicy,
    /// The latest state snapshot, encoded by the runtime, if the actor takes snapshots.
    pub snapshot: Option<Vec<u8>>,
    /// Bumped at every new snapshot; orders copies of the same child.
    pub version: u64,
    /// Names this child among the children that ever had its key: drawn by the owner when the
    /// child is started (callers pass 0) and kept across restarts, failovers and moves. A
    /// removal buries it, so a late copy of a removed child is refused, not run again.
    pub generation: u64,
}

/// Names one *lineage* of a child on its owner: every time a node starts running a child (a
/// start, a failover, an adoption, a restart after a move that came back), the copy gets a fresh
/// epoch, and its backups are tagged with it. A drop names the epoch of the copy it is meant for,
/// so a late drop of an older lineage (sent by a third node that took a hand-off, say) never
/// deletes the backup of a newer one. Ordered: `(incarnation, counter)` of the node that made it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64, pub u64);

/// A message between the directories of the same supervisor on two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirMsg {
    /// From an owner to a backup: keep this record (replacing an older version).
    Replicate {
        /// The record.
        record: Record,
        /// The lineage of the owner's copy.
        epoch: Epoch,
    },
    /// From a backup to the owner: the record with `version` of lineage `epoch` is held.
    Ack {
        /// The key.
        key: String,
        /// The version held.
        version: u64,
        /// The lineage it belongs to.
        epoch: Epoch,
    },
    /// Forget the copy of `key` held for the sender (a backup it no longer needs, or a hand-off
    /// it confirms). Always answered with [`DirMsg::Dropped`].
    Drop {
        /// The key.
        key: String,
        /// The node the copy is held for: its owner (for a backup), or the receiver of the
        /// hand-off (for a hand-off copy). Usually the sender.
        origin: NodeId,
        /// `None`: a backup. `Some(tag)`: the copy the receiver handed off with
        /// [`DirMsg::Adopt`] `tag` (the hand-off is confirmed).
        tag: Option<u64>,
        /// For a backup: drop it only if its lineage is this one or older.
        epoch: Epoch,
        /// The child is removed (terminated, or removed by its policy): if the receiver already
        /// made a copy of its own from this one (failed it over, or handed it on), that copy is
        /// removed too — it is stopped for good before the answer, or the answer names where it
        /// was handed on so the remover chases it there ([`DirMsg::Chase`]).
        remove: bool,
        /// For a removal: the removed child's [`Record::generation`], which the receiver buries.
        generation: u64,
    },
    /// Answer to [`DirMsg::Drop`]: the receiver holds no such copy of `key` any more.
    Dropped {
        /// The key.
        key: String,
        /// As in the [`DirMsg::Drop`] answered.
        origin: NodeId,
        /// As in the [`DirMsg::Drop`] answered.
        tag: Option<u64>,
        /// As in the [`DirMsg::Drop`] answered.
        epoch: Epoch,
        /// As in the [`DirMsg::Drop`] answered.
        remove: bool,
        /// For a removal: the copy had been handed on, with [`DirMsg::Adopt`] `tag`, to this
        /// node, not confirmed yet: the remover chases it there.
        next: Option<(NodeId, u64)>,
    },
    /// From a node removing `key`: the copy that `from` handed to the receiver with
    /// [`DirMsg::Adopt`] `tag` is removed: stop it for good if it runs there (answered once its
    /// removal is complete), or say where it was handed on. Always answered with
    /// [`DirMsg::Chased`].
    Chase {
        /// The key.
        key: String,
        /// The node that handed the copy to the receiver.
        from: NodeId,
        /// The tag of that hand-off.
        tag: u64,
        /// The removed child's [`Record::generation`], which the receiver buries.
        generation: u64,
    },
    /// The child of `key` and `generation` was removed (the sender learned it from the removal):
    /// the receiver, which replicated a copy of it, stops that copy for good. Sent when a copy
    /// survived on the other side of a partition or of a false suspicion: the removal wins.
    Removed {
        /// The key.
        key: String,
        /// The removed child's [`Record::generation`].
        generation: u64,
    },
    /// Reconciliation, from a node to a peer it (re)connected to or that (re)joined its view: the
    /// removed children it knows of (key and [`Record::generation`], at most [`MAX_TOMBSTONES`]).
    /// The receiver buries them too and stops a copy of one that survived on its side of a
    /// partition: a removal wins after a heal.
    Buried {
        /// The removed children.
        removed: Vec<(String, u64)>,
    },
    /// Answer to [`DirMsg::Chase`].
    Chased {
        /// The key.
        key: String,
        /// As in the [`DirMsg::Chase`] answered.
        from: NodeId,
        /// As in the [`DirMsg::Chase`] answered.
        tag: u64,
        /// The copy had been handed on to this node with this tag: chase it there.
        next: Option<(NodeId, u64)>,
    },
    /// Run this child here: the sender moved it, or held its backup when its owner left.
    Adopt {
        /// The child.
        record: Record,
        /// How many nodes passed it on already (bounded by [`MAX_HOPS`]).
        hops: u8,
        /// Names the copy the sender keeps until the receiver confirms (a [`DirMsg::Drop`] with
        /// this tag).
        tag: u64,
        /// Other nodes that still hold a copy (the child's former backups, earlier senders),
        /// dropped once the receiver's copy is safe; a removal waits for them too.
        holders: Vec<Holder>,
        /// A graceful move (the key changed owner, or the sender leaves): the receiver reports
        /// [`ChildEvent::Adopted`]. Otherwise a failover passed on ([`ChildEvent::FailedOver`]).
        moved: bool,
    },
    /// Backup reconciliation, from a node to a peer it (re)connected to or that (re)joined its
    /// view: these are all the keys whose copy the sender holds for the receiver (hand-offs
    /// excepted: they are sent again as [`DirMsg::Adopt`]). The receiver answers
    /// [`DirMsg::Drop`] for every key it no longer needs there, and [`DirMsg::Replicate`] for
    /// every key the sender should hold and does not.
    Held {
        /// The keys, with the lineage of each copy.
        keys: Vec<(String, Epoch)>,
    },
    /// From the node that took an adopted copy of `key` while running its own: the receiver's
    /// copy lost the conflict; its state was handed to the running copy's merge.
    Conflict {
        /// The key.
        key: String,
    },
}

/// A node holding a copy of a child that must be dropped once another copy is safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node.
    pub node: NodeId,
    /// The node its copy is held for ([`Backup::from`]).
    pub origin: NodeId,
    /// `None`: a backup; `Some(tag)`: a hand-off copy (see [`DirMsg::Adopt`]).
    pub tag: Option<u64>,
    /// For a backup: the lineage of the copy it backs up.
    pub epoch: Epoch,
}

impl Holder {
    fn backup(node: NodeId, origin: &NodeId, epoch: Epoch) -> Self {
        Holder {
            node,
            origin: origin.clone(),
            tag: None,
            epoch,
        }
    }

    /// A drop of this copy; `removed`: the generation of the removed child, for a removal.
    fn drop_msg(&self, key: &str, removed: Option<u64>) -> Action {
        send(
            &self.node,
            DirMsg::Drop {
                key: key.to_owned(),
                origin: self.origin.clone(),
                tag: self.tag,
                epoch: self.epoch,
                remove: removed.is_some(),
                generation: removed.unwrap_or(0),
            },
        )
    }

    /// Whether `b` is the copy this holder names.
    fn names(&self, b: &Backup) -> bool {
        b.from == self.origin
            && b.handoff == self.tag
            && (self.tag.is_some() || b.epoch <= self.epoch)
    }
}

/// Where a copy that this node runs, or handed on, came from: what a removal that names that
/// copy chases ([`DirMsg::Drop`] with `remove`, [`DirMsg::Chase`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A copy held here (a backup, or a hand-off copy), as a holder names it.
    Held {
        origin: NodeId,
        tag: Option<u64>,
        epoch: Epoch,
    },
    /// The copy `from` handed to this node with [`DirMsg::Adopt`] `tag`.
    Adopted { from: NodeId, tag: u64 },
}

impl Source {
    fn held(b: &Backup) -> Self {
        Source::Held {
            origin: b.from.clone(),
            tag: b.handoff,
            epoch: b.epoch,
        }
    }

    /// Whether a removal naming `named` (as a drop names a copy) concerns this source.
    fn named_by(&self, named: &Source) -> bool {
        match (self, named) {
            (
                Source::Held { origin, tag, epoch },
                Source::Held {
                    origin: o,
                    tag: t,
                    epoch: e,
                },
            ) => origin == o && tag == t && (tag.is_some() || epoch <= e),
            (a, b) => a == b,
        }
    }
}

/// A copy a removal chases: the one `from` handed to `node` with `tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chase {
    node: NodeId,
    from: NodeId,
    tag: u64,
    generation: u64,
}

impl Chase {
    fn msg(&self, key: &str) -> Action {
        send(
            &self.node,
            DirMsg::Chase {
                key: key.to_owned(),
                from: self.from.clone(),
                tag: self.tag,
                generation: self.generation,
            },
        )
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
    /// The child failed to start (unknown type, bad arguments, `started` failed or panicked).
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
    pub handoff: Option<u64>,
    /// For a backup: the lineage of the copy it backs up.
    pub epoch: Epoch,
    /// `from` left this node's view after this copy was made: the copy is failed over (or handed
    /// on to the owner) as soon as the view has an owner for it, even if a new incarnation of
    /// `from` joins meanwhile (the new incarnation does not run the child).
    pub orphan: bool,
}

/// A hand-off from here not yet confirmed by its receiver.
#[derive(Debug, Clone)]
struct HandOff {
    to: NodeId,
    tag: u64,
    /// A graceful move (see [`DirMsg::Adopt`]).
    moved: bool,
    /// Copies to drop once it is confirmed.
    olds: Vec<Holder>,
    /// The copy handed off was made from this one (a removal naming it is chased to `to`).
    source: Option<Source>,
}

/// A child removed here whose former backups have not all confirmed they dropped their copies;
/// its terminate requests and `Stopped` event wait for them.
#[derive(Debug, Clone)]
struct Removal {
    /// The drops not yet confirmed.
    waiting_on: Vec<Holder>,
    /// Copies made from the removed child's copies and handed on, being chased.
    chasing: Vec<Chase>,
    /// How many chases were started (bounded by [`MAX_CHASES`]).
    chases: u8,
    /// The removed child's generation.
    generation: u64,
    reqs: Vec<u64>,
    /// Whether a `Stopped` event is due at the end.
    event: bool,
    /// Start requests for the same key, handled once the removal is complete.
    starts: Vec<(u64, Record)>,
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
    /// Tags of hand-off copies, counters of lineages ([`Epoch`]) and of generations; starts at a
    /// point drawn from this node and incarnation.
    next_tag: u64,
    /// Removed children waiting for their backups to confirm the drop.
    removing: BTreeMap<String, Removal>,
    /// Answers due to removers ([`DirMsg::Dropped`], [`DirMsg::Chased`]) once the removal of the
    /// local copy of a key, made from one of their copies, is complete.
    notify: BTreeMap<String, Vec<(NodeId, DirMsg)>>,
    /// The generations of removed children this node learned of, by key (the newest
    /// [`MAX_TOMBSTONES`]): a copy of one arriving later (a replication or a hand-off sent
    /// before the removal and overtaken by it) is refused, not run again.
    tombstones: BTreeMap<String, Vec<u64>>,
    tombstone_order: std::collections::VecDeque<(String, u64)>,
    /// The hand-offs taken here, by sender and tag (the newest [`MAX_ADOPTIONS`]): one sent again
    /// after its copy moved on is confirmed, not run a second time.
    adoptions: BTreeSet<(NodeId, u64)>,
    adoption_order: std::collections::VecDeque<(NodeId, u64)>,
    /// Drops of other copies sent and not confirmed yet, by key.
    dropping: BTreeMap<String, Vec<Holder>>,
    /// Running children whose key belongs to another node, waiting for a move slot.
    move_queue: BTreeSet<String>,
    /// Children in [`Phase::Moving`].
    moving: BTreeSet<String>,
    quorum_lost: bool,
}

impl Directory {
    /// A directory that sees only itself.
    pub fn new(config: DirConfig) -> Self {
        let ring = Ring::from_nodes(config.ring, [config.me.clone()])
            .unwrap_or_else(|_| Ring::new(config.ring));
        let view = BTreeSet::from([config.me.clone()]);
        let first_tag = generation_of(&config.me, config.incarnation, 0) >> 2;
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
            tombstones: BTreeMap::new(),
            tombstone_order: std::collections::VecDeque::new(),
            adoptions: BTreeSet::new(),
            adoption_order: std::collections::VecDeque::new(),
            dropping: BTreeMap::new(),
            move_queue: BTreeSet::new(),
            moving: BTreeSet::new(),
            quorum_lost: false,
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

    /// Adds a copy of `key`, replacing the one of the same origin and kind.
    fn put_copy(&mut self, key: &str, b: Backup) {
        let list = self.backups.entry(key.to_owned()).or_default();
        match list
            .iter_mut()
            .find(|c| c.from == b.from && c.handoff == b.handoff)
        {
            Some(c) => *c = b,
            None => list.push(b),
        }
    }

    /// Removes the copies of `key` held here that `pred` selects.
    fn remove_copies(&mut self, key: &str, pred: impl Fn(&Backup) -> bool) -> Vec<Backup> {
        let Some(list) = self.backups.get_mut(key) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        let mut i = 0;
        while i < list.len() {
            if pred(&list[i]) {
                removed.push(list.remove(i));
            } else {
                i += 1;
            }
        }
        if list.is_empty() {
            self.backups.remove(key);
        }
        removed
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

    /// A start request for `record` arrived here (request id `req`, answered by an
    /// [`Action::Reply`] once the child runs and its backup holds it).
    pub fn start(&mut self, req: u64, record: Record) -> Vec<Action> {
        let mut out = Vec::new();
        self.start_into(req, record, &mut out);
        out
    }

    fn start_into(&mut self, req: u64, record: Record, out: &mut Vec<Action>) {
        if self.quorum_lost {
            out.push(reply(req, Err(self.quorum_error())));
            return;
        }
        if let Some(r) = self.removing.get_mut(&record.key) {
            // The previous child of this key is still being removed: start after it.
            r.starts.push((req, record));
            return;
        }
        let owner = self.owner(&record.key);
        if owner.as_ref() != Some(&self.config.me) {
            out.push(reply(req, Err(StartError::NotOwner { owner })));
            return;
        }
        if self.owned.contains_key(&record.key) {
            out.push(reply(req, Err(StartError::AlreadyStarted(record.key))));
            return;
        }
        let key = record.key.clone();
        let mut record = record;
        self.next_tag += 1;
        record.generation = generation_of(&self.config.me, self.config.incarnation, self.next_tag);
        self.insert_owned(record, vec![req], ChildEvent::Started { key }, None, out);
    }

    fn insert_owned(
        &mut self,
        record: Record,
        waiting: Vec<u64>,
        first: ChildEvent,
        source: Option<Source>,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        let epoch = self.next_epoch();
        // Copies held here of other copies: merged into this one once it runs.
        let others: Vec<Record> = self
            .backups
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.record.snapshot.is_some() && b.record != record)
            .map(|b| b.record)
            .collect();
        let backup = self.backup_of(&key).filter(|b| *b != self.config.me);
        // A copy handed off from here came back: its former backups are this copy's.
        let mut old_backups = self
            .handoffs
            .remove(&key)
            .map(|h| h.olds)
            .unwrap_or_default();
        old_backups.retain(|h| h.node != self.config.me);
        out.push(Action::Spawn(record.clone()));
        if let Some(b) = &backup {
            out.push(send(
                b,
                DirMsg::Replicate {
                    record: record.clone(),
                    epoch,
                },
            ));
        }
        self.owned.insert(
            key.clone(),
            Owned {
                acked: backup.is_none(),
                old_backups,
                record,
                phase: Phase::Starting,
                backup,
                epoch,
                waiting,
                stopping_reqs: Vec::new(),
                window: None,
                first: Some(Box::new(first)),
                merges: others,
                merging: None,
                source: source.map(Box::new),
            },
        );
        self.settle(&key, out);
    }

    /// Without a backup to wait for, the copies to drop are dropped at once, except those held
    /// by nodes out of this node's view: this node may be alone in its view only because it
    /// just started, and such a copy is the child's only other copy until a backup holds one.
    fn settle(&mut self, key: &str, out: &mut Vec<Action>) {
        let view = &self.view;
        if let Some(o) = self.owned.get_mut(key) {
            if o.backup.is_none() {
                o.acked = true;
                if !o.merges.is_empty() || o.merging.is_some() {
                    // The other copies' senders keep them until the merge is replicated.
                    return;
                }
                let (olds, kept) = std::mem::take(&mut o.old_backups)
                    .into_iter()
                    .partition(|h| view.contains(&h.node));
                o.old_backups = kept;
                if o.phase == Phase::Running {
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Ok(())));
                    }
                }
                self.drop_copies(key, olds, out);
            }
        }
    }

    /// Tells the holders of other copies of `key` to drop them; a removal of `key` that begins
    /// before they confirm waits for them too (a copy not dropped yet may still be failed over).
    fn drop_copies(&mut self, key: &str, holders: Vec<Holder>, out: &mut Vec<Action>) {
        for h in holders {
            out.push(h.drop_msg(key, None));
            if self.may_answer(&h.node) {
                let list = self.dropping.entry(key.to_owned()).or_default();
                add_holder(list, h);
            }
        }
    }

    /// The runtime spawned (`Ok`) or failed to spawn (`Err`) the child `key`.
    pub fn spawned(&mut self, key: &str, result: Result<(), String>) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(o) = self.owned.get_mut(key) else {
            return out;
        };
        match result {
            Ok(()) => {
                match o.phase {
                    Phase::Starting => o.phase = Phase::Running,
                    // Asked to stop while starting: the action was deferred until now.
                    Phase::Stopping => {
                        out.push(stop(key, StopReason::Terminate));
                        return out;
                    }
                    Phase::Moving => {
                        out.push(stop(key, StopReason::Move));
                        return out;
                    }
                    Phase::Abandoning => {
                        out.push(stop(key, StopReason::Quorum));
                        return out;
                    }
                    Phase::Merging => {
                        let theirs = *o.merging.clone().expect("merging has a record");
                        out.push(Action::Merge {
                            key: key.to_owned(),
                            theirs,
                        });
                        return out;
                    }
                    Phase::Running => {}
                }
                if let Some(e) = o.first.take().map(|e| *e) {
                    out.push(Action::Event(e));
                }
                if o.acked {
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Ok(())));
                    }
                }
                self.next_merge(key, &mut out);
            }
            Err(_) if o.phase == Phase::Abandoning => {
                // Not a removal either: the copy is kept for when the quorum returns.
                self.abandoned(key, &mut out);
            }
            Err(why) => {
                let never_ran = matches!(o.first.as_deref(), Some(ChildEvent::Started { .. }));
                for req in o.waiting.drain(..) {
                    out.push(reply(req, Err(StartError::Failed(why.clone()))));
                }
                self.remove(key, !never_ran, &mut out);
            }
        }
        out
    }

    /// Start the next pending merge of a running child, if any.
    fn next_merge(&mut self, key: &str, out: &mut Vec<Action>) {
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        if o.phase != Phase::Running || o.merges.is_empty() {
            return;
        }
        let theirs = o.merges.remove(0);
        o.phase = Phase::Merging;
        o.merging = Some(Box::new(theirs.clone()));
        out.push(Action::Merge {
            key: key.to_owned(),
            theirs,
        });
    }

    /// A new state snapshot of the local child `key` (ignored for unknown keys).
    pub fn snapshot(&mut self, key: &str, snapshot: Vec<u8>) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(o) = self.owned.get_mut(key) {
            o.record.snapshot = Some(snapshot);
            o.record.version += 1;
            match &o.backup {
                // Stopped for the quorum: the other side may run it already from its backup.
                _ if o.phase == Phase::Abandoning => {}
                Some(b) => {
                    o.acked = false;
                    out.push(send(b, o.replicate()));
                }
                None => {}
            }
        }
        out
    }

    /// Request `req` to terminate the child `key` for good (answered when it has stopped and its
    /// backups dropped their copies).
    pub fn terminate(&mut self, req: u64, key: &str) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(r) = self.removing.get_mut(key) {
            r.reqs.push(req);
            return out;
        }
        match self.owned.get_mut(key) {
            None => out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned())))),
            Some(o) => {
                o.stopping_reqs.push(req);
                self.stop_for_good(key, &mut out);
            }
        }
        out
    }

    /// Stop the local child `key` for good (it is removed once it exited).
    fn stop_for_good(&mut self, key: &str, out: &mut Vec<Action>) {
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        let was = o.phase;
        o.phase = Phase::Stopping;
        if was == Phase::Running {
            out.push(stop(key, StopReason::Terminate));
        }
        if self.moving.remove(key) {
            self.pump_moves(out);
        }
    }

    /// The local child `key` exited with `class` at monotonic time `now`; `final_snapshot` is the
    /// state it exported on the way out, if any.
    pub fn exited(
        &mut self,
        key: &str,
        class: ExitClass,
        final_snapshot: Option<Vec<u8>>,
        now: Duration,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(o) = self.owned.get_mut(key) else {
            return out;
        };
        let bumped = final_snapshot.is_some();
        if let Some(s) = final_snapshot {
            o.record.snapshot = Some(s);
            o.record.version += 1;
        }
        match o.phase {
            Phase::Moving => self.moved(key, &mut out),
            Phase::Stopping => self.remove(key, true, &mut out),
            Phase::Abandoning => self.abandoned(key, &mut out),
            Phase::Merging => {
                // Reported through `exited` instead of `merged`: the merge did not happen. Run
                // this copy again and merge the other one after it (nothing is lost).
                let theirs = *o.merging.take().expect("merging has a record");
                o.merges.insert(0, theirs);
                self.respawn(key, bumped, &mut out);
            }
            Phase::Starting | Phase::Running => {
                let intensity = self.config.intensity;
                let window = o
                    .window
                    .get_or_insert_with(|| Box::new(RestartWindow::new(intensity)));
                match window.on_exit(o.record.policy, class, now) {
                    RestartDecision::Restart => {
                        o.first = Some(Box::new(ChildEvent::Restarted {
                            key: key.to_owned(),
                        }));
                        self.respawn(key, bumped, &mut out);
                    }
                    RestartDecision::Remove => {
                        if o.phase == Phase::Running && class != ExitClass::Abnormal {
                            // It ran, and ended without failing (a transient or temporary child
                            // done with its work): its start succeeded, even if the backup had
                            // not acknowledged yet. A caller told otherwise would run it again.
                            for req in o.waiting.drain(..) {
                                out.push(reply(req, Ok(())));
                            }
                        }
                        self.remove(key, true, &mut out)
                    }
                    RestartDecision::GiveUp { restarts } => {
                        out.push(Action::Event(ChildEvent::GaveUp {
                            key: key.to_owned(),
                            restarts,
                        }));
                        self.remove(key, true, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The runtime completed an [`Action::Merge`]: the local child `key` stopped and `merged` is
    /// `resolve_conflict(ours, theirs)` (`None`: keep the record's latest snapshot).
    pub fn merged(&mut self, key: &str, merged: Option<Vec<u8>>) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(o) = self.owned.get_mut(key) else {
            return out;
        };
        let theirs_version = o.merging.take().map_or(0, |r| r.version);
        if let Some(s) = merged {
            o.record.snapshot = Some(s);
        }
        o.record.version = o.record.version.max(theirs_version) + 1;
        match o.phase {
            Phase::Merging => {
                if self.owner(key).is_some_and(|n| n != self.config.me) {
                    // The view moved on while merging: hand the merged child off.
                    self.moved(key, &mut out);
                } else {
                    self.respawn(key, true, &mut out);
                }
            }
            Phase::Stopping => self.remove(key, true, &mut out),
            Phase::Moving => self.moved(key, &mut out),
            Phase::Abandoning => self.abandoned(key, &mut out),
            Phase::Starting | Phase::Running => {}
        }
        self.settle(key, &mut out);
        out
    }

    /// Spawn the child of an owned entry again (restart, or after a merge); replicate the record
    /// if it changed.
    fn respawn(&mut self, key: &str, changed: bool, out: &mut Vec<Action>) {
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        o.phase = Phase::Starting;
        out.push(Action::Spawn(o.record.clone()));
        if changed {
            if let Some(b) = &o.backup {
                o.acked = false;
                out.push(send(b, o.replicate()));
            }
        }
    }

    /// The child `key` stopped in order to move: hand it to whoever owns the key now.
    fn moved(&mut self, key: &str, out: &mut Vec<Action>) {
        self.moving.remove(key);
        let o = self.owned.remove(key).expect("present");
        let current = o.backup_holder(&self.config.me);
        match self.owner(key) {
            Some(to) if to != self.config.me && o.merges.is_empty() => {
                // Start requests still waiting are retried at the new owner.
                for req in o.waiting {
                    out.push(reply(
                        req,
                        Err(StartError::NotOwner {
                            owner: Some(to.clone()),
                        }),
                    ));
                }
                for req in o.stopping_reqs {
                    out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned()))));
                }
                // The backups keep their copies until `to` confirms it took the child.
                let olds = current.into_iter().chain(o.old_backups).collect();
                out.push(Action::Event(ChildEvent::Migrated {
                    key: key.to_owned(),
                    to: to.clone(),
                }));
                let source = o.source.map(|s| *s);
                self.hand_off(&to, o.record, 0, olds, true, source, out);
            }
            _ => {
                // The key came back to this node (or no owner), or other copies wait to be
                // merged into it first (it moves after the merge): run it again here.
                let first = ChildEvent::Restarted {
                    key: key.to_owned(),
                };
                let merges = o.merges;
                let carried: Vec<Holder> = current.into_iter().chain(o.old_backups).collect();
                self.hold_olds(key, carried);
                let source = o.source.map(|s| *s);
                self.insert_owned(o.record, o.waiting, first, source, out);
                if let Some(n) = self.owned.get_mut(key) {
                    n.merges.extend(merges);
                    n.stopping_reqs = o.stopping_reqs;
                }
            }
        }
        self.pump_moves(out);
    }

    /// Remove the child `key` for good: its backups are told to drop their copies, and the
    /// terminate requests and the `Stopped` event (if `event`) wait for their confirmations.
    fn remove(&mut self, key: &str, event: bool, out: &mut Vec<Action>) {
        self.moving.remove(key);
        let Some(o) = self.owned.remove(key) else {
            return;
        };
        let current = o.backup_holder(&self.config.me);
        for req in o.waiting {
            out.push(reply(req, Err(StartError::Failed("child exited".into()))));
        }
        let generation = o.record.generation;
        self.bury(key, generation);
        // Drops sent earlier and not confirmed yet are sent again as removals: their holders may
        // have made a copy of their own from the copy meanwhile.
        let earlier = self.dropping.get(key).into_iter().flatten().cloned();
        let copies = current
            .into_iter()
            .chain(o.old_backups)
            .chain(earlier)
            .collect();
        let removal = self.removing.entry(key.to_owned()).or_insert(Removal {
            waiting_on: Vec::new(),
            chasing: Vec::new(),
            chases: 0,
            generation,
            reqs: Vec::new(),
            event: false,
            starts: Vec::new(),
        });
        removal.reqs.extend(o.stopping_reqs);
        removal.event |= event;
        self.remove_with(key, copies, out);
    }

    /// A copy of `key` and `generation` arrived (an adoption) or was orphaned here while the
    /// key is being removed here, or after a removal of that generation: it is not run, and the
    /// other copies it names are dropped (the removal in progress waits for them).
    fn discard(&mut self, key: &str, generation: u64, copies: Vec<Holder>, out: &mut Vec<Action>) {
        if self.removing.contains_key(key) {
            self.remove_with(key, copies, out);
            return;
        }
        let me = self.config.me.clone();
        for h in copies.into_iter().filter(|h| h.node != me) {
            out.push(h.drop_msg(key, Some(generation)));
        }
    }

    /// The removal of `key` in progress here also removes these copies.
    fn remove_with(&mut self, key: &str, copies: Vec<Holder>, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        let view = &self.view;
        let Some(r) = self.removing.get_mut(key) else {
            return;
        };
        let mut sent: Vec<Holder> = Vec::new();
        for h in copies.into_iter().filter(|h| h.node != me) {
            if sent.contains(&h) {
                continue;
            }
            out.push(h.drop_msg(key, Some(r.generation)));
            if view.contains(&h.node) {
                add_holder(&mut r.waiting_on, h.clone());
            }
            sent.push(h);
        }
        self.finish_removal(key, out);
    }

    /// Completes the removal of `key` if no backup is still waited for.
    fn finish_removal(&mut self, key: &str, out: &mut Vec<Action>) {
        let done = self
            .removing
            .get(key)
            .is_some_and(|r| r.waiting_on.is_empty() && r.chasing.is_empty());
        if !done {
            return;
        }
        let r = self.removing.remove(key).expect("present");
        for (to, msg) in self.notify.remove(key).unwrap_or_default() {
            out.push(send(&to, msg));
        }
        for req in r.reqs {
            out.push(reply(req, Ok(())));
        }
        if r.event {
            out.push(Action::Event(ChildEvent::Stopped {
                key: key.to_owned(),
            }));
        }
        for (req, record) in r.starts {
            self.start_into(req, record, out);
        }
    }

    /// The eligible nodes changed: `nodes` is the full new view (this node is always included).
    /// Same as [`Directory::set_members`] with no leaving node.
    pub fn set_view<'a>(&mut self, nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<Action> {
        self.set_members(nodes, std::iter::empty())
    }

    /// The membership changed: `owners` are the nodes up and not leaving (the placement ring;
    /// this node is included unless it leaves), `leaving` the nodes that announced a graceful
    /// leave and are still alive. A leaving node owns nothing, but what it holds is not failed
    /// over: it hands its children off itself. A node in neither set is down: backups from it are
    /// failed over. If this node is in `leaving`, it is as if [`Directory::leave`] was called.
    pub fn set_members<'a, 'b>(
        &mut self,
        owners: impl IntoIterator<Item = &'a NodeId>,
        leaving: impl IntoIterator<Item = &'b NodeId>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let leaving: BTreeSet<NodeId> = leaving.into_iter().cloned().collect();
        if leaving.contains(&self.config.me) {
            self.me_leaving = true;
        }
        let mut owners: BTreeSet<NodeId> = owners
            .into_iter()
            .filter(|n| !leaving.contains(*n))
            .cloned()
            .collect();
        if self.me_leaving {
            owners.remove(&self.config.me);
        } else {
            owners.insert(self.config.me.clone());
        }
        let Ok(ring) = Ring::from_nodes(self.config.ring, owners.iter().cloned()) else {
            return out;
        };
        let mut view = owners;
        view.extend(leaving.iter().cloned());
        view.insert(self.config.me.clone());
        let gone: BTreeSet<NodeId> = self.view.difference(&view).cloned().collect();
        for n in &gone {
            if self.departed.len() < crate::placement::MAX_NODES {
                self.departed.insert(n.clone());
            }
        }
        // Copies held for nodes that are not in the new view either, though they never left it:
        // runs that replicated here before this node's membership reported them up (the runtime
        // accepts a connection from a run it never declared down). A view that changes without
        // them is the only sign this node gets if they never come (a partition hides them):
        // failed over like the copies of a node that left, or the side that holds them would
        // never run them.
        let strangers: BTreeSet<NodeId> = self
            .backups
            .values()
            .flatten()
            .map(|b| &b.from)
            .filter(|n| !view.contains(*n) && !gone.contains(*n))
            .cloned()
            .collect();
        self.orphan_copies(&gone);
        self.orphan_copies(&strangers);
        for n in &view {
            self.departed.remove(n);
        }
        let added: Vec<NodeId> = view.difference(&self.view).cloned().collect();
        self.ring = ring;
        self.view = view;
        self.leaving = leaving;
        self.leaving.remove(&self.config.me);
        // Removals no longer wait for nodes that went away.
        self.forget_waits(&mut out);
        let had_quorum = !self.quorum_lost;
        self.quorum_lost = !self.has_quorum();
        if self.quorum_lost {
            if had_quorum {
                self.lose_quorum(&mut out);
            }
            return out;
        }
        if had_quorum {
            for peer in added {
                self.resync(&peer, &mut out);
            }
        } else {
            self.regain_quorum(&mut out);
        }
        self.rebalance(&mut out);
        out
    }

    /// Minority: stop everything, and drop the backups; the majority side fails these children
    /// over. The stops are not removals (a removal would bury the children and chase the copies
    /// the majority runs): each child is kept as an orphan copy once it exited.
    fn lose_quorum(&mut self, out: &mut Vec<Action>) {
        let err = self.quorum_error();
        for (key, o) in self.owned.iter_mut() {
            for req in o.waiting.drain(..) {
                out.push(reply(req, Err(err.clone())));
            }
            match o.phase {
                // A removal in progress stays one.
                Phase::Stopping => {}
                Phase::Running => {
                    o.phase = Phase::Abandoning;
                    out.push(stop(key, StopReason::Quorum));
                }
                // Starting: stopped once spawned. Moving, Merging: a stop is under way already.
                Phase::Starting | Phase::Moving | Phase::Merging => o.phase = Phase::Abandoning,
                Phase::Abandoning => {}
            }
        }
        self.moving.clear();
        self.move_queue.clear();
        // Every copy held here stays (backups, hand-off copies, orphans): none runs while the
        // quorum is lost, but the majority this node cannot see may not exist (a crash and a
        // partition at once leave every side a minority), and then a copy here may be a
        // child's last one. Once the quorum returns, the usual reconciliation
        // ([`Directory::regain_quorum`]) drops the copies no longer needed and fails over the
        // orphans; a copy the other side failed over meanwhile meets it and is merged.
    }

    /// The quorum came back: the peers in the view are reconciled with, not only the ones that
    /// joined it at this change. Peers that came into the view while the quorum was lost were
    /// not reconciled then (nothing is decided without a quorum), and the copies this node kept
    /// through the loss may be stale (their owner moved its backup, handed the child on, or
    /// removed it meanwhile): [`DirMsg::Held`] tells each peer what is held for it, and the
    /// peer drops what it no longer needs.
    fn regain_quorum(&mut self, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        let peers: Vec<NodeId> = self.view.iter().filter(|n| **n != me).cloned().collect();
        for peer in peers {
            self.resync(&peer, out);
        }
    }

    /// The child `key`, stopped because this node lost its quorum, exited (or failed to spawn):
    /// forget it as a running child, without burying it or dropping any other copy, and keep its
    /// final record as an orphan copy held for this node itself. When the quorum returns, the
    /// copy is failed over like any orphan: run here if this node owns the key, handed to the
    /// owner otherwise, merged with the copy the other side ran meanwhile if there is one. The
    /// copies it carried (its backup, copies to drop) are dropped once the new copy is safe.
    fn abandoned(&mut self, key: &str, out: &mut Vec<Action>) {
        self.moving.remove(key);
        self.move_queue.remove(key);
        let Some(o) = self.owned.remove(key) else {
            return;
        };
        let me = self.config.me.clone();
        let current = o.backup_holder(&me);
        let err = self.quorum_error();
        for req in o.waiting {
            out.push(reply(req, Err(err.clone())));
        }
        for req in o.stopping_reqs {
            out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned()))));
        }
        let olds: Vec<Holder> = current.into_iter().chain(o.old_backups).collect();
        self.hold_olds(key, olds);
        // Copies waiting to be merged into it are kept beside it (merged when it runs again).
        for theirs in o.merges.into_iter().chain(o.merging.map(|r| *r)) {
            self.next_tag += 1;
            let tag = Some(self.next_tag);
            self.put_copy(key, orphan_copy(&me, theirs, tag, Epoch::default()));
        }
        self.put_copy(key, orphan_copy(&me, o.record, None, o.epoch));
        if !self.quorum_lost {
            // The quorum came back while it was stopping.
            self.rebalance(out);
        }
    }

    /// This node leaves gracefully: it owns nothing from now on, and every child it runs moves
    /// to its new owner (drain-stop, final snapshot, [`DirMsg::Adopt`]), at most
    /// [`DirConfig::max_moves`] at a time. Start requests are answered `NotOwner`. Poll
    /// [`Directory::handed_off`] to know when the node may exit.
    pub fn leave(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.me_leaving {
            return out;
        }
        self.me_leaving = true;
        self.ring.remove(&self.config.me);
        self.quorum_lost = !self.has_quorum();
        if !self.quorum_lost {
            self.rebalance(&mut out);
        }
        out
    }

    /// Re-derive every local decision from the current view. Costs O(owned + backups) ring
    /// lookups.
    fn rebalance(&mut self, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        // Children running here.
        let keys: Vec<String> = self.owned.keys().cloned().collect();
        for key in keys {
            let owner = self.owner(&key);
            let backup = self.backup_of(&key).filter(|b| *b != self.config.me);
            let o = self.owned.get_mut(&key).expect("present");
            if owner.as_ref().is_some_and(|n| *n != me) {
                if matches!(o.phase, Phase::Starting | Phase::Running) {
                    self.move_queue.insert(key);
                }
                continue;
            }
            if matches!(o.phase, Phase::Stopping | Phase::Moving | Phase::Abandoning) {
                continue;
            }
            if o.backup != backup {
                // The former backup keeps its copy until the new one acknowledged (it is
                // dropped then, even if it left the view: it may be alive behind a partition or
                // a false suspicion, and a stale backup would fail over later).
                if let Some(old) = o.backup_holder(&me) {
                    add_holder(&mut o.old_backups, old);
                }
                // The new backup's copy is replaced by the replication (a drop of this lineage
                // arriving after it would delete it).
                let epoch = o.epoch;
                let supersedes = |h: &Holder| {
                    h.tag.is_none()
                        && h.origin == me
                        && h.epoch == epoch
                        && Some(&h.node) == backup.as_ref()
                };
                o.old_backups.retain(|h| !supersedes(h));
                if let Some(list) = self.dropping.get_mut(&key) {
                    // Nor is a drop sent to it earlier sent again on a reconnection.
                    list.retain(|h| !supersedes(h));
                    if list.is_empty() {
                        self.dropping.remove(&key);
                    }
                }
                o.backup = backup.clone();
                if let Some(b) = &backup {
                    o.acked = false;
                    out.push(send(b, o.replicate()));
                }
                self.settle(&key, out);
            }
        }
        // Backups whose origin left the view.
        let orphaned: Vec<(String, NodeId, Option<u64>)> = self
            .backups
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |b| (k, b)))
            .filter(|(_, b)| b.orphan || self.departed.contains(&b.from))
            .map(|(k, b)| (k.clone(), b.from.clone(), b.handoff))
            .collect();
        for (key, from, handoff) in orphaned {
            if self.owner(&key).is_none() {
                // Nobody to run it (this node leaves and sees no owner): keep the copy until
                // the view has one.
                continue;
            }
            if self
                .owned
                .get(&key)
                .is_some_and(|o| o.phase == Phase::Abandoning)
            {
                // Its copy here is still stopping for a quorum lost meanwhile: it joins this
                // copy when it exited (`abandoned`).
                continue;
            }
            let Some(b) = self
                .remove_copies(&key, |b| b.from == from && b.handoff == handoff)
                .pop()
            else {
                continue;
            };
            // A hand-off to the departed node is over: its copies to drop go with this copy.
            let olds = match self.handoffs.get(&key) {
                Some(h) if h.to == b.from => self.handoffs.remove(&key).map(|h| h.olds),
                _ => None,
            }
            .unwrap_or_default();
            let source = Source::held(&b);
            if !self.owned.contains_key(&key)
                && (self.removing.contains_key(&key) || self.buried(&key, b.record.generation))
            {
                // A copy of a removed child: it goes too, with the copies it carried.
                self.discard(&key, b.record.generation, olds, out);
                continue;
            }
            match self.owner(&key) {
                Some(o) if o == me => {
                    if self.owned.contains_key(&key) {
                        // A copy runs here already: two copies met (views disagreed).
                        self.take_copy(&key, b.record, None, olds, out);
                        continue;
                    }
                    let first = if b.from == me {
                        // Its own copy, stopped when this node lost its quorum.
                        ChildEvent::Restarted { key: key.clone() }
                    } else {
                        ChildEvent::FailedOver {
                            key: key.clone(),
                            from: b.from.clone(),
                            from_snapshot: b.record.snapshot.is_some(),
                        }
                    };
                    self.hold_olds(&key, olds);
                    self.insert_owned(b.record, Vec::new(), first, Some(source), out);
                }
                Some(o) => self.hand_off(&o, b.record, 0, olds, false, Some(source), out),
                None => {}
            }
        }
        self.pump_moves(out);
    }

    /// Starts moves from the queue while fewer than [`DirConfig::max_moves`] are in progress.
    fn pump_moves(&mut self, out: &mut Vec<Action>) {
        let max = self.config.max_moves.max(1);
        while self.moving.len() < max {
            let Some(key) = self.move_queue.pop_first() else {
                break;
            };
            let owner = self.owner(&key);
            let Some(o) = self.owned.get_mut(&key) else {
                continue;
            };
            if owner.is_none_or(|n| n == self.config.me)
                || !matches!(o.phase, Phase::Starting | Phase::Running)
                || !o.merges.is_empty()
            {
                // No longer to move, or merges first (`merged` moves it afterwards).
                continue;
            }
            let was = o.phase;
            o.phase = Phase::Moving;
            self.moving.insert(key.clone());
            if was == Phase::Running {
                out.push(stop(&key, StopReason::Move));
            }
        }
    }

    /// A copy of the running child `key` arrived from `from` (an adoption, or an orphaned backup
    /// found while a copy runs here): the copy here wins; the other copy's state is merged into it
    /// and `from` forgets its copy once this copy's backup holds the result.
    fn take_copy(
        &mut self,
        key: &str,
        theirs: Record,
        sender: Option<Holder>,
        olds: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.me.clone();
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        for h in olds.into_iter().chain(sender.clone()) {
            if h.node != me {
                add_holder(&mut o.old_backups, h);
            }
        }
        if let Some(s) = sender.filter(|s| s.node != me) {
            out.push(Action::Event(ChildEvent::Conflict {
                key: key.to_owned(),
                other: s.node.clone(),
                here_lost: false,
            }));
            out.push(send(
                &s.node,
                DirMsg::Conflict {
                    key: key.to_owned(),
                },
            ));
        }
        let merge = theirs.snapshot.is_some();
        if merge {
            o.merges.push(theirs);
        }
        if o.phase == Phase::Running && merge {
            self.next_merge(key, out);
        } else if !merge {
            // Nothing to merge: refresh the backup so the confirmation to `from` follows.
            if let Some(b) = &o.backup {
                o.acked = false;
                out.push(send(b, o.replicate()));
            }
        }
        // A merge in progress (or deferred until the child runs) replicates its result, and
        // that acknowledgement drops the copies to drop.
        self.settle(key, out);
    }

    /// The membership declared `node` dead while it was not in this node's view (it died before
    /// this node learned of it, e.g. while this node was joining). Backups it replicated here are
    /// orphans: they are failed over as if `node` had left the view.
    pub fn node_down(&mut self, node: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if self.view.contains(node) || *node == self.config.me {
            return out;
        }
        if self.backups.values().flatten().any(|b| b.from == *node) {
            self.departed.insert(node.clone());
            self.orphan_copies(&BTreeSet::from([node.clone()]));
            // Without a quorum the copies stay orphans until it returns.
            if !self.quorum_lost {
                self.rebalance(&mut out);
            }
        }
        out
    }

    /// The connection to `peer` closed (for any reason) while `peer` is not in this node's
    /// view. Copies it replicated or handed here over that connection, from a run this node's
    /// membership never reported up, are orphans from now on: no view change will ever name
    /// `peer` to this directory if it stays out of reach (a partition hides it), and the side
    /// holding its copies must run them. Failed over as after [`Directory::node_down`]; if
    /// `peer` was alive after all, the copy it runs and the one failed over here meet when it
    /// joins the view and are merged (the conflict rule). Ignored for a peer in the view (the
    /// view change that removes it says so) and for a peer that sent nothing here.
    pub fn disconnected(&mut self, peer: &NodeId) -> Vec<Action> {
        self.node_down(peer)
    }

    /// Marks the copies held for `nodes` (which left the view, or died) as orphans.
    fn orphan_copies(&mut self, nodes: &BTreeSet<NodeId>) {
        if nodes.is_empty() {
            return;
        }
        for b in self.backups.values_mut().flatten() {
            if nodes.contains(&b.from) {
                b.orphan = true;
            }
        }
    }

    /// Whether a drop sent to `node` is waited for: it is in the view.
    fn may_answer(&self, node: &NodeId) -> bool {
        self.view.contains(node)
    }

    /// Removals and drops no longer wait for nodes out of the view.
    fn forget_waits(&mut self, out: &mut Vec<Action>) {
        let view = &self.view;
        let waits = |n: &NodeId| view.contains(n);
        self.dropping.retain(|_, list| {
            list.retain(|h| waits(&h.node));
            !list.is_empty()
        });
        for r in self.removing.values_mut() {
            r.waiting_on.retain(|h| waits(&h.node));
            r.chasing.retain(|c| waits(&c.node));
        }
        let keys: Vec<String> = self.removing.keys().cloned().collect();
        for key in keys {
            self.finish_removal(&key, out);
        }
    }

    /// The connection to `peer` was lost and re-established while `peer` stayed in this node's
    /// view, so messages to it may have been lost: send again what it must hold (the records it
    /// backs up for this node, the hand-offs it has not confirmed, the drops it has not
    /// confirmed) and tell it which copies this node holds for it ([`DirMsg::Held`]).
    pub fn reconnected(&mut self, peer: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if self.quorum_lost || !self.view.contains(peer) {
            return out;
        }
        for o in self.owned.values_mut() {
            if o.backup.as_ref() == Some(peer) {
                o.acked = false;
                out.push(send(peer, o.replicate()));
            }
        }
        self.resync(peer, &mut out);
        out
    }

    /// Re-send to `peer` the hand-offs and drops it has not confirmed, and reconcile the backups
    /// held for it.
    fn resync(&mut self, peer: &NodeId, out: &mut Vec<Action>) {
        // Every copy handed off to `peer` and not confirmed (the confirmation may have been
        // lost): the latest hand-off of a key carries the copies to drop with it.
        for (key, list) in &self.backups {
            for b in list.iter().filter(|b| b.from == *peer) {
                let Some(tag) = b.handoff else {
                    continue;
                };
                let h = self
                    .handoffs
                    .get(key)
                    .filter(|h| h.to == *peer && h.tag == tag);
                out.push(send(
                    peer,
                    DirMsg::Adopt {
                        record: b.record.clone(),
                        hops: 0,
                        tag,
                        holders: h.map_or_else(Vec::new, |h| h.olds.clone()),
                        moved: h.is_some_and(|h| h.moved),
                    },
                ));
            }
        }
        for (key, r) in &self.removing {
            for h in r.waiting_on.iter().filter(|h| h.node == *peer) {
                out.push(h.drop_msg(key, Some(r.generation)));
            }
            for c in r.chasing.iter().filter(|c| c.node == *peer) {
                out.push(c.msg(key));
            }
        }
        for (key, list) in &self.dropping {
            if self.removing.contains_key(key) {
                continue;
            }
            // Not a drop that would delete the copy `peer` now backs up for a child here (it
            // was its backup, then again: the replication since superseded the drop).
            let current = self
                .owned
                .get(key)
                .filter(|o| o.backup.as_ref() == Some(peer));
            for h in list.iter().filter(|h| h.node == *peer) {
                let backs_current = current.is_some_and(|o| {
                    h.tag.is_none() && h.origin == self.config.me && o.epoch <= h.epoch
                });
                if !backs_current {
                    out.push(h.drop_msg(key, None));
                }
            }
        }
        let keys: Vec<(String, Epoch)> = self
            .backups
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |b| (k, b)))
            .filter(|(_, b)| b.from == *peer && b.handoff.is_none())
            .map(|(k, b)| (k.clone(), b.epoch))
            .collect();
        out.push(send(peer, DirMsg::Held { keys }));
        if !self.tombstone_order.is_empty() {
            // The newest first, at most `MAX_BURIED_BYTES` of keys.
            let mut bytes = 0;
            let removed = self
                .tombstone_order
                .iter()
                .rev()
                .take_while(|(k, _)| {
                    bytes += k.len() + 8;
                    bytes <= MAX_BURIED_BYTES
                })
                .cloned()
                .collect();
            out.push(send(peer, DirMsg::Buried { removed }));
        }
    }

    /// Whether the copy of `key` that `from` holds for this node (lineage `epoch`, holder `h`) is
    /// still needed: it backs the running copy, or an old backup or hand-off not yet settled.
    fn wants_copy(&self, key: &str, from: &NodeId, epoch: Epoch, h: &Holder) -> bool {
        self.owned.get(key).is_some_and(|o| {
            (o.epoch == epoch && o.backup.as_ref() == Some(from)) || o.old_backups.contains(h)
        }) || self.handoffs.get(key).is_some_and(|ho| ho.olds.contains(h))
    }

    /// Without a quorum nothing runs here: an adoption is kept as an orphan copy, run or handed
    /// to its owner when the quorum returns (see `keep_adoption`). True if `msg` was handled so.
    /// Every other message is handled as usual: a node without a quorum still holds copies
    /// (backups are kept, and replications acknowledged, as they run nothing: the sender sees a
    /// quorum and this node is the backup in its view), the copies kept through the loss must
    /// still be dropped when their owner says so, and a removal still wins.
    fn refused_without_quorum(
        &mut self,
        from: &NodeId,
        msg: &DirMsg,
        out: &mut Vec<Action>,
    ) -> bool {
        match msg {
            DirMsg::Adopt {
                record,
                tag,
                holders,
                ..
            } => {
                self.keep_adoption(from, record.clone(), *tag, holders.clone(), out);
                true
            }
            _ => false,
        }
    }

    /// An adoption that arrived while this node has no quorum. Not sent back to its sender: the
    /// record in flight back would be the child's only copy but the sender's (and its latest
    /// state, if the sender ran it without a backup), and the sender may crash meanwhile; and
    /// the sender would take it for its own hand-off refused and hand its record on again,
    /// while a copy of it may be kept here already (the adoption was sent again after a
    /// reconnection). Kept instead as an orphan copy held for this node, like a child stopped
    /// for the quorum: run or handed to its owner when the quorum returns. The sender is not
    /// told it was taken (it keeps its copy, as the child's other copy meanwhile): it is named
    /// among the copies that this one drops once it is safe, and if the sender fails its copy
    /// over first, the two copies meet and are merged.
    ///
    /// An adoption that is not kept is answered all the same, as it is with a quorum, or the
    /// sender would hold its copy for ever, waiting for a confirmation: a copy of a removed
    /// child goes (with the copies it names), and one taken here before whose copy moved on
    /// since is confirmed.
    fn keep_adoption(
        &mut self,
        from: &NodeId,
        record: Record,
        tag: u64,
        holders: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.me.clone();
        let key = record.key.clone();
        if !self.remember_adoption(from, tag) {
            self.adopted_again(from, &key, tag, out);
            return;
        }
        let sender = Holder {
            node: from.clone(),
            origin: me.clone(),
            tag: Some(tag),
            epoch: Epoch::default(),
        };
        let mut olds = vec![sender];
        let removed = self.removing.contains_key(&key) || self.buried(&key, record.generation);
        let mut record = record;
        for h in holders {
            if h.node == me {
                // A copy held here: it goes, and the copy kept is the newest of it and the
                // adopted record (as with a quorum). A hand-off copy's hand-off from here is
                // over: the copies it was to drop are the kept copy's.
                for b in self.remove_copies(&key, |b| h.names(b)) {
                    if b.record.generation == record.generation && b.record.version > record.version
                    {
                        record = b.record;
                    }
                    if let Some(ho) = self.handoffs.get_mut(&key) {
                        if b.handoff == Some(ho.tag) && b.from == ho.to {
                            ho.to = me.clone();
                            ho.tag = 0;
                            ho.moved = false;
                            ho.source = None;
                        }
                    }
                }
                continue;
            }
            add_holder(&mut olds, h);
        }
        if removed {
            // A copy of a removed child: it goes, with the copies it names.
            self.discard(&key, record.generation, olds, out);
            return;
        }
        self.hold_olds(&key, olds);
        self.next_tag += 1;
        let copy = orphan_copy(&me, record, Some(self.next_tag), Epoch::default());
        self.put_copy(&key, copy);
    }

    /// Without a quorum, the hand-off `tag` of `key` from `from`, taken here before, arrived
    /// again (sent again after a reconnection). If the copy made from it is still held here
    /// (stopped for the quorum, or kept without one) and names the sender among the copies it
    /// drops once it is safe, nothing to do. Otherwise that copy moved on and was confirmed, or
    /// was removed: the sender may forget its copy.
    fn adopted_again(&mut self, from: &NodeId, key: &str, tag: u64, out: &mut Vec<Action>) {
        let sender = Holder {
            node: from.clone(),
            origin: self.config.me.clone(),
            tag: Some(tag),
            epoch: Epoch::default(),
        };
        // The copies to drop with the copy kept here, held for this node itself.
        let me = &self.config.me;
        let kept = self
            .handoffs
            .get(key)
            .is_some_and(|h| h.to == *me && h.olds.contains(&sender))
            && self
                .backups
                .get(key)
                .is_some_and(|list| list.iter().any(|b| b.from == *me));
        if !kept {
            out.push(sender.drop_msg(key, None));
        }
    }

    /// A replication of lineage `epoch` of `key` arrived from `from` while this node holds an
    /// orphan copy of another lineage from it (`from` left the view after replicating it: it
    /// crashed and came back as a new incarnation, or was cut off, and runs the child anew, from
    /// a copy that may be older than this one). That copy is not the backup being replaced: it
    /// is kept, as a copy held for this node itself, and failed over like any orphan (merged into
    /// the running copy if there is one), or the state it holds would be lost.
    fn keep_orphan(&mut self, key: &str, from: &NodeId, epoch: Epoch) {
        let orphan = |c: &Backup| c.from == *from && c.handoff.is_none() && c.orphan;
        let other = self
            .backups
            .get(key)
            .is_some_and(|list| list.iter().any(|c| orphan(c) && c.epoch != epoch));
        if !other {
            return;
        }
        self.next_tag += 1;
        let tag = self.next_tag;
        let me = self.config.me.clone();
        if let Some(c) = self
            .backups
            .get_mut(key)
            .and_then(|list| list.iter_mut().find(|c| orphan(c)))
        {
            c.from = me;
            c.handoff = Some(tag);
            c.epoch = Epoch::default();
        }
    }

    /// A message from the directory on `from`.
    pub fn receive(&mut self, from: &NodeId, msg: DirMsg) -> Vec<Action> {
        let mut out = Vec::new();
        if self.quorum_lost && self.refused_without_quorum(from, &msg, &mut out) {
            return out;
        }
        // The connection to a node is closed when it leaves the view (messages in flight are
        // lost), so a message from a node that left is from a new incarnation of it not yet in
        // the view (or from a node falsely suspected): it is alive, and what it replicates here
        // is not an orphan. If it dies before it joins the view, `node_down` says so.
        self.departed.remove(from);
        match msg {
            DirMsg::Replicate { record, epoch } => {
                let key = record.key.clone();
                let version = record.version;
                if self.buried(&key, record.generation) {
                    // A copy of a removed child: sent before the removal, which overtook it from
                    // another node, or replicated by a copy that survived the removal on the
                    // other side of a partition. Refused (keeping it would fail the child over);
                    // the sender's copy, if it still runs, is stopped.
                    out.push(send(
                        from,
                        DirMsg::Removed {
                            key,
                            generation: record.generation,
                        },
                    ));
                    return out;
                }
                // If a copy runs here too, views disagree: it is kept as the sender's backup all
                // the same (the sender waits for the acknowledgement); whichever copy is not on
                // the owner once views converge moves to it and is merged there, and if the
                // sender leaves the view first, this backup is merged into the copy here.
                // Messages between two nodes arrive in order, so the latest record from an owner
                // is its current one. Copies of other origins (other lineages, views that
                // disagree) and hand-off copies are kept beside it.
                self.keep_orphan(&key, from, epoch);
                self.put_copy(
                    &key,
                    Backup {
                        from: from.clone(),
                        record,
                        handoff: None,
                        epoch,
                        orphan: false,
                    },
                );
                out.push(send(
                    from,
                    DirMsg::Ack {
                        key,
                        version,
                        epoch,
                    },
                ));
            }
            DirMsg::Ack {
                key,
                version,
                epoch,
            } => {
                let h = Holder::backup(from.clone(), &self.config.me, epoch);
                if !self.wants_copy(&key, from, epoch, &h) {
                    // A late replication (held by a partition, or sent before a move): the
                    // copy it left at `from` is not needed.
                    out.push(h.drop_msg(&key, None));
                    return out;
                }
                if let Some(o) = self.owned.get_mut(&key) {
                    if o.backup.as_ref() == Some(from)
                        && o.epoch == epoch
                        && o.record.version == version
                    {
                        o.acked = true;
                        let olds = if o.merges.is_empty() && o.merging.is_none() {
                            std::mem::take(&mut o.old_backups)
                        } else {
                            Vec::new()
                        };
                        if o.phase == Phase::Running {
                            for req in o.waiting.drain(..) {
                                out.push(reply(req, Ok(())));
                            }
                        }
                        self.drop_copies(&key, olds, &mut out);
                    }
                }
            }
            DirMsg::Drop {
                key,
                origin,
                tag,
                epoch,
                remove,
                generation,
            } => {
                let h = Holder {
                    node: self.config.me.clone(),
                    origin: origin.clone(),
                    tag,
                    epoch,
                };
                self.remove_copies(&key, |b| h.names(b));
                let source = Source::Held {
                    origin: origin.clone(),
                    tag,
                    epoch,
                };
                if tag.is_some()
                    && self
                        .handoffs
                        .get(&key)
                        .is_some_and(|ho| ho.to == origin && Some(ho.tag) == tag)
                {
                    // The hand-off to `origin` is confirmed.
                    self.confirm_handoff(&key, &origin, &mut out);
                }
                let answer = DirMsg::Dropped {
                    key: key.clone(),
                    origin,
                    tag,
                    epoch,
                    remove,
                    next: None,
                };
                if remove {
                    self.bury(&key, generation);
                    self.chase_here(from, &key, &source, answer, &mut out);
                } else {
                    out.push(send(from, answer));
                }
            }
            DirMsg::Dropped {
                key,
                origin,
                tag,
                epoch,
                remove,
                next,
            } => {
                let h = Holder {
                    node: from.clone(),
                    origin,
                    tag,
                    epoch,
                };
                if let Some(list) = self.dropping.get_mut(&key) {
                    list.retain(|w| *w != h);
                    if list.is_empty() {
                        self.dropping.remove(&key);
                    }
                }
                if remove {
                    self.removal_answered(&key, from, next, &mut out, |r| {
                        r.waiting_on.retain(|w| *w != h)
                    });
                }
            }
            DirMsg::Chase {
                key,
                from: f,
                tag,
                generation,
            } => {
                self.bury(&key, generation);
                let source = Source::Adopted {
                    from: f.clone(),
                    tag,
                };
                let answer = DirMsg::Chased {
                    key: key.clone(),
                    from: f,
                    tag,
                    next: None,
                };
                self.chase_here(from, &key, &source, answer, &mut out);
            }
            DirMsg::Chased {
                key,
                from: f,
                tag,
                next,
            } => {
                self.removal_answered(&key, from, next, &mut out, |r| {
                    r.chasing
                        .retain(|w| !(w.node == *from && w.from == f && w.tag == tag))
                });
            }
            DirMsg::Held { keys } => {
                // The records `from` should hold for this node and does not: send them again.
                let held: BTreeMap<&String, Epoch> = keys.iter().map(|(k, e)| (k, *e)).collect();
                // (Not without a quorum: the children here are stopping, not to be backed up.)
                let replicate = !self.quorum_lost;
                for o in self.owned.values_mut().filter(|_| replicate) {
                    if o.backup.as_ref() == Some(from) && held.get(&o.record.key) != Some(&o.epoch)
                    {
                        o.acked = false;
                        out.push(send(from, o.replicate()));
                    }
                }
                for (key, epoch) in keys {
                    let h = Holder::backup(from.clone(), &self.config.me, epoch);
                    if !self.wants_copy(&key, from, epoch, &h) {
                        out.push(h.drop_msg(&key, None));
                    }
                }
            }
            DirMsg::Removed { key, generation } => {
                self.bury_and_stop(&key, generation, &mut out);
            }
            DirMsg::Buried { removed } => {
                for (key, generation) in removed.into_iter().take(MAX_TOMBSTONES) {
                    self.bury_and_stop(&key, generation, &mut out);
                }
            }
            DirMsg::Conflict { key } => {
                out.push(Action::Event(ChildEvent::Conflict {
                    key,
                    other: from.clone(),
                    here_lost: true,
                }));
            }
            DirMsg::Adopt {
                record,
                hops,
                tag,
                holders,
                moved,
            } => self.adopt(from, record, hops, tag, holders, moved, &mut out),
        }
        out
    }

    /// A copy of a child sent by `from` to run here ([`DirMsg::Adopt`]).
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        from: &NodeId,
        record: Record,
        hops: u8,
        tag: u64,
        holders: Vec<Holder>,
        moved: bool,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        let owner = self.owner(&key);
        let me = self.config.me.clone();
        let sender = Holder {
            node: from.clone(),
            origin: me.clone(),
            tag: Some(tag),
            epoch: Epoch::default(),
        };
        // This node's own hand-off to `from`, sent back as it was (by a node of an earlier
        // version that lost its quorum: this version keeps such an adoption instead): the copy
        // kept here until `from` confirms is this very record, and `from` kept nothing. It
        // goes, or it would wait for a confirmation that never comes.
        let bounced = !self
            .remove_copies(&key, |b| b.from == *from && b.handoff == Some(tag))
            .is_empty();
        let mut copies: Vec<Holder> = (!bounced).then(|| sender.clone()).into_iter().collect();
        let mut record = record;
        for h in holders.iter() {
            if h.node == me {
                // A copy held here: it goes, the newest of it and the adopted record runs (the
                // adopted one is usually at least as recent, unless it is an older hand-off sent
                // again after a reconnection).
                for b in self.remove_copies(&key, |b| h.names(b)) {
                    if b.record.generation == record.generation && b.record.version > record.version
                    {
                        record = b.record;
                    }
                }
            } else {
                add_holder(&mut copies, h.clone());
            }
        }
        // The same hand-off sent again (its confirmation was lost, or overtaken by the sender's
        // reconnection) while the copy it made runs here or was handed on: nothing new to run;
        // the copies it names go with the copy made from it.
        let again = Source::Adopted {
            from: from.clone(),
            tag,
        };
        if let Some(o) = self.owned.get_mut(&key) {
            if o.source.as_deref() == Some(&again) {
                for h in copies {
                    add_holder(&mut o.old_backups, h);
                }
                if matches!(o.phase, Phase::Starting | Phase::Running) {
                    if let Some(b) = &o.backup {
                        // The acknowledgement drops them.
                        o.acked = false;
                        out.push(send(b, o.replicate()));
                    }
                    self.settle(&key, out);
                }
                return;
            }
        } else if let Some(h) = self.handoffs.get_mut(&key) {
            if h.to != me && h.source.as_ref() == Some(&again) {
                for c in copies {
                    if c.node != h.to {
                        add_holder(&mut h.olds, c);
                    }
                }
                return;
            }
        }
        if !self.remember_adoption(from, tag) {
            // Taken before, and the copy it made has moved on since (confirmed by its next
            // holder) or was removed: the sender may forget its copy; nothing to run again.
            out.push(sender.drop_msg(&key, None));
            return;
        }
        if !self.owned.contains_key(&key)
            && (self.removing.contains_key(&key) || self.buried(&key, record.generation))
        {
            // A copy of a removed child: it goes too (its holders drop it).
            self.discard(&key, record.generation, copies, out);
            return;
        }
        if let Some(o) = self.owned.get_mut(&key) {
            match o.phase {
                Phase::Stopping => {
                    // Terminated here: the other copy goes too (its holders are told when
                    // the child has stopped, and the removal waits for them).
                    for h in copies {
                        add_holder(&mut o.old_backups, h);
                    }
                }
                Phase::Moving | Phase::Abandoning => match owner.filter(|n| *n != me) {
                    Some(to) if hops < MAX_HOPS => {
                        // The copy here is on its way out: this record goes where it
                        // goes (the sender keeps its copy until the next node confirms).
                        let source = Source::Adopted {
                            from: from.clone(),
                            tag,
                        };
                        self.hand_off(&to, record, hops + 1, copies, moved, Some(source), out);
                    }
                    _ => {
                        if record.snapshot.is_some() {
                            o.merges.push(record);
                        }
                        for h in copies {
                            add_holder(&mut o.old_backups, h);
                        }
                    }
                },
                Phase::Starting | Phase::Running | Phase::Merging => {
                    let sender = (!bounced).then_some(sender);
                    self.take_copy(&key, record, sender, holders, out);
                }
            }
            return;
        }
        match owner {
            Some(o) if o != self.config.me && hops < MAX_HOPS => {
                // Views disagree: pass it on to the owner in this node's view (the sender
                // keeps its copy until that node confirms).
                let source = Source::Adopted {
                    from: from.clone(),
                    tag,
                };
                self.hand_off(&o, record, hops + 1, copies, moved, Some(source), out);
            }
            _ => {
                // Ours, or passed around too often while views settle: run it here; the
                // next view change moves it if it is not ours.
                let first = if moved {
                    ChildEvent::Adopted {
                        key: key.clone(),
                        from: from.clone(),
                    }
                } else {
                    ChildEvent::FailedOver {
                        key: key.clone(),
                        from: from.clone(),
                        from_snapshot: record.snapshot.is_some(),
                    }
                };
                self.hold_olds(&key, copies);
                let source = Source::Adopted {
                    from: from.clone(),
                    tag,
                };
                self.insert_owned(record, Vec::new(), first, Some(source), out);
                if owner.is_some_and(|o| o != me) {
                    // Not ours (kept after too many hops): it moves to its owner as soon as it
                    // runs, rather than at the next view change (a leaving node must not keep
                    // it, and the views may have settled already).
                    self.move_queue.insert(key);
                    self.pump_moves(out);
                }
            }
        }
    }

    /// A removal on `remover` names `source`, a copy of `key` this node held or was handed: a
    /// copy this node made from it is removed too. A child running here made from it is stopped
    /// for good and `answer` is sent once its removal is complete; a copy handed on from here is
    /// named in `answer` (the remover chases it there); otherwise `answer` is sent at once.
    fn chase_here(
        &mut self,
        remover: &NodeId,
        key: &str,
        source: &Source,
        mut answer: DirMsg,
        out: &mut Vec<Action>,
    ) {
        let runs_it = self
            .owned
            .get(key)
            .and_then(|o| o.source.as_deref())
            .is_some_and(|s| s.named_by(source));
        if runs_it && *remover != self.config.me {
            self.notify
                .entry(key.to_owned())
                .or_default()
                .push((remover.clone(), answer));
            self.stop_for_good(key, out);
            return;
        }
        let handed = self.handoffs.get(key).filter(|h| {
            h.to != self.config.me && h.source.as_ref().is_some_and(|s| s.named_by(source))
        });
        if let Some(h) = handed {
            let hop = Some((h.to.clone(), h.tag));
            match &mut answer {
                DirMsg::Dropped { next, .. } | DirMsg::Chased { next, .. } => *next = hop,
                _ => {}
            }
        }
        out.push(send(remover, answer));
    }

    /// Remembers the hand-off `tag` from `from` (the newest [`MAX_ADOPTIONS`]); false if it was
    /// taken before.
    fn remember_adoption(&mut self, from: &NodeId, tag: u64) -> bool {
        let k = (from.clone(), tag);
        if !self.adoptions.insert(k.clone()) {
            return false;
        }
        if self.adoption_order.len() >= MAX_ADOPTIONS {
            if let Some(old) = self.adoption_order.pop_front() {
                self.adoptions.remove(&old);
            }
        }
        self.adoption_order.push_back(k);
        true
    }

    /// Remembers that the child of `key` and `generation` was removed.
    fn bury(&mut self, key: &str, generation: u64) {
        if generation == 0 {
            return;
        }
        if self.buried(key, generation) {
            return;
        }
        if self.tombstone_order.len() >= MAX_TOMBSTONES {
            if let Some((old, g)) = self.tombstone_order.pop_front() {
                if let Some(list) = self.tombstones.get_mut(&old) {
                    list.retain(|x| *x != g);
                    if list.is_empty() {
                        self.tombstones.remove(&old);
                    }
                }
            }
        }
        self.tombstones
            .entry(key.to_owned())
            .or_default()
            .push(generation);
        self.tombstone_order.push_back((key.to_owned(), generation));
    }

    /// The child of `key` and `generation` was removed elsewhere: remember it, and stop its copy
    /// here if one runs (it survived the removal on the other side of a partition).
    fn bury_and_stop(&mut self, key: &str, generation: u64, out: &mut Vec<Action>) {
        self.bury(key, generation);
        if generation != 0
            && self
                .owned
                .get(key)
                .is_some_and(|o| o.record.generation == generation)
        {
            self.stop_for_good(key, out);
        }
    }

    /// Whether the child of `key` and `generation` is known to be removed.
    fn buried(&self, key: &str, generation: u64) -> bool {
        generation != 0
            && self
                .tombstones
                .get(key)
                .is_some_and(|list| list.contains(&generation))
    }

    /// `from` answered a drop or a chase of the removal of `key` (`answered` forgets what it
    /// waited for): chase the copy it names next, if any, and complete the removal if it waits
    /// for nothing more.
    fn removal_answered(
        &mut self,
        key: &str,
        from: &NodeId,
        next: Option<(NodeId, u64)>,
        out: &mut Vec<Action>,
        answered: impl FnOnce(&mut Removal),
    ) {
        if !self.removing.contains_key(key) {
            return;
        }
        if let Some((node, tag)) = next {
            self.chase(key, node, from, tag, out);
        }
        if let Some(r) = self.removing.get_mut(key) {
            answered(r);
        }
        self.finish_removal(key, out);
    }

    /// The removal of `key` chases the copy `from` handed to `node` with `tag`.
    fn chase(&mut self, key: &str, node: NodeId, from: &NodeId, tag: u64, out: &mut Vec<Action>) {
        if node == self.config.me || !self.may_answer(&node) {
            return;
        }
        let Some(r) = self.removing.get_mut(key) else {
            return;
        };
        let c = Chase {
            node,
            from: from.clone(),
            tag,
            generation: r.generation,
        };
        if r.chases >= MAX_CHASES || r.chasing.contains(&c) {
            return;
        }
        r.chases += 1;
        out.push(c.msg(key));
        r.chasing.push(c);
    }

    /// `to` confirmed it took the child `key` handed off to it: the former backups may forget it.
    fn confirm_handoff(&mut self, key: &str, to: &NodeId, out: &mut Vec<Action>) {
        let Some(h) = self.handoffs.remove(key) else {
            return;
        };
        let me = &self.config.me;
        let olds = h
            .olds
            .into_iter()
            .filter(|old| old.node != *to && old.node != *me)
            .collect();
        self.drop_copies(key, olds, out);
    }

    /// Copies to drop once the copy of `key` about to be run or handed off from here is safe.
    fn hold_olds(&mut self, key: &str, olds: Vec<Holder>) {
        let me = self.config.me.clone();
        let h = self.handoffs.entry(key.to_owned()).or_insert(HandOff {
            to: me.clone(),
            tag: 0,
            moved: false,
            olds: Vec::new(),
            source: None,
        });
        for o in olds {
            if o.node != me {
                add_holder(&mut h.olds, o);
            }
        }
    }

    /// Send `record` to `to` to run, and hold a copy until `to` confirms it took it (with a
    /// [`DirMsg::Drop`], or by replicating to this node): the copy is kept as a backup *from*
    /// `to`, so if `to` leaves the view first, the usual failover of orphaned backups re-sends or
    /// runs it instead of losing the child with the message.
    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        &mut self,
        to: &NodeId,
        record: Record,
        hops: u8,
        old_backups: Vec<Holder>,
        moved: bool,
        source: Option<Source>,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        self.hold_olds(&key, old_backups);
        self.next_tag += 1;
        let tag = self.next_tag;
        let h = self.handoffs.get_mut(&key).expect("held");
        h.to = to.clone();
        h.tag = tag;
        h.moved = moved;
        h.source = source;
        // The receiver drops the copies it holds itself as soon as it gets the record (which is
        // at least as recent): a backup of the child, or a hand-off copy of its own that came
        // back to it (views disagreed, the child was passed around).
        let holders: Vec<Holder> = h.olds.clone();
        // The copy is held until `to` confirms (beside a backup from `to`, if any: that one
        // backs up another copy).
        self.put_copy(
            &key,
            Backup {
                from: to.clone(),
                record: record.clone(),
                handoff: Some(tag),
                epoch: Epoch::default(),
                orphan: false,
            },
        );
        out.push(send(
            to,
            DirMsg::Adopt {
                record,
                hops,
                tag,
                holders,
                moved,
            },
        ));
    }
}

/// How many times an adoption is passed on between nodes whose views disagree before a node keeps
/// it anyway (bounds the traffic until views converge).
pub const MAX_HOPS: u8 = 8;

/// A generation ([`Record::generation`]) drawn by `me`: unique across nodes and their runs (a
/// collision needs equal 64-bit hashes), never 0.
fn generation_of(me: &NodeId, incarnation: u64, counter: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(me.as_str().as_bytes());
    h.update(&incarnation.to_le_bytes());
    h.update(&counter.to_le_bytes());
    h.digest().max(1)
}

/// A copy of `record` held for `me` itself: a child it stopped when it lost its quorum (or a copy
/// that was to be merged into one), failed over as soon as the view has an owner for it.
fn orphan_copy(me: &NodeId, record: Record, handoff: Option<u64>, epoch: Epoch) -> Backup {
    Backup {
        from: me.clone(),
        record,
        handoff,
        epoch,
        orphan: true,
    }
}

fn self_quorum(seen: usize, quorum: Option<usize>) -> StartError {
    StartError::NoQuorum {
        seen,
        needed: quorum.map(|s| s / 2 + 1).unwrap_or(0),
    }
}

fn reply(req: u64, result: Result<(), StartError>) -> Action {
    Action::Reply { req, result }
}

fn stop(key: &str, reason: StopReason) -> Action {
    Action::Stop {
        key: key.to_owned(),
        reason,
    }
}

fn send(to: &NodeId, msg: DirMsg) -> Action {
    Action::Send {
        to: to.clone(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn id(n: &str) -> NodeId {
        NodeId::new(n).expect("valid")
    }

    fn record(key: &str) -> Record {
        Record {
            key: key.to_owned(),
            actor_type: "t".into(),
            args: Vec::new(),
            policy: RestartPolicy::Permanent,
            snapshot: None,
            version: 0,
            generation: 0,
        }
    }

    /// Directories wired together, with a runtime that spawns and stops at once and merges
    /// states by concatenation.
    struct Net {
        dirs: BTreeMap<NodeId, Directory>,
        queue: VecDeque<(NodeId, NodeId, DirMsg)>,
        /// Running children: state per (node, key).
        running: BTreeMap<(NodeId, String), Vec<u8>>,
        merging: BTreeMap<(NodeId, String), Record>,
        log: Vec<(NodeId, Action)>,
    }

    impl Net {
        fn new(nodes: &[&str], max_moves: usize) -> Self {
            Net::with_quorum(nodes, max_moves, None)
        }

        /// Like [`Net::new`], every directory configured with `quorum`.
        fn with_quorum(nodes: &[&str], max_moves: usize, quorum: Option<usize>) -> Self {
            let ids: Vec<NodeId> = nodes.iter().map(|n| id(n)).collect();
            let mut net = Net {
                dirs: BTreeMap::new(),
                queue: VecDeque::new(),
                running: BTreeMap::new(),
                merging: BTreeMap::new(),
                log: Vec::new(),
            };
            for n in &ids {
                let mut config = DirConfig::new(n.clone());
                config.max_moves = max_moves;
                config.quorum = quorum;
                let mut d = Directory::new(config);
                let actions = d.set_view(ids.iter());
                net.dirs.insert(n.clone(), d);
                net.apply(n, actions);
            }
            net.settle();
            net
        }

        /// `nodes` with `key` started on its owner (request 1) and replicated.
        fn running(nodes: &[&str], key: &str) -> Self {
            let mut net = Net::new(nodes, 8);
            let owner = net.dirs.values().next().and_then(|d| d.owner(key)).unwrap();
            net.call(owner.as_str(), |d| d.start(1, record(key)));
            net.settle();
            net
        }

        fn dir(&mut self, n: &str) -> &mut Directory {
            self.dirs.get_mut(&id(n)).expect("node")
        }

        fn call(&mut self, n: &str, f: impl FnOnce(&mut Directory) -> Vec<Action>) {
            let actions = f(self.dir(n));
            self.apply(&id(n), actions);
        }

        fn apply(&mut self, node: &NodeId, actions: Vec<Action>) {
            for a in actions {
                self.log.push((node.clone(), a.clone()));
                match a {
                    Action::Spawn(r) => {
                        let state = r.snapshot.clone().unwrap_or_default();
                        self.running.insert((node.clone(), r.key.clone()), state);
                        let more = self
                            .dirs
                            .get_mut(node)
                            .expect("node")
                            .spawned(&r.key, Ok(()));
                        self.apply(node, more);
                    }
                    Action::Stop { key, .. } => {
                        let state = self.running.remove(&(node.clone(), key.clone()));
                        let now = Duration::ZERO;
                        let more = self.dirs.get_mut(node).expect("node").exited(
                            &key,
                            ExitClass::Shutdown,
                            state,
                            now,
                        );
                        self.apply(node, more);
                    }
                    Action::Merge { key, theirs } => {
                        let mut ours = self
                            .running
                            .remove(&(node.clone(), key.clone()))
                            .unwrap_or_default();
                        ours.extend(theirs.snapshot.clone().unwrap_or_default());
                        self.merging.insert((node.clone(), key.clone()), theirs);
                        let more = self
                            .dirs
                            .get_mut(node)
                            .expect("node")
                            .merged(&key, Some(ours));
                        self.apply(node, more);
                    }
                    Action::Send { to, msg } => self.queue.push_back((node.clone(), to, msg)),
                    Action::Reply { .. } | Action::Event(_) => {}
                }
            }
        }

        fn settle(&mut self) {
            let mut budget = 10_000;
            while let Some((from, to, msg)) = self.queue.pop_front() {
                budget -= 1;
                assert!(
                    budget > 0,
                    "no quiescence: {:?}",
                    &self.log[self.log.len() - 20..]
                );
                // A node removed from `dirs` crashed: what is sent to it is lost.
                let Some(d) = self.dirs.get_mut(&to) else {
                    continue;
                };
                let actions = d.receive(&from, msg);
                self.apply(&to, actions);
            }
        }

        /// `n` crashes: its directory and its children are gone.
        fn crash(&mut self, n: &str) {
            self.dirs.remove(&id(n));
            self.running.retain(|(node, _), _| *node != id(n));
        }

        fn replies(&self) -> Vec<(u64, Result<(), StartError>)> {
            self.log
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::Reply { req, result } => Some((*req, result.clone())),
                    _ => None,
                })
                .collect()
        }

        fn runs(&self, key: &str) -> Vec<NodeId> {
            self.running
                .keys()
                .filter(|(_, k)| k == key)
                .map(|(n, _)| n.clone())
                .collect()
        }
    }

    /// A key owned by `owner` and backed up on `backup` in a view of `nodes`.
    fn key_placed(nodes: &[&str], owner: &str, backup: &str) -> String {
        let ring = Ring::from_nodes(RingConfig::default(), nodes.iter().map(|n| id(n))).unwrap();
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| {
                ring.successors(k.as_bytes(), 2)
                    .eq([&id(owner), &id(backup)])
            })
            .unwrap()
    }

    /// A key owned by `owner` in a view of `nodes`.
    fn key_owned_by(nodes: &[&str], owner: &str) -> String {
        let ring = Ring::from_nodes(RingConfig::default(), nodes.iter().map(|n| id(n))).unwrap();
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| ring.node_for(k.as_bytes()) == Some(&id(owner)))
            .unwrap()
    }

    /// Three nodes with quorum 3 running `count` children, each with a state of its own
    /// (snapshot replicated to its backup).
    fn quorum_net(count: usize) -> (Net, Vec<String>) {
        let nodes = ["a", "b", "c"];
        let mut net = Net::with_quorum(&nodes, 8, Some(3));
        let keys: Vec<String> = (0..count).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            let owner = net.dir("a").owner(key).unwrap();
            net.call(owner.as_str(), |d| d.start(i as u64, record(key)));
            net.settle();
            let state = format!("<{key}>").into_bytes();
            net.running
                .insert((owner.clone(), key.clone()), state.clone());
            net.call(owner.as_str(), |d| d.snapshot(key, state));
            net.settle();
        }
        (net, keys)
    }

    /// Every key runs on exactly one node, with its state (a merge may have joined the state
    /// with an older copy of itself, never lost it).
    fn assert_each_runs_once_with_its_state(net: &Net, keys: &[String]) {
        for key in keys {
            let runs = net.runs(key);
            assert_eq!(runs.len(), 1, "{key} runs on {runs:?}");
            let state = &net.running[&(runs[0].clone(), key.clone())];
            let want = format!("<{key}>").into_bytes();
            assert!(
                state.windows(want.len()).any(|w| w == want),
                "{key} on {:?} lost its state: {:?}",
                runs[0],
                String::from_utf8_lossy(state)
            );
        }
    }

    #[test]
    fn a_quorum_partition_that_heals_loses_no_child() {
        let (mut net, keys) = quorum_net(30);
        let all = [id("a"), id("b"), id("c")];
        let on_a = keys.iter().filter(|k| net.runs(k) == vec![id("a")]).count();
        assert!(on_a > 0);
        // `a`'s gossip is cut: it sees only itself (no quorum), the others see each other;
        // directory messages still flow between all three.
        net.call("a", |d| d.set_view([&id("a")]));
        assert!(!net.dir("a").has_quorum());
        let removals = net.log.iter().any(|(n, a)| {
            *n == id("a")
                && matches!(
                    a,
                    Action::Send {
                        msg: DirMsg::Drop { remove: true, .. },
                        ..
                    }
                )
        });
        net.call("b", |d| d.set_view([&id("b"), &id("c")]));
        net.call("c", |d| d.set_view([&id("b"), &id("c")]));
        net.settle();
        assert!(net.dir("a").owned().is_empty());
        for key in &keys {
            let runs = net.runs(key);
            assert!(
                runs.len() == 1 && runs[0] != id("a"),
                "{key} runs on {runs:?}"
            );
        }
        // The heal.
        for n in ["a", "b", "c"] {
            net.call(n, |d| d.set_view(all.iter()));
        }
        net.settle();
        assert_each_runs_once_with_its_state(&net, &keys);
        let stopped = net
            .log
            .iter()
            .any(|(_, a)| matches!(a, Action::Event(ChildEvent::Stopped { .. })));
        assert!(!stopped, "no child was removed");
        assert!(!removals, "a stop for the quorum is not a removal");
    }

    #[test]
    fn a_node_that_alone_loses_its_quorum_runs_its_children_again_when_it_returns() {
        let (mut net, keys) = quorum_net(30);
        let all = [id("a"), id("b"), id("c")];
        let on_a: Vec<String> = keys
            .iter()
            .filter(|k| net.runs(k) == vec![id("a")])
            .cloned()
            .collect();
        assert!(!on_a.is_empty());
        // Only `a` loses the others from its view (one-way gossip loss): `b` and `c` still see
        // it, so they fail nothing over; its messages keep reaching them.
        net.call("a", |d| d.set_view([&id("a")]));
        net.settle();
        for key in &on_a {
            assert!(net.runs(key).is_empty(), "{key} stopped on a");
        }
        net.call("a", |d| d.set_view(all.iter()));
        net.settle();
        assert_each_runs_once_with_its_state(&net, &keys);
        for key in &on_a {
            assert_eq!(
                net.runs(key),
                vec![id("a")],
                "{key} runs on its owner again"
            );
            assert_eq!(
                net.running[&(id("a"), key.clone())],
                format!("<{key}>").into_bytes()
            );
        }
    }

    #[test]
    fn a_crash_during_a_partition_that_leaves_no_majority_loses_no_child() {
        let (mut net, keys) = quorum_net(30);
        let on_a: Vec<String> = keys
            .iter()
            .filter(|k| net.runs(k) == vec![id("a")])
            .cloned()
            .collect();
        assert!(!on_a.is_empty());
        // `b` and `c` are cut off from each other when `a` crashes: no side has a quorum, so
        // nobody fails `a`'s children over. The backups are their only copies.
        net.crash("a");
        net.call("b", |d| d.set_view([&id("b")]));
        net.call("c", |d| d.set_view([&id("c")]));
        net.settle();
        assert!(net.running.is_empty(), "nothing runs without a quorum");
        let healed = [id("b"), id("c")];
        net.call("b", |d| d.set_view(healed.iter()));
        net.call("c", |d| d.set_view(healed.iter()));
        net.settle();
        assert_each_runs_once_with_its_state(&net, &keys);
    }

    #[test]
    fn a_backup_without_quorum_still_takes_its_owners_replications() {
        let all = [id("a"), id("b"), id("c")];
        let mut net = Net::with_quorum(&["a", "b", "c"], 8, Some(3));
        let key = key_placed(&["a", "b", "c"], "a", "b");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        // Only `b` loses the others (one-way gossip loss): `a` keeps running the child and
        // replicating its new state to `b`.
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        net.call("a", |d| d.snapshot(&key, b"<new>".to_vec()));
        net.settle();
        // Held and acknowledged at once: `a` still sees a quorum, and its child's only other
        // copy is `b`'s (no later reconciliation compares versions).
        assert_eq!(net.dir("a").unreplicated(), 0, "b acknowledged");
        net.call("b", |d| d.set_view(all.iter()));
        net.settle();
        let version = net.dir("a").owned()[&key].record.version;
        let held: Vec<u64> = net.dir("b").backups()[&key]
            .iter()
            .map(|c| c.record.version)
            .collect();
        assert_eq!(held, vec![version], "b holds the current record");
        assert_eq!(net.dir("a").unreplicated(), 0);
    }

    #[test]
    fn an_adoption_out_of_hops_at_a_node_without_quorum_runs_when_the_quorum_returns() {
        let all = [id("a"), id("b"), id("c")];
        let mut net = Net::with_quorum(&["a", "b", "c"], 8, Some(3));
        let key = key_owned_by(&["a", "b", "c"], "b");
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        // Passed around between nodes whose views disagree until its hops ran out.
        let mut r = record(&key);
        r.generation = 7;
        r.snapshot = Some(format!("<{key}>").into_bytes());
        let adopt = DirMsg::Adopt {
            record: r,
            hops: MAX_HOPS,
            tag: 1,
            holders: Vec::new(),
            moved: true,
        };
        net.call("b", |d| d.receive(&id("a"), adopt));
        net.settle();
        assert!(net.runs(&key).is_empty(), "nothing runs without a quorum");
        net.call("b", |d| d.set_view(all.iter()));
        net.settle();
        assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
    }

    /// `a` sees `b`, but `b`'s membership never reported `a` up (a partition hides it, say): the
    /// runtime still takes `a`'s connection, so `b` backs up the child `a` starts. Returns the
    /// network and the child's key.
    fn a_stranger_backed_up_by_b() -> (Net, String) {
        let mut net = Net::new(&["a", "b", "c"], 8);
        let key = key_placed(&["a", "b"], "a", "b");
        net.call("a", |d| d.set_view([&id("a"), &id("b")]));
        net.call("b", |d| d.set_view([&id("b"), &id("c")]));
        net.call("c", |d| d.set_view([&id("b"), &id("c")]));
        net.settle();
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        assert!(net.dir("b").backups().contains_key(&key));
        (net, key)
    }

    #[test]
    fn a_copy_from_a_node_never_in_the_view_is_failed_over_when_the_view_changes_without_it() {
        let (mut net, key) = a_stranger_backed_up_by_b();
        // `b` is cut off from everyone: nothing will ever name `a` to it, and the copy it holds
        // must not stay a copy that nobody on its side runs.
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        assert!(net.runs(&key).contains(&id("b")), "{key} runs on b");
    }

    #[test]
    fn a_copy_from_a_stranger_is_failed_over_when_its_connection_closes() {
        let (mut net, key) = a_stranger_backed_up_by_b();
        // `b`'s view does not change: only the closed connection says `a` is out of reach.
        net.call("b", |d| d.disconnected(&id("a")));
        net.settle();
        let runs = net.runs(&key);
        assert!(runs.iter().any(|n| *n != id("a")), "{key} runs on {runs:?}");
    }

    #[test]
    fn a_hand_off_to_a_node_without_quorum_is_kept_and_leaves_no_copy_behind() {
        let owners = [id("b"), id("c")];
        let mut net = Net::with_quorum(&["a", "b", "c"], 8, Some(3));
        let key = key_placed(&["a", "b", "c"], "a", "b");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        // `b` sees only itself (no quorum) when `a` leaves and hands the child to it.
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        net.call("a", |d| d.leave());
        net.call("c", |d| d.set_members(owners.iter(), [&id("a")]));
        net.settle();
        let bounced = net.log.iter().any(|(n, a)| {
            *n == id("b")
                && matches!(a, Action::Send { to, msg: DirMsg::Adopt { .. } } if *to == id("a"))
        });
        assert!(!bounced, "the hand-off is kept, not sent back");
        assert!(net.runs(&key).is_empty(), "nothing runs without a quorum");
        assert!(!net.dir("a").handed_off(), "a keeps its copy meanwhile");
        // `b` has its quorum again: it runs the child, and `a` may go.
        net.call("b", |d| d.set_members(owners.iter(), [&id("a")]));
        net.settle();
        assert_eq!(net.runs(&key), vec![id("b")]);
        assert!(
            net.dir("a").handed_off(),
            "a still holds {:?}",
            net.dir("a").backups()
        );
    }

    /// `b` and `c` with quorum 3 (2 nodes), `b` cut off (no quorum); a key `b` owns.
    fn b_without_quorum() -> (Net, String) {
        let mut net = Net::with_quorum(&["b", "c"], 8, Some(3));
        let key = key_owned_by(&["b", "c"], "b");
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        assert!(!net.dir("b").has_quorum());
        (net, key)
    }

    fn adopt_msg(r: Record, hops: u8, tag: u64) -> DirMsg {
        DirMsg::Adopt {
            record: r,
            hops,
            tag,
            holders: Vec::new(),
            moved: true,
        }
    }

    #[test]
    fn an_adoption_at_a_node_without_quorum_survives_its_sender_crashing() {
        let (mut net, key) = b_without_quorum();
        // `a` (gone by now: what is sent to it is lost) handed the child to `b` with its latest
        // state, which no other node holds.
        let mut r = record(&key);
        r.generation = 7;
        r.snapshot = Some(format!("<{key}>").into_bytes());
        net.call("b", |d| d.receive(&id("a"), adopt_msg(r, 0, 1)));
        net.settle();
        assert!(net.runs(&key).is_empty(), "nothing runs without a quorum");
        net.call("b", |d| d.set_view([&id("b"), &id("c")]));
        net.settle();
        assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
    }

    #[test]
    fn an_adoption_of_a_removed_child_at_a_node_without_quorum_is_dropped_by_its_sender() {
        let (mut net, key) = b_without_quorum();
        let removed = DirMsg::Buried {
            removed: vec![(key.clone(), 7)],
        };
        net.call("b", |d| d.receive(&id("c"), removed));
        net.settle();
        let mut r = record(&key);
        r.generation = 7;
        let actions = net.dir("b").receive(&id("a"), adopt_msg(r, MAX_HOPS, 1));
        let dropped = actions.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    to,
                    msg: DirMsg::Drop { tag: Some(1), remove: true, generation: 7, .. },
                } if *to == id("a")
            )
        });
        assert!(dropped, "the sender is told to drop its copy: {actions:?}");
        assert!(net.dir("b").backups().is_empty());
    }

    #[test]
    fn a_hand_off_sent_again_to_a_node_that_took_it_and_lost_its_quorum_is_not_sent_back() {
        let mut net = Net::with_quorum(&["b", "c"], 8, Some(3));
        let key = key_owned_by(&["b", "c"], "b");
        let mut r = record(&key);
        r.generation = 7;
        r.version = 3;
        r.snapshot = Some(format!("<{key}>").into_bytes());
        net.call("b", |d| d.receive(&id("a"), adopt_msg(r.clone(), 0, 1)));
        net.settle();
        assert_eq!(net.runs(&key), vec![id("b")]);
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        // `a` sends its (older) hand-off again after a reconnection.
        let mut old = r;
        old.version = 1;
        old.snapshot = Some(b"<old>".to_vec());
        let actions = net.dir("b").receive(&id("a"), adopt_msg(old, 0, 1));
        let back = actions.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    msg: DirMsg::Adopt { .. },
                    ..
                }
            )
        });
        assert!(!back, "not sent back: {actions:?}");
        net.apply(&id("b"), actions);
        net.call("b", |d| d.set_view([&id("b"), &id("c")]));
        net.settle();
        assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
    }

    #[test]
    fn an_orphan_backup_is_not_replaced_by_a_new_lineage_of_its_owner() {
        let nodes = ["a", "b", "c"];
        let mut net = Net::with_quorum(&nodes, 8, Some(3));
        let key = key_placed(&nodes, "a", "b");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        let state = format!("<{key}>").into_bytes();
        net.running.insert((id("a"), key.clone()), state.clone());
        net.call("a", |d| d.snapshot(&key, state));
        net.settle();
        // `b` loses its quorum (its copy from `a` is an orphan, kept), then `a` crashes; its new
        // incarnation runs the child from an older copy and replicates that to `b`.
        net.call("b", |d| d.set_view([&id("b")]));
        net.settle();
        net.crash("a");
        let generation = net.dir("b").backups()[&key][0].record.generation;
        let mut stale = record(&key);
        stale.generation = generation;
        stale.snapshot = Some(b"<old>".to_vec());
        let replicate = DirMsg::Replicate {
            record: stale,
            epoch: Epoch(1, 1),
        };
        net.call("b", |d| d.receive(&id("a"), replicate));
        net.settle();
        // The new incarnation goes too; `b` and `c` heal.
        let owners = [id("b"), id("c")];
        net.call("b", |d| d.set_view(owners.iter()));
        net.call("c", |d| d.set_view(owners.iter()));
        net.settle();
        assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
    }

    #[test]
    fn a_transient_child_done_before_its_backup_acknowledged_was_started() {
        let nodes = ["a", "b"];
        let mut net = Net::new(&nodes, 8);
        let key = key_owned_by(&nodes, "a");
        let mut r = record(&key);
        r.policy = RestartPolicy::Transient;
        // Spawned at once; the replication to `b` is still on its way.
        net.call("a", |d| d.start(1, r));
        assert!(net.replies().is_empty());
        net.running.remove(&(id("a"), key.clone()));
        let actions = net
            .dir("a")
            .exited(&key, ExitClass::Normal, None, Duration::ZERO);
        net.apply(&id("a"), actions);
        assert_eq!(net.replies(), vec![(1, Ok(()))]);
        net.settle();
        assert_eq!(net.replies(), vec![(1, Ok(()))]);
        assert!(net.runs(&key).is_empty());
        assert!(net.dir("b").backups().is_empty());
    }

    #[test]
    fn terminate_is_answered_only_after_the_backup_dropped_its_copy() {
        let mut net = Net::new(&["a", "b"], 8);
        let key = key_owned_by(&["a", "b"], "a");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        assert_eq!(net.replies(), vec![(1, Ok(()))]);
        assert!(net.dir("b").backups().contains_key(&key));
        net.call("a", |d| d.terminate(2, &key));
        // Stopped, but the backup has not confirmed the drop yet.
        assert_eq!(net.replies().len(), 1);
        net.settle();
        assert_eq!(net.replies(), vec![(1, Ok(())), (2, Ok(()))]);
        assert!(net.dir("b").backups().is_empty());
    }

    #[test]
    fn a_removal_stops_the_copy_a_backup_failed_over_meanwhile() {
        let key = key_owned_by(&["a", "b"], "a");
        let mut net = Net::running(&["a", "b"], &key);
        // `b` falsely suspects `a` and fails the child over from its backup...
        net.call("b", |d| d.set_view([&id("b")]));
        assert_eq!(net.runs(&key).len(), 2);
        // ...while `a` terminates it: the drop of the backup reaches the copy made from it.
        net.call("a", |d| d.terminate(2, &key));
        net.settle();
        assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
        assert_eq!(net.replies(), vec![(1, Ok(())), (2, Ok(()))]);
        let stopped_on_b = net.log.iter().any(|(n, a)| {
            *n == id("b") && matches!(a, Action::Event(ChildEvent::Stopped { key: k }) if *k == key)
        });
        assert!(stopped_on_b);
    }

    #[test]
    fn a_removal_chases_a_copy_handed_on_from_a_failed_over_backup() {
        let nodes = ["a", "b", "c"];
        let key = key_placed(&nodes, "a", "b");
        let mut net = Net::running(&nodes, &key);
        // `b` and `c` lose `a` while `b` leaves: `b` hands its backup on to `c`, the owner in
        // their view, which runs it; `a` terminates its copy meanwhile.
        net.call("b", |d| d.set_members([&id("c")], [&id("b")]));
        net.call("c", |d| d.set_members([&id("c")], [&id("b")]));
        net.call("a", |d| d.terminate(2, &key));
        net.settle();
        assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
        assert!(net.replies().contains(&(2, Ok(()))));
        let chased = net.log.iter().any(|(_, a)| {
            matches!(
                a,
                Action::Send {
                    msg: DirMsg::Chase { .. },
                    ..
                }
            )
        });
        assert!(chased, "the removal followed the hand-off");
    }

    #[test]
    fn a_late_copy_of_a_removed_child_is_refused() {
        let nodes = ["a", "b", "c"];
        let key = key_owned_by(&nodes, "a");
        let mut net = Net::running(&nodes, &key);
        let owned = net.dir("a").owned()[&key].clone();
        assert_ne!(owned.record.generation, 0, "the owner draws a generation");
        let backup = owned.backup.clone().expect("a backup");
        net.call("a", |d| d.terminate(2, &key));
        net.settle();
        assert!(net.dir(backup.as_str()).backups().is_empty());
        // A replication sent before the removal and overtaken by it is refused...
        net.queue.push_back((
            id("a"),
            backup.clone(),
            DirMsg::Replicate {
                record: owned.record.clone(),
                epoch: owned.epoch,
            },
        ));
        net.settle();
        assert!(net.dir(backup.as_str()).backups().is_empty());
        // ...and so is a late hand-off of it.
        net.queue.push_back((
            id("c"),
            backup.clone(),
            DirMsg::Adopt {
                record: owned.record.clone(),
                hops: 0,
                tag: 77,
                holders: Vec::new(),
                moved: false,
            },
        ));
        net.settle();
        assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
        // A new start of the key is a new child, not refused.
        net.call("a", |d| d.start(3, record(&key)));
        net.settle();
        assert_eq!(net.runs(&key), vec![id("a")]);
        assert!(net.dir(backup.as_str()).backups().contains_key(&key));
    }

    #[test]
    fn a_removal_on_one_side_of_a_partition_wins_after_the_heal() {
        let nodes = ["a", "b", "c"];
        let key = key_placed(&nodes, "a", "b");
        let mut net = Net::running(&nodes, &key);
        // `b` is cut off: it fails the child over from its backup and terminates it there; the
        // drop to `a` is lost with the partition.
        net.call("b", |d| d.set_view([&id("b")]));
        net.call("b", |d| d.terminate(2, &key));
        net.queue.clear();
        assert!(net.replies().contains(&(2, Ok(()))));
        assert_eq!(net.runs(&key), vec![id("a")]);
        // The heal: `b` comes back into the views and reconciles.
        for n in nodes {
            net.call(n, |d| {
                d.set_view(nodes.iter().map(|n| id(n)).collect::<Vec<_>>().iter())
            });
        }
        net.settle();
        assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
    }

    #[test]
    fn peers_that_meet_again_exchange_the_removals_they_know() {
        let nodes = ["a", "b", "c"];
        let key = key_placed(&nodes, "a", "b");
        let mut net = Net::running(&nodes, &key);
        // `b` is cut off, fails the child over and terminates it; `a` and `c` see `b` down.
        net.call("b", |d| d.set_view([&id("b")]));
        net.call("b", |d| d.terminate(2, &key));
        net.call("a", |d| d.set_view([&id("a"), &id("c")]));
        net.call("c", |d| d.set_view([&id("a"), &id("c")]));
        net.queue.clear();
        net.settle();
        assert_eq!(net.runs(&key), vec![id("a")]);
        // The heal, with `b` leaving: nothing of the child is replicated to `b` any more, so only
        // the reconciliation tells `a` about the removal.
        for n in nodes {
            net.call(n, |d| d.set_members([&id("a"), &id("c")], [&id("b")]));
        }
        net.settle();
        assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
        let buried = net.log.iter().any(|(_, a)| {
            matches!(
                a,
                Action::Send {
                    msg: DirMsg::Buried { .. },
                    ..
                }
            )
        });
        assert!(buried);
    }

    #[test]
    fn a_hand_off_sent_again_after_its_copy_moved_on_is_not_taken_twice() {
        let nodes = ["a", "b", "c"];
        let mut net = Net::new(&nodes, 8);
        let key = key_owned_by(&nodes, "c");
        let mut r = record(&key);
        r.generation = 7;
        r.snapshot = Some(b"s".to_vec());
        let adopt = DirMsg::Adopt {
            record: r,
            hops: 0,
            tag: 5,
            holders: Vec::new(),
            moved: true,
        };
        // `b` takes the hand-off and passes it on to the owner, `c`, which confirms.
        net.queue.push_back((id("a"), id("b"), adopt.clone()));
        net.settle();
        assert_eq!(net.runs(&key), vec![id("c")]);
        // The same hand-off again (a reconnection of `a` resent it): confirmed, not taken again.
        let before = net.log.len();
        net.queue.push_back((id("a"), id("b"), adopt));
        net.settle();
        assert_eq!(net.runs(&key), vec![id("c")]);
        let taken_again = net.log[before..].iter().any(|(_, a)| {
            matches!(
                a,
                Action::Send {
                    msg: DirMsg::Adopt { .. },
                    ..
                } | Action::Merge { .. }
                    | Action::Event(ChildEvent::Conflict { .. })
            )
        });
        assert!(!taken_again, "{:?}", &net.log[before..]);
        let confirmed = net.log[before..].iter().any(|(n, a)| {
            *n == id("b")
                && matches!(a, Action::Send { to, msg: DirMsg::Drop { tag: Some(5), .. } } if *to == id("a"))
        });
        assert!(confirmed);
    }

    #[test]
    fn a_leaving_node_hands_its_children_off_with_their_state() {
        let nodes = ["a", "b", "c"];
        let mut net = Net::new(&nodes, 8);
        let key = key_owned_by(&nodes, "a");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        net.running
            .insert((id("a"), key.clone()), b"state".to_vec());
        // The membership announces the leave; `a` starts handing off.
        for n in ["b", "c"] {
            net.call(n, |d| d.set_members([&id("b"), &id("c")], [&id("a")]));
        }
        net.call("a", |d| d.leave());
        // Start requests at a leaving node are refused with the new owner.
        let other = key_owned_by(&nodes, "a");
        net.call("a", |d| d.start(3, record(&other)));
        assert!(matches!(
            net.replies().last(),
            Some((3, Err(StartError::NotOwner { owner: Some(_) })))
        ));
        assert!(!net.dir("a").handed_off());
        net.settle();
        let runs = net.runs(&key);
        assert_eq!(runs.len(), 1);
        assert_ne!(runs[0], id("a"));
        assert_eq!(
            net.running[&(runs[0].clone(), key.clone())],
            b"state".to_vec()
        );
        // It runs nothing and holds nothing any more: it may exit.
        assert!(net.dir("a").handed_off(), "{:?}", net.dir("a").backups());
        // The new owner reports an adoption, not a failover.
        let events: Vec<&ChildEvent> = net
            .log
            .iter()
            .filter_map(|(n, a)| match a {
                Action::Event(e) if *n == runs[0] => Some(e),
                _ => None,
            })
            .collect();
        assert!(
            events.contains(&&ChildEvent::Adopted {
                key: key.clone(),
                from: id("a"),
            }),
            "{events:?}"
        );
        assert!(!events
            .iter()
            .any(|e| matches!(e, ChildEvent::FailedOver { .. })));
    }

    #[test]
    fn the_backups_of_a_leaving_node_are_not_failed_over() {
        let nodes = ["a", "b"];
        let mut net = Net::new(&nodes, 8);
        let key = key_owned_by(&nodes, "a");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        net.call("b", |d| d.set_members([&id("b")], [&id("a")]));
        assert!(net.runs(&key) == vec![id("a")]);
        // Down: now it fails over.
        net.call("b", |d| d.set_members([&id("b")], []));
        assert_eq!(net.runs(&key).len(), 2);
        assert!(net.runs(&key).contains(&id("b")));
    }

    #[test]
    fn moves_are_throttled() {
        let mut net = Net::new(&["a"], 1);
        let keys: Vec<String> = (0..3)
            .map(|i| {
                (0..)
                    .map(|j| format!("m{i}-{j}"))
                    .find(|k| {
                        let ring =
                            Ring::from_nodes(RingConfig::default(), [id("a"), id("b")]).unwrap();
                        ring.node_for(k.as_bytes()) == Some(&id("b"))
                    })
                    .unwrap()
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            net.call("a", |d| d.start(i as u64, record(k)));
        }
        // `b` joins: all three keys move to it, one at a time. Hold the stops to count them.
        let actions = net.dir("a").set_view([&id("a"), &id("b")]);
        let stops = actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Stop {
                        reason: StopReason::Move,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(stops, 1);
        assert_eq!(net.dir("a").moves(), (1, 2));
    }

    #[test]
    fn an_adopted_copy_of_a_running_child_is_merged_into_it() {
        let nodes = ["a", "b"];
        let mut net = Net::new(&nodes, 8);
        let key = key_owned_by(&nodes, "a");
        net.call("a", |d| d.start(1, record(&key)));
        net.settle();
        net.running.insert((id("a"), key.clone()), b"ours".to_vec());
        let mut theirs = record(&key);
        theirs.snapshot = Some(b"+theirs".to_vec());
        theirs.version = 7;
        let actions = net.dir("a").receive(
            &id("b"),
            DirMsg::Adopt {
                record: theirs,
                hops: 0,
                tag: 1,
                holders: Vec::new(),
                moved: false,
            },
        );
        assert!(actions.iter().any(|a| matches!(a, Action::Merge { .. })));
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Event(ChildEvent::Conflict {
                here_lost: false,
                ..
            })
        )));
        net.apply(&id("a"), actions);
        net.settle();
        assert_eq!(net.runs(&key), vec![id("a")]);
        assert_eq!(
            net.running[&(id("a"), key.clone())],
            b"ours+theirs".to_vec()
        );
        let o = &net.dir("a").owned()[&key];
        assert!(o.record.version > 7);
        assert_eq!(o.phase, Phase::Running);
    }
}
