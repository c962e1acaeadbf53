//! The tokio shell: one task that owns the state machine, the UDP socket and the timer queue, and
//! the [`Membership`] handle that talks to it.
//!
//! The task is the only place where time is read, sockets are touched and randomness is drawn
//! from the OS (once, to seed the machine). Everything it learns goes into the machine, everything
//! the machine decides comes out as datagrams, timers, events and a new member view. The view and
//! the events are published under one lock, so [`Membership::subscribe_with_members`] can hand out
//! a snapshot and a receiver that continues exactly where the snapshot ends.
//!
//! With multicast discovery on, the task owns a second socket, bound to the group's port with
//! `SO_REUSEADDR`/`SO_REUSEPORT` and joined to the group; the machine's multicast `Hello`s leave
//! from the gossip socket (set up with the multicast TTL, interface and loop-back), so that the
//! answers come to the gossip socket.
//!
//! Seeds are resolved by a small helper task (DNS can take seconds, and the membership task must
//! keep answering probes meanwhile) that hands each round's addresses over a one-slot channel.
//!
//! The task runs on a thread of its own (a current-thread tokio runtime), not on the caller's
//! runtime: a node whose actors keep every worker thread busy (CPU-bound handlers that never
//! yield, a burst of millions of messages) still answers probes within the detection timeouts,
//! so it is not declared down by the others for being busy.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::{StdRng, SysRng};
use rand::SeedableRng;
use throng_core::{Incarnation, NodeId};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn, Instrument};

use crate::config::{ConfigError, MembershipConfig, MulticastConfig, MAX_SEED_ADDRS};
use crate::machine::{self, Machine, Output, Received, Settings, Via};
use crate::seal::{Sealer, UnsealError};
use crate::timers::Timers;
use crate::{MemberInfo, MembershipEvent};

/// Capacity of the command channel from the handle to the task (commands are rare: leave, stop).
const COMMAND_CAPACITY: usize = 8;
/// At most one "refused datagram" warning per this interval; the others are counted.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long one seed's DNS resolution may take before the round goes on without it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timer-queue bound per view slot (plus [`TIMER_SLACK`]); see `timers`.
const TIMERS_PER_MEMBER: usize = 4;
/// Timers not tied to a member (probe cycle, periodic tasks, leave rounds).
const TIMER_SLACK: usize = 64;

