//! The controller: starts node processes, runs the scenarios, prints JSON and a table.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

/// How long the controller waits for one answer from a node.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub(crate) struct NodeProc {
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) gossip: String,
    child: Child,
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiters: Waiters,
    next: AtomicU64,
}

impl NodeProc {
    async fn spawn(name: &str, seed: Option<&str>) -> Result<NodeProc, String> {
        NodeProc::spawn_in(name, seed, None).await
    }

    /// A node process; with `data_dir`, durable (`THRONG_DATA_DIR`).
    pub(crate) async fn spawn_in(
        name: &str,
        seed: Option<&str>,
        data_dir: Option<&Path>,
    ) -> Result<NodeProc, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("node").arg(name);
        if let Some(s) = seed {
            cmd.arg(s);
        }
        match data_dir {
            Some(d) => cmd.env("THRONG_DATA_DIR", d),
            None => cmd.env_remove("THRONG_DATA_DIR"),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let waiters: Waiters = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(0, ready_tx);
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let id = v["id"].as_u64().unwrap_or(u64::MAX);
                if let Some(tx) = w.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                    let _ = tx.send(v);
                }
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| format!("{name} not ready"))?
            .map_err(|_| format!("{name} exited"))?;
        Ok(NodeProc {
            name: name.to_owned(),
            pid: ready["pid"].as_u64().unwrap_or(0) as u32,
            gossip: ready["ready"].as_str().unwrap_or_default().to_owned(),
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            waiters,
            next: AtomicU64::new(1),
        })
    }

    /// Send one command and wait for its answer, at most [`ANSWER_TIMEOUT`].
    pub(crate) async fn ask(&self, cmd: Value) -> Result<Value, String> {
        self.ask_within(cmd, ANSWER_TIMEOUT).await
    }

    /// Send one command and wait for its answer, at most `timeout`.
    pub(crate) async fn ask_within(
        &self,
        mut cmd: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        cmd["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        let answer = tokio::time::timeout(timeout, rx).await;
        if answer.is_err() {
            // Forget the waiter: a late answer is dropped.
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        answer
            .map_err(|_| format!("{}: no answer to {cmd} within {timeout:?}", self.name))?
            .map_err(|_| format!("{}: exited during {cmd}", self.name))
    }

    /// Resident memory of the process (bytes), from `/proc/PID/status` (0 if unreadable).
    pub(crate) fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// CPU time the process has used so far (user + system, ms), from `/proc` (clock ticks of
    /// 10 ms: Linux's `USER_HZ`).
    pub(crate) fn cpu_ms(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                // Fields after the command name (which is in parentheses): state is the first;
                // utime and stime are the 12th and 13th.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks as f64 * 10.0)
            })
            .unwrap_or(0.0)
    }

    /// Kill the process with SIGKILL and reap it.
    pub(crate) async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Wait until the process exits by itself (after `leave`).
    pub(crate) async fn wait_exit(&mut self) {
        let _ = self.child.wait().await;
    }

    /// Whether the process has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Close the node's stdin: it ends its command loop and exits.
    pub(crate) async fn close_stdin(&self) {
        let _ = self.stdin.lock().await.shutdown().await;
    }
}

struct Opts {
    /// The cluster sizes (`--nodes 3,12,24,48`), each run in turn.
    nodes: Vec<usize>,
    /// Keys each node calls to check that it routes (`--sample`).
    sample: usize,
    /// Nodes started at once by the `join-storm` scenario (`--storm`).
    storm: usize,
    children: Vec<u64>,
    repeat: usize,
    json: Option<String>,
    svg: Option<String>,
    graceful: bool,
    join: bool,
    names: Vec<u64>,
    /// The scenarios run for each N (`--scenarios`; default: failover, graceful, join).
    scenarios: Option<Vec<String>>,
    /// How long each load round of the `durable` scenario runs.
    load_ms: u64,
    /// Of the N keys the `callers` scenario touches, how many have a child (`--live`; default
    /// all).
    live: u64,
}

