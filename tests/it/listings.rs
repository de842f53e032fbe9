//! Paginated listings and the streamed coupon body.

use std::time::Duration;

use serde_json::Value;

use crate::support::TestApp;
use crate::support::answer::answers;
use crate::support::client;
use crate::support::http::raw;
use crate::support::serial;

fn seed_claims(app: &TestApp, coupon: &str, n: i64) {
    app.create(coupon, n);
    let mut client = app.db.client();
    client
        .execute(
            "INSERT INTO claims (user_id, coupon_name) \
             SELECT 'user_' || g, $1 FROM generate_series(1, $2::bigint) g ORDER BY g",
            &[&coupon, &n],
        )
        .unwrap();
    client
        .execute(
            "UPDATE coupons SET remaining_amount = 0 WHERE name = $1",
            &[&coupon],
        )
        .unwrap();
}

#[test]
fn claims_are_listed_in_claim_order_page_by_page_until_no_next_cursor() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    seed_claims(&app, "PAGED", 250);
    let mut seen = Vec::new();
    let mut path = "/api/coupons/PAGED/claims?limit=100".to_owned();
    for _ in 0..10 {
        let page = app.get(&path);
        assert_eq!(page.status, 200, "{page:?}");
        for claim in page.body["claims"].as_array().unwrap() {
            assert!(claim["claimed_at"].as_str().unwrap().ends_with('Z'));
            seen.push(claim["user_id"].as_str().unwrap().to_owned());
        }
        match page.body.get("next").and_then(Value::as_str) {
            Some(next) => path = format!("/api/coupons/PAGED/claims?limit=100&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (1..=250).map(|i| format!("user_{i}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn the_claims_listing_defaults_to_100_and_refuses_bad_limits_and_cursors() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    seed_claims(&app, "L", 150);
    let first = app.get("/api/coupons/L/claims");
    assert_eq!(first.body["claims"].as_array().unwrap().len(), 100);
    assert!(first.body["next"].is_string());
    for limit in ["0", "1001", "-1", "x"] {
        app.get(&format!("/api/coupons/L/claims?limit={limit}"))
            .assert_error(400, "invalid_limit");
    }
    for cursor in ["garbage", "c1", "n41"] {
        app.get(&format!("/api/coupons/L/claims?after={cursor}"))
            .assert_error(400, "invalid_cursor");
    }
    app.get("/api/coupons/NOPE/claims")
        .assert_error(404, "coupon_not_found");
    let empty_coupon = app.create("E", 1);
    assert_eq!(empty_coupon.status, 201);
    let empty = app.get("/api/coupons/E/claims").body;
    assert_eq!(empty, serde_json::json!({"claims": []}));
}

#[test]
fn coupons_are_listed_by_name_page_by_page() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    for i in 0..25 {
        app.create(&format!("C{i:02}"), i);
    }
    let mut names = Vec::new();
    let mut path = "/api/coupons?limit=10".to_owned();
    for _ in 0..10 {
        let page = app.get(&path);
        assert_eq!(page.status, 200, "{page:?}");
        for c in page.body["coupons"].as_array().unwrap() {
            assert!(c.get("claimed_by").is_none());
            names.push(c["name"].as_str().unwrap().to_owned());
        }
        match page.body.get("next").and_then(Value::as_str) {
            Some(next) => path = format!("/api/coupons?limit=10&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("C{i:02}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn a_coupon_with_many_claims_is_streamed_whole_and_in_order() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    seed_claims(&app, "HUGE", 25_000);
    let body = app.get("/api/coupons/HUGE").body;
    let claimed_by = body["claimed_by"].as_array().unwrap();
    assert_eq!(claimed_by.len(), 25_000);
    assert_eq!(claimed_by[0], "user_1");
    assert_eq!(claimed_by[24_999], "user_25000");
    assert_eq!(body["remaining_amount"], 0);
}

#[test]
fn the_coupon_body_has_its_length_for_http_1_1_and_1_0_alike() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    seed_claims(&app, "S", 3);
    for request in [
        &b"GET /api/coupons/S HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        &b"GET /api/coupons/S HTTP/1.0\r\n\r\n"[..],
    ] {
        let got = raw(app.addr(), request, Duration::from_secs(5));
        let answers = answers(got.as_bytes()).unwrap_or_else(|why| panic!("{why}"));
        assert_eq!(
            answers.iter().map(|a| a.status).collect::<Vec<_>>(),
            vec![200]
        );
        let answer = &answers[0];
        let length = answer.text.len().to_string();
        assert!(
            answer
                .headers
                .iter()
                .any(|(name, value)| name == "Content-Length" && *value == length),
            "{got}"
        );
        let parsed: Value = serde_json::from_str(&answer.text).unwrap();
        assert_eq!(
            parsed["claimed_by"],
            serde_json::json!(["user_1", "user_2", "user_3"])
        );
    }
}

/// The body of a GET, as sent.
fn body_text(app: &TestApp, path: &str) -> String {
    let got = client::get(app.addr(), path, Duration::from_secs(10));
    let answer = got.answered().unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.text.clone()
}

#[test]
fn every_answer_shows_a_coupons_fields_in_one_order() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("ORDERED", 3);
    let claimed = body_text(&app, "/api/coupons/ORDERED");
    assert!(
        claimed.starts_with(r#"{"name":"ORDERED","amount":3,"remaining_amount":3,"#),
        "{claimed}"
    );
    let listed = body_text(&app, "/api/coupons");
    assert!(
        listed.contains(r#"{"name":"ORDERED","amount":3,"remaining_amount":3}"#),
        "{listed}"
    );
    let claim = app.claim("u1", "ORDERED");
    assert_eq!(claim.status, 200);
    let claims = body_text(&app, "/api/coupons/ORDERED/claims");
    assert!(
        claims.starts_with(r#"{"claims":[{"user_id":"u1","claimed_at":""#),
        "{claims}"
    );
}
