//! Giving a claimed unit back (an operator undoing a redemption).

use time::OffsetDateTime;

use crate::domain::{CouponName, IdempotencyKey, Operation, UserId, release_request};

use super::idempotency::{KeyVerdict, record_keys, recorded_keys};

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
    /// The key was recorded by this same release, which took effect then:
    /// its answer, with the stock after it, again.
    Replayed {
        remaining_amount: i32,
    },
    /// The key was recorded for another request.
    KeyMismatch,
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
    ///
    /// With an idempotency key, a recorded key answers first, and a release
    /// that takes effect records the key in the same transaction.
    pub fn release_claim(
        &self,
        coupon: &CouponName,
        user: &UserId,
        key: Option<&IdempotencyKey>,
    ) -> Result<ReleaseOutcome, StoreError> {
        let request = key.map(|_| release_request(coupon, user));
        let ttl = self.idempotency_ttl_hours;
        let (name, user) = (coupon.as_str(), user.as_str());
        self.serializable_under_lock(claim_lock_key(coupon), |tx, stmts, _waited| {
            if let (Some(key), Some(request)) = (key, &request) {
                let recorded = recorded_keys(tx, stmts, Operation::Release, &[key.as_str()], ttl)?;
                if let Some(record) = recorded.get(key.as_str()) {
                    return Ok(match record.verdict(request) {
                        KeyVerdict::Replay {
                            remaining_amount: Some(remaining_amount),
                        } => ReleaseOutcome::Replayed { remaining_amount },
                        _ => ReleaseOutcome::KeyMismatch,
                    });
                }
            }
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
            if let (Some(key), Some(request)) = (key, &request) {
                let record = [(key.as_str(), request.as_str(), Some(remaining))];
                record_keys(tx, stmts, Operation::Release, &record, 200, ttl)?;
            }
            Ok(ReleaseOutcome::Released {
                remaining_amount: remaining,
            })
        })
    }
}
