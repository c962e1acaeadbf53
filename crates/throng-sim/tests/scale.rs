//! The simulator beyond a handful of nodes: its own checks hold at 20 nodes (node names sort
//! `n10` before `n2`), a cluster of 100 nodes with thousands of children started up front keeps
//! every invariant, and the work of each node loss is measured.

use throng_sim::{run_seeds, Invariant, SimConfig, Tally};

fn describe(tally: &Tally) -> String {
    Invariant::ALL
        .iter()
        .filter(|&&i| tally.violations[i as usize] > 0)
        .map(|&i| format!("{}: {}", i.name(), tally.violations[i as usize]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `seeds` seeds of `config` and asserts that no invariant was violated.
fn assert_holds(config: &SimConfig, seeds: u64) -> Tally {
    let (tally, failing) = run_seeds(0, seeds, config);
    let first = failing.first().map(|r| (r.seed, r.failures.clone()));
    assert_eq!(
        tally.total_violations(),
        0,
        "{}\nfirst failing: {first:#?}",
        describe(&tally)
    );
    tally
}

/// More than ten nodes: the ring lists its nodes by name, the simulator by index; the views are
/// still checked against the live set (and none of the other invariants breaks).
#[test]
fn twenty_nodes_keep_the_invariants() {
    let config = SimConfig::new(20, 2000);
    let tally = assert_holds(&config, 3);
    assert!(tally.checks[Invariant::Quiescence as usize] > 0);
}

/// 100 nodes, 5,000 children started up front, 600 steps of crashes, restarts, leaves and client
/// operations, without partitions (each splits the cluster in two and fails half the children
/// over: a test of its own, not of scale).
fn hundred_nodes() -> SimConfig {
    let mut config = SimConfig::new(100, 600);
    config.children = 5000;
    config.partitions = false;
    config.converge_every = 300;
    config
}

/// [`hundred_nodes`], two seeds: every invariant holds, and the node losses are measured
/// ([`throng_sim::LossWork`]).
#[test]
fn a_hundred_nodes_with_thousands_of_children_keep_the_invariants() {
    let config = hundred_nodes();
    let tally = assert_holds(&config, 2);
    assert!(tally.events.get("reply: start ok").copied().unwrap_or(0) >= 2 * 5000);
    assert!(!tally.losses.is_empty(), "no node loss in two seeds");
    for loss in &tally.losses {
        assert!(loss.view_changes > 0 && loss.held > 0, "{loss:?}");
    }
}

/// A node loss costs the survivors work proportional to what the lost node held
/// ([`Invariant::NodeLossWork`]): after a view that only takes nodes off the ring, a directory
/// looks again only at the children the lost node backed up, the copies it made and the children
/// lodged away from their owner (its indexes by backup and by origin), not at everything it
/// holds. Before those indexes, a loss cost the survivors about twice everything they held.
#[test]
fn a_node_loss_costs_work_proportional_to_the_lost_nodes_entries() {
    let mut config = hundred_nodes();
    config.work_bound = true;
    let tally = assert_holds(&config, 2);
    assert!(tally.checks[Invariant::NodeLossWork as usize] > 0);
}
