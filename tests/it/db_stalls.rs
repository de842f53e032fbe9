//! A database that stops answering: at start-up (a listener that accepts
//! connections and never says a word) and at run time (PostgreSQL's
//! processes stopped with SIGSTOP, so the kernel still acknowledges TCP and
//! neither keepalives nor TCP_USER_TIMEOUT fire). Every wait on the
//! database has a client-side bound, so requests get 503 within the
//! documented deadlines, /healthz says 503, SIGTERM ends the server, and
//! once the database goes on the service recovers by itself.
//!
//! The bounds asserted are liveness bounds ("answered within a few
//! seconds"), derived from the deadlines the tests set:
//! a request that needs the database is answered within
//! DB_CHECKOUT_TIMEOUT_MS (waiting for and checking a connection) plus
//! DB_QUERY_TIMEOUT_MS (its transaction) plus a little.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::{self, Exchange};
use crate::support::cluster::OwnedCluster;
use crate::support::crowd::tally;
use crate::support::process::{ServerProcess, Starting};
use crate::support::serial::{self, Turn};

/// The deadlines the run-time tests give the server.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);
const CHECKOUT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A little on top of a bound: scheduling, HTTP, a busy test machine.
const SLACK: Duration = Duration::from_secs(1);

/// The longest a request that needs the database may take while it is
/// stopped: a check-out, then one transaction.
fn db_request_bound() -> Duration {
    CHECKOUT_TIMEOUT + QUERY_TIMEOUT + SLACK
}

/// How long /healthz may take while the database is stopped: its own
/// one-second probe, and a little.
const HEALTH_BOUND: Duration = Duration::from_millis(2500);

/// Requests that need no database answer within this.
const NO_DB_BOUND: Duration = Duration::from_secs(3);

/// The run-time tests hold deadlines of 1.5 s against a real cluster each:
/// run side by side with one another (four clusters and servers on two
/// cores), a healthy transaction was seen to outlive one. They take turns,
/// each beside no other test.
fn one_cluster_at_a_time() -> Turn {
    serial::alone()
}

/// What the client gives any one request before calling it a hang.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

fn stall_env() -> Vec<(&'static str, String)> {
    vec![
        ("DB_QUERY_TIMEOUT_MS", QUERY_TIMEOUT.as_millis().to_string()),
        (
            "DB_CHECKOUT_TIMEOUT_MS",
            CHECKOUT_TIMEOUT.as_millis().to_string(),
        ),
    ]
}

fn spawn_server(cluster: &OwnedCluster, extra: &[(&str, &str)]) -> ServerProcess {
    let owned = stall_env();
    let mut env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    ServerProcess::spawn(&cluster.url(), &env)
}

