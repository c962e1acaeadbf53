//! The two commands: `node` (one dispatch center: a Throng node, its city, its page) and `demo`
//! (three nodes as separate processes on loopback, Gotham, Metropolis and Capitol).
//!
//! ## Where the heroes are kept
//!
//! A node with a data directory (`--data-dir`, `THRONG_DATA_DIR`, or `data_dir` in `--config`)
//! runs the heroes' supervisor with [`Durability::ASYNC`]: every node writes the heroes it runs
//! and the copies it keeps to its store there, so after every node stopped (the demo's Ctrl-C, a
//! crash, `kill -9`) and started again with the same names and directories, each hero runs again
//! with its health and record. A node without one keeps its heroes in memory only.
//!
//! `demo` gives each node the directory `<base>/<node>`, where `<base>` is `--data-dir`, else
//! `THRONG_DATA_DIR`, else `$XDG_DATA_HOME/throng-dispatch`, else
//! `$HOME/.local/share/throng-dispatch` (see [`demo_data_base`]); `demo --fresh` removes the
//! three nodes' directories first. When the demo as a whole stops, its nodes shut down without
//! leaving the cluster (see [`crate::control::shut_down`]): a graceful leave of all three at once
//! would hand heroes to nodes that are stopping too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use throng::cluster::{
    ConfigError, DetectionProfile, DistOptions, Durability, Node, NodeConfig, NodeError,
};

use crate::control::{shut_down, stop_gracefully, Control};
use crate::hero::Hero;
use crate::home::{install, Home, CONTROL_EXPORT, HEROES_SUPERVISOR};
use crate::view::View;

/// Default hero decision period.
pub const DEFAULT_TICK_MS: u64 = 4_000;

/// The secret a loopback-only node uses when none is configured (development only: every node on
/// the machine that uses it can join).
const DEV_SECRET: &str = "throng-dispatch-demo-secret-loopback-only";

/// The demo's three nodes: name, city, and port offsets from the base port (http, gossip).
pub const DEMO_NODES: [(&str, &str); 3] = [
    ("gotham", "Gotham"),
    ("metropolis", "Metropolis"),
    ("capitol", "Capitol"),
];

/// How long `demo` waits for its nodes to stop after Ctrl-C before killing them.
const DEMO_STOP_WAIT: Duration = Duration::from_secs(10);

/// The directory under the per-user data directory (`$XDG_DATA_HOME`, `~/.local/share`) where
/// `demo` keeps its nodes' data by default.
pub const DATA_SUBDIR: &str = "throng-dispatch";

/// How long a node's count of running heroes must stay still before it reports how many came
/// back from its data directory.
const RECOVERY_QUIET: Duration = Duration::from_secs(3);

/// The longest a node waits before it reports the heroes it recovered.
const RECOVERY_REPORT_LIMIT: Duration = Duration::from_secs(60);

/// Options of `node`.
#[derive(Debug, Clone, Default)]
pub struct NodeArgs {
    /// Node name (or `THRONG_NAME` / the config file).
    pub name: Option<String>,
    /// HTTP address.
    pub http: Option<SocketAddr>,
    /// Gossip (UDP) bind address.
    pub gossip: Option<String>,
    /// RPC (TCP) bind address.
    pub rpc: Option<String>,
    /// Seed gossip addresses, comma-separated.
    pub seeds: Option<String>,
    /// Hero decision period.
    pub tick_ms: u64,
    /// City name (default: from the node name).
    pub city: Option<String>,
    /// TOML config (see `NodeConfig::load`).
    pub config: Option<PathBuf>,
    /// The page's URL as other nodes should link to it.
    pub public_url: Option<String>,
    /// Where the node keeps its heroes (overrides `THRONG_DATA_DIR` and `data_dir` in the
    /// config; none of them: in memory only).
    pub data_dir: Option<PathBuf>,
    /// Part of a `demo`: shut down (keeping the data directory, without leaving the cluster)
    /// when standard input closes or on Ctrl-C, so no node outlives the demo and no node hands
    /// its heroes to another that is stopping too.
    pub exit_with_parent: bool,
}

/// Options of `demo`.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Hero decision period.
    pub tick_ms: u64,
    /// First HTTP port (then +1, +2); gossip ports are +10, +11, +12.
    pub base_port: u16,
    /// The directory with one data directory per node (default: [`demo_data_base`]).
    pub data_dir: Option<PathBuf>,
    /// Remove the nodes' data first and start with no heroes.
    pub fresh: bool,
}

