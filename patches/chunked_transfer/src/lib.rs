//! HTTP/1.1 chunked transfer coding (RFC 9112, section 7.1), flash-coupons'
//! own, written for tiny_http 0.12.
//!
//! tiny_http decodes chunked request bodies and encodes chunked responses
//! through the `chunked_transfer` crate, using only [`Decoder::new`] (a
//! [`Read`] over the connection) and [`Encoder::new`] (a [`Write`] over the
//! connection that ends the message when dropped). This crate takes that
//! crate's place for the whole build (`[patch.crates-io]` in the top-level
//! Cargo.toml) and keeps the rest of its small public API. Unlike it, the
//! decoder accepts a trailer section after the last chunk.
//!
//! The decoder
//! - reads the framing (chunk-size lines, the CRLF after each chunk's data,
//!   the trailer section) one byte at a time and chunk data never beyond the
//!   chunk's end, so it never consumes a byte past the end of the message:
//!   the source is the connection, and what follows belongs to the next
//!   request. (tiny_http puts a `BufReader` under it, so this is cheap.)
//! - accepts chunk extensions (`;name`, `;name=token`, `;name="quoted"`) and
//!   ignores them, and reads trailer fields to their end and ignores them;
//! - wants CRLF at every line end: a bare LF or a bare CR is an error. RFC
//!   9112 (section 2.2) only allows, not requires, a bare LF to be taken as a
//!   line end, and disagreeing on chunked framing is what request smuggling
//!   is made of;
//! - bounds its work: a line longer than 4 KiB, a trailer section larger
//!   than 16 KiB or a chunk size that does not fit in a `usize` is an error
//!   of kind [`io::ErrorKind::InvalidData`];
//! - reports the end of the source before the end of the message as
//!   [`io::ErrorKind::UnexpectedEof`], never as the end of the body;
//! - passes the source's own errors on unchanged (a socket read timeout
//!   stays `WouldBlock` or `TimedOut`) and can be read again after them: it
//!   carries on where it was.
//!
//! After a framing error (invalid data or the source's early end) every read
//! fails with that error's kind.

use std::io::{self, Read, Write};

/// Longest line accepted, CRLF excluded: a chunk-size line with its
/// extensions, or one trailer field line.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// Largest trailer section accepted, its field lines and its final CRLF
/// included.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// The encoder's chunk size unless told otherwise.
const DEFAULT_CHUNK_BYTES: usize = 8 * 1024;

// ------------------------------------------------------------------ decoder

/// Reads the body of a chunked message from `source`, which must start at
/// the message body's first byte (the first chunk-size line).
///
/// ```
/// use std::io::Read;
///
/// let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
/// let mut decoder = chunked_transfer::Decoder::new(&wire[..]);
/// let mut body = String::new();
/// decoder.read_to_string(&mut body).unwrap();
/// assert_eq!(body, "hello world");
/// assert_eq!(decoder.into_inner(), b"GET /next");
/// ```
#[derive(Debug)]
pub struct Decoder<R> {
    source: R,
    state: State,
    /// The line being read, without its line end (a CR is kept until the
    /// LF after it arrives).
    line: Vec<u8>,
    /// Bytes of the trailer section read so far, CRLFs included.
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At (or in) a chunk-size line.
    SizeLine,
    /// In a chunk's data, with this many bytes (more than 0) still to come.
    Data(usize),
    /// After a chunk's data, before the CR of its CRLF.
    DataCr,
    /// After a chunk's data and CR, before the LF.
    DataLf,
    /// After the last chunk: at (or in) a trailer field line or the final
    /// empty line.
    Trailer,
    /// The whole message has been read.
    Done,
    /// A framing error of this kind happened; nothing more can be read.
    Failed(io::ErrorKind),
}

impl<R> Decoder<R> {
    /// A decoder of the chunked message starting at `source`'s next byte.
    pub fn new(source: R) -> Decoder<R> {
        Decoder {
            source,
            state: State::SizeLine,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }

    /// The bytes of the current chunk not read yet, or `None` when not
    /// inside a chunk's data.
    pub fn remaining_chunks_size(&self) -> Option<usize> {
        match self.state {
            State::Data(left) => Some(left),
            _ => None,
        }
    }

    /// The source, positioned wherever decoding stopped: right after the
    /// message once a read has returned `Ok(0)`.
    pub fn into_inner(self) -> R {
        self.source
    }

    /// The source.
    pub fn get_ref(&self) -> &R {
        &self.source
    }

    /// The source. Reading from it directly loses the decoder's place.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.source
    }

