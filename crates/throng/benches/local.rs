//! Local actor benchmarks, each beside its raw tokio baseline in the same run:
//! - cast throughput: 10,000 casts to one actor vs. 10,000 sends on a bounded `tokio::sync::mpsc`;
//! - call round trip: one call vs. one request/`oneshot` reply through a tokio task.
//!
//! Run: `cargo bench -p throng --bench local`. Ratios are printed by `scripts/bench-ratios` from
//! criterion's estimates (see docs/benchmarks.md).
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use throng::prelude::*;
use tokio::sync::{mpsc, oneshot};

const CASTS: u64 = 10_000;

struct Counter(u64);

impl Actor for Counter {
    type Msg = u64;
    type Reply = u64;
    async fn handle(&mut self, n: u64, _ctx: &mut Context<Self>) -> ActorResult<u64> {
        self.0 = self.0.wrapping_add(n);
        Ok(self.0)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn cast(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("cast");
    g.throughput(Throughput::Elements(CASTS));
    g.bench_function("throng", |b| {
        let actor = rt.block_on(async { throng::spawn(Counter(0)) });
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for i in 0..CASTS {
                        actor.cast(i).await.unwrap();
                    }
                    actor.call(0).await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("tokio_mpsc", |b| {
        let tx = rt.block_on(async {
            let (tx, mut rx) =
                mpsc::channel::<(u64, Option<oneshot::Sender<u64>>)>(throng::DEFAULT_MAILBOX);
            tokio::spawn(async move {
                let mut sum = 0u64;
                while let Some((n, reply)) = rx.recv().await {
                    sum = sum.wrapping_add(n);
                    if let Some(r) = reply {
                        let _ = r.send(sum);
                    }
                }
            });
            tx
        });
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for i in 0..CASTS {
                        tx.send((i, None)).await.unwrap();
                    }
                    let (rtx, rrx) = oneshot::channel();
                    tx.send((0, Some(rtx))).await.unwrap();
                    rrx.await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn call(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("call");
    g.throughput(Throughput::Elements(1));
    g.bench_function("throng", |b| {
        let actor = rt.block_on(async { throng::spawn(Counter(0)) });
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    actor.call(i).await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("tokio_oneshot", |b| {
        let tx = rt.block_on(async {
            let (tx, mut rx) =
                mpsc::channel::<(u64, oneshot::Sender<u64>)>(throng::DEFAULT_MAILBOX);
            tokio::spawn(async move {
                let mut sum = 0u64;
                while let Some((n, reply)) = rx.recv().await {
                    sum = sum.wrapping_add(n);
                    let _ = reply.send(sum);
                }
            });
            tx
        });
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let (rtx, rrx) = oneshot::channel();
                    tx.send((i, rtx)).await.unwrap();
                    rrx.await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = cast, call
}
criterion_main!(benches);
