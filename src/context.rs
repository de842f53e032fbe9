//! What every request handler can reach, shared by all workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::claims::Claims;
use crate::config::Config;
use crate::failure_log::FailureLog;
use crate::http::{Budget, Outgoing};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::workers::Submitter;

pub struct Context {
    pub store: Store,
    pub claims: Claims,
    pub metrics: Metrics,
    /// Mean answers per connection before `Connection: close`
    /// (HTTP_KEEP_ALIVE_REQUESTS; 1: always close, 0: never).
    pub keep_alive_requests: u32,
    /// When set, creating coupons needs `Authorization: Bearer <token>`;
    /// releasing claims always needs it (without it, nobody may).
    pub admin_token: Option<String>,
    /// Memory that answers made whole before writing may hold at once.
    pub budget: Arc<Budget>,
    writers: Writers,
    write_timeout: Duration,
    /// Failing /healthz probes, for their request lines (see
    /// `http::probe_level`).
    pub failing_probes: FailureLog,
    /// Requests answered 503 because of the database (see `http::finish`).
    pub failing_requests: FailureLog,
    /// Set from a shutdown signal until the server stops accepting
    /// (SHUTDOWN_DRAIN_SECS): /healthz fails so that a load balancer stops
    /// sending here, while everything else is served as usual.
    draining: AtomicBool,
}

/// Where answers go to be written: large ones (see `http::budget`) to
/// writers of their own, as many as there are large-answer places, so that
/// one never waits for a writer and slow readers of them hold no other.
pub struct Writers {
    pub small: Submitter<Outgoing>,
    pub large: Submitter<Outgoing>,
}

impl Context {
    pub fn new(store: Store, config: &Config, writers: Writers) -> Context {
        let claims = Claims::new(store.clone());
        Context {
            metrics: Metrics::new(&store, &claims),
            claims,
            store,
            keep_alive_requests: config.keep_alive_requests,
            admin_token: config.admin_token.clone(),
            budget: Budget::new(config.response_buffer_bytes, config.large_answers),
            writers,
            write_timeout: config.write_timeout,
            failing_probes: FailureLog::default(),
            failing_requests: FailureLog::default(),
            draining: AtomicBool::new(false),
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

    /// Whether this answer may leave its connection open. Closing at random
    /// (once in `keep_alive_requests` answers on average) needs no state per
    /// connection, and bounds how long a connection holds one of tiny_http's
    /// threads while others wait for one (see README, tiny_http).
    ///
    /// While draining, none may: a client that keeps its connection would
    /// go on being served here after the load balancer has moved on.
    pub fn keep_alive(&self) -> bool {
        if self.draining() {
            return false;
        }
        match self.keep_alive_requests {
            0 => true,
            1 => false,
            n => fastrand::u32(..n) != 0,
        }
    }

    /// Hands an answer to the writers; writes it here once they have
    /// stopped (at the very end of a shutdown).
    pub fn answer(&self, outgoing: Outgoing) {
        let writers = if outgoing.reply.is_large() {
            &self.writers.large
        } else {
            &self.writers.small
        };
        if let Err(outgoing) = writers.submit(outgoing) {
            crate::http::write(outgoing, self.write_timeout);
        }
    }

    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// Whether the database answers (see `Store::database_answers`).
    pub fn database_answers(&self) -> bool {
        self.store.database_answers()
    }
}
