//! Spawn N idle actors and report the time taken and resident memory per actor, beside the same
//! number of bare tokio tasks parked on a channel (the baseline), measured in the same process.
//!
//! Run: `cargo bench -p throng --bench spawn -- [N]` (default 1,000,000).
#![allow(missing_docs, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes and blocks, to tell allocator overhead from what actors really hold.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

use throng::prelude::*;

struct Idle;

impl Actor for Idle {
    type Msg = ();
    type Reply = ();
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // Each side runs in its own process so neither reuses memory the other freed.
    if let Some(side) = args.iter().find_map(|a| a.strip_prefix("--side=")) {
        let (ms, settled_ms, bytes) = measure(side, n);
        println!("{ms} {settled_ms} {bytes}");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let run = |side: &str| -> (f64, f64, f64) {
        let out = std::process::Command::new(&exe)
            .arg(format!("--side={side}"))
            .arg(n.to_string())
            .output()
            .expect("run measurement process");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        assert_eq!(v.len(), 3, "bad output from {side}: {text}");
        (v[0], v[1], v[2])
    };
    let (t_ms, t_settled, t_bytes) = run("throng");
    let (b_ms, b_settled, b_bytes) = run("baseline");
    println!(
        "{{\"bench\":\"spawn_idle\",\"n\":{n},\"throng_spawn_ms\":{t_ms:.1},\"throng_settled_ms\":{t_settled:.1},\"throng_bytes_per_actor\":{t_bytes:.0},\"baseline_spawn_ms\":{b_ms:.1},\"baseline_settled_ms\":{b_settled:.1},\"baseline_bytes_per_task\":{b_bytes:.0},\"time_ratio\":{:.2},\"memory_ratio\":{:.2}}}",
        t_settled / b_settled,
        t_bytes / b_bytes,
    );
}

/// Spawn `n` idle actors (or, for the baseline, bare tokio tasks parked on a bounded tokio mpsc
/// receiver): returns (spawn ms, ms until all have run, resident bytes per actor).
fn measure(side: &str, n: usize) -> (f64, f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Spawn from a task on a worker thread, as an application does (spawning from `block_on`'s
    // thread goes through the runtime's global queue instead of the worker's local one).
    rt.block_on(async {
        tokio::spawn(measure_in_runtime(side.to_owned(), n))
            .await
            .unwrap()
    })
}

async fn measure_in_runtime(side: String, n: usize) -> (f64, f64, f64) {
    let side = side.as_str();
    {
        let before = rss_bytes();
        let heap_before = (
            LIVE_BYTES.load(Ordering::Relaxed),
            LIVE_BLOCKS.load(Ordering::Relaxed),
        );
        let heap = move || {
            let b = (LIVE_BYTES.load(Ordering::Relaxed) - heap_before.0) as f64 / n as f64;
            let k = (LIVE_BLOCKS.load(Ordering::Relaxed) - heap_before.1) as f64 / n as f64;
            eprintln!("{side}: heap {b:.0} bytes in {k:.2} blocks per actor");
        };
        let t0 = Instant::now();
        let spawn_time;
        if side == "throng" {
            let actors: Vec<ActorRef<Idle>> = (0..n).map(|_| throng::spawn(Idle)).collect();
            spawn_time = t0.elapsed();
            // Tasks are run in spawn order: a call to the last one proves all have started.
            actors[n - 1].call(()).await.unwrap();
            let settled = t0.elapsed();
            let bytes = rss_bytes().saturating_sub(before) as f64 / n as f64;
            heap();
            std::mem::forget(actors);
            (ms(spawn_time), ms(settled), bytes)
        } else {
            let mut senders = Vec::with_capacity(n);
            for _ in 0..n {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(
                    throng::DEFAULT_MAILBOX,
                );
                tokio::spawn(async move {
                    while let Some(r) = rx.recv().await {
                        let _ = r.send(());
                    }
                });
                senders.push(tx);
            }
            spawn_time = t0.elapsed();
            let (tx, rx) = tokio::sync::oneshot::channel();
            senders[n - 1].send(tx).await.unwrap();
            rx.await.unwrap();
            let settled = t0.elapsed();
            let bytes = rss_bytes().saturating_sub(before) as f64 / n as f64;
            heap();
            std::mem::forget(senders);
            (ms(spawn_time), ms(settled), bytes)
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
