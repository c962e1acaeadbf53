//! What a node keeps on disk for a supervisor, and how it comes back from it.
//!
//! With [`DirConfig::durable`](super::DirConfig::durable) the directory tracks the keys whose
//! *durable entry* changed: the records it holds for the key (the child it runs, the copies it
//! keeps for other nodes, hand-off copies not yet confirmed) and the generations of the key it
//! buried. The runtime writes [`Directory::durable`] of each key [`Directory::take_touched`]
//! names (coalesced, in group commits), so the disk mirrors the directory's holdings: a copy
//! the directory drops is deleted from disk too, and a removed child's tombstone is kept.
//!
//! After a restart, [`Directory::recover`] takes the entries back: every record becomes an orphan
//! copy held for this node — run here if this node owns the key, handed to its owner otherwise,
//! merged with another copy when two meet (the later state wins the default rule: see
//! [`Directory::is_newer_copy`]) — and every buried generation is buried again,
//! so a removed child never comes back. The one record of a key another node in view owns waits
//! for that owner instead ([`Backup::awaiting`]): after a full-cluster restart the owner
//! replicates the same record, which makes the copy its backup with no hand-off; any other record,
//! or the owner's [`DirMsg::Recovered`], makes it an orphan like the others.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{
    orphan_copy, send, Action, Backup, DirMsg, Directory, Epoch, Generation, Record,
    MAX_BURIED_BYTES,
};
use crate::NodeId;

/// What a node keeps on disk for one key of a supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableEntry {
    /// The records held for the key: the child this node runs first (if it runs one), then the
    /// copies waiting to be merged into it, then the copies it keeps (backups, hand-off copies,
    /// orphans).
    pub records: Vec<Record>,
    /// Generations of the key this node buried (removed children).
    pub buried: Vec<Generation>,
}

impl Directory {
    /// Notes that the durable entry of `key` may have changed.
    pub(super) fn touch(&mut self, key: &str) {
        if self.config.durable && !self.touched.contains(key) {
            self.touched.insert(key.to_owned());
        }
    }

    /// The keys whose durable entry may have changed since the last call (always empty without
    /// [`DirConfig::durable`](super::DirConfig::durable)). The runtime writes
    /// [`Directory::durable`] of each (an absent entry deletes the key's).
    pub fn take_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// How many keys are touched and not taken yet.
    pub fn touched_len(&self) -> usize {
        self.touched.len()
    }

    /// The durable entry of `key` now; `None` when this node holds nothing about it. Until
    /// [`Directory::recover`], what the previous run kept of `key` ([`Directory::preload`]) is
    /// part of it.
    pub fn durable(&self, key: &str) -> Option<DurableEntry> {
        let mut records: Vec<Record> = Vec::new();
        if let Some(o) = self.owned.get(key) {
            records.push(o.record.clone());
            // Copies waiting to be merged into it are its state too until merged (one may be
            // newer than the record that runs).
            for r in o.merging.as_deref().into_iter().chain(&o.merges) {
                if !records.iter().any(|k| k.same_state(r)) {
                    records.push(r.clone());
                }
            }
        }
        let preloaded = self.preloaded.get(key);
        let held = self
            .backups
            .get(key)
            .into_iter()
            .flatten()
            .map(|b| &b.record);
        for r in held.chain(preloaded.into_iter().flat_map(|e| &e.records)) {
            if !records.iter().any(|k| k.same_state(r)) {
                records.push(r.clone());
            }
        }
        let mut buried: Vec<Generation> = self
            .tombstones
            .range_from(&(key.to_owned(), Generation::MIN))
            .take_while(|(k, _)| k == key)
            .map(|(_, g)| *g)
            .collect();
        for g in preloaded.into_iter().flat_map(|e| &e.buried) {
            if !buried.contains(g) {
                buried.push(*g);
            }
        }
        if records.is_empty() && buried.is_empty() {
            None
        } else {
            Some(DurableEntry { records, buried })
        }
    }

