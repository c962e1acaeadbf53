//! Unit tests of the directory: scenarios over several directories wired together (a [`Net`]),
//! and the invariants [`Directory::check`] enforces.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;
use crate::{ExitClass, RestartPolicy};

mod check;
mod copies;
mod cost;
mod lineage;
mod quorum;
mod start;

fn id(n: &str) -> NodeId {
    NodeId::new(n).expect("valid")
}

fn spec(key: &str) -> StartSpec {
    StartSpec {
        key: key.to_owned(),
        actor_type: "t".into(),
        args: Vec::new(),
        policy: RestartPolicy::Permanent,
    }
}

/// A record of generation 1, as an owner would have started it.
fn record(key: &str) -> Record {
    Record::new(spec(key), generation(1))
}

fn generation(n: u64) -> Generation {
    Generation::new(n).expect("not 0")
}

fn tag(n: u64) -> Tag {
    Tag::new(n).expect("not 0")
}

/// Directories wired together, with a runtime that spawns and stops at once and merges
/// states by concatenation.
struct Net {
    dirs: BTreeMap<NodeId, Directory>,
    queue: VecDeque<(NodeId, NodeId, DirMsg)>,
    /// Running children: state per (node, key).
    running: BTreeMap<(NodeId, String), Vec<u8>>,
    merging: BTreeMap<(NodeId, String), Record>,
    log: Vec<(NodeId, Action)>,
}

impl Net {
    fn new(nodes: &[&str], max_moves: usize) -> Self {
        Net::with_quorum(nodes, max_moves, None)
    }

    /// Like [`Net::new`], every directory configured with `quorum`.
    fn with_quorum(nodes: &[&str], max_moves: usize, quorum: Option<usize>) -> Self {
        let mut net = Net::unviewed(nodes, |config| {
            config.max_moves = max_moves;
            config.quorum = quorum;
        });
        let ids: Vec<NodeId> = net.dirs.keys().cloned().collect();
        for n in &ids {
            let actions = net.dir(n.as_str()).set_view(ids.iter());
            net.apply(n, actions);
        }
        net.settle();
        net
    }

    /// Directories for `nodes`, each configured by `configure`, with no view yet.
    fn unviewed(nodes: &[&str], configure: impl Fn(&mut DirConfig)) -> Self {
        let mut net = Net {
            dirs: BTreeMap::new(),
            queue: VecDeque::new(),
            running: BTreeMap::new(),
            merging: BTreeMap::new(),
            log: Vec::new(),
        };
        for n in nodes {
            let mut config = DirConfig::new(id(n));
            configure(&mut config);
            net.dirs.insert(id(n), Directory::new(config));
        }
        net
    }

    /// `nodes` with `key` started on its owner (request 1) and replicated.
    fn running(nodes: &[&str], key: &str) -> Self {
        let mut net = Net::new(nodes, 8);
        let owner = net.dirs.values().next().and_then(|d| d.owner(key)).unwrap();
        net.call(owner.as_str(), |d| d.start(1, spec(key)));
        net.settle();
        net
    }

    fn dir(&mut self, n: &str) -> &mut Directory {
        self.dirs.get_mut(&id(n)).expect("node")
    }

    fn call(&mut self, n: &str, f: impl FnOnce(&mut Directory) -> Vec<Action>) {
        let actions = f(self.dir(n));
        self.apply(&id(n), actions);
    }