/// Why membership could not start or a request to it failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The gossip socket could not be bound.
    #[error("cannot bind the gossip socket to {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Multicast discovery could not be set up: the group's socket could not be bound or could
    /// not join the group, or the gossip socket refused a multicast option.
    #[error("cannot set up multicast discovery on {group} (interface {interface}): {source}")]
    Multicast {
        /// The configured group.
        group: SocketAddrV4,
        /// The configured interface.
        interface: Ipv4Addr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("cannot read the gossip socket's address: {0}")]
    LocalAddr(#[source] io::Error),
    /// The operating system could not provide randomness to seed the RNGs.
    #[error("no randomness from the operating system: {0}")]
    Entropy(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The node's identity (name and addresses) is too large for `max_datagram_size`.
    #[error("encoded identity is {len} bytes; at most {max} fit the configured datagram size")]
    IdentityTooLarge {
        /// Encoded length of the identity.
        len: usize,
        /// Largest length that fits.
        max: usize,
    },
    /// The membership task is no longer running (it was stopped or has left).
    #[error("membership has stopped")]
    Stopped,
    /// The membership's thread or its runtime could not be started.
    #[error("cannot start the membership thread: {0}")]
    Thread(#[source] io::Error),
}

/// Counters of the gossip socket and the membership task; see [`Membership::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipStats {
    /// Datagrams received (all of them, refused ones included).
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams dropped because they were not sealed with this cluster's secret (wrong secret,
    /// corrupted, truncated, oversized or not ours at all).
    pub refused: u64,
    /// Authentic datagrams whose contents were rejected (e.g. stale or malformed foca messages).
    pub rejected: u64,
    /// Datagrams that could not be sent, and receive errors.
    pub io_errors: u64,
    /// Live members currently left out of the view because it holds `max_members` already.
    pub members_over_limit: u64,
    /// Timers dropped because the timer queue was full (should stay 0).
    pub timers_dropped: u64,
    /// Datagrams received on the multicast group's socket (also counted in `datagrams_in`).
    pub multicast_in: u64,
    /// Datagrams on the multicast group not sealed with this cluster's secret — e.g. from another
    /// cluster sharing the group — (also counted in `refused`; logged at debug level only).
    pub multicast_refused: u64,
    /// Multicast `Hello`s left unanswered because of the rate limit on answers.
    pub multicast_unanswered: u64,
}

#[derive(Debug, Default)]
struct Counters {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    io_errors: AtomicU64,
    members_over_limit: AtomicU64,
    timers_dropped: AtomicU64,
    multicast_in: AtomicU64,
    multicast_refused: AtomicU64,
    multicast_unanswered: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// The published member view: each live member with whether it announced it is leaving.
type View = Arc<Vec<(MemberInfo, bool)>>;

#[derive(Debug)]
struct Shared {
    /// Replaced, and events sent, under this lock (see the module docs).
    view: Mutex<View>,
    events: broadcast::Sender<MembershipEvent>,
    counters: Counters,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
enum Command {
    Leave {
        then_stop: bool,
        done: oneshot::Sender<()>,
    },
    Stop,
}

/// A running membership: this node's place in the cluster.
///
/// Dropping it stops the task at once, without telling anyone (the others then detect this node as
/// failed); call [`Membership::leave`] first for a graceful exit.
#[derive(Debug)]
pub struct Membership {
    local: MemberInfo,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Membership {
    /// Binds the gossip socket and starts taking part in the cluster as run `incarnation` of node
    /// `id`, whose RPC address `rpc_addr` is carried to the other members.
    ///
    /// `incarnation` must grow from one run of the node to the next (wall-clock milliseconds at
    /// start-up will do): a run with a higher incarnation replaces any earlier run of the same name
    /// in the cluster. Joining happens in the background; watch [`Membership::subscribe`].
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(
        id: NodeId,
        incarnation: Incarnation,
        rpc_addr: SocketAddr,
        config: MembershipConfig,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        // Bound here (so that binding errors are the caller's), registered with the membership
        // thread's runtime there.
        let socket = std::net::UdpSocket::bind(config.bind_addr)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| MembershipError::Bind {
                addr: config.bind_addr,
                source,
            })?;
        let bound = socket.local_addr().map_err(MembershipError::LocalAddr)?;
        let multicast = match &config.multicast {
            Some(multicast) => Some(setup_multicast(&socket, multicast).map_err(|source| {
                MembershipError::Multicast {
                    group: multicast.group,
                    interface: multicast.interface,
                    source,
                }
            })?),
            None => None,
        };
        let local = MemberInfo {
            id,
            incarnation,
            gossip_addr: config.advertise_addr.unwrap_or(bound),
            rpc_addr,
        };
        let foca = config.foca_config();
        // Two identities travel in every foca header, and a few members besides.
        let max = foca.max_packet_size.get() / 3;
        let len = machine::identity_len(&local);
        if len > max {
            return Err(MembershipError::IdentityTooLarge { len, max });
        }
        let rng =
            || StdRng::try_from_rng(&mut SysRng).map_err(|e| MembershipError::Entropy(e.into()));
        let settings = Settings {
            foca,
            max_members: config.max_members,
            leave_timeout: config.leave_timeout,
            multicast_interval: config.multicast.as_ref().map(|m| m.interval),
        };
        let machine = Machine::new(
            local.clone(),
            settings,
            Sealer::new(config.secret.as_bytes()),
            rng()?,
            rng()?,
        );

        let (events, _) = broadcast::channel(config.event_capacity);
        let shared = Arc::new(Shared {
            view: Mutex::new(View::default()),
            events,
            counters: Counters::default(),
        });
        let (commands, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let span =
            tracing::info_span!("membership", node = %local.id, incarnation = %local.incarnation);
        info!(parent: &span, gossip_addr = %local.gossip_addr, bound = %bound, seeds = ?config.seeds, multicast = ?config.multicast.as_ref().map(|m| m.group), "membership starting");
        let parts = TaskParts {
            machine,
            socket,
            multicast,
            commands: command_rx,
            shared: Arc::clone(&shared),
            timers: Timers::new(config.max_members * TIMERS_PER_MEMBER + TIMER_SLACK),
            max_datagram: config.max_datagram_size,
        };
        let (ready_tx, ready) = oneshot::channel();
        let seeds = config.seeds;
        let announce_interval = config.announce_interval;
        std::thread::Builder::new()
            .name(format!("membership-{}", local.id))
            .spawn(move || run_thread(parts, seeds, announce_interval, span, ready_tx))
            .map_err(MembershipError::Thread)?;
        let task = ready
            .await
            .map_err(|_| MembershipError::Stopped)?
            .map_err(MembershipError::Thread)?;
        Ok(Self {
            local,
            shared,
            commands,
            task: Mutex::new(Some(task)),
        })
    }

    /// This node's run, as the other members see it.
    pub fn local(&self) -> &MemberInfo {
        &self.local
    }

    /// The live members other than this node, in name order (members that announced they are
    /// leaving included). Empty once this node has left or stopped.
    pub fn members(&self) -> Vec<MemberInfo> {
        let view = Arc::clone(&self.shared.view());
        view.iter().map(|(info, _)| info.clone()).collect()
    }

    /// The live members that announced they are leaving (a subset of [`Membership::members`]).
    pub fn leaving(&self) -> Vec<MemberInfo> {
        let view = Arc::clone(&self.shared.view());
        view.iter()
            .filter(|(_, leaving)| *leaving)
            .map(|(info, _)| info.clone())
            .collect()
    }

    /// A receiver of the membership events that happen from now on.
    ///
    /// The channel is bounded ([`MembershipConfig::event_capacity`]): a receiver that falls further
    /// behind gets `RecvError::Lagged` and has missed events; it should then resynchronise from
    /// [`Membership::members`] (or, better, call [`Membership::subscribe_with_members`] again).
    /// The channel closes when the membership stops.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.shared.events.subscribe()
    }

    /// The current members and a receiver of every event after them, taken atomically: applying
    /// the events in order to the members gives the view at any later point. This is how a consumer
    /// should start (or resynchronise after `Lagged`).
    pub fn subscribe_with_members(
        &self,
    ) -> (Vec<MemberInfo>, broadcast::Receiver<MembershipEvent>) {
        let view = self.shared.view();
        let receiver = self.shared.events.subscribe();
        let view = Arc::clone(&view);
        (
            view.iter().map(|(info, _)| info.clone()).collect(),
            receiver,
        )
    }

    /// The counters so far.
    pub fn stats(&self) -> MembershipStats {
        let c = &self.shared.counters;
        MembershipStats {
            datagrams_in: c.datagrams_in.load(Relaxed),
            datagrams_out: c.datagrams_out.load(Relaxed),
            refused: c.refused.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            io_errors: c.io_errors.load(Relaxed),
            members_over_limit: c.members_over_limit.load(Relaxed),
            timers_dropped: c.timers_dropped.load(Relaxed),
            multicast_in: c.multicast_in.load(Relaxed),
            multicast_refused: c.multicast_refused.load(Relaxed),
            multicast_unanswered: c.multicast_unanswered.load(Relaxed),
        }
    }

    /// Tells every member that this node is leaving, and waits until each has acknowledged (they
    /// report [`MembershipEvent::NodeLeaving`]) or [`MembershipConfig::leave_timeout`] has passed.
    /// The node stays a member: this is the first step of a graceful shutdown, before handing work
    /// off; [`Membership::leave`] finishes it.
    pub async fn announce_leaving(&self) -> Result<(), MembershipError> {
        self.request_leave(false).await
    }

    /// Leaves the cluster gracefully: announces that this node is leaving (as
    /// [`Membership::announce_leaving`]), then leaves foca's membership, so the others report
    /// [`MembershipEvent::NodeLeaving`] then [`MembershipEvent::NodeDown`], and stops the task.
    /// Takes at most about [`MembershipConfig::leave_timeout`].
    pub async fn leave(&self) -> Result<(), MembershipError> {
        self.request_leave(true).await?;
        self.join().await;
        Ok(())
    }

    /// Stops the task without telling anyone: the others will detect this node as failed. Prefer
    /// [`Membership::leave`]. Does nothing if already stopped.
    pub async fn shutdown(&self) {
        // A full channel means the task is busy with a leave; dropping is then the only option.
        if self.commands.try_send(Command::Stop).is_err() {
            self.abort();
        }
        self.join().await;
    }

    async fn request_leave(&self, then_stop: bool) -> Result<(), MembershipError> {
        let (done, finished) = oneshot::channel();
        self.commands
            .send(Command::Leave { then_stop, done })
            .await
            .map_err(|_| MembershipError::Stopped)?;
        finished.await.map_err(|_| MembershipError::Stopped)
    }

    async fn join(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                if err.is_panic() {
                    error!(node = %self.local.id, "membership task panicked");
                }
            }
        }
    }

    /// Stops the task at once, from synchronous code, without telling anyone (like a crash).
    pub fn kill(&self) {
        self.abort();
    }

    fn abort(&self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            task.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Rate-limits the warning about refused datagrams.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn refused(&mut self, now: Instant, from: SocketAddr, reason: RefusalReason) {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        warn!(
            %reason,
            suppressed_since_last_warning = self.suppressed,
            "refused datagram from {from}: not sealed with this cluster's secret"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[derive(Debug, thiserror::Error)]
enum RefusalReason {
    #[error(transparent)]
    Unseal(UnsealError),
    #[error("datagram larger than {0} bytes")]
    Oversized(usize),
}

/// The multicast group's socket, and where the machine's multicast `Hello`s go.
struct Multicast<S = UdpSocket> {
    socket: S,
    group: SocketAddr,
}

/// Sets the gossip socket up to send to the group, and opens the group's own socket.
fn setup_multicast(
    gossip: &std::net::UdpSocket,
    config: &MulticastConfig,
) -> io::Result<Multicast<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, SockRef, Socket, Type};

    let group_ip = *config.group.ip();
    gossip.set_multicast_loop_v4(true)?;
    gossip.set_multicast_ttl_v4(config.ttl)?;
    if !config.interface.is_unspecified() {
        SockRef::from(gossip).set_multicast_if_v4(&config.interface)?;
    }

    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(
        unix,
        not(any(
            target_os = "solaris",
            target_os = "illumos",
            target_os = "cygwin",
            target_os = "nuttx",
            target_os = "wasi"
        ))
    ))]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Bound to the group's address where the OS allows it, so unicast datagrams to the port (and
    // other groups on it) are not delivered here.
    #[cfg(unix)]
    let bind = SocketAddrV4::new(group_ip, config.group.port());
    #[cfg(not(unix))]
    let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.group.port());
    socket.bind(&SocketAddr::V4(bind).into())?;
    socket.join_multicast_v4(&group_ip, &config.interface)?;
    Ok(Multicast {
        socket: socket.into(),
        group: SocketAddr::V4(config.group),
    })
}

