//! Real clusters over loopback UDP, with the Fast detection profile.
//!
//! Every wait is a condition polled against a deadline (`eventually`); nothing sleeps and hopes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use throng_core::{Incarnation, NodeId};
use throng_membership::{
    ClusterSecret, DetectionProfile, MemberInfo, Membership, MembershipConfig, MembershipError,
    MembershipEvent,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SECRET: &[u8] = b"integration-test cluster secret";
const JOIN_DEADLINE: Duration = Duration::from_secs(5);
/// What the Fast profile promises for a crashed node on loopback.
const DETECTION_BOUND: Duration = Duration::from_secs(2);

fn config(seeds: &[SocketAddr]) -> MembershipConfig {
    let mut config =
        MembershipConfig::new("127.0.0.1:0".parse().unwrap(), ClusterSecret::new(SECRET));
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.profile = DetectionProfile::Fast;
    config.announce_interval = Duration::from_millis(200);
    config
}

async fn start(name: &str, incarnation: u64, config: MembershipConfig) -> Membership {
    Membership::start(
        NodeId::new(name).unwrap(),
        Incarnation(incarnation),
        "127.0.0.1:9".parse().unwrap(),
        config,
    )
    .await
    .unwrap()
}

/// A free loopback UDP address (bound, read, released) for a node that must be named as a seed
/// before it starts.
fn free_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls `cond` until it holds, or panics after `deadline`; returns how long it took.
async fn eventually(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if cond() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn names(members: &[MemberInfo]) -> Vec<&str> {
    members.iter().map(|m| m.id.as_str()).collect()
}

/// Records every event a node reports, starting from an atomic snapshot of its members.
struct Recorder {
    log: Arc<Mutex<Vec<MembershipEvent>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    fn new(membership: &Membership) -> Self {
        let (members, mut events) = membership.subscribe_with_members();
        let log = Arc::new(Mutex::new(
            members
                .into_iter()
                .map(MembershipEvent::NodeUp)
                .collect::<Vec<_>>(),
        ));
        let sink = Arc::clone(&log);
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => sink.lock().unwrap().push(event),
                    Err(RecvError::Lagged(n)) => panic!("recorder lagged by {n} events"),
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Self { log, task }
    }

    fn events(&self) -> Vec<MembershipEvent> {
        self.log.lock().unwrap().clone()
    }

    fn position(&self, pred: impl Fn(&MembershipEvent) -> bool) -> Option<usize> {
        self.events().iter().position(pred)
    }

    fn saw_up(&self, name: &str) -> bool {
        self.position(|e| matches!(e, MembershipEvent::NodeUp(m) if m.id.as_str() == name))
            .is_some()
    }

    fn saw_down(&self, name: &str) -> bool {
        self.position(|e| matches!(e, MembershipEvent::NodeDown(m) if m.id.as_str() == name))
            .is_some()
    }

    /// Replays the events and checks that no two runs of a node are ever up together and that
    /// every `NodeDown`/`NodeLeaving` is about the run that is up.
    fn assert_consistent(&self) {
        let mut up: BTreeMap<NodeId, Incarnation> = BTreeMap::new();
        for event in self.events() {
            match &event {
                MembershipEvent::NodeUp(m) => {
                    let previous = up.insert(m.id.clone(), m.incarnation);
                    assert_eq!(previous, None, "{event:?} while a run of it is up");
                }
                MembershipEvent::NodeLeaving(m) => {
                    assert_eq!(up.get(&m.id), Some(&m.incarnation), "{event:?}");
                }
                MembershipEvent::NodeDown(m) => {
                    assert_eq!(up.remove(&m.id), Some(m.incarnation), "{event:?}");
                }
                _ => {}
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until each node sees exactly the other nodes (by name) as members.
async fn all_see_each_other(nodes: &[&Membership]) -> Duration {
    eventually(JOIN_DEADLINE, "every node to see every other node", || {
        nodes.iter().all(|node| {
            let mut expected: Vec<&str> = nodes
                .iter()
                .filter(|n| n.local().id != node.local().id)
                .map(|n| n.local().id.as_str())
                .collect();
            expected.sort_unstable();
            names(&node.members()) == expected
        })
    })
    .await
}

/// Starts a, then b and c with a as their only seed, and waits until they form one cluster.
async fn three_node_cluster() -> (Membership, Membership, Membership) {
    let a = start("a", 1, config(&[])).await;
    let seed = [a.local().gossip_addr];
    let b = start("b", 1, config(&seed)).await;
    let c = start("c", 1, config(&seed)).await;
    all_see_each_other(&[&a, &b, &c]).await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_through_the_first() {
    let a = start("a", 1, config(&[])).await;
    let rec_a = Recorder::new(&a);
    let seed = [a.local().gossip_addr];
    let b = start("b", 1, config(&seed)).await;
    let rec_b = Recorder::new(&b);
    let c = start("c", 1, config(&seed)).await;
    let rec_c = Recorder::new(&c);

    let took = all_see_each_other(&[&a, &b, &c]).await;
    println!("three nodes converged in {took:?}");
    for (rec, others) in [
        (&rec_a, ["b", "c"]),
        (&rec_b, ["a", "c"]),
        (&rec_c, ["a", "b"]),
    ] {
        eventually(JOIN_DEADLINE, "NodeUp events", || {
            others.iter().all(|name| rec.saw_up(name))
        })
        .await;
        rec.assert_consistent();
    }
    assert_eq!(a.members()[0].gossip_addr, b.local().gossip_addr);
    assert_eq!(a.members()[0], *b.local());
    assert_eq!(a.stats().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_a_seed_that_starts_last() {
    let a_addr = free_addr();
    let b = start("b", 1, config(&[a_addr])).await;
    let c = start("c", 1, config(&[a_addr])).await;
    // b and c have been knocking on a's door before it exists.
    eventually(
        JOIN_DEADLINE,
        "b and c to announce to the absent seed",
        || b.stats().datagrams_out > 1 && c.stats().datagrams_out > 1,
    )
    .await;
    assert!(b.members().is_empty() && c.members().is_empty());

    // The seed lists itself, as a shared seed list would.
    let mut a_config = config(&[a_addr]);
    a_config.bind_addr = a_addr;
    let a = start("a", 1, a_config).await;
    let took = all_see_each_other(&[&a, &b, &c]).await;
    println!("cluster formed {took:?} after the seed started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_is_declared_down_within_two_seconds() {
    let (a, b, c) = three_node_cluster().await;
    let (rec_a, rec_b) = (Recorder::new(&a), Recorder::new(&b));

    // A crash: the task and its socket vanish without a word.
    drop(c);
    let took = eventually(Duration::from_secs(10), "a and b to see c down", || {
        rec_a.saw_down("c") && rec_b.saw_down("c")
    })
    .await;
    println!("crashed node declared down by both survivors in {took:?}");
    assert!(
        took <= DETECTION_BOUND,
        "detection took {took:?}, more than {DETECTION_BOUND:?}"
    );
    assert_eq!(names(&a.members()), ["b"]);
    assert_eq!(names(&b.members()), ["a"]);
    for rec in [&rec_a, &rec_b] {
        assert!(rec
            .position(|e| matches!(e, MembershipEvent::NodeLeaving(_)))
            .is_none());
        rec.assert_consistent();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_reported_as_leaving_then_down() {
    let (a, b, c) = three_node_cluster().await;
    let (rec_a, rec_b) = (Recorder::new(&a), Recorder::new(&b));

    let started = Instant::now();
    c.leave().await.unwrap();
    println!("leave() returned after {:?}", started.elapsed());
    assert!(c.members().is_empty());
    assert!(matches!(c.leave().await, Err(MembershipError::Stopped)));

    let took = eventually(Duration::from_secs(5), "a and b to see c down", || {
        rec_a.saw_down("c") && rec_b.saw_down("c")
    })
    .await;
    println!(
        "left node down everywhere {:?} after leave() returned",
        took
    );
    for rec in [&rec_a, &rec_b] {
        let leaving = rec
            .position(|e| matches!(e, MembershipEvent::NodeLeaving(m) if m.id.as_str() == "c"))
            .expect("NodeLeaving(c)");
        let down = rec
            .position(|e| matches!(e, MembershipEvent::NodeDown(m) if m.id.as_str() == "c"))
            .expect("NodeDown(c)");
        assert!(leaving < down, "{:?}", rec.events());
        rec.assert_consistent();
    }
    assert_eq!(names(&a.members()), ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_leaving_keeps_the_node_a_member() {
    let (a, b, c) = three_node_cluster().await;
    c.announce_leaving().await.unwrap();
    // Acknowledged, so both have processed the notice already.
    assert_eq!(names(&a.leaving()), ["c"]);
    assert_eq!(names(&b.leaving()), ["c"]);
    assert_eq!(names(&a.members()), ["b", "c"]);
    assert_eq!(names(&c.members()), ["a", "b"]);
    c.leave().await.unwrap();
    eventually(Duration::from_secs(5), "c gone", || {
        names(&a.members()) == ["b"] && names(&b.members()) == ["a"]
    })
    .await;
    assert!(a.leaving().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_the_wrong_secret_is_shut_out() {
    // The intruder knows a's address and a knows the intruder's: both try to talk.
    let a_addr = free_addr();
    let mut intruder_config = config(&[a_addr]);
    intruder_config.secret = ClusterSecret::new(*b"not the cluster secret at all!!");
    let intruder = start("intruder", 1, intruder_config).await;
    let rec_intruder = Recorder::new(&intruder);

    let mut a_config = config(&[intruder.local().gossip_addr]);
    a_config.bind_addr = a_addr;
    let a = start("a", 1, a_config).await;
    let rec_a = Recorder::new(&a);
    let b = start("b", 1, config(&[a_addr, intruder.local().gossip_addr])).await;
    let rec_b = Recorder::new(&b);

    all_see_each_other(&[&a, &b]).await;
    // Several announce rounds in each direction have been refused (the intruder only knocks at
    // a's door; a and b both knock at the intruder's).
    eventually(
        JOIN_DEADLINE,
        "datagrams to be refused on both sides",
        || a.stats().refused >= 3 && intruder.stats().refused >= 6,
    )
    .await;
    println!(
        "refused: a {:?}, b {:?}, intruder {:?}",
        a.stats(),
        b.stats(),
        intruder.stats()
    );
    assert!(intruder.members().is_empty());
    assert!(rec_intruder.events().is_empty());
    assert_eq!(names(&a.members()), ["b"]);
    assert_eq!(names(&b.members()), ["a"]);
    for rec in [&rec_a, &rec_b] {
        assert!(rec
            .events()
            .iter()
            .all(|e| e.member().id.as_str() != "intruder"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_replaces_its_previous_run() {
    let (a, b, x) = {
        let a = start("a", 1, config(&[])).await;
        let seed = [a.local().gossip_addr];
        let b = start("b", 1, config(&seed)).await;
        let x = start("x", 1, config(&seed)).await;
        all_see_each_other(&[&a, &b, &x]).await;
        (a, b, x)
    };
    let (rec_a, rec_b) = (Recorder::new(&a), Recorder::new(&b));
    let old = x.local().clone();

    // Crash and restart at once, under the same name, on another port, with a higher incarnation:
    // a and b still believe the old run is alive when the new one shows up.
    drop(x);
    let x = start("x", 2, config(&[a.local().gossip_addr])).await;
    assert_ne!(x.local().gossip_addr, old.gossip_addr);
    let took = eventually(JOIN_DEADLINE, "a and b to see x#2", || {
        [&a, &b].iter().all(|n| {
            n.members()
                .iter()
                .any(|m| m.id.as_str() == "x" && m.incarnation == Incarnation(2))
        })
    })
    .await;
    println!("restarted run seen everywhere in {took:?}");
    all_see_each_other(&[&a, &b, &x]).await;

    // The recorders consume the event streams on their own tasks: `members()` can show the new
    // run a moment before a recorder has stored the events that say so (seen once in CI).
    for rec in [&rec_a, &rec_b] {
        eventually(JOIN_DEADLINE, "the recorder to store x#1 down and x#2 up", || {
            let events = rec.events();
            let down = |e: &MembershipEvent| matches!(e, MembershipEvent::NodeDown(m) if *m == old);
            let up = |e: &MembershipEvent| matches!(e, MembershipEvent::NodeUp(m) if *m == *x.local());
            events.iter().any(down) && events.iter().any(up)
        })
        .await;
    }
    for rec in [&rec_a, &rec_b] {
        let down_old = rec
            .position(|e| matches!(e, MembershipEvent::NodeDown(m) if *m == old))
            .expect("previous run reported down");
        let up_new = rec
            .position(|e| matches!(e, MembershipEvent::NodeUp(m) if *m == *x.local()))
            .expect("new run reported up");
        assert!(down_old < up_new, "{:?}", rec.events());
        rec.assert_consistent();
    }
    // The old run stays gone.
    assert!([&a, &b]
        .iter()
        .all(|n| n.members().iter().all(|m| *m != old)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_without_leaving() {
    let (a, b, c) = three_node_cluster().await;
    let (rec_a, rec_b) = (Recorder::new(&a), Recorder::new(&b));
    c.shutdown().await;
    assert!(c.members().is_empty());
    assert!(matches!(
        c.announce_leaving().await,
        Err(MembershipError::Stopped)
    ));
    eventually(Duration::from_secs(5), "a and b to see c down", || {
        rec_a.saw_down("c") && rec_b.saw_down("c")
    })
    .await;
    for rec in [&rec_a, &rec_b] {
        assert!(rec
            .position(|e| matches!(e, MembershipEvent::NodeLeaving(_)))
            .is_none());
    }
    assert_eq!(names(&a.members()), ["b"]);
    assert_eq!(names(&b.members()), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_and_counted() {
    let a = start("a", 1, config(&[])).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = a.local().gossip_addr;
    for datagram in [&b""[..], b"x", &[1; 41], &[1; 600], &[0; 1401]] {
        socket.send_to(datagram, target).await.unwrap();
    }
    eventually(JOIN_DEADLINE, "5 refused datagrams", || {
        a.stats().refused == 5
    })
    .await;
    assert_eq!(a.stats().datagrams_in, 5);
    assert!(a.members().is_empty());
}

/// A node whose own runtime is saturated (every worker thread held by handlers that never yield,
/// for twice the detection bound) still answers probes: its membership runs on a thread of its
/// own, so the others do not declare it down for being busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_workers_are_all_busy_is_not_declared_down() {
    // The busy node's runtime, separate from the test's (which runs the observer).
    let busy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let busy = busy_rt
        .spawn(Membership::start(
            NodeId::new("busy").unwrap(),
            Incarnation(1),
            "127.0.0.1:9".parse().unwrap(),
            config(&[]),
        ))
        .await
        .unwrap()
        .unwrap();
    let observer = start("observer", 1, config(&[busy.local().gossip_addr])).await;
    all_see_each_other(&[&busy, &observer]).await;
    let recorder = Recorder::new(&observer);

    // Hold every worker of the busy node's runtime (blocking, as CPU-bound handlers would).
    let hold = DETECTION_BOUND * 2;
    for _ in 0..2 {
        busy_rt.spawn(async move { std::thread::sleep(hold) });
    }
    let started = Instant::now();
    while started.elapsed() < hold + Duration::from_millis(500) {
        assert!(
            !recorder.saw_down("busy"),
            "the busy node was declared down after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names(&observer.members()), ["busy"]);
    assert_eq!(names(&busy.members()), ["observer"]);
    recorder.assert_consistent();
    busy.shutdown().await;
    busy_rt.shutdown_background();
}
