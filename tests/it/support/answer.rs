//! An HTTP answer, and the one reader of answers from the bytes a
//! connection received: every test that talks raw HTTP reads its answers
//! here, so that they are framed the same way (Content-Length, chunked, or
//! the connection's close) wherever they are checked.

use serde_json::Value;

/// One answer: its status, every header field, and its body.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    /// As received, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// Every header field in order, values trimmed; names as sent on a raw
    /// connection (ureq lowercases them).
    pub headers: Vec<(String, String)>,
    /// The body as JSON; the text as a JSON string when it is not JSON.
    pub body: Value,
    /// The body as text (bytes that are not UTF-8 replaced), chunks joined.
    pub text: String,
}

/// `body` is left out: it is `text` again.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status_line", &self.status_line)
            .field("headers", &self.headers)
            .field("text", &self.text)
            .finish()
    }
}

impl Answer {
    /// `body` is read from `text`.
    pub fn new(
        status_line: String,
        status: u16,
        headers: Vec<(String, String)>,
        text: String,
    ) -> Answer {
        Answer {
            status,
            status_line,
            headers,
            body: serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone())),
            text,
        }
    }

    /// The value of the first field named `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the documented error shape with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "unexpected answer {self:?}");
        assert_eq!(self.code(), code, "unexpected answer {self:?}");
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no message in {self:?}"
        );
        assert_eq!(
            self.header("Content-Type"),
            Some("application/json"),
            "{self:?}"
        );
    }

    /// The first answer in `bytes` if all of it is there, and how many
    /// bytes it took. A body framed by neither Content-Length nor chunked
    /// ends with the connection: with the bytes, once `closed`.
    pub fn parse(bytes: &[u8], closed: bool) -> Option<(Answer, usize)> {
        parse(bytes, closed, false)
    }
}

/// Every answer a connection received until it closed, in order, interim
/// (1xx) ones left out; or what in `bytes` is not a whole answer.
pub fn answers(bytes: &[u8]) -> Result<Vec<Answer>, String> {
    answers_in(bytes, false)
}

/// The same for answers to HEAD requests, which have no body whatever
/// their Content-Length says.
pub fn answers_to_head(bytes: &[u8]) -> Result<Vec<Answer>, String> {
    answers_in(bytes, true)
}

/// The statuses of every answer in `raw`, all a connection received until
/// it closed; fails the test when it is not whole answers.
pub fn statuses(raw: &str) -> Vec<u16> {
    answers(raw.as_bytes())
        .unwrap_or_else(|why| panic!("{why}; all received: {raw:?}"))
        .iter()
        .map(|a| a.status)
        .collect()
}

fn answers_in(mut bytes: &[u8], to_head: bool) -> Result<Vec<Answer>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (answer, used) = parse(bytes, true, to_head)
            .ok_or_else(|| format!("not a whole answer: {:?}", String::from_utf8_lossy(bytes)))?;
        bytes = &bytes[used..];
        if !(100..200).contains(&answer.status) {
            out.push(answer);
        }
    }
    Ok(out)
}

fn parse(bytes: &[u8], closed: bool, to_head: bool) -> Option<(Answer, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let rest = &bytes[end + 4..];
    // RFC 9112, 6.3: these never have a body.
    let (body, used) = if to_head || (100..200).contains(&status) || matches!(status, 204 | 304) {
        (Vec::new(), 0)
    } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().ok()?;
        (rest.get(..length)?.to_vec(), length)
    } else if closed {
        (rest.to_vec(), rest.len())
    } else {
        return None;
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let answer = Answer::new(status_line.to_owned(), status, headers, text);
    Some((answer, end + 4 + used))
}

/// The body of a chunked message, once its last (empty) chunk is in, and
/// the bytes it took.
fn dechunk(all: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut bytes = all;
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            // The servers tested send no trailers: the message ends with CRLF.
            let used = all.len() - bytes.len() + 2;
            return bytes.starts_with(b"\r\n").then_some((body, used));
        }
        body.extend_from_slice(bytes.get(..size)?);
        if bytes.get(size..size + 2)? != b"\r\n" {
            return None;
        }
        bytes = &bytes[size + 2..];
    }
}
