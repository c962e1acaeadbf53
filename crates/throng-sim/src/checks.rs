//! The invariant checks ([`Invariant`]): the directories' own check after every step, the
//! hand-off check when a moved child starts, the sides' check before a heal, and the checks after
//! every convergence.

use std::collections::{BTreeMap, BTreeSet};

use throng_core::directory::{DurableEntry, Generation, Version};
use throng_core::NodeId;

use crate::host::state_of;
use crate::report::Invariant;
use crate::world::{
    trace, ChildPhase, Expect, KeyTrack, Pending, Sim, Survived, FULL_CHECKS_UP_TO, MAX_FAILURES,
};

/// Why a key's updates may legitimately have been lost or merged since the last convergence.
fn lossy_excuse(t: &KeyTrack) -> Option<&'static str> {
    if t.split {
        Some("split brain (two copies, or a removal and a failover, on two sides)")
    } else if t.merged {
        Some("two copies merged (views disagreed)")
    } else if !t.crashed_holders.is_empty() || t.sole_copy_lost {
        Some("a node holding a copy crashed (restart from an older snapshot)")
    } else if t.removal_ok {
        Some("removal begun, not acknowledged (failed over from an older backup)")
    } else {
        None
    }
}

/// The excuse of [`Sim::removal_out_of_reach`].
const REMOVAL_OUT_OF_REACH: &str = "every node that keeps the removal is down (double fault)";

impl Sim {
    /// [`Invariant::Directory`] after a step: every live node's directory is consistent in
    /// itself. A check costs O(entries), so above [`FULL_CHECKS_UP_TO`] keys one live directory
    /// is checked per step, in turn (every one at each convergence), to keep a step's cost
    /// independent of the cluster's size.
    pub(crate) fn check_directories(&mut self) {
        if self.keys.len() <= FULL_CHECKS_UP_TO {
            self.check_all_directories();
            return;
        }
        let n = self.nodes.len();
        for _ in 0..n {
            let i = self.next_checked % n;
            self.next_checked = (i + 1) % n;
            if self.nodes[i].alive {
                self.check_directory(i);
                return;
            }
        }
    }

