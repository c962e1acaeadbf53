//! The cluster-wide name registry as a sans-io state machine.
//!
//! # Model
//!
//! Every node is the **only writer of its own entries**: unique names (`name -> Entry`) and
//! duplicate-key group memberships (`group -> {value -> meta}`). A local write changes the local
//! [`NameTable`] at once (a process sees its own registration immediately), bumps the node's sequence
//! number and yields a [`Delta`] that the runtime broadcasts to every peer. Peers apply deltas of each
//! origin in sequence order; a gap (a missed sequence number) is answered with
//! [`Outgoing::SyncRequest`], after which the origin's [`FullState`] replaces what the peer knew of it.
//! Lookups are local and never wait for the network.
//!
//! Deltas of an older [`Incarnation`] of a node are ignored; a newer incarnation replaces the old
//! one's entries. [`NameTable::node_down`] drops everything a node owned.
//!
//! # Conflict rule
//!
//! Two nodes may register the same unique name concurrently. Each registration carries a **stamp**: a
//! hybrid logical clock value in milliseconds, `max(now, largest stamp this node has seen)`, so a
//! registration made after observing another is never stamped earlier. The claim with the smallest
//! `(stamp, NodeId)` wins — the earliest registration, ties broken by the node name's byte order (a
//! node appears with one incarnation at a time, so the pair is unique). The key depends only on the
//! entries, never on arrival order, so every node that holds the same entries resolves the same winner.
//! [`NameTable::lookup`] only ever returns the winner. When the losing node learns of the winning
//! claim, it removes its own entry (broadcasting the unregistration) and reports
//! [`NameEvent::Conflict`] so the runtime can notify or stop the losing process.
//!
//! Applying a delta costs O(ops) hash-map operations; nothing rescans the table.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::node::{Incarnation, Member, NodeId};

/// Hash maps with a fixed hasher: iteration order depends only on the operations applied, never on a
/// per-process random seed, so the simulator replays identically.
type Map<K, V> = HashMap<K, V, Xxh3DefaultBuilder>;

/// Limits on what the local node may write. Deltas from peers are not checked against them: each
/// peer enforced its own limits on its own entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesConfig {
    /// Most unique names this node may hold at once.
    pub max_names: usize,
    /// Most group memberships this node may hold at once (over all groups).
    pub max_memberships: usize,
    /// Longest accepted name or group name, in bytes.
    pub max_name_len: usize,
    /// Largest accepted value (the encoded address), in bytes.
    pub max_value_len: usize,
    /// Largest accepted metadata, in bytes.
    pub max_meta_len: usize,
}

impl Default for NamesConfig {
    fn default() -> Self {
        Self {
            max_names: 1_000_000,
            max_memberships: 1_000_000,
            max_name_len: 1024,
            max_value_len: 1024,
            max_meta_len: 64 * 1024,
        }
    }
}

/// Why a local write was refused. The table is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name (or group name) is the empty string.
    #[error("name is empty")]
    EmptyName,
    /// The name (or group name) exceeds [`NamesConfig::max_name_len`].
    #[error("name is {len} bytes long, the limit is {max}")]
    NameTooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value exceeds [`NamesConfig::max_value_len`].
    #[error("value is {len} bytes long, the limit is {max}")]
    ValueTooLarge {
        /// Length of the rejected value, in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The metadata exceeds [`NamesConfig::max_meta_len`].
    #[error("metadata is {len} bytes long, the limit is {max}")]
    MetaTooLarge {
        /// Length of the rejected metadata, in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The name is already registered, in this node's view, by `owner` (possibly this node).
    #[error("name {name:?} is already registered on node {owner}")]
    Taken {
        /// The contested name.
        name: String,
        /// The node whose claim currently wins.
        owner: NodeId,
    },
    /// This node holds no registration under that name.
    #[error("name {name:?} is not registered on this node")]
    NotRegistered {
        /// The name asked for.
        name: String,
    },
    /// This node has no member with that value in that group.
    #[error("no member with that value in group {group:?} on this node")]
    NotMember {
        /// The group asked for.
        group: String,
    },
    /// This node already holds [`NamesConfig::max_names`] names.
    #[error("this node already holds the maximum of {max} names")]
    TooManyNames {
        /// The configured limit.
        max: usize,
    },
    /// This node already holds [`NamesConfig::max_memberships`] group memberships.
    #[error("this node already holds the maximum of {max} group memberships")]
    TooManyMemberships {
        /// The configured limit.
        max: usize,
    },
}

/// One unique-name registration, as stored by its owner and replicated to every peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Opaque value: the runtime stores an encoded actor address here.
    pub value: Vec<u8>,
    /// Opaque user metadata (encoded by the runtime).
    pub meta: Vec<u8>,
    /// The owner's sequence number of the last write to this entry (registration or metadata update).
    pub seq: u64,
    /// Hybrid-clock stamp of the registration, in milliseconds; decides conflicts (see module docs).
    /// Metadata updates keep it.
    pub stamp: u64,
}

/// One member of a duplicate-key group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// Opaque value identifying the member (an encoded address); unique per node and group.
    pub value: Vec<u8>,
    /// Opaque user metadata.
    pub meta: Vec<u8>,
}

