//! Message heads: where one may start, where it ends, and what it says (RFC 9112 §2–§6).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::{MessageKind, ParseError, RequestHead, ResponseHead};

/// Request methods accepted at a message start, each with the SP that follows it. Only these are
/// trusted, so random bytes, TLS records and other protocols rarely pass for a request; extension
/// methods (WebDAV, …) are the price.
const METHODS: [&[u8]; 9] =
    [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"CONNECT ", b"OPTIONS ", b"TRACE ", b"PATCH "];

/// Every HTTP/1.x status line starts so; HTTP/0.9 responses have no status line at all.
const STATUS_PREFIX: &[u8] = b"HTTP/1.";

/// httparse fills a fixed array: a head with more fields is a parse error, not an allocation.
const MAX_HEADERS: usize = 128;

/// Whether bytes begin a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StartCheck {
    Yes,
    /// The bytes so far are a prefix of a message start.
    NeedMore,
    No,
}

/// Whether `bytes` begin a message of `kind`.
pub(super) fn check_start(kind: MessageKind, bytes: &[u8]) -> StartCheck {
    let candidates: &[&[u8]] = match kind {
        MessageKind::Request => &METHODS,
        MessageKind::Response => &[STATUS_PREFIX],
    };
    let mut verdict = StartCheck::No;
    for candidate in candidates {
        if bytes.starts_with(candidate) {
            return StartCheck::Yes;
        }
        if candidate.starts_with(bytes) {
            verdict = StartCheck::NeedMore;
        }
    }
    verdict
}

/// Where the search for the end of a head stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadEnd {
    /// The head is `buf[..n]`, its empty line included.
    At(usize),
    /// Not yet; search again from this index once more bytes are in.
    Resume(usize),
}

/// Finds the empty line that ends a head, searching `buf` from `from` on, so that a head arriving
/// a byte at a time costs linear time overall. Lines may end in CRLF or a bare LF, as httparse
/// accepts both (RFC 9112 §2.2 lets a recipient accept a bare LF).
pub(super) fn find_head_end(buf: &[u8], from: usize) -> HeadEnd {
    let from = from.min(buf.len());
    for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|at| from + at) {
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return HeadEnd::At(i + 2),
            (Some(b'\r'), Some(b'\n')) => return HeadEnd::At(i + 3),
            // The LF could still begin the empty line: look at it again with more bytes.
            (None, _) | (Some(b'\r'), None) => return HeadEnd::Resume(i),
            _ => {}
        }
    }
    HeadEnd::Resume(buf.len())
}

/// What a head says about the body after it (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BodyHeaders {
    pub content_length: Option<u64>,
    pub transfer_encoding: TransferEncoding,
}

