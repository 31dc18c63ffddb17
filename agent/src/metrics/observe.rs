//! The facts of one finished HTTP exchange that its metrics need, chosen by the same rules as the
//! span's attributes (span/assemble.rs), so that a metric series and the spans behind it agree.

use sonde_common::Direction;

use crate::{
    conn::ConnInfo,
    http::Exchange,
    semconv::Target,
    span::{
        assemble::{AddressTexts, is_error_status, normalize_method, scheme, server_endpoint},
        model::{SpanKind, Text},
    },
};

#[derive(Debug)]
pub struct Observation<'a> {
    pub kind: SpanKind,
    /// `http.request.method`: a known method, or `_OTHER`.
    pub method: &'static str,
    /// None: the connection closed before a response.
    pub status: Option<u16>,
    pub scheme: &'static str,
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    /// `server.address`, `server.port` (client side only).
    pub server: Option<(Text, Option<u16>)>,
    /// The request path, query cut (server side: what `http.route` is derived from).
    pub path: &'a str,
    pub duration_s: f64,
}

impl<'a> Observation<'a> {
    pub(crate) fn new(exchange: &'a Exchange, conn: &ConnInfo, addresses: &mut AddressTexts) -> Self {
        let kind = if exchange.request_direction == Direction::Ingress {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        let request = &exchange.request.head;
        let start = exchange.request.start_ns;
        let end = exchange.response.as_ref().map_or(exchange.request.end_ns, |r| r.end_ns);
        Self {
            kind,
            method: normalize_method(&request.method).0,
            status: exchange.response.as_ref().map(|r| r.head.status),
            scheme: scheme(conn),
            minor_version: request.minor_version,
            // Only client series carry it (see http.rs): a server has no use for the allocation.
            server: match kind {
                SpanKind::Client => server_endpoint(request, conn.remote, addresses),
                SpanKind::Server => None,
            },
            path: Target::parse(&request.target).path,
            duration_s: end.saturating_sub(start) as f64 / 1e9,
        }
    }

    /// The span's status would be ERROR (no response, or an error status for its kind).
    pub fn failed(&self) -> bool {
        self.status.is_none_or(|code| is_error_status(self.kind, code))
    }
}
