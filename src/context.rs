//! What every request handler can reach, shared by all workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::claims::Claims;
use crate::config::Config;
use crate::failure_log::FailureLog;
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

    /// Whether the database answers (see `Store::database_answers`).
    pub fn database_answers(&self) -> bool {
        self.store.database_answers()
    }
}
