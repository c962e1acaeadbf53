//! Convergence of the cluster-wide name registry under an adversarial network: random writes on three
//! nodes, deltas batched per flush and delivered out of order, duplicated or dropped (and repaired by
//! full-state syncs), nodes restarting with a new incarnation. After the network drains, every node
//! must hold the same names, resolved to the same single winner, and the same group members.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use throng_core::names::{Delta, FullState, NameEvent, NameTable, NamesConfig, Outgoing};
use throng_core::{Incarnation, Member, NodeId};

const N: usize = 3;
const NAMES: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

#[derive(Debug, Clone)]
enum Action {
    /// A local write on `node`; `kind` picks the operation, `key` the name or group, `byte` the data.
    Write {
        node: usize,
        kind: u8,
        key: usize,
        byte: u8,
    },
    /// `node` sends its batched deltas to every peer.
    Flush { node: usize },
    /// Handles the `index`-th in-flight message from `from` to `to` (any index: reordering).
    Deliver {
        from: usize,
        to: usize,
        index: usize,
        fate: Fate,
    },
    /// Time passes.
    Tick { ms: u64 },
    /// `node` restarts with a new incarnation and an empty table.
    Restart { node: usize },
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    Deliver,
    Duplicate,
    Drop,
}

#[derive(Debug, Clone)]
enum Msg {
    Delta(Member, Delta),
    Full(Member, FullState),
    SyncRequest,
}

fn action() -> impl Strategy<Value = Action> {
    let node = 0..N;
    prop_oneof![
        6 => (node.clone(), 0u8..5, 0..NAMES.len(), any::<u8>())
            .prop_map(|(node, kind, key, byte)| Action::Write { node, kind, key, byte }),
        2 => node.clone().prop_map(|node| Action::Flush { node }),
        8 => (node.clone(), node.clone(), any::<usize>(), prop_oneof![
                6 => Just(Fate::Deliver), 1 => Just(Fate::Duplicate), 1 => Just(Fate::Drop)
            ])
            .prop_map(|(from, to, index, fate)| Action::Deliver { from, to, index, fate }),
        2 => (0u64..4).prop_map(|ms| Action::Tick { ms }),
        1 => node.prop_map(|node| Action::Restart { node }),
    ]
}

struct Cluster {
    members: Vec<Member>,
    tables: Vec<NameTable>,
    outbox: Vec<Delta>,
    /// In-flight messages per `(from, to)`.
    queues: BTreeMap<(usize, usize), VecDeque<Msg>>,
    skew: Vec<u64>,
    time: u64,
    conflicts: usize,
}

impl Cluster {
    fn new(skew: Vec<u64>) -> Self {
        let members: Vec<Member> = (0..N)
            .map(|i| Member::new(NodeId::new(&format!("n{i}")).unwrap(), Incarnation(1)))
            .collect();
        let tables = members
            .iter()
            .map(|m| NameTable::new(m.clone(), NamesConfig::default()))
            .collect();
        Self {
            members,
            tables,
            outbox: vec![Delta::default(); N],
            queues: BTreeMap::new(),
            skew,
            time: 0,
            conflicts: 0,
        }
    }

    fn index_of(&self, id: &NodeId) -> usize {
        self.members.iter().position(|m| m.id == *id).unwrap()
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.queues.entry((from, to)).or_default().push_back(msg);
    }

    fn queue_local(&mut self, node: usize, delta: Delta) {
        // A node's own writes are consecutive, so they always batch.
        self.outbox[node]
            .append(delta)
            .expect("local deltas are contiguous");
    }

    fn flush(&mut self, node: usize) {
        let batch = std::mem::take(&mut self.outbox[node]);
        if batch.is_empty() {
            return;
        }
        for to in (0..N).filter(|&to| to != node) {
            self.send(
                node,
                to,
                Msg::Delta(self.members[node].clone(), batch.clone()),
            );
        }
    }

    fn handle(&mut self, node: usize, out: Vec<Outgoing>) {
        for o in out {
            match o {
                Outgoing::Broadcast(d) => self.queue_local(node, d),
                Outgoing::SyncRequest { to } => {
                    let to = self.index_of(&to);
                    self.send(node, to, Msg::SyncRequest);
                }
                Outgoing::Event(NameEvent::Conflict { loser, .. }) => {
                    assert_eq!(loser, self.members[node].id);
                    self.conflicts += 1;
                }
            }
        }
    }

