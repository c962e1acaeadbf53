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
/// the child stops cleanly.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) pending: Mutex<Option<Vec<u8>>>,
    pub(crate) last: Mutex<Option<Vec<u8>>>,
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
        if !(by_count || by_time || actor.snapshot_due()) {
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
        let first = self
            .slot
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(bytes)
            .is_none();
        if first {
            let _ = self.notes.send(Note::Child(ChildNote::Snapshot {
                key: self.key.clone(),
                slot: self.slot.clone(),
            }));
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
