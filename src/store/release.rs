//! Giving a claimed unit back (an operator undoing a redemption).

use time::OffsetDateTime;

use crate::domain::{CouponName, UserId};

use super::claim::claim_lock_key;
use super::{Store, StoreError};

/// What a release came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The claim is gone and its unit is back: the stock after it.
    Released {
        remaining_amount: i32,
    },
    CouponNotFound,
    /// The coupon exists and the user holds none of it.
    ClaimNotFound,
}

impl Store {
    /// Releases `user`'s claim on `coupon` in one SERIALIZABLE transaction,
    /// retried like a claim: the claim row leaves `claims`, the coupon's
    /// remaining_amount rises by one (never above its amount), and the claim
    /// is recorded in `claim_releases` with its claimed_at and the release
    /// time. Nothing changes unless all of it does.
    ///
    /// It runs under the coupon's claim lock, taken exactly as a claim batch
    /// takes it (`serializable_under_lock`), so over every server a coupon's
    /// releases and claim batches take turns, one transaction at a time. The
    /// sale window does not matter: an operator may release at any time.
    pub fn release_claim(
        &self,
        coupon: &CouponName,
        user: &UserId,
    ) -> Result<ReleaseOutcome, StoreError> {
        let (name, user) = (coupon.as_str(), user.as_str());
        self.serializable_under_lock(claim_lock_key(coupon), |tx, stmts, _waited| {
            // The same row lock as a claim, first, so that a release queues
            // behind a claim transaction that does not hold the advisory
            // lock (a server of an older build) instead of aborting late.
            if tx.query_opt(&stmts.lock_coupon, &[&name])?.is_none() {
                return Ok(ReleaseOutcome::CouponNotFound);
            }
            let Some(claim) = tx.query_opt(&stmts.remove_claim, &[&name, &user])? else {
                return Ok(ReleaseOutcome::ClaimNotFound);
            };
            let claimed_at: OffsetDateTime = claim.get("claimed_at");
            let remaining: i32 = tx
                .query_one(&stmts.give_back_stock, &[&name])?
                .get("remaining_amount");
            tx.execute(&stmts.record_release, &[&name, &user, &claimed_at])?;
            Ok(ReleaseOutcome::Released {
                remaining_amount: remaining,
            })
        })
    }
}
