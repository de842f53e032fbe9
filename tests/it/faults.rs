//! Faults under load: PostgreSQL stopped or restarted under a running
//! server, the server killed mid-sale, several servers on one database.
//! Each test owns its cluster (or database) and the real binary as child
//! processes, and talks raw HTTP to it with a client that never panics, so
//! that a hang, a cut-off answer or a 500 is seen and named.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::{self, Exchange};
use crate::support::cluster::OwnedCluster;
use crate::support::crowd::{assert_outcomes, claims_at_once, tally};
use crate::support::process::ServerProcess;
use crate::support::serial;

/// The longest any one request may take, even while the database is gone:
/// an upper bound on a hang, not a performance requirement.
const HANG: Duration = Duration::from_secs(15);

/// Everything one user's claim went through: every attempt, in order.
#[derive(Debug)]
struct UserRun {
    user: String,
    coupon: String,
    attempts: Vec<Exchange>,
}

impl UserRun {
    fn last(&self) -> &Exchange {
        self.attempts.last().expect("at least one attempt")
    }

    fn final_status(&self) -> Option<u16> {
        self.last().status()
    }

    fn got(&self, status: u16) -> bool {
        self.attempts.iter().any(|a| a.status() == Some(status))
    }

    /// An attempt whose fate the client cannot know: a 503 or a transport
    /// failure after the request went out. Its claim may have committed.
    fn had_in_doubt_attempt(&self) -> bool {
        self.attempts.iter().any(|a| match &a.result {
            Ok(answered) => answered.status == 503,
            Err(failure) => !failure.before_sending(),
        })
    }
}

/// Claims from a shared list on several threads, each user once (retrying
/// only 503s, up to `max_attempts` in all), spreading requests round-robin
/// over `addrs`.
struct Sale {
    addrs: Vec<SocketAddr>,
    claims: Vec<(String, String)>,
    threads: usize,
    max_attempts: usize,
    retry_pause: Duration,
    /// No new claim starts after this.
    deadline: Instant,
}

/// Shared between a running sale and the test that watches it.
#[derive(Default)]
struct Progress {
    stop: AtomicBool,
    ok: AtomicUsize,
    answered: AtomicUsize,
}

impl Progress {
    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }
}

impl Sale {
    fn start(self, progress: &Arc<Progress>) -> JoinHandle<Vec<UserRun>> {
        let progress = Arc::clone(progress);
        thread::spawn(move || {
            let sale = Arc::new(self);
            let next = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..sale.threads)
                .map(|_| {
                    let (sale, next, progress) =
                        (Arc::clone(&sale), Arc::clone(&next), Arc::clone(&progress));
                    thread::spawn(move || sale.work(&next, &progress))
                })
                .collect();
            let mut runs: Vec<UserRun> = workers
                .into_iter()
                .flat_map(|w| w.join().expect("a claim thread"))
                .collect();
            runs.sort_by_key(|r| r.last().started);
            runs
        })
    }

    fn work(&self, next: &AtomicUsize, progress: &Progress) -> Vec<UserRun> {
        let mut runs = Vec::new();
        while !progress.stop.load(Ordering::SeqCst) && Instant::now() < self.deadline {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some((user, coupon)) = self.claims.get(i) else {
                break;
            };
            let mut run = UserRun {
                user: user.clone(),
                coupon: coupon.clone(),
                attempts: Vec::new(),
            };
            for attempt in 0..self.max_attempts {
                let addr = self.addrs[(i + attempt) % self.addrs.len()];
                let exchange = client::claim(addr, user, coupon, HANG);
                let status = exchange.status();
                run.attempts.push(exchange);
                if status == Some(200) {
                    progress.ok.fetch_add(1, Ordering::SeqCst);
                }
                if status != Some(503) || progress.stop.load(Ordering::SeqCst) {
                    break;
                }
                thread::sleep(self.retry_pause);
            }
            progress.answered.fetch_add(1, Ordering::SeqCst);
            runs.push(run);
        }
        runs
    }
}

fn all_attempts(runs: &[UserRun]) -> impl Iterator<Item = &Exchange> {
    runs.iter().flat_map(|r| r.attempts.iter())
}

/// No transport failure, no hang, no 500; every 503 in the documented
/// shape with a retryable code and `Retry-After: 1`. `context` goes into
/// every message.
fn assert_no_500_no_hang(exchanges: &[&Exchange], log: &[String], context: &str) {
    check_no_500_no_hang(exchanges, log, context, true);
}

