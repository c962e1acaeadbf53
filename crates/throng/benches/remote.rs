//! Remote messaging between two nodes on loopback, beside raw TCP with the same length-delimited
//! framing, measured in the same run:
//! - call round trip (p50, p99 over 10,000 sequential calls) vs. a raw TCP ping-pong of one frame;
//! - pipelined cast throughput (1,000,000 casts, then one call to wait for them) vs. a raw TCP stream
//!   of the same number of frames (then one ping-pong to wait for them).
//!
//! Both security modes are measured: the shared secret (records sealed with AES-256-GCM) and mutual
//! TLS (rustls; records travel inside TLS records).
//!
//! Run: `cargo bench -p throng --bench remote` (prints one JSON line).
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use throng::cluster::dev_certs::{CertAuthority, DEV_CERT_VALIDITY};
use throng::cluster::{Node, NodeOptions, RemoteActor, Security, TlsConfig};
use throng::prelude::*;
use throng_core::{Incarnation, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const CALLS: usize = 10_000;
const CASTS: usize = 1_000_000;

struct Sink(u64);

#[derive(Serialize, Deserialize)]
enum Msg {
    Add(u64),
    Get,
}

impl Actor for Sink {
    type Msg = Msg;
    type Reply = u64;
    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) -> ActorResult<u64> {
        if let Msg::Add(n) = msg {
            self.0 = self.0.wrapping_add(n);
        }
        Ok(self.0)
    }
}

impl RemoteActor for Sink {
    const TYPE: &'static str = "bench.Sink";
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Options for node `name`: the shared secret, or mutual TLS with certificates from `ca`.
fn options(name: &str, ca: Option<&CertAuthority>) -> NodeOptions {
    let security = match ca {
        None => Security::SharedSecret,
        Some(ca) => {
            let cert = ca.issue(name).unwrap();
            Security::Tls(
                TlsConfig::from_pem(
                    ca.cert_pem().as_bytes(),
                    cert.cert_pem.as_bytes(),
                    cert.key_pem.as_bytes(),
                )
                .unwrap(),
            )
        }
    };
    NodeOptions {
        security,
        ..NodeOptions::default()
    }
}

async fn throng_side(tls: bool) -> (f64, f64, f64) {
    let secret = b"bench-secret-0123456789";
    let any = "127.0.0.1:0".parse().unwrap();
    let ca = tls.then(|| CertAuthority::generate(DEV_CERT_VALIDITY).unwrap());
    let a = Node::start(
        NodeId::new("a").unwrap(),
        Incarnation(1),
        any,
        secret,
        options("a", ca.as_ref()),
    )
    .await
    .unwrap();
    let b = Node::start(
        NodeId::new("b").unwrap(),
        Incarnation(1),
        any,
        secret,
        options("b", ca.as_ref()),
    )
    .await
    .unwrap();
    a.add_peer(b.id().clone(), b.rpc_addr());
    b.add_peer(a.id().clone(), a.rpc_addr());
    b.export("sink", &throng::spawn(Sink(0))).unwrap();
    let r: ActorRef<Sink> = a.remote(b.id(), "sink");
    for _ in 0..1000 {
        r.call(Msg::Get).await.unwrap();
    }
    // THRONG_BENCH_CASTS_ONLY=1 skips the latency run and casts 20x longer (for profiling).
    let casts_only = std::env::var_os("THRONG_BENCH_CASTS_ONLY").is_some();
    let calls = if casts_only { 1 } else { CALLS };
    let mut lat = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        r.call(Msg::Add(i as u64)).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let casts = if casts_only { CASTS * 20 } else { CASTS };
    let t = Instant::now();
    for i in 0..casts {
        r.cast(Msg::Add(i as u64)).await.unwrap();
    }
    r.call(Msg::Get).await.unwrap();
    let rate = casts as f64 / t.elapsed().as_secs_f64();
    (pct(&lat, 0.5), pct(&lat, 0.99), rate)
}

/// A raw TCP server: echoes a frame whose first byte is 1, swallows the others.
async fn raw_side() -> (f64, f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut f = Framed::new(s, LengthDelimitedCodec::new());
        while let Some(Ok(frame)) = f.next().await {
            if frame.first() == Some(&1) {
                f.send(frame.freeze()).await.unwrap();
            }
        }
    });
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut f = Framed::new(s, LengthDelimitedCodec::new());
    // About the size of a Throng request frame for this message (name, type, body, seal).
    let ping = Bytes::from({
        let mut v = vec![0u8; 48];
        v[0] = 1;
        v
    });
    let data = Bytes::from(vec![0u8; 48]);
    for _ in 0..1000 {
        f.send(ping.clone()).await.unwrap();
        f.next().await.unwrap().unwrap();
    }
    let mut lat = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        f.send(ping.clone()).await.unwrap();
        f.next().await.unwrap().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let t = Instant::now();
    for _ in 0..CASTS {
        f.feed(data.clone()).await.unwrap();
    }
    f.send(ping.clone()).await.unwrap();
    f.next().await.unwrap().unwrap();
    let rate = CASTS as f64 / t.elapsed().as_secs_f64();
    (pct(&lat, 0.5), pct(&lat, 0.99), rate)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (raw_p50, raw_p99, raw_rate) =
        rt.block_on(async { tokio::spawn(raw_side()).await.unwrap() });
    let (t_p50, t_p99, t_rate) =
        rt.block_on(async { tokio::spawn(throng_side(false)).await.unwrap() });
    let (tls_p50, tls_p99, tls_rate) =
        rt.block_on(async { tokio::spawn(throng_side(true)).await.unwrap() });
    println!(
        "{{\"bench\":\"remote\",\"throng_call_p50_us\":{t_p50:.1},\"throng_call_p99_us\":{t_p99:.1},\"raw_tcp_p50_us\":{raw_p50:.1},\"raw_tcp_p99_us\":{raw_p99:.1},\"p50_ratio\":{:.2},\"throng_casts_per_s\":{t_rate:.0},\"raw_tcp_frames_per_s\":{raw_rate:.0},\"cast_ratio\":{:.2},\"tls_call_p50_us\":{tls_p50:.1},\"tls_call_p99_us\":{tls_p99:.1},\"tls_p50_ratio\":{:.2},\"tls_casts_per_s\":{tls_rate:.0},\"tls_cast_ratio\":{:.2}}}",
        t_p50 / raw_p50,
        t_rate / raw_rate,
        tls_p50 / raw_p50,
        tls_rate / raw_rate
    );
}
