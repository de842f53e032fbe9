//! Writing answers to sockets, on threads whose only job that is.
//!
//! Workers and claim batch leaders never touch a socket: they make a
//! [`Response`] whole in memory and hand it to a [`Responder`], which queues
//! it for the writers. Each answer gets a total deadline
//! (HTTP_WRITE_TIMEOUT_SECS), so a client that reads slowly holds a writer
//! for that long at most, never a worker, a batch leader or a database
//! connection. Large answers (see `response_memory`) have writers of their
//! own, so slow readers of them hold no other.
//!
//! The head is ours rather than tiny_http's so that we decide the
//! connection's fate: tiny_http drops a `Connection` header set on its
//! responses (tiny_http defect 17), and a kept-alive connection holds one of
//! its threads for as long as the client keeps it (defects 2 and 3).

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};
use tiny_http::StatusCode;

use super::admission::InFlight;
use super::message::{Body, Response};
use super::threads::on_own_thread;
use crate::workers::{Submitter, Wait, WorkerPool};

/// What became of a request's body, as far as writing its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read whole (or, too large, read and thrown away): the connection is
    /// usable after the answer.
    Whole,
    /// Stopped short or broke: part of it may still be on the socket.
    Unfinished,
    /// Declared far over the limit and never read (tiny_http defect 13).
    Abandoned,
}

impl BodyEnd {
    pub fn of(body: &Body) -> BodyEnd {
        match body {
            Body::Read(_) | Body::TooLarge => BodyEnd::Whole,
            Body::TimedOut
            | Body::Incomplete { .. }
            | Body::Unreadable(_)
            | Body::TooLargeUnread
            | Body::NotRead
            | Body::BadFraming(_) => BodyEnd::Unfinished,
            Body::Abandoned => BodyEnd::Abandoned,
        }
    }
}

/// When an answer may leave its connection open.
pub struct KeepAlive {
    /// Mean answers per connection before `Connection: close`
    /// (HTTP_KEEP_ALIVE_REQUESTS; 1: always close, 0: never).
    pub every: u32,
    /// Set while the server drains before stopping: a client that keeps its
    /// connection would go on being served here after the load balancer
    /// has moved on, so none may.
    pub draining: Arc<AtomicBool>,
}

impl KeepAlive {
    /// Closing at random (once in `every` answers on average) needs no
    /// state per connection, and bounds how long a connection holds one of
    /// tiny_http's threads while others wait for one (defects 2 and 3).
    fn allows(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return false;
        }
        match self.every {
            0 => true,
            1 => false,
            n => fastrand::u32(..n) != 0,
        }
    }
}

/// The writer threads' queues, and how answers are written.
pub struct Writers {
    small: Submitter<Outgoing>,
    large: Submitter<Outgoing>,
    keep_alive: KeepAlive,
    timeout: Duration,
}

/// The writer threads themselves; dropping them writes every answer
/// already queued, then joins them.
pub struct WriterPools {
    small: WorkerPool<Outgoing>,
    large: WorkerPool<Outgoing>,
}

/// An answer on its way to a writer.
pub struct Outgoing {
    responder: Responder,
    response: Response,
}

impl WriterPools {
    /// `small` threads for ordinary answers and `large` for large ones,
    /// each answer written within `timeout` in all.
    pub fn start(
        small: usize,
        large: usize,
        timeout: Duration,
        keep_alive: KeepAlive,
    ) -> io::Result<(WriterPools, Arc<Writers>)> {
        // Unbounded: a writer may wait on a client, and nothing that waits
        // for a writer may be made to wait for room in its queue. Answers in
        // flight are bounded anyway, at one per connection (see `order`).
        let pool = |name: &str, threads: usize| {
            WorkerPool::new(name, threads, None, Wait::Sleep, |outgoing: Outgoing| {
                outgoing.write()
            })
        };
        let pools = WriterPools {
            small: pool("writer", small)?,
            large: pool("large-writer", large)?,
        };
        let writers = Arc::new(Writers {
            small: pools.small.submitter(),
            large: pools.large.submitter(),
            keep_alive,
            timeout,
        });
        Ok((pools, writers))
    }
}

