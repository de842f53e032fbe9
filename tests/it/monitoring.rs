//! `deploy/run-local --monitoring`: the real Prometheus (Debian's
//! `prometheus` package) with the repository's rules, scraping every
//! replica and HAProxy's own exporter on loopback. It comes up with every
//! target healthy and its rules loaded, and the recording rule of claims
//! over all replicas counts exactly what `flash-coupons attack` sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::attack_command::server_binary;
use crate::support::edge::Edge;
use crate::support::http::{metric, scrape};
use crate::support::serial;
use crate::support::{self, TestDb};

/// Fails with what to install when Prometheus is not on PATH.
fn require_prometheus() {
    support::require_program(
        "prometheus",
        "The monitoring test runs the real Prometheus through deploy/run-local --monitoring",
        "Debian/Ubuntu: apt-get install prometheus",
    );
}

/// GET `path` of Prometheus's HTTP API with `query` parameters: its
/// `data`, after checking that it answered `"status": "success"`.
fn api(prometheus: SocketAddr, path: &str, query: &[(&str, &str)]) -> Value {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut request = agent.get(&format!("http://{prometheus}{path}"));
    for (name, value) in query {
        request = request.query(name, value);
    }
    let body: Value = request
        .call()
        .unwrap_or_else(|e| panic!("GET {path} {query:?} from Prometheus: {e}"))
        .into_json()
        .unwrap_or_else(|e| panic!("GET {path} {query:?}: not JSON: {e}"));
    assert_eq!(body["status"], "success", "GET {path} {query:?}: {body}");
    body["data"].clone()
}