/// A TCP listener on 127.0.0.1 that accepts every connection and never
/// writes a byte: a database that is "up" and says nothing.
struct SilentDatabase {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentDatabase {
    fn start() -> SilentDatabase {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a silent listener");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            thread::spawn(move || {
                // Held open, unread, until the test ends (at most 2 minutes).
                let mut held: Vec<TcpStream> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) if held.len() < 1000 => {
                            held.push(stream);
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        SilentDatabase {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@{}/app", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentDatabase {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server's stderr once it has been read to the end (bounded).
fn final_log(server: &Starting, wanted: &str) -> Vec<String> {
    support::wait_for(Duration::from_secs(2), || {
        server.log().iter().any(|l| l.contains(wanted))
    });
    server.log()
}

#[test]
fn a_database_that_accepts_connections_and_never_answers_ends_start_up_within_its_timeout() {
    let _turn = serial::turn!();
    let silent = SilentDatabase::start();
    let budget = Duration::from_secs(3);
    let began = Instant::now();
    let mut server = Starting::spawn(
        &silent.url(),
        &[("DB_STARTUP_TIMEOUT_SECS", &budget.as_secs().to_string())],
    );
    // Budget, then at most two start-up steps of a second, then a little.
    let bound = budget + Duration::from_secs(2) + SLACK;
    let exited = server.wait_exit(bound + Duration::from_secs(20));
    let took = began.elapsed();
    let log = final_log(&server, "start-up failed");
    eprintln!(
        "exit {exited:?} after {took:?}; {} connections accepted; log: {log:#?}",
        silent.accepted()
    );
    let code = exited.unwrap_or_else(|| panic!("still running after {took:?}: {log:#?}"));
    assert_eq!(code, Some(1), "start-up failure exits 1: {log:#?}");
    assert!(
        took <= bound,
        "start-up took {took:?} to give up on a silent database (budget {budget:?}): {log:#?}"
    );
    assert!(
        silent.accepted() >= 1,
        "the server never connected to the silent listener"
    );
    let failed = log
        .iter()
        .find(|l| l.contains("start-up failed"))
        .unwrap_or_else(|| panic!("no start-up failure line: {log:#?}"));
    assert!(
        failed.contains("no answer from the database") && failed.contains("connecting"),
        "the line says what happened: {failed}"
    );
    assert!(
        failed.contains("DB_STARTUP_TIMEOUT_SECS"),
        "the line names the setting: {failed}"
    );
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
}

#[test]
fn sigterm_during_a_start_up_that_waits_on_a_silent_database_ends_the_server_at_once() {
    let _turn = serial::turn!();
    let silent = SilentDatabase::start();
    let mut server = Starting::spawn(&silent.url(), &[("DB_STARTUP_TIMEOUT_SECS", "60")]);
    assert!(
        support::wait_for(Duration::from_secs(20), || silent.accepted() >= 1),
        "the server never connected: {:#?}",
        server.log()
    );
    // It is now waiting in the start-up handshake, which never comes.
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let exited = server.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    let log = final_log(&server, "during start-up");
    eprintln!("exit {exited:?} {took:?} after SIGTERM; log: {log:#?}");
    let code = exited.unwrap_or_else(|| panic!("SIGTERM did not end start-up: {log:#?}"));
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?} to end start-up"
    );
    assert_eq!(code, Some(0), "a requested stop is exit 0: {log:#?}");
    assert!(
        log.iter().any(|l| l.contains("received during start-up")),
        "{log:#?}"
    );
}

fn slowest<'a>(exchanges: impl Iterator<Item = &'a Exchange>) -> Duration {
    exchanges.map(Exchange::elapsed).max().unwrap_or_default()
}

/// A claim that the stopped database could not serve: 503
/// database_unavailable, complete, with Retry-After, within `bound`.
fn assert_unavailable_within(e: &Exchange, bound: Duration, what: &str, log: &[String]) {
    let answered = e.answered().unwrap_or_else(|| {
        panic!(
            "{what}: no answer: {e:?}\nserver log tail: {:#?}",
            tail(log)
        )
    });
    answered.assert_error(503, "database_unavailable");
    assert_eq!(answered.header("Retry-After"), Some("1"), "{what}: {e:?}");
    assert!(
        e.elapsed() <= bound,
        "{what}: answered after {:?}, more than {bound:?}: {e:?}\nserver log tail: {:#?}",
        e.elapsed(),
        tail(log)
    );
}

fn tail(log: &[String]) -> &[String] {
    &log[log.len().saturating_sub(30)..]
}

/// Claims from `threads` threads, each on its own coupon `{prefix}{t}`
/// with new users, until `stop` or `limit`; every exchange, by thread.
fn claim_load(
    addr: SocketAddr,
    prefix: &str,
    threads: usize,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicUsize>,
    limit: Duration,
) -> Vec<JoinHandle<Vec<(String, String, Exchange)>>> {
    (0..threads)
        .map(|t| {
            let (stop, ok) = (Arc::clone(stop), Arc::clone(ok));
            let coupon = format!("{prefix}{t}");
            thread::spawn(move || {
                let deadline = Instant::now() + limit;
                let mut done = Vec::new();
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                        break;
                    }
                    let user = format!("user_{t}_{i}");
                    let e = client::claim(addr, &user, &coupon, CLIENT_LIMIT);
                    if e.status() == Some(200) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    done.push((user, coupon.clone(), e));
                }
                done
            })
        })
        .collect()
}

#[test]
fn claims_while_postgresql_is_stopped_get_503_within_the_deadlines_and_sigterm_still_ends_the_server()
 {
    let _turn = one_cluster_at_a_time();
    let cluster = OwnedCluster::new();
    let stall = stop_postgresql_under_a_claim_load_then_send_sigterm(&cluster);
    stall.report();

    assert!(
        stall.warm,
        "the claim load never got going: {:#?}",
        tail(&stall.log)
    );
    claims_got_200_before_the_stop_and_503_within_the_deadlines_after_it(&stall);
    healthz_metrics_and_an_unknown_path_were_answered_within_their_bounds(&stall);
    sigterm_ended_the_server_in_time_answering_the_claims_in_flight(&stall);
    assert!(cluster.is_paused());
}

