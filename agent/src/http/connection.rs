//! [`HttpConnection`]: both directions of one TCP connection, who sends requests, and when the
//! connection stops being HTTP.

use super::head::{self, StartCheck};
use super::pairing::{Pairing, Sink};
use super::stream::Stream;
use super::{Chunk, Direction, Exchange, Limits, MessageKind, ParseStats, Started};

/// With the role unknown, the direction changes this often without a message start at any chunk
/// start before the connection is taken for another protocol. HTTP/1 lines up with syscalls: the
/// first chunk after a turn of the conversation begins a request or a response, so an HTTP
/// connection joined mid-message is in sync after one or two turns.
const TURNS_BEFORE_NOT_HTTP: u32 = 4;
/// With the role unknown, this many bytes moving without a message start at any chunk start also
/// make it another protocol: a one-way stream has no turns, and until the parser gives up, the
/// kernel copies it. An HTTP connection joined in the middle of a body longer than this is lost
/// (its later requests too), the price of not copying every bulk stream on the node.
const BYTES_BEFORE_NOT_HTTP: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Role unknown: waiting for a chunk that starts with a request or status line.
    Learning {
        last: Option<Direction>,
        turns: u32,
        moved: u64,
    },
    Http,
    /// Another protocol from the start.
    NotHttp,
    /// 101 Switching Protocols or a CONNECT tunnel.
    Upgraded,
    Closed,
}

/// Parses one TCP connection of a traced process into HTTP/1.x exchanges.
#[derive(Debug)]
pub struct HttpConnection {
    life: Life,
    requests_from: Direction,
    requests: Stream,
    responses: Stream,
    pairing: Pairing,
}

impl HttpConnection {
    /// `requests_from`: the direction requests travel if the kernel knew the role (accept →
    /// Some(Ingress), connect → Some(Egress)); the connection is then seen from its first byte.
    /// None for connections that existed before sonde started: the role is learnt from the first
    /// chunk that starts with a request line (its direction) or a status line (the other one).
    pub fn new(requests_from: Option<Direction>, limits: Limits) -> Self {
        let max_head_bytes = limits.max_head_bytes.max(64);
        let known = requests_from.is_some();
        let life = if known { Life::Http } else { Life::Learning { last: None, turns: 0, moved: 0 } };
        let requests_from = requests_from.unwrap_or(Direction::Ingress);
        Self {
            life,
            requests_from,
            requests: Stream::new(MessageKind::Request, known, max_head_bytes),
            responses: Stream::new(MessageKind::Response, known, max_head_bytes),
            pairing: Pairing::new(requests_from, known, limits.max_pipelined.max(1)),
        }
    }

    /// Starts over, as `new` would, after bytes of the connection were lost or when the TLS hooks
    /// take it over: what the parser held is dropped. Request ordinals go on from where they were,
    /// so that an ordinal names one request for the connection's whole life, and a request keyed by
    /// it elsewhere (the linker) is never mistaken for one read after the restart.
    pub fn restart(&mut self, requests_from: Option<Direction>, limits: Limits) {
        let next = self.pairing.next_ordinal();
        *self = Self::new(requests_from, limits);
        self.pairing.continue_ordinals_from(next);
    }

