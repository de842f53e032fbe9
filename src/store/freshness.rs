//! The freshness listener: one thread per process, on a connection of its
//! own, that hears from PostgreSQL (LISTEN on [`CHANNEL`], which schema.sql's
//! triggers notify) whenever a commit may have given a coupon stock back or
//! taken a holder away, so that what the process remembers about sold-out
//! coupons (`claims::sold_out`) is dropped in time. The design as a whole is
//! in docs/architecture.md, "Keeping the memory fresh".
//!
//! The listener tells its [`StockEvents`] what it hears, and whether it can
//! be relied on:
//!
//! - after `LISTEN` succeeds on a new connection, [`StockEvents::listening`]
//!   (whatever was remembered before may have missed notifications);
//! - every [`PING_EVERY`], a round trip on the connection, bounded by
//!   [`PING_LIMIT`] like every database operation (see `watchdog`); each
//!   that succeeds, after the notifications that came with it have been
//!   passed on, is [`StockEvents::confirmed_until`] its start plus
//!   [`LEASE`]. Memory may answer only until then: a connection that stops
//!   answering without an error (a stalled database, a dropped route) stops
//!   the fast path within [`LEASE`] without anyone having to notice;
//! - on any failure, [`StockEvents::lost`] at once, then a new connection
//!   after a pause (100 ms, doubling to 2 s while it keeps failing).
//!
//! Between round trips it waits for notifications a little at a time
//! ([`STOP_POLL`]), bounded by that wait's own timeout rather than the
//! watchdog, so that an idle listener does not keep the watchdog ticking.
//!
//! The connection has its own `application_name`
//! (`flash-coupons-listener-<pid>`), so that an operator (or a test) can
//! find it in `pg_stat_activity`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use log::info;
use postgres::fallible_iterator::FallibleIterator;

use super::conn_error::ConnError;
use super::connector::Connector;
use super::deadline_client::DeadlineClient;
use crate::failure_log::{Ended, FailureLog};

/// Listening on the channel schema.sql's triggers notify on.
const LISTEN: &str = "LISTEN flash_coupons_stock";
/// How often the listener confirms its connection with a round trip.
pub const PING_EVERY: Duration = Duration::from_millis(200);
/// How long a round trip (or LISTEN) may take before the connection counts
/// as lost.
pub const PING_LIMIT: Duration = Duration::from_secs(1);
/// How long after a confirming round trip began memory may still answer.
pub const LEASE: Duration = Duration::from_secs(1);
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(2);
/// While connecting keeps failing, at most one warning per this.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// How often, at least, the listener looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long stopping waits for the thread (it looks every STOP_POLL)
/// before leaving it to end alone: inside a connection attempt or a round
/// trip to a database that does not answer, it ends within the attempt's
/// bound (DB_QUERY_TIMEOUT_MS, PING_LIMIT).
const STOP_WAIT: Duration = Duration::from_millis(300);

/// What the listener reports; implemented by the sold-out memory.
pub trait StockEvents: Send + Sync + 'static {
    /// Listening on a new connection: anything remembered may be stale.
    fn listening(&self);
    /// Every commit notified before the last confirming round trip has been
    /// passed on: memory may answer until `until`.
    fn confirmed_until(&self, until: Instant);
    /// The connection is gone: memory must not answer.
    fn lost(&self);
    /// A commit may have given `coupon` stock or taken a holder away
    /// (`None`: any coupon).
    fn changed(&self, coupon: Option<&str>);
}

/// The running listener thread; dropping it stops the thread.
pub struct StockListener {
    stop: Arc<AtomicBool>,
    /// Dropped to wake the thread from a pause.
    wake: Option<Sender<()>>,
    ended: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl StockListener {
    /// Starts the listener thread. `connector` opens its connections.
    pub(crate) fn start(
        connector: Connector,
        events: Arc<dyn StockEvents>,
    ) -> std::io::Result<StockListener> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = bounded::<()>(0);
        let (end, ended) = bounded::<()>(1);
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("db-listener".into())
                .spawn(move || {
                    run(&connector, &*events, &stop, &woken);
                    let _ = end.send(());
                })?
        };
        Ok(StockListener {
            stop,
            wake: Some(wake),
            ended,
            thread: Some(thread),
        })
    }
}

