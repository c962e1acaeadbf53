//! Nodes that join through membership (seeds, failure detection) in one process.

mod common;

use std::time::Duration;

use common::eventually;
use serde::{Deserialize, Serialize};
use throng::cluster::{ClusterEvent, Node, NodeConfig, RemoteActor};
use throng::prelude::*;

struct Echo;

#[derive(Debug, Serialize, Deserialize)]
struct Ping(u32);

impl Actor for Echo {
    type Msg = Ping;
    type Reply = u32;
    async fn handle(&mut self, Ping(n): Ping, _ctx: &mut Context<Self>) -> ActorResult<u32> {
        Ok(n + 1)
    }
}

impl RemoteActor for Echo {
    const TYPE: &'static str = "test.Echo";
}

const SECRET: &[u8] = b"join-test-secret-0123456789";

async fn join(name: &str, seed: Option<std::net::SocketAddr>) -> Node {
    let mut config = NodeConfig::local(name, SECRET).unwrap();
    if let Some(s) = seed {
        config.membership.seeds = vec![s.to_string()];
    }
    Node::join(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_found_by_seed_talk_and_see_each_other_leave() {
    let n1 = join("j1", None).await;
    let seed = n1.gossip_addr();
    let n2 = join("j2", seed).await;
    let n3 = join("j3", seed).await;
    let mut events1 = n1.events();
    for n in [&n1, &n2, &n3] {
        eventually("all three see each other", Duration::from_secs(10), || {
            n.nodes().len() == 3
        })
        .await;
    }
    assert_eq!(
        n2.nodes().iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        vec!["j1", "j2", "j3"]
    );
    // Placement: every node answers node_for the same way, and each owns a share of the keys.
    for n in [&n1, &n2, &n3] {
        eventually("all three own keys", Duration::from_secs(10), || {
            n.owners().len() == 3
        })
        .await;
    }
    let keys: Vec<String> = (0..1000).map(|i| format!("hero-{i}")).collect();
    let before: Vec<_> = keys
        .iter()
        .map(|k| n1.node_for(k.as_bytes()).unwrap())
        .collect();
    for n in [&n2, &n3] {
        let theirs: Vec<_> = keys
            .iter()
            .map(|k| n.node_for(k.as_bytes()).unwrap())
            .collect();
        assert_eq!(theirs, before);
    }
    for n in [&n1, &n2, &n3] {
        let mine = keys.iter().filter(|k| n.mine(k.as_bytes())).count();
        assert!(
            (200..=470).contains(&mine),
            "{} owns {mine} of 1000",
            n.id()
        );
    }
    n3.export("echo", &throng::spawn(Echo)).unwrap();
    let echo: ActorRef<Echo> = n1.remote(n3.id(), "echo");
    assert_eq!(echo.call(Ping(41)).await.unwrap(), 42);

    n3.leave().await;
    let mut leaving_seen = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, events1.recv())
            .await
            .expect("events in time")
            .unwrap();
        match e {
            ClusterEvent::NodeLeaving(m) if m.id.as_str() == "j3" => leaving_seen = true,
            ClusterEvent::NodeDown(m) if m.id.as_str() == "j3" => break,
            _ => {}
        }
    }
    assert!(leaving_seen, "leaving is announced before down");
    // Only the keys of the node that left move; the survivors agree on the new owners.
    for n in [&n1, &n2] {
        eventually("j3 off the ring", Duration::from_secs(10), || {
            n.owners().len() == 2
        })
        .await;
    }
    for (k, old) in keys.iter().zip(&before) {
        let now = n1.node_for(k.as_bytes()).unwrap();
        assert_eq!(now, n2.node_for(k.as_bytes()).unwrap());
        if old.as_str() != "j3" {
            assert_eq!(&now, old, "key {k} moved although its owner stayed");
        } else {
            assert_ne!(now.as_str(), "j3");
        }
    }
    // Calls to a node that left fail fast with a typed error.
    assert_eq!(
        echo.call(Ping(1)).await.unwrap_err(),
        CallError::NodeDown("j3".into())
    );
    assert_eq!(echo.monitor().await, ExitReason::NodeDown("j3".into()));
}

/// A listener's picture of the cluster: the subscription's snapshot, then its events in order.
fn picture(
    sub: &mut throng::cluster::ClusterSubscription,
    seen: &mut std::collections::BTreeSet<String>,
) {
    let mut apply = |e: ClusterEvent| match e {
        ClusterEvent::NodeUp(m) => {
            seen.insert(m.id.to_string());
        }
        ClusterEvent::NodeDown(m) => {
            seen.remove(m.id.as_str());
        }
        _ => {}
    };
    for e in std::mem::take(&mut sub.members) {
        apply(ClusterEvent::NodeUp(e.info));
    }
    while let Ok(e) = sub.events.try_recv() {
        apply(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_subscribed_right_after_join_hears_of_every_member() {
    // Each node subscribes the moment `join` returns, while membership is still gathering the
    // others: whatever membership found before the subscription must be in its snapshot, and
    // whatever it finds after must come as events. Run on a busy machine, the old pair
    // `events()` + `members()` missed members here.
    let names = ["l1", "l2", "l3", "l4", "l5"];
    let first = join(names[0], None).await;
    let seed = first.gossip_addr();
    let mut subs = vec![first.subscribe()];
    let mut nodes = vec![first];
    for name in &names[1..] {
        let n = join(name, seed).await;
        subs.push(n.subscribe());
        nodes.push(n);
    }
    let mut pictures = vec![std::collections::BTreeSet::new(); names.len()];
    for (i, n) in nodes.iter().enumerate() {
        let want: std::collections::BTreeSet<String> = names
            .iter()
            .filter(|m| **m != n.id().as_str())
            .map(|m| m.to_string())
            .collect();
        let (sub, seen) = (&mut subs[i], &mut pictures[i]);
        eventually(
            &format!("{} hears of every other member", n.id()),
            Duration::from_secs(20),
            || {
                picture(sub, seen);
                *seen == want
            },
        )
        .await;
        // What the listener was told is what the node says.
        let members: std::collections::BTreeSet<String> =
            n.members().iter().map(|m| m.id.to_string()).collect();
        assert_eq!(members, want);
    }
}
