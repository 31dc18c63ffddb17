//! `sonde run`: resolve the configuration, load the probes, start the exporters and the intake
//! thread, and on SIGINT/SIGTERM drain, flush and report what was dropped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    config::{ContextPropagation, GoMode, KubernetesMode, NullProbeArgs, RunArgs, Settings, TlsMode},
    export::{ExportOptions, Exporter, metrics::MetricsExporter, prometheus},
    intake,
    metadata::{self, Pods},
    metrics::{
        Metrics, MetricsOptions,
        own::{self, KernelCounters, MetricsExportStats, OwnSources},
    },
    pipeline::{Pipeline, PipelineStats},
    probes::{
        ProbeOptions, Probes, Programs, TlsOptions,
        propagation::{Carriers, PropagationOptions},
        sockhash_check,
    },
    sched::{self, Sched},
    span::{AssembleOptions, Assembler},
};

/// How often the intake thread runs timeouts and publishes its counters.
const TICK: Duration = Duration::from_millis(250);
/// How often counters are logged while running.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Probe notices (library loads, undecrypted TLS, Go programs) waiting for the main thread; beyond,
/// dropped.
const PROBE_NOTICES: usize = 4096;
/// How often the kernel's drop counters are copied for the metrics.
const KERNEL_COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// Longest the exporters may take to flush at shutdown.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Ends a run as SIGTERM would (for `sonde demo`).
#[derive(Clone)]
pub struct StopHandle(Arc<tokio::sync::Notify>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    run_with(args, |_| {})
}

