//! The copies of children held on this node for others — backups, hand-off copies, orphans — and
//! the messages that keep them in step: replication and its acknowledgement, drops (make before
//! break) and their answers, reconciliation with a peer ([`DirMsg::Held`]), and the meeting of a
//! copy with a running copy of the same child (the conflict rule).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    add_holder, index, reply, send, unindex, Action, Backup, ChildEvent, DirMsg, Directory, Epoch,
    Generation, Holder, Phase, Record, Source, Tag, Version,
};
use crate::NodeId;

impl Directory {
    /// Adds a copy of `key`, replacing the one of the same origin and kind.
    pub(super) fn put_copy(&mut self, key: &str, b: Backup) {
        self.touch(key);
        self.file_copy(key, &b);
        let list = self.backups.entry(key.to_owned()).or_default();
        match list
            .iter_mut()
            .find(|c| c.from == b.from && c.handoff == b.handoff)
        {
            Some(c) => *c = b,
            None => list.push(b),
        }
    }

    /// Removes the copies of `key` held here that `pred` selects.
    pub(super) fn remove_copies(
        &mut self,
        key: &str,
        pred: impl Fn(&Backup) -> bool,
    ) -> Vec<Backup> {
        let Some(list) = self.backups.get_mut(key) else {
            return Vec::new();
        };
        if self.config.durable {
            self.touched.insert(key.to_owned());
        }
        let mut removed: Vec<Backup> = Vec::new();
        let mut i = 0;
        while i < list.len() {
            if pred(&list[i]) {
                removed.push(list.remove(i));
            } else {
                i += 1;
            }
        }
        for b in &removed {
            if !list.iter().any(|c| c.from == b.from) {
                unindex(&mut self.by_origin, Some(&b.from), key);
            }
        }
        if list.is_empty() {
            self.backups.remove(key);
        }
        removed
    }

    /// Files a copy of `key` about to be held here in the indexes: under its origin, and among
    /// the keys that may hold an orphan copy if it is one.
    pub(super) fn file_copy(&mut self, key: &str, b: &Backup) {
        index(&mut self.by_origin, Some(&b.from), key);
        if b.orphan || self.departed.contains(&b.from) {
            self.orphan_keys.insert(key.to_owned());
        }
    }

    /// Tells the holders of other copies of `key` to drop them; a removal of `key` that begins
    /// before they confirm waits for them too (a copy not dropped yet may still be failed over).
    pub(super) fn drop_copies(&mut self, key: &str, holders: Vec<Holder>, out: &mut Vec<Action>) {
        for h in holders {
            out.push(h.drop_msg(key, None));
            if self.may_answer(&h.node) {
                index(&mut self.waits, Some(&h.node), key);
                let list = self.dropping.entry(key.to_owned()).or_default();
                add_holder(list, h);
            }
        }
    }

    /// A copy of the running child `key` arrived from `from` (an adoption, or an orphaned backup
    /// found while a copy runs here): the copy here wins; the other copy's state is merged into it
    /// and `from` forgets its copy once this copy's backup holds the result.
    pub(super) fn take_copy(
        &mut self,
        key: &str,
        theirs: Record,
        sender: Option<Holder>,
        olds: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.me.clone();
        // A copy waiting to be merged is part of the key's durable entry.
        self.touch(key);
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        for h in olds.into_iter().chain(sender.clone()) {
            if h.node != me {
                add_holder(&mut o.old_backups, h);
            }
        }
        // A copy identical to this one (a restarted node's record of the state this copy runs
        // from: its owner and its backup both kept it) has nothing to add: no conflict, no merge.
        let same = theirs.same_state(&o.record);
        if let Some(s) = sender.filter(|s| s.node != me && !same) {
            out.push(Action::Event(ChildEvent::Conflict {
                key: key.to_owned(),
                other: s.node.clone(),
                here_lost: false,
            }));
            out.push(send(
                &s.node,
                DirMsg::Conflict {
                    key: key.to_owned(),
                },
            ));
        }
        // Another child of the key is merged into this one (or, without a state, dropped for
        // it): a removal of this child removes that one too.
        o.record.absorb(&theirs);
        if same {
            // The copy runs this very state: what of it a backup acknowledged, this copy holds.
            o.record.acknowledged(theirs.acked);
        }
        let merge = theirs.snapshot.is_some() && !same;
        if merge {
            o.merges.push(theirs);
        }
        if o.phase == Phase::Running && merge {
            self.next_merge(key, out);
        } else if !merge {
            // Nothing to merge: refresh the backup so the confirmation to `from` follows.
            if let Some(b) = &o.backup {
                o.acked = false;
                out.push(send(b, o.replicate()));
            }
        }
        // A merge in progress (or deferred until the child runs) replicates its result, and
        // that acknowledgement drops the copies to drop.
        self.settle(key, out);
    }

