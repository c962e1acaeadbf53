//! Helpers for the process-level tests: free ports, node processes that die with the test, a tiny
//! HTTP/1.1 client (over `std::net::TcpStream`), and waiting for a condition with a deadline.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_throng-dispatch");

/// A base port P such that P..P+3 (TCP) and P+10..P+13 (UDP) are free right now.
pub fn free_base_port() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for i in 0..500u64 {
        let base = 20_000 + ((seed.wrapping_mul(2654435761).wrapping_add(i * 97)) % 30_000) as u16;
        let tcp_ok = (0..3).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok());
        let udp_ok = (10..13).all(|k| UdpSocket::bind(("127.0.0.1", base + k)).is_ok());
        if tcp_ok && udp_ok {
            return base;
        }
    }
    panic!("no free ports");
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

/// Start `throng-dispatch` with `args`; its output goes to `target/tmp/dispatch-<log>.log`
/// (or to the test's stderr with `THRONG_TEST_LOGS=1`).
pub fn spawn(log: &str, args: &[String]) -> Proc {
    let (out, err) = if std::env::var_os("THRONG_TEST_LOGS").is_some() {
        (Stdio::inherit(), Stdio::inherit())
    } else {
        let path =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dispatch-{log}.log"));
        eprintln!("logs of {log}: {}", path.display());
        let f = std::fs::File::create(&path).expect("log file");
        (
            Stdio::from(f.try_clone().expect("log file")),
            Stdio::from(f),
        )
    };
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start throng-dispatch");
    Proc(child)
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `addr` (`host:port`).
pub fn http(method: &str, addr: &str, path: &str, body: Option<&str>) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // Read the head, then exactly the body: some servers (chromedriver) keep the connection open
    // whatever `Connection: close` says.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break raw.len();
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end.min(raw.len())]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let have = raw.len() - head_end.min(raw.len());
        let done = match length {
            Some(len) => have >= len,
            None if chunked => find(&raw[head_end..], b"0\r\n\r\n").is_some(),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let rest = String::from_utf8_lossy(&raw[head_end.min(raw.len())..]).into_owned();
    let body = if chunked { dechunk(&rest) } else { rest };
    Ok(Resp { status, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET `path` as JSON (`Null` if the node does not answer).
pub fn get_json(addr: &str, path: &str) -> Value {
    http("GET", addr, path, None)
        .map(|r| r.json())
        .unwrap_or(Value::Null)
}

/// Wait until `f` returns `Some`, or panic with `what` after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A hero as `/api/heroes` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hero {
    pub name: String,
    pub node: String,
    pub health: i64,
    pub won: u64,
    pub lost: u64,
    pub status: String,
}

/// The heroes a node lists.
pub fn heroes(addr: &str) -> Vec<Hero> {
    let v = get_json(addr, "/api/heroes");
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|h| Hero {
                    name: h["name"].as_str().unwrap_or_default().to_owned(),
                    node: h["node"].as_str().unwrap_or_default().to_owned(),
                    health: h["health"].as_i64().unwrap_or(0),
                    won: h["fights_won"].as_u64().unwrap_or(0),
                    lost: h["fights_lost"].as_u64().unwrap_or(0),
                    status: h["status"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The statuses of the nodes a node lists, by name.
pub fn node_status(addr: &str, name: &str) -> Option<String> {
    let v = get_json(addr, "/api/nodes");
    v.as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["status"].as_str().map(String::from))
}

/// The node other than `except` hosting the most of `heroes` (by name), and those heroes.
pub fn busiest_node_but(
    heroes: std::collections::BTreeMap<String, Hero>,
    except: &str,
) -> (String, std::collections::BTreeMap<String, Hero>) {
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for h in heroes.values() {
        *per_node.entry(h.node.clone()).or_default() += 1;
    }
    let node = per_node
        .iter()
        .filter(|(n, _)| n.as_str() != except)
        .max_by_key(|(_, k)| **k)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| panic!("no hero away from {except}"));
    let hosted = heroes.into_iter().filter(|(_, h)| h.node == node).collect();
    (node, hosted)
}

/// Whether the heroes have fought at least `n` fights in all (so a moved hero with a reset
/// record would show).
pub fn have_fought(heroes: &std::collections::BTreeMap<String, Hero>, n: u64) -> bool {
    heroes.values().map(|h| h.won + h.lost).sum::<u64>() >= n
}
