//! Local supervision: a [`DynamicSupervisor`] starts children from [`ChildSpec`]s, restarts them by
//! policy, gives up when its restart intensity is exceeded, and shuts children down in order.
//!
//! The supervisor is itself an actor. It links to every child and traps exits, exactly as an OTP
//! supervisor does: a child's exit reaches it out of band (even when its mailbox is full), and if the
//! supervisor dies — even by a brutal kill — the link takes its children down with it, so no child is
//! ever orphaned. Whether to restart is decided by [`throng_core::RestartWindow`], a pure function of
//! the exit and the current time.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use throng_core::{Intensity, RestartDecision, RestartPolicy, RestartWindow};
use tokio::time::Instant;

use crate::{
    start_with, Actor, ActorHandle, ActorId, ActorRef, ActorResult, CallError, Context, ExitReason,
    SpawnOptions,
};

/// How a child is stopped when it is terminated or its supervisor shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Ask it to stop, wait this long for `stopped` to finish, then kill it.
    Timeout(Duration),
    /// Kill it at once; `stopped` does not run.
    Brutal,
    /// Ask it to stop and wait as long as it takes (the default for child supervisors, which need
    /// time to shut down their own children).
    Infinity,
}

impl Default for Shutdown {
    /// Five seconds, as OTP's default for workers.
    fn default() -> Self {
        Shutdown::Timeout(Duration::from_secs(5))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Started = (ActorHandle, Box<dyn Any + Send>);

/// How to start (and restart) one child: a factory that builds a fresh actor, its restart policy and
/// its shutdown.
pub struct ChildSpec<A: Actor> {
    factory: Arc<dyn Fn() -> A + Send + Sync>,
    restart: RestartPolicy,
    shutdown: Shutdown,
    spawn: SpawnOptions,
    supervisor: bool,
    on_start: Option<OnStart<A>>,
}

type OnStart<A> = Arc<dyn Fn(&ActorRef<A>) + Send + Sync>;

impl<A: Actor> Clone for ChildSpec<A> {
    fn clone(&self) -> Self {
        ChildSpec {
            factory: self.factory.clone(),
            restart: self.restart,
            shutdown: self.shutdown,
            spawn: self.spawn,
            supervisor: self.supervisor,
            on_start: self.on_start.clone(),
        }
    }
}

impl<A: Actor> ChildSpec<A> {
    /// A permanent child built by `factory`, stopped with the default [`Shutdown`]. The factory runs
    /// again at every restart, so a restarted child starts from a clean state.
    pub fn new(factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        ChildSpec {
            factory: Arc::new(factory),
            restart: RestartPolicy::Permanent,
            shutdown: Shutdown::default(),
            spawn: SpawnOptions::default(),
            supervisor: false,
            on_start: None,
        }
    }

    /// Run `f` with the child's new reference every time the supervisor starts it — first start
    /// and every restart — before the supervisor handles anything else. Use it to publish the
    /// current incarnation under a stable name (as OTP's `{via, ...}` names do).
    pub fn on_start(mut self, f: impl Fn(&ActorRef<A>) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Arc::new(f));
        self
    }

    /// Set the restart policy.
    pub fn restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    /// Set how the child is shut down.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Set the child's spawn options (mailbox size).
    pub fn spawn_options(mut self, opts: SpawnOptions) -> Self {
        self.spawn = opts;
        self
    }
}

/// The type-erased part of a spec the supervisor keeps to restart a child.
trait ErasedSpec: Send + Sync {
    fn start(&self) -> BoxFuture<Result<Started, ExitReason>>;
    fn restart(&self) -> RestartPolicy;
    fn shutdown(&self) -> Shutdown;
    fn type_name(&self) -> &'static str;
    fn is_supervisor(&self) -> bool;
}

impl<A: Actor> ErasedSpec for ChildSpec<A> {
    fn start(&self) -> BoxFuture<Result<Started, ExitReason>> {
        let factory = self.factory.clone();
        let opts = self.spawn;
        let on_start = self.on_start.clone();
        Box::pin(async move {
            // A factory that panics is a failed start, not a crashed supervisor.
            let actor = std::panic::catch_unwind(AssertUnwindSafe(|| factory()))
                .map_err(ExitReason::from_panic)?;
            let actor_ref = start_with(actor, opts).await?;
            if let Some(f) = on_start {
                f(&actor_ref);
            }
            let handle = actor_ref.handle().clone();
            Ok((handle, Box::new(actor_ref) as Box<dyn Any + Send>))
        })
    }
    fn restart(&self) -> RestartPolicy {
        self.restart
    }
    fn shutdown(&self) -> Shutdown {
        self.shutdown
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<A>()
    }
    fn is_supervisor(&self) -> bool {
        self.supervisor
    }
}

/// Options of a [`DynamicSupervisor`].
#[derive(Debug, Clone, Copy)]
pub struct SupervisorOptions {
    /// Restart intensity (default: 3 restarts in 5 s).
    pub intensity: Intensity,
    /// Refuse new children beyond this many (default: unbounded up to `usize::MAX`).
    pub max_children: usize,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            intensity: Intensity::default(),
            max_children: usize::MAX,
        }
    }
}

