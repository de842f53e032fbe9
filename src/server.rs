//! Wiring: starts everything a running server is made of, and stops it.
//!
//! [`Server::start`] is the whole start-up: `main.rs` calls it once, and the
//! integration tests call it to run the real server in-process. It opens
//! the store, starts the threads that answer requests (the lanes the gate
//! feeds, and the writers), binds the listener (`listener`) and starts
//! accepting (`accept`). Dropping the [`Server`] stops accepting, answers
//! every request already received and stops the rest, in that order.
//!
//! A request's path: a tiny_http connection thread parses it, a pump
//! (`pump`) hands it to the gate (`http::gate`), which puts it on a lane; a
//! lane's thread answers it and hands the answer to a writer. The README's
//! "Threads and connections" says what each kind of thread may wait on.
//!
//! # Layout
//!
//! - this file: [`Server`], [`StartError`], the lanes and writers, and the
//!   order things start and stop in;
//! - `accept`: the accept loops. Each is a tiny_http server on our
//!   listener, a *generation*; a supervisor keeps one accepting, and a
//!   reaper drops the old ones;
//! - `pump`: the two threads that take every generation's requests and hand
//!   them to the gate;
//! - `threads`: thread names, which trace a tiny_http thread to its
//!   generation, and the panic hook that uses them.
//!
//! Everything under `server/` is there for tiny_http's defects below: with
//! a server free of them, `accept` and `pump` would come down to one loop
//! handing each request to the gate, and `threads` would go.
//!
//! # tiny_http's defects worked around here
//!
//! tiny_http cannot be changed from here, so its defects are worked around
//! from outside it. The code of each workaround names its defect as
//! "tiny_http defect N", after this list. The README's "tiny_http, and what
//! was done about it" has them all, with what was seen, including those
//! handled elsewhere (socket timeouts in `listener`, bodies and answers in
//! `http`).
//!
//! 1. **Its accept loop ends for good at its first accept error**: EMFILE,
//!    or the timeout our listener carries when no client connects for a
//!    while (see `listener`). The listener is ours, and the supervisor
//!    (`accept::supervise`) starts a new generation on it whenever the
//!    accepting one's loop ends. tiny_http logs each end as an error, which
//!    `main.rs` filters out.
//! 2. **Its threads can die of a panic that `recv()` never reports**: the
//!    accept thread unwraps the `dup()` of each new socket (EMFILE), and
//!    std's `thread::spawn` panics when no thread can be created
//!    (RLIMIT_NPROC, a cgroup's pids limit, pid_max), which happens inside
//!    its task pool while the pool's mutex is held: the pool is poisoned for
//!    good, and each of its threads panics in turn as its connection ends.
//!    A panic hook (`threads::watch_panics`) tells the supervisor which
//!    generation the panicking thread belongs to; the supervisor retires
//!    that generation if it is still the accepting one (a panic that spared
//!    the accept thread costs one spare accept loop until it times out),
//!    and ignores the wake otherwise.
//! 3. **Its threads are unnamed, so on Linux they carry the name of the
//!    thread that started them.** Each generation is created under the name
//!    `http-<n>` (`accept::create_generation`), which its accept thread and
//!    all its connection threads inherit. That is how a panic is traced to
//!    its generation (2), and how the retired pump knows that a retired
//!    generation has no thread left and so can never produce another
//!    request (`threads::generations_with_threads`).
//! 4. **A request dropped unanswered gets an empty 500**, and a retired
//!    generation still produces requests (a slow head completes long after
//!    its accept loop ended). Two pumps hand requests on: one waits on the
//!    accepting generation (`pump::pump_accepting`), the other takes the
//!    requests of every retired generation until it has no thread left
//!    (`pump::pump_retired`). At shutdown both hand on everything already
//!    parsed (`pump::drain`).
//! 5. **`Server::from_listener` panics when it cannot start its accept
//!    thread.** The panic is caught (`accept::create_generation`), and the
//!    supervisor tries again, backing off up to `accept::PAUSE_MAX`.
//! 6. **Dropping a `tiny_http::Server` connects to its address** to wake its
//!    accept thread, and that connect can wait on a full backlog:
//!    generations are dropped on the reaper's thread (`Generation`'s
//!    `Drop`), never on a pump or the supervisor.

mod accept;
mod pump;
mod threads;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use log::{debug, info, warn};

use crate::config::{Config, describe_database};
use crate::context::{Context, Writers};
use crate::http::{self, Gate, Job, Outgoing};
use crate::listener;
use crate::store::{OpenError, StockListener, Store};
use crate::workers::WorkerPool;

use accept::AcceptLoops;

