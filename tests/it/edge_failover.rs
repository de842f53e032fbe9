//! Failover at the edge: the real HAProxy running deploy/haproxy.cfg in front
//! of three real replicas (deploy/run-local, the binary cargo built), with
//! claims flowing through it continuously while one replica leaves, by
//! SIGTERM (a drain: /healthz 503 first, HAProxy takes it out of rotation,
//! then it stops) or by SIGKILL (mid-sale, with requests in flight). Each
//! test on a fresh database. HAProxy must be installed (Debian/Ubuntu:
//! apt-get install haproxy).
//!
//! What a client sees is classified per claim: 200; 400 out_of_stock (only
//! on the small coupon, once sold out); a failure (502/503/504 from the
//! edge, or the connection failing or being cut: a transport failure); or a
//! wrong answer (anything else, including a claim with no answer within
//! the time limit), which fails the test whatever happened to the replicas.

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::client::{self, Exchange, Failure};
use crate::support::crowd::tally;
use crate::support::edge::{Edge, Replica};
use crate::support::serial::{self, Turn};
use crate::support::{self, TestDb};

/// Replicas behind the edge.
const REPLICAS: usize = 3;
/// WORKERS of each replica; run-local sets EDGE_SERVER_MAXCONN to it, so
/// HAProxy never has more than this many requests in flight on one replica.
const WORKERS: usize = 8;
/// Client threads, each with one claim in flight at a time: more than the
/// replicas take at once (REPLICAS * WORKERS), as in a flash sale, so that
/// some claims always wait in HAProxy's queue.
const CLIENTS: usize = 32;
/// Of those, the threads that claim the small coupon (the rest the big one).
const SMALL_CLIENTS: usize = 8;
/// Units of the big coupon: more than the whole test can claim.
const BIG_AMOUNT: i64 = 1_000_000;
/// Units of the small coupon: sells out during the sale.
const SMALL_AMOUNT: i64 = 300;
/// The drain the replicas run with (README: keep it at 3 s or more, since
/// HAProxy needs about 1.5 s to take a replica out of rotation).
const DRAIN_SECS: &str = "3";
/// One claim's time limit: HAProxy itself answers a request within its
/// `timeout queue` (5 s) or `timeout server` (30 s of a replica's silence);
/// a claim still unanswered after this is a hang, a wrong answer here.
const CLAIM_LIMIT: Duration = Duration::from_secs(20);
/// Bounds on every client thread, whatever the test does.
const MAX_CLAIMS_PER_CLIENT: usize = 50_000;
const MAX_SALE: Duration = Duration::from_secs(60);

/// The tests here each run three replicas and HAProxy and put real load on
/// them; on a 2-core machine they run one at a time, beside no other test,
/// so that liveness bounds measure the edge and not the neighbouring test.
fn one_at_a_time() -> Turn {
    serial::alone()
}

fn start_edge(db: &TestDb) -> Edge {
    let workers = WORKERS.to_string();
    Edge::start(
        &db.url,
        REPLICAS,
        &[
            ("SHUTDOWN_DRAIN_SECS", DRAIN_SECS),
            ("WORKERS", &workers),
            ("DB_POOL_SIZE", &workers),
        ],
    )
}

/// One claim sent through the edge and what became of it.
struct Sent {
    user: String,
    coupon: String,
    exchange: Exchange,
}

/// Client threads claiming continuously through the edge, each with users
/// of its own (never the same user twice), until told to stop.
struct Sale {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Sent>>>,
}

impl Sale {
    /// `plan`: the coupon each client thread claims.
    fn start(edge: &Edge, plan: Vec<String>) -> Sale {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let clients = plan
            .into_iter()
            .enumerate()
            .map(|(t, coupon)| {
                let stop = Arc::clone(&stop);
                let addr = edge.addr;
                thread::spawn(move || {
                    let mut sent = Vec::new();
                    for i in 0..MAX_CLAIMS_PER_CLIENT {
                        if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_SALE {
                            break;
                        }
                        let user = format!("{coupon}_c{t}_{i}");
                        let exchange = client::claim(addr, &user, &coupon, CLAIM_LIMIT);
                        sent.push(Sent {
                            user,
                            coupon: coupon.clone(),
                            exchange,
                        });
                    }
                    sent
                })
            })
            .collect();
        Sale { stop, clients }
    }

    fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.clients
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect()
    }
}

/// The client threads' plan: SMALL_CLIENTS on `small`, the rest on `big`.
fn plan(big: &str, small: &str) -> Vec<String> {
    (0..CLIENTS)
        .map(|t| if t < SMALL_CLIENTS { small } else { big }.to_owned())
        .collect()
}

/// What one claim's outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Claimed,
    OutOfStock,
    /// 502/503/504 from the edge, or a transport failure.
    Failed,
    /// Anything else.
    Wrong,
}

fn outcome(e: &Exchange) -> Outcome {
    match &e.result {
        Ok(a) if a.status == 200 => Outcome::Claimed,
        Ok(a) if a.status == 400 && a.code() == "out_of_stock" => Outcome::OutOfStock,
        Ok(a) if matches!(a.status, 502..=504) => Outcome::Failed,
        Ok(_) => Outcome::Wrong,
        Err(Failure::Connect { .. } | Failure::Send { .. } | Failure::Cut { .. }) => {
            Outcome::Failed
        }
        Err(Failure::TimedOut { .. }) => Outcome::Wrong,
    }
}

/// `show stat` on HAProxy's admin socket at `socket`: the backend's server
/// rows, each as field name -> value. Read in the typed format, one line
/// per field: in the CSV one a free-text field (the last check's
/// description) may hold commas and shift every field after it, the
/// server's address among them.
fn show_stat(socket: &Path) -> Vec<BTreeMap<String, String>> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Vec::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = String::new();
    // Every proxy (-1), its servers only (4), all of them (-1).
    if stream.write_all(b"show stat -1 4 -1 typed\n").is_err()
        || stream.read_to_string(&mut text).is_err()
    {
        return Vec::new();
    }
    // S.<proxy id>.<server id>.<position>.<name>.<process>:<tags>:<type>:<value>
    let mut rows: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let key: Vec<&str> = key.split('.').collect();
        let value = rest.splitn(3, ':').nth(2).unwrap_or("");
        if let [_, proxy, server, _, name, _] = key.as_slice() {
            rows.entry(((*proxy).to_owned(), (*server).to_owned()))
                .or_default()
                .insert((*name).to_owned(), value.to_owned());
        }
    }
    rows.into_values()
        .filter(|row| row.get("pxname").is_some_and(|p| p == "app"))
        .collect()
}

/// `replica`'s row in `show stat`, if HAProxy has a slot with its address.
fn stat_of(edge: &Edge, replica: &Replica) -> Option<BTreeMap<String, String>> {
    let wanted = replica.addr.to_string();
    show_stat(&edge.stats_socket)
        .into_iter()
        .find(|row| row.get("addr") == Some(&wanted))
}

/// One field of `replica`'s row, or "" (no slot, no such field).
fn field_of(edge: &Edge, replica: &Replica, field: &str) -> String {
    stat_of(edge, replica)
        .and_then(|row| row.get(field).cloned())
        .unwrap_or_default()
}

