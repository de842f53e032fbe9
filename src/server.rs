//! Wiring: the listener, the accept loops, the worker pool and shutdown.
//!
//! tiny_http's accept loop ends for good at its first accept error (EMFILE
//! when descriptors run out, or the timeout our listener carries when no
//! client connects for a while). So the listener is ours, and a supervisor
//! starts a new tiny_http server on it whenever the current one's accept
//! loop ends. Each such generation keeps being served until its connections
//! have all gone quiet.

use std::fmt;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use log::{debug, error, info, warn};

use crate::config::{Config, describe_database};
use crate::context::Context;
use crate::http::{self, Incoming};
use crate::listener;
use crate::store::{Store, StoreError};
use crate::workers::{Submitter, WorkerPool};

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
    pool: Option<WorkerPool<Incoming>>,
}

/// One tiny_http server on our listener, and whether its accept loop is
/// believed to be running.
struct Generation {
    http: Arc<tiny_http::Server>,
    accepting: Arc<AtomicBool>,
}

/// What the supervisor and the generations share.
struct Shared {
    stopping: AtomicBool,
    /// A handle on the listening socket, to stop accepting at shutdown.
    listener: TcpListener,
    /// The threads serving each generation, joined at shutdown.
    pumps: Mutex<Vec<JoinHandle<()>>>,
    /// The tiny_http servers still being served, to unblock at shutdown.
    generations: Mutex<Vec<Generation>>,
    /// Accept loops started since start-up, to number their threads.
    started: AtomicU64,
    wake: Sender<ErrorKind>,
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
        let context = Arc::new(Context::new(
            store,
            config.keep_alive_requests,
            config.admin_token.clone(),
        ));

