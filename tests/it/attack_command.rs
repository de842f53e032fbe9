//! `flash-coupons attack`, the real binaries (the server's, which hands
//! `attack` to the attack package's `flash-coupons-attack` beside it),
//! against the real service, a fake service that answers wrongly, and
//! nothing at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::serial;

const SERVER: &str = env!("CARGO_BIN_EXE_flash-coupons");

/// The server binary, with the attack binary beside it where the server
/// looks for it. Cargo gives these tests `CARGO_BIN_EXE_` only for the
/// binaries of their own package, so the attack package's is built here,
/// once, into the same target directory and profile; `cargo test` has
/// released its build lock by the time tests run.
pub(crate) fn server_binary() -> &'static Path {
    static BUILT: OnceLock<()> = OnceLock::new();
    let server = Path::new(SERVER);
    BUILT.get_or_init(|| {
        let profile_dir = server.parent().expect("the server binary's directory");
        // Cargo names the dev profile's directory `debug`, any other
        // profile's after the profile.
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory in {SERVER}"),
        };
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory");
        let built = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "-p", "flash-coupons-attack"])
            .args(["--bin", "flash-coupons-attack", "--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(Stdio::null())
            .output()
            .expect("running cargo build -p flash-coupons-attack");
        assert!(
            built.status.success(),
            "cargo build -p flash-coupons-attack: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let attack = server.with_file_name("flash-coupons-attack");
        assert!(attack.is_file(), "{} was not built", attack.display());
    });
    server
}

/// Runs `flash-coupons attack ARGS` with a bounded run, and returns what
/// it printed.
pub(crate) fn attack(args: &[&str]) -> (Option<i32>, String, String) {
    run(Command::new(server_binary())
        .arg("attack")
        .args(args)
        .args(["--timeout-secs", "30", "--deadline-secs", "240"]))
}

/// Runs `command` without ADMIN_TOKEN, DATABASE_URL or input, and returns
/// its exit code and what it printed.
fn run(command: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .env_remove("ADMIN_TOKEN")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("running flash-coupons attack");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Each output line with its runs of spaces made one, so table rows read
/// as `400 out_of_stock 45`.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn assert_has_lines(text: &str, wanted: &[&str]) {
    let lines = lines(text);
    for want in wanted {
        assert!(
            lines.iter().any(|l| l == want),
            "no line {want:?} in:\n{text}"
        );
    }
}

#[test]
fn an_attack_on_the_real_service_passes_every_check_and_exits_zero() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let (code, stdout, stderr) = attack(&["--url", &app.base, "--users", "300", "--stock", "40"]);

    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_has_lines(
        &stdout,
        &[
            // Flash Sale Attack: 5 units, 50 users.
            "200 - 5",
            "400 out_of_stock 45",
            "[ok] 200 answers: 5 (expected 5)",
            "[ok] 400 out_of_stock answers: 45 (expected 45)",
            "[ok] remaining_amount: 0 (expected 0)",
            "[ok] claimed_by distinct users: 5 (expected 5)",
            "[ok] claimed_by is exactly the users answered 200",
            "PASS Flash Sale Attack",
            // Double Dip Attack: one user ten times on 10 units.
            "200 - 1",
            "409 already_claimed 9",
            "[ok] 409 already_claimed answers: 9 (expected 9)",
            "[ok] remaining_amount: 9 (expected 9)",
            "[ok] claimed_by distinct users: 1 (expected 1)",
            "PASS Double Dip Attack",
            // The burst: 300 users on 40 units.
            "200 - 40",
            "400 out_of_stock 260",
            "[ok] 200 answers: 40 (expected 40)",
            "[ok] 400 out_of_stock answers: 260 (expected 260)",
            "[ok] claimed_by distinct users: 40 (expected 40)",
            "PASS Burst",
            "RESULT: PASS (3 of 3 scenarios passed)",
        ],
    );
    assert!(
        stdout.contains("req/s") && stdout.contains("latency p50"),
        "{stdout}"
    );
    assert!(stderr.contains("burst: 300/300 done"), "{stderr}");

    // What the service stored agrees: three fresh coupons, 5 + 1 + 40 claims.
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 3);
    assert_eq!(app.db.count("SELECT count(*) FROM claims"), 46);
    app.db.assert_invariant();
}

#[test]
fn two_runs_against_one_service_use_fresh_coupons_and_both_pass() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for _ in 0..2 {
        let (code, stdout, stderr) = attack(&["--url", &app.base]);
        assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_has_lines(&stdout, &["RESULT: PASS (2 of 2 scenarios passed)"]);
    }
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 4);
}

