//! Claims decided in one statement, each its own transaction: a claim
//! alone on its coupon (`flash_coupons_claim_one`), and a batch whose claims
//! carry no idempotency key twice (`flash_coupons_claim_batch`). Both only try the
//! coupon's claim lock; when another server's batch holds it, or the
//! attempt fails to serialize, they give way to the batch path of
//! [`Store::claim_batch`], which waits for the lock before its snapshot.
//! On a hot coupon a batch's six round trips (claim lock, BEGIN, row lock,
//! inserts, stock, COMMIT with the unlock) were most of what it cost the
//! database and the server; here they are one.

use std::collections::HashSet;

use postgres::Row;
use postgres::types::ToSql;

use crate::domain::{
    ClaimOutcome, CouponName, IdempotencyKey, UserId, claim_request, decide_in_order,
};

use super::claim::{BatchClaim, BatchResult, claim_lock_key};
use super::manager::Conn;
use super::{Store, StoreError};

impl Store {
    /// Decides and records one claim in one round trip, when no other
    /// server is running a batch on its coupon; `None` when one is (the
    /// caller then takes the batch path, which waits its turn), and the
    /// same when the attempt fails to serialize: it is not retried here,
    /// and not counted as a retry. One call of `flash_coupons_claim_one`
    /// (schema.sql), which tries the coupon's claim lock for its
    /// transaction: the same rules and lock as a batch (see
    /// [`Store::claim_batch`]), whose statements go one round trip each,
    /// which on claims spread over many coupons (one claim per batch) cost
    /// more than the claim itself.
    ///
    /// The call is a prepared statement with the name, the user id and the
    /// lock key bound to it, sent as Bind, Execute and Sync at once. Run
    /// alone, it is a transaction of its own, committed at the Sync and
    /// rolled back on any error (an error at the commit included): nothing
    /// is left to end on the connection, whatever failed. It runs at the
    /// pooled session's defaults (see `session`): SERIALIZABLE, and a
    /// statement timeout shorter than the deadline, since the database has
    /// all of it at once and a cut connection (past the deadline, see
    /// `watchdog`) does not stop it: the database gives up first, so that a
    /// claim answered 503 is not committed afterwards.
    ///
    /// With an idempotency key, the function answers a recorded key first
    /// and records the key of a granted claim, in the same transaction.
    pub(super) fn claim_one(
        &self,
        coupon: &CouponName,
        claim: &BatchClaim,
    ) -> Result<Option<BatchResult>, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let lock_key = claim_lock_key(coupon);
        let idempotency_key = claim.key.as_ref().map(IdempotencyKey::as_str);
        let request = claim
            .key
            .as_ref()
            .map(|_| claim_request(coupon, &claim.user));
        let params: [&(dyn ToSql + Sync); 6] = [
            &coupon.as_str(),
            &claim.user.as_str(),
            &lock_key,
            &idempotency_key,
            &request,
            &self.idempotency_ttl_hours,
        ];
        let rows = match client.run("a one-claim read-write transaction", |inner| {
            inner.query(&stmts.claim_one, &params)
        }) {
            Ok(rows) => rows,
            // Contended after all (the lock was free when tried, but a batch
            // had committed since this transaction's snapshot): the batch
            // path waits for the lock before its snapshot.
            Err(err) => {
                return match super::failure(client, err) {
                    super::Failure::Retry { .. } => Ok(None),
                    super::Failure::Fatal(err) => Err(err),
                };
            }
        };
        match rows.as_slice() {
            [row] => match one_claim_result(row) {
                Some(OneClaim::Decided(result)) => Ok(Some(result)),
                Some(OneClaim::Busy) => Ok(None),
                None => Err(StoreError::Internal(
                    "flash_coupons_claim_one gave no usable row".into(),
                )),
            },
            rows => Err(StoreError::Internal(
                format!("flash_coupons_claim_one gave {} rows, not one", rows.len()).into(),
            )),
        }
    }
}

enum OneClaim {
    Decided(BatchResult),
    /// Another session holds the coupon's claim lock.
    Busy,
}

/// The outcome row of [`Store::claim_one`]'s call, as a batch of one.
fn one_claim_result(row: &Row) -> Option<OneClaim> {
    let remaining: Option<i32> = row.try_get("remaining").ok()?;
    let windowed: bool = row.try_get("windowed").ok()?;
    let outcome = match (row.try_get::<_, &str>("outcome").ok()?, remaining) {
        ("busy", None) => return Some(OneClaim::Busy),
        ("claimed", Some(remaining_amount)) => ClaimOutcome::Claimed { remaining_amount },
        ("coupon_not_found", None) => ClaimOutcome::CouponNotFound,
        ("not_started", Some(_)) => ClaimOutcome::NotStarted,
        ("expired", Some(_)) => ClaimOutcome::Expired,
        ("already_claimed", Some(_)) => ClaimOutcome::AlreadyClaimed,
        ("out_of_stock", Some(_)) => ClaimOutcome::OutOfStock,
        ("replayed", Some(remaining_amount)) => ClaimOutcome::Replayed { remaining_amount },
        ("key_mismatch", None) => ClaimOutcome::KeyMismatch,
        _ => return None,
    };
    Some(OneClaim::Decided(BatchResult {
        outcomes: vec![outcome],
        remaining,
        windowed,
    }))
}

