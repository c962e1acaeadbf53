//! Distributed supervisors: keyed children placed by a distribution strategy, addressed by key in
//! one hop, replicated to a backup node, failed over when their node dies.
//!
//! Each [`DistSupervisor`] runs, on every member node, one *driver* task (`driver`) that owns
//! the node's [`Directory`] (the sans-io state machine in `throng-core`) inside a
//! [`throng_core::driver::Driver`], the executor the simulator runs too, and carries out its
//! decisions on tokio: spawning and stopping local children, sending directory messages to peers,
//! answering requests, telling listeners. Requests from other nodes and directory messages arrive
//! as frames and are queued to the driver; children report their snapshots and exits to it. This
//! module holds the public API ([`DistSupervisor`]) and the per-node state (`Dist`).

mod driver;
mod early;
mod host;
mod joins;
mod persist;
mod takeover;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use throng_core::directory::{
    ChildEvent, DirConfig, Directory, Distribution, StartError, StartSpec, Uniform,
};
use throng_core::driver::Driver;
use throng_core::{Intensity, NodeId, Ring};
use tokio::sync::{broadcast, mpsc, oneshot};

pub(in crate::cluster) use driver::Answer;
use driver::Cmd;
pub(crate) use driver::{Input, Note};
use host::HostType;
pub(crate) use persist::{decode_entry, encode_entry};

use super::export_id::ExportId;
use super::keyed::{ChildError, Keyed};
use super::transport::Transport;
use super::wire::{self, Frame, RemoteFailure};
use crate::{ActorRef, CallError, SendError};

pub(crate) use super::transport::BoxFuture;

/// The name of the supervisor behind [`Node::start_child`](crate::cluster::Node::start_child) and friends.
pub const DEFAULT_SUPERVISOR: &str = "default";

/// How long distributed-child operations wait for the owner to answer.
pub const CHILD_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on queued requests and view changes per driver (senders wait when it is full).
const DRIVER_QUEUE: usize = 4096;

/// Listeners buffer this many child events; a slower one sees `Lagged`.
pub const CHILD_EVENT_CAPACITY: usize = 4096;

/// How a distributed supervisor places and restarts its children.
#[derive(Clone)]
pub struct DistOptions {
    /// Placement strategy (default: [`Uniform`], the consistent-hash ring).
    pub distribution: Arc<dyn Distribution>,
    /// Uniform-quorum: the configured cluster size. A node that sees fewer than half of it stops
    /// its children of this supervisor and refuses new ones.
    pub quorum: Option<usize>,
    /// The nodes that may host this supervisor's children (default: all). Other nodes can still
    /// start and address children; they forward to the owners.
    pub nodes: Option<BTreeSet<NodeId>>,
    /// Restart intensity, counted per child.
    pub intensity: Intensity,
    /// Rebalancing throttle: at most this many children of this supervisor are moving off this
    /// node at once (a join or a leave moves the rest as these complete).
    pub max_moves: usize,
    /// Whether the children's records are kept in the node's durable store (its `data_dir` or
    /// `store_url`), so that they survive a restart of every node. Default:
    /// [`Durability::None`].
    pub durability: Durability,
}

/// Whether a supervisor's children survive the loss of every copy in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// In memory only: a child survives the loss of its owner or of its backup, not of both.
    #[default]
    None,
    /// Every node also writes what it holds (the records of the children it runs, the copies it
    /// keeps, the tombstones of removed children) to its store (`data_dir` or `store_url`), in
    /// group commits at most `max_lag` after the change. After a restart of every node, each child
    /// runs again on its owner from its last durable state, and a removed child stays removed.
    /// Needs [`NodeConfig::data_dir`](crate::cluster::NodeConfig::data_dir) or
    /// [`NodeConfig::store_url`](crate::cluster::NodeConfig::store_url) on every node.
    Async {
        /// How long a change may wait to be written with others (the coalescing window).
        max_lag: Duration,
    },
    /// As [`Durability::Async`], and a call's reply is released only once the state the child
    /// had after handling it is durable on this node's store *and* held by the key's backup (its
    /// replication acknowledged; a child with no other node to back it up waits for the store
    /// alone): an acknowledged call survives a crash of every node, and a failover from the
    /// backup. (Two copies that diverge after a failover — an owner cut off by a partition goes
    /// on applying calls it cannot acknowledge — are merged by [`Keyed::resolve_conflict`]; with
    /// its default, which keeps one side, an acknowledged call can still be lost there: see
    /// docs/benchmarks.md, "Chaos soak".) The child is snapshotted after every message (whatever its
    /// [`SnapshotPolicy`](crate::cluster::SnapshotPolicy)); writes are group-committed with no
    /// coalescing window, so concurrent calls share a commit. A call that only reads waits for
    /// the state it read to be durable too. Casts are not held. A reply whose state is not yet
    /// durable when the node stops or the child fails is never sent: the caller sees an error
    /// and the state it would have acknowledged is not kept (retrying it applies it once).
    Sync,
}

