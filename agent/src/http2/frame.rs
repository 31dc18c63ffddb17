//! HTTP/2 frames (RFC 9113 §4, §6) from one direction's bytes, as the kernel captured them: a
//! prefix of each read or write, the rest counted but unknown.
//!
//! The reader keeps only what sonde uses: header blocks (HEADERS or PUSH_PROMISE and their
//! CONTINUATIONs, padding and priority fields taken off), DATA lengths and END_STREAM flags,
//! RST_STREAM and GOAWAY codes, and the header table size of SETTINGS. DATA payloads are never
//! kept. Bytes that were not captured are fine inside a payload sonde does not keep; inside a
//! header block they make the block lost ([`Frame::Block`] with `whole: false`), and where a frame
//! header would be the direction can no longer be framed ([`Frame::Desync`]), and nothing more is
//! read from it.

/// What a client writes first on every HTTP/2 connection (§3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest header block sonde assembles; a longer one is read as lost.
pub const MAX_BLOCK: usize = 64 * 1024;

const FRAME_HEADER: usize = 9;
/// The payload room kept between frames; a larger frame's is freed when it ends.
const KEPT_ROOM: usize = 4096;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY_FRAME: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// Which frame began a header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Headers,
    /// A server push's request headers: no stream sonde follows, but its block changes the table.
    PushPromise,
}

/// What the reader found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A header block, assembled from its frames. `whole: false`: bytes of it were not captured
    /// (or it was longer than `MAX_BLOCK`), so `block` holds no bytes and the table's decoder
    /// must forget.
    Block {
        kind: BlockKind,
        stream: u32,
        block: Vec<u8>,
        whole: bool,
        end_stream: bool,
    },
    Data {
        stream: u32,
        len: u32,
        end_stream: bool,
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
    /// A SETTINGS frame (not an acknowledgement) that sets the header table size.
    HeaderTableSize(u32),
    /// The bytes stopped being frames sonde can follow; nothing more is read.
    Desync(&'static str),
}

#[derive(Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What to do with the current frame's payload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Kept in `payload`, to be read when the frame ends.
    Keep,
    Skip,
}

/// The frames of one direction of a connection.
pub struct FrameReader {
    /// Bytes of the preface still to come (client direction, read from its start).
    preface: usize,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// The frame whose payload is being read.
    current: Option<(FrameHeader, Payload)>,
    remaining: usize,
    payload: Vec<u8>,
    /// Bytes of the current payload were not captured.
    payload_cut: bool,
    /// The header block being assembled: (kind, stream, end_stream, whole).
    block: Option<(BlockKind, u32, bool, bool)>,
    block_bytes: Vec<u8>,
    desync: bool,
}

impl FrameReader {
    /// A reader of a direction that starts with the client preface (`preface`) or with a frame.
    pub fn new(preface: bool) -> Self {
        FrameReader {
            preface: if preface { PREFACE.len() } else { 0 },
            header: [0; FRAME_HEADER],
            header_len: 0,
            current: None,
            remaining: 0,
            payload: Vec::new(),
            payload_cut: false,
            block: None,
            block_bytes: Vec::new(),
            desync: false,
        }
    }

    /// Whether the direction stopped being readable.
    pub fn desynced(&self) -> bool {
        self.desync
    }

    /// Bytes held between calls (bounded by `MAX_BLOCK` and the largest payload kept).
    pub fn held_bytes(&self) -> usize {
        self.payload.capacity() + self.block_bytes.capacity()
    }

    /// Reads `data`, then `uncaptured` bytes that moved but were not captured.
    pub fn feed(&mut self, mut data: &[u8], uncaptured: usize, out: &mut Vec<Frame>) {
        while !data.is_empty() && !self.desync {
            let used = self.take(data, out);
            data = &data[used..];
        }
        if uncaptured > 0 && !self.desync {
            self.skip(uncaptured, out);
        }
    }