/// Where a request's answer goes: the tiny_http request (which holds the
/// socket), and its connection's request in flight, ended once the answer
/// is out.
pub struct Responder {
    request: tiny_http::Request,
    body: BodyEnd,
    in_flight: InFlight,
    writers: Arc<Writers>,
}

impl Responder {
    pub(super) fn new(
        request: tiny_http::Request,
        body: BodyEnd,
        in_flight: InFlight,
        writers: &Arc<Writers>,
    ) -> Responder {
        Responder {
            request,
            body,
            in_flight,
            writers: Arc::clone(writers),
        }
    }

    /// Hands the answer to a writer; writes it on this thread once the
    /// writers have stopped (at the very end of a shutdown).
    pub fn send(self, response: Response) {
        let writers = Arc::clone(&self.writers);
        let queue = if response.is_large() {
            &writers.large
        } else {
            &writers.small
        };
        let outgoing = Outgoing {
            responder: self,
            response,
        };
        if let Err(outgoing) = queue.submit(outgoing) {
            outgoing.write();
        }
    }
}

impl Outgoing {
    /// Writes the answer within the writers' deadline in all, and lets the
    /// connection close (unless kept alive). The request's connection turn
    /// ends only after the answer is out, so the next request on it never
    /// waits here for this one.
    ///
    /// A request whose huge body was left unread is answered through
    /// `upgrade` and then leaked on purpose: dropping it would make tiny_http
    /// allocate the declared size to drain it (defect 13). The cost is that
    /// connection's thread and socket, until the process ends.
    fn write(self) {
        let Outgoing {
            responder:
                Responder {
                    request,
                    body,
                    in_flight,
                    writers,
                },
            response,
        } = self;
        match body {
            BodyEnd::Abandoned => {
                warn!("giving up a connection that declared an oversized body");
                answer_abandoned(request, response);
                return in_flight.cut();
            }
            BodyEnd::Unfinished => return answer_unfinished_body(request, response, in_flight),
            BodyEnd::Whole => {}
        }
        let http11 = *request.http_version() == (1, 1);
        let asked_to_close = request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("Connection"))
            .any(|h| h.value.as_str().eq_ignore_ascii_case("close"));
        // Only HTTP/1.1 clients that did not ask to close may keep the
        // connection; tiny_http closes it after the others by itself.
        // Requests already waiting behind this one on the connection are
        // served before it closes: a client that pipelined them expects
        // their answers.
        let keep_alive = (writers.keep_alive.allows() || in_flight.others_waiting())
            && http11
            && !asked_to_close;
        let head_only = *request.method() == tiny_http::Method::Head;
        let mut writer = Deadline {
            inner: request.into_writer(),
            until: Instant::now() + writers.timeout,
        };
        let written = write_response(&mut writer, response, keep_alive, head_only);
        // The writer first: the next answer on this connection waits for it.
        drop(writer);
        match written {
            // After `Connection: close`, requests the client had already sent
            // are still answered: it may read them, and dropping them would
            // leave it guessing which were worked on.
            Ok(()) => drop(in_flight),
            Err(err) => {
                // The client went away, stopped reading, or read too slowly:
                // it sees a cut-off body, never a wrong one, and nothing more.
                debug!("writing a response failed: {err}");
                in_flight.cut();
            }
        }
    }
}

