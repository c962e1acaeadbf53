//! The cluster-wide name registry: unique names and duplicate-key groups of actors, visible on
//! every node — Horde's `Horde.Registry` (or Elixir's `Registry` across a cluster).
//!
//! Use it for actors that are not placed by key: children started on an explicit node, local actors
//! that need a cluster-wide name. Keyed children of a distributed supervisor are addressed by key
//! instead (see [`super::dist`]).
//!
//! # Model
//!
//! The state machine is [`throng_core::names::NameTable`]: every node is the only writer of its own
//! entries and keeps a full replica of everybody else's, so **lookups are local** — a read lock on an
//! in-memory table, no message, no task hop. A registration is applied locally at once (the
//! registering process sees it immediately), and its delta is queued for the node's *flusher* task,
//! which sends it to every peer as a [`Frame::Names`]. The flusher sends as soon as it is woken
//! (nothing is delayed while the node is idle) and batches whatever accumulated while it was sending
//! (under load, one frame carries many registrations).
//!
//! Peers apply each origin's deltas in sequence order. A gap — a frame lost with a connection, or
//! dropped because a peer's queue stayed full — is repaired with the origin's full state, requested
//! by the peer. Every second the flusher also sends its sequence number, so that a peer notices a
//! lost *last* delta too. When a node comes up, every node sends it its full state; when it goes
//! down, its entries are dropped everywhere.
//!
//! # Addresses
//!
//! Registering exports the actor on its node under an export identity of the registry's own
//! namespace (a registered name, or a group member's actor id), which no user export or
//! distributed child can collide with; the registry entry stores the actor type and which of the
//! two it is. [`Names::lookup`] turns it into an [`ActorRef`] — the local actor itself on its own
//! node, a remote reference elsewhere.
//!
//! # Lifetime and conflicts
//!
//! An actor's names and group memberships are removed, on every node, when it exits.
//!
//! Two nodes may register the same name concurrently (before either has seen the other's
//! registration). Every node resolves the conflict the same way: the earliest registration wins (see
//! the [conflict rule](throng_core::names)). On the losing node the name is taken away from the
//! losing actor, its export under the name is removed (remote references obtained through the name stop
//! reaching it), and a [`NamesEvent::Conflict`] is published on [`Names::events`]. **The losing actor
//! keeps running**: unlike Horde, which kills the loser, Throng leaves that decision to the
//! application (stop it on the event if it must not run without its name).
//!
//! # Limits
//!
//! Local writes are bounded by [`NamesConfig`] (set in
//! [`NodeOptions::names`](super::NodeOptions::names)); replication uses the peers' bounded data
//! queues, waiting at most [`SEND_TIMEOUT`] per frame before dropping it (the gap is then repaired).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use throng_core::names::{Delta, Entry, FullState, GroupMember, NameTable, Outgoing};
use throng_core::{Member, NodeId};
use throng_membership::MemberInfo;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

pub use throng_core::names::{NameError, NameEvent, NamesConfig};

use super::export_id::ExportId;
use super::transport::{Peer, RemoteActor, Transport};
use super::wire::Frame;
use crate::{ActorId, ActorRef};

/// How often each node sends its sequence number to every peer, so that lost deltas are noticed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long the flusher waits for room in a peer's data queue before dropping a frame for it (the
/// peer repairs the gap with a full-state sync).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on buffered registry events per listener; a slower listener sees `Lagged`.
pub const EVENT_CAPACITY: usize = 1024;

/// Largest registry frame the flusher builds (batches and full states are split to fit), capped
/// further at half the transport's frame limit.
const FRAME_BUDGET: usize = 1 << 20;

/// Bytes added to each entry's estimated encoding (lengths, sequence numbers, stamps).
const ENTRY_OVERHEAD: usize = 40;

/// The export name of the actor registered as `name`.
fn reg_export(name: &str) -> String {
    ExportId::Name(name).encode()
}

/// A registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamesError {
    /// The registry refused the write (name taken, not registered, a limit exceeded, ...).
    #[error(transparent)]
    Table(#[from] NameError),
    /// Only actors running on this node can be registered by it.
    #[error("only actors running on this node can be registered here")]
    NotLocal,
    /// The actor has exited; nothing was registered.
    #[error("actor {0} has exited")]
    NotAlive(ActorId),
    /// The metadata could not be encoded.
    #[error("cannot encode metadata: {0}")]
    Encode(String),
    /// The stored metadata is not a value of the requested type.
    #[error("cannot decode metadata: {0}")]
    Decode(String),
    /// The node has been dropped.
    #[error("the node has stopped")]
    Stopped,
}