/// The same for /healthz, whose 503 says the database is down and carries
/// no Retry-After: a probe is not told when to come back.
fn assert_health_no_500_no_hang(exchanges: &[&Exchange], log: &[String], context: &str) {
    check_no_500_no_hang(exchanges, log, context, false);
}

fn check_no_500_no_hang(exchanges: &[&Exchange], log: &[String], context: &str, retry_after: bool) {
    for e in exchanges {
        assert!(
            e.elapsed() < HANG,
            "{context}: a request took {:?} (a hang): {e:?}\nserver log tail: {:#?}",
            e.elapsed(),
            tail(log, 30)
        );
        let answered = match &e.result {
            Ok(a) => a,
            Err(f) => panic!(
                "{context}: a request failed at the transport: {f:?}\nserver log tail: {:#?}",
                tail(log, 30)
            ),
        };
        assert_ne!(
            answered.status,
            500,
            "{context}: a 500: {answered:?}\nserver log tail: {:#?}",
            tail(log, 30)
        );
        if answered.status == 503 {
            assert!(
                matches!(answered.code(), "database_unavailable" | "busy"),
                "{context}: a 503 with an unexpected code: {answered:?}"
            );
            answered.assert_error(503, answered.code());
            assert!(
                !retry_after || answered.header("Retry-After") == Some("1"),
                "{context}: a 503 without Retry-After: 1: {answered:?}"
            );
        }
    }
}

fn tail(log: &[String], n: usize) -> &[String] {
    &log[log.len().saturating_sub(n)..]
}

fn warnings(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect()
}

#[test]
fn postgresql_stopped_under_a_load_of_claims_gives_quick_503s_and_the_service_recovers_by_itself() {
    let _turn = serial::turn!();
    let cluster = OwnedCluster::new();
    let server = ServerProcess::spawn(&cluster.url(), &[]);
    let outage = stop_postgresql_under_a_load_of_claims(&cluster, server.addr);
    let log = server.log();
    outage.report(&log);

    no_request_got_a_500_or_hung(&outage, &log);
    every_claim_wholly_inside_the_outage_got_503(&outage);
    healthz_a_read_and_a_claim_during_the_outage_got_503_database_unavailable(&outage);
    healthz_then_a_claim_then_the_load_got_200_again(&outage, &log);
    the_503s_were_one_run_in_the_log(&outage, &log);
    no_claim_was_lost_or_oversold(&cluster, &outage.runs);
}

/// Every request failed alike while the database was down: their causes
/// are one run of failures in the log (the first in full, then a count at
/// most every 10 s), not a warning each, and the run's end is said once
/// requests are served again.
fn the_503s_were_one_run_in_the_log(outage: &Outage, log: &[String]) {
    let answered_503 = outage
        .attempts()
        .iter()
        .filter(|e| e.status() == Some(503))
        .count();
    let cause_lines: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("WARN")
                && (l.contains(": database unavailable") || l.contains("answered 503 in a row"))
        })
        .collect();
    let most = 2 + (outage.recovered_at - outage.stop_began).as_secs() as usize / 10;
    assert!(
        (1..=most).contains(&cause_lines.len()),
        "{} warnings for {answered_503} claims answered 503 (at most {most} expected): {:#?}",
        cause_lines.len(),
        &cause_lines[..cause_lines.len().min(10)]
    );
    assert!(
        log.iter().any(|l| l.contains("requests are served again")),
        "no line for the end of the run: {:#?}",
        tail(log, 20)
    );
}

/// A load of claims on one server with PostgreSQL stopped under it for a
/// while and started again: everything sent, and when.
struct Outage {
    /// The load's users: claims from 8 threads, one attempt each.
    runs: Vec<UserRun>,
    /// Sent 4 s into the outage: /healthz, a GET of a coupon, a claim.
    health: Exchange,
    coupon: Exchange,
    claim: Exchange,
    /// /healthz polled from the start until it said 200 (`healthy`).
    health_polls: Vec<Exchange>,
    healthy: bool,
    /// Then claims until one got 200 (`claimed`).
    probe_claims: Vec<Exchange>,
    claimed: bool,
    /// The load got 50 more 200s after that.
    load_recovered: bool,
    stop_began: Instant,
    stopped: Instant,
    start_began: Instant,
    started: Instant,
    healthy_at: Instant,
    recovered_at: Instant,
    /// The load's 200s when the stop returned, at recovery, at the end.
    ok_before: usize,
    ok_at_recovery: usize,
    ok_at_end: usize,
}

