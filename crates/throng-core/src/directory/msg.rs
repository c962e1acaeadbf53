//! The wire contract between the directories of one supervisor on different nodes: [`DirMsg`]
//! and the types it carries. Everything here is serialized by the runtime and must stay
//! compatible across the versions of a rolling upgrade; the behaviour lives in the sibling files.

use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;
use xxhash_rust::xxh3::xxh3_64;

use super::{send, Action, Backup};
use crate::{NodeId, RestartPolicy};

/// Names one child among the children that ever had its key ([`Record::generation`]): drawn by
/// the owner when the child is started, and kept across restarts, failovers and moves. A removal
/// buries it, so a late copy of a removed child is refused, not run again.
///
/// Never 0: on the wire it is the plain integer (the encoding of a `u64`), and decoding a 0 is an
/// error. Where a message may carry no generation it is an `Option<Generation>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(NonZeroU64);

impl Generation {
    /// The smallest generation, 1.
    pub const MIN: Generation = Generation(NonZeroU64::MIN);

    /// The generation numbered `n`, or `None` for 0 (which names no generation).
    pub const fn new(n: u64) -> Option<Self> {
        match NonZeroU64::new(n) {
            Some(n) => Some(Generation(n)),
            None => None,
        }
    }

    /// Its number (never 0).
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The version of a child's [`Record`] ([`Record::version`]): [`Version::INITIAL`] when the child
/// is started, and bumped at every new snapshot (and merge), so it orders the copies of one
/// child (of one [`Generation`]). On the wire it is the plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// The version of a record before its first snapshot.
    pub const INITIAL: Version = Version(0);

    /// The version numbered `n`.
    pub const fn new(n: u64) -> Self {
        Version(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Names one hand-off of a child ([`DirMsg::Adopt`]) among those of its sender: the sender keeps
/// its copy, tagged so, until the receiver confirms it with a [`DirMsg::Drop`] of the same tag,
/// and a receiver recognizes a hand-off sent again by its sender and tag. Drawn from a counter
/// of the sender that a new incarnation does not reuse.
///
/// Never 0: on the wire it is the plain integer (the encoding of a `u64`), and decoding a 0 is an
/// error. Where a copy or a message may carry no tag it is an `Option<Tag>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tag(NonZeroU64);

impl Tag {
    /// The tag numbered `n`, or `None` for 0 (which names no hand-off).
    pub const fn new(n: u64) -> Option<Self> {
        match NonZeroU64::new(n) {
            Some(n) => Some(Tag(n)),
            None => None,
        }
    }

    /// Its number (never 0).
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a start request carries ([`Directory::start`](super::Directory::start)): the child's
/// spec, without the state that only its owner gives it. The owner makes the child's [`Record`]
/// from it ([`Record::new`]): it draws the [`Generation`], and the record starts without a
/// snapshot at [`Version::INITIAL`].
///
/// On the wire (a start request sent to the owner) it is encoded as the first four fields of a
/// [`Record`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSpec {
    /// The child's key, unique within its supervisor.
    pub key: String,
    /// The registered actor type that runs it.
    pub actor_type: String,
    /// The start arguments, encoded by the runtime.
    pub args: Vec<u8>,
    /// Restart policy.
    pub policy: RestartPolicy,
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
    pub version: Version,
    /// Names this child among the children that ever had its key: drawn by the owner when the
    /// child is started ([`Record::new`]) and kept across restarts, failovers and moves. A
    /// removal buries it, so a late copy of a removed child is refused, not run again.
    pub generation: Generation,
    /// Generations of the key merged into this child (a copy of another child of the key met
    /// this one and was merged into it), the newest last, at most [`MAX_ABSORBED`]. A removal
    /// of this child buries them too: a stale copy of one, left on a node that was down when
    /// they met, does not bring the key back.
    #[serde(deserialize_with = "at_most::<_, _, MAX_ABSORBED>")]
    pub absorbed: ThinVec<Generation>,
    /// The copy that took [`Record::snapshot`] at [`Record::version`]: `None` before the first
    /// snapshot (and in records kept by a build that did not record it). Two copies of a child
    /// that ran from the same state — a copy failed over while its owner was down, and the
    /// owner's own record recovered after its restart — can each take a snapshot and reach the
    /// same version with the same bytes; only the writer tells that these are two states (two
    /// updates to merge), not one kept twice.
    pub written_by: Option<Writer>,
    /// The newest version of this record's history that a backup acknowledged holding (or that
    /// needed no backup: no other node to hold one) — the newest state a reply that waits for
    /// the backup ([`Action::Replicated`]) may have told a caller about. A backup's copy is
    /// acknowledged as it is stored, so its `acked` is its version, and a copy failed over from
    /// it starts there; an owner's versions past it were never acknowledged. When two copies of
    /// a child diverged (a failover while the owner was cut off, or the owner's disk after a
    /// restart), the one with the higher `acked` carries acknowledged states the other lacks:
    /// it is the later state ([`Record::is_later_than`]), whatever the versions.
    pub acked: Version,
}

/// Decodes a list of at most `N` elements: a longer one (which no build writes) is an error,
/// not a record that holds more than its bound.
fn at_most<'de, D, T, const N: usize>(d: D) -> Result<ThinVec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::{Error, SeqAccess, Visitor};
    struct Bounded<T, const N: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
        type Value = ThinVec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {N} elements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ThinVec<T>, A::Error> {
            let mut list = ThinVec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
            while let Some(x) = seq.next_element()? {
                if list.len() == N {
                    return Err(A::Error::invalid_length(N + 1, &self));
                }
                list.push(x);
            }
            Ok(list)
        }
    }
    d.deserialize_seq(Bounded::<T, N>(std::marker::PhantomData))
}

/// Which copy of a child wrote a [`Record`]'s version ([`Record::written_by`]): a fingerprint
/// of the node that ran the copy and of the copy's lineage ([`Epoch`]) there, XXH3-64 of the
/// node's name, then the epoch's two numbers as little-endian `u64`s (0 is mapped to 1). A lineage
/// writes each version once, so `(generation, version, written_by)` names one state of a child;
/// two lineages share a fingerprint with probability 2⁻⁶⁴. Eight bytes, not the node's name:
/// every record held (an owner's and its backup's) carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Writer(NonZeroU64);

impl Writer {
    /// The writer of the copy of lineage `epoch` on `node`.
    pub fn of(node: &NodeId, epoch: Epoch) -> Self {
        let name = node.as_str().as_bytes();
        let mut buf = Vec::with_capacity(name.len() + 16);
        buf.extend_from_slice(name);
        buf.extend_from_slice(&epoch.0.to_le_bytes());
        buf.extend_from_slice(&epoch.1.to_le_bytes());
        Writer(NonZeroU64::new(xxh3_64(&buf)).unwrap_or(NonZeroU64::MIN))
    }

