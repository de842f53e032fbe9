//! The wiring: starts everything a running server is made of, and stops it
//! in order.
//!
//! [`Server::start`] is the whole start-up: `main.rs` calls it once, and the
//! integration tests call it to run the real server in-process. It opens
//! the store (reaching the database, bringing its schema up to date), starts
//! the freshness listener, the two worker pools that answer requests (see
//! `http::Pool`), and the transport, which listens and hands each request
//! to `http::dispatch`. Dropping the [`Server`] stops accepting, answers
//! every request already received and stops the rest, in that order.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use log::{debug, info, warn};

use crate::config::{Config, describe_database};
use crate::context::Context;
use crate::http::{self, Job, Pools};
use crate::store::{KeySweeper, OpenError, StockListener, Store};
use crate::transport::{self, Transport, TransportError};
use crate::workers::{Wait, WorkerPool};

/// Threads of the quick pool: /healthz, /metrics and refusals.
const QUICK_THREADS: usize = 4;
/// Requests that may wait for each thread of a pool. A full pool is
/// answered 503 at once rather than holding up the transport.
const QUEUE_PER_THREAD: usize = 64;

/// Why the server could not start. Each variant keeps its cause as its
/// [`source`](std::error::Error::source), which its message leaves out.
#[derive(Debug)]
pub enum StartError {
    /// The store could not be opened: the database was not reached within
    /// `DB_STARTUP_TIMEOUT_SECS`, refused us for good, cannot hold what the
    /// service stores, or refused the schema.
    Database(OpenError),
    /// The worker pools could not be started: `what` names them.
    Thread {
        what: &'static str,
        source: io::Error,
    },
    /// The transport could not listen or start accepting.
    Transport(TransportError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Database(_) => write!(f, "cannot open the database"),
            StartError::Thread { what, .. } => write!(f, "cannot start {what}"),
            StartError::Transport(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Database(source) => Some(source),
            StartError::Thread { source, .. } => Some(source),
            StartError::Transport(err) => err.source(),
        }
    }
}

/// A running server. Dropping it (or [`Server::shutdown`]) stops accepting,
/// answers every request already received, and joins every thread.
pub struct Server {
    addr: SocketAddr,
    context: Arc<Context>,
    /// Stopped first (accepting) and last but one (its writers).
    transport: Option<Transport>,
    workers: Option<Workers>,
    /// The freshness listener (see `store::freshness`): stopped last.
    freshness: Option<StockListener>,
    /// Removes expired idempotency keys (see `store::idempotency`).
    sweeper: Option<KeySweeper>,
}

/// The two worker pools (see `http::Pool`).
struct Workers {
    database: WorkerPool<Job>,
    quick: WorkerPool<Job>,
}

impl Server {
    pub fn start(config: &Config) -> Result<Server, StartError> {
        match transport::raise_descriptor_limit() {
            Ok(limit) => debug!("open descriptor limit: {limit}"),
            Err(err) => warn!("cannot raise the open descriptor limit: {err}"),
        }
        info!(
            "connecting to the database at {}",
            describe_database(&config.store.database)
        );
        let store = Store::open(&config.store).map_err(StartError::Database)?;
        let context = Arc::new(Context::new(store, config));
        let freshness = context
            .store
            .listen_for_stock(context.claims.stock_events())
            .map_err(|source| StartError::Thread {
                what: "the db-listener thread",
                source,
            })?;
        let sweeper =
            KeySweeper::start(context.store.clone()).map_err(|source| StartError::Thread {
                what: "the key-sweeper thread",
                source,
            })?;

        let pool = |name: &str, what: &'static str, threads: usize| {
            let context = Arc::clone(&context);
            let queue = threads * QUEUE_PER_THREAD;
            WorkerPool::new(name, threads, Some(queue), Wait::Spin, move |job| {
                http::serve(&context, job)
            })
            .map_err(|source| StartError::Thread { what, source })
        };
        let workers = Workers {
            database: pool("worker", "worker threads", config.workers)?,
            quick: pool("quick", "quick threads", QUICK_THREADS)?,
        };
        let pools = Pools {
            database: workers.database.submitter(),
            quick: workers.quick.submitter(),
        };
        let service: transport::Service = {
            let context = Arc::clone(&context);
            Arc::new(move |request, responder: transport::Responder| {
                http::dispatch(
                    &context,
                    &pools,
                    request,
                    Box::new(move |response| responder.send(response)),
                )
            })
        };
        let transport = Transport::start(&config.transport, context.draining_flag(), service)
            .map_err(StartError::Transport)?;
        Ok(Server {
            addr: transport.addr(),
            context,
            transport: Some(transport),
            workers: Some(workers),
            freshness: Some(freshness),
            sweeper: Some(sweeper),
        })
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
    /// Stops accepting and hands every request already parsed to the
    /// workers, lets them answer it all, writes the answers, then stops the
    /// freshness listener.
    fn drop(&mut self) {
        if let Some(transport) = &mut self.transport {
            transport.stop_accepting();
        }
        if let Some(Workers { database, quick }) = self.workers.take() {
            drop(database);
            drop(quick);
        }
        drop(self.transport.take());
        drop(self.sweeper.take());
        drop(self.freshness.take());
        info!("stopped");
    }
}
