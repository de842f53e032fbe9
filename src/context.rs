use std::time::Duration;

use crate::claims::Claims;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every request handler can reach: shared by all workers.
pub struct Context {
    pub store: Store,
    pub claims: Claims,
    pub metrics: Metrics,
    /// Whether answers may leave the connection open (HTTP_KEEP_ALIVE).
    pub keep_alive: bool,
    /// When set, creating coupons needs `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
}

/// How long /healthz waits for the database before saying 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

impl Context {
    pub fn new(store: Store, keep_alive: bool, admin_token: Option<String>) -> Context {
        let claims = Claims::new(store.clone());
        Context {
            metrics: Metrics::new(&claims),
            claims,
            store,
            keep_alive,
            admin_token,
        }
    }

    pub fn database_answers(&self) -> bool {
        self.store.ping(HEALTH_TIMEOUT)
    }
}
