//! `throng-sim`: runs the directory simulator over many seeds, or replays one with a trace.
//!
//! ```text
//! throng-sim [--seeds N] [--first S] [--nodes N] [--steps N] [--converge-every N] [--max-down N]
//!            [--partitions 0|1] [--quorum 0|1] [--gossip-cuts 0|1] [--shell-faults 0|1]
//!            [--durable 0|1] [--children N] [--work-bound 0|1]
//! throng-sim --seed S [--nodes N] [--steps N] ...     # replay one seed, trace on stderr
//! ```

use std::process::ExitCode;
use std::time::Instant;

use throng_core::placement::MAX_NODES;
use throng_sim::{run_seed, run_seeds, Invariant, SimConfig, Tally};

const USAGE: &str = "usage: throng-sim [--seeds N] [--first S] [--nodes N] [--steps N] \
[--converge-every N] [--max-down N] [--partitions 0|1] [--quorum 0|1] [--gossip-cuts 0|1] \
[--shell-faults 0|1] [--durable 0|1] [--children N] [--work-bound 0|1] | --seed S [same options]
environment: SIM_LIST=1 lists every failing seed; with --seed, SIM_WATCH=key follows one key";

struct Args {
    seeds: u64,
    first: u64,
    seed: Option<u64>,
    config: SimConfig,
}

fn parse() -> Result<Args, String> {
    let mut seeds = 100;
    let mut first = 0;
    let mut seed = None;
    let mut nodes = 5;
    let mut steps = 2000;
    let mut converge_every = None;
    let mut max_down = None;
    let mut partitions = true;
    let mut quorum = false;
    let mut gossip_cuts = false;
    let mut shell_faults = false;
    let mut durable = false;
    let mut children = 0;
    let mut work_bound = true;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}\n{USAGE}"))?;
        match flag.as_str() {
            "--seeds" => seeds = n,
            "--first" => first = n,
            "--seed" => seed = Some(n),
            "--nodes" => nodes = n as usize,
            "--steps" => steps = n,
            "--converge-every" => converge_every = Some(n.max(1)),
            "--max-down" => max_down = Some(n as usize),
            "--partitions" => partitions = n != 0,
            "--quorum" => quorum = n != 0,
            "--gossip-cuts" => gossip_cuts = n != 0,
            "--shell-faults" => shell_faults = n != 0,
            "--durable" => durable = n != 0,
            "--children" => children = n as usize,
            "--work-bound" => work_bound = n != 0,
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if nodes == 0 || nodes > MAX_NODES {
        return Err(format!("--nodes must be between 1 and {MAX_NODES}"));
    }
    let mut config = SimConfig::new(nodes, steps);
    if let Some(c) = converge_every {
        config.converge_every = c;
    }
    if let Some(m) = max_down {
        config.max_down = m;
    }
    config.partitions = partitions;
    config.quorum = quorum;
    config.gossip_cuts = gossip_cuts;
    config.shell_faults = shell_faults;
    config.durable = durable;
    config.children = children;
    config.work_bound = work_bound;
    Ok(Args {
        seeds,
        first,
        seed,
        config,
    })
}

fn replay_command(seed: u64, config: &SimConfig) -> String {
    format!(
        "cargo run --release -p throng-sim -- --seed {seed} --nodes {} --steps {} \
         --converge-every {} --max-down {} --partitions {} --quorum {} --gossip-cuts {} \
         --shell-faults {} --durable {} --children {} --work-bound {}",
        config.nodes,
        config.steps,
        config.converge_every,
        config.max_down,
        u8::from(config.partitions),
        u8::from(config.quorum),
        u8::from(config.gossip_cuts),
        u8::from(config.shell_faults),
        u8::from(config.durable),
        config.children,
        u8::from(config.work_bound)
    )
}

fn print_tally(tally: &Tally) {
    println!("invariant                      checks  violations");
    for inv in Invariant::ALL {
        println!(
            "  {:<26} {:>10}  {:>10}",
            inv.name(),
            tally.checks[inv as usize],
            tally.violations[inv as usize]
        );
    }
    if !tally.excused.is_empty() {
        println!("excused (allowed by the fault model):");
        for (why, n) in &tally.excused {
            println!("  {why:<60} {n:>8}");
        }
    }
    println!("events:");
    for (kind, n) in &tally.events {
        println!("  {kind:<40} {n:>10}");
    }
    print_losses(tally);
}

/// The work of the node losses ([`Invariant::NodeLossWork`]): per crash, the entries the lost
/// node held and the entries the survivors' view changes examined.
fn print_losses(tally: &Tally) {
    if tally.losses.is_empty() {
        return;
    }
    let mut ratios: Vec<f64> = tally
        .losses
        .iter()
        .map(|l| l.examined as f64 / l.held.max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let held: u64 = tally.losses.iter().map(|l| l.held).sum();
    let examined: u64 = tally.losses.iter().map(|l| l.examined).sum();
    let survivors: u64 = tally.losses.iter().map(|l| l.survivors_held).sum();
    let over = tally
        .losses
        .iter()
        .filter(|l| l.examined > l.bound())
        .count();
    println!(
        "node losses: {}; the lost nodes held {held} entries, the survivors {survivors}; their view \
         changes examined {examined} ({:.1} per entry lost, {:.2} per entry held by the survivors)",
        tally.losses.len(),
        examined as f64 / held.max(1) as f64,
        examined as f64 / survivors.max(1) as f64,
    );
    let quorum: u64 = tally.losses.iter().map(|l| l.quorum_changes).sum();
    println!(
        "  examined per entry lost: median {:.1}, max {:.1}; over the bound ({} per entry lost or referring to it + {} \
         per view change): {over}; view changes that also lost or regained the quorum or let a \
         node in (not counted): {quorum}",
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1],
        throng_sim::WORK_PER_HELD,
        throng_sim::WORK_PER_OBSERVER,
    );
    if tally.losses.len() <= 10 {
        for l in &tally.losses {
            println!(
                "  n{} of {} nodes held {} entries, the survivors {}: {} view changes examined {} \
                 (bound {})",
                l.node,
                l.nodes,
                l.held,
                l.survivors_held,
                l.view_changes,
                l.examined,
                l.bound()
            );
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (tally, failing, seeds) = match args.seed {
        Some(seed) => {
            let mut config = args.config.clone();
            config.trace = true;
            let report = run_seed(seed, &config);
            for f in &report.failures {
                println!("seed {seed}: {f}");
            }
            let failing = if report.violations() > 0 {
                vec![report.clone()]
            } else {
                Vec::new()
            };
            (report.tally, failing, 1)
        }
        None => {
            let (tally, failing) = run_seeds(args.first, args.seeds, &args.config);
            (tally, failing, args.seeds)
        }
    };
    print_tally(&tally);
    if let Some(first) = failing.first() {
        println!(
            "failing seeds: {} (the first ten: {})",
            failing.len(),
            failing
                .iter()
                .take(10)
                .map(|r| r.seed.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("first failing seed {}:", first.seed);
        for f in &first.failures {
            println!("  {f}");
        }
        println!("replay: {}", replay_command(first.seed, &args.config));
        if std::env::var_os("SIM_LIST").is_some() {
            // Every failing seed with its first violation, to compare two builds.
            for r in &failing {
                if let Some(f) = r.failures.first() {
                    println!("seed {}: {f}", r.seed);
                }
            }
        }
    }
    println!("elapsed: {:.2?}", started.elapsed());
    let violations = tally.total_violations();
    println!("seeds: {seeds}, violations: {violations}");
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
