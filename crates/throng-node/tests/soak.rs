//! The chaos soak: five `throng-node` processes with data directories, each in its own network
//! namespace behind a bridge (as in `tests/netns.rs`), run acknowledged increments against
//! `Durability::Sync` keyed counters in quorum mode (`THRONG_SYNC_QUORUM=5`) while a schedule
//! drawn from a seed kills nodes with SIGKILL and restarts them, partitions one or two nodes from
//! the others and heals them, and makes nodes leave gracefully (SIGTERM) and come back.
//!
//! Nodes `n1` and `n2` are the clients (`hammer K`: one worker per counter on each, printing one
//! `ack` per acknowledged increment and one `doubt` per failed one) and live through the whole
//! soak (they are partitioned, never killed): their memory and tasks are compared at the start and
//! the end. `n3`..`n5` are killed and leave. After every fault the driver waits, with deadlines,
//! until every node sees every other up and every counter runs on exactly one node (the time from
//! the heal or restart to that point is the *settle time*); then the clients stop (`unhammer 0`:
//! every increment sent is answered or failed) and every counter must hold
//! `acked ≤ value ≤ acked + doubts` (no acknowledged increment lost, none applied twice; only a
//! failed increment may or may not be applied), and the clients start again.
//!
//! Two workloads: `merge` counters (`MergingCounter`: a grow-only counter per copy, whose copies
//! merge without losing an increment, so that the soak checks that no copy is ever dropped
//! unmerged) run in `cargo test`; the plain `sync` counters (`KeyedCounter`, whose conflicting
//! copies keep one side's count, `Keyed::resolve_conflict`'s default: the copy with more of its
//! history acknowledged) still lose acknowledged increments after some partitions, when both
//! sides acknowledged for a short while (a cut-off owner with its backup on its own side, the other
//! side failing over an older copy), so their soak is ignored until that is fixed
//! (docs/benchmarks.md, "fifth session").
//!
//! The default run is short (6 kill cycles, 2 partitions, 1 leave, about 30 s). The long run
//! (issue 16: ≥ 100 kills, ≥ 20 partitions):
//!
//! ```text
//! THRONG_SOAK_CYCLES=100 THRONG_SOAK_PARTITIONS=20 THRONG_SOAK_LEAVES=10 \
//!   cargo test -p throng-node --test soak -- --nocapture
//! ```
//!
//! (add `--ignored` for the `sync` counters). Settings: `THRONG_SOAK_SEED=N` replays a schedule
//! (a failure prints its seed; timing is the machine's, so a replay repeats the faults, not every
//! interleaving); `THRONG_SOAK_KEYS` the number of counters (default 16);
//! `THRONG_SOAK_FAULTS=kill,leave,partition` the kinds of fault; `THRONG_SOAK_AUDIT=0` checks the
//! counters only at the end; `THRONG_SOAK_COUNT_LOSSES=1` counts lost increments and goes on
//! (failing at the end); `THRONG_SOAK_LOG_LEVEL` the nodes' log level (default `info`; e.g.
//! `debug,throng::dir_msgs=trace` also logs every directory message each node sends and
//! receives, to follow one counter's copies);
//! `THRONG_SOAK_KEEP=1` keeps the logs of a passing run. A failing run keeps its directory (the
//! nodes' stderr and stdout, the driver's event trace `events.log`) and prints its path.
//!
//! Without root or iproute2 (or with `THRONG_SOAK_NETNS=0`) the soak runs on loopback without
//! partitions, unless `THRONG_NETNS_REQUIRED=1` (set by `.ci/run` where namespaces can be made),
//! which fails it.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "soak-test-secret-0123456789abcdef";
/// The first three octets of the private /24 that exists only inside the soak's namespaces.
const SUBNET: &str = "10.231.8";
/// Every node has its own namespace, hence its own port space: all use the same ports.
const GOSSIP_PORT: u16 = 7946;
const RPC_PORT: u16 = 7947;
/// Prefix of every namespace name the soak creates.
const NS_PREFIX: &str = "throng-soak-";
/// Nodes in the cluster (also the sync counters' quorum size).
const NODES: usize = 5;
/// Nodes `0..CLIENTS` run the workload and are never killed nor made to leave.
const CLIENTS: usize = 2;
/// How long the cluster may take to see every node up after a restart or a heal.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long every counter may take to run once after the view converged.
const SETTLE: Duration = Duration::from_secs(60);
/// How long one answer to a command may take.
const ANSWER: Duration = Duration::from_secs(60);
/// How long the counters may take to satisfy the check once the clients stopped (a restarted
/// node merges what it recovers from its disk within `RECOVERY_MAX_WAIT`, 10 s).
const AUDIT: Duration = Duration::from_secs(20);
/// Pause between two polls of the nodes' state.
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Configuration, randomness, errors

