//! Scenarios of copies that must not come back, nor run from an older state: tombstones kept where
//! records are (the backup of the view a removal ends in, the nodes that stay when one leaves),
//! children merged into a removed one, and the order orphan copies of one key are failed over in.

use super::*;

#[test]
fn a_removal_whose_backup_died_leaves_its_tombstone_on_the_new_backup() {
    let nodes = ["a", "b", "c"];
    let key = key_placed(&nodes, "a", "b");
    let mut net = Net::running(&nodes, &key);
    let record = net.dir("a").owned()[&key].record.clone();
    // The backup dies as the child is terminated: the removal ends without it...
    net.crash("b");
    net.call("a", |d| d.terminate(2, &key));
    net.call("a", |d| d.set_view([&id("a"), &id("c")]));
    net.call("c", |d| d.set_view([&id("a"), &id("c")]));
    net.settle();
    assert!(net.replies().contains(&(2, Ok(()))));
    // ...and the new backup keeps the tombstone: when the owner is down too, a copy `b` kept
    // on its disk is refused where it is sent (`c` owns the key then).
    net.crash("a");
    net.call("c", |d| d.set_view([&id("c")]));
    net.queue.push_back((
        id("b"),
        id("c"),
        DirMsg::Adopt {
            record,
            hops: 0,
            tag: tag(78),
            holders: Vec::new(),
            moved: false,
        },
    ));
    net.settle();
    assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
}

#[test]
fn a_leaving_node_hands_its_tombstones_to_the_owners_and_backups_that_stay() {
    let nodes = ["a", "b", "c"];
    let key = key_placed(&nodes, "a", "b");
    let mut net = Net::running(&nodes, &key);
    net.call("a", |d| d.terminate(2, &key));
    net.settle();
    let generation = |net: &mut Net, n: &str| -> Vec<Generation> {
        let d = net.dir(n);
        d.tombstones
            .newest_first()
            .filter(|(k, _)| *k == key)
            .map(|(_, g)| *g)
            .collect()
    };
    assert!(!generation(&mut net, "a").is_empty());
    // `c` never held the child: it learns the removal only from `a` leaving.
    assert!(generation(&mut net, "c").is_empty());
    net.call("a", |d| d.set_members([&id("b"), &id("c")], [&id("a")]));
    net.call("b", |d| d.set_members([&id("b"), &id("c")], [&id("a")]));
    net.call("c", |d| d.set_members([&id("b"), &id("c")], [&id("a")]));
    net.call("a", |d| d.leave());
    net.settle();
    assert_eq!(generation(&mut net, "c"), generation(&mut net, "a"));
}

#[test]
fn a_removal_also_removes_the_children_merged_into_the_removed_one() {
    let nodes = ["a", "b"];
    let key = key_owned_by(&nodes, "a");
    let mut net = Net::running(&nodes, &key);
    // A copy of another child of the key (started elsewhere) reaches the owner and is merged
    // into the one running there.
    let mut other = Record::new(spec(&key), generation(99));
    other.snapshot = Some(b"other".to_vec());
    net.queue
        .push_back((id("b"), id("a"), adopt_msg(other.clone(), 0, 90)));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("a")]);
    assert_eq!(
        net.dir("a").owned()[&key].record.absorbed,
        vec![generation(99)]
    );
    // The key is removed; a stale copy of the merged child (one a node that was down kept on
    // its disk) comes back later: refused, on the owner and on the backup.
    net.call("a", |d| d.terminate(2, &key));
    net.settle();
    assert!(net.replies().contains(&(2, Ok(()))));
    for n in ["a", "b"] {
        assert!(
            net.dir(n).buried(&key, generation(99)),
            "{n} keeps the merged child's tombstone"
        );
    }
    for (to, n) in [("a", 91), ("b", 92)] {
        net.queue
            .push_back((id("b"), id(to), adopt_msg(other.clone(), 0, n)));
        net.settle();
        assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
    }
}

#[test]
fn a_failover_runs_the_newest_of_a_hand_off_copy_and_a_backup() {
    // `a` runs the key alone, then `b` joins and owns it: `a` hands it off and keeps its
    // hand-off copy until `b` confirms; `b` runs it and backs it up on `a`.
    let nodes = ["a", "b"];
    let key = key_placed(&nodes, "b", "a");
    let mut net = Net::new(&["a"], 8);
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.running.insert((id("a"), key.clone()), b"old".to_vec());
    let mut b = Directory::new(DirConfig::new(id("b")));
    let actions = b.set_view([&id("a"), &id("b")]);
    net.dirs.insert(id("b"), b);
    net.apply(&id("b"), actions);
    net.call("a", |d| d.set_view([&id("a"), &id("b")]));
    // The confirmation of the hand-off is lost: `a` keeps its copy.
    let deliver = |net: &mut Net| {
        while let Some((from, to, msg)) = net.queue.pop_front() {
            if matches!(msg, DirMsg::Drop { tag: Some(_), .. }) {
                continue;
            }
            let actions = net.dirs.get_mut(&to).expect("node").receive(&from, msg);
            net.apply(&to, actions);
        }
    };
    deliver(&mut net);
    assert_eq!(net.runs(&key), vec![id("b")]);
    // `b` changes the state; its backup on `a` holds it.
    net.running.insert((id("b"), key.clone()), b"new".to_vec());
    net.call("b", |d| d.snapshot(&key, b"new".to_vec()));
    deliver(&mut net);
    assert_eq!(
        net.dir("a").backups()[&key].len(),
        2,
        "a hand-off copy and a backup"
    );
    // `b` crashes: `a` runs the newest state, not its older hand-off copy.
    net.crash("b");
    net.call("a", |d| d.set_view([&id("a")]));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("a")]);
    let state = &net.running[&(id("a"), key.clone())];
    assert!(
        state.starts_with(b"new"),
        "runs from {:?}",
        String::from_utf8_lossy(state)
    );
}