    fn apply(&mut self, node: &NodeId, actions: Vec<Action>) {
        for a in actions {
            self.log.push((node.clone(), a.clone()));
            match a {
                Action::Spawn(r) => {
                    let state = r.snapshot.clone().unwrap_or_default();
                    self.running.insert((node.clone(), r.key.clone()), state);
                    let more = self
                        .dirs
                        .get_mut(node)
                        .expect("node")
                        .spawned(&r.key, Ok(()));
                    self.apply(node, more);
                }
                Action::Stop { key, .. } => {
                    let state = self.running.remove(&(node.clone(), key.clone()));
                    let now = Duration::ZERO;
                    let more = self.dirs.get_mut(node).expect("node").exited(
                        &key,
                        ExitClass::Shutdown,
                        state,
                        now,
                    );
                    self.apply(node, more);
                }
                Action::Merge { key, theirs } => {
                    let mut ours = self
                        .running
                        .remove(&(node.clone(), key.clone()))
                        .unwrap_or_default();
                    ours.extend(theirs.snapshot.clone().unwrap_or_default());
                    self.merging.insert((node.clone(), key.clone()), theirs);
                    let more = self
                        .dirs
                        .get_mut(node)
                        .expect("node")
                        .merged(&key, Some(ours));
                    self.apply(node, more);
                }
                Action::Send { to, msg } => self.queue.push_back((node.clone(), to, msg)),
                Action::Reply { .. } | Action::Event(_) | Action::Replicated { .. } => {}
            }
        }
    }

    fn settle(&mut self) {
        let mut budget = 10_000;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            budget -= 1;
            assert!(
                budget > 0,
                "no quiescence: {:?}",
                &self.log[self.log.len() - 20..]
            );
            // A node removed from `dirs` crashed: what is sent to it is lost.
            let Some(d) = self.dirs.get_mut(&to) else {
                continue;
            };
            let actions = d.receive(&from, msg);
            self.apply(&to, actions);
        }
    }

    /// `n` crashes: its directory and its children are gone.
    fn crash(&mut self, n: &str) {
        self.dirs.remove(&id(n));
        self.running.retain(|(node, _), _| *node != id(n));
    }

    fn replies(&self) -> Vec<(u64, Result<(), StartError>)> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Reply { req, result } => Some((*req, result.clone())),
                _ => None,
            })
            .collect()
    }

    fn runs(&self, key: &str) -> Vec<NodeId> {
        self.running
            .keys()
            .filter(|(_, k)| k == key)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// A key owned by `owner` and backed up on `backup` in a view of `nodes`.
fn key_placed(nodes: &[&str], owner: &str, backup: &str) -> String {
    let ring = Ring::from_nodes(RingConfig::default(), nodes.iter().map(|n| id(n))).unwrap();
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            ring.successors(k.as_bytes(), 2)
                .eq([&id(owner), &id(backup)])
        })
        .unwrap()
}

/// Three nodes with quorum 3 and one child, on `a`, backed up by `b`.
fn child_on_a_backed_up_by_b() -> (Net, String) {
    let mut net = Net::with_quorum(&["a", "b", "c"], 8, Some(3));
    let key = key_placed(&["a", "b", "c"], "a", "b");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    (net, key)
}

/// A key owned by `owner` in a view of `nodes`.
fn key_owned_by(nodes: &[&str], owner: &str) -> String {
    let ring = Ring::from_nodes(RingConfig::default(), nodes.iter().map(|n| id(n))).unwrap();
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| ring.node_for(k.as_bytes()) == Some(&id(owner)))
        .unwrap()
}

/// Every key runs on exactly one node, with its state (a merge may have joined the state
/// with an older copy of itself, never lost it).
fn assert_each_runs_once_with_its_state(net: &Net, keys: &[String]) {
    for key in keys {
        let runs = net.runs(key);
        assert_eq!(runs.len(), 1, "{key} runs on {runs:?}");
        let state = &net.running[&(runs[0].clone(), key.clone())];
        let want = format!("<{key}>").into_bytes();
        assert!(
            state.windows(want.len()).any(|w| w == want),
            "{key} on {:?} lost its state: {:?}",
            runs[0],
            String::from_utf8_lossy(state)
        );
    }
}

/// `a` sees `b`, but `b`'s membership never reported `a` up (a partition hides it, say): the
/// runtime still takes `a`'s connection, so `b` backs up the child `a` starts. Returns the
/// network and the child's key.
fn a_stranger_backed_up_by_b() -> (Net, String) {
    let mut net = Net::new(&["a", "b", "c"], 8);
    let key = key_placed(&["a", "b"], "a", "b");
    net.call("a", |d| d.set_view([&id("a"), &id("b")]));
    net.call("b", |d| d.set_view([&id("b"), &id("c")]));
    net.call("c", |d| d.set_view([&id("b"), &id("c")]));
    net.settle();
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    assert!(net.dir("b").backups().contains_key(&key));
    (net, key)
}

