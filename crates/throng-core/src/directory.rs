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
//! - **Failover.** When the view loses a node, every backup whose origin left the view and whose
//!   key this node now owns is promoted: the child is spawned from its latest snapshot (or its
//!   args) and replicated to its new backup. A backup whose key is now owned by a third node (two
//!   nodes lost at once, or views that disagree) is sent there as [`DirMsg::Adopt`].
//! - **Moves.** A running child whose key now belongs to another node (a node joined, views
//!   converged) is stopped, its final snapshot taken, and handed to the new owner as
//!   [`DirMsg::Adopt`]. (Pausing and forwarding in-flight messages belongs to the handoff layer.)
//! - **Conflicts.** If a node is offered (by adoption or replication) a key it already runs, the
//!   copy on `owner(key)` wins; between two copies both claiming ownership, the higher snapshot
//!   version wins, ties broken by the smaller node name. The loser is stopped and listeners see
//!   [`ChildEvent::Conflict`].
//! - **Restarts.** A child that exits is restarted or removed by its [`RestartPolicy`]; a child that
//!   restarts more than the supervisor's [`Intensity`] allows within its window is removed with
//!   [`ChildEvent::GaveUp`] (intensity is counted per child, so one crashing child cannot take its
//!   siblings down). Restarts resume from the child's latest snapshot.
//! - **Quorum.** With [`DirConfig::quorum`] set to the configured cluster size, a node that sees
//!   fewer than half of it stops every child it runs, drops its backups and refuses starts with
//!   [`StartError::NoQuorum`] until the view grows back (the majority side fails the children over).

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
}

/// A message between the directories of the same supervisor on two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirMsg {
    /// From an owner to a backup: keep this record (replacing an older version).
    Replicate(Record),
    /// From a backup to the owner: the record with `version` is held.
    Ack {
        /// The key.
        key: String,
        /// The version held.
        version: u64,
    },
    /// From an owner to a former backup: forget the key.
    Drop {
        /// The key.
        key: String,
    },
    /// Run this child here: the sender moved it, or held its backup when its owner left.
    Adopt {
        /// The child.
        record: Record,
        /// How many nodes passed it on already (bounded by [`MAX_HOPS`]).
        hops: u8,
    },
}

/// Why a start request failed on the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartError {
    /// A child with this key already runs here.
    #[error("child {0:?} already started")]
    AlreadyStarted(String),
    /// This node does not own the key in its current view; the caller should retry at `owner`.
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
    /// A child running here stopped for good (policy, terminate, or intensity).
    Stopped {
        /// The key.
        key: String,
    },
    /// A child was restarted here after its owner left the view.
    FailedOver {
        /// The key.
        key: String,
        /// The node it ran on.
        from: NodeId,
        /// Whether a state snapshot was restored (otherwise it restarted from its args).
        from_snapshot: bool,
    },
    /// A child moved from this node to `to` (its key changed owner).
    Migrated {
        /// The key.
        key: String,
        /// The new owner.
        to: NodeId,
    },
    /// Two copies of a child met; the one here lost and was stopped (`here_lost`) or won.
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

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the child of `record` here, from `record.snapshot` if present (else from its args);
    /// then report [`Directory::spawned`].
    Spawn(Record),
    /// Stop the local child `key` (it was terminated, moved or lost a conflict); report its exit
    /// (with a final snapshot when it has one) through [`Directory::exited`].
    Stop {
        /// The key.
        key: String,
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
}

impl std::fmt::Debug for DirConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirConfig")
            .field("me", &self.me)
            .field("ring", &self.ring)
            .field("intensity", &self.intensity)
            .field("quorum", &self.quorum)
            .finish_non_exhaustive()
    }
}

