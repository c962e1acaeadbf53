//! Distributed supervisors: registered types, placement on the key's owner, addressing by key from
//! any node, typed start errors, restarts from snapshots behind a stable name, failover with state
//! when a node dies, several supervisors on node subsets, quorum mode, listeners.

mod common;

use std::time::Duration;

use common::eventually;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use throng::cluster::{
    ChildError, ChildEvent, DistOptions, Explicit, Keyed, Node, NodeConfig, NodeOptions,
    RemoteActor, UniformRandom,
};
use throng::prelude::*;

struct Hero {
    key: String,
    health: u32,
    fights: u32,
}

#[derive(Debug, Serialize, Deserialize)]
enum HeroMsg {
    Fight,
    Status,
    Crash,
}

impl Actor for Hero {
    type Msg = HeroMsg;
    type Reply = (String, u32, u32);
    async fn handle(&mut self, msg: HeroMsg, _ctx: &mut Context<Self>) -> ActorResult<Self::Reply> {
        match msg {
            HeroMsg::Fight => {
                self.fights += 1;
                self.health = self.health.saturating_sub(1);
            }
            HeroMsg::Status => {}
            HeroMsg::Crash => panic!("{} was bombed", self.key),
        }
        Ok((self.key.clone(), self.health, self.fights))
    }
}

impl RemoteActor for Hero {
    const TYPE: &'static str = "test.Hero";
}

impl Keyed for Hero {
    type Args = u32;
    type State = (u32, u32);
    fn start(key: &str, health: u32) -> Self {
        Hero {
            key: key.to_owned(),
            health,
            fights: 0,
        }
    }
    fn snapshot(&self) -> Option<(u32, u32)> {
        Some((self.health, self.fights))
    }
    fn restore(key: &str, _health: u32, (health, fights): (u32, u32)) -> Self {
        Hero {
            key: key.to_owned(),
            health,
            fights,
        }
    }
}

/// A type only some nodes register.
struct Rare;

impl Actor for Rare {
    type Msg = ();
    type Reply = ();
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
}

impl RemoteActor for Rare {
    const TYPE: &'static str = "test.Rare";
}

impl Keyed for Rare {
    type Args = ();
    type State = ();
    fn start(_: &str, _: ()) -> Self {
        Rare
    }
}

const SECRET: &[u8] = b"keyed-test-secret-0123456789";

async fn cluster() -> Vec<Node> {
    cluster_of(&["k1", "k2", "k3"]).await
}

async fn cluster_of(names: &[&str]) -> Vec<Node> {
    let nodes = common::cluster_of(names, SECRET).await;
    for n in &nodes {
        n.register::<Hero>();
    }
    nodes
}

/// Four callers fighting the heroes of `keys` by key, through the supervisors of `via` (two
/// nodes), counting each acknowledged fight, until `finish`.
struct Fighters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, u32)>>,
    keys: usize,
}

impl Fighters {
    fn start(via: [&Node; 2], keys: &[String]) -> Fighters {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let tasks = (0..4usize)
            .map(|c| {
                let sup = via[c % 2].default_supervisor();
                let (keys, stop, calls) = (keys.to_vec(), stop.clone(), calls.clone());
                tokio::spawn(async move {
                    let mut acked = vec![0u32; keys.len()];
                    let mut failed = 0u32;
                    let mut i = c;
                    while !stop.load(Relaxed) {
                        i = (i + 7) % keys.len();
                        calls.fetch_add(1, Relaxed);
                        match sup.call::<Hero>(&keys[i], HeroMsg::Fight).await {
                            Ok(_) => acked[i] += 1,
                            Err(e) => {
                                failed += 1;
                                eprintln!("call to {} failed: {e}", keys[i]);
                            }
                        }
                    }
                    (acked, failed)
                })
            })
            .collect();
        Fighters {
            stop,
            calls,
            tasks,
            keys: keys.len(),
        }
    }

    /// Wait until the callers made `n` more calls.
    async fn carry_on(&self, what: &str, n: u64) {
        let calls = || self.calls.load(std::sync::atomic::Ordering::Relaxed);
        let target = calls() + n;
        eventually(what, Duration::from_secs(10), || calls() > target).await;
    }