/// What the membership task is made of, before its sockets are registered with its runtime.
struct TaskParts {
    machine: Machine,
    socket: std::net::UdpSocket,
    multicast: Option<Multicast<std::net::UdpSocket>>,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    timers: Timers,
    max_datagram: usize,
}

/// The membership thread: a current-thread runtime that runs the task until it ends (stopped,
/// left, or aborted through the handle sent on `ready`).
fn run_thread(
    parts: TaskParts,
    seeds: Vec<String>,
    announce_interval: Duration,
    span: tracing::Span,
    ready: oneshot::Sender<io::Result<JoinHandle<()>>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Dropped with the task's future: when it returns, and when it is aborted.
    let (ended_tx, ended) = oneshot::channel::<()>();
    let spawned = runtime.block_on(async move {
        let task = Task {
            machine: parts.machine,
            socket: UdpSocket::from_std(parts.socket)?,
            multicast: match parts.multicast {
                Some(m) => Some(Multicast {
                    socket: UdpSocket::from_std(m.socket)?,
                    group: m.group,
                }),
                None => None,
            },
            commands: parts.commands,
            shared: parts.shared,
            timers: parts.timers,
            max_datagram: parts.max_datagram,
            refusals: RefusalLog::default(),
        };
        Ok(tokio::spawn(
            async move {
                let _ended = ended_tx;
                task.run(seeds, announce_interval).await
            }
            .instrument(span),
        ))
    });
    match spawned {
        Ok(task) => {
            let _ = ready.send(Ok(task));
            runtime.block_on(async move {
                let _ = ended.await;
            });
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// Receives from the multicast group's socket, or never if there is none.
async fn recv_multicast(
    multicast: Option<&Multicast>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match multicast {
        Some(m) => m.socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The membership task's state.
struct Task {
    machine: Machine,
    socket: UdpSocket,
    multicast: Option<Multicast>,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    timers: Timers,
    max_datagram: usize,
    refusals: RefusalLog,
}

impl Task {
    async fn run(mut self, seeds: Vec<String>, announce_interval: Duration) {
        let (seed_tx, mut seed_rx) = mpsc::channel(1);
        let resolver = if seeds.is_empty() {
            None
        } else {
            Some(AbortOnDrop(tokio::spawn(
                resolve_seeds(seeds, announce_interval, seed_tx.clone()).in_current_span(),
            )))
        };
        // One byte more than accepted, to tell an oversized datagram from one that just fits.
        let mut buf = vec![0; self.max_datagram + 1];
        let mut group_buf = if self.multicast.is_some() {
            vec![0; self.max_datagram + 1]
        } else {
            Vec::new()
        };
        let mut outputs = Vec::new();
        self.machine.start();
        self.machine.take_outputs(&mut outputs);
        for output in outputs.drain(..) {
            self.carry_out(output).await;
        }
        let mut waiters: Vec<(u32, oneshot::Sender<()>)> = Vec::new();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);

        loop {
            let deadline = self.timers.next_deadline();
            if let Some(at) = deadline {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    None | Some(Command::Stop) => break,
                    Some(Command::Leave { then_stop, done }) => {
                        let round = self.machine.begin_leaving(then_stop);
                        waiters.push((round, done));
                    }
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.received(from, Via::Unicast, &mut buf, len),
                    Err(err) => {
                        bump(&self.shared.counters.io_errors);
                        debug!(%err, "receive error");
                    }
                },
                received = recv_multicast(self.multicast.as_ref(), &mut group_buf) => match received {
                    Ok((len, from)) => self.received(from, Via::Multicast, &mut group_buf, len),
                    Err(err) => {
                        bump(&self.shared.counters.io_errors);
                        debug!(%err, "receive error on the multicast group");
                    }
                },
                () = &mut sleep, if deadline.is_some() => {
                    let now = Instant::now();
                    while let Some(tick) = self.timers.pop_due(now) {
                        self.machine.handle_tick(tick);
                    }
                },
                Some(addrs) = seed_rx.recv() => self.machine.announce_to(&addrs),
            }

            // Publish before sending: whatever a peer learns from our replies (a `LeavingAck`, say)
            // is then already visible to this node's own subscribers.
            self.publish();
            self.machine.take_outputs(&mut outputs);
            for output in outputs.drain(..) {
                self.carry_out(output).await;
            }
            let completed = self.machine.completed_round();
            let (finished, pending) = std::mem::take(&mut waiters)
                .into_iter()
                .partition::<Vec<_>, _>(|(round, _)| *round <= completed);
            waiters = pending;
            for (_, done) in finished {
                // The requester may have given up waiting; that is fine.
                let _ = done.send(());
            }
            if self.machine.has_left() {
                break;
            }
        }
        drop(resolver);
        *self.shared.view() = View::default();
        info!(left = self.machine.has_left(), "membership stopped");
        // Requests still waiting (the task was stopped mid-leave) see `Stopped`.
        drop(waiters);
    }

    fn received(&mut self, from: SocketAddr, via: Via, buf: &mut [u8], len: usize) {
        let counters = &self.shared.counters;
        bump(&counters.datagrams_in);
        if via == Via::Multicast {
            bump(&counters.multicast_in);
        }
        let outcome = if len > self.max_datagram {
            Err(RefusalReason::Oversized(self.max_datagram))
        } else {
            match self.machine.handle_datagram(from, via, &mut buf[..len]) {
                Received::Accepted => Ok(()),
                Received::Rejected => {
                    bump(&counters.rejected);
                    Ok(())
                }
                Received::Refused(err) => Err(RefusalReason::Unseal(err)),
            }
        };
        counters
            .multicast_unanswered
            .store(self.machine.multicast_unanswered(), Relaxed);
        if let Err(reason) = outcome {
            bump(&counters.refused);
            if via == Via::Multicast {
                // Another cluster may share the group: expected, so not worth a warning.
                bump(&counters.multicast_refused);
                debug!(%from, %reason, "refused datagram on the multicast group");
            } else {
                self.refusals.refused(Instant::now(), from, reason);
            }
        }
    }

    async fn carry_out(&mut self, output: Output) {
        let counters = &self.shared.counters;
        match output {
            Output::Send { to, datagram } => match self.socket.send_to(&datagram, to).await {
                Ok(_) => bump(&counters.datagrams_out),
                Err(err) => {
                    bump(&counters.io_errors);
                    debug!(%to, %err, "send error");
                }
            },
            Output::Multicast { datagram } => {
                let Some(group) = self.multicast.as_ref().map(|m| m.group) else {
                    return;
                };
                match self.socket.send_to(&datagram, group).await {
                    Ok(_) => bump(&counters.datagrams_out),
                    Err(err) => {
                        bump(&counters.io_errors);
                        debug!(%group, %err, "multicast send error");
                    }
                }
            }
            Output::Schedule { after, tick } => {
                if !self.timers.schedule(Instant::now(), after, tick) {
                    bump(&counters.timers_dropped);
                    error!(
                        pending = self.timers.len(),
                        "timer queue full; timer dropped"
                    );
                }
            }
        }
    }

    /// Publishes the view (if it changed) and the pending events, under one lock.
    fn publish(&mut self) {
        let mut events = Vec::new();
        self.machine.take_events(&mut events);
        let changed = self.machine.take_view_changed();
        self.shared
            .counters
            .members_over_limit
            .store(self.machine.excluded() as u64, Relaxed);
        if !changed && events.is_empty() {
            return;
        }
        let snapshot: View = Arc::new(
            self.machine
                .view()
                .map(|(info, leaving)| (info.clone(), leaving))
                .collect(),
        );
        let mut view = self.shared.view();
        if changed {
            *view = snapshot;
        }
        for event in events {
            // No receivers is fine: nobody is listening.
            let _ = self.shared.events.send(event);
        }
        drop(view);
    }
}

/// Resolves every seed once per `interval` and hands the addresses to the membership task.
async fn resolve_seeds(
    seeds: Vec<String>,
    interval: Duration,
    addrs_tx: mpsc::Sender<Vec<SocketAddr>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = vec![false; seeds.len()];
    loop {
        ticker.tick().await;
        let mut addrs = Vec::new();
        for (seed, failing) in seeds.iter().zip(&mut failing) {
            let found =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(seed.as_str())).await;
            match found {
                Ok(Ok(found)) => {
                    if std::mem::take(failing) {
                        info!(seed, "seed resolves again");
                    }
                    for addr in found {
                        if addrs.len() < MAX_SEED_ADDRS && !addrs.contains(&addr) {
                            addrs.push(addr);
                        }
                    }
                }
                Ok(Err(err)) => {
                    if !std::mem::replace(failing, true) {
                        warn!(seed, %err, "cannot resolve seed");
                    }
                }
                Err(_) => {
                    if !std::mem::replace(failing, true) {
                        warn!(seed, "seed resolution timed out");
                    }
                }
            }
        }
        if addrs_tx.send(addrs).await.is_err() {
            return;
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
