//! `throng-bench`: Throng's cluster benchmark, the scenarios of the Horde table
//! (`docs/benchmarks.md`), on separate node processes over loopback.
//!
//! ```text
//! throng-bench cluster --nodes 3 --children 1000,10000,50000 --repeat 3 [--json FILE] [--svg FILE]
//! ```
//!
//! The controller starts `--nodes` node processes (this binary, `node` subcommand), drives them
//! over their stdin/stdout (one JSON command and one JSON answer per line) and measures:
//! start of N keyed children from one node, time until every node resolves all N, distribution,
//! resident memory, remote call latency by key, cast throughput, SIGKILL failover (time until all
//! of the victim's children answer on both survivors with their last state) and graceful stop
//! (the same, plus calls failed by a concurrent caller). It prints one JSON object per scenario
//! run, then a table of medians with min..max.
//!
//! `--scenarios restart,durable` runs the durable scenarios instead (`durable.rs`): a full-cluster
//! restart of durable children, and calls and snapshot writes with and without durability, each
//! beside its baseline in the same run.

mod control;
mod durable;
mod node;

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("node") => node::run(&args[1..]).await,
        Some("cluster") => control::run(&args[1..]).await,
        Some("table") => control::table(&args[1..]),
        _ => {
            eprintln!(
                "usage:\n  throng-bench cluster [--nodes 3] [--children 1000,10000] [--repeat 3] \
                 [--json FILE] [--svg FILE] [--skip-graceful] [--skip-join] [--names N,..] \
                 [--scenarios failover,graceful,join,restart,durable] [--load-ms 5000]\n  throng-bench table FILE.json \
                 (the table of a --json file)\n  throng-bench node NAME [SEED] \
                 (started by `cluster`)"
            );
            ExitCode::from(2)
        }
    }
}
