//! Discovery by UDP multicast, for real, on loopback: nodes with no seeds find each other through
//! the group, and a node with another secret on the same group never joins.
//!
//! On Linux, multicast on `lo` works without any route as long as the sending socket names its
//! interface (`IP_MULTICAST_IF` = 127.0.0.1, which `MulticastConfig::interface` sets) and
//! `IP_MULTICAST_LOOP` is on. Each test first checks that with a plain pair of sockets. If that
//! fails here and the test runs as root with iproute2's `ip`, it runs itself again inside a fresh
//! network namespace (named after the pid, deleted by a guard), whose `lo` is brought up and given
//! a `224.0.0.0/4` route — the host's own routes are never touched. Otherwise it prints
//! `skipping: ...` and passes, unless `THRONG_MULTICAST_REQUIRED=1`, in which case it fails.
//! `THRONG_MULTICAST_FORCE_NETNS=1` takes the namespace path even when loopback works (to test it).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use throng_core::{Incarnation, NodeId};
use throng_membership::{
    ClusterSecret, DetectionProfile, Membership, MembershipConfig, MulticastConfig,
};
use tokio::time::Instant;

const SECRET: &[u8] = b"multicast-test cluster secret";
const OTHER_SECRET: &[u8] = b"another cluster's secret, same group";
const GROUP_IP: Ipv4Addr = Ipv4Addr::new(239, 255, 47, 32);
const JOIN_DEADLINE: Duration = Duration::from_secs(5);
/// Set in the environment of the copy of a test that runs inside a namespace.
const IN_NETNS: &str = "THRONG_MULTICAST_IN_NETNS";

/// A group port of this test process, `k` telling the tests apart (they run in parallel and must
/// not hear each other; neither must concurrent runs of the test binary).
fn group(k: u16) -> SocketAddrV4 {
    let pid = u16::try_from(std::process::id() % 5000).unwrap();
    SocketAddrV4::new(GROUP_IP, 30_000 + pid * 4 + k)
}

fn config(secret: &[u8], group: SocketAddrV4) -> MembershipConfig {
    let mut config =
        MembershipConfig::new("127.0.0.1:0".parse().unwrap(), ClusterSecret::new(secret));
    config.profile = DetectionProfile::Fast;
    config.multicast = Some(MulticastConfig {
        group,
        interface: Ipv4Addr::LOCALHOST,
        ttl: 1,
        interval: Duration::from_millis(200),
    });
    config
}

async fn start(name: &str, config: MembershipConfig) -> Membership {
    Membership::start(
        NodeId::new(name).unwrap(),
        Incarnation(1),
        "127.0.0.1:9".parse().unwrap(),
        config,
    )
    .await
    .unwrap()
}

fn names(membership: &Membership) -> Vec<String> {
    membership
        .members()
        .iter()
        .map(|m| m.id.to_string())
        .collect()
}