impl Store {
    /// Decides and records a batch of claims in one round trip, when no
    /// other server is running a batch on the coupon; `None` when one is,
    /// or when the attempt fails to serialize (not retried here, and not
    /// counted as a retry): the caller then takes the batch path. The
    /// outcomes are those of handling the claims one at a time in the given
    /// order, as the batch path's, and a granted claim's idempotency key is
    /// recorded in the same transaction. No key may be on two claims of the
    /// batch. A batch in which a key has a record is left to the batch path
    /// (`None`), which answers that claim from the record.
    ///
    /// Run as [`Store::claim_one`] runs its call: a prepared statement at
    /// the pooled session's defaults, a transaction of its own.
    pub(super) fn claim_batch_at_once(
        &self,
        coupon: &CouponName,
        claims: &[BatchClaim],
    ) -> Result<Option<BatchResult>, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let lock_key = claim_lock_key(coupon);
        let claimants: Vec<&str> = claims.iter().map(|c| c.user.as_str()).collect();
        let requests: Vec<Option<String>> = claims
            .iter()
            .map(|c| c.key.as_ref().map(|_| claim_request(coupon, &c.user)))
            .collect();
        // NULL arrays when no claim has a key: the function skips the keys.
        let keyed = requests.iter().any(Option::is_some);
        let keys: Option<Vec<Option<&str>>> = keyed.then(|| {
            claims
                .iter()
                .map(|c| c.key.as_ref().map(IdempotencyKey::as_str))
                .collect()
        });
        let fingerprints = keyed.then_some(&requests);
        let params: [&(dyn ToSql + Sync); 6] = [
            &coupon.as_str(),
            &claimants,
            &lock_key,
            &keys,
            &fingerprints,
            &self.idempotency_ttl_hours,
        ];
        let row = match client.run("a batch read-write transaction", |inner| {
            inner.query_one(&stmts.claim_batch, &params)
        }) {
            Ok(row) => row,
            Err(err) => {
                return match super::failure(client, err) {
                    super::Failure::Retry { .. } => Ok(None),
                    super::Failure::Fatal(err) => Err(err),
                };
            }
        };
        let users: Vec<UserId> = claims.iter().map(|c| c.user.clone()).collect();
        batch_result(&row, &users).map_err(|what| {
            StoreError::Internal(format!("flash_coupons_claim_batch gave {what}").into())
        })
    }
}

/// The outcomes of a batch from `flash_coupons_claim_batch`'s row for the
/// claims of `users`; `None` when the coupon's claim lock was busy.
fn batch_result(row: &Row, users: &[UserId]) -> Result<Option<BatchResult>, String> {
    let field = |e: postgres::Error| format!("an unreadable row: {e}");
    let outcome: &str = row.try_get("outcome").map_err(field)?;
    let stock: Option<i32> = row.try_get("stock").map_err(field)?;
    let windowed: bool = row.try_get("windowed").map_err(field)?;
    let every = |outcome: ClaimOutcome, remaining: Option<i32>| {
        Ok(Some(BatchResult {
            outcomes: vec![outcome; users.len()],
            remaining,
            windowed,
        }))
    };
    match (outcome, stock) {
        ("busy", _) => Ok(None),
        ("coupon_not_found", None) => every(ClaimOutcome::CouponNotFound, None),
        ("not_started", Some(stock)) => every(ClaimOutcome::NotStarted, Some(stock)),
        ("expired", Some(stock)) => every(ClaimOutcome::Expired, Some(stock)),
        ("decided", Some(stock)) => {
            let holders: Vec<String> = row.try_get("holders").map_err(field)?;
            let inserted: i32 = row.try_get("granted").map_err(field)?;
            let holders: HashSet<&str> = holders.iter().map(String::as_str).collect();
            let (outcomes, granted) =
                decide_in_order(users, |u| holders.contains(u.as_str()), stock);
            // Never more than `stock`, an i32 itself.
            let taken = i32::try_from(granted.len()).unwrap_or(i32::MAX);
            if taken != inserted {
                return Err(format!("{inserted} claims inserted for {taken} granted"));
            }
            Ok(Some(BatchResult {
                outcomes,
                remaining: Some(stock - taken),
                windowed,
            }))
        }
        (outcome, stock) => Err(format!("the outcome {outcome:?} with the stock {stock:?}")),
    }
}
