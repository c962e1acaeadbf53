//! Quorum mode: a side without a majority stops its children and keeps their copies; the
//! majority fails them over; a heal reconciles without losing or doubling a child.

use super::*;

/// Three nodes with quorum 3 running `count` children, each with a state of its own
/// (snapshot replicated to its backup).
fn quorum_net(count: usize) -> (Net, Vec<String>) {
    let nodes = ["a", "b", "c"];
    let mut net = Net::with_quorum(&nodes, 8, Some(3));
    let keys: Vec<String> = (0..count).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let owner = net.dir("a").owner(key).unwrap();
        net.call(owner.as_str(), |d| d.start(i as u64, spec(key)));
        net.settle();
        let state = format!("<{key}>").into_bytes();
        net.running
            .insert((owner.clone(), key.clone()), state.clone());
        net.call(owner.as_str(), |d| d.snapshot(key, state));
        net.settle();
    }
    (net, keys)
}

/// The keys of `keys` that run on `node` alone.
fn running_only_on(net: &Net, keys: &[String], node: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| net.runs(k) == vec![id(node)])
        .cloned()
        .collect()
}

#[test]
fn a_quorum_partition_that_heals_loses_no_child() {
    let (mut net, keys) = quorum_net(30);
    let all = [id("a"), id("b"), id("c")];
    let on_a = keys.iter().filter(|k| net.runs(k) == vec![id("a")]).count();
    assert!(on_a > 0);
    // `a`'s gossip is cut: it sees only itself (no quorum), the others see each other;
    // directory messages still flow between all three.
    net.call("a", |d| d.set_view([&id("a")]));
    assert!(!net.dir("a").has_quorum());
    let removals = net.log.iter().any(|(n, a)| {
        *n == id("a")
            && matches!(
                a,
                Action::Send {
                    msg: DirMsg::Drop {
                        remove: Some(_),
                        ..
                    },
                    ..
                }
            )
    });
    net.call("b", |d| d.set_view([&id("b"), &id("c")]));
    net.call("c", |d| d.set_view([&id("b"), &id("c")]));
    net.settle();
    assert!(net.dir("a").owned().is_empty());
    for key in &keys {
        let runs = net.runs(key);
        assert!(
            runs.len() == 1 && runs[0] != id("a"),
            "{key} runs on {runs:?}"
        );
    }
    // The heal.
    for n in ["a", "b", "c"] {
        net.call(n, |d| d.set_view(all.iter()));
    }
    net.settle();
    assert_each_runs_once_with_its_state(&net, &keys);
    let stopped = net
        .log
        .iter()
        .any(|(_, a)| matches!(a, Action::Event(ChildEvent::Stopped { .. })));
    assert!(!stopped, "no child was removed");
    assert!(!removals, "a stop for the quorum is not a removal");
}

/// A node cut off from the others stops its children for the lost quorum; the others fail them
/// over and run them. When the node sees the others again, its stopped copies do not run beside
/// the copies failed over (each would acknowledge `Sync` calls until they met, and the merge
/// keeps one side's: the plain `Sync` soak's partition losses): each goes first to the node that
/// held its backup, to meet the copy running there (merged into it) or to come back to run.
/// That node may hold another copy of it from another history; the two are merged, not chosen
/// between (`lineage.rs::an_adopted_copy_and_a_held_copy_of_two_histories_are_both_kept`).
#[test]
fn a_node_that_regains_its_quorum_runs_no_second_copy_of_a_child_failed_over_meanwhile() {
    let (mut net, keys) = quorum_net(30);
    let all = [id("a"), id("b"), id("c")];
    let on_a = running_only_on(&net, &keys, "a");
    assert!(!on_a.is_empty());
    net.call("a", |d| d.set_view([&id("a")]));
    net.call("b", |d| d.set_view([&id("b"), &id("c")]));
    net.call("c", |d| d.set_view([&id("b"), &id("c")]));
    net.settle();
    for key in &on_a {
        let runs = net.runs(key);
        assert!(
            runs.len() == 1 && runs[0] != id("a"),
            "{key} runs on {runs:?}"
        );
    }
    // `a` sees the others again first: nothing of `on_a` runs twice, at any point.
    net.call("a", |d| d.set_view(all.iter()));
    for key in &on_a {
        assert_eq!(net.runs(key).len(), 1, "{key} runs on {:?}", net.runs(key));
    }
    while let Some((from, to, msg)) = net.queue.pop_front() {
        let actions = net.dir(to.as_str()).receive(&from, msg);
        net.apply(&to, actions);
        for key in &on_a {
            assert!(
                net.runs(key).len() <= 1,
                "{key} runs on {:?}",
                net.runs(key)
            );
        }
    }
    for n in ["b", "c"] {
        net.call(n, |d| d.set_view(all.iter()));
    }
    net.settle();
    assert_each_runs_once_with_its_state(&net, &keys);
    for key in &on_a {
        assert_eq!(net.runs(key), vec![id("a")], "{key} back on its owner");
    }
}

