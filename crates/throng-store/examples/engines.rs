//! redb against fjall (and PostgreSQL) on Throng's store workload, back to back in one run: group
//! commits of 512 records (insert, then update), single-record durable commits (the `Sync`
//! durability's worst case), and a reopen + full scan (a node's recovery). Each commit is durable
//! (fsync) when it returns. The figures and the choice are in ARCHITECTURE.md ("Why these
//! crates").
//!
//! `cargo run --release -p throng-store --features compare-engines --example engines -- DIR rffr`
//! (the second argument is the order of the runs: r = redb, f = fjall, p = `PgStore`, q =
//! PostgreSQL with one statement per record in a transaction, the batching `PgStore` avoids). The
//! PostgreSQL runs use a throwaway local server (`throng_store::testing::Server`, fsync on, its
//! data under the system's temporary directory), one database per run, over TCP on loopback.

use std::time::{Duration, Instant};

const N: usize = 100_000;
const BATCH: usize = 512;
const SINGLES: usize = 2_000;

fn key(i: usize) -> Vec<u8> {
    format!("customers\0customer-{i:08}").into_bytes()
}
fn value(i: usize, round: u8) -> Vec<u8> {
    let mut v = vec![round; 256];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}
fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

trait Engine {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]);
    fn scan(&mut self) -> usize;
    fn reopen(&mut self);
}

struct Redb {
    path: std::path::PathBuf,
    db: Option<redb::Database>,
}
const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");
impl Engine for Redb {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]) {
        let tx = self.db.as_ref().unwrap().begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for (k, v) in batch {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn scan(&mut self) -> usize {
        use redb::ReadableDatabase;
        let tx = self.db.as_ref().unwrap().begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        use redb::ReadableTable;
        t.iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                k.value().len() + v.value().len()
            })
            .count()
    }
    fn reopen(&mut self) {
        self.db = None;
        self.db = Some(redb::Database::create(&self.path).unwrap());
    }
}
struct Fjall {
    path: std::path::PathBuf,
    db: Option<(fjall::Database, fjall::Keyspace)>,
}
impl Engine for Fjall {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]) {
        let (db, ks) = self.db.as_ref().unwrap();
        let mut b = db.batch();
        for (k, v) in batch {
            b.insert(ks, k.clone(), v.clone());
        }
        b.commit().unwrap();
        db.persist(fjall::PersistMode::SyncData).unwrap();
    }
    fn scan(&mut self) -> usize {
        let (_, ks) = self.db.as_ref().unwrap();
        ks.iter()
            .map(|g| {
                let (k, v) = g.into_inner().unwrap();
                k.len() + v.len()
            })
            .count()
    }
    fn reopen(&mut self) {
        self.db = None;
        let db = fjall::Database::builder(&self.path).open().unwrap();
        let ks = db
            .keyspace("records", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        self.db = Some((db, ks));
    }
}

/// `PgStore`: a batch is one transaction of one `unnest` upsert.
struct Pg {
    url: String,
    store: Option<throng_store::PgStore>,
}
impl Engine for Pg {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]) {
        use throng_store::{Store, Write};
        let writes: Vec<Write<'_>> = batch
            .iter()
            .map(|(k, v)| {
                let (scope, key) = split(k);
                Write::Put {
                    scope,
                    key,
                    value: v,
                }
            })
            .collect();
        self.store.as_ref().unwrap().apply(&writes).unwrap();
    }
    fn scan(&mut self) -> usize {
        use throng_store::Store;
        let s = self.store.as_ref().unwrap();
        // `load` decodes every row into owned strings and bytes.
        s.load("customers").unwrap().len()
    }
    fn reopen(&mut self) {
        self.store = None;
        self.store = Some(throng_store::PgStore::open(&self.url, "bench").unwrap());
    }
}
/// The same table, one prepared upsert executed per record inside the batch's transaction.
struct PgRows {
    url: String,
    client: Option<(postgres::Client, postgres::Statement)>,
}
impl Engine for PgRows {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]) {
        let (client, upsert) = self.client.as_mut().unwrap();
        let mut tx = client.transaction().unwrap();
        for (k, v) in batch {
            let (scope, key) = split(k);
            tx.execute(&*upsert, &[&"bench", &scope, &key, &v.as_slice()])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    fn scan(&mut self) -> usize {
        let (client, _) = self.client.as_mut().unwrap();
        client
            .query(
                "SELECT key, value FROM throng_entries WHERE node = 'bench' AND scope = 'customers' ORDER BY key",
                &[],
            )
            .unwrap()
            .iter()
            .filter(|r| r.get::<_, &str>(0).len() + r.get::<_, &[u8]>(1).len() > 0)
            .count()
    }
    fn reopen(&mut self) {
        self.client = None;
        // The schema is PgStore's.
        drop(throng_store::PgStore::open(&self.url, "schema").unwrap());
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        let upsert = client
            .prepare(
                "INSERT INTO throng_entries (node, scope, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node, scope, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .unwrap();
        self.client = Some((client, upsert));
    }
}
/// "scope\0key" as PostgreSQL's text takes them (no NUL).
fn split(k: &[u8]) -> (&str, &str) {
    let k = std::str::from_utf8(k).unwrap();
    k.split_once('\0').unwrap()
}

fn run(name: &str, e: &mut dyn Engine) {
    e.reopen();
    let t = Instant::now();
    for c in 0..N / BATCH {
        let b: Vec<_> = (c * BATCH..(c + 1) * BATCH)
            .map(|i| (key(i), value(i, 1)))
            .collect();
        e.write(&b);
    }
    let insert = (N / BATCH * BATCH) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for c in 0..N / BATCH {
        let b: Vec<_> = (c * BATCH..(c + 1) * BATCH)
            .map(|i| (key(i), value(i, 2)))
            .collect();
        e.write(&b);
    }
    let update = (N / BATCH * BATCH) as f64 / t.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for i in 0..SINGLES {
        let b = vec![(key(i * 37 % N), value(i, 3))];
        let t = Instant::now();
        e.write(&b);
        lat.push(t.elapsed());
    }
    let t = Instant::now();
    e.reopen();
    let open = t.elapsed();
    let t = Instant::now();
    let n = e.scan();
    let scan = t.elapsed();
    println!("{name}: group-commit insert {insert:.0} rec/s, update {update:.0} rec/s; single durable commit p50 {:.0} us p99 {:.0} us; reopen {:.1} ms, scan {n} in {:.1} ms", pct(lat.clone(), 0.5), pct(lat, 0.99), open.as_secs_f64()*1e3, scan.as_secs_f64()*1e3);
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or("/tmp/engines".into());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let order = std::env::args().nth(2).unwrap_or("rf".into());
    let server = if order.contains(['p', 'q']) {
        throng_store::testing::Server::start_with(&[("fsync", "on"), ("full_page_writes", "on")])
            .unwrap()
    } else {
        None
    };
    for (i, c) in order.chars().enumerate() {
        match c {
            'r' => run(
                "redb",
                &mut Redb {
                    path: format!("{dir}/r{i}.redb").into(),
                    db: None,
                },
            ),
            'f' => run(
                "fjall",
                &mut Fjall {
                    path: format!("{dir}/f{i}").into(),
                    db: None,
                },
            ),
            'p' | 'q' => {
                let Some(server) = &server else {
                    println!("postgres: skipped (no PostgreSQL binaries)");
                    continue;
                };
                let url = server.create_database().unwrap();
                if c == 'p' {
                    run("postgres", &mut Pg { url, store: None })
                } else {
                    run("postgres-rows", &mut PgRows { url, client: None })
                }
            }
            _ => {}
        }
    }
}
