//! The edge: the real HAProxy running the repository's deploy/haproxy.cfg,
//! started by deploy/run-local in front of three real server processes (the
//! binary cargo built), each test on a fresh database. HAProxy must be
//! installed (Debian/Ubuntu: apt-get install haproxy).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::answer::Answer;
use crate::support::client::{self, Exchange};
use crate::support::crowd::{all_at_once, assert_outcomes, claims_at_once, count, tally};
use crate::support::edge::{self, Edge};
use crate::support::http::{metric, scrape};
use crate::support::serial::{self, Turn};
use crate::support::{self, TestDb};

/// The tests here each run three replicas and HAProxy and put real load on
/// them; on a 2-core machine they run one at a time, beside no other test,
/// so that liveness bounds measure the edge and not the neighbouring test.
fn one_at_a_time() -> Turn {
    serial::alone()
}

/// One claim per (user, coupon), all released at once, each on its own
/// connection through the edge; the exchanges in the same order.
fn claim_all_at_once(addr: SocketAddr, claims: &[(String, String)]) -> Vec<Exchange> {
    claims_at_once(claims, move |_, user, coupon| {
        client::claim(addr, user, coupon, Duration::from_secs(60))
    })
}

/// A sale of `stock` units to `users` distinct users at once through the
/// edge: exactly `stock` answered 200 (each a distinct winner, exactly the
/// coupon's claimed_by), every other 400 out_of_stock.
fn flash_sale(edge: &Edge, db: &TestDb, coupon: &str, stock: usize, users: usize) {
    client::create(edge.addr, coupon, stock as i64);
    let claims: Vec<(String, String)> = (0..users)
        .map(|i| (format!("{coupon}_user_{i}"), coupon.to_owned()))
        .collect();
    let started = Instant::now();
    let exchanges = claim_all_at_once(edge.addr, &claims);
    eprintln!(
        "{coupon}: {users} users on {stock} units through the edge in {:?}: {:?}",
        started.elapsed(),
        tally(exchanges.iter())
    );
    assert_outcomes(
        &exchanges,
        &[(200, "", stock), (400, "out_of_stock", users - stock)],
        coupon,
    );
    let winners: HashSet<String> = exchanges
        .iter()
        .filter_map(Exchange::answered)
        .filter(|a| a.status == 200)
        .filter_map(|a| a.body["user_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(winners.len(), stock);
    let coupon_now =
        support::http::request("GET", &edge.url(&format!("/api/coupons/{coupon}")), None);
    assert_eq!(coupon_now.body["remaining_amount"], 0, "{coupon_now:?}");
    let holders: HashSet<String> = coupon_now.body["claimed_by"]
        .as_array()
        .expect("claimed_by")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        holders, winners,
        "claimed_by must be exactly the users answered 200"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM claims WHERE coupon_name = '{coupon}'"
        )),
        stock as i64
    );
    db.assert_invariant();
}

/// Claims decided by each replica (from its own /metrics), and checks that
/// none ran out of retries.
fn claims_by_replica(edge: &Edge) -> Vec<f64> {
    edge.replicas
        .iter()
        .map(|r| {
            let text = scrape(&format!("http://{}", r.addr));
            assert_eq!(
                metric(&text, "flash_coupons_claim_retries_exhausted_total"),
                0.0,
                "a claim ran out of retries on {}",
                r.addr
            );
            metric(&text, r#"flash_coupons_claims_total{outcome="claimed"}"#)
        })
        .collect()
}

#[test]
fn the_flash_sale_and_double_dip_attacks_through_the_edge_give_exact_counts() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 3, &[]);

    // The spec's Flash Sale Attack, then a bigger burst.
    flash_sale(&edge, &db, "FLASH", 5, 50);
    flash_sale(&edge, &db, "BIG", 100, 500);

    // The spec's Double Dip Attack: one user, ten claims at once.
    client::create(edge.addr, "DIP", 10);
    let claims: Vec<(String, String)> = (0..10)
        .map(|_| ("the_same_user".to_owned(), "DIP".to_owned()))
        .collect();
    let exchanges = claim_all_at_once(edge.addr, &claims);
    eprintln!("double dip through the edge: {:?}", tally(exchanges.iter()));
    assert_outcomes(
        &exchanges,
        &[(200, "", 1), (409, "already_claimed", 9)],
        "DIP",
    );
    assert_eq!(
        db.count("SELECT count(*) FROM claims WHERE coupon_name = 'DIP'"),
        1
    );
    db.assert_invariant();

    // The edge spread the work: more than one replica decided claims.
    let by_replica = claims_by_replica(&edge);
    eprintln!("claims decided per replica: {by_replica:?}");
    assert_eq!(by_replica.iter().sum::<f64>(), 106.0, "{by_replica:?}");
    assert!(
        by_replica.iter().filter(|n| **n > 0.0).count() >= 2,
        "one replica did all the work: {by_replica:?}"
    );
}

/// What became of one malformed request at the edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A complete HTTP/1 answer: status, and what its body is: `json:CODE`
    /// for the JSON error shape, `json` for other JSON, `html` for HAProxy's
    /// built-in pages.
    Answered {
        status: u16,
        body: String,
    },
    /// HTTP/2 frames (the edge's SETTINGS), then the edge closed it.
    Http2ThenClosed {
        goaway: bool,
    },
    /// The edge closed it without a byte.
    ClosedSilently,
    /// A reset, or nothing within the time limit: neither is acceptable.
    Reset(String),
    TimedOut {
        received: usize,
    },
}

