//! Requests pipelined on one connection: each connection's requests are
//! worked on one at a time and answered in order, so no answer ever waits
//! for a request queued behind it.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use crate::support::answer::Answer;
use crate::support::client::{claim_text, pipelined, request_text};
use crate::support::process::ServerProcess;
use crate::support::serial;
use crate::support::{self, TestDb};

const LIMIT: Duration = Duration::from_secs(20);

/// Threads a server may have once its clients are gone, beyond those it had
/// before (tiny_http's connection threads end with their sockets' read
/// timeout; a few pool threads linger).
const THREAD_SLACK: usize = 4;

fn remaining(answer: &Answer) -> i64 {
    answer.body["remaining_amount"].as_i64().unwrap_or(-1)
}

/// Two claims on one fresh coupon of 2 in one send, on each of `coupons`
/// coupons at once: from two users (both served, in order) on even ones,
/// from one user twice (served, then 409) on odd ones. Then a claim from
/// another client on each, and SIGTERM.
fn pipelined_pairs(env: &[(&str, &str)], coupons: usize) {
    let db = TestDb::new();
    let mut server = ServerProcess::spawn(&db.url, env);
    let addr = server.addr;
    for i in 0..coupons {
        support::client::create(addr, &format!("pair{i}"), 2);
    }
    let threads = server.threads();
    let pairs: Vec<_> = (0..coupons)
        .map(|i| {
            thread::spawn(move || {
                let coupon = format!("pair{i}");
                let second = if i % 2 == 0 { "b" } else { "a" };
                let requests = [claim_text("a", &coupon), claim_text(second, &coupon)];
                (i, pipelined(addr, &requests, LIMIT))
            })
        })
        .collect();
    for pair in pairs {
        let (i, answers) = pair.join().unwrap();
        let answers = answers.unwrap_or_else(|(got, failure)| {
            panic!("coupon pair{i}: {} answers, then {failure:?}", got.len())
        });
        assert_eq!(answers[0].status, 200, "pair{i}: {answers:?}");
        assert_eq!(remaining(&answers[0]), 1, "pair{i}: {answers:?}");
        if i % 2 == 0 {
            assert_eq!(answers[1].status, 200, "pair{i}: {answers:?}");
            assert_eq!(remaining(&answers[1]), 0, "pair{i}: {answers:?}");
        } else {
            assert_eq!(
                (answers[1].status, answers[1].code()),
                (409, "already_claimed"),
                "pair{i}: {answers:?}"
            );
        }
    }
    for i in 0..coupons {
        let other = support::client::claim(addr, "other", &format!("pair{i}"), LIMIT);
        let expected = if i % 2 == 0 { 400 } else { 200 };
        assert_eq!(other.status(), Some(expected), "pair{i}: {other:?}");
    }
    db.assert_invariant();
    assert_eq!(db.count("SELECT count(*) FROM claims"), 2 * coupons as i64);
    let held = server.settled(&db, threads + THREAD_SLACK, LIMIT);
    assert_eq!(held, None);
    server.signal(libc::SIGTERM);
    let exit = server.wait_exit(Duration::from_secs(15));
    assert_eq!(exit, Some(Some(0)), "SIGTERM: {:?}", server.log());
}

#[test]
fn sixty_coupons_each_claimed_twice_in_one_send_are_answered_exactly_on_kept_connections() {
    let _turn = serial::turn!();
    pipelined_pairs(&[("HTTP_KEEP_ALIVE_REQUESTS", "0")], 60);
}

#[test]
fn sixty_coupons_each_claimed_twice_in_one_send_are_answered_exactly_with_default_settings() {
    let _turn = serial::turn!();
    pipelined_pairs(&[], 60);
}

#[test]
fn a_large_get_and_a_claim_in_one_send_are_answered_in_order() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[("HTTP_KEEP_ALIVE_REQUESTS", "0")]);
    let addr = server.addr;
    support::client::create(addr, "big", 30_000);
    support::client::create(addr, "small", 1);
    db.client()
        .batch_execute(
            "INSERT INTO claims (user_id, coupon_name) \
             SELECT 'user-' || n, 'big' FROM generate_series(1, 20000) AS n; \
             UPDATE coupons SET remaining_amount = 10000 WHERE name = 'big'",
        )
        .unwrap();
    let requests = [
        request_text("GET", "/api/coupons/big", None, ""),
        claim_text("u", "small"),
    ];
    let answers = pipelined(addr, &requests, LIMIT)
        .unwrap_or_else(|(got, failure)| panic!("{} answers, then {failure:?}", got.len()));
    let claimed_by = answers[0].body["claimed_by"].as_array().unwrap();
    assert_eq!(claimed_by.len(), 20_000);
    assert_eq!(claimed_by[0], "user-1");
    assert_eq!((answers[1].status, remaining(&answers[1])), (200, 0));
    assert_eq!(server.settled(&db, usize::MAX, LIMIT), None);
}

