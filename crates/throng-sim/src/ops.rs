//! The clients' and the children's operations: starts, terminates and updates (routed to the
//! owner in a client's view, retried like the runtime's calls), child crashes and normal exits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::RngExt;
use throng_core::directory::{ChildEvent, Generation, StartSpec};
use throng_core::driver::Exit;
use throng_core::{ExitClass, RestartPolicy};

use crate::host::{encode, Effect};
use crate::world::{
    trace, ChildPhase, Ev, Expect, KeyTrack, Pending, ReqKind, Sim, MAX_ATTEMPTS, RETRY_DELAY,
};

impl Sim {
    pub(crate) fn op_start(&mut self) {
        let id = self.next_key;
        self.next_key += 1;
        let key = format!("k{id}");
        let policy = match self.rng.random_range(0..20) {
            0..16 => RestartPolicy::Permanent,
            16..19 => RestartPolicy::Transient,
            _ => RestartPolicy::Temporary,
        };
        let spec = StartSpec {
            key: key.clone(),
            actor_type: "counter".into(),
            args: Vec::new(),
            policy,
        };
        self.keys.insert(
            key.clone(),
            KeyTrack {
                spec,
                expect: Expect::Unknown,
                removal_ok: false,
                removal_began: None,
                removed: BTreeSet::new(),
                floor: 0,
                crashed_holders: BTreeSet::new(),
                sole_copy_lost: false,
                split: false,
                late_starts: 0,
                snapshots: !id.is_multiple_of(4),
                ledger: (!id.is_multiple_of(4)).then_some(0),
                moved_state: None,
                merged: false,
                spawns: 0,
                written: BTreeMap::new(),
                at_risk: false,
            },
        );
        self.key_list.push(key.clone());
        self.tally.event("op: start");
        trace!(self, "client start {key} ({policy:?})");
        self.client_start(key, 0);
    }

    pub(crate) fn op_terminate(&mut self) {
        if self.key_list.is_empty() {
            return;
        }
        let key = self.key_list[self.rng.random_range(0..self.key_list.len())].clone();
        if self.keys[&key].expect != Expect::Running {
            return;
        }
        self.tally.event("op: terminate");
        trace!(self, "client terminate {key}");
        self.client_term(key, 0);
    }

    /// A random running child on a random live node.
    fn pick_child(&mut self) -> Option<(usize, String)> {
        let alive = self.alive_nodes();
        if alive.is_empty() {
            return None;
        }
        let node = alive[self.rng.random_range(0..alive.len())];
        let running: Vec<&String> = self.nodes[node]
            .children
            .iter()
            .filter(|(_, c)| c.phase == ChildPhase::Running)
            .map(|(k, _)| k)
            .collect();
        if running.is_empty() {
            return None;
        }
        let key = running[self.rng.random_range(0..running.len())].clone();
        Some((node, key))
    }

    /// A client sends an update to a child that runs somewhere.
    pub(crate) fn op_update(&mut self) {
        let Some((_, key)) = self.pick_child() else {
            return;
        };
        self.tally.event("op: update");
        self.client_update(key, 0);
    }

    /// The client sends the update to the owner of the moment in its node's view.
    pub(crate) fn client_update(&mut self, key: String, attempt: u32) {
        let Some(node) = self.route(&key) else {
            self.retry_update(key, attempt);
            return;
        };
        let inc = self.nodes[node].inc;
        let d = self.delay((1, 8));
        self.schedule(
            d,
            Ev::UpdateArrive {
                node,
                inc,
                key,
                attempt,
            },
        );
    }

    fn retry_update(&mut self, key: String, attempt: u32) {
        if attempt + 1 >= MAX_ATTEMPTS {
            self.tally.event("update: client gave up");
            return;
        }
        let d = self.delay(RETRY_DELAY);
        self.schedule(
            d,
            Ev::ClientUpdate {
                key,
                attempt: attempt + 1,
            },
        );
    }

