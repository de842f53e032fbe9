//! Wiring: the listener, the acceptor thread, the worker pool and shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use log::{error, info};

use crate::config::{Config, describe_database};
use crate::context::Context;
use crate::http;
use crate::listener;
use crate::store::{Store, StoreError};
use crate::workers::WorkerPool;

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
    http: Arc<tiny_http::Server>,
    context: Arc<Context>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(config: &Config) -> Result<Server, StartError> {
        info!(
            "connecting to the database at {}",
            describe_database(&config.store.database)
        );
        let store = Store::open(&config.store).map_err(StartError::Database)?;
        let context = Arc::new(Context::new(store));

        let listener = listener::bind(&config.listen_addr)
            .map_err(|e| StartError::Listen(format!("{}: {e}", config.listen_addr)))?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| StartError::Listen(format!("{}: {e}", config.listen_addr)))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| StartError::Listen("not a TCP address".into()))?;
        let http = Arc::new(http);

        let pool_context = Arc::clone(&context);
        let pool = WorkerPool::new("worker", config.workers, config.workers * 64, move |rq| {
            http::serve(&pool_context, rq)
        })
        .map_err(|e| StartError::Listen(format!("starting workers: {e}")))?;

        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let http = Arc::clone(&http);
            let stopping = Arc::clone(&stopping);
            thread::Builder::new()
                .name("acceptor".into())
                .spawn(move || accept(&http, &stopping, pool))
                .map_err(|e| StartError::Listen(format!("starting the acceptor: {e}")))?
        };
        info!("listening on http://{addr} with {} workers", config.workers);
        Ok(Server {
            addr,
            http,
            context,
            stopping,
            acceptor: Some(acceptor),
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
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.http.unblock();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        info!("stopped");
    }
}

/// Hands each request to the pool until shutdown; dropping the pool at the
/// end waits for the requests already handed over.
fn accept(http: &tiny_http::Server, stopping: &AtomicBool, pool: WorkerPool<http::Incoming>) {
    let submitter = pool.submitter();
    loop {
        match http.recv() {
            Ok(request) => {
                let submitter = submitter.clone();
                http::take_in(request, move |incoming| {
                    if let Err(incoming) = submitter.submit(incoming) {
                        http::refuse_while_stopping(incoming);
                    }
                });
            }
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(err) => {
                error!("accepting connections failed: {err}");
                break;
            }
        }
    }
}
