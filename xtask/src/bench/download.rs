//! The download scenario: curl fetches a 1 GiB file from nginx twice over one keep-alive
//! connection, with sonde tracing the whole node (both ends), against no tracing, in interleaved
//! rounds. What it shows: whether sonde's kernel side stops reporting a body whose length the head
//! gave — the throughput ratio, events per span, and what the kernel copied and skipped.

use std::time::Duration;

use serde::Serialize;

use super::{
    nginx::Nginx,
    procs,
    rounds::{self, RoundRun},
    tracer::{TracerOptions, Variant, counter_sum},
};

/// The scenario's name, for `--only`.
pub const NAME: &str = "large download";
const FILE_BYTES: u64 = 1 << 30;
const DOWNLOADS: usize = 2;

/// The rounds (GB/s each), and their medians.
#[derive(Clone, Debug, Serialize)]
pub struct DownloadSummary {
    pub runs: Vec<RoundRun>,
    pub gb_per_s_off: f64,
    pub gb_per_s_sonde: f64,
    /// Median of the per-round ratios sonde ÷ off.
    pub ratio: f64,
    /// Events sonde received per span it made (both ends of every download), median.
    pub events_per_span: f64,
    /// What sonde's kernel side copied, and the body bytes it skipped, median per round.
    pub copied_bytes: u64,
    pub body_skipped_bytes: u64,
}

pub fn run(
    opts: &TracerOptions,
    rounds: u32,
    nginx: &Nginx,
    cpus: Option<&str>,
) -> anyhow::Result<DownloadSummary> {
    let url = nginx.large_file_url(FILE_BYTES)?;
    let runs = rounds::node_wide(NAME, "GB/s", opts, rounds, || Ok((download(&url, cpus)?, ())))?;
    Ok(DownloadSummary {
        gb_per_s_off: rounds::median_value(&runs, Variant::Off),
        gb_per_s_sonde: rounds::median_value(&runs, Variant::Sonde),
        ratio: rounds::ratio(&runs),
        events_per_span: rounds::traced_median(&runs, |t| {
            let events = counter_sum(&t.counters, "sonde.events.received") as f64;
            events / (counter_sum(&t.counters, "sonde.spans.created") as f64).max(1.0)
        }),
        copied_bytes: rounds::traced_counter(&runs, "sonde.kernel.copied"),
        body_skipped_bytes: rounds::traced_counter(&runs, "sonde.kernel.body_skipped"),
        runs,
    })
}

/// `DOWNLOADS` downloads of `url` on one connection: GB/s over all of them.
fn download(url: &str, cpus: Option<&str>) -> anyhow::Result<f64> {
    let mut curl = procs::pinned(cpus, "curl");
    curl.args(["-s", "--fail", "-w", "%{size_download} %{time_total}\n"]);
    for _ in 0..DOWNLOADS {
        curl.args(["-o", "/dev/null", url]);
    }
    let out = procs::run_bounded("curl", &mut curl, Duration::from_secs(120))?;
    let (mut bytes, mut secs) = (0.0, 0.0);
    for line in out.lines() {
        let mut fields = line.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(b)), Some(Ok(s))) = (fields.next(), fields.next()) else {
            anyhow::bail!("curl -w printed {line:?}");
        };
        (bytes, secs) = (bytes + b, secs + s);
    }
    anyhow::ensure!(bytes as u64 == DOWNLOADS as u64 * FILE_BYTES, "curl downloaded {bytes} bytes: {out}");
    Ok(bytes / secs.max(1e-9) / 1e9)
}

/// The line printed under the main table.
pub fn line(s: &DownloadSummary) -> String {
    format!(
        "{NAME} (nginx → curl, {DOWNLOADS} × 1 GiB keep-alive, sonde node-wide): {:.2} → {:.2} GB/s, ×{:.3}; \
         {:.1} events per span; kernel copied {} KiB, skipped {} MiB of body per round",
        s.gb_per_s_off,
        s.gb_per_s_sonde,
        s.ratio,
        s.events_per_span,
        s.copied_bytes / 1024,
        s.body_skipped_bytes >> 20
    )
}