    /// An update reaches `node`. A child that runs there accepts it (and applies it before any
    /// later stop: a drain-stop processes what the mailbox accepted); a child that is stopping
    /// (drain-stop for a move, terminate) or not running there refuses it: the client is told
    /// it was not delivered and retries at the owner of the moment.
    pub(crate) fn update_arrive(&mut self, node: usize, inc: u64, key: String, attempt: u32) {
        if !self.nodes[node].alive || self.nodes[node].inc != inc {
            // Lost with the node (the client sees the connection fail: maybe handled, not here).
            self.tally.event("update: lost with its node");
            return;
        }
        let Some(child) = self.nodes[node]
            .children
            .get_mut(&key)
            .filter(|c| c.phase == ChildPhase::Running)
        else {
            self.tally.event("update: not delivered (retried)");
            trace!(self, "n{node}: update of {key} not delivered");
            self.retry_update(key, attempt);
            return;
        };
        child.state += 1;
        let state = child.state;
        self.tally.event("update: delivered");
        let t = self.keys.get_mut(&key).expect("tracked");
        if let Some(l) = &mut t.ledger {
            *l += 1;
        }
        if t.snapshots && self.rng.random_bool(0.5) {
            trace!(self, "n{node}: {key} state {state}, snapshot");
            self.drive(node, |d, h| d.snapshot(h, &key, encode(state)));
        } else {
            trace!(self, "n{node}: {key} state {state}");
        }
    }

    pub(crate) fn op_child_crash(&mut self) {
        let Some((node, key)) = self.pick_child() else {
            return;
        };
        self.remove_child(node, &key);
        self.tally.event("op: child crash");
        trace!(self, "n{node}: {key} crashes");
        // It restarts from its latest snapshot: the updates since are lost (allowed).
        self.keys.get_mut(&key).expect("tracked").ledger = None;
        if !self.keys[&key]
            .spec
            .policy
            .restarts_after(ExitClass::Abnormal)
        {
            self.begin_removal(node, &key);
        }
        let now = Duration::from_millis(self.now);
        let generation = self.generation_on(node, &key);
        let exit = Exit {
            class: ExitClass::Abnormal,
            last: None,
            pending: None,
        };
        let effects = self.run_driver(node, |d, h| d.exited(h, &key, exit, now));
        self.apply_exit(node, &key, generation, effects);
    }

    /// Applies the actions of a child's exit on `node`; a removal they begin (the directory
    /// gave up on the child) is one of the child's generation.
    pub(crate) fn apply_exit(
        &mut self,
        node: usize,
        key: &str,
        generation: Option<Generation>,
        effects: Vec<Effect>,
    ) {
        let gave_up = effects
            .iter()
            .any(|e| matches!(e, Effect::Event(ChildEvent::GaveUp { .. })));
        if gave_up {
            if let Some(t) = self.keys.get_mut(key) {
                t.removed.extend(generation);
            }
        }
        self.apply(node, effects);
    }

    pub(crate) fn op_child_exit_normal(&mut self) {
        let Some((node, key)) = self.pick_child() else {
            return;
        };
        let child = self.remove_child(node, &key).expect("picked");
        self.tally.event("op: child exits normally");
        trace!(self, "n{node}: {key} exits normally");
        if !self.keys[&key]
            .spec
            .policy
            .restarts_after(ExitClass::Normal)
        {
            self.begin_removal(node, &key);
        }
        let snapshot = self.keys[&key].snapshots.then(|| encode(child.state));
        let now = Duration::from_millis(self.now);
        let generation = self.generation_on(node, &key);
        let exit = Exit {
            class: ExitClass::Normal,
            last: snapshot,
            pending: None,
        };
        let effects = self.run_driver(node, |d, h| d.exited(h, &key, exit, now));
        self.apply_exit(node, &key, generation, effects);
    }

    /// A client on a random live node sends the request to the owner in that node's view.
    fn route(&mut self, key: &str) -> Option<usize> {
        self.route_from(key).map(|(_, owner)| owner)
    }

