//! The simulated runtime: carrying out the effects a node's driver asked for (children spawn and
//! stop after delays, messages enter the network, answers reach the clients, events update the
//! keys' tracking), and reporting their outcomes back to the driver.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::RngExt;

use throng_core::directory::{ChildEvent, DirMsg, Record, StartError};
use throng_core::driver::{Driver, Exit};
use throng_core::ExitClass;

use crate::host::{encode, event_kind, msg_kind, state_of, Effect, SimHost};
use crate::report::Invariant;
use crate::world::{
    trace, Child, ChildPhase, Ev, Expect, Packet, ReqKind, Sim, CLIENT_TIMEOUT, FLUSH_DELAY,
    LOST_REPLY, MAX_ATTEMPTS, RETRY_DELAY, SLOW_SPAWN,
};

impl Sim {
    /// Runs `f` on `node`'s driver and carries out the effects it asked for.
    pub(crate) fn drive(&mut self, node: usize, f: impl FnOnce(&mut Driver<u64>, &mut SimHost)) {
        let effects = self.run_driver(node, f);
        self.apply(node, effects);
    }

    /// Runs `f` on `node`'s driver; the effects it asked for, to carry out with `apply`.
    pub(crate) fn run_driver(
        &mut self,
        node: usize,
        f: impl FnOnce(&mut Driver<u64>, &mut SimHost),
    ) -> Vec<Effect> {
        let mut host = SimHost::default();
        f(&mut self.nodes[node].drv, &mut host);
        host.effects
    }

