//! The one place where failures become HTTP answers.

use std::borrow::Cow;

use serde_json::json;

use crate::domain::{AmountError, TextError};
use crate::store::StoreError;

use crate::transport::{FramingError, Response};

/// What is wrong with one field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldProblem {
    Missing,
    NotAString,
    NotAWholeNumber,
    Text(TextError),
    Amount(AmountError),
}

impl FieldProblem {
    fn reason(self) -> &'static str {
        match self {
            FieldProblem::Missing => "missing",
            FieldProblem::NotAString => "not_a_string",
            FieldProblem::NotAWholeNumber => "not_a_whole_number",
            FieldProblem::Text(e) => e.reason(),
            FieldProblem::Amount(e) => e.reason(),
        }
    }

    fn explain(self) -> String {
        match self {
            FieldProblem::Missing => "is required".to_owned(),
            FieldProblem::NotAString => "must be a JSON string".to_owned(),
            FieldProblem::NotAWholeNumber => "must be a whole JSON number".to_owned(),
            FieldProblem::Text(e) => e.to_string(),
            FieldProblem::Amount(e) => e.to_string(),
        }
    }
}

/// Every answer other than success.
#[derive(Debug)]
pub enum ApiError {
    RouteNotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    UnsupportedMediaType,
    PayloadTooLarge {
        limit: usize,
    },
    /// Where the body ends cannot be told from the head (RFC 9112,
    /// section 6): the text says why.
    BadFraming(&'static str),
    /// A transfer coding other than chunked alone.
    UnsupportedTransferCoding,
    InvalidJson(String),
    /// The client stopped sending its body before the end it promised
    /// (Content-Length or chunks) for longer than the socket's read timeout
    /// (HTTP_IDLE_TIMEOUT_SECS).
    RequestTimeout,
    /// The client closed its sending side after `received` of the
    /// `declared` Content-Length bytes.
    IncompleteBody {
        received: usize,
        declared: usize,
    },
    BodyNotObject,
    /// A member of the body object appears more than once: readers of the
    /// same body may disagree on which one counts, so none is chosen.
    DuplicateField(String),
    UnknownField(String),
    /// The Idempotency-Key header is not 1 to 255 visible ASCII characters,
    /// or comes more than once.
    InvalidIdempotencyKey(String),
    /// The Idempotency-Key was recorded for another request.
    IdempotencyKeyMismatch,
    Field {
        field: &'static str,
        problem: FieldProblem,
    },
    InvalidPath,
    CouponNotFound,
    /// The coupon exists; the user holds none of it (a release).
    ClaimNotFound,
    CouponExists,
    AlreadyClaimed,
    OutOfStock,
    ShuttingDown,
    /// Every place for this kind of work is taken (a lane's queue, the
    /// memory for large answers, or the threads a body is read on); waiting
    /// a moment helps.
    Overloaded,
    NotStarted,
    Expired,
    /// A listing's `limit` is not a whole number from 1 to `max`.
    InvalidLimit {
        max: i64,
    },
    InvalidCursor,
    WindowOrder,
    InvalidTimestamp {
        field: &'static str,
    },
    Unauthorized,
    Forbidden,
    /// An operation that always needs the admin token, on a server that has
    /// none (ADMIN_TOKEN unset): refused, whatever the request carries.
    NoAdminToken,
    Store(StoreError),
}

impl From<FramingError> for ApiError {
    fn from(problem: FramingError) -> ApiError {
        match problem {
            FramingError::Invalid(why) => ApiError::BadFraming(why),
            FramingError::UnsupportedCoding => ApiError::UnsupportedTransferCoding,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::Store(err)
    }
}

/// What an [`ApiError`] answers: its status, its `error.code` and its
/// `error.message`.
struct ErrorAnswer {
    status: u16,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
}

fn answer(
    status: u16,
    code: impl Into<Cow<'static, str>>,
    message: impl Into<Cow<'static, str>>,
) -> ErrorAnswer {
    ErrorAnswer {
        status,
        code: code.into(),
        message: message.into(),
    }
}

impl ApiError {
    pub fn field(field: &'static str, problem: FieldProblem) -> ApiError {
        ApiError::Field { field, problem }
    }