/// `run`, calling `started` once tracing is on, with a handle that ends the run.
pub fn run_with(args: RunArgs, started: impl FnOnce(StopHandle)) -> anyhow::Result<()> {
    init_logging(&args.log);
    let sched = Sched::detect();
    sched::yield_to_traced_processes();
    let Settings { otlp, otlp_metrics, metrics_interval, print, selector, sampler } =
        Settings::resolve(&args, |key| std::env::var(key).ok())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("sonde-export")
        .on_thread_start({
            let sched = sched.clone();
            move || sched.join_current()
        })
        .on_thread_stop({
            let sched = sched.clone();
            move || sched.leave_current()
        })
        .build()
        .context("starting the async runtime")?;
    // Listening from here on: a signal during start-up ends the run as soon as it has started.
    let mut signals = runtime.block_on(async { StopSignals::install() })?;
    let mut probes = Probes::load(&ProbeOptions {
        hooks: args.hooks,
        capture_bytes: args.capture_bytes,
        ring_bytes: args.ring_buffer_bytes,
        pids: args.pids.clone(),
        programs: Programs::Sonde,
        tls: (args.tls == TlsMode::On).then(|| TlsOptions {
            exclude: args.tls_exclude.clone(),
            exported_only: args.tls_exported_hooks,
        }),
        propagation: propagation_options(args.context_propagation, args.cgroup.as_ref())?,
        go: args.go == GoMode::On,
    })?;
    let ring = probes.take_events()?;
    let ring_bytes = u64::from(crate::probes::ring_size(args.ring_buffer_bytes));
    let kernel_tables = probes.take_tables()?;

    let export_options = ExportOptions {
        otlp: otlp.clone(),
        print,
        max_queue_spans: args.max_queue_spans,
        ..ExportOptions::default()
    };
    let (exporter, sink) = runtime.block_on(async { Exporter::start(export_options) })?;
    let export_stats = exporter.stats();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(PipelineStats::default());
    let kernel_counters = Arc::new(KernelCounters::default());
    let own = OwnSources {
        pipeline: Arc::clone(&stats),
        export: Arc::clone(&export_stats),
        kernel: Arc::clone(&kernel_counters),
        metrics_export: Arc::new(MetricsExportStats::default()),
    };
    // Metrics are derived only when something reads them.
    let metrics = (otlp_metrics.is_some() || args.prometheus_listen.is_some()).then(|| {
        let options = MetricsOptions {
            routes: args.routes.clone(),
            max_routes_per_service: args.max_routes_per_service,
            ..MetricsOptions::default()
        };
        Metrics::new(options, own.clone())
    });
    let (metrics_exporter, prometheus_server) = match &metrics {
        None => (None, None),
        Some(metrics) => runtime.block_on(async {
            let exporter = otlp_metrics
                .as_ref()
                .map(|config| MetricsExporter::start(config, metrics_interval, metrics.clone()))
                .transpose()?;
            let server = match args.prometheus_listen {
                Some(addr) => Some(prometheus::serve(addr, metrics.clone()).await?.1),
                None => None,
            };
            anyhow::Ok((exporter, server))
        })?,
    };
    let (pods, pod_watch) = runtime.block_on(kubernetes(&args))?.unzip();
    let assembler = Assembler::new(AssembleOptions {
        capture_query: args.capture_query,
        opt_in_attributes: args.opt_in_attributes,
    });
    let (probe_notices, mut probe_notices_rx) = tokio::sync::mpsc::channel(PROBE_NOTICES);
    // The ring's fill, read by the scheduling watchdog (the intake thread reads its own).
    let ring_fill = intake::RingFill::new(std::os::fd::AsRawFd::as_raw_fd(&ring), ring_bytes)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot read the ring buffer's fill: sonde will not hurry when it fills"))
        .ok();
    let export_backlog = sink.clone();
    let intake_thread = {
        let stop = stop.clone();
        let sched = sched.clone();
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("sonde-intake".into())
            .spawn(move || {
                let mut pipeline =
                    Pipeline::new(assembler, selector, sink, stats, Some(kernel_tables), args.sdk_processes)
                        .with_probe_notices(probe_notices)
                        .with_sampler(sampler);
                if let Some(metrics) = metrics {
                    pipeline = pipeline.with_metrics(metrics);
                }
                if let Some(pods) = pods {
                    pipeline = pipeline.with_pods(pods);
                }
                sched.join_current_as_reader();
                intake::run(ring, ring_bytes, &mut pipeline, &stop, TICK);
                sched.leave_current();
            })
            .context("starting the intake thread")?
    };
    tracing::info!(
        hooks = %probes.hooks,
        otlp = otlp.as_ref().map(|o| format!("{} {}", o.protocol, o.endpoint)).unwrap_or_else(|| "none".into()),
        "tracing started"
    );
    let watchdog = sched::watch(
        sched.clone(),
        move || ring_fill.as_ref().map_or(0.0, intake::RingFill::fraction).max(export_backlog.backlog()),
        stop.clone(),
    )
    .context("starting the scheduling watchdog")?;

    runtime.block_on(async {
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.tick().await;
        let mut kernel_tick = tokio::time::interval(KERNEL_COUNTERS_EVERY);
        let stop_requested = Arc::new(tokio::sync::Notify::new());
        started(StopHandle(stop_requested.clone()));
        loop {
            tokio::select! {
                _ = stop_requested.notified() => break,
                _ = signals.recv() => break,
                _ = report.tick() => {
                    report_counters(&probes, &own, "running");
                    probes.sweep();
                }
                Some(notice) = probe_notices_rx.recv() => probes.notice(notice),
                _ = kernel_tick.tick() => {
                    kernel_counters.publish(probes.kernel_reading());
                    probes.drain_kernel_log();
                }
            }
        }
        anyhow::Ok(())
    })?;

    tracing::info!("stopping: draining events and flushing spans");
    stop.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    // What is left must be flushed before the deadline, however busy the host.
    sched.hurry_for_good();
    // The intake thread sees `stop` within one poll (`intake::POLL_INTERVAL`), drains the ring, then ends.
    if intake_thread.join().is_err() {
        tracing::error!("the intake thread panicked");
    }
    runtime.block_on(exporter.shutdown(FLUSH_DEADLINE));
    kernel_counters.publish(probes.kernel_reading());
    probes.drain_kernel_log();
    if let Some(watch) = pod_watch {
        watch.abort();
    }
    if let Some(server) = prometheus_server {
        server.abort();
    }
    if let Some(metrics_exporter) = metrics_exporter {
        runtime.block_on(metrics_exporter.shutdown(FLUSH_DEADLINE));
    }
    report_counters(&probes, &own, "stopped");
    Ok(())
}

