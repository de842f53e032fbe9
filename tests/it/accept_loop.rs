//! The accept loop against what ends it: thread creation failing for a
//! while (also for the threads bodies are read on), a request head slower
//! than its accept loop's life, and connections reset while they wait to
//! be accepted. Each test runs the
//! real binary and looks at its threads and sockets in /proc or its log.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::answer::Answer;
use crate::support::http::try_status;
use crate::support::process::{ServerProcess, unused_uid};
use crate::support::serial;
use crate::support::{self, TestDb};

/// The generations (`http-<n>`) that have threads in the server now.
fn generations(server: &ServerProcess) -> BTreeSet<u64> {
    server
        .thread_names()
        .iter()
        .filter_map(|name| name.strip_prefix("http-")?.parse().ok())
        .collect()
}

/// The threads the server has when idle: its own, and tiny_http's accept
/// thread and four pool threads for the accepting generation.
fn idle_size(server: &ServerProcess) -> usize {
    let names = server.thread_names();
    names.iter().filter(|n| !n.starts_with("http-")).count() + 5
}

fn lines_with<'a>(log: &'a [String], text: &str) -> Vec<&'a String> {
    log.iter().filter(|l| l.contains(text)).collect()
}

/// What the server sends on `stream` until it closes it, each read waiting
/// at most `limit`, and how the reading ended.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, std::io::Result<usize>) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    (answer, read)
}

/// Waits (bounded) until the server has no thread of the generations in
/// `gone`, no more than `threads` threads, and no client connection held.
fn assert_nothing_left_held(server: &ServerProcess, gone: &BTreeSet<u64>, threads: usize) {
    let settled = support::wait_for(Duration::from_secs(30), || {
        generations(server).is_disjoint(gone)
            && server.thread_names().len() <= threads
            && server.held_connections() == 0
    });
    assert!(
        settled,
        "threads or sockets left held: threads {:?} (at most {threads} expected, none of \
         generations {gone:?}), {} client connections",
        server.thread_names(),
        server.held_connections()
    );
}

/// The log has a line for each generation that really ended (while
/// threads could not be created, each new one dies at its start), a warning
/// for the first of a run of them only, never one per stale wake, and none
/// once the server accepts again.
fn one_log_line_per_ended_accept_loop_and_none_per_stale_wake(log: &[String]) {
    let ended = lines_with(log, "accept loop ended");
    let stale = lines_with(log, ": a thread panicked:");
    eprintln!(
        "{} 'accept loop ended' lines, {} stale panic wakes ignored",
        ended.len(),
        stale.len()
    );
    let named: BTreeSet<&str> = ended
        .iter()
        .filter_map(|l| l.split("(http-").nth(1)?.split(':').next())
        .collect();
    assert_eq!(named.len(), ended.len(), "{ended:#?}");
    assert!((1..=12).contains(&ended.len()), "{ended:#?}");
    let warned = ended.iter().filter(|l| l.contains("[WARN]")).count();
    assert_eq!(warned, 1, "{ended:#?}");
    assert!(
        !stale.is_empty(),
        "the poisoned pool's threads never panicked, so no stale wake was tested: {log:?}"
    );
    let recovered = log
        .iter()
        .position(|l| l.contains("accepting again"))
        .unwrap_or_else(|| panic!("no 'accepting again' line: {log:?}"));
    assert!(
        lines_with(&log[recovered..], "accept loop ended").is_empty(),
        "an accept loop was retired after it served: {:#?}",
        &log[recovered..]
    );
}

/// A server of its own user, whose thread limit (RLIMIT_NPROC) leaves room
/// for a number of threads beyond those it needs when idle.
struct Limited {
    server: ServerProcess,
    /// Its /healthz.
    health: String,
    /// The threads it needs when idle.
    idle: usize,
}

/// Starts a server with room for `spare` threads beyond its idle size,
/// which a first server, with room to spare, is started to count. `None`
/// (the test is skipped) unless running as root, which a user of its own
/// needs. No idle timeout in the way: every accept loop after the first is
/// started because one failed.
fn server_with_room_for(db: &TestDb, spare: usize) -> Option<Limited> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the server as a user of its own needs root");
        return None;
    }
    flash_coupons::transport::raise_descriptor_limit()
        .expect("raising this process's descriptor limit");
    let uid = unused_uid();
    let env = [("LOG_LEVEL", "debug"), ("HTTP_IDLE_TIMEOUT_SECS", "30")];
    let start = |threads| {
        let server = ServerProcess::spawn_as_user_with_thread_limit(&db.url, uid, threads, &env);
        let health = format!("http://{}/healthz", server.addr);
        assert_eq!(try_status(&health, Duration::from_secs(5)), Some(200));
        Limited {
            idle: idle_size(&server),
            server,
            health,
        }
    };
    let idle = start(4096).idle;
    let limited = start((idle + spare) as u64);
    eprintln!(
        "{} threads when idle; thread limit {}",
        limited.idle,
        idle + spare
    );
    Some(limited)
}

