//! The dispatcher of the messages from peer directories ([`DirMsg`]) to the protocol that handles
//! each, and what a node without a quorum does with an adoption (it keeps it as an orphan copy).

use super::handoff::newer_of;
use super::{
    add_holder, orphan_copy, Action, ChildEvent, DirMsg, Directory, Epoch, Holder, Record, Tag,
    MAX_TOMBSTONES,
};
use crate::NodeId;

impl Directory {
    /// A message from the directory on `from`.
    pub fn receive(&mut self, from: &NodeId, mut msg: DirMsg) -> Vec<Action> {
        let mut out = Vec::new();
        if let DirMsg::Adopt {
            record,
            moved: true,
            ..
        } = &mut msg
        {
            // A graceful move: the sender's running copy, all of whose state is now held here
            // too (as a backup holds what it acknowledges).
            record.acknowledged(record.version);
        }
        if self.quorum_lost && self.refused_without_quorum(from, &msg, &mut out) {
            return self.checked(out);
        }
        // The connection to a node is closed when it leaves the view (messages in flight are
        // lost), so a message from a node that left is from a new incarnation of it not yet in
        // the view (or from a node falsely suspected): it is alive, and what it replicates here
        // is not an orphan. If it dies before it joins the view, `node_down` says so.
        self.departed.remove(from);
        match msg {
            DirMsg::Replicate { record, epoch } => self.on_replicate(from, record, epoch, &mut out),
            DirMsg::Ack {
                key,
                version,
                epoch,
            } => self.on_ack(from, key, version, epoch, &mut out),
            DirMsg::Drop {
                key,
                origin,
                tag,
                epoch,
                remove,
            } => self.on_drop(from, key, origin, tag, epoch, remove, &mut out),
            DirMsg::Dropped {
                key,
                origin,
                tag,
                epoch,
                remove,
                next,
            } => self.on_dropped(from, key, origin, tag, epoch, remove, next, &mut out),
            DirMsg::Chase {
                key,
                from: f,
                tag,
                generation,
            } => self.on_chase(from, key, f, tag, generation, &mut out),
            DirMsg::Chased {
                key,
                from: f,
                tag,
                next,
            } => self.on_chased(from, key, f, tag, next, &mut out),
            DirMsg::Held { keys } => self.on_held(from, keys, &mut out),
            DirMsg::Removed { key, generation } => {
                self.bury_and_stop(&key, generation, &mut out);
            }
            DirMsg::Buried { removed } => {
                for (key, generation) in removed.into_iter().take(MAX_TOMBSTONES) {
                    self.bury_and_stop(&key, generation, &mut out);
                }
            }
            DirMsg::Recovered { ask } => self.on_recovered(from, ask, &mut out),
            DirMsg::Conflict { key } => {
                self.hand_off_merged(&key, from, &mut out);
                out.push(Action::Event(ChildEvent::Conflict {
                    key,
                    other: from.clone(),
                    here_lost: true,
                }));
            }
            DirMsg::Adopt {
                record,
                hops,
                tag,
                holders,
                moved,
            } => self.adopt(from, record, hops, tag, holders, moved, &mut out),
        }
        self.checked(out)
    }

    /// Without a quorum nothing runs here: an adoption is kept as an orphan copy, run or handed
    /// to its owner when the quorum returns (see `keep_adoption`). True if `msg` was handled so.
    /// Every other message is handled as usual: a node without a quorum still holds copies
    /// (backups are kept, and replications acknowledged, as they run nothing: the sender sees a
    /// quorum and this node is the backup in its view), the copies kept through the loss must
    /// still be dropped when their owner says so, and a removal still wins.
    fn refused_without_quorum(
        &mut self,
        from: &NodeId,
        msg: &DirMsg,
        out: &mut Vec<Action>,
    ) -> bool {
        match msg {
            DirMsg::Adopt {
                record,
                tag,
                holders,
                ..
            } => {
                self.keep_adoption(from, record.clone(), *tag, holders.clone(), out);
                true
            }
            _ => false,
        }
    }

    /// An adoption that arrived while this node has no quorum. Not sent back to its sender: the
    /// record in flight back would be the child's only copy but the sender's (and its latest
    /// state, if the sender ran it without a backup), and the sender may crash meanwhile; and
    /// the sender would take it for its own hand-off refused and hand its record on again,
    /// while a copy of it may be kept here already (the adoption was sent again after a
    /// reconnection). Kept instead as an orphan copy held for this node, like a child stopped
    /// for the quorum: run or handed to its owner when the quorum returns. The sender is not
    /// told it was taken (it keeps its copy, as the child's other copy meanwhile): it is named
    /// among the copies that this one drops once it is safe, and if the sender fails its copy
    /// over first, the two copies meet and are merged.
    ///
    /// An adoption that is not kept is answered all the same, as it is with a quorum, or the
    /// sender would hold its copy for ever, waiting for a confirmation: a copy of a removed
    /// child goes (with the copies it names), and one taken here before whose copy moved on
    /// since is confirmed.
    fn keep_adoption(
        &mut self,
        from: &NodeId,
        record: Record,
        tag: Tag,
        holders: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.me.clone();
        let key = record.key.clone();
        if !self.remember_adoption(from, tag) {
            self.adopted_again(from, &key, tag, out);
            return;
        }
        let sender = Holder::hand_off_sender(from, &me, tag);
        let mut olds = vec![sender];
        let removed = self.removing.contains_key(&key) || self.buried(&key, record.generation);
        let mut record = record;
        for h in holders {
            if h.node == me {
                // A copy held here: it goes, and the copy kept is the newest of it and the
                // adopted record (as with a quorum; a copy of another history is kept beside
                // it, to be merged when the quorum returns). A hand-off copy's hand-off from
                // here is over: the copies it was to drop are the kept copy's.
                for b in self.remove_copies(&key, |b| h.names(b)) {
                    if let Some(other) = newer_of(&mut record, b.record) {
                        self.keep_to_merge(&key, other);
                    }
                    if let Some(ho) = self.handoffs.get_mut(&key) {
                        if b.handoff.is_some() && b.handoff == ho.tag && b.from == ho.to {
                            ho.to = me.clone();
                            ho.tag = None;
                            ho.moved = false;
                            ho.source = None;
                        }
                    }
                }
                continue;
            }
            add_holder(&mut olds, h);
        }
        if removed {
            // A copy of a removed child: it goes, with the copies it names.
            self.discard(&key, record.generation, olds, out);
            return;
        }
        self.hold_olds(&key, olds);
        let tag = self.next_hand_off_tag();
        let copy = orphan_copy(&me, record, Some(tag), Epoch::default());
        self.put_copy(&key, copy);
    }

    /// Without a quorum, the hand-off `tag` of `key` from `from`, taken here before, arrived
    /// again (sent again after a reconnection). If the copy made from it is still held here
    /// (stopped for the quorum, or kept without one) and names the sender among the copies it
    /// drops once it is safe, nothing to do. Otherwise that copy moved on and was confirmed, or
    /// was removed: the sender may forget its copy.
    fn adopted_again(&mut self, from: &NodeId, key: &str, tag: Tag, out: &mut Vec<Action>) {
        let sender = Holder::hand_off_sender(from, &self.config.me, tag);
        // The copies to drop with the copy kept here, held for this node itself.
        let me = &self.config.me;
        let kept = self
            .handoffs
            .get(key)
            .is_some_and(|h| h.to == *me && h.olds.contains(&sender))
            && self
                .backups
                .get(key)
                .is_some_and(|list| list.iter().any(|b| b.from == *me));
        if !kept {
            out.push(sender.drop_msg(key, None));
        }
    }
}
