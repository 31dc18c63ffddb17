//! Privileged: RED metrics, the service graph and sonde's own counters, from real servers hit by
//! real clients, checked where users read them — at a real OTLP receiver, at sonde's Prometheus
//! endpoint, and through a real Prometheus that scrapes it.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use sonde_tests::{
    harness::{self, Sonde, curl, eventually, read_ok_reply},
    prometheus::{self, Prometheus, Sample},
    receiver::{PointKind, ReceivedPoint, Receiver, Transport},
};

const WAIT: Duration = Duration::from_secs(30);

/// The HTTP semantic conventions' bucket boundaries for request durations (seconds).
const SEMCONV_BOUNDS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// sonde sending traces and metrics (every second) to `receiver` over gRPC, serving Prometheus
/// on a free loopback port, with `extra` arguments; returns it with the Prometheus address.
fn sonde_with_metrics(receiver: &Receiver, extra: &[&str]) -> (Sonde, SocketAddr) {
    sonde_with_metrics_via(receiver, Transport::Grpc, extra)
}

fn sonde_with_metrics_via(receiver: &Receiver, transport: Transport, extra: &[&str]) -> (Sonde, SocketAddr) {
    let (endpoint, protocol) = match transport {
        Transport::Grpc => (receiver.grpc_endpoint(), "grpc"),
        Transport::Http => (receiver.http_endpoint(), "http/protobuf"),
    };
    Sonde::start_exporting(&endpoint, protocol, &[&["--metrics-interval", "1s"], extra].concat())
}

/// `curl` of one URL; returns the status code it got.
fn status_of(args: &[&str]) -> u16 {
    let out = curl(&[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat());
    out.trim().parse().unwrap_or_else(|_| panic!("curl {args:?} printed {out:?}"))
}

/// Newest server-duration histogram points of `service`, as (method, route, status) → point.
fn server_series(receiver: &Receiver, service: &str) -> BTreeMap<(String, String, String), ReceivedPoint> {
    receiver
        .latest("http.server.request.duration")
        .into_iter()
        .filter(|p| p.resource.get("service.name").map(String::as_str) == Some(service))
        .map(|p| {
            let key = |k: &str| p.attr(k).unwrap_or_default().to_owned();
            ((key("http.request.method"), key("http.route"), key("http.response.status_code")), p)
        })
        .collect()
}

/// The samples of one scrape of sonde's endpoint, checked to be valid exposition format.
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, content_type, body) = prometheus::scrape(addr).expect("scraping sonde");
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    prometheus::parse_exposition(&body).unwrap_or_else(|e| panic!("{e:#}\n{body}"))
}

fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v))).collect()
}

/// Each histogram's `_bucket` series of `family`: `le` ascending, counts never falling, `+Inf`
/// last and equal to `_count`.
fn check_buckets(all: &[Sample], family: &str) {
    type Labels = BTreeMap<String, String>;
    let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for b in all.iter().filter(|s| s.name == format!("{family}_bucket")) {
        let le = b.label("le").expect("a bucket has le");
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le is a number") };
        let mut labels: Labels = b.labels.clone();
        labels.remove("le");
        series.entry(labels).or_default().push((le, b.value));
    }
    assert!(!series.is_empty(), "no {family}_bucket samples");
    for (labels, buckets) in series {
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{labels:?}: {buckets:?}");
        assert_eq!(buckets.len(), SEMCONV_BOUNDS.len() + 1, "{labels:?}");
        let count =
            all.iter().find(|s| s.name == format!("{family}_count") && s.labels == labels).map(|s| s.value);
        assert_eq!(buckets.last().map(|b| (b.0, Some(b.1))), Some((f64::INFINITY, count)), "{labels:?}");
    }
}

