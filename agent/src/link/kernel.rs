//! Trace contexts the kernel chose (`--context-propagation tcp`): each arrives in a context event
//! just before the data event whose bytes begin its request, and is handed to the request the
//! parser starts from that data event. Its ids went on the wire, so the linker takes them as they
//! are (see the module doc of `link`).

use foldhash::HashMap;
use sonde_common::{
    DataEvent, Direction,
    propagation::{ContextEvent, HeaderOutcome, Origin},
};

use crate::span::model::{SpanId, TraceFlags, TraceId};

/// The ids the kernel gave one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelContext {
    pub direction: Direction,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's CLIENT span (a server request whose TCP option named it), or the server span
    /// the writing thread was serving (a client request); None: the request starts a trace.
    pub parent_span_id: Option<SpanId>,
    pub flags: TraceFlags,
    pub origin: Origin,
    /// For a client request: what the kernel did with its `traceparent` header.
    pub header: HeaderOutcome,
}

impl KernelContext {
    /// None for an event whose bytes cannot be a context the kernel made (all-zero ids, an origin
    /// or direction that does not exist).
    pub fn from_event(event: &ContextEvent) -> Option<Self> {
        let ids = &event.ids;
        let origin = Origin::from_u8(ids.origin)?;
        let direction = match event.direction {
            d if d == Direction::Ingress as u8 => Direction::Ingress,
            d if d == Direction::Egress as u8 => Direction::Egress,
            _ => return None,
        };
        let trace_id = TraceId::from_bytes(ids.trace_id);
        let span_id = SpanId::from_bytes(ids.span_id);
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let parent = SpanId::from_bytes(ids.parent_id);
        Some(Self {
            direction,
            trace_id,
            span_id,
            parent_span_id: (parent != SpanId::INVALID).then_some(parent),
            flags: TraceFlags::new(ids.flags),
            origin,
            header: HeaderOutcome::from_u8(ids.header),
        })
    }
}

/// More contexts waiting than this (their data events lost) and the oldest half goes.
const MAX_WAITING: usize = 16_384;
/// Marks a carried context (in a padding byte the kernel leaves zero).
const CARRIED: u8 = 1;

/// Contexts waiting for their data event, per (tgid, fd).
#[derive(Default)]
pub struct KernelContexts {
    waiting: HashMap<(u32, i32), ContextEvent>,
    /// Contexts whose data event held only the start of its request's head, waiting for the data
    /// event after it (see [`KernelContexts::carry`]).
    carried: HashMap<(u32, i32), ContextEvent>,
    /// Context events that did not decode into a context.
    pub invalid: u64,
}

impl KernelContexts {
    pub fn file(&mut self, event: &ContextEvent) {
        if KernelContext::from_event(event).is_none() {
            self.invalid += 1;
            return;
        }
        if self.waiting.len() >= MAX_WAITING {
            let mut n = 0;
            self.waiting.retain(|_, _| {
                n += 1;
                n % 2 == 0
            });
        }
        self.waiting.insert((event.header.tgid, event.header.fd), *event);
    }

    /// The context for the request `event` begins, if the kernel gave one. One filed for another
    /// data event of the connection is dropped: its data event was lost, or this one is later.
    pub fn take(&mut self, event: &DataEvent) -> Option<ContextEvent> {
        let key = (event.header.tgid, event.header.fd);
        let carried = self.carried.remove(&key).filter(|c| c.data_seq == event.seq);
        let context = self.waiting.remove(&key).filter(|c| c.data_seq == event.seq);
        context.or(carried)
    }

    /// `context` was taken for `event`, which began no request: its bytes were only the start of
    /// the request's head (a read that returned the request line alone). The request begins with
    /// the next data event of the connection, which gets it — that one only, so that a context
    /// never outlives the head it was made for.
    pub fn carry(&mut self, mut context: ContextEvent, event: &DataEvent) {
        if Self::was_carried(&context) || context.data_seq != event.seq || self.carried.len() >= MAX_WAITING {
            return;
        }
        // Marks it as carried: a context is carried once.
        context.data_seq = event.seq.wrapping_add(1);
        context._pad[0] = CARRIED;
        self.carried.insert((event.header.tgid, event.header.fd), context);
    }

    /// Whether `context` was carried to the data event after its own.
    pub fn was_carried(context: &ContextEvent) -> bool {
        context._pad[0] == CARRIED
    }
}

#[cfg(test)]
mod tests {
    use sonde_common::{EventHeader, EventKind, propagation::Ids};

    use super::*;

    fn event(fd: i32, data_seq: u32, span: u8) -> ContextEvent {
        ContextEvent {
            header: EventHeader { ts_ns: 1, tgid: 7, tid: 7, fd, kind: EventKind::Context as u32 },
            ids: Ids {
                trace_id: [3; 16],
                span_id: [span; 8],
                parent_id: [0; 8],
                fd,
                flags: 1,
                origin: Origin::New as u8,
                header: 0,
                _pad: 0,
            },
            data_seq,
            direction: Direction::Egress as u8,
            _pad: [0; 3],
        }
    }

    fn data(fd: i32, seq: u32) -> DataEvent {
        DataEvent {
            header: EventHeader { ts_ns: 2, tgid: 7, tid: 7, fd, kind: EventKind::Data as u32 },
            len: 1,
            captured: 1,
            direction: Direction::Egress as u8,
            tls: 0,
            _pad: [0; 2],
            seq,
            offset: 0,
        }
    }

    #[test]
    fn a_context_goes_to_its_own_data_event_only() {
        let mut contexts = KernelContexts::default();
        contexts.file(&event(4, 2, 9));
        assert!(contexts.take(&data(5, 2)).is_none(), "another fd");
        let taken = KernelContext::from_event(&contexts.take(&data(4, 2)).unwrap()).unwrap();
        assert_eq!(taken.span_id, SpanId::from_bytes([9; 8]));
        assert_eq!(taken.parent_span_id, None);
        assert!(contexts.take(&data(4, 2)).is_none(), "taken once");
        contexts.file(&event(4, 3, 9));
        assert_eq!(
            contexts.take(&data(4, 4)),
            None,
            "its data event was lost: dropped, not given to the next"
        );
        assert_eq!(contexts.take(&data(4, 3)), None);
    }

    #[test]
    fn a_context_whose_data_event_began_no_request_goes_to_the_next_one_only() {
        let mut contexts = KernelContexts::default();
        contexts.file(&event(4, 2, 9));
        let context = contexts.take(&data(4, 2)).unwrap();
        contexts.carry(context, &data(4, 2));
        let carried = contexts.take(&data(4, 3)).unwrap();
        assert!(KernelContexts::was_carried(&carried));
        assert_eq!(KernelContext::from_event(&carried).unwrap().span_id, SpanId::from_bytes([9; 8]));
        contexts.carry(carried, &data(4, 3));
        assert_eq!(contexts.take(&data(4, 4)), None, "carried once");
        // A context of the next data event's own wins over a carried one.
        contexts.file(&event(4, 5, 9));
        let context = contexts.take(&data(4, 5)).unwrap();
        contexts.carry(context, &data(4, 5));
        contexts.file(&event(4, 6, 8));
        let own = contexts.take(&data(4, 6)).unwrap();
        assert_eq!(KernelContext::from_event(&own).unwrap().span_id, SpanId::from_bytes([8; 8]));
    }

    #[test]
    fn zero_ids_are_refused() {
        let mut contexts = KernelContexts::default();
        contexts.file(&event(4, 2, 0));
        assert_eq!(contexts.invalid, 1);
        assert!(contexts.take(&data(4, 2)).is_none());
    }
}
