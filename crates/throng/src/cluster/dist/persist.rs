//! A durable supervisor's writer: the keys the directory touched ([`Host::touched`]) wait here
//! until the coalescing window ends, then their entries ([`Directory::durable`]) go to the node's
//! store in one group commit on a blocking thread, while the driver goes on. One commit is in
//! flight at a time; what is touched meanwhile waits for the next one. A failed commit keeps its
//! keys for the next attempt (after a back-off), so nothing touched is forgotten.
//!
//! In `Sync` mode ([`Durability::Sync`](super::Durability::Sync)) the window is zero and each
//! commit carries *marks*: for each key it writes, how far that child's snapshots got into the
//! directory when the entry was read (a [`Slot`]'s sequence number). Once the commit is durable
//! the slots release the call replies that waited for those snapshots; a failed commit carries
//! its marks to the next one that writes their keys.
//!
//! [`Host::touched`]: throng_core::driver::Host::touched

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use throng_core::directory::{Directory, DurableEntry, Generation};
use throng_core::NodeId;

use super::host::Slot;
use throng_store::{Store, StoreError, Write};
use tokio::sync::oneshot;
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_128;

/// At most this many keys go into one commit (the rest wait for the next one).
pub(super) const MAX_BATCH: usize = 8192;

/// The longest back-off after failed commits.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Outcome = (Result<(), StoreError>, Vec<String>);

/// A slot whose replies wait for a key's entry, and the snapshot number the entry holds.
pub(super) type Mark = (String, Arc<Slot>, u64);

/// Finds the marks of a key being written (`Sync` mode): the slots of its running and exited
/// children and their snapshot numbers.
pub(super) type Marker<'a> = &'a mut (dyn FnMut(&str, &mut Vec<(Arc<Slot>, u64)>) + Send);

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
    /// How many of them it writes to the store (the others are stored as they are).
    in_flight_writes: usize,
    /// Failed commits in a row (for the back-off).
    failures: u32,
    /// Not before this (after a failed commit).
    not_before: Option<Instant>,
    /// `Sync` mode: commits carry marks.
    sync: bool,
    /// The marks of the commit in flight.
    in_flight_marks: Vec<Mark>,
    /// Marks of failed commits, for the next commit that writes their keys.
    carried: Vec<Mark>,
    /// Entries (puts and deletes) in commits that succeeded, since start.
    written: u64,
    /// Commits that succeeded, since start.
    commits: u64,
    /// The store refused this node as fenced: why ([`Persister::fenced`]).
    fenced: Option<String>,
    /// The owners of the view to write ([`Persister::view`]), encoded, if it changed.
    view: Option<Vec<u8>>,
    /// The view the commit in flight writes.
    in_flight_view: Option<Vec<u8>>,
    /// The view last written (or read at start): an unchanged view is not written again.
    written_view: Option<Vec<u8>>,
    /// What the store held at start, by key (the 128-bit hash of the stored bytes), for the
    /// keys not written since: an entry that encodes to the bytes stored is not written again
    /// (after a restart the recovery touches every key, and most entries come back as they
    /// were). Only for a store of this node alone: in a shared one another node may delete
    /// this node's entries (a take-over). Shrinks as keys are written; at most the entries read.
    on_disk: HashMap<String, u128>,
}

/// What a previous run of this node kept for a supervisor ([`Persister::load`]).
pub(super) struct Loaded {
    /// Its durable entries.
    pub(super) entries: Vec<(String, DurableEntry)>,
    /// The owners of its last view written after its recovery, if any (a store written by an
    /// earlier build has none).
    pub(super) view: Option<Vec<NodeId>>,
}

/// The scope of a node's store where each durable supervisor keeps the owners of its view (the
/// key is the supervisor's name), so that after a restart it knows when every node it ran with
/// is back ([`Persister::view`]). No supervisor may be named so (refused at creation).
pub(crate) const VIEWS_SCOPE: &str = "\u{1}throng.views";

/// The format of a stored view: `0xFF`, this byte, then the owners' names in postcard.
const VIEW_FORMAT: u8 = 1;

