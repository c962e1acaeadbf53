//! The task that runs one supervisor's [`Driver`] on this node: its inputs (requests, peers'
//! directory messages and connection notices, the view, children's notes) and the [`Host`] that
//! carries the directory's decisions out on tokio.
//!
//! The driver never waits on the network: frames for peers go through [`Peer::send_now`], which
//! queues them without waiting (a peer that stays behind for too long loses its connection and
//! the directories reconcile on the next one). So every input queue can be bounded with
//! backpressure on its producers (a connection's reader waits for room) without two drivers
//! waiting on each other through their readers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use throng_core::directory::{
    ChildEvent, DirMsg, Record, SpawnError, StartError, StartSpec, StopReason,
};
use throng_core::driver::{Driver, Exit, Host};
use throng_core::{ExitClass, NodeId};
use tokio::sync::{mpsc, oneshot};

use super::host::{ChildNote, HostType, Slot};
use super::persist::Persister;
use super::takeover::{Step, TakeOver};
use super::Supervisors;
use super::{Dist, DistEvent, DistStats};
use crate::cluster::outbox::Lane;
use crate::cluster::transport::Peer;
use crate::cluster::wire::{self, DirBatch, Frame};
use crate::supervisor::Shutdown;
use crate::{ActorHandle, ActorId, ExitReason};
use throng_store::StoreError;

/// A durable supervisor takes back what its node kept on disk once the view has not changed for
/// this long (the other nodes of a cluster restarted at once have joined by then).
const RECOVERY_SETTLE: Duration = Duration::from_secs(1);

/// A durable supervisor recovers at the latest this long after it started, even if the view
/// keeps changing.
const RECOVERY_MAX_WAIT: Duration = Duration::from_secs(10);

/// At most this many starts and terminates wait for the recovery (then the queue holds the
/// rest, and its senders wait).
const PARKED_MAX: usize = 4096;

/// At most this many peers' messages wait for the recovery ([`Task::held_msgs`]); then the
/// input queue holds the rest, and the connections' readers wait (until at most
/// `RECOVERY_MAX_WAIT`).
const HELD_MSGS_MAX: usize = 65_536;

/// At most this many children's notes and peers' inputs are handled in a row while a request
/// waits.
const CMD_EVERY: usize = 64;

/// Inputs handled at most before the directory messages they made are sent
/// ([`Runtime::flush`]).
const BATCH_STEPS: usize = 256;

/// Where a request's answer goes: to a caller on this node, or to a peer as a [`Frame::Reply`].
pub(in crate::cluster) enum Answer<T> {
    Local(oneshot::Sender<T>),
    Remote { peer: Arc<Peer>, id: u64 },
}

impl<T: serde::Serialize> Answer<T> {
    /// Deliver `value`, without waiting (a remote answer is queued for the peer's control lane).
    pub(in crate::cluster) fn send(self, value: T) {
        match self {
            Answer::Local(tx) => {
                let _ = tx.send(value);
            }
            Answer::Remote { peer, id } => {
                // A caller whose connection is lost fails with `NodeDown` anyway.
                let result = Ok(wire::encode(&value));
                peer.send_now(Lane::Control, Frame::Reply { id, result });
            }
        }
    }
}

/// The answer to a start or terminate.
pub(super) type Reply = Answer<Result<(), StartError>>;

