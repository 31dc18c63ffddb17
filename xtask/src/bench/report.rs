//! From runs to a report: per scenario, medians over the rounds with their spread (min–max),
//! ratios taken within a round (sonde ÷ untraced of the same round), a Markdown table for people
//! and JSON for machines.

use serde::Serialize;

use super::{
    kstats::KernelStats,
    load::LoadResult,
    scenario::{Profile, Scenario},
    tracer::{TracerResult, Variant},
};

/// One variant of one scenario in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub scenario: &'static str,
    pub round: u32,
    pub variant: Variant,
    pub load: Option<LoadResult>,
    pub tracer: Option<TracerResult>,
    /// Programs held by the tracer, with run-time statistics.
    pub kernel: Option<KernelStats>,
    /// Spans that arrived at the counting receiver behind rotel during this run.
    pub spans_received: Option<u64>,
    /// Requests nginx answered during the run (its `stub_status`), the load generator's own count
    /// leaves out those in flight when it stopped.
    pub nginx_requests: Option<u64>,
    pub noise: Noise,
    pub error: Option<String>,
}

/// What else the machine was doing during a run's load (these machines are shared).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Noise {
    /// All CPUs, all processes (ours included), % of the machine.
    pub cpu_busy_pct: f64,
    /// Time the hypervisor ran someone else, % of the machine.
    pub cpu_steal_pct: f64,
    /// rotel + the counting receiver during the load, % of one CPU.
    pub collector_cpu_pct: f64,
    /// BPF programs on tracing hooks that are not the tracer's (another sonde, another session).
    pub foreign_bpf_programs: usize,
}

/// Median and spread of one quantity over the rounds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Stat { median, min: v[0], max: v[v.len() - 1], n: v.len() })
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PerVariant {
    pub off: Option<Stat>,
    pub null: Option<Stat>,
    pub sonde: Option<Stat>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub rps: PerVariant,
    /// sonde ÷ untraced, per round.
    pub throughput_ratio: Option<Stat>,
    /// null probe ÷ untraced, per round.
    pub null_throughput_ratio: Option<Stat>,
    pub p50_us: PerVariant,
    pub p99_us: PerVariant,
    /// (sonde ÷ untraced − 1) × 100 of the p50, per round (fixed rates only).
    pub p50_added_pct: Option<Stat>,
    pub p99_added_pct: Option<Stat>,
    /// sonde's user+sys CPU from "tracing started" until the run's spans reached the receiver
    /// ÷ spans it exported.
    pub cpu_us_per_span: Option<Stat>,
    /// sonde's user+sys CPU from then to exit, ms: the drain, the flush, detaching every probe.
    /// Once per run, like start-up; not spread over the spans.
    pub stop_cpu_ms: Option<Stat>,
    /// Highest peak RSS over the rounds, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Highest RSS right before SIGTERM over the rounds, MiB.
    pub rss_end_mib: Option<f64>,
    /// Σ spans received by the collector ÷ Σ responses the load generator got, %.
    pub completeness_pct: Option<f64>,
    pub completeness_per_round_pct: Option<Stat>,
    /// Σ spans received ÷ Σ requests nginx answered, %.
    pub completeness_vs_nginx_pct: Option<f64>,
    /// Σ ring-buffer-full + in-flight-map-full drops in the kernel.
    pub kernel_dropped: u64,
    pub kernel_copy_failed: u64,
    /// Σ spans sonde dropped before export (queue full, export failed).
    pub spans_dropped: u64,
    /// BPF run time per request answered, ns: all the tracer's programs, machine-wide (they fire on
    /// every process's syscalls), in the separate pass with run-time statistics on.
    pub kernel_ns_per_request: PerVariant,
    /// BPF run time per program run, ns: the cost of one hook firing.
    pub kernel_ns_per_run: PerVariant,
    /// sonde's kernel ns per request ÷ the null probe's.
    pub kernel_cost_vs_null: Option<f64>,
    /// Kernel events sonde read per span it made (median over rounds).
    pub events_per_span: Option<Stat>,
    /// Runs of this scenario during which someone else's BPF programs were attached.
    pub runs_with_foreign_bpf: usize,
    /// Machine-wide CPU busy during the load, % (ours included: a quiet machine shows the cost).
    pub busy_pct: PerVariant,
    /// rotel + counting receiver CPU during sonde's A/B runs, % of one CPU.
    pub collector_cpu_pct: Option<Stat>,
    /// Median machine-wide steal time over this scenario's runs, %.
    pub steal_pct: Option<Stat>,
    pub errors: Vec<String>,
}

