//! r2d2's manager for the store's pool: how a pooled connection is opened
//! (by the `connector`, with its session's defaults set, see `session`, and
//! its statements prepared, all within the query timeout), checked when it
//! is handed out (within what is left of the check-out's time, see
//! `checkout`), and found broken when it comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use r2d2::ManageConnection;

use super::checkout;
use super::conn_error::ConnError;
use super::connector::Connector;
use super::deadline_client::DeadlineClient;
use super::session;
use super::statements::Statements;
use crate::failure_log::FailureLog;

/// A pooled connection and its prepared statements, which belong to it.
pub(crate) struct Conn {
    pub(crate) client: DeadlineClient,
    pub(crate) stmts: Statements,
}

/// How long after going back to the pool a connection is handed out
/// without a validity check.
const FRESH_FOR: Duration = Duration::from_millis(500);

/// Below this much time left, a check-out does not start a validity check
/// (which could only time out, and so discard a healthy connection).
const MIN_CHECK: Duration = Duration::from_millis(50);

/// r2d2's manager: connections from the connector, opened on a helper
/// thread within the query timeout as a whole (session defaults and
/// statements included), and checked on check-out within what is left of
/// the check-out's time.
pub(crate) struct Manager {
    connector: Connector,
    /// Shared with the pool's error handler (see `pool_errors`), which logs
    /// the failures this ends.
    failures: Arc<FailureLog>,
}

impl Manager {
    pub(crate) fn new(connector: Connector, failures: Arc<FailureLog>) -> Manager {
        Manager {
            connector,
            failures,
        }
    }
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = ConnError;

    fn connect(&self) -> Result<Conn, ConnError> {
        let began = Instant::now();
        let limit = self.connector.query_timeout();
        let mut client = self.connector.open(limit)?;
        // What is left of the bound, and at least a moment to prepare in.
        let left = limit
            .saturating_sub(began.elapsed())
            .max(Duration::from_millis(100));
        let stmts = client
            .run_within("preparing statements", left, |c| {
                session::prepare_pooled(c, limit)?;
                Statements::prepare(c)
            })
            .map_err(|err| {
                if client.timed_out() {
                    ConnError::TimedOut {
                        doing: "preparing statements",
                        after: limit,
                    }
                } else {
                    ConnError::Db(err)
                }
            })?;
        log_recovery!(self.failures, "connected to the database again");
        Ok(Conn { client, stmts })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), ConnError> {
        // A connection that worked moments ago is handed out as it is: under
        // load every connection is, and the check would be a round trip
        // more per request. One that broke meanwhile (the database went
        // away) fails its request with 503, as any request on it in those
        // moments would have.
        if conn.client.returned_within(FRESH_FOR) {
            return Ok(());
        }
        let mut timeout = self.connector.query_timeout();
        if let Some(deadline) = checkout::deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_CHECK {
                checkout::note_handed_unchecked();
                return Ok(());
            }
            timeout = timeout.min(left);
        }
        conn.client.check(timeout)
    }

    /// Asked by r2d2 as each connection goes back to the pool.
    fn has_broken(&self, conn: &mut Conn) -> bool {
        let broken = conn.client.is_broken();
        if !broken {
            conn.client.returned_now();
        }
        broken
    }
}
