//! Types that cannot hold an invalid value, and the shapes the service
//! answers with. Nothing here knows about HTTP or SQL.

mod amount;
mod coupon;
mod idempotency;
mod text;
mod window;

pub use amount::{Amount, AmountError};
pub use coupon::{ClaimOutcome, Coupon, decide_in_order};
pub use idempotency::{
    IdempotencyKey, KeyError, MAX_KEY_CHARS, Operation, claim_request, create_request,
    release_request,
};
pub use text::{CouponName, MAX_TEXT_CHARS, TextError, UserId};
pub use window::{EndNotAfterStart, SaleWindow, WindowState, format_instant, parse_instant};