/// The active targets: (job, instance) -> health ("up", "down", "unknown").
fn targets(prometheus: SocketAddr) -> BTreeMap<(String, String), String> {
    api(prometheus, "/api/v1/targets", &[("state", "active")])["activeTargets"]
        .as_array()
        .expect("activeTargets")
        .iter()
        .map(|t| {
            let labels = &t["labels"];
            (
                (
                    labels["job"].as_str().unwrap_or("").to_owned(),
                    labels["instance"].as_str().unwrap_or("").to_owned(),
                ),
                t["health"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// An instant query whose result is a vector: its samples by the value of
/// `label` ("" when the series has no such label).
fn query(prometheus: SocketAddr, expr: &str, label: &str) -> BTreeMap<String, f64> {
    let data = api(prometheus, "/api/v1/query", &[("query", expr)]);
    assert_eq!(data["resultType"], "vector", "{expr}: {data}");
    data["result"]
        .as_array()
        .expect("a result")
        .iter()
        .map(|sample| {
            let key = sample["metric"][label].as_str().unwrap_or("").to_owned();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            (key, value)
        })
        .collect()
}

/// Polls `probe` every 250 ms until it returns Some, at most `limit`; the
/// last thing it saw otherwise.
fn poll<T, S: std::fmt::Debug>(
    limit: Duration,
    mut probe: impl FnMut() -> Result<T, S>,
) -> Result<T, S> {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(done) => return Ok(done),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[test]
fn prometheus_scrapes_every_replica_and_the_edge_and_counts_the_claims_an_attack_sent() {
    // Three replicas, HAProxy and Prometheus: beside no other test.
    let _turn = serial::alone();
    require_prometheus();
    let db = TestDb::new();
    let mut edge = run_local_with_monitoring_gets_ready(&db);
    let (prometheus_pid, prometheus) = run_local_says_where_prometheus_is(&edge);
    every_replica_and_the_edge_are_scraped(&edge, prometheus);
    the_rules_are_loaded_and_evaluate(prometheus);
    let sent = the_attacks_through_the_edge_count_exactly(&edge);
    the_replicas_counted_what_the_attack_sent(&edge, &sent);
    the_recording_rule_over_every_replica_counts_the_same(prometheus, &sent);
    stopping_run_local_stops_prometheus(&mut edge, prometheus_pid);
}

/// `deploy/run-local --monitoring` with three replicas gets ready.
fn run_local_with_monitoring_gets_ready(db: &TestDb) -> Edge {
    Edge::try_start_with(
        &db.url,
        3,
        &["--monitoring", "127.0.0.1:0", "--scrape-interval", "1"],
        &[],
    )
    .unwrap_or_else(|failed| {
        panic!(
            "deploy/run-local --monitoring did not get ready (exit code {:?}):\n{}",
            failed.code,
            failed.log.join("\n")
        )
    })
}

/// run-local names Prometheus's pid and address, and says where it is.
fn run_local_says_where_prometheus_is(edge: &Edge) -> (i32, SocketAddr) {
    let (prometheus_pid, prometheus) = edge
        .prometheus
        .expect("a `prometheus PID ADDR` line in run-local's pids file");
    assert!(
        edge.log()
            .iter()
            .any(|l| l.contains(&format!("prometheus: http://{prometheus}"))),
        "run-local says where Prometheus is: {:#?}",
        edge.log()
    );
    (prometheus_pid, prometheus)
}

/// Prometheus's targets are exactly the replicas and HAProxy's loopback exporter, all up.
fn every_replica_and_the_edge_are_scraped(edge: &Edge, prometheus: SocketAddr) {
    // Every replica and the edge's exporter, found and scraped with success.
    let mut expected: BTreeSet<(String, String)> = edge
        .replicas
        .iter()
        .map(|r| ("flash-coupons".to_owned(), r.addr.to_string()))
        .collect();
    let healthy = poll(Duration::from_secs(60), || {
        let seen = targets(prometheus);
        let edge_targets: Vec<_> = seen.keys().filter(|(job, _)| job == "edge").collect();
        let all_up = seen.len() == expected.len() + 1
            && edge_targets.len() == 1
            && seen.values().all(|health| health == "up")
            && expected.iter().all(|t| seen.contains_key(t));
        if all_up { Ok(seen) } else { Err(seen) }
    })
    .unwrap_or_else(|seen| panic!("targets not all healthy within 60 s: {seen:#?}"));
    eprintln!("targets: {healthy:?}");
    let exporter = healthy
        .keys()
        .find(|(job, _)| job == "edge")
        .map(|(_, instance)| instance.clone())
        .expect("the edge's target");
    expected.insert(("edge".to_owned(), exporter.clone()));
    assert_eq!(healthy.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // The exporter listens on loopback only, and is HAProxy's.
    assert!(exporter.starts_with("127.0.0.1:"), "{exporter}");
    let haproxy = scrape(&format!("http://{exporter}"));
    assert_eq!(
        metric(&haproxy, r#"haproxy_backend_active_servers{proxy="app"}"#),
        3.0,
        "{haproxy}"
    );
}

/// Prometheus has the recording and alerting rules, and none fails to evaluate.
fn the_rules_are_loaded_and_evaluate(prometheus: SocketAddr) {
    // The repository's rules are loaded and evaluate without error.
    let groups = api(prometheus, "/api/v1/rules", &[]);
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for name in [
        "outcome:flash_coupons_claims_total:sum",
        "flash_coupons:replicas_in_rotation:sum",
        "FlashCouponsDatabaseUnavailable",
        "FlashCouponsFewerThanTwoReplicasInRotation",
    ] {
        assert!(names.contains(name), "{name} not loaded: {names:?}");
    }
    let rotation = poll(Duration::from_secs(30), || {
        let seen = query(prometheus, "flash_coupons:replicas_in_rotation:sum", "");
        if seen.get("") == Some(&3.0) {
            Ok(seen)
        } else {
            Err(seen)
        }
    });
    assert!(rotation.is_ok(), "replicas in rotation: {rotation:?}");
    let broken: Vec<&Value> = rules.iter().filter(|r| r["health"] == "err").collect();
    assert!(
        broken.is_empty(),
        "rules that fail to evaluate: {broken:#?}"
    );
}

/// `flash-coupons attack` through the edge exits 0; the claims it sent, by outcome.
fn the_attacks_through_the_edge_count_exactly(edge: &Edge) -> BTreeMap<String, f64> {
    // The spec's two attacks and a burst, through the edge; exit 0 means
    // every count was exact: 5 of 50 users claim on 5 units, 1 of 10 claims
    // by one user, 40 of 100 users on 40 units.
    let out = std::process::Command::new(server_binary())
        .args([
            "attack", "--url", &edge.base, "--users", "100", "--stock", "40",
        ])
        .args(["--timeout-secs", "30", "--deadline-secs", "240"])
        .env_remove("ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running flash-coupons attack");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "flash-coupons attack: {printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    [
        ("claimed", 5.0 + 1.0 + 40.0),
        ("out_of_stock", 45.0 + 60.0),
        ("already_claimed", 9.0),
    ]
    .into_iter()
    .map(|(outcome, n)| (outcome.to_owned(), n))
    .collect()
}

/// The replicas' own counters add up to exactly what the attack sent.
fn the_replicas_counted_what_the_attack_sent(edge: &Edge, sent: &BTreeMap<String, f64>) {
    // The replicas counted exactly that between them...
    let mut counted: BTreeMap<String, f64> = BTreeMap::new();
    for replica in &edge.replicas {
        let text = scrape(&format!("http://{}", replica.addr));
        for outcome in sent.keys() {
            let series = format!(r#"flash_coupons_claims_total{{outcome="{outcome}"}}"#);
            *counted.entry(outcome.clone()).or_default() += metric(&text, &series);
        }
    }
    assert_eq!(&counted, sent, "the replicas' own counters");
}

/// Prometheus's recording rule of claims over every replica reaches the same counts.
fn the_recording_rule_over_every_replica_counts_the_same(
    prometheus: SocketAddr,
    sent: &BTreeMap<String, f64>,
) {
    // ...and the recording rule over every replica reaches the same, once
    // the last scrape and evaluation after the attack are in.
    let claims = poll(Duration::from_secs(60), || {
        let seen = query(
            prometheus,
            "outcome:flash_coupons_claims_total:sum",
            "outcome",
        );
        let matches = sent.iter().all(|(outcome, n)| seen.get(outcome) == Some(n))
            && seen
                .iter()
                .all(|(outcome, n)| sent.contains_key(outcome) || *n == 0.0);
        if matches { Ok(seen) } else { Err(seen) }
    });
    eprintln!("claims over all replicas, as Prometheus recorded them: {claims:?}");
    assert!(
        claims.is_ok(),
        "outcome:flash_coupons_claims_total:sum never matched {sent:?}: {claims:?}"
    );
}

/// run-local stops with exit code 0, and Prometheus's process is gone after it.
fn stopping_run_local_stops_prometheus(edge: &mut Edge, prometheus_pid: i32) {
    // Stopping run-local stops Prometheus too.
    assert_eq!(edge.stop(Duration::from_secs(90)), Some(Some(0)));
    let gone = support::wait_for(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{prometheus_pid}")).exists()
    });
    assert!(gone, "prometheus (pid {prometheus_pid}) outlived run-local");
}
