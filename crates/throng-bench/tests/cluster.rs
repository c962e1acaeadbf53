//! The cluster bench at smoke size, as a test over real processes: 3 node processes on loopback,
//! 1,000 children with state started from one node, a sample of them callable by key from every
//! node; one node SIGKILLed → all its children answer with their last state (a sweep of its keys,
//! then of all keys); one node stopped gracefully → the same, and a concurrent caller sees no
//! failure; a node joins → children move to it with their state, no call fails; 1,000 registry
//! names registered on one node are visible on the two others within the 50 ms target; a small
//! join storm and a rolling restart lose nothing.

use std::process::Command;

use serde_json::Value;

#[test]
fn three_processes_keep_every_child_and_its_state_through_kill_leave_and_join() {
    let out = Command::new(env!("CARGO_BIN_EXE_throng-bench"))
        .args([
            "cluster",
            "--nodes",
            "3",
            "--children",
            "1000",
            "--repeat",
            "1",
            "--names",
            "1000",
        ])
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("scenario").is_some())
        .collect();
    assert_eq!(runs.len(), 4, "{stdout}");
    let (children, rest): (Vec<&Value>, Vec<&Value>) = runs
        .iter()
        .partition(|r| r["scenario"] == "failover" || r["scenario"] == "graceful");
    for r in children {
        let scenario = r["scenario"].as_str().unwrap();
        assert_eq!(r["start_errors"], 0, "{scenario}: {r}");
        assert_eq!(r["unresolved_after_start"], 0, "{scenario}: {r}");
        let per_node: u64 = r["children_per_node"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(per_node, 1000, "each child runs once: {r}");
        assert!(r["victim_children"].as_u64().unwrap() > 0, "{r}");
        // Every child, the victim's included, answers with its last state.
        assert_eq!(r["kept_state"], 1000, "{scenario}: {r}");
        assert_eq!(r["lost_state"], 0, "{scenario}: {r}");
        assert_eq!(r["lost"], 0, "{scenario}: {r}");
    }
    let graceful = runs.iter().find(|r| r["scenario"] == "graceful").unwrap();
    assert_eq!(graceful["caller_failed"], 0, "{graceful}");
    let join = rest.iter().find(|r| r["scenario"] == "join").unwrap();
    assert!(join["moved"].as_u64().unwrap() > 0, "{join}");
    assert_eq!(join["kept_state"], 1000, "{join}");
    assert_eq!(join["lost"], 0, "{join}");
    assert_eq!(join["caller_failed"], 0, "{join}");
    let names = rest.iter().find(|r| r["scenario"] == "names").unwrap();
    assert_eq!(names["register_errors"], 0, "{names}");
    assert_eq!(names["unseen"], 0, "{names}");
    // The target is 50 ms p99; CI machines are noisy, so only an order of magnitude is enforced.
    assert!(
        names["visibility_p99_ms"].as_f64().unwrap() < 500.0,
        "{names}"
    );
}

/// The durable scenarios at smoke size: 300 durable children come back on 3 restarted node
/// processes with their last state; calls and snapshot writes with and without durability
/// produce figures, without a failed call.
#[test]
fn the_durable_scenarios_bring_every_child_back_and_measure_writes() {
    let out = Command::new(env!("CARGO_BIN_EXE_throng-bench"))
        .args([
            "cluster",
            "--nodes",
            "3",
            "--children",
            "300",
            "--repeat",
            "1",
            "--scenarios",
            "restart,durable",
            "--load-ms",
            "300",
        ])
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("scenario").is_some())
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    let restart = runs.iter().find(|r| r["scenario"] == "restart").unwrap();
    assert_eq!(restart["kept_state"], 300, "{restart}");
    assert_eq!(restart["lost_state"], 0, "{restart}");
    assert_eq!(restart["lost"], 0, "{restart}");
    assert_eq!(restart["running_after"], 300, "each runs once: {restart}");
    assert_eq!(restart["store_entries"], 600, "owner and backup: {restart}");
    assert!(
        restart["cold_running_ms"].as_f64().unwrap() > 0.0,
        "{restart}"
    );
    let durable = runs.iter().find(|r| r["scenario"] == "durable").unwrap();
    assert_eq!(durable["lost"], 0, "{durable}");
    for key in [
        "remote_p50_ratio",
        "local_p50_ratio",
        "written_per_s_node",
        "store_update_per_s_512",
        "written_vs_store",
    ] {
        assert!(durable[key].as_f64().unwrap() > 0.0, "{key}: {durable}");
    }
}

/// The join-storm and rolling-restart scenarios at smoke size: 2 nodes start at once against a
/// 3-node cluster holding 300 children, then every node of a 3-node cluster restarts in turn;
/// no process exits, no node is falsely declared down, no call fails, every child keeps its
/// state.
#[test]
fn join_storm_and_rolling_restart_keep_every_child_and_fail_no_call() {
    let out = Command::new(env!("CARGO_BIN_EXE_throng-bench"))
        .args([
            "cluster",
            "--nodes",
            "3",
            "--children",
            "300",
            "--storm",
            "2",
            "--sample",
            "50",
            "--scenarios",
            "join-storm,rolling",
        ])
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("scenario").is_some())
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    for r in &runs {
        assert_eq!(r["kept_state"], 300, "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["caller_failed"], 0, "{r}");
        assert_eq!(r["false_downs"], 0, "{r}");
    }
    let storm = runs.iter().find(|r| r["scenario"] == "join-storm").unwrap();
    assert_eq!(storm["nodes"], 5, "{storm}");
    assert_eq!(storm["exited"], 0, "{storm}");
    assert!(storm["rebalanced_ms"].as_f64().unwrap() > 0.0, "{storm}");
    let rolling = runs.iter().find(|r| r["scenario"] == "rolling").unwrap();
    assert_eq!(rolling["steps"].as_array().unwrap().len(), 3, "{rolling}");
}