/// Threads of the light lane: /healthz, /metrics and refusals (see
/// `http::gate`).
const LIGHT_THREADS: usize = 4;
/// Requests that may wait for each thread of a lane. A full lane is
/// answered 503 at once rather than holding up the pumps.
const LANE_QUEUE_PER_THREAD: usize = 64;

/// Why the server could not start. Each variant keeps its cause as its
/// [`source`](std::error::Error::source), which its message leaves out.
#[derive(Debug)]
pub enum StartError {
    /// The store could not be opened: the database was not reached within
    /// `DB_STARTUP_TIMEOUT_SECS`, refused us for good, cannot hold what the
    /// service stores, or refused the schema.
    Database(OpenError),
    /// The listening socket on `addr` (`LISTEN_ADDR`) could not be made, or
    /// asked its address, or given a second handle.
    Listen { addr: String, source: io::Error },
    /// Threads could not be started: `what` names them (a pool, such as
    /// "worker threads", or one thread, such as "the reaper thread").
    Thread {
        what: &'static str,
        source: io::Error,
    },
    /// The first accept loop (a tiny_http server on the listener) could not
    /// be started.
    AcceptLoop { source: io::Error },
    /// The supervisor ended before saying whether the first accept loop
    /// started (it panicked).
    Supervisor,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Database(_) => write!(f, "cannot open the database"),
            StartError::Listen { addr, .. } => write!(f, "cannot listen on {addr}"),
            StartError::Thread { what, .. } => write!(f, "cannot start {what}"),
            StartError::AcceptLoop { .. } => write!(f, "cannot start the accept loop"),
            StartError::Supervisor => {
                write!(f, "cannot start the accept loop: the supervisor stopped")
            }
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Database(source) => Some(source),
            StartError::Listen { source, .. }
            | StartError::Thread { source, .. }
            | StartError::AcceptLoop { source } => Some(source),
            StartError::Supervisor => None,
        }
    }
}

/// A running server. Dropping it (or [`Server::shutdown`]) stops accepting,
/// answers every request already received, and joins the workers.
pub struct Server {
    addr: SocketAddr,
    context: Arc<Context>,
    /// `None` only while starting: stopped first.
    accept: Option<AcceptLoops>,
    lanes: Option<Lanes>,
    /// The freshness listener (see `store::freshness`): stopped last.
    freshness: Option<StockListener>,
}

/// The threads that answer requests, stopped in this order: the lanes'
/// last answers still go to the writers.
struct Lanes {
    workers: WorkerPool<Job>,
    light: WorkerPool<Job>,
    writers: WorkerPool<Outgoing>,
    large_writers: WorkerPool<Outgoing>,
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
        let writers = |name: &str, what: &'static str, threads: usize| {
            WorkerPool::new(name, threads, None, move |outgoing| {
                http::write(outgoing, write_timeout)
            })
            .map_err(|source| StartError::Thread { what, source })
        };
        let (small, large) = (
            writers("writer", "writer threads", config.writers)?,
            writers("large-writer", "large-writer threads", config.large_answers)?,
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
            .map_err(|source| StartError::Thread {
                what: "the db-listener thread",
                source,
            })?;

        let listen = |source| StartError::Listen {
            addr: config.listen_addr.clone(),
            source,
        };
        let listener = listener::bind(&config.listen_addr, config.idle_timeout).map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;

        let lane = |name: &str, what: &'static str, threads: usize| {
            let context = Arc::clone(&context);
            let queue = threads * LANE_QUEUE_PER_THREAD;
            WorkerPool::new(name, threads, Some(queue), move |job| {
                http::serve(&context, job)
            })
            .map_err(|source| StartError::Thread { what, source })
        };
        let lanes = Lanes {
            workers: lane("worker", "worker threads", config.workers)?,
            light: lane("light", "light threads", LIGHT_THREADS)?,
            writers: small,
            large_writers: large,
        };
        let gate = Arc::new(Gate::new(
            Arc::clone(&context),
            lanes.workers.submitter(),
            lanes.light.submitter(),
            config.idle_timeout,
            addr.port(),
        ));

        let handle = listener.try_clone().map_err(listen)?;
        // From here on, dropping `server` stops whatever has been started.
        let mut server = Server {
            addr,
            context,
            accept: None,
            lanes: Some(lanes),
            freshness: Some(freshness),
        };
        server.accept = Some(AcceptLoops::start(listener, handle, gate)?);
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

impl Drop for Server {
    /// Stops accepting and hands every request tiny_http has already parsed
    /// to the lanes (see `AcceptLoops`'s `Drop`), then lets the lanes answer
    /// them all and joins them.
    fn drop(&mut self) {
        drop(self.accept.take());
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