/// Sends `bytes` (then half-closes if `half_close`), and reads until one
/// complete HTTP/1 answer or the edge's close, for at most `limit`.
fn malformed_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    half_close: bool,
    limit: Duration,
) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, limit) {
        Ok(s) => s,
        Err(e) => return Outcome::Reset(format!("connect: {e}")),
    };
    let deadline = Instant::now() + limit;
    // A send may fail once the edge has answered and closed (a 100 KiB head
    // is refused after its first 32 KiB): what it answered still counts.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if received.starts_with(b"HTTP/1.")
            && let Some((answer, _)) = Answer::parse(&received, false)
        {
            return Outcome::Answered {
                status: answer.status,
                body: body_kind(&answer.text),
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::TimedOut {
                received: received.len(),
            };
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::TimedOut {
                    received: received.len(),
                };
            }
            Err(e) => {
                if received.is_empty() {
                    return Outcome::Reset(e.to_string());
                }
                break;
            }
        }
    }
    if received.is_empty() {
        Outcome::ClosedSilently
    } else if received.starts_with(b"HTTP/1.") {
        match Answer::parse(&received, true) {
            Some((answer, _)) => Outcome::Answered {
                status: answer.status,
                body: body_kind(&answer.text),
            },
            None => Outcome::Reset(format!(
                "a cut answer: {:?}",
                String::from_utf8_lossy(&received)
            )),
        }
    } else {
        // HTTP/2 frames: type 7 is GOAWAY.
        Outcome::Http2ThenClosed {
            goaway: h2_frame_types(&received).contains(&7),
        }
    }
}

/// What a body is: `json:CODE` (the JSON error shape), `json`, `html` or
/// `other`.
fn body_kind(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(json) => match json["error"]["code"].as_str() {
            Some(code) => format!("json:{code}"),
            None => "json".into(),
        },
        Err(_) if body.starts_with("<html>") => "html".into(),
        Err(_) => "other".into(),
    }
}

/// The types of the complete HTTP/2 frames at the start of `bytes`.
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or(&[]);
    }
    types
}

#[test]
fn malformed_requests_end_at_the_edge_and_no_replica_holds_a_connection_or_thread_afterwards() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 3, &[]);
    // Threads before, measured once health checks are going.
    thread::sleep(Duration::from_secs(1));
    let threads_before: Vec<usize> = edge.replicas.iter().map(edge::Replica::threads).collect();

    let report = each_malformed_kind_30_times_at_once(edge.addr);
    each_got_an_answer_or_a_clean_close(&report);
    each_kind_got_the_answer_the_edge_gives_it(&report);

    // Nothing of it is left on any replica, and each still answers.
    let slack: Vec<usize> = threads_before.iter().map(|t| t + 8).collect();
    if let Some(held) = edge.replicas_settled(&slack, Duration::from_secs(30)) {
        panic!("a replica still holds something after the malformed requests: {held}");
    }
    for replica in &edge.replicas {
        assert_eq!(
            replica.health(Duration::from_secs(5)),
            Some(200),
            "{replica:?}"
        );
    }
    assert_eq!(
        support::http::try_status(&edge.url("/healthz"), Duration::from_secs(5)),
        Some(200)
    );
}

/// Each malformed kind: how many of its requests ended in each way.
type MalformedReport = BTreeMap<&'static str, BTreeMap<Outcome, usize>>;