/// `sonde check-kernel`: the kernel's features, the hook set `run` would choose, and every
/// program through the verifier.
pub fn check_kernel() -> anyhow::Result<()> {
    init_logging("warn");
    let (features, go_registers, programs) = crate::probes::check_programs()?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}: {features}", release.trim());
    match crate::probes::choose_hooks(crate::probes::HookChoice::Auto, &features) {
        Ok(set) => println!("hooks: {set}"),
        Err(e) => println!("hooks: none ({e})"),
    }
    println!("goroutines: {}", crate::probes::describe_goroutine_registers(go_registers));
    match crate::probes::sockhash_check::sockhash_is_harmless() {
        Ok(()) => {
            println!("sockhash: harmless (FIONREAD and epoll readiness stay right for a member socket)")
        }
        Err(e) => println!("sockhash: harmful ({e})"),
    }
    let mut unexpected = Vec::new();
    for p in &programs {
        match &p.refused {
            None => println!("program {}: loaded", p.name),
            Some(why) if p.needs_missing_feature => {
                println!("program {}: refused, as expected without its feature ({why})", p.name)
            }
            Some(why) => {
                println!("program {}: REFUSED ({why})", p.name);
                unexpected.push(p.name.as_str());
            }
        }
    }
    anyhow::ensure!(unexpected.is_empty(), "this kernel's verifier refused {}", unexpected.join(", "));
    Ok(())
}