/// Requests, on the driver's bounded request queue.
pub(super) enum Cmd {
    Start {
        spec: StartSpec,
        reply: Reply,
    },
    Terminate {
        key: String,
        reply: Reply,
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

/// What the node tells the driver, on its bounded input queue: peers' messages, connection
/// notices and the view, in the order they happened (a message a peer sent after it saw a view
/// change is handled after this node's own change, when this node saw it first).
pub(crate) enum Input {
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
    /// view become orphans ([`throng_core::Directory::disconnected`]).
    Disconnected(NodeId),
}

/// What the supervisor's own children tell the driver. Unbounded, and bounded by the children:
/// per child, at most one snapshot note pending (later snapshots coalesce in its slot), one spawn
/// outcome and one exit; nothing on it comes from the network.
pub(crate) enum Note {
    Child(ChildNote),
    Spawned {
        key: Arc<str>,
        result: Result<ActorHandle, SpawnError>,
        shutdown: Shutdown,
    },
    Exited {
        key: Arc<str>,
        id: ActorId,
        class: ExitClass,
    },
}

struct Running {
    handle: ActorHandle,
    slot: Arc<Slot>,
    /// How it is stopped ([`crate::cluster::Keyed::shutdown`] of its type).
    shutdown: Shutdown,
}

/// The driver's effects on tokio: the children it runs, and the way to peers and listeners.
/// The tracing target of every directory message sent and received (at `trace`), for following
/// one key's copies across nodes: `RUST_LOG=info,throng::dir_msgs=trace`.
const DIR_MSGS: &str = "throng::dir_msgs";

struct Runtime {
    dist: Weak<Dist>,
    shared: Weak<Supervisors>,
    me: NodeId,
    notes: mpsc::UnboundedSender<Note>,
    /// By key; the key is shared with the child's exit watcher and snapshot observer.
    running: HashMap<Arc<str>, Running>,
    /// Slots of children being spawned, by key, until `Spawned` arrives.
    pending_slots: HashMap<String, Arc<Slot>>,
    /// The writer of a durable supervisor.
    persist: Option<Persister>,
    /// `Durability::Sync`: call replies wait until the state they saw is durable.
    sync: bool,
    /// `Sync` mode: slots of exited children with replies still waiting, by key, until a
    /// commit writes the key's entry (which holds their final state).
    exited: HashMap<Arc<str>, Vec<Arc<Slot>>>,
    /// `Sync` mode: slots of exited children whose record stayed here (restarted, merged), with
    /// replies waiting for the backup to hold it, by key; dropped once none waits.
    replicating: HashMap<Arc<str>, Vec<Arc<Slot>>>,
    /// With a shared store: the take-over of what gone nodes kept.
    takeover: Option<TakeOver>,
    /// Directory messages not sent yet, by peer, in order ([`Runtime::flush`]).
    batches: HashMap<NodeId, DirBatch>,
}

/// The marks of a key being written in `Sync` mode ([`Persister::flush`]): the slot of its
/// running child with the number of the latest snapshot the directory holds, and the slots of
/// its exited children (all they did is in the entry).
fn marker<'a>(
    running: &'a HashMap<Arc<str>, Running>,
    pending: &'a HashMap<String, Arc<Slot>>,
    exited: &'a mut HashMap<Arc<str>, Vec<Arc<Slot>>>,
) -> impl FnMut(&str, &mut Vec<(Arc<Slot>, u64)>) + Send + 'a {
    move |key, out| {
        let slots = running.get(key).map(|r| &r.slot).into_iter();
        for slot in slots.chain(pending.get(key)) {
            out.extend(slot.mark(false).map(|seq| (slot.clone(), seq)));
        }
        for slot in exited.remove(key).into_iter().flatten() {
            out.extend(slot.mark(true).map(|seq| (slot.clone(), seq)));
        }
    }
}

impl Runtime {
    /// Send every batch of directory messages gathered.
    fn flush(&mut self) {
        if self.batches.values().all(DirBatch::is_empty) {
            return;
        }
        let peers: Vec<NodeId> = self
            .batches
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        for p in &peers {
            self.flush_to(p);
        }
    }

    /// Send the batch gathered for `to`, if any.
    fn flush_to(&mut self, to: &NodeId) {
        let Some(batch) = self.batches.get_mut(to).filter(|b| !b.is_empty()) else {
            return;
        };
        let msg = batch.finish();
        let (Some(shared), Some(dist)) = (self.shared.upgrade(), self.dist.upgrade()) else {
            return;
        };
        let Some(peer) = shared.t.peer_handle(to) else {
            tracing::debug!(peer = %to, "directory messages to an unknown peer dropped");
            return;
        };
        let sup = dist.name.to_string();
        peer.send_now(Lane::Data, Frame::Dir { sup, msg });
    }

    fn host_type(&self, actor_type: &str) -> Option<Arc<dyn HostType>> {
        self.shared.upgrade()?.host_type(actor_type)
    }
}

impl Host for Runtime {
    type Reply = Reply;