#[test]
fn a_copy_from_a_node_never_in_the_view_is_failed_over_when_the_view_changes_without_it() {
    let (mut net, key) = a_stranger_backed_up_by_b();
    // `b` is cut off from everyone: nothing will ever name `a` to it, and the copy it holds
    // must not stay a copy that nobody on its side runs.
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    assert!(net.runs(&key).contains(&id("b")), "{key} runs on b");
}

#[test]
fn a_copy_from_a_stranger_is_failed_over_when_its_connection_closes() {
    let (mut net, key) = a_stranger_backed_up_by_b();
    // `b`'s view does not change: only the closed connection says `a` is out of reach.
    net.call("b", |d| d.disconnected(&id("a")));
    net.settle();
    let runs = net.runs(&key);
    assert!(runs.iter().any(|n| *n != id("a")), "{key} runs on {runs:?}");
}

#[test]
fn a_hand_off_to_a_node_without_quorum_is_kept_and_leaves_no_copy_behind() {
    let owners = [id("b"), id("c")];
    let (mut net, key) = child_on_a_backed_up_by_b();
    // `b` sees only itself (no quorum) when `a` leaves and hands the child to it.
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    net.call("a", |d| d.leave());
    net.call("c", |d| d.set_members(owners.iter(), [&id("a")]));
    net.settle();
    let bounced = net.log.iter().any(|(n, a)| {
        *n == id("b")
            && matches!(a, Action::Send { to, msg: DirMsg::Adopt { .. } } if *to == id("a"))
    });
    assert!(!bounced, "the hand-off is kept, not sent back");
    assert!(net.runs(&key).is_empty(), "nothing runs without a quorum");
    assert!(!net.dir("a").handed_off(), "a keeps its copy meanwhile");
    // `b` has its quorum again: it runs the child, and `a` may go.
    net.call("b", |d| d.set_members(owners.iter(), [&id("a")]));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("b")]);
    assert!(
        net.dir("a").handed_off(),
        "a still holds {:?}",
        net.dir("a").backups()
    );
}

/// `b` and `c` with quorum 3 (2 nodes), `b` cut off (no quorum); a key `b` owns.
fn b_without_quorum() -> (Net, String) {
    let mut net = Net::with_quorum(&["b", "c"], 8, Some(3));
    let key = key_owned_by(&["b", "c"], "b");
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    assert!(!net.dir("b").has_quorum());
    (net, key)
}

/// A failover's hand-off of `r` (not a graceful move), tag `n`, naming `holders` to drop.
fn failover_msg(r: Record, n: u64, holders: Vec<Holder>) -> DirMsg {
    DirMsg::Adopt {
        record: r,
        hops: 0,
        tag: tag(n),
        holders,
        moved: false,
    }
}

fn adopt_msg(r: Record, hops: u8, n: u64) -> DirMsg {
    DirMsg::Adopt {
        record: r,
        hops,
        tag: tag(n),
        holders: Vec::new(),
        moved: true,
    }
}

#[test]
fn an_adoption_at_a_node_without_quorum_survives_its_sender_crashing() {
    let (mut net, key) = b_without_quorum();
    // `a` (gone by now: what is sent to it is lost) handed the child to `b` with its latest
    // state, which no other node holds.
    let mut r = record(&key);
    r.generation = generation(7);
    r.snapshot = Some(format!("<{key}>").into_bytes());
    net.call("b", |d| d.receive(&id("a"), adopt_msg(r, 0, 1)));
    net.settle();
    assert!(net.runs(&key).is_empty(), "nothing runs without a quorum");
    net.call("b", |d| d.set_view([&id("b"), &id("c")]));
    net.settle();
    assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
}