    /// Keeps the entries a previous run of this node kept, read from its store at start (before
    /// any other input): they are part of every durable entry written ([`Directory::durable`])
    /// until [`Directory::recover`] takes them back, so a write made before the view settled
    /// never erases them.
    pub fn preload(&mut self, entries: impl IntoIterator<Item = (String, DurableEntry)>) {
        for (key, entry) in entries {
            let e = self.preloaded.entry(key).or_default();
            e.records.extend(entry.records);
            e.buried.extend(entry.buried);
        }
    }

    /// How many keys are preloaded and not taken back yet.
    pub fn preloaded_len(&self) -> usize {
        self.preloaded.len()
    }

    /// Takes back the entries a previous run of this node kept (`entries`, and those given to
    /// [`Directory::preload`]) once the view settled. Each buried generation is buried again — a copy of it running here stops,
    /// and the peers in view are told ([`DirMsg::Buried`]) — so a removed child never comes
    /// back. Every distinct record of a child that is not buried becomes an orphan copy held
    /// for this node, failed over as the view allows: run here if this node owns the key,
    /// handed to its owner otherwise, merged when two copies meet (without a quorum, when it
    /// returns). Every key taken back is touched: the disk then holds the union of what was
    /// recovered and what the directory took meanwhile.
    pub fn recover(
        &mut self,
        entries: impl IntoIterator<Item = (String, DurableEntry)>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let me = self.config.me.clone();
        let mut recovered = 0usize;
        let mut buried: Vec<(String, Generation)> = Vec::new();
        let preloaded = std::mem::take(&mut self.preloaded);
        for (key, entry) in preloaded.into_iter().chain(entries) {
            self.touch(&key);
            for g in &entry.buried {
                if !self.buried(&key, *g) {
                    buried.push((key.clone(), *g));
                }
                self.bury_and_stop(&key, *g, &mut out);
            }
            let mut records: Vec<Record> = Vec::new();
            for r in entry.records {
                if r.key != key
                    || self.buried(&key, r.generation)
                    || records.iter().any(|k| k.same_state(&r))
                {
                    continue;
                }
                records.push(r);
            }
            // The latest first ([`Record::is_later_than`]): the copy the others meet (they
            // are merged into it).
            records.sort_by_key(|r| std::cmp::Reverse((r.acked, r.version)));
            if let [r] = records.as_slice() {
                if let Some(owner) = self.awaited_owner(&key) {
                    recovered += 1;
                    // (Orphan or not: a backup from the owner is held once, and a copy of it
                    // flagged orphan — the owner left the view since — is that one.)
                    let held_from_owner = self.backups.get(&key).and_then(|list| {
                        list.iter().find(|b| b.from == owner && b.handoff.is_none())
                    });
                    match held_from_owner {
                        // The owner replicated it here already (its messages came first).
                        Some(b) if b.record.same_state(r) => continue,
                        // Another state of it: an orphan, merged into the owner's.
                        Some(_) => {}
                        None => {
                            let b = Backup {
                                from: owner,
                                record: records.pop().expect("one record"),
                                handoff: None,
                                epoch: Epoch::default(),
                                orphan: false,
                                awaiting: true,
                            };
                            self.file_copy(&key, &b);
                            self.backups.entry(key.clone()).or_default().push(b);
                            continue;
                        }
                    }
                }
            }
            // A copy held for this node itself may be here already (a child this run started
            // and stopped for a lost quorum before it recovered): the recovered ones are kept
            // beside it, each under its own tag (one replacing another would lose a state).
            let beside = self
                .backups
                .get(&key)
                .is_some_and(|l| l.iter().any(|b| b.from == me && b.handoff.is_none()));
            for (i, r) in records.into_iter().enumerate() {
                let tag = (i > 0 || beside).then(|| self.next_hand_off_tag());
                let b = orphan_copy(&me, r, tag, Epoch::default());
                self.file_copy(&key, &b);
                self.backups.entry(key.clone()).or_default().push(b);
                recovered += 1;
            }
        }
        if !buried.is_empty() {
            // The newest removals first, at most `MAX_BURIED_BYTES` of keys.
            let mut bytes = 0;
            let removed: Vec<(String, Generation)> = buried
                .into_iter()
                .rev()
                .take_while(|(k, _)| {
                    bytes += k.len() + 8;
                    bytes <= MAX_BURIED_BYTES
                })
                .collect();
            let peers: Vec<NodeId> = self.view.iter().filter(|n| **n != me).cloned().collect();
            for peer in peers {
                out.push(send(
                    &peer,
                    DirMsg::Buried {
                        removed: removed.clone(),
                    },
                ));
            }
        }
        if recovered > 0 && !self.quorum_lost {
            self.rebalance(&mut out);
        }
        // Every replication of a child recovered here was sent above: the peers stop waiting.
        self.recovered = true;
        let peers: Vec<NodeId> = self.view.iter().filter(|n| **n != me).cloned().collect();
        for peer in peers {
            out.push(send(&peer, DirMsg::Recovered { ask: true }));
        }
        self.checked(out)
    }

