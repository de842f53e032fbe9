//! A PostgreSQL server for the tests: the one DATABASE_URL names, or a
//! throwaway cluster started with the machine's initdb/pg_ctl and stopped
//! when the test binary exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where to reach the server, as an admin connection string without a
/// database name, e.g. `postgres://postgres@127.0.0.1:5432`.
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => match Cluster::start() {
            Ok(url) => url,
            Err(why) => panic!(
                "\n\nThe tests need PostgreSQL. Either set DATABASE_URL to a server where \
                 the user may create databases (e.g. postgres://postgres@127.0.0.1:5432/postgres), \
                 or install PostgreSQL's server programs (initdb, pg_ctl; Debian: \
                 apt-get install postgresql) so the tests can start their own.\n\
                 Starting one failed: {why}\n\n"
            ),
        },
    })
}

/// The same server with `dbname` in place of the original database.
pub fn url_for(dbname: &str) -> String {
    let mut config: postgres::Config = server_url().parse().expect("a valid DATABASE_URL");
    config.dbname(dbname);
    config_to_url(&config)
}

fn config_to_url(config: &postgres::Config) -> String {
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let mut parts = vec![
        format!("host='{host}'"),
        format!(
            "port={}",
            config.get_ports().first().copied().unwrap_or(5432)
        ),
        format!("user='{}'", config.get_user().unwrap_or("postgres")),
        format!("dbname='{}'", config.get_dbname().unwrap_or("postgres")),
    ];
    if let Some(pw) = config.get_password() {
        parts.push(format!("password='{}'", String::from_utf8_lossy(pw)));
    }
    parts.join(" ")
}

struct Cluster;

static CLUSTER_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

impl Cluster {
    fn start() -> Result<String, String> {
        let bin = find_bin_dir()
            .ok_or("initdb was not found on PATH or under /usr/lib/postgresql/*/bin")?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("flash-coupons-pg-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            // initdb and postgres refuse to run as root.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let data = dir.join("data");
        let port = free_port()?;
        run(as_postgres(as_root, &bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data))?;
        *CLUSTER_DIR.lock().unwrap() = Some(dir.clone());
        unsafe { libc::atexit(stop_cluster) };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            dir.display()
        );
        run(as_postgres(as_root, &bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "start"]))?;
        Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
    }
}

extern "C" fn stop_cluster() {
    let Some(dir) = CLUSTER_DIR.lock().ok().and_then(|mut d| d.take()) else {
        return;
    };
    if let Some(bin) = find_bin_dir() {
        let as_root = unsafe { libc::geteuid() } == 0;
        let _ = as_postgres(as_root, &bin.join("pg_ctl"))
            .args(["-m", "immediate", "-w", "-D"])
            .arg(dir.join("data"))
            .arg("stop")
            .output();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

/// A command that runs as the postgres user when we are root.
pub fn as_postgres(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}
