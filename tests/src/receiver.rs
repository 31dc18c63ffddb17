//! A real OTLP trace receiver, in process: gRPC (`TraceService/Export`) and HTTP/protobuf
//! (`POST /v1/traces`), each on its own loopback port. Tests point sonde at it and assert on the
//! spans that arrived, decoded with the same `opentelemetry-proto` types a collector uses.
//!
//! Which endpoint to hand to sonde:
//! - gRPC: `--otlp-endpoint <grpc_endpoint()> --otlp-protocol grpc` (used as is).
//! - HTTP/protobuf: `--otlp-endpoint <http_endpoint()> --otlp-protocol http/protobuf`. The flag
//!   follows the rule of `OTEL_EXPORTER_OTLP_ENDPOINT`: sonde appends `/v1/traces` to this base.
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as is, so give it [`Receiver::http_traces_url`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a span reached the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// One span as a collector would see it, with its resource flattened to strings.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub span: Span,
    /// Resource attributes, values stringified (`"42"`, `"true"`).
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name and version (`("sonde", "0.1.0")`).
    pub scope: (String, String),
    pub via: Transport,
}

impl ReceivedSpan {
    /// A span attribute, stringified.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span.attributes.iter().find(|kv| kv.key == key).map(|kv| stringify(kv.value.as_ref()))
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }

    /// `None` for a root span (OTLP encodes "no parent" as empty bytes).
    pub fn parent_span_id_hex(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }

    /// `"SERVER"`, `"CLIENT"`, … as in the proto enum, without the prefix.
    pub fn kind_name(&self) -> &'static str {
        match SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified) {
            SpanKind::Unspecified => "UNSPECIFIED",
            SpanKind::Internal => "INTERNAL",
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Producer => "PRODUCER",
            SpanKind::Consumer => "CONSUMER",
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.span.end_time_unix_nano.saturating_sub(self.span.start_time_unix_nano))
    }
}

/// One export request as it arrived (for asserting on headers and batching).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub via: Transport,
    /// Request headers (gRPC metadata for gRPC), lower-case names; non-UTF-8 values are skipped.
    pub headers: BTreeMap<String, String>,
    pub span_count: usize,
}

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    requests: Vec<ReceivedRequest>,
    /// Requests still to be refused with a retryable error (gRPC UNAVAILABLE, HTTP 503).
    fail_next: usize,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    /// Bumped on every accepted request so `wait_for` wakes up without polling.
    changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panicking test thread must not hide what arrived from the others.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the request, or returns `false` when it must be refused.
    fn accept(
        &self,
        via: Transport,
        headers: BTreeMap<String, String>,
        req: ExportTraceServiceRequest,
    ) -> bool {
        let mut store = self.lock();
        if store.fail_next > 0 {
            store.fail_next -= 1;
            return false;
        }
        let before = store.spans.len();
        for rs in req.resource_spans {
            let resource: BTreeMap<String, String> = rs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| (kv.key, stringify(kv.value.as_ref())))
                .collect();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| (s.name, s.version)).unwrap_or_default();
                for span in ss.spans {
                    store.spans.push(ReceivedSpan {
                        span,
                        resource: resource.clone(),
                        scope: scope.clone(),
                        via,
                    });
                }
            }
        }
        let span_count = store.spans.len() - before;
        store.requests.push(ReceivedRequest { via, headers, span_count });
        drop(store);
        self.changed.send_modify(|n| *n += 1);
        true
    }
}

/// An OTLP receiver on two loopback ports; stops when dropped.
pub struct Receiver {
    shared: Shared,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Receiver {
    /// Binds gRPC and HTTP/protobuf on `127.0.0.1`, ports chosen by the kernel.
    pub async fn start() -> anyhow::Result<Receiver> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_on(any, any).await
    }

    /// Binds on the given addresses (to come up on a port an exporter already targets).
    pub async fn start_on(grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Receiver> {
        let (changed, _) = watch::channel(0);
        let shared = Shared { store: Arc::default(), changed: Arc::new(changed) };

        let grpc_listener = TcpListener::bind(grpc)
            .await
            .with_context(|| format!("binding the OTLP/gRPC receiver on {grpc}"))?;
        let http_listener = TcpListener::bind(http)
            .await
            .with_context(|| format!("binding the OTLP/HTTP receiver on {http}"))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let grpc_service = TraceServiceServer::new(GrpcService(shared.clone()));
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(grpc_service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP/gRPC receiver stopped: {e}");
            }
        });

        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(shared.clone());
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                eprintln!("OTLP/HTTP receiver stopped: {e}");
            }
        });

        Ok(Receiver { shared, grpc_addr, http_addr, tasks: vec![grpc_task, http_task] })
    }

    /// `http://127.0.0.1:PORT`, for `--otlp-protocol grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT`, the base URL: for `--otlp-endpoint` and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf` (sonde appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `http://127.0.0.1:PORT/v1/traces`, for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is).
    pub fn http_traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// Every export request accepted so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Refuse the next `n` requests with a retryable error (gRPC `UNAVAILABLE`, HTTP 503), as an
    /// overloaded collector would. Refused requests are not recorded.
    pub fn fail_next_requests(&self, n: usize) {
        self.shared.lock().fail_next = n;
    }

    /// Waits until `pred` holds for the spans received so far, or `timeout` passes; returns the
    /// spans either way so the caller's assertion shows what did arrive.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.mark_unchanged();
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // Timed out (or, impossibly, the sender we hold is gone): report what is there.
                Ok(Err(_)) | Err(_) => return self.spans(),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct GrpcService(Shared);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        if self.0.accept(Transport::Grpc, headers, request.into_inner()) {
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        } else {
            Err(tonic::Status::unavailable("receiver told to refuse this request"))
        }
    }
}

async fn http_export(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type != "application/x-protobuf" {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        )
            .into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")).into_response(),
    };
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    if !shared.accept(Transport::Http, headers, request) {
        return (StatusCode::SERVICE_UNAVAILABLE, "receiver told to refuse this request").into_response();
    }
    let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
}

fn stringify(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
