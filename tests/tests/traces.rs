//! Privileged: whole traces across services with no tracing code — CLIENT spans, in-process
//! parents, same-host stitching — checked edge by edge at a real OTLP receiver.

use std::{collections::BTreeMap, time::Duration};

use sonde_tests::{
    harness::{self, Guard, Sonde, curl},
    receiver::{ReceivedSpan, Receiver},
};

const WAIT: Duration = Duration::from_secs(30);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// sonde tracing the Python and Node services only (not curl), exporting over gRPC to `receiver`.
fn sonde_for_python(receiver: &Receiver) -> Sonde {
    let endpoint = receiver.grpc_endpoint();
    Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--exe",
        "python3*",
        "--exe",
        "node",
    ])
}

/// curl → A → B → C.
fn chain() -> (Guard, Guard, Guard) {
    let c = harness::chain_service("svc-c", &[], &[]);
    let b = harness::chain_service("svc-b", &[], &[c.url("")]);
    let a = harness::chain_service("svc-a", &[], &[b.url("")]);
    (a, b, c)
}

fn service(span: &ReceivedSpan) -> &str {
    span.resource.get("service.name").map(String::as_str).unwrap_or("")
}

fn chain_spans(spans: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| service(s).starts_with("svc-")).cloned().collect()
}

/// Waits for exactly `n` spans from the chain's services (and a little longer, to catch extras).
async fn expect_chain_spans(receiver: &Receiver, n: usize) -> Vec<ReceivedSpan> {
    receiver.wait_for(|s| chain_spans(s).len() >= n, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = chain_spans(&receiver.spans());
    assert_eq!(spans.len(), n, "expected {n} spans from the chain, got {spans:#?}");
    spans
}

fn one<'a>(spans: &'a [ReceivedSpan], svc: &str, kind: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| service(s) == svc && s.kind_name() == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} span from {svc}: {spans:#?}");
    found[0]
}

/// How far a span may stick out of its parent in another process. Each end is timed when its
/// syscall returns, and a write returns only after loopback delivered its bytes and woke the
/// reader: on a busy machine the reader may run first (read, return, even answer) while the writer
/// waits for its CPU, so the writer's timestamp lags by as long as the reader ran — microseconds on
/// an idle machine, 4.7 ms seen on a loaded 2-CPU one. The bound leaves room for that, and still
/// catches a clock conversion gone wrong or a span hung under the wrong request.
const CROSS_PROCESS_SKEW_NS: u64 = 50_000_000;

/// `child` is `parent`'s child in the same trace and lies within it in time.
fn assert_child(child: &ReceivedSpan, parent: &ReceivedSpan) {
    let what =
        format!("{} {} under {} {}", service(child), child.kind_name(), service(parent), parent.kind_name());
    assert_eq!(child.trace_id_hex(), parent.trace_id_hex(), "{what}: trace");
    assert_eq!(child.parent_span_id_hex(), Some(parent.span_id_hex()), "{what}: parent");
    let skew = if service(child) == service(parent) { 0 } else { CROSS_PROCESS_SKEW_NS };
    let (c, p) = (&child.span, &parent.span);
    assert!(
        c.start_time_unix_nano + skew >= p.start_time_unix_nano,
        "{what}: starts {} ns before its parent",
        p.start_time_unix_nano - c.start_time_unix_nano
    );
    assert!(
        c.end_time_unix_nano <= p.end_time_unix_nano + skew,
        "{what}: ends {} ns after its parent",
        c.end_time_unix_nano - p.end_time_unix_nano
    );
}

