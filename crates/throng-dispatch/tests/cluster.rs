//! The demo's JSON API on three real node processes: create heroes (201, 409, 400), terminate one,
//! stop the node that hosts heroes gracefully and crash another, and check every hero reappears
//! on a surviving node with its record intact (never reset); bomb a city and see it restart and
//! converge; restart the stopped node and see it rejoin.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const TICK_MS: u64 = 500;
const NAMES: [&str; 3] = ["gotham", "metropolis", "capitol"];

struct Cluster {
    base: u16,
    procs: BTreeMap<String, Proc>,
}

impl Cluster {
    fn addr(&self, name: &str) -> String {
        let i = NAMES.iter().position(|n| *n == name).unwrap() as u16;
        format!("127.0.0.1:{}", self.base + i)
    }

    fn args(&self, name: &str) -> Vec<String> {
        let i = NAMES.iter().position(|n| *n == name).unwrap() as u16;
        let seeds: Vec<String> = (0..3)
            .map(|k| format!("127.0.0.1:{}", self.base + 10 + k))
            .collect();
        [
            "node",
            "--name",
            name,
            "--http",
            &(self.base + i).to_string(),
            "--gossip",
            &format!("127.0.0.1:{}", self.base + 10 + i),
            "--seeds",
            &seeds.join(","),
            "--tick-ms",
            &TICK_MS.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn start(&mut self, name: &str) {
        let run = self.procs.contains_key(name) as u8 + 1;
        let p = spawn(&format!("cluster-{name}-{run}"), &self.args(name));
        self.procs.insert(name.to_owned(), p);
    }
}

/// Heroes seen by node `at`, by name.
fn by_name(addr: &str) -> BTreeMap<String, Hero> {
    heroes(addr)
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect()
}

/// Wait until every hero of `before` (all on `gone`) shows on a live node other than `gone`, or
/// has been defeated meanwhile; check that each one kept its record. Returns how many moved.
fn check_moved(watch: &str, gone: &str, before: &BTreeMap<String, Hero>, since: Instant) -> usize {
    let moved = eventually(
        &format!("heroes of {gone} to show elsewhere on {watch}"),
        Duration::from_secs(30),
        || {
            let now = by_name(watch);
            let settled = before.keys().all(|name| match now.get(name) {
                None => true, // defeated meanwhile (tombstoned)
                Some(h) => h.node != gone && h.status != "moving",
            });
            settled.then_some(now)
        },
    );
    // Ticks that may have happened since `before` was read (plus the view's own delay).
    let slack = since.elapsed().as_millis() as u64 / TICK_MS + 3 + 1000 / TICK_MS;
    let mut count = 0;
    for (name, b) in before {
        let Some(a) = moved.get(name) else {
            eprintln!("{name} was defeated meanwhile");
            continue;
        };
        count += 1;
        eprintln!(
            "{name}: {} won/{} lost on {} -> {} won/{} lost on {}",
            b.won, b.lost, b.node, a.won, a.lost, a.node
        );
        assert!(
            a.won >= b.won && a.lost >= b.lost,
            "{name} lost its record moving from {gone}: {b:?} -> {a:?}"
        );
        assert!(
            (a.won + a.lost) - (b.won + b.lost) <= slack,
            "{name} has more fights than time allows: {b:?} -> {a:?}"
        );
    }
    count
}

fn metric(addr: &str, name: &str) -> u64 {
    let text = http("GET", addr, "/metrics", None)
        .map(|r| r.body)
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn heroes_move_with_their_state_when_nodes_stop_or_crash() {
    let mut c = Cluster {
        base: free_base_port(),
        procs: BTreeMap::new(),
    };
    for n in NAMES {
        c.start(n);
    }
    for n in NAMES {
        let addr = c.addr(n);
        eventually(
            &format!("{n} to see three nodes up"),
            Duration::from_secs(30),
            || {
                let v = get_json(&addr, "/api/nodes");
                let ups = v.as_array()?.iter().filter(|x| x["status"] == "up").count();
                (ups == 3).then_some(())
            },
        );
    }
    let g = c.addr("gotham");

    // Create: 201, then 409 for a duplicate and 400 for a bad name.
    let names: Vec<String> = (0..12).map(|i| format!("Hero-{i:02}")).collect();
    for name in &names {
        let r = http(
            "POST",
            &g,
            "/api/heroes",
            Some(&format!("{{\"name\":\"{name}\"}}")),
        )
        .unwrap();
        assert_eq!(r.status, 201, "create {name}: {}", r.body);
    }
    let dup = http("POST", &g, "/api/heroes", Some("{\"name\":\"Hero-00\"}")).unwrap();
    assert_eq!(dup.status, 409, "{}", dup.body);
    let bad = http("POST", &g, "/api/heroes", Some("{\"name\":\"<script>\"}")).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Every node lists every hero, with the node it runs on.
    for n in NAMES {
        let addr = c.addr(n);
        eventually(
            &format!("{n} to list the heroes"),
            Duration::from_secs(20),
            || {
                let hs = by_name(&addr);
                names
                    .iter()
                    .all(|name| hs.contains_key(name) || !by_name(&g).contains_key(name))
                    .then_some(())
            },
        );
    }

    // Terminate one: 204, gone everywhere; again: 404.
    let r = http("DELETE", &g, "/api/heroes/Hero-00", None).unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http("DELETE", &g, "/api/heroes/Hero-00", None).unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let m = c.addr("metropolis");
    eventually("Hero-00 to disappear", Duration::from_secs(10), || {
        (!by_name(&m).contains_key("Hero-00")).then_some(())
    });

    // Once they have fought a little, stop the node that hosts the most heroes, gracefully.
    let all = eventually("heroes to fight", Duration::from_secs(30), || {
        let all = by_name(&g);
        have_fought(&all, 3).then_some(all)
    });
    let (victim, before) = busiest_node_but(all, "gotham");
    assert!(!before.is_empty());
    let since = Instant::now();
    let r = http("POST", &g, &format!("/api/nodes/{victim}/stop"), None).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(
        &format!("{victim} to exit"),
        Duration::from_secs(20),
        || c.procs.get_mut(&victim).unwrap().exited().then_some(()),
    );
    let status = c.procs.get_mut(&victim).unwrap().0.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}");
    eventually(
        &format!("gotham to see {victim} down"),
        Duration::from_secs(20),
        || (node_status(&g, &victim).as_deref() == Some("down")).then_some(()),
    );
    let moved = check_moved(&g, &victim, &before, since);
    assert!(moved > 0, "no hero of {victim} survived to move");
    assert!(
        metric(&g, "throng_handoffs_total") + {
            let other = NAMES
                .iter()
                .find(|n| **n != "gotham" && **n != victim)
                .unwrap();
            metric(&c.addr(other), "throng_handoffs_total")
        } > 0,
        "a graceful stop hands heroes over (counted as hand-offs, not failovers)"
    );

    // Crash the other survivor that is not gotham: its heroes fail over to gotham with state.
    let other = NAMES
        .iter()
        .find(|n| **n != "gotham" && **n != victim)
        .unwrap()
        .to_string();
    let all = by_name(&g);
    let before: BTreeMap<String, Hero> = all.into_iter().filter(|(_, h)| h.node == other).collect();
    let since = Instant::now();
    let r = http("POST", &g, &format!("/api/nodes/{other}/crash"), None).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(&format!("{other} to die"), Duration::from_secs(20), || {
        c.procs.get_mut(&other).unwrap().exited().then_some(())
    });
    if !before.is_empty() {
        check_moved(&g, &other, &before, since);
    }

    // Bomb gotham's city: it restarts with a clean state and converges back (its heroes push
    // their status again), and the restart is counted.
    let r = http("POST", &g, "/api/nodes/gotham/bomb", None).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(
        "the city restart to be counted",
        Duration::from_secs(10),
        || {
            let text = http("GET", &g, "/metrics", None).ok()?.body;
            text.contains("throng_restarts_total{node=\"gotham\",kind=\"city\"} 1")
                .then_some(())
        },
    );

    // The stopped node comes back with the same command and rejoins.
    c.start(&victim);
    eventually(
        &format!("{victim} to rejoin"),
        Duration::from_secs(30),
        || (node_status(&g, &victim).as_deref() == Some("up")).then_some(()),
    );
    let back = c.addr(&victim);
    eventually(
        &format!("{victim} to list the heroes again"),
        Duration::from_secs(20),
        || {
            let here = by_name(&back);
            let there = by_name(&g);
            (!there.is_empty() && there.keys().all(|k| here.contains_key(k))).then_some(())
        },
    );
}
