//! Requests wait in arrival order; each final response pairs with the oldest request still without
//! one (RFC 9112 §9.3.2: responses come back in request order). An exchange is released once both
//! of its messages have ended, in order, so a response that overtakes its request's body (an early
//! 413) waits for that body or for the connection to close.

use std::collections::VecDeque;

use super::head::{BodyHeaders, Head, TransferEncoding};
use super::{
    Direction, Exchange, MessageKind, ParseError, ParseStats, Request, RequestHead, Response, Started,
};

/// How the body after a head is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    NoBody,
    Length(u64),
    Chunked,
    /// Until the connection closes.
    UntilClose,
    /// Cannot be known (truncated head, unknown transfer coding on a request).
    Unknown,
    /// The connection stops being HTTP after this head.
    Upgrade,
}

/// A request waiting for the end of its body, its response, or both.
#[derive(Debug)]
struct Pending {
    /// None: a request whose head could not be parsed. It still takes its response's place in the
    /// queue, so that the responses after it pair with the right requests; it is never reported.
    head: Option<RequestHead>,
    start_ns: u64,
    end_ns: u64,
    body_bytes: u64,
    ordinal: u32,
    tid: u32,
    done: bool,
    /// Its body's end cannot be known: the response starting ends it.
    unknown_end: bool,
    response: ResponseSlot,
}

#[derive(Debug)]
enum ResponseSlot {
    Waiting,
    InProgress { response: Response, unknown_end: bool },
    Done(Option<Response>),
}

/// What the response direction is in the middle of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CurrentResponse {
    None,
    /// A 1xx before the final response: skipped.
    Interim,
    /// Paired with the queued request whose slot is `InProgress`; if that request was dropped from
    /// the queue meanwhile, its bytes go nowhere.
    Paired,
    /// No request was waiting.
    Orphan,
}

#[derive(Debug)]
pub(super) struct Pairing {
    request_direction: Direction,
    pending: VecDeque<Pending>,
    max_pipelined: usize,
    current_response: CurrentResponse,
    stats: ParseStats,
    /// A message start was seen in either direction.
    seen_start: bool,
    /// With the role from accept/connect the first bytes must start a request: if not, the
    /// connection is some other protocol.
    strict_first_start: bool,
    not_http: bool,
    upgraded: bool,
    /// Request heads seen so far: the next one's ordinal.
    heads: u32,
    /// Every request of the connection was counted in `heads` (see `Started::from_start`).
    from_start: bool,
    /// Requests whose head completed since the caller last took them.
    started: Vec<Started>,
}

impl Pairing {
    pub(super) fn new(request_direction: Direction, strict_first_start: bool, max_pipelined: usize) -> Self {
        Self {
            request_direction,
            pending: VecDeque::new(),
            max_pipelined,
            current_response: CurrentResponse::None,
            stats: ParseStats::default(),
            seen_start: false,
            strict_first_start,
            not_http: false,
            upgraded: false,
            heads: 0,
            from_start: strict_first_start,
            started: Vec::new(),
        }
    }

    pub(super) fn set_request_direction(&mut self, direction: Direction) {
        self.request_direction = direction;
    }

    pub(super) fn stats(&self) -> &ParseStats {
        &self.stats
    }

    pub(super) fn stats_mut(&mut self) -> &mut ParseStats {
        &mut self.stats
    }

    /// The ordinal the next request head gets.
    pub(super) fn next_ordinal(&self) -> u32 {
        self.heads
    }

