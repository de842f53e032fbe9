//! The admin token that guards coupon creation (when set) and releases
//! (always).

use constant_time_eq::constant_time_eq;
use tiny_http::Request;

use crate::context::Context;

use super::error::ApiError;
use super::intake::header;

/// With ADMIN_TOKEN set: no credentials is 401, a wrong token is 403. The
/// comparison takes the same time wherever the first difference is. Without
/// it, anyone may.
pub fn require_admin(ctx: &Context, request: &Request) -> Result<(), ApiError> {
    match &ctx.admin_token {
        None => Ok(()),
        Some(expected) => check(expected, request),
    }
}

/// The same, for what must never be open to anyone (giving units back):
/// without ADMIN_TOKEN every such request is 403.
pub fn require_admin_token(ctx: &Context, request: &Request) -> Result<(), ApiError> {
    match &ctx.admin_token {
        None => Err(ApiError::NoAdminToken),
        Some(expected) => check(expected, request),
    }
}

fn check(expected: &str, request: &Request) -> Result<(), ApiError> {
    let given = header(request, "Authorization").ok_or(ApiError::Unauthorized)?;
    let (scheme, token) = given.trim().split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(ApiError::Unauthorized);
    }
    if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}
