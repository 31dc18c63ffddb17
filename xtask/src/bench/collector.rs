//! The collector sonde exports to: rotel (the OTel collector from PyPI) on loopback, forwarding
//! everything it receives over OTLP/gRPC to a counting receiver in this process. rotel cannot
//! report what it received, so completeness is counted at the end of the chain: a span counts
//! once it went sonde → rotel → here.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    procs::{self, ChildGuard},
    receiver::SpanCounter,
};
use anyhow::Context as _;

/// rotel's batch timeout is 200 ms; the count is settled once it has not moved for this long.
const SETTLE_QUIET: Duration = Duration::from_millis(800);

pub struct Collector {
    /// Where sonde exports (rotel's OTLP/gRPC receiver).
    pub endpoint: String,
    count: Arc<AtomicU64>,
    // Fields drop in order: rotel stops before the receiver it forwards to.
    rotel: ChildGuard,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    pub fn start(log_dir: &std::path::Path) -> anyhow::Result<Collector> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("bench-receiver")
            .build()
            .context("starting the receiver's runtime")?;
        let count = Arc::new(AtomicU64::new(0));
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let receiver_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let service = SpanCounter::new(count.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) =
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await
            {
                eprintln!("bench: counting receiver stopped: {e}");
            }
        });

        let grpc = free_addr()?;
        let http = free_addr()?;
        let log = std::fs::File::create(log_dir.join("rotel.log"))?;
        let mut cmd = Command::new(rotel_bin()?);
        cmd.args(["start", "--exporter", "otlp"])
            .args(["--otlp-grpc-endpoint", &grpc.to_string(), "--otlp-http-endpoint", &http.to_string()])
            .args(["--otlp-exporter-endpoint", &format!("http://{receiver_addr}")])
            // 0.0.1a15 gzips whatever these say; the receiver accepts both.
            .args(["--otlp-exporter-protocol", "grpc", "--otlp-exporter-compression", "none"])
            .args(["--pid-file", &log_dir.join("rotel.pid").to_string_lossy()])
            .args(["--log-file", &log_dir.join("rotel-agent.log").to_string_lossy()])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let rotel = ChildGuard::spawn("rotel", &mut cmd)?;
        procs::wait_listening(grpc, Duration::from_secs(20)).context("rotel did not start listening")?;
        Ok(Collector { endpoint: format!("http://{grpc}"), count, rotel, _runtime: runtime })
    }

    /// CPU time rotel and this process (the receiver; the bench's own loop mostly sleeps) used so
    /// far: on a 2-core machine the collector competes with nginx and sonde too.
    pub fn cpu_time(&self) -> Duration {
        let cpu = |pid| procs::cpu_time(pid).unwrap_or_default();
        cpu(self.rotel.pid()) + cpu(std::process::id())
    }

    /// Where the collector's threads (rotel's, and the receiver's in this process) run. The
    /// collector stands in for one on another host, or at least off the traced server's cores; on
    /// this 2-core machine, floating at ordinary priority, its bursts — batches of thousands of
    /// spans decoded, re-encoded, compressed and forwarded — showed up in nginx's latency
    /// percentiles as if sonde had added them (docs/performance.md, "Tail latency"). So
    /// fixed-rate rounds, which measure latency on a machine with CPU to spare, keep it on the
    /// load generator's CPU (`Some(cpu)`) in `SCHED_IDLE`; saturated rounds, where it must compete
    /// to keep up, let it float at ordinary priority (`None`). Returns how many threads were set.
    pub fn place(&self, aside: Option<usize>) -> usize {
        let policy = if aside.is_some() { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET only writes inside it.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        for cpu in (0..online).filter(|&c| aside.is_none_or(|a| a == c)) {
            // SAFETY: `cpu` is below the number of CPUs, far below CPU_SETSIZE.
            unsafe { libc::CPU_SET(cpu, &mut cpus) };
        }
        let own = std::process::id();
        let mut set = 0;
        for pid in [self.rotel.pid(), own] {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for tid in tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok()) {
                let comm =
                    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
                if pid == own && !comm.starts_with("bench-receiver") {
                    continue;
                }
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: `param` and `cpus` live for the calls; a thread that is gone only makes
                // them fail.
                let ok = unsafe {
                    libc::sched_setscheduler(tid, policy, &param) == 0
                        && libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &cpus) == 0
                };
                set += usize::from(ok);
            }
        }
        set
    }

    /// Spans that reached the end of the chain so far.
    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the count stops moving (rotel flushed its batch), at most `limit`.
    pub fn settle(&self, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        let mut last = self.received();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.received();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= SETTLE_QUIET {
                break;
            }
        }
        last
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// The `rotel-agent` binary the PyPI wheel ships inside the `rotel` package.
fn rotel_bin() -> anyhow::Result<PathBuf> {
    let dir = crate::sh::output(
        Command::new("python3").args(["-c", "import os, rotel; print(os.path.dirname(rotel.__file__))"]),
    )
    .context("rotel is not installed (`cargo xtask setup` installs it: pip install rotel)")?;
    let bin = PathBuf::from(dir.trim()).join("rotel-agent");
    anyhow::ensure!(bin.exists(), "{} is missing", bin.display());
    Ok(bin)
}