/// A view's owners as stored (sorted by name, so that an unchanged view encodes the same).
fn encode_view(owners: &[NodeId]) -> Vec<u8> {
    let mut names: Vec<&str> = owners.iter().map(NodeId::as_str).collect();
    names.sort_unstable();
    names.dedup();
    postcard::to_extend(&names, vec![0xFF, VIEW_FORMAT]).unwrap_or_default()
}

/// A stored view; `None` for bytes of another format or damaged (never a panic).
fn decode_view(bytes: &[u8]) -> Option<Vec<NodeId>> {
    let [0xFF, VIEW_FORMAT, rest @ ..] = bytes else {
        return None;
    };
    let names: Vec<String> = postcard::from_bytes(rest).ok()?;
    names.iter().map(|n| NodeId::new(n).ok()).collect()
}

impl Persister {
    /// A writer of `scope`'s entries to `store`, coalescing for `max_lag`; `sync`: commits
    /// release the replies that wait for them.
    pub(crate) fn new(store: Arc<dyn Store>, scope: &str, max_lag: Duration, sync: bool) -> Self {
        Persister {
            store,
            scope: Arc::from(scope),
            max_lag,
            dirty: BTreeSet::new(),
            since: None,
            in_flight: None,
            in_flight_keys: 0,
            in_flight_writes: 0,
            failures: 0,
            not_before: None,
            sync,
            in_flight_marks: Vec::new(),
            carried: Vec::new(),
            written: 0,
            commits: 0,
            fenced: None,
            view: None,
            in_flight_view: None,
            written_view: None,
            on_disk: HashMap::new(),
        }
    }

    /// Every entry a previous run of this node kept for this supervisor, and the owners of its
    /// last view. An entry that does not decode is reported and skipped (the others come
    /// back); a view that does not decode is as none.
    pub(super) async fn load(&mut self) -> Result<Loaded, StoreError> {
        let store = self.store.clone();
        let scope = self.scope.clone();
        // Read and decoded on a blocking thread: tens of thousands of entries take a while.
        let (entries, view, on_disk) = tokio::task::spawn_blocking(move || {
            let raw = store.load(&scope)?;
            let on_disk: HashMap<String, u128> = if store.shared().is_none() {
                raw.iter().map(|(k, v)| (k.clone(), xxh3_128(v))).collect()
            } else {
                HashMap::new()
            };
            let view = store
                .load(VIEWS_SCOPE)?
                .into_iter()
                .find(|(k, _)| *k == *scope)
                .map(|(_, v)| v);
            let mut entries = Vec::with_capacity(raw.len());
            for (key, bytes) in raw {
                match decode_entry(&bytes) {
                    Ok(e) => entries.push((key, e)),
                    // Never read as empty: this supervisor refuses starts, saying why.
                    Err(EntryError::Newer(found)) => {
                        return Err(StoreError::NewerFormat {
                            store: store.location(),
                            found: u64::from(found),
                            supported: u64::from(ENTRY_FORMAT),
                        })
                    }
                    Err(e) => tracing::error!(
                        supervisor = %scope, key = %key, error = %e,
                        "a durable entry does not decode; it is skipped"
                    ),
                }
            }
            Ok((entries, view, on_disk))
        })
        .await
        .map_err(|e| StoreError::Io {
            store: self.store.location(),
            reason: format!("loading the store failed: {e}"),
        })??;
        let decoded = view.as_deref().and_then(decode_view);
        self.written_view = view;
        self.on_disk = on_disk;
        Ok(Loaded {
            entries,
            view: decoded,
        })
    }

    /// The owners of this supervisor's view are `owners` now: written with the next commit
    /// (within the coalescing window) unless unchanged.
    pub(super) fn view(&mut self, owners: &[NodeId]) {
        let bytes = encode_view(owners);
        let latest = self.view.as_ref().or(self.in_flight_view.as_ref());
        if latest.or(self.written_view.as_ref()) == Some(&bytes) {
            return;
        }
        if self.dirty.is_empty() && self.view.is_none() {
            self.since = Some(Instant::now());
        }
        self.view = Some(bytes);
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
        if self.in_flight.is_some() || (self.dirty.is_empty() && self.view.is_none()) {
            return None;
        }
        let at = if self.dirty.len() >= MAX_BATCH {
            Instant::now()
        } else {
            self.since? + self.max_lag
        };
        Some(self.not_before.map_or(at, |nb| at.max(nb)))
    }

