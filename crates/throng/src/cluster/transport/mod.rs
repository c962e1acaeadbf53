//! The transport between nodes: connections, frames, exports, remote references and calls.
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
//! lane makes senders wait (backpressure) or, for `try_cast`, hands the message back. Incoming
//! requests are delivered in order: a cast waits for mailbox room before the next frame is read,
//! which pushes back through TCP to the sender.
//!
//! Calls: a call is a `Request` frame with an id; the reply completes the pending entry. A lost
//! connection fails every call in flight to that peer with `NodeDown` (it may or may not have been
//! handled — the caller decides whether to retry).
//!
//! The transport owns requests to exports, replies, monitors and their down notices. Every other
//! frame (a supervisor's start, stop, list and directory messages, the registry's messages) and
//! the connection notices go to the [`Sink`] the node installs ([`Transport::set_sink`]): the
//! transport knows neither supervisors nor the registry, which depend on it.
//!
//! Files: this one holds [`Transport`], [`Peer`] and the frame demux (`on_frame`); `handshake`
//! the handshake and the listener; `conn` the links, writer and reader; `inbox` the supervisors'
//! frames a reader has read and the sink not yet taken; `route` `RemoteRoute` and remote
//! references; `export` the export table.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::export_id::ExportId;
use super::outbox::{Lane, Limits, Outbox, PushError, FRAME_OVERHEAD};
use super::tls::{self, Security};
use super::view::View;
use super::wire::{
    self, Auth, ClusterKey, Frame, FrameRef, Hello, HelloAck, Opener, RemoteFailure, Role, Sealer,
    WireError, WireExit,
};
use crate::actor_ref::{Envelope, ReplyTo};
use crate::cell::Cell;
use crate::mailbox::SendFailure;
use crate::{Actor, ActorHandle, ActorRef, CallError, ExitReason, SendError, TrySendError};

mod conn;
mod export;
mod handshake;
mod inbox;
mod route;

use export::*;
pub(crate) use handshake::handshake_codec;
use handshake::*;

/// An actor that can be addressed from other nodes: its messages and replies are serde types, and it
/// has a stable type name (checked on every remote request, since Rust type names are not stable
/// across builds).
pub trait RemoteActor:
    Actor<Msg: Serialize + DeserializeOwned, Reply: Serialize + DeserializeOwned>
{
    /// The actor type's name, the same on every node.
    const TYPE: &'static str;
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

/// What a node's listener has done with the connections it accepted ([`Node::connection_stats`](crate::cluster::Node::connection_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections accepted whose handshake is in progress now (at most
    /// [`NodeOptions::max_handshakes`](crate::cluster::NodeOptions::max_handshakes)).
    pub handshaking: usize,
    /// Connections closed at once, unread, because `max_handshakes` handshakes were in progress
    /// when they arrived (since the node started).
    pub handshakes_refused: u64,
    /// Accepted connections whose handshake failed: timed out, malformed, another protocol
    /// version or security mode, a wrong secret or certificate (since the node started).
    pub handshakes_failed: u64,
    /// Connections to peers this node reset because the frames queued for the peer outgrew
    /// [`NodeOptions::backlog_frames`](crate::cluster::NodeOptions::backlog_frames) or
    /// `backlog_bytes` (since the node started): the peer read slower than this node sent for
    /// too long; the directories reconciled on the next connection.
    pub backlog_resets: u64,
    /// Remote actors this node monitors for the references it handed out
    /// ([`Node::remote`](crate::cluster::Node::remote), `start_child`, `DistSupervisor::child`):
    /// those still referred to, and those every holder dropped that were not pruned yet — at
    /// most twice the live ones plus 1,024, however many remote actors the node ever referred to.
    pub monitored_remotes: usize,
    /// Monitors peers hold on this node's exported actors: one per reference a peer holds (and
    /// has not pruned yet, see `monitored_remotes`); forgotten when the peer drops it
    /// ([`Frame::Demonitor`](crate::cluster::wire::Frame::Demonitor)), the actor exits or the
    /// connection is lost.
    pub monitors_held: usize,
    /// Requests this node sent that still wait for their answer (calls by reference or by key,
    /// supervisors' starts, stops and lists): at most the requests in progress. An entry leaves
    /// the table with its answer, its timeout, the loss of its connection, or when its caller
    /// stops waiting (drops the call's future).
    pub calls_in_flight: usize,
}