/// A claim load on a server whose PostgreSQL is stopped (SIGSTOP) under
/// it, then SIGTERM to the server: everything sent, and when.
struct Stall {
    /// (user, coupon, what became of the claim), from 4 threads.
    runs: Vec<(String, String, Exchange)>,
    /// The load got 40 claims granted before the stop.
    warm: bool,
    /// Sent 4 s into the stop: a claim on a coupon of its own, /healthz,
    /// /metrics and an unknown path.
    lone_claim: Exchange,
    health: Exchange,
    metrics: Exchange,
    unknown: Exchange,
    pause_began: Instant,
    paused: Instant,
    signalled: Instant,
    exited: Option<Option<i32>>,
    exit_took: Duration,
    log: Vec<String>,
}

impl Stall {
    fn claims(&self) -> impl Iterator<Item = &Exchange> {
        self.runs.iter().map(|(_, _, e)| e)
    }

    fn before(&self) -> Vec<&Exchange> {
        self.claims()
            .filter(|e| e.finished < self.pause_began)
            .collect()
    }

    /// In flight when the database stopped: answered 200 if the answer was
    /// already on its way, else cut by the query deadline.
    fn in_flight(&self) -> Vec<&Exchange> {
        self.claims()
            .filter(|e| e.started < self.paused && e.finished >= self.pause_began)
            .collect()
    }

    fn during(&self) -> Vec<&Exchange> {
        self.claims()
            .filter(|e| e.started >= self.paused && e.finished < self.signalled)
            .collect()
    }

    fn at_signal(&self) -> Vec<&Exchange> {
        self.claims()
            .filter(|e| e.finished >= self.signalled)
            .collect()
    }

    /// The watchdog's lines about transactions it cut.
    fn cut_lines(&self) -> Vec<&String> {
        self.log
            .iter()
            .filter(|l| l.contains("did not answer"))
            .collect()
    }

    fn report(&self) {
        let (before, in_flight, during, at_signal) = (
            self.before(),
            self.in_flight(),
            self.during(),
            self.at_signal(),
        );
        let Stall {
            lone_claim,
            health,
            metrics,
            unknown,
            exited,
            exit_took,
            ..
        } = self;
        let cut_lines = self.cut_lines();
        eprintln!(
            "SIGSTOP took {:?}; before the stop: {} claims {:?}; in flight at the stop: {:?}, slowest {:?}; \
             while stopped: {} claims {:?}, slowest {:?}; \
             lone claim {:?} in {:?}; /healthz {:?} in {:?}; /metrics {:?} in {:?}; \
             unknown path {:?} in {:?}; SIGTERM: exit {exited:?} after {exit_took:?}, {} claims \
             in flight {:?}; watchdog lines: {cut_lines:#?}",
            self.paused - self.pause_began,
            before.len(),
            tally(before.iter().copied()),
            tally(in_flight.iter().copied()),
            slowest(in_flight.iter().copied()),
            during.len(),
            tally(during.iter().copied()),
            slowest(during.iter().copied()),
            lone_claim.status(),
            lone_claim.elapsed(),
            health.status(),
            health.elapsed(),
            metrics.status(),
            metrics.elapsed(),
            unknown.status(),
            unknown.elapsed(),
            at_signal.len(),
            tally(at_signal.iter().copied()),
        );
    }
}

