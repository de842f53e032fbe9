//! The real binary as a child process, for tests that need several servers
//! on one database, or signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A server that said it listens: the process (its log, signals, exit:
/// see [`Starting`], which it derefs to) and its address.
pub struct ServerProcess {
    process: Starting,
    pub addr: SocketAddr,
    pub base: String,
}

impl std::ops::Deref for ServerProcess {
    type Target = Starting;

    fn deref(&self) -> &Starting {
        &self.process
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Starting {
        &mut self.process
    }
}

impl ServerProcess {
    /// Starts `flash-coupons` on a free loopback port against `database_url`
    /// and waits until it says it listens.
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::spawn_command(
            Command::new(env!("CARGO_BIN_EXE_flash-coupons")),
            database_url,
            env,
        )
    }

    /// The same, with the process's descriptor limit (soft and hard) set
    /// to `limit`.
    pub fn spawn_with_fd_limit(
        database_url: &str,
        limit: u64,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flash-coupons"));
        // SAFETY: setrlimit is async-signal-safe and touches only this child.
        unsafe {
            cmd.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        ServerProcess::spawn_command(cmd, database_url, env)
    }

    fn spawn_command(cmd: Command, database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        let (child, log, addr) = start(cmd, database_url, env);
        Starting {
            child,
            log,
            addr: Mutex::new(addr),
        }
        .listening(Duration::from_secs(60))
    }
}

/// The real binary started without waiting for it to listen: for start-ups
/// that are meant to hang or fail.
pub struct Starting {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Gets the address once the server says it listens.
    addr: Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Starting {
    /// Starts `flash-coupons` against `database_url` (with the same defaults
    /// as `ServerProcess::spawn`) and collects its stderr.
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> Starting {
        let cmd = Command::new(env!("CARGO_BIN_EXE_flash-coupons"));
        let (child, log, addr) = start(cmd, database_url, env);
        Starting {
            child,
            log,
            addr: Mutex::new(addr),
        }
    }

    /// Waits up to `limit` for the server to say it listens; fails the
    /// test if it does not.
    pub fn listening(mut self, limit: Duration) -> ServerProcess {
        let said = self.addr.lock().unwrap().recv_timeout(limit);
        let addr: SocketAddr = match said {
            Ok(addr) => addr.parse().expect("a socket address in the log"),
            Err(_) => {
                let _ = self.child.kill();
                panic!("the server did not start: {:?}", self.log());
            }
        };
        ServerProcess {
            process: self,
            addr,
            base: format!("http://{addr}"),
        }
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        signal_child(&self.child, signal);
    }

    /// Waits up to `limit` for the process to exit; its exit code if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        wait_child(&mut self.child, limit)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// The same as `spawn`, run as `uid` (and its gid; no other process
    /// should use it) with RLIMIT_NPROC, the number of processes and
    /// threads that uid may have, set to `threads`. Needs root.
    pub fn spawn_as_user_with_thread_limit(
        database_url: &str,
        uid: u32,
        threads: u64,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flash-coupons"));
        // SAFETY: setrlimit, setgroups, setgid and setuid are
        // async-signal-safe and touch only this child.
        unsafe {
            cmd.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: threads,
                    rlim_max: threads,
                };
                if libc::setrlimit(libc::RLIMIT_NPROC, &rl) != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        ServerProcess::spawn_command(cmd, database_url, env)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The application_name of the server's freshness listener connection
    /// (its LISTEN session), as pg_stat_activity shows it.
    pub fn listener_application_name(&self) -> String {
        format!("flash-coupons-listener-{}", self.pid())
    }

    /// The names of the server's threads, as the kernel has them.
    pub fn thread_names(&self) -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    /// The server's threads, as the kernel counts them.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).map_or(0, |d| d.count())
    }

    /// Waits up to `limit` until the server holds no client connection and
    /// at most `threads` threads, and the database `db` has no session left
    /// inside a transaction; what is still held, if anything.
    pub fn settled(&self, db: &super::TestDb, threads: usize, limit: Duration) -> Option<String> {
        let in_transaction = || {
            db.count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                 AND state LIKE 'idle in transaction%'",
                db.name
            ))
        };
        let done =
            || self.held_connections() == 0 && self.threads() <= threads && in_transaction() == 0;
        if super::wait_for(limit, done) {
            return None;
        }
        Some(format!(
            "client connections {}, threads {} (expected at most {threads}), sessions in a transaction {}",
            self.held_connections(),
            self.threads(),
            in_transaction()
        ))
    }

    /// Connections to its own port that the server holds a descriptor of.
    pub fn held_connections(&self) -> usize {
        let pid = self.pid();
        let mut inodes = std::collections::HashSet::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.map_while(Result::ok) {
                if let Ok(target) = std::fs::read_link(fd.path())
                    && let Some(inode) = target
                        .to_str()
                        .and_then(|t| t.strip_prefix("socket:["))
                        .and_then(|t| t.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
        let port = format!(":{:04X}", self.addr.port());
        ["tcp", "tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
            .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local address, state (0A: listening), inode
                fields.len() > 9
                    && fields[1].ends_with(&port)
                    && fields[3] != "0A"
                    && inodes.contains(fields[9])
            })
            .count()
    }
}

/// A uid that no process on this machine runs as (RLIMIT_NPROC counts the
/// threads of every process of a uid).
pub fn unused_uid() -> u32 {
    let mut used = std::collections::HashSet::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for proc in procs.map_while(Result::ok) {
            if let Ok(status) = std::fs::read_to_string(proc.path().join("status"))
                && let Some(uids) = status.lines().find_map(|l| l.strip_prefix("Uid:"))
            {
                used.extend(
                    uids.split_whitespace()
                        .filter_map(|u| u.parse::<u32>().ok()),
                );
            }
        }
    }
    let base = 50_000 + std::process::id() % 10_000;
    (0..1_000)
        .map(|i| base + i)
        .find(|uid| !used.contains(uid))
        .expect("a free uid")
}

/// Starts `cmd` (the server binary) against `database_url` with the tests'
/// defaults and `env` on top, and collects its stderr; the receiver gets
/// the address it says it listens on.
fn start(
    mut cmd: Command,
    database_url: &str,
    env: &[(&str, &str)],
) -> (
    Child,
    Arc<Mutex<Vec<String>>>,
    std::sync::mpsc::Receiver<String>,
) {
    cmd.env_clear()
        .env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "info")
        .env("WORKERS", "8")
        .env("DB_POOL_SIZE", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting flash-coupons");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (found, addr_rx) = std::sync::mpsc::channel();
    {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = found.send(addr);
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    (child, log, addr_rx)
}

fn signal_child(child: &Child, signal: i32) {
    // SAFETY: kill only sends a signal to our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<Option<i32>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}
