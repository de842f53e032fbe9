use std::collections::HashSet;

use crate::domain::{ClaimOutcome, CouponName, UserId, decide_in_order};

use super::{Store, StoreError};

impl Store {
    /// Decides and records a batch of claims on one coupon in one
    /// SERIALIZABLE transaction. The outcomes are, claim for claim, what
    /// handling them one at a time in the given order would give.
    pub fn claim_batch(
        &self,
        coupon: &CouponName,
        users: &[UserId],
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        let name = coupon.as_str();
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        self.serializable(|tx, stmts| {
            // Locking the coupon row first makes claims on one coupon queue
            // here instead of each doing its reads and then aborting.
            let Some(row) = tx.query_opt(&stmts.lock_coupon, &[&name])? else {
                return Ok(vec![ClaimOutcome::CouponNotFound; users.len()]);
            };
            let remaining: i32 = row.get(0);
            let holders: HashSet<String> = tx
                .query(&stmts.holders_among, &[&name, &ids])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let (outcomes, granted) =
                decide_in_order(users, |u| holders.contains(u.as_str()), remaining);
            if !granted.is_empty() {
                let granted_ids: Vec<&str> = granted.iter().map(|u| u.as_str()).collect();
                let taken = i32::try_from(granted.len()).expect("batch larger than the stock type");
                tx.execute(&stmts.insert_claims, &[&name, &granted_ids])?;
                tx.execute(&stmts.take_stock, &[&name, &taken])?;
            }
            Ok(outcomes)
        })
    }
}