    /// Start the child of `record` on its own task; its outcome comes back as `Spawned`.
    fn spawn(&mut self, record: Record) {
        let (Some(shared), Some(dist)) = (self.shared.upgrade(), self.dist.upgrade()) else {
            return;
        };
        let key: Arc<str> = Arc::from(record.key.as_str());
        let Some(host) = self.host_type(&record.actor_type) else {
            let _ = self.notes.send(Note::Spawned {
                key,
                result: Err(SpawnError::UnknownType(record.actor_type.clone())),
                shutdown: Shutdown::Brutal,
            });
            return;
        };
        let slot = Arc::new(Slot::new(self.sync));
        self.pending_slots.insert(record.key.clone(), slot.clone());
        let notes = self.notes.clone();
        let export = dist.export_name(&record.key);
        let shutdown = host.shutdown();
        let t = shared.t.clone();
        shared.t.tasks.clone().spawn(async move {
            let result = host
                .spawn(&t, &export, &record, key.clone(), slot, notes.clone())
                .await
                .map_err(SpawnError::Failed);
            let _ = notes.send(Note::Spawned {
                key,
                result,
                shutdown,
            });
        });
    }

    fn stop(&mut self, key: &str, reason: StopReason) {
        let Some(r) = self.running.get(key) else {
            return;
        };
        let handle = r.handle.clone();
        let grace = match r.shutdown {
            Shutdown::Brutal => {
                handle.kill();
                return;
            }
            Shutdown::Timeout(d) => Some(d),
            Shutdown::Infinity => None,
        };
        match reason {
            // Drained: what it accepted is handled (and in its final snapshot); what comes after
            // is refused, so callers send it to the new owner.
            StopReason::Move | StopReason::Terminate => handle.drain_stop(),
            StopReason::Quorum => handle.stop(ExitReason::Shutdown),
        }
        if let Some(grace) = grace {
            // Not one of the node's tasks: it ends within the child's grace, and the node's
            // shutdown does not wait for children to finish stopping.
            tokio::spawn(async move {
                if tokio::time::timeout(grace, handle.monitor()).await.is_err() {
                    handle.kill();
                }
            });
        }
    }

    /// Gathered into the peer's batch, sent when full or once the driver has handled what is
    /// ready ([`Runtime::flush`]).
    fn send(&mut self, to: &NodeId, msg: DirMsg) {
        tracing::trace!(target: DIR_MSGS, peer = %to, dir = "out", ?msg);
        let batch = match self.batches.get_mut(to) {
            Some(b) => b,
            None => self.batches.entry(to.clone()).or_default(),
        };
        if let Err(e) = batch.push(&msg) {
            tracing::warn!(peer = %to, error = %e, "directory message not encodable: dropped");
        }
        if batch.is_full() {
            self.flush_to(to);
        }
    }

    fn reply(&mut self, reply: Reply, result: Result<(), StartError>) {
        reply.send(result);
    }

    fn replicated(&mut self, key: &str, version: throng_core::directory::Version) {
        let slot = self
            .running
            .get(key)
            .map(|r| &r.slot)
            .or_else(|| self.pending_slots.get(key));
        if let Some(slot) = slot {
            slot.replicated(version);
        }
        if let Some(list) = self.replicating.get_mut(key) {
            for s in list.iter() {
                s.replicated(version);
            }
            list.retain(|s| s.holds());
            if list.is_empty() {
                self.replicating.remove(key);
            }
        }
    }

    fn event(&mut self, event: ChildEvent) {
        if let Some(dist) = self.dist.upgrade() {
            log_event(&dist.name, &event);
            let _ = dist.events.send(DistEvent {
                supervisor: dist.name.clone(),
                node: self.me.clone(),
                event,
            });
        }
    }

    fn touched(&mut self, keys: BTreeSet<String>) {
        if let Some(p) = &mut self.persist {
            p.touched(keys);
        }
    }

    fn merging(&mut self, key: &str, ours: &Record, theirs: &Record, theirs_later: bool) {
        let show = |r: &Record| {
            format!(
                "v{} (acknowledged {}) by {:x}",
                r.version.get(),
                r.acked.get(),
                r.written_by.map_or(0, |w| w.get()),
            )
        };
        let supervisor = self.dist.upgrade().map(|d| d.name.clone());
        tracing::debug!(
            supervisor = supervisor.as_deref().unwrap_or_default(),
            key,
            ours = %show(ours),
            theirs = %show(theirs),
            kept = if theirs_later { "theirs" } else { "ours" },
            "merging two copies"
        );
        if theirs_later {
            // The other copy's state is the merge's `ours`: the states of this copy that the
            // backup has not acknowledged may not be kept (they are not, with the default
            // `resolve_conflict`), so the replies that wait for them are not sent.
            for s in self.replicating.get(key).into_iter().flatten() {
                s.abandoned();
            }
        }
    }

