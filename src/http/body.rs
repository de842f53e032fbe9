//! Turning a request body into checked fields, or into the 4xx that says
//! exactly what is wrong with it.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::{ApiError, FieldProblem};
use crate::transport::{Body, MAX_BODY_BYTES, Request};

/// The answer to a request whose body's framing decides it before its
/// route is looked at: a body declared too large ever to be read, or
/// framed so that where it ends cannot be told. Nothing else is answered on
/// such a connection.
pub fn refused_by_framing(body: &Body) -> Option<ApiError> {
    match body {
        Body::Abandoned => Some(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }),
        &Body::BadFraming(problem) => Some(problem.into()),
        _ => None,
    }
}

/// The body as one JSON object, refusing a body that did not arrive whole,
/// the wrong media type, bodies over the limit and anything that is not one
/// JSON object, in that order.
pub fn json_object(request: &Request) -> Result<Map<String, Value>, ApiError> {
    // What did not arrive whole cannot be judged by its type or content.
    let bytes = match &request.body {
        Body::TimedOut => return Err(ApiError::RequestTimeout),
        &Body::Incomplete { received, declared } => {
            return Err(ApiError::IncompleteBody { received, declared });
        }
        Body::Read(bytes) => Ok(bytes),
        &Body::BadFraming(problem) => return Err(problem.into()),
        Body::TooLarge | Body::TooLargeUnread | Body::Abandoned => Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }),
        // No thread could read it: the server is at its limit.
        Body::NotRead => return Err(ApiError::Overloaded),
        Body::Unreadable(cause) => Err(ApiError::InvalidJson(format!(
            "the body could not be read ({cause})"
        ))),
    };
    if !is_read_as_json(request.header("Content-Type")) {
        return Err(ApiError::UnsupportedMediaType);
    }
    match serde_json::from_slice(bytes?) {
        Ok(Parsed::Object(pairs)) => {
            let mut map = Map::with_capacity(pairs.len());
            for (key, value) in pairs {
                if map.contains_key(&key) {
                    return Err(ApiError::DuplicateField(key));
                }
                map.insert(key, value);
            }
            Ok(map)
        }
        Ok(Parsed::Other) => Err(ApiError::BodyNotObject),
        Err(e) => Err(ApiError::InvalidJson(e.to_string())),
    }
}

/// A JSON document read in one pass: an object's members in the order
/// sent, all of them (serde_json's `Map` keeps only the last of a repeated
/// key, and two readers of one body must never disagree about which one
/// counts), or anything else.
enum Parsed {
    Object(Vec<(String, Value)>),
    Other,
}

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Parsed, D::Error> {
        deserializer.deserialize_any(ParsedVisitor)
    }
}

struct ParsedVisitor;

impl<'de> Visitor<'de> for ParsedVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Parsed, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = members.next_entry::<String, Value>()? {
            pairs.push(pair);
        }
        Ok(Parsed::Object(pairs))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Parsed, A::Error> {
        while items.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Parsed::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed::Other)
    }

    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed::Other)
    }
}

/// Whether a body sent with this Content-Type is read; it is always read as
/// JSON. Taken: no type (or an empty one), `application/json` and every
/// `+json` type, and the two that `curl -d` and browser forms send by
/// themselves, `application/x-www-form-urlencoded` and `text/plain`; with
/// any parameters, in any case. Every other type is refused.
///
/// Taking the form types lets a page on another site make a browser send a
/// body here, which gains it nothing: the service reads no cookies or other
/// ambient credentials, and what needs the admin token needs it in an
/// `Authorization` header, which such a request cannot carry.
fn is_read_as_json(content_type: Option<&str>) -> bool {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() {
        return true;
    }
    match essence.split_once('/') {
        Some(("application", "json" | "x-www-form-urlencoded") | ("text", "plain")) => true,
        Some((kind, subtype)) => {
            !kind.is_empty() && subtype.len() > "+json".len() && subtype.ends_with("+json")
        }
        None => false,
    }
}

/// The fields of a body object, with the unknown ones already refused.
pub struct Fields(Map<String, Value>);

