//! Graceful shutdown of the real binary: SIGTERM (docker stop) and SIGINT
//! (Ctrl-C) while requests are in flight. Every request the server received
//! gets a complete answer, every 200 is in the claims table, the process
//! exits 0, and connections after the signal are refused or told 503.
//!
//! To make "in flight" certain rather than likely, the test holds locks in
//! an open transaction: the coupon row (claims wait for it inside the
//! server) and the claims table (reads of the coupon wait for it). It sends
//! the signal while they wait and lets go a second later.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::client::{self, Exchange, Failure};
use crate::support::crowd::{all_at_once, spawn_at_once, tally};
use crate::support::process::ServerProcess;
use crate::support::serial;
use crate::support::{self, TestDb};

/// Longer than anything here should take: the bound on a hang.
const LIMIT: Duration = Duration::from_secs(40);
/// How long the test keeps requests waiting after the signal.
const HOLD_AFTER_SIGNAL: Duration = Duration::from_millis(1000);
const STOCK: i64 = 40;
/// Reads of the coupon held in flight; fewer than the server's 8 workers
/// and 8 connections, so that claims still get through to queue.
const HELD_READS: usize = 3;

/// "1.2ms before" or "3ms after" `mark`.
fn relative(at: Option<Instant>, mark: Instant) -> String {
    match at {
        None => "never (not sent)".to_owned(),
        Some(t) if t < mark => format!("{:?} before", mark - t),
        Some(t) => format!("{:?} after", t - mark),
    }
}

/// Sessions on `db` other than the one asking: the server's, while the
/// test holds no other connection open (or its own are not waiting).
fn server_sessions(db: &TestDb, waiting_for_a_lock: bool) -> i64 {
    let filter = if waiting_for_a_lock {
        "AND wait_event_type = 'Lock'"
    } else {
        ""
    };
    db.count(&format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = '{}' AND backend_type = 'client backend' \
         AND pid <> pg_backend_pid() {filter}",
        db.name
    ))
}

/// Fills the server's connection pool with idle connections: a connection
/// opened while the test holds the claims table would wait for the lock in
/// preparing its statements, and its request would get a 503 instead of
/// being held.
fn warm_the_pool(db: &TestDb, addr: SocketAddr) {
    for _ in 0..10 {
        if server_sessions(db, false) >= 6 {
            return;
        }
        let reads =
            all_at_once((0..16).map(|_| move || client::get(addr, "/api/coupons/SHUT", LIMIT)));
        for e in reads {
            assert_eq!(e.status(), Some(200), "a warming read: {e:?}");
        }
    }
    panic!(
        "the server's pool did not grow to 6 connections: {}",
        server_sessions(db, false)
    );
}

/// A request the test sends.
enum Request {
    /// A claim of SHUT by this user.
    Claim(String),
    /// A GET of this path.
    Get(&'static str),
}

impl Request {
    fn send(self, addr: SocketAddr) -> Exchange {
        match self {
            Request::Claim(user) => client::claim(addr, &user, "SHUT", LIMIT),
            Request::Get(path) => client::get(addr, path, LIMIT),
        }
    }
}

/// The requests sent at once while the test holds its locks: threads
/// (`JoinHandle<Exchange>`) until joined, then what became of them.
struct InFlight<T> {
    /// 60 users, four of them twice: 40 get a unit, the rest 400 or 409.
    claims: Vec<(String, T)>,
    /// Reads of the coupon, held by the lock on the claims table.
    held_reads: Vec<T>,
    /// Reads of /healthz, which nothing holds.
    health: Vec<T>,
}

impl InFlight<JoinHandle<Exchange>> {
    fn send(addr: SocketAddr) -> Self {
        let users: Vec<String> = (0..60).chain(0..4).map(|i| format!("user_{i}")).collect();
        let requests = users
            .iter()
            .map(|user| Request::Claim(user.clone()))
            .chain((0..HELD_READS).map(|_| Request::Get("/api/coupons/SHUT")))
            .chain((0..4).map(|_| Request::Get("/healthz")));
        let n = users.len();
        let mut threads =
            spawn_at_once(requests.map(|request| move || request.send(addr))).into_iter();
        InFlight {
            claims: users.into_iter().zip(threads.by_ref().take(n)).collect(),
            held_reads: threads.by_ref().take(HELD_READS).collect(),
            health: threads.collect(),
        }
    }

