//! Lineages and writers: which copy wrote a record's version (two copies that each took an update
//! from the same state are merged, not taken for one), and acknowledgements of an earlier copy of
//! a lineage that must not count for a later one.

use super::*;

/// Two copies of a child that ran from the same state and each took one update reach the same
/// version, and here the same bytes: they are two states to merge (one update each), not one
/// state kept twice — the writer tells them apart (`throng-sim --seed 436 --partitions 0
/// --shell-faults 1 --durable 1` lost an update when it did not). A copy of the very state that
/// runs (same writer) is still no conflict.
#[test]
fn copies_of_one_version_written_by_different_copies_are_merged() {
    let nodes = ["a", "b"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "a");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.call("a", |d| d.snapshot(&key, b"2".to_vec()));
    net.settle();
    let from = net.dir("a").owned()[&key].record.clone();
    // `a`'s copy takes an update (state 3)...
    net.call("a", |d| d.snapshot(&key, b"3".to_vec()));
    net.settle();
    let ours = net.dir("a").owned()[&key].record.clone();
    assert_eq!(ours.version, from.version.next());
    assert_eq!(
        ours.written_by,
        Some(Writer::of(&id("a"), net.dir("a").owned()[&key].epoch))
    );
    // ...and so did a copy failed over on `b` from state 2: same version, same bytes.
    let mut theirs = from.clone();
    theirs.snapshot = Some(b"3".to_vec());
    theirs.version = from.version.next();
    theirs.written_by = Some(Writer::of(&id("b"), Epoch(9, 1)));
    assert_eq!(
        (&theirs.snapshot, theirs.version, theirs.generation),
        (&ours.snapshot, ours.version, ours.generation)
    );
    let adopt = |record: Record, n| failover_msg(record, n, Vec::new());
    let conflict = |actions: &[Action]| {
        actions.iter().any(|a| matches!(a, Action::Merge { .. }))
            && actions
                .iter()
                .any(|a| matches!(a, Action::Event(ChildEvent::Conflict { .. })))
    };
    // The same state (its own writer) met again: nothing to merge.
    let actions = net.dir("a").receive(&id("b"), adopt(ours, 1));
    assert!(!conflict(&actions), "{actions:?}");
    net.apply(&id("a"), actions);
    net.settle();
    // The other copy's update: merged.
    let actions = net.dir("a").receive(&id("b"), adopt(theirs, 2));
    assert!(conflict(&actions), "{actions:?}");
}

#[test]
fn a_writer_is_a_stable_fingerprint_of_node_and_lineage() {
    // Stored in durable entries and sent on the wire: the same on every build and platform.
    let w = Writer::of(&id("n1"), Epoch(1_700_000_000_000, 3));
    assert_eq!(w, Writer::of(&id("n1"), Epoch(1_700_000_000_000, 3)));
    assert_ne!(w, Writer::of(&id("n2"), Epoch(1_700_000_000_000, 3)));
    assert_ne!(w, Writer::of(&id("n1"), Epoch(1_700_000_000_000, 4)));
    assert_ne!(w, Writer::of(&id("n1"), Epoch(1_700_000_000_001, 3)));
    let mut bytes = b"n1".to_vec();
    bytes.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    bytes.extend_from_slice(&3u64.to_le_bytes());
    assert_eq!(w.get(), xxhash_rust::xxh3::xxh3_64(&bytes));
}

