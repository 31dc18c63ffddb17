//! A real OTLP receiver for traces and metrics, in process: gRPC (`TraceService/Export`,
//! `MetricsService/Export`) and HTTP/protobuf (`POST /v1/traces`, `POST /v1/metrics`), gRPC on one
//! loopback port and HTTP on another. Tests point sonde at it and assert on the spans and metric
//! points that arrived, decoded with the same `opentelemetry-proto` types a collector uses.
//!
//! Which endpoint to hand to sonde:
//! - gRPC: `--otlp-endpoint <grpc_endpoint()> --otlp-protocol grpc` (used as is).
//! - HTTP/protobuf: `--otlp-endpoint <http_endpoint()> --otlp-protocol http/protobuf`. The flag
//!   follows the rule of `OTEL_EXPORTER_OTLP_ENDPOINT`: sonde appends `/v1/traces` to this base.
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as is, so give it [`Receiver::http_traces_url`];
//!   likewise `/v1/metrics` for metrics, and [`Receiver::http_metrics_url`] for
//!   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
//!
//! Metric data is flattened to one [`ReceivedPoint`] per data point (sums, gauges and explicit-bucket
//! histograms; exponential histograms and summaries are not recorded). For cumulative metrics,
//! [`Receiver::latest`] gives the newest point of each series.
//!
//! Collector faults, for the tests of how sonde copes with them: the receiver can refuse requests
//! with a retryable or a permanent error ([`Receiver::refuse_requests`], [`Refusal`]) and count
//! them, answer each request only after a delay ([`Receiver::set_response_delay`]), and go away
//! for real ([`Receiver::shut_down`], or dropping it), closing the connections exporters hold.

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
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod connections;
mod services;
#[cfg(test)]
mod tests;

use connections::{Connections, Tracked};
use services::{GrpcService, hex, http_export, http_metrics_export, stringify, stringify_all};

/// How a span or metric point reached the receiver.
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

/// What kind of metric a point belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointKind {
    Sum {
        monotonic: bool,
    },
    Gauge,
    /// Explicit-bucket histogram.
    Histogram,
}

/// One metric data point as a collector would see it, with its metric, resource and scope.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    /// Metric name, e.g. `"http.server.request.duration"`.
    pub metric: String,
    pub unit: String,
    pub kind: PointKind,
    /// `AggregationTemporality` as the proto has it (1 delta, 2 cumulative); 0 for gauges.
    pub temporality: i32,
    /// Resource attributes, values stringified like [`ReceivedSpan::resource`].
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name and version.
    pub scope: (String, String),
    /// Point attributes, values stringified.
    pub attributes: BTreeMap<String, String>,
    /// Sums and gauges: the value (`as_int` converted to `f64`, or `as_double`; NaN if the point
    /// carries neither). Histograms: the sum, 0 if absent.
    pub value: f64,
    /// Histograms: the count; 0 otherwise.
    pub count: u64,
    /// Histograms only: per-bucket counts (`explicit_bounds.len() + 1` of them).
    pub bucket_counts: Vec<u64>,
    /// Histograms only: `explicit_bounds`.
    pub bounds: Vec<f64>,
    pub start_time_unix_nano: u64,
    pub time_unix_nano: u64,
    pub via: Transport,
}

impl ReceivedPoint {
    /// A point attribute, stringified.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Requests of process `pid` in `http.server.request.duration`: the newest count of each series
/// (cumulative), summed.
pub fn server_requests_counted(points: &[ReceivedPoint], pid: &str) -> u64 {
    let mut series: BTreeMap<&BTreeMap<String, String>, u64> = BTreeMap::new();
    for p in points.iter().filter(|p| {
        p.metric == "http.server.request.duration"
            && p.resource.get("process.pid").map(String::as_str) == Some(pid)
    }) {
        let count = series.entry(&p.attributes).or_default();
        *count = (*count).max(p.count);
    }
    series.values().sum()
}

/// How the receiver refuses a request it was told to refuse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refusal {
    /// gRPC `UNAVAILABLE`, HTTP 503: an overloaded collector. The OTLP spec says to retry.
    #[default]
    Unavailable,
    /// gRPC `INVALID_ARGUMENT`, HTTP 400: a request the collector will never take. The OTLP spec
    /// says not to retry it.
    InvalidArgument,
}

impl Refusal {
    fn grpc(self) -> tonic::Status {
        let message = "receiver told to refuse this request";
        match self {
            Refusal::Unavailable => tonic::Status::unavailable(message),
            Refusal::InvalidArgument => tonic::Status::invalid_argument(message),
        }
    }