/// The monitors peers hold on local actors ([`Frame::Monitor`]), by peer and monitor id: the
/// actor's handle and the token of the watcher that sends the `Down`, so that a
/// [`Frame::Demonitor`] (or the loss of the connection) removes the watcher.
#[derive(Default)]
pub(crate) struct Watched {
    by_peer: HashMap<NodeId, HashMap<u64, (ActorHandle, u64)>>,
    len: usize,
}

impl Watched {
    fn insert(&mut self, peer: &NodeId, mid: u64, handle: ActorHandle, token: u64) {
        if let Some((old, t)) = self
            .by_peer
            .entry(peer.clone())
            .or_default()
            .insert(mid, (handle, token))
        {
            old.cell.unwatch(t);
        } else {
            self.len += 1;
        }
    }

    /// Removes the monitor, and its watcher unless `fired` (it runs, or ran).
    fn remove(&mut self, peer: &NodeId, mid: u64, fired: bool) {
        let Some(map) = self.by_peer.get_mut(peer) else {
            return;
        };
        if let Some((handle, token)) = map.remove(&mid) {
            self.len -= 1;
            if !fired {
                handle.cell.unwatch(token);
            }
        }
        if map.is_empty() {
            self.by_peer.remove(peer);
        }
    }

    /// Removes every monitor of `peer`, and their watchers.
    fn remove_peer(&mut self, peer: &NodeId) {
        for (_, (handle, token)) in self.by_peer.remove(peer).unwrap_or_default() {
            self.len -= 1;
            handle.cell.unwatch(token);
        }
    }
}

/// The proxy cells standing for monitored remote actors, by (peer, monitor id): finished when
/// their actor's `Down` arrives or the connection to their peer is lost. An entry whose cell
/// every holder dropped is pruned once the table has doubled since the last prune (amortized:
/// the table stays within twice the live entries plus [`Proxies::MIN_PRUNE`]).
#[derive(Default)]
pub(crate) struct Proxies {
    map: HashMap<(NodeId, u64), Weak<Cell>>,
    /// The size at which the next insertion prunes first.
    prune_at: usize,
}

impl Proxies {
    /// The table is never pruned below this size.
    const MIN_PRUNE: usize = 1024;

    /// Adds `proxy`; returns the entries pruned meanwhile (every holder dropped them): their
    /// peers are told ([`Frame::Demonitor`]).
    fn insert(&mut self, key: (NodeId, u64), proxy: Weak<Cell>) -> Vec<(NodeId, u64)> {
        let mut pruned = Vec::new();
        if self.map.len() >= self.prune_at.max(Self::MIN_PRUNE) {
            self.map.retain(|k, w| {
                let live = w.strong_count() > 0;
                if !live {
                    pruned.push(k.clone());
                }
                live
            });
            self.prune_at = 2 * self.map.len();
        }
        self.map.insert(key, proxy);
        pruned
    }

    /// Every entry of `peer`, removed.
    fn take_peer(&mut self, peer: &NodeId) -> Vec<Weak<Cell>> {
        let keys: Vec<(NodeId, u64)> = self
            .map
            .keys()
            .filter(|(n, _)| n == peer)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.map.remove(&k))
            .collect()
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The transport's limits and timings (from the node's options, see `NodeOptions`).
#[derive(Debug, Clone)]
pub(crate) struct TransportOptions {
    /// Largest frame accepted or sent, in bytes.
    pub(crate) max_frame: usize,
    /// Frames queued per peer for requests.
    pub(crate) data_queue: usize,
    /// Frames queued per peer for replies and control.
    pub(crate) control_queue: usize,
    /// How long a handshake may take.
    pub(crate) handshake_timeout: Duration,
    /// Connections accepted and not yet authenticated, at most; past it a new one is closed at
    /// once.
    pub(crate) max_handshakes: usize,
    /// Reconnect backoff: first and maximum delay.
    pub(crate) backoff: (Duration, Duration),
    /// How connections are authenticated and encrypted.
    pub(crate) security: Security,
    /// Frames a peer's backlog holds before its connection is reset ([`Peer::send_now`]).
    pub(crate) backlog_frames: usize,
    /// Bytes a peer's backlog holds before its connection is reset.
    pub(crate) backlog_bytes: usize,
}