impl Durability {
    /// [`Durability::Async`] with a 10 ms window.
    pub const ASYNC: Durability = Durability::Async {
        max_lag: Duration::from_millis(10),
    };
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            distribution: Arc::new(Uniform),
            quorum: None,
            nodes: None,
            intensity: Intensity::default(),
            max_moves: throng_core::directory::DEFAULT_MAX_MOVES,
            durability: Durability::None,
        }
    }
}

impl std::fmt::Debug for DistOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistOptions")
            .field("quorum", &self.quorum)
            .field("nodes", &self.nodes)
            .field("intensity", &self.intensity)
            .field("max_moves", &self.max_moves)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// A child event, with the supervisor and node it happened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEvent {
    /// The supervisor.
    pub supervisor: Arc<str>,
    /// The node that reports it.
    pub node: NodeId,
    /// What happened.
    pub event: ChildEvent,
}

/// One child as [`DistSupervisor::children`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChildInfo {
    /// The node it runs on.
    pub node: NodeId,
    /// Its key.
    pub key: String,
    /// Its actor type.
    pub actor_type: String,
}

fn stopped() -> StartError {
    StartError::Failed("supervisor stopped".into())
}

/// What one node's part of a distributed supervisor holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DistStats {
    /// Children this node is responsible for (running, starting or stopping).
    pub owned: usize,
    /// Children running here now.
    pub running: usize,
    /// Backups held here for other nodes' children.
    pub backups: usize,
    /// Children whose latest record is not yet acknowledged by their backup.
    pub unreplicated: usize,
    /// Keys whose durable entry changed and is not yet written to the store (0 without
    /// durability).
    pub unwritten: usize,
    /// Durable entries (puts and deletes) this node has written to its store for this
    /// supervisor since it started, in commits that succeeded (0 without durability). Its rate
    /// is the node's durable snapshots per second.
    pub written: u64,
    /// Group commits that succeeded since start (`written / commits` is the mean batch).
    pub commits: u64,
}

/// The per-node state of one distributed supervisor.
pub(crate) struct Dist {
    name: Arc<str>,
    opts: DistOptions,
    /// Ring over the eligible nodes, as of the last view change (read by the API, written by the
    /// driver).
    view: RwLock<Ring>,
    /// Woken at every view change (for [`DistSupervisor::wait_for_quorum`]).
    view_changed: tokio::sync::Notify,
    /// The recent joiners of `view`: where a key that moves to one may still run.
    joins: Mutex<joins::Joins>,
    /// Whether this node hosts children of this supervisor.
    member: bool,
    cmds: mpsc::Sender<Cmd>,
    input: mpsc::Sender<Input>,
    events: broadcast::Sender<DistEvent>,
    /// Why this supervisor refuses starts (durability asked of a node without a store).
    /// (Set at creation, or by the driver when the store cannot be read.)
    refused: std::sync::OnceLock<String>,
}

