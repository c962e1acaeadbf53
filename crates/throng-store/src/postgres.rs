//! [`PgStore`]: the entries of every node in one PostgreSQL database.
//!
//! Each row belongs to a node (`throng_entries(node, scope, key, value)`), so nodes sharing the
//! database never see each other's rows through [`Store`]; [`PgStore::load_all`] reads every
//! node's (a survivor recovering a dead node's children). A node name is held by one process at
//! a time: the store takes a session-level advisory lock keyed by the node's name, so a second
//! process opening the same node is refused ([`StoreError::InUse`]) instead of writing over the
//! first one's rows.
//!
//! The schema is Throng's: created, checked and migrated on open inside a transaction that holds
//! an advisory lock, so nodes opening at once do not race. `throng_meta` records the schema
//! format ([`PG_FORMAT`]); a newer one is refused, an older one migrated.
//!
//! Fencing: `throng_fences(node, epoch)`. A process reads its node's epoch when it opens the
//! store, and every batch it writes checks, in its transaction, that the epoch is still that one
//! (`FOR SHARE`: a concurrent fence waits for the batch, or the batch for the fence). A node
//! taking over a gone node's entries first fences it ([`SharedStore::fence`]: the epoch goes up,
//! only while no process holds the gone node's lock), so a process of that node that was only
//! cut off — and comes back to the database later — cannot write over what was taken over.
//!
//! The client is the synchronous `postgres` crate behind a mutex: like the rest of this crate a
//! call blocks until the database answered, and the runtime makes it from a blocking thread. A
//! batch is one transaction of at most two statements (upserts, then deletes, each taking its
//! rows as arrays through `unnest`), so a group commit costs one round trip per statement,
//! whatever its size. A lost connection fails the call in flight ([`StoreError::Io`]) and is
//! opened again, with the node's lock, by the next call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, Config, NoTls, Row, Statement};

use crate::{Location, SharedStore, Store, StoreError, Write};

/// The schema format this build writes and reads in `throng_meta`. A database with a higher one
/// is refused ([`StoreError::NewerFormat`]); a lower one would be migrated on open.
///
/// Format 2 added `throng_fences`; a format-1 database gets it on open.
pub const PG_FORMAT: u64 = 2;

/// How long opening a connection to the database may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening the store waits for the node's lock before refusing it as in use. A node
/// restarted right after a crash waits here until the server has closed the dead process's
/// connection (at once when the process died and its host lives; after the server's TCP
/// keepalive when the host died: set `tcp_keepalives_idle` on the server accordingly).
pub const NODE_LOCK_WAIT: Duration = Duration::from_secs(3);

/// The most bytes a node's name, a scope and a key may have together: the primary key's index
/// holds them, and PostgreSQL's B-tree refuses entries over about 2.7 KB.
pub const MAX_NAMES: usize = 2000;

/// The longest a statement may run before the server cancels it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// TCP keepalive and user timeout: a dead server or a cut network fails the call in flight
/// instead of blocking the writer for ever.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

const CREATE_META: &str = "CREATE TABLE throng_meta (
    name text COLLATE \"C\" PRIMARY KEY,
    value text NOT NULL
)";

/// `COLLATE "C"`: keys sort by their bytes (as in the embedded store), whatever the database's
/// locale, and the primary key's index serves `load` in that order.
const CREATE_ENTRIES: &str = "CREATE TABLE throng_entries (
    node text COLLATE \"C\" NOT NULL,
    scope text COLLATE \"C\" NOT NULL,
    key text COLLATE \"C\" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (node, scope, key)
)";

const CREATE_FENCES: &str = "CREATE TABLE throng_fences (
    node text COLLATE \"C\" PRIMARY KEY,
    epoch bigint NOT NULL
)";

/// This process's node gets its row (epoch 0) if it has none; its epoch.
const FENCE_READ: &str = "INSERT INTO throng_fences (node, epoch) VALUES ($1::text, 0)
    ON CONFLICT (node) DO UPDATE SET epoch = throng_fences.epoch RETURNING epoch";

/// In a batch's transaction: the node's epoch, held against a fence until the commit.
const FENCE_CHECK: &str = "SELECT epoch FROM throng_fences WHERE node = $1::text FOR SHARE";

const FENCE_BUMP: &str = "INSERT INTO throng_fences (node, epoch) VALUES ($1::text, 1)
    ON CONFLICT (node) DO UPDATE SET epoch = throng_fences.epoch + 1";