#[test]
fn when_threads_run_out_the_server_serves_again_soon_after_they_are_back_and_no_stale_wake_retires_a_healthy_loop()
 {
    let _turn = serial::turn!();
    let db = TestDb::new();
    // Room for 40 threads more than it needs when idle: 200 connections
    // need a thread each.
    let Some(Limited {
        server,
        health,
        idle: baseline,
    }) = server_with_room_for(&db, 40)
    else {
        return;
    };
    let addr = server.addr;
    let first = generations(&server);

    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let mut held: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let ran_out = support::wait_for(Duration::from_secs(20), || {
        !lines_with(&server.log(), "failed to spawn thread").is_empty()
    });
    // Trickling for a few seconds, one byte per connection per second.
    for byte in head.iter().take(3) {
        held.retain_mut(|s| s.write_all(&[*byte]).is_ok());
        thread::sleep(Duration::from_secs(1));
    }
    assert!(
        ran_out,
        "thread creation never failed, so nothing was tested: {:?}",
        server.log()
    );
    eprintln!(
        "{} connections held, {} threads",
        held.len(),
        server.thread_names().len()
    );

    // Their threads end as they close, and thread creation works again.
    drop(held);
    let closed = Instant::now();
    let mut status = None;
    for _ in 0..100 {
        status = try_status(&health, Duration::from_secs(3));
        if status == Some(200) || closed.elapsed() > Duration::from_secs(20) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status,
        Some(200),
        "not serving 20 s after threads were back: {:?}",
        server.log()
    );
    eprintln!(
        "serving again {:?} after the connections closed",
        closed.elapsed()
    );
    // And it stays serving: no stale wake retires the new accept loop.
    let statuses: Vec<Option<u16>> = (0..20)
        .map(|_| {
            thread::sleep(Duration::from_millis(100));
            try_status(&health, Duration::from_secs(3))
        })
        .collect();
    assert!(
        statuses.iter().all(|s| *s == Some(200)),
        "{statuses:?}\n{:?}",
        server.log()
    );

    one_log_line_per_ended_accept_loop_and_none_per_stale_wake(&server.log());

    // Every thread of the failed generations has ended; the one serving
    // now is back to its idle size.
    let current = generations(&server);
    let gone: BTreeSet<u64> = (*first.first().unwrap()..*current.last().unwrap()).collect();
    assert_nothing_left_held(&server, &gone, baseline);
}

#[test]
fn a_request_head_completed_long_after_its_accept_loop_retired_gets_a_real_answer() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    // A short idle timeout retires generations every 3 s without a new
    // connection; one byte a second keeps the slow head under it.
    let server = ServerProcess::spawn(
        &db.url,
        &[("HTTP_IDLE_TIMEOUT_SECS", "3"), ("LOG_LEVEL", "debug")],
    );
    let addr: SocketAddr = server.addr;
    assert_eq!(
        try_status(&format!("http://{addr}/healthz"), Duration::from_secs(5)),
        Some(200)
    );
    let baseline = idle_size(&server);

    // 85 bytes at one a second: the head completes after 84 s, past the
    // 63 s (idle timeout + 60) after which a retired generation's queue
    // used to be abandoned.
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Slow: ".to_vec();
    head.resize(81, b's');
    head.extend_from_slice(b"\r\n\r\n");
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream.write_all(&head[..1]).expect("the first byte");
    // Its generation is the newest now, or the one started just after.
    let accepted_by = *generations(&server).last().expect("a generation");
    let started = Instant::now();
    for (i, byte) in head.iter().enumerate().skip(1) {
        thread::sleep(Duration::from_secs(1));
        stream
            .write_all(&[*byte])
            .unwrap_or_else(|e| panic!("byte {i} after {:?}: {e}", started.elapsed()));
    }
    eprintln!("head completed after {:?}", started.elapsed());
    let newest = *generations(&server).last().expect("a generation");
    assert!(
        newest >= accepted_by + 2,
        "the slow connection's generation (http-{accepted_by} or the next) was never \
         retired: newest is http-{newest}"
    );

    let (answer, read) = read_until_closed(&mut stream, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&answer);
    eprintln!("answer: {text:?} ({read:?})");
    if !answer.is_empty() {
        let (parsed, _) = Answer::parse(&answer, true)
            .unwrap_or_else(|| panic!("not an answer of the service: {text:?}"));
        assert!(
            !(parsed.status == 500 && parsed.text.is_empty()),
            "tiny_http's empty 500: {text:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&parsed.text)
            .unwrap_or_else(|e| panic!("not an answer of the service ({e}): {text:?}"));
        assert!(
            parsed.status_line.starts_with("HTTP/1.1 200") && json["status"] == "ok"
                || json["error"]["code"].is_string(),
            "{text:?}"
        );
    }
    drop(stream);

    // Generations come and go every 3 s; those that served the slow client
    // end, and so do their threads and sockets.
    let gone: BTreeSet<u64> = (accepted_by..=accepted_by + 1).collect();
    assert_nothing_left_held(&server, &gone, baseline + 10);
    let live = generations(&server);
    assert!(live.len() <= 3, "generations accumulate: {live:?}");
}