pub fn summarize(scenario: &Scenario, rounds: u32, runs: &[Run], kernel_runs: &[Run]) -> Summary {
    let of = |round: u32, variant: Variant| {
        runs.iter().find(|r| r.scenario == scenario.name && r.round == round && r.variant == variant)
    };
    let per_variant = |f: &dyn Fn(&Run) -> Option<f64>| PerVariant {
        off: Stat::of((0..rounds).filter_map(|r| of(r, Variant::Off).and_then(f))),
        null: Stat::of((0..rounds).filter_map(|r| of(r, Variant::Null).and_then(f))),
        sonde: Stat::of((0..rounds).filter_map(|r| of(r, Variant::Sonde).and_then(f))),
    };
    let ratio = |a: Variant, b: Variant, f: &dyn Fn(&Run) -> Option<f64>| {
        Stat::of((0..rounds).filter_map(|r| Some(f(of(r, a)?)? / f(of(r, b)?)?)))
    };
    let rps = |r: &Run| r.load.as_ref().map(|l| l.rps);
    let p50 = |r: &Run| r.load.as_ref().map(|l| l.p50_us);
    let p99 = |r: &Run| r.load.as_ref().map(|l| l.p99_us);
    let fixed = scenario.load.rate.is_some();
    let added = |f: &dyn Fn(&Run) -> Option<f64>| {
        fixed.then(|| ratio(Variant::Sonde, Variant::Off, f)).flatten().map(|s| Stat {
            median: (s.median - 1.0) * 100.0,
            min: (s.min - 1.0) * 100.0,
            max: (s.max - 1.0) * 100.0,
            n: s.n,
        })
    };
    let requests = |r: &Run| r.load.as_ref().map(|l| l.requests as f64);
    let kernel_ns = |r: &Run| Some(r.kernel.as_ref()?.run_time_ns as f64 / requests(r)?.max(1.0));
    let kernel_of = |variant: Variant, f: &dyn Fn(&Run) -> Option<f64>| {
        Stat::of(
            kernel_runs.iter().filter(|r| r.scenario == scenario.name && r.variant == variant).filter_map(f),
        )
    };
    let kernel_per_variant = |f: &dyn Fn(&Run) -> Option<f64>| PerVariant {
        off: None,
        null: kernel_of(Variant::Null, f),
        sonde: kernel_of(Variant::Sonde, f),
    };
    let all: Vec<&Run> = runs.iter().chain(kernel_runs).filter(|r| r.scenario == scenario.name).collect();
    let sonde_runs: Vec<&Run> = (0..rounds).filter_map(|r| of(r, Variant::Sonde)).collect();
    let counter = |r: &Run, k: &str| r.tracer.as_ref().and_then(|t| t.counters.get(k).copied()).unwrap_or(0);
    let sum =
        |r: &Run, name: &str| r.tracer.as_ref().map_or(0, |t| super::tracer::counter_sum(&t.counters, name));
    let cpu_per_span = |r: &Run| {
        let t = r.tracer.as_ref()?;
        let spans = t.counters.get("sonde.spans.exported").copied().or(r.spans_received)?;
        (spans > 0).then(|| t.cpu_traced_us as f64 / spans as f64)
    };
    let with_counts: Vec<(f64, f64)> =
        sonde_runs.iter().filter_map(|r| Some((r.spans_received? as f64, requests(r)?))).collect();
    let served: Vec<(f64, f64)> = sonde_runs
        .iter()
        .filter_map(|r| Some((r.spans_received? as f64, r.nginx_requests? as f64)))
        .collect();
    let pct = |v: &[(f64, f64)]| {
        let (got, asked) = v.iter().fold((0.0, 0.0), |(g, a), (x, y)| (g + x, a + y));
        (asked > 0.0).then(|| got / asked * 100.0)
    };
    let mib = |f: fn(&TracerResult) -> u64| {
        sonde_runs.iter().filter_map(|r| r.tracer.as_ref()).map(|t| f(t) as f64 / 1024.0).reduce(f64::max)
    };
    Summary {
        scenario: scenario.clone(),
        rps: per_variant(&rps),
        throughput_ratio: ratio(Variant::Sonde, Variant::Off, &rps),
        null_throughput_ratio: ratio(Variant::Null, Variant::Off, &rps),
        p50_us: per_variant(&p50),
        p99_us: per_variant(&p99),
        p50_added_pct: added(&p50),
        p99_added_pct: added(&p99),
        cpu_us_per_span: Stat::of(sonde_runs.iter().filter_map(|r| cpu_per_span(r))),
        stop_cpu_ms: Stat::of(
            sonde_runs.iter().filter_map(|r| Some(r.tracer.as_ref()?.cpu_stop_us as f64 / 1e3)),
        ),
        peak_rss_mib: mib(|t| t.peak_rss_kib),
        rss_end_mib: mib(|t| t.rss_end_kib),
        completeness_pct: pct(&with_counts),
        completeness_vs_nginx_pct: pct(&served),
        completeness_per_round_pct: Stat::of(with_counts.iter().map(|(g, a)| g / a.max(1.0) * 100.0)),
        kernel_dropped: sonde_runs
            .iter()
            .map(|r| {
                counter(r, "sonde.kernel.events.dropped{reason=ring_buffer_full}")
                    + counter(r, "sonde.kernel.events.dropped{reason=connection_table_full}")
            })
            .sum(),
        kernel_copy_failed: sonde_runs
            .iter()
            .map(|r| counter(r, "sonde.kernel.events.dropped{reason=copy_failed}"))
            .sum(),
        spans_dropped: sonde_runs.iter().map(|r| sum(r, "sonde.spans.dropped")).sum(),
        kernel_ns_per_request: kernel_per_variant(&kernel_ns),
        kernel_ns_per_run: kernel_per_variant(&|r: &Run| {
            let k = r.kernel.as_ref()?;
            (k.run_cnt > 0).then(|| k.run_time_ns as f64 / k.run_cnt as f64)
        }),
        kernel_cost_vs_null: kernel_of(Variant::Sonde, &kernel_ns)
            .zip(kernel_of(Variant::Null, &kernel_ns))
            .map(|(k, n)| k.median / n.median),
        events_per_span: Stat::of(sonde_runs.iter().filter_map(|r| {
            let spans = sum(r, "sonde.spans.created");
            (spans > 0).then(|| counter(r, "sonde.events.received") as f64 / spans as f64)
        })),
        busy_pct: per_variant(&|r: &Run| Some(r.noise.cpu_busy_pct)),
        collector_cpu_pct: Stat::of(sonde_runs.iter().map(|r| r.noise.collector_cpu_pct)),
        runs_with_foreign_bpf: all.iter().filter(|r| r.noise.foreign_bpf_programs > 0).count(),
        steal_pct: Stat::of(all.iter().map(|r| r.noise.cpu_steal_pct)),
        errors: all
            .iter()
            .filter(|r| r.scenario == scenario.name)
            .filter_map(|r| {
                Some(format!("round {} {}: {}", r.round + 1, r.variant.label(), r.error.as_ref()?))
            })
            .collect(),
    }
}

