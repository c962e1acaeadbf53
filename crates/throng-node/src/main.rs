//! `throng-node`: run one Throng node from a TOML file and/or `THRONG_*` environment variables.
//!
//! ```text
//! THRONG_NAME=n1 THRONG_SECRET=... THRONG_GOSSIP_BIND=127.0.0.1:7946 throng-node [--config node.toml]
//! ```
//!
//! Prints one JSON line per cluster event on stdout (`ready`, `node_up`, `node_leaving`,
//! `node_down`) for scripts and tests; logs go to stderr. SIGTERM or Ctrl-C leaves the cluster
//! gracefully. Exports a `counter` actor (type `throng.Counter`) so that peers can call it.
//!
//! Commands on stdin drive keyed counters (distributed children of type `throng.KeyedCounter`):
//! `start N`, `bump N`, `check N`, `settle 0`, `durable 0`, `running 0` (answers `started`,
//! `bumped`, `checked`, `settled`, `durable`, `running` lines); child conflicts and failovers (of
//! every supervisor below) are printed as `child_conflict` / `child_failed_over` lines. With a
//! `data_dir` (`THRONG_DATA_DIR`) or a `store_url` (`THRONG_STORE_URL`, a PostgreSQL database the
//! nodes share) the counters belong to the durable supervisor `counters`
//! ([`Durability::ASYNC`]): they come back with their counts after every node of the cluster was
//! stopped or killed. Without one they belong to the node's default supervisor (in memory). A
//! command ending in `sync` (`start N sync`, `check N sync`, `running 0 sync`, `values N sync`)
//! uses the counters `s-0`.. of the supervisor `sync_counters` ([`Durability::Sync`], needs a
//! store) instead; `hammer N` starts one endless worker per sync counter `s-0`..`s-N-1`, each
//! adding 1 at a time and printing an `ack` line (`"k":i`) per acknowledged increment and a
//! `doubt` line per failed one (applied or not) — the workload of the kill -9 test. `values N
//! [sync]` prints every counter's value. Ending in `merge` instead (`start N merge`, `hammer N
//! merge`, `values N merge`, ...), a command uses the counters `m-0`.. of the supervisor
//! `merge_counters` (also `Durability::Sync`), whose copies merge without losing an increment
//! ([`MergingCounter`]). `unhammer 0` stops the `hammer` workers and answers `unhammered` once
//! each has printed the `ack` or `doubt` of its last increment; `hosted N [sync|merge]` lists the
//! counters of `0..N` that run on this node (`"k":[..]`); `stats 0` reports the process's
//! resident memory (`rss_kb`, VmRSS), threads and live tokio tasks. With `THRONG_SYNC_QUORUM=SIZE`
//! the `sync` and `merge` supervisors run in quorum mode (`DistOptions::quorum`, SIZE the
//! cluster's size): a side that sees no majority stops their children (the chaos soak,
//! `tests/soak.rs`).
//!
//! `throng-node gen-certs --out DIR --nodes a,b,c` writes a development CA and one certificate per
//! node, so that a cluster can run with mutual TLS (`THRONG_TLS_CA`, `THRONG_TLS_CERT`,
//! `THRONG_TLS_KEY`) in one command.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use throng::cluster::{
    dev_certs, ChildEvent, ClusterEvent, DistOptions, DistSupervisor, Durability, Keyed, Node,
    NodeConfig, RemoteActor,
};
use throng::prelude::*;
use throng_core::NodeId;

/// A tiny remotely callable actor, so a cluster of bare nodes has something to talk to.
struct Counter(i64);

#[derive(Debug, Serialize, Deserialize)]
enum CounterMsg {
    Add(i64),
    Get,
}

impl CounterMsg {
    /// Apply to `count`; returns the count after.
    fn apply(self, count: &mut i64) -> i64 {
        if let CounterMsg::Add(n) = self {
            *count += n;
        }
        *count
    }
}

