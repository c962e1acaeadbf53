//! Shared test helpers.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use throng::prelude::*;

/// Wait until `cond` holds, polling, failing the test after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Nodes named `names` on loopback (the first is every other's seed), once each sees all of them
/// on its ring and is connected to every other.
pub async fn cluster_of(names: &[&str], secret: &[u8]) -> Vec<throng::cluster::Node> {
    use throng::cluster::{Node, NodeConfig};
    let wait = Duration::from_secs(10);
    let first = Node::join(NodeConfig::local(names[0], secret).unwrap())
        .await
        .unwrap();
    let seed = first.gossip_addr().unwrap().to_string();
    let mut nodes = vec![first];
    for name in &names[1..] {
        let mut c = NodeConfig::local(name, secret).unwrap();
        c.membership.seeds = vec![seed.clone()];
        nodes.push(Node::join(c).await.unwrap());
    }
    for n in &nodes {
        eventually("full ring", wait, || n.owners().len() == names.len()).await;
        for other in &nodes {
            if other.id() != n.id() {
                eventually("connected", wait, || n.is_connected(other.id())).await;
            }
        }
    }
    nodes
}

/// A log shared between actors and the test.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn contains(&self, s: &str) -> bool {
        self.0.lock().unwrap().iter().any(|e| e == s)
    }
}

/// A scriptable test actor.
pub struct Probe {
    pub name: String,
    pub log: Log,
    pub count: u64,
}

#[derive(Debug, Clone)]
pub enum Cmd {
    Add(u64),
    Get,
    Panic,
    Fail,
    StopNormal,
    /// Block this handler forever (an actor that ignores everything).
    Hang,
    /// Sleep in the handler.
    Sleep(Duration),
}

impl Probe {
    pub fn new(name: &str, log: &Log) -> Self {
        Probe {
            name: name.into(),
            log: log.clone(),
            count: 0,
        }
    }
}

impl Actor for Probe {
    type Msg = Cmd;
    type Reply = u64;

    async fn started(&mut self, _ctx: &mut Context<Self>) -> ActorResult<()> {
        self.log.push(format!("{} started", self.name));
        Ok(())
    }

    async fn handle(&mut self, msg: Cmd, ctx: &mut Context<Self>) -> ActorResult<u64> {
        match msg {
            Cmd::Add(n) => self.count += n,
            Cmd::Get => {}
            Cmd::Panic => panic!("boom in {}", self.name),
            Cmd::Fail => return Err(ActorError::msg("failed on purpose")),
            Cmd::StopNormal => ctx.stop(),
            Cmd::Hang => std::future::pending::<()>().await,
            Cmd::Sleep(d) => tokio::time::sleep(d).await,
        }
        Ok(self.count)
    }

    async fn stopped(&mut self, reason: &ExitReason, _ctx: &mut Context<Self>) {
        self.log.push(format!("{} stopped: {reason}", self.name));
    }
}