impl Default for BodyHeaders {
    fn default() -> Self {
        Self { content_length: None, transfer_encoding: TransferEncoding::Absent }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TransferEncoding {
    Absent,
    /// `chunked` is the final coding.
    Chunked,
    /// Codings are present but the final one is not `chunked`.
    Other,
}

/// A parsed head: which one depends on the direction it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Head {
    Request(RequestHead, BodyHeaders),
    Response(ResponseHead, BodyHeaders),
}

/// Parses a head. `buf` is the whole head, empty line included, unless `truncated`: then it is the
/// captured prefix of a head and only its complete lines are used.
pub(super) fn parse(kind: MessageKind, buf: &[u8], truncated: bool) -> Result<Head, ParseError> {
    let buf = if truncated { complete_lines(kind, buf)? } else { Cow::Borrowed(buf) };
    // Left uninitialised: httparse writes only the fields it finds, and zeroing 4 KiB per head
    // showed up in profiles.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let config = httparse::ParserConfig::default();
    let bad = |source| ParseError::BadHead { kind, source };
    match kind {
        MessageKind::Request => {
            let mut req = httparse::Request::new(&mut []);
            match config.parse_request_with_uninit_headers(&mut req, &buf, &mut headers).map_err(bad)? {
                httparse::Status::Complete(_) => {}
                // The caller found the empty line, so httparse disagreeing means malformed bytes.
                httparse::Status::Partial => return Err(bad(httparse::Error::NewLine)),
            }
            let fields = Fields::collect(kind, req.headers)?;
            let head = RequestHead {
                method: method(req.method.unwrap_or_default()),
                target: req.path.unwrap_or_default().to_owned(),
                minor_version: req.version.unwrap_or_default(),
                host: fields.host,
                user_agent: fields.user_agent,
                traceparent: fields.traceparent,
                tracestate: fields.tracestate,
                content_length: fields.body.content_length,
                truncated,
            };
            Ok(Head::Request(head, fields.body))
        }
        MessageKind::Response => {
            let mut res = httparse::Response::new(&mut []);
            match config.parse_response_with_uninit_headers(&mut res, &buf, &mut headers).map_err(bad)? {
                httparse::Status::Complete(_) => {}
                httparse::Status::Partial => return Err(bad(httparse::Error::NewLine)),
            }
            let fields = Fields::collect(kind, res.headers)?;
            let head = ResponseHead {
                status: res.code.unwrap_or_default(),
                minor_version: res.version.unwrap_or_default(),
                content_length: fields.body.content_length,
                truncated,
            };
            Ok(Head::Response(head, fields.body))
        }
    }
}

/// The complete lines of a truncated head, closed with an empty line so httparse accepts them.
fn complete_lines(kind: MessageKind, buf: &[u8]) -> Result<Cow<'_, [u8]>, ParseError> {
    let Some(last_lf) = buf.iter().rposition(|&b| b == b'\n') else {
        return Err(ParseError::TruncatedStartLine { kind });
    };
    let mut owned = Vec::with_capacity(last_lf + 3);
    owned.extend_from_slice(&buf[..=last_lf]);
    owned.extend_from_slice(b"\r\n");
    Ok(Cow::Owned(owned))
}

/// The header fields sonde keeps.
#[derive(Default)]
struct Fields {
    host: Option<String>,
    user_agent: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    body: BodyHeaders,
}