#[test]
fn connections_reset_while_they_wait_to_be_accepted_cost_the_connections_beside_them_nothing() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let server = ServerProcess::spawn(&db.url, &[("LOG_LEVEL", "debug")]);
    let addr: SocketAddr = server.addr;
    let health = format!("http://{addr}/healthz");
    assert_eq!(try_status(&health, Duration::from_secs(5)), Some(200));

    // Stopped, the server accepts nothing: each connection below waits in
    // the kernel's accept queue with its request sent, and every other one
    // is reset there (as HAProxy or a client giving up on a stopped replica
    // does), so that the server, once it accepts it, cannot read its peer's
    // address: tiny_http's connection thread unwraps that (defect 5), and
    // before the fix 16 of the 20 connections queued beside them were
    // closed unanswered once the threads of tiny_http's task pool had died.
    server.signal(libc::SIGSTOP);
    let request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut waiting = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream.write_all(request).expect("sending the request");
        if i % 2 == 1 {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0, so that closing resets");
            drop(stream);
        } else {
            waiting.push(stream);
        }
    }
    server.signal(libc::SIGCONT);

    for (i, mut stream) in waiting.into_iter().enumerate() {
        let (answer, read) = read_until_closed(&mut stream, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "connection {i} beside the reset ones: {text:?} ({read:?}); log: {:?}",
            server.log()
        );
    }
    // The resets did reach tiny_http's unwrap; without that this test would
    // show nothing.
    let panicked = support::wait_for(Duration::from_secs(10), || {
        !lines_with(&server.log(), "a connection's thread panicked").is_empty()
    });
    assert!(panicked, "no thread panicked: {:?}", server.log());
    assert_eq!(try_status(&health, Duration::from_secs(5)), Some(200));
}

/// Bodies long enough to need a thread of their own to be read (over 1
/// KiB), arriving while threads run out: each is read on a thread of its
/// own while one can be had (and waits there for the rest of its body), and
/// once none can, its request is answered 503 `overloaded` in the service's
/// JSON and its connection given up. Before, such a request was dropped
/// where it was: tiny_http's empty 500, after the thread that hands every
/// request on had waited on the client for the rest of the body.
#[test]
fn a_body_that_no_thread_can_be_started_to_read_gets_503_overloaded() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let Some(Limited { server, health, .. }) = server_with_room_for(&db, 40) else {
        return;
    };
    let addr = server.addr;

    // The claims' connections get their threads while there is room...
    let mut claims: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connecting");
            stream.write_all(b"P").expect("the first byte");
            stream
        })
        .collect();
    // ...then connections that each hold one use up the rest.
    let mut held: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let ran_out = support::wait_for(Duration::from_secs(20), || {
        !lines_with(&server.log(), "failed to spawn thread").is_empty()
    });
    assert!(ran_out, "thread creation never failed: {:?}", server.log());
    held.retain_mut(|s| s.write_all(b"G").is_ok());

    // Heads declaring 2,000 bytes, and the first 10 of them; the bodies'
    // readers, while they can be started, take what threads come free.
    let head = "OST /api/coupons/claim HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                Content-Length: 2000\r\n\r\n          ";
    for stream in &mut claims {
        stream.write_all(head.as_bytes()).expect("the head");
        thread::sleep(Duration::from_millis(200));
    }
    let mut overloaded = 0;
    for (i, stream) in claims.iter_mut().enumerate() {
        let (answer, read) = read_until_closed(stream, Duration::from_secs(3));
        let text = String::from_utf8_lossy(&answer);
        eprintln!("claim {i}: {text:?} ({read:?})");
        if answer.is_empty() {
            // Its body's reader is waiting for the rest.
            continue;
        }
        let (parsed, _) = Answer::parse(&answer, true)
            .unwrap_or_else(|| panic!("claim {i}: not an answer: {text:?}"));
        parsed.assert_error(503, "overloaded");
        overloaded += 1;
    }
    assert!(
        overloaded > 0,
        "no claim was answered 503 overloaded: {:?}",
        server.log()
    );
    assert!(
        !lines_with(
            &server.log(),
            "cannot start a thread to read a request body"
        )
        .is_empty(),
        "{:?}",
        server.log()
    );

    // Once the held connections close, threads can be had again.
    drop(held);
    drop(claims);
    let serving = support::wait_for(Duration::from_secs(20), || {
        try_status(&health, Duration::from_secs(3)) == Some(200)
    });
    assert!(
        serving,
        "not serving after the threads were back: {:?}",
        server.log()
    );
}
