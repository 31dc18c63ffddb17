//! The OTLP batching task: drains the span queue into batches of up to `max_batch` spans, or
//! whatever arrived within `batch_delay` of a batch's first span, and exports them one at a time
//! (like the SDK's batch span processor with one export in flight). While a batch is being retried
//! the queue keeps filling; once it is full the sink drops and counts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ExportStats;
use super::otlp::OtlpSender;
use super::otlp::encode::EncodedSpan;
use super::queue::QueueRx;

pub(crate) struct BatchSettings {
    pub max_batch: usize,
    pub batch_delay: Duration,
    pub retry_budget: Duration,
}

/// Runs until shutdown is announced on `shutdown` (with its deadline), then flushes what is
/// queued until that deadline and returns.
pub(crate) async fn run(
    mut queue: QueueRx<EncodedSpan>,
    mut sender: OtlpSender,
    settings: BatchSettings,
    stats: Arc<ExportStats>,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    let max_batch = settings.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while shutdown.borrow().is_none() {
        tokio::select! {
            biased;
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                // The exporter is gone without a shutdown: nothing to flush for.
                Err(_) => return,
            },
            n = queue.recv(&mut batch, max_batch) => if n == 0 {
                // Every sink is gone and the queue is empty.
                return;
            },
        }
        let flush_at = Instant::now() + settings.batch_delay;
        while batch.len() < max_batch {
            let room = max_batch - batch.len();
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                () = tokio::time::sleep_until(flush_at) => break,
                n = queue.recv(&mut batch, room) => if n == 0 { break },
            }
        }
        sender.send_spans(&batch, Instant::now() + settings.retry_budget, &mut shutdown, &stats).await;
        batch.clear();
    }

    // Shutdown: no new spans (sinks now see a closed queue), flush the queued ones in time.
    let deadline = shutdown.borrow().unwrap_or_else(Instant::now);
    queue.close();
    let mut late = 0;
    while queue.recv(&mut batch, max_batch).await > 0 {
        if Instant::now() < deadline {
            sender.send_spans(&batch, deadline, &mut shutdown, &stats).await;
        } else {
            late += batch.len();
        }
        batch.clear();
    }
    if late > 0 {
        tracing::warn!(spans = late, "shutdown deadline passed before these queued spans were exported");
        ExportStats::add(&stats.spans_dropped_export_failed, late);
    }
}
