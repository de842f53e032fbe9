//! Claim combining: concurrent claims on one coupon go together in one
//! transaction, and every answer is what one-at-a-time processing in some
//! arrival order would give.

use std::collections::{HashMap, HashSet};
use std::thread;

use flash_coupons::claims::Claims;
use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;

use crate::support;
use crate::support::crowd::claims_at_once;
use crate::support::process::ServerProcess;
use crate::support::serial;
use crate::support::{Answer, TestApp, TestDb, http};

/// The claims all at once, claim i to server i mod n.
fn claim_concurrently(bases: &[String], claims: &[(String, String)]) -> Vec<Answer> {
    let bases = bases.to_vec();
    claims_at_once(claims, move |i, user, coupon| {
        http::claim(&bases[i % bases.len()], user, coupon)
    })
}

/// Checks the answers for one coupon against the sequential model: some
/// arrival order in which each user's first claim takes a unit while stock
/// lasts, later claims of a holder get 409 and everyone else 400. The order
/// of the winners is the claim order the coupon reports.
fn assert_sequential(
    users: &[&str],
    answers: &[Answer],
    earlier_holders: &HashSet<&str>,
    stock_before: i64,
    new_holders_in_order: &[String],
) {
    let mut by_user: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for (user, answer) in users.iter().zip(answers) {
        by_user.entry(user).or_default().push(answer);
    }
    let winners: Vec<&str> = new_holders_in_order.iter().map(String::as_str).collect();
    let newcomers = by_user
        .keys()
        .filter(|u| !earlier_holders.contains(*u))
        .count() as i64;
    assert_eq!(
        winners.len() as i64,
        stock_before.min(newcomers),
        "units handed out"
    );

    for (position, winner) in winners.iter().enumerate() {
        let answers = &by_user[winner];
        let granted: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
        assert_eq!(
            granted.len(),
            1,
            "{winner} must be granted exactly once: {answers:?}"
        );
        assert_eq!(
            granted[0].body["remaining_amount"],
            stock_before - 1 - position as i64,
            "the {position}th winner's remaining_amount"
        );
        for a in answers.iter().filter(|a| a.status != 200) {
            a.assert_error(409, "already_claimed");
        }
    }
    for (user, answers) in &by_user {
        if earlier_holders.contains(user) {
            answers
                .iter()
                .for_each(|a| a.assert_error(409, "already_claimed"));
        } else if !winners.contains(user) {
            answers
                .iter()
                .for_each(|a| a.assert_error(400, "out_of_stock"));
        }
    }
}

fn holders_in_order(app_db: &TestDb, coupon: &str) -> Vec<String> {
    app_db
        .client()
        .query(
            "SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id",
            &[&coupon],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_batch_mixing_repeats_earlier_holders_and_a_sell_out_matches_the_sequential_model() {
    let _turn = serial::turn!();
    // The test holds the coupon's row for as long as the claims take to
    // queue: the query deadline must not cut the leader's wait meanwhile.
    let app = TestApp::spawn_with(|c| c.store.query_timeout = Duration::from_secs(120));
    app.create("MIX", 12);
    for early in ["early_1", "early_2"] {
        assert_eq!(app.claim(early, "MIX").status, 200);
    }
    let earlier: HashSet<&str> = ["early_1", "early_2"].into();

    // Hold the coupon row so that the first claim's transaction waits and
    // every other claim queues behind it: they then go as one batch.
    let mut blocker = app.db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.query("SELECT 1 FROM coupons WHERE name = 'MIX' FOR UPDATE", &[])
        .unwrap();

    let mut users: Vec<String> = Vec::new();
    for i in 0..30 {
        users.push(format!("user_{i}"));
        if i % 3 == 0 {
            users.push(format!("user_{i}"));
        }
    }
    users.push("early_1".into());
    users.push("early_2".into());
    let claims: Vec<(String, String)> = users.iter().map(|u| (u.clone(), "MIX".into())).collect();
    let base = app.base.clone();
    let firing = thread::spawn(move || claim_concurrently(&[base], &claims));
    // The first claim leads and waits for the row; every other one queues.
    let claims_ctx = &app.server.context().claims;
    let queued = users.len() - 1;
    assert!(
        queued_behind_the_leader(&app.base, claims_ctx, queued),
        "expected {queued} claims queued, saw {}",
        claims_ctx.waiting()
    );
    tx.commit().unwrap();
    let answers = firing.join().unwrap();

    let all = holders_in_order(&app.db, "MIX");
    assert_eq!(&all[..2], ["early_1", "early_2"]);
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    assert_sequential(&user_refs, &answers, &earlier, 10, &all[2..]);
    assert_eq!(app.get("/api/coupons/MIX").body["remaining_amount"], 0);
    app.db.assert_invariant();

    // The two early claims, the leader alone, then everything queued as one.
    let stats = app.server.context().claims.batch_stats();
    assert_eq!(stats.batches(), 4);
    assert_eq!(stats.largest(), queued as u64);
    assert_eq!(stats.claims(), users.len() as u64 + 2);
    assert_eq!(claims_ctx.waiting(), 0);
}

#[test]
fn claims_on_a_sold_out_coupon_are_answered_without_a_write() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("GONE", 2);
    assert_eq!(app.claim("a", "GONE").status, 200);
    assert_eq!(app.claim("b", "GONE").status, 200);
    app.claim("c", "GONE").assert_error(400, "out_of_stock");
    let batches = app.server.context().claims.batch_stats().batches();
    app.claim("a", "GONE").assert_error(409, "already_claimed");
    app.claim("d", "GONE").assert_error(400, "out_of_stock");
    app.claim("b", "GONE").assert_error(409, "already_claimed");
    assert_eq!(
        app.server.context().claims.batch_stats().batches(),
        batches,
        "a sold-out coupon's claims must not start transactions"
    );
    assert_eq!(app.server.context().claims.sold_out_sizes(), (1, 0));
}

#[test]
fn two_server_processes_on_one_database_share_the_attacks_exactly() {
    let _turn = serial::turn!();
    let db = TestDb::new();
    let one = ServerProcess::spawn(&db.url, &[]);
    let two = ServerProcess::spawn(&db.url, &[]);
    let bases = [one.base.clone(), two.base.clone()];
    for (name, amount) in [("FLASH", 5), ("DIP", 10), ("BIG", 50)] {
        let created = support::http::request(
            "POST",
            &format!("{}/api/coupons", bases[0]),
            Some(&serde_json::json!({"name": name, "amount": amount}).to_string()),
        );
        assert_eq!(created.status, 201);
    }

    let flash: Vec<_> = (0..50)
        .map(|i| (format!("u{i}"), "FLASH".to_owned()))
        .collect();
    let answers = claim_concurrently(&bases, &flash);
    assert_eq!(answers.iter().filter(|a| a.status == 200).count(), 5);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == 400 && a.code() == "out_of_stock")
            .count(),
        45
    );

    let dip: Vec<_> = (0..10)
        .map(|_| ("same".to_owned(), "DIP".to_owned()))
        .collect();
    let answers = claim_concurrently(&bases, &dip);
    assert_eq!(answers.iter().filter(|a| a.status == 200).count(), 1);
    assert_eq!(answers.iter().filter(|a| a.status == 409).count(), 9);

    let big: Vec<_> = (0..500)
        .map(|i| (format!("u{i}"), "BIG".to_owned()))
        .collect();
    let answers = claim_concurrently(&bases, &big);
    assert_eq!(answers.iter().filter(|a| a.status == 200).count(), 50);
    assert_eq!(answers.iter().filter(|a| a.status == 400).count(), 450);

    assert_eq!(
        db.count("SELECT count(*) FROM claims WHERE coupon_name = 'FLASH'"),
        5
    );
    assert_eq!(
        db.count("SELECT count(*) FROM claims WHERE coupon_name = 'DIP'"),
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM claims WHERE coupon_name = 'BIG'"),
        50
    );
    assert_eq!(
        db.count("SELECT sum(remaining_amount) FROM coupons WHERE name IN ('FLASH', 'BIG')"),
        0
    );
    db.assert_invariant();
}

