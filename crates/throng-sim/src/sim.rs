//! The loop: every tick delivers the due events and injects at most one random operation; every
//! `converge_every` ticks (and at the end) faults stop, the system converges and the invariants
//! are checked.

use rand::RngExt;

use crate::report::Invariant;
use crate::world::{trace, Ev, Sim};

/// Events processed while converging before the run is declared not quiet (plus
/// [`EVENTS_PER_CHILD`] per key started so far).
const QUIESCENCE_BUDGET: u64 = 500_000;

/// Events a child may take to settle while converging, beyond [`QUIESCENCE_BUDGET`]: a start, a
/// spawn, a replication and its acknowledgement, and a failover or a move with the same again.
const EVENTS_PER_CHILD: u64 = 20;

/// A random operation the loop may inject.
type Op = fn(&mut Sim);

impl Sim {
    pub(crate) fn run(&mut self) {
        trace!(
            self,
            "seed {} nodes {} steps {}",
            self.seed,
            self.config.nodes,
            self.config.steps
        );
        self.start_children();
        for step in 1..=self.config.steps {
            self.now += 1;
            self.deliver_due();
            self.inject();
            self.check_directories();
            if step % self.config.converge_every == 0 && step != self.config.steps {
                self.converge_and_check();
            }
        }
        self.converge_and_check();
    }

    /// [`SimConfig::children`]: the clients start them all at once, and every event is
    /// delivered until the system is quiet (every start answered, every child replicated).
    ///
    /// [`SimConfig::children`]: crate::SimConfig::children
    fn start_children(&mut self) {
        if self.config.children == 0 {
            return;
        }
        trace!(self, "START {} CHILDREN", self.config.children);
        for _ in 0..self.config.children {
            self.op_start();
        }
        let budget = QUIESCENCE_BUDGET + EVENTS_PER_CHILD * self.config.children as u64;
        self.drain_until_quiet_within(budget, " (starting the children)");
    }

    fn deliver_due(&mut self) {
        while self.queue.peek().is_some_and(|s| s.time <= self.now) {
            let s = self.queue.pop().expect("peeked");
            self.handle(s.ev);
        }
    }

    fn inject(&mut self) {
        let r: f64 = self.rng.random();
        // One operation at most per step, by weight.
        let ops: [(f64, Op); 15] = [
            (0.08, Sim::op_start),
            (0.01, Sim::op_terminate),
            (0.15, Sim::op_update),
            (0.01, Sim::op_child_crash),
            (0.004, Sim::op_child_exit_normal),
            (0.004, Sim::op_node_crash),
            (0.01, Sim::op_node_restart),
            (0.003, Sim::op_partition),
            (0.01, Sim::op_heal),
            (0.003, Sim::op_suspect),
            (0.003, Sim::op_leave),
            (0.003, Sim::op_cut_gossip),
            (0.006, Sim::op_heal_gossip),
            // Last, so that without shell faults or durability the other operations are drawn
            // as before.
            (0.004, Sim::op_reset_connection),
            (0.0008, Sim::op_full_restart),
        ];
        let mut acc = 0.0;
        for (p, op) in ops {
            acc += p;
            if r < acc {
                op(self);
                return;
            }
        }
    }

    pub(crate) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Pump { from, to } => self.pump(from, to),
            Ev::SpawnDone {
                node,
                inc,
                key,
                instance,
            } => self.spawn_done(node, inc, key, instance),
            Ev::StopDone {
                node,
                inc,
                key,
                instance,
            } => self.stop_done(node, inc, key, instance),
            Ev::View { observer, subject } => self.view_event(observer, subject),
            Ev::ClientStart { key, attempt } => self.client_start(key, attempt),
            Ev::StartArrive { node, inc, req } => self.start_arrive(node, inc, req),
            Ev::ClientTerm { key, attempt } => self.client_term(key, attempt),
            Ev::ClientUpdate { key, attempt } => self.client_update(key, attempt),
            Ev::UpdateArrive {
                node,
                inc,
                key,
                attempt,
            } => self.update_arrive(node, inc, key, attempt),
            Ev::Exit { node, inc } => self.exit(node, inc),
            Ev::LeaveTimeout { node, inc } => self.leave_timeout(node, inc),
            Ev::TermArrive { node, inc, req } => self.term_arrive(node, inc, req),
            Ev::Reconnect { a, b } => self.reconnect(a, b),
            Ev::Flush { node, inc } => self.flush(node, inc),
            Ev::Recover { node, inc } => self.recover_due(node, inc),
            Ev::Restart { node } => self.restart_due(node),
        }
    }

    fn converge_and_check(&mut self) {
        if self.config.gossip_cuts && (self.partitioned || self.gossip_cut()) && !self.quiet_sides()
        {
            return;
        }
        trace!(self, "CONVERGE");
        self.tally.event("convergence");
        self.heal();
        self.all_views_refresh((1, 20));
        if !self.drain_until_quiet("") {
            return;
        }
        self.check(Invariant::Quiescence);
        self.check_invariants();
        self.views_split = self.partitioned;
    }

    /// Delivers every queued event until the queue is empty: true. After
    /// [`QUIESCENCE_BUDGET`] events it gives up, reports a [`Invariant::Quiescence`] violation
    /// (`what` says in which phase) and drops the rest: false.
    fn drain_until_quiet(&mut self, what: &str) -> bool {
        let budget = QUIESCENCE_BUDGET + EVENTS_PER_CHILD * self.keys.len() as u64;
        self.drain_until_quiet_within(budget, what)
    }

    /// [`Sim::drain_until_quiet`] with a budget of `budget` events.
    fn drain_until_quiet_within(&mut self, budget: u64, what: &str) -> bool {
        let mut left = budget;
        while let Some(s) = self.queue.pop() {
            self.now = self.now.max(s.time);
            self.handle(s.ev);
            left -= 1;
            if left == 0 {
                self.check(Invariant::Quiescence);
                self.fail(
                    Invariant::Quiescence,
                    format!("still busy after {budget} events{what}"),
                );
                self.queue.clear();
                return false;
            }
        }
        true
    }

    /// Faults stop but the partition and the gossip cuts stay: the views settle on what each node
    /// hears and every event is delivered until the system is quiet; then
    /// [`Invariant::SideRuns`] is checked. False when it did not become quiet (reported).
    fn quiet_sides(&mut self) -> bool {
        trace!(self, "QUIET (partition and gossip cuts kept)");
        self.tally.event("quiet before a heal");
        self.all_views_refresh((1, 20));
        if !self.drain_until_quiet(" (partitioned)") {
            return false;
        }
        self.check_sides();
        true
    }
}
