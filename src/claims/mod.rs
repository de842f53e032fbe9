//! Deciding claims: combining concurrent claims on one coupon into one
//! transaction, and answering claims on sold-out coupons without a write.

mod combiner;
mod sold_out;

use crate::domain::{CouponName, UserId};
use crate::store::Store;

use combiner::Combiner;
pub use combiner::{BatchStats, Done};
use sold_out::{SoldOut, Verdict};

/// The claim path, as the HTTP layer sees it.
pub struct Claims {
    store: Store,
    combiner: Combiner,
    sold_out: SoldOut,
}

impl Claims {
    pub fn new(store: Store) -> Claims {
        Claims {
            combiner: Combiner::new(),
            sold_out: SoldOut::new(),
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
}
