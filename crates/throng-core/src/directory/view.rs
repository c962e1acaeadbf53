//! Membership: a new view (owners and leaving nodes), the loss and return of the quorum, a node
//! declared down or a connection closed while out of the view, and the reconciliation with a
//! peer that (re)joined the view or reconnected.

use std::collections::BTreeSet;

use super::{
    orphan_copy, reply, send, stop, Action, Backup, DirMsg, Directory, Epoch, Holder, Phase,
    StartError, StopReason, MAX_BURIED_BYTES,
};
use crate::{NodeId, Ring};

impl Directory {
    /// The eligible nodes changed: `nodes` is the full new view (this node is always included).
    /// Same as [`Directory::set_members`] with no leaving node.
    pub fn set_view<'a>(&mut self, nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<Action> {
        self.set_members(nodes, std::iter::empty())
    }

    /// The membership changed: `owners` are the nodes up and not leaving (the placement ring;
    /// this node is included unless it leaves), `leaving` the nodes that announced a graceful
    /// leave and are still alive. A leaving node owns nothing, but what it holds is not failed
    /// over: it hands its children off itself. A node in neither set is down: backups from it are
    /// failed over. If this node is in `leaving`, it is as if [`Directory::leave`] was called.
    pub fn set_members<'a, 'b>(
        &mut self,
        owners: impl IntoIterator<Item = &'a NodeId>,
        leaving: impl IntoIterator<Item = &'b NodeId>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let leaving: BTreeSet<NodeId> = leaving.into_iter().cloned().collect();
        let begins_leaving = !self.me_leaving && leaving.contains(&self.config.me);
        if begins_leaving {
            self.me_leaving = true;
        }
        let mut owners: BTreeSet<NodeId> = owners
            .into_iter()
            .filter(|n| !leaving.contains(*n))
            .cloned()
            .collect();
        if self.me_leaving {
            owners.remove(&self.config.me);
        } else {
            owners.insert(self.config.me.clone());
        }
        // The nodes taken off the ring, when the change only takes nodes off (a node lost or
        // leaving): the ring is then cut down in place, not rebuilt and sorted.
        let removal = owners.iter().all(|n| self.ring.contains(n)).then(|| {
            self.ring
                .nodes()
                .iter()
                .filter(|n| !owners.contains(*n))
                .cloned()
                .collect::<Vec<NodeId>>()
        });
        let ring = match &removal {
            Some(removed) => {
                let mut ring = self.ring.clone();
                for n in removed {
                    ring.remove(n);
                }
                ring
            }
            None => match Ring::from_nodes(self.config.ring, owners.iter().cloned()) {
                Ok(ring) => ring,
                Err(_) => return self.checked(out),
            },
        };
        let mut view = owners;
        view.extend(leaving.iter().cloned());
        view.insert(self.config.me.clone());
        let gone: BTreeSet<NodeId> = self.view.difference(&view).cloned().collect();
        for n in &gone {
            if self.departed.len() < crate::placement::MAX_NODES {
                self.departed.insert(n.clone());
            }
        }
        // Copies held for nodes that are not in the new view either, though they never left it:
        // runs that replicated here before this node's membership reported them up (the runtime
        // accepts a connection from a run it never declared down). A view that changes without
        // them is the only sign this node gets if they never come (a partition hides them):
        // failed over like the copies of a node that left, or the side that holds them would
        // never run them.
        // Once orphaned, a stranger counts as departed (until it is heard from again), so that
        // the next view change does not visit its copies again: without a quorum they stay
        // orphans, and every view change visited them all.
        let strangers: BTreeSet<NodeId> = self
            .by_origin
            .keys()
            .filter(|n| !view.contains(*n) && !gone.contains(*n) && !self.departed.contains(*n))
            .cloned()
            .collect();
        self.orphan_copies(&gone);
        self.orphan_copies(&strangers);
        for n in strangers {
            if self.departed.len() < crate::placement::MAX_NODES {
                self.departed.insert(n);
            }
        }
        for n in &view {
            self.departed.remove(n);
        }
        let added: Vec<NodeId> = view.difference(&self.view).cloned().collect();
        self.ring = ring;
        self.view = view;
        self.leaving = leaving;
        self.leaving.remove(&self.config.me);
        // Removals no longer wait for nodes that went away.
        self.forget_waits(&mut out);
        let had_quorum = !self.quorum_lost;
        self.quorum_lost = !self.has_quorum();
        if self.quorum_lost {
            if had_quorum {
                self.lose_quorum(&mut out);
            }
            return self.checked(out);
        }
        let resynced: Vec<NodeId> = if had_quorum {
            for peer in &added {
                self.resync(peer, &mut out);
            }
            added
        } else {
            self.regain_quorum(&mut out)
        };
        match removal {
            // Only nodes taken off the ring, with the quorum kept all along: the children whose
            // owner or backup changed are among those these nodes backed up and those lodged
            // here (with a distribution for which that holds).
            Some(removed)
                if had_quorum
                    && !self.me_leaving
                    && self.config.distribution.removal_is_local() =>
            {
                self.rebalance_after_removal(&removed, &mut out)
            }
            _ => self.rebalance(&mut out),
        }
        self.tell_recovered(&resynced, &mut out);
        if begins_leaving {
            self.examined(self.tombstones.len());
            self.hand_off_tombstones(&mut out);
        }
        self.checked(out)
    }

    /// Minority: stop everything, and drop the backups; the majority side fails these children
    /// over. The stops are not removals (a removal would bury the children and chase the copies
    /// the majority runs): each child is kept as an orphan copy once it exited.
    fn lose_quorum(&mut self, out: &mut Vec<Action>) {
        let err = self.quorum_error();
        self.examined(self.owned.len());
        for (key, o) in self.owned.iter_mut() {
            for req in o.waiting.drain(..) {
                out.push(reply(req, Err(err.clone())));
            }
            match o.phase {
                // A removal in progress stays one.
                Phase::Stopping => {}
                Phase::Running => {
                    o.phase = Phase::Abandoning;
                    out.push(stop(key, StopReason::Quorum));
                }
                // Starting: stopped once spawned. Moving, Merging: a stop is under way already.
                Phase::Starting | Phase::Moving | Phase::Merging => o.phase = Phase::Abandoning,
                Phase::Abandoning => {}
            }
        }
        self.moving.clear();
        self.move_queue.clear();
        // Copies recovered from disk stop waiting for their owner: orphans, like every copy
        // recovered without a quorum.
        self.release_awaiting(None, |_| true, out);
        // Every copy held here stays (backups, hand-off copies, orphans): none runs while the
        // quorum is lost, but the majority this node cannot see may not exist (a crash and a
        // partition at once leave every side a minority), and then a copy here may be a
        // child's last one. Once the quorum returns, the usual reconciliation
        // ([`Directory::regain_quorum`]) drops the copies no longer needed and fails over the
        // orphans; a copy the other side failed over meanwhile meets it and is merged.
    }

    /// The quorum came back: the peers in the view are reconciled with, not only the ones that
    /// joined it at this change. Peers that came into the view while the quorum was lost were
    /// not reconciled then (nothing is decided without a quorum), and the copies this node kept
    /// through the loss may be stale (their owner moved its backup, handed the child on, or
    /// removed it meanwhile): [`DirMsg::Held`] tells each peer what is held for it, and the
    /// peer drops what it no longer needs.
    fn regain_quorum(&mut self, out: &mut Vec<Action>) -> Vec<NodeId> {
        let me = self.config.me.clone();
        let peers: Vec<NodeId> = self.view.iter().filter(|n| **n != me).cloned().collect();
        for peer in &peers {
            self.resync(peer, out);
        }
        peers
    }

    /// After a reconciliation with `peers` (and the replications it caused): once this node
    /// recovered its durable entries, each is told so and asked the same
    /// ([`DirMsg::Recovered`]), as messages sent before may have been lost.
    fn tell_recovered(&self, peers: &[NodeId], out: &mut Vec<Action>) {
        if self.recovered {
            for peer in peers {
                out.push(send(peer, DirMsg::Recovered { ask: true }));
            }
        }
    }

    /// The child `key`, stopped because this node lost its quorum, exited (or failed to spawn):
    /// forget it as a running child, without burying it or dropping any other copy, and keep its
    /// final record as an orphan copy held for this node itself. When the quorum returns, the
    /// copy is failed over like any orphan: run here if this node owns the key, handed to the
    /// owner otherwise, merged with the copy the other side ran meanwhile if there is one. The
    /// copies it carried (its backup, copies to drop) are dropped once the new copy is safe.
    pub(super) fn abandoned(&mut self, key: &str, out: &mut Vec<Action>) {
        self.moving.remove(key);
        self.move_queue.remove(key);
        self.touch(key);
        let Some(o) = self.take_owned(key) else {
            return;
        };
        let me = self.config.me.clone();
        let current = o.backup_holder(&me);
        let err = self.quorum_error();
        for req in o.waiting {
            out.push(reply(req, Err(err.clone())));
        }
        for req in o.stopping_reqs {
            out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned()))));
        }
        let olds: Vec<Holder> = current.into_iter().chain(o.old_backups).collect();
        self.hold_olds(key, olds);
        // Copies waiting to be merged into it are kept beside it (merged when it runs again).
        for theirs in o.merges.into_iter().chain(o.merging.map(|r| *r)) {
            let tag = Some(self.next_hand_off_tag());
            self.put_copy(key, orphan_copy(&me, theirs, tag, Epoch::default()));
        }
        self.put_copy(key, orphan_copy(&me, o.record, None, o.epoch));
        if !self.quorum_lost {
            // The quorum came back while it was stopping: the copies of this key (its own,
            // and any that waited for it to exit) are failed over now.
            self.fail_over_orphans_of(&BTreeSet::from([key.to_owned()]), out);
            self.pump_moves(out);
        }
    }

    /// The membership declared `node` dead while it was not in this node's view (it died before
    /// this node learned of it, e.g. while this node was joining). Backups it replicated here are
    /// orphans: they are failed over as if `node` had left the view.
    pub fn node_down(&mut self, node: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if self.view.contains(node) || *node == self.config.me {
            return self.checked(out);
        }
        if self.by_origin.contains_key(node) {
            self.departed.insert(node.clone());
            self.orphan_copies(&BTreeSet::from([node.clone()]));
            // Without a quorum the copies stay orphans until it returns. The view and the
            // ring did not change: only these copies need a decision.
            if !self.quorum_lost {
                self.fail_over_orphans(&mut out);
                self.pump_moves(&mut out);
            }
        }
        self.checked(out)
    }

    /// The connection to `peer` closed (for any reason) while `peer` is not in this node's
    /// view. Copies it replicated or handed here over that connection, from a run this node's
    /// membership never reported up, are orphans from now on: no view change will ever name
    /// `peer` to this directory if it stays out of reach (a partition hides it), and the side
    /// holding its copies must run them. Failed over as after [`Directory::node_down`]; if
    /// `peer` was alive after all, the copy it runs and the one failed over here meet when it
    /// joins the view and are merged (the conflict rule). Ignored for a peer in the view (the
    /// view change that removes it says so) and for a peer that sent nothing here.
    pub fn disconnected(&mut self, peer: &NodeId) -> Vec<Action> {
        self.node_down(peer)
    }

    /// Whether a drop sent to `node` is waited for: it is in the view.
    pub(super) fn may_answer(&self, node: &NodeId) -> bool {
        self.view.contains(node)
    }

    /// Removals and drops no longer wait for nodes out of the view.
    fn forget_waits(&mut self, out: &mut Vec<Action>) {
        // The keys with a wait on a node out of the view (the index is a superset).
        let away: Vec<NodeId> = self
            .waits
            .keys()
            .filter(|n| !self.view.contains(*n))
            .cloned()
            .collect();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for n in away {
            keys.extend(self.waits.remove(&n).unwrap_or_default());
        }
        self.examined(keys.len());
        let view = &self.view;
        let waits = |n: &NodeId| view.contains(n);
        for key in &keys {
            if let Some(list) = self.dropping.get_mut(key) {
                list.retain(|h| waits(&h.node));
                if list.is_empty() {
                    self.dropping.remove(key);
                    self.replicated_if_alone(key, out);
                }
            }
            if let Some(r) = self.removing.get_mut(key) {
                r.waiting_on.retain(|h| waits(&h.node));
                r.chasing.retain(|c| waits(&c.node));
            }
        }
        for key in &keys {
            self.finish_removal(key, out);
        }
    }

    /// The connection to `peer` was lost and re-established while `peer` stayed in this node's
    /// view, so messages to it may have been lost: send again what it must hold (the records it
    /// backs up for this node, the hand-offs it has not confirmed, the drops it has not
    /// confirmed) and tell it which copies this node holds for it ([`DirMsg::Held`]).
    pub fn reconnected(&mut self, peer: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if self.quorum_lost || !self.view.contains(peer) {
            return self.checked(out);
        }
        let backed_up = self.by_backup.get(peer).cloned().unwrap_or_default();
        self.examined(backed_up.len());
        for key in &backed_up {
            if let Some(o) = self.owned.get_mut(key) {
                o.acked = false;
                out.push(send(peer, o.replicate()));
            }
        }
        self.resync(peer, &mut out);
        self.tell_recovered(std::slice::from_ref(peer), &mut out);
        self.checked(out)
    }

    /// Re-send to `peer` the hand-offs and drops it has not confirmed, and reconcile the backups
    /// held for it.
    fn resync(&mut self, peer: &NodeId, out: &mut Vec<Action>) {
        // Every copy handed off to `peer` and not confirmed (the confirmation may have been
        // lost): the latest hand-off of a key carries the copies to drop with it.
        // The keys whose drops or removal wait on `peer`.
        let waiting: Vec<&String> = self.waits.get(peer).into_iter().flatten().collect();
        let mut examined = waiting.len();
        let held: Vec<(&String, &Vec<Backup>)> = self
            .by_origin
            .get(peer)
            .into_iter()
            .flatten()
            .filter_map(|k| self.backups.get_key_value(k))
            .collect();
        for &(key, list) in &held {
            examined += list.len();
            for b in list.iter().filter(|b| b.from == *peer) {
                let Some(tag) = b.handoff else {
                    continue;
                };
                let h = self
                    .handoffs
                    .get(key)
                    .filter(|h| h.to == *peer && h.tag == Some(tag));
                out.push(send(
                    peer,
                    DirMsg::Adopt {
                        record: b.record.clone(),
                        hops: 0,
                        tag,
                        holders: h.map_or_else(Vec::new, |h| h.olds.clone()),
                        moved: h.is_some_and(|h| h.moved),
                    },
                ));
            }
        }
        for (key, r) in waiting
            .iter()
            .filter_map(|k| self.removing.get_key_value(k.as_str()))
        {
            for h in r.waiting_on.iter().filter(|h| h.node == *peer) {
                out.push(h.drop_msg(key, Some(r.generation)));
            }
            for c in r.chasing.iter().filter(|c| c.node == *peer) {
                out.push(c.msg(key));
            }
        }
        for (key, list) in waiting
            .iter()
            .filter_map(|k| self.dropping.get_key_value(k.as_str()))
        {
            if self.removing.contains_key(key) {
                continue;
            }
            // Not a drop that would delete the copy `peer` now backs up for a child here (it
            // was its backup, then again: the replication since superseded the drop).
            let current = self
                .owned
                .get(key)
                .filter(|o| o.backup.as_ref() == Some(peer));
            for h in list.iter().filter(|h| h.node == *peer) {
                let backs_current = current.is_some_and(|o| {
                    h.tag.is_none() && h.origin == self.config.me && o.epoch <= h.epoch
                });
                if !backs_current {
                    out.push(h.drop_msg(key, None));
                }
            }
        }
        let keys: Vec<(String, Epoch)> = held
            .iter()
            .flat_map(|&(k, list)| list.iter().map(move |b| (k, b)))
            .filter(|(_, b)| b.from == *peer && b.handoff.is_none() && !b.awaiting)
            .map(|(k, b)| (k.clone(), b.epoch))
            .collect();
        out.push(send(peer, DirMsg::Held { keys }));
        if !self.tombstones.is_empty() {
            // The newest first, at most `MAX_BURIED_BYTES` of keys.
            let mut bytes = 0;
            let removed = self
                .tombstones
                .newest_first()
                .take_while(|(k, _)| {
                    bytes += k.len() + 8;
                    bytes <= MAX_BURIED_BYTES
                })
                .cloned()
                .collect::<Vec<_>>();
            examined += removed.len();
            out.push(send(peer, DirMsg::Buried { removed }));
        }
        self.examined(examined);
    }
}
