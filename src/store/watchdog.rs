//! A client-side deadline on every database operation.
//!
//! The synchronous `postgres` client has no per-query timeout, and its
//! socket lives inside a private tokio runtime: a query sent to a database
//! that stops answering (its processes stopped, a VM frozen: the kernel still
//! acknowledges TCP, so neither keepalives nor TCP_USER_TIMEOUT fire) blocks
//! the calling thread until the database comes back.
//!
//! So every TCP connection is paired, right after it opens, with its own
//! socket descriptor: the server tells us the connection's two ends
//! (`inet_client_addr/port`, `inet_server_addr/port`), and exactly one socket
//! in this process has that address pair (see `crate::sockets`). Before each
//! operation the connection's [`Slot`] is armed with a deadline; a watchdog
//! thread calls `shutdown(fd, SHUT_RDWR)` on a connection whose operation
//! outlives it. The blocked call then fails at once with an I/O error
//! (mapped to 503 `database_unavailable`) and the connection is discarded.
//!
//! The descriptor is only ever touched under its slot's lock, and the slot
//! is closed (under that lock) before the connection, and so its descriptor,
//! is dropped: the watchdog never acts on a descriptor that may have been
//! reused. Shutting a socket down does not close its descriptor.
//!
//! Connections whose socket cannot be found (a Unix socket, whose ends carry
//! no address; or a proxy or NAT between us and PostgreSQL, which then
//! reports other addresses) go without: they are bounded only by the
//! server-side statement_timeout and, over TCP, by keepalives.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use crate::lock::lock;
use std::thread;
use std::time::{Duration, Instant};

use log::{error, warn};

/// How often the watchdog looks at armed deadlines while any is armed: a
/// deadline is enforced at most this late.
const TICK: Duration = Duration::from_millis(25);

/// One connection's descriptor and the deadline of its current operation.
pub(crate) struct Slot {
    fd: RawFd,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// When the running operation must have ended; `None` between operations.
    deadline: Option<Instant>,
    /// What the running operation is, and its bound, for the log.
    op: &'static str,
    limit: Duration,
    /// The watchdog shut the socket down: the connection is dead.
    tripped: bool,
    /// The connection is being dropped: its descriptor must not be touched.
    closed: bool,
}

/// The watchdog's table of connections, each with its deadline when one is
/// armed.
struct Deadlines {
    slots: Mutex<Vec<Weak<Slot>>>,
    /// Operations armed right now; the watchdog sleeps while there are none.
    armed: AtomicUsize,
    wake: Condvar,
}

/// The process-wide watchdog, started on first use; `None` if its thread
/// could not be started (then no deadline is enforced, and that was logged).
fn deadlines() -> Option<&'static Deadlines> {
    static DEADLINES: OnceLock<Option<&'static Deadlines>> = OnceLock::new();
    *DEADLINES.get_or_init(|| {
        let deadlines: &'static Deadlines = Box::leak(Box::new(Deadlines {
            slots: Mutex::new(Vec::new()),
            armed: AtomicUsize::new(0),
            wake: Condvar::new(),
        }));
        match thread::Builder::new()
            .name("db-watchdog".into())
            .spawn(move || watch(deadlines))
        {
            Ok(_) => Some(deadlines),
            Err(err) => {
                error!(
                    "cannot start the database watchdog ({err}); database operations have no \
                     client-side deadline"
                );
                None
            }
        }
    })
}

impl Slot {
    /// Registers the socket `fd` of a connection that is open and owned by
    /// the caller, who must call [`Slot::close`] before the socket closes.
    pub(crate) fn register(fd: RawFd) -> Option<Arc<Slot>> {
        let deadlines = deadlines()?;
        let slot = Arc::new(Slot {
            fd,
            state: Mutex::new(SlotState::default()),
        });
        let mut slots = lock(&deadlines.slots);
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        Some(slot)
    }

    /// Starts the deadline of one operation.
    pub(crate) fn arm(&self, op: &'static str, limit: Duration) {
        {
            let mut state = lock(&self.state);
            state.deadline = Some(Instant::now() + limit);
            state.op = op;
            state.limit = limit;
        }
        if let Some(deadlines) = deadlines()
            && deadlines.armed.fetch_add(1, Ordering::SeqCst) == 0
        {
            // Taken so the notification cannot fall between the watchdog's
            // check of `armed` and its wait.
            let _slots = lock(&deadlines.slots);
            deadlines.wake.notify_one();
        }
    }

