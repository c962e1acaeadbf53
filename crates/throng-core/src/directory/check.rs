//! The invariants of one directory's state that hold after every input, not only once views
//! converged: [`Directory::check`], run after every public input in debug builds (a broken one
//! is a bug in the directory, never in its input) and available to the simulator after every step.

use super::{Action, Directory, Phase, Tag, MAX_ADOPTIONS, MAX_TOMBSTONES};
use crate::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// Up to this many entries, a debug build checks a directory's invariants after every input;
/// above, every `entries / CHECK_EVERY_INPUT_UP_TO` inputs (see `Directory::checked`).
const CHECK_EVERY_INPUT_UP_TO: usize = 256;

/// An invariant of a [`Directory`] that does not hold: a bug in the directory. Names the
/// invariant and the key (or node) where it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// A child is filed under a key other than its record's.
    #[error("child filed under {key:?} has the record of {record_key:?}")]
    OwnedKey {
        /// The key it is filed under.
        key: String,
        /// Its record's key.
        record_key: String,
    },
    /// A copy is filed under a key other than its record's.
    #[error("copy filed under {key:?} has the record of {record_key:?}")]
    CopyKey {
        /// The key it is filed under.
        key: String,
        /// Its record's key.
        record_key: String,
    },
    /// A key is filed with an empty list of copies.
    #[error("empty list of copies for {key:?}")]
    NoCopies {
        /// The key.
        key: String,
    },
    /// Two copies of a key are held for the same node and are of the same kind (two backups, or
    /// two hand-off copies with one tag): one should have replaced the other.
    #[error("two copies of {key:?} held for {from} of the same kind")]
    DuplicateCopy {
        /// The key.
        key: String,
        /// The node both are held for.
        from: NodeId,
    },
    /// A copy recovered from disk awaits a node that is not another node in view (or this node
    /// has no quorum, or the copy is an orphan or a hand-off copy): it would never be released.
    #[error("a recovered copy of {key:?} awaits {from}, which will not answer")]
    StuckRecoveredCopy {
        /// The key.
        key: String,
        /// The node it awaits.
        from: NodeId,
    },
    /// An index the membership paths visit instead of every entry disagrees with what it
    /// indexes (children by backup, copies by origin, keys that may hold an orphan copy,
    /// children lodged here).
    #[error("the index {index} disagrees with the directory (at {key:?})")]
    Index {
        /// Which index.
        index: &'static str,
        /// A key where it disagrees, if known.
        key: String,
    },
    /// A child's backup is this node itself.
    #[error("child {key:?} is backed up on its own node")]
    BackupIsSelf {
        /// The key.
        key: String,
    },
    /// A child without a backup waits for a backup's acknowledgement.
    #[error("child {key:?} has no backup but waits for its acknowledgement")]
    UnackedWithoutBackup {
        /// The key.
        key: String,
    },
    /// A child in [`Phase::Merging`] has no record to merge.
    #[error("child {key:?} is merging without the other copy's record")]
    MergingWithoutRecord {
        /// The key.
        key: String,
    },
    /// The set of moving children and the children in [`Phase::Moving`] differ at this key.
    #[error("child {key:?}: in the moving set {listed}, in phase Moving {phase_moving}")]
    MovingMismatch {
        /// The key.
        key: String,
        /// Whether it is in the set of moving children.
        listed: bool,
        /// Whether it is in [`Phase::Moving`].
        phase_moving: bool,
    },
    /// More children are moving than [`super::DirConfig::max_moves`] allows.
    #[error("{moving} children moving, at most {max} allowed")]
    TooManyMoves {
        /// How many move.
        moving: usize,
        /// The bound.
        max: usize,
    },
    /// The quorum flag disagrees with the view's size.
    #[error("quorum lost is {lost} but the view of {seen} nodes says otherwise")]
    QuorumFlag {
        /// The flag.
        lost: bool,
        /// The view's size.
        seen: usize,
    },
    /// Without a quorum, a child is neither stopping for good nor stopping for the quorum.
    #[error("child {key:?} is in phase {phase:?} without a quorum")]
    RunsWithoutQuorum {
        /// The key.
        key: String,
        /// Its phase.
        phase: Phase,
    },
    /// Without a quorum, children wait to move.
    #[error("{queued} children queued to move without a quorum")]
    QueuedWithoutQuorum {
        /// How many.
        queued: usize,
    },
    /// A key both runs here and is being removed here.
    #[error("child {key:?} runs while its removal is in progress")]
    OwnedAndRemoving {
        /// The key.
        key: String,
    },
    /// A removal waits for nothing but is not complete.
    #[error("the removal of {key:?} waits for nothing but is not complete")]
    RemovalIdle {
        /// The key.
        key: String,
    },
    /// A drop, a removal or a chase waits for a node out of the view (it would wait for ever).
    #[error("{key:?} waits for {node}, which is out of the view")]
    WaitsOutsideView {
        /// The key.
        key: String,
        /// The node.
        node: NodeId,
    },
    /// A key is filed with an empty list of drops waited for.
    #[error("empty list of drops waited for at {key:?}")]
    NoDrops {
        /// The key.
        key: String,
    },
    /// Answers are due to removers at a key that is neither stopping for good here nor being
    /// removed: they would never be sent.
    #[error("answers due to removers of {key:?}, which is neither stopping nor being removed")]
    NotifyStranded {
        /// The key.
        key: String,
    },
    /// A hand-off held for this node itself carries a tag, a move or a source, or a hand-off to
    /// another node has no tag.
    #[error("hand-off of {key:?} to {to} with tag {tag:?}")]
    HandOffTag {
        /// The key.
        key: String,
        /// The receiver.
        to: NodeId,
        /// The tag (`None`: none).
        tag: Option<Tag>,
    },
    /// A node is both in the view and among the departed nodes.
    #[error("{node} is in the view and departed")]
    DepartedInView {
        /// The node.
        node: NodeId,
    },
    /// The view does not contain this node, the ring or the leaving nodes; or this node is among
    /// the leaving nodes of others, or on the ring while it leaves; or a leaving node is on the
    /// ring.
    #[error("inconsistent view at {node}")]
    View {
        /// The node where it fails.
        node: NodeId,
    },
    /// A bounded memory holds more than its bound, or its two indexes disagree.
    #[error("memory of {what} holds {len} entries, bound {cap}, or is inconsistent")]
    Memory {
        /// Which memory: "adoptions" or "tombstones".
        what: &'static str,
        /// Entries held.
        len: usize,
        /// The bound.
        cap: usize,
    },
}

