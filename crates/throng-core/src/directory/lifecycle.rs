//! A child's life on the node that owns it: a start request, the spawn, its snapshots, its exits
//! and restarts (by its policy and the supervisor's intensity), a terminate request, and the
//! merge of another copy's state into it. Ends where the child moves (`handoff.rs`), is removed
//! (`removal.rs`) or is stopped for a lost quorum (`view.rs`).

use std::time::Duration;

use super::{
    index, reply, send, stop, unindex, Action, ChildEvent, DirMsg, Directory, Owned, Phase, Record,
    Source, SpawnError, StartError, StartSpec, StopReason, Version,
};
use crate::{ExitClass, RestartDecision, RestartWindow};

impl Directory {
    /// A start request for the child of `spec` arrived here (request id `req`, answered by an
    /// [`Action::Reply`] once the child runs and its backup holds it). This node, its owner,
    /// draws its [`Generation`](super::Generation) and makes its [`Record`] ([`Record::new`]).
    pub fn start(&mut self, req: u64, spec: StartSpec) -> Vec<Action> {
        let mut out = Vec::new();
        self.start_into(req, spec, &mut out);
        self.checked(out)
    }

    pub(super) fn start_into(&mut self, req: u64, spec: StartSpec, out: &mut Vec<Action>) {
        if self.quorum_lost {
            out.push(reply(req, Err(self.quorum_error())));
            return;
        }
        if let Some(r) = self.removing.get_mut(&spec.key) {
            // The previous child of this key is still being removed: start after it.
            r.starts.push((req, spec));
            return;
        }
        let owner = self.owner(&spec.key);
        if owner.as_ref() != Some(&self.config.me) {
            out.push(reply(req, Err(StartError::NotOwner { owner })));
            return;
        }
        if self.owned.contains_key(&spec.key) {
            out.push(reply(req, Err(StartError::AlreadyStarted(spec.key))));
            return;
        }
        let key = spec.key.clone();
        let record = Record::new(spec, self.next_generation());
        self.insert_owned(record, vec![req], ChildEvent::Started { key }, None, out);
    }

    pub(super) fn insert_owned(
        &mut self,
        record: Record,
        waiting: Vec<u64>,
        first: ChildEvent,
        source: Option<Source>,
        out: &mut Vec<Action>,
    ) {
        let key = record.key.clone();
        self.touch(&key);
        let epoch = self.next_epoch();
        // Copies held here of other copies: merged into this one once it runs.
        let others: Vec<Record> = self
            .remove_copies(&key, |_| true)
            .into_iter()
            .filter(|b| b.record.snapshot.is_some() && !b.record.same_state(&record))
            .map(|b| b.record)
            .collect();
        let backup = self.backup_of(&key).filter(|b| *b != self.config.me);
        // A copy handed off from here came back: its former backups are this copy's.
        let mut old_backups = self
            .handoffs
            .remove(&key)
            .map(|h| h.olds)
            .unwrap_or_default();
        old_backups.retain(|h| h.node != self.config.me);
        out.push(Action::Spawn(record.clone()));
        if let Some(b) = &backup {
            out.push(send(
                b,
                DirMsg::Replicate {
                    record: record.clone(),
                    epoch,
                },
            ));
        }
        index(&mut self.by_backup, backup.as_ref(), &key);
        let filed = backup.clone();
        if self.owner(&key).as_ref() != Some(&self.config.me) {
            self.lodged.insert(key.clone());
        }
        let previous = self.owned.insert(
            key.clone(),
            Owned {
                acked: backup.is_none(),
                old_backups,
                record,
                phase: Phase::Starting,
                backup,
                epoch,
                waiting,
                stopping_reqs: Vec::new(),
                window: None,
                first: Some(Box::new(first)),
                merges: others,
                merging: None,
                source: source.map(Box::new),
            },
        );
        if let Some(p) = previous.filter(|p| p.backup != filed) {
            unindex(&mut self.by_backup, p.backup.as_ref(), &key);
        }
        self.settle(&key, out);
    }

    /// Removes the child `key` from the children run here (and from the indexes).
    pub(super) fn take_owned(&mut self, key: &str) -> Option<Owned> {
        let o = self.owned.remove(key)?;
        unindex(&mut self.by_backup, o.backup.as_ref(), key);
        self.lodged.remove(key);
        Some(o)
    }

