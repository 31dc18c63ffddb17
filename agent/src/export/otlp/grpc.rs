//! OTLP/gRPC: `TraceService/Export` and `MetricsService/Export` over a lazily connected tonic channel, so a collector that
//! is down when sonde starts is a retryable export failure, not a start-up error.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::Code;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Accepted, Failure, USER_AGENT};
use crate::export::{ExportError, OtlpConfig};

pub(crate) struct GrpcClient {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
    /// The service's `Export` method (traces or metrics).
    path: &'static str,
}

impl GrpcClient {
    pub(crate) fn new(config: &OtlpConfig, path: &'static str) -> Result<Self, ExportError> {
        let endpoint = &config.endpoint;
        let client_error = |source| ExportError::GrpcClient { endpoint: endpoint.clone(), source };
        let mut ep = Endpoint::from_shared(endpoint.clone())
            .map_err(client_error)?
            .user_agent(USER_AGENT)
            .map_err(client_error)?
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if endpoint.starts_with("https://") {
            ep = ep.tls_config(ClientTlsConfig::new().with_webpki_roots()).map_err(client_error)?;
        }

        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            let bad = || ExportError::BadHeader { name: name.clone() };
            // gRPC metadata keys are lower-case; `-bin` keys would need base64 values.
            let key: AsciiMetadataKey = name.to_ascii_lowercase().parse().map_err(|_| bad())?;
            let value: AsciiMetadataValue = value.parse().map_err(|_| bad())?;
            metadata.append(key, value);
        }

        Ok(Self { client: Grpc::new(ep.connect_lazy()), metadata, timeout: config.timeout, path })
    }

    /// Calls `Export` with one encoded request. The trace and metrics services' responses have the
    /// same fields (a partial success: rejected count, message) under the same numbers, so one
    /// decoder reads both.
    pub(crate) async fn export(&mut self, request: Bytes) -> Result<Accepted, Failure> {
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = self.metadata.clone();
        // Also tells the server, through `grpc-timeout`, when to give up.
        request.set_timeout(self.timeout);
        if let Err(e) = self.client.ready().await {
            return Err(Failure::Retryable {
                reason: format!("gRPC channel not ready: {e}"),
                retry_after: None,
            });
        }
        let path = PathAndQuery::from_static(self.path);
        match self.client.unary(request, path, EncodedRequest).await {
            Ok(response) => Ok(response
                .into_inner()
                .partial_success
                .map(|p| Accepted { rejected: p.rejected_spans, message: p.error_message })
                .unwrap_or_default()),
            Err(status) => Err(classify(&status)),
        }
    }
}

/// Sends a request already encoded by `encode.rs` as it is, and decodes the response with
/// opentelemetry-proto's type (the same as the generated client's prost codec does).
struct EncodedRequest;

impl Codec for EncodedRequest {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for EncodedRequest {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedRequest {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let response = ExportTraceServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| tonic::Status::internal(format!("undecodable ExportTraceServiceResponse: {e}")))?;
        Ok(Some(response))
    }
}

/// OTLP/gRPC spec: these codes are transient and the batch may be sent again. tonic reports a
/// refused or dropped connection as UNAVAILABLE and its own timeout as CANCELLED.
fn classify(status: &tonic::Status) -> Failure {
    let reason = format!("gRPC {:?}: {}", status.code(), status.message());
    if cut_off(status) {
        return Failure::Retryable { reason, retry_after: None };
    }
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Failure::Retryable { reason, retry_after: None },
        _ => Failure::Permanent { reason },
    }
}

/// A call that got no answer because its connection broke (the collector went away in the middle
/// of the request): tonic reports it as UNKNOWN "transport error". That is no verdict of the
/// collector's on the batch, and the batch is sent again once it is back.
fn cut_off(status: &tonic::Status) -> bool {
    status.code() == Code::Unknown
        && (status.message() == "transport error"
            || std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_off_by_a_broken_connection_is_retried() {
        let failure = classify(&tonic::Status::new(Code::Unknown, "transport error"));
        assert!(matches!(failure, Failure::Retryable { .. }));
        let failure = classify(&tonic::Status::new(Code::Unknown, "the collector's own error"));
        assert!(
            matches!(failure, Failure::Permanent { .. }),
            "an UNKNOWN from the collector stays permanent"
        );
    }

    #[test]
    fn retryable_codes() {
        for code in [Code::Unavailable, Code::ResourceExhausted, Code::DeadlineExceeded, Code::Aborted] {
            let failure = classify(&tonic::Status::new(code, "x"));
            assert!(matches!(failure, Failure::Retryable { .. }), "{code:?}");
        }
        for code in
            [Code::InvalidArgument, Code::Unauthenticated, Code::PermissionDenied, Code::Unimplemented]
        {
            let failure = classify(&tonic::Status::new(code, "x"));
            assert!(matches!(failure, Failure::Permanent { .. }), "{code:?}");
        }
    }

    #[tokio::test]
    async fn bad_metadata_is_a_start_error() {
        let config = OtlpConfig {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: crate::export::Protocol::Grpc,
            headers: vec![("x-token".into(), "a\u{7f}b".into())],
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(GrpcClient::new(&config, "/x/Export"), Err(ExportError::BadHeader { .. })));
    }
}