    /// Start a commit of (up to [`MAX_BATCH`]) dirty keys' entries as `dir` holds them now;
    /// in `Sync` mode with the marks `marker` finds for them.
    pub(super) fn flush(&mut self, dir: &Directory, marker: Marker<'_>) {
        if self.in_flight.is_some() || (self.dirty.is_empty() && self.view.is_none()) {
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
        if self.sync {
            // `keys` is sorted (taken from a `BTreeSet` in order).
            let (mine, later): (Vec<Mark>, Vec<Mark>) = std::mem::take(&mut self.carried)
                .into_iter()
                .partition(|(k, _, _)| keys.binary_search(k).is_ok());
            self.carried = later;
            self.in_flight_marks = mine;
            let mut found = Vec::new();
            for k in &keys {
                marker(k, &mut found);
                self.in_flight_marks
                    .extend(found.drain(..).map(|(slot, seq)| (k.clone(), slot, seq)));
            }
            // One mark per slot and key (the highest): failed commits in a row do not pile up.
            self.in_flight_marks.sort_by(|a, b| {
                (&a.0, Arc::as_ptr(&a.1))
                    .cmp(&(&b.0, Arc::as_ptr(&b.1)))
                    .then(b.2.cmp(&a.2))
            });
            self.in_flight_marks
                .dedup_by(|a, b| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1));
        }
        // `None`: the store holds this entry already.
        let mut values: Vec<Option<Option<Vec<u8>>>> = Vec::with_capacity(keys.len());
        for k in &keys {
            let value = dir.durable(k).and_then(|e| match encode_entry(&e) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "a durable entry does not encode");
                    None
                }
            });
            let stored = match (&value, self.on_disk.get(k.as_str())) {
                (Some(v), Some(h)) => *h == xxh3_128(v),
                _ => false,
            };
            if !stored {
                // Written now: what the store holds of it is no longer known here.
                self.on_disk.remove(k.as_str());
            }
            values.push((!stored).then_some(value));
        }
        self.in_flight_writes = values.iter().filter(|v| v.is_some()).count();
        tracing::debug!(
            supervisor = %self.scope,
            keys = keys.len(),
            writes = self.in_flight_writes,
            "durable commit (entries stored as they are are not written)"
        );
        let store = self.store.clone();
        let scope = self.scope.clone();
        self.in_flight_view = self.view.take();
        let view = self.in_flight_view.clone();
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut writes: Vec<Write<'_>> = keys
                .iter()
                .zip(&values)
                .filter_map(|(key, v)| match v.as_ref()? {
                    Some(value) => Some(Write::Put {
                        scope: &scope,
                        key,
                        value,
                    }),
                    None => Some(Write::Delete { scope: &scope, key }),
                })
                .collect();
            writes.extend(view.as_deref().map(|value| Write::Put {
                scope: VIEWS_SCOPE,
                key: &scope,
                value,
            }));
            // Nothing to write (every entry as stored): the commit is done.
            let result = if writes.is_empty() {
                Ok(())
            } else {
                store.apply(&writes)
            };
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

    /// Why this node may no longer write, once the store refused it as fenced
    /// ([`StoreError::Fenced`]).
    pub(super) fn fenced(&self) -> Option<&str> {
        self.fenced.as_deref()
    }

    pub(super) fn is_writing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The commit in flight ended; returns the keys it wrote (none if it failed).
    pub(super) fn done(&mut self, outcome: Option<Outcome>) -> Vec<String> {
        match outcome {
            Some((Ok(()), keys)) => {
                if let Some(v) = self.in_flight_view.take() {
                    self.written_view = Some(v);
                }
                self.failures = 0;
                self.not_before = None;
                self.written += self.in_flight_writes as u64;
                self.commits += 1;
                for (_, slot, seq) in std::mem::take(&mut self.in_flight_marks) {
                    slot.durable(seq);
                }
                return keys;
            }
            Some((Err(e), keys)) => {
                if matches!(e, StoreError::Fenced { .. }) && self.fenced.is_none() {
                    // Said once; the keys stay dirty (and what waits on them, unanswered).
                    tracing::error!(supervisor = %self.scope, error = %e,
                        "durable writes refused: this node was fenced; new starts are refused");
                    self.fenced = Some(e.to_string());
                }
                self.failures = self.failures.saturating_add(1);
                let backoff = Duration::from_millis(50)
                    .saturating_mul(1 << self.failures.min(7))
                    .min(MAX_BACKOFF);
                tracing::error!(supervisor = %self.scope, error = %e, keys = keys.len(),
                    retry_in = ?backoff, "durable write failed; retrying");
                self.not_before = Some(Instant::now() + backoff);
                if self.dirty.is_empty() && self.view.is_none() {
                    self.since = Some(Instant::now());
                }
                // Written again with the next commit, unless a newer view replaced it.
                let failed_view = self.in_flight_view.take();
                self.view = self.view.take().or(failed_view);
                self.dirty.extend(keys);
                self.carried.append(&mut self.in_flight_marks);
            }
            // The blocking task panicked or was lost: its keys are unknown; the next touches
            // rewrite them (and release what waits for them). (redb does not panic on I/O
            // errors.)
            None => {
                self.carried.append(&mut self.in_flight_marks);
                let lost_view = self.in_flight_view.take();
                self.view = self.view.take().or(lost_view);
                if self.since.is_none() && self.view.is_some() {
                    self.since = Some(Instant::now());
                }
            }
        }
        Vec::new()
    }

    /// Write everything dirty now and wait (the node shuts down).
    pub(super) async fn drain(&mut self, dir: &Directory, marker: Marker<'_>) {
        if let Some(outcome) = self.in_flight.take() {
            let outcome = outcome.await.ok();
            self.in_flight_keys = 0;
            let _ = self.done(outcome);
        }
        self.not_before = None;
        while !self.dirty.is_empty() || self.view.is_some() {
            self.flush(dir, marker);
            let outcome = self.written().await;
            let failed = matches!(outcome, Some((Err(_), _)));
            let _ = self.done(outcome);
            if failed {
                return;
            }
        }
    }
}

