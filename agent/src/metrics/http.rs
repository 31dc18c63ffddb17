//! RED metrics per traced process: `http.server.request.duration` and
//! `http.client.request.duration` histograms with the HTTP semantic conventions' attributes
//! (https://opentelemetry.io/docs/specs/semconv/http/http-metrics/). Every finished request is
//! counted, sampled or not.

use std::{hash::Hash, sync::Arc, time::Instant};

use foldhash::{HashMap, HashMapExt as _};

use super::{
    histogram::{HTTP_DURATION_BOUNDS, Histogram},
    model::{Metric, Point, ResourceMetrics},
    observe::Observation,
    route::Routes,
};
use crate::{
    semconv::{attr, metric},
    span::{
        assemble::protocol_version,
        model::{KeyValue, Resource, SpanKind, Text},
    },
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

    /// Where the observation went. `room` is false when no new series may be made (the limit
    /// across all processes is reached).
    fn record(&mut self, key: K, value: f64, limit: usize, room: bool) -> Recorded {
        if let Some(h) = self.histograms.get_mut(&key) {
            h.record(value);
            return Recorded::Existing;
        }
        if !room || self.histograms.len() >= limit {
            let new = self.overflow.is_none();
            self.overflow.get_or_insert_with(|| Histogram::new(HTTP_DURATION_BOUNDS)).record(value);
            return Recorded::Overflow { new };
        }
        let mut histogram = Histogram::new(HTTP_DURATION_BOUNDS);
        histogram.record(value);
        self.histograms.insert(key, histogram);
        Recorded::New
    }

    /// Series held, the overflow series included.
    fn len(&self) -> usize {
        self.histograms.len() + usize::from(self.overflow.is_some())
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

enum Recorded {
    Existing,
    New,
    /// `new`: the overflow series itself was made for it.
    Overflow {
        new: bool,
    },
}

impl Recorded {
    fn made_series(&self) -> bool {
        matches!(self, Recorded::New | Recorded::Overflow { new: true })
    }
}

fn bool_value(b: bool) -> crate::span::model::AttrValue {
    crate::span::model::AttrValue::Bool(b)
}

impl ProcessSeries {
    fn series(&self) -> usize {
        self.server.len() + self.client.len()
    }
}

struct ProcessSeries {
    resource: Arc<Resource>,
    pid: u32,
    start_unix_ns: u64,
    last_update: Instant,
    server: Series<ServerSeries>,
    client: Series<ClientSeries>,
}

/// Series across all processes (a few hundred bytes each); past it, new attribute sets of any
/// process go to that process's overflow series.
pub const MAX_TOTAL_SERIES: usize = 50_000;

/// Processes with series at once. Short-lived clients (a curl per request) each get a resource
/// of their own; past this many, the least recently updated process's series are forgotten —
/// almost always one that has exited and been exported already.
pub const MAX_PROCESSES: usize = 4096;

pub struct HttpMetrics {
    processes: HashMap<u64, ProcessSeries>,
    /// Series per histogram per process before the overflow series takes the rest.
    max_series: usize,
    max_processes: usize,
    /// Series held, all processes.
    total_series: usize,
    max_total_series: usize,
    overflowed: u64,
    evicted: u64,
}

impl HttpMetrics {
    pub fn new(max_series: usize) -> Self {
        Self::with_max_processes(max_series, MAX_PROCESSES)
    }

    fn with_max_processes(max_series: usize, max_processes: usize) -> Self {
        Self::with_limits(max_series, max_processes, MAX_TOTAL_SERIES)
    }

    fn with_limits(max_series: usize, max_processes: usize, max_total_series: usize) -> Self {
        Self {
            processes: HashMap::new(),
            max_series: max_series.max(1),
            max_processes: max_processes.max(1),
            total_series: 0,
            max_total_series,
            overflowed: 0,
            evicted: 0,
        }
    }

    pub fn record(
        &mut self,
        pid: u32,
        resource: &Arc<Resource>,
        o: &Observation<'_>,
        routes: &mut Routes,
        now: Instant,
    ) {
        if !self.processes.contains_key(&resource.id) && self.processes.len() >= self.max_processes {
            self.evict_least_recent();
        }
        let process = self.processes.entry(resource.id).or_insert_with(|| ProcessSeries {
            resource: Arc::clone(resource),
            pid,
            // Read only for a new process: it is the start time of all its series.
            start_unix_ns: super::unix_ns_now(),
            last_update: now,
            server: Series::new(),
            client: Series::new(),
        });
        process.last_update = now;
        // Rebuilt (its pod became known, say): the series carry the resource as it is now.
        if !Arc::ptr_eq(&process.resource, resource) {
            process.resource = Arc::clone(resource);
        }
        let status = o.status.unwrap_or(0);
        let room = self.total_series < self.max_total_series;
        let recorded = match o.kind {
            SpanKind::Server => {
                // Only answered requests that were not the client's fault may add a route.
                let admit = o.status.is_some_and(|code| !(400..500).contains(&code));
                let route = routes.route(&resource.service_name, o.path, admit);
                let key = ServerSeries {
                    method: o.method,
                    status,
                    route,
                    scheme: o.scheme,
                    minor_version: o.minor_version,
                };
                process.server.record(key, o.duration_s, self.max_series, room)
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
                process.client.record(key, o.duration_s, self.max_series, room)
            }
        };
        self.overflowed += u64::from(matches!(recorded, Recorded::Overflow { .. }));
        self.total_series += usize::from(recorded.made_series());
    }

    /// A linear scan, but only when a new process arrives at the cap.
    fn evict_least_recent(&mut self) {
        let oldest = self.processes.iter().min_by_key(|(_, p)| p.last_update).map(|(&id, _)| id);
        if let Some(p) = oldest.and_then(|id| self.processes.remove(&id)) {
            self.total_series -= p.series();
            self.evicted += 1;
        }
    }

    /// Processes whose series were forgotten to make room for new ones.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Observations that went to an overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    pub fn has_process(&self, id: u64) -> bool {
        self.processes.contains_key(&id)
    }

    /// Drops the series of processes that have exited and not been updated for `idle` (long
    /// enough for their last values to have been exported and scraped).
    pub fn sweep(&mut self, idle: std::time::Duration, alive: impl Fn(u32) -> bool) {
        let total = &mut self.total_series;
        self.processes.retain(|_, p| {
            let keep = p.last_update.elapsed() < idle || alive(p.pid);
            if !keep {
                *total -= p.series();
            }
            keep
        });
    }

    pub fn collect(&self, out: &mut Vec<ResourceMetrics>) {
        for p in self.processes.values() {
            let mut metrics = Vec::with_capacity(2);
            let server = p.server.points(p.start_unix_ns, server_attributes);
            if !server.is_empty() {
                let mut m = Metric::histogram(
                    metric::HTTP_SERVER_REQUEST_DURATION,
                    "Duration of HTTP server requests.",
                    "s",
                );
                m.data = super::model::Data::Histogram(server);
                metrics.push(m);
            }
            let client = p.client.points(p.start_unix_ns, client_attributes);
            if !client.is_empty() {
                let mut m = Metric::histogram(
                    metric::HTTP_CLIENT_REQUEST_DURATION,
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
    out.push(KeyValue::str(attr::HTTP_REQUEST_METHOD, method));
    if status != 0 {
        out.push(KeyValue::int(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
    }
    let failed = status == 0 || crate::span::assemble::is_error_status(kind, status);
    if failed {
        let error =
            if status == 0 { Text::Static("connection_closed") } else { Text::Owned(status.to_string()) };
        out.push(KeyValue::str(attr::ERROR_TYPE, error));
    }
    out.push(KeyValue::str(attr::NETWORK_PROTOCOL_VERSION, protocol_version(minor)));
}

fn server_attributes(k: &ServerSeries) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(6);
    common(&mut out, SpanKind::Server, k.method, k.status, k.minor_version);
    out.push(KeyValue::str(attr::HTTP_ROUTE, Text::Shared(Arc::clone(&k.route))));
    out.push(KeyValue::str(attr::URL_SCHEME, k.scheme));
    out
}

fn client_attributes(k: &ClientSeries) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(6);
    common(&mut out, SpanKind::Client, k.method, k.status, k.minor_version);
    if let Some(address) = &k.server_address {
        out.push(KeyValue::str(attr::SERVER_ADDRESS, address.clone()));
    }
    if let Some(port) = k.server_port {
        out.push(KeyValue::int(attr::SERVER_PORT, i64::from(port)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::model::Data, span::model::AttrValue};

    fn resource(id: u64, name: &str) -> Arc<Resource> {
        Arc::new(Resource { id, service_name: name.into(), attributes: vec![] })
    }

    fn server(method: &'static str, path: &'static str, status: Option<u16>) -> Observation<'static> {
        Observation {
            kind: SpanKind::Server,
            method,
            status,
            scheme: "http",
            minor_version: 1,
            server: None,
            path,
            duration_s: 0.003,
        }
    }

    fn client(address: &'static str, port: u16, status: u16) -> Observation<'static> {
        Observation {
            kind: SpanKind::Client,
            method: "GET",
            status: Some(status),
            scheme: "http",
            minor_version: 1,
            server: Some((Text::Static(address), Some(port))),
            path: "/",
            duration_s: 0.2,
        }
    }

    fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AttrValue> {
        attributes.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
    }

    fn text(value: Option<&AttrValue>) -> Option<String> {
        match value? {
            AttrValue::Str(t) => Some(t.to_string()),
            AttrValue::Int(i) => Some(i.to_string()),
            AttrValue::Bool(b) => Some(b.to_string()),
        }
    }

    /// (metric name, route or server.address, status, error.type, count) per series.
    fn series(metrics: &HttpMetrics) -> Vec<(&'static str, String, String, Option<String>, u64)> {
        let mut out = Vec::new();
        let mut resources = Vec::new();
        metrics.collect(&mut resources);
        for r in &resources {
            for m in &r.metrics {
                let Data::Histogram(points) = &m.data else { panic!("{} is not a histogram", m.name) };
                for p in points {
                    let a = &p.attributes;
                    let what = text(attr(a, "http.route"))
                        .or_else(|| text(attr(a, "server.address")))
                        .or_else(|| text(attr(a, "otel.metric.overflow")).map(|_| "overflow".into()))
                        .unwrap_or_default();
                    let status = text(attr(a, "http.response.status_code")).unwrap_or_default();
                    out.push((m.name, what, status, text(attr(a, "error.type")), p.value.count()));
                }
            }
        }
        out.sort();
        out
    }

    const UNMATCHED: &str = crate::metrics::route::UNMATCHED_ROUTE;

    fn closed() -> Option<String> {
        Some("connection_closed".into())
    }

    #[test]
    fn counts_each_request_in_its_series_with_routes_templated() {
        let mut metrics = HttpMetrics::new(100);
        let mut routes = Routes::new(Vec::new(), 100);
        let shop = resource(1, "shop");
        for path in ["/users/1", "/users/22", "/users/333"] {
            metrics.record(10, &shop, &server("GET", path, Some(200)), &mut routes, Instant::now());
        }
        metrics.record(10, &shop, &server("GET", "/users/4", Some(404)), &mut routes, Instant::now());
        metrics.record(10, &shop, &server("POST", "/orders", Some(500)), &mut routes, Instant::now());
        metrics.record(10, &shop, &server("GET", "/slow", None), &mut routes, Instant::now());
        metrics.record(10, &shop, &server("GET", "/wp-login.php", Some(404)), &mut routes, Instant::now());
        metrics.record(10, &shop, &client("db.local", 5984, 503), &mut routes, Instant::now());
        assert_eq!(
            series(&metrics),
            vec![
                ("http.client.request.duration", "db.local".into(), "503".into(), Some("503".into()), 1),
                ("http.server.request.duration", "/orders".into(), "500".into(), Some("500".into()), 1),
                ("http.server.request.duration", "/users/{id}".into(), "200".into(), None, 3),
                // A 404 is not a server error (it is for a client: see the client series).
                ("http.server.request.duration", "/users/{id}".into(), "404".into(), None, 1),
                // Unanswered or 4xx, on a path that never succeeded: may not mint a route.
                ("http.server.request.duration", UNMATCHED.into(), String::new(), closed(), 1),
                ("http.server.request.duration", UNMATCHED.into(), "404".into(), None, 1),
            ]
        );
    }

    #[test]
    fn series_past_the_limit_go_to_the_overflow_series() {
        let mut metrics = HttpMetrics::new(2);
        let mut routes = Routes::new(Vec::new(), 100);
        let shop = resource(1, "shop");
        for status in [200, 201, 202, 203, 200] {
            metrics.record(10, &shop, &server("GET", "/", Some(status)), &mut routes, Instant::now());
        }
        let got = series(&metrics);
        assert_eq!(got.iter().map(|s| s.4).sum::<u64>(), 5, "every request counted: {got:?}");
        assert_eq!(got.iter().find(|s| s.1 == "overflow").map(|s| s.4), Some(2), "{got:?}");
        assert_eq!(metrics.overflowed(), 2);
    }

    #[test]
    fn series_past_the_limit_across_processes_overflow_and_free_up_when_processes_go() {
        let mut metrics = HttpMetrics::with_limits(100, 100, 3);
        let mut routes = Routes::new(Vec::new(), 100);
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        for status in [200, 201] {
            metrics.record(1, &a, &server("GET", "/", Some(status)), &mut routes, Instant::now());
        }
        metrics.record(2, &b, &server("GET", "/", Some(200)), &mut routes, Instant::now());
        // Three series held: b's next attribute set overflows, its existing one still counts.
        metrics.record(2, &b, &server("GET", "/", Some(202)), &mut routes, Instant::now());
        metrics.record(2, &b, &server("GET", "/", Some(200)), &mut routes, Instant::now());
        assert_eq!(metrics.overflowed(), 1);
        let got = series(&metrics);
        assert_eq!(got.iter().map(|s| s.4).sum::<u64>(), 5, "{got:?}");
        // `a` exits: its two series are freed for others.
        metrics.sweep(std::time::Duration::ZERO, |pid| pid == 2);
        metrics.record(2, &b, &server("GET", "/", Some(203)), &mut routes, Instant::now());
        assert_eq!(metrics.overflowed(), 1, "room again");
    }

    #[test]
    fn processes_past_the_limit_evict_the_least_recently_updated() {
        let mut metrics = HttpMetrics::with_max_processes(100, 2);
        let mut routes = Routes::new(Vec::new(), 100);
        let (a, b, c) = (resource(1, "a"), resource(2, "b"), resource(3, "c"));
        metrics.record(1, &a, &server("GET", "/", Some(200)), &mut routes, Instant::now());
        metrics.record(2, &b, &server("GET", "/", Some(200)), &mut routes, Instant::now());
        // `a` is updated again, so `b` is the least recent when `c` arrives.
        std::thread::sleep(std::time::Duration::from_millis(2));
        metrics.record(1, &a, &server("GET", "/", Some(200)), &mut routes, Instant::now());
        metrics.record(3, &c, &server("GET", "/", Some(200)), &mut routes, Instant::now());
        assert_eq!(metrics.processes(), 2);
        assert!(metrics.has_process(1) && metrics.has_process(3) && !metrics.has_process(2));
        assert_eq!(metrics.evicted(), 1);
    }

    #[test]
    fn sweep_forgets_exited_idle_processes_only() {
        let mut metrics = HttpMetrics::new(100);
        let mut routes = Routes::new(Vec::new(), 100);
        metrics.record(1, &resource(1, "a"), &server("GET", "/", Some(200)), &mut routes, Instant::now());
        metrics.record(2, &resource(2, "b"), &server("GET", "/", Some(200)), &mut routes, Instant::now());
        metrics.sweep(std::time::Duration::ZERO, |pid| pid == 1);
        assert!(metrics.has_process(1) && !metrics.has_process(2));
        metrics.sweep(std::time::Duration::from_secs(60), |_| false);
        assert!(metrics.has_process(1), "recently updated: kept until its values are exported");
    }
}