/// Claims from 4 threads on a server with the stall deadlines, each on a
/// coupon of its own; PostgreSQL stopped under them for 4 s, then a few
/// requests, then SIGTERM.
fn stop_postgresql_under_a_claim_load_then_send_sigterm(cluster: &OwnedCluster) -> Stall {
    const THREADS: usize = 4;
    let mut server = spawn_server(cluster, &[("WORKERS", "8"), ("DB_POOL_SIZE", "8")]);
    let addr = server.addr;
    for t in 0..THREADS {
        client::create(addr, &format!("STALL_{t}"), 1_000_000);
    }

    // A short claim load, so that the pool is warm; the database stops
    // under it, with claim transactions in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let load = claim_load(addr, "STALL_", THREADS, &stop, &ok, Duration::from_secs(60));
    let warm = support::wait_for(Duration::from_secs(20), || ok.load(Ordering::SeqCst) >= 40);
    let pause_began = Instant::now();
    cluster.pause();
    let paused = Instant::now();
    // The load goes on against the stopped database for a while.
    thread::sleep(Duration::from_secs(4));

    // While it is stopped: a claim on a coupon of its own, /healthz,
    // /metrics and an unknown path (workers are free for them: the load
    // has fewer threads than the server has workers).
    let lone_claim = thread::spawn(move || client::claim(addr, "lone", "STALL_0", CLIENT_LIMIT));
    let health = client::get(addr, "/healthz", CLIENT_LIMIT);
    let metrics = client::get(addr, "/metrics", CLIENT_LIMIT);
    let unknown = client::get(addr, "/no/such/path", CLIENT_LIMIT);
    let lone_claim = lone_claim.join().expect("the lone claim");

    // SIGTERM with claims in flight, the database still stopped.
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    stop.store(true, Ordering::SeqCst);
    let exited = server.wait_exit(Duration::from_secs(30));
    let exit_took = signalled.elapsed();
    let runs: Vec<(String, String, Exchange)> = load
        .into_iter()
        .flat_map(|h| h.join().expect("a claim thread"))
        .collect();
    let log = server.log();
    Stall {
        runs,
        warm,
        lone_claim,
        health,
        metrics,
        unknown,
        pause_began,
        paused,
        signalled,
        exited,
        exit_took,
        log,
    }
}

fn claims_got_200_before_the_stop_and_503_within_the_deadlines_after_it(stall: &Stall) {
    let Stall {
        lone_claim, log, ..
    } = stall;
    let (before, in_flight, during) = (stall.before(), stall.in_flight(), stall.during());
    assert!(
        before.iter().all(|e| e.status() == Some(200)),
        "claims before the stop: {:?}",
        tally(before.iter().copied())
    );
    for e in &in_flight {
        if e.status() != Some(200) {
            assert_unavailable_within(e, db_request_bound(), "a claim in flight at the stop", log);
        }
    }
    assert!(
        !during.is_empty(),
        "no claim ran while the database was stopped"
    );
    for e in &during {
        assert_unavailable_within(e, db_request_bound(), "a claim while stopped", log);
    }
    assert_unavailable_within(lone_claim, db_request_bound(), "the lone claim", log);
    // Whether a transaction was in flight at the moment of the stop is
    // chance: the deadline on a transaction that waits is asserted in
    // `a_request_that_waits_on_a_lock_past_the_query_deadline_...`.
    if stall.cut_lines().is_empty() {
        eprintln!("no claim transaction was in flight at the stop");
    }
}

fn healthz_metrics_and_an_unknown_path_were_answered_within_their_bounds(stall: &Stall) {
    let Stall {
        health,
        metrics,
        unknown,
        ..
    } = stall;
    health
        .answered()
        .unwrap_or_else(|| panic!("/healthz: {health:?}"))
        .assert_error(503, "database_unavailable");
    assert!(
        health.elapsed() <= HEALTH_BOUND,
        "/healthz took {:?}",
        health.elapsed()
    );
    assert_eq!(metrics.status(), Some(200), "/metrics: {metrics:?}");
    assert!(
        metrics.elapsed() <= NO_DB_BOUND,
        "/metrics took {:?}",
        metrics.elapsed()
    );
    unknown
        .answered()
        .unwrap_or_else(|| panic!("unknown path: {unknown:?}"))
        .assert_error(404, "not_found");
    assert!(
        unknown.elapsed() <= NO_DB_BOUND,
        "an unknown path took {:?}",
        unknown.elapsed()
    );
}

