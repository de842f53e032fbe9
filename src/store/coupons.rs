//! Coupons: creating one, and reading them back (a coupon with its
//! claimers streamed from one snapshot, a page of its claims, a page of
//! coupons).

use postgres::Row;
use r2d2::PooledConnection;
use time::OffsetDateTime;

use crate::domain::{
    Amount, Coupon, CouponName, IdempotencyKey, Operation, SaleWindow, create_request,
};

use super::idempotency::{KeyVerdict, record_keys, recorded_keys};

use super::deadline_client::DeadlineClient;
use super::manager::{Conn, Manager};
use super::{Store, StoreError, failure};

/// Rows fetched per round trip while streaming a coupon's claimers.
const STREAM_PAGE: i64 = 1000;

/// Claim pages must walk the (coupon_name, id) index in order. Right after
/// a burst of claims the statistics still say a coupon has a few dozen, and
/// the planner then sorts all of its claims for every page, which costs far
/// more than reading them in index order.
const ORDERED_PAGES: &str = "SET LOCAL enable_sort = off";

/// Opens the claimers' stream: BEGIN_SNAPSHOT, then ORDERED_PAGES, in one
/// round trip (a test holds it to the two).
const BEGIN_STREAM: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                            SET LOCAL statement_timeout TO DEFAULT; SET LOCAL enable_sort = off";

/// One claim as the paginated listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    pub id: i64,
    pub user_id: String,
    pub claimed_at: OffsetDateTime,
}

/// A coupon named `name` from a row with its columns amount,
/// remaining_amount, starts_at and expires_at.
fn coupon_from(name: String, row: &Row) -> Coupon {
    let window = SaleWindow::new(row.get("starts_at"), row.get("expires_at")).unwrap_or_default();
    Coupon {
        name,
        amount: row.get("amount"),
        remaining_amount: row.get("remaining_amount"),
        window,
    }
}

/// The error of a statement of the claimers' stream on `client`.
fn fatal(client: &DeadlineClient, err: postgres::Error) -> StoreError {
    failure(client, err).unretried("a read-only query")
}

/// What a create came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(Coupon),
    /// A coupon of that name exists already.
    Exists,
    /// The key was recorded by this same create, which took effect then:
    /// its answer (the coupon as it was created) again.
    Replayed,
    /// The key was recorded for another request.
    KeyMismatch,
}

impl Store {
    /// Inserts a new coupon with all its stock. With an idempotency key, a
    /// recorded key answers first, and a coupon created records the key in
    /// the same transaction.
    pub fn create_coupon(
        &self,
        name: &CouponName,
        amount: Amount,
        window: SaleWindow,
        key: Option<&IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        let request = key.map(|_| create_request(name, amount, &window));
        let ttl = self.idempotency_ttl_hours;
        self.serializable(|tx, stmts| {
            if let (Some(key), Some(request)) = (key, &request) {
                let recorded = recorded_keys(tx, stmts, Operation::Create, &[key.as_str()], ttl)?;
                if let Some(record) = recorded.get(key.as_str()) {
                    return Ok(match record.verdict(request) {
                        KeyVerdict::Replay { .. } => CreateOutcome::Replayed,
                        KeyVerdict::Mismatch => CreateOutcome::KeyMismatch,
                    });
                }
            }
            let inserted = tx.execute(
                &stmts.insert_coupon,
                &[
                    &name.as_str(),
                    &amount.get(),
                    &window.starts_at(),
                    &window.expires_at(),
                ],
            )?;
            if inserted == 0 {
                return Ok(CreateOutcome::Exists);
            }
            if let (Some(key), Some(request)) = (key, &request) {
                let record = [(key.as_str(), request.as_str(), None)];
                record_keys(tx, stmts, Operation::Create, &record, 201, ttl)?;
            }
            Ok(CreateOutcome::Created(Coupon {
                name: name.to_string(),
                amount: amount.get(),
                remaining_amount: amount.get(),
                window,
            }))
        })
    }

    /// A coupon with its counts, and a stream of its claimers in claim order
    /// read from the same snapshot, a page at a time: a coupon with a
    /// million claims is never in memory at once.
    pub fn coupon_with_claimers(
        &self,
        name: &CouponName,
    ) -> Result<Option<(Coupon, Claimers)>, StoreError> {
        let mut conn = self.conn()?;
        conn.client
            .batch_execute(BEGIN_STREAM)
            .map_err(|err| fatal(&conn.client, err))?;
        let mut claimers = Claimers {
            conn,
            name: name.to_string(),
            after: 0,
            open: true,
        };
        let Conn { client, stmts } = &mut *claimers.conn;
        let row = client
            .query_opt(&stmts.coupon_counts, &[&name.as_str()])
            .map_err(|err| fatal(client, err))?;
        Ok(row.map(|row| (coupon_from(name.to_string(), &row), claimers)))
    }

    /// A page of a coupon's claims after the claim `after` (0: from the
    /// start), or `None` when the coupon does not exist.
    pub fn claims_page(
        &self,
        name: &CouponName,
        after: i64,
        limit: i64,
    ) -> Result<Option<Vec<ClaimRow>>, StoreError> {
        self.snapshot(|tx, stmts| {
            if tx
                .query_opt(&stmts.coupon_counts, &[&name.as_str()])?
                .is_none()
            {
                return Ok(None);
            }
            tx.batch_execute(ORDERED_PAGES)?;
            let rows = tx.query(&stmts.claims_page, &[&name.as_str(), &after, &limit])?;
            Ok(Some(
                rows.iter()
                    .map(|r| ClaimRow {
                        id: r.get("id"),
                        user_id: r.get("user_id"),
                        claimed_at: r.get("claimed_at"),
                    })
                    .collect(),
            ))
        })
    }

    /// A page of coupons in name order after `after` ("" for the start).
    pub fn coupons_page(&self, after: &str, limit: i64) -> Result<Vec<Coupon>, StoreError> {
        self.read(|client, stmts| {
            Ok(client
                .query(&stmts.coupons_page, &[&after, &limit])?
                .iter()
                .map(|r| coupon_from(r.get("name"), r))
                .collect())
        })
    }
}

/// The claimers of one coupon, read a page at a time inside a read-only
/// transaction that is rolled back if the stream is dropped unfinished.
pub struct Claimers {
    conn: PooledConnection<Manager>,
    name: String,
    after: i64,
    open: bool,
}

impl Claimers {
    /// The next page of user ids; empty once all have been read.
    pub fn next_page(&mut self) -> Result<Vec<String>, StoreError> {
        let Conn { client, stmts } = &mut *self.conn;
        let rows = client
            .query(&stmts.claims_page, &[&self.name, &self.after, &STREAM_PAGE])
            .map_err(|err| fatal(client, err))?;
        if let Some(last) = rows.last() {
            self.after = last.get("id");
        }
        Ok(rows.iter().map(|r| r.get("user_id")).collect())
    }

    pub fn finish(mut self) -> Result<(), StoreError> {
        self.open = false;
        let client = &mut self.conn.client;
        client
            .batch_execute("COMMIT")
            .map_err(|err| fatal(client, err))
    }
}

impl Drop for Claimers {
    fn drop(&mut self) {
        if self.open {
            // The connection goes back to the pool: never inside a transaction.
            let _ = self.conn.client.batch_execute("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::session::BEGIN_SNAPSHOT;

    #[test]
    fn the_stream_begins_as_a_snapshot_with_ordered_pages() {
        assert_eq!(BEGIN_STREAM, format!("{BEGIN_SNAPSHOT}; {ORDERED_PAGES}"));
    }
}
