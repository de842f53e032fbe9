//! Answers, written to the socket by us rather than by tiny_http, so that we
//! decide the connection's fate: tiny_http drops a `Connection` header set on
//! its responses, and a kept-alive connection holds one of its threads for as
//! long as the client keeps it.

use std::io::{self, Write};
use std::time::SystemTime;

use log::debug;
use serde::Serialize;
use tiny_http::{Method, Response, StatusCode};

use super::intake::{Body, Incoming};

/// A finished answer, before it is written to the socket.
pub struct Reply {
    pub status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn head(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        let reason = StatusCode(self.status).default_reason_phrase();
        let date = httpdate::HttpDate::from(SystemTime::now());
        // Writing into a Vec cannot fail.
        let _ = write!(
            head,
            "HTTP/1.1 {} {reason}\r\nDate: {date}\r\nContent-Length: {}\r\n",
            self.status,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let _ = write!(head, "Connection: {connection}\r\n\r\n");
        head
    }
}

pub fn json(status: u16, body: &impl Serialize) -> Reply {
    // Serializing our own plain structs and json! values cannot fail.
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Reply {
        status,
        body,
        headers: vec![("Content-Type", "application/json".to_owned())],
    }
}

/// Writes the reply and lets the connection close (unless `keep_alive`).
///
/// A request whose huge body was left unread is answered through `upgrade`
/// and then leaked on purpose: dropping it would make tiny_http allocate the
/// declared size to drain it (see `intake`). The cost is that connection's
/// thread and socket, until the client goes or the socket times out... which
/// tiny_http never notices, so until the process ends.
pub fn send(incoming: Incoming, reply: Reply, keep_alive: bool) {
    let Incoming { request, body } = incoming;
    if let Body::Abandoned = body {
        let mut response =
            Response::from_data(reply.body.clone()).with_status_code(StatusCode(reply.status));
        for (name, value) in &reply.headers {
            if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(header);
            }
        }
        std::mem::forget(request.upgrade("close", response));
        return;
    }
    // Only HTTP/1.1 clients that did not ask to close may keep the
    // connection; tiny_http closes it after the others by itself.
    let keep_alive = keep_alive
        && *request.http_version() == (1, 1)
        && !request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Connection") && h.value.as_str().eq_ignore_ascii_case("close"));
    let head_only = *request.method() == Method::Head;
    let mut writer = request.into_writer();
    let written = write_reply(&mut writer, &reply, keep_alive, head_only);
    if let Err(err) = written {
        // The client went away or stopped reading; nothing more to do.
        debug!("writing a response failed: {err}");
    }
}

fn write_reply(
    writer: &mut dyn Write,
    reply: &Reply,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    writer.write_all(&reply.head(keep_alive))?;
    if !head_only {
        writer.write_all(&reply.body)?;
    }
    writer.flush()
}