/// One write by an origin node. Sequence numbers are implied by the position in a [`Delta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The origin registered `name`.
    Register {
        /// The name.
        name: String,
        /// Opaque value.
        value: Vec<u8>,
        /// Opaque metadata.
        meta: Vec<u8>,
        /// Hybrid-clock stamp of the registration.
        stamp: u64,
    },
    /// The origin dropped `name`.
    Unregister {
        /// The name.
        name: String,
    },
    /// The origin replaced the metadata of `name`.
    UpdateMeta {
        /// The name.
        name: String,
        /// New metadata.
        meta: Vec<u8>,
    },
    /// The origin added (or updated the metadata of) a member of `group`.
    Join {
        /// The group.
        group: String,
        /// The member.
        member: GroupMember,
    },
    /// The origin removed the member with `value` from `group`.
    Leave {
        /// The group.
        group: String,
        /// The member's value.
        value: Vec<u8>,
    },
}

/// A run of consecutive writes of one origin: `ops[i]` has sequence number `first_seq + i`.
///
/// Local writes each yield a one-op delta; the runtime may [`append`](Delta::append) them into one
/// batch per flush.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Sequence number of `ops[0]` (sequence numbers start at 1 in every incarnation).
    pub first_seq: u64,
    /// The writes, in order.
    pub ops: Vec<Op>,
}

impl Delta {
    /// Appends `next` if it continues this run (or this delta is empty); otherwise gives it back.
    pub fn append(&mut self, next: Delta) -> Result<(), Delta> {
        if self.ops.is_empty() {
            *self = next;
            return Ok(());
        }
        if next.ops.is_empty() {
            return Ok(());
        }
        if Some(next.first_seq) == self.last_seq().and_then(|s| s.checked_add(1)) {
            self.ops.extend(next.ops);
            Ok(())
        } else {
            Err(next)
        }
    }

    /// Sequence number of the last op, or `None` if empty (or out of range).
    pub fn last_seq(&self) -> Option<u64> {
        let len = u64::try_from(self.ops.len()).ok()?.checked_sub(1)?;
        self.first_seq.checked_add(len)
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Everything one node owns, for a peer to replace its copy with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullState {
    /// The owner's last sequence number covered by this state; deltas continue at `seq + 1`.
    pub seq: u64,
    /// Unique names.
    pub names: Vec<(String, Entry)>,
    /// Group memberships.
    pub groups: Vec<(String, Vec<GroupMember>)>,
}

/// Something the local node must be told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameEvent {
    /// A local registration lost a conflict and was removed (its unregistration is in the
    /// accompanying [`Outgoing::Broadcast`]). `loser` is always the local node.
    Conflict {
        /// The contested name.
        name: String,
        /// The node whose claim won.
        winner: NodeId,
        /// The local node.
        loser: NodeId,
        /// The removed local entry (its value tells the runtime which process lost).
        entry: Entry,
    },
}

/// What the runtime must do after applying remote input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Send this delta of local writes to every peer.
    Broadcast(Delta),
    /// Ask `to` for its [`FullState`] (answer with [`NameTable::full_state`]).
    SyncRequest {
        /// The node whose deltas had a gap.
        to: NodeId,
    },
    /// Tell the local application.
    Event(NameEvent),
}

/// What the table knows of one incarnation of one node.
#[derive(Debug)]
struct Owner {
    incarnation: Incarnation,
    /// Last sequence number applied (for the local node: last written).
    seq: u64,
    /// Highest sequence number known to exist (from a gapped delta or [`NameTable::observe_seq`]);
    /// above `seq` means the table waits for a full state.
    want: u64,
    names: Map<String, Entry>,
    groups: Map<String, Map<Vec<u8>, Vec<u8>>>,
    memberships: usize,
}

impl Owner {
    fn new(incarnation: Incarnation) -> Self {
        Self {
            incarnation,
            seq: 0,
            want: 0,
            names: Map::default(),
            groups: Map::default(),
            memberships: 0,
        }
    }
}

/// The local replica of the cluster-wide name registry. See the [module docs](self).
#[derive(Debug)]
pub struct NameTable {
    me: Member,
    config: NamesConfig,
    /// Hybrid clock: the largest of `now` and every stamp observed.
    clock: u64,
    owners: BTreeMap<NodeId, Owner>,
    /// Claims per name, sorted by `(stamp, node)`: the first one wins.
    claims: Map<String, Vec<(u64, NodeId)>>,
    /// Which nodes have members in each group.
    groups: Map<String, BTreeMap<NodeId, ()>>,
    /// Incarnations reported down; their late deltas are ignored until `node_up`.
    down: BTreeMap<NodeId, Incarnation>,
}

impl NameTable {
    /// An empty table for the local node `me`.
    pub fn new(me: Member, config: NamesConfig) -> Self {
        let mut owners = BTreeMap::new();
        owners.insert(me.id.clone(), Owner::new(me.incarnation));
        Self {
            me,
            config,
            clock: 0,
            owners,
            claims: Map::default(),
            groups: Map::default(),
            down: BTreeMap::new(),
        }
    }

    /// The local node.
    pub fn local(&self) -> &Member {
        &self.me
    }