#[test]
fn a_batch_that_sells_a_coupon_out_sends_no_freshness_notification() {
    let _turn = serial::turn!();
    let app = TestApp::spawn_with(|c| c.store.query_timeout = Duration::from_secs(120));
    let metric = |name: &str| http::metric(&http::scrape(&app.base), name);
    // Listening, so that the coupon's creation is heard (and counted).
    assert!(support::wait_for(Duration::from_secs(10), || {
        metric("flash_coupons_freshness_listener_connected") == 1.0
    }));
    app.create("LAST_FIVE", 6);
    assert_eq!(app.claim("early", "LAST_FIVE").status, 200);
    let mut listener = app.db.client();
    listener
        .batch_execute("LISTEN flash_coupons_stock")
        .unwrap();
    // Creating the coupon notified already; the server may still be taking it in.
    let notified = || metric("flash_coupons_freshness_notifications_total");
    assert!(support::wait_for(Duration::from_secs(10), || notified() == 1.0));

    // As above: one batch of 40 claims (an earlier holder among them) on
    // the last 5 units, most of them past the stock.
    let mut blocker = app.db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.query(
        "SELECT 1 FROM coupons WHERE name = 'LAST_FIVE' FOR UPDATE",
        &[],
    )
    .unwrap();
    let mut claims: Vec<(String, String)> = (0..40)
        .map(|i| (format!("user_{i}"), "LAST_FIVE".to_owned()))
        .collect();
    claims.insert(3, ("early".to_owned(), "LAST_FIVE".to_owned()));
    let base = app.base.clone();
    let queued = claims.len() - 1;
    let firing = thread::spawn(move || claim_concurrently(&[base], &claims));
    let claims_ctx = &app.server.context().claims;
    assert!(
        queued_behind_the_leader(&app.base, claims_ctx, queued),
        "expected {queued} claims queued, saw {}",
        claims_ctx.waiting()
    );
    tx.commit().unwrap();
    let answers = firing.join().unwrap();
    assert_eq!(answers.iter().filter(|a| a.status == 200).count(), 5);
    assert_eq!(answers.iter().filter(|a| a.status == 409).count(), 1);
    assert_eq!(answers.iter().filter(|a| a.status == 400).count(), 35);
    assert_eq!(claims_ctx.batch_stats().largest(), queued as u64);

    // A round trip delivers whatever was notified before it.
    listener.batch_execute("SELECT 1").unwrap();
    let mut heard = Vec::new();
    let mut notifications = listener.notifications();
    let mut pending = notifications.iter();
    while let Some(n) = pending.next().unwrap() {
        heard.push(n.payload().to_owned());
    }
    assert!(heard.is_empty(), "the claim path notified {heard:?}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(notified(), 1.0, "the server heard of the sell-out");
    app.db.assert_invariant();
}

/// Waits (30 s at most) until `n` claims queue behind their coupon's
/// leader. Each look also sends a health probe on a connection of its own:
/// after a burst of new connections tiny_http can leave some waiting for a
/// thread until another connection ends (docs/tiny_http.md, defect 3), and
/// here no answer ends one until the test lets the leader go.
fn queued_behind_the_leader(base: &str, claims: &Claims, n: usize) -> bool {
    support::wait_for(Duration::from_secs(30), || {
        let _ = http::try_status(&format!("{base}/healthz"), Duration::from_secs(2));
        claims.waiting() == n
    })
}
