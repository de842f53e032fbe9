//! Start-up's work on the database: reach it within DB_STARTUP_TIMEOUT_SECS,
//! make sure it can hold what the service stores, and bring its schema up to
//! date (see `schema`) without ever making a running server's request wait
//! on a lock.
//!
//! What can pass is tried again until the budget is spent: a database that
//! refuses connections, does not answer, is starting up (57P03), or holds a
//! lock that the schema needs. What cannot pass ends start-up at once with
//! one line that says what to fix: an unknown database or role, a wrong or
//! missing password, a database whose encoding is not UTF-8.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use log::info;
use postgres::error::SqlState;

use super::conn_error::ConnError;
use super::connector::Connector;
use super::error::Failure;
use super::schema::{self, Applied};
use super::{StoreError, failure};
use crate::failure_log::{Ended, FailureLog};

/// The least time given to one step of start-up (connecting, applying the
/// schema), even when less of DB_STARTUP_TIMEOUT_SECS is left.
const MIN_STEP: Duration = Duration::from_secs(1);
/// The first pause between attempts; it doubles up to [`PAUSE_MAX`].
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(2);

/// Why the store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The database was not reached, or the schema not brought up to date,
    /// within DB_STARTUP_TIMEOUT_SECS; or applying the schema failed in a
    /// way that trying again cannot mend.
    Database(StoreError),
    /// The database turned the connection down for good: `fix` says what
    /// to change (the database name, the role, the password).
    Refused(String),
    /// The database answers but cannot hold what the service stores as it
    /// is configured (its encoding): a configuration mistake, like a bad
    /// setting.
    Unsuitable(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Database(err) => write!(f, "{err}"),
            OpenError::Refused(fix) => f.write_str(fix),
            OpenError::Unsuitable(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Database(err) => err.source(),
            // Its words are already in `fix`.
            OpenError::Refused(_) | OpenError::Unsuitable(_) => None,
        }
    }
}

/// Why one start-up attempt failed.
enum Attempt {
    /// Worth trying again while time is left; the words say what is being
    /// waited for.
    Again(String),
    /// Trying again cannot help.
    Fatal(OpenError),
}

/// Connects, checks the database and brings its schema up to date, trying
/// again until `budget` is spent. Every step is bounded (by what is left of
/// the budget, at least MIN_STEP, at most the query timeout), so this gives
/// up within the budget plus about two such steps even against a database
/// that accepts connections and never answers.
pub(super) fn start_up(connector: &Connector, budget: Duration) -> Result<(), OpenError> {
    let began = Instant::now();
    let deadline = began + budget;
    let step = || {
        deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_STEP, connector.query_timeout().max(MIN_STEP))
    };
    let mut pause = PAUSE_MIN;
    // The failed attempts, in the log as one run (see `failure_log`).
    let run = FailureLog::default();
    loop {
        let waiting = match start_up_once(connector, step, &run) {
            Ok(()) => return Ok(()),
            Err(Attempt::Fatal(err)) => return Err(err),
            Err(Attempt::Again(waiting)) => waiting,
        };
        // The last pause ends at the deadline, and one more attempt is made
        // then: the whole budget is given to the database.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // In words only: main prints a start-up error's sources after
            // it, which would repeat them.
            return Err(OpenError::Database(StoreError::Unavailable(
                format!(
                    "gave up after {:.1?} (DB_STARTUP_TIMEOUT_SECS={}): {waiting}",
                    began.elapsed(),
                    budget.as_secs()
                )
                .into(),
            )));
        }
        let pause_now = pause.min(left);
        log_failure!(
            run,
            log::Level::Warn,
            "{waiting}; retrying in {pause_now:.1?}, for up to {left:.1?} more (DB_STARTUP_TIMEOUT_SECS)"
        );
        thread::sleep(pause_now);
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

fn start_up_once(
    connector: &Connector,
    step: impl Fn() -> Duration,
    run: &FailureLog,
) -> Result<(), Attempt> {
    let mut client = connector.open(step()).map_err(|err| match refusal(&err) {
        Some(fatal) => Attempt::Fatal(fatal),
        None => Attempt::Again(format!("database not reachable yet ({err})")),
    })?;
    match run.succeeded() {
        Some(Ended { failures, over }) => {
            info!("connected to the database, after {failures} failed attempts over {over:.1?}")
        }
        None => info!("connected to the database"),
    }
    let applied = client
        .run_within("checking the database", step(), |c| {
            let encoding = schema::server_encoding(c)?;
            Ok((encoding, schema::bring_up_to_date(c)?))
        })
        .map_err(|err| {
            if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                return Attempt::Again(format!(
                    "schema.sql must change the tables, and another session holds a lock on \
                     them (a long transaction, or pg_dump); not waiting for it, so that \
                     claims do not queue behind the change (waited at most {:?})",
                    schema::LOCK_WAIT
                ));
            }
            match failure(&client, err) {
                Failure::Retry { cause, .. } => {
                    Attempt::Again(format!("applying schema.sql met a {}", cause.label()))
                }
                Failure::Fatal(StoreError::Unavailable(cause)) => {
                    Attempt::Again(format!("database not reachable yet ({cause})"))
                }
                Failure::Fatal(err) => {
                    Attempt::Fatal(OpenError::Database(err.context("applying schema.sql")))
                }
            }
        })?;
    match applied {
        (encoding, _) if encoding != "UTF8" => Err(Attempt::Fatal(OpenError::Unsuitable(format!(
            "the database's encoding is {encoding}, and flash-coupons stores names and user ids \
             as UTF-8: use a database created with ENCODING 'UTF8' (CREATE DATABASE ... \
             ENCODING 'UTF8' TEMPLATE template0)"
        )))),
        (_, Applied::Current { version }) => {
            info!("the schema is current (version {version}); nothing to apply");
            Ok(())
        }
        (_, Applied::Brought { from }) => {
            match from {
                Some(from) => info!(
                    "brought the schema from version {from} to {}",
                    schema::SCHEMA_VERSION
                ),
                None => info!("applied the schema (version {})", schema::SCHEMA_VERSION),
            }
            Ok(())
        }
    }
}

/// The connection failure as a reason to stop at once, when trying again
/// cannot help: PostgreSQL refused the database, the role or the password,
/// or the driver had no password to give.
fn refusal(err: &ConnError) -> Option<OpenError> {
    let ConnError::Db(err) = err else {
        return None;
    };
    let fix = match (err.code(), err.as_db_error()) {
        (Some(code), Some(db)) if *code == SqlState::INVALID_CATALOG_NAME => format!(
            "the database refused the connection ({}: {}): create that database, or name an \
             existing one in DATABASE_URL",
            code.code(),
            db.message()
        ),
        (Some(code), Some(db)) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            format!(
                "the database refused the connection ({}: {}): fix the user in DATABASE_URL, \
                 or let it in (the server's roles and pg_hba.conf)",
                code.code(),
                db.message()
            )
        }
        (Some(code), Some(db)) if *code == SqlState::INVALID_PASSWORD => format!(
            "the database refused the connection ({}: {}): fix the password in DATABASE_URL",
            code.code(),
            db.message()
        ),
        // The driver's own words when the server asks for a password and
        // none was given.
        (None, _)
            if std::error::Error::source(err)
                .is_some_and(|cause| cause.to_string() == "password missing") =>
        {
            "the database asks for a password and DATABASE_URL has none: add it \
             (postgres://user:password@host:port/database)"
                .to_owned()
        }
        _ => return None,
    };
    Some(OpenError::Refused(fix))
}
