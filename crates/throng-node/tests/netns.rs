//! A real network partition: three `throng-node` processes, each in its own Linux network
//! namespace, plugged into a bridge that lives in a fourth ("switch") namespace. Node 3's port on
//! the bridge is taken down: the two others must declare it down and it must declare both of them
//! down; the port is brought back up: all three must see each other again.
//!
//! Nothing changes in the host's own namespace: the bridge, the veth pairs and the addresses
//! (10.231.7.0/24) exist only inside the namespaces this test creates, which are named after its
//! pid and removed by a guard, even when the test fails.
//!
//! Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2's `ip`. Without them the test prints
//! `skipping: ...` and passes, unless `THRONG_NETNS_REQUIRED=1` is set, in which case it fails.
#![cfg(target_os = "linux")]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "netns-test-secret-0123456789abcdef";
/// The first three octets of the private /24 that exists only inside the test's namespaces.
const SUBNET: &str = "10.231.7";
/// Every node has its own namespace, hence its own port space: all use the same ports.
const GOSSIP_PORT: u16 = 7946;
const RPC_PORT: u16 = 7947;
/// Keyed children the partition test starts.
const CHILDREN: i64 = 200;
/// Prefix of every namespace name this test creates.
const NS_PREFIX: &str = "throng-netns-";
/// How many of each node's last stderr lines are kept, to be shown if the test fails.
const STDERR_KEPT: usize = 60;

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

/// Deletes namespaces left behind by earlier runs of this test that were killed before their guard
/// ran (their pid, part of the name, is gone). Best effort.
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name}");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The namespaces, bridge and links; deletes every namespace it created when dropped (which also
/// destroys the veth pairs and the bridge inside them).
struct Net {
    prefix: String,
    created: Vec<String>,
}

impl Net {
    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn add_ns(&mut self, name: String) -> Result<(), String> {
        ip(&["netns", "add", &name])?;
        self.created.push(name);
        Ok(())
    }

    /// Builds switch namespace + bridge and `nodes` node namespaces, node `i` at `SUBNET.i` on its
    /// `eth0`, whose peer `v{i}` is a port of the bridge. Errors name the failing step; whatever was
    /// created is removed when the returned error drops the partial `Net`.
    fn build(nodes: usize) -> Result<Net, SetupError> {
        let mut net = Net {
            prefix: format!("{NS_PREFIX}{}-", std::process::id()),
            created: Vec::new(),
        };
        let sw = net.switch();
        // The first namespace tells whether we may create namespaces at all.
        net.add_ns(sw.clone()).map_err(SetupError::NoNetns)?;
        let step = |r: Result<(), String>| r.map_err(SetupError::Other);
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
        Ok(net)
    }

    /// Takes node `i`'s bridge port down (`up == false`) or up again.
    fn set_port(&self, i: usize, up: bool) {
        let port = format!("v{i}");
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &port, state]).expect("toggle bridge port");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

enum SetupError {
    /// `ip netns add` is not permitted (or `ip` is missing): not this test's business.
    NoNetns(String),
    /// A later step failed (e.g. no veth or bridge support in this kernel).
    Other(String),
}

/// One `throng-node` process and the JSON lines it printed, each stamped when it was read.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn start(ns: &str, i: usize, seeds: &str) -> Proc {
        let name = format!("n{i}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_throng-node")])
            .env("THRONG_NAME", &name)
            .env("THRONG_SECRET", SECRET)
            .env("THRONG_GOSSIP_BIND", format!("{SUBNET}.{i}:{GOSSIP_PORT}"))
            .env("THRONG_RPC_BIND", format!("{SUBNET}.{i}:{RPC_PORT}"))
            .env("THRONG_SEEDS", seeds)
            .env("THRONG_DETECTION", "fast")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn `ip netns exec ... throng-node`");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == STDERR_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Proc {
            name,
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for a line, at index `from` or later, containing every fragment; returns its index
    /// and when it was read. Fails after `deadline`.
    fn wait_for(
        &mut self,
        from: usize,
        fragments: &[&str],
        deadline: Duration,
    ) -> (usize, Instant) {
        let matches = |l: &str| fragments.iter().all(|f| l.contains(f));
        if let Some(i) = self.seen.iter().skip(from).position(|(_, l)| matches(l)) {
            return (from + i, self.seen[from + i].0);
        }
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, l)) => {
                    let hit = matches(&l);
                    self.seen.push((at, l));
                    if hit {
                        return (self.seen.len() - 1, at);
                    }
                }
                Err(e) => panic!(
                    "{}: no line with {fragments:?} (from line {from}) within {deadline:?} ({e}); \
                     saw {:#?}",
                    self.name,
                    self.seen.iter().map(|(_, l)| l).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Writes one command line to the node's stdin.
    fn send(&mut self, cmd: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write a command");
        stdin.flush().expect("flush");
    }

    /// Sends `cmd` and waits for its answer (`answer` line); returns the line.
    fn ask(&mut self, cmd: &str, answer: &str, deadline: Duration) -> String {
        self.drain();
        let from = self.seen.len();
        self.send(cmd);
        let (i, _) = self.wait_for(from, &[&format!("\"event\":\"{answer}\"")], deadline);
        self.seen[i].1.clone()
    }

    /// Takes whatever lines have been printed so far without waiting.
    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    fn saw_since(&self, from: usize, fragments: &[&str]) -> Option<&str> {
        self.seen
            .iter()
            .skip(from)
            .map(|(_, l)| l.as_str())
            .find(|l| fragments.iter().all(|f| l.contains(f)))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes and the network they run in. Dropping it kills the processes first, then removes
/// the namespaces; if the test is failing it also shows what the nodes logged.
struct Lab {
    procs: Vec<Proc>,
    net: Net,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                let lines = p.stderr.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!("---- last stderr lines of {} ----", p.name);
                for l in lines.iter() {
                    eprintln!("{l}");
                }
            }
        }
        // Then the fields are dropped, `net` last: the namespaces go once nothing runs in them.
    }
}

