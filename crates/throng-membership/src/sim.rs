//! A deterministic, in-memory cluster of [`Machine`]s: no sockets, no tokio, no sleeping.
//!
//! Time is a number the simulation advances to the next timer or delivery; the network is a queue
//! with a fixed latency that can drop everything to and from isolated nodes. Because the machines
//! are sans-io and seeded, a run is a pure function of its seed; this is what lets us test
//! partitions, which real sockets on loopback cannot produce, and check invariants after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use throng_core::{Incarnation, NodeId};
use tokio::time::Instant;

use crate::config::DetectionProfile;
use crate::machine::{Machine, Output, Settings, Via};
use crate::seal::{self, Sealer};
use crate::timers::Timers;
use crate::{MemberInfo, MembershipEvent};

const LATENCY: Duration = Duration::from_millis(1);
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(200);
const SECRET: &[u8] = b"simulated cluster secret";

struct Node {
    machine: Machine,
    timers: Timers,
    seeds: Vec<SocketAddr>,
    events: Vec<MembershipEvent>,
    crashed: bool,
}

struct Packet {
    at: Duration,
    from: SocketAddr,
    to: SocketAddr,
    via: Via,
    datagram: Vec<u8>,
}

struct Sim {
    base: Instant,
    now: Duration,
    seed: u64,
    nodes: BTreeMap<SocketAddr, Node>,
    wire: Vec<Packet>,
    isolated: BTreeSet<SocketAddr>,
    next_announce: Duration,
    max_members: usize,
    /// Multicast interval of the nodes started from now on (`None`: off).
    multicast: Option<Duration>,
    /// Secret of the nodes started from now on.
    secret: &'static [u8],
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

impl Sim {
    fn new(seed: u64) -> Self {
        Self {
            base: Instant::now(),
            now: Duration::ZERO,
            seed,
            nodes: BTreeMap::new(),
            wire: Vec::new(),
            isolated: BTreeSet::new(),
            next_announce: Duration::ZERO,
            max_members: 1024,
            multicast: None,
            secret: SECRET,
        }
    }

    fn start(&mut self, name: &str, incarnation: u64, port: u16, seeds: &[u16]) {
        let info = MemberInfo {
            id: NodeId::new(name).unwrap(),
            incarnation: Incarnation(incarnation),
            gossip_addr: addr(port),
            rpc_addr: addr(port + 1000),
        };
        let mut foca = DetectionProfile::Fast.foca_config();
        foca.max_packet_size = NonZeroUsize::new(1400 - seal::OVERHEAD - 1).unwrap();
        let settings = Settings {
            foca,
            max_members: self.max_members,
            leave_timeout: Duration::from_secs(1),
            multicast_interval: self.multicast,
        };
        let seed = self.seed ^ (u64::from(port) << 32);
        let machine = Machine::new(
            info,
            settings,
            Sealer::new(self.secret),
            StdRng::seed_from_u64(seed),
            StdRng::seed_from_u64(seed + 1),
        );
        let mut machine = machine;
        machine.start();
        let node = Node {
            machine,
            timers: Timers::new(1024),
            seeds: seeds.iter().map(|&p| addr(p)).collect(),
            events: Vec::new(),
            crashed: false,
        };
        self.nodes.insert(addr(port), node);
    }

    fn node(&self, port: u16) -> &Node {
        &self.nodes[&addr(port)]
    }

    fn members(&self, port: u16) -> Vec<String> {
        self.node(port)
            .machine
            .view()
            .map(|(m, _)| format!("{}#{}", m.id, m.incarnation))
            .collect()
    }

    /// Runs until `for_` has passed, checking invariants after every step.
    fn run(&mut self, for_: Duration) {
        let end = self.now + for_;
        loop {
            let next_timer = self
                .nodes
                .values()
                .filter(|n| !n.crashed)
                .filter_map(|n| n.timers.next_deadline())
                .min()
                .map(|at| at - self.base);
            let next_packet = self.wire.iter().map(|p| p.at).min();
            let next = [next_timer, next_packet, Some(self.next_announce)]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            self.step();
            self.check_invariants();
        }
    }