    /// Marks the message as broken and returns the error to report.
    fn fail(&mut self, kind: io::ErrorKind, why: &str) -> io::Error {
        self.state = State::Failed(kind);
        io::Error::new(kind, format!("chunked body: {why}"))
    }

    fn invalid(&mut self, why: &str) -> io::Error {
        self.fail(io::ErrorKind::InvalidData, why)
    }
}

impl<R: Read> Decoder<R> {
    /// One byte of framing. The source's errors come back unchanged, and
    /// its end is an error: the message is not over.
    fn next_byte(&mut self) -> io::Result<u8> {
        let mut byte = [0u8; 1];
        match self.source.read(&mut byte)? {
            0 => Err(self.fail(
                io::ErrorKind::UnexpectedEof,
                "the connection ended before the end of the chunked message",
            )),
            _ => Ok(byte[0]),
        }
    }

    /// Reads the rest of a CRLF-terminated line of at most `limit` bytes
    /// (CRLF excluded) into `self.line`, without its CRLF. If the source
    /// fails, what was read stays in `self.line` for the next call.
    fn read_line(&mut self, limit: usize, too_long: &str) -> io::Result<()> {
        loop {
            let byte = self.next_byte()?;
            let after_cr = self.line.last() == Some(&b'\r');
            match byte {
                b'\n' if after_cr => {
                    self.line.pop();
                    return Ok(());
                }
                b'\n' => return Err(self.invalid("line ends with a bare LF, not CRLF")),
                _ if after_cr => return Err(self.invalid("CR not followed by LF")),
                b'\r' => self.line.push(byte),
                _ if self.line.len() >= limit => return Err(self.invalid(too_long)),
                _ => self.line.push(byte),
            }
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::SizeLine => {
                    self.read_line(MAX_LINE_BYTES, "chunk-size line longer than 4 KiB")?;
                    let size = match chunk_size(&self.line) {
                        Ok(size) => size,
                        Err(why) => return Err(self.invalid(why)),
                    };
                    self.line.clear();
                    self.state = match size {
                        0 => State::Trailer,
                        _ => State::Data(size),
                    };
                }
                State::Data(left) => {
                    let want = left.min(buf.len());
                    let got = self.source.read(&mut buf[..want])?;
                    if got == 0 {
                        return Err(self.fail(
                            io::ErrorKind::UnexpectedEof,
                            "the connection ended inside a chunk",
                        ));
                    }
                    // A source claiming more than it was given breaks the
                    // `Read` contract; do not count past the chunk for it.
                    let got = got.min(want);
                    self.state = match left - got {
                        0 => State::DataCr,
                        left => State::Data(left),
                    };
                    return Ok(got);
                }
                State::DataCr | State::DataLf => {
                    let (expected, next) = match self.state {
                        State::DataCr => (b'\r', State::DataLf),
                        _ => (b'\n', State::SizeLine),
                    };
                    if self.next_byte()? != expected {
                        return Err(self.invalid("chunk data not followed by CRLF"));
                    }
                    self.state = next;
                }
                State::Trailer => {
                    // Room for this line's CRLF and the final empty line's.
                    let budget = MAX_TRAILER_BYTES.saturating_sub(self.trailer_bytes + 4);
                    let (limit, too_long) = if budget < MAX_LINE_BYTES {
                        (budget, "trailer section larger than 16 KiB")
                    } else {
                        (MAX_LINE_BYTES, "trailer field line longer than 4 KiB")
                    };
                    self.read_line(limit, too_long)?;
                    if self.line.is_empty() {
                        self.state = State::Done;
                        return Ok(0);
                    }
                    if let Err(why) = check_field_line(&self.line) {
                        return Err(self.invalid(why));
                    }
                    self.trailer_bytes += self.line.len() + 2;
                    self.line.clear();
                }
                State::Done => return Ok(0),
                State::Failed(kind) => {
                    return Err(io::Error::new(
                        kind,
                        "chunked body: unreadable after an earlier error",
                    ));
                }
            }
        }
    }
}

