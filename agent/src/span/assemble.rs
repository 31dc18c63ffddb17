//! One SERVER span per HTTP exchange the process answered, per the OTel HTTP semantic conventions
//! (https://opentelemetry.io/docs/specs/semconv/http/http-spans/).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use sonde_common::Direction;

use super::{
    clock::WallClock,
    model::{KeyValue, Resource, Span, SpanKind, Status, Text},
};
use crate::{
    conn::ConnInfo,
    http::{Exchange, RequestHead, traceparent},
};

/// Attribute values longer than this are cut (a 1 MiB URL must not become a 1 MiB attribute).
pub const MAX_ATTRIBUTE_BYTES: usize = 2048;

/// Methods the conventions name; any other is reported as `_OTHER` with the original kept.
const KNOWN_METHODS: &[&str] =
    &["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"];

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
    pub spans: u64,
    /// The caller's traceparent said "not sampled": the span is not exported (parent-based sampling).
    pub unsampled: u64,
    pub invalid_traceparent: u64,
    /// Exchanges where this process was the client (CLIENT spans are not produced yet).
    pub client_exchanges: u64,
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

    /// The span for `exchange`, or None when none is due (not a server exchange, or unsampled).
    pub fn span(
        &mut self,
        exchange: &Exchange,
        conn: &ConnInfo,
        resource: Arc<Resource>,
        clock: &WallClock,
    ) -> Option<Span> {
        if exchange.request_direction != Direction::Ingress {
            self.stats.client_exchanges += 1;
            return None;
        }
        let request = &exchange.request.head;
        let (trace_id, parent_span_id, trace_flags, trace_state) = match parent(request) {
            Parent::Valid(tp) if !tp.sampled() => {
                self.stats.unsampled += 1;
                return None;
            }
            Parent::Valid(tp) => {
                (tp.trace_id, Some(tp.parent_id), tp.flags, request.tracestate.clone().unwrap_or_default())
            }
            Parent::Invalid => {
                self.stats.invalid_traceparent += 1;
                (new_trace_id(), None, 1, String::new())
            }
            Parent::None => (new_trace_id(), None, 1, String::new()),
        };
        let (method, method_original) = normalize_method(&request.method);
        let mut attributes = Vec::with_capacity(16);
        attributes.push(KeyValue::str("http.request.method", method));
        if let Some(original) = method_original {
            attributes.push(KeyValue::str("http.request.method_original", capped(original)));
        }
        let (path, query) = split_target(&request.target);
        attributes.push(KeyValue::str("url.path", capped(path)));
        if self.options.capture_query
            && let Some(q) = query
        {
            attributes.push(KeyValue::str("url.query", capped(q)));
        }
        attributes.push(KeyValue::str("url.scheme", "http"));
        // `network.protocol.name` is only due when the protocol is not `http`.
        attributes.push(KeyValue::str("network.protocol.version", protocol_version(request.minor_version)));
        server_attributes(request, conn.local, &mut self.addresses, &mut attributes);
        let opt_in = self.options.opt_in_attributes;
        if let Some(peer) = conn.remote {
            let address = self.addresses.text(peer.ip());
            attributes.push(KeyValue::str("client.address", address.clone()));
            attributes.push(KeyValue::str("network.peer.address", address));
            attributes.push(KeyValue::int("network.peer.port", peer.port() as i64));
            if opt_in {
                attributes.push(KeyValue::int("client.port", peer.port() as i64));
                attributes.push(KeyValue::str("network.type", if peer.is_ipv4() { "ipv4" } else { "ipv6" }));
            }
        }
        if opt_in {
            attributes.push(KeyValue::str("network.transport", "tcp"));
        }
        if let Some(ua) = &request.user_agent {
            attributes.push(KeyValue::str("user_agent.original", capped(ua)));
        }
        if opt_in && exchange.request.body_bytes > 0 {
            attributes.push(KeyValue::int("http.request.body.size", exchange.request.body_bytes as i64));
        }

        let start = exchange.request.start_ns;
        let (end, status) = match &exchange.response {
            Some(response) => {
                let code = response.head.status;
                attributes.push(KeyValue::int("http.response.status_code", code as i64));
                if opt_in && response.body_bytes > 0 {
                    attributes.push(KeyValue::int("http.response.body.size", response.body_bytes as i64));
                }
                // Server spans: only 5xx is an error; 4xx is the client's doing.
                let status = if code >= 500 {
                    attributes.push(KeyValue::str("error.type", code.to_string()));
                    Status::Error { message: String::new() }
                } else {
                    Status::Unset
                };
                (response.end_ns, status)
            }
            None => {
                attributes.push(KeyValue::str("error.type", "connection_closed"));
                (
                    exchange.request.end_ns,
                    Status::Error { message: "connection closed before a response was sent".into() },
                )
            }
        };
        self.stats.spans += 1;
        Some(Span {
            trace_id,
            span_id: new_span_id(),
            parent_span_id,
            trace_flags,
            trace_state,
            name: method_name(&request.method),
            kind: SpanKind::Server,
            start_unix_ns: clock.unix_ns(start),
            end_unix_ns: clock.unix_ns(end.max(start)),
            attributes,
            status,
            resource,
        })
    }
}