    /// The node a copy of `key` recovered here is kept for, awaiting its replication
    /// ([`Backup::awaiting`]): the key's owner, if it is another node in view (it replicates
    /// the child here if this node is its backup, and says when it recovered: at once if it did
    /// already, as it is asked to). `None` when the copy is to be failed over at once.
    fn awaited_owner(&self, key: &str) -> Option<NodeId> {
        if self.quorum_lost || self.me_leaving {
            return None;
        }
        self.owner(key)
            .filter(|o| *o != self.config.me && self.view.contains(o))
    }

    /// [`DirMsg::Recovered`] from `from`: it sent every replication of the children it recovered;
    /// the copies recovered here for it and not replicated are orphans from now on. Answered if
    /// `ask`ed and this node recovered (otherwise it tells `from` when it does).
    pub(super) fn on_recovered(&mut self, from: &NodeId, ask: bool, out: &mut Vec<Action>) {
        if ask && self.recovered {
            out.push(send(from, DirMsg::Recovered { ask: false }));
        }
        let held = self.by_origin.get(from).cloned().unwrap_or_default();
        self.release_awaiting(Some(&held), |b| b.from == *from, out);
    }

    /// The copies recovered here and awaiting their owner that `pred` selects become orphan
    /// copies held for this node (as recovered copies are without an owner to await), failed
    /// over unless the quorum is lost: handed to the owner and merged into its copy. Looks at
    /// the copies of `within` only, if given (every key's otherwise).
    pub(super) fn release_awaiting(
        &mut self,
        within: Option<&BTreeSet<String>>,
        pred: impl Fn(&Backup) -> bool,
        out: &mut Vec<Action>,
    ) {
        let mut examined = 0;
        let lists: Box<dyn Iterator<Item = (&String, &Vec<Backup>)>> = match within {
            Some(keys) => Box::new(keys.iter().filter_map(|k| self.backups.get_key_value(k))),
            None => Box::new(self.backups.iter()),
        };
        let keys: BTreeSet<String> = lists
            .inspect(|(_, list)| examined += list.len())
            .filter(|(_, list)| list.iter().any(|b| b.awaiting && pred(b)))
            .map(|(k, _)| k.clone())
            .collect();
        self.examined(examined);
        if keys.is_empty() {
            return;
        }
        let me = self.config.me.clone();
        for key in &keys {
            for b in self.remove_copies(key, |b| b.awaiting && pred(b)) {
                let tag = Some(self.next_hand_off_tag());
                self.put_copy(key, orphan_copy(&me, b.record, tag, Epoch::default()));
            }
        }
        if !self.quorum_lost {
            self.fail_over_orphans_of(&keys, out);
            self.pump_moves(out);
        }
    }

    /// Whether the directory keeps durable entries ([`DirConfig::durable`](super::DirConfig::durable)).
    pub fn is_durable(&self) -> bool {
        self.config.durable
    }

