//! The cluster bench at smoke size, as a test over real processes: 3 node processes on loopback,
//! 1,000 children with state started from one node and callable by key from every node; one node
//! SIGKILLed → all its children answer on both survivors with their last state; one node stopped
//! gracefully → the same, and a concurrent caller sees no failure.

use std::process::Command;

use serde_json::Value;

#[test]
fn three_processes_failover_and_graceful_stop_keep_every_child_and_its_state() {
    let out = Command::new(env!("CARGO_BIN_EXE_throng-bench"))
        .args([
            "cluster",
            "--nodes",
            "3",
            "--children",
            "1000",
            "--repeat",
            "1",
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
        // Every child, the victim's included, answers on both survivors with its last state.
        assert_eq!(r["kept_state"], 1000, "{scenario}: {r}");
        assert_eq!(r["lost_state"], 0, "{scenario}: {r}");
        assert_eq!(r["lost"], 0, "{scenario}: {r}");
    }
    let graceful = runs.iter().find(|r| r["scenario"] == "graceful").unwrap();
    assert_eq!(graceful["caller_failed"], 0, "{graceful}");
}
