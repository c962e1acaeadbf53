//! Distributed supervisors: keyed children placed by a distribution strategy, addressed by key in
//! one hop, replicated to a backup node, failed over when their node dies.
//!
//! Each [`DistSupervisor`] runs, on every member node, one *driver* task that owns the node's
//! [`Directory`] (the sans-io state machine in `throng-core`) and carries out its decisions:
//! spawning and stopping local children, sending directory messages to peers, answering requests,
//! telling listeners. Requests from other nodes and directory messages arrive as frames and are
//! queued to the driver; children report their snapshots and exits to it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use throng_core::directory::{
    Action, ChildEvent, DirConfig, DirMsg, Directory, Distribution, Record, StartError, StopReason,
    Uniform,
};
use throng_core::{ExitClass, Intensity, NodeId, Ring};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::export_id::ExportId;
use super::keyed::{ChildError, ChildNote, Keyed, Slot};
use super::node::{Peer, Pending, Shared};
use super::outbox::Lane;
use super::wire::{self, Frame, RemoteFailure};
use super::Node;
use crate::supervisor::Shutdown;
use crate::{ActorHandle, ActorId, ActorRef, CallError, ExitReason, SendError};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The name of the supervisor behind [`Node::start_child`] and friends.
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
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            distribution: Arc::new(Uniform),
            quorum: None,
            nodes: None,
            intensity: Intensity::default(),
            max_moves: throng_core::directory::DEFAULT_MAX_MOVES,
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

/// Where a request's answer goes: to a caller on this node, or to a peer as a [`Frame::Reply`].
pub(super) enum Answer<T> {
    Local(oneshot::Sender<T>),
    Remote { peer: Arc<Peer>, id: u64 },
}

impl<T: serde::Serialize> Answer<T> {
    /// Deliver `value`; a remote answer waits for room in the peer's control lane.
    pub(super) async fn send(self, value: T) {
        match self {
            Answer::Local(tx) => {
                let _ = tx.send(value);
            }
            Answer::Remote { peer, id } => {
                // A caller whose connection is lost fails with `NodeDown` anyway.
                let result = Ok(wire::encode(&value));
                let _ = peer
                    .send_or_drop(Lane::Control, &Frame::Reply { id, result })
                    .await;
            }
        }
    }
}

fn stopped() -> StartError {
    StartError::Failed("supervisor stopped".into())
}

pub(super) enum Cmd {
    Start {
        record: Record,
        reply: Answer<Result<(), StartError>>,
    },
    Terminate {
        key: String,
        reply: Answer<Result<(), StartError>>,
    },
    List {
        reply: Answer<Vec<(String, String)>>,
    },
    Stats {
        reply: oneshot::Sender<DistStats>,
    },
    /// This node leaves: hand every child off; answer once done.
    Leave {
        reply: oneshot::Sender<()>,
    },
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
}

pub(crate) enum Internal {
    Note(ChildNote),
    Spawned {
        key: Arc<str>,
        result: Result<ActorHandle, String>,
        shutdown: Shutdown,
    },
    Exited {
        key: Arc<str>,
        id: ActorId,
        class: ExitClass,
    },
    Msg {
        from: NodeId,
        msg: DirMsg,
    },
    /// The connection to this peer was lost and re-established.
    Reconnected(NodeId),
    /// The eligible nodes changed: owners (up, not leaving) and leaving ones.
    View(Vec<NodeId>, Vec<NodeId>),
    /// Membership declared this node down.
    NodeDown(NodeId),
    /// The connection to this peer closed (any cause): copies it sent here while outside the
    /// view become orphans ([`Directory::disconnected`]).
    Disconnected(NodeId),
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
    /// Whether this node hosts children of this supervisor.
    member: bool,
    cmds: mpsc::Sender<Cmd>,
    internal: mpsc::UnboundedSender<Internal>,
    events: broadcast::Sender<DistEvent>,
}