impl Actor for Counter {
    type Msg = CounterMsg;
    type Reply = i64;
    async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<Self>) -> ActorResult<i64> {
        Ok(msg.apply(&mut self.0))
    }
}

impl RemoteActor for Counter {
    const TYPE: &'static str = "throng.Counter";
}

/// The same counter as a distributed child keyed by name, whose count is its state: the commands
/// on stdin start, bump and check many of them (scripts and the partition test drive it).
struct KeyedCounter(i64);

impl Actor for KeyedCounter {
    type Msg = CounterMsg;
    type Reply = i64;
    async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<Self>) -> ActorResult<i64> {
        Ok(msg.apply(&mut self.0))
    }
}

impl RemoteActor for KeyedCounter {
    const TYPE: &'static str = "throng.KeyedCounter";
}

impl Keyed for KeyedCounter {
    type Args = i64;
    type State = i64;
    fn start(_key: &str, initial: i64) -> Self {
        KeyedCounter(initial)
    }
    fn snapshot(&self) -> Option<i64> {
        Some(self.0)
    }
    fn restore(_key: &str, _args: i64, state: i64) -> Self {
        KeyedCounter(state)
    }
}

/// A keyed counter whose copies merge without losing or doubling an increment: a grow-only
/// counter (G-Counter) with one slot per run of a copy, drawn at its start or restore; two copies
/// that meet keep, slot by slot, the larger count (each slot has one writer, so the larger is the
/// later). Its value is the sum of the slots. The soak's second workload (`... merge`): with it, a
/// copy dropped without a merge, not the merge rule, is what would lose an increment.
struct MergingCounter {
    slot: u64,
    slots: BTreeMap<u64, i64>,
}

impl MergingCounter {
    fn new(slots: BTreeMap<u64, i64>) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A fresh random number per run of a copy (RandomState is seeded per process and
        // advanced per instance).
        let slot = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        MergingCounter { slot, slots }
    }

    fn value(&self) -> i64 {
        self.slots.values().sum()
    }
}

impl Actor for MergingCounter {
    type Msg = CounterMsg;
    type Reply = i64;
    async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<Self>) -> ActorResult<i64> {
        if let CounterMsg::Add(n) = msg {
            *self.slots.entry(self.slot).or_insert(0) += n;
        }
        Ok(self.value())
    }
}

impl RemoteActor for MergingCounter {
    const TYPE: &'static str = "throng.MergingCounter";
}

impl Keyed for MergingCounter {
    type Args = i64;
    type State = BTreeMap<u64, i64>;
    fn start(_key: &str, initial: i64) -> Self {
        let mut c = MergingCounter::new(BTreeMap::new());
        c.slots.insert(c.slot, initial);
        c
    }
    fn snapshot(&self) -> Option<BTreeMap<u64, i64>> {
        Some(self.slots.clone())
    }
    fn restore(_key: &str, _args: i64, state: BTreeMap<u64, i64>) -> Self {
        MergingCounter::new(state)
    }
    fn resolve_conflict(
        _key: &str,
        mut ours: BTreeMap<u64, i64>,
        theirs: BTreeMap<u64, i64>,
    ) -> BTreeMap<u64, i64> {
        for (slot, n) in theirs {
            let mine = ours.entry(slot).or_insert(n);
            *mine = (*mine).max(n);
        }
        ours
    }
}

/// Which counters a command is about: the third word of `start N sync`, `hammer N merge`, ...
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `c-0`..: [`KeyedCounter`]s of `counters` (durable with a store, in memory without).
    Plain,
    /// `s-0`.. (`sync`): [`KeyedCounter`]s of `sync_counters` ([`Durability::Sync`]).
    Sync,
    /// `m-0`.. (`merge`): [`MergingCounter`]s of `merge_counters` ([`Durability::Sync`]).
    Merge,
}