/// The backup of a child moves away and back (b → d → b) while the drop of b's first copy is
/// on its way: an acknowledgement b sent for that first copy, arriving late, must not count as
/// b holding the new one — or the owner drops d's copy while the drop in flight deletes b's,
/// and a crash of the owner before its new replication reaches b loses the state
/// (`throng-sim --seed 423 --shell-faults 1`: "a backup acknowledged 3", the child back at 1).
#[test]
fn a_late_acknowledgement_from_a_backup_that_was_dropped_and_chosen_again_does_not_count() {
    let three = ["a", "b", "c"];
    let four = ["a", "b", "c", "d"];
    let ring = |nodes: &[&str]| {
        Ring::from_nodes(RingConfig::default(), nodes.iter().map(|n| id(n))).unwrap()
    };
    let (r3, r4) = (ring(&three), ring(&four));
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            r3.successors(k.as_bytes(), 2).eq([&id("a"), &id("b")])
                && r4.successors(k.as_bytes(), 2).eq([&id("a"), &id("d")])
        })
        .unwrap();
    let mut net = Net::unviewed(&four, |config| config.max_moves = 8);
    for n in four {
        net.call(n, |d| {
            d.set_view(three.iter().map(|n| id(n)).collect::<Vec<_>>().iter())
        });
    }
    net.settle();
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.call("a", |d| d.snapshot(&key, b"1".to_vec()));
    net.settle();
    let version = net.dir("a").owned()[&key].record.version;
    let first = net.dir("a").owned()[&key].epoch;
    // The acknowledgement b sent for its first copy, held up on its way back.
    let late_ack = DirMsg::Ack {
        key: key.clone(),
        version,
        epoch: first,
    };
    // d joins: the backup moves to d, which acknowledges; b's copy is to be dropped.
    let all: Vec<NodeId> = four.iter().map(|n| id(n)).collect();
    net.call("a", |d| d.set_view(all.iter()));
    let mut held_drop = None;
    while let Some((from, to, msg)) = net.queue.pop_front() {
        if to == id("b") && matches!(&msg, DirMsg::Drop { key: k, .. } if *k == key) {
            held_drop = Some((from, to, msg));
            continue;
        }
        let actions = net.dirs.get_mut(&to).expect("node").receive(&from, msg);
        net.apply(&to, actions);
    }
    let held_drop = held_drop.expect("b's copy dropped once d acknowledged");
    // d leaves again: b is the backup once more (its drop still in flight).
    let three_ids: Vec<NodeId> = three.iter().map(|n| id(n)).collect();
    let actions = net.dir("a").set_view(three_ids.iter());
    assert_eq!(net.dir("a").owned()[&key].backup, Some(id("b")));
    net.log.clear();
    for a in actions {
        if let Action::Send { to, msg } = a {
            net.queue.push_back((id("a"), to, msg));
        }
    }
    // The late acknowledgement arrives first: it must not settle the new backup.
    let actions = net.dir("a").receive(&id("b"), late_ack);
    assert!(
        !actions.iter().any(|a| matches!(a,
            Action::Send { to, msg: DirMsg::Drop { key: k, .. } } if *to == id("d") && *k == key)),
        "d's copy dropped on a stale acknowledgement: {actions:?}"
    );
    net.apply(&id("a"), actions);
    // Then the drop, the new replication, and the rest: b holds the child's state.
    net.queue.push_front(held_drop);
    net.settle();
    let copies = &net.dir("b").backups()[&key];
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].record.snapshot.as_deref(), Some(&b"1"[..]));
    assert!(net.dir("a").unreplicated() == 0);
}

/// A record of generation 5 written by a copy on `node` at `version`, of which a backup
/// acknowledged `acked`.
fn held(node: &str, version: u64, acked: u64) -> Record {
    let mut r = record("k");
    r.generation = generation(5);
    r.write(Version::new(version), Writer::of(&id(node), Epoch(1, 1)));
    r.acknowledged(Version::new(acked));
    r
}