enum Parent {
    Valid(traceparent::TraceParent),
    Invalid,
    None,
}

fn parent(request: &RequestHead) -> Parent {
    match request.traceparent.as_deref().map(traceparent::parse) {
        Some(Ok(tp)) => Parent::Valid(tp),
        Some(Err(_)) => Parent::Invalid,
        None => Parent::None,
    }
}

/// Span name per the conventions: `{method}` (no route is known yet), `HTTP` for unknown methods.
fn method_name(method: &str) -> String {
    known_method(method).unwrap_or("HTTP").to_owned()
}

fn normalize_method(method: &str) -> (&'static str, Option<&str>) {
    match known_method(method) {
        Some(known) => (known, None),
        None => ("_OTHER", Some(method)),
    }
}

fn known_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().find(|&&known| known == method).copied()
}

fn protocol_version(minor: u8) -> Text {
    match minor {
        0 => Text::Static("1.0"),
        1 => Text::Static("1.1"),
        _ => Text::Owned(format!("1.{minor}")),
    }
}

/// Addresses as attribute text, formatted once and shared by the spans of every connection
/// with the same peer. Bounded: when full it starts over.
#[derive(Default)]
struct AddressTexts {
    texts: HashMap<IpAddr, Arc<str>>,
}

impl AddressTexts {
    const MAX: usize = 4096;

    fn text(&mut self, ip: IpAddr) -> Text {
        if self.texts.len() >= Self::MAX && !self.texts.contains_key(&ip) {
            self.texts.clear();
        }
        Text::Shared(Arc::clone(self.texts.entry(ip).or_insert_with(|| ip.to_string().into())))
    }
}

/// `server.address`/`server.port` from the Host header (what the client asked for), else the socket.
fn server_attributes(
    request: &RequestHead,
    local: Option<SocketAddr>,
    addresses: &mut AddressTexts,
    out: &mut Vec<KeyValue>,
) {
    let from_host = request.host.as_deref().and_then(split_host);
    match from_host {
        Some((host, port)) => {
            out.push(KeyValue::str("server.address", capped(host)));
            if let Some(port) = port.or(local.map(|l| l.port())) {
                out.push(KeyValue::int("server.port", port as i64));
            }
        }
        None => {
            if let Some(local) = local {
                out.push(KeyValue::str("server.address", addresses.text(local.ip())));
                out.push(KeyValue::int("server.port", local.port() as i64));
            }
        }
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

/// (path, query) of a request-target in origin form (`/a?b`) or absolute form (`http://h/a?b`).
fn split_target(target: &str) -> (&str, Option<&str>) {
    let without_fragment = target.split('#').next().unwrap_or("");
    let origin = match without_fragment.find("://") {
        Some(i) => {
            let after = &without_fragment[i + 3..];
            after.find('/').map_or("/", |p| &after[p..])
        }
        None => without_fragment,
    };
    match origin.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin, None),
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

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests;
