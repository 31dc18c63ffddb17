//! Export counters, and the rate-limited warning that reports drops.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters of the export stage; cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans accepted into the OTLP queue.
    pub spans_queued: AtomicU64,
    /// Spans the collector acknowledged (partially rejected ones excluded).
    pub spans_exported: AtomicU64,
    /// Spans refused because the OTLP queue was full (collector slow or down).
    pub spans_dropped_queue_full: AtomicU64,
    /// Spans whose batch failed for good: a non-retryable error or the retry budget ran out.
    pub spans_dropped_export_failed: AtomicU64,
    /// Spans the collector reported as rejected in a partial success.
    pub spans_rejected_by_collector: AtomicU64,
    /// Spans sent after shutdown began.
    pub spans_dropped_after_shutdown: AtomicU64,
    /// Export attempts that failed, retried ones included.
    pub export_requests_failed: AtomicU64,
    /// Export requests the collector accepted.
    pub export_requests_ok: AtomicU64,
    /// Spans handed to the printer (tree or JSON).
    pub spans_printed: AtomicU64,
    /// Spans refused because the printer's queue was full (stdout not keeping up).
    pub spans_dropped_print_queue_full: AtomicU64,
}

impl ExportStats {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    /// Spans accepted into the OTLP queue whose export has not ended yet (waiting, or in a batch
    /// being sent or retried).
    pub fn queue_depth(&self) -> u64 {
        self.spans_queued.load(Relaxed).saturating_sub(
            self.spans_exported.load(Relaxed)
                + self.spans_rejected_by_collector.load(Relaxed)
                + self.spans_dropped_export_failed.load(Relaxed),
        )
    }

    /// All spans lost on the way out so far, whatever the reason.
    pub fn spans_dropped(&self) -> u64 {
        self.spans_dropped_queue_full.load(Relaxed)
            + self.spans_dropped_export_failed.load(Relaxed)
            + self.spans_dropped_after_shutdown.load(Relaxed)
            + self.spans_dropped_print_queue_full.load(Relaxed)
    }
}

/// Warns about new drops at most once per `every`, with the counts since the last warning, so an
/// overload that drops per span logs a line per interval instead of a line per span.
pub(crate) struct DropReporter {
    every: Duration,
    last_report: Option<Instant>,
    /// Counts already reported: queue full, export failed, print queue full.
    reported: [u64; 3],
}

impl DropReporter {
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, last_report: None, reported: [0; 3] }
    }

    pub(crate) fn poll(&mut self, stats: &ExportStats, now: Instant) {
        if self.last_report.is_some_and(|t| now.duration_since(t) < self.every) {
            return;
        }
        let current = [
            stats.spans_dropped_queue_full.load(Relaxed),
            stats.spans_dropped_export_failed.load(Relaxed),
            stats.spans_dropped_print_queue_full.load(Relaxed),
        ];
        if current == self.reported {
            return;
        }
        let [queue_full, export_failed, print_full] = [0, 1, 2].map(|i| current[i] - self.reported[i]);
        tracing::warn!(
            queue_full,
            export_failed,
            print_queue_full = print_full,
            total_dropped = stats.spans_dropped(),
            "dropped spans since the last report"
        );
        self.reported = current;
        self.last_report = Some(now);
    }
}

/// A rate limit for log lines: `ready` is true at most once per interval.
pub(crate) struct Every {
    every: Duration,
    last: Option<Instant>,
}

impl Every {
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    pub(crate) fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_at_most_once_per_interval() {
        let stats = ExportStats::default();
        let mut r = DropReporter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        r.poll(&stats, t0);
        assert_eq!(r.last_report, None, "nothing dropped, nothing to say");
        ExportStats::add(&stats.spans_dropped_queue_full, 3);
        r.poll(&stats, t0);
        assert_eq!(r.last_report, Some(t0));
        ExportStats::add(&stats.spans_dropped_queue_full, 1);
        r.poll(&stats, t0 + Duration::from_secs(5));
        assert_eq!(r.last_report, Some(t0), "rate-limited");
        r.poll(&stats, t0 + Duration::from_secs(10));
        assert_eq!(r.last_report, Some(t0 + Duration::from_secs(10)));
        assert_eq!(r.reported, [4, 0, 0]);
    }
}
