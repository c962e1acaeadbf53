//! `throng-bench`: Throng's cluster benchmark, the scenarios of the Horde table
//! (`docs/benchmarks.md`), on separate node processes over loopback.
//!
//! ```text
//! throng-bench cluster --nodes 3,12,24,48 --children 100000 --repeat 3 [--json FILE] [--svg FILE]
//! ```
//!
//! The controller starts `--nodes` node processes (this binary, `node` subcommand) for each
//! cluster size in turn, drives them over their stdin/stdout (one JSON command and one JSON
//! answer per line) and runs the scenarios of `scale.rs`, measured so that checking does not
//! swamp what is checked: start of N keyed children from one node and the time until every node
//! routes a sample of them (`--sample`), distribution, per-node CPU and resident memory (from
//! `/proc`), remote call latency by key, SIGKILL failover and graceful stop of one node (failure
//! detection from the nodes' events; time until one caller sweeping only the victim's keys finds
//! each with its last state; time until every survivor routes a sample of them; calls failed by
//! a concurrent caller), and a join (time until every node runs exactly what it owns). A full
//! sweep of all N from one node afterwards checks that nothing was lost. It prints one JSON
//! object per scenario run, then a table of medians with min..max.
//!
//! `--scenarios join-storm` starts `--storm 24` nodes at once against a running cluster;
//! `--scenarios rolling` restarts every node in turn under a concurrent caller;
//! `throng-bench plot FILE OUT.svg` draws the growth curve against the cluster size
//! (`plot.rs`).
//!
//! `--scenarios restart,durable` runs the durable scenarios instead (`durable.rs`): a full-cluster
//! restart of durable children, and calls and snapshot writes with and without durability, each
//! beside its baseline in the same run.
//!
//! `--scenarios callers --children 1000000 [--live N]` (`callers.rs`): one node starts and calls
//! N distinct keys (`--live` of them with a child, default all) on children hosted by the other
//! nodes; its resident memory at checkpoints beside an idle node of the same cluster.

mod callers;
mod control;
mod durable;
mod node;
mod plot;
mod scale;

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("node") => node::run(&args[1..]).await,
        Some("cluster") => control::run(&args[1..]).await,
        Some("table") => control::table(&args[1..]),
        Some("plot") => plot::run(&args[1..]),
        _ => {
            eprintln!(
                "usage:\n  throng-bench cluster [--nodes 3,12,..] [--children 1000,10000] [--repeat 3] \
                 [--json FILE] [--svg FILE] [--skip-graceful] [--skip-join] [--names N,..] \
                 [--scenarios failover,graceful,join,join-storm,rolling,restart,durable,callers] \
                 [--sample 200] [--storm 24] [--load-ms 5000] [--live N]\n  throng-bench table FILE.json \
                 (the table of a --json file)\n  throng-bench plot FILE.json OUT.svg \
                 [--children N] (the growth curve against --nodes)\n  throng-bench node NAME [SEED] \
                 (started by `cluster`)"
            );
            ExitCode::from(2)
        }
    }
}