    /// The fingerprint.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

/// How many absorbed generations a [`Record`] remembers.
pub const MAX_ABSORBED: usize = 8;

impl Record {
    /// The record of a child started from `spec` as `generation`: no snapshot yet, at
    /// [`Version::INITIAL`].
    pub fn new(spec: StartSpec, generation: Generation) -> Self {
        let StartSpec {
            key,
            actor_type,
            args,
            policy,
        } = spec;
        Record {
            key,
            actor_type,
            args,
            policy,
            snapshot: None,
            version: Version::INITIAL,
            generation,
            absorbed: ThinVec::new(),
            written_by: None,
            acked: Version::INITIAL,
        }
    }

    /// Whether this record is a later state of the same child than `other`: the same
    /// generation, and a higher version of the same copy's writing ([`Record::written_by`]: one
    /// history, of which `other` is a prefix); of two histories, the one with more of it
    /// acknowledged ([`Record::acked`]) or, as much, the higher version. A copy failed over from a backup that took acknowledged calls thus beats
    /// the versions its old owner wrote past what the backup held (a restarted owner's disk, a
    /// cut-off owner's unacknowledged calls), however many they are; and a copy that a cut-off
    /// minority failed over, which no backup acknowledged, beats none of the majority's.
    pub fn is_later_than(&self, other: &Record) -> bool {
        if self.generation != other.generation {
            return false;
        }
        if self.written_by.is_some() && self.written_by == other.written_by {
            return self.version > other.version;
        }
        (self.acked, self.version) > (other.acked, other.version)
    }

    /// This record's state is now `version`, written by the copy `writer`.
    pub fn write(&mut self, version: Version, writer: Writer) {
        self.version = version;
        self.written_by = Some(writer);
    }

    /// A backup holds this record's state up to `version` (or it needs none).
    pub fn acknowledged(&mut self, version: Version) {
        self.acked = self.acked.max(version.min(self.version));
    }

    /// Whether `other` is the same state of the same child: same generation, version, writer
    /// and snapshot. Two copies of one state meeting (a restarted node's record of the state a
    /// failed-over copy still runs from) have nothing to merge.
    pub fn same_state(&self, other: &Record) -> bool {
        self.generation == other.generation
            && self.version == other.version
            && self.written_by == other.written_by
            && self.snapshot == other.snapshot
    }