/// The malformed requests sent to the edge: what each is, its bytes, and
/// whether the client half-closes after sending it.
fn malformed_kinds() -> Vec<(&'static str, Vec<u8>, bool)> {
    let claim_head =
        "POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    vec![
        (
            "the HTTP/2 preface and nothing else",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            false,
        ),
        (
            "an HTTP/2.0 request line",
            b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(),
            false,
        ),
        (
            "an HTTP/3.0 request line",
            b"GET /healthz HTTP/3.0\r\nHost: t\r\n\r\n".to_vec(),
            false,
        ),
        (
            "an HTTP/1.2 request line",
            b"GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n".to_vec(),
            false,
        ),
        (
            "a 1 TB Content-Length",
            format!("{claim_head}Content-Length: 1099511627776\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "Content-Length with Transfer-Encoding: chunked",
            format!("{claim_head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .into_bytes(),
            false,
        ),
        (
            "two different Content-Lengths",
            format!("{claim_head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
                .into_bytes(),
            false,
        ),
        ("a 100 KiB header", big_header.into_bytes(), false),
        (
            "a header value in UTF-8",
            format!("{claim_head}X-Name: Jos\u{e9}\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
            false,
        ),
        (
            "half a request line, then close",
            b"POST /api/cou".to_vec(),
            true,
        ),
    ]
}

/// Each kind 30 times at once; the kinds one after another.
fn each_malformed_kind_30_times_at_once(addr: SocketAddr) -> MalformedReport {
    let mut report = BTreeMap::new();
    let started = Instant::now();
    for (name, bytes, half_close) in malformed_kinds() {
        let bytes = Arc::new(bytes);
        let handles: Vec<_> = (0..30)
            .map(|_| {
                let bytes = Arc::clone(&bytes);
                thread::spawn(move || {
                    malformed_exchange(addr, &bytes, half_close, Duration::from_secs(25))
                })
            })
            .collect();
        let mut outcomes = BTreeMap::new();
        for h in handles {
            *outcomes.entry(h.join().unwrap()).or_insert(0usize) += 1;
        }
        report.insert(name, outcomes);
    }
    eprintln!(
        "30 of each malformed request at the edge ({:?}):",
        started.elapsed()
    );
    for (name, outcomes) in &report {
        eprintln!("  {name}: {outcomes:?}");
    }
    report
}

fn each_got_an_answer_or_a_clean_close(report: &MalformedReport) {
    for (name, outcomes) in report {
        for outcome in outcomes.keys() {
            assert!(
                matches!(
                    outcome,
                    Outcome::Answered { .. }
                        | Outcome::Http2ThenClosed { .. }
                        | Outcome::ClosedSilently
                ),
                "{name}: neither an answer nor a clean close: {outcomes:?}"
            );
        }
    }
}

fn each_kind_got_the_answer_the_edge_gives_it(report: &MalformedReport) {
    let only = |name: &str, outcome: Outcome| {
        assert_eq!(
            report[name].get(&outcome),
            Some(&30),
            "{name}: {:?}",
            report[name]
        );
    };
    // Refused by the edge itself.
    only(
        "a 1 TB Content-Length",
        Outcome::Answered {
            status: 413,
            body: "json:payload_too_large".into(),
        },
    );
    // tiny_http would drop the connection unanswered (defect 21).
    only(
        "a header value in UTF-8",
        Outcome::Answered {
            status: 400,
            body: "json:header_not_ascii".into(),
        },
    );
    for refused in ["two different Content-Lengths", "a 100 KiB header"] {
        assert!(
            report[refused]
                .keys()
                .all(|o| matches!(o, Outcome::Answered { status: 400, .. })),
            "{refused}: {:?}",
            report[refused]
        );
    }
    assert!(
        report["half a request line, then close"]
            .keys()
            .all(|o| matches!(
                o,
                Outcome::Answered { status: 400, .. } | Outcome::ClosedSilently
            )),
        "{:?}",
        report["half a request line, then close"]
    );
    // The preface makes an HTTP/2 connection, which the edge closes itself
    // when nothing follows.
    assert!(
        report["the HTTP/2 preface and nothing else"]
            .keys()
            .all(|o| matches!(o, Outcome::Http2ThenClosed { .. })),
        "{:?}",
        report["the HTTP/2 preface and nothing else"]
    );
    // Versions above 1.1 are answered as HTTP/1.1 (a replica sees a plain
    // HTTP/1.1 request, never the version tiny_http hangs on).
    for version in [
        "an HTTP/2.0 request line",
        "an HTTP/3.0 request line",
        "an HTTP/1.2 request line",
    ] {
        assert!(
            report[version].keys().all(|o| matches!(
                o,
                Outcome::Answered {
                    status: 200 | 400 | 505,
                    ..
                }
            )),
            "{version}: {:?}",
            report[version]
        );
    }
}

/// Writes `request` on `stream` and reads exactly one answer; None when no
/// complete answer came within `limit`.
fn send_and_read_one(stream: &mut TcpStream, request: &[u8], limit: Duration) -> Option<Answer> {
    stream.set_write_timeout(Some(limit)).ok()?;
    stream.write_all(request).ok()?;
    client::read_answer(stream, limit).ok()
}

#[test]
fn claimers_that_keep_their_connections_open_are_answered_every_round_after_idle_pauses() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 3, &[]);
    client::create(edge.addr, "KEPT", 100);
    let addr = edge.addr;
    // Every connection stays open on the client's side to the end.
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3 {
        // Past tiny_http's 5 s idle timeout and thread expiry.
        thread::sleep(Duration::from_millis(6500));
        let released = Arc::new(Mutex::new(None::<Instant>));
        let answers = all_at_once((0..50).map(|i| {
            let held = Arc::clone(&held);
            let released = Arc::clone(&released);
            let request = client::claim_text(&format!("kept_{round}_{i}"), "KEPT");
            move || {
                released.lock().unwrap().get_or_insert_with(Instant::now);
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
                let answer =
                    send_and_read_one(&mut stream, request.as_bytes(), Duration::from_secs(20));
                let answered_at = Instant::now();
                held.lock().unwrap().push(stream);
                answer.map(|answer| (answer.status, answered_at))
            }
        }));
        let released = released.lock().unwrap().expect("released");
        let slowest = answers
            .iter()
            .flatten()
            .map(|(_, at)| at.saturating_duration_since(released))
            .max()
            .unwrap_or_default();
        let statuses: Vec<Option<u16>> = answers
            .iter()
            .map(|a| a.as_ref().map(|(s, _)| *s))
            .collect();
        eprintln!("round {round}: 50 keep-alive claims answered, the last after {slowest:?}");
        let expected = if round < 2 { 200 } else { 400 };
        assert_eq!(
            statuses.iter().filter(|s| **s == Some(expected)).count(),
            50,
            "round {round}: {statuses:?}"
        );
        assert!(
            slowest < Duration::from_secs(2),
            "round {round}: the last answer took {slowest:?}"
        );
    }
    let coupon = support::http::request("GET", &edge.url("/api/coupons/KEPT"), None);
    assert_eq!(coupon.body["remaining_amount"], 0);
    assert_eq!(db.count("SELECT count(*) FROM claims"), 100);
    db.assert_invariant();
    drop(held);
}

#[test]
fn two_thousand_idle_and_a_thousand_trickling_connections_at_the_edge_do_not_change_a_flash_sale() {
    let _turn = one_at_a_time();
    flash_coupons::transport::raise_descriptor_limit()
        .expect("raising this process's descriptor limit");
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 3, &[]);
    let threads_before: Vec<usize> = edge.replicas.iter().map(edge::Replica::threads).collect();
    let addr = edge.addr;

    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(addr).expect("an idle connection to the edge"))
        .collect();
    // Trickling: one byte of a request head per connection per second,
    // until the edge cuts them (timeout http-request) or 30 s have passed.
    let trickler = thread::spawn(move || {
        let mut slow: Vec<TcpStream> = (0..1000)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect();
        let opened = slow.len();
        let started = Instant::now();
        let head = b"POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\n";
        for i in 0..30 {
            // A write fails once the edge has closed the connection (the
            // first one after its close may still succeed).
            slow.retain_mut(|s| s.write_all(&head[i % head.len()..][..1]).is_ok());
            if slow.is_empty() {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
        (opened, slow.len(), started.elapsed())
    });
    thread::sleep(Duration::from_secs(2));

    // None of them reaches a replica: the edge waits for complete heads.
    let on_replicas: usize = edge
        .replicas
        .iter()
        .map(edge::Replica::held_connections)
        .sum();
    eprintln!("connections the replicas hold during the sale's run-up: {on_replicas}");

    flash_sale(&edge, &db, "FLASH", 10, 100);

    let (opened, still, after) = trickler.join().unwrap();
    eprintln!("{opened} trickling connections opened; after {after:?}, {still} still open");
    assert_eq!(opened, 1000);
    assert_eq!(still, 0, "the edge did not cut every trickling head");
    // The idle ones were cut too: each has its 408 or its close waiting.
    let mut cut = 0;
    for mut stream in &idle {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        if !matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            cut += 1;
        }
    }
    eprintln!("idle connections the edge had cut by then: {cut} of 2000");
    assert_eq!(cut, 2000);
    drop(idle);
    let slack: Vec<usize> = threads_before.iter().map(|t| t + 8).collect();
    if let Some(held) = edge.replicas_settled(&slack, Duration::from_secs(30)) {
        panic!("{held}");
    }
    assert_eq!(
        support::http::try_status(&edge.url("/healthz"), Duration::from_secs(5)),
        Some(200)
    );
}