/// Part of the body may still be on the socket, and tiny_http reads it off
/// (waiting on the client) when the request is dropped (defect 15).
/// `respond` writes the answer before it drops the request, so the client
/// gets its answer at once; and it runs on a thread of its own, so that the
/// reading holds no writer. Nothing more is answered on the connection.
fn answer_unfinished_body(request: tiny_http::Request, response: Response, in_flight: InFlight) {
    let respond = |(request, response, in_flight): (tiny_http::Request, Response, InFlight)| {
        respond_and_drop(request, response);
        in_flight.cut();
    };
    let unfinished = (request, response, in_flight);
    if let Err(((request, response, in_flight), err)) =
        on_own_thread("unfinished-body", unfinished, respond)
    {
        debug!("no thread to answer a request with its body unfinished on: {err}");
        // Answered here, then, with the connection's reading shut down
        // first (the cut), so that dropping the request reads nothing more
        // and this writer waits on no client.
        in_flight.cut();
        respond_and_drop(request, response);
    }
}

/// tiny_http writes the answer, then drops the request (reading off what
/// is left of its body).
fn respond_and_drop(request: tiny_http::Request, response: Response) {
    if let Err(err) = request.respond(tiny_response(response)) {
        debug!("writing a response failed: {err}");
    }
}

/// Answers a request whose body is never read, through tiny_http's
/// `upgrade`, the one way to get at the connection without dropping the
/// request (which would drain the body: defect 13); what it returns is
/// never dropped. In upgrade mode tiny_http writes a head of its own, with
/// `Connection: upgrade` and `Upgrade` fields and no length or body, so it
/// is given an interim 100 (Continue), which clients read past (RFC 9110,
/// 15.2), and the answer itself is written whole after it, head and body.
/// Bounded by the socket's write timeout.
fn answer_abandoned(request: tiny_http::Request, response: Response) {
    let head_only = *request.method() == tiny_http::Method::Head;
    let interim = tiny_http::Response::empty(StatusCode(100));
    let mut connection = request.upgrade("close", interim);
    let written = write_response(&mut connection, response, false, head_only);
    if let Err(err) = written {
        debug!("writing a response failed: {err}");
    }
    std::mem::forget(connection);
}

/// The response as tiny_http writes it, for the few answers it must write.
fn tiny_response(response: Response) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let mut tiny =
        tiny_http::Response::from_data(response.body).with_status_code(StatusCode(response.status));
    for (name, value) in &response.headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            tiny.add_header(header);
        }
    }
    tiny
}

fn head(
    status: u16,
    headers: &[(&'static str, String)],
    content_length: usize,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let reason = StatusCode(status).default_reason_phrase();
    let date = httpdate::HttpDate::from(SystemTime::now());
    // Writing into a Vec cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {status} {reason}\r\nDate: {date}\r\nContent-Length: {content_length}\r\n"
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(head, "Connection: {connection}\r\n\r\n");
    head
}

fn write_response(
    writer: &mut dyn Write,
    response: Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let head = head(
        response.status,
        &response.headers,
        response.body.len(),
        keep_alive,
    );
    writer.write_all(&head)?;
    if !head_only {
        writer.write_all(&response.body)?;
    }
    writer.flush()
}

/// A writer that gives up once its deadline has passed. Each call writes at
/// most [`SLICE`] bytes, which reach the socket in one system call (tiny_http
/// buffers less than that), bounded by the socket's own write timeout; so
/// the deadline is overrun by one such call at most.
struct Deadline<W> {
    inner: W,
    until: Instant,
}

const SLICE: usize = 4096;

impl<W: Write> Deadline<W> {
    fn check(&self) -> io::Result<()> {
        if Instant::now() >= self.until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take its answer in time",
            ));
        }
        Ok(())
    }
}

impl<W: Write> Write for Deadline<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.write(&data[..data.len().min(SLICE)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_only_answer_keeps_the_length_of_the_body_it_leaves_out() {
        let response = Response::json(200, &serde_json::json!({ "status": "ok" }));
        let length = response.body.len();
        let mut out = Vec::new();
        write_response(&mut out, response, false, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains(&format!("Content-Length: {length}\r\n")),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    }

    #[test]
    fn a_deadline_that_has_passed_refuses_to_write() {
        let mut writer = Deadline {
            inner: Vec::new(),
            until: Instant::now(),
        };
        let err = writer.write(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
