//! The durable scenarios, each beside its baseline in the same run:
//!
//! - `restart`: N durable children on `k` node processes, every node killed with SIGKILL and
//!   started again on its data dir; time until all N run again and until a sweep of calls from
//!   n1 found each with its last state. Baselines: a cold start of `k` nodes without durability
//!   plus N starts from n1 (what rebuilding the set costs without a store), and the store's own
//!   reopen + scan of copies of the killed nodes' files.
//! - `durable`: three supervisors on one cluster, `plain` (no durability), `durable` (`Async`,
//!   10 ms) and `sync` (`Sync`: a reply waits until its state is on disk), with N children each:
//!   sequential state-changing calls by key to each, interleaved (p50/p99, remote and local
//!   owners), then streams of state-changing calls from every node (durable
//!   entries written per second per node, from `DistStats::written`). Baseline: the store's own
//!   group commits of the same entries (read back from a copy of n1's store).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use throng_store::{RedbStore, Store, Write, FILE_NAME};

use crate::control::{all, cluster, f, u, wait_members, NodeProc};
use crate::node::{pct, DURABLE, PLAIN, SYNC};

/// Group-commit sizes of the store baseline: the `engines` example's, and the persister's
/// largest (`MAX_BATCH` in `throng/src/cluster/dist/persist.rs`).
const STORE_BATCHES: [usize; 2] = [512, 8192];

/// Single-entry commits timed for the store's latency baseline.
const SINGLE_COMMITS: usize = 1000;

/// How long a restarted cluster may take to run every child again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// Sequential calls per block of the latency comparison, and blocks per supervisor / 2.
const LAT_CALLS: u64 = 1000;
const LAT_ROUNDS: u64 = 5;

