//! `throng-node`: run one Throng node from a TOML file and/or `THRONG_*` environment variables.
//!
//! ```text
//! THRONG_NAME=n1 THRONG_SECRET=... THRONG_GOSSIP_BIND=127.0.0.1:7946 throng-node [--config node.toml]
//! ```
//!
//! Prints one JSON line per cluster event on stdout (`ready`, `node_up`, `node_leaving`,
//! `node_down`) for scripts and tests; logs go to stderr. SIGTERM or Ctrl-C leaves the cluster
//! gracefully. Exports a `counter` actor (type `throng.Counter`) so that peers can call it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use throng::cluster::{ClusterEvent, Node, NodeConfig, RemoteActor};
use throng::prelude::*;

/// A tiny remotely callable actor, so a cluster of bare nodes has something to talk to.
struct Counter(i64);

#[derive(Debug, Serialize, Deserialize)]
enum CounterMsg {
    Add(i64),
    Get,
}

impl Actor for Counter {
    type Msg = CounterMsg;
    type Reply = i64;
    async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<Self>) -> ActorResult<i64> {
        if let CounterMsg::Add(n) = msg {
            self.0 += n;
        }
        Ok(self.0)
    }
}

impl RemoteActor for Counter {
    const TYPE: &'static str = "throng.Counter";
}

fn line(event: &str, node: &str, extra: &str) {
    println!("{{\"event\":\"{event}\",\"node\":\"{node}\"{extra}}}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut config_path: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                eprintln!(
                    "usage: throng-node [--config FILE]   (settings also from THRONG_* variables)"
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}; see --help");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let config = match NodeConfig::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bad configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let node = match Node::join(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot start node: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let counter = throng::spawn(Counter(0));
    if let Err(e) = node.export("counter", &counter) {
        eprintln!("cannot export counter: {e}");
        return std::process::ExitCode::from(1);
    }
    let me = node.id().to_string();
    line(
        "ready",
        &me,
        &format!(
            ",\"rpc\":\"{}\",\"gossip\":\"{}\"",
            node.rpc_addr(),
            node.gossip_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        ),
    );
    let mut events = node.events();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install SIGTERM handler: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            e = events.recv() => match e {
                Ok(ClusterEvent::NodeUp(m)) => line("node_up", m.id.as_str(), &format!(",\"incarnation\":{}", m.incarnation.get())),
                Ok(ClusterEvent::NodeLeaving(m)) => line("node_leaving", m.id.as_str(), ""),
                Ok(ClusterEvent::NodeDown(m)) => line("node_down", m.id.as_str(), ""),
                Ok(ClusterEvent::Rejoined(m)) => line("rejoined", m.id.as_str(), ""),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    tracing::info!(node = %me, "leaving the cluster");
    node.leave().await;
    line("stopped", &me, "");
    std::process::ExitCode::SUCCESS
}
