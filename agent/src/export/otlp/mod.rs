//! OTLP export of one batch: encode, send over gRPC or HTTP, retry transient failures with
//! jittered exponential back-off within a time budget, and count the outcome.

#[cfg(test)]
mod convert;
mod encode;
mod grpc;
mod http;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::stats::{Every, ExportStats};
use super::{ExportError, OtlpConfig, Protocol};
use crate::span::model::Span;

/// Sent with every request, as the OTLP exporter spec asks.
const USER_AGENT: &str = concat!("sonde/", env!("CARGO_PKG_VERSION"));

/// What the collector said about an accepted request (OTLP partial success).
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    pub rejected: i64,
    pub message: String,
}

#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth sending the same batch again later.
    Retryable { reason: String, retry_after: Option<Duration> },
    /// The collector will never take this batch (bad request, auth, …).
    Permanent { reason: String },
}

#[expect(clippy::large_enum_variant, reason = "one client per exporter, never moved")]
enum Client {
    Grpc(grpc::GrpcClient),
    Http(http::HttpClient),
}

impl Client {
    /// Sends one encoded `ExportTraceServiceRequest`.
    async fn export(&mut self, request: Bytes) -> Result<Accepted, Failure> {
        match self {
            Client::Grpc(c) => c.export(request).await,
            Client::Http(c) => c.export(request).await,
        }
    }
}

/// Back-off between attempts: 100 ms doubling to 5 s, each delay jittered to between half and
/// all of it so that many agents restarting with a collector do not retry in lockstep.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::INITIAL }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        base / 2 + base.mul_f64(fastrand::f64() / 2.0)
    }
}

/// Sends batches to one collector and keeps track of its health for the logs.
pub(crate) struct OtlpSender {
    client: Client,
    endpoint: String,
    stats: Arc<ExportStats>,
    /// Since when every attempt has failed with a transient error.
    failing_since: Option<Instant>,
    failed_attempts: u64,
    /// Rate limits for warnings that a misconfigured collector could trigger per batch.
    permanent_log: Every,
    partial_log: Every,
}

impl OtlpSender {
    pub(crate) fn new(config: &OtlpConfig, stats: Arc<ExportStats>) -> Result<Self, ExportError> {
        let client = match config.protocol {
            Protocol::Grpc => Client::Grpc(grpc::GrpcClient::new(config)?),
            Protocol::HttpProtobuf => Client::Http(http::HttpClient::new(config)?),
        };
        Ok(Self {
            client,
            endpoint: config.endpoint.clone(),
            stats,
            failing_since: None,
            failed_attempts: 0,
            permanent_log: Every::new(Duration::from_secs(10)),
            partial_log: Every::new(Duration::from_secs(10)),
        })
    }

    /// Exports `spans`, retrying transient failures until `budget_end` or the shutdown deadline
    /// (if one is announced on `shutdown` meanwhile), whichever comes first. Never fails: the
    /// outcome is in the stats.
    pub(crate) async fn send(
        &mut self,
        spans: &[Span],
        budget_end: Instant,
        shutdown: &mut watch::Receiver<Option<Instant>>,
    ) {
        if spans.is_empty() {
            return;
        }
        let request = encode::request(spans);
        let mut backoff = Backoff::new();
        loop {
            let deadline = match *shutdown.borrow_and_update() {
                Some(at) => at.min(budget_end),
                None => budget_end,
            };
            // A hanging collector must not hold up shutdown beyond its deadline.
            let attempt = tokio::time::timeout_at(deadline, self.client.export(request.clone()));
            let failure = match attempt.await {
                Ok(Ok(accepted)) => return self.accepted(spans.len(), accepted),
                Ok(Err(failure)) => failure,
                Err(_elapsed) => {
                    Failure::Retryable { reason: "out of time for this batch".into(), retry_after: None }
                }
            };
            ExportStats::add(&self.stats.export_requests_failed, 1);
            let (reason, retry_after) = match failure {
                Failure::Permanent { reason } => return self.rejected(spans.len(), &reason),
                Failure::Retryable { reason, retry_after } => (reason, retry_after),
            };
            self.transient_failure(&reason);

            let delay = backoff.next_delay().max(retry_after.unwrap_or_default());
            let wake = Instant::now() + delay;
            if wake >= deadline {
                tracing::debug!(
                    spans = spans.len(),
                    error = %reason,
                    "OTLP retry budget spent, dropping batch"
                );
                ExportStats::add(&self.stats.spans_dropped_export_failed, spans.len());
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                // Shutdown moves the deadline; the loop re-reads it.
                _ = shutdown.changed() => {}
            }
        }
    }

    fn accepted(&mut self, sent: usize, accepted: Accepted) {
        ExportStats::add(&self.stats.export_requests_ok, 1);
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                endpoint = %self.endpoint,
                unreachable_for = %humantime::format_duration(round_ms(since.elapsed())),
                failed_attempts = self.failed_attempts,
                "OTLP collector is accepting spans again"
            );
            self.failed_attempts = 0;
        }
        let rejected = usize::try_from(accepted.rejected).unwrap_or(0).min(sent);
        ExportStats::add(&self.stats.spans_exported, sent - rejected);
        ExportStats::add(&self.stats.spans_rejected_by_collector, rejected);
        if (rejected > 0 || !accepted.message.is_empty()) && self.partial_log.ready() {
            tracing::warn!(
                endpoint = %self.endpoint,
                rejected,
                message = %accepted.message,
                "OTLP collector rejected part of a batch"
            );
        }
    }

    fn rejected(&mut self, sent: usize, reason: &str) {
        ExportStats::add(&self.stats.spans_dropped_export_failed, sent);
        if self.permanent_log.ready() {
            tracing::warn!(
                endpoint = %self.endpoint,
                spans = sent,
                error = %reason,
                "OTLP collector refused a batch; dropping it (not retryable)"
            );
        }
    }

    fn transient_failure(&mut self, reason: &str) {
        self.failed_attempts += 1;
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %reason,
                "OTLP export failed; retrying with back-off, spans queue up meanwhile"
            );
        } else {
            tracing::debug!(endpoint = %self.endpoint, error = %reason, "OTLP export failed again");
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let mut base = Backoff::INITIAL;
        for d in delays {
            assert!(d >= base / 2 && d <= base, "{d:?} not within [{:?}, {base:?}]", base / 2);
            base = (base * 2).min(Backoff::MAX);
        }
    }
}
