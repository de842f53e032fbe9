//! A PostgreSQL cluster that one test owns outright, so that it may stop,
//! restart and pause it under a running server: initdb into a temporary
//! directory (as the postgres user when we are root), a free port, loopback
//! only. Dropping it stops the cluster and removes the directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::database::{as_postgres, find_bin_dir, free_port};

/// The database the application gets inside the cluster.
pub const APP_DB: &str = "app";

pub struct OwnedCluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    as_root: bool,
    /// Its processes are stopped with SIGSTOP (see `pause`).
    paused: AtomicBool,
}

impl OwnedCluster {
    /// initdb, start, and create the application's database.
    pub fn new() -> OwnedCluster {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "these tests stop and restart a PostgreSQL cluster of their own and need \
                 PostgreSQL's server programs (initdb, pg_ctl; Debian: apt-get install \
                 postgresql): initdb was not found on PATH or under /usr/lib/postgresql/*/bin"
            )
        });
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "flash-coupons-owned-pg-{}-{stamp}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let port = free_port().expect("a free port for PostgreSQL");
        let cluster = OwnedCluster {
            data: dir.join("data"),
            bin,
            dir,
            port,
            as_root,
            paused: AtomicBool::new(false),
        };
        if as_root {
            // initdb and postgres refuse to run as root.
            cluster.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.dir),
            );
        }
        cluster.run(
            cluster
                .pg("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&cluster.data),
        );
        cluster.start();
        let mut admin = cluster.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {APP_DB}"))
            .expect("creating the application's database");
        cluster
    }

    /// The application's database, as a URL for DATABASE_URL.
    pub fn url(&self) -> String {
        self.url_for(APP_DB)
    }

    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A new connection to the application's database.
    pub fn client(&self) -> postgres::Client {
        self.connect(APP_DB)
    }

    fn connect(&self, dbname: &str) -> postgres::Client {
        postgres::Client::connect(&self.url_for(dbname), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the owned cluster ({dbname}): {e}"))
    }

    /// Creates the login role `role` with `password`, and makes the cluster
    /// ask it for that password over TCP (everyone else stays trusted).
    pub fn require_password(&self, role: &str, password: &str) {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE {role} LOGIN PASSWORD '{password}'"
            ))
            .expect("creating a role with a password");
        let hba = self.data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
        // The first matching line wins.
        let first = format!("host all {role} 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(&hba, first + &rest).expect("writing pg_hba.conf");
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .expect("reloading the configuration");
    }

    /// Starts the cluster and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.dir.join("log");
        self.run(
            self.pg("pg_ctl")
                .args(["-w", "-t", "60", "-l"])
                .arg(&log)
                .arg("-D")
                .arg(&self.data)
                .args(["-o", &self.options(), "start"]),
        );
    }

    /// A clean stop (`pg_ctl stop -m fast`): sessions are ended, open
    /// transactions roll back, a checkpoint is written.
    pub fn stop(&self) {
        self.run(
            self.pg("pg_ctl")
                .args(["-w", "-t", "60", "-m", "fast", "-D"])
                .arg(&self.data)
                .arg("stop"),
        );
    }

    /// `pg_ctl restart -m mode` (`fast` or `immediate`), waiting until the
    /// cluster accepts connections again. Returns how long it took.
    pub fn restart(&self, mode: &str) -> Duration {
        let began = Instant::now();
        let log = self.dir.join("log");
        self.run(
            self.pg("pg_ctl")
                .args(["-w", "-t", "60", "-m", mode, "-l"])
                .arg(&log)
                .arg("-D")
                .arg(&self.data)
                .args(["-o", &self.options(), "restart"]),
        );
        began.elapsed()
    }

    /// Stops every process of the cluster (the postmaster and all its
    /// children) with SIGSTOP: the kernel still accepts and acknowledges
    /// TCP for them, but nothing answers, as with a frozen VM or a stalled
    /// disk. `resume` (or dropping the cluster) lets them go on.
    pub fn pause(&self) {
        let postmaster = self
            .postmaster_pid()
            .expect("the postmaster's pid (is the cluster running?)");
        // The postmaster first, so that it forks nothing unseen; then its
        // children, twice over for any forked meanwhile.
        signal(postmaster, libc::SIGSTOP);
        for _ in 0..2 {
            for child in children_of(postmaster) {
                signal(child, libc::SIGSTOP);
            }
        }
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets the processes stopped by `pause` go on (SIGCONT).
    pub fn resume(&self) {
        if let Some(postmaster) = self.postmaster_pid() {
            for child in children_of(postmaster) {
                signal(child, libc::SIGCONT);
            }
            signal(postmaster, libc::SIGCONT);
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The first line of postmaster.pid.
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The last `lines` lines of the cluster's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every coupon's amount equals its remaining stock plus its claims.
    pub fn assert_invariant(&self) {
        super::assert_invariant(&mut self.client());
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect(sql).get(0)
    }

    /// The users holding `coupon`, in claim order.
    pub fn holders(&self, coupon: &str) -> Vec<String> {
        self.client()
            .query(
                "SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id",
                &[&coupon],
            )
            .expect("reading the holders")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn options(&self) -> String {
        // fsync=off only spares the disk: a stopped or killed postmaster
        // loses nothing the kernel already has. synchronous_commit stays on,
        // so a commit acknowledged to the server survives an immediate stop.
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 \
             -c shared_buffers=16MB -c fsync=off",
            self.port,
            self.dir.display()
        )
    }

    fn pg(&self, program: &str) -> Command {
        as_postgres(self.as_root, &self.bin.join(program))
    }

    fn run(&self, cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        if !out.status.success() {
            panic!(
                "{cmd:?} failed: {}{}\nlog:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
        }
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        if self.is_paused() {
            self.resume();
        }
        if self.data.join("postmaster.pid").exists() {
            let _ = self
                .pg("pg_ctl")
                .args(["-w", "-t", "30", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