    /// The limits in force.
    pub fn config(&self) -> &NamesConfig {
        &self.config
    }

    // ---- local writes ----

    /// Registers `name` for the local node at time `now` (milliseconds, caller's clock).
    ///
    /// Fails if any node's claim on `name` is visible here, or a limit is exceeded.
    pub fn register(
        &mut self,
        name: &str,
        value: Vec<u8>,
        meta: Vec<u8>,
        now: u64,
    ) -> Result<Delta, NameError> {
        self.check_name(name)?;
        self.check_value(&value)?;
        self.check_meta(&meta)?;
        if let Some((_, owner)) = self.claims.get(name).and_then(|c| c.first()) {
            return Err(NameError::Taken {
                name: name.to_owned(),
                owner: owner.clone(),
            });
        }
        if self
            .own()
            .is_some_and(|o| o.names.len() >= self.config.max_names)
        {
            return Err(NameError::TooManyNames {
                max: self.config.max_names,
            });
        }
        self.clock = self.clock.max(now);
        Ok(self.write(Op::Register {
            name: name.to_owned(),
            value,
            meta,
            stamp: self.clock,
        }))
    }

    /// Drops the local registration of `name`.
    pub fn unregister(&mut self, name: &str) -> Result<Delta, NameError> {
        if !self.own().is_some_and(|o| o.names.contains_key(name)) {
            return Err(NameError::NotRegistered {
                name: name.to_owned(),
            });
        }
        Ok(self.write(Op::Unregister {
            name: name.to_owned(),
        }))
    }

    /// Replaces the metadata of the local registration of `name` (the conflict stamp is kept).
    pub fn update_meta(&mut self, name: &str, meta: Vec<u8>) -> Result<Delta, NameError> {
        self.check_meta(&meta)?;
        if !self.own().is_some_and(|o| o.names.contains_key(name)) {
            return Err(NameError::NotRegistered {
                name: name.to_owned(),
            });
        }
        Ok(self.write(Op::UpdateMeta {
            name: name.to_owned(),
            meta,
        }))
    }

    /// Adds a local member `value` to `group`, or replaces its metadata if it is already one.
    pub fn join_group(
        &mut self,
        group: &str,
        value: Vec<u8>,
        meta: Vec<u8>,
    ) -> Result<Delta, NameError> {
        self.check_name(group)?;
        self.check_value(&value)?;
        self.check_meta(&meta)?;
        let (present, held) = self.own().map_or((false, 0), |o| {
            let present = o.groups.get(group).is_some_and(|m| m.contains_key(&value));
            (present, o.memberships)
        });
        if !present && held >= self.config.max_memberships {
            return Err(NameError::TooManyMemberships {
                max: self.config.max_memberships,
            });
        }
        Ok(self.write(Op::Join {
            group: group.to_owned(),
            member: GroupMember { value, meta },
        }))
    }

    /// Removes the local member `value` from `group`.
    pub fn leave_group(&mut self, group: &str, value: &[u8]) -> Result<Delta, NameError> {
        let member = self
            .own()
            .and_then(|o| o.groups.get(group))
            .is_some_and(|m| m.contains_key(value));
        if !member {
            return Err(NameError::NotMember {
                group: group.to_owned(),
            });
        }
        Ok(self.write(Op::Leave {
            group: group.to_owned(),
            value: value.to_vec(),
        }))
    }

    // ---- remote input ----

