use std::fmt;

use postgres::error::SqlState;

/// What can go wrong below the HTTP layer, in the words the API needs.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The database cannot be reached or is refusing work right now.
    Unavailable(String),
    /// Conflicts kept aborting the transaction until the retry bound.
    Busy { attempts: u32 },
    /// Anything else: a bug or a broken schema, never the client's fault.
    Internal(String),
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

impl std::error::Error for StoreError {}

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

/// Sorts a driver error into retry, unavailable or internal.
pub(crate) enum Failure {
    Retry(RetryCause),
    Fatal(StoreError),
}

pub(crate) fn classify(err: postgres::Error) -> Failure {
    let Some(code) = err.code() else {
        // No SQLSTATE: the socket failed or the connection was closed.
        return Failure::Fatal(StoreError::Unavailable(err.to_string()));
    };
    if *code == SqlState::T_R_SERIALIZATION_FAILURE {
        return Failure::Retry(RetryCause::Serialization);
    }
    if *code == SqlState::T_R_DEADLOCK_DETECTED {
        return Failure::Retry(RetryCause::Deadlock);
    }
    // A concurrent transaction committed the same (user, coupon) first. The
    // next attempt sees its row and answers already_claimed for that user
    // only, which a blanket 409 for a whole batch would not.
    if *code == SqlState::UNIQUE_VIOLATION
        && err
            .as_db_error()
            .and_then(|db| db.constraint())
            .is_some_and(|c| c == "claims_user_coupon_unique")
    {
        return Failure::Retry(RetryCause::UniqueViolation);
    }
    let class = &code.code()[..2];
    let unavailable = matches!(class, "08" | "53" | "57")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT;
    let cause = err
        .as_db_error()
        .map(|db| format!("{}: {}", db.code().code(), db.message()))
        .unwrap_or_else(|| err.to_string());
    if unavailable || err.is_closed() {
        Failure::Fatal(StoreError::Unavailable(cause))
    } else {
        Failure::Fatal(StoreError::Internal(cause))
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(err: r2d2::Error) -> StoreError {
        StoreError::Unavailable(err.to_string())
    }
}