    fn receive(&mut self, from: usize, to: usize, msg: Msg) {
        let out = match msg {
            Msg::Delta(sender, d) => self.tables[to].apply(&sender, d),
            Msg::Full(sender, s) => self.tables[to].apply_full(&sender, s),
            Msg::SyncRequest => {
                let state = self.tables[to].full_state();
                self.send(to, from, Msg::Full(self.members[to].clone(), state));
                Vec::new()
            }
        };
        self.handle(to, out);
    }

    fn write(&mut self, node: usize, kind: u8, key: usize, byte: u8) {
        let now = self.time + self.skew[node];
        let table = &mut self.tables[node];
        let name = NAMES[key];
        let group = NAMES[key % 2];
        let value = vec![node as u8, byte % 3];
        let result = match kind {
            0 => table.register(name, value.clone(), vec![byte], now),
            1 => table.unregister(name),
            2 => table.update_meta(name, vec![byte]),
            3 => table.join_group(group, value, vec![byte]),
            _ => table.leave_group(group, &value),
        };
        if let Ok(delta) = result {
            if kind == 0 {
                // A process sees its own registration at once.
                let (owner, entry) = self.tables[node].lookup(name).unwrap();
                assert_eq!(*owner, self.members[node].id);
                assert_eq!(entry.meta, vec![byte]);
            }
            self.queue_local(node, delta);
        }
    }

    fn restart(&mut self, node: usize) {
        let old = self.members[node].clone();
        let new = Member::new(old.id.clone(), Incarnation(old.incarnation.get() + 1));
        self.members[node] = new.clone();
        self.tables[node] = NameTable::new(new.clone(), NamesConfig::default());
        self.outbox[node] = Delta::default();
        // Messages to the dead run are lost; messages from it stay in flight, stale.
        for (&(_, to), q) in self.queues.iter_mut() {
            if to == node {
                q.clear();
            }
        }
        for peer in (0..N).filter(|&p| p != node) {
            self.tables[peer].node_down(&old.id);
            let to_new = self.tables[peer].node_up(&new);
            self.send(peer, node, Msg::Full(self.members[peer].clone(), to_new));
            let to_peer = self.tables[node].node_up(&self.members[peer]);
            self.send(node, peer, Msg::Full(new.clone(), to_peer));
        }
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Write {
                node,
                kind,
                key,
                byte,
            } => self.write(node, kind, key, byte),
            Action::Flush { node } => self.flush(node),
            Action::Deliver {
                from,
                to,
                index,
                fate,
            } => {
                let Some(q) = self.queues.get_mut(&(from, to)) else {
                    return;
                };
                if q.is_empty() {
                    return;
                }
                let i = index % q.len();
                let msg = match fate {
                    Fate::Duplicate => q[i].clone(),
                    _ => q.remove(i).unwrap(),
                };
                if !matches!(fate, Fate::Drop) {
                    self.receive(from, to, msg);
                }
            }
            Action::Tick { ms } => self.time += ms,
            Action::Restart { node } => self.restart(node),
        }
    }

    /// Reliable FIFO delivery plus anti-entropy (`observe_seq`) until nothing is left to do.
    fn drain(&mut self) {
        for _round in 0..100 {
            for node in 0..N {
                self.flush(node);
            }
            while let Some((&key, _)) = self.queues.iter().find(|(_, q)| !q.is_empty()) {
                let msg = self.queues.get_mut(&key).unwrap().pop_front().unwrap();
                self.receive(key.0, key.1, msg);
                for node in 0..N {
                    self.flush(node);
                }
            }
            let mut behind = false;
            for node in 0..N {
                for peer in (0..N).filter(|&p| p != node) {
                    let seq = self.tables[peer].seq();
                    let member = self.members[peer].clone();
                    if let Some(o) = self.tables[node].observe_seq(&member, seq) {
                        behind = true;
                        self.handle(node, vec![o]);
                    }
                }
            }
            if !behind {
                return;
            }
        }
        panic!("the cluster did not quiesce");
    }

    fn view(&self, node: usize) -> BTreeMap<String, (NodeId, Vec<u8>, Vec<u8>)> {
        self.tables[node]
            .iter()
            .map(|(n, owner, e)| {
                (
                    n.to_owned(),
                    (owner.clone(), e.value.clone(), e.meta.clone()),
                )
            })
            .collect()
    }

    fn group_view(&self, node: usize) -> BTreeSet<(String, NodeId, Vec<u8>, Vec<u8>)> {
        let t = &self.tables[node];
        t.groups()
            .flat_map(|g| {
                t.members(g)
                    .map(move |(n, m)| (g.to_owned(), n.clone(), m.value.to_vec(), m.meta.to_vec()))
            })
            .collect()
    }

    fn check_converged(&self) -> Result<(), TestCaseError> {
        let first = self.view(0);
        let groups = self.group_view(0);
        for node in 0..N {
            let t = &self.tables[node];
            prop_assert_eq!(&self.view(node), &first, "names differ on node {}", node);
            prop_assert_eq!(
                &self.group_view(node),
                &groups,
                "groups differ on node {}",
                node
            );
            prop_assert_eq!(t.count(), first.len());
            for name in t.keys() {
                prop_assert_eq!(t.claims(name).count(), 1, "{} claimed twice", name);
                prop_assert_eq!(
                    t.lookup(name).map(|(o, _)| o.clone()),
                    Some(first[name].0.clone())
                );
            }
            // Each node's view of every owner matches what that owner holds itself.
            for (owner, m) in self.members.iter().enumerate() {
                prop_assert_eq!(t.len_of(&m.id), self.tables[owner].len_of(&m.id));
            }
            prop_assert_eq!(t.awaiting_sync().count(), 0);
        }
        Ok(())
    }
}

