//! Local supervision: restart policies, intensity, shutdown timeouts, ordering, nesting.

mod common;

use std::time::Duration;

use common::{Cmd, Log, Probe};
use throng::prelude::*;
use throng::supervisor::SupervisorError;

fn probe_spec(name: &'static str, log: &Log) -> ChildSpec<Probe> {
    let log = log.clone();
    ChildSpec::new(move || Probe::new(name, &log))
}

async fn sup(max_restarts: u32, secs: u64) -> DynamicSupervisor {
    DynamicSupervisor::start(SupervisorOptions {
        intensity: Intensity::new(max_restarts, Duration::from_secs(secs)).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn only_child(sup: &DynamicSupervisor) -> Option<throng::ActorHandle> {
    let children = sup.which_children().await.unwrap();
    assert!(children.len() <= 1);
    children.into_iter().next().map(|c| c.handle)
}

/// Wait until the supervisor's only child is a new incarnation (not `old`), and return it.
async fn restarted(sup: &DynamicSupervisor, old: throng::ActorId) -> throng::ActorHandle {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(h) = only_child(sup).await {
            if h.id() != old {
                return h;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "child not restarted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn permanent_child_restarts_with_fresh_state() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    let child = sup.start_child(probe_spec("p", &log)).await.unwrap();
    child.call(Cmd::Add(5)).await.unwrap();
    child.cast(Cmd::Panic).await.unwrap();
    let new = restarted(&sup, child.id()).await;
    assert!(new.is_alive());
    assert_eq!(
        log.entries().iter().filter(|e| *e == "p started").count(),
        2
    );
    let info = sup.which_children().await.unwrap();
    assert_eq!(info[0].restarts, 1);
    // Normal exits restart a permanent child too.
    let before = new.id();
    new.stop(ExitReason::Normal);
    restarted(&sup, before).await;
}

#[tokio::test]
async fn transient_child_restarts_only_after_failure() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    let spec = probe_spec("t", &log).restart(RestartPolicy::Transient);
    let child = sup.start_child(spec.clone()).await.unwrap();
    child.cast(Cmd::Fail).await.unwrap();
    let new = restarted(&sup, child.id()).await;
    new.stop(ExitReason::Normal);
    new.monitor().await;
    eventually_no_children(&sup).await;

    let child = sup.start_child(spec).await.unwrap();
    child.stop(ExitReason::Shutdown);
    child.monitor().await;
    eventually_no_children(&sup).await;
}

async fn eventually_no_children(sup: &DynamicSupervisor) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sup.count_children().await.unwrap().specs != 0 {
        assert!(tokio::time::Instant::now() < deadline, "children remain");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn temporary_child_is_never_restarted() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    let child = sup
        .start_child(probe_spec("tmp", &log).restart(RestartPolicy::Temporary))
        .await
        .unwrap();
    child.cast(Cmd::Panic).await.unwrap();
    child.monitor().await;
    eventually_no_children(&sup).await;
    assert_eq!(
        log.entries().iter().filter(|e| *e == "tmp started").count(),
        1
    );
}

#[tokio::test]
async fn exceeding_restart_intensity_stops_the_supervisor_and_its_children() {
    let log = Log::default();
    let sup = sup(2, 5).await;
    let bystander = sup
        .start_child(probe_spec("bystander", &log))
        .await
        .unwrap();
    let mut victim = sup
        .start_child(probe_spec("victim", &log))
        .await
        .unwrap()
        .handle()
        .clone();
    let sup_down = sup.actor().monitor();
    for _ in 0..2 {
        let old = victim.id();
        victim.stop(ExitReason::error("crash"));
        victim = loop {
            let children = sup.which_children().await.unwrap();
            if let Some(c) = children.iter().find(|c| {
                c.type_name.ends_with("Probe")
                    && c.handle.id() != old
                    && c.handle.id() != bystander.id()
            }) {
                break c.handle.clone();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
    }
    // The third crash within the window is one too many.
    victim.stop(ExitReason::error("crash"));
    let reason = sup_down.await;
    assert_eq!(
        reason,
        ExitReason::RestartIntensity {
            restarts: 3,
            period: Duration::from_secs(5)
        }
    );
    assert_eq!(bystander.monitor().await, ExitReason::Shutdown);
    assert!(log.contains("bystander stopped: shutdown"));
}

#[tokio::test(start_paused = true)]
async fn child_ignoring_shutdown_is_killed_after_its_timeout() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    let child = sup
        .start_child(
            probe_spec("stubborn", &log).shutdown(Shutdown::Timeout(Duration::from_millis(200))),
        )
        .await
        .unwrap();
    child.cast(Cmd::Hang).await.unwrap();
    let t0 = tokio::time::Instant::now();
    sup.terminate_child(&child).await.unwrap();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    assert_eq!(child.exit_reason(), Some(ExitReason::Killed));
    assert!(!log.contains("stubborn stopped: shutdown"));
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
}

#[tokio::test]
async fn cooperative_child_stops_within_its_timeout() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    let child = sup.start_child(probe_spec("nice", &log)).await.unwrap();
    sup.terminate_child(&child).await.unwrap();
    assert_eq!(child.exit_reason(), Some(ExitReason::Shutdown));
    assert!(log.contains("nice stopped: shutdown"));
    assert_eq!(
        sup.terminate_child(&child).await.unwrap_err(),
        SupervisorError::NotFound(child.id())
    );
}

#[tokio::test]
async fn brutal_kill_skips_stopped() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    let child = sup
        .start_child(probe_spec("brute", &log).shutdown(Shutdown::Brutal))
        .await
        .unwrap();
    sup.terminate_child(&child).await.unwrap();
    assert_eq!(child.exit_reason(), Some(ExitReason::Killed));
    assert!(!log.entries().iter().any(|e| e.starts_with("brute stopped")));
}

#[tokio::test]
async fn shutdown_stops_children_newest_first() {
    let log = Log::default();
    let sup = sup(3, 5).await;
    for name in ["one", "two", "three"] {
        sup.start_child(probe_spec(name, &log)).await.unwrap();
    }
    assert_eq!(sup.shutdown().await, ExitReason::Shutdown);
    let stops: Vec<String> = log
        .entries()
        .into_iter()
        .filter(|e| e.contains("stopped"))
        .collect();
    assert_eq!(
        stops,
        vec![
            "three stopped: shutdown",
            "two stopped: shutdown",
            "one stopped: shutdown"
        ]
    );
}

#[tokio::test]
async fn supervisors_nest_and_a_killed_supervisor_takes_its_children_down() {
    let log = Log::default();
    let top = sup(3, 5).await;
    let mid: DynamicSupervisor = top
        .start_child(DynamicSupervisor::child_spec(SupervisorOptions::default()))
        .await
        .unwrap()
        .into();
    let leaf = mid.start_child(probe_spec("leaf", &log)).await.unwrap();
    let counts = top.count_children().await.unwrap();
    assert_eq!(
        (counts.supervisors, counts.workers, counts.active),
        (1, 0, 1)
    );

    // Graceful: stopping the top supervisor stops the grandchild through the middle one.
    let top2 = sup(3, 5).await;
    let mid2: DynamicSupervisor = top2
        .start_child(DynamicSupervisor::child_spec(SupervisorOptions::default()))
        .await
        .unwrap()
        .into();
    let leaf2 = mid2.start_child(probe_spec("leaf2", &log)).await.unwrap();
    top2.shutdown().await;
    assert_eq!(leaf2.exit_reason(), Some(ExitReason::Shutdown));

    // Brutal: killing the middle supervisor still takes its child down (links), and the top
    // supervisor restarts the middle one, empty.
    let old_mid = mid.actor().id();
    mid.actor().kill();
    assert!(matches!(leaf.monitor().await, ExitReason::Linked { .. }));
    let new_mid = restarted(&top, old_mid).await;
    assert!(new_mid.is_alive());
}

#[tokio::test]
async fn failed_start_adds_nothing_and_limits_hold() {
    let log = Log::default();
    let sup = DynamicSupervisor::start(SupervisorOptions {
        max_children: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = sup
        .start_child(ChildSpec::new(|| -> Probe { panic!("factory exploded") }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::StartFailed(ExitReason::Panic(_))),
        "{err:?}"
    );
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
    sup.start_child(probe_spec("a", &log)).await.unwrap();
    assert_eq!(
        sup.start_child(probe_spec("b", &log)).await.unwrap_err(),
        SupervisorError::MaxChildren(1)
    );
    // The supervisor survived all of it.
    assert!(sup.actor().is_alive());
}

/// A child that registers itself under a stable name in `started`, so callers can reach whichever
/// incarnation is running — the `via` pattern.
struct Named {
    registry: Registry,
}

impl Actor for Named {
    type Msg = Cmd;
    type Reply = u64;
    async fn started(&mut self, ctx: &mut Context<Self>) -> ActorResult<()> {
        self.registry
            .register("named", ctx.myself(), ())
            .map_err(|e| ActorError::msg(e.to_string()))
    }
    async fn handle(&mut self, msg: Cmd, _ctx: &mut Context<Self>) -> ActorResult<u64> {
        match msg {
            Cmd::Panic => panic!("crash"),
            _ => Ok(7),
        }
    }
}

#[tokio::test]
async fn restarted_child_is_reachable_by_name() {
    let registry = Registry::new();
    let sup = sup(3, 5).await;
    let r = registry.clone();
    let first = sup
        .start_child(ChildSpec::new(move || Named {
            registry: r.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(registry.call::<Named>("named", Cmd::Get).await.unwrap(), 7);
    first.cast(Cmd::Panic).await.unwrap();
    first.monitor().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(now) = registry.lookup::<Named>("named") {
            if now.id() != first.id() {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(registry.call::<Named>("named", Cmd::Get).await.unwrap(), 7);
}