/// Something that happened to this node's registrations (Elixir `Registry` listeners hear the
/// same: registrations and unregistrations of the node's own actors, and Horde's name conflicts).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamesEvent {
    /// A local actor was registered under `name`.
    Registered {
        /// The name.
        name: String,
        /// The local actor.
        actor: ActorId,
    },
    /// A local actor's name was dropped: unregistered, or the actor exited.
    Unregistered {
        /// The name.
        name: String,
        /// The local actor that held it.
        actor: ActorId,
    },
    /// A local actor lost its name to a concurrent registration on another node. The name was
    /// removed from the actor and from the cluster; it now refers to the winner's actor. The
    /// actor keeps running, or was stopped with [`crate::ExitReason::NameConflict`] if the node
    /// was started with [`OnConflict::Stop`].
    Conflict {
        /// The contested name.
        name: String,
        /// The node whose registration won.
        winner: NodeId,
        /// The local actor that lost the name.
        actor: ActorId,
        /// Whether the actor was stopped for it ([`OnConflict::Stop`]).
        stopped: bool,
    },
}

/// What happens to a local actor that loses its name to a concurrent registration on another
/// node (set in [`super::NodeOptions::name_conflicts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// The actor keeps running without the name (the default): the application decides, on
    /// [`NamesEvent::Conflict`].
    #[default]
    Keep,
    /// The actor is stopped with [`crate::ExitReason::NameConflict`], as Horde does: its
    /// supervisor sees an abnormal exit.
    Stop,
}

/// What a registry entry's value holds: how to reach the actor on its (owner) node.
#[derive(Debug, Serialize, Deserialize)]
struct Addr {
    /// [`RemoteActor::TYPE`] of the actor.
    actor_type: String,
    /// For a group member, the actor's id on its node (exported as a group member); `None` for a
    /// unique name (exported under the name).
    member: Option<u64>,
}

impl Addr {
    /// The address of the local actor `id` of type `A` as a group member.
    fn member<A: RemoteActor>(id: crate::ActorId) -> Addr {
        Addr {
            actor_type: A::TYPE.to_owned(),
            member: Some(id.get()),
        }
    }

    /// The export name on the owner node of the actor registered as `name` (or a group member).
    fn export(&self, name: &str) -> String {
        match self.member {
            Some(id) => ExportId::Group(id).encode(),
            None => reg_export(name),
        }
    }

    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Addr> {
        postcard::from_bytes(bytes).ok()
    }
}

/// What travels in a [`Frame::Names`]. `from` is the origin; receivers check it against the
/// authenticated peer that sent the frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// Local writes of `from`.
    Delta { from: Member, delta: Delta },
    /// Part `index` (from 0) of `from`'s full state at `seq` (parts travel in order on one
    /// connection; a missing part voids the transfer).
    Full {
        from: Member,
        seq: u64,
        index: u32,
        last: bool,
        names: Vec<(String, Entry)>,
        groups: Vec<(String, Vec<GroupMember>)>,
    },
    /// `from` asks for the receiver's full state.
    SyncRequest { from: Member },
    /// `from` has written up to `seq`.
    Seq { from: Member, seq: u64 },
}

/// The registrations one local actor holds.
#[derive(Default)]
struct LocalActor {
    names: HashSet<String>,
    groups: HashSet<String>,
    /// The actor's group member value (its group member address), once it joined a group.
    group_value: Option<Vec<u8>>,
}

/// A full state being received in parts.
struct Assembly {
    from: Member,
    state: FullState,
    /// Index of the next part expected.
    next: u32,
}

struct Inner {
    table: NameTable,
    /// Local writes not yet handed to the flusher's peers, in sequence order.
    batch: Delta,
    /// Peers owed this node's full state.
    full_to: BTreeSet<NodeId>,
    /// Peers whose full state this node asks for.
    sync_to: BTreeSet<NodeId>,
    assembling: HashMap<NodeId, Assembly>,
    /// Local actors with registrations (and an exit hook), by id.
    actors: HashMap<ActorId, LocalActor>,
    /// Holder of each local unique name.
    holders: HashMap<String, ActorId>,
}

impl Inner {
    fn queue(&mut self, delta: Delta) {
        if let Err(delta) = self.batch.append(delta) {
            // Local writes are consecutive under the lock; should this ever fail, peers see a gap
            // and sync instead.
            tracing::error!(
                first_seq = delta.first_seq,
                "registry delta out of order dropped"
            );
        }
    }