    /// Consumes a prefix of `data`; returns its length.
    fn take(&mut self, data: &[u8], out: &mut Vec<Frame>) -> usize {
        if self.preface > 0 {
            let at = PREFACE.len() - self.preface;
            let n = self.preface.min(data.len());
            if data[..n] != PREFACE[at..at + n] {
                self.fail("the client preface is wrong", out);
                return data.len();
            }
            self.preface -= n;
            return n;
        }
        if self.current.is_none() {
            let n = (FRAME_HEADER - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            if self.header_len == FRAME_HEADER {
                self.header_len = 0;
                self.begin(out);
            }
            return n;
        }
        let n = self.remaining.min(data.len());
        if matches!(self.current, Some((_, Payload::Keep))) {
            self.payload.extend_from_slice(&data[..n]);
        }
        self.remaining -= n;
        if self.remaining == 0 {
            self.end(out);
        }
        n
    }

    /// `n` bytes moved that were not captured: inside a payload they only count.
    fn skip(&mut self, mut n: usize, out: &mut Vec<Frame>) {
        while n > 0 && !self.desync {
            if self.current.is_none() || self.preface > 0 {
                self.fail("bytes that were not captured hold a frame header", out);
                return;
            }
            let k = self.remaining.min(n);
            self.payload_cut |= matches!(self.current, Some((_, Payload::Keep)));
            self.remaining -= k;
            n -= k;
            if self.remaining == 0 {
                self.end(out);
            }
        }
    }

    /// A frame header was read whole.
    fn begin(&mut self, out: &mut Vec<Frame>) {
        let h = &self.header;
        let frame = FrameHeader {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize,
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        };
        if self.block.is_some() && frame.kind != CONTINUATION {
            self.fail("a frame inside a header block", out);
            return;
        }
        let wrong_stream = match frame.kind {
            DATA | HEADERS | PRIORITY_FRAME | RST_STREAM | PUSH_PROMISE | CONTINUATION => frame.stream == 0,
            SETTINGS | PING | GOAWAY => frame.stream != 0,
            // WINDOW_UPDATE may be either; extension types are ignored (§5.5).
            _ => false,
        };
        if wrong_stream {
            self.fail("a frame on the wrong stream for its type", out);
            return;
        }
        let keep = match frame.kind {
            HEADERS | PUSH_PROMISE | CONTINUATION => frame.len <= MAX_BLOCK,
            RST_STREAM | GOAWAY | SETTINGS => frame.len <= 1024,
            _ => false,
        };
        self.payload.clear();
        if keep {
            self.payload.reserve_exact(frame.len);
        }
        self.payload_cut = false;
        self.current = Some((frame, if keep { Payload::Keep } else { Payload::Skip }));
        self.remaining = frame.len;
        if frame.len == 0 {
            self.end(out);
        }
    }

    /// The current frame's payload was read (or counted) whole.
    fn end(&mut self, out: &mut Vec<Frame>) {
        let Some((frame, payload)) = self.current.take() else {
            return;
        };
        let whole = payload == Payload::Keep && !self.payload_cut;
        let p = &self.payload;
        match frame.kind {
            DATA => out.push(Frame::Data {
                stream: frame.stream,
                len: frame.len as u32,
                end_stream: frame.flags & END_STREAM != 0,
            }),
            HEADERS | PUSH_PROMISE => {
                let kind = if frame.kind == HEADERS { BlockKind::Headers } else { BlockKind::PushPromise };
                let fragment = if whole { fragment(frame, p) } else { None };
                self.block_bytes.clear();
                if let Some(fragment) = fragment {
                    self.block_bytes.extend_from_slice(fragment);
                }
                self.block = Some((kind, frame.stream, frame.flags & END_STREAM != 0, fragment.is_some()));
                if frame.flags & END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            CONTINUATION => {
                let Some((_, stream, _, ref mut block_whole)) = self.block else {
                    self.fail("a CONTINUATION outside a header block", out);
                    return;
                };
                if stream != frame.stream {
                    self.fail("a CONTINUATION of another stream's block", out);
                    return;
                }
                if whole && *block_whole && self.block_bytes.len() + p.len() <= MAX_BLOCK {
                    self.block_bytes.extend_from_slice(p);
                } else {
                    *block_whole = false;
                }
                if frame.flags & END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            RST_STREAM if whole && p.len() == 4 => out.push(Frame::RstStream {
                stream: frame.stream,
                code: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            }),
            GOAWAY if whole && p.len() >= 8 => out.push(Frame::GoAway {
                last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
                code: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            }),
            SETTINGS if whole && frame.flags & ACK == 0 => {
                for setting in p.chunks_exact(6) {
                    if u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_HEADER_TABLE_SIZE {
                        let size = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        out.push(Frame::HeaderTableSize(size));
                    }
                }
            }
            _ => {}
        }
        // A large frame's room is not kept for the connection's lifetime.
        if self.payload.capacity() > KEPT_ROOM {
            self.payload = Vec::new();
        }
    }

    fn end_block(&mut self, out: &mut Vec<Frame>) {
        if let Some((kind, stream, end_stream, whole)) = self.block.take() {
            let block = std::mem::take(&mut self.block_bytes);
            let block = if whole { block } else { Vec::new() };
            out.push(Frame::Block { kind, stream, block, whole, end_stream });
        }
    }

    fn fail(&mut self, why: &'static str, out: &mut Vec<Frame>) {
        // A block begun and never ended is lost to the decoder too.
        if let Some((kind, stream, end_stream, _)) = self.block.take() {
            out.push(Frame::Block { kind, stream, block: Vec::new(), whole: false, end_stream });
        }
        self.desync = true;
        self.payload = Vec::new();
        self.block_bytes = Vec::new();
        out.push(Frame::Desync(why));
    }
}

/// The header block fragment of a whole HEADERS or PUSH_PROMISE payload: padding, priority and
/// the promised stream id taken off (§6.2, §6.6). None when the fields do not fit the payload.
fn fragment(frame: FrameHeader, payload: &[u8]) -> Option<&[u8]> {
    let (pad, mut at) = if frame.flags & PADDED != 0 { (*payload.first()? as usize, 1) } else { (0, 0) };
    if frame.kind == HEADERS && frame.flags & PRIORITY != 0 {
        at += 5;
    }
    if frame.kind == PUSH_PROMISE {
        at += 4;
    }
    payload.get(at..payload.len().checked_sub(pad)?)
}
