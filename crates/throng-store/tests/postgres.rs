//! `PgStore` against a real PostgreSQL server (`throng_store::testing`): each test has a
//! database of its own on one server per test process, or a server of its own when it restarts
//! it. Without PostgreSQL installed the tests skip, unless `THRONG_POSTGRES_REQUIRED=1`.

use throng_store::testing::{Postgres, Server};
use throng_store::{Location, PgStore, Store, StoreError, Write, PG_FORMAT};

/// A fresh database, or `None` (the test skips) without PostgreSQL.
fn database() -> Option<Postgres> {
    Postgres::start().unwrap_or_else(|e| panic!("PostgreSQL for the tests: {e}"))
}

/// `url` with a password in it (the servers trust loopback, so any password connects): every
/// message must leave it out.
fn with_password(url: &str) -> String {
    url.replacen("postgres@", "postgres:hunter2@", 1)
}

fn put<'a>(scope: &'a str, key: &'a str, value: &'a [u8]) -> Write<'a> {
    Write::Put { scope, key, value }
}

fn delete<'a>(scope: &'a str, key: &'a str) -> Write<'a> {
    Write::Delete { scope, key }
}

fn entries(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// A plain client on the test's database, to look behind the store's back.
fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

#[test]
fn entries_survive_a_reopen_in_key_order_and_stay_in_their_scope() {
    let Some(pg) = database() else { return };
    {
        let s = PgStore::open(pg.url(), "n1").unwrap();
        s.apply(&[
            put("a", "k2", b"2"),
            put("a", "k1", b"1"),
            put("ab", "k1", b"other scope"),
            put("", "k", b"empty scope"),
            // Byte order, whatever the database's locale: "B" < "a" < "z" < "é".
            put("order", "z", b""),
            put("order", "é", b""),
            put("order", "a", b""),
            put("order", "B", b""),
        ])
        .unwrap();
        s.apply(&[
            delete("a", "k2"),
            put("a", "k3", b"3"),
            // Within a batch the last write of a key wins.
            put("a", "k4", b"first"),
            put("a", "k4", b"second"),
            put("a", "k5", b"gone"),
            delete("a", "k5"),
            delete("a", "never-there"),
        ])
        .unwrap();
    }
    let s = PgStore::open(pg.url(), "n1").unwrap();
    assert_eq!(
        s.load("a").unwrap(),
        entries(&[("k1", b"1"), ("k3", b"3"), ("k4", b"second")])
    );
    assert_eq!(s.load("ab").unwrap(), entries(&[("k1", b"other scope")]));
    assert_eq!(s.load("").unwrap(), entries(&[("k", b"empty scope")]));
    let order: Vec<String> = s.load("order").unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(order, ["B", "a", "z", "é"]);
    assert!(s.load("b").unwrap().is_empty());
    assert!(s.apply(&[]).is_ok());
}

#[test]
fn nodes_sharing_a_database_keep_their_rows_apart_and_load_all_sees_them_all() {
    let Some(pg) = database() else { return };
    let n1 = PgStore::open(pg.url(), "n1").unwrap();
    let n2 = PgStore::open(pg.url(), "n2").unwrap();
    n1.apply(&[put("s", "k", b"n1's"), put("s", "only-n1", b"1")])
        .unwrap();
    n2.apply(&[put("s", "k", b"n2's"), put("t", "k", b"other scope")])
        .unwrap();
    // A node's delete never touches another's row of the same key.
    n2.apply(&[delete("s", "only-n1")]).unwrap();
    assert_eq!(
        n1.load("s").unwrap(),
        entries(&[("k", b"n1's"), ("only-n1", b"1")])
    );
    assert_eq!(n2.load("s").unwrap(), entries(&[("k", b"n2's")]));
    let all = n2.load_all("s").unwrap();
    let all: Vec<(&str, &str, &[u8])> = all
        .iter()
        .map(|(n, k, v)| (n.as_str(), k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        all,
        [
            ("n1", "k", &b"n1's"[..]),
            ("n1", "only-n1", b"1"),
            ("n2", "k", b"n2's")
        ]
    );
}

#[test]
fn a_batch_that_fails_in_the_database_leaves_nothing_and_the_store_goes_on() {
    let Some(pg) = database() else { return };
    let s = PgStore::open(pg.url(), "n1").unwrap();
    s.apply(&[put("s", "poison", b"p")]).unwrap();
    // The upserts of the next batch succeed, then its delete fails: the whole batch is undone.
    let mut c = client(pg.url());
    c.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse BEFORE DELETE ON throng_entries
             FOR EACH ROW WHEN (OLD.key = 'poison') EXECUTE FUNCTION refuse();",
    )
    .unwrap();
    let err = s
        .apply(&[
            put("s", "a", b"1"),
            put("s", "b", b"2"),
            delete("s", "poison"),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Io { .. }) && err.to_string().contains("refused by the test"),
        "{err}"
    );
    assert_eq!(s.load("s").unwrap(), entries(&[("poison", b"p")]));
    c.batch_execute("DROP TRIGGER refuse ON throng_entries")
        .unwrap();
    s.apply(&[put("s", "a", b"1"), delete("s", "poison")])
        .unwrap();
    assert_eq!(s.load("s").unwrap(), entries(&[("a", b"1")]));
}

#[test]
fn entries_postgres_cannot_hold_are_refused_and_their_batch_is_not_applied() {
    let Some(pg) = database() else { return };
    let s = PgStore::open(pg.url(), "n1").unwrap();
    let err = s
        .apply(&[put("s", "fine", b"v"), put("s", "nul\0key", b"v")])
        .unwrap_err();
    assert!(matches!(err, StoreError::Unstorable { .. }), "{err}");
    let long = "k".repeat(throng_store::MAX_NAMES);
    let err = s.apply(&[put("s", &long, b"v")]).unwrap_err();
    assert!(matches!(err, StoreError::Unstorable { .. }), "{err}");
    assert!(s.load("s").unwrap().is_empty());
}

#[test]
fn a_newer_schema_format_is_refused_naming_the_database_without_its_password() {
    let Some(pg) = database() else { return };
    drop(PgStore::open(pg.url(), "n1").unwrap());
    client(pg.url())
        .execute(
            "UPDATE throng_meta SET value = $1 WHERE name = 'format'",
            &[&(PG_FORMAT + 1).to_string()],
        )
        .unwrap();
    let err = PgStore::open(&with_password(pg.url()), "n1").unwrap_err();
    assert!(
        matches!(&err, StoreError::NewerFormat { found, store: Location::Database(url), .. }
            if *found == PG_FORMAT + 1 && url == pg.url()),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(pg.url()) && text.contains("store_url") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn a_node_open_in_another_process_is_refused_by_name_until_it_closes() {
    let Some(pg) = database() else { return };
    let first = PgStore::open(pg.url(), "twice").unwrap();
    let other = PgStore::open(pg.url(), "other").unwrap();
    let err = PgStore::open(pg.url(), "twice").unwrap_err();
    assert!(
        matches!(&err, StoreError::InUse { node, .. } if node == "twice"),
        "{err}"
    );
    assert!(err.to_string().contains("\"twice\""), "{err}");
    drop(first);
    let again = PgStore::open(pg.url(), "twice").unwrap();
    again.apply(&[put("s", "k", b"v")]).unwrap();
    drop(other);
}

/// A node cut off from the cluster and from the database (its connection lost) while another
/// takes over its entries: once fenced, it cannot write over what was taken over, even after it
/// reaches the database again; a new process of that node can.
#[test]
fn a_node_fenced_while_cut_off_cannot_write_again_and_a_new_process_can() {
    let Some(pg) = database() else { return };
    let zombie = PgStore::open(pg.url(), "z").unwrap();
    zombie.apply(&[put("s", "k", b"before")]).unwrap();
    let taker = PgStore::open(pg.url(), "t").unwrap();
    let shared = taker.shared().expect("a database is shared");
    // Its process holds the store: cut off from the taker only, not gone.
    let err = shared.fence("z").unwrap_err();
    assert!(
        matches!(&err, StoreError::InUse { node, .. } if node == "z"),
        "{err}"
    );
    zombie.apply(&[put("s", "k", b"still mine")]).unwrap();
    // Its connection is lost (the process lives on, cut off): now it can be fenced.
    client(pg.url())
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'throng z'",
            &[],
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match shared.fence("z") {
            Ok(()) => break,
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("fence: {e}"),
        }
    }
    assert_eq!(
        shared.load_of("z", "s").unwrap(),
        entries(&[("k", b"still mine")])
    );
    // The cut-off process reaches the database again: its writes are refused, and nothing of
    // the batch is applied.
    let err = loop {
        match zombie.apply(&[put("s", "k", b"after"), put("s", "k2", b"new")]) {
            // The first call after the lost connection fails on it, and reconnects.
            Err(StoreError::Io { .. }) => continue,
            other => break other.unwrap_err(),
        }
    };
    assert!(
        matches!(&err, StoreError::Fenced { node, .. } if node == "z"),
        "{err}"
    );
    assert!(err.to_string().contains("restart the node"), "{err}");
    assert_eq!(
        shared.load_of("z", "s").unwrap(),
        entries(&[("k", b"still mine")])
    );
    drop(zombie);
    // A new process of the node starts from what is left, and writes.
    let back = PgStore::open(pg.url(), "z").unwrap();
    back.apply(&[put("s", "k3", b"again")]).unwrap();
    assert_eq!(
        back.load("s").unwrap(),
        entries(&[("k", b"still mine"), ("k3", b"again")])
    );
}

/// A database of format 1 (before fencing) gets the fences table on open.
#[test]
fn a_format_one_database_is_migrated_and_keeps_its_entries() {
    let Some(pg) = database() else { return };
    {
        let s = PgStore::open(pg.url(), "m").unwrap();
        s.apply(&[put("s", "k", b"v")]).unwrap();
    }
    let mut c = client(pg.url());
    c.batch_execute(
        "DROP TABLE throng_fences; UPDATE throng_meta SET value = '1' WHERE name = 'format'",
    )
    .unwrap();
    let s = PgStore::open(pg.url(), "m").unwrap();
    assert_eq!(s.load("s").unwrap(), entries(&[("k", b"v")]));
    s.apply(&[put("s", "k2", b"w")]).unwrap();
    let format: String = c
        .query_one("SELECT value FROM throng_meta WHERE name = 'format'", &[])
        .unwrap()
        .get(0);
    assert_eq!(format, PG_FORMAT.to_string());
}

#[test]
fn nodes_opening_a_fresh_database_at_once_all_get_the_schema() {
    let Some(pg) = database() else { return };
    let url = pg.url();
    let stores: Vec<PgStore> = std::thread::scope(|s| {
        let opening: Vec<_> = (0..6)
            .map(|i| s.spawn(move || PgStore::open(url, &format!("n{i}"))))
            .collect();
        opening
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for (i, s) in stores.iter().enumerate() {
        s.apply(&[put("s", "k", format!("{i}").as_bytes())])
            .unwrap();
    }
    assert_eq!(stores[0].load_all("s").unwrap().len(), stores.len());
}

#[test]
fn an_unreachable_database_is_an_error_naming_the_setting_not_the_password() {
    // A port nobody listens on: no PostgreSQL needed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://throng:hunter2@127.0.0.1:{port}/throng");
    let started = std::time::Instant::now();
    let err = PgStore::open(&url, "n1").unwrap_err();
    assert!(started.elapsed() < throng_store::CONNECT_TIMEOUT * 2);
    assert!(
        matches!(&err, StoreError::Unreachable { url, .. } if url == &format!("postgres://throng@127.0.0.1:{port}/throng")),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("store_url")
            && text.contains("THRONG_STORE_URL")
            && !text.contains("hunter2"),
        "{text}"
    );
    let err = PgStore::open("postgres://throng:hunter2@127.0.0.1:port/throng", "n1").unwrap_err();
    assert!(matches!(err, StoreError::BadUrl { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_server_restart_fails_the_calls_while_it_is_down_then_the_store_reconnects() {
    let Some(server) = Server::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}")) else {
        return;
    };
    let url = with_password(&server.create_database().unwrap());
    let s = PgStore::open(&url, "n1").unwrap();
    s.apply(&[put("s", "before", b"1")]).unwrap();
    server.stop().unwrap();
    // The connection is gone, then connecting again is refused: both are I/O errors (the
    // runtime tries again later), named by the database without its password.
    for _ in 0..2 {
        let err = s.apply(&[put("s", "during", b"2")]).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Io {
                    store: Location::Database(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    server.start_again().unwrap();
    s.apply(&[put("s", "after", b"3")]).unwrap();
    assert_eq!(
        s.load("s").unwrap(),
        entries(&[("after", b"3"), ("before", b"1")])
    );
    // The new connection holds the node's lock again.
    let err = PgStore::open(&url, "n1").unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

#[test]
fn a_store_dropped_by_async_code_closes_its_connection_without_panicking() {
    let Some(pg) = database() else { return };
    let s = PgStore::open(pg.url(), "n1").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move { drop(s) });
    // Its lock is released once the connection is closed (on a thread of its own).
    PgStore::open(pg.url(), "n1").unwrap();
}
