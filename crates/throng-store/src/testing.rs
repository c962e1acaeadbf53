//! Throwaway PostgreSQL servers for tests (feature `testing`): not API.
//!
//! [`Postgres::start`] gives each test a fresh database on one server per test process, so
//! tests run in parallel against it (an `initdb` costs about a second, a database tens of
//! milliseconds); [`Server::start`] gives a test a server of its own, to stop and start again.
//! Both return `Ok(None)` — the test skips, saying why — when PostgreSQL's binaries are not
//! installed (`THRONG_POSTGRES_BIN`, else the PATH, else `/usr/lib/postgresql/*/bin`), unless
//! `THRONG_POSTGRES_REQUIRED=1` (CI sets it where they are), which turns that into an error.
//!
//! A server runs from a fresh directory under the system's temporary directory (data, Unix
//! socket, log) on a free loopback port, as the `postgres` user (or `nobody`) when the tests run
//! as root, since PostgreSQL refuses to run as root. Its cleanup does not rely on `Drop` (a
//! static's never runs): each server has a guard process, a shell reading a pipe from the test
//! process; when the pipe closes — the `Server` dropped, or the test process gone, killed
//! included — the guard stops PostgreSQL (`pg_ctl stop -m immediate`) and deletes the
//! directory. A directory left by a process that no longer exists (a guard killed too) is
//! removed by the next server's start.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable that makes a missing PostgreSQL an error instead of a skip.
pub const REQUIRED_VAR: &str = "THRONG_POSTGRES_REQUIRED";

/// A directory holding PostgreSQL's `initdb` and `pg_ctl`, instead of searching for them.
pub const BIN_VAR: &str = "THRONG_POSTGRES_BIN";

/// The prefix of a server's directory under the temporary directory (then the pid, a counter).
const DIR_PREFIX: &str = "throng-pg-";

/// The superuser `initdb` creates (no password: `trust` on loopback and the socket).
const SUPERUSER: &str = "postgres";

/// Attempts at a free port (another process may take the one picked before the server binds).
const PORT_ATTEMPTS: usize = 5;

/// A test's own PostgreSQL server, stopped and deleted when dropped.
pub struct Server {
    dir: PathBuf,
    bin: PathBuf,
    /// The user the server runs as, when the tests run as root.
    user: Option<String>,
    port: u16,
    /// Its `-c` settings (a later one wins over an earlier one of the same name).
    settings: Vec<(String, String)>,
    /// The guard process (see the module's documentation); its stdin is the pipe it watches.
    guard: Option<Child>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish()
    }
}

impl Server {
    /// Start a server of its own: `Ok(None)` (after printing why) when PostgreSQL is not
    /// installed and `THRONG_POSTGRES_REQUIRED` is not `1`.
    pub fn start() -> Result<Option<Server>, String> {
        Server::start_with(&[])
    }

    /// [`Server::start`] with more server settings (`-c name=value`; the tests' defaults turn
    /// `fsync` off, which `("fsync", "on")` undoes for a measurement).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Option<Server>, String> {
        match binaries()? {
            Some(bin) => Server::launch(bin, settings).map(Some),
            None => Ok(None),
        }
    }

    fn launch(bin: PathBuf, settings: &[(&str, &str)]) -> Result<Server, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        sweep(&bin);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let user = unprivileged_user()?;
        if let Some(user) = &user {
            run(Command::new("chown").arg(user).arg(&dir))?;
        }
        let mut server = Server {
            dir,
            bin,
            user,
            port: 0,
            settings: [
                ("listen_addresses", "127.0.0.1"),
                ("fsync", "off"),
                ("full_page_writes", "off"),
            ]
            .into_iter()
            .chain(settings.iter().copied())
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
            guard: None,
        };
        server.guard = Some(server.spawn_guard()?);
        run(server
            .command("initdb")
            .arg("-D")
            .arg(server.dir.join("data"))
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .arg("--no-sync"))?;
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) if e.contains("already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Create a database with a fresh name; returns its URL.
    pub fn create_database(&self) -> Result<String, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let db = format!(
            "throng_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.sql(&format!("CREATE DATABASE {db}"))?;
        Ok(self.url(&db))
    }

    /// Run `sql` in the `postgres` database.
    pub fn sql(&self, sql: &str) -> Result<(), String> {
        let url = self.url("postgres");
        // The client drives a runtime of its own: off any async test's worker thread.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls)
                    .map_err(|e| format!("connecting to {url}: {e}"))?;
                client
                    .batch_execute(sql)
                    .map_err(|e| format!("{sql}: {e:?}"))
            })
            .join()
            .map_err(|_| format!("{sql}: the client panicked"))?
        })
    }

    /// Stop the server at once (`pg_ctl stop -m immediate`: as a crash would).
    pub fn stop(&self) -> Result<(), String> {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]))
    }

    /// Start the stopped server again on its port.
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl_start()
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.dir.join("log");
        let mut options = format!("-p {} -k '{}'", self.port, self.dir.display());
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let started = run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]));
        started.map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{e}\nserver log:\n{}", tail.join("\n"))
        })
    }

    /// `program` from PostgreSQL's binaries, as the server's user.
    fn command(&self, program: &str) -> Command {
        as_user(self.user.as_deref(), &self.bin.join(program), &self.dir)
    }

    fn spawn_guard(&self) -> Result<Child, String> {
        let stop = self.command("pg_ctl");
        let mut guard = Command::new("sh");
        guard
            .arg("-c")
            .arg(
                "dir=$1; shift; trap '' INT TERM HUP; read -r _; \
                 \"$@\" -D \"$dir/data\" -m immediate -w stop >/dev/null 2>&1; rm -rf -- \"$dir\"",
            )
            .arg("throng-pg-guard")
            .arg(&self.dir)
            .arg(stop.get_program())
            .args(stop.get_args())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        guard
            .spawn()
            .map_err(|e| format!("starting the guard shell: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            // Closing its stdin tells the guard to stop the server and delete the directory.
            if let Some(mut pipe) = guard.stdin.take() {
                let _ = pipe.write_all(b"stop\n");
            }
            let _ = guard.wait();
        }
    }
}