    fn join(self) -> InFlight<Exchange> {
        let join = |thread: JoinHandle<Exchange>| thread.join().expect("a request thread");
        InFlight {
            claims: self
                .claims
                .into_iter()
                .map(|(user, thread)| (user, join(thread)))
                .collect(),
            held_reads: self.held_reads.into_iter().map(join).collect(),
            health: self.health.into_iter().map(join).collect(),
        }
    }
}

/// What the checks after the signal go by.
struct Signalled<'a> {
    /// SIGTERM or SIGINT, for messages.
    name: &'a str,
    /// When the signal was sent, and when the test let go of its locks.
    at: Instant,
    released: Instant,
    /// The end of the server's log, for messages.
    tail: &'a [String],
}

fn signal_while_requests_are_in_flight(signal: i32, name: &str) {
    let db = TestDb::new();
    let mut server = ServerProcess::spawn(&db.url, &[]);
    let addr = server.addr;
    client::create(addr, "SHUT", STOCK);
    warm_the_pool(&db, addr);

    let mut blocker = db.client();
    let mut tx = blocker.transaction().expect("a transaction");
    tx.batch_execute(
        "SELECT 1 FROM coupons WHERE name = 'SHUT' FOR UPDATE; \
         LOCK TABLE claims IN ACCESS EXCLUSIVE MODE",
    )
    .expect("locking the coupon row and the claims table");
    let in_flight = InFlight::send(addr);
    the_first_claim_and_the_reads_wait_for_the_locks_and_the_other_claims_queue(
        &db,
        addr,
        name,
        in_flight.claims.len(),
    );

    let signalled = Instant::now();
    server.signal(signal);
    let probes = new_connections_after_the_signal(addr);
    thread::sleep(HOLD_AFTER_SIGNAL);
    let released = Instant::now();
    tx.commit().expect("releasing the locks");
    let exit = server.wait_exit(Duration::from_secs(30));
    let exited = Instant::now();
    let ended = in_flight.join();
    let probes = probes.join().expect("the probes");
    let log = server.log();
    let tail = &log[log.len().saturating_sub(15)..];
    eprintln!(
        "{name}: exit {exit:?} {:?} after the signal ({:?} after the locks were released); \
         claims {:?}; held reads {:?}; health {:?}; new connections after the signal {:?}",
        exited - signalled,
        exited - released,
        tally(ended.claims.iter().map(|(_, e)| e)),
        tally(ended.held_reads.iter()),
        tally(ended.health.iter()),
        tally(probes.iter()),
    );

    let signalled = Signalled {
        name,
        at: signalled,
        released,
        tail,
    };
    the_server_logged_the_signal_and_exited_zero(&signalled, exit, &log);
    let granted =
        every_claim_in_flight_was_answered_once_the_locks_were_released(&signalled, &ended.claims);
    every_200_is_a_row_in_claims(&signalled, &db, &granted);
    the_held_reads_were_answered_with_the_whole_coupon_once_the_locks_were_released(
        &signalled,
        &ended.held_reads,
    );
    healthz_said_200_before_the_signal(&signalled, &ended.health);
    new_connections_after_the_signal_were_refused_or_told_503(&signalled, &probes);
}

/// The claim transaction and the reads wait for the test's locks, and every
/// other claim queues behind the first.
fn the_first_claim_and_the_reads_wait_for_the_locks_and_the_other_claims_queue(
    db: &TestDb,
    addr: SocketAddr,
    name: &str,
    claims: usize,
) {
    let held = 1 + HELD_READS as i64;
    assert!(
        support::wait_for(Duration::from_secs(10), || server_sessions(db, true)
            >= held),
        "{name}: expected {held} server sessions waiting for a lock, saw {}",
        server_sessions(db, true)
    );
    let queued = (claims - 1) as f64;
    let base = format!("http://{addr}");
    let waiting = || {
        support::http::metric(
            &support::http::scrape(&base),
            "flash_coupons_claims_waiting",
        )
    };
    assert!(
        support::wait_for(Duration::from_secs(10), || waiting() == queued),
        "{name}: expected {queued} claims queued, saw {}",
        waiting()
    );
}

/// Five GETs of /healthz on new connections while the server finishes,
/// from 300 ms after the signal.
fn new_connections_after_the_signal(addr: SocketAddr) -> JoinHandle<Vec<Exchange>> {
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        (0..5)
            .map(|_| {
                let e = client::get(addr, "/healthz", LIMIT);
                thread::sleep(Duration::from_millis(100));
                e
            })
            .collect::<Vec<_>>()
    })
}

fn the_server_logged_the_signal_and_exited_zero(
    signalled: &Signalled,
    exit: Option<Option<i32>>,
    log: &[String],
) {
    let Signalled { name, tail, .. } = signalled;
    assert_eq!(
        exit,
        Some(Some(0)),
        "{name}: the server must exit 0 within 30 s; log tail: {tail:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("received; finishing requests")),
        "{name}: the server did not log the signal: {tail:#?}"
    );
}

