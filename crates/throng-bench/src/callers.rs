//! The `callers` scenario: does a node's memory grow with the number of distinct keys it calls?
//!
//! `k` node processes; the `callers` supervisor's children live on n3..n{k} only, so that n1 (the
//! caller) and n2 (the idle baseline) host nothing. n1 touches N distinct keys, each once: a key
//! below `--live` gets its child started from n1 (`start_child`, the returned reference dropped)
//! then sent a cast and called (`Add(1)` each, checked); a key above it is sent a cast and called with no child behind it (which
//! still routes, sends and waits for an answer). The resident memory of n1, of n2 (which called
//! nothing) and of the hosts is read from `/proc` before the first key and after 10%, 25%, 50%
//! and 100% of them, with the caller's transport tables (`ConnectionStats`).

use std::time::Instant;

use serde_json::{json, Value};

use crate::control::{all, cluster, f, u, NodeProc};
use crate::node::CALLERS;

/// How long a call to a key with no child may keep retrying (it is answered "no such actor"
/// at once, and retried while the owner might still start it).
const MISS_TIMEOUT_MS: u64 = 40;

/// The rows of the table (scenario, field, label).
pub(crate) const ROWS: &[(&str, &str, &str)] = &[
    (
        "callers",
        "live",
        "callers: of the N distinct keys, with a running child",
    ),
    (
        "callers",
        "keys_per_s",
        "callers: distinct keys touched per second by n1",
    ),
    (
        "callers",
        "caller_start_mb",
        "callers: n1 resident before the first key (MB)",
    ),
    (
        "callers",
        "caller_end_mb",
        "callers: n1 resident after N distinct keys (MB)",
    ),
    (
        "callers",
        "idle_start_mb",
        "callers: n2 (called nothing) resident at the start (MB)",
    ),
    (
        "callers",
        "idle_end_mb",
        "callers: n2 (called nothing) resident at the end (MB)",
    ),
    (
        "callers",
        "caller_bytes_per_key",
        "callers: n1's growth per distinct key (bytes)",
    ),
    (
        "callers",
        "idle_bytes_per_key",
        "callers: n2's growth per distinct key (bytes, baseline)",
    ),
    (
        "callers",
        "caller_over_idle",
        "callers: n1 resident / n2 resident at the end",
    ),
    (
        "callers",
        "host_bytes_per_child",
        "callers: hosts' growth per running child (bytes, for scale)",
    ),
    (
        "callers",
        "monitored_remotes",
        "callers: n1's monitored remote actors at the end",
    ),
    ("callers", "lost", "callers: keys whose call failed"),
];

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// `k` nodes, N distinct keys called from n1, `live` of them with a child.
pub(crate) async fn callers_run(k: usize, n: u64, live: u64) -> Result<Value, String> {
    let procs = cluster(k).await?;
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let hosts: Vec<String> = procs[2..].iter().map(|p| p.name.clone()).collect();
    all(&refs, json!({"cmd": "callers_sup", "hosts": hosts})).await?;
    let t = Instant::now();
    loop {
        let views = all(&refs, json!({"cmd": "members", "sup": CALLERS})).await?;
        if views
            .iter()
            .all(|(v, _)| u(v, "sup_nodes") == hosts.len() as u64)
        {
            break;
        }
        if t.elapsed().as_secs() > 30 {
            return Err("the callers supervisor's view did not form".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (caller, idle, host_procs) = (&procs[0], &procs[1], &refs[2..]);
    let host_rss = || host_procs.iter().map(|p| p.rss()).sum::<u64>();
    let (caller0, idle0, hosts0) = (caller.rss(), idle.rss(), host_rss());
    let mut checkpoints = vec![json!({
        "keys": 0, "caller_mb": mb(caller0), "idle_mb": mb(idle0),
        "hosts_mb_mean": mb(hosts0) / host_procs.len() as f64,
    })];
    let marks = [n / 10, n / 4, n / 2, n];
    let (mut from, mut lost, mut touch_ms) = (0u64, 0u64, 0.0);
    for &to in &marks {
        if to <= from {
            continue;
        }
        let cmd = json!({"cmd": "touch", "sup": CALLERS, "offset": from, "n": to, "live": live,
            "timeout_ms": MISS_TIMEOUT_MS});
        let done = caller.ask(cmd).await?;
        lost += u(&done, "errors");
        touch_ms += f(&done, "ms");
        from = to;
        let (c, i, h) = (caller.rss(), idle.rss(), host_rss());
        let stats = caller.ask(json!({"cmd": "conn_stats"})).await?;
        let point = json!({
            "keys": to,
            "ms": f(&done, "ms"),
            "errors": u(&done, "errors"),
            "caller_mb": mb(c),
            "idle_mb": mb(i),
            "hosts_mb_mean": mb(h) / host_procs.len() as f64,
            "caller_bytes_per_key": (c as f64 - caller0 as f64) / to as f64,
            "idle_bytes_per_key": (i as f64 - idle0 as f64) / to as f64,
            "caller_over_idle": c as f64 / i.max(1) as f64,
            "monitored_remotes": u(&stats, "monitored_remotes"),
            "calls_in_flight": u(&stats, "calls_in_flight"),
        });
        eprintln!("callers: k={k} {point}");
        checkpoints.push(point);
    }
    let last = checkpoints.last().cloned().unwrap_or_default();
    let hosts_end = host_rss();
    let live_keys = live.min(n);
    let out = json!({
        "scenario": "callers",
        "nodes": k,
        "n": n,
        "live": live_keys,
        "keys_per_s": n as f64 / (touch_ms / 1000.0).max(1e-9),
        "caller_start_mb": mb(caller0),
        "caller_end_mb": f(&last, "caller_mb"),
        "idle_start_mb": mb(idle0),
        "idle_end_mb": f(&last, "idle_mb"),
        "caller_bytes_per_key": f(&last, "caller_bytes_per_key"),
        "idle_bytes_per_key": f(&last, "idle_bytes_per_key"),
        "caller_over_idle": f(&last, "caller_over_idle"),
        "host_bytes_per_child": if live_keys > 0 {
            (hosts_end as f64 - hosts0 as f64) / live_keys as f64
        } else {
            0.0
        },
        "monitored_remotes": u(&last, "monitored_remotes"),
        "checkpoints": checkpoints,
        "lost": lost,
    });
    for p in &procs {
        p.close_stdin().await;
    }
    Ok(out)
}