/// Parse `node` arguments.
pub fn parse_node(args: &[String]) -> Result<NodeArgs, String> {
    let mut a = NodeArgs {
        tick_ms: DEFAULT_TICK_MS,
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--name" => a.name = Some(value()?),
            "--http" => a.http = Some(parse_http(&value()?)?),
            "--gossip" => a.gossip = Some(value()?),
            "--rpc" => a.rpc = Some(value()?),
            "--seeds" => a.seeds = Some(value()?),
            "--tick-ms" => a.tick_ms = parse_tick(&value()?)?,
            "--city" => a.city = Some(value()?),
            "--config" => a.config = Some(value()?.into()),
            "--public-url" => a.public_url = Some(value()?),
            "--data-dir" => a.data_dir = Some(parse_dir(&value()?)?),
            "--exit-with-parent" => a.exit_with_parent = true,
            other => return Err(format!("unknown option {other:?} for `node`")),
        }
    }
    Ok(a)
}

/// Parse `demo` arguments.
pub fn parse_demo(args: &[String]) -> Result<DemoArgs, String> {
    let mut a = DemoArgs {
        tick_ms: DEFAULT_TICK_MS,
        base_port: 4900,
        data_dir: None,
        fresh: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--tick-ms" => a.tick_ms = parse_tick(&value()?)?,
            "--base-port" => {
                a.base_port = value()?.parse().map_err(|e| format!("--base-port: {e}"))?
            }
            "--data-dir" => a.data_dir = Some(parse_dir(&value()?)?),
            "--fresh" => a.fresh = true,
            other => return Err(format!("unknown option {other:?} for `demo`")),
        }
    }
    if a.base_port > u16::MAX - 20 {
        return Err("--base-port is too high".into());
    }
    Ok(a)
}

fn parse_tick(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(t) if (10..=3_600_000).contains(&t) => Ok(t),
        _ => Err(format!(
            "--tick-ms {v:?}: expected milliseconds in 10..=3600000"
        )),
    }
}

fn parse_dir(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err("--data-dir needs a directory".into());
    }
    Ok(PathBuf::from(v))
}

/// Where `demo` keeps its nodes' data (one directory per node under it) unless `--data-dir`
/// says: `THRONG_DATA_DIR`, else `$XDG_DATA_HOME/throng-dispatch` (when it is an absolute path,
/// as the XDG base directory specification asks), else `$HOME/.local/share/throng-dispatch`.
/// `env` looks variables up (`std::env::var` in the binary). `None` when none of them is set.
pub fn demo_data_base(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = set("THRONG_DATA_DIR") {
        return Some(dir.into());
    }
    if let Some(xdg) = set("XDG_DATA_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Some(xdg.join(DATA_SUBDIR));
        }
    }
    set("HOME").map(|home| Path::new(&home).join(".local/share").join(DATA_SUBDIR))
}

/// `path` with the home directory shown as `~` (for messages).
pub fn show_path(path: &Path) -> String {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        if let Ok(rest) = path.strip_prefix(&home) {
            return Path::new("~").join(rest).display().to_string();
        }
    }
    path.display().to_string()
}

/// Whether `dir` holds data of an earlier run (it exists and is not empty).
pub fn has_data(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Remove a node's data directory `dir` (`demo --fresh`). Only a directory that holds nothing
/// but the node's store (files named `throng*`) is removed, so that a mistaken `--data-dir`
/// never deletes anything else. Returns whether there was anything to remove.
pub fn remove_node_data(dir: &Path) -> Result<bool, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !entry.file_name().to_string_lossy().starts_with("throng") {
            return Err(format!(
                "{} holds {:?}, which is not a node's data: not removing it (remove the \
                 directory yourself, or choose another --data-dir)",
                dir.display(),
                entry.file_name()
            ));
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    Ok(true)
}

/// `4900` means `127.0.0.1:4900`.
fn parse_http(v: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = v.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    v.parse()
        .map_err(|e| format!("--http {v:?}: {e} (expected a port or ip:port)"))
}

/// The city of a node named `name`.
fn city_for(name: &str) -> String {
    if let Some((_, city)) = DEMO_NODES.iter().find(|(n, _)| *n == name) {
        return (*city).to_owned();
    }
    let mut c = name.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => "Nowhere".into(),
    }
}

