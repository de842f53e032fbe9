//! One database connection: opened within a bound, every operation on it
//! under a client-side deadline (see `watchdog`), and r2d2's manager for a
//! pool of them.

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use postgres::types::ToSql;
use postgres::{NoTls, Row, Statement, ToStatement};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

use super::watchdog::Slot;
use crate::failure_log::FailureLog;
use crate::sockets::{self, Search};

/// Every statement the service runs, parsed once when a connection opens
/// so that a request never pays for a parse round trip. (Plans are made per
/// execution: see plan_cache_mode in `Store::open`.) Their columns are read
/// by name: an expression has an alias.
pub struct Statements {
    pub insert_coupon: Statement,
    pub coupon_counts: Statement,
    pub lock_coupon: Statement,
    pub holders_among: Statement,
    pub insert_new_claims: Statement,
    pub take_stock: Statement,
    pub sold_out_holders: Statement,
    pub holds: Statement,
    pub claims_page: Statement,
    pub coupons_page: Statement,
    pub claim_lock: Statement,
    pub remove_claim: Statement,
    pub give_back_stock: Statement,
    pub record_release: Statement,
}

impl Statements {
    fn prepare(client: &mut postgres::Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            insert_coupon: client.prepare(
                "INSERT INTO coupons (name, amount, remaining_amount, starts_at, expires_at) \
                 VALUES ($1, $2, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
            )?,
            coupon_counts: client.prepare(
                "SELECT amount, remaining_amount, starts_at, expires_at FROM coupons WHERE name = $1",
            )?,
            // NO KEY UPDATE: the claim rows' foreign key takes KEY SHARE on
            // this row, which this lock must not block.
            // now() is the transaction's start on the database clock: the
            // one clock every server on this database agrees on.
            lock_coupon: client.prepare(
                "SELECT remaining_amount, starts_at, expires_at, now() AS now FROM coupons \
                 WHERE name = $1 FOR NO KEY UPDATE",
            )?,
            holders_among: client.prepare(
                "SELECT user_id FROM claims WHERE coupon_name = $1 AND user_id = ANY($2)",
            )?,
            // WITH ORDINALITY keeps the identity column in arrival order,
            // which is the order claimed_by reports. Users who already hold
            // the coupon are skipped by the unique key and not returned.
            insert_new_claims: client.prepare(
                "INSERT INTO claims (user_id, coupon_name) \
                 SELECT u, $1 FROM unnest($2::text[]) WITH ORDINALITY AS t(u, n) ORDER BY n \
                 ON CONFLICT (coupon_name, user_id) DO NOTHING RETURNING user_id",
            )?,
            take_stock: client.prepare(
                "UPDATE coupons SET remaining_amount = remaining_amount - $2 WHERE name = $1",
            )?,
            // Whether the coupon is sold out (and has no sale window), and
            // up to $2 of its holders in claim order: one statement, so both
            // come from one snapshot (see `SoldOut::learn`).
            sold_out_holders: client.prepare(
                "SELECT c.remaining_amount = 0 AND c.starts_at IS NULL AND c.expires_at IS NULL \
                 AS sold_out, \
                 ARRAY(SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id LIMIT $2) \
                 AS holders \
                 FROM coupons c WHERE c.name = $1",
            )?,
            holds: client
                .prepare("SELECT 1 FROM claims WHERE coupon_name = $1 AND user_id = $2")?,
            claims_page: client.prepare(
                "SELECT id, user_id, claimed_at FROM claims \
                 WHERE coupon_name = $1 AND id > $2 ORDER BY id LIMIT $3",
            )?,
            coupons_page: client.prepare(
                "SELECT name, amount, remaining_amount, starts_at, expires_at FROM coupons \
                 WHERE name > $1 ORDER BY name LIMIT $2",
            )?,
            // A session-level lock, taken before a claim transaction begins
            // and released after it ends (see `Store::claim_batch`); true
            // when it had to be waited for. CASE evaluates the blocking lock
            // only when the try failed, so the lock is taken once.
            claim_lock: client.prepare(
                "SELECT CASE WHEN pg_try_advisory_lock($1) THEN false \
                 ELSE pg_advisory_lock($1)::text IS NOT NULL END AS waited",
            )?,
            // A release (see `Store::release_claim`): the claim row goes,
            // its unit comes back (never above the amount, whatever was
            // done to the row behind the service's back), and the claim is
            // kept in the history with the time it was given back.
            remove_claim: client.prepare(
                "DELETE FROM claims WHERE coupon_name = $1 AND user_id = $2 RETURNING claimed_at",
            )?,
            give_back_stock: client.prepare(
                "UPDATE coupons SET remaining_amount = LEAST(remaining_amount + 1, amount) \
                 WHERE name = $1 RETURNING remaining_amount",
            )?,
            record_release: client.prepare(
                "INSERT INTO claim_releases (coupon_name, user_id, claimed_at) VALUES ($1, $2, $3)",
            )?,
        })
    }
}

