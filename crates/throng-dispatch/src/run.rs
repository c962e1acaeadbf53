//! The two commands: `node` (one dispatch center: a Throng node, its city, its page) and `demo`
//! (three nodes as separate processes on loopback, Gotham, Metropolis and Capitol).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use throng::cluster::{ConfigError, DetectionProfile, DistOptions, Node, NodeConfig};

use crate::control::{stop_gracefully, Control};
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
    /// Leave and exit when standard input closes (set by `demo`, so no node outlives it).
    pub exit_with_parent: bool,
}

/// Options of `demo`.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Hero decision period.
    pub tick_ms: u64,
    /// First HTTP port (then +1, +2); gossip ports are +10, +11, +12.
    pub base_port: u16,
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
    let node = Arc::new(
        Node::join(config)
            .await
            .map_err(|e| format!("cannot start node {name}: {e}"))?,
    );
    node.register::<Hero>();
    let heroes = node.supervisor(HEROES_SUPERVISOR, DistOptions::default());
    let city = args.city.clone().unwrap_or_else(|| city_for(&name));
    let h = install(Arc::new(Home::new(
        node.clone(),
        city,
        public_url.clone(),
        heroes,
        Duration::from_millis(args.tick_ms),
    )));
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
        why = quit_rx.recv() => tracing::info!("stopping: {}", why.unwrap_or("?")),
        _ = sigterm(&mut term) => tracing::info!("stopping: SIGTERM"),
    }
    stop_gracefully(h).await
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
    let mut children: Vec<(String, Vec<String>, Option<Child>)> = Vec::new();
    println!("Throng dispatch demo: three nodes, one process each.\n");
    for (i, (name, city)) in DEMO_NODES.iter().enumerate() {
        let http = args.base_port + i as u16;
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
            prefix_lines(out, prefix.clone());
        }
        if let Some(err) = child.stderr.take() {
            prefix_lines(err, prefix);
        }
        println!("  {city:<11} http://127.0.0.1:{http}   (node {name})");
        children.push(((*name).to_owned(), node_args, Some(child)));
    }
    println!(
        "\nOpen the pages, create heroes, stop or crash a node and watch its heroes move with \
         their stats. Ctrl-C stops everything.\n"
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
            println!("All nodes have stopped.");
            return Ok(());
        }
    }
    println!("\nStopping the nodes (they leave the cluster gracefully)...");
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
    println!("Demo stopped.");
    Ok(())
}

/// Print every line of `r` with `prefix`, on a thread of its own.
fn prefix_lines(r: impl Read + Send + 'static, prefix: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => println!("{prefix}{l}"),
                Err(_) => break,
            }
        }
    });
}
