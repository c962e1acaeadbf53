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

/// A gossip-only partition on loopback: every node's gossip reaches it through a relay that
/// drops the datagrams of the senders it is told to, while the nodes' TCP connections stay up —
/// the partial partitions (one-way loss, gossip cut, connections kept) that real networks make.
pub struct GossipRelays {
    /// Per node: its relay's address (the one it advertises and others seed with).
    pub addrs: Vec<std::net::SocketAddr>,
    /// `blocked[to][from]`: datagrams from node `from` to node `to` are dropped.
    blocked: Arc<Mutex<Vec<Vec<bool>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl GossipRelays {
    /// Nodes named `names` joined through relays (the first is every other's seed), once each
    /// sees all of them on its ring and is connected to every other.
    pub async fn cluster(
        names: &[&str],
        secret: &[u8],
    ) -> (GossipRelays, Vec<throng::cluster::Node>) {
        use throng::cluster::{Node, NodeConfig};
        let n = names.len();
        // Each node's real gossip port, and the relay in front of it.
        // (A real port is probed free, then bound by its node: another socket may take it in
        // between, so a node that cannot bind it is started again on a new one.)
        let probe_port = || {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let reals: Arc<Mutex<Vec<std::net::SocketAddr>>> =
            Arc::new(Mutex::new((0..n).map(|_| probe_port()).collect()));
        let real = |reals: &Mutex<Vec<std::net::SocketAddr>>, i: usize| reals.lock().unwrap()[i];
        let mut relays = Vec::new();
        for _ in 0..n {
            relays.push(Arc::new(
                tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            ));
        }
        let addrs: Vec<_> = relays.iter().map(|r| r.local_addr().unwrap()).collect();
        let blocked = Arc::new(Mutex::new(vec![vec![false; n]; n]));
        // `pipes[to][from]`: the socket through which `to` hears `from` (and answers it: a reply
        // to a datagram's source, such as membership's `Welcome`, goes back the same way).
        let mut pipes = Vec::new();
        for _ in 0..n {
            let mut row = Vec::new();
            for _ in 0..n {
                row.push(Arc::new(
                    tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
                ));
            }
            pipes.push(row);
        }
        let mut tasks = Vec::new();
        let allowed = |blocked: &Mutex<Vec<Vec<bool>>>, to: usize, from: usize| {
            !blocked.lock().unwrap()[to][from]
        };
        for (to, relay) in relays.into_iter().enumerate() {
            let (reals2, blocked2, row) = (reals.clone(), blocked.clone(), pipes[to].clone());
            tasks.push(tokio::spawn(async move {
                let (reals, blocked) = (reals2, blocked2);
                let mut buf = vec![0u8; 65_536];
                while let Ok((len, src)) = relay.recv_from(&mut buf).await {
                    let Some(from) = reals.lock().unwrap().iter().position(|r| *r == src) else {
                        continue;
                    };
                    if allowed(&blocked, to, from) {
                        let _ = row[from].send_to(&buf[..len], real(&reals, to)).await;
                    }
                }
            }));
            for (from, pipe) in pipes[to].iter().enumerate() {
                let (reals, blocked, pipe) = (reals.clone(), blocked.clone(), pipe.clone());
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((len, src)) = pipe.recv_from(&mut buf).await {
                        let (to_addr, from_addr) = (real(&reals, to), real(&reals, from));
                        if src == to_addr && allowed(&blocked, from, to) {
                            let _ = pipe.send_to(&buf[..len], from_addr).await;
                        } else if src == from_addr && allowed(&blocked, to, from) {
                            let _ = pipe.send_to(&buf[..len], to_addr).await;
                        }
                    }
                }));
            }
        }
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut attempt = 0;
            let node = loop {
                attempt += 1;
                let mut c = NodeConfig::local(name, secret).unwrap();
                c.membership.bind_addr = real(&reals, i);
                c.membership.advertise_addr = Some(addrs[i]);
                if i > 0 {
                    c.membership.seeds = vec![addrs[0].to_string()];
                }
                match Node::join(c).await {
                    Ok(node) => break node,
                    Err(e) if attempt < 5 && e.to_string().contains("in use") => {
                        reals.lock().unwrap()[i] = probe_port();
                    }
                    Err(e) => panic!("{name} did not start: {e}"),
                }
            };
            nodes.push(node);
        }
        let wait = Duration::from_secs(20);
        for node in &nodes {
            eventually("full ring", wait, || node.owners().len() == n).await;
            for other in &nodes {
                if other.id() != node.id() {
                    eventually("connected", wait, || node.is_connected(other.id())).await;
                }
            }
        }
        (
            GossipRelays {
                addrs,
                blocked,
                tasks,
            },
            nodes,
        )
    }

    /// Cut (or heal, with `cut: false`) the gossip between the groups `a` and `b` of node
    /// indices, both ways.
    pub fn split(&self, a: &[usize], b: &[usize], cut: bool) {
        let mut blocked = self.blocked.lock().unwrap();
        for &x in a {
            for &y in b {
                blocked[x][y] = cut;
                blocked[y][x] = cut;
            }
        }
    }

    /// Heal every cut.
    pub fn heal(&self) {
        for row in self.blocked.lock().unwrap().iter_mut() {
            row.fill(false);
        }
    }
}

impl Drop for GossipRelays {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
