//! sonde spans → opentelemetry-proto's `ExportTraceServiceRequest` structs, one `ResourceSpans`
//! per traced process: the plain conversion, kept as the reference that `encode.rs`, which
//! writes the same request's bytes directly, is tested against.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::resource::v1 as resource;
use opentelemetry_proto::tonic::trace::v1 as trace;

use super::encode::{SCOPE_NAME, SCOPE_VERSION};
use crate::span::model::{AttrValue, KeyValue, Span, SpanKind, Status};

/// `SpanFlags`: bits 0–7 carry the W3C trace flags; bit 8 says whether bit 9 ("the parent is
/// remote") is known. sonde knows: a server span's parent came in a `traceparent` header from
/// another process, a client span's parent is a span of its own process (or there is none).
const HAS_IS_REMOTE: u32 = trace::SpanFlags::ContextHasIsRemoteMask as u32;
const IS_REMOTE: u32 = trace::SpanFlags::ContextIsRemoteMask as u32;

/// Groups by `Resource::id`, keeping the order of first appearance (and of spans within).
pub fn to_request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut resource_spans: Vec<trace::ResourceSpans> = Vec::new();
    for span in spans {
        let i = *index.entry(span.resource.id).or_insert_with(|| {
            resource_spans.push(trace::ResourceSpans {
                resource: Some(resource::Resource {
                    attributes: attributes(&span.resource.attributes),
                    ..Default::default()
                }),
                scope_spans: vec![trace::ScopeSpans {
                    scope: Some(common::InstrumentationScope {
                        name: SCOPE_NAME.to_owned(),
                        version: SCOPE_VERSION.to_owned(),
                        ..Default::default()
                    }),
                    spans: Vec::new(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
            resource_spans.len() - 1
        });
        resource_spans[i].scope_spans[0].spans.push(to_proto(span));
    }
    ExportTraceServiceRequest { resource_spans }
}

fn to_proto(span: &Span) -> trace::Span {
    let remote = span.kind == SpanKind::Server && span.parent_span_id.is_some();
    let flags = u32::from(span.trace_flags.to_u8()) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 };
    let kind = match span.kind {
        SpanKind::Server => trace::span::SpanKind::Server,
        SpanKind::Client => trace::span::SpanKind::Client,
    };
    let status = match &span.status {
        Status::Unset => None,
        Status::Error { message } => {
            Some(trace::Status { message: message.clone(), code: trace::status::StatusCode::Error as i32 })
        }
    };
    trace::Span {
        trace_id: span.trace_id.to_bytes().to_vec(),
        span_id: span.span_id.to_bytes().to_vec(),
        trace_state: span.trace_state.clone(),
        parent_span_id: span.parent_span_id.map(|p| p.to_bytes().to_vec()).unwrap_or_default(),
        flags,
        name: span.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        attributes: attributes(&span.attributes),
        status,
        ..Default::default()
    }
}

fn attributes(attrs: &[KeyValue]) -> Vec<common::KeyValue> {
    attrs
        .iter()
        .map(|kv| common::KeyValue {
            key: kv.key.to_string(),
            value: Some(common::AnyValue { value: Some(any_value(&kv.value)) }),
        })
        .collect()
}

fn any_value(value: &AttrValue) -> common::any_value::Value {
    use common::any_value::Value;
    match value {
        AttrValue::Str(s) => Value::StringValue(s.to_string()),
        AttrValue::Int(i) => Value::IntValue(*i),
        AttrValue::Bool(b) => Value::BoolValue(*b),
    }
}

#[cfg(test)]
mod tests {
    use common::any_value::Value;

    use super::*;
    use crate::export::testutil::{resource, span};
    use crate::span::model::TraceFlags;

    fn attr<'a>(attrs: &'a [common::KeyValue], key: &str) -> Option<&'a Value> {
        attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn groups_by_resource_in_order_of_appearance() {
        let (a, b) = (resource(1, "frontend"), resource(2, "cart"));
        let spans = [
            span(&a, 1, None, SpanKind::Server, "GET /"),
            span(&b, 2, Some(1), SpanKind::Server, "GET /cart"),
            span(&a, 3, Some(1), SpanKind::Client, "GET"),
        ];
        let req = to_request(&spans);
        assert_eq!(req.resource_spans.len(), 2);
        let names: Vec<Vec<&str>> = req
            .resource_spans
            .iter()
            .map(|rs| {
                assert_eq!(rs.scope_spans.len(), 1);
                let scope = rs.scope_spans[0].scope.as_ref().unwrap();
                assert_eq!((scope.name.as_str(), scope.version.as_str()), ("sonde", SCOPE_VERSION));
                rs.scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect()
            })
            .collect();
        assert_eq!(names, [vec!["GET /", "GET"], vec!["GET /cart"]]);
        let res = req.resource_spans[1].resource.as_ref().unwrap();
        assert_eq!(attr(&res.attributes, "service.name"), Some(&Value::StringValue("cart".into())));
        assert_eq!(attr(&res.attributes, "process.pid"), Some(&Value::IntValue(2)));
    }

    #[test]
    fn span_fields() {
        let r = resource(7, "svc");
        let mut root = span(&r, 1, None, SpanKind::Server, "GET /a");
        root.trace_flags = TraceFlags::SAMPLED;
        root.trace_state = "vendor=x".into();
        root.attributes.push(KeyValue { key: "sonde.test.flag".into(), value: AttrValue::Bool(true) });
        let mut child = span(&r, 2, Some(1), SpanKind::Client, "GET");
        child.status = Status::Error { message: "HTTP 503".into() };
        let mut remote = span(&r, 3, Some(9), SpanKind::Server, "POST /b");
        remote.trace_flags = TraceFlags::NOT_SAMPLED;

        let req = to_request(&[root.clone(), child, remote]);
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        let (p_root, p_child, p_remote) = (&spans[0], &spans[1], &spans[2]);

        assert_eq!(p_root.trace_id, root.trace_id.to_bytes().to_vec());
        assert_eq!(p_root.span_id, root.span_id.to_bytes().to_vec());
        assert!(p_root.parent_span_id.is_empty(), "no parent is empty bytes");
        assert_eq!(p_child.parent_span_id, root.span_id.to_bytes().to_vec());
        assert_eq!(p_root.kind, trace::span::SpanKind::Server as i32);
        assert_eq!(p_child.kind, trace::span::SpanKind::Client as i32);
        assert_eq!(
            (p_root.start_time_unix_nano, p_root.end_time_unix_nano),
            (root.start_unix_ns, root.end_unix_ns)
        );
        assert_eq!(p_root.trace_state, "vendor=x");

        assert_eq!(p_root.flags, 0x01 | 0x100, "sampled, parent known not remote");
        assert_eq!(p_child.flags, 0x01 | 0x100);
        assert_eq!(p_remote.flags, 0x100 | 0x200, "not sampled, remote parent");

        assert_eq!(p_root.status, None, "unset status is left out");
        let status = p_child.status.as_ref().unwrap();
        assert_eq!(status.code, trace::status::StatusCode::Error as i32);
        assert_eq!(status.message, "HTTP 503");

        assert_eq!(attr(&p_root.attributes, "http.request.method"), Some(&Value::StringValue("GET".into())));
        assert_eq!(attr(&p_root.attributes, "http.response.status_code"), Some(&Value::IntValue(200)));
        assert_eq!(attr(&p_root.attributes, "sonde.test.flag"), Some(&Value::BoolValue(true)));
    }
}
