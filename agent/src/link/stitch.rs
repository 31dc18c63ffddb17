//! Same-host stitching: when both ends of a TCP connection are traced processes on this host, the
//! client's view of the connection is (local A, remote B) and the server's is (local B, remote A).
//! Each client request leaves a record under its 4-tuple; the server request with the same
//! method and target on the mirrored 4-tuple takes the client span as its parent.
//!
//! Requests on one connection are answered in order (HTTP/1.x), so the oldest matching record
//! is the one; records skipped over belong to requests the server side never reported, and go.

use std::{collections::VecDeque, net::SocketAddr};

use foldhash::HashMap;

use crate::{
    conn::ConnInfo,
    span::model::{SpanId, TraceFlags, TraceId},
};

/// (client address, server address) of one TCP connection.
pub type TupleKey = (SocketAddr, SocketAddr);

/// A client request waiting for its server side.
#[derive(Clone, Copy, Debug)]
pub struct ClientRecord {
    pub fingerprint: u64,
    /// Its position on a connection seen whole (`Started::from_start`).
    pub position: Option<u32>,
    pub start_ns: u64,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: TraceFlags,
}

/// Records older than this are no longer matched: the server side would have read the request
/// long before (it is in the ring buffer microseconds after the client's write).
const RECORD_TTL_NS: u64 = 60 * 1_000_000_000;
/// Per connection: pipelining deeper than this is not stitched.
const MAX_PER_CONNECTION: usize = 32;
/// Connections with waiting records; beyond it the table starts over.
const MAX_CONNECTIONS: usize = 65_536;

#[derive(Default)]
pub struct Stitcher {
    waiting: HashMap<TupleKey, VecDeque<ClientRecord>>,
}

/// The key a client connection's records are filed under.
pub fn client_side_key(conn: &ConnInfo) -> Option<TupleKey> {
    Some((conn.local?, conn.remote?))
}

/// The key under which the client of a server connection filed its records.
pub fn server_side_key(conn: &ConnInfo) -> Option<TupleKey> {
    Some((conn.remote?, conn.local?))
}

impl Stitcher {
    pub fn record(&mut self, tuple: TupleKey, record: ClientRecord) {
        if self.waiting.len() >= MAX_CONNECTIONS && !self.waiting.contains_key(&tuple) {
            self.waiting.clear();
        }
        let queue = self.waiting.entry(tuple).or_default();
        if queue.len() >= MAX_PER_CONNECTION {
            queue.pop_front();
        }
        queue.push_back(record);
    }

    /// The oldest record on `tuple` for the same method and target — and the same position on the
    /// connection, when both ends know it — removing it and any older.
    pub fn take(
        &mut self,
        tuple: &TupleKey,
        fingerprint: u64,
        position: Option<u32>,
    ) -> Option<ClientRecord> {
        let queue = self.waiting.get_mut(tuple)?;
        let same_place = |r: &ClientRecord| match (r.position, position) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let at = queue.iter().position(|r| r.fingerprint == fingerprint && same_place(r))?;
        let record = queue.drain(..=at).next_back();
        if queue.is_empty() {
            self.waiting.remove(tuple);
        }
        record
    }

    /// Records on `tuple` of trace `from` now belong to trace `into` (see `super::open`).
    pub fn adopt(&mut self, tuple: &TupleKey, from: TraceId, into: TraceId, flags: TraceFlags) {
        for record in self.waiting.get_mut(tuple).into_iter().flatten() {
            if record.trace_id == from {
                record.trace_id = into;
                record.flags = flags;
            }
        }
    }

    pub fn sweep(&mut self, now_ns: u64) {
        self.waiting.retain(|_, queue| {
            queue.retain(|r| now_ns.saturating_sub(r.start_ns) < RECORD_TTL_NS);
            !queue.is_empty()
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}