#[test]
fn a_record_with_more_of_its_history_acknowledged_is_the_later_state() {
    // The owner wrote up to 12, its backup acknowledged 8; failed over from the backup, a copy
    // took calls up to 10, all acknowledged: it is later, though its version is lower.
    let owner = held("a", 12, 8);
    let failed_over = held("b", 10, 10);
    assert!(failed_over.is_later_than(&owner) && !owner.is_later_than(&failed_over));
    // A cut-off minority failed over from a backup of version 234 and wrote 235 (its final
    // snapshot as it stopped for the quorum), never acknowledged; the majority's copy went on
    // to 1,724, acknowledged up to 1,723: the majority's is later, though the minority's copy
    // continued from it.
    let minority = held("c", 235, 234);
    let majority = held("a", 1724, 1723);
    assert!(majority.is_later_than(&minority) && !minority.is_later_than(&majority));
    // As much acknowledged: the higher version; a state is not later than itself.
    assert!(held("a", 11, 8).is_later_than(&held("b", 9, 8)));
    assert!(!owner.is_later_than(&owner.clone()));
    // One copy's history: its later version, whatever was acknowledged of it (a hand-off's
    // final snapshot beside the backup's copy of the state before).
    let backup_copy = held("a", 2, 2);
    let handed_off = held("a", 3, 1);
    assert!(handed_off.is_later_than(&backup_copy) && !backup_copy.is_later_than(&handed_off));
    // Acknowledged is never past the version written.
    assert_eq!(held("a", 3, 7).acked, Version::new(3));
    // Another generation is never later (another child of the key).
    let mut newer_child = held("b", 20, 20);
    newer_child.generation = generation(6);
    assert!(!newer_child.is_later_than(&owner) && !owner.is_later_than(&newer_child));
}

/// The owner `a` took two updates its backup `b` never acknowledged (a partition, or a crash
/// before they were replicated), then went away; `b` failed over from what it held and took an
/// update. `a`'s copy coming back (its disk after a restart, or the copy it stopped when it
/// lost its quorum) has the higher version, but only the failed-over copy carries every
/// acknowledged state: the default conflict rule keeps it.
#[test]
fn a_copy_failed_over_from_the_backup_beats_the_old_owners_unacknowledged_versions() {
    let nodes = ["a", "b", "c"];
    let mut net = Net::new(&nodes, 8);
    let key = key_placed(&nodes, "a", "b");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.call("a", |d| d.snapshot(&key, b"1".to_vec()));
    net.settle();
    // Two more updates on `a` whose replications are lost.
    net.call("a", |d| d.snapshot(&key, b"12".to_vec()));
    net.call("a", |d| d.snapshot(&key, b"123".to_vec()));
    net.queue.clear();
    let stale = net.dir("a").owned()[&key].record.clone();
    net.crash("a");
    let rest = [id("b"), id("c")];
    net.call("b", |d| d.set_view(rest.iter()));
    net.call("c", |d| d.set_view(rest.iter()));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("b")]);
    net.call("b", |d| d.snapshot(&key, b"1x".to_vec()));
    net.settle();
    let ours = net.dir("b").owned()[&key].record.clone();
    assert!(ours.version < stale.version, "{ours:?} {stale:?}");
    // `a` knew its backup held version 1; `b`'s copy started there and `c` acknowledged 2.
    assert_eq!((stale.acked.get(), ours.acked.get()), (1, 2));
    assert!(!net.dir("b").is_newer_copy(&key, &stale));
    // Met by a restarted `a`'s adoption, or a heal: `b`'s state is the one kept.
    net.call("b", |d| d.receive(&id("a"), adopt_msg(stale.clone(), 0, 1)));
    let merge = net
        .log
        .iter()
        .rev()
        .find_map(|(n, a)| match a {
            Action::Merge { key: k, theirs } if *n == id("b") && *k == key => Some(theirs.clone()),
            _ => None,
        })
        .expect("merged");
    assert_eq!(merge.snapshot, stale.snapshot);
    net.settle();
    let merged = net.dir("b").owned()[&key].record.clone();
    assert!(merged.is_later_than(&stale) && merged.is_later_than(&ours));
    // The backup's copy is acknowledged as stored.
    let copy = &net.dir("c").backups()[&key][0].record;
    assert_eq!((copy.version, copy.acked), (merged.version, merged.version));
}