impl Outage {
    fn attempts(&self) -> Vec<&Exchange> {
        all_attempts(&self.runs).collect()
    }

    /// The load's requests sent after the stop returned and answered
    /// before the start began.
    fn wholly_inside(&self) -> Vec<&Exchange> {
        all_attempts(&self.runs)
            .filter(|e| e.started >= self.stopped && e.finished <= self.start_began)
            .collect()
    }

    fn report(&self, log: &[String]) {
        let attempts = self.attempts();
        let during_outage = self.wholly_inside();
        let slowest_in_outage = during_outage.iter().map(|e| e.elapsed()).max();
        let first_503 = attempts
            .iter()
            .filter(|e| e.status() == Some(503))
            .map(|e| e.finished)
            .min();
        eprintln!(
            "load: {} requests {:?}; stop took {:?}, outage {:?}, start took {:?}; \
             {} requests wholly inside the outage, slowest {:?}; first 503 {:?} after the stop \
             began; healthy {:?} after the start ({} polls), a claim succeeded {:?} after the \
             start ({} probes); 200s before the stop {}, at recovery {}, at the end {}",
            attempts.len(),
            tally(attempts.iter().copied()),
            self.stopped - self.stop_began,
            self.start_began - self.stopped,
            self.started - self.start_began,
            during_outage.len(),
            slowest_in_outage,
            first_503.map(|t| t.saturating_duration_since(self.stop_began)),
            self.healthy_at - self.started,
            self.health_polls.len(),
            self.recovered_at - self.started,
            self.probe_claims.len(),
            self.ok_before,
            self.ok_at_recovery,
            self.ok_at_end,
        );
        let warned = warnings(log);
        eprintln!(
            "server: {} warnings/errors, e.g. {:#?}",
            warned.len(),
            &warned[..warned.len().min(4)]
        );
    }
}

/// 100,000 users on two coupons of a million units each, claimed from 8
/// threads for at most 45 s, until told to stop.
fn start_a_load_of_claims(addr: SocketAddr) -> (Arc<Progress>, JoinHandle<Vec<UserRun>>) {
    for name in ["LOAD_A", "LOAD_B"] {
        client::create(addr, name, 1_000_000);
    }
    let claims: Vec<(String, String)> = (0..100_000u32)
        .map(|i| {
            let coupon = if i.is_multiple_of(2) {
                "LOAD_A"
            } else {
                "LOAD_B"
            };
            (format!("load_user_{i}"), coupon.to_owned())
        })
        .collect();
    let progress = Arc::new(Progress::default());
    let load = Sale {
        addrs: vec![addr],
        claims,
        threads: 8,
        max_attempts: 1,
        retry_pause: Duration::ZERO,
        deadline: Instant::now() + Duration::from_secs(45),
    }
    .start(&progress);
    (progress, load)
}

/// Once the load gets 200s, stops PostgreSQL for 4 s and sends /healthz, a
/// GET and a claim; starts it again and waits (bounded) for /healthz, then
/// a claim, then the load, to get 200 again.
fn stop_postgresql_under_a_load_of_claims(cluster: &OwnedCluster, addr: SocketAddr) -> Outage {
    let (progress, load) = start_a_load_of_claims(addr);
    assert!(
        support::wait_for(Duration::from_secs(15), || progress.ok() >= 50),
        "the load never got going"
    );
    let stop_began = Instant::now();
    cluster.stop();
    let stopped = Instant::now();
    let ok_before = progress.ok();

    // The database stays away for a while under the load.
    thread::sleep(Duration::from_secs(4));
    let [health, coupon, claim] = [
        thread::spawn(move || client::get(addr, "/healthz", HANG)),
        thread::spawn(move || client::get(addr, "/api/coupons/LOAD_A", HANG)),
        thread::spawn(move || client::claim(addr, "outage_probe", "LOAD_B", HANG)),
    ]
    .map(|probe| probe.join().expect("a probe"));
    let start_began = Instant::now();
    cluster.start();
    let started = Instant::now();

    // Recovery without a restart of the service: /healthz, then a claim.
    let (healthy, health_polls) = poll_until_healthy(addr);
    let healthy_at = Instant::now();
    let (claimed, probe_claims) = if healthy {
        claim_until_one_is_granted(addr)
    } else {
        (false, Vec::new())
    };
    let recovered_at = Instant::now();
    let ok_at_recovery = progress.ok();
    // The load itself must get 200s again too.
    let load_recovered = support::wait_for(Duration::from_secs(10), || {
        progress.ok() >= ok_at_recovery + 50
    });
    progress.stop.store(true, Ordering::SeqCst);
    let runs = load.join().expect("the load");
    Outage {
        runs,
        health,
        coupon,
        claim,
        health_polls,
        healthy,
        probe_claims,
        claimed,
        load_recovered,
        stop_began,
        stopped,
        start_began,
        started,
        healthy_at,
        recovered_at,
        ok_before,
        ok_at_recovery,
        ok_at_end: progress.ok(),
    }
}