/// The rows of the table (scenario, field, label).
pub(crate) const ROWS: &[(&str, &str, &str)] = &[
    (
        "restart",
        "cold_running_ms",
        "cold start (baseline): k nodes + N children started, all running (ms from first process start)",
    ),
    (
        "restart",
        "cold_cpu_ms",
        "cold start (baseline): CPU time of the k nodes until all running (ms)",
    ),
    (
        "restart",
        "cold_callable_ms",
        "cold start (baseline): + sweep of N calls from n1 (ms)",
    ),
    (
        "restart",
        "durable_start_ms",
        "restart: starting N durable children from n1 before the kill (ms; a new durable supervisor waits 1 s for recovery first)",
    ),
    (
        "restart",
        "warm_sweep_ms",
        "restart: sweep of N calls checking state, before the kill (ms)",
    ),
    (
        "restart",
        "formed_ms",
        "restart: k nodes up, every one sees all (ms from first process start)",
    ),
    (
        "restart",
        "first_running_ms",
        "restart: the first child running again (ms from first process start)",
    ),
    (
        "restart",
        "sample_hosted_ms",
        "restart: every sampled child (1 in 64) exported, as the transport sees it (ms)",
    ),
    (
        "restart",
        "half_running_ms",
        "restart: half of them running again (ms)",
    ),
    (
        "restart",
        "running_ms",
        "restart: all N running again (ms from first process start)",
    ),
    (
        "restart",
        "cpu_ms",
        "restart: CPU time of the k nodes until all running (ms)",
    ),
    (
        "restart",
        "sweep_ms",
        "restart: then a sweep of N calls from n1 checking state (ms)",
    ),
    (
        "restart",
        "callable_ms",
        "restart: all N callable with their last state (ms from first process start)",
    ),
    (
        "restart",
        "callable_calling_ms",
        "restart again, a client calling every child from the moment the nodes are up: the last one answered with its last state (ms from first process start)",
    ),
    (
        "restart",
        "calling_lost",
        "restart again: children that did not answer with their last state",
    ),
    (
        "restart",
        "kept_state",
        "restart: children answering with their last state",
    ),
    (
        "restart",
        "lost_state",
        "restart: children answering with another state",
    ),
    ("restart", "lost", "restart: children unreachable"),
    (
        "restart",
        "store_entries",
        "store (baseline): entries in the k killed stores",
    ),
    (
        "restart",
        "store_open_ms",
        "store (baseline): reopen of the k killed stores, one after another (ms)",
    ),
    (
        "restart",
        "store_scan_ms",
        "store (baseline): scan of their entries (ms)",
    ),
    (
        "restart",
        "running_vs_cold",
        "ratio: restart all running / cold start all running",
    ),
    (
        "restart",
        "callable_vs_cold",
        "ratio: restart all callable / cold start all callable",
    ),
    (
        "restart",
        "cpu_vs_cold",
        "ratio: restart CPU time / cold start CPU time (until all running)",
    ),
    (
        "restart",
        "running_vs_store",
        "ratio: restart all running / store reopen + scan",
    ),
    (
        "durable",
        "plain_remote_p50_us",
        "call by key, remote owner, None: p50 (us)",
    ),
    (
        "durable",
        "durable_remote_p50_us",
        "call by key, remote owner, Async: p50 (us)",
    ),
    (
        "durable",
        "plain_remote_p99_us",
        "call by key, remote owner, None: p99 (us)",
    ),
    (
        "durable",
        "durable_remote_p99_us",
        "call by key, remote owner, Async: p99 (us)",
    ),
    (
        "durable",
        "plain_local_p50_us",
        "call by key, local owner, None: p50 (us)",
    ),
    (
        "durable",
        "durable_local_p50_us",
        "call by key, local owner, Async: p50 (us)",
    ),
    (
        "durable",
        "plain_local_p99_us",
        "call by key, local owner, None: p99 (us)",
    ),
    (
        "durable",
        "durable_local_p99_us",
        "call by key, local owner, Async: p99 (us)",
    ),
    (
        "durable",
        "remote_p50_ratio",
        "ratio: Async / None, remote p50",
    ),
    (
        "durable",
        "remote_p99_ratio",
        "ratio: Async / None, remote p99",
    ),
    ("durable", "local_p50_ratio", "ratio: Async / None, local p50"),
    ("durable", "local_p99_ratio", "ratio: Async / None, local p99"),
    (
        "durable",
        "sync_remote_p50_us",
        "call by key, remote owner, Sync: p50 (us)",
    ),
    (
        "durable",
        "sync_remote_p99_us",
        "call by key, remote owner, Sync: p99 (us)",
    ),
    (
        "durable",
        "sync_local_p50_us",
        "call by key, local owner, Sync: p50 (us)",
    ),
    (
        "durable",
        "sync_local_p99_us",
        "call by key, local owner, Sync: p99 (us)",
    ),
    (
        "durable",
        "sync_remote_p99_ratio",
        "ratio: Sync / None, remote p99",
    ),
    (
        "durable",
        "sync_local_p99_ratio",
        "ratio: Sync / None, local p99",
    ),
    (
        "durable",
        "store_single_p50_us",
        "store (baseline): one commit of one entry, p50 (us)",
    ),
    (
        "durable",
        "store_single_p99_us",
        "store (baseline): one commit of one entry, p99 (us)",
    ),
    (
        "durable",
        "sync_local_p99_vs_store",
        "ratio: Sync local p99 / one-entry commit p99",
    ),
    (
        "durable",
        "sync_calls_per_s",
        "load, Sync: state-changing calls/s, cluster-wide",
    ),
    (
        "durable",
        "sync_mean_batch",
        "load, Sync: entries per group commit (mean)",
    ),
    (
        "durable",
        "plain_calls_per_s",
        "load, None: state-changing calls/s, cluster-wide",
    ),
    (
        "durable",
        "durable_calls_per_s",
        "load, Async: state-changing calls/s, cluster-wide",
    ),
    (
        "durable",
        "written_per_s_node",
        "load, Async: durable entries written/s per node (mean of nodes)",
    ),
    (
        "durable",
        "written_per_s_node_min",
        "load, Async: durable entries written/s, slowest node",
    ),
    (
        "durable",
        "mean_batch",
        "load, Async: entries per group commit (mean)",
    ),
    (
        "durable",
        "backlog_after_load",
        "load, Async: entries unwritten when the load stopped (sum of nodes)",
    ),
    (
        "durable",
        "store_update_per_s_512",
        "store (baseline): entries/s, commits of 512 (update)",
    ),
    (
        "durable",
        "store_update_per_s_8192",
        "store (baseline): entries/s, commits of 8192 (update)",
    ),
    (
        "durable",
        "written_vs_store",
        "ratio: written/s per node / store entries/s (512)",
    ),
];