/// `a` restarts and runs its own copy of a child that `b` failed over meanwhile; `a` replicates
/// to `b`, its backup. `b` keeps that copy but does not acknowledge it while its own copy runs —
/// or `a`'s `Sync` replies would acknowledge states that the merge of the two copies may drop —
/// nor while its copy is on its way to `a` (the `Sync` soak lost increments so: `b` handed its
/// copy to `a` and acknowledged `a`'s disk copy's new states before its copy arrived, and the
/// merge kept `a`'s): it acknowledges once `a` merged the copy handed to it (`Conflict`).
#[test]
fn a_replication_is_not_acknowledged_while_a_copy_of_the_child_runs_here() {
    let nodes = ["a", "b"];
    let key = key_placed(&nodes, "a", "b");
    let mut b = Directory::new(DirConfig::new(id("b")));
    b.set_view([&id("b")]);
    b.start(1, spec(&key));
    b.spawned(&key, Ok(()));
    // `a`'s copy: from the child's first state, none of its own acknowledged by a backup.
    let mut theirs = b.owned()[&key].record.clone();
    theirs.write(Version::new(7), Writer::of(&id("a"), Epoch(3, 1)));
    // `b`'s copy took a call, acknowledged (alone, it needs no backup).
    b.snapshot(&key, b"<b>".to_vec());
    assert!(b.owned()[&key].record.acked > theirs.acked);
    let replicate = |record: &Record| DirMsg::Replicate {
        record: record.clone(),
        epoch: Epoch(3, 1),
    };
    let is_ack = |a: &Action| matches!(a, Action::Send { to, msg: DirMsg::Ack { key: k, .. } } if *to == id("a") && *k == key);
    let actions = b.receive(&id("a"), replicate(&theirs));
    assert!(!actions.iter().any(is_ack), "{actions:?}");
    // `a` joins `b`'s view: `b` hands its copy to `a`; `a`'s replication is not acknowledged
    // while that copy is on its way, nor `a`'s next one (another state of `a`'s copy).
    let both = [id("a"), id("b")];
    let mut actions = b.set_view(both.iter());
    let stopping = actions
        .iter()
        .any(|a| matches!(a, Action::Stop { key: k, .. } if *k == key));
    assert!(stopping, "{actions:?}");
    actions.extend(b.exited(&key, ExitClass::Shutdown, None, Duration::ZERO));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Send { to, msg: DirMsg::Adopt { .. } } if *to == id("a"))),
        "{actions:?}"
    );
    assert!(!actions.iter().any(is_ack), "{actions:?}");
    theirs.write(Version::new(8), Writer::of(&id("a"), Epoch(3, 1)));
    let actions = b.receive(&id("a"), replicate(&theirs));
    assert!(!actions.iter().any(is_ack), "{actions:?}");
    // `a` merged `b`'s copy into its own: its replications hold `b`'s state from now on.
    let actions = b.receive(&id("a"), DirMsg::Conflict { key: key.clone() });
    assert!(actions.iter().any(is_ack), "{actions:?}");
}

/// A node that takes a copy handed to it and backs it up on the node it came from: its
/// replication of the copy (its state, or later states of the copy's writer) is acknowledged at
/// once, or the two would wait for each other (the hand-off is confirmed once the backup
/// acknowledged).
#[test]
fn the_replication_of_a_copy_handed_off_is_acknowledged_by_its_sender() {
    let nodes = ["a", "b"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "b");
    // `a` runs it alone, then sees `b`, the owner, which backs it up on `a`.
    net.call("a", |d| d.set_view([&id("a")]));
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.running.insert((id("a"), key.clone()), b"<a>".to_vec());
    net.call("a", |d| d.snapshot(&key, b"<a>".to_vec()));
    net.settle();
    let both = [id("a"), id("b")];
    net.call("b", |d| d.set_view(both.iter()));
    net.call("a", |d| d.set_view(both.iter()));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("b")]);
    assert_eq!(net.running[&(id("b"), key.clone())], b"<a>".to_vec());
    let o = &net.dir("b").owned()[&key];
    assert!(o.acked, "b's backup on a acknowledged");
    assert!(net.dir("a").owned().is_empty());
    assert!(
        net.dir("a").backups()[&key]
            .iter()
            .all(|c| c.from == id("b") && c.handoff.is_none()),
        "a holds b's backup only: {:?}",
        net.dir("a").backups()
    );
}

