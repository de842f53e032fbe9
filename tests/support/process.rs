//! The real binary as a child process, for tests that need several servers
//! on one database, or signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
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

    fn spawn_command(mut cmd: Command, database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
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
        let addr: SocketAddr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().expect("a socket address in the log"),
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {:?}", log.lock().unwrap());
            }
        };
        ServerProcess {
            child,
            addr,
            base: format!("http://{addr}"),
            log,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to `limit` for the process to exit; its exit code if it did.
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
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary started without waiting for it to listen: for start-ups
/// that are meant to hang or fail.
pub struct Starting {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Starting {
    /// Starts `flash-coupons` against `database_url` (with the same defaults
    /// as `ServerProcess::spawn`) and collects its stderr.
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> Starting {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flash-coupons"));
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
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Starting { child, log }
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to `limit` for the process to exit; its exit code if it did.
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
}

impl Drop for Starting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
