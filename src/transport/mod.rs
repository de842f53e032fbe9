//! The transport: everything that knows tiny_http, and the one place that
//! does.
//!
//! It listens, keeps tiny_http accepting, takes each request it parses,
//! reads the body off the socket, and hands the rest of the service an owned
//! [`Request`] with a [`Responder`]; whoever decides the answer passes a
//! [`Response`] to the responder, and the transport writes it. On the way it
//! keeps one request per connection in progress, so that answers go out in
//! order without anyone waiting on anyone, and it bounds every wait on a
//! client. Outside this module nothing names tiny_http.
//!
//! # Layout
//!
//! - [`Transport`] (this file): starts and stops the rest, in order;
//! - `listener`: the listening socket (backlog, socket timeouts) and the
//!   descriptor limit;
//! - `accept`, `threads`: the accept loops. An *accept loop* is one
//!   `tiny_http::Server` running on our listener, numbered as it starts; a
//!   supervisor keeps one accepting and starts a new one whenever it ends;
//! - `pump`: the two threads that take the requests out of every accept
//!   loop, the one accepting and the ones that ended;
//! - `admission`, `order`: one request at a time per connection, and cutting
//!   off a connection that must get no more answers;
//! - `framing`: where a request's body ends, and whether that can be told;
//! - `intake`: the body, and the owned request;
//! - `writer`: the writer threads and the answers' deadline;
//! - `response_memory`: the memory and the writers that large answers hold;
//! - `message`: [`Request`], [`Response`] and their parts.
//!
//! # tiny_http's defects, and what is done about each
//!
//! tiny_http 0.12 cannot be changed from here, so its defects are worked
//! around from outside it. The code of each workaround names its defect as
//! "tiny_http defect N", after this list; docs/tiny_http.md has the same
//! list with what was seen.
//!
//! 1. **No socket timeouts**: a client that stops sending or reading holds
//!    a thread forever. Our listener carries read and write timeouts,
//!    which Linux copies to every accepted socket (`listener`).
//! 2. **A thread per connection, without limit, and a kept-alive connection
//!    holds its thread.** Connections close after their answer by default
//!    (HTTP_KEEP_ALIVE_REQUESTS, `writer`), and the descriptor limit is
//!    raised at start (`listener`).
//! 3. **Its thread pool counts a just-woken thread as idle**, so after a
//!    burst of new connections some wait with no thread until another
//!    connection ends; closing after every answer frees each thread at once
//!    (as 2).
//! 4. **Its accept loop ends for good at its first accept error** (EMFILE,
//!    or our listener's accept timeout, from 1): a supervisor starts a new
//!    accept loop on the same listener whenever the accepting one ends
//!    (`accept`).
//! 5. **Its threads die of panics that `recv()` never reports**: the accept
//!    thread unwraps the `dup()` of each new socket (EMFILE), a
//!    connection's thread unwraps the peer address of a connection whose
//!    peer had gone before it was accepted (and its task pool starts no
//!    thread in its place, stranding the connections queued there), and
//!    `thread::spawn` panics inside its task pool while the pool's lock is
//!    held, poisoning it for good. A panic hook tells the supervisor which
//!    accept loop lost a thread, and whether it was one connection's: then a
//!    connection of our own makes the pool start a thread; otherwise the
//!    accept loop is replaced (`threads`, `accept`).
//! 6. **Its threads are unnamed, so on Linux they carry the name of the
//!    thread that started them**: each accept loop is created under the
//!    name `http-<n>`, which is how a panic is traced to it (5) and how an
//!    ended accept loop is known to have no thread left (9).
//! 7. **`Server::from_listener` panics when it cannot start its accept
//!    thread**: caught, and tried again after a pause (`accept`).
//! 8. **Dropping a `tiny_http::Server` connects to its address** to wake
//!    its accept thread, which can wait on a full backlog: accept loops are
//!    dropped on a thread of their own (`accept`).
//! 9. **A request dropped unanswered gets an empty 500**, and an accept loop
//!    that ended still produces requests (a slow head completes long after
//!    its loop ended): two pumps take every accept loop's requests until it
//!    has no thread left, and at shutdown every parsed request is handed on
//!    (`pump`).
//! 10. **Answers on one connection are written in request order**, each
//!     answer's writer waiting for the one before: two pipelined requests
//!     worked on at once can wait on each other for good. One request per
//!     connection is worked on at a time, and answers are written by writer
//!     threads, never by whoever decided them (`order`, `writer`).
//! 11. **It reads a connection's requests ahead of its answers without
//!     bound**: past a limit of waiting requests the connection is cut off
//!     (`order`).
//! 12. **A request carries no identity of its connection**, only the peer's
//!     address, which a new connection may take over: a cut connection's
//!     socket is found among the process's descriptors, so that the cut
//!     ends with it (`order`, `crate::sockets`).
//! 13. **An unread body is drained when the request is dropped, into a
//!     buffer of the declared length**: one request declaring a terabyte
//!     aborts the process. A body declared over 1 MiB is never read: the
//!     request is answered 413 through `upgrade` and never dropped, which
//!     costs its thread and socket (`intake`, `writer`).
//! 14. **A body over 1 KiB, chunked or after `Expect: 100-continue` is read
//!     from the socket by whoever reads it**: read on a thread of its own
//!     before anyone handles the request, or, when no thread can be had,
//!     left unread and answered 503 (`intake`).
//! 15. **A body that stops short is drained when the request is dropped**,
//!     waiting on the client again: such a request is answered through
//!     tiny_http's `respond`, on a thread of its own (`writer`).
//! 16. **Its chunked decoder (chunked_transfer 1.5) refuses a trailer
//!     section**: patches/chunked_transfer is our own implementation of
//!     that crate's API, put in its place by Cargo.toml's
//!     `[patch.crates-io]`.
//! 17. **It drops a `Connection` header set on a response**, so the server
//!     could not say `Connection: close`: answers' heads are written by us
//!     (`writer`).
//! 18. **A request line of HTTP/2.0 gets a 505, then its connection's
//!     thread hangs forever.** Not fixable from outside: the edge (HAProxy)
//!     never forwards one.
//! 19. **No length limit on a request line or a header line.** Not fixable
//!     from outside: the edge refuses a head over 31 KiB.
//! 20. **The server cannot close a connection itself** after `Connection:
//!     close`: it relies on the client, or on the idle timeout (1); only a
//!     cut connection's reading is shut down (12).
//! 21. **A request line or header line with a byte over 0x7F closes the
//!     connection unanswered.** Not fixable from outside: the edge refuses
//!     such a header value with 400.
//! 22. **A chunked body is not read to its end when the request is
//!     dropped** (a `Content-Length` body is, 13): what is left of it is
//!     read as the connection's next request. A body read only in part (over
//!     the limit) is read to its end and thrown away, up to 1 MiB in all;
//!     beyond that, or when the client stalls, the connection is cut
//!     (`intake`).
//! 23. **It frames request bodies loosely**: a `Content-Length` it cannot
//!     parse counts as no body, any `Transfer-Encoding` is decoded as
//!     chunked, and a request with `Connection: upgrade` gets the socket
//!     itself as its body. Each request's framing is judged first; one that
//!     cannot be trusted is refused (400 or 501) and its connection cut,
//!     and an upgrade request's body is read only as far as its framing
//!     says (`framing`).
//!
//! With a server free of these, `accept`, `pump`, `threads`, `order` and
//! most of `intake` and `writer` would come down to one loop handing each
//! request on.

