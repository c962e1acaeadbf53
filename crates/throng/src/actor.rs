//! The actor trait, the per-actor [`Context`], and the run loop that drives an actor.
//!
//! The runtime — not the actor — owns the mailbox: an actor only ever sees one message at a time,
//! handed to it by the run loop. That is what lets Throng later pause an actor, export its state and
//! move its queued messages to another node during a handoff, without the actor's cooperation beyond
//! (de)serialising its state.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::actor_ref::{ActorHandle, ActorRef, Envelope};
use crate::cell::{Cell, Signal};
use crate::mailbox::{Mailbox, Recv};
use crate::{ActorId, ExitReason};

/// The error an actor's handler returns to stop the actor: the actor exits with
/// [`ExitReason::Error`] carrying this message.
///
/// Any `std::error::Error` converts into it, so `?` works inside handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorError(Arc<str>);

impl ActorError {
    /// An error with a plain message.
    pub fn msg(message: impl Into<String>) -> Self {
        ActorError(Arc::from(message.into()))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ActorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ActorError {
    fn from(e: E) -> Self {
        ActorError::msg(e.to_string())
    }
}

/// What a handler returns.
pub type ActorResult<T> = Result<T, ActorError>;

/// A stateful actor: it owns its state and handles one message at a time.
///
/// There is one message type, [`Actor::Msg`], and one reply type, [`Actor::Reply`]: a *call*
/// ([`ActorRef::call`]) waits for the reply, a *cast* ([`ActorRef::cast`]) drops it. One message type
/// keeps the wire format of a remote actor a single serde type and lets the runtime move queued
/// messages, calls and casts alike, from one node to another.
///
/// ```
/// use throng::prelude::*;
///
/// struct Counter(u64);
///
/// enum Msg { Add(u64), Get }
///
/// impl Actor for Counter {
///     type Msg = Msg;
///     type Reply = u64;
///
///     async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) -> ActorResult<u64> {
///         if let Msg::Add(n) = msg {
///             self.0 += n;
///         }
///         Ok(self.0)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let counter = throng::spawn(Counter(0));
/// counter.cast(Msg::Add(2)).await.unwrap();
/// assert_eq!(counter.call(Msg::Get).await.unwrap(), 2);
/// # }
/// ```
pub trait Actor: Send + Sized + 'static {
    /// The messages this actor handles (casts and calls alike).
    type Msg: Send + 'static;
    /// What a call returns.
    type Reply: Send + 'static;

    /// Runs once, before the first message. An error stops the actor with [`ExitReason::Error`]
    /// (and `stopped` is not called, as nothing was started).
    fn started(&mut self, ctx: &mut Context<Self>) -> impl Future<Output = ActorResult<()>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles one message. An error stops the actor with [`ExitReason::Error`]; a caller waiting
    /// for the reply gets [`crate::CallError::Failed`].
    fn handle(
        &mut self,
        msg: Self::Msg,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = ActorResult<Self::Reply>> + Send;

    /// A linked actor exited. Called only while this actor traps exits ([`Context::trap_exit`]);
    /// otherwise an abnormal exit of a linked actor stops this one with [`ExitReason::Linked`].
    fn handle_exit(
        &mut self,
        from: ActorId,
        reason: ExitReason,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = ActorResult<()>> + Send {
        let _ = (from, reason, ctx);
        async { Ok(()) }
    }

    /// An actor this one monitors ([`Context::monitor`]) exited.
    fn handle_down(
        &mut self,
        id: ActorId,
        reason: ExitReason,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = ActorResult<()>> + Send {
        let _ = (id, reason, ctx);
        async { Ok(()) }
    }

    /// Runs once when the actor stops for any reason but a kill (and a failed `started`).
    fn stopped(
        &mut self,
        reason: &ExitReason,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, ctx);
        async {}
    }
}

/// The actor's view of the runtime, passed to every callback.
pub struct Context<A: Actor> {
    myself: ActorRef<A>,
    stop: Option<ExitReason>,
    timers: Option<CancellationToken>,
    /// Runtime hook that watches the actor's state (snapshots of distributed children).
    observer: Option<Box<dyn Observer<A>>>,
}

/// Why a held reply failed ([`Observer::hold`]): the call was handled, but the copy of the
/// distributed child that handled it stopped before the state it produced was safe (it lost its
/// quorum, or lost a conflict to a later copy). Its effect may or may not be kept; the caller
/// sees [`CallError::Failed`](crate::CallError::Failed) and the call is not sent again.
pub(crate) const UNCONFIRMED: &str =
    "the copy that handled the call stopped before its state was safe; its effect may or may not be kept";

/// Watches an actor from inside its task: after each handled message and once when it stops.
/// Used by the runtime (not by users) to snapshot the state of distributed children.
pub(crate) trait Observer<A>: Send + Sync {
    /// A message was handled successfully.
    fn after_message(&mut self, actor: &A);
    /// Whether the replies of calls wait for [`Observer::hold`] to release them (a durable
    /// supervisor in `Sync` mode releases a reply once the state it saw is durable).
    fn holds_replies(&self) -> bool {
        false
    }
    /// Called after [`Observer::after_message`] of a call when [`Observer::holds_replies`]:
    /// `release(true)` sends the reply; the observer runs it when the reply may go, or runs
    /// `release(false)` when the state the call produced may not be kept (the caller gets
    /// [`UNCONFIRMED`] as the call's failure, never sent again).
    fn hold(&mut self, release: Box<dyn FnOnce(bool) + Send>) {
        release(true)
    }
    /// The actor stopped (after `stopped` ran) with `reason`.
    fn on_stop(&mut self, actor: &A, reason: &ExitReason);
}

impl<A: Actor> Context<A> {
    /// A reference to this actor (to hand to others, or to send itself messages).
    pub fn myself(&self) -> &ActorRef<A> {
        &self.myself
    }

    /// This actor's id.
    pub fn id(&self) -> ActorId {
        self.myself.id()
    }

    /// Stop normally once the current callback returns.
    pub fn stop(&mut self) {
        self.stop_with(ExitReason::Normal);
    }

    /// Stop with `reason` once the current callback returns.
    pub fn stop_with(&mut self, reason: ExitReason) {
        self.stop.get_or_insert(reason);
    }

    /// While `true`, exits of linked actors arrive at [`Actor::handle_exit`] instead of stopping this
    /// actor.
    pub fn trap_exit(&self, trap: bool) {
        self.myself.handle().cell.set_trap_exit(trap);
    }

    /// Link this actor with `other`: when either exits abnormally, the other is stopped (or told, if it
    /// traps exits). Linking to an actor that has already exited delivers its exit at once.
    pub fn link(&self, other: impl AsRef<ActorHandle>) {
        Cell::link(&self.myself.handle().cell, &other.as_ref().cell);
    }

    /// Remove a link made with [`Context::link`].
    pub fn unlink(&self, other: impl AsRef<ActorHandle>) {
        Cell::unlink(&self.myself.handle().cell, &other.as_ref().cell);
    }

    /// Like [`Context::unlink`], returning whether an exit signal from `other` may still arrive.
    pub(crate) fn unlink_pending(&self, other: &ActorHandle) -> bool {
        !Cell::unlink(&self.myself.handle().cell, &other.cell)
    }

    /// Be told through [`Actor::handle_down`] when `other` exits (at once if it has already).
    pub fn monitor(&self, other: impl AsRef<ActorHandle>) {
        let me = Arc::downgrade(&self.myself.handle().cell);
        let other = &other.as_ref().cell;
        let deliver = move |id, reason: &ExitReason| {
            if let Some(me) = me.upgrade() {
                me.deliver(Signal::Down {
                    id,
                    reason: reason.clone(),
                });
            }
        };
        if let Err((deliver, reason)) = other.on_exit(deliver) {
            deliver(other.id(), &reason);
        }
    }

    fn timer_token(&mut self) -> CancellationToken {
        self.timers
            .get_or_insert_with(CancellationToken::new)
            .child_token()
    }

    /// Send `msg` to this actor after `delay`. The timer is cancelled when the actor stops or when
    /// [`TimerRef::cancel`] is called; dropping the `TimerRef` does not cancel it.
    pub fn send_after(&mut self, delay: Duration, msg: A::Msg) -> TimerRef {
        let token = self.timer_token();
        let cancelled = token.clone();
        let target = self.myself.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancelled.cancelled() => {}
                _ = tokio::time::sleep(delay) => {
                    tokio::select! {
                        _ = cancelled.cancelled() => {}
                        _ = target.cast(msg) => {}
                    }
                }
            }
        });
        TimerRef { token }
    }

