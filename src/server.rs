//! Wiring: the listener, the accept loops, the worker pool and shutdown.
//!
//! tiny_http 0.12 cannot be changed from here, so its hazards are handled
//! around it. Those this module deals with (the README's "tiny_http, and
//! what was done about it" has the others):
//!
//! 1. **Its accept loop ends for good at its first accept error**: EMFILE,
//!    or the timeout our listener carries when no client connects for a
//!    while (see `listener`). The listener is ours, and the supervisor
//!    (`supervise`) starts a new tiny_http server on it, a *generation*,
//!    whenever the current one's accept loop ends.
//! 2. **Its accept thread can die without a word to `recv()`**: it unwraps
//!    the `dup()` of each new socket (EMFILE), and std's `thread::spawn`
//!    panics when no thread can be created (RLIMIT_NPROC, a cgroup's pids
//!    limit, pid_max), which happens inside its task pool while the pool's
//!    mutex is held: the pool is poisoned for good, and each of its threads
//!    panics in turn as its connection ends. A panic hook (`watch_panics`)
//!    tells the supervisor which generation the panicking thread belongs
//!    to; the supervisor retires that generation if it is still the
//!    accepting one (a panic that spared the accept thread costs one spare
//!    accept loop until it times out), and ignores the wake otherwise.
//! 3. **Its threads are unnamed, so they carry the name of the thread that
//!    started them.** Each generation is created under the name `http-<n>`
//!    (`create_generation`), which its accept thread and all its connection
//!    threads inherit. That is how a panic is traced to its generation
//!    (2.), and how the pump knows that a retired generation has no thread
//!    left and so can never produce another request
//!    (`generations_with_threads`).
//! 4. **A request dropped unanswered gets an empty 500**, and a retired
//!    generation still produces requests (a slow head completes long after
//!    its accept loop ended). Two threads hand requests on (`pump`): one
//!    waits on the accepting generation (`pump_accepting`), the other takes
//!    the requests of every retired generation until it has no thread left
//!    (`pump_retired`: it waits on the busiest and looks at the others every
//!    few milliseconds). At shutdown both hand on everything already parsed
//!    (`drain`).
//! 5. **`Server::from_listener` panics when it cannot start its accept
//!    thread.** The panic is caught; the supervisor retries, backing off up
//!    to `PAUSE_MAX`.
//! 6. **Dropping a `tiny_http::Server` connects to its address** to wake its
//!    accept thread, which can wait on a full backlog: generations are
//!    dropped on a thread of their own (`Generation`'s `Drop`), never on the
//!    pump or the supervisor.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use log::{debug, error, info, warn};

use crate::config::{Config, describe_database};
use crate::context::{Context, Writers};
use crate::http::{self, Gate, Job, Outgoing};
use crate::listener;
use crate::store::{StockListener, Store, StoreError};
use crate::workers::WorkerPool;

