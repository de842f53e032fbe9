//! Several replicas of the server on one database, and what an edge in
//! front of them relies on: one coupon's claim transactions take turns over
//! every server (a session-level advisory lock on the coupon, taken before
//! the transaction), a replica given SIGTERM first fails /healthz for its
//! drain period while serving everything else, and the request log names
//! the client an edge forwards in `X-Forwarded-For`.
//!
//! Every server here is the real binary as a child process, on 127.0.0.1.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::answer::Answer;
use crate::support::client::{self, Exchange, Failure};
use crate::support::crowd::{all_at_once, tally};
use crate::support::http::{metric, scrape};
use crate::support::process::ServerProcess;
use crate::support::serial;
use crate::support::{self, TestDb};

/// What the client gives any one request before calling it a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// The advisory lock key the servers take for `coupon`'s claims: FNV-1a
/// (64-bit) of "flash-coupons claim " and the name, as PostgreSQL's signed
/// bigint. Written out here on purpose: it is the protocol between servers
/// of any build on one database.
fn claim_lock_key(coupon: &str) -> i64 {
    let hash = b"flash-coupons claim "
        .iter()
        .chain(coupon.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    hash as i64
}

/// The retry counters of every server, summed: (serialization failures,
/// deadlocks, unique violations, retries that ran out).
fn retries(servers: &[ServerProcess]) -> (f64, f64, f64, f64) {
    let mut sum = (0.0, 0.0, 0.0, 0.0);
    for server in servers {
        let text = scrape(&server.base);
        let cause = |c: &str| {
            metric(
                &text,
                &format!("flash_coupons_claim_retries_total{{cause=\"{c}\"}}"),
            )
        };
        sum.0 += cause("serialization_failure");
        sum.1 += cause("deadlock");
        sum.2 += cause("unique_violation");
        sum.3 += metric(&text, "flash_coupons_claim_retries_exhausted_total");
    }
    sum
}

/// Advisory locks held or awaited in `db`, by anyone.
fn advisory_locks(db: &TestDb) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = '{}')",
        db.name
    ))
}

/// Sessions of `db` waiting for an advisory lock.
fn advisory_waiters(db: &TestDb) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        db.name
    ))
}

/// The answers' remaining_amount of every 200.
fn remaining_of_granted(exchanges: &[Exchange]) -> Vec<i64> {
    let mut seen: Vec<i64> = exchanges
        .iter()
        .filter_map(Exchange::answered)
        .filter(|a| a.status == 200)
        .map(|a| {
            a.body["remaining_amount"]
                .as_i64()
                .expect("remaining_amount")
        })
        .collect();
    seen.sort_unstable();
    seen
}

