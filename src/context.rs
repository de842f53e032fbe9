use std::time::Duration;

use crate::domain::{ClaimOutcome, CouponName, UserId};
use crate::store::{Store, StoreError};

/// What every request handler can reach: shared by all workers.
pub struct Context {
    pub store: Store,
}

/// How long /healthz waits for the database before saying 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

impl Context {
    pub fn new(store: Store) -> Context {
        Context { store }
    }

    pub fn claim(&self, coupon: &CouponName, user: UserId) -> Result<ClaimOutcome, StoreError> {
        self.store
            .claim_batch(coupon, std::slice::from_ref(&user))?
            .pop()
            .ok_or_else(|| StoreError::Internal("a claim batch of one gave no outcome".into()))
    }

    pub fn database_answers(&self) -> bool {
        self.store.ping(HEALTH_TIMEOUT)
    }
}
