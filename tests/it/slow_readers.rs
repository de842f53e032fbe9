//! Clients that read a large answer slowly hold neither a worker nor a
//! database connection, and only a bounded share of the writers: the rest
//! of the service keeps answering, and each slow reader is served, refused
//! at once, or cut off by HTTP_WRITE_TIMEOUT_SECS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::support::TestDb;
use crate::support::answer::Answer;
use crate::support::client::{self, Exchange};
use crate::support::process::ServerProcess;
use crate::support::serial;

/// Claims on the large coupon, and the length of each user id.
const CLAIMS: i64 = 48_000;
const ID_LENGTH: usize = 128;
const READERS: usize = 32;
const WRITE_TIMEOUT_SECS: u64 = 6;

/// How a slow reader's GET ended.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The whole 200 came.
    Served,
    /// A complete answer with this other status (503 when the large-answer
    /// places were all taken).
    Refused(u16),
    /// The connection ended before the whole body: cut off.
    CutOff,
    /// Still open when the reader gave up: the bound did not hold.
    StillOpen,
}

/// Sends a GET with a 4 KiB receive buffer and reads 1 KiB a second for
/// `slow`, then reads as fast as it can for at most `drain`.
fn slow_get(addr: SocketAddr, path: &str, slow: Duration, drain: Duration) -> (Ending, usize) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    // Set before connecting so that the window the server sees stays small.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    while started.elapsed() < slow {
        match stream.read(&mut buf) {
            Ok(0) => return (ending(&received, true), received.len()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if let Some(end) = complete(&received) {
            return (end, received.len());
        }
        thread::sleep(Duration::from_secs(1));
    }
    let mut big = vec![0u8; 1 << 16];
    let until = Instant::now() + drain;
    while Instant::now() < until {
        match stream.read(&mut big) {
            Ok(0) => return (ending(&received, true), received.len()),
            Ok(n) => received.extend_from_slice(&big[..n]),
            Err(_) => {}
        }
        if let Some(end) = complete(&received) {
            return (end, received.len());
        }
    }
    (Ending::StillOpen, received.len())
}

/// How the GET ended, if `bytes` hold its whole answer.
fn complete(bytes: &[u8]) -> Option<Ending> {
    let (answer, _) = Answer::parse(bytes, false)?;
    Some(if answer.status == 200 {
        Ending::Served
    } else {
        Ending::Refused(answer.status)
    })
}

fn ending(bytes: &[u8], closed: bool) -> Ending {
    match complete(bytes) {
        Some(end) => end,
        None if closed => Ending::CutOff,
        None => Ending::StillOpen,
    }
}

/// The slowest of one round of requests that need a worker, a light thread
/// and the database, and none of which may wait behind the slow readers.
fn one_round(addr: SocketAddr, round: usize) -> Vec<(String, Exchange)> {
    // Answered, not hung: a claim may wait its turn among the workers while
    // the slow readers' GETs read their 6 MB bodies from the database, which
    // on a loaded machine took up to 10 s.
    let limit = Duration::from_secs(30);
    vec![
        ("healthz".into(), client::get(addr, "/healthz", limit)),
        ("metrics".into(), client::get(addr, "/metrics", limit)),
        (
            "claim".into(),
            client::claim(addr, &format!("busy{round}"), "other", limit),
        ),
        ("missing".into(), client::get(addr, "/nowhere", limit)),
    ]
}

#[test]
fn thirty_two_slow_readers_of_a_large_coupon_leave_health_metrics_and_claims_answered() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let write_timeout = WRITE_TIMEOUT_SECS.to_string();
    let server = ServerProcess::spawn(&db.url, &[("HTTP_WRITE_TIMEOUT_SECS", &write_timeout)]);
    let addr = server.addr;
    db.client()
        .batch_execute(&format!(
            "INSERT INTO coupons (name, amount, remaining_amount) VALUES ('big', {CLAIMS}, 0), ('other', 1000000, 1000000); \
             INSERT INTO claims (user_id, coupon_name) \
             SELECT lpad(n::text, {ID_LENGTH}, 'u'), 'big' FROM generate_series(1, {CLAIMS}) AS n"
        ))
        .unwrap();
    // Warm up: the pool, and the threads that are there at rest.
    for round in 0..3 {
        one_round(addr, 1000 + round);
    }
    let threads_before = server.threads();

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            thread::spawn(move || {
                slow_get(
                    addr,
                    "/api/coupons/big",
                    Duration::from_secs(WRITE_TIMEOUT_SECS + 6),
                    Duration::from_secs(30),
                )
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        for (what, exchange) in one_round(addr, round) {
            let expected = if what == "missing" { 404 } else { 200 };
            assert_eq!(exchange.status(), Some(expected), "{what}: {exchange:?}");
            slowest = slowest.max(exchange.elapsed());
        }
        thread::sleep(Duration::from_millis(500));
    }
    let mut endings: Vec<Ending> = readers.into_iter().map(|r| r.join().unwrap().0).collect();
    endings.sort();
    eprintln!("slowest answer beside the slow readers: {slowest:?}; readers: {endings:?}");
    assert!(
        !endings.contains(&Ending::StillOpen),
        "a slow reader outlived the write timeout: {endings:?}"
    );
    assert!(
        endings
            .iter()
            .all(|e| matches!(e, Ending::Served | Ending::CutOff | Ending::Refused(503))),
        "{endings:?}"
    );
    assert!(
        endings.contains(&Ending::CutOff),
        "a reader at 1 KiB/s of a {} MB body was not cut off: {endings:?}",
        (CLAIMS as usize * ID_LENGTH) >> 20
    );

    // Nothing is left held: no client connection stays open (tiny_http's
    // connection threads end with their sockets' read timeout), the threads
    // come back to about where they were, and no database connection is
    // left in a transaction.
    let held = server.settled(&db, threads_before + 4, Duration::from_secs(30));
    assert_eq!(held, None);
}