/// What one soak run does.
#[derive(Clone, Debug)]
struct Config {
    seed: u64,
    kills: usize,
    partitions: usize,
    leaves: usize,
    keys: u64,
    log_level: String,
    keep: bool,
    /// The kinds of fault the schedule draws from (`THRONG_SOAK_FAULTS=kill,leave,partition`).
    kinds: Vec<String>,
    /// Check every counter after every fault (`THRONG_SOAK_AUDIT=0`: only at the end).
    audit: bool,
    /// Count lost increments and go on (`THRONG_SOAK_COUNT_LOSSES=1`) instead of stopping.
    count_losses: bool,
    /// The counters: `merge` (`m-0`.., merging copies) or `sync` (`s-0`.., the default merge).
    counter: &'static str,
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

impl Config {
    /// The short run by default; `THRONG_SOAK_*` variables make it longer or replay a seed.
    fn from_env(counter: &'static str) -> Config {
        let kills = env_num("THRONG_SOAK_CYCLES").unwrap_or(6) as usize;
        let seed = env_num("THRONG_SOAK_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(32)
        });
        Config {
            seed,
            kills,
            partitions: env_num("THRONG_SOAK_PARTITIONS")
                .map(|p| p as usize)
                .unwrap_or((kills / 5).max(2)),
            leaves: env_num("THRONG_SOAK_LEAVES")
                .map(|l| l as usize)
                .unwrap_or((kills / 10).max(1)),
            keys: env_num("THRONG_SOAK_KEYS").unwrap_or(16).max(1),
            log_level: std::env::var("THRONG_SOAK_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            keep: std::env::var("THRONG_SOAK_KEEP").as_deref() == Ok("1"),
            kinds: std::env::var("THRONG_SOAK_FAULTS")
                .unwrap_or_else(|_| "kill,leave,partition".into())
                .split(',')
                .map(|k| k.trim().to_owned())
                .collect(),
            audit: std::env::var("THRONG_SOAK_AUDIT").as_deref() != Ok("0"),
            count_losses: std::env::var("THRONG_SOAK_COUNT_LOSSES").as_deref() == Ok("1"),
            counter,
        }
    }
}

/// SplitMix64: the soak's only source of randomness, drawn from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Why a soak run failed.
#[derive(Debug)]
enum SoakError {
    /// The machine or the test's own plumbing failed (namespaces, spawning, pipes).
    Setup(String),
    /// A node process ended when it should have run.
    Exited { node: String },
    /// A condition did not hold within its deadline.
    Deadline { what: String, after: Duration },
    /// A node answered something the soak cannot read.
    BadAnswer { node: String, line: String },
    /// An acknowledged increment is missing from its counter.
    Lost {
        after: String,
        key: usize,
        acked: u64,
        doubts: u64,
        value: i64,
    },
    /// A counter holds more than its acknowledged and failed increments.
    Doubled {
        after: String,
        key: usize,
        acked: u64,
        doubts: u64,
        value: i64,
    },
    /// A long-lived node grew more than the soak allows.
    Leak { node: String, what: String },
}

impl fmt::Display for SoakError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SoakError::Setup(e) => write!(f, "setup: {e}"),
            SoakError::Exited { node } => write!(f, "{node} exited unexpectedly"),
            SoakError::Deadline { what, after } => write!(f, "not within {after:?}: {what}"),
            SoakError::BadAnswer { node, line } => write!(f, "{node} answered {line}"),
            SoakError::Lost {
                after,
                key,
                acked,
                doubts,
                value,
            } => write!(
                f,
                "LOST after {after}: counter {key} holds {value} but {acked} increments were \
                 acknowledged ({doubts} in doubt)"
            ),
            SoakError::Doubled {
                after,
                key,
                acked,
                doubts,
                value,
            } => write!(
                f,
                "DOUBLED after {after}: counter {key} holds {value}, more than {acked} acknowledged \
                 + {doubts} in doubt"
            ),
            SoakError::Leak { node, what } => write!(f, "{node} leaked: {what}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The network: namespaces and a bridge (as in tests/netns.rs), or loopback

/// Runs `ip` with `args`; the error carries the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Deletes namespaces left by earlier soaks that were killed before their guard ran.
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The switch namespace with its bridge and one namespace per node; every namespace it made is
/// deleted when it is dropped.
struct Netns {
    prefix: String,
    created: Vec<String>,
}

impl Netns {
    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Node `i`'s namespace (`i` from 1).
    fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn add_ns(&mut self, name: String) -> Result<(), String> {
        ip(&["netns", "add", &name])?;
        self.created.push(name);
        Ok(())
    }

    /// Builds the switch and `nodes` node namespaces, node `i` at `SUBNET.i` on its `eth0`, whose
    /// peer `v{i}` is a port of the bridge. `Ok(None)`: namespaces cannot be made here.
    fn build(nodes: usize, tag: &str) -> Result<Option<Netns>, SoakError> {
        let mut net = Netns {
            prefix: format!("{NS_PREFIX}{}-{tag}-", std::process::id()),
            created: Vec::new(),
        };
        let sw = net.switch();
        if let Err(e) = net.add_ns(sw.clone()) {
            eprintln!("soak: cannot create a network namespace: {e}");
            return Ok(None);
        }
        let step = |r: Result<(), String>| r.map_err(SoakError::Setup);
        for i in 1..=nodes {
            step(net.add_ns(net.node_ns(i)))?;
        }
        step(ip(&["-n", &sw, "link", "set", "lo", "up"]))?;
        step(ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]))?;
        step(ip(&["-n", &sw, "link", "set", "br0", "up"]))?;
        for i in 1..=nodes {
            let ns = net.node_ns(i);
            let port = format!("v{i}");
            let addr = format!("{SUBNET}.{i}/24");
            step(ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]))?;
            step(ip(&["-n", &sw, "link", "set", &port, "master", "br0"]))?;
            step(ip(&["-n", &sw, "link", "set", &port, "up"]))?;
            step(ip(&["-n", &ns, "link", "set", "lo", "up"]))?;
            step(ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]))?;
            step(ip(&["-n", &ns, "link", "set", "eth0", "up"]))?;
        }
        Ok(Some(net))
    }

    /// Takes node `i`'s bridge port down (`up == false`) or up again.
    fn set_port(&self, i: usize, up: bool) -> Result<(), SoakError> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &format!("v{i}"), state])
            .map_err(SoakError::Setup)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Whether this machine can run partitions; `Err` when it must and cannot.