    /// Marks the copies held for `nodes` (which left the view, or died) as orphans.
    pub(super) fn orphan_copies(&mut self, nodes: &BTreeSet<NodeId>) {
        if nodes.is_empty() {
            return;
        }
        let mut examined = 0;
        for node in nodes {
            let Some(keys) = self.by_origin.get(node) else {
                continue;
            };
            for key in keys {
                let Some(list) = self.backups.get_mut(key) else {
                    continue;
                };
                for b in list.iter_mut().filter(|b| b.from == *node) {
                    examined += 1;
                    b.orphan = true;
                    b.awaiting = false;
                }
                self.orphan_keys.insert(key.clone());
            }
        }
        self.examined(examined);
    }

    /// Whether the copy of `key` that `from` holds for this node (lineage `epoch`, holder `h`) is
    /// still needed: it backs the running copy, or an old backup or hand-off not yet settled.
    fn wants_copy(&self, key: &str, from: &NodeId, epoch: Epoch, h: &Holder) -> bool {
        self.owned.get(key).is_some_and(|o| {
            (o.epoch == epoch && o.backup.as_ref() == Some(from)) || o.old_backups.contains(h)
        }) || self.handoffs.get(key).is_some_and(|ho| ho.olds.contains(h))
    }

    /// A replication of lineage `epoch` of `key` arrived from `from` while this node holds an
    /// orphan copy of another lineage from it (`from` left the view after replicating it: it
    /// crashed and came back as a new incarnation, or was cut off, and runs the child anew, from
    /// a copy that may be older than this one). That copy is not the backup being replaced: it
    /// is kept, as a copy held for this node itself, and failed over like any orphan (merged into
    /// the running copy if there is one), or the state it holds would be lost.
    fn keep_orphan(&mut self, key: &str, from: &NodeId, epoch: Epoch) {
        let orphan = |c: &Backup| c.from == *from && c.handoff.is_none() && c.orphan;
        let other = self
            .backups
            .get(key)
            .is_some_and(|list| list.iter().any(|c| orphan(c) && c.epoch != epoch));
        if !other {
            return;
        }
        let tag = self.next_hand_off_tag();
        let me = self.config.me.clone();
        let Some(list) = self.backups.get_mut(key) else {
            return;
        };
        if let Some(c) = list.iter_mut().find(|c| orphan(c)) {
            c.from = me.clone();
            c.handoff = Some(tag);
            c.epoch = Epoch::default();
            if !list.iter().any(|c| c.from == *from) {
                unindex(&mut self.by_origin, Some(from), key);
            }
            index(&mut self.by_origin, Some(&me), key);
            self.orphan_keys.insert(key.to_owned());
        }
    }

    /// [`DirMsg::Replicate`] from `from`: keep its record as the backup of lineage `epoch`
    /// (replacing an older version) and acknowledge it, unless the child was removed.
    pub(super) fn on_replicate(
        &mut self,
        from: &NodeId,
        record: Record,
        epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        let version = record.version;
        if self.buried(&key, record.generation) {
            // A copy of a removed child: sent before the removal, which overtook it from
            // another node, or replicated by a copy that survived the removal on the
            // other side of a partition. Refused (keeping it would fail the child over);
            // the sender's copy, if it still runs, is stopped.
            out.push(send(
                from,
                DirMsg::Removed {
                    key,
                    generation: record.generation,
                },
            ));
            return;
        }
        // If a copy runs here too, views disagree: it is kept as the sender's backup all
        // the same (the sender waits for the acknowledgement); whichever copy is not on
        // the owner once views converge moves to it and is merged there, and if the
        // sender leaves the view first, this backup is merged into the copy here.
        // Messages between two nodes arrive in order, so the latest record from an owner
        // is its current one. Copies of other origins (other lineages, views that
        // disagree) and hand-off copies are kept beside it.
        // A copy recovered here for `from` that is not the record it replicates: another state
        // of the child (the owner's disk and this one's disagree), merged into the owner's.
        let other_state = self.backups.get(&key).is_some_and(|list| {
            list.iter()
                .any(|c| c.awaiting && c.from == *from && !c.record.same_state(&record))
        });
        if other_state {
            let within = BTreeSet::from([key.clone()]);
            self.release_awaiting(Some(&within), |c| c.from == *from, out);
        }
        self.keep_orphan(&key, from, epoch);
        let withheld = !self.takes_hand_off(&key, from, epoch, &record);
        // Held here, hence acknowledged: a copy failed over from it starts from there.
        let mut record = record;
        record.acknowledged(version);
        self.put_copy(
            &key,
            Backup {
                from: from.clone(),
                record,
                handoff: None,
                epoch,
                orphan: false,
                awaiting: false,
            },
        );
        if self.owned.contains_key(&key) {
            // A copy runs here too (a failover while the sender was down, and the sender back
            // with its own copy): two copies take calls until one is handed to the other, and
            // the merge keeps one side's state. Not acknowledged until the copy here is gone
            // (`ack_held`), so the sender's `Sync` replies wait instead of acknowledging states
            // the merge may drop.
            return;
        }
        if withheld {
            // The copy that ran here is on its way to the sender, which runs another copy
            // meanwhile (a restarted node's disk copy, run before the copy failed over here
            // reached it): the same two copies, one of them in flight. Acknowledged once the
            // sender took the copy (`confirm_handoff`) or merged it (`DirMsg::Conflict`).
            return;
        }
        out.push(send(
            from,
            DirMsg::Ack {
                key,
                version,
                epoch,
            },
        ));
    }

