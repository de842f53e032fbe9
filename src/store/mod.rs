//! Everything that speaks SQL: the pool, the schema, the transactions and
//! their retry.

mod checkout;
mod claim;
mod conn_error;
mod connector;
mod coupons;
mod deadline_client;
mod error;
mod freshness;
mod health;
mod idempotency;
mod locate;
mod manager;
mod one_statement;
mod pool_errors;
mod release;
mod retry;
mod schema;
mod session;
mod startup;
mod statements;
mod watchdog;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::debug;

pub use claim::{BatchClaim, BatchResult};
pub use coupons::{ClaimRow, Claimers, CreateOutcome};
pub use error::{Cause, RetryCause, StoreError};
pub use freshness::{StockEvents, StockListener};
pub use idempotency::{KeySweeper, KeyVerdict, RecordedKey};
pub use release::ReleaseOutcome;
pub use retry::{RetryCounts, RetryPolicy};
pub use schema::{SCHEMA_SQL, SCHEMA_VERSION};
pub use startup::OpenError;

use crate::failure_log::FailureLog;
use checkout::CheckoutScope;
use connector::Connector;
use deadline_client::DeadlineClient;
use error::{Failure, classify};
use health::HealthProbe;
use manager::{Conn, Manager};
use pool_errors::PoolErrors;
use session::{BEGIN_READ, BEGIN_SERIALIZABLE, BEGIN_SNAPSHOT};
use statements::Statements;

/// How the store reaches the database and how hard it tries.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub database: postgres::Config,
    pub pool_size: u32,
    pub max_retries: u32,
    /// How long start-up keeps trying to reach the database.
    pub startup_timeout: Duration,
    /// How long a request waits for a pooled connection before 503.
    pub checkout_timeout: Duration,
    /// The client-side deadline of every database operation (a transaction,
    /// one attempt of a retried one, a query, a page of a stream) and of
    /// opening a connection as a whole. Past it the connection is cut and
    /// the request gets 503.
    pub query_timeout: Duration,
    /// How long an idempotency key counts (IDEMPOTENCY_TTL_HOURS).
    pub idempotency_ttl_hours: i32,
}

/// The database, as the rest of the service sees it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<Manager>,
    /// /healthz's probe of the database, on a connection of its own.
    health: Arc<HealthProbe>,
    connector: Connector,
    /// Opens the freshness listener's connections (see `freshness`): the
    /// same settings, and an application_name of their own.
    listener_connector: Connector,
    retry: RetryPolicy,
    retries: Arc<RetryCounts>,
    checkout_timeout: Duration,
    /// How long an idempotency key counts, in hours (see `idempotency`).
    idempotency_ttl_hours: i32,
}

