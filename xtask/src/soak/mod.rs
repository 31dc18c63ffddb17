//! `cargo xtask soak`: sonde traces nginx under steady mixed traffic for a long time (30 minutes
//! by default) while its RSS, its kernel maps' entry counts and its own metrics are sampled; at
//! the end, a verdict on whether they stayed flat (verdict.rs says how, and why the thresholds are
//! what they are). The workload, the collector chain and the load generator are the bench's:
//! Debian nginx, `sonde run --pid` exporting OTLP/gRPC to rotel, which forwards to a counting
//! receiver, and oha at fixed rates. `cargo xtask test` runs a 30-second version that only
//! checks that everything works.

mod bpf_maps;
mod prometheus;
mod sample;
mod traffic;
mod verdict;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use self::{
    sample::{Sample, Sampler},
    traffic::{StreamTotals, Traffic},
};
use crate::{
    bench::{
        collector::Collector,
        kstats,
        machine::{self, Machine},
        nginx::Nginx,
        procs,
        tracer::{Tracer, TracerOptions, Variant},
    },
    build, setup, sh,
};

/// As in the bench: several seconds of spans may queue, so a slow batch is not a drop.
const MAX_QUEUE_SPANS: u32 = 65_536;
/// The kernel's drops in sonde's final `counters` line (all `reason`s, docs/metrics.md).
const KERNEL_DROPS: &str = "sonde.kernel.events.dropped";

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long the traffic runs. Growth fails the command from 3 minutes on; shorter runs only
    /// report it (and fail on gross failures: sonde died, no samples, no spans).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Total requests per second, split over five streams that run side by side: keep-alive 40 %,
    /// a new connection per request 20 %, 404s 10 %, HTTPS keep-alive 25 %, HTTPS with a
    /// handshake per request 5 %.
    #[arg(long, default_value_t = 1500)]
    rate: u32,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 30.0)]
    sample_every: f64,
    /// Where to write the JSON report (default: target/soak/soak-<minutes>min-<date>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Trace with this sonde binary instead of building one.
    #[arg(long, value_name = "PATH")]
    sonde: Option<PathBuf>,
    /// An extra argument for `sonde run` (repeatable), e.g. `--sonde-arg=--hooks --sonde-arg=tracepoints`.
    #[arg(long = "sonde-arg", value_name = "ARG", allow_hyphen_values = true)]
    sonde_args: Vec<String>,
}

/// What one soak does.
struct Plan {
    minutes: f64,
    rate: u32,
    sample_every: Duration,
    sonde_args: Vec<String>,
}

/// Everything the soak measured, as written to the JSON report.
#[derive(Serialize)]
struct Report {
    machine: Machine,
    minutes: f64,
    rate: u32,
    sample_every_s: f64,
    sonde_args: Vec<String>,
    streams: &'static [traffic::Stream],
    maps: Vec<bpf_maps::MapInfo>,
    samples: Vec<Sample>,
    load: Vec<StreamTotals>,
    /// Spans at the receiver once sonde stopped and rotel flushed.
    spans_received_total: u64,
    /// sonde's final `counters` line.
    sonde_counters: BTreeMap<String, u64>,
    sonde_peak_rss_kib: Option<u64>,
    verdict: verdict::Verdict,
}

/// Sets up, builds (unless `--sonde`), soaks, prints the verdict and writes the JSON.
pub fn main(opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(opts.minutes > 0.0, "--minutes must be positive");
    anyhow::ensure!(opts.sample_every >= 1.0, "--sample-every must be at least 1 (second)");
    anyhow::ensure!(opts.rate >= 20, "--rate must be at least 20 (each stream needs a share)");
    setup::toolchain()?;
    setup::bench_tools()?;
    let sonde = match &opts.sonde {
        Some(path) => path.clone(),
        None => build::release()?,
    };
    let plan = Plan {
        minutes: opts.minutes,
        rate: opts.rate,
        sample_every: Duration::from_secs_f64(opts.sample_every),
        sonde_args: opts.sonde_args.clone(),
    };
    finish(&run(&sonde, &plan)?, opts.json.clone())
}

/// The short soak `cargo xtask test` runs: 30 s says nothing about flatness, so it fails only
/// when the soak itself does not work (sonde dies, no samples, no spans).
pub fn smoke(sonde: &Path) -> anyhow::Result<()> {
    let plan =
        Plan { minutes: 0.5, rate: 1500, sample_every: Duration::from_secs(5), sonde_args: Vec::new() };
    finish(&run(sonde, &plan)?, None)
}

