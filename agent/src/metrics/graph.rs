//! The service graph: requests, failures and durations per (client service, server service)
//! edge, from the spans sonde links on this host, named and shaped as the OpenTelemetry
//! Collector's `servicegraph` connector and Tempo's metrics generator emit them (a backend's
//! service map reads them as they are).
//!
//! An edge is a CLIENT span and the SERVER span whose parent it is. Which of the two finishes
//! first varies (the server answers before the client has read the answer, but events from two
//! processes reach sonde in any order), so each side waits for the other in a bounded store for up
//! to `WAIT`. When the time is up:
//! - a client without its server (a service on another host, or an untraced one) becomes an edge
//!   to a virtual node named after `server.address`, `connection_type="virtual_node"`;
//! - a server span whose parent never showed up is counted as unpaired;
//! - a server span without a parent is a request from outside: an edge from the client `user`.
//!
//! Both sides of an edge must be traced, so spans are paired before sampling: unsampled traces
//! count too.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};

use super::{
    histogram::{HTTP_DURATION_BOUNDS, Histogram},
    model::{Data, Metric, Point},
};
use crate::span::model::{KeyValue, SpanId, Text};

/// How long one side of an edge waits for the other.
pub const WAIT: Duration = Duration::from_secs(5);
/// Sides waiting, per kind; past it new ones are dropped and counted (a burst of unpaired spans
/// must not grow memory).
const MAX_WAITING: usize = 10_000;
/// Edges between two traced services, and edges to or from a virtual node, each; past it new
/// edges of that kind are dropped and counted. Separate budgets: a client calling thousands of
/// outside hosts must not leave no room for the edges between traced services.
const MAX_EDGES: usize = 10_000;
/// An edge with no request for this long is forgotten (its series end; if it comes back, it
/// starts again from zero with a new start time).
const EDGE_IDLE: Duration = Duration::from_secs(3600);
const EDGE_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One side of an edge, as it waits.
struct Side {
    service: Arc<str>,
    duration_s: f64,
    failed: bool,
    /// Client side: where it went (`server.address`), for a virtual node.
    peer: Option<Text>,
    at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EdgeKey {
    client: Arc<str>,
    server: Arc<str>,
    virtual_node: bool,
}

struct Edge {
    start_unix_ns: u64,
    last: Instant,
    requests: u64,
    failed: u64,
    server: Histogram,
    client: Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// What the graph needs of one span.
pub struct GraphSpan<'a> {
    pub kind: Kind,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub service: &'a Arc<str>,
    pub duration_s: f64,
    pub failed: bool,
    pub peer: Option<&'a Text>,
}

pub struct ServiceGraph {
    /// Client sides by their span id.
    clients: HashMap<SpanId, Side>,
    /// Server sides by their parent's span id.
    servers: HashMap<SpanId, Side>,
    edges: HashMap<EdgeKey, Edge>,
    /// Edges with `virtual_node` set, of `edges`.
    virtual_edges: usize,
    last_edge_sweep: Instant,
    start_unix_ns: u64,
    unpaired_clients: u64,
    unpaired_servers: u64,
    dropped: u64,
    user: Arc<str>,
}

impl ServiceGraph {
    pub fn new(start_unix_ns: u64) -> Self {
        Self {
            clients: HashMap::new(),
            servers: HashMap::new(),
            edges: HashMap::new(),
            virtual_edges: 0,
            last_edge_sweep: Instant::now(),
            start_unix_ns,
            unpaired_clients: 0,
            unpaired_servers: 0,
            dropped: 0,
            user: Arc::from("user"),
        }
    }

    pub fn record(&mut self, span: GraphSpan<'_>, now: Instant) {
        let side = Side {
            service: Arc::clone(span.service),
            duration_s: span.duration_s,
            failed: span.failed,
            peer: span.peer.cloned(),
            at: now,
        };
        match span.kind {
            Kind::Client => match self.servers.remove(&span.span_id) {
                Some(server) => self.edge(side, server),
                None => Self::wait(&mut self.clients, span.span_id, side, &mut self.dropped),
            },
            Kind::Server => match span.parent_span_id {
                None => {
                    let key = EdgeKey {
                        client: Arc::clone(&self.user),
                        server: Arc::clone(&side.service),
                        virtual_node: true,
                    };
                    self.add_edge(key, None, Some(&side), now);
                }
                Some(parent) => match self.clients.remove(&parent) {
                    Some(client) => self.edge(client, side),
                    None => Self::wait(&mut self.servers, parent, side, &mut self.dropped),
                },
            },
        }
    }

