//! OTLP/HTTP with a protobuf body: `POST {endpoint}` (the full `…/v1/traces` URL).

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::{Accepted, Failure, USER_AGENT};
use crate::export::{ExportError, OtlpConfig};

const PROTOBUF: &str = "application/x-protobuf";

pub(crate) struct HttpClient {
    client: reqwest::Client,
    url: String,
}

impl HttpClient {
    pub(crate) fn new(config: &OtlpConfig) -> Result<Self, ExportError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let bad = || ExportError::BadHeader { name: name.clone() };
            let name: HeaderName = name.parse().map_err(|_| bad())?;
            let value: HeaderValue = value.parse().map_err(|_| bad())?;
            headers.append(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|source| ExportError::HttpClient { endpoint: config.endpoint.clone(), source })?;
        Ok(Self { client, url: config.endpoint.clone() })
    }

    /// Posts one encoded `ExportTraceServiceRequest`.
    pub(crate) async fn export(&mut self, request: Bytes) -> Result<Accepted, Failure> {
        let response = self
            .client
            .post(&self.url)
            .body(request)
            .send()
            .await
            // Connection refused or reset, timeouts, TLS: the collector may come back.
            .map_err(|e| Failure::Retryable { reason: error_chain(&e), retry_after: None })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            // An empty or undecodable body still means the spans were accepted.
            let partial = ExportTraceServiceResponse::decode(body).ok().and_then(|r| r.partial_success);
            return Ok(partial
                .map(|p| Accepted { rejected: p.rejected_spans, message: p.error_message })
                .unwrap_or_default());
        }
        let reason = format!("HTTP {status}: {}", summary(&body));
        Err(classify(status, reason, retry_after))
    }
}

/// OTLP/HTTP spec: 429, 502, 503 and 504 are transient; any other failure is final.
fn classify(status: StatusCode, reason: String, retry_after: Option<Duration>) -> Failure {
    match status.as_u16() {
        429 | 502 | 503 | 504 => Failure::Retryable { reason, retry_after },
        _ => Failure::Permanent { reason },
    }
}

/// `Retry-After` in delta-seconds (the HTTP-date form is rare from collectors and ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs))
}

/// The start of an error body, for the log (collectors answer with text, JSON or a protobuf
/// `google.rpc.Status`, whose message is readable too).
fn summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned()
}

/// reqwest's `Display` leaves out the cause ("error sending request"), which is the useful part.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for code in [429, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(status, String::new(), None), Failure::Retryable { .. }));
        }
        for code in [400, 401, 403, 404, 413, 500] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(status, String::new(), None), Failure::Permanent { .. }));
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        assert_eq!(summary(b"bad\nrequest\x00"), "bad request");
    }
}