fn run(skew: Vec<u64>, actions: Vec<Action>) -> Result<Cluster, TestCaseError> {
    let mut cluster = Cluster::new(skew);
    for a in actions {
        cluster.step(a);
    }
    cluster.drain();
    cluster.check_converged()?;
    Ok(cluster)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any interleaving of writes, reordering, duplication, loss and restarts converges.
    #[test]
    fn converges(
        skew in proptest::collection::vec(0u64..6, N),
        actions in proptest::collection::vec(action(), 0..250),
    ) {
        run(skew, actions)?;
    }

    /// After convergence, a node reported down leaves no trace in the survivors' tables.
    #[test]
    fn node_down_removes_everything(
        skew in proptest::collection::vec(0u64..6, N),
        actions in proptest::collection::vec(action(), 0..150),
        dead in 0..N,
    ) {
        let mut cluster = run(skew, actions)?;
        let id = cluster.members[dead].id.clone();
        for node in (0..N).filter(|&n| n != dead) {
            let t = &mut cluster.tables[node];
            t.node_down(&id);
            prop_assert!(t.iter().all(|(_, owner, _)| *owner != id));
            prop_assert_eq!(t.len_of(&id), 0);
            prop_assert!(t.groups().all(|g| t.members(g).all(|(n, _)| *n != id)));
            let expected: usize = (0..N).filter(|&n| n != dead).map(|n| {
                let own = &cluster.members[n].id;
                cluster.tables[n].iter().filter(|(_, o, _)| *o == own).count()
            }).sum();
            let t = &cluster.tables[node];
            prop_assert_eq!(t.count(), expected);
        }
    }
}

/// Unique names on conflicting nodes: the earliest stamp wins wherever the deltas land first.
#[test]
fn concurrent_registrations_converge_on_earliest() {
    let mut cluster = Cluster::new(vec![30, 10, 20]);
    for node in 0..N {
        cluster.write(node, 0, 0, node as u8);
    }
    // Deliver in reverse node order, to show order does not matter.
    for from in (0..N).rev() {
        cluster.flush(from);
    }
    for to in (0..N).rev() {
        for from in (0..N).rev() {
            while let Some(msg) = cluster
                .queues
                .get_mut(&(from, to))
                .and_then(VecDeque::pop_front)
            {
                cluster.receive(from, to, msg);
            }
        }
    }
    cluster.drain();
    cluster.check_converged().unwrap();
    let (winner, _) = cluster.tables[0].lookup("alpha").unwrap();
    assert_eq!(winner.as_str(), "n1");
    assert_eq!(cluster.conflicts, 2);
}
