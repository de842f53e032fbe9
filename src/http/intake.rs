//! Getting a request's body off the socket before a worker sees it.
//!
//! tiny_http 0.12 reads bodies of up to 1 KiB with the head, in its own
//! connection thread; anything else (larger bodies, chunked bodies,
//! `Expect: 100-continue`) is read from the socket by whoever reads the body.
//! A worker must never wait on a slow client, so those requests get a thread
//! of their own for the read, like tiny_http's connection threads.
//!
//! It also drains an unread body when the request is dropped, allocating a
//! buffer of the whole declared Content-Length: one request declaring a
//! terabyte aborts the process. Bodies declared larger than [`DRAIN_LIMIT`]
//! are therefore never dropped; see [`Body::Abandoned`].

use std::io::{self, Read};
use std::thread;

use log::warn;
use tiny_http::Request;

use super::gate::Turn;

/// Largest request body accepted. Real bodies are under 300 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Largest declared body that is read and thrown away to keep the
/// connection usable; beyond it the connection is given up.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// What tiny_http reads together with the head (its own constant).
const READ_WITH_HEAD: usize = 1024;

/// A request's body as intake leaves it for the handler.
pub enum Body {
    /// The whole body, at most [`MAX_BODY_BYTES`].
    Read(Vec<u8>),
    /// Over [`MAX_BODY_BYTES`] (declared or sent), read and thrown away.
    TooLarge,
    /// The client stopped sending before the body's end, for longer than
    /// the socket's read timeout (HTTP_IDLE_TIMEOUT_SECS).
    TimedOut,
    /// The client closed its sending side after `received` of the
    /// `declared` Content-Length bytes.
    Incomplete { received: usize, declared: usize },
    /// Reading failed otherwise: the connection broke or ended inside a
    /// chunked body, or the chunk decoder refused the framing. That decoder
    /// is our own (patches/chunked_transfer, in chunked_transfer's place):
    /// it accepts a trailer section after the last chunk.
    Unreadable(String),
    /// Declared larger than [`DRAIN_LIMIT`] and left unread: the request
    /// must be answered without ever being dropped.
    Abandoned,
}

/// A request with its body already in memory (or refused), holding its
/// connection's turn until its answer has been written.
pub struct Incoming {
    pub request: Request,
    pub body: Body,
    pub turn: Turn,
}

/// Reads the body, on this thread when it is already in memory, on a new
/// thread when it may have to wait on the client; then hands the request on.
pub fn take_in(request: Request, turn: Turn, hand_on: impl FnOnce(Incoming) + Send + 'static) {
    let incoming = move |request| {
        let (request, body) = read_body(request);
        Incoming {
            request,
            body,
            turn,
        }
    };
    if body_is_in_memory(&request) {
        hand_on(incoming(request));
        return;
    }
    let spawned = thread::Builder::new()
        .name("body-reader".into())
        .spawn(move || hand_on(incoming(request)));
    if let Err(err) = spawned {
        // The closure (and the request in it) is gone with the error; the
        // client sees its connection close.
        warn!("cannot start a thread to read a request body: {err}");
    }
}

/// The value of the request's first `name` header (names compare without
/// regard to case), as sent.
pub fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    headers(request, name).next()
}

/// The values of every `name` header of the request, in the order sent.
pub fn headers<'a>(request: &'a Request, name: &'static str) -> impl Iterator<Item = &'a str> {
    request
        .headers()
        .iter()
        .filter(move |h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn body_is_in_memory(request: &Request) -> bool {
    header(request, "Expect").is_none()
        && header(request, "Transfer-Encoding").is_none()
        && request.body_length().is_none_or(|n| n <= READ_WITH_HEAD)
}

fn read_body(mut request: Request) -> (Request, Body) {
    let body = match request.body_length() {
        Some(declared) if declared > DRAIN_LIMIT => Body::Abandoned,
        Some(declared) if declared > MAX_BODY_BYTES => {
            // Too large whatever arrives: the declared length decides. The
            // rest is read only to keep the connection usable.
            if let Err(err) = io::copy(request.as_reader(), &mut io::sink()) {
                log::debug!("draining a body declared too large failed: {err}");
            }
            Body::TooLarge
        }
        _ => read_limited(&mut request),
    };
    (request, body)
}

/// Reads a body of at most [`MAX_BODY_BYTES`], telling a client that
/// stalled or stopped early from one that sent a bad body.
fn read_limited(request: &mut Request) -> Body {
    let declared = request.body_length();
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    // One byte past the limit tells an oversized chunked body from a full one.
    let read = request
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body);
    match read {
        Ok(_) if body.len() > MAX_BODY_BYTES => Body::TooLarge,
        // tiny_http's Content-Length reader ends quietly at the end of the
        // stream, however much is missing.
        Ok(_) => match declared {
            Some(declared) if body.len() < declared => Body::Incomplete {
                received: body.len(),
                declared,
            },
            _ => Body::Read(body),
        },
        Err(e) => match e.kind() {
            // The socket's read timeout: EAGAIN on Linux, ETIMEDOUT elsewhere.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Body::TimedOut,
            _ => Body::Unreadable(e.to_string()),
        },
    }
}
