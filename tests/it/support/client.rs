//! A raw HTTP/1.1 client that never panics, for tests that break things on
//! purpose: it says which step failed (connecting, sending, or getting the
//! answer), whether an answer was cut off, and how long it all took.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::answer::Answer;

/// Why no complete answer came.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Nothing was sent: the connection was refused or could not be made.
    Connect { kind: io::ErrorKind, error: String },
    /// The request could not be written completely.
    Send { error: String },
    /// The request went out, and the connection ended (or failed) before a
    /// complete answer; `received` bytes of an answer had come.
    Cut { received: usize, error: String },
    /// The request went out and nothing ended it within the time limit.
    TimedOut { received: usize },
}

impl Failure {
    /// True when the request never reached the server.
    pub fn before_sending(&self) -> bool {
        matches!(self, Failure::Connect { .. })
    }
}

/// What failed, in a few words (the key of a tally).
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect { error, .. } => write!(f, "connect failed: {error}"),
            Failure::Send { error } => write!(f, "send failed: {error}"),
            Failure::Cut { received, error } => write!(f, "cut after {received} bytes: {error}"),
            Failure::TimedOut { received } => write!(f, "timed out after {received} bytes"),
        }
    }
}

/// One request and what became of it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub result: Result<Answer, Failure>,
    pub started: Instant,
    /// When the whole request had been written, if it was.
    pub sent: Option<Instant>,
    pub finished: Instant,
}

impl Exchange {
    pub fn elapsed(&self) -> Duration {
        self.finished - self.started
    }

    pub fn status(&self) -> Option<u16> {
        self.result.as_ref().ok().map(|a| a.status)
    }

    pub fn answered(&self) -> Option<&Answer> {
        self.result.as_ref().ok()
    }
}

/// Sends one request with `Connection: close` and reads the whole answer,
/// giving up after `limit` in all.
pub fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    limit: Duration,
) -> Exchange {
    exchange_with_headers(addr, method, path, json_body, "", limit)
}

/// The same, with `extra_headers` (whole header lines, each ending in
/// CRLF) added to the request.
pub fn exchange_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    extra_headers: &str,
    limit: Duration,
) -> Exchange {
    let started = Instant::now();
    let mut sent = None;
    let result = attempt(
        addr,
        method,
        path,
        json_body,
        extra_headers,
        started + limit,
        &mut sent,
    );
    Exchange {
        result,
        started,
        sent,
        finished: Instant::now(),
    }
}

pub fn claim(addr: SocketAddr, user: &str, coupon: &str, limit: Duration) -> Exchange {
    let body = serde_json::json!({ "user_id": user, "coupon_name": coupon }).to_string();
    exchange(addr, "POST", "/api/coupons/claim", Some(&body), limit)
}

pub fn get(addr: SocketAddr, path: &str, limit: Duration) -> Exchange {
    exchange(addr, "GET", path, None, limit)
}

/// What a coupon's creation may take on a server at rest (it takes
/// milliseconds): the shortest any test gave it.
const CREATE_LIMIT: Duration = Duration::from_secs(15);

/// Creates coupon `name` with `amount` units (POST /api/coupons); fails the
/// test unless it is answered 201.
pub fn create(addr: SocketAddr, name: &str, amount: i64) {
    create_with_headers(addr, name, amount, "");
}

/// The same on a server that has `token` as its ADMIN_TOKEN.
pub fn create_with_token(addr: SocketAddr, token: &str, name: &str, amount: i64) {
    create_with_headers(
        addr,
        name,
        amount,
        &format!("Authorization: Bearer {token}\r\n"),
    );
}

fn create_with_headers(addr: SocketAddr, name: &str, amount: i64, extra_headers: &str) {
    let body = serde_json::json!({ "name": name, "amount": amount }).to_string();
    let created = exchange_with_headers(
        addr,
        "POST",
        "/api/coupons",
        Some(&body),
        extra_headers,
        CREATE_LIMIT,
    );
    assert_eq!(created.status(), Some(201), "creating {name}: {created:?}");
}