    /// One read (Ingress) or write (Egress) of the traced process. Exchanges completed by it are
    /// appended to `out`.
    pub fn feed(&mut self, direction: Direction, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        let captured = chunk.data.len() as u64;
        let gap = u64::from(chunk.len).saturating_sub(captured);
        if captured + gap == 0 {
            return;
        }
        match self.life {
            Life::Http => {}
            Life::Learning { last, turns, moved } => {
                let requests_from = if head::check_start(MessageKind::Request, chunk.data) == StartCheck::Yes
                {
                    direction
                } else if head::check_start(MessageKind::Response, chunk.data) == StartCheck::Yes {
                    opposite(direction)
                } else {
                    let turns = turns + u32::from(last.is_some_and(|d| d != direction));
                    let moved = moved + u64::from(chunk.len);
                    self.pairing.stats_mut().skipped_bytes += captured;
                    self.life = if turns >= TURNS_BEFORE_NOT_HTTP || moved >= BYTES_BEFORE_NOT_HTTP {
                        self.stop(Life::NotHttp);
                        Life::NotHttp
                    } else {
                        Life::Learning { last: Some(direction), turns, moved }
                    };
                    return;
                };
                self.requests_from = requests_from;
                self.pairing.set_request_direction(requests_from);
                self.life = Life::Http;
            }
            Life::NotHttp | Life::Upgraded | Life::Closed => return,
        }
        let stream = if direction == self.requests_from { &mut self.requests } else { &mut self.responses };
        stream.feed(chunk.ts_ns, chunk.data, gap, &mut Sink::new(&mut self.pairing, out, chunk.tid));
        if self.pairing.upgraded() {
            self.stop(Life::Upgraded);
        } else if self.pairing.not_http() {
            self.stop(Life::NotHttp);
        }
    }

    /// The connection closed at `ts_ns`. A response delimited by close, or whose end was unknown,
    /// ends at its last byte seen (end_ns is always the timestamp of a chunk, so `ts_ns` serves only
    /// to keep the signature honest about when this happens); a response cut short is reported as
    /// far as it came; requests still waiting for a response are reported with `response: None`.
    /// Later calls to `feed` are ignored.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let _ = ts_ns;
        if self.life == Life::Closed {
            return;
        }
        self.pairing.close(out);
        self.stop(Life::Closed);
    }

    /// Nothing arrived for a while: a response whose end cannot be known (delimited by close, or
    /// framing lost) is finished at its last byte seen, and so is a request body that its response
    /// overtook (an early 413). The caller calls this for connections idle longer than a timeout.
    pub fn flush_idle(&mut self, out: &mut Vec<Exchange>) {
        self.pairing.flush_idle(out);
    }

    /// Requests whose head completed since the last call, in order.
    pub fn take_started(&mut self) -> std::vec::Drain<'_, Started> {
        self.pairing.take_started()
    }

    /// Counters for self-observability: parse errors, resyncs, dropped requests, …
    pub fn stats(&self) -> &ParseStats {
        self.pairing.stats()
    }

    /// True while feeding the connection may still yield exchanges. False, for good, once it
    /// switched protocols (101, CONNECT tunnel), once it turned out to be another protocol (with a
    /// known role: its first bytes do not start an HTTP/1.x request; with an unknown role: the
    /// conversation turned around four times, or 4 MiB moved, without any chunk starting an HTTP
    /// message), and after `close`. The caller may then stop feeding it; feeding it anyway is cheap
    /// and harmless.
    pub fn is_http(&self) -> bool {
        matches!(self.life, Life::Learning { .. } | Life::Http)
    }

    /// True once a request or status line was seen: the connection carried HTTP at some point.
    pub fn seen_http(&self) -> bool {
        self.pairing.seen_start()
    }

    /// Body bytes still to come in `direction` that the message's framing announced (see
    /// `Stream::body_left`); None when not known, or the connection is not (yet) parsed as HTTP.
    pub fn body_left(&self, direction: Direction) -> Option<u64> {
        if self.life != Life::Http {
            return None;
        }
        let stream = if direction == self.requests_from { &self.requests } else { &self.responses };
        stream.body_left()
    }

    /// Requests waiting for their response (or for the end of their own body).
    pub fn pending_requests(&self) -> usize {
        self.pairing.pending()
    }

    /// Bytes reserved for heads in progress: with `pending_requests`, a bound check for tests.
    pub fn buffered_bytes(&self) -> usize {
        self.requests.buffered() + self.responses.buffered()
    }

    fn stop(&mut self, life: Life) {
        self.life = life;
        self.requests.stop();
        self.responses.stop();
    }
}

fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}
