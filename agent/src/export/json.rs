//! `--print json`: one span per line on stdout, flushed as it arrives, for scripts (`| jq`).

use std::io::{self, Write};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use super::printer::SpanPrinter;
use crate::span::model::{AttrValue, KeyValue, Span, SpanKind, Status};

#[derive(Serialize)]
struct JsonSpan<'a> {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: &'a str,
    kind: &'static str,
    start_unix_nano: u64,
    end_unix_nano: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_message: Option<&'a str>,
    attributes: Map<String, Value>,
    resource: Map<String, Value>,
}

pub(crate) struct JsonPrinter<W> {
    out: W,
}

impl<W: Write> JsonPrinter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self { out }
    }

    pub(crate) fn write_span(&mut self, span: &Span) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &to_json(span))?;
        self.out.write_all(b"\n")?;
        // Scripts read line by line; a block-buffered pipe would hold spans back.
        self.out.flush()
    }
}

impl<W: Write + Send> SpanPrinter for JsonPrinter<W> {
    fn span(&mut self, span: Span, _now: Instant) -> io::Result<()> {
        self.write_span(&span)
    }

    fn tick(&mut self, _now: Instant) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn to_json(span: &Span) -> JsonSpan<'_> {
    let (status, status_message) = match &span.status {
        Status::Unset => ("UNSET", None),
        Status::Error { message } => ("ERROR", Some(message.as_str())),
    };
    JsonSpan {
        trace_id: span.trace_id.to_string(),
        span_id: span.span_id.to_string(),
        parent_span_id: span.parent_span_id.map(|p| p.to_string()),
        name: &span.name,
        kind: match span.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        },
        start_unix_nano: span.start_unix_ns,
        end_unix_nano: span.end_unix_ns,
        status,
        status_message,
        attributes: attributes(&span.attributes),
        resource: attributes(&span.resource.attributes),
    }
}

fn attributes(attrs: &[KeyValue]) -> Map<String, Value> {
    attrs
        .iter()
        .map(|kv| {
            let value = match &kv.value {
                AttrValue::Str(s) => Value::from(&**s),
                AttrValue::Int(i) => Value::from(*i),
                AttrValue::Bool(b) => Value::from(*b),
            };
            (kv.key.to_string(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::export::testutil::{T0, resource, span};

    #[test]
    fn one_object_per_line() {
        let r = resource(3, "cart");
        let root = span(&r, 1, None, SpanKind::Server, "GET /cart");
        let mut child = span(&r, 2, Some(1), SpanKind::Client, "GET");
        child.status = Status::Error { message: "HTTP 503".into() };

        let mut out = Vec::new();
        let mut printer = JsonPrinter::new(&mut out);
        printer.write_span(&root).unwrap();
        printer.write_span(&child).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert!(text.ends_with('\n'));

        assert_eq!(
            lines[0],
            json!({
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "span_id": "0101010101010101",
                "parent_span_id": null,
                "name": "GET /cart",
                "kind": "SERVER",
                "start_unix_nano": T0 + 1_000_000,
                "end_unix_nano": T0 + 2_000_000,
                "status": "UNSET",
                "attributes": {"http.request.method": "GET", "http.response.status_code": 200},
                "resource": {"service.name": "cart", "process.pid": 3},
            })
        );
        assert_eq!(lines[1]["parent_span_id"], "0101010101010101");
        assert_eq!(lines[1]["kind"], "CLIENT");
        assert_eq!(lines[1]["status"], "ERROR");
        assert_eq!(lines[1]["status_message"], "HTTP 503");
        assert!(lines[0].get("status_message").is_none());
    }
}