#[test]
fn three_servers_on_one_hot_coupon_hand_out_exactly_its_stock() {
    let _turn = serial::turn!();
    const STOCK: usize = 1000;
    const USERS: usize = 3000;
    const THREADS_PER_SERVER: usize = 16;
    let db = TestDb::new();
    let servers: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::spawn(&db.url, &[])).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    client::create(addrs[0], "HOT", STOCK as i64);

    // User i claims through server i % 3; each server gets its users from
    // THREADS_PER_SERVER threads at once.
    let threads = 3 * THREADS_PER_SERVER;
    let results: Vec<(String, Exchange)> = all_at_once((0..threads).map(|t| {
        let addr = addrs[t % 3];
        move || {
            (t..USERS)
                .step_by(threads)
                .map(|i| {
                    let user = format!("user_{i}");
                    let exchange = client::claim(addr, &user, "HOT", LIMIT);
                    (user, exchange)
                })
                .collect::<Vec<_>>()
        }
    }))
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(results.len(), USERS);
    let exchanges: Vec<Exchange> = results.iter().map(|(_, e)| e.clone()).collect();

    let (serialization, deadlock, unique, exhausted) = retries(&servers);
    let batches: Vec<(f64, f64)> = servers
        .iter()
        .map(|s| {
            let text = scrape(&s.base);
            (
                metric(&text, "flash_coupons_claim_batch_size_count"),
                metric(&text, "flash_coupons_claim_batch_size_sum"),
            )
        })
        .collect();
    let counts = tally(exchanges.iter());
    eprintln!(
        "{USERS} claims on {STOCK} units over 3 servers: {counts:?}; retries: {serialization} \
         serialization failures, {deadlock} deadlocks, {unique} unique violations, {exhausted} \
         ran out; (batches, claims in them) per server: {batches:?}"
    );

    let expected: BTreeMap<(u16, String), usize> = [
        ((200, String::new()), STOCK),
        ((400, "out_of_stock".to_owned()), USERS - STOCK),
    ]
    .into();
    assert_eq!(counts, expected);
    // Every unit went to one claim: the 200s' remaining_amount are exactly
    // STOCK - 1 down to 0.
    assert_eq!(
        remaining_of_granted(&exchanges),
        (0..STOCK as i64).collect::<Vec<_>>()
    );
    let granted: HashSet<String> = results
        .iter()
        .filter(|(_, e)| e.status() == Some(200))
        .map(|(u, _)| u.clone())
        .collect();
    let holders: HashSet<String> = db
        .client()
        .query("SELECT user_id FROM claims WHERE coupon_name = 'HOT'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        holders, granted,
        "the holders are exactly the users answered 200"
    );
    assert_eq!(
        db.count("SELECT remaining_amount::bigint FROM coupons WHERE name = 'HOT'"),
        0
    );
    db.assert_invariant();
    assert_eq!(exhausted, 0.0, "a claim ran out of retries");
    // Every claim transaction on HOT ran alone, whatever server it came
    // from: none overlapped another, so none can have failed to serialize.
    assert_eq!(
        (serialization, deadlock, unique),
        (0.0, 0.0, 0.0),
        "claim transactions on one coupon overlapped across servers"
    );
    assert_eq!(advisory_locks(&db), 0, "an advisory lock is still held");
}

#[test]
fn every_server_waits_for_the_coupons_claim_lock_and_claims_queued_meanwhile_join_its_batch() {
    let _turn = serial::turn!();
    const PER_SERVER: usize = 5;
    let db = TestDb::new();
    // The test holds the lock for as long as the claims take to queue: the
    // query deadline must not cut the servers' waits meanwhile.
    let servers: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::spawn(&db.url, &[("DB_QUERY_TIMEOUT_MS", "120000")]))
        .collect();
    client::create(servers[0].addr, "HELD", 100);
    client::create(servers[0].addr, "FREE", 10);

    let mut holder = db.client();
    let key = claim_lock_key("HELD");
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .expect("taking the coupon's claim lock");

    let answered = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..3 * PER_SERVER)
        .map(|i| {
            let addr = servers[i % 3].addr;
            let answered = Arc::clone(&answered);
            thread::spawn(move || {
                let exchange = client::claim(addr, &format!("user_{i}"), "HELD", LIMIT);
                answered.fetch_add(1, Ordering::SeqCst);
                exchange
            })
        })
        .collect();
    // Each server's first claim leads and waits for the lock in PostgreSQL;
    // its others queue behind it in the server.
    let queued = |s: &ServerProcess| metric(&scrape(&s.base), "flash_coupons_claims_waiting");
    let all_waiting = support::wait_for(Duration::from_secs(30), || {
        advisory_waiters(&db) == 3 && servers.iter().all(|s| queued(s) == (PER_SERVER - 1) as f64)
    });
    let waiting: Vec<f64> = servers.iter().map(queued).collect();
    assert!(
        all_waiting,
        "expected 3 sessions waiting for the lock and {} claims queued on each server; saw {} \
         and {waiting:?}",
        PER_SERVER - 1,
        advisory_waiters(&db)
    );
    // Other coupons are not held up.
    for server in &servers {
        let free = client::claim(server.addr, &format!("free_{}", server.addr), "FREE", LIMIT);
        assert_eq!(free.status(), Some(200), "{free:?}");
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "a claim on HELD was answered"
    );

    let released: bool = holder
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap()
        .get(0);
    assert!(released);
    let exchanges: Vec<Exchange> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let counts = tally(exchanges.iter());
    assert_eq!(
        counts,
        [((200, String::new()), 3 * PER_SERVER)].into(),
        "{exchanges:#?}"
    );
    assert_eq!(
        remaining_of_granted(&exchanges),
        (100 - 3 * PER_SERVER as i64..100).collect::<Vec<_>>()
    );
    // Per server: the FREE claim, then one batch of all its HELD claims
    // (the leader's, and those that queued while it waited).
    for server in &servers {
        let text = scrape(&server.base);
        assert_eq!(
            (
                metric(&text, "flash_coupons_claim_batch_size_count"),
                metric(&text, "flash_coupons_claim_batch_size_sum")
            ),
            (2.0, (1 + PER_SERVER) as f64),
            "batches (count, claims) on {}",
            server.base
        );
    }
    let (serialization, deadlock, unique, exhausted) = retries(&servers);
    assert_eq!(
        (serialization, deadlock, unique, exhausted),
        (0.0, 0.0, 0.0, 0.0)
    );
    db.assert_invariant();
    assert_eq!(advisory_locks(&db), 0, "an advisory lock is still held");
}