    fn step(&mut self) {
        let now = self.now;
        let at = self.base + now;
        let (due, later): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|p| p.at <= now);
        self.wire = later;
        for mut packet in due {
            if let Some(node) = self.nodes.get_mut(&packet.to).filter(|n| !n.crashed) {
                node.machine
                    .handle_datagram(packet.from, packet.via, &mut packet.datagram);
            }
        }
        for node in self.nodes.values_mut().filter(|n| !n.crashed) {
            while let Some(tick) = node.timers.pop_due(at) {
                node.machine.handle_tick(tick);
            }
        }
        if self.next_announce <= now {
            for node in self.nodes.values_mut().filter(|n| !n.crashed) {
                let seeds = node.seeds.clone();
                node.machine.announce_to(&seeds);
            }
            self.next_announce = now + ANNOUNCE_INTERVAL;
        }
        let group: Vec<SocketAddr> = self.nodes.keys().copied().collect();
        for (&from, node) in &mut self.nodes {
            let mut outputs = Vec::new();
            node.machine.take_outputs(&mut outputs);
            node.machine.take_events(&mut node.events);
            for output in outputs {
                match output {
                    Output::Send { to, datagram } => {
                        let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
                        if !cut && !node.crashed {
                            self.wire.push(Packet {
                                at: now + LATENCY,
                                from,
                                to,
                                via: Via::Unicast,
                                datagram,
                            });
                        }
                    }
                    // Every node listens on the group, the sender included (loop-back on).
                    Output::Multicast { datagram } => {
                        for &to in &group {
                            let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
                            if !cut && !node.crashed {
                                self.wire.push(Packet {
                                    at: now + LATENCY,
                                    from,
                                    to,
                                    via: Via::Multicast,
                                    datagram: datagram.clone(),
                                });
                            }
                        }
                    }
                    Output::Schedule { after, tick } => {
                        assert!(node.timers.schedule(at, after, tick), "timer queue full");
                    }
                }
            }
        }
    }

    /// No node ever has two runs of a node up; events replay to the view.
    fn check_invariants(&self) {
        for node in self.nodes.values() {
            let mut up: BTreeMap<NodeId, MemberInfo> = BTreeMap::new();
            for event in &node.events {
                match event {
                    MembershipEvent::NodeUp(m) => {
                        assert!(up.insert(m.id.clone(), m.clone()).is_none(), "{event:?}");
                    }
                    MembershipEvent::NodeDown(m) => {
                        assert_eq!(up.remove(&m.id).as_ref(), Some(m), "{event:?}");
                    }
                    MembershipEvent::NodeLeaving(m) => assert_eq!(up.get(&m.id), Some(m)),
                    MembershipEvent::Rejoined(_) => {}
                }
            }
            let view: Vec<&MemberInfo> = node.machine.view().map(|(m, _)| m).collect();
            assert_eq!(view, up.values().collect::<Vec<_>>());
        }
    }
}

fn three_nodes(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.start("a", 1, 1, &[]);
    sim.start("b", 1, 2, &[1]);
    sim.start("c", 1, 3, &[1]);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.members(1), ["b#1", "c#1"]);
    assert_eq!(sim.members(2), ["a#1", "c#1"]);
    assert_eq!(sim.members(3), ["a#1", "b#1"]);
    sim
}

#[test]
fn partitioned_node_is_declared_down_then_rejoins() {
    let mut sim = three_nodes(1);
    sim.isolated.insert(addr(3));
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.members(1), ["b#1"]);
    assert_eq!(sim.members(2), ["a#1"]);
    assert!(sim.members(3).is_empty());

    sim.isolated.clear();
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.members(1), ["b#1", "c#1"]);
    assert_eq!(sim.members(2), ["a#1", "c#1"]);
    assert_eq!(sim.members(3), ["a#1", "b#1"]);
    let rejoined = sim
        .nodes
        .values()
        .flat_map(|n| &n.events)
        .filter(|e| matches!(e, MembershipEvent::Rejoined(_)))
        .count();
    assert!(rejoined > 0, "someone learnt it had been declared down");
}

#[test]
fn restart_replaces_the_previous_run_everywhere() {
    let mut sim = three_nodes(2);
    sim.nodes.get_mut(&addr(3)).unwrap().crashed = true;
    sim.start("c", 2, 4, &[1]);
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.members(1), ["b#1", "c#2"]);
    assert_eq!(sim.members(2), ["a#1", "c#2"]);
    assert_eq!(sim.members(4), ["a#1", "b#1"]);
}

