//! The cluster scenarios measured so that checking costs little beside what is checked, for
//! clusters of 3 to 48 node processes:
//!
//! - `failover` / `graceful`: N children started from n1; every node routes a *sample* of keys
//!   (convergence); the last node is killed with SIGKILL or leaves gracefully. Measured: the
//!   time until every one of the victim's children answers with its last state when one caller
//!   (n1) sweeps only the victim's keys, the time until every survivor routes a sample of them,
//!   failure detection (each survivor's `NodeDown` event), the owners' `FailedOver` events, and
//!   per-node CPU (`/proc/PID/stat`) and resident memory (`/proc/PID/status`).
//! - `join`: a node joins `k - 1` nodes holding N children: time until every node runs exactly
//!   the children it owns (each node checks only its own keys, cached per view).
//! - `join-storm`: 24 nodes (`--storm`) start at once against a running cluster of `k`: no
//!   process exits, no node is declared down, time until rebalanced.
//! - `rolling`: every node of a `k`-node cluster in turn leaves gracefully, is started again and
//!   rejoins, under a concurrent caller: failed calls, state kept, time per step and in all.
//!
//! After the timed part, one full sweep of all N from one node checks that no child was lost
//! and each kept its state (untimed in the figures, reported as `final_sweep_ms`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::control::{all, cluster, f, u, wait_members, NodeProc};
use crate::node::now_us;

/// How long a cluster may take to rebalance before the run records that it did not (and goes
/// on to check what callers see).
const WAIT: Duration = Duration::from_secs(120);

/// Time between two placement polls.
const POLL: Duration = Duration::from_millis(50);

/// The idle window over which each node's CPU use is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// Up to `s` of `keys`, spread evenly.
pub(crate) fn sample(keys: &[u64], s: usize) -> Vec<u64> {
    if keys.len() <= s || s == 0 {
        return keys.to_vec();
    }
    (0..s).map(|j| keys[j * keys.len() / s]).collect()
}

/// Up to `s` indices of `0..n`, spread evenly.
pub(crate) fn spread(n: u64, s: usize) -> Vec<u64> {
    let s = (s as u64).min(n);
    (0..s).map(|j| j * n / s.max(1)).collect()
}

/// Mean and maximum of `v` (0 when empty).
fn mean_max(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    (
        v.iter().sum::<f64>() / v.len() as f64,
        v.iter().copied().fold(0.0, f64::max),
    )
}

fn cpu(procs: &[&NodeProc]) -> Vec<f64> {
    procs.iter().map(|p| p.cpu_ms()).collect()
}

fn rss_mb(procs: &[&NodeProc]) -> Vec<f64> {
    procs.iter().map(|p| p.rss() as f64 / 1048576.0).collect()
}

/// Per-node CPU used between two readings (ms): total and the busiest node.
fn cpu_delta(before: &[f64], after: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    (d.iter().sum(), d.iter().copied().fold(0.0, f64::max))
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// How long a node may take to answer a poll before the run records it as stuck.
const POLL_ANSWER: Duration = Duration::from_secs(20);

/// Ask every node of `procs` the same command, each answer within [`POLL_ANSWER`].
async fn all_within(procs: &[&NodeProc], cmd: Value) -> Result<Vec<(Value, f64)>, String> {
    let futs = procs.iter().map(|p| p.ask_within(cmd.clone(), POLL_ANSWER));
    let answers = futures_util::future::join_all(futs).await;
    let stuck: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().cloned())
        .collect();
    if !stuck.is_empty() {
        return Err(stuck.join("; "));
    }
    Ok(answers
        .into_iter()
        .filter_map(Result::ok)
        .map(|v| (v, 0.0))
        .collect())
}