    fn merge(
        &mut self,
        key: &str,
        actor_type: &str,
        ours: Option<&[u8]>,
        theirs: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        self.host_type(actor_type)?.merge(key, ours, theirs)
    }
}

/// The task that owns a node's directory of one supervisor.
pub(super) struct Task {
    driver: Driver<Reply>,
    rt: Runtime,
    /// `Node::leave` waiting for every child to be handed off.
    leave_waiters: Vec<oneshot::Sender<()>>,
    epoch: Instant,
    /// Starts and terminates that arrived before the durable children were recovered: run
    /// after them, so a start never races the child's own recovered record.
    parked: Vec<Cmd>,
    /// Peers' directory messages that arrived before the durable children were recovered, in
    /// order: handled after the recovery, so that a copy a peer that recovered sooner hands
    /// this node (an older state of a child this node kept) meets this node's own copy running,
    /// and is merged into it; were it to run first and take a call, the newer state kept here
    /// — which `Sync` replies waited for — would lose the merge. (A peer's messages are
    /// dropped, as if lost with the connection, when it disconnects or goes down meanwhile.)
    held_msgs: std::collections::VecDeque<(NodeId, DirMsg)>,
    /// The owners of the view the previous run of this node wrote after its recovery (a
    /// durable supervisor): once all of them are back in the view, the children's owners are
    /// those they had, and the recovery waits no longer.
    previous: Option<BTreeSet<NodeId>>,
    /// The owners of the latest view.
    owners: Vec<NodeId>,
    /// Since when the children recovered are being spawned (until none is pending: said once
    /// in the log).
    respawning: Option<Instant>,
}

/// Whether a restarted node recovers as soon as every owner of its previous view is back
/// ([`previous_view_back`]) instead of after [`RECOVERY_SETTLE`]. It was off for a while: the
/// simulator found an accepted update lost with it (`throng-sim --seed 436 --nodes 5 --steps
/// 2000 --partitions 0 --shell-faults 1 --durable 1`): a node recovered its disk's record of a
/// key while the copy that had failed over elsewhere (one update later) was still being handed
/// back to it; its own copy took one update too, and the two met with the same generation,
/// version and bytes, so the identical-copy rule kept one. Records now name the copy that wrote
/// their version ([`Record::written_by`](throng_core::directory::Record::written_by)), so two
/// such states are merged, and the early recovery is back on.
const RECOVER_WHEN_PREVIOUS_VIEW_BACK: bool = true;

/// Whether every owner of the previous run's view (`previous`; none known: `false`) is an
/// owner in the view now (`owners`): then each recovered child's owner is the node that ran it
/// before (or a node that joined since), so waiting for the view to settle gains nothing.
fn previous_view_back(previous: Option<&BTreeSet<NodeId>>, owners: &[NodeId]) -> bool {
    previous.is_some_and(|p| !p.is_empty() && p.iter().all(|n| owners.contains(n)))
}

/// The receiving ends of a driver's queues.
pub(super) struct Queues {
    pub(super) cmds: mpsc::Receiver<Cmd>,
    pub(super) input: mpsc::Receiver<Input>,
    pub(super) notes: mpsc::UnboundedReceiver<Note>,
}

impl Task {
    pub(super) fn new(
        driver: Driver<Reply>,
        dist: &Arc<Dist>,
        shared: &Arc<Supervisors>,
        notes: mpsc::UnboundedSender<Note>,
        persist: Option<Persister>,
        sync: bool,
        takeover: Option<TakeOver>,
    ) -> Self {
        Task {
            driver,
            rt: Runtime {
                dist: Arc::downgrade(dist),
                shared: Arc::downgrade(shared),
                me: shared.t.id.clone(),
                notes,
                running: HashMap::new(),
                pending_slots: HashMap::new(),
                persist,
                sync,
                exited: HashMap::new(),
                replicating: HashMap::new(),
                takeover,
                batches: HashMap::new(),
            },
            leave_waiters: Vec::new(),
            epoch: Instant::now(),
            parked: Vec::new(),
            held_msgs: std::collections::VecDeque::new(),
            previous: None,
            owners: Vec::new(),
            respawning: None,
        }
    }

