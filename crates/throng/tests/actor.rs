//! Actor core: calls, casts, timeouts, backpressure, panics, timers, links and monitors.

mod common;

use std::time::Duration;

use common::{eventually, Cmd, Log, Probe};
use throng::prelude::*;
use throng::{SendError, SpawnOptions, TrySendError};

#[tokio::test]
async fn call_and_cast_are_handled_in_order() {
    let log = Log::default();
    let a = throng::spawn(Probe::new("a", &log));
    for i in 1..=10 {
        a.cast(Cmd::Add(i)).await.unwrap();
    }
    assert_eq!(a.call(Cmd::Get).await.unwrap(), 55);
    assert!(log.contains("a started"));
}

#[tokio::test(start_paused = true)]
async fn call_times_out_and_actor_lives_on() {
    let log = Log::default();
    let a = throng::spawn(Probe::new("a", &log));
    let err = a
        .call_timeout(
            Cmd::Sleep(Duration::from_secs(10)),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Timeout(Duration::from_millis(50)));
    assert!(a.is_alive());
    // The late message is still handled; the actor then serves the next call.
    let next = a.call_timeout(Cmd::Add(1), Duration::from_secs(60)).await;
    assert_eq!(next.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn full_mailbox_pushes_back() {
    let log = Log::default();
    let a = throng::spawn_with(Probe::new("a", &log), SpawnOptions::default().mailbox(2));
    // Occupy the actor for a while, then fill its two slots.
    a.cast(Cmd::Sleep(Duration::from_secs(1))).await.unwrap();
    eventually("actor busy", Duration::from_secs(1), || a.queued() == 0).await;
    a.try_cast(Cmd::Add(1)).unwrap();
    a.try_cast(Cmd::Add(2)).unwrap();
    match a.try_cast(Cmd::Add(3)) {
        Err(TrySendError::Full(Cmd::Add(3))) => {}
        other => panic!("expected Full with the message handed back, got {other:?}"),
    }
    // A waiting cast does not complete while the mailbox stays full...
    let blocked = tokio::time::timeout(Duration::from_millis(500), a.cast(Cmd::Add(3))).await;
    assert!(blocked.is_err(), "cast must wait for room");
    // ...and completes once the actor drains it; nothing was lost.
    a.cast(Cmd::Add(3)).await.unwrap();
    assert_eq!(a.call(Cmd::Get).await.unwrap(), 6);
}

#[tokio::test]
async fn panic_is_an_exit_reason_and_is_isolated() {
    let log = Log::default();
    let a = throng::spawn(Probe::new("a", &log));
    let b = throng::spawn(Probe::new("b", &log));
    let down = a.monitor();
    let err = a.call(Cmd::Panic).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Failed(ExitReason::Panic(m)) if m.contains("boom in a")),
        "{err:?}"
    );
    assert!(matches!(down.await, ExitReason::Panic(_)));
    // `stopped` still ran, other actors are unaffected, and the runtime is alive.
    assert!(log
        .entries()
        .iter()
        .any(|e| e.starts_with("a stopped: panic")));
    assert_eq!(b.call(Cmd::Add(2)).await.unwrap(), 2);
    assert_eq!(
        a.call(Cmd::Get).await.unwrap_err(),
        CallError::Exited(a.id())
    );
    assert_eq!(
        a.cast(Cmd::Get).await.unwrap_err(),
        SendError::Exited(a.id())
    );
}

#[tokio::test]
async fn handler_error_stops_with_error_reason() {
    let log = Log::default();
    let a = throng::spawn(Probe::new("a", &log));
    a.cast(Cmd::Fail).await.unwrap();
    assert_eq!(a.monitor().await, ExitReason::error("failed on purpose"));
    assert!(log.contains("a stopped: error: failed on purpose"));
}

#[tokio::test]
async fn stop_runs_stopped_and_kill_does_not() {
    let log = Log::default();
    let a = throng::spawn(Probe::new("a", &log));
    a.stop(ExitReason::Shutdown);
    assert_eq!(a.monitor().await, ExitReason::Shutdown);
    assert!(log.contains("a stopped: shutdown"));

    let b = throng::spawn(Probe::new("b", &log));
    b.cast(Cmd::Hang).await.unwrap();
    // A call queued behind the hung handler learns of the kill at once, not at its timeout.
    let queued = {
        let b = b.clone();
        tokio::spawn(async move { b.call_timeout(Cmd::Get, Duration::from_secs(3600)).await })
    };
    eventually("call queued", Duration::from_secs(5), || b.queued() == 1).await;
    b.kill();
    assert_eq!(b.monitor().await, ExitReason::Killed);
    assert_eq!(
        queued.await.unwrap().unwrap_err(),
        CallError::Exited(b.id())
    );
    assert!(!log.entries().iter().any(|e| e.starts_with("b stopped")));
}

#[tokio::test]
async fn stop_normal_from_a_handler() {
    let log = Log::default();
    let a = throng::spawn(Probe::new("a", &log));
    a.call(Cmd::StopNormal).await.unwrap();
    assert_eq!(a.monitor().await, ExitReason::Normal);
}

struct FailsToStart;

