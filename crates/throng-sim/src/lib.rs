//! Seeded deterministic simulator for the distributed supervisor's directory
//! ([`throng_core::directory::Directory`]).
//!
//! One seed is one run: `nodes` nodes, each with a `Directory` inside the driver production runs
//! ([`throng_core::driver::Driver`]) and a simulated runtime, the driver's [`Host`], that carries
//! out the effects the driver asks for (spawning and stopping children, sending [`DirMsg`]s,
//! answering requests, merging two states with the counters' rule, the larger wins), driven
//! for `steps` ticks of virtual time. Every tick, due events are delivered (messages, spawn and stop
//! completions, membership-view updates, client requests) and random operations are injected:
//! client starts and terminates, client updates, snapshots, child crashes and normal exits, node
//! crashes and restarts (a restarted node is a fresh `Directory`: a join, whose keys move to it),
//! graceful leaves, partitions and heals, false suspicions (one node drops a live peer from its
//! view for a while), and gossip cuts (see below).
//!
//! - **Gossip cuts.** A node's membership gossip is cut while the network between it and its
//!   peers still works: *deaf* (it hears nobody: it drops every peer from its view), *mute*
//!   (nobody hears it: every peer drops it while it still sees them), or both. Membership may so
//!   disagree one way, but the connections follow it (see **Network**): two nodes talk only while
//!   neither has declared the other down. With [`SimConfig::quorum`], the directories are
//!   configured with the cluster size as their quorum: a deaf node (or the small side of a
//!   partition) loses its quorum, stops its children, and gets it back at the heal.
//! - **Sides.** Before a convergence heals a partition or a gossip cut, the system is first left
//!   to become quiet as it is, and [`Invariant::SideRuns`] is checked on every side that sees
//!   itself (and has an owner and, with a quorum, a quorum). Both are enabled by [`SimConfig::gossip_cuts`].
//!
//! - **Updates.** A client sends an update to the owner of the child in its node's view. A child
//!   that runs there accepts it and applies it at once (so it is in any later snapshot, the final
//!   one of a drain-stop included); a child that is stopping (drain-stop for a move, terminate) or
//!   not running there refuses it, and the client retries at the owner of the moment, like the
//!   runtime's `call`. [`Invariant::Updates`] and [`Invariant::HandOff`] check that no accepted
//!   update is lost or applied twice across moves and leaves.
//! - **Graceful leave.** A leaving node calls [`Directory::leave`]; the others learn it leaves
//!   (`set_members` with it among the leaving nodes) after random delays; once
//!   [`Directory::handed_off`] holds and it holds nothing, it exits (a clean stop, not a crash).
//!
//! - **Network.** One connection per pair, FIFO like the TCP transport, with random delays (and
//!   occasional long ones), so messages between different pairs reorder. Across a partition
//!   messages are held (TCP retransmits) until the heal. As in the runtime, a node that drops a
//!   peer from its view closes the connection (the messages in flight both ways are lost) and
//!   refuses that run until it is back in its view; a node sends to the nodes of its view and to
//!   a run it accepted a connection from. While one end refuses the other, what the other sends
//!   is held and written once the connection is up again (the end that kept the other in its
//!   view all along is then told: [`Directory::reconnected`]). A message to a node that is down
//!   is lost; a sender that merely crashed still has its messages in flight delivered until the
//!   receiver notices.
//! - **Membership.** Every node has its own view, updated pair by pair after random delays, so
//!   views disagree for a while after every fault. A node that restarted before an observer noticed
//!   its crash is removed and re-added (what a runtime must do on a new incarnation).
//! - **Convergence.** Every `converge_every` steps and at the end, faults stop, partitions heal, the
//!   views converge to the live set and every event is delivered until the system is quiet; then
//!   the [`Invariant`]s are checked.
//!
//! Randomness comes only from the seed, and every map iterated is ordered, so a seed replays
//! exactly; [`SimConfig::trace`] prints the steps of a replay to stderr.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use throng_core::directory::{
    Action, ChildEvent, DirConfig, DirMsg, Directory, Generation, Record, StartError, StartSpec,
    StopReason, Version,
};
use throng_core::driver::{Driver, Exit, Host, PlantedBug};
use throng_core::{ExitClass, NodeId, RestartPolicy};

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes (at least 1).
    pub nodes: usize,
    /// Ticks of virtual time per seed (one tick is one millisecond of the directories' clock).
    pub steps: u64,
    /// Converge and check the invariants every this many steps (and always at the end).
    pub converge_every: u64,
    /// At most this many nodes are down at once (at least one node always stays up).
    pub max_down: usize,
    /// Inject partitions and false suspicions (views that disagree about live nodes). Without
    /// them, the faults are crashes, restarts and message delays.
    pub partitions: bool,
    /// Configure every directory with the cluster size as its quorum ([`DirConfig::quorum`]).
    pub quorum: bool,
    /// Inject gossip cuts (see the crate docs), and check [`Invariant::SideRuns`] before each
    /// heal.
    pub gossip_cuts: bool,
    /// Print a trace of the steps to stderr.
    pub trace: bool,
    /// A shell bug planted in every node's driver, to show the simulator catches it (tests
    /// only).
    #[doc(hidden)]
    pub planted: Option<PlantedBug>,
}

impl SimConfig {
    /// A node's driver over `dir`, with the planted bug if there is one.
    fn driver(&self, dir: Directory) -> Driver<u64> {
        let mut driver = Driver::new(dir);
        if let Some(bug) = self.planted {
            driver.plant(bug);
        }
        driver
    }

    /// `nodes` nodes for `steps` steps, converging every 500 steps, at most `(nodes - 1) / 2`
    /// nodes down at once, no trace.
    pub fn new(nodes: usize, steps: u64) -> Self {
        SimConfig {
            nodes: nodes.max(1),
            steps,
            converge_every: 500,
            max_down: (nodes.max(1) - 1) / 2,
            partitions: true,
            quorum: false,
            gossip_cuts: false,
            trace: false,
            planted: None,
        }
    }
}

/// What is checked after every convergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// A child whose start was acknowledged, and that was not terminated or removed by its policy,
    /// runs somewhere.
    Lost,
    /// No child runs on more than one node.
    Duplicate,
    /// A child that was terminated or removed by its policy runs nowhere.
    Resurrected,
    /// A running child runs on the owner of its key, and every node agrees on that owner.
    Placement,
    /// A running child's backup node holds its current record.
    Replicated,
    /// No node holds a backup that no live owner replicated to it (a stale backup would fail the
    /// child over again on a later crash, or resurrect a removed one).
    StaleBackup,
    /// A running child's state is at least the latest state its backup acknowledged.
    StateKept,
    /// Every request sent to a node that is still up was answered.
    Replies,
    /// The runtime contract: no double spawn, no stop of a child that is not running, and the
    /// runtime and the directory agree on which children run.
    Runtime,
    /// The system becomes quiet once faults stop (no message storm or livelock).
    Quiescence,
    /// A child handed off gracefully (a move: a node joined or leaves) starts on its new owner
    /// from exactly its state at the drain-stop, every accepted update included.
    HandOff,
    /// Every update a child accepted (the client was told it was delivered) is in its state
    /// exactly once: none lost, none applied twice, across moves and graceful leaves.
    Updates,
    /// Quiet before a heal: a side (nodes that all see exactly each other, with a quorum if one
    /// is configured) runs every child of which one of its nodes holds a copy.
    SideRuns,
    /// Every live node's directory passes its own check ([`Directory::check`]) after every step,
    /// not only after convergence.
    Directory,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 14] = [
        Invariant::Lost,
        Invariant::Duplicate,
        Invariant::Resurrected,
        Invariant::Placement,
        Invariant::Replicated,
        Invariant::StaleBackup,
        Invariant::StateKept,
        Invariant::Replies,
        Invariant::Runtime,
        Invariant::Quiescence,
        Invariant::HandOff,
        Invariant::Updates,
        Invariant::SideRuns,
        Invariant::Directory,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::Lost => "exactly-once: lost",
            Invariant::Duplicate => "exactly-once: duplicated",
            Invariant::Resurrected => "gone stays gone",
            Invariant::Placement => "placement agrees",
            Invariant::Replicated => "replicated",
            Invariant::StaleBackup => "no stale backups",
            Invariant::StateKept => "state kept",
            Invariant::Replies => "requests answered",
            Invariant::Runtime => "runtime contract",
            Invariant::Quiescence => "quiescence",
            Invariant::HandOff => "hand-off keeps state",
            Invariant::Updates => "updates exactly once",
            Invariant::SideRuns => "a side runs its copies",
            Invariant::Directory => "directory check",
        }
    }
}

/// Counters of one seed or of many.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Checks performed, per invariant (indexed like [`Invariant::ALL`]).
    pub checks: [u64; 14],
    /// Violations found, per invariant.
    pub violations: [u64; 14],
    /// Checks skipped because the fault model allows the failure, by reason.
    pub excused: BTreeMap<&'static str, u64>,
    /// What happened: faults injected, messages, directory events, by kind.
    pub events: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        for i in 0..self.checks.len() {
            self.checks[i] += other.checks[i];
            self.violations[i] += other.violations[i];
        }
        for (k, v) in &other.excused {
            *self.excused.entry(k).or_default() += v;
        }
        for (k, v) in &other.events {
            *self.events.entry(k).or_default() += v;
        }
    }

    /// Total violations.
    pub fn total_violations(&self) -> u64 {
        self.violations.iter().sum()
    }

    fn event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }

    fn excuse(&mut self, why: &'static str) {
        *self.excused.entry(why).or_default() += 1;
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Its counters.
    pub tally: Tally,
    /// The first violations found (at most a few), with the step they were found at.
    pub failures: Vec<String>,
}