impl Store {
    /// Connects (waiting for the database up to `startup_timeout`), applies
    /// the schema and fills the pool.
    pub fn open(settings: &StoreSettings) -> Result<Store, OpenError> {
        let config = session::connection_config(settings);
        let mut listener_config = config.clone();
        listener_config.application_name(&format!("flash-coupons-listener-{}", std::process::id()));
        let connector = Connector::new(config, settings.query_timeout);
        let listener_connector = Connector::new(listener_config, settings.query_timeout);
        startup::start_up(&connector, settings.startup_timeout)?;

        let failures = Arc::new(FailureLog::default());
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(0))
            .connection_timeout(settings.checkout_timeout)
            .error_handler(Box::new(PoolErrors(Arc::clone(&failures))))
            .build(Manager::new(connector.clone(), failures))
            .map_err(|err| OpenError::Database(err.into()))?;
        // One connection opened now, while nothing waits for it, so that the
        // first request does not pay for opening it (connecting and
        // preparing every statement) within its check-out time. A failure
        // here is left to the first request, which opens one itself.
        if let Err(err) = pool.get_timeout(settings.query_timeout) {
            debug!("could not open a first pooled connection at start: {err}");
        }
        Ok(Store {
            pool,
            health: Arc::default(),
            connector,
            listener_connector,
            retry: RetryPolicy::new(settings.max_retries),
            retries: Arc::new(RetryCounts::default()),
            checkout_timeout: settings.checkout_timeout,
            idempotency_ttl_hours: settings.idempotency_ttl_hours,
        })
    }

    /// Starts the freshness listener (see `freshness`), which reports to
    /// `events` until the returned handle is dropped.
    pub fn listen_for_stock(&self, events: Arc<dyn StockEvents>) -> std::io::Result<StockListener> {
        StockListener::start(self.listener_connector.clone(), events)
    }

    pub fn retries(&self) -> &RetryCounts {
        &self.retries
    }

    /// Pooled connections: (open, idle, most allowed).
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let state = self.pool.state();
        (
            state.connections,
            state.idle_connections,
            self.pool.max_size(),
        )
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        self.checkout(self.checkout_timeout)
    }

    /// A pooled connection within `timeout`: waiting for one, opening one,
    /// and the round trip that checks it, together. A connection that
    /// could not be checked in time goes back unused.
    fn checkout(&self, timeout: Duration) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        let scope = CheckoutScope::begin(Instant::now() + timeout);
        let conn = self.pool.get_timeout(timeout)?;
        if scope.handed_unchecked() {
            return Err(StoreError::Unavailable(
                format!("no database connection answered within {timeout:?}").into(),
            ));
        }
        Ok(conn)
    }

    /// Runs `body` in a SERIALIZABLE transaction it opens and commits itself,
    /// from the start again on serialization failures, deadlocks and
    /// claim-uniqueness races, up to the retry bound (the PostgreSQL manual's
    /// advice: retry the complete transaction, including the decisions).
    /// Each attempt has the query deadline; the pauses between them do not
    /// count.
    fn serializable<T>(
        &self,
        mut body: impl FnMut(&mut postgres::Client, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.retrying(|client, stmts| {
            in_transaction(
                client,
                "a read-write transaction",
                BEGIN_SERIALIZABLE,
                |inner| body(inner, stmts),
            )
        })
    }

    /// Runs `attempt` on one pooled connection, again after a pause when it
    /// fails with a serialization failure, a deadlock or a claim-uniqueness
    /// race, up to the retry bound; counts the retries.
    fn retrying<T>(
        &self,
        mut attempt: impl FnMut(&mut DeadlineClient, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut retry = 0;
        loop {
            let Conn { client, stmts } = &mut *conn;
            let result = attempt(client, stmts);
            match result.map_err(|err| failure(client, err)) {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry { cause, error }) => {
                    self.retries.record(cause);
                    if client.is_broken() {
                        // It could not be cleaned up for another attempt.
                        return Err(StoreError::Unavailable(Cause::with_source(
                            format!("the connection was discarded after {}", cause.label()),
                            error,
                        )));
                    }
                    if retry >= self.retry.max_retries {
                        self.retries.record_exhausted();
                        return Err(StoreError::Busy {
                            attempts: retry + 1,
                        });
                    }
                    thread::sleep(self.retry.backoff(retry));
                    retry += 1;
                }
            }
        }
    }

    /// Runs one read in a READ COMMITTED transaction of its own (see
    /// `session::BEGIN_READ`). Two round trips more than the statement
    /// alone, for reads that are rare next to claims: a page of coupons, a
    /// sold-out coupon's holders once, and whether a user holds a sold-out
    /// coupon too large to remember.
    fn read<T>(
        &self,
        body: impl FnOnce(&mut postgres::Client, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let result = in_transaction(client, "a read", BEGIN_READ, |inner| body(inner, stmts));
        result.map_err(|err| failure(client, err).unretried("a plain read"))
    }

    /// Runs `body` in a READ ONLY REPEATABLE READ transaction: one snapshot,
    /// so counts and claim lists agree, and it can never fail to serialize.
    fn snapshot<T>(
        &self,
        body: impl FnOnce(&mut postgres::Client, &Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let result = in_transaction(client, "a read-only transaction", BEGIN_SNAPSHOT, |inner| {
            body(inner, stmts)
        });
        result.map_err(|err| failure(client, err).unretried("read-only transaction"))
    }
}

/// Runs `body` in a transaction that `begin` opens, and commits it, all
/// under one deadline (`what` names it in the watchdog's log). After an
/// error the transaction is rolled back (a failed COMMIT has ended it
/// already); a connection on which that fails too is discarded, never to
/// go back to the pool inside a transaction.
fn in_transaction<T>(
    client: &mut DeadlineClient,
    what: &'static str,
    begin: &str,
    body: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    let mut left_open = false;
    let result = client.run(what, |inner| {
        let mut committing = false;
        let result = inner
            .batch_execute(begin)
            .and_then(|()| body(inner))
            .and_then(|value| {
                committing = true;
                inner.batch_execute("COMMIT").map(|()| value)
            });
        if result.is_err() && !committing {
            left_open = inner.is_closed() || inner.batch_execute("ROLLBACK").is_err();
        }
        result
    });
    if left_open {
        client.discard();
    }
    result
}

/// Sorts the error of an operation on `client`; one that ran out of time
/// says so. (`Failure::unretried` for an operation that is not retried.)
fn failure(client: &DeadlineClient, err: postgres::Error) -> Failure {
    if client.timed_out() {
        return Failure::Fatal(StoreError::Unavailable(Cause::with_source(
            format!(
                "no answer from the database within {:?} (DB_QUERY_TIMEOUT_MS)",
                client.timeout()
            ),
            err,
        )));
    }
    classify(err)
}
