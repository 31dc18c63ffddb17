//! sonde spans → the protobuf bytes of an `ExportTraceServiceRequest`, written directly.
//!
//! Building opentelemetry-proto's message structs first (and letting prost encode them) cost more
//! than everything else sonde does per span: every string cloned into the structs, every nested
//! length computed once per level of nesting, and all of it freed again. Here each span is
//! written once, from the span itself, into the request's buffer; the finished request is
//! `Bytes`, so a retry sends it again without copying. `convert.rs` keeps the straightforward
//! conversion as the reference the tests compare these bytes with, byte for byte.
//!
//! A span is encoded as soon as it is handed to the exporter (`span`), and waits in the queue as
//! those bytes: ~300 of them instead of the ~1 KiB a `Span` and its attribute values occupy, so
//! a collector that falls behind costs a third of the memory. A request then groups the encoded
//! spans by process and concatenates them (`request`).
//!
//! Field numbers and wire types are those of opentelemetry-proto's `trace.proto`,
//! `resource.proto` and `common.proto` (v1); fields are written in the order prost writes them (by field number)
//! and fields holding their default value are left out, as proto3 encoders do.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1 as trace;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::span::model::{AttrValue, KeyValue, Resource, Span, SpanKind, Status};

/// The instrumentation scope of every span sonde makes.
pub const SCOPE_NAME: &str = "sonde";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `SpanFlags`: bits 0–7 carry the W3C trace flags; bit 8 says whether bit 9 ("the parent is
/// remote") is known. sonde knows: a server span's parent came in a `traceparent` header from
/// another process, a client span's parent is a span of its own process (or there is none).
const HAS_IS_REMOTE: u32 = trace::SpanFlags::ContextHasIsRemoteMask as u32;
const IS_REMOTE: u32 = trace::SpanFlags::ContextIsRemoteMask as u32;

const KIND_SERVER: u64 = trace::span::SpanKind::Server as u64;
const KIND_CLIENT: u64 = trace::span::SpanKind::Client as u64;
const STATUS_CODE_ERROR: u64 = trace::status::StatusCode::Error as u64;

/// A span as it waits for export: its `ScopeSpans.spans` field, written out, and its process.
pub struct EncodedSpan {
    pub resource: Arc<Resource>,
    field: Box<[u8]>,
}

impl EncodedSpan {
    /// Bytes this span adds to a request.
    pub fn len(&self) -> usize {
        self.field.len()
    }
}

/// Writes `span` as a `ScopeSpans.spans` field.
pub fn span(span: &Span) -> EncodedSpan {
    let mut body = Vec::with_capacity(384);
    span_body(span, &mut body);
    let mut field = Vec::with_capacity(field_len(2, body.len()));
    bytes_field(2, &body, &mut field);
    EncodedSpan { resource: Arc::clone(&span.resource), field: field.into_boxed_slice() }
}

/// Writes the request for `spans`: one `ResourceSpans` per process (`Resource::id`), in order of
/// first appearance, spans in their order within it.
pub fn request(spans: &[EncodedSpan]) -> Bytes {
    let mut index: HashMap<u64, usize> = HashMap::new();
    // Per resource: the resource, and its spans' fields in order.
    let mut groups: Vec<(&Resource, Vec<&[u8]>)> = Vec::new();
    for span in spans {
        let i = *index.entry(span.resource.id).or_insert_with(|| {
            groups.push((&span.resource, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(&span.field);
    }

    let scope = scope_body();
    let spans_len: usize = spans.iter().map(EncodedSpan::len).sum();
    let mut out = Vec::with_capacity(spans_len + groups.len() * 1024);
    let mut resource = Vec::new();
    for (process, fields) in &groups {
        let spans_len: usize = fields.iter().map(|f| f.len()).sum();
        resource.clear();
        resource_body(process, &mut resource);
        let scope_spans_len = field_len(1, scope.len()) + spans_len;
        let resource_spans_len = field_len(1, resource.len()) + field_len(2, scope_spans_len);
        // ExportTraceServiceRequest.resource_spans
        length_delimited(1, resource_spans_len, &mut out);
        // ResourceSpans.resource
        bytes_field(1, &resource, &mut out);
        // ResourceSpans.scope_spans: the scope, then the spans written above.
        length_delimited(2, scope_spans_len, &mut out);
        bytes_field(1, &scope, &mut out);
        fields.iter().for_each(|field| out.extend_from_slice(field));
    }
    Bytes::from(out)
}

/// `Resource`: its attributes.
fn resource_body(resource: &Resource, out: &mut Vec<u8>) {
    for kv in &resource.attributes {
        attribute(1, kv, out);
    }
}

/// `InstrumentationScope`: name and version.
fn scope_body() -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(1, SCOPE_NAME.as_bytes(), &mut out);
    bytes_field(2, SCOPE_VERSION.as_bytes(), &mut out);
    out
}

fn span_body(span: &Span, out: &mut Vec<u8>) {
    let remote = span.kind == SpanKind::Server && span.parent_span_id.is_some();
    let flags = u32::from(span.trace_flags.to_u8()) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 };
    let kind = match span.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    };
    bytes_field(1, &span.trace_id.to_bytes(), out);
    bytes_field(2, &span.span_id.to_bytes(), out);
    bytes_field(3, span.trace_state.as_bytes(), out);
    if let Some(parent) = span.parent_span_id {
        bytes_field(4, &parent.to_bytes(), out);
    }
    bytes_field(5, span.name.as_bytes(), out);
    varint_field(6, kind, out);
    fixed64_field(7, span.start_unix_ns, out);
    fixed64_field(8, span.end_unix_ns, out);
    for kv in &span.attributes {
        attribute(9, kv, out);
    }
    if let Status::Error { message } = &span.status {
        // Status { message = 2, code = 3 }
        let len = string_field_len(2, message) + key_len(3) + encoded_len_varint(STATUS_CODE_ERROR);
        length_delimited(15, len, out);
        bytes_field(2, message.as_bytes(), out);
        varint_field(3, STATUS_CODE_ERROR, out);
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&flags.to_le_bytes());
}

/// A `KeyValue { key = 1, value = 2: AnyValue }` as field `tag`.
fn attribute(tag: u32, kv: &KeyValue, out: &mut Vec<u8>) {
    // AnyValue { string_value = 1, bool_value = 2, int_value = 3 }: a oneof, written even when
    // it holds the default value.
    let value_len = match &kv.value {
        AttrValue::Str(s) => field_len(1, s.len()),
        AttrValue::Bool(_) => key_len(2) + 1,
        // int64 is written as the two's complement varint of its u64.
        AttrValue::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
    };
    let len = string_field_len(1, &kv.key) + field_len(2, value_len);
    length_delimited(tag, len, out);
    bytes_field(1, kv.key.as_bytes(), out);
    length_delimited(2, value_len, out);
    match &kv.value {
        AttrValue::Str(s) => {
            // Inside a oneof an empty string is still the value that was set.
            length_delimited(1, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        AttrValue::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            out.push(u8::from(*b));
        }
        AttrValue::Int(i) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*i as u64, out);
        }
    }
}

/// Key and length of a length-delimited field whose `len` bytes the caller writes next.
fn length_delimited(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// A `bytes`, `string` or message field; left out when empty.
fn bytes_field(tag: u32, value: &[u8], out: &mut Vec<u8>) {
    if !value.is_empty() {
        length_delimited(tag, value.len(), out);
        out.extend_from_slice(value);
    }
}

fn varint_field(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn fixed64_field(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// Encoded size of a length-delimited field of `len` bytes (always written).
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Encoded size of a string field as `bytes_field` writes it (left out when empty).
fn string_field_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { field_len(tag, s.len()) }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    use super::*;
    use crate::export::otlp::convert::to_request;
    use crate::export::testutil::{resource, span};
    use crate::span::model::TraceFlags;

    /// The same bytes as building opentelemetry-proto's structs and encoding them with prost.
    fn assert_same_as_prost(spans: &[Span]) {
        let encoded: Vec<EncodedSpan> = spans.iter().map(super::span).collect();
        let ours = request(&encoded);
        let reference = to_request(spans);
        let decoded = ExportTraceServiceRequest::decode(ours.clone()).expect("decodes");
        assert_eq!(decoded, reference);
        assert_eq!(ours.as_ref(), reference.encode_to_vec().as_slice());
    }

    #[test]
    fn empty_batch() {
        assert_same_as_prost(&[]);
    }

    #[test]
    fn matches_prost_for_every_field() {
        let (a, b) = (resource(1, "frontend"), resource(2, "cart"));
        let mut root = span(&a, 1, None, SpanKind::Server, "GET /");
        root.trace_flags = TraceFlags::SAMPLED;
        root.trace_state = "vendor=x,other=y".into();
        root.attributes.push(KeyValue { key: "sonde.flag".into(), value: AttrValue::Bool(true) });
        root.attributes.push(KeyValue { key: "sonde.off".into(), value: AttrValue::Bool(false) });
        root.attributes.push(KeyValue::int("sonde.zero", 0));
        root.attributes.push(KeyValue::int("sonde.negative", -42));
        root.attributes.push(KeyValue::int("sonde.big", i64::MAX));
        root.attributes.push(KeyValue::str("sonde.empty", ""));
        root.attributes.push(KeyValue::str("", "empty key"));
        let mut child = span(&a, 3, Some(1), SpanKind::Client, "GET");
        child.status = Status::Error { message: "HTTP 503".into() };
        let mut error_no_message = span(&b, 2, Some(9), SpanKind::Server, "POST /cart");
        error_no_message.status = Status::Error { message: String::new() };
        error_no_message.trace_flags = TraceFlags::NOT_SAMPLED;
        let mut long = span(&b, 4, None, SpanKind::Server, &"x".repeat(300));
        long.attributes.push(KeyValue::str("url.path", "/".repeat(20_000)));
        long.start_unix_ns = 0;
        assert_same_as_prost(&[root, child, error_no_message, long]);
    }

    #[test]
    fn many_spans_and_resources() {
        let resources: Vec<_> = (0..7).map(|i| resource(i, &format!("svc{i}"))).collect();
        let spans: Vec<Span> = (0..600_usize)
            .map(|i| {
                let id = (i % 250) as u8 + 1;
                span(&resources[i % 7], id, (i % 3 == 0).then_some(id - 1), SpanKind::Server, "GET /x")
            })
            .collect();
        assert_same_as_prost(&spans);
    }
}