/// Every scenario `--scenarios` accepts.
const SCENARIOS: &[&str] = &[
    "failover",
    "graceful",
    "join",
    "restart",
    "durable",
    "join-storm",
    "rolling",
    "callers",
];

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        nodes: vec![3],
        sample: 200,
        storm: 24,
        children: vec![1000],
        repeat: 1,
        json: None,
        svg: None,
        graceful: true,
        join: true,
        names: Vec::new(),
        scenarios: None,
        load_ms: 5000,
        live: u64::MAX,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--nodes" => {
                o.nodes = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--nodes: {e}"))?
            }
            "--sample" => o.sample = val()?.parse().map_err(|e| format!("--sample: {e}"))?,
            "--storm" => o.storm = val()?.parse().map_err(|e| format!("--storm: {e}"))?,
            "--children" => {
                o.children = val()?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--children: {e}"))?
            }
            "--repeat" => o.repeat = val()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--json" => o.json = Some(val()?),
            "--svg" => o.svg = Some(val()?),
            "--skip-graceful" => o.graceful = false,
            "--skip-join" => o.join = false,
            "--names" => {
                o.names = val()?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--names: {e}"))?
            }
            "--scenarios" => {
                let list: Vec<String> = val()?.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = list.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    return Err(format!(
                        "--scenarios: unknown {bad:?} (known: {SCENARIOS:?})"
                    ));
                }
                o.scenarios = Some(list);
            }
            "--load-ms" => o.load_ms = val()?.parse().map_err(|e| format!("--load-ms: {e}"))?,
            "--live" => {
                o.live = val()?
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("--live: {e}"))?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.nodes.is_empty() || o.nodes.iter().any(|k| *k < 3) {
        return Err("--nodes must be at least 3 (one is killed, two must survive)".into());
    }
    if o.sample == 0 || o.storm == 0 {
        return Err("--sample and --storm must be positive".into());
    }
    if o.children.is_empty() || o.children.contains(&0) || o.repeat == 0 {
        return Err("--children and --repeat must be positive".into());
    }
    Ok(o)
}