    /// Send `make()` to this actor every `period`, the first time one `period` from now. A tick that
    /// finds the mailbox full waits for room (the timer never queues more than one message), and ticks
    /// missed meanwhile are skipped, not bunched.
    pub fn interval(
        &mut self,
        period: Duration,
        mut make: impl FnMut() -> A::Msg + Send + 'static,
    ) -> TimerRef {
        let token = self.timer_token();
        let cancelled = token.clone();
        let target = self.myself.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + period;
            let mut ticks = tokio::time::interval_at(start, period.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancelled.cancelled() => break,
                    _ = ticks.tick() => {
                        tokio::select! {
                            _ = cancelled.cancelled() => break,
                            r = target.cast(make()) => if r.is_err() { break },
                        }
                    }
                }
            }
        });
        TimerRef { token }
    }
}

/// A timer started with [`Context::send_after`] or [`Context::interval`].
#[derive(Debug, Clone)]
pub struct TimerRef {
    token: CancellationToken,
}

impl TimerRef {
    /// Cancel the timer; a message it has not sent yet is never sent.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether the timer was cancelled (explicitly, or because its actor stopped).
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Default mailbox capacity: enough to absorb bursts, small enough that a stuck actor pushes back on
/// its senders quickly.
pub const DEFAULT_MAILBOX: usize = 1024;

/// Largest mailbox capacity accepted by [`SpawnOptions::mailbox`].
pub const MAX_MAILBOX: usize = 1 << 20;

/// Options for [`spawn_with`] and [`start_with`].
#[derive(Debug, Clone, Copy)]
pub struct SpawnOptions {
    mailbox: usize,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        SpawnOptions {
            mailbox: DEFAULT_MAILBOX,
        }
    }
}