/// GET /healthz until it says 200 (at most 20 s); whether it did, and
/// every poll.
fn poll_until_healthy(addr: SocketAddr) -> (bool, Vec<Exchange>) {
    let mut polls = Vec::new();
    let healthy = support::wait_for(Duration::from_secs(20), || {
        let e = client::get(addr, "/healthz", HANG);
        let ok = e.status() == Some(200);
        polls.push(e);
        ok
    });
    (healthy, polls)
}

/// Claims of LOAD_A by new users until one gets 200 (at most 20 s);
/// whether one did, and every claim.
fn claim_until_one_is_granted(addr: SocketAddr) -> (bool, Vec<Exchange>) {
    let mut claims = Vec::new();
    let claimed = support::wait_for(Duration::from_secs(20), || {
        let n = claims.len();
        let e = client::claim(addr, &format!("probe_{n}"), "LOAD_A", HANG);
        let ok = e.status() == Some(200);
        claims.push(e);
        ok
    });
    (claimed, claims)
}

fn no_request_got_a_500_or_hung(outage: &Outage, log: &[String]) {
    assert_no_500_no_hang(&outage.attempts(), log, "the load");
    assert_no_500_no_hang(
        &[&outage.coupon, &outage.claim],
        log,
        "the requests during the outage",
    );
    let health_polls: Vec<&Exchange> = outage.health_polls.iter().collect();
    assert_health_no_500_no_hang(&health_polls, log, "/healthz polls");
    assert_health_no_500_no_hang(&[&outage.health], log, "/healthz during the outage");
    let probe_claims: Vec<&Exchange> = outage.probe_claims.iter().collect();
    assert_no_500_no_hang(&probe_claims, log, "the claims after the restart");
}

fn every_claim_wholly_inside_the_outage_got_503(outage: &Outage) {
    let during_outage = outage.wholly_inside();
    assert!(
        !during_outage.is_empty(),
        "no request ran wholly inside the outage"
    );
    for e in &during_outage {
        let answered = e.answered().expect("checked above");
        assert_eq!(
            answered.status, 503,
            "a claim while the database was stopped: {e:?}"
        );
    }
}

fn healthz_a_read_and_a_claim_during_the_outage_got_503_database_unavailable(outage: &Outage) {
    let Outage {
        health,
        coupon,
        claim,
        ..
    } = outage;
    health.answered().map_or_else(
        || panic!("/healthz during the outage: {health:?}"),
        |a| a.assert_error(503, "database_unavailable"),
    );
    coupon.answered().map_or_else(
        || panic!("GET during the outage: {coupon:?}"),
        |a| a.assert_error(503, "database_unavailable"),
    );
    claim.answered().map_or_else(
        || panic!("a claim during the outage: {claim:?}"),
        |a| a.assert_error(503, "database_unavailable"),
    );
}

fn healthz_then_a_claim_then_the_load_got_200_again(outage: &Outage, log: &[String]) {
    assert!(
        outage.healthy,
        "/healthz did not say 200 within 20 s of the database coming back: last {:?}\n\
         server log tail: {:#?}",
        outage.health_polls.last(),
        tail(log, 30)
    );
    assert!(
        outage.claimed,
        "no claim succeeded within 20 s of /healthz recovering: last {:?}\n\
         server log tail: {:#?}",
        outage.probe_claims.last(),
        tail(log, 30)
    );
    assert!(outage.load_recovered, "the load did not get 200s again");
}

