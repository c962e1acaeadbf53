//! The cluster-wide name registry: registrations visible on every node (and at once on their own),
//! lookups that reach the actor from anywhere, metadata, select/count, groups, removal on actor exit
//! and node down, one winner for concurrent registrations, full-state sync for a late joiner, and
//! the visibility latency and bulk-registration throughput on three loopback nodes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::eventually;
use serde::{Deserialize, Serialize};
use throng::cluster::{
    NameError, Names, NamesError, NamesEvent, Node, NodeConfig, OnConflict, RemoteActor,
};
use throng::prelude::*;

/// Answers with its label.
struct Echo(String);

#[derive(Debug, Clone, Serialize, Deserialize)]
enum EchoMsg {
    Who,
}

impl Actor for Echo {
    type Msg = EchoMsg;
    type Reply = String;
    async fn handle(&mut self, _msg: EchoMsg, _ctx: &mut Context<Self>) -> ActorResult<String> {
        Ok(self.0.clone())
    }
}

impl RemoteActor for Echo {
    const TYPE: &'static str = "test.Echo";
}

/// Another actor type, to check that lookups are typed.
struct Other;

impl Actor for Other {
    type Msg = ();
    type Reply = ();
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
}

impl RemoteActor for Other {
    const TYPE: &'static str = "test.Other";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    color: String,
    weight: u32,
}

const SECRET: &[u8] = b"names-test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(10);

async fn cluster_of(names: &[&str]) -> Vec<Node> {
    common::cluster_of(names, SECRET).await
}

async fn cluster() -> Vec<Node> {
    cluster_of(&["n1", "n2", "n3"]).await
}

fn echo(label: &str) -> ActorRef<Echo> {
    throng::spawn(Echo(label.to_owned()))
}

