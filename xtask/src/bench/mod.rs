//! `cargo xtask bench`: nginx on loopback under wrk and oha, untraced, under the null probe and
//! under sonde exporting to rotel, interleaved in rounds because the machines are shared and noisy.
//! Prints a Markdown table and writes the full report as JSON. It measures; it asserts nothing
//! about the numbers (docs/performance.md says what they are and how to read them).

// The soak (`cargo xtask soak`) reuses the workload, collector, load generator and tracer.
mod bulk;
pub(crate) mod collector;
mod download;
mod goserver;
pub(crate) mod kstats;
pub(crate) mod load;
pub(crate) mod machine;
pub(crate) mod nginx;
pub(crate) mod procs;
mod receiver;
mod report;
mod rounds;
mod saturation;
mod scenario;
pub(crate) mod tracer;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use self::{
    collector::Collector,
    nginx::Nginx,
    report::{Report, Run},
    scenario::{Profile, Scenario, Server},
    tracer::{Tracer, TracerOptions, Variant},
};
use crate::{build, setup, sh};

/// Spans sonde may queue for export: a full second of saturation, so a slow batch is not a drop.
const MAX_QUEUE_SPANS: u32 = 65_536;
/// On 2 cores: nginx's worker on CPU 0, the load generator on CPU 1; sonde, rotel and the
/// receiver float (they are what is measured, and would be on a real host too).
const NGINX_CPUS: &str = "0";
const LOAD_CPUS: &str = "1";
/// `LOAD_CPUS` as a number.
const LOAD_CPU: usize = 1;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Two rounds of 3 s per scenario: a first look in under 3 minutes.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// One round of 1 s on two scenarios: checks that the harness works, numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Which kernel hooks sonde and the null probe attach (`auto`, `sock`, `tracepoints`).
    #[arg(long, default_value = "auto")]
    hooks: String,
    /// Let processes float over all CPUs instead of pinning nginx and the load generator.
    #[arg(long)]
    no_pin: bool,
    /// Where to write the JSON report (default: target/bench/bench-<profile>-<date>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only the scenarios whose name contains this text (repeatable), e.g. `--only https`.
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// An extra argument for `sonde run` (repeatable), for A/B comparisons of sonde's own options,
    /// e.g. `--sonde-arg=--otlp-metrics --sonde-arg=off`.
    #[arg(long = "sonde-arg", value_name = "ARG", allow_hyphen_values = true)]
    sonde_args: Vec<String>,
}