#[test]
fn with_every_replica_at_its_connection_limit_the_excess_waits_in_the_edges_queue_then_gets_503() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    // Two workers each, so the edge lets two requests at a time through to
    // each replica (run-local derives the limit from WORKERS); four may wait.
    // The held claims must outlast the setup on a busy machine: the
    // service's statement_timeout (10 s) is raised for this database (its
    // DATABASE_URL options come last and win); the lock is released at the
    // end anyway.
    let url = format!("{} options='-c statement_timeout=60000'", db.url);
    let edge = Edge::start(
        &url,
        3,
        &[
            ("WORKERS", "2"),
            ("EDGE_MAX_QUEUE", "4"),
            ("DB_QUERY_TIMEOUT_MS", "30000"),
        ],
    );
    client::create(edge.addr, "HELD", 100);

    // Claims on HELD wait on its row lock, each holding its replica
    // connection: two per replica fill every replica's limit.
    let mut locker = db.client();
    let mut lock = locker.transaction().expect("a transaction");
    lock.execute("SELECT 1 FROM coupons WHERE name = 'HELD' FOR UPDATE", &[])
        .expect("locking the coupon");
    let addr = edge.addr;
    let held_claims: Vec<_> = (0..6)
        .map(|i| {
            thread::spawn(move || {
                client::claim(addr, &format!("held_{i}"), "HELD", Duration::from_secs(60))
            })
        })
        .collect();
    every_replica_takes_two_held_claims(&edge);

    let excess = seven_more_requests_one_after_another(addr);
    // Released, the six held claims all succeed.
    lock.rollback().expect("releasing the lock");
    let held_claims: Vec<Exchange> = held_claims.into_iter().map(|h| h.join().unwrap()).collect();
    for e in &held_claims {
        eprintln!(
            "held claim: {:?} after {:?}",
            e.answered().map(|a| (a.status, a.code().to_owned())),
            e.elapsed()
        );
    }
    the_excess_waited_in_the_queue_or_found_it_full_and_got_503(&edge, &excess);
    assert_outcomes(&held_claims, &[(200, "", 6)], "the held claims");
    let coupon = support::http::request("GET", &edge.url("/api/coupons/HELD"), None);
    assert_eq!(coupon.body["remaining_amount"], 94, "{coupon:?}");
    db.assert_invariant();
    assert_eq!(
        support::http::try_status(&edge.url("/healthz"), Duration::from_secs(5)),
        Some(200)
    );
}

/// Claims held by the row lock take two connections on every replica, its
/// limit, soon enough to test the queue; HAProxy counts them too.
fn every_replica_takes_two_held_claims(edge: &Edge) {
    let waiting = Instant::now();
    let full = support::wait_for(Duration::from_secs(15), || {
        edge.replicas.iter().all(|r| r.held_connections() >= 2)
    });
    assert!(
        full,
        "the replicas did not each get two claims: {:?}",
        edge.replicas
            .iter()
            .map(edge::Replica::held_connections)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "every replica at its limit after {:?}: {:?}",
        waiting.elapsed(),
        edge.replicas
            .iter()
            .map(edge::Replica::held_connections)
            .collect::<Vec<_>>()
    );
    // The held claims last until the statement_timeout the test sets
    // (60 s) cuts them; what follows needs about 6 s of that, and HAProxy's
    // timeout server (30 s) must not pass either.
    assert!(
        waiting.elapsed() < Duration::from_secs(20),
        "the replicas took {:?} to take their claims: too slow to test the queue",
        waiting.elapsed()
    );
    let in_rotation: Vec<(String, u64)> = edge
        .servers()
        .into_iter()
        // "UP 1/2": up, one failed check from going down (as a slot that
        // has just been resolved starts).
        .filter(|s| s.status.starts_with("UP"))
        .map(|s| (s.name, s.current))
        .collect();
    eprintln!("HAProxy's view, requests in flight per replica: {in_rotation:?}");
    assert_eq!(in_rotation.len(), 3, "{in_rotation:?}");
    assert!(in_rotation.iter().all(|(_, n)| *n == 2), "{in_rotation:?}");
}

