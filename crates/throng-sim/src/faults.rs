//! The faults the loop injects into the nodes and the network: crashes and restarts, graceful
//! leaves, partitions and heals, gossip cuts, false suspicions.

use std::collections::{BTreeMap, BTreeSet};

use rand::RngExt;
use throng_core::directory::{Directory, DurableEntry, Record};

use crate::config::dir_config;
use crate::host::state_of;
use crate::report::{Invariant, LossWork};
use crate::world::{
    trace, Ev, Pending, Sim, DISK_LOSS, HANDOFF_TIMEOUT, RECOVERY_MAX_WAIT, RECOVERY_SETTLE,
    RESET_OUTAGE,
};

impl Sim {
    /// A node leaves gracefully: it hands its children off, then exits.
    pub(crate) fn op_leave(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        let alive = self.alive_nodes();
        let leaving = alive.iter().filter(|&&i| self.nodes[i].leaving).count();
        let down = self.nodes.len() - alive.len();
        if alive.len() - leaving <= 1 || down + leaving >= self.config.max_down {
            return;
        }
        let candidates: Vec<usize> = alive
            .into_iter()
            .filter(|&i| !self.nodes[i].leaving)
            .collect();
        let j = candidates[self.rng.random_range(0..candidates.len())];
        self.tally.event("op: graceful leave");
        trace!(self, "LEAVE n{j}");
        self.nodes[j].leaving = true;
        self.nodes[j].view_leaving.insert(j);
        self.drive(j, |d, h| d.leave(h));
        self.others_learn_of(j);
        let inc = self.nodes[j].inc;
        self.schedule(HANDOFF_TIMEOUT, Ev::LeaveTimeout { node: j, inc });
    }

    /// The leave of `j` (run `inc`) began [`HANDOFF_TIMEOUT`] ago: if it still has not handed
    /// everything off (the nodes it hands to cannot confirm, e.g. without a quorum), it goes all
    /// the same, as the runtime does: its disk written, its children stopped with it, what it
    /// held failed over from the copies elsewhere.
    pub(crate) fn leave_timeout(&mut self, j: usize, inc: u64) {
        let n = &self.nodes[j];
        if !n.alive || n.inc != inc || !n.leaving {
            return;
        }
        self.tally.event("leave timed out (the rest fails over)");
        trace!(self, "LEAVE TIMEOUT n{j}");
        self.flush(j, inc);
        self.crash(j);
    }

    /// A leaving node whose directory handed everything off leaves the membership and exits.
    pub(crate) fn exit(&mut self, j: usize, inc: u64) {
        let n = &self.nodes[j];
        if !n.alive || n.inc != inc || !n.leaving {
            return;
        }
        let d = &n.dir();
        if !(d.handed_off() && d.owned().is_empty() && d.backups().is_empty()) {
            return;
        }
        self.tally.event("graceful exit");
        trace!(self, "EXIT n{j} (left gracefully)");
        if !self.nodes[j].children.is_empty() {
            let what = format!(
                "n{j} exits with children {:?}",
                self.nodes[j].children.keys().collect::<Vec<_>>()
            );
            self.fail(Invariant::Runtime, what);
        }
        // A graceful exit writes what the node still owes its disk (the runtime's `shutdown`
        // returns only once the persister wrote everything): a leaving node's last writes
        // delete the copies it handed off.
        self.flush(j, inc);
        self.clear_children(j);
        let node = &mut self.nodes[j];
        node.alive = false;
        node.leaving = false;
        self.pending.retain(|_, p| !(p.node == j && p.arrived));
        self.others_learn_of(j);
    }

    pub(crate) fn op_node_crash(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        let alive = self.alive_nodes();
        let down = self.nodes.len() - alive.len();
        let leaving = alive.iter().filter(|&&i| self.nodes[i].leaving).count();
        if alive.len() - leaving <= 1 || down + leaving >= self.config.max_down {
            return;
        }
        let j = alive[self.rng.random_range(0..alive.len())];
        self.crash(j);
    }