fn key(method: &str, route: &str, status: u16) -> (String, String, String) {
    (method.into(), route.into(), status.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn red_histograms_count_every_request_per_series_at_otlp_and_prometheus() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "shop-red")]);
    let pid = app.pid().to_string();
    // Only the server: curl's own client series are not what this test counts.
    let (mut sonde, prom) =
        sonde_with_metrics(&receiver, &["--pid", &pid, "--route", "/orders/{order}/items"]);

    let uuids = ["550e8400-e29b-41d4-a716-446655440000", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"];
    let mut expected: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let base = app.url("");
    let tasks = tokio::task::spawn_blocking({
        move || {
            let mut sent = Vec::new();
            for n in [1, 22, 333, 4444, 5, 60] {
                sent.push((status_of(&[&format!("{base}/users/{n}")]), "GET", "/users/{id}"));
            }
            for uuid in uuids {
                sent.push((status_of(&[&format!("{base}/users/{uuid}?tab=orders")]), "GET", "/users/{id}"));
            }
            // A 5xx adds its route (the server's fault); a 4xx may not add one, so the 404s
            // come after the first 500 has made `/status/{id}` known.
            for code in [500, 404, 404, 404, 500] {
                sent.push((status_of(&[&format!("{base}/status/{code}")]), "GET", "/status/{id}"));
            }
            // A 404 on a path that never succeeded: no new route for it.
            sent.push((status_of(&[&format!("{base}/status/404/scan")]), "GET", "/{unmatched}"));
            for order in [7, 8, 9] {
                let url = format!("{base}/orders/{order}/items");
                sent.push((status_of(&[&url]), "GET", "/orders/{order}/items"));
            }
            for _ in 0..2 {
                sent.push((status_of(&["-d", "hello", &format!("{base}/upload")]), "POST", "/upload"));
            }
            sent
        }
    })
    .await
    .unwrap();
    for (status, method, route) in &tasks {
        *expected.entry(key(method, route, *status)).or_default() += 1;
    }
    let n: u64 = expected.values().sum();
    assert_eq!(n, 19);
    assert_eq!(expected.get(&key("GET", "/status/{id}", 404)), Some(&3), "the app answered {tasks:?}");

    // At the OTLP receiver: one cumulative histogram point per series, counts as sent.
    type Series = BTreeMap<(String, String, String), ReceivedPoint>;
    let counts = |series: &Series| -> BTreeMap<(String, String, String), u64> {
        series.iter().map(|(k, p)| (k.clone(), p.count)).collect()
    };
    let arrived = eventually(WAIT, || counts(&server_series(&receiver, "shop-red")) == expected);
    let series = server_series(&receiver, "shop-red");
    assert!(arrived, "expected {expected:#?}\ngot {:#?}\n{}", counts(&series), sonde.stderr());
    for ((_, route, status), p) in &series {
        assert_eq!(p.unit, "s");
        assert!(matches!(p.kind, PointKind::Histogram), "{p:?}");
        assert_eq!(p.temporality, 2, "cumulative");
        assert_eq!(p.bounds, SEMCONV_BOUNDS, "{route}");
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{p:?}");
        assert!(p.value > 0.0 && p.value < p.count as f64 * 5.0, "sum of durations {p:?}");
        assert_eq!(p.attr("url.scheme"), Some("http"));
        assert_eq!(p.attr("network.protocol.version"), Some("1.1"));
        let error = (status == "500").then_some("500");
        assert_eq!(p.attr("error.type"), error, "error.type only for server errors: {p:?}");
        assert_eq!(p.resource.get("process.pid"), Some(&pid), "the same resource as the spans");
        assert!(p.resource.contains_key("service.instance.id"), "{:?}", p.resource);
        assert_eq!(p.scope.0, "sonde");
    }

    // The same series at the Prometheus endpoint, named the Prometheus way.
    let exposed = scrape(prom);
    let mut got = BTreeMap::new();
    for s in samples(&exposed, "http_server_request_duration_seconds_count", &[("service_name", "shop-red")])
    {
        let label = |k: &str| s.label(k).unwrap_or_default().to_owned();
        let series = (label("http_request_method"), label("http_route"), label("http_response_status_code"));
        got.insert(series, s.value as u64);
        let error = (s.label("http_response_status_code") == Some("500")).then_some("500");
        assert_eq!(s.label("error_type"), error, "{s:?}");
    }
    assert_eq!(got, expected, "Prometheus endpoint");
    check_buckets(&exposed, "http_server_request_duration_seconds");
    let types = prometheus::parse_types(&prometheus::scrape(prom).unwrap().2);
    assert_eq!(types.get("http_server_request_duration_seconds").map(String::as_str), Some("histogram"));
    assert!(
        samples(&exposed, "target_info", &[("service_name", "shop-red"), ("process_pid", &pid)]).len() == 1,
        "target_info carries the resource"
    );

    // sonde's own health, on its own resource.
    let received = samples(&exposed, "sonde_events_received_total", &[]);
    assert!(received.iter().any(|s| s.value > 0.0), "{received:?}");
    assert!(!samples(&exposed, "process_memory_usage_bytes", &[]).is_empty());
    // Spans go out in their own batches, after the first metrics collection perhaps: wait for one.
    let spans_exported = || receiver.latest("sonde.spans.exported").iter().any(|p| p.value > 0.0);
    assert!(eventually(WAIT, spans_exported), "{:#?}", receiver.latest("sonde.spans.exported"));

    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_sonde_and_promql_counts_the_requests() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "shop-prom")]);
    let pid = app.pid().to_string();
    let (mut sonde, listen) = sonde_with_metrics(&receiver, &["--pid", &pid, "--otlp-metrics", "off"]);
    let base = app.url("");
    let result = tokio::task::spawn_blocking(move || {
        let prometheus = Prometheus::start(listen, Duration::from_secs(1)).expect("starting Prometheus");
        for n in 0..7 {
            let code = if n % 3 == 0 { 503 } else { 200 };
            assert_eq!(status_of(&[&format!("{base}/status/{code}")]), code);
        }
        let total = r#"sum(http_server_request_duration_seconds_count{service_name="shop-prom"})"#;
        let failed =
            r#"sum(http_server_request_duration_seconds_count{service_name="shop-prom",error_type="503"})"#;
        let seven = |v: &[(BTreeMap<String, String>, f64)]| v.first().is_some_and(|(_, x)| *x == 7.0);
        let total = prometheus.wait_for(total, seven, WAIT);
        let health = prometheus.target_health();
        let failed = prometheus.query(failed);
        let up = prometheus.query(r#"up{job="sonde"}"#);
        (total, failed, up, health, prometheus.log())
    })
    .await
    .unwrap();
    let (total, failed, up, health, log) = result;
    let value = |v: &anyhow::Result<prometheus::Vector>| v.as_ref().ok().and_then(|v| v.first()).map(|e| e.1);
    assert_eq!(value(&total), Some(7.0), "{total:?}; target {health:?}\n{log}");
    assert_eq!(value(&failed), Some(3.0), "{failed:?}");
    assert_eq!(value(&up), Some(1.0), "{up:?}");
    assert_eq!(receiver.metrics_requests(), 0, "--otlp-metrics off sends no metrics");
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn service_graph_edge_for_a_two_service_chain() {
    let receiver = Receiver::start().await.unwrap();
    let back = harness::chain_service("graph-back", &[], &[]);
    let front = harness::chain_service("graph-front", &[], &[back.url("")]);
    let pids = [front.pid().to_string(), back.pid().to_string()];
    // Over OTLP/HTTP this time (`/v1/metrics`).
    let (mut sonde, prom) =
        sonde_with_metrics_via(&receiver, Transport::Http, &["--pid", &pids[0], "--pid", &pids[1]]);
    let url = front.url("/checkout");
    tokio::task::spawn_blocking(move || {
        for n in 0..4 {
            assert_eq!(status_of(&[&format!("{url}/{n}")]), 200);
        }
    })
    .await
    .unwrap();

    // The newest point of the edge (client, server), with its connection_type.
    let edge = |client: &str, server: &str| {
        let points = receiver.latest("traces_service_graph_request_total");
        let mut matching =
            points.iter().filter(|p| p.attr("client") == Some(client) && p.attr("server") == Some(server));
        let found = matching
            .next()
            .map(|p| (p.value, p.attr("connection_type").map(str::to_owned), p.resource.clone(), p.via));
        assert!(matching.next().is_none(), "one series per edge: {points:#?}");
        found
    };
    let arrived = eventually(WAIT, || edge("graph-front", "graph-back").is_some_and(|e| e.0 == 4.0));
    let all = receiver.latest("traces_service_graph_request_total");
    assert!(arrived, "no front → back edge with 4 requests: {all:#?}\n{}", sonde.stderr());
    let (_, connection_type, resource, via) = edge("graph-front", "graph-back").unwrap();
    assert_eq!(connection_type, None, "both sides traced: not a virtual node");
    assert_eq!(via, Transport::Http);
    assert_eq!(resource.get("service.name").map(String::as_str), Some("sonde"), "on sonde's own resource");
    // curl is not traced: its requests reach the front from outside.
    let user = edge("user", "graph-front");
    assert_eq!(user.as_ref().map(|e| (e.0, e.1.as_deref())), Some((4.0, Some("virtual_node"))), "{all:#?}");
    let failed = receiver.latest("traces_service_graph_request_failed_total");
    let front_back_failed = failed.iter().find(|p| p.attr("server") == Some("graph-back")).map(|p| p.value);
    assert_eq!(front_back_failed, Some(0.0));
    let server = receiver.latest("traces_service_graph_request_server");
    assert!(
        server.iter().any(|p| p.attr("server") == Some("graph-back") && p.count == 4 && p.unit == "s"),
        "{server:#?}"
    );

    // The front's client histogram: where it called, as the conventions want it.
    let client = receiver.latest("http.client.request.duration");
    let front_calls: Vec<_> = client
        .iter()
        .filter(|p| p.resource.get("service.name").map(String::as_str) == Some("graph-front"))
        .map(|p| {
            (
                p.attr("server.address"),
                p.attr("server.port").map(str::to_owned),
                p.attr("http.response.status_code"),
                p.count,
            )
        })
        .collect();
    assert_eq!(
        front_calls,
        [(Some("127.0.0.1"), Some(back.port.to_string()), Some("200"), 4)],
        "{client:#?}"
    );

    // As Prometheus users know them.
    let exposed = scrape(prom);
    let labels = [("client", "graph-front"), ("server", "graph-back")];
    let total = samples(&exposed, "traces_service_graph_request_total", &labels);
    assert_eq!(total.iter().map(|s| s.value).collect::<Vec<_>>(), [4.0], "{exposed:#?}");
    let client_count = samples(&exposed, "traces_service_graph_request_client_seconds_count", &labels);
    assert_eq!(client_count.iter().map(|s| s.value).collect::<Vec<_>>(), [4.0]);
    sonde.stop_cleanly();
}

/// `GET /burst/N` `n` times on one keep-alive connection.
fn burst(port: u16, n: usize) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    conn.set_nodelay(true).unwrap();
    for i in 0..n {
        use std::io::Write as _;
        write!(conn, "GET /burst/{i} HTTP/1.1\r\nHost: app\r\n\r\n").expect("writing");
        read_ok_reply(&mut conn);
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling our own child (sonde) by its pid.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid} {signal}");
}

