//! Query strings, and the opaque cursors of paginated listings.

use percent_encoding::percent_decode_str;

use super::error::ApiError;

/// Listing pages: `limit` defaults to this and may be at most MAX_LIMIT.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// The value of `key` in the request target's query, percent-decoded.
pub fn param(target: &str, key: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode_str(v).decode_utf8_lossy().into_owned())
}

pub fn limit(target: &str) -> Result<i64, ApiError> {
    match param(target, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::InvalidLimit { max: MAX_LIMIT }),
        },
    }
}

/// Cursors are hex so that they travel in a URL untouched, and carry a
/// tag so that one listing's cursor is refused by another.
pub fn encode_cursor(tag: char, payload: &str) -> String {
    let mut out = String::with_capacity(2 + payload.len() * 2);
    out.push(tag);
    for byte in payload.bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

pub fn decode_cursor(tag: char, raw: &str) -> Result<String, ApiError> {
    let hex = raw.strip_prefix(tag).ok_or(ApiError::InvalidCursor)?;
    if hex.len() % 2 != 0 || hex.len() > 1024 {
        return Err(ApiError::InvalidCursor);
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or(ApiError::InvalidCursor)?;
    String::from_utf8(bytes).map_err(|_| ApiError::InvalidCursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_tags_and_garbage() {
        let c = encode_cursor('n', "SUMMER SALE é");
        assert_eq!(decode_cursor('n', &c).unwrap(), "SUMMER SALE é");
        assert!(decode_cursor('c', &c).is_err());
        assert!(decode_cursor('n', "nzz").is_err());
        assert!(decode_cursor('n', "n0").is_err());
    }

    #[test]
    fn limits_default_and_stay_in_range() {
        assert_eq!(limit("/x").unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit("/x?limit=5").unwrap(), 5);
        assert!(limit("/x?limit=0").is_err());
        assert!(limit("/x?limit=1001").is_err());
        assert!(limit("/x?limit=ten").is_err());
        assert_eq!(param("/x?a=1&after=n41", "after").as_deref(), Some("n41"));
    }
}
