//! Load generators: wrk (Debian) drives nginx as fast as it can; oha (crates.io) sends a fixed
//! rate. Both report machine-readable results (wrk through a Lua `done` hook, oha as JSON).

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use super::procs;

/// How one scenario loads nginx.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Load {
    /// Requests per second, or `None` for as fast as possible (wrk).
    pub rate: Option<u32>,
    /// Concurrent connections (wrk) or workers (oha).
    pub connections: u32,
    /// Reuse connections, or open a new one per request (`Connection: close`).
    pub keepalive: bool,
}

/// What the load generator saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadResult {
    /// Responses received (any status).
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// wrk's summary as one JSON line; latencies are in µs.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#;

pub fn run(
    load: &Load,
    url: &str,
    duration: Duration,
    cpus: Option<&str>,
    work: &Path,
) -> anyhow::Result<LoadResult> {
    let limit = duration + Duration::from_secs(30);
    match load.rate {
        None => wrk(load, url, duration, cpus, work, limit),
        Some(rate) => oha(load, rate, url, duration, cpus, limit),
    }
}

fn wrk(
    load: &Load,
    url: &str,
    duration: Duration,
    cpus: Option<&str>,
    work: &Path,
    limit: Duration,
) -> anyhow::Result<LoadResult> {
    let script = work.join("wrk-report.lua");
    if !script.exists() {
        std::fs::write(&script, WRK_SCRIPT)?;
    }
    let mut cmd = procs::pinned(cpus, "wrk");
    cmd.args(["-t1", "-c", &load.connections.to_string(), "-d"])
        // wrk takes whole seconds only.
        .arg(format!("{}s", duration.as_secs().max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(&script);
    if !load.keepalive {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let out = procs::run_bounded("wrk", &mut cmd, limit)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no summary from wrk:\n{out}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let seconds = n("duration_us") / 1e6;
    Ok(LoadResult {
        requests: n("requests") as u64,
        errors: (n("errors") + n("non2xx")) as u64,
        seconds,
        rps: n("requests") / seconds.max(1e-9),
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
    })
}

/// oha with `--latency-correction`: latency counts from when a request was due, not from when it
/// was sent, so a stall shows up in the percentiles instead of silently lowering the rate.
fn oha(
    load: &Load,
    rate: u32,
    url: &str,
    duration: Duration,
    cpus: Option<&str>,
    limit: Duration,
) -> anyhow::Result<LoadResult> {
    let bin = crate::setup::cargo_home_bin("oha");
    let mut cmd = procs::pinned(cpus, &bin.to_string_lossy());
    cmd.args(["--no-tui", "--output-format", "json", "--latency-correction"])
        .args(["-z", &format!("{}ms", duration.as_millis()), "-q", &rate.to_string()])
        .args(["-c", &load.connections.to_string()]);
    if !load.keepalive {
        cmd.arg("--disable-keepalive");
    }
    if url.starts_with("https:") {
        // nginx's certificate is self-signed.
        cmd.arg("--insecure");
    }
    cmd.arg(url);
    let out = procs::run_bounded("oha", &mut cmd, limit)?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("oha's JSON:\n{out}"))?;
    let responses: u64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    let non2xx: u64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| !k.starts_with('2')).filter_map(|(_, v)| v.as_u64()).sum())
        .unwrap_or(0);
    let seconds = v["summary"]["total"].as_f64().unwrap_or(duration.as_secs_f64());
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e6;
    Ok(LoadResult {
        requests: responses,
        errors: errors + non2xx,
        seconds,
        rps: responses as f64 / seconds.max(1e-9),
        p50_us: pct("p50"),
        p99_us: pct("p99"),
    })
}