    fn wait(waiting: &mut HashMap<SpanId, Side>, id: SpanId, side: Side, dropped: &mut u64) {
        if waiting.len() >= MAX_WAITING {
            *dropped += 1;
        } else {
            waiting.insert(id, side);
        }
    }

    fn edge(&mut self, client: Side, server: Side) {
        let key = EdgeKey {
            client: Arc::clone(&client.service),
            server: Arc::clone(&server.service),
            virtual_node: false,
        };
        let now = client.at.max(server.at);
        self.add_edge(key, Some(&client), Some(&server), now);
    }

    /// Counts one request on `key`, with the measurements of the sides that were seen.
    fn add_edge(&mut self, key: EdgeKey, client: Option<&Side>, server: Option<&Side>, now: Instant) {
        if !self.edges.contains_key(&key) {
            let of_kind =
                if key.virtual_node { self.virtual_edges } else { self.edges.len() - self.virtual_edges };
            if of_kind >= MAX_EDGES {
                self.dropped += 1;
                return;
            }
            self.virtual_edges += usize::from(key.virtual_node);
        }
        let edge = self.edges.entry(key).or_insert_with(|| Edge {
            start_unix_ns: super::unix_ns_now(),
            last: now,
            requests: 0,
            failed: 0,
            server: Histogram::new(HTTP_DURATION_BOUNDS),
            client: Histogram::new(HTTP_DURATION_BOUNDS),
        });
        edge.last = edge.last.max(now);
        edge.requests += 1;
        edge.failed += u64::from(server.is_some_and(|s| s.failed) || client.is_some_and(|c| c.failed));
        if let Some(s) = server {
            edge.server.record(s.duration_s);
        }
        if let Some(c) = client {
            edge.client.record(c.duration_s);
        }
    }

    /// Ends the wait of sides older than `WAIT` (see the module doc).
    pub fn expire(&mut self, now: Instant) {
        let expired = |side: &Side| now.duration_since(side.at) >= WAIT;
        let clients: Vec<SpanId> =
            self.clients.iter().filter(|(_, s)| expired(s)).map(|(id, _)| *id).collect();
        for id in clients {
            let Some(client) = self.clients.remove(&id) else { continue };
            self.unpaired_clients += 1;
            if let Some(peer) = &client.peer {
                let key = EdgeKey {
                    client: Arc::clone(&client.service),
                    server: Arc::from(&**peer),
                    virtual_node: true,
                };
                self.add_edge(key, Some(&client), None, now);
            }
        }
        let before = self.servers.len();
        self.servers.retain(|_, s| !expired(s));
        self.unpaired_servers += (before - self.servers.len()) as u64;
        if now.saturating_duration_since(self.last_edge_sweep) >= EDGE_SWEEP_EVERY {
            self.last_edge_sweep = now;
            self.edges.retain(|_, e| now.saturating_duration_since(e.last) < EDGE_IDLE);
            self.virtual_edges = self.edges.keys().filter(|k| k.virtual_node).count();
        }
    }

