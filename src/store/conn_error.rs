//! Why a connection could not be had: the error of opening one (see
//! `connector`) and of checking one on check-out (see `manager`), which is
//! r2d2's error type for the pool, and start-up's for reaching the database.

use std::fmt;
use std::time::Duration;

/// Why a connection could not be had.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The database refused, failed, or the socket broke.
    Db(postgres::Error),
    /// No answer within the bound.
    TimedOut {
        doing: &'static str,
        after: Duration,
    },
    /// Earlier attempts still wait for the database; no more are started.
    Saturated { waiting: usize },
    /// A thread could not be started.
    Thread(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Db(err) => match (err.as_db_error(), std::error::Error::source(err)) {
                (Some(db), _) => write!(f, "{}: {}", db.code().code(), db.message()),
                (None, Some(cause)) => write!(f, "{err}: {cause}"),
                (None, None) => write!(f, "{err}"),
            },
            ConnError::TimedOut { doing, after } => {
                write!(
                    f,
                    "no answer from the database within {after:.1?} ({doing})"
                )
            }
            ConnError::Saturated { waiting } => write!(
                f,
                "{waiting} earlier connection attempts are still waiting for the database to \
                 answer; not starting another"
            ),
            ConnError::Thread(err) => write!(f, "cannot start a thread to connect: {err}"),
        }
    }
}

impl std::error::Error for ConnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnError::Db(err) => Some(err),
            _ => None,
        }
    }
}