fn registries(nodes: &[Node]) -> Vec<Names> {
    nodes.iter().map(Node::names).collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_is_seen_at_once_locally_and_soon_everywhere() {
    let nodes = cluster().await;
    let regs = registries(&nodes);
    let a = echo("alpha");
    regs[0].register("alpha", &a, ()).unwrap();
    // The registering node sees it at once, as the local actor itself.
    let local = regs[0].lookup::<Echo>("alpha").unwrap();
    assert!(local.is_local());
    assert_eq!(local.call(EchoMsg::Who).await.unwrap(), "alpha");
    assert_eq!(regs[0].whereis("alpha").as_ref(), Some(nodes[0].id()));
    for r in &regs[1..] {
        eventually("alpha visible", WAIT, || r.whereis("alpha").is_some()).await;
        assert_eq!(r.whereis("alpha").as_ref(), Some(nodes[0].id()));
        let remote = r.lookup::<Echo>("alpha").unwrap();
        assert!(!remote.is_local());
        assert_eq!(remote.call(EchoMsg::Who).await.unwrap(), "alpha");
        // Typed: an `Echo` is not an `Other`.
        assert!(r.lookup::<Other>("alpha").is_none());
    }
    // Taken, wherever it is registered.
    let b = echo("beta");
    assert_eq!(
        regs[1].register("alpha", &b, ()),
        Err(NamesError::Table(NameError::Taken {
            name: "alpha".into(),
            owner: nodes[0].id().clone(),
        }))
    );
    // Only local actors; only live ones; only the owner unregisters.
    let remote = regs[1].lookup::<Echo>("alpha").unwrap();
    assert_eq!(
        regs[1].register("x", &remote, ()),
        Err(NamesError::NotLocal)
    );
    let dead = echo("dead");
    dead.stop(ExitReason::Normal);
    dead.handle().monitor().await;
    assert_eq!(
        regs[0].register("dead", &dead, ()),
        Err(NamesError::NotAlive(dead.id()))
    );
    assert!(matches!(
        regs[1].unregister("alpha"),
        Err(NamesError::Table(NameError::NotRegistered { .. }))
    ));
    assert!(matches!(
        regs[0].register("", &b, ()),
        Err(NamesError::Table(NameError::EmptyName))
    ));
    // Unregistering drops it everywhere; the actor keeps running, and the name can be taken again.
    regs[0].unregister("alpha").unwrap();
    assert!(regs[0].whereis("alpha").is_none());
    for r in &regs {
        eventually("alpha gone", WAIT, || r.whereis("alpha").is_none()).await;
    }
    assert!(a.is_alive());
    regs[1].register("alpha", &b, ()).unwrap();
    for r in &regs {
        eventually("alpha moved", WAIT, || {
            r.whereis("alpha").as_ref() == Some(nodes[1].id())
        })
        .await;
    }
    let moved = regs[0].lookup::<Echo>("alpha").unwrap();
    assert_eq!(moved.call(EchoMsg::Who).await.unwrap(), "beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visibility_latency_over_a_thousand_registrations() {
    let nodes = cluster().await;
    let regs = registries(&nodes);
    let actors: Vec<ActorRef<Echo>> = (0..3).map(|i| echo(&format!("a{i}"))).collect();
    let mut lat = Vec::with_capacity(1000);
    for i in 0..1000usize {
        let from = i % 3;
        let name = format!("lat-{i}");
        let start = Instant::now();
        regs[from].register(&name, &actors[from], ()).unwrap();
        eventually("registration visible everywhere", WAIT, || {
            regs.iter().all(|r| r.whereis(&name).is_some())
        })
        .await;
        lat.push(start.elapsed());
    }
    lat.sort();
    let (p50, p99, max) = (pct(&lat, 0.5), pct(&lat, 0.99), lat[lat.len() - 1]);
    println!(
        "registry visibility on 3 loopback nodes (1000 registrations): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    // The target is 50 ms; shared CI machines are noisy, so only a gross regression fails here.
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_resolve_to_one_winner_everywhere() {
    contest(OnConflict::Keep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_loser_is_stopped_when_its_node_stops_losers() {
    contest(OnConflict::Stop).await;
}

/// The next conflict among `events` (registrations and unregistrations are skipped).
async fn next_conflict(events: &mut tokio::sync::broadcast::Receiver<NamesEvent>) -> NamesEvent {
    loop {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("conflict event")
            .unwrap();
        if matches!(e, NamesEvent::Conflict { .. }) {
            return e;
        }
    }
}

/// Two nodes register one name concurrently: one winner everywhere; the loser's node is told, and
/// its actor keeps running or is stopped as `on_conflict` says.
async fn contest(on_conflict: OnConflict) {
    let mut nodes = Vec::new();
    let mut seed: Option<String> = None;
    for name in ["c1", "c2", "c3"] {
        let mut c = NodeConfig::local(name, SECRET).unwrap();
        c.transport.name_conflicts = on_conflict;
        if let Some(s) = &seed {
            c.membership.seeds = vec![s.clone()];
        }
        let n = Node::join(c).await.unwrap();
        seed.get_or_insert_with(|| n.gossip_addr().unwrap().to_string());
        nodes.push(n);
    }
    for n in &nodes {
        eventually("connected", WAIT, || {
            nodes
                .iter()
                .all(|o| o.id() == n.id() || n.is_connected(o.id()))
        })
        .await;
    }
    let regs = registries(&nodes);
    let mut events = [regs[0].events(), regs[1].events()];
    // Register the same name on two nodes back to back, before either can see the other's; retry
    // with a fresh name in the (unlikely) case one already saw the other's.
    let mut contest = None;
    for round in 0..50 {
        let name = format!("contested-{round}");
        let (a, b) = (echo("on-n1"), echo("on-n2"));
        let ra = regs[0].register(&name, &a, "c1");
        let rb = regs[1].register(&name, &b, "c2");
        if ra.is_ok() && rb.is_ok() {
            contest = Some((name, a, b));
            break;
        }
    }
    let (name, a, b) = contest.expect("no concurrent registration in 50 tries");
    // Everyone converges on the same single winner.
    for r in &regs {
        eventually("one winner", WAIT, || {
            let w = r.whereis(&name);
            w.is_some() && regs.iter().all(|o| o.whereis(&name) == w)
        })
        .await;
    }
    let winner = regs[2].whereis(&name).unwrap();
    let (loser_node, loser_actor, winner_actor, winner_label) = if &winner == nodes[0].id() {
        (1, b.clone(), a.clone(), "on-n1")
    } else {
        assert_eq!(&winner, nodes[1].id());
        (0, a.clone(), b.clone(), "on-n2")
    };
    // The loser's node is told; its actor keeps running (or is stopped) without the name.
    let stop = on_conflict == OnConflict::Stop;
    assert_eq!(
        next_conflict(&mut events[loser_node]).await,
        NamesEvent::Conflict {
            name: name.clone(),
            winner: winner.clone(),
            actor: loser_actor.id(),
            stopped: stop,
        }
    );
    if stop {
        eventually("the loser stops", WAIT, || !loser_actor.is_alive()).await;
        assert_eq!(
            loser_actor.exit_reason(),
            Some(ExitReason::NameConflict {
                name: name.as_str().into(),
                winner: winner.as_str().into(),
            })
        );
    } else {
        assert!(loser_actor.is_alive());
    }
    assert!(winner_actor.is_alive());
    assert!(matches!(
        regs[loser_node].unregister(&name),
        Err(NamesError::Table(NameError::NotRegistered { .. }))
    ));
    // Every node reaches the winner's actor, with the winner's metadata.
    for r in &regs {
        let found = r.lookup::<Echo>(&name).unwrap();
        assert_eq!(found.call(EchoMsg::Who).await.unwrap(), winner_label);
        let meta: String = r.meta(&name).unwrap().unwrap();
        assert_eq!(meta, winner.as_str());
    }
    // The winner's node has no conflict.
    while let Ok(e) = events[1 - loser_node].try_recv() {
        assert!(!matches!(e, NamesEvent::Conflict { .. }), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actor_exit_removes_its_names_and_memberships_everywhere() {
    let nodes = cluster().await;
    let regs = registries(&nodes);
    let a = echo("mortal");
    regs[1].register("mortal", &a, ()).unwrap();
    regs[1].register("mortal-alias", &a, ()).unwrap();
    regs[1].join("mortals", &a, ()).unwrap();
    let keep = echo("keeper");
    regs[1].register("keeper", &keep, ()).unwrap();
    for r in &regs {
        eventually("registered", WAIT, || {
            r.count() == 3 && r.count_members("mortals") == 1
        })
        .await;
    }
    a.stop(ExitReason::Normal);
    for r in &regs {
        eventually("names of the exited actor gone", WAIT, || {
            r.count() == 1 && r.count_members("mortals") == 0
        })
        .await;
        assert_eq!(r.keys(), vec!["keeper".to_owned()]);
        assert!(r.groups().is_empty());
    }
    // A crash too.
    keep.kill();
    for r in &regs {
        eventually("killed actor's name gone", WAIT, || r.count() == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_select_and_count() {
    let nodes = cluster().await;
    let regs = registries(&nodes);
    let colors = ["red", "blue", "red", "green", "red", "blue"];
    let mut actors = Vec::new();
    for (i, color) in colors.iter().enumerate() {
        let a = echo(&format!("m{i}"));
        let meta = Meta {
            color: (*color).into(),
            weight: i as u32,
        };
        regs[i % 3].register(&format!("m{i}"), &a, meta).unwrap();
        actors.push(a);
    }
    for r in &regs {
        eventually("all registered", WAIT, || r.count() == colors.len()).await;
        let mut red: Vec<String> = r
            .select(|_, _, m: &Meta| m.color == "red")
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        red.sort();
        assert_eq!(red, vec!["m0", "m2", "m4"]);
        let heavy_on_n2: Vec<(String, Meta)> = r
            .select(|_, node, m: &Meta| node == nodes[1].id() && m.weight >= 4)
            .into_iter()
            .map(|(n, _, m)| (n, m))
            .collect();
        assert_eq!(
            heavy_on_n2,
            vec![(
                "m4".to_owned(),
                Meta {
                    color: "red".into(),
                    weight: 4
                }
            )]
        );
        let m3: Meta = r.meta("m3").unwrap().unwrap();
        assert_eq!(m3.color, "green");
        assert!(r.meta::<Meta>("nope").unwrap().is_none());
        // Metadata of another type does not decode (and select skips it).
        assert!(r.select(|_, _, _: &bool| true).is_empty());
        assert!(matches!(r.meta::<bool>("m0"), Err(NamesError::Decode(_))));
    }
    // Metadata updates replicate; only the owner may update.
    let new = Meta {
        color: "purple".into(),
        weight: 99,
    };
    regs[0].update_meta("m0", new.clone()).unwrap();
    assert!(matches!(
        regs[1].update_meta("m0", new.clone()),
        Err(NamesError::Table(NameError::NotRegistered { .. }))
    ));
    for r in &regs {
        eventually("meta updated", WAIT, || {
            r.meta::<Meta>("m0").ok().flatten().as_ref() == Some(&new)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_span_nodes() {
    let nodes = cluster().await;
    let regs = registries(&nodes);
    let mut actors = Vec::new();
    for (i, r) in regs.iter().enumerate() {
        for k in 0..2 {
            let a = echo(&format!("w{i}{k}"));
            r.join("workers", &a, i as u32).unwrap();
            actors.push(a);
        }
    }
    // Joining again only updates the metadata; groups hold any actor type.
    regs[0].join("workers", &actors[0], 7u32).unwrap();
    let other = throng::spawn(Other);
    regs[2].join("workers", &other, 2u32).unwrap();
    regs[2].join("others", &other, 2u32).unwrap();
    for r in &regs {
        eventually("members everywhere", WAIT, || {
            r.count_members("workers") == 7
        })
        .await;
        let mut labels = BTreeSet::new();
        for m in r.members::<Echo>("workers") {
            labels.insert(m.call(EchoMsg::Who).await.unwrap());
        }
        let expected: BTreeSet<String> = ["w00", "w01", "w10", "w11", "w20", "w21"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(labels, expected);
        let mut metas: Vec<u32> = r
            .members_meta::<Echo, u32>("workers")
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        metas.sort();
        assert_eq!(metas, vec![0, 1, 1, 2, 2, 7]);
        assert_eq!(r.members::<Other>("workers").len(), 1);
        let mut groups = r.groups();
        groups.sort();
        assert_eq!(groups, vec!["others", "workers"]);
        let per_node = r.member_nodes("workers");
        assert_eq!(
            per_node,
            vec![
                (nodes[0].id().clone(), 2),
                (nodes[1].id().clone(), 2),
                (nodes[2].id().clone(), 3)
            ]
        );
    }
    // Leaving replicates; leaving twice is an error; only local actors.
    regs[1].leave("workers", &actors[2]).unwrap();
    assert!(matches!(
        regs[1].leave("workers", &actors[2]),
        Err(NamesError::Table(NameError::NotMember { .. }))
    ));
    let remote = regs[0].members::<Echo>("workers");
    let remote = remote.iter().find(|m| !m.is_local()).unwrap();
    assert_eq!(regs[0].leave("workers", remote), Err(NamesError::NotLocal));
    for r in &regs {
        eventually("member left", WAIT, || r.count_members("workers") == 6).await;
    }
    // The actor that left all its groups still runs, but is no longer reachable through them.
    assert!(actors[2].is_alive());
    // `other` stays in "others" after leaving "workers".
    regs[2].leave("workers", &other).unwrap();
    for r in &regs {
        eventually("other left workers", WAIT, || {
            r.count_members("workers") == 5 && r.count_members("others") == 1
        })
        .await;
        let o = r.members::<Other>("others");
        assert_eq!(o.len(), 1);
        o[0].call(()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_node_loses_its_names_and_a_new_node_gets_everything() {
    let mut nodes = cluster().await;
    let regs = registries(&nodes);
    let mut actors = Vec::new();
    for (i, r) in regs.iter().enumerate() {
        for k in 0..50 {
            let a = echo(&format!("d{i}-{k}"));
            r.register(&format!("d{i}-{k}"), &a, i).unwrap();
            r.join("all", &a, ()).unwrap();
            actors.push(a);
        }
    }
    for r in &regs {
        eventually("all registered", WAIT, || {
            r.count() == 150 && r.count_members("all") == 150
        })
        .await;
    }
    // A late joiner receives every node's full state.
    let mut c = NodeConfig::local("n4", SECRET).unwrap();
    c.membership.seeds = vec![nodes[0].gossip_addr().unwrap().to_string()];
    let late = Node::join(c).await.unwrap();
    let late_reg = late.names();
    eventually("late node synced", WAIT, || {
        late_reg.count() == 150 && late_reg.count_members("all") == 150
    })
    .await;
    let found = late_reg.lookup::<Echo>("d2-7").unwrap();
    assert_eq!(found.call(EchoMsg::Who).await.unwrap(), "d2-7");
    // n3 crashes (no leave): everyone else drops its names and memberships.
    let victim = nodes.pop().unwrap();
    victim.shutdown().await;
    for r in regs[..2].iter().chain([&late_reg]) {
        eventually(
            "names of the down node dropped",
            Duration::from_secs(20),
            || r.count() == 100 && r.count_members("all") == 100,
        )
        .await;
        assert!(r.whereis("d2-0").is_none());
        assert_eq!(r.whereis("d1-0").as_ref(), Some(nodes[1].id()));
    }
    // Its names are free again.
    let again = echo("again");
    regs[0].register("d2-0", &again, ()).unwrap();
    eventually("re-registered", WAIT, || {
        late_reg.whereis("d2-0").as_ref() == Some(nodes[0].id())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_joiner_gets_a_large_state_in_parts() {
    // Small frames, so that full states travel in many parts.
    let config = |name: &str| {
        let mut c = NodeConfig::local(name, SECRET).unwrap();
        c.transport.max_frame = 16 * 1024;
        c
    };
    let first = Node::join(config("s1")).await.unwrap();
    let seed = first.gossip_addr().unwrap().to_string();
    let regs = [first.names()];
    let actors: Vec<ActorRef<Echo>> = (0..4).map(|i| echo(&format!("s{i}"))).collect();
    for i in 0..2000usize {
        let meta = format!("metadata of entry number {i}");
        regs[0]
            .register(&format!("big-{i}"), &actors[i % 4], meta)
            .unwrap();
    }
    for (i, a) in actors.iter().enumerate() {
        regs[0].join("big", a, i).unwrap();
    }
    let mut c = config("s2");
    c.membership.seeds = vec![seed];
    let late = Node::join(c).await.unwrap();
    let late_reg = late.names();
    eventually("late node synced", WAIT, || {
        late_reg.count() == 2000 && late_reg.count_members("big") == 4
    })
    .await;
    let meta: String = late_reg.meta("big-1234").unwrap().unwrap();
    assert_eq!(meta, "metadata of entry number 1234");
    let found = late_reg.lookup::<Echo>("big-1999").unwrap();
    assert_eq!(found.call(EchoMsg::Who).await.unwrap(), "s3");
    // And deltas keep flowing after the sync, both ways.
    late_reg.register("from-late", &echo("late"), ()).unwrap();
    regs[0].unregister("big-0").unwrap();
    eventually("deltas after sync", WAIT, || {
        regs[0].whereis("from-late").is_some() && late_reg.whereis("big-0").is_none()
    })
    .await;
}

/// Registers `per_node` names on each of `nodes` at once (on 10 actors per node) and returns how
/// long it took until every node saw all of them.
async fn bulk(nodes: &[Node], per_node: usize) -> (Duration, Duration) {
    let regs = registries(nodes);
    let total = per_node * nodes.len();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, r) in regs.iter().enumerate() {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let actors: Vec<ActorRef<Echo>> = (0..10).map(|k| echo(&format!("b{i}-{k}"))).collect();
            for k in 0..per_node {
                r.register(&format!("bulk-{i}-{k}"), &actors[k % 10], ())
                    .unwrap();
            }
            actors
        }));
    }
    let mut actors = Vec::new();
    for t in tasks {
        actors.push(t.await.unwrap());
    }
    let registered = start.elapsed();
    eventually(
        "all names visible everywhere",
        Duration::from_secs(60),
        || regs.iter().all(|r| r.count() == total),
    )
    .await;
    (registered, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_names_across_three_nodes() {
    let nodes = cluster().await;
    let (registered, visible) = bulk(&nodes, 6_667).await;
    println!(
        "20,001 names on 3 nodes: registered in {:.0} ms, visible everywhere after {:.0} ms",
        registered.as_secs_f64() * 1e3,
        visible.as_secs_f64() * 1e3
    );
}

/// The throughput target: 100,000 names in under 2 s. Run in release:
/// `cargo test --release -p throng --test names -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "throughput measurement; run in release"]
async fn hundred_thousand_names_across_three_nodes() {
    let nodes = cluster().await;
    let (registered, visible) = bulk(&nodes, 33_334).await;
    println!(
        "100,002 names on 3 nodes: registered in {:.0} ms, visible everywhere after {:.0} ms",
        registered.as_secs_f64() * 1e3,
        visible.as_secs_f64() * 1e3
    );
    assert!(visible < Duration::from_secs(2), "{visible:?}");
}

/// The visibility target (p99 under 50 ms), measured without the 1 ms polling step of
/// `eventually`: the test task yields between checks instead of sleeping. Run in release:
/// `cargo test --release -p throng --test names -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "latency measurement; run in release"]
async fn visibility_latency_precise() {
    let nodes = cluster().await;
    let regs = registries(&nodes);
    let actors: Vec<ActorRef<Echo>> = (0..3).map(|i| echo(&format!("p{i}"))).collect();
    let mut lat = Vec::with_capacity(5000);
    for i in 0..5000usize {
        let from = i % 3;
        let name = format!("precise-{i}");
        let start = Instant::now();
        regs[from].register(&name, &actors[from], ()).unwrap();
        while !regs.iter().all(|r| r.whereis(&name).is_some()) {
            assert!(start.elapsed() < WAIT, "{name} not visible");
            tokio::task::yield_now().await;
        }
        lat.push(start.elapsed());
    }
    lat.sort();
    let (p50, p99, max) = (pct(&lat, 0.5), pct(&lat, 0.99), lat[lat.len() - 1]);
    println!(
        "registry visibility on 3 loopback nodes (5000 registrations, yield polling): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_matching_dispatch_and_the_names_an_actor_holds() {
    let nodes = cluster_of(&["r1", "r2"]).await;
    let regs = registries(&nodes);
    let mut events = regs[0].events();
    let meta = |color: &str, weight: u32| Meta {
        color: color.into(),
        weight,
    };
    // Listeners hear this node's registrations.
    let alpha = echo("alpha");
    regs[0].register("alpha", &alpha, meta("red", 1)).unwrap();
    regs[0]
        .register("alpha-2", &alpha, meta("blue", 2))
        .unwrap();
    for name in ["alpha", "alpha-2"] {
        assert_eq!(
            events.recv().await.unwrap(),
            NamesEvent::Registered {
                name: name.into(),
                actor: alpha.id()
            }
        );
    }
    assert_eq!(regs[0].names_of(alpha.id()), vec!["alpha", "alpha-2"]);
    // A group across both nodes, matched on its metadata from either node.
    let members: Vec<ActorRef<Echo>> = (0..6).map(|i| echo(&format!("m{i}"))).collect();
    for (i, m) in members.iter().enumerate() {
        let color = if i % 2 == 0 { "red" } else { "blue" };
        regs[0].join("g", m, meta(color, i as u32)).unwrap();
    }
    let far = echo("far");
    let far_ref = nodes[1].names();
    far_ref.join("g", &far, meta("red", 100)).unwrap();
    assert_eq!(regs[0].groups_of(members[0].id()), vec!["g"]);
    for r in &regs {
        eventually("the group everywhere", WAIT, || r.count_members("g") == 7).await;
        let heavy_red = r.match_members::<Echo, Meta>("g", |m| m.color == "red" && m.weight >= 2);
        let mut labels = Vec::new();
        for (a, m) in &heavy_red {
            assert!(m.color == "red" && m.weight >= 2);
            labels.push(a.call(EchoMsg::Who).await.unwrap());
        }
        labels.sort();
        assert_eq!(labels, vec!["far", "m2", "m4"]);
        assert_eq!(r.count_match::<Meta>("g", |m| m.color == "blue"), 3);
        assert_eq!(r.count_match::<Meta>("g", |m| m.weight > 1000), 0);
        assert_eq!(r.dispatch::<Echo>("g", EchoMsg::Who).await, 7);
        // Another type's members are not matched or dispatched to.
        assert!(r.match_members::<Other, Meta>("g", |_| true).is_empty());
        assert_eq!(r.dispatch::<Other>("g", ()).await, 0);
    }
    // update_value: the new metadata from the current one, seen everywhere.
    let (new, old) = regs[0]
        .update_meta_with("alpha", |m: Meta| Meta {
            weight: m.weight + 41,
            ..m
        })
        .unwrap();
    assert_eq!((old.weight, new.weight), (1, 42));
    eventually("the new value everywhere", WAIT, || {
        regs[1].meta::<Meta>("alpha").ok().flatten() == Some(new.clone())
    })
    .await;
    assert!(matches!(
        regs[1].update_meta_with("alpha", |m: Meta| m),
        Err(NamesError::Table(NameError::NotRegistered { .. }))
    ));
    // unregister_match drops this node's matching names; leave_match one membership.
    assert_eq!(
        regs[0].unregister_match::<Meta>(|_, m| m.color == "blue"),
        1
    );
    assert_eq!(regs[0].names_of(alpha.id()), vec!["alpha"]);
    let mut unregistered = None;
    while unregistered.is_none() {
        if let NamesEvent::Unregistered { name, actor } = events.recv().await.unwrap() {
            unregistered = Some((name, actor));
        }
    }
    assert_eq!(unregistered, Some(("alpha-2".into(), alpha.id())));
    assert!(!regs[0]
        .leave_match::<Echo, Meta>("g", &members[1], |m| m.color == "red")
        .unwrap());
    assert!(regs[0]
        .leave_match::<Echo, Meta>("g", &members[1], |m| m.color == "blue")
        .unwrap());
    eventually("the membership dropped everywhere", WAIT, || {
        regs.iter()
            .all(|r| r.count_match::<Meta>("g", |m| m.color == "blue") == 2)
    })
    .await;
    assert!(regs[0].groups_of(members[1].id()).is_empty());
    // An actor that exits: its names are dropped and listeners are told.
    alpha.stop(ExitReason::Shutdown);
    loop {
        if let NamesEvent::Unregistered { name, actor } = events.recv().await.unwrap() {
            assert_eq!((name.as_str(), actor), ("alpha", alpha.id()));
            break;
        }
    }
}