    /// Whether `theirs`, a copy of the child `key` that met the one running here, is a later
    /// state of the same child ([`Record::is_later_than`]: a history that continued from the
    /// running copy's writer, or the same generation at a higher version). In a merge its state is
    /// then `ours` (the newer one), the running copy's `theirs`: a copy failed over or recovered
    /// from an older version does not overwrite a newer one with the default conflict rule.
    pub fn is_newer_copy(&self, key: &str, theirs: &Record) -> bool {
        self.owned
            .get(key)
            .is_some_and(|o| theirs.is_later_than(&o.record))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::directory::{DirConfig, DirMsg, StartSpec, Version};
    use crate::{ExitClass, NodeId, RestartPolicy};

    fn id(n: &str) -> NodeId {
        NodeId::new(n).expect("valid")
    }

    fn durable_dir(me: &str, nodes: &[&str]) -> Directory {
        let mut config = DirConfig::new(id(me));
        config.durable = true;
        let mut d = Directory::new(config);
        let ids: Vec<NodeId> = nodes.iter().map(|n| id(n)).collect();
        d.set_view(ids.iter());
        d
    }

    fn spec(key: &str) -> StartSpec {
        StartSpec {
            key: key.to_owned(),
            actor_type: "t".into(),
            args: Vec::new(),
            policy: RestartPolicy::Permanent,
        }
    }

    fn record(key: &str, generation: u64, version: u64, state: u8) -> Record {
        let mut r = Record::new(spec(key), Generation::new(generation).expect("not 0"));
        r.version = Version::new(version);
        r.snapshot = Some(vec![state]);
        r
    }

    fn spawned(actions: &[Action]) -> Vec<&Record> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_entry_of_a_child_follows_its_record_and_keeps_its_tombstone_after_removal() {
        let mut d = durable_dir("a", &["a"]);
        d.start(1, spec("k"));
        d.spawned("k", Ok(()));
        assert!(d.take_touched().contains("k"));
        let entry = d.durable("k").expect("held");
        assert_eq!(entry.records.len(), 1);
        let generation = entry.records[0].generation;

        d.snapshot("k", vec![7]);
        assert_eq!(d.take_touched(), BTreeSet::from(["k".to_owned()]));
        let entry = d.durable("k").expect("held");
        assert_eq!(entry.records[0].snapshot.as_deref(), Some(&[7u8][..]));

        d.terminate(2, "k");
        d.exited("k", ExitClass::Shutdown, None, Duration::ZERO);
        assert!(d.take_touched().contains("k"));
        assert_eq!(
            d.durable("k"),
            Some(DurableEntry {
                records: Vec::new(),
                buried: vec![generation],
            }),
            "the record is gone and the removal is remembered"
        );
    }

    #[test]
    fn a_directory_that_is_not_durable_touches_nothing() {
        let mut d = Directory::new(DirConfig::new(id("a")));
        d.start(1, spec("k"));
        d.spawned("k", Ok(()));
        assert!(d.take_touched().is_empty());
    }

    #[test]
    fn recovered_records_run_from_the_newest_version_and_the_others_are_merged_into_it() {
        let mut d = durable_dir("a", &["a"]);
        let entry = DurableEntry {
            records: vec![
                record("k", 5, 3, 3),
                record("k", 5, 9, 9),
                record("k", 5, 4, 4),
            ],
            buried: Vec::new(),
        };
        let actions = d.recover([("k".to_owned(), entry)]);
        let runs = spawned(&actions);
        assert_eq!(runs.len(), 1, "{actions:?}");
        assert_eq!(runs[0].version, Version::new(9));
        assert_eq!(runs[0].snapshot.as_deref(), Some(&[9u8][..]));
        // The older records (of diverged copies, perhaps) wait to be merged into it.
        assert_eq!(d.owned()["k"].record.version, Version::new(9));
        assert!(d.take_touched().contains("k"));
    }

    #[test]
    fn a_recovered_record_of_a_buried_generation_never_runs_again() {
        let mut d = durable_dir("a", &["a"]);
        let g = Generation::new(5).expect("not 0");
        let entry = DurableEntry {
            records: vec![record("k", 5, 3, 3)],
            buried: vec![g],
        };
        let actions = d.recover([("k".to_owned(), entry)]);
        assert!(spawned(&actions).is_empty(), "{actions:?}");
        assert!(d.buried("k", g));
        // The tombstone stays on disk.
        assert_eq!(d.durable("k").map(|e| e.buried), Some(vec![g]));
    }

    fn key_owned_by(d: &Directory, owner: &str) -> String {
        (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| d.owner(k) == Some(id(owner)))
            .expect("some key owned by the node")
    }

    fn adopts(actions: &[Action], to_node: &str, key: &str, version: u64) -> bool {
        actions.iter().any(|a| {
            matches!(a,
                Action::Send { to, msg: DirMsg::Adopt { record, .. } }
                    if *to == id(to_node) && record.key == key
                        && record.version == Version::new(version))
        })
    }

    fn entry(r: Record) -> DurableEntry {
        DurableEntry {
            records: vec![r],
            buried: Vec::new(),
        }
    }

    #[test]
    fn a_recovered_record_of_a_key_owned_elsewhere_awaits_its_owner_then_goes_to_it() {
        let mut d = durable_dir("a", &["a", "b"]);
        let key = key_owned_by(&d, "b");
        let actions = d.recover([(key.clone(), entry(record(&key, 5, 3, 3)))]);
        assert!(spawned(&actions).is_empty());
        assert!(!adopts(&actions, "b", &key, 3), "{actions:?}");
        assert!(
            actions.iter().any(
                |a| matches!(a, Action::Send { to, msg: DirMsg::Recovered { .. } } if *to == id("b"))
            ),
            "{actions:?}"
        );
        // Kept (and on disk) while b has not said it recovered.
        assert!(d.backups()[&key][0].awaiting);
        assert_eq!(d.durable(&key).map(|e| e.records.len()), Some(1));
        // b recovered without it (its disk lost it, or another node backs it up): handed to b.
        let actions = d.receive(&id("b"), DirMsg::Recovered { ask: false });
        assert!(adopts(&actions, "b", &key, 3), "{actions:?}");
    }

    #[test]
    fn a_recovered_copy_that_its_owner_replicates_unchanged_is_its_backup_and_nothing_moves() {
        let mut d = durable_dir("a", &["a", "b"]);
        let key = key_owned_by(&d, "b");
        let r = record(&key, 5, 3, 3);
        d.recover([(key.clone(), entry(r.clone()))]);
        let epoch = Epoch(7, 1);
        let actions = d.receive(&id("b"), DirMsg::Replicate { record: r, epoch });
        assert!(
            actions.iter().any(|a| matches!(a,
                Action::Send { to, msg: DirMsg::Ack { key: k, .. } } if *to == id("b") && *k == key)),
            "{actions:?}"
        );
        let list = &d.backups()[&key];
        assert_eq!(list.len(), 1, "{list:?}");
        assert!(!list[0].awaiting && !list[0].orphan && list[0].epoch == epoch);
        // b's later word that it recovered moves nothing.
        let actions = d.receive(&id("b"), DirMsg::Recovered { ask: false });
        assert!(!adopts(&actions, "b", &key, 3), "{actions:?}");
    }

    #[test]
    fn a_recovered_copy_unlike_what_its_owner_replicates_is_handed_to_the_owner_to_merge() {
        let mut d = durable_dir("a", &["a", "b"]);
        let key = key_owned_by(&d, "b");
        d.recover([(key.clone(), entry(record(&key, 5, 4, 4)))]);
        // b's disk had an older state (its write lagged this backup's).
        let actions = d.receive(
            &id("b"),
            DirMsg::Replicate {
                record: record(&key, 5, 3, 3),
                epoch: Epoch(7, 1),
            },
        );
        assert!(adopts(&actions, "b", &key, 4), "{actions:?}");
    }

    #[test]
    fn a_recovered_copy_whose_owner_leaves_the_view_is_failed_over() {
        let mut d = durable_dir("a", &["a", "b"]);
        let key = key_owned_by(&d, "b");
        d.recover([(key.clone(), entry(record(&key, 5, 3, 3)))]);
        let actions = d.set_view([&id("a")]);
        let runs = spawned(&actions);
        assert_eq!(runs.len(), 1, "{actions:?}");
        assert_eq!(runs[0].version, Version::new(3));
    }

    #[test]
    fn a_child_stopped_for_quorum_before_its_node_recovered_keeps_its_newer_state() {
        let mut config = DirConfig::new(id("a"));
        config.durable = true;
        config.quorum = Some(3);
        let mut d = Directory::new(config);
        let all = [id("a"), id("b"), id("c")];
        d.set_view(all.iter());
        let key = key_owned_by(&d, "a");
        // This run starts the child before it took back its disk, and the child moves on.
        d.start(1, spec(&key));
        d.spawned(&key, Ok(()));
        d.snapshot(&key, vec![9]);
        let running = d.owned()[&key].record.clone();
        // The quorum is lost: the child stops, its record kept as a copy held for this node.
        let actions = d.set_view([&id("a")]);
        assert!(
            actions.iter().any(|a| matches!(a, Action::Stop { .. })),
            "{actions:?}"
        );
        d.exited(&key, ExitClass::Shutdown, None, Duration::ZERO);
        // The disk held an older state of the same child.
        let mut older = running.clone();
        older.version = Version::new(0);
        older.snapshot = None;
        d.recover([(key.clone(), entry(older))]);
        // Both are kept; when the quorum returns the newer runs (the older is merged into it).
        let actions = d.set_view(all.iter());
        let runs = spawned(&actions);
        assert_eq!(runs.len(), 1, "{actions:?}");
        assert_eq!(runs[0].snapshot.as_deref(), Some(&[9u8][..]), "{actions:?}");
    }

    fn replicated(actions: &[Action]) -> Vec<Version> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Replicated { version, .. } => Some(*version),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_state_counts_as_replicated_when_its_backup_acknowledges_it_or_there_is_none() {
        // Alone: nothing to wait for.
        let mut d = durable_dir("a", &["a"]);
        d.start(1, spec("k"));
        d.spawned("k", Ok(()));
        let actions = d.snapshot("k", vec![1]);
        assert_eq!(replicated(&actions), [Version::new(1)], "{actions:?}");

        // With a backup: once it acknowledges the version (an older one counts for older states).
        let mut d = durable_dir("a", &["a", "b"]);
        let key = key_owned_by(&d, "a");
        d.start(1, spec(&key));
        d.spawned(&key, Ok(()));
        let actions = d.snapshot(&key, vec![1]);
        assert!(replicated(&actions).is_empty(), "{actions:?}");
        let epoch = d.owned()[&key].epoch;
        d.snapshot(&key, vec![2]);
        let ack = |version| DirMsg::Ack {
            key: key.clone(),
            version: Version::new(version),
            epoch,
        };
        let actions = d.receive(&id("b"), ack(1));
        assert_eq!(replicated(&actions), [Version::new(1)], "{actions:?}");
        let actions = d.receive(&id("b"), ack(2));
        assert_eq!(replicated(&actions), [Version::new(2)], "{actions:?}");
        // Not from a node that is not its backup.
        let actions = d.receive(&id("c"), ack(2));
        assert!(replicated(&actions).is_empty(), "{actions:?}");
    }

    #[test]
    fn replication_is_not_reported_when_no_reply_waits_for_it() {
        let mut config = DirConfig::new(id("a"));
        config.replies_wait_for_backup = false;
        let mut d = Directory::new(config);
        d.set_view([&id("a"), &id("b")]);
        let key = key_owned_by(&d, "a");
        d.start(1, spec(&key));
        let mut actions = d.spawned(&key, Ok(()));
        actions.extend(d.snapshot(&key, vec![1]));
        let epoch = d.owned()[&key].epoch;
        actions.extend(d.receive(
            &id("b"),
            DirMsg::Ack {
                key: key.clone(),
                version: Version::new(1),
                epoch,
            },
        ));
        // Acknowledged all the same (the conflict rule counts it), only not reported.
        assert_eq!(d.owned()[&key].record.acked, Version::new(1));
        // Alone, too.
        d.start(2, spec("alone"));
        actions.extend(d.set_view([&id("a")]));
        actions.extend(d.spawned("alone", Ok(())));
        actions.extend(d.snapshot("alone", vec![1]));
        assert!(replicated(&actions).is_empty(), "{actions:?}");
    }

    /// The backup moves (b → c): c acknowledging the new state does not make it replicated while
    /// b's older copy is still to be dropped — failed over on the far side of a partition, that
    /// copy would run without it, and a `Sync` reply would have acknowledged it.
    #[test]
    fn a_state_is_replicated_only_once_the_old_backups_copy_is_dropped() {
        let two = durable_dir("a", &["a", "b"]);
        let three = durable_dir("a", &["a", "b", "c"]);
        let key = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| {
                two.owner(k) == Some(id("a"))
                    && three.owner(k) == Some(id("a"))
                    && two.backup_of(k) == Some(id("b"))
                    && three.backup_of(k) == Some(id("c"))
            })
            .expect("a key whose backup moves from b to c");
        let mut d = two;
        d.start(1, spec(&key));
        d.spawned(&key, Ok(()));
        d.snapshot(&key, vec![1]);
        let ack = |d: &Directory, version| DirMsg::Ack {
            key: key.clone(),
            version: Version::new(version),
            epoch: d.owned()[&key].epoch,
        };
        let actions = d.receive(&id("b"), ack(&d, 1));
        assert_eq!(replicated(&actions), [Version::new(1)], "{actions:?}");
        let view = [id("a"), id("b"), id("c")];
        d.set_view(view.iter());
        d.snapshot(&key, vec![2]);
        let actions = d.receive(&id("c"), ack(&d, 2));
        assert!(
            actions.iter().any(|a| matches!(a,
                Action::Send { to, msg: DirMsg::Drop { .. } } if *to == id("b"))),
            "{actions:?}"
        );
        assert!(replicated(&actions).is_empty(), "{actions:?}");
        let dropped = DirMsg::Dropped {
            key: key.clone(),
            origin: id("a"),
            tag: None,
            epoch: d.owned()[&key].epoch,
            remove: false,
            next: None,
        };
        let actions = d.receive(&id("b"), dropped);
        assert_eq!(replicated(&actions), [Version::new(2)], "{actions:?}");
    }

