//! Claims on a sold-out coupon, answered without a write.
//!
//! Stock never rises in this service, and every claim row is inserted in
//! the same transaction that takes a unit. So once a coupon is seen at 0,
//! its holders are final: a holder gets 409 and anyone else 400, from memory
//! when the holders are few enough, from one index probe otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::domain::{ClaimOutcome, CouponName, UserId};
use crate::store::{Store, StoreError};

/// Holders kept in memory for one coupon at most.
const MAX_HOLDERS_PER_COUPON: usize = 10_000;
/// Holders kept in memory over all coupons at most.
const MAX_HOLDERS_IN_MEMORY: usize = 1_000_000;
/// Sold-out coupons remembered at most; later ones take the normal path.
const MAX_COUPONS: usize = 100_000;

enum Holders {
    InMemory(HashSet<String>),
    InDatabase,
}

pub enum Verdict {
    Known(Result<ClaimOutcome, StoreError>),
    Open,
}

pub struct SoldOut {
    known: RwLock<HashMap<CouponName, Holders>>,
    holders_in_memory: AtomicUsize,
}

impl SoldOut {
    pub fn new() -> SoldOut {
        SoldOut {
            known: RwLock::new(HashMap::new()),
            holders_in_memory: AtomicUsize::new(0),
        }
    }

    pub fn verdict(&self, store: &Store, coupon: &CouponName, user: &UserId) -> Verdict {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let decide = |holds: bool| {
            if holds {
                ClaimOutcome::AlreadyClaimed
            } else {
                ClaimOutcome::OutOfStock
            }
        };
        match known.get(coupon) {
            None => Verdict::Open,
            Some(Holders::InMemory(set)) => Verdict::Known(Ok(decide(set.contains(user.as_str())))),
            Some(Holders::InDatabase) => {
                drop(known);
                Verdict::Known(store.holds(coupon, user).map(decide))
            }
        }
    }

    /// Records that `coupon` is at 0, with its holders. A failed read is
    /// simply not recorded: the next batch that sees 0 tries again.
    pub fn learn(&self, store: &Store, coupon: &CouponName) {
        {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            if known.contains_key(coupon) || known.len() >= MAX_COUPONS {
                return;
            }
        }
        let Ok(holders) = store.holders(coupon, MAX_HOLDERS_PER_COUPON as i64 + 1) else {
            return;
        };
        let count = holders.len();
        let fits = count <= MAX_HOLDERS_PER_COUPON
            && self
                .holders_in_memory
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                    (used + count <= MAX_HOLDERS_IN_MEMORY).then_some(used + count)
                })
                .is_ok();
        let entry = if fits {
            Holders::InMemory(holders.into_iter().collect())
        } else {
            Holders::InDatabase
        };
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.contains_key(coupon) {
            if fits {
                self.holders_in_memory.fetch_sub(count, Ordering::SeqCst);
            }
            return;
        }
        known.insert(coupon.clone(), entry);
    }

    /// How many sold-out coupons are answered from memory and from the
    /// database, for /metrics.
    pub fn sizes(&self) -> (usize, usize) {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let in_memory = known
            .values()
            .filter(|h| matches!(h, Holders::InMemory(_)))
            .count();
        (in_memory, known.len() - in_memory)
    }
}