impl Fields {
    fn collect(kind: MessageKind, headers: &[httparse::Header<'_>]) -> Result<Self, ParseError> {
        let mut fields = Self::default();
        for header in headers {
            let name = header.name;
            let value = trim(header.value);
            if name.eq_ignore_ascii_case("host") {
                fields.host.get_or_insert_with(|| lossy(value));
            } else if name.eq_ignore_ascii_case("user-agent") {
                fields.user_agent.get_or_insert_with(|| lossy(value));
            } else if name.eq_ignore_ascii_case("traceparent") {
                // W3C Trace Context §3.2: one traceparent; keep the first if a sender repeats it.
                fields.traceparent.get_or_insert_with(|| lossy(value));
            } else if name.eq_ignore_ascii_case("tracestate") {
                // W3C Trace Context §3.3: several tracestate lines are one comma-joined list.
                match &mut fields.tracestate {
                    Some(joined) => {
                        joined.push(',');
                        joined.push_str(&lossy(value));
                    }
                    None => fields.tracestate = Some(lossy(value)),
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                merge_content_length(&mut fields.body.content_length, value)
                    .ok_or(ParseError::BadContentLength { kind })?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                merge_transfer_encoding(&mut fields.body.transfer_encoding, value);
            }
        }
        Ok(fields)
    }
}

/// RFC 9110 §8.6: a Content-Length list of identical values (`42, 42`, or repeated lines) is one
/// value; anything else that is not a decimal number fitting in 64 bits is invalid (None).
fn merge_content_length(acc: &mut Option<u64>, value: &[u8]) -> Option<()> {
    for part in value.split(|&b| b == b',') {
        let n = parse_decimal(trim(part))?;
        match *acc {
            Some(prev) if prev != n => return None,
            _ => *acc = Some(n),
        }
    }
    Some(())
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// RFC 9112 §6.3: what counts is whether `chunked` is the final coding of all the field lines.
fn merge_transfer_encoding(acc: &mut TransferEncoding, value: &[u8]) {
    for coding in value.split(|&b| b == b',') {
        // A coding may carry parameters (`gzip;q=1`); its name is what comes before them.
        let name = trim(coding.split(|&b| b == b';').next().unwrap_or_default());
        if name.is_empty() {
            continue;
        }
        *acc = if name.eq_ignore_ascii_case(b"chunked") {
            TransferEncoding::Chunked
        } else {
            TransferEncoding::Other
        };
    }
}

/// The method, borrowed when the conventions name it (one allocation less per request).
fn method(wire: &str) -> Cow<'static, str> {
    super::KNOWN_METHODS
        .iter()
        .find(|&&known| known == wire)
        .map_or_else(|| Cow::Owned(wire.to_owned()), |&known| Cow::Borrowed(known))
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_starts() {
        use MessageKind::{Request as Q, Response as S};
        use StartCheck::{NeedMore, No, Yes};
        let cases: &[(MessageKind, &[u8], StartCheck)] = &[
            (Q, b"GET / HTTP/1.1", Yes),
            (Q, b"GET ", Yes),
            (Q, b"GET", NeedMore),
            (Q, b"", NeedMore),
            (Q, b"OPTIO", NeedMore),
            (Q, b"OPTIONS *", Yes),
            (Q, b"get / HTTP/1.1", No),
            (Q, b"GETX", No),
            (Q, b"PRI * HTTP/2.0", No),
            (Q, b"\x16\x03\x01\x02\x00", No),
            (Q, b"HTTP/1.1 200 OK", No),
            (S, b"HTTP/1.1 200 OK", Yes),
            (S, b"HTTP/1.0", Yes),
            (S, b"HTTP/", NeedMore),
            (S, b"HTTP/2 200", No),
            (S, b"GET / HTTP/1.1", No),
        ];
        for (kind, bytes, want) in cases {
            assert_eq!(check_start(*kind, bytes), *want, "{kind} {:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn head_end_search() {
        let cases: &[(&[u8], usize, HeadEnd)] = &[
            (b"GET / HTTP/1.1\r\n\r\nbody", 0, HeadEnd::At(18)),
            (b"GET / HTTP/1.1\n\nbody", 0, HeadEnd::At(16)),
            (b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 0, HeadEnd::At(24)),
            (b"GET / HTTP/1.1\r\n", 0, HeadEnd::Resume(15)),
            (b"GET / HTTP/1.1\r\n\r", 0, HeadEnd::Resume(15)),
            (b"GET / HTTP/1.1\r\nA", 0, HeadEnd::Resume(17)),
            (b"GET / HTTP/1.1\r\n\r\n", 15, HeadEnd::At(18)),
            (b"", 0, HeadEnd::Resume(0)),
        ];
        for (buf, from, want) in cases {
            assert_eq!(find_head_end(buf, *from), *want, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn content_length_values() {
        // (field values, Some(merged value) or None for invalid)
        type Case = (&'static [&'static [u8]], Option<Option<u64>>);
        let cases: &[Case] = &[
            (&[b"42"], Some(Some(42))),
            (&[b" 42 "], Some(Some(42))),
            (&[b"42, 42"], Some(Some(42))),
            (&[b"42", b"42"], Some(Some(42))),
            (&[b"0"], Some(Some(0))),
            (&[b"1000000000000000000"], Some(Some(1_000_000_000_000_000_000))),
            (&[b"18446744073709551615"], Some(Some(u64::MAX))),
            (&[b"18446744073709551616"], None),
            (&[b"42", b"43"], None),
            (&[b"42, 43"], None),
            (&[b"-1"], None),
            (&[b"+1"], None),
            (&[b"0x10"], None),
            (&[b""], None),
            (&[b"4 2"], None),
        ];
        for (values, want) in cases {
            let mut acc = None;
            let got = values.iter().try_for_each(|v| merge_content_length(&mut acc, v)).map(|()| acc);
            assert_eq!(got, *want, "{values:?}");
        }
    }

    #[test]
    fn transfer_encoding_values() {
        use TransferEncoding::{Absent, Chunked, Other};
        let cases: &[(&[&[u8]], TransferEncoding)] = &[
            (&[], Absent),
            (&[b"chunked"], Chunked),
            (&[b"Chunked"], Chunked),
            (&[b"gzip, chunked"], Chunked),
            (&[b"gzip", b"chunked"], Chunked),
            (&[b"chunked, gzip"], Other),
            (&[b"chunked", b"gzip"], Other),
            (&[b"gzip;q=1"], Other),
            (&[b"chunked, "], Chunked),
            (&[b""], Absent),
        ];
        for (values, want) in cases {
            let mut acc = Absent;
            values.iter().for_each(|v| merge_transfer_encoding(&mut acc, v));
            assert_eq!(acc, *want, "{values:?}");
        }
    }

    #[test]
    fn request_heads() {
        let head = |bytes: &[u8], truncated| parse(MessageKind::Request, bytes, truncated);
        let Ok(Head::Request(req, body)) = head(
            b"POST /items?q=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8.5.0\r\n\
              traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
              tracestate: a=1\r\ntracestate: b=2\r\nHOST: second\r\nContent-Length: 5\r\n\r\n",
            false,
        ) else {
            panic!("valid head rejected");
        };
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/items?q=1");
        assert_eq!(req.minor_version, 1);
        assert_eq!(req.host.as_deref(), Some("a.example"));
        assert_eq!(req.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(
            req.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(req.tracestate.as_deref(), Some("a=1,b=2"));
        assert_eq!(
            body,
            BodyHeaders { content_length: Some(5), transfer_encoding: TransferEncoding::Absent }
        );
        assert!(!req.truncated);

        // A truncated head keeps its complete lines only.
        let Ok(Head::Request(req, _)) = head(b"GET /x HTTP/1.0\r\nHost: h\r\nUser-Ag", true) else {
            panic!("truncated head rejected");
        };
        assert_eq!(
            (req.minor_version, req.host.as_deref(), req.user_agent, req.truncated),
            (0, Some("h"), None, true)
        );

        let errors: &[(&[u8], bool, ParseError)] = &[
            (b"GET /x HTT", true, ParseError::TruncatedStartLine { kind: MessageKind::Request }),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                ParseError::BadContentLength { kind: MessageKind::Request },
            ),
            (
                b"GET / HTTP/2.0\r\n\r\n",
                false,
                ParseError::BadHead { kind: MessageKind::Request, source: httparse::Error::Version },
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                false,
                ParseError::BadHead { kind: MessageKind::Request, source: httparse::Error::HeaderName },
            ),
        ];
        for (bytes, truncated, want) in errors {
            assert_eq!(head(bytes, *truncated), Err(*want), "{:?}", String::from_utf8_lossy(bytes));
        }

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            head(&many, false),
            Err(ParseError::BadHead { kind: MessageKind::Request, source: httparse::Error::TooManyHeaders })
        );
    }

    #[test]
    fn response_heads() {
        // (head, truncated, (status, minor version, Content-Length, transfer coding) or error)
        type Case = (&'static [u8], bool, Result<(u16, u8, Option<u64>, TransferEncoding), ParseError>);
        let cases: &[Case] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Ok((200, 1, Some(3), TransferEncoding::Absent)),
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\n", false, Ok((404, 0, None, TransferEncoding::Absent))),
            (b"HTTP/1.1 204\r\n\r\n", false, Ok((204, 1, None, TransferEncoding::Absent))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                false,
                Ok((200, 1, Some(9), TransferEncoding::Chunked)),
            ),
            (b"HTTP/1.1 200 OK\nServer: x\n\n", false, Ok((200, 1, None, TransferEncoding::Absent))),
            (b"HTTP/1.1 503 Busy\r\nRetry-Af", true, Ok((503, 1, None, TransferEncoding::Absent))),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                false,
                Err(ParseError::BadHead { kind: MessageKind::Response, source: httparse::Error::Status }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                false,
                Err(ParseError::BadContentLength { kind: MessageKind::Response }),
            ),
        ];
        for (bytes, truncated, want) in cases {
            let got = parse(MessageKind::Response, bytes, *truncated).map(|head| match head {
                Head::Response(h, b) => (h.status, h.minor_version, b.content_length, b.transfer_encoding),
                Head::Request(..) => unreachable!("asked for a response"),
            });
            assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }
}
