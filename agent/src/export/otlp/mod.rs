//! OTLP export of one batch: encode, send over gRPC or HTTP, retry transient failures with
//! jittered exponential back-off within a time budget, and count the outcome.

#[cfg(test)]
mod convert;
pub(crate) mod encode;
mod grpc;
mod http;
pub(crate) mod metrics;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::Signal;
use super::stats::{Every, ExportStats};
use super::{ExportError, OtlpConfig, Protocol};
use encode::EncodedSpan;

/// Sent with every request, as the OTLP exporter spec asks.
const USER_AGENT: &str = concat!("sonde/", env!("CARGO_PKG_VERSION"));
/// Largest export request sent as one: collectors refuse larger gRPC messages by default (the
/// OTel Collector's and rotel's limit is 4 MiB), and a refusal would lose the whole batch. A
/// batch that encodes larger goes out in as many requests as it takes (`request_part`).
const MAX_REQUEST_BYTES: usize = 3 << 20;

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
    /// Sends one encoded export request (`ExportTraceServiceRequest` or
    /// `ExportMetricsServiceRequest`).
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

/// How one export request ended (after its retries).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Items the collector took.
    pub exported: usize,
    /// Items it reported rejected in a partial success.
    pub rejected: usize,
    /// Items lost: a non-retryable error, or the retry budget ran out.
    pub dropped: usize,
    /// Attempts that failed, retried ones included.
    pub failed_attempts: usize,
}

/// Sends export requests of one signal to one collector and keeps track of its health for the
/// logs.
pub(crate) struct OtlpSender {
    client: Client,
    endpoint: String,
    signal: Signal,
    /// Since when every attempt has failed with a transient error.
    failing_since: Option<Instant>,
    failed_attempts: u64,
    /// Rate limits for warnings that a misconfigured collector could trigger per batch.
    permanent_log: Every,
    partial_log: Every,
}

impl OtlpSender {
    pub(crate) fn new(config: &OtlpConfig, signal: Signal) -> Result<Self, ExportError> {
        let client = match config.protocol {
            Protocol::Grpc => Client::Grpc(grpc::GrpcClient::new(config, signal.grpc_path())?),
            Protocol::HttpProtobuf => Client::Http(http::HttpClient::new(config)?),
        };
        Ok(Self {
            client,
            endpoint: config.endpoint.clone(),
            signal,
            failing_since: None,
            failed_attempts: 0,
            permanent_log: Every::new(Duration::from_secs(10)),
            partial_log: Every::new(Duration::from_secs(10)),
        })
    }

    /// Exports `spans`, retrying transient failures until `budget_end` or the shutdown deadline
    /// (if one is announced on `shutdown` meanwhile), whichever comes first. Never fails: the
    /// outcome is in `stats`.
    pub(crate) async fn send_spans(
        &mut self,
        spans: &[EncodedSpan],
        budget_end: Instant,
        shutdown: &mut watch::Receiver<Option<Instant>>,
        stats: &ExportStats,
    ) {
        let mut rest = spans;
        while !rest.is_empty() {
            let part;
            (part, rest) = rest.split_at(request_part(rest));
            let delivery = self.deliver(encode::request(part), part.len(), budget_end, shutdown).await;
            ExportStats::add(&stats.export_requests_failed, delivery.failed_attempts);
            if delivery.dropped == 0 {
                ExportStats::add(&stats.export_requests_ok, 1);
            }
            ExportStats::add(&stats.spans_exported, delivery.exported);
            ExportStats::add(&stats.spans_rejected_by_collector, delivery.rejected);
            ExportStats::add(&stats.spans_dropped_export_failed, delivery.dropped);
        }
    }

    /// Sends one encoded export request carrying `items` spans or points, with retries as
    /// `send_spans` describes.
    pub(crate) async fn deliver(
        &mut self,
        request: Bytes,
        items: usize,
        budget_end: Instant,
        shutdown: &mut watch::Receiver<Option<Instant>>,
    ) -> Delivery {
        let mut backoff = Backoff::new();
        let mut failed_attempts = 0;
        loop {
            let deadline = match *shutdown.borrow_and_update() {
                Some(at) => at.min(budget_end),
                None => budget_end,
            };
            // A hanging collector must not hold up shutdown beyond its deadline.
            let attempt = tokio::time::timeout_at(deadline, self.client.export(request.clone()));
            let failure = match attempt.await {
                Ok(Ok(accepted)) => {
                    let (exported, rejected) = self.accepted(items, accepted);
                    return Delivery { exported, rejected, dropped: 0, failed_attempts };
                }
                Ok(Err(failure)) => failure,
                Err(_elapsed) => {
                    Failure::Retryable { reason: "out of time for this batch".into(), retry_after: None }
                }
            };
            failed_attempts += 1;
            let (reason, retry_after) = match failure {
                Failure::Permanent { reason } => {
                    self.rejected(items, &reason);
                    return Delivery { dropped: items, failed_attempts, ..Delivery::default() };
                }
                Failure::Retryable { reason, retry_after } => (reason, retry_after),
            };
            self.transient_failure(&reason);

            let delay = backoff.next_delay().max(retry_after.unwrap_or_default());
            let wake = Instant::now() + delay;
            if wake >= deadline {
                tracing::debug!(
                    items,
                    signal = self.signal.items(),
                    error = %reason,
                    "OTLP retry budget spent, dropping batch"
                );
                return Delivery { dropped: items, failed_attempts, ..Delivery::default() };
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                // Shutdown moves the deadline; the loop re-reads it.
                _ = shutdown.changed() => {}
            }
        }
    }

    /// (exported, rejected) of an accepted request of `sent` items.
    fn accepted(&mut self, sent: usize, accepted: Accepted) -> (usize, usize) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                endpoint = %self.endpoint,
                unreachable_for = %humantime::format_duration(round_ms(since.elapsed())),
                failed_attempts = self.failed_attempts,
                "OTLP collector is accepting {} again",
                self.signal.items()
            );
            self.failed_attempts = 0;
        }
        let rejected = usize::try_from(accepted.rejected).unwrap_or(0).min(sent);
        if (rejected > 0 || !accepted.message.is_empty()) && self.partial_log.ready() {
            tracing::warn!(
                endpoint = %self.endpoint,
                rejected,
                message = %accepted.message,
                "OTLP collector rejected part of a batch of {}",
                self.signal.items()
            );
        }
        (sent - rejected, rejected)
    }

    fn rejected(&mut self, sent: usize, reason: &str) {
        if self.permanent_log.ready() {
            tracing::warn!(
                endpoint = %self.endpoint,
                items = sent,
                error = %reason,
                "OTLP collector refused a batch of {}; dropping it (not retryable)",
                self.signal.items()
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
                "OTLP export of {} failed; retrying with back-off, {} queue up meanwhile",
                self.signal.items(),
                self.signal.items()
            );
        } else {
            tracing::debug!(endpoint = %self.endpoint, error = %reason, "OTLP export failed again");
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// How many of `spans`, from the first, go into the next request: as many as fit in
/// `MAX_REQUEST_BYTES`, and at least one (a span alone is sent whatever its size).
fn request_part(spans: &[EncodedSpan]) -> usize {
    let mut bytes = 0;
    let fit = spans.iter().take_while(|span| {
        bytes += span.len();
        bytes <= MAX_REQUEST_BYTES
    });
    fit.count().max(1).min(spans.len())
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
