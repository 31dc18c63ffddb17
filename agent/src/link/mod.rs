//! Trace context: which trace each span belongs to and which span is its parent. Decided when a
//! request's head is seen, not when its exchange ends, because a server request's children — the
//! calls it makes — start and end while it is still in progress.
//!
//! With `--context-propagation`, the kernel gives requests their ids as it sees them, and puts the
//! CLIENT spans' on the wire ([`kernel`]); those ids are taken as they are, below the header.
//!
//! A SERVER span's parent, in this order:
//! 1. the `traceparent` its caller sent (W3C Trace Context: the header always wins);
//! 2. the context its caller's sonde put in a TCP option, with the span id the kernel gave it; a
//!    request given ids by the kernel but no parent starts a trace with them, never stitched
//!    (its calls already went out in that trace);
//! 3. the CLIENT span of the same request in another traced process on this host, found by the
//!    connection's 4-tuple and the request's method and target ("same-host stitching", see
//!    [`stitch`]);
//! 4. none: it starts a trace — and when its client may be a traced process on this host whose
//!    write is still to come, it starts it *open*: given up for the client's trace if that client
//!    request is seen soon, its spans held until then ([`open`]).
//!
//! A CLIENT span's parent, in this order:
//! 1. with no `traceparent` in the request (or one the kernel rewrote: a proxy forwarding the one
//!    its own request came with), the ids the kernel put on the wire: the server request the
//!    writing thread was serving, or none;
//! 2. the server request the process is working on, when that is certain:
//!    - in a process whose threads each serve one request at a time, the request the writing
//!      thread most recently read and has not answered yet — or, for a thread started while another
//!      handled a request, that request: right for thread-per-request servers and workers spawned
//!      per request;
//!    - in a process whose threads are shared by requests ([`SharedThreads`]: a Go program, an
//!      event loop), the thread says nothing: only while the process serves exactly one request is
//!      that request the parent. With several at once the span gets no in-process parent (counted in
//!      `LinkStats::unparented_shared`): a wrong parent would join two requests' traces;
//! 3. the `traceparent` the process wrote into the request itself: the header names the caller's
//!    span, so that id becomes this span's own id and the receiving server's parent matches it;
//! 4. none: it starts a trace.

pub mod kernel;
mod open;
pub mod sampler;
mod stitch;
#[cfg(test)]
mod tests;
mod tracestate;

use std::net::IpAddr;

use foldhash::{HashMap, HashSet};

use sonde_common::{Direction, propagation::HeaderOutcome};

use crate::{
    conn::ConnInfo,
    http::{Exchange, Started, traceparent},
    span::model::{SpanId, TraceFlags, TraceId},
};
use open::{Held, OpenTrace, OpenTraces, Root};
use sampler::Sampler;
use stitch::{ClientRecord, Stitcher};

/// The identity a span is exported with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C trace flags; bit 0 (sampled) clear → the span is not exported.
    pub flags: TraceFlags,
    pub trace_state: String,
}

impl SpanContext {
    pub fn sampled(&self) -> bool {
        self.flags.is_sampled()
    }
}

/// Where a span's parent came from, counted for self-observability.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    /// Server spans parented by the caller's `traceparent`.
    pub from_header: u64,
    /// Server spans parented by the context the caller's sonde put in a TCP option.
    pub from_tcp_option: u64,
    /// Server spans parented by a same-host client span.
    pub stitched: u64,
    /// Server spans parented by a same-host client span seen after their trace had started: open
    /// traces adopted (see [`open`]).
    pub adopted: u64,
    /// Client spans parented by the server request their thread was handling.
    pub in_process: u64,
    /// Client requests the kernel gave no context (with `--context-propagation` on, they went
    /// without one on the wire): a head begun in a write too short to show a request line, a
    /// process whose threads serve several requests at once, a socket connected before sonde
    /// started, or a context event lost.
    pub clients_without_context: u64,
    /// Spans that started a trace.
    pub roots: u64,
    /// `traceparent` values that did not parse (the span starts a trace, as the spec says).
    pub invalid_traceparent: u64,
    /// `tracestate` values that did not parse (discarded whole, as the spec says).
    pub invalid_tracestate: u64,
    /// Requests forgotten before their exchange ended (bounds, or never answered).
    pub expired: u64,
    /// Threads started while their parent handled a request, and so working for it.
    pub spawned_workers: u64,
    /// Client spans left without an in-process parent because their process, whose threads are
    /// shared by requests, was serving several at once, by why its threads are shared
    /// (`SharedThreads as usize`).
    pub unparented_shared: [u64; SharedThreads::COUNT],
}