/// HAProxy's slots that have an address: name, address, status, in flight.
fn view(edge: &Edge) -> String {
    show_stat(&edge.stats_socket)
        .iter()
        .filter(|row| row.get("addr").is_some_and(|a| !a.is_empty()))
        .map(|row| {
            let f = |k: &str| row.get(k).map_or("", String::as_str);
            format!(
                "{} {} {} ({} in flight)",
                f("svname"),
                f("addr"),
                f("status"),
                f("scur")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Requests HAProxy has sent to `replica` in all (`show stat`'s stot).
fn sent_to(edge: &Edge, replica: &Replica) -> u64 {
    field_of(edge, replica, "stot").parse().unwrap_or(0)
}

/// HAProxy's view of some replicas, recorded on every change from a thread
/// of its own (every 50 ms, for at most MAX_SALE): the status, the last
/// health check's result, requests in flight. For the report, and for
/// explaining a failure.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl Watch {
    fn start(edge: &Edge, replicas: &[Replica], t0: Instant) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = edge.stats_socket.clone();
        let addrs: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut seen: BTreeMap<String, String> = BTreeMap::new();
                let mut timeline = Vec::new();
                while !stop.load(Ordering::SeqCst) && t0.elapsed() < MAX_SALE {
                    for row in show_stat(&socket) {
                        let addr = row.get("addr").cloned().unwrap_or_default();
                        if !addrs.contains(&addr) {
                            continue;
                        }
                        let field = |k: &str| row.get(k).map_or("", String::as_str);
                        let state = format!(
                            "{} {}: {} (last check: {} {} in {} ms)",
                            field("svname"),
                            addr,
                            field("status"),
                            field("check_status"),
                            field("check_code"),
                            field("check_duration"),
                        );
                        if seen.get(&addr) != Some(&state) {
                            timeline.push(format!(
                                "{:>8.3}s {state}, {} in flight",
                                t0.elapsed().as_secs_f64(),
                                field("scur")
                            ));
                            seen.insert(addr, state);
                        }
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                timeline
            })
        };
        Watch { stop, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the watch thread")
    }
}

/// Polls HAProxy until it shows `replica` DOWN, for at most `limit`; when
/// it first did.
fn wait_until_down(edge: &Edge, replica: &Replica, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if field_of(edge, replica, "status").starts_with("DOWN") {
            return Some(Instant::now());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Polls until `replica` no longer listens: its process gone (or a zombie)
/// and a connection to its address refused; for at most `limit`. (A zombie
/// alone is not enough: the main thread of a process is a zombie once it
/// has exited, while its other threads may still hold the descriptors, the
/// listening socket among them, for some milliseconds more; connections
/// made meanwhile wait in the backlog and are reset when it closes.)
fn wait_until_gone(replica: &Replica, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !replica.alive()
            && TcpStream::connect_timeout(&replica.addr, Duration::from_millis(200))
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
        {
            return Some(Instant::now());
        }
        thread::sleep(Duration::from_millis(1));
    }
    None
}

/// A replica given SIGTERM left as it should: HAProxy showed it DOWN
/// within 15 s, it stopped listening within 30 s, and run-local saw it exit
/// with code 0. `left` is what `wait_until_down`, `wait_until_gone` and
/// `exit_line` found.
fn assert_left_by_sigterm(
    edge: &Edge,
    replica: &Replica,
    left: (Option<Instant>, Option<Instant>, Option<String>),
    interesting: &[String],
) {
    let (down, gone, exit) = left;
    assert!(
        down.is_some(),
        "HAProxy did not show {replica:?} DOWN within 15 s of SIGTERM: {:?}",
        view(edge)
    );
    assert!(
        gone.is_some(),
        "{replica:?} still listens 30 s after SIGTERM"
    );
    let exit = exit.unwrap_or_default();
    assert!(
        exit.ends_with("exited with code 0; the others carry on"),
        "{exit:?}\n{}",
        interesting.join("\n")
    );
}

/// run-local's line about how `replica` ended, waiting up to `limit` for it
/// (it looks every 200 ms).
fn exit_line(edge: &Edge, replica: &Replica, limit: Duration) -> Option<String> {
    let wanted = format!("(pid {}, ", replica.pid);
    let find = || {
        edge.log()
            .into_iter()
            .find(|l| l.starts_with("[run-local] replica ") && l.contains(&wanted))
    };
    support::wait_for(limit, || find().is_some());
    find()
}

/// The edge's own lines worth reading after a failover: run-local's, server
/// state changes, and the first 30 requests answered with a 5xx or not at
/// all (HAProxy's httplog: `... app/app2 0/0/0/-1/12 502 ... SH-- ...`).
fn edge_lines_of_interest(edge: &Edge) -> Vec<String> {
    let mut requests = 0;
    let mut lines = Vec::new();
    for l in edge.log() {
        if l.starts_with("[run-local]")
            || (l.starts_with("[edge] Server ") && !l.contains("resolves again"))
        {
            lines.push(l);
        } else if l.starts_with("[edge]")
            && [" 502 ", " 503 ", " 504 ", " -1 "]
                .iter()
                .any(|s| l.contains(s))
        {
            requests += 1;
            if requests <= 30 {
                lines.push(l);
            }
        }
    }
    if requests > 30 {
        lines.push(format!("... and {} more such requests", requests - 30));
    }
    lines
}

/// The users holding `coupon` in the database.
fn holders(db: &TestDb, coupon: &str) -> HashSet<String> {
    db.client()
        .query(
            "SELECT user_id FROM claims WHERE coupon_name = $1",
            &[&coupon],
        )
        .expect("reading the claims")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn remaining(db: &TestDb, coupon: &str) -> i64 {
    db.count(&format!(
        "SELECT remaining_amount::bigint FROM coupons WHERE name = '{coupon}'"
    ))
}

/// Per coupon: the tally, and the checks that hold whatever happened to
/// the replicas: no wrong answer (nor out_of_stock while units are left
/// for every claim sent); every 200 in `claims`; every holder
/// either answered 200 or one of the failed claims (committed, unanswered);
/// amount = remaining_amount + count(claims). Returns how many failed
/// claims were committed.
fn check_coupon(db: &TestDb, edge: &Edge, coupon: &str, amount: i64, sent: &[Sent]) -> usize {
    let mine: Vec<&Sent> = sent.iter().filter(|s| s.coupon == coupon).collect();
    let counts = tally(mine.iter().map(|s| &s.exchange));
    eprintln!("{coupon}: {} claims: {counts:?}", mine.len());
    // With more units than claims sent, out_of_stock is never right.
    let enough = amount > mine.len() as i64;
    let wrong: Vec<(&str, &Exchange)> = mine
        .iter()
        .filter(|s| match outcome(&s.exchange) {
            Outcome::Wrong => true,
            Outcome::OutOfStock => enough,
            Outcome::Claimed | Outcome::Failed => false,
        })
        .map(|s| (s.user.as_str(), &s.exchange))
        .collect();
    assert!(
        wrong.is_empty(),
        "{coupon}: {} wrong answers, e.g. {:#?}\n{}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        edge_lines_of_interest(edge).join("\n")
    );
    let answered_200: HashSet<String> = mine
        .iter()
        .filter(|s| outcome(&s.exchange) == Outcome::Claimed)
        .map(|s| s.user.clone())
        .collect();
    let failed: HashSet<String> = mine
        .iter()
        .filter(|s| outcome(&s.exchange) == Outcome::Failed)
        .map(|s| s.user.clone())
        .collect();
    let holders = holders(db, coupon);
    let missing: Vec<&String> = answered_200.difference(&holders).collect();
    assert!(
        missing.is_empty(),
        "{coupon}: answered 200 and not in claims: {missing:?}"
    );
    let unexplained: Vec<&String> = holders
        .difference(&answered_200)
        .filter(|u| !failed.contains(*u))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{coupon}: in claims, and neither answered 200 nor a failed claim: {unexplained:?}"
    );
    let left = remaining(db, coupon);
    assert_eq!(
        amount,
        left + holders.len() as i64,
        "{coupon}: amount != remaining_amount + count(claims)"
    );
    holders.len() - answered_200.len()
}

/// The failures' latest end, after `from`.
fn last_failure_after(sent: &[Sent], from: Instant) -> Option<Duration> {
    sent.iter()
        .filter(|s| outcome(&s.exchange) == Outcome::Failed)
        .map(|s| s.exchange.finished.saturating_duration_since(from))
        .max()
}

/// Waits up to `limit` for every replica in `replicas` to be UP at the edge.
fn all_up(edge: &Edge, replicas: &[Replica], limit: Duration) -> bool {
    support::wait_for(limit, || {
        replicas.iter().all(|r| field_of(edge, r, "status") == "UP")
    })
}

/// A fresh database, the edge in front of three replicas, the two coupons,
/// every replica in rotation.
fn set_up() -> (TestDb, Edge) {
    let db = TestDb::new();
    let edge = start_edge(&db);
    client::create(edge.addr, "BIG", BIG_AMOUNT);
    client::create(edge.addr, "SMALL", SMALL_AMOUNT);
    assert!(
        all_up(&edge, &edge.replicas, Duration::from_secs(10)),
        "{:?}",
        view(&edge)
    );
    (db, edge)
}

fn failed(sent: &[Sent]) -> Vec<&Sent> {
    sent.iter()
        .filter(|s| outcome(&s.exchange) == Outcome::Failed)
        .collect()
}

/// Some of `sent`, for a message: user, status or failure, when it started
/// and how long it took, relative to `t0`.
fn describe(sent: &[&Sent], t0: Instant) -> String {
    sent.iter()
        .take(20)
        .map(|s| {
            let what = match &s.exchange.result {
                Ok(a) => format!("{} {}", a.status, a.code()),
                Err(f) => format!("{f:?}"),
            };
            format!(
                "  {}: {what}, sent at {:.3}s, took {:?}",
                s.user,
                s.exchange
                    .started
                    .saturating_duration_since(t0)
                    .as_secs_f64(),
                s.exchange.elapsed()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The small coupon's claims by outcome; checks that it sold out exactly:
/// its units went to users answered 200 and to `committed` failed claims,
/// every other claim on it is 400 out_of_stock or one of the failures.
fn check_sold_out(db: &TestDb, sent: &[Sent], committed: usize) {
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.coupon == "SMALL") {
        let key = match outcome(&s.exchange) {
            Outcome::Claimed => "200",
            Outcome::OutOfStock => "400 out_of_stock",
            Outcome::Failed => "failed",
            Outcome::Wrong => "wrong",
        };
        *by_outcome.entry(key).or_insert(0) += 1;
    }
    eprintln!("SMALL ({SMALL_AMOUNT} units): {by_outcome:?}");
    assert_eq!(remaining(db, "SMALL"), 0, "SMALL did not sell out");
    assert_eq!(
        by_outcome.get("200").copied().unwrap_or(0) + committed,
        SMALL_AMOUNT as usize,
        "{by_outcome:?}"
    );
    assert!(
        by_outcome.get("400 out_of_stock").copied().unwrap_or(0) > 0,
        "no claim found SMALL sold out: {by_outcome:?}"
    );
}

#[test]
fn a_replica_leaving_by_sigterm_mid_sale_costs_no_failed_request_and_exits_zero() {
    let _turn = one_at_a_time();
    let (db, edge) = set_up();

    let t0 = Instant::now();
    let watch = Watch::start(&edge, &edge.replicas, t0);
    let sale = Sale::start(&edge, plan("BIG", "SMALL"));
    thread::sleep(Duration::from_millis(1500));

    let leaving = edge.replicas[1];
    let before = stat_of(&edge, &leaving).unwrap_or_default();
    let sent_before = sent_to(&edge, &leaving);
    let signalled = Instant::now();
    leaving.signal(libc::SIGTERM);
    let down = wait_until_down(&edge, &leaving, Duration::from_secs(15));
    let sent_until_down = sent_to(&edge, &leaving);
    let gone = wait_until_gone(&leaving, Duration::from_secs(30));
    let exit = exit_line(&edge, &leaving, Duration::from_secs(5));
    // The sale goes on with two replicas for a while.
    thread::sleep(Duration::from_millis(1500));
    let sent = sale.finish();
    let took = t0.elapsed();
    let timeline = watch.finish();

    eprintln!(
        "HAProxy's view from the start of the sale:\n{}",
        timeline.join("\n")
    );
    eprintln!(
        "SIGTERM to {leaving:?} at {:.3}s; just before, HAProxy showed it {} with {} requests \
         in flight and {sent_before} sent in all",
        (signalled - t0).as_secs_f64(),
        before.get("status").map_or("", String::as_str),
        before.get("scur").map_or("", String::as_str)
    );
    eprintln!(
        "signal -> DOWN at the edge: {:?}; requests the edge sent it between the signal and \
         DOWN (all answered, by the draining replica): {}; signal -> no longer listening: {:?} \
         (DOWN first: {}); {exit:?}",
        down.map(|d| d - signalled),
        sent_until_down - sent_before,
        gone.map(|d| d - signalled),
        matches!((down, gone), (Some(d), Some(g)) if d < g),
    );
    eprintln!("{} claims in {took:?}", sent.len());
    let interesting = edge_lines_of_interest(&edge);
    eprintln!("the edge's lines of interest:\n{}", interesting.join("\n"));

    assert!(sent_before > 0, "the leaving replica got no claims before");
    assert!(
        sent_until_down > sent_before,
        "the edge sent the draining replica nothing between the signal and DOWN"
    );
    assert_left_by_sigterm(&edge, &leaving, (down, gone, exit), &interesting);
    assert!(
        field_of(&edge, &leaving, "status").starts_with("DOWN"),
        "{:?}",
        view(&edge)
    );

    // Every 200 in claims, every holder answered 200, the invariant.
    let committed_big = check_coupon(&db, &edge, "BIG", BIG_AMOUNT, &sent);
    let committed_small = check_coupon(&db, &edge, "SMALL", SMALL_AMOUNT, &sent);
    // BIG: every claim got a unit. SMALL: exactly its units, then
    // out_of_stock for everyone else.
    let big = sent.iter().filter(|s| s.coupon == "BIG").count();
    assert_eq!(holders(&db, "BIG").len(), big);
    check_sold_out(&db, &sent, committed_small);
    db.assert_invariant();

    // Zero failed requests.
    let failed = failed(&sent);
    assert!(
        failed.is_empty(),
        "{} claims failed while a replica left by SIGTERM: {:?} ({} of them committed)\n{}\n{}",
        failed.len(),
        tally(failed.iter().map(|s| &s.exchange)),
        committed_big + committed_small,
        describe(&failed, t0),
        interesting.join("\n")
    );
}

#[test]
fn a_replica_sigkilled_mid_sale_costs_at_most_its_requests_in_flight_and_the_edge_routes_around_it()
{
    let _turn = one_at_a_time();
    let (db, edge) = set_up();
    let failover = kill_one_replica_then_stop_another_by_sigterm_mid_sale(&edge);
    failover.report();
    let interesting = edge_lines_of_interest(&edge);
    eprintln!("the edge's lines of interest:\n{}", interesting.join("\n"));

    the_killed_replica_and_the_one_given_sigterm_left_the_edge(&edge, &failover, &interesting);

    // Whatever failed: no wrong answer, every 200 in claims, every holder
    // answered 200 or a failed claim, the invariant; SMALL sold out exactly.
    let sent = &failover.sent;
    let committed_big = check_coupon(&db, &edge, "BIG", BIG_AMOUNT, sent);
    let committed_small = check_coupon(&db, &edge, "SMALL", SMALL_AMOUNT, sent);
    eprintln!(
        "failed claims committed anyway (in claims, never answered 200): {} of {} (BIG \
         {committed_big}, SMALL {committed_small})",
        committed_big + committed_small,
        failed(sent).len()
    );
    check_sold_out(&db, sent, committed_small);
    db.assert_invariant();

    only_claims_in_flight_on_the_killed_replica_as_it_died_failed(&failover, &interesting);
}

/// A sale through the edge during which one replica is killed (SIGKILL)
/// and, once the edge has taken it out, another leaves by SIGTERM: every
/// claim sent, what HAProxy showed, and when each thing happened.
struct Failover {
    t0: Instant,
    sent: Vec<Sent>,
    took: Duration,
    timeline: Vec<String>,
    killed: Replica,
    /// HAProxy's row for the killed replica just before the kill.
    before: BTreeMap<String, String>,
    killed_at: Instant,
    /// When it no longer listened, when HAProxy showed it DOWN, and
    /// run-local's line about its end.
    gone: Option<Instant>,
    down: Option<Instant>,
    killed_exit: Option<String>,
    /// `gone`, or the end of the sale if it never stopped listening.
    gone_at: Instant,
    leaving: Replica,
    /// Requests HAProxy had sent the leaving replica at the signal, and
    /// when it showed it DOWN.
    sent_before: u64,
    sent_until_down: u64,
    signalled: Instant,
    leaving_down: Option<Instant>,
    leaving_gone: Option<Instant>,
    leaving_exit: Option<String>,
}

fn kill_one_replica_then_stop_another_by_sigterm_mid_sale(edge: &Edge) -> Failover {
    let t0 = Instant::now();
    let watch = Watch::start(edge, &edge.replicas, t0);
    let sale = Sale::start(edge, plan("BIG", "SMALL"));
    thread::sleep(Duration::from_millis(1500));

    let killed = edge.replicas[0];
    let before = stat_of(edge, &killed).unwrap_or_default();
    let killed_at = Instant::now();
    killed.signal(libc::SIGKILL);
    let gone = wait_until_gone(&killed, Duration::from_secs(10));
    let down = wait_until_down(edge, &killed, Duration::from_secs(15));
    let killed_exit = exit_line(edge, &killed, Duration::from_secs(5));
    // Two replicas for a while, then the second leaves by SIGTERM.
    thread::sleep(Duration::from_millis(2000));
    let leaving = edge.replicas[2];
    let sent_before = sent_to(edge, &leaving);
    let signalled = Instant::now();
    leaving.signal(libc::SIGTERM);
    let leaving_down = wait_until_down(edge, &leaving, Duration::from_secs(15));
    let sent_until_down = sent_to(edge, &leaving);
    let leaving_gone = wait_until_gone(&leaving, Duration::from_secs(30));
    let leaving_exit = exit_line(edge, &leaving, Duration::from_secs(5));
    // One replica left: the sale goes on a little longer.
    thread::sleep(Duration::from_millis(1000));
    let sent = sale.finish();
    let took = t0.elapsed();
    let timeline = watch.finish();
    Failover {
        gone_at: gone.unwrap_or_else(Instant::now),
        t0,
        sent,
        took,
        timeline,
        killed,
        before,
        killed_at,
        gone,
        down,
        killed_exit,
        leaving,
        sent_before,
        sent_until_down,
        signalled,
        leaving_down,
        leaving_gone,
        leaving_exit,
    }
}

impl Failover {
    /// The claims in flight at some moment from the kill until the killed
    /// replica no longer listened.
    fn in_flight_while_dying(&self) -> usize {
        self.sent
            .iter()
            .filter(|s| s.exchange.started < self.gone_at && s.exchange.finished >= self.killed_at)
            .count()
    }

    /// The failed claims sent before the killed replica no longer
    /// listened, and those sent after.
    fn failed_early_and_late(&self) -> (Vec<&Sent>, Vec<&Sent>) {
        failed(&self.sent)
            .into_iter()
            .partition(|s| s.exchange.started < self.gone_at)
    }

    fn report(&self) {
        let Failover {
            t0,
            sent,
            took,
            timeline,
            killed,
            before,
            killed_at,
            gone,
            down,
            killed_exit,
            leaving,
            sent_before,
            sent_until_down,
            signalled,
            leaving_down,
            leaving_gone,
            leaving_exit,
            ..
        } = self;
        let failed = failed(sent);
        let (early, late) = self.failed_early_and_late();
        let in_flight_while_dying = self.in_flight_while_dying();
        eprintln!(
            "HAProxy's view from the start of the sale:\n{}",
            timeline.join("\n")
        );
        eprintln!(
            "SIGKILL to {killed:?} at {:.3}s; just before, HAProxy showed it {} with {} requests in \
             flight (at most {WORKERS}, its maxconn)",
            (*killed_at - *t0).as_secs_f64(),
            before.get("status").map_or("", String::as_str),
            before.get("scur").map_or("", String::as_str)
        );
        eprintln!(
            "kill -> no longer listening: {:?}; kill -> DOWN at the edge: {:?}; {killed_exit:?}",
            gone.map(|d| d - *killed_at),
            down.map(|d| d - *killed_at),
        );
        eprintln!(
            "failed claims: {} {:?}: {} sent before it stopped listening, {} after; claims in \
             flight from the kill until it stopped listening (the bound): {in_flight_while_dying}; \
             the last failure ended {:?} after the kill",
            failed.len(),
            tally(failed.iter().map(|s| &s.exchange)),
            early.len(),
            late.len(),
            last_failure_after(sent, *killed_at)
        );
        eprintln!(
            "SIGTERM to {leaving:?} at {:.3}s; signal -> DOWN: {:?}; requests the edge sent it \
             between the signal and DOWN: {}; signal -> no longer listening: {:?}; {leaving_exit:?}",
            (*signalled - *t0).as_secs_f64(),
            leaving_down.map(|d| d - *signalled),
            sent_until_down - sent_before,
            leaving_gone.map(|d| d - *signalled),
        );
        eprintln!("{} claims in {took:?}", sent.len());
    }
}

fn the_killed_replica_and_the_one_given_sigterm_left_the_edge(
    edge: &Edge,
    failover: &Failover,
    interesting: &[String],
) {
    let Failover {
        killed,
        gone,
        down,
        killed_exit,
        leaving,
        leaving_down,
        leaving_gone,
        leaving_exit,
        ..
    } = failover;
    assert!(gone.is_some(), "the killed replica still listens 10 s on");
    assert!(
        down.is_some(),
        "HAProxy did not show the killed replica DOWN within 15 s: {:?}",
        view(edge)
    );
    let killed_exit = killed_exit.clone().unwrap_or_default();
    assert!(
        killed_exit.ends_with("was killed by signal 9; the others carry on"),
        "{killed_exit:?}"
    );
    assert_left_by_sigterm(
        edge,
        leaving,
        (*leaving_down, *leaving_gone, leaving_exit.clone()),
        interesting,
    );
    for gone in [killed, leaving] {
        assert!(
            field_of(edge, gone, "status").starts_with("DOWN"),
            "{:?}",
            view(edge)
        );
    }
}

/// The failures: only what was on the killed replica when it died.
///
/// The bound on failures. A claim can be lost with the killed replica
/// only if HAProxy handed it to it, over a connection the replica's
/// listening socket took (into its backlog, if the process was already
/// dying); once that socket is closed (`gone`), a connection is
/// refused, which HAProxy retries elsewhere (redispatch) without sending
/// the request. So every failure was sent before the replica was gone,
/// and ended after the kill: the claims in flight at some moment from
/// the kill until it was gone. Each client has one claim in flight at a
/// time, so that is CLIENTS plus the claims sent during those few
/// milliseconds of dying. (HAProxy's maxconn, WORKERS, is printed but is
/// no bound: the first 502s free slots that HAProxy fills again while
/// the dying process's listening socket still completes handshakes; 10
/// such 502s were seen with a maxconn of 8.)
fn only_claims_in_flight_on_the_killed_replica_as_it_died_failed(
    failover: &Failover,
    interesting: &[String],
) {
    let Failover {
        t0,
        sent,
        killed_at,
        signalled,
        ..
    } = failover;
    let failed = failed(sent);
    let (_, late) = failover.failed_early_and_late();
    let in_flight_while_dying = failover.in_flight_while_dying();
    let before_kill: Vec<&Sent> = failed
        .iter()
        .copied()
        .filter(|s| s.exchange.finished < *killed_at)
        .collect();
    assert!(
        before_kill.is_empty(),
        "claims failed before the kill:\n{}",
        describe(&before_kill, *t0)
    );
    let during_sigterm: Vec<&Sent> = failed
        .iter()
        .copied()
        .filter(|s| s.exchange.finished >= *signalled)
        .collect();
    assert!(
        during_sigterm.is_empty(),
        "claims failed while the second replica left by SIGTERM:\n{}\n{}",
        describe(&during_sigterm, *t0),
        interesting.join("\n")
    );
    assert!(
        late.is_empty(),
        "{} claims sent after the killed replica had stopped listening failed, though \
         HAProxy could have sent each to another replica:\n{}\n{}",
        late.len(),
        describe(&late, *t0),
        interesting.join("\n")
    );
    assert!(
        failed.len() <= in_flight_while_dying,
        "{} failed claims, more than the {in_flight_while_dying} in flight while the killed \
         replica was dying",
        failed.len()
    );
    // A few check intervals after the kill nothing fails any more, the
    // SIGTERM included (implied by the above; the requirement as stated).
    let settled = *killed_at + Duration::from_secs(3);
    let after: Vec<&Sent> = failed
        .iter()
        .copied()
        .filter(|s| s.exchange.started >= settled)
        .collect();
    assert!(
        after.is_empty(),
        "failures more than 3 s after the kill:\n{}",
        describe(&after, *t0)
    );
}
