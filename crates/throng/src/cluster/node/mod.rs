//! A Throng node: the transport between nodes and actors addressed across them.
//!
//! Connections: exactly one TCP connection per pair of nodes, dialed by the node whose name sorts
//! first and accepted by the other, so two nodes never race to open duplicate connections and the
//! order of frames between them is the order they were queued. The dialer reconnects with capped
//! exponential backoff. Each connection starts with the authenticated handshake of `cluster::wire`
//! and then seals every frame — or, in TLS mode ([`Security::Tls`]), runs inside mutual TLS where
//! each side's certificate must come from the cluster CA and name the node it claims to be.
//!
//! Queues: each peer has a bounded *control* lane (replies, monitors) and a bounded *data* lane
//! (requests), into which senders encode their frames directly (`cluster::outbox`). The writer
//! always drains control first, so bulk requests never delay a reply or a down notice; a full data
//! lane makes senders wait (backpressure) or, for `try_cast`, hands the message back. Incoming requests are delivered in order: a cast waits for mailbox room before the
//! next frame is read, which pushes back through TCP to the sender.
//!
//! Calls: a call is a `Request` frame with an id; the reply completes the pending entry. A lost
//! connection fails every call in flight to that peer with `NodeDown` (it may or may not have been
//! handled — the caller decides whether to retry).
//!
//! Files: this one holds the public [`Node`], the shared state and the frame demux (`on_frame`);
//! `conn` the handshake, listener, links, writer and reader; `route` `RemoteRoute` and remote
//! references; `export` the export table; `glue` membership carried into the node.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rand::{RngExt, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use throng_core::{Incarnation, NodeId, RingConfig};
use throng_membership::{MemberInfo, Membership, MembershipEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dist::Answer;
use super::export_id::ExportId;
use super::outbox::{Lane, Limits, Outbox, PushError, FRAME_OVERHEAD};
use super::tls::{self, Security};
use super::view::{ClusterEvent, ClusterSubscription, View};
use super::wire::{
    self, Auth, ClusterKey, Frame, FrameRef, Hello, HelloAck, Opener, RemoteFailure, Role, Sealer,
    WireError, WireExit,
};
use super::NodeConfig;
use crate::actor_ref::{Envelope, ReplyTo};
use crate::cell::Cell;
use crate::mailbox::SendFailure;
use crate::{Actor, ActorHandle, ActorRef, CallError, ExitReason, SendError, TrySendError};

mod conn;
mod export;
mod glue;
mod route;

use conn::*;
use export::*;
use glue::*;

/// An actor that can be addressed from other nodes: its messages and replies are serde types, and it
/// has a stable type name (checked on every remote request, since Rust type names are not stable
/// across builds).
pub trait RemoteActor:
    Actor<Msg: Serialize + DeserializeOwned, Reply: Serialize + DeserializeOwned>
{
    /// The actor type's name, the same on every node.
    const TYPE: &'static str;
}

/// Limits and timings of a node's transport.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Largest frame accepted or sent, in bytes (default 8 MiB).
    pub max_frame: usize,
    /// Frames queued per peer for requests (default 4096); senders wait beyond it, or beyond
    /// `max_frame` queued bytes (an empty queue always takes one frame).
    pub data_queue: usize,
    /// Frames queued per peer for replies and control (default 1024; the same byte bound).
    pub control_queue: usize,
    /// How long a handshake may take (default 5 s).
    pub handshake_timeout: Duration,
    /// Reconnect backoff: first and maximum delay (defaults 50 ms, 2 s).
    pub backoff: (Duration, Duration),
    /// How connections are authenticated and encrypted (default: the shared secret).
    pub security: Security,
    /// Limits on this node's entries in the cluster-wide name registry ([`Node::names`]).
    pub names: super::names::NamesConfig,
    /// What happens to a local actor that loses its registered name to a concurrent registration
    /// on another node (default: it keeps running; Horde stops it).
    pub name_conflicts: super::names::OnConflict,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            max_frame: 8 << 20,
            data_queue: 4096,
            control_queue: 1024,
            handshake_timeout: Duration::from_secs(5),
            backoff: (Duration::from_millis(50), Duration::from_secs(2)),
            security: Security::SharedSecret,
            names: super::names::NamesConfig::default(),
            name_conflicts: super::names::OnConflict::default(),
        }
    }
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The RPC listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A limit is out of range.
    #[error("invalid node option: {0}")]
    Config(String),
    /// Membership could not start.
    #[error("membership: {0}")]
    Membership(#[from] throng_membership::MembershipError),
}