/// Why a process's threads cannot each be tied to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedThreads {
    /// A Go program: goroutines move between threads, and `net/http` writes a request from a
    /// goroutine of its own.
    GoRuntime = 0,
    /// A thread read a request while one it had read before was still unanswered: an event loop,
    /// or a thread that hands requests over to others.
    EventLoop = 1,
}

impl SharedThreads {
    pub const COUNT: usize = 2;
    pub const ALL: [SharedThreads; Self::COUNT] = [SharedThreads::GoRuntime, SharedThreads::EventLoop];

    /// As a label value of sonde's own metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedThreads::GoRuntime => "go_runtime",
            SharedThreads::EventLoop => "event_loop",
        }
    }
}

/// A request, by connection and position on it.
pub type RequestKey = (u64, u32);

/// What the linker says of an exchange that ended.
#[derive(Debug)]
pub enum Link {
    /// Export it with this context.
    Now(SpanContext),
    /// Its trace is open (a server request of it may still find its same-host client): its
    /// context comes out of [`Linker::take_late`] under this key, within `open::GRACE_NS` of
    /// event time.
    Later(RequestKey),
    /// Its request is not known here (forgotten under the bounds, or left to an SDK).
    Unknown,
}

/// Requests older than this whose exchange never ended are forgotten.
const REQUEST_TTL_NS: u64 = 15 * 60 * 1_000_000_000;
/// At most this many requests in progress are held; beyond it the oldest are forgotten.
const MAX_REQUESTS: usize = 65_536;
/// Addresses seen on this host's end of traced connections; beyond it the set starts over.
const MAX_LOCAL_ADDRESSES: usize = 4096;

/// The trace a request belongs to, without its own span id.
#[derive(Clone, Debug)]
struct Lineage {
    trace_id: TraceId,
    parent_span_id: Option<SpanId>,
    flags: TraceFlags,
    trace_state: String,
}

struct InProgress {
    direction: Direction,
    pid: u32,
    tid: u32,
    span_id: SpanId,
    start_ns: u64,
    /// None: a server request whose lineage is still to be found (see `resolve`).
    lineage: Option<Lineage>,
    /// What stitching needs to find this (server) request's client: the client's 4-tuple key.
    upstream: Option<stitch::TupleKey>,
    fingerprint: u64,
    /// Its position on a connection seen whole (`Started::from_start`).
    position: Option<u32>,
    /// The trace the kernel gave a server request that came with no context: the trace it starts
    /// unless stitched (its calls went out in it).
    kernel_trace: Option<TraceId>,
}

#[derive(Default)]
pub struct Linker {
    requests: HashMap<RequestKey, InProgress>,
    /// (pid, tid) → the server request that thread most recently read and has not answered.
    handling: HashMap<(u32, u32), RequestKey>,
    /// pid → its server requests in progress (those of `requests`).
    serving: HashMap<u32, HashSet<RequestKey>>,
    /// Processes whose threads are shared by requests, and how that was learnt.
    shared: HashMap<u32, SharedThreads>,
    stitcher: Stitcher,
    /// Traces that may yet be adopted by a same-host client seen late, and the spans they hold.
    open: OpenTraces,
    /// Held spans whose trace settled since the last `take_late`.
    resolved_late: Vec<(RequestKey, SpanContext)>,
    /// The newest event time seen: open traces close by it (see `expire_late`).
    horizon_ns: u64,
    /// IP addresses of this host's end of traced connections: a peer with one of them (or a
    /// loopback one) may be a traced client whose record is still to come.
    local_addresses: HashSet<IpAddr>,
    /// Decides, where a trace enters, whether it is exported.
    sampler: Sampler,
    stats: LinkStats,
    /// Processes found to share their threads since the last `take_newly_shared`.
    newly_shared: Vec<(u32, SharedThreads)>,
    /// Span ids the kernel gave requests of processes not selected here: never exported, so never
    /// a parent (oldest first, bounded).
    unexported: HashSet<SpanId>,
    unexported_order: std::collections::VecDeque<SpanId>,
    /// Kernel traces that became part of another trace on this host (see `rename`).
    renamed: HashMap<TraceId, Lineage>,
}

