//! Safe retries: a claim, a create or a release sent with an
//! Idempotency-Key takes effect once, and a retry with the same key, on any
//! server, gets the first answer again (with `Idempotent-Replayed: true`),
//! also when the first answer was lost after its commit.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::answer::Answer;
use crate::support::client::{self, Exchange};
use crate::support::crowd::all_at_once;
use crate::support::http::{metric, scrape};
use crate::support::process::ServerProcess;
use crate::support::{TestApp, TestDb, serial, wait_for};

const LIMIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "idempotency-test-token";

/// Two servers on one database, with the admin token set.
fn two_servers(db: &TestDb) -> (ServerProcess, ServerProcess) {
    let env = [("ADMIN_TOKEN", TOKEN)];
    (
        ServerProcess::spawn(&db.url, &env),
        ServerProcess::spawn(&db.url, &env),
    )
}

fn headers(key: &str) -> String {
    format!("Idempotency-Key: {key}\r\nAuthorization: Bearer {TOKEN}\r\n")
}

fn claim(addr: SocketAddr, user: &str, coupon: &str, key: &str) -> Answer {
    claim_with(addr, user, coupon, Some(key))
}

/// A claim with the key `key`, or with none.
fn claim_with(addr: SocketAddr, user: &str, coupon: &str, key: Option<&str>) -> Answer {
    let body = serde_json::json!({ "user_id": user, "coupon_name": coupon }).to_string();
    answered(client::exchange_with_headers(
        addr,
        "POST",
        "/api/coupons/claim",
        Some(&body),
        &key.map(headers).unwrap_or_default(),
        LIMIT,
    ))
}

fn create(addr: SocketAddr, name: &str, amount: i64, key: &str) -> Answer {
    let body = serde_json::json!({ "name": name, "amount": amount }).to_string();
    answered(client::exchange_with_headers(
        addr,
        "POST",
        "/api/coupons",
        Some(&body),
        &headers(key),
        LIMIT,
    ))
}

fn release(addr: SocketAddr, coupon: &str, user: &str, key: &str) -> Answer {
    let path = format!("/api/coupons/{coupon}/claims/{user}");
    answered(client::exchange_with_headers(
        addr,
        "DELETE",
        &path,
        None,
        &headers(key),
        LIMIT,
    ))
}

fn answered(exchange: Exchange) -> Answer {
    exchange
        .answered()
        .cloned()
        .unwrap_or_else(|| panic!("no answer: {exchange:?}"))
}

/// `again` is `first` replayed: the same status and body, said to be a
/// replay; `first` is not.
fn assert_replay_of(again: &Answer, first: &Answer) {
    assert_eq!(
        (again.status, &again.text),
        (first.status, &first.text),
        "{again:?}"
    );
    assert_eq!(
        again.header("Idempotent-Replayed"),
        Some("true"),
        "{again:?}"
    );
    assert_eq!(first.header("Idempotent-Replayed"), None, "{first:?}");
}

fn claims_of(db: &TestDb, user: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM claims WHERE user_id = '{user}'"
    ))
}

#[test]
fn a_create_a_claim_and_a_release_retried_on_another_server_get_their_first_answer() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let (one, two) = two_servers(&db);

    let created = create(one.addr, "SAFE", 5, "create-1");
    assert_eq!(created.status, 201, "{created:?}");
    let again = create(two.addr, "SAFE", 5, "create-1");
    assert_replay_of(&again, &created);
    assert_eq!(again.header("Location"), created.header("Location"));

    let claimed = claim(one.addr, "u1", "SAFE", "claim-1");
    assert_eq!(claimed.status, 200, "{claimed:?}");
    assert_replay_of(&claim(two.addr, "u1", "SAFE", "claim-1"), &claimed);

    let released = release(one.addr, "SAFE", "u1", "release-1");
    assert_eq!(released.status, 200, "{released:?}");
    assert_replay_of(&release(two.addr, "SAFE", "u1", "release-1"), &released);

    assert_eq!(db.count("SELECT count(*) FROM coupons"), 1);
    assert_eq!(db.count("SELECT count(*) FROM claim_releases"), 1);
    assert_eq!(claims_of(&db, "u1"), 0);
    db.assert_invariant();
}

