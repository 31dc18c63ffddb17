//! The node-wide saturation scenario: wrk drives nginx (one worker) as fast as it can over 32
//! keep-alive connections while sonde traces every process, as a DaemonSet does — wrk's client
//! side and nginx's server side — and exports to the collector, against no tracing, in
//! interleaved rounds. What it shows: the throughput ratio, sonde's CPU, and whether every request
//! still reaches the request metrics when sonde cannot keep up with the spans, with every loss
//! counted by reason.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Serialize;

use super::{
    load::{self, Load},
    nginx::Status,
    rounds::{self, RoundRun},
    tracer::{TracerOptions, TracerResult, Variant, counter_sum},
};

/// The scenario's name, for `--only`.
pub const NAME: &str = "node-wide saturation";
const LOAD: Load = Load { rate: None, connections: 32, keepalive: true };
/// sonde's counters of what it lost on the way, reported by reason.
const LOSSES: [&str; 4] =
    ["sonde.kernel.events.dropped", "sonde.events.lost", "sonde.spans.dropped", "sonde.requests.expired"];

/// What the workload did in one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Requests {
    /// Responses wrk received.
    pub sent: u64,
    /// Requests nginx answered.
    pub served: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SaturationSummary {
    pub runs: Vec<RoundRun<Requests>>,
    pub rps_off: f64,
    pub rps_sonde: f64,
    /// Median of the per-round ratios sonde ÷ off.
    pub ratio: f64,
    /// sonde's CPU per request served (both of its ends traced), µs, median.
    pub sonde_cpu_us_per_request: f64,
    pub events_per_span: f64,
    /// Exchanges sonde counted in the request metrics ÷ requests nginx answered (server side) and
    /// wrk received (client side), %, median.
    pub red_server_pct: f64,
    pub red_client_pct: f64,
    /// Spans made ÷ exchanges counted, %, median: what overload shed from tracing.
    pub spans_pct: f64,
    /// Every non-zero loss counter (`name{reason=…}`), median per round.
    pub losses: BTreeMap<String, u64>,
}

pub fn run(
    opts: &TracerOptions,
    rounds: u32,
    run: Duration,
    url: &str,
    status: Status,
    cpus: Option<&str>,
    work: &Path,
) -> anyhow::Result<SaturationSummary> {
    let runs = rounds::node_wide(NAME, "req/s", opts, rounds, || {
        let before = status.requests()?;
        let wrk = load::run(&LOAD, url, run, cpus, work)?;
        // Less the status query itself.
        let served = status.requests()?.saturating_sub(before + 1);
        Ok((wrk.rps, Requests { sent: wrk.requests, served }))
    })?;
    let ended = |t: &TracerResult, kind: &str| {
        t.counters.get(&format!("sonde.exchanges.ended{{span.kind={kind}}}")).copied().unwrap_or(0) as f64
    };
    let pct = |part: f64, whole: u64| part / (whole as f64).max(1.0) * 100.0;
    let mut losses = BTreeMap::new();
    for run in runs.iter().filter_map(|r| r.tracer.as_ref()) {
        // Each series by its reason; a counter with no reason is the sum of the others.
        let series = run.counters.iter().filter(|(k, _)| k.contains('{'));
        for (name, _) in series.filter(|(k, _)| LOSSES.iter().any(|l| k.starts_with(l))) {
            losses.entry(name.clone()).or_insert_with(|| rounds::traced_counter(&runs, name));
        }
    }
    losses.retain(|_, v| *v > 0);
    Ok(SaturationSummary {
        rps_off: rounds::median_value(&runs, Variant::Off),
        rps_sonde: rounds::median_value(&runs, Variant::Sonde),
        ratio: rounds::ratio(&runs),
        sonde_cpu_us_per_request: rounds::traced_median_with(&runs, |t, r| {
            t.cpu_traced_us as f64 / (r.served as f64).max(1.0)
        }),
        events_per_span: rounds::traced_median(&runs, |t| {
            counter_sum(&t.counters, "sonde.events.received") as f64
                / (counter_sum(&t.counters, "sonde.spans.created") as f64).max(1.0)
        }),
        red_server_pct: rounds::traced_median_with(&runs, |t, r| pct(ended(t, "server"), r.served)),
        red_client_pct: rounds::traced_median_with(&runs, |t, r| pct(ended(t, "client"), r.sent)),
        spans_pct: rounds::traced_median(&runs, |t| {
            let ended = counter_sum(&t.counters, "sonde.exchanges.ended");
            pct(counter_sum(&t.counters, "sonde.spans.created") as f64, ended)
        }),
        losses,
        runs,
    })
}

/// The lines printed under the main table.
pub fn line(s: &SaturationSummary) -> String {
    let losses: Vec<String> = s.losses.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{NAME} (wrk -c{} → nginx, both ends traced): {:.0} → {:.0} req/s, ×{:.3}; sonde CPU {:.1} µs/request; \
         {:.1} events per span\n  request metrics counted {:.2} % of nginx's requests, {:.2} % of wrk's; \
         spans for {:.1} % of them; lost per round: {}",
        LOAD.connections,
        s.rps_off,
        s.rps_sonde,
        s.ratio,
        s.sonde_cpu_us_per_request,
        s.events_per_span,
        s.red_server_pct,
        s.red_client_pct,
        s.spans_pct,
        if losses.is_empty() { "nothing".to_owned() } else { losses.join(" ") }
    )
}