    /// Applies a delta written by `from`. Already applied ops are skipped; a delta beyond a gap is
    /// dropped and answered with one [`Outgoing::SyncRequest`] (until the full state arrives, retry with
    /// [`observe_seq`](Self::observe_seq)). Deltas of older incarnations, of incarnations reported down,
    /// and of the local node itself are ignored.
    pub fn apply(&mut self, from: &Member, delta: Delta) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let Some(last) = delta.last_seq() else {
            return out;
        };
        let Some(owner) = self.admit(from) else {
            return out;
        };
        if last <= owner.seq {
            return out;
        }
        if delta.first_seq > owner.seq + 1 {
            if owner.want <= owner.seq {
                out.push(Outgoing::SyncRequest {
                    to: from.id.clone(),
                });
            }
            owner.want = owner.want.max(last);
            return out;
        }
        // Skip the ops already applied; both values are within `delta.ops.len()`.
        let skip = usize::try_from(owner.seq + 1 - delta.first_seq).unwrap_or(usize::MAX);
        owner.seq = last;
        let mut local = Delta::default();
        for (i, op) in delta.ops.into_iter().enumerate().skip(skip) {
            let seq = delta.first_seq.saturating_add(i as u64);
            if let Some(name) = self.apply_op(&from.id, seq, op) {
                self.resolve(&name, &mut local, &mut out);
            }
        }
        if !local.is_empty() {
            out.insert(0, Outgoing::Broadcast(local));
        }
        out
    }

    /// Replaces everything known of `from` with `state`. Ignored when it is older than what was
    /// already applied of the same incarnation, or from an older or down incarnation.
    pub fn apply_full(&mut self, from: &Member, state: FullState) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let Some(owner) = self.admit(from) else {
            return out;
        };
        if state.seq < owner.seq {
            return out;
        }
        let want = owner.want;
        self.drop_owner(&from.id);
        let mut owner = Owner::new(from.incarnation);
        owner.seq = state.seq;
        owner.want = want;
        self.owners.insert(from.id.clone(), owner);
        let mut contested = Vec::new();
        for (name, entry) in state.names {
            let stamp = entry.stamp;
            self.insert_entry(&from.id, name.clone(), entry);
            self.clock = self.clock.max(stamp);
            contested.push(name);
        }
        for (group, members) in state.groups {
            for member in members {
                self.join(&from.id, group.clone(), member);
            }
        }
        let mut local = Delta::default();
        for name in contested {
            self.resolve(&name, &mut local, &mut out);
        }
        if !local.is_empty() {
            out.insert(0, Outgoing::Broadcast(local));
        }
        out
    }

    /// Everything the local node owns, for a peer that asked for a sync or just came up.
    pub fn full_state(&self) -> FullState {
        let Some(own) = self.own() else {
            return FullState::default();
        };
        FullState {
            seq: own.seq,
            names: own
                .names
                .iter()
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            groups: own
                .groups
                .iter()
                .map(|(g, m)| {
                    let members = m
                        .iter()
                        .map(|(value, meta)| GroupMember {
                            value: value.clone(),
                            meta: meta.clone(),
                        })
                        .collect();
                    (g.clone(), members)
                })
                .collect(),
        }
    }

    /// `from` reports that it has written up to `seq` (the runtime piggybacks [`seq`](Self::seq) on
    /// heartbeats or flushes). Returns a sync request if this table is behind: the only way to notice
    /// that the *last* deltas of a node were lost, and the retry for a lost sync.
    pub fn observe_seq(&mut self, from: &Member, seq: u64) -> Option<Outgoing> {
        let owner = self.admit(from)?;
        if seq <= owner.seq {
            return None;
        }
        owner.want = owner.want.max(seq);
        Some(Outgoing::SyncRequest {
            to: from.id.clone(),
        })
    }

    /// The local node's last sequence number.
    pub fn seq(&self) -> u64 {
        self.own().map_or(0, |o| o.seq)
    }

    /// Nodes whose deltas had a gap and whose full state has not arrived yet (to re-request on a timer).
    pub fn awaiting_sync(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.owners
            .iter()
            .filter(|(_, o)| o.want > o.seq)
            .map(|(id, _)| id)
    }

    // ---- membership ----

    /// `member` is up: forgets an older incarnation's entries and returns the local full state to send
    /// to it.
    pub fn node_up(&mut self, member: &Member) -> FullState {
        if member.id != self.me.id {
            if self.down.get(&member.id) <= Some(&member.incarnation) {
                self.down.remove(&member.id);
            }
            let stale = self
                .owners
                .get(&member.id)
                .is_some_and(|o| o.incarnation < member.incarnation);
            if stale {
                self.drop_owner(&member.id);
            }
        }
        self.full_state()
    }

    /// `id` is down: drops all its entries and ignores its late deltas until [`node_up`](Self::node_up).
    /// Returns how many names and memberships were dropped. The local node is never dropped.
    pub fn node_down(&mut self, id: &NodeId) -> usize {
        if *id == self.me.id {
            return 0;
        }
        match self.drop_owner(id) {
            Some(owner) => {
                self.down.insert(id.clone(), owner.incarnation);
                owner.names.len() + owner.memberships
            }
            None => 0,
        }
    }

    // ---- queries ----

    /// The winning registration of `name`, if any.
    pub fn lookup(&self, name: &str) -> Option<(&NodeId, &Entry)> {
        let (_, node) = self.claims.get(name)?.first()?;
        let (node, owner) = self.owners.get_key_value(node)?;
        Some((node, owner.names.get(name)?))
    }

    /// Every registered name with its winning registration, in no particular (but deterministic) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NodeId, &Entry)> + '_ {
        self.claims.iter().filter_map(|(name, claims)| {
            let (node, owner) = self.owners.get_key_value(&claims.first()?.1)?;
            Some((name.as_str(), node, owner.names.get(name)?))
        })
    }

    /// The winning registrations for which `pred(name, node, meta)` holds.
    pub fn select<'a, F>(
        &'a self,
        mut pred: F,
    ) -> impl Iterator<Item = (&'a str, &'a NodeId, &'a Entry)> + 'a
    where
        F: FnMut(&str, &NodeId, &[u8]) -> bool + 'a,
    {
        self.iter()
            .filter(move |(n, node, e)| pred(n, node, &e.meta))
    }

    /// Every registered name.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.claims.keys().map(String::as_str)
    }

    /// Number of distinct registered names.
    pub fn count(&self) -> usize {
        self.claims.len()
    }

    /// Number of names `node` holds (including claims that lose a conflict not yet resolved).
    pub fn len_of(&self, node: &NodeId) -> usize {
        self.owners.get(node).map_or(0, |o| o.names.len())
    }

    /// Every claim on `name`, winner first: more than one only while a conflict is being resolved.
    pub fn claims(&self, name: &str) -> impl Iterator<Item = &NodeId> + '_ {
        self.claims.get(name).into_iter().flatten().map(|(_, n)| n)
    }

    /// The members of `group` on every node, grouped by node in node order.
    pub fn members<'a>(
        &'a self,
        group: &str,
    ) -> impl Iterator<Item = (&'a NodeId, GroupMemberRef<'a>)> + 'a {
        let owners = &self.owners;
        let group = self.groups.get_key_value(group);
        group.into_iter().flat_map(move |(group, nodes)| {
            nodes
                .keys()
                .filter_map(move |node| {
                    let (node, owner) = owners.get_key_value(node)?;
                    let members = owner.groups.get(group)?;
                    Some(
                        members
                            .iter()
                            .map(move |(value, meta)| (node, GroupMemberRef { value, meta })),
                    )
                })
                .flatten()
        })
    }

    /// Every group with at least one member.
    pub fn groups(&self) -> impl Iterator<Item = &str> + '_ {
        self.groups.keys().map(String::as_str)
    }

    /// Nodes the table holds entries (or sequence state) for, the local node included, with their
    /// incarnation.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, Incarnation)> + '_ {
        self.owners.iter().map(|(id, o)| (id, o.incarnation))
    }

    // ---- internals ----

    /// The local node's record: created in `new` and never dropped (`admit`, `node_up` and
    /// `node_down` skip the local node).
    fn own(&self) -> Option<&Owner> {
        self.owners.get(&self.me.id)
    }

    fn check_name(&self, name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::EmptyName);
        }
        if name.len() > self.config.max_name_len {
            return Err(NameError::NameTooLong {
                len: name.len(),
                max: self.config.max_name_len,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), NameError> {
        if value.len() > self.config.max_value_len {
            return Err(NameError::ValueTooLarge {
                len: value.len(),
                max: self.config.max_value_len,
            });
        }
        Ok(())
    }

    fn check_meta(&self, meta: &[u8]) -> Result<(), NameError> {
        if meta.len() > self.config.max_meta_len {
            return Err(NameError::MetaTooLarge {
                len: meta.len(),
                max: self.config.max_meta_len,
            });
        }
        Ok(())
    }

    /// Performs a validated local write: next sequence number, applied locally, returned as a delta.
    fn write(&mut self, op: Op) -> Delta {
        let me = self.me.id.clone();
        let owner = self
            .owners
            .entry(me.clone())
            .or_insert_with(|| Owner::new(self.me.incarnation));
        owner.seq += 1;
        let seq = owner.seq;
        self.apply_op(&me, seq, op.clone());
        Delta {
            first_seq: seq,
            ops: vec![op],
        }
    }

    /// The owner record to apply `from`'s input to, replacing an older incarnation; `None` if the
    /// input must be ignored.
    fn admit(&mut self, from: &Member) -> Option<&mut Owner> {
        if from.id == self.me.id || self.down.get(&from.id) >= Some(&from.incarnation) {
            return None;
        }
        let known = self.owners.get(&from.id).map(|o| o.incarnation);
        match known {
            Some(inc) if inc > from.incarnation => return None,
            Some(inc) if inc < from.incarnation => {
                self.drop_owner(&from.id);
            }
            _ => {}
        }
        Some(
            self.owners
                .entry(from.id.clone())
                .or_insert_with(|| Owner::new(from.incarnation)),
        )
    }

    /// Applies one op of `node` at `seq`; returns the name whose claims changed by a registration.
    fn apply_op(&mut self, node: &NodeId, seq: u64, op: Op) -> Option<String> {
        match op {
            Op::Register {
                name,
                value,
                meta,
                stamp,
            } => {
                self.clock = self.clock.max(stamp);
                let entry = Entry {
                    value,
                    meta,
                    seq,
                    stamp,
                };
                self.insert_entry(node, name.clone(), entry);
                return Some(name);
            }
            Op::Unregister { name } => {
                self.remove_entry(node, &name);
            }
            Op::UpdateMeta { name, meta } => {
                let entry = self.owners.get_mut(node)?.names.get_mut(&name)?;
                entry.meta = meta;
                entry.seq = seq;
            }
            Op::Join { group, member } => self.join(node, group, member),
            Op::Leave { group, value } => self.leave(node, &group, &value),
        }
        None
    }

    fn insert_entry(&mut self, node: &NodeId, name: String, entry: Entry) {
        let Some(owner) = self.owners.get_mut(node) else {
            return;
        };
        let stamp = entry.stamp;
        owner.names.insert(name.clone(), entry);
        let claims = self.claims.entry(name).or_default();
        claims.retain(|(_, n)| n != node);
        let key = (stamp, node.clone());
        let at = claims.partition_point(|c| *c < key);
        claims.insert(at, key);
    }

    fn remove_entry(&mut self, node: &NodeId, name: &str) -> Option<Entry> {
        let entry = self.owners.get_mut(node)?.names.remove(name)?;
        if let Some(claims) = self.claims.get_mut(name) {
            claims.retain(|(_, n)| n != node);
            if claims.is_empty() {
                self.claims.remove(name);
            }
        }
        Some(entry)
    }

    fn join(&mut self, node: &NodeId, group: String, member: GroupMember) {
        let Some(owner) = self.owners.get_mut(node) else {
            return;
        };
        let members = owner.groups.entry(group.clone()).or_default();
        if members.insert(member.value, member.meta).is_none() {
            owner.memberships += 1;
        }
        self.groups
            .entry(group)
            .or_default()
            .insert(node.clone(), ());
    }

    fn leave(&mut self, node: &NodeId, group: &str, value: &[u8]) {
        let Some(owner) = self.owners.get_mut(node) else {
            return;
        };
        let Some(members) = owner.groups.get_mut(group) else {
            return;
        };
        if members.remove(value).is_some() {
            owner.memberships -= 1;
        }
        if members.is_empty() {
            owner.groups.remove(group);
            if let Some(nodes) = self.groups.get_mut(group) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.groups.remove(group);
                }
            }
        }
    }

    /// Removes `node`'s record and every index entry pointing at it. O(entries of that node).
    fn drop_owner(&mut self, node: &NodeId) -> Option<Owner> {
        let owner = self.owners.remove(node)?;
        for name in owner.names.keys() {
            if let Some(claims) = self.claims.get_mut(name) {
                claims.retain(|(_, n)| n != node);
                if claims.is_empty() {
                    self.claims.remove(name);
                }
            }
        }
        for group in owner.groups.keys() {
            if let Some(nodes) = self.groups.get_mut(group) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.groups.remove(group);
                }
            }
        }
        Some(owner)
    }

    /// If the local node claims `name` but another claim wins, drops the local one: the
    /// unregistration goes into `local`, the conflict into `out`.
    fn resolve(&mut self, name: &str, local: &mut Delta, out: &mut Vec<Outgoing>) {
        let Some(claims) = self.claims.get(name) else {
            return;
        };
        let Some((_, winner)) = claims.first() else {
            return;
        };
        if *winner == self.me.id || !claims.iter().any(|(_, n)| *n == self.me.id) {
            return;
        }
        let winner = winner.clone();
        let removed = self.write_removal(name);
        if let Some((delta, entry)) = removed {
            // Consecutive local writes always continue each other.
            let _ = local.append(delta);
            out.push(Outgoing::Event(NameEvent::Conflict {
                name: name.to_owned(),
                winner,
                loser: self.me.id.clone(),
                entry,
            }));
        }
    }

    fn write_removal(&mut self, name: &str) -> Option<(Delta, Entry)> {
        let me = self.me.id.clone();
        let entry = self.remove_entry(&me, name)?;
        let owner = self.owners.get_mut(&me)?;
        owner.seq += 1;
        let delta = Delta {
            first_seq: owner.seq,
            ops: vec![Op::Unregister {
                name: name.to_owned(),
            }],
        };
        Some((delta, entry))
    }
}

