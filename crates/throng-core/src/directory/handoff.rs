//! Moving children between nodes: leaving gracefully, re-deriving placement after a view change
//! (rebalance, failover of orphaned copies), the move throttle ([`DirConfig::max_moves`](super::DirConfig::max_moves)), handing
//! a child off ([`DirMsg::Adopt`]) and holding its copy until the receiver confirms, and taking a
//! child handed to this node.

use super::{
    add_holder, index, orphan_copy, reply, send, stop, unindex, Action, Backup, ChildEvent, DirMsg,
    Directory, Epoch, Generation, Holder, Phase, Record, Source, StartError, StopReason, Tag,
    Version, MAX_BURIED_BYTES, MAX_HOPS,
};
use std::collections::{BTreeMap, BTreeSet};

use crate::NodeId;

/// A hand-off from here not yet confirmed by its receiver.
#[derive(Debug, Clone)]
pub(super) struct HandOff {
    /// The receiver; this node itself while the copy is not handed off (only held, with the
    /// copies to drop once the copy run here is safe).
    pub(super) to: NodeId,
    /// The tag of the hand-off ([`DirMsg::Adopt`]); `None` while `to` is this node.
    pub(super) tag: Option<Tag>,
    /// A graceful move (see [`DirMsg::Adopt`]).
    pub(super) moved: bool,
    /// Copies to drop once it is confirmed.
    pub(super) olds: Vec<Holder>,
    /// The copy handed off was made from this one (a removal naming it is chased to `to`).
    pub(super) source: Option<Source>,
    /// The lineage in which `to` runs the copy handed off (its replication to this node of a
    /// record that holds the copy's state): `to`'s replications of it are acknowledged before
    /// the hand-off is confirmed; those of another copy of the key `to` runs meanwhile are not
    /// ([`Directory::on_replicate`]).
    pub(super) taken: Option<Epoch>,
    /// `to` merged the copy handed off into a copy it ran ([`DirMsg::Conflict`]): all its
    /// replications of the key hold this copy's state from then on.
    pub(super) merged: bool,
}

impl Directory {
    /// This node leaves gracefully: it owns nothing from now on, and every child it runs moves
    /// to its new owner (drain-stop, final snapshot, [`DirMsg::Adopt`]), at most
    /// [`DirConfig::max_moves`](super::DirConfig::max_moves) at a time. Start requests are answered `NotOwner`. Poll
    /// [`Directory::handed_off`] to know when the node may exit.
    pub fn leave(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.me_leaving {
            return self.checked(out);
        }
        self.me_leaving = true;
        self.ring.remove(&self.config.me);
        self.quorum_lost = !self.has_quorum();
        if !self.quorum_lost {
            self.rebalance(&mut out);
            self.examined(self.tombstones.len());
            self.hand_off_tombstones(&mut out);
        }
        self.checked(out)
    }

    /// A leaving node takes no tombstone with it: each goes to its key's owner and backup in
    /// the view that stays ([`DirMsg::Buried`], at most `MAX_BURIED_BYTES` of keys per
    /// message), so a copy of a removed child that a node down now keeps on its disk is still
    /// refused when that node comes back.
    pub(super) fn hand_off_tombstones(&self, out: &mut Vec<Action>) {
        let mut by_node: BTreeMap<NodeId, Vec<Vec<(String, Generation)>>> = BTreeMap::new();
        let mut bytes: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (key, generation) in self.tombstones.newest_first() {
            let to = [self.owner(key), self.backup_of(key)];
            for node in to.into_iter().flatten() {
                if node == self.config.me {
                    continue;
                }
                let size = key.len() + 8;
                let used = bytes.entry(node.clone()).or_default();
                let chunks = by_node.entry(node).or_default();
                if chunks.is_empty() || *used + size > MAX_BURIED_BYTES {
                    chunks.push(Vec::new());
                    *used = 0;
                }
                *used += size;
                chunks
                    .last_mut()
                    .expect("pushed")
                    .push((key.clone(), *generation));
            }
        }
        for (node, chunks) in by_node {
            for removed in chunks {
                out.push(send(&node, DirMsg::Buried { removed }));
            }
        }
    }

