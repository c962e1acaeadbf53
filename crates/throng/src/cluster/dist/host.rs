//! The erased host of a registered [`Keyed`] type: starts a child from its record, observes its
//! snapshots for the driver, merges two of its states.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use throng_core::directory::{Record, Version};
use tokio::sync::mpsc;

use super::{BoxFuture, Note};
use crate::actor::Observer;
use crate::cluster::keyed::{Keyed, SnapshotPolicy};
use crate::cluster::transport::Transport;
use crate::supervisor::Shutdown;
use crate::{ActorHandle, ExitReason, SpawnOptions};

/// Where a child's snapshots go: the latest pending one (coalesced) and the final one taken when
/// the child stops cleanly; with [`Durability::Sync`](super::Durability::Sync), the replies
/// waiting for the state they saw to be durable.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) pending: Mutex<Option<Vec<u8>>>,
    pub(crate) last: Mutex<Option<Vec<u8>>>,
    /// `Some` in `Sync` mode. Locked before `pending` wherever both are.
    pub(crate) held: Option<Mutex<Held>>,
}

/// A reply that waits for the state it saw to be durable.
pub(crate) type Release = Box<dyn FnOnce(bool) + Send>;

/// The replies of a `Sync` child waiting for durability, and how far its snapshots got. A
/// snapshot's sequence number counts the snapshots the child produced; a reply waits for the
/// latest one produced when it was sent to be durable on this node's store *and* held by the
/// key's backup (so that a failover from the backup, or a merge with it, keeps every state a
/// reply acknowledged).
#[derive(Default)]
pub(crate) struct Held {
    /// Snapshots put in the slot so far (the latest one's number).
    produced: u64,
    /// The number of the latest snapshot the driver handed to the directory.
    taken: u64,
    /// Snapshots known durable up to this number.
    durable: u64,
    /// Snapshots known held by the backup up to this number.
    replicated: u64,
    /// The newest version of the child's record the backup acknowledged.
    acked: Option<Version>,
    /// Snapshots the directory took and the backup has not acknowledged, oldest first, with the
    /// version of the record each made; at most [`MAX_UNREPLICATED`] (beyond, the newest replaces
    /// the last: an acknowledgement of a later version covers the earlier ones).
    versions: std::collections::VecDeque<(u64, Version)>,
    /// Replies, in order, with the snapshot each waits for.
    waiting: std::collections::VecDeque<(u64, Release)>,
}

/// How many snapshots waiting for their backup's acknowledgement a `Sync` child tracks apart.
const MAX_UNREPLICATED: usize = 64;

impl Held {
    /// The snapshots up to `seq` made the record's `version`: they are replicated once the
    /// backup acknowledges it (beyond [`MAX_UNREPLICATED`] tracked apart, the newest replaces the
    /// last).
    fn made(&mut self, seq: u64, version: Version) {
        if self.versions.len() >= MAX_UNREPLICATED {
            if let Some(last) = self.versions.back_mut() {
                *last = (seq, version);
            }
        } else {
            self.versions.push_back((seq, version));
        }
        self.advance();
    }

    /// The snapshots the backup's acknowledgements cover are replicated.
    fn advance(&mut self) {
        while let Some(&(seq, version)) = self.versions.front() {
            if self.acked.is_none_or(|a| version > a) {
                break;
            }
            self.replicated = self.replicated.max(seq);
            self.versions.pop_front();
        }
    }

    /// The replies whose snapshot is now durable and replicated.
    fn ready(&mut self) -> Vec<Release> {
        let upto = self.durable.min(self.replicated);
        let mut ready = Vec::new();
        while self.waiting.front().is_some_and(|(s, _)| *s <= upto) {
            ready.extend(self.waiting.pop_front().map(|(_, r)| r));
        }
        ready
    }
}

impl Slot {
    /// A slot for a child of a supervisor in `Sync` mode (`sync`) or not.
    pub(crate) fn new(sync: bool) -> Self {
        Slot {
            held: sync.then(Mutex::default),
            ..Slot::default()
        }
    }

    /// Take the pending snapshot for the directory, remembering its number.
    pub(crate) fn take_pending(&self) -> Option<Vec<u8>> {
        let held = self.held.as_ref().map(|h| lock(h));
        let bytes = lock(&self.pending).take();
        if let (Some(mut h), true) = (held, bytes.is_some()) {
            h.taken = h.produced;
        }
        bytes
    }

