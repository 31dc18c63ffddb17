//! Metrics: RED histograms per traced process (`http.server.request.duration`,
//! `http.client.request.duration`), the service graph, and sonde's own health — derived from the
//! same finished exchanges as the spans, but for every request, sampled or not.
//!
//! ```text
//! intake thread: Pipeline::emit ──record──▶ Store (behind a mutex, locked per exchange)
//! export: otlp metrics task (every interval) ──collect──▶ ExportMetricsServiceRequest
//!         Prometheus endpoint (per scrape)    ──collect──▶ text exposition
//! ```
//!
//! Everything is cumulative (the OTLP SDKs' default temporality, and what Prometheus expects), and
//! bounded: routes per service (`route`), series per process and histogram (overflow series),
//! service-graph edges and waiting spans (`graph`).

pub mod graph;
pub mod histogram;
pub mod http;
pub mod model;
pub mod observe;
pub mod own;
pub mod route;

use foldhash::{HashMap, HashMapExt as _};
use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use self::{
    graph::{GraphSpan, ServiceGraph},
    http::HttpMetrics,
    model::ResourceMetrics,
    observe::Observation,
    own::{OwnSources, StoreCounts},
    route::{RoutePattern, Routes},
};
use crate::{
    conn::ConnInfo,
    http::Exchange,
    link::SpanContext,
    span::{
        assemble::AddressTexts,
        model::{Resource, SpanKind},
    },
};

#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// Route patterns that win over the heuristic (`--route`).
    pub routes: Vec<RoutePattern>,
    /// Distinct heuristic routes per service before new ones collapse to `/{overflow}`.
    pub max_routes_per_service: usize,
    /// Series per histogram per process before the rest go to the overflow series.
    pub max_series: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            // None given: the heuristic decides.
            routes: Vec::new(),
            // Far more than a typical service has, far less than one id per path would make.
            max_routes_per_service: 200,
            // The OTel SDKs' default cardinality limit.
            max_series: 2000,
        }
    }
}

/// Series of processes that exited are kept this long after their last request, so that their
/// final values are exported and scraped.
const KEEP_EXITED: Duration = Duration::from_secs(300);
const PROCESS_SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The metrics of this sonde: cheap to clone, shared by the intake thread and the exporters.
#[derive(Clone)]
pub struct Metrics {
    store: Arc<Mutex<Store>>,
    own: OwnSources,
    own_resource: Arc<Resource>,
    start_unix_ns: u64,
}

struct Store {
    http: HttpMetrics,
    graph: ServiceGraph,
    routes: Routes,
    addresses: AddressTexts,
    /// `service.name` per resource id, shared by graph edges.
    services: HashMap<u64, Arc<str>>,
    last_process_sweep: Instant,
}

impl Metrics {
    pub fn new(options: MetricsOptions, own: OwnSources) -> Self {
        let start_unix_ns = unix_ns_now();
        let store = Store {
            http: HttpMetrics::new(options.max_series),
            graph: ServiceGraph::new(start_unix_ns),
            routes: Routes::new(options.routes, options.max_routes_per_service),
            addresses: AddressTexts::default(),
            services: HashMap::new(),
            last_process_sweep: Instant::now(),
        };
        Self {
            store: Arc::new(Mutex::new(store)),
            own,
            own_resource: Arc::new(crate::process::own_resource()),
            start_unix_ns,
        }
    }

    /// Counts one finished exchange of process `conn.pid`, at `now` (one clock read per batch of
    /// exchanges is precise enough). `context` is its span's identity, for the service graph; None
    /// leaves it out of the graph (a process whose spans its SDK makes).
    ///
    /// Locks the store for this exchange only: an uncontended lock costs tens of nanoseconds, and
    /// the intake thread never holds it while it reads /proc or builds a span.
    pub fn record(
        &self,
        exchange: &Exchange,
        conn: &ConnInfo,
        resource: &Arc<Resource>,
        context: Option<&SpanContext>,
        now: Instant,
    ) {
        let mut store = self.lock();
        let store = &mut *store;
        let observation = Observation::new(exchange, conn, &mut store.addresses);
        store.http.record(conn.pid, resource, &observation, &mut store.routes, now);
        let service =
            store.services.entry(resource.id).or_insert_with(|| Arc::from(resource.service_name.as_str()));
        if **service != *resource.service_name {
            // Named again (its pod became known): the graph follows.
            *service = Arc::from(resource.service_name.as_str());
        }
        let Some(context) = context else { return };
        let span = GraphSpan {
            kind: match observation.kind {
                SpanKind::Server => graph::Kind::Server,
                SpanKind::Client => graph::Kind::Client,
            },
            span_id: context.span_id,
            parent_span_id: context.parent_span_id,
            service,
            duration_s: observation.duration_s,
            failed: observation.failed(),
            peer: observation.server.as_ref().map(|(address, _)| address),
        };
        store.graph.record(span, now);
    }

    /// Periodic upkeep (about once a second): ends service-graph waits, forgets exited processes.
    pub fn upkeep(&self, alive: impl Fn(u32) -> bool) {
        let mut store = self.lock();
        store.graph.expire(Instant::now());
        if store.last_process_sweep.elapsed() >= PROCESS_SWEEP_EVERY {
            store.last_process_sweep = Instant::now();
            store.http.sweep(KEEP_EXITED, alive);
            // Also forgets the names of processes evicted at the process limit.
            let Store { http, services, routes, .. } = &mut *store;
            services.retain(|id, _| http.has_process(*id));
            // Routes are per service name, which several processes may share.
            let live: std::collections::HashSet<&str> = services.values().map(|s| &**s).collect();
            routes.retain_services(|s| live.contains(s));
        }
    }

    /// Everything, as of now: the traced processes' RED metrics, then sonde's own resource with
    /// the service graph and its health.
    pub fn collect(&self) -> Vec<ResourceMetrics> {
        let mut out = Vec::new();
        let mut own = Vec::new();
        let counts = {
            let store = self.lock();
            store.http.collect(&mut out);
            store.graph.collect(&mut own);
            StoreCounts {
                series_overflowed: store.http.overflowed(),
                routes_overflowed: store.routes.overflowed(),
                processes_evicted: store.http.evicted(),
                graph_waiting: store.graph.waiting(),
            }
        };
        self.own.collect(self.start_unix_ns, Some(&counts), &mut own);
        out.push(ResourceMetrics { resource: Arc::clone(&self.own_resource), metrics: own });
        out
    }

    pub fn own_sources(&self) -> &OwnSources {
        &self.own
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves counts, not broken invariants: go on with them.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn unix_ns_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
