//! What the transport hands the rest of the service, and what it takes
//! back: a request owned outright (method, target, headers, body, peer) and
//! a response made whole in memory. Neither knows tiny_http, so handlers
//! are built and tested from plain values.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use super::response_memory::Held;

/// A request's method. The ones the API answers have a name; any other is
/// kept as sent, for the log and the 405.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Delete,
    Other(String),
}

impl Method {
    pub fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Other(other) => other,
        })
    }
}

/// A request's body, read off the socket before the request is handed on
/// (or given up on: see each variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// The whole body, at most [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES).
    Read(Vec<u8>),
    /// Over the limit (declared or sent), read and thrown away.
    TooLarge,
    /// Over the limit, and the rest not read to its end: more than is worth
    /// reading (a chunked body going on past the drain limit), or the client
    /// stalled or broke off. What is left is on the socket and must never
    /// be read as a request, so the request is answered 413 and its
    /// connection given up.
    TooLargeUnread,
    /// The client stopped sending before the body's end, for longer than
    /// the socket's read timeout (HTTP_IDLE_TIMEOUT_SECS).
    TimedOut,
    /// The client closed its sending side after `received` of the
    /// `declared` Content-Length bytes.
    Incomplete { received: usize, declared: usize },
    /// Reading failed otherwise: the connection broke or ended inside a
    /// chunked body, or the chunk decoder refused the framing.
    Unreadable(String),
    /// Framed against RFC 9112 (section 6), so where it ends cannot be
    /// told: answered with the error, and its connection given up.
    BadFraming(FramingError),
    /// Not read: no thread could be had to read it without making another
    /// thread wait on the client. The request is answered 503 `overloaded`
    /// and its connection given up.
    NotRead,
    /// Declared far over the limit and left on the socket: the request is
    /// answered 413 and its connection given up (tiny_http defect 13).
    Abandoned,
}

/// What is wrong with how a request says where its body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// `Content-Length` is not one whole number, or comes with
    /// `Transfer-Encoding`; what it says is in the text.
    Invalid(&'static str),
    /// A transfer coding other than chunked alone.
    UnsupportedCoding,
}

/// One request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// In origin form (`/path?query`): a target in absolute form
    /// (`http://host/path`, RFC 9112 3.2.2) has lost its scheme and
    /// authority.
    pub target: String,
    /// Every header field as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Who sent it, when the connection is TCP.
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// A request with no headers, no body and no peer, for tests.
    pub fn new(method: Method, target: &str) -> Request {
        Request {
            method,
            target: target.to_owned(),
            headers: Vec::new(),
            body: Body::Read(Vec::new()),
            peer: None,
        }
    }

    /// The same, with one more header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same, with `body` read whole.
    pub fn with_body(mut self, body: &[u8]) -> Request {
        self.body = Body::Read(body.to_vec());
        self
    }

    /// The value of the first `name` header (names compare without regard
    /// to case), as sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// The values of every `name` header, in the order sent.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }
}

/// A finished answer, before it is written.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// What the body holds of the memory for answers, given back once it
    /// has been written (see `response_memory`).
    held: Option<Held>,
}

impl Response {
    pub fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            body,
            headers: vec![("Content-Type", content_type.to_owned())],
            held: None,
        }
    }

    pub fn json(status: u16, body: &impl Serialize) -> Response {
        // Serializing our own plain structs and json! values cannot fail.
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        Response::text(status, "application/json", body)
    }

    /// A JSON body made outside [`Response::json`], with the memory it
    /// holds.
    pub fn json_held(status: u16, body: Vec<u8>, held: Held) -> Response {
        Response {
            held: Some(held),
            ..Response::text(status, "application/json", body)
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of the first `name` header.
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Written by a writer of its own (see `response_memory`).
    pub fn is_large(&self) -> bool {
        self.held.as_ref().is_some_and(Held::is_large)
    }
}

/// The value of the first of `fields` named `name` (names compare without
/// regard to case).
fn first_header<'a, N: AsRef<str>>(fields: &'a [(N, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(field, _)| field.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_whatever_their_case_in_the_order_sent() {
        let request = Request::new(Method::Get, "/x?a=1")
            .with_header("X-Forwarded-For", "1.2.3.4")
            .with_header("x-forwarded-for", "5.6.7.8");
        assert_eq!(request.header("X-FORWARDED-FOR"), Some("1.2.3.4"));
        assert_eq!(
            request.headers("x-Forwarded-for").collect::<Vec<_>>(),
            ["1.2.3.4", "5.6.7.8"]
        );
        assert_eq!(request.header("Host"), None);
        assert_eq!(request.path(), "/x");
    }

    #[test]
    fn methods_keep_what_was_sent() {
        assert_eq!(Method::parse("GET"), Method::Get);
        assert_eq!(Method::parse("PATCH").to_string(), "PATCH");
        assert_eq!(Method::parse("get"), Method::Other("get".into()));
    }
}