/// Wait until every node of `procs` sees all of them as owners and runs exactly the children
/// of `0..n` it owns, `n` in all: the time it took (ms).
async fn wait_rebalanced(procs: &[&NodeProc], n: u64) -> Result<f64, String> {
    let t = Instant::now();
    loop {
        let placed = all_within(procs, json!({"cmd": "owned_hosted", "n": n})).await?;
        let stats = all_within(procs, json!({"cmd": "stats"})).await?;
        let owned: u64 = placed.iter().map(|(v, _)| u(v, "owned")).sum();
        let in_view = placed
            .iter()
            .all(|(v, _)| u(v, "view") == procs.len() as u64);
        let at_home = placed
            .iter()
            .all(|(v, _)| u(v, "owned") == u(v, "hosted_owned"));
        let running: u64 = stats.iter().map(|(v, _)| u(v, "running")).sum();
        if in_view && at_home && owned == n && running == n {
            return Ok(ms_since(t));
        }
        if t.elapsed() > WAIT {
            let odd: Vec<String> = procs
                .iter()
                .zip(placed.iter().zip(&stats))
                .filter(|(_, ((p, _), (s, _)))| {
                    u(p, "view") != procs.len() as u64
                        || u(p, "owned") != u(p, "hosted_owned")
                        || u(p, "owned") != u(s, "running")
                })
                .map(|(node, ((p, _), (s, _)))| {
                    format!(
                        "{}: view {}, owned {}, hosted of owned {}, running {}, not here {}",
                        node.name,
                        u(p, "view"),
                        u(p, "owned"),
                        u(p, "hosted_owned"),
                        u(s, "running"),
                        p["unhosted"]
                    )
                })
                .collect();
            return Err(format!(
                "not rebalanced: in view {in_view}, at home {at_home}, owned {owned}, running {running} of {n}; {}",
                odd.join("; ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every membership event the nodes recorded, as (observer, event).
async fn events(procs: &[&NodeProc]) -> Result<Vec<(String, Value)>, String> {
    let got = all_within(procs, json!({"cmd": "cluster_events"})).await?;
    let mut out = Vec::new();
    for (p, (v, _)) in procs.iter().zip(got) {
        for e in v["events"].as_array().cloned().unwrap_or_default() {
            out.push((p.name.clone(), e));
        }
    }
    Ok(out)
}

/// False suspicions in `events`: `NodeDown` of a run that neither announced a leave before (to
/// the same observer) nor is in `killed`; and `Rejoined` events (an observer learnt it had been
/// declared down). Returns (false downs, rejoined, the names of the nodes falsely downed).
fn false_suspicions(events: &[(String, Value)], killed: &[&str]) -> (u64, u64, Vec<String>) {
    let mut downs = 0;
    let mut rejoined = 0;
    let mut who = Vec::new();
    for (i, (observer, e)) in events.iter().enumerate() {
        let node = e["node"].as_str().unwrap_or_default();
        match e["kind"].as_str() {
            Some("rejoined") => rejoined += 1,
            Some("down") if !killed.contains(&node) => {
                let announced = events[..i].iter().any(|(o, p)| {
                    o == observer
                        && p["kind"] == "leaving"
                        && p["node"] == e["node"]
                        && p["incarnation"] == e["incarnation"]
                });
                if !announced {
                    downs += 1;
                    who.push(format!("{observer} saw {node} down"));
                }
            }
            _ => {}
        }
    }
    (downs, rejoined, who)
}

/// One full sweep of all `n` children from `p`: (ms, kept, older state, unreachable).
async fn final_sweep(p: &NodeProc, n: u64) -> Result<(f64, u64, u64, u64), String> {
    let v = p
        .ask(json!({"cmd": "resolve", "n": n, "add": 1, "timeout_ms": 60000}))
        .await?;
    Ok((
        f(&v, "ms"),
        u(&v, "ok"),
        u(&v, "wrong_state"),
        u(&v, "unreachable"),
    ))
}

fn put_final(out: &mut Value, sweep: (f64, u64, u64, u64)) {
    out["final_sweep_ms"] = json!(sweep.0);
    out["kept_state"] = json!(sweep.1);
    out["lost_state"] = json!(sweep.2);
    out["lost"] = json!(sweep.3);
}

async fn close(procs: Vec<NodeProc>) {
    for p in &procs {
        p.close_stdin().await;
    }
    drop(procs);
}

/// `failover` or `graceful` on `k` nodes with `n` children, checking a sample of `s` keys per
/// node.
pub(crate) async fn stop_run(k: usize, n: u64, scenario: &str, s: usize) -> Result<Value, String> {
    let mut procs = cluster(k).await?;
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let rss_idle = rss_mb(&refs);
    let cpu0 = cpu(&refs);

    // Start N children from n1; then every node routes a sample of them.
    let t0 = Instant::now();
    let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
    let start_ms = f(&start, "ms");
    let t1 = Instant::now();
    let probe = json!({"cmd": "resolve_keys", "keys": spread(n, s), "add": 0, "timeout_ms": 60000});
    let routed = all(&refs, probe).await?;
    let converged_ms = ms_since(t0);
    let route_after_start_ms = ms_since(t1);
    let unresolved: u64 = routed
        .iter()
        .map(|(v, _)| u(v, "unreachable") + u(v, "wrong_state"))
        .sum();
    let cpu1 = cpu(&refs);
    let stats = all(&refs, json!({"cmd": "stats"})).await?;
    let per_node: Vec<u64> = stats.iter().map(|(v, _)| u(v, "running")).collect();

    // Every child's state becomes i + 1 (differs from its args); backups hold it.
    let bump = procs[0].ask(json!({"cmd": "bump", "n": n})).await?;
    all(&refs, json!({"cmd": "replicated"})).await?;
    let lat = procs[1]
        .ask(json!({"cmd": "latency", "n": n, "calls": 2000}))
        .await?;
    all(&refs, json!({"cmd": "replicated"})).await?;
    let rss = rss_mb(&refs);
    // Idle cost per node: CPU over a fixed window with nothing to do but membership.
    let idle0 = cpu(&refs);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle1 = cpu(&refs);
    let idle_pct: Vec<f64> = idle1
        .iter()
        .zip(&idle0)
        .map(|(a, b)| (a - b) / IDLE_WINDOW.as_secs_f64() / 10.0)
        .collect();

    let victim_keys: Vec<u64> = serde_json::from_value(
        procs[k - 1]
            .ask(json!({"cmd": "hosted_list", "n": n}))
            .await?["keys"]
            .clone(),
    )
    .map_err(|e| format!("hosted_list: {e}"))?;
    let victim_sample = sample(&victim_keys, s);
    let (rss_idle_mean, _) = mean_max(&rss_idle);
    let (rss_mean, rss_max) = mean_max(&rss);
    let (idle_mean, idle_max) = mean_max(&idle_pct);
    let (start_cpu_total, start_cpu_max) = cpu_delta(&cpu0, &cpu1);
    let rss_total: f64 = rss.iter().sum();
    let rss_idle_total: f64 = rss_idle.iter().sum();
    let mut out = json!({
        "scenario": scenario,
        "nodes": k,
        "n": n,
        "sample": s,
        "start_ms": start_ms,
        "start_per_s": n as f64 / (start_ms / 1000.0),
        "start_errors": u(&start, "errors"),
        "converged_ms": converged_ms,
        "route_after_start_ms": route_after_start_ms,
        "unresolved_after_start": unresolved,
        "children_per_node": per_node,
        "start_cpu_ms_total": start_cpu_total,
        "start_cpu_ms_max_node": start_cpu_max,
        "rss_idle_mb_mean": rss_idle_mean,
        "rss_mb_mean": rss_mean,
        "rss_mb_max": rss_max,
        "rss_mb_total": rss_total,
        "bytes_per_child_cluster": (rss_total - rss_idle_total) * 1048576.0 / n as f64,
        "idle_cpu_pct_mean": idle_mean,
        "idle_cpu_pct_max": idle_max,
        "bump_errors": u(&bump, "errors"),
        "call_p50_us": f(&lat, "p50_us"),
        "call_p99_us": f(&lat, "p99_us"),
        "victim_children": victim_keys.len(),
    });
    drop(refs);

    let mut victim = procs.pop().ok_or("no victim")?;
    let victim_name = victim.name.clone();
    let survivors: Vec<&NodeProc> = procs.iter().collect();
    let sweep = json!({"cmd": "resolve_keys", "keys": victim_keys, "add": 1, "timeout_ms": 60000});
    let probe =
        json!({"cmd": "resolve_keys", "keys": victim_sample, "add": 1, "timeout_ms": 60000});
    let before_events = all(&survivors, json!({"cmd": "child_events"})).await?;
    let cpu2 = cpu(&survivors);
    let graceful = scenario == "graceful";
    if graceful {
        procs[0].ask(json!({"cmd": "caller_start", "n": n})).await?;
    }
    let stop_us = now_us();
    let t = Instant::now();
    if graceful {
        let left = victim.ask(json!({"cmd": "leave"})).await;
        out["leave_ms"] = json!(ms_since(t));
        if let Err(e) = left {
            out["leave_error"] = json!(e);
        }
        victim.wait_exit().await;
    } else {
        victim.kill9().await;
        out["kill_ms"] = json!(ms_since(t));
    }
    let stop_ms = ms_since(t);
    // One caller sweeps the victim's keys; every survivor routes a sample of them.
    let (swept, probed) = tokio::join!(procs[0].ask(sweep), all(&survivors, probe));
    let (swept, probed) = (swept?, probed?);
    let victim_recovered_ms = stop_ms + f(&swept, "ms");
    let routed_everywhere_ms = stop_ms + probed.iter().map(|(v, _)| f(v, "ms")).fold(0.0, f64::max);
    let cpu3 = cpu(&survivors);
    let (rec_cpu_total, rec_cpu_max) = cpu_delta(&cpu2, &cpu3);
    out["victim_recovered_ms"] = json!(victim_recovered_ms);
    out["recovered_ms"] = json!(victim_recovered_ms);
    out["routed_everywhere_ms"] = json!(routed_everywhere_ms);
    out["victim_unreachable"] = json!(u(&swept, "unreachable"));
    out["victim_wrong_state"] = json!(u(&swept, "wrong_state"));
    out["recovery_cpu_ms_total"] = json!(rec_cpu_total);
    out["recovery_cpu_ms_max_node"] = json!(rec_cpu_max);
    if graceful {
        let c = procs[0].ask(json!({"cmd": "caller_stop"})).await?;
        out["caller_calls"] = c["calls"].clone();
        out["caller_failed"] = c["failed"].clone();
        out["caller_wrong"] = c["wrong"].clone();
        out["caller_errors"] = c["errors"].clone();
    }

    // Detection: each survivor's NodeDown of the victim; the owners' fail-over events.
    let evs = events(&survivors).await?;
    let downs: Vec<f64> = evs
        .iter()
        .filter(|(_, e)| e["kind"] == "down" && e["node"] == victim_name.as_str())
        .map(|(_, e)| (u(e, "at_us").saturating_sub(stop_us)) as f64 / 1000.0)
        .collect();
    let detect_first = downs.iter().copied().fold(f64::INFINITY, f64::min);
    let detect_last = downs.iter().copied().fold(0.0, f64::max);
    out["detected_by"] = json!(downs.len());
    if !downs.is_empty() {
        out["detect_first_ms"] = json!(detect_first);
        out["detect_last_ms"] = json!(detect_last);
        out["after_detection_ms"] = json!(victim_recovered_ms - detect_last);
        out["after_first_detection_ms"] = json!(victim_recovered_ms - detect_first);
    }
    let after_events = all(&survivors, json!({"cmd": "child_events"})).await?;
    let kind = if graceful { "adopted" } else { "failed_over" };
    let mut moved = 0;
    let mut last_us = 0;
    let mut lagged = 0;
    for ((a, _), (b, _)) in after_events.iter().zip(&before_events) {
        let count = u(a, kind).saturating_sub(u(b, kind));
        moved += count;
        if count > 0 {
            last_us = last_us.max(u(a, &format!("{kind}_last_us")));
        }
        lagged += u(a, "lagged").saturating_sub(u(b, "lagged"));
    }
    out["owner_events"] = json!(moved);
    out["owner_events_lagged"] = json!(lagged);
    if last_us > 0 {
        out["owner_events_last_ms"] = json!(last_us.saturating_sub(stop_us) as f64 / 1000.0);
    }
    let (false_downs, rejoined, who) = false_suspicions(&evs, &[victim_name.as_str()]);
    out["false_downs"] = json!(false_downs);
    out["rejoined"] = json!(rejoined);
    if !who.is_empty() {
        out["false_down_detail"] = json!(who);
    }

    let stats = all(&survivors, json!({"cmd": "stats"})).await?;
    out["running_after"] = json!(stats.iter().map(|(v, _)| u(v, "running")).sum::<u64>());
    put_final(&mut out, final_sweep(&procs[0], n).await?);
    drop(survivors);
    close(procs).await;
    Ok(out)
}

/// A node joins `k - 1` nodes holding `n` children: time until every node runs exactly the
/// children it owns, then until every node routes a sample of the moved keys.
pub(crate) async fn join_run(k: usize, n: u64, s: usize) -> Result<Value, String> {
    let mut procs = cluster(k - 1).await?;
    let seed = procs[0].gossip.clone();
    {
        let refs: Vec<&NodeProc> = procs.iter().collect();
        let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
        if u(&start, "errors") != 0 {
            return Err(format!("start: {start}"));
        }
        procs[0].ask(json!({"cmd": "bump", "n": n})).await?;
        all(&refs, json!({"cmd": "replicated"})).await?;
        // The owned sets of the old view, cached before the clock starts.
        all(&refs, json!({"cmd": "owned_hosted", "n": n})).await?;
    }
    procs[0].ask(json!({"cmd": "caller_start", "n": n})).await?;
    let t = Instant::now();
    procs.push(NodeProc::spawn_in(&format!("n{k}"), Some(&seed), None).await?);
    wait_members(&procs, k).await?;
    let members_ms = ms_since(t);
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let rebalanced = wait_rebalanced(&refs, n).await;
    let rebalanced_ms = ms_since(t);
    let moved_keys: Vec<u64> = serde_json::from_value(
        procs[k - 1]
            .ask(json!({"cmd": "hosted_list", "n": n}))
            .await?["keys"]
            .clone(),
    )
    .map_err(|e| format!("hosted_list: {e}"))?;
    let probe = json!({"cmd": "resolve_keys", "keys": sample(&moved_keys, s), "add": 1, "timeout_ms": 60000});
    let probed = all(&refs, probe).await?;
    let routed_ms = ms_since(t);
    let caller = procs[0].ask(json!({"cmd": "caller_stop"})).await?;
    let evs = events(&refs).await?;
    let (false_downs, rejoined, _) = false_suspicions(&evs, &[]);
    let mut out = json!({
        "scenario": "join",
        "nodes": k,
        "n": n,
        "sample": s,
        "moved": moved_keys.len(),
        "members_ms": members_ms,
        "routed_everywhere_ms": routed_ms,
        "sample_unreachable": probed.iter().map(|(v, _)| u(v, "unreachable")).sum::<u64>(),
        "caller_calls": caller["calls"].clone(),
        "caller_failed": caller["failed"].clone(),
        "caller_wrong": caller["wrong"].clone(),
        "caller_errors": caller["errors"].clone(),
        "false_downs": false_downs,
        "rejoined": rejoined,
    });
    put_rebalanced(&mut out, rebalanced, rebalanced_ms);
    drop(refs);
    put_final(&mut out, final_sweep(&procs[0], n).await?);
    close(procs).await;
    Ok(out)
}

/// The rebalance time, or (when the cluster did not rebalance within [`WAIT`]) what was off.
fn put_rebalanced(out: &mut Value, waited: Result<f64, String>, ms: f64) {
    match waited {
        Ok(_) => out["rebalanced_ms"] = json!(ms),
        Err(e) => {
            out["rebalanced_ms"] = Value::Null;
            out["not_rebalanced"] = json!(e);
        }
    }
}

/// `storm` nodes start at once against a running cluster of `k` nodes holding `n` children.
pub(crate) async fn join_storm_run(
    k: usize,
    storm: usize,
    n: u64,
    s: usize,
) -> Result<Value, String> {
    let mut procs = cluster(k).await?;
    {
        let refs: Vec<&NodeProc> = procs.iter().collect();
        let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
        if u(&start, "errors") != 0 {
            return Err(format!("start: {start}"));
        }
        procs[0].ask(json!({"cmd": "bump", "n": n})).await?;
        all(&refs, json!({"cmd": "replicated"})).await?;
    }
    let base_cpu = cpu(&procs.iter().collect::<Vec<_>>());
    procs[0].ask(json!({"cmd": "caller_start", "n": n})).await?;
    // Each newcomer is seeded by one of the running nodes, in turn.
    let seeds: Vec<String> = procs.iter().map(|p| p.gossip.clone()).collect();
    let t = Instant::now();
    let spawned = futures_util::future::join_all((0..storm).map(|j| {
        let seed = seeds[j % seeds.len()].clone();
        async move { NodeProc::spawn_in(&format!("n{}", k + 1 + j), Some(&seed), None).await }
    }))
    .await;
    for p in spawned {
        procs.push(p?);
    }
    let spawned_ms = ms_since(t);
    let total = k + storm;
    wait_members(&procs, total).await?;
    let members_ms = ms_since(t);
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let rebalanced = wait_rebalanced(&refs, n).await;
    let rebalanced_ms = ms_since(t);
    let cpu_after = cpu(&refs);
    let probe = json!({"cmd": "resolve_keys", "keys": spread(n, s), "add": 1, "timeout_ms": 60000});
    let probed = all(&refs, probe).await?;
    let routed_ms = ms_since(t);
    let caller = procs[0].ask(json!({"cmd": "caller_stop"})).await?;
    let evs = events(&refs).await?;
    let (false_downs, rejoined, who) = false_suspicions(&evs, &[]);
    let rss = rss_mb(&refs);
    let (rss_mean, rss_max) = mean_max(&rss);
    drop(refs);
    // A crash loop would show as a process that exited.
    let mut exited = 0;
    for p in procs.iter_mut() {
        if p.exited() {
            exited += 1;
        }
    }
    let base_cpu_used: f64 = cpu_after[..k]
        .iter()
        .zip(&base_cpu)
        .map(|(a, b)| a - b)
        .sum();
    let storm_cpu: f64 = cpu_after[k..].iter().sum();
    let mut out = json!({
        "scenario": "join-storm",
        "nodes": total,
        "base_nodes": k,
        "joiners": storm,
        "n": n,
        "sample": s,
        "spawned_ms": spawned_ms,
        "members_ms": members_ms,
        "routed_everywhere_ms": routed_ms,
        "sample_unreachable": probed.iter().map(|(v, _)| u(v, "unreachable")).sum::<u64>(),
        "caller_calls": caller["calls"].clone(),
        "caller_failed": caller["failed"].clone(),
        "caller_wrong": caller["wrong"].clone(),
        "caller_errors": caller["errors"].clone(),
        "false_downs": false_downs,
        "rejoined": rejoined,
        "exited": exited,
        "base_cpu_ms": base_cpu_used,
        "joiners_cpu_ms": storm_cpu,
        "rss_mb_mean": rss_mean,
        "rss_mb_max": rss_max,
    });
    if !who.is_empty() {
        out["false_down_detail"] = json!(who);
    }
    put_rebalanced(&mut out, rebalanced, rebalanced_ms);
    put_final(&mut out, final_sweep(&procs[0], n).await?);
    close(procs).await;
    Ok(out)
}

/// Every node of a `k`-node cluster holding `n` children, one at a time: graceful leave, start
/// again, rejoin, rebalance; a caller runs throughout (on the node after the one restarting).
pub(crate) async fn rolling_run(k: usize, n: u64) -> Result<Value, String> {
    let mut procs = cluster(k).await?;
    {
        let refs: Vec<&NodeProc> = procs.iter().collect();
        let start = procs[0].ask(json!({"cmd": "start", "n": n})).await?;
        if u(&start, "errors") != 0 {
            return Err(format!("start: {start}"));
        }
        procs[0].ask(json!({"cmd": "bump", "n": n})).await?;
        all(&refs, json!({"cmd": "replicated"})).await?;
    }
    let mut calls = 0;
    let mut failed = 0;
    let mut wrong = 0;
    let mut steps = Vec::new();
    let mut not_rebalanced = None;
    let t = Instant::now();
    for i in 0..k {
        let c = (i + 1) % k;
        procs[c].ask(json!({"cmd": "caller_start", "n": n})).await?;
        let step = Instant::now();
        let left = procs[i].ask(json!({"cmd": "leave"})).await;
        let leave_ms = ms_since(step);
        if let Err(e) = left {
            return Err(format!("leave of {}: {e}", procs[i].name));
        }
        procs[i].wait_exit().await;
        let name = procs[i].name.clone();
        let seed = procs[c].gossip.clone();
        procs[i] = NodeProc::spawn_in(&name, Some(&seed), None).await?;
        wait_members(&procs, k).await?;
        let refs: Vec<&NodeProc> = procs.iter().collect();
        let rebalanced = wait_rebalanced(&refs, n).await;
        drop(refs);
        let caller = procs[c].ask(json!({"cmd": "caller_stop"})).await?;
        calls += u(&caller, "calls");
        failed += u(&caller, "failed");
        wrong += u(&caller, "wrong");
        steps.push(json!({"node": name, "leave_ms": leave_ms, "step_ms": ms_since(step)}));
        if let Err(e) = rebalanced {
            // Stop restarting; what callers see is still checked below.
            not_rebalanced = Some(format!("after restarting {name}: {e}"));
            break;
        }
    }
    let total_ms = ms_since(t);
    let refs: Vec<&NodeProc> = procs.iter().collect();
    let evs = events(&refs).await?;
    let (false_downs, rejoined, who) = false_suspicions(&evs, &[]);
    drop(refs);
    let step_ms: Vec<f64> = steps.iter().map(|s| f(s, "step_ms")).collect();
    let leave_ms: Vec<f64> = steps.iter().map(|s| f(s, "leave_ms")).collect();
    let (step_mean, step_max) = mean_max(&step_ms);
    let (leave_mean, leave_max) = mean_max(&leave_ms);
    let mut out = json!({
        "scenario": "rolling",
        "nodes": k,
        "n": n,
        "total_ms": total_ms,
        "step_ms_mean": step_mean,
        "step_ms_max": step_max,
        "leave_ms_mean": leave_mean,
        "leave_ms_max": leave_max,
        "caller_calls": calls,
        "caller_failed": failed,
        "caller_wrong": wrong,
        "false_downs": false_downs,
        "rejoined": rejoined,
        "steps": steps,
    });
    if let Some(e) = not_rebalanced {
        out["not_rebalanced"] = json!(e);
    }
    if !who.is_empty() {
        out["false_down_detail"] = json!(who);
    }
    put_final(&mut out, final_sweep(&procs[0], n).await?);
    close(procs).await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spread_and_bounded() {
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        assert!(spread(0, 5).is_empty());
        assert_eq!(sample(&[1, 2, 3, 4], 2), vec![1, 3]);
        assert_eq!(sample(&[1, 2], 5), vec![1, 2]);
    }

    #[test]
    fn a_down_after_a_leave_or_a_kill_is_no_false_suspicion() {
        let e = |kind: &str, node: &str, inc: u64| json!({"kind": kind, "node": node, "incarnation": inc, "at_us": 0});
        let evs = vec![
            ("n1".to_string(), e("leaving", "n2", 1)),
            ("n1".to_string(), e("down", "n2", 1)),
            ("n1".to_string(), e("down", "n3", 1)),
            ("n1".to_string(), e("down", "n4", 1)),
            ("n2".to_string(), e("rejoined", "n2", 2)),
        ];
        let (downs, rejoined, who) = false_suspicions(&evs, &["n3"]);
        assert_eq!((downs, rejoined), (1, 1));
        assert_eq!(who, vec!["n1 saw n4 down".to_string()]);
    }
}