#[test]
fn an_adoption_of_a_removed_child_at_a_node_without_quorum_is_dropped_by_its_sender() {
    let (mut net, key) = b_without_quorum();
    let removed = DirMsg::Buried {
        removed: vec![(key.clone(), generation(7))],
    };
    net.call("b", |d| d.receive(&id("c"), removed));
    net.settle();
    let mut r = record(&key);
    r.generation = generation(7);
    let actions = net.dir("b").receive(&id("a"), adopt_msg(r, MAX_HOPS, 1));
    let dropped = actions.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                to,
                msg: DirMsg::Drop { tag: Some(t), remove: Some(g), .. },
            } if *to == id("a") && t.get() == 1 && g.get() == 7
        )
    });
    assert!(dropped, "the sender is told to drop its copy: {actions:?}");
    assert!(net.dir("b").backups().is_empty());
}

#[test]
fn a_hand_off_sent_again_to_a_node_that_took_it_and_lost_its_quorum_is_not_sent_back() {
    let mut net = Net::with_quorum(&["b", "c"], 8, Some(3));
    let key = key_owned_by(&["b", "c"], "b");
    let mut r = record(&key);
    r.generation = generation(7);
    r.version = Version::new(3);
    r.snapshot = Some(format!("<{key}>").into_bytes());
    net.call("b", |d| d.receive(&id("a"), adopt_msg(r.clone(), 0, 1)));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("b")]);
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    // `a` sends its (older) hand-off again after a reconnection.
    let mut old = r;
    old.version = Version::new(1);
    old.snapshot = Some(b"<old>".to_vec());
    let actions = net.dir("b").receive(&id("a"), adopt_msg(old, 0, 1));
    let back = actions.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                msg: DirMsg::Adopt { .. },
                ..
            }
        )
    });
    assert!(!back, "not sent back: {actions:?}");
    net.apply(&id("b"), actions);
    net.call("b", |d| d.set_view([&id("b"), &id("c")]));
    net.settle();
    assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
}

#[test]
fn an_orphan_backup_is_not_replaced_by_a_new_lineage_of_its_owner() {
    let nodes = ["a", "b", "c"];
    let mut net = Net::with_quorum(&nodes, 8, Some(3));
    let key = key_placed(&nodes, "a", "b");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    let state = format!("<{key}>").into_bytes();
    net.running.insert((id("a"), key.clone()), state.clone());
    net.call("a", |d| d.snapshot(&key, state));
    net.settle();
    // `b` loses its quorum (its copy from `a` is an orphan, kept), then `a` crashes; its new
    // incarnation runs the child from an older copy and replicates that to `b`.
    net.call("b", |d| d.set_view([&id("b")]));
    net.settle();
    net.crash("a");
    let generation = net.dir("b").backups()[&key][0].record.generation;
    let mut stale = record(&key);
    stale.generation = generation;
    stale.snapshot = Some(b"<old>".to_vec());
    let replicate = DirMsg::Replicate {
        record: stale,
        epoch: Epoch(1, 1),
    };
    net.call("b", |d| d.receive(&id("a"), replicate));
    net.settle();
    // The new incarnation goes too; `b` and `c` heal.
    let owners = [id("b"), id("c")];
    net.call("b", |d| d.set_view(owners.iter()));
    net.call("c", |d| d.set_view(owners.iter()));
    net.settle();
    assert_each_runs_once_with_its_state(&net, std::slice::from_ref(&key));
}

#[test]
fn a_transient_child_done_before_its_backup_acknowledged_was_started() {
    let nodes = ["a", "b"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "a");
    let mut r = spec(&key);
    r.policy = RestartPolicy::Transient;
    // Spawned at once; the replication to `b` is still on its way.
    net.call("a", |d| d.start(1, r));
    assert!(net.replies().is_empty());
    net.running.remove(&(id("a"), key.clone()));
    let actions = net
        .dir("a")
        .exited(&key, ExitClass::Normal, None, Duration::ZERO);
    net.apply(&id("a"), actions);
    assert_eq!(net.replies(), vec![(1, Ok(()))]);
    net.settle();
    assert_eq!(net.replies(), vec![(1, Ok(()))]);
    assert!(net.runs(&key).is_empty());
    assert!(net.dir("b").backups().is_empty());
}