/// The size in a chunk-size line (`chunk-size [ chunk-ext ]`, CRLF
/// excluded), checking the extensions' syntax.
fn chunk_size(line: &[u8]) -> Result<usize, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size is not hexadecimal");
    }
    let mut size: usize = 0;
    for &digit in &line[..digits] {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => digit - b'A' + 10,
        };
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(usize::from(value)))
            .ok_or("chunk size too large")?;
    }
    check_extensions(&line[digits..])?;
    Ok(size)
}

/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`
/// with `chunk-ext-name = token` and `chunk-ext-val = token / quoted-string`.
fn check_extensions(mut rest: &[u8]) -> Result<(), &'static str> {
    const BAD: &str = "malformed chunk extension";
    while !rest.is_empty() {
        rest = skip_whitespace(rest)
            .strip_prefix(b";")
            .ok_or("chunk size followed by something other than an extension")?;
        rest = skip_whitespace(rest);
        let name = token_len(rest);
        if name == 0 {
            return Err(BAD);
        }
        rest = &rest[name..];
        if let Some(value) = skip_whitespace(rest).strip_prefix(b"=") {
            let value = skip_whitespace(value);
            rest = if value.first() == Some(&b'"') {
                after_quoted_string(value).ok_or(BAD)?
            } else {
                match token_len(value) {
                    0 => return Err(BAD),
                    len => &value[len..],
                }
            };
        }
    }
    Ok(())
}

/// `field-line = field-name ":" OWS field-value OWS`, as far as a field
/// that is thrown away needs checking: a token, a colon right after it, and
/// a value without control characters other than HTAB.
fn check_field_line(line: &[u8]) -> Result<(), &'static str> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err("trailer field line folded (obs-fold)");
    }
    let name = token_len(line);
    match line.get(name) {
        Some(b':') if name > 0 => {}
        Some(b' ' | b'\t') if name > 0 => {
            return Err("whitespace between a trailer field's name and its colon");
        }
        _ => return Err("malformed trailer field line"),
    }
    let value_ok = line[name + 1..]
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || is_visible(b));
    if value_ok {
        Ok(())
    } else {
        Err("control character in a trailer field's value")
    }
}

fn skip_whitespace(bytes: &[u8]) -> &[u8] {
    let blanks = bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[blanks..]
}

/// The length of the token at the start of `bytes` (0 if none).
fn token_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|&&b| is_tchar(b)).count()
}

/// `tchar` of RFC 9110, section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `VCHAR / obs-text`.
fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// What follows the quoted-string at the start of `bytes` (RFC 9110,
/// section 5.6.4), or `None` if there is no valid one.
fn after_quoted_string(bytes: &[u8]) -> Option<&[u8]> {
    let mut at = 1; // past the opening DQUOTE
    loop {
        match *bytes.get(at)? {
            b'"' => return Some(&bytes[at + 1..]),
            b'\\' => {
                let quoted = *bytes.get(at + 1)?;
                if !(quoted == b'\t' || quoted == b' ' || is_visible(quoted)) {
                    return None;
                }
                at += 2;
            }
            b'\t' | b' ' => at += 1,
            b if is_visible(b) => at += 1,
            _ => return None,
        }
    }
}

// ------------------------------------------------------------------ encoder

/// Room kept in front of a chunk's data for its size line: 16 hex digits
/// (a 64-bit size) and CRLF.
const HEAD_ROOM: usize = 18;

/// Writes what it is given to `output` as the chunks of a chunked message
/// body, and ends the message (with the last chunk, `0\r\n\r\n`) when
/// dropped.
///
/// Data is gathered into chunks of the chunk size (8 KiB unless told
/// otherwise); a flush sends what has been gathered as a shorter chunk.
/// Once writing to `output` has failed, the encoder writes nothing more
/// (not even the last chunk) and its writes fail.
///
/// ```
/// use std::io::Write;
///
/// let mut wire = Vec::new();
/// {
///     let mut encoder = chunked_transfer::Encoder::with_chunks_size(&mut wire, 5);
///     encoder.write_all(b"hello world").unwrap();
/// }
/// assert_eq!(wire, b"5\r\nhello\r\n5\r\n worl\r\n1\r\nd\r\n0\r\n\r\n");
/// ```
#[derive(Debug)]
pub struct Encoder<W: Write> {
    output: W,
    /// [`HEAD_ROOM`] bytes of room for the size line, then the data of the
    /// chunk being gathered.
    chunk: Vec<u8>,
    chunk_size: usize,
    flush_after_write: bool,
    broken: bool,
}