/// Every claim was in flight at the signal and got a complete answer, once
/// the row was free: exactly STOCK of them 200. The users answered 200.
fn every_claim_in_flight_was_answered_once_the_locks_were_released<'a>(
    signalled: &Signalled,
    claims: &'a [(String, Exchange)],
) -> HashSet<&'a str> {
    let Signalled {
        name,
        at,
        released,
        tail,
    } = signalled;
    let mut granted = HashSet::new();
    for (user, e) in claims {
        assert!(
            e.sent.is_some_and(|sent| sent < *at),
            "{name}: {user}'s claim was not sent before the signal: {e:?}"
        );
        let answered = e.answered().unwrap_or_else(|| {
            panic!(
                "{name}: {user}'s claim, in flight at the signal, got no complete answer: \
                 {e:?}; log tail: {tail:#?}"
            )
        });
        match answered.status {
            200 => assert!(granted.insert(user.as_str()), "{user} got two units"),
            400 => answered.assert_error(400, "out_of_stock"),
            409 => answered.assert_error(409, "already_claimed"),
            _ => panic!("{name}: {user}'s claim in flight: {answered:?}; log tail: {tail:#?}"),
        }
        assert!(
            e.finished >= *released,
            "{name}: {user}'s claim was answered while the row was still held: {e:?}"
        );
    }
    assert_eq!(granted.len() as i64, STOCK, "{name}: 200s");
    granted
}

fn every_200_is_a_row_in_claims(signalled: &Signalled, db: &TestDb, granted: &HashSet<&str>) {
    let name = signalled.name;
    let holders: HashSet<String> = db
        .client()
        .query("SELECT user_id FROM claims WHERE coupon_name = 'SHUT'", &[])
        .expect("reading the claims")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(holders.len() as i64, STOCK, "{name}: rows in claims");
    for user in granted {
        assert!(
            holders.contains(*user),
            "{name}: {user} got 200 but has no claim"
        );
    }
    db.assert_invariant();
}

/// The held reads were in flight too, and finish with the whole coupon.
fn the_held_reads_were_answered_with_the_whole_coupon_once_the_locks_were_released(
    signalled: &Signalled,
    held_reads: &[Exchange],
) {
    let Signalled {
        name,
        released,
        tail,
        ..
    } = signalled;
    for e in held_reads {
        let answered = e.answered().unwrap_or_else(|| {
            panic!(
                "{name}: a read in flight at the signal got no complete answer: {e:?}; \
                 log tail: {tail:#?}"
            )
        });
        assert_eq!(answered.status, 200, "{name}: a held read: {answered:?}");
        let body = &answered.body;
        assert_eq!(body["name"], "SHUT", "{name}: {body}");
        let claimed = body["claimed_by"].as_array().expect("claimed_by").len() as i64;
        assert_eq!(
            body["amount"].as_i64(),
            body["remaining_amount"].as_i64().map(|r| r + claimed),
            "{name}: a read's counts disagree: {body}"
        );
        assert!(
            e.finished >= *released,
            "{name}: a read was answered while the claims table was still held: {e:?}"
        );
    }
}

fn healthz_said_200_before_the_signal(signalled: &Signalled, health: &[Exchange]) {
    let name = signalled.name;
    for e in health {
        assert_eq!(
            e.status(),
            Some(200),
            "{name}: /healthz before the signal: {e:?}"
        );
    }
}

/// New connections after the signal: refused, or told 503 shutting_down.
fn new_connections_after_the_signal_were_refused_or_told_503(
    signalled: &Signalled,
    probes: &[Exchange],
) {
    let Signalled { name, tail, .. } = signalled;
    for e in probes {
        assert!(e.elapsed() < LIMIT, "{name}: a new connection hung: {e:?}");
        match &e.result {
            Err(Failure::Connect { kind, .. }) => assert_eq!(
                *kind,
                std::io::ErrorKind::ConnectionRefused,
                "{name}: {e:?}"
            ),
            Ok(a) => a.assert_error(503, "shutting_down"),
            Err(failure) => panic!(
                "{name}: a new connection after the signal was neither refused nor answered \
                 503 shutting_down: {failure:?} after {:?}; log tail: {tail:#?}",
                e.elapsed()
            ),
        }
    }
}

