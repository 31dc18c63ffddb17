//! The kernel programs' own diagnostics (aya-log): records they write to the `AYA_LOGS` ring,
//! logged by sonde under the target `sonde::kernel`.
//!
//! They are off unless the log filter asks for them (`--log sonde::kernel=debug`): the level the
//! filter gives that target is written into the programs before load (`AYA_LOG_LEVEL`), so a
//! statement above it costs one load and a branch, and with nothing enabled no record is ever
//! made. The kernel logs only on rare paths — sonde's own connections, a TLS object tied to its
//! socket, a small map that filled up — never per read or write.

use std::panic::{AssertUnwindSafe, catch_unwind};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// The log target of every kernel record.
pub const TARGET: &str = "sonde::kernel";

/// The most verbose level the current log filter enables for `TARGET`, as aya-log numbers levels
/// (error 1 … trace 5); 0 when it enables none.
pub fn level_from_filter() -> u8 {
    use tracing::Level;
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        aya_log::Level::Trace as u8
    } else if tracing::enabled!(target: TARGET, Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else if tracing::enabled!(target: TARGET, Level::INFO) {
        aya_log::Level::Info as u8
    } else if tracing::enabled!(target: TARGET, Level::WARN) {
        aya_log::Level::Warn as u8
    } else if tracing::enabled!(target: TARGET, Level::ERROR) {
        aya_log::Level::Error as u8
    } else {
        0
    }
}

/// Reads the kernel's log records. Must live as long as the programs may still be loaded: the
/// ring's file descriptor is the one their instructions were relocated against (the TLS uprobes
/// load when a process maps a library, long after start-up).
pub struct KernelLog {
    logger: Option<EbpfLogger<ToTracing>>,
}

impl KernelLog {
    /// Takes the log ring out of `ebpf`; call once its programs are loaded.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        Ok(Self { logger: Some(EbpfLogger::init_with_logger(ebpf, ToTracing)?) })
    }

    /// Logs every record waiting in the ring.
    pub fn drain(&mut self) {
        let Some(logger) = self.logger.as_mut() else { return };
        // aya-log panics on a record it cannot decode. Records come only from sonde's programs,
        // so that would be a bug: it costs the kernel diagnostics, never the run. The logger is
        // kept (its ring must stay open for later program loads), only no longer read.
        if catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
            tracing::warn!(target: TARGET, "a kernel log record could not be decoded: kernel diagnostics are off from now on");
            std::mem::forget(self.logger.take());
        }
    }
}

/// Hands aya-log's records to tracing, under `TARGET`, with the kernel source they came from.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The kernel only wrote what the filter enables (`level_from_filter`).
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        let source = format_args!("{}:{}", record.file().unwrap_or("?"), record.line().unwrap_or(0));
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, %source, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, %source, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, %source, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, %source, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, %source, "{message}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _};

    use super::*;

    #[test]
    fn the_filter_sets_the_kernel_level() {
        use aya_log::Level::*;
        let cases = [
            ("off", 0),
            ("warn", Warn as u8),
            ("info", Info as u8),
            ("sonde=info", Info as u8),
            ("sonde::kernel=debug", Debug as u8),
            ("sonde=debug", Debug as u8),
            ("info,sonde::kernel=trace", Trace as u8),
            ("debug,sonde::kernel=off", 0),
            ("sonde::pipeline=trace", 0),
        ];
        for (filter, want) in cases {
            let subscriber = tracing_subscriber::registry().with(EnvFilter::new(filter));
            let got = tracing::subscriber::with_default(subscriber, level_from_filter);
            assert_eq!(got, want, "{filter}");
        }
    }
}
