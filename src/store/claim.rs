//! Claims: a batch decided in one SERIALIZABLE transaction under the
//! coupon's claim lock, a claim alone on its coupon in one round trip, the
//! reads the sold-out memory needs (see `claims::sold_out`), and the claim
//! lock itself, which every server on the database must agree on.

use std::collections::{HashMap, HashSet};

use postgres::Row;
use time::OffsetDateTime;

use crate::domain::{
    ClaimOutcome, CouponName, IdempotencyKey, Operation, SaleWindow, UserId, WindowState,
    claim_request, decide_in_order,
};

use super::idempotency::{KeyVerdict, RecordedKey, reserve_keys, settle_keys};
use super::session::BEGIN_SERIALIZABLE;
use super::statements::Statements;
use super::{Store, StoreError};

/// One claim of a batch: who claims, and the idempotency key the request
/// came with, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchClaim {
    pub user: UserId,
    pub key: Option<IdempotencyKey>,
}

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
    ///
    /// Each attempt holds the coupon's claim lock (see [`claim_lock_key`])
    /// from before its transaction begins until after it ends, so that one
    /// coupon's claim transactions run one at a time over every server on
    /// the database, as the combiner makes them do within one process. When
    /// an attempt had to wait for the lock (another server's batch held
    /// it), `late` is asked for the claims that arrived meanwhile, and they
    /// join the batch after the others: one transaction per turn of this
    /// server, however long the turn took to come. The outcomes are in the
    /// order of `users` and then of what `late` gave.
    ///
    /// A claim whose idempotency key is recorded is answered from the
    /// record (see [`KeyPlan`]); a granted claim with a key records it in
    /// the same transaction. A claim whose key an earlier claim of the batch
    /// came with, for another request, is decided in a transaction of its
    /// own once that one has committed (the only claims decided out of
    /// order, and only ever from a client that reuses a key).
    pub fn claim_batch(
        &self,
        coupon: &CouponName,
        claims: Vec<BatchClaim>,
        mut late: impl FnMut() -> Vec<BatchClaim>,
    ) -> Result<BatchResult, StoreError> {
        // One statement when it can do (see `one_statement`).
        if let [claim] = claims.as_slice() {
            if let Some(decided) = self.claim_one(coupon, claim)? {
                return Ok(decided);
            }
        } else if distinct_keys(&claims)
            && let Some(decided) = self.claim_batch_at_once(coupon, &claims)?
        {
            return Ok(decided);
        }
        let name = coupon.as_str();
        let ttl = self.idempotency_ttl_hours;
        let mut claims = claims;
        let key = claim_lock_key(coupon);
        // The claims left to a later transaction (see `Step::Defer`), by
        // their place in `claims`; set by the attempt that commits.
        let mut deferred = Vec::new();
        let mut result = self.serializable_under_lock(key, |tx, stmts, waited| {
            if waited {
                claims.extend(late());
            }
            let claims = claims.as_slice();
            // Locking the coupon row first makes claims on one coupon queue
            // here instead of each doing its reads and then aborting.
            let row = tx.query_opt(&stmts.lock_coupon, &[&name])?;
            let requests: Vec<Option<String>> = claims
                .iter()
                .map(|c| c.key.as_ref().map(|_| claim_request(coupon, &c.user)))
                .collect();
            let keyed: Vec<(&str, &str)> = claims
                .iter()
                .zip(&requests)
                .filter_map(|(c, request)| Some((c.key.as_ref()?.as_str(), request.as_deref()?)))
                .collect();
            let reserved = reserve_keys(tx, stmts, Operation::Claim, &keyed, ttl)?;
            let plan = KeyPlan::of(claims, &requests, &reserved.recorded);
            deferred = plan.deferred();
            let result = decide_batch(tx, stmts, name, row, &plan, &plan.deciding(claims))?;
            // Each key reserved was its first claim's, decided above.
            let settled: Vec<(&str, Option<i32>)> = claims
                .iter()
                .zip(&result.outcomes)
                .zip(&plan.steps)
                .filter(|(_, step)| **step == Step::Decide)
                .filter_map(|((claim, outcome), _)| {
                    let slot = reserved.slots.get(claim.key.as_ref()?.as_str())?;
                    let stock = match outcome {
                        ClaimOutcome::Claimed { remaining_amount } => Some(*remaining_amount),
                        _ => None,
                    };
                    Some((slot.as_str(), stock))
                })
                .collect();
            settle_keys(tx, stmts, &settled, 200)?;
            Ok(result)
        })?;
        if deferred.is_empty() {
            return Ok(result);
        }
        // Now that the keys they share are settled, one way or the other.
        let later: Vec<BatchClaim> = deferred.iter().map(|&i| claims[i].clone()).collect();
        let decided = self.claim_batch(coupon, later, Vec::new)?;
        for (&i, outcome) in deferred.iter().zip(decided.outcomes) {
            result.outcomes[i] = outcome;
        }
        if decided.remaining.is_some() {
            result.remaining = decided.remaining;
        }
        result.windowed |= decided.windowed;
        Ok(result)
    }
}

