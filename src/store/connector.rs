//! Opening a database connection within a bound as a whole (TCP connect,
//! handshake, authentication, pairing with its socket), however the
//! database behaves. Every connection the store opens comes from here: the
//! pool's (see `manager`), start-up's, the health probe's and the freshness
//! listener's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::thread;
use std::time::Duration;

use postgres::NoTls;
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

use super::conn_error::ConnError;
use super::deadline_client::DeadlineClient;

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
    pub(crate) fn open(&self, limit: Duration) -> Result<DeadlineClient, ConnError> {
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
                    .and_then(|client| DeadlineClient::guard(client, timeout))
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