/// Set up readable logs (`RUST_LOG` overrides the default filter).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,throng=warn,throng_membership=warn,foca=warn,throng_dispatch=info",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Build the node's config: the TOML file (if any), then `THRONG_*` variables, then the command
/// line. Without a secret, a node whose gossip binds loopback uses a development secret.
fn config(args: &NodeArgs) -> Result<NodeConfig, String> {
    let text = match &args.config {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => String::new(),
    };
    let mut over: HashMap<&str, String> = HashMap::new();
    if let Some(v) = &args.name {
        over.insert("THRONG_NAME", v.clone());
    }
    if let Some(v) = &args.gossip {
        over.insert("THRONG_GOSSIP_BIND", v.clone());
    }
    if let Some(v) = &args.rpc {
        over.insert("THRONG_RPC_BIND", v.clone());
    }
    if let Some(v) = &args.seeds {
        over.insert("THRONG_SEEDS", v.clone());
    }

    let load = |over: &HashMap<&str, String>| {
        NodeConfig::from_sources(&text, |k| {
            over.get(k).cloned().or_else(|| std::env::var(k).ok())
        })
    };
    let mut config = match load(&over) {
        Err(ConfigError::Missing("secret", _)) => {
            over.insert("THRONG_SECRET", DEV_SECRET.into());
            let c = load(&over).map_err(|e| e.to_string())?;
            if !c.membership.bind_addr.ip().is_loopback() {
                return Err(
                    "no cluster secret: set THRONG_SECRET or THRONG_SECRET_FILE (or `secret` / \
                     `secret_file` in --config); only a loopback node may run without one"
                        .into(),
                );
            }
            tracing::warn!("no cluster secret configured: using the loopback development secret");
            c
        }
        other => other.map_err(|e| e.to_string())?,
    };
    if config.membership.bind_addr.ip().is_loopback() && std::env::var("THRONG_DETECTION").is_err()
    {
        // On one machine, detect a crashed node in about a second rather than in several.
        config.membership.profile = DetectionProfile::Fast;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    Ok(config)
}

/// Run one dispatch center until it is stopped (Ctrl-C, SIGTERM, the page, or a crash).
pub async fn node(args: NodeArgs) -> Result<(), String> {
    let config = config(&args)?;
    let name = config.name.to_string();
    let http = args
        .http
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4900)));
    // Bind the page first: a taken port fails before the node joins anyone.
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .map_err(|e| format!("cannot listen on http://{http}: {e}"))?;
    let gossip_ip = config.membership.bind_addr.ip();
    let public_url = args.public_url.clone().unwrap_or_else(|| {
        let ip = if http.ip().is_unspecified() {
            gossip_ip
        } else {
            http.ip()
        };
        format!("http://{}", SocketAddr::new(ip, http.port()))
    });
    let data_dir = config.data_dir.clone();
    let earlier_data = data_dir.as_deref().is_some_and(has_data);
    let node = Arc::new(Node::join(config).await.map_err(|e| match e {
        NodeError::Store(_) => format!(
            "cannot start node {name}: {e}\n(each node needs a data directory of its own; \
             `demo --fresh` or another --data-dir starts empty)"
        ),
        e => format!("cannot start node {name}: {e}"),
    })?);
    node.register::<Hero>();
    let heroes = node.supervisor(HEROES_SUPERVISOR, heroes_options(&node));
    let city = args.city.clone().unwrap_or_else(|| city_for(&name));
    let h = install(Arc::new(Home::new(
        node.clone(),
        city,
        public_url.clone(),
        heroes,
        Duration::from_millis(args.tick_ms),
    )));
    if earlier_data && node.has_store() {
        // Before anything watches the heroes: they come back at the earliest a second from now.
        h.recovering
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let control = throng::spawn(Control);
    node.export(CONTROL_EXPORT, &control)
        .map_err(|e| format!("cannot export the control actor: {e}"))?;
    tokio::spawn(crate::city::run(h));
    let view = View::new(h);
    view.spawn(h);
    h.event(format!(
        "{} dispatch center (node {name}) open on {public_url}",
        h.city_name
    ));
    match (&data_dir, node.has_store()) {
        (Some(dir), true) if earlier_data => {
            h.event(format!(
                "{name}: data in {} (earlier data found: its heroes come back once the nodes have met)",
                show_path(dir)
            ));
            tokio::spawn(report_recovery(h, show_path(dir)));
        }
        (Some(dir), true) => h.event(format!("{name}: data in {} (new)", show_path(dir))),
        _ => h.event(format!(
            "{name}: no data directory: heroes are kept in memory only (--data-dir DIR keeps them \
             across restarts)"
        )),
    }
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel::<&'static str>(1);
    if args.exit_with_parent {
        let tx = quit_tx.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.blocking_send("the demo stopped");
        });
    }
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = quit_tx.send("Ctrl-C").await;
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let server = axum::serve(listener, crate::web::router(h, view));
    tokio::select! {
        r = server => return r.map_err(|e| format!("http server: {e}")),
        why = quit_rx.recv() => {
            let why = why.unwrap_or("?");
            tracing::info!("stopping: {why}");
            if args.exit_with_parent {
                // The whole demo stops (its Ctrl-C reaches every node of it): no leave, so that
                // no hero is handed to a node that is stopping too; the data directory keeps
                // them for the next start.
                shut_down(h).await
            }
        }
        _ = sigterm(&mut term) => tracing::info!("stopping: SIGTERM"),
    }
    // This node alone stops: its heroes move to the others with their state.
    stop_gracefully(h).await
}

