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
