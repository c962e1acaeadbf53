//! Where a Throng node keeps the records of its children across restarts.
//!
//! A [`Store`] holds opaque entries by *scope* (a distributed supervisor's name) and *key* (a
//! child's key): the node's runtime decides what an entry holds (the directory's durable view of
//! the key: the record it runs, the copies it backs up, the generations it buried) and when to
//! write it; the store only makes a batch of writes atomic and durable, and lists a scope's
//! entries at start-up.
//!
//! [`RedbStore`] is the embedded default: one [redb](https://docs.rs/redb) file per node under
//! its data directory, written in group commits (one fsync per batch). The file records the
//! format version and the node it belongs to, so a data directory of another node, a file from a
//! newer Throng, or a damaged file is refused with an error that names it — never opened as an
//! empty store.
//!
//! [`PgStore`] keeps the entries of every node in one PostgreSQL database, each row owned by its
//! node: a node's disk can be lost without its records, and a survivor can read a dead node's
//! records ([`PgStore::load_all`]).
//!
//! This crate does no async I/O: a batch blocks until it is durable, so the runtime calls it from
//! a blocking thread (`tokio::task::spawn_blocking`) and coalesces writes while one is in flight.
//!
//! ```
//! use throng_store::{RedbStore, Store, Write};
//!
//! # fn main() -> Result<(), throng_store::StoreError> {
//! let dir = std::env::temp_dir().join(format!("throng-store-doc-{}", std::process::id()));
//! let store = RedbStore::open(&dir, "n1")?;
//! store.apply(&[Write::Put { scope: "counters", key: "c-1", value: b"7" }])?;
//! assert_eq!(store.load("counters")?, vec![("c-1".to_string(), b"7".to_vec())]);
//! # drop(store);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

mod postgres;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

pub use crate::postgres::{
    redact_url, PgStore, CONNECT_TIMEOUT, MAX_NAMES, NODE_LOCK_WAIT, PG_FORMAT,
};

/// The on-disk format this build writes and reads. A file with a higher format is refused
/// ([`StoreError::NewerFormat`]); a lower one would be migrated here when there is one.
pub const FORMAT: u64 = 1;

/// The file name of the embedded store inside a node's data directory.
pub const FILE_NAME: &str = "throng.redb";

/// The largest scope (supervisor name) an entry key can carry, in bytes.
pub const MAX_SCOPE: usize = u16::MAX as usize;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_NODE: &str = "node";

/// Where a store lives, as its errors name it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// The embedded store's file, under the node's `data_dir` (`THRONG_DATA_DIR`).
    File(PathBuf),
    /// A PostgreSQL database (`store_url`, `THRONG_STORE_URL`): its URL without the password
    /// ([`redact_url`]).
    Database(String),
}

impl Location {
    /// The setting that chooses this store: `data_dir` or `store_url`.
    pub fn setting(&self) -> &'static str {
        match self {
            Location::File(_) => "data_dir",
            Location::Database(_) => "store_url",
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Database(url) => f.write_str(url),
        }
    }
}