fn sigterm_ended_the_server_in_time_answering_the_claims_in_flight(stall: &Stall) {
    let Stall {
        exited,
        exit_took,
        log,
        ..
    } = stall;
    // SIGTERM: the requests in flight are answered (each within its
    // deadlines), then the server exits 0, the database still stopped.
    let code = exited.unwrap_or_else(|| {
        panic!(
            "SIGTERM did not end the server within 30 s while the database was stopped: {:#?}",
            tail(log)
        )
    });
    assert_eq!(code, Some(0), "{:#?}", tail(log));
    let exit_bound = db_request_bound() + Duration::from_secs(2);
    assert!(
        *exit_took <= exit_bound,
        "SIGTERM took {exit_took:?} to end the server (bound {exit_bound:?})"
    );
    for e in &stall.at_signal() {
        if let Some(answered) = e.answered() {
            assert_eq!(answered.status, 503, "a claim at SIGTERM: {e:?}");
        }
        assert!(
            e.elapsed() <= db_request_bound(),
            "a claim at SIGTERM: {e:?}"
        );
    }
}

#[test]
fn after_postgresql_resumes_the_same_server_recovers_by_itself_and_the_invariant_holds() {
    let _turn = one_cluster_at_a_time();
    let cluster = OwnedCluster::new();
    let server = spawn_server(&cluster, &[("WORKERS", "8"), ("DB_POOL_SIZE", "8")]);
    let pause = pause_postgresql_under_a_claim_load_then_resume(&cluster, server.addr);
    let log = server.log();
    pause.report(&log);

    every_claim_got_200_or_503_within_twice_the_bound(&pause, &log);
    claims_and_healthz_while_stopped_got_503(&pause);
    assert!(
        pause.recovered,
        "claims did not get 200 again within 20 s of SIGCONT\nserver log tail: {:#?}",
        tail(&log)
    );
    assert!(pause.healthy, "/healthz: {:?}", pause.health_polls.last());
    nothing_was_lost_or_oversold(&cluster, &pause.results);
}

/// The recovery test's claim threads, each with a coupon of its own.
const RECOVERY_THREADS: usize = 6;

/// A claim's user and coupon, and what became of it.
type Claimed = (String, String, Exchange);

/// A claim load on one server with PostgreSQL stopped (SIGSTOP) under it
/// for 5 s and resumed: everything sent, and when.
struct Pause {
    results: Vec<Claimed>,
    pause_began: Instant,
    paused: Instant,
    resumed: Instant,
    /// /healthz, 5 s into the stop.
    health_stopped: Exchange,
    /// Whether the load got 60 more 200s within 20 s of the resume, and
    /// how long after the resume that was known.
    recovered: bool,
    recovered_after: Duration,
    /// The load's 200s from that /healthz to the load's end.
    ok_since_stopped: usize,
    /// /healthz polled after that until it said 200 (`healthy`).
    health_polls: Vec<Exchange>,
    healthy: bool,
}

impl Pause {
    fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.results.iter().map(|(_, _, e)| e)
    }

    /// The claims sent after the stop returned and answered before the
    /// resume began.
    fn in_pause(&self) -> Vec<&Exchange> {
        self.exchanges()
            .filter(|e| e.started >= self.paused && e.finished <= self.resumed)
            .collect()
    }

    fn report(&self, log: &[String]) {
        let Pause {
            results,
            pause_began,
            paused,
            resumed,
            health_stopped,
            recovered_after,
            health_polls,
            ..
        } = self;
        let exchanges = || self.exchanges();
        let in_pause = self.in_pause();
        let first_ok_after = exchanges()
            .filter(|e| e.started >= *resumed && e.status() == Some(200))
            .map(|e| e.finished - *resumed)
            .min();
        eprintln!(
            "SIGSTOP took {:?}; {} claims {:?}; wholly inside the stop: {} {:?}, slowest {:?}; /healthz while \
             stopped {:?} in {:?}; first 200 {first_ok_after:?} after SIGCONT; {} 200s within \
             {recovered_after:?}; /healthz polls {}",
            *paused - *pause_began,
            results.len(),
            tally(exchanges()),
            in_pause.len(),
            tally(in_pause.iter().copied()),
            slowest(in_pause.iter().copied()),
            health_stopped.status(),
            health_stopped.elapsed(),
            self.ok_since_stopped,
            health_polls.len(),
        );

        let warned: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        eprintln!(
            "server: {} warnings/errors over a {:?} stop: {:#?}",
            warned.len(),
            *resumed - *paused,
            &warned[..warned.len().min(20)]
        );
    }
}