#[test]
fn without_a_key_a_retry_gets_the_answers_it_always_got() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let (one, _two) = two_servers(&db);
    client::create_with_token(one.addr, TOKEN, "PLAIN", 5);
    assert_eq!(
        client::claim(one.addr, "u1", "PLAIN", LIMIT).status(),
        Some(200)
    );
    let again = client::claim(one.addr, "u1", "PLAIN", LIMIT);
    let again = answered(again);
    again.assert_error(409, "already_claimed");
    assert_eq!(again.header("Idempotent-Replayed"), None);
}

#[test]
fn a_claim_whose_answer_was_lost_gets_its_200_on_a_retry_elsewhere_and_is_held_once() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let (one, two) = two_servers(&db);
    client::create_with_token(one.addr, TOKEN, "LOST", 5);

    // Sent, committed, and the connection reset without its answer read:
    // the client never learns what became of its claim.
    let body = serde_json::json!({ "user_id": "u1", "coupon_name": "LOST" }).to_string();
    let request = format!(
        "POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Idempotency-Key: lost-1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(one.addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    assert!(
        wait_for(LIMIT, || claims_of(&db, "u1") == 1),
        "the claim was not committed"
    );
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);

    let retried = claim(two.addr, "u1", "LOST", "lost-1");
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(retried.body["remaining_amount"], 4);
    assert_eq!(claims_of(&db, "u1"), 1);
    db.assert_invariant();
}

#[test]
fn a_retry_after_the_first_server_was_killed_right_after_its_commit_gets_the_200() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let (mut one, two) = two_servers(&db);
    client::create_with_token(one.addr, TOKEN, "KILLED", 5);

    let first = one.addr;
    let sent = std::thread::spawn(move || {
        let body = serde_json::json!({ "user_id": "u1", "coupon_name": "KILLED" }).to_string();
        client::exchange_with_headers(
            first,
            "POST",
            "/api/coupons/claim",
            Some(&body),
            "Idempotency-Key: killed-1\r\n",
            LIMIT,
        )
    });
    assert!(
        wait_for(LIMIT, || claims_of(&db, "u1") == 1),
        "the claim was not committed"
    );
    one.signal(libc::SIGKILL);
    let _ = one.wait_exit(Duration::from_secs(10));
    // Whatever the first client got (the answer, or a cut connection).
    let _ = sent.join();

    let retried = claim(two.addr, "u1", "KILLED", "killed-1");
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(claims_of(&db, "u1"), 1);
    db.assert_invariant();
}

#[test]
fn the_same_key_with_another_request_is_refused_with_422_and_changes_nothing() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let (one, two) = two_servers(&db);
    assert_eq!(create(one.addr, "TWICE", 5, "k-create").status, 201);
    create(two.addr, "TWICE", 6, "k-create").assert_error(422, "idempotency_key_mismatch");
    create(two.addr, "OTHER", 5, "k-create").assert_error(422, "idempotency_key_mismatch");

    assert_eq!(claim(one.addr, "u1", "TWICE", "k-claim").status, 200);
    claim(two.addr, "u2", "TWICE", "k-claim").assert_error(422, "idempotency_key_mismatch");
    assert_eq!(claims_of(&db, "u2"), 0);

    assert_eq!(release(one.addr, "TWICE", "u1", "k-release").status, 200);
    assert_eq!(claim(one.addr, "u3", "TWICE", "k-claim-3").status, 200);
    release(two.addr, "TWICE", "u3", "k-release").assert_error(422, "idempotency_key_mismatch");
    assert_eq!(claims_of(&db, "u3"), 1);

    // A key names one operation's request: the same key on another
    // operation is a key of its own.
    assert_eq!(claim(two.addr, "u4", "TWICE", "k-create").status, 200);
    assert_eq!(db.count("SELECT count(*) FROM coupons"), 1);
    db.assert_invariant();
}

#[test]
fn fifty_claims_at_once_with_one_key_on_a_hot_coupon_take_effect_once() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let (one, two) = two_servers(&db);
    client::create_with_token(one.addr, TOKEN, "HOT", 10);
    let servers = [one.addr, two.addr];
    let answers =
        all_at_once((0..50).map(|i| move || claim(servers[i % 2], "u1", "HOT", "hot-key")));
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body["remaining_amount"], 9, "{answer:?}");
    }
    let replays = answers
        .iter()
        .filter(|a| a.header("Idempotent-Replayed") == Some("true"))
        .count();
    assert_eq!(replays, 49);
    assert_eq!(claims_of(&db, "u1"), 1);
    assert_eq!(db.count("SELECT remaining_amount::bigint FROM coupons"), 9);
    db.assert_invariant();
}

