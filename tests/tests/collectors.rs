//! Privileged: sonde and the collectors on its host. A collector on the same node (the usual
//! agent-mode DaemonSet) is a process like any other, and sonde traces it: its own exports must
//! make no span and no metric there — or each export makes a span that the next export carries, for
//! ever — while the collector's other traffic, and a proxy that forwards OTLP, stay traced.

use std::{net::SocketAddr, time::Duration};

use sonde_tests::{
    harness::{self, Sonde, TempDir, curl, free_port},
    prometheus,
    receiver::{ReceivedSpan, Receiver},
};

const WAIT: Duration = Duration::from_secs(20);
/// Export rounds to let pass: traces leave within a second, metrics every `--metrics-interval`.
const ROUNDS: Duration = Duration::from_secs(4);

/// curl POSTs an empty OTLP/HTTP export (a valid, empty protobuf message) to `url`; returns the
/// status code it got.
fn post_empty_export(url: &str) -> String {
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/x-protobuf",
        "--data-binary",
        "",
        url,
    ]);
    out.trim().to_owned()
}

fn is_otlp_path(path: Option<&str>) -> bool {
    path.is_some_and(|p| p.ends_with("/v1/traces") || p.ends_with("/v1/metrics"))
}

/// sonde exports traces and metrics over OTLP/HTTP to `receiver`, which runs in this (traced)
/// process: none of sonde's requests may come back as a span or a RED series, whatever the
/// receiver's address; a request to the same receiver from another process still does.
async fn exports_leave_no_trace_at(receiver: Receiver) {
    let server = harness::python_http_server(&[("OTEL_SERVICE_NAME", "storefront")]);
    let me = std::process::id().to_string();
    let server_pid = server.pid().to_string();
    // `--sdk-processes trace`: nothing here may be skipped as "left to its own SDK".
    let (mut sonde, prom) = Sonde::start_exporting(
        &receiver.http_endpoint(),
        "http/protobuf",
        &["--pid", &me, "--pid", &server_pid, "--metrics-interval", "1s", "--sdk-processes", "trace"],
    );
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &server.url("/index.html")]);
    }
    // A client of the receiver that is not sonde: its request is the receiver's to trace.
    assert_eq!(post_empty_export(&receiver.http_traces_url()), "200", "the receiver took curl's export");
    let port = server.port.to_string();
    receiver.wait_for(|s| s.iter().any(|s| s.attr("server.port").as_deref() == Some(&port)), WAIT).await;
    tokio::time::sleep(ROUNDS).await;

    let spans = receiver.spans();
    let received: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind_name() == "SERVER" && s.resource.get("process.pid") == Some(&me))
        .collect();
    let paths: Vec<Option<String>> = received.iter().map(|s| s.attr("url.path")).collect();
    assert_eq!(
        paths.iter().filter(|p| is_otlp_path(p.as_deref())).count(),
        1,
        "exactly one export reached the receiver as a span, curl's: {paths:?}"
    );
    let series = receiver.latest("http.server.request.duration");
    let otlp_series: Vec<_> = series
        .iter()
        .filter(|p| p.resource.get("process.pid") == Some(&me) && is_otlp_path(p.attr("http.route")))
        .collect();
    assert!(otlp_series.len() <= 1, "RED series of sonde's exports: {otlp_series:#?}");
    let counts: f64 = otlp_series.iter().map(|p| p.count as f64).sum();
    assert!(counts <= 1.0, "sonde's exports were counted as requests: {otlp_series:#?}");
    // The same at the Prometheus endpoint.
    let (_, _, body) = prometheus::scrape(prom).expect("scraping sonde");
    let samples = prometheus::parse_exposition(&body).expect("exposition format");
    let counted: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "http_server_request_duration_seconds_count" && is_otlp_path(s.label("http_route"))
        })
        .map(|s| s.value)
        .sum();
    assert!(counted <= 1.0, "Prometheus counts sonde's exports as requests ({counted})");
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_to_a_traced_collector_over_ipv4_make_no_spans_or_metrics() {
    exports_leave_no_trace_at(Receiver::start().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_to_a_traced_collector_over_ipv6_make_no_spans_or_metrics() {
    let any = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    exports_leave_no_trace_at(Receiver::start_on(any, any).await.unwrap()).await;
}

/// nginx in front of a collector forwards `POST /v1/traces`: it receives them too, so it is not a
/// process with an SDK of its own, and its other requests keep their spans.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_in_front_of_a_collector_keeps_its_spans() {
    let receiver = Receiver::start().await.unwrap();
    let upstream = receiver.http_addr();
    let dir = TempDir::new("otlp-proxy");
    let port = free_port();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port};
    location /v1/ {{ proxy_pass http://{upstream}; proxy_http_version 1.1; }}
    location = /hello {{ return 200 'hello'; }}
  }}
}}
",
        d = dir.path.display()
    );
    let nginx = harness::start_nginx(dir, port, &conf);
    let pid = nginx.pid().to_string();
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &receiver.grpc_endpoint(),
        "--otlp-protocol",
        "grpc",
        "--pid",
        &pid,
        "--print",
        "none",
    ]);
    let posted = post_empty_export(&format!("http://127.0.0.1:{port}/v1/traces"));
    assert_eq!(posted, "200", "nginx forwarded the export");
    // Wait until the forwarded export was seen (nginx's CLIENT span of it)…
    let forwarded = |s: &ReceivedSpan| {
        s.kind_name() == "CLIENT" && s.attr("url.full").is_some_and(|u| u.ends_with("/v1/traces"))
    };
    receiver.wait_for(|s| s.iter().any(forwarded), WAIT).await;
    // …then ask nginx for something else: it is still traced.
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/hello")]);
    let hello =
        |s: &ReceivedSpan| s.kind_name() == "SERVER" && s.attr("url.path").as_deref() == Some("/hello");
    let spans = receiver.wait_for(|s| s.iter().any(hello), WAIT).await;
    assert!(spans.iter().any(hello), "nginx was taken for a process with its own SDK:\n{}", sonde.stderr());
    sonde.stop_cleanly();
    drop(nginx);
}