#[test]
fn sigterm_with_claims_and_reads_in_flight_answers_every_one_and_exits_zero() {
    let _turn = serial::turn!();
    signal_while_requests_are_in_flight(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_with_claims_and_reads_in_flight_answers_every_one_and_exits_zero() {
    let _turn = serial::turn!();
    signal_while_requests_are_in_flight(libc::SIGINT, "SIGINT");
}

/// GETs one after another until told to stop (at most 5,000, at most 60 s).
fn read_until_stopped(addr: SocketAddr, n: usize, stop: &AtomicBool) -> Vec<Exchange> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    for i in 0..5000 {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let path = if (i + n).is_multiple_of(2) {
            "/api/coupons/RACE"
        } else {
            "/healthz"
        };
        let e = client::get(addr, path, LIMIT);
        let refused = e.result.as_ref().is_err_and(Failure::before_sending);
        seen.push(e);
        thread::sleep(Duration::from_millis(if refused { 50 } else { 2 }));
    }
    seen
}

/// Requests keep arriving while SIGTERM comes. Each one either is refused
/// at connect, or gets a complete answer: 200 when it was served, 503
/// shutting_down when it came too late. Never a 500, never an answer cut
/// off part-way. A connection the kernel completed after the signal but that
/// the server never took may be reset before any byte; one whose request
/// was sent well before the signal may not.
#[test]
fn requests_arriving_as_sigterm_comes_are_answered_or_refused_never_given_a_500() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let mut server = ServerProcess::spawn(&db.url, &[]);
    let addr = server.addr;
    client::create(addr, "RACE", 1);

    // One claim held in flight keeps the process alive for a while after
    // the signal, as a busy server would be.
    let mut blocker = db.client();
    let mut tx = blocker.transaction().expect("a transaction");
    tx.execute("SELECT 1 FROM coupons WHERE name = 'RACE' FOR UPDATE", &[])
        .expect("locking the coupon row");
    let claim = thread::spawn(move || client::claim(addr, "racer", "RACE", LIMIT));

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|n| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || read_until_stopped(addr, n, &stop))
        })
        .collect();
    assert!(
        support::wait_for(Duration::from_secs(10), || server_sessions(&db, true) >= 1),
        "the claim never came to wait for the row"
    );
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    thread::sleep(HOLD_AFTER_SIGNAL);
    tx.commit().expect("releasing the row");
    let exit = server.wait_exit(Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let claim = claim.join().expect("the claim");
    let reads: Vec<Exchange> = readers
        .into_iter()
        .flat_map(|h| h.join().expect("a reader"))
        .collect();
    let log = server.log();
    let tail = &log[log.len().saturating_sub(15)..];

    let odd: Vec<String> = reads
        .iter()
        .filter(|e| {
            e.status() != Some(200) && !e.result.as_ref().is_err_and(Failure::before_sending)
        })
        .map(|e| {
            format!(
                "sent {} the signal, ended {:?} later: {:?}",
                relative(e.sent, signalled),
                e.elapsed(),
                e.result
            )
        })
        .collect();
    eprintln!(
        "race: exit {exit:?}; claim {:?}; reads {:?}; {} neither 200 nor refused: {:#?}",
        claim.status(),
        tally(reads.iter()),
        odd.len(),
        &odd[..odd.len().min(8)]
    );
    assert_eq!(exit, Some(Some(0)), "log tail: {tail:#?}");
    assert_eq!(claim.status(), Some(200), "the claim in flight: {claim:?}");

    // Grace for a connection still in the kernel's queue at the signal.
    let grace = Duration::from_millis(50);
    for e in &reads {
        assert!(e.elapsed() < LIMIT, "a read hung: {e:?}");
        let when = relative(e.sent, signalled);
        match &e.result {
            Ok(a) => match a.status {
                200 => {}
                503 => a.assert_error(503, "shutting_down"),
                _ => panic!(
                    "a read sent {when} SIGTERM was answered {} {:?} (content type {:?}) \
                     instead of 200 or 503 shutting_down; the server log has no line for it: \
                     {tail:#?}",
                    a.status,
                    a.body,
                    a.header("Content-Type")
                ),
            },
            Err(Failure::Connect { kind, .. }) => {
                assert!(e.started >= signalled, "refused before the signal: {e:?}");
                // Refused, or reset while it waited in the backlog as the
                // listener closed: either way nothing was sent.
                assert!(
                    matches!(
                        kind,
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ),
                    "{e:?}"
                );
            }
            Err(failure) => {
                let sent = e.sent.expect("a failure after sending");
                assert!(
                    matches!(failure, Failure::Cut { received: 0, .. }),
                    "a read sent {when} SIGTERM was cut off part-way: {failure:?}"
                );
                assert!(
                    sent + grace >= signalled,
                    "a read sent {when} SIGTERM got no answer at all: {failure:?}; \
                     log tail: {tail:#?}"
                );
            }
        }
    }
}