/// The invariant holds, every 200 has its claim, and every claim of the
/// load's users was answered 200 or is in doubt (its commit acknowledgement
/// lost to the outage).
fn no_claim_was_lost_or_oversold(cluster: &OwnedCluster, runs: &[UserRun]) {
    cluster.assert_invariant();
    let holders: HashSet<(String, String)> = ["LOAD_A", "LOAD_B"]
        .iter()
        .flat_map(|c| cluster.holders(c).into_iter().map(|u| (u, c.to_string())))
        .collect();
    let by_user: HashMap<(&str, &str), &UserRun> = runs
        .iter()
        .map(|r| ((r.user.as_str(), r.coupon.as_str()), r))
        .collect();
    for run in runs {
        if run.got(200) {
            assert!(
                holders.contains(&(run.user.clone(), run.coupon.clone())),
                "{} got 200 on {} but has no claim",
                run.user,
                run.coupon
            );
        }
    }
    let mut in_doubt_holders = 0;
    for (user, coupon) in holders.iter().filter(|(u, _)| u.starts_with("load_user_")) {
        let run = by_user
            .get(&(user.as_str(), coupon.as_str()))
            .unwrap_or_else(|| panic!("{user} holds {coupon} it never claimed"));
        assert!(
            run.got(200) || run.had_in_doubt_attempt(),
            "{user} holds {coupon} without a 200 or an in-doubt answer: {run:?}"
        );
        if !run.got(200) {
            in_doubt_holders += 1;
        }
    }
    eprintln!(
        "load: {} claims committed, {in_doubt_holders} of them answered 503 (commit ack lost)",
        holders.len()
    );
}

/// 2,000 distinct users on 32 threads against 500 units; PostgreSQL is
/// restarted (`mode`) once 100 claims have succeeded. Clients retry 503s.
fn restart_in_the_middle_of_a_flash_sale(mode: &str) {
    const USERS: usize = 2000;
    const STOCK: i64 = 500;
    let cluster = OwnedCluster::new();
    let server = ServerProcess::spawn(&cluster.url(), &[]);
    client::create(server.addr, "FLASH", STOCK);
    client::create(server.addr, "BYSTANDER", 3);
    let claims: Vec<(String, String)> = (0..USERS)
        .map(|i| (format!("user_{i}"), "FLASH".to_owned()))
        .collect();
    let progress = Arc::new(Progress::default());
    let began = Instant::now();
    let sale = Sale {
        addrs: vec![server.addr],
        claims,
        threads: 32,
        max_attempts: 40,
        retry_pause: Duration::from_millis(100),
        deadline: Instant::now() + Duration::from_secs(40),
    }
    .start(&progress);

    assert!(
        support::wait_for(Duration::from_secs(20), || progress.ok() >= 100),
        "the sale never got going"
    );
    let restart_began = Instant::now();
    let ok_before = progress.ok();
    let answered_before = progress.answered.load(Ordering::SeqCst);
    let restart_took = cluster.restart(mode);
    let answered_after_restart = progress.answered.load(Ordering::SeqCst);
    let runs = sale.join().expect("the sale");
    let sale_took = began.elapsed();
    let log = server.log();

    assert!(
        answered_after_restart < USERS,
        "the sale was over before the restart finished: it tested nothing"
    );
    let attempts: Vec<&Exchange> = all_attempts(&runs).collect();
    let retried: Vec<&UserRun> = runs.iter().filter(|r| r.attempts.len() > 1).collect();
    let most_attempts = runs.iter().map(|r| r.attempts.len()).max().unwrap_or(0);
    let n503 = attempts.iter().filter(|e| e.status() == Some(503)).count();
    eprintln!(
        "restart -m {mode}: took {restart_took:?}, began {:?} into a sale of {sale_took:?}, \
         after {ok_before} 200s and {answered_before} users answered ({answered_after_restart} \
         when it returned); {} requests {:?}; {n503} 503s, {} users retried, \
         at most {most_attempts} attempts for one user; {} server warnings/errors",
        restart_began - began,
        attempts.len(),
        tally(attempts.iter().copied()),
        retried.len(),
        warnings(&log).len(),
    );

    assert_no_500_no_hang(&attempts, &log, &format!("restart -m {mode}"));
    assert_eq!(
        runs.len(),
        USERS,
        "not every user got to claim within the time limit"
    );
    for run in &runs {
        let last = run.last().answered().expect("checked above");
        match last.status {
            200 => {}
            400 => last.assert_error(400, "out_of_stock"),
            409 => {
                last.assert_error(409, "already_claimed");
                assert!(
                    run.had_in_doubt_attempt(),
                    "{} got 409 without ever claiming before: {run:?}",
                    run.user
                );
            }
            _ => panic!(
                "{} was still not served after {} attempts (the service did not recover): \
                 {run:?}\nserver log tail: {:#?}",
                run.user,
                run.attempts.len(),
                tail(&log, 30)
            ),
        }
    }

    cluster.assert_invariant();
    let holders = cluster.holders("FLASH");
    let holder_set: HashSet<&str> = holders.iter().map(String::as_str).collect();
    assert_eq!(holders.len(), holder_set.len(), "a user holds FLASH twice");
    assert_eq!(
        holders.len() as i64,
        STOCK,
        "2,000 users on 500 units must sell them all"
    );
    assert_eq!(
        cluster.count("SELECT remaining_amount::bigint FROM coupons WHERE name = 'FLASH'"),
        0
    );
    assert_eq!(
        cluster.count("SELECT remaining_amount::bigint FROM coupons WHERE name = 'BYSTANDER'"),
        3
    );
    let mut remaining_seen = HashSet::new();
    let mut in_doubt_holders = 0;
    for run in &runs {
        let held = holder_set.contains(run.user.as_str());
        if run.got(200) {
            assert!(held, "{} got 200 but has no claim row", run.user);
            for a in run.attempts.iter().filter_map(Exchange::answered) {
                if a.status == 200 {
                    let left = a.body["remaining_amount"].as_i64().expect("a count");
                    assert!(
                        remaining_seen.insert(left),
                        "two 200s said remaining_amount {left}"
                    );
                }
            }
        } else if held {
            assert!(
                run.had_in_doubt_attempt(),
                "{} holds a unit without a 200 or an in-doubt answer: {run:?}",
                run.user
            );
            in_doubt_holders += 1;
        }
    }
    eprintln!(
        "restart -m {mode}: {} holders, {} with a 200, {in_doubt_holders} whose 200 was lost \
         to the restart (503, then 409 on retry)",
        holders.len(),
        holders.len() - in_doubt_holders
    );
}