/// The format of the durable entries this build writes: a two-byte header (`0xFF`, the format)
/// then the entry in postcard. Formats 3 (records without
/// [`Record::acked`](throng_core::directory::Record::acked)), 2 (without
/// [`Record::written_by`](throng_core::directory::Record::written_by) either) and 1 (no header,
/// records without [`Record::absorbed`](throng_core::directory::Record::absorbed) either) are
/// still read ([`old`]).
pub(super) const ENTRY_FORMAT: u8 = 4;

/// Why a durable entry could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EntryError {
    /// Written by a newer Throng.
    #[error("durable entry of format {0}, newer than this build's {ENTRY_FORMAT}")]
    Newer(u8),
    /// Not a durable entry of any format this build reads.
    #[error("damaged durable entry: {0}")]
    Damaged(#[from] postcard::Error),
}

/// A durable entry as stored.
pub(crate) fn encode_entry(entry: &DurableEntry) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(entry, vec![0xFF, ENTRY_FORMAT])
}

/// A stored durable entry, of this format or of an older one (a damaged store gives any bytes:
/// an error, never a panic).
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<DurableEntry, EntryError> {
    if let [0xFF, format, rest @ ..] = bytes {
        let read = match *format {
            ENTRY_FORMAT => postcard::from_bytes(rest).ok(),
            3 => old::read::<old::Format3>(rest),
            2 => old::read::<Vec<Generation>>(rest),
            f if f > ENTRY_FORMAT => return Err(EntryError::Newer(f)),
            _ => None,
        };
        if let Some(e) = read {
            return Ok(e);
        }
    }
    // Format 1 (a varint count of records first: never `0xFF` then a format for a real entry).
    Ok(postcard::from_bytes::<old::Entry<()>>(bytes)?.into())
}

