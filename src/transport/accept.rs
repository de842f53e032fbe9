//! The accept loops. Each is a tiny_http server on our listener, a
//! *generation*; the supervisor keeps one accepting (tiny_http defects 4,
//! 5 and 7 in the transport's list), and the reaper drops the old ones
//! (defect 8). The pumps (`pump`) take their requests.

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use log::debug;

use super::TransportError;
use super::admission::Admission;
use super::pump::{self, Forward};
use super::threads::{
    as_named, catch_quietly, generation_name, panic_message, unwatch_panics, watch_panics,
};
use crate::failure_log::FailureLog;

/// The shortest pause before starting an accept loop after a failure.
const PAUSE_MIN: Duration = Duration::from_millis(50);
/// The longest: once thread creation or descriptors are available again,
/// accepting resumes within this.
pub(super) const PAUSE_MAX: Duration = Duration::from_secs(2);
/// An accept loop that ends after running this long ends a run of failures.
const STABLE: Duration = Duration::from_secs(10);
/// While accept loops keep failing, at most one warning per this.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The threads that keep a generation accepting and take the requests of
/// every generation: the supervisor, the two pumps and the reaper.
/// Dropping it stops accepting and passes on every request already parsed.
pub(super) struct AcceptLoops {
    control: Arc<Control>,
    supervisor: Option<JoinHandle<()>>,
    pump: Option<JoinHandle<()>>,
    retired_pump: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
    /// This server's entry in the panic hook's list.
    watcher: u64,
}

impl AcceptLoops {
    /// Starts accepting on `listener`, handing each request to `admission`, and
    /// returns once the first accept loop runs. `handle` is another handle
    /// on the listening socket, kept to stop accepting.
    pub(super) fn start(
        listener: TcpListener,
        handle: TcpListener,
        admission: Arc<Admission>,
    ) -> Result<AcceptLoops, TransportError> {
        let (wake, woken) = unbounded();
        let control = Arc::new(Control {
            stopping: AtomicBool::new(false),
            listener: handle,
            wake,
        });
        // From here on, dropping `loops` stops whatever has been started.
        let mut loops = AcceptLoops {
            watcher: watch_panics(control.wake.clone()),
            control: Arc::clone(&control),
            supervisor: None,
            pump: None,
            retired_pump: None,
            reaper: None,
        };
        // tiny_http defect 8: generations are dropped here, where waiting
        // holds up nothing.
        let (reaper, reaped) = unbounded::<tiny_http::Server>();
        loops.reaper = Some(spawn("reaper", "the reaper thread", move || {
            reaped.iter().for_each(drop)
        })?);
        let (to_pump, generations) = unbounded();
        let (retire, retiring) = unbounded();
        loops.retired_pump = Some({
            let control = Arc::clone(&control);
            let admission = Arc::clone(&admission);
            spawn("retired-pump", "the retired-pump thread", move || {
                pump::retired(&admission, &control, &retiring)
            })?
        });
        loops.pump = Some({
            let control = Arc::clone(&control);
            spawn("pump", "the pump thread", move || {
                pump::accepting(&admission, &control, &generations, &retire)
            })?
        });
        let (ready, started) = bounded(1);
        loops.supervisor = Some(spawn("supervisor", "the supervisor thread", move || {
            supervise(&listener, &control, &woken, &to_pump, &reaper, &ready)
        })?);
        match started.recv() {
            Ok(Ok(())) => Ok(loops),
            Ok(Err(source)) => Err(TransportError::AcceptLoop { source }),
            Err(_) => Err(TransportError::Supervisor),
        }
    }
}

impl Drop for AcceptLoops {
    /// Stops accepting and hands every request tiny_http has already parsed
    /// to the admission: a request dropped unanswered would get tiny_http's empty
    /// 500 (tiny_http defect 9).
    fn drop(&mut self) {
        self.control.stopping.store(true, Ordering::SeqCst);
        // tiny_http stops accepting only when its server is dropped, which
        // can wait (tiny_http defect 8). Shut down, the listener fails the
        // accept() every generation is blocked in, which ends its accept
        // loop (defect 4); connections not yet accepted are refused.
        let _ = socket2::SockRef::from(&self.control.listener).shutdown(Shutdown::Read);
        let _ = self.control.wake.send(Wake::Stop);
        // The supervisor unblocks the accepting pump as it goes; the pumps
        // pass on what every generation has parsed; the reaper ends with
        // the last generation.
        let threads = [
            self.supervisor.take(),
            self.pump.take(),
            self.retired_pump.take(),
            self.reaper.take(),
        ];
        for thread in threads.into_iter().flatten() {
            let _ = thread.join();
        }
        unwatch_panics(self.watcher);
    }
}

/// Starts a thread named `name`; `what` names it in the error.
fn spawn(
    name: &str,
    what: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, TransportError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| TransportError::Thread { what, source })
}

