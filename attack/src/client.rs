//! The HTTP side: one `ureq` agent, requests bounded by the per-request
//! timeout and the run's deadline, and answers reduced to what the checks
//! need. Every request goes to the base URL given on the command line;
//! redirects are not followed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How the service answered one request, or why it did not.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    /// The JSON body (`Null` when it was not JSON or none came).
    pub body: Value,
    /// Why no answer came: `timeout`, `connection_failed`, `not_sent_deadline`, ...
    pub failure: Option<String>,
    /// The transport's own words for the failure.
    pub detail: Option<String>,
    pub latency: Duration,
}

impl Reply {
    /// `error.code` of an answer, or the failure's name.
    pub fn code(&self) -> String {
        if let Some(failure) = &self.failure {
            return failure.clone();
        }
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// One line saying what came back, for reasons in the report.
    pub fn describe(&self) -> String {
        match (self.status, &self.detail) {
            (Some(status), _) => {
                let code = self.code();
                if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status} {code}")
                }
            }
            (None, Some(detail)) => format!("no answer ({}: {detail})", self.code()),
            (None, None) => format!("no answer ({})", self.code()),
        }
    }
}

/// What a claim came to: the part of a [`Reply`] the tallies keep.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Option<u16>,
    pub code: String,
    pub latency: Duration,
    /// Times it was sent again with its idempotency key.
    pub retries: u32,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Outcome {
        Outcome {
            code: reply.code(),
            status: reply.status,
            latency: reply.latency,
            retries: 0,
        }
    }
}

/// Times a claim with an idempotency key is sent again after no answer or
/// a 503, at most, and the pause before the first retry (doubling).
const KEYED_RETRIES: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    timeout: Duration,
    deadline: Instant,
    /// Sent as `Authorization: Bearer` when creating coupons.
    admin_token: Option<String>,
    /// With `--idempotency-keys`: what every key starts with (the run's
    /// id), and the number of keys made so far.
    keys: Option<(String, Arc<AtomicU64>)>,
}

impl Client {
    pub fn new(
        base: &str,
        timeout: Duration,
        deadline: Instant,
        concurrency: usize,
        admin_token: Option<String>,
        key_prefix: Option<String>,
    ) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .redirects(0)
            .max_idle_connections(concurrency.max(64))
            .max_idle_connections_per_host(concurrency.max(64))
            .user_agent(concat!("flash-coupons-attack/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent,
            base: base.to_owned(),
            timeout,
            deadline,
            admin_token,
            keys: key_prefix.map(|prefix| (prefix, Arc::new(AtomicU64::new(0)))),
        }
    }

    /// `GET /healthz`: the status of any answer, or why none came.
    pub fn probe(&self) -> Result<u16, String> {
        let reply = self.send("GET", "/healthz", None, &[]);
        match reply.status {
            Some(status) => Ok(status),
            None => Err(reply.detail.clone().unwrap_or_else(|| reply.code())),
        }
    }

    pub fn create(&self, name: &str, amount: u32) -> Reply {
        let auth = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|auth| ("Authorization", auth))
            .into_iter()
            .collect();
        self.send(
            "POST",
            "/api/coupons",
            Some(&json!({ "name": name, "amount": amount })),
            &headers,
        )
    }

    /// A claim; with idempotency keys, sent with a key of its own and sent
    /// again with that key while it gets no answer or a 503, so that a
    /// claim that took effect is answered 200 (a replay) in the end.
    pub fn claim(&self, user_id: &str, coupon_name: &str) -> Outcome {
        let body = json!({ "user_id": user_id, "coupon_name": coupon_name });
        let Some((prefix, made)) = &self.keys else {
            return self
                .send("POST", "/api/coupons/claim", Some(&body), &[])
                .into();
        };
        let key = format!("{prefix}-{}", made.fetch_add(1, Ordering::Relaxed));
        let headers = [("Idempotency-Key", key.as_str())];
        let mut pause = FIRST_PAUSE;
        let mut retries = 0;
        loop {
            let reply = self.send("POST", "/api/coupons/claim", Some(&body), &headers);
            let again = reply.status.is_none_or(|status| status == 503)
                && retries < KEYED_RETRIES
                && Instant::now() + pause < self.deadline;
            if !again {
                return Outcome {
                    retries,
                    ..reply.into()
                };
            }
            std::thread::sleep(pause);
            pause *= 2;
            retries += 1;
        }
    }

    /// Coupon names made by this command need no percent-encoding.
    pub fn get_coupon(&self, name: &str) -> Reply {
        self.send("GET", &format!("/api/coupons/{name}"), None, &[])
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let started = Instant::now();
        let left = self.deadline.saturating_duration_since(started);
        if left.is_zero() {
            return failed("not_sent_deadline", None, Duration::ZERO);
        }
        let mut request = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .timeout(self.timeout.min(left));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(err)) => {
                return failed(
                    transport_failure(&err),
                    Some(err.to_string()),
                    started.elapsed(),
                );
            }
        };
        let status = response.status();
        let body = match serde_json::from_reader::<_, Value>(response.into_reader()) {
            Ok(body) => body,
            Err(err) if err.is_io() => {
                let name = if io_timed_out(&err) {
                    "timeout"
                } else {
                    "body_read_failed"
                };
                return failed(name, Some(err.to_string()), started.elapsed());
            }
            Err(_) => Value::Null,
        };
        Reply {
            status: Some(status),
            body,
            failure: None,
            detail: None,
            latency: started.elapsed(),
        }
    }
}

fn failed(name: &str, detail: Option<String>, latency: Duration) -> Reply {
    Reply {
        status: None,
        body: Value::Null,
        failure: Some(name.to_owned()),
        detail,
        latency,
    }
}

fn transport_failure(err: &ureq::Transport) -> &'static str {
    use ureq::ErrorKind;
    if io_timed_out(err) {
        return "timeout";
    }
    match err.kind() {
        ErrorKind::ConnectionFailed => "connection_failed",
        ErrorKind::Dns => "dns_failed",
        ErrorKind::InvalidUrl | ErrorKind::UnknownScheme => "invalid_url",
        ErrorKind::BadStatus | ErrorKind::BadHeader => "bad_http",
        _ => "transport_failed",
    }
}

/// Whether an I/O timeout is anywhere in the error's chain.
fn io_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            )
        {
            return true;
        }
        next = err.source();
    }
    false
}
