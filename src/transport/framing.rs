//! Where a request's body ends, read from its head as RFC 9112 (section 6)
//! says, and the reader that stops there.
//!
//! tiny_http frames bodies loosely: a `Content-Length` it cannot parse
//! (`abc`, `-1`, twenty digits) counts as no body, so the body's bytes are
//! read as the connection's next request; any `Transfer-Encoding` (even
//! `identity`) is decoded as chunked; and a request with `Connection:
//! upgrade` gets the socket itself as its body, to read without end
//! (tiny_http defect 23). Each request's framing is judged here first: a
//! framing that cannot be trusted is refused before anything is read, and
//! the body of an upgrade request is read only as far as its framing says.

use std::io::{self, Read};

use super::message::FramingError;

/// A request's body framing, once found valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// `Content-Length`, when sent; `u64::MAX` stands for any larger than
    /// that.
    pub declared: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// tiny_http hands over the socket itself as the body (`Connection:
    /// upgrade`, which this service never accepts): it must be read no
    /// further than the framing says, and tiny_http reads no request after
    /// it.
    pub raw: bool,
}

/// What tiny_http reads together with the head (its own constant).
const READ_WITH_HEAD: u64 = 1024;

impl Framing {
    /// The framing of `request`, or why it cannot be trusted.
    pub fn of(request: &tiny_http::Request) -> Result<Framing, FramingError> {
        let values = |name: &'static str| -> Vec<&str> {
            request
                .headers()
                .iter()
                .filter(|h| h.field.equiv(name))
                .map(|h| h.value.as_str().trim())
                .collect()
        };
        // The first `Connection` field, as tiny_http looks at it.
        let raw = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .is_some_and(|h| h.value.as_str().to_ascii_lowercase().contains("upgrade"));
        Framing::judge(&values("Content-Length"), &values("Transfer-Encoding"), raw)
            .and_then(|framing| framing.agrees_with(request.body_length()))
    }

    fn judge(lengths: &[&str], codings: &[&str], raw: bool) -> Result<Framing, FramingError> {
        let chunked = match codings {
            [] => false,
            [coding] if coding.eq_ignore_ascii_case("chunked") => true,
            _ => return Err(FramingError::UnsupportedCoding),
        };
        let declared = match lengths {
            [] => None,
            _ if chunked => {
                return Err(FramingError::Invalid(
                    "Content-Length and Transfer-Encoding are both sent",
                ));
            }
            [length] if !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit()) => {
                Some(length.parse().unwrap_or(u64::MAX))
            }
            [_] => {
                return Err(FramingError::Invalid(
                    "Content-Length is not a whole number of bytes",
                ));
            }
            _ => {
                return Err(FramingError::Invalid(
                    "Content-Length is sent more than once",
                ));
            }
        };
        Ok(Framing {
            declared,
            chunked,
            raw,
        })
    }

    /// A length tiny_http reads otherwise than it is written is refused
    /// too: the two would disagree on where the next request starts.
    fn agrees_with(self, read_by_tiny_http: Option<usize>) -> Result<Framing, FramingError> {
        // tiny_http keeps the length of an upgrade request but reads the
        // socket; this module's reader frames it.
        let agrees = self.raw
            || match self.declared {
                // Too large for tiny_http to parse, or just as large: never
                // read (see `intake`).
                Some(u64::MAX) => matches!(read_by_tiny_http, None | Some(usize::MAX)),
                Some(n) => read_by_tiny_http == usize::try_from(n).ok(),
                None => read_by_tiny_http.is_none(),
            };
        if agrees {
            Ok(self)
        } else {
            Err(FramingError::Invalid(
                "Content-Length is not a whole number of bytes",
            ))
        }
    }

    /// Whether reading the body may wait on the client: tiny_http has not
    /// read it with the head.
    pub fn may_wait(&self, expects_continue: bool) -> bool {
        if self.raw {
            return self.chunked || self.declared.is_some_and(|n| n > 0);
        }
        expects_continue || self.chunked || self.declared.is_some_and(|n| n > READ_WITH_HEAD)
    }

    /// The body, and nothing past it.
    pub fn reader<'a>(&self, request: &'a mut tiny_http::Request) -> Box<dyn Read + 'a> {
        let socket = request.as_reader();
        match (self.raw, self.chunked, self.declared) {
            (false, _, _) => Box::new(socket),
            (true, true, _) => Box::new(chunked_transfer::Decoder::new(socket)),
            (true, false, Some(n)) => Box::new(socket.take(n)),
            (true, false, None) => Box::new(io::empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(lengths: &[&str], codings: &[&str]) -> Result<Framing, FramingError> {
        Framing::judge(lengths, codings, false)
    }

    #[test]
    fn one_whole_content_length_or_chunked_alone_is_a_framing() {
        assert_eq!(judged(&[], &[]).unwrap().declared, None);
        assert_eq!(judged(&["0"], &[]).unwrap().declared, Some(0));
        assert_eq!(judged(&["0042"], &[]).unwrap().declared, Some(42));
        assert_eq!(
            judged(&["99999999999999999999999"], &[]).unwrap().declared,
            Some(u64::MAX)
        );
        assert!(judged(&[], &["chunked"]).unwrap().chunked);
        assert!(judged(&[], &["Chunked"]).unwrap().chunked);
    }

    #[test]
    fn a_length_that_is_not_one_whole_number_is_invalid() {
        for length in ["abc", "-1", "+5", "", "5, 5", "1.0", "0x10", "5 5"] {
            assert!(
                matches!(judged(&[length], &[]), Err(FramingError::Invalid(_))),
                "{length:?}"
            );
        }
        assert!(matches!(
            judged(&["5", "5"], &[]),
            Err(FramingError::Invalid(_))
        ));
        assert!(matches!(
            judged(&["5"], &["chunked"]),
            Err(FramingError::Invalid(_))
        ));
    }

    #[test]
    fn a_coding_other_than_chunked_alone_is_unsupported() {
        for codings in [
            &["identity"][..],
            &["gzip, chunked"],
            &["chunked", "chunked"],
        ] {
            assert_eq!(
                judged(&[], codings),
                Err(FramingError::UnsupportedCoding),
                "{codings:?}"
            );
        }
        assert_eq!(
            judged(&["5"], &["identity"]),
            Err(FramingError::UnsupportedCoding)
        );
    }

    #[test]
    fn a_length_tiny_http_reads_otherwise_is_refused() {
        let five = judged(&["5"], &[]).unwrap();
        assert!(five.agrees_with(Some(5)).is_ok());
        assert!(five.agrees_with(None).is_err());
        assert!(five.agrees_with(Some(6)).is_err());
        let none = judged(&[], &[]).unwrap();
        assert!(none.agrees_with(None).is_ok());
        let huge = judged(&["99999999999999999999999"], &[]).unwrap();
        assert!(huge.agrees_with(None).is_ok());
    }

    #[test]
    fn an_upgrade_request_waits_only_for_a_body_it_declares() {
        let raw =
            |lengths: &[&str], codings: &[&str]| Framing::judge(lengths, codings, true).unwrap();
        assert!(!raw(&[], &[]).may_wait(false));
        assert!(!raw(&["0"], &[]).may_wait(false));
        assert!(raw(&["10"], &[]).may_wait(false));
        assert!(raw(&[], &["chunked"]).may_wait(false));
        assert!(!judged(&["10"], &[]).unwrap().may_wait(false));
        assert!(judged(&["2000"], &[]).unwrap().may_wait(false));
        assert!(judged(&["10"], &[]).unwrap().may_wait(true));
    }
}
