//! Local actor benchmarks, in one run, beside the raw tokio baseline and the Rust actor libraries
//! users would pick instead (kameo, ractor, actix), all doing the same work:
//! - cast throughput: 10,000 casts to one actor (then one call to wait for them) vs. 10,000 sends on
//!   a bounded `tokio::sync::mpsc`; kameo gets a bounded mailbox of 1,024 like Throng, ractor's
//!   mailbox is unbounded; actix's mailbox is set to 1,024 (`set_mailbox_capacity` in `started`),
//!   but its cast, `do_send`, ignores the capacity, so in effect it is unbounded like ractor's;
//! - call round trip: one call vs. one request/`oneshot` reply through a tokio task.
//!
//! Runtimes, and what they mean for comparability: throng, tokio, kameo and ractor run on one
//! multi-thread tokio runtime with 2 workers; the timed loop runs in `block_on` on the bench
//! thread, so the sender and the actor's task are on different threads and every hand-off can be
//! a cross-thread wake-up. actix cannot run there: it needs its own `System` (actix-rt), which is
//! a single-threaded (current-thread) tokio runtime with a `LocalSet`. Its entries create an
//! `actix::SystemRunner` on the bench thread and run each timed batch inside
//! `SystemRunner::block_on`, so sender and actor share that one thread: no cross-thread wake-ups
//! or synchronisation (cheaper hand-offs, better cache locality), but also no parallelism between
//! sender and actor — the actor runs only while the sender awaits. The actix figures therefore
//! measure a different setup (what an actix user gets) and are not a like-for-like comparison with
//! the other four; compare the others with each other, and actix as a reference point.
//!
//! Run: `cargo bench -p throng --bench local`; docs/benchmarks.md turns criterion's estimates into
//! ratios.
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

struct ACounter(u64);

impl actix::Actor for ACounter {
    type Context = actix::Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        // actix's default is 16; match Throng's (and kameo's here) 1,024.
        ctx.set_mailbox_capacity(1024);
    }
}

struct AAdd(u64);

impl actix::Message for AAdd {
    type Result = u64;
}

impl actix::Handler<AAdd> for ACounter {
    type Result = u64;
    fn handle(&mut self, AAdd(n): AAdd, _: &mut Self::Context) -> u64 {
        self.0 = self.0.wrapping_add(n);
        self.0
    }
}

/// A single-threaded actix `System` (actix-rt) on the bench thread and one `ACounter` in it.
fn actix_counter() -> (actix::SystemRunner, actix::Addr<ACounter>) {
    let sys = actix::System::new();
    let addr = sys.block_on(async { actix::Actor::start(ACounter(0)) });
    (sys, addr)
}

/// Like [`timed`], inside the actix system.
fn actix_timed<F: std::future::Future<Output = ()>>(
    sys: &actix::SystemRunner,
    iters: u64,
    mut f: impl FnMut() -> F,
) -> Duration {
    sys.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A single-threaded runtime: the conditions actix runs in, for a like-for-like comparison.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
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
    let st = current_thread();
    let mut g = c.benchmark_group("cast");
    g.throughput(Throughput::Elements(CASTS));
    for (name, on) in [("throng", &rt), ("throng_current_thread", &st)] {
        g.bench_function(name, |b| {
            let actor = on.block_on(async { throng::spawn(Counter(0)) });
            b.iter_custom(|iters| {
                on.block_on(async {
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
    }
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
    let (sys, actix_addr) = actix_counter();
    g.bench_function("actix", |b| {
        b.iter_custom(|iters| {
            actix_timed(&sys, iters, || async {
                for i in 0..CASTS {
                    actix_addr.do_send(AAdd(i));
                }
                actix_addr.send(AAdd(0)).await.unwrap();
            })
        })
    });
    g.finish();
}

fn call(c: &mut Criterion) {
    let rt = runtime();
    let st = current_thread();
    let mut g = c.benchmark_group("call");
    g.throughput(Throughput::Elements(1));
    for (name, on) in [("throng", &rt), ("throng_current_thread", &st)] {
        g.bench_function(name, |b| {
            let actor = on.block_on(async { throng::spawn(Counter(0)) });
            b.iter_custom(|iters| {
                on.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        actor.call(i).await.unwrap();
                    }
                    start.elapsed()
                })
            });
        });
    }
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
    let (sys, actix_addr) = actix_counter();
    g.bench_function("actix", |b| {
        b.iter_custom(|iters| {
            actix_timed(&sys, iters, || async {
                actix_addr.send(AAdd(1)).await.unwrap();
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