impl Dist {
    /// Deliver a directory message from `from` (called by the connection reader).
    pub(crate) fn deliver(&self, from: NodeId, msg: &[u8]) {
        match postcard::from_bytes::<DirMsg>(msg) {
            Ok(msg) => {
                let _ = self.internal.send(Internal::Msg { from, msg });
            }
            Err(e) => tracing::warn!(peer = %from, error = %e, "bad directory message dropped"),
        }
    }

    /// Queue a start of the child whose encoded record is `record`; the outcome goes to
    /// `answer`. Waits for room in the driver's queue (backpressure on the caller, the
    /// connection's reader included).
    pub(super) async fn start(&self, record: &[u8], answer: Answer<Result<(), StartError>>) {
        let record: Record = match postcard::from_bytes(record) {
            Ok(r) => r,
            Err(e) => {
                return answer
                    .send(Err(StartError::Failed(format!("bad record: {e}"))))
                    .await
            }
        };
        if !self.member {
            let owner = self.owner(&record.key);
            return answer.send(Err(StartError::NotOwner { owner })).await;
        }
        if let Err(mpsc::error::SendError(Cmd::Start { reply, .. })) = self
            .cmds
            .send(Cmd::Start {
                record,
                reply: answer,
            })
            .await
        {
            reply.send(Err(stopped())).await;
        }
    }

    /// Queue a terminate of the child `key`; the outcome goes to `answer`.
    pub(super) async fn stop(&self, key: &str, answer: Answer<Result<(), StartError>>) {
        if !self.member {
            return answer
                .send(Err(StartError::NoSuchChild(key.to_owned())))
                .await;
        }
        let cmd = Cmd::Terminate {
            key: key.to_owned(),
            reply: answer,
        };
        if let Err(mpsc::error::SendError(Cmd::Terminate { reply, .. })) = self.cmds.send(cmd).await
        {
            reply.send(Err(stopped())).await;
        }
    }

    /// Queue a list of the children running here; the list goes to `answer`.
    pub(super) async fn list(&self, answer: Answer<Vec<(String, String)>>) {
        if !self.member {
            return answer.send(Vec::new()).await;
        }
        if let Err(mpsc::error::SendError(Cmd::List { reply })) =
            self.cmds.send(Cmd::List { reply: answer }).await
        {
            reply.send(Vec::new()).await;
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

    /// The eligible nodes among `owners` (the node's placement view) and `leaving`.
    pub(crate) fn set_view(&self, owners: &[NodeId], leaving: &[NodeId]) {
        let eligible = |n: &&NodeId| self.opts.nodes.as_ref().is_none_or(|s| s.contains(*n));
        let nodes: Vec<NodeId> = owners.iter().filter(eligible).cloned().collect();
        let leaving: Vec<NodeId> = leaving.iter().filter(eligible).cloned().collect();
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            if let Ok(r) = Ring::from_nodes(view.config(), nodes.iter().cloned()) {
                *view = r;
            }
        }
        self.view_changed.notify_waiters();
        if self.member {
            // On the same queue as peers' directory messages, so that a message sent after a
            // peer saw a view change is handled after this node's own view change is.
            let _ = self.internal.send(Internal::View(nodes, leaving));
        }
    }

    fn owner(&self, key: &str) -> Option<NodeId> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        self.opts.distribution.owner(key.as_bytes(), &view)
    }

    fn export_name(&self, key: &str) -> String {
        export_name(&self.name, key)
    }
}

fn export_name(sup: &str, key: &str) -> String {
    ExportId::Child { sup, key }.encode()
}

struct Running {
    handle: ActorHandle,
    slot: Arc<Slot>,
    /// How it is stopped ([`Keyed::shutdown`] of its type).
    shutdown: Shutdown,
}

