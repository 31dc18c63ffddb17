//! Export: finished spans leave sonde here, over OTLP (gRPC or HTTP/protobuf) to a collector,
//! and/or printed to stdout (a waterfall per trace, or JSON lines).
//!
//! ```text
//! SpanSink::send_all ──push──▶ OTLP queue ──▶ batch task ──▶ otlp::OtlpSender (retry, back-off)
//!   (any thread,       └─try_send─▶ print queue ─▶ print thread ─▶ terminal (tree) | json
//!    never blocks)
//! ```
//!
//! Both queues are bounded; when one is full the span is dropped for that output and counted in
//! [`ExportStats`], and a warning with the counts is logged at most every 10 s.

mod batch;
pub mod config;
mod json;
pub mod metrics;
pub mod otlp;
mod printer;
pub mod prometheus;
mod queue;
mod stats;
mod terminal;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use self::config::{ConfigError, OtlpConfig, PrintMode, Protocol, Signal};
use self::stats::DropReporter;
pub use self::stats::ExportStats;
use crate::span::model::Span;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Where to send spans over OTLP; `None` for print only.
    pub otlp: Option<OtlpConfig>,
    /// What to print to stdout.
    pub print: PrintMode,
    /// Spans waiting for OTLP export (and, separately, for printing) before new ones are dropped.
    pub max_queue_spans: usize,
    /// Largest OTLP export request, in spans (the SDK's `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`); one
    /// that encodes to more than 3 MiB is sent in parts.
    pub max_batch: usize,
    /// How long a batch waits to fill up after its first span. The SDK default is 5 s; sonde uses
    /// 1 s so that someone curling a service sees the trace in the backend right away.
    pub batch_delay: Duration,
    /// How long one batch is retried while the collector is unreachable or overloaded before it
    /// is dropped (and counted).
    pub retry_budget: Duration,
    /// The tree view prints a trace once no span arrived for it for this long.
    pub print_idle: Duration,
    /// Spans the tree view may hold while waiting; past it the oldest traces are printed early.
    pub max_pending_print_spans: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            // No collector: nothing to send.
            otlp: None,
            // Printing is the caller's choice (see `PrintMode::default_for`).
            print: PrintMode::None,
            // 8192 spans, ~300 bytes each once encoded: a few MiB held while a collector is down.
            max_queue_spans: 8192,
            // 8× the SDK's 512: at tens of thousands of spans a second, a round trip per 512
            // spans let the queue build up to 13k spans within the first second of a saturating
            // load; bigger requests drain it, and cost the collector less. A
            // request larger than `otlp::MAX_REQUEST_BYTES` is split.
            max_batch: 4096,
            // Fast feedback; see the field's doc.
            batch_delay: Duration::from_secs(1),
            // The SDK exporters' usual retry budget.
            retry_budget: Duration::from_secs(30),
            // Long enough for the server span, which ends last, to join its client spans.
            print_idle: Duration::from_secs(1),
            // Bounds memory on a busy host while keeping whole traces for a person to read.
            max_pending_print_spans: 10_000,
        }
    }
}

impl PrintMode {
    /// What to print when the user did not say: the waterfall when no collector is configured
    /// (so that `sonde run` alone shows something), nothing when spans go to a collector.
    pub fn default_for(otlp: Option<&OtlpConfig>) -> PrintMode {
        if otlp.is_some() { PrintMode::None } else { PrintMode::Tree }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the exporter must be started inside a tokio runtime")]
    NoRuntime,
    #[error("OTLP/gRPC client for {endpoint}")]
    GrpcClient { endpoint: String, source: tonic::transport::Error },
    #[error("OTLP/HTTP client for {endpoint}")]
    HttpClient { endpoint: String, source: reqwest::Error },
    #[error("OTLP header {name:?} is not a valid header name/value")]
    BadHeader { name: String },
    #[error("starting the print thread")]
    PrintThread { source: std::io::Error },
}

/// Hands finished spans to the exporter. Cheap to clone; sending never blocks.
#[derive(Clone)]
pub struct SpanSink {
    otlp: Option<queue::QueueTx<otlp::encode::EncodedSpan>>,
    print: Option<SyncSender<Span>>,
    stats: Arc<ExportStats>,
}

impl SpanSink {
    /// Queues `span` for every active output; drops and counts it where a queue is full.
    pub fn send(&self, span: Span) {
        self.send_all(vec![span]);
    }

    /// Queues `spans` for every active output, in one hand-off to the OTLP queue (producers
    /// that finish spans in bursts should collect them and call this once per burst); drops and
    /// counts what does not fit.
    pub fn send_all(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        if let Some(otlp) = &self.otlp {
            // Encoded here, on the producer's thread: the queue holds the bytes, and the spans
            // are freed where they were made.
            let pushed = otlp.push(&spans, otlp::encode::span);
            ExportStats::add(&self.stats.spans_queued, pushed.queued);
            ExportStats::add(&self.stats.spans_dropped_queue_full, pushed.dropped_full);
            ExportStats::add(&self.stats.spans_dropped_after_shutdown, pushed.dropped_closed);
        }
        if let Some(print) = &self.print {
            spans.into_iter().for_each(|span| self.to_print(print, span));
        }
    }