impl SeedReport {
    /// Total violations of this seed.
    pub fn violations(&self) -> u64 {
        self.tally.total_violations()
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64, config: &SimConfig) -> SeedReport {
    let mut sim = Sim::new(seed, config.clone());
    sim.run();
    SeedReport {
        seed,
        tally: sim.tally,
        failures: sim.failures,
    }
}

/// Runs seeds `first..first + count` and merges their counters; returns the merged counters and
/// the reports of the seeds that had violations.
pub fn run_seeds(first: u64, count: u64, config: &SimConfig) -> (Tally, Vec<SeedReport>) {
    let mut total = Tally::default();
    let mut failing = Vec::new();
    for seed in first..first + count {
        let report = run_seed(seed, config);
        total.merge(&report.tally);
        if report.violations() > 0 {
            failing.push(report);
        }
    }
    (total, failing)
}

// ---------------------------------------------------------------------------------------------
// Model.

/// Steps between client retries of a request refused with `NotOwner`/`NoSuchChild`.
const RETRY_DELAY: (u64, u64) = (5, 30);
/// A client gives up after this many attempts.
const MAX_ATTEMPTS: u32 = 40;
/// Events processed while converging before the run is declared not quiet.
const QUIESCENCE_BUDGET: u64 = 500_000;
/// Failure descriptions kept per seed.
const MAX_FAILURES: usize = 8;

#[derive(Debug)]
enum Ev {
    /// Deliver the messages at the head of the link `from -> to` that are due.
    Pump {
        from: usize,
        to: usize,
    },
    SpawnDone {
        node: usize,
        inc: u64,
        key: String,
        instance: u64,
    },
    StopDone {
        node: usize,
        inc: u64,
        key: String,
        instance: u64,
    },
    /// `observer` re-evaluates whether `subject` belongs in its view.
    View {
        observer: usize,
        subject: usize,
    },
    ClientStart {
        key: String,
        attempt: u32,
    },
    StartArrive {
        node: usize,
        inc: u64,
        req: u64,
    },
    ClientTerm {
        key: String,
        attempt: u32,
    },
    TermArrive {
        node: usize,
        inc: u64,
        req: u64,
    },
    /// A client sends an update to the child `key` (at the owner in its node's view).
    ClientUpdate {
        key: String,
        attempt: u32,
    },
    /// The update reaches `node`: delivered if the child runs there and accepts messages.
    UpdateArrive {
        node: usize,
        inc: u64,
        key: String,
        attempt: u32,
    },
    /// A leaving node that handed everything off leaves the membership and exits.
    Exit {
        node: usize,
        inc: u64,
    },
}

#[derive(Debug, Clone)]
struct Packet {
    ready: u64,
    from_inc: u64,
    to_inc: u64,
    msg: DirMsg,
}

struct Scheduled {
    time: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: the heap pops the earliest event, ties in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildPhase {
    Starting,
    Running,
    Stopping,
}

#[derive(Debug, Clone)]
struct Child {
    /// The actor's state: a counter, bumped by updates.
    state: u64,
    phase: ChildPhase,
    instance: u64,
    /// Stopping to merge another copy into it ([`Action::Merge`]; the driver holds that copy).
    merging: bool,
}

struct Node {
    alive: bool,
    inc: u64,
    side: u8,
    /// The directory, inside the driver the runtime runs too.
    drv: Driver<u64>,
    /// Who this node believes is up, with the incarnation it knows (itself included).
    view: BTreeMap<usize, u64>,
    /// The nodes of `view` this node knows are leaving (itself included if it leaves).
    view_leaving: BTreeSet<usize>,
    /// This node leaves gracefully ([`Directory::leave`]); it exits once handed off.
    leaving: bool,
    children: BTreeMap<String, Child>,
    /// Its gossip in is cut: it drops every peer from its view (the network to it still works).
    deaf: bool,
    /// Its gossip out is cut: every peer drops it from its view (the network to it still works).
    mute: bool,
}

impl Node {
    /// The node's directory, to read.
    fn dir(&self) -> &Directory {
        self.drv.directory()
    }
}

/// What a node's driver asked of its simulated runtime, in order.
enum Effect {
    Spawn(Record),
    Stop(String),
    Send(NodeId, DirMsg),
    Reply(u64, Result<(), StartError>),
    Event(ChildEvent),
}

/// The simulated runtime as the driver sees it ([`Host`]): it records the effects asked of it,
/// which the simulator then carries out (children spawn and stop after delays, messages travel
/// the simulated network, replies go to the waiting clients).
#[derive(Default)]
struct SimHost {
    effects: Vec<Effect>,
}

impl Host for SimHost {
    type Reply = u64;

    fn spawn(&mut self, record: Record) {
        self.effects.push(Effect::Spawn(record));
    }

    fn stop(&mut self, key: &str, _reason: StopReason) {
        self.effects.push(Effect::Stop(key.to_owned()));
    }

    fn send(&mut self, to: &NodeId, msg: DirMsg) {
        self.effects.push(Effect::Send(to.clone(), msg));
    }

    fn reply(&mut self, reply: u64, result: Result<(), StartError>) {
        self.effects.push(Effect::Reply(reply, result));
    }

    /// Simulated directories are not durable (yet): nothing is touched.
    fn touched(&mut self, _keys: BTreeSet<String>) {}

    fn event(&mut self, event: ChildEvent) {
        self.effects.push(Effect::Event(event));
    }

    /// The simulated actors' conflict rule: two counters that met keep the larger.
    fn merge(
        &mut self,
        _key: &str,
        _actor_type: &str,
        ours: Option<&[u8]>,
        theirs: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let state = |s: Option<&[u8]>| s.and_then(decode).unwrap_or(0);
        Some(encode(state(ours).max(state(theirs))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unknown,
    Running,
    Gone,
}

#[derive(Debug, Clone)]
struct KeyTrack {
    /// What its start requests carry.
    spec: StartSpec,
    expect: Expect,
    /// A terminate was issued, or an exit that the policy does not restart happened, or the
    /// directory gave up: a `Stopped` event for this key is legitimate.
    removal_ok: bool,
    /// When the first removal began (see `removal_ok`).
    removal_began: Option<u64>,
    /// The generations ([`Record::generation`]) of the children a removal began for, since
    /// `removal_began`: a child of another generation was started after them.
    removed: BTreeSet<Generation>,
    /// The latest state a backup acknowledged.
    floor: u64,
    /// Nodes that crashed while holding a copy (run or backup) since the key was last fully
    /// replicated.
    crashed_holders: BTreeSet<usize>,
    /// A crash took the last copy (no other node ran it, held its backup or had it in flight).
    sole_copy_lost: bool,
    /// Two copies ran at once since the last convergence (views disagreed).
    split: bool,
    /// Start requests that reached a node after the removal began and were not answered yet: a
    /// node that crashes before answering may have started (and replicated) the new child.
    late_starts: u32,
    /// The child takes snapshots.
    snapshots: bool,
    /// The state every accepted update should have led to (snapshot-taking children only);
    /// `None` once a fault allowed by the model may have lost or merged updates.
    ledger: Option<u64>,
    /// The node, state and record (generation, version) of the child at its latest drain-stop
    /// for a move not yet adopted.
    moved_state: Option<(usize, u64, (Generation, Version))>,
    /// A copy was merged into another since the last convergence.
    merged: bool,
}

impl KeyTrack {
    /// The key was started again after its child was removed: a new child, from its initial
    /// state (`runs`: its state so far, with the updates it accepted before the answer).
    fn reborn(&mut self, runs: Option<u64>) {
        self.removal_ok = false;
        self.removal_began = None;
        self.removed.clear();
        self.expect = Expect::Running;
        self.floor = 0;
        self.ledger = self.snapshots.then_some(runs.unwrap_or(0));
        self.moved_state = None;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Start,
    Terminate,
}

#[derive(Debug, Clone)]
struct Pending {
    kind: ReqKind,
    key: String,
    node: usize,
    inc: u64,
    attempt: u32,
    /// Delivered to the directory (otherwise still on the network).
    arrived: bool,
    /// When it was delivered to the directory.
    arrived_at: u64,
}

struct Sim {
    seed: u64,
    config: SimConfig,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    ids: Vec<NodeId>,
    nodes: Vec<Node>,
    /// Per (receiver, sender): the latest incarnation of the sender heard from (the transport
    /// knows its peer's incarnation from the handshake).
    heard: Vec<Vec<Option<u64>>>,
    /// Per (from, to): the connection's messages in flight, in order.
    links: Vec<Vec<VecDeque<Packet>>>,
    /// Per pair (both orders): the connection is up ([`Sim::admitted`]).
    link_up: Vec<Vec<bool>>,
    /// Per (node, peer): the connection closed while the node kept the peer in its view; it is
    /// told when the connection comes back ([`Directory::reconnected`]).
    kept: Vec<Vec<bool>>,
    /// Per (node, peer): the run of the peer this node's membership declared down (dropped from
    /// its view) and has not seen up since: its connections are refused.
    declared: Vec<Vec<Option<u64>>>,
    keys: BTreeMap<String, KeyTrack>,
    key_list: Vec<String>,
    next_key: u64,
    next_req: u64,
    next_instance: u64,
    pending: BTreeMap<u64, Pending>,
    partitioned: bool,
    /// A partition or false suspicion happened since the last convergence.
    views_split: bool,
    tally: Tally,
    failures: Vec<String>,
    /// The last copies printed by [`Sim::watch`].
    watched: String,
}

fn dir_config(id: &NodeId, incarnation: u64, quorum: Option<usize>) -> DirConfig {
    let mut config = DirConfig::new(id.clone());
    config.incarnation = incarnation;
    config.quorum = quorum;
    config
}

fn state_of(record: &Record) -> Option<u64> {
    decode(record.snapshot.as_deref()?)
}

fn decode(snapshot: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = snapshot.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Why a key's updates may legitimately have been lost or merged since the last convergence.
fn lossy_excuse(t: &KeyTrack) -> Option<&'static str> {
    if t.split {
        Some("split brain (two copies, or a removal and a failover, on two sides)")
    } else if t.merged {
        Some("two copies merged (views disagreed)")
    } else if !t.crashed_holders.is_empty() || t.sole_copy_lost {
        Some("a node holding a copy crashed (restart from an older snapshot)")
    } else if t.removal_ok {
        Some("removal begun, not acknowledged (failed over from an older backup)")
    } else {
        None
    }
}

fn encode(state: u64) -> Vec<u8> {
    state.to_le_bytes().to_vec()
}

fn event_kind(e: &ChildEvent) -> &'static str {
    match e {
        ChildEvent::Started { .. } => "event: started",
        ChildEvent::Restarted { .. } => "event: restarted",
        ChildEvent::Stopped { .. } => "event: stopped",
        ChildEvent::FailedOver { .. } => "event: failed over",
        ChildEvent::Adopted { .. } => "event: adopted",
        ChildEvent::Migrated { .. } => "event: migrated",
        ChildEvent::Conflict { .. } => "event: conflict",
        ChildEvent::GaveUp { .. } => "event: gave up",
    }
}

fn msg_kind(m: &DirMsg) -> &'static str {
    match m {
        DirMsg::Replicate { .. } => "replicate",
        DirMsg::Ack { .. } => "ack",
        DirMsg::Drop { .. } => "drop",
        DirMsg::Adopt { .. } => "adopt",
        DirMsg::Dropped { .. } => "dropped",
        DirMsg::Held { .. } => "held",
        DirMsg::Conflict { .. } => "conflict",
        DirMsg::Chase { .. } => "chase",
        DirMsg::Chased { .. } => "chased",
        DirMsg::Removed { .. } => "removed",
        DirMsg::Buried { .. } => "buried",
    }
}

/// A random operation the loop may inject.
type Op = fn(&mut Sim);

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.config.trace {
            eprintln!("[{:>6}] {}", $sim.now, format_args!($($arg)*));
        }
    };
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Self {
        let n = config.nodes;
        let ids: Vec<NodeId> = (0..n)
            .map(|i| NodeId::new(&format!("n{i}")).expect("valid node id"))
            .collect();
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::with_capacity(n),
            links: vec![vec![VecDeque::new(); n]; n],
            link_up: (0..n).map(|i| (0..n).map(|j| i != j).collect()).collect(),
            kept: vec![vec![false; n]; n],
            declared: vec![vec![None; n]; n],
            heard: vec![vec![None; n]; n],
            keys: BTreeMap::new(),
            key_list: Vec::new(),
            next_key: 0,
            next_req: 0,
            next_instance: 0,
            pending: BTreeMap::new(),
            partitioned: false,
            views_split: false,
            tally: Tally::default(),
            failures: Vec::new(),
            watched: String::new(),
            ids,
            config,
        };
        // Start converged: every node sees every node.
        let all: Vec<NodeId> = sim.ids.clone();
        for i in 0..n {
            let mut dir = Directory::new(dir_config(&sim.ids[i], 0, sim.quorum()));
            let actions = dir.set_view(all.iter());
            // Only the (empty) backup reconciliations with the peers it now sees.
            debug_assert!(actions.iter().all(|a| matches!(
                a,
                Action::Send { msg: DirMsg::Held { keys }, .. } if keys.is_empty()
            )));
            sim.nodes.push(Node {
                alive: true,
                inc: 0,
                side: 0,
                drv: sim.config.driver(dir),
                view: (0..n).map(|j| (j, 0)).collect(),
                view_leaving: BTreeSet::new(),
                leaving: false,
                children: BTreeMap::new(),
                deaf: false,
                mute: false,
            });
        }
        sim
    }