/// The heroes' supervisor: durable when the node has a data directory (its heroes survive a
/// restart of every node), in memory otherwise.
pub fn heroes_options(node: &Node) -> DistOptions {
    let durability = if node.has_store() {
        Durability::ASYNC
    } else {
        Durability::None
    };
    DistOptions {
        durability,
        ..DistOptions::default()
    }
}

/// Tell how many heroes run here once recovery from the data directory `dir` has settled (the
/// count of heroes running here has not changed for [`RECOVERY_QUIET`]).
async fn report_recovery(h: &'static Home, dir: String) {
    let began = Instant::now();
    let (mut last, mut since) = (None, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let running = h.heroes.stats().await.running;
        if last != Some(running) {
            (last, since) = (Some(running), Instant::now());
        }
        // None running here yet: recovery may not have begun (the other nodes are still
        // coming up); wait longer before saying so.
        let quiet = since.elapsed() >= RECOVERY_QUIET
            && (running > 0 || began.elapsed() >= 5 * RECOVERY_QUIET);
        if quiet || began.elapsed() >= RECOVERY_REPORT_LIMIT {
            h.recovering
                .store(false, std::sync::atomic::Ordering::Relaxed);
            h.event(format!(
                "{}: {running} heroes running here after recovery from {dir}",
                h.name
            ));
            return;
        }
    }
}

async fn sigterm(s: &mut tokio::signal::unix::Signal) {
    s.recv().await;
}

