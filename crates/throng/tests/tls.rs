//! Mutual TLS between nodes over real loopback TCP: certificates from the generator, remote calls
//! through TLS, and refusal of nodes without a certificate from the cluster CA or speaking under
//! another name than their certificate's.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::eventually;
use serde::{Deserialize, Serialize};
use throng::cluster::dev_certs::{write_dev_certs, CertAuthority, DEV_CERT_VALIDITY};
use throng::cluster::{Node, NodeOptions, RemoteActor, Security, TlsConfig};
use throng::prelude::*;
use throng_core::{Incarnation, NodeId};

const SECRET: &[u8] = b"the same secret everywhere";

struct Counter(i64);

#[derive(Debug, Serialize, Deserialize)]
enum CounterMsg {
    Add(i64),
    Get,
    /// Replies with the blob's length.
    Blob(Vec<u8>),
}

impl Actor for Counter {
    type Msg = CounterMsg;
    type Reply = i64;
    async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<Self>) -> ActorResult<i64> {
        match msg {
            CounterMsg::Add(n) => self.0 += n,
            CounterMsg::Get => {}
            CounterMsg::Blob(b) => return Ok(b.len() as i64),
        }
        Ok(self.0)
    }
}

impl RemoteActor for Counter {
    const TYPE: &'static str = "test.Counter";
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(name: &str, security: Security) -> Node {
    // Refusals are logged at warn: shown with the output of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let opts = NodeOptions {
        security,
        handshake_timeout: Duration::from_secs(2),
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        ..NodeOptions::default()
    };
    let node = Node::start(id(name), Incarnation(1), any_port(), SECRET, opts)
        .await
        .unwrap();
    node.export("counter", &throng::spawn(Counter(0))).unwrap();
    node
}

/// A node presenting a certificate issued by `issuer` for `cert_name`, trusting the CA `trusted`.
async fn tls_node(
    name: &str,
    trusted: &CertAuthority,
    issuer: &CertAuthority,
    cert_name: &str,
) -> Node {
    let cert = issuer.issue(cert_name).unwrap();
    let tls = TlsConfig::from_pem(
        trusted.cert_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .unwrap();
    start(name, Security::Tls(tls)).await
}

fn meet(a: &Node, b: &Node) {
    a.add_peer(b.id().clone(), b.rpc_addr());
    b.add_peer(a.id().clone(), a.rpc_addr());
}

async fn connected(a: &Node, b: &Node) {
    eventually(
        &format!("{} and {} connected", a.id(), b.id()),
        Duration::from_secs(10),
        || a.is_connected(b.id()) && b.is_connected(a.id()),
    )
    .await;
}

/// `from` cannot reach `to`'s counter: the call times out, and neither side has a connection.
async fn refused(from: &Node, to: &Node) {
    let r: ActorRef<Counter> = from.remote(to.id(), "counter");
    let err = r
        .call_timeout(CounterMsg::Add(1), Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout(_)),
        "{} -> {}: {err:?}",
        from.id(),
        to.id()
    );
    assert!(
        !from.is_connected(to.id()),
        "{} connected to {}",
        from.id(),
        to.id()
    );
    assert!(
        !to.is_connected(from.id()),
        "{} connected to {}",
        to.id(),
        from.id()
    );
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("throng-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_generated_certs_call_each_other_over_tls() {
    let dir = temp_dir("gen");
    write_dev_certs(&dir, &[id("alpha"), id("beta")], DEV_CERT_VALIDITY).unwrap();
    let load = |n: &str| {
        TlsConfig::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{n}.pem")),
            &dir.join(format!("{n}-key.pem")),
        )
        .unwrap()
    };
    let (ta, tb) = (load("alpha"), load("beta"));
    ta.check_identity(&id("alpha")).unwrap();
    let a = start("alpha", Security::Tls(ta)).await;
    let b = start("beta", Security::Tls(tb)).await;
    meet(&a, &b);
    connected(&a, &b).await;

    let remote: ActorRef<Counter> = a.remote(b.id(), "counter");
    assert_eq!(remote.call(CounterMsg::Add(5)).await.unwrap(), 5);
    for _ in 0..100 {
        remote.cast(CounterMsg::Add(1)).await.unwrap();
    }
    assert_eq!(remote.call(CounterMsg::Get).await.unwrap(), 105);
    // And the other way round (the acceptor's side of the connection).
    let back: ActorRef<Counter> = b.remote(a.id(), "counter");
    assert_eq!(back.call(CounterMsg::Add(2)).await.unwrap(), 2);
    // A message far larger than a TLS record (16 KiB) crosses intact.
    let blob = vec![7u8; 3 << 20];
    assert_eq!(remote.call(CounterMsg::Blob(blob)).await.unwrap(), 3 << 20);

    // A lost connection comes back (the dialer may resume its TLS session): same checks, same
    // service.
    a.remove_peer(b.id());
    b.remove_peer(a.id());
    eventually("disconnected", Duration::from_secs(10), || {
        !a.is_connected(b.id()) && !b.is_connected(a.id())
    })
    .await;
    meet(&a, &b);
    connected(&a, &b).await;
    let again: ActorRef<Counter> = a.remote(b.id(), "counter");
    assert_eq!(again.call(CounterMsg::Get).await.unwrap(), 105);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_cert_from_the_cluster_ca_are_refused() {
    let ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
    let other_ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
    let a = tls_node("a", &ca, &ca, "a").await;
    let b = tls_node("b", &ca, &ca, "b").await;
    // Knows the cluster CA, holds the secret, but its certificate comes from another CA. Named to
    // sort between a and b, so it is the acceptor towards a and the dialer towards b.
    let rogue = tls_node("aa", &ca, &other_ca, "aa").await;
    // A whole other PKI: trusts only its own CA.
    let stranger = tls_node("ab", &other_ca, &other_ca, "ab").await;
    // Shared-secret mode against TLS nodes: no certificate at all.
    let plain = start("ac", Security::SharedSecret).await;
    meet(&a, &b);
    for bad in [&rogue, &stranger, &plain] {
        meet(&a, bad);
        meet(&b, bad);
    }
    // Positive control: the good pair connects while the others keep trying.
    connected(&a, &b).await;
    let good: ActorRef<Counter> = a.remote(b.id(), "counter");
    assert_eq!(good.call(CounterMsg::Add(1)).await.unwrap(), 1);
    for bad in [&rogue, &stranger, &plain] {
        tokio::join!(
            refused(bad, &a),
            refused(bad, &b),
            refused(&a, bad),
            refused(&b, bad)
        );
    }
    // The good pair was never disturbed.
    assert_eq!(good.call(CounterMsg::Get).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_speak_under_another_name_than_its_certificate() {
    let ca = CertAuthority::generate(DEV_CERT_VALIDITY).unwrap();
    let a = tls_node("a", &ca, &ca, "a").await;
    let z = tls_node("z", &ca, &ca, "z").await;
    // A valid certificate of the cluster, for `evil`, used to claim the name `m`: a dials it
    // (expects a certificate for `m`), and it dials z (whose acceptor checks the hello's name).
    let impostor = tls_node("m", &ca, &ca, "evil").await;
    meet(&a, &z);
    meet(&a, &impostor);
    meet(&z, &impostor);
    connected(&a, &z).await;
    let good: ActorRef<Counter> = z.remote(a.id(), "counter");
    assert_eq!(good.call(CounterMsg::Add(3)).await.unwrap(), 3);
    tokio::join!(refused(&impostor, &a), refused(&impostor, &z));
    tokio::join!(refused(&a, &impostor), refused(&z, &impostor));
}