    pub(super) async fn run(mut self, mut q: Queues, stop: tokio_util::sync::CancellationToken) {
        // What a previous run of this node kept on disk: taken back once the view has settled,
        // so that each child runs again on its owner rather than on the first node up.
        // (Read now, before any input, and kept in the directory: every write made before the
        // recovery includes them, so the disk never loses them.)
        let began = tokio::time::Instant::now();
        let mut recovery = match self.rt.persist.as_mut() {
            Some(p) => match p.load().await {
                Ok(loaded) => {
                    let entries = loaded.entries.len();
                    self.driver.preload(loaded.entries);
                    self.previous = loaded.view.map(|v| v.into_iter().collect());
                    tracing::info!(
                        entries,
                        previous_view = self.previous.as_ref().map_or(0, BTreeSet::len),
                        ms = began.elapsed().as_millis() as u64,
                        "durable store read"
                    );
                    Some(())
                }
                Err(e) => {
                    // Never a silent empty start: this supervisor refuses starts here, saying why.
                    let why = format!("the durable store could not be read: {e}");
                    tracing::error!("{why}");
                    if let Some(d) = self.rt.dist.upgrade() {
                        let _ = d.refused.set(why);
                    }
                    None
                }
            },
            None => None,
        };
        let mut settled_at = tokio::time::Instant::now() + RECOVERY_SETTLE;
        let mut unflushed = 0;
        // Turns since a request was last taken (see `CMD_EVERY`).
        let mut starved = 0usize;
        loop {
            let mut flush_at = self.rt.persist.as_ref().and_then(Persister::due);
            if flush_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                // Due now (always so in `Sync` mode): at once, not through a timer, which would
                // round up to the timer wheel's next millisecond tick.
                if let Some(p) = &mut self.rt.persist {
                    p.flush(
                        self.driver.directory(),
                        &mut marker(
                            &self.rt.running,
                            &self.rt.pending_slots,
                            &mut self.rt.exited,
                        ),
                    );
                }
                flush_at = None;
            }
            let writing = self.rt.persist.as_ref().is_some_and(Persister::is_writing);
            // Gone nodes' entries are taken over once this run took its own back.
            let take_at = self
                .rt
                .takeover
                .as_ref()
                .filter(|_| recovery.is_none())
                .and_then(TakeOver::due);
            let taking = self.rt.takeover.as_ref().is_some_and(TakeOver::is_busy);
            // Requests come after the children's notes and the peers' messages, but not
            // after more than `CMD_EVERY` of them in a row: a flood of those (a recovery's
            // spawns and replications) does not hold a start or a `stats()` for seconds.
            let may_take = recovery.is_none() || self.parked.len() < PARKED_MAX;
            let mut due_cmd = None;
            if starved >= CMD_EVERY && may_take {
                due_cmd = q.cmds.try_recv().ok();
                starved = 0;
            }
            starved += 1;
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // The node shuts down: its children stop with it; what is touched is
                    // written first.
                    self.rt.flush();
                    for r in self.rt.running.values() {
                        r.handle.stop(ExitReason::Shutdown);
                    }
                    if let Some(p) = &mut self.rt.persist {
                        let mut m = marker(&self.rt.running, &self.rt.pending_slots, &mut self.rt.exited);
                        p.drain(self.driver.directory(), &mut m).await;
                    }
                    return;
                }
                Some(c) = std::future::ready(due_cmd.take()), if due_cmd.is_some() => {
                    self.take_cmd(c, recovery.is_some());
                }
                outcome = async { self.rt.persist.as_mut().expect("writing").written().await }, if writing => {
                    if let Some(p) = &mut self.rt.persist {
                        let keys = p.done(outcome);
                        if let (Some(why), Some(d)) = (p.fenced(), self.rt.dist.upgrade()) {
                            let _ = d.refused.set(why.to_owned());
                        }
                        if let Some(t) = &mut self.rt.takeover {
                            t.written(&keys);
                        }
                    }
                }
                step = async { self.rt.takeover.as_mut().expect("taking").step().await }, if taking => {
                    self.on_take_over(step);
                }
                _ = tokio::time::sleep_until(take_at.unwrap_or_else(tokio::time::Instant::now)), if take_at.is_some() => {
                    if let Some(t) = &mut self.rt.takeover {
                        t.tick();
                    }
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    if let Some(p) = &mut self.rt.persist {
                        p.flush(self.driver.directory(), &mut marker(&self.rt.running, &self.rt.pending_slots, &mut self.rt.exited));
                    }
                }
                _ = tokio::time::sleep_until(settled_at.min(began + RECOVERY_MAX_WAIT)), if recovery.is_some() => {
                    recovery = None;
                    self.recover("settled", began);
                }
                n = q.notes.recv() => match n {
                    Some(n) => self.on_note(n),
                    None => return,
                },
                i = q.input.recv(), if recovery.is_none() || self.held_msgs.len() < HELD_MSGS_MAX => match i {
                    Some(Input::Msg { from, msg }) if recovery.is_some() => {
                        self.held_msgs.push_back((from, msg));
                    }
                    Some(i) => {
                        let mut complete = false;
                        if let Input::View(owners, _) = &i {
                            settled_at = tokio::time::Instant::now() + RECOVERY_SETTLE;
                            complete = RECOVER_WHEN_PREVIOUS_VIEW_BACK
                                && recovery.is_some()
                                && previous_view_back(self.previous.as_ref(), owners);
                            self.owners.clone_from(owners);
                            if recovery.is_none() {
                                if let Some(p) = &mut self.rt.persist {
                                    p.view(owners);
                                }
                            }
                        }
                        if let Input::Reconnected(p) | Input::NodeDown(p) | Input::Disconnected(p) = &i {
                            // As if lost with the connection: what the peer sent before is
                            // reconciled (or failed over) as for any lost connection.
                            self.held_msgs.retain(|(from, _)| from != p);
                        }
                        self.on_input(i);
                        if complete {
                            recovery = None;
                            self.recover("every node of the previous view is back", began);
                        }
                    }
                    None => return,
                },
                c = q.cmds.recv(), if may_take => {
                    starved = 0;
                    match c {
                        Some(c) => self.take_cmd(c, recovery.is_some()),
                        None => return,
                    }
                }
            }
            if !self.leave_waiters.is_empty() && self.driver.directory().handed_off() {
                for w in self.leave_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            // The directory messages of what was handled go out once nothing else is ready (or
            // every `BATCH_STEPS` inputs): a burst of inputs makes a few frames per peer.
            unflushed += 1;
            // (Only inputs the next turn takes at once: the messages must not wait on a turn
            // that blocks.)
            let cmds_ready =
                !q.cmds.is_empty() && (recovery.is_none() || self.parked.len() < PARKED_MAX);
            let input_ready =
                !q.input.is_empty() && (recovery.is_none() || self.held_msgs.len() < HELD_MSGS_MAX);
            let ready = input_ready || !q.notes.is_empty() || cmds_ready;
            if !ready || unflushed >= BATCH_STEPS {
                self.rt.flush();
                unflushed = 0;
            }
        }
    }

    /// Take back what the previous run kept (see [`Task::run`]), then handle the peers'
    /// messages and the requests that waited for it; from now on the view is written with the
    /// entries.
    fn recover(&mut self, why: &'static str, began: tokio::time::Instant) {
        let entries = self.driver.directory().preloaded_len();
        tracing::info!(
            entries,
            why,
            after_ms = began.elapsed().as_millis() as u64,
            "recovering durable children"
        );
        let t = Instant::now();
        self.driver.recover(&mut self.rt, []);
        tracing::info!(
            entries,
            ms = t.elapsed().as_millis() as u64,
            "durable children taken back"
        );
        self.respawning = (!self.rt.pending_slots.is_empty()).then_some(t);
        if let Some(p) = &mut self.rt.persist {
            p.view(&self.owners);
        }
        for (from, msg) in std::mem::take(&mut self.held_msgs) {
            self.on_input(Input::Msg { from, msg });
        }
        for cmd in std::mem::take(&mut self.parked) {
            self.on_cmd(cmd);
        }
    }

    /// A request: starts and terminates wait while the durable children are not recovered
    /// (`recovering`).
    fn take_cmd(&mut self, cmd: Cmd, recovering: bool) {
        match cmd {
            c @ (Cmd::Start { .. } | Cmd::Terminate { .. }) if recovering => self.parked.push(c),
            c => self.on_cmd(c),
        }
    }

    /// A store operation of the take-over ended.
    fn on_take_over(&mut self, step: Option<Step>) {
        let Some(t) = self.rt.takeover.as_mut() else {
            return;
        };
        match step {
            Some(Step::Nodes(Ok(nodes))) => {
                let dir = self.driver.directory();
                t.listed(nodes, dir.view(), |n| dir.owner(n), &self.rt.me);
            }
            Some(Step::Loaded(node, Ok(entries))) => {
                let entries = t.loaded(node, entries);
                self.driver.recover(&mut self.rt, entries);
            }
            Some(Step::Forgot(node, result)) => t.forgot(&node, result),
            Some(Step::Loaded(node, Err(StoreError::InUse { .. }))) => {
                tracing::info!(%node, "a node out of the view still holds its store (cut off from this node, not gone): not taken over");
            }
            Some(Step::Nodes(Err(e)) | Step::Loaded(_, Err(e))) => {
                tracing::warn!(error = %e, "the take-over of gone nodes' entries failed; retrying");
            }
            None => {}
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let rt = &mut self.rt;
        match cmd {
            Cmd::Start { spec, reply } => {
                let refused = rt.dist.upgrade().and_then(|d| d.refused.get().cloned());
                match refused {
                    // A start from another node, here where durability cannot be kept.
                    Some(why) => reply.send(Err(StartError::Failed(why))),
                    None => self.driver.start(rt, spec, reply),
                }
            }
            Cmd::Terminate { key, reply } => self.driver.terminate(rt, &key, reply),
            Cmd::List { reply } => {
                let list = self
                    .driver
                    .directory()
                    .owned()
                    .iter()
                    .filter(|(k, _)| {
                        rt.running
                            .get(k.as_str())
                            .is_some_and(|r| r.handle.is_alive())
                    })
                    .map(|(k, o)| (k.clone(), o.record.actor_type.clone()))
                    .collect();
                reply.send(list);
            }
            Cmd::Leave { reply } => {
                self.leave_waiters.push(reply);
                self.driver.leave(rt);
            }
            Cmd::Stats { reply } => {
                let dir = self.driver.directory();
                let (written, commits) =
                    rt.persist.as_ref().map_or((0, 0), Persister::written_total);
                let _ = reply.send(DistStats {
                    owned: dir.owned().len(),
                    running: rt.running.values().filter(|r| r.handle.is_alive()).count(),
                    backups: dir.backup_count(),
                    unreplicated: dir.unreplicated(),
                    unwritten: rt.persist.as_ref().map_or(0, Persister::unwritten)
                        + dir.touched_len(),
                    written,
                    commits,
                });
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        let rt = &mut self.rt;
        match input {
            Input::Msg { from, msg } => {
                tracing::trace!(target: DIR_MSGS, peer = %from, dir = "in", ?msg);
                self.driver.receive(rt, &from, msg)
            }
            Input::Reconnected(peer) => self.driver.reconnected(rt, &peer),
            Input::View(owners, leaving) => self.driver.set_members(rt, &owners, &leaving),
            Input::NodeDown(node) => self.driver.node_down(rt, &node),
            Input::Disconnected(node) => self.driver.disconnected(rt, &node),
        }
    }

    fn on_note(&mut self, note: Note) {
        let rt = &mut self.rt;
        match note {
            Note::Child(ChildNote::Snapshot { key, slot }) => {
                // The child's, or the one just spawned whose `Spawned` is not handled yet (it may
                // answer calls before: its snapshot counts, and in `Sync` mode replies wait for
                // it). A stale child's slot is left alone: taking its snapshot without applying
                // it would count as held what the directory never got.
                let current = rt
                    .running
                    .get(&*key)
                    .is_some_and(|r| Arc::ptr_eq(&r.slot, &slot))
                    || rt
                        .pending_slots
                        .get(&*key)
                        .is_some_and(|s| Arc::ptr_eq(s, &slot));
                if !current {
                    return;
                }
                if let Some(b) = slot.take_pending() {
                    self.driver.snapshot(rt, &key, b);
                    if let Some(o) = self.driver.directory().owned().get(&*key) {
                        slot.taken_as(o.record.version);
                    }
                }
            }
            Note::Spawned {
                key,
                result,
                shutdown,
            } => match result {
                Ok(handle) => {
                    let id = handle.id();
                    let slot = rt.pending_slots.remove(&*key).unwrap_or_default();
                    rt.running.insert(
                        key.clone(),
                        Running {
                            handle: handle.clone(),
                            slot,
                            shutdown,
                        },
                    );
                    let notes = rt.notes.clone();
                    let k = key.clone();
                    handle.on_exit(move |_, reason| {
                        let _ = notes.send(Note::Exited {
                            key: k,
                            id,
                            class: reason.class(),
                        });
                    });
                    self.driver.spawned(rt, &key, Ok(()));
                    if rt.pending_slots.is_empty() {
                        if let Some(t) = self.respawning.take() {
                            tracing::info!(
                                running = rt.running.len(),
                                ms = t.elapsed().as_millis() as u64,
                                "recovered children running"
                            );
                        }
                    }
                }
                Err(e) => {
                    rt.running.remove(&key);
                    rt.pending_slots.remove(&*key);
                    self.driver.spawned(rt, &key, Err(e));
                }
            },
            Note::Exited { key, id, class } => {
                let current = rt.running.get(&key).is_some_and(|r| r.handle.id() == id);
                if !current {
                    return;
                }
                let Some(r) = rt.running.remove(&key) else {
                    return;
                };
                // A snapshot still waiting is newer than the one replicated; the final one newer
                // still (taken as the child stopped cleanly).
                let last = r.slot.last.lock().unwrap_or_else(|p| p.into_inner()).take();
                let pending = r.slot.take_pending();
                let holds = r.slot.holds();
                if holds {
                    rt.exited
                        .entry(key.clone())
                        .or_default()
                        .push(r.slot.clone());
                    // Before the directory handles the exit: it may say at once that the
                    // backup holds the record (no backup).
                    rt.replicating
                        .entry(key.clone())
                        .or_default()
                        .push(r.slot.clone());
                }
                let exit = Exit {
                    class,
                    last,
                    pending,
                };
                self.driver.exited(rt, &key, exit, self.epoch.elapsed());
                // The final state is in the record: its replies wait for the backup to hold it
                // if the record stays here; if it left (handed off, removed), for the disk only;
                // if it was stopped for a lost quorum, they are not sent (see `Slot::abandoned`).
                let dir = self.driver.directory();
                match dir.owned().get(&*key) {
                    Some(o) if holds => r.slot.final_as(o.record.version),
                    Some(_) => {}
                    None if !dir.has_quorum() => {
                        for s in rt.replicating.remove(&key).into_iter().flatten() {
                            s.abandoned();
                        }
                    }
                    None => {
                        for s in rt.replicating.remove(&key).into_iter().flatten() {
                            s.exited();
                        }
                    }
                }
                if let Some(list) = rt.replicating.get_mut(&key) {
                    list.retain(|s| s.holds());
                    if list.is_empty() {
                        rt.replicating.remove(&key);
                    }
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names
            .iter()
            .map(|n| NodeId::new(n).expect("valid"))
            .collect()
    }

    #[test]
    fn the_previous_view_is_back_once_each_of_its_owners_is_an_owner_again() {
        let previous: BTreeSet<NodeId> = ids(&["a", "b", "c"]).into_iter().collect();
        assert!(!previous_view_back(Some(&previous), &ids(&["a", "b"])));
        assert!(!previous_view_back(Some(&previous), &ids(&["a", "c", "d"])));
        assert!(previous_view_back(Some(&previous), &ids(&["c", "b", "a"])));
        // A node that joined since changes nothing: the others own what they owned.
        assert!(previous_view_back(
            Some(&previous),
            &ids(&["a", "b", "c", "d"])
        ));
        // No view written (a store of an earlier build, or a first run): wait to settle.
        assert!(!previous_view_back(None, &ids(&["a", "b", "c"])));
        assert!(!previous_view_back(Some(&BTreeSet::new()), &ids(&["a"])));
    }
}