/// Run the three-node demo until Ctrl-C.
pub fn demo(args: DemoArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let seeds: Vec<String> = (0..DEMO_NODES.len())
        .map(|i| format!("127.0.0.1:{}", args.base_port + 10 + i as u16))
        .collect();
    let seeds = seeds.join(",");
    let color = std::io::stdout().is_terminal();
    let base = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => demo_data_base(|k| std::env::var(k).ok()).ok_or(
            "no directory for the demo's data: pass --data-dir DIR (or set THRONG_DATA_DIR, \
             XDG_DATA_HOME or HOME)",
        )?,
    };
    if args.fresh {
        for (name, _) in DEMO_NODES {
            let dir = base.join(name);
            if remove_node_data(&dir)? {
                println!("Removed the data of {name} in {}", show_path(&dir));
            }
        }
    }
    let mut children: Vec<(String, Vec<String>, Option<Child>)> = Vec::new();
    let mut printers = Vec::new();
    println!("Throng dispatch demo: three nodes, one process each.\n");
    for (i, (name, city)) in DEMO_NODES.iter().enumerate() {
        let http = args.base_port + i as u16;
        let data_dir = base.join(name);
        let data_note = if has_data(&data_dir) {
            "earlier heroes come back"
        } else {
            "new"
        };
        let node_args = vec![
            "node".to_owned(),
            "--name".into(),
            (*name).into(),
            "--http".into(),
            http.to_string(),
            "--gossip".into(),
            format!("127.0.0.1:{}", args.base_port + 10 + i as u16),
            "--seeds".into(),
            seeds.clone(),
            "--tick-ms".into(),
            args.tick_ms.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        let mut cmd = Command::new(&exe);
        cmd.args(&node_args)
            .arg("--exit-with-parent")
            .env("THRONG_SECRET", DEV_SECRET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let paint = if color {
            ["\x1b[33m", "\x1b[36m", "\x1b[35m"][i % 3]
        } else {
            ""
        };
        let reset = if color { "\x1b[0m" } else { "" };
        let prefix = format!("{paint}[{name:<10}]{reset} ");
        if let Some(out) = child.stdout.take() {
            printers.push(prefix_lines(out, prefix.clone()));
        }
        if let Some(err) = child.stderr.take() {
            printers.push(prefix_lines(err, prefix));
        }
        println!(
            "  {city:<11} http://127.0.0.1:{http}   (node {name}, data in {}: {data_note})",
            show_path(&data_dir)
        );
        children.push(((*name).to_owned(), node_args, Some(child)));
    }
    println!(
        "\nOpen the pages, create heroes, stop or crash a node and watch its heroes move with \
         their stats. Ctrl-C stops everything; the heroes wait on disk for the next `demo` \
         (`demo --fresh` starts without them).\n"
    );
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        let _ = tx.send(());
    });
    loop {
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        for (name, node_args, slot) in children.iter_mut() {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                println!(
                    "\n{name} exited ({status}). Start it again in another terminal with:\n  \
                     cargo run --release -p throng-dispatch -- {}\n",
                    node_args.join(" ")
                );
                *slot = None;
            }
        }
        if children.iter().all(|(_, _, c)| c.is_none()) {
            finish(printers);
            println!("All nodes have stopped.");
            return Ok(());
        }
    }
    println!("\nStopping the nodes (their heroes stay in their data directories)...");
    for (_, _, slot) in children.iter_mut() {
        if let Some(c) = slot {
            drop(c.stdin.take());
        }
    }
    let deadline = Instant::now() + DEMO_STOP_WAIT;
    for (name, _, slot) in children.iter_mut() {
        let Some(c) = slot else { continue };
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    println!("{name} did not stop in time; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
    finish(printers);
    println!("Demo stopped.");
    Ok(())
}

/// Wait (briefly) until the nodes' last lines are printed.
fn finish(printers: Vec<std::thread::JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for p in printers {
        while !p.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if p.is_finished() {
            let _ = p.join();
        }
    }
}

/// Print every line of `r` with `prefix`, on a thread of its own (which ends with `r`).
fn prefix_lines(r: impl Read + Send + 'static, prefix: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => println!("{prefix}{l}"),
                Err(_) => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn demo_and_node_take_a_data_dir_and_demo_a_fresh_start() {
        let d = parse_demo(&args(&["--data-dir", "/tmp/x", "--fresh"])).unwrap();
        assert_eq!(d.data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(d.fresh);
        let d = parse_demo(&[]).unwrap();
        assert_eq!((d.data_dir, d.fresh), (None, false));
        let n = parse_node(&args(&["--name", "a", "--data-dir", "/tmp/a"])).unwrap();
        assert_eq!(n.data_dir, Some(PathBuf::from("/tmp/a")));
        assert!(parse_node(&args(&["--data-dir", ""])).is_err());
        assert!(parse_demo(&args(&["--data-dir"])).is_err());
    }

    #[test]
    fn the_demo_keeps_its_data_in_a_per_user_directory_unless_told() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            demo_data_base(env(&[("HOME", "/home/ada")])),
            Some(PathBuf::from("/home/ada/.local/share/throng-dispatch"))
        );
        assert_eq!(
            demo_data_base(env(&[("HOME", "/home/ada"), ("XDG_DATA_HOME", "/data")])),
            Some(PathBuf::from("/data/throng-dispatch"))
        );
        // A relative XDG_DATA_HOME is ignored (XDG base directory specification).
        assert_eq!(
            demo_data_base(env(&[("HOME", "/home/ada"), ("XDG_DATA_HOME", "rel")])),
            Some(PathBuf::from("/home/ada/.local/share/throng-dispatch"))
        );
        assert_eq!(
            demo_data_base(env(&[
                ("HOME", "/home/ada"),
                ("XDG_DATA_HOME", "/data"),
                ("THRONG_DATA_DIR", "/srv/demo")
            ])),
            Some(PathBuf::from("/srv/demo"))
        );
        assert_eq!(demo_data_base(env(&[("HOME", "")])), None);
    }

    #[test]
    fn fresh_removes_a_nodes_store_and_nothing_else() {
        let base = std::env::temp_dir().join(format!("dispatch-fresh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let node = base.join("gotham");
        assert!(!remove_node_data(&node).unwrap(), "nothing to remove");
        std::fs::create_dir_all(&node).unwrap();
        std::fs::write(node.join("throng.redb"), b"x").unwrap();
        assert!(has_data(&node));
        assert!(remove_node_data(&node).unwrap());
        assert!(!node.exists());
        // A directory with anything else in it is left alone.
        std::fs::create_dir_all(&node).unwrap();
        std::fs::write(node.join("throng.redb"), b"x").unwrap();
        std::fs::write(node.join("thesis.tex"), b"precious").unwrap();
        let err = remove_node_data(&node).unwrap_err();
        assert!(err.contains("not removing"), "{err}");
        assert!(node.join("thesis.tex").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