    pub(crate) fn apply(&mut self, node: usize, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Spawn(record) => self.spawn(node, record),
                Effect::Stop(key) => {
                    let inc = self.nodes[node].inc;
                    let merging = self.nodes[node].drv.is_merging(&key);
                    if merging {
                        if let Some(t) = self.keys.get_mut(&key) {
                            t.merged = true;
                            t.ledger = None;
                        }
                    }
                    match self.nodes[node].children.get_mut(&key) {
                        Some(c) if c.phase == ChildPhase::Running => {
                            c.phase = ChildPhase::Stopping;
                            c.merging = merging;
                            let instance = c.instance;
                            trace!(self, "n{node}: stop {key}");
                            let d = self.delay((1, 5));
                            self.schedule(
                                d,
                                Ev::StopDone {
                                    node,
                                    inc,
                                    key,
                                    instance,
                                },
                            );
                        }
                        other => {
                            let what = format!(
                                "n{node} asked to stop {key}, which is {:?}",
                                other.map(|c| c.phase)
                            );
                            self.fail(Invariant::Runtime, what);
                        }
                    }
                }
                Effect::Send(to, msg) => {
                    let to = self.index(&to);
                    self.tally.event(match &msg {
                        DirMsg::Replicate { .. } => "message: replicate",
                        DirMsg::Ack { .. } => "message: ack",
                        DirMsg::Drop { .. } => "message: drop",
                        DirMsg::Dropped { .. } => "message: dropped",
                        DirMsg::Adopt { .. } => "message: adopt",
                        DirMsg::Held { .. } => "message: held",
                        DirMsg::Conflict { .. } => "message: conflict",
                        DirMsg::Chase { .. } => "message: chase",
                        DirMsg::Chased { .. } => "message: chased",
                        DirMsg::Removed { .. } => "message: removed",
                        DirMsg::Buried { .. } => "message: buried",
                        DirMsg::Recovered { .. } => "message: recovered",
                    });
                    if to == node {
                        self.fail(
                            Invariant::Runtime,
                            format!("n{node} sent {} to itself", msg_kind(&msg)),
                        );
                        continue;
                    }
                    // The runtime has a link to the nodes of its view, and to a run it accepted a
                    // connection from before it joined the view.
                    let to_inc = if self.link_up[node][to] {
                        Some(self.nodes[to].inc)
                    } else {
                        self.nodes[node].view.get(&to).copied()
                    };
                    let Some(to_inc) = to_inc else {
                        self.tally.event("message lost (no link to the receiver)");
                        trace!(self, "n{node}->n{to} {} lost: not in view", msg_kind(&msg));
                        self.message_lost(&msg);
                        continue;
                    };
                    let base = if self.rng.random_bool(0.05) {
                        self.delay((20, 80))
                    } else {
                        self.delay((1, 8))
                    };
                    self.carry(node, to, &msg);
                    let link = &mut self.links[node][to];
                    let ready = (self.now + base).max(link.back().map_or(0, |p| p.ready));
                    link.push_back(Packet {
                        ready,
                        from_inc: self.nodes[node].inc,
                        to_inc,
                        msg,
                    });
                    self.schedule(ready - self.now, Ev::Pump { from: node, to });
                }
                Effect::Reply(req, result) => self.reply(node, req, result),
                Effect::Touched(keys) => self.touched(node, keys),
                Effect::Event(e) => {
                    self.tally.event(event_kind(&e));
                    trace!(self, "n{node}: {e:?}");
                    match e {
                        // (Its generation is added by `apply_exit`.)
                        ChildEvent::GaveUp { key, .. } if self.keys.contains_key(&key) => {
                            self.begin_removal(node, &key);
                        }
                        ChildEvent::FailedOver { key, .. } => {
                            // A backup on the other side of a partition (or of a false
                            // suspicion) failed over a child removed on this side, or while
                            // another copy of it exists: two lineages.
                            let taken = self.nodes[node]
                                .dir()
                                .owned()
                                .get(&key)
                                .map(|o| (o.record.generation, o.record.version));
                            let other = self.has_copy_besides(&key, node, taken);
                            let views_split = self.views_split;
                            if let Some(t) = self.keys.get_mut(&key) {
                                if other
                                    || (views_split && (t.expect == Expect::Gone || t.removal_ok))
                                {
                                    t.split = true;
                                }
                            }
                        }
                        ChildEvent::Stopped { key } => {
                            if let Some(t) = self.keys.get_mut(&key) {
                                if t.removal_ok {
                                    t.expect = Expect::Gone;
                                }
                            }
                        }
                        ChildEvent::Adopted { key, .. } => self.check_handoff(node, &key),
                        ChildEvent::Started { key }
                            if self.spawned_twice(&key)
                                && self.has_copy_besides(&key, node, None) =>
                        {
                            // A start while a copy of the child exists elsewhere (a start
                            // retried at another owner while views disagreed during a move):
                            // two lineages, merged once they meet.
                            if let Some(t) = self.keys.get_mut(&key) {
                                t.split = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let n = &self.nodes[node];
        if n.alive
            && n.leaving
            && n.dir().handed_off()
            && n.dir().owned().is_empty()
            && n.dir().backups().is_empty()
        {
            let inc = n.inc;
            self.schedule(1, Ev::Exit { node, inc });
        }
    }

    pub(crate) fn spawn(&mut self, node: usize, record: Record) {
        let key = record.key.clone();
        if let Some(c) = self.nodes[node].children.get(&key) {
            let what = format!("n{node} spawned {key} twice (already {:?})", c.phase);
            self.fail(Invariant::Runtime, what);
            return;
        }
        // Another live copy: views disagreed.
        let elsewhere = self.placed.contains_key(&key);
        let views_split = self.views_split;
        if let Some(t) = self.keys.get_mut(&key) {
            t.spawns = t.spawns.saturating_add(1);
            // A copy spawned while views are split after a removal began is a failover on the
            // other side, even when no `FailedOver` event tells (a node that lost its quorum
            // before the spawn completed stops the child before its first event).
            if elsewhere || (views_split && (t.expect == Expect::Gone || t.removal_ok)) {
                t.split = true;
            }
        }
        let state = state_of(&record).unwrap_or(0);
        self.next_instance += 1;
        let instance = self.next_instance;
        trace!(self, "n{node}: spawn {key} from state {state}");
        self.placed.entry(key.clone()).or_default().push(node);
        self.nodes[node].children.insert(
            key.clone(),
            Child {
                state,
                phase: ChildPhase::Starting,
                instance,
                merging: false,
            },
        );
        let inc = self.nodes[node].inc;
        let d = if self.config.shell_faults && self.rng.random_bool(SLOW_SPAWN.0) {
            // A slow spawn (a slow constructor, a busy runtime): the directory waits for it.
            self.tally.event("fault: slow spawn");
            trace!(self, "n{node}: {key} spawns slowly");
            self.delay(SLOW_SPAWN.1)
        } else {
            self.delay((1, 5))
        };
        self.schedule(
            d,
            Ev::SpawnDone {
                node,
                inc,
                key,
                instance,
            },
        );
    }

    pub(crate) fn reply(&mut self, node: usize, req: u64, result: Result<(), StartError>) {
        let Some(p) = self.pending.remove(&req) else {
            self.fail(
                Invariant::Replies,
                format!("n{node} answered request {req} twice or unasked"),
            );
            return;
        };
        self.check(Invariant::Replies);
        trace!(
            self,
            "n{node}: reply {req} ({:?} {}): {result:?}",
            p.kind,
            p.key
        );
        // The new child's state so far (updates it accepted before this answer).
        let runs = self.nodes[node].children.get(&p.key).map(|c| c.state);
        let generation = self.nodes[node]
            .dir()
            .owned()
            .get(&p.key)
            .map(|o| o.record.generation);
        let t = self.keys.get_mut(&p.key).expect("tracked");
        if p.kind == ReqKind::Start && t.removal_began.is_some_and(|r| p.arrived_at >= r) {
            t.late_starts = t.late_starts.saturating_sub(1);
        }
        if p.reply_lost {
            // The client stopped waiting (its connection was reset) and retried meanwhile.
            self.tally
                .event("reply dropped (its client's connection was reset)");
            return;
        }
        if p.client != node && self.config.shell_faults && self.rng.random_bool(LOST_REPLY) {
            // The answer is lost on its way back to the remote client: it times out, not
            // knowing what happened, and sends the request again.
            self.tally.event("fault: reply lost");
            trace!(self, "reply {req} lost on its way to n{}", p.client);
            let d = self.delay(CLIENT_TIMEOUT);
            self.retry_after(d, p.kind, p.key, p.attempt);
            return;
        }
        let t = self.keys.get_mut(&p.key).expect("tracked");
        match (p.kind, result) {
            (ReqKind::Start, Ok(())) => {
                self.tally.event("reply: start ok");
                if t.expect == Expect::Gone && t.removal_began.is_some_and(|r| p.arrived_at > r) {
                    // Started again after it was removed: a new child of the same key, from
                    // its initial state (plus the updates it accepted before this answer).
                    t.reborn(runs);
                }
                if t.expect != Expect::Gone {
                    t.expect = Expect::Running;
                }
            }
            (ReqKind::Start, Err(StartError::NotOwner { .. })) => {
                self.tally.event("reply: not owner");
                self.retry(ReqKind::Start, p.key, p.attempt);
            }
            (ReqKind::Start, Err(StartError::AlreadyStarted(_))) if p.attempt > 0 => {
                // An earlier attempt started it, and it moved before the answer: it exists.
                self.tally.event("reply: already started (retry)");
                if t.expect == Expect::Gone
                    && t.removal_began.is_some_and(|r| p.arrived_at > r)
                    && generation.is_some_and(|g| !t.removed.contains(&g))
                {
                    // The child running here is not the one removed: an earlier attempt that
                    // arrived after the removal began (waiting for it, at a node that answered
                    // `NotOwner` once the new child moved on) started it again.
                    t.reborn(runs);
                }
                if t.expect != Expect::Gone {
                    t.expect = Expect::Running;
                }
            }
            (ReqKind::Start, Err(_)) => self.tally.event("reply: start failed"),
            (ReqKind::Terminate, Ok(())) => {
                self.tally.event("reply: terminate ok");
                t.expect = Expect::Gone;
            }
            (ReqKind::Terminate, Err(StartError::NoSuchChild(_))) => {
                self.tally.event("reply: no such child");
                self.retry(ReqKind::Terminate, p.key, p.attempt);
            }
            (ReqKind::Terminate, Err(_)) => self.tally.event("reply: terminate failed"),
        }
    }

    pub(crate) fn retry(&mut self, kind: ReqKind, key: String, attempt: u32) {
        if attempt + 1 >= MAX_ATTEMPTS {
            self.tally.event("client gave up");
            return;
        }
        let d = self.delay(RETRY_DELAY);
        self.retry_after(d, kind, key, attempt);
    }

    /// The client sends the request again (`attempt + 1`) in `delay` ticks, unless it gave up.
    pub(crate) fn retry_after(&mut self, delay: u64, kind: ReqKind, key: String, attempt: u32) {
        if attempt + 1 >= MAX_ATTEMPTS {
            self.tally.event("client gave up");
            return;
        }
        let d = delay;
        let ev = match kind {
            ReqKind::Start => Ev::ClientStart {
                key,
                attempt: attempt + 1,
            },
            ReqKind::Terminate => Ev::ClientTerm {
                key,
                attempt: attempt + 1,
            },
        };
        self.schedule(d, ev);
    }

    /// A spawn completed: the child runs (unless its node crashed or it was replaced since).
    pub(crate) fn spawn_done(&mut self, node: usize, inc: u64, key: String, instance: u64) {
        let n = &mut self.nodes[node];
        if !n.alive || n.inc != inc {
            return;
        }
        match n.children.get_mut(&key) {
            Some(c) if c.instance == instance && c.phase == ChildPhase::Starting => {
                c.phase = ChildPhase::Running;
            }
            _ => return,
        }
        trace!(self, "n{node}: {key} spawned");
        self.drive(node, |d, h| d.spawned(h, &key, Ok(())));
    }

    /// A stop completed: the child exited, with its final state if it takes snapshots.
    pub(crate) fn stop_done(&mut self, node: usize, inc: u64, key: String, instance: u64) {
        let n = &mut self.nodes[node];
        if !n.alive || n.inc != inc {
            return;
        }
        match n.children.get(&key) {
            Some(c) if c.instance == instance && c.phase == ChildPhase::Stopping => {}
            _ => return,
        }
        let child = self.remove_child(node, &key).expect("present");
        let now = Duration::from_millis(self.now);
        if child.merging {
            // The driver merges the other copy's state into this final one.
            trace!(
                self,
                "n{node}: {key} stopped to merge (state {})",
                child.state
            );
            let exit = Exit {
                class: ExitClass::Shutdown,
                last: Some(encode(child.state)),
                pending: None,
            };
            self.drive(node, |d, h| d.exited(h, &key, exit, now));
            return;
        }
        let snapshot = self.keys[&key].snapshots.then(|| encode(child.state));
        trace!(self, "n{node}: {key} stopped (state {})", child.state);
        let moving = self.nodes[node]
            .dir()
            .owned()
            .get(&key)
            .filter(|o| o.phase == throng_core::directory::Phase::Moving)
            .map(|o| (o.record.generation, o.record.version));
        if let Some(record) = moving {
            let t = self.keys.get_mut(&key).expect("tracked");
            if t.moved_state.is_some_and(|(other, _, _)| other != node) {
                // Another copy is moving too and was not adopted yet: two lineages.
                t.split = true;
            }
            t.moved_state = Some((node, child.state, record));
        }
        let exit = Exit {
            class: ExitClass::Shutdown,
            last: snapshot,
            pending: None,
        };
        self.drive(node, |d, h| d.exited(h, &key, exit, now));
    }

    /// The directory of `node` touched `keys`: its writer writes them after its coalescing
    /// window, unless a write is pending already (they join it).
    fn touched(&mut self, node: usize, keys: BTreeSet<String>) {
        let n = &mut self.nodes[node];
        let idle = n.dirty.is_empty();
        n.dirty.extend(keys);
        if idle && !n.dirty.is_empty() {
            let inc = n.inc;
            let d = self.delay(FLUSH_DELAY);
            self.schedule(d, Ev::Flush { node, inc });
        }
    }
}