/// Renamed kernel traces remembered; beyond it the map starts over (a missing rename leaves a
/// later span in the kernel's trace: a broken link, never a wrong one).
const MAX_RENAMED: usize = 4096;

/// Unexported span ids remembered; a server reads its caller's request within moments of its
/// write, so a few thousand cover any burst.
const MAX_UNEXPORTED: usize = 4096;

impl Linker {
    pub fn new(sampler: Sampler) -> Self {
        Self { sampler, ..Self::default() }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The context of a span that starts a trace of its own.
    pub fn root_context(&self) -> SpanContext {
        let lineage = self.root();
        SpanContext {
            trace_id: lineage.trace_id,
            span_id: new_span_id(),
            parent_span_id: None,
            flags: lineage.flags,
            trace_state: lineage.trace_state,
        }
    }

    /// A new trace, sampled or not as the sampler says.
    fn root(&self) -> Lineage {
        let trace_id = new_trace_id();
        Lineage {
            trace_id,
            parent_span_id: None,
            flags: self.sampler.decide(trace_id, None),
            trace_state: String::new(),
        }
    }

    /// A request head was just seen on `conn`.
    pub fn started(&mut self, conn: &ConnInfo, started: &Started) {
        if self.requests.len() >= MAX_REQUESTS {
            self.forget_oldest();
        }
        let key = (conn.id, started.ordinal);
        let kernel = started
            .kernel
            .as_ref()
            .and_then(kernel::KernelContext::from_event)
            .filter(|k| k.direction == started.direction);
        let span_id = kernel.map_or_else(new_span_id, |k| k.span_id);
        let position = started.from_start.then_some(started.ordinal);
        self.horizon_ns = self.horizon_ns.max(started.start_ns);
        if let Some(local) = conn.local {
            if self.local_addresses.len() >= MAX_LOCAL_ADDRESSES {
                self.local_addresses.clear();
            }
            self.local_addresses.insert(local.ip());
        }
        match started.direction {
            Direction::Ingress => {
                let mut request = InProgress {
                    direction: Direction::Ingress,
                    pid: conn.pid,
                    tid: started.tid,
                    span_id,
                    start_ns: started.start_ns,
                    lineage: None,
                    upstream: stitch::server_side_key(conn),
                    fingerprint: started.fingerprint,
                    position,
                    kernel_trace: None,
                };
                if let Some(tp) = self.header(started) {
                    self.stats.from_header += 1;
                    let lineage = Lineage {
                        trace_id: tp.trace_id,
                        parent_span_id: Some(tp.parent_id),
                        flags: self.sampler.decide(tp.trace_id, Some(tp.flags)),
                        // The caller's vendor state goes on with the trace, to children too.
                        trace_state: self.vendor_state(started),
                    };
                    if let Some(k) = kernel {
                        // The kernel does not read headers: the calls this request makes carry its
                        // trace, which on this host joins the header's.
                        self.rename(k.trace_id, &lineage);
                    }
                    request.lineage = Some(lineage);
                } else if let Some(k) = kernel {
                    match k.parent_span_id {
                        Some(parent) => {
                            self.stats.from_tcp_option += 1;
                            let lineage = self.kernel_lineage(k.trace_id, Some(parent), k.flags);
                            self.open.join(&lineage.trace_id, key);
                            request.lineage = Some(lineage);
                        }
                        // No context came with it: stitched, or a trace of its own — the kernel's,
                        // whose id its calls already carry.
                        None => request.kernel_trace = Some(k.trace_id),
                    }
                }
                // The client's write usually precedes this read in the ring buffer; when it does
                // not (the two CPUs raced), the lineage is looked up again when first needed.
                self.try_stitch(key, &mut request);
                self.requests.insert(key, request);
                self.serving.entry(conn.pid).or_default().insert(key);
                if let Some(previous) = self.handling.insert((conn.pid, started.tid), key)
                    && self.requests.contains_key(&previous)
                {
                    // This thread still owes an answer to the request it read before: it does not
                    // serve one request at a time.
                    self.threads_shared(conn.pid, SharedThreads::EventLoop);
                }
            }
            Direction::Egress => {
                if kernel.is_none() {
                    self.stats.clients_without_context += 1;
                }
                let lineage = match kernel {
                    // A request with a header of its own: the receiver follows the header — unless
                    // the kernel rewrote it (a proxy forwarding its caller's) to name this span.
                    Some(k) if started.traceparent.is_none() || k.header == HeaderOutcome::Forwarded => {
                        ClientParent::Kernel(k)
                    }
                    _ => self.client_lineage(conn.pid, started),
                };
                let (span_id, lineage) = match lineage {
                    ClientParent::Kernel(k) => (span_id, self.kernel_client_lineage(conn.pid, &k, started)),
                    ClientParent::Handling(lineage) => (span_id, lineage),
                    ClientParent::Header(tp) => (
                        tp.parent_id,
                        Lineage {
                            trace_id: tp.trace_id,
                            parent_span_id: None,
                            flags: self.sampler.decide(tp.trace_id, Some(tp.flags)),
                            trace_state: self.vendor_state(started),
                        },
                    ),
                    ClientParent::None => {
                        self.stats.roots += 1;
                        (span_id, self.root())
                    }
                };
                if let Some(tuple) = stitch::client_side_key(conn) {
                    let record = ClientRecord {
                        fingerprint: started.fingerprint,
                        position,
                        start_ns: started.start_ns,
                        trace_id: lineage.trace_id,
                        span_id,
                        flags: lineage.flags,
                    };
                    match self.open.adopter(&tuple, started.fingerprint, position) {
                        Some((trace, adopted)) => self.adopt(trace, adopted, record.lineage()),
                        None => {
                            self.stitcher.record(tuple, record);
                            self.open.filed(&lineage.trace_id, tuple);
                        }
                    }
                }
                self.open.join(&lineage.trace_id, key);
                self.requests.insert(
                    key,
                    InProgress {
                        direction: Direction::Egress,
                        pid: conn.pid,
                        tid: started.tid,
                        span_id,
                        start_ns: started.start_ns,
                        lineage: Some(lineage),
                        upstream: None,
                        fingerprint: started.fingerprint,
                        position,
                        kernel_trace: None,
                    },
                );
            }
        }
    }

    /// Thread `parent_tid` of `pid` started thread `child_tid`. Started while the parent handles a
    /// server request, the new thread works for that request (until it reads one of its own): the
    /// calls it makes are that request's children.
    pub fn spawned(&mut self, pid: u32, parent_tid: u32, child_tid: u32) {
        if self.shared.contains_key(&pid) {
            // A Go runtime starts threads for itself, whatever goroutine runs on the parent.
            return;
        }
        if let Some(&key) = self.handling.get(&(pid, parent_tid)) {
            self.stats.spawned_workers += 1;
            self.handling.entry((pid, child_tid)).or_insert(key);
        }
    }

    /// The exchange ended: the context its span is exported with, now or (its trace is open)
    /// later. `Unknown` when its request is not known here; the caller then starts a trace for it.
    pub fn finished(&mut self, conn: &ConnInfo, exchange: &Exchange) -> Link {
        let key = (conn.id, exchange.request.ordinal);
        let ended_ns = exchange.response.as_ref().map_or(exchange.request.end_ns, |r| r.end_ns);
        self.horizon_ns = self.horizon_ns.max(ended_ns);
        let Some(mut request) = self.requests.remove(&key) else {
            return Link::Unknown;
        };
        if request.direction == Direction::Ingress {
            self.stop_serving(request.pid, &key);
        }
        if request.direction != exchange.request_direction {
            return Link::Unknown;
        }
        if request.direction == Direction::Ingress {
            if self.handling.get(&(request.pid, request.tid)) == Some(&key) {
                self.handling.remove(&(request.pid, request.tid));
            }
            self.try_stitch(key, &mut request);
            if request.lineage.is_none() {
                self.start_trace(key, &mut request, ended_ns);
            }
            if let Some(lineage) = request.lineage.as_mut()
                && lineage.parent_span_id.is_some_and(|p| self.unexported.contains(&p))
            {
                lineage.parent_span_id = None;
            }
        }
        let pid = request.pid;
        match request.context() {
            Some(context) => self.hold_if_open(key, pid, context),
            None => Link::Unknown,
        }
    }

    /// An exchange of an open trace waits for it to settle; beyond the room for held spans, the
    /// oldest open trace closes first.
    fn hold_if_open(&mut self, key: RequestKey, pid: u32, context: SpanContext) -> Link {
        if !self.open.is_open(&context.trace_id) {
            return Link::Now(context);
        }
        if self.open.is_full() {
            let mut closed = Vec::new();
            self.open.close_oldest(&mut closed);
            self.close(closed);
        }
        match self.open.hold(Held { key, pid, context }) {
            Ok(()) => Link::Later(key),
            Err(held) => Link::Now(held.context),
        }
    }

    /// Whether `take_late` has anything.
    pub fn has_late(&self) -> bool {
        !self.resolved_late.is_empty()
    }

    /// Contexts of exchanges held in open traces (`Link::Later`) that settled since the last call:
    /// adopted by their caller's trace, or closed as traces of their own.
    pub fn take_late(&mut self) -> std::vec::Drain<'_, (RequestKey, SpanContext)> {
        self.resolved_late.drain(..)
    }

