//! Everything that speaks SQL: the pool, the schema, the transactions and
//! their retry.

mod claim;
mod connection;
mod coupons;
mod error;
mod retry;
mod schema;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use postgres::{Client, IsolationLevel, NoTls};

pub use claim::BatchResult;
pub use connection::Conn;
pub use coupons::{ClaimRow, Claimers};
pub use error::{RetryCause, StoreError};
pub use retry::{RetryCounts, RetryPolicy};
pub use schema::SCHEMA_SQL;

use connection::Manager;
use error::{Failure, classify};

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
}

/// The database, as the rest of the service sees it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<Manager>,
    retry: RetryPolicy,
    retries: Arc<RetryCounts>,
}

impl Store {
    /// Connects (waiting for the database up to `startup_timeout`), applies
    /// the schema and fills the pool.
    pub fn open(settings: &StoreSettings) -> Result<Store, StoreError> {
        let mut database = settings.database.clone();
        database.connect_timeout(settings.checkout_timeout.max(Duration::from_secs(1)));
        database.keepalives(true);
        database.keepalives_idle(Duration::from_secs(30));
        // A claim never needs seconds; a statement stuck that long means a
        // sick database, and the client is better off with a 503.
        //
        // Connections live long, and a generic plan cached while the claims
        // table was still empty scans it whole: on a fresh database, S1 fell
        // from 2,709 to 1,313 claims/s between two 5 s runs, and a new server
        // on the same data did 13,939. Custom plans cost a little planning per
        // statement instead (seen after: 5,020, 5,057, 7,241 in three runs).
        //
        // Options given in DATABASE_URL come last, so they win.
        let ours = "-c statement_timeout=10000 -c idle_in_transaction_session_timeout=30000 \
                    -c plan_cache_mode=force_custom_plan";
        let options = match database.get_options() {
            Some(theirs) => format!("{ours} {theirs}"),
            None => ours.to_owned(),
        };
        database.options(&options);

        let mut client = connect_with_retry(&database, settings.startup_timeout)?;
        schema::apply(&mut client)
            .map_err(|e| StoreError::Internal(format!("applying schema.sql: {e}")))?;
        drop(client);

        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(0))
            .connection_timeout(settings.checkout_timeout)
            .error_handler(Box::new(LogPoolErrors))
            .build(Manager::new(database))?;
        Ok(Store {
            pool,
            retry: RetryPolicy::new(settings.max_retries),
            retries: Arc::new(RetryCounts::default()),
        })
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

    /// True when a connection can be had: the pool checks each one with a
    /// round trip as it hands it out (or has just opened it).
    pub fn ping(&self, timeout: Duration) -> bool {
        self.pool.get_timeout(timeout).is_ok()
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        Ok(self.pool.get()?)
    }

    /// Runs `body` in a SERIALIZABLE transaction it opens and commits itself,
    /// from the start again on serialization failures, deadlocks and
    /// claim-uniqueness races, up to the retry bound (the PostgreSQL manual's
    /// advice: retry the complete transaction, including the decisions).
    fn serializable<T>(
        &self,
        mut body: impl FnMut(
            &mut postgres::Transaction<'_>,
            &connection::Statements,
        ) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut retry = 0;
        loop {
            let Conn { client, stmts } = &mut *conn;
            let attempt = client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .and_then(|mut tx| {
                    let value = body(&mut tx, stmts)?;
                    tx.commit()?;
                    Ok(value)
                });
            match attempt.map_err(classify) {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry(cause)) => {
                    self.retries.record(cause);
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

    /// Runs one autocommitted read.
    fn read<T>(
        &self,
        body: impl FnOnce(&mut Client, &connection::Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        body(client, stmts).map_err(|err| match classify(err) {
            Failure::Fatal(err) => err,
            Failure::Retry(cause) => {
                StoreError::Internal(format!("a plain read failed with {}", cause.label()))
            }
        })
    }

    /// Runs `body` in a READ ONLY REPEATABLE READ transaction: one snapshot,
    /// so counts and claim lists agree, and it can never fail to serialize.
    fn snapshot<T>(
        &self,
        body: impl FnOnce(
            &mut postgres::Transaction<'_>,
            &connection::Statements,
        ) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, stmts } = &mut *conn;
        let result = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .and_then(|mut tx| {
                let value = body(&mut tx, stmts)?;
                tx.commit()?;
                Ok(value)
            });
        result.map_err(|err| match classify(err) {
            Failure::Fatal(err) => err,
            Failure::Retry(cause) => StoreError::Internal(format!(
                "read-only transaction failed with {}",
                cause.label()
            )),
        })
    }
}

fn connect_with_retry(config: &postgres::Config, budget: Duration) -> Result<Client, StoreError> {
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(100);
    loop {
        match config.connect(NoTls) {
            Ok(client) => {
                info!("connected to the database");
                return Ok(client);
            }
            Err(err) if Instant::now() + pause < deadline => {
                warn!("database not reachable yet ({err}); retrying in {pause:?}");
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(StoreError::Unavailable(format!(
                    "gave up after {budget:?}: {err}"
                )));
            }
        }
    }
}

#[derive(Debug)]
struct LogPoolErrors;

impl r2d2::HandleError<postgres::Error> for LogPoolErrors {
    fn handle_error(&self, err: postgres::Error) {
        warn!("database connection failed: {err}");
    }
}