#[test]
fn two_connections_pipelining_claims_on_two_coupons_in_opposite_orders_are_both_answered() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[("HTTP_KEEP_ALIVE_REQUESTS", "0")]);
    let addr = server.addr;
    for round in 0..30 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        support::client::create(addr, &x, 2);
        support::client::create(addr, &y, 2);
        let orders = [
            [claim_text("u1", &x), claim_text("u1", &y)],
            [claim_text("u2", &y), claim_text("u2", &x)],
        ];
        let both: Vec<_> = orders
            .into_iter()
            .map(|requests| thread::spawn(move || pipelined(addr, &requests, LIMIT)))
            .collect();
        for answers in both {
            let answers = answers.join().unwrap().unwrap_or_else(|(got, failure)| {
                panic!("round {round}: {} answers, then {failure:?}", got.len())
            });
            assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
        }
    }
    db.assert_invariant();
    assert_eq!(db.count("SELECT count(*) FROM claims"), 120);
    assert_eq!(server.settled(&db, usize::MAX, LIMIT), None);
}

#[test]
fn a_client_that_pipelines_far_ahead_of_its_answers_gets_its_answers_in_order_and_nothing_unanswered_is_claimed()
 {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[("HTTP_KEEP_ALIVE_REQUESTS", "0")]);
    let addr = server.addr;
    support::client::create(addr, "flood", 1000);
    let requests: Vec<String> = (0..400)
        .map(|n| claim_text(&format!("user{n}"), "flood"))
        .collect();
    let answers = match pipelined(addr, &requests, Duration::from_secs(15)) {
        Ok(all) => all,
        // Cut off past its allowance: the answers that came are kept.
        Err((some, _)) => some,
    };
    assert!(!answers.is_empty());
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.status, 200, "answer {n}: {answer:?}");
        assert_eq!(remaining(answer), 999 - n as i64, "answer {n} out of order");
    }
    // Every claim decided was answered: the ones dropped were never run.
    assert_eq!(
        db.count("SELECT count(*) FROM claims"),
        answers.len() as i64
    );
    db.assert_invariant();
    let other = support::client::claim(addr, "after", "flood", LIMIT);
    assert_eq!(other.status(), Some(200), "{other:?}");
    assert_eq!(server.settled(&db, usize::MAX, LIMIT), None);
}

/// A TCP connection to `server` from 127.0.0.1:`port`.
fn connect_from(port: u16, server: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.connect(&server.into())?;
    Ok(socket.into())
}

#[test]
fn a_new_connection_from_the_address_of_a_cut_one_is_served_once_the_cut_one_has_closed() {
    use std::io::{Read, Write};
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[("HTTP_KEEP_ALIVE_REQUESTS", "0")]);
    let addr = server.addr;
    support::client::create(addr, "flood", 1000);
    let port = support::database::free_port().unwrap();

    // Far more than the server lets wait behind one request: cut.
    let mut first = connect_from(port, addr).unwrap();
    let flood: String = (0..400)
        .map(|n| claim_text(&format!("user{n}"), "flood"))
        .collect();
    first.write_all(flood.as_bytes()).unwrap();
    assert!(
        support::wait_for(LIMIT, || server
            .log()
            .iter()
            .any(|l| l.contains("too many requests ahead of its answers"))),
        "{:?}",
        server.log()
    );
    // Gone at once, with a reset; once the server has let go of it, its
    // address is free for a new connection.
    socket2::SockRef::from(&first)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(first);
    assert!(
        support::wait_for(LIMIT, || server.held_connections() == 0),
        "the server still holds the cut connection"
    );

    let mut second = None;
    for _ in 0..100 {
        match connect_from(port, addr) {
            Ok(stream) => {
                second = Some(stream);
                break;
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut second = second.expect("connecting again from the same port");
    second.set_read_timeout(Some(LIMIT)).unwrap();
    let claim = claim_text("after", "flood").replacen(
        "Host: test\r\n",
        "Host: test\r\nConnection: close\r\n",
        1,
    );
    second.write_all(claim.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = second.read_to_string(&mut answer);
    assert_eq!(
        support::answer::statuses(&answer),
        [200],
        "the new connection got {answer:?}"
    );
    db.assert_invariant();
}