    /// Closes open traces whose grace ended: by the newest event seen, or by the clock (`now_ns`,
    /// monotonic) a grace later, for a ring that went quiet.
    pub fn expire_late(&mut self, now_ns: u64) {
        if self.open.is_empty() {
            return;
        }
        let horizon = self.horizon_ns.max(now_ns.saturating_sub(open::GRACE_NS));
        let mut closed = Vec::new();
        self.open.expire(horizon, &mut closed);
        self.close(closed);
    }

    /// Closes every open trace (those `pid` started or holds spans of, with Some): the agent
    /// stops, or the process is gone.
    pub fn stop_waiting(&mut self, pid: Option<u32>) {
        let mut closed = Vec::new();
        self.open.close_all(pid, &mut closed);
        self.close(closed);
    }

    /// Closed traces stand as they are, their held spans go out. The stitcher is not asked again:
    /// a record filed after a request ended is not its client's (see `open`).
    fn close(&mut self, closed: Vec<OpenTrace>) {
        for trace in closed {
            self.stats.roots += 1;
            self.resolved_late.extend(trace.held.into_iter().map(|h| (h.key, h.context)));
        }
    }

    /// The client request that caused an open trace's root was seen: the trace becomes part of the
    /// client's (`into`: the lineage its root would have had, stitched in time).
    fn adopt(&mut self, from: TraceId, mut adopted: OpenTrace, into: Lineage) {
        self.stats.adopted += 1;
        // A kernel trace's requests still to come here join `into` too.
        self.rename(from, &into);
        for key in std::iter::once(&adopted.root.key).chain(&adopted.members) {
            if let Some(lineage) = self.requests.get_mut(key).and_then(|r| r.lineage.as_mut()) {
                lineage.adopt(from, &into);
            }
        }
        for tuple in &adopted.records {
            self.stitcher.adopt(tuple, from, into.trace_id, into.flags);
        }
        for held in &mut adopted.held {
            let c = &mut held.context;
            adopt(from, &into, (&mut c.trace_id, &mut c.parent_span_id, &mut c.flags, &mut c.trace_state));
        }
        // Adopted by a trace that is open itself: its spans wait on with that one's.
        if let Err(held) = self.open.absorb(&into.trace_id, adopted) {
            self.resolved_late.extend(held.into_iter().map(|h| (h.key, h.context)));
        }
    }