impl Dist {
    /// Deliver a directory message from `from` (called by the connection reader, which waits
    /// for room in the driver's queue: backpressure on the peer).
    pub(crate) async fn deliver(&self, from: NodeId, msg: &[u8]) {
        match wire::decode_dir_batch(msg) {
            Ok(msgs) => {
                for msg in msgs {
                    let from = from.clone();
                    if self.input.send(Input::Msg { from, msg }).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(peer = %from, error = %e, "bad directory messages dropped"),
        }
    }

    /// Queue a start of the child whose encoded [`StartSpec`] is `record`; the outcome goes to
    /// `answer`. Waits for room in the driver's queue (backpressure on the caller, the
    /// connection's reader included).
    pub(super) async fn start(&self, record: &[u8], answer: Answer<Result<(), StartError>>) {
        let spec: StartSpec = match postcard::from_bytes(record) {
            Ok(s) => s,
            Err(e) => {
                return answer.send(Err(StartError::Failed(format!("bad record: {e}"))));
            }
        };
        if !self.member {
            let owner = self.owner(&spec.key);
            return answer.send(Err(StartError::NotOwner { owner }));
        }
        if let Err(mpsc::error::SendError(Cmd::Start { reply, .. })) = self
            .cmds
            .send(Cmd::Start {
                spec,
                reply: answer,
            })
            .await
        {
            reply.send(Err(stopped()));
        }
    }

    /// Queue a terminate of the child `key`; the outcome goes to `answer`.
    pub(super) async fn stop(&self, key: &str, answer: Answer<Result<(), StartError>>) {
        if !self.member {
            return answer.send(Err(StartError::NoSuchChild(key.to_owned())));
        }
        let cmd = Cmd::Terminate {
            key: key.to_owned(),
            reply: answer,
        };
        if let Err(mpsc::error::SendError(Cmd::Terminate { reply, .. })) = self.cmds.send(cmd).await
        {
            reply.send(Err(stopped()));
        }
    }

    /// Queue a list of the children running here; the list goes to `answer`.
    pub(super) async fn list(&self, answer: Answer<Vec<(String, String)>>) {
        if !self.member {
            return answer.send(Vec::new());
        }
        if let Err(mpsc::error::SendError(Cmd::List { reply })) =
            self.cmds.send(Cmd::List { reply: answer }).await
        {
            reply.send(Vec::new());
        }
    }

    pub(crate) async fn request_start(&self, record: &[u8]) -> Result<(), StartError> {
        let (tx, rx) = oneshot::channel();
        self.start(record, Answer::Local(tx)).await;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub(crate) async fn request_stop(&self, key: &str) -> Result<(), StartError> {
        let (tx, rx) = oneshot::channel();
        self.stop(key, Answer::Local(tx)).await;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub(crate) async fn request_list(&self) -> Vec<(String, String)> {
        let (tx, rx) = oneshot::channel();
        self.list(Answer::Local(tx)).await;
        rx.await.unwrap_or_default()
    }

    /// The eligible nodes among `owners` (the node's placement view) and `leaving`: the ring the
    /// API reads at once, the driver's view in its turn.
    pub(crate) async fn set_view(&self, owners: &[NodeId], leaving: &[NodeId]) {
        if let Some(view) = self.set_ring(owners, leaving) {
            // On the same queue as peers' directory messages, so that a message sent after a
            // peer saw a view change is handled after this node's own view change is.
            let _ = self.input.send(view).await;
        }
    }

    /// Install the ring of the eligible nodes among `owners`; returns the view change for this
    /// node's driver, if it has one.
    fn set_ring(&self, owners: &[NodeId], leaving: &[NodeId]) -> Option<Input> {
        let eligible = |n: &&NodeId| self.opts.nodes.as_ref().is_none_or(|s| s.contains(*n));
        let nodes: Vec<NodeId> = owners.iter().filter(eligible).cloned().collect();
        let leaving: Vec<NodeId> = leaving.iter().filter(eligible).cloned().collect();
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            if let Ok(r) = Ring::from_nodes(view.config(), nodes.iter().cloned()) {
                self.joins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .changed(&r, std::time::Instant::now());
                *view = r;
            }
        }
        self.view_changed.notify_waiters();
        self.member.then_some(Input::View(nodes, leaving))
    }

    fn owner(&self, key: &str) -> Option<NodeId> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        self.opts.distribution.owner(key.as_bytes(), &view)
    }

    /// Where the child `key`, which `owner` does not run, may still run: its owners before the
    /// nodes that joined lately (see `joins`).
    fn owners_before_joins(&self, key: &str, owner: &NodeId) -> Vec<NodeId> {
        self.joins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .owners_before(
                self.opts.distribution.as_ref(),
                key,
                owner,
                std::time::Instant::now(),
            )
    }

    fn export_name(&self, key: &str) -> String {
        export_name(&self.name, key)
    }
}

fn export_name(sup: &str, key: &str) -> String {
    ExportId::Child { sup, key }.encode()
}

/// A handle on one distributed supervisor, from this node. Cheap to clone.
#[derive(Clone)]
pub struct DistSupervisor {
    dist: Arc<Dist>,
    shared: Arc<Supervisors>,
}

impl std::fmt::Debug for DistSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistSupervisor")
            .field("name", &self.dist.name)
            .field("node", &self.shared.t.id)
            .finish()
    }
}