#[test]
fn terminate_is_answered_only_after_the_backup_dropped_its_copy() {
    let mut net = Net::new(&["a", "b"], 8);
    let key = key_owned_by(&["a", "b"], "a");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    assert_eq!(net.replies(), vec![(1, Ok(()))]);
    assert!(net.dir("b").backups().contains_key(&key));
    net.call("a", |d| d.terminate(2, &key));
    // Stopped, but the backup has not confirmed the drop yet.
    assert_eq!(net.replies().len(), 1);
    net.settle();
    assert_eq!(net.replies(), vec![(1, Ok(())), (2, Ok(()))]);
    assert!(net.dir("b").backups().is_empty());
}

#[test]
fn a_removal_stops_the_copy_a_backup_failed_over_meanwhile() {
    let key = key_owned_by(&["a", "b"], "a");
    let mut net = Net::running(&["a", "b"], &key);
    // `b` falsely suspects `a` and fails the child over from its backup...
    net.call("b", |d| d.set_view([&id("b")]));
    assert_eq!(net.runs(&key).len(), 2);
    // ...while `a` terminates it: the drop of the backup reaches the copy made from it.
    net.call("a", |d| d.terminate(2, &key));
    net.settle();
    assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
    assert_eq!(net.replies(), vec![(1, Ok(())), (2, Ok(()))]);
    let stopped_on_b = net.log.iter().any(|(n, a)| {
        *n == id("b") && matches!(a, Action::Event(ChildEvent::Stopped { key: k }) if *k == key)
    });
    assert!(stopped_on_b);
}

#[test]
fn a_removal_chases_a_copy_handed_on_from_a_failed_over_backup() {
    let nodes = ["a", "b", "c"];
    let key = key_placed(&nodes, "a", "b");
    let mut net = Net::running(&nodes, &key);
    // `b` and `c` lose `a` while `b` leaves: `b` hands its backup on to `c`, the owner in
    // their view, which runs it; `a` terminates its copy meanwhile.
    net.call("b", |d| d.set_members([&id("c")], [&id("b")]));
    net.call("c", |d| d.set_members([&id("c")], [&id("b")]));
    net.call("a", |d| d.terminate(2, &key));
    net.settle();
    assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
    assert!(net.replies().contains(&(2, Ok(()))));
    let chased = net.log.iter().any(|(_, a)| {
        matches!(
            a,
            Action::Send {
                msg: DirMsg::Chase { .. },
                ..
            }
        )
    });
    assert!(chased, "the removal followed the hand-off");
}

#[test]
fn a_late_copy_of_a_removed_child_is_refused() {
    let nodes = ["a", "b", "c"];
    let key = key_owned_by(&nodes, "a");
    let mut net = Net::running(&nodes, &key);
    let owned = net.dir("a").owned()[&key].clone();
    let backup = owned.backup.clone().expect("a backup");
    net.call("a", |d| d.terminate(2, &key));
    net.settle();
    assert!(net.dir(backup.as_str()).backups().is_empty());
    // A replication sent before the removal and overtaken by it is refused...
    net.queue.push_back((
        id("a"),
        backup.clone(),
        DirMsg::Replicate {
            record: owned.record.clone(),
            epoch: owned.epoch,
        },
    ));
    net.settle();
    assert!(net.dir(backup.as_str()).backups().is_empty());
    // ...and so is a late hand-off of it.
    net.queue.push_back((
        id("c"),
        backup.clone(),
        DirMsg::Adopt {
            record: owned.record.clone(),
            hops: 0,
            tag: tag(77),
            holders: Vec::new(),
            moved: false,
        },
    ));
    net.settle();
    assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
    // A new start of the key is a new child, not refused.
    net.call("a", |d| d.start(3, spec(&key)));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("a")]);
    assert!(net.dir(backup.as_str()).backups().contains_key(&key));
}

