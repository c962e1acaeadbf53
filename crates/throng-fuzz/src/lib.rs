//! Throng's fuzzer, on the stable toolchain: every decoder of bytes from a peer or from a node's
//! disk ([`Target`]) fed generated, mutated and random inputs, each checked for
//!
//! - **no panic** (every input runs under `catch_unwind`),
//! - **bounded allocation**: the peak of the bytes one decode holds ([`alloc::measure`], with
//!   [`alloc::Counting`] as the global allocator) stays within [`alloc_limit`] of the input's
//!   length (128 bytes per input byte plus 64 KiB), so a length prefix claiming 4 GiB cannot make
//!   a node reserve 4 GiB,
//! - **round trips**: a generated value's encoding decodes back to the value.
//!
//! Inputs come from three sources: valid encodings of generated values ([`Target::generate`]),
//! mutations of a pool of valid inputs (the target's seeds, generated inputs, and mutants that
//! still decoded), and random bytes. There is no coverage feedback (that needs libFuzzer or AFL
//! instrumentation); starting from valid encodings is what takes inputs past the outer framing.
//!
//! A finding is printed with its input in hex and saved to a file, to be replayed with
//! `throng-fuzz --replay FILE`. The binary (`src/main.rs`) runs millions of inputs; the
//! crate's test runs a short seeded run of every target, so CI keeps it.

pub mod alloc;
mod gen;
mod mutate;
pub mod rng;
mod targets;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

pub use rng::Rng;
pub use targets::{Target, MAX_FRAME};

/// Bytes one decode may hold at its peak per byte of input. A sequence's length prefix is
/// believed only as far as input bytes remain (postcard gives serde no larger size hint, and serde
/// preallocates at most 1 MiB), so a lying prefix makes a decoder reserve at most the remaining
/// bytes times the element's size — 120 bytes for the largest element decoded in a sequence, a
/// directory `Record`.
pub const ALLOC_PER_INPUT_BYTE: usize = 128;

/// Bytes one decode may hold at its peak whatever its input's length.
pub const ALLOC_BASE: usize = 64 * 1024;

/// The most bytes a decode of `len` input bytes may hold at once.
pub fn alloc_limit(len: usize) -> usize {
    len.saturating_mul(ALLOC_PER_INPUT_BYTE)
        .saturating_add(ALLOC_BASE)
}

/// Inputs a pool of inputs to mutate holds at most.
const POOL: usize = 512;

/// How one run goes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Inputs to run.
    pub inputs: u64,
    /// Seed of the run: the same seed runs the same inputs.
    pub seed: u64,
    /// Where findings are saved (none: only printed).
    pub out_dir: Option<PathBuf>,
    /// Distinct findings recorded at most (the run goes on past them).
    pub max_findings: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            inputs: 1_000_000,
            seed: 1,
            out_dir: None,
            max_findings: 16,
        }
    }
}

/// What is wrong with an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A decoder panicked, with this message.
    Panic(String),
    /// A decode held `peak` bytes at once, over `limit`.
    Allocation {
        /// Peak bytes held.
        peak: usize,
        /// The limit for the input's length.
        limit: usize,
    },
    /// A generated value's encoding did not decode back to it.
    RoundTrip(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Panic(m) => write!(f, "panic: {m}"),
            Problem::Allocation { peak, limit } => {
                write!(f, "allocation: {peak} bytes held at once, limit {limit}")
            }
            Problem::RoundTrip(m) => write!(f, "round trip: {m}"),
        }
    }
}

/// An input that shows a problem.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What is wrong.
    pub problem: Problem,
    /// The input (empty for a round trip: the message names the value).
    pub input: Vec<u8>,
    /// Where it was saved.
    pub saved: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// Inputs run.
    pub inputs: u64,
    /// Inputs of which at least one part decoded.
    pub decoded: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The largest peak of bytes one decode held, and the length of that input.
    pub peak: (usize, usize),
    /// Distinct problems found (at most [`Config::max_findings`]).
    pub findings: Vec<Finding>,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A decoder to fuzz: its seeds, how to make a valid input, how to run it.
pub struct Harness<'a> {
    /// Its name (in reports and file names).
    pub name: &'a str,
    /// Inputs the pool starts with.
    pub seeds: Vec<Vec<u8>>,
    /// A valid input, or why a generated value did not round-trip.
    pub generate: &'a dyn Fn(&mut Rng) -> Result<Vec<u8>, String>,
    /// Run the decoder; returns how many parts decoded.
    pub run: &'a dyn Fn(&[u8]) -> usize,
}

/// Fuzz a target of Throng's.
pub fn fuzz_target(target: Target, config: &Config) -> Report {
    fuzz(
        &Harness {
            name: target.name(),
            seeds: target.seeds(),
            generate: &|rng| target.generate(rng),
            run: &|bytes| target.run(bytes),
        },
        config,
    )
}

thread_local! {
    /// Whether this thread is running an input (its panics are findings, not reports).
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    /// The message of the last panic of an input on this thread.
    static PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(Cell::get) {
                PANIC.with(|p| *p.borrow_mut() = info.to_string());
            } else {
                previous(info);
            }
        }));
    });
}

