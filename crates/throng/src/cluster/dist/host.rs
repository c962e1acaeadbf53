//! The erased host of a registered [`Keyed`] type: starts a child from its record, observes its
//! snapshots for the driver, merges two of its states.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use throng_core::directory::Record;
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
pub(crate) type Release = Box<dyn FnOnce() + Send>;

/// The replies of a `Sync` child waiting for durability, and how far its snapshots got. A
/// snapshot's sequence number counts the snapshots the child produced; a reply waits for the
/// latest one produced when it was sent.
#[derive(Default)]
pub(crate) struct Held {
    /// Snapshots put in the slot so far (the latest one's number).
    produced: u64,
    /// The number of the latest snapshot the driver handed to the directory.
    taken: u64,
    /// Snapshots known durable up to this number.
    durable: u64,
    /// Replies, in order, with the snapshot each waits for.
    waiting: std::collections::VecDeque<(u64, Release)>,
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

    /// The snapshots up to `seq` are durable: send the replies that waited for them.
    pub(crate) fn durable(&self, seq: u64) {
        let Some(held) = &self.held else {
            return;
        };
        let mut ready = Vec::new();
        {
            let mut h = lock(held);
            h.durable = h.durable.max(seq);
            while h.waiting.front().is_some_and(|(s, _)| *s <= h.durable) {
                ready.extend(h.waiting.pop_front().map(|(_, r)| r));
            }
        }
        for release in ready {
            release();
        }
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
            return release();
        };
        let mut h = lock(held);
        let seq = h.produced;
        if seq <= h.durable {
            drop(h);
            release();
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
