//! sonde's own metrics, scraped from its Prometheus endpoint (`--prometheus-listen`) the way
//! Prometheus would, and reduced to one number per metric name (series added up over labels).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::Context as _;

/// The metrics the soak follows (docs/metrics.md, agent/src/metrics/own.rs).
pub const WATCHED: &[&str] = &[
    "sonde_connections_tracked",
    "sonde_kernel_events_dropped_total",
    "sonde_events_received_total",
    "sonde_events_lost_total",
    "sonde_http_parse_errors_total",
    "sonde_spans_created_total",
    "sonde_spans_exported_total",
    "sonde_spans_dropped_total",
    "sonde_export_queue_size",
    "sonde_service_graph_waiting",
    "process_memory_usage_bytes",
];

/// The watched metrics `addr` serves now (a metric sonde does not serve is left out).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to sonde's Prometheus endpoint {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response).context("reading /metrics")?;
    let (head, body) = response.split_once("\r\n\r\n").context("/metrics: no end of head")?;
    anyhow::ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "/metrics: {head}");
    Ok(sums(body))
}

/// `name{labels} value` lines → name → sum of values, for the watched names.
fn sums(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        // Label values may hold spaces: the value follows the closing brace.
        let (name, rest) = match line.split_once('{') {
            Some((name, _)) => (name, line.rsplit_once('}').map_or("", |(_, r)| r)),
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if WATCHED.contains(&name) {
            *out.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_add_up_over_labels() {
        let body = "# HELP sonde_kernel_events_dropped_total x\n\
                    sonde_kernel_events_dropped_total{reason=\"ring buffer\"} 3\n\
                    sonde_kernel_events_dropped_total{reason=\"copy_failed\"} 4 1700000000\n\
                    sonde_connections_tracked 12\n\
                    something_else 9\n";
        let m = super::sums(body);
        assert_eq!(m["sonde_kernel_events_dropped_total"], 7.0);
        assert_eq!(m["sonde_connections_tracked"], 12.0);
        assert!(!m.contains_key("something_else"));
    }
}