    /// Ends the operation's deadline; true if the watchdog cut the
    /// connection (whatever the operation returned, the connection is dead).
    pub(crate) fn disarm(&self) -> bool {
        let tripped = {
            let mut state = lock(&self.state);
            state.deadline = None;
            state.tripped
        };
        if let Some(deadlines) = deadlines() {
            deadlines.armed.fetch_sub(1, Ordering::SeqCst);
        }
        tripped
    }

    pub(crate) fn tripped(&self) -> bool {
        lock(&self.state).tripped
    }

    /// Called before the connection is dropped: from now on the descriptor
    /// is never touched again. With `cut`, the socket is shut down first, so
    /// that dropping the client cannot wait on a database that does not
    /// answer (the driver's close waits for replies still owed to it).
    pub(crate) fn close(&self, cut: bool) {
        let mut state = lock(&self.state);
        if cut && !state.tripped && !state.closed {
            shut_down(self.fd);
            state.tripped = true;
        }
        state.closed = true;
    }
}

fn shut_down(fd: RawFd) {
    // SAFETY: `fd` is the socket of a connection that is still open: the
    // caller holds the slot's lock and the slot is not closed. shutdown()
    // does not close or invalidate the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// The watchdog thread: while any operation is armed, every TICK it cuts
/// the connections whose operation is past its deadline, and logs one line
/// for all of those it cut in that round.
fn watch(deadlines: &'static Deadlines) {
    loop {
        {
            let mut slots = lock(&deadlines.slots);
            while deadlines.armed.load(Ordering::SeqCst) == 0 {
                slots = deadlines
                    .wake
                    .wait(slots)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        thread::sleep(TICK);
        let live: Vec<Arc<Slot>> = {
            let mut slots = lock(&deadlines.slots);
            slots.retain(|s| s.strong_count() > 0);
            slots.iter().filter_map(Weak::upgrade).collect()
        };
        let now = Instant::now();
        let mut cut: Vec<(&'static str, Duration)> = Vec::new();
        for slot in &live {
            let mut state = lock(&slot.state);
            let due = state.deadline.is_some_and(|d| d <= now);
            if due && !state.tripped && !state.closed {
                shut_down(slot.fd);
                state.tripped = true;
                cut.push((state.op, state.limit));
            }
        }
        drop(live);
        report(&cut);
    }
}

fn report(cut: &[(&'static str, Duration)]) {
    match cut {
        [] => {}
        [(op, limit)] => warn!(
            "the database did not answer within {limit:?} ({op}); closed that connection \
             (the request gets 503)"
        ),
        _ => {
            let mut ops: Vec<&str> = cut.iter().map(|(op, _)| *op).collect();
            ops.sort_unstable();
            ops.dedup();
            let longest = cut.iter().map(|(_, l)| *l).max().unwrap_or_default();
            warn!(
                "the database did not answer {} operations within their deadline (up to \
                 {longest:?}; {}); closed those connections (their requests get 503)",
                cut.len(),
                ops.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_deadline_that_passes_cuts_the_blocked_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_silent, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();
        let slot = Slot::register(fd).unwrap();
        slot.arm("a test read", Duration::from_millis(100));
        let began = Instant::now();
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        // The peer never writes: only the watchdog can end this read.
        let read = client.read(&mut buf);
        assert!(matches!(read, Ok(0)), "{read:?}");
        assert!(began.elapsed() < Duration::from_secs(10));
        assert!(slot.disarm(), "the slot says it was cut");
        slot.close(false);
    }

    #[test]
    fn a_closed_slot_is_never_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_silent, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();
        let slot = Slot::register(fd).unwrap();
        slot.close(false);
        slot.arm("after close", Duration::ZERO);
        thread::sleep(TICK * 8);
        assert!(!slot.disarm());
        // Still connected: a write goes through.
        use std::io::Write;
        assert!((&client).write_all(b"x").is_ok());
    }
}