#[test]
fn a_replay_wins_over_the_memory_of_a_sold_out_coupon() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("LAST", 1);
    let claimed = claim(app.addr(), "u1", "LAST", "last-1");
    assert_eq!(claimed.status, 200);
    // Sold out, and remembered as such: a claim now is decided from memory.
    assert_eq!(app.claim("u2", "LAST").status, 400);
    let claims = &app.server.context().claims;
    assert!(wait_for(LIMIT, || claims.sold_out_sizes() == (1, 0)));
    assert_replay_of(&claim(app.addr(), "u1", "LAST", "last-1"), &claimed);
    claim(app.addr(), "u1", "LAST", "last-2").assert_error(409, "already_claimed");
    claim(app.addr(), "u3", "LAST", "last-1").assert_error(422, "idempotency_key_mismatch");
    claim(app.addr(), "u3", "LAST", "last-3").assert_error(400, "out_of_stock");
}

#[test]
fn an_expired_key_is_a_new_request_and_expired_keys_are_swept_away() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("AGED", 5);
    assert_eq!(claim(app.addr(), "u1", "AGED", "aged-1").status, 200);
    app.db
        .client()
        .batch_execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .unwrap();
    // Past IDEMPOTENCY_TTL_HOURS (24 by default): a new request, not a
    // replay, and the key recorded anew when it takes effect.
    claim(app.addr(), "u1", "AGED", "aged-1").assert_error(409, "already_claimed");
    assert_eq!(claim(app.addr(), "u2", "AGED", "aged-1").status, 200);
    assert_eq!(
        app.db.count(
            "SELECT count(*) FROM idempotency_keys WHERE created_at > now() - interval '1 hour'"
        ),
        1
    );
    app.db
        .client()
        .batch_execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .unwrap();
    let swept = app.server.context().store.sweep_idempotency_keys().unwrap();
    assert_eq!(swept, 1);
    assert_eq!(app.db.count("SELECT count(*) FROM idempotency_keys"), 0);
}

#[test]
fn a_malformed_key_is_refused_with_400_and_changes_nothing() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("KEYS", 5);
    for key in ["", "has space", &"k".repeat(256)] {
        claim(app.addr(), "u1", "KEYS", key).assert_error(400, "invalid_idempotency_key");
    }
    assert_eq!(app.db.count("SELECT count(*) FROM claims"), 0);
}

/// Claims on `coupon` decided as one batch, in order: the test holds the
/// coupon's row, `leader` is sent and waits for it, and the claims of
/// `queued` (user, key) queue behind the leader one after another, each
/// waiting before the next is sent. The row is then let go. Returns the
/// leader's answer and the others', in order.
fn batch_behind_a_held_row(
    app: &TestApp,
    coupon: &'static str,
    leader: (&'static str, &'static str),
    queued: &[(&'static str, Option<&'static str>)],
) -> (Answer, Vec<Answer>) {
    let mut blocker = app.db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.query(
        "SELECT 1 FROM coupons WHERE name = $1 FOR UPDATE",
        &[&coupon],
    )
    .unwrap();
    let addr = app.addr();
    let leader = std::thread::spawn(move || claim(addr, leader.0, coupon, leader.1));
    let claims_ctx = &app.server.context().claims;
    assert!(wait_for(LIMIT, || {
        app.db.count(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%coupons%'",
        ) >= 1
    }));
    let handles: Vec<_> = queued
        .iter()
        .enumerate()
        .map(|(i, &(user, key))| {
            let handle = std::thread::spawn(move || claim_with(addr, user, coupon, key));
            assert!(wait_for(LIMIT, || claims_ctx.waiting() == i + 1));
            handle
        })
        .collect();
    tx.commit().unwrap();
    let leader = leader.join().unwrap();
    (
        leader,
        handles.into_iter().map(|h| h.join().unwrap()).collect(),
    )
}

