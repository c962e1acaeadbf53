//! Partial partitions in one process: gossip cut by relays while the nodes' TCP connections stay
//! up (see `common::GossipRelays`). A side runs every key it holds a copy of; a quorum minority
//! stops its children, and after the heal every child runs again, once, with its state.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, GossipRelays};
use serde::{Deserialize, Serialize};
use throng::cluster::{DistOptions, DistSupervisor, Keyed, Node, RemoteActor};
use throng::prelude::*;
use throng_core::directory::{Distribution, Uniform};
use throng_core::{NodeId, Ring, RingConfig};

/// A counter that keeps its count across failovers and moves.
struct Tally(u64);

#[derive(Debug, Serialize, Deserialize)]
enum TallyMsg {
    Add,
    Get,
}

impl Actor for Tally {
    type Msg = TallyMsg;
    type Reply = u64;
    async fn handle(&mut self, msg: TallyMsg, _ctx: &mut Context<Self>) -> ActorResult<u64> {
        if let TallyMsg::Add = msg {
            self.0 += 1;
        }
        Ok(self.0)
    }
}

impl RemoteActor for Tally {
    const TYPE: &'static str = "test.Tally";
}

impl Keyed for Tally {
    type Args = ();
    type State = u64;
    fn start(_: &str, _: ()) -> Self {
        Tally(0)
    }
    fn snapshot(&self) -> Option<u64> {
        Some(self.0)
    }
    fn restore(_: &str, _: (), n: u64) -> Self {
        Tally(n)
    }
}

const SECRET: &[u8] = b"partition-test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// The nodes of `sups` that run `key`.
fn hosting(sups: &[DistSupervisor], key: &str) -> Vec<usize> {
    (0..sups.len()).filter(|&i| sups[i].hosts(key)).collect()
}

/// Waits until every key of `keys` runs exactly once among `sups` and answers `Get` with its
/// expected count through `via`.
async fn every_child_runs_once_with_its_state(
    what: &str,
    sups: &[DistSupervisor],
    via: &DistSupervisor,
    keys: &BTreeMap<String, u64>,
) {
    eventually(what, WAIT, || {
        keys.keys().all(|k| hosting(sups, k).len() == 1)
    })
    .await;
    for (k, want) in keys {
        let got = via
            .call_timeout::<Tally>(k, TallyMsg::Get, Duration::from_secs(10))
            .await;
        assert_eq!(got, Ok(*want), "{what}: {k}");
    }
}

async fn cluster(
    names: &[&str],
    sup: &str,
    opts: DistOptions,
) -> (GossipRelays, Vec<Node>, Vec<DistSupervisor>) {
    let (relays, nodes) = GossipRelays::cluster(names, SECRET).await;
    for n in &nodes {
        n.register::<Tally>();
    }
    let sups: Vec<DistSupervisor> = nodes
        .iter()
        .map(|n| n.supervisor(sup, opts.clone()))
        .collect();
    for s in &sups {
        eventually("supervisor view", WAIT, || s.nodes().len() == names.len()).await;
    }
    (relays, nodes, sups)
}

/// Starts `count` children through `via`, each counted up `i % 3 + 1` times; returns their
/// counts.
async fn start_counted(via: &DistSupervisor, prefix: &str, count: usize) -> BTreeMap<String, u64> {
    let mut keys = BTreeMap::new();
    for i in 0..count {
        let k = format!("{prefix}-{i}");
        via.start_child::<Tally>(&k, ()).await.unwrap();
        let adds = (i % 3 + 1) as u64;
        for _ in 0..adds {
            via.call::<Tally>(&k, TallyMsg::Add).await.unwrap();
        }
        keys.insert(k, adds);
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_minority_that_heals_loses_no_child() {
    let opts = DistOptions {
        quorum: Some(3),
        ..DistOptions::default()
    };
    let (relays, _nodes, sups) = cluster(&["q1", "q2", "q3"], "quorum", opts).await;
    let keys = start_counted(&sups[1], "q", 30).await;
    // Node 1 loses the others' gossip (its connections stay up): it stops its children, the
    // majority fails them over.
    relays.split(&[0], &[1, 2], true);
    eventually("the minority stops, the majority runs all", WAIT, || {
        keys.keys()
            .all(|k| !sups[0].hosts(k) && hosting(&sups[1..], k).len() == 1)
    })
    .await;
    relays.heal();
    eventually("the minority is back", WAIT, || {
        sups.iter().all(|s| s.nodes().len() == 3)
    })
    .await;
    every_child_runs_once_with_its_state("after the heal", &sups, &sups[0], &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_of_a_gossip_split_runs_every_key_it_holds_a_copy_of() {
    let names = ["s1", "s2", "s3", "s4"];
    let (relays, _nodes, sups) = cluster(&names, "split", DistOptions::default()).await;
    let keys = start_counted(&sups[0], "s", 200).await;
    // Where each key's two copies are (owner, backup) before the split.
    let ids: Vec<NodeId> = names.iter().map(|n| NodeId::new(n).unwrap()).collect();
    let ring = Ring::from_nodes(RingConfig::default(), ids.iter().cloned()).unwrap();
    let copies = |k: &str| -> Vec<usize> {
        let owner = Uniform.owner(k.as_bytes(), &ring).unwrap();
        let backup = Uniform.backup(k.as_bytes(), &ring).unwrap();
        [owner, backup]
            .iter()
            .map(|n| ids.iter().position(|i| i == n).unwrap())
            .collect()
    };
    let sides: [&[usize]; 2] = [&[0, 1], &[2, 3]];
    relays.split(sides[0], sides[1], true);
    for side in sides {
        for &i in side {
            eventually("the side sees only itself", WAIT, || {
                sups[i].nodes().len() == 2
            })
            .await;
        }
    }
    for side in sides {
        let held: Vec<&String> = keys
            .keys()
            .filter(|k| copies(k).iter().any(|c| side.contains(c)))
            .collect();
        let side_sups: Vec<DistSupervisor> = side.iter().map(|&i| sups[i].clone()).collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let missing: Vec<&&String> = held
                .iter()
                .filter(|k| hosting(&side_sups, k).len() != 1)
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "side {side:?} does not run {} of the {} keys it holds a copy of: {:?}",
                missing.len(),
                held.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for k in held {
            let got = side_sups[0]
                .call_timeout::<Tally>(k, TallyMsg::Get, Duration::from_secs(10))
                .await;
            assert_eq!(got, Ok(keys[k]), "side {side:?}: {k}");
        }
    }
    relays.heal();
    eventually("one cluster again", WAIT, || {
        sups.iter().all(|s| s.nodes().len() == 4)
    })
    .await;
    every_child_runs_once_with_its_state("after the heal", &sups, &sups[3], &keys).await;
}