/// A supervisor request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The child's `started` hook (or its factory) failed; nothing was added.
    #[error("child failed to start: {0}")]
    StartFailed(ExitReason),
    /// The supervisor already has `max_children` children.
    #[error("supervisor is at its limit of {0} children")]
    MaxChildren(usize),
    /// No child with this id.
    #[error("no child {0}")]
    NotFound(ActorId),
    /// The supervisor did not answer: it has exited or timed out.
    #[error("supervisor unavailable: {0}")]
    Unavailable(CallError),
}

/// One child as listed by [`DynamicSupervisor::which_children`].
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// The child's current incarnation (changes at every restart).
    pub handle: ActorHandle,
    /// Its restart policy.
    pub restart: RestartPolicy,
    /// The Rust type of the actor.
    pub type_name: &'static str,
    /// Whether the child is itself a supervisor.
    pub supervisor: bool,
    /// How often it has been restarted.
    pub restarts: u32,
}

/// Child counts, as OTP's `count_children`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    /// All children.
    pub specs: usize,
    /// Children currently running.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

struct Child {
    seq: u64,
    handle: ActorHandle,
    spec: Box<dyn ErasedSpec>,
    restarts: u32,
}

/// The supervisor actor. Use it through [`DynamicSupervisor`].
pub struct SupervisorActor {
    opts: SupervisorOptions,
    window: RestartWindow,
    epoch: Instant,
    next_seq: u64,
    children: HashMap<ActorId, Child>,
    /// Children unlinked after they had already exited: their exit signal is still due and must not
    /// be mistaken for one from the supervisor's parent.
    expected_exits: HashSet<ActorId>,
}

/// A request to a supervisor (opaque: use [`DynamicSupervisor`]'s methods).
pub struct Request(Req);

enum Req {
    Start(Box<dyn ErasedSpec>),
    Terminate(ActorId),
    Which,
    Count,
}

/// A supervisor's answer (opaque: use [`DynamicSupervisor`]'s methods).
pub struct Response(Resp);

enum Resp {
    Started(Result<Box<dyn Any + Send>, SupervisorError>),
    Terminated(Result<(), SupervisorError>),
    Children(Vec<ChildInfo>),
    Counts(ChildCounts),
}

