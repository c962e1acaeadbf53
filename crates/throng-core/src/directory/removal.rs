//! Removing a child for good: the drops that remove its copies and wait for their answers, the
//! chase of copies made from them and handed on ([`DirMsg::Chase`]), and the tombstones that make
//! a late copy of a removed child be refused rather than run again.

use super::{
    add_holder, index, reply, send, unindex, Action, Backup, ChildEvent, DirMsg, Directory, Epoch,
    Generation, Holder, StartError, StartSpec, Tag, MAX_CHASES,
};
use crate::NodeId;

/// Where a copy that this node runs, or handed on, came from: what a removal that names that
/// copy chases ([`DirMsg::Drop`] with `remove`, [`DirMsg::Chase`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A copy held here (a backup, or a hand-off copy), as a holder names it.
    Held {
        /// As in [`Holder::origin`].
        origin: NodeId,
        /// As in [`Holder::tag`].
        tag: Option<Tag>,
        /// As in [`Holder::epoch`].
        epoch: Epoch,
    },
    /// The copy `from` handed to this node with [`DirMsg::Adopt`] `tag`.
    Adopted {
        /// The sender of the hand-off.
        from: NodeId,
        /// Its tag.
        tag: Tag,
    },
}

impl Source {
    /// The source naming the copy `b` held here.
    pub(super) fn held(b: &Backup) -> Self {
        Source::Held {
            origin: b.from.clone(),
            tag: b.handoff,
            epoch: b.epoch,
        }
    }

    /// Whether a removal naming `named` (as a drop names a copy) concerns this source.
    pub(super) fn named_by(&self, named: &Source) -> bool {
        match (self, named) {
            (
                Source::Held { origin, tag, epoch },
                Source::Held {
                    origin: o,
                    tag: t,
                    epoch: e,
                },
            ) => origin == o && tag == t && (tag.is_some() || epoch <= e),
            (a, b) => a == b,
        }
    }
}

/// A copy a removal chases: the one `from` handed to `node` with `tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chase {
    /// The node the copy was handed to, where it is chased.
    pub(super) node: NodeId,
    /// The node that handed it on.
    pub(super) from: NodeId,
    /// The tag of that hand-off.
    pub(super) tag: Tag,
    /// The removed child's generation.
    pub(super) generation: Generation,
}

impl Chase {
    /// The [`DirMsg::Chase`] of this copy of `key`.
    pub(super) fn msg(&self, key: &str) -> Action {
        send(
            &self.node,
            DirMsg::Chase {
                key: key.to_owned(),
                from: self.from.clone(),
                tag: self.tag,
                generation: self.generation,
            },
        )
    }
}

/// A child removed here whose former backups have not all confirmed they dropped their copies;
/// its terminate requests and `Stopped` event wait for them.
#[derive(Debug, Clone)]
pub(super) struct Removal {
    /// The drops not yet confirmed.
    pub(super) waiting_on: Vec<Holder>,
    /// Copies made from the removed child's copies and handed on, being chased.
    pub(super) chasing: Vec<Chase>,
    /// How many chases were started (bounded by [`MAX_CHASES`]).
    pub(super) chases: u8,
    /// The removed child's generation.
    pub(super) generation: Generation,
    /// The generations merged into it ([`Record::absorbed`](super::Record::absorbed)).
    pub(super) absorbed: Vec<Generation>,
    /// Terminate requests answered when the removal is complete.
    pub(super) reqs: Vec<u64>,
    /// Whether a `Stopped` event is due at the end.
    pub(super) event: bool,
    /// Start requests for the same key, handled once the removal is complete.
    pub(super) starts: Vec<(u64, StartSpec)>,
}

impl Directory {
    /// Remove the child `key` for good: its backups are told to drop their copies, and the
    /// terminate requests and the `Stopped` event (if `event`) wait for their confirmations.
    pub(super) fn remove(&mut self, key: &str, event: bool, out: &mut Vec<Action>) {
        self.moving.remove(key);
        self.touch(key);
        let Some(o) = self.take_owned(key) else {
            return;
        };
        self.ack_held(key, out);
        let current = o.backup_holder(&self.config.me);
        for req in o.waiting {
            out.push(reply(req, Err(StartError::Failed("child exited".into()))));
        }
        let generation = o.record.generation;
        self.bury(key, generation);
        // The children merged into it are removed with it.
        for g in &o.record.absorbed {
            self.bury(key, *g);
        }
        // Drops sent earlier and not confirmed yet are sent again as removals: their holders may
        // have made a copy of their own from the copy meanwhile.
        let earlier = self.dropping.get(key).into_iter().flatten().cloned();
        let copies = current
            .into_iter()
            .chain(o.old_backups)
            .chain(earlier)
            .collect();
        let removal = self.removing.entry(key.to_owned()).or_insert(Removal {
            waiting_on: Vec::new(),
            chasing: Vec::new(),
            chases: 0,
            generation,
            absorbed: o.record.absorbed.to_vec(),
            reqs: Vec::new(),
            event: false,
            starts: Vec::new(),
        });
        removal.reqs.extend(o.stopping_reqs);
        removal.event |= event;
        self.remove_with(key, copies, out);
    }

