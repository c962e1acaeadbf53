//! The invariants [`Directory::check`] enforces: they hold in a settled net, and each broken
//! shape is found.

use super::*;

/// A directory of `a` in a view of `a` and `b`, running a child `key` (spawned, acknowledged by
/// its backup on `b` or backed up nowhere), for the invariant tests to break.
fn running_alone() -> (Directory, String) {
    let net = Net::running(&["a", "b"], "k0");
    let owner = net.runs("k0")[0].clone();
    let d = net
        .dirs
        .into_iter()
        .find(|(n, _)| *n == owner)
        .map(|(_, d)| d);
    (d.expect("owner"), "k0".to_owned())
}

#[test]
fn the_invariants_hold_in_a_settled_net() {
    let mut net = Net::running(&["a", "b", "c"], "k0");
    net.call("a", |d| d.start(2, spec("k1")));
    net.settle();
    for d in net.dirs.values() {
        assert_eq!(d.check(), Ok(()));
    }
    assert_eq!(Directory::new(DirConfig::new(id("a"))).check(), Ok(()));
}

#[test]
fn check_finds_a_child_filed_under_another_key() {
    let (mut d, key) = running_alone();
    d.owned.get_mut(&key).expect("runs").record.key = "other".into();
    assert!(matches!(d.check(), Err(Broken::OwnedKey { key: k, .. }) if k == key));
}

#[test]
fn check_finds_copies_out_of_shape() {
    let (mut d, key) = running_alone();
    d.backups.insert("x".into(), Vec::new());
    assert_eq!(d.check(), Err(Broken::NoCopies { key: "x".into() }));

    let copy = Backup {
        from: id("b"),
        record: record("y"),
        handoff: None,
        epoch: Epoch::default(),
        orphan: false,
        awaiting: false,
    };
    d.backups.insert("x".into(), vec![copy.clone()]);
    assert!(matches!(d.check(), Err(Broken::CopyKey { .. })));

    d.backups.insert("y".into(), vec![copy.clone(), copy]);
    d.backups.remove("x");
    let want = Broken::DuplicateCopy {
        key: "y".into(),
        from: id("b"),
    };
    assert_eq!(d.check(), Err(want));
    d.backups.remove("y");
    assert_eq!(d.check(), Ok(()));

    d.handoffs.insert(
        key.clone(),
        HandOff {
            to: id("b"),
            tag: None,
            moved: false,
            olds: Vec::new(),
            source: None,
            taken: None,
            merged: false,
        },
    );
    assert!(matches!(d.check(), Err(Broken::HandOffTag { .. })));
}

#[test]
fn check_finds_a_move_out_of_step_with_its_phase() {
    let (mut d, key) = running_alone();
    d.moving.insert(key.clone());
    let want = Broken::MovingMismatch {
        key: key.clone(),
        listed: true,
        phase_moving: false,
    };
    assert_eq!(d.check(), Err(want));
    d.owned.get_mut(&key).expect("runs").phase = Phase::Moving;
    assert_eq!(d.check(), Ok(()));
    d.config.max_moves = 0;
    d.moving.insert("gone".into());
    assert!(matches!(d.check(), Err(Broken::MovingMismatch { .. })));
}

#[test]
fn check_finds_a_child_running_without_quorum() {
    let (mut d, key) = running_alone();
    d.quorum_lost = true;
    assert!(matches!(
        d.check(),
        Err(Broken::QuorumFlag { lost: true, .. })
    ));
    d.config.quorum = Some(5);
    let want = Broken::RunsWithoutQuorum {
        key,
        phase: Phase::Running,
    };
    assert_eq!(d.check(), Err(want));
}

#[test]
fn check_finds_removals_that_wait_for_nothing_or_for_a_node_out_of_view() {
    let (mut d, key) = running_alone();
    let removal = Removal {
        waiting_on: Vec::new(),
        chasing: Vec::new(),
        chases: 0,
        generation: generation(1),
        absorbed: Vec::new(),
        reqs: Vec::new(),
        event: false,
        starts: Vec::new(),
    };
    d.removing.insert("x".into(), removal.clone());
    assert_eq!(d.check(), Err(Broken::RemovalIdle { key: "x".into() }));
    d.removing.insert(key.clone(), removal);
    d.removing.remove("x");
    assert_eq!(d.check(), Err(Broken::OwnedAndRemoving { key }));
    d.removing.clear();
    let stranger = Holder::backup(id("z"), &id("a"), Epoch::default());
    d.dropping.insert("x".into(), vec![stranger]);
    let want = Broken::WaitsOutsideView {
        key: "x".into(),
        node: id("z"),
    };
    assert_eq!(d.check(), Err(want));
    d.dropping.clear();
    d.notify.insert("x".into(), Vec::new());
    assert_eq!(d.check(), Err(Broken::NotifyStranded { key: "x".into() }));
}

#[test]
fn check_finds_a_view_out_of_shape() {
    let (mut d, _) = running_alone();
    d.departed.insert(id("b"));
    assert_eq!(d.check(), Err(Broken::DepartedInView { node: id("b") }));
    d.departed.clear();
    d.leaving.insert(id("z"));
    assert_eq!(d.check(), Err(Broken::View { node: id("z") }));
}

#[test]
fn check_finds_a_memory_over_its_bound() {
    let (mut d, _) = running_alone();
    d.tombstones = CappedSet::new(MAX_TOMBSTONES + 1);
    for g in 1..=MAX_TOMBSTONES as u64 + 1 {
        d.tombstones.insert(("k".to_owned(), generation(g)));
    }
    let want = Broken::Memory {
        what: "tombstones",
        len: MAX_TOMBSTONES + 1,
        cap: MAX_TOMBSTONES,
    };
    assert_eq!(d.check(), Err(want));
}