/// The task that owns a node's directory of one supervisor.
struct Driver {
    dir: Directory,
    dist: Weak<Dist>,
    shared: Weak<Shared>,
    me: NodeId,
    requests: HashMap<u64, Answer<Result<(), StartError>>>,
    next_req: u64,
    /// By key; the key is shared with the child's exit watcher and snapshot observer.
    running: HashMap<Arc<str>, Running>,
    /// Slots of children being spawned, by key, until `Spawned` arrives.
    pending_slots: HashMap<String, Arc<Slot>>,
    /// Children stopping to merge another copy's state (`Action::Merge`), with that copy.
    merging: HashMap<String, Record>,
    /// `Node::leave` waiting for every child to be handed off.
    leave_waiters: Vec<oneshot::Sender<()>>,
    epoch: Instant,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let actions = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // The node shuts down: its children stop with it.
                    for r in self.running.values() {
                        r.handle.stop(ExitReason::Shutdown);
                    }
                    return;
                }
                i = internal.recv() => match i {
                    Some(i) => self.on_internal(i),
                    None => return,
                },
                c = cmds.recv() => match c {
                    Some(c) => self.on_cmd(c).await,
                    None => return,
                },
            };
            self.execute(actions).await;
            if !self.leave_waiters.is_empty() && self.dir.handed_off() {
                for w in self.leave_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) -> Vec<Action> {
        match cmd {
            Cmd::Start { record, reply } => {
                let req = self.req(reply);
                self.dir.start(req, record)
            }
            Cmd::Terminate { key, reply } => {
                let req = self.req(reply);
                self.dir.terminate(req, &key)
            }
            Cmd::List { reply } => {
                let list = self
                    .dir
                    .owned()
                    .iter()
                    .filter(|(k, _)| {
                        self.running
                            .get(k.as_str())
                            .is_some_and(|r| r.handle.is_alive())
                    })
                    .map(|(k, o)| (k.clone(), o.record.actor_type.clone()))
                    .collect();
                reply.send(list).await;
                Vec::new()
            }
            Cmd::Leave { reply } => {
                self.leave_waiters.push(reply);
                self.dir.leave()
            }
            Cmd::Stats { reply } => {
                let _ = reply.send(DistStats {
                    owned: self.dir.owned().len(),
                    running: self
                        .running
                        .values()
                        .filter(|r| r.handle.is_alive())
                        .count(),
                    backups: self.dir.backup_count(),
                    unreplicated: self.dir.unreplicated(),
                });
                Vec::new()
            }
        }
    }

    fn req(&mut self, reply: Answer<Result<(), StartError>>) -> u64 {
        self.next_req += 1;
        self.requests.insert(self.next_req, reply);
        self.next_req
    }

    fn on_internal(&mut self, i: Internal) -> Vec<Action> {
        match i {
            Internal::Note(ChildNote::Snapshot { key, slot }) => {
                let current = self
                    .running
                    .get(&*key)
                    .is_some_and(|r| Arc::ptr_eq(&r.slot, &slot));
                let bytes = slot
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match bytes {
                    Some(b) if current => self.dir.snapshot(&key, b),
                    _ => Vec::new(),
                }
            }
            Internal::Spawned {
                key,
                result,
                shutdown,
            } => match result {
                Ok(handle) => {
                    let id = handle.id();
                    let slot = self.slot_for(&key);
                    self.running.insert(
                        key.clone(),
                        Running {
                            handle: handle.clone(),
                            slot,
                            shutdown,
                        },
                    );
                    let internal = self.dist.upgrade().map(|d| d.internal.clone());
                    let k = key.clone();
                    handle.on_exit(move |_, reason| {
                        if let Some(tx) = internal {
                            let _ = tx.send(Internal::Exited {
                                key: k,
                                id,
                                class: reason.class(),
                            });
                        }
                    });
                    self.dir.spawned(&key, Ok(()))
                }
                Err(e) => {
                    self.running.remove(&key);
                    self.dir.spawned(&key, Err(e))
                }
            },
            Internal::Exited { key, id, class } => {
                let current = self.running.get(&key).is_some_and(|r| r.handle.id() == id);
                if !current {
                    return Vec::new();
                }
                let r = self.running.remove(&key).expect("present");
                // A snapshot still waiting is newer than the one replicated; the final one newer
                // still (taken as the child stopped cleanly).
                let last = r.slot.last.lock().unwrap_or_else(|p| p.into_inner()).take();
                let pending = r
                    .slot
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                let mut out = Vec::new();
                if let (Some(p), true) = (pending, last.is_none()) {
                    out.extend(self.dir.snapshot(&key, p));
                }
                if let Some(theirs) = self.merging.remove(&*key) {
                    // A conflict: the winner (this copy) stopped; merge the loser's state in.
                    let ours = last.or_else(|| {
                        self.dir
                            .owned()
                            .get(&*key)
                            .and_then(|o| o.record.snapshot.clone())
                    });
                    let merged = self
                        .host(&theirs.actor_type)
                        .and_then(|h| h.merge(&key, ours.as_deref(), theirs.snapshot.as_deref()));
                    out.extend(self.dir.merged(&key, merged));
                    return out;
                }
                out.extend(self.dir.exited(&key, class, last, self.epoch.elapsed()));
                out
            }
            Internal::Msg { from, msg } => self.dir.receive(&from, msg),
            Internal::Reconnected(peer) => self.dir.reconnected(&peer),
            Internal::View(owners, leaving) => self.dir.set_members(owners.iter(), leaving.iter()),
            Internal::NodeDown(node) => self.dir.node_down(&node),
            Internal::Disconnected(node) => self.dir.disconnected(&node),
        }
    }

    fn host(&self, actor_type: &str) -> Option<Arc<dyn super::keyed::HostType>> {
        self.shared
            .upgrade()?
            .types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(actor_type)
            .cloned()
    }

    /// The slot a child spawned for `key` reports to (created by `execute` before spawning).
    fn slot_for(&mut self, key: &str) -> Arc<Slot> {
        self.pending_slots.remove(key).unwrap_or_default()
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            tracing::trace!(node = %self.me, ?action, "directory action");
            match action {
                Action::Spawn(record) => {
                    if let Some(extra) = self.spawn(record) {
                        queue.extend(extra);
                    }
                }
                Action::Merge { key, theirs } => {
                    self.merging.insert(key.clone(), theirs);
                    queue.push_back(Action::Stop {
                        key,
                        reason: StopReason::Move,
                    });
                }
                Action::Stop { key, reason } => {
                    if let Some(r) = self.running.get(key.as_str()) {
                        let handle = r.handle.clone();
                        let grace = match r.shutdown {
                            Shutdown::Brutal => {
                                handle.kill();
                                continue;
                            }
                            Shutdown::Timeout(d) => Some(d),
                            Shutdown::Infinity => None,
                        };
                        match reason {
                            // Drained: what it accepted is handled (and in its final snapshot);
                            // what comes after is refused, so callers send it to the new owner.
                            StopReason::Move | StopReason::Terminate => handle.drain_stop(),
                            _ => handle.stop(ExitReason::Shutdown),
                        }
                        if let Some(grace) = grace {
                            // Not one of the node's tasks: it ends within the child's grace, and
                            // the node's shutdown does not wait for children to finish stopping.
                            tokio::spawn(async move {
                                if tokio::time::timeout(grace, handle.monitor()).await.is_err() {
                                    handle.kill();
                                }
                            });
                        }
                    }
                }
                Action::Send { to, msg } => {
                    if to == self.me {
                        queue.extend(self.dir.receive(&self.me.clone(), msg));
                        continue;
                    }
                    let (Some(shared), Some(dist)) = (self.shared.upgrade(), self.dist.upgrade())
                    else {
                        return;
                    };
                    let Some(peer) = shared.peer_handle(&to) else {
                        tracing::debug!(peer = %to, "directory message to an unknown peer dropped");
                        continue;
                    };
                    let frame = Frame::Dir {
                        sup: dist.name.to_string(),
                        msg: wire::encode(&msg),
                    };
                    let _ = peer.send_or_drop(Lane::Data, &frame).await;
                }
                Action::Reply { req, result } => {
                    if let Some(answer) = self.requests.remove(&req) {
                        answer.send(result).await;
                    }
                }
                Action::Event(event) => {
                    if let Some(dist) = self.dist.upgrade() {
                        log_event(&dist.name, &event);
                        let _ = dist.events.send(DistEvent {
                            supervisor: dist.name.clone(),
                            node: self.me.clone(),
                            event,
                        });
                    }
                }
            }
        }
    }

    /// Start the child of `record` on its own task; its outcome comes back as `Spawned`.
    fn spawn(&mut self, record: Record) -> Option<Vec<Action>> {
        let (shared, dist) = (self.shared.upgrade()?, self.dist.upgrade()?);
        let host = shared
            .types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(record.actor_type.as_str())
            .cloned();
        let Some(host) = host else {
            return Some(self.dir.spawned(
                &record.key,
                Err(format!("unknown actor type {}", record.actor_type)),
            ));
        };
        let slot = Arc::new(Slot::default());
        self.pending_slots.insert(record.key.clone(), slot.clone());
        let internal = dist.internal.clone();
        // Unbounded, yet bounded in practice: a child has at most one snapshot note pending
        // (coalescing in its slot) and one exit.
        let notes = internal.clone();
        let export = dist.export_name(&record.key);
        let key: Arc<str> = Arc::from(record.key.as_str());
        let shutdown = host.shutdown();
        shared.tasks.clone().spawn(async move {
            let result = host
                .spawn(&shared, &export, &record, key.clone(), slot, notes)
                .await;
            let _ = internal.send(Internal::Spawned {
                key,
                result,
                shutdown,
            });
        });
        None
    }
}