/// Claims from RECOVERY_THREADS threads, each alternating between HOT and
/// a coupon of its own with new users, until `stop` or 90 s; every claim
/// into `results`.
fn hot_and_own_claim_load(
    addr: SocketAddr,
    ok: &Arc<AtomicUsize>,
    stop: &Arc<AtomicBool>,
    results: &Arc<Mutex<Vec<Claimed>>>,
) -> Vec<JoinHandle<()>> {
    (0..RECOVERY_THREADS)
        .map(|t| {
            let (ok, stop, results) = (Arc::clone(ok), Arc::clone(stop), Arc::clone(results));
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                        break;
                    }
                    let coupon = if i % 2 == 0 {
                        "HOT".to_owned()
                    } else {
                        format!("OWN_{t}")
                    };
                    let user = format!("user_{t}_{i}");
                    let e = client::claim(addr, &user, &coupon, CLIENT_LIMIT);
                    if e.status() == Some(200) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    results.lock().unwrap().push((user, coupon, e));
                }
            })
        })
        .collect()
}

/// Once the load gets 200s, stops PostgreSQL for 5 s and asks /healthz;
/// resumes it and waits (bounded) for the load, then /healthz, to get 200
/// again.
fn pause_postgresql_under_a_claim_load_then_resume(
    cluster: &OwnedCluster,
    addr: SocketAddr,
) -> Pause {
    // One hot coupon shared by every thread (claims on it are combined),
    // and one coupon per thread.
    client::create(addr, "HOT", 1_000_000);
    for t in 0..RECOVERY_THREADS {
        client::create(addr, &format!("OWN_{t}"), 1_000_000);
    }
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Claimed>>> = Arc::default();
    let load = hot_and_own_claim_load(addr, &ok, &stop, &results);

    assert!(
        support::wait_for(Duration::from_secs(20), || ok.load(Ordering::SeqCst) >= 60),
        "the load never got going"
    );
    let pause_began = Instant::now();
    cluster.pause();
    let paused = Instant::now();
    thread::sleep(Duration::from_secs(5));
    let health_stopped = client::get(addr, "/healthz", CLIENT_LIMIT);
    let ok_while_stopped = ok.load(Ordering::SeqCst);
    let resumed = Instant::now();
    cluster.resume();

    // Recovery with no restart: the load's claims get 200 again, and
    // /healthz says 200.
    let recovered = support::wait_for(Duration::from_secs(20), || {
        ok.load(Ordering::SeqCst) >= ok_while_stopped + 60
    });
    let recovered_after = resumed.elapsed();
    let mut health_polls = Vec::new();
    let healthy = support::wait_for(Duration::from_secs(10), || {
        let e = client::get(addr, "/healthz", CLIENT_LIMIT);
        let ok = e.status() == Some(200);
        health_polls.push(e);
        ok
    });
    stop.store(true, Ordering::SeqCst);
    for handle in load {
        handle.join().expect("a claim thread");
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    Pause {
        ok_since_stopped: ok.load(Ordering::SeqCst) - ok_while_stopped,
        results,
        pause_began,
        paused,
        resumed,
        health_stopped,
        recovered,
        recovered_after,
        health_polls,
        healthy,
    }
}

fn every_claim_got_200_or_503_within_twice_the_bound(pause: &Pause, log: &[String]) {
    // Claims queued behind their coupon's running transaction wait for it
    // and then run their own: twice the single-request bound.
    let queued_bound = db_request_bound() * 2;
    for e in pause.exchanges() {
        let answered = e.answered().unwrap_or_else(|| {
            panic!(
                "a claim got no complete answer: {e:?}\nserver log tail: {:#?}",
                tail(log)
            )
        });
        match answered.status {
            200 => {}
            503 => answered.assert_error(503, "database_unavailable"),
            _ => panic!("unexpected answer: {e:?}"),
        }
        assert!(
            e.elapsed() <= queued_bound,
            "a claim took {:?} (bound {queued_bound:?}): {e:?}",
            e.elapsed()
        );
    }
}

fn claims_and_healthz_while_stopped_got_503(pause: &Pause) {
    let in_pause = pause.in_pause();
    let health_stopped = &pause.health_stopped;
    assert!(
        !in_pause.is_empty() && in_pause.iter().all(|e| e.status() == Some(503)),
        "claims while stopped: {:?}",
        tally(in_pause.iter().copied())
    );
    assert_eq!(
        health_stopped.status(),
        Some(503),
        "/healthz while stopped: {health_stopped:?}"
    );
    assert!(health_stopped.elapsed() <= HEALTH_BOUND);
}

// Nothing lost, nothing oversold: every 200 has its row, and every row
// belongs to a claim answered 200 or 503 (a commit whose answer was cut).
fn nothing_was_lost_or_oversold(cluster: &OwnedCluster, results: &[Claimed]) {
    cluster.assert_invariant();
    let mut holders: HashSet<(String, String)> = HashSet::new();
    let mut coupons: Vec<String> = vec!["HOT".to_owned()];
    coupons.extend((0..RECOVERY_THREADS).map(|t| format!("OWN_{t}")));
    for coupon in &coupons {
        let held = cluster.holders(coupon);
        let distinct: HashSet<&String> = held.iter().collect();
        assert_eq!(distinct.len(), held.len(), "a user holds {coupon} twice");
        holders.extend(held.into_iter().map(|u| (u, coupon.clone())));
    }
    let mut in_doubt = 0;
    for (user, coupon, e) in results {
        let held = holders.contains(&(user.clone(), coupon.clone()));
        match e.status() {
            Some(200) => assert!(held, "{user} got 200 on {coupon} but has no claim"),
            _ if held => in_doubt += 1,
            _ => {}
        }
    }
    let claimed: HashSet<(&str, &str)> = results
        .iter()
        .map(|(u, c, _)| (u.as_str(), c.as_str()))
        .collect();
    for (user, coupon) in &holders {
        assert!(
            claimed.contains(&(user.as_str(), coupon.as_str())),
            "{user} holds {coupon} without having claimed it"
        );
    }
    eprintln!(
        "{} claims committed, {in_doubt} of them answered 503 (the commit's answer was cut)",
        holders.len()
    );
}

#[test]
fn while_every_worker_waits_on_a_stopped_database_metrics_unknown_paths_and_healthz_still_answer() {
    let _turn = one_cluster_at_a_time();
    const WORKERS: usize = 4;
    const READERS: usize = 16;
    let cluster = OwnedCluster::new();
    let server = spawn_server(&cluster, &[("WORKERS", "4"), ("DB_POOL_SIZE", "4")]);
    let addr = server.addr;
    for t in 0..READERS {
        client::create(addr, &format!("READ_{t}"), 10);
    }
    for t in 0..WORKERS {
        let e = client::claim(addr, "warm", &format!("READ_{t}"), CLIENT_LIMIT);
        assert_eq!(e.status(), Some(200), "{e:?}");
    }
    cluster.pause();

    // More readers than workers, each needing the database: every worker
    // waits on it, and requests queue behind them.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<JoinHandle<Vec<Exchange>>> = (0..READERS)
        .map(|t| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut done = Vec::new();
                for _ in 0..1000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                        break;
                    }
                    done.push(client::get(
                        addr,
                        &format!("/api/coupons/READ_{t}"),
                        CLIENT_LIMIT,
                    ));
                }
                done
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let metrics = client::get(addr, "/metrics", CLIENT_LIMIT);
    let unknown = client::get(addr, "/no/such/path", CLIENT_LIMIT);
    let health = client::get(addr, "/healthz", CLIENT_LIMIT);
    stop.store(true, Ordering::SeqCst);
    let reads: Vec<Exchange> = readers
        .into_iter()
        .flat_map(|h| h.join().expect("a reader"))
        .collect();
    eprintln!(
        "reads {:?}, slowest {:?}; /metrics {:?} in {:?}; unknown path {:?} in {:?}; \
         /healthz {:?} in {:?}",
        tally(reads.iter()),
        slowest(reads.iter()),
        metrics.status(),
        metrics.elapsed(),
        unknown.status(),
        unknown.elapsed(),
        health.status(),
        health.elapsed(),
    );
    let log = server.log();
    for e in &reads {
        let answered = e
            .answered()
            .unwrap_or_else(|| panic!("a read got no answer: {e:?}"));
        assert!(
            matches!(answered.status, 503),
            "a read while stopped: {e:?}"
        );
    }
    assert_eq!(metrics.status(), Some(200), "/metrics: {metrics:?}");
    assert!(
        metrics.elapsed() <= NO_DB_BOUND,
        "/metrics took {:?} while every worker waited on the database \
         (it is queued behind them)\nserver log tail: {:#?}",
        metrics.elapsed(),
        tail(&log)
    );
    assert_eq!(unknown.status(), Some(404), "unknown path: {unknown:?}");
    assert!(
        unknown.elapsed() <= NO_DB_BOUND,
        "an unknown path took {:?} while every worker waited on the database",
        unknown.elapsed()
    );
    assert_eq!(health.status(), Some(503), "/healthz: {health:?}");
    assert!(
        health.elapsed() <= HEALTH_BOUND,
        "/healthz took {:?} while every worker waited on the database",
        health.elapsed()
    );
}

