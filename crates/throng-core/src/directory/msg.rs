//! The wire contract between the directories of one supervisor on different nodes: [`DirMsg`]
//! and the types it carries. Everything here is serialized by the runtime and must stay
//! compatible across the versions of a rolling upgrade; the behaviour lives in the sibling files.

use serde::{Deserialize, Serialize};

use super::{send, Action, Backup};
use crate::{NodeId, RestartPolicy};

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
    /// removed children it knows of (key and [`Record::generation`], at most [`MAX_TOMBSTONES`](super::MAX_TOMBSTONES)).
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
        /// How many nodes passed it on already (bounded by [`MAX_HOPS`](super::MAX_HOPS)).
        hops: u8,
        /// Names the copy the sender keeps until the receiver confirms (a [`DirMsg::Drop`] with
        /// this tag).
        tag: u64,
        /// Other nodes that still hold a copy (the child's former backups, earlier senders),
        /// dropped once the receiver's copy is safe; a removal waits for them too.
        holders: Vec<Holder>,
        /// A graceful move (the key changed owner, or the sender leaves): the receiver reports
        /// [`ChildEvent::Adopted`](super::ChildEvent::Adopted). Otherwise a failover passed on ([`ChildEvent::FailedOver`](super::ChildEvent::FailedOver)).
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
    /// The node its copy is held for ([`Backup::from`](super::Backup::from)).
    pub origin: NodeId,
    /// `None`: a backup; `Some(tag)`: a hand-off copy (see [`DirMsg::Adopt`]).
    pub tag: Option<u64>,
    /// For a backup: the lineage of the copy it backs up.
    pub epoch: Epoch,
}

impl Holder {
    /// The holder of the backup on `node` of `origin`'s copy of lineage `epoch`.
    pub(super) fn backup(node: NodeId, origin: &NodeId, epoch: Epoch) -> Self {
        Holder {
            node,
            origin: origin.clone(),
            tag: None,
            epoch,
        }
    }

    /// A drop of this copy; `removed`: the generation of the removed child, for a removal.
    pub(super) fn drop_msg(&self, key: &str, removed: Option<u64>) -> Action {
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
    pub(super) fn names(&self, b: &Backup) -> bool {
        b.from == self.origin
            && b.handoff == self.tag
            && (self.tag.is_some() || b.epoch <= self.epoch)
    }
}
