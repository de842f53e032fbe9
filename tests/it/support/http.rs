//! A small blocking HTTP client for the tests: real requests over TCP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::answer::Answer;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

pub fn request(method: &str, url: &str, json_body: Option<&str>) -> Answer {
    request_with(method, url, json_body.map(|b| ("application/json", b)), &[])
}

pub fn request_with(
    method: &str,
    url: &str,
    body: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = agent().request(method, url);
    for (name, value) in headers {
        req = req.set(name, value);
    }
    let result = match body {
        Some((content_type, body)) => req.set("Content-Type", content_type).send_string(body),
        None => req.call(),
    };
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url} failed at the transport: {e}"),
    };
    let status_line = format!(
        "{} {} {}",
        response.http_version(),
        response.status(),
        response.status_text()
    );
    let status = response.status();
    let mut names: Vec<String> = Vec::new();
    for name in response.headers_names() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let headers = names
        .iter()
        .flat_map(|name| {
            response
                .all(name)
                .into_iter()
                .map(|v| (name.clone(), v.to_owned()))
        })
        .collect();
    let text = response.into_string().unwrap_or_default();
    Answer::new(status_line, status, headers, text)
}

/// POST /api/coupons/claim at `base` (e.g. `http://127.0.0.1:8080`).
pub fn claim(base: &str, user: &str, coupon: &str) -> Answer {
    let body = serde_json::json!({ "user_id": user, "coupon_name": coupon }).to_string();
    request("POST", &format!("{base}/api/coupons/claim"), Some(&body))
}

/// Sends raw bytes and reads until the server closes or `timeout` passes;
/// returns everything received.
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(bytes).expect("sending");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of a GET, or None on any transport failure within `limit`.
pub fn try_status(url: &str, limit: Duration) -> Option<u16> {
    let agent = ureq::AgentBuilder::new().timeout(limit).build();
    match agent.get(url).call() {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

/// The text of GET /metrics at `base` (e.g. `http://127.0.0.1:8080`).
pub fn scrape(base: &str) -> String {
    let answer = request_with("GET", &format!("{base}/metrics"), None, &[]);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{answer:?}"
    );
    answer.body.as_str().unwrap_or_default().to_owned()
}

/// The value of the sample whose name and labels are exactly `series`
/// (0 when absent, as Prometheus reads a missing counter).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