const UPSERT: &str = "INSERT INTO throng_entries (node, scope, key, value)
    SELECT $1::text, w.s, w.k, w.v FROM unnest($2::text[], $3::text[], $4::bytea[]) AS w(s, k, v)
    ON CONFLICT (node, scope, key) DO UPDATE SET value = EXCLUDED.value";

const DELETE: &str = "DELETE FROM throng_entries AS e
    USING unnest($2::text[], $3::text[]) AS w(s, k)
    WHERE e.node = $1::text AND e.scope = w.s AND e.key = w.k";

const LOAD: &str =
    "SELECT key, value FROM throng_entries WHERE node = $1::text AND scope = $2::text ORDER BY key";

const LOAD_ALL: &str =
    "SELECT node, key, value FROM throng_entries WHERE scope = $1::text ORDER BY node, key";

const OTHER_NODES: &str =
    "SELECT DISTINCT node FROM throng_entries WHERE scope = $2::text AND node <> $1::text";

const FORGET: &str = "DELETE FROM throng_entries AS e
    USING unnest($3::text[], $4::bytea[]) AS w(k, v)
    WHERE e.node = $1::text AND e.scope = $2::text AND e.key = w.k AND e.value = w.v";

/// The advisory lock held while the schema is created or migrated (any node, any process).
fn schema_lock_key() -> i64 {
    i64::from_be_bytes(xxhash_rust::xxh3::xxh3_64(b"throng-store/schema").to_be_bytes())
}

/// The session-level advisory lock that makes a node's name one process's at a time.
fn node_lock_key(node: &str) -> i64 {
    let mut name = b"throng-store/node/".to_vec();
    name.extend_from_slice(node.as_bytes());
    i64::from_be_bytes(xxhash_rust::xxh3::xxh3_64(&name).to_be_bytes())
}

/// One connection: the client, holding the node's lock, and its prepared statements.
struct Conn {
    client: Client,
    st: Statements,
}

struct Statements {
    fence_check: Statement,
    upsert: Statement,
    delete: Statement,
    load: Statement,
    load_all: Statement,
    other_nodes: Statement,
    forget: Statement,
}

/// A node's entries in a PostgreSQL database shared by every node of the cluster.
///
/// The database must exist, be UTF-8 encoded (the default) and let the user create tables in
/// its schema on the first open (or have Throng's tables already). The connection has no TLS:
/// use it over a trusted network or a Unix socket.
pub struct PgStore {
    config: Config,
    /// The URL without its password, for every message.
    url: String,
    node: String,
    lock_key: i64,
    /// The node's fencing epoch when this process opened the store: its batches are refused
    /// once it changed ([`StoreError::Fenced`]).
    epoch: i64,
    /// `None` after a failure: the next call connects again.
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .field("node", &self.node)
            .finish()
    }
}

