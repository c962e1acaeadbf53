//! Addresses of actors: the typed [`ActorRef`] and the type-erased [`ActorHandle`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::cell::{Cell, Signal};
use crate::mailbox::{Mailbox, SendFailure};
use crate::{Actor, ActorId, ExitReason};

/// How long [`ActorRef::call`] waits by default (as `GenServer.call/2`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

type ReplyResult<A> = Result<<A as Actor>::Reply, ExitReason>;
type ReplyFn<A> = Box<dyn FnOnce(ReplyResult<A>) + Send>;

/// Where a call's reply goes: a waiting local caller, or a function the actor's task runs itself
/// (the remote dispatcher encodes and queues the reply frame there, with no task in between).
pub(crate) enum ReplyTo<A: Actor> {
    Local(oneshot::Sender<ReplyResult<A>>),
    Call(Box<ReplyFn<A>>),
}

impl<A: Actor> ReplyTo<A> {
    pub(crate) fn send(self, result: ReplyResult<A>) {
        match self {
            ReplyTo::Local(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Call(f) => (*f)(result),
        }
    }
}

/// A message in a mailbox and, for a call, where the reply goes. A reply target dropped unused
/// (the actor exited with the call queued) tells a local caller through its closed channel; a
/// remote one through the drop guard the dispatcher puts in its function.
pub(crate) struct Envelope<A: Actor> {
    pub(crate) msg: A::Msg,
    pub(crate) reply: Option<ReplyTo<A>>,
}

/// A cast could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The actor has exited; nothing was delivered.
    #[error("actor {0} has exited")]
    Exited(ActorId),
    /// The remote actor's node is down or unknown; nothing was sent.
    #[error("node {0} is down or unreachable")]
    NodeDown(String),
    /// The message could not be encoded, or is over the frame limit; nothing was sent.
    #[error("cannot send: {0}")]
    Codec(String),
}

/// A non-waiting cast could not be delivered; the message is handed back so nothing is lost.
#[derive(PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<M> {
    /// The mailbox is at capacity: back off or use [`ActorRef::cast`], which waits for room.
    #[error("mailbox full")]
    Full(M),
    /// The actor has exited.
    #[error("actor has exited")]
    Exited(M),
}

impl<M> TrySendError<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            TrySendError::Full(m) | TrySendError::Exited(m) => m,
        }
    }
}

impl<M> fmt::Debug for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Exited(_) => f.write_str("Exited(..)"),
        }
    }
}

/// A call got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply within the timeout (including time spent waiting for mailbox room). The message
    /// may still be handled later.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The actor had exited, or exited before handling the message.
    #[error("actor {0} exited before replying")]
    Exited(ActorId),
    /// The handler failed on this message; the actor stopped with this reason.
    #[error("actor failed handling the call: {0}")]
    Failed(ExitReason),
    /// The actor's node is down, unknown, or the connection to it was lost with the call in flight
    /// (the call may or may not have been handled).
    #[error("node {0} is down or unreachable")]
    NodeDown(String),
    /// The remote node runs no such actor: the text names what was asked for (an export name, or
    /// the distributed child or registered name it stands for).
    #[error("no actor {0} on the remote node")]
    NoSuchActor(String),
    /// The remote name is held by an actor of another type.
    #[error("remote actor is a {found}, not a {expected}")]
    UnknownActorType {
        /// The type the caller addressed.
        expected: String,
        /// The type exported there.
        found: String,
    },
    /// The message or reply could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// The encoded message exceeds the frame limit; nothing was sent.
    #[error("message of {size} bytes exceeds the {max}-byte frame limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A type-erased handle to an actor: enough to identify, monitor, link, stop or kill it without
/// knowing its message type. Obtained from [`ActorRef::handle`].
#[derive(Clone)]
pub struct ActorHandle {
    pub(crate) cell: Arc<Cell>,
}

impl fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle({})", self.cell.id())
    }
}

impl PartialEq for ActorHandle {
    fn eq(&self, other: &Self) -> bool {
        self.cell.id() == other.cell.id()
    }
}

impl Eq for ActorHandle {}

