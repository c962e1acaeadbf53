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

    pub(crate) async fn ask(&self, mut cmd: Value) -> Result<Value, String> {
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
        tokio::time::timeout(ANSWER_TIMEOUT, rx)
            .await
            .map_err(|_| format!("{}: no answer to {cmd}", self.name))?
            .map_err(|_| format!("{}: exited during {cmd}", self.name))
    }

    fn rss(&self) -> u64 {
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

    pub(crate) async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

struct Opts {
    nodes: usize,
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
}

/// Every scenario `--scenarios` accepts.
const SCENARIOS: &[&str] = &["failover", "graceful", "join", "restart", "durable"];

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        nodes: 3,
        children: vec![1000],
        repeat: 1,
        json: None,
        svg: None,
        graceful: true,
        join: true,
        names: Vec::new(),
        scenarios: None,
        load_ms: 5000,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--nodes" => o.nodes = val()?.parse().map_err(|e| format!("--nodes: {e}"))?,
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
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.nodes < 3 {
        return Err("--nodes must be at least 3 (one is killed, two must survive)".into());
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
                let run = match scenario {
                    "join" => join_run(opts.nodes, n).await,
                    // Odd runs measure the baseline first, even ones last (ABBA over repeats).
                    "restart" => crate::durable::restart_run(opts.nodes, n, r % 2 == 1).await,
                    "durable" => crate::durable::durable_run(opts.nodes, n, opts.load_ms).await,
                    _ => one_run(opts.nodes, n, scenario).await,
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
                        eprintln!("cluster: N={n} {scenario} run {r}: {e}");
                        failed = true;
                    }
                }
            }
        }
    }
    for &n in &opts.names {
        for r in 1..=opts.repeat {
            match names_run(opts.nodes, n).await {
                Ok(mut v) => {
                    v["run"] = json!(r);
                    println!("{v}");
                    if v["unseen"].as_u64() != Some(0) {
                        failed = true;
                    }
                    results.push(v);
                }
                Err(e) => {
                    eprintln!("cluster: names N={n} run {r}: {e}");
                    failed = true;
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
        if t.elapsed() > Duration::from_secs(30) {
            return Err("cluster did not form".into());
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

/// A node joins a cluster of `k - 1` holding `n` children: time until every child runs on its
/// owner in the new view, with its state, and calls from a concurrent caller meanwhile.
async fn join_run(k: usize, n: u64) -> Result<Value, String> {
    let mut procs = cluster(k - 1).await?;
    let seed = procs[0].gossip.clone();
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
    procs[0].ask(json!({"cmd": "bump", "n": n})).await?;
    all(&refs, json!({"cmd": "replicated"})).await?;
    drop(refs);
    procs[0].ask(json!({"cmd": "caller_start", "n": n})).await?;
    let t = Instant::now();
    procs.push(NodeProc::spawn(&format!("n{k}"), Some(&seed)).await?);
    wait_members(&procs, k).await?;
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let rebalanced_ms = loop {
        let places = all(&refs, json!({"cmd": "placement", "n": n})).await?;
        let misplaced: u64 = places.iter().map(|(v, _)| u(v, "misplaced")).sum();
        let hosted: u64 = places.iter().map(|(v, _)| u(v, "hosted")).sum();
        if misplaced == 0 && hosted == n {
            break t.elapsed().as_secs_f64() * 1000.0;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "not rebalanced: {misplaced} misplaced, {hosted} hosted"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let check = all(
        &refs,
        json!({"cmd": "resolve", "n": n, "add": 1, "timeout_ms": 60000}),
    )
    .await?;
    let caller = procs[0].ask(json!({"cmd": "caller_stop"})).await?;
    let moved = u(&procs[k - 1].ask(json!({"cmd": "stats"})).await?, "running");
    Ok(json!({
        "scenario": "join",
        "nodes": k,
        "n": n,
        "start_errors": u(&start, "errors"),
        "moved": moved,
        "rebalanced_ms": rebalanced_ms,
        "kept_state": check.iter().map(|(v, _)| u(v, "ok")).min().unwrap_or(0),
        "lost_state": check.iter().map(|(v, _)| u(v, "wrong_state")).max().unwrap_or(0),
        "lost": check.iter().map(|(v, _)| u(v, "unreachable")).max().unwrap_or(0),
        "caller_calls": caller["calls"].clone(),
        "caller_failed": caller["failed"].clone(),
    }))
}

async fn one_run(k: usize, n: u64, scenario: &str) -> Result<Value, String> {
    let mut procs = cluster(k).await?;
    let rss_before: Vec<u64> = procs.iter().map(NodeProc::rss).collect();
    let refs: Vec<&NodeProc> = procs.iter().collect();

    // Start N children from n1; then every node resolves all N.
    let t0 = Instant::now();
    let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
    let start_ms = f(&start, "ms");
    let resolved = all(
        &refs,
        json!({"cmd": "resolve", "n": n, "add": 0, "timeout_ms": 60000}),
    )
    .await?;
    let converged_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let unresolved: u64 = resolved
        .iter()
        .map(|(v, _)| u(v, "unreachable") + u(v, "wrong_state"))
        .sum();
    let stats = all(&refs, json!({"cmd": "stats"})).await?;
    let per_node: Vec<u64> = stats.iter().map(|(v, _)| u(v, "running")).collect();
    let rss_after: Vec<u64> = procs.iter().map(NodeProc::rss).collect();
    let delta: i64 = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| *a as i64 - *b as i64)
        .sum();
    let n1_delta = rss_after[0] as i64 - rss_before[0] as i64;

    // Give every child a state that differs from its args, and wait until backups hold it.
    let bump = procs[0].ask(json!({"cmd": "bump", "n": n})).await?;
    all(&refs, json!({"cmd": "replicated"})).await?;
    let lat = procs[1]
        .ask(json!({"cmd": "latency", "n": n, "calls": 10000}))
        .await?;
    all(&refs, json!({"cmd": "replicated"})).await?;

    let victim_children = per_node[k - 1];
    let mut out = json!({
        "scenario": scenario,
        "nodes": k,
        "n": n,
        "start_ms": start_ms,
        "start_per_s": n as f64 / (start_ms / 1000.0),
        "start_errors": u(&start, "errors"),
        "converged_ms": converged_ms,
        "unresolved_after_start": unresolved,
        "children_per_node": per_node,
        "rss_before_mb": rss_before.iter().map(|b| *b as f64 / 1048576.0).collect::<Vec<_>>(),
        "rss_after_mb": rss_after.iter().map(|b| *b as f64 / 1048576.0).collect::<Vec<_>>(),
        "bytes_per_child_cluster": delta as f64 / n as f64,
        "bytes_per_child_n1": n1_delta as f64 / per_node[0].max(1) as f64,
        "bump_errors": u(&bump, "errors"),
        "call_p50_us": f(&lat, "p50_us"),
        "call_p99_us": f(&lat, "p99_us"),
        "calls_per_s": f(&lat, "calls_per_s"),
        "casts_per_s": f(&lat, "casts_per_s"),
        "victim_children": victim_children,
    });

    drop(refs);
    let mut victim = procs.pop().ok_or("no victim")?;
    let survivors: Vec<&NodeProc> = procs.iter().collect();
    let check = json!({"cmd": "resolve", "n": n, "add": 1, "timeout_ms": 60000});
    let (recovered, caller) = if scenario == "failover" {
        let t = Instant::now();
        victim.kill9().await;
        let kill_ms = t.elapsed().as_secs_f64() * 1000.0;
        let r = all(&survivors, check).await?;
        out["kill_ms"] = json!(kill_ms);
        (
            r.into_iter()
                .map(|(v, ms)| (v, ms + kill_ms))
                .collect::<Vec<_>>(),
            None,
        )
    } else {
        procs[0].ask(json!({"cmd": "caller_start", "n": n})).await?;
        let t = Instant::now();
        let left = victim.ask(json!({"cmd": "leave"})).await;
        let leave_ms = t.elapsed().as_secs_f64() * 1000.0;
        out["leave_ms"] = json!(leave_ms);
        if let Err(e) = left {
            out["leave_error"] = json!(e);
        }
        let _ = victim.child.wait().await;
        let r = all(&survivors, check).await?;
        let c = procs[0].ask(json!({"cmd": "caller_stop"})).await?;
        (
            r.into_iter()
                .map(|(v, ms)| (v, ms + leave_ms))
                .collect::<Vec<_>>(),
            Some(c),
        )
    };
    let recover_ms = recovered.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
    let kept = recovered.iter().map(|(v, _)| u(v, "ok")).min().unwrap_or(0);
    let fresh = recovered
        .iter()
        .map(|(v, _)| u(v, "wrong_state"))
        .max()
        .unwrap_or(0);
    let lost = recovered
        .iter()
        .map(|(v, _)| u(v, "unreachable"))
        .max()
        .unwrap_or(0);
    out["recovered_ms"] = json!(recover_ms);
    out["kept_state"] = json!(kept);
    out["lost_state"] = json!(fresh);
    out["lost"] = json!(lost);
    if let Some(c) = caller {
        out["caller_calls"] = c["calls"].clone();
        out["caller_failed"] = c["failed"].clone();
    }
    drop(survivors);
    for p in &procs {
        let _ = p.stdin.lock().await.shutdown().await;
    }
    drop(procs);
    Ok(out)
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

const ROWS: &[(&str, &str, &str)] = &[
    ("failover", "start_ms", "start N children from n1 (ms)"),
    ("failover", "start_per_s", "start rate (children/s)"),
    (
        "failover",
        "converged_ms",
        "all N callable on every node (ms from first start)",
    ),
    (
        "failover",
        "bytes_per_child_cluster",
        "memory: bytes per child, cluster-wide",
    ),
    (
        "failover",
        "bytes_per_child_n1",
        "memory: bytes per child on n1",
    ),
    (
        "failover",
        "call_p50_us",
        "call by key, remote child, p50 (us)",
    ),
    ("failover", "call_p99_us", "call by key, p99 (us)"),
    ("failover", "calls_per_s", "calls/s (1 caller)"),
    ("failover", "casts_per_s", "pipelined casts/s (1 sender)"),
    ("failover", "victim_children", "victim (n3) children"),
    (
        "failover",
        "recovered_ms",
        "kill -9: all N callable with state on both survivors (ms)",
    ),
    (
        "failover",
        "kept_state",
        "kill -9: children answering with their last state",
    ),
    (
        "failover",
        "lost_state",
        "kill -9: children answering with an older state",
    ),
    (
        "failover",
        "lost",
        "kill -9: children unreachable afterwards",
    ),
    ("graceful", "leave_ms", "graceful: leave() returned (ms)"),
    (
        "graceful",
        "recovered_ms",
        "graceful: all N callable with state on both survivors (ms)",
    ),
    (
        "graceful",
        "kept_state",
        "graceful: children answering with their exact state",
    ),
    (
        "graceful",
        "lost",
        "graceful: children unreachable afterwards",
    ),
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
    ("join", "moved", "join: children moved to the new node"),
    (
        "join",
        "rebalanced_ms",
        "join: all on their new owners (ms from the node's start)",
    ),
    (
        "join",
        "kept_state",
        "join: children answering with their exact state",
    ),
    ("join", "lost", "join: children unreachable afterwards"),
    ("join", "caller_calls", "join: calls by a concurrent caller"),
    ("join", "caller_failed", "join: of which failed or wrong"),
    (
        "names",
        "register_ms",
        "registry: register N names on n1 (ms)",
    ),
    (
        "names",
        "visible_everywhere_ms",
        "registry: all N visible on both other nodes (ms)",
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

fn print_table(results: &[Value]) {
    let rows = ROWS.iter().chain(crate::durable::ROWS);
    let ns: Vec<u64> = {
        let mut v: Vec<u64> = results.iter().map(|r| u(r, "n")).collect();
        v.dedup();
        v.sort();
        v.dedup();
        v
    };
    let mut header = "| metric |".to_string();
    for n in &ns {
        header.push_str(&format!(" N={n} |"));
    }
    println!("\n{header}");
    println!("|---|{}", "---|".repeat(ns.len()));
    for (scenario, key, label) in rows {
        if !results.iter().any(|r| r["scenario"] == *scenario) {
            continue;
        }
        let mut line = format!("| {label} |");
        for n in &ns {
            let mut vals: Vec<f64> = results
                .iter()
                .filter(|r| u(r, "n") == *n && r["scenario"] == *scenario)
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
