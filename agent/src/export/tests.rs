//! The export stage end to end against a real OTLP receiver on loopback: both protocols, a
//! collector that refuses, one that is down and comes back, a full queue, and shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sonde_tests::receiver::{Receiver, Transport};

use super::testutil::{resource, span};
use super::*;
use crate::span::model::{SpanKind, Status};

const WAIT: Duration = Duration::from_secs(10);

fn options(endpoint: &str, protocol: Protocol) -> ExportOptions {
    let otlp = OtlpConfig::resolve(Some(endpoint), Some(protocol), |_| None)
        .expect("valid config")
        .expect("an endpoint");
    ExportOptions { otlp: Some(otlp), batch_delay: Duration::from_millis(20), ..ExportOptions::default() }
}

/// Three spans of one trace across two processes, the last one failed.
fn trace() -> Vec<Span> {
    let (front, cart) = (resource(1, "frontend"), resource(2, "cart"));
    let mut failed = span(&cart, 3, Some(2), SpanKind::Server, "GET /cart");
    failed.status = Status::Error { message: "HTTP 503".into() };
    vec![
        failed,
        span(&front, 2, Some(1), SpanKind::Client, "GET"),
        span(&front, 1, None, SpanKind::Server, "GET /checkout"),
    ]
}

/// A loopback port with nothing listening (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap()
}

/// sonde's log lines, shown when a test fails.
fn logs() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("sonde=debug").try_init();
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn round_trip(protocol: Protocol) {
    let receiver = Receiver::start().await.unwrap();
    let endpoint = match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        // The flag takes the base URL and gets `/v1/traces` appended.
        Protocol::HttpProtobuf => receiver.http_endpoint(),
    };
    let mut opts = options(&endpoint, protocol);
    opts.otlp.as_mut().unwrap().headers = vec![("x-tenant".into(), "team a".into())];
    let (exporter, sink) = Exporter::start(opts).unwrap();
    for s in trace() {
        sink.send(s);
    }

    let spans = receiver.wait_for(|s| s.len() >= 3, WAIT).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let want_via = match protocol {
        Protocol::Grpc => Transport::Grpc,
        Protocol::HttpProtobuf => Transport::Http,
    };
    let by_name = |name: &str| spans.iter().find(|s| s.span.name == name).unwrap();
    let (root, client, server) = (by_name("GET /checkout"), by_name("GET"), by_name("GET /cart"));
    for s in [root, client, server] {
        assert_eq!(s.via, want_via);
        assert_eq!(s.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.scope, ("sonde".to_owned(), env!("CARGO_PKG_VERSION").to_owned()));
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
    }
    assert_eq!(root.span_id_hex(), "0101010101010101");
    assert_eq!(root.parent_span_id_hex(), None);
    assert_eq!(client.parent_span_id_hex().as_deref(), Some("0101010101010101"));
    assert_eq!(server.parent_span_id_hex().as_deref(), Some("0202020202020202"));
    assert_eq!((root.kind_name(), client.kind_name()), ("SERVER", "CLIENT"));
    assert_eq!(root.resource.get("service.name").map(String::as_str), Some("frontend"));
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("cart"));
    assert_eq!(server.resource.get("process.pid").map(String::as_str), Some("2"));
    let status = server.span.status.as_ref().unwrap();
    assert_eq!((status.code, status.message.as_str()), (2, "HTTP 503"));
    assert_eq!(root.duration(), Duration::from_millis(1));

    let requests = receiver.requests();
    assert_eq!(requests.iter().map(|r| r.span_count).sum::<usize>(), 3);
    let headers = &requests[0].headers;
    assert_eq!(headers.get("x-tenant").map(String::as_str), Some("team a"));
    assert!(headers.get("user-agent").is_some_and(|ua| ua.starts_with("sonde/")), "{headers:?}");

    let stats = exporter.stats();
    exporter.shutdown(Duration::from_secs(2)).await;
    assert_eq!(stats.spans_queued.load(Relaxed), 3);
    assert_eq!(stats.spans_exported.load(Relaxed), 3);
    assert_eq!(stats.spans_dropped(), 0);
}