    fn http(self) -> axum::response::Response {
        let status = match self {
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::InvalidArgument => StatusCode::BAD_REQUEST,
        };
        (status, "receiver told to refuse this request").into_response()
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
    points: Vec<ReceivedPoint>,
    /// Metric export requests accepted.
    metrics_requests: usize,
    /// Requests (traces or metrics) still to be refused, and how (`usize::MAX`: until told otherwise).
    fail_next: usize,
    refusal: Refusal,
    /// Trace export requests refused so far, and the spans they carried.
    refused_requests: usize,
    refused_spans: usize,
    /// Metric export requests refused so far.
    refused_metrics_requests: usize,
    /// How long each request (traces or metrics) waits before it is answered.
    delay: Duration,
}

impl Store {
    /// `Some(how)` when the next request must be refused (and counts it down).
    fn refuse(&mut self) -> Option<Refusal> {
        if self.fail_next == 0 {
            return None;
        }
        if self.fail_next != usize::MAX {
            self.fail_next -= 1;
        }
        Some(self.refusal)
    }
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    /// Bumped on every accepted request (traces or metrics) so `wait_for` and `wait_for_points`
    /// wake up without polling.
    changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panicking test thread must not hide what arrived from the others.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The response delay set by [`Receiver::set_response_delay`].
    async fn delay(&self) {
        let delay = self.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Records the request, or says how to refuse it.
    fn accept(
        &self,
        via: Transport,
        headers: BTreeMap<String, String>,
        req: ExportTraceServiceRequest,
    ) -> Result<(), Refusal> {
        let mut store = self.lock();
        if let Some(refusal) = store.refuse() {
            store.refused_requests += 1;
            store.refused_spans += req
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum::<usize>();
            drop(store);
            self.changed.send_modify(|n| *n += 1);
            return Err(refusal);
        }
        let before = store.spans.len();
        for rs in req.resource_spans {
            let resource = stringify_all(rs.resource.map(|r| r.attributes).unwrap_or_default());
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
        Ok(())
    }

    /// Records the metric points of the request, or says how to refuse it.
    fn accept_metrics(&self, via: Transport, req: ExportMetricsServiceRequest) -> Result<(), Refusal> {
        let mut store = self.lock();
        if let Some(refusal) = store.refuse() {
            store.refused_metrics_requests += 1;
            drop(store);
            self.changed.send_modify(|n| *n += 1);
            return Err(refusal);
        }
        for rm in req.resource_metrics {
            let resource = stringify_all(rm.resource.map(|r| r.attributes).unwrap_or_default());
            for sm in rm.scope_metrics {
                let scope = sm.scope.map(|s| (s.name, s.version)).unwrap_or_default();
                for metric in sm.metrics {
                    let point = |kind, temporality, attributes, start, time| ReceivedPoint {
                        metric: metric.name.clone(),
                        unit: metric.unit.clone(),
                        kind,
                        temporality,
                        resource: resource.clone(),
                        scope: scope.clone(),
                        attributes: stringify_all(attributes),
                        value: 0.0,
                        count: 0,
                        bucket_counts: Vec::new(),
                        bounds: Vec::new(),
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        via,
                    };
                    let number = |v: Option<number_data_point::Value>| match v {
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        None => f64::NAN,
                    };
                    match &metric.data {
                        Some(Data::Sum(sum)) => {
                            let kind = PointKind::Sum { monotonic: sum.is_monotonic };
                            for dp in &sum.data_points {
                                store.points.push(ReceivedPoint {
                                    value: number(dp.value),
                                    ..point(
                                        kind,
                                        sum.aggregation_temporality,
                                        dp.attributes.clone(),
                                        dp.start_time_unix_nano,
                                        dp.time_unix_nano,
                                    )
                                });
                            }
                        }
                        Some(Data::Gauge(gauge)) => {
                            for dp in &gauge.data_points {
                                store.points.push(ReceivedPoint {
                                    value: number(dp.value),
                                    ..point(
                                        PointKind::Gauge,
                                        0,
                                        dp.attributes.clone(),
                                        dp.start_time_unix_nano,
                                        dp.time_unix_nano,
                                    )
                                });
                            }
                        }
                        Some(Data::Histogram(hist)) => {
                            for dp in &hist.data_points {
                                store.points.push(ReceivedPoint {
                                    value: dp.sum.unwrap_or(0.0),
                                    count: dp.count,
                                    bucket_counts: dp.bucket_counts.clone(),
                                    bounds: dp.explicit_bounds.clone(),
                                    ..point(
                                        PointKind::Histogram,
                                        hist.aggregation_temporality,
                                        dp.attributes.clone(),
                                        dp.start_time_unix_nano,
                                        dp.time_unix_nano,
                                    )
                                });
                            }
                        }
                        // Not something sonde exports; not recorded.
                        Some(Data::ExponentialHistogram(_) | Data::Summary(_)) | None => {}
                    }
                }
            }
        }
        store.metrics_requests += 1;
        drop(store);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// An OTLP receiver on two loopback ports; stops when dropped, closing the connections it
/// accepted (as a collector that goes away would).
pub struct Receiver {
    shared: Shared,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    connections: Connections,
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
        let connections = Connections::default();

        let grpc_service = TraceServiceServer::new(GrpcService(shared.clone()));
        let grpc_metrics = MetricsServiceServer::new(GrpcService(shared.clone()));
        let grpc_connections = connections.clone();
        let grpc_task = tokio::spawn(async move {
            let incoming = Tracked { listener: grpc_listener, connections: grpc_connections };
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(grpc_service)
                .add_service(grpc_metrics)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP/gRPC receiver stopped: {e}");
            }
        });

        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .route("/v1/metrics", axum::routing::post(http_metrics_export))
            .with_state(shared.clone());
        let http_listener = Tracked { listener: http_listener, connections: connections.clone() };
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                eprintln!("OTLP/HTTP receiver stopped: {e}");
            }
        });