fn log_event(sup: &str, event: &ChildEvent) {
    // Per-child events come by the hundred thousand when a big node fails or a partition heals:
    // they are for listeners (`DistSupervisor::events`) and debug logs, not for the default log.
    match event {
        ChildEvent::GaveUp { key, restarts } => {
            tracing::warn!(supervisor = sup, %key, restarts, "child restarted too often; removed")
        }
        other => tracing::debug!(supervisor = sup, event = ?other, "child event"),
    }
}

/// A handle on one distributed supervisor, from this node. Cheap to clone.
#[derive(Clone)]
pub struct DistSupervisor {
    dist: Arc<Dist>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DistSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistSupervisor")
            .field("name", &self.dist.name)
            .field("node", &self.shared.id)
            .finish()
    }
}

impl Shared {
    /// Create (or return) the supervisor `name` on this node.
    pub(crate) fn dist(self: &Arc<Self>, name: &str, opts: DistOptions) -> Arc<Dist> {
        let mut dists = self.dists.write().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dists.get(name) {
            return d.clone();
        }
        let member = opts.nodes.as_ref().is_none_or(|s| s.contains(&self.id));
        let ring_config = self.ring_config();
        let (cmds, cmd_rx) = mpsc::channel(DRIVER_QUEUE);
        // Unbounded, and what bounds it: per child, at most one snapshot note (coalesced in its
        // slot), one spawn outcome and one exit; per view change, one note; per peer, what its
        // connection delivers (directory messages, read as fast as the driver's own sends to
        // that peer are written). A bound with backpressure on the reader would let two drivers
        // that each wait on the other's full lane deadlock through their readers; the way out
        // (the driver never waiting on the network, with drop-and-reconcile at a byte budget
        // per connection) is not built yet.
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let dist = Arc::new(Dist {
            name: Arc::from(name),
            view: RwLock::new(Ring::new(ring_config)),
            view_changed: tokio::sync::Notify::new(),
            member,
            cmds,
            internal,
            events: broadcast::channel(CHILD_EVENT_CAPACITY).0,
            opts: opts.clone(),
        });
        if member {
            let mut config = DirConfig::new(self.id.clone());
            config.ring = ring_config;
            config.distribution = opts.distribution.clone();
            config.intensity = opts.intensity;
            config.quorum = opts.quorum;
            config.max_moves = opts.max_moves.max(1);
            // Copies made by this run are told apart from those of earlier runs of this node.
            config.incarnation = self.incarnation.get();
            let driver = Driver {
                dir: Directory::new(config),
                dist: Arc::downgrade(&dist),
                shared: Arc::downgrade(self),
                me: self.id.clone(),
                requests: HashMap::new(),
                next_req: 0,
                running: HashMap::new(),
                pending_slots: HashMap::new(),
                merging: HashMap::new(),
                leave_waiters: Vec::new(),
                epoch: Instant::now(),
            };
            self.tasks
                .spawn(driver.run(cmd_rx, internal_rx, self.stop_token()));
        }
        dist.set_view(&self.owner_nodes(), &self.leaving_nodes());
        dists.insert(name.to_owned(), dist.clone());
        dist
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

    /// Queue `note()` to every supervisor's driver.
    pub(crate) fn dists_notify(&self, note: impl Fn() -> Internal) {
        let dists = self.dists.read().unwrap_or_else(|p| p.into_inner());
        for d in dists.values() {
            let _ = d.internal.send(note());
        }
    }

    /// Tell every supervisor the placement view changed.
    pub(crate) fn dists_view(&self) {
        let owners = self.owner_nodes();
        let leaving = self.leaving_nodes();
        let dists: Vec<Arc<Dist>> = self
            .dists
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for d in dists {
            d.set_view(&owners, &leaving);
        }
    }
}

impl Node {
    /// Allow this node to host distributed children of type `A`. Register the same types on every
    /// node that may own keys.
    pub fn register<A: Keyed>(&self) {
        self.shared
            .types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                A::TYPE,
                Arc::new(super::keyed::Host::<A>(std::marker::PhantomData)),
            );
    }