/// The whole report, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: super::machine::Machine,
    pub profile: Profile,
    pub pinning: String,
    /// `--sonde-arg`s the traced runs had.
    pub sonde_args: Vec<String>,
    pub summaries: Vec<Summary>,
    /// The A/B rounds.
    pub runs: Vec<Run>,
    /// The pass with BPF run-time statistics on (null probe and sonde, once per scenario).
    pub kernel_runs: Vec<Run>,
    /// Bulk non-HTTP TCP with sonde tracing the whole node.
    pub bulk: Option<super::bulk::BulkSummary>,
    /// Large downloads with sonde tracing the whole node.
    pub download: Option<super::download::DownloadSummary>,
    /// wrk saturating nginx with sonde tracing the whole node.
    pub saturation: Option<super::saturation::SaturationSummary>,
}

/// The table printed at the end (Markdown, so it pastes into docs/performance.md).
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | req/s off | ×sonde | ×null | p50 µs off / null / sonde | p99 µs off / null / sonde \
         | CPU µs/span | RSS MiB peak (end) | complete ÷gen / ÷nginx | k-drops | kernel ns/req null / sonde |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for s in summaries {
        let fixed = s.scenario.load.rate.is_some();
        let lat = |p: &PerVariant, added: Option<Stat>| {
            if !fixed {
                return "–".to_owned();
            }
            let added = added.map(|a| format!(" ({:+.1} %)", a.median)).unwrap_or_default();
            format!("{} / {} / {}{added}", med(p.off, 0), med(p.null, 0), med(p.sonde, 0))
        };
        let kernel =
            match (s.kernel_ns_per_request.null, s.kernel_ns_per_request.sonde, s.kernel_cost_vs_null) {
                (Some(n), Some(k), Some(r)) => {
                    format!("{:.0} / {:.0} ({r:.1}×)", n.median, k.median)
                }
                _ => "–".to_owned(),
            };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.scenario.name,
            med(s.rps.off, 0),
            spread(s.throughput_ratio),
            spread(s.null_throughput_ratio),
            lat(&s.p50_us, s.p50_added_pct),
            lat(&s.p99_us, s.p99_added_pct),
            med(s.cpu_us_per_span, 2),
            match (s.peak_rss_mib, s.rss_end_mib) {
                (Some(p), Some(e)) => format!("{p:.1} ({e:.1})"),
                _ => "–".into(),
            },
            match (s.completeness_pct, s.completeness_vs_nginx_pct) {
                (Some(g), Some(n)) => format!("{g:.1} / {n:.1} %"),
                _ => "–".into(),
            },
            s.kernel_dropped,
            kernel,
        ));
    }
    out
}

/// One line on how noisy the machine was.
pub fn noise_note(runs: &[Run]) -> String {
    let foreign = runs.iter().filter(|r| r.noise.foreign_bpf_programs > 0).count();
    let steal = Stat::of(runs.iter().map(|r| r.noise.cpu_steal_pct)).map_or(0.0, |s| s.max);
    format!(
        "noise: {foreign} of {} runs had someone else's BPF programs attached; highest CPU steal {steal:.1} %",
        runs.len()
    )
}

fn med(s: Option<Stat>, decimals: usize) -> String {
    s.map_or("–".into(), |s| format!("{:.*}", decimals, s.median))
}

fn spread(s: Option<Stat>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
        Some(s) => format!("{:.2}", s.median),
        None => "–".into(),
    }
}
