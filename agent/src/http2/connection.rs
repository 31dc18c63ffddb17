//! [`Http2Connection`]: both directions of one HTTP/2 connection become streams, each a request
//! and its response — with the header fields sonde reads, their timing and sizes, and how the
//! stream ended.
//!
//! Streams interleave on the connection; each direction's frames are read in order
//! ([`FrameReader`]), its header blocks decoded with that direction's table ([`Decoder`]). A block
//! in the requests' direction on a stream not yet open opens it; the other direction's first
//! block is the response (informational 1xx blocks are skipped), a later one its trailers. A
//! stream ends with END_STREAM in both directions, with RST_STREAM from either side, with a GOAWAY
//! that says it was not processed, or with the connection.

use std::collections::BTreeMap;

use sonde_common::Direction;

use super::{
    frame::{BlockKind, Frame, FrameReader},
    hpack::{Decoder, Field, Text},
};
use crate::http::Chunk;

/// The most streams followed at once per connection; past it the oldest is dropped (counted).
pub const MAX_OPEN_STREAMS: usize = 1024;

/// A request's header fields, as far as sonde could read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Fields whose name or value sonde could not read (they referenced table entries inserted
    /// before it joined, or after a loss): a field missing above may be one of them.
    pub unknown_fields: u16,
}

/// A response's header fields (trailers included), as far as sonde could read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// gRPC's status code, from the trailers or a trailers-only response.
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
    /// As in [`RequestHeaders::unknown_fields`].
    pub unknown_fields: u16,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both sides sent END_STREAM.
    Complete,
    /// RST_STREAM with this error code (RFC 9113 §7), sent by the side in `by`.
    Reset { code: u32, by: Direction },
    /// A GOAWAY said the stream was not processed, or the connection closed first.
    Cut,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    pub headers: RequestHeaders,
    /// Time of the chunk with the request's HEADERS, and of its END_STREAM (the last seen).
    pub start_ns: u64,
    pub end_ns: u64,
    /// DATA payload bytes (padding included).
    pub body_bytes: u64,
    /// The thread that read (server) or wrote (client) the request's HEADERS.
    pub tid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamResponse {
    pub headers: ResponseHeaders,
    pub start_ns: u64,
    pub end_ns: u64,
    pub body_bytes: u64,
}

/// One stream, ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamExchange {
    /// Direction the request travelled: Ingress → this process is the server.
    pub request_direction: Direction,
    pub stream: u32,
    pub request: StreamRequest,
    /// None: no response headers were seen.
    pub response: Option<StreamResponse>,
    pub ending: Ending,
}

/// A request's HEADERS just read: what trace context needs before the stream ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStarted {
    pub direction: Direction,
    pub stream: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// What the connection's parsing counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Http2Stats {
    /// Header blocks lost (bytes not captured, too long, malformed).
    pub blocks_lost: u64,
    /// Streams whose request had fields sonde could not read (joined late, or after a loss).
    pub streams_partly_known: u64,
    /// Streams dropped because `MAX_OPEN_STREAMS` were open.
    pub streams_dropped: u64,
    /// Blocks on streams sonde had not seen open (joined mid-stream).
    pub orphan_blocks: u64,
    /// Directions that stopped being readable as frames.
    pub desyncs: u64,
}

struct Stream {
    request: StreamRequest,
    request_ended: bool,
    response: Option<StreamResponse>,
    response_ended: bool,
}

/// Index of a direction in the per-direction arrays.
fn side(direction: Direction) -> usize {
    usize::from(direction == Direction::Egress)
}

/// The streams of one HTTP/2 connection.
pub struct Http2Connection {
    /// Where requests come from: Ingress for a server, Egress for a client.
    requests_from: Direction,
    readers: [FrameReader; 2],
    decoders: [Decoder; 2],
    /// Open streams by id (client-initiated ids grow, so the first is the oldest).
    streams: BTreeMap<u32, Stream>,
    /// The highest stream a request opened.
    highest_stream: Option<u32>,
    started: Vec<StreamStarted>,
    stats: Http2Stats,
    frames: Vec<Frame>,
    fields: Vec<Field>,
}

impl Http2Connection {
    /// A connection whose requests travel in `requests_from`; `from_start`: its first bytes were
    /// seen, so the requests' direction begins with the client preface and both tables are known
    /// from empty.
    pub fn new(requests_from: Direction, from_start: bool) -> Self {
        let reader = |d: Direction| FrameReader::new(from_start && d == requests_from);
        Http2Connection {
            requests_from,
            readers: [reader(Direction::Ingress), reader(Direction::Egress)],
            decoders: [Decoder::new(from_start), Decoder::new(from_start)],
            streams: BTreeMap::new(),
            highest_stream: None,
            started: Vec::new(),
            stats: Http2Stats::default(),
            frames: Vec::new(),
            fields: Vec::new(),
        }
    }

