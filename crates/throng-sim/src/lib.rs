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
//! - **Shell faults** ([`SimConfig::shell_faults`]): faults of the runtime around the driver.
//!   *Slow spawns*: the host reports a spawn hundreds of milliseconds late. *Lost replies*: the
//!   answer to a remote client's start or terminate is lost on its way back; the client times
//!   out and sends the request again (a start must then be answered `AlreadyStarted` or `Ok`,
//!   never run twice; [`Invariant::Replies`] is still checked on the driver, which answered).
//!   *Connection resets*: the connection between two live runs drops and comes back later
//!   without any membership change; what is in flight on it both ways is lost, the clients'
//!   calls through it fail (they send again), both drivers are told `disconnected`, then
//!   `reconnected` once it is back, as the runtime's link does after every new connection to
//!   the same run.
//!
//! - **Durability** ([`SimConfig::durable`]): every directory is durable and every node has a
//!   disk that survives its crashes. The driver reports the keys it touched; the node's writer
//!   writes each one's entry (`Directory::durable`, as the directory holds it then) after a
//!   short coalescing delay, and a crash loses what it had not written yet. A restarted node
//!   reads its disk at its start and takes it back (`Driver::recover`) once its view has not
//!   changed for a second, as the runtime does; meanwhile its directory runs and its writer
//!   writes. Faults: *full-cluster restarts* (every node crashes at the same tick, then all start
//!   again within 150 ms; other node faults wait until the outcome is checked) and *disk
//!   losses* (a node restarts with an empty disk). Checked: [`Invariant::DiskMirror`] after
//!   every write, [`Invariant::Durable`] after a full-cluster restart converged,
//!   [`Invariant::StaysRemoved`] after every convergence.
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
//! - **Scale.** [`SimConfig::children`] children are started before the first step (the run
//!   waits until every start is answered and replicated). Up to 20,000 keys every directory is
//!   checked after every step; above, one directory per step in turn and all of them at each
//!   convergence, and placement is computed once per key when every converged ring is the same
//!   (the owner is a function of the ring), so a step costs the same whatever the cluster's size.
//! - **Work per node loss.** Every crash is measured: the entries it held (children and copies)
//!   and the entries the survivors' directories examined in the view changes that dropped it
//!   ([`Directory::work`]), reported in [`Tally::losses`]; with [`SimConfig::work_bound`] (on
//!   by default), [`Invariant::NodeLossWork`] checks that they are proportional to what the lost
//!   node held. A view change that also lost or regained the observer's quorum, or let another
//!   node in, is not counted (losing the quorum stops every child, regaining it reconciles with
//!   every peer, a join reconciles with the newcomer: by design).
//!
//! Randomness comes only from the seed, and every map iterated is ordered, so a seed replays
//! exactly; [`SimConfig::trace`] prints the steps of a replay to stderr.
//!
//! [`Host`]: throng_core::driver::Host
//! [`DirMsg`]: throng_core::directory::DirMsg
//! [`Directory::leave`]: throng_core::directory::Directory::leave
//! [`Directory::handed_off`]: throng_core::directory::Directory::handed_off
//! [`Directory::reconnected`]: throng_core::directory::Directory::reconnected
//! [`Directory::work`]: throng_core::directory::Directory::work

mod checks;
mod config;
mod disk;
mod faults;
mod host;
mod network;
mod ops;
mod report;
mod runtime;
mod sim;
mod world;

pub use config::{PlantedBug, SimConfig};
pub use report::{Invariant, LossWork, SeedReport, Tally, WORK_PER_HELD, WORK_PER_OBSERVER};

use world::Sim;

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
