//! One span per HTTP exchange: SERVER for the requests a process answered, CLIENT for the ones it
//! sent, per the OTel HTTP semantic conventions
//! (https://opentelemetry.io/docs/specs/semconv/http/http-spans/).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use foldhash::HashMap;

use sonde_common::Direction;

use super::{
    clock::WallClock,
    model::{KeyValue, Resource, Span, SpanKind, Status, Text},
};
use crate::{
    conn::ConnInfo,
    http::{Exchange, RequestHead},
    link::SpanContext,
    semconv::{Target, attr},
};

/// Attribute values longer than this are cut (a 1 MiB URL must not become a 1 MiB attribute).
pub const MAX_ATTRIBUTE_BYTES: usize = 2048;

#[derive(Clone, Debug, Default)]
pub struct AssembleOptions {
    /// Export `url.query` (off by default: query strings often carry personal data or secrets).
    pub capture_query: bool,
    /// Also export the attributes the conventions make Opt-In for server spans (`client.port`,
    /// `network.transport`, `http.request.body.size`, `http.response.body.size`) and
    /// `network.type`, which they do not list for server spans at all. Each is bytes on every
    /// span, for sonde, the collector and the backend alike.
    pub opt_in_attributes: bool,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct AssembleStats {
    pub server_spans: u64,
    pub client_spans: u64,
    /// The trace is not sampled (the caller's traceparent or the sampler said so): no span is made.
    pub unsampled: u64,
}

#[derive(Default)]
pub struct Assembler {
    options: AssembleOptions,
    stats: AssembleStats,
    addresses: AddressTexts,
}

impl Assembler {
    pub fn new(options: AssembleOptions) -> Self {
        Self { options, stats: AssembleStats::default(), addresses: AddressTexts::default() }
    }

    pub fn stats(&self) -> AssembleStats {
        self.stats
    }