    pub fn waiting(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    pub fn collect(&self, out: &mut Vec<Metric>) {
        let start = self.start_unix_ns;
        let mut requests = Metric::counter(
            "traces_service_graph_request_total",
            "Requests between two services, from linked client and server spans.",
            "{request}",
        );
        let mut failed = Metric::counter(
            "traces_service_graph_request_failed_total",
            "Failed requests between two services.",
            "{request}",
        );
        let mut server_points = Vec::new();
        let mut client_points = Vec::new();
        for (key, edge) in &self.edges {
            let attributes = edge_attributes(key);
            let start = edge.start_unix_ns;
            requests.push(attributes.clone(), start, edge.requests as f64);
            failed.push(attributes.clone(), start, edge.failed as f64);
            if edge.server.count() > 0 {
                server_points.push(Point {
                    attributes: attributes.clone(),
                    start_unix_ns: start,
                    value: edge.server.clone(),
                });
            }
            if edge.client.count() > 0 {
                client_points.push(Point { attributes, start_unix_ns: start, value: edge.client.clone() });
            }
        }
        let mut server = Metric::histogram(
            "traces_service_graph_request_server",
            "Duration of requests between two services, as the server measured them.",
            "s",
        );
        server.data = Data::Histogram(server_points);
        let mut client = Metric::histogram(
            "traces_service_graph_request_client",
            "Duration of requests between two services, as the client measured them.",
            "s",
        );
        client.data = Data::Histogram(client_points);
        let mut unpaired = Metric::counter(
            "traces_service_graph_unpaired_spans_total",
            "Client or server spans whose other side was not seen in time.",
            "{span}",
        );
        unpaired.push(vec![KeyValue::str("side", "client")], start, self.unpaired_clients as f64);
        unpaired.push(vec![KeyValue::str("side", "server")], start, self.unpaired_servers as f64);
        let mut dropped = Metric::counter(
            "traces_service_graph_dropped_spans_total",
            "Spans left out of the service graph because its bounds were reached.",
            "{span}",
        );
        dropped.push(Vec::new(), start, self.dropped as f64);
        out.extend([requests, failed, server, client, unpaired, dropped]);
    }
}

fn edge_attributes(key: &EdgeKey) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::str("client", Text::Shared(Arc::clone(&key.client))),
        KeyValue::str("server", Text::Shared(Arc::clone(&key.server))),
    ];
    if key.virtual_node {
        attributes.push(KeyValue::str("connection_type", "virtual_node"));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::AttrValue;

    struct Services {
        names: HashMap<&'static str, Arc<str>>,
    }

    impl Services {
        fn new() -> Self {
            Self { names: HashMap::new() }
        }
        fn get(&mut self, name: &'static str) -> Arc<str> {
            Arc::clone(self.names.entry(name).or_insert_with(|| Arc::from(name)))
        }
    }

    fn id(n: u8) -> SpanId {
        SpanId::from_bytes([n; 8])
    }

    fn client(
        graph: &mut ServiceGraph,
        service: &Arc<str>,
        span: u8,
        peer: &Text,
        failed: bool,
        at: Instant,
    ) {
        let span = GraphSpan {
            kind: Kind::Client,
            span_id: id(span),
            parent_span_id: None,
            service,
            duration_s: 0.2,
            failed,
            peer: Some(peer),
        };
        graph.record(span, at);
    }

    fn server(graph: &mut ServiceGraph, service: &Arc<str>, parent: Option<u8>, failed: bool, at: Instant) {
        let span = GraphSpan {
            kind: Kind::Server,
            span_id: id(200),
            parent_span_id: parent.map(id),
            service,
            duration_s: 0.1,
            failed,
            peer: None,
        };
        graph.record(span, at);
    }

    fn label(attributes: &[KeyValue], key: &str) -> String {
        match attributes.iter().find(|kv| kv.key == key).map(|kv| &kv.value) {
            Some(AttrValue::Str(t)) => t.to_string(),
            _ => String::new(),
        }
    }

    /// (client, server, connection_type, requests, failed, server durations, client durations).
    fn edges(graph: &ServiceGraph) -> Vec<(String, String, String, f64, f64, u64, u64)> {
        let mut metrics = Vec::new();
        graph.collect(&mut metrics);
        let find = |name: &str| metrics.iter().find(|m| m.name == name).unwrap().data.clone();
        let Data::Counter(requests) = find("traces_service_graph_request_total") else { panic!() };
        let Data::Counter(failed) = find("traces_service_graph_request_failed_total") else { panic!() };
        let Data::Histogram(server) = find("traces_service_graph_request_server") else { panic!() };
        let Data::Histogram(client) = find("traces_service_graph_request_client") else { panic!() };
        let key = |a: &[KeyValue]| (label(a, "client"), label(a, "server"), label(a, "connection_type"));
        let count = |points: &[Point<Histogram>], k: &(String, String, String)| {
            points.iter().find(|p| key(&p.attributes) == *k).map_or(0, |p| p.value.count())
        };
        let mut out: Vec<_> = requests
            .iter()
            .map(|p| {
                let k = key(&p.attributes);
                let f = failed.iter().find(|q| key(&q.attributes) == k).unwrap().value;
                let (s, c) = (count(&server, &k), count(&client, &k));
                (k.0, k.1, k.2, p.value, f, s, c)
            })
            .collect();
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out
    }

    fn edge(
        client: &str,
        server: &str,
        kind: &str,
        n: f64,
        failed: f64,
        s: u64,
        c: u64,
    ) -> (String, String, String, f64, f64, u64, u64) {
        (client.into(), server.into(), kind.into(), n, failed, s, c)
    }

    #[test]
    fn pairs_client_and_server_in_either_order() {
        let mut names = Services::new();
        let (shop, cart) = (names.get("shop"), names.get("cart"));
        let peer = Text::Static("cart.local");
        let mut graph = ServiceGraph::new(0);
        let now = Instant::now();
        client(&mut graph, &shop, 1, &peer, false, now);
        server(&mut graph, &cart, Some(1), false, now);
        server(&mut graph, &cart, Some(2), true, now);
        client(&mut graph, &shop, 2, &peer, false, now);
        assert_eq!(graph.waiting(), 0);
        assert_eq!(edges(&graph), vec![edge("shop", "cart", "", 2.0, 1.0, 2, 2)]);
    }

    #[test]
    fn a_root_server_span_is_a_request_from_the_user() {
        let mut names = Services::new();
        let shop = names.get("shop");
        let mut graph = ServiceGraph::new(0);
        server(&mut graph, &shop, None, false, Instant::now());
        assert_eq!(edges(&graph), vec![edge("user", "shop", "virtual_node", 1.0, 0.0, 1, 0)]);
    }

    #[test]
    fn unanswered_sides_expire_a_client_to_a_virtual_node() {
        let mut names = Services::new();
        let shop = names.get("shop");
        let cart = names.get("cart");
        let peer = Text::Static("payments.example");
        let mut graph = ServiceGraph::new(0);
        let then = Instant::now();
        client(&mut graph, &shop, 1, &peer, true, then);
        server(&mut graph, &cart, Some(9), false, then);
        graph.expire(then + WAIT / 2);
        assert_eq!(graph.waiting(), 2, "still within the wait");
        graph.expire(then + WAIT);
        assert_eq!(graph.waiting(), 0);
        assert_eq!(edges(&graph), vec![edge("shop", "payments.example", "virtual_node", 1.0, 1.0, 0, 1)]);
        assert_eq!((graph.unpaired_clients, graph.unpaired_servers), (1, 1));
    }

    #[test]
    fn virtual_nodes_leave_room_for_real_edges_and_idle_edges_go() {
        let mut names = Services::new();
        let (shop, cart) = (names.get("shop"), names.get("cart"));
        let mut graph = ServiceGraph::new(0);
        let then = Instant::now();
        // A client calling more outside hosts than the virtual-node budget.
        for host in 0..=MAX_EDGES {
            let peer = Text::Owned(format!("host-{host}.example"));
            client(&mut graph, &shop, 1, &peer, false, then);
            graph.expire(then + WAIT);
        }
        assert_eq!(graph.dropped, 1);
        client(&mut graph, &shop, 2, &Text::Static("cart"), false, then + WAIT);
        server(&mut graph, &cart, Some(2), false, then + WAIT);
        let real = EdgeKey { client: shop, server: cart, virtual_node: false };
        assert_eq!(graph.edges.get(&real).map(|e| e.requests), Some(1), "the real edge has room");
        assert_eq!(graph.edges.len(), MAX_EDGES + 1);

        graph.expire(then + WAIT + EDGE_IDLE);
        assert_eq!(edges(&graph), vec![], "no request for an hour: forgotten");
        assert_eq!(graph.virtual_edges, 0);
    }

    #[test]
    fn bounded_waiting_drops_and_counts() {
        let mut names = Services::new();
        let cart = names.get("cart");
        let mut graph = ServiceGraph::new(0);
        let now = Instant::now();
        for n in 0..=MAX_WAITING {
            let span = GraphSpan {
                kind: Kind::Server,
                span_id: id(1),
                parent_span_id: Some(SpanId::from(n as u64 + 1)),
                service: &cart,
                duration_s: 0.1,
                failed: false,
                peer: None,
            };
            graph.record(span, now);
        }
        assert_eq!(graph.waiting(), MAX_WAITING);
        assert_eq!(graph.dropped, 1);
    }
}