/// `sonde check-binary PATH`: the Go release of a Go program and the functions sonde hooks in it.
pub fn check_binary(path: &std::path::Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;

    use crate::probes::go;
    let binary = go::inspect(path)?;
    let symbols = if binary.has_symbols { "with a symbol table" } else { "stripped of its symbol table" };
    let support = if binary.supported() {
        "read by sonde".to_owned()
    } else {
        format!("not read by sonde, which needs Go {} or later", go::OLDEST)
    };
    let mut out = String::new();
    writeln!(out, "{}: Go program built by {} ({symbols}), {support}", path.display(), binary.version_text)?;
    for &(name, what) in go::FUNCTIONS {
        match binary.functions.get(name) {
            Some(f) => {
                let returns = match &f.returns {
                    Some(returns) => {
                        let list: Vec<String> = returns.iter().map(|r| format!("{r:#x}")).collect();
                        format!("returns at {}", list.join(" "))
                    }
                    None => "its code cannot be decoded".to_owned(),
                };
                writeln!(
                    out,
                    "function {name}: entry {:#x}, file offset {:#x}, {} bytes, {returns} ({what})",
                    f.range.entry,
                    f.file_offset,
                    f.range.end - f.range.entry
                )?
            }
            None => writeln!(out, "function {name}: not in this binary ({what})")?,
        }
    }
    // Written at once, and a reader that stops early (`| head`) is no error.
    match std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `sonde null-probe`: the same hooks with counting-only programs, until a signal.
pub fn null_probe(args: NullProbeArgs) -> anyhow::Result<()> {
    init_logging("info");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut signals = runtime.block_on(async { StopSignals::install() })?;
    let probes = Probes::load(&ProbeOptions {
        hooks: args.hooks,
        capture_bytes: 0,
        ring_bytes: 4096,
        pids: Vec::new(),
        programs: Programs::NullProbe,
        tls: (args.tls == TlsMode::On).then(|| TlsOptions { exclude: Vec::new(), exported_only: false }),
        propagation: None,
        go: false,
    })?;
    tracing::info!(hooks = %probes.hooks, "tracing started (null probe)");
    runtime.block_on(signals.recv());
    println!("null probe hits={}", probes.null_hits());
    Ok(())
}

/// SIGINT and SIGTERM, listened for from start-up on. A signal is kept until it is read: one that
/// arrives while sonde is still loading, or while its main loop is busy with a tick, still ends
/// the run. (A `ctrl_c()` future made anew on each turn of the loop lost a SIGINT that fell
/// between two turns, and before the first one a SIGINT was ignored or fatal, depending on how
/// sonde was started.)
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Must run inside the runtime.
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The log line of sonde's own metrics (`metrics::own`, the same list OTLP and Prometheus read):
/// every minute while running, and once more at exit.
fn report_counters(probes: &Probes, own: &OwnSources, state: &'static str) {
    own.kernel.publish(probes.kernel_reading());
    let mut metrics = Vec::new();
    own.collect(0, None, &mut metrics);
    tracing::info!(state, "counters {}", own::log_line(&metrics));
}

/// `filter` is `--log`, already checked by clap. `RUST_LOG` wins when set and not empty; a bad one
/// is reported once logging is up, and `--log` used instead.
fn init_logging(filter: &str) {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let from_env = rust_log.as_deref().map(tracing_subscriber::EnvFilter::try_new);
    let bad_rust_log = matches!(from_env, Some(Err(_)));
    let asked = match (&rust_log, &from_env) {
        (Some(v), Some(Ok(_))) => v.clone(),
        _ => filter.to_owned(),
    };
    let mut filter = match from_env {
        Some(Ok(from_env)) => from_env,
        _ => tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    // kube-rs logs every failed API request at ERROR, retries included; sonde says itself when
    // the pod watch fails. Unless the filter asks for kube's own lines.
    if !asked.contains("kube") {
        filter = filter.add_directive("kube_client::client::builder=off".parse().expect("a valid directive"));
    }
    // Colours only for a person at a terminal; logs collected from a pipe stay plain text.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if bad_rust_log {
        tracing::warn!(rust_log = rust_log.as_deref().unwrap_or(""), log = %asked, "RUST_LOG is not a log filter; using --log");
    }
}

/// Starts watching this node's pods when `--kubernetes` says so (see its help). With `auto`, a
/// cluster that cannot be reached is a warning and sonde goes on without `k8s.*`; with `on`, an
/// error.
async fn kubernetes(args: &RunArgs) -> anyhow::Result<Option<(Pods, tokio::task::JoinHandle<()>)>> {
    let in_cluster = std::env::var("KUBERNETES_SERVICE_HOST").is_ok_and(|v| !v.is_empty());
    let wanted = match args.kubernetes {
        KubernetesMode::Off => false,
        KubernetesMode::On => true,
        KubernetesMode::Auto => in_cluster || args.kube_api.is_some(),
    };
    if !wanted {
        return Ok(None);
    }
    let client = match metadata::kube::client(args.kube_api.as_deref()).await {
        Ok(client) => client,
        Err(e) if args.kubernetes == KubernetesMode::Auto => {
            tracing::warn!(error = %anyhow::Error::from(e), "no Kubernetes metadata");
            return Ok(None);
        }
        Err(e) => return Err(anyhow::Error::from(e).context("--kubernetes on")),
    };
    let node = args.node_name.clone().unwrap_or_else(crate::process::host_name);
    let pods = Pods::default();
    let watch = metadata::kube::spawn(client, node, pods.clone());
    Ok(Some((pods, watch)))
}

/// What `--context-propagation` puts on the wire on this kernel. Header propagation enrols sockets
/// in a SOCKHASH, which on some kernels alone breaks the applications that own them: the self-test
/// decides, before any socket is enrolled.
fn propagation_options(
    mode: ContextPropagation,
    cgroup: Option<&std::path::PathBuf>,
) -> anyhow::Result<Option<PropagationOptions>> {
    let headers_wanted = matches!(mode, ContextPropagation::Headers | ContextPropagation::All);
    let header = headers_wanted
        && match sockhash_check::sockhash_is_harmless() {
            Ok(()) => {
                tracing::info!(
                    "SOCKHASH self-test passed (FIONREAD and epoll readiness stay right for a member socket): traceparent headers are written"
                );
                true
            }
            Err(harm) if mode == ContextPropagation::All => {
                tracing::warn!(error = %harm, "SOCKHASH self-test failed: no traceparent headers are written, the TCP option alone carries the context");
                false
            }
            Err(harm) => anyhow::bail!(
                "--context-propagation headers is refused on this kernel, to keep the traced applications working: {harm}. \
                 `--context-propagation tcp` carries the context in a TCP option instead, which needs no SOCKHASH"
            ),
        };
    let carriers = match mode {
        ContextPropagation::Off => return Ok(None),
        ContextPropagation::Tcp => Carriers { tcp_option: true, header: false },
        ContextPropagation::Headers => Carriers { tcp_option: false, header },
        ContextPropagation::All => Carriers { tcp_option: true, header },
    };
    Ok(Some(PropagationOptions { cgroup: cgroup.cloned(), carriers }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::StopSignals;

    /// The loop reads signals only between other work: one that arrives meanwhile must still be
    /// there when it looks.
    #[test]
    fn a_signal_that_arrives_while_nobody_waits_is_kept() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut signals = runtime.block_on(async { StopSignals::install() }).unwrap();
        // SAFETY: raising a signal this process now handles.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        // The runtime's driver takes the signal in while no one is waiting for it.
        std::thread::sleep(Duration::from_millis(200));
        let received =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), signals.recv()).await });
        assert!(received.is_ok(), "the SIGINT raised before anyone waited was lost");
    }
}