impl AsRef<ActorHandle> for ActorHandle {
    fn as_ref(&self) -> &ActorHandle {
        self
    }
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.cell.id()
    }

    /// Whether the actor has not exited yet.
    pub fn is_alive(&self) -> bool {
        self.cell.is_alive()
    }

    /// Why the actor exited, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.cell.exit_reason()
    }

    /// Ask the actor to stop with `reason` after its current callback; `stopped` runs. Returns at
    /// once: await [`ActorHandle::monitor`] to know when it is done.
    pub fn stop(&self, reason: ExitReason) {
        self.cell.deliver(Signal::Stop(reason));
    }

    /// Drain the actor and stop it: it handles every message already in its mailbox, refuses new
    /// ones (senders get `Exited`: nothing delivered), then stops with [`ExitReason::Shutdown`]
    /// (`stopped` runs). Used to move an actor without losing or duplicating a message.
    pub fn drain_stop(&self) {
        self.cell.seal();
    }

    /// Stop the actor now, at its next await point, without running `stopped`. It exits with
    /// [`ExitReason::Killed`].
    pub fn kill(&self) {
        self.cell.kill();
    }

    /// A future that resolves with the exit reason once the actor exits (at once if it has already).
    pub fn monitor(&self) -> Monitor {
        let (tx, rx) = oneshot::channel();
        match self.cell.on_exit(move |_, reason| {
            let _ = tx.send(reason.clone());
        }) {
            Ok(()) => Monitor {
                inner: MonitorInner::Waiting(rx),
            },
            Err((_, reason)) => Monitor {
                inner: MonitorInner::Done(Some(reason)),
            },
        }
    }

    /// Run `f` with the exit reason when the actor exits — or at once, on this thread, if it already
    /// has. `f` runs on the exiting actor's task: keep it short and non-blocking.
    pub fn on_exit(&self, f: impl FnOnce(ActorId, &ExitReason) + Send + 'static) {
        // Handed back when the actor has already exited: one allocation per watcher, no more.
        if let Err((f, reason)) = self.cell.on_exit(f) {
            f(self.id(), &reason);
        }
    }
}

/// Resolves with an actor's exit reason. Created by [`ActorHandle::monitor`].
#[derive(Debug)]
pub struct Monitor {
    inner: MonitorInner,
}

#[derive(Debug)]
enum MonitorInner {
    Waiting(oneshot::Receiver<ExitReason>),
    Done(Option<ExitReason>),
}

impl Future for Monitor {
    type Output = ExitReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<ExitReason> {
        let reason = match &mut self.inner {
            MonitorInner::Done(r) => return Poll::Ready(r.clone().unwrap_or(ExitReason::Killed)),
            // The watcher is dropped without sending only if the cell itself is dropped unfinished,
            // which happens when its runtime is torn down: report that as a kill.
            MonitorInner::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.unwrap_or(ExitReason::Killed),
            },
        };
        // Polling again after completion yields the same reason instead of panicking.
        self.inner = MonitorInner::Done(Some(reason.clone()));
        Poll::Ready(reason)
    }
}

/// A typed address of a live (or exited) actor. Cheap to clone; sending to an exited actor is an
/// error, never a panic.
///
/// The same type addresses a local actor or one on another node ([`crate::cluster::Node::remote`]):
/// `call` and `cast` look the same, and remote failures are further [`CallError`] variants.
pub struct ActorRef<A: Actor> {
    route: Route<A>,
    handle: ActorHandle,
}

enum Route<A: Actor> {
    Local(Arc<Mailbox<Envelope<A>>>),
    Remote(Arc<dyn RemoteSend<A>>),
}

/// A boxed future, as [`RemoteSend`] returns.
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an [`ActorRef`] reaches an actor on another node. The actor core defines it and knows
/// nothing of the transport; the cluster's routes implement it.
pub(crate) trait RemoteSend<A: Actor>: Send + Sync + 'static {
    /// [`ActorRef::cast`] to the remote actor.
    fn cast(&self, msg: A::Msg) -> BoxFut<'_, Result<(), SendError>>;
    /// [`ActorRef::try_cast`] to the remote actor.
    fn try_cast(&self, msg: A::Msg) -> Result<(), TrySendError<A::Msg>>;
    /// [`ActorRef::call_timeout`] to the remote actor.
    fn call(&self, msg: A::Msg, timeout: Duration) -> BoxFut<'_, Result<A::Reply, CallError>>;
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef {
            route: match &self.route {
                Route::Local(m) => Route::Local(m.clone()),
                Route::Remote(r) => Route::Remote(r.clone()),
            },
            handle: self.handle.clone(),
        }
    }
}

impl<A: Actor> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorRef<{}>({})", std::any::type_name::<A>(), self.id())
    }
}

impl<A: Actor> PartialEq for ActorRef<A> {
    fn eq(&self, other: &Self) -> bool {
        self.handle == other.handle
    }
}

impl<A: Actor> Eq for ActorRef<A> {}

impl<A: Actor> AsRef<ActorHandle> for ActorRef<A> {
    fn as_ref(&self) -> &ActorHandle {
        &self.handle
    }
}

impl<A: Actor> ActorRef<A> {
    pub(crate) fn new(tx: Arc<Mailbox<Envelope<A>>>, cell: Arc<Cell>) -> Self {
        ActorRef {
            route: Route::Local(tx),
            handle: ActorHandle { cell },
        }
    }