/// Exporting an actor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Another live actor is exported under this name.
    #[error("name {0:?} is already exported")]
    Taken(String),
    /// The actor has exited.
    #[error("actor has exited")]
    NotAlive,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An authenticated, sealed connection to one peer.
struct Conn {
    reader: FramedRead<ReadHalf, LengthDelimitedCodec>,
    writer: FramedWrite<WriteHalf, LengthDelimitedCodec>,
    sealer: Sealer,
    opener: Opener,
    incarnation: u64,
}

pub(super) struct Peer {
    id: NodeId,
    /// Frames for this peer, encoded, waiting for the writer.
    out: Outbox,
    inbound: mpsc::Sender<Conn>,
    addr: Mutex<Option<SocketAddr>>,
    connected: std::sync::atomic::AtomicBool,
    /// A supervisor dropped a frame for this peer while it was not connected
    /// ([`Peer::send_or_drop`]): the next connection tells the directories to reconcile.
    dropped: std::sync::atomic::AtomicBool,
    /// Frames that found their lane full, from senders that must not wait ([`Peer::send_now`]),
    /// moved into the outbox in order by the peer's backlog task.
    backlog: mpsc::Sender<(Lane, Frame)>,
    /// Frames in `backlog` or being moved: while there are any, later frames queue behind them.
    backlog_len: std::sync::atomic::AtomicUsize,
    /// Ends the current connection (the backlog overflowed: the peer reads slower than this
    /// node sends, for too long); the next connection reconciles.
    reset: tokio::sync::Notify,
    stop: CancellationToken,
    /// The node's tasks (see [`Shared::tasks`]).
    tasks: TaskTracker,
}

/// Frames a peer's backlog holds ([`Peer::send_now`]) before the connection is reset.
pub(super) const BACKLOG_FRAMES: usize = 16_384;

impl Peer {
    /// Queue `frame` for a sender that must not stall on a peer it cannot reach (a supervisor's
    /// driver, which serves every child): while the connection is up, wait for room in `lane`
    /// (backpressure); while it is down and the lane is full, drop the frame and remember it, so
    /// that the next connection makes the directories reconcile (as after any lost connection).
    /// Without this, a peer that refuses our connections (it declared this node down) while this
    /// node's view still holds it would hold the driver at its full lane.
    pub(super) async fn send_or_drop(&self, lane: Lane, frame: &Frame) -> Result<(), PushError> {
        match self.out.try_push(lane, |b| encode_frame(b, frame)) {
            Err(PushError::Full) => {}
            other => return other,
        }
        if !self.connected.load(Ordering::Acquire) {
            self.dropped.store(true, Ordering::SeqCst);
            // Connected meanwhile: the link may have looked at `dropped` before it was set, so
            // this frame must not be lost; wait for room (the flag costs a spare reconcile).
            if !self.connected.load(Ordering::SeqCst) {
                tracing::debug!(peer = %self.id, "frame for a disconnected peer with a full lane dropped; reconciled on reconnection");
                return Ok(());
            }
        }
        self.out.push(lane, |b| encode_frame(b, frame)).await
    }

    /// Queue `frame` on the data lane, waiting for room.
    pub(super) async fn send(&self, frame: &Frame) -> Result<(), PushError> {
        self.out.push(Lane::Data, |b| encode_frame(b, frame)).await
    }

    /// Queue `frame` on the control lane, waiting for room.
    pub(super) async fn control(&self, frame: &Frame) -> Result<(), PushError> {
        self.out
            .push(Lane::Control, |b| encode_frame(b, frame))
            .await
    }

    /// Queue `frame` on the control lane if it has room.
    pub(super) fn try_control(&self, frame: &Frame) -> Result<(), PushError> {
        self.out.try_push(Lane::Control, |b| encode_frame(b, frame))
    }

    /// Queue a control frame from a task that must not wait (an actor's): at once if the lane has
    /// room, else from a task of its own.
    fn control_from_actor(self: &Arc<Self>, frame: Frame) {
        if let Err(PushError::Full) = self.try_control(&frame) {
            self.control_later(frame);
        }
    }

