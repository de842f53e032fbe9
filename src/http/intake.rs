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

/// Largest request body accepted. Real bodies are under 300 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Largest declared body that is read and thrown away to keep the
/// connection usable; beyond it the connection is given up.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// What tiny_http reads together with the head (its own constant).
const READ_WITH_HEAD: usize = 1024;

pub enum Body {
    Read(Vec<u8>),
    TooLarge,
    Unreadable(String),
    /// Declared larger than [`DRAIN_LIMIT`] and left unread: the request
    /// must be answered without ever being dropped.
    Abandoned,
}

/// A request with its body already in memory (or refused).
pub struct Incoming {
    pub request: Request,
    pub body: Body,
}

/// Reads the body, on this thread when it is already in memory, on a new
/// thread when it may have to wait on the client; then hands the request on.
pub fn take_in(request: Request, hand_on: impl FnOnce(Incoming) + Send + 'static) {
    if body_is_in_memory(&request) {
        hand_on(read_body(request));
        return;
    }
    let spawned = thread::Builder::new()
        .name("body-reader".into())
        .spawn(move || hand_on(read_body(request)));
    if let Err(err) = spawned {
        // The closure (and the request in it) is gone with the error; the
        // client sees its connection close.
        warn!("cannot start a thread to read a request body: {err}");
    }
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn body_is_in_memory(request: &Request) -> bool {
    header(request, "Expect").is_none()
        && header(request, "Transfer-Encoding").is_none()
        && request.body_length().is_none_or(|n| n <= READ_WITH_HEAD)
}

fn read_body(mut request: Request) -> Incoming {
    let body = match request.body_length() {
        Some(declared) if declared > DRAIN_LIMIT => Body::Abandoned,
        Some(declared) if declared > MAX_BODY_BYTES => {
            match io::copy(request.as_reader(), &mut io::sink()) {
                Ok(_) => Body::TooLarge,
                Err(e) => Body::Unreadable(e.to_string()),
            }
        }
        _ => read_limited(&mut request),
    };
    Incoming { request, body }
}

fn read_limited(request: &mut Request) -> Body {
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0));
    // One byte past the limit tells an oversized chunked body from a full one.
    match request
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > MAX_BODY_BYTES => Body::TooLarge,
        Ok(_) => Body::Read(body),
        Err(e) => Body::Unreadable(e.to_string()),
    }
}