    /// A server request with no parent found starts a trace: open, when its client may be a
    /// traced process on this host whose write is still to come and the connection was seen whole
    /// (an adoption needs the position); settled otherwise — also beyond the room for open traces
    /// (a missing link, never a wrong one). `at_ns`: the event time that needed its lineage.
    fn start_trace(&mut self, key: RequestKey, request: &mut InProgress, at_ns: u64) {
        let lineage = match request.kernel_trace {
            Some(trace_id) => self.kernel_lineage(trace_id, None, TraceFlags::SAMPLED),
            None => self.root(),
        };
        match (request.position, request.upstream) {
            (Some(position), Some(upstream))
                if self.open.has_room() && self.client_may_be_local(upstream.0.ip()) =>
            {
                let root =
                    Root { key, pid: request.pid, upstream, fingerprint: request.fingerprint, position };
                self.open.open(lineage.trace_id, root, at_ns.saturating_add(open::GRACE_NS));
            }
            _ => self.stats.roots += 1,
        }
        request.lineage = Some(lineage);
    }

    /// Whether a client at `peer` may be a traced process on this host, whose record can come.
    fn client_may_be_local(&self, peer: IpAddr) -> bool {
        peer.is_loopback() || self.local_addresses.contains(&peer)
    }

    /// A thread exited: a thread that gets its id later does not work for the request it read.
    pub fn thread_exited(&mut self, pid: u32, tid: u32) {
        self.handling.remove(&(pid, tid));
    }

