//! A bench node: a Throng node with the bench child type, driven by JSON lines on stdin.
//!
//! With `THRONG_DATA_DIR` set, the node opens its durable store there and runs two more
//! supervisors beside the default one, started with the node so that a restarted node recovers
//! its durable children: `durable` ([`Durability::ASYNC`]) and `plain` (its twin without
//! durability, the baseline of the durable scenario). A command names its supervisor in `sup`
//! (the default one when absent).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use throng::cluster::{
    ChildEvent, ClusterEvent, DistOptions, DistSupervisor, Durability, Keyed, Node, NodeConfig,
    NodeId, RemoteActor,
};
use throng::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The cluster secret of bench runs (loopback only).
pub const SECRET: &[u8] = b"throng-bench-secret-not-for-production";

/// How many requests a node keeps in flight when it sweeps many keys.
const CONCURRENCY: usize = 256;

/// The bench child: a counter whose value is its state.
pub struct Child(u64);

/// Its messages.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Add to the counter.
    Add(u64),
    /// Read the counter.
    Get,
}

impl Actor for Child {
    type Msg = Msg;
    type Reply = u64;
    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) -> ActorResult<u64> {
        if let Msg::Add(n) = msg {
            self.0 += n;
        }
        Ok(self.0)
    }
}

impl RemoteActor for Child {
    const TYPE: &'static str = "bench.Child";
}

impl Keyed for Child {
    type Args = u64;
    type State = u64;
    fn start(_key: &str, initial: u64) -> Self {
        Child(initial)
    }
    fn snapshot(&self) -> Option<u64> {
        Some(self.0)
    }
    fn restore(_key: &str, _args: u64, state: u64) -> Self {
        Child(state)
    }
}

/// The key of child `i`.
pub fn key(i: u64) -> String {
    format!("c-{i}")
}

#[derive(Debug, Deserialize)]
struct Command {
    id: u64,
    cmd: String,
    #[serde(default)]
    n: u64,
    #[serde(default)]
    calls: u64,
    /// For `resolve`: the value every child `i` must hold (`i + add`).
    #[serde(default)]
    add: u64,
    #[serde(default)]
    timeout_ms: u64,
    /// The supervisor: `default` (when absent), `plain` or `durable`.
    #[serde(default)]
    sup: Option<String>,
    /// For `load`: how long to run (ms).
    #[serde(default)]
    ms: u64,
    /// For `load`: the first key (so that nodes start at different keys).
    #[serde(default)]
    offset: u64,
    /// For `latency_ab`: how many blocks of `calls` per supervisor.
    #[serde(default)]
    rounds: u64,
    /// For `resolve_keys`: the child indices to call (a sample, or one node's keys).
    #[serde(default)]
    keys: Vec<u64>,
    /// For `callers_sup`: the nodes that host the `callers` supervisor's children.
    #[serde(default)]
    hosts: Vec<String>,
    /// For `touch`: keys below this have a child (started, then called); the others are
    /// called with no child behind them.
    #[serde(default)]
    live: u64,
}

/// The supervisor with durability, in a node with a data dir.
pub const DURABLE: &str = "durable";
/// Its twin without durability.
pub const PLAIN: &str = "plain";
/// Its twin with [`Durability::Sync`]: a call is answered once the state it made is on disk.
pub const SYNC: &str = "sync";
/// The supervisor of the `callers` scenario, hosted by a subset of the nodes (`callers_sup`).
pub const CALLERS: &str = "callers";

fn durable_opts() -> DistOptions {
    DistOptions {
        durability: Durability::ASYNC,
        ..DistOptions::default()
    }
}

/// The supervisor a command names.
fn sup_of(node: &Node, name: Option<&str>) -> DistSupervisor {
    match name {
        Some(DURABLE) => node.supervisor(DURABLE, durable_opts()),
        Some(SYNC) => node.supervisor(
            SYNC,
            DistOptions {
                durability: Durability::Sync,
                ..DistOptions::default()
            },
        ),
        Some(PLAIN) => node.supervisor(PLAIN, DistOptions::default()),
        Some(CALLERS) => node.supervisor(CALLERS, DistOptions::default()),
        _ => node.default_supervisor(),
    }
}