#[test]
fn a_wait_for_the_claim_lock_past_the_query_deadline_is_given_up_and_leaves_no_lock_behind() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[("DB_QUERY_TIMEOUT_MS", "1500")]);
    client::create(server.addr, "STUCK", 10);
    let mut holder = db.client();
    let key = claim_lock_key("STUCK");
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();

    let waiter = client::claim(server.addr, "waiter", "STUCK", LIMIT);
    eprintln!(
        "the claim behind a held lock: {:?} in {:?}",
        waiter.status(),
        waiter.elapsed()
    );
    let answered = waiter.answered().unwrap_or_else(|| panic!("{waiter:?}"));
    answered.assert_error(503, "database_unavailable");
    // Bounded by the deadline (and a check-out), far below the client's limit.
    assert!(waiter.elapsed() < Duration::from_secs(15), "{waiter:?}");

    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap();
    // The wait was given up (by the session's statement timeout, just below
    // the deadline): nothing holds or waits for a lock, and the next claim
    // gets its unit.
    assert!(
        support::wait_for(Duration::from_secs(10), || advisory_locks(&db) == 0),
        "advisory locks left: {}",
        advisory_locks(&db)
    );
    let again = client::claim(server.addr, "waiter", "STUCK", LIMIT);
    assert_eq!(again.status(), Some(200), "{again:?}");
    assert_eq!(again.answered().unwrap().body["remaining_amount"], 9);
    assert_eq!(advisory_locks(&db), 0);
    db.assert_invariant();
}

#[test]
fn a_claim_transaction_that_fails_releases_the_lock_and_keeps_its_connection() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    // One connection: the failed claim's is the one every later claim uses.
    let first = ServerProcess::spawn(&db.url, &[("DB_POOL_SIZE", "1")]);
    let second = ServerProcess::spawn(&db.url, &[]);
    client::create(first.addr, "POISONED", 10);
    // A claim by this user fails inside its transaction, after the lock was
    // taken (a check violation: neither retried nor the client's fault).
    db.client()
        .batch_execute("ALTER TABLE claims ADD CONSTRAINT no_poison CHECK (user_id <> 'poison')")
        .unwrap();
    let failed = client::claim(first.addr, "poison", "POISONED", LIMIT);
    let answered = failed.answered().unwrap_or_else(|| panic!("{failed:?}"));
    answered.assert_error(500, "internal_error");

    assert_eq!(
        advisory_locks(&db),
        0,
        "the failed claim left its lock held"
    );
    let open = metric(
        &scrape(&first.base),
        "flash_coupons_db_pool_connections{state=\"open\"}",
    );
    assert_eq!(open, 1.0, "the connection was released cleanly and kept");
    // Both servers go on claiming the coupon.
    for (server, user) in [(&second, "after_1"), (&first, "after_2")] {
        let claim = client::claim(server.addr, user, "POISONED", LIMIT);
        assert_eq!(claim.status(), Some(200), "{claim:?}");
    }
    assert_eq!(advisory_locks(&db), 0);
    db.assert_invariant();
}

/// Lines of the server's log that contain `needle`.
fn lines_with(server: &ServerProcess, needle: &str) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

