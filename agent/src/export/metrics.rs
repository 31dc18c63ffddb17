//! The periodic OTLP metrics export: every interval (and once more at shutdown) the current
//! cumulative values of all metrics go to the collector (in requests of bounded size). A collector that is down
//! costs retries within the interval; then that collection is dropped and counted, and the next
//! one, cumulative, carries the counts forward anyway.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{
    ExportError, OtlpConfig, Signal,
    otlp::{self, OtlpSender},
};
use crate::metrics::Metrics;

pub struct MetricsExporter {
    task: JoinHandle<()>,
    shutdown: watch::Sender<Option<Instant>>,
}

impl MetricsExporter {
    /// Starts the export task (inside a tokio runtime).
    pub fn start(config: &OtlpConfig, interval: Duration, metrics: Metrics) -> Result<Self, ExportError> {
        tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let sender = OtlpSender::new(config, Signal::Metrics)?;
        let (shutdown, shutdown_rx) = watch::channel(None);
        tracing::info!(
            endpoint = %config.endpoint,
            protocol = %config.protocol,
            interval = %humantime::format_duration(interval),
            "exporting metrics over OTLP"
        );
        let task = tokio::spawn(run(metrics, sender, interval.max(Duration::from_millis(100)), shutdown_rx));
        Ok(Self { task, shutdown })
    }

    /// Sends the final values, taking at most about `deadline`, and stops.
    pub async fn shutdown(mut self, deadline: Duration) {
        let at = Instant::now() + deadline;
        self.shutdown.send_replace(Some(at));
        if tokio::time::timeout_at(at + Duration::from_millis(200), &mut self.task).await.is_err() {
            self.task.abort();
            tracing::warn!("final OTLP metrics export did not finish before the shutdown deadline");
        }
    }
}

async fn run(
    metrics: Metrics,
    mut sender: OtlpSender,
    interval: Duration,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shutdown.borrow().is_none() {
        tokio::select! {
            biased;
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
            _ = tick.tick() => {}
        }
        // The next collection is due in one interval: retrying this one longer is pointless.
        export_once(&metrics, &mut sender, Instant::now() + interval, &mut shutdown).await;
    }
    let deadline = shutdown.borrow().unwrap_or_else(Instant::now);
    export_once(&metrics, &mut sender, deadline, &mut shutdown).await;
}

async fn export_once(
    metrics: &Metrics,
    sender: &mut OtlpSender,
    budget_end: Instant,
    shutdown: &mut watch::Receiver<Option<Instant>>,
) {
    let now_unix_ns = crate::metrics::unix_ns_now();
    let requests =
        otlp::metrics::requests(&metrics.collect(), now_unix_ns, otlp::metrics::MAX_POINTS_PER_REQUEST);
    let stats = &metrics.own_sources().metrics_export;
    for (request, points) in requests {
        let delivery = sender.deliver(request, points, budget_end, shutdown).await;
        stats.points_exported.fetch_add(delivery.exported as u64, Ordering::Relaxed);
        stats.points_dropped.fetch_add((delivery.rejected + delivery.dropped) as u64, Ordering::Relaxed);
    }
}