#[tokio::test]
async fn grpc_round_trip() {
    round_trip(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_protobuf_round_trip() {
    round_trip(Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn retries_a_collector_that_refuses() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = Receiver::start().await.unwrap();
        receiver.fail_next_requests(2);
        let endpoint = match protocol {
            Protocol::Grpc => receiver.grpc_endpoint(),
            Protocol::HttpProtobuf => receiver.http_endpoint(),
        };
        let (exporter, sink) = Exporter::start(options(&endpoint, protocol)).unwrap();
        sink.send(trace().remove(0));
        let spans = receiver.wait_for(|s| !s.is_empty(), WAIT).await;
        assert_eq!(spans.len(), 1, "{protocol}");
        let stats = exporter.stats();
        // The receiver records the spans before its answer reaches the exporter.
        eventually("the export to be counted", || stats.spans_exported.load(Relaxed) == 1).await;
        assert_eq!(stats.export_requests_failed.load(Relaxed), 2, "{protocol}");
        exporter.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn collector_down_then_back() {
    logs();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let addr = closed_port();
        let mut opts = options(&format!("http://{addr}"), protocol);
        opts.retry_budget = Duration::from_millis(300);
        let (exporter, sink) = Exporter::start(opts).unwrap();
        let stats = exporter.stats();

        for s in trace() {
            sink.send(s);
        }
        eventually("the batch to be dropped after its retry budget", || {
            stats.spans_dropped_export_failed.load(Relaxed) == 3
        })
        .await;
        assert!(stats.export_requests_failed.load(Relaxed) >= 2, "{protocol}: retried");
        assert_eq!(stats.spans_exported.load(Relaxed), 0);

        // The collector comes up on the port sonde was pointed at.
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let receiver = match protocol {
            Protocol::Grpc => Receiver::start_on(addr, any).await,
            Protocol::HttpProtobuf => Receiver::start_on(any, addr).await,
        }
        .unwrap();
        sink.send(trace().remove(2));
        let spans = receiver.wait_for(|s| !s.is_empty(), WAIT).await;
        assert_eq!(spans.len(), 1, "{protocol}: exported after recovery");
        assert_eq!(spans[0].span.name, "GET /checkout");
        exporter.shutdown(Duration::from_secs(1)).await;
        assert_eq!(stats.spans_exported.load(Relaxed), 1);
        assert_eq!(stats.spans_dropped_export_failed.load(Relaxed), 3);
    }
}

#[tokio::test]
async fn full_queue_drops_and_shutdown_keeps_its_deadline() {
    let mut opts = options(&format!("http://{}", closed_port()), Protocol::Grpc);
    opts.max_queue_spans = 4;
    opts.max_batch = 2;
    opts.retry_budget = Duration::from_secs(60);
    let (exporter, sink) = Exporter::start(opts).unwrap();
    let stats = exporter.stats();

    let sent = std::time::Instant::now();
    for _ in 0..50 {
        sink.send(trace().remove(0));
    }
    assert!(sent.elapsed() < Duration::from_millis(100), "send never waits");
    let queued = stats.spans_queued.load(Relaxed);
    assert_eq!(queued + stats.spans_dropped_queue_full.load(Relaxed), 50);
    assert!(queued <= 4 + 2, "queue plus the batch being filled: {queued}");

    let started = std::time::Instant::now();
    exporter.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // Every queued span is accounted for.
    assert_eq!(stats.spans_dropped_export_failed.load(Relaxed), queued);
    assert_eq!(stats.spans_exported.load(Relaxed), 0);

    sink.send(trace().remove(0));
    assert_eq!(stats.spans_dropped_after_shutdown.load(Relaxed), 1);
}

#[tokio::test]
async fn shutdown_flushes_the_queue() {
    let receiver = Receiver::start().await.unwrap();
    let mut opts = options(&receiver.grpc_endpoint(), Protocol::Grpc);
    opts.batch_delay = Duration::from_secs(3600);
    opts.max_batch = 2;
    let (exporter, sink) = Exporter::start(opts).unwrap();
    for _ in 0..5 {
        for s in trace() {
            sink.send(s);
        }
    }
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(receiver.spans().len(), 15);
    assert!(receiver.requests().iter().all(|r| r.span_count <= 2));
}

#[tokio::test]
async fn a_batch_too_large_for_one_request_goes_in_parts() {
    let receiver = Receiver::start().await.unwrap();
    let mut opts = options(&receiver.grpc_endpoint(), Protocol::Grpc);
    opts.batch_delay = Duration::from_secs(3600);
    let (exporter, sink) = Exporter::start(opts).unwrap();
    // 100 spans of ~64 KiB: ~6.4 MiB in one batch, over the 4 MiB collectors accept.
    let big = "x".repeat(64 << 10);
    for i in 0..100 {
        let mut s = trace().remove(2);
        s.attributes.push(crate::span::model::KeyValue::str("sonde.test.big", big.clone()));
        s.name = format!("GET /{i}");
        sink.send(s);
    }
    let stats = exporter.stats();
    exporter.shutdown(Duration::from_secs(10)).await;
    let requests = receiver.requests();
    assert_eq!(receiver.spans().len(), 100);
    assert!(requests.len() >= 3, "{} requests", requests.len());
    assert_eq!(stats.spans_exported.load(Relaxed), 100);
    assert_eq!(stats.spans_dropped(), 0);
}

#[test]
fn start_needs_a_runtime() {
    assert!(matches!(Exporter::start(ExportOptions::default()), Err(ExportError::NoRuntime)));
}

#[tokio::test]
async fn print_only_needs_no_collector() {
    let (exporter, sink) =
        Exporter::start(ExportOptions { print: PrintMode::None, ..ExportOptions::default() }).unwrap();
    sink.send(trace().remove(0));
    let stats = exporter.stats();
    exporter.shutdown(Duration::from_millis(100)).await;
    assert_eq!(stats.spans_queued.load(Relaxed) + stats.spans_dropped(), 0);
}

#[tokio::test]
async fn https_endpoints_use_tls() {
    logs();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        // Plain TCP listener: the TLS handshake fails, which must be a retryable export error.
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut opts = options(&format!("https://{}", listener.local_addr().unwrap()), protocol);
        opts.otlp.as_mut().unwrap().timeout = Duration::from_millis(200);
        opts.retry_budget = Duration::from_millis(100);
        let (exporter, sink) = Exporter::start(opts).unwrap();
        let stats = exporter.stats();
        let accept = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut conn, b"not TLS\r\n\r\n").await.unwrap();
        });
        sink.send(trace().remove(0));
        eventually("the batch to fail", || stats.spans_dropped_export_failed.load(Relaxed) == 1).await;
        accept.await.unwrap();
        exporter.shutdown(Duration::from_millis(100)).await;
    }
}
