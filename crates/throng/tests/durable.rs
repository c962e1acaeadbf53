//! Durable supervisors: children's records kept in each node's store (`data_dir`, or one
//! PostgreSQL database for all at `store_url`) come back, with their state, after every node of
//! the cluster stopped; a removed child stays removed; bad data directories, unreachable
//! databases and a durability the node cannot give are refused with clear errors.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::eventually;
use serde::{Deserialize, Serialize};
use throng::cluster::{
    ChildError, DistOptions, DistSupervisor, Durability, Keyed, Node, NodeConfig, NodeError,
    RemoteActor,
};
use throng::prelude::*;
use throng_store::testing::Postgres;

const SECRET: &[u8] = b"durable-test-secret-0123456789";

struct Counter {
    n: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum CounterMsg {
    Add(u64),
    Get,
}

impl Actor for Counter {
    type Msg = CounterMsg;
    type Reply = u64;
    async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<Self>) -> ActorResult<u64> {
        if let CounterMsg::Add(d) = msg {
            self.n += d;
        }
        Ok(self.n)
    }
}

impl RemoteActor for Counter {
    const TYPE: &'static str = "test.DurableCounter";
}

impl Keyed for Counter {
    type Args = ();
    type State = u64;
    fn start(_key: &str, _: ()) -> Self {
        Counter { n: 0 }
    }
    fn snapshot(&self) -> Option<u64> {
        Some(self.n)
    }
    fn restore(_key: &str, _: (), n: u64) -> Self {
        Counter { n }
    }
}

/// A fresh directory for one test, removed when dropped.
struct Dirs(PathBuf);

impl Dirs {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("throng-durable-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dirs(dir)
    }

