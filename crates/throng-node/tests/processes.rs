//! Real OS processes on loopback: three `throng-node` binaries form a cluster, one is killed with
//! SIGKILL and the others declare it down; another leaves gracefully and is seen leaving first.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "process-test-secret-0123456789";

struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(name: &str, gossip: u16, seeds: &str, secret: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_throng-node"))
            .env("THRONG_NAME", name)
            .env("THRONG_SECRET", secret)
            .env("THRONG_GOSSIP_BIND", format!("127.0.0.1:{gossip}"))
            .env("THRONG_SEEDS", seeds)
            .env("THRONG_DETECTION", "fast")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn throng-node");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.into(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Wait until a line containing every fragment has been printed; fail after `deadline`.
    fn wait_for(&mut self, fragments: &[&str], deadline: Duration) -> Instant {
        let end = Instant::now() + deadline;
        let matches = |l: &String| fragments.iter().all(|f| l.contains(f));
        if self.seen.iter().any(matches) {
            return Instant::now();
        }
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = matches(&l);
                    self.seen.push(l);
                    if hit {
                        return Instant::now();
                    }
                }
                Err(_) => panic!(
                    "{}: no line with {fragments:?} within {deadline:?}; saw {:?}",
                    self.name, self.seen
                ),
            }
        }
    }

    fn saw(&self, fragments: &[&str]) -> Option<usize> {
        self.seen
            .iter()
            .position(|l| fragments.iter().all(|f| l.contains(f)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

#[test]
fn sigkilled_node_is_declared_down_and_a_leaving_node_is_seen_leaving() {
    let ports = free_udp_ports(4);
    let seed = format!("127.0.0.1:{}", ports[0]);
    let mut n1 = Proc::start("p1", ports[0], &seed, SECRET);
    let mut n2 = Proc::start("p2", ports[1], &seed, SECRET);
    let mut n3 = Proc::start("p3", ports[2], &seed, SECRET);
    // A node with the wrong secret, seeded with the same cluster, never joins it.
    let mut intruder = Proc::start("px", ports[3], &seed, "not-the-cluster-secret-at-all");
    let up = Duration::from_secs(20);
    for (p, others) in [
        (&mut n1, ["p2", "p3"]),
        (&mut n2, ["p1", "p3"]),
        (&mut n3, ["p1", "p2"]),
    ] {
        for o in others {
            p.wait_for(&["node_up", &format!("\"node\":\"{o}\"")], up);
        }
    }
    intruder.wait_for(&["ready"], up);

    // SIGKILL p3: no goodbye. Both survivors must declare it down (fast profile: within 2 s).
    let killed_at = Instant::now();
    n3.child.kill().unwrap();
    let _ = n3.child.wait();
    for p in [&mut n1, &mut n2] {
        let seen = p.wait_for(&["node_down", "\"node\":\"p3\""], Duration::from_secs(10));
        let took = seen.duration_since(killed_at);
        eprintln!("{} declared p3 down after {took:?}", p.name);
        assert!(took < Duration::from_secs(3), "{} took {took:?}", p.name);
        assert!(
            p.saw(&["node_leaving", "\"node\":\"p3\""]).is_none(),
            "a crash is not a leave"
        );
    }

    // SIGTERM p2: a graceful leave, seen as leaving before down.
    let pid = n2.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    n1.wait_for(&["node_down", "\"node\":\"p2\""], Duration::from_secs(10));
    let leaving = n1
        .saw(&["node_leaving", "\"node\":\"p2\""])
        .expect("p2 announced leaving");
    let down = n1.saw(&["node_down", "\"node\":\"p2\""]).unwrap();
    assert!(leaving < down);
    n2.wait_for(&["stopped"], Duration::from_secs(10));

    for p in [&n1, &n2] {
        assert!(
            p.saw(&["\"node\":\"px\""]).is_none(),
            "{} saw the intruder",
            p.name
        );
    }
    assert!(
        intruder.saw(&["node_up"]).is_none(),
        "the intruder saw a member"
    );
}