    pub fn stats(&self) -> Http2Stats {
        self.stats
    }

    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes held for frames and header tables (streams aside): bounded whatever the peer sends.
    pub fn held_bytes(&self) -> usize {
        self.readers.iter().map(FrameReader::held_bytes).sum::<usize>()
            + self.decoders.iter().map(Decoder::table_bytes).sum::<usize>()
    }

    /// Requests whose HEADERS were read since the last call.
    pub fn take_started(&mut self) -> std::vec::Drain<'_, StreamStarted> {
        self.started.drain(..)
    }

    /// One read or write of the connection; streams that ended go to `out`.
    pub fn feed(&mut self, direction: Direction, chunk: Chunk<'_>, out: &mut Vec<StreamExchange>) {
        let s = side(direction);
        let uncaptured = (chunk.len as usize).saturating_sub(chunk.data.len());
        let mut frames = std::mem::take(&mut self.frames);
        self.readers[s].feed(chunk.data, uncaptured, &mut frames);
        for frame in frames.drain(..) {
            self.frame(direction, frame, &chunk, out);
        }
        self.frames = frames;
    }

    /// The connection closed: every open stream ends, cut.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<StreamExchange>) {
        for (id, stream) in std::mem::take(&mut self.streams) {
            out.push(self.exchange(id, stream, Ending::Cut, ts_ns));
        }
    }

    fn frame(
        &mut self,
        direction: Direction,
        frame: Frame,
        chunk: &Chunk<'_>,
        out: &mut Vec<StreamExchange>,
    ) {
        let requests = direction == self.requests_from;
        match frame {
            Frame::Block { kind, stream, block, whole, end_stream } => {
                let decoder = &mut self.decoders[side(direction)];
                self.fields.clear();
                let lost = if whole {
                    // On an error the decoder forgets its table itself.
                    decoder.decode(&block, &mut self.fields).is_err()
                } else {
                    decoder.lose();
                    true
                };
                if lost {
                    self.stats.blocks_lost += 1;
                    // Nothing of the block is known; a request still counts, with nothing known.
                    self.fields.clear();
                    self.fields.push(Field { name: Text::Unknown, value: Text::Unknown });
                }
                if kind == BlockKind::PushPromise {
                    return;
                }
                if requests {
                    self.request_block(direction, stream, end_stream, chunk, out);
                } else {
                    self.response_block(stream, end_stream, chunk.ts_ns, out);
                }
            }
            Frame::Data { stream, len, end_stream } => {
                let Some(entry) = self.streams.get_mut(&stream) else {
                    return;
                };
                if requests {
                    entry.request.body_bytes += u64::from(len);
                    if end_stream {
                        entry.request_ended = true;
                        entry.request.end_ns = chunk.ts_ns;
                    }
                } else if let Some(response) = entry.response.as_mut() {
                    response.body_bytes += u64::from(len);
                    response.end_ns = chunk.ts_ns;
                    if end_stream {
                        entry.response_ended = true;
                    }
                }
                self.end_if_done(stream, out);
            }
            Frame::RstStream { stream, code } => {
                if let Some(entry) = self.streams.remove(&stream) {
                    out.push(self.exchange(
                        stream,
                        entry,
                        Ending::Reset { code, by: direction },
                        chunk.ts_ns,
                    ));
                }
            }
            Frame::GoAway { last_stream, .. } => {
                // Streams past `last_stream` were not processed by the side that sent it; with
                // requests only from one side, only the other sends GOAWAYs that cut streams.
                if !requests {
                    let cut: Vec<u32> = self.streams.range(last_stream + 1..).map(|(&id, _)| id).collect();
                    for id in cut {
                        if let Some(entry) = self.streams.remove(&id) {
                            out.push(self.exchange(id, entry, Ending::Cut, chunk.ts_ns));
                        }
                    }
                }
            }
            // A side's SETTINGS bound what the other side's encoder may use.
            Frame::HeaderTableSize(size) => self.decoders[1 - side(direction)].set_settings_limit(size),
            Frame::Desync(_) => self.stats.desyncs += 1,
        }
    }

    fn request_block(
        &mut self,
        direction: Direction,
        stream: u32,
        end_stream: bool,
        chunk: &Chunk<'_>,
        out: &mut Vec<StreamExchange>,
    ) {
        if let Some(entry) = self.streams.get_mut(&stream) {
            // Request trailers.
            if end_stream {
                entry.request_ended = true;
                entry.request.end_ns = chunk.ts_ns;
            }
            self.end_if_done(stream, out);
            return;
        }
        let headers = request_headers(&self.fields);
        // A new stream's id is above every earlier one's (§5.1.1), and its block names a method,
        // or may (fields sonde could not read). Otherwise it is the trailers of a stream opened
        // before sonde joined, or one it dropped.
        let new = self.highest_stream.is_none_or(|highest| stream > highest)
            && (headers.method.is_some() || headers.unknown_fields > 0);
        if !new {
            self.stats.orphan_blocks += 1;
            return;
        }
        self.highest_stream = Some(stream);
        if headers.unknown_fields > 0 {
            self.stats.streams_partly_known += 1;
        }
        if self.streams.len() >= MAX_OPEN_STREAMS && self.streams.pop_first().is_some() {
            self.stats.streams_dropped += 1;
        }
        self.started.push(StreamStarted {
            direction,
            stream,
            tid: chunk.tid,
            start_ns: chunk.ts_ns,
            traceparent: headers.traceparent.clone(),
            tracestate: headers.tracestate.clone(),
        });
        let request = StreamRequest {
            headers,
            start_ns: chunk.ts_ns,
            end_ns: chunk.ts_ns,
            body_bytes: 0,
            tid: chunk.tid,
        };
        self.streams.insert(
            stream,
            Stream { request, request_ended: end_stream, response: None, response_ended: false },
        );
    }

    fn response_block(&mut self, stream: u32, end_stream: bool, ts_ns: u64, out: &mut Vec<StreamExchange>) {
        let Some(entry) = self.streams.get_mut(&stream) else {
            self.stats.orphan_blocks += 1;
            return;
        };
        let fields = response_headers(&self.fields);
        match entry.response.as_mut() {
            // An informational response (1xx, never the end of the stream): the final one follows.
            None if !end_stream && fields.status.is_some_and(|s| (100..200).contains(&s)) => return,
            None => {
                entry.response =
                    Some(StreamResponse { headers: fields, start_ns: ts_ns, end_ns: ts_ns, body_bytes: 0 })
            }
            // Trailers: gRPC's status is there.
            Some(response) => {
                let h = &mut response.headers;
                h.grpc_status = fields.grpc_status.or(h.grpc_status);
                h.grpc_message = fields.grpc_message.or(h.grpc_message.take());
                h.unknown_fields += fields.unknown_fields;
                response.end_ns = ts_ns;
            }
        }
        if end_stream {
            entry.response_ended = true;
        }
        self.end_if_done(stream, out);
    }

    fn end_if_done(&mut self, stream: u32, out: &mut Vec<StreamExchange>) {
        let done = self.streams.get(&stream).is_some_and(|s| s.request_ended && s.response_ended);
        if done && let Some(entry) = self.streams.remove(&stream) {
            let ended_ns = entry.request.end_ns;
            out.push(self.exchange(stream, entry, Ending::Complete, ended_ns));
        }
    }

    /// The stream as it ended; one that did not complete was cut off at `ts_ns` (its response, if
    /// any, lasts until then).
    fn exchange(&self, stream: u32, entry: Stream, ending: Ending, ts_ns: u64) -> StreamExchange {
        let mut response = entry.response;
        if ending != Ending::Complete
            && let Some(r) = response.as_mut()
        {
            r.end_ns = r.end_ns.max(ts_ns);
        }
        StreamExchange {
            request_direction: self.requests_from,
            stream,
            request: entry.request,
            response,
            ending,
        }
    }
}

