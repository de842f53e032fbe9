//! The one place where failures become HTTP answers.

use serde_json::json;

use crate::domain::{AmountError, TextError};
use crate::store::StoreError;

use super::response::{Reply, json};

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
    UnknownField(String),
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
    /// Every place for this kind of work is taken (a lane's queue, or the
    /// memory for large answers); waiting a moment helps.
    Overloaded,
    NotStarted,
    Expired,
    InvalidLimit,
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

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::Store(err)
    }
}

impl ApiError {
    pub fn field(field: &'static str, problem: FieldProblem) -> ApiError {
        ApiError::Field { field, problem }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::RouteNotFound | ApiError::CouponNotFound | ApiError::ClaimNotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::NotStarted => 403,
            ApiError::Expired => 410,
            ApiError::InvalidLimit
            | ApiError::InvalidCursor
            | ApiError::WindowOrder
            | ApiError::InvalidTimestamp { .. } => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden | ApiError::NoAdminToken => 403,
            ApiError::UnsupportedMediaType => 415,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::RequestTimeout => 408,
            ApiError::InvalidJson(_)
            | ApiError::IncompleteBody { .. }
            | ApiError::BodyNotObject
            | ApiError::UnknownField(_)
            | ApiError::Field { .. }
            | ApiError::InvalidPath
            | ApiError::OutOfStock => 400,
            ApiError::CouponExists | ApiError::AlreadyClaimed => 409,
            ApiError::ShuttingDown
            | ApiError::Overloaded
            | ApiError::Store(StoreError::Busy { .. } | StoreError::Unavailable(_)) => 503,
            ApiError::Store(StoreError::Internal(_)) => 500,
        }
    }

    pub fn code(&self) -> String {
        let code = match self {
            ApiError::RouteNotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::IncompleteBody { .. } => "incomplete_body",
            ApiError::BodyNotObject => "body_not_object",
            ApiError::UnknownField(_) => "unknown_field",
            ApiError::Field { field, problem } => return format!("{field}_{}", problem.reason()),
            ApiError::InvalidPath => "invalid_path",
            ApiError::CouponNotFound => "coupon_not_found",
            ApiError::ClaimNotFound => "claim_not_found",
            ApiError::CouponExists => "coupon_exists",
            ApiError::AlreadyClaimed => "already_claimed",
            ApiError::OutOfStock => "out_of_stock",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Overloaded => "overloaded",
            ApiError::NotStarted => "not_started",
            ApiError::Expired => "expired",
            ApiError::InvalidLimit => "invalid_limit",
            ApiError::InvalidCursor => "invalid_cursor",
            ApiError::WindowOrder => "expires_at_not_after_starts_at",
            ApiError::InvalidTimestamp { field } => return format!("{field}_not_rfc3339"),
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden | ApiError::NoAdminToken => "forbidden",
            ApiError::Store(StoreError::Busy { .. }) => "busy",
            ApiError::Store(StoreError::Unavailable(_)) => "database_unavailable",
            ApiError::Store(StoreError::Internal(_)) => "internal_error",
        };
        code.to_owned()
    }

    /// A sentence for a person. Never the database's own words: those stay
    /// in the log.
    pub fn message(&self) -> String {
        match self {
            ApiError::RouteNotFound => "There is nothing at this path.".to_owned(),
            ApiError::NotStarted => "The sale of this coupon has not started yet.".to_owned(),
            ApiError::Expired => "The sale of this coupon has ended.".to_owned(),
            ApiError::InvalidLimit => format!(
                "limit must be a whole number from 1 to {}.",
                super::query::MAX_LIMIT
            ),
            ApiError::InvalidCursor => {
                "after must be a cursor from a previous page of this listing.".to_owned()
            }
            ApiError::WindowOrder => "expires_at must be later than starts_at.".to_owned(),
            ApiError::InvalidTimestamp { field } => {
                format!("{field} must be an RFC 3339 timestamp such as 2026-11-25T12:00:00Z.")
            }
            ApiError::Unauthorized => {
                "This request needs an Authorization: Bearer token.".to_owned()
            }
            ApiError::Forbidden => "That token is not the admin token.".to_owned(),
            ApiError::NoAdminToken => {
                "This server has no admin token (ADMIN_TOKEN), so it does this for nobody."
                    .to_owned()
            }
            ApiError::MethodNotAllowed { allow } => {
                format!("This path only answers {allow}.")
            }
            ApiError::UnsupportedMediaType => {
                "The request body must be sent with Content-Type: application/json.".to_owned()
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("The request body must be at most {limit} bytes.")
            }
            ApiError::InvalidJson(detail) => {
                format!("The request body is not valid JSON: {detail}.")
            }
            ApiError::RequestTimeout => {
                "The request body stopped arriving before its end; please send it again, whole."
                    .to_owned()
            }
            ApiError::IncompleteBody { received, declared } => format!(
                "The request body ended after {received} of the {declared} bytes its Content-Length declares."
            ),
            ApiError::BodyNotObject => "The request body must be a JSON object.".to_owned(),
            ApiError::UnknownField(name) => {
                format!("The field {name:?} is not accepted here.")
            }
            ApiError::Field { field, problem } => format!("{field} {}.", problem.explain()),
            ApiError::InvalidPath => {
                "A name in the path is not valid percent-encoded UTF-8.".to_owned()
            }
            ApiError::CouponNotFound => "No coupon has that name.".to_owned(),
            ApiError::ClaimNotFound => "This user holds no unit of this coupon.".to_owned(),
            ApiError::CouponExists => "A coupon with that name already exists.".to_owned(),
            ApiError::AlreadyClaimed => "This user has already claimed this coupon.".to_owned(),
            ApiError::OutOfStock => "This coupon has no units left.".to_owned(),
            ApiError::ShuttingDown => "The server is shutting down; please try again.".to_owned(),
            ApiError::Overloaded => {
                "The server is at its limit for this kind of request; please try again.".to_owned()
            }
            ApiError::Store(StoreError::Busy { .. }) => {
                "The coupon is too busy right now; please try again.".to_owned()
            }
            ApiError::Store(StoreError::Unavailable(_)) => {
                "The database is unavailable right now; please try again.".to_owned()
            }
            ApiError::Store(StoreError::Internal(_)) => {
                "Something went wrong on our side.".to_owned()
            }
        }
    }

    pub fn into_reply(self) -> Reply {
        let body = json!({ "error": { "code": self.code(), "message": self.message() } });
        let mut reply = json(self.status(), &body);
        if let ApiError::MethodNotAllowed { allow } = self {
            reply = reply.with_header("Allow", allow);
        }
        if let ApiError::Unauthorized = self {
            reply = reply.with_header("WWW-Authenticate", "Bearer");
        }
        if self.status() == 503 {
            reply = reply.with_header("Retry-After", "1");
        }
        reply
    }
}
