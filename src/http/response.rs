//! Answers, and the threads that write them.
//!
//! Handlers and claim batch leaders never touch a socket: they make a
//! [`Reply`] whole in memory and hand it to the writers, threads whose only
//! job is to wait on clients. Each answer gets a total deadline
//! (HTTP_WRITE_TIMEOUT_SECS), so a client that reads slowly holds a writer
//! for that long at most, never a worker, a batch leader or a database
//! connection.
//!
//! The head is ours rather than tiny_http's so that we decide the
//! connection's fate: tiny_http drops a `Connection` header set on its
//! responses, and a kept-alive connection holds one of its threads for as
//! long as the client keeps it.

use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};
use serde::Serialize;
use tiny_http::{Method, Response, StatusCode};

use super::budget::Reserved;
use super::gate::Turn;
use super::intake::{Body, Incoming, headers};

/// A finished answer, before it is written to the socket.
pub struct Reply {
    pub status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    /// What the body holds of the response budget, given back once it
    /// has been written.
    reserved: Option<Reserved>,
}

impl Reply {
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn text(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            body,
            headers: vec![("Content-Type", content_type.to_owned())],
            reserved: None,
        }
    }

    /// A JSON body made outside [`json`], with the memory it holds.
    pub fn json_bytes(status: u16, body: Vec<u8>, reserved: Reserved) -> Reply {
        Reply {
            reserved: Some(reserved),
            ..Reply::text(status, "application/json", body)
        }
    }
}

impl Reply {
    /// Written by a writer for large answers (see `budget`).
    pub fn is_large(&self) -> bool {
        self.reserved.as_ref().is_some_and(Reserved::is_large)
    }
}

/// An answer on its way to a writer.
pub struct Outgoing {
    pub incoming: Incoming,
    pub reply: Reply,
    pub keep_alive: bool,
}

fn head(
    status: u16,
    headers: &[(&'static str, String)],
    framing: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let reason = StatusCode(status).default_reason_phrase();
    let date = httpdate::HttpDate::from(SystemTime::now());
    // Writing into a Vec cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {status} {reason}\r\nDate: {date}\r\n{framing}"
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(head, "Connection: {connection}\r\n\r\n");
    head
}

pub fn json(status: u16, body: &impl Serialize) -> Reply {
    // Serializing our own plain structs and json! values cannot fail.
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Reply::text(status, "application/json", body)
}

/// Writes the reply within `timeout` in all, and lets the connection close
/// (unless `keep_alive`). Runs on a writer; the request's connection turn
/// ends only after the answer is out, so the next request on it never waits
/// here for this one.
///
/// A request whose huge body was left unread is answered through `upgrade`
/// and then leaked on purpose: dropping it would make tiny_http allocate the
/// declared size to drain it (see `intake`). The cost is that connection's
/// thread and socket, until the process ends.
pub fn send(outgoing: Outgoing, timeout: Duration) {
    let Outgoing {
        incoming: Incoming {
            request,
            body,
            turn,
        },
        reply,
        keep_alive,
    } = outgoing;
    match body {
        Body::Abandoned => {
            warn!("giving up a connection that declared an oversized body");
            // tiny_http writes the answer; the connection is never dropped.
            std::mem::forget(request.upgrade("close", tiny_response(reply)));
            return turn.cut();
        }
        Body::TimedOut | Body::Incomplete { .. } | Body::Unreadable(_) => {
            return answer_unfinished_body(request, reply, turn);
        }
        Body::Read(_) | Body::TooLarge => {}
    }
    let http11 = *request.http_version() == (1, 1);
    // Only HTTP/1.1 clients that did not ask to close may keep the
    // connection; tiny_http closes it after the others by itself.
    // Requests already waiting behind this one on the connection are served
    // before it closes: a client that pipelined them expects their answers.
    let keep_alive = (keep_alive || turn.others_waiting())
        && http11
        && !headers(&request, "Connection").any(|value| value.eq_ignore_ascii_case("close"));
    let head_only = *request.method() == Method::Head;
    let mut writer = Deadline {
        inner: request.into_writer(),
        until: Instant::now() + timeout,
    };
    let written = write_reply(&mut writer, reply, keep_alive, head_only);
    // The writer first: the next answer on this connection waits for it.
    drop(writer);
    match written {
        // After `Connection: close`, requests the client had already sent
        // are still answered: it may read them, and dropping them would
        // leave it guessing which were worked on.
        Ok(()) => drop(turn),
        Err(err) => {
            // The client went away, stopped reading, or read too slowly: it
            // sees a cut-off body, never a wrong one, and nothing more.
            debug!("writing a response failed: {err}");
            turn.cut();
        }
    }
}

/// Part of the body may still be on the socket, and tiny_http reads it off
/// (waiting on the client) when the request is dropped. `respond` writes the
/// answer before it drops the request, so the client gets its answer at
/// once; and it runs on a thread of its own, so that the reading holds no
/// writer. Nothing more is answered on the connection.
fn answer_unfinished_body(request: tiny_http::Request, reply: Reply, turn: Turn) {
    let respond = move || {
        if let Err(err) = request.respond(tiny_response(reply)) {
            debug!("writing a response failed: {err}");
        }
        turn.cut();
    };
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(respond)));
    let on_thread = std::sync::Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("unfinished-body".into())
        .spawn(move || take(&on_thread).map(|respond| respond()));
    if spawned.is_err() {
        // No thread to be had: answer here rather than not at all.
        if let Some(respond) = take(&shared) {
            respond();
        }
    }
}

fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The reply as tiny_http writes it, for the few answers it must write.
fn tiny_response(reply: Reply) -> Response<io::Cursor<Vec<u8>>> {
    let mut response = Response::from_data(reply.body).with_status_code(StatusCode(reply.status));
    for (name, value) in &reply.headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    response
}

fn write_reply(
    writer: &mut dyn Write,
    reply: Reply,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let framing = format!("Content-Length: {}\r\n", reply.body.len());
    writer.write_all(&head(reply.status, &reply.headers, &framing, keep_alive))?;
    if !head_only {
        writer.write_all(&reply.body)?;
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