    /// The number of the latest snapshot the directory holds (`u64::MAX` for a child that
    /// exited: its final state is in the directory's record), if replies can wait here.
    pub(crate) fn mark(&self, exited: bool) -> Option<u64> {
        let h = lock(self.held.as_ref()?);
        Some(if exited { u64::MAX } else { h.taken })
    }

    /// Whether replies wait here.
    pub(crate) fn holds(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| !lock(h).waiting.is_empty())
    }

    /// Updates how far the snapshots got, then sends the replies that may go.
    fn release(&self, f: impl FnOnce(&mut Held)) {
        let Some(held) = &self.held else {
            return;
        };
        let ready = {
            let mut h = lock(held);
            f(&mut h);
            h.ready()
        };
        for release in ready {
            release(true);
        }
    }

    /// The snapshots up to `seq` are durable: send the replies that waited for them (and whose
    /// snapshot the backup holds).
    pub(crate) fn durable(&self, seq: u64) {
        self.release(|h| h.durable = h.durable.max(seq));
    }

    /// The directory took the latest snapshot taken ([`Slot::take_pending`]), and the child's
    /// record is now at `version`.
    pub(crate) fn taken_as(&self, version: Version) {
        self.release(|h| {
            let seq = h.taken;
            h.made(seq, version);
        });
    }

    /// The backup holds the child's record up to `version` (or it needs no backup).
    pub(crate) fn replicated(&self, version: Version) {
        self.release(|h| {
            h.acked = h.acked.max(Some(version));
            h.advance();
        });
    }

    /// The child exited and the directory's record of it, at `version`, holds every state it
    /// produced (it restarts, or is merged, here): its replies wait for the backup to hold that
    /// version.
    pub(crate) fn final_as(&self, version: Version) {
        self.release(|h| {
            let seq = h.produced;
            h.made(seq, version);
        });
    }

    /// The child was stopped for a lost quorum (or its copy lost a merge to a later one) with
    /// replies still waiting for its backup: the other side fails the child over from that
    /// backup, which may lack the states they saw, so they fail instead (each caller gets an
    /// error that is not retried: the call's effect may or may not be kept).
    pub(crate) fn abandoned(&self) {
        let Some(held) = &self.held else {
            return;
        };
        let waiting = std::mem::take(&mut lock(held).waiting);
        for (_, release) in waiting {
            release(false);
        }
    }

    /// The child exited and its record left this node (handed off, with the state the replies
    /// saw; or removed): replies no longer wait for its backup.
    pub(crate) fn exited(&self) {
        self.release(|h| {
            h.replicated = u64::MAX;
            h.versions.clear();
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a running child tells its supervisor's driver.
pub(crate) enum ChildNote {
    /// A snapshot is waiting in the child's slot.
    Snapshot { key: Arc<str>, slot: Arc<Slot> },
}

struct SnapObserver<A> {
    key: Arc<str>,
    slot: Arc<Slot>,
    notes: mpsc::UnboundedSender<Note>,
    policy: SnapshotPolicy,
    since: u32,
    last: Instant,
    /// Hash of the last snapshot sent: an unchanged state is not replicated again.
    last_hash: u64,
    _a: PhantomData<fn() -> A>,
}

impl<A: Keyed> Observer<A> for SnapObserver<A> {
    fn after_message(&mut self, actor: &A) {
        self.since += 1;
        let by_count = self.policy.every_messages != 0 && self.since >= self.policy.every_messages;
        let by_time = self.policy.every.is_some_and(|t| self.last.elapsed() >= t);
        // In `Sync` mode every message is followed by a snapshot: a reply waits for the state
        // it saw to be durable, so that state must be written.
        let sync = self.slot.held.is_some();
        if !(sync || by_count || by_time || actor.snapshot_due()) {
            return;
        }
        self.since = 0;
        self.last = Instant::now();
        let Some(state) = actor.snapshot() else {
            return;
        };
        let Ok(bytes) = postcard::to_allocvec(&state) else {
            tracing::warn!(key = %self.key, "snapshot could not be encoded");
            return;
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        if hash == self.last_hash {
            return;
        }
        self.last_hash = hash;
        let first = {
            let held = self.slot.held.as_ref().map(|h| lock(h));
            let first = lock(&self.slot.pending).replace(bytes).is_none();
            if let Some(mut h) = held {
                h.produced += 1;
            }
            first
        };
        if first {
            let _ = self.notes.send(Note::Child(ChildNote::Snapshot {
                key: self.key.clone(),
                slot: self.slot.clone(),
            }));
        }
    }

    fn holds_replies(&self) -> bool {
        self.slot.held.is_some()
    }

    fn hold(&mut self, release: Release) {
        let Some(held) = &self.slot.held else {
            return release(true);
        };
        let mut h = lock(held);
        let seq = h.produced;
        if seq <= h.durable.min(h.replicated) {
            drop(h);
            release(true);
        } else {
            h.waiting.push_back((seq, release));
        }
    }

    fn on_stop(&mut self, actor: &A, reason: &ExitReason) {
        if reason.is_abnormal() {
            return;
        }
        if let Some(bytes) = actor
            .snapshot()
            .and_then(|s| postcard::to_allocvec(&s).ok())
        {
            *self.slot.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        }
    }
}

/// A registered type, erased: starts a child from its record on this node.
pub(crate) trait HostType: Send + Sync {
    /// Start the child of `record` (restoring its snapshot if any), export it as `export`, and
    /// return its handle.
    fn spawn<'a>(
        &'a self,
        t: &'a Arc<Transport>,
        export: &'a str,
        record: &'a Record,
        key: Arc<str>,
        slot: Arc<Slot>,
        notes: mpsc::UnboundedSender<Note>,
    ) -> BoxFuture<'a, Result<ActorHandle, String>>;

    /// How children of this type are stopped ([`Keyed::shutdown`]).
    fn shutdown(&self) -> Shutdown;

    /// `resolve_conflict(key, ours, theirs)` on encoded states; `None` when `ours` is missing or
    /// a state does not decode (the directory then keeps its latest snapshot).
    fn merge(&self, key: &str, ours: Option<&[u8]>, theirs: Option<&[u8]>) -> Option<Vec<u8>>;
}

pub(crate) struct Host<A>(pub(crate) PhantomData<fn() -> A>);

impl<A: Keyed> HostType for Host<A> {
    fn shutdown(&self) -> Shutdown {
        A::shutdown()
    }

    fn merge(&self, key: &str, ours: Option<&[u8]>, theirs: Option<&[u8]>) -> Option<Vec<u8>> {
        let ours: A::State = postcard::from_bytes(ours?).ok()?;
        let Some(theirs) = theirs.and_then(|t| postcard::from_bytes::<A::State>(t).ok()) else {
            return postcard::to_allocvec(&ours).ok();
        };
        postcard::to_allocvec(&A::resolve_conflict(key, ours, theirs)).ok()
    }

    fn spawn<'a>(
        &'a self,
        t: &'a Arc<Transport>,
        export: &'a str,
        record: &'a Record,
        key: Arc<str>,
        slot: Arc<Slot>,
        notes: mpsc::UnboundedSender<Note>,
    ) -> BoxFuture<'a, Result<ActorHandle, String>> {
        Box::pin(async move {
            let args: A::Args =
                postcard::from_bytes(&record.args).map_err(|e| format!("bad args: {e}"))?;
            let actor = match &record.snapshot {
                Some(bytes) => match postcard::from_bytes::<A::State>(bytes) {
                    Ok(state) => A::restore(&record.key, args, state),
                    Err(e) => {
                        tracing::warn!(key = %record.key, error = %e,
                            "snapshot does not decode; starting from args");
                        A::start(&record.key, args)
                    }
                },
                None => A::start(&record.key, args),
            };
            let observer = SnapObserver::<A> {
                key,
                slot,
                notes,
                policy: A::snapshot_policy(),
                since: 0,
                last: Instant::now(),
                // The state it starts from is the one the directory already holds.
                last_hash: record
                    .snapshot
                    .as_deref()
                    .map(xxhash_rust::xxh3::xxh3_64)
                    .unwrap_or(0),
                _a: PhantomData,
            };
            let child =
                crate::actor::start_observed(actor, SpawnOptions::default(), Box::new(observer))
                    .await
                    .map_err(|r| r.to_string())?;
            let _ = t.export_typed(export, &child, true);
            Ok(child.handle().clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// The child produced a new state (as its observer does after a message).
    fn produce(slot: &Slot, state: u8) {
        let mut h = lock(slot.held.as_ref().expect("sync"));
        *lock(&slot.pending) = Some(vec![state]);
        h.produced += 1;
    }

    /// A reply for the latest state produced; true once released.
    fn reply(slot: &Slot) -> Arc<AtomicBool> {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let mut h = lock(slot.held.as_ref().expect("sync"));
        let seq = h.produced;
        h.waiting
            .push_back((seq, Box::new(move |ok| d.store(ok, Ordering::SeqCst))));
        done
    }

    #[test]
    fn a_sync_reply_waits_for_its_state_on_disk_and_on_the_backup() {
        let slot = Slot::new(true);
        produce(&slot, 1);
        let first = reply(&slot);
        slot.take_pending();
        slot.taken_as(Version::new(5));
        slot.durable(1);
        assert!(
            !first.load(Ordering::SeqCst),
            "released while only durable here: a failover from the backup would lose it"
        );
        slot.replicated(Version::new(4));
        assert!(
            !first.load(Ordering::SeqCst),
            "an older version acknowledged"
        );
        slot.replicated(Version::new(5));
        assert!(first.load(Ordering::SeqCst));

        // The other order: held by the backup first, then durable.
        produce(&slot, 2);
        let second = reply(&slot);
        slot.take_pending();
        slot.taken_as(Version::new(6));
        slot.replicated(Version::new(6));
        assert!(!second.load(Ordering::SeqCst), "not durable yet");
        slot.durable(2);
        assert!(second.load(Ordering::SeqCst));
    }

    #[test]
    fn unacknowledged_snapshots_are_tracked_in_bounded_memory() {
        let slot = Slot::new(true);
        let mut last = None;
        for i in 1..=1000u64 {
            produce(&slot, (i % 250) as u8);
            last = Some(reply(&slot));
            slot.take_pending();
            slot.taken_as(Version::new(i));
        }
        let h = lock(slot.held.as_ref().expect("sync"));
        assert!(h.versions.len() <= MAX_UNREPLICATED);
        drop(h);
        slot.durable(1000);
        slot.replicated(Version::new(1000));
        assert!(last.expect("replies").load(Ordering::SeqCst));
        assert!(lock(slot.held.as_ref().expect("sync")).waiting.is_empty());
    }

    #[test]
    fn an_exited_child_s_replies_wait_for_its_final_record_or_the_disk_only() {
        let slot = Slot::new(true);
        produce(&slot, 1);
        let done = reply(&slot);
        // It exits before the directory took that state (it goes with the exit), and restarts
        // here: its final state is the record's version 3.
        slot.final_as(Version::new(3));
        slot.durable(u64::MAX);
        slot.replicated(Version::new(2));
        assert!(
            !done.load(Ordering::SeqCst),
            "the final record not held by the backup yet"
        );
        slot.replicated(Version::new(3));
        assert!(done.load(Ordering::SeqCst));

        // Handed off: the disk only.
        let slot = Slot::new(true);
        produce(&slot, 1);
        let done = reply(&slot);
        slot.take_pending();
        slot.taken_as(Version::new(1));
        slot.exited();
        assert!(!done.load(Ordering::SeqCst));
        slot.durable(u64::MAX);
        assert!(done.load(Ordering::SeqCst));
    }
    /// A child stopped for a lost quorum (or whose copy lost a merge to a later one) with
    /// replies waiting for its backup: they are never sent, whatever is acknowledged or made
    /// durable later; each fails at once (its caller gets an error, not a hang).
    #[test]
    fn replies_of_an_abandoned_copy_are_dropped_not_sent() {
        let slot = Slot::new(true);
        produce(&slot, 1);
        let done = reply(&slot);
        // A second reply that notes it failed.
        let failed = Arc::new(AtomicBool::new(false));
        {
            let f = failed.clone();
            let mut h = lock(slot.held.as_ref().expect("sync"));
            let seq = h.produced;
            h.waiting
                .push_back((seq, Box::new(move |ok| f.store(!ok, Ordering::SeqCst))));
        }
        slot.take_pending();
        slot.taken_as(Version::new(2));
        slot.abandoned();
        slot.durable(u64::MAX);
        slot.replicated(Version::new(9));
        slot.exited();
        assert!(
            !done.load(Ordering::SeqCst),
            "an unacknowledged state's reply was sent"
        );
        assert!(failed.load(Ordering::SeqCst), "a reply kept, not failed");
        assert_eq!(Arc::strong_count(&failed), 1, "a reply kept, not failed");
        assert!(!slot.holds());
    }
}
