//! The edge for the tests: `deploy/run-local` starting the real HAProxy with
//! the repository's `deploy/haproxy.cfg` in front of real replicas (the
//! debug binary cargo built for this test run, through FLASH_COUPONS_BIN).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One replica run-local started: its process and the address it listens on.
#[derive(Debug, Clone, Copy)]
pub struct Replica {
    pub pid: i32,
    pub addr: SocketAddr,
}

impl Replica {
    /// Connections to its own port that the replica holds a descriptor of.
    pub fn held_connections(&self) -> usize {
        held_connections(self.pid, self.addr.port())
    }

    /// Its threads, as the kernel counts them.
    pub fn threads(&self) -> usize {
        threads(self.pid)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`, `libc::SIGKILL`) to it.
    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// True while the process exists (and is not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// The status of GET /healthz sent to the replica directly.
    pub fn health(&self, limit: Duration) -> Option<u16> {
        super::http::try_status(&format!("http://{}/healthz", self.addr), limit)
    }
}

/// `deploy/run-local` running: HAProxy on `addr` in front of `replicas`.
pub struct Edge {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub haproxy_pid: i32,
    pub replicas: Vec<Replica>,
    log: Arc<Mutex<Vec<String>>>,
    pids_file: PathBuf,
    /// HAProxy's admin socket (EDGE_STATS_SOCKET).
    pub stats_socket: PathBuf,
    /// With `--monitoring`: Prometheus's process and address.
    pub prometheus: Option<(i32, SocketAddr)>,
}

/// One of the backend's server slots as HAProxy sees it.
#[derive(Debug, Clone)]
pub struct EdgeServer {
    /// app1 ... app10
    pub name: String,
    /// "UP", "DOWN", "MAINT (resolution)", "UP 1/2" (going down), ...
    pub status: String,
    /// Requests it is serving now.
    pub current: u64,
}

/// The repository's root (where Cargo.toml is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// PATH for run-local: this process's, and the sbin directories HAProxy
/// is installed in (Debian: /usr/sbin, not on a normal user's PATH).
pub fn search_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Panics with what to install when HAProxy is not found.
pub fn require_haproxy() {
    let found = std::env::split_paths(&search_path()).any(|dir| {
        Command::new(dir.join("haproxy"))
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        found,
        "\n\nThe edge tests run the real HAProxy with deploy/haproxy.cfg, and `haproxy` was \
         not found on PATH, /usr/sbin or /usr/local/sbin. Install HAProxy 2.6 or newer \
         (Debian/Ubuntu: apt-get install haproxy).\n\n"
    );
}

/// run-local ended without getting ready: its exit code and its stderr.
#[derive(Debug)]
pub struct StartFailed {
    pub code: Option<i32>,
    pub log: Vec<String>,
}

impl Edge {
    /// Starts `deploy/run-local --replicas n --listen 127.0.0.1:0` against
    /// `database_url` with `env` added (and WORKERS=8, DB_POOL_SIZE=8,
    /// LOG_LEVEL=warn unless `env` says otherwise), and waits for its
    /// `ready` line.
    pub fn start(database_url: &str, replicas: usize, env: &[(&str, &str)]) -> Edge {
        Edge::try_start(database_url, replicas, env).unwrap_or_else(|failed| {
            panic!(
                "deploy/run-local did not get ready (exit code {:?}):\n{}",
                failed.code,
                failed.log.join("\n")
            )
        })
    }

    /// The same, returning what happened when run-local does not get ready.
    pub fn try_start(
        database_url: &str,
        replicas: usize,
        env: &[(&str, &str)],
    ) -> Result<Edge, StartFailed> {
        Edge::try_start_with(database_url, replicas, &[], env)
    }

    /// The same with more arguments for run-local (e.g. `--monitoring`).
    pub fn try_start_with(
        database_url: &str,
        replicas: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Edge, StartFailed> {
        require_haproxy();
        let replicas_wanted = replicas;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pids_file = std::env::temp_dir().join(format!(
            "flash-coupons-edge-{}-{}.pids",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&pids_file);
        let stats_socket = pids_file.with_extension("sock");
        let _ = std::fs::remove_file(&stats_socket);
        let mut cmd = Command::new(repo().join("deploy/run-local"));
        cmd.args(["--replicas", &replicas.to_string()])
            .args(["--listen", "127.0.0.1:0", "--pids"])
            .arg(&pids_file)
            .args(args)
            .env_clear()
            .env("PATH", search_path())
            .env("DATABASE_URL", database_url)
            .env("FLASH_COUPONS_BIN", env!("CARGO_BIN_EXE_flash-coupons"))
            .env("LOG_LEVEL", "warn")
            .env("WORKERS", "8")
            .env("DB_POOL_SIZE", "8")
            .env("EDGE_STATS_SOCKET", &stats_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // run-local (and through it every replica and HAProxy) ends when the
        // test process does, however it ends.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .expect("starting deploy/run-local (python3 is needed)");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = child.stderr.take().expect("stderr");
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    // Bounded: the last 20,000 lines are plenty to explain a failure.
                    if log.len() >= 20_000 {
                        log.drain(..10_000);
                    }
                    log.push(line);
                }
            });
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let stdout = child.stdout.take().expect("stdout");
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = ready_tx.send(line);
                }
            });
        }
        let line = match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(_) => {
                // It ended (stdout closed), or is stuck: give it a moment to
                // finish stopping what it started, then make sure.
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                    thread::sleep(Duration::from_millis(20));
                }
                // A no-op if it has exited.
                let _ = child.kill();
                let status = child.wait().ok();
                thread::sleep(Duration::from_millis(200));
                let _ = std::fs::remove_file(&pids_file);
                return Err(StartFailed {
                    code: status.and_then(|s| s.code()),
                    log: log.lock().unwrap().clone(),
                });
            }
        };
        let addr: SocketAddr = line
            .strip_prefix("ready http://")
            .unwrap_or_else(|| panic!("unexpected first line from run-local: {line:?}"))
            .parse()
            .expect("an address in the ready line");
        let (haproxy_pid, replicas, prometheus) = read_pids(&pids_file);
        assert_eq!(replicas.len(), replicas_wanted, "replicas in {pids_file:?}");
        Ok(Edge {
            child,
            addr,
            base: format!("http://{addr}"),
            haproxy_pid,
            replicas,
            log,
            pids_file,
            stats_socket,
            prometheus,
        })
    }

    /// Sends `command` to HAProxy's admin socket; its answer.
    pub fn admin(&self, command: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut socket = std::os::unix::net::UnixStream::connect(&self.stats_socket)?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        socket.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// The backend's server slots as HAProxy sees them now.
    pub fn servers(&self) -> Vec<EdgeServer> {
        let stat = self.admin("show stat").expect("HAProxy's admin socket");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(status), Some(scur)) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("scur"),
        ) else {
            panic!("unexpected `show stat` header: {header:?}");
        };
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() == header.len() && f[px] == "app")
            .filter(|f| f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| EdgeServer {
                name: f[sv].to_owned(),
                status: f[status].to_owned(),
                current: f[scur].parse().unwrap_or(0),
            })
            .collect()
    }

    /// Everything run-local, HAProxy and the replicas wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The run-local process itself.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to run-local (SIGTERM or SIGINT stop everything).
    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits up to `limit` for run-local to exit; its exit code if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops it as an operator would (SIGTERM) and returns run-local's exit
    /// code, or None if it did not exit within `limit`.
    pub fn stop(&mut self, limit: Duration) -> Option<Option<i32>> {
        self.signal(libc::SIGTERM);
        self.wait_exit(limit)
    }

    /// Waits up to `limit` until no replica holds a client connection and
    /// each has at most its entry in `threads` threads; what is still held,
    /// if anything.
    pub fn replicas_settled(&self, threads: &[usize], limit: Duration) -> Option<String> {
        let done = || {
            self.replicas
                .iter()
                .zip(threads)
                .all(|(r, &t)| r.held_connections() == 0 && r.threads() <= t)
        };
        if super::wait_for(limit, done) {
            return None;
        }
        Some(
            self.replicas
                .iter()
                .zip(threads)
                .map(|(r, t)| {
                    format!(
                        "replica {} at {}: {} client connections, {} threads (at most {t} expected)",
                        r.pid,
                        r.addr,
                        r.held_connections(),
                        r.threads()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(30)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pids_file);
        let _ = std::fs::remove_file(&self.stats_socket);
    }
}

/// run-local's --pids file: `haproxy PID` and `replica PID HOST:PORT`
/// lines, and with `--monitoring` a `prometheus PID HOST:PORT` line.
type Pids = (i32, Vec<Replica>, Option<(i32, SocketAddr)>);

fn read_pids(path: &Path) -> Pids {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading run-local's pids file {}: {e}", path.display()));
    let mut haproxy = None;
    let mut replicas = Vec::new();
    let mut prometheus = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["haproxy", pid] => haproxy = pid.parse().ok(),
            ["replica", pid, addr] => replicas.push(Replica {
                pid: pid.parse().expect("a replica pid"),
                addr: addr.parse().expect("a replica address"),
            }),
            ["prometheus", pid, addr] => {
                prometheus = Some((
                    pid.parse().expect("prometheus's pid"),
                    addr.parse().expect("prometheus's address"),
                ));
            }
            _ => panic!("unexpected line in the pids file: {line:?}"),
        }
    }
    (
        haproxy.expect("a haproxy line in the pids file"),
        replicas,
        prometheus,
    )
}

/// Connections to `port` that process `pid` holds a descriptor of (not
/// counting listening sockets).
pub fn held_connections(pid: i32, port: u16) -> usize {
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
    let port = format!(":{port:04X}");
    // Read line by line without copying: with tens of thousands of sockets
    // in TIME_WAIT after a load test, these tables are megabytes.
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    // sl, local address, remote address, state, ..., inode (10th)
                    let mut fields = line.split_ascii_whitespace();
                    let local = fields.nth(1).unwrap_or("");
                    let state = fields.nth(1).unwrap_or("");
                    local.ends_with(&port)
                        && state != "0A"
                        && fields.nth(5).is_some_and(|inode| inodes.contains(inode))
                })
                .count()
        })
        .sum()
}

/// The threads of process `pid`, as the kernel counts them.
pub fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}
