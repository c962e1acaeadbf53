//! Nodes in one process over real loopback TCP: remote call/cast, typed errors, remote monitors,
//! authentication.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::eventually;
use serde::{Deserialize, Serialize};
use throng::cluster::{Node, NodeOptions, RemoteActor};
use throng::prelude::*;
use throng::{SendError, TrySendError};
use throng_core::{Incarnation, NodeId};

struct Account {
    balance: i64,
    seen: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountMsg {
    Deposit(i64),
    Seq(u32),
    Balance,
    History,
    Crash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountReply {
    Balance(i64),
    History(Vec<u32>),
    Ok,
}

impl Actor for Account {
    type Msg = AccountMsg;
    type Reply = AccountReply;
    async fn handle(
        &mut self,
        msg: AccountMsg,
        _ctx: &mut Context<Self>,
    ) -> ActorResult<AccountReply> {
        Ok(match msg {
            AccountMsg::Deposit(n) => {
                self.balance += n;
                AccountReply::Balance(self.balance)
            }
            AccountMsg::Seq(i) => {
                self.seen.push(i);
                AccountReply::Ok
            }
            AccountMsg::Balance => AccountReply::Balance(self.balance),
            AccountMsg::History => AccountReply::History(self.seen.clone()),
            AccountMsg::Crash => return Err(ActorError::msg("overdrawn")),
        })
    }
}

impl RemoteActor for Account {
    const TYPE: &'static str = "test.Account";
}

struct Other;

impl Actor for Other {
    type Msg = u8;
    type Reply = u8;
    async fn handle(&mut self, m: u8, _ctx: &mut Context<Self>) -> ActorResult<u8> {
        Ok(m)
    }
}

impl RemoteActor for Other {
    const TYPE: &'static str = "test.Other";
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn node(name: &str, secret: &[u8]) -> Node {
    Node::start(
        NodeId::new(name).unwrap(),
        Incarnation(1),
        any_port(),
        secret,
        NodeOptions::default(),
    )
    .await
    .unwrap()
}

fn meet(a: &Node, b: &Node) {
    a.add_peer(b.id().clone(), b.rpc_addr());
    b.add_peer(a.id().clone(), a.rpc_addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_call_and_cast_look_like_local_ones() {
    let n1 = node("n1", b"secret").await;
    let n2 = node("n2", b"secret").await;
    meet(&n1, &n2);
    let acct = throng::spawn(Account {
        balance: 0,
        seen: vec![],
    });
    n2.export("alice", &acct).unwrap();

    let remote: ActorRef<Account> = n1.remote(n2.id(), "alice");
    assert!(!remote.is_local());
    assert_eq!(
        remote.call(AccountMsg::Deposit(5)).await.unwrap(),
        AccountReply::Balance(5)
    );
    // Casts from one sender arrive in order.
    for i in 0..500 {
        remote.cast(AccountMsg::Seq(i)).await.unwrap();
    }
    match remote.call(AccountMsg::History).await.unwrap() {
        AccountReply::History(seen) => assert_eq!(seen, (0..500).collect::<Vec<_>>()),
        other => panic!("{other:?}"),
    }
    // The same reference type from the owning node itself resolves locally.
    let local: ActorRef<Account> = n2.remote(n2.id(), "alice");
    assert_eq!(
        local.call(AccountMsg::Balance).await.unwrap(),
        AccountReply::Balance(5)
    );
    assert!(n1.is_connected(n2.id()) && n2.is_connected(n1.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_errors_are_typed() {
    let n1 = node("a1", b"secret").await;
    let n2 = node("a2", b"secret").await;
    meet(&n1, &n2);
    n2.export("other", &throng::spawn(Other)).unwrap();
    let acct = throng::spawn(Account {
        balance: 0,
        seen: vec![],
    });
    n2.export("bob", &acct).unwrap();

    let missing: ActorRef<Account> = n1.remote(n2.id(), "nobody");
    assert_eq!(
        missing.call(AccountMsg::Balance).await.unwrap_err(),
        CallError::NoSuchActor("nobody".into())
    );
    let wrong: ActorRef<Account> = n1.remote(n2.id(), "other");
    assert_eq!(
        wrong.call(AccountMsg::Balance).await.unwrap_err(),
        CallError::UnknownActorType {
            expected: "test.Account".into(),
            found: "test.Other".into()
        }
    );
    let unknown_node: ActorRef<Account> = n1.remote(&NodeId::new("ghost").unwrap(), "bob");
    assert_eq!(
        unknown_node.call(AccountMsg::Balance).await.unwrap_err(),
        CallError::NodeDown("ghost".into())
    );
    let bob: ActorRef<Account> = n1.remote(n2.id(), "bob");
    assert!(matches!(
        bob.call(AccountMsg::Crash).await.unwrap_err(),
        CallError::Failed(ExitReason::Error(m)) if m.contains("overdrawn")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_monitors_see_exits_and_node_loss() {
    let n1 = node("m1", b"secret").await;
    let n2 = node("m2", b"secret").await;
    meet(&n1, &n2);
    let a = throng::spawn(Account {
        balance: 0,
        seen: vec![],
    });
    let b = throng::spawn(Account {
        balance: 0,
        seen: vec![],
    });
    n2.export("a", &a).unwrap();
    n2.export("b", &b).unwrap();
    let ra: ActorRef<Account> = n1.remote(n2.id(), "a");
    let rb: ActorRef<Account> = n1.remote(n2.id(), "b");
    let missing: ActorRef<Account> = n1.remote(n2.id(), "nobody");
    assert_eq!(missing.monitor().await, ExitReason::NoProc);

    // Make sure the monitors are in place before the exit.
    ra.call(AccountMsg::Balance).await.unwrap();
    a.stop(ExitReason::Shutdown);
    assert_eq!(ra.monitor().await, ExitReason::Shutdown);

    rb.call(AccountMsg::Balance).await.unwrap();
    n1.remove_peer(n2.id());
    assert_eq!(rb.monitor().await, ExitReason::NodeDown("m2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_cannot_connect_or_call() {
    let good = node("g1", b"right").await;
    let good2 = node("g2", b"right").await;
    let intruder = node("g0", b"wrong").await;
    good.export(
        "acct",
        &throng::spawn(Account {
            balance: 7,
            seen: vec![],
        }),
    )
    .unwrap();
    meet(&good, &good2);
    meet(&good, &intruder);
    // Positive control: the right secret connects.
    eventually("good nodes connected", Duration::from_secs(5), || {
        good.is_connected(good2.id())
    })
    .await;
    let r: ActorRef<Account> = intruder.remote(good.id(), "acct");
    let err = r
        .call_timeout(AccountMsg::Balance, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Timeout(Duration::from_millis(500)));
    assert!(!intruder.is_connected(good.id()));
    assert!(!good.is_connected(intruder.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected() {
    let n1 = node("r1", b"secret").await;
    let n2 = node("r2", b"secret").await;
    meet(&n1, &n2);
    n2.export(
        "acct",
        &throng::spawn(Account {
            balance: 1,
            seen: vec![],
        }),
    )
    .unwrap();
    let r: ActorRef<Account> = n1.remote(n2.id(), "acct");
    assert_eq!(
        r.call(AccountMsg::Balance).await.unwrap(),
        AccountReply::Balance(1)
    );
    let addr = n2.rpc_addr();
    // `shutdown` returns once the node's tasks are gone and its port is free.
    n2.shutdown().await;
    drop(n2);
    eventually("connection lost", Duration::from_secs(5), || {
        !n1.is_connected(&NodeId::new("r2").unwrap())
    })
    .await;
    // The same name comes back on the same address, as a new incarnation: the bind succeeds at
    // once.
    let n2b = Node::start(
        NodeId::new("r2").unwrap(),
        Incarnation(2),
        addr,
        b"secret",
        NodeOptions::default(),
    )
    .await
    .unwrap();
    n2b.export(
        "acct",
        &throng::spawn(Account {
            balance: 2,
            seen: vec![],
        }),
    )
    .unwrap();
    n2b.add_peer(n1.id().clone(), n1.rpc_addr());
    eventually("reconnected", Duration::from_secs(5), || {
        n1.is_connected(n2b.id())
    })
    .await;
    assert_eq!(
        r.call(AccountMsg::Balance).await.unwrap(),
        AccountReply::Balance(2)
    );
}

/// A caller that refers to remote actors and drops the references does not keep a monitor
/// entry for each of them for ever: the table is bounded by the live references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_remote_actors_dropped_by_the_caller_do_not_pile_up() {
    let n1 = node("m1", b"secret").await;
    let n2 = node("m2", b"secret").await;
    meet(&n1, &n2);
    n2.export(
        "acct",
        &throng::spawn(Account {
            balance: 7,
            seen: vec![],
        }),
    )
    .unwrap();
    let kept: ActorRef<Account> = n1.remote(n2.id(), "acct");
    assert_eq!(
        kept.call(AccountMsg::Balance).await.unwrap(),
        AccountReply::Balance(7)
    );
    for _ in 0..20_000 {
        let r: ActorRef<Account> = n1.remote(n2.id(), "acct");
        drop(r);
    }
    let held = n1.connection_stats().monitored_remotes;
    assert!(
        (1..=2 * 1024 + 1).contains(&held),
        "{held} monitor entries for 1 live reference after 20,000 dropped"
    );
    // The owner forgets the monitors the caller pruned (`Frame::Demonitor`): its watchers on the
    // actor are bounded by the caller's table, not by every reference ever made.
    eventually(
        "the owner to hold at most as many monitors as the caller's table",
        Duration::from_secs(10),
        || n2.connection_stats().monitors_held <= 2 * 1024 + 1,
    )
    .await;
    // The live one still works.
    assert_eq!(
        kept.call(AccountMsg::Balance).await.unwrap(),
        AccountReply::Balance(7)
    );
}

/// Answers `0` at once and any other message once its gate opens (is closed): a remote actor
/// whose answers do not come.
struct Gate(std::sync::Arc<tokio::sync::Semaphore>);

impl Actor for Gate {
    type Msg = u32;
    type Reply = u32;
    async fn handle(&mut self, m: u32, _ctx: &mut Context<Self>) -> ActorResult<u32> {
        if m != 0 {
            // Never granted: the test closes the semaphore to let the messages through.
            let _ = self.0.acquire().await;
        }
        Ok(m)
    }
}

impl RemoteActor for Gate {
    const TYPE: &'static str = "test.Gate";
}

/// A call whose caller stops waiting (drops its future: a `select!`, a timeout of its own)
/// leaves no entry in the caller's table of requests waiting for an answer, though the answer
/// never comes: the table is bounded by the calls in progress, not by those ever given up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_given_up_by_their_caller_leave_no_pending_entry() {
    let n1 = node("g1", b"secret").await;
    let n2 = node("g2", b"secret").await;
    meet(&n1, &n2);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    n2.export("gate", &throng::spawn(Gate(gate.clone())))
        .unwrap();
    let r: ActorRef<Gate> = n1.remote(n2.id(), "gate");
    assert_eq!(r.call(0).await.unwrap(), 0);
    for i in 1..=500 {
        let call = r.call_timeout(i, Duration::from_secs(600));
        tokio::pin!(call);
        // Polled once: the request is queued, and waits for an answer that does not come.
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(call.as_mut(), cx).is_pending())
        })
        .await;
        assert!(polled, "call {i} ended at once");
    }
    assert_eq!(n1.connection_stats().calls_in_flight, 0);
    // The answers that come after all are dropped; a new call is answered.
    gate.close();
    assert_eq!(r.call(0).await.unwrap(), 0);
    assert_eq!(n1.connection_stats().calls_in_flight, 0);
}

struct Blob(Vec<u8>);

#[derive(Debug, Serialize, Deserialize)]
enum BlobMsg {
    Store(Vec<u8>),
    Len,
    Get,
    /// Answer with this many bytes.
    Make(usize),
}

impl Actor for Blob {
    type Msg = BlobMsg;
    type Reply = Vec<u8>;
    async fn handle(&mut self, msg: BlobMsg, _ctx: &mut Context<Self>) -> ActorResult<Vec<u8>> {
        Ok(match msg {
            BlobMsg::Store(b) => {
                self.0 = b;
                vec![]
            }
            BlobMsg::Len => (self.0.len() as u64).to_le_bytes().to_vec(),
            BlobMsg::Get => self.0.clone(),
            BlobMsg::Make(n) => vec![7; n],
        })
    }
}

impl RemoteActor for Blob {
    const TYPE: &'static str = "test.Blob";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_travel_in_chunks_beside_small_ones() {
    let n1 = node("b1", b"secret").await;
    let n2 = node("b2", b"secret").await;
    meet(&n1, &n2);
    n2.export("blob", &throng::spawn(Blob(vec![]))).unwrap();
    n2.export(
        "acct",
        &throng::spawn(Account {
            balance: 3,
            seen: vec![],
        }),
    )
    .unwrap();
    let blob: ActorRef<Blob> = n1.remote(n2.id(), "blob");
    let acct: ActorRef<Account> = n1.remote(n2.id(), "acct");
    let big: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    // A large cast and small calls in flight together: all arrive, intact and in order.
    let (sent, small) = tokio::join!(blob.cast(BlobMsg::Store(big.clone())), async {
        let mut balances = Vec::new();
        for _ in 0..20 {
            balances.push(acct.call(AccountMsg::Balance).await.unwrap());
        }
        balances
    });
    sent.unwrap();
    assert!(small.iter().all(|b| *b == AccountReply::Balance(3)));
    let len = blob.call(BlobMsg::Len).await.unwrap();
    assert_eq!(
        u64::from_le_bytes(len.try_into().unwrap()),
        big.len() as u64
    );
    // A large reply comes back in chunks too.
    assert_eq!(blob.call(BlobMsg::Get).await.unwrap(), big);
    // Over the frame limit: refused before sending, typed.
    let huge = vec![0u8; 9 * 1024 * 1024];
    assert!(matches!(
        blob.call(BlobMsg::Store(huge.clone())).await.unwrap_err(),
        CallError::TooLarge { size, max } if size > max && max == 8 << 20
    ));
    assert!(matches!(
        blob.cast(BlobMsg::Store(huge.clone())).await,
        Err(SendError::Codec(_))
    ));
    assert!(matches!(
        blob.try_cast(BlobMsg::Store(huge)),
        Err(TrySendError::Exited(_))
    ));
    // A reply over the limit comes back as a failure that says so, at once (not a timeout).
    let started = std::time::Instant::now();
    let err = blob
        .call_timeout(BlobMsg::Make(9 * 1024 * 1024), Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Failed(reason) if reason.to_string().contains("frame limit")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The link is still there for what fits.
    assert_eq!(blob.call(BlobMsg::Make(3)).await.unwrap(), vec![7; 3]);
}

/// A TCP relay to `to` whose connections can be cut (both sockets dropped) at will.
struct Relay {
    addr: SocketAddr,
    live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn to(to: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = live.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay { addr, live }
    }

    fn cut(&self) {
        for c in self.live.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Connections relayed now.
    fn live(&self) -> usize {
        self.live
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.is_finished())
            .count()
    }
}

async fn history(r: &ActorRef<Account>) -> Vec<u32> {
    match r.call(AccountMsg::History).await.unwrap() {
        AccountReply::History(seen) => seen,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_through_bound_routes_survive_a_new_connection() {
    // b1 sorts first, so it dials: through the relay, which the test cuts.
    let n1 = node("b1", b"secret").await;
    let n2 = node("b2", b"secret").await;
    let relay = Relay::to(n2.rpc_addr()).await;
    n1.add_peer(n2.id().clone(), relay.addr);
    n2.add_peer(n1.id().clone(), n1.rpc_addr());
    let spawn_account = || {
        throng::spawn(Account {
            balance: 0,
            seen: vec![],
        })
    };
    n2.export("x", &spawn_account()).unwrap();
    n2.export("y", &spawn_account()).unwrap();
    n2.export("z", &spawn_account()).unwrap();
    let x: ActorRef<Account> = n1.remote(n2.id(), "x");
    let y: ActorRef<Account> = n1.remote(n2.id(), "y");
    // Casts bind one route per actor on the link (x, then y).
    for i in 0..100 {
        x.cast(AccountMsg::Seq(i)).await.unwrap();
        y.cast(AccountMsg::Seq(i + 1000)).await.unwrap();
    }
    assert_eq!(history(&x).await, (0..100).collect::<Vec<_>>());
    assert_eq!(history(&y).await, (1000..1100).collect::<Vec<_>>());

    assert_eq!(relay.live(), 1);
    relay.cut();
    eventually("connected again", Duration::from_secs(5), || {
        relay.live() == 1 && n1.is_connected(n2.id())
    })
    .await;
    // The new connection starts with the routes bound on the old one: casts through them (and
    // through a route bound only now) arrive, in order, and keep the connection up.
    let z: ActorRef<Account> = n1.remote(n2.id(), "z");
    for i in 100..200 {
        y.cast(AccountMsg::Seq(i + 1000)).await.unwrap();
        z.cast(AccountMsg::Seq(i)).await.unwrap();
        x.cast(AccountMsg::Seq(i)).await.unwrap();
    }
    assert_eq!(history(&x).await, (0..200).collect::<Vec<_>>());
    assert_eq!(history(&y).await, (1000..1200).collect::<Vec<_>>());
    assert_eq!(history(&z).await, (100..200).collect::<Vec<_>>());
    assert!(n1.is_connected(n2.id()));
}

/// A peer that holds the secret but breaks the protocol — a cast on a route it never bound, a
/// binding out of order or over the limit — is disconnected; the node keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_breaks_the_route_protocol_is_disconnected() {
    use futures_util::{SinkExt, StreamExt};
    use throng::cluster::testing::{self as wire, ClusterKey, Frame, Hello, HelloAck, Role};
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    let n2 = node("v2", b"secret").await;
    let acct = throng::spawn(Account {
        balance: 0,
        seen: vec![],
    });
    n2.export("acct", &acct).unwrap();

    // Runs the dialer's side of the handshake as node "v1" and sends `frames` in one sealed
    // record; returns whether the node then closed the connection.
    let session = |frames: Vec<Frame>| {
        let key = ClusterKey::from_secret(b"secret");
        let addr = n2.rpc_addr();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut io = Framed::new(stream, LengthDelimitedCodec::new());
            let hello = Hello {
                magic: wire::MAGIC,
                version: wire::PROTOCOL_VERSION,
                node: "v1".into(),
                incarnation: 1,
                nonce: [7; 32],
            };
            io.send(bytes::Bytes::from(wire::encode(&hello)))
                .await
                .unwrap();
            let ack: HelloAck = wire::decode(&io.next().await.unwrap().unwrap()).unwrap();
            let auth = wire::verify_ack(&key, &hello, &ack).unwrap();
            io.send(bytes::Bytes::from(wire::encode(&auth)))
                .await
                .unwrap();
            let (mut sealer, _) = wire::session(&key, Role::Dialer, &hello, &ack);
            let mut record = Vec::new();
            for f in &frames {
                wire::push_frame(&mut record, f);
            }
            sealer.seal(&mut record).unwrap();
            io.send(bytes::Bytes::from(record)).await.unwrap();
            // The node has nothing to send to "v1": the next read ends only if it hangs up.
            tokio::time::timeout(Duration::from_secs(5), io.next())
                .await
                .map(|next| !matches!(next, Some(Ok(_))))
                .unwrap_or(false)
        }
    };
    let body = |i: u32| postcard::to_allocvec(&AccountMsg::Seq(i)).unwrap();
    let bind = |route: u32| Frame::Bind {
        route,
        // A user export's identity on the wire: its kind tag, then its name.
        to: "uacct".into(),
        actor_type: "test.Account".into(),
    };

    // Positive control: the same peer, binding before casting, is served.
    let well_behaved = tokio::spawn(session(vec![
        bind(0),
        Frame::Cast {
            route: 0,
            body: body(7),
        },
    ]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while history(&acct).await != vec![7] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bound cast was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    well_behaved.abort();

    for (what, frames) in [
        (
            "cast on an unbound route",
            vec![Frame::Cast {
                route: 3,
                body: body(8),
            }],
        ),
        ("bind out of order", vec![bind(0), bind(2)]),
        ("bind over the limit", vec![bind(wire::MAX_ROUTES)]),
    ] {
        assert!(session(frames).await, "not disconnected after a {what}");
    }
    // Nothing of those reached the actor, and the node still serves a well-behaved peer.
    let n1 = node("v0", b"secret").await;
    meet(&n1, &n2);
    let r: ActorRef<Account> = n1.remote(n2.id(), "acct");
    assert_eq!(history(&r).await, vec![7]);
}

/// `shutdown` returns once every task of the node has ended: connections, the listener, and a
/// handshake an idle client holds open (it does not wait out the handshake timeout); the port is
/// free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_once_the_node_is_gone_and_its_port_is_free() {
    let n1 = node("s1", b"secret").await;
    let n2 = node("s2", b"secret").await;
    meet(&n1, &n2);
    eventually("connected", Duration::from_secs(5), || {
        n1.is_connected(n2.id())
    })
    .await;
    let addr = n1.rpc_addr();
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The listener has taken the idle connection into a handshake before the shutdown.
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    n1.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    std::net::TcpListener::bind(addr).expect("the port is free once shutdown returns");
    eventually("the peer sees it gone", Duration::from_secs(5), || {
        !n2.is_connected(n1.id())
    })
    .await;
}

/// A flood of idle TCP connections to the RPC port: the node holds at most `max_handshakes` of
/// them in their handshake, closes the rest at once and counts them, so its tasks stay bounded;
/// a real peer still connects (once the held handshakes time out) and calls work while the flood
/// is held open. A handshake frame claiming more than a handshake message ends its connection at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_is_refused_past_the_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 800;
    let max = throng::cluster::DEFAULT_MAX_HANDSHAKES;
    // "f2" sorts after "f1": it accepts the real peer's connection, past its flood.
    let target = node("f2", b"secret").await;
    let acct = throng::spawn(Account {
        balance: 0,
        seen: vec![],
    });
    target.export("acct", &acct).unwrap();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let tasks_before = tasks();

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(
            tokio::net::TcpStream::connect(target.rpc_addr())
                .await
                .unwrap(),
        );
    }
    eventually(
        "every connection of the flood handled",
        Duration::from_secs(30),
        || {
            let s = target.connection_stats();
            s.handshaking as u64 + s.handshakes_refused + s.handshakes_failed >= FLOOD as u64
        },
    )
    .await;
    let s = target.connection_stats();
    assert!(s.handshaking <= max, "{s:?}");
    assert!(
        s.handshakes_refused >= (FLOOD - max) as u64,
        "past the bound connections are refused at once: {s:?}"
    );
    // One task per handshake held, not one per connection.
    let held = tasks() - tasks_before.min(tasks());
    assert!(held <= max + 8, "{held} more tasks during the flood");

    // A real peer connects through the flood (the held handshakes time out and free their
    // slots; its dialer retries), and calls work.
    let peer = node("f1", b"secret").await;
    meet(&peer, &target);
    eventually("the peer connects", Duration::from_secs(60), || {
        peer.is_connected(target.id())
    })
    .await;
    let r: ActorRef<Account> = peer.remote(target.id(), "acct");
    assert_eq!(
        r.call(AccountMsg::Deposit(5)).await.unwrap(),
        AccountReply::Balance(5)
    );
    let s = target.connection_stats();
    assert!(
        s.handshakes_failed > 0,
        "the held handshakes timed out: {s:?}"
    );

    // A length prefix claiming 8 MiB before authentication: the connection is closed at once
    // (not at the 5 s handshake timeout, waiting for the 8 MiB the node would reserve room for).
    let mut liar = tokio::net::TcpStream::connect(target.rpc_addr())
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    liar.write_all(&(8u32 << 20).to_be_bytes()).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), liar.read(&mut buf)).await;
    let took = sent.elapsed();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))) && took < Duration::from_secs(5),
        "a connection that announced an 8 MiB handshake message was kept {took:?}: {closed:?}"
    );
    // The flood was held open all along.
    drop(flood);
    assert_eq!(
        r.call(AccountMsg::Balance).await.unwrap(),
        AccountReply::Balance(5)
    );
}
