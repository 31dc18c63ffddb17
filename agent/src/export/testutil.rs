//! Span builders shared by the export stage's unit tests.

use std::sync::Arc;

use crate::span::model::{KeyValue, Resource, Span, SpanId, SpanKind, Status, TraceFlags, TraceId};

pub const TRACE_ID: TraceId = TraceId::from_bytes([
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
]);
/// 2024-05-01T12:00:00Z, so rendered timestamps are stable.
pub const T0: u64 = 1_714_564_800_000_000_000;

pub fn resource(id: u64, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        id,
        service_name: service.to_owned(),
        attributes: vec![
            KeyValue::str("service.name", service.to_owned()),
            KeyValue::int("process.pid", id as i64),
        ],
    })
}

/// A sampled 200 span of `TRACE_ID` with span id `[id; 8]`, 1 ms long, starting `id` ms after T0.
pub fn span(resource: &Arc<Resource>, id: u8, parent: Option<u8>, kind: SpanKind, name: &str) -> Span {
    let start = T0 + u64::from(id) * 1_000_000;
    Span {
        trace_id: TRACE_ID,
        span_id: SpanId::from_bytes([id; 8]),
        parent_span_id: parent.map(|p| SpanId::from_bytes([p; 8])),
        trace_flags: TraceFlags::SAMPLED,
        trace_state: String::new(),
        name: name.to_owned(),
        kind,
        start_unix_ns: start,
        end_unix_ns: start + 1_000_000,
        attributes: vec![
            KeyValue::str("http.request.method", "GET"),
            KeyValue::int("http.response.status_code", 200),
        ],
        status: Status::Unset,
        resource: Arc::clone(resource),
    }
}