    /// Requests were counted before a restart. Still counted from the connection's start only
    /// if none were and this pairing sees the connection from its first byte (a TLS connection
    /// taken over by its library hooks before any plaintext); after lost bytes it never is.
    pub(super) fn continue_ordinals_from(&mut self, next: u32) {
        self.heads = next;
        self.from_start &= next == 0;
    }

    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn take_started(&mut self) -> std::vec::Drain<'_, Started> {
        self.started.drain(..)
    }

    pub(super) fn seen_start(&self) -> bool {
        self.seen_start
    }

    pub(super) fn not_http(&self) -> bool {
        self.not_http
    }

    pub(super) fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// The connection closed: requests end at their last byte seen, a response in progress ends
    /// where it stands (its status is worth more than its missing tail), requests without a
    /// response are reported with none.
    pub(super) fn close(&mut self, out: &mut Vec<Exchange>) {
        for p in &mut self.pending {
            p.done = true;
            p.response = match std::mem::replace(&mut p.response, ResponseSlot::Waiting) {
                ResponseSlot::Waiting => ResponseSlot::Done(None),
                ResponseSlot::InProgress { response, .. } => ResponseSlot::Done(Some(response)),
                done @ ResponseSlot::Done(_) => done,
            };
        }
        self.current_response = CurrentResponse::None;
        self.release(out);
    }

    /// Nothing arrived for a while: a response whose end cannot be known ends at its last byte
    /// seen, and a request body that a finished response overtook is taken as ended.
    pub(super) fn flush_idle(&mut self, out: &mut Vec<Exchange>) {
        for p in &mut self.pending {
            if let ResponseSlot::InProgress { unknown_end: true, .. } = p.response {
                finish_response(p);
            }
            if matches!(p.response, ResponseSlot::Done(_)) {
                p.done = true;
            }
        }
        self.release(out);
    }

    /// Releases finished exchanges from the front of the queue.
    fn release(&mut self, out: &mut Vec<Exchange>) {
        while let Some(front) = self.pending.front() {
            if !front.done || !matches!(front.response, ResponseSlot::Done(_)) {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let (Some(head), ResponseSlot::Done(response)) = (p.head, p.response) else {
                continue;
            };
            out.push(Exchange {
                request_direction: self.request_direction,
                request: Request {
                    head,
                    start_ns: p.start_ns,
                    end_ns: p.end_ns,
                    body_bytes: p.body_bytes,
                    ordinal: p.ordinal,
                    tid: p.tid,
                },
                response,
            });
        }
    }

    /// The request whose bytes are arriving, if its body has not ended.
    fn open_request(&mut self) -> Option<&mut Pending> {
        self.pending.back_mut().filter(|p| !p.done)
    }

    /// The request whose response's bytes are arriving.
    fn responding(&mut self) -> Option<&mut Pending> {
        if self.current_response != CurrentResponse::Paired {
            return None;
        }
        self.pending.iter_mut().find(|p| matches!(p.response, ResponseSlot::InProgress { .. }))
    }

    fn push_request(&mut self, pending: Pending) {
        if self.pending.len() >= self.max_pipelined {
            self.pending.pop_front();
            self.stats.dropped_requests += 1;
        }
        self.pending.push_back(pending);
    }
}

fn finish_response(p: &mut Pending) {
    if let ResponseSlot::InProgress { response, .. } =
        std::mem::replace(&mut p.response, ResponseSlot::Waiting)
    {
        p.response = ResponseSlot::Done(Some(response));
    }
}

/// What a [`super::stream::Stream`] reports to, for the length of one `feed`.
pub(super) struct Sink<'a> {
    pairing: &'a mut Pairing,
    out: &'a mut Vec<Exchange>,
    /// The thread whose syscall moved the bytes being fed.
    tid: u32,
}

impl<'a> Sink<'a> {
    pub(super) fn new(pairing: &'a mut Pairing, out: &'a mut Vec<Exchange>, tid: u32) -> Self {
        Self { pairing, out, tid }
    }

    pub(super) fn stats(&mut self) -> &mut ParseStats {
        &mut self.pairing.stats
    }

    pub(super) fn error(&mut self, error: ParseError) {
        let p = &mut *self.pairing;
        p.stats.parse_errors += 1;
        p.stats.last_error = Some(error);
        if p.strict_first_start && !p.seen_start {
            p.not_http = true;
        }
    }

    /// A message started, in a chunk at `ts`. A message in the other direction whose end cannot
    /// be known ends now: a response starting ends its request, a request starting ends the
    /// previous response (the peer would not send it before the end it saw).
    pub(super) fn start(&mut self, kind: MessageKind, _ts: u64) {
        let p = &mut *self.pairing;
        p.seen_start = true;
        match kind {
            MessageKind::Request => {
                if let Some(responding) = p.responding()
                    && let ResponseSlot::InProgress { unknown_end: true, .. } = responding.response
                {
                    finish_response(responding);
                    p.current_response = CurrentResponse::None;
                }
            }
            MessageKind::Response => {
                if let Some(request) = p.open_request()
                    && request.unknown_end
                {
                    request.done = true;
                }
            }
        }
        p.release(self.out);
    }