impl SpawnOptions {
    /// Mailbox capacity: senders wait ([`ActorRef::cast`]) or get [`crate::TrySendError::Full`]
    /// ([`ActorRef::try_cast`]) when it is full. Clamped to `1..=MAX_MAILBOX`.
    pub fn mailbox(mut self, capacity: usize) -> Self {
        self.mailbox = capacity.clamp(1, MAX_MAILBOX);
        self
    }
}

/// Spawn `actor` on the current tokio runtime with default options and return at once; `started`
/// runs in the actor's task before the first message.
///
/// # Panics
/// Outside a tokio runtime, like `tokio::spawn`.
pub fn spawn<A: Actor>(actor: A) -> ActorRef<A> {
    spawn_with(actor, SpawnOptions::default())
}

/// [`spawn`] with options.
pub fn spawn_with<A: Actor>(actor: A, opts: SpawnOptions) -> ActorRef<A> {
    spawn_inner(actor, opts, None, None)
}

/// Spawn `actor` and wait until its `started` hook has run; its failure is returned as the exit
/// reason.
pub async fn start<A: Actor>(actor: A) -> Result<ActorRef<A>, ExitReason> {
    start_with(actor, SpawnOptions::default()).await
}

/// [`start`] with options.
pub async fn start_with<A: Actor>(actor: A, opts: SpawnOptions) -> Result<ActorRef<A>, ExitReason> {
    let (tx, rx) = oneshot::channel();
    let actor_ref = spawn_inner(actor, opts, Some(tx), None);
    match rx.await {
        Ok(Ok(())) => Ok(actor_ref),
        Ok(Err(reason)) => Err(reason),
        // The task was aborted before `started` finished.
        Err(_) => Err(actor_ref.exit_reason().unwrap_or(ExitReason::Killed)),
    }
}

type Ready = oneshot::Sender<Result<(), ExitReason>>;

/// [`start_with`] with a runtime observer of the actor's state.
pub(crate) async fn start_observed<A: Actor>(
    actor: A,
    opts: SpawnOptions,
    observer: Box<dyn Observer<A>>,
) -> Result<ActorRef<A>, ExitReason> {
    let (tx, rx) = oneshot::channel();
    let actor_ref = spawn_inner(actor, opts, Some(tx), Some(observer));
    match rx.await {
        Ok(Ok(())) => Ok(actor_ref),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(actor_ref.exit_reason().unwrap_or(ExitReason::Killed)),
    }
}

fn spawn_inner<A: Actor>(
    actor: A,
    opts: SpawnOptions,
    ready: Option<Ready>,
    observer: Option<Box<dyn Observer<A>>>,
) -> ActorRef<A> {
    let mailbox = Arc::new(Mailbox::new(opts.mailbox));
    let actor_ref = ActorRef::new(mailbox.clone(), Cell::new());
    let signal: Arc<dyn crate::mailbox::Signal> = mailbox;
    actor_ref.handle().cell.set_wake(Arc::downgrade(&signal));
    let guard = ExitGuard {
        ctx: Context {
            myself: actor_ref.clone(),
            stop: None,
            timers: None,
            observer,
        },
        done: false,
    };
    let task = tokio::spawn(run(actor, guard, ready));
    actor_ref.handle().cell.set_abort(task.abort_handle());
    actor_ref
}

/// Owns the actor's context and records the exit when the actor's task ends by any path — including
/// an abort, which drops the future mid-await. It cancels the actor's timers and closes the mailbox,
/// so callers waiting on queued calls learn of the exit at once.
///
/// Its size matters: it lives in every idle actor's task, so the final exit reason reuses
/// `ctx.stop` (valid once `done` is set) rather than taking a field of its own.
struct ExitGuard<A: Actor> {
    ctx: Context<A>,
    done: bool,
}

