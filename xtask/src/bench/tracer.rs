//! What runs beside the workload in each variant: nothing, `sonde null-probe` (the same hooks with
//! counting-only programs: the floor of attaching at all), or `sonde run` exporting to the collector.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::procs::{self, ChildGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// No probes of ours attached.
    Off,
    /// `sonde null-probe`: the hooks, counting only.
    Null,
    /// `sonde run` exporting over OTLP.
    Sonde,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Off => "off",
            Variant::Null => "null",
            Variant::Sonde => "sonde",
        }
    }
}

#[derive(Clone, Copy)]
pub struct TracerOptions<'a> {
    pub sonde: &'a Path,
    pub hooks: &'a str,
    pub nginx_port: u16,
    pub nginx_tls_port: u16,
    pub nginx_pid: u32,
    pub otlp_endpoint: &'a str,
    pub max_queue_spans: u32,
    /// `--sonde-arg`s, appended to `sonde run`'s.
    pub extra_args: &'a [String],
    /// Trace every process, as a DaemonSet does, instead of nginx's side only.
    pub node_wide: bool,
}

/// A running `sonde run` or `sonde null-probe`.
pub struct Tracer {
    pub variant: Variant,
    guard: ChildGuard,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// CPU already spent when tracing started (BTF parsing, the verifier): not per-span work.
    cpu_at_start: Duration,
    /// CPU spent when the run's spans had all reached the receiver (`mark_delivered`): what
    /// follows is tear-down (detaching every probe, the final metrics export), not per-span work.
    cpu_at_delivery: Option<Duration>,
}

/// What a tracer did, measured from outside and from its own final report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TracerResult {
    /// user+sys from "tracing started" until the run's spans reached the receiver (or to exit,
    /// drain and flush included, when that was not marked).
    pub cpu_traced_us: u64,
    /// user+sys from then to exit: the drain, flush and detaching of every probe.
    pub cpu_stop_us: u64,
    /// user+sys over the whole life (start-up included).
    pub cpu_total_us: u64,
    /// Peak RSS over the whole life (`VmHWM`, i.e. `ru_maxrss`), KiB.
    pub peak_rss_kib: u64,
    /// RSS right before SIGTERM, KiB.
    pub rss_end_kib: u64,
    pub exit_code: Option<i32>,
    /// `key=value` integers of sonde's final `counters` line.
    pub counters: BTreeMap<String, u64>,
    /// `null probe hits=N` (null probe only).
    pub null_hits: Option<u64>,
    /// Which hook set was attached (`socket tracepoints` or `syscall tracepoints`).
    pub hooks: String,
}