/// The shortest pause before starting an accept loop after a failure.
const PAUSE_MIN: Duration = Duration::from_millis(50);
/// The longest: once thread creation or descriptors are available again,
/// accepting resumes within this.
const PAUSE_MAX: Duration = Duration::from_secs(2);
/// An accept loop that ends after running this long ends a run of failures.
const STABLE: Duration = Duration::from_secs(10);
/// While accept loops keep failing, at most one warning per this.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// How often the pump looks for requests on retired generations: soon after
/// one came, then less often, down to once per `POLL_MAX`.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);
/// How long the pump waits on the accepting generation alone before it
/// looks again whether the server is stopping.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often the pump checks which retired generations have threads left.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Without /proc to tell, how long a retired generation is pumped.
const RETIRED_BLIND: Duration = Duration::from_secs(600);
/// What the threads of a generation are named, before its number.
const GENERATION_PREFIX: &str = "http-";

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Listen(String),
    Database(StoreError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen(cause) => write!(f, "cannot listen: {cause}"),
            StartError::Database(cause) => write!(f, "{cause}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server. Dropping it (or [`Server::shutdown`]) stops accepting,
/// answers every request already received, and joins the workers.
pub struct Server {
    addr: SocketAddr,
    context: Arc<Context>,
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
    pump: Option<JoinHandle<()>>,
    retired_pump: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
    lanes: Option<Lanes>,
    /// The freshness listener (see `store::freshness`): stopped last.
    freshness: Option<StockListener>,
    /// This server's entry in the panic hook's list.
    watcher: u64,
}

/// The threads that answer requests, stopped in this order: the lanes'
/// last answers still go to the writers.
struct Lanes {
    workers: WorkerPool<Job>,
    light: WorkerPool<Job>,
    writers: WorkerPool<Outgoing>,
    large_writers: WorkerPool<Outgoing>,
}

/// Light threads: /healthz, /metrics and refusals (see `http::gate`).
const LIGHT_THREADS: usize = 4;

/// One tiny_http server on our listener.
struct Generation {
    /// Unique in the process; its threads are named after it.
    number: u64,
    started: Instant,
    /// Always `Some` until dropped.
    http: Option<tiny_http::Server>,
    /// Whether its accept loop is believed to be running. Whoever turns it
    /// off (the pump when `recv()` fails, the supervisor when a thread of
    /// it panicked) retires the generation.
    accepting: AtomicBool,
    /// Where the tiny_http server goes to be dropped.
    reaper: Sender<tiny_http::Server>,
}

impl Generation {
    fn http(&self) -> &tiny_http::Server {
        self.http
            .as_ref()
            .expect("a generation's server until it is dropped")
    }

    /// Hands on every request already queued; false if there was none.
    fn hand_on_queued(&self, hand_on: &HandOn) -> bool {
        let mut any = false;
        loop {
            match self.http().try_recv() {
                Ok(Some(request)) => {
                    any = true;
                    hand_on(request);
                }
                Ok(None) => return any,
                // The end of its accept loop, already handled.
                Err(err) => debug!("{}: {err}", self.name()),
            }
        }
    }

    fn name(&self) -> String {
        generation_name(self.number)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(http) = self.http.take()
            && let Err(unsent) = self.reaper.send(http)
        {
            drop(unsent.into_inner());
        }
    }
}

/// What the supervisor is told.
enum Wake {
    /// The server is stopping.
    Stop,
    /// A generation's accept loop ended with an error seen by `recv()`.
    Ended { generation: u64, error: io::Error },
    /// A thread of a generation panicked (seen by the panic hook).
    Panicked { generation: u64, what: String },
    /// A generation handed on its first request: its accept loop works.
    Serving { generation: u64 },
}

/// What the supervisor, the pumps and `Server` share.
struct Shared {
    stopping: AtomicBool,
    /// A handle on the listening socket, to stop accepting at shutdown.
    listener: TcpListener,
    wake: Sender<Wake>,
}

impl Server {
    pub fn start(config: &Config) -> Result<Server, StartError> {
        match listener::raise_descriptor_limit() {
            Ok(limit) => debug!("open descriptor limit: {limit}"),
            Err(err) => warn!("cannot raise the open descriptor limit: {err}"),
        }
        info!(
            "connecting to the database at {}",
            describe_database(&config.store.database)
        );
        let store = Store::open(&config.store).map_err(StartError::Database)?;
        let write_timeout = config.write_timeout;
        // Unbounded: a writer may wait on a client, and nothing that waits
        // for a writer may be made to wait for room in its queue. Answers in
        // flight are bounded anyway, at one per connection (see `http::gate`).
        let writers = |name: &str, threads: usize| {
            WorkerPool::new(name, threads, None, move |outgoing| {
                http::write(outgoing, write_timeout)
            })
            .map_err(|e| StartError::Listen(format!("starting {name} threads: {e}")))
        };
        let (small, large) = (
            writers("writer", config.writers)?,
            writers("large-writer", config.large_answers)?,
        );
        let context = Arc::new(Context::new(
            store,
            config,
            Writers {
                small: small.submitter(),
                large: large.submitter(),
            },
        ));

        let freshness = context
            .store
            .listen_for_stock(context.claims.stock_events())
            .map_err(|e| StartError::Listen(format!("starting the db-listener thread: {e}")))?;

        let listener = listener::bind(&config.listen_addr, config.idle_timeout)
            .map_err(|e| StartError::Listen(format!("{}: {e}", config.listen_addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(e.to_string()))?;

        let lane = |name: &str, threads: usize| {
            let context = Arc::clone(&context);
            WorkerPool::new(name, threads, Some(threads * 64), move |job| {
                http::serve(&context, job)
            })
            .map_err(|e| StartError::Listen(format!("starting {name} threads: {e}")))
        };
        let lanes = Lanes {
            workers: lane("worker", config.workers)?,
            light: lane("light", LIGHT_THREADS)?,
            writers: small,
            large_writers: large,
        };
        let gate = Arc::new(Gate::new(
            Arc::clone(&context),
            lanes.workers.submitter(),
            lanes.light.submitter(),
            config.idle_timeout,
        ));

        let (wake, woken) = unbounded();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            listener: listener
                .try_clone()
                .map_err(|e| StartError::Listen(e.to_string()))?,
            wake,
        });
        // From here on, dropping `server` stops whatever has been started.
        let mut server = Server {
            addr,
            context,
            watcher: watch_panics(shared.wake.clone()),
            shared: Arc::clone(&shared),
            supervisor: None,
            pump: None,
            retired_pump: None,
            reaper: None,
            lanes: Some(lanes),
            freshness: Some(freshness),
        };
        let (reaper, reaped) = unbounded::<tiny_http::Server>();
        server.reaper = Some(spawn("reaper", move || reaped.iter().for_each(drop))?);
        let (to_pump, generations) = unbounded();
        let (retire, retiring) = unbounded();
        server.retired_pump = Some({
            let shared = Arc::clone(&shared);
            let gate = Arc::clone(&gate);
            let mut state = Retired::default();
            spawn("retired-pump", move || {
                run_pump(&gate, |hand_on| {
                    pump_retired(&mut state, &shared, &retiring, hand_on)
                })
            })?
        });
        server.pump = Some({
            let shared = Arc::clone(&shared);
            let mut state = Accepting::default();
            spawn("pump", move || {
                run_pump(&gate, |hand_on| {
                    pump_accepting(&mut state, &shared, &generations, &retire, hand_on)
                })
            })?
        });
        let (ready, started) = bounded(1);
        server.supervisor = Some(spawn("supervisor", move || {
            supervise(&listener, &shared, &woken, &to_pump, &reaper, &ready)
        })?);
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StartError::Listen(format!("starting the accept loop: {e}")));
            }
            Err(_) => return Err(StartError::Listen("the supervisor stopped".into())),
        }
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The first step of a shutdown with a drain period: /healthz answers
    /// 503 from now on, so that a load balancer checking it stops sending
    /// here, while every request is still accepted and served. Dropping the
    /// server (or [`Server::shutdown`]) then does the rest.
    pub fn start_draining(&self) {
        self.context.start_draining();
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StartError::Listen(format!("starting the {name} thread: {e}")))
}