    /// The distributed supervisor `name` on this node, started with `opts` if it is not running
    /// yet (`opts` is ignored otherwise). Start it with the same options on every node.
    pub fn supervisor(&self, name: &str, opts: DistOptions) -> DistSupervisor {
        DistSupervisor {
            dist: self.shared.dist(name, opts),
            shared: self.shared.clone(),
        }
    }

    /// The default distributed supervisor ([`DEFAULT_SUPERVISOR`], uniform placement over all
    /// nodes).
    pub fn default_supervisor(&self) -> DistSupervisor {
        self.supervisor(DEFAULT_SUPERVISOR, DistOptions::default())
    }

    /// [`DistSupervisor::start_child`] on the default supervisor.
    pub async fn start_child<A: Keyed>(
        &self,
        key: &str,
        args: A::Args,
    ) -> Result<ActorRef<A>, ChildError> {
        self.default_supervisor().start_child::<A>(key, args).await
    }

    /// [`DistSupervisor::terminate_child`] on the default supervisor.
    pub async fn terminate_child<A: Keyed>(&self, key: &str) -> Result<(), ChildError> {
        self.default_supervisor().terminate_child(key).await
    }

    /// [`DistSupervisor::children`] on the default supervisor.
    pub async fn children(&self) -> Result<Vec<ChildInfo>, ChildError> {
        self.default_supervisor().children().await
    }