struct State {
    node: Node,
    out: Mutex<tokio::io::Stdout>,
    caller_stop: AtomicBool,
    caller_calls: AtomicU64,
    caller_failed: AtomicU64,
    /// Of the failed calls, those answered with another state than expected (the others erred).
    caller_wrong: AtomicU64,
    /// The other failed calls, counted by error.
    caller_errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Membership changes this node saw, in order (see [`record_cluster_events`]).
    cluster_events: std::sync::Mutex<Vec<Value>>,
    /// Counters of the default supervisor's child events (see [`record_child_events`]).
    child_events: ChildEventCounts,
    /// The keys of `0..n` this node owns, for the supervisor's view of the moment (recomputed
    /// only when the view changes, so that polling placement stays cheap).
    owned_cache: std::sync::Mutex<Option<OwnedCache>>,
}

/// The keys a node owns in one view.
struct OwnedCache {
    view: Vec<NodeId>,
    n: u64,
    keys: Vec<u64>,
}

/// How many children the default supervisor failed over or adopted here, and when the last one
/// was (wall clock, µs: the nodes share a machine with the controller).
#[derive(Default)]
struct ChildEventCounts {
    failed_over: AtomicU64,
    failed_over_last_us: AtomicU64,
    adopted: AtomicU64,
    adopted_last_us: AtomicU64,
    migrated: AtomicU64,
    /// Events the recorder missed because it lagged behind the broadcast channel.
    lagged: AtomicU64,
}

/// Record every membership change this node sees (kind, node, incarnation, wall clock µs): the
/// controller reads them to time failure detection and to find false suspicions.
fn record_cluster_events(state: &Arc<State>) {
    let mut rx = state.node.events();
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let (kind, m) = match &e {
                ClusterEvent::NodeUp(m) => ("up", m),
                ClusterEvent::NodeLeaving(m) => ("leaving", m),
                ClusterEvent::NodeDown(m) => ("down", m),
                ClusterEvent::Rejoined(m) => ("rejoined", m),
                _ => continue,
            };
            let Some(state) = weak.upgrade() else { return };
            state
                .cluster_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(json!({
                    "kind": kind,
                    "node": m.id.as_str(),
                    "incarnation": m.incarnation.get(),
                    "at_us": now_us(),
                }));
        }
    });
}