impl PgStore {
    /// Open the store of node `node` in the database at `url` (a `postgres://` URL or a
    /// `key=value` connection string), creating Throng's tables on first use.
    ///
    /// Refuses a URL that does not parse ([`StoreError::BadUrl`]), a database that cannot be
    /// connected to within [`CONNECT_TIMEOUT`] ([`StoreError::Unreachable`]), a schema of a newer
    /// format ([`StoreError::NewerFormat`]), and a node another process holds open (after
    /// waiting [`NODE_LOCK_WAIT`] for it: [`StoreError::InUse`]). Blocks: call it from a blocking
    /// thread, not from a tokio worker.
    pub fn open(url: &str, node: &str) -> Result<Self, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::BadUrl { reason: reason(&e) })?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name(&format!("throng {node}"));
        }
        let mut store = PgStore {
            config,
            url: redact_url(url),
            node: node.to_owned(),
            lock_key: node_lock_key(node),
            epoch: 0,
            conn: Mutex::new(None),
        };
        let mut client = store
            .config
            .connect(NoTls)
            .map_err(|e| StoreError::Unreachable {
                url: store.url.clone(),
                reason: reason(&e),
            })?;
        if let Err(e) = store.migrate(&mut client) {
            discard(client);
            return Err(e);
        }
        let mut conn = store.session(client)?;
        // Read with the node's lock held: no fence of this node can be under way.
        match conn.client.query_one(FENCE_READ, &[&store.node]) {
            Ok(row) => store.epoch = store.column(&row, 0)?,
            Err(e) => {
                discard(conn);
                return Err(store.io(reason(&e)));
            }
        }
        *store.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        Ok(store)
    }

    /// The database's URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every node's entries of `scope`, as `(node, key, value)`, by node then key.
    pub fn load_all(&self, scope: &str) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let rows = self.with_conn(|c| c.client.query(&c.st.load_all, &[&scope]))?;
        rows.iter()
            .map(|r| {
                Ok((
                    self.column(r, 0)?,
                    self.column(r, 1)?,
                    self.column::<Vec<u8>>(r, 2)?,
                ))
            })
            .collect()
    }

    fn column<T: for<'a> ::postgres::types::FromSql<'a>>(
        &self,
        row: &Row,
        i: usize,
    ) -> Result<T, StoreError> {
        row.try_get(i).map_err(|e| StoreError::Corrupt {
            store: self.location(),
            reason: reason(&e),
        })
    }

    fn io(&self, reason: String) -> StoreError {
        StoreError::Io {
            store: self.location(),
            reason,
        }
    }

    /// Create Throng's tables in a new database, check (and migrate) an existing one's format.
    fn migrate(&self, client: &mut Client) -> Result<(), StoreError> {
        let io = |e: ::postgres::Error| self.io(reason(&e));
        let mut tx = client.transaction().map_err(io)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema_lock_key()])
            .map_err(io)?;
        let exists = tx
            .query_one("SELECT to_regclass('throng_meta') IS NOT NULL", &[])
            .map_err(io)?;
        if !self.column::<bool>(&exists, 0)? {
            tx.batch_execute(CREATE_META).map_err(io)?;
        }
        let format = tx
            .query_opt("SELECT value FROM throng_meta WHERE name = 'format'", &[])
            .map_err(io)?;
        match format {
            None => {
                tx.batch_execute(CREATE_ENTRIES).map_err(io)?;
                tx.batch_execute(CREATE_FENCES).map_err(io)?;
                tx.execute(
                    "INSERT INTO throng_meta (name, value) VALUES ('format', $1)",
                    &[&PG_FORMAT.to_string()],
                )
                .map_err(io)?;
            }
            Some(row) => {
                let text: String = self.column(&row, 0)?;
                let found: u64 = text.parse().map_err(|_| StoreError::Corrupt {
                    store: self.location(),
                    reason: format!("throng_meta's format {text:?} is not a number"),
                })?;
                if found > PG_FORMAT {
                    return Err(StoreError::NewerFormat {
                        store: self.location(),
                        found,
                        supported: PG_FORMAT,
                    });
                }
                if found < 2 {
                    tx.batch_execute(CREATE_FENCES).map_err(io)?;
                }
                if found < PG_FORMAT {
                    tx.execute(
                        "UPDATE throng_meta SET value = $1 WHERE name = 'format'",
                        &[&PG_FORMAT.to_string()],
                    )
                    .map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)
    }

    /// Make a fresh connection this node's: bound its statements, take the node's lock, prepare
    /// the statements.
    fn session(&self, mut client: Client) -> Result<Conn, StoreError> {
        match self.prepare(&mut client) {
            Ok(st) => Ok(Conn { client, st }),
            Err(e) => {
                discard(client);
                Err(e)
            }
        }
    }

    fn prepare(&self, client: &mut Client) -> Result<Statements, StoreError> {
        let io = |e: ::postgres::Error| self.io(reason(&e));
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}; SET lock_timeout = {}",
                STATEMENT_TIMEOUT.as_millis(),
                NODE_LOCK_WAIT.as_millis()
            ))
            .map_err(io)?;
        match client.execute("SELECT pg_advisory_lock($1)", &[&self.lock_key]) {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                return Err(StoreError::InUse {
                    store: self.location(),
                    node: self.node.clone(),
                })
            }
            Err(e) => return Err(io(e)),
        }
        client.batch_execute("RESET lock_timeout").map_err(io)?;
        Ok(Statements {
            fence_check: client.prepare(FENCE_CHECK).map_err(io)?,
            upsert: client.prepare(UPSERT).map_err(io)?,
            delete: client.prepare(DELETE).map_err(io)?,
            load: client.prepare(LOAD).map_err(io)?,
            load_all: client.prepare(LOAD_ALL).map_err(io)?,
            other_nodes: client.prepare(OTHER_NODES).map_err(io)?,
            forget: client.prepare(FORGET).map_err(io)?,
        })
    }

    /// Run `op` on the connection, connecting again first if the last one failed. A failed
    /// `op` drops the connection (and with it the node's lock and any transaction).
    fn with_conn<T>(
        &self,
        op: impl FnOnce(&mut Conn) -> Result<T, ::postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut conn = match slot.take() {
            Some(c) if !c.client.is_closed() => c,
            stale => {
                if let Some(c) = stale {
                    discard(c);
                }
                let client = self
                    .config
                    .connect(NoTls)
                    .map_err(|e| self.io(format!("connecting again: {}", reason(&e))))?;
                self.session(client)?
            }
        };
        match op(&mut conn) {
            Ok(v) => {
                *slot = Some(conn);
                Ok(v)
            }
            Err(e) => {
                discard(conn);
                Err(self.io(reason(&e)))
            }
        }
    }
}

