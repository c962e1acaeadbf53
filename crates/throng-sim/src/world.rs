//! The simulated world: nodes (their runs, views, children and drivers), the connections
//! between them, the event queue, the clients' tracking of keys and requests; and the queries
//! about where copies of a child are.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use throng_core::directory::{
    Action, DirMsg, Directory, DurableEntry, Generation, StartSpec, Version,
};
use throng_core::driver::Driver;
use throng_core::NodeId;

use crate::config::{dir_config, SimConfig};
use crate::report::{Invariant, LossWork, Tally};

/// Steps between client retries of a request refused with `NotOwner`/`NoSuchChild`.
pub(crate) const RETRY_DELAY: (u64, u64) = (5, 30);

/// A client gives up after this many attempts.
pub(crate) const MAX_ATTEMPTS: u32 = 40;

/// A client that saw no answer (its reply was lost) retries after this long (its timeout).
pub(crate) const CLIENT_TIMEOUT: (u64, u64) = (100, 400);
/// With [`SimConfig::shell_faults`]: the chance that a spawn is slow, and how long it takes then.
pub(crate) const SLOW_SPAWN: (f64, (u64, u64)) = (0.05, (100, 800));
/// With [`SimConfig::shell_faults`]: the chance that the reply to a remote client is lost.
pub(crate) const LOST_REPLY: f64 = 0.03;
/// With [`SimConfig::shell_faults`]: how long a reset connection stays down.
pub(crate) const RESET_OUTAGE: (u64, u64) = (5, 300);

/// With [`SimConfig::durable`]: how long after a key is touched its entry is written (the
/// writer's coalescing window), if no write is pending yet.
pub(crate) const FLUSH_DELAY: (u64, u64) = (1, 20);
/// With [`SimConfig::durable`]: a restarted node takes back what its disk kept once its view
/// has not changed for this long (the runtime's settle time, one second).
pub(crate) const RECOVERY_SETTLE: u64 = 1000;

/// The runtime's `RECOVER_WHEN_PREVIOUS_VIEW_BACK` (on; seed 436 of `--partitions 0
/// --shell-faults 1 --durable 1` lost an accepted update with it before records named the copy
/// that wrote their version).
pub(crate) const RECOVER_WHEN_PREVIOUS_VIEW_BACK: bool = true;
/// With [`SimConfig::durable`]: a restarted node takes its disk back at the latest this long
/// after its start, settled or not (the runtime's `RECOVERY_MAX_WAIT`, ten seconds).
pub(crate) const RECOVERY_MAX_WAIT: u64 = 10_000;
/// A leaving node that has not handed everything off this long after its leave began goes all
/// the same (the runtime's `HANDOFF_TIMEOUT`, sixty seconds): it writes its disk and stops, and
/// the rest fails over from the copies elsewhere, as after a crash.
pub(crate) const HANDOFF_TIMEOUT: u64 = 60_000;
/// With [`SimConfig::durable`]: after a full-cluster restart every node is back within this.
pub(crate) const FULL_RESTART_WINDOW: (u64, u64) = (1, 150);
/// With [`SimConfig::durable`]: the chance that a node restarts with an empty disk.
pub(crate) const DISK_LOSS: f64 = 0.05;

/// Up to this many keys, every directory is checked after every step and every convergence
/// checks placement on every node; above, one directory per step (in turn) and placement once
/// per key when the converged rings agree (see [`Sim::check_directories`]).
pub(crate) const FULL_CHECKS_UP_TO: usize = 20_000;

/// Failure descriptions kept per seed.
pub(crate) const MAX_FAILURES: usize = 8;

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.config.trace {
            eprintln!("[{:>6}] {}", $sim.now, format_args!($($arg)*));
        }
    };
}
pub(crate) use trace;