/// Calls counter `key` of `kind`.
async fn call_counter(
    sup: &DistSupervisor,
    kind: Kind,
    key: &str,
    msg: CounterMsg,
    timeout: std::time::Duration,
) -> Result<i64, throng::CallError> {
    if kind == Kind::Merge {
        sup.call_timeout::<MergingCounter>(key, msg, timeout).await
    } else {
        sup.call_timeout::<KeyedCounter>(key, msg, timeout).await
    }
}

/// The timeout of the workload's calls (the library's default).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The supervisor of the keyed counters: durable when the node has a store (data_dir or
/// store_url).
fn counters(node: &Node) -> DistSupervisor {
    if node.has_store() {
        node.supervisor(
            "counters",
            DistOptions {
                durability: Durability::ASYNC,
                ..DistOptions::default()
            },
        )
    } else {
        node.default_supervisor()
    }
}

/// The supervisor of the counters whose every acknowledged call is durable on its owner's store
/// (needs a data_dir); in quorum mode with `THRONG_SYNC_QUORUM=SIZE`.
fn sync_counters(node: &Node) -> DistSupervisor {
    let quorum = std::env::var("THRONG_SYNC_QUORUM")
        .ok()
        .and_then(|q| q.parse::<usize>().ok());
    node.supervisor(
        "sync_counters",
        DistOptions {
            durability: Durability::Sync,
            quorum,
            ..DistOptions::default()
        },
    )
}

/// The supervisor of the [`MergingCounter`]s: like [`sync_counters`].
fn merge_counters(node: &Node) -> DistSupervisor {
    let quorum = std::env::var("THRONG_SYNC_QUORUM")
        .ok()
        .and_then(|q| q.parse::<usize>().ok());
    node.supervisor(
        "merge_counters",
        DistOptions {
            durability: Durability::Sync,
            quorum,
            ..DistOptions::default()
        },
    )
}

