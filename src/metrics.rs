//! GET /metrics in the Prometheus text format.
//!
//! One pattern: whatever counts events (requests, claim outcomes, retries,
//! batch sizes, the freshness listener's connections and notifications) is
//! a Prometheus counter or histogram updated as the event happens, defined
//! next to the code that counts it, and registered here; a scrape only
//! gathers them. Gauges of the current state (the pool, claims waiting,
//! sold-out coupons, the listener's freshness, the last health probe) are
//! set from that state when scraped; none of them asks the database, so a
//! scrape is answered at once whatever the database does.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::claims::Claims;
use crate::domain::Operation;
use crate::http::CLAIM_OUTCOMES;
use crate::store::Store;

pub struct Metrics {
    registry: Registry,
    latency: HistogramVec,
    in_flight: IntGauge,
    claims_waiting: IntGauge,
    claims: IntCounterVec,
    releases: IntCounterVec,
    idempotency: IntCounterVec,
    pool: IntGaugeVec,
    sold_out: IntGaugeVec,
    listener_connected: IntGauge,
    database_up: IntGauge,
}

// The metric definitions are constants: building them cannot fail, and a
// failure would be a bug found by the first test.
fn must<T>(built: prometheus::Result<T>) -> T {
    built.expect("a valid metric definition")
}

impl Metrics {
    pub fn new(store: &Store, claims: &Claims) -> Metrics {
        let registry = Registry::new();
        let latency = must(HistogramVec::new(
            HistogramOpts::new(
                "flash_coupons_http_request_duration_seconds",
                "Time from taking a request to writing its answer, by route and status class.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "status"],
        ));
        let in_flight = must(IntGauge::new(
            "flash_coupons_http_requests_in_flight",
            "Requests taken and not yet answered.",
        ));
        let claims_waiting = must(IntGauge::new(
            "flash_coupons_claims_waiting",
            "Claims queued behind their coupon's running transaction.",
        ));
        let claims_by_outcome = must(IntCounterVec::new(
            Opts::new("flash_coupons_claims_total", "Claims answered, by outcome."),
            &["outcome"],
        ));
        // The claim series are in the exposition from the start, at 0: a
        // series that first appears already at N is not an increase to
        // rate() (Prometheus has no earlier sample), so without them the
        // first burst of a sale after a replica starts would not show in
        // claims per second or claim latency.
        for outcome in CLAIM_OUTCOMES {
            claims_by_outcome.with_label_values(&[outcome]);
        }
        for class in ["2xx", "4xx", "5xx"] {
            latency.with_label_values(&["claim", class]);
        }
        let releases = must(IntCounterVec::new(
            Opts::new(
                "flash_coupons_releases_total",
                "Claim releases (DELETE /api/coupons/{name}/claims/{user_id}) answered, by outcome.",
            ),
            &["outcome"],
        ));
        let idempotency = must(IntCounterVec::new(
            Opts::new(
                "flash_coupons_idempotency_keys_total",
                "Requests with an Idempotency-Key whose key was recorded already, by operation \
                 and result: answered again (replayed), or refused because the key was \
                 recorded for another request (mismatch).",
            ),
            &["operation", "result"],
        ));
        // Every series is in the exposition from the start, at 0.
        for operation in ["claim", "create", "release"] {
            for result in ["replayed", "mismatch"] {
                idempotency.with_label_values(&[operation, result]);
            }
        }
        let pool = must(IntGaugeVec::new(
            Opts::new(
                "flash_coupons_db_pool_connections",
                "Database connections: open, idle, in use, and the most allowed.",
            ),
            &["state"],
        ));
        let sold_out = must(IntGaugeVec::new(
            Opts::new(
                "flash_coupons_sold_out_coupons",
                "Sold-out coupons answered without a transaction, by where holders are looked up.",
            ),
            &["holders"],
        ));
        let listener_connected = must(IntGauge::new(
            "flash_coupons_freshness_listener_connected",
            "1 while the freshness listener's LISTEN connection is up and answered a round trip \
             within the last second (sold-out coupons may be answered from memory), else 0.",
        ));
        // Set from the last probe rather than by probing: a scrape must not
        // wait on a database that does not answer. Behind the edge a probe
        // runs every second (its health checks), so the value is that fresh.
        let database_up = must(IntGauge::new(
            "flash_coupons_database_up",
            "1 when the database answered the last health probe (GET /healthz, which the \
             edge sends every second) within 1 s, or no probe has run yet; 0 when it did not.",
        ));
        let ours = [
            Box::new(latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(in_flight.clone()),
            Box::new(claims_waiting.clone()),
            Box::new(claims_by_outcome.clone()),
            Box::new(releases.clone()),
            Box::new(idempotency.clone()),
            Box::new(pool.clone()),
            Box::new(sold_out.clone()),
            Box::new(listener_connected.clone()),
            Box::new(database_up.clone()),
        ];
        let kept_elsewhere = store
            .retries()
            .collectors()
            .into_iter()
            .chain(claims.collectors());
        for collector in ours.into_iter().chain(kept_elsewhere) {
            must(registry.register(collector));
        }
        Metrics {
            registry,
            latency,
            in_flight,
            claims_waiting,
            claims: claims_by_outcome,
            releases,
            idempotency,
            pool,
            sold_out,
            listener_connected,
            database_up,
        }
    }

    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    pub fn request_finished(&self, route: &str, status: u16, took: Duration) {
        self.in_flight.dec();
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        self.latency
            .with_label_values(&[route, class])
            .observe(took.as_secs_f64());
    }

    pub fn claim_answered(&self, outcome: &str) {
        debug_assert!(CLAIM_OUTCOMES.contains(&outcome), "{outcome}");
        self.claims.with_label_values(&[outcome]).inc();
    }

    pub fn release_answered(&self, outcome: &str) {
        self.releases.with_label_values(&[outcome]).inc();
    }

    /// A request whose idempotency key was recorded: `result` is
    /// "replayed" or "mismatch".
    pub fn idempotency_key(&self, operation: Operation, result: &str) {
        self.idempotency
            .with_label_values(&[operation.as_str(), result])
            .inc();
    }

    /// The text exposition, with the gauges of the current state set now.
    pub fn render(&self, store: &Store, claims: &Claims) -> String {
        let (open, idle, max) = store.pool_state();
        for (state, value) in [
            ("open", open),
            ("idle", idle),
            ("in_use", open.saturating_sub(idle)),
            ("max", max),
        ] {
            self.pool.with_label_values(&[state]).set(i64::from(value));
        }
        self.claims_waiting
            .set(i64::try_from(claims.waiting()).unwrap_or(i64::MAX));
        let (in_memory, in_database) = claims.sold_out_sizes();
        self.sold_out
            .with_label_values(&["memory"])
            .set(i64::try_from(in_memory).unwrap_or(i64::MAX));
        self.sold_out
            .with_label_values(&["database"])
            .set(i64::try_from(in_database).unwrap_or(i64::MAX));
        self.listener_connected
            .set(i64::from(claims.freshness().fresh));
        self.database_up
            .set(i64::from(store.database_answered_last_probe()));
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