/// A fresh database of its own on the test process's server.
#[derive(Debug)]
pub struct Postgres {
    url: String,
    db: String,
    server: &'static Server,
}

impl Postgres {
    /// A fresh database on the server shared by this test process (started by the first
    /// call): `Ok(None)` (after printing why) when PostgreSQL is not installed and
    /// `THRONG_POSTGRES_REQUIRED` is not `1`.
    pub fn start() -> Result<Option<Postgres>, String> {
        static SHARED: OnceLock<Result<Option<Server>, String>> = OnceLock::new();
        let server = match SHARED.get_or_init(Server::start) {
            Ok(Some(server)) => server,
            Ok(None) => {
                binaries()?;
                return Ok(None);
            }
            Err(e) => return Err(e.clone()),
        };
        let url = server.create_database()?;
        let db = url.rsplit('/').next().unwrap_or_default().to_owned();
        Ok(Some(Postgres { url, db, server }))
    }

    /// The database's URL (`postgres://postgres@127.0.0.1:PORT/DB`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server it is on.
    pub fn server(&self) -> &Server {
        self.server
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .server
            .sql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db));
    }
}

/// The directory holding `initdb` and `pg_ctl` (`THRONG_POSTGRES_BIN` if set, else the PATH,
/// else Debian's newest): `Ok(None)` (printing why) when there is none and PostgreSQL is not
/// required.
fn binaries() -> Result<Option<PathBuf>, String> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let candidates: Vec<PathBuf> = match std::env::var_os(BIN_VAR) {
        Some(dir) => vec![dir.into()],
        None => {
            let on_path = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default();
            // Debian installs them under /usr/lib/postgresql/VERSION/bin, off the PATH.
            let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect();
            debian.sort();
            on_path
                .into_iter()
                .chain(debian.into_iter().rev().map(|(_, dir)| dir))
                .collect()
        }
    };
    if let Some(found) = candidates.into_iter().find(|d| has(d)) {
        return Ok(Some(found));
    }
    let searched = match std::env::var_os(BIN_VAR) {
        Some(dir) => format!("{BIN_VAR}={}", dir.to_string_lossy()),
        None => "PATH and /usr/lib/postgresql/*/bin".into(),
    };
    let why = format!("PostgreSQL's initdb and pg_ctl are not installed (searched {searched})");
    if std::env::var(REQUIRED_VAR).is_ok_and(|v| v == "1") {
        return Err(format!("{why}, and {REQUIRED_VAR}=1"));
    }
    eprintln!("skipped: {why}");
    Ok(None)
}

/// The user to run the server as: `postgres` (or `nobody`) when we are root, else ourselves.
fn unprivileged_user() -> Result<Option<String>, String> {
    let uid = Command::new("id").arg("-u").output();
    let root = uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        let exists = Command::new("id")
            .arg("-u")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if exists {
            return Ok(Some(user.to_owned()));
        }
    }
    Err("running as root, and neither the postgres nor the nobody user exists".into())
}

fn as_user(user: Option<&str>, program: &Path, dir: &Path) -> Command {
    let mut c = match user {
        Some(user) => {
            // util-linux's runuser lives in sbin, which a user's PATH may lack.
            let runuser = ["/usr/sbin/runuser", "/sbin/runuser"]
                .into_iter()
                .find(|p| Path::new(p).is_file())
                .unwrap_or("runuser");
            let mut c = Command::new(runuser);
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    c.current_dir(dir);
    c
}

/// Run `c` to its end; its output is the error when it fails.
fn run(c: &mut Command) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", c.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{:?} {:?} failed ({}): {}{}",
        c.get_program(),
        c.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Remove the directories of servers whose test process is gone (its guard killed with it),
/// stopping their server first. Linux only (it asks `/proc` whether the process lives).
fn sweep(bin: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let user = unprivileged_user().ok().flatten();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if dir.join("data/postmaster.pid").exists() {
            let _ = run(
                as_user(user.as_deref(), &bin.join("pg_ctl"), Path::new("/"))
                    .arg("-D")
                    .arg(dir.join("data"))
                    .args(["-m", "immediate", "-w", "stop"]),
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
