//! GET /metrics: the counters move as requests are answered.

use crate::support::http::metric;
use crate::support::serial;
use crate::support::{self, TestApp};

fn scrape(app: &TestApp) -> String {
    support::http::scrape(&app.base)
}

#[test]
fn claim_outcomes_batches_and_request_latencies_are_counted() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let before = scrape(&app);
    // The claim series are there from the start, at 0, so that rate()
    // counts a sale's first burst.
    for series in [
        r#"flash_coupons_claims_total{outcome="claimed"} 0"#,
        r#"flash_coupons_claims_total{outcome="out_of_stock"} 0"#,
        r#"flash_coupons_claims_total{outcome="busy"} 0"#,
        r#"flash_coupons_http_request_duration_seconds_count{route="claim",status="2xx"} 0"#,
        r#"flash_coupons_http_request_duration_seconds_bucket{route="claim",status="5xx",le="0.01"} 0"#,
    ] {
        assert!(before.lines().any(|l| l == series), "{series}\n{before}");
    }

    app.create("M", 2);
    assert_eq!(app.claim("a", "M").status, 200);
    assert_eq!(app.claim("b", "M").status, 200);
    assert_eq!(app.claim("a", "M").status, 409);
    assert_eq!(app.claim("c", "M").status, 400);
    assert_eq!(app.claim("c", "NOPE").status, 404);
    assert_eq!(app.post_json("/api/coupons/claim", "{}").status, 400);

    let after = scrape(&app);
    for (outcome, n) in [
        ("claimed", 2.0),
        ("already_claimed", 1.0),
        ("out_of_stock", 1.0),
        ("coupon_not_found", 1.0),
        ("invalid", 1.0),
    ] {
        let series = format!(r#"flash_coupons_claims_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&after, &series), n, "{series}\n{after}");
    }
    // Two claims were decided in transactions before the coupon sold out
    // and the 404 in a third; the later ones came from the sold-out cache.
    assert!(
        metric(&after, "flash_coupons_claim_batch_size_count") >= 3.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            r#"flash_coupons_http_request_duration_seconds_count{route="claim",status="2xx"}"#
        ),
        2.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            r#"flash_coupons_http_request_duration_seconds_count{route="claim",status="4xx"}"#
        ),
        4.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, r#"flash_coupons_db_pool_connections{state="max"}"#),
        8.0
    );
    assert!(after.contains("flash_coupons_http_requests_in_flight"));
    assert!(
        after.contains("\nflash_coupons_claims_waiting 0\n"),
        "{after}"
    );
    assert!(after.contains(r#"flash_coupons_claim_retries_total{cause="serialization_failure"}"#));
    assert_eq!(
        metric(
            &after,
            r#"flash_coupons_sold_out_coupons{holders="memory"}"#
        ),
        1.0
    );
}

#[test]
fn retries_seen_by_the_store_appear_in_metrics() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.create("R", 1000);
    // Two servers on one database conflict with each other and retry.
    let other = flash_coupons::Server::start(&support::test_config(&app.db.url)).unwrap();
    let bases = [app.base.clone(), format!("http://{}", other.addr())];
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let url = format!("{}/api/coupons/claim", bases[i % 2]);
            std::thread::spawn(move || {
                let body = format!(r#"{{"user_id":"u{i}","coupon_name":"R"}}"#);
                support::http::request("POST", &url, Some(&body)).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let seen = app.server.context().store.retries().total();
    let text = scrape(&app);
    let exported: f64 = text
        .lines()
        .filter(|l| l.starts_with("flash_coupons_claim_retries_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(exported, seen as f64, "{text}");
}

#[test]
fn the_database_gauge_follows_the_health_probe_and_the_listener_gauge_its_connection() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    assert_eq!(app.get("/healthz").status, 200);
    let text = scrape(&app);
    assert_eq!(metric(&text, "flash_coupons_database_up"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "flash_coupons_freshness_listener_connected"),
        1.0,
        "{text}"
    );

    // Dropping the database under the server makes every new connection
    // fail: the probe's, and the freshness listener's.
    app.db.drop_now().unwrap();
    app.get("/healthz")
        .assert_error(503, "database_unavailable");
    let text = scrape(&app);
    assert_eq!(metric(&text, "flash_coupons_database_up"), 0.0, "{text}");
    let disconnected = support::wait_for(std::time::Duration::from_secs(15), || {
        metric(&scrape(&app), "flash_coupons_freshness_listener_connected") == 0.0
    });
    assert!(disconnected, "{}", scrape(&app));
}

/// `promtool` (Debian's `prometheus` package), or a failure that says how
/// to install it.
fn promtool() -> std::process::Command {
    support::require_program(
        "promtool",
        "This test checks /metrics with `promtool check metrics`",
        "Debian/Ubuntu: apt-get install prometheus",
    );
    std::process::Command::new("promtool")
}

#[test]
fn promtool_check_metrics_finds_nothing_to_complain_about_in_a_live_replicas_metrics() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    // Every kind of series with values: claims of several outcomes (and a
    // batch), a create, a release refused, an unknown path.
    app.create("LINT", 1);
    assert_eq!(app.claim("a", "LINT").status, 200);
    assert_eq!(app.claim("b", "LINT").status, 400);
    assert_eq!(app.claim("a", "NOPE").status, 404);
    assert_eq!(
        support::http::request("DELETE", &app.url("/api/coupons/LINT/claims/a"), None).status,
        403
    );
    assert_eq!(app.get("/nothing/here").status, 404);
    assert_eq!(app.get("/healthz").status, 200);
    let text = scrape(&app);

    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool check metrics");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("promtool's stdin");
        stdin
            .write_all(text.as_bytes())
            .expect("writing to promtool");
    }
    let out = check.wait_with_output().expect("promtool check metrics");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\n--- the metrics:\n{text}",
        out.status
    );
}
