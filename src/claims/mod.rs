//! Deciding claims: combining concurrent claims on one coupon into one
//! transaction, answering claims on sold-out coupons without a write, and
//! giving claimed units back.

mod combiner;
mod sold_out;

use std::sync::Arc;

use crate::domain::{ClaimOutcome, CouponName, IdempotencyKey, Operation, UserId, claim_request};
use crate::store::{BatchClaim, KeyVerdict, ReleaseOutcome, StockEvents, Store, StoreError};

use combiner::Combiner;
pub use combiner::{BatchStats, Done};
pub use sold_out::Freshness;
use sold_out::{SoldOut, Verdict};

/// The claim path, as the HTTP layer sees it.
pub struct Claims {
    store: Store,
    combiner: Combiner,
    sold_out: Arc<SoldOut>,
}

impl Claims {
    pub fn new(store: Store) -> Claims {
        Claims {
            combiner: Combiner::new(),
            sold_out: Arc::new(SoldOut::new()),
            store,
        }
    }

    /// Decides a claim and calls `done` with the outcome, on this thread or
    /// on the thread of the claim that leads its batch.
    ///
    /// A claim with an idempotency key is answered from the sold-out memory
    /// only when the key was never recorded: a replay wins over "sold out"
    /// (one read of the key, see [`Store::recorded_key`]).
    pub fn submit(&self, coupon: CouponName, claim: BatchClaim, done: Done) {
        match self.sold_out.verdict(&self.store, &coupon, &claim.user) {
            Verdict::Known(outcome) => match &claim.key {
                None => done(outcome),
                Some(key) => done(self.unless_recorded(&coupon, &claim.user, key, outcome)),
            },
            Verdict::Open => self
                .combiner
                .submit(&self.store, &self.sold_out, coupon, claim, done),
        }
    }

    /// Queues a claim behind `coupon`'s running batch, if one is running
    /// and its queue has room for a whole batch: `make` is then called
    /// (once, while the queue is held) for the claim and what answers it.
    /// Never waits for the database, so a thread that must not wait may
    /// call it; false when the claim did not join.
    pub fn join_running(
        &self,
        coupon: &CouponName,
        make: impl FnOnce() -> (BatchClaim, Done),
    ) -> bool {
        self.combiner.join_running(coupon, make)
    }

    /// `outcome`, unless `key` is recorded for a claim: then what the
    /// record says.
    fn unless_recorded(
        &self,
        coupon: &CouponName,
        user: &UserId,
        key: &IdempotencyKey,
        outcome: Result<ClaimOutcome, StoreError>,
    ) -> Result<ClaimOutcome, StoreError> {
        let Some(record) = self.store.recorded_key(Operation::Claim, key)? else {
            return outcome;
        };
        Ok(match record.verdict(&claim_request(coupon, user)) {
            KeyVerdict::Replay {
                remaining_amount: Some(remaining_amount),
            } => ClaimOutcome::Replayed { remaining_amount },
            _ => ClaimOutcome::KeyMismatch,
        })
    }

    /// Gives `user`'s unit of `coupon` back (see `Store::release_claim`).
    ///
    /// A release does not go through the combiner: it is one transaction of
    /// its own, under the same per-coupon advisory lock as claim batches, so
    /// the database orders it with this process's batch in flight and with
    /// every other server's. What this process remembers about the coupon
    /// being sold out is dropped before the answer, whatever the outcome
    /// may have been (a failed COMMIT may still have committed): the next
    /// claim here is decided by a transaction, and sees the unit.
    pub fn release(
        &self,
        coupon: &CouponName,
        user: &UserId,
        key: Option<&IdempotencyKey>,
    ) -> Result<ReleaseOutcome, StoreError> {
        let outcome = self.store.release_claim(coupon, user, key);
        if !matches!(
            outcome,
            Ok(ReleaseOutcome::CouponNotFound
                | ReleaseOutcome::ClaimNotFound
                | ReleaseOutcome::Replayed { .. }
                | ReleaseOutcome::KeyMismatch)
        ) {
            self.sold_out.forget(Some(coupon));
        }
        outcome
    }

    /// Where the freshness listener reports (see `store::freshness`).
    pub fn stock_events(&self) -> Arc<dyn StockEvents> {
        Arc::clone(&self.sold_out) as Arc<dyn StockEvents>
    }

    /// Claims queued behind their coupon's running transaction.
    pub fn waiting(&self) -> usize {
        self.combiner.waiting()
    }

    pub fn batch_stats(&self) -> &BatchStats {
        self.combiner.stats()
    }

    /// Sold-out coupons answered from memory, and by an index probe.
    pub fn sold_out_sizes(&self) -> (usize, usize) {
        self.sold_out.sizes()
    }

    /// Whether the sold-out memory may answer now, and the listener's counts.
    pub fn freshness(&self) -> Freshness {
        self.sold_out.freshness()
    }

    /// The claim path's Prometheus metrics that are kept as things happen
    /// (batch sizes, the freshness listener's counters), for a registry to
    /// gather.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let mut collectors = self.batch_stats().collectors();
        collectors.extend(self.sold_out.collectors());
        collectors
    }
}