#[test]
fn a_service_that_grants_every_claim_fails_the_checks_and_exits_one() {
    let _turn = serial::turn!();
    let base = fake_service_granting_every_claim();
    let (code, stdout, stderr) = attack(&["--url", &base, "--users", "20", "--stock", "5"]);

    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_has_lines(
        &stdout,
        &[
            "200 - 50",
            "[FAIL] 200 answers: 50 (expected 5)",
            "[FAIL] 400 out_of_stock answers: 0 (expected 45)",
            "[FAIL] 409 already_claimed answers: 0 (expected 9)",
            "[FAIL] 200 answers: 20 (expected 5)",
            "RESULT: FAIL (3 of 3 scenarios failed)",
        ],
    );
    let fails: Vec<String> = lines(&stdout)
        .into_iter()
        .filter(|l| l.starts_with("FAIL "))
        .collect();
    assert_eq!(fails.len(), 3, "{stdout}");
    assert!(
        fails[0].starts_with("FAIL Flash Sale Attack: 200 answers: 50 (expected 5);"),
        "the reason follows the verdict: {fails:?}"
    );
}

#[test]
fn an_unreachable_service_is_reported_and_exits_two() {
    let _turn = serial::turn!();
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, stdout, stderr) = attack(&["--url", &url]);

    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(&format!("cannot reach {url}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stdout.contains("PASS"), "{stdout}");
}

#[test]
fn usage_errors_exit_two_and_help_exits_zero() {
    let _turn = serial::turn!();
    for args in [
        &[][..],
        &["--url", "https://127.0.0.1:1"],
        &["--url", "http://127.0.0.1:1", "--users", "10"],
        &["--url", "http://127.0.0.1:1", "--concurrency", "0"],
        &["--url", "http://127.0.0.1:1", "--what"],
    ] {
        let (code, stdout, stderr) = attack(args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}\n{stderr}");
        assert!(stderr.contains("usage: flash-coupons attack"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, stdout, _) = attack(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("usage: flash-coupons attack"), "{stdout}");
}

#[test]
fn the_server_binary_hands_attack_to_the_attack_binary() {
    let _turn = serial::turn!();
    let server = server_binary();
    let (code, stdout, stderr) = run(Command::new(server).args(["attack", "--help"]));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.starts_with("usage: flash-coupons attack --url http://HOST:PORT"),
        "{stdout}"
    );
    assert_eq!(stderr, "");

    let attack_binary = server.with_file_name("flash-coupons-attack");
    let (direct_code, direct_stdout, _) = run(Command::new(attack_binary).arg("--help"));
    assert_eq!(direct_code, Some(0));
    assert_eq!(stdout, direct_stdout);
}

#[test]
fn without_the_attack_binary_beside_it_the_server_binary_names_what_to_build() {
    let _turn = serial::turn!();
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("server-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = dir.join("flash-coupons");
    // A link, not a copy: a copy's file is open for writing while it is
    // written, and a test forking then meanwhile would make running it fail
    // with ETXTBSY.
    std::fs::hard_link(SERVER, &server).expect("linking the server binary");
    let (code, stdout, stderr) =
        run(Command::new(&server).args(["attack", "--url", "http://127.0.0.1:1"]));
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "flash-coupons: attack needs {} (build it with `cargo build --release -p \
             flash-coupons-attack`, or `cargo build --release` for both binaries)\n",
            dir.join("flash-coupons-attack").display()
        )
    );
}

/// A fake of the service on 127.0.0.1 that is healthy, creates anything,
/// and answers every claim 200: a service that oversells.
fn fake_service_granting_every_claim() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake service");
    let base = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer_wrongly(stream));
        }
    });
    base
}

fn answer_wrongly(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, answer) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", json!({ "status": "ok" })),
        ("POST", "/api/coupons") => (
            "201 Created",
            json!({ "name": sent["name"], "amount": sent["amount"],
                    "remaining_amount": sent["amount"], "claimed_by": [] }),
        ),
        ("POST", "/api/coupons/claim") => (
            "200 OK",
            json!({ "user_id": sent["user_id"], "coupon_name": sent["coupon_name"],
                    "remaining_amount": 0 }),
        ),
        ("GET", _) => (
            "200 OK",
            json!({ "name": "x", "amount": 5, "remaining_amount": 0, "claimed_by": [] }),
        ),
        _ => ("404 Not Found", json!({ "error": { "code": "not_found" } })),
    };
    let answer = answer.to_string();
    let _ = write!(
        &stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

#[test]
fn with_idempotency_keys_a_replica_killed_mid_burst_still_leaves_every_count_exact() {
    let _turn = serial::alone();
    let db = crate::support::TestDb::new();
    let edge = crate::support::edge::Edge::start(&db.url, 2, &[]);
    let url = edge.base.clone();
    let burst = thread::spawn(move || {
        attack(&[
            "--url",
            &url,
            "--users",
            "3000",
            "--stock",
            "1000",
            "--concurrency",
            "64",
            "--idempotency-keys",
        ])
    });
    // Mid-burst: its answers in flight are lost, and the edge sends the
    // rest to the other replica.
    assert!(crate::support::wait_for(Duration::from_secs(60), || {
        db.count("SELECT count(*) FROM claims") >= 300
    }));
    edge.replicas[0].signal(libc::SIGKILL);
    let (code, out, err) = burst.join().unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("RESULT: PASS"), "{out}");
    assert_has_lines(&out, &["200 - 1000", "400 out_of_stock 2000"]);
    db.assert_invariant();
}