#[test]
fn a_removal_on_one_side_of_a_partition_wins_after_the_heal() {
    let nodes = ["a", "b", "c"];
    let key = key_placed(&nodes, "a", "b");
    let mut net = Net::running(&nodes, &key);
    // `b` is cut off: it fails the child over from its backup and terminates it there; the
    // drop to `a` is lost with the partition.
    net.call("b", |d| d.set_view([&id("b")]));
    net.call("b", |d| d.terminate(2, &key));
    net.queue.clear();
    assert!(net.replies().contains(&(2, Ok(()))));
    assert_eq!(net.runs(&key), vec![id("a")]);
    // The heal: `b` comes back into the views and reconciles.
    for n in nodes {
        net.call(n, |d| {
            d.set_view(nodes.iter().map(|n| id(n)).collect::<Vec<_>>().iter())
        });
    }
    net.settle();
    assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
}

#[test]
fn peers_that_meet_again_exchange_the_removals_they_know() {
    let nodes = ["a", "b", "c"];
    let key = key_placed(&nodes, "a", "b");
    let mut net = Net::running(&nodes, &key);
    // `b` is cut off, fails the child over and terminates it; `a` and `c` see `b` down.
    net.call("b", |d| d.set_view([&id("b")]));
    net.call("b", |d| d.terminate(2, &key));
    net.call("a", |d| d.set_view([&id("a"), &id("c")]));
    net.call("c", |d| d.set_view([&id("a"), &id("c")]));
    net.queue.clear();
    net.settle();
    assert_eq!(net.runs(&key), vec![id("a")]);
    // The heal, with `b` leaving: nothing of the child is replicated to `b` any more, so only
    // the reconciliation tells `a` about the removal.
    for n in nodes {
        net.call(n, |d| d.set_members([&id("a"), &id("c")], [&id("b")]));
    }
    net.settle();
    assert!(net.runs(&key).is_empty(), "runs on {:?}", net.runs(&key));
    let buried = net.log.iter().any(|(_, a)| {
        matches!(
            a,
            Action::Send {
                msg: DirMsg::Buried { .. },
                ..
            }
        )
    });
    assert!(buried);
}

#[test]
fn a_hand_off_sent_again_after_its_copy_moved_on_is_not_taken_twice() {
    let nodes = ["a", "b", "c"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "c");
    let mut r = record(&key);
    r.generation = generation(7);
    r.snapshot = Some(b"s".to_vec());
    let adopt = DirMsg::Adopt {
        record: r,
        hops: 0,
        tag: tag(5),
        holders: Vec::new(),
        moved: true,
    };
    // `b` takes the hand-off and passes it on to the owner, `c`, which confirms.
    net.queue.push_back((id("a"), id("b"), adopt.clone()));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("c")]);
    // The same hand-off again (a reconnection of `a` resent it): confirmed, not taken again.
    let before = net.log.len();
    net.queue.push_back((id("a"), id("b"), adopt));
    net.settle();
    assert_eq!(net.runs(&key), vec![id("c")]);
    let taken_again = net.log[before..].iter().any(|(_, a)| {
        matches!(
            a,
            Action::Send {
                msg: DirMsg::Adopt { .. },
                ..
            } | Action::Merge { .. }
                | Action::Event(ChildEvent::Conflict { .. })
        )
    });
    assert!(!taken_again, "{:?}", &net.log[before..]);
    let confirmed = net.log[before..].iter().any(|(n, a)| {
        *n == id("b")
            && matches!(a, Action::Send { to, msg: DirMsg::Drop { tag: Some(t), .. } } if *to == id("a") && t.get() == 5)
    });
    assert!(confirmed);
}