/// Each answer's status and its Idempotent-Replayed header.
fn summary(answers: &[Answer]) -> Vec<(u16, Option<&str>)> {
    answers
        .iter()
        .map(|a| (a.status, a.header("Idempotent-Replayed")))
        .collect()
}

#[test]
fn claims_with_keys_in_one_batch_are_decided_as_if_one_at_a_time() {
    let _turn = serial::turn!();
    let app = TestApp::spawn_with(|c| c.store.query_timeout = Duration::from_secs(120));
    app.create("BATCHED", 3);
    let queued = [
        ("u1", Some("k1")),
        ("u2", Some("k2")),
        ("u1", Some("k1")),
        ("u3", Some("k1")),
        ("u4", Some("k4")),
    ];
    let (leader, answers) = batch_behind_a_held_row(&app, "BATCHED", ("first", "k-first"), &queued);
    assert_eq!(leader.status, 200);
    assert_eq!(
        summary(&answers),
        [
            (200, None),
            (200, None),
            (200, Some("true")),
            (422, None),
            (400, None),
        ],
        "{answers:?}"
    );
    assert_eq!(answers[2].text, answers[0].text);
    // The keys of the granted claims were recorded with their answers.
    assert_replay_of(&claim(app.addr(), "u2", "BATCHED", "k2"), &answers[1]);
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM idempotency_keys WHERE operation = 'claim'"),
        3
    );
    app.db.assert_invariant();
}

/// One at a time, a claim that takes no effect leaves its key unrecorded,
/// so the next request with that key (another user's) runs as a new one. In
/// one batch, that request waits for the first's transaction to commit and
/// is decided the same way, never answered 422 for a key nobody recorded.
#[test]
fn a_key_whose_first_claim_in_a_batch_took_no_effect_is_free_for_the_next_request_with_it() {
    let _turn = serial::turn!();
    let app = TestApp::spawn_with(|c| c.store.query_timeout = Duration::from_secs(120));
    app.create("REUSED", 5);
    assert_eq!(claim_with(app.addr(), "holder", "REUSED", None).status, 200);
    let queued = [
        // Holds the coupon already: 409, and `k` stays unrecorded.
        ("holder", Some("k")),
        // So this one is a new request: granted, and `k` is its own.
        ("u2", Some("k")),
        // `k` is u2's by then: a mismatch.
        ("u3", Some("k")),
        ("u4", None),
    ];
    let (leader, answers) = batch_behind_a_held_row(&app, "REUSED", ("first", "k-first"), &queued);
    assert_eq!(leader.status, 200);
    assert_eq!(
        summary(&answers),
        [(409, None), (200, None), (422, None), (200, None)],
        "{answers:?}"
    );
    answers[0].assert_error(409, "already_claimed");
    answers[2].assert_error(422, "idempotency_key_mismatch");
    // u4 was decided with the batch, u2 in the transaction after it.
    assert_eq!(answers[3].body["remaining_amount"], 2, "{answers:?}");
    assert_eq!(answers[1].body["remaining_amount"], 1, "{answers:?}");
    assert_replay_of(&claim(app.addr(), "u2", "REUSED", "k"), &answers[1]);
    assert_eq!(claim(app.addr(), "holder", "REUSED", "k").status, 422);
    assert_eq!(claims_of(&app.db, "u3"), 0);
    app.db.assert_invariant();
}

/// Calls of the one-statement batch function so far, as the database
/// counts them (with track_functions on).
fn one_statement_batches(db: &TestDb) -> i64 {
    db.count(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions \
         WHERE funcid = 'flash_coupons_claim_batch(text, text[], bigint, text[], text[], integer)'\
         ::regprocedure",
    )
}