/// Why a store could not be opened, written or read. Every variant names the file, database or
/// setting at fault; a database URL is always shown without its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be created or is not a directory.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory (the node's `data_dir` / `THRONG_DATA_DIR`).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store exists but cannot be read as a Throng store (damaged, truncated, or not a
    /// store at all).
    #[error("store {store} is damaged or not a Throng store: {reason}")]
    Corrupt {
        /// The file or database.
        store: Location,
        /// What the engine reported.
        reason: String,
    },
    /// The store belongs to another node: data directories are per node.
    #[error(
        "store {path} belongs to node {found:?}, not {expected:?}: give each node its own data_dir"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The node named in the file.
        found: String,
        /// The node opening it.
        expected: String,
    },
    /// The store was written by a newer Throng, in a format this build cannot read.
    #[error("store {store} has format {found}, newer than {supported} (this build): upgrade Throng or point {} at a fresh store", .store.setting())]
    NewerFormat {
        /// The file or database.
        store: Location,
        /// The store's format.
        found: u64,
        /// The newest format this build reads ([`FORMAT`] for a file, [`PG_FORMAT`] for a
        /// database).
        supported: u64,
    },
    /// Another process holds the store open for this node: a second process started with the
    /// same node name (and, for a file, the same data_dir).
    #[error(
        "store {store} is in use by another process for node {node:?}: is that node running twice?"
    )]
    InUse {
        /// The file or database.
        store: Location,
        /// The node.
        node: String,
    },
    /// A scope name longer than [`MAX_SCOPE`] bytes.
    #[error("scope name of {0} bytes is longer than {MAX_SCOPE}")]
    ScopeTooLong(usize),
    /// An entry the store cannot hold (PostgreSQL: a NUL character in the scope or key, or
    /// names longer than [`MAX_NAMES`] bytes together); nothing of its batch is written.
    #[error("entry {key:?} of scope {scope:?} cannot be stored: {why}")]
    Unstorable {
        /// The scope.
        scope: String,
        /// The key.
        key: String,
        /// Why.
        why: &'static str,
    },
    /// `store_url` is not a PostgreSQL URL or connection string.
    #[error("invalid `store_url` (THRONG_STORE_URL): {reason}")]
    BadUrl {
        /// What the parser reported.
        reason: String,
    },
    /// The database could not be connected to when the store was opened (down, unreachable
    /// within [`CONNECT_TIMEOUT`], credentials or database refused).
    #[error(
        "cannot connect to the store database {url} (`store_url` / THRONG_STORE_URL): {reason}"
    )]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// What the client reported.
        reason: String,
    },
    /// Another node took over this node's entries while this process was cut off from the
    /// cluster and from the shared store ([`SharedStore::fence`]): this process may no longer
    /// write them (what it would write could overwrite what the other node recovered and runs).
    /// Restart the node: the new process recovers what is left of its entries.
    #[error("store {store}: node {node:?}'s entries were taken over by another node while this process was cut off; it may no longer write them: restart the node")]
    Fenced {
        /// The database.
        store: Location,
        /// The node.
        node: String,
    },
    /// A read or a commit failed (disk full, I/O error, connection to the database lost): the
    /// caller may try again; a lost connection is opened again by the next call.
    #[error("store {store}: {reason}")]
    Io {
        /// The file or database.
        store: Location,
        /// What the engine reported.
        reason: String,
    },
}

/// One write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// Set the entry of `key` in `scope` to `value`.
    Put {
        /// The supervisor.
        scope: &'a str,
        /// The child's key.
        key: &'a str,
        /// The entry.
        value: &'a [u8],
    },
    /// Remove the entry of `key` in `scope` (nothing if there is none).
    Delete {
        /// The supervisor.
        scope: &'a str,
        /// The child's key.
        key: &'a str,
    },
}

