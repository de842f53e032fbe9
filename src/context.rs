use std::time::Duration;

use crate::claims::Claims;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every request handler can reach: shared by all workers.
pub struct Context {
    pub store: Store,
    pub claims: Claims,
    pub metrics: Metrics,
    /// Mean answers per connection before `Connection: close`
    /// (HTTP_KEEP_ALIVE_REQUESTS; 1: always close, 0: never).
    pub keep_alive_requests: u32,
    /// When set, creating coupons needs `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
}

/// How long /healthz waits for the database before saying 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

impl Context {
    pub fn new(store: Store, keep_alive_requests: u32, admin_token: Option<String>) -> Context {
        let claims = Claims::new(store.clone());
        Context {
            metrics: Metrics::new(&claims),
            claims,
            store,
            keep_alive_requests,
            admin_token,
        }
    }

    /// Whether this answer may leave its connection open. Closing at random
    /// (once in `keep_alive_requests` answers on average) needs no state per
    /// connection, and bounds how long a connection holds one of tiny_http's
    /// threads while others wait for one (see README, tiny_http).
    pub fn keep_alive(&self) -> bool {
        match self.keep_alive_requests {
            0 => true,
            1 => false,
            n => fastrand::u32(..n) != 0,
        }
    }

    pub fn database_answers(&self) -> bool {
        self.store.ping(HEALTH_TIMEOUT)
    }
}