#[test]
fn a_fast_restart_of_postgresql_mid_sale_loses_no_claim_and_oversells_nothing() {
    let _turn = serial::turn!();
    restart_in_the_middle_of_a_flash_sale("fast");
}

#[test]
fn an_immediate_restart_of_postgresql_mid_sale_loses_no_claim_and_oversells_nothing() {
    let _turn = serial::turn!();
    restart_in_the_middle_of_a_flash_sale("immediate");
}

#[test]
fn a_server_killed_mid_sale_leaves_no_half_done_claim_and_a_new_server_carries_on_exactly() {
    let _turn = serial::turn!();
    let cluster = OwnedCluster::new();
    let claims: Vec<(String, String)> = (0..KILLED_SALE_USERS)
        .map(|i| (format!("user_{i}"), "FLASH".to_owned()))
        .collect();
    let killed = kill_the_server_mid_sale(&cluster, &claims);
    before_the_kill_every_answer_was_a_whole_200_and_at_it_requests_failed_at_the_transport(
        &killed,
    );
    let (after_kill, ok) =
        every_200_before_the_kill_has_its_claim_and_every_claim_a_reason(&cluster, &killed.runs);

    let (_second, runs) = every_user_claims_again_on_a_new_server(&cluster, claims);
    let granted =
        the_new_server_sold_exactly_the_rest_and_told_every_holder_409(&runs, &after_kill);
    cluster.assert_invariant();
    let holders = cluster.holders("FLASH");
    assert_eq!(holders.len() as i64, KILLED_SALE_STOCK);
    let all: HashSet<&str> = holders.iter().map(String::as_str).collect();
    assert_eq!(all.len(), holders.len(), "a user holds FLASH twice");
    for user in granted.iter().chain(&ok) {
        assert!(
            all.contains(user.as_str()),
            "{user} got 200 but has no claim"
        );
    }
    assert_eq!(
        cluster.count("SELECT remaining_amount::bigint FROM coupons WHERE name = 'FLASH'"),
        0
    );
}

/// The sale whose server is killed: 2,000 users on 500 units.
const KILLED_SALE_USERS: usize = 2000;
const KILLED_SALE_STOCK: i64 = 500;

/// A sale on one server, killed (SIGKILL) once 100 claims have succeeded.
struct KilledSale {
    /// Every user's claim, one attempt each.
    runs: Vec<UserRun>,
    /// Taken before the signal: a request cut by the kill can finish before
    /// a timestamp taken after it (seen once in CI).
    killed: Instant,
    log: Vec<String>,
}

