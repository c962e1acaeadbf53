//! Runs the directory simulator over a bounded number of seeds, so `cargo test --workspace`
//! covers the placement, directory and failover logic: every invariant holds on every seed.

use throng_sim::{run_seed, run_seeds, Invariant, SimConfig, Tally};

fn describe(tally: &Tally) -> String {
    Invariant::ALL
        .iter()
        .map(|&i| {
            format!(
                "{}: {}/{}",
                i.name(),
                tally.violations[i as usize],
                tally.checks[i as usize]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `seeds` seeds of 5 nodes for 2,000 steps (200 take about ten seconds in a debug build; the
/// release command runs thousands; see docs/benchmarks.md).
fn assert_no_violation(partitions: bool, seeds: u64) {
    let mut config = SimConfig::new(5, 2000);
    config.partitions = partitions;
    assert_config_holds(config, seeds);
}

/// `seeds` seeds of `config`: every invariant checked, none violated.
fn assert_config_holds(config: SimConfig, seeds: u64) {
    let partitions = config.partitions;
    let (tally, failing) = run_seeds(0, seeds, &config);
    for inv in Invariant::ALL {
        // Sides are checked only with gossip cuts, disks only with durability.
        let durable = matches!(
            inv,
            Invariant::DiskMirror | Invariant::Durable | Invariant::StaysRemoved
        );
        // The work of node losses is checked only on request.
        let optional = inv == Invariant::Resurrected
            || inv == Invariant::SideRuns
            || inv == Invariant::NodeLossWork
            || (durable && !config.durable);
        assert!(
            tally.checks[inv as usize] > 0 || optional,
            "{} never checked",
            inv.name()
        );
    }
    let first = failing.first().map(|r| (r.seed, r.failures.clone()));
    assert_eq!(
        tally.total_violations(),
        0,
        "partitions {partitions}: {}\nfirst failing: {first:#?}",
        describe(&tally)
    );
}

#[test]
fn crashes_restarts_and_delays_keep_the_invariants() {
    assert_no_violation(false, 120);
}

#[test]
fn partitions_and_false_suspicions_keep_the_invariants() {
    assert_no_violation(true, 120);
}

#[test]
fn quorum_with_partitions_and_gossip_cuts_keeps_the_invariants() {
    let mut config = SimConfig::new(5, 2000);
    config.partitions = true;
    config.quorum = true;
    config.gossip_cuts = true;
    assert_config_holds(config, 50);
}

#[test]
fn a_seed_replays_exactly() {
    let config = SimConfig::new(5, 400);
    let a = run_seed(7, &config);
    let b = run_seed(7, &config);
    assert_eq!(a.tally.checks, b.tally.checks);
    assert_eq!(a.tally.violations, b.tally.violations);
    assert_eq!(a.tally.events, b.tally.events);
    assert_eq!(a.failures, b.failures);
}

/// The simulator runs the driver the runtime runs: a bug planted in the driver (it forgets to
/// answer successful starts) is caught as unanswered requests.
#[test]
fn a_shell_bug_planted_in_the_driver_is_caught() {
    let mut config = SimConfig::new(5, 1000);
    config.planted = Some(throng_core::driver::PlantedBug::ForgetStartReply);
    let (tally, failing) = run_seeds(0, 5, &config);
    assert!(
        tally.violations[Invariant::Replies as usize] > 0,
        "the forgotten replies went unnoticed: {}",
        describe(&tally)
    );
    assert_eq!(
        failing.len(),
        5,
        "every seed starts children, so every seed fails"
    );
}

/// The shell's faults (slow spawns, replies lost on their way to the client, connection resets
/// without a membership change) keep every invariant, and each of them happens.
#[test]
fn shell_faults_keep_the_invariants() {
    let mut config = SimConfig::new(5, 2000);
    config.shell_faults = true;
    let (tally, failing) = run_seeds(0, 30, &config);
    for fault in [
        "fault: slow spawn",
        "fault: reply lost",
        "fault: connection reset",
    ] {
        assert!(
            tally.events.get(fault).copied().unwrap_or(0) > 0,
            "{fault} never happened"
        );
    }
    let first = failing.first().map(|r| (r.seed, r.failures.clone()));
    assert_eq!(
        tally.total_violations(),
        0,
        "{}\nfirst failing: {first:#?}",
        describe(&tally)
    );
}

/// The invariants that durable recovery breaks as `throng-core` stands (see
/// `durable_full_cluster_restarts_keep_every_invariant`).
/// Durable directories, full-cluster restarts and disk losses: the disks are written, read back
/// and checked, and every invariant holds.
#[test]
fn durable_disks_and_full_cluster_restarts_are_checked() {
    let mut config = SimConfig::new(5, 2000);
    config.durable = true;
    let (tally, _) = run_seeds(0, 40, &config);
    for event in [
        "fault: full-cluster restart",
        "durable: write",
        "durable: recovery",
    ] {
        assert!(
            tally.events.get(event).copied().unwrap_or(0) > 0,
            "{event} never happened"
        );
    }
    for inv in [
        Invariant::DiskMirror,
        Invariant::Durable,
        Invariant::StaysRemoved,
    ] {
        assert!(
            tally.checks[inv as usize] > 0,
            "{} never checked",
            inv.name()
        );
    }
    assert_eq!(tally.total_violations(), 0, "{}", describe(&tally));
}

/// Every invariant holds with durable directories and full-cluster restarts: what a run reads
/// from its disk at start is part of every entry it writes until it takes it back
/// (`Directory::preload`), recovered tombstones stop running copies and reach the peers, and
/// every distinct record of a child comes back (merged when copies meet). (At 10,000 seeds a few
/// "gone stays gone" violations remain: see the issue notes.)
#[test]
fn durable_full_cluster_restarts_keep_every_invariant_without_partitions() {
    let mut config = SimConfig::new(5, 2000);
    config.durable = true;
    config.partitions = false;
    assert_config_holds(config, 40);
}

/// Seeds that once failed, each in the configuration it failed in (replayed exactly): a fix that
/// regresses shows here even if the bounded seed ranges above miss it.
#[test]
fn seeds_that_once_failed_keep_the_invariants() {
    let config = |partitions: bool, quorum: bool, shell_faults: bool, durable: bool| {
        let mut c = SimConfig::new(5, 2000);
        c.partitions = partitions;
        c.quorum = quorum;
        c.gossip_cuts = quorum;
        c.shell_faults = shell_faults;
        c.durable = durable;
        c
    };
    let cases = [
        // Two copies that each took an update from the same state met with equal records and
        // the identical-copy rule kept one (records did not name their writer).
        (436, config(false, false, true, true)),
        // A late acknowledgement from a backup chosen again while the drop of its first copy
        // was in flight counted as holding the new copy.
        (423, config(true, false, true, false)),
        // A stranger's orphaned copies were visited again at every view change without quorum
        // (the node-loss work bound).
        (69, config(true, true, false, false)),
        (903, config(true, true, false, false)),
    ];
    for (seed, c) in cases {
        let report = run_seed(seed, &c);
        assert!(
            report.failures.is_empty(),
            "seed {seed}: {:#?}",
            report.failures
        );
    }
}