    /// Drops the local bookkeeping of `name` (unregistered or lost); returns its former holder.
    fn forget_name(&mut self, name: &str) -> Option<ActorId> {
        let id = self.holders.remove(name)?;
        if let Some(a) = self.actors.get_mut(&id) {
            a.names.remove(name);
        }
        Some(id)
    }
}

/// One node's registry: its state and the transport it reaches peers and exports through.
pub(crate) struct Registry {
    /// The node's transport.
    pub(crate) t: Arc<Transport>,
    /// The registry's state.
    pub(crate) names: NamesState,
}

/// The registry state of one node, owned by its [`Registry`].
pub(crate) struct NamesState {
    me: Member,
    inner: RwLock<Inner>,
    /// Wakes the flusher.
    notify: Arc<Notify>,
    events: broadcast::Sender<NamesEvent>,
    /// Largest frame the flusher builds.
    budget: usize,
    /// What happens to a local actor that loses a name conflict.
    on_conflict: OnConflict,
}

/// The limits to use with frames of `max_frame` bytes: `config` if its largest entry fits in a
/// registry frame; the default limits shrunk to fit (smaller metadata first) if `config` is the
/// default; otherwise an error.
pub(crate) fn effective_config(
    config: &NamesConfig,
    max_frame: usize,
) -> Result<NamesConfig, String> {
    let budget = frame_budget(max_frame);
    let largest = config
        .max_name_len
        .saturating_add(config.max_value_len)
        .saturating_add(config.max_meta_len)
        .saturating_add(ENTRY_OVERHEAD + 64);
    if largest <= budget {
        return Ok(config.clone());
    }
    if *config == NamesConfig::default() {
        let room = budget.saturating_sub(ENTRY_OVERHEAD + 64);
        let max_name_len = config.max_name_len.min(room / 4);
        let max_value_len = config.max_value_len.min(room / 4);
        return Ok(NamesConfig {
            max_name_len,
            max_value_len,
            max_meta_len: room - max_name_len - max_value_len,
            ..config.clone()
        });
    }
    Err(format!(
        "a registry entry (name {} + value {} + metadata {} bytes) must fit in {budget} bytes \
         (half of max_frame)",
        config.max_name_len, config.max_value_len, config.max_meta_len
    ))
}

