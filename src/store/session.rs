//! The settings of the store's database sessions: DATABASE_URL's, with the
//! store's own added where DATABASE_URL leaves them out (TCP keepalives,
//! the connect timeout, and server settings passed as startup options).

use std::time::Duration;

use super::StoreSettings;

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
