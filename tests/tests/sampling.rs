//! Privileged: head sampling as OTel SDKs do it. With `parentbased_traceidratio` at 0, requests
//! that start a trace are not exported, one whose caller's `traceparent` says sampled is (with its
//! trace id), one whose caller says not sampled is not — and the RED metrics count every one.

use std::time::Duration;

use sonde_tests::{
    harness::{self, Sonde, curl},
    receiver::{ReceivedPoint, Receiver, server_requests_counted},
};

const TRACE_ID: &str = "5d6e6c0a3b8f4a0f9e7c2b1a09f8e7d6";
const CALLER_SPAN: &str = "a1b2c3d4e5f60718";

#[tokio::test(flavor = "multi_thread")]
async fn sampling_drops_spans_not_requests() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "sampled-app")]);
    let pid = app.pid().to_string();
    let (mut sonde, _prom) = Sonde::start_exporting(
        &receiver.grpc_endpoint(),
        "grpc",
        &[
            "--pid",
            &pid,
            "--metrics-interval",
            "1s",
            "--traces-sampler",
            "parentbased_traceidratio",
            "--traces-sampler-arg",
            "0",
        ],
    );
    for i in 0..10 {
        curl(&["-o", "/dev/null", &app.url(&format!("/unsampled/{i}"))]);
    }
    let caller = |flags: &str| format!("traceparent: 00-{TRACE_ID}-{CALLER_SPAN}-{flags}");
    curl(&["-o", "/dev/null", "-H", &caller("00"), &app.url("/caller-says-no")]);
    curl(&["-o", "/dev/null", "-H", &caller("01"), &app.url("/caller-says-yes")]);

    let counted = |points: &[ReceivedPoint]| server_requests_counted(points, &pid);
    let points = receiver.wait_for_points(|p| counted(p) >= 12, Duration::from_secs(20)).await;
    assert_eq!(counted(&points), 12, "every request is counted, sampled or not");
    let spans = receiver
        .wait_for(
            |s| s.iter().any(|s| s.attr("url.path").as_deref() == Some("/caller-says-yes")),
            Duration::from_secs(20),
        )
        .await;
    let ours: Vec<_> = spans.iter().filter(|s| s.resource.get("process.pid") == Some(&pid)).collect();
    let paths: Vec<_> = ours.iter().filter_map(|s| s.attr("url.path")).collect();
    assert_eq!(paths, ["/caller-says-yes"], "only the trace its caller sampled is exported");
    assert_eq!(ours[0].trace_id_hex(), TRACE_ID);
    sonde.stop_cleanly();
}
