//! What one node of the demo shares between its actors, its web server and its background tasks:
//! the Throng node, the heroes' distributed supervisor, the current city, counters and the recent
//! event log.
//!
//! Heroes are built by Throng from `(key, args)` on whatever node owns them ([`throng::cluster::Keyed`]
//! has no way to hand them node-local context), so the one `Home` of the process is reachable from
//! a process-wide cell: one process runs one node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use throng::cluster::{DistSupervisor, Node};

use crate::roster::HeroReport;

/// Lines kept in the page's event log.
pub const EVENT_LOG_LINES: usize = 40;

/// The name the city actor is exported under on every node.
pub const CITY_EXPORT: &str = "dispatch.city";

/// The name the control actor is exported under on every node.
pub const CONTROL_EXPORT: &str = "dispatch.control";

/// The distributed supervisor of the heroes.
pub const HEROES_SUPERVISOR: &str = "heroes";

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handled by heroes running here.
    pub hero_messages: AtomicU64,
    /// Messages handled by this node's city.
    pub city_messages: AtomicU64,
    /// Hero restarts after a crash, here.
    pub hero_restarts: AtomicU64,
    /// City starts (the first one included).
    pub city_starts: AtomicU64,
    /// Heroes that moved away from this node with their state.
    pub handoffs: AtomicU64,
    /// Heroes taken over here after their node left or failed.
    pub failovers: AtomicU64,
    /// Heroes created through this node.
    pub heroes_created: AtomicU64,
    /// Heroes defeated while running here.
    pub heroes_defeated: AtomicU64,
}

impl Counters {
    /// Add one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The node-local context of the demo.
pub struct Home {
    /// The Throng node.
    pub node: Arc<Node>,
    /// This node's name.
    pub name: String,
    /// This node's city (Gotham, Metropolis, ...).
    pub city_name: String,
    /// The page's address, as other nodes should link to it.
    pub http_url: String,
    /// The heroes' distributed supervisor.
    pub heroes: DistSupervisor,
    /// The heroes' decision period.
    pub tick: Duration,
    /// Counters for `/metrics`.
    pub counters: Counters,
    /// Heroes of an earlier run are coming back from the data directory (set at start when it
    /// holds data, cleared once their number has settled): a hero started again from this
    /// node's own copy is reported as back, not as crashed.
    pub recovering: AtomicBool,
    /// Where heroes' reports go: the running city, if any.
    reports: RwLock<Option<ReportSink>>,
    log: Mutex<VecDeque<String>>,
}

/// Takes heroes' reports to the city (set by the city as it starts).
pub type ReportSink = Arc<dyn Fn(HeroReport) + Send + Sync>;

static HOME: OnceLock<Arc<Home>> = OnceLock::new();

/// The process's home, once [`install`]ed.
pub fn home() -> Option<&'static Arc<Home>> {
    HOME.get()
}

/// Make `home` the process's home (once).
pub fn install(home: Arc<Home>) -> &'static Arc<Home> {
    let _ = HOME.set(home);
    HOME.get().expect("just set")
}

impl Home {
    /// A home for `node` (no city yet).
    pub fn new(
        node: Arc<Node>,
        city_name: String,
        http_url: String,
        heroes: DistSupervisor,
        tick: Duration,
    ) -> Home {
        Home {
            name: node.id().to_string(),
            node,
            city_name,
            http_url,
            heroes,
            tick,
            counters: Counters::default(),
            recovering: AtomicBool::new(false),
            reports: RwLock::new(None),
            log: Mutex::new(VecDeque::new()),
        }
    }

    /// Tell the running city (if any) what a hero reports.
    pub fn report(&self, report: HeroReport) {
        let sink = self
            .reports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sink) = sink {
            sink(report);
        }
    }

    /// Where heroes' reports go from now on (the city's current incarnation, or none).
    pub fn set_reports(&self, sink: Option<ReportSink>) {
        *self.reports.write().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// Log `line` (also to the page's event log).
    pub fn event(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!("{line}");
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= EVENT_LOG_LINES {
            log.pop_front();
        }
        log.push_back(format!("{} {line}", clock()));
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().rev().cloned().collect()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS` (UTC) for log lines on the page.
fn clock() -> String {
    let s = now_ms() / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// A tiny xorshift generator: the demo's dice. Seeded per actor; its state travels in snapshots.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Dice(u64);

impl Dice {
    /// A generator seeded from `name` and the clock.
    pub fn seeded(name: &str) -> Dice {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ now_ms();
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Dice(h | 1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }

    /// One of `items`, if any.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = self.range(0, items.len() as u64 - 1) as usize;
        items.get(i)
    }
}