impl Actor for FailsToStart {
    type Msg = ();
    type Reply = ();
    async fn started(&mut self, _ctx: &mut Context<Self>) -> ActorResult<()> {
        Err(ActorError::msg("no database"))
    }
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn start_reports_a_failed_started_hook() {
    assert_eq!(
        throng::start(FailsToStart).await.unwrap_err(),
        ExitReason::error("no database")
    );
}

/// Records timer messages.
struct Ticker {
    log: Log,
    timer: Option<throng::TimerRef>,
}

#[derive(Debug)]
enum Tick {
    After(&'static str),
    StartInterval(Duration),
    Interval,
    Cancel,
    StartAfter(Duration, &'static str),
}

impl Actor for Ticker {
    type Msg = Tick;
    type Reply = ();

    async fn handle(&mut self, msg: Tick, ctx: &mut Context<Self>) -> ActorResult<()> {
        match msg {
            Tick::After(s) => self.log.push(s),
            Tick::StartAfter(d, s) => self.timer = Some(ctx.send_after(d, Tick::After(s))),
            Tick::StartInterval(d) => self.timer = Some(ctx.interval(d, || Tick::Interval)),
            Tick::Interval => self.log.push("tick"),
            Tick::Cancel => {
                if let Some(t) = &self.timer {
                    t.cancel();
                }
            }
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn send_after_fires_once_after_its_delay() {
    let log = Log::default();
    let t = throng::spawn(Ticker {
        log: log.clone(),
        timer: None,
    });
    let t0 = tokio::time::Instant::now();
    t.call(Tick::StartAfter(Duration::from_millis(300), "late"))
        .await
        .unwrap();
    eventually("timer fired", Duration::from_secs(5), || {
        log.contains("late")
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(log.entries().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelled_timer_never_fires() {
    let log = Log::default();
    let t = throng::spawn(Ticker {
        log: log.clone(),
        timer: None,
    });
    t.call(Tick::StartAfter(Duration::from_millis(300), "never"))
        .await
        .unwrap();
    t.call(Tick::Cancel).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.call(Tick::After("probe")).await.unwrap();
    assert_eq!(log.entries(), vec!["probe"]);
}

#[tokio::test(start_paused = true)]
async fn interval_ticks_until_the_actor_stops() {
    let log = Log::default();
    let t = throng::spawn(Ticker {
        log: log.clone(),
        timer: None,
    });
    t.call(Tick::StartInterval(Duration::from_millis(100)))
        .await
        .unwrap();
    eventually("three ticks", Duration::from_secs(5), || {
        log.entries().iter().filter(|e| *e == "tick").count() >= 3
    })
    .await;
    t.stop(ExitReason::Shutdown);
    t.monitor().await;
    let ticks = log.entries().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        log.entries().len(),
        ticks,
        "no tick after the actor stopped"
    );
}

/// Links to a peer given at start and reports exits it traps.
struct Linker {
    peer: throng::ActorHandle,
    trap: bool,
    log: Log,
}

impl Actor for Linker {
    type Msg = ();
    type Reply = ();
    async fn started(&mut self, ctx: &mut Context<Self>) -> ActorResult<()> {
        ctx.trap_exit(self.trap);
        ctx.link(&self.peer);
        ctx.monitor(&self.peer);
        Ok(())
    }
    async fn handle(&mut self, _: (), _ctx: &mut Context<Self>) -> ActorResult<()> {
        Ok(())
    }
    async fn handle_exit(
        &mut self,
        from: throng::ActorId,
        reason: ExitReason,
        _ctx: &mut Context<Self>,
    ) -> ActorResult<()> {
        self.log.push(format!("exit from {from}: {reason}"));
        Ok(())
    }
    async fn handle_down(
        &mut self,
        id: throng::ActorId,
        reason: ExitReason,
        _ctx: &mut Context<Self>,
    ) -> ActorResult<()> {
        self.log.push(format!("down {id}: {reason}"));
        Ok(())
    }
}

#[tokio::test]
async fn abnormal_exit_propagates_over_links() {
    let log = Log::default();
    let peer = throng::spawn(Probe::new("peer", &log));
    let linker = throng::start(Linker {
        peer: peer.handle().clone(),
        trap: false,
        log: log.clone(),
    })
    .await
    .unwrap();
    peer.cast(Cmd::Panic).await.unwrap();
    match linker.monitor().await {
        ExitReason::Linked { from, reason } => {
            assert_eq!(from, peer.id());
            assert!(matches!(*reason, ExitReason::Panic(_)));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn trapped_exits_and_monitors_arrive_as_callbacks() {
    let log = Log::default();
    let peer = throng::spawn(Probe::new("peer", &log));
    let linker = throng::start(Linker {
        peer: peer.handle().clone(),
        trap: true,
        log: log.clone(),
    })
    .await
    .unwrap();
    peer.cast(Cmd::Fail).await.unwrap();
    let exit = format!("exit from {}: error: failed on purpose", peer.id());
    let down = format!("down {}: error: failed on purpose", peer.id());
    eventually("exit and down delivered", Duration::from_secs(5), || {
        log.contains(&exit) && log.contains(&down)
    })
    .await;
    assert!(linker.is_alive());
}

#[tokio::test]
async fn normal_exit_does_not_propagate() {
    let log = Log::default();
    let peer = throng::spawn(Probe::new("peer", &log));
    let linker = throng::start(Linker {
        peer: peer.handle().clone(),
        trap: false,
        log: log.clone(),
    })
    .await
    .unwrap();
    peer.call(Cmd::StopNormal).await.unwrap();
    let down = format!("down {}: normal", peer.id());
    eventually("down delivered", Duration::from_secs(5), || {
        log.contains(&down)
    })
    .await;
    assert!(linker.is_alive());
    linker.call(()).await.unwrap();
}

#[tokio::test]
async fn linking_to_a_dead_actor_delivers_its_exit() {
    let log = Log::default();
    let peer = throng::spawn(Probe::new("peer", &log));
    peer.cast(Cmd::Panic).await.unwrap();
    peer.monitor().await;
    let linker = throng::spawn(Linker {
        peer: peer.handle().clone(),
        trap: false,
        log: log.clone(),
    });
    assert!(matches!(linker.monitor().await, ExitReason::Linked { .. }));
}
