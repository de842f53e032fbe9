//! The spec's stress scenarios, with real threads against the real server.

use std::collections::HashSet;

use crate::support::crowd::{assert_outcomes, claims_at_once, tally};
use crate::support::{Answer, TestApp, http, serial};

/// Fires one claim per (user, coupon) pair, all at once, and returns the
/// answers in the same order.
fn claim_all_at_once(app: &TestApp, claims: &[(String, String)]) -> Vec<Answer> {
    let base = app.base.clone();
    claims_at_once(claims, move |_, user, coupon| {
        http::claim(&base, user, coupon)
    })
}

fn report_retries(app: &TestApp, scenario: &str) {
    let retries = app.server.context().store.retries();
    eprintln!(
        "{scenario}: {} transaction retries, {} gave up",
        retries.total(),
        retries.exhausted()
    );
    assert_eq!(
        retries.exhausted(),
        0,
        "{scenario}: a claim ran out of retries"
    );
}

#[test]
fn flash_sale_attack_hands_out_exactly_the_stock() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("FLASH", 5);
    let claims: Vec<(String, String)> = (0..50)
        .map(|i| (format!("user_{i}"), "FLASH".to_owned()))
        .collect();
    let answers = claim_all_at_once(&app, &claims);

    assert_outcomes(
        &answers,
        &[(200, "", 5), (400, "out_of_stock", 45)],
        "FLASH",
    );
    let coupon = app.get("/api/coupons/FLASH").body;
    assert_eq!(coupon["remaining_amount"], 0);
    let holders: HashSet<&str> = coupon["claimed_by"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(holders.len(), 5);
    let winners: HashSet<&str> = answers
        .iter()
        .filter(|a| a.status == 200)
        .filter_map(|a| a.body["user_id"].as_str())
        .collect();
    assert_eq!(
        holders, winners,
        "claimed_by must be exactly the users answered 200"
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM claims WHERE coupon_name = 'FLASH'"),
        5
    );
    app.db.assert_invariant();
    report_retries(&app, "flash sale");
}

#[test]
fn double_dip_attack_lets_one_user_claim_once() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("DIP", 100);
    let claims: Vec<(String, String)> = (0..10)
        .map(|_| ("the_same_user".to_owned(), "DIP".to_owned()))
        .collect();
    let answers = claim_all_at_once(&app, &claims);

    assert_outcomes(
        &answers,
        &[(200, "", 1), (409, "already_claimed", 9)],
        "DIP",
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM claims WHERE coupon_name = 'DIP'"),
        1
    );
    assert_eq!(app.get("/api/coupons/DIP").body["remaining_amount"], 99);
    app.db.assert_invariant();
    report_retries(&app, "double dip");
}

#[test]
fn five_hundred_claimers_on_fifty_units_get_exactly_fifty() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("BIG", 50);
    let claims: Vec<(String, String)> = (0..500)
        .map(|i| (format!("user_{i}"), "BIG".to_owned()))
        .collect();
    let answers = claim_all_at_once(&app, &claims);

    assert_outcomes(
        &answers,
        &[(200, "", 50), (400, "out_of_stock", 450)],
        "BIG",
    );
    assert_eq!(app.get("/api/coupons/BIG").body["remaining_amount"], 0);
    assert_eq!(
        app.db
            .count("SELECT count(DISTINCT user_id) FROM claims WHERE coupon_name = 'BIG'"),
        50
    );
    app.db.assert_invariant();
    report_retries(&app, "500 on 50");
}

#[test]
fn two_hundred_users_on_three_coupons_at_once_stay_consistent() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let stock: [(&str, i64); 3] = [("C1", 10), ("C2", 50), ("C3", 500)];
    for (name, amount) in stock {
        app.create(name, amount);
    }
    // Every user tries every coupon, and a quarter of them twice.
    let mut claims = Vec::new();
    for i in 0..200 {
        for (name, _) in stock {
            claims.push((format!("user_{i}"), name.to_owned()));
            if i % 4 == 0 {
                claims.push((format!("user_{i}"), name.to_owned()));
            }
        }
    }
    let answers = claim_all_at_once(&app, &claims);

    for (name, amount) in stock {
        let granted = claims
            .iter()
            .zip(&answers)
            .filter(|((_, c), a)| c == name && a.status == 200)
            .count();
        let expected = usize::try_from(amount).unwrap().min(200);
        assert_eq!(granted, expected, "{name}: {:?}", tally(&answers));
        let coupon = app.get(&format!("/api/coupons/{name}")).body;
        assert_eq!(
            coupon["remaining_amount"],
            amount - i64::try_from(expected).unwrap()
        );
    }
    assert_eq!(
        answers.iter().filter(|a| a.status >= 500).count(),
        0,
        "{:?}",
        tally(&answers)
    );
    // Each doubled user got at most one 200 per coupon, and the other 409.
    assert_eq!(
        app.db.count("SELECT count(*) FROM (SELECT 1 FROM claims GROUP BY user_id, coupon_name HAVING count(*) > 1) d"),
        0
    );
    app.db.assert_invariant();
    report_retries(&app, "200 users x 3 coupons");
}