/// The distributed supervisors of one node and the actor types it hosts.
pub(crate) struct Supervisors {
    /// The node's transport.
    pub(crate) t: Arc<Transport>,
    /// Actor types this node can host as distributed children, by type name.
    types: RwLock<HashMap<&'static str, Arc<dyn HostType>>>,
    /// The distributed supervisors running on this node, by name.
    dists: RwLock<HashMap<String, Arc<Dist>>>,
    /// The node's durable store (its `data_dir` or `store_url`), if it has one.
    pub(crate) store: std::sync::OnceLock<Arc<dyn throng_store::Store>>,
    /// Directory messages for supervisors not started here yet (see [`early`]). Locked only
    /// while `dists` is, read or written, so that a supervisor starting takes every message kept
    /// for it before any other reaches it.
    early: Mutex<early::Early>,
}

impl Supervisors {
    /// No supervisors yet, over `t`.
    pub(crate) fn new(t: Arc<Transport>) -> Arc<Self> {
        Arc::new(Supervisors {
            t,
            types: RwLock::new(HashMap::new()),
            dists: RwLock::new(HashMap::new()),
            store: std::sync::OnceLock::new(),
            early: Mutex::new(early::Early::default()),
        })
    }

    /// Allow this node to host distributed children of type `A`.
    pub(crate) fn register<A: Keyed>(&self) {
        self.types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(A::TYPE, Arc::new(host::Host::<A>(std::marker::PhantomData)));
    }

    /// The registered type `actor_type`.
    fn host_type(&self, actor_type: &str) -> Option<Arc<dyn HostType>> {
        self.types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(actor_type)
            .cloned()
    }

    /// A handle on the supervisor `name`, started with `opts` if it is not running yet.
    pub(crate) fn supervisor(self: &Arc<Self>, name: &str, opts: DistOptions) -> DistSupervisor {
        DistSupervisor {
            dist: self.dist(name, opts),
            shared: self.clone(),
        }
    }

    /// Create (or return) the supervisor `name` on this node.
    pub(crate) fn dist(self: &Arc<Self>, name: &str, opts: DistOptions) -> Arc<Dist> {
        let mut dists = self.dists.write().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dists.get(name) {
            return d.clone();
        }
        let member = opts.nodes.as_ref().is_none_or(|s| s.contains(&self.t.id));
        let ring_config = self.t.ring_config();
        let (cmds, cmd_rx) = mpsc::channel(DRIVER_QUEUE);
        // Peers' messages, connection notices and view changes; producers wait for room (the
        // driver never waits on the network, so it always drains this queue).
        let (input, input_rx) = mpsc::channel(DRIVER_QUEUE);
        // Children's notes: see `Note` for what bounds them.
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let store = match opts.durability {
            Durability::None => None,
            Durability::Async { .. } | Durability::Sync => self.store.get().cloned(),
        };
        let refused = std::sync::OnceLock::new();
        if store.is_some() && name == persist::VIEWS_SCOPE {
            // That scope of the store holds every durable supervisor's view: nothing of this
            // supervisor is written there.
            let _ = refused.set(format!("supervisor name {name:?} is reserved by Throng"));
        }
        let store = store.filter(|_| name != persist::VIEWS_SCOPE);
        let no_store = opts.durability != Durability::None && store.is_none();
        if let Some(why) = (no_store && refused.get().is_none()).then(|| {
            let why = format!(
                "supervisor {name:?} asks for durability {:?}, but node {} has no durable store: set data_dir (THRONG_DATA_DIR) or store_url (THRONG_STORE_URL)",
                opts.durability, self.t.id
            );
            tracing::error!("{why}");
            why
        }) {
            let _ = refused.set(why);
        }
        let dist = Arc::new(Dist {
            name: Arc::from(name),
            view: RwLock::new(Ring::new(ring_config)),
            view_changed: tokio::sync::Notify::new(),
            joins: Mutex::new(joins::Joins::new(self.t.id.clone(), Ring::new(ring_config))),
            member,
            cmds,
            input,
            events: broadcast::channel(CHILD_EVENT_CAPACITY).0,
            opts: opts.clone(),
            refused,
        });
        if member {
            let mut config = DirConfig::new(self.t.id.clone());
            config.ring = ring_config;
            config.distribution = opts.distribution.clone();
            config.intensity = opts.intensity;
            config.quorum = opts.quorum;
            config.max_moves = opts.max_moves.max(1);
            config.replies_wait_for_backup = opts.durability == Durability::Sync;
            // Copies made by this run are told apart from those of earlier runs of this node.
            config.incarnation = self.t.incarnation.get();
            let takeover = store
                .clone()
                .filter(|_| opts.durability != Durability::None)
                .and_then(|s| takeover::TakeOver::new(s, name));
            let persister = match (store, opts.durability) {
                (Some(store), Durability::Async { max_lag }) => {
                    config.durable = true;
                    Some(persist::Persister::new(store, name, max_lag, false))
                }
                (Some(store), Durability::Sync) => {
                    config.durable = true;
                    Some(persist::Persister::new(store, name, Duration::ZERO, true))
                }
                _ => None,
            };
            let sync = persister.is_some() && opts.durability == Durability::Sync;
            let task = driver::Task::new(
                Driver::new(Directory::new(config)),
                &dist,
                self,
                notes,
                persister,
                sync,
                takeover,
            );
            let queues = driver::Queues {
                cmds: cmd_rx,
                input: input_rx,
                notes: notes_rx,
            };
            self.t.tasks.spawn(task.run(queues, self.t.stop_token()));
        }
        if let Some(view) = dist.set_ring(&self.t.owner_nodes(), &self.t.leaving_nodes()) {
            // The queue was just made: it has room.
            let _ = dist.input.try_send(view);
        }
        // What peers sent before this supervisor existed, first (the queue holds twice what is
        // kept; a supervisor that hosts nothing here has no driver and drops them).
        let kept = self
            .early
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(name, std::time::Instant::now());
        if !kept.is_empty() {
            tracing::debug!(
                supervisor = name,
                messages = kept.len(),
                "directory messages that arrived before the supervisor started delivered"
            );
        }
        for (from, msg) in kept {
            let _ = dist.input.try_send(Input::Msg { from, msg });
        }
        dists.insert(name.to_owned(), dist.clone());
        dist
    }