impl<A: Actor> Drop for ExitGuard<A> {
    fn drop(&mut self) {
        if let Some(t) = &self.ctx.timers {
            t.cancel();
        }
        let reason = match (self.done, self.ctx.stop.take()) {
            (true, Some(r)) => r,
            (true, None) => ExitReason::Normal,
            (false, _) => ExitReason::Killed,
        };
        let queued = self.ctx.myself.mailbox().map(|m| m.close());
        self.ctx.myself.handle().cell.finish(reason);
        // Dropping a queued call's reply sender tells its caller now rather than at its timeout.
        drop(queued);
    }
}

fn caught<T>(r: std::thread::Result<ActorResult<T>>) -> Result<T, ExitReason> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ExitReason::Error(e.0)),
        Err(panic) => Err(ExitReason::from_panic(panic)),
    }
}

async fn run<A: Actor>(mut actor: A, mut guard: ExitGuard<A>, ready: Option<Ready>) {
    // Cold phases are boxed so that their futures do not enlarge every idle actor's task.
    let started = Box::pin(AssertUnwindSafe(actor.started(&mut guard.ctx)).catch_unwind()).await;
    if let Err(reason) = caught(started) {
        if let Some(r) = ready {
            let _ = r.send(Err(reason.clone()));
        }
        guard.ctx.stop = Some(reason);
        guard.done = true;
        return;
    }
    if let Some(r) = ready {
        let _ = r.send(Ok(()));
    }
    let reason = serve(&mut actor, &mut guard.ctx).await;
    // `stopped` may itself panic; an abnormal reason already recorded is the one reported.
    let stopped = Box::pin(AssertUnwindSafe(actor.stopped(&reason, &mut guard.ctx)).catch_unwind());
    let reason = match stopped.await {
        Ok(()) => reason,
        Err(panic) if !reason.is_abnormal() => ExitReason::from_panic(panic),
        Err(_) => reason,
    };
    if let Some(o) = guard.ctx.observer.as_mut() {
        o.on_stop(&actor, &reason);
    }
    guard.ctx.stop = Some(reason);
    guard.done = true;
}

/// The message loop: returns why the actor stops.
async fn serve<A: Actor>(actor: &mut A, ctx: &mut Context<A>) -> ExitReason {
    loop {
        if let Some(r) = ctx.stop.take() {
            return r;
        }
        if ctx.myself.handle().cell.has_signal() {
            if let Err(r) = Box::pin(handle_signals(actor, ctx)).await {
                return r;
            }
            continue;
        }
        // An actor's own reference is always local.
        let Some(mailbox) = ctx.myself.mailbox() else {
            return ExitReason::Normal;
        };
        let Envelope { msg, reply } = match mailbox.recv().await {
            Recv::Msg(env) => env,
            Recv::Signal => continue,
            // Sealed by `drain_stop` and drained: a requested stop.
            Recv::Closed => return ExitReason::Shutdown,
        };
        match caught(
            AssertUnwindSafe(actor.handle(msg, ctx))
                .catch_unwind()
                .await,
        ) {
            Ok(value) => match (reply, ctx.observer.as_mut()) {
                (Some(reply), Some(o)) if o.holds_replies() => {
                    o.after_message(actor);
                    o.hold(Box::new(move |kept| {
                        reply.send(if kept {
                            Ok(value)
                        } else {
                            Err(ExitReason::Error(UNCONFIRMED.into()))
                        })
                    }));
                }
                (reply, o) => {
                    if let Some(reply) = reply {
                        reply.send(Ok(value));
                    }
                    if let Some(o) = o {
                        o.after_message(actor);
                    }
                }
            },
            Err(reason) => {
                if let Some(reply) = reply {
                    reply.send(Err(reason.clone()));
                }
                return reason;
            }
        }
    }
}

async fn handle_signals<A: Actor>(actor: &mut A, ctx: &mut Context<A>) -> Result<(), ExitReason> {
    let cell = ctx.myself.handle().cell.clone();
    for signal in cell.take_signals() {
        match signal {
            Signal::Stop(reason) => return Err(reason),
            Signal::Exit { from, reason } => {
                if cell.traps_exit() {
                    caught(
                        AssertUnwindSafe(actor.handle_exit(from, reason, ctx))
                            .catch_unwind()
                            .await,
                    )?;
                } else if reason.is_abnormal() {
                    return Err(ExitReason::Linked {
                        from,
                        reason: Arc::new(reason),
                    });
                }
            }
            Signal::Down { id, reason } => caught(
                AssertUnwindSafe(actor.handle_down(id, reason, ctx))
                    .catch_unwind()
                    .await,
            )?,
        }
        if let Some(r) = ctx.stop.take() {
            return Err(r);
        }
    }
    Ok(())
}
