//! Getting a request's body off the socket before anyone handles it, and
//! turning tiny_http's request into the service's own (see `message`).
//!
//! tiny_http 0.12 reads bodies of up to 1 KiB with the head, in its own
//! connection thread; anything else (larger bodies, chunked bodies,
//! `Expect: 100-continue`) is read from the socket by whoever reads the
//! body (tiny_http defect 14). A worker must never wait on a slow client, so
//! those requests get a thread of their own for the read, like tiny_http's
//! connection threads.
//!
//! It also drains an unread body when the request is dropped, allocating a
//! buffer of the whole declared Content-Length: one request declaring a
//! terabyte aborts the process (defect 13). Bodies declared larger than
//! [`DRAIN_LIMIT`] are therefore never dropped; see [`Body::Abandoned`].

use std::io::{self, Read};

use log::warn;

use super::framing::Framing;
use super::message::{Body, Method, Request};
use super::threads::on_own_thread;

/// Largest request body accepted. Real bodies are under 300 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Largest body that is read and thrown away to keep the connection
/// usable (declared, or sent in chunks); beyond it the connection is given
/// up.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads the body, on this thread when that cannot wait on the client (it
/// is in memory, too large to be read at all, or framed so that where it
/// ends cannot be told: see `framing`), on a new thread when it may; then
/// calls `then` with the request and its body.
///
/// When no thread can be had, the body is left unread ([`Body::NotRead`]):
/// the request is answered at once, and its connection given up.
pub fn read_body<F>(request: tiny_http::Request, then: F)
where
    F: FnOnce(tiny_http::Request, Body) + Send + 'static,
{
    let framing = match Framing::of(&request) {
        Ok(framing) => framing,
        // Nothing is read: where the body ends is not known.
        Err(err) => return then(request, Body::BadFraming(err)),
    };
    let never_read = framing.declared.is_some_and(|n| n > DRAIN_LIMIT as u64);
    if never_read || !framing.may_wait(expects_continue(&request)) {
        let (request, body) = read(request, framing);
        return then(request, body);
    }
    let read_then = move |(request, then): (tiny_http::Request, F)| {
        let (request, body) = read(request, framing);
        then(request, body)
    };
    if let Err(((request, then), err)) = on_own_thread("body-reader", (request, then), read_then) {
        warn!("cannot start a thread to read a request body: {err}");
        then(request, Body::NotRead);
    }
}

/// The service's own copy of a request whose body has been read.
pub fn owned(request: &tiny_http::Request, body: Body) -> Request {
    Request {
        method: Method::parse(request.method().as_str()),
        target: origin_form(request.url()).to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().to_string(), h.value.to_string()))
            .collect(),
        body,
        peer: request.remote_addr().copied(),
    }
}

/// The target in origin form: an absolute-form target (`http://host:port/
/// path?query`, any case of the scheme) loses its scheme and authority; any
/// other target is left as it is.
pub fn origin_form(target: &str) -> &str {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return target;
    }
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => &rest[at..],
        // `http://host` and `http://host?query` name the root.
        _ => "/",
    }
}

fn expects_continue(request: &tiny_http::Request) -> bool {
    request.headers().iter().any(|h| h.field.equiv("Expect"))
}

fn read(mut request: tiny_http::Request, framing: Framing) -> (tiny_http::Request, Body) {
    let body = match framing.declared {
        Some(declared) if declared > DRAIN_LIMIT as u64 => Body::Abandoned,
        // Too large whatever arrives: the declared length decides. The rest
        // is read only to keep the connection usable.
        Some(declared) if declared > MAX_BODY_BYTES as u64 => drain(&mut request, framing, 0),
        _ => read_limited(&mut request, framing),
    };
    (request, body)
}

/// Reads what is left of a body over the limit, `read` bytes of which are
/// read already, and throws it away, so that none of it is ever taken for
/// the next request on the connection (a chunked body is not read to its
/// end when tiny_http drops it: tiny_http defect 22). Up to [`DRAIN_LIMIT`]
/// in all: a body that goes on beyond, stalls or breaks off is left where
/// it is, and its connection given up.
fn drain(request: &mut tiny_http::Request, framing: Framing, read: usize) -> Body {
    let left = DRAIN_LIMIT.saturating_sub(read) as u64;
    let mut rest = framing.reader(request).take(left + 1);
    match io::copy(&mut rest, &mut io::sink()) {
        Ok(drained) if drained <= left => Body::TooLarge,
        Ok(_) => Body::TooLargeUnread,
        Err(err) => {
            log::debug!("draining a body over the limit failed: {err}");
            Body::TooLargeUnread
        }
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`], telling a client that
/// stalled or stopped early from one that sent a bad body.
fn read_limited(request: &mut tiny_http::Request, framing: Framing) -> Body {
    // At most MAX_BODY_BYTES here.
    let declared = framing.declared.map(|n| n as usize);
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    // One byte past the limit tells an oversized chunked body from a full one.
    let read = framing
        .reader(request)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body);
    match read {
        Ok(_) if body.len() > MAX_BODY_BYTES => drain(request, framing, body.len()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_lose_their_scheme_and_authority() {
        assert_eq!(
            origin_form("http://127.0.0.1:8080/api/coupons/claim"),
            "/api/coupons/claim"
        );
        assert_eq!(
            origin_form("HTTPS://shop.example/api/coupons?limit=2"),
            "/api/coupons?limit=2"
        );
        assert_eq!(origin_form("http://h"), "/");
        assert_eq!(origin_form("http://h?x=1"), "/");
        assert_eq!(
            origin_form("/api/coupons?u=http://x/y"),
            "/api/coupons?u=http://x/y"
        );
        assert_eq!(origin_form("ftp://h/api/coupons"), "ftp://h/api/coupons");
        assert_eq!(origin_form("http:/api/coupons"), "http:/api/coupons");
    }
}