impl<W: Write> Encoder<W> {
    /// An encoder with chunks of 8 KiB.
    pub fn new(output: W) -> Encoder<W> {
        Encoder::with_chunks_size(output, DEFAULT_CHUNK_BYTES)
    }

    /// An encoder with chunks of `chunks` bytes (at least 1).
    pub fn with_chunks_size(output: W, chunks: usize) -> Encoder<W> {
        let chunk_size = chunks.max(1);
        // Grown as needed beyond this: a chunk size can be anything.
        let mut chunk = Vec::with_capacity(HEAD_ROOM + chunk_size.min(64 * 1024) + 7);
        chunk.resize(HEAD_ROOM, 0);
        Encoder {
            output,
            chunk,
            chunk_size,
            flush_after_write: false,
            broken: false,
        }
    }

    /// An encoder with chunks of 8 KiB that sends every write as a chunk of
    /// its own (or several, for a write larger than that) and flushes
    /// `output` after it.
    pub fn with_flush_after_write(output: W) -> Encoder<W> {
        let mut encoder = Encoder::new(output);
        encoder.flush_after_write = true;
        encoder
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.output
    }

    /// The output. Writing to it directly breaks the chunked message.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.output
    }

    fn gathered(&self) -> usize {
        self.chunk.len() - HEAD_ROOM
    }

    fn check_not_broken(&self) -> io::Result<()> {
        if self.broken {
            Err(io::Error::other(
                "chunked encoder: an earlier write to the output failed",
            ))
        } else {
            Ok(())
        }
    }

    /// Writes the data gathered so far as one chunk (if there is any), and
    /// the last chunk too if `last`, with a single `write_all`.
    fn send(&mut self, last: bool) -> io::Result<()> {
        let len = self.gathered();
        let mut start = HEAD_ROOM;
        if len > 0 {
            start -= 2;
            self.chunk[start..HEAD_ROOM].copy_from_slice(b"\r\n");
            let mut rest = len;
            loop {
                start -= 1;
                self.chunk[start] = b"0123456789ABCDEF"[rest & 0xf];
                rest >>= 4;
                if rest == 0 {
                    break;
                }
            }
            self.chunk.extend_from_slice(b"\r\n");
        }
        if last {
            // The last chunk and an empty trailer section.
            self.chunk.extend_from_slice(b"0\r\n\r\n");
        }
        let result = if start < self.chunk.len() {
            self.output.write_all(&self.chunk[start..])
        } else {
            Ok(())
        };
        self.chunk.truncate(HEAD_ROOM);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn flush_output(&mut self) -> io::Result<()> {
        let result = self.output.flush();
        if result.is_err() {
            self.broken = true;
        }
        result
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check_not_broken()?;
        if data.is_empty() {
            return Ok(0);
        }
        let taken = (self.chunk_size - self.gathered()).min(data.len());
        self.chunk.extend_from_slice(&data[..taken]);
        if self.flush_after_write {
            self.send(false)?;
            self.flush_output()?;
        } else if self.gathered() == self.chunk_size {
            self.send(false)?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check_not_broken()?;
        self.send(false)?;
        self.flush_output()
    }
}

impl<W: Write> Drop for Encoder<W> {
    /// Sends what is gathered and the last chunk, then flushes; errors are
    /// ignored (and nothing is sent once writing has failed).
    fn drop(&mut self) {
        if !self.broken && self.send(true).is_ok() {
            let _ = self.output.flush();
        }
    }
}

// -------------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::Cursor;

    /// Decodes all of `wire`, reading through `buf_len`-byte reads.
    fn decode_with(wire: &[u8], buf_len: usize) -> io::Result<Vec<u8>> {
        let mut decoder = Decoder::new(wire);
        let mut body = Vec::new();
        let mut buf = vec![0u8; buf_len];
        loop {
            match decoder.read(&mut buf)? {
                0 => return Ok(body),
                n => body.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn decode(wire: &[u8]) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        Decoder::new(wire).read_to_end(&mut body)?;
        Ok(body)
    }

    fn error_kind(wire: &[u8]) -> io::ErrorKind {
        match decode(wire) {
            Ok(body) => panic!("{:?} decoded to {body:?}", String::from_utf8_lossy(wire)),
            Err(err) => err.kind(),
        }
    }

    fn assert_invalid(wire: &[u8]) {
        assert_eq!(
            error_kind(wire),
            io::ErrorKind::InvalidData,
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }

    fn assert_eof(wire: &[u8]) {
        assert_eq!(
            error_kind(wire),
            io::ErrorKind::UnexpectedEof,
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }

    /// A source that hands out its bytes one at a time.
    struct OneByteAtATime<'a>(&'a [u8]);

    impl Read for OneByteAtATime<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&byte, rest)), Some(slot)) => {
                    *slot = byte;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// A source playing a script: bytes (at most a read's worth at a time)
    /// and errors, then its end.
    struct Scripted(VecDeque<Result<Vec<u8>, io::ErrorKind>>);

    impl Scripted {
        fn new(steps: Vec<Result<&[u8], io::ErrorKind>>) -> Scripted {
            Scripted(steps.into_iter().map(|s| s.map(<[u8]>::to_vec)).collect())
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Err(kind)) => Err(io::Error::new(kind, "scripted")),
                Some(Ok(mut bytes)) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.0.push_front(Ok(bytes.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    const PLAIN: &[u8] = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    const ONE_TRAILER: &[u8] = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    const TRAILERS: &[u8] = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\
        X-T: 1\r\nX-Checksum:abc\r\nServer-Timing: db;dur=5 \r\nEmpty:\r\nObs: caf\xc3\xa9\t\r\n\r\n";

    #[test]
    fn a_body_without_trailers() {
        assert_eq!(decode(PLAIN).unwrap(), b"hello world");
    }

    #[test]
    fn a_body_with_a_trailer_field() {
        assert_eq!(decode(ONE_TRAILER).unwrap(), b"hello world");
    }

    #[test]
    fn a_body_with_several_trailer_fields() {
        assert_eq!(decode(TRAILERS).unwrap(), b"hello world");
    }

    #[test]
    fn an_empty_body_with_and_without_trailers() {
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
        assert_eq!(decode(b"0\r\nA: b\r\nC: d\r\n\r\n").unwrap(), b"");
    }

    #[test]
    fn sizes_in_either_case_and_with_leading_zeros() {
        let wire = b"000A\r\n0123456789\r\nb\r\nabcdefghijk\r\n00\r\n\r\n";
        assert_eq!(decode(wire).unwrap(), b"0123456789abcdefghijk");
    }

    #[test]
    fn chunk_extensions_are_ignored() {
        let wire = b"5;name=value\r\nhello\r\n\
            6 ; a ;b = \"q \\\"x\\\\;=\" ;c\t=\ttok\r\n world\r\n\
            0;last=\"\"\r\nX-T: 1\r\n\r\n";
        assert_eq!(decode(wire).unwrap(), b"hello world");
    }

    #[test]
    fn malformed_chunk_extensions_are_refused() {
        for line in [
            &b"5;"[..],
            b"5;=v",
            b"5;n=",
            b"5;n=\"open",
            b"5;n=a b",
            b"5;n=\"ctl\x01\"",
            b"5;n\x7f",
            b"5 ",
            b"5\t",
            b"5;n ",
            b"5 x",
            b"5,n",
            b"5;\"quoted\"",
            b"5;n=\"a\"b",
        ] {
            let mut wire = line.to_vec();
            wire.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            assert_invalid(&wire);
        }
    }

    #[test]
    fn tiny_reads_and_a_source_of_one_byte_at_a_time() {
        for wire in [PLAIN, ONE_TRAILER, TRAILERS] {
            assert_eq!(decode_with(wire, 1).unwrap(), b"hello world");
            assert_eq!(decode_with(wire, 3).unwrap(), b"hello world");
            let mut body = Vec::new();
            Decoder::new(OneByteAtATime(wire))
                .read_to_end(&mut body)
                .unwrap();
            assert_eq!(body, b"hello world");
        }
    }

    #[test]
    fn bytes_after_the_message_are_left_unread() {
        for wire in [PLAIN, ONE_TRAILER, TRAILERS] {
            let next = b"GET /healthz HTTP/1.1\r\n\r\n";
            let mut source = wire.to_vec();
            source.extend_from_slice(next);
            let mut decoder = Decoder::new(Cursor::new(source));
            let mut body = Vec::new();
            decoder.read_to_end(&mut body).unwrap();
            assert_eq!(body, b"hello world");
            // Reads after the end return Ok(0) and leave the source alone.
            assert_eq!(decoder.read(&mut [0; 64]).unwrap(), 0);
            assert_eq!(decoder.read(&mut [0; 64]).unwrap(), 0);
            assert_eq!(decoder.get_ref().position(), wire.len() as u64);
            let mut rest = Vec::new();
            decoder.into_inner().read_to_end(&mut rest).unwrap();
            assert_eq!(rest, next);

            // The same through a one-byte source.
            let mut source = wire.to_vec();
            source.extend_from_slice(next);
            let mut decoder = Decoder::new(OneByteAtATime(&source));
            decoder.read_to_end(&mut Vec::new()).unwrap();
            assert_eq!(decoder.into_inner().0, next);
        }
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for wire in [
            &b"zz\r\n{}\r\n0\r\n\r\n"[..],
            b"\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\nzz\r\n",
            b"5\r\nhello\r\n\r\n",
        ] {
            assert_invalid(wire);
        }
    }

    #[test]
    fn a_chunk_size_that_overflows_is_refused() {
        let too_big = "1".repeat(2 * std::mem::size_of::<usize>() + 1);
        assert_invalid(format!("{too_big}\r\n").as_bytes());
        let max = "f".repeat(2 * std::mem::size_of::<usize>());
        let wire = format!("{max}\r\nab");
        let mut decoder = Decoder::new(wire.as_bytes());
        let mut buf = [0u8; 8];
        assert_eq!(decoder.read(&mut buf).unwrap(), 2);
        assert_eq!(decoder.remaining_chunks_size(), Some(usize::MAX - 2));
    }

    #[test]
    fn chunk_data_must_be_followed_by_crlf() {
        for wire in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\r\nhello0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\rX0\r\n\r\n",
            b"4\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_invalid(wire);
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_line_ends_are_refused() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5\rx\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-T: 1\rX\r\n\r\n",
        ] {
            assert_invalid(wire);
        }
    }

    #[test]
    fn malformed_trailer_fields_are_refused() {
        for field in [
            &b" folded"[..],
            b"\tfolded",
            b"X-T : 1",
            b"X-T\t: 1",
            b"no colon",
            b": no name",
            b"X(T): 1",
            b"X-T: a\x01b",
            b"X-T: a\x7fb",
            b"X-T: a\0b",
        ] {
            let mut wire = b"5\r\nhello\r\n0\r\n".to_vec();
            wire.extend_from_slice(field);
            wire.extend_from_slice(b"\r\n\r\n");
            assert_invalid(&wire);
        }
        // Folding onto a previous field line.
        assert_invalid(b"0\r\nX-T: 1\r\n 2\r\n\r\n");
    }

    #[test]
    fn too_long_lines_are_refused_early() {
        // A chunk-size line just within the limit, and one over it.
        let ok = format!("1;n={}\r\nx\r\n0\r\n\r\n", "v".repeat(MAX_LINE_BYTES - 4));
        assert_eq!(decode(ok.as_bytes()).unwrap(), b"x");
        let long = format!("1;n={}\r\nx\r\n0\r\n\r\n", "v".repeat(MAX_LINE_BYTES - 3));
        assert_invalid(long.as_bytes());
        // Leading zeros count too.
        assert_invalid(format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(MAX_LINE_BYTES)).as_bytes());
        // A trailer line just within the limit, and one over it.
        let ok = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_LINE_BYTES - 3));
        assert_eq!(decode(ok.as_bytes()).unwrap(), b"");
        let long = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_LINE_BYTES - 2));
        assert_invalid(long.as_bytes());

        // An endless line is refused after at most a line's worth of bytes.
        let endless = io::repeat(b'a');
        let mut source = Cursor::new(b"5\r\nhello\r\n0\r\n".to_vec()).chain(endless.take(1 << 30));
        let mut decoder = Decoder::new(&mut source);
        let err = decoder.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(source.get_ref().1.limit() >= (1 << 30) - MAX_LINE_BYTES as u64 - 1);
        let mut source = io::repeat(b'1').take(1 << 30);
        let err = Decoder::new(&mut source)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(source.limit() >= (1 << 30) - MAX_LINE_BYTES as u64 - 1);
    }

    #[test]
    fn a_trailer_section_over_16_kib_is_refused() {
        let field = format!("X-Filler: {}\r\n", "v".repeat(90)); // 102 bytes
        let fitting = (MAX_TRAILER_BYTES - 2) / field.len();
        let wire = |fields: usize| format!("1\r\nx\r\n0\r\n{}\r\n", field.repeat(fields));
        assert_eq!(decode(wire(fitting).as_bytes()).unwrap(), b"x");
        assert_invalid(wire(fitting + 1).as_bytes());
        assert_invalid(wire(1000).as_bytes());
    }

    #[test]
    fn an_early_end_is_an_error_not_the_end_of_the_body() {
        for wire in [
            &b""[..],
            b"5",
            b"5\r",
            b"5;ext",
            b"5\r\n",
            b"5\r\nhel",
            b"5\r\nhello",
            b"5\r\nhello\r",
            b"5\r\nhello\r\n",
            b"5\r\nhello\r\n0",
            b"5\r\nhello\r\n0\r\n",
            b"5\r\nhello\r\n0\r\n\r",
            b"5\r\nhello\r\n0\r\nX-T: 1",
            b"5\r\nhello\r\n0\r\nX-T: 1\r\n",
        ] {
            assert_eof(wire);
        }
    }

    #[test]
    fn an_error_sticks() {
        let mut decoder = Decoder::new(&b"5\r\nhel"[..]);
        let mut body = Vec::new();
        let err = decoder.read_to_end(&mut body).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(body, b"hel");
        let err = decoder.read(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut decoder = Decoder::new(&b"zz\r\n0\r\n\r\n"[..]);
        for _ in 0..2 {
            let err = decoder.read(&mut [0; 8]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn the_sources_errors_pass_through_unchanged_and_reading_resumes() {
        use io::ErrorKind::{ConnectionReset, Interrupted, TimedOut, WouldBlock};
        // An error at every kind of place: in a size line, in data, between
        // data and its CRLF, in the CRLF, in a trailer line, before the end.
        let steps = vec![
            Err(WouldBlock),
            Ok(&b"5"[..]),
            Err(TimedOut),
            Ok(b";e=1\r"),
            Err(Interrupted),
            Ok(b"\nhel"),
            Err(WouldBlock),
            Ok(b"lo"),
            Err(ConnectionReset),
            Ok(b"\r"),
            Err(TimedOut),
            Ok(b"\n6\r\n world\r\n0\r\nX-"),
            Err(WouldBlock),
            Ok(b"T: 1\r\n"),
            Err(WouldBlock),
            Ok(b"\r\nNEXT"),
        ];
        let mut decoder = Decoder::new(Scripted::new(steps));
        let mut body = Vec::new();
        let mut kinds = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(err) => {
                    assert_eq!(err.to_string(), "scripted");
                    kinds.push(err.kind());
                }
            }
        }
        assert_eq!(body, b"hello world");
        assert_eq!(
            kinds,
            [
                WouldBlock,
                TimedOut,
                Interrupted,
                WouldBlock,
                ConnectionReset,
                TimedOut,
                WouldBlock,
                WouldBlock
            ]
        );
        let mut rest = Vec::new();
        decoder.into_inner().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn read_to_end_gives_the_source_error_kind() {
        let steps = vec![Ok(&b"5\r\nhel"[..]), Err(io::ErrorKind::WouldBlock)];
        let mut body = Vec::new();
        let err = Decoder::new(Scripted::new(steps))
            .read_to_end(&mut body)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(body, b"hel");
    }

    #[test]
    fn remaining_chunks_size_follows_the_chunk() {
        let mut decoder = Decoder::new(&b"5\r\nhello\r\n0\r\n\r\n"[..]);
        assert_eq!(decoder.remaining_chunks_size(), None);
        let mut buf = [0u8; 2];
        assert_eq!(decoder.read(&mut buf).unwrap(), 2);
        assert_eq!(decoder.remaining_chunks_size(), Some(3));
        assert_eq!(decoder.read(&mut buf).unwrap(), 2);
        assert_eq!(decoder.read(&mut buf).unwrap(), 1);
        assert_eq!(decoder.remaining_chunks_size(), None);
        assert_eq!(decoder.read(&mut buf).unwrap(), 0);
        assert_eq!(decoder.read(&mut []).unwrap(), 0);
    }

    #[test]
    fn decoder_and_encoder_are_send_when_their_io_is() {
        fn send<T: Send + 'static>() {}
        send::<Decoder<std::net::TcpStream>>();
        send::<Encoder<std::net::TcpStream>>();
        send::<Box<Decoder<io::BufReader<std::net::TcpStream>>>>();
    }

    // --- encoder

    fn encode(data: &[u8], chunks: usize, writes: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        {
            let mut encoder = Encoder::with_chunks_size(&mut wire, chunks);
            for piece in data.chunks(writes.max(1)) {
                encoder.write_all(piece).unwrap();
            }
        }
        wire
    }

    #[test]
    fn the_encoder_writes_valid_chunks_and_the_last_chunk_on_drop() {
        assert_eq!(
            encode(b"hello world", 5, 100),
            b"5\r\nhello\r\n5\r\n worl\r\n1\r\nd\r\n0\r\n\r\n"
        );
        assert_eq!(encode(b"", 5, 1), b"0\r\n\r\n");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let wire = encode(&data, 8192, 100_000);
        assert!(wire.starts_with(b"2000\r\n"));
        assert!(wire.ends_with(b"\r\n0\r\n\r\n"));
        assert_eq!(decode(&wire).unwrap(), data);
    }

    #[test]
    fn the_encoders_output_decodes_back() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
        for chunks in [0, 1, 2, 15, 16, 17, 255, 256, 4096, 8192, 1 << 20] {
            for writes in [1, 3, 1000, 8192, 20_000] {
                let wire = encode(&data, chunks, writes);
                assert_eq!(decode(&wire).unwrap(), data, "{chunks} {writes}");
                assert_eq!(decode_with(&wire, 7).unwrap(), data);
            }
        }
        let mut wire = Vec::new();
        {
            let mut encoder = Encoder::new(&mut wire);
            io::copy(&mut Cursor::new(&data), &mut encoder).unwrap();
        }
        assert_eq!(decode(&wire).unwrap(), data);
    }

    #[test]
    fn a_flush_sends_what_is_gathered() {
        let mut encoder = Encoder::new(Vec::new());
        encoder.write_all(b"abc").unwrap();
        assert_eq!(encoder.get_ref(), b"");
        encoder.flush().unwrap();
        assert_eq!(encoder.get_ref(), b"3\r\nabc\r\n");
        encoder.flush().unwrap();
        assert_eq!(encoder.get_ref(), b"3\r\nabc\r\n");
        encoder.write_all(b"0123456789abcdefg").unwrap();
        encoder.flush().unwrap();
        assert_eq!(
            encoder.get_ref(),
            b"3\r\nabc\r\n11\r\n0123456789abcdefg\r\n"
        );

        let mut wire = Vec::new();
        {
            let mut encoder = Encoder::with_flush_after_write(&mut wire);
            encoder.write_all(b"ab").unwrap();
            assert_eq!(encoder.get_ref().as_slice(), b"2\r\nab\r\n");
            encoder.write_all(b"cd").unwrap();
        }
        assert_eq!(wire, b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n");
    }

    /// An output that takes `room` bytes, then fails.
    struct Failing {
        written: Vec<u8>,
        room: usize,
    }

    impl Write for Failing {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = data.len().min(self.room);
            self.written.extend_from_slice(&data[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_failed_write_the_encoder_writes_nothing_more() {
        let mut output = Failing {
            written: Vec::new(),
            room: 4,
        };
        {
            let mut encoder = Encoder::with_chunks_size(&mut output, 3);
            let err = encoder.write_all(b"abcdef").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            assert!(encoder.write(b"x").is_err());
            assert!(encoder.flush().is_err());
            encoder.get_mut().room = 100;
        }
        assert_eq!(output.written, b"3\r\na");
    }
}
