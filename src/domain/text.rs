use std::fmt;

/// Longest coupon name or user id accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 128;

/// Why a coupon name or user id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    Empty,
    TooLong,
    SurroundingWhitespace,
    ControlCharacter,
}

impl TextError {
    pub fn reason(self) -> &'static str {
        match self {
            TextError::Empty => "empty",
            TextError::TooLong => "too_long",
            TextError::SurroundingWhitespace => "surrounding_whitespace",
            TextError::ControlCharacter => "control_character",
        }
    }
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::Empty => write!(f, "must not be empty"),
            TextError::TooLong => write!(f, "must be at most {MAX_TEXT_CHARS} characters"),
            TextError::SurroundingWhitespace => {
                write!(f, "must not start or end with whitespace")
            }
            TextError::ControlCharacter => write!(f, "must not contain control characters"),
        }
    }
}

/// The rules shared by every identifier a client sends us. Checked once at
/// the edge so that the store and logs never see an ambiguous value.
pub(crate) fn parse_text(raw: &str) -> Result<String, TextError> {
    if raw.is_empty() {
        return Err(TextError::Empty);
    }
    if raw.chars().count() > MAX_TEXT_CHARS {
        return Err(TextError::TooLong);
    }
    if raw.trim() != raw {
        return Err(TextError::SurroundingWhitespace);
    }
    if raw.chars().any(char::is_control) {
        return Err(TextError::ControlCharacter);
    }
    Ok(raw.to_owned())
}

macro_rules! text_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, TextError> {
                parse_text(raw).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A coupon's name: its primary key and its address in the API.
    CouponName
);
text_newtype!(
    /// The id of the user who claims; opaque to us beyond the shared rules.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unicode_names() {
        assert!(CouponName::parse("PROMO_SUPER").is_ok());
        assert!(CouponName::parse("söldout 50% off").is_ok());
        assert!(CouponName::parse(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
    }

    #[test]
    fn refuses_each_broken_rule() {
        assert_eq!(UserId::parse(""), Err(TextError::Empty));
        assert_eq!(UserId::parse(" a"), Err(TextError::SurroundingWhitespace));
        assert_eq!(UserId::parse("a\t"), Err(TextError::SurroundingWhitespace));
        assert_eq!(UserId::parse("a\u{0}b"), Err(TextError::ControlCharacter));
        assert_eq!(
            UserId::parse(&"x".repeat(MAX_TEXT_CHARS + 1)),
            Err(TextError::TooLong)
        );
    }
}