impl Fields {
    pub fn new(map: Map<String, Value>, accepted: &[&str]) -> Result<Fields, ApiError> {
        if let Some(unknown) = map.keys().find(|k| !accepted.contains(&k.as_str())) {
            return Err(ApiError::UnknownField(unknown.clone()));
        }
        Ok(Fields(map))
    }

    pub fn text(&self, field: &'static str) -> Result<&str, ApiError> {
        match self.0.get(field) {
            None => Err(ApiError::field(field, FieldProblem::Missing)),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ApiError::field(field, FieldProblem::NotAString)),
        }
    }

    /// A string that may be absent or null.
    pub fn optional_text(&self, field: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::field(field, FieldProblem::NotAString)),
        }
    }

    /// A whole number, however large: range checks belong to the domain.
    /// Numbers too large for 64 bits arrive as floats and still count as
    /// whole when they have no fraction.
    pub fn whole_number(&self, field: &'static str) -> Result<i128, ApiError> {
        let not_whole = || ApiError::field(field, FieldProblem::NotAWholeNumber);
        match self.0.get(field) {
            None => Err(ApiError::field(field, FieldProblem::Missing)),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    Ok(i128::from(u))
                } else {
                    match n.as_f64() {
                        // Saturates: anything this large is out of range anyway.
                        Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() > 1e18 => {
                            Ok(f as i128)
                        }
                        _ => Err(not_whole()),
                    }
                }
            }
            Some(_) => Err(not_whole()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> Fields {
        let Value::Object(map) = serde_json::from_str(body).unwrap() else {
            panic!("not an object")
        };
        Fields::new(map, &["n"]).unwrap()
    }

    #[test]
    fn json_form_and_plain_text_types_are_read_others_refused() {
        for taken in [
            None,
            Some(""),
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/merge-patch+json"),
            Some("application/vnd.api+json; charset=utf-8"),
            Some("APPLICATION/VND.FOO+JSON"),
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some(" application/x-www-form-urlencoded ; charset=utf-8"),
        ] {
            assert!(is_read_as_json(taken), "{taken:?} refused");
        }
        for refused in [
            "multipart/form-data; boundary=x",
            "application/xml",
            "text/html",
            "text/json",
            "application/jsonx",
            "application/+json",
            "/+json",
            "application",
            "json",
            "application/octet-stream",
        ] {
            assert!(!is_read_as_json(Some(refused)), "{refused:?} taken");
        }
    }

    #[test]
    fn a_repeated_member_is_refused_and_other_documents_are_told_apart() {
        let parse = |text: &str| match serde_json::from_slice::<Parsed>(text.as_bytes()) {
            Ok(Parsed::Object(pairs)) => Ok(pairs.len()),
            Ok(Parsed::Other) => Err("other"),
            Err(_) => Err("invalid"),
        };
        assert_eq!(parse(r#"{"a":1,"a":2}"#), Ok(2));
        assert_eq!(parse(r#"{"a":{"b":1,"b":2},"c":[1,{"d":2}]}"#), Ok(2));
        for other in ["[1,2]", "1", "-1", "1.5", "\"x\"", "true", "null", "[]"] {
            assert_eq!(parse(other), Err("other"), "{other}");
        }
        assert_eq!(parse("{"), Err("invalid"));
        assert_eq!(parse("{} {}"), Err("invalid"));
    }

    #[test]
    fn whole_numbers_are_told_from_fractions() {
        assert_eq!(fields(r#"{"n": 5}"#).whole_number("n").unwrap(), 5);
        assert_eq!(fields(r#"{"n": -5}"#).whole_number("n").unwrap(), -5);
        assert!(fields(r#"{"n": 5.5}"#).whole_number("n").is_err());
        assert!(fields(r#"{"n": 5.0}"#).whole_number("n").is_err());
        assert!(fields(r#"{"n": "5"}"#).whole_number("n").is_err());
        assert!(fields(r#"{"n": 1e30}"#).whole_number("n").unwrap() > i128::from(i64::MAX));
    }
}