/// A pooled connection and its prepared statements, which belong to it.
pub struct Conn {
    pub client: Client,
    pub stmts: Statements,
}

/// A `postgres::Client` whose every operation has a deadline: past it, the
/// watchdog shuts the socket down, the call fails with an I/O error, and
/// the connection counts as broken (r2d2 then discards it).
///
/// Connections whose socket could not be found (Unix sockets; a proxy or NAT
/// that changes the addresses) run without the deadline.
pub struct Client {
    inner: ManuallyDrop<postgres::Client>,
    slot: Option<Arc<Slot>>,
    /// The deadline of each operation.
    timeout: Duration,
    /// Known to be unusable (cut, closed, or a reply may still be owed).
    broken: bool,
    /// The last operation ran out of time and was cut.
    timed_out: bool,
    /// When the connection last went back to the pool unbroken.
    returned: Option<Instant>,
}

impl Client {
    /// Pairs a new connection with its socket and registers it with the
    /// watchdog.
    fn guard(mut inner: postgres::Client, timeout: Duration) -> Result<Client, postgres::Error> {
        let fd = locate(&mut inner)?;
        Ok(Client {
            inner: ManuallyDrop::new(inner),
            slot: fd.and_then(Slot::register),
            timeout,
            broken: false,
            timed_out: false,
            returned: None,
        })
    }

    /// Runs `op` on the connection with the usual deadline.
    pub(crate) fn run<T>(
        &mut self,
        what: &'static str,
        op: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        self.run_within(what, self.timeout, op)
    }

    /// Runs `op` on the connection, cut off after `limit`.
    pub(crate) fn run_within<T>(
        &mut self,
        what: &'static str,
        limit: Duration,
        op: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let Client {
            inner,
            slot,
            broken,
            timed_out,
            ..
        } = self;
        let mut armed = Armed::new(slot.as_deref(), what, limit, broken);
        let result = op(inner);
        *timed_out = armed.finish();
        if *timed_out || inner.is_closed() {
            *armed.broken = true;
        }
        result
    }

    /// Runs `op` without a deadline from the watchdog, for an operation that
    /// bounds its own wait (waiting for notifications with a timeout): the
    /// freshness listener spends its life waiting, and must not keep the
    /// watchdog ticking. A panic in `op` leaves the connection broken.
    pub(crate) fn run_self_bounded<T>(
        &mut self,
        op: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        self.broken = true;
        self.timed_out = false;
        let result = op(&mut self.inner);
        self.broken = self.inner.is_closed();
        result
    }

    /// Whether the last operation failed because it ran out of time.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Marks the connection as not to be used again, so that r2d2 discards
    /// it (and the database ends its session, releasing whatever session
    /// locks it still held) instead of handing it out.
    pub(crate) fn discard(&mut self) {
        self.broken = true;
    }

    /// Not to be used again: r2d2 discards it.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken || self.inner.is_closed() || self.slot.as_ref().is_some_and(|s| s.tripped())
    }

    /// A round trip that must come back within `timeout`. On failure the
    /// connection is broken: a timed-out check leaves a reply owed, which
    /// the connection could only wait for.
    fn check(&mut self, timeout: Duration) -> Result<(), ConnError> {
        let began = Instant::now();
        self.inner.is_valid(timeout).map_err(|err| {
            self.broken = true;
            if began.elapsed() >= timeout {
                ConnError::TimedOut {
                    doing: "checking a pooled connection",
                    after: timeout,
                }
            } else {
                ConnError::Db(err)
            }
        })
    }

    pub fn batch_execute(&mut self, query: &str) -> Result<(), postgres::Error> {
        self.run("a statement", |c| c.batch_execute(query))
    }

    pub fn query<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run("a query", |c| c.query(query, params))
    }

    pub fn query_opt<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run("a query", |c| c.query_opt(query, params))
    }
}

