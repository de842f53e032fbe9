//! Giving a claimed unit back: `DELETE /api/coupons/{name}/claims/{user_id}`,
//! and what every server remembers about sold-out coupons staying true when
//! stock rises again, through a release or through anyone's SQL.
//!
//! The freshness contract: after a release's 200 the releasing server serves
//! the unit at once, and every other server within 1 s. The polls below give
//! it a few seconds (a liveness bound) and print what they saw; run with
//! `--nocapture` to read the times.
//!
//! Every server is the real binary as a child process (or in-process for the
//! bad-input cases), on 127.0.0.1, against a database of its own.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support;
use crate::support::client::{self, Exchange};
use crate::support::crowd::all_at_once;
use crate::support::http::{metric, request_with, scrape};
use crate::support::process::ServerProcess;
use crate::support::serial;
use crate::support::{TestApp, TestDb, wait_for};

/// What the client gives any one request before calling it a hang.
const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "t";
/// The liveness bound of every freshness poll (the contract is 1 s).
const FRESH_BOUND: Duration = Duration::from_secs(3);

fn servers(db: &TestDb, count: usize) -> Vec<ServerProcess> {
    (0..count)
        .map(|_| ServerProcess::spawn(&db.url, &[("ADMIN_TOKEN", TOKEN)]))
        .collect()
}

/// (status, error code) of an exchange; status 0 when no answer came.
fn outcome(e: &Exchange) -> (u16, String) {
    match e.answered() {
        Some(a) => (a.status, a.code().to_owned()),
        None => (0, format!("{:?}", e.result)),
    }
}

fn claim(server: &ServerProcess, user: &str, coupon: &str) -> (u16, String) {
    outcome(&client::claim(server.addr, user, coupon, LIMIT))
}

fn release(server: &ServerProcess, coupon: &str, user: &str) -> Exchange {
    client::release(server.addr, coupon, user, Some(TOKEN), LIMIT)
}

fn metrics(server: &ServerProcess) -> String {
    scrape(&server.base)
}

/// Claim transactions the server has run (its batches).
fn batches(server: &ServerProcess) -> f64 {
    metric(&metrics(server), "flash_coupons_claim_batch_size_count")
}

fn sold_out_in_memory(server: &ServerProcess) -> f64 {
    metric(
        &metrics(server),
        "flash_coupons_sold_out_coupons{holders=\"memory\"}",
    )
}

fn listener_connected(server: &ServerProcess) -> bool {
    metric(
        &metrics(server),
        "flash_coupons_freshness_listener_connected",
    ) == 1.0
}

/// A claim, and whether it was answered without a transaction (from the
/// sold-out memory): the server's batch count did not move.
fn claim_seen(server: &ServerProcess, user: &str, coupon: &str) -> ((u16, String), bool) {
    let before = batches(server);
    let answer = claim(server, user, coupon);
    (answer, batches(server) == before)
}

/// Claims on `coupon` through `server` by users who hold nothing, until the
/// server answers them from memory (it has learned the coupon is sold out).
fn until_answered_from_memory(server: &ServerProcess, coupon: &str, prefix: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || listener_connected(server)),
        "the freshness listener never connected"
    );
    for i in 0..50 {
        let (answer, from_memory) = claim_seen(server, &format!("{prefix}-{i}"), coupon);
        assert_eq!(answer, (400, "out_of_stock".to_owned()));
        if from_memory {
            return;
        }
    }
    panic!("{coupon} was never answered from memory");
}

/// Polls `attempt` until it gives `want`, within FRESH_BOUND; how long it
/// took since `since`, and the stale answers seen before.
fn poll_until(
    since: Instant,
    what: &str,
    want: (u16, &str),
    mut attempt: impl FnMut() -> (u16, String),
) -> (Duration, Vec<(u16, String)>) {
    let mut stale = Vec::new();
    let done = wait_for(FRESH_BOUND, || {
        let got = attempt();
        if (got.0, got.1.as_str()) == want {
            true
        } else {
            stale.push(got);
            false
        }
    });
    let took = since.elapsed();
    assert!(
        done,
        "{what}: not {want:?} within {FRESH_BOUND:?}; answers: {stale:?}"
    );
    eprintln!(
        "{what}: {want:?} after {took:.1?} ({} stale answers before)",
        stale.len()
    );
    (took, stale)
}