    /// Queue a control frame behind the backlog (its lane was full).
    fn control_later(self: &Arc<Self>, frame: Frame) {
        self.backlog_push(Lane::Control, frame);
    }

    /// Queue `frame` for a sender that must never wait on the network (a supervisor's driver,
    /// an actor answering a call): into `lane` at once if it has room and nothing is waiting in
    /// the backlog, else into the backlog, which the peer's backlog task moves into the outbox in
    /// order. Past [`BACKLOG_FRAMES`] the frame is dropped, and the connection is reset so that
    /// the next one makes the directories reconcile (as after any lost connection).
    pub(crate) fn send_now(&self, lane: Lane, frame: Frame) {
        if self.backlog_len.load(Ordering::Acquire) == 0 {
            match self.out.try_push(lane, |b| encode_frame(b, &frame)) {
                Err(PushError::Full) => {}
                Err(e) => {
                    tracing::debug!(peer = %self.id, error = ?e, "frame not queued");
                    return;
                }
                Ok(()) => return,
            }
        }
        self.backlog_push(lane, frame);
    }

    fn backlog_push(&self, lane: Lane, frame: Frame) {
        self.backlog_len.fetch_add(1, Ordering::AcqRel);
        if self.backlog.try_send((lane, frame)).is_err() {
            self.backlog_len.fetch_sub(1, Ordering::AcqRel);
            self.dropped.store(true, Ordering::SeqCst);
            if self.connected.load(Ordering::SeqCst) {
                tracing::warn!(peer = %self.id, frames = BACKLOG_FRAMES,
                    "peer backlog full: frame dropped, connection reset to reconcile");
                self.reset.notify_one();
            }
        }
    }

    /// The backlog task: moves frames from the backlog into the outbox, in order, waiting for
    /// room (or dropping them while the peer is disconnected, see [`Peer::send_or_drop`]).
    async fn run_backlog(
        peer: Weak<Peer>,
        mut rx: mpsc::Receiver<(Lane, Frame)>,
        stop: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv() => n,
            };
            let (Some((lane, frame)), Some(p)) = (next, peer.upgrade()) else {
                return;
            };
            let _ = p.send_or_drop(lane, &frame).await;
            p.backlog_len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Send a call's outcome from the actor's task (see [`Peer::control_from_actor`]); a reply
    /// over the frame limit is answered with a failure that says so, not dropped.
    fn reply_from_actor(self: &Arc<Self>, id: u64, result: Result<Vec<u8>, RemoteFailure>) {
        let size = result.as_ref().map_or(0, |r| r.len());
        let frame = Frame::Reply { id, result };
        match self.try_control(&frame) {
            Err(PushError::TooLarge { max, .. }) => {
                tracing::warn!(peer = %self.id, size, max, "reply over the frame limit not sent");
                self.control_from_actor(Frame::Reply {
                    id,
                    result: Err(RemoteFailure::Failed(format!(
                        "reply of {size} bytes exceeds the {max}-byte frame limit"
                    ))),
                });
            }
            Err(PushError::Full) => self.control_later(frame),
            _ => {}
        }
    }
}

fn encode_frame(buf: &mut Vec<u8>, frame: &Frame) -> Result<(), String> {
    wire::append(buf, frame).map_err(|e| e.to_string())
}

pub(super) struct Pending {
    pub(super) peer: NodeId,
    pub(super) tx: oneshot::Sender<Result<Vec<u8>, RemoteFailure>>,
}

pub(crate) struct Shared {
    pub(super) id: NodeId,
    pub(super) incarnation: Incarnation,
    key: ClusterKey,
    opts: NodeOptions,
    rpc_addr: SocketAddr,
    /// By name; the name is shared with the watcher that removes the export (one copy).
    exports: RwLock<HashMap<Arc<str>, Arc<dyn Export>>>,
    /// Bumped at every change of `exports`, so that readers may cache what they looked up.
    exports_version: AtomicU64,
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    pub(super) next_id: AtomicU64,
    /// Actor types this node can host as distributed children, by type name.
    pub(super) types: RwLock<HashMap<&'static str, Arc<dyn super::keyed::HostType>>>,
    /// The distributed supervisors running on this node, by name.
    pub(super) dists: RwLock<HashMap<String, Arc<super::dist::Dist>>>,
    /// This node's replica of the cluster-wide name registry.
    pub(super) names: super::names::NamesState,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    /// Proxy cells standing for remote actors, by (peer, monitor id).
    proxies: Mutex<HashMap<(NodeId, u64), Weak<Cell>>>,
    /// Members, leaving members, the placement ring, and their listeners.
    pub(super) view: View,
    /// When each (address, reason) refusal was last logged at warn, so that a peer retrying
    /// every few seconds (or an attacker) cannot flood the log.
    refusals: Mutex<HashMap<(std::net::IpAddr, String), tokio::time::Instant>>,
    stop: CancellationToken,
    /// Every task the node spawns (listener, connections, flusher, membership glue, drivers):
    /// [`Node::shutdown`] waits for them.
    pub(super) tasks: TaskTracker,
}

