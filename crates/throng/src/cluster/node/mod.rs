//! A Throng node: the public [`Node`], which puts together the transport, the distributed
//! supervisors and the cluster-wide registry, and carries membership into them.
//!
//! The node is the top of the cluster's modules: `transport` knows neither supervisors nor the
//! registry; `dist` and `names` depend on the transport; the node owns all three and is the
//! transport's `Sink` for the frames and connection notices that belong to the others.
//!
//! Files: this one holds [`Node`], its options and the sink; `glue` membership carried into the
//! node.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use throng_core::{Incarnation, NodeId, RingConfig};
use throng_membership::{MemberInfo, Membership, MembershipEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::dist::{
    Answer, ChildInfo, DistOptions, DistSupervisor, Input, Supervisors, DEFAULT_SUPERVISOR,
};
use super::export_id::ExportId;
use super::keyed::{ChildError, Keyed};
use super::names::{NamesState, Registry};
use super::tls::Security;
use super::transport::{BoxFuture, Peer, Sink, Transport, TransportOptions};
use super::view::{ClusterEvent, ClusterSubscription};
use super::wire::{Frame, FrameRef, RemoteFailure};
use super::NodeConfig;
use crate::ActorRef;

pub use super::transport::{ConnectionStats, ExportError, RemoteActor};

mod glue;

use glue::*;

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
    /// Connections accepted and not yet authenticated that the node holds at once (default
    /// [`DEFAULT_MAX_HANDSHAKES`]): each waits at most `handshake_timeout` for its peer to prove
    /// itself. Past the bound a new connection is closed at once, unread, and counted
    /// ([`ConnectionStats::handshakes_refused`]); its peer, if it is a node, dials again.
    pub max_handshakes: usize,
    /// Reconnect backoff: first and maximum delay (defaults 50 ms, 2 s).
    pub backoff: (Duration, Duration),
    /// How connections are authenticated and encrypted (default: the shared secret).
    pub security: Security,
    /// Limits on this node's entries in the cluster-wide name registry ([`Node::names`]).
    pub names: super::names::NamesConfig,
    /// What happens to a local actor that loses its registered name to a concurrent registration
    /// on another node (default: it keeps running; Horde stops it).
    pub name_conflicts: super::names::OnConflict,
    /// Frames queued per peer, beyond its data or control queue, from senders that must not wait
    /// on the network (a supervisor's directory, an actor's reply); default 16,384. Past this or
    /// `backlog_bytes` the peer reads slower than this node sends for too long: the connection
    /// is reset, and the directories reconcile on the next one
    /// ([`ConnectionStats::backlog_resets`]).
    pub backlog_frames: usize,
    /// Bytes of the frames of `backlog_frames`, at most (default 64 MiB).
    pub backlog_bytes: usize,
}

/// Default bound on the connections a node holds in their handshake
/// ([`NodeOptions::max_handshakes`]): far above what a cluster's nodes open at once (one
/// connection per pair, dialed again after a loss), and a few megabytes of buffers and tasks at
/// most for a flood of idle connections.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;

/// Largest accepted [`NodeOptions::max_handshakes`].
pub const MAX_HANDSHAKES_LIMIT: usize = 1 << 20;

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            max_frame: 8 << 20,
            data_queue: 4096,
            control_queue: 1024,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            backoff: (Duration::from_millis(50), Duration::from_secs(2)),
            security: Security::SharedSecret,
            names: super::names::NamesConfig::default(),
            name_conflicts: super::names::OnConflict::default(),
            backlog_frames: 16_384,
            backlog_bytes: 64 << 20,
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
    /// The durable store (`data_dir` / THRONG_DATA_DIR, or `store_url` / THRONG_STORE_URL)
    /// could not be opened: another node's, damaged, newer, in use, or a database that cannot
    /// be reached.
    #[error("durable store: {0}")]
    Store(#[from] throng_store::StoreError),
}

