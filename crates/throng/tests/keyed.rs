//! Keyed children: registered types, placement on the key's owner, addressing by key from any
//! node, typed start errors, restarts behind a stable name.

mod common;

use std::time::Duration;

use common::eventually;
use serde::{Deserialize, Serialize};
use throng::cluster::{ChildError, Keyed, Node, NodeConfig, RemoteActor};
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
    fn start(key: &str, health: u32) -> Self {
        Hero {
            key: key.to_owned(),
            health,
            fights: 0,
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
    fn start(_: &str, _: ()) -> Self {
        Rare
    }
}

const SECRET: &[u8] = b"keyed-test-secret-0123456789";

async fn cluster() -> Vec<Node> {
    let first = Node::join(NodeConfig::local("k1", SECRET).unwrap())
        .await
        .unwrap();
    let seed = first.gossip_addr().unwrap().to_string();
    let mut nodes = vec![first];
    for name in ["k2", "k3"] {
        let mut c = NodeConfig::local(name, SECRET).unwrap();
        c.membership.seeds = vec![seed.clone()];
        nodes.push(Node::join(c).await.unwrap());
    }
    for n in &nodes {
        eventually("ring of three", Duration::from_secs(10), || {
            n.owners().len() == 3
        })
        .await;
        n.register::<Hero>();
    }
    for n in &nodes {
        for other in &nodes {
            if other.id() != n.id() {
                eventually("connected", Duration::from_secs(10), || {
                    n.is_connected(other.id())
                })
                .await;
            }
        }
    }
    nodes
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
    for (node, ty, key) in &listed {
        assert_eq!(ty, "test.Hero");
        assert_eq!(node, &nodes[0].node_for(key.as_bytes()).unwrap());
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
    // The supervisor on the owner restarts it (from its args) and re-exports it under its key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let by_key = nodes[1].child::<Hero>("batman").unwrap();
        match by_key.call(HeroMsg::Status).await {
            Ok(status) => {
                assert_eq!(
                    status,
                    ("batman".to_string(), 100, 0),
                    "restarted from its args"
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