/// No idempotency key is on two claims of `claims`: the one-statement batch
/// leaves a key repeated within a batch (its later claims follow the first
/// or wait for it, see [`KeyPlan`]) to the batch path.
fn distinct_keys(claims: &[BatchClaim]) -> bool {
    let mut seen = HashSet::new();
    claims
        .iter()
        .filter_map(|c| c.key.as_ref())
        .all(|key| seen.insert(key.as_str()))
}

/// Decides a batch on the coupon `name`, whose row (`None`: no such
/// coupon) is locked, in the transaction `tx`: the claims `plan` answers
/// from records as it says, and `deciding` in order.
fn decide_batch(
    tx: &mut postgres::Client,
    stmts: &Statements,
    name: &str,
    row: Option<Row>,
    plan: &KeyPlan,
    deciding: &[UserId],
) -> Result<BatchResult, postgres::Error> {
    let Some(row) = row else {
        return Ok(BatchResult {
            outcomes: plan.resolve(vec![ClaimOutcome::CouponNotFound; deciding.len()]),
            remaining: None,
            windowed: false,
        });
    };
    let remaining: i32 = row.get("remaining_amount");
    let window = SaleWindow::new(row.get("starts_at"), row.get("expires_at")).unwrap_or_default();
    let now: OffsetDateTime = row.get("now");
    let closed = match window.state_at(now) {
        WindowState::Open => None,
        WindowState::NotStarted => Some(ClaimOutcome::NotStarted),
        WindowState::Expired => Some(ClaimOutcome::Expired),
    };
    if let Some(outcome) = closed {
        return Ok(BatchResult {
            outcomes: plan.resolve(vec![outcome; deciding.len()]),
            remaining: Some(remaining),
            windowed: true,
        });
    }
    let (decided, granted) = insert_and_decide(tx, stmts, name, deciding, remaining)?;
    // Never more than `remaining`, an i32 itself.
    let taken = i32::try_from(granted.len()).unwrap_or(i32::MAX);
    if taken > 0 {
        tx.execute(&stmts.take_stock, &[&name, &taken])?;
    }
    Ok(BatchResult {
        outcomes: plan.resolve(decided),
        remaining: Some(remaining - taken),
        windowed: !window.is_always_open(),
    })
}

/// How each claim of a batch is decided, as far as idempotency keys go:
/// in order, as if one at a time. A claim whose key is recorded (and live)
/// is answered from the record. The first claim of the batch with a key is
/// decided as any claim; a later one with the same key and the same request
/// follows it (gets its answer again, a grant as a replay). A later one with
/// the same key and another request waits for the next transaction: one at
/// a time, it would be a mismatch if the first took effect and a new request
/// if it did not, which only the first's outcome tells. Everything else is
/// decided as any claim.
struct KeyPlan {
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Answered(ClaimOutcome),
    Decide,
    Follow {
        leader: usize,
    },
    /// Left to a transaction after this one, which finds the key recorded
    /// (a mismatch) or not (decided as a new request).
    Defer,
}

impl KeyPlan {
    fn of(
        claims: &[BatchClaim],
        requests: &[Option<String>],
        recorded: &HashMap<String, RecordedKey>,
    ) -> KeyPlan {
        let mut leaders: HashMap<&str, usize> = HashMap::new();
        let steps = claims
            .iter()
            .enumerate()
            .map(|(i, claim)| {
                let Some(key) = claim.key.as_ref().map(IdempotencyKey::as_str) else {
                    return Step::Decide;
                };
                let request = requests[i].as_deref().unwrap_or_default();
                if let Some(record) = recorded.get(key) {
                    return Step::Answered(match record.verdict(request) {
                        // A claim's record always has its stock: one without
                        // is not this claim's.
                        KeyVerdict::Replay {
                            remaining_amount: Some(remaining_amount),
                        } => ClaimOutcome::Replayed { remaining_amount },
                        _ => ClaimOutcome::KeyMismatch,
                    });
                }
                match leaders.get(key) {
                    Some(&leader) if requests[leader] == requests[i] => Step::Follow { leader },
                    Some(_) => Step::Defer,
                    None => {
                        leaders.insert(key, i);
                        Step::Decide
                    }
                }
            })
            .collect();
        KeyPlan { steps }
    }

