//! Interleaved rounds of a node-wide scenario: no tracing, then sonde tracing every process (as a
//! DaemonSet does), the order alternating from round to round, each run measured by one number
//! where more is better (throughput).

use serde::Serialize;

use super::{
    report::Stat,
    tracer::{Tracer, TracerOptions, TracerResult, Variant, counter_sum},
};

/// One run of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRun<D = ()> {
    pub round: u32,
    pub variant: Variant,
    /// What the scenario measures, in its unit.
    pub value: f64,
    /// What else the scenario learnt from the workload in this run.
    pub detail: D,
    pub tracer: Option<TracerResult>,
}

/// `rounds` rounds of `measure` (its value, and details), without tracing and with sonde tracing
/// the node; `name` and `unit` label the progress lines.
pub fn node_wide<D>(
    name: &str,
    unit: &str,
    opts: &TracerOptions,
    rounds: u32,
    mut measure: impl FnMut() -> anyhow::Result<(f64, D)>,
) -> anyhow::Result<Vec<RoundRun<D>>> {
    let node_wide = TracerOptions { node_wide: true, ..*opts };
    let mut runs = Vec::new();
    for round in 0..rounds {
        let mut order = [Variant::Off, Variant::Sonde];
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            let tracer = Tracer::start(variant, &node_wide)?;
            let (value, detail) = measure()?;
            let tracer = tracer.map(Tracer::stop).transpose()?;
            eprintln!("bench: {name} round {} {:<5} {value:>8.2} {unit}", round + 1, variant.label());
            runs.push(RoundRun { round, variant, value, detail, tracer });
        }
    }
    Ok(runs)
}

/// The median value of `variant`'s runs.
pub fn median_value<D>(runs: &[RoundRun<D>], variant: Variant) -> f64 {
    median(runs.iter().filter(|r| r.variant == variant).map(|r| r.value).collect())
}

/// The median of the per-round ratios sonde ÷ off.
pub fn ratio<D>(runs: &[RoundRun<D>]) -> f64 {
    let rounds = runs.iter().map(|r| r.round + 1).max().unwrap_or(0);
    let ratios = (0..rounds)
        .filter_map(|round| {
            let at = |v: Variant| runs.iter().find(|r| r.round == round && r.variant == v);
            Some(at(Variant::Sonde)?.value / at(Variant::Off)?.value)
        })
        .collect();
    median(ratios)
}

/// The median over the traced runs of `f` of sonde's own report.
pub fn traced_median<D>(runs: &[RoundRun<D>], f: impl Fn(&TracerResult) -> f64) -> f64 {
    traced_median_with(runs, |t, _| f(t))
}

/// The median over the traced runs of `f` of sonde's own report and the run's details.
pub fn traced_median_with<D>(runs: &[RoundRun<D>], f: impl Fn(&TracerResult, &D) -> f64) -> f64 {
    median(runs.iter().filter_map(|r| Some(f(r.tracer.as_ref()?, &r.detail))).collect())
}

/// The median over the traced runs of one of sonde's own counters (summed over its attributes).
pub fn traced_counter<D>(runs: &[RoundRun<D>], name: &str) -> u64 {
    traced_median(runs, |t| counter_sum(&t.counters, name) as f64) as u64
}

fn median(xs: Vec<f64>) -> f64 {
    Stat::of(xs).map_or(f64::NAN, |s| s.median)
}