impl SupervisorActor {
    fn new(opts: SupervisorOptions) -> Self {
        SupervisorActor {
            opts,
            window: RestartWindow::new(opts.intensity),
            epoch: Instant::now(),
            next_seq: 0,
            children: HashMap::new(),
            expected_exits: HashSet::new(),
        }
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    async fn start_child(
        &mut self,
        spec: Box<dyn ErasedSpec>,
        ctx: &Context<Self>,
    ) -> Result<Box<dyn Any + Send>, SupervisorError> {
        if self.children.len() >= self.opts.max_children {
            return Err(SupervisorError::MaxChildren(self.opts.max_children));
        }
        let (handle, typed) = spec.start().await.map_err(SupervisorError::StartFailed)?;
        ctx.link(&handle);
        let seq = self.next_seq;
        self.next_seq += 1;
        tracing::debug!(child = %handle.id(), kind = spec.type_name(), "child started");
        self.children.insert(
            handle.id(),
            Child {
                seq,
                handle,
                spec,
                restarts: 0,
            },
        );
        Ok(typed)
    }

    /// Stop one child by its shutdown policy and wait until it has exited.
    async fn shut_down(&mut self, child: &Child, ctx: &Context<Self>) {
        if ctx.unlink_pending(&child.handle) {
            self.expected_exits.insert(child.handle.id());
        }
        let down = child.handle.monitor();
        match child.spec.shutdown() {
            Shutdown::Brutal => child.handle.kill(),
            Shutdown::Infinity => child.handle.stop(ExitReason::Shutdown),
            Shutdown::Timeout(t) => {
                child.handle.stop(ExitReason::Shutdown);
                let mut down = down;
                if tokio::time::timeout(t, &mut down).await.is_err() {
                    tracing::warn!(child = %child.handle.id(), timeout = ?t, "child ignored shutdown; killing it");
                    child.handle.kill();
                    down.await;
                }
                return;
            }
        }
        down.await;
    }

    async fn on_child_exit(
        &mut self,
        id: ActorId,
        mut reason: ExitReason,
        ctx: &mut Context<Self>,
    ) {
        let Some(mut child) = self.children.remove(&id) else {
            return;
        };
        loop {
            match self
                .window
                .on_exit(child.spec.restart(), reason.class(), self.now())
            {
                RestartDecision::Remove => {
                    tracing::debug!(child = %id, %reason, "child exited; not restarted");
                    return;
                }
                RestartDecision::GiveUp { restarts } => {
                    tracing::error!(child = %id, %reason, restarts, "restart intensity exceeded; supervisor gives up");
                    ctx.stop_with(ExitReason::RestartIntensity {
                        restarts,
                        period: self.opts.intensity.period(),
                    });
                    return;
                }
                RestartDecision::Restart => match child.spec.start().await {
                    Ok((handle, _)) => {
                        tracing::info!(old = %id, new = %handle.id(), %reason, "child restarted");
                        ctx.link(&handle);
                        child.handle = handle;
                        child.restarts += 1;
                        self.children.insert(child.handle.id(), child);
                        return;
                    }
                    // A restart that fails counts as one more exit against the intensity.
                    Err(start_failure) => {
                        tracing::warn!(child = %id, reason = %start_failure, "child failed to restart");
                        reason = start_failure;
                    }
                },
            }
        }
    }

    fn info(child: &Child) -> ChildInfo {
        ChildInfo {
            handle: child.handle.clone(),
            restart: child.spec.restart(),
            type_name: child.spec.type_name(),
            supervisor: child.spec.is_supervisor(),
            restarts: child.restarts,
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = Request;
    type Reply = Response;

    async fn started(&mut self, ctx: &mut Context<Self>) -> ActorResult<()> {
        ctx.trap_exit(true);
        self.epoch = Instant::now();
        Ok(())
    }

    async fn handle(&mut self, msg: Request, ctx: &mut Context<Self>) -> ActorResult<Response> {
        Ok(Response(match msg.0 {
            Req::Start(spec) => Resp::Started(self.start_child(spec, ctx).await),
            Req::Terminate(id) => match self.children.remove(&id) {
                Some(child) => {
                    self.shut_down(&child, ctx).await;
                    Resp::Terminated(Ok(()))
                }
                None => Resp::Terminated(Err(SupervisorError::NotFound(id))),
            },
            Req::Which => {
                let mut list: Vec<&Child> = self.children.values().collect();
                list.sort_by_key(|c| c.seq);
                Resp::Children(list.into_iter().map(Self::info).collect())
            }
            Req::Count => {
                let supervisors = self
                    .children
                    .values()
                    .filter(|c| c.spec.is_supervisor())
                    .count();
                Resp::Counts(ChildCounts {
                    specs: self.children.len(),
                    active: self
                        .children
                        .values()
                        .filter(|c| c.handle.is_alive())
                        .count(),
                    supervisors,
                    workers: self.children.len() - supervisors,
                })
            }
        }))
    }

    async fn handle_exit(
        &mut self,
        from: ActorId,
        reason: ExitReason,
        ctx: &mut Context<Self>,
    ) -> ActorResult<()> {
        if self.children.contains_key(&from) {
            self.on_child_exit(from, reason, ctx).await;
        } else if !self.expected_exits.remove(&from) && reason.is_abnormal() {
            // An exit from a link that is not a child: our parent (or a peer) died. Go down with it.
            ctx.stop_with(ExitReason::Linked {
                from,
                reason: Arc::new(reason),
            });
        }
        Ok(())
    }

    async fn stopped(&mut self, reason: &ExitReason, ctx: &mut Context<Self>) {
        // Ordered shutdown: the most recently started child first, as OTP does.
        let mut order: Vec<Child> = self.children.drain().map(|(_, c)| c).collect();
        order.sort_by_key(|c| std::cmp::Reverse(c.seq));
        tracing::debug!(%reason, children = order.len(), "supervisor stopping");
        for child in &order {
            self.shut_down(child, ctx).await;
        }
    }
}

/// A handle to a running dynamic supervisor.
#[derive(Clone, Debug)]
pub struct DynamicSupervisor {
    actor: ActorRef<SupervisorActor>,
}

impl DynamicSupervisor {
    /// Start a top-level supervisor on the current tokio runtime.
    pub async fn start(opts: SupervisorOptions) -> Result<Self, ExitReason> {
        let actor = crate::start(SupervisorActor::new(opts)).await?;
        Ok(DynamicSupervisor { actor })
    }

    /// A spec to run a supervisor as the child of another (it shuts down with [`Shutdown::Infinity`]).
    /// Wrap the returned `ActorRef` with [`DynamicSupervisor::from`].
    pub fn child_spec(opts: SupervisorOptions) -> ChildSpec<SupervisorActor> {
        let mut spec =
            ChildSpec::new(move || SupervisorActor::new(opts)).shutdown(Shutdown::Infinity);
        spec.supervisor = true;
        spec
    }

    /// The supervisor's own actor (monitor it, stop it, link to it).
    pub fn actor(&self) -> &ActorRef<SupervisorActor> {
        &self.actor
    }

    async fn request(&self, req: Req) -> Result<Resp, SupervisorError> {
        // Starting and terminating children can legitimately take long (shutdown timeouts); the
        // supervisor itself enforces every bound, so the caller waits for it.
        self.actor
            .call_timeout(Request(req), Duration::from_secs(24 * 3600))
            .await
            .map(|r| r.0)
            .map_err(SupervisorError::Unavailable)
    }

    /// Start a child from `spec`; returns once its `started` hook has succeeded.
    pub async fn start_child<A: Actor>(
        &self,
        spec: ChildSpec<A>,
    ) -> Result<ActorRef<A>, SupervisorError> {
        match self.request(Req::Start(Box::new(spec))).await? {
            Resp::Started(Ok(any)) => any
                .downcast::<ActorRef<A>>()
                .map(|b| *b)
                .map_err(|_| SupervisorError::Unavailable(CallError::Exited(self.actor.id()))),
            Resp::Started(Err(e)) => Err(e),
            _ => Err(SupervisorError::Unavailable(CallError::Exited(
                self.actor.id(),
            ))),
        }
    }

    /// Stop a child by its shutdown policy and forget it (it is not restarted).
    pub async fn terminate_child(
        &self,
        child: impl AsRef<ActorHandle>,
    ) -> Result<(), SupervisorError> {
        match self.request(Req::Terminate(child.as_ref().id())).await? {
            Resp::Terminated(r) => r,
            _ => Err(SupervisorError::Unavailable(CallError::Exited(
                self.actor.id(),
            ))),
        }
    }

    /// The children, oldest first.
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        match self.request(Req::Which).await? {
            Resp::Children(c) => Ok(c),
            _ => Err(SupervisorError::Unavailable(CallError::Exited(
                self.actor.id(),
            ))),
        }
    }

    /// Child counts.
    pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
        match self.request(Req::Count).await? {
            Resp::Counts(c) => Ok(c),
            _ => Err(SupervisorError::Unavailable(CallError::Exited(
                self.actor.id(),
            ))),
        }
    }

    /// Stop the supervisor: its children are shut down, newest first, then it exits with
    /// [`ExitReason::Shutdown`]. Returns once it has exited.
    pub async fn shutdown(&self) -> ExitReason {
        self.actor.stop(ExitReason::Shutdown);
        self.actor.monitor().await
    }
}

impl From<ActorRef<SupervisorActor>> for DynamicSupervisor {
    fn from(actor: ActorRef<SupervisorActor>) -> Self {
        DynamicSupervisor { actor }
    }
}