#[test]
fn a_request_that_waits_on_a_lock_past_the_query_deadline_is_cut_and_answered_503() {
    let _turn = one_cluster_at_a_time();
    let cluster = OwnedCluster::new();
    let server = spawn_server(&cluster, &[]);
    let addr = server.addr;
    client::create(addr, "LOCKED", 10);
    client::create(addr, "FREE", 10);
    let cut_lines = |what: &str| -> usize {
        server
            .log()
            .iter()
            .filter(|l| l.contains("did not answer") && l.contains(what))
            .count()
    };

    // The test holds the coupon's row lock: a claim on it waits inside its
    // transaction on a database that is alive, until the deadline cuts it.
    let mut holder = cluster.client();
    let mut tx = holder.transaction().expect("a transaction");
    tx.execute(
        "SELECT 1 FROM coupons WHERE name = 'LOCKED' FOR UPDATE",
        &[],
    )
    .expect("locking the coupon's row");
    let waiter = client::claim(addr, "waiter", "LOCKED", CLIENT_LIMIT);
    // Another coupon is served meanwhile.
    let free = client::claim(addr, "bystander", "FREE", CLIENT_LIMIT);
    // Cut by the watchdog, or given up by the database itself (a claim
    // alone on its coupon is sent whole, with a statement timeout below
    // the deadline).
    let claim_cut = support::wait_for(Duration::from_secs(2), || {
        cut_lines("read-write transaction") >= 1
            || server
                .log()
                .iter()
                .any(|l| l.contains("/api/coupons/claim") && l.contains("statement timeout"))
    });
    tx.rollback().expect("releasing the row");

    // A whole table locked: a GET waits in a query the store's stream
    // runs (not inside a Store transaction helper) and is cut too.
    let mut tx = holder.transaction().expect("a transaction");
    tx.batch_execute("LOCK TABLE coupons IN ACCESS EXCLUSIVE MODE")
        .expect("locking the table");
    let reader = client::get(addr, "/api/coupons/FREE", CLIENT_LIMIT);
    let read_cut = support::wait_for(Duration::from_secs(2), || cut_lines("a query") >= 1);
    tx.rollback().expect("releasing the table");

    // Afterwards the cut claim left nothing behind: the same user claims
    // again and gets the unit (not 409).
    let again = client::claim(addr, "waiter", "LOCKED", CLIENT_LIMIT);
    let log = server.log();
    eprintln!(
        "claim behind the row lock {:?} in {:?}; bystander {:?} in {:?}; GET behind the table \
         lock {:?} in {:?}; the claim again {:?}; watchdog lines: {:#?}",
        waiter.status(),
        waiter.elapsed(),
        free.status(),
        free.elapsed(),
        reader.status(),
        reader.elapsed(),
        again.status(),
        log.iter()
            .filter(|l| l.contains("did not answer"))
            .collect::<Vec<_>>()
    );
    assert_unavailable_within(&waiter, db_request_bound(), "the claim behind a lock", &log);
    assert!(
        claim_cut,
        "no watchdog line for the claim: {:#?}",
        tail(&log)
    );
    assert_eq!(free.status(), Some(200), "{free:?}");
    let answered = reader
        .answered()
        .unwrap_or_else(|| panic!("the GET behind a lock: {reader:?}"));
    answered.assert_error(503, "database_unavailable");
    assert!(reader.elapsed() <= db_request_bound(), "{reader:?}");
    assert!(read_cut, "no watchdog line for the GET: {:#?}", tail(&log));
    assert_eq!(again.status(), Some(200), "{again:?}");
    assert_eq!(
        again.answered().unwrap().body["remaining_amount"],
        9,
        "{again:?}"
    );
    cluster.assert_invariant();
    assert_eq!(cluster.holders("LOCKED"), vec!["waiter".to_owned()]);
}
