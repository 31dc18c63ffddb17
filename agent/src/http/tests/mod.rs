//! Tests of the module through [`HttpConnection`], on real wire bytes ([`wire`]) and on broken ones.
//! Unit tests of the pieces sit next to them (head, chunked, pairing, traceparent).

mod exchanges;
mod gaps;
mod lifecycle;
mod malformed;
mod wire;

use super::*;

/// Who wrote a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Peer {
    Client,
    Server,
}

/// Which end of the connection sonde traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum View {
    /// The traced process accepted the connection: requests arrive (Ingress).
    Server,
    /// The traced process connected: requests leave (Egress).
    Client,
}

impl View {
    pub(super) fn requests_from(self) -> Direction {
        match self {
            Self::Server => Direction::Ingress,
            Self::Client => Direction::Egress,
        }
    }

    pub(super) fn direction(self, peer: Peer) -> Direction {
        match (self, peer) {
            (Self::Server, Peer::Client) | (Self::Client, Peer::Server) => Direction::Ingress,
            (Self::Server, Peer::Server) | (Self::Client, Peer::Client) => Direction::Egress,
        }
    }
}

/// One chunk to feed.
#[derive(Clone, Debug)]
pub(super) struct Feed {
    pub peer: Peer,
    pub ts: u64,
    pub data: Vec<u8>,
    /// Bytes the syscall moved (`>= data.len()`: the rest was not captured).
    pub len: u32,
}

impl Feed {
    pub(super) fn whole(peer: Peer, ts: u64, data: &[u8]) -> Self {
        Self { peer, ts, data: data.to_vec(), len: data.len() as u32 }
    }

    /// Only the first `captured` bytes of `data` are known.
    pub(super) fn cut(peer: Peer, ts: u64, data: &[u8], captured: usize) -> Self {
        Self { peer, ts, data: data[..captured].to_vec(), len: data.len() as u32 }
    }
}

/// Segment `i` (0-based) of a conversation is fed at `(i + 1) * 1000`, its pieces at the
/// following nanoseconds, so `ts / 1000` names the segment whatever the split.
pub(super) const SEGMENT_NS: u64 = 1000;

pub(super) fn whole_segments(segs: &[(Peer, Vec<u8>)]) -> Vec<Feed> {
    segs.iter().enumerate().map(|(i, (peer, data))| Feed::whole(*peer, seg_ts(i), data)).collect()
}

/// Segment `which` split in two at `at`.
pub(super) fn split_segment(segs: &[(Peer, Vec<u8>)], which: usize, at: usize) -> Vec<Feed> {
    let mut feeds = Vec::new();
    for (i, (peer, data)) in segs.iter().enumerate() {
        if i == which {
            feeds.push(Feed::whole(*peer, seg_ts(i), &data[..at]));
            feeds.push(Feed::whole(*peer, seg_ts(i) + 1, &data[at..]));
        } else {
            feeds.push(Feed::whole(*peer, seg_ts(i), data));
        }
    }
    feeds
}

/// Every segment fed one byte per chunk.
pub(super) fn bytewise(segs: &[(Peer, Vec<u8>)]) -> Vec<Feed> {
    let mut feeds = Vec::new();
    for (i, (peer, data)) in segs.iter().enumerate() {
        for (k, byte) in data.iter().enumerate() {
            feeds.push(Feed::whole(*peer, seg_ts(i) + k as u64, std::slice::from_ref(byte)));
        }
    }
    feeds
}

pub(super) fn seg_ts(i: usize) -> u64 {
    (i as u64 + 1) * SEGMENT_NS
}

pub(super) fn owned(segs: &[(Peer, &[u8])]) -> Vec<(Peer, Vec<u8>)> {
    segs.iter().map(|(peer, data)| (*peer, data.to_vec())).collect()
}

/// The outcome of feeding a connection.
pub(super) struct Run {
    pub exchanges: Vec<Exchange>,
    pub conn: HttpConnection,
    limits: Limits,
}

impl Run {
    pub(super) fn new(requests_from: Option<Direction>) -> Self {
        Self::with_limits(requests_from, Limits::default())
    }

    pub(super) fn with_limits(requests_from: Option<Direction>, limits: Limits) -> Self {
        Self { exchanges: Vec::new(), conn: HttpConnection::new(requests_from, limits), limits }
    }

    pub(super) fn feed(&mut self, view: View, feeds: &[Feed]) -> &mut Self {
        for f in feeds {
            let chunk = Chunk { ts_ns: f.ts, tid: 1, data: &f.data, len: f.len };
            self.conn.feed(view.direction(f.peer), chunk, &mut self.exchanges);
            // The memory bound holds after every chunk, whatever came in: a head buffer per
            // direction, whose capacity Vec may have doubled past the limit.
            let head_bound = 2 * 2 * self.limits.max_head_bytes.max(64);
            assert!(self.conn.buffered_bytes() <= head_bound, "head buffers grew unbounded");
            assert!(self.conn.pending_requests() <= self.limits.max_pipelined.max(1));
        }
        self
    }

    pub(super) fn close(&mut self, ts: u64) -> &mut Self {
        self.conn.close(ts, &mut self.exchanges);
        self
    }

    pub(super) fn flush_idle(&mut self) -> &mut Self {
        self.conn.flush_idle(&mut self.exchanges);
        self
    }

    pub(super) fn stats(&self) -> &ParseStats {
        self.conn.stats()
    }
}

/// Feeds `feeds` to a fresh connection of known role, then closes it.
pub(super) fn run_closed(view: View, feeds: &[Feed]) -> Vec<Exchange> {
    let mut run = Run::new(Some(view.requests_from()));
    run.feed(view, feeds).close(u64::MAX);
    run.exchanges
}

/// An exchange with its timestamps reduced to segment numbers.
pub(super) fn coarse(ex: &Exchange) -> Exchange {
    let mut ex = ex.clone();
    ex.request.start_ns /= SEGMENT_NS;
    ex.request.end_ns /= SEGMENT_NS;
    if let Some(r) = &mut ex.response {
        r.start_ns /= SEGMENT_NS;
        r.end_ns /= SEGMENT_NS;
    }
    ex
}

/// What a table expects of one exchange: request line, segments holding the request's first and
/// last byte, its body bytes; then status, segments and body bytes of the response.
pub(super) type Summary = (String, (u64, u64), u64, Option<(u16, (u64, u64), u64)>);

pub(super) fn summary(ex: &Exchange) -> Summary {
    let ex = coarse(ex);
    let req = &ex.request;
    (
        format!("{} {}", req.head.method, req.head.target),
        (req.start_ns, req.end_ns),
        req.body_bytes,
        ex.response.map(|r| (r.head.status, (r.start_ns, r.end_ns), r.body_bytes)),
    )
}

pub(super) fn want(
    line: &str,
    req_segs: (u64, u64),
    req_body: u64,
    response: Option<(u16, (u64, u64), u64)>,
) -> Summary {
    (line.to_owned(), req_segs, req_body, response)
}

/// A small deterministic PRNG (xorshift64*), so random inputs need no extra crate and fail the
/// same way every run.
pub(super) struct Prng(u64);

impl Prng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for tests.
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