fn holders(db: &TestDb, coupon: &str) -> Vec<String> {
    db.client()
        .query(
            "SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id",
            &[&coupon],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn remaining(db: &TestDb, coupon: &str) -> i32 {
    db.client()
        .query_one(
            "SELECT remaining_amount FROM coupons WHERE name = $1",
            &[&coupon],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_released_unit_is_served_by_every_replica() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let servers = servers(&db, 2);
    let (a, b) = (&servers[0], &servers[1]);
    client::create_with_token(a.addr, TOKEN, "SEQ", 3);
    for user in ["u1", "u2", "u3"] {
        assert_eq!(claim(a, user, "SEQ").0, 200);
    }
    // B learns that SEQ is sold out, and answers from memory.
    until_answered_from_memory(b, "SEQ", "probe-b");
    assert_eq!(sold_out_in_memory(b), 1.0);
    let (answer, from_memory) = claim_seen(b, "u2", "SEQ");
    assert_eq!((answer.0, from_memory), (409, true), "{answer:?}");

    // Two units back, through A.
    let mut released_at = Instant::now();
    for (user, left) in [("u2", 1), ("u1", 2)] {
        let released = release(a, "SEQ", user);
        assert_eq!(released.status(), Some(200), "{released:?}");
        assert_eq!(
            released.answered().unwrap().body,
            json!({ "coupon_name": "SEQ", "user_id": user, "remaining_amount": left })
        );
        released_at = Instant::now();
    }

    // B reads the new state at once, ...
    let got = client::get(b.addr, "/api/coupons/SEQ", LIMIT);
    let body = &got.answered().expect("GET answered").body;
    assert_eq!(body["remaining_amount"], 2, "{body}");
    assert_eq!(body["claimed_by"], json!(["u3"]), "{body}");
    // ... and serves the released user (no stale 409), then a new user (no
    // stale 400).
    let (user_took, _) = poll_until(
        released_at,
        "replica B, released user u2 claims again",
        (200, ""),
        || claim(b, "u2", "SEQ"),
    );
    let (new_took, _) = poll_until(
        released_at,
        "replica B, new user n1 claims",
        (200, ""),
        || claim(b, "n1", "SEQ"),
    );
    eprintln!("freshness on the other replica: {user_took:.1?} and {new_took:.1?}");
    // Sold out again, and answered as such from memory once learned.
    assert_eq!(claim(b, "n2", "SEQ"), (400, "out_of_stock".to_owned()));
    assert_eq!(claim(b, "u1", "SEQ"), (400, "out_of_stock".to_owned()));
    assert_eq!(claim(b, "u2", "SEQ"), (409, "already_claimed".to_owned()));
    until_answered_from_memory(b, "SEQ", "probe-b2");

    // The releasing server serves the unit at once: A knows SEQ is sold out,
    // releases n1, and the very next claim there gets it.
    until_answered_from_memory(a, "SEQ", "probe-a");
    let released = release(a, "SEQ", "n1");
    assert_eq!(released.status(), Some(200), "{released:?}");
    let (answer, from_memory) = claim_seen(a, "u1", "SEQ");
    assert_eq!(answer.0, 200, "the releasing server at once: {answer:?}");
    assert!(!from_memory);

    assert_eq!(holders(&db, "SEQ"), ["u3", "u2", "u1"]);
    assert_eq!(remaining(&db, "SEQ"), 0);
    db.assert_invariant();
    let history: Vec<(String, bool)> = db
        .client()
        .query(
            "SELECT user_id, claimed_at <= released_at FROM claim_releases \
             WHERE coupon_name = 'SEQ' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        history,
        [
            ("u2".to_owned(), true),
            ("u1".to_owned(), true),
            ("n1".to_owned(), true)
        ]
    );
}

/// One request of the race below.
#[derive(Clone)]
enum Job {
    Release(&'static str, String),
    Claim(&'static str, String),
}

#[test]
fn releases_racing_a_flash_sale_on_two_replicas_stay_exact() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let servers = Arc::new(servers(&db, 2));
    client::create_with_token(servers[0].addr, TOKEN, "RACE", RACE_AMOUNT as i64);
    for i in 0..RACE_AMOUNT {
        assert_eq!(claim(&servers[i % 2], &format!("h{i}"), "RACE").0, 200);
    }
    until_answered_from_memory(&servers[0], "RACE", "probe-a");
    until_answered_from_memory(&servers[1], "RACE", "probe-b");

    let results = race_releases_new_claims_and_reclaims(&servers);
    let granted = every_job_got_an_answer_it_may_get(&results);
    db.assert_invariant();
    let left = remaining(&db, "RACE") as usize;
    assert!(left <= RACE_AMOUNT);
    // Each released unit is either claimed again by exactly one 200 or
    // still free.
    assert_eq!(
        granted.len() + left,
        RACE_RELEASED,
        "granted {granted:?}, left {left}"
    );
    // Who holds the coupon: the holders never released, and exactly those
    // answered 200; a released holder holds nothing unless it claimed again.
    let expected: HashSet<String> = (RACE_RELEASED..RACE_AMOUNT)
        .map(|i| format!("h{i}"))
        .chain(granted.iter().cloned())
        .collect();
    let held: HashSet<String> = holders(&db, "RACE").into_iter().collect();
    assert_eq!(held, expected);
    // Every release answered 200 is in the history, once.
    let recorded: Vec<String> = db
        .client()
        .query(
            "SELECT user_id FROM claim_releases WHERE coupon_name = 'RACE' ORDER BY user_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut released: Vec<String> = (0..RACE_RELEASED).map(|i| format!("h{i}")).collect();
    released.sort();
    assert_eq!(recorded, released);

    what_is_left_is_handed_out_exactly_by_both_servers(&servers, &db, left);
    db.assert_invariant();
}

/// The race: 40 units held, 20 of their holders give them back while 100
/// new users claim and 10 of the releasing holders claim again, from 16
/// threads.
const RACE_AMOUNT: usize = 40;
const RACE_RELEASED: usize = 20;
const RACE_NEW_USERS: usize = 100;
const RACE_RECLAIMERS: usize = 10;
const RACE_THREADS: usize = 16;

/// The race's releases and claims, all at once over both servers; each
/// with its answer.
fn race_releases_new_claims_and_reclaims(
    servers: &Arc<Vec<ServerProcess>>,
) -> Vec<(Job, (u16, String))> {
    let mut jobs: Vec<(usize, Job)> = Vec::new();
    for i in 0..RACE_RELEASED {
        jobs.push((i % 2, Job::Release("release", format!("h{i}"))));
    }
    for i in 0..RACE_NEW_USERS {
        jobs.push((i % 2, Job::Claim("new", format!("n{i}"))));
    }
    for i in 0..RACE_RECLAIMERS {
        jobs.push(((i + 1) % 2, Job::Claim("again", format!("h{i}"))));
    }
    fastrand::seed(7);
    fastrand::shuffle(&mut jobs);
    all_at_once((0..RACE_THREADS).map(|t| {
        let mine: Vec<(usize, Job)> = jobs.iter().skip(t).step_by(RACE_THREADS).cloned().collect();
        let servers = Arc::clone(servers);
        move || {
            mine.into_iter()
                .map(|(server, job)| {
                    let server = &servers[server];
                    let answer = match &job {
                        Job::Release(_, user) => outcome(&release(server, "RACE", user)),
                        Job::Claim(_, user) => claim(server, user, "RACE"),
                    };
                    (job, answer)
                })
                .collect::<Vec<_>>()
        }
    }))
    .into_iter()
    .flatten()
    .collect()
}

/// Every release 200, every new user 200 or 400, every holder claiming
/// again 200, 400 or 409; no user granted twice. The users granted a unit.
fn every_job_got_an_answer_it_may_get(results: &[(Job, (u16, String))]) -> HashSet<String> {
    let mut tally: BTreeMap<(&str, u16, String), usize> = BTreeMap::new();
    let mut granted: HashSet<String> = HashSet::new();
    for (job, answer) in results {
        let (kind, user) = match job {
            Job::Release(kind, user) | Job::Claim(kind, user) => (*kind, user),
        };
        *tally.entry((kind, answer.0, answer.1.clone())).or_default() += 1;
        if matches!(job, Job::Claim(..)) && answer.0 == 200 {
            assert!(granted.insert(user.clone()), "{user} granted twice");
        }
    }
    eprintln!("race answers: {tally:?}");
    let count = |kind: &str, status: u16| -> usize {
        tally
            .iter()
            .filter(|((k, s, _), _)| *k == kind && *s == status)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(count("release", 200), RACE_RELEASED, "{tally:?}");
    assert_eq!(
        count("new", 200) + count("new", 400),
        RACE_NEW_USERS,
        "{tally:?}"
    );
    assert_eq!(
        count("again", 200) + count("again", 400) + count("again", 409),
        RACE_RECLAIMERS,
        "{tally:?}"
    );
    granted
}

/// What is left is handed out, exactly, by both servers.
fn what_is_left_is_handed_out_exactly_by_both_servers(
    servers: &[ServerProcess],
    db: &TestDb,
    left: usize,
) {
    let mut drained = 0;
    let mut i = 0;
    while remaining(db, "RACE") > 0 {
        assert!(i < 200, "the last {left} units were never handed out");
        if claim(&servers[i % 2], &format!("d{i}"), "RACE").0 == 200 {
            drained += 1;
        }
        i += 1;
    }
    assert_eq!(drained, left);
    for server in servers.iter() {
        assert_eq!(
            claim(server, "late", "RACE"),
            (400, "out_of_stock".to_owned())
        );
    }
}

#[test]
fn stock_changed_behind_the_service_is_served_by_every_replica() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let servers = servers(&db, 2);
    let (a, b) = (&servers[0], &servers[1]);
    client::create_with_token(a.addr, TOKEN, "OOB", 2);
    assert_eq!(claim(a, "u1", "OOB").0, 200);
    assert_eq!(claim(b, "u2", "OOB").0, 200);
    until_answered_from_memory(a, "OOB", "probe-a");
    until_answered_from_memory(b, "OOB", "probe-b");

    // An operator's restock.
    db.client()
        .batch_execute("UPDATE coupons SET amount = 4, remaining_amount = 2 WHERE name = 'OOB'")
        .unwrap();
    let restocked = Instant::now();
    poll_until(restocked, "restock, replica A, new user", (200, ""), || {
        claim(a, "r1", "OOB")
    });
    poll_until(restocked, "restock, replica B, new user", (200, ""), || {
        claim(b, "r2", "OOB")
    });
    db.assert_invariant();
    until_answered_from_memory(a, "OOB", "probe-a2");
    until_answered_from_memory(b, "OOB", "probe-b2");

    // A harness (or a restore) empties the tables and makes the coupon anew.
    db.client()
        .batch_execute(
            "TRUNCATE claims, coupons; \
             INSERT INTO coupons (name, amount, remaining_amount) VALUES ('OOB', 5, 5)",
        )
        .unwrap();
    let recreated = Instant::now();
    poll_until(
        recreated,
        "re-created, replica A, former holder u1",
        (200, ""),
        || claim(a, "u1", "OOB"),
    );
    poll_until(
        recreated,
        "re-created, replica B, new user",
        (200, ""),
        || claim(b, "fresh", "OOB"),
    );
    poll_until(
        recreated,
        "re-created, replica B, former holder u2",
        (200, ""),
        || claim(b, "u2", "OOB"),
    );
    let got = client::get(a.addr, "/api/coupons/OOB", LIMIT);
    let body = &got.answered().expect("GET answered").body;
    assert_eq!(body["remaining_amount"], 2, "{body}");
    assert_eq!(body["claimed_by"], json!(["u1", "fresh", "u2"]), "{body}");
    db.assert_invariant();
}

#[test]
fn a_release_racing_the_same_users_claim_leaves_one_truth() {
    let _turn = serial::turn!();
    const ROUNDS: usize = 40;
    let db = TestDb::new();
    let servers = Arc::new(servers(&db, 2));
    client::create_with_token(servers[0].addr, TOKEN, "DUEL", 1);
    assert_eq!(claim(&servers[0], "me", "DUEL").0, 200);
    let mut claim_won = 0;
    for round in 0..ROUNDS {
        // Over two servers, and every third round on one (the release and
        // the claim batch then meet in one process, too).
        let (release_on, claim_on) = match round % 3 {
            0 => (0, 0),
            1 => (0, 1),
            _ => (1, 0),
        };
        // The release and the claim, at once.
        let [released, claimed]: [(u16, String); 2] = all_at_once([true, false].map(|releasing| {
            let servers = Arc::clone(&servers);
            move || {
                if releasing {
                    outcome(&release(&servers[release_on], "DUEL", "me"))
                } else {
                    claim(&servers[claim_on], "me", "DUEL")
                }
            }
        }))
        .try_into()
        .expect("two answers");
        // "me" held the unit when the round began.
        assert_eq!(released.0, 200, "round {round}: {released:?}");
        assert!(
            claimed.0 == 200 || claimed == (409, "already_claimed".to_owned()),
            "round {round}: {claimed:?}"
        );
        // The claim won only if it came after the release; then it holds.
        let holds = holders(&db, "DUEL") == ["me"];
        assert_eq!(holds, claimed.0 == 200, "round {round}: {claimed:?}");
        db.assert_invariant();
        if claimed.0 == 200 {
            claim_won += 1;
        } else {
            // Back to holding, through the server that released: at once.
            let again = claim(&servers[release_on], "me", "DUEL");
            assert_eq!(again.0, 200, "round {round}: the releasing server, at once");
        }
    }
    eprintln!("the claim came after the release in {claim_won} of {ROUNDS} rounds");
    assert_eq!(
        db.count("SELECT count(*) FROM claim_releases WHERE coupon_name = 'DUEL'"),
        ROUNDS as i64
    );
    assert_eq!(holders(&db, "DUEL"), ["me"]);
}

/// Coupons (name, amount, remaining), claims (coupon, user) and the number
/// of releases recorded.
type Tables = (Vec<(String, i32, i32)>, Vec<(String, String)>, i64);

/// The coupons, claims and release history, to see that nothing changed.
fn tables(db: &TestDb) -> Tables {
    let mut client = db.client();
    let coupons = client
        .query(
            "SELECT name, amount, remaining_amount FROM coupons ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let claims = client
        .query("SELECT coupon_name, user_id FROM claims ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let history = client
        .query_one("SELECT count(*) FROM claim_releases", &[])
        .unwrap()
        .get(0);
    (coupons, claims, history)
}

#[test]
fn bad_releases_get_their_documented_answer_and_change_nothing() {
    let _turn = serial::turn!();
    let app = TestApp::spawn_with(|c| c.admin_token = Some(TOKEN.into()));
    let auth = [("Authorization", "Bearer t")];
    let created = request_with(
        "POST",
        &app.url("/api/coupons"),
        Some(("application/json", r#"{"name":"BAD","amount":2}"#)),
        &auth,
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(app.claim("holder", "BAD").status, 200);
    let before = tables(&app.db);
    each_bad_release_gets_its_documented_answer(&app);
    assert_eq!(
        tables(&app.db),
        before,
        "a refused release changed something"
    );
    without_an_admin_token_nobody_may_release_whatever_they_send();

    // And the right request does what it says.
    let got = request_with(
        "DELETE",
        &app.url("/api/coupons/BAD/claims/holder"),
        None,
        &auth,
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        got.body,
        json!({ "coupon_name": "BAD", "user_id": "holder", "remaining_amount": 2 })
    );
    assert_eq!(app.db.count("SELECT count(*) FROM claim_releases"), 1);
    app.db.assert_invariant();
    the_release_metrics_count_each_outcome(&app);
}

/// A release's path, its headers, and the status and code it must get.
type BadRelease = (String, Vec<(&'static str, &'static str)>, u16, &'static str);

/// Releases of BAD's holder (and others) that are refused: an unknown
/// coupon or claim, a path that breaks the rules for names, no or a wrong
/// token.
fn bad_releases() -> Vec<BadRelease> {
    let auth = [("Authorization", "Bearer t")];
    let long = "x".repeat(129);
    vec![
        (
            "/api/coupons/NOPE/claims/holder".into(),
            auth.to_vec(),
            404,
            "coupon_not_found",
        ),
        (
            "/api/coupons/BAD/claims/nobody".into(),
            auth.to_vec(),
            404,
            "claim_not_found",
        ),
        (
            "/api/coupons/BAD/claims/%FF".into(),
            auth.to_vec(),
            400,
            "invalid_path",
        ),
        (
            "/api/coupons/%FF/claims/holder".into(),
            auth.to_vec(),
            400,
            "invalid_path",
        ),
        (
            "/api/coupons/BAD/claims/hold%g0er".into(),
            auth.to_vec(),
            400,
            "invalid_path",
        ),
        (
            "/api/coupons/%20BAD/claims/holder".into(),
            auth.to_vec(),
            400,
            "coupon_name_surrounding_whitespace",
        ),
        (
            format!("/api/coupons/{long}/claims/holder"),
            auth.to_vec(),
            400,
            "coupon_name_too_long",
        ),
        (
            "/api/coupons/BAD/claims/hol%01der".into(),
            auth.to_vec(),
            400,
            "user_id_control_character",
        ),
        (
            "/api/coupons/BAD/claims/holder%20".into(),
            auth.to_vec(),
            400,
            "user_id_surrounding_whitespace",
        ),
        (
            format!("/api/coupons/BAD/claims/{long}"),
            auth.to_vec(),
            400,
            "user_id_too_long",
        ),
        (
            "/api/coupons/BAD/claims/holder".into(),
            vec![],
            401,
            "unauthorized",
        ),
        (
            "/api/coupons/BAD/claims/holder".into(),
            vec![("Authorization", "Basic t")],
            401,
            "unauthorized",
        ),
        (
            "/api/coupons/BAD/claims/holder".into(),
            vec![("Authorization", "Bearer not-t")],
            403,
            "forbidden",
        ),
        // The token is checked before anything else.
        (
            "/api/coupons/%FF/claims/holder".into(),
            vec![],
            401,
            "unauthorized",
        ),
    ]
}

/// Each bad release gets its documented error; other methods on the path
/// get 405, naming DELETE.
fn each_bad_release_gets_its_documented_answer(app: &TestApp) {
    let auth = [("Authorization", "Bearer t")];
    let delete = |path: &str, headers: &[(&str, &str)]| {
        request_with("DELETE", &app.url(path), None, headers)
    };
    for (path, headers, status, code) in &bad_releases() {
        let got = delete(path, headers);
        assert_eq!(
            (got.status, got.code()),
            (*status, *code),
            "DELETE {path} with {headers:?}: {got:?}"
        );
        got.assert_error(*status, code);
    }
    // Other methods on the path: 405, naming DELETE.
    for method in ["GET", "POST"] {
        let got = request_with(
            method,
            &app.url("/api/coupons/BAD/claims/holder"),
            None,
            &auth,
        );
        got.assert_error(405, "method_not_allowed");
        assert_eq!(got.header("Allow"), Some("DELETE"));
    }
}

fn without_an_admin_token_nobody_may_release_whatever_they_send() {
    let open = TestApp::spawn();
    assert_eq!(open.create("OPEN", 1).status, 201);
    assert_eq!(open.claim("holder", "OPEN").status, 200);
    let before_open = tables(&open.db);
    for headers in [vec![], vec![("Authorization", "Bearer t")]] {
        let got = request_with(
            "DELETE",
            &open.url("/api/coupons/OPEN/claims/holder"),
            None,
            &headers,
        );
        got.assert_error(403, "forbidden");
    }
    assert_eq!(tables(&open.db), before_open);
}

fn the_release_metrics_count_each_outcome(app: &TestApp) {
    let text = scrape(&app.base);
    for (outcome, count) in [
        ("released", 1.0),
        ("claim_not_found", 1.0),
        ("coupon_not_found", 1.0),
        ("invalid", 8.0),
        ("refused", 4.0),
    ] {
        assert_eq!(
            metric(
                &text,
                &format!("flash_coupons_releases_total{{outcome=\"{outcome}\"}}")
            ),
            count,
            "{outcome}"
        );
    }
}

#[test]
fn without_its_listener_a_replica_answers_from_the_database_until_it_listens_again() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let servers = servers(&db, 2);
    let (a, b) = (&servers[0], &servers[1]);
    client::create_with_token(a.addr, TOKEN, "LSN", 2);
    assert_eq!(claim(a, "u1", "LSN").0, 200);
    assert_eq!(claim(a, "u2", "LSN").0, 200);
    until_answered_from_memory(a, "LSN", "probe-a");
    assert_eq!(
        client::get(b.addr, "/api/coupons/LSN", LIMIT).status(),
        Some(200)
    );
    let mut watch = db.client();
    let mut admin =
        postgres::Client::connect(&support::database::url_for("postgres"), postgres::NoTls)
            .unwrap();
    let allow = |admin: &mut postgres::Client, allowed: bool| {
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}",
                db.name
            ))
            .unwrap();
    };
    let connects = |server: &ServerProcess| {
        metric(
            &metrics(server),
            "flash_coupons_freshness_listener_connects_total",
        )
    };
    assert_eq!(connects(a), 1.0);

    // A's LISTEN session ends, and no new connection is let in for now
    // (the servers' pools keep the ones they have).
    allow(&mut admin, false);
    let killed: Vec<bool> = watch
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&a.listener_application_name()],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        killed,
        [true],
        "A's listener session, by its application_name"
    );
    let lost = Instant::now();
    assert!(
        wait_for(FRESH_BOUND, || !listener_connected(a)),
        "A still says its listener is connected"
    );
    eprintln!(
        "A stopped trusting its memory within {:.1?}",
        lost.elapsed()
    );
    assert_eq!(sold_out_in_memory(a), 0.0, "A forgot what it knew");
    // Claims on A are decided by transactions now.
    for i in 0..3 {
        let (answer, from_memory) = claim_seen(a, &format!("blind-{i}"), "LSN");
        assert_eq!(answer, (400, "out_of_stock".to_owned()));
        assert!(!from_memory, "answered from memory without a listener");
    }
    // A release through B meanwhile, which A's listener cannot hear of ...
    assert_eq!(release(b, "LSN", "u1").status(), Some(200));
    // ... is still seen by A, at once.
    let (answer, from_memory) = claim_seen(a, "after", "LSN");
    assert_eq!(answer.0, 200, "{answer:?}");
    assert!(!from_memory);
    assert_eq!(claim(a, "late", "LSN"), (400, "out_of_stock".to_owned()));

    // Connections are let in again: A listens again, having forgotten
    // everything, and learns anew.
    allow(&mut admin, true);
    let back = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || listener_connected(a)),
        "A's listener never came back"
    );
    eprintln!(
        "A listens again {:.1?} after connections were allowed",
        back.elapsed()
    );
    assert_eq!(connects(a), 2.0);
    until_answered_from_memory(a, "LSN", "probe-a2");
    let mut check = db.client();
    support::assert_invariant(&mut check);
    assert_eq!(holders(&db, "LSN"), ["u2", "after"]);
}