/// A copy adopted at a node that holds another copy of the child named among the copies to
/// drop, the two of different writers (two histories: a copy failed over meanwhile took calls
/// its owner's copy never saw, and the other way round): the newer by acknowledgement is passed
/// on, and the other follows it once its owner confirmed, to be merged there — choosing one
/// lost what only the other held (`throng-sim --seed 380 --durable 1 --quorum 1 --gossip-cuts
/// 1`, with a regained quorum's copy sent to its backup's node).
#[test]
fn an_adopted_copy_and_a_held_copy_of_two_histories_are_both_kept() {
    let nodes = ["a", "b"];
    let key = key_owned_by(&nodes, "a");
    let mut net = Net::running(&nodes, &key);
    net.running.insert((id("a"), key.clone()), b"<a>".to_vec());
    net.call("a", |d| d.snapshot(&key, b"<a>".to_vec()));
    net.settle();
    let epoch = net.dir("a").owned()[&key].epoch;
    let held = net.dir("b").backups()[&key][0].record.clone();
    assert_eq!(held.acked, held.version, "b acknowledged what it holds");
    // `c` (not in the view) hands `b` a copy of another history: a higher version, none of it
    // acknowledged, naming `b`'s backup among the copies to drop.
    let mut theirs = held.clone();
    theirs.snapshot = Some(b"<c>".to_vec());
    theirs.version = held.version.next().next();
    theirs.written_by = Some(Writer::of(&id("c"), Epoch(9, 1)));
    theirs.acked = Version::INITIAL;
    assert!(held.is_later_than(&theirs), "the held copy wins a choice");
    net.call("b", |d| {
        d.receive(
            &id("c"),
            failover_msg(theirs, 1, vec![Holder::backup(id("b"), &id("a"), epoch)]),
        )
    });
    net.settle();
    assert_eq!(net.runs(&key), vec![id("a")], "one copy runs, on its owner");
    assert_eq!(
        net.running[&(id("a"), key.clone())],
        b"<a><c>".to_vec(),
        "both histories are in the state that runs"
    );
    assert!(net.dir("b").owned().is_empty());
    assert!(
        net.dir("b").backups().get(&key).is_none_or(|list| list
            .iter()
            .all(|c| c.from == id("a") && c.handoff.is_none())),
        "b keeps only a's backup: {:?}",
        net.dir("b").backups()
    );
}

/// A copy that meets an identical one (same state: a restarted node's record of the state this
/// copy runs from, or the copy handed to it back) takes its acknowledged mark: a backup held that
/// state, so this copy's later replications hold as much acknowledged history as the copy that
/// met it (its sender, holding its acknowledgements back until then, sees they do).
#[test]
fn a_copy_that_meets_an_identical_one_takes_its_acknowledged_mark() {
    let nodes = ["a", "b"];
    let key = key_owned_by(&nodes, "a");
    let mut net = Net::running(&nodes, &key);
    // A new state, not acknowledged yet (its replication to `b` is still in flight).
    net.call("a", |d| d.snapshot(&key, b"<a>".to_vec()));
    let ours = net.dir("a").owned()[&key].record.clone();
    assert!(ours.acked < ours.version);
    let mut theirs = ours.clone();
    theirs.acknowledged(theirs.version);
    assert!(theirs.same_state(&ours));
    let actions = net
        .dir("a")
        .receive(&id("c"), failover_msg(theirs, 1, Vec::new()));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Merge { .. })),
        "nothing to merge: {actions:?}"
    );
    assert_eq!(net.dir("a").owned()[&key].record.acked, ours.version);
}