    /// A head is complete: queue or pair it, and tell the stream how its body is delimited.
    pub(super) fn head(&mut self, head: Head, start_ns: u64, ts: u64) -> Plan {
        let p = &mut *self.pairing;
        match head {
            Head::Request(head, body) => {
                let plan = request_plan(&body, head.truncated);
                let ordinal = p.heads;
                p.heads = p.heads.wrapping_add(1);
                p.started.push(Started {
                    direction: p.request_direction,
                    ordinal,
                    from_start: p.from_start,
                    tid: self.tid,
                    start_ns,
                    fingerprint: Started::fingerprint_of(&head),
                    traceparent: head.traceparent.clone(),
                    tracestate: head.traceparent.as_ref().and(head.tracestate.clone()),
                    otlp_export: Started::is_otlp_export(&head),
                    kernel: None,
                });
                p.push_request(Pending {
                    head: Some(head),
                    start_ns,
                    end_ns: ts,
                    body_bytes: 0,
                    ordinal,
                    tid: self.tid,
                    done: false,
                    unknown_end: false,
                    response: ResponseSlot::Waiting,
                });
                plan
            }
            Head::Response(head, body) => {
                let status = head.status;
                if (100..200).contains(&status) && status != 101 {
                    // Interim (100 Continue, 103 Early Hints): the final response is still to come.
                    p.current_response = CurrentResponse::Interim;
                    return Plan::NoBody;
                }
                let waiting = p.pending.iter_mut().find(|q| matches!(q.response, ResponseSlot::Waiting));
                let Some(request) = waiting else {
                    p.stats.orphan_responses += 1;
                    p.current_response = CurrentResponse::Orphan;
                    let plan = response_plan(status, None, &body, head.truncated);
                    if plan == Plan::Upgrade {
                        p.upgraded = true;
                    }
                    return plan;
                };
                let method = request.head.as_ref().map(|h| &*h.method);
                let plan = response_plan(status, method, &body, head.truncated);
                let response = Response { head, start_ns, end_ns: ts, body_bytes: 0 };
                request.response = ResponseSlot::InProgress { response, unknown_end: false };
                p.current_response = CurrentResponse::Paired;
                if plan == Plan::Upgrade {
                    // Nothing more of this connection will be parsed: the exchange is complete.
                    request.done = true;
                    finish_response(request);
                    p.current_response = CurrentResponse::None;
                    p.upgraded = true;
                    p.release(self.out);
                }
                plan
            }
        }
    }

    /// A chunk at `ts` held bytes of the current message, `n` of them body.
    pub(super) fn bytes(&mut self, kind: MessageKind, n: u64, ts: u64) {
        let p = &mut *self.pairing;
        match kind {
            MessageKind::Request => {
                if let Some(request) = p.open_request() {
                    request.body_bytes = request.body_bytes.saturating_add(n);
                    request.end_ns = ts;
                }
            }
            MessageKind::Response => {
                if let Some(ResponseSlot::InProgress { response, .. }) =
                    p.responding().map(|q| &mut q.response)
                {
                    response.body_bytes = response.body_bytes.saturating_add(n);
                    response.end_ns = ts;
                }
            }
        }
    }

    /// The current message ended (at the last chunk that held its bytes). Harmless when there is
    /// none, e.g. when the other direction already ended it.
    pub(super) fn end(&mut self, kind: MessageKind) {
        let p = &mut *self.pairing;
        match kind {
            MessageKind::Request => {
                if let Some(request) = p.open_request() {
                    request.done = true;
                }
            }
            MessageKind::Response => {
                if let Some(request) = p.responding() {
                    finish_response(request);
                }
                p.current_response = CurrentResponse::None;
            }
        }
        p.release(self.out);
    }

    /// The current message's end cannot be known from its own bytes.
    pub(super) fn unknown_end(&mut self, kind: MessageKind) {
        let p = &mut *self.pairing;
        match kind {
            MessageKind::Request => {
                if let Some(request) = p.open_request() {
                    request.unknown_end = true;
                }
            }
            MessageKind::Response => {
                if let Some(ResponseSlot::InProgress { unknown_end, .. }) =
                    p.responding().map(|q| &mut q.response)
                {
                    *unknown_end = true;
                }
            }
        }
    }