fn text(value: &Text) -> Option<String> {
    value.bytes().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn request_headers(fields: &[Field]) -> RequestHeaders {
    let mut h = RequestHeaders::default();
    for field in fields {
        let (Some(name), Some(_)) = (field.name.bytes(), field.value.bytes()) else {
            h.unknown_fields += 1;
            continue;
        };
        let slot = match name {
            b":method" => &mut h.method,
            b":path" => &mut h.path,
            b":authority" => &mut h.authority,
            b":scheme" => &mut h.scheme,
            b"content-type" => &mut h.content_type,
            b"user-agent" => &mut h.user_agent,
            b"traceparent" => &mut h.traceparent,
            b"tracestate" => &mut h.tracestate,
            _ => continue,
        };
        // The first of a repeated field wins, as for traceparent (W3C).
        if slot.is_none() {
            *slot = text(&field.value);
        }
    }
    h
}

fn response_headers(fields: &[Field]) -> ResponseHeaders {
    let mut h = ResponseHeaders::default();
    for field in fields {
        let (Some(name), Some(_)) = (field.name.bytes(), field.value.bytes()) else {
            h.unknown_fields += 1;
            continue;
        };
        let value = text(&field.value);
        match name {
            b":status" => h.status = value.and_then(|v| v.parse().ok()),
            b"content-type" => h.content_type = value,
            b"grpc-status" => h.grpc_status = value.and_then(|v| v.parse().ok()),
            b"grpc-message" => h.grpc_message = value,
            _ => {}
        }
    }
    h
}
