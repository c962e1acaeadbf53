//! The parameters of a run ([`SimConfig`]), and how they configure each node's directory and
//! driver.

use throng_core::directory::{DirConfig, Directory};
use throng_core::driver::Driver;
pub use throng_core::driver::PlantedBug;
use throng_core::NodeId;

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
    ///
    /// [`Invariant::SideRuns`]: crate::Invariant::SideRuns
    pub gossip_cuts: bool,
    /// Inject faults of the runtime around the driver (see the crate docs): slow spawns, replies
    /// lost on their way back to a remote client (which times out and retries), and connection
    /// resets between two live nodes without any membership change.
    pub shell_faults: bool,
    /// Configure every directory durable ([`DirConfig::durable`]) and give every node a
    /// simulated disk that survives its crashes, written by an asynchronous writer and read back
    /// after a restart; inject full-cluster restarts and disk losses (see the crate docs).
    pub durable: bool,
    /// Children started before the first step (the clients start them and the run waits until
    /// every start was answered and replicated); the operations then add more.
    pub children: usize,
    /// Check [`Invariant::NodeLossWork`] (see the crate docs): a node loss costs the surviving
    /// directories work proportional to what the lost node held. The work is measured and
    /// reported ([`Tally::losses`]) either way.
    ///
    /// [`Invariant::NodeLossWork`]: crate::Invariant::NodeLossWork
    /// [`Tally::losses`]: crate::Tally::losses
    pub work_bound: bool,
    /// Print a trace of the steps to stderr.
    pub trace: bool,
    /// A shell bug planted in every node's driver, to show the simulator catches it (tests
    /// only).
    #[doc(hidden)]
    pub planted: Option<PlantedBug>,
}

impl SimConfig {
    /// A node's driver over `dir`, with the planted bug if there is one.
    pub(crate) fn driver(&self, dir: Directory) -> Driver<u64> {
        let mut driver = Driver::new(dir);
        if let Some(bug) = self.planted {
            driver.plant(bug);
        }
        driver
    }

    /// `nodes` nodes for `steps` steps, converging every 500 steps, at most `(nodes - 1) / 2`
    /// nodes down at once, no children up front, the work bound checked, no trace.
    pub fn new(nodes: usize, steps: u64) -> Self {
        SimConfig {
            nodes: nodes.max(1),
            steps,
            converge_every: 500,
            max_down: (nodes.max(1) - 1) / 2,
            partitions: true,
            quorum: false,
            gossip_cuts: false,
            shell_faults: false,
            durable: false,
            children: 0,
            work_bound: true,
            trace: false,
            planted: None,
        }
    }
}

pub(crate) fn dir_config(
    id: &NodeId,
    incarnation: u64,
    quorum: Option<usize>,
    durable: bool,
) -> DirConfig {
    let mut config = DirConfig::new(id.clone());
    config.incarnation = incarnation;
    config.quorum = quorum;
    config.durable = durable;
    config
}