/// Seven more requests, one after another: four wait in the queue (then
/// 503 when timeout queue passes), three find it full (503 at once).
fn seven_more_requests_one_after_another(addr: SocketAddr) -> Vec<Exchange> {
    let mut excess = Vec::new();
    for _ in 0..7 {
        excess.push(thread::spawn(move || {
            client::get(addr, "/healthz", Duration::from_secs(30))
        }));
        thread::sleep(Duration::from_millis(100));
    }
    let excess: Vec<Exchange> = excess.into_iter().map(|h| h.join().unwrap()).collect();
    for e in &excess {
        eprintln!(
            "excess request: {:?} after {:?}",
            e.answered()
                .map(|a| (a.status, a.code().to_owned(), a.header("Retry-After"))),
            e.elapsed()
        );
    }
    excess
}

fn the_excess_waited_in_the_queue_or_found_it_full_and_got_503(edge: &Edge, excess: &[Exchange]) {
    if count(excess, 503, "") != 7 {
        let log: Vec<String> = edge
            .log()
            .into_iter()
            .filter(|l| !l.contains("/healthz 200"))
            .collect();
        panic!(
            "requests got through while every replica should have been full:\n{}",
            log.join("\n")
        );
    }
    for e in excess {
        let answer = e.answered().unwrap_or_else(|| panic!("no answer: {e:?}"));
        answer.assert_error(503, answer.code());
        assert!(
            answer.header("Retry-After").is_some(),
            "no Retry-After: {answer:?}"
        );
        assert!(e.elapsed() < Duration::from_secs(15), "{e:?}");
    }
    assert_outcomes(
        excess,
        &[(503, "service_unavailable", 4), (503, "overloaded", 3)],
        "the excess",
    );
}

/// A connection to `to` from the loopback address `from` (the whole of
/// 127.0.0.0/8 is loopback on Linux), so the edge sees a client address of
/// the test's own.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// GET /healthz through the edge from `from`; None when no whole answer
/// came.
fn health_from(from: Ipv4Addr, to: SocketAddr) -> Option<Answer> {
    let mut stream = connect_from(from, to).expect("connecting from a loopback address");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("sending");
    client::read_answer(&mut stream, Duration::from_secs(10)).ok()
}

/// The status of an answer, 0 for none.
fn status_of(answer: &Option<Answer>) -> u16 {
    answer.as_ref().map_or(0, |a| a.status)
}

#[test]
fn the_per_address_rate_limit_answers_429_with_retry_after_and_serves_again_after_the_window() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    // Client addresses of this test's own (run-local's readiness probes
    // came from 127.0.0.1).
    let octet = (std::process::id() % 200) as u8 + 20;
    let client = Ipv4Addr::new(127, 77, octet, 1);
    let neighbour = Ipv4Addr::new(127, 77, octet, 2);

    // 0 is off, like unset (which every other test here runs with).
    {
        let edge = Edge::start(&db.url, 1, &[("EDGE_IP_RATE_LIMIT", "0")]);
        let statuses: Vec<u16> = (0..30)
            .map(|_| status_of(&health_from(client, edge.addr)))
            .collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }

    let edge = Edge::start(&db.url, 3, &[("EDGE_IP_RATE_LIMIT", "20")]);

    let answers: Vec<_> = (0..30).map(|_| health_from(client, edge.addr)).collect();
    let served = answers.iter().filter(|a| status_of(a) == 200).count();
    eprintln!(
        "30 requests in a row from one address with EDGE_IP_RATE_LIMIT=20: {served} served, {} refused",
        answers.iter().filter(|a| status_of(a) == 429).count()
    );
    // 20 in a window; one more when the burst straddles the boundary of
    // HAProxy's 10 s periods (its sliding rate is an estimate there).
    assert!((20..=21).contains(&served), "{answers:?}");
    for refused in answers.iter().filter(|a| status_of(a) != 200) {
        assert_eq!(status_of(refused), 429, "{answers:?}");
        let refused = refused.as_ref().expect("a 429 is an answer");
        assert_eq!(refused.code(), "rate_limited", "{refused:?}");
        assert_eq!(refused.header("Retry-After"), Some("10"), "{refused:?}");
        assert_eq!(
            refused.header("Content-Type"),
            Some("application/json"),
            "{refused:?}"
        );
    }
    // The limit is per address: another client is served meanwhile.
    assert_eq!(status_of(&health_from(neighbour, edge.addr)), 200);

    // Served again once the window has passed (polling once a second; the
    // polls count too).
    let started = Instant::now();
    let mut status = 429;
    while started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_secs(1));
        status = status_of(&health_from(client, edge.addr));
        if status == 200 {
            break;
        }
    }
    eprintln!("served again after {:?}", started.elapsed());
    assert_eq!(status, 200, "still refused after 30 s");
}

