//! The store's errors, and the sorting of the driver's errors into those
//! worth running the transaction again for, those that mean the database is
//! unavailable (503), and the rest (500).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use postgres::error::SqlState;

/// What can go wrong below the HTTP layer, in the words the API needs: each
/// variant is one kind of answer (see `http::error`).
///
/// Its Display is the whole story in one line (the request log prints only
/// that): the kind, then the cause's message, which already says what the
/// error underneath said. That error itself, when there is one (the
/// driver's, r2d2's), is kept as the [`source`](Error::source), for code
/// that wants to look at it (a SQLSTATE, an I/O error kind). Cloning shares
/// it: the claim combiner answers every claim of a failed batch with the
/// same error.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The database cannot be reached, did not answer in time, or is
    /// refusing work right now (a connection failure, a deadline, a
    /// statement timeout, too many connections, a lock not available):
    /// trying again later may work. 503 `database_unavailable`.
    Unavailable(Cause),
    /// Conflicts (serialization failures, deadlocks, claim-uniqueness
    /// races) kept aborting the transaction until the retry bound
    /// (CLAIM_MAX_RETRIES). 503 `busy`.
    Busy { attempts: u32 },
    /// Anything else: a bug or a broken schema, never the client's fault
    /// (also a panic in a claim transaction, and a retry cause met where
    /// nothing is retried). 500 `internal_error`.
    Internal(Cause),
}

/// What went wrong, in words for the log, and the error it came from when
/// there is one.
#[derive(Debug, Clone)]
pub struct Cause {
    message: String,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl Cause {
    /// A cause that is only words.
    pub fn new(message: impl Into<String>) -> Cause {
        Cause {
            message: message.into(),
            source: None,
        }
    }

    /// A cause that came from `source`; `message` should already say what
    /// matters of it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> Cause {
        Cause {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error underneath, if any.
    pub fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }

    /// The same cause, its message preceded by `what` was being done.
    fn context(self, what: &str) -> Cause {
        Cause {
            message: format!("{what}: {}", self.message),
            source: self.source,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Cause {
        Cause::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Cause {
        Cause::new(message)
    }
}

impl StoreError {
    /// The same error, its message preceded by what was being done.
    pub(crate) fn context(self, what: &str) -> StoreError {
        match self {
            StoreError::Unavailable(cause) => StoreError::Unavailable(cause.context(what)),
            StoreError::Internal(cause) => StoreError::Internal(cause.context(what)),
            busy @ StoreError::Busy { .. } => busy,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(cause) => write!(f, "database unavailable: {cause}"),
            StoreError::Busy { attempts } => {
                write!(f, "transaction still conflicting after {attempts} attempts")
            }
            StoreError::Internal(cause) => write!(f, "database error: {cause}"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoreError::Unavailable(cause) | StoreError::Internal(cause) => cause.source(),
            StoreError::Busy { .. } => None,
        }
    }
}

/// Why a transaction may be run again from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    Serialization,
    Deadlock,
    UniqueViolation,
}

impl RetryCause {
    pub const ALL: [RetryCause; 3] = [
        RetryCause::Serialization,
        RetryCause::Deadlock,
        RetryCause::UniqueViolation,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RetryCause::Serialization => "serialization_failure",
            RetryCause::Deadlock => "deadlock",
            RetryCause::UniqueViolation => "unique_violation",
        }
    }
}

/// A driver error sorted into retry, unavailable or internal.
pub(crate) enum Failure {
    /// Worth running the whole transaction again.
    Retry {
        cause: RetryCause,
        error: postgres::Error,
    },
    Fatal(StoreError),
}

impl Failure {
    /// The error of an operation that is not retried: a retry cause, which
    /// such an operation should never meet, is Internal, saying that `what`
    /// failed with it.
    pub(crate) fn unretried(self, what: &str) -> StoreError {
        match self {
            Failure::Fatal(err) => err,
            Failure::Retry { cause, error } => StoreError::Internal(Cause::with_source(
                format!("{what} failed with {}", cause.label()),
                error,
            )),
        }
    }
}

pub(crate) fn classify(err: postgres::Error) -> Failure {
    if let Some(cause) = retry_cause(&err) {
        return Failure::Retry { cause, error: err };
    }
    let Some(code) = err.code() else {
        // No SQLSTATE: the socket failed or the connection was closed.
        return Failure::Fatal(StoreError::Unavailable(Cause::with_source(
            err.to_string(),
            err,
        )));
    };
    let unavailable = matches!(&code.code()[..2], "08" | "53" | "57")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || err.is_closed();
    let message = err
        .as_db_error()
        .map(|db| format!("{}: {}", db.code().code(), db.message()))
        .unwrap_or_else(|| err.to_string());
    let cause = Cause::with_source(message, err);
    if unavailable {
        Failure::Fatal(StoreError::Unavailable(cause))
    } else {
        Failure::Fatal(StoreError::Internal(cause))
    }
}

/// Why running the transaction again may succeed, if it may.
fn retry_cause(err: &postgres::Error) -> Option<RetryCause> {
    let code = err.code()?;
    if *code == SqlState::T_R_SERIALIZATION_FAILURE {
        return Some(RetryCause::Serialization);
    }
    if *code == SqlState::T_R_DEADLOCK_DETECTED {
        return Some(RetryCause::Deadlock);
    }
    // A concurrent transaction committed the same (user, coupon) first. The
    // next attempt sees its row and answers already_claimed for that user
    // only, which a blanket 409 for a whole batch would not.
    let claim_race = *code == SqlState::UNIQUE_VIOLATION
        && err
            .as_db_error()
            .and_then(|db| db.constraint())
            .is_some_and(|c| c == "claims_user_coupon_unique");
    claim_race.then_some(RetryCause::UniqueViolation)
}

impl From<r2d2::Error> for StoreError {
    fn from(err: r2d2::Error) -> StoreError {
        StoreError::Unavailable(Cause::with_source(err.to_string(), err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_says_it_all_and_the_source_is_kept_through_clones() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = StoreError::Unavailable(Cause::with_source("connecting: refused", io));
        let copy = err.clone().context("a read");
        assert_eq!(
            copy.to_string(),
            "database unavailable: a read: connecting: refused"
        );
        let source = copy.source().expect("the source is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the same error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        let words = StoreError::Internal("no usable row".into());
        assert_eq!(words.to_string(), "database error: no usable row");
        assert!(words.source().is_none());
    }
}