    /// [`Sim::route`], with the client's node: `(client, owner)`. A client whose connection to
    /// the owner was reset (and is not back) cannot send.
    fn route_from(&mut self, key: &str) -> Option<(usize, usize)> {
        let alive = self.alive_nodes();
        if alive.is_empty() {
            // A full-cluster restart: no node to send from.
            return None;
        }
        let client = alive[self.rng.random_range(0..alive.len())];
        let owner = self.nodes[client].dir().owner(key)?;
        let owner = self.index(&owner);
        (self.reachable(client, owner) && !self.is_cut(client, owner)).then_some((client, owner))
    }

    fn send_request(&mut self, kind: ReqKind, key: String, attempt: u32) {
        let Some((client, node)) = self.route_from(&key) else {
            self.retry(kind, key, attempt);
            return;
        };
        self.next_req += 1;
        let req = self.next_req;
        let inc = self.nodes[node].inc;
        self.pending.insert(
            req,
            Pending {
                kind,
                key,
                client,
                node,
                inc,
                attempt,
                arrived: false,
                arrived_at: 0,
                reply_lost: false,
            },
        );
        let d = self.delay((1, 8));
        let ev = match kind {
            ReqKind::Start => Ev::StartArrive { node, inc, req },
            ReqKind::Terminate => Ev::TermArrive { node, inc, req },
        };
        self.schedule(d, ev);
    }

    pub(crate) fn client_start(&mut self, key: String, attempt: u32) {
        self.send_request(ReqKind::Start, key, attempt);
    }

    pub(crate) fn client_term(&mut self, key: String, attempt: u32) {
        if self.keys[&key].expect == Expect::Gone {
            return;
        }
        self.send_request(ReqKind::Terminate, key, attempt);
    }

    /// Request `req` reaches run `inc` of `node`: its key, or `None` if the request is gone or
    /// was lost with the node (crashed or restarted meanwhile: the client times out).
    fn arrive(&mut self, node: usize, inc: u64, req: u64) -> Option<String> {
        let p = self.pending.get_mut(&req)?;
        if !self.nodes[node].alive || self.nodes[node].inc != inc {
            self.pending.remove(&req);
            return None;
        }
        p.arrived = true;
        p.arrived_at = self.now;
        Some(p.key.clone())
    }

    /// A start request reaches `node` (lost if the node crashed or restarted meanwhile).
    pub(crate) fn start_arrive(&mut self, node: usize, inc: u64, req: u64) {
        if self.arrive(node, inc, req).is_none() {
            return;
        }
        if self.nodes[node].recovery.is_some() {
            trace!(self, "n{node}: start (req {req}) waits for the recovery");
            self.nodes[node].parked.push((true, req));
            return;
        }
        self.start_now(node, req);
    }

    /// A start request that reached `node` is handed to its driver.
    pub(crate) fn start_now(&mut self, node: usize, req: u64) {
        let Some(key) = self.pending.get(&req).map(|p| p.key.clone()) else {
            return;
        };
        let t = self.keys.get_mut(&key).expect("tracked");
        if t.removal_began.is_some() {
            t.late_starts += 1;
        }
        let spec = self.keys[&key].spec.clone();
        trace!(self, "n{node}: start {key} (req {req})");
        self.drive(node, |d, h| d.start(h, spec, req));
    }

    /// A terminate request reaches `node` (lost if the node crashed or restarted meanwhile).
    pub(crate) fn term_arrive(&mut self, node: usize, inc: u64, req: u64) {
        if self.arrive(node, inc, req).is_none() {
            return;
        }
        if self.nodes[node].recovery.is_some() {
            trace!(
                self,
                "n{node}: terminate (req {req}) waits for the recovery"
            );
            self.nodes[node].parked.push((false, req));
            return;
        }
        self.term_now(node, req);
    }

    /// A terminate request that reached `node` is handed to its driver.
    pub(crate) fn term_now(&mut self, node: usize, req: u64) {
        let Some(key) = self.pending.get(&req).map(|p| p.key.clone()) else {
            return;
        };
        self.begin_removal(node, &key);
        trace!(self, "n{node}: terminate {key} (req {req})");
        self.drive(node, |d, h| d.terminate(h, &key, req));
    }
}