/// The node's durable store, if its configuration names one: the embedded store in `data_dir`
/// or the PostgreSQL database at `store_url` (opened on a blocking thread: both block).
async fn open_store(
    config: &NodeConfig,
) -> Result<Option<Arc<dyn throng_store::Store>>, NodeError> {
    let name = config.name.to_string();
    let opened = match (&config.data_dir, &config.store_url) {
        (Some(dir), Some(url)) => {
            return Err(NodeError::Config(super::config::both_stores(dir, url)))
        }
        (None, None) => return Ok(None),
        (Some(dir), None) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                throng_store::RedbStore::open(&dir, &name)
                    .map(|s| Arc::new(s) as Arc<dyn throng_store::Store>)
            })
            .await
        }
        (None, Some(url)) => {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                throng_store::PgStore::open(&url, &name)
                    .map(|s| Arc::new(s) as Arc<dyn throng_store::Store>)
            })
            .await
        }
    };
    let store = opened.map_err(|e| NodeError::Config(format!("opening the store: {e}")))??;
    tracing::info!(node = %config.name, store = %store.location(), "durable store open");
    Ok(Some(store))
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
        if !(1..=MAX_HANDSHAKES_LIMIT).contains(&opts.max_handshakes) {
            return Err(NodeError::Config(format!(
                "max_handshakes {} must be within 1..={MAX_HANDSHAKES_LIMIT}",
                opts.max_handshakes
            )));
        }
        if opts.data_queue == 0 || opts.control_queue == 0 || opts.backlog_frames == 0 {
            return Err(NodeError::Config(
                "queues must hold at least one frame".into(),
            ));
        }
        if opts.backlog_bytes < opts.max_frame {
            return Err(NodeError::Config(format!(
                "backlog_bytes {} must hold a frame of max_frame ({}) bytes",
                opts.backlog_bytes, opts.max_frame
            )));
        }
        let names_config = super::names::effective_config(&opts.names, opts.max_frame)
            .map_err(NodeError::Config)?;
        if let Security::Tls(t) = &opts.security {
            // Peers will refuse this node; say why here rather than only in their logs.
            if let Err(e) = t.check_identity(&id) {
                tracing::warn!(node = %id, error = %e, "TLS certificate does not identify this node");
            }
        }
        let transport_opts = TransportOptions {
            max_frame: opts.max_frame,
            data_queue: opts.data_queue,
            control_queue: opts.control_queue,
            handshake_timeout: opts.handshake_timeout,
            max_handshakes: opts.max_handshakes,
            backoff: opts.backoff,
            security: opts.security.clone(),
            backlog_frames: opts.backlog_frames,
            backlog_bytes: opts.backlog_bytes,
        };
        let (t, listener) = Transport::bind(
            id.clone(),
            incarnation,
            rpc_bind,
            secret,
            transport_opts,
            ring,
        )
        .await
        .map_err(|source| NodeError::Bind {
            addr: rpc_bind,
            source,
        })?;
        let names = Arc::new(Registry {
            t: t.clone(),
            names: NamesState::new(
                throng_core::Member::new(id, incarnation),
                names_config,
                opts.max_frame,
                opts.name_conflicts,
            ),
        });
        let shared = Arc::new(Shared {
            sups: Supervisors::new(t.clone()),
            names,
            t,
        });
        let sink: Weak<dyn Sink> = Arc::downgrade(&(shared.clone() as Arc<dyn Sink>));
        shared.t.set_sink(sink);
        shared
            .sups
            .supervisor(DEFAULT_SUPERVISOR, DistOptions::default());
        shared.t.listen(listener);
        shared.t.tasks.spawn(super::names::flusher(
            Arc::downgrade(&shared.names),
            shared.t.stop.clone(),
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
        // The store first: a bad data_dir or store_url is refused before the node is seen by
        // anyone.
        let store = open_store(&config).await?;
        let mut node = Node::start_with_ring(
            config.name.clone(),
            incarnation,
            config.rpc_bind,
            config.membership.secret.as_bytes(),
            config.transport.clone(),
            config.ring,
        )
        .await?;
        if let Some(store) = store {
            let _ = node.shared.sups.store.set(store);
        }
        let membership =
            Membership::start(config.name, incarnation, node.rpc_addr(), config.membership).await?;
        let membership = Arc::new(membership);
        node.shared.t.tasks.spawn(membership_glue(
            Arc::downgrade(&node.shared),
            Arc::downgrade(&membership),
            node.shared.t.stop.clone(),
        ));
        node.membership = Some(membership);
        Ok(node)
    }

    /// Whether this node has a durable store (`data_dir` or `store_url`): supervisors with a
    /// [`Durability`](crate::cluster::Durability) other than `None` need one.
    pub fn has_store(&self) -> bool {
        self.shared.sups.store.get().is_some()
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
        self.shared.t.view.subscribe()
    }

    /// The changes from now on, without the members of the moment: a listener that must know
    /// every member uses [`Node::subscribe`].
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.shared.t.view.events()
    }

    /// The nodes of the cluster as this node sees them, itself included, sorted by name.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .shared
            .t
            .view
            .members()
            .into_iter()
            .map(|i| i.id)
            .collect();
        v.push(self.shared.t.id.clone());
        v.sort();
        v
    }

    /// The node that owns `key` by consistent hashing over the members that are up and not leaving
    /// (this node included). Every node with the same membership view answers the same.
    pub fn node_for(&self, key: &[u8]) -> Option<NodeId> {
        self.shared.t.view.node_for(key)
    }

    /// Whether this node owns `key`.
    pub fn mine(&self, key: &[u8]) -> bool {
        self.node_for(key).as_ref() == Some(&self.shared.t.id)
    }

    /// The nodes that currently own keys (up and not leaving), sorted.
    pub fn owners(&self) -> Vec<NodeId> {
        self.shared.t.view.owners()
    }

    /// The other live members with their addresses (leaving ones included), as listeners have
    /// been told of them.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.shared.t.view.members()
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
        self.shared.t.view.leave_self();
        self.shared.sups.dists_view().await;
        let started = std::time::Instant::now();
        if !self.shared.sups.dists_leave(HANDOFF_TIMEOUT).await {
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
        &self.shared.t.id
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.shared.t.incarnation
    }

    /// The address peers connect to.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.shared.t.rpc_addr
    }

    /// Make `peer` reachable at `addr`. The node whose name sorts first dials; the other waits for
    /// the connection. Membership calls this for every node that comes up.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        self.shared.t.add_peer(peer, addr);
    }

    /// Forget `peer` (its node is down): calls in flight to it fail with `NodeDown`, proxies of its
    /// actors exit with [`ExitReason::NodeDown`](crate::ExitReason::NodeDown), and its connection is closed.
    pub fn remove_peer(&self, peer: &NodeId) {
        self.shared.t.remove_peer(peer);
    }

    /// What the listener has done with the connections it accepted: handshakes in progress,
    /// connections refused at once past [`NodeOptions::max_handshakes`], handshakes failed.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.shared.t.connection_stats()
    }

    /// Whether an authenticated connection to `peer` is up right now.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.shared.t.is_connected(peer)
    }

    /// The peers this node has a link to (connected or connecting).
    pub fn peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.shared.t.peer_ids();
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
            .t
            .export_typed(&id, actor, false)
            .map_err(|_| ExportError::Taken(name.to_owned()))
    }

    /// An [`ActorRef`] to the actor exported as `name` on node `peer`. On this node itself, the local
    /// actor (if exported with that type). The reference is lazy: errors surface on `call`/`cast`;
    /// its handle exits when the remote actor exits or its node goes down.
    pub fn remote<A: RemoteActor>(&self, peer: &NodeId, name: &str) -> ActorRef<A> {
        self.shared.t.remote(peer, &ExportId::User(name).encode())
    }

    /// The cluster-wide name registry, as seen from this node (see [`super::names`]).
    pub fn names(&self) -> super::names::Names {
        super::names::Names::new(Arc::downgrade(&self.shared.names))
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
        self.shared.t.tasks.close();
        self.shared.t.tasks.wait().await;
    }

    /// The synchronous part of [`Node::shutdown`]: everything is told to stop.
    fn stop_now(&self) {
        self.shared.t.stop.cancel();
        // Without a leave announced first, the others detect this node as failed.
        if let Some(m) = &self.membership {
            m.kill();
        }
        // Distributed children hosted here stop with the node (their drivers stop them).
        let peers: Vec<NodeId> = self.shared.t.peer_ids();
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

/// What a node owns: its transport, its distributed supervisors and its registry replica.
pub(crate) struct Shared {
    pub(crate) t: Arc<Transport>,
    pub(crate) sups: Arc<Supervisors>,
    pub(crate) names: Arc<Registry>,
}

impl Sink for Shared {
    /// Start, stop and list go to the supervisor's driver through its bounded queue (the reader
    /// waits for room: backpressure on the peer); the driver answers the peer. Starting runs the
    /// child's `started` hook on a task of the child's own, so a slow start does not hold up the
    /// connection; the caller waits for the reply before using the child, so its own later
    /// frames cannot overtake the start. Directory messages go to the driver the same way;
    /// registry messages to the registry.
    fn frame<'a>(&'a self, peer: &'a Arc<Peer>, frame: FrameRef<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match frame {
                FrameRef::Start { id, sup, record } => {
                    let answer = Answer::Remote {
                        peer: peer.clone(),
                        id,
                    };
                    match self.sups.find_dist(sup) {
                        Some(d) => d.start(record, answer).await,
                        None => no_supervisor(peer, id, sup).await,
                    }
                }
                FrameRef::Stop { id, sup, key } => {
                    let answer = Answer::Remote {
                        peer: peer.clone(),
                        id,
                    };
                    match self.sups.find_dist(sup) {
                        Some(d) => d.stop(key, answer).await,
                        None => no_supervisor(peer, id, sup).await,
                    }
                }
                FrameRef::List { id, sup } => {
                    let answer = Answer::Remote {
                        peer: peer.clone(),
                        id,
                    };
                    match self.sups.find_dist(sup) {
                        Some(d) => d.list(answer).await,
                        None => no_supervisor(peer, id, sup).await,
                    }
                }
                // Kept until the supervisor starts here if it has not yet (a restarted node's
                // peers may write to it first).
                FrameRef::Dir { sup, msg } => self.sups.deliver_dir(&peer.id, sup, msg).await,
                FrameRef::Names { msg } => self.names.names.receive(&self.t, &peer.id, msg),
                // The transport's own frames do not come here.
                _ => {}
            }
        })
    }

    fn reconnected<'a>(&'a self, peer: &'a NodeId) -> BoxFuture<'a, ()> {
        Box::pin(self.sups.dists_notify(|| Input::Reconnected(peer.clone())))
    }

    fn disconnected<'a>(&'a self, peer: &'a NodeId) -> BoxFuture<'a, ()> {
        self.sups.forget_early(peer);
        Box::pin(self.sups.dists_notify(|| Input::Disconnected(peer.clone())))
    }
}

/// Answer request `id` from `peer`: there is no supervisor `sup` here.
async fn no_supervisor(peer: &Arc<Peer>, id: u64, sup: &str) {
    let result = Err(RemoteFailure::NoSuchActor(sup.to_owned()));
    let _ = peer.control(&Frame::Reply { id, result }).await;
}

impl Node {
    /// Allow this node to host distributed children of type `A`. Register the same types on every
    /// node that may own keys.
    pub fn register<A: Keyed>(&self) {
        self.shared.sups.register::<A>();
    }

    /// The distributed supervisor `name` on this node, started with `opts` if it is not running
    /// yet (`opts` is ignored otherwise). Start it with the same options on every node.
    pub fn supervisor(&self, name: &str, opts: DistOptions) -> DistSupervisor {
        self.shared.sups.supervisor(name, opts)
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
