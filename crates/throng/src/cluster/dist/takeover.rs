//! With a store the nodes share (PostgreSQL), what a node that is gone kept is taken over by a
//! survivor: a double failure (a child's owner and its backup lost together) loses nothing
//! durable, without waiting for either node to come back.
//!
//! Every [`SCAN_EVERY`] a durable supervisor lists the nodes that keep entries of its scope in
//! the shared store. A node among them that is out of this node's view (neither up nor leaving)
//! for [`GRACE`] in a row — so a quick restart recovers its own entries — is taken over by one
//! survivor: the node that owns the gone node's *name* on the ring (every node of one view picks
//! the same one; views that disagree at worst take it twice, and the copies meet and merge as
//! any two copies do). Its entries go to the directory as recovered ones
//! ([`Directory::recover`](throng_core::Directory::recover)): each child runs on its owner from
//! its last durable state, each tombstone is kept. Once this node's own store holds every key
//! taken over, the gone node's entries are deleted — only those it did not write again
//! meanwhile ([`SharedStore::forget_taken`](throng_store::SharedStore::forget_taken)), so a node that was only cut off keeps what it
//! wrote since, and its copies meet ours when it is back.
//!
//! Before reading them, the gone node is fenced ([`SharedStore::fence`](throng_store::SharedStore::fence)): refused while a
//! process of that node still holds the store (it is cut off from this node, not from the
//! database: not taken over, tried again at the next scan); once fenced, a process of it that
//! comes back to the database can no longer write, so no write it acknowledged later is lost to
//! the copy taken over.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use throng_core::directory::DurableEntry;
use throng_core::NodeId;
use throng_store::{Store, StoreError};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often the nodes that keep entries are listed.
pub(super) const SCAN_EVERY: Duration = Duration::from_secs(2);

/// How long a node keeping entries must be out of the view before it is taken over.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// The outcome of one store operation run on a blocking thread.
pub(super) enum Step {
    /// The nodes other than this one keeping entries.
    Nodes(Result<Vec<String>, StoreError>),
    /// The entries `node` kept.
    Loaded(String, Result<Vec<(String, Vec<u8>)>, StoreError>),
    /// The entries of `node` taken over were deleted (or not).
    Forgot(String, Result<(), StoreError>),
}

/// Entries taken over from `node`, waiting until this node's store holds every key of them.
struct Taken {
    node: String,
    entries: Vec<(String, Vec<u8>)>,
    unwritten: BTreeSet<String>,
}

/// A durable supervisor's take-over of gone nodes' entries (shared stores only).
pub(crate) struct TakeOver {
    store: Arc<dyn Store>,
    scope: Arc<str>,
    /// Nodes keeping entries, out of the view since then.
    absent: HashMap<String, Instant>,
    in_flight: Option<oneshot::Receiver<Step>>,
    taken: Vec<Taken>,
    next_scan: Instant,
}

impl TakeOver {
    /// The take-over of `scope` over `store`, if the store is shared.
    pub(crate) fn new(store: Arc<dyn Store>, scope: &str) -> Option<Self> {
        store.shared()?;
        Some(TakeOver {
            store,
            scope: Arc::from(scope),
            absent: HashMap::new(),
            in_flight: None,
            taken: Vec::new(),
            next_scan: Instant::now() + SCAN_EVERY,
        })
    }

    /// When the next scan is due (none while an operation is in flight).
    pub(super) fn due(&self) -> Option<Instant> {
        self.in_flight.is_none().then_some(self.next_scan)
    }