        Ok(Receiver { shared, grpc_addr, http_addr, tasks: vec![grpc_task, http_task], connections })
    }

    /// Stops as a collector that goes down does: its ports are closed once this returns (so
    /// [`Receiver::start_on`] can bind them again) and the connections exporters hold are shut.
    pub async fn shut_down(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // Cancelled: the listener inside is dropped.
            let _ = task.await;
        }
        self.connections.shut_all();
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

    /// `http://127.0.0.1:PORT/v1/metrics`, for `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (used as is).
    pub fn http_metrics_url(&self) -> String {
        format!("http://{}/v1/metrics", self.http_addr)
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

    /// Every metric data point received so far, in arrival order.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.shared.lock().points.clone()
    }

    /// For cumulative metrics: the newest point (greatest `time_unix_nano`, ties going to the later
    /// arrival) of each series of `metric`, a series being its (resource, attributes). Sorted by
    /// attributes, then resource.
    pub fn latest(&self, metric: &str) -> Vec<ReceivedPoint> {
        latest_of(&self.shared.lock().points, metric)
    }

    /// How many metric export requests were accepted (refused ones are not counted).
    pub fn metrics_requests(&self) -> usize {
        self.shared.lock().metrics_requests
    }

    /// Refuse the next `n` requests, traces or metrics, with a retryable error (gRPC
    /// `UNAVAILABLE`, HTTP 503), as an overloaded collector would. Refused requests are not
    /// recorded.
    pub fn fail_next_requests(&self, n: usize) {
        self.refuse_next_requests(n, Refusal::Unavailable);
    }

    /// Refuse the next `n` requests, traces or metrics, as `how` says. Refused requests are
    /// counted ([`Receiver::refused_requests`]), not recorded.
    pub fn refuse_next_requests(&self, n: usize, how: Refusal) {
        let mut store = self.shared.lock();
        store.fail_next = n;
        store.refusal = how;
    }

    /// Refuse every request, traces or metrics, as `how` says, until [`Receiver::accept_requests`].
    pub fn refuse_requests(&self, how: Refusal) {
        self.refuse_next_requests(usize::MAX, how);
    }

    /// Stop refusing requests.
    pub fn accept_requests(&self) {
        self.shared.lock().fail_next = 0;
    }

    /// How many trace export requests were refused so far (retries of one batch each count).
    pub fn refused_requests(&self) -> usize {
        self.shared.lock().refused_requests
    }

    /// How many spans the refused trace export requests carried, retries counted again.
    pub fn refused_spans(&self) -> usize {
        self.shared.lock().refused_spans
    }

    /// How many metric export requests were refused so far.
    pub fn refused_metrics_requests(&self) -> usize {
        self.shared.lock().refused_metrics_requests
    }

    /// Answer each request that arrives from now on (traces or metrics, accepted or refused) only
    /// after `delay`, as a slow collector would. `Duration::ZERO` answers at once again.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Waits until `pred` holds for the spans received so far, or `timeout` passes; returns the
    /// spans either way so the caller's assertion shows what did arrive.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + crate::harness::patience(timeout);
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

    /// Waits until `pred` holds for the metric points received so far, or `timeout` passes;
    /// returns the points either way so the caller's assertion shows what did arrive.
    pub async fn wait_for_points(
        &self,
        pred: impl Fn(&[ReceivedPoint]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedPoint> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + crate::harness::patience(timeout);
        loop {
            changed.mark_unchanged();
            let points = self.points();
            if pred(&points) {
                return points;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.points(),
            }
        }
    }
}

fn latest_of(points: &[ReceivedPoint], metric: &str) -> Vec<ReceivedPoint> {
    type Series<'a> = (&'a BTreeMap<String, String>, &'a BTreeMap<String, String>);
    // Keyed (attributes, resource), which is also the order asked for.
    let mut newest: BTreeMap<Series<'_>, &ReceivedPoint> = BTreeMap::new();
    for p in points.iter().filter(|p| p.metric == metric) {
        let slot = newest.entry((&p.attributes, &p.resource)).or_insert(p);
        // `>=`: of two points with the same time, the later arrival wins.
        if p.time_unix_nano >= slot.time_unix_nano {
            *slot = p;
        }
    }
    newest.into_values().cloned().collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // The servers run each connection in a task of its own, which aborting the server does
        // not reach: without this an exporter would go on talking to a receiver that is gone.
        self.connections.shut_all();
    }
}