    /// Without a backup to wait for, the copies to drop are dropped at once, except those held
    /// by nodes out of this node's view: this node may be alone in its view only because it
    /// just started, and such a copy is the child's only other copy until a backup holds one.
    pub(super) fn settle(&mut self, key: &str, out: &mut Vec<Action>) {
        let view = &self.view;
        if let Some(o) = self.owned.get_mut(key) {
            if o.backup.is_none() {
                o.acked = true;
                o.record.acknowledged(o.record.version);
                if self.config.replies_wait_for_backup {
                    out.push(Action::Replicated {
                        key: key.to_owned(),
                        version: o.record.version,
                    });
                }
                if !o.merges.is_empty() || o.merging.is_some() {
                    // The other copies' senders keep them until the merge is replicated.
                    return;
                }
                let (olds, kept) = std::mem::take(&mut o.old_backups)
                    .into_iter()
                    .partition(|h| view.contains(&h.node));
                o.old_backups = kept;
                if o.phase == Phase::Running {
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Ok(())));
                    }
                }
                self.drop_copies(key, olds, out);
            }
        }
    }

    /// The runtime spawned (`Ok`) or failed to spawn (`Err`) the child `key`.
    pub fn spawned(&mut self, key: &str, result: Result<(), SpawnError>) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(o) = self.owned.get_mut(key) else {
            return self.checked(out);
        };
        match result {
            Ok(()) => {
                match o.phase {
                    Phase::Starting => o.phase = Phase::Running,
                    // Asked to stop while starting: the action was deferred until now.
                    Phase::Stopping => {
                        out.push(stop(key, StopReason::Terminate));
                        return self.checked(out);
                    }
                    Phase::Moving => {
                        out.push(stop(key, StopReason::Move));
                        return self.checked(out);
                    }
                    Phase::Abandoning => {
                        out.push(stop(key, StopReason::Quorum));
                        return self.checked(out);
                    }
                    Phase::Merging => {
                        let theirs = *o.merging.clone().expect("merging has a record");
                        out.push(Action::Merge {
                            key: key.to_owned(),
                            theirs,
                        });
                        return self.checked(out);
                    }
                    Phase::Running => {}
                }
                if let Some(e) = o.first.take().map(|e| *e) {
                    out.push(Action::Event(e));
                }
                if o.acked {
                    for req in o.waiting.drain(..) {
                        out.push(reply(req, Ok(())));
                    }
                }
                self.next_merge(key, &mut out);
            }
            Err(_) if o.phase == Phase::Abandoning => {
                // Not a removal either: the copy is kept for when the quorum returns.
                self.abandoned(key, &mut out);
            }
            Err(why) => {
                let never_ran = matches!(o.first.as_deref(), Some(ChildEvent::Started { .. }));
                for req in o.waiting.drain(..) {
                    out.push(reply(req, Err(why.clone().into())));
                }
                self.remove(key, !never_ran, &mut out);
            }
        }
        self.checked(out)
    }

    /// Start the next pending merge of a running child, if any.
    pub(super) fn next_merge(&mut self, key: &str, out: &mut Vec<Action>) {
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        if o.phase != Phase::Running || o.merges.is_empty() {
            return;
        }
        let theirs = o.merges.remove(0);
        o.phase = Phase::Merging;
        o.merging = Some(Box::new(theirs.clone()));
        out.push(Action::Merge {
            key: key.to_owned(),
            theirs,
        });
    }

    /// A new state snapshot of the local child `key` (ignored for unknown keys).
    pub fn snapshot(&mut self, key: &str, snapshot: Vec<u8>) -> Vec<Action> {
        let mut out = Vec::new();
        self.touch(key);
        let me = self.config.me.clone();
        if let Some(o) = self
            .owned
            .get_mut(key)
            .filter(|o| o.record.snapshot.as_ref() != Some(&snapshot))
        {
            o.record.snapshot = Some(snapshot);
            o.write(o.record.version.next(), &me);
            match &o.backup {
                // Stopped for the quorum: the other side may run it already from its backup.
                _ if o.phase == Phase::Abandoning => {}
                Some(b) => {
                    o.acked = false;
                    out.push(send(b, o.replicate()));
                }
                // No other node to back it up.
                None => {
                    o.record.acknowledged(o.record.version);
                    if self.config.replies_wait_for_backup {
                        out.push(Action::Replicated {
                            key: key.to_owned(),
                            version: o.record.version,
                        });
                    }
                }
            }
        }
        self.checked(out)
    }

    /// Request `req` to terminate the child `key` for good (answered when it has stopped and its
    /// backups dropped their copies).
    pub fn terminate(&mut self, req: u64, key: &str) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(r) = self.removing.get_mut(key) {
            r.reqs.push(req);
            return self.checked(out);
        }
        match self.owned.get_mut(key) {
            None => out.push(reply(req, Err(StartError::NoSuchChild(key.to_owned())))),
            Some(o) => {
                o.stopping_reqs.push(req);
                self.stop_for_good(key, &mut out);
            }
        }
        self.checked(out)
    }

    /// Stop the local child `key` for good (it is removed once it exited).
    pub(super) fn stop_for_good(&mut self, key: &str, out: &mut Vec<Action>) {
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        let was = o.phase;
        o.phase = Phase::Stopping;
        if was == Phase::Running {
            out.push(stop(key, StopReason::Terminate));
        }
        if self.moving.remove(key) {
            self.pump_moves(out);
        }
    }

    /// The local child `key` exited with `class` at monotonic time `now`; `final_snapshot` is the
    /// state it exported on the way out, if any.
    pub fn exited(
        &mut self,
        key: &str,
        class: ExitClass,
        final_snapshot: Option<Vec<u8>>,
        now: Duration,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.touch(key);
        let Some(o) = self.owned.get_mut(key) else {
            return self.checked(out);
        };
        // A final state equal to the record's is no new version: a copy that only stopped (a
        // move, a restart) must not look newer than another copy of the child holding a later
        // state (versions order the copies that meet, in a merge or a recovery).
        let final_snapshot = final_snapshot.filter(|s| o.record.snapshot.as_ref() != Some(s));
        let bumped = final_snapshot.is_some();
        if let Some(s) = final_snapshot {
            o.record.snapshot = Some(s);
            o.write(o.record.version.next(), &self.config.me);
        }
        match o.phase {
            Phase::Moving => self.moved(key, &mut out),
            Phase::Stopping => self.remove(key, true, &mut out),
            Phase::Abandoning => self.abandoned(key, &mut out),
            Phase::Merging => {
                // Reported through `exited` instead of `merged`: the merge did not happen. Run
                // this copy again and merge the other one after it (nothing is lost).
                let theirs = *o.merging.take().expect("merging has a record");
                o.merges.insert(0, theirs);
                self.respawn(key, bumped, &mut out);
            }
            Phase::Starting | Phase::Running => {
                let intensity = self.config.intensity;
                let window = o
                    .window
                    .get_or_insert_with(|| Box::new(RestartWindow::new(intensity)));
                match window.on_exit(o.record.policy, class, now) {
                    RestartDecision::Restart => {
                        o.first = Some(Box::new(ChildEvent::Restarted {
                            key: key.to_owned(),
                        }));
                        self.respawn(key, bumped, &mut out);
                    }
                    RestartDecision::Remove => {
                        if o.phase == Phase::Running && class != ExitClass::Abnormal {
                            // It ran, and ended without failing (a transient or temporary child
                            // done with its work): its start succeeded, even if the backup had
                            // not acknowledged yet. A caller told otherwise would run it again.
                            for req in o.waiting.drain(..) {
                                out.push(reply(req, Ok(())));
                            }
                        }
                        self.remove(key, true, &mut out)
                    }
                    RestartDecision::GiveUp { restarts } => {
                        out.push(Action::Event(ChildEvent::GaveUp {
                            key: key.to_owned(),
                            restarts,
                        }));
                        self.remove(key, true, &mut out);
                    }
                }
            }
        }
        self.checked(out)
    }

    /// The runtime completed an [`Action::Merge`]: the local child `key` stopped and `merged` is
    /// `resolve_conflict(ours, theirs)` (`None`: keep the record's latest snapshot).
    pub fn merged(&mut self, key: &str, merged: Option<Vec<u8>>) -> Vec<Action> {
        let mut out = Vec::new();
        self.touch(key);
        let Some(o) = self.owned.get_mut(key) else {
            return self.checked(out);
        };
        let theirs = o.merging.take();
        let theirs_version = theirs.as_ref().map_or(Version::INITIAL, |r| r.version);
        if let Some(s) = merged {
            o.record.snapshot = Some(s);
        }
        o.write(o.record.version.max(theirs_version).next(), &self.config.me);
        // The merged state holds what was acknowledged of the other copy's history too (it is
        // later than that copy, should a stale copy of it come back).
        if let Some(r) = &theirs {
            o.record.acknowledged(r.acked);
        }
        match o.phase {
            Phase::Merging => {
                if self.owner(key).is_some_and(|n| n != self.config.me) {
                    // The view moved on while merging: hand the merged child off.
                    self.moved(key, &mut out);
                } else {
                    self.respawn(key, true, &mut out);
                }
            }
            Phase::Stopping => self.remove(key, true, &mut out),
            Phase::Moving => self.moved(key, &mut out),
            Phase::Abandoning => self.abandoned(key, &mut out),
            Phase::Starting | Phase::Running => {}
        }
        self.settle(key, &mut out);
        self.checked(out)
    }

    /// Spawn the child of an owned entry again (restart, or after a merge); replicate the record
    /// if it changed.
    fn respawn(&mut self, key: &str, changed: bool, out: &mut Vec<Action>) {
        let Some(o) = self.owned.get_mut(key) else {
            return;
        };
        o.phase = Phase::Starting;
        out.push(Action::Spawn(o.record.clone()));
        if changed {
            if let Some(b) = &o.backup {
                o.acked = false;
                out.push(send(b, o.replicate()));
            }
        }
    }
}