/// `throng-bench cluster ...`.
pub async fn run(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let mut results: Vec<Value> = Vec::new();
    let mut failed = false;
    for &k in &opts.nodes {
        for &n in &opts.children {
            for r in 1..=opts.repeat {
                let mut scenarios = vec!["failover"];
                if opts.graceful {
                    scenarios.push("graceful");
                }
                if opts.join {
                    scenarios.push("join");
                }
                if let Some(list) = &opts.scenarios {
                    scenarios = list.iter().map(String::as_str).collect();
                }
                for scenario in scenarios {
                    let s = opts.sample;
                    let run = match scenario {
                        "join" => crate::scale::join_run(k, n, s).await,
                        "join-storm" => crate::scale::join_storm_run(k, opts.storm, n, s).await,
                        "rolling" => crate::scale::rolling_run(k, n).await,
                        // Odd runs measure the baseline first, even ones last (ABBA over repeats).
                        "restart" => crate::durable::restart_run(k, n, r % 2 == 1).await,
                        "durable" => crate::durable::durable_run(k, n, opts.load_ms).await,
                        "callers" => crate::callers::callers_run(k, n, opts.live).await,
                        _ => crate::scale::stop_run(k, n, scenario, s).await,
                    };
                    match run {
                        Ok(mut v) => {
                            v["run"] = json!(r);
                            println!("{v}");
                            if v["lost"].as_u64() != Some(0) {
                                failed = true;
                            }
                            results.push(v);
                        }
                        Err(e) => {
                            eprintln!("cluster: k={k} N={n} {scenario} run {r}: {e}");
                            failed = true;
                        }
                    }
                }
            }
        }
        for &n in &opts.names {
            for r in 1..=opts.repeat {
                match names_run(k, n).await {
                    Ok(mut v) => {
                        v["run"] = json!(r);
                        println!("{v}");
                        if v["unseen"].as_u64() != Some(0) {
                            failed = true;
                        }
                        results.push(v);
                    }
                    Err(e) => {
                        eprintln!("cluster: names k={k} N={n} run {r}: {e}");
                        failed = true;
                    }
                }
            }
        }
    }
    print_table(&results);
    if let Some(path) = &opts.json {
        let _ = std::fs::write(
            path,
            serde_json::to_string_pretty(&results).unwrap_or_default(),
        );
    }
    if let Some(path) = &opts.svg {
        let _ = std::fs::write(path, svg(&results));
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

pub(crate) fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

pub(crate) async fn all(nodes: &[&NodeProc], cmd: Value) -> Result<Vec<(Value, f64)>, String> {
    let t = Instant::now();
    let futs = nodes.iter().map(|p| {
        let cmd = cmd.clone();
        async move {
            let v = p.ask(cmd).await?;
            Ok::<_, String>((v, t.elapsed().as_secs_f64() * 1000.0))
        }
    });
    futures_util::future::join_all(futs)
        .await
        .into_iter()
        .collect()
}

/// Start nodes `n1..n{k}` (seeded by n1) and wait until every one sees all `k`.
pub(crate) async fn cluster(k: usize) -> Result<Vec<NodeProc>, String> {
    let first = NodeProc::spawn("n1", None).await?;
    let seed = first.gossip.clone();
    let mut procs = vec![first];
    for i in 2..=k {
        procs.push(NodeProc::spawn(&format!("n{i}"), Some(&seed)).await?);
    }
    wait_members(&procs, k).await?;
    Ok(procs)
}

pub(crate) async fn wait_members(procs: &[NodeProc], k: usize) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let views = all(&procs.iter().collect::<Vec<_>>(), json!({"cmd": "members"})).await?;
        if views.iter().all(|(v, _)| u(v, "owners") == k as u64) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(30 + k as u64) {
            return Err(format!("cluster of {k} did not form"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The registry across processes: n1 registers `n` names; the others watch for them.
async fn names_run(k: usize, n: u64) -> Result<Value, String> {
    let procs = cluster(k).await?;
    let watchers: Vec<&NodeProc> = procs[1..].iter().collect();
    let watch = all(
        &watchers,
        json!({"cmd": "names_watch", "n": n, "timeout_ms": 60000}),
    );
    let register = procs[0].ask(json!({"cmd": "names_register", "n": n}));
    let (seen, reg) = tokio::join!(watch, register);
    let (seen, reg) = (seen?, reg?);
    let unseen: u64 = seen.iter().map(|(v, _)| n - u(v, "seen")).sum();
    let p99 = seen.iter().map(|(v, _)| f(v, "p99_ms")).fold(0.0, f64::max);
    let p50 = seen.iter().map(|(v, _)| f(v, "p50_ms")).fold(0.0, f64::max);
    let max = seen.iter().map(|(v, _)| f(v, "max_ms")).fold(0.0, f64::max);
    let all_ms = seen.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
    Ok(json!({
        "scenario": "names",
        "nodes": k,
        "n": n,
        "register_ms": f(&reg, "ms"),
        "register_errors": u(&reg, "errors"),
        "visible_everywhere_ms": all_ms,
        "visibility_p50_ms": p50,
        "visibility_p99_ms": p99,
        "visibility_max_ms": max,
        "unseen": unseen,
    }))
}

fn stats(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let med = values[values.len() / 2];
    let fmt = |x: f64| {
        if x.abs() >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    if values.len() == 1 {
        fmt(med)
    } else {
        format!(
            "{} ({}..{}, n={})",
            fmt(med),
            fmt(values[0]),
            fmt(values[values.len() - 1]),
            values.len()
        )
    }
}

/// The rows of the table (scenario, field, label).
const ROWS: &[(&str, &str, &str)] = &[
    ("failover", "start_ms", "start N children from n1 (ms)"),
    ("failover", "start_per_s", "start rate (children/s)"),
    (
        "failover",
        "route_after_start_ms",
        "every node routes a sample of keys (ms after the start returned)",
    ),
    (
        "failover",
        "start_cpu_ms_total",
        "CPU of all nodes during start + routing (ms)",
    ),
    (
        "failover",
        "start_cpu_ms_max_node",
        "CPU of the busiest node during start + routing (ms)",
    ),
    (
        "failover",
        "rss_idle_mb_mean",
        "memory: resident per node before any child (MB)",
    ),
    (
        "failover",
        "rss_mb_mean",
        "memory: resident per node with N children (MB, mean)",
    ),
    (
        "failover",
        "rss_mb_max",
        "memory: resident per node with N children (MB, max)",
    ),
    (
        "failover",
        "bytes_per_child_cluster",
        "memory: bytes per child, cluster-wide",
    ),
    (
        "failover",
        "idle_cpu_pct_mean",
        "idle CPU per node (% of a core, mean)",
    ),
    (
        "failover",
        "idle_cpu_pct_max",
        "idle CPU per node (% of a core, max)",
    ),
    (
        "failover",
        "call_p50_us",
        "call by key, remote child, p50 (us)",
    ),
    ("failover", "call_p99_us", "call by key, p99 (us)"),
    ("failover", "victim_children", "victim (last node) children"),
    (
        "failover",
        "detect_first_ms",
        "kill -9: first survivor declares it down (ms)",
    ),
    (
        "failover",
        "detect_last_ms",
        "kill -9: last survivor declares it down (ms)",
    ),
    (
        "failover",
        "owner_events_last_ms",
        "kill -9: last FailedOver event on the new owners (ms)",
    ),
    (
        "failover",
        "victim_recovered_ms",
        "kill -9: all victim's children answer with last state, one caller (ms)",
    ),
    (
        "failover",
        "after_detection_ms",
        "kill -9: of which after the last detection (ms)",
    ),
    (
        "failover",
        "routed_everywhere_ms",
        "kill -9: every survivor routes a sample of them (ms)",
    ),
    (
        "failover",
        "recovery_cpu_ms_total",
        "kill -9: CPU of all survivors during recovery (ms)",
    ),
    (
        "failover",
        "kept_state",
        "kill -9: children with their last state (full sweep after)",
    ),
    (
        "failover",
        "lost_state",
        "kill -9: children with an older state",
    ),
    ("failover", "lost", "kill -9: children unreachable"),
    (
        "failover",
        "false_downs",
        "kill -9: nodes falsely declared down",
    ),
    (
        "failover",
        "final_sweep_ms",
        "full sweep of N from one node (ms, the old check's unit)",
    ),
    (
        "graceful",
        "owner_events_last_ms",
        "graceful: last Adopted event on the new owners: all its children run there (ms)",
    ),
    (
        "graceful",
        "leave_ms",
        "graceful: leave() returned: each child also has its new backup (ms)",
    ),
    (
        "graceful",
        "victim_recovered_ms",
        "graceful: all its children answer with exact state, one caller (ms)",
    ),
    (
        "graceful",
        "routed_everywhere_ms",
        "graceful: every survivor routes a sample of them (ms)",
    ),
    (
        "graceful",
        "kept_state",
        "graceful: children with their exact state (full sweep after)",
    ),
    ("graceful", "lost", "graceful: children unreachable"),
    (
        "graceful",
        "caller_calls",
        "graceful: calls by a concurrent caller",
    ),
    (
        "graceful",
        "caller_failed",
        "graceful: of which failed or wrong",
    ),
    (
        "graceful",
        "false_downs",
        "graceful: nodes falsely declared down",
    ),
    ("join", "moved", "join: children moved to the new node"),
    (
        "join",
        "members_ms",
        "join: every node sees the new one (ms from its start)",
    ),
    (
        "join",
        "rebalanced_ms",
        "join: every node runs exactly what it owns (ms)",
    ),
    (
        "join",
        "routed_everywhere_ms",
        "join: + every node routes a sample of the moved keys (ms)",
    ),
    (
        "join",
        "kept_state",
        "join: children with their exact state (full sweep after)",
    ),
    ("join", "lost", "join: children unreachable"),
    ("join", "caller_calls", "join: calls by a concurrent caller"),
    ("join", "caller_failed", "join: of which failed or wrong"),
    (
        "join-storm",
        "spawned_ms",
        "join storm: all joiners' processes ready (ms)",
    ),
    (
        "join-storm",
        "members_ms",
        "join storm: every node sees every node (ms)",
    ),
    (
        "join-storm",
        "rebalanced_ms",
        "join storm: every node runs exactly what it owns (ms)",
    ),
    (
        "join-storm",
        "routed_everywhere_ms",
        "join storm: + every node routes a sample (ms)",
    ),
    (
        "join-storm",
        "exited",
        "join storm: node processes that exited",
    ),
    (
        "join-storm",
        "false_downs",
        "join storm: nodes falsely declared down",
    ),
    (
        "join-storm",
        "rejoined",
        "join storm: nodes told they had been declared down",
    ),
    (
        "join-storm",
        "kept_state",
        "join storm: children with their exact state",
    ),
    ("join-storm", "lost", "join storm: children unreachable"),
    (
        "join-storm",
        "caller_calls",
        "join storm: calls by a concurrent caller",
    ),
    (
        "join-storm",
        "caller_failed",
        "join storm: of which failed or wrong",
    ),
    (
        "join-storm",
        "caller_wrong",
        "join storm: of which wrong (the rest erred)",
    ),
    (
        "join-storm",
        "base_cpu_ms",
        "join storm: CPU of the running nodes, storm to rebalanced (ms)",
    ),
    (
        "join-storm",
        "joiners_cpu_ms",
        "join storm: CPU of the joiners, start to rebalanced (ms)",
    ),
    (
        "rolling",
        "total_ms",
        "rolling restart: every node, one at a time (ms)",
    ),
    (
        "rolling",
        "step_ms_mean",
        "rolling restart: per node, leave to rebalanced (ms, mean)",
    ),
    (
        "rolling",
        "step_ms_max",
        "rolling restart: per node (ms, max)",
    ),
    (
        "rolling",
        "leave_ms_mean",
        "rolling restart: leave() (ms, mean)",
    ),
    (
        "rolling",
        "kept_state",
        "rolling restart: children with their exact state",
    ),
    ("rolling", "lost", "rolling restart: children unreachable"),
    (
        "rolling",
        "caller_calls",
        "rolling restart: calls by a concurrent caller",
    ),
    (
        "rolling",
        "caller_failed",
        "rolling restart: of which failed or wrong",
    ),
    (
        "rolling",
        "false_downs",
        "rolling restart: nodes falsely declared down",
    ),
    (
        "rolling",
        "rejoined",
        "rolling restart: nodes told they had been declared down",
    ),
    (
        "names",
        "register_ms",
        "registry: register N names on n1 (ms)",
    ),
    (
        "names",
        "visible_everywhere_ms",
        "registry: all N visible on every other node (ms)",
    ),
    (
        "names",
        "visibility_p50_ms",
        "registry: visibility p50 (ms)",
    ),
    (
        "names",
        "visibility_p99_ms",
        "registry: visibility p99 (ms)",
    ),
    ("names", "unseen", "registry: names never seen"),
];

/// `throng-bench table FILE`: print the table of a `--json` file again.
pub fn table(args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("table: missing FILE");
        return ExitCode::from(2);
    };
    match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).map_err(|e| e.to_string()))
    {
        Ok(results) => {
            print_table(&results);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("table: {path}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Print a markdown table of medians: one column per (nodes, N), one row per metric.
fn print_table(results: &[Value]) {
    let rows = ROWS
        .iter()
        .chain(crate::durable::ROWS)
        .chain(crate::callers::ROWS);
    let mut cols: Vec<(u64, u64)> = results.iter().map(|r| (u(r, "nodes"), u(r, "n"))).collect();
    cols.sort();
    cols.dedup();
    let mut header = "| metric |".to_string();
    for (k, n) in &cols {
        header.push_str(&format!(" k={k} N={n} |"));
    }
    println!("\n{header}");
    println!("|---|{}", "---|".repeat(cols.len()));
    for (scenario, key, label) in rows {
        if !results.iter().any(|r| r["scenario"] == *scenario) {
            continue;
        }
        let mut line = format!("| {label} |");
        for (k, n) in &cols {
            let mut vals: Vec<f64> = results
                .iter()
                .filter(|r| u(r, "nodes") == *k && u(r, "n") == *n && r["scenario"] == *scenario)
                .filter_map(|r| r[*key].as_f64())
                .collect();
            line.push_str(&format!(" {} |", stats(&mut vals)));
        }
        println!("{line}");
    }
}

/// A small line chart of failover and graceful recovery time against N, as SVG.
fn svg(results: &[Value]) -> String {
    let mut series: BTreeMap<&str, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for r in results {
        let scenario = match r["scenario"].as_str() {
            Some("failover") => "kill -9",
            Some("graceful") => "graceful",
            _ => continue,
        };
        series
            .entry(scenario)
            .or_default()
            .entry(u(r, "n"))
            .or_default()
            .push(f(r, "recovered_ms"));
    }
    let points: Vec<(&str, Vec<(u64, f64)>)> = series
        .into_iter()
        .map(|(s, m)| {
            let pts = m
                .into_iter()
                .map(|(n, mut v)| {
                    v.sort_by(f64::total_cmp);
                    (n, v[v.len() / 2])
                })
                .collect();
            (s, pts)
        })
        .collect();
    let max_n = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .max()
        .unwrap_or(1) as f64;
    let max_ms = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max)
        * 1.1;
    let (w, h, m) = (640.0, 400.0, 60.0);
    let x = |n: f64| m + (w - 2.0 * m) * n / max_n;
    let y = |ms: f64| h - m - (h - 2.0 * m) * ms / max_ms;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>\
         <text x='{}' y='20' text-anchor='middle' font-size='14'>Throng: time until all children answer with state after a node stops (median)</text>\
         <line x1='{m}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{m}' y1='{m}' x2='{m}' y2='{}' stroke='black'/>\
         <text x='{}' y='{}' text-anchor='middle'>children (N)</text>\
         <text x='15' y='{}' transform='rotate(-90 15 {})' text-anchor='middle'>ms</text>",
        w / 2.0, h - m, w - m, h - m, h - m, w / 2.0, h - 15.0, h / 2.0, h / 2.0
    );
    for i in 0..=4 {
        let v = max_ms * i as f64 / 4.0;
        s.push_str(&format!(
            "<text x='{}' y='{}' text-anchor='end'>{v:.0}</text>",
            m - 5.0,
            y(v) + 4.0
        ));
    }
    let colors = ["#d62728", "#1f77b4"];
    for (i, (name, pts)) in points.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(n, ms)| format!("{:.1},{:.1}", x(*n as f64), y(*ms)))
            .collect();
        s.push_str(&format!(
            "<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>",
            path.join(" ")
        ));
        for (n, ms) in pts {
            s.push_str(&format!(
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{c}'/><text x='{:.1}' y='{}' text-anchor='middle'>{n}</text>",
                x(*n as f64),
                y(*ms),
                x(*n as f64),
                h - m + 15.0
            ));
        }
        s.push_str(&format!(
            "<text x='{}' y='{}' fill='{c}'>{name}</text>",
            m + 10.0,
            m + 15.0 * i as f64
        ));
    }
    s.push_str("</svg>\n");
    s
}