fn frame_budget(max_frame: usize) -> usize {
    FRAME_BUDGET.min(max_frame / 2)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode_meta(meta: &impl Serialize) -> Result<Vec<u8>, NamesError> {
    postcard::to_allocvec(meta).map_err(|e| NamesError::Encode(e.to_string()))
}

/// Decode a registry message (what a [`Frame::Names`] carries).
pub(crate) fn decode_msg(bytes: &[u8]) -> Result<Msg, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// A registry entry's value: the address of an actor of type `actor_type` (a group member with
/// actor id `member`, or the holder of a unique name).
pub(crate) fn encode_addr(actor_type: &str, member: Option<u64>) -> Vec<u8> {
    Addr {
        actor_type: actor_type.to_owned(),
        member,
    }
    .encode()
}

/// Whether a registry entry's value decodes as the address lookups read from it.
pub(crate) fn addr_decodes(value: &[u8]) -> bool {
    Addr::decode(value).is_some()
}

fn decode_meta<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, NamesError> {
    postcard::from_bytes(bytes).map_err(|e| NamesError::Decode(e.to_string()))
}

impl NamesState {
    /// The registry of the local node `me`.
    pub(crate) fn new(
        me: Member,
        config: NamesConfig,
        max_frame: usize,
        on_conflict: OnConflict,
    ) -> Self {
        NamesState {
            inner: RwLock::new(Inner {
                table: NameTable::new(me.clone(), config),
                batch: Delta::default(),
                full_to: BTreeSet::new(),
                sync_to: BTreeSet::new(),
                assembling: HashMap::new(),
                actors: HashMap::new(),
                holders: HashMap::new(),
            }),
            me,
            notify: Arc::new(Notify::new()),
            events: broadcast::channel(EVENT_CAPACITY).0,
            budget: frame_budget(max_frame),
            on_conflict,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Critical sections leave the table consistent before anything can panic.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    // ---- membership hooks ----

    /// `member` came up: forget an older incarnation's entries and send it our full state.
    pub(crate) fn node_up(&self, member: &Member) {
        if member.id == self.me.id {
            return;
        }
        let mut inner = self.write();
        inner.table.node_up(member);
        inner.full_to.insert(member.id.clone());
        drop(inner);
        self.notify.notify_one();
    }

    /// `id` went down: drop everything it registered.
    pub(crate) fn node_down(&self, id: &NodeId) {
        let mut inner = self.write();
        let dropped = inner.table.node_down(id);
        inner.assembling.remove(id);
        inner.full_to.remove(id);
        inner.sync_to.remove(id);
        drop(inner);
        if dropped > 0 {
            tracing::debug!(node = %id, dropped, "registry entries of a down node dropped");
        }
    }

    /// A full membership view (at start, or after missed events): `members` are up, every other
    /// node the table knows is down.
    pub(crate) fn members_view(&self, members: &[MemberInfo]) {
        let known: Vec<NodeId> = self
            .read()
            .table
            .nodes()
            .map(|(id, _)| id.clone())
            .filter(|id| *id != self.me.id && !members.iter().any(|m| m.id == *id))
            .collect();
        for id in known {
            self.node_down(&id);
        }
        for m in members {
            self.node_up(&m.member());
        }
    }

    // ---- remote input ----

    /// A [`Frame::Names`] from the authenticated peer `peer`. Runs on the connection's reader: it
    /// only updates the table and queues work for the flusher, never waits.
    pub(crate) fn receive(&self, shared: &Transport, peer: &NodeId, bytes: &[u8]) {
        let msg = match decode_msg(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "undecodable registry message dropped");
                return;
            }
        };
        let from = match &msg {
            Msg::Delta { from, .. }
            | Msg::Full { from, .. }
            | Msg::SyncRequest { from }
            | Msg::Seq { from, .. } => from,
        };
        if from.id != *peer {
            tracing::warn!(%peer, claimed = %from.id, "registry message for another node dropped");
            return;
        }
        let mut inner = self.write();
        let out = match msg {
            Msg::Delta { from, delta } => inner.table.apply(&from, delta),
            Msg::Full {
                from,
                seq,
                index,
                last,
                names,
                groups,
            } => {
                if index == 0 {
                    let state = FullState {
                        seq,
                        ..FullState::default()
                    };
                    let assembly = Assembly {
                        from: from.clone(),
                        state,
                        next: 0,
                    };
                    inner.assembling.insert(from.id.clone(), assembly);
                }
                let Some(a) = inner.assembling.get_mut(&from.id) else {
                    return;
                };
                if a.from != from || a.state.seq != seq || a.next != index {
                    // A part was dropped: void the transfer; the heartbeat brings a re-sync.
                    inner.assembling.remove(&from.id);
                    return;
                }
                a.next = a.next.saturating_add(1);
                a.state.names.extend(names);
                a.state.groups.extend(groups);
                if !last {
                    return;
                }
                match inner.assembling.remove(&from.id) {
                    Some(a) => inner.table.apply_full(&a.from, a.state),
                    None => return,
                }
            }
            Msg::SyncRequest { from } => {
                inner.full_to.insert(from.id);
                drop(inner);
                self.notify.notify_one();
                return;
            }
            Msg::Seq { from, seq } => inner.table.observe_seq(&from, seq).into_iter().collect(),
        };
        let lost = self.handle(&mut inner, out);
        drop(inner);
        self.notify.notify_one();
        self.report(shared, lost);
    }

    /// Carries out the table's requests; returns the conflicts lost (to report outside the lock).
    fn handle(&self, inner: &mut Inner, out: Vec<Outgoing>) -> Vec<(String, NodeId, ActorId)> {
        let mut lost = Vec::new();
        for o in out {
            match o {
                Outgoing::Broadcast(delta) => inner.queue(delta),
                Outgoing::SyncRequest { to } => {
                    inner.sync_to.insert(to);
                }
                Outgoing::Event(NameEvent::Conflict { name, winner, .. }) => {
                    if let Some(actor) = inner.forget_name(&name) {
                        lost.push((name, winner, actor));
                    }
                }
            }
        }
        lost
    }

    /// Takes lost names away from their actors' exports and tells listeners.
    fn report(&self, shared: &Transport, lost: Vec<(String, NodeId, ActorId)>) {
        for (name, winner, actor) in lost {
            let export = reg_export(&name);
            let handle = shared.exported_handle(&export).filter(|h| h.id() == actor);
            shared.unexport(&export, actor);
            tracing::info!(%name, %winner, actor = %actor.get(), "registered name lost to a concurrent registration");
            let stopped = match (self.on_conflict, handle) {
                (OnConflict::Stop, Some(h)) => {
                    h.stop(crate::ExitReason::NameConflict {
                        name: Arc::from(name.as_str()),
                        winner: Arc::from(winner.as_str()),
                    });
                    true
                }
                _ => false,
            };
            let _ = self.events.send(NamesEvent::Conflict {
                name,
                winner,
                actor,
                stopped,
            });
        }
    }

    /// A local actor exited: drop its names and memberships (its exports go with it).
    fn actor_exited(&self, id: ActorId) {
        let mut inner = self.write();
        let Some(actor) = inner.actors.remove(&id) else {
            return;
        };
        let mut dropped = Vec::new();
        for name in actor.names {
            if inner.holders.get(&name) == Some(&id) {
                inner.holders.remove(&name);
                if let Ok(d) = inner.table.unregister(&name) {
                    inner.queue(d);
                }
                dropped.push(name);
            }
        }
        if let Some(value) = &actor.group_value {
            for group in actor.groups {
                if let Ok(d) = inner.table.leave_group(&group, value) {
                    inner.queue(d);
                }
            }
        }
        drop(inner);
        self.notify.notify_one();
        for name in dropped {
            let _ = self
                .events
                .send(NamesEvent::Unregistered { name, actor: id });
        }
    }
}

mod api;
mod flusher;
mod matching;

pub use api::Names;
pub(crate) use flusher::flusher;

#[cfg(test)]
mod tests {
    use super::flusher::{delta_frames, full_frames};
    use super::*;
    use throng_core::names::Op;
    use throng_core::Incarnation;

    fn me() -> Member {
        Member::new(NodeId::new("a").unwrap(), Incarnation(1))
    }

    fn decode(bytes: &[u8]) -> Msg {
        postcard::from_bytes(bytes).unwrap()
    }

    #[test]
    fn batches_split_into_consecutive_deltas_within_the_budget() {
        let ops: Vec<Op> = (0..1000)
            .map(|i| Op::Register {
                name: format!("name-{i}"),
                value: vec![0; 20],
                meta: vec![1; 30],
                stamp: 1,
            })
            .collect();
        let frames = delta_frames(
            &me(),
            Delta {
                first_seq: 7,
                ops: ops.clone(),
            },
            4096,
        );
        assert!(frames.len() > 10);
        let mut joined = Delta::default();
        for f in &frames {
            assert!(f.len() <= 4096, "{}", f.len());
            let Msg::Delta { from, delta } = decode(f) else {
                panic!("not a delta")
            };
            assert_eq!(from, me());
            joined.append(delta).unwrap();
        }
        assert_eq!(joined, Delta { first_seq: 7, ops });
        assert!(delta_frames(&me(), Delta::default(), 4096).is_empty());
    }

    #[test]
    fn full_states_split_into_numbered_parts_within_the_budget() {
        let entry = |i: u64| Entry {
            value: vec![0; 20],
            meta: vec![1; 30],
            seq: i,
            stamp: 1,
        };
        let state = FullState {
            seq: 99,
            names: (0..500).map(|i| (format!("n{i}"), entry(i))).collect(),
            groups: vec![(
                "g".into(),
                (0..500u32)
                    .map(|i| GroupMember {
                        value: i.to_le_bytes().to_vec(),
                        meta: vec![],
                    })
                    .collect(),
            )],
        };
        let parts = full_frames(&me(), state.clone(), 2048);
        assert!(parts.len() > 5);
        let mut names = Vec::new();
        let mut members = 0;
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= 2048, "{}", p.len());
            let Msg::Full {
                seq,
                index,
                last,
                names: n,
                groups,
                ..
            } = decode(p)
            else {
                panic!("not a full part")
            };
            assert_eq!((seq, index as usize, last), (99, i, i + 1 == parts.len()));
            names.extend(n);
            members += groups.iter().map(|(_, m)| m.len()).sum::<usize>();
        }
        assert_eq!(names, state.names);
        assert_eq!(members, 500);
        // An empty state is one (last) part.
        let empty = full_frames(&me(), FullState::default(), 2048);
        assert!(matches!(
            decode(&empty[0]),
            Msg::Full {
                index: 0,
                last: true,
                ..
            }
        ));
    }

    #[test]
    fn limits_must_fit_in_frames() {
        let default = NamesConfig::default();
        assert_eq!(effective_config(&default, 8 << 20).unwrap(), default);
        // The defaults shrink to fit small frames.
        let small = effective_config(&default, 16 * 1024).unwrap();
        assert!(small.max_name_len + small.max_value_len + small.max_meta_len <= 8 * 1024);
        assert_eq!(small.max_names, default.max_names);
        // Explicit limits that do not fit are refused.
        let big = NamesConfig {
            max_meta_len: 1 << 30,
            ..NamesConfig::default()
        };
        assert!(effective_config(&big, 8 << 20).is_err());
    }
}
