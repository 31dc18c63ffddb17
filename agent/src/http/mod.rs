//! HTTP/1.x parsing: the chunks the kernel captured on one TCP connection become request/response
//! [`Exchange`]s (RFC 9112).
//!
//! The data flow inside, one file per step:
//!
//! * `head`: where a message may start, where its head ends, what the head says.
//! * `chunked`: the `Transfer-Encoding: chunked` decoder.
//! * `stream`: one direction of a connection: heads, body framing, capture gaps, resync.
//! * `pairing`: requests queued in order, responses paired with them FIFO, exchanges released.
//! * `connection`: [`HttpConnection`], the public face: roles, upgrades, close and idle.
//! * [`traceparent`]: the W3C `traceparent` header.
//!
//! Everything here is pure: no I/O, no clock, no global state. It never panics and holds at most
//! `max_head_bytes` per direction plus `max_pipelined` request heads per connection, whatever the
//! bytes say, because the bytes come from processes sonde does not control.

mod chunked;
mod connection;
mod head;
mod pairing;
mod stream;
mod target;
pub mod traceparent;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use connection::HttpConnection;
pub use sonde_common::Direction;
pub use target::Target;

/// What one read or write syscall moved on a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Monotonic time the syscall returned.
    pub ts_ns: u64,
    /// The thread that made the syscall.
    pub tid: u32,
    /// The captured prefix of the bytes moved.
    pub data: &'a [u8],
    /// How many bytes the syscall moved: bytes `data.len()..len` went over the wire but were not
    /// captured, so their content is unknown. A `len` below `data.len()` is read as `data.len()`.
    pub len: u32,
}

/// The methods the OTel HTTP conventions name, the most used first; any other is reported as
/// `_OTHER` with the original kept.
pub const KNOWN_METHODS: &[&str] =
    &["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE", "QUERY"];

/// The head of a request, as far as sonde needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// As on the wire, e.g. `GET`; the methods most requests use are not allocated.
    pub method: Cow<'static, str>,
    /// The request-target as on the wire, query included (lossy UTF-8).
    pub target: String,
    /// HTTP/1.<minor>.
    pub minor_version: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    /// Every `tracestate` field line, joined with `,` (RFC 9110 §5.3 list semantics).
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    /// The head was not captured whole; fields beyond the captured part are missing.
    pub truncated: bool,
}

/// The head of a response, as far as sonde needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// HTTP/1.<minor>.
    pub minor_version: u8,
    pub content_length: Option<u64>,
    /// The head was not captured whole; fields beyond the captured part are missing.
    pub truncated: bool,
}

/// A request seen on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    /// Timestamp of the chunk holding the message's first byte.
    pub start_ns: u64,
    /// Timestamp of the chunk holding its last byte (the last chunk seen when its end was unknown).
    pub end_ns: u64,
    /// Payload bytes: the Content-Length body, the chunk data of a chunked body (not its framing),
    /// or, once framing was lost, every byte seen after the head (then it is an estimate).
    pub body_bytes: u64,
    /// Which request of its connection this is, counting heads from 0.
    pub ordinal: u32,
    /// The thread that read (server) or wrote (client) the request's head.
    pub tid: u32,
}

/// A response seen on the wire; timestamps and `body_bytes` as in [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub head: ResponseHead,
    pub start_ns: u64,
    pub end_ns: u64,
    pub body_bytes: u64,
}

/// A request head just completed: what the trace-context stage needs before its exchange ends
/// (a server request's id must be known while the process makes the calls it causes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// Direction the request travelled (see [`Exchange::request_direction`]).
    pub direction: Direction,
    pub ordinal: u32,
    /// The connection was seen from its first byte and nothing of it was lost: `ordinal` is the
    /// request's position on the connection, the same its other end counts (when traced too).
    pub from_start: bool,
    pub tid: u32,
    pub start_ns: u64,
    /// Method and target, hashed: the same request seen from its client and its server side
    /// has the same fingerprint.
    pub fingerprint: u64,
    pub traceparent: Option<String>,
    /// Only meaningful with a valid `traceparent` (W3C: otherwise it is ignored too).
    pub tracestate: Option<String>,
    /// An OTLP/HTTP export (`POST …/v1/traces`, `/v1/metrics` or `/v1/logs`).
    pub otlp_export: bool,
    /// The ids the kernel gave the request and put on the wire (`--context-propagation`), as the
    /// kernel sent them; the linker reads them.
    pub kernel: Option<sonde_common::propagation::ContextEvent>,
}