    /// [`Invariant::Directory`] on every live node.
    pub(crate) fn check_all_directories(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive {
                self.check_directory(i);
            }
        }
    }

    fn check_directory(&mut self, i: usize) {
        self.check(Invariant::Directory);
        if let Err(broken) = self.nodes[i].dir().check() {
            self.fail(Invariant::Directory, format!("n{i}: {broken}"));
        }
    }

    /// [`Invariant::NodeLossWork`]: the crashes since the last convergence, now that every
    /// survivor has dropped them from its view.
    fn check_loss_work(&mut self) {
        for (_, loss) in std::mem::take(&mut self.losses) {
            if loss.view_changes == 0 {
                // No survivor (a full-cluster restart), or every survivor restarted first.
                continue;
            }
            self.tally.losses.push(loss);
            if !self.config.work_bound {
                continue;
            }
            self.check(Invariant::NodeLossWork);
            if loss.examined > loss.bound() {
                let what = format!(
                    "the loss of n{} (holding {} entries) cost {} view changes {} entries \
                     examined, bound {} (the survivors held {})",
                    loss.node,
                    loss.held,
                    loss.view_changes,
                    loss.examined,
                    loss.bound(),
                    loss.survivors_held
                );
                self.fail(Invariant::NodeLossWork, what);
            }
        }
    }

    /// Whether every live directory has the same ring and a quorum: then they agree on every
    /// owner (the owner is a pure function of the ring), and placement is computed once per key.
    fn rings_agree(&self, alive: &[usize]) -> bool {
        let Some(&first) = alive.first() else {
            return true;
        };
        let ring = self.nodes[first].dir().ring();
        alive.iter().all(|&i| {
            let d = self.nodes[i].dir();
            d.has_quorum() && d.ring() == ring
        })
    }

    /// A child handed off gracefully started on `node`: its state must be its state at the
    /// drain-stop (every update it accepted before included, none after).
    pub(crate) fn check_handoff(&mut self, node: usize, key: &str) {
        let Some(t) = self.keys.get(key) else {
            return;
        };
        let (Some((_, moved, (generation, version))), true) = (t.moved_state, t.snapshots) else {
            return;
        };
        let adopted = self.nodes[node]
            .dir()
            .owned()
            .get(key)
            .map(|o| (o.record.generation, o.record.version));
        let excuse = match adopted {
            // An older copy of the same child, from before the drain-stop: a hand-off copy
            // whose confirmation was lost (a partition, a restart) sent again, which arrived
            // before the newer one. Not this move's hand-off: the newer copy is merged into it
            // when it arrives, and the state is checked at convergence.
            Some((g, v)) if g == generation && v < version => {
                Some("an older hand-off copy sent again arrived first (merged)")
            }
            _ => lossy_excuse(t),
        };
        self.keys.get_mut(key).expect("tracked").moved_state = None;
        let Some(state) = self.nodes[node].children.get(key).map(|c| c.state) else {
            return;
        };
        self.check(Invariant::HandOff);
        if state == moved {
            return;
        }
        match excuse {
            Some(why) => self.tally.excuse(why),
            None => {
                let what = format!(
                    "{key} adopted by n{node} with state {state}, drain-stopped at {moved}"
                );
                self.fail(Invariant::HandOff, what);
            }
        }
    }

    /// [`Invariant::SideRuns`].
    pub(crate) fn check_sides(&mut self) {
        let alive = self.alive_nodes();
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        for &i in &alive {
            if seen.contains(&i) {
                continue;
            }
            let view: BTreeSet<usize> = self.nodes[i].view.keys().copied().collect();
            let side: BTreeSet<usize> = view
                .iter()
                .copied()
                .filter(|&j| {
                    self.nodes[j].alive
                        && self.nodes[j].view.keys().copied().collect::<BTreeSet<_>>() == view
                })
                .collect();
            seen.extend(side.iter().copied());
            // Nobody outside sees into it either (a one-way cut leaves it half open).
            let closed = alive
                .iter()
                .filter(|j| !side.contains(j))
                .all(|&j| self.nodes[j].view.keys().all(|k| !side.contains(k)));
            if side != view
                || !closed
                || !self.nodes[i].dir().has_quorum()
                || self.nodes[i].dir().ring().is_empty()
            {
                // Views that disagree (a one-way cut), a side without a quorum, or a side of
                // leaving nodes only (a leaving node owns nothing: it hands its children off and
                // keeps their copies until an owner confirms): nothing to require.
                continue;
            }
            let mut held: BTreeSet<String> = BTreeSet::new();
            for &j in &side {
                let d = &self.nodes[j].dir();
                held.extend(d.owned().keys().cloned());
                held.extend(d.backups().keys().cloned());
            }
            for key in held {
                self.check(Invariant::SideRuns);
                let runs = side.iter().any(|&j| {
                    self.nodes[j]
                        .children
                        .get(&key)
                        .is_some_and(|c| c.phase == ChildPhase::Running)
                });
                if !runs {
                    let what = format!("side {side:?} holds a copy of {key} and does not run it");
                    self.fail(Invariant::SideRuns, what);
                }
            }
        }
    }

    pub(crate) fn check_invariants(&mut self) {
        let alive = self.alive_nodes();
        // Views converged to the live set. The ring orders its nodes by name (`n10` before
        // `n2`), the view and the live list by index: compare them sorted the same way.
        for &i in &alive {
            let view: Vec<usize> = self.nodes[i].view.keys().copied().collect();
            let mut ring: Vec<usize> = self.nodes[i]
                .dir()
                .ring()
                .nodes()
                .iter()
                .map(|n| self.index(n))
                .collect();
            ring.sort_unstable();
            if view != alive || ring != alive {
                let what = format!("n{i} view {view:?} ring {ring:?}, live {alive:?}");
                self.fail(Invariant::Quiescence, what);
            }
        }
        self.check_loss_work();
        if self.keys.len() > FULL_CHECKS_UP_TO {
            // One directory per step at scale: all of them now.
            self.check_all_directories();
        }
        let shared_owner = self.keys.len() > FULL_CHECKS_UP_TO && self.rings_agree(&alive);
        // Where each key runs (runtime children).
        let mut running: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &alive {
            for (key, c) in &self.nodes[i].children {
                running.entry(key.clone()).or_default().push(i);
                if c.phase != ChildPhase::Running {
                    let what = format!("n{i}: {key} still {:?} when quiet", c.phase);
                    self.tally.violations[Invariant::Runtime as usize] += 1;
                    if self.failures.len() < MAX_FAILURES {
                        self.failures.push(format!("step {}: {what}", self.now));
                    }
                }
            }
        }
        // The runtime and the directory agree.
        for &i in &alive {
            self.check(Invariant::Runtime);
            let mut bad = Vec::new();
            for (key, o) in self.nodes[i].dir().owned() {
                let child = self.nodes[i].children.get(key);
                if o.phase != throng_core::directory::Phase::Running || child.is_none() {
                    bad.push(format!("{key}: directory {:?}, runtime {child:?}", o.phase));
                }
            }
            for key in self.nodes[i].children.keys() {
                if !self.nodes[i].dir().owned().contains_key(key) {
                    bad.push(format!("{key}: runs but the directory does not know it"));
                }
            }
            for b in bad {
                self.fail(Invariant::Runtime, format!("n{i}: {b}"));
            }
        }
        // Unanswered requests.
        let pending: Vec<(u64, Pending)> = std::mem::take(&mut self.pending).into_iter().collect();
        for (req, p) in pending {
            if self.nodes[p.node].alive && self.nodes[p.node].inc == p.inc {
                self.check(Invariant::Replies);
                self.fail(
                    Invariant::Replies,
                    format!(
                        "request {req} ({:?} {}) to n{} never answered",
                        p.kind, p.key, p.node
                    ),
                );
            }
        }

        if self.config.durable {
            self.check_durable();
            self.check_stays_removed();
        }
        // Per key.
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        for key in keys {
            let nodes = running.get(&key).cloned().unwrap_or_default();
            let t = self.keys[&key].clone();
            let excuse = if t.split {
                Some("split brain (two copies, or a removal and a failover, on two sides)")
            } else if t.late_starts > 0 && t.expect == Expect::Gone {
                Some("a start after the removal was never answered (its node crashed)")
            } else if t.crashed_holders.len() >= 2 {
                Some("double fault (owner and backup crashed)")
            } else if t.sole_copy_lost {
                Some("sole copy crashed (no backup held it yet)")
            } else if t.at_risk {
                Some("a durable write of the key was lost (pending at a crash, or its disk)")
            } else if t.expect == Expect::Gone && self.removal_out_of_reach(&key, &t.removed) {
                Some(REMOVAL_OUT_OF_REACH)
            } else {
                None
            };
            // Exactly once.
            self.check(Invariant::Duplicate);
            if nodes.len() > 1 {
                self.fail(Invariant::Duplicate, format!("{key} runs on {nodes:?}"));
            }
            match t.expect {
                Expect::Running => {
                    self.check(Invariant::Lost);
                    if nodes.is_empty() {
                        // A removal (terminate, or an exit its policy does not restart) began but
                        // was not acknowledged (its node crashed first): either outcome is right.
                        let excuse = excuse.or(t.removal_ok.then_some(
                            "removal begun, not acknowledged (either outcome is right)",
                        ));
                        match excuse {
                            Some(why) => self.tally.excuse(why),
                            None => {
                                let what = format!(
                                    "{key} ({:?}) acknowledged but runs nowhere",
                                    t.spec.policy
                                );
                                self.fail(Invariant::Lost, what);
                            }
                        }
                    }
                }
                Expect::Gone => {
                    self.check(Invariant::Resurrected);
                    if !nodes.is_empty() {
                        match excuse {
                            Some(why) => self.tally.excuse(why),
                            None => {
                                let what = format!("{key} was removed but runs on {nodes:?}");
                                self.fail(Invariant::Resurrected, what);
                            }
                        }
                    }
                }
                Expect::Unknown => {}
            }
            if let [x] = nodes[..] {
                // Placement: everyone agrees the runner owns it.
                self.check(Invariant::Placement);
                let owners: BTreeSet<Option<NodeId>> = if shared_owner {
                    BTreeSet::from([self.nodes[x].dir().owner(&key)])
                } else {
                    alive
                        .iter()
                        .map(|&i| self.nodes[i].dir().owner(&key))
                        .collect()
                };
                if owners.len() != 1 || owners.first() != Some(&Some(self.ids[x].clone())) {
                    self.fail(
                        Invariant::Placement,
                        format!("{key} runs on n{x}, owners {owners:?}"),
                    );
                }
                // Replicated.
                self.check(Invariant::Replicated);
                let dir = &self.nodes[x].dir();
                let o = &dir.owned()[&key];
                let want = dir.backup_of(&key);
                let version = o.record.version;
                let epoch = o.epoch;
                let ok = o.backup == want
                    && want.as_ref().is_none_or(|b| {
                        let b = self.index(b);
                        self.nodes[b].dir().backups().get(&key).is_some_and(|list| {
                            list.iter().any(|h| {
                                h.from == self.ids[x]
                                    && h.handoff.is_none()
                                    && h.epoch == epoch
                                    && h.record.version == version
                            })
                        })
                    });
                if !ok {
                    let what = format!(
                        "{key} on n{x} (v{version}): backup {:?}, should be {want:?}",
                        o.backup
                    );
                    self.fail(Invariant::Replicated, what);
                }
                // State kept.
                if t.expect == Expect::Running {
                    self.check(Invariant::StateKept);
                    let state = self.nodes[x].children[&key].state;
                    if state < t.floor {
                        match excuse {
                            Some(why) => self.tally.excuse(why),
                            None => {
                                let what = format!(
                                    "{key} on n{x} has state {state}, a backup acknowledged {}",
                                    t.floor
                                );
                                self.fail(Invariant::StateKept, what);
                            }
                        }
                    }
                }
            }
            // Accepted updates, exactly once.
            if let ([x], Expect::Running, Some(want)) = (&nodes[..], t.expect, t.ledger) {
                self.check(Invariant::Updates);
                let state = self.nodes[*x].children[&key].state;
                if state != want {
                    match lossy_excuse(&t) {
                        Some(why) => self.tally.excuse(why),
                        None => {
                            let what = format!(
                                "{key} on n{x} has state {state}, accepted updates make {want}"
                            );
                            self.fail(Invariant::Updates, what);
                        }
                    }
                }
            }
            // New epoch.
            let running_state = match nodes[..] {
                [x] => Some(self.nodes[x].children[&key].state),
                _ => None,
            };
            let durable = match nodes[..] {
                [x] => self.nodes[x]
                    .dir()
                    .owned()
                    .get(&key)
                    .and_then(|o| state_of(&o.record)),
                _ => None,
            };
            let t = self.keys.get_mut(&key).expect("tracked");
            t.split = false;
            t.late_starts = 0;
            t.crashed_holders.clear();
            t.sole_copy_lost = false;
            t.floor = durable.unwrap_or(0);
            t.merged = false;
            t.moved_state = None;
            t.ledger = if t.snapshots { running_state } else { None };
            t.expect = match (t.expect, nodes.len()) {
                (Expect::Gone, 0) => Expect::Gone,
                (_, 1) => Expect::Running,
                _ => Expect::Unknown,
            };
        }
        // Stale backups: held for a node that does not run the key or has its backup elsewhere.
        let mut bad = Vec::new();
        for &b in &alive {
            for (key, h) in self.nodes[b]
                .dir()
                .backups()
                .iter()
                .flat_map(|(k, list)| list.iter().map(move |h| (k, h)))
            {
                self.tally.checks[Invariant::StaleBackup as usize] += 1;
                let from = self.index(&h.from);
                let valid = self.nodes[from].alive
                    && h.handoff.is_none()
                    && self.nodes[from].dir().owned().get(key).is_some_and(|o| {
                        o.backup.as_ref() == Some(&self.ids[b]) && o.epoch == h.epoch
                    });
                if !valid {
                    let what = format!(
                        "n{b} holds a stale copy of {key} from {} ({:?}, {:?})",
                        h.from, h.handoff, h.epoch
                    );
                    bad.push(what);
                }
            }
        }
        for what in bad {
            self.fail(Invariant::StaleBackup, what);
        }
    }

    /// The children of `key` running on live nodes: node, generation, state.
    fn runs_of(&self, key: &str) -> Vec<(usize, Generation, u64)> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .filter_map(|i| {
                let c = self.nodes[i]
                    .children
                    .get(key)
                    .filter(|c| c.phase == ChildPhase::Running)?;
                let g = self.nodes[i].dir().owned().get(key)?.record.generation;
                Some((i, g, c.state))
            })
            .collect()
    }

    /// [`Invariant::DiskMirror`], on `node` whose writer has just written everything touched.
    pub(crate) fn check_disk_mirror(&mut self, node: usize) {
        self.check(Invariant::DiskMirror);
        let n = &self.nodes[node];
        let d = n.dir();
        // Every key the directory holds something of, or that is on the disk, or that may be
        // buried (a removal began).
        let keys: BTreeSet<&String> = n
            .disk
            .keys()
            .chain(d.owned().keys())
            .chain(d.backups().keys())
            .chain(
                self.keys
                    .iter()
                    .filter(|(_, t)| !t.removed.is_empty())
                    .map(|(k, _)| k),
            )
            .collect();
        let mut bad = Vec::new();
        for key in keys {
            if n.unsynced.contains(key) || n.dirty.contains(key) {
                continue;
            }
            // What a backup acknowledged of a record (`Record::acked`) changes with no new
            // write of the key: the disk keeps what was acknowledged when the record was written
            // (no write per acknowledgement), so it is not compared.
            let unacked = |e: Option<&DurableEntry>| {
                e.cloned().map(|mut e| {
                    for r in &mut e.records {
                        r.acked = Version::INITIAL;
                    }
                    e
                })
            };
            let want = unacked(d.durable(key).as_ref());
            let have = n.disk.get(key);
            if want != unacked(have) {
                let what = format!("n{node}: {key} on disk {have:?}, the directory holds {want:?}");
                bad.push(((node, n.inc, key.clone()), what));
            }
        }
        for (at, what) in bad {
            if self.unmirrored.insert(at) {
                self.fail(Invariant::DiskMirror, what);
            }
        }
    }

    /// [`Invariant::Durable`], once every node is back from a full-cluster restart and has
    /// taken its disk back.
    fn check_durable(&mut self) {
        let ready = self
            .full_restart
            .as_ref()
            .is_some_and(|fr| fr.down.is_empty())
            && self.nodes.iter().all(|n| n.recovery.is_none());
        if !ready {
            return;
        }
        let fr = self.full_restart.take().expect("ready");
        trace!(self, "checking the full-cluster restart at {}", fr.at);
        let none = Survived::default();
        for (key, expect) in &fr.expect {
            let t = &self.keys[key];
            if *expect != Expect::Running || t.removal_ok {
                // Not acknowledged, removed, or a removal began (either outcome is right).
                continue;
            }
            let survived = fr.survived.get(key).unwrap_or(&none);
            // The children of the key the disks held and no disk buried (nor the clients saw
            // removed).
            let live: BTreeMap<Generation, u64> = survived
                .states
                .iter()
                .filter(|(g, _)| !survived.buried.contains(g) && !t.removed.contains(g))
                .map(|(g, s)| (*g, *s))
                .collect();
            let written = fr.written[key]
                .iter()
                .filter(|(g, _)| !t.removed.contains(g))
                .map(|(g, s)| (*g, *s))
                .collect::<BTreeMap<_, _>>();
            let at_risk = t.at_risk;
            let policy = t.spec.policy;
            self.check(Invariant::Durable);
            let runs = self.runs_of(key);
            let mut failure = None;
            if live.is_empty() {
                if written.is_empty() || at_risk {
                    self.tally
                        .excuse("acknowledged, not on any disk at the crash (writes pending or a disk lost)");
                } else {
                    failure = Some(format!(
                        "{key} ({policy:?}) was written to disk ({written:?}), but no disk held it at the restart"
                    ));
                }
            } else if let [(x, g, state)] = runs[..] {
                match live.get(&g) {
                    None => {
                        failure = Some(format!(
                            "{key} runs generation {g:?} on n{x}, the disks held {live:?}"
                        ))
                    }
                    Some(&floor) if state < floor => {
                        failure = Some(format!(
                            "{key} runs on n{x} from state {state}, the disks held {floor}"
                        ))
                    }
                    Some(&floor) => {
                        let newest = written.get(&g).copied().unwrap_or(0);
                        if newest > floor && at_risk {
                            self.tally.excuse(
                                "the newest durable state was lost with a pending write or a disk",
                            );
                        } else if newest > floor {
                            failure = Some(format!(
                                "{key}: state {newest} was written to a disk, the disks held {floor} at the restart"
                            ));
                        }
                    }
                }
            } else if runs.is_empty() {
                failure = Some(format!(
                    "{key} ({policy:?}) acknowledged and on disk ({live:?}), runs nowhere after the full-cluster restart"
                ));
            }
            if let Some(what) = failure {
                self.fail(Invariant::Durable, what);
            }
        }
    }

    /// With durable storage: every node that keeps the removal of `key` (a tombstone of one of
    /// `removed`, in its directory if it runs, on its disk if it is down) is down now. A stale
    /// copy on another node's disk may then run until one of them is back (the removal is
    /// kept on two nodes, like a child's record: losing both is a double fault); the next
    /// convergence check with one of them back catches a copy still running.
    fn removal_out_of_reach(&self, key: &str, removed: &BTreeSet<Generation>) -> bool {
        if !self.config.durable || removed.is_empty() {
            return false;
        }
        let keeps = |buried: &[Generation]| buried.iter().any(|g| removed.contains(g));
        let mut holders = self.nodes.iter().filter(|n| {
            let in_memory = n.alive && n.dir().durable(key).is_some_and(|e| keeps(&e.buried));
            let on_disk = n.disk.get(key).is_some_and(|e| keeps(&e.buried));
            in_memory || on_disk
        });
        let mut any = false;
        let all_down = holders.all(|n| {
            any = true;
            !n.alive
        });
        any && all_down
    }

    /// [`Invariant::StaysRemoved`].
    fn check_stays_removed(&mut self) {
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, t)| t.expect == Expect::Gone && !t.removed.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.check(Invariant::StaysRemoved);
            let t = &self.keys[&key];
            let back: Vec<(usize, Generation)> = self
                .runs_of(&key)
                .into_iter()
                .filter(|(_, g, _)| t.removed.contains(g))
                .map(|(x, g, _)| (x, g))
                .collect();
            if back.is_empty() {
                continue;
            }
            if t.split {
                self.tally
                    .excuse("split brain (two copies, or a removal and a failover, on two sides)");
            } else if t.at_risk {
                self.tally
                    .excuse("a removal not on disk yet was lost with a pending write or a disk");
            } else if self.removal_out_of_reach(&key, &t.removed) {
                self.tally.excuse(REMOVAL_OUT_OF_REACH);
            } else {
                let what = format!("{key} was removed, its child runs again on {back:?}");
                self.fail(Invariant::StaysRemoved, what);
            }
        }
    }
}