    /// Re-derive every local decision from the current view: each child running here (moved
    /// away if another node owns its key, given a new backup if its backup changed), then every
    /// orphan copy (failed over or handed to its owner), then the moves. Costs O(owned +
    /// backups) ring lookups.
    pub(super) fn rebalance(&mut self, out: &mut Vec<Action>) {
        let keys: Vec<String> = self.owned.keys().cloned().collect();
        self.examined(keys.len());
        for key in keys {
            self.rebalance_child(key, out);
        }
        self.fail_over_orphans(out);
        self.pump_moves(out);
    }

    /// [`Directory::rebalance`] after the view only took `removed` off the ring (lost or
    /// leaving), with a distribution for which that changes the owner only of the keys they
    /// owned and the backup only of the keys they owned or backed up: the children they backed
    /// up and those lodged here are looked at again, then the orphan copies and the moves. Costs
    /// what these nodes backed up here, not a pass over every child.
    pub(super) fn rebalance_after_removal(&mut self, removed: &[NodeId], out: &mut Vec<Action>) {
        let mut keys: BTreeSet<String> = self.lodged.clone();
        for node in removed {
            if let Some(backed_up) = self.by_backup.get(node) {
                keys.extend(backed_up.iter().cloned());
            }
        }
        self.examined(keys.len());
        for key in keys {
            self.rebalance_child(key, out);
        }
        self.fail_over_orphans(out);
        self.pump_moves(out);
    }

    /// The child `key` running here, under the current view: queued to move if another node
    /// owns its key; replicated to its new backup if its backup changed.
    fn rebalance_child(&mut self, key: String, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        let owner = self.owner(&key);
        let backup = self.backup_of(&key).filter(|b| *b != self.config.me);
        let Some(o) = self.owned.get_mut(&key) else {
            return;
        };
        if owner.as_ref() == Some(&me) {
            self.lodged.remove(&key);
        } else {
            self.lodged.insert(key.clone());
        }
        if owner.as_ref().is_some_and(|n| *n != me) {
            if matches!(o.phase, Phase::Starting | Phase::Running) {
                self.move_queue.insert(key);
            }
            return;
        }
        if matches!(o.phase, Phase::Stopping | Phase::Moving | Phase::Abandoning) {
            return;
        }
        if o.backup != backup {
            // The former backup keeps its copy until the new one acknowledged (it is
            // dropped then, even if it left the view: it may be alive behind a partition or
            // a false suspicion, and a stale backup would fail over later).
            if let Some(old) = o.backup_holder(&me) {
                add_holder(&mut o.old_backups, old);
            }
            // The new backup's copy is replaced by the replication (a drop of this lineage
            // arriving after it would delete it).
            let epoch = o.epoch;
            let supersedes = |h: &Holder| {
                h.tag.is_none()
                    && h.origin == me
                    && h.epoch == epoch
                    && Some(&h.node) == backup.as_ref()
            };
            o.old_backups.retain(|h| !supersedes(h));
            let mut superseded = false;
            if let Some(list) = self.dropping.get_mut(&key) {
                // Nor is a drop sent to it earlier sent again on a reconnection.
                superseded = list.iter().any(&supersedes);
                list.retain(|h| !supersedes(h));
                if list.is_empty() {
                    self.dropping.remove(&key);
                }
            }
            if superseded {
                // A drop of this lineage is on its way to the new backup, and an
                // acknowledgement it sent before that drop (of an earlier replication to it,
                // at the same version) could arrive after this replication is sent, and be
                // taken for this one's — while the drop then deletes the copy. The copy gets
                // a new lineage: the late drop (of the older one) leaves the new copy alone,
                // and only an acknowledgement of the new lineage counts.
                self.next_tag += 1;
                o.epoch = Epoch(self.config.incarnation, self.next_tag);
            }
            unindex(&mut self.by_backup, o.backup.as_ref(), &key);
            index(&mut self.by_backup, backup.as_ref(), &key);
            o.backup = backup.clone();
            if let Some(b) = &backup {
                o.acked = false;
                out.push(send(b, o.replicate()));
            }
            if let (true, Some(b)) = (superseded, &backup) {
                self.rewait(&key, b);
            }
            self.settle(&key, out);
        }
    }