/// 413, and 400 and 408 about bodies, here; 429 and 503 in the rate-limit
/// and connection-limit tests. The exception, recorded below: HAProxy 2.6
/// answers errors of its HTTP/1 parser (a malformed request line, a head that
/// does not complete in time) with its built-in HTML, whatever is configured.
#[test]
fn the_edges_own_answers_carry_the_services_json_error_body() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 3, &[]);
    let addr = edge.addr;
    let claim_head =
        "POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";

    // The slow ones (timeout http-request, 10 s) run meanwhile.
    let slow_body = {
        let head = format!("{claim_head}Content-Length: 60\r\n\r\n");
        thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(b"{\"user_id\":").unwrap();
            read_answer(s, Duration::from_secs(30))
        })
    };
    let slow_head = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for byte in b"GET /healthz HTTP/1.1\r\nHost: t\r\n".iter().take(20) {
            if s.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(700));
        }
        read_answer(s, Duration::from_secs(30))
    });

    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(bytes);
        read_answer(s, Duration::from_secs(15))
    };

    // A declared body over 16 KiB: refused before any of it is read.
    let got = send(format!("{claim_head}Content-Length: 16385\r\n\r\n").as_bytes());
    expect_json("Content-Length over 16 KiB", &got, 413, "payload_too_large");
    assert_eq!(
        got.header("Retry-After"),
        None,
        "waiting does not help a 413: {got:?}"
    );
    // A chunked body over 16 KiB, measured once received.
    let chunk = format!("1000\r\n{}\r\n", "a".repeat(4096));
    let got = send(
        format!(
            "{claim_head}Transfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            chunk.repeat(5)
        )
        .as_bytes(),
    );
    expect_json("a chunked body over 16 KiB", &got, 413, "payload_too_large");
    // A body whose chunked framing is broken, after a valid head.
    let got = {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("{claim_head}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
            .unwrap();
        thread::sleep(Duration::from_millis(300));
        let _ = s.write_all(b"zz\r\nnot hex\r\n0\r\n\r\n");
        read_answer(s, Duration::from_secs(15))
    };
    expect_json("a malformed chunked body", &got, 400, "bad_request");
    // A body of exactly 16 KiB passes the edge (the replica decides).
    let got = send(
        format!(
            "{claim_head}Content-Length: 16384\r\n\r\n{}",
            " ".repeat(16384)
        )
        .as_bytes(),
    );
    assert_eq!(got.status, 400, "{got:?}");
    assert_eq!(got.body["error"]["code"], "invalid_json", "{got:?}");

    // A malformed request line: HAProxy 2.6 answers errors it finds before
    // a request exists with its built-in HTML (see deploy/haproxy.cfg);
    // what matters is that it is a 400 from the edge.
    let got = send(b"GARBAGE\r\n\r\n");
    assert_eq!(got.status, 400, "{got:?}");
    eprintln!(
        "a malformed request line: {} {:?}",
        got.status,
        got.header("Content-Type")
    );

    let got = slow_body.join().unwrap();
    expect_json("a body that stopped arriving", &got, 408, "request_timeout");
    let got = slow_head.join().unwrap();
    assert_eq!(got.status, 408, "a head that trickles: {got:?}");
    eprintln!(
        "a head that trickles: {} {:?}",
        got.status,
        got.header("Content-Type")
    );

    // Every replica still answers, and holds nothing.
    for replica in &edge.replicas {
        assert_eq!(
            replica.health(Duration::from_secs(5)),
            Some(200),
            "{replica:?}"
        );
    }
}

/// The service's JSON error body, with this status and code, from the
/// edge.
fn expect_json(what: &str, got: &Answer, status: u16, code: &str) {
    assert_eq!(got.status, status, "{what}: {got:?}");
    assert_eq!(
        got.header("Content-Type"),
        Some("application/json"),
        "{what}: {got:?}"
    );
    assert_eq!(got.body["error"]["code"], code, "{what}: {got:?}");
    assert!(
        got.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {got:?}"
    );
}

/// Reads one answer from `stream` (until it is complete or closed); fails
/// the test when none came.
fn read_answer(mut stream: TcpStream, limit: Duration) -> Answer {
    client::read_answer(&mut stream, limit).unwrap_or_else(|failure| panic!("no answer: {failure}"))
}

#[test]
fn every_error_file_of_the_edge_is_the_services_json_error_body() {
    let _turn = serial::turn!();
    let dir = edge::repo().join("deploy/errors");
    let mut seen = Vec::new();
    let mut bodies = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/errors") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if name.ends_with(".json") {
            // A body alone, which `http-request return ... file` sends with
            // the status and headers written in the configuration.
            let json: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            expect_error_body(&name, &json);
            let config = std::fs::read_to_string(edge::repo().join("deploy/haproxy.cfg")).unwrap();
            assert!(
                config.contains(&format!("content-type application/json file errors/{name}")),
                "{name}: not returned as JSON by deploy/haproxy.cfg"
            );
            bodies.push(name);
            continue;
        }
        let (answer, _) = Answer::parse(&bytes, false)
            .unwrap_or_else(|| panic!("{name}: not a complete HTTP answer"));
        // HAProxy sends the file as it is: its lines are checked as written.
        let text = String::from_utf8_lossy(&bytes);
        let head = text.split("\r\n\r\n").next().unwrap();
        assert!(
            head.lines().any(|l| l == "Content-Type: application/json"),
            "{name}: {head}"
        );
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no Content-Length"));
        assert_eq!(
            length,
            bytes.len() - head.len() - 4,
            "{name}: Content-Length"
        );
        let json: Value =
            serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("{name}: {e}"));
        expect_error_body(&name, &json);
        let retry_after = head.lines().any(|l| l.starts_with("Retry-After: "));
        assert_eq!(
            retry_after,
            matches!(answer.status, 429 | 503 | 504),
            "{name}: Retry-After where waiting helps, and only there"
        );
        seen.push(answer.status);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            400, 403, 404, 404, 408, 413, 429, 500, 501, 502, 503, 503, 504
        ]
    );
    assert_eq!(bodies, ["400-not-ascii.json"]);
}

/// `{"error":{"code":"snake_case","message":"A sentence."}}`, as the
/// service writes it.
fn expect_error_body(name: &str, json: &Value) {
    let code = json["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no code"));
    assert!(
        !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{name}: {code}"
    );
    let message = json["error"]["message"].as_str().unwrap_or("");
    assert!(message.ends_with('.'), "{name}: {message:?}");
}