#[tokio::test(flavor = "multi_thread")]
async fn starved_reader_counts_kernel_drops_and_keeps_counting_requests() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "shop-starved")]);
    let pid = app.pid().to_string();
    // 64 KiB: a few hundred events.
    let (mut sonde, prom) = sonde_with_metrics(&receiver, &["--pid", &pid, "--ring-buffer-bytes", "65536"]);
    let dropped = |exposed: &[Sample]| {
        samples(exposed, "sonde_kernel_events_dropped_total", &[("reason", "ring_buffer_full")])
            .first()
            .map(|s| s.value)
    };
    assert_eq!(dropped(&scrape(prom)), Some(0.0), "a counter from the start, at 0");

    // The reader stops; the app goes on (the kernel side never waits for it).
    let sonde_pid = sonde.pid();
    signal(sonde_pid, libc::SIGSTOP);
    let port = app.port;
    let burst_time = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        burst(port, 1000);
        // And connections that open and close while nobody reads: their Close events are lost.
        for i in 0..100 {
            let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
            use std::io::Write as _;
            write!(conn, "GET /short/{i} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").unwrap();
            read_ok_reply(&mut conn);
        }
        started.elapsed()
    })
    .await;
    signal(sonde_pid, libc::SIGCONT);
    let burst_time = burst_time.unwrap();
    assert!(burst_time < Duration::from_secs(60), "1000 requests took {burst_time:?}");

    let mut last = None;
    let rose = eventually(WAIT, || {
        last = dropped(&scrape(prom));
        last.is_some_and(|d| d > 0.0)
    });
    assert!(rose, "ring_buffer_full drops: {last:?}\n{}", sonde.stderr());
    let exported = eventually(WAIT, || {
        receiver
            .latest("sonde.kernel.events.dropped")
            .iter()
            .any(|p| p.attr("reason") == Some("ring_buffer_full") && p.value > 0.0)
    });
    assert!(exported, "drops exported over OTLP too: {:#?}", receiver.latest("sonde.kernel.events.dropped"));

    // No connection state outlives its connection, lost Close events or not: the app holds none
    // now, and within a few reconciliations with the kernel's table sonde tracks none either.
    // (Checked before any new connection: one that reused the fd would hide a leak.)
    let tracked = || samples(&scrape(prom), "sonde_connections_tracked", &[]).first().map(|s| s.value);
    let mut last = tracked();
    let cleared = eventually(Duration::from_secs(30), || {
        last = tracked();
        last == Some(0.0)
    });
    assert!(cleared, "connections still tracked after the app closed them all: {last:?}");

    // Still running, still counting: requests after the starvation are all there.
    let base = app.url("");
    tokio::task::spawn_blocking(move || {
        for n in 0..5 {
            assert_eq!(status_of(&[&format!("{base}/after/{n}")]), 200);
        }
    })
    .await
    .unwrap();
    let after =
        || server_series(&receiver, "shop-starved").get(&key("GET", "/after/{id}", 200)).map(|p| p.count);
    assert!(eventually(WAIT, || after() == Some(5)), "after the drops: {:?}", after());
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_of_a_process_with_its_own_sdk_are_counted_without_sonde_spans() {
    let receiver = Receiver::start().await.unwrap();
    let sdk = harness::sdk_python_service("sdk-red", &receiver.http_traces_url(), &[]);
    let pid = sdk.pid().to_string();
    let (mut sonde, _) = sonde_with_metrics(&receiver, &["--pid", &pid]);
    let url = sdk.url("/items");
    tokio::task::spawn_blocking(move || {
        for n in 0..3 {
            assert_eq!(status_of(&[&format!("{url}/{n}")]), 200);
        }
    })
    .await
    .unwrap();
    let count = || server_series(&receiver, "sdk-red").values().map(|p| p.count).sum::<u64>();
    assert!(
        eventually(WAIT, || count() == 3),
        "{:#?}\n{}",
        server_series(&receiver, "sdk-red"),
        sonde.stderr()
    );
    // The SDK's own spans arrive; none of sonde's for this process (`--sdk-processes skip`).
    let spans =
        receiver.wait_for(|s| s.iter().filter(|s| s.kind_name() == "SERVER").count() >= 3, WAIT).await;
    let by_sonde: Vec<_> = spans
        .iter()
        .filter(|s| s.resource.get("telemetry.sdk.name").map(String::as_str) == Some("sonde"))
        .collect();
    assert!(by_sonde.is_empty(), "{by_sonde:#?}");
    sonde.stop_cleanly();
}
