//! A database connection whose every operation runs under a client-side
//! deadline: the driver's `postgres::Client`, registered with the watchdog
//! (see `watchdog`), which cuts the connection's socket when an operation
//! outlives its deadline. Every connection the store opens is one of these
//! (see `connector`): the pooled ones, the health probe's, the freshness
//! listener's and start-up's.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Row, ToStatement};

use super::conn_error::ConnError;
use super::locate::locate;
use super::watchdog::Slot;

/// A `postgres::Client` whose every operation has a deadline: past it, the
/// watchdog shuts the socket down, the call fails with an I/O error, and
/// the connection counts as broken (r2d2 then discards it).
///
/// Connections whose socket could not be found (Unix sockets; a proxy or NAT
/// that changes the addresses) run without the deadline.
pub(crate) struct DeadlineClient {
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

impl DeadlineClient {
    /// Pairs a new connection with its socket and registers it with the
    /// watchdog.
    pub(super) fn guard(
        mut inner: postgres::Client,
        timeout: Duration,
    ) -> Result<DeadlineClient, postgres::Error> {
        let fd = locate(&mut inner)?;
        Ok(DeadlineClient {
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
        let DeadlineClient {
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

    /// Notes that the connection went back to the pool unbroken, now.
    pub(super) fn returned_now(&mut self) {
        self.returned = Some(Instant::now());
    }

    /// Whether the connection went back to the pool unbroken less than
    /// `within` ago.
    pub(super) fn returned_within(&self, within: Duration) -> bool {
        self.returned.is_some_and(|at| at.elapsed() < within)
    }

    /// A round trip that must come back within `timeout`. On failure the
    /// connection is broken: a timed-out check leaves a reply owed, which
    /// the connection could only wait for.
    pub(super) fn check(&mut self, timeout: Duration) -> Result<(), ConnError> {
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

    pub(crate) fn batch_execute(&mut self, query: &str) -> Result<(), postgres::Error> {
        self.run("a statement", |c| c.batch_execute(query))
    }

    pub(crate) fn query<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run("a query", |c| c.query(query, params))
    }

    pub(crate) fn query_opt<T>(
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

impl Drop for DeadlineClient {
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