    /// The users of the claims to decide, in order.
    fn deciding(&self, claims: &[BatchClaim]) -> Vec<UserId> {
        claims
            .iter()
            .zip(&self.steps)
            .filter(|(_, step)| **step == Step::Decide)
            .map(|(claim, _)| claim.user.clone())
            .collect()
    }

    /// The places of the claims left to a later transaction.
    fn deferred(&self) -> Vec<usize> {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, step)| **step == Step::Defer)
            .map(|(i, _)| i)
            .collect()
    }

    /// Every claim's outcome, given those decided (in order); a deferred
    /// claim's is a placeholder, replaced once it is decided.
    fn resolve(&self, decided: Vec<ClaimOutcome>) -> Vec<ClaimOutcome> {
        let mut decided = decided.into_iter();
        let mut outcomes: Vec<ClaimOutcome> = self
            .steps
            .iter()
            .map(|step| match step {
                Step::Answered(outcome) => *outcome,
                // Decided below, and followers after their leaders.
                Step::Decide => decided.next().unwrap_or(ClaimOutcome::KeyMismatch),
                Step::Follow { .. } | Step::Defer => ClaimOutcome::KeyMismatch,
            })
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            if let Step::Follow { leader } = *step {
                outcomes[i] = match outcomes[leader] {
                    ClaimOutcome::Claimed { remaining_amount } => {
                        ClaimOutcome::Replayed { remaining_amount }
                    }
                    leader => leader,
                };
            }
        }
        outcomes
    }
}

/// Decides the claims of `users` (in that order) on the coupon `name`,
/// whose sale is open and which has `remaining` units left, in the
/// transaction `tx`: each claim's outcome, and the users granted a unit,
/// whose claim rows are inserted. Taking the units off the stock is left to
/// the caller.
///
/// No claim row is ever inserted and then deleted: a deleted claim row
/// notifies every server (schema.sql's `claims_removed`), which would make
/// them all forget what they know about sold-out coupons each time a batch
/// sells one out.
fn insert_and_decide<'u>(
    tx: &mut postgres::Client,
    stmts: &Statements,
    name: &str,
    users: &'u [UserId],
    remaining: i32,
) -> Result<(Vec<ClaimOutcome>, Vec<&'u UserId>), postgres::Error> {
    let mut seen = HashSet::new();
    let distinct: Vec<&str> = users
        .iter()
        .map(UserId::as_str)
        .filter(|id| seen.insert(*id))
        .collect();
    // Users tried in order, as many at a time as there are units left to
    // grant: each is inserted, or turned away by the unique key because it
    // holds the coupon already. This asks the key rather than reading it
    // first: a read of the key takes SERIALIZABLE predicate locks on its
    // index pages, and claims on neighbouring coupons writing there would
    // count as conflicts. Usually one round trip; one more per holder found
    // among the users tried.
    let mut holders: HashSet<&str> = HashSet::new();
    let mut granted = 0;
    let mut tried = 0;
    let units = usize::try_from(remaining).unwrap_or(0);
    while granted < units && tried < distinct.len() {
        let next = &distinct[tried..(tried + units - granted).min(distinct.len())];
        tried += next.len();
        let inserted: HashSet<String> = tx
            .query(&stmts.insert_new_claims, &[&name, &next])?
            .iter()
            .map(|r| r.get("user_id"))
            .collect();
        granted += inserted.len();
        holders.extend(next.iter().filter(|id| !inserted.contains(**id)));
    }
    // The stock ran out before these were tried: only whether they hold the
    // coupon matters (409 or 400). Read only at a sell-out.
    let untried = &distinct[tried..];
    if !untried.is_empty() {
        let rows = tx.query(&stmts.holders_among, &[&name, &untried])?;
        let found: HashSet<String> = rows.iter().map(|r| r.get("user_id")).collect();
        holders.extend(untried.iter().filter(|id| found.contains(**id)));
    }
    let decided = decide_in_order(users, |u| holders.contains(u.as_str()), remaining);
    debug_assert_eq!(decided.1.len(), granted, "granted exactly those inserted");
    Ok(decided)
}

