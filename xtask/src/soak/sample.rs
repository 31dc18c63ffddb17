//! One look at sonde while the traffic runs: its RSS, its kernel maps' entry counts, its own
//! metrics, and how far the rest of the chain got (spans at the receiver, requests nginx answered,
//! responses the load generators got). Taking a sample costs a few bpftool runs and two HTTP
//! requests, none of them on a traced port.

use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::{bpf_maps, prometheus};
use crate::bench::{collector::Collector, nginx, procs};

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the traffic started.
    pub t_s: f64,
    /// sonde's `VmRSS`.
    pub rss_kib: u64,
    /// Entries in each watched kernel map.
    pub map_entries: BTreeMap<String, u64>,
    /// sonde's own metrics (prometheus::WATCHED), added up over their labels.
    pub metrics: BTreeMap<String, f64>,
    /// Spans that reached the counting receiver behind rotel.
    pub spans_received: u64,
    /// Requests nginx answered on the traced ports (its stub_status, less our own queries).
    pub nginx_served: u64,
    /// Responses the load generators' finished segments got.
    pub load_completed: u64,
}

impl Sample {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
}

pub struct Sampler<'a> {
    pub sonde_pid: u32,
    pub maps: Vec<bpf_maps::MapInfo>,
    pub prometheus: SocketAddr,
    pub collector: &'a Collector,
    status: nginx::Status,
    /// stub_status before the traffic (that query included); each later query adds one more.
    served_before: u64,
    /// Queries since `served_before`.
    queries: u64,
    start: Instant,
}

impl<'a> Sampler<'a> {
    pub fn new(
        sonde_pid: u32,
        prometheus: SocketAddr,
        collector: &'a Collector,
        status: nginx::Status,
    ) -> anyhow::Result<Sampler<'a>> {
        let maps = bpf_maps::watched_of(sonde_pid)?;
        anyhow::ensure!(
            !maps.is_empty(),
            "sonde (pid {sonde_pid}) holds none of the maps {:?}",
            bpf_maps::WATCHED
        );
        let served_before = status.requests().context("nginx's stub_status")?;
        Ok(Sampler {
            sonde_pid,
            maps,
            prometheus,
            collector,
            status,
            served_before,
            queries: 0,
            start: Instant::now(),
        })
    }

    /// Restarts the clock: `t_s` counts from when the traffic started.
    pub fn start_clock(&mut self) {
        self.start = Instant::now();
    }

    pub fn take(&mut self, load_completed: u64) -> anyhow::Result<Sample> {
        let t_s = self.start.elapsed().as_secs_f64();
        let rss_kib = procs::vm_kib(self.sonde_pid, "VmRSS")
            .with_context(|| format!("sonde (pid {}) is gone", self.sonde_pid))?;
        let mut map_entries = BTreeMap::new();
        for m in &self.maps {
            map_entries.insert(m.name.clone(), bpf_maps::entries(m.id)?);
        }
        let metrics = prometheus::scrape(self.prometheus)?;
        let requests = self.status.requests().context("nginx's stub_status")?;
        self.queries += 1;
        Ok(Sample {
            t_s,
            rss_kib,
            map_entries,
            metrics,
            spans_received: self.collector.received(),
            nginx_served: requests.saturating_sub(self.served_before + self.queries),
            load_completed,
        })
    }

    /// The table's header, matching `row`.
    pub fn header(&self) -> String {
        let mut s = format!("{:>6} {:>8}", "t s", "RSS MiB");
        for m in &self.maps {
            s.push_str(&format!(" {:>14}", m.name));
        }
        s.push_str(&format!(
            " {:>7} {:>10} {:>10} {:>7} {:>8} {:>7}",
            "tracked", "served", "spans", "compl%", "k-drops", "queue"
        ));
        s
    }

    /// One row; completeness is over the interval since `previous` (spans ÷ requests served).
    pub fn row(&self, s: &Sample, previous: Option<&Sample>) -> String {
        let mut r = format!("{:>6.0} {:>8.1}", s.t_s, s.rss_kib as f64 / 1024.0);
        for m in &self.maps {
            r.push_str(&format!(" {:>14}", s.map_entries.get(&m.name).copied().unwrap_or(0)));
        }
        let (spans0, served0) = previous.map_or((0, 0), |p| (p.spans_received, p.nginx_served));
        let served = s.nginx_served.saturating_sub(served0);
        let compl = if served == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", s.spans_received.saturating_sub(spans0) as f64 / served as f64 * 100.0)
        };
        let num = |name: &str| s.metric(name).map_or("-".to_owned(), |v| format!("{v:.0}"));
        r.push_str(&format!(
            " {:>7} {:>10} {:>10} {:>7} {:>8} {:>7}",
            num("sonde_connections_tracked"),
            s.nginx_served,
            s.spans_received,
            compl,
            num("sonde_kernel_events_dropped_total"),
            num("sonde_export_queue_size"),
        ));
        r
    }
}
