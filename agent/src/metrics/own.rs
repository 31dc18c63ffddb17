//! sonde's own health as metrics: what the kernel dropped, what the pipeline saw and tracked, what
//! the exporters sent and lost, and what sonde costs (CPU, memory). Read from the counters each
//! stage already keeps, at collection time; nothing here runs per event.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use super::model::Metric;
use crate::{
    export::ExportStats,
    pipeline::PipelineStats,
    span::model::{KeyValue, Text},
};

/// Kernel drop counters, copied from the per-CPU map by the thread that holds the probes (the
/// map is not shared across threads), in `sonde_common::DropReason` order.
#[derive(Debug, Default)]
pub struct KernelCounters {
    pub dropped: [AtomicU64; KERNEL_DROP_REASONS.len()],
}

/// `reason` values of `sonde.kernel.events.dropped`, in `DropReason` order.
pub const KERNEL_DROP_REASONS: [&str; sonde_common::DROP_REASONS as usize] =
    ["ring_buffer_full", "connection_table_full", "copy_failed", "tls_without_socket"];

impl KernelCounters {
    pub fn publish(&self, drops: [u64; KERNEL_DROP_REASONS.len()]) {
        for (counter, value) in self.dropped.iter().zip(drops) {
            counter.store(value, Relaxed);
        }
    }
}

/// Counters of the metric exporters.
#[derive(Debug, Default)]
pub struct MetricsExportStats {
    /// Data points the OTLP collector accepted.
    pub points_exported: AtomicU64,
    /// Data points lost: export failed for good, or the collector rejected them.
    pub points_dropped: AtomicU64,
    /// Prometheus scrapes served.
    pub scrapes: AtomicU64,
}

/// Everything `collect` reads.
#[derive(Clone, Default)]
pub struct OwnSources {
    pub pipeline: Arc<PipelineStats>,
    pub export: Arc<ExportStats>,
    pub kernel: Arc<KernelCounters>,
    pub metrics_export: Arc<MetricsExportStats>,
}

/// What the metrics store adds about itself.
pub struct StoreCounts {
    pub series_overflowed: u64,
    pub routes_overflowed: u64,
    pub processes_evicted: u64,
    pub graph_waiting: usize,
}

