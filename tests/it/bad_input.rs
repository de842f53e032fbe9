//! Malformed requests, sent as raw bytes over TCP to the real server: each
//! gets the 4xx that docs/api.md documents, in the documented error shape,
//! changes nothing in the database, and leaves the server answering.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::answer::{Answer, answers};
use crate::support::client::percent_encode_segment;
use crate::support::http::raw;
use crate::support::serial;
use crate::support::{self, TestApp};

/// The coupon every case runs beside, with one claim on it.
const SEEDED: &str = "SEEDED";
const SEEDED_AMOUNT: i64 = 5;

/// How long one raw exchange may take. Every case ends its connection
/// (`Connection: close`, HTTP/1.0, or a request tiny_http gives up on), so
/// this is only reached when the server hangs.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one response of a case must be.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The documented error: this status, this `error.code`.
    Error(u16, &'static str),
    /// 405 `method_not_allowed` with exactly this `Allow` header.
    NotAllowed(&'static str),
    /// 200 `{"status":"ok"}` from /healthz (in pipelined cases).
    Healthy,
    /// tiny_http's own answer to a request it cannot parse: a bare status
    /// with no JSON body, after which it closes the connection. Only the
    /// status is ours to check; the request never reaches our code.
    Bare(u16),
}

struct Case {
    what: &'static str,
    request: Vec<u8>,
    want: Vec<Want>,
    /// Close the sending side once the request is sent (the client still
    /// reads the answer).
    half_close: bool,
}

fn case(what: &'static str, request: Vec<u8>, want: Want) -> Case {
    Case {
        what,
        request,
        want: vec![want],
        half_close: false,
    }
}

fn pipelined(what: &'static str, request: Vec<u8>, want: &[Want]) -> Case {
    Case {
        what,
        request,
        want: want.to_vec(),
        half_close: false,
    }
}

/// A case whose client closes its sending side after the request.
fn half_closed(what: &'static str, request: Vec<u8>, want: Want) -> Case {
    Case {
        half_close: true,
        ..case(what, request, want)
    }
}

/// One HTTP/1.1 request, `Connection: close` unless `close` is false.
fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: t\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// POST with a JSON content type, raw body bytes.
fn post_bytes(path: &str, body: &[u8]) -> Vec<u8> {
    request("POST", path, &[JSON], body, true)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    post_bytes(path, body.as_bytes())
}

fn create(body: &str) -> Vec<u8> {
    post("/api/coupons", body)
}

fn claim(body: &str) -> Vec<u8> {
    post("/api/coupons/claim", body)
}

fn get(target: &str) -> Vec<u8> {
    request("GET", target, &[], b"", true)
}

fn method(method: &str, target: &str) -> Vec<u8> {
    request(method, target, &[], b"", true)
}

/// A chunked POST of `body` in chunks of `chunk` bytes.
fn chunked(path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    chunked_with_trailer(path, body, chunk, &[], true)
}

/// A chunked POST of `body` in chunks of `chunk` bytes whose last chunk is
/// followed by the trailer section `fields` (RFC 9112, 7.1.2); asks to
/// close unless `close` is false.
fn chunked_with_trailer(
    path: &str,
    body: &[u8],
    chunk: usize,
    fields: &[&str],
    close: bool,
) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n{connection}\r\n"
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for field in fields {
        out.extend_from_slice(format!("{field}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A POST that declares `missing` bytes more than it sends. What it sends is
/// `json`, whole and valid, padded with spaces to over 1 KiB, so that
/// tiny_http leaves the body to be read by us rather than with the head.
fn short_of_length(path: &str, json: &str, missing: usize) -> Vec<u8> {
    let body = format!("{json}{}", " ".repeat(1100));
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len() + missing
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn cases() -> Vec<Case> {
    use Want::{Bare, Error, Healthy, NotAllowed};
    let ten_kib_name = "N".repeat(10 * 1024);
    let ten_kib_user = "u".repeat(10 * 1024);
    let seventeen_kib = json!({"name": "BIG", "amount": 1, "pad": "x".repeat(17 * 1024)})
        .to_string()
        .into_bytes();
    let just_over_limit = {
        // Exactly 16 KiB + 1 bytes of otherwise valid JSON.
        let head = r#"{"name":"EDGE","amount":1,"pad":""#;
        let tail = r#""}"#;
        let pad = "x".repeat(16 * 1024 + 1 - head.len() - tail.len());
        format!("{head}{pad}{tail}").into_bytes()
    };
    vec![
        // --- not JSON, or truncated JSON ---
        case(
            "create with an empty body",
            create(""),
            Error(400, "invalid_json"),
        ),
        case(
            "claim with an empty body",
            claim(""),
            Error(400, "invalid_json"),
        ),
        case(
            "create truncated after a colon",
            create(r#"{"name":"TRUNC","amount":"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create without its closing brace",
            create(r#"{"name":"TRUNC","amount":1"#),
            Error(400, "invalid_json"),
        ),
        case(
            "claim truncated inside a string",
            claim(r#"{"user_id":"u","coupon_name":"SEED"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create with unquoted keys",
            create(r#"{name:"X",amount:1}"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create with single quotes",
            create("{'name':'X','amount':1}"),
            Error(400, "invalid_json"),
        ),
        case(
            "create with a trailing comma",
            create(r#"{"name":"X","amount":1,}"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create with two objects in one body",
            create(r#"{"name":"X","amount":1}{"name":"Y","amount":1}"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create with a raw (unescaped) control byte in a string",
            create("{\"name\":\"A\u{1}B\",\"amount\":1}"),
            Error(400, "invalid_json"),
        ),
        case(
            "claim with a lone surrogate escape",
            claim(r#"{"user_id":"\ud800","coupon_name":"SEEDED"}"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create with a name nested 5,000 arrays deep",
            create(&format!(
                r#"{{"name":{}{},"amount":1}}"#,
                "[".repeat(5000),
                "]".repeat(5000)
            )),
            Error(400, "invalid_json"),
        ),
        case(
            "create with a UTF-8 byte order mark before the object",
            post_bytes(
                "/api/coupons",
                b"\xef\xbb\xbf{\"name\":\"BOM\",\"amount\":1}",
            ),
            Error(400, "invalid_json"),
        ),
        case(
            "create with an array body",
            create(r#"[{"name":"X","amount":1}]"#),
            Error(400, "body_not_object"),
        ),
        case(
            "claim with a null body",
            claim("null"),
            Error(400, "body_not_object"),
        ),
        case(
            "create with a string body",
            create(r#""SEEDED""#),
            Error(400, "body_not_object"),
        ),
        // --- invalid UTF-8 inside a JSON string ---
        case(
            "create with 0xFF 0xFE inside the name",
            post_bytes("/api/coupons", b"{\"name\":\"A\xff\xfeB\",\"amount\":1}"),
            Error(400, "invalid_json"),
        ),
        case(
            "claim with a truncated UTF-8 sequence in the user id",
            post_bytes(
                "/api/coupons/claim",
                b"{\"user_id\":\"u\xc3\",\"coupon_name\":\"SEEDED\"}",
            ),
            Error(400, "invalid_json"),
        ),
        // --- wrong types and nulls ---
        case(
            "create with a numeric name",
            create(r#"{"name":123,"amount":1}"#),
            Error(400, "name_not_a_string"),
        ),
        case(
            "create with an array name",
            create(r#"{"name":["X"],"amount":1}"#),
            Error(400, "name_not_a_string"),
        ),
        case(
            "create with an object name",
            create(r#"{"name":{"x":1},"amount":1}"#),
            Error(400, "name_not_a_string"),
        ),
        case(
            "create with a null name",
            create(r#"{"name":null,"amount":1}"#),
            Error(400, "name_not_a_string"),
        ),
        case(
            "create with a string amount",
            create(r#"{"name":"X","amount":"5"}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        case(
            "create with a boolean amount",
            create(r#"{"name":"X","amount":true}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        case(
            "create with a null amount",
            create(r#"{"name":"X","amount":null}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        case(
            "claim with a boolean user id",
            claim(r#"{"user_id":true,"coupon_name":"SEEDED"}"#),
            Error(400, "user_id_not_a_string"),
        ),
        case(
            "claim with a null user id",
            claim(r#"{"user_id":null,"coupon_name":"SEEDED"}"#),
            Error(400, "user_id_not_a_string"),
        ),
        case(
            "claim with a numeric coupon name",
            claim(r#"{"user_id":"u","coupon_name":42}"#),
            Error(400, "coupon_name_not_a_string"),
        ),
        case(
            "claim with a null coupon name",
            claim(r#"{"user_id":"u","coupon_name":null}"#),
            Error(400, "coupon_name_not_a_string"),
        ),
        // --- missing and extra fields ---
        case("create with {}", create("{}"), Error(400, "name_missing")),
        case(
            "create without an amount",
            create(r#"{"name":"X"}"#),
            Error(400, "amount_missing"),
        ),
        case(
            "create with an extra field",
            create(r#"{"name":"X","amount":1,"remaining_amount":0}"#),
            Error(400, "unknown_field"),
        ),
        case(
            "create with a differently cased field",
            create(r#"{"Name":"X","amount":1}"#),
            Error(400, "unknown_field"),
        ),
        case("claim with {}", claim("{}"), Error(400, "user_id_missing")),
        case(
            "claim without a coupon name",
            claim(r#"{"user_id":"u"}"#),
            Error(400, "coupon_name_missing"),
        ),
        case(
            "claim with an extra field",
            claim(r#"{"user_id":"u","coupon_name":"SEEDED","amount":1}"#),
            Error(400, "unknown_field"),
        ),
        // --- repeated fields: two readers could disagree on which counts ---
        case(
            "claim with the user id twice",
            claim(r#"{"user_id":"a","user_id":"b","coupon_name":"SEEDED"}"#),
            Error(400, "duplicate_field"),
        ),
        case(
            "claim with the coupon name twice, the same both times",
            claim(r#"{"user_id":"a","coupon_name":"SEEDED","coupon_name":"SEEDED"}"#),
            Error(400, "duplicate_field"),
        ),
        case(
            "create with the amount twice",
            create(r#"{"name":"TWICE","amount":1,"amount":1000}"#),
            Error(400, "duplicate_field"),
        ),
        // --- numbers: huge, negative, fractional ---
        // 1e400 is valid JSON by RFC 8259's grammar, beyond any f64: the
        // JSON reader refuses it while parsing (docs/api.md, input rules).
        case(
            "create with amount 1e400 (beyond f64)",
            create(r#"{"name":"X","amount":1e400}"#),
            Error(400, "invalid_json"),
        ),
        case(
            "create with amount 99999999999999999999 (beyond u64)",
            create(r#"{"name":"X","amount":99999999999999999999}"#),
            Error(400, "amount_too_large"),
        ),
        case(
            "create with amount 2147483648",
            create(r#"{"name":"X","amount":2147483648}"#),
            Error(400, "amount_too_large"),
        ),
        case(
            "create with amount -1e30",
            create(r#"{"name":"X","amount":-1e30}"#),
            Error(400, "amount_negative"),
        ),
        case(
            "create with amount -1",
            create(r#"{"name":"X","amount":-1}"#),
            Error(400, "amount_negative"),
        ),
        case(
            "create with amount -0.5",
            create(r#"{"name":"X","amount":-0.5}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        case(
            "create with amount 1.5",
            create(r#"{"name":"X","amount":1.5}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        case(
            "create with amount 1e2 (a whole value in float notation)",
            create(r#"{"name":"X","amount":1e2}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        // -0 is a JSON integer equal to 0 (RFC 8259: int = [minus] digits),
        // but the JSON reader takes it for the float -0.0: refused as not
        // whole (docs/api.md, input rules).
        case(
            "create with amount -0",
            create(r#"{"name":"X","amount":-0}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        case(
            "create with amount 5.0",
            create(r#"{"name":"X","amount":5.0}"#),
            Error(400, "amount_not_a_whole_number"),
        ),
        // --- empty, padded, long and control-character names and ids ---
        case(
            "create with an empty name",
            create(r#"{"name":"","amount":1}"#),
            Error(400, "name_empty"),
        ),
        case(
            "claim with an empty user id",
            claim(r#"{"user_id":"","coupon_name":"SEEDED"}"#),
            Error(400, "user_id_empty"),
        ),
        case(
            "create with a leading space in the name",
            create(r#"{"name":" X","amount":1}"#),
            Error(400, "name_surrounding_whitespace"),
        ),
        case(
            "create with a trailing tab in the name",
            create(r#"{"name":"X\t","amount":1}"#),
            Error(400, "name_surrounding_whitespace"),
        ),
        case(
            "create with a leading no-break space in the name",
            create(r#"{"name":"\u00a0X","amount":1}"#),
            Error(400, "name_surrounding_whitespace"),
        ),
        case(
            "claim with a space-padded user id",
            claim(r#"{"user_id":" u ","coupon_name":"SEEDED"}"#),
            Error(400, "user_id_surrounding_whitespace"),
        ),
        case(
            "claim with a newline after the coupon name",
            claim(r#"{"user_id":"u","coupon_name":"SEEDED\n"}"#),
            Error(400, "coupon_name_surrounding_whitespace"),
        ),
        case(
            "create with a 10 KiB name",
            create(&json!({"name": ten_kib_name, "amount": 1}).to_string()),
            Error(400, "name_too_long"),
        ),
        case(
            "claim with a 10 KiB user id",
            claim(&json!({"user_id": ten_kib_user, "coupon_name": SEEDED}).to_string()),
            Error(400, "user_id_too_long"),
        ),
        case(
            "claim with a 10 KiB coupon name",
            claim(&json!({"user_id": "u", "coupon_name": ten_kib_name}).to_string()),
            Error(400, "coupon_name_too_long"),
        ),
        case(
            "create with a name of 129 two-byte characters",
            create(&json!({"name": "é".repeat(129), "amount": 1}).to_string()),
            Error(400, "name_too_long"),
        ),
        case(
            "create with \\u0000 inside the name",
            create(r#"{"name":"A\u0000B","amount":1}"#),
            Error(400, "name_control_character"),
        ),
        case(
            "create with a name that is only \\u0000",
            create(r#"{"name":"\u0000","amount":1}"#),
            Error(400, "name_control_character"),
        ),
        case(
            "create with \\u007f inside the name",
            create(r#"{"name":"A\u007fB","amount":1}"#),
            Error(400, "name_control_character"),
        ),
        case(
            "claim with \\u001f inside the user id",
            claim(r#"{"user_id":"u\u001fv","coupon_name":"SEEDED"}"#),
            Error(400, "user_id_control_character"),
        ),
        case(
            "claim with \\u0085 inside the coupon name",
            claim(r#"{"user_id":"u","coupon_name":"SEE\u0085DED"}"#),
            Error(400, "coupon_name_control_character"),
        ),
        // --- names in paths ---
        case(
            "GET a name of %00",
            get("/api/coupons/%00"),
            Error(400, "coupon_name_control_character"),
        ),
        case(
            "GET a name of %FF",
            get("/api/coupons/%FF"),
            Error(400, "invalid_path"),
        ),
        case(
            "GET a name ending in a truncated UTF-8 sequence",
            get("/api/coupons/A%E2%82"),
            Error(400, "invalid_path"),
        ),
        // A `%` that is not an escape: not taken as itself, which would make
        // /api/coupons/%zz and /api/coupons/%25zz the same coupon.
        case(
            "GET a name with %zz",
            get("/api/coupons/%zz"),
            Error(400, "invalid_path"),
        ),
        case(
            "GET a name of %",
            get("/api/coupons/%"),
            Error(400, "invalid_path"),
        ),
        case(
            "GET a name ending in %2",
            get("/api/coupons/SEEDED%2"),
            Error(400, "invalid_path"),
        ),

        case(
            "GET a name with %2F (a slash, once decoded)",
            get("/api/coupons/SEE%2FDED"),
            Error(404, "coupon_not_found"),
        ),
        case(
            "GET a percent-encoded SQL-looking name",
            get("/api/coupons/%27%3B%20DROP%20TABLE%20coupons%3B%20--"),
            Error(404, "coupon_not_found"),
        ),
        case(
            "GET an SQL-looking name with literal quotes and semicolons",
            get("/api/coupons/';DROP%20TABLE%20coupons;--"),
            Error(404, "coupon_not_found"),
        ),
        case(
            "GET a name with surrounding %20",
            get("/api/coupons/%20SEEDED%20"),
            Error(400, "coupon_name_surrounding_whitespace"),
        ),
        case(
            "GET a name of 129 characters",
            get(&format!("/api/coupons/{}", "n".repeat(129))),
            Error(400, "coupon_name_too_long"),
        ),
        // --- listing queries and sale windows ---
        case(
            "list coupons with limit=0",
            get("/api/coupons?limit=0"),
            Error(400, "invalid_limit"),
        ),
        case(
            "list coupons with limit=abc",
            get("/api/coupons?limit=abc"),
            Error(400, "invalid_limit"),
        ),
        case(
            "list coupons after a cursor that is not hex",
            get("/api/coupons?after=nzz"),
            Error(400, "invalid_cursor"),
        ),
        case(
            "list claims after a coupon listing's cursor",
            get("/api/coupons/SEEDED/claims?after=n41"),
            Error(400, "invalid_cursor"),
        ),
        case(
            "list claims of a name of %FF",
            get("/api/coupons/%FF/claims"),
            Error(400, "invalid_path"),
        ),
        case(
            "create with starts_at \"tomorrow\"",
            create(r#"{"name":"W","amount":1,"starts_at":"tomorrow"}"#),
            Error(400, "starts_at_not_rfc3339"),
        ),
        case(
            "create with a numeric starts_at",
            create(r#"{"name":"W","amount":1,"starts_at":1764072000}"#),
            Error(400, "starts_at_not_a_string"),
        ),
        case(
            "create with expires_at on 29 February 2026",
            create(r#"{"name":"W","amount":1,"expires_at":"2026-02-29T00:00:00Z"}"#),
            Error(400, "expires_at_not_rfc3339"),
        ),
        case(
            "create with expires_at equal to starts_at",
            create(
                r#"{"name":"W","amount":1,"starts_at":"2026-11-25T12:00:00Z","expires_at":"2026-11-25T19:00:00+07:00"}"#,
            ),
            Error(400, "expires_at_not_after_starts_at"),
        ),
        // --- bodies: chunked, over the limit, mis-declared ---
        case(
            "chunked create with invalid JSON",
            chunked("/api/coupons", br#"{"name":"CHUNK","amount":"#, 7),
            Error(400, "invalid_json"),
        ),
        case(
            "chunked claim with an empty user id",
            chunked(
                "/api/coupons/claim",
                br#"{"user_id":"","coupon_name":"SEEDED"}"#,
                5,
            ),
            Error(400, "user_id_empty"),
        ),
        case(
            "chunked create of 17 KiB",
            chunked("/api/coupons", &seventeen_kib, 4096),
            Error(413, "payload_too_large"),
        ),
        case(
            "create with Content-Length 17 KiB, body sent",
            post_bytes("/api/coupons", &seventeen_kib),
            Error(413, "payload_too_large"),
        ),
        case(
            "create with a body of 16 KiB + 1 byte",
            post_bytes("/api/coupons", &just_over_limit),
            Error(413, "payload_too_large"),
        ),
        case(
            "create with a Content-Length shorter than the body",
            {
                let body = br#"{"name":"SHORT","amount":1}"#;
                let mut out = b"POST /api/coupons HTTP/1.1\r\nHost: t\r\n\
                    Content-Type: application/json\r\nContent-Length: 10\r\n\
                    Connection: close\r\n\r\n"
                    .to_vec();
                out.extend_from_slice(body);
                out
            },
            Error(400, "invalid_json"),
        ),
        // Where the body ends cannot be told: refused before it is read
        // (more in a_body_whose_framing_cannot_be_trusted_is_refused_...).
        case(
            "create with a non-numeric Content-Length",
            b"POST /api/coupons HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: abc\r\nConnection: close\r\n\r\n{\"name\":\"CL\",\"amount\":1}"
                .to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "create with a chunked body whose chunk size is not hex",
            b"POST /api/coupons HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            Error(400, "invalid_json"),
        ),
        case(
            "create with Expect: 100-continue and an empty name",
            request(
                "POST",
                "/api/coupons",
                &[JSON, ("Expect", "100-continue")],
                br#"{"name":"","amount":1}"#,
                true,
            ),
            Error(400, "name_empty"),
        ),
        // --- methods ---
        case(
            "OPTIONS /api/coupons/claim",
            method("OPTIONS", "/api/coupons/claim"),
            NotAllowed("GET, HEAD, POST"),
        ),
        case(
            "PUT /api/coupons/claim",
            request(
                "PUT",
                "/api/coupons/claim",
                &[JSON],
                br#"{"user_id":"u","coupon_name":"SEEDED"}"#,
                true,
            ),
            NotAllowed("GET, HEAD, POST"),
        ),
        case(
            "DELETE the seeded coupon",
            method("DELETE", "/api/coupons/SEEDED"),
            NotAllowed("GET, HEAD"),
        ),
        case(
            "POST to the seeded coupon's path",
            post("/api/coupons/SEEDED", r#"{"name":"SEEDED","amount":0}"#),
            NotAllowed("GET, HEAD"),
        ),
        case(
            "PATCH /healthz",
            method("PATCH", "/healthz"),
            NotAllowed("GET, HEAD"),
        ),
        // --- unknown paths ---
        case("GET /", get("/"), Error(404, "not_found")),
        case(
            "GET /api/coupons/",
            get("/api/coupons/"),
            Error(404, "not_found"),
        ),
        case(
            "GET a coupon path with a trailing slash",
            get("/api/coupons/SEEDED/"),
            Error(404, "not_found"),
        ),
        case(
            "GET the coupon path in upper case",
            get("/API/COUPONS/SEEDED"),
            Error(404, "not_found"),
        ),
        case(
            "POST below the claim path",
            post(
                "/api/coupons/claim/now",
                r#"{"user_id":"u","coupon_name":"SEEDED"}"#,
            ),
            Error(404, "not_found"),
        ),
        // --- HTTP/1.0 ---
        case(
            "HTTP/1.0 create with invalid JSON",
            b"POST /api/coupons HTTP/1.0\r\nContent-Type: application/json\r\n\
              Content-Length: 9\r\n\r\n{\"name\":1"
                .to_vec(),
            Error(400, "invalid_json"),
        ),
        case(
            "HTTP/1.0 GET of an unknown path",
            b"GET /nope HTTP/1.0\r\n\r\n".to_vec(),
            Error(404, "not_found"),
        ),
        // --- pipelined: several requests in one write, answered in order ---
        // Only the last asks to close. Every answer says `Connection: close`
        // (keep-alive is off by default), yet tiny_http goes on reading the
        // connection and the next request is served: what these cases pin
        // down, though RFC 9112 (9.6) says a server that sent `close` must
        // not process further requests on the connection.
        pipelined(
            "two pipelined: a bad create, then /healthz",
            concat(&[
                request("POST", "/api/coupons", &[JSON], br#"{"name":""}"#, false),
                get("/healthz"),
            ]),
            &[Error(400, "name_empty"), Healthy],
        ),
        pipelined(
            "three pipelined: a bad claim, an invalid path, a wrong method",
            concat(&[
                request(
                    "POST",
                    "/api/coupons/claim",
                    &[JSON],
                    br#"{"user_id":" u","coupon_name":"SEEDED"}"#,
                    false,
                ),
                request("GET", "/api/coupons/%FF", &[], b"", false),
                method("PUT", "/api/coupons/SEEDED"),
            ]),
            &[
                Error(400, "user_id_surrounding_whitespace"),
                Error(400, "invalid_path"),
                NotAllowed("GET, HEAD"),
            ],
        ),
        pipelined(
            "three pipelined: a 10 KiB body read apart, then two small ones",
            concat(&[
                request(
                    "POST",
                    "/api/coupons",
                    &[JSON],
                    json!({"name": "N".repeat(10 * 1024), "amount": 1})
                        .to_string()
                        .as_bytes(),
                    false,
                ),
                request("GET", "/nope", &[], b"", false),
                get("/healthz"),
            ]),
            &[
                Error(400, "name_too_long"),
                Error(404, "not_found"),
                Healthy,
            ],
        ),
        // --- requests tiny_http refuses before our code sees them ---
        // tiny_http answers a malformed request line or header itself with
        // an empty 400 (no JSON body) and closes: only the status is checked.
        case(
            "a request line without an HTTP version",
            b"GET /healthz\r\n\r\n".to_vec(),
            Bare(400),
        ),
        case(
            "a header line without a colon",
            b"GET /healthz HTTP/1.1\r\nHost t\r\nConnection: close\r\n\r\n".to_vec(),
            Bare(400),
        ),
        // An Expect other than 100-continue: tiny_http's own empty 417.
        case(
            "Expect: something tiny_http does not know",
            request(
                "POST",
                "/api/coupons",
                &[JSON, ("Expect", "202-accepted")],
                br#"{"name":"EXP","amount":1}"#,
                true,
            ),
            Bare(417),
        ),
        case(
            "an SQL-looking name sent unencoded, spaces and all",
            b"GET /api/coupons/'; DROP TABLE coupons; -- HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            Bare(400),
        ),
    ]
    .into_iter()
    .chain(content_type_cases())
    .collect()
}

/// A POST of `body`, sent as `content_type` (without the header for `None`).
fn post_as(path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = content_type
        .map(|value| ("Content-Type", value))
        .into_iter()
        .collect();
    request("POST", path, &headers, body, true)
}

/// A body is read as JSON when it comes with no type, a JSON type
/// (`application/json`, any `+json`) or a type `curl -d` and browser forms
/// send (`application/x-www-form-urlencoded`, `text/plain`), and gets the
/// answer its content calls for. Every other type is 415, before the body
/// is read.
fn content_type_cases() -> Vec<Case> {
    use Want::Error;
    const CREATE: &str = "/api/coupons";
    const CLAIM: &str = "/api/coupons/claim";
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    // Read, these ask for what exists already: nothing changes.
    let create_again = r#"{"name":"SEEDED","amount":1}"#;
    let claim_again = r#"{"user_id":"seed_user","coupon_name":"SEEDED"}"#;
    let exists = Error(409, "coupon_exists");
    let claimed = Error(409, "already_claimed");
    // Read, these would succeed: a 415 must come before the body is read.
    let create_new = r#"{"name":"CT","amount":1}"#;
    let claim_new = r#"{"user_id":"u","coupon_name":"SEEDED"}"#;
    let refused = Error(415, "unsupported_media_type");
    [
        (
            "create without a Content-Type",
            CREATE,
            None,
            create_again,
            exists,
        ),
        (
            "claim without a Content-Type",
            CLAIM,
            None,
            claim_again,
            claimed,
        ),
        (
            "create with an empty Content-Type",
            CREATE,
            Some(""),
            create_again,
            exists,
        ),
        (
            "create as text/plain",
            CREATE,
            Some("text/plain"),
            create_again,
            exists,
        ),
        (
            "claim as Text/Plain; charset=UTF-8",
            CLAIM,
            Some("Text/Plain; charset=UTF-8"),
            claim_again,
            claimed,
        ),
        (
            "claim as a form with a JSON body (curl -d)",
            CLAIM,
            FORM,
            claim_again,
            claimed,
        ),
        (
            "claim as a form with form-encoded fields (read as JSON)",
            CLAIM,
            FORM,
            "user_id=u&coupon_name=SEEDED",
            Error(400, "invalid_json"),
        ),
        (
            "claim as application/vnd.api+json; charset=utf-8",
            CLAIM,
            Some("application/vnd.api+json; charset=utf-8"),
            claim_again,
            claimed,
        ),
        (
            "claim as application/json-patch+json",
            CLAIM,
            Some("application/json-patch+json"),
            claim_again,
            claimed,
        ),
        (
            "create as APPLICATION/MERGE-PATCH+JSON, not an object",
            CREATE,
            Some("APPLICATION/MERGE-PATCH+JSON"),
            r#"[{"name":"CT","amount":1}]"#,
            Error(400, "body_not_object"),
        ),
        (
            "create as multipart/form-data",
            CREATE,
            Some("multipart/form-data; boundary=x"),
            create_new,
            refused,
        ),
        (
            "create as multipart/form-data without a boundary",
            CREATE,
            Some("multipart/form-data"),
            create_new,
            refused,
        ),
        (
            "claim as application/xml",
            CLAIM,
            Some("application/xml"),
            claim_new,
            refused,
        ),
        (
            "claim as text/html",
            CLAIM,
            Some("text/html; charset=utf-8"),
            claim_new,
            refused,
        ),
        (
            "claim as application/jsonx",
            CLAIM,
            Some("application/jsonx"),
            claim_new,
            refused,
        ),
    ]
    .into_iter()
    .map(|(what, path, content_type, body, want)| {
        case(what, post_as(path, content_type, body.as_bytes()), want)
    })
    .collect()
}

/// Checks one response against what was wanted; the problems found.
fn check(got: &Answer, want: Want) -> Vec<String> {
    let mut problems = Vec::new();
    let (status, code) = match want {
        Want::Bare(status) => {
            if got.status != status {
                problems.push(format!("status {} instead of {status}", got.status));
            }
            return problems;
        }
        Want::Healthy => {
            if got.status != 200 || got.text != r#"{"status":"ok"}"# {
                problems.push(format!("not a healthy /healthz answer: {got:?}"));
            }
            return problems;
        }
        Want::Error(status, code) => (status, code),
        Want::NotAllowed(allow) => {
            if got.header("Allow") != Some(allow) {
                problems.push(format!(
                    "Allow {:?} instead of {allow:?}",
                    got.header("Allow")
                ));
            }
            (405, "method_not_allowed")
        }
    };
    if got.status != status {
        problems.push(format!("status {} instead of {status}", got.status));
    }
    if got.header("Content-Type") != Some("application/json") {
        problems.push(format!(
            "Content-Type {:?} instead of application/json",
            got.header("Content-Type")
        ));
    }
    match serde_json::from_str::<Value>(&got.text) {
        Ok(body) => {
            let message_ok = body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
            let shape_ok = body.as_object().is_some_and(|o| o.len() == 1)
                && body["error"].as_object().is_some_and(|o| o.len() == 2)
                && body["error"]["code"].is_string()
                && message_ok;
            if !shape_ok {
                problems.push(format!("not the documented error shape: {body}"));
            }
            if body["error"]["code"] != code {
                problems.push(format!(
                    "code {} instead of {code:?} ({})",
                    body["error"]["code"], body["error"]["message"]
                ));
            }
        }
        Err(e) => problems.push(format!("a body that is not JSON ({e}): {:?}", got.text)),
    }
    problems
}

/// What must not change: coupon and claim counts, and the seeded stock.
fn state(app: &TestApp) -> (i64, i64, i64) {
    (
        app.db.count("SELECT count(*) FROM coupons"),
        app.db.count("SELECT count(*) FROM claims"),
        app.db.count(&format!(
            "SELECT remaining_amount::bigint FROM coupons WHERE name = '{SEEDED}'"
        )),
    )
}

fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 300 {
        let start: String = text.chars().take(300).collect();
        format!("{start}… ({} bytes)", bytes.len())
    } else {
        text.into_owned()
    }
}

/// Sends raw bytes, closes the sending side, and reads until the server
/// closes or `timeout` passes; returns everything received.
fn raw_half_closed(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(bytes).expect("sending");
    stream
        .shutdown(Shutdown::Write)
        .expect("closing the sending side");
    let mut out = Vec::new();
    // An error (a timeout or a reset) ends the exchange like a close.
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A server with the seeded coupon and its one claim.
fn seeded_app(adjust: impl FnOnce(&mut flash_coupons::config::Config)) -> TestApp {
    let app = TestApp::spawn_with(adjust);
    assert_eq!(app.create(SEEDED, SEEDED_AMOUNT).status, 201);
    assert_eq!(app.claim("seed_user", SEEDED).status, 200);
    assert_eq!(state(&app), (1, 1, SEEDED_AMOUNT - 1));
    app
}

/// Sends every case on a connection of its own and checks its answers, that
/// the database did not change and that the server still answers. Fails
/// with every failing case at once.
fn assert_cases(app: &TestApp, cases: &[Case]) {
    let before = state(app);
    let mut failures = Vec::new();
    for case in cases {
        let exchange = if case.half_close {
            raw_half_closed(app.addr(), &case.request, EXCHANGE_TIMEOUT)
        } else {
            raw(app.addr(), &case.request, EXCHANGE_TIMEOUT)
        };
        let mut problems = Vec::new();
        match answers(exchange.as_bytes()) {
            Ok(responses) => {
                if responses.len() != case.want.len() {
                    problems.push(format!(
                        "{} responses instead of {}",
                        responses.len(),
                        case.want.len()
                    ));
                }
                for (i, (got, want)) in responses.iter().zip(&case.want).enumerate() {
                    for p in check(got, *want) {
                        problems.push(format!("response {}: {p}", i + 1));
                    }
                }
            }
            Err(why) => problems.push(why),
        }
        let after = state(app);
        if after != before {
            problems.push(format!(
                "the database changed: (coupons, claims, seeded remaining) {before:?} -> {after:?}"
            ));
        }
        let health = app.get("/healthz");
        if health.status != 200 {
            problems.push(format!("/healthz answered {} afterwards", health.status));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n    sent {:?}\n    got  {:?}\n    - {}",
                case.what,
                shown(&case.request),
                exchange,
                problems.join("\n    - ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    app.db.assert_invariant();
}

#[test]
fn every_malformed_request_gets_its_documented_4xx_and_changes_nothing() {
    let _turn = serial::turn!();
    let app = seeded_app(|_| {});
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    assert_cases(&app, &cases);
}

/// How long the server of [`bodies_that_stop_short_of_their_length`] waits
/// on a silent client (HTTP_IDLE_TIMEOUT_SECS; 5 s by default).
const SHORT_IDLE: Duration = Duration::from_secs(1);

/// Bodies over 1 KiB (read by us, not with the head) that end before their
/// Content-Length, each sending a whole valid JSON object first: one whose
/// client then waits gets 408 once the socket's read timeout passes, one
/// whose client closes its sending side gets 400 at once. Neither part is
/// ever taken for the whole body.
///
/// (A body of up to 1 KiB that stops short never reaches our code:
/// tiny_http reads it with the head and closes the connection unanswered.)
fn bodies_that_stop_short_of_their_length() -> Vec<Case> {
    use Want::Error;
    let claim = r#"{"user_id":"u","coupon_name":"NOPE"}"#;
    let create = r#"{"name":"STALLED","amount":1}"#;
    vec![
        case(
            "claim over 1 KiB stopping short of its Content-Length, then waiting",
            short_of_length("/api/coupons/claim", claim, 500),
            Error(408, "request_timeout"),
        ),
        case(
            "create over 1 KiB stopping short of its Content-Length, then waiting",
            short_of_length("/api/coupons", create, 500),
            Error(408, "request_timeout"),
        ),
        case(
            "create with Expect: 100-continue stopping short, then waiting",
            {
                // Expect makes tiny_http leave even a small body to us.
                let mut out = request(
                    "POST",
                    "/api/coupons",
                    &[JSON, ("Expect", "100-continue")],
                    create.as_bytes(),
                    true,
                );
                out.truncate(out.len() - 5);
                out
            },
            Error(408, "request_timeout"),
        ),
        case(
            "chunked claim stopping inside a chunk, then waiting",
            {
                let mut out = chunked(
                    "/api/coupons/claim",
                    format!("{claim:<600}").as_bytes(),
                    600,
                );
                out.truncate(out.len() - 300);
                out
            },
            Error(408, "request_timeout"),
        ),
        half_closed(
            "claim over 1 KiB stopping short of its Content-Length, then half-closed",
            short_of_length("/api/coupons/claim", claim, 500),
            Error(400, "incomplete_body"),
        ),
        half_closed(
            "create over 1 KiB stopping short of its Content-Length, then half-closed",
            short_of_length("/api/coupons", create, 500),
            Error(400, "incomplete_body"),
        ),
        half_closed(
            "create over 1 KiB one byte short of its Content-Length, then half-closed",
            short_of_length("/api/coupons", create, 1),
            Error(400, "incomplete_body"),
        ),
    ]
}

#[test]
fn a_body_that_stops_short_of_its_length_gets_408_or_400_incomplete_body() {
    let _turn = serial::turn!();
    let app = seeded_app(|config| config.transport.idle_timeout = SHORT_IDLE);
    assert_cases(&app, &bodies_that_stop_short_of_their_length());
}

/// The one answer to `request`, sent on a connection of its own.
fn one_answer(app: &TestApp, request: &[u8]) -> Answer {
    let exchange = raw(app.addr(), request, EXCHANGE_TIMEOUT);
    let mut responses = answers(exchange.as_bytes()).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(responses.len(), 1, "{exchange:?}");
    responses.remove(0)
}

/// A trailer section after the last chunk (RFC 9112, 7.1.2: field lines and
/// then CRLF, valid HTTP/1.1) is read and ignored. chunked_transfer 1.5.0,
/// which tiny_http 0.12 decodes chunked bodies with, refused it (400
/// invalid_json); our own decoder (patches/chunked_transfer, patched in
/// through `[patch.crates-io]`) takes its place.
#[test]
fn a_chunked_body_with_a_trailer_section_is_read_like_one_without() {
    let _turn = serial::turn!();
    use Want::{Error, Healthy};
    let one = &["X-T: 1"][..];
    let several = &["X-T: 1", "X-Checksum: abc", "Server-Timing: db;dur=5"][..];
    let claim = br#"{"user_id":"u","coupon_name":"NOPE"}"#;

    // Claims on a coupon that does not exist: nothing changes.
    let app = seeded_app(|_| {});
    assert_cases(
        &app,
        &[
            case(
                "chunked claim of an unknown coupon without a trailer",
                chunked("/api/coupons/claim", claim, 7),
                Error(404, "coupon_not_found"),
            ),
            case(
                "chunked claim of an unknown coupon with a trailer",
                chunked_with_trailer("/api/coupons/claim", claim, 7, one, true),
                Error(404, "coupon_not_found"),
            ),
            case(
                "chunked claim of an unknown coupon with several trailer fields",
                chunked_with_trailer("/api/coupons/claim", claim, 7, several, true),
                Error(404, "coupon_not_found"),
            ),
            // The trailer section is read to its end, and no further.
            pipelined(
                "two pipelined: a chunked claim with a trailer, then /healthz",
                concat(&[
                    chunked_with_trailer("/api/coupons/claim", claim, 7, several, false),
                    get("/healthz"),
                ]),
                &[Error(404, "coupon_not_found"), Healthy],
            ),
        ],
    );

    // Creates: 201, and the coupon is there.
    for (name, fields) in [("PLAIN", &[][..]), ("TRAILED", one), ("TRAILERS", several)] {
        let body = json!({"name": name, "amount": 3}).to_string();
        let request = chunked_with_trailer("/api/coupons", body.as_bytes(), 5, fields, true);
        let created = one_answer(&app, &request);
        assert_eq!(created.status, 201, "{name} with {fields:?}: {created:?}");
        let coupon: Value = serde_json::from_str(&created.text).expect("a JSON body");
        assert_eq!(coupon["name"], name, "{created:?}");
        assert_eq!(app.get(&format!("/api/coupons/{name}")).status, 200);
    }
    app.db.assert_invariant();
}

/// A chunked body over the limit is read only so far; the rest of it, up to
/// a megabyte in all, is read and thrown away, never taken for the next
/// request on the connection (a claim hidden there was run, answered 200,
/// on direct connections). A body going on beyond that is left unread and
/// its connection given up after the 413.
#[test]
fn the_rest_of_a_chunked_body_over_the_limit_is_never_read_as_a_request() {
    let _turn = serial::turn!();
    use Want::{Error, Healthy};
    let app = seeded_app(|_| {});
    let hidden = claim(r#"{"user_id":"hidden","coupon_name":"SEEDED"}"#);
    // What the server reads of a body (16 KiB and one byte), and beyond
    // what it drains (the transport's DRAIN_LIMIT, a MiB).
    let hiding = |before: usize| {
        let mut body = vec![b'x'; before];
        body.extend_from_slice(&hidden);
        // One chunk: the hidden request ends where the chunk does.
        chunked_with_trailer("/api/coupons/claim", &body, body.len(), &[], false)
    };
    assert_cases(
        &app,
        &[
            pipelined(
                "a chunked claim over the limit with a claim in its rest, then /healthz",
                concat(&[hiding(16 * 1024 + 1), get("/healthz")]),
                &[Error(413, "payload_too_large"), Healthy],
            ),
            pipelined(
                "the same, with the claim past the first MiB",
                concat(&[hiding(1024 * 1024 + 1), get("/healthz")]),
                &[Error(413, "payload_too_large")],
            ),
        ],
    );
    assert_eq!(
        app.get("/api/coupons/SEEDED").body["claimed_by"],
        json!(["seed_user"])
    );
}

/// A body whose end the head does not say in one valid way (RFC 9112,
/// section 6) is refused before anything is read: 400 `bad_request` for a
/// `Content-Length` that is not one whole number or comes with
/// `Transfer-Encoding`, 501 `not_implemented` for a transfer coding other
/// than chunked, 413 for a length too large to read; and nothing sent after
/// it on the connection is run. tiny_http took a length it could not parse
/// for no body, so a claim sent as that body was run as the next request.
#[test]
fn a_body_whose_framing_cannot_be_trusted_is_refused_and_nothing_sent_after_it_runs() {
    let _turn = serial::turn!();
    use Want::Error;
    let app = seeded_app(|_| {});
    let hidden = claim(r#"{"user_id":"hidden","coupon_name":"SEEDED"}"#);
    let framed = |fields: &str| {
        let head = format!(
            "POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{fields}\r\n"
        );
        concat(&[head.into_bytes(), hidden.clone()])
    };
    let length = hidden.len();
    // Each: what is wrong, the framing fields, the answer.
    let cases: Vec<Case> = [
        (
            "a Content-Length that is not a number",
            "Content-Length: abc\r\n".to_owned(),
            Error(400, "bad_request"),
        ),
        (
            "a negative Content-Length",
            "Content-Length: -1\r\n".to_owned(),
            Error(400, "bad_request"),
        ),
        (
            "a Content-Length that is a list",
            "Content-Length: 5, 5\r\n".to_owned(),
            Error(400, "bad_request"),
        ),
        (
            "two Content-Lengths",
            format!("Content-Length: 0\r\nContent-Length: {length}\r\n"),
            Error(400, "bad_request"),
        ),
        (
            "Content-Length with Transfer-Encoding: chunked",
            format!("Content-Length: {length}\r\nTransfer-Encoding: chunked\r\n"),
            Error(400, "bad_request"),
        ),
        (
            "Transfer-Encoding: identity",
            format!("Transfer-Encoding: identity\r\nContent-Length: {length}\r\n"),
            Error(501, "not_implemented"),
        ),
        (
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip\r\n".to_owned(),
            Error(501, "not_implemented"),
        ),
        (
            "a Content-Length of 23 digits",
            "Content-Length: 99999999999999999999999\r\n".to_owned(),
            Error(413, "payload_too_large"),
        ),
    ]
    .into_iter()
    .map(|(what, fields, want)| Case {
        what,
        request: framed(&fields),
        want: vec![want],
        half_close: false,
    })
    .collect();
    assert_cases(&app, &cases);
    assert_eq!(
        app.get("/api/coupons/SEEDED").body["claimed_by"],
        json!(["seed_user"])
    );
}

/// tiny_http hands a request with `Connection: upgrade` (what `curl --http2`
/// sends to ask for HTTP/2) the socket itself as its body. Its body is read
/// only as far as its framing says, so it is answered at once, as HTTP/1.1:
/// before, the socket was read until the client closed it or went quiet
/// for the idle timeout (here 30 s), by the thread that hands every request
/// on, so every other request waited too.
#[test]
fn a_request_asking_to_upgrade_is_answered_at_once_as_http_1_1() {
    let _turn = serial::turn!();
    use Want::{Error, Healthy};
    let app = seeded_app(|c| c.transport.idle_timeout = Duration::from_secs(30));
    let upgrade = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                   HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    let get = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{upgrade}\r\n");
    let body = r#"{"user_id":"u","coupon_name":"NOPE"}"#;
    let post = format!(
        "POST /api/coupons/claim HTTP/1.1\r\nHost: t\r\n{upgrade}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let chunked_post = chunked_with_trailer("/api/coupons/claim", body.as_bytes(), 7, &[], false);
    let chunked_post = String::from_utf8(chunked_post).unwrap().replacen(
        "Host: t\r\n",
        &format!("Host: t\r\n{upgrade}"),
        1,
    );
    assert_cases(
        &app,
        &[
            case("GET asking to upgrade to h2c", get.into_bytes(), Healthy),
            case(
                "a claim asking to upgrade, with a body",
                post.into_bytes(),
                Error(404, "coupon_not_found"),
            ),
            case(
                "a chunked claim asking to upgrade",
                chunked_post.into_bytes(),
                Error(404, "coupon_not_found"),
            ),
        ],
    );
}

/// What `curl -d` sends (`application/x-www-form-urlencoded`), no type at
/// all, `text/plain` and any JSON type: the body is read as JSON and does
/// what it says, a create 201 and a claim 200, like `application/json`.
#[test]
fn a_json_body_sent_with_any_accepted_content_type_is_served() {
    let _turn = serial::turn!();
    let app = seeded_app(|_| {});
    let types: [Option<&str>; 7] = [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("TEXT/PLAIN;charset=UTF-8"),
        Some("application/vnd.api+json; charset=utf-8"),
        Some("application/merge-patch+json"),
    ];
    for (i, content_type) in types.into_iter().enumerate() {
        // The answer's body, once its status is checked.
        let send = |path: &str, body: Value, status: u16| -> Value {
            let request = post_as(path, content_type, body.to_string().as_bytes());
            let answer = one_answer(&app, &request);
            assert_eq!(
                answer.status, status,
                "{path} as {content_type:?}: {answer:?}"
            );
            serde_json::from_str(&answer.text).expect("a JSON body")
        };
        let name = format!("TYPED_{i}");
        assert_eq!(
            send("/api/coupons", json!({"name": name, "amount": 2}), 201),
            json!({"name": name, "amount": 2, "remaining_amount": 2, "claimed_by": []}),
            "create as {content_type:?}"
        );
        assert_eq!(
            send(
                "/api/coupons/claim",
                json!({"user_id": "typed_user", "coupon_name": name}),
                200
            ),
            json!({"user_id": "typed_user", "coupon_name": name, "remaining_amount": 1}),
            "claim as {content_type:?}"
        );
        let held = app.db.count(&format!(
            "SELECT count(*) FROM claims WHERE coupon_name = '{name}' AND user_id = 'typed_user'"
        ));
        assert_eq!(held, 1, "claim as {content_type:?}");
    }
    app.db.assert_invariant();
}

#[test]
fn sql_injection_strings_in_names_and_user_ids_are_stored_and_returned_literally() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let names = [
        "'; DROP TABLE coupons; --",
        "Robert'); DROP TABLE claims;--",
        "\" OR 1=1 --",
        "x' UNION SELECT name FROM coupons --",
        "1; SELECT pg_sleep(10)",
        "$1 %s ? :name",
    ];
    let users = [
        "' OR '1'='1",
        "admin'--",
        "u\"; DELETE FROM claims; --",
        "'); UPDATE coupons SET remaining_amount = 999; --",
    ];
    for name in names {
        let created = app.create(name, 10);
        assert_eq!(created.status, 201, "{name:?}: {created:?}");
        assert_eq!(created.body["name"], name);
        let location = created
            .header("Location")
            .expect("a Location header")
            .to_owned();
        for user in users {
            let claimed = app.claim(user, name);
            assert_eq!(claimed.status, 200, "{user:?} on {name:?}: {claimed:?}");
            assert_eq!(
                claimed.body,
                json!({"user_id": user, "coupon_name": name, "remaining_amount": claimed.body["remaining_amount"]})
            );
        }
        let expected = json!({
            "name": name,
            "amount": 10,
            "remaining_amount": 10 - users.len(),
            "claimed_by": users,
        });
        let read = app.get(&format!("/api/coupons/{}", percent_encode_segment(name)));
        assert_eq!(read.status, 200, "{name:?}: {read:?}");
        assert_eq!(read.body, expected);
        let by_location = app.get(&location);
        assert_eq!(by_location.status, 200, "{location}: {by_location:?}");
        assert_eq!(by_location.body, expected);
    }

    // Straight from the database: every value exactly as sent.
    let mut client = app.db.client();
    let mut stored: Vec<String> = client
        .query("SELECT name FROM coupons", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    stored.sort();
    let mut sent: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    sent.sort();
    assert_eq!(stored, sent);
    for name in names {
        let row = client
            .query_one(
                "SELECT amount, remaining_amount FROM coupons WHERE name = $1",
                &[&name],
            )
            .unwrap();
        let (amount, remaining): (i32, i32) = (row.get(0), row.get(1));
        assert_eq!(
            (amount, remaining),
            (10, 10 - users.len() as i32),
            "{name:?}"
        );
        let holders: Vec<String> = client
            .query(
                "SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id",
                &[&name],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(holders, users, "{name:?}");
    }
    assert_eq!(
        app.db.count("SELECT count(*) FROM claims"),
        (names.len() * users.len()) as i64
    );
    app.db.assert_invariant();
    assert_eq!(app.get("/healthz").status, 200);
}

/// A tiny_http 0.12 bug, kept as a reproduction: it answers a request line
/// of HTTP/2.0 or HTTP/3.0 with a 505 written through the *next* response
/// slot of the connection, which waits for the slot of the request it is
/// refusing, still held on the same thread: the connection thread
/// deadlocks. The client gets nothing, and the thread and both of its
/// socket descriptors stay taken after the client leaves (CLOSE-WAIT), for
/// the life of the process.
#[test]
#[ignore = "tiny_http 0.12 bug, not fixable from outside it: an HTTP/2.0 request line hangs its connection thread (docs/tiny_http.md, defect 18)"]
fn a_request_line_of_http_2_gets_an_answer_and_the_server_lets_go_of_it() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let exchange = raw(
        app.addr(),
        b"GET /healthz HTTP/2.0\r\nHost: t\r\nConnection: close\r\n\r\n",
        EXCHANGE_TIMEOUT,
    );
    let statuses = support::answer::statuses(&exchange);
    assert_eq!(statuses.len(), 1, "no single answer: {exchange:?}");
    assert!((400..600).contains(&statuses[0]), "{exchange:?}");
}

/// Was a server bug, kept as a regression test: a coupon-listing cursor is `n` and
/// the hex of a name, decoded without the rules for names, so `n00` (a NUL)
/// reaches PostgreSQL, which refuses it (SQLSTATE 22021): 500
/// internal_error instead of 400 invalid_cursor.
#[test]
fn a_listing_cursor_holding_a_nul_gets_400_invalid_cursor() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    app.get("/api/coupons?after=n00")
        .assert_error(400, "invalid_cursor");
}

/// Was a server bug, kept as a regression test: a timestamp that is in range as
/// written but past year 9999 in UTC (9999-12-31T23:59:59-23:59) panics in
/// postgres-types while being stored ("local datetime out of valid range"):
/// the client gets tiny_http's empty 500, not JSON.
#[test]
fn a_timestamp_past_year_9999_in_utc_gets_a_400() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let answer = app.post_json(
        "/api/coupons",
        r#"{"name":"LATE","amount":1,"starts_at":"9999-12-31T23:59:59-23:59"}"#,
    );
    answer.assert_error(400, "starts_at_not_rfc3339");
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
}

/// Was a server bug, kept as a regression test: a timestamp before year 0 in UTC
/// (0000-01-01T00:00:00+23:59) is stored, and then shown as "" in the 201
/// and in every GET, because formatting it fails and falls back to "".
#[test]
fn a_timestamp_before_year_0_in_utc_is_refused_not_shown_blank() {
    let _turn = serial::turn!();
    let app = TestApp::spawn();
    let answer = app.post_json(
        "/api/coupons",
        r#"{"name":"EARLY","amount":1,"starts_at":"0000-01-01T00:00:00+23:59"}"#,
    );
    answer.assert_error(400, "starts_at_not_rfc3339");
    assert_eq!(app.db.count("SELECT count(*) FROM coupons"), 0);
}