    pub(crate) fn crash(&mut self, j: usize) {
        self.tally.event("fault: node crash");
        trace!(self, "CRASH n{j}");
        let held: BTreeSet<String> = {
            let d = &self.nodes[j].dir();
            d.owned()
                .keys()
                .chain(d.backups().keys())
                .cloned()
                .collect()
        };
        self.note_loss(j, held.len());
        self.nodes[j].alive = false;
        self.nodes[j].leaving = false;
        self.clear_children(j);
        // Its writes not done yet are lost (its disk stays), and so is what it read from it.
        for key in std::mem::take(&mut self.nodes[j].dirty) {
            if let Some(t) = self.keys.get_mut(&key) {
                t.at_risk = true;
            }
        }
        self.nodes[j].recovery = None;
        self.nodes[j].parked.clear();
        // What it queued for a peer that refuses it never leaves its process.
        for to in 0..self.nodes.len() {
            if to != j && !self.link_up[j][to] {
                let lost = std::mem::take(&mut self.links[j][to]);
                for p in &lost {
                    self.uncarry(j, to, &p.msg);
                }
                for p in lost {
                    self.tally
                        .event("message lost (sender crashed, connection refused)");
                    self.message_lost(&p.msg);
                }
            }
        }
        // Copies that survive: run or backed up on a live node, or in flight to one. A copy held
        // below the state a backup acknowledged (a stale copy a drop to a node out of view
        // missed) does not keep that state.
        let keeps = |k: &str, r: &Record| {
            self.keys
                .get(k)
                .is_none_or(|t| state_of(r).unwrap_or(0) >= t.floor)
        };
        let mut elsewhere: BTreeSet<&str> = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if i != j && n.alive {
                elsewhere.extend(n.dir().owned().keys().map(String::as_str));
                elsewhere.extend(
                    n.dir()
                        .backups()
                        .iter()
                        .filter(|(k, list)| {
                            list.iter()
                                .any(|b| self.live_copy(k, b) && keeps(k, &b.record))
                        })
                        .map(|(k, _)| k.as_str()),
                );
            }
        }
        for (from, links) in self.links.iter().enumerate() {
            for (to, link) in links.iter().enumerate() {
                if to == j || !self.nodes[to].alive {
                    continue;
                }
                for p in link {
                    if let Some(key) = self.live_in_flight(from, &p.msg) {
                        if self.nodes[to].inc == p.to_inc && self.nodes[from].inc == p.from_inc {
                            elsewhere.insert(key);
                        }
                    }
                }
            }
        }
        for (k, c) in self.nodes.iter().flat_map(|n| n.children.iter()) {
            if c.merging {
                elsewhere.insert(k.as_str());
            }
        }
        // A child the crashed node ran without a backup (it saw no other node) had its other
        // copies told to drop (confirmations in flight): it had the only durable copy.
        let unbacked: BTreeSet<&str> = self.nodes[j]
            .dir()
            .owned()
            .iter()
            .filter(|(_, o)| o.backup.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        let lost: Vec<String> = held
            .iter()
            .filter(|k| !elsewhere.contains(k.as_str()) || unbacked.contains(k.as_str()))
            .cloned()
            .collect();
        for key in &held {
            if let Some(t) = self.keys.get_mut(key) {
                t.crashed_holders.insert(j);
                t.ledger = None;
            }
        }
        trace!(
            self,
            "n{j} took the last copy of {lost:?} (unbacked {unbacked:?}, held {held:?})"
        );
        for key in lost {
            if let Some(t) = self.keys.get_mut(&key) {
                t.sole_copy_lost = true;
            }
        }
        // Requests that reached it are lost with it (the client times out).
        self.pending.retain(|_, p| !(p.node == j && p.arrived));
        self.others_learn_of(j);
    }