#[test]
fn leave_is_announced_before_down() {
    let mut sim = three_nodes(3);
    sim.nodes
        .get_mut(&addr(3))
        .unwrap()
        .machine
        .begin_leaving(true);
    sim.run(Duration::from_secs(1));
    assert!(sim.node(3).machine.has_left());
    assert_eq!(sim.node(3).machine.completed_round(), 1);
    for port in [1, 2] {
        let tail: Vec<String> = sim.node(port).events[2..]
            .iter()
            .map(|e| format!("{e:?}").split('(').next().unwrap().to_owned())
            .collect();
        assert_eq!(tail, ["NodeLeaving", "NodeDown"]);
    }
}

#[test]
fn view_is_bounded_and_fills_up_again() {
    let mut sim = Sim::new(4);
    sim.max_members = 1;
    sim.start("a", 1, 1, &[]);
    sim.max_members = 1024;
    sim.start("b", 1, 2, &[1]);
    sim.start("c", 1, 3, &[1]);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.members(1).len(), 1);
    assert_eq!(sim.node(1).machine.excluded(), 1);
    let shown = sim.members(1)[0].clone();
    let (crash, other) = if shown == "b#1" {
        (2, "c#1")
    } else {
        (3, "b#1")
    };
    sim.nodes.get_mut(&addr(crash)).unwrap().crashed = true;
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.members(1), [other]);
    assert_eq!(sim.node(1).machine.excluded(), 0);
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let log = |seed| {
        let mut sim = three_nodes(seed);
        sim.nodes.get_mut(&addr(2)).unwrap().crashed = true;
        sim.run(Duration::from_secs(3));
        sim.nodes
            .values()
            .map(|n| format!("{:?}", n.events))
            .collect::<Vec<_>>()
    };
    assert_eq!(log(7), log(7));
}

#[test]
fn partitions_heal_whatever_the_seed() {
    for seed in 100..132 {
        let mut sim = three_nodes(seed);
        // Isolate a different node each time, for long enough to be declared down.
        let victim = 1 + (seed % 3) as u16;
        sim.isolated.insert(addr(victim));
        sim.run(Duration::from_secs(3));
        sim.isolated.clear();
        sim.run(Duration::from_secs(15));
        for port in 1..=3 {
            assert_eq!(sim.members(port).len(), 2, "seed {seed}, node {port}");
        }
    }
}

#[test]
fn multicast_alone_finds_everyone() {
    for seed in 200..216 {
        let mut sim = Sim::new(seed);
        sim.multicast = Some(Duration::from_millis(500));
        for port in 1..=3 {
            sim.start(&format!("n{port}"), 1, port, &[]);
        }
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.members(1), ["n2#1", "n3#1"], "seed {seed}");
        assert_eq!(sim.members(2), ["n1#1", "n3#1"], "seed {seed}");
        assert_eq!(sim.members(3), ["n1#1", "n2#1"], "seed {seed}");
    }
}

#[test]
fn multicast_joins_late_nodes_and_ignores_other_secrets() {
    let mut sim = Sim::new(9);
    sim.multicast = Some(Duration::from_millis(500));
    sim.start("a", 1, 1, &[]);
    sim.run(Duration::from_secs(2));
    sim.secret = b"another cluster's secret!";
    sim.start("stranger", 1, 9, &[]);
    sim.secret = SECRET;
    sim.start("b", 1, 2, &[]);
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.members(1), ["b#1"]);
    assert_eq!(sim.members(2), ["a#1"]);
    assert!(sim.members(9).is_empty());
}

#[test]
fn partitions_heal_by_multicast_alone() {
    let mut sim = Sim::new(10);
    sim.multicast = Some(Duration::from_millis(500));
    for port in 1..=3 {
        sim.start(&format!("n{port}"), 1, port, &[]);
    }
    sim.run(Duration::from_secs(1));
    sim.isolated.insert(addr(3));
    sim.run(Duration::from_secs(3));
    assert!(sim.members(3).is_empty());
    sim.isolated.clear();
    sim.run(Duration::from_secs(10));
    for port in 1..=3 {
        assert_eq!(sim.members(port).len(), 2, "node {port}");
    }
}
