//! A durable supervisor's writer: the keys the directory touched ([`Host::touched`]) wait here
//! until the coalescing window ends, then their entries ([`Directory::durable`]) go to the node's
//! store in one group commit on a blocking thread, while the driver goes on. One commit is in
//! flight at a time; what is touched meanwhile waits for the next one. A failed commit keeps its
//! keys for the next attempt (after a back-off), so nothing touched is forgotten.
//!
//! [`Host::touched`]: throng_core::driver::Host::touched

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use throng_core::directory::{Directory, DurableEntry};
use throng_store::{Store, StoreError, Write};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// At most this many keys go into one commit (the rest wait for the next one).
pub(super) const MAX_BATCH: usize = 8192;

/// The longest back-off after failed commits.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Outcome = (Result<(), StoreError>, Vec<String>);

pub(crate) struct Persister {
    store: Arc<dyn Store>,
    scope: Arc<str>,
    max_lag: Duration,
    /// Keys touched and not written yet.
    dirty: BTreeSet<String>,
    /// When the oldest of them was touched.
    since: Option<Instant>,
    /// The commit in flight: its outcome and its keys.
    in_flight: Option<oneshot::Receiver<Outcome>>,
    /// How many keys the commit in flight writes.
    in_flight_keys: usize,
    /// Failed commits in a row (for the back-off).
    failures: u32,
    /// Not before this (after a failed commit).
    not_before: Option<Instant>,
    /// Entries (puts and deletes) in commits that succeeded, since start.
    written: u64,
    /// Commits that succeeded, since start.
    commits: u64,
}

impl Persister {
    pub(crate) fn new(store: Arc<dyn Store>, scope: &str, max_lag: Duration) -> Self {
        Persister {
            store,
            scope: Arc::from(scope),
            max_lag,
            dirty: BTreeSet::new(),
            since: None,
            in_flight: None,
            in_flight_keys: 0,
            failures: 0,
            not_before: None,
            written: 0,
            commits: 0,
        }
    }

    /// Every entry a previous run of this node kept for this supervisor. An entry that does not
    /// decode is reported and skipped (the others come back).
    pub(super) async fn load(&self) -> Result<Vec<(String, DurableEntry)>, StoreError> {
        let store = self.store.clone();
        let scope = self.scope.clone();
        let raw = tokio::task::spawn_blocking(move || store.load(&scope))
            .await
            .map_err(|e| StoreError::Io {
                path: Default::default(),
                reason: format!("loading the store failed: {e}"),
            })??;
        let mut entries = Vec::with_capacity(raw.len());
        for (key, bytes) in raw {
            match postcard::from_bytes::<DurableEntry>(&bytes) {
                Ok(e) => entries.push((key, e)),
                Err(e) => tracing::error!(
                    supervisor = %self.scope, key = %key, error = %e,
                    "a durable entry does not decode; it is skipped"
                ),
            }
        }
        Ok(entries)
    }

    pub(super) fn touched(&mut self, keys: BTreeSet<String>) {
        if keys.is_empty() {
            return;
        }
        if self.dirty.is_empty() {
            self.since = Some(Instant::now());
        }
        self.dirty.extend(keys);
    }

    /// When the next commit is due, if one is (none while one is in flight).
    pub(super) fn due(&self) -> Option<Instant> {
        if self.in_flight.is_some() || self.dirty.is_empty() {
            return None;
        }
        let at = if self.dirty.len() >= MAX_BATCH {
            Instant::now()
        } else {
            self.since? + self.max_lag
        };
        Some(self.not_before.map_or(at, |nb| at.max(nb)))
    }

    /// Start a commit of (up to [`MAX_BATCH`]) dirty keys' entries as `dir` holds them now.
    pub(super) fn flush(&mut self, dir: &Directory) {
        if self.in_flight.is_some() || self.dirty.is_empty() {
            return;
        }
        let mut keys = Vec::with_capacity(self.dirty.len().min(MAX_BATCH));
        while keys.len() < MAX_BATCH {
            let Some(k) = self.dirty.pop_first() else {
                break;
            };
            keys.push(k);
        }
        self.since = (!self.dirty.is_empty()).then(Instant::now);
        self.in_flight_keys = keys.len();
        let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        for k in &keys {
            values.push(dir.durable(k).and_then(|e| match postcard::to_allocvec(&e) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "a durable entry does not encode");
                    None
                }
            }));
        }
        let store = self.store.clone();
        let scope = self.scope.clone();
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let writes: Vec<Write<'_>> = keys
                .iter()
                .zip(&values)
                .map(|(key, v)| match v {
                    Some(value) => Write::Put {
                        scope: &scope,
                        key,
                        value,
                    },
                    None => Write::Delete { scope: &scope, key },
                })
                .collect();
            let result = store.apply(&writes);
            drop(writes);
            let _ = tx.send((result, keys));
        });
        self.in_flight = Some(rx);
    }

    /// Waits for the commit in flight (forever if there is none: use under a guard).
    pub(super) async fn written(&mut self) -> Option<Outcome> {
        match self.in_flight.as_mut() {
            Some(rx) => {
                let outcome = rx.await.ok();
                self.in_flight = None;
                self.in_flight_keys = 0;
                outcome
            }
            None => std::future::pending().await,
        }
    }

    /// Keys not written yet: dirty, or in the commit in flight.
    pub(super) fn unwritten(&self) -> usize {
        self.dirty.len() + self.in_flight_keys
    }

    /// Entries written by the commits that succeeded since start, and those commits.
    pub(super) fn written_total(&self) -> (u64, u64) {
        (self.written, self.commits)
    }

    pub(super) fn is_writing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The commit in flight ended.
    pub(super) fn done(&mut self, outcome: Option<Outcome>) {
        match outcome {
            Some((Ok(()), keys)) => {
                self.failures = 0;
                self.not_before = None;
                self.written += keys.len() as u64;
                self.commits += 1;
            }
            Some((Err(e), keys)) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = Duration::from_millis(50)
                    .saturating_mul(1 << self.failures.min(7))
                    .min(MAX_BACKOFF);
                tracing::error!(supervisor = %self.scope, error = %e, keys = keys.len(),
                    retry_in = ?backoff, "durable write failed; retrying");
                self.not_before = Some(Instant::now() + backoff);
                if self.dirty.is_empty() {
                    self.since = Some(Instant::now());
                }
                self.dirty.extend(keys);
            }
            // The blocking task panicked or was lost: its keys are unknown; the next touches
            // rewrite them. (redb does not panic on I/O errors.)
            None => {}
        }
    }

    /// Write everything dirty now and wait (the node shuts down).
    pub(super) async fn drain(&mut self, dir: &Directory) {
        if let Some(outcome) = self.in_flight.take() {
            let outcome = outcome.await.ok();
            self.in_flight_keys = 0;
            self.done(outcome);
        }
        self.not_before = None;
        while !self.dirty.is_empty() {
            self.flush(dir);
            let outcome = self.written().await;
            let failed = matches!(outcome, Some((Err(_), _)));
            self.done(outcome);
            if failed {
                return;
            }
        }
    }
}