/// The five spans of one request through the chain, edge by edge; returns A's SERVER span.
fn assert_whole_chain(spans: &[ReceivedSpan]) -> ReceivedSpan {
    let a_server = one(spans, "svc-a", "SERVER");
    let a_client = one(spans, "svc-a", "CLIENT");
    let b_server = one(spans, "svc-b", "SERVER");
    let b_client = one(spans, "svc-b", "CLIENT");
    let c_server = one(spans, "svc-c", "SERVER");
    assert_child(a_client, a_server);
    assert_child(b_server, a_client);
    assert_child(b_client, b_server);
    assert_child(c_server, b_client);
    a_server.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_plain_services_is_one_trace() {
    let receiver = Receiver::start().await.unwrap();
    let (a, b, c) = chain();
    let sonde = sonde_for_python(&receiver);
    curl(&[&a.url("/start/1")]);

    let spans = expect_chain_spans(&receiver, 5).await;
    let root = assert_whole_chain(&spans);
    assert_eq!(root.parent_span_id_hex(), None, "A's SERVER span is the root");
    let a_client = one(&spans, "svc-a", "CLIENT");
    assert_eq!(a_client.span.name, "GET");
    assert_eq!(a_client.attr("url.full"), Some(b.url("/1")));
    assert_eq!(a_client.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a_client.attr("server.port"), Some(b.port.to_string()));
    assert_eq!(a_client.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(a_client.attr("network.peer.port"), Some(b.port.to_string()));
    let c_server = one(&spans, "svc-c", "SERVER");
    assert_eq!(c_server.attr("url.path").as_deref(), Some("/1"));
    assert_eq!(c_server.attr("server.port"), Some(c.port.to_string()));
    drop(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_from_a_worker_thread_belong_to_the_request_that_started_it() {
    let receiver = Receiver::start().await.unwrap();
    let c = harness::chain_service("svc-c", &[], &[]);
    let b = harness::chain_service("svc-b", &["--spawn"], &[c.url("")]);
    let a = harness::chain_service("svc-a", &["--spawn"], &[b.url("")]);
    let sonde = sonde_for_python(&receiver);
    curl(&[&a.url("/start/1")]);

    let spans = expect_chain_spans(&receiver, 5).await;
    assert_whole_chain(&spans);
    drop(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traceparent_from_the_caller_holds_the_whole_chain() {
    let receiver = Receiver::start().await.unwrap();
    let (a, _b, _c) = chain();
    let sonde = sonde_for_python(&receiver);
    curl(&["-H", &format!("traceparent: 00-{TRACE_ID}-{CALLER_SPAN}-01"), &a.url("/start/1")]);

    let spans = expect_chain_spans(&receiver, 5).await;
    let root = assert_whole_chain(&spans);
    assert_eq!(root.trace_id_hex(), TRACE_ID);
    assert_eq!(root.parent_span_id_hex().as_deref(), Some(CALLER_SPAN));
    drop(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_parallel_requests_make_fifty_separate_traces() {
    const N: usize = 50;
    let receiver = Receiver::start().await.unwrap();
    let (a, _b, _c) = chain();
    let sonde = sonde_for_python(&receiver);
    let urls: Vec<String> = (0..N).map(|i| a.url(&format!("/start/{i}"))).collect();
    let mut args = vec!["-Z", "--parallel-max", "50"];
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);

    let spans = expect_chain_spans(&receiver, 5 * N).await;
    let mut traces: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        traces.entry(span.trace_id_hex()).or_default().push(span);
    }
    assert_eq!(traces.len(), N, "one trace per request");
    let mut seen = Vec::new();
    for spans in traces.values() {
        let root = assert_whole_chain(spans);
        // Every span of the trace is about the same request number: no cross-linking.
        let n = root.attr("url.path").unwrap().rsplit('/').next().unwrap().to_owned();
        for s in spans {
            let about = s.attr("url.path").or(s.attr("url.full")).unwrap();
            assert!(about.ends_with(&format!("/{n}")), "{} in the trace of request {n}", about);
        }
        seen.push(n.parse::<usize>().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    drop(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_connection_makes_an_error_client_span() {
    let receiver = Receiver::start().await.unwrap();
    let reset = harness::resetting_server();
    let a = harness::chain_service("svc-a", &[], &[reset.url("")]);
    let sonde = sonde_for_python(&receiver);
    let reply = curl(&[&a.url("/start/1")]);
    assert!(reply.contains("502"), "the service saw its call fail: {reply}");

    let spans = expect_chain_spans(&receiver, 2).await;
    let a_server = one(&spans, "svc-a", "SERVER");
    let a_client = one(&spans, "svc-a", "CLIENT");
    assert_child(a_client, a_server);
    assert_eq!(a_client.span.status.as_ref().map(|s| s.code), Some(2), "ERROR");
    assert_eq!(a_client.attr("error.type").as_deref(), Some("connection_closed"));
    assert_eq!(a_client.attr("http.response.status_code"), None);
    assert_eq!(a_server.attr("http.response.status_code").as_deref(), Some("502"));
    drop(sonde);
}

/// The SDK's instrumentation scopes, not sonde's.
fn from_sdk(span: &ReceivedSpan) -> bool {
    span.scope.0 != "sonde"
}

/// curl → an SDK-instrumented service → C → D (plain): the SDK's SERVER and CLIENT spans, then
/// sonde's for C (parented by the SDK's `traceparent`) and D (stitched) — one tree, edge by edge,
/// as SDKs everywhere would have made it, and no sonde span for the instrumented process.
async fn instrumented_service_and_sonde_make_one_tree(start: fn(&str, &str, &[String]) -> Guard) {
    let receiver = Receiver::start().await.unwrap();
    let d = harness::chain_service("svc-d", &[], &[]);
    let c = harness::chain_service("svc-c", &[], &[d.url("")]);
    let sdk = start("svc-sdk", &receiver.http_traces_url(), &[c.url("")]);
    let sonde = sonde_for_python(&receiver);
    curl(&[&sdk.url("/start/1")]);

    let spans = expect_chain_spans(&receiver, 5).await;
    let sdk_server = one(&spans, "svc-sdk", "SERVER");
    let sdk_client = one(&spans, "svc-sdk", "CLIENT");
    assert!(from_sdk(sdk_server) && from_sdk(sdk_client), "no sonde span repeats the SDK's: {spans:#?}");
    let c_server = one(&spans, "svc-c", "SERVER");
    let c_client = one(&spans, "svc-c", "CLIENT");
    let d_server = one(&spans, "svc-d", "SERVER");
    assert!(!from_sdk(c_server) && !from_sdk(c_client) && !from_sdk(d_server));
    assert_eq!(sdk_server.parent_span_id_hex(), None);
    assert_child(sdk_client, sdk_server);
    assert_child(c_server, sdk_client);
    assert_child(c_client, c_server);
    assert_child(d_server, c_client);
    assert!(sonde.stderr().contains("process has an OpenTelemetry SDK of its own"), "{}", sonde.stderr());
    drop(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instrumented_python_service_and_sonde_make_one_tree() {
    instrumented_service_and_sonde_make_one_tree(harness::sdk_python_service).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instrumented_node_service_and_sonde_make_one_tree() {
    instrumented_service_and_sonde_make_one_tree(harness::sdk_node_service).await;
}

#[test]
fn sonde_demo_shows_the_slow_hop() {
    let out = std::process::Command::new(harness::sonde_bin())
        .args(["demo", "--requests", "2", "--slow-ms", "200", "--print", "json"])
        .output()
        .expect("running sonde demo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spans: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON span per line"))
        .collect();
    assert_eq!(spans.len(), 14, "7 spans for each of 2 requests: {spans:#?}");
    let mut traces: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for span in spans {
        traces.entry(span["trace_id"].as_str().unwrap().to_owned()).or_default().push(span);
    }
    assert_eq!(traces.len(), 2);
    for spans in traces.values() {
        let find = |service: &str, kind: &str| -> Vec<&serde_json::Value> {
            spans.iter().filter(|s| s["resource"]["service.name"] == service && s["kind"] == kind).collect()
        };
        let duration_ms = |s: &serde_json::Value| {
            (s["end_unix_nano"].as_u64().unwrap() - s["start_unix_nano"].as_u64().unwrap()) / 1_000_000
        };
        let gateway = find("gateway", "SERVER");
        let payments = find("payments", "SERVER");
        let auth = find("auth", "SERVER");
        let calls = find("gateway", "CLIENT");
        assert_eq!((gateway.len(), payments.len(), auth.len(), calls.len()), (1, 1, 1, 2));
        assert!(gateway[0]["parent_span_id"].is_null());
        assert!(calls.iter().all(|c| c["parent_span_id"] == gateway[0]["span_id"]));
        let cart = find("cart", "SERVER");
        let cart_call = find("cart", "CLIENT");
        assert_eq!(payments[0]["parent_span_id"], cart_call[0]["span_id"]);
        assert_eq!(cart_call[0]["parent_span_id"], cart[0]["span_id"]);
        assert!(duration_ms(payments[0]) >= 200, "the slow hop");
        assert!(duration_ms(auth[0]) < 150, "the fast one");
    }
}