    /// The one table of answers: a variant's status, code and message,
    /// together. Messages are sentences for a person, never the database's
    /// own words: those stay in the log.
    fn answer(&self) -> ErrorAnswer {
        match self {
            ApiError::RouteNotFound => answer(404, "not_found", "There is nothing at this path."),
            ApiError::MethodNotAllowed { allow } => answer(
                405,
                "method_not_allowed",
                format!("This path only answers {allow}."),
            ),
            ApiError::UnsupportedMediaType => answer(
                415,
                "unsupported_media_type",
                "The request body must be JSON, sent as application/json (or a +json type, text/plain or application/x-www-form-urlencoded).",
            ),
            ApiError::PayloadTooLarge { limit } => answer(
                413,
                "payload_too_large",
                format!("The request body must be at most {limit} bytes."),
            ),
            ApiError::BadFraming(why) => answer(
                400,
                "bad_request",
                format!("The request's body framing is not valid HTTP/1.1: {why}."),
            ),
            ApiError::UnsupportedTransferCoding => answer(
                501,
                "not_implemented",
                "The request uses a transfer coding this service does not support: send the body with Content-Length, or chunked.",
            ),
            ApiError::InvalidJson(detail) => answer(
                400,
                "invalid_json",
                format!("The request body is not valid JSON: {detail}."),
            ),
            ApiError::RequestTimeout => answer(
                408,
                "request_timeout",
                "The request body stopped arriving before its end; please send it again, whole.",
            ),
            ApiError::IncompleteBody { received, declared } => answer(
                400,
                "incomplete_body",
                format!(
                    "The request body ended after {received} of the {declared} bytes its Content-Length declares."
                ),
            ),
            ApiError::BodyNotObject => answer(
                400,
                "body_not_object",
                "The request body must be a JSON object.",
            ),
            ApiError::DuplicateField(name) => answer(
                400,
                "duplicate_field",
                format!("The field {name:?} appears more than once in the body; send it once."),
            ),
            ApiError::InvalidIdempotencyKey(why) => answer(
                400,
                "invalid_idempotency_key",
                format!("The Idempotency-Key header {why}."),
            ),
            ApiError::IdempotencyKeyMismatch => answer(
                422,
                "idempotency_key_mismatch",
                "This Idempotency-Key was used for another request; use a new key for a new request.",
            ),
            ApiError::UnknownField(name) => answer(
                400,
                "unknown_field",
                format!("The field {name:?} is not accepted here."),
            ),
            ApiError::Field { field, problem } => answer(
                400,
                format!("{field}_{}", problem.reason()),
                format!("{field} {}.", problem.explain()),
            ),
            ApiError::InvalidPath => answer(
                400,
                "invalid_path",
                "A name in the path is not valid percent-encoded UTF-8.",
            ),
            ApiError::CouponNotFound => answer(404, "coupon_not_found", "No coupon has that name."),
            ApiError::ClaimNotFound => answer(
                404,
                "claim_not_found",
                "This user holds no unit of this coupon.",
            ),
            ApiError::CouponExists => answer(
                409,
                "coupon_exists",
                "A coupon with that name already exists.",
            ),
            ApiError::AlreadyClaimed => answer(
                409,
                "already_claimed",
                "This user has already claimed this coupon.",
            ),
            ApiError::OutOfStock => answer(400, "out_of_stock", "This coupon has no units left."),
            ApiError::ShuttingDown => answer(
                503,
                "shutting_down",
                "The server is shutting down; please try again.",
            ),
            ApiError::Overloaded => answer(
                503,
                "overloaded",
                "The server is at its limit for this kind of request; please try again.",
            ),
            ApiError::NotStarted => answer(
                403,
                "not_started",
                "The sale of this coupon has not started yet.",
            ),
            ApiError::Expired => answer(410, "expired", "The sale of this coupon has ended."),
            ApiError::InvalidLimit { max } => answer(
                400,
                "invalid_limit",
                format!("limit must be a whole number from 1 to {max}."),
            ),
            ApiError::InvalidCursor => answer(
                400,
                "invalid_cursor",
                "after must be a cursor from a previous page of this listing.",
            ),
            ApiError::WindowOrder => answer(
                400,
                "expires_at_not_after_starts_at",
                "expires_at must be later than starts_at.",
            ),
            ApiError::InvalidTimestamp { field } => answer(
                400,
                format!("{field}_not_rfc3339"),
                format!("{field} must be an RFC 3339 timestamp such as 2026-11-25T12:00:00Z."),
            ),
            ApiError::Unauthorized => answer(
                401,
                "unauthorized",
                "This request needs an Authorization: Bearer token.",
            ),
            ApiError::Forbidden => answer(403, "forbidden", "That token is not the admin token."),
            ApiError::NoAdminToken => answer(
                403,
                "forbidden",
                "This server has no admin token (ADMIN_TOKEN), so it does this for nobody.",
            ),
            ApiError::Store(StoreError::Busy { .. }) => answer(
                503,
                "busy",
                "The coupon is too busy right now; please try again.",
            ),
            ApiError::Store(StoreError::Unavailable(_)) => answer(
                503,
                "database_unavailable",
                "The database is unavailable right now; please try again.",
            ),
            ApiError::Store(StoreError::Internal(_)) => {
                answer(500, "internal_error", "Something went wrong on our side.")
            }
        }
    }