/// No answer, because the server no longer takes connections: refused at
/// connect, or reset before any byte came (a connection the kernel had
/// completed but the server never took).
fn not_taken(e: &Exchange) -> bool {
    matches!(
        &e.result,
        Err(Failure::Connect { .. } | Failure::Send { .. } | Failure::Cut { received: 0, .. })
    )
}

#[test]
fn sigterm_with_a_drain_fails_healthz_first_serves_everything_else_then_stops() {
    let _turn = serial::turn!();
    const DRAIN: Duration = Duration::from_secs(3);
    let db = TestDb::new();
    let mut server = ServerProcess::spawn(&db.url, &[("SHUTDOWN_DRAIN_SECS", "3")]);
    let addr = server.addr;
    client::create(addr, "DRAIN", 1000);
    assert_eq!(client::get(addr, "/healthz", LIMIT).status(), Some(200));

    // Taken before the signal: the drain cannot end before signalled + DRAIN.
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    // /healthz fails at once.
    let mut health = client::get(addr, "/healthz", LIMIT);
    while health.status() == Some(200) && signalled.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(10));
        health = client::get(addr, "/healthz", LIMIT);
    }
    eprintln!(
        "/healthz after the signal: {:?} after {:?}",
        health.status(),
        signalled.elapsed()
    );
    let answered = health.answered().unwrap_or_else(|| panic!("{health:?}"));
    answered.assert_error(503, "shutting_down");

    // Everything else is served as usual for the rest of the drain: claims,
    // reads, unknown coupons, metrics. One round every 100 ms, until a
    // request is not served (at most 200 rounds): from then on the server
    // stops accepting, and a request is refused, reset before any byte, or
    // told 503 shutting_down.
    let mut served_rounds = 0;
    let mut failures = Vec::new();
    let mut stopped_at = None;
    for round in 0..200 {
        let exchanges = [
            (
                client::claim(addr, &format!("user_{round}"), "DRAIN", LIMIT),
                200,
            ),
            (client::get(addr, "/api/coupons/DRAIN", LIMIT), 200),
            (client::get(addr, "/api/coupons/NO_SUCH_COUPON", LIMIT), 404),
            (client::get(addr, "/metrics", LIMIT), 200),
            (client::get(addr, "/healthz", LIMIT), 503),
        ];
        let mut usual = true;
        for (e, expected) in &exchanges {
            if e.status() == Some(*expected) {
                continue;
            }
            usual = false;
            let stopping = e.answered().is_some_and(|a| a.code() == "shutting_down");
            if not_taken(e) || stopping {
                stopped_at.get_or_insert(e.finished);
            } else {
                failures.push(format!("round {round}: expected {expected}: {e:?}"));
            }
        }
        if !usual {
            break;
        }
        served_rounds += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let code = server.wait_exit(DRAIN + Duration::from_secs(30));
    let took = signalled.elapsed();
    let log = server.log();
    eprintln!(
        "served {served_rounds} rounds during the drain; first request not served {:?} after \
         the signal; exit {code:?} {took:?} after it; drain lines: {:#?}",
        stopped_at.map(|t| t - signalled),
        log.iter()
            .filter(|l| l.contains("drain"))
            .collect::<Vec<_>>()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(served_rounds > 0, "nothing was served during the drain");
    let stopped_at = stopped_at.expect("the server never stopped serving");
    assert!(
        stopped_at >= signalled + DRAIN,
        "a request was not served {:?} after the signal, within the drain",
        stopped_at - signalled
    );
    assert_eq!(code, Some(Some(0)), "{log:#?}");
    // The drain, then what the server holds: a few seconds at most.
    assert!(took < DRAIN + Duration::from_secs(10), "{took:?}");
    assert_eq!(lines_with(&server, "draining for 3s").len(), 1, "{log:#?}");
    assert_eq!(lines_with(&server, "drain ended").len(), 1, "{log:#?}");
    assert!(
        client::get(addr, "/healthz", Duration::from_secs(5))
            .result
            .is_err()
    );
    // Every claim answered 200 is in the claims table.
    let claims = db.count("SELECT count(*) FROM claims WHERE coupon_name = 'DRAIN'");
    assert!(
        claims >= served_rounds as i64,
        "{claims} claims for {served_rounds} rounds"
    );
    db.assert_invariant();
}

#[test]
fn a_second_signal_ends_the_drain_at_once() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let mut server = ServerProcess::spawn(&db.url, &[("SHUTDOWN_DRAIN_SECS", "600")]);
    let addr = server.addr;
    server.signal(libc::SIGTERM);
    assert!(
        support::wait_for(Duration::from_secs(10), || {
            client::get(addr, "/healthz", LIMIT).status() == Some(503)
        }),
        "/healthz never failed"
    );
    assert_eq!(
        client::get(addr, "/api/coupons/NOPE", LIMIT)
            .answered()
            .map(|a| (a.status, a.code().to_owned())),
        Some((404, "coupon_not_found".to_owned()))
    );
    server.signal(libc::SIGINT);
    let code = server.wait_exit(Duration::from_secs(30));
    let log = server.log();
    assert_eq!(code, Some(Some(0)), "{log:#?}");
    assert_eq!(
        lines_with(&server, "draining for 600s").len(),
        1,
        "{log:#?}"
    );
    assert_eq!(lines_with(&server, "drain ended").len(), 1, "{log:#?}");
}