/// A borrowed group member, as returned by [`NameTable::members`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMemberRef<'a> {
    /// The member's value.
    pub value: &'a [u8],
    /// The member's metadata.
    pub meta: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, inc: u64) -> Member {
        Member::new(NodeId::new(name).unwrap(), Incarnation(inc))
    }

    fn table(name: &str) -> NameTable {
        NameTable::new(member(name, 1), NamesConfig::default())
    }

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn local_registration_is_visible_at_once() {
        let mut a = table("a");
        let d = a.register("x", b"addr".to_vec(), b"m".to_vec(), 7).unwrap();
        assert_eq!(d.first_seq, 1);
        let (node, entry) = a.lookup("x").unwrap();
        assert_eq!(node.as_str(), "a");
        assert_eq!(entry.value, b"addr");
        assert_eq!(entry.stamp, 7);
        assert_eq!(a.count(), 1);
        assert_eq!(
            a.register("x", vec![], vec![], 8),
            Err(NameError::Taken {
                name: "x".into(),
                owner: id("a")
            })
        );
        a.unregister("x").unwrap();
        assert!(a.lookup("x").is_none());
        assert_eq!(
            a.unregister("x"),
            Err(NameError::NotRegistered { name: "x".into() })
        );
    }

    #[test]
    fn limits_are_typed_errors() {
        let config = NamesConfig {
            max_names: 1,
            max_memberships: 1,
            max_name_len: 3,
            max_value_len: 2,
            max_meta_len: 1,
        };
        let mut a = NameTable::new(member("a", 1), config);
        assert_eq!(a.register("", vec![], vec![], 0), Err(NameError::EmptyName));
        assert_eq!(
            a.register("abcd", vec![], vec![], 0),
            Err(NameError::NameTooLong { len: 4, max: 3 })
        );
        assert_eq!(
            a.register("a", vec![0; 3], vec![], 0),
            Err(NameError::ValueTooLarge { len: 3, max: 2 })
        );
        assert_eq!(
            a.register("a", vec![], vec![0; 2], 0),
            Err(NameError::MetaTooLarge { len: 2, max: 1 })
        );
        a.register("a", vec![], vec![], 0).unwrap();
        assert_eq!(
            a.register("b", vec![], vec![], 0),
            Err(NameError::TooManyNames { max: 1 })
        );
        a.join_group("g", vec![1], vec![]).unwrap();
        // Re-joining only updates the metadata, so it does not count against the limit.
        a.join_group("g", vec![1], vec![9]).unwrap();
        assert_eq!(
            a.join_group("g", vec![2], vec![]),
            Err(NameError::TooManyMemberships { max: 1 })
        );
        assert_eq!(
            a.update_meta("a", vec![0; 2]),
            Err(NameError::MetaTooLarge { len: 2, max: 1 })
        );
        assert_eq!(
            a.leave_group("g", &[2]),
            Err(NameError::NotMember { group: "g".into() })
        );
    }

    #[test]
    fn deltas_replicate_and_duplicates_are_skipped() {
        let (mut a, mut b) = (table("a"), table("b"));
        let mut batch = a.register("x", vec![1], vec![], 1).unwrap();
        batch
            .append(a.register("y", vec![2], vec![], 2).unwrap())
            .unwrap();
        batch.append(a.update_meta("x", vec![5]).unwrap()).unwrap();
        assert_eq!((batch.first_seq, batch.len()), (1, 3));
        let from = a.local().clone();
        assert!(b.apply(&from, batch.clone()).is_empty());
        assert!(b.apply(&from, batch).is_empty());
        assert_eq!(b.count(), 2);
        assert_eq!(b.lookup("x").unwrap().1.meta, vec![5]);
        assert_eq!(b.len_of(&id("a")), 2);
        assert_eq!(b.len_of(&id("b")), 0);
        // Non-contiguous deltas do not merge.
        let mut d = Delta {
            first_seq: 1,
            ops: vec![Op::Unregister { name: "x".into() }],
        };
        let far = Delta {
            first_seq: 5,
            ops: vec![Op::Unregister { name: "y".into() }],
        };
        assert_eq!(d.append(far.clone()), Err(far));
    }

    #[test]
    fn gap_requests_sync_and_full_state_repairs() {
        let (mut a, mut b) = (table("a"), table("b"));
        let from = a.local().clone();
        let _lost = a.register("x", vec![], vec![], 1).unwrap();
        let d2 = a.register("y", vec![], vec![], 2).unwrap();
        assert_eq!(
            b.apply(&from, d2.clone()),
            vec![Outgoing::SyncRequest { to: id("a") }]
        );
        // Only one request per gap.
        assert!(b.apply(&from, d2).is_empty());
        assert_eq!(b.awaiting_sync().collect::<Vec<_>>(), vec![&id("a")]);
        b.apply_full(&from, a.full_state());
        assert_eq!(b.count(), 2);
        assert_eq!(b.awaiting_sync().count(), 0);
        let d3 = a.unregister("x").unwrap();
        assert!(b.apply(&from, d3).is_empty());
        assert_eq!(b.keys().collect::<Vec<_>>(), vec!["y"]);
    }

    #[test]
    fn earlier_registration_wins_and_loser_unregisters() {
        let (mut a, mut b) = (table("a"), table("b"));
        let da = a.register("x", b"A".to_vec(), vec![], 10).unwrap();
        let db = b.register("x", b"B".to_vec(), vec![], 5).unwrap();
        // b receives a's later claim: b keeps the name, nothing to report.
        assert!(b.apply(a.local(), da).is_empty());
        assert_eq!(b.lookup("x").unwrap().0.as_str(), "b");
        // a receives b's earlier claim: a loses, unregisters and reports.
        let out = a.apply(&member("b", 1), db);
        assert_eq!(out.len(), 2);
        let Outgoing::Broadcast(unreg) = out[0].clone() else {
            panic!("expected a broadcast first: {out:?}");
        };
        assert!(matches!(
            &out[1],
            Outgoing::Event(NameEvent::Conflict { name, winner, loser, entry })
                if name == "x" && winner.as_str() == "b" && loser.as_str() == "a" && entry.value == b"A"
        ));
        assert_eq!(a.lookup("x").unwrap().0.as_str(), "b");
        assert_eq!(a.len_of(&id("a")), 0);
        assert_eq!(b.claims("x").count(), 2);
        b.apply(&member("a", 1), unreg);
        assert_eq!(b.claims("x").count(), 1);
    }

    #[test]
    fn equal_stamps_break_ties_by_node_name() {
        let (mut a, mut b) = (table("a"), table("b"));
        let da = a.register("x", vec![], vec![], 3).unwrap();
        let db = b.register("x", vec![], vec![], 3).unwrap();
        assert!(a.apply(&member("b", 1), db).is_empty());
        let out = b.apply(&member("a", 1), da);
        assert!(matches!(
            &out[1],
            Outgoing::Event(NameEvent::Conflict { .. })
        ));
        assert_eq!(a.lookup("x").unwrap().0.as_str(), "a");
        assert_eq!(b.lookup("x").unwrap().0.as_str(), "a");
    }

    #[test]
    fn hybrid_clock_never_stamps_before_an_observed_registration() {
        let (mut a, mut b) = (table("a"), table("b"));
        let d = a.register("x", vec![], vec![], 1_000).unwrap();
        b.apply(a.local(), d);
        b.register("y", vec![], vec![], 10).unwrap();
        assert_eq!(b.lookup("y").unwrap().1.stamp, 1_000);
    }

    #[test]
    fn node_down_drops_entries_and_late_deltas() {
        let (mut a, mut b) = (table("a"), table("b"));
        let from = a.local().clone();
        b.apply(&from, a.register("x", vec![], vec![], 1).unwrap());
        b.apply(&from, a.join_group("g", vec![1], vec![]).unwrap());
        assert_eq!(b.members("g").count(), 1);
        assert_eq!(b.node_down(&id("a")), 2);
        assert_eq!(b.count(), 0);
        assert_eq!(b.members("g").count(), 0);
        assert_eq!(b.groups().count(), 0);
        assert!(b
            .apply(&from, a.register("late", vec![], vec![], 2).unwrap())
            .is_empty());
        assert_eq!(b.count(), 0);
        assert_eq!(b.node_down(&id("b")), 0);
        // Back up: the full state restores it.
        b.node_up(&from);
        b.apply_full(&from, a.full_state());
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn newer_incarnation_replaces_older_is_ignored() {
        let mut b = table("b");
        let mut a1 = table("a");
        b.apply(
            &member("a", 1),
            a1.register("old", vec![], vec![], 1).unwrap(),
        );
        let mut a2 = NameTable::new(member("a", 2), NamesConfig::default());
        b.apply(
            &member("a", 2),
            a2.register("new", vec![], vec![], 2).unwrap(),
        );
        assert_eq!(b.keys().collect::<Vec<_>>(), vec!["new"]);
        b.apply(
            &member("a", 1),
            a1.register("stale", vec![], vec![], 3).unwrap(),
        );
        b.apply_full(a1.local(), a1.full_state());
        assert_eq!(b.keys().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(
            b.nodes().find(|(n, _)| n.as_str() == "a").unwrap().1,
            Incarnation(2)
        );
        // node_up of a newer incarnation forgets the old one's entries at once.
        b.node_up(&member("a", 3));
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn groups_replicate() {
        let (mut a, mut b) = (table("a"), table("b"));
        let from = a.local().clone();
        b.join_group("g", vec![9], vec![]).unwrap();
        b.apply(&from, a.join_group("g", vec![1], vec![1]).unwrap());
        b.apply(&from, a.join_group("g", vec![2], vec![2]).unwrap());
        b.apply(&from, a.join_group("g", vec![1], vec![3]).unwrap());
        let mut seen: Vec<(String, Vec<u8>, Vec<u8>)> = b
            .members("g")
            .map(|(n, m)| (n.to_string(), m.value.to_vec(), m.meta.to_vec()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("a".into(), vec![1], vec![3]),
                ("a".into(), vec![2], vec![2]),
                ("b".into(), vec![9], vec![]),
            ]
        );
        b.apply(&from, a.leave_group("g", &[1]).unwrap());
        b.apply(&from, a.leave_group("g", &[2]).unwrap());
        assert_eq!(b.members("g").count(), 1);
        b.leave_group("g", &[9]).unwrap();
        assert_eq!(b.groups().count(), 0);
    }

    #[test]
    fn select_filters_on_meta() {
        let mut a = table("a");
        a.register("x", vec![], b"red".to_vec(), 0).unwrap();
        a.register("y", vec![], b"blue".to_vec(), 0).unwrap();
        let red: Vec<&str> = a
            .select(|_, _, meta| meta == b"red")
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(red, vec!["x"]);
    }

    #[test]
    fn garbage_input_does_not_panic() {
        let mut b = table("b");
        let from = member("a", 1);
        let weird = [
            Delta {
                first_seq: u64::MAX,
                ops: vec![Op::Unregister { name: "q".into() }; 2],
            },
            Delta {
                first_seq: 0,
                ops: vec![Op::Leave {
                    group: "g".into(),
                    value: vec![],
                }],
            },
            Delta {
                first_seq: 1,
                ops: vec![Op::UpdateMeta {
                    name: "nope".into(),
                    meta: vec![],
                }],
            },
            Delta {
                first_seq: 2,
                ops: vec![Op::Unregister {
                    name: "nope".into(),
                }],
            },
        ];
        for d in weird {
            b.apply(&from, d);
        }
        b.apply_full(
            &from,
            FullState {
                seq: u64::MAX,
                ..FullState::default()
            },
        );
        b.apply(
            &from,
            Delta {
                first_seq: 1,
                ops: vec![],
            },
        );
        assert_eq!(b.count(), 0);
        // Our own echo is ignored.
        let own = b.local().clone();
        b.apply(
            &own,
            Delta {
                first_seq: 1,
                ops: vec![Op::Unregister { name: "x".into() }],
            },
        );
    }

    #[test]
    fn hundred_thousand_names_on_three_nodes() {
        let mut nodes: Vec<NameTable> = ["a", "b", "c"].iter().map(|n| table(n)).collect();
        let mut batches = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            let mut batch = Delta::default();
            for k in 0..33_334u32 {
                let name = format!("n{i}-{k}");
                batch
                    .append(
                        node.register(&name, k.to_le_bytes().to_vec(), vec![], 1)
                            .unwrap(),
                    )
                    .unwrap();
            }
            batches.push((node.local().clone(), batch));
        }
        for node in &mut nodes {
            for (from, batch) in &batches {
                assert!(node.apply(from, batch.clone()).is_empty());
            }
            assert_eq!(node.count(), 3 * 33_334);
        }
    }
}
