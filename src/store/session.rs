//! The settings of the store's database sessions: DATABASE_URL's, with the
//! store's own added where DATABASE_URL leaves them out (TCP keepalives,
//! the connect timeout, and server settings passed as startup options); and
//! on a pooled connection, the isolation level and statement timeout each
//! statement runs at.
//!
//! A claim alone on its coupon is one prepared statement, sent as Bind,
//! Execute and Sync in one round trip (see `Store::claim_one`): PostgreSQL
//! runs it as a transaction of its own, which nothing in the message can
//! configure. So what it needs is the pooled session's default, set once
//! when the connection opens (see `manager`), after DATABASE_URL's options,
//! which cannot undo it:
//!
//! - `default_transaction_isolation` SERIALIZABLE: the claim's isolation;
//! - `statement_timeout` at 9/10 of the query deadline: the database has the
//!   whole claim at once, so a connection the watchdog cuts (see `watchdog`)
//!   would not stop it; the statement timeout makes the database give up
//!   first, so that a claim answered 503 is not committed afterwards.
//!
//! Everything else on a pooled connection runs in an explicit transaction
//! that names its own isolation level and takes back the statement timeout
//! the connection was opened with (10 s, or DATABASE_URL's), see
//! [`BEGIN_SERIALIZABLE`], [`BEGIN_SNAPSHOT`] and [`BEGIN_READ`]: the
//! watchdog bounds those as before, and a cut connection ends their
//! transaction uncommitted. Only the claim lock's statements run alone
//! besides (see `Store::serializable_under_lock`), at the session's
//! settings: they read no table.

use std::time::Duration;

use postgres::types::Type;

use super::StoreSettings;

/// The pooled session's defaults: what a statement sent alone needs. $1 is
/// the statement timeout in milliseconds.
const POOLED_SESSION: &str = "SELECT \
    set_config('default_transaction_isolation', 'serializable', false) AS isolation, \
    set_config('statement_timeout', $1, false) AS statement_timeout";

/// Opens a claim batch, a release or a coupon's creation: SERIALIZABLE,
/// under the statement timeout the connection was opened with.
pub(super) const BEGIN_SERIALIZABLE: &str =
    "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL statement_timeout TO DEFAULT";

/// Opens reads that must agree with each other (a coupon's counts and its
/// claims): one snapshot, which can never fail to serialize.
pub(super) const BEGIN_SNAPSHOT: &str =
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout TO DEFAULT";

/// Opens a read of one statement, READ COMMITTED: under SERIALIZABLE, the
/// pooled session's default, a transaction that only reads can still fail
/// to serialize, and its predicate locks would count against concurrent
/// claim transactions.
pub(super) const BEGIN_READ: &str =
    "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; SET LOCAL statement_timeout TO DEFAULT";

/// Housekeeping that writes only rows no request uses (expired idempotency
/// keys): READ COMMITTED, so that it never fails to serialize and its
/// `SKIP LOCKED` reads skip what others hold.
pub(super) const BEGIN_WRITE: &str =
    "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL statement_timeout TO DEFAULT";

/// Sets a new pooled connection's session defaults (see the module's
/// documentation), in one round trip.
pub(super) fn prepare_pooled(
    client: &mut postgres::Client,
    query_timeout: Duration,
) -> Result<(), postgres::Error> {
    let millis = alone_statement_timeout(query_timeout).to_string();
    client.query_typed(POOLED_SESSION, &[(&millis, Type::TEXT)])?;
    Ok(())
}

/// The statement timeout of a statement sent alone, in milliseconds: 9/10
/// of the query deadline, which leaves the database time to say so before
/// the watchdog cuts the connection.
fn alone_statement_timeout(query_timeout: Duration) -> u128 {
    (query_timeout * 9 / 10).as_millis().max(1)
}

/// TCP keepalives and TCP_USER_TIMEOUT, for a real network partition: an
/// idle pooled connection to a host that vanished is found dead within
/// about KEEPALIVE_IDLE + TCP_USER_TIMEOUT, and a connection whose sent data
/// goes unacknowledged that long fails (the watchdog covers a database that
/// acknowledges and does not answer; these cover one that is gone).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// DATABASE_URL's connection settings with ours added. Settings given in
/// DATABASE_URL win wherever the driver lets us tell that they were given.
pub(super) fn connection_config(settings: &StoreSettings) -> postgres::Config {
    let mut database = settings.database.clone();
    if database.get_connect_timeout().is_none() {
        // The TCP connect only; the whole of opening a connection is bounded
        // by the query timeout on the caller's side (`Connector::open`).
        database.connect_timeout(settings.query_timeout);
    }
    database.keepalives(true);
    // The driver's default idle time is two hours: any other value was set.
    if database.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        database.keepalives_idle(KEEPALIVE_IDLE);
    }
    if database.get_keepalives_interval().is_none() {
        database.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if database.get_keepalives_retries().is_none() {
        database.keepalives_retries(KEEPALIVE_RETRIES);
    }
    if database.get_tcp_user_timeout().is_none() {
        database.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    // A claim never needs seconds; a statement stuck that long means a
    // sick database, and the client is better off with a 503.
    //
    // Connections live long, and a generic plan cached while the claims
    // table was still empty goes on scanning it whole once it has grown;
    // custom plans cost a little planning per statement instead.
    //
    // Options given in DATABASE_URL come last, so they win.
    let ours = "-c statement_timeout=10000 -c idle_in_transaction_session_timeout=30000 \
                -c plan_cache_mode=force_custom_plan";
    let options = match database.get_options() {
        Some(theirs) => format!("{ours} {theirs}"),
        None => ours.to_owned(),
    };
    database.options(&options);
    database
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_sent_alone_times_out_before_its_deadline() {
        assert_eq!(alone_statement_timeout(Duration::from_millis(5000)), 4500);
        assert_eq!(alone_statement_timeout(Duration::from_millis(1500)), 1350);
        assert_eq!(alone_statement_timeout(Duration::from_millis(100)), 90);
        assert_eq!(alone_statement_timeout(Duration::from_millis(1)), 1);
    }
}