/// An armed deadline, disarmed when the operation ends, also by a panic
/// (which leaves the connection in an unknown state: broken).
struct Armed<'a> {
    slot: Option<&'a Slot>,
    broken: &'a mut bool,
    done: bool,
}

impl<'a> Armed<'a> {
    fn new(
        slot: Option<&'a Slot>,
        what: &'static str,
        limit: Duration,
        broken: &'a mut bool,
    ) -> Armed<'a> {
        if let Some(slot) = slot {
            slot.arm(what, limit);
        }
        Armed {
            slot,
            broken,
            done: false,
        }
    }

    /// True if the watchdog cut the connection.
    fn finish(&mut self) -> bool {
        self.done = true;
        self.slot.is_some_and(Slot::disarm)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish();
            *self.broken = true;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let cut = self.is_broken();
        // SAFETY: `inner` is taken once, here, and never used again.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        match &self.slot {
            // Closing politely waits for every reply still owed, which a
            // stalled database never sends: a broken connection is cut first.
            Some(slot) => {
                slot.close(cut);
                drop(inner);
            }
            // No socket to cut: the wait happens on a thread of its own, which
            // ends when the database answers or the connection fails.
            None if cut => {
                let _ = thread::Builder::new()
                    .name("db-close".into())
                    .spawn(move || drop(inner));
            }
            None => drop(inner),
        }
    }
}

/// The connection's socket in this process, from the two ends the server
/// sees. `None` over a Unix socket, or when no socket here has those ends.
fn locate(client: &mut postgres::Client) -> Result<Option<RawFd>, postgres::Error> {
    static UNIX_NOTED: AtomicBool = AtomicBool::new(false);
    static UNMATCHED_NOTED: AtomicBool = AtomicBool::new(false);
    let row = client.query_one(
        "SELECT inet_client_addr() AS client_addr, inet_client_port() AS client_port, \
         inet_server_addr() AS server_addr, inet_server_port() AS server_port",
        &[],
    )?;
    let end = |addr: Option<IpAddr>, port: Option<i32>| {
        Some(SocketAddr::new(addr?, u16::try_from(port?).ok()?))
    };
    let ours = end(row.get("client_addr"), row.get("client_port"));
    let theirs = end(row.get("server_addr"), row.get("server_port"));
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        if !UNIX_NOTED.swap(true, Ordering::Relaxed) {
            info!(
                "database connections over a Unix socket have no client-side deadline \
                 (DB_QUERY_TIMEOUT_MS); statement_timeout still applies"
            );
        }
        return Ok(None);
    };
    let fd = match sockets::find(ours, theirs) {
        Search::One(socket) => Some(socket.fd()),
        Search::NotFound | Search::Unknown => None,
    };
    if fd.is_none() && !UNMATCHED_NOTED.swap(true, Ordering::Relaxed) {
        warn!(
            "cannot find the socket of a database connection (the database sees it as \
             {ours} -> {theirs}: a proxy or NAT between?); such connections have no \
             client-side deadline (DB_QUERY_TIMEOUT_MS), only statement_timeout and TCP \
             keepalives"
        );
    }
    Ok(fd)
}

/// Why a connection could not be had.
#[derive(Debug)]
pub enum ConnError {
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

/// Connection attempts of one store that may be running at once, including
/// those given up on and still waiting for the database (a thread each).
const MAX_CONNECT_THREADS: usize = 8;

/// Opens connections, each within a bound as a whole.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<PostgresConnectionManager<NoTls>>,
    query_timeout: Duration,
    threads: Arc<AtomicUsize>,
}