    /// A reference to a remote actor; `proxy` is the local cell that stands for it (finished when
    /// the remote actor exits or its node goes down).
    pub(crate) fn remote(route: Arc<dyn RemoteSend<A>>, proxy: Arc<Cell>) -> Self {
        ActorRef {
            route: Route::Remote(route),
            handle: ActorHandle { cell: proxy },
        }
    }

    /// The mailbox of a local actor (`None` for a remote one).
    pub(crate) fn mailbox(&self) -> Option<&Arc<Mailbox<Envelope<A>>>> {
        match &self.route {
            Route::Local(m) => Some(m),
            Route::Remote(_) => None,
        }
    }

    /// Whether the actor lives on this node.
    pub fn is_local(&self) -> bool {
        matches!(self.route, Route::Local(_))
    }

    /// The type-erased handle (monitor, link, stop, kill).
    pub fn handle(&self) -> &ActorHandle {
        &self.handle
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.handle.id()
    }

    /// Whether the actor has not exited yet.
    pub fn is_alive(&self) -> bool {
        self.handle.is_alive()
    }

    /// Why the actor exited, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.handle.exit_reason()
    }

    /// See [`ActorHandle::stop`].
    pub fn stop(&self, reason: ExitReason) {
        self.handle.stop(reason)
    }

    /// See [`ActorHandle::kill`].
    pub fn kill(&self) {
        self.handle.kill()
    }

    /// See [`ActorHandle::monitor`].
    pub fn monitor(&self) -> Monitor {
        self.handle.monitor()
    }

    /// Messages waiting in the mailbox (0 for a remote actor: its queue is on its node).
    pub fn queued(&self) -> usize {
        self.mailbox().map_or(0, |m| m.len())
    }

    /// Send `msg` without waiting for a reply, waiting for mailbox room if it is full (backpressure).
    /// For a remote actor, waits for room in the send queue to its node; delivery is then in order
    /// per sender but not confirmed.
    pub async fn cast(&self, msg: A::Msg) -> Result<(), SendError> {
        let tx = match &self.route {
            Route::Local(tx) => tx,
            Route::Remote(r) => return r.cast(msg).await,
        };
        tx.send(Envelope { msg, reply: None })
            .await
            .map_err(|_| SendError::Exited(self.id()))
    }

    /// Send `msg` only if the mailbox (or, for a remote actor, the send queue to its node) has room
    /// now; otherwise hand it back.
    pub fn try_cast(&self, msg: A::Msg) -> Result<(), TrySendError<A::Msg>> {
        let tx = match &self.route {
            Route::Local(tx) => tx,
            Route::Remote(r) => return r.try_cast(msg),
        };
        tx.try_send(Envelope { msg, reply: None })
            .map_err(|e| match e {
                SendFailure::Full(env) => TrySendError::Full(env.msg),
                SendFailure::Closed(env) => TrySendError::Exited(env.msg),
            })
    }

    /// Put an envelope in a local actor's mailbox if it has room now (the remote dispatcher's fast
    /// path); hands it back otherwise.
    pub(crate) fn try_enqueue(&self, env: Envelope<A>) -> Result<(), SendFailure<Envelope<A>>> {
        match self.mailbox() {
            Some(m) => m.try_send(env),
            None => Err(SendFailure::Closed(env)),
        }
    }

    /// Put an envelope in a local actor's mailbox, waiting for room.
    pub(crate) async fn enqueue(&self, env: Envelope<A>) -> Result<(), Envelope<A>> {
        match self.mailbox() {
            Some(m) => m.send(env).await,
            None => Err(env),
        }
    }

    /// Send `msg` and wait for the reply, at most [`DEFAULT_CALL_TIMEOUT`].
    pub async fn call(&self, msg: A::Msg) -> Result<A::Reply, CallError> {
        self.call_timeout(msg, DEFAULT_CALL_TIMEOUT).await
    }

    /// Send `msg` and wait for the reply, at most `timeout` in all (mailbox room included).
    pub async fn call_timeout(
        &self,
        msg: A::Msg,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        let mailbox = match &self.route {
            Route::Local(tx) => tx,
            Route::Remote(r) => return r.call(msg, timeout).await,
        };
        let (tx, rx) = oneshot::channel();
        let id = self.id();
        let exchange = async {
            mailbox
                .send(Envelope {
                    msg,
                    reply: Some(ReplyTo::Local(tx)),
                })
                .await
                .map_err(|_| CallError::Exited(id))?;
            match rx.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(reason)) => Err(CallError::Failed(reason)),
                Err(_) => Err(CallError::Exited(id)),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }
}
