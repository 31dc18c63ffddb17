use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }) }
}

fn string(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// One request: a monotonic cumulative sum (one point per `(route, count, time)`) and a
/// histogram point.
fn request(sums: &[(&str, i64, u64)], histogram_time: u64) -> ExportMetricsServiceRequest {
    let sum = Metric {
        name: "http.server.requests".into(),
        unit: "{request}".into(),
        data: Some(Data::Sum(Sum {
            data_points: sums
                .iter()
                .map(|&(route, n, time)| NumberDataPoint {
                    attributes: vec![string("http.route", route)],
                    start_time_unix_nano: 1_000,
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(n)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let histogram = Metric {
        name: "http.server.request.duration".into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![
                    string("http.request.method", "GET"),
                    kv("http.response.status_code", any_value::Value::IntValue(200)),
                ],
                start_time_unix_nano: 1_000,
                time_unix_nano: histogram_time,
                count: 3,
                sum: Some(0.75),
                bucket_counts: vec![1, 2, 0],
                explicit_bounds: vec![0.1, 0.5],
                ..Default::default()
            }],
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string("service.name", "demo")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "sonde".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                metrics: vec![sum, histogram],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A raw HTTP/1.1 POST of `body` to `/v1/metrics`; returns the status line.
async fn post_metrics(addr: SocketAddr, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn receives_metrics_over_grpc_and_http() {
    let receiver = Receiver::start().await.unwrap();
    let mut client = MetricsServiceClient::connect(receiver.grpc_endpoint()).await.unwrap();

    // gRPC: two routes at t=2000, the histogram at t=2000.
    client.export(request(&[("/a", 1, 2_000), ("/b", 5, 2_000)], 2_000)).await.unwrap();
    assert_eq!(receiver.metrics_requests(), 1);

    // A refused request is not recorded, on either transport.
    receiver.fail_next_requests(2);
    let refused = client.export(request(&[("/a", 100, 9_000)], 9_000)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let body = request(&[("/a", 100, 9_000)], 9_000).encode_to_vec();
    assert_eq!(post_metrics(receiver.http_addr(), &body).await, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(receiver.metrics_requests(), 1);

    // HTTP, while a waiter is pending: /a moves on to 3 at t=3000; /b arrives again with the
    // same time and a new value (the later arrival wins); the histogram is older than the
    // gRPC one (the newer time wins, not the later arrival).
    let waiter = receiver.wait_for_points(|p| p.len() >= 6, Duration::from_secs(10));
    let body = request(&[("/a", 3, 3_000), ("/b", 6, 2_000)], 1_500).encode_to_vec();
    let (points, status) = tokio::join!(waiter, post_metrics(receiver.http_addr(), &body));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(points.len(), 6, "{points:#?}");
    assert_eq!(receiver.metrics_requests(), 2);
    // Spans are untouched.
    assert!(receiver.spans().is_empty());
    assert!(receiver.requests().is_empty());

    let all = receiver.points();
    let vias: Vec<Transport> = all.iter().map(|p| p.via).collect();
    use Transport::{Grpc, Http};
    assert_eq!(vias, [Grpc, Grpc, Grpc, Http, Http, Http]);
    let first = &all[0];
    assert_eq!(first.metric, "http.server.requests");
    assert_eq!(first.unit, "{request}");
    assert_eq!(first.kind, PointKind::Sum { monotonic: true });
    assert_eq!(first.temporality, CUMULATIVE);
    assert_eq!(first.resource.get("service.name").map(String::as_str), Some("demo"));
    assert_eq!(first.scope, ("sonde".to_owned(), "0.1.0".to_owned()));
    assert_eq!(first.attr("http.route"), Some("/a"));
    assert_eq!((first.value, first.count, first.start_time_unix_nano), (1.0, 0, 1_000));
    assert!(first.bucket_counts.is_empty() && first.bounds.is_empty());

    let hist = &all[2];
    assert_eq!(hist.kind, PointKind::Histogram);
    assert_eq!(hist.attr("http.response.status_code"), Some("200"));
    assert_eq!((hist.value, hist.count), (0.75, 3));
    assert_eq!((hist.bucket_counts.as_slice(), hist.bounds.as_slice()), (&[1, 2, 0][..], &[0.1, 0.5][..]));

    let latest = receiver.latest("http.server.requests");
    let got: Vec<(Option<&str>, f64, u64, Transport)> =
        latest.iter().map(|p| (p.attr("http.route"), p.value, p.time_unix_nano, p.via)).collect();
    assert_eq!(got, [(Some("/a"), 3.0, 3_000, Http), (Some("/b"), 6.0, 2_000, Http)]);

    let latest = receiver.latest("http.server.request.duration");
    assert_eq!(latest.len(), 1, "{latest:#?}");
    assert_eq!((latest[0].time_unix_nano, latest[0].via), (2_000, Grpc));

    assert!(receiver.latest("no.such.metric").is_empty());
}

fn one_span() -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans: vec![Span::default()], ..Default::default() }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn refuses_as_told_counts_refusals_answers_late_and_shuts_connections_down() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    let receiver = Receiver::start().await.unwrap();
    let mut client = TraceServiceClient::connect(receiver.grpc_endpoint()).await.unwrap();
    receiver.refuse_next_requests(1, Refusal::InvalidArgument);
    let refused = client.export(one_span()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    client.export(one_span()).await.unwrap();
    assert_eq!((receiver.refused_requests(), receiver.refused_spans(), receiver.spans().len()), (1, 1, 1));

    // Until told otherwise, over HTTP too (400); metrics are counted apart.
    receiver.refuse_requests(Refusal::InvalidArgument);
    let body = request(&[("/a", 1, 2_000)], 2_000).encode_to_vec();
    assert_eq!(post_metrics(receiver.http_addr(), &body).await, "HTTP/1.1 400 Bad Request");
    assert_eq!(client.export(one_span()).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!((receiver.refused_requests(), receiver.refused_metrics_requests()), (2, 1));
    receiver.accept_requests();

    receiver.set_response_delay(Duration::from_millis(300));
    let asked = tokio::time::Instant::now();
    client.export(one_span()).await.unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(300));
    receiver.set_response_delay(Duration::ZERO);

    // A keep-alive connection, served once (so accepted): shutting down closes it.
    let mut idle = tokio::net::TcpStream::connect(receiver.http_addr()).await.unwrap();
    let head = format!(
        "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    idle.write_all(head.as_bytes()).await.unwrap();
    idle.write_all(&body).await.unwrap();
    // And an HTTP/2 one on the gRPC port, which tonic would otherwise serve on after its
    // server is gone: the client preface and an empty SETTINGS frame; the server answers.
    let mut idle_h2 = tokio::net::TcpStream::connect(receiver.grpc_addr()).await.unwrap();
    idle_h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut first = [0u8; 1];
    idle.read_exact(&mut first).await.unwrap();
    idle_h2.read_exact(&mut first).await.unwrap();
    let (grpc, http) = (receiver.grpc_addr(), receiver.http_addr());
    receiver.shut_down().await;
    for (name, conn) in [("HTTP/1.1", &mut idle), ("HTTP/2", &mut idle_h2)] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the {name} connection was left open");
    }
    // Both ports are free again at once.
    let back = Receiver::start_on(grpc, http).await.unwrap();
    assert!(back.spans().is_empty());
}