        let listener = listener::bind(&config.listen_addr, config.idle_timeout)
            .map_err(|e| StartError::Listen(format!("{}: {e}", config.listen_addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(e.to_string()))?;

        let pool_context = Arc::clone(&context);
        let pool = WorkerPool::new("worker", config.workers, config.workers * 64, move |job| {
            http::serve(&pool_context, job)
        })
        .map_err(|e| StartError::Listen(format!("starting workers: {e}")))?;

        let (wake, woken) = unbounded();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            listener: listener
                .try_clone()
                .map_err(|e| StartError::Listen(e.to_string()))?,
            pumps: Mutex::new(Vec::new()),
            generations: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
            wake,
        });
        watch_accept_panics(shared.wake.clone());
        let idle = config.idle_timeout;
        start_generation(&listener, &shared, pool.submitter(), idle)
            .map_err(|e| StartError::Listen(format!("starting the accept loop: {e}")))?;
        let supervisor = {
            let shared = Arc::clone(&shared);
            let submitter = pool.submitter();
            thread::Builder::new()
                .name("supervisor".into())
                .spawn(move || supervise(&listener, &shared, &woken, &submitter, idle))
                .map_err(|e| StartError::Listen(format!("starting the supervisor: {e}")))?
        };
        info!("listening on http://{addr} with {} workers", config.workers);
        Ok(Server {
            addr,
            context,
            shared,
            supervisor: Some(supervisor),
            pool: Some(pool),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    pub fn shutdown(self) {
        drop(self);
    }
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
        let _ = self.shared.wake.send(ErrorKind::Interrupted);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        for generation in lock(&self.shared.generations).iter() {
            generation.http.unblock();
        }
        let pumps: Vec<_> = lock(&self.shared.pumps).drain(..).collect();
        for pump in pumps {
            let _ = pump.join();
        }
        lock(&self.shared.generations).clear();
        // Answers every request already handed to the pool, then joins.
        drop(self.pool.take());
        info!("stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a new accept loop whenever the current one ends, pausing when it
/// ended on a real error (such as EMFILE) rather than an idle timeout.
fn supervise(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    woken: &Receiver<ErrorKind>,
    submitter: &Submitter<Incoming>,
    idle: Duration,
) {
    let mut pause = Duration::from_millis(50);
    while let Ok(kind) = woken.recv() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if kind == ErrorKind::Other {
            // tiny_http's accept thread panicked (see `watch_accept_panics`):
            // its pump cannot tell, so retire the newest generation here.
            if let Some(newest) = lock(&shared.generations).last() {
                if !newest.accepting.swap(false, Ordering::SeqCst) {
                    continue;
                }
                warn!("accept loop ended: tiny_http's accept thread panicked; starting a new one");
                newest.http.unblock();
            }
        }
        let quiet = matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut);
        if quiet {
            pause = Duration::from_millis(50);
        } else {
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        while !shared.stopping.load(Ordering::SeqCst) {
            match start_generation(listener, shared, submitter.clone(), idle) {
                Ok(()) => break,
                Err(err) => {
                    error!("cannot restart the accept loop: {err}; retrying in {pause:?}");
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

fn start_generation(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    submitter: Submitter<Incoming>,
    idle: Duration,
) -> std::io::Result<()> {
    let server = tiny_http::Server::from_listener(listener.try_clone()?, None)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let server = Arc::new(server);
    let accepting = Arc::new(AtomicBool::new(true));
    lock(&shared.generations).push(Generation {
        http: Arc::clone(&server),
        accepting: Arc::clone(&accepting),
    });
    let n = shared.started.fetch_add(1, Ordering::SeqCst) + 1;
    let generation = Arc::clone(&server);
    let shared_for_pump = Arc::clone(shared);
    let handle = thread::Builder::new()
        .name(format!("accept-{n}"))
        .spawn(move || pump(&generation, &accepting, &shared_for_pump, &submitter, idle))?;
    let mut pumps = lock(&shared.pumps);
    pumps.retain(|p| !p.is_finished());
    pumps.push(handle);
    Ok(())
}

/// Hands each request of one generation to intake. Reports the end of its
/// accept loop once, then goes on serving the connections it already has
/// until they have all been quiet long enough to be closed by their timeout.
fn pump(
    http: &Arc<tiny_http::Server>,
    accepting: &AtomicBool,
    shared: &Shared,
    submitter: &Submitter<Incoming>,
    idle: Duration,
) {
    // A connection's next request comes within `idle` of its last answer, or
    // the socket times out; answers take well under this margin.
    let retire_after = idle + Duration::from_secs(60);
    let hand_on = |request: tiny_http::Request| {
        let submitter = submitter.clone();
        http::take_in(request, move |incoming| {
            if let Err(incoming) = submitter.submit(incoming) {
                http::refuse_while_stopping(incoming);
            }
        });
    };
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            drain(http, &hand_on);
            break;
        }
        let next = if accepting.load(Ordering::SeqCst) {
            http.recv().map(Some)
        } else {
            http.recv_timeout(retire_after)
        };
        match next {
            Ok(Some(request)) => hand_on(request),
            Ok(None) if !shared.stopping.load(Ordering::SeqCst) => break,
            Ok(None) => {}
            Err(err)
                if accepting.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) =>
            {
                accepting.store(false, Ordering::SeqCst);
                let kind = err.kind();
                if matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    debug!("accept loop idle; starting a new one");
                } else {
                    warn!("accept loop ended: {err}; starting a new one");
                }
                let _ = shared.wake.send(kind);
            }
            // Stopping, or unblocked after the supervisor retired us.
            Err(_) => {}
        }
    }
    lock(&shared.generations).retain(|g| !Arc::ptr_eq(&g.http, http));
}

/// Servers to tell when a tiny_http accept thread panics.
static ACCEPT_WATCHERS: Mutex<Vec<Sender<ErrorKind>>> = Mutex::new(Vec::new());

/// tiny_http 0.12's accept thread unwraps the dup() of each new socket, so
/// when descriptors run out it panics and ends without a word to recv().
/// A panic hook is the only place that sees it; it wakes the supervisors.
fn watch_accept_panics(wake: Sender<ErrorKind>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    lock(&ACCEPT_WATCHERS).push(wake);
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tiny_http = info
                .location()
                .is_some_and(|l| l.file().contains("tiny_http"));
            if in_tiny_http && let Ok(mut watchers) = ACCEPT_WATCHERS.try_lock() {
                watchers.retain(|w| w.send(ErrorKind::Other).is_ok());
            }
            previous(info);
        }));
    });
}

/// Hands on every request tiny_http has parsed, including those its
/// connection threads finish parsing within a short grace period.
fn drain(http: &tiny_http::Server, hand_on: &dyn Fn(tiny_http::Request)) {
    for _ in 0..3 {
        while let Ok(Some(request)) = http.try_recv() {
            hand_on(request);
        }
        thread::sleep(Duration::from_millis(50));
    }
    while let Ok(Some(request)) = http.try_recv() {
        hand_on(request);
    }
}
