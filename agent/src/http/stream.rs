//! One direction of a connection: finds message heads, follows body framing across chunks and
//! capture gaps, and gets back in sync after garbage. It reports what it sees to a [`Sink`], which
//! keeps the books per message and decides body framing from what the other direction said.

use super::chunked::{Chunked, FramingLost};
use super::head::{self, HeadEnd, StartCheck};
use super::pairing::{Plan, Sink};
use super::{MessageKind, ParseError};

/// Head buffers grown past this are given back between messages, so that a connection that once
/// saw a huge head does not keep its memory while idle.
const KEEP_HEAD_CAPACITY: usize = 8 * 1024;

#[derive(Clone, Debug)]
enum State {
    /// Between messages (`buf` empty) or inside a head (`buf` holds it so far).
    Head {
        /// Where to resume the search for the head's end.
        scan: usize,
        /// Timestamp of the chunk holding the message's first byte.
        start_ns: u64,
        /// The bytes were confirmed to begin a message (and the sink was told).
        started: bool,
    },
    /// Inside a Content-Length body.
    Length { left: u64 },
    /// Inside a chunked body.
    Chunked(Chunked),
    /// Place lost, or a body that runs until something else ends it: bytes go to the open message
    /// (if any) until a chunk whose captured data begins with a message start.
    Skip(SkipWhy),
    /// Not HTTP any more (upgrade), or not HTTP at all: everything is ignored.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SkipWhy {
    /// Sonde joined an existing connection and has not seen a message start yet.
    Joining,
    /// Bytes were malformed.
    Error,
    /// A capture gap hid the framing.
    Lost,
    /// A response with neither Content-Length nor chunked coding: it ends at close.
    UntilClose,
}

impl SkipWhy {
    fn is_resync(self) -> bool {
        matches!(self, Self::Error | Self::Lost)
    }

    /// Bytes skipped for these reasons belong to no message.
    fn is_out_of_sync(self) -> bool {
        matches!(self, Self::Joining | Self::Error)
    }
}

#[derive(Clone, Debug)]
pub(super) struct Stream {
    kind: MessageKind,
    state: State,
    buf: Vec<u8>,
    max_head_bytes: usize,
}

impl Stream {
    /// `in_sync`: the next byte starts a message (a connection seen from its beginning).
    pub(super) fn new(kind: MessageKind, in_sync: bool, max_head_bytes: usize) -> Self {
        let state = if in_sync { Self::between_messages() } else { State::Skip(SkipWhy::Joining) };
        Self { kind, state, buf: Vec::new(), max_head_bytes }
    }

    fn between_messages() -> State {
        State::Head { scan: 0, start_ns: 0, started: false }
    }

    /// Body bytes of the current message still to come, when its framing says how many: the rest
    /// of a Content-Length body, or of the chunk a chunked body is in.
    pub(super) fn body_left(&self) -> Option<u64> {
        match &self.state {
            State::Length { left } => Some(*left),
            State::Chunked(decoder) => decoder.data_left(),
            _ => None,
        }
    }

