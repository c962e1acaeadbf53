//! Heroes kept on disk: a node with a data directory keeps its heroes, with their health and
//! record, across a stop and a start (stopped as the demo stops it: no leave); the whole demo
//! stopped with Ctrl-C (SIGINT to its process group, as a terminal sends it) brings every hero
//! back, once each, at the next `demo`; `demo --fresh` starts with none.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TICK_MS: u64 = 500;
const NAMES: [&str; 3] = ["gotham", "metropolis", "capitol"];

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dispatch-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn by_name(addr: &str) -> BTreeMap<String, Hero> {
    heroes(addr)
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect()
}

/// The sum of the samples of metric `name` (all labels) on `addr`, with `label` in them.
fn metric(addr: &str, name: &str, label: &str) -> Option<u64> {
    let text = http("GET", addr, "/metrics", None).ok()?.body;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

fn create(addr: &str, name: &str) {
    let r = http(
        "POST",
        addr,
        "/api/heroes",
        Some(&format!("{{\"name\":\"{name}\"}}")),
    )
    .unwrap();
    assert_eq!(r.status, 201, "create {name}: {}", r.body);
}

/// Where `spawn(log, ..)` writes (`None` with `THRONG_TEST_LOGS`: to the terminal).
fn log_path(log: &str) -> Option<PathBuf> {
    if std::env::var_os("THRONG_TEST_LOGS").is_some() {
        return None;
    }
    Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dispatch-{log}.log")))
}

/// Whether a log of `logs` says `hero` was defeated (`None`: the logs went to the terminal).
fn defeated(logs: &[Option<PathBuf>], hero: &str) -> Option<bool> {
    let line = format!("{hero} was defeated by");
    let mut any = false;
    for log in logs {
        let text = std::fs::read_to_string(log.as_ref()?).unwrap_or_default();
        any |= text.contains(&line);
    }
    Some(any)
}

/// Every hero of `before` is listed on `addr` again (not moving), each with at least the record
/// it had, and no other hero is; returns the heroes listed. A hero may be missing only if it was
/// defeated meanwhile (by the logs of the nodes, `logs`).
fn check_back(
    addr: &str,
    before: &BTreeMap<String, Hero>,
    logs: &[Option<PathBuf>],
) -> BTreeMap<String, Hero> {
    let now = eventually(
        &format!("the heroes to come back on {addr}"),
        Duration::from_secs(60),
        || {
            let now = by_name(addr);
            before
                .keys()
                .all(|k| match now.get(k) {
                    Some(h) => h.status != "moving",
                    None => defeated(logs, k).unwrap_or(false),
                })
                .then_some(now)
        },
    );
    assert!(
        now.keys().all(|k| before.contains_key(k)),
        "only the heroes of before the stop: {now:?}"
    );
    for (name, b) in before {
        let Some(a) = now.get(name) else {
            eprintln!("{name} (health {}) was defeated meanwhile", b.health);
            continue;
        };
        eprintln!(
            "{name}: {} won/{} lost (health {}) -> {} won/{} lost (health {}) on {}",
            b.won, b.lost, b.health, a.won, a.lost, a.health, a.node
        );
        assert!(
            a.won >= b.won && a.lost >= b.lost,
            "{name} came back without its record: {b:?} -> {a:?}"
        );
    }
    now
}

/// Wait until the heroes listed on `addr` have fought `n` fights in all; returns them.
fn after_fights(addr: &str, n: u64) -> BTreeMap<String, Hero> {
    eventually("the heroes to fight", Duration::from_secs(60), || {
        let all = by_name(addr);
        (!all.is_empty() && have_fought(&all, n)).then_some(all)
    })
}

/// One demo node, started as `demo` starts it (`--exit-with-parent`: it stops when its standard
/// input closes, without leaving, keeping its data directory).
fn start_node(log: &str, http_port: u16, gossip: u16, dir: &Path) -> Proc {
    let gossip = format!("127.0.0.1:{gossip}");
    let args = [
        "node",
        "--name",
        "gotham",
        "--http",
        &http_port.to_string(),
        "--gossip",
        &gossip,
        "--seeds",
        &gossip,
        "--tick-ms",
        &TICK_MS.to_string(),
        "--data-dir",
        &dir.display().to_string(),
        "--exit-with-parent",
    ]
    .map(String::from);
    spawn(log, &args)
}

#[test]
fn a_node_with_a_data_dir_keeps_its_heroes_state_across_a_stop_and_start() {
    let data = TempDir::new("node");
    let dir = data.0.join("gotham");
    let base = free_base_port();
    let addr = format!("127.0.0.1:{base}");
    let mut node = start_node("durable-node-1", base, base + 10, &dir);
    eventually("the node to answer", Duration::from_secs(30), || {
        get_json(&addr, "/api/nodes").as_array().map(|_| ())
    });
    let names: Vec<String> = (0..6).map(|i| format!("Keeper-{i}")).collect();
    for n in &names {
        create(&addr, n);
    }
    let before = after_fights(&addr, 2 * names.len() as u64);
    eprintln!("before the stop: {before:?}");

    // Stop it as the demo does: its standard input closes. It exits 0 without leaving.
    drop(node.0.stdin.take());
    eventually("the node to exit", Duration::from_secs(20), || {
        node.exited().then_some(())
    });
    let status = node.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        dir.join("throng.redb").is_file(),
        "the store is in the data directory"
    );

    // Started again with the same name and directory: every hero comes back with its record,
    // once (no second set).
    let _node = start_node("durable-node-2", base, base + 10, &dir);
    let logs = [log_path("durable-node-1"), log_path("durable-node-2")];
    let now = check_back(&addr, &before, &logs);
    assert!(!now.is_empty());
    eventually(
        "one copy of each hero to run",
        Duration::from_secs(20),
        || {
            let running = metric(&addr, "throng_dist_children", "state=\"running\"")?;
            (running == by_name(&addr).len() as u64).then_some(())
        },
    );
    // Creating a recovered hero again is refused: it already runs, with its state.
    let back = now.keys().next().unwrap();
    let dup = http(
        "POST",
        &addr,
        "/api/heroes",
        Some(&format!("{{\"name\":\"{back}\"}}")),
    )
    .unwrap();
    assert_eq!(dup.status, 409, "{}", dup.body);
}