    /// The run of `j` crashes holding `keys` keys: its loss is measured
    /// ([`Invariant::NodeLossWork`]).
    fn note_loss(&mut self, j: usize, keys: usize) {
        let d = self.nodes[j].dir();
        let own = (d.owned().len() + d.backup_count()) as u64;
        debug_assert!(own >= keys as u64);
        let survivors: Vec<usize> = self.alive_nodes().into_iter().filter(|&i| i != j).collect();
        let held = own;
        let survivors_held = survivors
            .iter()
            .map(|&i| {
                (self.nodes[i].dir().owned().len() + self.nodes[i].dir().backup_count()) as u64
            })
            .sum();
        let loss = LossWork {
            node: j,
            nodes: survivors.len() + 1,
            held,
            survivors_held,
            related: 0,
            view_changes: 0,
            examined: 0,
            quorum_changes: 0,
        };
        self.losses.insert((j, self.nodes[j].inc), loss);
    }

    pub(crate) fn op_node_restart(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].alive)
            .collect();
        if down.is_empty() {
            return;
        }
        let j = down[self.rng.random_range(0..down.len())];
        self.restart(j);
    }

    /// The node `j`, down, starts again: a new run, with a fresh directory (a join), which
    /// reads its disk (if durable) and takes it back once its view has settled.
    pub(crate) fn restart(&mut self, j: usize) {
        self.tally.event("fault: node restart");
        let quorum = self.quorum();
        let durable = self.config.durable;
        let node = &mut self.nodes[j];
        node.alive = true;
        node.inc += 1;
        node.drv = self.config.driver(Directory::new(dir_config(
            &self.ids[j],
            node.inc,
            quorum,
            durable,
        )));
        self.heard[j] = vec![None; self.nodes.len()];
        // A new process: no connection of the previous run is remembered.
        self.reset[j] = vec![None; self.nodes.len()];
        self.declared[j] = vec![None; self.nodes.len()];
        self.clear_children(j);
        let node = &mut self.nodes[j];
        node.view = BTreeMap::from([(j, node.inc)]);
        node.view_leaving.clear();
        node.leaving = false;
        node.deaf = false;
        node.mute = false;
        trace!(self, "RESTART n{j} (incarnation {})", self.nodes[j].inc);
        if self.config.durable {
            self.read_disk(j);
        }
        for i in 0..self.nodes.len() {
            if i == j {
                continue;
            }
            self.sync_link(i, j);
            if let Some(&old) = self.nodes[i].view.get(&j).filter(|_| self.nodes[i].alive) {
                // The new run's handshake tells the old one is gone: the runtime reports the old
                // one down first.
                trace!(self, "n{i}: n{j} reconnects as a new incarnation");
                self.drop_from_view(i, j, old);
            }
        }
        for i in 0..self.nodes.len() {
            if i != j && self.nodes[i].alive {
                let d = self.delay((5, 60));
                self.schedule(
                    d,
                    Ev::View {
                        observer: i,
                        subject: j,
                    },
                );
                let d = self.delay((5, 60));
                self.schedule(
                    d,
                    Ev::View {
                        observer: j,
                        subject: i,
                    },
                );
            }
        }
    }

    pub(crate) fn op_partition(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        let n = self.nodes.len();
        if self.partitioned || n < 2 || !self.config.partitions {
            return;
        }
        // A random non-trivial split: a mask of the nodes up to 63 of them, a side per node
        // above (both sides non-empty).
        if n <= 63 {
            let mask = self.rng.random_range(1..(1u64 << n) - 1);
            for i in 0..n {
                self.nodes[i].side = ((mask >> i) & 1) as u8;
            }
        } else {
            loop {
                for i in 0..n {
                    self.nodes[i].side = u8::from(self.rng.random_bool(0.5));
                }
                let ones = self.nodes.iter().filter(|x| x.side == 1).count();
                if ones != 0 && ones != n {
                    break;
                }
            }
        }
        self.partitioned = true;
        self.views_split = true;
        self.tally.event("fault: partition");
        trace!(
            self,
            "PARTITION {:?} | {:?}",
            (0..n)
                .filter(|&i| self.nodes[i].side == 0)
                .collect::<Vec<_>>(),
            (0..n)
                .filter(|&i| self.nodes[i].side == 1)
                .collect::<Vec<_>>()
        );
        self.all_views_refresh((5, 60));
    }

    pub(crate) fn op_heal(&mut self) {
        if !self.partitioned {
            return;
        }
        self.heal();
        self.all_views_refresh((5, 60));
    }

    pub(crate) fn heal(&mut self) {
        if self.partitioned {
            self.tally.event("fault: heal");
            trace!(self, "HEAL");
        }
        if self.gossip_cut() {
            self.tally.event("fault: gossip heal");
        }
        for n in &mut self.nodes {
            n.side = 0;
            n.deaf = false;
            n.mute = false;
        }
        self.partitioned = false;
        // Held messages flow again (TCP retransmits across a partition that no view noticed).
        let n = self.nodes.len();
        for from in 0..n {
            for to in 0..n {
                if !self.links[from][to].is_empty() {
                    self.schedule(1, Ev::Pump { from, to });
                }
            }
        }
    }

    /// A node's gossip is cut (in, out, or both) while the network to it still works.
    pub(crate) fn op_cut_gossip(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        if !self.config.gossip_cuts || self.gossip_cut() {
            return;
        }
        let alive = self.alive_nodes();
        if alive.len() < 2 {
            return;
        }
        let j = alive[self.rng.random_range(0..alive.len())];
        let (deaf, mute) = match self.rng.random_range(0..3) {
            0 => (true, true),
            1 => (true, false),
            _ => (false, true),
        };
        self.nodes[j].deaf = deaf;
        self.nodes[j].mute = mute;
        self.views_split = true;
        self.tally.event(match (deaf, mute) {
            (true, true) => "fault: gossip cut",
            (true, false) => "fault: gossip cut (deaf)",
            _ => "fault: gossip cut (mute)",
        });
        trace!(self, "GOSSIP CUT n{j} deaf {deaf} mute {mute}");
        self.all_views_refresh((5, 60));
    }

    pub(crate) fn op_heal_gossip(&mut self) {
        if !self.gossip_cut() {
            return;
        }
        self.tally.event("fault: gossip heal");
        trace!(self, "GOSSIP HEAL");
        for n in &mut self.nodes {
            n.deaf = false;
            n.mute = false;
        }
        self.all_views_refresh((5, 60));
    }

    /// A false suspicion: a live node drops a live peer from its view for a while.
    pub(crate) fn op_suspect(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        let alive = self.alive_nodes();
        if alive.len() < 2 || !self.config.partitions {
            return;
        }
        let i = alive[self.rng.random_range(0..alive.len())];
        let j = alive[self.rng.random_range(0..alive.len())];
        if i == j || !self.nodes[i].view.contains_key(&j) {
            return;
        }
        self.tally.event("fault: false suspicion");
        self.views_split = true;
        trace!(self, "n{i} falsely suspects n{j}");
        let inc = self.nodes[j].inc;
        self.declare_down(i, j, inc);
        self.push_view(i);
        let d = self.delay((10, 80));
        self.schedule(
            d,
            Ev::View {
                observer: i,
                subject: j,
            },
        );
    }

    /// A shell fault: the connection between two live nodes is reset (a TCP reset, a backlog
    /// overflow) while membership sees no change. What is in flight on it both ways is lost,
    /// and so is what the clients wait for through it (see [`Sim::fail_requests_between`]);
    /// both drivers are told it closed (`disconnected`), and, once it is back, that it was
    /// re-established (`reconnected`: see [`Sim::sync_link`]).
    pub(crate) fn op_reset_connection(&mut self) {
        if self.full_restart.is_some() {
            // Other faults wait until a full-cluster restart is checked.
            return;
        }
        if !self.config.shell_faults {
            return;
        }
        let alive = self.alive_nodes();
        if alive.len() < 2 {
            return;
        }
        let a = alive[self.rng.random_range(0..alive.len())];
        let b = alive[self.rng.random_range(0..alive.len())];
        if a == b || !self.link_up[a][b] {
            return;
        }
        self.tally.event("fault: connection reset");
        trace!(self, "RESET n{a}-n{b}");
        let runs = (self.nodes[a].inc, self.nodes[b].inc);
        self.cut[a][b] = Some(runs);
        self.cut[b][a] = Some((runs.1, runs.0));
        self.reset[a][b] = Some(self.nodes[b].inc);
        self.reset[b][a] = Some(self.nodes[a].inc);
        self.sync_link(a, b);
        self.fail_requests_between(a, b);
        let d = self.delay(RESET_OUTAGE);
        self.schedule(d, Ev::Reconnect { a, b });
    }

    /// The connection between `a` and `b` that a shell fault reset comes back (if the views
    /// still admit it).
    pub(crate) fn reconnect(&mut self, a: usize, b: usize) {
        self.cut[a][b] = None;
        self.cut[b][a] = None;
        trace!(self, "n{a}-n{b} may reconnect");
        self.sync_link(a, b);
    }

    /// The requests between a client on `a` and a directory on `b` (or the other way) fail when
    /// their connection is reset, as the runtime fails every call in flight to a lost peer: a
    /// request still in flight is lost; one that arrived is handled, but its answer is lost.
    /// Either way the client sees an error and sends the request again.
    fn fail_requests_between(&mut self, a: usize, b: usize) {
        let between = |p: &Pending| {
            !p.reply_lost && ((p.client, p.node) == (a, b) || (p.client, p.node) == (b, a))
        };
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| between(p))
            .map(|(&req, _)| req)
            .collect();
        for req in failed {
            let p = self.pending.get_mut(&req).expect("listed");
            let retry = (p.kind, p.key.clone(), p.attempt);
            if p.arrived {
                p.reply_lost = true;
                self.tally.event("fault: reply lost (connection reset)");
            } else {
                self.pending.remove(&req);
                self.tally.event("fault: request lost (connection reset)");
            }
            trace!(self, "request {req} failed: connection n{a}-n{b} reset");
            self.retry(retry.0, retry.1, retry.2);
        }
    }

    /// The new run of `j` reads its disk (unless the disk was lost): what it reads comes back
    /// once its view has settled ([`Sim::recover_due`]).
    fn read_disk(&mut self, j: usize) {
        if self.rng.random_bool(DISK_LOSS) {
            self.tally.event("fault: disk lost");
            trace!(self, "n{j} lost its disk");
            self.nodes[j].disk_view = None;
            for key in std::mem::take(&mut self.nodes[j].disk).into_keys() {
                if let Some(t) = self.keys.get_mut(&key) {
                    t.at_risk = true;
                }
            }
        }
        let entries: Vec<(String, DurableEntry)> = self.nodes[j]
            .disk
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        if let Ok(k) = std::env::var("SIM_WATCH") {
            if let Some(e) = self.nodes[j].disk.get(&k) {
                let records: Vec<_> = e
                    .records
                    .iter()
                    .map(|r| (r.generation, r.version, state_of(r)))
                    .collect();
                trace!(
                    self,
                    "n{j} reads {k} from its disk: {records:?}, buried {:?}",
                    e.buried
                );
            }
        }
        if let Some(fr) = self.full_restart.as_mut() {
            fr.down.remove(&j);
            for (key, entry) in &entries {
                let s = fr.survived.entry(key.clone()).or_default();
                s.buried.extend(entry.buried.iter().copied());
                for r in &entry.records {
                    let state = state_of(r).unwrap_or(0);
                    let newest = s.states.entry(r.generation).or_default();
                    *newest = (*newest).max(state);
                }
            }
        }
        let node = &mut self.nodes[j];
        node.dirty.clear();
        node.unsynced = node.disk.keys().cloned().collect();
        // Read at the start (before any input), taken back once the view settled: until then
        // every write includes them (`Directory::preload`), as in the runtime.
        node.drv.preload(entries);
        node.recovery = Some(Vec::new());
        node.previous = node.disk_view.clone();
        node.settle_at = self.now + RECOVERY_SETTLE;
        node.recover_by = self.now + RECOVERY_MAX_WAIT;
        let inc = node.inc;
        self.schedule(RECOVERY_SETTLE, Ev::Recover { node: j, inc });
        self.schedule(RECOVERY_MAX_WAIT, Ev::Recover { node: j, inc });
    }
}