impl Directory {
    /// Checks the invariants of this directory's state, which hold after every input whatever the
    /// input was (a message from a peer included). `Err` names the first one broken: a bug in the
    /// directory. Costs O(children + copies + removals in progress).
    pub fn check(&self) -> Result<(), Broken> {
        self.check_children()?;
        self.check_copies()?;
        self.check_quorum()?;
        self.check_removals()?;
        self.check_view()?;
        self.check_memories()?;
        self.check_indexes()
    }

    /// The indexes the membership paths visit instead of every entry: the children by backup
    /// and the copies by origin are exact; the keys that may hold an orphan copy and the
    /// children lodged here are supersets of what they stand for.
    fn check_indexes(&self) -> Result<(), Broken> {
        let broken = |index: &'static str, key: &str| {
            Err(Broken::Index {
                index,
                key: key.to_owned(),
            })
        };
        let filed = |index: &BTreeMap<NodeId, BTreeSet<String>>, node: &NodeId, key: &str| {
            index.get(node).is_some_and(|keys| keys.contains(key))
        };
        let mut backed_up = 0;
        for (key, o) in &self.owned {
            if let Some(b) = &o.backup {
                backed_up += 1;
                if !filed(&self.by_backup, b, key) {
                    return broken("by backup", key);
                }
            }
        }
        if backed_up != self.by_backup.values().map(BTreeSet::len).sum::<usize>() {
            return broken("by backup", "");
        }
        let mut origins = 0;
        for (key, list) in &self.backups {
            for (i, b) in list.iter().enumerate() {
                if list[..i].iter().any(|c| c.from == b.from) {
                    continue;
                }
                origins += 1;
                if !filed(&self.by_origin, &b.from, key) {
                    return broken("by origin", key);
                }
            }
        }
        if origins != self.by_origin.values().map(BTreeSet::len).sum::<usize>() {
            return broken("by origin", "");
        }
        for (key, list) in &self.backups {
            let orphan = list
                .iter()
                .any(|b| b.orphan || self.departed.contains(&b.from));
            if orphan && !self.orphan_keys.contains(key) {
                return broken("orphan keys", key);
            }
        }
        for (key, list) in &self.dropping {
            for (i, h) in list.iter().enumerate() {
                if list[..i].iter().any(|w| w.node == h.node) {
                    continue;
                }
                if !filed(&self.waits, &h.node, key) {
                    return broken("waits", key);
                }
            }
        }
        for (key, r) in &self.removing {
            let nodes = r
                .waiting_on
                .iter()
                .map(|h| &h.node)
                .chain(r.chasing.iter().map(|c| &c.node));
            for node in nodes {
                if !filed(&self.waits, node, key) {
                    return broken("waits", key);
                }
            }
        }
        for (node, keys) in &self.waits {
            for key in keys {
                if !self.waits_on(key, node) {
                    return broken("waits", key);
                }
            }
        }
        for key in &self.lodged {
            if !self.owned.contains_key(key) {
                return broken("lodged", key);
            }
        }
        for key in self.owned.keys() {
            let elsewhere = self.owner(key).is_some_and(|n| n != self.config.me);
            if elsewhere && !self.lodged.contains(key) {
                return broken("lodged", key);
            }
        }
        Ok(())
    }

    /// Returns `out`, the actions of an input, after checking the invariants in debug builds (see
    /// [`Directory::check`]): after every input while the directory holds at most
    /// [`CHECK_EVERY_INPUT_UP_TO`] entries (children, keys of copies, removals, remembered
    /// hand-offs and tombstones), and every
    /// `entries / CHECK_EVERY_INPUT_UP_TO` inputs above that, so a debug build of a directory with
    /// many children stays linear in its inputs (a check costs O(entries)).
    pub(super) fn checked(&mut self, out: Vec<Action>) -> Vec<Action> {
        if !cfg!(debug_assertions) {
            return out;
        }
        self.unchecked += 1;
        // Everything a check visits, the bounded memories included.
        let entries = self.owned.len()
            + self.backups.len()
            + self.removing.len()
            + self.adoptions.len()
            + self.tombstones.len();
        if self.unchecked.saturating_mul(CHECK_EVERY_INPUT_UP_TO) < entries {
            return out;
        }
        self.unchecked = 0;
        if let Err(broken) = self.check() {
            panic!(
                "directory of {} broke an invariant: {broken}",
                self.config.me
            );
        }
        out
    }

    /// The children run here: keys, backups, merges, moves.
    fn check_children(&self) -> Result<(), Broken> {
        let me = &self.config.me;
        for (key, o) in &self.owned {
            let key = key.clone();
            if o.record.key != key {
                let record_key = o.record.key.clone();
                return Err(Broken::OwnedKey { key, record_key });
            }
            if o.backup.as_ref() == Some(me) {
                return Err(Broken::BackupIsSelf { key });
            }
            if o.backup.is_none() && !o.acked {
                return Err(Broken::UnackedWithoutBackup { key });
            }
            if o.phase == Phase::Merging && o.merging.is_none() {
                return Err(Broken::MergingWithoutRecord { key });
            }
            let listed = self.moving.contains(&key);
            let phase_moving = o.phase == Phase::Moving;
            if listed != phase_moving {
                return Err(Broken::MovingMismatch {
                    key,
                    listed,
                    phase_moving,
                });
            }
        }
        if let Some(key) = self.moving.iter().find(|k| !self.owned.contains_key(*k)) {
            return Err(Broken::MovingMismatch {
                key: key.clone(),
                listed: true,
                phase_moving: false,
            });
        }
        let max = self.config.max_moves.max(1);
        if self.moving.len() > max {
            let moving = self.moving.len();
            return Err(Broken::TooManyMoves { moving, max });
        }
        Ok(())
    }

    /// The copies held here: keys, no empty lists, one copy per origin and kind.
    fn check_copies(&self) -> Result<(), Broken> {
        for (key, list) in &self.backups {
            if list.is_empty() {
                return Err(Broken::NoCopies { key: key.clone() });
            }
            for (i, b) in list.iter().enumerate() {
                if b.record.key != *key {
                    let record_key = b.record.key.clone();
                    let key = key.clone();
                    return Err(Broken::CopyKey { key, record_key });
                }
                let me = &self.config.me;
                let releasable = !b.orphan
                    && b.handoff.is_none()
                    && b.from != *me
                    && self.view.contains(&b.from)
                    && !self.quorum_lost;
                if b.awaiting && !releasable {
                    let (key, from) = (key.clone(), b.from.clone());
                    return Err(Broken::StuckRecoveredCopy { key, from });
                }
                let same = |c: &&super::Backup| c.from == b.from && c.handoff == b.handoff;
                if list[i + 1..].iter().any(|c| same(&c)) {
                    let (key, from) = (key.clone(), b.from.clone());
                    return Err(Broken::DuplicateCopy { key, from });
                }
            }
        }
        let me = &self.config.me;
        for (key, h) in &self.handoffs {
            let to_me = h.to == *me;
            let held_only = h.tag.is_none() && !h.moved && h.source.is_none();
            if (to_me && !held_only) || (!to_me && h.tag.is_none()) {
                let (key, to, tag) = (key.clone(), h.to.clone(), h.tag);
                return Err(Broken::HandOffTag { key, to, tag });
            }
        }
        Ok(())
    }

    /// The quorum flag follows the view; without a quorum nothing runs or waits to move.
    fn check_quorum(&self) -> Result<(), Broken> {
        if self.quorum_lost == self.has_quorum() {
            let (lost, seen) = (self.quorum_lost, self.view.len());
            return Err(Broken::QuorumFlag { lost, seen });
        }
        if !self.quorum_lost {
            return Ok(());
        }
        let stopping = |p: Phase| matches!(p, Phase::Stopping | Phase::Abandoning);
        if let Some((key, o)) = self.owned.iter().find(|(_, o)| !stopping(o.phase)) {
            let (key, phase) = (key.clone(), o.phase);
            return Err(Broken::RunsWithoutQuorum { key, phase });
        }
        if !self.move_queue.is_empty() {
            let queued = self.move_queue.len();
            return Err(Broken::QueuedWithoutQuorum { queued });
        }
        Ok(())
    }

    /// Removals and drops in progress: each waits for something, and only for nodes in view.
    fn check_removals(&self) -> Result<(), Broken> {
        let outside = |key: &String, node: &NodeId| {
            (!self.view.contains(node)).then(|| Broken::WaitsOutsideView {
                key: key.clone(),
                node: node.clone(),
            })
        };
        for (key, r) in &self.removing {
            if self.owned.contains_key(key) {
                return Err(Broken::OwnedAndRemoving { key: key.clone() });
            }
            if r.waiting_on.is_empty() && r.chasing.is_empty() {
                return Err(Broken::RemovalIdle { key: key.clone() });
            }
            let nodes = r.waiting_on.iter().map(|h| &h.node);
            if let Some(e) = nodes
                .chain(r.chasing.iter().map(|c| &c.node))
                .find_map(|n| outside(key, n))
            {
                return Err(e);
            }
        }
        for (key, list) in &self.dropping {
            if list.is_empty() {
                return Err(Broken::NoDrops { key: key.clone() });
            }
            if let Some(e) = list.iter().find_map(|h| outside(key, &h.node)) {
                return Err(e);
            }
        }
        for key in self.notify.keys() {
            let stopping = self
                .owned
                .get(key)
                .is_some_and(|o| o.phase == Phase::Stopping);
            if !stopping && !self.removing.contains_key(key) {
                return Err(Broken::NotifyStranded { key: key.clone() });
            }
        }
        Ok(())
    }

    /// The view holds this node, the ring and the leaving nodes; none of them departed.
    fn check_view(&self) -> Result<(), Broken> {
        let me = &self.config.me;
        let broken = |node: &NodeId| Err(Broken::View { node: node.clone() });
        if !self.view.contains(me) || self.leaving.contains(me) {
            return broken(me);
        }
        if self.me_leaving && self.ring.contains(me) {
            return broken(me);
        }
        if let Some(n) = self.ring.nodes().iter().find(|n| !self.view.contains(*n)) {
            return broken(n);
        }
        let misplaced = |n: &&NodeId| !self.view.contains(*n) || self.ring.contains(n);
        if let Some(n) = self.leaving.iter().find(misplaced) {
            return broken(n);
        }
        if let Some(node) = self.departed.intersection(&self.view).next() {
            return Err(Broken::DepartedInView { node: node.clone() });
        }
        Ok(())
    }

    /// The bounded memories are within their bounds.
    fn check_memories(&self) -> Result<(), Broken> {
        let adoptions = (self.adoptions.len(), self.adoptions.is_consistent());
        let tombstones = (self.tombstones.len(), self.tombstones.is_consistent());
        for (what, (len, ok), cap) in [
            ("adoptions", adoptions, MAX_ADOPTIONS),
            ("tombstones", tombstones, MAX_TOMBSTONES),
        ] {
            if !ok || len > cap {
                return Err(Broken::Memory { what, len, cap });
            }
        }
        Ok(())
    }
}