/// The data directories of one run's nodes (and of the store copies), under the system's
/// temporary directory; removed on drop.
struct DataDirs(PathBuf);

impl DataDirs {
    fn new(tag: &str) -> Result<Self, String> {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "throng-bench-{tag}-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(DataDirs(dir))
    }

    fn of(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Copy node `name`'s store file (not open for writing) into `copy-{name}`.
    fn copy_store(&self, name: &str) -> Result<PathBuf, String> {
        let to = self.of(&format!("copy-{name}"));
        std::fs::create_dir_all(&to).map_err(|e| e.to_string())?;
        std::fs::copy(self.of(name).join(FILE_NAME), to.join(FILE_NAME))
            .map_err(|e| format!("copy of {name}'s store: {e}"))?;
        Ok(to)
    }
}

impl Drop for DataDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Nodes `n1..n{k}` with their data dirs under `dirs` (n1 first, the others seeded by it and
/// started together), once every one sees all `k`.
async fn durable_cluster(k: usize, dirs: &DataDirs) -> Result<Vec<NodeProc>, String> {
    let first = NodeProc::spawn_in("n1", None, Some(&dirs.of("n1"))).await?;
    let seed = first.gossip.clone();
    let names: Vec<String> = (2..=k).map(|i| format!("n{i}")).collect();
    let rest = futures_util::future::join_all(names.iter().map(|name| {
        let dir = dirs.of(name);
        let seed = &seed;
        async move { NodeProc::spawn_in(name, Some(seed), Some(&dir)).await }
    }))
    .await;
    let mut procs = vec![first];
    for p in rest {
        procs.push(p?);
    }
    wait_members(&procs, k).await?;
    Ok(procs)
}

/// The CPU time the nodes have used between them (ms).
fn cpu_ms(procs: &[NodeProc]) -> f64 {
    procs.iter().map(NodeProc::cpu_ms).sum()
}

async fn kill_all(procs: Vec<NodeProc>) {
    let kills = procs
        .into_iter()
        .map(|mut p| async move { p.kill9().await });
    futures_util::future::join_all(kills).await;
}

/// When the nodes ran children of `sup` between them (ms since the start of the measure).
#[derive(Default)]
struct Running {
    /// The first child.
    first_ms: f64,
    /// Half of them.
    half_ms: f64,
    /// All of them.
    all_ms: f64,
    /// Every key of a sample (every `SAMPLE_STEP`-th) is exported on some node: running and
    /// callable as the transport sees it, whatever the driver has reported.
    sample_ms: f64,
}

/// One key in this many is sampled by [`wait_running`]'s transport-side check.
const SAMPLE_STEP: u64 = 64;

/// Wait until the nodes run `n` children of `sup` between them (times since `t`).
async fn wait_running(
    procs: &[NodeProc],
    sup: &str,
    n: u64,
    t: Instant,
) -> Result<Running, String> {
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let mut times = Running::default();
    let sample = n.div_ceil(SAMPLE_STEP);
    loop {
        let hosted_cmd = json!({"cmd": "hosted", "sup": sup, "n": n, "calls": SAMPLE_STEP});
        let (stats, hosted) = tokio::join!(
            all(&refs, json!({"cmd": "stats", "sup": sup})),
            all(&refs, hosted_cmd)
        );
        let running: u64 = stats?.iter().map(|(v, _)| u(v, "running")).sum();
        let hosted: u64 = hosted?.iter().map(|(v, _)| u(v, "hosted")).sum();
        if hosted >= sample && times.sample_ms == 0.0 {
            times.sample_ms = ms(t);
        }
        if running > 0 && times.first_ms == 0.0 {
            times.first_ms = ms(t);
        }
        if running >= n / 2 && times.half_ms == 0.0 {
            times.half_ms = ms(t);
        }
        if running >= n && times.all_ms == 0.0 {
            times.all_ms = ms(t);
        }
        if times.all_ms > 0.0 && times.sample_ms > 0.0 {
            return Ok(times);
        }
        if t.elapsed() > RESTART_TIMEOUT {
            return Err(format!("only {running} of {n} children run"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sweep(n: u64, add: u64, sup: &str) -> Value {
    json!({"cmd": "resolve", "sup": sup, "n": n, "add": add, "timeout_ms": 60000})
}

/// The full-cluster restart and its cold-start baseline, in the order `cold_first` says.
pub(crate) async fn restart_run(k: usize, n: u64, cold_first: bool) -> Result<Value, String> {
    let mut out = json!({"scenario": "restart", "nodes": k, "n": n, "cold_first": cold_first});
    if cold_first {
        cold_start(k, n, &mut out).await?;
        restart(k, n, &mut out).await?;
    } else {
        restart(k, n, &mut out).await?;
        cold_start(k, n, &mut out).await?;
    }
    out["running_vs_cold"] = json!(f(&out, "running_ms") / f(&out, "cold_running_ms"));
    out["callable_vs_cold"] = json!(f(&out, "callable_ms") / f(&out, "cold_callable_ms"));
    out["cpu_vs_cold"] = json!(f(&out, "cpu_ms") / f(&out, "cold_cpu_ms"));
    out["running_vs_store"] =
        json!(f(&out, "running_ms") / (f(&out, "store_open_ms") + f(&out, "store_scan_ms")));
    Ok(out)
}

/// The baseline: `k` fresh nodes without durability, N children started from n1, then a sweep.
async fn cold_start(k: usize, n: u64, out: &mut Value) -> Result<(), String> {
    let t = Instant::now();
    let procs = cluster(k).await?;
    out["cold_formed_ms"] = json!(ms(t));
    let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
    out["cold_start_errors"] = json!(u(&start, "errors"));
    out["cold_running_ms"] = json!(wait_running(&procs, "default", n, t).await?.all_ms);
    out["cold_cpu_ms"] = json!(cpu_ms(&procs));
    let check = procs[0].ask(sweep(n, 0, "default")).await?;
    out["cold_callable_ms"] = json!(ms(t));
    out["cold_sweep_ms"] = json!(f(&check, "ms"));
    out["cold_unresolved"] = json!(u(&check, "unreachable") + u(&check, "wrong_state"));
    kill_all(procs).await;
    Ok(())
}

/// The subject: N durable children with a state, every node killed, every node started again.
async fn restart(k: usize, n: u64, out: &mut Value) -> Result<(), String> {
    let dirs = DataDirs::new("restart")?;
    let procs = durable_cluster(k, &dirs).await?;
    let start = procs[0]
        .ask(json!({"cmd": "start", "sup": DURABLE, "n": n}))
        .await?;
    out["durable_start_ms"] = json!(f(&start, "ms"));
    out["start_errors"] = json!(u(&start, "errors"));
    let bump = procs[0]
        .ask(json!({"cmd": "bump", "sup": DURABLE, "n": n}))
        .await?;
    out["bump_errors"] = json!(u(&bump, "errors"));
    let refs: Vec<&NodeProc> = procs.iter().collect();
    all(&refs, json!({"cmd": "durable", "sup": DURABLE})).await?;
    let warm = procs[0].ask(sweep(n, 1, DURABLE)).await?;
    out["warm_sweep_ms"] = json!(f(&warm, "ms"));
    let stats = all(&refs, json!({"cmd": "stats", "sup": DURABLE})).await?;
    out["written_before_kill"] = json!(stats.iter().map(|(v, _)| u(v, "written")).sum::<u64>());
    drop(refs);
    let names: Vec<String> = procs.iter().map(|p| p.name.clone()).collect();
    kill_all(procs).await;
    let copies = names
        .iter()
        .map(|name| dirs.copy_store(name).map(|d| (name.clone(), d)))
        .collect::<Result<Vec<_>, _>>()?;

    let t = Instant::now();
    let procs = durable_cluster(k, &dirs).await?;
    out["formed_ms"] = json!(ms(t));
    // (For attaching a profiler's report to the restarted nodes.)
    out["restart_pids"] = json!(procs.iter().map(|p| p.pid).collect::<Vec<_>>());
    let running = wait_running(&procs, DURABLE, n, t).await?;
    out["first_running_ms"] = json!(running.first_ms);
    out["sample_hosted_ms"] = json!(running.sample_ms);
    out["half_running_ms"] = json!(running.half_ms);
    out["running_ms"] = json!(running.all_ms);
    out["cpu_ms"] = json!(cpu_ms(&procs));
    let check = procs[0].ask(sweep(n, 1, DURABLE)).await?;
    out["callable_ms"] = json!(ms(t));
    out["sweep_ms"] = json!(f(&check, "ms"));
    out["kept_state"] = json!(u(&check, "ok"));
    out["lost_state"] = json!(u(&check, "wrong_state"));
    out["lost"] = json!(u(&check, "unreachable"));
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let stats = all(&refs, json!({"cmd": "stats", "sup": DURABLE})).await?;
    out["running_after"] = json!(stats.iter().map(|(v, _)| u(v, "running")).sum::<u64>());
    drop(refs);
    kill_all(procs).await;

    // Again, with a client that calls every child from the moment the nodes are up (as clients
    // of a restarted service do) instead of after every child runs: when did the last one
    // answer with its last state. (The sweep after "all running" above adds its own 1.3 s.)
    let t = Instant::now();
    let procs = durable_cluster(k, &dirs).await?;
    let check = procs[0].ask(sweep(n, 1, DURABLE)).await?;
    out["callable_calling_ms"] = json!(ms(t));
    out["calling_kept_state"] = json!(u(&check, "ok"));
    out["calling_lost"] = json!(u(&check, "wrong_state") + u(&check, "unreachable"));
    kill_all(procs).await;

    // The store alone: reopen each killed node's file (a copy taken before the restart) and
    // read its entries, one store after another.
    let (open_ms, scan_ms, entries) = tokio::task::spawn_blocking(move || {
        let (mut open, mut scan, mut entries) = (0.0, 0.0, 0usize);
        for (name, dir) in &copies {
            let t = Instant::now();
            let store = RedbStore::open(dir, name).map_err(|e| e.to_string())?;
            open += ms(t);
            let t = Instant::now();
            entries += store.load(DURABLE).map_err(|e| e.to_string())?.len();
            scan += ms(t);
        }
        Ok::<_, String>((open, scan, entries))
    })
    .await
    .map_err(|e| e.to_string())??;
    out["store_open_ms"] = json!(open_ms);
    out["store_scan_ms"] = json!(scan_ms);
    out["store_entries"] = json!(entries);
    Ok(())
}

/// One step of the durable scenario's interleaved sequence.
#[derive(Clone, Copy)]
enum Step {
    Store,
    Load(&'static str),
}

/// Calls by key and snapshot writes with and without durability, and the store's own rate.
pub(crate) async fn durable_run(k: usize, n: u64, load_ms: u64) -> Result<Value, String> {
    let dirs = DataDirs::new("durable")?;
    let procs = durable_cluster(k, &dirs).await?;
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let mut out = json!({
        "scenario": "durable",
        "nodes": k,
        "n": n,
        "load_ms": load_ms,
        "pids": procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
    });
    let mut errors = 0;
    for sup in [PLAIN, DURABLE, SYNC] {
        let start = procs[0]
            .ask(json!({"cmd": "start", "sup": sup, "n": n}))
            .await?;
        errors += u(&start, "errors");
        out[format!("{sup}_start_ms")] = json!(f(&start, "ms"));
        all(&refs, json!({"cmd": "durable", "sup": sup})).await?;
    }

    // The entries the baseline writes: n1's, as its store holds them (idle now: nothing unwritten).
    let copy = dirs.copy_store("n1")?;
    let entries = tokio::task::spawn_blocking(move || {
        RedbStore::open(&copy, "n1")
            .and_then(|s| s.load(DURABLE))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    out["entry_bytes_mean"] =
        json!(entries.iter().map(|(_, v)| v.len()).sum::<usize>() as f64 / entries.len() as f64);

    let lat = procs[1]
        .ask(json!({"cmd": "latency_ab", "n": n, "calls": LAT_CALLS, "rounds": LAT_ROUNDS}))
        .await?;
    errors += u(&lat, "errors");
    for side in ["remote", "local"] {
        for p in ["p50", "p99"] {
            let plain = f(&lat, &format!("plain_{side}_{p}_us"));
            let durable = f(&lat, &format!("durable_{side}_{p}_us"));
            let sync = f(&lat, &format!("sync_{side}_{p}_us"));
            out[format!("plain_{side}_{p}_us")] = json!(plain);
            out[format!("durable_{side}_{p}_us")] = json!(durable);
            out[format!("sync_{side}_{p}_us")] = json!(sync);
            out[format!("{side}_{p}_ratio")] = json!(durable / plain);
            out[format!("sync_{side}_{p}_ratio")] = json!(sync / plain);
        }
    }
    all(&refs, json!({"cmd": "durable", "sup": DURABLE})).await?;

    let steps = [
        Step::Store,
        Step::Load(PLAIN),
        Step::Load(DURABLE),
        Step::Load(SYNC),
        Step::Load(SYNC),
        Step::Load(DURABLE),
        Step::Load(PLAIN),
        Step::Store,
    ];
    let mut store_rates: Vec<Value> = Vec::new();
    let mut loads: Vec<Value> = Vec::new();
    for step in steps {
        match step {
            Step::Store => store_rates.push(store_rate(&dirs, &entries).await?),
            Step::Load(sup) => {
                let l = load_round(&procs, sup, n, load_ms).await?;
                errors += u(&l, "errors");
                loads.push(l);
            }
        }
    }
    drop(refs);
    kill_all(procs).await;

    let mean = |vals: Vec<f64>| vals.iter().sum::<f64>() / vals.len().max(1) as f64;
    let of = |sup: &str, key: &str| {
        mean(
            loads
                .iter()
                .filter(|l| l["sup"] == sup)
                .map(|l| f(l, key))
                .collect(),
        )
    };
    out["plain_calls_per_s"] = json!(of(PLAIN, "calls_per_s"));
    out["durable_calls_per_s"] = json!(of(DURABLE, "calls_per_s"));
    out["sync_calls_per_s"] = json!(of(SYNC, "calls_per_s"));
    out["sync_written_per_s_node"] = json!(of(SYNC, "written_per_s_node"));
    out["sync_mean_batch"] = json!(of(SYNC, "mean_batch"));
    out["written_per_s_node"] = json!(of(DURABLE, "written_per_s_node"));
    out["written_per_s_node_min"] = json!(of(DURABLE, "written_per_s_node_min"));
    out["mean_batch"] = json!(of(DURABLE, "mean_batch"));
    out["backlog_after_load"] = json!(of(DURABLE, "backlog_after_load"));
    out["drain_ms"] = json!(of(DURABLE, "drain_ms"));
    for key in ["store_single_p50_us", "store_single_p99_us"] {
        out[key] = json!(mean(store_rates.iter().map(|s| f(s, key)).collect()));
    }
    out["sync_local_p99_vs_store"] =
        json!(f(&out, "sync_local_p99_us") / f(&out, "store_single_p99_us"));
    for b in STORE_BATCHES {
        for kind in ["insert", "update"] {
            let key = format!("store_{kind}_per_s_{b}");
            out[&key] = json!(mean(store_rates.iter().map(|s| f(s, &key)).collect()));
        }
    }
    out["written_vs_store"] =
        json!(f(&out, "written_per_s_node") / f(&out, "store_update_per_s_512"));
    out["loads"] = json!(loads);
    out["store_runs"] = json!(store_rates);
    out["lost"] = json!(errors);
    Ok(out)
}

/// Every node streams state-changing calls to `sup`'s children for `load_ms`: the calls per
/// second, and (for the durable supervisor) the entries each node wrote per second, the mean
/// group commit, the backlog when the load stopped and the time to write it.
async fn load_round(procs: &[NodeProc], sup: &str, n: u64, load_ms: u64) -> Result<Value, String> {
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let k = procs.len() as u64;
    let stats_cmd = json!({"cmd": "stats", "sup": sup});
    let before = all(&refs, stats_cmd.clone()).await?;
    let t = Instant::now();
    let loads = futures_util::future::join_all(procs.iter().enumerate().map(|(i, p)| {
        p.ask(json!({"cmd": "load", "sup": sup, "n": n, "offset": i as u64 * n / k, "ms": load_ms}))
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let secs = t.elapsed().as_secs_f64();
    let after = all(&refs, stats_cmd).await?;
    let t = Instant::now();
    all(&refs, json!({"cmd": "durable", "sup": sup})).await?;
    let drain_ms = ms(t);
    let calls: u64 = loads.iter().map(|v| u(v, "calls")).sum();
    let written: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|((b, _), (a, _))| (u(a, "written") - u(b, "written")) as f64 / secs)
        .collect();
    let (w, c): (u64, u64) = before
        .iter()
        .zip(&after)
        .map(|((b, _), (a, _))| {
            (
                u(a, "written") - u(b, "written"),
                u(a, "commits") - u(b, "commits"),
            )
        })
        .fold((0, 0), |(w, c), (dw, dc)| (w + dw, c + dc));
    Ok(json!({
        "sup": sup,
        "secs": secs,
        "calls": calls,
        "errors": loads.iter().map(|v| u(v, "errors")).sum::<u64>(),
        "calls_per_s": calls as f64 / secs,
        "written_per_s": written,
        "written_per_s_node": written.iter().sum::<f64>() / written.len() as f64,
        "written_per_s_node_min": written.iter().copied().fold(f64::INFINITY, f64::min),
        "mean_batch": if c == 0 { 0.0 } else { w as f64 / c as f64 },
        "backlog_after_load": after.iter().map(|(v, _)| u(v, "unwritten")).sum::<u64>(),
        "drain_ms": drain_ms,
    }))
}

/// The store alone, in the controller: `entries` written to a fresh [`RedbStore`] in group
/// commits of each of [`STORE_BATCHES`], first as inserts, then again as updates (what a node
/// does to entries it already holds): entries per second.
async fn store_rate(dirs: &DataDirs, entries: &[(String, Vec<u8>)]) -> Result<Value, String> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let base = dirs.of(&format!("store-{}", RUN.fetch_add(1, Ordering::Relaxed)));
    let entries = entries.to_vec();
    // Every entry of `entries` put into `store`, in commits of `batch`.
    fn put_all(
        store: &RedbStore,
        entries: &[(String, Vec<u8>)],
        batch: usize,
    ) -> Result<(), String> {
        for chunk in entries.chunks(batch) {
            let writes: Vec<Write<'_>> = chunk
                .iter()
                .map(|(key, value)| Write::Put {
                    scope: DURABLE,
                    key,
                    value,
                })
                .collect();
            store.apply(&writes).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    tokio::task::spawn_blocking(move || {
        let mut out = json!({"entries": entries.len()});
        for b in STORE_BATCHES {
            let dir = base.join(b.to_string());
            let store = RedbStore::open(&dir, "baseline").map_err(|e| e.to_string())?;
            for kind in ["insert", "update"] {
                let t = Instant::now();
                put_all(&store, &entries, b)?;
                out[format!("store_{kind}_per_s_{b}")] =
                    json!(entries.len() as f64 / t.elapsed().as_secs_f64());
            }
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
        // What a `Sync` call waits for at least: one commit of one entry (into a store holding
        // all of them), its latency.
        let dir = base.join("single");
        let store = RedbStore::open(&dir, "baseline").map_err(|e| e.to_string())?;
        put_all(&store, &entries, 8192)?;
        let mut lat = Vec::new();
        for one in entries.chunks(1).take(SINGLE_COMMITS) {
            let t = Instant::now();
            put_all(&store, one, 1)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        out["store_single_p50_us"] = json!(pct(&lat, 0.5));
        out["store_single_p99_us"] = json!(pct(&lat, 0.99));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok::<_, String>(out)
    })
    .await
    .map_err(|e| e.to_string())?
}
