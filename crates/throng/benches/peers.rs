//! Throng's local actors beside the Rust actor libraries users would pick instead, doing the same
//! work in the same run: cast throughput (10,000 casts to one actor, then one call to wait for
//! them) and call round trip. Every library gets a bounded mailbox of 1,024 where it offers one
//! (kameo); ractor's mailbox is unbounded. tokio multi-thread runtime, 2 workers.
//!
//! Run: `cargo bench -p throng --bench peers`. actix is not included: it needs its own runtime
//! (actix-rt) rather than the shared tokio runtime the others run on.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use throng::prelude::*;

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

struct KCounter(u64);

impl kameo::Actor for KCounter {
    type Args = Self;
    type Error = kameo::error::Infallible;
    async fn on_start(args: Self, _: kameo::actor::ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(args)
    }
}

impl kameo::message::Message<u64> for KCounter {
    type Reply = u64;
    async fn handle(&mut self, n: u64, _ctx: &mut kameo::message::Context<Self, u64>) -> u64 {
        self.0 = self.0.wrapping_add(n);
        self.0
    }
}

struct RCounter;

enum RMsg {
    Add(u64),
    Call(u64, ractor::RpcReplyPort<u64>),
}

impl ractor::Actor for RCounter {
    type Msg = RMsg;
    type State = u64;
    type Arguments = ();
    async fn pre_start(
        &self,
        _: ractor::ActorRef<RMsg>,
        _: (),
    ) -> Result<u64, ractor::ActorProcessingErr> {
        Ok(0)
    }
    async fn handle(
        &self,
        _: ractor::ActorRef<RMsg>,
        msg: RMsg,
        state: &mut u64,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            RMsg::Add(n) => *state = state.wrapping_add(n),
            RMsg::Call(n, reply) => {
                *state = state.wrapping_add(n);
                let _ = reply.send(*state);
            }
        }
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn timed<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    mut f: impl FnMut() -> F,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

fn cast(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("peers_cast");
    g.throughput(Throughput::Elements(CASTS));
    let throng_ref = rt.block_on(async { throng::spawn(Counter(0)) });
    g.bench_function("throng", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                for i in 0..CASTS {
                    throng_ref.cast(i).await.unwrap();
                }
                throng_ref.call(0).await.unwrap();
            })
        })
    });
    let kameo_ref = rt.block_on(async {
        use kameo::actor::Spawn;
        KCounter::spawn_with_mailbox(KCounter(0), kameo::mailbox::bounded(1024))
    });
    g.bench_function("kameo", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                for i in 0..CASTS {
                    kameo_ref.tell(i).await.unwrap();
                }
                kameo_ref.ask(0).await.unwrap();
            })
        })
    });
    let (ractor_ref, _h) =
        rt.block_on(async { ractor::Actor::spawn(None, RCounter, ()).await.unwrap() });
    g.bench_function("ractor", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                for i in 0..CASTS {
                    ractor_ref.cast(RMsg::Add(i)).unwrap();
                }
                ractor::call!(ractor_ref, |tx| RMsg::Call(0, tx)).unwrap();
            })
        })
    });
    g.finish();
}

fn call(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("peers_call");
    g.throughput(Throughput::Elements(1));
    let throng_ref = rt.block_on(async { throng::spawn(Counter(0)) });
    g.bench_function("throng", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                throng_ref.call(1).await.unwrap();
            })
        })
    });
    let kameo_ref = rt.block_on(async {
        use kameo::actor::Spawn;
        KCounter::spawn_with_mailbox(KCounter(0), kameo::mailbox::bounded(1024))
    });
    g.bench_function("kameo", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                kameo_ref.ask(1).await.unwrap();
            })
        })
    });
    let (ractor_ref, _h) =
        rt.block_on(async { ractor::Actor::spawn(None, RCounter, ()).await.unwrap() });
    g.bench_function("ractor", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                ractor::call!(ractor_ref, |tx| RMsg::Call(1, tx)).unwrap();
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = cast, call
}
criterion_main!(benches);