/// Run `f` (an input's decode, or a generation), turning a panic into its message.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    FUZZING.with(|x| x.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    FUZZING.with(|x| x.set(false));
    r.map_err(|_| PANIC.with(|p| std::mem::take(&mut *p.borrow_mut())))
}

/// Fuzz `h` with `config.inputs` inputs. Panics if [`alloc::Counting`] is not the global
/// allocator (allocation would go unchecked).
pub fn fuzz(h: &Harness<'_>, config: &Config) -> Report {
    assert!(
        alloc::installed(),
        "install throng_fuzz::alloc::Counting as the #[global_allocator]"
    );
    install_panic_hook();
    let name_seed = h.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |a, b| {
        (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(config.seed ^ name_seed);
    let mut run = Run {
        h,
        config,
        report: Report {
            target: h.name.to_owned(),
            inputs: 0,
            decoded: 0,
            elapsed: Duration::ZERO,
            peak: (0, 0),
            findings: Vec::new(),
        },
        seen: HashSet::new(),
    };
    let mut pool: Vec<Vec<u8>> = h.seeds.clone();
    let start = Instant::now();
    for _ in 0..config.inputs {
        let (input, mutant) = match rng.below(20) {
            0 | 1 => {
                let n = if rng.one_in(16) {
                    rng.below(4096)
                } else {
                    rng.below(64)
                };
                (rng.bytes(n), false)
            }
            2..=5 => match guarded(|| (h.generate)(&mut rng)) {
                Ok(Ok(input)) => {
                    add(&mut pool, &mut rng, input.clone());
                    (input, false)
                }
                Ok(Err(why)) => {
                    run.found(Problem::RoundTrip(why), Vec::new());
                    continue;
                }
                Err(panic) => {
                    run.found(Problem::Panic(format!("generating: {panic}")), Vec::new());
                    continue;
                }
            },
            _ if pool.is_empty() => (Vec::new(), false),
            _ => {
                let mut input = rng.pick(&pool).clone();
                let other = rng.pick(&pool).clone();
                mutate::mutate(&mut rng, &mut input, &other);
                (input, true)
            }
        };
        if run.check(&input) && mutant && rng.one_in(8) {
            // A mutant that still decodes is a valid input of a new shape: mutate it further.
            add(&mut pool, &mut rng, input);
        }
    }
    run.report.elapsed = start.elapsed();
    run.report
}

/// Put `input` in the pool, replacing a random one when it is full.
fn add(pool: &mut Vec<Vec<u8>>, rng: &mut Rng, input: Vec<u8>) {
    if pool.len() < POOL {
        pool.push(input);
    } else {
        let i = rng.below(POOL);
        pool[i] = input;
    }
}

struct Run<'a> {
    h: &'a Harness<'a>,
    config: &'a Config,
    report: Report,
    /// Problems already recorded (a panic by its message, an allocation once).
    seen: HashSet<String>,
}

impl Run<'_> {
    /// Run one input; returns whether any part of it decoded.
    fn check(&mut self, input: &[u8]) -> bool {
        self.report.inputs += 1;
        let (outcome, peak) = alloc::measure(|| guarded(|| (self.h.run)(input)));
        if peak > self.report.peak.0 {
            self.report.peak = (peak, input.len());
        }
        let limit = alloc_limit(input.len());
        if peak > limit {
            self.found(Problem::Allocation { peak, limit }, input.to_vec());
        }
        match outcome {
            Ok(parts) => {
                self.report.decoded += u64::from(parts > 0);
                parts > 0
            }
            Err(panic) => {
                self.found(Problem::Panic(panic), input.to_vec());
                false
            }
        }
    }

    fn found(&mut self, problem: Problem, input: Vec<u8>) {
        let key = match &problem {
            Problem::Panic(m) => m.clone(),
            Problem::Allocation { .. } => "allocation".to_owned(),
            Problem::RoundTrip(m) => m.clone(),
        };
        if self.report.findings.len() >= self.config.max_findings || !self.seen.insert(key) {
            return;
        }
        let n = self.report.findings.len();
        let saved = self.config.out_dir.as_ref().and_then(|dir| {
            let path = dir.join(format!("{}-{}-{n}.bin", self.h.name, self.config.seed));
            std::fs::create_dir_all(dir).ok()?;
            std::fs::write(&path, &input).ok()?;
            Some(path)
        });
        eprintln!(
            "FINDING {} #{n}: {problem}\n  input ({} bytes): {}\n  saved: {}",
            self.h.name,
            input.len(),
            hex(&input),
            saved
                .as_ref()
                .map_or("(not saved)".into(), |p| p.display().to_string())
        );
        self.report.findings.push(Finding {
            problem,
            input,
            saved,
        });
    }
}

/// `bytes` in hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run one input through `target` as the fuzzer does: its problem, if it shows one.
pub fn replay(target: Target, input: &[u8]) -> Option<Problem> {
    install_panic_hook();
    let (outcome, peak) = alloc::measure(|| guarded(|| target.run(input)));
    match outcome {
        Err(panic) => Some(Problem::Panic(panic)),
        Ok(_) if peak > alloc_limit(input.len()) => Some(Problem::Allocation {
            peak,
            limit: alloc_limit(input.len()),
        }),
        Ok(_) => None,
    }
}