/// What the supervisor, the pumps and `AcceptLoops` share.
pub(super) struct Control {
    pub(super) stopping: AtomicBool,
    /// A handle on the listening socket, to stop accepting at shutdown.
    listener: TcpListener,
    pub(super) wake: Sender<Wake>,
}

/// What the supervisor is told. `generation` is the number of the
/// generation it is about: only news of the accepting one changes anything,
/// since a generation that was replaced can still report.
pub(super) enum Wake {
    /// The server is stopping.
    Stop,
    /// A generation's accept loop ended with `error`, as `recv()` on it
    /// said (sent by the accepting pump). A timeout means the loop was idle
    /// (our listener's accept timeout, tiny_http defect 4); anything else
    /// is a failure.
    Ended { generation: u64, error: io::Error },
    /// A thread of a generation panicked, `what` saying where and why (sent
    /// by the panic hook; tiny_http defect 5). `one_connection`: the thread
    /// was one connection's, in tiny_http's task pool; its accept loop is
    /// unharmed.
    Panicked {
        generation: u64,
        what: String,
        one_connection: bool,
    },
    /// A generation passed on its first request, so its accept loop works
    /// (sent by the accepting pump).
    Serving { generation: u64 },
}

/// One tiny_http server on our listener.
pub(super) struct Generation {
    /// Unique in the process; its threads are named after it (tiny_http
    /// defect 6).
    pub(super) number: u64,
    started: Instant,
    /// Always `Some` until dropped.
    http: Option<tiny_http::Server>,
    /// Whether its accept loop is believed to be running. Whoever turns it
    /// off (the pump when `recv()` fails, the supervisor when a thread of
    /// it panicked) retires the generation.
    pub(super) accepting: AtomicBool,
    /// Where the tiny_http server goes to be dropped (tiny_http defect 8).
    reaper: Sender<tiny_http::Server>,
}

impl Generation {
    pub(super) fn http(&self) -> &tiny_http::Server {
        self.http
            .as_ref()
            .expect("a generation's server until it is dropped")
    }

    /// Passes on every request already queued; false if there was none.
    pub(super) fn forward_queued(&self, forward: &Forward) -> bool {
        let mut any = false;
        loop {
            match self.http().try_recv() {
                Ok(Some(request)) => {
                    any = true;
                    forward(request);
                }
                Ok(None) => return any,
                // The end of its accept loop, already handled.
                Err(err) => debug!("{}: {err}", self.name()),
            }
        }
    }

    pub(super) fn name(&self) -> String {
        generation_name(self.number)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // tiny_http defect 8: dropped here only if the reaper is gone.
        if let Some(http) = self.http.take()
            && let Err(unsent) = self.reaper.send(http)
        {
            drop(unsent.into_inner());
        }
    }
}

/// Keeps one generation accepting (tiny_http defect 4): starts the first,
/// then a new one whenever the accepting one ends, at once after an idle
/// timeout and after a pause (doubling up to `PAUSE_MAX`) after a failure.
/// Wakes about any generation but the accepting one are stale and change
/// nothing.
fn supervise(
    listener: &TcpListener,
    control: &Control,
    woken: &Receiver<Wake>,
    pump: &Sender<Arc<Generation>>,
    reaper: &Sender<tiny_http::Server>,
    ready: &Sender<io::Result<()>>,
) {
    let mut current = match start_generation(listener, pump, reaper) {
        Ok(generation) => Some(generation),
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut restart = Restart::default();
    loop {
        let wake = match restart.at {
            Some(at) => woken.recv_deadline(at),
            None => woken.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match wake {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if control.stopping.load(Ordering::SeqCst) {
                    break;
                }
                match start_generation(listener, pump, reaper) {
                    Ok(generation) => {
                        current = Some(generation);
                        restart.at = None;
                    }
                    Err(err) => {
                        restart.after_failure(format_args!("cannot start an accept loop: {err}"))
                    }
                }
            }
            Ok(Wake::Ended { generation, error }) => {
                let Some(ended) = current.take_if(|g| g.number == generation) else {
                    debug!("{}: stale end: {error}", generation_name(generation));
                    continue;
                };
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    debug!("{}: accept loop idle; starting a new one", ended.name());
                    restart.after_idle();
                } else {
                    restart.after_end(
                        &ended,
                        format_args!("accept loop ended: {error} ({})", ended.name()),
                    );
                }
            }
            Ok(Wake::Panicked {
                generation,
                what,
                one_connection: true,
            }) => {
                // tiny_http defect 5: a connection's thread died, and
                // tiny_http's task pool starts threads only as it hands out
                // a new connection, so connections queued for that pool
                // would wait with no thread to take them, until the accept
                // loop ends and drops them unanswered. A connection of our
                // own, hung up at once, makes a thread start.
                debug!(
                    "{}: a connection's thread panicked: {what}",
                    generation_name(generation)
                );
                poke(listener);
            }
            Ok(Wake::Panicked {
                generation,
                what,
                one_connection: false,
            }) => {
                let Some(dead) = current.take_if(|g| g.number == generation) else {
                    debug!("{}: a thread panicked: {what}", generation_name(generation));
                    continue;
                };
                // tiny_http defect 5: its accept thread is gone or its task
                // pool poisoned, so it will not accept again. The retired
                // pump goes on serving the connections it has.
                dead.accepting.store(false, Ordering::SeqCst);
                dead.http().unblock();
                restart.after_end(
                    &dead,
                    format_args!(
                        "accept loop ended: a tiny_http thread panicked ({}: {what})",
                        dead.name()
                    ),
                );
            }
            Ok(Wake::Serving { generation }) => {
                if current.as_ref().is_some_and(|g| g.number == generation) {
                    restart.serving();
                }
            }
        }
    }
    if let Some(current) = current {
        current.http().unblock();
    }
}