impl DirConfig {
    /// Uniform placement, default ring and intensity, no quorum.
    pub fn new(me: NodeId) -> Self {
        DirConfig {
            me,
            ring: RingConfig::default(),
            distribution: Arc::new(Uniform),
            intensity: Intensity::default(),
            quorum: None,
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
    /// Asked to stop for good (terminate, policy, conflict loss).
    Stopping,
    /// Asked to stop in order to move to another node.
    Moving,
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
    acked: bool,
    /// Former backups, dropped once the current backup acknowledged (make before break).
    old_backups: Vec<NodeId>,
    /// Start requests waiting for the child to run and its backup to hold it.
    waiting: Vec<u64>,
    /// Terminate request waiting for the child to stop.
    stopping_req: Option<u64>,
    window: RestartWindow,
    /// Whether a `Started`/`FailedOver` event is still due (first successful spawn).
    first: Option<ChildEvent>,
}

/// A backup this node holds for another node's child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The node that replicated it (the owner at the time).
    pub from: NodeId,
    /// The record.
    pub record: Record,
}

/// The directory of one distributed supervisor on one node. See the module docs.
#[derive(Debug)]
pub struct Directory {
    config: DirConfig,
    ring: Ring,
    owned: BTreeMap<String, Owned>,
    backups: BTreeMap<String, Backup>,
    /// Nodes that left the view (and have not come back): backups from them are orphans.
    departed: BTreeSet<NodeId>,
    /// Keys handed off ([`DirMsg::Adopt`]) whose copy is held in `backups` until the receiver
    /// confirms, with the child's former backups, dropped at the confirmation (checked lazily
    /// against `backups`).
    handoffs: BTreeMap<String, Vec<NodeId>>,
    quorum_lost: bool,
}

impl Directory {
    /// A directory that sees only itself.
    pub fn new(config: DirConfig) -> Self {
        let ring = Ring::from_nodes(config.ring, [config.me.clone()])
            .unwrap_or_else(|_| Ring::new(config.ring));
        let mut d = Directory {
            config,
            ring,
            owned: BTreeMap::new(),
            backups: BTreeMap::new(),
            departed: BTreeSet::new(),
            handoffs: BTreeMap::new(),
            quorum_lost: false,
        };
        d.quorum_lost = !d.has_quorum();
        d
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.config.me
    }