    /// The span for `exchange` with the identity `context` (see `link`), or None when its trace
    /// is not sampled. A SERVER span when the process read the request, a CLIENT span when it wrote it.
    pub fn span(
        &mut self,
        exchange: &Exchange,
        conn: &ConnInfo,
        resource: Arc<Resource>,
        clock: &WallClock,
        context: SpanContext,
    ) -> Option<Span> {
        if !context.sampled() {
            self.stats.unsampled += 1;
            return None;
        }
        let kind = if exchange.request_direction == Direction::Ingress {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        let request = &exchange.request.head;
        let (method, method_original) = normalize_method(&request.method);
        let mut attributes = Vec::with_capacity(16);
        attributes.push(KeyValue::str(attr::HTTP_REQUEST_METHOD, method));
        if let Some(original) = method_original {
            attributes.push(KeyValue::str(attr::HTTP_REQUEST_METHOD_ORIGINAL, capped(original)));
        }
        // `network.protocol.name` is only due when the protocol is not `http`.
        attributes
            .push(KeyValue::str(attr::NETWORK_PROTOCOL_VERSION, protocol_version(request.minor_version)));
        match kind {
            SpanKind::Server => self.server_attributes(exchange, conn, &mut attributes),
            _ => self.client_attributes(exchange, conn, &mut attributes),
        }
        let opt_in = self.options.opt_in_attributes;
        if opt_in {
            attributes.push(KeyValue::str(attr::NETWORK_TRANSPORT, "tcp"));
        }
        if opt_in && exchange.request.body_bytes > 0 {
            attributes.push(KeyValue::int(attr::HTTP_REQUEST_BODY_SIZE, exchange.request.body_bytes as i64));
        }

        let start = exchange.request.start_ns;
        let (end, status) = match &exchange.response {
            Some(response) => {
                let code = response.head.status;
                attributes.push(KeyValue::int(attr::HTTP_RESPONSE_STATUS_CODE, code as i64));
                if opt_in && response.body_bytes > 0 {
                    attributes.push(KeyValue::int(attr::HTTP_RESPONSE_BODY_SIZE, response.body_bytes as i64));
                }
                let status = if is_error_status(kind, code) {
                    attributes.push(KeyValue::str(attr::ERROR_TYPE, code.to_string()));
                    Status::Error { message: String::new() }
                } else {
                    Status::Unset
                };
                (response.end_ns, status)
            }
            None => {
                attributes.push(KeyValue::str(attr::ERROR_TYPE, "connection_closed"));
                let message = match kind {
                    SpanKind::Server => "connection closed before a response was sent",
                    _ => "connection closed or reset before a response arrived",
                };
                (exchange.request.end_ns, Status::Error { message: message.into() })
            }
        };
        match kind {
            SpanKind::Server => self.stats.server_spans += 1,
            _ => self.stats.client_spans += 1,
        }
        Some(Span {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent_span_id: context.parent_span_id,
            trace_flags: context.flags,
            trace_state: context.trace_state,
            name: method_name(&request.method),
            kind,
            start_unix_ns: clock.unix_ns(start),
            end_unix_ns: clock.unix_ns(end.max(start)),
            attributes,
            status,
            resource,
        })
    }

    /// What a server knows: the path it served, who asked, and under which name it was reached.
    fn server_attributes(&mut self, exchange: &Exchange, conn: &ConnInfo, attributes: &mut Vec<KeyValue>) {
        let request = &exchange.request.head;
        let target = Target::parse(&request.target);
        attributes.push(KeyValue::str(attr::URL_PATH, capped(target.path)));
        if self.options.capture_query
            && let Some(q) = target.query
        {
            attributes.push(KeyValue::str(attr::URL_QUERY, capped(q)));
        }
        attributes.push(KeyValue::str(attr::URL_SCHEME, scheme(conn)));
        server_address(request, conn.local, &mut self.addresses, attributes);
        let opt_in = self.options.opt_in_attributes;
        if let Some(peer) = conn.remote {
            let address = self.addresses.text(peer.ip());
            attributes.push(KeyValue::str(attr::CLIENT_ADDRESS, address.clone()));
            attributes.push(KeyValue::str(attr::NETWORK_PEER_ADDRESS, address));
            attributes.push(KeyValue::int(attr::NETWORK_PEER_PORT, peer.port() as i64));
            if opt_in {
                attributes.push(KeyValue::int(attr::CLIENT_PORT, peer.port() as i64));
                attributes
                    .push(KeyValue::str(attr::NETWORK_TYPE, if peer.is_ipv4() { "ipv4" } else { "ipv6" }));
            }
        }
        if let Some(ua) = &request.user_agent {
            attributes.push(KeyValue::str(attr::USER_AGENT_ORIGINAL, capped(ua)));
        }
    }

    /// What a client knows: the URL it asked for and the peer it reached.
    fn client_attributes(&mut self, exchange: &Exchange, conn: &ConnInfo, attributes: &mut Vec<KeyValue>) {
        let request = &exchange.request.head;
        server_address(request, conn.remote, &mut self.addresses, attributes);
        attributes.push(KeyValue::str(
            attr::URL_FULL,
            capped(&full_url(request, scheme(conn), conn.remote, self.options.capture_query)),
        ));
        let opt_in = self.options.opt_in_attributes;
        if let Some(peer) = conn.remote {
            attributes.push(KeyValue::str(attr::NETWORK_PEER_ADDRESS, self.addresses.text(peer.ip())));
            attributes.push(KeyValue::int(attr::NETWORK_PEER_PORT, peer.port() as i64));
            if opt_in {
                attributes
                    .push(KeyValue::str(attr::NETWORK_TYPE, if peer.is_ipv4() { "ipv4" } else { "ipv6" }));
            }
        }
        if opt_in {
            // Opt-In on client spans: `url.full` starts with it anyway.
            attributes.push(KeyValue::str(attr::URL_SCHEME, scheme(conn)));
        }
        if opt_in && let Some(ua) = &request.user_agent {
            attributes.push(KeyValue::str(attr::USER_AGENT_ORIGINAL, capped(ua)));
        }
    }
}

/// Span name per the conventions: `{method}` (no route is known yet), `HTTP` for unknown methods.
fn method_name(method: &str) -> String {
    known_method(method).unwrap_or("HTTP").to_owned()
}

/// Server spans: only 5xx is an error, 4xx is the client's doing; client spans: both.
pub(crate) fn is_error_status(kind: SpanKind, code: u16) -> bool {
    code >= if kind == SpanKind::Server { 500 } else { 400 }
}

pub(crate) fn normalize_method(method: &str) -> (&'static str, Option<&str>) {
    match known_method(method) {
        Some(known) => (known, None),
        None => ("_OTHER", Some(method)),
    }
}

fn known_method(method: &str) -> Option<&'static str> {
    crate::http::KNOWN_METHODS.iter().find(|&&known| known == method).copied()
}

pub(crate) fn protocol_version(minor: u8) -> Text {
    match minor {
        0 => Text::Static("1.0"),
        1 => Text::Static("1.1"),
        _ => Text::Owned(format!("1.{minor}")),
    }
}

/// Addresses as attribute text, formatted once and shared by the spans of every connection
/// with the same peer. Bounded: when full it starts over.
#[derive(Default)]
pub(crate) struct AddressTexts {
    texts: HashMap<IpAddr, Arc<str>>,
}

impl AddressTexts {
    const MAX: usize = 4096;

