use crate::domain::{Amount, Coupon, CouponName};

use super::{Store, StoreError};

impl Store {
    /// Inserts a new coupon with all its stock; `None` when the name is taken.
    pub fn create_coupon(
        &self,
        name: &CouponName,
        amount: Amount,
    ) -> Result<Option<Coupon>, StoreError> {
        let inserted = self.serializable(|tx, stmts| {
            tx.execute(&stmts.insert_coupon, &[&name.as_str(), &amount.get()])
        })?;
        Ok((inserted == 1).then(|| Coupon {
            name: name.to_string(),
            amount: amount.get(),
            remaining_amount: amount.get(),
            claimed_by: Vec::new(),
        }))
    }

    pub fn coupon(&self, name: &CouponName) -> Result<Option<Coupon>, StoreError> {
        self.snapshot(|tx, stmts| {
            let Some(row) = tx.query_opt(&stmts.coupon_counts, &[&name.as_str()])? else {
                return Ok(None);
            };
            let claimed_by = tx
                .query(&stmts.claimed_by, &[&name.as_str()])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(Some(Coupon {
                name: name.to_string(),
                amount: row.get(0),
                remaining_amount: row.get(1),
                claimed_by,
            }))
        })
    }
}
