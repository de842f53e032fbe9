use std::collections::HashSet;

use time::OffsetDateTime;

use crate::domain::{ClaimOutcome, CouponName, SaleWindow, UserId, WindowState, decide_in_order};

use super::{Store, StoreError};

/// A decided batch: each claim's outcome, and the stock left after it
/// (`None` when the coupon does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub outcomes: Vec<ClaimOutcome>,
    pub remaining: Option<i32>,
    /// The coupon has a sale window, so its answers depend on the clock.
    pub windowed: bool,
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
                    windowed: false,
                });
            };
            let remaining: i32 = row.get(0);
            let window = SaleWindow::new(row.get(1), row.get(2)).unwrap_or_default();
            let now: OffsetDateTime = row.get(3);
            let closed = match window.state_at(now) {
                WindowState::Open => None,
                WindowState::NotStarted => Some(ClaimOutcome::NotStarted),
                WindowState::Expired => Some(ClaimOutcome::Expired),
            };
            if let Some(outcome) = closed {
                return Ok(BatchResult {
                    outcomes: vec![outcome; users.len()],
                    remaining: Some(remaining),
                    windowed: true,
                });
            }
            let (outcomes, granted) = if remaining > 0 {
                // Insert every newcomer and let the unique key say who
                // already holds the coupon, rather than reading for them
                // first: a read of the key takes SERIALIZABLE predicate
                // locks on its index pages, and claims on neighbouring
                // coupons writing there then count as conflicts. Those
                // inserted past the stock are removed again below.
                let mut seen = HashSet::new();
                let distinct: Vec<&str> =
                    ids.iter().copied().filter(|id| seen.insert(*id)).collect();
                let inserted: HashSet<String> = tx
                    .query(&stmts.insert_new_claims, &[&name, &distinct])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let (outcomes, granted) =
                    decide_in_order(users, |u| !inserted.contains(u.as_str()), remaining);
                let kept: HashSet<&str> = granted.iter().map(|u| u.as_str()).collect();
                let surplus: Vec<&str> = distinct
                    .iter()
                    .copied()
                    .filter(|u| inserted.contains(*u) && !kept.contains(u))
                    .collect();
                if !surplus.is_empty() {
                    tx.execute(&stmts.drop_claims, &[&name, &surplus])?;
                }
                (outcomes, granted)
            } else {
                // Sold out: only who holds it matters (409 or 400).
                let holders: HashSet<String> = tx
                    .query(&stmts.holders_among, &[&name, &ids])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                decide_in_order(users, |u| holders.contains(u.as_str()), remaining)
            };
            // Never more than `remaining`, an i32 itself.
            let taken = i32::try_from(granted.len()).unwrap_or(i32::MAX);
            if taken > 0 {
                tx.execute(&stmts.take_stock, &[&name, &taken])?;
            }
            Ok(BatchResult {
                outcomes,
                remaining: Some(remaining - taken),
                windowed: !window.is_always_open(),
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
