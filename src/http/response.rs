use std::io::Cursor;

use log::warn;
use serde::Serialize;
use tiny_http::{Header, Response, StatusCode};

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

    pub fn into_response(self) -> Response<Cursor<Vec<u8>>> {
        let mut response = Response::from_data(self.body).with_status_code(StatusCode(self.status));
        for (name, value) in self.headers {
            // Only our own constant names and values built from validated
            // input reach here, so a header always parses.
            if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(header);
            }
        }
        response
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

/// Writes the reply. A request whose huge body was left unread is answered
/// through `upgrade` and then leaked on purpose: dropping it would make
/// tiny_http allocate the declared size to drain it (see `intake`). The cost
/// is that connection's thread and socket, held until the process ends.
pub fn send(incoming: Incoming, reply: Reply) {
    let Incoming { request, body } = incoming;
    let response = reply.into_response();
    if let Body::Abandoned = body {
        warn!("giving up a connection that declared an oversized body");
        std::mem::forget(request.upgrade("close", response));
        return;
    }
    if let Err(err) = request.respond(response) {
        warn!("writing a response failed: {err}");
    }
}
