//! What every request handler can reach, shared by all workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::claims::Claims;
use crate::config::Config;
use crate::failure_log::FailureLog;
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::transport::ResponseMemory;

pub struct Context {
    pub store: Store,
    pub claims: Claims,
    pub metrics: Metrics,
    /// When set, creating coupons needs `Authorization: Bearer <token>`;
    /// releasing claims always needs it (without it, nobody may).
    pub admin_token: Option<String>,
    /// Memory that answers made whole before writing may hold at once.
    pub response_memory: Arc<ResponseMemory>,
    health: HealthProbe,
    /// Failing /healthz probes, for their request lines (see
    /// `http::probe_level`).
    pub failing_probes: FailureLog,
    /// Requests answered 503 because of the database (see `http::finish`).
    pub failing_requests: FailureLog,
    /// Set from a shutdown signal until the server stops accepting
    /// (SHUTDOWN_DRAIN_SECS): /healthz fails so that a load balancer stops
    /// sending here, while everything else is served as usual. Shared with
    /// the transport, which then keeps no connection alive.
    draining: Arc<AtomicBool>,
}

/// One health probe at a time: /healthz requests that arrive while one runs
/// take its result, so a burst of them costs the database one round trip.
#[derive(Default)]
struct HealthProbe {
    state: Mutex<ProbeState>,
    ended: Condvar,
}

#[derive(Default)]
struct ProbeState {
    running: bool,
    /// Probes ended so far, and the last one's result.
    ended: u64,
    answered: bool,
}

/// How long /healthz waits for the database before saying 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

impl Context {
    pub fn new(store: Store, config: &Config) -> Context {
        let claims = Claims::new(store.clone());
        Context {
            metrics: Metrics::new(&store, &claims),
            claims,
            store,
            admin_token: config.admin_token.clone(),
            response_memory: ResponseMemory::new(
                config.response_buffer_bytes,
                config.transport.large_writers,
            ),
            health: HealthProbe::default(),
            failing_probes: FailureLog::default(),
            failing_requests: FailureLog::default(),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on /healthz says 503 and every answer closes its
    /// connection; everything else is served as before.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The draining flag itself, for the transport.
    pub fn draining_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.draining)
    }

    pub fn database_answers(&self) -> bool {
        let probe = &self.health;
        let mut state = lock(&probe.state);
        if state.running {
            let this_one = state.ended;
            let deadline = Instant::now() + HEALTH_TIMEOUT * 2;
            while state.ended == this_one {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                state = probe
                    .ended
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            return state.answered;
        }
        state.running = true;
        drop(state);
        let answered = self.store.ping(HEALTH_TIMEOUT);
        let mut state = lock(&probe.state);
        state.running = false;
        state.ended += 1;
        state.answered = answered;
        probe.ended.notify_all();
        answered
    }
}
