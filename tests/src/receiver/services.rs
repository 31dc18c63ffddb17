//! The OTLP services: gRPC `TraceService`/`MetricsService` and the HTTP/protobuf handlers, each
//! handing what it decoded to the shared store (or refusing, as told).

use super::*;

pub(super) struct GrpcService(pub(super) Shared);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        self.0.delay().await;
        match self.0.accept(Transport::Grpc, headers, request.into_inner()) {
            Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None })),
            Err(refusal) => Err(refusal.grpc()),
        }
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.delay().await;
        match self.0.accept_metrics(Transport::Grpc, request.into_inner()) {
            Ok(()) => Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None })),
            Err(refusal) => Err(refusal.grpc()),
        }
    }
}

/// The OTLP/HTTP request body, or the error status and message to send.
pub(super) fn decode_http<M: prost::Message + Default>(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<M, (StatusCode, String)> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type != "application/x-protobuf" {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        ));
    }
    M::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")))
}

pub(super) async fn http_export(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let request: ExportTraceServiceRequest = match decode_http(&headers, body) {
        Ok(r) => r,
        Err(response) => return response.into_response(),
    };
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    shared.delay().await;
    if let Err(refusal) = shared.accept(Transport::Http, headers, request) {
        return refusal.http();
    }
    let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
}

pub(super) async fn http_metrics_export(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let request: ExportMetricsServiceRequest = match decode_http(&headers, body) {
        Ok(r) => r,
        Err(response) => return response.into_response(),
    };
    shared.delay().await;
    if let Err(refusal) = shared.accept_metrics(Transport::Http, request) {
        return refusal.http();
    }
    let response = ExportMetricsServiceResponse { partial_success: None }.encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
}

pub(super) fn stringify_all(attributes: Vec<KeyValue>) -> BTreeMap<String, String> {
    attributes.into_iter().map(|kv| (kv.key, stringify(kv.value.as_ref()))).collect()
}

pub(super) fn stringify(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