    /// Directory messages (`batch`, encoded) from `from` for supervisor `sup`: delivered to it,
    /// or kept until it starts here (see [`early`]).
    pub(crate) async fn deliver_dir(&self, from: &NodeId, sup: &str, batch: &[u8]) {
        let dist = {
            let dists = self.dists.read().unwrap_or_else(|p| p.into_inner());
            match dists.get(sup) {
                Some(d) => Some(d.clone()),
                None => {
                    match wire::decode_dir_batch(batch) {
                        Ok(msgs) => {
                            let dropped = self
                                .early
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .keep(sup, from, msgs, batch.len(), std::time::Instant::now());
                            if dropped > 0 {
                                tracing::warn!(peer = %from, supervisor = sup, dropped, "directory messages for a supervisor not started here dropped (too many kept)");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(peer = %from, error = %e, "bad directory messages dropped")
                        }
                    }
                    None
                }
            }
        };
        if let Some(d) = dist {
            d.deliver(from.clone(), batch).await;
        }
    }

    /// The connection to `peer` closed: directory messages kept from it for supervisors not
    /// started yet are dropped, as if lost with it.
    pub(crate) fn forget_early(&self, peer: &NodeId) {
        let _dists = self.dists.read().unwrap_or_else(|p| p.into_inner());
        self.early
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(peer);
    }

    pub(crate) fn find_dist(&self, name: &str) -> Option<Arc<Dist>> {
        self.dists
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Hand every distributed child of this node off to its new owner (this node is leaving);
    /// returns when all are handed off or `timeout` passed (then what is left stops with the
    /// node and fails over from its backups).
    pub(crate) async fn dists_leave(&self, timeout: Duration) -> bool {
        let dists: Vec<Arc<Dist>> = self
            .dists
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|d| d.member)
            .cloned()
            .collect();
        let waits = dists.into_iter().map(|d| async move {
            let (tx, rx) = oneshot::channel();
            if d.cmds.send(Cmd::Leave { reply: tx }).await.is_err() {
                return true;
            }
            rx.await.is_ok()
        });
        tokio::time::timeout(timeout, futures_util::future::join_all(waits))
            .await
            .map(|all| all.into_iter().all(|ok| ok))
            .unwrap_or(false)
    }

    /// Queue `input()` to every supervisor's driver, waiting for room.
    pub(crate) async fn dists_notify(&self, input: impl Fn() -> Input) {
        let dists: Vec<Arc<Dist>> = self
            .dists
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|d| d.member)
            .cloned()
            .collect();
        for d in dists {
            let _ = d.input.send(input()).await;
        }
    }