impl Store for PgStore {
    fn apply(&self, writes: &[Write<'_>]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // The last write of a key wins (one statement cannot touch a row twice); sorted, so
        // that concurrent batches lock rows in one order.
        let mut last: BTreeMap<(&str, &str), Option<&[u8]>> = BTreeMap::new();
        for w in writes {
            let (scope, key, value) = match *w {
                Write::Put { scope, key, value } => (scope, key, Some(value)),
                Write::Delete { scope, key } => (scope, key, None),
            };
            check(&self.node, scope, key)?;
            last.insert((scope, key), value);
        }
        let (mut put_scopes, mut put_keys, mut put_values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_scopes, mut del_keys) = (Vec::new(), Vec::new());
        for ((scope, key), value) in last {
            match value {
                Some(v) => {
                    put_scopes.push(scope);
                    put_keys.push(key);
                    put_values.push(v);
                }
                None => {
                    del_scopes.push(scope);
                    del_keys.push(key);
                }
            }
        }
        let fenced = self.with_conn(|c| {
            let mut tx = c.client.transaction()?;
            let epoch: Option<i64> = tx
                .query_opt(&c.st.fence_check, &[&self.node])?
                .map(|r| r.try_get(0))
                .transpose()?;
            if epoch != Some(self.epoch) {
                tx.rollback()?;
                return Ok(true);
            }
            if !put_keys.is_empty() {
                tx.execute(
                    &c.st.upsert,
                    &[&self.node, &put_scopes, &put_keys, &put_values],
                )?;
            }
            if !del_keys.is_empty() {
                tx.execute(&c.st.delete, &[&self.node, &del_scopes, &del_keys])?;
            }
            tx.commit().map(|()| false)
        })?;
        if fenced {
            return Err(StoreError::Fenced {
                store: self.location(),
                node: self.node.clone(),
            });
        }
        Ok(())
    }

    fn load(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.with_conn(|c| c.client.query(&c.st.load, &[&self.node, &scope]))?;
        rows.iter()
            .map(|r| Ok((self.column(r, 0)?, self.column(r, 1)?)))
            .collect()
    }

    fn location(&self) -> Location {
        Location::Database(self.url.clone())
    }

    fn shared(&self) -> Option<&dyn SharedStore> {
        Some(self)
    }
}

impl SharedStore for PgStore {
    fn other_nodes(&self, scope: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.with_conn(|c| c.client.query(&c.st.other_nodes, &[&self.node, &scope]))?;
        rows.iter().map(|r| self.column(r, 0)).collect()
    }

    fn load_of(&self, node: &str, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.with_conn(|c| c.client.query(&c.st.load, &[&node, &scope]))?;
        rows.iter()
            .map(|r| Ok((self.column(r, 0)?, self.column(r, 1)?)))
            .collect()
    }

    fn fence(&self, node: &str) -> Result<(), StoreError> {
        let key = node_lock_key(node);
        let taken = self.with_conn(|c| {
            let free: bool = c
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                .try_get(0)?;
            if !free {
                return Ok(false);
            }
            // Held by this session while the epoch goes up: no process of `node` opens the
            // store meanwhile (one that does later reads the new epoch).
            let bumped = c.client.execute(FENCE_BUMP, &[&node]);
            let unlocked = c.client.execute("SELECT pg_advisory_unlock($1)", &[&key]);
            bumped?;
            unlocked?;
            Ok(true)
        })?;
        if taken {
            Ok(())
        } else {
            Err(StoreError::InUse {
                store: self.location(),
                node: node.to_owned(),
            })
        }
    }