#[test]
fn a_leaving_node_hands_its_children_off_with_their_state() {
    let nodes = ["a", "b", "c"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "a");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.running
        .insert((id("a"), key.clone()), b"state".to_vec());
    // The membership announces the leave; `a` starts handing off.
    for n in ["b", "c"] {
        net.call(n, |d| d.set_members([&id("b"), &id("c")], [&id("a")]));
    }
    net.call("a", |d| d.leave());
    // Start requests at a leaving node are refused with the new owner.
    let other = key_owned_by(&nodes, "a");
    net.call("a", |d| d.start(3, spec(&other)));
    assert!(matches!(
        net.replies().last(),
        Some((3, Err(StartError::NotOwner { owner: Some(_) })))
    ));
    assert!(!net.dir("a").handed_off());
    net.settle();
    let runs = net.runs(&key);
    assert_eq!(runs.len(), 1);
    assert_ne!(runs[0], id("a"));
    assert_eq!(
        net.running[&(runs[0].clone(), key.clone())],
        b"state".to_vec()
    );
    // It runs nothing and holds nothing any more: it may exit.
    assert!(net.dir("a").handed_off(), "{:?}", net.dir("a").backups());
    // The new owner reports an adoption, not a failover.
    let events: Vec<&ChildEvent> = net
        .log
        .iter()
        .filter_map(|(n, a)| match a {
            Action::Event(e) if *n == runs[0] => Some(e),
            _ => None,
        })
        .collect();
    assert!(
        events.contains(&&ChildEvent::Adopted {
            key: key.clone(),
            from: id("a"),
        }),
        "{events:?}"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, ChildEvent::FailedOver { .. })));
}

#[test]
fn the_backups_of_a_leaving_node_are_not_failed_over() {
    let nodes = ["a", "b"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "a");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.call("b", |d| d.set_members([&id("b")], [&id("a")]));
    assert!(net.runs(&key) == vec![id("a")]);
    // Down: now it fails over.
    net.call("b", |d| d.set_members([&id("b")], []));
    assert_eq!(net.runs(&key).len(), 2);
    assert!(net.runs(&key).contains(&id("b")));
}

#[test]
fn moves_are_throttled() {
    let mut net = Net::new(&["a"], 1);
    let keys: Vec<String> = (0..3)
        .map(|i| {
            (0..)
                .map(|j| format!("m{i}-{j}"))
                .find(|k| {
                    let ring = Ring::from_nodes(RingConfig::default(), [id("a"), id("b")]).unwrap();
                    ring.node_for(k.as_bytes()) == Some(&id("b"))
                })
                .unwrap()
        })
        .collect();
    for (i, k) in keys.iter().enumerate() {
        net.call("a", |d| d.start(i as u64, spec(k)));
    }
    // `b` joins: all three keys move to it, one at a time. Hold the stops to count them.
    let actions = net.dir("a").set_view([&id("a"), &id("b")]);
    let stops = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Stop {
                    reason: StopReason::Move,
                    ..
                }
            )
        })
        .count();
    assert_eq!(stops, 1);
    assert_eq!(net.dir("a").moves(), (1, 2));
}

#[test]
fn an_adopted_copy_of_a_running_child_is_merged_into_it() {
    let nodes = ["a", "b"];
    let mut net = Net::new(&nodes, 8);
    let key = key_owned_by(&nodes, "a");
    net.call("a", |d| d.start(1, spec(&key)));
    net.settle();
    net.running.insert((id("a"), key.clone()), b"ours".to_vec());
    let mut theirs = record(&key);
    theirs.snapshot = Some(b"+theirs".to_vec());
    theirs.version = Version::new(7);
    let actions = net
        .dir("a")
        .receive(&id("b"), failover_msg(theirs, 1, Vec::new()));
    assert!(actions.iter().any(|a| matches!(a, Action::Merge { .. })));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Event(ChildEvent::Conflict {
            here_lost: false,
            ..
        })
    )));
    net.apply(&id("a"), actions);
    net.settle();
    assert_eq!(net.runs(&key), vec![id("a")]);
    assert_eq!(
        net.running[&(id("a"), key.clone())],
        b"ours+theirs".to_vec()
    );
    let o = &net.dir("a").owned()[&key];
    assert!(o.record.version > Version::new(7));
    assert_eq!(o.phase, Phase::Running);
}
