//! Traces that may yet turn out to be part of their caller's. Both ends of a connection on this
//! host reach sonde through one ring buffer, but a write is put there once the kernel has delivered
//! its bytes: the reader, woken by them, may preempt the writer on its CPU and read, call the next
//! service, even answer, before the writer's event is recorded.
//!
//! So a server request whose lineage is needed — it ended, or it makes a call — before its
//! same-host client was seen starts its trace *open*: under a trace id of its own that may still
//! be given up for its caller's, for a short while in event time. Every span of an open trace (the
//! request's, its calls', the requests those calls caused on this host) is held, not exported,
//! until the trace settles:
//! - adopted: the client request at the same position on the connection is seen; the open trace
//!   becomes part of the client's, every member renamed and the root parented to the client span;
//! - closed: the grace ends with no such client; the trace stands as it is.
//!
//! An adoption is stricter than a stitch made in time: the open trace's root and the client
//! request must be the same position on a connection both ends saw from its first byte, with
//! nothing lost. A client request written after the server had answered (the next one on a
//! keep-alive connection, its predecessor's record lost) could otherwise take the place of the one
//! that never came — and a wrong parent is worse than none.

use std::collections::VecDeque;

use foldhash::HashMap;

use super::{RequestKey, SpanContext, stitch::TupleKey};
use crate::span::model::TraceId;

/// How long, in event time, a trace stays open: a writer preempted by the reader it woke gets its
/// CPU back within a scheduler slice or two, a few milliseconds on a busy machine; this leaves
/// ample room and keeps the spans' export late by a fraction of a second.
pub const GRACE_NS: u64 = 200_000_000;
/// Traces open at once; beyond it a request starts its trace settled (a missing link, never a
/// wrong one) — at this many, the node is serving thousands of unlinked requests a second.
pub const MAX_OPEN: usize = 4096;
/// Spans held at once in open traces; beyond it the oldest open traces close early.
pub const MAX_HELD: usize = 16_384;
/// Requests and records one open trace keeps track of; beyond it the trace closes early.
const MAX_MEMBERS: usize = 1024;

/// The request that opened a trace, and what its client request would be.
pub struct Root {
    pub key: RequestKey,
    pub pid: u32,
    /// The 4-tuple under which its client files its record.
    pub upstream: TupleKey,
    pub fingerprint: u64,
    pub position: u32,
}

/// An exchange that ended in an open trace.
pub struct Held {
    pub key: RequestKey,
    pub pid: u32,
    pub context: SpanContext,
}

pub struct OpenTrace {
    pub root: Root,
    /// Requests other than the root that joined the trace in progress: still in progress at
    /// adoption, their lineage is renamed (the root's too).
    pub members: Vec<RequestKey>,
    /// 4-tuples under which its client requests filed stitching records.
    pub records: Vec<TupleKey>,
    pub held: Vec<Held>,
}

#[derive(Default)]
pub struct OpenTraces {
    traces: HashMap<TraceId, OpenTrace>,
    /// Open traces by the 4-tuple under which their root's client would file its record.
    by_upstream: HashMap<TupleKey, Vec<TraceId>>,
    /// (deadline, trace) in the order they opened; adopted ones are skipped when met.
    deadlines: VecDeque<(u64, TraceId)>,
    /// Traces closed early for having too many members, handed out by the next `expire`.
    overgrown: Vec<OpenTrace>,
    held: usize,
}

impl OpenTraces {
    pub fn has_room(&self) -> bool {
        self.traces.len() < MAX_OPEN
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty() && self.overgrown.is_empty()
    }

    pub fn is_open(&self, trace: &TraceId) -> bool {
        !self.traces.is_empty() && self.traces.contains_key(trace)
    }

    /// `root` starts `trace`, open until `deadline_ns` in event time.
    pub fn open(&mut self, trace: TraceId, root: Root, deadline_ns: u64) {
        self.by_upstream.entry(root.upstream).or_default().push(trace);
        self.deadlines.push_back((deadline_ns, trace));
        self.traces
            .insert(trace, OpenTrace { root, members: Vec::new(), records: Vec::new(), held: Vec::new() });
    }

