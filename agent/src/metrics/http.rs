//! RED metrics per traced process: `http.server.request.duration` and
//! `http.client.request.duration` histograms with the HTTP semantic conventions' attributes
//! (https://opentelemetry.io/docs/specs/semconv/http/http-metrics/). Every finished request is
//! counted, sampled or not.

use std::{collections::HashMap, hash::Hash, sync::Arc, time::Instant};

use super::{
    histogram::{HTTP_DURATION_BOUNDS, Histogram},
    model::{Metric, Point, ResourceMetrics},
    observe::Observation,
    route::Routes,
};
use crate::span::{
    assemble::protocol_version,
    model::{KeyValue, Resource, SpanKind, Text},
};

/// The attributes of one server series. `server.address`/`server.port` are Opt-In for server
/// metrics and left out: the Host header is the client's to choose, so it would let any client
/// mint series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerSeries {
    method: &'static str,
    /// 0: no response.
    status: u16,
    route: Arc<str>,
    scheme: &'static str,
    minor_version: u8,
}

/// The attributes of one client series (`server.address` and `server.port` are required there).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientSeries {
    method: &'static str,
    status: u16,
    server_address: Option<Text>,
    server_port: Option<u16>,
    minor_version: u8,
}

/// Histograms by attribute set, at most `limit` of them; past it, observations go to one
/// overflow series (`otel.metric.overflow=true`), as the OTel SDKs' cardinality limit does.
struct Series<K> {
    histograms: HashMap<K, Histogram>,
    overflow: Option<Histogram>,
}

impl<K: Eq + Hash> Series<K> {
    fn new() -> Self {
        Self { histograms: HashMap::new(), overflow: None }
    }

    /// Returns whether the observation went to the overflow series.
    fn record(&mut self, key: K, value: f64, limit: usize) -> bool {
        if let Some(h) = self.histograms.get_mut(&key) {
            h.record(value);
            return false;
        }
        let overflowed = self.histograms.len() >= limit;
        let histogram = if overflowed {
            self.overflow.get_or_insert_with(|| Histogram::new(HTTP_DURATION_BOUNDS))
        } else {
            self.histograms.entry(key).or_insert_with(|| Histogram::new(HTTP_DURATION_BOUNDS))
        };
        histogram.record(value);
        overflowed
    }

    fn points(&self, start_unix_ns: u64, attributes: impl Fn(&K) -> Vec<KeyValue>) -> Vec<Point<Histogram>> {
        let mut points: Vec<Point<Histogram>> = self
            .histograms
            .iter()
            .map(|(k, h)| Point { attributes: attributes(k), start_unix_ns, value: h.clone() })
            .collect();
        if let Some(h) = &self.overflow {
            let attributes = vec![KeyValue { key: "otel.metric.overflow".into(), value: bool_value(true) }];
            points.push(Point { attributes, start_unix_ns, value: h.clone() });
        }
        points
    }
}

fn bool_value(b: bool) -> crate::span::model::AttrValue {
    crate::span::model::AttrValue::Bool(b)
}

struct ProcessSeries {
    resource: Arc<Resource>,
    pid: u32,
    start_unix_ns: u64,
    last_update: Instant,
    server: Series<ServerSeries>,
    client: Series<ClientSeries>,
}

pub struct HttpMetrics {
    processes: HashMap<u64, ProcessSeries>,
    /// Series per histogram per process before the overflow series takes the rest.
    max_series: usize,
    overflowed: u64,
}

impl HttpMetrics {
    pub fn new(max_series: usize) -> Self {
        Self { processes: HashMap::new(), max_series: max_series.max(1), overflowed: 0 }
    }

    pub fn record(
        &mut self,
        pid: u32,
        resource: &Arc<Resource>,
        o: &Observation<'_>,
        routes: &mut Routes,
        now_unix_ns: u64,
    ) {
        let process = self.processes.entry(resource.id).or_insert_with(|| ProcessSeries {
            resource: Arc::clone(resource),
            pid,
            start_unix_ns: now_unix_ns,
            last_update: Instant::now(),
            server: Series::new(),
            client: Series::new(),
        });
        process.last_update = Instant::now();
        let status = o.status.unwrap_or(0);
        let overflowed = match o.kind {
            SpanKind::Server => {
                let route = routes.route(&resource.service_name, o.path);
                let key = ServerSeries {
                    method: o.method,
                    status,
                    route,
                    scheme: o.scheme,
                    minor_version: o.minor_version,
                };
                process.server.record(key, o.duration_s, self.max_series)
            }
            SpanKind::Client => {
                let (server_address, server_port) = match &o.server {
                    Some((address, port)) => (Some(address.clone()), *port),
                    None => (None, None),
                };
                let key = ClientSeries {
                    method: o.method,
                    status,
                    server_address,
                    server_port,
                    minor_version: o.minor_version,
                };
                process.client.record(key, o.duration_s, self.max_series)
            }
        };
        self.overflowed += u64::from(overflowed);
    }

    /// Observations that went to an overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Drops the series of processes that have exited and not been updated for `idle` (long
    /// enough for their last values to have been exported and scraped).
    pub fn sweep(&mut self, idle: std::time::Duration, alive: impl Fn(u32) -> bool) -> Vec<u64> {
        let mut gone = Vec::new();
        self.processes.retain(|&id, p| {
            let keep = p.last_update.elapsed() < idle || alive(p.pid);
            if !keep {
                gone.push(id);
            }
            keep
        });
        gone
    }

    pub fn collect(&self, out: &mut Vec<ResourceMetrics>) {
        for p in self.processes.values() {
            let mut metrics = Vec::with_capacity(2);
            let server = p.server.points(p.start_unix_ns, server_attributes);
            if !server.is_empty() {
                let mut m = Metric::histogram(
                    "http.server.request.duration",
                    "Duration of HTTP server requests.",
                    "s",
                );
                m.data = super::model::Data::Histogram(server);
                metrics.push(m);
            }
            let client = p.client.points(p.start_unix_ns, client_attributes);
            if !client.is_empty() {
                let mut m = Metric::histogram(
                    "http.client.request.duration",
                    "Duration of HTTP client requests.",
                    "s",
                );
                m.data = super::model::Data::Histogram(client);
                metrics.push(m);
            }
            out.push(ResourceMetrics { resource: Arc::clone(&p.resource), metrics });
        }
    }
}

fn common(out: &mut Vec<KeyValue>, kind: SpanKind, method: &'static str, status: u16, minor: u8) {
    out.push(KeyValue::str("http.request.method", method));
    if status != 0 {
        out.push(KeyValue::int("http.response.status_code", i64::from(status)));
    }
    let failed = status == 0 || crate::span::assemble::is_error_status(kind, status);
    if failed {
        let error =
            if status == 0 { Text::Static("connection_closed") } else { Text::Owned(status.to_string()) };
        out.push(KeyValue::str("error.type", error));
    }
    out.push(KeyValue::str("network.protocol.version", protocol_version(minor)));
}

fn server_attributes(k: &ServerSeries) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(6);
    common(&mut out, SpanKind::Server, k.method, k.status, k.minor_version);
    out.push(KeyValue::str("http.route", Text::Shared(Arc::clone(&k.route))));
    out.push(KeyValue::str("url.scheme", k.scheme));
    out
}

fn client_attributes(k: &ClientSeries) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(6);
    common(&mut out, SpanKind::Client, k.method, k.status, k.minor_version);
    if let Some(address) = &k.server_address {
        out.push(KeyValue::str("server.address", address.clone()));
    }
    if let Some(port) = k.server_port {
        out.push(KeyValue::int("server.port", i64::from(port)));
    }
    out
}