    /// Whether a replication of lineage `epoch` of `key` from `from` (`record`) may be
    /// acknowledged as far as a hand-off of `key` from here to `from` goes: none is in flight
    /// to `from`, or `from` runs the copy handed off in that lineage (`record` holds its state:
    /// the same state, or as much of the child's history acknowledged; remembered in
    /// [`HandOff::taken`]). A replication of another copy `from` runs is not.
    fn takes_hand_off(&mut self, key: &str, from: &NodeId, epoch: Epoch, record: &Record) -> bool {
        let Some(h) = self.handoffs.get(key) else {
            return true;
        };
        if h.to != *from || h.tag.is_none() || h.merged || h.taken == Some(epoch) {
            return true;
        }
        let handed = self.backups.get(key).and_then(|list| {
            list.iter()
                .find(|b| b.from == h.to && b.handoff == h.tag)
                .map(|b| &b.record)
        });
        let Some(handed) = handed else {
            return true;
        };
        // A copy run from the one handed off keeps what of it was acknowledged (and states it
        // writes keep it): a record acknowledged less far is another copy `from` ran before
        // the hand-off reached it (a restarted node's disk copy), whose new states the merge
        // may drop.
        let holds = record.same_state(handed)
            || record.generation != handed.generation
            || record.acked >= handed.acked;
        if holds {
            if let Some(h) = self.handoffs.get_mut(key) {
                h.taken = Some(epoch);
            }
        }
        holds
    }

    /// `from` merged the copy of `key` handed to it from here into the copy it ran
    /// ([`DirMsg::Conflict`]): its replications of that copy hold this one's state from now
    /// on, and those held back are acknowledged.
    pub(super) fn hand_off_merged(&mut self, key: &str, from: &NodeId, out: &mut Vec<Action>) {
        match self.handoffs.get_mut(key) {
            Some(h) if h.to == *from && h.tag.is_some() => h.merged = true,
            _ => return,
        }
        self.ack_held(key, out);
    }

    /// The copy of `key` that ran here is gone (handed off, removed): the replications of it
    /// that other nodes sent meanwhile, kept unacknowledged ([`Directory::on_replicate`]), are
    /// acknowledged now — but not those of the node a hand-off from here is on its way to,
    /// until it takes it.
    pub(super) fn ack_held(&self, key: &str, out: &mut Vec<Action>) {
        if self.quorum_lost || self.owned.contains_key(key) {
            return;
        }
        let me = &self.config.me;
        let pending = self
            .handoffs
            .get(key)
            .filter(|h| h.tag.is_some() && h.to != *me);
        let held = self.backups.get(key).into_iter().flatten();
        let acked = |c: &&Backup| {
            c.handoff.is_none()
                && !c.orphan
                && !c.awaiting
                && c.from != *me
                && pending.is_none_or(|h| h.to != c.from || h.merged || h.taken == Some(c.epoch))
        };
        for c in held.filter(acked) {
            // The acknowledgement `on_replicate` held back.
            let (key, version, epoch) = (key.to_owned(), c.record.version, c.epoch);
            out.push(send(
                &c.from,
                DirMsg::Ack {
                    key,
                    version,
                    epoch,
                },
            ));
        }
    }

