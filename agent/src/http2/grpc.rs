//! gRPC over HTTP/2, as the OpenTelemetry RPC conventions describe a call: which streams are gRPC
//! calls, their service and method, their status code, and whether that status is an error for the
//! side that saw it.

use super::{Ending, RequestHeaders, StreamExchange};

/// gRPC's status codes (grpc/doc/statuscodes.md), by number.
pub const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// HTTP/2's error codes (RFC 9113 §7), by number, for a stream reset.
const RESET_NAMES: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

/// A gRPC call, as the conventions name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// `rpc.service`: the fully qualified service, e.g. `helloworld.Greeter`. None where the path
    /// was not read (a stream joined late) or is not `/service/method`.
    pub service: Option<String>,
    /// `rpc.method`, e.g. `SayHello`.
    pub method: Option<String>,
    /// `rpc.grpc.status_code`: from the trailers (or a trailers-only response), else from the
    /// HTTP status as gRPC maps it; None when the call ended without either.
    pub status: Option<u32>,
    /// `error.type` for a call that ended without a status: the reset's HTTP/2 error code, or
    /// that the connection or a GOAWAY cut it.
    pub cut: Option<&'static str>,
}

impl Call {
    /// The span name: `service/method`, or what is known of it.
    pub fn span_name(&self) -> String {
        match (&self.service, &self.method) {
            (Some(service), Some(method)) => format!("{service}/{method}"),
            _ => "grpc".to_owned(),
        }
    }

    /// Whether the call's span is an error: any status but OK for the client; for the server
    /// only the codes that say the server failed (the conventions' table: UNKNOWN,
    /// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). A call cut before its
    /// status is an error on both sides.
    pub fn is_error(&self, server: bool) -> bool {
        match self.status {
            Some(code) if server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
            Some(code) => code != 0,
            None => self.cut.is_some(),
        }
    }

    /// `error.type` for an error: the status code's name, or how the call was cut.
    pub fn error_type(&self, server: bool) -> Option<String> {
        if !self.is_error(server) {
            return None;
        }
        match self.status {
            Some(code) => {
                Some(STATUS_NAMES.get(code as usize).map_or_else(|| code.to_string(), |s| (*s).to_owned()))
            }
            None => self.cut.map(str::to_owned),
        }
    }
}

/// Whether a stream is a gRPC call: its request or response says `application/grpc` (with or
/// without a `+format` suffix), or its response carries a gRPC status.
pub fn is_grpc(exchange: &StreamExchange) -> bool {
    let grpc = |content_type: Option<&str>| {
        content_type
            .is_some_and(|t| t.starts_with("application/grpc") && !t.starts_with("application/grpc-web"))
    };
    let response = exchange.response.as_ref().map(|r| &r.headers);
    grpc(exchange.request.headers.content_type.as_deref())
        || response.is_some_and(|r| grpc(r.content_type.as_deref()) || r.grpc_status.is_some())
}