    /// Copies whose origin left the view: each is failed over (run here if this node owns the
    /// key, merged into the copy running here if there is one), handed to its owner, or dropped
    /// with its child if that child was removed. Visits the keys that may hold one
    /// (`orphan_keys`) only; those that still do afterwards (no owner yet, a copy here still
    /// stopping) stay listed.
    pub(super) fn fail_over_orphans(&mut self, out: &mut Vec<Action>) {
        let keys = std::mem::take(&mut self.orphan_keys);
        self.fail_over_orphans_of(&keys, out);
        for key in keys {
            if self.holds_orphan_copy(&key) {
                self.orphan_keys.insert(key);
            }
        }
    }

    /// Whether a copy of `key` held here is an orphan (flagged, or from a departed node).
    pub(super) fn holds_orphan_copy(&self, key: &str) -> bool {
        self.backups.get(key).is_some_and(|list| {
            list.iter()
                .any(|b| b.orphan || self.departed.contains(&b.from))
        })
    }

    /// [`Directory::fail_over_orphans`] for the copies of `keys`.
    pub(super) fn fail_over_orphans_of(&mut self, keys: &BTreeSet<String>, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        let mut examined = 0;
        let mut orphaned: Vec<(String, Version, NodeId, Option<Tag>)> = keys
            .iter()
            .filter_map(|k| self.backups.get_key_value(k))
            .flat_map(|(k, list)| list.iter().map(move |b| (k, b)))
            .inspect(|_| examined += 1)
            .filter(|(_, b)| b.orphan || self.departed.contains(&b.from))
            .map(|(k, b)| (k.clone(), b.record.version, b.from.clone(), b.handoff))
            .collect();
        // Of several orphan copies of one key (a backup and a hand-off copy), the newest state
        // runs first and the others are merged into it: a child never runs from an older copy
        // while a newer one waits to be merged (a crash before that merge would lose it).
        orphaned.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        self.examined(examined);
        for (key, _, from, handoff) in orphaned {
            self.fail_over_orphan(&me, key, from, handoff, out);
        }
    }

    /// The orphan copy of `key` that `from` made (hand-off `handoff`, if any).
    fn fail_over_orphan(
        &mut self,
        me: &NodeId,
        key: String,
        from: NodeId,
        handoff: Option<Tag>,
        out: &mut Vec<Action>,
    ) {
        if self.owner(&key).is_none() {
            // Nobody to run it (this node leaves and sees no owner): keep the copy until
            // the view has one.
            return;
        }
        if self
            .owned
            .get(&key)
            .is_some_and(|o| o.phase == Phase::Abandoning)
        {
            // Its copy here is still stopping for a quorum lost meanwhile: it joins this
            // copy when it exited (`abandoned`).
            return;
        }
        let Some(b) = self
            .remove_copies(&key, |b| b.from == from && b.handoff == handoff)
            .pop()
        else {
            return;
        };
        // A hand-off to the departed node is over: its copies to drop go with this copy.
        let olds = match self.handoffs.get(&key) {
            Some(h) if h.to == b.from => self.handoffs.remove(&key).map(|h| h.olds),
            _ => None,
        }
        .unwrap_or_default();
        let source = Source::held(&b);
        if !self.owned.contains_key(&key)
            && (self.removing.contains_key(&key) || self.buried(&key, b.record.generation))
        {
            // A copy of a removed child: it goes too, with the copies it carried.
            self.discard(&key, b.record.generation, olds, out);
            return;
        }
        match self.owner(&key) {
            Some(o) if o == *me => {
                if self.owned.contains_key(&key) {
                    // A copy runs here already: two copies met (views disagreed).
                    self.take_copy(&key, b.record, None, olds, out);
                    return;
                }
                // (Alone: with another copy of its own beside it — a durable entry recovered
                // meanwhile — the newer runs here and the other is merged into it, as before.)
                let alone = !self
                    .backups
                    .get(&key)
                    .is_some_and(|list| list.iter().any(|c| c.from == *me));
                if b.from == *me && alone {
                    // Its own copy, stopped when this node lost its quorum. The node that held
                    // its backup then may have failed it over meanwhile and run it since, and
                    // would hand that copy here once it sees this node back: running this one
                    // first would make two copies acknowledge calls until they meet, and the
                    // merge keeps one side's. It goes to that node instead, to meet the copy
                    // running there (merged, then moved here) or, if none runs there, to come
                    // back here to run.
                    let holder = olds
                        .iter()
                        .map(|h| h.node.clone())
                        .find(|n| n != me && self.view.contains(n));
                    if let Some(holder) = holder {
                        self.hand_off(&holder, b.record, 0, olds, false, Some(source), out);
                        return;
                    }
                }
                let first = if b.from == *me {
                    // Its own copy, stopped when this node lost its quorum.
                    ChildEvent::Restarted { key: key.clone() }
                } else {
                    ChildEvent::FailedOver {
                        key: key.clone(),
                        from: b.from.clone(),
                        from_snapshot: b.record.snapshot.is_some(),
                    }
                };
                self.hold_olds(&key, olds);
                self.insert_owned(b.record, Vec::new(), first, Some(source), out);
            }
            Some(o) => self.hand_off(&o, b.record, 0, olds, false, Some(source), out),
            None => {}
        }
    }

