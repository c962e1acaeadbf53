//! What a run reports: the invariants checked ([`Invariant`]), the counters ([`Tally`]) and the
//! outcome of one seed ([`SeedReport`]).

use std::collections::BTreeMap;

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
    ///
    /// [`Directory::check`]: throng_core::directory::Directory::check
    Directory,
    /// With [`SimConfig::durable`]: whenever a node's writer has written everything its
    /// directory touched, its disk holds exactly the directory's durable entries (every key the
    /// directory's holdings changed for was touched). Keys a previous run left on the disk count
    /// once this run writes them.
    ///
    /// [`SimConfig::durable`]: crate::SimConfig::durable
    DiskMirror,
    /// With [`SimConfig::durable`], after a full-cluster restart converges: every child whose
    /// start was acknowledged (and no removal begun) and whose record a disk held runs again,
    /// from at least the newest state the disks held; and that is the newest state ever written
    /// to a disk, unless a write of it was lost with its node (pending at a crash) or a disk was.
    ///
    /// [`SimConfig::durable`]: crate::SimConfig::durable
    Durable,
    /// With [`SimConfig::durable`], after every convergence: a child whose removal was
    /// acknowledged never runs again, whatever restarts happened (the tombstones are durable),
    /// unless a write of its key was lost with its node or a disk (or views were split).
    ///
    /// [`SimConfig::durable`]: crate::SimConfig::durable
    StaysRemoved,
    /// With [`SimConfig::work_bound`]: the entries the surviving directories examined in the view
    /// changes that dropped a crashed node ([`Directory::work`]) are at most
    /// [`WORK_PER_HELD`] per entry the lost node held (its children and its copies) plus
    /// [`WORK_PER_OBSERVER`] per view change: no directory rescans everything it holds.
    ///
    /// [`SimConfig::work_bound`]: crate::SimConfig::work_bound
    /// [`Directory::work`]: throng_core::directory::Directory::work
    NodeLossWork,
}

/// [`Invariant::NodeLossWork`]: entries the survivors may examine per entry the lost node held
/// (and per entry of the survivors that referred to it).
pub const WORK_PER_HELD: u64 = 8;

/// [`Invariant::NodeLossWork`]: entries a survivor may examine per view change regardless of what
/// the lost node held.
pub const WORK_PER_OBSERVER: u64 = 64;

/// What one node loss (a crash, seen by every survivor) cost the survivors' directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossWork {
    /// The node that crashed.
    pub node: usize,
    /// Live nodes when it crashed.
    pub nodes: usize,
    /// The entries it held: the children it ran and the copies it held for other nodes.
    pub held: u64,
    /// The survivors' entries that referred to it when their views dropped it: copies held from
    /// it (of this run, or of an earlier one whose restart a partition hid), children it backed
    /// up, children on their way to it — and to the other nodes the same view change dropped.
    /// Its loss concerns these too. (A view change of a node that is leaving is its leave's
    /// work, not counted, like one that lost or regained the quorum or let a node in.)
    pub related: u64,
    /// The entries the survivors' directories held, all told, when it crashed.
    pub survivors_held: u64,
    /// The view changes that dropped it (one per survivor that noticed).
    pub view_changes: u64,
    /// The entries those view changes examined ([`Directory::work`]).
    ///
    /// [`Directory::work`]: throng_core::directory::Directory::work
    pub examined: u64,
    /// View changes that dropped it and also lost or regained the survivor's quorum, or brought
    /// other nodes into its view: not counted in `view_changes` and `examined` (losing the
    /// quorum stops every child, regaining it or a node joining reconciles with every peer or
    /// with the newcomer: work of what is held or of the join, by design).
    pub quorum_changes: u64,
}

impl LossWork {
    /// The bound of [`Invariant::NodeLossWork`] for this loss.
    pub fn bound(&self) -> u64 {
        WORK_PER_HELD * (self.held + self.related) + WORK_PER_OBSERVER * self.view_changes
    }
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 18] = [
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
        Invariant::DiskMirror,
        Invariant::Durable,
        Invariant::StaysRemoved,
        Invariant::NodeLossWork,
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
            Invariant::DiskMirror => "disk mirrors directory",
            Invariant::Durable => "durable children return",
            Invariant::StaysRemoved => "removed stays removed",
            Invariant::NodeLossWork => "node loss work bounded",
        }
    }
}

/// Counters of one seed or of many.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Checks performed, per invariant (indexed like [`Invariant::ALL`]).
    pub checks: [u64; Invariant::ALL.len()],
    /// Violations found, per invariant.
    pub violations: [u64; Invariant::ALL.len()],
    /// Checks skipped because the fault model allows the failure, by reason.
    pub excused: BTreeMap<&'static str, u64>,
    /// What happened: faults injected, messages, directory events, by kind.
    pub events: BTreeMap<&'static str, u64>,
    /// The work of each node loss measured (every crash whose survivors all noticed it before
    /// the next convergence).
    pub losses: Vec<LossWork>,
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
        self.losses.extend_from_slice(&other.losses);
    }

    /// Total violations.
    pub fn total_violations(&self) -> u64 {
        self.violations.iter().sum()
    }

    pub(crate) fn event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }

    pub(crate) fn excuse(&mut self, why: &'static str) {
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