/// Sets up, builds, runs, prints the table and writes the JSON.
pub fn main(opts: &Options) -> anyhow::Result<()> {
    setup::toolchain()?;
    setup::bench_tools()?;
    let sonde = build::release()?;
    let mut profile = if opts.smoke {
        Profile::smoke()
    } else if opts.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    if !opts.only.is_empty() {
        profile.scenarios.retain(|s| opts.only.iter().any(|text| s.name.contains(text.as_str())));
        let named = |name: &str| opts.only.iter().any(|text| name.contains(text.as_str()));
        if !named(bulk::NAME) {
            profile.bulk_rounds = 0;
        }
        if !named(download::NAME) {
            profile.download_rounds = 0;
        }
        if !named(saturation::NAME) {
            profile.saturation_rounds = 0;
        }
        anyhow::ensure!(
            !profile.scenarios.is_empty()
                || profile.bulk_rounds > 0
                || profile.download_rounds > 0
                || profile.saturation_rounds > 0,
            "no scenario matches --only {:?}",
            opts.only
        );
    }
    let report = run(&sonde, profile, opts)?;
    println!("\n{}", report::table(&report.summaries));
    if let Some(bulk) = &report.bulk {
        println!("{}\n", bulk::line(bulk));
    }
    if let Some(download) = &report.download {
        println!("{}\n", download::line(download));
    }
    if let Some(saturation) = &report.saturation {
        println!("{}\n", saturation::line(saturation));
    }
    let all: Vec<Run> = report.runs.iter().chain(&report.kernel_runs).cloned().collect();
    println!("{}", report::noise_note(&all));
    let path = match &opts.json {
        Some(p) => p.clone(),
        None => {
            let stamp = report.machine.date.replace([':', '-'], "");
            sh::root().join("target/bench").join(format!("bench-{}-{stamp}.json", report.profile.name))
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("JSON report: {}", path.display());
    for s in &report.summaries {
        for e in &s.errors {
            eprintln!("bench: {}: {e}", s.scenario.name);
        }
    }
    Ok(())
}

/// The smoke run `cargo xtask test` makes: the harness must produce numbers, whatever they are.
pub fn smoke(sonde: &Path) -> anyhow::Result<()> {
    let opts = Options {
        quick: false,
        smoke: true,
        hooks: "auto".into(),
        no_pin: false,
        json: None,
        only: Vec::new(),
        sonde_args: Vec::new(),
    };
    let report = run(sonde, Profile::smoke(), &opts)?;
    println!("{}", report::table(&report.summaries));
    for s in &report.summaries {
        let name = s.scenario.name;
        anyhow::ensure!(s.errors.is_empty(), "bench smoke {name}: {:?}", s.errors);
        let numbers = [
            s.rps.off.map(|x| x.median),
            s.rps.null.map(|x| x.median),
            s.rps.sonde.map(|x| x.median),
            s.throughput_ratio.map(|x| x.median),
            s.cpu_us_per_span.map(|x| x.median),
            s.peak_rss_mib,
            s.completeness_pct,
        ];
        anyhow::ensure!(numbers.iter().all(|n| n.is_some_and(f64::is_finite)), "bench smoke {name}: {s:#?}");
    }
    let bulk = report.bulk.as_ref().context("bench smoke: no bulk scenario")?;
    println!("{}", bulk::line(bulk));
    anyhow::ensure!(bulk.ratio.is_finite() && bulk.gbit_off > 0.0, "bench smoke bulk: {bulk:#?}");
    let download = report.download.as_ref().context("bench smoke: no download scenario")?;
    println!("{}", download::line(download));
    anyhow::ensure!(
        download.ratio.is_finite() && download.events_per_span.is_finite(),
        "bench smoke download: {download:#?}"
    );
    let saturation = report.saturation.as_ref().context("bench smoke: no saturation scenario")?;
    println!("{}", saturation::line(saturation));
    anyhow::ensure!(
        saturation.ratio.is_finite() && saturation.red_server_pct.is_finite(),
        "bench smoke saturation: {saturation:#?}"
    );
    Ok(())
}

fn run(sonde: &Path, profile: Profile, opts: &Options) -> anyhow::Result<Report> {
    procs::raise_nofile();
    let mut machine = machine::Machine::probe();
    let work = WorkDir::new()?;
    let work = &work.0;
    let pin = !opts.no_pin && machine.cpus >= 2;
    let (nginx_cpus, load_cpus) = if pin { (Some(NGINX_CPUS), Some(LOAD_CPUS)) } else { (None, None) };
    let collector = Collector::start(work)?;
    let mut nginx = Nginx::start(nginx_cpus)?;
    // Started only for a profile that loads it.
    let go_wanted = |tls: bool| profile.scenarios.iter().any(|s| s.server == Server::Go && s.tls == tls);
    let mut go_servers = Vec::new();
    for tls in [false, true] {
        if go_wanted(tls) {
            go_servers.push(goserver::GoServer::start(nginx_cpus, work, tls)?);
        }
    }
    machine.foreign_bpf_programs = kstats::foreign_programs(&[]);
    let ctx = Ctx {
        tracer: TracerOptions {
            sonde,
            hooks: &opts.hooks,
            nginx_port: nginx.port,
            nginx_tls_port: nginx.tls_port,
            nginx_pid: nginx.pid(),
            otlp_endpoint: &collector.endpoint,
            max_queue_spans: MAX_QUEUE_SPANS,
            extra_args: &opts.sonde_args,
            node_wide: false,
        },
        collector: &collector,
        url: nginx.url(),
        tls_url: nginx.tls_url(),
        nginx_status: nginx.status(),
        go: go_servers
            .iter()
            .map(|g| GoTarget {
                url: g.url(),
                pid: g.pid(),
                port: g.port,
                status: g.status(),
                status_port: g.status_port(),
                tls: g.tls(),
            })
            .collect(),
        load_cpus,
        work,
    };
    eprintln!(
        "bench: {} profile, {} scenarios × {} rounds × 3 variants × {:?}",
        profile.name,
        profile.scenarios.len(),
        profile.rounds,
        profile.run
    );
    let mut runs = Vec::new();
    let mut kernel_runs = Vec::new();
    for scenario in &profile.scenarios {
        // Latency is measured at fixed rates: the collector keeps off nginx's CPU then.
        let aside = scenario.load.rate.and(pin.then_some(LOAD_CPU));
        let threads = collector.place(aside);
        match aside {
            Some(cpu) => eprintln!(
                "bench: {}: the collector's {threads} threads on CPU {cpu}, SCHED_IDLE",
                scenario.name
            ),
            None => eprintln!("bench: {}: the collector's {threads} threads float", scenario.name),
        }
        if !profile.warmup.is_zero() {
            let _ = load::run(&scenario.load, ctx.url_of(scenario), profile.warmup, load_cpus, work);
        }
        for round in 0..profile.rounds {
            // A B C, then C B A: a drift over the round weighs on every variant alike.
            let mut order = [Variant::Off, Variant::Null, Variant::Sonde];
            if round % 2 == 1 {
                order.reverse();
            }
            for variant in order {
                let spec = RunSpec { round, variant, duration: profile.run, kernel_stats: false };
                let run = ctx.run_one(scenario, spec);
                eprintln!("bench: {}", describe(&run));
                runs.push(run);
                nginx.check_alive()?;
                go_servers.iter_mut().try_for_each(goserver::GoServer::check_alive)?;
            }
        }
        // Run-time statistics cost a few % of throughput, so they get their own rounds.
        for round in 0..profile.kernel_rounds {
            for variant in [Variant::Null, Variant::Sonde] {
                let spec = RunSpec { round, variant, duration: profile.kernel_run, kernel_stats: true };
                let run = ctx.run_one(scenario, spec);
                eprintln!("bench: {} (BPF stats)", describe(&run));
                kernel_runs.push(run);
                nginx.check_alive()?;
            }
        }
    }
    // The node-wide scenarios export to it at full speed: it competes like any process.
    collector.place(None);
    let bulk = if profile.bulk_rounds > 0 {
        nginx.check_alive()?;
        Some(bulk::run(&ctx.tracer, profile.bulk_rounds, profile.bulk_run, (nginx_cpus, load_cpus))?)
    } else {
        None
    };
    let download = if profile.download_rounds > 0 {
        nginx.check_alive()?;
        Some(download::run(&ctx.tracer, profile.download_rounds, &nginx, load_cpus)?)
    } else {
        None
    };
    let saturation = if profile.saturation_rounds > 0 {
        nginx.check_alive()?;
        let (rounds, run) = (profile.saturation_rounds, profile.saturation_run);
        Some(saturation::run(&ctx.tracer, rounds, run, &ctx.url, ctx.nginx_status, load_cpus, work)?)
    } else {
        None
    };
    machine.loadavg_after = machine::loadavg();
    let summaries =
        profile.scenarios.iter().map(|s| report::summarize(s, profile.rounds, &runs, &kernel_runs)).collect();
    let pinning = match nginx_cpus {
        Some(_) => format!("nginx on CPU {NGINX_CPUS}, load generator on CPU {LOAD_CPUS}, the rest floating"),
        None => "none".to_owned(),
    };
    Ok(Report {
        machine,
        profile,
        pinning,
        sonde_args: opts.sonde_args.clone(),
        summaries,
        runs,
        kernel_runs,
        bulk,
        download,
        saturation,
    })
}

/// Scratch files (wrk's script, rotel's log), removed however the bench ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("sonde-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What every run shares.
struct Ctx<'a> {
    tracer: TracerOptions<'a>,
    collector: &'a Collector,
    url: String,
    tls_url: String,
    nginx_status: nginx::Status,
    /// The Go services the profile loads: plain, over HTTPS, or both.
    go: Vec<GoTarget>,
    load_cpus: Option<&'static str>,
    work: &'a Path,
}

/// The Go service, as the runs of its scenarios load and trace it.
struct GoTarget {
    url: String,
    pid: u32,
    port: u16,
    status: goserver::Status,
    /// The plain HTTP port `/status` is asked on.
    status_port: u16,
    tls: bool,
}

/// How one run is made.
#[derive(Clone, Copy)]
struct RunSpec {
    round: u32,
    variant: Variant,
    duration: Duration,
    /// BPF run-time statistics on (the kernel pass; never during the A/B rounds).
    kernel_stats: bool,
}

impl Ctx<'_> {
    /// The Go service a Go scenario loads.
    fn go_of(&self, scenario: &Scenario) -> Option<&GoTarget> {
        (scenario.server == Server::Go).then(|| self.go.iter().find(|g| g.tls == scenario.tls)).flatten()
    }

    fn url_of(&self, scenario: &Scenario) -> &str {
        match self.go_of(scenario) {
            Some(go) => &go.url,
            _ if scenario.tls => &self.tls_url,
            _ => &self.url,
        }
    }

    /// Requests the scenario's server answered so far.
    fn served(&self, scenario: &Scenario) -> anyhow::Result<u64> {
        match self.go_of(scenario) {
            Some(go) => go.status.requests(),
            _ => self.nginx_status.requests(),
        }
    }

    /// sonde and the null probe trace the scenario's server alone.
    fn tracer_for<'b>(&'b self, scenario: &Scenario, extra_args: &'b [String]) -> TracerOptions<'b> {
        let base = TracerOptions { extra_args, ..self.tracer };
        match self.go_of(scenario) {
            Some(go) => {
                // The status port too: its query is what makes sonde hook the executable.
                TracerOptions {
                    nginx_pid: go.pid,
                    nginx_port: go.port,
                    nginx_tls_port: go.status_port,
                    ..base
                }
            }
            _ => base,
        }
    }

    /// One variant under one load; a failure is recorded in the run, and the bench goes on.
    fn run_one(&self, scenario: &Scenario, spec: RunSpec) -> Run {
        let mut run = Run {
            scenario: scenario.name,
            round: spec.round,
            variant: spec.variant,
            load: None,
            tracer: None,
            kernel: None,
            spans_received: None,
            nginx_requests: None,
            noise: report::Noise::default(),
            error: None,
        };
        if let Err(e) = self.measure(scenario, spec, &mut run) {
            run.error = Some(format!("{e:#}"));
        }
        run
    }

    fn own_pids(&self, tracer: &Option<Tracer>) -> Vec<u32> {
        tracer.iter().map(Tracer::pid).collect()
    }

    fn measure(&self, scenario: &Scenario, spec: RunSpec, run: &mut Run) -> anyhow::Result<()> {
        let stats = spec.kernel_stats.then(kstats::StatsOn::enable).transpose()?;
        let extra: Vec<String> = self
            .tracer
            .extra_args
            .iter()
            .cloned()
            .chain(scenario.sonde_args.iter().map(|a| a.to_string()))
            .collect();
        let mut tracer = Tracer::start(spec.variant, &self.tracer_for(scenario, &extra))?;
        let before = self.collector.received();
        let served_before = self.served(scenario)?;
        if scenario.server == Server::Go
            && let Some(t) = tracer.as_mut().filter(|t| t.variant == Variant::Sonde)
        {
            // sonde hooks a Go executable when it first sees its process move bytes (the status
            // query just now); until then its HTTPS is unseen.
            t.wait_for_log("following the goroutines of a Go program", Duration::from_secs(10))?;
        }
        run.noise.foreign_bpf_programs = kstats::foreign_programs(&self.own_pids(&tracer)).len();
        let cpu_before = machine::CpuTimes::now();
        let collector_before = self.collector.cpu_time();
        let load = load::run(&scenario.load, self.url_of(scenario), spec.duration, self.load_cpus, self.work);
        (run.noise.cpu_busy_pct, run.noise.cpu_steal_pct) =
            machine::CpuTimes::now().busy_and_steal_since(&cpu_before);
        run.noise.collector_cpu_pct =
            (self.collector.cpu_time().saturating_sub(collector_before).as_secs_f64()
                / spec.duration.as_secs_f64()
                * 100.0)
                .round();
        // Less the status query itself.
        // nginx counts the status query itself; the Go service counts `/req/` only.
        let queries = if scenario.server == Server::Nginx { 1 } else { 0 };
        run.nginx_requests = Some(self.served(scenario)?.saturating_sub(served_before + queries));
        if let Some(t) = tracer.as_mut() {
            t.check_alive()?;
        }
        run.load = Some(load?);
        if let Some(mut t) = tracer {
            if stats.is_some() {
                run.kernel = Some(kstats::of_pid(t.pid())?);
            }
            if spec.variant == Variant::Sonde {
                // sonde's CPU per span counts until its spans have arrived, not the tear-down.
                self.collector.settle(Duration::from_secs(10));
                t.mark_delivered()?;
            }
            run.tracer = Some(t.stop()?);
        }
        drop(stats);
        if spec.variant == Variant::Sonde {
            // Anything the final flush sent.
            run.spans_received = Some(self.collector.settle(Duration::from_secs(10)) - before);
        }
        Ok(())
    }
}

fn describe(run: &Run) -> String {
    let mut s = format!("{:<18} round {} {:<5}", run.scenario, run.round + 1, run.variant.label());
    if let Some(l) = &run.load {
        s.push_str(&format!(" {:>9.0} req/s p50 {:>7.0} µs p99 {:>7.0} µs", l.rps, l.p50_us, l.p99_us));
    }
    if let Some(t) = &run.tracer {
        s.push_str(&format!(
            " cpu {:.2} s rss {:.1} MiB",
            t.cpu_traced_us as f64 / 1e6,
            t.peak_rss_kib as f64 / 1024.0
        ));
    }
    s.push_str(&format!(" busy {:.0} %", run.noise.cpu_busy_pct));
    if run.noise.foreign_bpf_programs > 0 {
        s.push_str(&format!(" foreign-bpf {}", run.noise.foreign_bpf_programs));
    }
    if let Some(n) = run.spans_received {
        s.push_str(&format!(" spans {n}"));
    }
    if let Some(e) = &run.error {
        s.push_str(&format!(" ERROR {}", e.lines().next().unwrap_or("")));
    }
    s
}
