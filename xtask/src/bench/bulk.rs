//! The bulk scenario: TCP traffic sonde cannot parse (iperf3 over loopback, one stream) with
//! sonde tracing the whole node (no `--pid`), as a DaemonSet does, against no tracing, in
//! interleaved rounds. What it shows: whether sonde's kernel side stops copying a connection that
//! is not HTTP — the throughput ratio, and the kernel's own count of bytes copied and not copied.

use std::{
    process::Stdio,
    sync::PoisonError,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    procs::{self, ChildGuard},
    rounds::{self, RoundRun},
    tracer::{TracerOptions, Variant},
};

/// The scenario's name, for `--only`.
pub const NAME: &str = "bulk non-HTTP TCP";

/// The rounds (Gbit/s each), and their medians.
#[derive(Clone, Debug, Serialize)]
pub struct BulkSummary {
    pub runs: Vec<RoundRun>,
    pub gbit_off: f64,
    pub gbit_sonde: f64,
    /// Median of the per-round ratios sonde ÷ off.
    pub ratio: f64,
    /// sonde's CPU per second of traffic, median, ms.
    pub sonde_cpu_ms_per_s: f64,
    /// What sonde's kernel side copied and did not copy, median bytes per round.
    pub copied_bytes: u64,
    pub not_copied_bytes: u64,
}

/// `rounds` rounds of `run` seconds, off and sonde alternating their order.
pub fn run(
    opts: &TracerOptions,
    rounds: u32,
    run: Duration,
    cpus: (Option<&str>, Option<&str>),
) -> anyhow::Result<BulkSummary> {
    let runs = rounds::node_wide(NAME, "Gbit/s", opts, rounds, || Ok((iperf3(run, cpus)?, ())))?;
    Ok(BulkSummary {
        gbit_off: rounds::median_value(&runs, Variant::Off),
        gbit_sonde: rounds::median_value(&runs, Variant::Sonde),
        ratio: rounds::ratio(&runs),
        sonde_cpu_ms_per_s: rounds::traced_median(&runs, |t| {
            t.cpu_traced_us as f64 / 1e3 / run.as_secs_f64()
        }),
        copied_bytes: rounds::traced_counter(&runs, "sonde.kernel.copied"),
        not_copied_bytes: rounds::traced_counter(&runs, "sonde.kernel.not_copied"),
        runs,
    })
}

/// One iperf3 run over loopback (server on the first CPU set, client on the second): Gbit/s
/// received.
fn iperf3(run: Duration, (server_cpus, client_cpus): (Option<&str>, Option<&str>)) -> anyhow::Result<f64> {
    let port = free_port()?;
    let mut command = procs::pinned(server_cpus, "iperf3");
    command
        .args(["-s", "-1", "--forceflush", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::piped());
    let mut server = ChildGuard::spawn("iperf3 -s", &mut command)?;
    // Not a test connection: `-1` would take it for the one client it serves.
    let said = procs::collect(server.child_mut().stdout.take().context("piped stdout")?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !said.lock().unwrap_or_else(PoisonError::into_inner).contains("Server listening") {
        server.check_alive()?;
        anyhow::ensure!(Instant::now() < deadline, "iperf3 -s did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = run.as_secs().max(1).to_string();
    let mut client = procs::pinned(client_cpus, "iperf3");
    client.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", &secs, "-J"]);
    let out = procs::run_bounded("iperf3 -c", &mut client, run + Duration::from_secs(30))?;
    let _ = server.terminate(Duration::from_secs(5));
    let report: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON report")?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(bits / 1e9)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The line printed under the main table.
pub fn line(s: &BulkSummary) -> String {
    format!(
        "{NAME} (iperf3, sonde node-wide): {:.2} → {:.2} Gbit/s, ×{:.3}; sonde CPU {:.1} ms/s; \
         kernel copied {} KiB, not copied {} MiB per round",
        s.gbit_off,
        s.gbit_sonde,
        s.ratio,
        s.sonde_cpu_ms_per_s,
        s.copied_bytes / 1024,
        s.not_copied_bytes >> 20
    )
}