impl Store {
    /// Up to `limit` holders of a coupon in claim order, if it is sold out
    /// and has no sale window; `None` otherwise (also when it does not
    /// exist). Stock and holders come from one snapshot: a coupon read at 0
    /// by an earlier transaction may have had a unit given back since.
    pub fn sold_out_holders(
        &self,
        coupon: &CouponName,
        limit: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.read(|client, stmts| {
            let row = client.query_opt(&stmts.sold_out_holders, &[&coupon.as_str(), &limit])?;
            Ok(row
                .filter(|row| row.get::<_, bool>("sold_out"))
                .map(|row| row.get::<_, Vec<String>>("holders")))
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

impl Store {
    /// Runs `body` in a SERIALIZABLE transaction, each attempt with the
    /// session-level advisory lock `key` held around it, retried like
    /// [`Store::serializable`].
    ///
    /// The lock is taken before BEGIN: the transaction's snapshot is taken by
    /// its first statement, after the wait, so it sees every transaction that
    /// held the lock before. (Taken inside the transaction, after the
    /// snapshot, the lock would make conflicts more likely, not fewer.) It
    /// is released after COMMIT or ROLLBACK, in the same message as the
    /// COMMIT: outside a transaction, where idle_in_transaction_session_timeout
    /// does not reach, a session holds it only for the round trip from the
    /// lock to BEGIN. The wait for it is part of the attempt, under the
    /// attempt's deadline (DB_QUERY_TIMEOUT_MS), and, being a statement run
    /// alone, under the pooled session's statement timeout, which ends it a
    /// little before (see `session`): a wait behind another server's batch
    /// takes milliseconds. The lock is tried first, and only waited for
    /// when another session holds it: `body` learns which.
    ///
    /// Releases take the same lock (see `Store::release_claim`), so a
    /// coupon's claim batches and releases take turns over every server.
    /// Coupon creation does not take it: a coupon row is inserted once, and
    /// no claim transaction writes a row that creation reads.
    ///
    /// A connection that may still hold the lock never goes back to the
    /// pool: when releasing it fails, the connection is discarded, and the
    /// database releases the lock when the session ends (also when the
    /// deadline cuts the connection, or `body` panics).
    ///
    /// The lock is released with `pg_advisory_unlock_all()`: a pooled
    /// session holds no other session-level advisory lock (the one-message
    /// claim's is its transaction's, gone with it), so the texts that end
    /// an attempt are constants whatever the key.
    pub(super) fn serializable_under_lock<T>(
        &self,
        key: i64,
        mut body: impl FnMut(&mut postgres::Client, &Statements, bool) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        const COMMIT: &str = "COMMIT; SELECT pg_advisory_unlock_all()";
        const ROLL_BACK: &str = "ROLLBACK; SELECT pg_advisory_unlock_all()";
        const UNLOCK: &str = "SELECT pg_advisory_unlock_all()";
        self.retrying(|client, stmts| {
            let mut unreleased = false;
            let result = client.run("a read-write transaction", |inner| {
                // An error here (the wait cut short) leaves the lock not held.
                let waited: bool = inner.query_one(&stmts.claim_lock, &[&key])?.get("waited");
                let mut committing = false;
                let result = inner
                    .batch_execute(BEGIN_SERIALIZABLE)
                    .and_then(|()| body(inner, stmts, waited))
                    .and_then(|value| {
                        committing = true;
                        inner.batch_execute(COMMIT).map(|()| value)
                    });
                if result.is_err() {
                    // End the transaction, unless the COMMIT did (a failed
                    // COMMIT rolls back, and skips the unlock after it), and
                    // release the lock.
                    let release = if committing { UNLOCK } else { ROLL_BACK };
                    unreleased = inner.is_closed() || inner.batch_execute(release).is_err();
                }
                result
            });
            if unreleased {
                client.discard();
            }
            result
        })
    }
}

/// The advisory lock key of `coupon`'s claim transactions: FNV-1a (64-bit)
/// of "flash-coupons claim " and the name's UTF-8 bytes, as a signed 64-bit
/// integer. Every server on one database must compute the same key for the
/// same coupon, whatever its build: this function is fixed, never to be
/// changed (a rolling upgrade would otherwise run two keys for one coupon at
/// once), and it depends on nothing that a Rust or PostgreSQL upgrade may
/// change. Two coupons sharing a key only take turns with each other, which
/// is safe; with 64 bits that takes about four billion coupons to be likely.
pub(crate) fn claim_lock_key(coupon: &CouponName) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"flash-coupons claim "
        .iter()
        .chain(coupon.as_str().as_bytes())
        .fold(OFFSET, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
    // Bit for bit: PostgreSQL's keys are signed.
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> i64 {
        claim_lock_key(&CouponName::parse(name).unwrap())
    }

    /// The keys are part of the protocol between servers: these values
    /// must never change.
    #[test]
    fn claim_lock_keys_are_fixed() {
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            key("PROMO_SUPER") as u64,
            fnv(b"flash-coupons claim PROMO_SUPER")
        );
        assert_eq!(key("PROMO_SUPER"), 8_186_231_974_101_291_596);
        assert_ne!(key("PROMO_SUPER"), key("PROMO_SUPEr"));
        assert_ne!(key("é"), key("e"));
    }
}
