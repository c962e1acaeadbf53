//! The demo in a real browser: start `demo`, open Gotham's page in headless Chromium (driven by
//! chromedriver's W3C WebDriver HTTP API), create heroes with the form, watch them appear live
//! (SSE), press "stop" on the node that hosts some of them, and see them reappear — on this page
//! and on the page of the node that took them over — with their wins and losses intact.
//!
//! Skips (with a message) when `chromedriver` is not installed, unless `THRONG_BROWSER_REQUIRED=1`
//! (CI), where it fails instead. Debian: `apt-get install -y chromium chromium-driver`. The
//! screenshot goes to `target/tmp/`, never into the repository.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TICK_MS: u64 = 1000;
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A WebDriver session on a chromedriver process of our own.
struct Browser {
    addr: String,
    session: String,
    _driver: Proc,
}

impl Browser {
    fn start(chromedriver: &PathBuf) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Proc(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let addr = format!("127.0.0.1:{port}");
        eventually("chromedriver to be ready", Duration::from_secs(20), || {
            let v = get_json(&addr, "/status");
            (v["value"]["ready"] == true).then_some(())
        });
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1400"]
        });
        if let Some(bin) = find_in_path("chromium") {
            options["binary"] = json!(bin);
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options } } });
        let r = http("POST", &addr, "/session", Some(&caps.to_string())).expect("new session");
        let session = r.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {}", r.body))
            .to_owned();
        Browser {
            addr,
            session,
            _driver: driver,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then(|| body.to_string());
        let r = http(method, &self.addr, &path, body.as_deref()).expect("webdriver");
        let v = r.json();
        assert!(
            r.status < 300,
            "webdriver {method} {path}: {} {}",
            r.status,
            r.body
        );
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// The hero rows on the page, by name.
    fn heroes(&self) -> BTreeMap<String, Hero> {
        let v = self.js(
            "return Array.from(document.querySelectorAll('tr[data-hero]')).map(r => \
             [r.dataset.hero, r.dataset.node, r.dataset.health, r.dataset.won, r.dataset.lost, \
             r.dataset.status]);",
        );
        let mut out = BTreeMap::new();
        for row in v.as_array().cloned().unwrap_or_default() {
            let s = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
            let n = |i: usize| s(i).parse::<u64>().unwrap_or(0);
            out.insert(
                s(0),
                Hero {
                    name: s(0),
                    node: s(1),
                    health: n(2) as i64,
                    won: n(3),
                    lost: n(4),
                    status: s(5),
                },
            );
        }
        out
    }

    fn node_status(&self, name: &str) -> Option<String> {
        self.js(&format!(
            "const r = document.querySelector('tr[data-node=\"{name}\"]'); \
             return r ? r.dataset.status : null;"
        ))
        .as_str()
        .map(String::from)
    }

    fn screenshot(&self, name: &str) {
        let v = self.cmd("GET", "/screenshot", json!({}));
        if let Some(png) = v.as_str().and_then(base64) {
            let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
            if std::fs::write(&path, png).is_ok() {
                eprintln!("screenshot: {}", path.display());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            "DELETE",
            &self.addr,
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    Some(out)
}

#[test]
fn a_stopped_nodes_heroes_reappear_on_the_page_with_their_record() {
    let Some(chromedriver) = find_in_path("chromedriver") else {
        if std::env::var("THRONG_BROWSER_REQUIRED").as_deref() == Ok("1") {
            panic!("THRONG_BROWSER_REQUIRED=1 but chromedriver is not installed");
        }
        eprintln!(
            "SKIPPED: the browser test needs chromedriver and chromium \
             (Debian: apt-get install -y chromium chromium-driver)"
        );
        return;
    };
    let base = free_base_port();
    // Its own data directory, empty: heroes a previous run (or the user's demo) kept on disk
    // would make the creations below conflict.
    struct Data(std::path::PathBuf);
    impl Drop for Data {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let data =
        Data(std::env::temp_dir().join(format!("throng-browser-demo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&data.0);
    let mut demo = spawn(
        "browser-demo",
        &[
            "demo".into(),
            "--base-port".into(),
            base.to_string(),
            "--tick-ms".into(),
            TICK_MS.to_string(),
            "--data-dir".into(),
            data.0.display().to_string(),
            "--fresh".into(),
        ],
    );
    let page = |i: u16| format!("127.0.0.1:{}", base + i);
    for i in 0..3 {
        eventually(
            "the demo's nodes to see each other",
            Duration::from_secs(60),
            || {
                let v = get_json(&page(i), "/api/nodes");
                let ups = v.as_array()?.iter().filter(|x| x["status"] == "up").count();
                (ups == 3).then_some(())
            },
        );
    }

    let b = Browser::start(&chromedriver);
    b.goto(&format!("http://{}/", page(0)));
    eventually("the page to go live (SSE)", Duration::from_secs(20), || {
        let t = b.js("return document.getElementById('conn').textContent;");
        t.as_str()?.contains("live").then_some(())
    });

    // Create heroes through the form; each appears on the page without a reload.
    let names = [
        "Batman",
        "Superman",
        "Wonder Woman",
        "Flash",
        "Aquaman",
        "Cyborg",
        "Zatanna",
    ];
    for name in names {
        b.type_into("#hero-name", name);
        b.click("#create button[type=submit]");
        eventually(
            &format!("{name} to appear on the page"),
            Duration::from_secs(15),
            || b.heroes().contains_key(name).then_some(()),
        );
    }

    // Once they have fought a little, stop the node (not gotham) hosting the most of them.
    let all = eventually("heroes to fight", Duration::from_secs(30), || {
        let all = b.heroes();
        have_fought(&all, 3).then_some(all)
    });
    let (victim, before) = busiest_node_but(all, "gotham");
    eprintln!(
        "stopping {victim}, host of {:?}",
        before.keys().collect::<Vec<_>>()
    );
    let since = Instant::now();
    b.click(&format!(
        "tr[data-node=\"{victim}\"] button[data-url$=\"/stop\"]"
    ));
    b.cmd("POST", "/alert/accept", json!({}));

    eventually(
        &format!("the page to show {victim} down"),
        Duration::from_secs(30),
        || (b.node_status(&victim).as_deref() == Some("down")).then_some(()),
    );
    let after = eventually(
        "the heroes to reappear elsewhere",
        Duration::from_secs(30),
        || {
            let now = b.heroes();
            before
                .keys()
                .all(|n| {
                    now.get(n)
                        .is_none_or(|h| h.node != victim && h.status != "moving")
                })
                .then_some(now)
        },
    );
    let slack = since.elapsed().as_millis() as u64 / TICK_MS + 3 + 1000 / TICK_MS;
    let mut moved = Vec::new();
    for (name, was) in &before {
        let Some(now) = after.get(name) else {
            eprintln!("{name} was defeated meanwhile");
            continue;
        };
        eprintln!(
            "{name}: {}/{} on {} -> {}/{} on {}",
            was.won, was.lost, was.node, now.won, now.lost, now.node
        );
        assert!(
            now.won >= was.won && now.lost >= was.lost,
            "{name} was reset: {was:?} -> {now:?}"
        );
        assert!(
            (now.won + now.lost) - (was.won + was.lost) <= slack,
            "{was:?} -> {now:?}"
        );
        moved.push(now.clone());
    }
    assert!(!moved.is_empty(), "no hero of {victim} survived the move");
    b.screenshot("dispatch-gotham.png");

    // The node that took one of them over shows it on its own page too.
    let hero = &moved[0];
    let i = ["gotham", "metropolis", "capitol"]
        .iter()
        .position(|n| *n == hero.node)
        .unwrap() as u16;
    b.goto(&format!("http://{}/", page(i)));
    let there = eventually(
        &format!("{} on {}'s page", hero.name, hero.node),
        Duration::from_secs(15),
        || b.heroes().remove(&hero.name),
    );
    assert_eq!(there.node, hero.node);
    assert!(there.won >= hero.won && there.lost >= hero.lost);
    b.screenshot(&format!("dispatch-{}.png", hero.node));

    // Stop the demo as Ctrl-C would; its nodes leave and exit.
    let _ = Command::new("kill")
        .args(["-TERM", &demo.0.id().to_string()])
        .status();
    eventually("the demo to stop", Duration::from_secs(30), || {
        demo.exited().then_some(())
    });
}