/// `claims` from 32 threads on a server of its own, killed mid-sale.
fn kill_the_server_mid_sale(cluster: &OwnedCluster, claims: &[(String, String)]) -> KilledSale {
    let mut first = ServerProcess::spawn(&cluster.url(), &[]);
    client::create(first.addr, "FLASH", KILLED_SALE_STOCK);
    let progress = Arc::new(Progress::default());
    let sale = Sale {
        addrs: vec![first.addr],
        claims: claims.to_vec(),
        threads: 32,
        max_attempts: 1,
        retry_pause: Duration::ZERO,
        deadline: Instant::now() + Duration::from_secs(30),
    }
    .start(&progress);
    assert!(
        support::wait_for(Duration::from_secs(20), || progress.ok() >= 100),
        "the sale never got going"
    );
    let killed = Instant::now();
    first.signal(libc::SIGKILL);
    progress.stop.store(true, Ordering::SeqCst);
    assert!(
        first.wait_exit(Duration::from_secs(10)).is_some(),
        "SIGKILL did not end the server"
    );
    let runs = sale.join().expect("the sale");
    let log = first.log();
    let attempts: Vec<&Exchange> = all_attempts(&runs).collect();
    eprintln!(
        "before the kill: {} requests {:?}",
        attempts.len(),
        tally(attempts.iter().copied())
    );
    KilledSale { runs, killed, log }
}

/// Before the kill every answer is a complete 200; at the kill, requests
/// fail at the transport. No 500 and no 503 either way.
fn before_the_kill_every_answer_was_a_whole_200_and_at_it_requests_failed_at_the_transport(
    sale: &KilledSale,
) {
    let KilledSale { runs, killed, log } = sale;
    for e in all_attempts(runs) {
        match &e.result {
            Ok(a) => assert_eq!(a.status, 200, "an answer before the kill: {a:?}"),
            Err(f) => assert!(
                e.finished >= *killed,
                "a request failed before the kill: {f:?}\nserver log tail: {:#?}",
                tail(log, 30)
            ),
        }
        assert!(e.elapsed() < HANG, "a request hung: {e:?}");
    }
}

/// No half-done claim: the invariant holds, every 200 has its row, and
/// every row its 200 or a request cut by the kill. The holders after the
/// kill (a row each), and the users answered 200 before it.
fn every_200_before_the_kill_has_its_claim_and_every_claim_a_reason(
    cluster: &OwnedCluster,
    runs: &[UserRun],
) -> (Vec<String>, HashSet<String>) {
    cluster.assert_invariant();
    let after_kill = cluster.holders("FLASH");
    let held: HashSet<&String> = after_kill.iter().collect();
    let ok: HashSet<String> = runs
        .iter()
        .filter(|r| r.got(200))
        .map(|r| r.user.clone())
        .collect();
    for user in &ok {
        assert!(
            held.contains(&user),
            "{user} got 200 before the kill but has no claim"
        );
    }
    for holder in &held {
        let run = runs.iter().find(|r| r.user == **holder);
        assert!(
            run.is_some_and(|r| r.got(200) || r.had_in_doubt_attempt()),
            "{holder} holds a unit without a 200 or a request cut by the kill: {run:?}"
        );
    }
    eprintln!(
        "after the kill: {} rows, {} 200s answered, {} claims cut by the kill committed anyway",
        after_kill.len(),
        ok.len(),
        after_kill.len() - ok.len()
    );
    (after_kill, ok)
}

/// A new server on the same database, and every user of the sale claiming
/// again on it: no 500, no hang, every user answered.
fn every_user_claims_again_on_a_new_server(
    cluster: &OwnedCluster,
    claims: Vec<(String, String)>,
) -> (ServerProcess, Vec<UserRun>) {
    let second = ServerProcess::spawn(&cluster.url(), &[]);
    let progress = Arc::new(Progress::default());
    let runs = Sale {
        addrs: vec![second.addr],
        claims,
        threads: 32,
        max_attempts: 1,
        retry_pause: Duration::ZERO,
        deadline: Instant::now() + Duration::from_secs(30),
    }
    .start(&progress)
    .join()
    .expect("the second sale");
    let log = second.log();
    let attempts: Vec<&Exchange> = all_attempts(&runs).collect();
    eprintln!(
        "the new server: {} requests {:?}",
        attempts.len(),
        tally(attempts.iter().copied())
    );
    assert_no_500_no_hang(&attempts, &log, "the new server");
    assert_eq!(
        runs.len(),
        KILLED_SALE_USERS,
        "not every user claimed within the limit"
    );
    (second, runs)
}

