//! Idempotency keys: what a client sends (`Idempotency-Key`) so that a
//! request it retries after a lost answer takes effect once, and the retry
//! gets the first answer back.

use std::fmt;

use super::{Amount, CouponName, SaleWindow, UserId, format_instant};

/// Longest key accepted, in characters (all ASCII).
pub const MAX_KEY_CHARS: usize = 255;

/// An `Idempotency-Key` header's value: 1 to 255 visible ASCII characters
/// (no spaces, no control characters), as the IETF draft and the payment
/// APIs that use one allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong,
    /// A character outside visible ASCII (`!` to `~`).
    NotVisibleAscii,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => write!(f, "must not be empty"),
            KeyError::TooLong => write!(f, "must be at most {MAX_KEY_CHARS} characters"),
            KeyError::NotVisibleAscii => {
                write!(f, "must be visible ASCII characters only (no spaces)")
            }
        }
    }
}

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<IdempotencyKey, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::NotVisibleAscii);
        }
        if raw.len() > MAX_KEY_CHARS {
            return Err(KeyError::TooLong);
        }
        Ok(IdempotencyKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which operation a key belongs to: a key is recorded per operation, so one
/// key used for a claim and for a create names two things.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Claim,
    Create,
    Release,
}

impl Operation {
    /// Its name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Claim => "claim",
            Operation::Create => "create",
            Operation::Release => "release",
        }
    }
}

/// What a request asked for, as it is recorded with its key and compared
/// with a retry's: a claim's or a release's coupon and user, a create's
/// fields, parsed (so two spellings of one request are one request). Every
/// server on a database compares what the others recorded, so these texts
/// never change for an operation.
pub fn claim_request(coupon: &CouponName, user: &UserId) -> String {
    json_array(&[coupon.as_str().into(), user.as_str().into()])
}

/// See [`claim_request`].
pub fn release_request(coupon: &CouponName, user: &UserId) -> String {
    json_array(&[coupon.as_str().into(), user.as_str().into()])
}

/// See [`claim_request`].
pub fn create_request(name: &CouponName, amount: Amount, window: &SaleWindow) -> String {
    let instant = |at: Option<time::OffsetDateTime>| {
        at.map_or(serde_json::Value::Null, |at| format_instant(at).into())
    };
    json_array(&[
        name.as_str().into(),
        amount.get().into(),
        instant(window.starts_at()),
        instant(window.expires_at()),
    ])
}

fn json_array(items: &[serde_json::Value]) -> String {
    serde_json::Value::Array(items.to_vec()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_recorded_as_what_they_ask_for() {
        let coupon = CouponName::parse("PROMO \"A\"").unwrap();
        let user = UserId::parse("u1").unwrap();
        assert_eq!(claim_request(&coupon, &user), r#"["PROMO \"A\"","u1"]"#);
        let window = SaleWindow::new(
            crate::domain::parse_instant("2026-11-25T19:00:00+07:00"),
            None,
        )
        .unwrap();
        assert_eq!(
            create_request(&coupon, Amount::parse(5).unwrap(), &window),
            r#"["PROMO \"A\"",5,"2026-11-25T12:00:00Z",null]"#
        );
    }

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse("0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        assert!(IdempotencyKey::parse("!~{}:/@").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_KEY_CHARS)).is_ok());
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(MAX_KEY_CHARS + 1)),
            Err(KeyError::TooLong)
        );
        for bad in ["a b", "a\tb", "é", "a\u{7f}"] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(KeyError::NotVisibleAscii),
                "{bad:?}"
            );
        }
    }
}