/// Where the transport hands what it does not own: the frames of supervisors and the registry,
/// in arrival order per peer, and the connection notices supervisors reconcile on. Installed by
/// the node once it has built them ([`Transport::set_sink`]).
pub(crate) trait Sink: Send + Sync {
    /// A `Start`, `Stop`, `List`, `Dir` or `Names` frame from `peer`, in arrival order. `Names`
    /// frames are handed over by the connection's reader (this must not wait for them); the
    /// supervisors' frames by the connection's inbox task, so that while this waits the reader
    /// goes on delivering calls and replies, and stops reading only once the inbox is full
    /// (backpressure through TCP; see `transport/inbox.rs`).
    fn frame<'a>(&'a self, peer: &'a Arc<Peer>, frame: FrameRef<'a>) -> BoxFuture<'a, ()>;

    /// The connection to `peer` came back after frames may have been lost (a lost connection
    /// of the same run, or frames dropped while it was down).
    fn reconnected<'a>(&'a self, peer: &'a NodeId) -> BoxFuture<'a, ()>;

    /// The connection to `peer` closed; no frame of it is delivered after this.
    fn disconnected<'a>(&'a self, peer: &'a NodeId) -> BoxFuture<'a, ()>;
}

/// An authenticated, sealed connection to one peer.
struct Conn {
    reader: FramedRead<ReadHalf, LengthDelimitedCodec>,
    writer: FramedWrite<WriteHalf, LengthDelimitedCodec>,
    sealer: Sealer,
    opener: Opener,
    incarnation: u64,
}

/// The link to one peer: its outgoing lanes, its backlog, its connection state.
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    /// Frames for this peer, encoded, waiting for the writer.
    out: Outbox,
    inbound: mpsc::Sender<Conn>,
    addr: Mutex<Option<SocketAddr>>,
    connected: std::sync::atomic::AtomicBool,
    /// A supervisor dropped a frame for this peer while it was not connected
    /// ([`Peer::queue_or_drop`]): the next connection tells the directories to reconcile.
    dropped: std::sync::atomic::AtomicBool,
    /// Frames that found their lane full, from senders that must not wait ([`Peer::send_now`]),
    /// moved into the outbox in order by the peer's backlog task.
    /// (Encoded: the bytes they hold are counted against [`BACKLOG_BYTES`].)
    backlog: mpsc::Sender<(Lane, Vec<u8>)>,
    /// Frames in `backlog` or being moved: while there are any, later frames queue behind them.
    backlog_len: std::sync::atomic::AtomicUsize,
    /// The bytes of the frames in `backlog` or being moved.
    backlog_bytes: std::sync::atomic::AtomicUsize,
    /// At most this many bytes in `backlog` ([`NodeOptions::backlog_bytes`](crate::cluster::NodeOptions::backlog_bytes)).
    backlog_max_bytes: usize,
    /// Ends the current connection (the backlog overflowed: the peer reads slower than this
    /// node sends, for too long); the next connection reconciles.
    reset: tokio::sync::Notify,
    stop: CancellationToken,
    /// The node's tasks (see [`Transport::tasks`]).
    tasks: TaskTracker,
}