    #[test]
    fn a_later_version_of_the_same_child_is_the_newer_copy() {
        let mut d = durable_dir("a", &["a"]);
        d.recover([(
            "k".to_owned(),
            DurableEntry {
                records: vec![record("k", 5, 3, 3)],
                buried: Vec::new(),
            },
        )]);
        // Alone, the recovered copy needs no backup: all of it counts as acknowledged.
        assert_eq!(d.owned()["k"].record.acked, Version::new(3));
        let acked = |version, acked| {
            let mut r = record("k", 5, version, version as u8);
            r.acknowledged(Version::new(acked));
            r
        };
        assert!(d.is_newer_copy("k", &acked(4, 4)));
        assert!(!d.is_newer_copy("k", &acked(3, 3)));
        // A higher version of which less was acknowledged is not the newer state.
        assert!(!d.is_newer_copy("k", &acked(9, 2)));
        assert!(
            !d.is_newer_copy("k", &record("k", 6, 9, 9)),
            "another child"
        );
        assert!(!d.is_newer_copy("other", &record("other", 5, 9, 9)));
    }

    #[test]
    fn a_recovered_tombstone_stops_the_running_copy_and_is_told_to_the_peers() {
        let mut d = durable_dir("a", &["a", "b"]);
        let key = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| d.owner(k) == Some(id("a")))
            .expect("some key owned by a");
        d.recover([(
            key.clone(),
            DurableEntry {
                records: vec![record(&key, 5, 3, 3)],
                buried: Vec::new(),
            },
        )]);
        d.spawned(&key, Ok(()));
        let g = Generation::new(5).expect("not 0");
        // A later start of the same node finds the removal on disk (written by another run).
        let actions = d.recover([(
            key.clone(),
            DurableEntry {
                records: Vec::new(),
                buried: vec![g],
            },
        )]);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Stop { key: k, .. } if *k == key)),
            "{actions:?}"
        );
        assert!(
            actions.iter().any(|a| matches!(a,
                Action::Send { to, msg: DirMsg::Buried { removed } }
                    if *to == id("b") && removed.contains(&(key.clone(), g)))),
            "{actions:?}"
        );
    }
}