#[test]
fn metrics_are_not_served_through_the_edge_but_each_replica_serves_its_own() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 2, &[]);
    let send = |request: String| {
        let mut s = TcpStream::connect(edge.addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        read_answer(s, Duration::from_secs(15))
    };
    // Whatever the spelling, and for HEAD too (whose answer has no body).
    for target in [
        "/metrics",
        "/metrics?name=flash_coupons_claims_total",
        "/metrics/",
        "/metrics/x",
        "//metrics",
        "/METRICS",
        "/%6Detrics",
        "http://app/metrics",
    ] {
        let got = send(format!("GET {target} HTTP/1.1\r\nHost: app\r\n\r\n"));
        expect_json(&format!("GET {target}"), &got, 404, "not_found");
        assert!(
            got.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("internal network")),
            "GET {target}: {got:?}"
        );
        assert!(
            !got.text.contains("flash_coupons_"),
            "GET {target}: {got:?}"
        );
    }
    let got = support::http::request("HEAD", &edge.url("/metrics"), None);
    assert_eq!(got.status, 404, "HEAD /metrics: {got:?}");
    // A path that only begins the same way goes through as any other.
    let got = send("GET /metricsx HTTP/1.1\r\nHost: t\r\n\r\n".into());
    expect_json("GET /metricsx", &got, 404, "not_found");
    assert!(
        !got.text.contains("internal network"),
        "GET /metricsx is the replica's own 404: {got:?}"
    );

    // Each replica still serves its own, on its own address.
    for replica in &edge.replicas {
        let text = scrape(&format!("http://{}", replica.addr));
        assert!(
            text.contains("\nflash_coupons_database_up 1\n"),
            "{replica:?}: {text}"
        );
    }
}

/// A minimal HTTP/2 client over cleartext with prior knowledge: the
/// preface, SETTINGS, and per request a HEADERS frame whose fields are HPACK
/// literals without indexing (or static-table entries), and a DATA frame.
struct H2 {
    stream: TcpStream,
    next_stream: u32,
}

impl H2 {
    fn connect(addr: SocketAddr) -> H2 {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        stream.write_all(&frame(4, 0, 0, &[])).unwrap();
        H2 {
            stream,
            next_stream: 1,
        }
    }

    /// One request; the answer's status and body.
    fn request(&mut self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        let id = self.next_stream;
        self.next_stream += 2;
        // :method GET / POST and :scheme http are static-table entries.
        let mut block = vec![if method == "GET" { 0x82 } else { 0x83 }, 0x86];
        literal(&mut block, 4, path); // :path
        literal(&mut block, 1, "edge"); // :authority
        if let Some(body) = json {
            literal(&mut block, 31, "application/json"); // content-type
            literal(&mut block, 28, &body.len().to_string()); // content-length
        }
        let end_stream = if json.is_none() { 0x1 } else { 0 };
        self.stream
            .write_all(&frame(1, 0x4 | end_stream, id, &block))
            .unwrap();
        if let Some(body) = json {
            // DATA frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
            let chunks: Vec<&[u8]> = body.as_bytes().chunks(16384).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let last = if i + 1 == chunks.len() { 0x1 } else { 0 };
                // The edge may answer and close the stream before all of it.
                let _ = self.stream.write_all(&frame(0, last, id, chunk));
            }
        }
        let mut status = 0;
        let mut body = Vec::new();
        loop {
            let (kind, flags, stream_id, payload) = self.read_frame();
            match kind {
                4 if flags & 0x1 == 0 => self.stream.write_all(&frame(4, 0x1, 0, &[])).unwrap(),
                7 => panic!("GOAWAY from the edge: {payload:?}"),
                3 if stream_id == id => panic!("RST_STREAM from the edge: {payload:?}"),
                1 if stream_id == id => status = decode_status(&payload),
                0 if stream_id == id => body.extend_from_slice(&payload),
                _ => {}
            }
            if stream_id == id && matches!(kind, 0 | 1) && flags & 0x1 != 0 {
                return (status, String::from_utf8_lossy(&body).into_owned());
            }
        }
    }

    fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        self.stream.read_exact(&mut head).expect("an HTTP/2 frame");
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.stream
            .read_exact(&mut payload)
            .expect("an HTTP/2 frame's payload");
        (head[3], head[4], id, payload)
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK literal field without indexing, its name from the static table.
fn literal(block: &mut Vec<u8>, name_index: u8, value: &str) {
    if name_index < 15 {
        block.push(name_index);
    } else {
        block.extend_from_slice(&[0x0f, name_index - 15]);
    }
    assert!(value.len() < 127, "a short value");
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// The :status of a response header block (HAProxy puts it first): a
/// static-table entry, or a literal with the name :status (index 8).
fn decode_status(block: &[u8]) -> u16 {
    let first = block[0];
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            other => panic!("static entry {other} is not a :status"),
        };
    }
    let name = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    assert_eq!(name, 8, "the first field is not :status: {block:?}");
    assert_eq!(block[1] & 0x80, 0, "a Huffman-coded :status: {block:?}");
    let len = usize::from(block[1] & 0x7f);
    std::str::from_utf8(&block[2..2 + len])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an unreadable :status: {block:?}"))
}

#[test]
fn http2_with_prior_knowledge_is_served_through_the_edge() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let edge = Edge::start(&db.url, 3, &[]);
    client::create(edge.addr, "H2C", 1);

    let mut h2 = H2::connect(edge.addr);
    let (status, body) = h2.request("GET", "/healthz", None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let claim = r#"{"user_id":"h2_user","coupon_name":"H2C"}"#;
    let (status, body) = h2.request("POST", "/api/coupons/claim", Some(claim));
    assert_eq!(status, 200, "{body}");
    let (status, body) = h2.request("POST", "/api/coupons/claim", Some(claim));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already_claimed"), "{body}");
    let (status, body) = h2.request("GET", "/api/coupons/H2C", None);
    assert_eq!(status, 200, "{body}");
    let coupon: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(coupon["claimed_by"], serde_json::json!(["h2_user"]));
    // A body over 16 KiB is refused at the edge over HTTP/2 as well.
    let big = format!(
        r#"{{"user_id":"{}","coupon_name":"H2C"}}"#,
        "u".repeat(17 * 1024)
    );
    let (status, body) = h2.request("POST", "/api/coupons/claim", Some(&big));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    db.assert_invariant();
}

