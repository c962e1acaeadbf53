//! A Throng node: the transport between nodes and actors addressed across them.
//!
//! Connections: exactly one TCP connection per pair of nodes, dialed by the node whose name sorts
//! first and accepted by the other, so two nodes never race to open duplicate connections and the
//! order of frames between them is the order they were queued. The dialer reconnects with capped
//! exponential backoff. Each connection starts with the authenticated handshake of [`super::wire`]
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

/// Where the encoded outcome of a call goes; called exactly once — by the actor's task with the
/// reply, or on drop with `Exited` if the call is dropped unhandled (its actor exited first).
struct ReplyOnce(Option<BytesReplyFn>);

type BytesReplyFn = Box<dyn FnOnce(Result<Vec<u8>, RemoteFailure>) + Send>;

impl ReplyOnce {
    fn new(f: impl FnOnce(Result<Vec<u8>, RemoteFailure>) + Send + 'static) -> Self {
        ReplyOnce(Some(Box::new(f)))
    }

    fn send(mut self, result: Result<Vec<u8>, RemoteFailure>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for ReplyOnce {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(RemoteFailure::Exited));
        }
    }
}

/// A locally exported actor, type-erased so that frames can reach it by name.
trait Export: Send + Sync {
    fn any(&self) -> &dyn std::any::Any;
    fn actor_type(&self) -> &'static str;
    fn handle(&self) -> &ActorHandle;
    /// Decode `body` and enqueue it, in order; a call's outcome goes to `reply`. Delivered at once
    /// when the mailbox has room; otherwise a future that waits for room.
    fn deliver(&self, body: &[u8], reply: Option<ReplyOnce>) -> Delivery;
}

struct TypedExport<A: RemoteActor>(ActorRef<A>);

impl<A: RemoteActor> Export for TypedExport<A> {
    fn any(&self) -> &dyn std::any::Any {
        self
    }
    fn actor_type(&self) -> &'static str {
        A::TYPE
    }
    fn handle(&self) -> &ActorHandle {
        self.0.handle()
    }
    fn deliver(&self, body: &[u8], reply: Option<ReplyOnce>) -> Delivery {
        let msg: A::Msg = match postcard::from_bytes(body) {
            Ok(m) => m,
            Err(e) => {
                let failure = RemoteFailure::Decode(e.to_string());
                if let Some(r) = reply {
                    r.send(Err(failure.clone()));
                }
                return Delivery::Done(Err(failure));
            }
        };
        // For a call, the actor's task encodes and hands the reply on, with no task in between; a
        // call dropped unhandled reports `Exited` through `ReplyOnce`'s drop.
        let reply = reply.map(|reply| {
            let encode_and_send = move |result: Result<A::Reply, ExitReason>| {
                reply.send(match result {
                    Ok(value) => postcard::to_allocvec(&value)
                        .map_err(|e| RemoteFailure::Decode(e.to_string())),
                    // Refused at the mailbox (see `refuse` below): never handled.
                    Err(ExitReason::NoProc) => Err(RemoteFailure::NotDelivered),
                    Err(reason) => Err(RemoteFailure::Failed(reason.to_string())),
                })
            };
            ReplyTo::Call(Box::new(Box::new(encode_and_send)))
        });
        // A sealed or closed mailbox hands the envelope back: tell a caller it was not delivered.
        fn refuse<A: RemoteActor>(env: Envelope<A>) -> Result<(), RemoteFailure> {
            if let Some(r) = env.reply {
                r.send(Err(ExitReason::NoProc));
            }
            Err(RemoteFailure::NotDelivered)
        }
        match self.0.try_enqueue(Envelope { msg, reply }) {
            Ok(()) => Delivery::Done(Ok(())),
            Err(SendFailure::Closed(env)) => Delivery::Done(refuse(env)),
            Err(SendFailure::Full(env)) => {
                let actor = self.0.clone();
                Delivery::Wait(Box::pin(async move {
                    match actor.enqueue(env).await {
                        Ok(()) => Ok(()),
                        Err(env) => refuse(env),
                    }
                }))
            }
        }
    }
}

/// The outcome of handing a frame to an export.
enum Delivery {
    Done(Result<(), RemoteFailure>),
    /// The mailbox is full: wait for room (backpressure on the connection).
    Wait(BoxFuture<'static, Result<(), RemoteFailure>>),
}

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
    stop: CancellationToken,
    /// The node's tasks (see [`Shared::tasks`]).
    tasks: TaskTracker,
}

impl Peer {
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