/// A refusal from the same address for the same reason is logged at warn at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Bound on remembered refusals; beyond it the memory is cleared (and the next ones logged).
const REFUSAL_LOG_KEYS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are plain map updates; a poisoned lock still guards a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long [`Node::leave`] waits for its distributed children to be handed off.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(60);

/// A running node. Dropping it (or [`Node::shutdown`]) closes its listener and connections.
pub struct Node {
    pub(super) shared: Arc<Shared>,
    membership: Option<Arc<Membership>>,
}

impl Node {
    /// Start a node named `id` listening for peers on `rpc_bind`, authenticating them with `secret`
    /// or, if `opts.security` is [`Security::Tls`], with mutual TLS (the handshake inside TLS still
    /// proves the secret).
    pub async fn start(
        id: NodeId,
        incarnation: Incarnation,
        rpc_bind: SocketAddr,
        secret: &[u8],
        opts: NodeOptions,
    ) -> Result<Node, NodeError> {
        Node::start_with_ring(
            id,
            incarnation,
            rpc_bind,
            secret,
            opts,
            RingConfig::default(),
        )
        .await
    }

    async fn start_with_ring(
        id: NodeId,
        incarnation: Incarnation,
        rpc_bind: SocketAddr,
        secret: &[u8],
        opts: NodeOptions,
        ring: RingConfig,
    ) -> Result<Node, NodeError> {
        if opts.max_frame < 1024 || opts.max_frame > (1 << 30) {
            return Err(NodeError::Config(format!(
                "max_frame {} must be within 1 KiB..=1 GiB",
                opts.max_frame
            )));
        }
        if opts.data_queue == 0 || opts.control_queue == 0 {
            return Err(NodeError::Config(
                "queues must hold at least one frame".into(),
            ));
        }
        let names_config = super::names::effective_config(&opts.names, opts.max_frame)
            .map_err(NodeError::Config)?;
        if let Security::Tls(t) = &opts.security {
            // Peers will refuse this node; say why here rather than only in their logs.
            if let Err(e) = t.check_identity(&id) {
                tracing::warn!(node = %id, error = %e, "TLS certificate does not identify this node");
            }
        }
        let listener = TcpListener::bind(rpc_bind)
            .await
            .map_err(|source| NodeError::Bind {
                addr: rpc_bind,
                source,
            })?;
        let rpc_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: rpc_bind,
            source,
        })?;
        let names = super::names::NamesState::new(
            throng_core::Member::new(id.clone(), incarnation),
            names_config,
            opts.max_frame,
            opts.name_conflicts,
        );
        let shared = Arc::new(Shared {
            id: id.clone(),
            incarnation,
            key: ClusterKey::from_secret(secret),
            opts,
            rpc_addr,
            exports: RwLock::new(HashMap::new()),
            exports_version: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            peers: Mutex::new(HashMap::new()),
            proxies: Mutex::new(HashMap::new()),
            types: RwLock::new(HashMap::new()),
            dists: RwLock::new(HashMap::new()),
            names,
            view: View::new(id.clone(), ring),
            refusals: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        shared.dist(
            super::dist::DEFAULT_SUPERVISOR,
            super::dist::DistOptions::default(),
        );
        shared.tasks.spawn(accept_loop(
            Arc::downgrade(&shared),
            listener,
            shared.stop.clone(),
        ));
        shared.tasks.spawn(super::names::flusher(
            Arc::downgrade(&shared),
            shared.stop.clone(),
        ));
        Ok(Node {
            shared,
            membership: None,
        })
    }

    /// Start a node from `config` and join the cluster: the transport, then membership (seeds,
    /// failure detection), whose events connect and disconnect peers and reach [`Node::events`].
    /// The incarnation is the wall-clock time in milliseconds, so a restarted node is a new one.
    pub async fn join(config: NodeConfig) -> Result<Node, NodeError> {
        let incarnation = Incarnation(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1),
        );
        let mut node = Node::start_with_ring(
            config.name.clone(),
            incarnation,
            config.rpc_bind,
            config.membership.secret.as_bytes(),
            config.transport.clone(),
            config.ring,
        )
        .await?;
        let membership =
            Membership::start(config.name, incarnation, node.rpc_addr(), config.membership).await?;
        let membership = Arc::new(membership);
        node.shared.tasks.spawn(membership_glue(
            Arc::downgrade(&node.shared),
            Arc::downgrade(&membership),
            node.shared.stop.clone(),
        ));
        node.membership = Some(membership);
        Ok(node)
    }

    /// Subscribe to the cluster: the members up now and every change after them, taken
    /// atomically, so that a listener never misses a member. Handle the snapshot first
    /// ([`ClusterSubscription::replay`] gives it as events), then the stream; on `Lagged`,
    /// subscribe again and start from the new snapshot.
    ///
    /// ```no_run
    /// # async fn f(node: throng::cluster::Node) {
    /// use throng::cluster::ClusterEvent;
    /// let mut sub = node.subscribe();
    /// for e in sub.replay() {
    ///     println!("{e:?}");
    /// }
    /// while let Ok(e) = sub.events.recv().await {
    ///     if let ClusterEvent::NodeUp(m) = e {
    ///         println!("{} is up", m.id);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self) -> ClusterSubscription {
        self.shared.view.subscribe()
    }

    /// The changes from now on, without the members of the moment: a listener that must know
    /// every member uses [`Node::subscribe`].
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.shared.view.events()
    }

    /// The nodes of the cluster as this node sees them, itself included, sorted by name.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .shared
            .view
            .members()
            .into_iter()
            .map(|i| i.id)
            .collect();
        v.push(self.shared.id.clone());
        v.sort();
        v
    }

    /// The node that owns `key` by consistent hashing over the members that are up and not leaving
    /// (this node included). Every node with the same membership view answers the same.
    pub fn node_for(&self, key: &[u8]) -> Option<NodeId> {
        self.shared.view.node_for(key)
    }

    /// Whether this node owns `key`.
    pub fn mine(&self, key: &[u8]) -> bool {
        self.node_for(key).as_ref() == Some(&self.shared.id)
    }

    /// The nodes that currently own keys (up and not leaving), sorted.
    pub fn owners(&self) -> Vec<NodeId> {
        self.shared.view.owners()
    }

    /// The other live members with their addresses (leaving ones included), as listeners have
    /// been told of them.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.shared.view.members()
    }

    /// The gossip address of this node, if it joined a cluster.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.membership.as_ref().map(|m| m.local().gossip_addr)
    }

    /// Leave gracefully: announce `leaving` (others see [`ClusterEvent::NodeLeaving`] then
    /// [`ClusterEvent::NodeDown`]), leave the membership, and close every connection.
    ///
    /// Before it goes, every distributed child hosted here is handed off to its new owner with
    /// its exact state (drain-stop, final snapshot, adoption), at most [`HANDOFF_TIMEOUT`]; calls
    /// by key made meanwhile are delivered to one copy or the other, never lost or doubled.
    pub async fn leave(&self) {
        if let Some(m) = &self.membership {
            // The others stop placing keys here (and do not fail over what this node holds).
            if let Err(e) = m.announce_leaving().await {
                tracing::warn!(error = %e, "announcing the leave failed");
            }
        }
        self.shared.view.leave_self();
        self.shared.dists_view().await;
        let started = std::time::Instant::now();
        if !self.shared.dists_leave(HANDOFF_TIMEOUT).await {
            tracing::warn!("hand-off not complete in time; the rest fails over from backups");
        }
        tracing::info!(elapsed = ?started.elapsed(), "children handed off");
        if let Some(m) = &self.membership {
            if let Err(e) = m.leave().await {
                tracing::warn!(error = %e, "leaving the membership failed");
            }
        }
        self.shutdown().await;
    }

    /// This node's name.
    pub fn id(&self) -> &NodeId {
        &self.shared.id
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.shared.incarnation
    }

    /// The address peers connect to.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.shared.rpc_addr
    }

    /// Make `peer` reachable at `addr`. The node whose name sorts first dials; the other waits for
    /// the connection. Membership calls this for every node that comes up.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        self.shared.add_peer(peer, addr);
    }

    /// Forget `peer` (its node is down): calls in flight to it fail with `NodeDown`, proxies of its
    /// actors exit with [`ExitReason::NodeDown`], and its connection is closed.
    pub fn remove_peer(&self, peer: &NodeId) {
        self.shared.remove_peer(peer);
    }

    /// Whether an authenticated connection to `peer` is up right now.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.shared
            .peer(peer)
            .is_some_and(|p| p.connected.load(Ordering::Acquire))
    }

    /// The peers this node has a link to (connected or connecting).
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = lock(&self.shared.peers).keys().cloned().collect();
        v.sort();
        v
    }

    /// Make `actor` reachable from other nodes as `name`. The export disappears when the actor exits.
    pub fn export<A: RemoteActor>(
        &self,
        name: &str,
        actor: &ActorRef<A>,
    ) -> Result<(), ExportError> {
        let id = ExportId::User(name).encode();
        self.shared
            .export_typed(&id, actor, false)
            .map_err(|_| ExportError::Taken(name.to_owned()))
    }

    /// An [`ActorRef`] to the actor exported as `name` on node `peer`. On this node itself, the local
    /// actor (if exported with that type). The reference is lazy: errors surface on `call`/`cast`;
    /// its handle exits when the remote actor exits or its node goes down.
    pub fn remote<A: RemoteActor>(&self, peer: &NodeId, name: &str) -> ActorRef<A> {
        self.shared.remote(peer, &ExportId::User(name).encode())
    }

    /// The cluster-wide name registry, as seen from this node (see [`super::names`]).
    pub fn names(&self) -> super::names::Names {
        super::names::Names::new(Arc::downgrade(&self.shared))
    }

    /// Stop the node at once, like a crash: membership stops without a leave (the others detect
    /// the node as failed), the listener and every connection close, calls in flight fail with
    /// `NodeDown`, and the distributed children hosted here stop. Returns once every task of the
    /// node has ended: the listener's port and the gossip port are free, so a new node may bind
    /// them at once. (Dropping a `Node` does the same without waiting.)
    pub async fn shutdown(&self) {
        self.stop_now();
        if let Some(m) = &self.membership {
            m.shutdown().await;
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// The synchronous part of [`Node::shutdown`]: everything is told to stop.
    fn stop_now(&self) {
        self.shared.stop.cancel();
        // Without a leave announced first, the others detect this node as failed.
        if let Some(m) = &self.membership {
            m.kill();
        }
        // Distributed children hosted here stop with the node (their drivers stop them).
        let peers: Vec<NodeId> = lock(&self.shared.peers).keys().cloned().collect();
        for p in peers {
            self.remove_peer(&p);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl Shared {
    /// The ring parameters of this node.
    pub(super) fn ring_config(&self) -> RingConfig {
        self.view.ring_config()
    }

    /// The nodes that may own keys now (up and not leaving), this one included.
    pub(super) fn owner_nodes(&self) -> Vec<NodeId> {
        self.view.owners()
    }

    /// The members leaving gracefully, as this node knows them.
    pub(super) fn leaving_nodes(&self) -> Vec<NodeId> {
        self.view.leaving()
    }

    /// Cancelled when the node shuts down.
    pub(super) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub(super) fn peer_handle(&self, id: &NodeId) -> Option<Arc<Peer>> {
        self.peer(id)
    }

    /// Every peer this node has a link to (connected or connecting).
    pub(super) fn peer_list(&self) -> Vec<(NodeId, Arc<Peer>)> {
        lock(&self.peers)
            .iter()
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect()
    }

    fn monitor_local(&self, name: &str, proxy: Weak<Cell>) {
        let export = self
            .exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        match export {
            Some(e) => e.handle().on_exit(move |_, reason| {
                if let Some(p) = proxy.upgrade() {
                    p.finish(reason.clone());
                }
            }),
            None => {
                if let Some(p) = proxy.upgrade() {
                    p.finish(ExitReason::NoProc);
                }
            }
        }
    }

    /// Deliver a request frame to a local export; a call's outcome goes to `reply` (also when the
    /// export is missing or of another type).
    async fn local_request(
        &self,
        to: &str,
        actor_type: &str,
        body: &[u8],
        reply: Option<ReplyOnce>,
    ) -> Result<(), RemoteFailure> {
        let failure = match self.export(to) {
            None => RemoteFailure::NoSuchActor(to.to_owned()),
            Some(e) if e.actor_type() != actor_type => RemoteFailure::UnknownActorType {
                expected: actor_type.to_owned(),
                found: e.actor_type().to_string(),
            },
            Some(e) => {
                return match e.deliver(body, reply) {
                    Delivery::Done(r) => r,
                    Delivery::Wait(f) => f.await,
                }
            }
        };
        if let Some(r) = reply {
            r.send(Err(failure.clone()));
        }
        Err(failure)
    }

    /// Handle one frame from `peer`, in arrival order.
    async fn on_frame(self: &Arc<Self>, peer: &Arc<Peer>, frame: FrameRef<'_>) {
        match frame {
            FrameRef::Request {
                id,
                to,
                actor_type,
                body,
                ..
            } => {
                let reply = (id != 0).then(|| {
                    let peer = peer.clone();
                    // Runs on the actor's task: never blocks it on a full queue.
                    ReplyOnce::new(move |result| peer.reply_from_actor(id, result))
                });
                if let Err(failure) = self.local_request(to, actor_type, body, reply).await {
                    if id == 0 {
                        tracing::debug!(peer = %peer.id, ?failure, "remote cast not delivered");
                    }
                }
            }
            FrameRef::Reply { id, result } => {
                let pending = lock(&self.pending).remove(&id);
                if let Some(p) = pending {
                    let _ = p.tx.send(result);
                }
            }
            FrameRef::Monitor { mid, name } => match self.export(&name) {
                Some(e) => {
                    let peer = peer.clone();
                    // Runs on the exiting actor's task: never blocks it.
                    e.handle().on_exit(move |_, reason| {
                        peer.control_from_actor(Frame::Down {
                            mid,
                            reason: WireExit::from(reason),
                        })
                    })
                }
                None => {
                    let _ = peer
                        .control(&Frame::Down {
                            mid,
                            reason: WireExit::NoProc,
                        })
                        .await;
                }
            },
            // Reassembled (chunks) or handled (routes) by the reader before frames get here.
            FrameRef::Chunk { .. } | FrameRef::Bind { .. } | FrameRef::Cast { .. } => {}
            // Start, stop and list go to the supervisor's driver through its bounded queue (the
            // reader waits for room: backpressure on the peer); the driver answers the peer.
            // Starting runs the child's `started` hook on a task of the child's own, so a slow
            // start does not hold up the connection; the caller waits for the reply before
            // using the child, so its own later frames cannot overtake the start.
            FrameRef::Start { id, sup, record } => {
                let answer = Answer::Remote {
                    peer: peer.clone(),
                    id,
                };
                match self.find_dist(sup) {
                    Some(d) => d.start(record, answer).await,
                    None => no_supervisor(peer, id, sup).await,
                }
            }
            FrameRef::Stop { id, sup, key } => {
                let answer = Answer::Remote {
                    peer: peer.clone(),
                    id,
                };
                match self.find_dist(sup) {
                    Some(d) => d.stop(key, answer).await,
                    None => no_supervisor(peer, id, sup).await,
                }
            }
            FrameRef::List { id, sup } => {
                let answer = Answer::Remote {
                    peer: peer.clone(),
                    id,
                };
                match self.find_dist(sup) {
                    Some(d) => d.list(answer).await,
                    None => no_supervisor(peer, id, sup).await,
                }
            }
            FrameRef::Dir { sup, msg } => match self.find_dist(sup) {
                Some(d) => d.deliver(peer.id.clone(), msg).await,
                None => tracing::debug!(peer = %peer.id, supervisor = sup,
                    "directory message for an unknown supervisor dropped"),
            },
            FrameRef::Names { msg } => self.names.receive(self, &peer.id, msg),
            FrameRef::Down { mid, reason } => {
                let proxy = lock(&self.proxies).remove(&(peer.id.clone(), mid));
                if let Some(p) = proxy.and_then(|w| w.upgrade()) {
                    p.finish(reason.into());
                }
            }
        }
    }
}

/// Answer request `id` from `peer`: there is no supervisor `sup` here.
async fn no_supervisor(peer: &Arc<Peer>, id: u64, sup: &str) {
    let result = Err(RemoteFailure::NoSuchActor(sup.to_owned()));
    let _ = peer.control(&Frame::Reply { id, result }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(data_frames: usize) -> Peer {
        peer_with_backlog(data_frames, mpsc::channel(1).0)
    }

    fn peer_with_backlog(data_frames: usize, backlog: mpsc::Sender<(Lane, Frame)>) -> Peer {
        Peer {
            id: NodeId::new("p").unwrap(),
            out: Outbox::new(Limits {
                control_frames: 1,
                data_frames,
                lane_bytes: 1 << 20,
                max_frame: 1 << 20,
            }),
            inbound: mpsc::channel(1).0,
            addr: Mutex::new(None),
            connected: std::sync::atomic::AtomicBool::new(false),
            dropped: std::sync::atomic::AtomicBool::new(false),
            backlog,
            backlog_len: std::sync::atomic::AtomicUsize::new(0),
            reset: tokio::sync::Notify::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    fn numbered(n: u8) -> Frame {
        Frame::Dir {
            sup: "s".into(),
            msg: vec![n],
        }
    }

    /// The numbers of the directory frames queued on the data lane, in order.
    fn drain(p: &Peer) -> Vec<u8> {
        let (mut control, mut data) = (Vec::new(), Vec::new());
        p.out.take(&mut control, &mut data);
        wire::frames(&data)
            .map(|f| match f {
                Ok(FrameRef::Dir { msg, .. }) => msg[0],
                other => panic!("unexpected frame {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_sender_that_must_not_wait_queues_behind_a_full_lane_in_order() {
        let (tx, rx) = mpsc::channel(BACKLOG_FRAMES);
        let p = Arc::new(peer_with_backlog(2, tx));
        p.connected.store(true, Ordering::SeqCst);
        let mover = tokio::spawn(Peer::run_backlog(
            Arc::downgrade(&p),
            rx,
            CancellationToken::new(),
        ));
        for n in 0..6 {
            // Never waits, though the lane holds two frames.
            p.send_now(Lane::Data, numbered(n));
        }
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 6 {
            assert!(tokio::time::Instant::now() < deadline, "got only {got:?}");
            got.extend(drain(&p));
            tokio::task::yield_now().await;
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        assert!(!p.dropped.load(Ordering::SeqCst));
        mover.abort();
    }

    #[tokio::test]
    async fn an_overflowing_backlog_drops_and_resets_the_connection() {
        // A backlog of one frame, never moved: the lane (one frame) and the backlog fill up.
        let (tx, _rx) = mpsc::channel(1);
        let p = peer_with_backlog(1, tx);
        p.connected.store(true, Ordering::SeqCst);
        let reset = p.reset.notified();
        p.send_now(Lane::Data, numbered(0));
        p.send_now(Lane::Data, numbered(1));
        assert!(!p.dropped.load(Ordering::SeqCst));
        p.send_now(Lane::Data, numbered(2));
        assert!(
            p.dropped.load(Ordering::SeqCst),
            "the next connection reconciles"
        );
        tokio::time::timeout(Duration::from_secs(5), reset)
            .await
            .expect("the connection is told to reset");
    }

    fn dir_frame() -> Frame {
        Frame::Dir {
            sup: "s".into(),
            msg: vec![1, 2, 3],
        }
    }

    #[tokio::test]
    async fn a_full_lane_of_a_disconnected_peer_drops_instead_of_waiting() {
        let p = peer(1);
        p.send_or_drop(Lane::Data, &dir_frame()).await.unwrap();
        // Full and not connected: returns at once, remembering the drop for the next connection.
        tokio::time::timeout(
            Duration::from_secs(5),
            p.send_or_drop(Lane::Data, &dir_frame()),
        )
        .await
        .expect("a sender to a disconnected peer must not wait")
        .unwrap();
        assert!(p.dropped.load(Ordering::SeqCst));
        // Full and connected: backpressure, it waits for the writer.
        p.connected.store(true, Ordering::SeqCst);
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            p.send_or_drop(Lane::Data, &dir_frame()),
        )
        .await;
        assert!(
            waited.is_err(),
            "a connected peer's full lane makes the sender wait"
        );
    }
}