    /// [`DistSupervisor::hosts`] on the default supervisor.
    pub fn hosts<A: Keyed>(&self, key: &str) -> bool {
        self.default_supervisor().hosts(key)
    }

    /// [`DistSupervisor::child`] on the default supervisor.
    pub fn child<A: Keyed>(&self, key: &str) -> Option<ActorRef<A>> {
        self.default_supervisor().child::<A>(key)
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
        self.node_for(key).as_ref() == Some(&self.shared.id)
    }

    /// Whether the child `key` runs on this node.
    pub fn hosts(&self, key: &str) -> bool {
        self.shared.is_exported(&self.dist.export_name(key))
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
        self.shared.remote::<A>(owner, &self.dist.export_name(key))
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
        loop {
            let owner = self
                .node_for(key)
                .ok_or_else(|| CallError::NodeDown("(no node owns keys)".into()))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = if owner == self.shared.id {
                let msg = match first.take() {
                    Some(m) => m,
                    None => {
                        postcard::from_bytes(&body).map_err(|e| CallError::Codec(e.to_string()))?
                    }
                };
                match self.shared.local_export::<A>(&name) {
                    Some(child) => child.call_timeout(msg, left).await,
                    None => Err(CallError::NoSuchActor(ExportId::describe(&name))),
                }
            } else {
                first = None;
                self.shared
                    .route::<A>(&owner, &name)
                    .call_body(body.clone(), left)
                    .await
            };
            match result {
                Err(CallError::Exited(_) | CallError::NoSuchActor(_))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Send to the child `key` without waiting for a reply (one hop to its owner; a cast refused
    /// locally by a moving child is sent again, a remote one cannot be).
    pub async fn cast<A: Keyed>(&self, key: &str, msg: A::Msg) -> Result<(), SendError> {
        let owner = self
            .node_for(key)
            .ok_or_else(|| SendError::NodeDown("(no node owns keys)".into()))?;
        let name = self.dist.export_name(key);
        if owner == self.shared.id {
            if let Some(child) = self.shared.local_export::<A>(&name) {
                return child.cast(msg).await;
            }
        }
        self.shared
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
        let record = Record {
            key: key.to_owned(),
            actor_type: A::TYPE.to_owned(),
            args: postcard::to_allocvec(&args).map_err(|e| ChildError::Codec(e.to_string()))?,
            policy: A::restart(),
            snapshot: None,
            version: 0,
            generation: 0,
        };
        let encoded = wire::encode(&record);
        let mut owner = self
            .node_for(key)
            .ok_or_else(|| ChildError::NodeDown("(no node owns keys)".into()))?;
        for _ in 0..4 {
            let result = if owner == self.shared.id {
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
                Err(e) => return Err(child_error(e, &owner, A::TYPE)),
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
        let result = if owner == self.shared.id {
            self.dist.request_stop(key).await
        } else {
            let (sup, key) = (self.dist.name.to_string(), key.to_owned());
            let bytes = self.ask(&owner, |id| Frame::Stop { id, sup, key }).await?;
            postcard::from_bytes::<Result<(), StartError>>(&bytes)
                .map_err(|e| ChildError::Codec(e.to_string()))?
        };
        result.map_err(|e| child_error(e, &owner, ""))
    }

    /// Every child of this supervisor in the cluster with the node it runs on, asking every
    /// eligible node at once (sorted by node, then key). Fails if a node does not answer within
    /// [`CHILD_OP_TIMEOUT`].
    pub async fn children(&self) -> Result<Vec<ChildInfo>, ChildError> {
        let asks = self.nodes().into_iter().map(|node| async move {
            let list = if node == self.shared.id {
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
        let shared = &self.shared;
        let down = || ChildError::NodeDown(peer_id.to_string());
        let peer = shared.peer_handle(peer_id).ok_or_else(down)?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Pending {
                    peer: peer_id.clone(),
                    tx,
                },
            );
        let exchange = async {
            peer.send(&frame(id)).await.map_err(|_| down())?;
            rx.await.map_err(|_| down())
        };
        let result = match tokio::time::timeout(CHILD_OP_TIMEOUT, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => {
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                return Err(down());
            }
        };
        result.map_err(|f| match f {
            RemoteFailure::NoSuchActor(s) => ChildError::NoSupervisor(s),
            other => ChildError::Failed(format!("{other:?}")),
        })
    }
}

fn child_error(e: StartError, owner: &NodeId, actor_type: &str) -> ChildError {
    match e {
        StartError::AlreadyStarted(k) => ChildError::AlreadyStarted(k),
        StartError::NoSuchChild(k) => ChildError::NoSuchChild(k),
        StartError::NoQuorum { seen, needed } => ChildError::NoQuorum { seen, needed },
        StartError::NotOwner { .. } => ChildError::Unsettled(e.to_string()),
        StartError::Failed(m) if m.starts_with("unknown actor type") => ChildError::UnknownType {
            node: owner.to_string(),
            actor_type: actor_type.to_owned(),
        },
        StartError::Failed(m) => ChildError::Failed(m),
    }
}