    /// A message started but its head was unusable.
    pub(super) fn bad_head(&mut self, kind: MessageKind) {
        let p = &mut *self.pairing;
        match kind {
            // Its response (likely a 400 or 431) still comes: keep its place in the queue.
            MessageKind::Request => p.push_request(Pending {
                head: None,
                start_ns: 0,
                end_ns: 0,
                body_bytes: 0,
                ordinal: 0,
                tid: self.tid,
                done: true,
                unknown_end: false,
                response: ResponseSlot::Waiting,
            }),
            // It answered the oldest waiting request, how we cannot tell: report that request
            // without a response rather than pair it with the next one.
            MessageKind::Response => {
                if let Some(request) =
                    p.pending.iter_mut().find(|q| matches!(q.response, ResponseSlot::Waiting))
                {
                    request.response = ResponseSlot::Done(None);
                }
                p.current_response = CurrentResponse::None;
            }
        }
        p.release(self.out);
    }
}

/// RFC 9112 §6.3 for requests: no Content-Length and no chunked coding means no body.
fn request_plan(body: &BodyHeaders, truncated: bool) -> Plan {
    if truncated {
        return Plan::Unknown;
    }
    match (body.transfer_encoding, body.content_length) {
        (TransferEncoding::Chunked, _) => Plan::Chunked,
        // A server must answer 400 and close (§6.3 item 4): the end is the response's start.
        (TransferEncoding::Other, _) => Plan::Unknown,
        (TransferEncoding::Absent, Some(n)) => Plan::Length(n),
        (TransferEncoding::Absent, None) => Plan::NoBody,
    }
}

/// RFC 9112 §6.3 for responses; `method` is the request's, None when it is unknown.
fn response_plan(status: u16, method: Option<&str>, body: &BodyHeaders, truncated: bool) -> Plan {
    let connect = method == Some("CONNECT");
    if status == 101 || (connect && (200..300).contains(&status)) {
        return Plan::Upgrade;
    }
    if (100..200).contains(&status) || status == 204 || status == 304 || method == Some("HEAD") {
        return Plan::NoBody;
    }
    if truncated {
        return Plan::Unknown;
    }
    match (body.transfer_encoding, body.content_length) {
        (TransferEncoding::Chunked, _) => Plan::Chunked,
        (TransferEncoding::Other, _) => Plan::UntilClose,
        (TransferEncoding::Absent, Some(n)) => Plan::Length(n),
        (TransferEncoding::Absent, None) => Plan::UntilClose,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_plans() {
        let body = |cl, te| BodyHeaders { content_length: cl, transfer_encoding: te };
        use TransferEncoding::{Absent, Chunked, Other};
        let requests: &[(BodyHeaders, bool, Plan)] = &[
            (body(None, Absent), false, Plan::NoBody),
            (body(Some(5), Absent), false, Plan::Length(5)),
            (body(Some(5), Chunked), false, Plan::Chunked),
            (body(None, Other), false, Plan::Unknown),
            (body(None, Absent), true, Plan::Unknown),
        ];
        for (b, truncated, want) in requests {
            assert_eq!(request_plan(b, *truncated), *want, "{b:?} truncated={truncated}");
        }
        let responses: &[(u16, Option<&str>, BodyHeaders, bool, Plan)] = &[
            (200, Some("GET"), body(Some(5), Absent), false, Plan::Length(5)),
            (200, Some("HEAD"), body(Some(5), Absent), false, Plan::NoBody),
            (200, Some("GET"), body(None, Absent), false, Plan::UntilClose),
            (200, Some("GET"), body(None, Other), false, Plan::UntilClose),
            (200, Some("GET"), body(Some(9), Chunked), false, Plan::Chunked),
            (204, Some("GET"), body(Some(5), Absent), false, Plan::NoBody),
            (304, Some("GET"), body(Some(5), Absent), false, Plan::NoBody),
            (100, Some("POST"), body(None, Absent), false, Plan::NoBody),
            (101, Some("GET"), body(None, Absent), false, Plan::Upgrade),
            (200, Some("CONNECT"), body(None, Absent), false, Plan::Upgrade),
            (407, Some("CONNECT"), body(Some(3), Absent), false, Plan::Length(3)),
            (200, None, body(Some(5), Absent), false, Plan::Length(5)),
            (200, Some("GET"), body(Some(5), Absent), true, Plan::Unknown),
            (204, Some("GET"), body(None, Absent), true, Plan::NoBody),
        ];
        for (status, method, b, truncated, want) in responses {
            assert_eq!(response_plan(*status, *method, b, *truncated), *want, "{status} {method:?} {b:?}");
        }
    }
}
