//! The simulated network and membership: one FIFO connection per pair with random delays, the
//! views each node's membership updates pair by pair, connections that close and come back as the
//! views change, and the delivery of messages to the directories.

use throng_core::directory::{DirMsg, Record};
use throng_core::NodeId;

use crate::host::{msg_kind, state_of, Effect};
use crate::world::{trace, Ev, Expect, Sim, RECOVERY_SETTLE};

impl Sim {
    /// Every other live node updates its view of `j` after its own random delay.
    pub(crate) fn others_learn_of(&mut self, j: usize) {
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
            }
        }
    }

    pub(crate) fn all_views_refresh(&mut self, delay: (u64, u64)) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i != j && self.nodes[i].alive {
                    let d = self.delay(delay);
                    self.schedule(
                        d,
                        Ev::View {
                            observer: i,
                            subject: j,
                        },
                    );
                }
            }
        }
    }

    /// Whether the connection between `a` and `b` may be up: neither end declared the other's
    /// current run down (the runtime closes the connection to a run its membership declared
    /// down, and both its acceptor and its dialer refuse that run until membership reports it up
    /// again, so a one-way drop cuts both directions), and one end knows the other (a run not
    /// in the view yet, and never declared down, is accepted); and no shell fault reset it
    /// (it is not back yet).
    pub(crate) fn admitted(&self, a: usize, b: usize) -> bool {
        let refuses = |x: usize, y: usize| self.declared[x][y] == Some(self.nodes[y].inc);
        let knows = |x: usize, y: usize| self.nodes[x].view.get(&y) == Some(&self.nodes[y].inc);
        !self.is_cut(a, b) && !refuses(a, b) && !refuses(b, a) && (knows(a, b) || knows(b, a))
    }

    /// The messages in flight between `a` and `b`, both ways, are lost.
    fn lose_in_flight(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let lost = std::mem::take(&mut self.links[x][y]);
            for p in &lost {
                self.uncarry(x, y, &p.msg);
            }
            for p in lost {
                self.tally.event("message lost (connection closed)");
                trace!(self, "lost n{x}->n{y} {}", msg_kind(&p.msg));
                self.message_lost(&p.msg);
            }
        }
    }

    /// `observer`'s view drops `subject`'s run `inc`: its membership declared that run down. The
    /// runtime forgets the peer: its connection closes and the frames queued for it are dropped,
    /// so every message between the two in flight is lost.
    pub(crate) fn declare_down(&mut self, observer: usize, subject: usize, inc: u64) {
        self.lose_in_flight(observer, subject);
        self.nodes[observer].view.remove(&subject);
        self.nodes[observer].view_leaving.remove(&subject);
        self.declared[observer][subject] = Some(inc);
        self.kept[observer][subject] = false;
        self.sync_link(observer, subject);
    }

    /// Re-evaluates the connection between `a` and `b` after a view or a run changed. It closes
    /// when either end stops admitting the other: the messages in flight both ways are lost
    /// (unread frames die with the TCP connection, unwritten ones with the lane). It comes back
    /// once both admit each other again: an end that kept the other in its view all along is
    /// told ([`Directory::reconnected`]) and re-sends what the other must hold; an end that
    /// re-added the other reconciled through `set_members`.
    ///
    /// [`Directory::reconnected`]: throng_core::directory::Directory::reconnected
    pub(crate) fn sync_link(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        let up = self.admitted(a, b);
        if self.link_up[a][b] && !up {
            self.link_up[a][b] = false;
            self.link_up[b][a] = false;
            self.lose_in_flight(a, b);
            for (x, y) in [(a, b), (b, a)] {
                self.kept[x][y] =
                    self.nodes[x].alive && self.nodes[x].view.get(&y) == Some(&self.nodes[y].inc);
            }
            trace!(self, "connection n{a}-n{b} closed");
            for (x, y) in [(a, b), (b, a)] {
                // The runtime reports every closed connection to the directory; it matters
                // only for a peer out of the view (see `Directory::disconnected`).
                if self.nodes[x].alive {
                    let peer = self.ids[y].clone();
                    self.drive(x, |d, h| d.disconnected(h, &peer));
                }
            }
        } else if !self.link_up[a][b] && up {
            self.link_up[a][b] = true;
            self.link_up[b][a] = true;
            trace!(self, "connection n{a}-n{b} up");
            for (x, y) in [(a, b), (b, a)] {
                // What an end queued meanwhile is written now.
                if !self.links[x][y].is_empty() {
                    self.schedule(1, Ev::Pump { from: x, to: y });
                }
            }
            for (x, y) in [(a, b), (b, a)] {
                let kept = std::mem::take(&mut self.kept[x][y]);
                let reset = self.reset[x][y].take() == Some(self.nodes[y].inc);
                if (kept || reset) && self.nodes[x].alive {
                    trace!(self, "n{x}: reconnected to n{y}");
                    let peer = self.ids[y].clone();
                    self.drive(x, |d, h| d.reconnected(h, &peer));
                }
            }
        }
    }

    /// `observer`'s membership declares `subject`'s run `inc` down and its view drops it. If that
    /// run crashed, the work the view change cost `observer`'s directory is added to the crash's
    /// [`LossWork`](crate::LossWork).
    pub(crate) fn drop_from_view(&mut self, observer: usize, subject: usize, inc: u64) {
        let before = self.nodes[observer].dir().work();
        let had_quorum = self.nodes[observer].dir().has_quorum();
        let viewed = self.nodes[observer].dir().view().clone();
        // What refers to every node the view has now: a view change can drop several at once
        // (others declared down or gone meanwhile), and its work is for all of them.
        let related_to: Vec<(NodeId, u64)> = (0..self.ids.len())
            .filter(|&j| j != observer && viewed.contains(&self.ids[j]))
            .map(|j| (self.ids[j].clone(), self.related(observer, j)))
            .collect();
        self.declare_down(observer, subject, inc);
        self.push_view(observer);
        let examined = self.nodes[observer].dir().work() - before;
        let now = self.nodes[observer].dir().view();
        let related = related_to
            .iter()
            .filter(|(n, _)| !now.contains(n) || *n == self.ids[subject])
            .map(|(_, r)| r)
            .sum::<u64>();
        let quorum_changed = had_quorum != self.nodes[observer].dir().has_quorum();
        // A view change that also brought nodes in reconciles with each of them (what is held
        // for it, the removals known): work of the join, not of the loss.
        let joined = !self.nodes[observer].dir().view().is_subset(&viewed);
        // A node that is leaving hands its children off at its view changes: work of its own
        // leave, not of the loss.
        let leaving = self.nodes[observer].view_leaving.contains(&observer);
        if let Some(loss) = self.losses.get_mut(&(subject, inc)) {
            if quorum_changed || joined || leaving {
                loss.quorum_changes += 1;
            } else {
                loss.view_changes += 1;
                loss.examined += examined;
                loss.related += related;
            }
        }
    }

    /// The entries of `observer`'s directory that refer to `subject`: copies held from it,
    /// children it backs up, children owned by it in `observer`'s view (on their way to it).
    fn related(&self, observer: usize, subject: usize) -> u64 {
        let d = self.nodes[observer].dir();
        let name = &self.ids[subject];
        let copies = d.backups().values().flatten().filter(|b| b.from == *name);
        let children = d.owned().iter().filter(|(key, o)| {
            o.backup.as_ref() == Some(name) || d.owner(key).as_ref() == Some(name)
        });
        (copies.count() + children.count()) as u64
    }

    pub(crate) fn push_view(&mut self, i: usize) {
        let n = &self.nodes[i];
        let owners: Vec<NodeId> = n
            .view
            .keys()
            .filter(|j| !n.view_leaving.contains(j))
            .map(|&j| self.ids[j].clone())
            .collect();
        let leaving: Vec<NodeId> = n
            .view_leaving
            .iter()
            .map(|&j| self.ids[j].clone())
            .collect();
        trace!(
            self,
            "n{i}: view {:?} leaving {:?}",
            self.nodes[i].view.keys(),
            self.nodes[i].view_leaving
        );
        self.tally.event("view change");
        self.drive(i, |d, h| d.set_members(h, owners.iter(), leaving.iter()));
        if self.nodes[i].recovery.is_some() {
            // A run that has not taken its disk back waits until its view settles, or until
            // every owner of the view its disk kept is an owner again.
            let inc = self.nodes[i].inc;
            let n = &self.nodes[i];
            let back = crate::world::RECOVER_WHEN_PREVIOUS_VIEW_BACK
                && n.previous.as_ref().is_some_and(|p| {
                    p.iter()
                        .all(|j| n.view.contains_key(j) && !n.view_leaving.contains(j))
                });
            self.nodes[i].settle_at = self.now + if back { 0 } else { RECOVERY_SETTLE };
            self.schedule(RECOVERY_SETTLE, Ev::Recover { node: i, inc });
            if back {
                self.tally
                    .event("durable: previous view back, no settle wait");
                self.recover_due(i, inc);
            }
        } else if self.config.durable {
            // The runtime writes the owners of its view with its entries.
            self.nodes[i].disk_view = Some(owners_of(&self.nodes[i]));
        }
    }

    pub(crate) fn view_event(&mut self, observer: usize, subject: usize) {
        if !self.nodes[observer].alive || observer == subject {
            return;
        }
        let target = self
            .hears(observer, subject)
            .then_some(self.nodes[subject].inc);
        let current = self.nodes[observer].view.get(&subject).copied();
        let heard = self.heard[observer][subject];
        let heard_dead = !self.nodes[subject].alive || heard != Some(self.nodes[subject].inc);
        if current.is_none() && heard.is_some() && heard_dead {
            // The membership reports a node this one never had in its view as dead, or back as
            // a new incarnation: the runtime reports the incarnation it heard from as down.
            let down = self.ids[subject].clone();
            self.drive(observer, |d, h| d.node_down(h, &down));
        }
        let target_leaving = target.is_some() && self.nodes[subject].leaving;
        if current == target {
            if self.nodes[observer].view_leaving.contains(&subject) != target_leaving {
                // The membership tells it leaves.
                if target_leaving {
                    self.nodes[observer].view_leaving.insert(subject);
                } else {
                    self.nodes[observer].view_leaving.remove(&subject);
                }
                self.push_view(observer);
            }
            return;
        }
        if let Some(inc) = current {
            // Gone, or back as a new incarnation: it leaves the view first, and the runtime
            // closes the connection to it (even if only the gossip was cut: a run declared down
            // cannot talk to this node until membership reports it up again).
            self.drop_from_view(observer, subject, inc);
        }
        if let Some(inc) = target {
            self.nodes[observer].view.insert(subject, inc);
            if self.declared[observer][subject] == Some(inc) {
                self.declared[observer][subject] = None;
            }
            if target_leaving {
                self.nodes[observer].view_leaving.insert(subject);
            }
            self.push_view(observer);
            self.sync_link(observer, subject);
        }
    }

    pub(crate) fn pump(&mut self, from: usize, to: usize) {
        while self.links[from][to]
            .front()
            .is_some_and(|p| p.ready <= self.now)
        {
            if self.nodes[from].side != self.nodes[to].side || !self.link_up[from][to] {
                // Partitioned, or the connection is refused: held until the heal, or until the
                // connection is up (lost if a view change closes the link).
                return;
            }
            let p = self.links[from][to].pop_front().expect("front");
            self.uncarry(from, to, &p.msg);
            self.deliver(from, p.from_inc, to, p.to_inc, p.msg);
        }
    }

    fn deliver(&mut self, from: usize, from_inc: u64, to: usize, to_inc: u64, msg: DirMsg) {
        let ok = self.nodes[to].alive
            && self.nodes[to].inc == to_inc
            && self.nodes[from].inc == from_inc;
        if !ok {
            self.tally.event("message lost (node down)");
            trace!(self, "drop n{from}->n{to} {}", msg_kind(&msg));
            self.message_lost(&msg);
            return;
        }
        if self.heard[to][from].is_some_and(|h| h != from_inc)
            && !self.nodes[to].view.contains_key(&from)
        {
            // The first message of a new incarnation of a node this one heard from but never had
            // in its view: the handshake tells the old incarnation is gone, and the runtime
            // reports it down before delivering anything from the new one (otherwise the backups
            // the old one replicated here would never be failed over, and the new incarnation's
            // `Held` reconciliation would drop them: the child is lost).
            trace!(
                self,
                "n{to}: n{from} is back as a new incarnation (old one down)"
            );
            let down = self.ids[from].clone();
            self.drive(to, |d, h| d.node_down(h, &down));
        }
        trace!(self, "n{from}->n{to} {msg:?}");
        self.heard[to][from] = Some(from_inc);
        if !self.nodes[from].alive && !self.nodes[to].view.contains_key(&from) {
            // The last messages of a crashed node reach a node that never had it in its view: the
            // membership reports that incarnation down to it too (`node_down`).
            let d = self.delay((5, 60));
            self.schedule(
                d,
                Ev::View {
                    observer: to,
                    subject: from,
                },
            );
        }
        let replicated = match &msg {
            DirMsg::Replicate { record: r, .. } => Some((r.key.clone(), state_of(r))),
            _ => None,
        };
        let acked = match &msg {
            DirMsg::Ack { key, version, .. } => Some((key.clone(), *version)),
            _ => None,
        };
        // A crashed node's last messages still arrive: a confirmation from it may make the
        // receiver drop what was the last surviving copy (the crashed node had taken it).
        let dropped_by_dead = match &msg {
            DirMsg::Drop { key, .. } if !self.nodes[from].alive => Some(key.clone()),
            _ => None,
        };
        if let DirMsg::Adopt {
            record,
            moved: false,
            ..
        } = &msg
        {
            // A failed-over copy passed on (it may move on before its `FailedOver` event): with
            // views split, a removal on the other side does not reach it.
            if self.views_split {
                if let Some(t) = self.keys.get_mut(&record.key) {
                    if t.expect == Expect::Gone || t.removal_ok {
                        t.split = true;
                    }
                }
            }
        }
        if let DirMsg::Adopt { record, .. } = &msg {
            self.note_identical_copy(to, record);
        }
        let sender = self.ids[from].clone();
        let effects = self.run_driver(to, |d, h| d.receive(h, &sender, msg));
        if let Some((key, state)) = replicated {
            let was_acked = effects
                .iter()
                .any(|e| matches!(e, Effect::Send(_, DirMsg::Ack { key: k, .. }) if *k == key));
            if was_acked {
                if let (Some(t), Some(s)) = (self.keys.get_mut(&key), state) {
                    t.floor = t.floor.max(s);
                }
            }
        }
        if let Some((key, version)) = acked {
            // The owner's current version is held by its backup, which is still up: the key is
            // fully replicated again, earlier crashes of its holders no longer matter.
            let full = self.nodes[to].dir().owned().get(&key).is_some_and(|o| {
                o.record.version == version && o.backup.as_ref() == Some(&self.ids[from])
            }) && self.nodes[from].alive;
            if full {
                let state = self.nodes[to]
                    .dir()
                    .owned()
                    .get(&key)
                    .and_then(|o| state_of(&o.record));
                if let Some(t) = self.keys.get_mut(&key) {
                    let state = state.unwrap_or(0);
                    if t.crashed_holders.len() >= 2 || t.sole_copy_lost {
                        // The fault's loss (if any) is behind: the state to keep from now on
                        // is the one replicated again.
                        t.floor = state;
                        t.crashed_holders.clear();
                        t.sole_copy_lost = false;
                    } else if state >= t.floor {
                        t.crashed_holders.clear();
                    }
                    // Otherwise an older copy runs replicated (a stale disk copy on the side
                    // that holds the quorum) while the acknowledged state is held only beside
                    // a crashed holder (its other holder cut off, say): the crash still counts,
                    // and a second one makes a double fault.
                }
            }
        }
        self.apply(to, effects);
        self.watch();
        if let Some(key) = dropped_by_dead {
            if !self.has_copy(&key) {
                if let Some(t) = self.keys.get_mut(&key) {
                    t.sole_copy_lost = true;
                }
            }
        }
    }

    /// With a trace, `SIM_WATCH=key` prints the copies of `key` every node holds whenever they
    /// change.
    pub(crate) fn watch(&mut self) {
        if !self.config.trace {
            return;
        }
        let Ok(k) = std::env::var("SIM_WATCH") else {
            return;
        };
        let mut now = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(list) = n.dir().backups().get(&k) {
                let copies: Vec<_> = list
                    .iter()
                    .map(|b| (b.from.as_str(), b.handoff, b.epoch, b.record.version))
                    .collect();
                now.push_str(&format!(" n{i}: {copies:?}"));
            }
        }
        if now != self.watched {
            eprintln!("    copies of {k}:{now}");
            self.watched = now;
        }
    }

    /// A copy offered to `node`, which runs the child: while views are split, a copy identical to
    /// the one running (same generation and state, no newer version) may be another lineage
    /// whose updates differ (the same number of them on each side). The directory merges
    /// nothing then, so the simulator cannot see the two copies meet as it does through a merge;
    /// it notes them as merged (updates may be lost, as in a merge).
    fn note_identical_copy(&mut self, node: usize, record: &Record) {
        if !self.views_split {
            return;
        }
        let identical = self.nodes[node]
            .dir()
            .owned()
            .get(&record.key)
            .is_some_and(|o| {
                o.record.generation == record.generation
                    && record.version <= o.record.version
                    && record.snapshot == o.record.snapshot
            });
        if identical {
            if let Some(t) = self.keys.get_mut(&record.key) {
                t.merged = true;
            }
        }
    }
}

/// The owners of `n`'s view: up, not leaving.
pub(crate) fn owners_of(n: &crate::world::Node) -> std::collections::BTreeSet<usize> {
    let leaving = &n.view_leaving;
    n.view
        .keys()
        .filter(|j| !leaving.contains(j))
        .copied()
        .collect()
}