    /// Bytes held for a head in progress.
    pub(super) fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Ignores everything from now on and frees the head buffer.
    pub(super) fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = Vec::new();
    }

    /// One chunk: `data` was captured, then `gap` more bytes went by uncaptured.
    pub(super) fn feed(&mut self, ts: u64, data: &[u8], gap: u64, sink: &mut Sink<'_>) {
        if let State::Skip(why) = self.state {
            // Resync happens only at chunk starts: a syscall boundary is where a message most
            // likely begins, and it keeps random bytes in the middle of a body from looking like one.
            if head::check_start(self.kind, data) != StartCheck::Yes {
                if why.is_out_of_sync() {
                    sink.stats().skipped_bytes += data.len() as u64;
                }
                sink.bytes(self.kind, data.len() as u64 + gap, ts);
                return;
            }
            if why.is_resync() {
                sink.stats().resyncs += 1;
            }
            sink.end(self.kind);
            self.state = Self::between_messages();
        }
        let mut pos = 0;
        while pos < data.len() {
            let used = match &mut self.state {
                State::Head { .. } => self.feed_head(ts, &data[pos..], sink),
                State::Length { left } => {
                    let take = (*left).min((data.len() - pos) as u64);
                    *left -= take;
                    sink.bytes(self.kind, take, ts);
                    if *left == 0 {
                        self.message_ends(sink);
                    }
                    take as usize
                }
                State::Chunked(decoder) => match decoder.advance(&data[pos..]) {
                    Ok(progress) => {
                        sink.bytes(self.kind, progress.payload, ts);
                        if progress.done {
                            self.message_ends(sink);
                        }
                        progress.used
                    }
                    Err(reason) => {
                        sink.error(ParseError::BadChunkedBody { kind: self.kind, reason });
                        sink.unknown_end(self.kind);
                        self.state = State::Skip(SkipWhy::Error);
                        0
                    }
                },
                State::Skip(why) => {
                    // Mid-chunk: the rest of it belongs to the open message, if any.
                    let rest = (data.len() - pos) as u64;
                    if why.is_out_of_sync() {
                        sink.stats().skipped_bytes += rest;
                    }
                    sink.bytes(self.kind, rest, ts);
                    data.len() - pos
                }
                State::Stopped => return,
            };
            if used == 0 && matches!(self.state, State::Head { .. } | State::Length { .. }) {
                // Every state consumes or moves on; this only guards against looping forever.
                debug_assert!(used > 0, "no progress in {:?}", self.state);
                break;
            }
            pos += used;
        }
        if gap > 0 {
            self.skip_gap(ts, gap, sink);
        }
    }

    /// Bytes at a message boundary or inside a head; returns how many of `data` were used.
    fn feed_head(&mut self, ts: u64, data: &[u8], sink: &mut Sink<'_>) -> usize {
        let State::Head { scan, start_ns, started } = &mut self.state else {
            return 0;
        };
        let mut used = 0;
        if self.buf.is_empty() {
            // RFC 9112 §2.2: a recipient should ignore empty lines before a start line (some
            // clients send a CRLF after a POST body).
            used = data.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            if used == data.len() {
                return used;
            }
            *start_ns = ts;
            // The usual case, a whole head in one chunk, is parsed where it lies, not copied.
            let rest = &data[used..];
            let within = &rest[..rest.len().min(self.max_head_bytes)];
            if head::check_start(self.kind, within) == StartCheck::Yes
                && let HeadEnd::At(end) = head::find_head_end(within, 0)
            {
                *started = true;
                sink.start(self.kind, *start_ns);
                let parsed = head::parse(self.kind, &within[..end], false);
                self.head_parsed(ts, parsed, sink);
                return used + end;
            }
        }
        let old_len = self.buf.len();
        let take = (self.max_head_bytes - old_len).min(data.len() - used);
        self.buf.extend_from_slice(&data[used..used + take]);
        if !*started {
            match head::check_start(self.kind, &self.buf) {
                StartCheck::Yes => {
                    *started = true;
                    sink.start(self.kind, *start_ns);
                }
                StartCheck::NeedMore => return used + take,
                StartCheck::No => {
                    let dropped = self.buf.len() + (data.len() - used - take);
                    sink.stats().skipped_bytes += dropped as u64;
                    self.buf.clear();
                    sink.error(ParseError::NotAMessageStart { kind: self.kind });
                    self.state = State::Skip(SkipWhy::Error);
                    return data.len();
                }
            }
        }
        match head::find_head_end(&self.buf, *scan) {
            HeadEnd::At(end) => {
                self.buf.truncate(end);
                self.finish_head(ts, false, sink);
                // The end lies past the old bytes: they were searched (or were a bare start prefix).
                used + end.saturating_sub(old_len)
            }
            HeadEnd::Resume(at) => {
                *scan = at;
                if self.buf.len() >= self.max_head_bytes {
                    self.head_fails(
                        ParseError::HeadTooLarge { kind: self.kind, limit: self.max_head_bytes },
                        sink,
                    );
                    return data.len();
                }
                used + take
            }
        }
    }

    /// The head in `buf` is complete, or as complete as the capture allows (`truncated`).
    fn finish_head(&mut self, ts: u64, truncated: bool, sink: &mut Sink<'_>) {
        let parsed = head::parse(self.kind, &self.buf, truncated);
        self.release_buf();
        self.head_parsed(ts, parsed, sink);
    }

    /// What follows a head: its body, or the next message.
    fn head_parsed(&mut self, ts: u64, parsed: Result<head::Head, ParseError>, sink: &mut Sink<'_>) {
        let State::Head { start_ns, .. } = self.state else {
            return;
        };
        let head = match parsed {
            Ok(head) => head,
            Err(e) => return self.head_fails(e, sink),
        };
        self.state = match sink.head(head, start_ns, ts) {
            Plan::NoBody | Plan::Length(0) => {
                sink.end(self.kind);
                Self::between_messages()
            }
            Plan::Length(n) => State::Length { left: n },
            Plan::Chunked => State::Chunked(Chunked::new(self.max_head_bytes)),
            Plan::UntilClose => {
                sink.unknown_end(self.kind);
                State::Skip(SkipWhy::UntilClose)
            }
            Plan::Unknown => {
                sink.unknown_end(self.kind);
                State::Skip(SkipWhy::Lost)
            }
            Plan::Upgrade => {
                self.stop();
                State::Stopped
            }
        };
    }

    /// A message started but its head is unusable.
    fn head_fails(&mut self, error: ParseError, sink: &mut Sink<'_>) {
        self.release_buf();
        sink.error(error);
        sink.bad_head(self.kind);
        self.state = State::Skip(SkipWhy::Error);
    }

    fn message_ends(&mut self, sink: &mut Sink<'_>) {
        sink.end(self.kind);
        self.state = Self::between_messages();
    }

    fn release_buf(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > KEEP_HEAD_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// `gap` bytes went by uncaptured after the captured part of a chunk.
    fn skip_gap(&mut self, ts: u64, gap: u64, sink: &mut Sink<'_>) {
        match &mut self.state {
            State::Head { started: true, .. } => {
                // The gap began inside the head: what was captured is all there is.
                sink.stats().truncated_heads += 1;
                self.finish_head(ts, true, sink);
                match self.state {
                    // The message ended with its head (e.g. a 204): the next one may start in the gap.
                    State::Head { .. } => self.lose_place(sink),
                    // Unreachable with a truncated head (its framing is unknown), kept total.
                    State::Length { .. } | State::Chunked(_) => {
                        sink.unknown_end(self.kind);
                        self.lose_place(sink);
                    }
                    State::Skip(_) | State::Stopped => {}
                }
            }
            State::Head { .. } => {
                // Between messages, or too few bytes to tell a start: a message may begin in the gap.
                self.buf.clear();
                self.lose_place(sink);
            }
            State::Length { left } => {
                let take = (*left).min(gap);
                *left -= take;
                sink.bytes(self.kind, take, ts);
                if *left == 0 {
                    self.message_ends(sink);
                    if gap > take {
                        self.lose_place(sink);
                    }
                }
            }
            State::Chunked(decoder) => match decoder.skip_gap(gap) {
                Ok(payload) => sink.bytes(self.kind, payload, ts),
                Err(FramingLost) => {
                    // Counted as body although some of it is framing: an estimate from here on.
                    sink.bytes(self.kind, gap, ts);
                    sink.unknown_end(self.kind);
                    self.lose_place(sink);
                }
            },
            // Uncaptured, so not in skipped_bytes; the open message (if any) counts it.
            State::Skip(_) => sink.bytes(self.kind, gap, ts),
            State::Stopped => {}
        }
    }

    fn lose_place(&mut self, sink: &mut Sink<'_>) {
        sink.stats().framing_lost += 1;
        self.state = State::Skip(SkipWhy::Lost);
    }
}
