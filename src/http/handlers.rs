use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::Serialize;
use serde_json::json;

use crate::context::Context;
use crate::domain::{Amount, ClaimOutcome, Coupon, CouponName, UserId};
use crate::store::StoreError;

use super::body::{Fields, json_object};
use super::error::{ApiError, FieldProblem};
use super::intake::Incoming;
use super::response::{Reply, json};

#[derive(Serialize)]
struct CouponBody<'a> {
    name: &'a str,
    amount: i32,
    remaining_amount: i32,
    claimed_by: &'a [String],
}

impl<'a> From<&'a Coupon> for CouponBody<'a> {
    fn from(c: &'a Coupon) -> CouponBody<'a> {
        CouponBody {
            name: &c.name,
            amount: c.amount,
            remaining_amount: c.remaining_amount,
            claimed_by: &c.claimed_by,
        }
    }
}

/// Characters escaped in the Location header's path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

pub fn create_coupon(ctx: &Context, incoming: &Incoming) -> Result<Reply, ApiError> {
    let object = json_object(&incoming.request, &incoming.body)?;
    let fields = Fields::new(object, &["name", "amount"])?;
    let name = CouponName::parse(fields.text("name")?)
        .map_err(|e| ApiError::field("name", FieldProblem::Text(e)))?;
    let amount = Amount::parse(fields.whole_number("amount")?)
        .map_err(|e| ApiError::field("amount", FieldProblem::Amount(e)))?;
    let coupon = ctx
        .store
        .create_coupon(&name, amount)?
        .ok_or(ApiError::CouponExists)?;
    let location = format!(
        "/api/coupons/{}",
        utf8_percent_encode(name.as_str(), SEGMENT)
    );
    Ok(json(201, &CouponBody::from(&coupon)).with_header("Location", location))
}

/// The claim a request asks for, or why it cannot be one.
pub fn parse_claim(incoming: &Incoming) -> Result<(CouponName, UserId), ApiError> {
    let object = json_object(&incoming.request, &incoming.body)?;
    let fields = Fields::new(object, &["user_id", "coupon_name"])?;
    let user = UserId::parse(fields.text("user_id")?)
        .map_err(|e| ApiError::field("user_id", FieldProblem::Text(e)))?;
    let coupon = CouponName::parse(fields.text("coupon_name")?)
        .map_err(|e| ApiError::field("coupon_name", FieldProblem::Text(e)))?;
    Ok((coupon, user))
}

pub fn claim_reply(
    coupon: &CouponName,
    user: &UserId,
    outcome: Result<ClaimOutcome, StoreError>,
) -> Result<Reply, ApiError> {
    match outcome? {
        ClaimOutcome::Claimed { remaining_amount } => Ok(json(
            200,
            &json!({
                "user_id": user.as_str(),
                "coupon_name": coupon.as_str(),
                "remaining_amount": remaining_amount,
            }),
        )),
        ClaimOutcome::CouponNotFound => Err(ApiError::CouponNotFound),
        ClaimOutcome::AlreadyClaimed => Err(ApiError::AlreadyClaimed),
        ClaimOutcome::OutOfStock => Err(ApiError::OutOfStock),
    }
}

pub fn get_coupon(ctx: &Context, raw_name: &str) -> Result<Reply, ApiError> {
    let name = path_name(raw_name)?;
    let coupon = ctx.store.coupon(&name)?.ok_or(ApiError::CouponNotFound)?;
    Ok(json(200, &CouponBody::from(&coupon)))
}

pub fn health(ctx: &Context) -> Reply {
    if ctx.database_answers() {
        json(200, &json!({ "status": "ok" }))
    } else {
        json(
            503,
            &json!({ "error": {
                "code": "database_unavailable",
                "message": "The database is not answering."
            }}),
        )
    }
}

/// The coupon name from a path segment, percent-decoded and checked like
/// the name in a request body.
fn path_name(raw: &str) -> Result<CouponName, ApiError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidPath)?;
    CouponName::parse(&decoded).map_err(|e| ApiError::field("coupon_name", FieldProblem::Text(e)))
}