    /// A request in progress joined `trace`.
    pub fn join(&mut self, trace: &TraceId, key: RequestKey) {
        if let Some(open) = self.traces.get_mut(trace) {
            open.members.push(key);
            self.close_if_overgrown(trace);
        }
    }

    /// A client request of `trace` filed its stitching record under `tuple`.
    pub fn filed(&mut self, trace: &TraceId, tuple: TupleKey) {
        if let Some(open) = self.traces.get_mut(trace) {
            open.records.push(tuple);
            self.close_if_overgrown(trace);
        }
    }

    fn close_if_overgrown(&mut self, trace: &TraceId) {
        let overgrown =
            self.traces.get(trace).is_some_and(|o| o.members.len() + o.records.len() > MAX_MEMBERS);
        if overgrown && let Some(open) = self.take(trace) {
            self.overgrown.push(open);
        }
    }

    /// Whether holding one more span needs an open trace closed first.
    pub fn is_full(&self) -> bool {
        self.held >= MAX_HELD
    }

    /// Holds an exchange that ended in its open trace; gives it back when the trace is not open.
    pub fn hold(&mut self, held: Held) -> Result<(), Held> {
        match self.traces.get_mut(&held.context.trace_id) {
            Some(open) => {
                open.held.push(held);
                self.held += 1;
                Ok(())
            }
            None => Err(held),
        }
    }

    /// Adds what an adopted trace had (renamed already) to `into` if that is open; else gives its
    /// held spans back, settled.
    pub fn absorb(&mut self, into: &TraceId, adopted: OpenTrace) -> Result<(), Vec<Held>> {
        let Some(open) = self.traces.get_mut(into) else {
            return Err(adopted.held);
        };
        self.held += adopted.held.len();
        open.members.extend(adopted.members);
        open.records.extend(adopted.records);
        open.held.extend(adopted.held);
        Ok(())
    }

    /// The open trace whose root the client request just seen on `upstream` caused — same method
    /// and target, same position on the connection — taken out to be adopted.
    pub fn adopter(
        &mut self,
        upstream: &TupleKey,
        fingerprint: u64,
        position: Option<u32>,
    ) -> Option<(TraceId, OpenTrace)> {
        let position = position?;
        let candidates = self.by_upstream.get(upstream)?;
        let trace = *candidates.iter().find(|trace| {
            self.traces
                .get(*trace)
                .is_some_and(|open| open.root.fingerprint == fingerprint && open.root.position == position)
        })?;
        self.take(&trace).map(|open| (trace, open))
    }

    /// Closes traces whose deadline is at or before `horizon_ns`, oldest first.
    pub fn expire(&mut self, horizon_ns: u64, out: &mut Vec<OpenTrace>) {
        out.append(&mut self.overgrown);
        while let Some(&(deadline, trace)) = self.deadlines.front() {
            if deadline > horizon_ns {
                break;
            }
            self.deadlines.pop_front();
            out.extend(self.take(&trace));
        }
    }

    /// Closes the oldest open trace.
    pub fn close_oldest(&mut self, out: &mut Vec<OpenTrace>) {
        while let Some((_, trace)) = self.deadlines.pop_front() {
            if let Some(open) = self.take(&trace) {
                out.push(open);
                return;
            }
        }
    }

    /// Closes every open trace that `pid` started or holds a span of, or all with None.
    pub fn close_all(&mut self, pid: Option<u32>, out: &mut Vec<OpenTrace>) {
        let involved = |open: &OpenTrace| {
            pid.is_none_or(|pid| open.root.pid == pid || open.held.iter().any(|h| h.pid == pid))
        };
        let closing: Vec<TraceId> =
            self.traces.iter().filter(|(_, open)| involved(open)).map(|(trace, _)| *trace).collect();
        for trace in closing {
            out.extend(self.take(&trace));
        }
        out.append(&mut self.overgrown);
        if self.traces.is_empty() {
            self.deadlines.clear();
        }
    }

    fn take(&mut self, trace: &TraceId) -> Option<OpenTrace> {
        let open = self.traces.remove(trace)?;
        self.held -= open.held.len();
        if let Some(candidates) = self.by_upstream.get_mut(&open.root.upstream) {
            candidates.retain(|t| t != trace);
            if candidates.is_empty() {
                self.by_upstream.remove(&open.root.upstream);
            }
        }
        Some(open)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.traces.len()
    }
}
