//! Idempotency keys: what a client sends (`Idempotency-Key`) so that a
//! request it retries after a lost answer takes effect once, and the retry
//! gets the first answer back.

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