#[derive(Debug)]
pub(crate) enum Ev {
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
    /// A leave begun [`HANDOFF_TIMEOUT`] ago: the node goes if it has not yet.
    LeaveTimeout {
        node: usize,
        inc: u64,
    },
    /// The connection between `a` and `b`, reset by a shell fault, comes back.
    Reconnect {
        a: usize,
        b: usize,
    },
    /// The writer of `node` writes the entries of the keys touched since its last write.
    Flush {
        node: usize,
        inc: u64,
    },
    /// `node` takes back what its disk kept, if its view has settled.
    Recover {
        node: usize,
        inc: u64,
    },
    /// A node down after a full-cluster restart starts again.
    Restart {
        node: usize,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub(crate) ready: u64,
    pub(crate) from_inc: u64,
    pub(crate) to_inc: u64,
    pub(crate) msg: DirMsg,
}

pub(crate) struct Scheduled {
    pub(crate) time: u64,
    pub(crate) seq: u64,
    pub(crate) ev: Ev,
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
pub(crate) enum ChildPhase {
    Starting,
    Running,
    Stopping,
}

#[derive(Debug, Clone)]
pub(crate) struct Child {
    /// The actor's state: a counter, bumped by updates.
    pub(crate) state: u64,
    pub(crate) phase: ChildPhase,
    pub(crate) instance: u64,
    /// Stopping to merge another copy into it ([`Action::Merge`]; the driver holds that copy).
    pub(crate) merging: bool,
}

pub(crate) struct Node {
    pub(crate) alive: bool,
    pub(crate) inc: u64,
    pub(crate) side: u8,
    /// The directory, inside the driver the runtime runs too.
    pub(crate) drv: Driver<u64>,
    /// Who this node believes is up, with the incarnation it knows (itself included).
    pub(crate) view: BTreeMap<usize, u64>,
    /// The nodes of `view` this node knows are leaving (itself included if it leaves).
    pub(crate) view_leaving: BTreeSet<usize>,
    /// This node leaves gracefully ([`Directory::leave`]); it exits once handed off.
    pub(crate) leaving: bool,
    pub(crate) children: BTreeMap<String, Child>,
    /// Its gossip in is cut: it drops every peer from its view (the network to it still works).
    pub(crate) deaf: bool,
    /// Its gossip out is cut: every peer drops it from its view (the network to it still works).
    pub(crate) mute: bool,
    /// With [`SimConfig::durable`]: its disk, which survives its crashes: the durable entry of
    /// each key, as its writer wrote it.
    pub(crate) disk: BTreeMap<String, DurableEntry>,
    /// Keys touched and not written yet (lost with a crash).
    pub(crate) dirty: BTreeSet<String>,
    /// What this run read from its disk at its start, until it takes it back
    /// ([`Directory::recover`]) once its view has settled (at `settle_at`).
    pub(crate) recovery: Option<Vec<(String, DurableEntry)>>,
    /// When the view of this run last changed, plus [`RECOVERY_SETTLE`].
    pub(crate) settle_at: u64,
    /// When this run started, plus [`RECOVERY_MAX_WAIT`]: it recovers then at the latest.
    pub(crate) recover_by: u64,
    /// Starts (`true`) and terminates (`false`) that reached this run before its recovery, by
    /// request: they wait for it, as in the runtime (a start must not make a new child of a
    /// key whose durable copy this run has not taken back yet).
    pub(crate) parked: Vec<(bool, u64)>,
    /// Keys on the disk as a previous run left them, not written by this run yet: they mirror
    /// nothing of this run's directory until written.
    pub(crate) unsynced: BTreeSet<String>,
    /// The owners of its view as its writer last wrote them, after its recovery (on its disk);
    /// and those a run read at its start: it recovers once all of them are owners again.
    pub(crate) disk_view: Option<BTreeSet<usize>>,
    pub(crate) previous: Option<BTreeSet<usize>>,
}

impl Node {
    /// The node's directory, to read.
    pub(crate) fn dir(&self) -> &Directory {
        self.drv.directory()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Unknown,
    Running,
    Gone,
}

#[derive(Debug, Clone)]
pub(crate) struct KeyTrack {
    /// What its start requests carry.
    pub(crate) spec: StartSpec,
    pub(crate) expect: Expect,
    /// A terminate was issued, or an exit that the policy does not restart happened, or the
    /// directory gave up: a `Stopped` event for this key is legitimate.
    pub(crate) removal_ok: bool,
    /// When the first removal began (see `removal_ok`).
    pub(crate) removal_began: Option<u64>,
    /// The generations ([`Record::generation`]) of the children a removal began for, since
    /// `removal_began`: a child of another generation was started after them.
    ///
    /// [`Record::generation`]: throng_core::directory::Record::generation
    pub(crate) removed: BTreeSet<Generation>,
    /// The latest state a backup acknowledged.
    pub(crate) floor: u64,
    /// Nodes that crashed while holding a copy (run or backup) since the key was last fully
    /// replicated.
    pub(crate) crashed_holders: BTreeSet<usize>,
    /// A crash took the last copy (no other node ran it, held its backup or had it in flight).
    pub(crate) sole_copy_lost: bool,
    /// Two copies ran at once since the last convergence (views disagreed).
    pub(crate) split: bool,
    /// Start requests that reached a node after the removal began and were not answered yet: a
    /// node that crashes before answering may have started (and replicated) the new child.
    pub(crate) late_starts: u32,
    /// The child takes snapshots.
    pub(crate) snapshots: bool,
    /// The state every accepted update should have led to (snapshot-taking children only);
    /// `None` once a fault allowed by the model may have lost or merged updates.
    pub(crate) ledger: Option<u64>,
    /// The node, state and record (generation, version) of the child at its latest drain-stop
    /// for a move not yet adopted.
    pub(crate) moved_state: Option<(usize, u64, (Generation, Version))>,
    /// A copy was merged into another since the last convergence.
    pub(crate) merged: bool,
    /// How many times a node spawned a child of the key: a copy of a child exists only after its
    /// first spawn (its owner asks for the spawn as it takes the child).
    pub(crate) spawns: u32,
    /// With [`SimConfig::durable`]: the newest state of each child (generation) of the key that
    /// a writer wrote to a disk.
    pub(crate) written: BTreeMap<Generation, u64>,
    /// With [`SimConfig::durable`]: a write of the key was lost (pending when its node crashed),
    /// or a disk holding it was lost: what the disks hold may be older than what was written,
    /// and a removal may not be on any disk.
    pub(crate) at_risk: bool,
}

impl KeyTrack {
    /// The key was started again after its child was removed: a new child, from its initial
    /// state (`runs`: its state so far, with the updates it accepted before the answer).
    pub(crate) fn reborn(&mut self, runs: Option<u64>) {
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
pub(crate) enum ReqKind {
    Start,
    Terminate,
}

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) kind: ReqKind,
    pub(crate) key: String,
    /// The node the client sends from.
    pub(crate) client: usize,
    /// The node the request is sent to (the owner in the client's node's view).
    pub(crate) node: usize,
    pub(crate) inc: u64,
    pub(crate) attempt: u32,
    /// Delivered to the directory (otherwise still on the network).
    pub(crate) arrived: bool,
    /// When it was delivered to the directory.
    pub(crate) arrived_at: u64,
    /// The client no longer waits for the answer (the connection it was sent on was reset): the
    /// directory's answer is lost.
    pub(crate) reply_lost: bool,
}

pub(crate) struct Sim {
    pub(crate) seed: u64,
    pub(crate) config: SimConfig,
    pub(crate) rng: StdRng,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) queue: BinaryHeap<Scheduled>,
    pub(crate) ids: Vec<NodeId>,
    pub(crate) nodes: Vec<Node>,
    /// Per (receiver, sender): the latest incarnation of the sender heard from (the transport
    /// knows its peer's incarnation from the handshake).
    pub(crate) heard: Vec<Vec<Option<u64>>>,
    /// Per (from, to): the connection's messages in flight, in order.
    pub(crate) links: Vec<Vec<VecDeque<Packet>>>,
    /// Per pair (both orders): the connection is up ([`Sim::admitted`]).
    pub(crate) link_up: Vec<Vec<bool>>,
    /// Per (node, peer): the connection closed while the node kept the peer in its view; it is
    /// told when the connection comes back ([`Directory::reconnected`]).
    pub(crate) kept: Vec<Vec<bool>>,
    /// Per (node, peer): the runs of the two (the node's, the peer's) whose connection a shell
    /// fault reset, until it is back ([`Sim::is_cut`]).
    pub(crate) cut: Vec<Vec<Option<(u64, u64)>>>,
    /// Per (node, peer): the run of the peer whose connection a shell fault reset. The node is
    /// told [`Directory::reconnected`] once a connection to that run is up again, whatever its
    /// view did meanwhile: the runtime tells it after every new connection to the same run (the
    /// directory ignores it for a peer out of its view).
    pub(crate) reset: Vec<Vec<Option<u64>>>,
    /// Per (node, peer): the run of the peer this node's membership declared down (dropped from
    /// its view) and has not seen up since: its connections are refused.
    pub(crate) declared: Vec<Vec<Option<u64>>>,
    pub(crate) keys: BTreeMap<String, KeyTrack>,
    pub(crate) key_list: Vec<String>,
    pub(crate) next_key: u64,
    pub(crate) next_req: u64,
    pub(crate) next_instance: u64,
    pub(crate) pending: BTreeMap<u64, Pending>,
    pub(crate) partitioned: bool,
    /// A partition or false suspicion happened since the last convergence.
    pub(crate) views_split: bool,
    pub(crate) tally: Tally,
    pub(crate) failures: Vec<String>,
    /// The last copies printed by [`Sim::watch`].
    pub(crate) watched: String,
    /// A full-cluster restart whose outcome is checked at the next convergence.
    pub(crate) full_restart: Option<FullRestart>,
    /// The (node, run, key) whose disk was found not to mirror the directory (each reported
    /// once: it stays so until the key is written again).
    pub(crate) unmirrored: BTreeSet<(usize, u64, String)>,
    /// The crashes since the last convergence, by node and run: what each cost the survivors
    /// ([`Invariant::NodeLossWork`]).
    pub(crate) losses: BTreeMap<(usize, u64), LossWork>,
    /// Per key: the connections (from, to) with messages in flight that carry a copy of its
    /// child ([`DirMsg::Replicate`], [`DirMsg::Adopt`]), and how many: the connections
    /// [`Sim::has_copy_besides`] searches, rather than all `nodes²` of them.
    pub(crate) carrying: BTreeMap<String, BTreeMap<(usize, usize), u32>>,
    /// Per key: the nodes that run a child of it (in their `children`), where a spawn finds
    /// another copy and [`Sim::has_copy_besides`] looks first, without a search of every node.
    /// Keys that run nowhere are absent.
    pub(crate) placed: BTreeMap<String, Vec<usize>>,
    /// Next node whose directory is checked after a step, at scale ([`FULL_CHECKS_UP_TO`]).
    pub(crate) next_checked: usize,
}

/// A full-cluster restart ([`SimConfig::durable`]): what the clients knew when every node
/// crashed, and what the disks kept, to check at the next convergence ([`Invariant::Durable`],
/// [`Invariant::StaysRemoved`]).
#[derive(Debug, Default)]
pub(crate) struct FullRestart {
    /// When every node crashed.
    pub(crate) at: u64,
    /// Per key: what the clients expected at the crash.
    pub(crate) expect: BTreeMap<String, Expect>,
    /// Per key: the newest state of each child written to a disk before the crash.
    pub(crate) written: BTreeMap<String, BTreeMap<Generation, u64>>,
    /// What the disks held when their nodes started again, per key.
    pub(crate) survived: BTreeMap<String, Survived>,
    /// Nodes not started again yet.
    pub(crate) down: BTreeSet<usize>,
}

/// What the disks held of one key after a full-cluster restart.
#[derive(Debug, Default)]
pub(crate) struct Survived {
    /// The newest state of each child (generation) that some disk held.
    pub(crate) states: BTreeMap<Generation, u64>,
    /// The generations some disk held buried.
    pub(crate) buried: BTreeSet<Generation>,
}

impl Sim {
    pub(crate) fn new(seed: u64, config: SimConfig) -> Self {
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
            cut: vec![vec![None; n]; n],
            reset: vec![vec![None; n]; n],
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
            full_restart: None,
            unmirrored: BTreeSet::new(),
            losses: BTreeMap::new(),
            carrying: BTreeMap::new(),
            placed: BTreeMap::new(),
            next_checked: 0,
            ids,
            config,
        };
        // Start converged: every node sees every node.
        let all: Vec<NodeId> = sim.ids.clone();
        for i in 0..n {
            let mut dir =
                Directory::new(dir_config(&sim.ids[i], 0, sim.quorum(), sim.config.durable));
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
                disk: BTreeMap::new(),
                dirty: BTreeSet::new(),
                // A durable run takes its (empty) disk back once its view settled, like the
                // runtime: until then its driver holds what it touches.
                recovery: sim.config.durable.then(Vec::new),
                settle_at: RECOVERY_SETTLE,
                recover_by: RECOVERY_MAX_WAIT,
                parked: Vec::new(),
                unsynced: BTreeSet::new(),
                disk_view: None,
                previous: None,
            });
            if sim.config.durable {
                let node = sim.nodes.len() - 1;
                sim.schedule(RECOVERY_SETTLE, Ev::Recover { node, inc: 0 });
                sim.schedule(RECOVERY_MAX_WAIT, Ev::Recover { node, inc: 0 });
            }
        }
        sim
    }

    pub(crate) fn index(&self, id: &NodeId) -> usize {
        id.as_str()[1..].parse().expect("simulated node id")
    }

    pub(crate) fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            ev,
        });
    }

    pub(crate) fn delay(&mut self, range: (u64, u64)) -> u64 {
        self.rng.random_range(range.0..=range.1)
    }

    pub(crate) fn fail(&mut self, inv: Invariant, what: String) {
        self.tally.violations[inv as usize] += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures
                .push(format!("step {}: {}: {}", self.now, inv.name(), what));
        }
        trace!(self, "VIOLATION {}: {}", inv.name(), what);
    }

    pub(crate) fn check(&mut self, inv: Invariant) {
        self.tally.checks[inv as usize] += 1;
    }

    pub(crate) fn alive_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect()
    }

    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].alive && self.nodes[b].alive && self.nodes[a].side == self.nodes[b].side
    }

    /// Whether `observer`'s membership hears `subject` (reachable, and no gossip cut between).
    pub(crate) fn hears(&self, observer: usize, subject: usize) -> bool {
        self.reachable(observer, subject) && !self.nodes[observer].deaf && !self.nodes[subject].mute
    }

    /// Whether a shell fault reset the connection between the current runs of `a` and `b` and it
    /// is not back yet (a new run of either connects afresh).
    pub(crate) fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut[a][b] == Some((self.nodes[a].inc, self.nodes[b].inc))
    }

    pub(crate) fn quorum(&self) -> Option<usize> {
        self.config.quorum.then_some(self.config.nodes)
    }

    pub(crate) fn gossip_cut(&self) -> bool {
        self.nodes.iter().any(|n| n.deaf || n.mute)
    }

    /// The generation of the child `key` on `node` (`None` if it does not run there).
    pub(crate) fn generation_on(&self, node: usize, key: &str) -> Option<Generation> {
        self.nodes[node]
            .dir()
            .owned()
            .get(key)
            .map(|o| o.record.generation)
    }

    /// A removal of the child `key` that runs on `node` (if it runs there) began.
    pub(crate) fn begin_removal(&mut self, node: usize, key: &str) {
        let now = self.now;
        let generation = self.generation_on(node, key);
        let t = self.keys.get_mut(key).expect("tracked");
        t.removal_ok = true;
        t.removal_began.get_or_insert(now);
        t.removed.extend(generation);
    }

    /// The child `key` of `node` is gone from its runtime (it exited or was stopped).
    pub(crate) fn remove_child(&mut self, node: usize, key: &str) -> Option<Child> {
        let child = self.nodes[node].children.remove(key)?;
        self.unplace(node, key);
        Some(child)
    }

    /// Every child of `node` is gone (it crashed or exited).
    pub(crate) fn clear_children(&mut self, node: usize) {
        for key in std::mem::take(&mut self.nodes[node].children).into_keys() {
            self.unplace(node, &key);
        }
    }

    fn unplace(&mut self, node: usize, key: &str) {
        let nodes = self.placed.get_mut(key).expect("placed");
        nodes.retain(|&i| i != node);
        if nodes.is_empty() {
            self.placed.remove(key);
        }
    }

    /// Whether the key's children were spawned more than once: a start that spawns its first
    /// child cannot meet another copy unless another node spawned one too (views disagreed).
    pub(crate) fn spawned_twice(&self, key: &str) -> bool {
        self.keys.get(key).is_none_or(|t| t.spawns > 1)
    }

    /// Whether a live node runs or holds a copy of `key`, or one is in flight to a live node.
    pub(crate) fn has_copy(&self, key: &str) -> bool {
        self.has_copy_besides(key, usize::MAX, None)
    }

    /// Whether the copy `b` of `key` can still become a running child: a hand-off copy, or a
    /// backup whose origin is down (it fails over) or still runs that lineage. A backup its live
    /// origin no longer needs (a late replication) is dropped, not failed over.
    pub(crate) fn live_copy(&self, key: &str, b: &throng_core::directory::Backup) -> bool {
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
    pub(crate) fn live_in_flight<'m>(&self, from: usize, msg: &'m DirMsg) -> Option<&'m str> {
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
    /// backups of its copy; with `taken` (the generation and version of the record `node` just
    /// took), not the hand-off copies of that record held for it either (the copy it took). A
    /// hand-off copy of another state held for it is another lineage (a child drained for a move
    /// while an older copy failed over on its new owner).
    pub(crate) fn has_copy_besides(
        &self,
        key: &str,
        node: usize,
        taken: Option<(Generation, Version)>,
    ) -> bool {
        let n = self.nodes.len();
        // The nodes that run a child of the key first: usually one of them owns it.
        let runs = self.placed.get(key).map_or(&[][..], Vec::as_slice);
        let owns = |i: usize| {
            i != node && self.nodes[i].alive && self.nodes[i].dir().owned().contains_key(key)
        };
        runs.iter().any(|&i| owns(i))
            || (0..n).any(|i| {
                i != node
                    && self.nodes[i].alive
                    && (self.nodes[i].dir().owned().contains_key(key)
                        || self.nodes[i].dir().backups().get(key).is_some_and(|list| {
                            // A backup of `node`'s own copy, or the copy handed to `node` that it
                            // took, is the same lineage.
                            list.iter().any(|b| {
                                (self.index(&b.from) != node
                                    || (b.handoff.is_some()
                                        && taken != Some((b.record.generation, b.record.version))))
                                    && self.live_copy(key, b)
                            })
                        })
                        || self.nodes[i].children.get(key).is_some_and(|c| c.merging))
            })
            || self.carrying.get(key).is_some_and(|links| {
                links.keys().any(|&(from, to)| {
                    from != node
                        && to != node
                        && self.nodes[to].alive
                        && self.links[from][to].iter().any(|p| {
                            self.live_in_flight(from, &p.msg) == Some(key)
                                && self.nodes[to].inc == p.to_inc
                                && self.nodes[from].inc == p.from_inc
                        })
                })
            })
    }

    /// `msg` entered the connection `from -> to`: if it carries a copy of a child, the
    /// connection is indexed under its key ([`Sim::carrying`]).
    pub(crate) fn carry(&mut self, from: usize, to: usize, msg: &DirMsg) {
        if let DirMsg::Replicate { record, .. } | DirMsg::Adopt { record, .. } = msg {
            let links = self.carrying.entry(record.key.clone()).or_default();
            *links.entry((from, to)).or_default() += 1;
        }
    }

    /// `msg` left the connection `from -> to` (delivered or lost).
    pub(crate) fn uncarry(&mut self, from: usize, to: usize, msg: &DirMsg) {
        if let DirMsg::Replicate { record, .. } | DirMsg::Adopt { record, .. } = msg {
            let Some(links) = self.carrying.get_mut(&record.key) else {
                return;
            };
            if let Some(c) = links.get_mut(&(from, to)) {
                *c -= 1;
                if *c == 0 {
                    links.remove(&(from, to));
                }
            }
            if links.is_empty() {
                self.carrying.remove(&record.key);
            }
        }
    }

    /// A message that carried a copy of a child was lost: if that was the last copy (its sender
    /// crashed since), the child is lost with it.
    pub(crate) fn message_lost(&mut self, msg: &DirMsg) {
        if let DirMsg::Replicate { record: r, .. } | DirMsg::Adopt { record: r, .. } = msg {
            if !self.has_copy(&r.key) {
                if let Some(t) = self.keys.get_mut(&r.key) {
                    t.sole_copy_lost = true;
                }
            }
        }
    }
}
