//! Where r2d2 reports the connections it failed to open or check: into the
//! log as one run while they last (see `failure_log`), since a pool retrying
//! against a database that is down fails several times a second.

use std::sync::Arc;

use super::conn_error::ConnError;
use crate::failure_log::FailureLog;

/// r2d2's error handler for the pool. Its `FailureLog` is the manager's
/// too, which logs the recovery when a connection opens again.
#[derive(Debug)]
pub(crate) struct PoolErrors(pub(crate) Arc<FailureLog>);

impl r2d2::HandleError<ConnError> for PoolErrors {
    fn handle_error(&self, err: ConnError) {
        log_failure!(
            self.0,
            log::Level::Warn,
            "database connection failed: {err}"
        );
    }
}
