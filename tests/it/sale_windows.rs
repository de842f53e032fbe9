//! Optional sale windows: decided inside the claim transaction against the
//! database clock. The exact edges are unit-tested in domain::window; here
//! the database decides around them.

use serde_json::json;

use crate::support::serial;
use crate::support::{self, TestApp};

/// The database clock, shifted by `seconds`, as RFC 3339.
fn db_time(app: &TestApp, seconds: f64) -> String {
    app.db
        .client()
        .query_one(
            "SELECT to_char((now() + make_interval(secs => $1)) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[&seconds],
        )
        .unwrap()
        .get(0)
}

/// Polls until the database clock has reached `at` (bounded).
fn wait_for_db_clock(app: &TestApp, at: &str) {
    let mut client = app.db.client();
    let reached = support::wait_for(std::time::Duration::from_secs(30), || {
        client
            .query_one("SELECT now() >= $1::text::timestamptz", &[&at])
            .unwrap()
            .get(0)
    });
    assert!(reached, "the database clock never reached {at}");
}

fn create_windowed(app: &TestApp, name: &str, starts: Option<String>, expires: Option<String>) {
    let mut body = json!({ "name": name, "amount": 10 });
    if let Some(s) = starts {
        body["starts_at"] = json!(s);
    }
    if let Some(e) = expires {
        body["expires_at"] = json!(e);
    }
    let answer = app.post_json("/api/coupons", &body.to_string());
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[test]
fn a_claim_before_the_start_gets_403_not_started_and_changes_nothing() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    create_windowed(&app, "SOON", Some(db_time(&app, 3600.0)), None);
    app.claim("u1", "SOON").assert_error(403, "not_started");
    assert_eq!(app.db.count("SELECT count(*) FROM claims"), 0);
    assert_eq!(app.get("/api/coupons/SOON").body["remaining_amount"], 10);
}

#[test]
fn a_claim_just_after_the_start_succeeds() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    create_windowed(
        &app,
        "OPEN",
        Some(db_time(&app, -0.001)),
        Some(db_time(&app, 3600.0)),
    );
    assert_eq!(app.claim("u1", "OPEN").status, 200);
}

#[test]
fn a_claim_just_after_the_end_gets_410_expired() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    create_windowed(
        &app,
        "OVER",
        Some(db_time(&app, -3600.0)),
        Some(db_time(&app, -0.001)),
    );
    app.claim("u1", "OVER").assert_error(410, "expired");
    assert_eq!(app.db.count("SELECT count(*) FROM claims"), 0);
}

#[test]
fn a_window_that_opens_is_decided_by_the_database_clock_as_it_passes() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let (starts, expires) = (db_time(&app, 2.0), db_time(&app, 4.0));
    create_windowed(&app, "TICK", Some(starts.clone()), Some(expires.clone()));
    app.claim("u1", "TICK").assert_error(403, "not_started");
    wait_for_db_clock(&app, &starts);
    assert_eq!(app.claim("u1", "TICK").status, 200);
    wait_for_db_clock(&app, &expires);
    app.claim("u2", "TICK").assert_error(410, "expired");
    // A holder after the end: the window is checked first.
    app.claim("u1", "TICK").assert_error(410, "expired");
}

#[test]
fn get_shows_the_window_only_when_it_was_set() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("PLAIN", 1);
    let plain = app.get("/api/coupons/PLAIN").body;
    assert_eq!(
        plain,
        json!({"name": "PLAIN", "amount": 1, "remaining_amount": 1, "claimed_by": []})
    );
    let created = app.post_json(
        "/api/coupons",
        r#"{"name":"TIMED","amount":1,"starts_at":"2030-01-01T07:00:00+07:00","expires_at":"2030-01-02T00:00:00Z"}"#,
    );
    assert_eq!(created.body["starts_at"], "2030-01-01T00:00:00Z");
    let timed = app.get("/api/coupons/TIMED").body;
    assert_eq!(timed["starts_at"], "2030-01-01T00:00:00Z");
    assert_eq!(timed["expires_at"], "2030-01-02T00:00:00Z");
    assert!(timed.get("claimed_by").is_some());
}

#[test]
fn invalid_windows_are_refused_with_a_code_naming_the_problem() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let cases = [
        (
            json!({"name": "W", "amount": 1, "starts_at": "tomorrow"}),
            "starts_at_not_rfc3339",
        ),
        (
            json!({"name": "W", "amount": 1, "expires_at": "2030-01-01"}),
            "expires_at_not_rfc3339",
        ),
        (
            json!({"name": "W", "amount": 1, "starts_at": 5}),
            "starts_at_not_a_string",
        ),
        (
            json!({"name": "W", "amount": 1, "starts_at": "2030-01-02T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}),
            "expires_at_not_after_starts_at",
        ),
        (
            json!({"name": "W", "amount": 1, "starts_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}),
            "expires_at_not_after_starts_at",
        ),
    ];
    for (body, code) in cases {
        app.post_json("/api/coupons", &body.to_string())
            .assert_error(400, code);
    }
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
    let nulls = json!({"name": "N", "amount": 1, "starts_at": null, "expires_at": null});
    assert_eq!(
        app.post_json("/api/coupons", &nulls.to_string()).status,
        201
    );
}