impl Started {
    /// Whether `head` is an OTLP/HTTP export: a process receiving those is a collector or a proxy
    /// in front of one, a process only sending them runs an SDK of its own.
    pub fn is_otlp_export(head: &RequestHead) -> bool {
        let path = Target::parse(&head.target).path;
        head.method == "POST" && ["/v1/traces", "/v1/metrics", "/v1/logs"].iter().any(|p| path.ends_with(p))
    }

    /// Method and target, hashed: what a client request and its server request have in common.
    /// Compared only within this process, so any fixed seed does.
    pub fn fingerprint_of(head: &RequestHead) -> u64 {
        use std::hash::BuildHasher as _;
        foldhash::fast::FixedState::with_seed(0).hash_one((&head.method, &head.target))
    }
}

/// One request and the final response it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Direction the request travelled: Ingress → this process is the server; Egress → the client.
    pub request_direction: Direction,
    pub request: Request,
    /// None: the connection closed (or the parser gave up) before a final response arrived.
    pub response: Option<Response>,
}

/// Bounds on what one connection may hold, whatever its peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (start line and fields, blank line included) buffered per direction; a larger
    /// one is a parse error. Values below 64 are raised to 64.
    pub max_head_bytes: usize,
    /// Requests waiting for their response; past it the oldest is dropped. At least 1.
    pub max_pipelined: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Servers cap heads at 8 KiB (nginx) to 64 KiB (Node's --max-http-header-size is 16 KiB);
            // anything the server accepts must parse here too.
            max_head_bytes: 64 * 1024,
            // Clients rarely pipeline more than a handful of requests; this only bounds memory.
            max_pipelined: 64,
        }
    }
}

/// Which of the two messages of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Response => "response",
        })
    }
}

/// Why bytes could not be parsed. The parser never returns these: it counts them in [`ParseStats`]
/// and resynchronises, because one broken message must not end the tracing of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("bytes where a {kind} must start do not start one")]
    NotAMessageStart { kind: MessageKind },
    #[error("{kind} head exceeds {limit} bytes")]
    HeadTooLarge { kind: MessageKind, limit: usize },
    #[error("{kind} head rejected")]
    BadHead {
        kind: MessageKind,
        #[source]
        source: httparse::Error,
    },
    #[error("the captured part of a {kind} head ends inside its start line")]
    TruncatedStartLine { kind: MessageKind },
    #[error("{kind} has an invalid or conflicting Content-Length")]
    BadContentLength { kind: MessageKind },
    #[error("chunked {kind} body: {reason}")]
    BadChunkedBody { kind: MessageKind, reason: &'static str },
}

/// Counters for self-observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Garbage where a message must start, rejected or oversize heads, bad Content-Length,
    /// bad chunked framing.
    pub parse_errors: u64,
    /// The last of those, for logs.
    pub last_error: Option<ParseError>,
    /// A direction that had lost its place found a message start again at a chunk start.
    pub resyncs: u64,
    /// Requests dropped from the queue because `max_pipelined` were already waiting.
    pub dropped_requests: u64,
    /// Final responses that came with no request waiting (e.g. sonde joined mid-connection).
    pub orphan_responses: u64,
    /// Heads only partly captured (the capture gap began inside them).
    pub truncated_heads: u64,
    /// Capture gaps that hid message framing (a chunk-size line, or where the next message starts).
    pub framing_lost: u64,
    /// Captured bytes dropped while looking for a message start.
    pub skipped_bytes: u64,
}

impl ParseStats {
    /// Adds what one connection counted between two readings of its stats, `before` and `after`
    /// (around a feed): totals over many connections, whose parsers come and go.
    pub fn add_since(&mut self, before: &ParseStats, after: &ParseStats) {
        self.parse_errors += after.parse_errors.saturating_sub(before.parse_errors);
        self.resyncs += after.resyncs.saturating_sub(before.resyncs);
        self.dropped_requests += after.dropped_requests.saturating_sub(before.dropped_requests);
        self.orphan_responses += after.orphan_responses.saturating_sub(before.orphan_responses);
        self.truncated_heads += after.truncated_heads.saturating_sub(before.truncated_heads);
        self.framing_lost += after.framing_lost.saturating_sub(before.framing_lost);
        self.skipped_bytes += after.skipped_bytes.saturating_sub(before.skipped_bytes);
        if after.parse_errors > before.parse_errors {
            self.last_error = after.last_error;
        }
    }
}