    /// Queue a control frame from a task of its own, once the lane has room.
    fn control_later(self: &Arc<Self>, frame: Frame) {
        let peer = self.clone();
        self.tasks.spawn(async move {
            let _ = peer.control(&frame).await;
        });
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

/// Sends to one remote actor: the route behind a remote [`ActorRef`].
pub struct RemoteRoute<A: Actor> {
    shared: Weak<Shared>,
    peer: NodeId,
    /// Whether `peer` is this node (a name resolved here: delivered without the transport).
    local: bool,
    /// The link to `peer` first found: kept, so that a request costs no lookup.
    link: std::sync::OnceLock<Arc<Peer>>,
    /// A newer link, once the first has closed (the peer was removed and added again).
    relink: Mutex<Option<Arc<Peer>>>,
    /// The route number bound on `link` for casts ([`Frame::Cast`]); `None` if the link could
    /// bind no more.
    bound: std::sync::OnceLock<Option<u32>>,
    name: String,
    actor_type: &'static str,
    /// The node's frame limit (checked before a message is queued).
    max_frame: usize,
    encode: fn(&A::Msg) -> Result<Vec<u8>, String>,
    /// The size of a message's encoding.
    size: fn(&A::Msg) -> Result<usize, String>,
    /// Appends a request frame carrying the message (id, name, type, message and its size,
    /// timeout in ms).
    append: AppendRequest<A>,
    /// Appends a cast frame through a bound route (route, message and its size).
    cast: AppendCast<A>,
    decode: fn(&[u8]) -> Result<A::Reply, String>,
}

type AppendCast<A> = fn(&mut Vec<u8>, u32, &<A as Actor>::Msg, usize) -> Result<(), String>;

type AppendRequest<A> =
    fn(&mut Vec<u8>, u64, &str, &'static str, &<A as Actor>::Msg, usize, u64) -> Result<(), String>;

/// Bytes a request frame adds to its name, type and body, at most (variant, id, lengths,
/// timeout), besides [`FRAME_OVERHEAD`].
const REQUEST_HEAD: usize = 48;

impl<A: RemoteActor> RemoteRoute<A> {
    fn new(shared: &Arc<Shared>, peer: &NodeId, name: &str) -> Self {
        RemoteRoute {
            shared: Arc::downgrade(shared),
            peer: peer.clone(),
            local: *peer == shared.id,
            link: std::sync::OnceLock::new(),
            relink: Mutex::new(None),
            bound: std::sync::OnceLock::new(),
            name: name.to_owned(),
            actor_type: A::TYPE,
            max_frame: shared.opts.max_frame,
            encode: |m| postcard::to_allocvec(m).map_err(|e| e.to_string()),
            size: |m| wire::encoded_len(m).map_err(|e| e.to_string()),
            append: |buf, id, to, actor_type, msg, len, timeout_ms| {
                wire::append_request(buf, id, to, actor_type, msg, len, timeout_ms)
                    .map_err(|e| e.to_string())
            },
            cast: |buf, route, msg, len| {
                wire::append_cast(buf, route, msg, len).map_err(|e| e.to_string())
            },
            decode: |b| postcard::from_bytes(b).map_err(|e| e.to_string()),
        }
    }
}

/// A request's message: typed (encoded straight into the queue) or already encoded.
enum Outgoing<M> {
    Msg(M),
    Body(Vec<u8>),
}

/// How a request to a peer was refused before it was sent.
enum Refused {
    NodeDown,
    TooLarge { size: usize, max: usize },
    Codec(String),
}

impl<A: Actor> RemoteRoute<A> {
    fn shared(&self) -> Result<Arc<Shared>, String> {
        self.shared.upgrade().ok_or_else(|| self.peer.to_string())
    }

    /// The first link found to the peer, looked up now if none was yet.
    fn first_link(&self) -> Option<&Arc<Peer>> {
        if let Some(p) = self.link.get() {
            return Some(p);
        }
        let peer = self.shared.upgrade()?.peer(&self.peer)?;
        Some(self.link.get_or_init(|| peer))
    }

    /// The link to use once the first has closed: the one kept, unless `fresh`, else the node's
    /// current one.
    fn relink(&self, fresh: bool) -> Option<Arc<Peer>> {
        let mut kept = lock(&self.relink);
        if !fresh {
            if let Some(p) = kept.as_ref() {
                return Some(p.clone());
            }
        }
        let peer = self.shared.upgrade()?.peer(&self.peer)?;
        *kept = Some(peer.clone());
        Some(peer)
    }

    /// Queue one request frame that `encode` appends on the peer's data lane if it has room
    /// (`Ok(false)`: full). With `bind`, `encode` is given the route bound for this actor on the
    /// link, if there is one, and may encode a [`Frame::Cast`] through it.
    fn try_enqueue(
        &self,
        bind: bool,
        mut encode: impl FnMut(&mut Vec<u8>, Option<u32>) -> Result<(), String>,
    ) -> Result<bool, Refused> {
        // The common case: the first link found is still open (no lock, no reference count).
        let first = self.first_link().ok_or(Refused::NodeDown)?;
        let route = if bind {
            *self
                .bound
                .get_or_init(|| first.out.bind(&self.name, self.actor_type))
        } else {
            None
        };
        match first.out.try_push(Lane::Data, |buf| encode(buf, route)) {
            Err(PushError::Closed) => {}
            other => return Self::pushed(other),
        }
        // The first link has closed (the peer was removed, and perhaps added again): use the
        // current one, looked up again once if the kept one closed too. Requests on it carry
        // names.
        for fresh in [false, true] {
            let peer = self.relink(fresh).ok_or(Refused::NodeDown)?;
            match peer.out.try_push(Lane::Data, |buf| encode(buf, None)) {
                Err(PushError::Closed) if !fresh => continue,
                other => return Self::pushed(other),
            }
        }
        Err(Refused::NodeDown)
    }

    /// [`RemoteRoute::try_enqueue`], waiting for room.
    async fn enqueue(
        &self,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), Refused> {
        let first = self.first_link().ok_or(Refused::NodeDown)?.clone();
        match first.out.push(Lane::Data, &mut encode).await {
            Err(PushError::Closed) => {}
            other => return Self::pushed(other).map(|_| ()),
        }
        for fresh in [false, true] {
            let peer = self.relink(fresh).ok_or(Refused::NodeDown)?;
            match peer.out.push(Lane::Data, &mut encode).await {
                Err(PushError::Closed) if !fresh => continue,
                other => return Self::pushed(other).map(|_| ()),
            }
        }
        Err(Refused::NodeDown)
    }

    fn pushed(result: Result<(), PushError>) -> Result<bool, Refused> {
        match result {
            Ok(()) => Ok(true),
            Err(PushError::Full) => Ok(false),
            Err(PushError::Closed) => Err(Refused::NodeDown),
            Err(PushError::TooLarge { size, max }) => Err(Refused::TooLarge { size, max }),
            Err(PushError::Codec(e)) => Err(Refused::Codec(e)),
        }
    }

    /// Queue a request carrying `msg`: encoded straight into the peer's queue when it has room;
    /// otherwise encoded once and queued when room is made (the wait holds no borrow of the
    /// message, which need not be `Sync`).
    async fn send_request(
        &self,
        id: u64,
        msg: Outgoing<A::Msg>,
        timeout_ms: u64,
    ) -> Result<(), Refused> {
        let len = match &msg {
            Outgoing::Msg(m) => (self.size)(m).map_err(Refused::Codec)?,
            Outgoing::Body(b) => b.len(),
        };
        self.check_size(len)?;
        // Casts go through a route bound on the link (no name or type on the wire).
        let queued = self.try_enqueue(id == 0, |buf, route| match (&msg, route) {
            (Outgoing::Msg(m), Some(route)) => (self.cast)(buf, route, m, len),
            (Outgoing::Msg(m), None) => {
                (self.append)(buf, id, &self.name, self.actor_type, m, len, timeout_ms)
            }
            (Outgoing::Body(b), _) => {
                wire::append_request_bytes(buf, id, &self.name, self.actor_type, b, timeout_ms)
                    .map_err(|e| e.to_string())
            }
        })?;
        if queued {
            return Ok(());
        }
        let body = match msg {
            Outgoing::Msg(m) => (self.encode)(&m).map_err(Refused::Codec)?,
            Outgoing::Body(b) => b,
        };
        self.enqueue(|buf| {
            wire::append_request_bytes(buf, id, &self.name, self.actor_type, &body, timeout_ms)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Refuse, before queueing anything, a message whose encoding (`len` bytes) would make a
    /// request frame over the frame limit (the outbox checks the exact size again).
    fn check_size(&self, len: usize) -> Result<(), Refused> {
        let size = len + self.name.len() + self.actor_type.len() + REQUEST_HEAD + FRAME_OVERHEAD;
        if size > self.max_frame {
            return Err(Refused::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    fn send_error(&self, refused: Refused) -> SendError {
        match refused {
            Refused::NodeDown => SendError::NodeDown(self.peer.to_string()),
            Refused::TooLarge { size, max } => {
                SendError::Codec(format!("{size} bytes exceeds the {max}-byte frame limit"))
            }
            Refused::Codec(e) => SendError::Codec(e),
        }
    }

    pub(crate) async fn cast(&self, msg: A::Msg) -> Result<(), SendError> {
        if self.local {
            // Addressed to this node by name: deliver locally (failures of a cast are not reported).
            let shared = self.shared().map_err(SendError::NodeDown)?;
            let body = (self.encode)(&msg).map_err(SendError::Codec)?;
            let _ = shared
                .local_request(&self.name, self.actor_type, &body, None)
                .await;
            return Ok(());
        }
        self.send_request(0, Outgoing::Msg(msg), 0)
            .await
            .map_err(|r| self.send_error(r))
    }

    pub(crate) fn try_cast(&self, msg: A::Msg) -> Result<(), TrySendError<A::Msg>> {
        if self.local {
            return Err(TrySendError::Exited(msg));
        }
        let Ok(len) = (self.size)(&msg) else {
            return Err(TrySendError::Exited(msg));
        };
        if self.check_size(len).is_err() {
            return Err(TrySendError::Exited(msg));
        }
        let queued = self.try_enqueue(true, |buf, route| match route {
            Some(route) => (self.cast)(buf, route, &msg, len),
            None => (self.append)(buf, 0, &self.name, self.actor_type, &msg, len, 0),
        });
        match queued {
            Ok(true) => Ok(()),
            Ok(false) => Err(TrySendError::Full(msg)),
            Err(_) => Err(TrySendError::Exited(msg)),
        }
    }

    pub(crate) async fn call(&self, msg: A::Msg, timeout: Duration) -> Result<A::Reply, CallError> {
        if self.local {
            let body = (self.encode)(&msg).map_err(CallError::Codec)?;
            return self.call_body(body, timeout).await;
        }
        self.exchange(timeout, Outgoing::Msg(msg)).await
    }

    /// [`RemoteRoute::call`] with the message already encoded.
    pub(crate) async fn call_body(
        &self,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        if !self.local {
            return self.exchange(timeout, Outgoing::Body(body)).await;
        }
        let shared = self
            .shared()
            .map_err(|_| CallError::NodeDown(self.peer.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let reply = ReplyOnce::new(move |r| {
            let _ = tx.send(r);
        });
        let outcome = async {
            let _ = shared
                .local_request(&self.name, self.actor_type, &body, Some(reply))
                .await;
            rx.await.unwrap_or(Err(RemoteFailure::Exited))
        };
        let result = tokio::time::timeout(timeout, outcome)
            .await
            .unwrap_or(Err(RemoteFailure::Timeout));
        self.finish_call(result.map_err(Ok), timeout)
    }

    /// Send a request carrying `msg` and wait for its reply.
    async fn exchange(
        &self,
        timeout: Duration,
        msg: Outgoing<A::Msg>,
    ) -> Result<A::Reply, CallError> {
        let down = || CallError::NodeDown(self.peer.to_string());
        let shared = self.shared().map_err(|_| down())?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        let (tx, rx) = oneshot::channel();
        lock(&shared.pending).insert(
            id,
            Pending {
                peer: self.peer.clone(),
                tx,
            },
        );
        let exchange = async {
            self.send_request(id, msg, timeout_ms)
                .await
                .map_err(|r| match r {
                    Refused::NodeDown => down(),
                    Refused::TooLarge { size, max } => CallError::TooLarge { size, max },
                    Refused::Codec(e) => CallError::Codec(e),
                })?;
            rx.await.map_err(|_| down())
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        let result = match outcome {
            Ok(r) => r,
            Err(_) => {
                lock(&shared.pending).remove(&id);
                return Err(CallError::Timeout(timeout));
            }
        };
        match result {
            Err(e) => {
                lock(&shared.pending).remove(&id);
                Err(e)
            }
            Ok(r) => self.finish_call(r.map_err(Ok), timeout),
        }
    }

    /// Turn a reply (or a failure, `Ok` = reported by the remote side) into the caller's result.
    fn finish_call(
        &self,
        result: Result<Vec<u8>, Result<RemoteFailure, CallError>>,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        match result {
            Err(Err(e)) => Err(e),
            Ok(bytes) => (self.decode)(&bytes).map_err(CallError::Codec),
            Err(Ok(failure)) => Err(match failure {
                RemoteFailure::NoSuchActor(n) => CallError::NoSuchActor(ExportId::describe(&n)),
                RemoteFailure::NotDelivered => {
                    CallError::NoSuchActor(ExportId::describe(&self.name))
                }
                RemoteFailure::UnknownActorType { expected, found } => {
                    CallError::UnknownActorType { expected, found }
                }
                RemoteFailure::Decode(m) => CallError::Codec(m),
                RemoteFailure::Exited => CallError::NodeDown(self.peer.to_string()),
                RemoteFailure::Failed(m) => CallError::Failed(ExitReason::Error(m.into())),
                RemoteFailure::Timeout => CallError::Timeout(timeout),
                RemoteFailure::UnknownType(m)
                | RemoteFailure::AlreadyStarted(m)
                | RemoteFailure::StartFailed(m) => CallError::Failed(ExitReason::Error(m.into())),
            }),
        }
    }
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
        self.shared.dists_view();
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
    /// See [`Node::remote`].
    pub(super) fn remote<A: RemoteActor>(
        self: &Arc<Self>,
        peer: &NodeId,
        name: &str,
    ) -> ActorRef<A> {
        self.remote_ref(peer, name, true)
    }

    /// The local actor exported as `name` with type `A`, if any.
    pub(super) fn local_export<A: RemoteActor>(&self, name: &str) -> Option<ActorRef<A>> {
        self.export(name).and_then(|e| {
            e.any()
                .downcast_ref::<TypedExport<A>>()
                .map(|t| t.0.clone())
        })
    }

    /// [`Shared::remote`]; without `monitor`, a transient reference for one request: no monitor
    /// is set up, so its handle does not follow the remote actor's exit.
    /// A route to the actor exported as `name` on `peer`, for requests only (no handle, no
    /// monitor).
    pub(super) fn route<A: RemoteActor>(
        self: &Arc<Self>,
        peer: &NodeId,
        name: &str,
    ) -> RemoteRoute<A> {
        RemoteRoute::new(self, peer, name)
    }

    pub(super) fn remote_ref<A: RemoteActor>(
        self: &Arc<Self>,
        peer: &NodeId,
        name: &str,
        monitor: bool,
    ) -> ActorRef<A> {
        if *peer == self.id {
            if let Some(local) = self.export(name).and_then(|e| {
                e.any()
                    .downcast_ref::<TypedExport<A>>()
                    .map(|t| t.0.clone())
            }) {
                return local;
            }
        }
        let proxy = Cell::new();
        let route = Arc::new(RemoteRoute::new(self, peer, name));
        if !monitor {
            // Nothing watches the remote actor: the handle stays "alive"; requests still fail
            // with typed errors.
        } else if *peer != self.id {
            let mid = self.next_id.fetch_add(1, Ordering::Relaxed);
            lock(&self.proxies).insert((peer.clone(), mid), Arc::downgrade(&proxy));
            match self.peer(peer) {
                Some(p) => p.control_from_actor(Frame::Monitor {
                    mid,
                    name: name.to_owned(),
                }),
                None => proxy.finish(ExitReason::NodeDown(peer.as_str().into())),
            }
        } else {
            self.monitor_local(name, Arc::downgrade(&proxy));
        }
        ActorRef::remote(route, proxy)
    }

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

    /// Export `actor` as `name`; with `replace`, a live holder is replaced (a restarted keyed child
    /// taking over its name), otherwise it is an error. The export disappears when the actor exits.
    pub(super) fn export_typed<A: RemoteActor>(
        self: &Arc<Self>,
        name: &str,
        actor: &ActorRef<A>,
        replace: bool,
    ) -> Result<(), ExportError> {
        let owned: Arc<str> = Arc::from(name);
        {
            let mut exports = self.exports_mut();
            if !replace && exports.get(name).is_some_and(|e| e.handle().is_alive()) {
                return Err(ExportError::Taken(name.to_owned()));
            }
            exports.insert(owned.clone(), Arc::new(TypedExport(actor.clone())));
        }
        let weak = Arc::downgrade(self);
        let id = actor.id();
        actor.handle().on_exit(move |_, _| {
            if let Some(shared) = weak.upgrade() {
                let mut exports = shared.exports_mut();
                if exports.get(&*owned).is_some_and(|e| e.handle().id() == id) {
                    exports.remove(&*owned);
                }
            }
        });
        Ok(())
    }

    /// Whether a live actor is exported as `name`.
    pub(super) fn is_exported(&self, name: &str) -> bool {
        self.export(name).is_some_and(|e| e.handle().is_alive())
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

    /// Remove the export `name` if actor `id` holds it.
    pub(super) fn unexport(&self, name: &str, id: crate::ActorId) {
        let mut exports = self.exports_mut();
        if exports.get(name).is_some_and(|e| e.handle().id() == id) {
            exports.remove(name);
        }
    }

    /// The exports, for a change (which readers' caches see through `exports_version`).
    fn exports_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<dyn Export>>> {
        let exports = self.exports.write().unwrap_or_else(|p| p.into_inner());
        self.exports_version.fetch_add(1, Ordering::AcqRel);
        exports
    }

    /// Log an incoming connection refused: at warn the first time per address and reason in
    /// [`REFUSAL_LOG_INTERVAL`], at debug otherwise.
    fn log_refusal(&self, addr: SocketAddr, why: String) {
        let now = tokio::time::Instant::now();
        let fresh = {
            let mut seen = lock(&self.refusals);
            if seen.len() >= REFUSAL_LOG_KEYS {
                seen.clear();
            }
            match seen.entry((addr.ip(), why.clone())) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let stale = now.duration_since(*e.get()) >= REFUSAL_LOG_INTERVAL;
                    if stale {
                        e.insert(now);
                    }
                    stale
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(now);
                    true
                }
            }
        };
        if fresh {
            tracing::warn!(%addr, error = %why, "refused connection");
        } else {
            tracing::debug!(%addr, error = %why, "refused connection");
        }
    }

    fn add_peer(self: &Arc<Self>, peer: NodeId, addr: SocketAddr) {
        if peer == self.id {
            return;
        }
        let link = self.link(&peer);
        *lock(&link.addr) = Some(addr);
    }

    fn remove_peer(&self, peer: &NodeId) {
        let removed = lock(&self.peers).remove(peer);
        if let Some(p) = removed {
            p.stop.cancel();
            p.out.close();
        }
        self.peer_lost(peer);
    }

    fn peer(&self, id: &NodeId) -> Option<Arc<Peer>> {
        lock(&self.peers).get(id).cloned()
    }

    /// The link to `id`, created (with its task) on first use.
    fn link(self: &Arc<Self>, id: &NodeId) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get(id) {
            return p.clone();
        }
        let (inbound, inbound_rx) = mpsc::channel(2);
        let peer = Arc::new(Peer {
            id: id.clone(),
            out: Outbox::new(Limits {
                control_frames: self.opts.control_queue,
                data_frames: self.opts.data_queue,
                lane_bytes: self.opts.max_frame,
                max_frame: self.opts.max_frame,
            }),
            inbound,
            addr: Mutex::new(None),
            connected: std::sync::atomic::AtomicBool::new(false),
            stop: self.stop.child_token(),
            tasks: self.tasks.clone(),
        });
        peers.insert(id.clone(), peer.clone());
        self.tasks
            .spawn(link_task(Arc::downgrade(self), peer.clone(), inbound_rx));
        peer
    }

    /// The connection to `peer` is gone: fail its calls in flight and its proxies.
    fn peer_lost(&self, peer: &NodeId) {
        lock(&self.pending).retain(|_, p| p.peer != *peer);
        let proxies: Vec<Weak<Cell>> = {
            let mut map = lock(&self.proxies);
            let keys: Vec<(NodeId, u64)> = map.keys().filter(|(n, _)| n == peer).cloned().collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        };
        for p in proxies.into_iter().filter_map(|w| w.upgrade()) {
            p.finish(ExitReason::NodeDown(peer.as_str().into()));
        }
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

    /// The handle of the actor exported as `name`, if any.
    pub(super) fn exported_handle(&self, name: &str) -> Option<ActorHandle> {
        self.export(name).map(|e| e.handle().clone())
    }

    fn export(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
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
                Some(d) => d.deliver(peer.id.clone(), msg),
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

/// Carry membership into the node: the view (ring, leaving members, listeners), connections,
/// the registry and the distributed supervisors. The first member list and a re-sync after
/// missed events go through [`View::reset`], which announces what changed, like any event.
async fn membership_glue(
    shared: Weak<Shared>,
    membership: Weak<Membership>,
    stop: CancellationToken,
) {
    let Some(m) = membership.upgrade() else {
        return;
    };
    let (members, mut rx) = m.subscribe_with_members();
    let leaving = m.leaving();
    drop(m);
    if let Some(s) = shared.upgrade() {
        s.view_reset(&members, &leaving);
    }
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => e,
        };
        let Some(s) = shared.upgrade() else { return };
        match event {
            Ok(MembershipEvent::NodeUp(info)) => s.member_changed(ClusterEvent::NodeUp(info)),
            Ok(MembershipEvent::NodeLeaving(info)) => {
                s.member_changed(ClusterEvent::NodeLeaving(info))
            }
            Ok(MembershipEvent::NodeDown(info)) => s.member_changed(ClusterEvent::NodeDown(info)),
            Ok(MembershipEvent::Rejoined(info)) => {
                tracing::warn!(node = %info.id, "this node was declared down and rejoined");
                s.view.apply(ClusterEvent::Rejoined(info));
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "membership events lagged; re-syncing");
                let Some(m) = membership.upgrade() else {
                    return;
                };
                let (members, fresh) = m.subscribe_with_members();
                rx = fresh;
                s.view_reset(&members, &m.leaving());
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Shared {
    /// Install a full member list (see [`View::reset`]) and carry out what changed.
    fn view_reset(self: &Arc<Self>, members: &[MemberInfo], leaving: &[MemberInfo]) {
        self.names.members_view(members);
        for change in self.view.reset(members, leaving) {
            self.member_effects(&change);
        }
        self.dists_view();
    }

    /// One membership change: the connections and the registry first, then the view (which tells
    /// the listeners), then the supervisors.
    fn member_changed(self: &Arc<Self>, event: ClusterEvent) {
        match &event {
            ClusterEvent::NodeUp(info) => {
                tracing::info!(node = %info.id, incarnation = %info.incarnation, "node up");
                self.names.node_up(&info.member());
            }
            ClusterEvent::NodeLeaving(info) => tracing::info!(node = %info.id, "node leaving"),
            ClusterEvent::NodeDown(info) => {
                tracing::warn!(node = %info.id, incarnation = %info.incarnation, "node down");
                self.names.node_down(&info.id);
            }
            ClusterEvent::Rejoined(_) => {}
        }
        self.member_effects(&event);
        self.view.apply(event.clone());
        self.dists_view();
        if let ClusterEvent::NodeDown(info) = event {
            let down = info.id;
            self.dists_notify(|| super::dist::Internal::NodeDown(down.clone()));
        }
    }

    /// What a change means for the connections.
    fn member_effects(self: &Arc<Self>, event: &ClusterEvent) {
        match event {
            ClusterEvent::NodeUp(info) => self.add_peer(info.id.clone(), info.rpc_addr),
            ClusterEvent::NodeDown(info) => self.remove_peer(&info.id),
            ClusterEvent::NodeLeaving(_) | ClusterEvent::Rejoined(_) => {}
        }
    }
}

/// Answer request `id` from `peer`: there is no supervisor `sup` here.
async fn no_supervisor(peer: &Arc<Peer>, id: u64, sup: &str) {
    let result = Err(RemoteFailure::NoSuchActor(sup.to_owned()));
    let _ = peer.control(&Frame::Reply { id, result }).await;
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

async fn read_plain<T: DeserializeOwned>(
    reader: &mut FramedRead<ReadHalf, LengthDelimitedCodec>,
) -> Result<T, WireError> {
    match reader.next().await {
        Some(Ok(bytes)) => wire::decode(&bytes),
        Some(Err(e)) => Err(io_error(e)),
        None => Err(WireError::Malformed(
            "connection closed during handshake".into(),
        )),
    }
}

async fn write_plain<T: Serialize>(
    writer: &mut FramedWrite<WriteHalf, LengthDelimitedCodec>,
    value: &T,
) -> Result<(), WireError> {
    writer
        .send(Bytes::from(wire::encode(value)))
        .await
        .map_err(io_error)
}

/// A read or write failure during the handshake; TLS refusals (an alert from the peer, a
/// certificate we reject) keep their TLS meaning.
fn io_error(e: std::io::Error) -> WireError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => WireError::Tls(t.to_string()),
        None => WireError::Malformed(e.to_string()),
    }
}

/// The byte stream under a connection: plain TCP, or TLS over TCP.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

type ReadHalf = tokio::io::ReadHalf<Box<dyn Stream>>;
type WriteHalf = tokio::io::WriteHalf<Box<dyn Stream>>;

fn split(
    stream: Box<dyn Stream>,
    max_frame: usize,
) -> (
    FramedRead<ReadHalf, LengthDelimitedCodec>,
    FramedWrite<WriteHalf, LengthDelimitedCodec>,
) {
    let (r, w) = tokio::io::split(stream);
    (
        FramedRead::new(r, codec(max_frame)),
        FramedWrite::new(w, codec(max_frame)),
    )
}

fn nonce() -> [u8; 32] {
    // Handshakes are rare: a fresh OS-seeded generator each time keeps no global RNG state.
    let mut n = [0u8; 32];
    match rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng) {
        Ok(mut rng) => rng.fill(&mut n),
        // No OS entropy: the handshake still authenticates (MACs), only nonce freshness suffers.
        Err(_) => n = *blake3::hash(&std::process::id().to_le_bytes()).as_bytes(),
    }
    n
}

async fn dial(shared: &Shared, expected: &NodeId, addr: SocketAddr) -> Result<Conn, WireError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| WireError::Malformed(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let stream: Box<dyn Stream> = match &shared.opts.security {
        Security::SharedSecret => Box::new(stream),
        Security::Tls(t) => {
            // The acceptor's certificate must chain to the CA and carry the name we dial.
            let name =
                tls::server_name(expected.as_str()).map_err(|e| WireError::Tls(e.to_string()))?;
            Box::new(
                t.connector()
                    .connect(name, stream)
                    .await
                    .map_err(io_error)?,
            )
        }
    };
    let (mut reader, mut writer) = split(stream, shared.opts.max_frame);
    let hello = Hello {
        magic: wire::MAGIC,
        version: wire::PROTOCOL_VERSION,
        node: shared.id.to_string(),
        incarnation: shared.incarnation.get(),
        nonce: nonce(),
    };
    write_plain(&mut writer, &hello).await?;
    let ack: HelloAck = read_plain(&mut reader).await?;
    let auth = wire::verify_ack(&shared.key, &hello, &ack)?;
    if ack.node != expected.as_str() {
        return Err(WireError::Malformed(format!(
            "dialed {expected} at {addr} but {} answered",
            ack.node
        )));
    }
    write_plain(&mut writer, &auth).await?;
    let (sealer, opener) = match shared.opts.security {
        Security::SharedSecret => wire::session(&shared.key, Role::Dialer, &hello, &ack),
        Security::Tls(_) => (Sealer::unsealed(), Opener::unsealed()),
    };
    Ok(Conn {
        reader,
        writer,
        sealer,
        opener,
        incarnation: ack.incarnation,
    })
}

/// First byte of a TLS connection (the content type of a handshake record). A shared-secret hello
/// starts with its 4-byte big-endian length, whose first byte is 0 for any frame under 16 MiB.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn accept(shared: &Shared, stream: TcpStream) -> Result<(NodeId, Conn), WireError> {
    let _ = stream.set_nodelay(true);
    // A peer in the other security mode would otherwise fail with a puzzling decode error.
    let mut first = [0u8; 1];
    let peeked = stream.peek(&mut first).await.map_err(io_error)?;
    let speaks_tls = peeked == 1 && first[0] == TLS_HANDSHAKE_RECORD;
    match (&shared.opts.security, speaks_tls) {
        (Security::SharedSecret, true) => {
            return Err(WireError::Tls(
                "peer speaks TLS but this node is in shared-secret mode (set tls_ca, tls_cert, tls_key)"
                    .into(),
            ))
        }
        (Security::Tls(_), false) if peeked > 0 => {
            return Err(WireError::Tls(
                "peer does not speak TLS; is it in shared-secret mode?".into(),
            ))
        }
        _ => {}
    }
    // In TLS mode, the client certificate the CA vouched for (the handshake requires one).
    let mut certified = None;
    let stream: Box<dyn Stream> = match &shared.opts.security {
        Security::SharedSecret => Box::new(stream),
        Security::Tls(t) => {
            let tls = t.acceptor().accept(stream).await.map_err(io_error)?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned()
                .ok_or_else(|| WireError::Tls("peer presented no certificate".into()))?;
            certified = Some(cert);
            Box::new(tls)
        }
    };
    let (mut reader, mut writer) = split(stream, shared.opts.max_frame);
    let hello: Hello = read_plain(&mut reader).await?;
    wire::check_hello(&hello)?;
    let peer = NodeId::new(&hello.node).map_err(|e| WireError::Malformed(e.to_string()))?;
    if let Some(cert) = &certified {
        // A node speaks only as the name it was issued.
        if !tls::certified_as(cert, peer.as_str()) {
            return Err(WireError::NotCertified {
                claimed: hello.node,
                certified: tls::cert_names(cert),
            });
        }
    }
    let mut ack = HelloAck {
        version: wire::PROTOCOL_VERSION,
        node: shared.id.to_string(),
        incarnation: shared.incarnation.get(),
        nonce: nonce(),
        mac: [0; 32],
    };
    wire::sign_ack(&shared.key, &hello, &mut ack);
    write_plain(&mut writer, &ack).await?;
    let auth: Auth = read_plain(&mut reader).await?;
    wire::verify_auth(&shared.key, &hello, &ack, &auth)?;
    let (sealer, opener) = match shared.opts.security {
        Security::SharedSecret => wire::session(&shared.key, Role::Acceptor, &hello, &ack),
        Security::Tls(_) => (Sealer::unsealed(), Opener::unsealed()),
    };
    Ok((
        peer,
        Conn {
            reader,
            writer,
            sealer,
            opener,
            incarnation: hello.incarnation,
        },
    ))
}

async fn accept_loop(shared: Weak<Shared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.tasks.clone().spawn(async move {
            let timeout = shared.opts.handshake_timeout;
            let handshake = tokio::select! {
                // A node shutting down does not wait for handshakes in progress.
                _ = shared.stop.cancelled() => return,
                h = tokio::time::timeout(timeout, accept(&shared, stream)) => h,
            };
            match handshake {
                Ok(Ok((peer, conn))) if peer == shared.id => {
                    tracing::warn!(%addr, %peer, incarnation = conn.incarnation, "refused connection: peer claims our own name");
                }
                Ok(Ok((peer, conn))) => {
                    if shared.view.admits(&peer, Incarnation(conn.incarnation)) {
                        let link = shared.link(&peer);
                        let _ = link.inbound.send(conn).await;
                    } else {
                        shared.log_refusal(
                            addr,
                            format!(
                                "{peer} was declared down; it must rejoin the membership first"
                            ),
                        );
                    }
                }
                Ok(Err(e)) => shared.log_refusal(addr, e.to_string()),
                Err(_) => shared.log_refusal(addr, "handshake timed out".into()),
            }
        });
    }
}

/// Whether a failed dial was the peer (or we) refusing the other's identity, as opposed to the
/// network failing: refusals are logged at warn.
fn is_refusal(e: &WireError) -> bool {
    matches!(
        e,
        WireError::Tls(_)
            | WireError::NotCertified { .. }
            | WireError::Unauthenticated
            | WireError::Version { .. }
    )
}

enum Ended {
    Lost(String),
    Replaced(Box<Conn>),
    Stopped,
}

async fn link_task(shared: Weak<Shared>, peer: Arc<Peer>, inbound_rx: mpsc::Receiver<Conn>) {
    link_loop(shared, peer.clone(), inbound_rx).await;
    // The link is over (the peer was removed or the node stopped): senders waiting for room in
    // its queues learn it now.
    peer.out.close();
}

async fn link_loop(shared: Weak<Shared>, peer: Arc<Peer>, mut inbound_rx: mpsc::Receiver<Conn>) {
    let mut connections = 0u64;
    let mut last_incarnation: Option<u64> = None;
    let Some(me) = shared.upgrade().map(|s| s.id.clone()) else {
        return;
    };
    let dialer = me < peer.id;
    let (first, max) = shared
        .upgrade()
        .map(|s| s.opts.backoff)
        .unwrap_or((Duration::from_millis(50), Duration::from_secs(2)));
    let mut backoff = first;
    let mut next: Option<Conn> = None;
    // The last refusal logged at warn, so a peer that keeps refusing us is logged once per cause.
    let mut refused: Option<String> = None;
    loop {
        let conn = match next.take() {
            Some(c) => c,
            None if dialer => {
                let addr = *lock(&peer.addr);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let attempt = async {
                    match addr {
                        Some(addr) => tokio::time::timeout(
                            shared.opts.handshake_timeout,
                            dial(&shared, &peer.id, addr),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(WireError::Malformed("handshake timed out".into()))
                        }),
                        None => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                    }
                };
                tokio::select! {
                    _ = peer.stop.cancelled() => return,
                    c = inbound_rx.recv() => match c { Some(c) => c, None => return },
                    r = attempt, if addr.is_some() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            let why = e.to_string();
                            if !is_refusal(&e) {
                                tracing::debug!(peer = %peer.id, error = %why, "connect failed; retrying");
                            } else if refused.as_deref() != Some(why.as_str()) {
                                tracing::warn!(peer = %peer.id, error = %why, "handshake refused; retrying");
                                refused = Some(why);
                            }
                            drop(shared);
                            tokio::select! {
                                _ = peer.stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(max);
                            continue;
                        }
                    },
                    _ = tokio::time::sleep(first), if addr.is_none() => continue,
                }
            }
            None => tokio::select! {
                _ = peer.stop.cancelled() => return,
                c = inbound_rx.recv() => match c { Some(c) => c, None => return },
            },
        };
        // A run that membership declared down talks to this node again only once it rejoined
        // (the acceptor checks too; this covers the connections this node dials).
        let admitted = shared
            .upgrade()
            .is_some_and(|s| s.view.admits(&peer.id, Incarnation(conn.incarnation)));
        if !admitted {
            tracing::debug!(peer = %peer.id, incarnation = conn.incarnation, "not connecting to a run declared down");
            drop(conn);
            tokio::select! {
                _ = peer.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
            continue;
        }
        backoff = first;
        refused = None;
        tracing::info!(peer = %peer.id, incarnation = conn.incarnation, "connected");
        peer.connected.store(true, Ordering::Release);
        connections += 1;
        let same_run = last_incarnation.replace(conn.incarnation) == Some(conn.incarnation);
        if connections > 1 && same_run {
            // Frames in flight on the lost connection may be gone: directories re-send. (A new
            // incarnation is a new node: membership reports the old one down first.)
            if let Some(s) = shared.upgrade() {
                s.dists_notify(|| super::dist::Internal::Reconnected(peer.id.clone()));
            }
        }
        let ended = run_conn(&shared, &peer, conn, &mut inbound_rx).await;
        peer.connected.store(false, Ordering::Release);
        if let Some(s) = shared.upgrade() {
            s.peer_lost(&peer.id);
        }
        match ended {
            Ended::Stopped => return,
            Ended::Replaced(c) => {
                tracing::info!(peer = %peer.id, "connection replaced by a new one from the peer");
                next = Some(*c);
            }
            Ended::Lost(why) => tracing::warn!(peer = %peer.id, %why, "connection lost"),
        }
    }
}

/// Records are closed at about this size, so that the receiver starts on a batch before all of
/// it has arrived and one record's seal never covers megabytes.
const RECORD_TARGET: usize = 64 * 1024;

/// Sealed records are written out once this many bytes are ready.
const WRITE_TARGET: usize = 256 * 1024;

/// The frames (each with its length prefix) of a lane's buffer, in order.
fn lane_frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        // The outbox writes whole frames with their lengths, so the split does not fail.
        let len = u32::from_le_bytes(rest.get(..wire::FRAME_PREFIX)?.try_into().ok()?) as usize;
        let (frame, tail) = rest.split_at_checked(wire::FRAME_PREFIX + len)?;
        rest = tail;
        Some(frame)
    })
}

/// Writes one connection's records: sealed, length-prefixed (the framing of
/// [`LengthDelimitedCodec`]: a 4-byte big-endian length, then the record), built at the end of one
/// output buffer and written in few large writes.
struct Writer {
    stream: WriteHalf,
    sealer: Sealer,
    out: Vec<u8>,
    /// Where the open record's length prefix is in `out`, if a record is open.
    open: Option<usize>,
    /// Largest record content (before the seal).
    max_record: usize,
    /// Size of the pieces a frame too large for one record is sent in.
    piece: usize,
}

impl Writer {
    /// Append one frame (its prefix and encoding) to the open record, first closing that record
    /// if the frame would take it over its size.
    fn push(&mut self, frame: &[u8]) -> Result<(), String> {
        if let Some(start) = self.open {
            let len = self.out.len() - start - 4;
            if len + frame.len() > self.max_record || len >= RECORD_TARGET {
                self.close()?;
            }
        }
        if self.open.is_none() {
            self.open = Some(self.out.len());
            self.out.extend_from_slice(&[0; 4]);
        }
        self.out.extend_from_slice(frame);
        Ok(())
    }

    /// Seal the open record, if any, and write its length.
    fn close(&mut self) -> Result<(), String> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        self.sealer
            .seal_from(&mut self.out, start + 4)
            .map_err(|e| e.to_string())?;
        let len = (self.out.len() - start - 4) as u32;
        self.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Close the open record and write out everything built.
    async fn flush(&mut self) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        self.close()?;
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.out.clear();
            if self.out.capacity() > 2 * WRITE_TARGET {
                self.out.shrink_to(RECORD_TARGET);
            }
        }
        self.stream.flush().await.map_err(|e| format!("write: {e}"))
    }

    /// Seal and write one batch taken from the outbox: control frames first, then data.
    async fn batch(&mut self, control: &[u8], data: &[u8], outbox: &Outbox) -> Result<(), String> {
        let control = lane_frames(control).map(|f| (f, None));
        let data = lane_frames(data).map(|f| (f, Some(outbox)));
        for (frame, between) in control.chain(data) {
            if frame.len() > self.max_record {
                // Control frames queued meanwhile go between the pieces of a data frame, never
                // ahead of control frames of this batch (which are all written before it).
                self.chunked(&frame[wire::FRAME_PREFIX..], between).await?;
                continue;
            }
            self.push(frame)?;
            if self.out.len() >= WRITE_TARGET {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    /// Send one frame's encoding as [`Frame::Chunk`] pieces, flushing after each; with `between`,
    /// each piece follows the control frames queued there since the last one, so that replies and
    /// monitors overtake a long transfer.
    async fn chunked(&mut self, encoded: &[u8], between: Option<&Outbox>) -> Result<(), String> {
        self.close()?;
        let mut control = Vec::new();
        let mut chunk = Vec::new();
        let mut pieces = encoded.chunks(self.piece).peekable();
        while let Some(piece) = pieces.next() {
            if let Some(outbox) = between {
                outbox.take_control(&mut control);
            }
            for frame in lane_frames(&control) {
                self.push(frame)?;
            }
            self.close()?;
            control.clear();
            chunk.clear();
            wire::push_frame(
                &mut chunk,
                &Frame::Chunk {
                    last: pieces.peek().is_none(),
                    bytes: piece.to_vec(),
                },
            );
            self.push(&chunk)?;
            self.flush().await?;
        }
        Ok(())
    }
}

/// Exports a reader looked up, kept while no export changes.
struct ExportCache {
    version: u64,
    entries: HashMap<String, Arc<dyn Export>>,
}

/// Bound on a reader's export cache; beyond it the cache starts over.
const EXPORT_CACHE: usize = 256;

impl ExportCache {
    fn get(&mut self, shared: &Shared, name: &str) -> Option<Arc<dyn Export>> {
        let version = shared.exports_version.load(Ordering::Acquire);
        if version != self.version {
            self.entries.clear();
            self.version = version;
        }
        if let Some(e) = self.entries.get(name) {
            return Some(e.clone());
        }
        let e = shared.export(name)?;
        if self.entries.len() >= EXPORT_CACHE {
            self.entries.clear();
        }
        self.entries.insert(name.to_owned(), e.clone());
        Some(e)
    }
}

/// A route the peer bound on this connection ([`Frame::Bind`]), with the export it last led to.
struct BoundRoute {
    to: String,
    actor_type: String,
    /// The export found, and the `exports_version` it was found at.
    export: Option<(u64, Arc<dyn Export>)>,
}

/// What one connection's reader keeps between frames.
struct Inbound {
    peer: Arc<Peer>,
    max_frame: usize,
    /// A frame being reassembled from chunks; bounded by the frame limit.
    partial: Vec<u8>,
    cache: ExportCache,
    routes: Vec<BoundRoute>,
    /// Bytes of names and types in `routes` (at most [`wire::MAX_ROUTE_BYTES`]).
    route_bytes: usize,
}

impl Inbound {
    /// Handle one frame of a record; an error ends the connection.
    async fn frame(&mut self, shared: &Arc<Shared>, frame: FrameRef<'_>) -> Result<(), String> {
        let FrameRef::Chunk { last, bytes } = frame else {
            return self.deliver(shared, frame).await;
        };
        if self.partial.len() + bytes.len() > self.max_frame {
            return Err(format!(
                "refused chunked frame over {} bytes",
                self.max_frame
            ));
        }
        self.partial.extend_from_slice(bytes);
        if !last {
            return Ok(());
        }
        let whole = std::mem::take(&mut self.partial);
        let result = match wire::decode::<FrameRef>(&whole) {
            Ok(FrameRef::Chunk { .. }) => Err("refused nested chunk".into()),
            Ok(f) => self.deliver(shared, f).await,
            Err(e) => Err(format!("refused frame: {e}")),
        };
        self.partial = whole;
        self.partial.clear();
        self.partial.shrink_to(wire::CHUNK_SIZE);
        result
    }

    /// Handle one whole frame.
    async fn deliver(&mut self, shared: &Arc<Shared>, frame: FrameRef<'_>) -> Result<(), String> {
        let outcome = match frame {
            FrameRef::Bind {
                route,
                to,
                actor_type,
            } => {
                let r = route as usize;
                let replaced = self
                    .routes
                    .get(r)
                    .map_or(0, |b| b.to.len() + b.actor_type.len());
                let bytes = self.route_bytes - replaced + to.len() + actor_type.len();
                if r > self.routes.len()
                    || route >= wire::MAX_ROUTES
                    || bytes > wire::MAX_ROUTE_BYTES
                {
                    return Err(format!("refused bind of route {route}"));
                }
                let bound = BoundRoute {
                    to: to.to_owned(),
                    actor_type: actor_type.to_owned(),
                    export: None,
                };
                self.route_bytes = bytes;
                if r < self.routes.len() {
                    self.routes[r] = bound;
                } else {
                    self.routes.push(bound);
                }
                return Ok(());
            }
            FrameRef::Cast { route, body } => {
                let Some(bound) = self.routes.get_mut(route as usize) else {
                    return Err(format!("refused cast on unbound route {route}"));
                };
                let version = shared.exports_version.load(Ordering::Acquire);
                let export = match &bound.export {
                    Some((v, e)) if *v == version => Some(e.clone()),
                    _ => {
                        let e = shared.export(&bound.to);
                        bound.export = e.clone().map(|e| (version, e));
                        e
                    }
                };
                deliver_cast(export, &bound.to, &bound.actor_type, body).await
            }
            FrameRef::Request {
                id: 0,
                to,
                actor_type,
                body,
                ..
            } => {
                // A cast by name: delivered here, with no frame future, to a cached export.
                let export = self.cache.get(shared, to);
                deliver_cast(export, to, actor_type, body).await
            }
            f => {
                shared.on_frame(&self.peer, f).await;
                Ok(())
            }
        };
        if let Err(failure) = outcome {
            tracing::debug!(peer = %self.peer.id, ?failure, "remote cast not delivered");
        }
        Ok(())
    }
}

/// Deliver a cast read from a peer to `export`, the actor exported as `to` (if any).
async fn deliver_cast(
    export: Option<Arc<dyn Export>>,
    to: &str,
    actor_type: &str,
    body: &[u8],
) -> Result<(), RemoteFailure> {
    match export {
        None => Err(RemoteFailure::NoSuchActor(to.to_owned())),
        Some(e) if e.actor_type() != actor_type => Err(RemoteFailure::UnknownActorType {
            expected: actor_type.to_owned(),
            found: e.actor_type().to_string(),
        }),
        Some(e) => match e.deliver(body, None) {
            Delivery::Done(r) => r,
            Delivery::Wait(f) => f.await,
        },
    }
}

/// Carry frames over one connection until it fails, is replaced, or the link stops.
async fn run_conn(
    shared: &Weak<Shared>,
    peer: &Arc<Peer>,
    conn: Conn,
    inbound_rx: &mut mpsc::Receiver<Conn>,
) -> Ended {
    let Conn {
        mut reader,
        writer,
        sealer,
        mut opener,
        ..
    } = conn;
    let (lost_tx, mut lost_rx) = oneshot::channel::<String>();
    let reader_shared = shared.clone();
    let max_frame = shared.upgrade().map_or(1 << 20, |s| s.opts.max_frame);
    let mut inbound = Inbound {
        peer: peer.clone(),
        max_frame,
        partial: Vec::new(),
        cache: ExportCache {
            version: u64::MAX,
            entries: HashMap::new(),
        },
        routes: Vec::new(),
        route_bytes: 0,
    };
    let reader = peer.tasks.spawn(async move {
        let why = 'records: loop {
            let mut record: BytesMut = match reader.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => break format!("read: {e}"),
                None => break "closed by peer".to_string(),
            };
            let len = match opener.open_in_place(&mut record) {
                Ok(len) => len,
                Err(e) => break format!("refused record: {e}"),
            };
            let Some(shared) = reader_shared.upgrade() else {
                break "node stopped".into();
            };
            for frame in wire::frames(&record[..len]) {
                let handled = match frame {
                    Ok(f) => inbound.frame(&shared, f).await,
                    Err(e) => Err(format!("refused frame: {e}")),
                };
                if let Err(why) = handled {
                    break 'records why;
                }
            }
        };
        let _ = lost_tx.send(why);
    });
    let stop = peer.stop.clone();
    // A frame whose encoding exceeds CHUNK_SIZE (or the frame limit, if smaller) goes in pieces.
    let max_record = (max_frame - wire::SEAL_OVERHEAD).min(wire::CHUNK_SIZE + wire::FRAME_PREFIX);
    let mut writer = Writer {
        stream: writer.into_inner(),
        sealer,
        out: Vec::with_capacity(RECORD_TARGET),
        open: None,
        max_record,
        // Room for the chunk frame's own encoding and prefix.
        piece: (max_record - 64).min(wire::CHUNK_SIZE),
    };
    // The routes bound on the lost connection, before anything queued since (which may use them).
    let (mut control, mut data) = (Vec::new(), Vec::new());
    peer.out.rebinds(&mut data);
    let mut rebound = !data.is_empty();
    let ended = loop {
        if rebound {
            // Sent as a batch of its own, ahead of the queues.
            rebound = false;
        } else if !peer.out.take(&mut control, &mut data) {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ended::Stopped,
                why = &mut lost_rx => break Ended::Lost(why.unwrap_or_else(|_| "reader ended".into())),
                c = inbound_rx.recv() => match c {
                    Some(c) => break Ended::Replaced(Box::new(c)),
                    None => break Ended::Stopped,
                },
                _ = peer.out.ready() => continue,
            }
        }
        let written = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ended::Stopped,
            why = &mut lost_rx => break Ended::Lost(why.unwrap_or_else(|_| "reader ended".into())),
            r = writer.batch(&control, &data, &peer.out) => r,
        };
        if let Err(why) = written {
            break Ended::Lost(why);
        }
        Outbox::recycle(&mut control);
        Outbox::recycle(&mut data);
    };
    reader.abort();
    ended
}