    /// Share of the OTLP queue in use (0 to 1; 0 without OTLP).
    pub fn backlog(&self) -> f64 {
        self.otlp.as_ref().map_or(0.0, queue::QueueTx::fill)
    }

    fn to_print(&self, queue: &SyncSender<Span>, span: Span) {
        let counter = match queue.try_send(span) {
            Ok(()) => &self.stats.spans_printed,
            Err(TrySendError::Full(_)) => &self.stats.spans_dropped_print_queue_full,
            Err(TrySendError::Disconnected(_)) => &self.stats.spans_dropped_after_shutdown,
        };
        ExportStats::add(counter, 1);
    }
}

/// The running export stage: an OTLP batch task, a print thread and a drop reporter.
pub struct Exporter {
    stats: Arc<ExportStats>,
    shutdown: watch::Sender<Option<Instant>>,
    batcher: Option<JoinHandle<()>>,
    printer: Option<printer::PrinterThread>,
    reporter: JoinHandle<()>,
}

impl Exporter {
    /// Starts the outputs `options` asks for. Must be called inside a tokio runtime. A collector
    /// that is down is not an error here: exports retry until it is up.
    pub fn start(options: ExportOptions) -> Result<(Exporter, SpanSink), ExportError> {
        tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let stats = Arc::new(ExportStats::default());
        let (shutdown, shutdown_rx) = watch::channel(None);

        let (otlp_tx, batcher) = match &options.otlp {
            Some(config) => {
                let sender = otlp::OtlpSender::new(config, config::Signal::Traces)?;
                let (tx, rx) = queue::channel(options.max_queue_spans);
                let settings = batch::BatchSettings {
                    max_batch: options.max_batch,
                    batch_delay: options.batch_delay,
                    retry_budget: options.retry_budget,
                };
                tracing::info!(
                    endpoint = %config.endpoint,
                    protocol = %config.protocol,
                    "exporting spans over OTLP"
                );
                let task = batch::run(rx, sender, settings, Arc::clone(&stats), shutdown_rx.clone());
                (Some(tx), Some(tokio::spawn(task)))
            }
            None => (None, None),
        };

        let stdout = std::io::stdout();
        let print: Option<Box<dyn printer::SpanPrinter>> = match options.print {
            PrintMode::Tree => {
                let style = terminal::Style { color: stdout.is_terminal() };
                Some(Box::new(terminal::TreePrinter::new(
                    stdout,
                    style,
                    options.print_idle,
                    options.max_pending_print_spans,
                )))
            }
            PrintMode::Json => Some(Box::new(json::JsonPrinter::new(stdout))),
            PrintMode::None => None,
        };
        let (print_tx, printer) = match print {
            Some(p) => {
                let (tx, thread) = printer::spawn(p, options.max_queue_spans)
                    .map_err(|source| ExportError::PrintThread { source })?;
                (Some(tx), Some(thread))
            }
            None => (None, None),
        };

        let reporter = tokio::spawn(report_drops(Arc::clone(&stats)));
        let sink = SpanSink { otlp: otlp_tx, print: print_tx, stats: Arc::clone(&stats) };
        Ok((Exporter { stats, shutdown, batcher, printer, reporter }, sink))
    }

    /// Flushes queued spans to the collector and prints pending traces, taking at most about
    /// `deadline`; then stops. Spans sent after this began are dropped and counted. Stop the span
    /// producers first so that their last spans are part of the flush.
    pub async fn shutdown(mut self, deadline: Duration) {
        let at = Instant::now() + deadline;
        self.shutdown.send_replace(Some(at));
        if let Some(mut batcher) = self.batcher.take() {
            // The task honours the deadline itself; the grace covers a request being torn down.
            let grace = at + Duration::from_millis(200);
            if tokio::time::timeout_at(grace, &mut batcher).await.is_err() {
                batcher.abort();
                tracing::warn!("OTLP flush did not finish before the shutdown deadline");
            }
        }
        if let Some(printer) = self.printer.take() {
            printer.stop(at.saturating_duration_since(Instant::now()).max(Duration::from_millis(500))).await;
        }
        self.reporter.abort();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let s = &self.stats;
        tracing::info!(
            exported = load(&s.spans_exported),
            dropped_queue_full = load(&s.spans_dropped_queue_full),
            dropped_export_failed = load(&s.spans_dropped_export_failed),
            rejected_by_collector = load(&s.spans_rejected_by_collector),
            dropped_print_queue_full = load(&s.spans_dropped_print_queue_full),
            "export stopped"
        );
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for Exporter {
    /// Without `shutdown`: stop at once, losing what is queued.
    fn drop(&mut self) {
        if let Some(batcher) = &self.batcher {
            batcher.abort();
        }
        self.reporter.abort();
    }
}

/// Checks the drop counters every second; `DropReporter` limits the warnings to one per 10 s.
async fn report_drops(stats: Arc<ExportStats>) {
    let mut reporter = DropReporter::new(Duration::from_secs(10));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        reporter.poll(&stats, std::time::Instant::now());
    }
}