impl OwnSources {
    pub fn collect(&self, start_unix_ns: u64, store: &StoreCounts, out: &mut Vec<Metric>) {
        let t = start_unix_ns;
        let load = |c: &AtomicU64| c.load(Relaxed) as f64;
        let reason = |r: &'static str| vec![KeyValue::str("reason", r)];

        let mut kernel = Metric::counter(
            "sonde.kernel.events.dropped",
            "Events the kernel programs could not hand to sonde (the traced process was never held up).",
            "{event}",
        );
        for (counter, name) in self.kernel.dropped.iter().zip(KERNEL_DROP_REASONS) {
            kernel.push(reason(name), t, load(counter));
        }

        let p = &self.pipeline;
        let mut events =
            Metric::counter("sonde.events.received", "Events read from the ring buffer.", "{event}");
        events.push(Vec::new(), t, load(&p.events));
        let mut lost = Metric::counter(
            "sonde.events.lost",
            "Events sonde received but could not use, by reason.",
            "{event}",
        );
        lost.push(reason("undecodable"), t, load(&p.decode_errors))
            .push(reason("sequence_gap"), t, load(&p.sequence_gaps))
            .push(reason("data_without_open"), t, load(&p.data_without_open));
        let mut parse = Metric::counter(
            "sonde.http.parse_errors",
            "Bytes on a traced connection that were not valid HTTP/1.x where a message had to be.",
            "{error}",
        );
        parse.push(Vec::new(), t, load(&p.parse_errors));
        let mut conns = Metric::gauge(
            "sonde.connections.tracked",
            "TCP connections sonde holds state for.",
            "{connection}",
        );
        conns.push(Vec::new(), t, load(&p.connections));
        let mut spans =
            Metric::counter("sonde.spans.created", "Spans made from HTTP exchanges, by kind.", "{span}");
        spans.push(vec![KeyValue::str("span.kind", "server")], t, load(&p.server_spans)).push(
            vec![KeyValue::str("span.kind", "client")],
            t,
            load(&p.client_spans),
        );
        let mut unparented = Metric::counter(
            "sonde.spans.unparented",
            "Client spans given no in-process parent: their process, whose threads are shared by \
             requests, was serving several at once (by why its threads count as shared).",
            "{span}",
        );
        for (counter, why) in p.unparented_shared.iter().zip(crate::link::SharedThreads::ALL) {
            unparented.push(reason(why.as_str()), t, load(counter));
        }
        let mut unsampled = Metric::counter(
            "sonde.spans.unsampled",
            "Exchanges whose trace the caller marked as not sampled (counted in metrics, no span).",
            "{span}",
        );
        unsampled.push(Vec::new(), t, load(&p.unsampled));

        let e = &self.export;
        let mut exported =
            Metric::counter("sonde.spans.exported", "Spans the OTLP collector accepted.", "{span}");
        exported.push(Vec::new(), t, load(&e.spans_exported));
        let mut dropped =
            Metric::counter("sonde.spans.dropped", "Spans lost on the way out, by reason.", "{span}");
        dropped
            .push(reason("queue_full"), t, load(&e.spans_dropped_queue_full))
            .push(reason("export_failed"), t, load(&e.spans_dropped_export_failed))
            .push(reason("rejected_by_collector"), t, load(&e.spans_rejected_by_collector))
            .push(reason("after_shutdown"), t, load(&e.spans_dropped_after_shutdown))
            .push(reason("print_queue_full"), t, load(&e.spans_dropped_print_queue_full));
        let mut queue = Metric::gauge("sonde.export.queue.size", "Spans waiting for OTLP export.", "{span}");
        queue.push(Vec::new(), t, e.queue_depth() as f64);

        let m = &self.metrics_export;
        let mut points = Metric::counter(
            "sonde.metric_points.exported",
            "Metric data points the OTLP collector accepted.",
            "{point}",
        );
        points.push(Vec::new(), t, load(&m.points_exported));
        let mut points_dropped = Metric::counter(
            "sonde.metric_points.dropped",
            "Metric data points lost: an export that failed for good, or rejected by the collector.",
            "{point}",
        );
        points_dropped.push(Vec::new(), t, load(&m.points_dropped));
        let mut scrapes = Metric::counter(
            "sonde.prometheus.scrapes",
            "Requests for /metrics served by the Prometheus endpoint.",
            "{scrape}",
        );
        scrapes.push(Vec::new(), t, load(&m.scrapes));
        let mut overflow = Metric::counter(
            "sonde.metrics.overflowed",
            "Requests counted in an overflow series (`otel.metric.overflow`) or route (`/{overflow}`) \
             because a cardinality limit was reached.",
            "{request}",
        );
        overflow.push(vec![KeyValue::str("limit", "series")], t, store.series_overflowed as f64).push(
            vec![KeyValue::str("limit", "routes")],
            t,
            store.routes_overflowed as f64,
        );
        let mut evicted = Metric::counter(
            "sonde.metrics.processes.evicted",
            "Processes whose RED series were forgotten to stay within the process limit (the least \
             recently updated go first).",
            "{process}",
        );
        evicted.push(Vec::new(), t, store.processes_evicted as f64);

        let mut waiting = Metric::gauge(
            "sonde.service_graph.waiting",
            "Client and server spans waiting for the other side of their service-graph edge.",
            "{span}",
        );
        waiting.push(Vec::new(), t, store.graph_waiting as f64);

        out.extend([
            waiting,
            kernel,
            events,
            lost,
            parse,
            conns,
            spans,
            unparented,
            unsampled,
            exported,
            dropped,
            queue,
            points,
            points_dropped,
            scrapes,
            overflow,
            evicted,
        ]);
        out.extend(process_usage(t));
    }
}

/// `process.cpu.time` (user and system) and `process.memory.usage` (resident) of sonde, per the
/// OTel process conventions.
fn process_usage(start_unix_ns: u64) -> Vec<Metric> {
    let mut out = Vec::new();
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if let Some((user, system)) =
        std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(cpu_ticks)
        && ticks > 0
    {
        let mut cpu = Metric::counter("process.cpu.time", "CPU time sonde used.", "s");
        let state = |s: &'static str| vec![KeyValue::str("cpu.mode", Text::Static(s))];
        cpu.push(state("user"), start_unix_ns, user as f64 / ticks as f64).push(
            state("system"),
            start_unix_ns,
            system as f64 / ticks as f64,
        );
        out.push(cpu);
    }
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()));
    if let Some(pages) = resident
        && page > 0
    {
        let mut rss = Metric::gauge("process.memory.usage", "sonde's resident memory.", "By");
        rss.push(Vec::new(), start_unix_ns, (pages * page as u64) as f64);
        out.push(rss);
    }
    out
}

/// (utime, stime) in clock ticks from `/proc/PID/stat` (fields 14 and 15; the command name,
/// field 2, may hold spaces and parentheses, so fields are counted after its last `)`).
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100 1000 50";
        assert_eq!(cpu_ticks(stat), Some((17, 5)));
        assert_eq!(cpu_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&own).is_some());
    }
}