    pub(crate) fn text(&mut self, ip: IpAddr) -> Text {
        if self.texts.len() >= Self::MAX && !self.texts.contains_key(&ip) {
            self.texts.clear();
        }
        Text::Shared(Arc::clone(self.texts.entry(ip).or_insert_with(|| ip.to_string().into())))
    }
}

/// `server.address`/`server.port` from the Host header (what the client asked for), else the
/// server's socket address (`server_socket`: the local end on a server, the peer on a client).
fn server_address(
    request: &RequestHead,
    server_socket: Option<SocketAddr>,
    addresses: &mut AddressTexts,
    out: &mut Vec<KeyValue>,
) {
    if let Some((address, port)) = server_endpoint(request, server_socket, addresses) {
        out.push(KeyValue::str(attr::SERVER_ADDRESS, address));
        if let Some(port) = port {
            out.push(KeyValue::int(attr::SERVER_PORT, port as i64));
        }
    }
}

/// (`server.address`, `server.port`) as `server_address` reports them.
pub(crate) fn server_endpoint(
    request: &RequestHead,
    server_socket: Option<SocketAddr>,
    addresses: &mut AddressTexts,
) -> Option<(Text, Option<u16>)> {
    match request.host.as_deref().and_then(split_host) {
        Some((host, port)) => Some((capped(host).into(), port.or(server_socket.map(|l| l.port())))),
        None => server_socket.map(|socket| (addresses.text(socket.ip()), Some(socket.port()))),
    }
}

/// `host[:port]`, `[v6]:port` → (host, port). None for an empty or unparsable header.
fn split_host(value: &str) -> Option<(&str, Option<u16>)> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host, port));
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok())),
        _ => Some((value, None)),
    }
}

fn capped(value: &str) -> String {
    if value.len() <= MAX_ATTRIBUTE_BYTES {
        return value.to_owned();
    }
    let mut cut = MAX_ATTRIBUTE_BYTES;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    value[..cut].to_owned()
}

/// `https` on connections whose plaintext came from TLS library hooks.
pub(crate) fn scheme(conn: &ConnInfo) -> &'static str {
    if conn.tls { "https" } else { "http" }
}

/// `url.full` of a client request: the scheme, the Host header (else the peer), the path, and the
/// query only when asked for. An absolute-form target (a request to a proxy) names its own scheme
/// and authority.
fn full_url(request: &RequestHead, scheme: &str, peer: Option<SocketAddr>, with_query: bool) -> String {
    let target = Target::parse(&request.target);
    let origin = match target.origin {
        Some(origin) => origin.to_owned(),
        None => {
            let authority = match (request.host.as_deref().map(str::trim).filter(|h| !h.is_empty()), peer) {
                (Some(host), _) => host.to_owned(),
                (None, Some(SocketAddr::V6(v6))) => format!("[{}]:{}", v6.ip(), v6.port()),
                (None, Some(peer)) => peer.to_string(),
                (None, None) => String::new(),
            };
            format!("{scheme}://{authority}")
        }
    };
    // The asterisk and authority forms (OPTIONS *, CONNECT) have no path of their own.
    let path = if target.path.starts_with('/') { target.path } else { "/" };
    match target.query {
        Some(query) if with_query => format!("{origin}{path}?{query}"),
        _ => format!("{origin}{path}"),
    }
}

#[cfg(test)]
mod tests;
