//! `throng-fuzz`: fuzz Throng's decoders (see the crate's documentation).
//!
//! ```text
//! throng-fuzz [--inputs N] [--seed S] [--target NAME]... [--out DIR]
//! throng-fuzz --replay TARGET FILE
//! ```
//!
//! Runs `N` inputs (default 1,000,000) per target (default: every target), prints a line per
//! target (inputs, rate, largest allocation), and exits with status 1 if anything was found;
//! findings are saved under `DIR` (default `fuzz-findings`). Build it in release:
//! `cargo run --release -p throng-fuzz -- --inputs 10000000`.

use std::path::PathBuf;
use std::process::ExitCode;

use throng_fuzz::{alloc::Counting, fuzz_target, replay, Config, Target};

#[global_allocator]
static ALLOC: Counting = Counting;

fn usage() -> ExitCode {
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    eprintln!(
        "usage: throng-fuzz [--inputs N] [--seed S] [--target NAME]... [--out DIR]\n       \
         throng-fuzz --replay TARGET FILE\ntargets: {}",
        names.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut config = Config {
        out_dir: Some(PathBuf::from("fuzz-findings")),
        ..Config::default()
    };
    let mut targets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next();
        match arg.as_str() {
            "--inputs" => match value().and_then(|v| v.replace('_', "").parse().ok()) {
                Some(n) => config.inputs = n,
                None => return usage(),
            },
            "--seed" => match value().and_then(|v| v.parse().ok()) {
                Some(s) => config.seed = s,
                None => return usage(),
            },
            "--target" => match value().as_deref().and_then(Target::from_name) {
                Some(t) => targets.push(t),
                None => return usage(),
            },
            "--out" => match value() {
                Some(d) => config.out_dir = Some(d.into()),
                None => return usage(),
            },
            "--replay" => {
                let (Some(t), Some(file)) =
                    (value().as_deref().and_then(Target::from_name), value())
                else {
                    return usage();
                };
                return replay_file(t, &file);
            }
            _ => return usage(),
        }
    }
    if targets.is_empty() {
        targets = Target::ALL.to_vec();
    }
    println!(
        "{:<10} {:>12} {:>12} {:>10} {:>9} {:>14} {:>8}",
        "target", "inputs", "decoded", "seconds", "inputs/s", "peak alloc", "findings"
    );
    let mut found = 0;
    for t in targets {
        let r = fuzz_target(t, &config);
        println!(
            "{:<10} {:>12} {:>12} {:>10.1} {:>9.0} {:>8} B/{:<5} {:>8}",
            r.target,
            r.inputs,
            r.decoded,
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.peak.0,
            r.peak.1,
            r.findings.len()
        );
        found += r.findings.len();
    }
    if found > 0 {
        eprintln!("{found} finding(s); see above and the files saved");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn replay_file(target: Target, file: &str) -> ExitCode {
    let input = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    match replay(target, &input) {
        Some(p) => {
            println!("{}: {p}", target.name());
            ExitCode::FAILURE
        }
        None => {
            println!("{}: no problem", target.name());
            ExitCode::SUCCESS
        }
    }
}
