//! `throng-dispatch demo` runs three dispatch centers on this machine; `throng-dispatch node` runs
//! one, on this machine or as part of a real multi-host cluster.

use std::process::ExitCode;

use throng_dispatch::run;

const USAGE: &str = "\
throng-dispatch: superheroes, cities and a live page per node, on Throng.

USAGE:
  throng-dispatch demo [--tick-ms MS] [--base-port PORT] [--data-dir DIR] [--fresh]
      Three nodes (gotham, metropolis, capitol) as separate processes on
      http://127.0.0.1:4900, :4901, :4902 (gossip on :4910..:4912). Ctrl-C stops them all;
      their heroes stay on disk and come back, with their health and record, at the next
      `demo`. Each node keeps its data in DIR/<node>; DIR defaults to $THRONG_DATA_DIR, else
      $XDG_DATA_HOME/throng-dispatch, else ~/.local/share/throng-dispatch.

  throng-dispatch node --name NAME [--http [IP:]PORT] [--gossip IP:PORT] [--seeds A,B,...]
                       [--rpc IP:PORT] [--tick-ms MS] [--city NAME] [--public-url URL]
                       [--data-dir DIR] [--config FILE]
      One node. Settings not given come from --config (TOML) and THRONG_* variables
      (THRONG_NAME, THRONG_GOSSIP_BIND, THRONG_SEEDS, THRONG_SECRET or THRONG_SECRET_FILE,
      THRONG_TLS_CA/CERT/KEY, THRONG_DATA_DIR, ...). A node whose gossip binds loopback may run
      without a secret. Ctrl-C or SIGTERM leaves the cluster gracefully: its heroes move to the
      other nodes.

  --tick-ms MS    how often each hero decides to rest or fight (default 4000); the cities'
                  patrols scale with it (5 s at the default).
  --data-dir DIR  where the heroes are kept (demo: one directory per node under DIR). With
                  one, heroes survive a stop of every node; a `node` without one (nor
                  THRONG_DATA_DIR, nor data_dir in --config) keeps them in memory only.
  --fresh         (demo) remove the three nodes' data first and start with no heroes.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => run::parse_demo(&args[1..]).and_then(run::demo),
        Some("node") => run::parse_node(&args[1..]).and_then(|a| {
            run::init_logs();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(run::node(a))
        }),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throng-dispatch: {e}");
            ExitCode::FAILURE
        }
    }
}
