//! The counting end of the bench's collector chain: an OTLP/gRPC trace receiver that counts the
//! spans in each request without decoding them.
//!
//! It shares the 2 cores with nginx, the load generator, sonde and rotel, so whatever it spends
//! is taken from the workload. Decoding every span into opentelemetry-proto structs (a dozen
//! strings and attribute values each) took a visible share of a core at saturation; walking the
//! protobuf framing down to the spans' length prefixes gives the same count for a fraction of it.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Buf as _;
use tonic::{
    Status,
    body::Body,
    codec::{
        Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
    },
    codegen::{BoxFuture, Service, http},
    server::{NamedService, UnaryService},
};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// rotel sends up to 8,192 spans per request; far below this.
const MAX_MESSAGE: usize = 64 << 20;

/// The gRPC service: `TraceService/Export`, answering each request with an empty (successful)
/// response after adding its spans to the count.
#[derive(Clone)]
pub struct SpanCounter {
    count: Arc<AtomicU64>,
}

impl SpanCounter {
    pub fn new(count: Arc<AtomicU64>) -> SpanCounter {
        SpanCounter { count }
    }
}

impl NamedService for SpanCounter {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for SpanCounter
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let count = self.count.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            let mut accept = EnabledCompressionEncodings::default();
            // rotel 0.0.1a15 gzips what it forwards, whatever its flags say.
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(CountCodec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE), None);
            Ok(grpc.unary(Export(count), req).await)
        })
    }
}

struct Export(Arc<AtomicU64>);

impl UnaryService<u64> for Export {
    type Response = ();
    type Future = BoxFuture<tonic::Response<()>, Status>;

    fn call(&mut self, request: tonic::Request<u64>) -> Self::Future {
        self.0.fetch_add(request.into_inner(), Ordering::Relaxed);
        Box::pin(async { Ok(tonic::Response::new(())) })
    }
}

/// Decodes an `ExportTraceServiceRequest` into its number of spans; encodes the empty
/// `ExportTraceServiceResponse` (no fields: zero bytes).
struct CountCodec;

impl Codec for CountCodec {
    type Encode = ();
    type Decode = u64;
    type Encoder = CountCodec;
    type Decoder = CountCodec;

    fn encoder(&mut self) -> CountCodec {
        CountCodec
    }

    fn decoder(&mut self) -> CountCodec {
        CountCodec
    }
}

impl Encoder for CountCodec {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, (): (), _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for CountCodec {
    type Item = u64;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u64>, Status> {
        let message = src.copy_to_bytes(src.remaining());
        count_spans(&message)
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("malformed ExportTraceServiceRequest"))
    }
}

/// Spans in an `ExportTraceServiceRequest`: `resource_spans` (field 1) → `scope_spans` (field
/// 2) → `spans` (field 2). None when the framing is broken.
pub fn count_spans(request: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource_spans in fields(request, 1) {
        for scope_spans in fields(resource_spans?, 2) {
            for span in fields(scope_spans?, 2) {
                span?;
                spans += 1;
            }
        }
    }
    Some(spans)
}

/// The length-delimited values of field `wanted` in one protobuf message, other fields skipped;
/// an `Err`-like `None` item (and then the end) when the framing is broken.
fn fields(mut message: &[u8], wanted: u64) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        loop {
            if message.is_empty() {
                return None;
            }
            let Some(found) = next_field(&mut message) else {
                message = &[];
                return Some(None);
            };
            match found {
                (field, Some(value)) if field == wanted => return Some(Some(value)),
                _ => continue,
            }
        }
    })
}

/// One field off the front of `message`: its number, and its bytes when it is length-delimited.
fn next_field<'a>(message: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let key = varint(message)?;
    let (field, wire_type) = (key >> 3, key & 7);
    let skip = |message: &mut &'a [u8], n: usize| -> Option<&'a [u8]> {
        let (value, rest) = message.split_at_checked(n)?;
        *message = rest;
        Some(value)
    };
    match wire_type {
        0 => varint(message).map(|_| (field, None)),
        1 => skip(message, 8).map(|_| (field, None)),
        2 => {
            let len = usize::try_from(varint(message)?).ok()?;
            skip(message, len).map(|value| (field, Some(value)))
        }
        5 => skip(message, 4).map(|_| (field, None)),
        _ => None,
    }
}

fn varint(message: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = message.split_first()?;
        *message = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, KeyValue, any_value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use prost::Message as _;

    use super::count_spans;

    fn span(name: &str) -> Span {
        let value = AnyValue { value: Some(any_value::Value::StringValue("GET".into())) };
        Span {
            name: name.into(),
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_100_000,
            kind: 2,
            attributes: vec![KeyValue { key: "http.request.method".into(), value: Some(value) }],
            ..Default::default()
        }
    }

    #[test]
    fn counts_the_spans_prost_encodes() {
        let scope = |n: usize| ScopeSpans {
            spans: (0..n).map(|i| span(&format!("GET /{i}"))).collect(),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource::default()),
                    scope_spans: vec![scope(3), scope(0), scope(200)],
                    schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                },
                ResourceSpans { scope_spans: vec![scope(1)], ..Default::default() },
            ],
        };
        assert_eq!(count_spans(&request.encode_to_vec()), Some(204));
        assert_eq!(count_spans(&[]), Some(0));
    }

    #[test]
    fn broken_framing_is_an_error_not_a_count() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span("a"), span("b")], ..Default::default() }],
                ..Default::default()
            }],
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_spans(&bytes[..bytes.len() - 1]), None);
        assert_eq!(count_spans(&[0x0a, 0xff]), None);
    }
}