/// The longest a poke waits to connect.
const POKE_TIMEOUT: Duration = Duration::from_millis(200);

/// Connects to our own `listener` and hangs up at once: the accept loop
/// that accepts it hands it to its task pool, which starts a thread when
/// none is idle, and that thread then takes the connections queued there.
fn poke(listener: &TcpListener) {
    let mut addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => return debug!("cannot poke the listener: {err}"),
    };
    if addr.ip().is_unspecified() {
        let loopback: IpAddr = match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    if let Err(err) = TcpStream::connect_timeout(&addr, POKE_TIMEOUT) {
        debug!("cannot poke the listener at {addr}: {err}");
    }
}

/// When to start the next accept loop, and the run of failures so far
/// (accept loops ending on an error or panicking, or not starting), in the
/// log as one run (see `failure_log`): the pause before each new start
/// doubles, up to `PAUSE_MAX`. A run ends when the accepting loop passes on
/// a request, ends idle, or has lived `STABLE`.
struct Restart {
    at: Option<Instant>,
    pause: Duration,
    failures: FailureLog,
}

impl Default for Restart {
    fn default() -> Restart {
        Restart {
            at: None,
            pause: Duration::ZERO,
            failures: FailureLog::new(REPORT_EVERY),
        }
    }
}

impl Restart {
    fn after_idle(&mut self) {
        self.serving();
        self.pause = Duration::ZERO;
        self.at = Some(Instant::now());
    }

    fn after_end(&mut self, ended: &Generation, what: fmt::Arguments<'_>) {
        if ended.started.elapsed() >= STABLE {
            self.failures.succeeded();
            self.pause = Duration::ZERO;
        }
        self.after_failure(what);
    }

    fn after_failure(&mut self, what: fmt::Arguments<'_>) {
        let pause = self.pause.max(PAUSE_MIN);
        self.at = Some(Instant::now() + pause);
        self.pause = (pause * 2).min(PAUSE_MAX);
        log_failure!(
            self.failures,
            log::Level::Warn,
            "{what}; starting a new one in {pause:?}"
        );
    }

    /// The accepting generation passed on a request, or ended idle.
    fn serving(&mut self) {
        log_recovery!(self.failures, "accepting again");
    }
}

/// Creates a generation and hands it to the pump.
fn start_generation(
    listener: &TcpListener,
    pump: &Sender<Arc<Generation>>,
    reaper: &Sender<tiny_http::Server>,
) -> io::Result<Arc<Generation>> {
    static NUMBERS: AtomicU64 = AtomicU64::new(0);
    // Ten digits at most, so that `http-<n>` fits the kernel's 15 bytes.
    let number = NUMBERS.fetch_add(1, Ordering::SeqCst) % 9_999_999_999 + 1;
    let generation = Arc::new(Generation {
        number,
        started: Instant::now(),
        http: Some(create_generation(listener, number)?),
        accepting: AtomicBool::new(true),
        reaper: reaper.clone(),
    });
    pump.send(Arc::clone(&generation))
        .map_err(|_| io::Error::other("the pump has stopped"))?;
    debug!("{}: accept loop started", generation.name());
    Ok(generation)
}

/// Starts a tiny_http server on `listener` from under the name of
/// generation `number`, so that every thread it starts carries that name
/// (tiny_http defect 6).
fn create_generation(listener: &TcpListener, number: u64) -> io::Result<tiny_http::Server> {
    let listener = listener.try_clone()?;
    let created = as_named(&generation_name(number), move || {
        // tiny_http defect 7: it panics when it cannot start its accept
        // thread.
        catch_quietly(|| tiny_http::Server::from_listener(listener, None))
    });
    match created {
        Ok(Ok(server)) => Ok(server),
        Ok(Err(err)) => Err(io::Error::other(err.to_string())),
        Err(panic) => Err(io::Error::other(panic_message(&*panic))),
    }
}