/// DELETE /api/coupons/{coupon}/claims/{user} (both percent-encoded here),
/// with `Authorization: Bearer <token>` when a token is given.
pub fn release(
    addr: SocketAddr,
    coupon: &str,
    user: &str,
    token: Option<&str>,
    limit: Duration,
) -> Exchange {
    let path = format!(
        "/api/coupons/{}/claims/{}",
        percent_encode_segment(coupon),
        percent_encode_segment(user)
    );
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    exchange_with_headers(addr, "DELETE", &path, None, &auth, limit)
}

/// Every byte but unreserved ASCII as %XX, for a path segment.
pub fn percent_encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn attempt(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    extra_headers: &str,
    deadline: Instant,
    sent: &mut Option<Instant>,
) -> Result<Answer, Failure> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut stream = TcpStream::connect_timeout(&addr, left().max(Duration::from_millis(1)))
        .map_err(|e| Failure::Connect {
            kind: e.kind(),
            error: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    let request = request_text(
        method,
        path,
        json_body,
        &format!("Connection: close\r\n{extra_headers}"),
    );
    let _ = stream.set_write_timeout(Some(left().max(Duration::from_millis(1))));
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| Failure::Send {
            error: e.to_string(),
        })?;
    *sent = Some(Instant::now());

    read_next(&mut stream, &mut Vec::new(), deadline)
}

/// One HTTP/1.1 request as text; `extra_headers` are whole header lines.
pub fn request_text(
    method: &str,
    path: &str,
    json_body: Option<&str>,
    extra_headers: &str,
) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra_headers}");
    if let Some(body) = json_body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    request
}

/// A claim as request text that leaves its connection open.
pub fn claim_text(user: &str, coupon: &str) -> String {
    let body = serde_json::json!({ "user_id": user, "coupon_name": coupon }).to_string();
    request_text("POST", "/api/coupons/claim", Some(&body), "")
}

/// Writes `requests` in one send on one connection (pipelined) and reads
/// their answers in order, giving up after `limit` in all. On failure, the
/// answers that did come are returned with it.
pub fn pipelined(
    addr: SocketAddr,
    requests: &[String],
    limit: Duration,
) -> Result<Vec<Answer>, (Vec<Answer>, Failure)> {
    let deadline = Instant::now() + limit;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut answers = Vec::new();
    let mut stream = match TcpStream::connect_timeout(&addr, left().max(Duration::from_millis(1))) {
        Ok(stream) => stream,
        Err(e) => {
            let failure = Failure::Connect {
                kind: e.kind(),
                error: e.to_string(),
            };
            return Err((answers, failure));
        }
    };
    let all: String = requests.concat();
    let _ = stream.set_write_timeout(Some(left().max(Duration::from_millis(1))));
    if let Err(e) = stream.write_all(all.as_bytes()) {
        let failure = Failure::Send {
            error: e.to_string(),
        };
        return Err((answers, failure));
    }
    let mut received = Vec::new();
    while answers.len() < requests.len() {
        match read_next(&mut stream, &mut received, deadline) {
            Ok(answer) => answers.push(answer),
            Err(failure) => return Err((answers, failure)),
        }
    }
    Ok(answers)
}

/// Reads one answer from `stream`, which the request has been written to,
/// giving up after `limit`.
pub fn read_answer(stream: &mut TcpStream, limit: Duration) -> Result<Answer, Failure> {
    read_next(stream, &mut Vec::new(), Instant::now() + limit)
}

/// Reads from `stream` onto `received` until it begins with a whole answer,
/// until `deadline`; the answer, its bytes taken off `received`.
fn read_next(
    stream: &mut TcpStream,
    received: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let mut buf = [0u8; 8192];
    let mut closed = false;
    loop {
        if let Some((answer, used)) = Answer::parse(received, closed) {
            received.drain(..used);
            return Ok(answer);
        }
        if closed {
            return Err(Failure::Cut {
                received: received.len(),
                error: "the connection closed".into(),
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Failure::TimedOut {
                received: received.len(),
            });
        }
        let _ = stream.set_read_timeout(Some(remaining));
        match stream.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::TimedOut {
                    received: received.len(),
                });
            }
            Err(e) => {
                return Err(Failure::Cut {
                    received: received.len(),
                    error: e.to_string(),
                });
            }
        }
    }
}