    /// [`DirMsg::Ack`] from `from`: the backup there holds `version` of lineage `epoch` of `key`;
    /// the copies to drop may go, and the start requests waiting for the backup are answered.
    pub(super) fn on_ack(
        &mut self,
        from: &NodeId,
        key: String,
        version: Version,
        epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        let h = Holder::backup(from.clone(), &self.config.me, epoch);
        if !self.wants_copy(&key, from, epoch, &h) {
            // A late replication (held by a partition, or sent before a move): the
            // copy it left at `from` is not needed.
            out.push(h.drop_msg(&key, None));
            return;
        }
        let mut current = false;
        if let Some(o) = self.owned.get_mut(&key) {
            current = o.backup.as_ref() == Some(from) && o.epoch == epoch;
            if current {
                o.record.acknowledged(version);
            }
            if current && o.record.version == version {
                o.acked = true;
                let olds = if o.merges.is_empty() && o.merging.is_none() {
                    std::mem::take(&mut o.old_backups)
                } else {
                    Vec::new()
                };
                if o.phase == Phase::Running {
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Ok(())));
                    }
                }
                self.drop_copies(&key, olds, out);
            }
        }
        if current {
            self.replicated_if_alone(&key, out);
        }
    }

    /// The running child `key`'s backup holds its state up to [`Record::acked`]: that state is
    /// replicated ([`Action::Replicated`]) once no other copy of the child waits to be dropped
    /// (an old backup, a copy met and merged): such a copy, failed over on the far side of a
    /// partition, would run without the states a `Sync` reply would then have acknowledged.
    pub(super) fn replicated_if_alone(&self, key: &str, out: &mut Vec<Action>) {
        if !self.config.replies_wait_for_backup {
            return;
        }
        let Some(o) = self.owned.get(key) else {
            return;
        };
        if o.backup.is_some() && o.old_backups.is_empty() && !self.dropping.contains_key(key) {
            out.push(Action::Replicated {
                key: key.to_owned(),
                version: o.record.acked,
            });
        }
    }

    /// [`DirMsg::Drop`] from `from`: forget the copy of `key` it names (a confirmed hand-off
    /// drops the copies it carried), bury a removed child and chase the copies made from the
    /// dropped one; answered with [`DirMsg::Dropped`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_drop(
        &mut self,
        from: &NodeId,
        key: String,
        origin: NodeId,
        tag: Option<Tag>,
        epoch: Epoch,
        remove: Option<Generation>,
        out: &mut Vec<Action>,
    ) {
        let h = Holder {
            node: self.config.me.clone(),
            origin: origin.clone(),
            tag,
            epoch,
        };
        let dropped = self.remove_copies(&key, |b| h.names(b));
        if remove.is_some() {
            // The children merged into the removed one are removed with it.
            for g in dropped.iter().flat_map(|b| &b.record.absorbed) {
                self.bury(&key, *g);
            }
        }
        let source = Source::Held {
            origin: origin.clone(),
            tag,
            epoch,
        };
        if tag.is_some()
            && self
                .handoffs
                .get(&key)
                .is_some_and(|ho| ho.to == origin && ho.tag == tag)
        {
            // The hand-off to `origin` is confirmed.
            self.confirm_handoff(&key, &origin, out);
        }
        let answer = DirMsg::Dropped {
            key: key.clone(),
            origin,
            tag,
            epoch,
            remove: remove.is_some(),
            next: None,
        };
        if let Some(generation) = remove {
            self.bury(&key, generation);
            self.chase_here(from, &key, &source, answer, out);
        } else {
            out.push(send(from, answer));
        }
    }

    /// [`DirMsg::Dropped`] from `from`: the drop it answers is no longer waited for; for a
    /// removal, the copy it names next is chased.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_dropped(
        &mut self,
        from: &NodeId,
        key: String,
        origin: NodeId,
        tag: Option<Tag>,
        epoch: Epoch,
        remove: bool,
        next: Option<(NodeId, Tag)>,
        out: &mut Vec<Action>,
    ) {
        let h = Holder {
            node: from.clone(),
            origin,
            tag,
            epoch,
        };
        if let Some(list) = self.dropping.get_mut(&key) {
            list.retain(|w| *w != h);
            if list.is_empty() {
                self.dropping.remove(&key);
                // The last other copy is gone: what the backup holds is the only other state.
                self.replicated_if_alone(&key, out);
            }
        }
        if remove {
            self.removal_answered(&key, from, next, out, |r| r.waiting_on.retain(|w| *w != h));
        }
        self.rewait(&key, from);
    }

    /// [`DirMsg::Held`] from `from`: the copies it holds for this node. Those it should hold
    /// and does not are replicated again; those no longer needed are dropped.
    pub(super) fn on_held(
        &mut self,
        from: &NodeId,
        keys: Vec<(String, Epoch)>,
        out: &mut Vec<Action>,
    ) {
        // The records `from` should hold for this node and does not: send them again.
        let held: BTreeMap<&String, Epoch> = keys.iter().map(|(k, e)| (k, *e)).collect();
        // (Not without a quorum: the children here are stopping, not to be backed up.)
        let replicate = !self.quorum_lost;
        for o in self.owned.values_mut().filter(|_| replicate) {
            if o.backup.as_ref() == Some(from) && held.get(&o.record.key) != Some(&o.epoch) {
                o.acked = false;
                out.push(send(from, o.replicate()));
            }
        }
        for (key, epoch) in keys {
            let h = Holder::backup(from.clone(), &self.config.me, epoch);
            if !self.wants_copy(&key, from, epoch, &h) {
                out.push(h.drop_msg(&key, None));
            }
        }
    }
}