    pub fn status(&self) -> u16 {
        self.answer().status
    }

    pub fn code(&self) -> String {
        self.answer().code.into_owned()
    }

    pub fn message(&self) -> String {
        self.answer().message.into_owned()
    }

    pub fn into_response(self) -> Response {
        let ErrorAnswer {
            status,
            code,
            message,
        } = self.answer();
        let body = json!({ "error": { "code": code, "message": message } });
        let mut response = Response::json(status, &body);
        if let ApiError::MethodNotAllowed { allow } = self {
            response = response.with_header("Allow", allow);
        }
        if let ApiError::Unauthorized = self {
            response = response.with_header("WWW-Authenticate", "Bearer");
        }
        if status == 503 {
            response = response.with_header("Retry-After", "1");
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response, name: &str) -> Option<String> {
        response.header(name).map(str::to_owned)
    }

    #[test]
    fn every_error_answers_its_status_code_and_a_sentence_as_json() {
        let response = ApiError::AlreadyClaimed.into_response();
        assert_eq!(response.status, 409);
        assert_eq!(
            header(&response, "Content-Type").as_deref(),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"]["code"], "already_claimed");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.ends_with('.'))
        );
    }

    #[test]
    fn some_errors_carry_the_header_that_says_what_to_do() {
        let not_allowed = ApiError::MethodNotAllowed { allow: "GET, HEAD" }.into_response();
        assert_eq!(header(&not_allowed, "Allow").as_deref(), Some("GET, HEAD"));
        let unauthorized = ApiError::Unauthorized.into_response();
        assert_eq!(
            header(&unauthorized, "WWW-Authenticate").as_deref(),
            Some("Bearer")
        );
        for unavailable in [
            ApiError::Overloaded,
            ApiError::ShuttingDown,
            ApiError::Store(StoreError::Busy { attempts: 3 }),
        ] {
            let response = unavailable.into_response();
            assert_eq!(response.status, 503);
            assert_eq!(header(&response, "Retry-After").as_deref(), Some("1"));
        }
    }

    #[test]
    fn a_field_error_names_the_field_and_what_is_wrong_with_it() {
        let err = ApiError::field("amount", FieldProblem::NotAWholeNumber);
        assert_eq!(
            (err.status(), err.code()),
            (400, "amount_not_a_whole_number".into())
        );
        assert_eq!(err.message(), "amount must be a whole JSON number.");
    }

    #[test]
    fn the_database_s_own_words_never_reach_the_client() {
        let err = ApiError::Store(StoreError::Internal(
            "ERROR: relation \"coupons\" does not exist".into(),
        ));
        let response = err.into_response();
        assert_eq!(response.status, 500);
        let body = String::from_utf8(response.body).unwrap();
        assert!(!body.contains("relation"), "{body}");
    }
}