impl Tracer {
    pub fn start(variant: Variant, opts: &TracerOptions) -> anyhow::Result<Option<Tracer>> {
        let mut cmd = Command::new(opts.sonde);
        match variant {
            Variant::Off => return Ok(None),
            Variant::Null => cmd.args(["null-probe", "--hooks", opts.hooks]),
            Variant::Sonde => {
                cmd.args(["run", "--print", "none", "--hooks", opts.hooks]);
                if !opts.node_wide {
                    // --pid is enforced in the kernel: only nginx's side is traced (as for a
                    // service whose clients are elsewhere), and other TCP traffic on a shared
                    // machine stays out. --port alone filters in user space.
                    cmd.args(["--pid", &opts.nginx_pid.to_string(), "--port", &opts.nginx_port.to_string()])
                        .args(["--port", &opts.nginx_tls_port.to_string()]);
                }
                cmd.args(["--otlp-endpoint", opts.otlp_endpoint, "--otlp-protocol", "grpc"])
                    .args(["--max-queue-spans", &opts.max_queue_spans.to_string()])
                    .args(opts.extra_args)
            }
        };
        cmd.env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn("sonde", &mut cmd)?;
        let stdout = procs::collect(guard.child_mut().stdout.take().context("piped stdout")?);
        let stderr = procs::collect(guard.child_mut().stderr.take().context("piped stderr")?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !text(&stderr).contains("tracing started") {
            if let Err(e) = guard.check_alive() {
                bail!("{e}:\n{}", text(&stderr));
            }
            if Instant::now() > deadline {
                bail!("sonde did not start tracing within 60 s:\n{}", text(&stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu_at_start = procs::cpu_time(guard.pid())?;
        Ok(Some(Tracer { variant, guard, stdout, stderr, cpu_at_start, cpu_at_delivery: None }))
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Waits until sonde's log says `what` (within `timeout`).
    pub fn wait_for_log(&mut self, what: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !text(&self.stderr).contains(what) {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("sonde did not log {what:?} within {timeout:?}:\n{}", text(&self.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Fails if sonde died under load (its stderr says why).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.guard.check_alive().map_err(|e| anyhow::anyhow!("{e}:\n{}", text(&self.stderr)))
    }

    /// The run's spans have reached the receiver: the CPU spent so far is the tracing's.
    pub fn mark_delivered(&mut self) -> anyhow::Result<()> {
        self.cpu_at_delivery = Some(procs::cpu_time(self.pid())?);
        Ok(())
    }

    /// SIGTERM, wait for the drain and flush, and gather the numbers.
    pub fn stop(mut self) -> anyhow::Result<TracerResult> {
        let pid = self.pid();
        let rss_end_kib = procs::vm_kib(pid, "VmRSS").unwrap_or(0);
        let hwm_kib = procs::vm_kib(pid, "VmHWM").unwrap_or(0);
        let (exit_code, usage) = self
            .guard
            .terminate(Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("{e}:\n{}", text(&self.stderr)))?;
        // Let the readers catch the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let stderr = text(&self.stderr);
        if exit_code != Some(0) {
            bail!("sonde exited with {exit_code:?} after SIGTERM:\n{stderr}");
        }
        let counters = stderr
            .lines()
            .rev()
            .find(|l| l.contains("counters") && l.contains("state=\"stopped\""))
            .map(parse_counters)
            .unwrap_or_default();
        if self.variant == Variant::Sonde && counters.is_empty() {
            bail!("sonde's stderr has no final counters line:\n{stderr}");
        }
        let null_hits =
            text(&self.stdout).lines().find_map(|l| l.strip_prefix("null probe hits=")?.trim().parse().ok());
        let hooks = stderr
            .lines()
            .find_map(|l| l.split_once("tracing started")?.1.split_once("hooks=").map(|(_, h)| h))
            .map(|h| h.split(" otlp=").next().unwrap_or(h).trim().to_owned())
            .unwrap_or_default();
        let traced_until = self.cpu_at_delivery.unwrap_or(usage.cpu);
        Ok(TracerResult {
            cpu_traced_us: traced_until.saturating_sub(self.cpu_at_start).as_micros() as u64,
            cpu_stop_us: usage.cpu.saturating_sub(traced_until).as_micros() as u64,
            cpu_total_us: usage.cpu.as_micros() as u64,
            peak_rss_kib: usage.max_rss_kib.max(hwm_kib),
            rss_end_kib,
            exit_code,
            counters,
            null_hits,
            hooks,
        })
    }
}

fn text(buf: &Arc<Mutex<String>>) -> String {
    buf.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// `… counters sonde.events.received=9 sonde.spans.created{span.kind=server}=4 …` → each field by
/// its name and labels, as sonde writes them (the value after the last `=`).
fn parse_counters(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.rsplit_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<f64>().ok()? as u64)))
        .collect()
}

/// The sum of every series of metric `name` in parsed counters (all its label sets).
pub fn counter_sum(counters: &BTreeMap<String, u64>, name: &str) -> u64 {
    counters
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_line() {
        let line = "2026-11-21T20:46:49Z  INFO sonde::run: counters state=\"stopped\" sonde.events.received=9 \
                    sonde.spans.exported=0 sonde.kernel.events.dropped{reason=ring_buffer_full}=3 \
                    sonde.kernel.events.dropped{reason=copy_failed}=2";
        let c = super::parse_counters(line);
        assert_eq!(c.get("sonde.events.received"), Some(&9));
        assert_eq!(c.get("sonde.kernel.events.dropped{reason=ring_buffer_full}"), Some(&3));
        assert_eq!(super::counter_sum(&c, "sonde.kernel.events.dropped"), 5);
        assert_eq!(super::counter_sum(&c, "sonde.kernel.events"), 0);
        assert!(!c.contains_key("state"));
    }
}