impl Drop for StockListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.wake.take());
        if self.ended.recv_timeout(STOP_WAIT).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

fn run(connector: &Connector, events: &dyn StockEvents, stop: &AtomicBool, woken: &Receiver<()>) {
    let mut pause = PAUSE_MIN;
    let mut trouble = Trouble::default();
    while !stop.load(Ordering::SeqCst) {
        let began = Instant::now();
        let ended = match connector.open(connector.query_timeout()) {
            Ok(mut client) => {
                let ended = catch_unwind(AssertUnwindSafe(|| {
                    session(&mut client, events, stop, &mut trouble)
                }))
                .unwrap_or_else(|_| Err("the freshness listener panicked".into()));
                events.lost();
                ended
            }
            Err(err) => Err(err.to_string()),
        };
        match ended {
            Ok(()) => return,
            Err(err) => trouble.failed(&err),
        }
        if began.elapsed() > PAUSE_MAX * 2 {
            pause = PAUSE_MIN;
        }
        match woken.recv_timeout(pause) {
            Err(RecvTimeoutError::Timeout) => {}
            // Stopping.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

/// One connection's life: LISTEN, then round trips and notifications until
/// it fails (`Err`) or the listener stops (`Ok`).
fn session(
    client: &mut DeadlineClient,
    events: &dyn StockEvents,
    stop: &AtomicBool,
    trouble: &mut Trouble,
) -> Result<(), String> {
    client
        .run_within("LISTEN", PING_LIMIT, |c| c.batch_execute(LISTEN))
        .map_err(|e| describe(client, e))?;
    events.listening();
    trouble.recovered();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let began = Instant::now();
        client
            .run_within("the freshness listener's round trip", PING_LIMIT, |c| {
                c.simple_query("")?;
                // Those that came before the answer.
                let mut notifications = c.notifications();
                let mut pending = notifications.iter();
                while let Some(n) = pending.next()? {
                    events.changed(payload(n.payload()));
                }
                Ok(())
            })
            .map_err(|e| describe(client, e))?;
        events.confirmed_until(began + LEASE);
        let next = began + PING_EVERY;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || stop.load(Ordering::SeqCst) {
                break;
            }
            // Bounded by its own timeout: no watchdog needed.
            let chunk = left.min(STOP_POLL);
            let waited = Instant::now();
            let heard = client
                .run_self_bounded(|c| c.notifications().timeout_iter(chunk).next())
                .map_err(|e| describe(client, e))?;
            match heard {
                Some(n) => events.changed(payload(n.payload())),
                // Back long before its time: the connection ended, which
                // the round trip that follows reports.
                None if waited.elapsed() < chunk / 2 => break,
                None => {}
            }
        }
    }
}

/// The coupon a notification names; `None` for "everything".
fn payload(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn describe(client: &DeadlineClient, err: postgres::Error) -> String {
    if client.timed_out() {
        format!("no answer within {PING_LIMIT:?}")
    } else {
        ConnError::Db(err).to_string()
    }
}

/// Losing the connection is logged as one run of failures (see
/// `failure_log`): once when it starts, counted at most once per
/// REPORT_EVERY while it lasts, and getting it back once.
struct Trouble(FailureLog);

impl Default for Trouble {
    fn default() -> Trouble {
        Trouble(FailureLog::new(REPORT_EVERY))
    }
}

impl Trouble {
    fn failed(&mut self, err: &str) {
        log_failure!(
            self.0,
            log::Level::Warn,
            "the freshness listener has no connection ({err}); until it is back, claims on \
             sold-out coupons are decided by a transaction, not from memory"
        );
    }

    fn recovered(&mut self) {
        match self.0.succeeded() {
            Some(Ended { failures, over }) => info!(
                "the freshness listener is listening again, after {failures} failures over \
                 {over:.1?}"
            ),
            None => info!("the freshness listener is listening"),
        }
    }
}