/// The call a gRPC stream made.
pub fn call(exchange: &StreamExchange) -> Call {
    let (service, method) = service_and_method(&exchange.request.headers).unzip();
    let response = exchange.response.as_ref().map(|r| &r.headers);
    let status = response.and_then(|r| r.grpc_status.or_else(|| r.status.and_then(status_from_http)));
    let cut = match exchange.ending {
        Ending::Complete => None,
        Ending::Reset { code, .. } => Some(RESET_NAMES.get(code as usize).copied().unwrap_or("RST_STREAM")),
        Ending::Cut => Some("connection_closed"),
    };
    Call { service, method, status, cut }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn service_and_method(request: &RequestHeaders) -> Option<(String, String)> {
    let (service, method) = request.path.as_deref()?.strip_prefix('/')?.split_once('/')?;
    let valid = |s: &str| !s.is_empty() && !s.contains('/');
    (valid(service) && valid(method)).then(|| (service.to_owned(), method.to_owned()))
}

/// A response with no `grpc-status` whose HTTP status is not 200 (a proxy answered, not the
/// server): the status gRPC clients report for it (grpc/doc/http-grpc-status-mapping.md).
fn status_from_http(status: u16) -> Option<u32> {
    Some(match status {
        100..=200 => return None,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    })
}

#[cfg(test)]
mod tests {
    use sonde_common::Direction;

    use super::*;
    use crate::http2::{ResponseHeaders, StreamRequest, StreamResponse};

    fn exchange(path: Option<&str>, response: Option<ResponseHeaders>, ending: Ending) -> StreamExchange {
        StreamExchange {
            request_direction: Direction::Ingress,
            stream: 1,
            request: StreamRequest {
                headers: RequestHeaders {
                    path: path.map(str::to_owned),
                    content_type: Some("application/grpc".into()),
                    ..Default::default()
                },
                start_ns: 1,
                end_ns: 2,
                body_bytes: 5,
                tid: 1,
            },
            response: response.map(|headers| StreamResponse {
                headers,
                start_ns: 3,
                end_ns: 4,
                body_bytes: 5,
            }),
            ending,
        }
    }

    fn status(grpc: Option<u32>, http: u16) -> Option<ResponseHeaders> {
        Some(ResponseHeaders { status: Some(http), grpc_status: grpc, ..Default::default() })
    }

    #[test]
    fn a_call_is_named_by_its_service_and_method() {
        let call =
            call(&exchange(Some("/helloworld.Greeter/SayHello"), status(Some(0), 200), Ending::Complete));
        assert_eq!(call.service.as_deref(), Some("helloworld.Greeter"));
        assert_eq!(call.method.as_deref(), Some("SayHello"));
        assert_eq!(call.span_name(), "helloworld.Greeter/SayHello");
        assert_eq!((call.status, call.is_error(true), call.is_error(false)), (Some(0), false, false));
        for path in [None, Some("/"), Some("/noslash"), Some("/a/b/c"), Some("//m"), Some("relative/x")] {
            let call = super::call(&exchange(path, status(Some(0), 200), Ending::Complete));
            assert_eq!((call.service, call.method), (None, None), "{path:?}");
        }
    }

    #[test]
    fn statuses_are_errors_as_the_conventions_table_says() {
        for code in 0..=16u32 {
            let call = call(&exchange(Some("/a.B/C"), status(Some(code), 200), Ending::Complete));
            let server_error = [2, 4, 12, 13, 14, 15].contains(&code);
            assert_eq!(call.is_error(true), server_error, "server, {code}");
            assert_eq!(call.is_error(false), code != 0, "client, {code}");
            let expected = (code != 0).then(|| STATUS_NAMES[code as usize].to_owned());
            assert_eq!(call.error_type(false), expected);
        }
    }

    #[test]
    fn without_a_grpc_status_the_http_status_or_the_cut_decides() {
        let proxied = call(&exchange(Some("/a.B/C"), status(None, 503), Ending::Complete));
        assert_eq!(proxied.status, Some(14));
        let reset = call(&exchange(Some("/a.B/C"), None, Ending::Reset { code: 8, by: Direction::Egress }));
        assert_eq!((reset.status, reset.error_type(true).as_deref()), (None, Some("CANCEL")));
        let cut = call(&exchange(Some("/a.B/C"), status(None, 200), Ending::Cut));
        assert_eq!((cut.status, cut.error_type(false).as_deref()), (None, Some("connection_closed")));
    }

    #[test]
    fn grpc_streams_are_told_from_plain_http2() {
        let mut plain = exchange(Some("/index.html"), status(None, 200), Ending::Complete);
        plain.request.headers.content_type = None;
        assert!(!is_grpc(&plain));
        plain.response.as_mut().unwrap().headers.grpc_status = Some(0);
        assert!(is_grpc(&plain));
        let mut web = exchange(Some("/a.B/C"), None, Ending::Complete);
        web.request.headers.content_type = Some("application/grpc-web+proto".into());
        assert!(!is_grpc(&web));
        web.request.headers.content_type = Some("application/grpc+proto".into());
        assert!(is_grpc(&web));
    }
}
