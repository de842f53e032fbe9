use std::fmt;

/// How many units a coupon is opened with: 0 ..= i32::MAX, so that it fits
/// the INTEGER column and arithmetic on it can never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(i32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    Negative,
    TooLarge,
}

impl AmountError {
    pub fn reason(self) -> &'static str {
        match self {
            AmountError::Negative => "negative",
            AmountError::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountError::Negative => write!(f, "must not be negative"),
            AmountError::TooLarge => write!(f, "must be at most {}", i32::MAX),
        }
    }
}

impl Amount {
    pub fn parse(raw: i128) -> Result<Amount, AmountError> {
        if raw < 0 {
            return Err(AmountError::Negative);
        }
        i32::try_from(raw)
            .map(Amount)
            .map_err(|_| AmountError::TooLarge)
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_range() {
        assert_eq!(Amount::parse(0).map(Amount::get), Ok(0));
        assert_eq!(
            Amount::parse(i32::MAX as i128).map(Amount::get),
            Ok(i32::MAX)
        );
    }

    #[test]
    fn refuses_values_outside_it() {
        assert_eq!(Amount::parse(-1), Err(AmountError::Negative));
        assert_eq!(
            Amount::parse(i32::MAX as i128 + 1),
            Err(AmountError::TooLarge)
        );
    }
}