/// Count the default supervisor's fail-overs, adoptions and migrations as they happen.
fn record_child_events(state: &Arc<State>) {
    let mut rx = state.node.default_supervisor().events();
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    if let Some(state) = weak.upgrade() {
                        state.child_events.lagged.fetch_add(k, Ordering::Relaxed);
                    }
                    continue;
                }
                Err(_) => return,
            };
            let Some(state) = weak.upgrade() else { return };
            let c = &state.child_events;
            match e.event {
                ChildEvent::FailedOver { .. } => {
                    c.failed_over.fetch_add(1, Ordering::Relaxed);
                    c.failed_over_last_us.store(now_us(), Ordering::Relaxed);
                }
                ChildEvent::Adopted { .. } => {
                    c.adopted.fetch_add(1, Ordering::Relaxed);
                    c.adopted_last_us.store(now_us(), Ordering::Relaxed);
                }
                ChildEvent::Migrated { .. } => {
                    c.migrated.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
}

/// Of keys `0..n`: how many this node owns in its supervisor's view, how many of those run here,
/// and the view's size. The owned set is cached per view.
fn owned_hosted(state: &State, sup: &DistSupervisor, n: u64) -> Value {
    let view = sup.nodes();
    let me = state.node.id().clone();
    let mut cache = state.owned_cache.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = cache.as_ref().is_some_and(|c| c.view == view && c.n == n);
    if !fresh {
        let keys = (0..n)
            .filter(|i| sup.node_for(&key(*i)).as_ref() == Some(&me))
            .collect();
        if sup.nodes() != view {
            // The view changed while the set was computed: it mixes two views. Not cached, and
            // reported as no view at all, so that the controller asks again.
            *cache = None;
            return json!({"owned": 0, "hosted_owned": 0, "view": 0});
        }
        *cache = Some(OwnedCache {
            view: view.clone(),
            n,
            keys,
        });
    }
    let keys = cache.as_ref().map(|c| c.keys.as_slice()).unwrap_or(&[]);
    let hosted = keys.iter().filter(|i| sup.hosts(&key(**i))).count();
    // A few owned keys that do not run here, to name them when a rebalance does not end.
    let unhosted: Vec<u64> = if hosted < keys.len() {
        keys.iter()
            .copied()
            .filter(|i| !sup.hosts(&key(*i)))
            .take(5)
            .collect()
    } else {
        Vec::new()
    };
    json!({"owned": keys.len(), "hosted_owned": hosted, "view": view.len(), "unhosted": unhosted})
}

async fn answer(state: &State, id: u64, mut body: Value) {
    body["id"] = json!(id);
    let mut line = body.to_string();
    line.push('\n');
    let mut out = state.out.lock().await;
    let _ = out.write_all(line.as_bytes()).await;
    let _ = out.flush().await;
}

/// `throng-bench node NAME [SEED]`.
pub async fn run(args: &[String]) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let Some(name) = args.first() else {
        eprintln!("node: missing NAME");
        return ExitCode::from(2);
    };
    let mut config = match NodeConfig::local(name, SECRET) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.get(1) {
        config.membership.seeds = vec![seed.clone()];
    }
    config.data_dir = std::env::var_os("THRONG_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(Into::into);
    let durable = config.data_dir.is_some();
    let node = match Node::join(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("node: {e}");
            return ExitCode::from(1);
        }
    };
    node.register::<Child>();
    if durable {
        // Started now, so that what the previous run kept is recovered from the node's start.
        sup_of(&node, Some(DURABLE));
        sup_of(&node, Some(SYNC));
        sup_of(&node, Some(PLAIN));
    }
    let gossip = node
        .gossip_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let state = Arc::new(State {
        node,
        out: Mutex::new(tokio::io::stdout()),
        caller_stop: AtomicBool::new(false),
        caller_calls: AtomicU64::new(0),
        caller_failed: AtomicU64::new(0),
        caller_wrong: AtomicU64::new(0),
        caller_errors: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        cluster_events: std::sync::Mutex::new(Vec::new()),
        child_events: ChildEventCounts::default(),
        owned_cache: std::sync::Mutex::new(None),
    });
    record_cluster_events(&state);
    record_child_events(&state);
    answer(
        &state,
        0,
        json!({"ready": gossip, "pid": std::process::id()}),
    )
    .await;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("node: bad command {line:?}: {e}");
                continue;
            }
        };
        if cmd.cmd == "leave" {
            let t = Instant::now();
            state.node.leave().await;
            answer(&state, cmd.id, json!({"ms": ms(t)})).await;
            return ExitCode::SUCCESS;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let id = cmd.id;
            let body = handle(&state, cmd).await;
            answer(&state, id, body).await;
        });
    }
    ExitCode::SUCCESS
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn handle(state: &Arc<State>, cmd: Command) -> Value {
    let node = &state.node;
    let sup = sup_of(node, cmd.sup.as_deref());
    match cmd.cmd.as_str() {
        "members" => json!({"owners": node.owners().len(), "sup_nodes": sup.nodes().len()}),
        "callers_sup" => {
            // Started with its host set before any other command names it (the options of a
            // supervisor that runs already are ignored).
            let hosts = cmd
                .hosts
                .iter()
                .filter_map(|h| NodeId::new(h).ok())
                .collect();
            let sup = node.supervisor(
                CALLERS,
                DistOptions {
                    nodes: Some(hosts),
                    ..DistOptions::default()
                },
            );
            json!({"sup_nodes": sup.nodes().len()})
        }
        "touch" => touch(&sup, cmd.offset, cmd.n, cmd.live, cmd.timeout_ms).await,
        "conn_stats" => {
            let c = node.connection_stats();
            json!({
                "monitored_remotes": c.monitored_remotes,
                "monitors_held": c.monitors_held,
                "calls_in_flight": c.calls_in_flight,
            })
        }
        "start" => {
            let t = Instant::now();
            let errors = AtomicU64::new(0);
            stream::iter(0..cmd.n)
                .for_each_concurrent(CONCURRENCY, |i| {
                    let sup = &sup;
                    let errors = &errors;
                    async move {
                        if sup.start_child::<Child>(&key(i), i).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await;
            json!({"ms": ms(t), "errors": errors.load(Ordering::Relaxed)})
        }
        "bump" => {
            // Every child i goes from i to i + 1: a state that differs from its args.
            let t = Instant::now();
            let errors = AtomicU64::new(0);
            stream::iter(0..cmd.n)
                .for_each_concurrent(CONCURRENCY, |i| {
                    let sup = &sup;
                    let errors = &errors;
                    async move {
                        if sup.call::<Child>(&key(i), Msg::Add(1)).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await;
            json!({"ms": ms(t), "errors": errors.load(Ordering::Relaxed)})
        }
        "replicated" => {
            // Wait until every snapshot taken here is held by its backup.
            let t = Instant::now();
            while sup.stats().await.unreplicated != 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            json!({"ms": ms(t)})
        }
        "durable" => {
            // Wait until every change held here is replicated and in the store.
            let t = Instant::now();
            loop {
                let s = sup.stats().await;
                if s.unwritten == 0 && s.unreplicated == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            json!({"ms": ms(t)})
        }
        "stats" => {
            let s = sup.stats().await;
            json!({
                "owned": s.owned,
                "running": s.running,
                "backups": s.backups,
                "unreplicated": s.unreplicated,
                "unwritten": s.unwritten,
                "written": s.written,
                "commits": s.commits,
            })
        }
        "hosted" => {
            // Of keys 0, step, 2 step, .. below n: how many are exported here (the transport's
            // view, which the driver's queue does not delay).
            let step = cmd.calls.max(1) as usize;
            let hosted = (0..cmd.n)
                .step_by(step)
                .filter(|i| sup.hosts(&key(*i)))
                .count();
            json!({"hosted": hosted})
        }
        "resolve" => resolve(&sup, (0..cmd.n).collect(), cmd.add, cmd.timeout_ms).await,
        "resolve_keys" => resolve(&sup, cmd.keys, cmd.add, cmd.timeout_ms).await,
        "hosted_list" => {
            // The indices of `0..n` whose child runs here.
            let keys: Vec<u64> = (0..cmd.n).filter(|i| sup.hosts(&key(*i))).collect();
            json!({"keys": keys})
        }
        "owned_hosted" => owned_hosted(state, &sup, cmd.n),
        "cluster_events" => {
            let events = state
                .cluster_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            json!({"events": events})
        }
        "child_events" => {
            let c = &state.child_events;
            json!({
                "failed_over": c.failed_over.load(Ordering::Relaxed),
                "failed_over_last_us": c.failed_over_last_us.load(Ordering::Relaxed),
                "adopted": c.adopted.load(Ordering::Relaxed),
                "adopted_last_us": c.adopted_last_us.load(Ordering::Relaxed),
                "migrated": c.migrated.load(Ordering::Relaxed),
                "lagged": c.lagged.load(Ordering::Relaxed),
            })
        }
        "now" => json!({"us": now_us()}),
        "load" => load(&sup, cmd.n, cmd.offset, cmd.ms).await,
        "latency_ab" => latency_ab(node, cmd.n, cmd.calls, cmd.rounds).await,
        "placement" => {
            // Children running somewhere else than their key's owner (as this node sees it), or
            // owned here and not running here: 0 everywhere once a rebalance is over.
            let me = node.id().clone();
            let misplaced = (0..cmd.n)
                .filter(|i| {
                    let k = key(*i);
                    (sup.node_for(&k).as_ref() == Some(&me)) != sup.hosts(&k)
                })
                .count();
            let hosted = (0..cmd.n).filter(|i| sup.hosts(&key(*i))).count();
            json!({"misplaced": misplaced, "hosted": hosted})
        }
        "names_register" => {
            // `n` names for one local actor, each with its registration time (µs) as metadata.
            let actor = throng::spawn(Child(0));
            let names = node.names();
            let t = Instant::now();
            let mut errors = 0u64;
            for i in 0..cmd.n {
                if names.register(&format!("r-{i}"), &actor, now_us()).is_err() {
                    errors += 1;
                }
                if i % 1024 == 1023 {
                    tokio::task::yield_now().await;
                }
            }
            let ms = ms(t);
            // Keep the actor (and so its names) alive.
            std::mem::forget(actor);
            json!({"ms": ms, "errors": errors})
        }
        "names_watch" => names_watch(state, cmd.n, cmd.timeout_ms).await,
        "latency" => latency(state, cmd.n, cmd.calls).await,
        "caller_start" => {
            state.caller_stop.store(false, Ordering::SeqCst);
            state.caller_calls.store(0, Ordering::SeqCst);
            state.caller_failed.store(0, Ordering::SeqCst);
            state.caller_wrong.store(0, Ordering::SeqCst);
            state
                .caller_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            let s = state.clone();
            let n = cmd.n.max(1);
            tokio::spawn(async move {
                let sup = s.node.default_supervisor();
                let mut i = 0u64;
                while !s.caller_stop.load(Ordering::SeqCst) {
                    i = (i + 7919) % n;
                    let result = sup
                        .call_timeout::<Child>(&key(i), Msg::Get, Duration::from_secs(5))
                        .await;
                    s.caller_calls.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(v) if v == i + 1 => {}
                        Ok(_) => {
                            s.caller_failed.fetch_add(1, Ordering::Relaxed);
                            s.caller_wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            s.caller_failed.fetch_add(1, Ordering::Relaxed);
                            *s.caller_errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(e.to_string())
                                .or_default() += 1;
                        }
                    }
                }
            });
            json!({"ok": true})
        }
        "caller_stop" => {
            state.caller_stop.store(true, Ordering::SeqCst);
            json!({
                "calls": state.caller_calls.load(Ordering::SeqCst),
                "failed": state.caller_failed.load(Ordering::SeqCst),
                "wrong": state.caller_wrong.load(Ordering::SeqCst),
                "errors": state
                    .caller_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            })
        }
        other => json!({"error": format!("unknown command {other}")}),
    }
}

/// Call every child of `keys` until each answers with its expected state `i + add` (or the
/// timeout passes): the time it took, and how many answered with the expected state, another
/// state, or not at all.
async fn resolve(sup: &DistSupervisor, keys: Vec<u64>, add: u64, timeout_ms: u64) -> Value {
    let t = Instant::now();
    let deadline = t + Duration::from_millis(timeout_ms.max(1));
    let n = keys.len() as u64;
    let mut pending: Vec<u64> = keys;
    let mut wrong = 0u64;
    let mut rounds = 0u64;
    loop {
        rounds += 1;
        let results: Vec<(u64, Option<u64>)> = stream::iter(pending.iter().copied())
            .map(|i| async move {
                let r = sup
                    .call_timeout::<Child>(&key(i), Msg::Get, Duration::from_secs(2))
                    .await
                    .ok();
                (i, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        pending.clear();
        for (i, r) in results {
            match r {
                Some(v) if v == i + add => {}
                Some(_) => wrong += 1,
                None => pending.push(i),
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    json!({
        "ms": ms(t),
        "ok": n - pending.len() as u64 - wrong,
        "wrong_state": wrong,
        "unreachable": pending.len(),
        "rounds": rounds,
    })
}

/// Wall-clock time in µs since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Watch for names `r-0`..`r-{n-1}` to become visible here; each one's latency is the time from
/// its registration (its metadata, wall clock: the nodes share a machine) to when this node first
/// saw it.
async fn names_watch(state: &State, n: u64, timeout_ms: u64) -> Value {
    let names = state.node.names();
    let t = Instant::now();
    let deadline = t + Duration::from_millis(timeout_ms.max(1));
    let mut pending: Vec<u64> = (0..n).collect();
    let mut lat_ms: Vec<f64> = Vec::with_capacity(n as usize);
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|i| match names.meta::<u64>(&format!("r-{i}")) {
            Ok(Some(at)) => {
                lat_ms.push(now_us().saturating_sub(at) as f64 / 1000.0);
                false
            }
            _ => true,
        });
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat_ms
            .get(((lat_ms.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    json!({
        "ms": ms(t),
        "seen": lat_ms.len(),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    })
}

/// Sequential calls by key to children hosted elsewhere (p50, p99, calls/s), then pipelined
/// casts to them (casts/s).
async fn latency(state: &State, n: u64, calls: u64) -> Value {
    let sup = state.node.default_supervisor();
    let remote: Vec<u64> = (0..n).filter(|i| !sup.hosts(&key(*i))).take(1000).collect();
    if remote.is_empty() {
        return json!({"error": "no remote children"});
    }
    let mut lat = Vec::with_capacity(calls as usize);
    let t = Instant::now();
    for c in 0..calls {
        let i = remote[(c as usize) % remote.len()];
        let one = Instant::now();
        if sup.call::<Child>(&key(i), Msg::Get).await.is_ok() {
            lat.push(one.elapsed().as_secs_f64() * 1e6);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    // Pipelined casts to one remote child (Add(0) keeps its state), then one call to drain.
    let target = sup.child::<Child>(&key(remote[0]));
    let casts = 100_000u64;
    let t = Instant::now();
    if let Some(c) = &target {
        for _ in 0..casts {
            let _ = c.cast(Msg::Add(0)).await;
        }
        let _ = c.call(Msg::Get).await;
    }
    let cast_rate = casts as f64 / t.elapsed().as_secs_f64();
    json!({
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "calls_per_s": lat.len() as f64 / secs,
        "casts_per_s": cast_rate,
    })
}

/// A stream of state-changing calls (`Add(1)`) to keys `offset, offset + 1, ...` (mod `n`),
/// [`CONCURRENCY`] in flight, for `ms` milliseconds: every call makes a snapshot.
async fn load(sup: &DistSupervisor, n: u64, offset: u64, ms_total: u64) -> Value {
    let n = n.max(1);
    let t = Instant::now();
    let deadline = t + Duration::from_millis(ms_total);
    let calls = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let keys = (0u64..).map(|c| (offset + c) % n);
    stream::iter(keys)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .for_each_concurrent(CONCURRENCY, |i| {
            let (calls, errors) = (&calls, &errors);
            async move {
                match sup.call::<Child>(&key(i), Msg::Add(1)).await {
                    Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
        .await;
    json!({
        "ms": ms(t),
        "calls": calls.load(Ordering::Relaxed),
        "errors": errors.load(Ordering::Relaxed),
    })
}

/// Keys `from..to`, [`CONCURRENCY`] at a time, each touched once (every one is new to this
/// node): a key below `live` has its child started (`start_child`, the reference it returns
/// dropped), sent a cast (`Add(1)`, through a route bound on the link while the link has room
/// for one) and called (`Add(1)`, expecting `i + 2`: the cast went first on the same lane); a key
/// at or above `live` is sent a cast and called with no child behind it (`Get`, at most
/// `timeout_ms`; "no such actor" or a timeout is the expected answer).
async fn touch(sup: &DistSupervisor, from: u64, to: u64, live: u64, timeout_ms: u64) -> Value {
    let t = Instant::now();
    let errors = AtomicU64::new(0);
    let timeout = Duration::from_millis(timeout_ms.max(1));
    stream::iter(from..to)
        .for_each_concurrent(CONCURRENCY, |i| {
            let errors = &errors;
            async move {
                let k = key(i);
                let ok = if i < live {
                    sup.start_child::<Child>(&k, i).await.is_ok()
                        && sup.cast::<Child>(&k, Msg::Add(1)).await.is_ok()
                        && matches!(sup.call::<Child>(&k, Msg::Add(1)).await, Ok(v) if v == i + 2)
                } else {
                    let _ = sup.cast::<Child>(&k, Msg::Get).await;
                    matches!(
                        sup.call_timeout::<Child>(&k, Msg::Get, timeout).await,
                        Err(CallError::NoSuchActor(_) | CallError::Timeout(_))
                    )
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    json!({"ms": ms(t), "errors": errors.load(Ordering::Relaxed)})
}

/// Percentiles of sorted latencies.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Sequential state-changing calls (`Add(1)`) by key, alternately to a child owned elsewhere
/// and to one owned here, on the `plain` and the `durable` supervisor (the same keys on both,
/// so the same owners), in blocks of `calls` in the order plain, durable, durable, plain,
/// `rounds` times: p50 and p99 (µs) of each supervisor, remote and local owners apart.
async fn latency_ab(node: &Node, n: u64, calls: u64, rounds: u64) -> Value {
    let plain = sup_of(node, Some(PLAIN));
    let durable = sup_of(node, Some(DURABLE));
    let sync = sup_of(node, Some(SYNC));
    // At most this many keys of each kind: enough that a key's snapshots do not coalesce.
    const KEYS: usize = 5000;
    let remote: Vec<u64> = (0..n)
        .filter(|i| !plain.hosts(&key(*i)))
        .take(KEYS)
        .collect();
    let local: Vec<u64> = (0..n)
        .filter(|i| plain.hosts(&key(*i)))
        .take(KEYS)
        .collect();
    if remote.is_empty() || local.is_empty() {
        return json!({"error": "no remote or no local children"});
    }
    // [plain remote, plain local, durable remote, durable local, sync remote, sync local]
    let mut lat: [Vec<f64>; 6] = Default::default();
    let mut next = [0usize; 2];
    let mut errors = 0u64;
    for _ in 0..rounds {
        let order = [
            (0, &plain),
            (1, &durable),
            (2, &sync),
            (2, &sync),
            (1, &durable),
            (0, &plain),
        ];
        for (s, sup) in order {
            for c in 0..calls {
                let is_local = c % 2 == 1;
                let keys = if is_local { &local } else { &remote };
                let i = keys[next[usize::from(is_local)] % keys.len()];
                next[usize::from(is_local)] += 1;
                let one = Instant::now();
                match sup.call::<Child>(&key(i), Msg::Add(1)).await {
                    Ok(_) => {
                        lat[s * 2 + usize::from(is_local)].push(one.elapsed().as_secs_f64() * 1e6)
                    }
                    Err(_) => errors += 1,
                }
            }
        }
    }
    let mut out = json!({"errors": errors, "remote_keys": remote.len(), "local_keys": local.len()});
    for (idx, name) in [
        "plain_remote",
        "plain_local",
        "durable_remote",
        "durable_local",
        "sync_remote",
        "sync_local",
    ]
    .iter()
    .enumerate()
    {
        let v = &mut lat[idx];
        v.sort_by(f64::total_cmp);
        out[format!("{name}_p50_us")] = json!(pct(v, 0.5));
        out[format!("{name}_p99_us")] = json!(pct(v, 0.99));
        out[format!("{name}_calls")] = json!(v.len());
    }
    out
}