    /// A copy of `key` and `generation` arrived (an adoption) or was orphaned here while the
    /// key is being removed here, or after a removal of that generation: it is not run, and the
    /// other copies it names are dropped (the removal in progress waits for them).
    pub(super) fn discard(
        &mut self,
        key: &str,
        generation: Generation,
        copies: Vec<Holder>,
        out: &mut Vec<Action>,
    ) {
        if self.removing.contains_key(key) {
            self.remove_with(key, copies, out);
            return;
        }
        let me = self.config.me.clone();
        for h in copies.into_iter().filter(|h| h.node != me) {
            out.push(h.drop_msg(key, Some(generation)));
        }
    }

    /// The removal of `key` in progress here also removes these copies.
    fn remove_with(&mut self, key: &str, copies: Vec<Holder>, out: &mut Vec<Action>) {
        let me = self.config.me.clone();
        let view = &self.view;
        let Some(r) = self.removing.get_mut(key) else {
            return;
        };
        let mut sent: Vec<Holder> = Vec::new();
        for h in copies.into_iter().filter(|h| h.node != me) {
            if sent.contains(&h) {
                continue;
            }
            out.push(h.drop_msg(key, Some(r.generation)));
            if view.contains(&h.node) {
                index(&mut self.waits, Some(&h.node), key);
                add_holder(&mut r.waiting_on, h.clone());
            }
            sent.push(h);
        }
        self.finish_removal(key, out);
    }

    /// Completes the removal of `key` if no backup is still waited for.
    pub(super) fn finish_removal(&mut self, key: &str, out: &mut Vec<Action>) {
        let done = self
            .removing
            .get(key)
            .is_some_and(|r| r.waiting_on.is_empty() && r.chasing.is_empty());
        if !done {
            return;
        }
        let r = self.removing.remove(key).expect("present");
        // The tombstone is kept where the record would be: on the key's backup node in the
        // view the removal ends in (whether or not it held a copy; the backup of the start may
        // have died meanwhile), so a copy that a node down now still keeps on its disk is
        // refused when it comes back, even if this node is down by then.
        if let Some(b) = self.backup_of(key).filter(|b| *b != self.config.me) {
            let removed = std::iter::once(r.generation)
                .chain(r.absorbed.iter().copied())
                .map(|g| (key.to_owned(), g))
                .collect();
            out.push(send(&b, DirMsg::Buried { removed }));
        }
        for (to, msg) in self.notify.remove(key).unwrap_or_default() {
            out.push(send(&to, msg));
        }
        for req in r.reqs {
            out.push(reply(req, Ok(())));
        }
        if r.event {
            out.push(Action::Event(ChildEvent::Stopped {
                key: key.to_owned(),
            }));
        }
        for (req, spec) in r.starts {
            self.start_into(req, spec, out);
        }
    }

    /// A removal on `remover` names `source`, a copy of `key` this node held or was handed: a
    /// copy this node made from it is removed too. A child running here made from it is stopped
    /// for good and `answer` is sent once its removal is complete; a copy handed on from here is
    /// named in `answer` (the remover chases it there); otherwise `answer` is sent at once.
    pub(super) fn chase_here(
        &mut self,
        remover: &NodeId,
        key: &str,
        source: &Source,
        mut answer: DirMsg,
        out: &mut Vec<Action>,
    ) {
        let runs_it = self
            .owned
            .get(key)
            .and_then(|o| o.source.as_deref())
            .is_some_and(|s| s.named_by(source));
        if runs_it && *remover != self.config.me {
            self.notify
                .entry(key.to_owned())
                .or_default()
                .push((remover.clone(), answer));
            self.stop_for_good(key, out);
            return;
        }
        let handed = self.handoffs.get(key).filter(|h| {
            h.to != self.config.me && h.source.as_ref().is_some_and(|s| s.named_by(source))
        });
        if let Some(h) = handed {
            // (A hand-off to another node always has a tag: see `Broken::HandOffTag`.)
            let hop = h.tag.map(|tag| (h.to.clone(), tag));
            match &mut answer {
                DirMsg::Dropped { next, .. } | DirMsg::Chased { next, .. } => *next = hop,
                _ => {}
            }
        }
        out.push(send(remover, answer));
    }

