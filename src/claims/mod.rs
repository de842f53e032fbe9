//! Deciding claims: combining concurrent claims on one coupon into one
//! transaction, answering claims on sold-out coupons without a write, and
//! giving claimed units back.

mod combiner;
mod sold_out;

use std::sync::Arc;

use crate::domain::{CouponName, UserId};
use crate::store::{ReleaseOutcome, StockEvents, Store, StoreError};

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
    pub fn submit(&self, coupon: CouponName, user: UserId, done: Done) {
        match self.sold_out.verdict(&self.store, &coupon, &user) {
            Verdict::Known(outcome) => done(outcome),
            Verdict::Open => self
                .combiner
                .submit(&self.store, &self.sold_out, coupon, user, done),
        }
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
    ) -> Result<ReleaseOutcome, StoreError> {
        let outcome = self.store.release_claim(coupon, user);
        if !matches!(
            outcome,
            Ok(ReleaseOutcome::CouponNotFound | ReleaseOutcome::ClaimNotFound)
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