#[test]
fn deploy_run_local_stops_everything_on_sigterm_and_exits_zero() {
    let _turn = one_at_a_time();
    let db = TestDb::new();
    let mut edge = Edge::start(&db.url, 3, &[]);
    assert_eq!(
        support::http::try_status(&edge.url("/healthz"), Duration::from_secs(5)),
        Some(200)
    );
    let replicas = edge.replicas.clone();
    let haproxy = edge.haproxy_pid;
    let code = edge.stop(Duration::from_secs(60));
    let log = edge.log();
    assert_eq!(code, Some(Some(0)), "{}", log.join("\n"));
    for replica in &replicas {
        assert!(!replica.alive(), "replica {replica:?} is still running");
        let line = format!("(pid {}) exited with code 0", replica.pid);
        assert!(
            log.iter()
                .any(|l| l.starts_with("[run-local]") && l.contains(&line)),
            "no {line:?} in:\n{}",
            log.join("\n")
        );
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{haproxy}")).exists()
            || std::fs::read_to_string(format!("/proc/{haproxy}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "haproxy {haproxy} is still running"
    );
}

/// The pids run-local named in its own lines about replicas.
fn replica_pids_in(log: &[String]) -> Vec<i32> {
    log.iter()
        .filter(|l| l.starts_with("[run-local] replica "))
        .filter_map(|l| {
            l.split("(pid ")
                .nth(1)?
                .split([')', ','])
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn deploy_run_local_fails_with_a_clear_message_when_a_replica_or_haproxy_cannot_start() {
    let _turn = one_at_a_time();
    // No database there: every replica gives up after DB_STARTUP_TIMEOUT_SECS.
    let failed = Edge::try_start(
        "postgres://postgres@127.0.0.1:1/nothing",
        2,
        &[("DB_STARTUP_TIMEOUT_SECS", "1")],
    )
    .err()
    .expect("run-local got ready without a database");
    let text = failed.log.join("\n");
    assert_eq!(failed.code, Some(1), "{text}");
    assert!(
        failed
            .log
            .iter()
            .any(|l| l.starts_with("[run-local] failed: replica") && l.contains("during start-up")),
        "{text}"
    );

    // A setting for haproxy.cfg that is no number: refused before anything starts.
    let db = TestDb::new();
    let failed = Edge::try_start(&db.url, 2, &[("EDGE_IP_RATE_LIMIT", "lots")])
        .err()
        .expect("run-local got ready with EDGE_IP_RATE_LIMIT=lots");
    let text = failed.log.join("\n");
    assert_eq!(failed.code, Some(1), "{text}");
    assert!(
        failed
            .log
            .iter()
            .any(|l| l.starts_with("[run-local] failed: EDGE_IP_RATE_LIMIT")),
        "{text}"
    );

    // HAProxy failing to start (here, its admin socket cannot be created).
    let failed = Edge::try_start(
        &db.url,
        2,
        &[(
            "EDGE_STATS_SOCKET",
            "/nonexistent/flash-coupons/haproxy.sock",
        )],
    )
    .err()
    .expect("run-local got ready although HAProxy could not start");
    let text = failed.log.join("\n");
    assert_eq!(failed.code, Some(1), "{text}");
    assert!(
        failed
            .log
            .iter()
            .any(|l| l.starts_with("[run-local] failed: haproxy") && l.contains("during start-up")),
        "{text}"
    );
    // The replicas it had started are stopped.
    let pids = replica_pids_in(&failed.log);
    assert_eq!(pids.len(), 2, "{text}");
    for pid in pids {
        let replica = edge::Replica {
            pid,
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        assert!(!replica.alive(), "replica {pid} is still running:\n{text}");
    }
}

#[test]
fn the_edge_logs_only_requests_that_went_wrong_unless_told_to_log_every_request() {
    let _one = one_at_a_time();
    let db = TestDb::new();
    for (env, every_request) in [(&[][..], false), (&[("EDGE_LOG_REQUESTS", "1")][..], true)] {
        let edge = Edge::start(&db.url, 1, env);
        let served = support::http::request("GET", &edge.url("/api/coupons/LOG_SERVED"), None);
        assert_eq!(served.status, 404, "{served:?}");
        // Refused by the edge itself (a body declared over 16 KiB, answered
        // at once: the body is never sent): always logged.
        let mut stream = TcpStream::connect(edge.addr).unwrap();
        stream
            .write_all(
                b"POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\n\
                  Content-Type: application/json\r\nContent-Length: 20000\r\n\r\n",
            )
            .unwrap();
        let refused = read_answer(stream, Duration::from_secs(15));
        assert_eq!(refused.status, 413, "{refused:?}");
        let logged = |path: &str| edge.log().iter().any(|l| l.contains(path));
        assert!(
            support::wait_for(Duration::from_secs(10), || logged(
                "POST /api/coupons/claim"
            )),
            "the refused request was not logged (EDGE_LOG_REQUESTS {every_request}): {:#?}",
            edge.log()
        );
        // Lines come in request order: the served request's, if any, is in.
        assert_eq!(
            logged("/api/coupons/LOG_SERVED"),
            every_request,
            "{:#?}",
            edge.log()
        );
    }
}