/// The `hammer` workers running on this node, and the flag that stops them (`unhammer 0`).
#[derive(Default)]
struct Hammers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// The endless workload of `hammer N`: one worker per sync counter, one increment at a time,
/// until `hammers.stop` is set.
fn hammer(sup: DistSupervisor, kind: Kind, me: String, n: u64, hammers: &mut Hammers) {
    let prefix = if kind == Kind::Merge { "m" } else { "s" };
    for i in 0..n {
        let sup = sup.clone();
        let me = me.clone();
        let stop = hammers.stop.clone();
        hammers.workers.push(tokio::spawn(async move {
            let key = format!("{prefix}-{i}");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match call_counter(&sup, kind, &key, CounterMsg::Add(1), CALL_TIMEOUT).await {
                    Ok(_) => line("ack", &me, &format!(",\"k\":{i}")),
                    Err(_) => {
                        line("doubt", &me, &format!(",\"k\":{i}"));
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
}

/// The `stats 0` line's fields: VmRSS and Threads from `/proc/self/status` (0 where unreadable)
/// and the runtime's live tasks.
fn process_stats() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let read = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    format!(
        ",\"rss_kb\":{},\"threads\":{},\"tasks\":{tasks}",
        read("VmRSS:"),
        read("Threads:")
    )
}

/// How many requests the stdin commands keep in flight.
const IN_FLIGHT: usize = 64;

/// One stdin command: `start N` (children `c-0`..`c-N-1` from this node), `bump N` (add 1 to
/// each), `check N` (call each; report how many answered, their values, and how many run here),
/// `settle 0` (wait until this node's snapshots are all replicated), `durable 0` (wait until
/// everything this node holds is written to its store), `running 0` (how many counters run
/// here), `hosted N` (which of `0..N` run here), `hammer N` / `unhammer 0` (start / stop the
/// workload), `stats 0` (memory, threads, tasks).
async fn command(node: &Node, me: &str, cmd: &str, hammers: &mut Hammers) {
    use futures_util::stream::{self, StreamExt};
    let mut words = cmd.split_whitespace();
    let (Some(verb), Some(n)) = (
        words.next(),
        words.next().and_then(|n| n.parse::<u64>().ok()),
    ) else {
        line("bad_command", me, &format!(",\"command\":{cmd:?}"));
        return;
    };
    let kind = match words.next() {
        Some("sync") => Kind::Sync,
        Some("merge") => Kind::Merge,
        _ if verb == "hammer" => Kind::Sync,
        _ => Kind::Plain,
    };
    let (sup, prefix) = match kind {
        Kind::Plain => (counters(node), "c"),
        Kind::Sync => (sync_counters(node), "s"),
        Kind::Merge => (merge_counters(node), "m"),
    };
    let key = |i: u64| format!("{prefix}-{i}");
    match verb {
        "start" | "bump" => {
            let errors: Vec<String> = stream::iter(0..n)
                .map(|i| {
                    let sup = &sup;
                    async move {
                        if verb == "start" && kind == Kind::Merge {
                            sup.start_child::<MergingCounter>(&key(i), 0)
                                .await
                                .err()
                                .map(|e| e.to_string())
                        } else if verb == "start" {
                            sup.start_child::<KeyedCounter>(&key(i), 0)
                                .await
                                .err()
                                .map(|e| e.to_string())
                        } else {
                            call_counter(sup, kind, &key(i), CounterMsg::Add(1), CALL_TIMEOUT)
                                .await
                                .err()
                                .map(|e| e.to_string())
                        }
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .filter_map(|e| async move { e })
                .collect()
                .await;
            let event = if verb == "start" { "started" } else { "bumped" };
            let first = errors.first().map(String::as_str).unwrap_or("");
            line(
                event,
                me,
                &format!(
                    ",\"n\":{n},\"failed\":{},\"first_error\":{first:?}",
                    errors.len()
                ),
            );
        }
        "hammer" => {
            hammer(sup, kind, me.to_owned(), n, hammers);
            line("hammering", me, &format!(",\"n\":{n}"));
        }
        "unhammer" => {
            hammers
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let stopped = hammers.workers.len();
            for worker in hammers.workers.drain(..) {
                let _ = worker.await;
            }
            // A later `hammer` starts workers of its own.
            *hammers = Hammers::default();
            line("unhammered", me, &format!(",\"workers\":{stopped}"));
        }
        "hosted" => {
            let here: Vec<String> = (0..n)
                .filter(|i| sup.hosts(&key(*i)))
                .map(|i| i.to_string())
                .collect();
            line("hosted", me, &format!(",\"k\":[{}]", here.join(",")));
        }
        "stats" => line("stats", me, &process_stats()),
        "values" => {
            let values: Vec<String> = stream::iter(0..n)
                .map(|i| {
                    let sup = &sup;
                    async move {
                        call_counter(sup, kind, &key(i), CounterMsg::Get, CALL_TIMEOUT)
                            .await
                            .map_or("null".to_owned(), |v| v.to_string())
                    }
                })
                .buffered(IN_FLIGHT)
                .collect()
                .await;
            line("values", me, &format!(",\"v\":[{}]", values.join(",")));
        }
        "settle" => {
            // Wait until every snapshot taken here is held by its backup.
            while sup.stats().await.unreplicated != 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            line("settled", me, "");
        }
        "running" => {
            let stats = sup.stats().await;
            line("running", me, &format!(",\"running\":{}", stats.running));
        }
        "durable" => {
            // Wait until every child run here is held by its backup and every change held here
            // is in the store. Asked of every node twice, it leaves each key on the disks of its
            // owner and its backup (the second pass: the backups wrote what the first one waited
            // to be acknowledged).
            loop {
                let stats = sup.stats().await;
                if stats.unreplicated == 0 && stats.unwritten == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            line("durable", me, "");
        }
        "check" => {
            // Each call gets the default call timeout: right after a full restart on a busy
            // machine the nodes are still replicating and persisting what they recovered, and a
            // call may wait behind that for more than a second. The slowest is reported.
            let timed: Vec<(Option<i64>, u128)> = stream::iter(0..n)
                .map(|i| {
                    let sup = &sup;
                    async move {
                        let began = std::time::Instant::now();
                        let timeout = throng::DEFAULT_CALL_TIMEOUT;
                        let value = call_counter(sup, kind, &key(i), CounterMsg::Get, timeout)
                            .await
                            .ok();
                        (value, began.elapsed().as_millis())
                    }
                })
                .buffered(IN_FLIGHT)
                .collect()
                .await;
            let slowest = timed.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
            let values: Vec<Option<i64>> = timed.into_iter().map(|(v, _)| v).collect();
            let answered = values.iter().flatten().count();
            let min = values.iter().flatten().min().copied().unwrap_or(0);
            let max = values.iter().flatten().max().copied().unwrap_or(0);
            let hosted = (0..n).filter(|i| sup.hosts(&key(*i))).count();
            line(
                "checked",
                me,
                &format!(
                    ",\"n\":{n},\"answered\":{answered},\"min\":{min},\"max\":{max},\"hosted\":{hosted},\"slowest_ms\":{slowest}"
                ),
            );
        }
        _ => line("bad_command", me, &format!(",\"command\":{cmd:?}")),
    }
}

/// Run one Throng node, or write development certificates.
#[derive(Debug, clap::Parser)]
#[command(name = "throng-node", version, about, after_help = SETTINGS)]
struct Cli {
    /// A TOML file of settings (THRONG_* variables win over it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a development CA and one certificate per node.
    ///
    /// Writes `DIR/ca.pem`, `DIR/ca-key.pem` and, for each node, `DIR/<node>.pem` and
    /// `DIR/<node>-key.pem`: a certificate whose only name (DNS SAN) is the node name. Never
    /// overwrites; keys are written mode 0600. Keep ca-key.pem off the nodes.
    GenCerts {
        /// Where to write the files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The node names, comma separated.
        #[arg(long, value_name = "a,b,c")]
        nodes: String,
        /// Validity in days.
        #[arg(long, default_value_t = dev_certs::DEV_CERT_VALIDITY.as_secs() / 86_400,
              value_parser = clap::value_parser!(u64).range(1..))]
        days: u64,
    },
}

const SETTINGS: &str = "\
Settings come from --config FILE (TOML) and THRONG_* variables (which win):
  name / THRONG_NAME                  node name, unique in the cluster
  secret / THRONG_SECRET              cluster secret (or secret_file / THRONG_SECRET_FILE)
  rpc_bind / THRONG_RPC_BIND          node-to-node address (default 127.0.0.1:0)
  gossip_bind / THRONG_GOSSIP_BIND    membership address (default 127.0.0.1:0)
  seeds / THRONG_SEEDS                gossip addresses of nodes to join (comma separated)
  detection / THRONG_DETECTION        lan (default) or fast
  multicast / THRONG_MULTICAST        on, off (default) or group:port: find nodes on the LAN
                                      by sealed multicast hellos (default 239.255.47.32:45892)
  multicast_interface / THRONG_MULTICAST_INTERFACE   IPv4 of the interface to multicast on
  tls_ca / THRONG_TLS_CA              cluster CA certificate (PEM)   } all three: mutual TLS
  tls_cert / THRONG_TLS_CERT          this node's certificate (PEM)  } between nodes; the
  tls_key / THRONG_TLS_KEY            this node's private key (PEM)  } name must be the cert's
Without the tls_* settings, connections are authenticated with the secret (development).
With certificates from gen-certs, run each node with
  THRONG_NAME=a THRONG_TLS_CA=DIR/ca.pem THRONG_TLS_CERT=DIR/a.pem THRONG_TLS_KEY=DIR/a-key.pem";

/// `gen-certs`: write a development CA and node certificates.
fn gen_certs(out: PathBuf, nodes: String, days: u64) -> ExitCode {
    let mut ids = Vec::new();
    for n in nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match NodeId::new(n) {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("bad node name {n:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if ids.is_empty() {
        eprintln!("--nodes lists no node");
        return ExitCode::from(2);
    }
    let valid_for = std::time::Duration::from_secs(days.saturating_mul(86_400));
    match dev_certs::write_dev_certs(&out, &ids, valid_for) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot generate certificates: {e}");
            ExitCode::from(1)
        }
    }
}

fn line(event: &str, node: &str, extra: &str) {
    println!("{{\"event\":\"{event}\",\"node\":\"{node}\"{extra}}}");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = <Cli as clap::Parser>::parse();
    if let Some(Command::GenCerts { out, nodes, days }) = cli.command {
        return gen_certs(out, nodes, days);
    }
    let config_path = cli.config;
    let config = match NodeConfig::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let node = match Node::join(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot start node: {e}");
            return ExitCode::from(1);
        }
    };
    node.register::<KeyedCounter>();
    node.register::<MergingCounter>();
    let counter = throng::spawn(Counter(0));
    if let Err(e) = node.export("counter", &counter) {
        eprintln!("cannot export counter: {e}");
        return ExitCode::from(1);
    }
    let me = node.id().to_string();
    // The members up now and every change after them, taken atomically: none is missed.
    let cluster = node.subscribe();
    let mut events = cluster.events;
    let mut children = counters(&node).events();
    if node.has_store() {
        // Started on every node at once, so a restarted node recovers its sync counters too.
        // Their conflicts and failovers are printed too (the chaos soak counts them).
        report_child_events(sync_counters(&node), me.clone());
        report_child_events(merge_counters(&node), me.clone());
    }
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
    report_members(&cluster.members);
    let mut stdin =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let mut stdin_open = true;
    let mut hammers = Hammers::default();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install SIGTERM handler: {e}");
            return ExitCode::from(1);
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
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Start again from a fresh view: a member may be reported twice, never missed.
                    let fresh = node.subscribe();
                    events = fresh.events;
                    report_members(&fresh.members);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            c = children.recv() => match c {
                Ok(e) => report_child_event(&me, e.event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    line("child_events_lagged", &me, &format!(",\"missed\":{n}"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            l = stdin.next_line(), if stdin_open => match l {
                Ok(Some(cmd)) => command(&node, &me, &cmd, &mut hammers).await,
                _ => stdin_open = false,
            },
        }
    }
    tracing::info!(node = %me, "leaving the cluster");
    node.leave().await;
    line("stopped", &me, "");
    ExitCode::SUCCESS
}

/// Prints a child conflict or failover as a `child_conflict` / `child_failed_over` line.
fn report_child_event(me: &str, event: ChildEvent) {
    match event {
        ChildEvent::Conflict {
            key,
            other,
            here_lost,
        } => line(
            "child_conflict",
            me,
            &format!(",\"key\":{key:?},\"other\":\"{other}\",\"here_lost\":{here_lost}"),
        ),
        ChildEvent::FailedOver { key, from, .. } => line(
            "child_failed_over",
            me,
            &format!(",\"key\":{key:?},\"from\":\"{from}\""),
        ),
        _ => {}
    }
}

/// Prints the conflicts and failovers of `sup`'s children, on a task of their own.
fn report_child_events(sup: DistSupervisor, me: String) {
    let mut events = sup.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => report_child_event(&me, e.event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    line("child_events_lagged", &me, &format!(",\"missed\":{n}"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// Report the members of a subscription's snapshot as the events that announced them.
fn report_members(members: &[throng::cluster::MemberStatus]) {
    for m in members {
        line(
            "node_up",
            m.info.id.as_str(),
            &format!(",\"incarnation\":{}", m.info.incarnation.get()),
        );
        if m.leaving {
            line("node_leaving", m.info.id.as_str(), "");
        }
    }
}
