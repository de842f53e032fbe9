//! Clients that hold connections, send slowly or exhaust descriptors must
//! not stop the server answering everyone else.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::client;
use crate::support::crowd::{all_at_once, claims_at_once};
use crate::support::process::ServerProcess;
use crate::support::{TestApp, TestDb, http, serial};

/// Sends one keep-alive request and reads exactly one response, then holds
/// the connection open as browsers and Go's client do, unless the answer
/// said `Connection: close` (which they honour). Returns the status, or None
/// when nothing complete came.
fn request_and_hold(addr: SocketAddr, limit: Duration) -> (Option<u16>, Option<TcpStream>) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, limit) else {
        return (None, None);
    };
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .is_err()
    {
        return (None, Some(stream));
    }
    match client::read_answer(&mut stream, limit) {
        Ok(answer) => {
            let close = answer
                .header("Connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            (Some(answer.status), (!close).then_some(stream))
        }
        Err(_) => (None, Some(stream)),
    }
}

#[test]
fn two_hundred_clients_holding_their_connections_after_an_idle_pause_all_get_answers() {
    let _turn = serial::turn!();
    flash_coupons::transport::raise_descriptor_limit()
        .expect("raising this process's descriptor limit");
    let app = TestApp::spawn();
    let addr = app.addr();
    for round in 0..3 {
        // Past the server's socket timeout and tiny_http's 5 s thread expiry.
        thread::sleep(Duration::from_millis(6500));
        let answered = Arc::new(AtomicUsize::new(0));
        let statuses: Vec<Option<u16>> = all_at_once((0..200).map(|_| {
            let answered = Arc::clone(&answered);
            move || {
                let (status, held) = request_and_hold(addr, Duration::from_secs(20));
                if status.is_some() {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                // Held, like a browser's or Go's connection pool, until
                // every client has its answer (bounded).
                let deadline = Instant::now() + Duration::from_secs(25);
                while answered.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(50));
                }
                drop(held);
                status
            }
        }));
        let answered = statuses.iter().filter(|s| **s == Some(200)).count();
        assert_eq!(answered, 200, "round {round}: {statuses:?}");
    }
}

#[test]
fn two_thousand_idle_and_trickling_connections_do_not_change_a_flash_sale() {
    let _turn = serial::turn!();
    flash_coupons::transport::raise_descriptor_limit()
        .expect("raising this process's descriptor limit");
    let app = TestApp::spawn();
    let addr = app.addr();
    app.create("FLASH", 5);

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).expect("an idle connection"));
    }
    // Trickling: one byte of a request head per connection per second.
    let trickle_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = Arc::clone(&trickle_stop);
        thread::spawn(move || {
            let mut slow: Vec<TcpStream> = (0..1000)
                .filter_map(|_| TcpStream::connect(addr).ok())
                .collect();
            let head = b"POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\n";
            for i in 0..30 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                slow.retain_mut(|s| s.write_all(&head[i % head.len()..][..1]).is_ok());
                thread::sleep(Duration::from_secs(1));
            }
            slow.len()
        })
    };
    thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    assert_eq!(app.get("/healthz").status, 200);
    let base = app.base.clone();
    let claims: Vec<(String, String)> = (0..50)
        .map(|i| (format!("user_{i}"), "FLASH".to_owned()))
        .collect();
    let statuses: Vec<u16> = claims_at_once(&claims, move |_, user, coupon| {
        http::claim(&base, user, coupon).status
    });
    eprintln!(
        "flash sale beside 2,000 held connections took {:?}",
        started.elapsed()
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        45,
        "{statuses:?}"
    );
    assert_eq!(app.get("/api/coupons/FLASH").body["remaining_amount"], 0);
    app.db.assert_invariant();

    trickle_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let still_trickling = trickler.join().unwrap();
    eprintln!("{still_trickling} trickling connections still open at the end");
    drop(idle);
    assert_eq!(app.get("/healthz").status, 200);
}

#[test]
fn running_out_of_descriptors_does_not_stop_the_server_for_good() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    // The server raises its soft limit to the hard one; a low hard limit
    // makes descriptors run out after a few dozen connections.
    let mut server =
        ServerProcess::spawn_with_fd_limit(&db.url, 64, &[("HTTP_IDLE_TIMEOUT_SECS", "30")]);
    let addr = server.addr;
    let ok = |limit| http::try_status(&format!("http://{addr}/healthz"), limit);
    assert_eq!(ok(Duration::from_secs(5)), Some(200));

    // Hold far more connections than the server has descriptors for.
    let held: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    thread::sleep(Duration::from_secs(2));
    drop(held);

    // Bounded wait for the accept loop to come back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = None;
    while Instant::now() < deadline {
        status = ok(Duration::from_secs(3));
        if status == Some(200) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let log = server.log();
    assert_eq!(status, Some(200), "the server did not recover: {log:?}");
    assert!(
        log.iter().any(|l| l.contains("accept loop ended")),
        "descriptors never ran out, so nothing was tested: {log:?}"
    );
    assert!(
        server.wait_exit(Duration::from_millis(10)).is_none(),
        "the server exited"
    );
}