fn netns_usable() -> Result<bool, SoakError> {
    let required = std::env::var("THRONG_NETNS_REQUIRED").as_deref() == Ok("1");
    if std::env::var("THRONG_SOAK_NETNS").as_deref() == Ok("0") && !required {
        eprintln!("soak: THRONG_SOAK_NETNS=0: running on loopback, without partitions");
        return Ok(false);
    }
    let reason = match effective_uid() {
        Some(0) => {
            let ip_ok = Command::new("ip")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if ip_ok {
                return Ok(true);
            }
            "`ip` (iproute2) is not installed".to_owned()
        }
        Some(uid) => format!("network namespaces need root (running as uid {uid})"),
        None => "cannot read the effective uid".to_owned(),
    };
    if required {
        return Err(SoakError::Setup(format!(
            "THRONG_NETNS_REQUIRED=1 but: {reason}"
        )));
    }
    eprintln!("soak: {reason}: running on loopback, without partitions");
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// Node processes

/// The acknowledged and failed increments the clients printed, per counter.
#[derive(Default)]
struct Tally {
    acked: Vec<u64>,
    doubts: Vec<u64>,
    /// `child_conflict` lines (copies of one counter that met and were merged; each node
    /// involved reports its own) and `child_failed_over` lines, of every node.
    conflicts: u64,
    failovers: u64,
}

impl Tally {
    fn total_acked(&self) -> u64 {
        self.acked.iter().sum()
    }
}

/// The number after `"field":` in a JSON line.
fn number(line: &str, field: &str) -> Option<i64> {
    let rest = line.split(&format!("\"{field}\":")).nth(1)?;
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// The list after `"field":[` in a JSON line; `None` entries for `null`.
fn list(line: &str, field: &str) -> Option<Vec<Option<i64>>> {
    let rest = line.split(&format!("\"{field}\":[")).nth(1)?;
    let body = &rest[..rest.find(']')?];
    if body.is_empty() {
        return Some(Vec::new());
    }
    Some(body.split(',').map(|v| v.parse().ok()).collect())
}

/// One run of a `throng-node` process: its stdout's lines (the `ack` and `doubt` lines go to the
/// tally instead) and what it last said about each other node.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The last `node_up` (true) or `node_down` (false) this run printed about each other node.
    up: BTreeMap<String, bool>,
}

impl Proc {
    /// Starts node `i` (from 1) of `lab`.
    fn start(lab: &Lab, i: usize) -> Result<Proc, SoakError> {
        let name = format!("n{i}");
        let bin = env!("CARGO_BIN_EXE_throng-node");
        let mut cmd = match &lab.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.node_ns(i), bin]);
                c
            }
            None => Command::new(bin),
        };
        let (gossip, rpc) = lab.addrs(i);
        let logs = lab.dir.join("logs");
        let open = |suffix: &str| -> Result<File, SoakError> {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(logs.join(format!("{name}.{suffix}")))
                .map_err(|e| SoakError::Setup(format!("log file: {e}")))
        };
        let mut err_log = open("stderr")?;
        let _ = writeln!(err_log, "==== soak: {name} starts");
        let mut child = cmd
            .env("THRONG_NAME", &name)
            .env("THRONG_SECRET", SECRET)
            .env("THRONG_GOSSIP_BIND", gossip)
            .env("THRONG_RPC_BIND", rpc)
            .env("THRONG_SEEDS", &lab.seeds)
            .env("THRONG_DETECTION", "fast")
            .env("THRONG_DATA_DIR", lab.dir.join("data").join(&name))
            .env("THRONG_SYNC_QUORUM", NODES.to_string())
            .env("RUST_LOG", &lab.cfg.log_level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_log))
            .spawn()
            .map_err(|e| SoakError::Setup(format!("spawn {name}: {e}")))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| SoakError::Setup("no stdout".into()))?;
        let mut out_log = open("stdout")?;
        let _ = writeln!(out_log, "==== soak: {name} starts");
        let tally = lab.tally.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let ack = line.contains("\"event\":\"ack\"");
                if ack || line.contains("\"event\":\"doubt\"") {
                    if let Some(k) = number(&line, "k") {
                        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                        let counts = if ack { &mut t.acked } else { &mut t.doubts };
                        if let Some(c) = counts.get_mut(k as usize) {
                            *c += 1;
                        }
                    }
                    continue;
                }
                let conflict = line.contains("\"event\":\"child_conflict\"");
                if conflict || line.contains("\"event\":\"child_failed_over\"") {
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    if conflict {
                        t.conflicts += 1;
                    } else {
                        t.failovers += 1;
                    }
                }
                let _ = writeln!(out_log, "{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name,
            child,
            lines: rx,
            seen: Vec::new(),
            up: BTreeMap::new(),
        })
    }

    fn take(&mut self, line: String) {
        let about = line
            .split("\"node\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_owned);
        if let Some(other) = about.filter(|o| *o != self.name) {
            if line.contains("\"event\":\"node_up\"") {
                self.up.insert(other, true);
            } else if line.contains("\"event\":\"node_down\"") {
                self.up.insert(other, false);
            }
        }
        self.seen.push(line);
    }

    /// Takes the lines printed so far without waiting.
    fn drain(&mut self) -> Result<(), SoakError> {
        loop {
            match self.lines.try_recv() {
                Ok(l) => self.take(l),
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(SoakError::Exited {
                        node: self.name.clone(),
                    })
                }
            }
        }
    }

    /// Waits for a line at index `from` or later containing every fragment; returns its index.
    fn wait_for(
        &mut self,
        from: usize,
        fragments: &[&str],
        deadline: Duration,
    ) -> Result<usize, SoakError> {
        let matches = |l: &str| fragments.iter().all(|f| l.contains(f));
        let end = Instant::now() + deadline;
        loop {
            if let Some(i) = self.seen.iter().skip(from).position(|l| matches(l)) {
                return Ok(from + i);
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.take(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(SoakError::Deadline {
                        what: format!("{}: a line with {fragments:?}", self.name),
                        after: deadline,
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SoakError::Exited {
                        node: self.name.clone(),
                    })
                }
            }
        }
    }

    /// Sends `cmd` and returns its answer (the next `answer` line).
    fn ask(&mut self, cmd: &str, answer: &str) -> Result<String, SoakError> {
        self.drain()?;
        let from = self.seen.len();
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| SoakError::Setup("no stdin".into()))?;
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .map_err(|_| SoakError::Exited {
                node: self.name.clone(),
            })?;
        let i = self.wait_for(from, &[&format!("\"event\":\"{answer}\"")], ANSWER)?;
        Ok(self.seen[i].clone())
    }

    /// `stats 0`: (resident KiB, live tasks, threads).
    fn stats(&mut self) -> Result<Usage, SoakError> {
        let l = self.ask("stats 0", "stats")?;
        match (
            number(&l, "rss_kb"),
            number(&l, "tasks"),
            number(&l, "threads"),
        ) {
            (Some(r), Some(t), Some(th)) => Ok((r, t, th)),
            _ => Err(SoakError::BadAnswer {
                node: self.name.clone(),
                line: l,
            }),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the node leaves gracefully; waits for its `stopped` line and its exit.
    fn leave(&mut self) -> Result<(), SoakError> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| SoakError::Setup(format!("kill -TERM: {e}")))?;
        if !sent.success() {
            return Err(SoakError::Setup(format!("kill -TERM {pid} failed")));
        }
        let from = self.seen.len();
        match self.wait_for(from, &["\"event\":\"stopped\""], Duration::from_secs(60)) {
            Ok(_) | Err(SoakError::Exited { .. }) => {}
            Err(e) => return Err(e),
        }
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The lab: the nodes, their network, their directories

struct Lab {
    cfg: Config,
    /// The run's directory: `data/` (the nodes' stores), `logs/` (their output, the event trace).
    dir: PathBuf,
    /// `procs[i - 1]`: node `i`'s current run, `None` while it is down.
    procs: Vec<Option<Proc>>,
    tally: Arc<Mutex<Tally>>,
    seeds: String,
    /// Loopback gossip ports (without namespaces).
    ports: Vec<u16>,
    trace: File,
    began: Instant,
    net: Option<Netns>,
    /// Keep `dir` when dropped (a failure, or `THRONG_SOAK_KEEP=1`).
    keep: bool,
    /// Per counter, the acknowledged increments counted lost (`THRONG_SOAK_COUNT_LOSSES=1`).
    lost: Vec<i64>,
    /// The faults after which increments were lost, with how many.
    lossy: Vec<String>,
}

impl Lab {
    fn new(cfg: &Config, net: Option<Netns>) -> Result<Lab, SoakError> {
        let dir = std::env::temp_dir().join(format!(
            "throng-soak-{}-{}",
            std::process::id(),
            cfg.counter
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))
            .and_then(|()| std::fs::create_dir_all(dir.join("data")))
            .map_err(|e| SoakError::Setup(format!("{}: {e}", dir.display())))?;
        let ports: Vec<u16> = if net.is_some() {
            Vec::new()
        } else {
            let sockets = (0..NODES)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SoakError::Setup(format!("free ports: {e}")))?;
            sockets
                .iter()
                .map(|s| s.local_addr().map(|a| a.port()))
                .collect::<Result<_, _>>()
                .map_err(|e| SoakError::Setup(format!("free ports: {e}")))?
        };
        let trace = File::create(dir.join("logs").join("events.log"))
            .map_err(|e| SoakError::Setup(format!("event trace: {e}")))?;
        let mut lab = Lab {
            cfg: cfg.clone(),
            dir,
            procs: (0..NODES).map(|_| None).collect(),
            tally: Arc::new(Mutex::new(Tally {
                acked: vec![0; cfg.keys as usize],
                doubts: vec![0; cfg.keys as usize],
                ..Tally::default()
            })),
            seeds: String::new(),
            ports,
            trace,
            began: Instant::now(),
            net,
            keep: cfg.keep,
            lost: vec![0; cfg.keys as usize],
            lossy: Vec::new(),
        };
        lab.seeds = (1..=NODES)
            .map(|i| lab.addrs(i).0)
            .collect::<Vec<_>>()
            .join(",");
        Ok(lab)
    }

    /// Node `i`'s gossip and RPC bind addresses.
    fn addrs(&self, i: usize) -> (String, String) {
        match &self.net {
            Some(_) => (
                format!("{SUBNET}.{i}:{GOSSIP_PORT}"),
                format!("{SUBNET}.{i}:{RPC_PORT}"),
            ),
            None => (
                format!("127.0.0.1:{}", self.ports[i - 1]),
                "127.0.0.1:0".to_owned(),
            ),
        }
    }

    /// Writes one line to the event trace (and stderr).
    fn note(&mut self, what: &str) {
        let line = format!("[{:>8.3}s] {what}", self.began.elapsed().as_secs_f64());
        let _ = writeln!(self.trace, "{line}");
        eprintln!("soak: {line}");
    }

    fn proc(&mut self, i: usize) -> Result<&mut Proc, SoakError> {
        self.procs[i - 1].as_mut().ok_or_else(|| SoakError::Exited {
            node: format!("n{i}"),
        })
    }

    fn live(&self) -> Vec<usize> {
        (1..=NODES)
            .filter(|i| self.procs[i - 1].is_some())
            .collect()
    }

    /// Starts node `i` (which is down); the other nodes' last word about it is forgotten, so the
    /// next convergence waits for them to see this run up.
    fn start(&mut self, i: usize) -> Result<(), SoakError> {
        let name = format!("n{i}");
        for p in self.procs.iter_mut().flatten() {
            p.drain()?;
            p.up.insert(name.clone(), false);
        }
        let p = Proc::start(self, i)?;
        self.procs[i - 1] = Some(p);
        Ok(())
    }

    /// Waits until every running node sees every other running node up; returns when.
    fn converge(&mut self) -> Result<Instant, SoakError> {
        let live = self.live();
        let deadline = Instant::now() + CONVERGE;
        loop {
            let mut missing = Vec::new();
            for &i in &live {
                let p = self.proc(i)?;
                p.drain()?;
                for &j in &live {
                    let other = format!("n{j}");
                    if j != i && p.up.get(&other) != Some(&true) {
                        missing.push(format!("{} does not see {other}", p.name));
                    }
                }
            }
            if missing.is_empty() {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                return Err(SoakError::Deadline {
                    what: format!("view convergence: {missing:?}"),
                    after: CONVERGE,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Where each counter runs: `hosted[k]` lists the nodes running `s-k`.
    fn hosted(&mut self) -> Result<Vec<Vec<usize>>, SoakError> {
        let (keys, counter) = (self.cfg.keys, self.cfg.counter);
        let mut hosted = vec![Vec::new(); keys as usize];
        for i in self.live() {
            let p = self.proc(i)?;
            let line = p.ask(&format!("hosted {keys} {}", counter), "hosted")?;
            let here = list(&line, "k").ok_or_else(|| SoakError::BadAnswer {
                node: p.name.clone(),
                line: line.clone(),
            })?;
            for k in here.into_iter().flatten() {
                if let Some(h) = hosted.get_mut(k as usize) {
                    h.push(i);
                }
            }
        }
        Ok(hosted)
    }

    /// Waits until every counter runs on exactly one node; returns when.
    fn settle(&mut self) -> Result<Instant, SoakError> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let hosted = self.hosted()?;
            if hosted.iter().all(|h| h.len() == 1) {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                let bad: Vec<String> = hosted
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.len() != 1)
                    .map(|(k, h)| format!("counter {k} runs on {h:?}"))
                    .collect();
                return Err(SoakError::Deadline {
                    what: format!("every counter running exactly once: {bad:?}"),
                    after: SETTLE,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts the clients' workers (`hammer`).
    fn hammer(&mut self) -> Result<(), SoakError> {
        let (keys, counter) = (self.cfg.keys, self.cfg.counter);
        for c in 1..=CLIENTS {
            self.proc(c)?
                .ask(&format!("hammer {keys} {}", counter), "hammering")?;
        }
        Ok(())
    }

    /// Stops the clients (every increment sent is answered or failed) and checks every counter
    /// against what they were told: `acked ≤ value ≤ acked + doubts`, allowing `AUDIT` for the
    /// copies a restarted node recovers from its disk to be merged. Returns the increments applied
    /// without an acknowledgement. The clients stay stopped. With `THRONG_SOAK_COUNT_LOSSES=1` a
    /// loss is counted (and later readings judged net of it) instead of ending the soak.
    fn audit(&mut self, after: &str) -> Result<i64, SoakError> {
        let (keys, counter) = (self.cfg.keys, self.cfg.counter);
        for c in 1..=CLIENTS {
            self.proc(c)?.ask("unhammer 0", "unhammered")?;
        }
        let deadline = Instant::now() + AUDIT;
        loop {
            let values = self
                .proc(1)?
                .ask(&format!("values {keys} {counter}"), "values")?;
            let verdict = match list(&values, "v").filter(|v| v.len() == keys as usize) {
                Some(got) => self.judge(after, &got),
                None => Err(SoakError::BadAnswer {
                    node: "n1".into(),
                    line: values,
                }),
            };
            let last = Instant::now() >= deadline;
            match verdict {
                Ok(v) if v.missing.is_empty() => return Ok(v.extra),
                Ok(v) if last && self.cfg.count_losses => {
                    let mut lost = 0;
                    for m in &v.missing {
                        let missing = m.acked as i64 - self.lost[m.key] - m.value;
                        self.lost[m.key] += missing;
                        lost += missing;
                    }
                    let which: Vec<String> = v
                        .missing
                        .iter()
                        .map(|m| format!("#{} {} of {}", m.key, m.value, m.acked))
                        .collect();
                    self.note(&format!(
                        "LOST {lost} acknowledged increments of {} counters after {after} ({})",
                        v.missing.len(),
                        which.join(", ")
                    ));
                    self.lossy.push(format!("{after}: {lost}"));
                    return Ok(v.extra);
                }
                Ok(mut v) if last => return Err(v.missing.swap_remove(0).lost()),
                Err(e) if last => return Err(e),
                Ok(_) | Err(_) => std::thread::sleep(POLL * 4),
            }
        }
    }

    /// Checks one reading of every counter against the tally (net of the increments already
    /// counted lost).
    fn judge(&self, after: &str, got: &[Option<i64>]) -> Result<Verdict, SoakError> {
        let tally = self
            .tally
            .lock()
            .map_err(|_| SoakError::Setup("tally poisoned".into()))?;
        let mut verdict = Verdict {
            extra: 0,
            missing: Vec::new(),
        };
        for (k, v) in got.iter().enumerate() {
            let (acked, doubts) = (tally.acked[k], tally.doubts[k]);
            let Some(value) = *v else {
                return Err(SoakError::Deadline {
                    what: format!("counter {k} answering after {after}"),
                    after: AUDIT,
                });
            };
            let kept = acked as i64 - self.lost[k];
            if value > kept + doubts as i64 {
                return Err(SoakError::Doubled {
                    after: after.to_owned(),
                    key: k,
                    acked,
                    doubts,
                    value,
                });
            }
            if value < kept {
                verdict.missing.push(Missing {
                    after: after.to_owned(),
                    key: k,
                    acked,
                    doubts,
                    value,
                });
            } else {
                verdict.extra += value - kept;
            }
        }
        Ok(verdict)
    }

    /// Waits until the clients' acknowledged increments grow past what they are now.
    fn progress(&mut self) -> Result<(), SoakError> {
        let acked = |lab: &Lab| lab.tally.lock().map_or(0, |t| t.total_acked());
        let before = acked(self);
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        while acked(self) <= before {
            if Instant::now() >= deadline {
                return Err(SoakError::Deadline {
                    what: format!("a new acknowledged increment (stuck at {before})"),
                    after: limit,
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            p.kill();
        }
        if std::thread::panicking() {
            self.keep = true;
        }
        if self.keep {
            eprintln!("soak: logs kept in {}", self.dir.join("logs").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // Then `net` is dropped: the namespaces go once nothing runs in them.
    }
}

// ---------------------------------------------------------------------------------------------
// The schedule and the run

/// One fault of the schedule.
#[derive(Clone, Debug)]
enum Fault {
    /// SIGKILL node `node`; restart it at once (`wait_down == false`) or once the others
    /// declared it down.
    Kill { node: usize, wait_down: bool },
    /// Cut `nodes` off the bridge until every side declared the other down, then heal.
    Partition { nodes: Vec<usize> },
    /// SIGTERM node `node` (a graceful leave), then start it again.
    Leave { node: usize },
}

/// The faults of a run, in order, drawn from the seed.
fn schedule(cfg: &Config, partitions: bool, rng: &mut Rng) -> Vec<Fault> {
    let mut faults = Vec::new();
    let kind = |k: &str| cfg.kinds.iter().any(|c| c == k);
    let kills = if kind("kill") { cfg.kills } else { 0 };
    let leaves = if kind("leave") { cfg.leaves } else { 0 };
    let partitions = partitions && kind("partition");
    for _ in 0..kills {
        faults.push(Fault::Kill {
            node: CLIENTS + 1 + rng.below(NODES - CLIENTS),
            wait_down: rng.coin(),
        });
    }
    for _ in 0..leaves {
        faults.push(Fault::Leave {
            node: CLIENTS + 1 + rng.below(NODES - CLIENTS),
        });
    }
    if partitions {
        for _ in 0..cfg.partitions {
            let a = 1 + rng.below(NODES);
            let mut nodes = vec![a];
            if rng.coin() {
                let b = 1 + rng.below(NODES - 1);
                nodes.push(if b >= a { b + 1 } else { b });
            }
            nodes.sort_unstable();
            faults.push(Fault::Partition { nodes });
        }
    }
    // Fisher-Yates.
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.below(i + 1));
    }
    faults
}

/// A node's resident memory (KiB), live tokio tasks and threads (`stats 0`).
type Usage = (i64, i64, i64);

/// One reading of every counter, judged.
struct Verdict {
    /// Increments applied without an acknowledgement.
    extra: i64,
    /// Counters holding fewer than their acknowledged increments.
    missing: Vec<Missing>,
}

/// A counter holding fewer than its acknowledged increments.
struct Missing {
    after: String,
    key: usize,
    acked: u64,
    doubts: u64,
    value: i64,
}

impl Missing {
    fn lost(self) -> SoakError {
        SoakError::Lost {
            after: self.after,
            key: self.key,
            acked: self.acked,
            doubts: self.doubts,
            value: self.value,
        }
    }
}

/// What a run measured.
#[derive(Debug, Default)]
struct Summary {
    kills: usize,
    partitions: usize,
    leaves: usize,
    acked: u64,
    doubts: u64,
    /// Increments applied without an acknowledgement (failed calls that took effect).
    extra: i64,
    /// From each heal to every counter running once.
    heal_settle: Vec<Duration>,
    /// From each restart to every counter running once.
    restart_settle: Vec<Duration>,
    /// Acknowledged increments lost (counted with `THRONG_SOAK_COUNT_LOSSES=1`), and after which
    /// faults.
    lost: i64,
    lossy: Vec<String>,
    /// `child_conflict` and `child_failed_over` lines the nodes printed.
    conflicts: u64,
    failovers: u64,
    /// Per long-lived node: (name, start (rss KiB, tasks, threads), end).
    usage: Vec<(String, Usage, Usage)>,
    elapsed: Duration,
}

fn max_and_median(v: &[Duration]) -> (Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (
        s.last().copied().unwrap_or_default(),
        s.get(s.len() / 2).copied().unwrap_or_default(),
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (heal_max, heal_med) = max_and_median(&self.heal_settle);
        let (restart_max, restart_med) = max_and_median(&self.restart_settle);
        write!(
            f,
            "kills {}, partitions {}, leaves {}, acked {}, in doubt {}, applied unacknowledged {}, \
             lost {}, doubled 0; conflicts {}, failovers {}; settle after restart max \
             {restart_max:.2?} (median {restart_med:.2?}); ",
            self.kills,
            self.partitions,
            self.leaves,
            self.acked,
            self.doubts,
            self.extra,
            self.lost,
            self.conflicts,
            self.failovers
        )?;
        if !self.heal_settle.is_empty() {
            write!(
                f,
                "settle after heal max {heal_max:.2?} (median {heal_med:.2?}); "
            )?;
        }
        for (name, (r0, t0, h0), (r1, t1, h1)) in &self.usage {
            write!(
                f,
                "{name} rss {r0}->{r1} KiB tasks {t0}->{t1} threads {h0}->{h1}; "
            )?;
        }
        write!(f, "in {:.1?}", self.elapsed)
    }
}

/// Runs one soak; `Ok` only if every check passed.
fn soak(lab: &mut Lab, rng: &mut Rng) -> Result<Summary, SoakError> {
    let (keys, counter) = (lab.cfg.keys, lab.cfg.counter);
    let mut summary = Summary::default();
    for i in 1..=NODES {
        lab.start(i)?;
    }
    lab.converge()?;
    lab.note("cluster of 5 formed");
    let started = lab
        .proc(1)?
        .ask(&format!("start {keys} {}", counter), "started")?;
    if number(&started, "failed") != Some(0) {
        return Err(SoakError::BadAnswer {
            node: "n1".into(),
            line: started,
        });
    }
    lab.hammer()?;
    lab.settle()?;
    lab.progress()?;
    let mut before = Vec::new();
    for c in 1..=CLIENTS {
        before.push(lab.proc(c)?.stats()?);
    }
    let faults = schedule(&lab.cfg, lab.net.is_some(), rng);
    lab.note(&format!("workload running; {} faults", faults.len()));

    let merges = |lab: &Lab| {
        lab.tally
            .lock()
            .map_or((0, 0), |t| (t.conflicts, t.failovers))
    };
    for (n, fault) in faults.iter().enumerate() {
        lab.note(&format!("fault {}/{}: {fault:?}", n + 1, faults.len()));
        let (conflicts, failovers) = merges(lab);
        match fault {
            Fault::Kill { node, wait_down } => {
                lab.proc(*node)?.kill();
                lab.procs[node - 1] = None;
                if *wait_down {
                    let name = format!("n{node}");
                    let deadline = Instant::now() + CONVERGE;
                    for i in lab.live() {
                        let p = lab.proc(i)?;
                        while p.up.get(&name) != Some(&false) {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let _ = p.wait_for(p.seen.len(), &["node_down", &name], left)?;
                        }
                    }
                }
                let restarted = Instant::now();
                lab.start(*node)?;
                lab.converge()?;
                let settled = lab.settle()?;
                summary.restart_settle.push(settled - restarted);
                summary.kills += 1;
            }
            Fault::Leave { node } => {
                lab.proc(*node)?.leave()?;
                lab.procs[node - 1] = None;
                let restarted = Instant::now();
                lab.start(*node)?;
                lab.converge()?;
                let settled = lab.settle()?;
                summary.restart_settle.push(settled - restarted);
                summary.leaves += 1;
            }
            Fault::Partition { nodes } => {
                let Some(net) = &lab.net else {
                    continue;
                };
                for &i in nodes {
                    net.set_port(i, false)?;
                }
                // Every side declares the other down.
                let deadline = Instant::now() + CONVERGE;
                for i in lab.live() {
                    let cut = nodes.contains(&i);
                    let far: Vec<String> = (1..=NODES)
                        .filter(|j| *j != i && nodes.contains(j) != cut)
                        .map(|j| format!("n{j}"))
                        .collect();
                    let p = lab.proc(i)?;
                    for other in far {
                        while p.up.get(&other) != Some(&false) {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let _ = p.wait_for(p.seen.len(), &["node_down", &other], left)?;
                        }
                    }
                }
                lab.note(&format!(
                    "both sides of the cut of {nodes:?} declared the other down"
                ));
                let net = lab
                    .net
                    .as_ref()
                    .ok_or_else(|| SoakError::Setup("net".into()))?;
                let healed = Instant::now();
                for &i in nodes {
                    net.set_port(i, true)?;
                }
                lab.converge()?;
                let settled = lab.settle()?;
                summary.heal_settle.push(settled - healed);
                summary.partitions += 1;
            }
        }
        if lab.cfg.audit {
            // Every counter is checked after every fault: a loss names the fault that made it.
            lab.audit(&format!("fault {}/{} ({fault:?})", n + 1, faults.len()))?;
            lab.hammer()?;
        }
        let (c, f) = merges(lab);
        lab.note(&format!(
            "fault {}/{}: {} conflicts, {} failovers reported",
            n + 1,
            faults.len(),
            c - conflicts,
            f - failovers
        ));
        // The clients are acknowledged again before the next fault.
        lab.progress()?;
    }

    // The end: everything is healed and running; stop the clients and check every counter.
    lab.converge()?;
    lab.settle()?;
    let mut after = Vec::new();
    for c in 1..=CLIENTS {
        after.push(lab.proc(c)?.stats()?);
    }
    lab.note("stopping the clients; checking every counter");
    summary.extra = lab.audit("the last fault")?;
    if let Ok(t) = lab.tally.lock() {
        summary.acked = t.total_acked();
        summary.doubts = t.doubts.iter().sum();
        summary.conflicts = t.conflicts;
        summary.failovers = t.failovers;
    }
    let hosted = lab.hosted()?;
    if let Some((k, h)) = hosted.iter().enumerate().find(|(_, h)| h.len() != 1) {
        return Err(SoakError::Deadline {
            what: format!("counter {k} runs on {h:?} after the clients stopped"),
            after: Duration::ZERO,
        });
    }
    for (c, (b, a)) in before.into_iter().zip(after).enumerate() {
        summary.usage.push((format!("n{}", c + 1), b, a));
    }
    // Leaks: a task or two per fault, or memory that doubled (plus slack for the allocator),
    // is a leak; the figures themselves are in the summary.
    let faults = faults.len() as i64;
    for (name, (r0, t0, _), (r1, t1, _)) in &summary.usage {
        if *t1 > t0 + 16 + faults / 4 {
            return Err(SoakError::Leak {
                node: name.clone(),
                what: format!("{t0} tasks at the start, {t1} at the end, after {faults} faults"),
            });
        }
        if *r1 > 2 * r0 + 64 * 1024 {
            return Err(SoakError::Leak {
                node: name.clone(),
                what: format!("{r0} KiB resident at the start, {r1} KiB at the end"),
            });
        }
    }
    summary.lost = lab.lost.iter().sum();
    summary.lossy = lab.lossy.clone();
    summary.elapsed = lab.began.elapsed();
    Ok(summary)
}

/// The soak over merging counters (short by default; see the module doc for the long run).
#[test]
fn chaos_soak_merging_counters_lose_and_double_no_acknowledged_increment() {
    run("merge");
}

/// The soak over the plain `Durability::Sync` counters, whose conflicting copies keep one side's
/// state (`Keyed::resolve_conflict`'s default).
#[test]
#[ignore = "fails: during a partition both sides may acknowledge for a short while (a cut-off \
            owner with its backup on its side, the other side failing over an older copy), and \
            the merge keeps one side (docs/benchmarks.md, \"fifth session\")"]
fn chaos_soak_sync_counters_lose_and_double_no_acknowledged_increment() {
    run("sync");
}

/// One soak at a time in this process (each runs five nodes).
fn one_soak_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SOAK: Mutex<()> = Mutex::new(());
    SOAK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one soak over the `counter` counters (`merge` or `sync`); panics with the seed to replay
/// and where the logs are if a check fails.
fn run(counter: &'static str) {
    let _one = one_soak_at_a_time();
    let cfg = Config::from_env(counter);
    let partitions = netns_usable().unwrap_or_else(|e| panic!("soak (seed {}): {e}", cfg.seed));
    let net = if partitions {
        sweep_stale_namespaces();
        match Netns::build(NODES, counter) {
            Ok(Some(net)) => Some(net),
            Ok(None) if std::env::var("THRONG_NETNS_REQUIRED").as_deref() != Ok("1") => None,
            Ok(None) => panic!("THRONG_NETNS_REQUIRED=1 but no network namespace can be made"),
            Err(e) => panic!("soak (seed {}): {e}", cfg.seed),
        }
    } else {
        None
    };
    let mut rng = Rng(cfg.seed);
    let mut lab = Lab::new(&cfg, net).unwrap_or_else(|e| panic!("soak: {e}"));
    lab.note(&format!(
        "{counter} counters, seed {} ({} kills, {} partitions, {} leaves, {} counters, {})",
        cfg.seed,
        cfg.kills,
        if lab.net.is_some() { cfg.partitions } else { 0 },
        cfg.leaves,
        cfg.keys,
        if lab.net.is_some() {
            "network namespaces"
        } else {
            "loopback"
        }
    ));
    let replay = format!(
        "replay the schedule with THRONG_SOAK_SEED={} THRONG_SOAK_CYCLES={} \
         THRONG_SOAK_PARTITIONS={} THRONG_SOAK_LEAVES={} THRONG_SOAK_KEYS={} \
         THRONG_SOAK_FAULTS={}; logs in {}",
        cfg.seed,
        cfg.kills,
        cfg.partitions,
        cfg.leaves,
        cfg.keys,
        cfg.kinds.join(","),
        lab.dir.join("logs").display()
    );
    match soak(&mut lab, &mut rng) {
        Ok(summary) if summary.lost == 0 => {
            lab.note(&format!("PASSED {counter} seed {}: {summary}", cfg.seed));
        }
        Ok(summary) => {
            lab.keep = true;
            lab.note(&format!("FAILED {counter} seed {}: {summary}", cfg.seed));
            panic!(
                "chaos soak ({counter} counters) lost {} acknowledged increments, after {:?}\n\
                 {replay}",
                summary.lost, summary.lossy
            );
        }
        Err(e) => {
            lab.keep = true;
            lab.note(&format!("FAILED {counter} seed {}: {e}", cfg.seed));
            panic!("chaos soak ({counter} counters) failed: {e}\n{replay}");
        }
    }
}