mod accept;
mod admission;
mod framing;
mod intake;
mod listener;
mod message;
mod order;
mod pump;
mod response_memory;
mod threads;
mod writer;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use intake::MAX_BODY_BYTES;
pub use listener::raise_descriptor_limit;
pub use message::{Body, FramingError, Method, Request, Response};
pub use response_memory::{Held, ResponseBuffer, ResponseMemory};
pub use writer::{KeepAlive, Responder};

use accept::AcceptLoops;
use admission::Admission;
use writer::WriterPools;

/// The log target of tiny_http's own lines, kept out of the log: it logs
/// each end of an accept loop as an error, and the transport starts a new
/// one on purpose and logs what matters itself (defect 4).
pub const QUIET_LOG_TARGET: &str = "tiny_http";

/// What the transport hands each request to, with its responder. Called on
/// the transport's own threads (a pump, or a thread reading a body), so it
/// must not wait: it queues the request for a worker.
pub type Service = Arc<dyn Fn(Request, Responder) + Send + Sync>;

/// How the transport listens and writes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// LISTEN_ADDR.
    pub listen_addr: String,
    /// The read and write timeout of every client socket.
    pub idle_timeout: Duration,
    /// The longest a client may take to read one whole answer.
    pub write_timeout: Duration,
    /// Threads that write ordinary answers.
    pub writers: usize,
    /// Threads that write large answers (see `response_memory`).
    pub large_writers: usize,
    /// Mean answers per connection before `Connection: close`.
    pub keep_alive_requests: u32,
}