fn finish(report: &Report, json: Option<PathBuf>) -> anyhow::Result<()> {
    println!("\n{}", verdict::text(&report.verdict));
    let path = match json {
        Some(p) => p,
        None => {
            let stamp = report.machine.date.replace([':', '-'], "");
            sh::root().join("target/soak").join(format!("soak-{}min-{stamp}.json", report.minutes))
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("JSON report: {}", path.display());
    let v = &report.verdict;
    let growth = if v.growth_judged { v.growth.as_slice() } else { &[] };
    anyhow::ensure!(v.pass, "soak failed: {}", [v.failures.as_slice(), growth].concat().join("; "));
    Ok(())
}

fn run(sonde: &Path, plan: &Plan) -> anyhow::Result<Report> {
    procs::raise_nofile();
    let mut machine = Machine::probe();
    let work = WorkDir::new()?;
    let collector = Collector::start(&work.0)?;
    let mut nginx = Nginx::start(None)?;
    let prometheus = free_addr()?;
    let mut extra_args = vec!["--prometheus-listen".to_owned(), prometheus.to_string()];
    extra_args.extend(plan.sonde_args.iter().cloned());
    let tracer_opts = TracerOptions {
        sonde,
        hooks: "auto",
        nginx_port: nginx.port,
        nginx_tls_port: nginx.tls_port,
        nginx_pid: nginx.pid(),
        otlp_endpoint: &collector.endpoint,
        max_queue_spans: MAX_QUEUE_SPANS,
        extra_args: &extra_args,
        node_wide: false,
    };
    let mut tracer = Tracer::start(Variant::Sonde, &tracer_opts)?.context("sonde did not start")?;
    machine.foreign_bpf_programs = kstats::foreign_programs(&[tracer.pid()]);
    if !machine.foreign_bpf_programs.is_empty() {
        eprintln!("soak: someone else's BPF programs are attached: {:?}", machine.foreign_bpf_programs);
    }
    procs::wait_listening(prometheus, Duration::from_secs(10)).context("sonde's Prometheus endpoint")?;
    let mut sampler = Sampler::new(tracer.pid(), prometheus, &collector, nginx.status())?;

    let duration = Duration::from_secs_f64(plan.minutes * 60.0);
    eprintln!(
        "soak: {:.1} min at {} req/s over {} streams, a sample every {:?}; sonde pid {}, nginx pid {}",
        plan.minutes,
        plan.rate,
        traffic::STREAMS.len(),
        plan.sample_every,
        tracer.pid(),
        nginx.pid()
    );
    println!("{}", sampler.header());
    sampler.start_clock();
    let start = Instant::now();
    let traffic = Traffic::start(nginx.port, nginx.tls_port, plan.rate, start + duration, &work.0);
    let mut samples: Vec<Sample> = Vec::new();
    let mut failures = Vec::new();
    let mut aborted = false;
    for k in 1.. {
        let due = start + plan.sample_every * k;
        if due > start + duration {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if let Err(e) = tracer.check_alive().and_then(|()| nginx.check_alive()) {
            failures.push(format!("{e:#}"));
            aborted = true;
            break;
        }
        match sampler.take(traffic.completed()) {
            Ok(s) => {
                println!("{}", sampler.row(&s, samples.last()));
                samples.push(s);
            }
            // One failed look (bpftool, a scrape) is reported, not a reason to stop the soak.
            Err(e) => failures.push(format!("sample {k}: {e:#}")),
        }
    }
    let load = traffic.finish(aborted);
    let (sonde_counters, sonde_peak_rss_kib) = match tracer.stop() {
        Ok(r) => (r.counters, Some(r.peak_rss_kib)),
        Err(e) => {
            if !aborted {
                failures.push(format!("sonde did not stop cleanly: {e:#}"));
            }
            (BTreeMap::new(), None)
        }
    };
    let spans_received_total = collector.settle(Duration::from_secs(10));
    for s in &load {
        if s.requests == 0 {
            failures.push(format!("stream {} got no response: {:?}", s.name, s.last_failure));
        } else if s.failed_segments > 0 {
            eprintln!(
                "soak: stream {}: {} oha run(s) failed: {:?}",
                s.name, s.failed_segments, s.last_failure
            );
        }
    }
    // sonde's final count covers the whole run; the last scrape stands in if it did not stop cleanly.
    let final_drops = crate::bench::tracer::counter_sum(&sonde_counters, KERNEL_DROPS);
    let scraped_drops =
        samples.last().and_then(|s| s.metric("sonde_kernel_events_dropped_total")).unwrap_or(0.0);
    let kernel_drops = (final_drops as f64).max(scraped_drops);
    machine.loadavg_after = machine::loadavg();
    let verdict = verdict::judge(verdict::Outcome {
        minutes: plan.minutes,
        samples: &samples,
        maps: &sampler.maps,
        spans_total: spans_received_total,
        requests_total: load.iter().map(|s| s.requests).sum(),
        kernel_drops,
        failures,
    });
    Ok(Report {
        machine,
        minutes: plan.minutes,
        rate: plan.rate,
        sample_every_s: plan.sample_every.as_secs_f64(),
        sonde_args: plan.sonde_args.clone(),
        streams: traffic::STREAMS,
        maps: sampler.maps.clone(),
        samples,
        load,
        spans_received_total,
        sonde_counters,
        sonde_peak_rss_kib,
        verdict,
    })
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// Scratch files (rotel's logs), removed however the soak ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("sonde-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
