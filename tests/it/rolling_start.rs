//! A server starting beside running ones never makes their requests wait on
//! a lock, even while a long reader (what pg_dump holds) has the tables: a
//! database whose schema is current is not changed at all, and a change
//! that is needed waits for its locks only briefly, backing off in between.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::client::{self, Exchange};
use crate::support::edge::Edge;
use crate::support::process::{ServerProcess, Starting};
use crate::support::{TestDb, serial, wait_for};

/// The longest any claim on a running server may take while another one
/// starts: the outage this guards against made claims wait 4.5 s each.
const CLAIM_BOUND: Duration = Duration::from_secs(1);
/// How long the reader holds its locks once the new server is starting.
const READER_HOLDS: Duration = Duration::from_secs(4);
const LIMIT: Duration = Duration::from_secs(30);

/// A session holding ACCESS SHARE on both tables until dropped, as
/// `pg_dump` does for the length of a dump.
struct LongReader(postgres::Client);

impl LongReader {
    fn start(db: &TestDb) -> LongReader {
        let mut client = db.client();
        client
            .batch_execute("BEGIN; LOCK TABLE coupons, claims IN ACCESS SHARE MODE")
            .expect("taking the reader's locks");
        LongReader(client)
    }

    fn end(mut self) {
        self.0.batch_execute("COMMIT").expect("ending the reader");
    }
}

/// Claims one after another, each by a new user, on `addr` until stopped.
struct Claimer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Exchange>>,
}

impl Claimer {
    fn start(addr: SocketAddr, coupon: &'static str) -> Claimer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut done = Vec::new();
                // Bounded in count and time, whatever happens.
                let until = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < until && done.len() < 100_000
                {
                    let user = format!("claimer-{}", done.len());
                    done.push(client::claim(addr, &user, coupon, LIMIT));
                }
                done
            })
        };
        Claimer { stop, thread }
    }

    /// Stops, then asserts that every claim was answered 200 within
    /// CLAIM_BOUND; returns how many there were.
    fn assert_all_served_promptly(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let done = self.thread.join().expect("the claimer");
        assert!(!done.is_empty(), "no claim was sent");
        for exchange in &done {
            assert_eq!(exchange.status(), Some(200), "{exchange:?}");
        }
        let slowest = done.iter().map(Exchange::elapsed).max().unwrap_or_default();
        assert!(
            slowest < CLAIM_BOUND,
            "the slowest of {} claims took {slowest:?}",
            done.len()
        );
        done.len()
    }
}

fn healthy(addr: SocketAddr) -> bool {
    client::get(addr, "/healthz", Duration::from_secs(5)).status() == Some(200)
}

/// A coupon on `addr` claimed without pause, the database marked as made
/// by an older release (so a server starting must change the schema), and
/// a long reader holding the tables.
fn claims_beside_a_reader_of_an_older_schema(
    db: &TestDb,
    addr: SocketAddr,
) -> (Claimer, LongReader) {
    client::create(addr, "ROLLING", 1_000_000);
    db.client()
        .batch_execute("UPDATE flash_coupons_schema SET version = 1")
        .unwrap();
    (Claimer::start(addr, "ROLLING"), LongReader::start(db))
}

fn recorded_version(db: &TestDb) -> i64 {
    db.count("SELECT version::bigint FROM flash_coupons_schema")
}

#[test]
fn a_server_starting_beside_a_long_reader_serves_at_once_when_the_schema_is_current() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let running = ServerProcess::spawn(&db.url, &[]);
    client::create(running.addr, "ROLLING", 1_000_000);
    let claimer = Claimer::start(running.addr, "ROLLING");
    let reader = LongReader::start(&db);

    let began = Instant::now();
    let second = ServerProcess::spawn(&db.url, &[]);
    assert!(
        wait_for(Duration::from_secs(10), || healthy(second.addr)),
        "the new server was not serving while the reader held its locks: {:?}",
        second.log()
    );
    let serving_after = began.elapsed();
    thread::sleep(READER_HOLDS.saturating_sub(began.elapsed()));
    let on_the_new_one = client::claim(second.addr, "on-the-new-one", "ROLLING", LIMIT);
    assert_eq!(on_the_new_one.status(), Some(200), "{on_the_new_one:?}");
    reader.end();

    let claims = claimer.assert_all_served_promptly();
    assert!(
        second
            .log()
            .iter()
            .any(|l| l.contains("the schema is current")),
        "{:?}",
        second.log()
    );
    eprintln!("{claims} claims on the running server; the new one served after {serving_after:?}");
    db.assert_invariant();
}

#[test]
fn a_server_whose_schema_change_needs_locks_backs_off_until_the_reader_ends() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let running = ServerProcess::spawn(&db.url, &[]);
    let (claimer, reader) = claims_beside_a_reader_of_an_older_schema(&db, running.addr);

    let mut second = Starting::spawn(&db.url, &[("DB_STARTUP_TIMEOUT_SECS", "60")]);
    thread::sleep(READER_HOLDS);
    assert!(
        second
            .log()
            .iter()
            .any(|l| l.contains("another session holds a lock")),
        "the new server says what it waits for: {:?}",
        second.log()
    );
    assert_eq!(
        second.wait_exit(Duration::from_millis(50)),
        None,
        "{:?}",
        second.log()
    );
    let reader_ended = Instant::now();
    reader.end();

    let second = second.listening(Duration::from_secs(15));
    assert!(
        wait_for(Duration::from_secs(5), || healthy(second.addr)),
        "{:?}",
        second.log()
    );
    let serving_after = reader_ended.elapsed();
    let claims = claimer.assert_all_served_promptly();
    assert_eq!(
        recorded_version(&db),
        i64::from(flash_coupons::store::SCHEMA_VERSION)
    );
    eprintln!(
        "{claims} claims on the running server; the new one served {serving_after:?} after the reader ended"
    );
    db.assert_invariant();
}

#[test]
fn through_the_edge_a_deployment_starting_beside_a_long_reader_stalls_no_claim() {
    let _turn = serial::alone();
    let db = TestDb::new();
    let running = Edge::start(&db.url, 2, &[]);
    let (claimer, reader) = claims_beside_a_reader_of_an_older_schema(&db, running.addr);

    // The reader ends on a thread of its own: run-local must be started
    // from this one (it is told to stop when the thread that started it
    // ends).
    let ending = thread::spawn(move || {
        thread::sleep(READER_HOLDS);
        reader.end();
        Instant::now()
    });
    let second = Edge::start(&db.url, 2, &[("DB_STARTUP_TIMEOUT_SECS", "60")]);
    let ready = Instant::now();
    let reader_ended = ending.join().expect("the reader");
    assert!(
        ready > reader_ended,
        "the new replicas needed the reader's tables, and were ready before it ended"
    );
    let health = client::get(second.addr, "/healthz", LIMIT);
    assert_eq!(health.status(), Some(200), "{health:?}");
    let claims = claimer.assert_all_served_promptly();
    assert_eq!(
        recorded_version(&db),
        i64::from(flash_coupons::store::SCHEMA_VERSION)
    );
    eprintln!("{claims} claims through the running edge");
    db.assert_invariant();
}