/// Why the transport could not start. Each variant keeps its cause as its
/// [`source`](std::error::Error::source), which its message leaves out.
#[derive(Debug)]
pub enum TransportError {
    /// The listening socket on `addr` (LISTEN_ADDR) could not be made, or
    /// asked its address, or given a second handle.
    Listen { addr: String, source: io::Error },
    /// Threads could not be started: `what` names them.
    Thread {
        what: &'static str,
        source: io::Error,
    },
    /// The first accept loop could not be started.
    AcceptLoop { source: io::Error },
    /// The supervisor ended before saying whether the first accept loop
    /// started (it panicked).
    Supervisor,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Listen { addr, .. } => write!(f, "cannot listen on {addr}"),
            TransportError::Thread { what, .. } => write!(f, "cannot start {what}"),
            TransportError::AcceptLoop { .. } => write!(f, "cannot start the accept loop"),
            TransportError::Supervisor => {
                write!(f, "cannot start the accept loop: the supervisor stopped")
            }
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Listen { source, .. }
            | TransportError::Thread { source, .. }
            | TransportError::AcceptLoop { source } => Some(source),
            TransportError::Supervisor => None,
        }
    }
}

/// The transport, running. [`Transport::stop_accepting`] (or dropping it)
/// stops accepting and hands every request already parsed to the service;
/// dropping it then writes every answer already given to it.
pub struct Transport {
    addr: SocketAddr,
    /// `None` once accepting has stopped.
    accept: Option<AcceptLoops>,
    writers: Option<WriterPools>,
}

impl Transport {
    /// Binds `settings.listen_addr` and starts accepting, handing every
    /// request to `service`. `draining` is the server's flag for its drain
    /// before stopping, during which no connection is kept alive.
    pub fn start(
        settings: &Settings,
        draining: Arc<std::sync::atomic::AtomicBool>,
        service: Service,
    ) -> Result<Transport, TransportError> {
        let listen = |source| TransportError::Listen {
            addr: settings.listen_addr.clone(),
            source,
        };
        let listener =
            listener::bind(&settings.listen_addr, settings.idle_timeout).map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;
        let handle = listener.try_clone().map_err(listen)?;
        let keep_alive = KeepAlive {
            every: settings.keep_alive_requests,
            draining,
        };
        let (pools, writers) = WriterPools::start(
            settings.writers,
            settings.large_writers,
            settings.write_timeout,
            keep_alive,
        )
        .map_err(|source| TransportError::Thread {
            what: "writer threads",
            source,
        })?;
        // From here on, dropping `transport` stops whatever has been started.
        let mut transport = Transport {
            addr,
            accept: None,
            writers: Some(pools),
        };
        let admission = Arc::new(Admission::new(
            service,
            writers,
            settings.idle_timeout,
            addr.port(),
        ));
        transport.accept = Some(AcceptLoops::start(listener, handle, admission)?);
        Ok(transport)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, and hands every request tiny_http has already
    /// parsed to the service (a request dropped unanswered would get
    /// tiny_http's empty 500: defect 9).
    pub fn stop_accepting(&mut self) {
        drop(self.accept.take());
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop_accepting();
        drop(self.writers.take());
    }
}