    /// `theirs`, a copy of the same key, is merged into this child: its generation (and those
    /// it absorbed) are absorbed here, unless it is this child's own.
    pub fn absorb(&mut self, theirs: &Record) {
        let incoming = theirs
            .absorbed
            .iter()
            .chain(std::iter::once(&theirs.generation));
        for g in incoming {
            if *g != self.generation && !self.absorbed.contains(g) {
                self.absorbed.push(*g);
            }
        }
        let over = self.absorbed.len().saturating_sub(MAX_ABSORBED);
        self.absorbed.drain(..over);
    }
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
        version: Version,
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
        tag: Option<Tag>,
        /// For a backup: drop it only if its lineage is this one or older.
        epoch: Epoch,
        /// `Some(generation)`: the child is removed (terminated, or removed by its policy), and
        /// this is its [`Record::generation`], which the receiver buries. If the receiver already
        /// made a copy of its own from this one (failed it over, or handed it on), that copy is
        /// removed too — it is stopped for good before the answer, or the answer names where it
        /// was handed on so the remover chases it there ([`DirMsg::Chase`]). `None`: a plain
        /// drop.
        remove: Option<Generation>,
    },
    /// Answer to [`DirMsg::Drop`]: the receiver holds no such copy of `key` any more.
    Dropped {
        /// The key.
        key: String,
        /// As in the [`DirMsg::Drop`] answered.
        origin: NodeId,
        /// As in the [`DirMsg::Drop`] answered.
        tag: Option<Tag>,
        /// As in the [`DirMsg::Drop`] answered.
        epoch: Epoch,
        /// Whether the [`DirMsg::Drop`] answered was a removal (its `remove` was `Some`).
        remove: bool,
        /// For a removal: the copy had been handed on, with [`DirMsg::Adopt`] `tag`, to this
        /// node, not confirmed yet: the remover chases it there.
        next: Option<(NodeId, Tag)>,
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
        tag: Tag,
        /// The removed child's [`Record::generation`], which the receiver buries.
        generation: Generation,
    },
    /// The child of `key` and `generation` was removed (the sender learned it from the removal):
    /// the receiver, which replicated a copy of it, stops that copy for good. Sent when a copy
    /// survived on the other side of a partition or of a false suspicion: the removal wins.
    Removed {
        /// The key.
        key: String,
        /// The removed child's [`Record::generation`].
        generation: Generation,
    },
    /// Reconciliation, from a node to a peer it (re)connected to or that (re)joined its view: the
    /// removed children it knows of (key and [`Record::generation`], at most [`MAX_TOMBSTONES`](super::MAX_TOMBSTONES)).
    /// The receiver buries them too and stops a copy of one that survived on its side of a
    /// partition: a removal wins after a heal. Also sent by a remover when the removal ends, to
    /// the key's backup node (the tombstones of the child and of those merged into it are kept
    /// on two nodes, as its record was), and by a leaving node to the owners and backups of the
    /// keys whose tombstones it keeps.
    Buried {
        /// The removed children.
        removed: Vec<(String, Generation)>,
    },
    /// Answer to [`DirMsg::Chase`].
    Chased {
        /// The key.
        key: String,
        /// As in the [`DirMsg::Chase`] answered.
        from: NodeId,
        /// As in the [`DirMsg::Chase`] answered.
        tag: Tag,
        /// The copy had been handed on to this node with this tag: chase it there.
        next: Option<(NodeId, Tag)>,
    },
    /// Run this child here: the sender moved it, or held its backup when its owner left.
    Adopt {
        /// The child.
        record: Record,
        /// How many nodes passed it on already (bounded by [`MAX_HOPS`](super::MAX_HOPS)).
        hops: u8,
        /// Names the copy the sender keeps until the receiver confirms (a [`DirMsg::Drop`] with
        /// this tag).
        tag: Tag,
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
    /// From a node that took back its durable entries ([`Directory::recover`](super::Directory::recover)): every
    /// replication of a child it recovered was sent before this. The receiver stops waiting for
    /// replications of the copies it recovered for the sender's keys ([`Backup::awaiting`]):
    /// those are orphans, handed to their owner and merged there. Sent with `ask` to each peer
    /// in view when it recovers (and to each peer that joins its view or reconnects later);
    /// a node that recovered answers an `ask` without it, so a node that recovered last still
    /// hears from every peer.
    Recovered {
        /// Answer with `Recovered` once recovered.
        ask: bool,
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
    pub tag: Option<Tag>,
    /// For a backup: the lineage of the copy it backs up.
    pub epoch: Epoch,
}

impl Holder {
    /// The sender `from` of a hand-off with `tag` to `me`: it keeps its copy (held for `me`)
    /// until `me` confirms.
    pub(super) fn hand_off_sender(from: &NodeId, me: &NodeId, tag: Tag) -> Self {
        Holder {
            node: from.clone(),
            origin: me.clone(),
            tag: Some(tag),
            epoch: Epoch::default(),
        }
    }

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
    pub(super) fn drop_msg(&self, key: &str, removed: Option<Generation>) -> Action {
        send(
            &self.node,
            DirMsg::Drop {
                key: key.to_owned(),
                origin: self.origin.clone(),
                tag: self.tag,
                epoch: self.epoch,
                remove: removed,
            },
        )
    }

    /// Whether `b` is the copy this holder names.
    pub(super) fn names(&self, b: &Backup) -> bool {
        // A copy recovered from disk and awaiting its owner is no copy the owner made: none of
        // its drops names it (a removal buries its generation, which discards it).
        !b.awaiting
            && b.from == self.origin
            && b.handoff == self.tag
            && (self.tag.is_some() || b.epoch <= self.epoch)
    }
}