/// Polls `cond` until it holds, or panics after `deadline`.
async fn eventually(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a datagram sent to `group` from 127.0.0.1 comes back to a socket joined to it on
/// 127.0.0.1.
fn multicast_on_loopback_works(group: SocketAddrV4) -> Result<(), String> {
    fn err(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    let receiver = UdpSocket::bind(group).map_err(err("bind the group's port"))?;
    receiver
        .join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
        .map_err(err("join the group on 127.0.0.1"))?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(err("set a timeout"))?;
    let sender = UdpSocket::bind("127.0.0.1:0").map_err(err("bind a sender"))?;
    sender
        .set_multicast_loop_v4(true)
        .map_err(err("IP_MULTICAST_LOOP"))?;
    socket2::SockRef::from(&sender)
        .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .map_err(err("IP_MULTICAST_IF"))?;
    let mut buf = [0; 16];
    for _ in 0..3 {
        sender
            .send_to(b"probe", group)
            .map_err(err("send to the group"))?;
        if let Ok((5, _)) = receiver.recv_from(&mut buf) {
            return Ok(());
        }
    }
    Err(format!("nothing sent to {group} on 127.0.0.1 came back"))
}

/// Runs `body` where multicast on loopback works: here, or in a fresh namespace (see the module
/// docs), or nowhere (skip).
fn run_with_multicast<F: std::future::Future<Output = ()>>(
    test: &str,
    probe_group: SocketAddrV4,
    body: impl FnOnce() -> F,
) {
    let in_netns = std::env::var_os(IN_NETNS).is_some();
    let force_netns = std::env::var("THRONG_MULTICAST_FORCE_NETNS").as_deref() == Ok("1");
    let works = multicast_on_loopback_works(probe_group);
    match works {
        Ok(()) if in_netns || !force_netns => {
            eprintln!(
                "multicast on loopback works {}",
                if in_netns {
                    "in the test's namespace"
                } else {
                    "here"
                }
            );
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        }
        Err(reason) if in_netns => {
            panic!("multicast on loopback fails even in a namespace: {reason}")
        }
        other => {
            let why = other.err().unwrap_or_else(|| "forced".into());
            eprintln!("multicast on loopback: {why}; trying a network namespace");
            if let Err(reason) = rerun_in_netns(test) {
                skip(&format!("{why}; and no namespace: {reason}"));
            }
        }
    }
}

fn skip(reason: &str) {
    if std::env::var("THRONG_MULTICAST_REQUIRED").as_deref() == Ok("1") {
        panic!("THRONG_MULTICAST_REQUIRED=1 but: {reason}");
    }
    eprintln!("skipping: {reason}");
}

/// Deletes the namespace when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs this test binary's `test` again inside a new namespace. `Err` means the namespace could
/// not be made (skip); a failure of the test inside it panics.
fn rerun_in_netns(test: &str) -> Result<(), String> {
    let name = format!("throng-mcast-{}-{test}", std::process::id());
    ip(&["netns", "add", &name])?;
    let ns = Netns(name);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
    // Only inside the namespace: not the host's routes.
    ip(&["-n", &ns.0, "route", "add", "224.0.0.0/4", "dev", "lo"])?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip netns exec`: {e}"))?;
    eprintln!(
        "--- in namespace {} ---\n{}{}",
        ns.0,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the test failed inside the namespace");
    Ok(())
}

#[test]
fn three_nodes_without_seeds_find_each_other() {
    let group = group(0);
    run_with_multicast(
        "three_nodes_without_seeds_find_each_other",
        group,
        || async move {
            let mut nodes = Vec::new();
            for name in ["a", "b", "c"] {
                nodes.push(start(name, config(SECRET, group)).await);
            }
            eventually(JOIN_DEADLINE, "every node sees the two others", || {
                nodes.iter().all(|n| n.members().len() == 2)
            })
            .await;
            assert_eq!(names(&nodes[0]), ["b", "c"]);
            assert_eq!(names(&nodes[1]), ["a", "c"]);
            assert_eq!(names(&nodes[2]), ["a", "b"]);
            for node in &nodes {
                let stats = node.stats();
                assert!(stats.multicast_in > 0, "{stats:?}");
                assert_eq!(stats.refused, 0, "{stats:?}");
            }

            // A node started later is found the same way.
            let d = start("d", config(SECRET, group)).await;
            eventually(JOIN_DEADLINE, "the late node is seen by all", || {
                d.members().len() == 3 && nodes.iter().all(|n| n.members().len() == 3)
            })
            .await;
        },
    );
}

#[test]
fn a_node_with_another_secret_never_joins() {
    let group = group(1);
    run_with_multicast(
        "a_node_with_another_secret_never_joins",
        group,
        || async move {
            let stranger = start("stranger", config(OTHER_SECRET, group)).await;
            let a = start("a", config(SECRET, group)).await;
            let b = start("b", config(SECRET, group)).await;
            eventually(JOIN_DEADLINE, "a and b see each other", || {
                names(&a) == ["b"] && names(&b) == ["a"]
            })
            .await;
            // Several multicast rounds (200 ms) later, still apart.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(names(&a), ["b"]);
            assert_eq!(names(&b), ["a"]);
            assert!(stranger.members().is_empty());
            // Each side heard, and refused, the other's Hellos.
            assert!(
                stranger.stats().multicast_refused > 0,
                "{:?}",
                stranger.stats()
            );
            assert!(a.stats().multicast_refused > 0, "{:?}", a.stats());
            assert_eq!(stranger.stats().refused, stranger.stats().multicast_refused);
        },
    );
}

#[tokio::test]
async fn bad_multicast_config_is_refused_at_start() {
    let mut config = config(SECRET, group(2));
    if let Some(m) = &mut config.multicast {
        m.group = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 4000);
    }
    let err = Membership::start(
        NodeId::new("x").unwrap(),
        Incarnation(1),
        SocketAddr::from(([127, 0, 0, 1], 9)),
        config,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("multicast group"), "{err}");
}