impl Drop for Server {
    /// Stops accepting, hands every request tiny_http has already parsed to
    /// the pool (a request dropped unanswered would get tiny_http's empty
    /// 500), then lets the pool answer them all and joins it.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes tiny_http's blocked accept() with an error, which ends its
        // accept loop; connections not yet accepted are refused.
        let _ = socket2::SockRef::from(&self.shared.listener).shutdown(Shutdown::Read);
        let _ = self.shared.wake.send(Wake::Stop);
        // The supervisor unblocks the accepting pump as it goes; the pumps
        // hand on what every generation has parsed; the reaper ends with
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
        // Answers every request already handed to a lane, then joins.
        if let Some(Lanes {
            workers,
            light,
            writers,
            large_writers,
        }) = self.lanes.take()
        {
            drop(workers);
            drop(light);
            drop(writers);
            drop(large_writers);
        }
        drop(self.freshness.take());
        info!("stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps one generation accepting: starts the first, then a new one
/// whenever the accepting one ends, at once after an idle timeout and after
/// a pause (doubling up to `PAUSE_MAX`) after a failure. Wakes about any
/// generation but the accepting one are stale and change nothing.
fn supervise(
    listener: &TcpListener,
    shared: &Shared,
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
                if shared.stopping.load(Ordering::SeqCst) {
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
            Ok(Wake::Panicked { generation, what }) => {
                let Some(dead) = current.take_if(|g| g.number == generation) else {
                    debug!("{}: a thread panicked: {what}", generation_name(generation));
                    continue;
                };
                // Its accept thread is gone or its task pool poisoned: it
                // will not accept again. The retired pump goes on serving
                // the connections it has.
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

/// When to start the next accept loop, and the failures in a row so far
/// (accept loops ending on an error or panicking, or not starting). The
/// first failure of a run is a warning, the others are logged at debug
/// level with a warning at most every `REPORT_EVERY`; the pause before each
/// new start doubles, up to `PAUSE_MAX`. A run ends when an accept loop
/// ends idle or has lived `STABLE`.
#[derive(Default)]
struct Restart {
    at: Option<Instant>,
    pause: Duration,
    /// When the run of failures began.
    since: Option<Instant>,
    failures: u32,
    warned: Option<Instant>,
    /// Whether "accepting again" was said in this run.
    announced: bool,
}

impl Restart {
    fn after_idle(&mut self) {
        self.serving();
        *self = Restart::default();
        self.at = Some(Instant::now());
    }

    fn after_end(&mut self, ended: &Generation, what: fmt::Arguments<'_>) {
        if ended.started.elapsed() >= STABLE {
            *self = Restart::default();
        }
        self.after_failure(what);
    }

    fn after_failure(&mut self, what: fmt::Arguments<'_>) {
        let now = Instant::now();
        let pause = self.pause.max(PAUSE_MIN);
        self.at = Some(now + pause);
        self.pause = (pause * 2).min(PAUSE_MAX);
        self.failures = self.failures.saturating_add(1);
        let since = *self.since.get_or_insert(now);
        if self.failures == 1 {
            warn!("{what}; starting a new one in {pause:?}");
        } else if self.warned.is_none_or(|at| now - at >= REPORT_EVERY) {
            warn!(
                "{what}; starting a new one in {pause:?} ({} failures in a row over {:.1?})",
                self.failures,
                now - since
            );
        } else {
            debug!("{what}; starting a new one in {pause:?}");
            return;
        }
        self.warned = Some(now);
    }

    /// The accepting generation handed on its first request.
    fn serving(&mut self) {
        if let Some(since) = self.since
            && !self.announced
        {
            self.announced = true;
            info!(
                "accepting again after {} failed accept loop(s) over {:.1?}",
                self.failures,
                since.elapsed()
            );
        }
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

thread_local! {
    /// Set while this thread creates a generation: a panic then is caught
    /// and reported by `create_generation`, not by the panic hook.
    static CREATING: Cell<bool> = const { Cell::new(false) };
}

/// Starts a tiny_http server on `listener` from under the name of
/// generation `number`, so that every thread it starts carries that name.
fn create_generation(listener: &TcpListener, number: u64) -> io::Result<tiny_http::Server> {
    let listener = listener.try_clone()?;
    let created = as_named(&generation_name(number), move || {
        CREATING.set(true);
        // It panics when it cannot start its accept thread.
        let created = catch_unwind(AssertUnwindSafe(|| {
            tiny_http::Server::from_listener(listener, None)
        }));
        CREATING.set(false);
        created
    });
    match created {
        Ok(Ok(server)) => Ok(server),
        Ok(Err(err)) => Err(io::Error::other(err.to_string())),
        Err(panic) => Err(io::Error::other(panic_message(&*panic))),
    }
}

/// What `pump` hands each request to.
type HandOn<'a> = dyn Fn(tiny_http::Request) + 'a;

/// The accepting pump's state, which outlives a panic of the pump.
#[derive(Default)]
struct Accepting {
    /// The generation accepting connections, if any.
    current: Option<Arc<Generation>>,
    /// Whether `current` has handed on a request yet.
    serving: bool,
}

/// The retired pump's state, which outlives a panic of the pump.
#[derive(Default)]
struct Retired {
    /// Generations whose accept loop ended, with when, until no thread of
    /// theirs is left.
    generations: Vec<(Arc<Generation>, Instant)>,
    /// The one the pump waits on: the last that had a request.
    busiest: usize,
    poll: Duration,
    scanned: Option<Instant>,
}

impl Retired {
    /// Forgets the generations that have no thread left (or, if that cannot
    /// be told, that retired long ago), after handing on their last
    /// requests.
    fn forget_finished(&mut self, hand_on: &HandOn) {
        self.scanned = Some(Instant::now());
        if self.generations.is_empty() {
            return;
        }
        let alive = generations_with_threads();
        if let Err(err) = &alive {
            debug!("cannot list this process's threads: {err}");
        }
        self.generations.retain(|(generation, since)| {
            let finished = match &alive {
                Ok(alive) => !alive.contains(&generation.number),
                Err(_) => since.elapsed() >= RETIRED_BLIND,
            };
            if finished {
                generation.hand_on_queued(hand_on);
                debug!("{}: no connection left", generation.name());
            }
            !finished
        });
    }
}

/// Runs `pump` with `role`, and again should it panic (`role` keeps its
/// state in what it captures).
fn run_pump(gate: &Arc<Gate>, mut role: impl FnMut(&HandOn)) {
    while catch_unwind(AssertUnwindSafe(|| pump(gate, &mut role))).is_err() {
        error!("a request pump panicked; carrying on");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Hands each request of some generations to intake: `role` says which
/// (`pump_accepting` or `pump_retired`).
fn pump(gate: &Arc<Gate>, role: &mut dyn FnMut(&HandOn)) {
    let hand_on = |request: tiny_http::Request| gate.admit(request);
    role(&hand_on);
}

/// Waits on the accepting generation, reports the end of its accept loop
/// and passes it on to the retired pump.
fn pump_accepting(
    state: &mut Accepting,
    shared: &Shared,
    generations: &Receiver<Arc<Generation>>,
    retire: &Sender<Arc<Generation>>,
    hand_on: &HandOn,
) {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            let all: Vec<_> = state
                .current
                .take()
                .into_iter()
                .chain(generations.try_iter())
                .collect();
            drain(&all, hand_on);
            return;
        }
        let Some(current) = state.current.clone() else {
            match generations.recv_timeout(IDLE_WAIT) {
                Ok(generation) => {
                    state.current = Some(generation);
                    state.serving = false;
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Only while stopping.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL_MAX),
            }
            continue;
        };
        match current.http().recv_timeout(IDLE_WAIT) {
            Ok(Some(request)) => {
                hand_on(request);
                if !state.serving {
                    state.serving = true;
                    let _ = shared.wake.send(Wake::Serving {
                        generation: current.number,
                    });
                }
            }
            // A timeout, or unblocked by the supervisor or at shutdown.
            Ok(None) => {}
            Err(error) => {
                if current.accepting.swap(false, Ordering::SeqCst)
                    && !shared.stopping.load(Ordering::SeqCst)
                {
                    let _ = shared.wake.send(Wake::Ended {
                        generation: current.number,
                        error,
                    });
                }
            }
        }
        if !current.accepting.load(Ordering::SeqCst) {
            debug!("{}: retired", current.name());
            state.current = None;
            // Fails only while stopping, when the retired pump has drained
            // and gone; this pump drains the generation itself then.
            if let Err(unsent) = retire.send(current) {
                drain(&[unsent.into_inner()], hand_on);
            }
        }
    }
}

/// Takes the requests of every retired generation until it has no thread
/// left: waits on the one that had a request last, and looks at the
/// others soon after a request came, less often as they stay quiet.
fn pump_retired(
    state: &mut Retired,
    shared: &Shared,
    retiring: &Receiver<Arc<Generation>>,
    hand_on: &HandOn,
) {
    loop {
        let now = Instant::now();
        state
            .generations
            .extend(retiring.try_iter().map(|generation| (generation, now)));
        if shared.stopping.load(Ordering::SeqCst) {
            return drain_retired(state, retiring, hand_on);
        }
        if state.scanned.is_none_or(|at| at.elapsed() >= SCAN_EVERY) {
            state.forget_finished(hand_on);
        }
        if state.generations.is_empty() {
            match retiring.recv_timeout(IDLE_WAIT) {
                Ok(generation) => state.generations.push((generation, Instant::now())),
                Err(RecvTimeoutError::Timeout) => {}
                // Only while stopping.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL_MAX),
            }
            continue;
        }
        let busiest = state.busiest.min(state.generations.len() - 1);
        let waited = match state.generations[busiest].0.http().recv_timeout(state.poll) {
            Ok(Some(request)) => {
                hand_on(request);
                true
            }
            // Nothing within the wait, or an unblock, or the end of an
            // accept loop already retired.
            Ok(None) | Err(_) => false,
        };
        let mut others = None;
        for (i, (generation, _)) in state.generations.iter().enumerate() {
            if generation.hand_on_queued(hand_on) && i != busiest {
                others = Some(i);
            }
        }
        if !waited && let Some(other) = others {
            state.busiest = other;
        }
        state.poll = if waited || others.is_some() {
            POLL_MIN
        } else {
            (state.poll * 2).clamp(POLL_MIN, POLL_MAX)
        };
    }
}

/// At shutdown: goes on handing on the retired generations' requests until
/// the accepting pump, which may pass on one more generation, has gone
/// (bounded), then drains them all.
fn drain_retired(state: &mut Retired, retiring: &Receiver<Arc<Generation>>, hand_on: &HandOn) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (generation, _) in &state.generations {
            generation.hand_on_queued(hand_on);
        }
        match retiring.recv_deadline(deadline.min(Instant::now() + POLL_MAX)) {
            Ok(generation) => state.generations.push((generation, Instant::now())),
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => break,
        }
    }
    let all: Vec<_> = state.generations.drain(..).map(|(g, _)| g).collect();
    drain(&all, hand_on);
}

/// Hands on every request the generations have parsed, including those
/// their connection threads finish parsing within a short grace period.
fn drain(generations: &[Arc<Generation>], hand_on: &HandOn) {
    for round in 0..4 {
        for generation in generations {
            generation.hand_on_queued(hand_on);
        }
        if round < 3 {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Supervisors to tell when a thread of a generation panics, by server.
static WATCHERS: Mutex<Vec<(u64, Sender<Wake>)>> = Mutex::new(Vec::new());

/// tiny_http's threads die of panics that `recv()` never reports (see the
/// module's notes). A panic hook is the only place that sees them: it tells
/// every supervisor the generation of the panicking thread, from the
/// thread's name, and logs nothing itself (the supervisor does). Other
/// panics go to the hook that was there before. Returns the id to give to
/// [`unwatch_panics`].
fn watch_panics(wake: Sender<Wake>) -> u64 {
    static HOOK: std::sync::Once = std::sync::Once::new();
    static IDS: AtomicU64 = AtomicU64::new(0);
    let id = IDS.fetch_add(1, Ordering::SeqCst);
    lock(&WATCHERS).push((id, wake));
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CREATING.try_with(Cell::get).unwrap_or(false) {
                return;
            }
            let Some(generation) = thread_name().as_deref().and_then(generation_of) else {
                return previous(info);
            };
            let what = match info.location() {
                Some(at) => format!(
                    "{} at {}:{}",
                    panic_message(info.payload()),
                    at.file(),
                    at.line()
                ),
                None => panic_message(info.payload()),
            };
            let mut told = false;
            for (_, watcher) in lock(&WATCHERS).iter() {
                let wake = Wake::Panicked {
                    generation,
                    what: what.clone(),
                };
                told |= watcher.send(wake).is_ok();
            }
            if !told {
                previous(info);
            }
        }));
    });
    id
}

fn unwatch_panics(id: u64) {
    lock(&WATCHERS).retain(|(watcher, _)| *watcher != id);
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn generation_name(number: u64) -> String {
    format!("{GENERATION_PREFIX}{number}")
}

fn generation_of(thread_name: &str) -> Option<u64> {
    let digits = thread_name.strip_prefix(GENERATION_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The generations that still have a thread, from the names of this
/// process's threads.
fn generations_with_threads() -> io::Result<HashSet<u64>> {
    let mut alive = HashSet::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        // A thread can end between the listing and the read.
        let Ok(task) = task else { continue };
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm"))
            && let Some(number) = generation_of(name.trim_end_matches('\n'))
        {
            alive.insert(number);
        }
    }
    Ok(alive)
}

/// Runs `f` with this thread named `name`, a name the threads it starts
/// inherit; then gives the thread its own name back.
fn as_named<T>(name: &str, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(name) = &self.0 {
                set_thread_name(name);
            }
        }
    }
    let own = thread_name();
    if own.is_some() {
        set_thread_name(name);
    }
    let _restore = Restore(own);
    f()
}

/// This thread's name as the kernel has it (at most 15 bytes).
#[cfg(target_os = "linux")]
fn thread_name() -> Option<String> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, to `name`.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } != 0 {
        return None;
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// Names this thread `name`, cut to the kernel's 15 bytes.
#[cfg(target_os = "linux")]
fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    let len = name.len().min(15);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string; `buf` ends in NUL.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

// Elsewhere threads do not inherit names: panics cannot be traced to a
// generation, and retired generations are pumped for `RETIRED_BLIND`.
#[cfg(not(target_os = "linux"))]
fn thread_name() -> Option<String> {
    None
}

#[cfg(not(target_os = "linux"))]
fn set_thread_name(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_round_trip_and_fit_the_kernel_limit() {
        assert_eq!(generation_of(&generation_name(7)), Some(7));
        assert!(generation_name(9_999_999_999).len() <= 15);
        assert_eq!(generation_of("http-"), None);
        assert_eq!(generation_of("http-+3"), None);
        assert_eq!(generation_of("worker-3"), None);
        assert_eq!(generation_of("http-pump"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_started_under_a_generation_name_carry_it() {
        let name = generation_name(9_999_999_998);
        let (tx, rx) = bounded::<()>(0);
        let child = as_named(&name, || {
            thread::spawn(move || {
                let _ = rx.recv();
                thread_name()
            })
        });
        assert_ne!(thread_name().as_deref(), Some(name.as_str()));
        assert!(generations_with_threads().unwrap().contains(&9_999_999_998));
        drop(tx);
        assert_eq!(child.join().unwrap().as_deref(), Some(name.as_str()));
    }
}