/// The older formats of the durable entries: the record fields of format 1, then what each later
/// format added before this one ([`Tail`]: nothing for format 1, the absorbed generations for
/// format 2, and the writer for format 3).
mod old {
    use serde::Deserialize;
    use throng_core::directory::{DurableEntry, Generation, Record, Version, Writer};
    use throng_core::RestartPolicy;

    /// An entry of an older format.
    #[derive(Deserialize)]
    pub(super) struct Entry<T> {
        records: Vec<Rec<T>>,
        buried: Vec<Generation>,
    }

    #[derive(Deserialize)]
    struct Rec<T> {
        key: String,
        actor_type: String,
        args: Vec<u8>,
        policy: RestartPolicy,
        snapshot: Option<Vec<u8>>,
        version: Version,
        generation: Generation,
        tail: T,
    }

    /// What a format's records carry after format 1's fields.
    pub(super) trait Tail {
        /// Fills those fields of `r`.
        fn fill(self, r: &mut Record);
    }

    impl Tail for () {
        fn fill(self, _: &mut Record) {}
    }

    /// Format 2: the absorbed generations.
    impl Tail for Vec<Generation> {
        fn fill(self, r: &mut Record) {
            r.absorbed = self.into();
        }
    }

    /// Format 3: the absorbed generations and the writer.
    pub(super) type Format3 = (Vec<Generation>, Option<Writer>);

    impl Tail for Format3 {
        fn fill(self, r: &mut Record) {
            let (absorbed, written_by) = self;
            r.absorbed = absorbed.into();
            r.written_by = written_by;
        }
    }

    /// An entry of the older format whose tail is `T`, if `bytes` is one.
    pub(super) fn read<T: Tail + for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<DurableEntry> {
        postcard::from_bytes::<Entry<T>>(bytes).ok().map(Into::into)
    }

    impl<T: Tail> From<Entry<T>> for DurableEntry {
        fn from(e: Entry<T>) -> Self {
            let records = e
                .records
                .into_iter()
                .map(|r| {
                    let mut record = Record {
                        key: r.key,
                        actor_type: r.actor_type,
                        args: r.args,
                        policy: r.policy,
                        snapshot: r.snapshot,
                        version: r.version,
                        generation: r.generation,
                        absorbed: Default::default(),
                        written_by: None,
                        acked: Version::INITIAL,
                    };
                    r.tail.fill(&mut record);
                    // What a backup acknowledged was not kept: taken as the version, which
                    // orders these records as the build that wrote them did (by version).
                    record.acked = record.version;
                    record
                })
                .collect();
            DurableEntry {
                records,
                buried: e.buried,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use throng_core::directory::{Epoch, Record, StartSpec, Version, Writer};
    use throng_core::RestartPolicy;

    fn entry() -> DurableEntry {
        let spec = StartSpec {
            key: "k".into(),
            actor_type: "t".into(),
            args: vec![1],
            policy: RestartPolicy::Permanent,
        };
        let mut r = Record::new(spec, Generation::new(7).expect("not 0"));
        r.snapshot = Some(vec![9, 9]);
        r.absorbed = vec![Generation::new(3).expect("not 0")].into();
        r.write(
            Version::new(4),
            Writer::of(&NodeId::new("n2").expect("valid"), Epoch(11, 3)),
        );
        r.acknowledged(Version::new(3));
        DurableEntry {
            records: vec![r],
            buried: vec![Generation::new(5).expect("not 0")],
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let e = entry();
        let bytes = encode_entry(&e).expect("encodes");
        assert_eq!(&bytes[..2], &[0xFF, ENTRY_FORMAT]);
        assert_eq!(decode_entry(&bytes).expect("decodes"), e);
    }

    /// A record as an older build wrote it: the fields of format 1, then `tail` (nothing for
    /// format 1 — `()` encodes to no bytes — and the absorbed generations for format 2).
    #[derive(serde::Serialize)]
    struct OldRec<'a, T> {
        key: &'a str,
        actor_type: &'a str,
        args: &'a [u8],
        policy: RestartPolicy,
        snapshot: Option<&'a [u8]>,
        version: u64,
        generation: u64,
        tail: T,
    }

    #[derive(serde::Serialize)]
    struct OldEntry<'a, T> {
        records: Vec<OldRec<'a, T>>,
        buried: Vec<u64>,
    }

    /// [`entry`] as an older build wrote it, at `version`, with `tail`.
    fn old_entry<T>(version: u64, tail: T) -> OldEntry<'static, T> {
        OldEntry {
            records: vec![OldRec {
                key: "k",
                actor_type: "t",
                args: &[1],
                policy: RestartPolicy::Permanent,
                snapshot: Some(&[9, 9]),
                version,
                generation: 7,
                tail,
            }],
            buried: vec![5],
        }
    }

