//! The directory's own cost of taking a cluster's children back after every node restarted,
//! beside the cost of starting as many: no runtime, no I/O, messages delivered in order.
//! `cargo test --release -p throng-core -- --ignored --nocapture restart_cost`

use std::time::Instant;

use super::*;

fn durable_net(nodes: &[&str]) -> Net {
    Net::unviewed(nodes, |config| config.durable = true)
}

/// Delivers every message; how many, by kind.
fn deliver_all(net: &mut Net) -> (usize, BTreeMap<String, usize>) {
    let mut n = 0;
    let mut kinds = BTreeMap::new();
    while let Some((from, to, msg)) = net.queue.pop_front() {
        n += 1;
        let kind: String = format!("{msg:?}")
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        *kinds.entry(kind).or_insert(0) += 1;
        if std::env::var("THRONG_COST_TRACE").is_ok() {
            eprintln!("{from} -> {to}: {msg:?}");
        }
        let Some(d) = net.dirs.get_mut(&to) else {
            continue;
        };
        let actions = d.receive(&from, msg);
        net.apply(&to, actions);
        net.log.clear();
    }
    (n, kinds)
}

#[test]
#[ignore = "a measure: run in release with --nocapture"]
fn restart_cost() {
    let n: usize = std::env::var("THRONG_COST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let names = ["a", "b", "c"];
    let ids: Vec<NodeId> = names.iter().map(|n| id(n)).collect();

    let t = Instant::now();
    let mut net = durable_net(&names);
    for i in &ids {
        let actions = net.dirs.get_mut(i).unwrap().set_view(ids.iter());
        net.apply(i, actions);
    }
    // The view settles before the starts (as on a cluster that formed).
    deliver_all(&mut net);
    for k in 0..n {
        let key = format!("k{k}");
        let owner = net.dirs[&ids[0]].owner(&key).unwrap();
        let actions = net
            .dirs
            .get_mut(&owner)
            .unwrap()
            .start(k as u64, spec(&key));
        net.apply(&owner, actions);
        net.log.clear();
    }
    let cold_msgs = deliver_all(&mut net);
    let cold = t.elapsed();
    // What each node's disk holds: its touched keys' entries.
    let disks: Vec<Vec<(String, DurableEntry)>> = ids
        .iter()
        .map(|i| {
            let d = net.dirs.get_mut(i).unwrap();
            let keys = d.take_touched();
            keys.into_iter()
                .filter_map(|k| d.durable(&k).map(|e| (k, e)))
                .collect()
        })
        .collect();
    let entries: usize = disks.iter().map(Vec::len).sum();

    let t = Instant::now();
    let mut net = durable_net(&names);
    for (i, disk) in ids.iter().zip(disks) {
        net.dirs.get_mut(i).unwrap().preload(disk);
    }
    for i in &ids {
        let actions = net.dirs.get_mut(i).unwrap().set_view(ids.iter());
        net.apply(i, actions);
    }
    // The recovery waits for the view to settle.
    deliver_all(&mut net);
    let loaded = t.elapsed();
    let mut recover = Vec::new();
    for i in &ids {
        let t = Instant::now();
        let actions = net.dirs.get_mut(i).unwrap().recover([]);
        recover.push(t.elapsed());
        net.apply(i, actions);
        net.log.clear();
    }
    let t2 = Instant::now();
    let restart_msgs = deliver_all(&mut net);
    let meet = t2.elapsed();
    let restart = t.elapsed();
    let running = net.running.len();
    let touched: usize = ids
        .iter()
        .map(|i| net.dirs.get_mut(i).unwrap().take_touched().len())
        .sum();
    eprintln!(
        "N={n}: cold {cold:?} ({cold_msgs:?} messages); restart {restart:?} = preload+view {loaded:?} + recover {recover:?} + messages {meet:?} ({restart_msgs:?} messages); {entries} entries on the disks, {touched} keys touched after; {running} running; ratio {:.2}",
        restart.as_secs_f64() / cold.as_secs_f64()
    );
    assert_eq!(running, n);
}

/// A node lost from a cluster of ten costs the survivors' directories work in proportion to
/// what that node held (its children and the copies it kept), not a pass over everything each
/// survivor holds: only the children it backed up, the copies it made and the children lodged
/// away from their owner are looked at again. The bound is the simulator's
/// (`Invariant::NodeLossWork`): 8 entries per entry lost and 64 per view change.
#[test]
fn a_node_loss_costs_work_in_proportion_to_what_the_node_held() {
    let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut net = Net::new(&nodes, 8);
    let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let owner = net.dir("n0").owner(key).unwrap();
        net.call(owner.as_str(), |d| d.start(i as u64, spec(key)));
        if i % 500 == 499 {
            net.settle();
        }
    }
    net.settle();
    let lost = "n3";
    let held = {
        let d = net.dir(lost);
        d.owned().len() + d.backup_count()
    };
    assert!(held > 200, "n3 holds {held}");
    net.crash(lost);
    let survivors: Vec<NodeId> = net.dirs.keys().cloned().collect();
    let before: u64 = net.dirs.values().map(Directory::work).sum();
    for n in &survivors {
        let actions = net.dirs.get_mut(n).unwrap().set_view(survivors.iter());
        net.apply(n, actions);
    }
    net.settle();
    let examined = net.dirs.values().map(Directory::work).sum::<u64>() - before;
    let all: usize = net
        .dirs
        .values()
        .map(|d| d.owned().len() + d.backup_count())
        .sum();
    let bound = 8 * held as u64 + 64 * survivors.len() as u64;
    eprintln!("lost {held} entries of {all}; examined {examined}, bound {bound}");
    assert!(
        examined <= bound,
        "the loss of {held} entries cost {examined} entries examined (bound {bound}; the \
         survivors hold {all})"
    );
    for key in &keys {
        assert_eq!(net.runs(key).len(), 1, "{key} runs on {:?}", net.runs(key));
    }
}
