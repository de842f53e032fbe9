//! Start-up: configuration errors and an unreachable database end the
//! process with one clear line, and nothing ever prints the password.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, OwnedCluster};
use crate::support::process::{ServerProcess, Starting};
use crate::support::serial;
use crate::support::{self, TestApp, TestDb};

/// Runs the binary with exactly `env`, bounded by `limit`; returns the exit
/// code and everything it wrote.
fn run_binary(env: &[(&str, &str)], limit: Duration) -> (Option<i32>, String) {
    run_with_args(&[], env, limit)
}

/// The same, with `args` on the command line.
fn run_with_args(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flash-coupons"));
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting the binary");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.and_then(|s| s.code()), out)
}

#[test]
fn a_missing_database_url_stops_start_up_with_one_line() {
    let _turn = serial::turn!();
    let (code, out) = run_binary(&[], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(out.contains("DATABASE_URL"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn a_malformed_setting_stops_start_up_naming_it() {
    let _turn = serial::turn!();
    for (key, value) in [
        ("WORKERS", "lots"),
        ("DB_POOL_SIZE", "0"),
        ("CLAIM_MAX_RETRIES", "-1"),
        ("LOG_LEVEL", "chatty"),
        ("HTTP_KEEP_ALIVE_REQUESTS", "maybe"),
        ("ADMIN_TOKEN", "secret\n"),
        ("LISTEN_ADDR", "nope"),
        ("LISTEN_ADDR", "127.0.0.1:99999"),
    ] {
        let (code, out) = run_binary(
            &[
                ("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/db"),
                (key, value),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(2), "{key}: {out}");
        assert!(
            out.starts_with(&format!("flash-coupons: {key}")),
            "{key}: {out}"
        );
    }
}

#[test]
fn an_unreachable_database_is_retried_for_a_bounded_time_then_start_up_fails() {
    let _turn = serial::turn!();
    let port = support::database::free_port().unwrap();
    let url = format!("postgres://app:hunter2secret@127.0.0.1:{port}/coupons");
    let started = Instant::now();
    let (code, out) = run_binary(
        &[("DATABASE_URL", &url), ("DB_STARTUP_TIMEOUT_SECS", "2")],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        out.contains("not reachable yet"),
        "retries are logged: {out}"
    );
    assert!(out.contains("start-up failed"), "{out}");
    assert!(!out.contains("hunter2secret"), "the password leaked: {out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn no_answer_carries_sql_text_or_the_connection_string() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    // Drop the database under the server: every query now fails inside.
    app.db.drop_now().unwrap();
    for answer in [
        app.claim("u", "X"),
        app.get("/api/coupons/X"),
        app.create("X", 1),
        app.get("/healthz"),
    ] {
        assert_eq!(answer.status, 503, "{answer:?}");
        let text = answer.body.to_string();
        for leak in [
            "postgres",
            "SQLSTATE",
            "database \"",
            "SELECT",
            "127.0.0.1",
            "panicked",
        ] {
            assert!(!text.contains(leak), "{leak:?} in {text}");
        }
    }
}

/// Runs the binary against `url` with a long start-up budget; asserts that it
/// gave up at once (well inside the budget) with exit code `code` and one
/// error line containing `says`.
fn assert_refused_at_once(url: &str, code: i32, says: &str) -> String {
    let started = Instant::now();
    let (exit, out) = run_binary(
        &[("DATABASE_URL", url), ("DB_STARTUP_TIMEOUT_SECS", "60")],
        Duration::from_secs(30),
    );
    assert_eq!(exit, Some(code), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it kept retrying: {out}"
    );
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("[ERROR]")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains(says), "{out}");
    assert!(!out.contains("not reachable yet"), "{out}");
    out
}

#[test]
fn an_unknown_database_ends_start_up_at_once_saying_what_to_fix() {
    let _turn = serial::turn!();
    let url = support::database::url_for("no_such_database_here");
    assert_refused_at_once(&url, 1, "create that database");
}

#[test]
fn an_unknown_role_ends_start_up_at_once_saying_what_to_fix() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let mut config: postgres::Config = db.url.parse().unwrap();
    config.user("no_such_role_here");
    let url = format!(
        "postgres://no_such_role_here@127.0.0.1:{}/{}",
        config.get_ports()[0],
        db.name
    );
    assert_refused_at_once(&url, 1, "fix the user in DATABASE_URL");
}

#[test]
fn a_wrong_or_missing_password_ends_start_up_at_once_saying_what_to_fix() {
    let _turn = serial::turn!();
    let cluster = OwnedCluster::new();
    cluster.require_password("guarded", "right-one");
    let url = |userinfo: &str| {
        cluster.url().replacen(
            "postgres://postgres@",
            &format!("postgres://{userinfo}@"),
            1,
        )
    };
    let out = assert_refused_at_once(&url("guarded:wrong-one"), 1, "fix the password");
    assert!(!out.contains("wrong-one"), "the password leaked: {out}");
    assert_refused_at_once(&url("guarded"), 1, "DATABASE_URL has none");
    // And with the right one, it starts (as the database's owner, which may
    // create tables in its public schema).
    cluster
        .client()
        .batch_execute(&format!("ALTER DATABASE {APP_DB} OWNER TO guarded"))
        .unwrap();
    let server = ServerProcess::spawn(&url("guarded:right-one"), &[]);
    assert_eq!(
        support::http::try_status(&format!("{}/healthz", server.base), Duration::from_secs(10)),
        Some(200)
    );
}

#[test]
fn a_database_whose_encoding_is_not_utf8_is_refused_at_start_as_a_configuration_mistake() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let latin1 = format!("{}_latin1", db.name);
    let mut admin = db.client();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {latin1} ENCODING 'LATIN1' TEMPLATE template0 \
             LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .unwrap();
    let url = support::database::url_for(&latin1);
    let out = assert_refused_at_once(&url, 2, "encoding is LATIN1");
    assert!(out.contains("UTF8"), "{out}");
    admin
        .batch_execute(&format!("DROP DATABASE {latin1}"))
        .unwrap();
}

#[test]
fn help_and_version_answer_and_exit_without_touching_the_database() {
    let _turn = serial::turn!();
    // A database URL that would make a start-up wait: nothing may use it.
    let never = ("DATABASE_URL", "postgres://u:pw@192.0.2.1:5432/db");
    let (code, out) = run_with_args(&["--help"], &[never], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{out}");
    for listed in [
        "attack",
        "DATABASE_URL",
        "LISTEN_ADDR",
        "127.0.0.1:8080",
        "WORKERS",
    ] {
        assert!(out.contains(listed), "--help does not list {listed}: {out}");
    }
    assert!(!out.contains("connecting"), "{out}");
    let (code, out) = run_with_args(&["--version"], &[never], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.trim(),
        format!("flash-coupons {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_option_or_a_mistyped_command_is_a_usage_error_not_a_start() {
    let _turn = serial::turn!();
    let never = ("DATABASE_URL", "postgres://u:pw@192.0.2.1:5432/db");
    for args in [&["--verbose"][..], &["atack"], &["--help", "me"]] {
        let (code, out) = run_with_args(args, &[never], Duration::from_secs(10));
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{args:?}: {out}");
        assert!(out.contains("--help"), "{args:?}: {out}");
        assert!(!out.contains("connecting"), "{args:?}: {out}");
    }
}

/// Accepts on 127.0.0.1:`port` and relays each connection to `to`, until
/// dropped: a database that starts answering at a moment of the test's
/// choosing.
struct Relay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(port: u16, to: u16) -> Relay {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the relay");
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // At most a minute, and a hundred connections.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut relayed = 0;
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline && relayed < 100 {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", to)).expect("reaching PostgreSQL");
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
                relayed += 1;
            }
        });
        Relay {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The whole of DB_STARTUP_TIMEOUT_SECS is given to the database: one
/// that starts answering 3.5 s into a five-second budget is used (its last
/// attempt comes at 5 s). Start-up gave up after 3.1 s of those five, when
/// its next pause would have gone past the deadline.
#[test]
fn a_database_that_answers_late_but_within_the_startup_budget_is_used() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let config: postgres::Config = db.url.parse().expect("the test database's address");
    let postgres_port = config.get_ports()[0];
    let relay_port = support::database::free_port().unwrap();
    let url = db.url.replace(
        &format!("port={postgres_port}"),
        &format!("port={relay_port}"),
    );
    assert_ne!(url, db.url);
    let server = Starting::spawn(&url, &[("DB_STARTUP_TIMEOUT_SECS", "5")]);
    std::thread::sleep(Duration::from_millis(3500));
    let _relay = Relay::start(relay_port, postgres_port);
    let server = server.listening(Duration::from_secs(10));
    assert_eq!(
        crate::support::http::try_status(
            &format!("http://{}/healthz", server.addr),
            Duration::from_secs(5)
        ),
        Some(200),
        "{:?}",
        server.log()
    );
}