/// `demo` on `base` with its data under `dir`, in a process group of its own (so that a test can
/// send it Ctrl-C as a terminal does: to the demo and its nodes at once).
fn start_demo(log: &str, base: u16, dir: &Path, fresh: bool) -> (Proc, Option<PathBuf>) {
    let mut args = vec![
        "demo".to_owned(),
        "--base-port".into(),
        base.to_string(),
        "--tick-ms".into(),
        TICK_MS.to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    if fresh {
        args.push("--fresh".into());
    }
    let mut cmd = Command::new(BIN);
    cmd.args(&args).stdin(Stdio::null()).process_group(0);
    let path = log_path(log);
    if let Some(path) = &path {
        eprintln!("logs of {log}: {}", path.display());
        let f = std::fs::File::create(path).expect("log file");
        cmd.stdout(f.try_clone().expect("log file")).stderr(f);
    }
    (Proc(cmd.spawn().expect("start the demo")), path)
}

/// Ctrl-C, as a terminal sends it: SIGINT to the demo's process group (the demo and its nodes).
fn ctrl_c(demo: &mut Proc) {
    let group = format!("-{}", demo.0.id());
    let ok = Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .expect("kill");
    assert!(ok.success());
    eventually("the demo to stop", Duration::from_secs(30), || {
        demo.exited().then_some(())
    });
    let status = demo.0.wait().unwrap();
    assert!(status.success(), "the demo stops cleanly: {status}");
}

fn addrs(base: u16) -> Vec<String> {
    (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect()
}

fn wait_up(base: u16) {
    for a in addrs(base) {
        eventually(
            &format!("{a} to see three nodes up"),
            Duration::from_secs(60),
            || {
                let v = get_json(&a, "/api/nodes");
                let ups = v.as_array()?.iter().filter(|x| x["status"] == "up").count();
                (ups == 3).then_some(())
            },
        );
    }
}

/// Heroes running on the three nodes in all (each node's own count).
fn running(base: u16) -> Option<u64> {
    addrs(base)
        .iter()
        .map(|a| metric(a, "throng_dist_children", "state=\"running\""))
        .sum()
}

#[test]
fn the_demo_keeps_its_heroes_across_ctrl_c_and_fresh_starts_empty() {
    let data = TempDir::new("demo");
    let base = free_base_port();
    let g = format!("127.0.0.1:{base}");

    let (mut demo, log1) = start_demo("durable-demo-1", base, &data.0, false);
    wait_up(base);
    let names: Vec<String> = (0..9).map(|i| format!("Vault-{i}")).collect();
    for n in &names {
        create(&g, n);
    }
    // Spread over the three nodes, and fighting.
    let before = after_fights(&g, 2 * names.len() as u64);
    assert!(
        before
            .values()
            .map(|h| h.node.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "heroes on more than one node: {before:?}"
    );
    ctrl_c(&mut demo);
    if let Some(log) = &log1 {
        let text = std::fs::read_to_string(log).unwrap();
        for n in NAMES {
            assert!(
                text.contains(&format!("{n} shuts down with the demo")),
                "{n} shuts down without leaving:\n{text}"
            );
        }
        assert!(
            !text.contains("leaves the cluster gracefully"),
            "no node leaves (handing heroes to a node that stops too):\n{text}"
        );
    }
    for n in NAMES {
        assert!(data.0.join(n).join("throng.redb").is_file(), "{n}'s store");
    }

    // The same command again: every hero back with its record, each running once.
    let (mut demo, log2) = start_demo("durable-demo-2", base, &data.0, false);
    wait_up(base);
    let now = check_back(&g, &before, &[log1, log2.clone()]);
    assert!(!now.is_empty());
    eventually(
        "one copy of each hero to run (no second set)",
        Duration::from_secs(30),
        || (running(base)? == by_name(&g).len() as u64).then_some(()),
    );
    if let Some(log) = &log2 {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("earlier heroes come back"),
            "the demo says the data was found:\n{text}"
        );
    }
    ctrl_c(&mut demo);

    // --fresh: the data is removed, and no hero comes back.
    let (mut demo, _) = start_demo("durable-demo-3", base, &data.0, true);
    wait_up(base);
    let quiet_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_until {
        assert!(by_name(&g).is_empty(), "a hero came back after --fresh");
        assert_eq!(running(base).unwrap_or(0), 0, "a hero runs after --fresh");
        std::thread::sleep(Duration::from_millis(250));
    }
    ctrl_c(&mut demo);
}