    /// A process exited: nothing of it may parent the calls of a process that gets its pid later.
    pub fn process_exited(&mut self, pid: u32) {
        self.handling.retain(|&(p, _), _| p != pid);
        self.shared.remove(&pid);
    }

    /// `pid`'s threads are shared by requests (see [`SharedThreads`]); the first reason learnt
    /// stays.
    pub fn threads_shared(&mut self, pid: u32, why: SharedThreads) {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.shared.entry(pid) {
            entry.insert(why);
            self.newly_shared.push((pid, why));
        }
    }

    /// The kernel gave a request of a process not selected here span id `span`, and put it on the
    /// wire: a server request on this host that names it as parent gets none instead (its caller's
    /// span is never exported).
    pub fn unexported(&mut self, span: SpanId) {
        if self.unexported_order.len() >= MAX_UNEXPORTED
            && let Some(oldest) = self.unexported_order.pop_front()
        {
            self.unexported.remove(&oldest);
        }
        if self.unexported.insert(span) {
            self.unexported_order.push_back(span);
        }
    }

    /// Processes found to share their threads since the last call: the kernel must not give their
    /// requests a context from the request a thread serves (`--context-propagation`).
    pub fn take_newly_shared(&mut self) -> std::vec::Drain<'_, (u32, SharedThreads)> {
        self.newly_shared.drain(..)
    }

    fn stop_serving(&mut self, pid: u32, key: &RequestKey) {
        if let Some(keys) = self.serving.get_mut(&pid) {
            keys.remove(key);
            if keys.is_empty() {
                self.serving.remove(&pid);
            }
        }
    }

    /// `serving` and `handling` after requests were dropped in bulk.
    fn forget_dropped_requests(&mut self) {
        let requests = &self.requests;
        self.handling.retain(|_, key| requests.contains_key(key));
        self.serving.retain(|_, keys| {
            keys.retain(|key| requests.contains_key(key));
            !keys.is_empty()
        });
    }

    /// Periodic upkeep at monotonic time `now_ns`: requests that never ended, stale client records.
    pub fn sweep(&mut self, now_ns: u64) {
        let before = self.requests.len();
        self.requests.retain(|_, r| now_ns.saturating_sub(r.start_ns) < REQUEST_TTL_NS);
        self.stats.expired += (before - self.requests.len()) as u64;
        self.forget_dropped_requests();
        self.stitcher.sweep(now_ns);
    }

    fn forget_oldest(&mut self) {
        let mut ages: Vec<u64> = self.requests.values().map(|r| r.start_ns).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 8];
        let before = self.requests.len();
        self.requests.retain(|_, r| r.start_ns > cutoff);
        self.stats.expired += (before - self.requests.len()) as u64;
        self.forget_dropped_requests();
    }

    /// The server request a client request of `pid`, written by thread `tid`, is certainly made
    /// for (see the module doc); None when there is none or it cannot be known.
    fn working_for(&mut self, pid: u32, tid: u32) -> Option<RequestKey> {
        let Some(&why) = self.shared.get(&pid) else {
            return self.handling.get(&(pid, tid)).copied();
        };
        match self.serving.get(&pid) {
            Some(keys) if keys.len() == 1 => keys.iter().next().copied(),
            Some(_) => {
                self.stats.unparented_shared[why as usize] += 1;
                None
            }
            None => None,
        }
    }

    fn client_lineage(&mut self, pid: u32, started: &Started) -> ClientParent {
        if let Some(key) = self.working_for(pid, started.tid)
            && let Some(mut server) = self.requests.remove(&key)
        {
            self.resolve(key, &mut server, started.start_ns);
            let parent = server.lineage.as_ref().map(|l| Lineage {
                trace_id: l.trace_id,
                parent_span_id: Some(server.span_id),
                flags: l.flags,
                trace_state: l.trace_state.clone(),
            });
            self.requests.insert(key, server);
            if let Some(parent) = parent {
                self.stats.in_process += 1;
                return ClientParent::Handling(parent);
            }
        }
        self.header(started).map_or(ClientParent::None, ClientParent::Header)
    }

    /// The lineage of a client request whose ids the kernel chose. Its parent, when it has one, is
    /// the server request of `pid` the kernel gave that span id: that request's lineage is found
    /// now if still open (stitched, or its own trace) and shared, as for in-process parents. One
    /// not in progress here (its context event was lost) is still named.
    ///
    /// With no parent from the kernel (the writing thread serves nothing it knows of: a worker
    /// thread, a Go runtime not yet known as one), the in-process parent user space finds, if any,
    /// still stands; the kernel's trace then becomes part of the parent's on this host.
    fn kernel_client_lineage(&mut self, pid: u32, k: &kernel::KernelContext, started: &Started) -> Lineage {
        let at_ns = started.start_ns;
        let Some(parent) = k.parent_span_id else {
            if let ClientParent::Handling(lineage) = self.client_lineage(pid, started) {
                self.rename(k.trace_id, &lineage);
                return lineage;
            }
            self.stats.roots += 1;
            return self.kernel_lineage(k.trace_id, None, k.flags);
        };
        self.stats.in_process += 1;
        let requests = &self.requests;
        let key = self
            .serving
            .get(&pid)
            .and_then(|keys| keys.iter().find(|key| requests.get(key).is_some_and(|r| r.span_id == parent)))
            .copied();
        if let Some(key) = key
            && let Some(mut server) = self.requests.remove(&key)
        {
            self.resolve(key, &mut server, at_ns);
            let lineage = server.lineage.as_ref().map(|l| Lineage {
                trace_id: l.trace_id,
                parent_span_id: Some(parent),
                flags: l.flags,
                trace_state: l.trace_state.clone(),
            });
            self.requests.insert(key, server);
            if let Some(lineage) = lineage {
                return lineage;
            }
        }
        self.kernel_lineage(k.trace_id, Some(parent), k.flags)
    }

    /// The lineage of kernel trace `trace_id`: the trace it became part of on this host (a server
    /// request of it was stitched to its client afterwards), or itself.
    fn kernel_lineage(&self, trace_id: TraceId, parent: Option<SpanId>, flags: TraceFlags) -> Lineage {
        match self.renamed.get(&trace_id) {
            Some(into) => Lineage {
                trace_id: into.trace_id,
                parent_span_id: parent,
                flags: into.flags,
                trace_state: into.trace_state.clone(),
            },
            None => Lineage {
                trace_id,
                parent_span_id: parent,
                flags: self.sampler.decide(trace_id, parent.map(|_| flags)),
                trace_state: String::new(),
            },
        }
    }

    /// Kernel trace `from` is part of `into` on this host from now on: its later requests here
    /// join `into`. (The hops it reached on other hosts stay in `from`: their ids went out.)
    fn rename(&mut self, from: TraceId, into: &Lineage) {
        if self.renamed.len() >= MAX_RENAMED {
            self.renamed.clear();
        }
        self.renamed.insert(from, Lineage { parent_span_id: None, ..into.clone() });
    }

    /// The request's `tracestate` as it goes on with the trace; an invalid one is counted and
    /// discarded whole (see `tracestate`).
    fn vendor_state(&mut self, started: &Started) -> String {
        tracestate::carried(started.tracestate.as_deref()).unwrap_or_else(|()| {
            self.stats.invalid_tracestate += 1;
            String::new()
        })
    }

    /// The request's valid `traceparent`; an invalid one is counted and, as the spec says, ignored.
    fn header(&mut self, started: &Started) -> Option<traceparent::TraceParent> {
        match traceparent::parse(started.traceparent.as_deref()?) {
            Ok(tp) => Some(tp),
            Err(_) => {
                self.stats.invalid_traceparent += 1;
                None
            }
        }
    }

    /// Fixes a server request's lineage, needed at event time `at_ns`, if still undecided:
    /// stitched, or else a new trace.
    fn resolve(&mut self, key: RequestKey, request: &mut InProgress, at_ns: u64) {
        if request.lineage.is_some() {
            return;
        }
        self.try_stitch(key, request);
        if request.lineage.is_none() {
            self.start_trace(key, request, at_ns);
        }
    }

    fn try_stitch(&mut self, key: RequestKey, request: &mut InProgress) {
        if request.lineage.is_some() {
            return;
        }
        let Some(tuple) = request.upstream else {
            return;
        };
        if let Some(client) = self.stitcher.take(&tuple, request.fingerprint, request.position) {
            self.stats.stitched += 1;
            self.open.join(&client.trace_id, key);
            let lineage = client.lineage();
            if let Some(kernel_trace) = request.kernel_trace {
                self.rename(kernel_trace, &lineage);
            }
            request.lineage = Some(lineage);
        }
    }
}