    fn forget_taken(
        &self,
        node: &str,
        scope: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<&[u8]> = entries.iter().map(|(_, v)| v.as_slice()).collect();
        self.with_conn(|c| {
            c.client
                .execute(&c.st.forget, &[&node, &scope, &keys, &values])
                .map(|_| ())
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = conn {
            discard(conn);
        }
    }
}

/// Whether the database can hold the entry: PostgreSQL's `text` has no NUL, its index no long
/// entries.
fn check(node: &str, scope: &str, key: &str) -> Result<(), StoreError> {
    let why = if scope.contains('\0') || key.contains('\0') {
        "PostgreSQL text cannot hold a NUL character"
    } else if node.len() + scope.len() + key.len() > MAX_NAMES {
        "the node's name, the scope and the key are longer than MAX_NAMES bytes together"
    } else {
        return Ok(());
    };
    Err(StoreError::Unstorable {
        scope: scope.to_owned(),
        key: key.to_owned(),
        why,
    })
}

/// Close a connection where it is allowed to block. The client drives a runtime of its own and
/// closes the connection on drop, which panics on a tokio worker thread (a store or a failed
/// connection dropped by async code): there it is closed on a short-lived thread instead.
fn discard<T: Send + 'static>(conn: T) {
    if tokio::runtime::Handle::try_current().is_err() {
        drop(conn);
        return;
    }
    let slot = Arc::new(Mutex::new(Some(conn)));
    let theirs = slot.clone();
    let closer = std::thread::Builder::new()
        .name("throng-pg-close".into())
        .spawn(move || drop(theirs.lock().unwrap_or_else(PoisonError::into_inner).take()));
    if closer.is_err() {
        // No thread to close it on: leave the socket to the process's exit rather than panic.
        let conn = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        std::mem::forget(conn);
    }
}

/// An error of the client and its causes on one line.
fn reason(e: &::postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// `url` without its password, for messages and logs: the password of a `postgres://` URL's
/// user information and of a `password` query parameter, or the `password` of a `key=value`
/// connection string. A connection string that does not parse is not shown at all.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => redact_uri(scheme, rest),
        None => redact_key_values(url).unwrap_or_else(|| "(connection string hidden)".into()),
    }
}

fn redact_uri(scheme: &str, rest: &str) -> String {
    // The user information ends at the last `@` (a password may hold an unescaped `@` or `/`);
    // cutting a little too much is better than showing a password.
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => rest.to_owned(),
    };
    let Some((base, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            !p.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("password"))
        })
        .collect();
    if kept.is_empty() {
        format!("{scheme}://{base}")
    } else {
        format!("{scheme}://{base}?{}", kept.join("&"))
    }
}

/// `key=value` pairs (values bare, or quoted with `'` and `\` escapes) without `password`.
fn redact_key_values(text: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        while chars
            .next_if(|(_, c)| *c != '=' && !c.is_whitespace())
            .is_some()
        {}
        let key_end = chars.peek().map_or(text.len(), |&(i, _)| i);
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next_if(|(_, c)| quoted || !c.is_whitespace()) {
            match c {
                '\\' => {
                    chars.next()?;
                }
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        if !closed {
            return None;
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        if &text[start..key_end] != "password" {
            out.push(&text[start..end]);
        }
    }
    Some(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_nothing_else() {
        for (url, shown) in [
            (
                "postgres://throng:s3cret@db.example:5432/throng",
                "postgres://throng@db.example:5432/throng",
            ),
            (
                "postgresql://u:p@ss/w@rd@host/db?sslmode=disable",
                "postgresql://u@host/db?sslmode=disable",
            ),
            (
                "postgres://u@host/db?password=s3cret&application_name=x",
                "postgres://u@host/db?application_name=x",
            ),
            ("postgres://host/db?PASSWORD=s3cret", "postgres://host/db"),
            ("postgres://u@127.0.0.1:5/db", "postgres://u@127.0.0.1:5/db"),
            (
                "host=db user=throng password=s3cret dbname=throng",
                "host=db user=throng dbname=throng",
            ),
            (
                "host=db password = 'se cr\\'et' port=5432",
                "host=db port=5432",
            ),
            (
                "password='unterminated host=db",
                "(connection string hidden)",
            ),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(!redacted.contains("s3cret") && !redacted.contains("se cr"));
        }
    }

    #[test]
    fn entries_postgres_cannot_hold_are_refused_before_the_database() {
        assert!(check("n1", "s", "k").is_ok());
        let err = check("n1", "s", "a\0b").unwrap_err();
        assert!(matches!(err, StoreError::Unstorable { .. }), "{err}");
        assert!(err.to_string().contains("NUL"), "{err}");
        let long = "k".repeat(MAX_NAMES);
        assert!(matches!(
            check("n1", "s", &long),
            Err(StoreError::Unstorable { .. })
        ));
    }

    #[test]
    fn node_locks_differ_by_name_and_are_stable() {
        assert_ne!(node_lock_key("n1"), node_lock_key("n2"));
        assert_ne!(node_lock_key("n1"), schema_lock_key());
        assert_eq!(node_lock_key("n1"), node_lock_key("n1"));
    }
}