    fn index(&self, id: &NodeId) -> usize {
        id.as_str()[1..].parse().expect("simulated node id")
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            ev,
        });
    }

    fn delay(&mut self, range: (u64, u64)) -> u64 {
        self.rng.random_range(range.0..=range.1)
    }

    fn fail(&mut self, inv: Invariant, what: String) {
        self.tally.violations[inv as usize] += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures
                .push(format!("step {}: {}: {}", self.now, inv.name(), what));
        }
        trace!(self, "VIOLATION {}: {}", inv.name(), what);
    }

    fn check(&mut self, inv: Invariant) {
        self.tally.checks[inv as usize] += 1;
    }

    fn alive_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].alive && self.nodes[b].alive && self.nodes[a].side == self.nodes[b].side
    }

    /// Whether `observer`'s membership hears `subject` (reachable, and no gossip cut between).
    fn hears(&self, observer: usize, subject: usize) -> bool {
        self.reachable(observer, subject) && !self.nodes[observer].deaf && !self.nodes[subject].mute
    }

    fn quorum(&self) -> Option<usize> {
        self.config.quorum.then_some(self.config.nodes)
    }

    fn gossip_cut(&self) -> bool {
        self.nodes.iter().any(|n| n.deaf || n.mute)
    }

    // -----------------------------------------------------------------------------------------
    // The loop.

    fn run(&mut self) {
        trace!(
            self,
            "seed {} nodes {} steps {}",
            self.seed,
            self.config.nodes,
            self.config.steps
        );
        for step in 1..=self.config.steps {
            self.now += 1;
            self.deliver_due();
            self.inject();
            self.check_directories();
            if step % self.config.converge_every == 0 && step != self.config.steps {
                self.converge_and_check();
            }
        }
        self.converge_and_check();
    }

    /// [`Invariant::Directory`]: every live node's directory is consistent in itself.
    fn check_directories(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            self.check(Invariant::Directory);
            if let Err(broken) = self.nodes[i].dir().check() {
                self.fail(Invariant::Directory, format!("n{i}: {broken}"));
            }
        }
    }

    fn deliver_due(&mut self) {
        while self.queue.peek().is_some_and(|s| s.time <= self.now) {
            let s = self.queue.pop().expect("peeked");
            self.handle(s.ev);
        }
    }

    fn inject(&mut self) {
        let r: f64 = self.rng.random();
        // One operation at most per step, by weight.
        let ops: [(f64, Op); 13] = [
            (0.08, Sim::op_start),
            (0.01, Sim::op_terminate),
            (0.15, Sim::op_update),
            (0.01, Sim::op_child_crash),
            (0.004, Sim::op_child_exit_normal),
            (0.004, Sim::op_node_crash),
            (0.01, Sim::op_node_restart),
            (0.003, Sim::op_partition),
            (0.01, Sim::op_heal),
            (0.003, Sim::op_suspect),
            (0.003, Sim::op_leave),
            (0.003, Sim::op_cut_gossip),
            (0.006, Sim::op_heal_gossip),
        ];
        let mut acc = 0.0;
        for (p, op) in ops {
            acc += p;
            if r < acc {
                op(self);
                return;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Operations.

    fn op_start(&mut self) {
        let id = self.next_key;
        self.next_key += 1;
        let key = format!("k{id}");
        let policy = match self.rng.random_range(0..20) {
            0..16 => RestartPolicy::Permanent,
            16..19 => RestartPolicy::Transient,
            _ => RestartPolicy::Temporary,
        };
        let spec = StartSpec {
            key: key.clone(),
            actor_type: "counter".into(),
            args: Vec::new(),
            policy,
        };
        self.keys.insert(
            key.clone(),
            KeyTrack {
                spec,
                expect: Expect::Unknown,
                removal_ok: false,
                removal_began: None,
                removed: BTreeSet::new(),
                floor: 0,
                crashed_holders: BTreeSet::new(),
                sole_copy_lost: false,
                split: false,
                late_starts: 0,
                snapshots: !id.is_multiple_of(4),
                ledger: (!id.is_multiple_of(4)).then_some(0),
                moved_state: None,
                merged: false,
            },
        );
        self.key_list.push(key.clone());
        self.tally.event("op: start");
        trace!(self, "client start {key} ({policy:?})");
        self.handle(Ev::ClientStart { key, attempt: 0 });
    }

    /// The generation of the child `key` on `node` (`None` if it does not run there).
    fn generation_on(&self, node: usize, key: &str) -> Option<Generation> {
        self.nodes[node]
            .dir()
            .owned()
            .get(key)
            .map(|o| o.record.generation)
    }

    /// A removal of the child `key` that runs on `node` (if it runs there) began.
    fn begin_removal(&mut self, node: usize, key: &str) {
        let now = self.now;
        let generation = self.generation_on(node, key);
        let t = self.keys.get_mut(key).expect("tracked");
        t.removal_ok = true;
        t.removal_began.get_or_insert(now);
        t.removed.extend(generation);
    }

    fn op_terminate(&mut self) {
        if self.key_list.is_empty() {
            return;
        }
        let key = self.key_list[self.rng.random_range(0..self.key_list.len())].clone();
        if self.keys[&key].expect != Expect::Running {
            return;
        }
        self.tally.event("op: terminate");
        trace!(self, "client terminate {key}");
        self.handle(Ev::ClientTerm { key, attempt: 0 });
    }

    /// A random running child on a random live node.
    fn pick_child(&mut self) -> Option<(usize, String)> {
        let alive = self.alive_nodes();
        let node = alive[self.rng.random_range(0..alive.len())];
        let running: Vec<&String> = self.nodes[node]
            .children
            .iter()
            .filter(|(_, c)| c.phase == ChildPhase::Running)
            .map(|(k, _)| k)
            .collect();
        if running.is_empty() {
            return None;
        }
        let key = running[self.rng.random_range(0..running.len())].clone();
        Some((node, key))
    }

    /// A client sends an update to a child that runs somewhere.
    fn op_update(&mut self) {
        let Some((_, key)) = self.pick_child() else {
            return;
        };
        self.tally.event("op: update");
        self.client_update(key, 0);
    }

    /// The client sends the update to the owner of the moment in its node's view.
    fn client_update(&mut self, key: String, attempt: u32) {
        let Some(node) = self.route(&key) else {
            self.retry_update(key, attempt);
            return;
        };
        let inc = self.nodes[node].inc;
        let d = self.delay((1, 8));
        self.schedule(
            d,
            Ev::UpdateArrive {
                node,
                inc,
                key,
                attempt,
            },
        );
    }

    fn retry_update(&mut self, key: String, attempt: u32) {
        if attempt + 1 >= MAX_ATTEMPTS {
            self.tally.event("update: client gave up");
            return;
        }
        let d = self.delay(RETRY_DELAY);
        self.schedule(
            d,
            Ev::ClientUpdate {
                key,
                attempt: attempt + 1,
            },
        );
    }

    /// An update reaches `node`. A child that runs there accepts it (and applies it before any
    /// later stop: a drain-stop processes what the mailbox accepted); a child that is stopping
    /// (drain-stop for a move, terminate) or not running there refuses it: the client is told
    /// it was not delivered and retries at the owner of the moment.
    fn update_arrive(&mut self, node: usize, inc: u64, key: String, attempt: u32) {
        if !self.nodes[node].alive || self.nodes[node].inc != inc {
            // Lost with the node (the client sees the connection fail: maybe handled, not here).
            self.tally.event("update: lost with its node");
            return;
        }
        let Some(child) = self.nodes[node]
            .children
            .get_mut(&key)
            .filter(|c| c.phase == ChildPhase::Running)
        else {
            self.tally.event("update: not delivered (retried)");
            trace!(self, "n{node}: update of {key} not delivered");
            self.retry_update(key, attempt);
            return;
        };
        child.state += 1;
        let state = child.state;
        self.tally.event("update: delivered");
        let t = self.keys.get_mut(&key).expect("tracked");
        if let Some(l) = &mut t.ledger {
            *l += 1;
        }
        if t.snapshots && self.rng.random_bool(0.5) {
            trace!(self, "n{node}: {key} state {state}, snapshot");
            self.drive(node, |d, h| d.snapshot(h, &key, encode(state)));
        } else {
            trace!(self, "n{node}: {key} state {state}");
        }
    }

    /// A node leaves gracefully: it hands its children off, then exits.
    fn op_leave(&mut self) {
        let alive = self.alive_nodes();
        let leaving = alive.iter().filter(|&&i| self.nodes[i].leaving).count();
        let down = self.nodes.len() - alive.len();
        if alive.len() - leaving <= 1 || down + leaving >= self.config.max_down {
            return;
        }
        let candidates: Vec<usize> = alive
            .into_iter()
            .filter(|&i| !self.nodes[i].leaving)
            .collect();
        let j = candidates[self.rng.random_range(0..candidates.len())];
        self.tally.event("op: graceful leave");
        trace!(self, "LEAVE n{j}");
        self.nodes[j].leaving = true;
        self.nodes[j].view_leaving.insert(j);
        self.drive(j, |d, h| d.leave(h));
        self.others_learn_of(j);
    }

    /// A leaving node whose directory handed everything off leaves the membership and exits.
    fn exit(&mut self, j: usize, inc: u64) {
        let n = &self.nodes[j];
        if !n.alive || n.inc != inc || !n.leaving {
            return;
        }
        let d = &n.dir();
        if !(d.handed_off() && d.owned().is_empty() && d.backups().is_empty()) {
            return;
        }
        self.tally.event("graceful exit");
        trace!(self, "EXIT n{j} (left gracefully)");
        if !self.nodes[j].children.is_empty() {
            let what = format!(
                "n{j} exits with children {:?}",
                self.nodes[j].children.keys().collect::<Vec<_>>()
            );
            self.fail(Invariant::Runtime, what);
        }
        let node = &mut self.nodes[j];
        node.alive = false;
        node.leaving = false;
        node.children.clear();
        self.pending.retain(|_, p| !(p.node == j && p.arrived));
        self.others_learn_of(j);
    }

    fn op_child_crash(&mut self) {
        let Some((node, key)) = self.pick_child() else {
            return;
        };
        self.nodes[node].children.remove(&key);
        self.tally.event("op: child crash");
        trace!(self, "n{node}: {key} crashes");
        // It restarts from its latest snapshot: the updates since are lost (allowed).
        self.keys.get_mut(&key).expect("tracked").ledger = None;
        if !self.keys[&key]
            .spec
            .policy
            .restarts_after(ExitClass::Abnormal)
        {
            self.begin_removal(node, &key);
        }
        let now = Duration::from_millis(self.now);
        let generation = self.generation_on(node, &key);
        let exit = Exit {
            class: ExitClass::Abnormal,
            last: None,
            pending: None,
        };
        let effects = self.run_driver(node, |d, h| d.exited(h, &key, exit, now));
        self.apply_exit(node, &key, generation, effects);
    }

    /// Applies the actions of a child's exit on `node`; a removal they begin (the directory
    /// gave up on the child) is one of the child's generation.
    fn apply_exit(
        &mut self,
        node: usize,
        key: &str,
        generation: Option<Generation>,
        effects: Vec<Effect>,
    ) {
        let gave_up = effects
            .iter()
            .any(|e| matches!(e, Effect::Event(ChildEvent::GaveUp { .. })));
        if gave_up {
            if let Some(t) = self.keys.get_mut(key) {
                t.removed.extend(generation);
            }
        }
        self.apply(node, effects);
    }

    fn op_child_exit_normal(&mut self) {
        let Some((node, key)) = self.pick_child() else {
            return;
        };
        let child = self.nodes[node].children.remove(&key).expect("picked");
        self.tally.event("op: child exits normally");
        trace!(self, "n{node}: {key} exits normally");
        if !self.keys[&key]
            .spec
            .policy
            .restarts_after(ExitClass::Normal)
        {
            self.begin_removal(node, &key);
        }
        let snapshot = self.keys[&key].snapshots.then(|| encode(child.state));
        let now = Duration::from_millis(self.now);
        let generation = self.generation_on(node, &key);
        let exit = Exit {
            class: ExitClass::Normal,
            last: snapshot,
            pending: None,
        };
        let effects = self.run_driver(node, |d, h| d.exited(h, &key, exit, now));
        self.apply_exit(node, &key, generation, effects);
    }

    fn op_node_crash(&mut self) {
        let alive = self.alive_nodes();
        let down = self.nodes.len() - alive.len();
        let leaving = alive.iter().filter(|&&i| self.nodes[i].leaving).count();
        if alive.len() - leaving <= 1 || down + leaving >= self.config.max_down {
            return;
        }
        let j = alive[self.rng.random_range(0..alive.len())];
        self.crash(j);
    }

    fn crash(&mut self, j: usize) {
        self.tally.event("fault: node crash");
        trace!(self, "CRASH n{j}");
        let held: BTreeSet<String> = {
            let d = &self.nodes[j].dir();
            d.owned()
                .keys()
                .chain(d.backups().keys())
                .cloned()
                .collect()
        };
        self.nodes[j].alive = false;
        self.nodes[j].leaving = false;
        self.nodes[j].children.clear();
        // What it queued for a peer that refuses it never leaves its process.
        for to in 0..self.nodes.len() {
            if to != j && !self.link_up[j][to] {
                for p in std::mem::take(&mut self.links[j][to]) {
                    self.tally
                        .event("message lost (sender crashed, connection refused)");
                    self.message_lost(&p.msg);
                }
            }
        }
        // Copies that survive: run or backed up on a live node, or in flight to one.
        let mut elsewhere: BTreeSet<&str> = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if i != j && n.alive {
                elsewhere.extend(n.dir().owned().keys().map(String::as_str));
                elsewhere.extend(
                    n.dir()
                        .backups()
                        .iter()
                        .filter(|(k, list)| list.iter().any(|b| self.live_copy(k, b)))
                        .map(|(k, _)| k.as_str()),
                );
            }
        }
        for (from, links) in self.links.iter().enumerate() {
            for (to, link) in links.iter().enumerate() {
                if to == j || !self.nodes[to].alive {
                    continue;
                }
                for p in link {
                    if let Some(key) = self.live_in_flight(from, &p.msg) {
                        if self.nodes[to].inc == p.to_inc && self.nodes[from].inc == p.from_inc {
                            elsewhere.insert(key);
                        }
                    }
                }
            }
        }
        for (k, c) in self.nodes.iter().flat_map(|n| n.children.iter()) {
            if c.merging {
                elsewhere.insert(k.as_str());
            }
        }
        // A child the crashed node ran without a backup (it saw no other node) had its other
        // copies told to drop (confirmations in flight): it had the only durable copy.
        let unbacked: BTreeSet<&str> = self.nodes[j]
            .dir()
            .owned()
            .iter()
            .filter(|(_, o)| o.backup.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        let lost: Vec<String> = held
            .iter()
            .filter(|k| !elsewhere.contains(k.as_str()) || unbacked.contains(k.as_str()))
            .cloned()
            .collect();
        for key in &held {
            if let Some(t) = self.keys.get_mut(key) {
                t.crashed_holders.insert(j);
                t.ledger = None;
            }
        }
        trace!(
            self,
            "n{j} took the last copy of {lost:?} (unbacked {unbacked:?}, held {held:?})"
        );
        for key in lost {
            if let Some(t) = self.keys.get_mut(&key) {
                t.sole_copy_lost = true;
            }
        }
        // Requests that reached it are lost with it (the client times out).
        self.pending.retain(|_, p| !(p.node == j && p.arrived));
        self.others_learn_of(j);
    }

    fn op_node_restart(&mut self) {
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].alive)
            .collect();
        if down.is_empty() {
            return;
        }
        let j = down[self.rng.random_range(0..down.len())];
        self.tally.event("fault: node restart");
        let quorum = self.quorum();
        let node = &mut self.nodes[j];
        node.alive = true;
        node.inc += 1;
        node.drv = self
            .config
            .driver(Directory::new(dir_config(&self.ids[j], node.inc, quorum)));
        self.heard[j] = vec![None; self.nodes.len()];
        self.declared[j] = vec![None; self.nodes.len()];
        let node = &mut self.nodes[j];
        node.view = BTreeMap::from([(j, node.inc)]);
        node.view_leaving.clear();
        node.leaving = false;
        node.children.clear();
        node.deaf = false;
        node.mute = false;
        trace!(self, "RESTART n{j} (incarnation {})", self.nodes[j].inc);
        for i in 0..self.nodes.len() {
            if i == j {
                continue;
            }
            self.sync_link(i, j);
            if let Some(&old) = self.nodes[i].view.get(&j).filter(|_| self.nodes[i].alive) {
                // The new run's handshake tells the old one is gone: the runtime reports the old
                // one down first.
                trace!(self, "n{i}: n{j} reconnects as a new incarnation");
                self.declare_down(i, j, old);
                self.push_view(i);
            }
        }
        for i in 0..self.nodes.len() {
            if i != j && self.nodes[i].alive {
                let d = self.delay((5, 60));
                self.schedule(
                    d,
                    Ev::View {
                        observer: i,
                        subject: j,
                    },
                );
                let d = self.delay((5, 60));
                self.schedule(
                    d,
                    Ev::View {
                        observer: j,
                        subject: i,
                    },
                );
            }
        }
    }

    /// Every other live node updates its view of `j` after its own random delay.
    fn others_learn_of(&mut self, j: usize) {
        for i in 0..self.nodes.len() {
            if i != j && self.nodes[i].alive {
                let d = self.delay((5, 60));
                self.schedule(
                    d,
                    Ev::View {
                        observer: i,
                        subject: j,
                    },
                );
            }
        }
    }

    fn all_views_refresh(&mut self, delay: (u64, u64)) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i != j && self.nodes[i].alive {
                    let d = self.delay(delay);
                    self.schedule(
                        d,
                        Ev::View {
                            observer: i,
                            subject: j,
                        },
                    );
                }
            }
        }
    }

    fn op_partition(&mut self) {
        let n = self.nodes.len();
        if self.partitioned || n < 2 || !self.config.partitions {
            return;
        }
        // A random non-trivial split.
        let mask = self.rng.random_range(1..(1u64 << n.min(63)) - 1);
        for i in 0..n {
            self.nodes[i].side = ((mask >> i) & 1) as u8;
        }
        self.partitioned = true;
        self.views_split = true;
        self.tally.event("fault: partition");
        trace!(
            self,
            "PARTITION {:?} | {:?}",
            (0..n)
                .filter(|&i| self.nodes[i].side == 0)
                .collect::<Vec<_>>(),
            (0..n)
                .filter(|&i| self.nodes[i].side == 1)
                .collect::<Vec<_>>()
        );
        self.all_views_refresh((5, 60));
    }

    fn op_heal(&mut self) {
        if !self.partitioned {
            return;
        }
        self.heal();
        self.all_views_refresh((5, 60));
    }

    fn heal(&mut self) {
        if self.partitioned {
            self.tally.event("fault: heal");
            trace!(self, "HEAL");
        }
        if self.gossip_cut() {
            self.tally.event("fault: gossip heal");
        }
        for n in &mut self.nodes {
            n.side = 0;
            n.deaf = false;
            n.mute = false;
        }
        self.partitioned = false;
        // Held messages flow again (TCP retransmits across a partition that no view noticed).
        let n = self.nodes.len();
        for from in 0..n {
            for to in 0..n {
                if !self.links[from][to].is_empty() {
                    self.schedule(1, Ev::Pump { from, to });
                }
            }
        }
    }

    /// Whether the connection between `a` and `b` may be up: neither end declared the other's
    /// current run down (the runtime closes the connection to a run its membership declared
    /// down, and both its acceptor and its dialer refuse that run until membership reports it up
    /// again, so a one-way drop cuts both directions), and one end knows the other (a run not
    /// in the view yet, and never declared down, is accepted).
    fn admitted(&self, a: usize, b: usize) -> bool {
        let refuses = |x: usize, y: usize| self.declared[x][y] == Some(self.nodes[y].inc);
        let knows = |x: usize, y: usize| self.nodes[x].view.get(&y) == Some(&self.nodes[y].inc);
        !refuses(a, b) && !refuses(b, a) && (knows(a, b) || knows(b, a))
    }

    /// The messages in flight between `a` and `b`, both ways, are lost.
    fn lose_in_flight(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let lost = std::mem::take(&mut self.links[x][y]);
            for p in lost {
                self.tally.event("message lost (connection closed)");
                trace!(self, "lost n{x}->n{y} {}", msg_kind(&p.msg));
                self.message_lost(&p.msg);
            }
        }
    }

    /// `observer`'s view drops `subject`'s run `inc`: its membership declared that run down. The
    /// runtime forgets the peer: its connection closes and the frames queued for it are dropped,
    /// so every message between the two in flight is lost.
    fn declare_down(&mut self, observer: usize, subject: usize, inc: u64) {
        self.lose_in_flight(observer, subject);
        self.nodes[observer].view.remove(&subject);
        self.nodes[observer].view_leaving.remove(&subject);
        self.declared[observer][subject] = Some(inc);
        self.kept[observer][subject] = false;
        self.sync_link(observer, subject);
    }

    /// Re-evaluates the connection between `a` and `b` after a view or a run changed. It closes
    /// when either end stops admitting the other: the messages in flight both ways are lost
    /// (unread frames die with the TCP connection, unwritten ones with the lane). It comes back
    /// once both admit each other again: an end that kept the other in its view all along is
    /// told ([`Directory::reconnected`]) and re-sends what the other must hold; an end that
    /// re-added the other reconciled through `set_members`.
    fn sync_link(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        let up = self.admitted(a, b);
        if self.link_up[a][b] && !up {
            self.link_up[a][b] = false;
            self.link_up[b][a] = false;
            self.lose_in_flight(a, b);
            for (x, y) in [(a, b), (b, a)] {
                self.kept[x][y] =
                    self.nodes[x].alive && self.nodes[x].view.get(&y) == Some(&self.nodes[y].inc);
            }
            trace!(self, "connection n{a}-n{b} closed");
            for (x, y) in [(a, b), (b, a)] {
                // The runtime reports every closed connection to the directory; it matters
                // only for a peer out of the view (see `Directory::disconnected`).
                if self.nodes[x].alive {
                    let peer = self.ids[y].clone();
                    self.drive(x, |d, h| d.disconnected(h, &peer));
                }
            }
        } else if !self.link_up[a][b] && up {
            self.link_up[a][b] = true;
            self.link_up[b][a] = true;
            trace!(self, "connection n{a}-n{b} up");
            for (x, y) in [(a, b), (b, a)] {
                // What an end queued meanwhile is written now.
                if !self.links[x][y].is_empty() {
                    self.schedule(1, Ev::Pump { from: x, to: y });
                }
            }
            for (x, y) in [(a, b), (b, a)] {
                if std::mem::take(&mut self.kept[x][y]) && self.nodes[x].alive {
                    trace!(self, "n{x}: reconnected to n{y}");
                    let peer = self.ids[y].clone();
                    self.drive(x, |d, h| d.reconnected(h, &peer));
                }
            }
        }
    }

    /// A node's gossip is cut (in, out, or both) while the network to it still works.
    fn op_cut_gossip(&mut self) {
        if !self.config.gossip_cuts || self.gossip_cut() {
            return;
        }
        let alive = self.alive_nodes();
        if alive.len() < 2 {
            return;
        }
        let j = alive[self.rng.random_range(0..alive.len())];
        let (deaf, mute) = match self.rng.random_range(0..3) {
            0 => (true, true),
            1 => (true, false),
            _ => (false, true),
        };
        self.nodes[j].deaf = deaf;
        self.nodes[j].mute = mute;
        self.views_split = true;
        self.tally.event(match (deaf, mute) {
            (true, true) => "fault: gossip cut",
            (true, false) => "fault: gossip cut (deaf)",
            _ => "fault: gossip cut (mute)",
        });
        trace!(self, "GOSSIP CUT n{j} deaf {deaf} mute {mute}");
        self.all_views_refresh((5, 60));
    }

    fn op_heal_gossip(&mut self) {
        if !self.gossip_cut() {
            return;
        }
        self.tally.event("fault: gossip heal");
        trace!(self, "GOSSIP HEAL");
        for n in &mut self.nodes {
            n.deaf = false;
            n.mute = false;
        }
        self.all_views_refresh((5, 60));
    }

    /// A false suspicion: a live node drops a live peer from its view for a while.
    fn op_suspect(&mut self) {
        let alive = self.alive_nodes();
        if alive.len() < 2 || !self.config.partitions {
            return;
        }
        let i = alive[self.rng.random_range(0..alive.len())];
        let j = alive[self.rng.random_range(0..alive.len())];
        if i == j || !self.nodes[i].view.contains_key(&j) {
            return;
        }
        self.tally.event("fault: false suspicion");
        self.views_split = true;
        trace!(self, "n{i} falsely suspects n{j}");
        let inc = self.nodes[j].inc;
        self.declare_down(i, j, inc);
        self.push_view(i);
        let d = self.delay((10, 80));
        self.schedule(
            d,
            Ev::View {
                observer: i,
                subject: j,
            },
        );
    }

    fn push_view(&mut self, i: usize) {
        let n = &self.nodes[i];
        let owners: Vec<NodeId> = n
            .view
            .keys()
            .filter(|j| !n.view_leaving.contains(j))
            .map(|&j| self.ids[j].clone())
            .collect();
        let leaving: Vec<NodeId> = n
            .view_leaving
            .iter()
            .map(|&j| self.ids[j].clone())
            .collect();
        trace!(
            self,
            "n{i}: view {:?} leaving {:?}",
            self.nodes[i].view.keys(),
            self.nodes[i].view_leaving
        );
        self.tally.event("view change");
        self.drive(i, |d, h| d.set_members(h, owners.iter(), leaving.iter()));
    }

    // -----------------------------------------------------------------------------------------
    // Events.

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Pump { from, to } => self.pump(from, to),
            Ev::SpawnDone {
                node,
                inc,
                key,
                instance,
            } => {
                let n = &mut self.nodes[node];
                if !n.alive || n.inc != inc {
                    return;
                }
                match n.children.get_mut(&key) {
                    Some(c) if c.instance == instance && c.phase == ChildPhase::Starting => {
                        c.phase = ChildPhase::Running;
                    }
                    _ => return,
                }
                trace!(self, "n{node}: {key} spawned");
                self.drive(node, |d, h| d.spawned(h, &key, Ok(())));
            }
            Ev::StopDone {
                node,
                inc,
                key,
                instance,
            } => {
                let n = &mut self.nodes[node];
                if !n.alive || n.inc != inc {
                    return;
                }
                match n.children.get(&key) {
                    Some(c) if c.instance == instance && c.phase == ChildPhase::Stopping => {}
                    _ => return,
                }
                let child = n.children.remove(&key).expect("present");
                let now = Duration::from_millis(self.now);
                if child.merging {
                    // The driver merges the other copy's state into this final one.
                    trace!(
                        self,
                        "n{node}: {key} stopped to merge (state {})",
                        child.state
                    );
                    let exit = Exit {
                        class: ExitClass::Shutdown,
                        last: Some(encode(child.state)),
                        pending: None,
                    };
                    self.drive(node, |d, h| d.exited(h, &key, exit, now));
                    return;
                }
                let snapshot = self.keys[&key].snapshots.then(|| encode(child.state));
                trace!(self, "n{node}: {key} stopped (state {})", child.state);
                let moving = self.nodes[node]
                    .dir()
                    .owned()
                    .get(&key)
                    .filter(|o| o.phase == throng_core::directory::Phase::Moving)
                    .map(|o| (o.record.generation, o.record.version));
                if let Some(record) = moving {
                    let t = self.keys.get_mut(&key).expect("tracked");
                    if t.moved_state.is_some_and(|(other, _, _)| other != node) {
                        // Another copy is moving too and was not adopted yet: two lineages.
                        t.split = true;
                    }
                    t.moved_state = Some((node, child.state, record));
                }
                let exit = Exit {
                    class: ExitClass::Shutdown,
                    last: snapshot,
                    pending: None,
                };
                self.drive(node, |d, h| d.exited(h, &key, exit, now));
            }
            Ev::View { observer, subject } => self.view_event(observer, subject),
            Ev::ClientStart { key, attempt } => self.client_start(key, attempt),
            Ev::StartArrive { node, inc, req } => {
                let Some(p) = self.pending.get_mut(&req) else {
                    return;
                };
                if !self.nodes[node].alive || self.nodes[node].inc != inc {
                    // Lost with the node: the client times out.
                    self.pending.remove(&req);
                    return;
                }
                p.arrived = true;
                p.arrived_at = self.now;
                let key = p.key.clone();
                let t = self.keys.get_mut(&key).expect("tracked");
                if t.removal_began.is_some() {
                    t.late_starts += 1;
                }
                let spec = self.keys[&key].spec.clone();
                trace!(self, "n{node}: start {key} (req {req})");
                self.drive(node, |d, h| d.start(h, spec, req));
            }
            Ev::ClientTerm { key, attempt } => self.client_term(key, attempt),
            Ev::ClientUpdate { key, attempt } => self.client_update(key, attempt),
            Ev::UpdateArrive {
                node,
                inc,
                key,
                attempt,
            } => self.update_arrive(node, inc, key, attempt),
            Ev::Exit { node, inc } => self.exit(node, inc),
            Ev::TermArrive { node, inc, req } => {
                let Some(p) = self.pending.get_mut(&req) else {
                    return;
                };
                if !self.nodes[node].alive || self.nodes[node].inc != inc {
                    self.pending.remove(&req);
                    return;
                }
                p.arrived = true;
                p.arrived_at = self.now;
                let key = p.key.clone();
                self.begin_removal(node, &key);
                trace!(self, "n{node}: terminate {key} (req {req})");
                self.drive(node, |d, h| d.terminate(h, &key, req));
            }
        }
    }

    /// A client on a random live node sends the request to the owner in that node's view.
    fn route(&mut self, key: &str) -> Option<usize> {
        let alive = self.alive_nodes();
        let client = alive[self.rng.random_range(0..alive.len())];
        let owner = self.nodes[client].dir().owner(key)?;
        let owner = self.index(&owner);
        self.reachable(client, owner).then_some(owner)
    }

    fn retry(&mut self, kind: ReqKind, key: String, attempt: u32) {
        if attempt + 1 >= MAX_ATTEMPTS {
            self.tally.event("client gave up");
            return;
        }
        let d = self.delay(RETRY_DELAY);
        let ev = match kind {
            ReqKind::Start => Ev::ClientStart {
                key,
                attempt: attempt + 1,
            },
            ReqKind::Terminate => Ev::ClientTerm {
                key,
                attempt: attempt + 1,
            },
        };
        self.schedule(d, ev);
    }

    fn send_request(&mut self, kind: ReqKind, key: String, attempt: u32) {
        let Some(node) = self.route(&key) else {
            self.retry(kind, key, attempt);
            return;
        };
        self.next_req += 1;
        let req = self.next_req;
        let inc = self.nodes[node].inc;
        self.pending.insert(
            req,
            Pending {
                kind,
                key,
                node,
                inc,
                attempt,
                arrived: false,
                arrived_at: 0,
            },
        );
        let d = self.delay((1, 8));
        let ev = match kind {
            ReqKind::Start => Ev::StartArrive { node, inc, req },
            ReqKind::Terminate => Ev::TermArrive { node, inc, req },
        };
        self.schedule(d, ev);
    }

    fn client_start(&mut self, key: String, attempt: u32) {
        self.send_request(ReqKind::Start, key, attempt);
    }

    fn client_term(&mut self, key: String, attempt: u32) {
        if self.keys[&key].expect == Expect::Gone {
            return;
        }
        self.send_request(ReqKind::Terminate, key, attempt);
    }

    fn view_event(&mut self, observer: usize, subject: usize) {
        if !self.nodes[observer].alive || observer == subject {
            return;
        }
        let target = self
            .hears(observer, subject)
            .then_some(self.nodes[subject].inc);
        let current = self.nodes[observer].view.get(&subject).copied();
        let heard = self.heard[observer][subject];
        let heard_dead = !self.nodes[subject].alive || heard != Some(self.nodes[subject].inc);
        if current.is_none() && heard.is_some() && heard_dead {
            // The membership reports a node this one never had in its view as dead, or back as
            // a new incarnation: the runtime reports the incarnation it heard from as down.
            let down = self.ids[subject].clone();
            self.drive(observer, |d, h| d.node_down(h, &down));
        }
        let target_leaving = target.is_some() && self.nodes[subject].leaving;
        if current == target {
            if self.nodes[observer].view_leaving.contains(&subject) != target_leaving {
                // The membership tells it leaves.
                if target_leaving {
                    self.nodes[observer].view_leaving.insert(subject);
                } else {
                    self.nodes[observer].view_leaving.remove(&subject);
                }
                self.push_view(observer);
            }
            return;
        }
        if let Some(inc) = current {
            // Gone, or back as a new incarnation: it leaves the view first, and the runtime
            // closes the connection to it (even if only the gossip was cut: a run declared down
            // cannot talk to this node until membership reports it up again).
            self.declare_down(observer, subject, inc);
            self.push_view(observer);
        }
        if let Some(inc) = target {
            self.nodes[observer].view.insert(subject, inc);
            if self.declared[observer][subject] == Some(inc) {
                self.declared[observer][subject] = None;
            }
            if target_leaving {
                self.nodes[observer].view_leaving.insert(subject);
            }
            self.push_view(observer);
            self.sync_link(observer, subject);
        }
    }

    fn pump(&mut self, from: usize, to: usize) {
        while self.links[from][to]
            .front()
            .is_some_and(|p| p.ready <= self.now)
        {
            if self.nodes[from].side != self.nodes[to].side || !self.link_up[from][to] {
                // Partitioned, or the connection is refused: held until the heal, or until the
                // connection is up (lost if a view change closes the link).
                return;
            }
            let p = self.links[from][to].pop_front().expect("front");
            self.deliver(from, p.from_inc, to, p.to_inc, p.msg);
        }
    }

    /// Whether a live node runs or holds a copy of `key`, or one is in flight to a live node.
    fn has_copy(&self, key: &str) -> bool {
        self.has_copy_besides(key, usize::MAX, false)
    }

    /// Whether the copy `b` of `key` can still become a running child: a hand-off copy, or a
    /// backup whose origin is down (it fails over) or still runs that lineage. A backup its live
    /// origin no longer needs (a late replication) is dropped, not failed over.
    fn live_copy(&self, key: &str, b: &throng_core::directory::Backup) -> bool {
        let from = self.index(&b.from);
        b.handoff.is_some()
            || b.orphan
            || !self.nodes[from].alive
            || self.nodes[from]
                .dir()
                .owned()
                .get(key)
                .is_some_and(|o| o.epoch == b.epoch)
    }

    /// The key of a copy in flight from `from` that can become a running child: an adoption,
    /// or a replication of a lineage `from` still runs (or of a node that is down: it fails
    /// over). A late replication its live sender no longer needs is dropped on arrival.
    fn live_in_flight<'m>(&self, from: usize, msg: &'m DirMsg) -> Option<&'m str> {
        match msg {
            DirMsg::Adopt { record, .. } => Some(record.key.as_str()),
            DirMsg::Replicate { record, epoch } => (!self.nodes[from].alive
                || self.nodes[from]
                    .dir()
                    .owned()
                    .get(&record.key)
                    .is_some_and(|o| o.epoch == *epoch))
            .then_some(record.key.as_str()),
            _ => None,
        }
    }

    /// [`Sim::has_copy`], not counting the copies on `node`, sent by it or to it, nor the
    /// backups of its copy; with `adopted`, not the hand-off copies held for it either (the copy
    /// it just took).
    fn has_copy_besides(&self, key: &str, node: usize, adopted: bool) -> bool {
        let n = self.nodes.len();
        (0..n).any(|i| {
            i != node
                && self.nodes[i].alive
                && (self.nodes[i].dir().owned().contains_key(key)
                    || self.nodes[i].dir().backups().get(key).is_some_and(|list| {
                        // A copy handed to `node`, or a backup of `node`'s own copy, is
                        // the same lineage.
                        list.iter().any(|b| {
                            (self.index(&b.from) != node || (b.handoff.is_some() && !adopted))
                                && self.live_copy(key, b)
                        })
                    })
                    || self.nodes[i]
                        .children
                        .iter()
                        .any(|(k, c)| c.merging && k == key))
        }) || (0..n).filter(|&from| from != node).any(|from| {
            (0..n).filter(|&to| to != node).any(|to| {
                self.nodes[to].alive
                    && self.links[from][to].iter().any(|p| {
                        self.live_in_flight(from, &p.msg) == Some(key)
                            && self.nodes[to].inc == p.to_inc
                            && self.nodes[from].inc == p.from_inc
                    })
            })
        })
    }

    /// A message that carried a copy of a child was lost: if that was the last copy (its sender
    /// crashed since), the child is lost with it.
    fn message_lost(&mut self, msg: &DirMsg) {
        if let DirMsg::Replicate { record: r, .. } | DirMsg::Adopt { record: r, .. } = msg {
            if !self.has_copy(&r.key) {
                if let Some(t) = self.keys.get_mut(&r.key) {
                    t.sole_copy_lost = true;
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, from_inc: u64, to: usize, to_inc: u64, msg: DirMsg) {
        let ok = self.nodes[to].alive
            && self.nodes[to].inc == to_inc
            && self.nodes[from].inc == from_inc;
        if !ok {
            self.tally.event("message lost (node down)");
            trace!(self, "drop n{from}->n{to} {}", msg_kind(&msg));
            self.message_lost(&msg);
            return;
        }
        if self.heard[to][from].is_some_and(|h| h != from_inc)
            && !self.nodes[to].view.contains_key(&from)
        {
            // The first message of a new incarnation of a node this one heard from but never had
            // in its view: the handshake tells the old incarnation is gone, and the runtime
            // reports it down before delivering anything from the new one (otherwise the backups
            // the old one replicated here would never be failed over, and the new incarnation's
            // `Held` reconciliation would drop them: the child is lost).
            trace!(
                self,
                "n{to}: n{from} is back as a new incarnation (old one down)"
            );
            let down = self.ids[from].clone();
            self.drive(to, |d, h| d.node_down(h, &down));
        }
        trace!(self, "n{from}->n{to} {msg:?}");
        self.heard[to][from] = Some(from_inc);
        if !self.nodes[from].alive && !self.nodes[to].view.contains_key(&from) {
            // The last messages of a crashed node reach a node that never had it in its view: the
            // membership reports that incarnation down to it too (`node_down`).
            let d = self.delay((5, 60));
            self.schedule(
                d,
                Ev::View {
                    observer: to,
                    subject: from,
                },
            );
        }
        let replicated = match &msg {
            DirMsg::Replicate { record: r, .. } => Some((r.key.clone(), state_of(r))),
            _ => None,
        };
        let acked = match &msg {
            DirMsg::Ack { key, version, .. } => Some((key.clone(), *version)),
            _ => None,
        };
        // A crashed node's last messages still arrive: a confirmation from it may make the
        // receiver drop what was the last surviving copy (the crashed node had taken it).
        let dropped_by_dead = match &msg {
            DirMsg::Drop { key, .. } if !self.nodes[from].alive => Some(key.clone()),
            _ => None,
        };
        if let DirMsg::Adopt {
            record,
            moved: false,
            ..
        } = &msg
        {
            // A failed-over copy passed on (it may move on before its `FailedOver` event): with
            // views split, a removal on the other side does not reach it.
            if self.views_split {
                if let Some(t) = self.keys.get_mut(&record.key) {
                    if t.expect == Expect::Gone || t.removal_ok {
                        t.split = true;
                    }
                }
            }
        }
        let sender = self.ids[from].clone();
        let effects = self.run_driver(to, |d, h| d.receive(h, &sender, msg));
        if let Some((key, state)) = replicated {
            let was_acked = effects
                .iter()
                .any(|e| matches!(e, Effect::Send(_, DirMsg::Ack { key: k, .. }) if *k == key));
            if was_acked {
                if let (Some(t), Some(s)) = (self.keys.get_mut(&key), state) {
                    t.floor = t.floor.max(s);
                }
            }
        }
        if let Some((key, version)) = acked {
            // The owner's current version is held by its backup, which is still up: the key is
            // fully replicated again, earlier crashes of its holders no longer matter.
            let full = self.nodes[to].dir().owned().get(&key).is_some_and(|o| {
                o.record.version == version && o.backup.as_ref() == Some(&self.ids[from])
            }) && self.nodes[from].alive;
            if full {
                let state = self.nodes[to]
                    .dir()
                    .owned()
                    .get(&key)
                    .and_then(|o| state_of(&o.record));
                if let Some(t) = self.keys.get_mut(&key) {
                    if t.crashed_holders.len() >= 2 || t.sole_copy_lost {
                        // The fault's loss (if any) is behind: the state to keep from now on
                        // is the one replicated again.
                        t.floor = state.unwrap_or(0);
                    }
                    t.crashed_holders.clear();
                    t.sole_copy_lost = false;
                }
            }
        }
        self.apply(to, effects);
        self.watch();
        if let Some(key) = dropped_by_dead {
            if !self.has_copy(&key) {
                if let Some(t) = self.keys.get_mut(&key) {
                    t.sole_copy_lost = true;
                }
            }
        }
    }

    /// With a trace, `SIM_WATCH=key` prints the copies of `key` every node holds whenever they
    /// change.
    fn watch(&mut self) {
        if !self.config.trace {
            return;
        }
        let Ok(k) = std::env::var("SIM_WATCH") else {
            return;
        };
        let mut now = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(list) = n.dir().backups().get(&k) {
                let copies: Vec<_> = list
                    .iter()
                    .map(|b| (b.from.as_str(), b.handoff, b.epoch, b.record.version))
                    .collect();
                now.push_str(&format!(" n{i}: {copies:?}"));
            }
        }
        if now != self.watched {
            eprintln!("    copies of {k}:{now}");
            self.watched = now;
        }
    }

    // -----------------------------------------------------------------------------------------
    // The runtime: executing actions.

    /// Runs `f` on `node`'s driver and carries out the effects it asked for.
    fn drive(&mut self, node: usize, f: impl FnOnce(&mut Driver<u64>, &mut SimHost)) {
        let effects = self.run_driver(node, f);
        self.apply(node, effects);
    }

    /// Runs `f` on `node`'s driver; the effects it asked for, to carry out with `apply`.
    fn run_driver(
        &mut self,
        node: usize,
        f: impl FnOnce(&mut Driver<u64>, &mut SimHost),
    ) -> Vec<Effect> {
        let mut host = SimHost::default();
        f(&mut self.nodes[node].drv, &mut host);
        host.effects
    }

    fn apply(&mut self, node: usize, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Spawn(record) => self.spawn(node, record),
                Effect::Stop(key) => {
                    let inc = self.nodes[node].inc;
                    let merging = self.nodes[node].drv.is_merging(&key);
                    if merging {
                        if let Some(t) = self.keys.get_mut(&key) {
                            t.merged = true;
                            t.ledger = None;
                        }
                    }
                    match self.nodes[node].children.get_mut(&key) {
                        Some(c) if c.phase == ChildPhase::Running => {
                            c.phase = ChildPhase::Stopping;
                            c.merging = merging;
                            let instance = c.instance;
                            trace!(self, "n{node}: stop {key}");
                            let d = self.delay((1, 5));
                            self.schedule(
                                d,
                                Ev::StopDone {
                                    node,
                                    inc,
                                    key,
                                    instance,
                                },
                            );
                        }
                        other => {
                            let what = format!(
                                "n{node} asked to stop {key}, which is {:?}",
                                other.map(|c| c.phase)
                            );
                            self.fail(Invariant::Runtime, what);
                        }
                    }
                }
                Effect::Send(to, msg) => {
                    let to = self.index(&to);
                    self.tally.event(match &msg {
                        DirMsg::Replicate { .. } => "message: replicate",
                        DirMsg::Ack { .. } => "message: ack",
                        DirMsg::Drop { .. } => "message: drop",
                        DirMsg::Dropped { .. } => "message: dropped",
                        DirMsg::Adopt { .. } => "message: adopt",
                        DirMsg::Held { .. } => "message: held",
                        DirMsg::Conflict { .. } => "message: conflict",
                        DirMsg::Chase { .. } => "message: chase",
                        DirMsg::Chased { .. } => "message: chased",
                        DirMsg::Removed { .. } => "message: removed",
                        DirMsg::Buried { .. } => "message: buried",
                    });
                    if to == node {
                        self.fail(
                            Invariant::Runtime,
                            format!("n{node} sent {} to itself", msg_kind(&msg)),
                        );
                        continue;
                    }
                    // The runtime has a link to the nodes of its view, and to a run it accepted a
                    // connection from before it joined the view.
                    let to_inc = if self.link_up[node][to] {
                        Some(self.nodes[to].inc)
                    } else {
                        self.nodes[node].view.get(&to).copied()
                    };
                    let Some(to_inc) = to_inc else {
                        self.tally.event("message lost (no link to the receiver)");
                        trace!(self, "n{node}->n{to} {} lost: not in view", msg_kind(&msg));
                        self.message_lost(&msg);
                        continue;
                    };
                    let base = if self.rng.random_bool(0.05) {
                        self.delay((20, 80))
                    } else {
                        self.delay((1, 8))
                    };
                    let link = &mut self.links[node][to];
                    let ready = (self.now + base).max(link.back().map_or(0, |p| p.ready));
                    link.push_back(Packet {
                        ready,
                        from_inc: self.nodes[node].inc,
                        to_inc,
                        msg,
                    });
                    self.schedule(ready - self.now, Ev::Pump { from: node, to });
                }
                Effect::Reply(req, result) => self.reply(node, req, result),
                Effect::Event(e) => {
                    self.tally.event(event_kind(&e));
                    trace!(self, "n{node}: {e:?}");
                    match e {
                        // (Its generation is added by `apply_exit`.)
                        ChildEvent::GaveUp { key, .. } if self.keys.contains_key(&key) => {
                            self.begin_removal(node, &key);
                        }
                        ChildEvent::FailedOver { key, .. } => {
                            // A backup on the other side of a partition (or of a false
                            // suspicion) failed over a child removed on this side, or while
                            // another copy of it exists: two lineages.
                            let other = self.has_copy_besides(&key, node, true);
                            let views_split = self.views_split;
                            if let Some(t) = self.keys.get_mut(&key) {
                                if other
                                    || (views_split && (t.expect == Expect::Gone || t.removal_ok))
                                {
                                    t.split = true;
                                }
                            }
                        }
                        ChildEvent::Stopped { key } => {
                            if let Some(t) = self.keys.get_mut(&key) {
                                if t.removal_ok {
                                    t.expect = Expect::Gone;
                                }
                            }
                        }
                        ChildEvent::Adopted { key, .. } => self.check_handoff(node, &key),
                        ChildEvent::Started { key } if self.has_copy_besides(&key, node, false) => {
                            // A start while a copy of the child exists elsewhere (a start
                            // retried at another owner while views disagreed during a move):
                            // two lineages, merged once they meet.
                            if let Some(t) = self.keys.get_mut(&key) {
                                t.split = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let n = &self.nodes[node];
        if n.alive
            && n.leaving
            && n.dir().handed_off()
            && n.dir().owned().is_empty()
            && n.dir().backups().is_empty()
        {
            let inc = n.inc;
            self.schedule(1, Ev::Exit { node, inc });
        }
    }

    /// A child handed off gracefully started on `node`: its state must be its state at the
    /// drain-stop (every update it accepted before included, none after).
    fn check_handoff(&mut self, node: usize, key: &str) {
        let Some(t) = self.keys.get(key) else {
            return;
        };
        let (Some((_, moved, (generation, version))), true) = (t.moved_state, t.snapshots) else {
            return;
        };
        let adopted = self.nodes[node]
            .dir()
            .owned()
            .get(key)
            .map(|o| (o.record.generation, o.record.version));
        let excuse = match adopted {
            // An older copy of the same child, from before the drain-stop: a hand-off copy
            // whose confirmation was lost (a partition, a restart) sent again, which arrived
            // before the newer one. Not this move's hand-off: the newer copy is merged into it
            // when it arrives, and the state is checked at convergence.
            Some((g, v)) if g == generation && v < version => {
                Some("an older hand-off copy sent again arrived first (merged)")
            }
            _ => lossy_excuse(t),
        };
        self.keys.get_mut(key).expect("tracked").moved_state = None;
        let Some(state) = self.nodes[node].children.get(key).map(|c| c.state) else {
            return;
        };
        self.check(Invariant::HandOff);
        if state == moved {
            return;
        }
        match excuse {
            Some(why) => self.tally.excuse(why),
            None => {
                let what = format!(
                    "{key} adopted by n{node} with state {state}, drain-stopped at {moved}"
                );
                self.fail(Invariant::HandOff, what);
            }
        }
    }

    fn spawn(&mut self, node: usize, record: Record) {
        let key = record.key.clone();
        if let Some(c) = self.nodes[node].children.get(&key) {
            let what = format!("n{node} spawned {key} twice (already {:?})", c.phase);
            self.fail(Invariant::Runtime, what);
            return;
        }
        // Another live copy: views disagreed.
        let elsewhere = (0..self.nodes.len())
            .any(|i| i != node && self.nodes[i].alive && self.nodes[i].children.contains_key(&key));
        let views_split = self.views_split;
        if let Some(t) = self.keys.get_mut(&key) {
            // A copy spawned while views are split after a removal began is a failover on the
            // other side, even when no `FailedOver` event tells (a node that lost its quorum
            // before the spawn completed stops the child before its first event).
            if elsewhere || (views_split && (t.expect == Expect::Gone || t.removal_ok)) {
                t.split = true;
            }
        }
        let state = state_of(&record).unwrap_or(0);
        self.next_instance += 1;
        let instance = self.next_instance;
        trace!(self, "n{node}: spawn {key} from state {state}");
        self.nodes[node].children.insert(
            key.clone(),
            Child {
                state,
                phase: ChildPhase::Starting,
                instance,
                merging: false,
            },
        );
        let inc = self.nodes[node].inc;
        let d = self.delay((1, 5));
        self.schedule(
            d,
            Ev::SpawnDone {
                node,
                inc,
                key,
                instance,
            },
        );
    }

    fn reply(&mut self, node: usize, req: u64, result: Result<(), StartError>) {
        let Some(p) = self.pending.remove(&req) else {
            self.fail(
                Invariant::Replies,
                format!("n{node} answered request {req} twice or unasked"),
            );
            return;
        };
        self.check(Invariant::Replies);
        trace!(
            self,
            "n{node}: reply {req} ({:?} {}): {result:?}",
            p.kind,
            p.key
        );
        // The new child's state so far (updates it accepted before this answer).
        let runs = self.nodes[node].children.get(&p.key).map(|c| c.state);
        let generation = self.nodes[node]
            .dir()
            .owned()
            .get(&p.key)
            .map(|o| o.record.generation);
        let t = self.keys.get_mut(&p.key).expect("tracked");
        if p.kind == ReqKind::Start && t.removal_began.is_some_and(|r| p.arrived_at >= r) {
            t.late_starts = t.late_starts.saturating_sub(1);
        }
        match (p.kind, result) {
            (ReqKind::Start, Ok(())) => {
                self.tally.event("reply: start ok");
                if t.expect == Expect::Gone && t.removal_began.is_some_and(|r| p.arrived_at > r) {
                    // Started again after it was removed: a new child of the same key, from
                    // its initial state (plus the updates it accepted before this answer).
                    t.reborn(runs);
                }
                if t.expect != Expect::Gone {
                    t.expect = Expect::Running;
                }
            }
            (ReqKind::Start, Err(StartError::NotOwner { .. })) => {
                self.tally.event("reply: not owner");
                self.retry(ReqKind::Start, p.key, p.attempt);
            }
            (ReqKind::Start, Err(StartError::AlreadyStarted(_))) if p.attempt > 0 => {
                // An earlier attempt started it, and it moved before the answer: it exists.
                self.tally.event("reply: already started (retry)");
                if t.expect == Expect::Gone
                    && t.removal_began.is_some_and(|r| p.arrived_at > r)
                    && generation.is_some_and(|g| !t.removed.contains(&g))
                {
                    // The child running here is not the one removed: an earlier attempt that
                    // arrived after the removal began (waiting for it, at a node that answered
                    // `NotOwner` once the new child moved on) started it again.
                    t.reborn(runs);
                }
                if t.expect != Expect::Gone {
                    t.expect = Expect::Running;
                }
            }
            (ReqKind::Start, Err(_)) => self.tally.event("reply: start failed"),
            (ReqKind::Terminate, Ok(())) => {
                self.tally.event("reply: terminate ok");
                t.expect = Expect::Gone;
            }
            (ReqKind::Terminate, Err(StartError::NoSuchChild(_))) => {
                self.tally.event("reply: no such child");
                self.retry(ReqKind::Terminate, p.key, p.attempt);
            }
            (ReqKind::Terminate, Err(_)) => self.tally.event("reply: terminate failed"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Convergence and invariants.

    fn converge_and_check(&mut self) {
        if self.config.gossip_cuts && (self.partitioned || self.gossip_cut()) && !self.quiet_sides()
        {
            return;
        }
        trace!(self, "CONVERGE");
        self.tally.event("convergence");
        self.heal();
        self.all_views_refresh((1, 20));
        let mut budget = QUIESCENCE_BUDGET;
        while let Some(s) = self.queue.pop() {
            self.now = self.now.max(s.time);
            self.handle(s.ev);
            budget -= 1;
            if budget == 0 {
                self.check(Invariant::Quiescence);
                self.fail(
                    Invariant::Quiescence,
                    format!("still busy after {QUIESCENCE_BUDGET} events"),
                );
                self.queue.clear();
                return;
            }
        }
        self.check(Invariant::Quiescence);
        self.check_invariants();
        self.views_split = self.partitioned;
    }

    /// Faults stop but the partition and the gossip cuts stay: the views settle on what each node
    /// hears and every event is delivered until the system is quiet; then
    /// [`Invariant::SideRuns`] is checked. False when it did not become quiet (reported).
    fn quiet_sides(&mut self) -> bool {
        trace!(self, "QUIET (partition and gossip cuts kept)");
        self.tally.event("quiet before a heal");
        self.all_views_refresh((1, 20));
        let mut budget = QUIESCENCE_BUDGET;
        while let Some(s) = self.queue.pop() {
            self.now = self.now.max(s.time);
            self.handle(s.ev);
            budget -= 1;
            if budget == 0 {
                self.check(Invariant::Quiescence);
                self.fail(
                    Invariant::Quiescence,
                    format!("still busy after {QUIESCENCE_BUDGET} events (partitioned)"),
                );
                self.queue.clear();
                return false;
            }
        }
        self.check_sides();
        true
    }

    /// [`Invariant::SideRuns`].
    fn check_sides(&mut self) {
        let alive = self.alive_nodes();
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        for &i in &alive {
            if seen.contains(&i) {
                continue;
            }
            let view: BTreeSet<usize> = self.nodes[i].view.keys().copied().collect();
            let side: BTreeSet<usize> = view
                .iter()
                .copied()
                .filter(|&j| {
                    self.nodes[j].alive
                        && self.nodes[j].view.keys().copied().collect::<BTreeSet<_>>() == view
                })
                .collect();
            seen.extend(side.iter().copied());
            // Nobody outside sees into it either (a one-way cut leaves it half open).
            let closed = alive
                .iter()
                .filter(|j| !side.contains(j))
                .all(|&j| self.nodes[j].view.keys().all(|k| !side.contains(k)));
            if side != view
                || !closed
                || !self.nodes[i].dir().has_quorum()
                || self.nodes[i].dir().ring().is_empty()
            {
                // Views that disagree (a one-way cut), a side without a quorum, or a side of
                // leaving nodes only (a leaving node owns nothing: it hands its children off and
                // keeps their copies until an owner confirms): nothing to require.
                continue;
            }
            let mut held: BTreeSet<String> = BTreeSet::new();
            for &j in &side {
                let d = &self.nodes[j].dir();
                held.extend(d.owned().keys().cloned());
                held.extend(d.backups().keys().cloned());
            }
            for key in held {
                self.check(Invariant::SideRuns);
                let runs = side.iter().any(|&j| {
                    self.nodes[j]
                        .children
                        .get(&key)
                        .is_some_and(|c| c.phase == ChildPhase::Running)
                });
                if !runs {
                    let what = format!("side {side:?} holds a copy of {key} and does not run it");
                    self.fail(Invariant::SideRuns, what);
                }
            }
        }
    }

    fn check_invariants(&mut self) {
        let alive = self.alive_nodes();
        // Views converged to the live set.
        for &i in &alive {
            let view: Vec<usize> = self.nodes[i].view.keys().copied().collect();
            let ring: Vec<usize> = self.nodes[i]
                .dir()
                .ring()
                .nodes()
                .iter()
                .map(|n| self.index(n))
                .collect();
            if view != alive || ring != alive {
                let what = format!("n{i} view {view:?} ring {ring:?}, live {alive:?}");
                self.fail(Invariant::Quiescence, what);
            }
        }
        // Where each key runs (runtime children).
        let mut running: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &alive {
            for (key, c) in &self.nodes[i].children {
                running.entry(key.clone()).or_default().push(i);
                if c.phase != ChildPhase::Running {
                    let what = format!("n{i}: {key} still {:?} when quiet", c.phase);
                    self.tally.violations[Invariant::Runtime as usize] += 1;
                    if self.failures.len() < MAX_FAILURES {
                        self.failures.push(format!("step {}: {what}", self.now));
                    }
                }
            }
        }
        // The runtime and the directory agree.
        for &i in &alive {
            self.check(Invariant::Runtime);
            let mut bad = Vec::new();
            for (key, o) in self.nodes[i].dir().owned() {
                let child = self.nodes[i].children.get(key);
                if o.phase != throng_core::directory::Phase::Running || child.is_none() {
                    bad.push(format!("{key}: directory {:?}, runtime {child:?}", o.phase));
                }
            }
            for key in self.nodes[i].children.keys() {
                if !self.nodes[i].dir().owned().contains_key(key) {
                    bad.push(format!("{key}: runs but the directory does not know it"));
                }
            }
            for b in bad {
                self.fail(Invariant::Runtime, format!("n{i}: {b}"));
            }
        }
        // Unanswered requests.
        let pending: Vec<(u64, Pending)> = std::mem::take(&mut self.pending).into_iter().collect();
        for (req, p) in pending {
            if self.nodes[p.node].alive && self.nodes[p.node].inc == p.inc {
                self.check(Invariant::Replies);
                self.fail(
                    Invariant::Replies,
                    format!(
                        "request {req} ({:?} {}) to n{} never answered",
                        p.kind, p.key, p.node
                    ),
                );
            }
        }

        // Per key.
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        for key in keys {
            let nodes = running.get(&key).cloned().unwrap_or_default();
            let t = self.keys[&key].clone();
            let excuse = if t.split {
                Some("split brain (two copies, or a removal and a failover, on two sides)")
            } else if t.late_starts > 0 && t.expect == Expect::Gone {
                Some("a start after the removal was never answered (its node crashed)")
            } else if t.crashed_holders.len() >= 2 {
                Some("double fault (owner and backup crashed)")
            } else if t.sole_copy_lost {
                Some("sole copy crashed (no backup held it yet)")
            } else {
                None
            };
            // Exactly once.
            self.check(Invariant::Duplicate);
            if nodes.len() > 1 {
                self.fail(Invariant::Duplicate, format!("{key} runs on {nodes:?}"));
            }
            match t.expect {
                Expect::Running => {
                    self.check(Invariant::Lost);
                    if nodes.is_empty() {
                        // A removal (terminate, or an exit its policy does not restart) began but
                        // was not acknowledged (its node crashed first): either outcome is right.
                        let excuse = excuse.or(t.removal_ok.then_some(
                            "removal begun, not acknowledged (either outcome is right)",
                        ));
                        match excuse {
                            Some(why) => self.tally.excuse(why),
                            None => {
                                let what = format!(
                                    "{key} ({:?}) acknowledged but runs nowhere",
                                    t.spec.policy
                                );
                                self.fail(Invariant::Lost, what);
                            }
                        }
                    }
                }
                Expect::Gone => {
                    self.check(Invariant::Resurrected);
                    if !nodes.is_empty() {
                        match excuse {
                            Some(why) => self.tally.excuse(why),
                            None => {
                                let what = format!("{key} was removed but runs on {nodes:?}");
                                self.fail(Invariant::Resurrected, what);
                            }
                        }
                    }
                }
                Expect::Unknown => {}
            }
            if let [x] = nodes[..] {
                // Placement: everyone agrees the runner owns it.
                self.check(Invariant::Placement);
                let owners: BTreeSet<Option<NodeId>> = alive
                    .iter()
                    .map(|&i| self.nodes[i].dir().owner(&key))
                    .collect();
                if owners.len() != 1 || owners.first() != Some(&Some(self.ids[x].clone())) {
                    self.fail(
                        Invariant::Placement,
                        format!("{key} runs on n{x}, owners {owners:?}"),
                    );
                }
                // Replicated.
                self.check(Invariant::Replicated);
                let dir = &self.nodes[x].dir();
                let o = &dir.owned()[&key];
                let want = dir.backup_of(&key);
                let version = o.record.version;
                let epoch = o.epoch;
                let ok = o.backup == want
                    && want.as_ref().is_none_or(|b| {
                        let b = self.index(b);
                        self.nodes[b].dir().backups().get(&key).is_some_and(|list| {
                            list.iter().any(|h| {
                                h.from == self.ids[x]
                                    && h.handoff.is_none()
                                    && h.epoch == epoch
                                    && h.record.version == version
                            })
                        })
                    });
                if !ok {
                    let what = format!(
                        "{key} on n{x} (v{version}): backup {:?}, should be {want:?}",
                        o.backup
                    );
                    self.fail(Invariant::Replicated, what);
                }
                // State kept.
                if t.expect == Expect::Running {
                    self.check(Invariant::StateKept);
                    let state = self.nodes[x].children[&key].state;
                    if state < t.floor {
                        match excuse {
                            Some(why) => self.tally.excuse(why),
                            None => {
                                let what = format!(
                                    "{key} on n{x} has state {state}, a backup acknowledged {}",
                                    t.floor
                                );
                                self.fail(Invariant::StateKept, what);
                            }
                        }
                    }
                }
            }
            // Accepted updates, exactly once.
            if let ([x], Expect::Running, Some(want)) = (&nodes[..], t.expect, t.ledger) {
                self.check(Invariant::Updates);
                let state = self.nodes[*x].children[&key].state;
                if state != want {
                    match lossy_excuse(&t) {
                        Some(why) => self.tally.excuse(why),
                        None => {
                            let what = format!(
                                "{key} on n{x} has state {state}, accepted updates make {want}"
                            );
                            self.fail(Invariant::Updates, what);
                        }
                    }
                }
            }
            // New epoch.
            let running_state = match nodes[..] {
                [x] => Some(self.nodes[x].children[&key].state),
                _ => None,
            };
            let durable = match nodes[..] {
                [x] => self.nodes[x]
                    .dir()
                    .owned()
                    .get(&key)
                    .and_then(|o| state_of(&o.record)),
                _ => None,
            };
            let t = self.keys.get_mut(&key).expect("tracked");
            t.split = false;
            t.late_starts = 0;
            t.crashed_holders.clear();
            t.sole_copy_lost = false;
            t.floor = durable.unwrap_or(0);
            t.merged = false;
            t.moved_state = None;
            t.ledger = if t.snapshots { running_state } else { None };
            t.expect = match (t.expect, nodes.len()) {
                (Expect::Gone, 0) => Expect::Gone,
                (_, 1) => Expect::Running,
                _ => Expect::Unknown,
            };
        }
        // Stale backups: held for a node that does not run the key or has its backup elsewhere.
        let mut bad = Vec::new();
        for &b in &alive {
            for (key, h) in self.nodes[b]
                .dir()
                .backups()
                .iter()
                .flat_map(|(k, list)| list.iter().map(move |h| (k, h)))
            {
                self.tally.checks[Invariant::StaleBackup as usize] += 1;
                let from = self.index(&h.from);
                let valid = self.nodes[from].alive
                    && h.handoff.is_none()
                    && self.nodes[from].dir().owned().get(key).is_some_and(|o| {
                        o.backup.as_ref() == Some(&self.ids[b]) && o.epoch == h.epoch
                    });
                if !valid {
                    let what = format!(
                        "n{b} holds a stale copy of {key} from {} ({:?}, {:?})",
                        h.from, h.handoff, h.epoch
                    );
                    bad.push(what);
                }
            }
        }
        for what in bad {
            self.fail(Invariant::StaleBackup, what);
        }
    }
}