    /// Starts moves from the queue while fewer than [`DirConfig::max_moves`](super::DirConfig::max_moves) are in progress.
    pub(super) fn pump_moves(&mut self, out: &mut Vec<Action>) {
        let max = self.config.max_moves.max(1);
        while self.moving.len() < max {
            let Some(key) = self.move_queue.pop_first() else {
                break;
            };
            let owner = self.owner(&key);
            let Some(o) = self.owned.get_mut(&key) else {
                continue;
            };
            if owner.is_none_or(|n| n == self.config.me)
                || !matches!(o.phase, Phase::Starting | Phase::Running)
                || !o.merges.is_empty()
            {
                // No longer to move, or merges first (`merged` moves it afterwards).
                continue;
            }
            let was = o.phase;
            o.phase = Phase::Moving;
            self.moving.insert(key.clone());
            if was == Phase::Running {
                out.push(stop(&key, StopReason::Move));
            }
        }
    }

    /// The child `key` stopped in order to move: hand it to whoever owns the key now.
    pub(super) fn moved(&mut self, key: &str, out: &mut Vec<Action>) {
        self.moving.remove(key);
        self.touch(key);
        let Some(o) = self.take_owned(key) else {
            return;
        };
        let current = o.backup_holder(&self.config.me);
        match self.owner(key) {
            Some(to) if to != self.config.me && o.merges.is_empty() => {
                // Start requests still waiting are retried at the new owner.
                for req in o.waiting {
                    out.push(reply(
                        req,
                        Err(StartError::NotOwner {
                            owner: Some(to.clone()),
                        }),
                    ));
                }
                for req in o.stopping_reqs {
                    out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned()))));
                }
                // The backups keep their copies until `to` confirms it took the child.
                let olds = current.into_iter().chain(o.old_backups).collect();
                out.push(Action::Event(ChildEvent::Migrated {
                    key: key.to_owned(),
                    to: to.clone(),
                }));
                let source = o.source.map(|s| *s);
                self.hand_off(&to, o.record, 0, olds, true, source, out);
            }
            _ => {
                // The key came back to this node (or no owner), or other copies wait to be
                // merged into it first (it moves after the merge): run it again here.
                let first = ChildEvent::Restarted {
                    key: key.to_owned(),
                };
                let merges = o.merges;
                let carried: Vec<Holder> = current.into_iter().chain(o.old_backups).collect();
                self.hold_olds(key, carried);
                let source = o.source.map(|s| *s);
                self.insert_owned(o.record, o.waiting, first, source, out);
                if let Some(n) = self.owned.get_mut(key) {
                    n.merges.extend(merges);
                    n.stopping_reqs = o.stopping_reqs;
                }
            }
        }
        // The replications held back while the copy ran here (but those of the node it was
        // handed to, until it takes it: see `on_replicate`).
        self.ack_held(key, out);
        self.pump_moves(out);
    }

    /// A copy of a child sent by `from` to run here ([`DirMsg::Adopt`]): the copies it names are
    /// gathered; a hand-off taken before is answered, not run again; a copy of a removed child
    /// goes; otherwise the record meets the copy running here, is passed on to the owner in this
    /// node's view, or runs here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adopt(
        &mut self,
        from: &NodeId,
        record: Record,
        hops: u8,
        tag: Tag,
        holders: Vec<Holder>,
        moved: bool,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        let (record, copies, bounced, kept) = self.gather_adoption(from, record, tag, &holders);
        self.adopt_gathered(
            from, record, hops, tag, holders, moved, copies, bounced, out,
        );
        if kept {
            // The copies of another history kept here meet the copy that runs here now (merged
            // into it), or follow the adopted record to its owner (a hand-off of their own,
            // merged there into the copy that runs).
            self.fail_over_orphans_of(&BTreeSet::from([key.clone()]), out);
            if !self.holds_orphan_copy(&key) {
                self.orphan_keys.remove(&key);
            }
        }
    }

    /// [`Directory::adopt`] once the copies its record names are gathered.
    #[allow(clippy::too_many_arguments)]
    fn adopt_gathered(
        &mut self,
        from: &NodeId,
        record: Record,
        hops: u8,
        tag: Tag,
        holders: Vec<Holder>,
        moved: bool,
        copies: Vec<Holder>,
        bounced: bool,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        let source = Source::Adopted {
            from: from.clone(),
            tag,
        };
        let Some(copies) = self.adoption_made_here(&key, &source, copies, out) else {
            return;
        };
        if !self.remember_adoption(from, tag) {
            // Taken before, and the copy it made has moved on since (confirmed by its next
            // holder) or was removed: the sender may forget its copy; nothing to run again.
            let sender = Holder::hand_off_sender(from, &self.config.me, tag);
            out.push(sender.drop_msg(&key, None));
            return;
        }
        if !self.owned.contains_key(&key)
            && (self.removing.contains_key(&key) || self.buried(&key, record.generation))
        {
            // A copy of a removed child: it goes too (its holders drop it).
            self.discard(&key, record.generation, copies, out);
            return;
        }
        if self.owned.contains_key(&key) {
            let sender = (!bounced).then(|| Holder::hand_off_sender(from, &self.config.me, tag));
            self.adopt_beside(
                &key, record, hops, copies, moved, source, sender, holders, out,
            );
        } else {
            self.run_or_pass_on(from, record, hops, copies, moved, source, out);
        }
    }

    /// The copies an adoption from `from` with `tag` names: the sender's (unless the record is
    /// this node's own hand-off sent back as it was) and the other holders'. A copy of it held
    /// here goes, and the newer of it and `record` is the one adopted; if the two are not one
    /// history (see [`one_history`]), the other is kept here as an orphan copy held for this
    /// node, to be merged into the adopted one. Returns the record, the copies held elsewhere,
    /// whether it was bounced, and whether a copy was kept to merge.
    fn gather_adoption(
        &mut self,
        from: &NodeId,
        mut record: Record,
        tag: Tag,
        holders: &[Holder],
    ) -> (Record, Vec<Holder>, bool, bool) {
        let key = record.key.clone();
        let me = self.config.me.clone();
        // This node's own hand-off to `from`, sent back as it was (by a node of an earlier
        // version that lost its quorum: this version keeps such an adoption instead): the copy
        // kept here until `from` confirms is this very record, and `from` kept nothing. It
        // goes, or it would wait for a confirmation that never comes.
        let bounced = !self
            .remove_copies(&key, |b| b.from == *from && b.handoff == Some(tag))
            .is_empty();
        let sender = Holder::hand_off_sender(from, &me, tag);
        let mut copies: Vec<Holder> = (!bounced).then_some(sender).into_iter().collect();
        let mut kept = false;
        for h in holders {
            if h.node == me {
                // A copy held here: it goes, the newest of it and the adopted record runs (the
                // adopted one is usually at least as recent, unless it is an older hand-off sent
                // again after a reconnection).
                for b in self.remove_copies(&key, |b| h.names(b)) {
                    if let Some(other) = newer_of(&mut record, b.record) {
                        self.keep_to_merge(&key, other);
                        kept = true;
                    }
                }
            } else {
                add_holder(&mut copies, h.clone());
            }
        }
        (record, copies, bounced, kept)
    }

    /// Keeps `record`, a copy of `key` of another history than the one adopted here, as an
    /// orphan copy held for this node (under a tag of its own): failed over like any, it is
    /// merged into the copy that runs.
    pub(super) fn keep_to_merge(&mut self, key: &str, record: Record) {
        let tag = self.next_hand_off_tag();
        let me = self.config.me.clone();
        self.put_copy(key, orphan_copy(&me, record, Some(tag), Epoch::default()));
    }

    /// The same hand-off sent again (its confirmation was lost, or overtaken by the sender's
    /// reconnection) while the copy it made runs here or was handed on: nothing new to run; the
    /// copies it names go with the copy made from it. `None` if so; the copies otherwise.
    fn adoption_made_here(
        &mut self,
        key: &str,
        again: &Source,
        copies: Vec<Holder>,
        out: &mut Vec<Action>,
    ) -> Option<Vec<Holder>> {
        let me = self.config.me.clone();
        if let Some(o) = self.owned.get_mut(key) {
            if o.source.as_deref() != Some(again) {
                return Some(copies);
            }
            for h in copies {
                add_holder(&mut o.old_backups, h);
            }
            if matches!(o.phase, Phase::Starting | Phase::Running) {
                if let Some(b) = &o.backup {
                    // The acknowledgement drops them.
                    o.acked = false;
                    out.push(send(b, o.replicate()));
                }
                self.settle(key, out);
            }
            return None;
        }
        match self.handoffs.get_mut(key) {
            Some(h) if h.to != me && h.source.as_ref() == Some(again) => {
                for c in copies {
                    if c.node != h.to {
                        add_holder(&mut h.olds, c);
                    }
                }
                None
            }
            _ => Some(copies),
        }
    }

    /// An adopted `record` of `key`, which a copy here runs (or is stopping): it joins that copy
    /// according to the copy's phase.
    #[allow(clippy::too_many_arguments)]
    fn adopt_beside(
        &mut self,
        key: &str,
        record: Record,
        hops: u8,
        copies: Vec<Holder>,
        moved: bool,
        source: Source,
        sender: Option<Holder>,
        holders: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.me.clone();
        let owner = self.owner(key);
        // A copy waiting to be merged is part of the key's durable entry.
        self.touch(key);
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        match o.phase {
            Phase::Stopping => {
                // Terminated here: the other copy goes too (its holders are told when the child
                // has stopped, and the removal waits for them).
                for h in copies {
                    add_holder(&mut o.old_backups, h);
                }
            }
            Phase::Moving | Phase::Abandoning => match owner.filter(|n| *n != me) {
                Some(to) if hops < MAX_HOPS => {
                    // The copy here is on its way out: this record goes where it goes (the
                    // sender keeps its copy until the next node confirms).
                    self.hand_off(&to, record, hops + 1, copies, moved, Some(source), out);
                }
                _ => {
                    o.record.absorb(&record);
                    if record.snapshot.is_some() {
                        o.merges.push(record);
                    }
                    for h in copies {
                        add_holder(&mut o.old_backups, h);
                    }
                }
            },
            Phase::Starting | Phase::Running | Phase::Merging => {
                self.take_copy(key, record, sender, holders, out);
            }
        }
    }

    /// An adopted `record` that no copy here runs: passed on to the owner in this node's view if
    /// that is another node (views disagree), run here otherwise.
    #[allow(clippy::too_many_arguments)]
    fn run_or_pass_on(
        &mut self,
        from: &NodeId,
        record: Record,
        hops: u8,
        copies: Vec<Holder>,
        moved: bool,
        source: Source,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        let me = self.config.me.clone();
        let owner = self.owner(&key);
        match &owner {
            Some(o) if *o != me && hops < MAX_HOPS => {
                // Views disagree: pass it on to the owner in this node's view (the sender keeps
                // its copy until that node confirms).
                self.hand_off(o, record, hops + 1, copies, moved, Some(source), out);
            }
            _ => {
                // Ours, or passed around too often while views settle: run it here; the next
                // view change moves it if it is not ours.
                let first = if moved {
                    ChildEvent::Adopted {
                        key: key.clone(),
                        from: from.clone(),
                    }
                } else {
                    ChildEvent::FailedOver {
                        key: key.clone(),
                        from: from.clone(),
                        from_snapshot: record.snapshot.is_some(),
                    }
                };
                self.hold_olds(&key, copies);
                self.insert_owned(record, Vec::new(), first, Some(source), out);
                if owner.is_some_and(|o| o != me) {
                    // Not ours (kept after too many hops): it moves to its owner as soon as it
                    // runs, rather than at the next view change (a leaving node must not keep
                    // it, and the views may have settled already).
                    self.move_queue.insert(key);
                    self.pump_moves(out);
                }
            }
        }
    }

    /// Remembers the hand-off `tag` from `from` (the newest [`MAX_ADOPTIONS`](super::MAX_ADOPTIONS)); false if it was
    /// taken before.
    pub(super) fn remember_adoption(&mut self, from: &NodeId, tag: Tag) -> bool {
        self.adoptions.insert((from.clone(), tag))
    }

    /// `to` confirmed it took the child `key` handed off to it: the former backups may forget it.
    pub(super) fn confirm_handoff(&mut self, key: &str, to: &NodeId, out: &mut Vec<Action>) {
        let Some(h) = self.handoffs.remove(key) else {
            return;
        };
        let me = &self.config.me;
        let olds = h
            .olds
            .into_iter()
            .filter(|old| old.node != *to && old.node != *me)
            .collect();
        self.drop_copies(key, olds, out);
        // `to`'s replications held back until it took the copy.
        self.ack_held(key, out);
    }

    /// Copies to drop once the copy of `key` about to be run or handed off from here is safe.
    pub(super) fn hold_olds(&mut self, key: &str, olds: Vec<Holder>) {
        let me = self.config.me.clone();
        let h = self.handoffs.entry(key.to_owned()).or_insert(HandOff {
            to: me.clone(),
            tag: None,
            moved: false,
            olds: Vec::new(),
            source: None,
            taken: None,
            merged: false,
        });
        for o in olds {
            if o.node != me {
                add_holder(&mut h.olds, o);
            }
        }
    }

    /// Send `record` to `to` to run, and hold a copy until `to` confirms it took it (with a
    /// [`DirMsg::Drop`], or by replicating to this node): the copy is kept as a backup *from*
    /// `to`, so if `to` leaves the view first, the usual failover of orphaned backups re-sends or
    /// runs it instead of losing the child with the message.
    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        &mut self,
        to: &NodeId,
        record: Record,
        hops: u8,
        old_backups: Vec<Holder>,
        moved: bool,
        source: Option<Source>,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        self.hold_olds(&key, old_backups);
        let tag = self.next_hand_off_tag();
        let h = self.handoffs.get_mut(&key).expect("held");
        h.to = to.clone();
        h.tag = Some(tag);
        h.moved = moved;
        h.source = source;
        h.taken = None;
        h.merged = false;
        // The receiver drops the copies it holds itself as soon as it gets the record (which is
        // at least as recent): a backup of the child, or a hand-off copy of its own that came
        // back to it (views disagreed, the child was passed around).
        let holders: Vec<Holder> = h.olds.clone();
        // The copy is held until `to` confirms (beside a backup from `to`, if any: that one
        // backs up another copy).
        self.put_copy(
            &key,
            Backup {
                from: to.clone(),
                record: record.clone(),
                handoff: Some(tag),
                epoch: Epoch::default(),
                orphan: false,
                awaiting: false,
            },
        );
        out.push(send(
            to,
            DirMsg::Adopt {
                record,
                hops,
                tag,
                holders,
                moved,
            },
        ));
    }
}

/// Of `record` and `other`, two copies of one key that met: `record` becomes the newer, and the
/// older is returned if it must still be merged into it — two histories (two copies that may
/// each have taken calls: a copy failed over meanwhile and the copy that came back) are both
/// kept, for choosing one would lose what only the other took; of one history the older is a
/// prefix of the newer and goes.
pub(super) fn newer_of(record: &mut Record, other: Record) -> Option<Record> {
    let one = one_history(record, &other);
    let older = if other.is_later_than(record) {
        std::mem::replace(record, other)
    } else {
        other
    };
    (!one).then_some(older)
}

/// Whether two copies of one key are one history: the same state, or the same generation
/// written by the same copy ([`Record::written_by`]), of which the lower version is a prefix of
/// the higher. Copies of two writers (or generations) are two histories: which holds what
/// cannot be told, so they are merged, not chosen between.
pub(super) fn one_history(a: &Record, b: &Record) -> bool {
    a.same_state(b)
        || (a.generation == b.generation && a.written_by.is_some() && a.written_by == b.written_by)
}