impl Peer {
    /// Queue the frame `encode` appends, for a sender that must not stall on a peer it cannot reach (a supervisor's
    /// driver, which serves every child): while the connection is up, wait for room in `lane`
    /// (backpressure); while it is down and the lane is full, drop the frame and remember it, so
    /// that the next connection makes the directories reconcile (as after any lost connection).
    /// Without this, a peer that refuses our connections (it declared this node down) while this
    /// node's view still holds it would hold the driver at its full lane.
    async fn queue_or_drop<F>(&self, lane: Lane, mut encode: F) -> Result<(), PushError>
    where
        F: FnMut(&mut Vec<u8>) -> Result<(), String>,
    {
        match self.out.try_push(lane, &mut encode) {
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
        self.out.push(lane, encode).await
    }

    /// Queue `frame` on the data lane, waiting for room.
    pub(in crate::cluster) async fn send(&self, frame: &Frame) -> Result<(), PushError> {
        self.out.push(Lane::Data, |b| encode_frame(b, frame)).await
    }

    /// Queue `frame` on the control lane, waiting for room.
    pub(in crate::cluster) async fn control(&self, frame: &Frame) -> Result<(), PushError> {
        self.out
            .push(Lane::Control, |b| encode_frame(b, frame))
            .await
    }

    /// Queue `frame` on the control lane if it has room.
    pub(in crate::cluster) fn try_control(&self, frame: &Frame) -> Result<(), PushError> {
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
    /// order. Past the node's `backlog_frames` or `backlog_bytes` ([`NodeOptions`](crate::cluster::NodeOptions))
    /// the frame is dropped, and the connection is reset so that the next one makes the directories reconcile (as after any
    /// lost connection).
    pub(in crate::cluster) fn send_now(&self, lane: Lane, frame: Frame) {
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
        let mut bytes = Vec::new();
        if let Err(e) = encode_frame(&mut bytes, &frame) {
            tracing::debug!(peer = %self.id, error = %e, "frame not queued");
            return;
        }
        let size = bytes.len();
        self.backlog_len.fetch_add(1, Ordering::AcqRel);
        let held = self.backlog_bytes.fetch_add(size, Ordering::AcqRel);
        let queued =
            held + size <= self.backlog_max_bytes && self.backlog.try_send((lane, bytes)).is_ok();
        if !queued {
            self.backlog_len.fetch_sub(1, Ordering::AcqRel);
            self.backlog_bytes.fetch_sub(size, Ordering::AcqRel);
            // Said once per connection: every later frame is dropped too until it is reset.
            let first = !self.dropped.swap(true, Ordering::SeqCst);
            if self.connected.load(Ordering::SeqCst) {
                if first {
                    tracing::warn!(peer = %self.id, bytes = self.backlog_max_bytes,
                        "peer backlog full: frames dropped, connection reset to reconcile");
                }
                self.reset.notify_one();
            }
        }
    }

    /// The backlog task: moves frames from the backlog into the outbox, in order, waiting for
    /// room (or dropping them while the peer is disconnected, see [`Peer::queue_or_drop`]).
    async fn run_backlog(
        peer: Weak<Peer>,
        mut rx: mpsc::Receiver<(Lane, Vec<u8>)>,
        stop: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv() => n,
            };
            let (Some((lane, bytes)), Some(p)) = (next, peer.upgrade()) else {
                return;
            };
            let copy = |b: &mut Vec<u8>| {
                b.extend_from_slice(&bytes);
                Ok(())
            };
            let _ = p.queue_or_drop(lane, copy).await;
            p.backlog_bytes.fetch_sub(bytes.len(), Ordering::AcqRel);
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

/// A call in flight, waiting for its reply.
pub(crate) struct Pending {
    pub(crate) peer: NodeId,
    pub(crate) tx: oneshot::Sender<Result<Vec<u8>, RemoteFailure>>,
}

/// A node's transport: its identity, connections, exports, calls in flight and view.
pub(crate) struct Transport {
    pub(crate) id: NodeId,
    pub(crate) incarnation: Incarnation,
    key: ClusterKey,
    opts: TransportOptions,
    pub(crate) rpc_addr: SocketAddr,
    /// By name; the name is shared with the watcher that removes the export (one copy).
    exports: RwLock<HashMap<Arc<str>, Arc<dyn Export>>>,
    /// Bumped at every change of `exports`, so that readers may cache what they looked up.
    exports_version: AtomicU64,
    /// Requests waiting for their answer, by id ([`Transport::request`]).
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    pub(crate) next_id: AtomicU64,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    /// Proxy cells standing for remote actors, by (peer, monitor id).
    proxies: Mutex<Proxies>,
    /// The monitors peers hold on local actors (shared with the watchers that remove theirs).
    watched: Arc<Mutex<Watched>>,
    /// Members, leaving members, the placement ring, and their listeners.
    pub(in crate::cluster) view: View,
    /// One permit per connection in its handshake ([`TransportOptions::max_handshakes`]).
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Connections closed at once because every handshake permit was taken.
    handshakes_refused: AtomicU64,
    /// Accepted connections whose handshake failed or timed out.
    handshakes_failed: AtomicU64,
    /// Connections reset because a peer's backlog overflowed.
    backlog_resets: AtomicU64,
    /// When each (address, reason) refusal was last logged at warn, so that a peer retrying
    /// every few seconds (or an attacker) cannot flood the log.
    refusals: Mutex<HashMap<(std::net::IpAddr, String), tokio::time::Instant>>,
    pub(crate) stop: CancellationToken,
    /// Every task the node spawns (listener, connections, flusher, membership glue, drivers):
    /// `Node::shutdown` waits for them.
    pub(crate) tasks: TaskTracker,
    /// Where frames and notices the transport does not own go (see [`Sink`]).
    sink: std::sync::OnceLock<Weak<dyn Sink>>,
}

/// A refusal from the same address for the same reason is logged at warn at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Bound on remembered refusals; beyond it the memory is cleared (and the next ones logged).
const REFUSAL_LOG_KEYS: usize = 1024;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are plain map updates; a poisoned lock still guards a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transport {
    /// Bind `rpc_bind` and make the transport of node `id` (its listener starts with
    /// [`Transport::listen`]).
    pub(crate) async fn bind(
        id: NodeId,
        incarnation: Incarnation,
        rpc_bind: SocketAddr,
        secret: &[u8],
        opts: TransportOptions,
        ring: RingConfig,
    ) -> std::io::Result<(Arc<Transport>, TcpListener)> {
        let listener = TcpListener::bind(rpc_bind).await?;
        let rpc_addr = listener.local_addr()?;
        let t = Arc::new(Transport {
            handshakes: Arc::new(tokio::sync::Semaphore::new(opts.max_handshakes)),
            handshakes_refused: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            backlog_resets: AtomicU64::new(0),
            view: View::new(id.clone(), ring),
            id,
            incarnation,
            key: ClusterKey::from_secret(secret),
            opts,
            rpc_addr,
            exports: RwLock::new(HashMap::new()),
            exports_version: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            peers: Mutex::new(HashMap::new()),
            proxies: Mutex::new(Proxies::default()),
            watched: Arc::new(Mutex::new(Watched::default())),
            refusals: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sink: std::sync::OnceLock::new(),
        });
        Ok((t, listener))
    }

    /// Accept peers on `listener` (from [`Transport::bind`]) until the node stops.
    pub(crate) fn listen(self: &Arc<Self>, listener: TcpListener) {
        self.tasks.spawn(accept_loop(
            Arc::downgrade(self),
            listener,
            self.stop.clone(),
        ));
    }

    /// What the listener has done with the connections it accepted.
    pub(crate) fn connection_stats(&self) -> ConnectionStats {
        ConnectionStats {
            handshaking: self.opts.max_handshakes - self.handshakes.available_permits(),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
            handshakes_failed: self.handshakes_failed.load(Ordering::Relaxed),
            backlog_resets: self.backlog_resets.load(Ordering::Relaxed),
            monitored_remotes: lock(&self.proxies).map.len(),
            monitors_held: lock(&self.watched).len,
            calls_in_flight: lock(&self.pending).len(),
        }
    }

    /// Install where frames and notices the transport does not own go (once).
    pub(crate) fn set_sink(&self, sink: Weak<dyn Sink>) {
        let _ = self.sink.set(sink);
    }

    fn sink(&self) -> Option<Arc<dyn Sink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    /// The ring parameters of this node.
    pub(crate) fn ring_config(&self) -> RingConfig {
        self.view.ring_config()
    }

    /// The nodes that may own keys now (up and not leaving), this one included.
    pub(crate) fn owner_nodes(&self) -> Vec<NodeId> {
        self.view.owners()
    }

    /// The members leaving gracefully, as this node knows them.
    pub(crate) fn leaving_nodes(&self) -> Vec<NodeId> {
        self.view.leaving()
    }

    /// Cancelled when the node shuts down.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The link to `id`, if there is one.
    pub(crate) fn peer_handle(&self, id: &NodeId) -> Option<Arc<Peer>> {
        self.peer(id)
    }

    /// Every peer this node has a link to (connected or connecting).
    pub(crate) fn peer_list(&self) -> Vec<(NodeId, Arc<Peer>)> {
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
                    let handle = e.handle().clone();
                    let (to, watched) = (peer.clone(), Arc::clone(&self.watched));
                    // Runs on the exiting actor's task: never blocks it (the table's lock is
                    // only ever held briefly).
                    let down = move |_, reason: &ExitReason| {
                        lock(&watched).remove(&to.id, mid, true);
                        to.control_from_actor(Frame::Down {
                            mid,
                            reason: WireExit::from(reason),
                        })
                    };
                    // Registered under the table's lock, so that an exit racing it removes the
                    // entry after it was made.
                    let mut table = lock(&self.watched);
                    match handle.cell.watch(down) {
                        Ok(token) => table.insert(&peer.id, mid, handle.clone(), token),
                        Err((down, reason)) => {
                            drop(table);
                            down(handle.id(), &reason);
                        }
                    }
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
            // Supervisors' and the registry's frames go to the node's sink, which owns them (the
            // reader queues the supervisors' in the connection's inbox instead, see `inbox.rs`).
            f @ (FrameRef::Start { .. }
            | FrameRef::Stop { .. }
            | FrameRef::List { .. }
            | FrameRef::Dir { .. }
            | FrameRef::Names { .. }) => {
                if let Some(sink) = self.sink() {
                    sink.frame(peer, f).await;
                }
            }
            FrameRef::Demonitor { mids } => {
                let mut table = lock(&self.watched);
                for mid in mids {
                    table.remove(&peer.id, mid, false);
                }
            }
            FrameRef::Down { mid, reason } => {
                let proxy = lock(&self.proxies).map.remove(&(peer.id.clone(), mid));
                if let Some(p) = proxy.and_then(|w| w.upgrade()) {
                    p.finish(reason.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(data_frames: usize) -> Peer {
        peer_with_backlog(data_frames, mpsc::channel(1).0)
    }

    fn peer_with_backlog(data_frames: usize, backlog: mpsc::Sender<(Lane, Vec<u8>)>) -> Peer {
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
            backlog_bytes: std::sync::atomic::AtomicUsize::new(0),
            backlog_max_bytes: 1 << 20,
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
        let (tx, rx) = mpsc::channel(16);
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
        p.queue_or_drop(Lane::Data, |b| encode_frame(b, &dir_frame()))
            .await
            .unwrap();
        // Full and not connected: returns at once, remembering the drop for the next connection.
        tokio::time::timeout(
            Duration::from_secs(5),
            p.queue_or_drop(Lane::Data, |b| encode_frame(b, &dir_frame())),
        )
        .await
        .expect("a sender to a disconnected peer must not wait")
        .unwrap();
        assert!(p.dropped.load(Ordering::SeqCst));
        // Full and connected: backpressure, it waits for the writer.
        p.connected.store(true, Ordering::SeqCst);
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            p.queue_or_drop(Lane::Data, |b| encode_frame(b, &dir_frame())),
        )
        .await;
        assert!(
            waited.is_err(),
            "a connected peer's full lane makes the sender wait"
        );
    }
}