    #[test]
    fn an_entry_of_format_3_is_read_as_acknowledged_up_to_its_version() {
        // Written by the build before `acked`: header `0xFF 3`, records with their writer.
        let writer = entry().records[0].written_by.map(|w| w.get());
        let old = old_entry(4, (vec![3u64], writer));
        let bytes = postcard::to_extend(&old, vec![0xFF, 3]).expect("encodes");
        let mut want = entry();
        want.records[0].acked = want.records[0].version;
        assert_eq!(decode_entry(&bytes).expect("decodes"), want);
    }

    #[test]
    fn an_entry_of_format_2_is_read_without_its_writer() {
        // Written by the build before `written_by`: header `0xFF 2`, records with `absorbed`.
        let old = old_entry(4, vec![3u64]);
        let bytes = postcard::to_extend(&old, vec![0xFF, 2]).expect("encodes");
        let mut want = entry();
        want.records[0].written_by = None;
        want.records[0].acked = want.records[0].version;
        assert_eq!(decode_entry(&bytes).expect("decodes"), want);
    }

    #[test]
    fn an_entry_of_format_1_is_read() {
        // Written by the build before that: no header, records without `absorbed`.
        let bytes = postcard::to_allocvec(&old_entry(0, ())).expect("encodes");
        let mut want = entry();
        want.records[0].absorbed.clear();
        want.records[0].version = Version::INITIAL;
        want.records[0].written_by = None;
        want.records[0].acked = want.records[0].version;
        assert_eq!(decode_entry(&bytes).expect("decodes"), want);
    }

    #[test]
    fn a_view_reads_back_sorted_and_other_bytes_are_no_view() {
        let ids: Vec<NodeId> = ["n2", "n1", "n3"]
            .iter()
            .map(|n| NodeId::new(n).expect("valid"))
            .collect();
        let bytes = encode_view(&ids);
        assert_eq!(&bytes[..2], &[0xFF, VIEW_FORMAT]);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(decode_view(&bytes), Some(sorted));
        assert_eq!(
            encode_view(&ids[..2]),
            encode_view(&[ids[1].clone(), ids[0].clone()])
        );
        assert_eq!(decode_view(&[0xFF, VIEW_FORMAT + 1, 0]), None);
        assert_eq!(
            decode_view(&[0xFF, VIEW_FORMAT, 1, 0]),
            None,
            "an empty name"
        );
        assert_eq!(decode_view(&[0xFF, VIEW_FORMAT, 9]), None, "cut short");
        assert_eq!(decode_view(&[]), None);
    }

    #[test]
    fn an_entry_of_a_newer_format_is_refused_and_garbage_is_damaged() {
        assert!(matches!(
            decode_entry(&[0xFF, ENTRY_FORMAT + 1, 0]),
            Err(EntryError::Newer(f)) if f == ENTRY_FORMAT + 1
        ));
        assert!(matches!(
            decode_entry(&[0x05, 0xFF]),
            Err(EntryError::Damaged(_))
        ));
    }
}