fn node(n: &str) -> String {
    format!("\"node\":\"{n}\"")
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

fn incarnation(line: &str) -> Option<u64> {
    let rest = line.split("\"incarnation\":").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// This machine cannot run the test: skip it, or fail if `THRONG_NETNS_REQUIRED=1`.
fn skip_or_fail(reason: String) {
    if std::env::var("THRONG_NETNS_REQUIRED").as_deref() == Ok("1") {
        panic!("THRONG_NETNS_REQUIRED=1 but: {reason}");
    }
    eprintln!("skipping: {reason}");
}

#[test]
fn partitioned_node_is_declared_down_on_both_sides_and_rejoins_after_heal() {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return skip_or_fail(format!(
                "network namespaces need root (running as uid {uid})"
            ))
        }
        None => return skip_or_fail("cannot read the effective uid".into()),
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return skip_or_fail("`ip` (iproute2) is not installed; apt-get install iproute2".into());
    }
    sweep_stale_namespaces();
    let net = match Net::build(3) {
        Ok(net) => net,
        Err(SetupError::NoNetns(e)) => {
            return skip_or_fail(format!("cannot create a network namespace: {e}"))
        }
        Err(SetupError::Other(e)) => {
            return skip_or_fail(format!("cannot build the test network: {e}"))
        }
    };

    let seeds = (1..=3)
        .map(|i| format!("{SUBNET}.{i}:{GOSSIP_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let mut lab = Lab {
        procs: Vec::new(),
        net,
    };
    for i in 1..=3 {
        let p = Proc::start(&lab.net.node_ns(i), i, &seeds);
        lab.procs.push(p);
    }
    let names = ["n1", "n2", "n3"];

    // Everyone sees everyone.
    let mut first_up = [0u64; 3];
    for (i, p) in lab.procs.iter_mut().enumerate() {
        p.wait_for(0, &["\"event\":\"ready\""], Duration::from_secs(20));
        for (j, other) in names.iter().enumerate() {
            if i != j {
                let (at, _) = p.wait_for(0, &["node_up", &node(other)], Duration::from_secs(20));
                if *other == "n3" {
                    first_up[i] = incarnation(&p.seen[at].1).expect("incarnation in node_up");
                }
            }
        }
    }
    eprintln!("cluster of 3 formed after {:?}", started.elapsed());

    // Keyed children with state: started from n1, each bumped to 1, replicated to its backup.
    let n = CHILDREN;
    let ok = lab.procs[0].ask(&format!("start {n}"), "started", Duration::from_secs(30));
    assert_eq!(number(&ok, "failed"), Some(0), "{ok}");
    let ok = lab.procs[0].ask(&format!("bump {n}"), "bumped", Duration::from_secs(30));
    assert_eq!(number(&ok, "failed"), Some(0), "{ok}");
    for p in &mut lab.procs {
        p.ask("settle 0", "settled", Duration::from_secs(20));
    }

    // Cut n3 off: its port on the bridge goes down.
    for p in &mut lab.procs {
        p.drain();
    }
    let marks: Vec<usize> = lab.procs.iter().map(|p| p.seen.len()).collect();
    let cut_at = Instant::now();
    lab.net.set_port(3, false);
    let down_deadline = Duration::from_secs(10);
    let mut detections = Vec::new();
    for (i, p) in lab.procs.iter_mut().enumerate() {
        let lost: &[&str] = if i < 2 { &["n3"] } else { &["n1", "n2"] };
        for other in lost {
            let (_, at) = p.wait_for(marks[i], &["node_down", &node(other)], down_deadline);
            let took = at.duration_since(cut_at);
            eprintln!("{} declared {other} down {took:?} after the cut", p.name);
            detections.push(took);
        }
    }
    // The two nodes that can still reach each other stay up to each other.
    for (i, other) in [(0, "n2"), (1, "n1")] {
        let p = &mut lab.procs[i];
        p.drain();
        assert!(
            p.saw_since(marks[i], &["node_down", &node(other)])
                .is_none(),
            "{} declared {other} down although they were never separated",
            p.name
        );
    }

    // Both sides run on (uniform placement): the majority has every child, n3 whatever it ran
    // or held a backup of.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = lab.procs[0].ask(&format!("check {n}"), "checked", Duration::from_secs(30));
        if number(&line, "answered") == Some(n) {
            assert_eq!(
                number(&line, "min"),
                Some(1),
                "state kept through failover: {line}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "majority never answered for all: {line}"
        );
    }
    let line = lab.procs[2].ask(&format!("check {n}"), "checked", Duration::from_secs(60));
    eprintln!("minority during the partition: {line}");
    // The minority changes the state of what it runs (calls to the far side fail): its copies
    // and the majority's differ, so the heal has duplicates to resolve by the rule (identical
    // copies of one child are dropped without a conflict).
    let line = lab.procs[2].ask(&format!("bump {n}"), "bumped", Duration::from_secs(120));
    eprintln!("minority bumps during the partition: {line}");

    // Heal: n3's port comes back.
    for p in &mut lab.procs {
        p.drain();
    }
    let marks: Vec<usize> = lab.procs.iter().map(|p| p.seen.len()).collect();
    let heal_at = Instant::now();
    lab.net.set_port(3, true);
    let heal_deadline = Duration::from_secs(20);
    let mut heals = Vec::new();
    for (i, p) in lab.procs.iter_mut().enumerate() {
        let found: &[&str] = if i < 2 { &["n3"] } else { &["n1", "n2"] };
        for other in found {
            let (idx, at) = p.wait_for(marks[i], &["node_up", &node(other)], heal_deadline);
            let took = at.duration_since(heal_at);
            eprintln!("{} sees {other} up again {took:?} after the heal", p.name);
            heals.push(took);
            if *other == "n3" {
                // The same run (or a newer one) — never an older one.
                let inc = incarnation(&p.seen[idx].1).expect("incarnation in node_up");
                let same = if inc == first_up[i] { "same" } else { "newer" };
                eprintln!("{}: n3 is back with the {same} incarnation", p.name);
                assert!(
                    inc >= first_up[i],
                    "{}: n3 came back with incarnation {inc} < {}",
                    p.name,
                    first_up[i]
                );
            }
        }
    }
    let n3 = &mut lab.procs[2];
    n3.drain();
    match n3.saw_since(marks[2], &["rejoined", &node("n3")]) {
        Some(_) => eprintln!("n3 printed `rejoined`"),
        None => eprintln!("n3 did not print `rejoined`"),
    }
    // A moment later, every node still sees both others up: the last event about each is node_up.
    std::thread::sleep(Duration::from_secs(2));
    for (i, p) in lab.procs.iter_mut().enumerate() {
        p.drain();
        for (j, other) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            let about = node(other);
            let last =
                p.seen.iter().rev().map(|(_, l)| l.as_str()).find(|l| {
                    l.contains(&about) && (l.contains("node_up") || l.contains("node_down"))
                });
            assert!(
                last.is_some_and(|l| l.contains("node_up")),
                "{}: last event about {other} after the heal is {last:?}",
                p.name
            );
        }
    }
    // After the heal every child runs exactly once, on its owner, with its state (1, or 2 where
    // the minority's copy won: the owner's copy wins); the duplicates the partition made were
    // resolved by the rule, and listeners were told.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<String> = lab
            .procs
            .iter_mut()
            .map(|p| p.ask(&format!("check {n}"), "checked", Duration::from_secs(60)))
            .collect();
        let hosted: i64 = lines.iter().filter_map(|l| number(l, "hosted")).sum();
        let all = lines.iter().all(|l| {
            number(l, "answered") == Some(n)
                && number(l, "min") == Some(1)
                && number(l, "max").is_some_and(|m| m <= 2)
        });
        if all && hosted == n {
            eprintln!("after the heal: {lines:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children not settled after the heal (hosted {hosted} of {n}): {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let conflicts: usize = lab
        .procs
        .iter_mut()
        .map(|p| {
            p.drain();
            p.seen
                .iter()
                .filter(|(_, l)| l.contains("child_conflict"))
                .count()
        })
        .sum();
    eprintln!("conflicts resolved after the heal: {conflicts}");
    assert!(conflicts > 0, "the partition made no duplicate to resolve");

    eprintln!(
        "detection: max {:?}; heal: max {:?}",
        detections.iter().max().unwrap(),
        heals.iter().max().unwrap()
    );
}