/// Sends `request` on a new connection and reads its answer; the
/// connection's own address and the answer.
fn send(addr: SocketAddr, request: &str) -> (SocketAddr, Result<Answer, Failure>) {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    let local = stream.local_addr().unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    (local, client::read_answer(&mut stream, LIMIT))
}

#[test]
fn the_request_log_line_names_the_peer_and_the_address_our_proxy_forwarded() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[]);
    let get = |path: &str, headers: &str| {
        let request = client::request_text(
            "GET",
            path,
            None,
            &format!("{headers}Connection: close\r\n"),
        );
        send(server.addr, &request)
    };
    let line_of = |path: &str| -> String {
        assert!(
            support::wait_for(Duration::from_secs(10), || !lines_with(&server, path)
                .is_empty()),
            "no log line for {path}: {:#?}",
            server.log()
        );
        lines_with(&server, path).remove(0)
    };

    // No header: the peer.
    let (peer, answer) = get("/api/coupons/PLAIN", "");
    assert_eq!(
        answer.as_ref().map(|a| a.status).ok(),
        Some(404),
        "{answer:?}"
    );
    let line = line_of("/api/coupons/PLAIN");
    assert!(line.ends_with(&format!(" client={peer}")), "{line}");

    // The last entry is the one our proxy appended; earlier ones are the
    // client's say and are not shown.
    let (peer, _) = get(
        "/api/coupons/FORWARDED",
        "X-Forwarded-For: 198.51.100.7, 203.0.113.5\r\n",
    );
    let line = line_of("/api/coupons/FORWARDED");
    assert!(
        line.ends_with(&format!(" client=203.0.113.5 via {peer}")),
        "{line}"
    );
    assert!(!line.contains("198.51.100.7"), "{line}");

    // IPv6, and the last of several headers.
    let (peer, _) = get(
        "/api/coupons/SIX",
        "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 2001:db8::5\r\n",
    );
    let line = line_of("/api/coupons/SIX");
    assert!(
        line.ends_with(&format!(" client=2001:db8::5 via {peer}")),
        "{line}"
    );

    // Not an address: quoted and escaped, so it cannot pass for one.
    let (peer, _) = get(
        "/api/coupons/FORGED",
        "X-Forwarded-For: 10.0.0.1 via 10.0.0.2 \"x\"\r\n",
    );
    let line = line_of("/api/coupons/FORGED");
    assert!(
        line.ends_with(&format!(
            " client=\"10.0.0.1 via 10.0.0.2 \\\"x\\\"\" via {peer}"
        )),
        "{line}"
    );

    // Bounded.
    let long = "x".repeat(1000);
    let (peer, _) = get("/api/coupons/LONG", &format!("X-Forwarded-For: {long}\r\n"));
    let line = line_of("/api/coupons/LONG");
    assert!(line.ends_with(&format!("…\" via {peer}")), "{line}");
    assert!(line.len() < 400, "{line}");
}