#[test]
fn a_batch_of_claims_with_distinct_keys_is_decided_in_one_statement_recording_granted_keys() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    db.client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET track_functions = 'pl'",
            db.name
        ))
        .unwrap();
    let app = TestApp::spawn_on(db, |c| c.store.query_timeout = Duration::from_secs(120));
    app.create("ONCE", 4);
    assert_eq!(app.claim("held", "ONCE").status, 200);
    let queued = [
        ("u1", Some("k1")),
        ("held", Some("k2")),
        ("u3", None),
        ("u1", Some("k4")),
        ("u5", Some("k5")),
    ];
    let (leader, answers) = batch_behind_a_held_row(&app, "ONCE", ("first", "k-first"), &queued);
    assert_eq!(leader.status, 200);
    assert_eq!(leader.body["remaining_amount"], 2);
    assert_eq!(
        summary(&answers),
        [
            (200, None),
            (409, None),
            (200, None),
            (409, None),
            (400, None)
        ],
        "{answers:?}"
    );
    assert_eq!(answers[0].body["remaining_amount"], 1);
    assert_eq!(answers[2].body["remaining_amount"], 0);
    assert!(
        wait_for(LIMIT, || one_statement_batches(&app.db) >= 1),
        "the batch was not decided by flash_coupons_claim_batch"
    );
    // Only the keys of granted claims were recorded, each with its answer;
    // the others are new requests when they come again.
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM idempotency_keys WHERE operation = 'claim'"),
        2
    );
    assert_replay_of(&claim(app.addr(), "u1", "ONCE", "k1"), &answers[0]);
    assert_replay_of(&claim(app.addr(), "first", "ONCE", "k-first"), &leader);
    claim(app.addr(), "u9", "ONCE", "k5").assert_error(400, "out_of_stock");
    claim(app.addr(), "u9", "ONCE", "k2").assert_error(400, "out_of_stock");
    app.db.assert_invariant();
}

#[test]
fn a_batch_holding_a_recorded_key_answers_it_from_the_record_and_decides_the_rest() {
    let _turn = serial::turn!();
    let app = TestApp::spawn_with(|c| c.store.query_timeout = Duration::from_secs(120));
    app.create("AGAIN", 4);
    let first = claim(app.addr(), "u1", "AGAIN", "k1");
    assert_eq!(first.body["remaining_amount"], 3);
    let queued = [
        ("u2", Some("k2")),
        ("u1", Some("k1")),
        ("u9", Some("k1")),
        ("u3", Some("k3")),
        ("u4", None),
    ];
    let (leader, answers) = batch_behind_a_held_row(&app, "AGAIN", ("lead", "k-lead"), &queued);
    assert_eq!(leader.body["remaining_amount"], 2);
    assert_eq!(
        summary(&answers),
        [
            (200, None),
            (200, Some("true")),
            (422, None),
            (200, None),
            (400, None),
        ],
        "{answers:?}"
    );
    assert_eq!(answers[1].text, first.text);
    assert_eq!(answers[0].body["remaining_amount"], 1);
    assert_eq!(answers[3].body["remaining_amount"], 0);
    assert_replay_of(&claim(app.addr(), "u3", "AGAIN", "k3"), &answers[3]);
    assert_eq!(claims_of(&app.db, "u1"), 1);
    assert_eq!(claims_of(&app.db, "u9"), 0);
    app.db.assert_invariant();
}

/// Serialization retries counted by the server so far.
fn serialization_retries(app: &TestApp) -> f64 {
    metric(
        &scrape(&app.base),
        r#"flash_coupons_claim_retries_total{cause="serialization_failure"}"#,
    )
}

#[test]
fn keyed_claims_on_many_coupons_at_once_rarely_fail_one_another_to_serialize() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for c in 0..100 {
        app.create(&format!("SPREAD-{c}"), 100);
    }
    let before = serialization_retries(&app);
    let addr = app.addr();
    // 16 clients, 25 keyed claims each on coupons spread over all 100: a
    // transaction that looked its key up first would take a predicate lock
    // on the key's index page, where the others insert theirs (seen: most
    // such claims retried, and some ran out of retries).
    let statuses: Vec<Vec<u16>> = all_at_once((0..16).map(|t| {
        move || {
            (0..25)
                .map(|i| {
                    let n = t * 25 + i;
                    let coupon = format!("SPREAD-{}", (n * 37) % 100);
                    claim(addr, &format!("user-{n}"), &coupon, &format!("key-{n}")).status
                })
                .collect()
        }
    }));
    let statuses: Vec<u16> = statuses.into_iter().flatten().collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(app.db.count("SELECT count(*) FROM idempotency_keys"), 400);
    let retries = serialization_retries(&app) - before;
    eprintln!("{retries} serialization retries for 400 keyed claims");
    assert!(
        retries <= 40.0,
        "{retries} serialization retries for 400 keyed claims on 100 coupons"
    );
}