/// A node's durable entries.
pub trait Store: Send + Sync + 'static {
    /// Apply `writes` in order, atomically: when this returns `Ok`, all of them are durable;
    /// when it returns an error, none is.
    fn apply(&self, writes: &[Write<'_>]) -> Result<(), StoreError>;

    /// Every entry of `scope`, as `(key, value)`, in key order (of the keys' bytes).
    fn load(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Where the store lives (for errors and logs).
    fn location(&self) -> Location;

    /// The store as one the nodes of a cluster share (a database), where a node may take over
    /// what a node that is gone kept; `None` for a store of this node alone.
    fn shared(&self) -> Option<&dyn SharedStore> {
        None
    }
}

/// A store the nodes of a cluster share: what a node kept stays readable by the others when it
/// is gone, so they can take its entries over (a double failure loses nothing durable).
pub trait SharedStore: Send + Sync {
    /// The nodes other than this one that keep entries in `scope`.
    fn other_nodes(&self, scope: &str) -> Result<Vec<String>, StoreError>;

    /// Every entry `node` keeps in `scope`, as `(key, value)`, in key order.
    fn load_of(&self, node: &str, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Fences `node` before its entries are taken over: from now on a process of `node` that
    /// opened the store before this call can no longer write ([`StoreError::Fenced`]), so what
    /// is read of its entries after this call is what it last wrote. Refused with
    /// [`StoreError::InUse`] while a process of `node` holds the store open (its connection to
    /// the database is alive: the node is cut off from this one, not gone).
    fn fence(&self, node: &str) -> Result<(), StoreError>;

    /// Deletes the entries of `node` in `scope` that still hold exactly the values in
    /// `entries` (this node took them over and wrote them as its own); an entry `node` wrote
    /// again meanwhile stays.
    fn forget_taken(
        &self,
        node: &str,
        scope: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError>;
}

/// The embedded store: one redb file in the node's data directory.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Open the store of node `node` in `dir` (created if missing), or create it empty.
    ///
    /// Refuses a store of another node ([`StoreError::Foreign`]), of a newer format
    /// ([`StoreError::NewerFormat`]), a damaged file ([`StoreError::Corrupt`]) and one held
    /// open by another process ([`StoreError::InUse`]).
    pub fn open(dir: &Path, node: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                store: Location::File(path.clone()),
                node: node.to_owned(),
            },
            e => StoreError::Corrupt {
                store: Location::File(path.clone()),
                reason: e.to_string(),
            },
        })?;
        let store = RedbStore { db, path };
        store.check_meta(node)?;
        Ok(store)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            store: self.location(),
            reason: e.to_string(),
        }
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            store: self.location(),
            reason: e.to_string(),
        }
    }

    /// Stamp a new store with the format and the node; check an existing one's.
    fn check_meta(&self, node: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.corrupt(e))?;
            let format = meta
                .get(META_FORMAT)
                .map_err(|e| self.corrupt(e))?
                .map(|v| v.value().to_vec());
            let owner = meta
                .get(META_NODE)
                .map_err(|e| self.corrupt(e))?
                .map(|v| v.value().to_vec());
            match (format, owner) {
                (None, None) => {
                    meta.insert(META_FORMAT, FORMAT.to_be_bytes().as_slice())
                        .map_err(|e| self.io(e))?;
                    meta.insert(META_NODE, node.as_bytes())
                        .map_err(|e| self.io(e))?;
                }
                (Some(format), Some(owner)) => {
                    let format: [u8; 8] = format
                        .as_slice()
                        .try_into()
                        .map_err(|_| self.corrupt("format stamp is not 8 bytes"))?;
                    let found = u64::from_be_bytes(format);
                    if found > FORMAT {
                        return Err(StoreError::NewerFormat {
                            store: self.location(),
                            found,
                            supported: FORMAT,
                        });
                    }
                    if owner != node.as_bytes() {
                        return Err(StoreError::Foreign {
                            path: self.path.clone(),
                            found: String::from_utf8_lossy(&owner).into_owned(),
                            expected: node.to_owned(),
                        });
                    }
                }
                _ => return Err(self.corrupt("the format or node stamp is missing")),
            }
            tx.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
        }
        tx.commit().map_err(|e| self.io(e))
    }
}

/// The entry key: the scope's length (u16, big-endian), the scope, the key. Injective, and a
/// scope's entries are one contiguous range.
fn entry_key(scope: &str, key: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = scope_prefix(scope)?;
    k.extend_from_slice(key.as_bytes());
    Ok(k)
}

fn scope_prefix(scope: &str) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(scope.len()).map_err(|_| StoreError::ScopeTooLong(scope.len()))?;
    let mut k = Vec::with_capacity(2 + scope.len() + 32);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(scope.as_bytes());
    Ok(k)
}

impl Store for RedbStore {
    fn location(&self) -> Location {
        Location::File(self.path.clone())
    }