#[test]
fn a_node_that_alone_loses_its_quorum_runs_its_children_again_when_it_returns() {
    let (mut net, keys) = quorum_net(30);
    let all = [id("a"), id("b"), id("c")];
    let on_a = running_only_on(&net, &keys, "a");
    assert!(!on_a.is_empty());
    // Only `a` loses the others from its view (one-way gossip loss): `b` and `c` still see
    // it, so they fail nothing over; its messages keep reaching them.
    net.call("a", |d| d.set_view([&id("a")]));
    net.settle();
    for key in &on_a {
        assert!(net.runs(key).is_empty(), "{key} stopped on a");
    }
    net.call("a", |d| d.set_view(all.iter()));
    net.settle();
    assert_each_runs_once_with_its_state(&net, &keys);
    for key in &on_a {
        assert_eq!(
            net.runs(key),
            vec![id("a")],
            "{key} runs on its owner again"
        );
        assert_eq!(
            net.running[&(id("a"), key.clone())],
            format!("<{key}>").into_bytes()
        );
    }
}

#[test]
fn a_crash_during_a_partition_that_leaves_no_majority_loses_no_child() {
    let (mut net, keys) = quorum_net(30);
    let on_a = running_only_on(&net, &keys, "a");
    assert!(!on_a.is_empty());
    // `b` and `c` are cut off from each other when `a` crashes: no side has a quorum, so
    // nobody fails `a`'s children over. The backups are their only copies.
    net.crash("a");
    net.call("b", |d| d.set_view([&id("b")]));
    net.call("c", |d| d.set_view([&id("c")]));
    net.settle();
    assert!(net.running.is_empty(), "nothing runs without a quorum");
    let healed = [id("b"), id("c")];
    net.call("b", |d| d.set_view(healed.iter()));
    net.call("c", |d| d.set_view(healed.iter()));
    net.settle();
    assert_each_runs_once_with_its_state(&net, &keys);
}

#[test]
fn a_backup_without_quorum_still_takes_its_owners_replications() {
    let all = [id("a"), id("b"), id("c")];
    let (mut net, key) = child_on_a_backed_up_by_b();
    // Only `b` loses the others (one-way gossip loss): `a` keeps running the child and
    // replicating its new state to `b`.
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    net.call("a", |d| d.snapshot(&key, b"<new>".to_vec()));
    net.settle();
    // Held and acknowledged at once: `a` still sees a quorum, and its child's only other
    // copy is `b`'s (no later reconciliation compares versions).
    assert_eq!(net.dir("a").unreplicated(), 0, "b acknowledged");
    net.call("b", |d| d.set_view(all.iter()));
    net.settle();
    let version = net.dir("a").owned()[&key].record.version;
    let held: Vec<Version> = net.dir("b").backups()[&key]
        .iter()
        .map(|c| c.record.version)
        .collect();
    assert_eq!(held, vec![version], "b holds the current record");
    assert_eq!(net.dir("a").unreplicated(), 0);
}

#[test]
fn an_adoption_out_of_hops_at_a_node_without_quorum_runs_when_the_quorum_returns() {
    let all = [id("a"), id("b"), id("c")];
    let mut net = Net::with_quorum(&["a", "b", "c"], 8, Some(3));
    let key = key_owned_by(&["a", "b", "c"], "b");
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    // Passed around between nodes whose views disagree until its hops ran out.
    let mut r = record(&key);
    r.generation = generation(7);
    r.snapshot = Some(format!("<{key}>").into_bytes());
    let adopt = DirMsg::Adopt {
        record: r,
        hops: MAX_HOPS,
        tag: tag(1),
        holders: Vec::new(),
        moved: true,
    };
    net.call("b", |d| d.receive(&id("a"), adopt));
    net.settle();
    assert!(net.runs(&key).is_empty(), "nothing runs without a quorum");
    net.call("b", |d| d.set_view(all.iter()));
    net.settle();
    assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
}
