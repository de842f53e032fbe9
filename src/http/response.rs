//! Answers, written to the socket by us rather than by tiny_http, so that we
//! decide the connection's fate: tiny_http drops a `Connection` header set on
//! its responses, and a kept-alive connection holds one of its threads for as
//! long as the client keeps it.

use std::io::{self, Write};
use std::time::SystemTime;

use log::{debug, warn};
use serde::Serialize;
use tiny_http::{Method, Response, StatusCode};

use super::intake::{Body, Incoming};

/// Writes a body of unknown length.
pub type Stream = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

enum Content {
    Bytes(Vec<u8>),
    Stream(Stream),
}

/// A finished answer, before it is written to the socket.
pub struct Reply {
    pub status: u16,
    content: Content,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn text(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content: Content::Bytes(body),
            headers: vec![("Content-Type", content_type.to_owned())],
        }
    }

    /// A JSON answer written as it is produced, never whole in memory.
    pub fn json_stream(status: u16, write: Stream) -> Reply {
        Reply {
            status,
            content: Content::Stream(write),
            headers: vec![("Content-Type", "application/json".to_owned())],
        }
    }
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
    Reply {
        status,
        content: Content::Bytes(body),
        headers: vec![("Content-Type", "application/json".to_owned())],
    }
}

/// Writes the reply and lets the connection close (unless `keep_alive`).
///
/// A request whose huge body was left unread is answered through `upgrade`
/// and then leaked on purpose: dropping it would make tiny_http allocate the
/// declared size to drain it (see `intake`). The cost is that connection's
/// thread and socket, until the process ends.
pub fn send(incoming: Incoming, reply: Reply, keep_alive: bool) {
    let Incoming { request, body } = incoming;
    if let Body::Abandoned = body {
        let bytes = match reply.content {
            Content::Bytes(bytes) => bytes,
            Content::Stream(_) => Vec::new(),
        };
        let mut response = Response::from_data(bytes).with_status_code(StatusCode(reply.status));
        for (name, value) in &reply.headers {
            if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(header);
            }
        }
        warn!("giving up a connection that declared an oversized body");
        std::mem::forget(request.upgrade("close", response));
        return;
    }
    let http11 = *request.http_version() == (1, 1);
    // Only HTTP/1.1 clients that did not ask to close may keep the
    // connection; tiny_http closes it after the others by itself.
    let keep_alive = keep_alive
        && http11
        && !request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Connection") && h.value.as_str().eq_ignore_ascii_case("close"));
    let head_only = *request.method() == Method::Head;
    let mut writer = request.into_writer();
    if let Err(err) = write_reply(&mut writer, reply, keep_alive, http11, head_only) {
        // The client went away or stopped reading, or a stream failed half
        // way: the client sees a cut-off body, never a wrong one.
        debug!("writing a response failed: {err}");
    }
}

fn write_reply(
    writer: &mut dyn Write,
    reply: Reply,
    keep_alive: bool,
    http11: bool,
    head_only: bool,
) -> io::Result<()> {
    let Reply {
        status,
        content,
        headers,
    } = reply;
    match content {
        Content::Bytes(bytes) => {
            let framing = format!("Content-Length: {}\r\n", bytes.len());
            writer.write_all(&head(status, &headers, &framing, keep_alive))?;
            if !head_only {
                writer.write_all(&bytes)?;
            }
        }
        Content::Stream(write) if http11 => {
            let framing = "Transfer-Encoding: chunked\r\n";
            writer.write_all(&head(status, &headers, framing, keep_alive))?;
            if !head_only {
                let mut chunked = Chunked::new(writer);
                write(&mut chunked)?;
                chunked.finish()?;
            }
        }
        Content::Stream(write) => {
            // HTTP/1.0 has no chunks: the body ends when the connection
            // closes, which tiny_http does after a 1.0 request.
            writer.write_all(&head(status, &headers, "", false))?;
            if !head_only {
                write(writer)?;
            }
        }
    }
    writer.flush()
}

/// Chunked transfer coding over a writer, in chunks of up to 16 KiB.
struct Chunked<'a> {
    inner: &'a mut dyn Write,
    buffer: Vec<u8>,
}

const CHUNK: usize = 16 * 1024;

impl<'a> Chunked<'a> {
    fn new(inner: &'a mut dyn Write) -> Chunked<'a> {
        Chunked {
            inner,
            buffer: Vec::with_capacity(CHUNK),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            write!(self.inner, "{:x}\r\n", self.buffer.len())?;
            self.inner.write_all(&self.buffer)?;
            self.inner.write_all(b"\r\n")?;
            self.buffer.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.write_all(b"0\r\n\r\n")
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.emit()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}