    fn apply(&self, writes: &[Write<'_>]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut t = tx.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
            for w in writes {
                match *w {
                    Write::Put { scope, key, value } => {
                        t.insert(entry_key(scope, key)?.as_slice(), value)
                            .map_err(|e| self.io(e))?;
                    }
                    Write::Delete { scope, key } => {
                        t.remove(entry_key(scope, key)?.as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }

    fn load(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = scope_prefix(scope)?;
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let t = tx.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
        let mut out = Vec::new();
        for entry in t.range(prefix.as_slice()..).map_err(|e| self.corrupt(e))? {
            let (k, v) = entry.map_err(|e| self.corrupt(e))?;
            let Some(key) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            let key = std::str::from_utf8(key)
                .map_err(|_| self.corrupt("an entry key is not UTF-8"))?
                .to_owned();
            out.push((key, v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "throng-store-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn put<'a>(scope: &'a str, key: &'a str, value: &'a [u8]) -> Write<'a> {
        Write::Put { scope, key, value }
    }

    #[test]
    fn entries_survive_a_reopen_and_stay_in_their_scope() {
        let dir = TempDir::new("reopen");
        {
            let s = RedbStore::open(&dir.0, "n1").unwrap();
            s.apply(&[
                put("a", "k1", b"1"),
                put("a", "k2", b"2"),
                put("ab", "k1", b"other scope"),
                put("", "k", b"empty scope"),
            ])
            .unwrap();
            s.apply(&[
                Write::Delete {
                    scope: "a",
                    key: "k2",
                },
                put("a", "k3", b"3"),
            ])
            .unwrap();
        }
        let s = RedbStore::open(&dir.0, "n1").unwrap();
        assert_eq!(
            s.load("a").unwrap(),
            vec![("k1".into(), b"1".to_vec()), ("k3".into(), b"3".to_vec())]
        );
        assert_eq!(
            s.load("ab").unwrap(),
            vec![("k1".into(), b"other scope".to_vec())]
        );
        assert_eq!(
            s.load("").unwrap(),
            vec![("k".into(), b"empty scope".to_vec())]
        );
        assert!(s.load("b").unwrap().is_empty());
    }

    #[test]
    fn a_store_of_another_node_is_refused_by_name() {
        let dir = TempDir::new("foreign");
        drop(RedbStore::open(&dir.0, "n1").unwrap());
        let err = RedbStore::open(&dir.0, "n2").unwrap_err();
        assert!(
            matches!(&err, StoreError::Foreign { found, expected, .. } if found == "n1" && expected == "n2"),
            "{err}"
        );
        assert!(err.to_string().contains("data_dir"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_refused_not_opened_empty() {
        let dir = TempDir::new("corrupt");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join(FILE_NAME), vec![0x5a; 64 * 1024]).unwrap();
        let err = RedbStore::open(&dir.0, "n1").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = TempDir::new("newer");
        {
            let s = RedbStore::open(&dir.0, "n1").unwrap();
            let tx = s.db.begin_write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                meta.insert(META_FORMAT, (FORMAT + 1).to_be_bytes().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let err = RedbStore::open(&dir.0, "n1").unwrap_err();
        assert!(
            matches!(err, StoreError::NewerFormat { found, .. } if found == FORMAT + 1),
            "{err}"
        );
    }

    #[test]
    fn a_store_open_elsewhere_is_refused() {
        let dir = TempDir::new("inuse");
        let _first = RedbStore::open(&dir.0, "n1").unwrap();
        let err = RedbStore::open(&dir.0, "n1").unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_refused() {
        let dir = TempDir::new("file");
        std::fs::write(&dir.0, b"not a directory").unwrap();
        let err = RedbStore::open(&dir.0, "n1").unwrap_err();
        assert!(matches!(err, StoreError::Dir { .. }), "{err}");
        let _ = std::fs::remove_file(&dir.0);
    }

    #[test]
    fn a_scope_too_long_is_an_error_and_the_batch_is_not_applied() {
        let dir = TempDir::new("long");
        let s = RedbStore::open(&dir.0, "n1").unwrap();
        let long = "s".repeat(MAX_SCOPE + 1);
        let err = s
            .apply(&[put("a", "k", b"v"), put(&long, "k", b"v")])
            .unwrap_err();
        assert!(matches!(err, StoreError::ScopeTooLong(_)), "{err}");
        assert!(
            s.load("a").unwrap().is_empty(),
            "a failed batch leaves nothing"
        );
    }
}