impl Connector {
    pub(crate) fn new(config: postgres::Config, query_timeout: Duration) -> Connector {
        Connector {
            inner: Arc::new(PostgresConnectionManager::new(config, NoTls)),
            query_timeout,
            threads: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// A new connection, paired with its socket, within `limit` (TCP
    /// connect, start-up handshake, authentication, and the pairing query).
    ///
    /// The driver cannot be interrupted while it connects, so the attempt
    /// runs on a thread of its own; when it is given up on, the thread ends
    /// by itself once the database answers or the connection fails (the
    /// connection is then closed). At most MAX_CONNECT_THREADS such threads
    /// exist per store: beyond that, attempts fail at once.
    pub(crate) fn open(&self, limit: Duration) -> Result<Client, ConnError> {
        self.threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_CONNECT_THREADS).then_some(n + 1)
            })
            .map_err(|waiting| ConnError::Saturated { waiting })?;
        let (sender, receiver) = sync_channel(1);
        let inner = Arc::clone(&self.inner);
        let threads = Arc::clone(&self.threads);
        let timeout = self.query_timeout;
        let spawned = thread::Builder::new()
            .name("db-connect".into())
            .spawn(move || {
                let result = inner
                    .connect()
                    .and_then(|client| Client::guard(client, timeout))
                    .map_err(ConnError::Db);
                // Given up on: the connection is dropped (closed) here.
                let _ = sender.send(result);
                threads.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(err) = spawned {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return Err(ConnError::Thread(err.to_string()));
        }
        match receiver.recv_timeout(limit) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ConnError::TimedOut {
                doing: "connecting",
                after: limit,
            }),
            Err(RecvTimeoutError::Disconnected) => {
                Err(ConnError::Thread("the connecting thread panicked".into()))
            }
        }
    }
}

thread_local! {
    /// When the check-out running on this thread must end.
    static CHECKOUT_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A connection was handed out unchecked: the deadline had come.
    static HANDED_UNCHECKED: Cell<bool> = const { Cell::new(false) };
}

/// How long after going back to the pool a connection is handed out
/// without a validity check.
const FRESH_FOR: Duration = Duration::from_millis(500);

/// Below this much time left, a check-out does not start a validity check
/// (which could only time out, and so discard a healthy connection).
const MIN_CHECK: Duration = Duration::from_millis(50);

/// A check-out with a deadline, on this thread. r2d2 checks each idle
/// connection it hands out (`Manager::is_valid`) on the calling thread; the
/// checks are bounded by what is left of this deadline, so a pool of idle
/// connections to a stalled database cannot hold a check-out for a check
/// each.
pub(crate) struct CheckoutScope {
    outer: Option<Instant>,
}

impl CheckoutScope {
    pub(crate) fn begin(deadline: Instant) -> CheckoutScope {
        HANDED_UNCHECKED.set(false);
        CheckoutScope {
            outer: CHECKOUT_DEADLINE.replace(Some(deadline)),
        }
    }

    /// True if r2d2 handed out a connection that could not be checked
    /// before the deadline.
    pub(crate) fn handed_unchecked(&self) -> bool {
        HANDED_UNCHECKED.get()
    }
}

impl Drop for CheckoutScope {
    fn drop(&mut self) {
        CHECKOUT_DEADLINE.set(self.outer);
        HANDED_UNCHECKED.set(false);
    }
}

/// r2d2's failed connects and checks, into the log as one run while they
/// last (see `failure_log`): a pool retrying against a database that is down
/// fails several times a second.
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

/// r2d2's manager: connections from r2d2_postgres's, opened on a helper
/// thread within the query timeout as a whole (statements included), and
/// checked on check-out within what is left of the check-out's time.
pub struct Manager {
    connector: Connector,
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
        let limit = self.connector.query_timeout;
        let mut client = self.connector.open(limit)?;
        // What is left of the bound, and at least a moment to prepare in.
        let left = limit
            .saturating_sub(began.elapsed())
            .max(Duration::from_millis(100));
        let stmts = client
            .run_within("preparing statements", left, Statements::prepare)
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
        if conn
            .client
            .returned
            .is_some_and(|at| at.elapsed() < FRESH_FOR)
        {
            return Ok(());
        }
        let mut timeout = self.connector.query_timeout;
        if let Some(deadline) = CHECKOUT_DEADLINE.get() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_CHECK {
                HANDED_UNCHECKED.set(true);
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
            conn.client.returned = Some(Instant::now());
        }
        broken
    }
}