    /// Remembers that the child of `key` and `generation` was removed (the newest
    /// [`MAX_TOMBSTONES`](super::MAX_TOMBSTONES)).
    pub(super) fn bury(&mut self, key: &str, generation: Generation) {
        self.touch(key);
        if let (_, Some((forgotten, _))) = self
            .tombstones
            .insert_evicting((key.to_owned(), generation))
        {
            self.touch(&forgotten);
        }
    }

    /// The child of `key` and `generation` was removed elsewhere: remember it, and stop its copy
    /// here if one runs (it survived the removal on the other side of a partition).
    pub(super) fn bury_and_stop(
        &mut self,
        key: &str,
        generation: Generation,
        out: &mut Vec<Action>,
    ) {
        self.bury(key, generation);
        if self
            .owned
            .get(key)
            .is_some_and(|o| o.record.generation == generation)
        {
            self.stop_for_good(key, out);
        }
    }

    /// Whether the child of `key` and `generation` is known to be removed.
    pub(super) fn buried(&self, key: &str, generation: Generation) -> bool {
        self.tombstones.contains(&(key.to_owned(), generation))
    }

    /// `from` answered a drop or a chase of the removal of `key` (`answered` forgets what it
    /// waited for): chase the copy it names next, if any, and complete the removal if it waits
    /// for nothing more.
    pub(super) fn removal_answered(
        &mut self,
        key: &str,
        from: &NodeId,
        next: Option<(NodeId, Tag)>,
        out: &mut Vec<Action>,
        answered: impl FnOnce(&mut Removal),
    ) {
        if !self.removing.contains_key(key) {
            return;
        }
        if let Some((node, tag)) = next {
            self.chase(key, node, from, tag, out);
        }
        if let Some(r) = self.removing.get_mut(key) {
            answered(r);
        }
        self.finish_removal(key, out);
    }

    /// The removal of `key` chases the copy `from` handed to `node` with `tag`.
    fn chase(&mut self, key: &str, node: NodeId, from: &NodeId, tag: Tag, out: &mut Vec<Action>) {
        if node == self.config.me || !self.may_answer(&node) {
            return;
        }
        let Some(r) = self.removing.get_mut(key) else {
            return;
        };
        let c = Chase {
            node,
            from: from.clone(),
            tag,
            generation: r.generation,
        };
        if r.chases >= MAX_CHASES || r.chasing.contains(&c) {
            return;
        }
        r.chases += 1;
        out.push(c.msg(key));
        index(&mut self.waits, Some(&c.node), key);
        r.chasing.push(c);
    }

    /// [`DirMsg::Chase`] from the remover `from`: the copy `f` handed here with `tag` is removed;
    /// answered with [`DirMsg::Chased`].
    pub(super) fn on_chase(
        &mut self,
        from: &NodeId,
        key: String,
        f: NodeId,
        tag: Tag,
        generation: Generation,
        out: &mut Vec<Action>,
    ) {
        self.bury(&key, generation);
        let source = Source::Adopted {
            from: f.clone(),
            tag,
        };
        let answer = DirMsg::Chased {
            key: key.clone(),
            from: f,
            tag,
            next: None,
        };
        self.chase_here(from, &key, &source, answer, out);
    }

    /// [`DirMsg::Chased`] from `from`: the chase of the copy `f` handed there with `tag` is
    /// answered; the copy it names next is chased.
    pub(super) fn on_chased(
        &mut self,
        from: &NodeId,
        key: String,
        f: NodeId,
        tag: Tag,
        next: Option<(NodeId, Tag)>,
        out: &mut Vec<Action>,
    ) {
        self.removal_answered(&key, from, next, out, |r| {
            r.chasing
                .retain(|w| !(w.node == *from && w.from == f && w.tag == tag))
        });
        self.rewait(&key, from);
    }

    /// Whether a drop or the removal of `key` waits on `node`.
    pub(super) fn waits_on(&self, key: &str, node: &NodeId) -> bool {
        self.dropping
            .get(key)
            .is_some_and(|list| list.iter().any(|h| h.node == *node))
            || self.removing.get(key).is_some_and(|r| {
                r.waiting_on.iter().any(|h| h.node == *node)
                    || r.chasing.iter().any(|c| c.node == *node)
            })
    }

    /// After waits of `key` on `node` were answered: `key` leaves `node`'s list of waits if
    /// nothing of it waits on `node` any more.
    pub(super) fn rewait(&mut self, key: &str, node: &NodeId) {
        if !self.waits_on(key, node) {
            unindex(&mut self.waits, Some(node), key);
        }
    }
}
