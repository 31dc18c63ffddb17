//! Privileged: the kernel programs' own diagnostics (aya-log), switched on by the log filter.
//! They log sonde's own connections as the kernel files them; with the default filter they stay
//! silent.

use std::time::{Duration, Instant};

use sonde_tests::{harness::Sonde, receiver::Receiver};

/// sonde exporting metrics every second to `receiver`, with `--log LOG` (RUST_LOG empty, so the
/// flag decides): its stderr after at least two exports.
async fn log_while_exporting(receiver: &Receiver, log: &str) -> String {
    let endpoint = receiver.http_endpoint();
    let args = ["--otlp-endpoint", &endpoint, "--otlp-protocol", "http/protobuf", "--print", "none"];
    let mut sonde = Sonde::start_with_env(
        &[&args[..], &["--pid", "1", "--metrics-interval", "1s", "--log", log]].concat(),
        &[("RUST_LOG", "")],
    );
    let before = receiver.metrics_requests();
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.metrics_requests() < before + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.metrics_requests() >= before + 2, "no metric exports arrived:\n{}", sonde.stderr());
    // The agent reads the kernel's log every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sonde.stop_cleanly();
    sonde.stderr()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kernel_logs_own_connections_when_asked_and_is_silent_otherwise() {
    let receiver = Receiver::start().await.unwrap();
    let port = receiver.http_addr().port();

    let asked = log_while_exporting(&receiver, "info,sonde::kernel=debug").await;
    let own: Vec<&str> =
        asked.lines().filter(|l| l.contains("sonde::kernel") && l.contains("own connection from")).collect();
    assert!(
        own.iter().any(|l| l.contains(&format!("to port {port}: its other end is not traced"))),
        "no kernel record of sonde's connection to port {port}:\n{asked}"
    );
    assert!(own.iter().all(|l| l.contains("DEBUG")), "kernel records at another level:\n{asked}");

    let default = log_while_exporting(&receiver, "info").await;
    assert!(!default.contains("sonde::kernel"), "kernel records with the default filter:\n{default}");
}