    /// Stop the callers: acknowledged fights per key, and how many calls failed.
    async fn finish(self) -> (Vec<u32>, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = vec![0u32; self.keys];
        let mut failed = 0;
        for t in self.tasks {
            let (a, f) = t.await.unwrap();
            failed += f;
            for (total, x) in acked.iter_mut().zip(a) {
                *total += x;
            }
        }
        (acked, failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_start_on_their_owner_and_answer_by_key_from_anywhere() {
    let nodes = cluster().await;
    let keys: Vec<String> = (0..300).map(|i| format!("hero-{i}")).collect();
    for k in &keys {
        nodes[0].start_child::<Hero>(k, 100).await.unwrap();
    }
    // Each child runs exactly once, on the node that owns its key.
    for k in &keys {
        let owner = nodes[0].node_for(k.as_bytes()).unwrap();
        let hosting: Vec<&Node> = nodes.iter().filter(|n| n.hosts::<Hero>(k)).collect();
        assert_eq!(hosting.len(), 1, "{k} runs on {} nodes", hosting.len());
        assert_eq!(hosting[0].id(), &owner);
    }
    for n in &nodes {
        let here = keys.iter().filter(|k| n.hosts::<Hero>(k)).count();
        assert!(here > 30, "{} hosts only {here} of 300", n.id());
    }
    // Any node reaches any child by key, and state is kept between calls.
    for (i, k) in keys.iter().enumerate().take(60) {
        let via = &nodes[i % 3];
        let hero = via.child::<Hero>(k).unwrap();
        hero.call(HeroMsg::Fight).await.unwrap();
        let (key, health, fights) = nodes[(i + 1) % 3]
            .child::<Hero>(k)
            .unwrap()
            .call(HeroMsg::Status)
            .await
            .unwrap();
        assert_eq!((key.as_str(), health, fights), (k.as_str(), 99, 1));
    }
    // The cluster-wide list has every child once, on its owner.
    let listed = nodes[2].children().await.unwrap();
    assert_eq!(listed.len(), 300);
    for c in &listed {
        assert_eq!(c.actor_type, "test.Hero");
        assert_eq!(c.node, nodes[0].node_for(c.key.as_bytes()).unwrap());
    }
    // Terminating from any node stops it for good (a permanent child is not restarted).
    nodes[1].terminate_child::<Hero>(&keys[5]).await.unwrap();
    assert!(nodes.iter().all(|n| !n.hosts::<Hero>(&keys[5])));
    assert_eq!(
        nodes[0]
            .terminate_child::<Hero>(&keys[5])
            .await
            .unwrap_err(),
        ChildError::NoSuchChild(keys[5].clone())
    );
    assert_eq!(nodes[0].children().await.unwrap().len(), 299);
    // Starting the same key twice is refused.
    assert_eq!(
        nodes[1]
            .start_child::<Hero>(&keys[0], 100)
            .await
            .unwrap_err(),
        ChildError::AlreadyStarted(keys[0].clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_are_refused_and_crashed_children_restart_behind_their_key() {
    let nodes = cluster().await;
    // Only k1 hosts `Rare`: a key owned by another node cannot start there.
    nodes[0].register::<Rare>();
    let foreign = (0..)
        .map(|i| format!("rare-{i}"))
        .find(|k| nodes[0].node_for(k.as_bytes()).unwrap() != *nodes[0].id())
        .unwrap();
    match nodes[0]
        .start_child::<Rare>(&foreign, ())
        .await
        .unwrap_err()
    {
        ChildError::UnknownType { actor_type, .. } => assert_eq!(actor_type, "test.Rare"),
        other => panic!("unexpected {other:?}"),
    }

    let hero = nodes[2].start_child::<Hero>("batman", 100).await.unwrap();
    hero.call(HeroMsg::Fight).await.unwrap();
    assert!(hero.call(HeroMsg::Crash).await.is_err());
    // The owner restarts it from its last snapshot and re-exports it under its key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let by_key = nodes[1].child::<Hero>("batman").unwrap();
        match by_key.call(HeroMsg::Status).await {
            Ok(status) => {
                assert_eq!(
                    status,
                    ("batman".to_string(), 99, 1),
                    "restarted from its snapshot"
                );
                break;
            }
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "batman not back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Wait until `key` answers `Status` through `via` and return the answer.
async fn status(via: &Node, key: &str, within: Duration) -> (String, u32, u32) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(c) = via.child::<Hero>(key) {
            if let Ok(s) = c
                .call_timeout(HeroMsg::Status, Duration::from_secs(1))
                .await
            {
                return s;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} not callable from {}",
            via.id()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_dead_node_fail_over_with_their_last_snapshot() {
    let mut nodes = cluster().await;
    let mut events = nodes[1].default_supervisor().events();
    let keys: Vec<String> = (0..200).map(|i| format!("f-{i}")).collect();
    for k in &keys {
        nodes[0].start_child::<Hero>(k, 100).await.unwrap();
    }
    // Give every child a distinct state: key i fought i % 7 + 1 times.
    for (i, k) in keys.iter().enumerate() {
        let hero = nodes[i % 3].child::<Hero>(k).unwrap();
        for _ in 0..(i % 7 + 1) {
            hero.call(HeroMsg::Fight).await.unwrap();
        }
    }
    let victim = nodes.remove(2);
    let victim_keys: Vec<&String> = keys
        .iter()
        .filter(|k| victim.hosts::<Hero>(k.as_str()))
        .collect();
    assert!(!victim_keys.is_empty());
    // Snapshots are replicated asynchronously (a call is answered before the snapshot it caused
    // reaches the backup): wait until every backup holds the latest one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in nodes.iter().chain([&victim]) {
        while n.default_supervisor().stats().await.unreplicated != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replication stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    victim.shutdown().await; // a crash: no leave announced
    drop(victim);
    for (i, k) in keys.iter().enumerate() {
        for via in &nodes {
            let (_, health, fights) = status(via, k, Duration::from_secs(15)).await;
            let n = (i % 7 + 1) as u32;
            assert_eq!((health, fights), (100 - n, n), "{k} state via {}", via.id());
        }
    }
    // Every child runs exactly once, on its owner in the survivors' view.
    for k in &keys {
        let hosting = nodes.iter().filter(|n| n.hosts::<Hero>(k)).count();
        assert_eq!(hosting, 1, "{k}");
    }
    // Listeners on the survivors heard of the failovers.
    let mut failed_over = 0;
    while let Ok(e) = events.try_recv() {
        if let ChildEvent::FailedOver { from_snapshot, .. } = e.event {
            assert!(from_snapshot);
            failed_over += 1;
        }
    }
    assert!(failed_over > 0, "no failover event on k2");
}

/// A node that starts, casts to and calls many distinct keys hosted elsewhere, and calls keys
/// with no child, keeps no entry per key: no request left waiting, its table of monitored remote
/// actors (one per reference `start_child` returned) within its bound, and the owners holding
/// no more of its monitors than that table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_keeps_no_entry_per_distinct_key_it_called() {
    use futures_util::StreamExt;
    let nodes = cluster().await;
    let hosts: BTreeSet<_> = [nodes[1].id().clone(), nodes[2].id().clone()].into();
    let opts = DistOptions {
        nodes: Some(hosts),
        ..DistOptions::default()
    };
    let sups: Vec<_> = nodes
        .iter()
        .map(|n| n.supervisor("far", opts.clone()))
        .collect();
    for s in &sups {
        eventually("far view", Duration::from_secs(10), || s.nodes().len() == 2).await;
    }
    let caller = &sups[0];
    const LIVE: u32 = 2_500;
    const MISSES: u32 = 500;
    futures_util::stream::iter(0..LIVE)
        .for_each_concurrent(64, |i| async move {
            let key = format!("far-{i}");
            caller.start_child::<Hero>(&key, 100).await.unwrap();
            caller.cast::<Hero>(&key, HeroMsg::Fight).await.unwrap();
            let (_, health, fights) = caller.call::<Hero>(&key, HeroMsg::Fight).await.unwrap();
            assert_eq!((health, fights), (98, 2), "{key}");
        })
        .await;
    futures_util::stream::iter(LIVE..LIVE + MISSES)
        .for_each_concurrent(64, |i| async move {
            let key = format!("far-{i}");
            let r = caller
                .call_timeout::<Hero>(&key, HeroMsg::Status, Duration::from_millis(20))
                .await;
            assert!(
                matches!(r, Err(CallError::NoSuchActor(_) | CallError::Timeout(_))),
                "{key}: {r:?}"
            );
        })
        .await;
    let stats = nodes[0].connection_stats();
    assert_eq!(stats.calls_in_flight, 0);
    // At most twice the live references plus 1,024 (none is live now).
    assert!(
        stats.monitored_remotes <= 2 * 1024,
        "{} monitored remote actors after {LIVE} distinct keys",
        stats.monitored_remotes
    );
    eventually(
        "the owners to hold at most the caller's monitors",
        Duration::from_secs(10),
        || {
            let held: usize = nodes[1..]
                .iter()
                .map(|n| n.connection_stats().monitors_held)
                .sum();
            held <= 2 * 1024
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_limited_to_a_subset_of_nodes_place_only_there() {
    let nodes = cluster().await;
    let only: BTreeSet<_> = [nodes[0].id().clone(), nodes[1].id().clone()].into();
    let opts = DistOptions {
        nodes: Some(only.clone()),
        ..DistOptions::default()
    };
    let sups: Vec<_> = nodes
        .iter()
        .map(|n| n.supervisor("pair", opts.clone()))
        .collect();
    for s in &sups {
        eventually("pair view", Duration::from_secs(10), || {
            s.nodes().len() == 2
        })
        .await;
    }
    for i in 0..60 {
        let key = format!("p-{i}");
        // Started from the node outside the subset: forwarded to an owner inside it.
        sups[2].start_child::<Hero>(&key, 50).await.unwrap();
        assert!(only.contains(&sups[2].node_for(&key).unwrap()));
    }
    let listed = sups[2].children().await.unwrap();
    assert_eq!(listed.len(), 60);
    assert!(listed.iter().all(|c| only.contains(&c.node)));
    // The same key in another supervisor is another child.
    nodes[2].start_child::<Hero>("p-0", 10).await.unwrap();
    assert_eq!(
        sups[0]
            .call::<Hero>("p-0", HeroMsg::Status)
            .await
            .unwrap()
            .1,
        50
    );
    assert_eq!(
        nodes[0]
            .child::<Hero>("p-0")
            .unwrap()
            .call(HeroMsg::Status)
            .await
            .unwrap()
            .1,
        10
    );
    assert_eq!(sups[1].count_children().await.unwrap(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quorum_stops_its_children_and_refuses_new_ones() {
    let mut nodes = cluster().await;
    let opts = DistOptions {
        quorum: Some(3),
        ..DistOptions::default()
    };
    let sups: Vec<_> = nodes
        .iter()
        .map(|n| n.supervisor("q", opts.clone()))
        .collect();
    for s in &sups {
        eventually("q view", Duration::from_secs(10), || s.nodes().len() == 3).await;
    }
    let keys: Vec<String> = (0..30).map(|i| format!("q-{i}")).collect();
    for k in &keys {
        sups[0].start_child::<Hero>(k, 100).await.unwrap();
    }
    let last = sups[2].clone();
    let hosted_by_last = keys.iter().filter(|k| last.hosts(k)).count();
    assert!(hosted_by_last > 0);
    // Two of three nodes die: the last one sees 1 of 3, fewer than half, and stops.
    let a = nodes.remove(0);
    let b = nodes.remove(0);
    a.shutdown().await;
    b.shutdown().await;
    eventually(
        "minority sees itself alone",
        Duration::from_secs(15),
        || last.nodes().len() == 1,
    )
    .await;
    eventually(
        "minority stops its children",
        Duration::from_secs(15),
        || keys.iter().all(|k| !last.hosts(k)),
    )
    .await;
    assert_eq!(
        last.start_child::<Hero>("q-new", 1).await.unwrap_err(),
        ChildError::NoQuorum { seen: 1, needed: 2 }
    );
    assert_eq!(
        last.wait_for_quorum(Duration::from_millis(50)).await,
        Err(ChildError::NoQuorum { seen: 1, needed: 2 })
    );
    // wait_for_quorum returns as soon as a second node is back.
    let waiter = tokio::spawn({
        let last = last.clone();
        async move { last.wait_for_quorum(Duration::from_secs(30)).await }
    });
    let seed = nodes[0].gossip_addr().unwrap().to_string();
    let mut config = NodeConfig::local("k1", SECRET).unwrap();
    config.membership.seeds = vec![seed];
    let back = Node::join(config).await.unwrap();
    back.register::<Hero>();
    back.supervisor("q", opts.clone());
    assert_eq!(waiter.await.unwrap(), Ok(()));
    assert!(last.nodes().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_keys_with_their_state_and_no_call_is_lost_or_doubled() {
    let nodes = cluster_of(&["j1", "j2"]).await;
    let keys: Vec<String> = (0..120).map(|i| format!("j-{i}")).collect();
    for k in &keys {
        nodes[0].start_child::<Hero>(k, 1000).await.unwrap();
    }
    // Callers keep fighting through the move; each acknowledged fight must be counted once.
    let fighters = Fighters::start([&nodes[0], &nodes[1]], &keys);
    fighters.carry_on("callers under way", 500).await;
    let mut c = NodeConfig::local("j3", SECRET).unwrap();
    c.membership.seeds = vec![nodes[0].gossip_addr().unwrap().to_string()];
    let newcomer = Node::join(c).await.unwrap();
    newcomer.register::<Hero>();
    eventually(
        "the newcomer hosts its keys",
        Duration::from_secs(15),
        || {
            keys.iter()
                .filter(|k| newcomer.node_for(k.as_bytes()).as_ref() == Some(newcomer.id()))
                .all(|k| newcomer.hosts::<Hero>(k))
        },
    )
    .await;
    fighters
        .carry_on("callers carry on after the move", 500)
        .await;
    let (acked, failed) = fighters.finish().await;
    assert_eq!(failed, 0, "calls failed during the move");
    let moved = keys.iter().filter(|k| newcomer.hosts::<Hero>(k)).count();
    assert!(moved > 10, "only {moved} keys moved to the newcomer");
    for (i, k) in keys.iter().enumerate() {
        let (_, health, fights) = status(&nodes[1], k, Duration::from_secs(5)).await;
        assert_eq!(fights, acked[i], "{k}: fights counted vs acknowledged");
        assert_eq!(health, 1000 - acked[i]);
        let hosting = nodes
            .iter()
            .chain([&newcomer])
            .filter(|n| n.hosts::<Hero>(k))
            .count();
        assert_eq!(hosting, 1, "{k} runs once");
    }
}

/// A burst of directory messages — a join makes the first node hand a thousand children over
/// and replicate as many at once — travels in a few frames, so a small backlog towards the
/// newcomer does not overflow. (One frame per message overflowed it; the reset made the
/// directories reconcile, which re-sent a frame per shared key and overflowed it again: with
/// 100,000 children and the default backlog, a restarted cluster never settled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_directory_messages_does_not_overflow_a_small_backlog() {
    let small = || NodeOptions {
        max_frame: 1 << 20,
        data_queue: 4,
        backlog_frames: 16,
        backlog_bytes: 1 << 20,
        ..NodeOptions::default()
    };
    let mut c = NodeConfig::local("b1", SECRET).unwrap();
    c.transport = small();
    let first = Node::join(c).await.unwrap();
    first.register::<Hero>();
    let keys: Vec<String> = (0..1000).map(|i| format!("b-{i}")).collect();
    for k in &keys {
        first.start_child::<Hero>(k, 10).await.unwrap();
    }
    let mut c = NodeConfig::local("b2", SECRET).unwrap();
    c.membership.seeds = vec![first.gossip_addr().unwrap().to_string()];
    c.transport = small();
    let second = Node::join(c).await.unwrap();
    second.register::<Hero>();
    let nodes = [&first, &second];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut running = 0;
        let mut unreplicated = 0;
        let mut on_second = 0;
        for n in nodes {
            // (A driver busy reconciling without end may not answer.)
            let sup = n.default_supervisor();
            if let Ok(s) = tokio::time::timeout(Duration::from_secs(1), sup.stats()).await {
                running += s.running;
                unreplicated += s.unreplicated;
                if n.id() == second.id() {
                    on_second = s.running;
                }
            }
        }
        if on_second > 300 && running == keys.len() && unreplicated == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {running} running, {unreplicated} unreplicated, resets {:?} / {:?}",
            first.connection_stats(),
            second.connection_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Settled, and the backlog overflowed at most a few times (a busy machine delays the
    // reader; small batches then queue up): one frame per message overflowed it without end
    // (10,171 and 8,885 resets in 30 s, never settled).
    let resets: Vec<u64> = nodes
        .iter()
        .map(|n| n.connection_stats().backlog_resets)
        .collect();
    eprintln!("backlog resets: {resets:?}");
    assert!(resets.iter().all(|r| *r <= 5), "backlog resets {resets:?}");
    for k in keys.iter().step_by(50) {
        let hosting = nodes.iter().filter(|n| n.hosts::<Hero>(k)).count();
        assert_eq!(hosting, 1, "{k} runs once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_placement_runs_a_child_on_the_named_node_and_fails_it_over() {
    let mut nodes = cluster().await;
    let opts = DistOptions {
        distribution: std::sync::Arc::new(Explicit),
        ..DistOptions::default()
    };
    let sups: Vec<_> = nodes
        .iter()
        .map(|n| n.supervisor("pinned", opts.clone()))
        .collect();
    for s in &sups {
        eventually("pinned view", Duration::from_secs(10), || {
            s.nodes().len() == 3
        })
        .await;
    }
    for (i, name) in ["k1", "k2", "k3"].iter().enumerate() {
        let key = format!("{name}/hero");
        sups[(i + 1) % 3]
            .start_child::<Hero>(&key, 7)
            .await
            .unwrap();
        assert!(sups[i].hosts(&key), "{key} runs on {name}");
        assert_eq!(sups[(i + 2) % 3].whereis(&key).unwrap().as_str(), *name);
    }
    // k3 dies: its pinned child fails over to the ring, with its state, callable by the same key.
    sups[0]
        .call::<Hero>("k3/hero", HeroMsg::Fight)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sups[2].stats().await.unreplicated != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let k3 = nodes.remove(2);
    k3.shutdown().await;
    drop(k3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match sups[0]
            .call_timeout::<Hero>("k3/hero", HeroMsg::Status, Duration::from_secs(1))
            .await
        {
            Ok((_, health, fights)) => {
                assert_eq!((health, fights), (6, 1));
                break;
            }
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "k3/hero not back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_its_children_off_with_their_state_and_no_call_is_lost_or_doubled() {
    let mut nodes = cluster_of(&["l1", "l2", "l3"]).await;
    let keys: Vec<String> = (0..150).map(|i| format!("l-{i}")).collect();
    for k in &keys {
        nodes[0].start_child::<Hero>(k, 1000).await.unwrap();
    }
    let leaver = nodes.pop().unwrap();
    let theirs = keys.iter().filter(|k| leaver.hosts::<Hero>(k)).count();
    assert!(theirs > 10);
    let mut events = nodes[0].default_supervisor().events();
    let fighters = Fighters::start([&nodes[0], &nodes[1]], &keys);
    fighters.carry_on("callers under way", 500).await;
    leaver.leave().await;
    drop(leaver);
    fighters
        .carry_on("callers carry on after the leave", 500)
        .await;
    let (acked, failed) = fighters.finish().await;
    assert_eq!(failed, 0, "calls failed during the hand-off");
    for (i, k) in keys.iter().enumerate() {
        let (_, health, fights) = status(&nodes[1], k, Duration::from_secs(5)).await;
        assert_eq!(fights, acked[i], "{k}: fights counted vs acknowledged");
        assert_eq!(health, 1000 - acked[i]);
        assert_eq!(
            nodes.iter().filter(|n| n.hosts::<Hero>(k)).count(),
            1,
            "{k}"
        );
    }
    // Hand-offs, not failovers from backups: the survivors adopted the children.
    let (mut adopted, mut failed_over) = (0, 0);
    while let Ok(e) = events.try_recv() {
        match e.event {
            ChildEvent::Adopted { .. } => adopted += 1,
            ChildEvent::FailedOver { .. } => failed_over += 1,
            _ => {}
        }
    }
    assert!(adopted > 0, "no adoption seen on l1");
    assert_eq!(failed_over, 0, "a graceful leave failed children over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_names_with_separators_never_collide_across_supervisors_or_the_registry() {
    // Export identities are typed: "sep" + "x:k" and "sep:x" + "k" are two children, a
    // supervisor named like the registry's old prefix is a supervisor, and a user export named
    // like a child is a user export.
    let nodes = cluster().await;
    let sups: Vec<_> = ["sep", "sep:x", "reg", "grp"]
        .iter()
        .map(|name| nodes[0].supervisor(name, DistOptions::default()))
        .collect();
    for n in &nodes[1..] {
        for name in ["sep", "sep:x", "reg", "grp"] {
            n.supervisor(name, DistOptions::default());
        }
    }
    for s in &sups {
        eventually("supervisor view", Duration::from_secs(10), || {
            s.nodes().len() == 3
        })
        .await;
    }
    // Keys chosen so that the pairs that would share an export name run on one node: the
    // children "x:<k>" of "sep" and "<k>" of "sep:x"; the child "<n>" of "reg" and the name
    // "<n>" registered on the first node.
    let k = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| nodes[0].node_for(format!("x:{k}").as_bytes()) == nodes[0].node_for(k.as_bytes()))
        .unwrap();
    let n = (0..)
        .map(|i| format!("n{i}"))
        .find(|n| nodes[0].mine(n.as_bytes()))
        .unwrap();
    sups[0]
        .start_child::<Hero>(&format!("x:{k}"), 1)
        .await
        .unwrap();
    sups[1].start_child::<Hero>(&k, 2).await.unwrap();
    sups[2].start_child::<Hero>(&n, 3).await.unwrap();
    sups[3].start_child::<Hero>("1", 4).await.unwrap();
    let named = throng::spawn(Hero::start("named", 5));
    nodes[0].names().register(&n, &named, ()).unwrap();
    for via in &nodes {
        let sup = |name: &str| via.supervisor(name, DistOptions::default());
        let health = |r: Result<(String, u32, u32), CallError>| r.unwrap().1;
        let xk = format!("x:{k}");
        assert_eq!(
            health(sup("sep").call::<Hero>(&xk, HeroMsg::Status).await),
            1
        );
        assert_eq!(
            health(sup("sep:x").call::<Hero>(&k, HeroMsg::Status).await),
            2
        );
        assert_eq!(
            health(sup("reg").call::<Hero>(&n, HeroMsg::Status).await),
            3
        );
        assert_eq!(
            health(sup("grp").call::<Hero>("1", HeroMsg::Status).await),
            4
        );
        let by_name = eventually_lookup(via, &n).await;
        assert_eq!(health(by_name.call(HeroMsg::Status).await), 5);
    }
}

/// The actor registered as `name`, once `via` has heard of it.
async fn eventually_lookup(via: &Node, name: &str) -> ActorRef<Hero> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = via.names().lookup::<Hero>(name) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never visible"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Takes its time to stop (its `stopped` hook waits a minute) and counts the hooks that finished.
struct Slow;

static SLOW_STOPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Actor for Slow {
    type Msg = ();
    type Reply = ();
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
    async fn stopped(&mut self, _reason: &ExitReason, _ctx: &mut Context<Self>) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        SLOW_STOPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl RemoteActor for Slow {
    const TYPE: &'static str = "test.Slow";
}

impl Keyed for Slow {
    type Args = ();
    type State = ();
    fn start(_: &str, _: ()) -> Self {
        Slow
    }
    fn shutdown() -> Shutdown {
        Shutdown::Timeout(Duration::from_millis(100))
    }
}

/// Killed at once when stopped: its `stopped` hook never runs.
struct Brutal;

static BRUTAL_STOPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Actor for Brutal {
    type Msg = ();
    type Reply = ();
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
    async fn stopped(&mut self, _reason: &ExitReason, _ctx: &mut Context<Self>) {
        BRUTAL_STOPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl RemoteActor for Brutal {
    const TYPE: &'static str = "test.Brutal";
}

impl Keyed for Brutal {
    type Args = ();
    type State = ();
    fn start(_: &str, _: ()) -> Self {
        Brutal
    }
    fn shutdown() -> Shutdown {
        Shutdown::Brutal
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_child_type_is_stopped_by_its_own_shutdown() {
    let nodes = cluster().await;
    for n in &nodes {
        n.register::<Slow>();
        n.register::<Brutal>();
    }
    // A stop that would wait a minute for the hook is cut short by the type's 100 ms timeout
    // (the default would wait 5 s); a brutal type is killed without its hook.
    nodes[0].start_child::<Slow>("slow", ()).await.unwrap();
    let slow = nodes[0].node_for("slow".as_bytes()).unwrap();
    let owner = nodes.iter().find(|n| *n.id() == slow).unwrap();
    let handle = owner.child::<Slow>("slow").unwrap();
    let started = std::time::Instant::now();
    nodes[1].terminate_child::<Slow>("slow").await.unwrap();
    eventually("the slow child is killed", Duration::from_secs(4), || {
        handle.exit_reason() == Some(ExitReason::Killed)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(SLOW_STOPPED.load(std::sync::atomic::Ordering::SeqCst), 0);

    nodes[0].start_child::<Brutal>("brutal", ()).await.unwrap();
    let brutal = nodes[0].node_for("brutal".as_bytes()).unwrap();
    let owner = nodes.iter().find(|n| *n.id() == brutal).unwrap();
    let handle = owner.child::<Brutal>("brutal").unwrap();
    nodes[2].terminate_child::<Brutal>("brutal").await.unwrap();
    eventually("the brutal child is killed", Duration::from_secs(4), || {
        handle.exit_reason() == Some(ExitReason::Killed)
    })
    .await;
    assert_eq!(BRUTAL_STOPPED.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uniform_random_placement_spreads_keys_routes_by_key_and_fails_over() {
    let mut nodes = cluster().await;
    let opts = DistOptions {
        distribution: std::sync::Arc::new(UniformRandom),
        ..DistOptions::default()
    };
    let sups: Vec<_> = nodes
        .iter()
        .map(|n| n.supervisor("rand", opts.clone()))
        .collect();
    for s in &sups {
        eventually("rand view", Duration::from_secs(10), || {
            s.nodes().len() == 3
        })
        .await;
    }
    let keys: Vec<String> = (0..90).map(|i| format!("r-{i}")).collect();
    for k in &keys {
        sups[0].start_child::<Hero>(k, 10).await.unwrap();
        sups[1].call::<Hero>(k, HeroMsg::Fight).await.unwrap();
    }
    for (i, s) in sups.iter().enumerate() {
        let here = keys.iter().filter(|k| s.hosts(k)).count();
        assert!(here >= 10, "node {i} hosts {here} of 90");
    }
    // Every key runs where every node computes it, and fails over with its state.
    for k in &keys {
        let owner = sups[2].node_for(k).unwrap();
        assert!(sups.iter().all(|s| s.node_for(k).as_ref() == Some(&owner)));
    }
    let gone = nodes.remove(2);
    gone.shutdown().await;
    for s in &sups[..2] {
        eventually("failover view", Duration::from_secs(15), || {
            s.nodes().len() == 2
        })
        .await;
    }
    for k in &keys {
        let (_, health, fights) = sups[0]
            .call_timeout::<Hero>(k, HeroMsg::Status, Duration::from_secs(15))
            .await
            .unwrap();
        assert_eq!((health, fights), (9, 1), "{k}");
    }
}

/// A node's transport is up, and its peers' views name it, before the application has started
/// its supervisors: a peer hands children to it right away. Those hand-offs are kept until the
/// supervisor starts here and then taken, with their state — not dropped (the hand-off would
/// stay unconfirmed, and its children run nowhere, until the sender gave up on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_that_arrive_before_the_supervisor_starts_are_taken_when_it_starts() {
    let opts = DistOptions::default();
    let mut c = NodeConfig::local("e1", SECRET).unwrap();
    c.membership.seeds = Vec::new();
    let first = Node::join(c).await.unwrap();
    first.register::<Hero>();
    let sup = first.supervisor("late", opts.clone());
    let keys: Vec<String> = (0..60).map(|i| format!("e-{i}")).collect();
    for k in &keys {
        sup.start_child::<Hero>(k, 100).await.unwrap();
        sup.call::<Hero>(k, HeroMsg::Fight).await.unwrap();
    }
    let mut events = sup.events();
    let mut c = NodeConfig::local("e2", SECRET).unwrap();
    c.membership.seeds = vec![first.gossip_addr().unwrap().to_string()];
    let second = Node::join(c).await.unwrap();
    second.register::<Hero>();
    // The first node hands the second its keys (the second has no supervisor "late" yet).
    let theirs: BTreeSet<String> = {
        eventually("both nodes own keys", Duration::from_secs(10), || {
            first.owners().len() == 2
        })
        .await;
        keys.iter()
            .filter(|k| first.node_for(k.as_bytes()).as_ref() == Some(second.id()))
            .cloned()
            .collect()
    };
    assert!(!theirs.is_empty());
    let mut handed = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handed.len() < theirs.len() {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("every key of the second node handed off")
            .expect("events");
        if let ChildEvent::Migrated { key, .. } = e.event {
            handed.insert(key);
        }
    }
    // The hand-offs have left; give them time to arrive before the supervisor exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = second.supervisor("late", opts);
    for k in &theirs {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((_, health, fights)) = late
                .call_timeout::<Hero>(k, HeroMsg::Status, Duration::from_millis(500))
                .await
            {
                assert_eq!((health, fights), (99, 1), "{k} came with its state");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{k} not running 10 s after the supervisor started (its hand-off was lost)"
            );
        }
        assert!(late.hosts(k), "{k} runs on its owner");
    }
}

/// A counter that takes a while to stop: its hand-offs are slow.
struct SlowStop(u32);

impl Actor for SlowStop {
    type Msg = ();
    type Reply = u32;
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<u32> {
        self.0 += 1;
        Ok(self.0)
    }
    async fn stopped(&mut self, _reason: &ExitReason, _ctx: &mut Context<Self>) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl RemoteActor for SlowStop {
    const TYPE: &'static str = "test.SlowStop";
}

impl Keyed for SlowStop {
    type Args = ();
    type State = u32;
    fn start(_: &str, _: ()) -> Self {
        SlowStop(0)
    }
    fn snapshot(&self) -> Option<u32> {
        Some(self.0)
    }
    fn restore(_: &str, _: (), n: u32) -> Self {
        SlowStop(n)
    }
}

/// Keys moving to a node that joined are answered by their old holder until it hands them off:
/// one move at a time of children that take 250 ms to stop makes the newcomer run its last key
/// seconds after the join, and a call to it does not wait for that. (Before, the newcomer
/// answered "no such actor" until then, and a call with a shorter deadline failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_moving_to_a_joiner_is_answered_by_its_old_holder_until_it_moves() {
    let opts = || DistOptions {
        max_moves: 1,
        ..DistOptions::default()
    };
    let nodes = common::cluster_of(&["m1", "m2"], SECRET).await;
    for n in &nodes {
        n.register::<SlowStop>();
    }
    let sups: Vec<_> = nodes.iter().map(|n| n.supervisor("slow", opts())).collect();
    let keys: Vec<String> = (0..48).map(|i| format!("m-{i}")).collect();
    for k in &keys {
        sups[0].start_child::<SlowStop>(k, ()).await.unwrap();
    }
    let mut c = NodeConfig::local("m3", SECRET).unwrap();
    c.membership.seeds = vec![nodes[0].gossip_addr().unwrap().to_string()];
    let newcomer = Node::join(c).await.unwrap();
    newcomer.register::<SlowStop>();
    let new_sup = newcomer.supervisor("slow", opts());
    eventually(
        "every node places keys on m3",
        Duration::from_secs(15),
        || sups.iter().all(|s| s.nodes().len() == 3),
    )
    .await;
    let theirs: Vec<&String> = keys
        .iter()
        .filter(|k| sups[0].node_for(k).as_ref() == Some(newcomer.id()))
        .collect();
    assert!(theirs.len() >= 8, "only {} keys move to m3", theirs.len());
    // Each moving key called once from each old node, at once, with a deadline far shorter
    // than the time the moves take (one at a time, 250 ms each).
    let mut acked = vec![0u32; theirs.len()];
    let calls = theirs.iter().enumerate().flat_map(|(i, k)| {
        sups.iter().map(move |s| async move {
            (
                i,
                s.call_timeout::<SlowStop>(k, (), Duration::from_millis(1500))
                    .await,
            )
        })
    });
    let mut failed = Vec::new();
    for (i, r) in futures_util::future::join_all(calls).await {
        match r {
            Ok(_) => acked[i] += 1,
            Err(e) => failed.push(format!("{}: {e}", theirs[i])),
        }
    }
    let unmoved = theirs.iter().filter(|k| !new_sup.hosts(k)).count();
    assert!(
        unmoved > 0,
        "every key had moved already: the test proves nothing"
    );
    assert!(failed.is_empty(), "calls failed: {failed:?}");
    // Every key ends on m3, each call counted once.
    for (i, k) in theirs.iter().enumerate() {
        eventually("the key runs on m3", Duration::from_secs(30), || {
            new_sup.hosts(k)
        })
        .await;
        let n = new_sup
            .call_timeout::<SlowStop>(k, (), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(n, acked[i] + 1, "{k}: calls counted vs acknowledged");
    }
}
