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
    DistOptions, DistSupervisor, Durability, Keyed, Node, NodeConfig, RemoteActor,
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
}

/// The supervisor with durability, in a node with a data dir.
pub const DURABLE: &str = "durable";
/// Its twin without durability.
pub const PLAIN: &str = "plain";
/// Its twin with [`Durability::Sync`]: a call is answered once the state it made is on disk.
pub const SYNC: &str = "sync";

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
        _ => node.default_supervisor(),
    }
}

struct State {
    node: Node,
    out: Mutex<tokio::io::Stdout>,
    caller_stop: AtomicBool,
    caller_calls: AtomicU64,
    caller_failed: AtomicU64,
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
    });
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
        "members" => json!({"owners": node.owners().len()}),
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
        "resolve" => resolve(&sup, cmd.n, cmd.add, cmd.timeout_ms).await,
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
            let s = state.clone();
            let n = cmd.n.max(1);
            tokio::spawn(async move {
                let sup = s.node.default_supervisor();
                let mut i = 0u64;
                while !s.caller_stop.load(Ordering::SeqCst) {
                    i = (i + 7919) % n;
                    let result = sup
                        .call_timeout::<Child>(&key(i), Msg::Get, Duration::from_secs(5))
                        .await
                        .ok();
                    s.caller_calls.fetch_add(1, Ordering::Relaxed);
                    if result != Some(i + 1) {
                        s.caller_failed.fetch_add(1, Ordering::Relaxed);
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
            })
        }
        other => json!({"error": format!("unknown command {other}")}),
    }
}

/// Call every child until each answers with its expected state `i + add` (or the timeout passes):
/// the time it took, and how many answered with the expected state, another state, or not at all.
async fn resolve(sup: &DistSupervisor, n: u64, add: u64, timeout_ms: u64) -> Value {
    let t = Instant::now();
    let deadline = t + Duration::from_millis(timeout_ms.max(1));
    let mut pending: Vec<u64> = (0..n).collect();
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

fn now_us() -> u64 {
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