    /// The current view.
    pub fn ring(&self) -> &Ring {
        &self.ring
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

    /// The backups held here, by key.
    pub fn backups(&self) -> &BTreeMap<String, Backup> {
        &self.backups
    }

    /// How many children run here whose current record is not yet held by their backup
    /// (replication in flight). Zero once every snapshot taken so far is replicated.
    pub fn unreplicated(&self) -> usize {
        self.owned.values().filter(|o| !o.acked).count()
    }

    /// Whether this node sees a quorum (always true without [`DirConfig::quorum`]).
    pub fn has_quorum(&self) -> bool {
        match self.config.quorum {
            None => true,
            Some(size) => self.ring.len() > size / 2,
        }
    }

    fn quorum_error(&self) -> StartError {
        let needed = self.config.quorum.map(|s| s / 2 + 1).unwrap_or(0);
        StartError::NoQuorum {
            seen: self.ring.len(),
            needed,
        }
    }

    /// A start request for `record` arrived here (request id `req`, answered by an
    /// [`Action::Reply`] once the child runs and its backup holds it).
    pub fn start(&mut self, req: u64, record: Record) -> Vec<Action> {
        let mut out = Vec::new();
        if self.quorum_lost {
            out.push(reply(req, Err(self.quorum_error())));
            return out;
        }
        let owner = self.owner(&record.key);
        if owner.as_ref() != Some(&self.config.me) {
            out.push(reply(req, Err(StartError::NotOwner { owner })));
            return out;
        }
        if self.owned.contains_key(&record.key) {
            out.push(reply(req, Err(StartError::AlreadyStarted(record.key))));
            return out;
        }
        let key = record.key.clone();
        self.insert_owned(record, vec![req], ChildEvent::Started { key }, &mut out);
        out
    }

    fn insert_owned(
        &mut self,
        record: Record,
        waiting: Vec<u64>,
        first: ChildEvent,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        self.backups.remove(&key);
        let backup = self.backup_of(&key);
        // A copy handed off from here came back: its former backups are this copy's.
        let mut old_backups = self.handoffs.remove(&key).unwrap_or_default();
        old_backups.retain(|n| Some(n) != backup.as_ref() && *n != self.config.me);
        out.push(Action::Spawn(record.clone()));
        if let Some(b) = &backup {
            out.push(send(b, DirMsg::Replicate(record.clone())));
        }
        self.owned.insert(
            key,
            Owned {
                acked: backup.is_none(),
                old_backups,
                record,
                phase: Phase::Starting,
                backup,
                waiting,
                stopping_req: None,
                window: RestartWindow::new(self.config.intensity),
                first: Some(first),
            },
        );
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
                    // Asked to stop while starting: the Stop action was deferred until now.
                    Phase::Stopping | Phase::Moving => {
                        out.push(Action::Stop {
                            key: key.to_owned(),
                        });
                        return out;
                    }
                    Phase::Running => {}
                }
                if let Some(e) = o.first.take() {
                    out.push(Action::Event(e));
                }
                if o.acked {
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Ok(())));
                    }
                }
            }
            Err(why) => {
                let Some(o) = self.owned.remove(key) else {
                    return out;
                };
                for req in o.waiting {
                    out.push(reply(req, Err(StartError::Failed(why.clone()))));
                }
                if let Some(req) = o.stopping_req {
                    out.push(reply(req, Ok(())));
                }
                for b in o.backup.iter().chain(&o.old_backups) {
                    out.push(send(
                        b,
                        DirMsg::Drop {
                            key: key.to_owned(),
                        },
                    ));
                }
                if o.first.is_none() {
                    out.push(Action::Event(ChildEvent::Stopped {
                        key: key.to_owned(),
                    }));
                }
            }
        }
        out
    }

    /// A new state snapshot of the local child `key` (ignored for unknown keys).
    pub fn snapshot(&mut self, key: &str, snapshot: Vec<u8>) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(o) = self.owned.get_mut(key) {
            o.record.snapshot = Some(snapshot);
            o.record.version += 1;
            if let Some(b) = &o.backup {
                o.acked = false;
                out.push(send(b, DirMsg::Replicate(o.record.clone())));
            }
        }
        out
    }

    /// Request `req` to terminate the child `key` for good (answered when it has stopped).
    pub fn terminate(&mut self, req: u64, key: &str) -> Vec<Action> {
        let mut out = Vec::new();
        match self.owned.get_mut(key) {
            None => out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned())))),
            Some(o) => {
                if let Some(prev) = o.stopping_req.replace(req) {
                    out.push(reply(prev, Ok(())));
                }
                let was = o.phase;
                o.phase = Phase::Stopping;
                if was == Phase::Running {
                    out.push(Action::Stop {
                        key: key.to_owned(),
                    });
                }
            }
        }
        out
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
            Phase::Moving => {
                let o = self.owned.remove(key).expect("present");
                // Send the record to whoever owns the key now (the view may have moved on).
                match self.owner(key) {
                    Some(to) if to != self.config.me => {
                        // Start requests still waiting are retried at the new owner.
                        for req in o.waiting {
                            out.push(reply(
                                req,
                                Err(StartError::NotOwner {
                                    owner: Some(to.clone()),
                                }),
                            ));
                        }
                        // The backups keep their copies until `to` confirms it took the child.
                        let olds = o.backup.into_iter().chain(o.old_backups).collect();
                        out.push(Action::Event(ChildEvent::Migrated {
                            key: key.to_owned(),
                            to: to.clone(),
                        }));
                        self.hand_off(&to, o.record, 0, olds, &mut out);
                    }
                    _ => {
                        // The key came back to this node (or no owner): run it again here.
                        let first = ChildEvent::Restarted {
                            key: key.to_owned(),
                        };
                        self.insert_owned(o.record, o.waiting, first, &mut out);
                    }
                }
            }
            Phase::Stopping => self.remove(key, &mut out),
            Phase::Starting | Phase::Running => {
                match o.window.on_exit(o.record.policy, class, now) {
                    RestartDecision::Restart => {
                        o.phase = Phase::Starting;
                        o.first = Some(ChildEvent::Restarted {
                            key: key.to_owned(),
                        });
                        out.push(Action::Spawn(o.record.clone()));
                        if let Some(b) = &o.backup {
                            if bumped {
                                o.acked = false;
                                out.push(send(b, DirMsg::Replicate(o.record.clone())));
                            }
                        }
                    }
                    RestartDecision::Remove => self.remove(key, &mut out),
                    RestartDecision::GiveUp { restarts } => {
                        out.push(Action::Event(ChildEvent::GaveUp {
                            key: key.to_owned(),
                            restarts,
                        }));
                        self.remove(key, &mut out);
                    }
                }
            }
        }
        out
    }

    fn remove(&mut self, key: &str, out: &mut Vec<Action>) {
        let Some(o) = self.owned.remove(key) else {
            return;
        };
        for req in o.waiting {
            out.push(reply(req, Err(StartError::Failed("child exited".into()))));
        }
        if let Some(req) = o.stopping_req {
            out.push(reply(req, Ok(())));
        }
        for b in o.backup.iter().chain(&o.old_backups) {
            out.push(send(
                b,
                DirMsg::Drop {
                    key: key.to_owned(),
                },
            ));
        }
        out.push(Action::Event(ChildEvent::Stopped {
            key: key.to_owned(),
        }));
    }

    /// The eligible nodes changed: `nodes` is the full new view (this node is always included).
    pub fn set_view<'a>(&mut self, nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<Action> {
        let mut out = Vec::new();
        let mut set: BTreeSet<NodeId> = nodes.into_iter().cloned().collect();
        set.insert(self.config.me.clone());
        let ring = match Ring::from_nodes(self.config.ring, set.iter().cloned()) {
            Ok(r) => r,
            Err(_) => return out,
        };
        for gone in self.ring.nodes() {
            if !set.contains(gone) && self.departed.len() < crate::placement::MAX_NODES {
                self.departed.insert(gone.clone());
            }
        }
        for n in &set {
            self.departed.remove(n);
        }
        self.ring = ring;
        let had_quorum = !self.quorum_lost;
        self.quorum_lost = !self.has_quorum();
        if self.quorum_lost {
            if had_quorum {
                // Minority: stop everything; the majority side fails these children over.
                let keys: Vec<String> = self.owned.keys().cloned().collect();
                for key in keys {
                    let o = self.owned.get_mut(&key).expect("present");
                    let was = o.phase;
                    o.phase = Phase::Stopping;
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Err(self_quorum(&self.ring, self.config.quorum))));
                    }
                    if was == Phase::Running {
                        out.push(Action::Stop { key });
                    }
                }
                self.backups.clear();
            }
            return out;
        }
        self.rebalance(&mut out);
        out
    }

    /// Re-derive every local decision from the current view.
    fn rebalance(&mut self, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        // Children running here.
        let keys: Vec<String> = self.owned.keys().cloned().collect();
        for key in keys {
            let owner = self.owner(&key);
            let backup = self.backup_of(&key);
            let o = self.owned.get_mut(&key).expect("present");
            if matches!(o.phase, Phase::Stopping | Phase::Moving) {
                continue;
            }
            if owner.as_ref().is_some_and(|n| *n != me) {
                let was = o.phase;
                o.phase = Phase::Moving;
                if was == Phase::Running {
                    out.push(Action::Stop { key });
                }
                continue;
            }
            if o.backup != backup {
                // The former backup keeps its copy until the new one acknowledged (it is
                // dropped then, even if it left the view: it may be alive behind a partition or
                // a false suspicion, and a stale backup would fail over later).
                if let Some(old) = o.backup.take() {
                    if !o.old_backups.contains(&old) {
                        o.old_backups.push(old);
                    }
                }
                o.old_backups.retain(|n| Some(n) != backup.as_ref());
                o.backup = backup.clone();
                match &backup {
                    Some(b) => {
                        o.acked = false;
                        out.push(send(b, DirMsg::Replicate(o.record.clone())));
                    }
                    None => {
                        o.acked = true;
                        if o.phase == Phase::Running {
                            for req in o.waiting.drain(..) {
                                out.push(reply(req, Ok(())));
                            }
                        }
                    }
                }
            }
        }
        // Backups whose origin left the view.
        let orphaned: Vec<String> = self
            .backups
            .iter()
            .filter(|(_, b)| self.departed.contains(&b.from))
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphaned {
            let Some(b) = self.backups.remove(&key) else {
                continue;
            };
            let olds = self.handoffs.remove(&key).unwrap_or_default();
            match self.owner(&key) {
                Some(o) if o == me => {
                    if self.owned.contains_key(&key) {
                        continue;
                    }
                    let first = ChildEvent::FailedOver {
                        key: key.clone(),
                        from: b.from.clone(),
                        from_snapshot: b.record.snapshot.is_some(),
                    };
                    self.handoffs.insert(key.clone(), olds);
                    self.insert_owned(b.record, Vec::new(), first, out);
                }
                Some(o) => self.hand_off(&o, b.record, 0, olds, out),
                None => {}
            }
        }
    }

    /// The membership declared `node` dead while it was not in this node's view (it died before
    /// this node learned of it, e.g. while this node was joining). Backups it replicated here are
    /// orphans: they are failed over as if `node` had left the view.
    pub fn node_down(&mut self, node: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if self.ring.contains(node) || *node == self.config.me || self.quorum_lost {
            return out;
        }
        if self.backups.values().any(|b| b.from == *node) {
            self.departed.insert(node.clone());
            self.rebalance(&mut out);
        }
        out
    }

    /// The connection to `peer` was lost and re-established while `peer` stayed in this node's
    /// view, so messages to it may have been lost: send again what it must hold (the records it
    /// backs up for this node, and the hand-offs it has not confirmed).
    pub fn reconnected(&mut self, peer: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if self.quorum_lost || !self.ring.contains(peer) {
            return out;
        }
        for o in self.owned.values_mut() {
            if o.backup.as_ref() == Some(peer)
                && matches!(o.phase, Phase::Starting | Phase::Running)
            {
                o.acked = false;
                out.push(send(peer, DirMsg::Replicate(o.record.clone())));
            }
        }
        let backups = &self.backups;
        self.handoffs.retain(|k, _| backups.contains_key(k));
        for key in self.handoffs.keys() {
            let b = &self.backups[key];
            if b.from == *peer {
                let record = b.record.clone();
                out.push(send(peer, DirMsg::Adopt { record, hops: 0 }));
            }
        }
        out
    }

    /// A message from the directory on `from`.
    pub fn receive(&mut self, from: &NodeId, msg: DirMsg) -> Vec<Action> {
        let mut out = Vec::new();
        if self.quorum_lost {
            // Nothing is kept or run on the minority side; an adoption goes back to its sender.
            if let DirMsg::Adopt { record, hops } = msg {
                if hops < MAX_HOPS {
                    out.push(send(
                        from,
                        DirMsg::Adopt {
                            record,
                            hops: hops + 1,
                        },
                    ));
                }
            }
            return out;
        }
        match msg {
            DirMsg::Replicate(record) => {
                let key = record.key.clone();
                let version = record.version;
                if self.owned.contains_key(&key)
                    && self.owner(&key).as_ref() == Some(&self.config.me)
                {
                    // Two live copies while views disagree: the owner's stays; the sender's moves
                    // here once its view converges, and is dropped in favour of this one.
                    return out;
                }
                // Messages between two nodes arrive in order, so the latest record from an owner
                // is its current one. (Versions of different copies are not comparable: a copy
                // held for a hand-off may carry a higher version than the copy the owner kept.)
                if self.handoffs.contains_key(&key) {
                    // A copy handed off from here runs at `from` now (the receiver of the
                    // hand-off, or the node it was passed on to): it replaces the held copy.
                    self.confirm_handoff(&key, from, &mut out);
                }
                self.backups.insert(
                    key.clone(),
                    Backup {
                        from: from.clone(),
                        record,
                    },
                );
                out.push(send(from, DirMsg::Ack { key, version }));
                // The origin may already have left the view (the message was overtaken by it).
                if self.departed.contains(from) {
                    self.rebalance(&mut out);
                }
            }
            DirMsg::Ack { key, version } => {
                if let Some(o) = self.owned.get_mut(&key) {
                    if o.backup.as_ref() == Some(from) && o.record.version == version {
                        o.acked = true;
                        for old in o.old_backups.drain(..) {
                            out.push(send(&old, DirMsg::Drop { key: key.clone() }));
                        }
                        if o.phase == Phase::Running {
                            for req in o.waiting.drain(..) {
                                out.push(reply(req, Ok(())));
                            }
                        }
                    }
                }
            }
            DirMsg::Drop { key } => {
                if self.backups.get(&key).is_some_and(|b| b.from == *from) {
                    self.backups.remove(&key);
                    // A hand-off to `from` is confirmed.
                    self.confirm_handoff(&key, from, &mut out);
                }
            }
            DirMsg::Adopt { record, hops } => {
                let key = record.key.clone();
                let owner = self.owner(&key);
                if let Some(o) = self.owned.get_mut(&key) {
                    if matches!(o.phase, Phase::Stopping | Phase::Moving) {
                        // The copy here is on its way out: this record goes where it goes (the
                        // sender keeps its copy until the next node confirms).
                        match owner.filter(|n| *n != self.config.me) {
                            Some(to) if hops < MAX_HOPS => {
                                let olds = vec![from.clone()];
                                self.hand_off(&to, record, hops + 1, olds, &mut out);
                            }
                            _ => out.push(send(from, DirMsg::Drop { key: key.clone() })),
                        }
                    } else {
                        // Taken: the sender forgets its copy once this copy's backup holds it
                        // (the sender may be that backup: the replication below refreshes it).
                        if o.backup.as_ref() != Some(from) && !o.old_backups.contains(from) {
                            o.old_backups.push(from.clone());
                        }
                        // The sender's copy has stopped; the one running here stays. The sender
                        // may have been this copy's backup and consumed it to run its own copy:
                        // replicate again.
                        if let Some(b) = &o.backup {
                            o.acked = false;
                            out.push(send(b, DirMsg::Replicate(o.record.clone())));
                        }
                        out.push(Action::Event(ChildEvent::Conflict {
                            key,
                            other: from.clone(),
                            here_lost: false,
                        }));
                    }
                    return out;
                }
                match owner {
                    Some(o) if o != self.config.me && hops < MAX_HOPS => {
                        // Views disagree: pass it on to the owner in this node's view (the sender
                        // keeps its copy until that node confirms).
                        self.hand_off(&o, record, hops + 1, vec![from.clone()], &mut out);
                    }
                    _ => {
                        // Ours, or passed around too often while views settle: run it here; the
                        // next view change moves it if it is not ours.
                        let first = ChildEvent::FailedOver {
                            key: key.clone(),
                            from: from.clone(),
                            from_snapshot: record.snapshot.is_some(),
                        };
                        self.insert_owned(record, Vec::new(), first, &mut out);
                        // Taken: the sender forgets its copy once the backup here holds it (the
                        // sender may be that backup: the replication just sent refreshes it).
                        let o = self.owned.get_mut(&key).expect("inserted");
                        if o.backup.as_ref() != Some(from) && !o.old_backups.contains(from) {
                            o.old_backups.push(from.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// `to` confirmed it took the child `key` handed off to it: the former backups may forget it.
    fn confirm_handoff(&mut self, key: &str, to: &NodeId, out: &mut Vec<Action>) {
        for old in self.handoffs.remove(key).unwrap_or_default() {
            if old != *to && old != self.config.me {
                out.push(send(
                    &old,
                    DirMsg::Drop {
                        key: key.to_owned(),
                    },
                ));
            }
        }
    }

    /// Send `record` to `to` to run, and hold a copy until `to` confirms it took it (with a
    /// [`DirMsg::Drop`], or by replicating to this node): the copy is kept as a backup *from*
    /// `to`, so if `to` leaves the view first, the usual failover of orphaned backups re-sends or
    /// runs it instead of losing the child with the message.
    fn hand_off(
        &mut self,
        to: &NodeId,
        record: Record,
        hops: u8,
        old_backups: Vec<NodeId>,
        out: &mut Vec<Action>,
    ) {
        let olds = self.handoffs.entry(record.key.clone()).or_default();
        for n in old_backups {
            if !olds.contains(&n) {
                olds.push(n);
            }
        }
        self.backups.insert(
            record.key.clone(),
            Backup {
                from: to.clone(),
                record: record.clone(),
            },
        );
        out.push(send(to, DirMsg::Adopt { record, hops }));
    }
}

/// How many times an adoption is passed on between nodes whose views disagree before a node keeps
/// it anyway (bounds the traffic until views converge).
pub const MAX_HOPS: u8 = 8;

fn self_quorum(ring: &Ring, quorum: Option<usize>) -> StartError {
    StartError::NoQuorum {
        seen: ring.len(),
        needed: quorum.map(|s| s / 2 + 1).unwrap_or(0),
    }
}

fn reply(req: u64, result: Result<(), StartError>) -> Action {
    Action::Reply { req, result }
}

fn send(to: &NodeId, msg: DirMsg) -> Action {
    Action::Send {
        to: to.clone(),
        msg,
    }
}