    /// Tell every supervisor the placement view changed.
    pub(crate) async fn dists_view(&self) {
        let owners = self.t.owner_nodes();
        let leaving = self.t.leaving_nodes();
        let dists: Vec<Arc<Dist>> = self
            .dists
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for d in dists {
            d.set_view(&owners, &leaving).await;
        }
    }
}

impl DistSupervisor {
    /// The supervisor's name.
    pub fn name(&self) -> &str {
        &self.dist.name
    }

    /// The nodes that may own this supervisor's keys, as this node sees them (sorted).
    pub fn nodes(&self) -> Vec<NodeId> {
        self.dist
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes()
            .to_vec()
    }

    /// Wait until this node sees a quorum of the supervisor's nodes (Horde's
    /// `wait_for_quorum`): at once without quorum mode; otherwise at most `timeout`, then
    /// [`ChildError::NoQuorum`] with what is seen.
    pub async fn wait_for_quorum(&self, timeout: Duration) -> Result<(), ChildError> {
        let Some(size) = self.dist.opts.quorum else {
            return Ok(());
        };
        let needed = size / 2 + 1;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so that a change in between is not missed.
            let changed = self.dist.view_changed.notified();
            let seen = self.nodes().len();
            if seen >= needed {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ChildError::NoQuorum { seen, needed });
            }
        }
    }

    /// The node that owns `key` in this node's view (computed locally; no table, no hop).
    pub fn node_for(&self, key: &str) -> Option<NodeId> {
        self.dist.owner(key)
    }

    /// Where the child `key` runs, as far as this node can tell without asking: its owner.
    pub fn whereis(&self, key: &str) -> Option<NodeId> {
        self.node_for(key)
    }

    /// Whether this node owns `key`.
    pub fn mine(&self, key: &str) -> bool {
        self.node_for(key).as_ref() == Some(&self.shared.t.id)
    }

    /// Whether the child `key` runs on this node.
    pub fn hosts(&self, key: &str) -> bool {
        self.shared.t.is_exported(&self.dist.export_name(key))
    }

    /// Subscribe to child events reported by this node (started, restarted, stopped, failed over,
    /// migrated, conflict, gave up).
    pub fn events(&self) -> broadcast::Receiver<DistEvent> {
        self.dist.events.subscribe()
    }

    /// A reference to the child of type `A` with `key` on its owner (one hop; errors surface on
    /// `call`/`cast`). `None` while no node owns keys.
    pub fn child<A: Keyed>(&self, key: &str) -> Option<ActorRef<A>> {
        let owner = self.node_for(key)?;
        Some(self.remote::<A>(&owner, key))
    }

    fn remote<A: Keyed>(&self, owner: &NodeId, key: &str) -> ActorRef<A> {
        self.shared
            .t
            .remote::<A>(owner, &self.dist.export_name(key))
    }

    /// Call the child `key` and wait for its reply, at most [`crate::DEFAULT_CALL_TIMEOUT`]: one
    /// hop to its owner. See [`DistSupervisor::call_timeout`].
    pub async fn call<A: Keyed>(&self, key: &str, msg: A::Msg) -> Result<A::Reply, CallError> {
        self.call_timeout::<A>(key, msg, crate::DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Call the child `key` and wait for its reply, at most `timeout` in all.
    ///
    /// While the child moves (its node leaves, a node joins, or it fails over), a call that
    /// reaches a copy that no longer accepts messages — or a node that does not run the child
    /// yet — was not delivered; it is sent again to the owner of the moment until it is handled
    /// or `timeout` passes. A call is therefore handled at most once, and not lost to a move. A
    /// call whose connection is lost in flight fails with [`CallError::NodeDown`] (it may or may
    /// not have been handled).
    pub async fn call_timeout<A: Keyed>(
        &self,
        key: &str,
        msg: A::Msg,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let name = self.dist.export_name(key);
        // Encoded once: sent as is to a remote owner, and kept in case the call must be sent
        // again (the typed message goes to a local owner on the first attempt).
        let body = postcard::to_allocvec(&msg).map_err(|e| CallError::Codec(e.to_string()))?;
        let mut first = Some(msg);
        let mut pause = Duration::from_millis(1);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let owner = self
                .node_for(key)
                .ok_or_else(|| CallError::NodeDown("(no node owns keys)".into()))?;
            let mut result = self
                .call_on::<A>(&owner, &name, &mut first, &body, deadline)
                .await;
            if matches!(result, Err(CallError::NoSuchActor(_))) {
                // Not there (yet): a key that moves to a node that joined lately runs on its old
                // holder until the hand-off; nothing was delivered, so it may be asked instead.
                for before in self.dist.owners_before_joins(key, &owner) {
                    result = self
                        .call_on::<A>(&before, &name, &mut first, &body, deadline)
                        .await;
                    if !matches!(result, Err(CallError::NoSuchActor(_))) {
                        break;
                    }
                }
            }
            match result {
                Err(CallError::Exited(_) | CallError::NoSuchActor(_))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) if attempts > 1 => {
                    tracing::debug!(
                        supervisor = %self.dist.name, key, %owner, attempts, error = %e,
                        "call given up after attempts its owner refused"
                    );
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// One attempt of a call to the child exported as `name` on `node` (the typed message in
    /// `first` goes to a local child on a first attempt; `body` is its encoding).
    async fn call_on<A: Keyed>(
        &self,
        node: &NodeId,
        name: &str,
        first: &mut Option<A::Msg>,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<A::Reply, CallError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if *node == self.shared.t.id {
            match self.shared.t.local_export::<A>(name) {
                Some(child) => {
                    let msg = match first.take() {
                        Some(m) => m,
                        None => postcard::from_bytes(body)
                            .map_err(|e| CallError::Codec(e.to_string()))?,
                    };
                    child.call_timeout(msg, left).await
                }
                None => Err(CallError::NoSuchActor(ExportId::describe(name))),
            }
        } else {
            *first = None;
            self.shared
                .t
                .route::<A>(node, name)
                .call_body(body.to_vec(), left)
                .await
        }
    }

    /// Send to the child `key` without waiting for a reply (one hop to its owner; a cast refused
    /// locally by a moving child is sent again, a remote one cannot be).
    pub async fn cast<A: Keyed>(&self, key: &str, msg: A::Msg) -> Result<(), SendError> {
        let owner = self
            .node_for(key)
            .ok_or_else(|| SendError::NodeDown("(no node owns keys)".into()))?;
        let name = self.dist.export_name(key);
        if owner == self.shared.t.id {
            if let Some(child) = self.shared.t.local_export::<A>(&name) {
                return child.cast(msg).await;
            }
        }
        self.shared
            .t
            .remote_ref::<A>(&owner, &name, false)
            .cast(msg)
            .await
    }

    /// Start the child of type `A` with `key` on the node that owns the key, from `args`. Returns
    /// once it runs there and its backup node holds its spec.
    pub async fn start_child<A: Keyed>(
        &self,
        key: &str,
        args: A::Args,
    ) -> Result<ActorRef<A>, ChildError> {
        if let Some(why) = self.dist.refused.get() {
            return Err(ChildError::NotDurable(why.clone()));
        }
        // The owner draws the child's generation and makes its record.
        let spec = StartSpec {
            key: key.to_owned(),
            actor_type: A::TYPE.to_owned(),
            args: postcard::to_allocvec(&args).map_err(|e| ChildError::Codec(e.to_string()))?,
            policy: A::restart(),
        };
        let encoded = wire::encode(&spec);
        let mut owner = self
            .node_for(key)
            .ok_or_else(|| ChildError::NodeDown("(no node owns keys)".into()))?;
        for _ in 0..4 {
            let result = if owner == self.shared.t.id {
                self.dist.request_start(&encoded).await
            } else {
                let sup = self.dist.name.to_string();
                let bytes = self
                    .ask(&owner, |id| Frame::Start {
                        id,
                        sup,
                        record: encoded.clone(),
                    })
                    .await?;
                postcard::from_bytes::<Result<(), StartError>>(&bytes)
                    .map_err(|e| ChildError::Codec(e.to_string()))?
            };
            match result {
                Ok(()) => return Ok(self.remote::<A>(&owner, key)),
                Err(StartError::NotOwner { owner: Some(o) }) if o != owner => {
                    owner = o;
                    continue;
                }
                Err(StartError::NotOwner { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    owner = self
                        .node_for(key)
                        .ok_or_else(|| ChildError::NodeDown("(no node owns keys)".into()))?;
                    continue;
                }
                Err(e) => return Err(child_error(e, &owner)),
            }
        }
        Err(ChildError::Unsettled(key.to_owned()))
    }

    /// Stop the child `key` for good on its owner (it is not restarted, and its backup is
    /// dropped).
    pub async fn terminate_child(&self, key: &str) -> Result<(), ChildError> {
        let owner = self
            .node_for(key)
            .ok_or_else(|| ChildError::NodeDown("(no node owns keys)".into()))?;
        let result = if owner == self.shared.t.id {
            self.dist.request_stop(key).await
        } else {
            let (sup, key) = (self.dist.name.to_string(), key.to_owned());
            let bytes = self.ask(&owner, |id| Frame::Stop { id, sup, key }).await?;
            postcard::from_bytes::<Result<(), StartError>>(&bytes)
                .map_err(|e| ChildError::Codec(e.to_string()))?
        };
        result.map_err(|e| child_error(e, &owner))
    }

    /// Every child of this supervisor in the cluster with the node it runs on, asking every
    /// eligible node at once (sorted by node, then key). Fails if a node does not answer within
    /// [`CHILD_OP_TIMEOUT`].
    pub async fn children(&self) -> Result<Vec<ChildInfo>, ChildError> {
        let asks = self.nodes().into_iter().map(|node| async move {
            let list = if node == self.shared.t.id {
                self.dist.request_list().await
            } else {
                let sup = self.dist.name.to_string();
                let bytes = self.ask(&node, |id| Frame::List { id, sup }).await?;
                postcard::from_bytes::<Vec<(String, String)>>(&bytes)
                    .map_err(|e| ChildError::Codec(e.to_string()))?
            };
            Ok::<_, ChildError>(
                list.into_iter()
                    .map(|(key, actor_type)| ChildInfo {
                        node: node.clone(),
                        key,
                        actor_type,
                    })
                    .collect::<Vec<_>>(),
            )
        });
        let mut all = Vec::new();
        for part in futures_util::future::join_all(asks).await {
            all.extend(part?);
        }
        all.sort();
        Ok(all)
    }

    /// This node's part of the supervisor (zeros on a node outside its node subset).
    pub async fn stats(&self) -> DistStats {
        if !self.dist.member {
            return DistStats::default();
        }
        let (tx, rx) = oneshot::channel();
        if self.dist.cmds.send(Cmd::Stats { reply: tx }).await.is_err() {
            return DistStats::default();
        }
        rx.await.unwrap_or_default()
    }

    /// How many children of this supervisor run in the cluster.
    pub async fn count_children(&self) -> Result<usize, ChildError> {
        Ok(self.children().await?.len())
    }

    /// Send `frame` (built with a fresh request id) to `peer` and wait for its reply's bytes.
    async fn ask(
        &self,
        peer_id: &NodeId,
        frame: impl FnOnce(u64) -> Frame,
    ) -> Result<Vec<u8>, ChildError> {
        let t = &self.shared.t;
        let down = || ChildError::NodeDown(peer_id.to_string());
        let peer = t.peer_handle(peer_id).ok_or_else(down)?;
        let send = |id| async move { peer.send(&frame(id)).await };
        let result = t
            .request(peer_id, CHILD_OP_TIMEOUT, send)
            .await
            .map_err(|_| down())?;
        result.map_err(|f| match f {
            RemoteFailure::NoSuchActor(s) => ChildError::NoSupervisor(s),
            other => ChildError::Failed(format!("{other:?}")),
        })
    }
}

fn child_error(e: StartError, owner: &NodeId) -> ChildError {
    match e {
        StartError::AlreadyStarted(k) => ChildError::AlreadyStarted(k),
        StartError::NoSuchChild(k) => ChildError::NoSuchChild(k),
        StartError::NoQuorum { seen, needed } => ChildError::NoQuorum { seen, needed },
        StartError::NotOwner { .. } => ChildError::Unsettled(e.to_string()),
        StartError::UnknownType { actor_type } => ChildError::UnknownType {
            node: owner.to_string(),
            actor_type,
        },
        StartError::Failed(m) => ChildError::Failed(m),
    }
}