/// The new server gives the units left after the kill to users who held
/// none, 409 to every holder from before, and 400 to everyone else. The
/// users it granted a unit.
fn the_new_server_sold_exactly_the_rest_and_told_every_holder_409(
    runs: &[UserRun],
    after_kill: &[String],
) -> HashSet<String> {
    let held: HashSet<&String> = after_kill.iter().collect();
    let stock_left = KILLED_SALE_STOCK as usize - after_kill.len();
    let mut granted = HashSet::new();
    for run in runs {
        let a = run.last().answered().expect("checked above");
        match a.status {
            200 => {
                assert!(!held.contains(&run.user), "{} got a second unit", run.user);
                granted.insert(run.user.clone());
            }
            409 => {
                a.assert_error(409, "already_claimed");
                assert!(
                    held.contains(&run.user),
                    "{} got 409 without a claim",
                    run.user
                );
            }
            400 => a.assert_error(400, "out_of_stock"),
            _ => panic!("unexpected answer from the new server: {run:?}"),
        }
    }
    assert_eq!(
        granted.len(),
        stock_left,
        "the new server must sell exactly the rest"
    );
    assert_eq!(
        runs.iter()
            .filter(|r| r.final_status() == Some(409))
            .count(),
        held.len(),
        "every holder from before the kill gets 409"
    );
    assert_eq!(
        runs.iter()
            .filter(|r| r.final_status() == Some(400))
            .count(),
        KILLED_SALE_USERS - KILLED_SALE_STOCK as usize
    );
    granted
}

/// All claims at once, request i to server i mod n.
fn claim_at_once(addrs: &[SocketAddr], claims: &[(String, String)]) -> Vec<Exchange> {
    let addrs = addrs.to_vec();
    claims_at_once(claims, move |i, user, coupon| {
        client::claim(addrs[i % addrs.len()], user, coupon, HANG)
    })
}

#[test]
fn three_server_processes_on_one_database_share_the_flash_sale_and_double_dip_attacks_exactly() {
    let _turn = serial::turn!();
    let cluster = OwnedCluster::new();
    let servers: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::spawn(&cluster.url(), &[]))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let log = || -> Vec<String> { servers.iter().flat_map(|s| s.log()).collect() };

    for round in 0..3 {
        let flash = format!("FLASH_{round}");
        let dip = format!("DIP_{round}");
        client::create(addrs[round % 3], &flash, 5);
        client::create(addrs[(round + 1) % 3], &dip, 10);

        // Flash Sale Attack: 50 users, 5 units.
        let claims: Vec<_> = (0..50)
            .map(|i| (format!("user_{round}_{i}"), flash.clone()))
            .collect();
        let answers = claim_at_once(&addrs, &claims);
        let refs: Vec<&Exchange> = answers.iter().collect();
        assert_no_500_no_hang(&refs, &log(), &flash);
        eprintln!("{flash}: {:?}", tally(answers.iter()));
        assert_outcomes(&answers, &[(200, "", 5), (400, "out_of_stock", 45)], &flash);
        let winners: HashSet<String> = claims
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.status() == Some(200))
            .map(|((u, _), _)| u.clone())
            .collect();
        let holders: HashSet<String> = cluster.holders(&flash).into_iter().collect();
        assert_eq!(holders, winners, "{flash}: the claims table and the 200s");
        assert_eq!(
            cluster.count(&format!(
                "SELECT remaining_amount::bigint FROM coupons WHERE name = '{flash}'"
            )),
            0
        );

        // Double Dip Attack: one user, 10 requests at once.
        let claims: Vec<_> = (0..10)
            .map(|_| (format!("dipper_{round}"), dip.clone()))
            .collect();
        let answers = claim_at_once(&addrs, &claims);
        let refs: Vec<&Exchange> = answers.iter().collect();
        assert_no_500_no_hang(&refs, &log(), &dip);
        eprintln!("{dip}: {:?}", tally(answers.iter()));
        assert_outcomes(&answers, &[(200, "", 1), (409, "already_claimed", 9)], &dip);
        assert_eq!(cluster.holders(&dip), vec![format!("dipper_{round}")]);
        assert_eq!(
            cluster.count(&format!(
                "SELECT remaining_amount::bigint FROM coupons WHERE name = '{dip}'"
            )),
            9
        );
    }
    cluster.assert_invariant();
}