    pub(super) fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Run `op` on the store from a blocking thread; its outcome comes back by [`TakeOver::step`].
    fn run(&mut self, op: impl FnOnce(&dyn Store, &str) -> Step + Send + 'static) {
        let (tx, rx) = oneshot::channel();
        let store = self.store.clone();
        let scope = self.scope.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(op(&*store, &scope));
        });
        self.in_flight = Some(rx);
    }

    /// The periodic step: delete the entries taken over that this node's store now holds, or
    /// else list the nodes keeping entries.
    pub(super) fn tick(&mut self) {
        self.next_scan = Instant::now() + SCAN_EVERY;
        if self.forget_written() {
            return;
        }
        self.run(|store, scope| {
            Step::Nodes(match store.shared() {
                Some(s) => s.other_nodes(scope),
                None => Ok(Vec::new()),
            })
        });
    }

    /// Waits for the operation in flight (forever if there is none: use under a guard).
    pub(super) async fn step(&mut self) -> Option<Step> {
        match self.in_flight.as_mut() {
            Some(rx) => {
                let step = rx.await.ok();
                self.in_flight = None;
                step
            }
            None => std::future::pending().await,
        }
    }

    /// The nodes keeping entries are `nodes`: which one, if any, this node takes over now
    /// (`view`: the nodes up or leaving; `owner_of`: the owner of a name on the ring).
    pub(super) fn listed(
        &mut self,
        nodes: Vec<String>,
        view: &BTreeSet<NodeId>,
        owner_of: impl Fn(&str) -> Option<NodeId>,
        me: &NodeId,
    ) {
        let now = Instant::now();
        let gone: Vec<String> = nodes
            .into_iter()
            .filter(|n| !view.iter().any(|v| v.as_str() == n))
            .collect();
        self.absent.retain(|n, _| gone.contains(n));
        for n in &gone {
            self.absent.entry(n.clone()).or_insert(now);
        }
        let pending: BTreeSet<&str> = self.taken.iter().map(|t| t.node.as_str()).collect();
        let due = self.absent.iter().find(|(n, since)| {
            now.duration_since(**since) >= GRACE
                && !pending.contains(n.as_str())
                && owner_of(n).as_ref() == Some(me)
        });
        if let Some((node, _)) = due {
            let node = node.clone();
            tracing::info!(supervisor = %self.scope, %node,
                "taking over the durable entries of a node that is gone");
            self.run(move |store, scope| {
                // Fenced first: a process of that node cut off from us and from the database
                // cannot write over what we read from now on.
                let loaded = match store.shared() {
                    Some(s) => s.fence(&node).and_then(|()| s.load_of(&node, scope)),
                    None => Ok(Vec::new()),
                };
                Step::Loaded(node, loaded)
            });
        }
    }

    /// The entries of `node` were read: the ones that decode, for the directory to recover.
    pub(super) fn loaded(
        &mut self,
        node: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Vec<(String, DurableEntry)> {
        let mut decoded = Vec::with_capacity(entries.len());
        for (key, bytes) in &entries {
            match super::persist::decode_entry(bytes) {
                Ok(e) => decoded.push((key.clone(), e)),
                Err(e) => tracing::error!(supervisor = %self.scope, %node, %key, error = %e,
                    "an entry of a node taken over does not decode; it is left in the store"),
            }
        }
        let keep: BTreeSet<&str> = decoded.iter().map(|(k, _)| k.as_str()).collect();
        let entries: Vec<(String, Vec<u8>)> = entries
            .into_iter()
            .filter(|(k, _)| keep.contains(k.as_str()))
            .collect();
        let unwritten = entries.iter().map(|(k, _)| k.clone()).collect();
        tracing::info!(supervisor = %self.scope, %node, entries = entries.len(),
            "took over the durable entries of a node that is gone");
        self.taken.push(Taken {
            node,
            entries,
            unwritten,
        });
        decoded
    }

    /// This node's store now holds `keys`: forget, in the gone node's entries, those whose keys
    /// are all written here.
    pub(super) fn written(&mut self, keys: &[String]) {
        for t in &mut self.taken {
            for k in keys {
                t.unwritten.remove(k);
            }
        }
        if self.in_flight.is_none() {
            self.forget_written();
        }
    }

    /// Start deleting the entries of one node taken over whose keys this node's store holds;
    /// whether one was.
    fn forget_written(&mut self) -> bool {
        let Some(i) = self.taken.iter().position(|t| t.unwritten.is_empty()) else {
            return false;
        };
        {
            let t = self.taken.remove(i);
            self.run(move |store, scope| {
                let result = match store.shared() {
                    Some(s) => s.forget_taken(&t.node, scope, &t.entries),
                    None => Ok(()),
                };
                Step::Forgot(t.node, result)
            });
        }
        true
    }

    /// The outcome of a deletion: on failure the entries stay (taken over again later, where
    /// the copies that meet merge).
    pub(super) fn forgot(&self, node: &str, result: Result<(), StoreError>) {
        match result {
            Ok(()) => tracing::info!(supervisor = %self.scope, %node,
                "deleted the durable entries taken over"),
            Err(e) => tracing::warn!(supervisor = %self.scope, %node, error = %e,
                "could not delete the durable entries taken over; they stay"),
        }
    }
}