    fn of(&self, node: &str) -> PathBuf {
        self.0.join(node)
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the nodes of a test keep their stores.
enum Stores {
    /// A data directory each (the embedded store).
    Dirs(Dirs),
    /// One PostgreSQL database for all of them.
    Postgres(Postgres),
}

impl Stores {
    fn configure(&self, c: &mut NodeConfig) {
        match self {
            Stores::Dirs(dirs) => c.data_dir = Some(dirs.of(c.name.as_str())),
            Stores::Postgres(pg) => c.store_url = Some(pg.url().to_owned()),
        }
    }
}

fn opts() -> DistOptions {
    DistOptions {
        durability: Durability::ASYNC,
        ..DistOptions::default()
    }
}

/// Nodes `names` with their stores in `stores`, each running the durable supervisor
/// "counters", once every node sees all of them.
async fn cluster(names: &[&str], stores: &Stores) -> (Vec<Node>, Vec<DistSupervisor>) {
    let wait = Duration::from_secs(15);
    let mut nodes: Vec<Node> = Vec::new();
    for name in names {
        let mut c = NodeConfig::local(name, SECRET).unwrap();
        stores.configure(&mut c);
        if let Some(first) = nodes.first() {
            c.membership.seeds = vec![first.gossip_addr().unwrap().to_string()];
        }
        let node = Node::join(c).await.unwrap();
        node.register::<Counter>();
        nodes.push(node);
    }
    for n in &nodes {
        eventually("full ring", wait, || n.owners().len() == names.len()).await;
    }
    let sups = nodes
        .iter()
        .map(|n| n.supervisor("counters", opts()))
        .collect();
    (nodes, sups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_child_comes_back_with_its_state_after_every_node_stopped_and_removed_ones_stay_gone()
{
    every_child_comes_back(Stores::Dirs(Dirs::new("restart"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_child_comes_back_from_a_postgres_store_shared_by_the_nodes() {
    let Some(pg) = Postgres::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}")) else {
        return;
    };
    every_child_comes_back(Stores::Postgres(pg)).await;
}

/// 300 children on three nodes, some removed; every node stops at once and starts again on the
/// same stores: every child comes back once, with its state, and no removed one does.
async fn every_child_comes_back(stores: Stores) {
    let names = ["d1", "d2", "d3"];
    let keys: Vec<String> = (0..300).map(|i| format!("c-{i}")).collect();
    let removed: Vec<String> = keys.iter().step_by(10).cloned().collect();
    {
        let (nodes, sups) = cluster(&names, &stores).await;
        for (i, k) in keys.iter().enumerate() {
            sups[i % 3].start_child::<Counter>(k, ()).await.unwrap();
        }
        for (i, k) in keys.iter().enumerate() {
            let n = sups[(i + 1) % 3]
                .call::<Counter>(k, CounterMsg::Add(i as u64 + 1))
                .await
                .unwrap();
            assert_eq!(n, i as u64 + 1);
        }
        for k in &removed {
            sups[0].terminate_child(k).await.unwrap();
        }
        // Every entry of a child is on the disks of its owner and its backup: at least two
        // entries written per key, in group commits.
        let mut written = (0, 0);
        for s in &sups {
            let mut stats = s.stats().await;
            while stats.unwritten != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                stats = s.stats().await;
            }
            written = (written.0 + stats.written, written.1 + stats.commits);
        }
        assert!(written.0 >= 2 * keys.len() as u64, "{written:?}");
        assert!(written.1 >= 1 && written.1 <= written.0, "{written:?}");
        // Every node stops at once: no leave, no hand-off (a full-cluster restart).
        for n in nodes {
            n.shutdown().await;
        }
    }
    let (_nodes, sups) = cluster(&names, &stores).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (i, k) in keys.iter().enumerate() {
        if removed.contains(k) {
            continue;
        }
        loop {
            match sups[i % 3].call::<Counter>(k, CounterMsg::Get).await {
                Ok(n) => {
                    assert_eq!(n, i as u64 + 1, "{k} came back with another state");
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{k} did not come back: {e}"),
            }
        }
    }
    // Once the others are back, the removed ones are not: no node runs them or answers for them.
    for k in &removed {
        assert!(
            sups.iter().all(|s| !s.hosts(k)),
            "removed child {k} came back"
        );
    }
    assert!(sups[0]
        .call::<Counter>(&removed[0], CounterMsg::Get)
        .await
        .is_err());
    let count = sups[0].count_children().await.unwrap();
    assert_eq!(count, keys.len() - removed.len(), "each child runs once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_supervisor_on_a_node_without_a_data_dir_refuses_starts_and_says_why() {
    let node = Node::join(NodeConfig::local("nodisk", SECRET).unwrap())
        .await
        .unwrap();
    node.register::<Counter>();
    let sup = node.supervisor("counters", opts());
    let err = sup.start_child::<Counter>("k", ()).await.unwrap_err();
    assert!(
        matches!(&err, ChildError::NotDurable(why) if why.contains("data_dir") && why.contains("store_url")),
        "{err}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_node_is_refused_at_join() {
    let dirs = Dirs::new("foreign");
    let mut c = NodeConfig::local("owner", SECRET).unwrap();
    c.data_dir = Some(dirs.of("shared"));
    Node::join(c).await.unwrap().shutdown().await;
    let mut c = NodeConfig::local("intruder", SECRET).unwrap();
    c.data_dir = Some(dirs.of("shared"));
    let err = Node::join(c).await.err().expect("refused");
    assert!(matches!(err, NodeError::Store(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("owner") && text.contains("data_dir"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_url_is_refused_at_join_naming_the_setting_not_the_password() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = NodeConfig::local("nodb", SECRET).unwrap();
    c.store_url = Some(format!("postgres://throng:hunter2@127.0.0.1:{port}/throng"));
    let err = Node::join(c).await.err().expect("refused");
    assert!(matches!(err, NodeError::Store(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("store_url")
            && text.contains(&format!("postgres://throng@127.0.0.1:{port}/throng"))
            && !text.contains("hunter2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_both_stores_is_refused_at_join_naming_both() {
    let mut c = NodeConfig::local("both", SECRET).unwrap();
    c.data_dir = Some(std::env::temp_dir().join("throng-never-created"));
    c.store_url = Some("postgres://throng:hunter2@127.0.0.1:1/throng".into());
    let err = Node::join(c).await.err().expect("refused");
    let text = err.to_string();
    assert!(
        matches!(err, NodeError::Config(_))
            && text.contains("data_dir")
            && text.contains("store_url")
            && !text.contains("hunter2"),
        "{text}"
    );
}

/// Starts `keys` on `sups`, one increment each, and waits until every node wrote everything.
async fn start_and_write(sups: &[DistSupervisor], keys: &[String]) {
    for k in keys {
        sups[0].start_child::<Counter>(k, ()).await.unwrap();
        sups[0]
            .call::<Counter>(k, CounterMsg::Add(1))
            .await
            .unwrap();
    }
    for s in sups {
        while s.stats().await.unwritten != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How long after `t` every child of `keys` runs somewhere among `sups` (sampled every 5 ms).
async fn time_to_run(sups: &[DistSupervisor], keys: &[String], t: std::time::Instant) -> Duration {
    loop {
        if keys.iter().all(|k| sups.iter().any(|s| s.hosts(k))) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the children did not come back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A restarted node whose previous view is back at once (here: it ran alone) recovers at once,
/// without waiting for the view to settle (one second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_previous_view_is_back_recovers_without_waiting_for_the_view_to_settle() {
    let stores = Stores::Dirs(Dirs::new("previous-view-back"));
    let keys: Vec<String> = (0..20).map(|i| format!("v-{i}")).collect();
    {
        let (nodes, sups) = cluster(&["v1"], &stores).await;
        start_and_write(&sups, &keys).await;
        for n in nodes {
            n.shutdown().await;
        }
    }
    let t = std::time::Instant::now();
    let (_nodes, sups) = cluster(&["v1"], &stores).await;
    let took = time_to_run(&sups, &keys, t).await;
    // Waiting for the view to settle would take at least one second from the supervisor's
    // first view, which comes after the node's start, where `took` starts.
    assert!(took < Duration::from_secs(1), "recovered after {took:?}");
    for k in &keys {
        let n = sups[0].call::<Counter>(k, CounterMsg::Get).await.unwrap();
        assert_eq!(n, 1, "{k} came back with another state");
    }
}

/// A restarted node whose previous view is not back (a node it ran with is missing) waits for
/// its view to settle before it recovers, then takes every child back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_a_member_of_its_previous_view_waits_for_the_view_to_settle() {
    let stores = Stores::Dirs(Dirs::new("previous-view-missing"));
    let keys: Vec<String> = (0..20).map(|i| format!("w-{i}")).collect();
    {
        let (nodes, sups) = cluster(&["w1", "w2"], &stores).await;
        start_and_write(&sups, &keys).await;
        for n in nodes {
            n.shutdown().await;
        }
    }
    // Only w1 comes back: its previous view had w2 too.
    let (_nodes, sups) = cluster(&["w1"], &stores).await;
    // From just after the supervisor's creation: the settle ends one second after its first
    // view, which the driver takes once it read the store.
    let took = time_to_run(&sups, &keys, std::time::Instant::now()).await;
    assert!(
        took >= Duration::from_millis(500),
        "recovered after {took:?}"
    );
    for k in &keys {
        let n = sups[0].call::<Counter>(k, CounterMsg::Get).await.unwrap();
        assert_eq!(n, 1, "{k} came back with another state");
    }
}
