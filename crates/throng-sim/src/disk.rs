//! The durable storage model ([`SimConfig::durable`]): each node's asynchronous writer (the
//! keys its directory touched are written after a short delay, as the directory holds them
//! then), the recovery of a restarted node once its view has settled, and the full-cluster
//! restart.
//!
//! [`SimConfig::durable`]: crate::SimConfig::durable

use crate::host::state_of;
use crate::world::{trace, Ev, FullRestart, Sim, FULL_RESTART_WINDOW};

impl Sim {
    /// The writer of `node` writes the entries of the keys touched since its last write, each
    /// as the directory holds it now (an absent entry deletes the key's), in one atomic commit;
    /// then its disk must mirror its directory ([`crate::Invariant::DiskMirror`]).
    pub(crate) fn flush(&mut self, node: usize, inc: u64) {
        if !self.nodes[node].alive || self.nodes[node].inc != inc {
            return;
        }
        let keys = std::mem::take(&mut self.nodes[node].dirty);
        if keys.is_empty() {
            return;
        }
        self.tally.event("durable: write");
        for key in keys {
            let entry = self.nodes[node].dir().durable(&key);
            if let (Some(e), Some(t)) = (&entry, self.keys.get_mut(&key)) {
                for r in &e.records {
                    let state = state_of(r).unwrap_or(0);
                    let newest = t.written.entry(r.generation).or_default();
                    *newest = (*newest).max(state);
                }
            }
            self.unmirrored.remove(&(node, inc, key.clone()));
            let n = &mut self.nodes[node];
            n.unsynced.remove(&key);
            match entry {
                Some(e) => n.disk.insert(key, e),
                None => n.disk.remove(&key),
            };
        }
        self.check_disk_mirror(node);
    }

    /// The run `inc` of `node` takes back what it read from its disk at its start, once its view
    /// has not changed for [`crate::world::RECOVERY_SETTLE`] (as the runtime does).
    pub(crate) fn recover_due(&mut self, node: usize, inc: u64) {
        let n = &self.nodes[node];
        if !n.alive
            || n.inc != inc
            || n.recovery.is_none()
            || (self.now < n.settle_at && self.now < n.recover_by)
        {
            return;
        }
        let entries = self.nodes[node].recovery.take().unwrap_or_default();
        trace!(self, "n{node}: recovers {} durable entries", entries.len());
        // Always, even with nothing to take back: until then the driver holds what its
        // directory touches (the disk keeps the previous run's entries).
        self.tally.event("durable: recovery");
        self.drive(node, |d, h| d.recover(h, entries));
        self.nodes[node].disk_view = Some(crate::network::owners_of(&self.nodes[node]));
        // What the directory took back is not written again until touched: the disk keeps the
        // previous run's entry of those keys meanwhile.
        let differ = self.nodes[node]
            .unsynced
            .iter()
            .filter(|k| self.nodes[node].dir().durable(k).as_ref() != self.nodes[node].disk.get(*k))
            .count();
        for _ in 0..differ {
            self.tally.event("durable: recovered entry not rewritten");
        }
        // The starts and terminates that waited for the recovery, in their order.
        for (start, req) in std::mem::take(&mut self.nodes[node].parked) {
            self.tally.event("durable: request parked until recovery");
            if start {
                self.start_now(node, req);
            } else {
                self.term_now(node, req);
            }
        }
    }

    /// A full-cluster restart: every node crashes at once (the writes pending on each are
    /// lost, the disks stay), then every node starts again within [`FULL_RESTART_WINDOW`]. What
    /// comes back is checked at the next convergence ([`crate::Invariant::Durable`],
    /// [`crate::Invariant::StaysRemoved`]); other node faults wait until then.
    pub(crate) fn op_full_restart(&mut self) {
        if !self.config.durable || self.full_restart.is_some() {
            return;
        }
        self.tally.event("fault: full-cluster restart");
        trace!(self, "FULL-CLUSTER RESTART");
        let n = self.nodes.len();
        self.full_restart = Some(FullRestart {
            at: self.now,
            expect: self
                .keys
                .iter()
                .map(|(k, t)| (k.clone(), t.expect))
                .collect(),
            written: self
                .keys
                .iter()
                .map(|(k, t)| (k.clone(), t.written.clone()))
                .collect(),
            down: (0..n).collect(),
            ..FullRestart::default()
        });
        for j in 0..n {
            if self.nodes[j].alive {
                self.crash(j);
            }
        }
        for node in 0..n {
            let d = self.delay(FULL_RESTART_WINDOW);
            self.schedule(d, Ev::Restart { node });
        }
    }

    /// A node down after a full-cluster restart starts again (unless it did already).
    pub(crate) fn restart_due(&mut self, node: usize) {
        if !self.nodes[node].alive {
            self.restart(node);
        }
    }
}