impl Lineage {
    /// See [`adopt`].
    fn adopt(&mut self, from: TraceId, into: &Lineage) {
        adopt(
            from,
            into,
            (&mut self.trace_id, &mut self.parent_span_id, &mut self.flags, &mut self.trace_state),
        );
    }
}

/// Renames a member of open trace `from` (its trace id, parent, flags and vendor state) into the
/// trace of `into`, the lineage the open trace's root takes; the root is the one member with no
/// parent.
fn adopt(
    from: TraceId,
    into: &Lineage,
    (trace_id, parent, flags, state): (&mut TraceId, &mut Option<SpanId>, &mut TraceFlags, &mut String),
) {
    if *trace_id != from {
        return;
    }
    *trace_id = into.trace_id;
    *flags = into.flags;
    state.clone_from(&into.trace_state);
    if parent.is_none() {
        *parent = into.parent_span_id;
    }
}

impl InProgress {
    /// Its span's context; None while its lineage is still open.
    fn context(self) -> Option<SpanContext> {
        let lineage = self.lineage?;
        Some(SpanContext {
            trace_id: lineage.trace_id,
            span_id: self.span_id,
            parent_span_id: lineage.parent_span_id,
            flags: lineage.flags,
            trace_state: lineage.trace_state,
        })
    }
}

impl ClientRecord {
    /// The lineage of the server request this client request caused.
    fn lineage(&self) -> Lineage {
        Lineage {
            trace_id: self.trace_id,
            parent_span_id: Some(self.span_id),
            flags: self.flags,
            trace_state: String::new(),
        }
    }
}

enum ClientParent {
    Kernel(kernel::KernelContext),
    Handling(Lineage),
    Header(traceparent::TraceParent),
    None,
}

/// Random and never all zeros (the invalid id), as W3C Trace Context asks.
fn new_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}
