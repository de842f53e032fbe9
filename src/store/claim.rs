use std::collections::HashSet;

use crate::domain::{ClaimOutcome, CouponName, UserId, decide_in_order};

use super::{Store, StoreError};

/// A decided batch: each claim's outcome, and the stock left after it
/// (`None` when the coupon does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub outcomes: Vec<ClaimOutcome>,
    pub remaining: Option<i32>,
}

impl Store {
    /// Decides and records a batch of claims on one coupon in one
    /// SERIALIZABLE transaction. The outcomes are, claim for claim, what
    /// handling them one at a time in the given order would give.
    pub fn claim_batch(
        &self,
        coupon: &CouponName,
        users: &[UserId],
    ) -> Result<BatchResult, StoreError> {
        let name = coupon.as_str();
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        self.serializable(|tx, stmts| {
            // Locking the coupon row first makes claims on one coupon queue
            // here instead of each doing its reads and then aborting.
            let Some(row) = tx.query_opt(&stmts.lock_coupon, &[&name])? else {
                return Ok(BatchResult {
                    outcomes: vec![ClaimOutcome::CouponNotFound; users.len()],
                    remaining: None,
                });
            };
            let remaining: i32 = row.get(0);
            let holders: HashSet<String> = tx
                .query(&stmts.holders_among, &[&name, &ids])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let (outcomes, granted) =
                decide_in_order(users, |u| holders.contains(u.as_str()), remaining);
            // Never more than `remaining`, an i32 itself.
            let taken = i32::try_from(granted.len()).unwrap_or(i32::MAX);
            if taken > 0 {
                let granted_ids: Vec<&str> = granted.iter().map(|u| u.as_str()).collect();
                tx.execute(&stmts.insert_claims, &[&name, &granted_ids])?;
                tx.execute(&stmts.take_stock, &[&name, &taken])?;
            }
            Ok(BatchResult {
                outcomes,
                remaining: Some(remaining - taken),
            })
        })
    }
}

impl Store {
    /// Up to `limit` holders of a coupon, in claim order.
    pub fn holders(&self, coupon: &CouponName, limit: i64) -> Result<Vec<String>, StoreError> {
        self.read(|client, stmts| {
            Ok(client
                .query(&stmts.holders_limited, &[&coupon.as_str(), &limit])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    /// Whether `user` holds `coupon`: one index probe.
    pub fn holds(&self, coupon: &CouponName, user: &UserId) -> Result<bool, StoreError> {
        self.read(|client, stmts| {
            Ok(client
                .query_opt(&stmts.holds, &[&coupon.as_str(), &user.as_str()])?
                .is_some())
        })
    }
}
