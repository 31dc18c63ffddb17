//! sonde's own health as metrics: what the kernel dropped, what the pipeline saw and tracked, what
//! the exporters sent and lost, and what sonde costs (CPU, memory). Read from the counters each
//! stage already keeps, at collection time; nothing here runs per event.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use sonde_common::KernelCount;

use super::model::{Data, Metric};
use crate::{
    export::ExportStats,
    pipeline::PipelineStats,
    semconv::metric,
    span::model::{AttrValue, KeyValue, Text},
};

/// Kernel counters, copied from the per-CPU maps by the thread that holds the probes (the maps
/// are not shared across threads): drops in `sonde_common::DropReason` order, the rest in
/// `sonde_common::KernelCount` order.
#[derive(Debug, Default)]
pub struct KernelCounters {
    pub dropped: [AtomicU64; KERNEL_DROP_REASONS.len()],
    pub counts: [AtomicU64; sonde_common::KERNEL_COUNTS as usize],
}

/// One reading of the kernel's counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelReading {
    pub drops: [u64; KERNEL_DROP_REASONS.len()],
    pub counts: [u64; sonde_common::KERNEL_COUNTS as usize],
}

/// `reason` values of `sonde.kernel.events.dropped`, in `DropReason` order.
pub const KERNEL_DROP_REASONS: [&str; sonde_common::DROP_REASONS as usize] =
    ["ring_buffer_full", "connection_table_full", "copy_failed", "tls_without_socket"];

impl KernelCounters {
    pub fn publish(&self, reading: KernelReading) {
        for (counter, value) in self.dropped.iter().zip(reading.drops) {
            counter.store(value, Relaxed);
        }
        for (counter, value) in self.counts.iter().zip(reading.counts) {
            counter.store(value, Relaxed);
        }
    }

    fn count(&self, what: KernelCount) -> f64 {
        self.counts[what as usize].load(Relaxed) as f64
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
    /// Every one of sonde's own metrics, each described once: what OTLP and Prometheus export and
    /// what the periodic log line prints ([`log_line`]). `store`: the metrics store's own counts,
    /// when there is a store (metrics are wanted).
    pub fn collect(&self, start_unix_ns: u64, store: Option<&StoreCounts>, out: &mut Vec<Metric>) {
        let t = start_unix_ns;
        let reason = |r: &'static str| vec![KeyValue::str("reason", r)];
        let kind = |k: &'static str| vec![KeyValue::str("kind", k)];
        let p = self.pipeline.read();
        let e = &self.export;
        let load = |c: &AtomicU64| c.load(Relaxed) as f64;

        let mut kernel = Metric::counter(
            "sonde.kernel.events.dropped",
            "Events the kernel programs could not hand to sonde (the traced process was never held up).",
            "{event}",
        );
        for (counter, name) in self.kernel.dropped.iter().zip(KERNEL_DROP_REASONS) {
            kernel.push(reason(name), t, load(counter));
        }
        let k = &self.kernel;
        let mut copied = Metric::counter(
            "sonde.kernel.copied",
            "Payload bytes the kernel programs copied for sonde, a cost paid by the traced threads.",
            "By",
        );
        copied.push(Vec::new(), t, k.count(KernelCount::BytesCopied));
        let mut not_copied = Metric::counter(
            "sonde.kernel.not_copied",
            "Bytes that moved on connections sonde does not parse, which the kernel programs no longer \
             copy.",
            "By",
        );
        not_copied.push(Vec::new(), t, k.count(KernelCount::BytesNotCopied));
        let mut body_skipped = Metric::counter(
            "sonde.kernel.body_skipped",
            "Body bytes whose length sonde knew from the message's framing, moved without an event \
             (the kernel was told where the body ends).",
            "By",
        );
        body_skipped.push(Vec::new(), t, k.count(KernelCount::BodyBytesSkipped));
        let mut goroutines_unread = Metric::counter(
            "sonde.kernel.goroutines_unread",
            "Reads of a followed Go program's running goroutine that found no saved user registers where \
             sonde looks for them without bpf_task_pt_regs (kernels before 5.15): that work had no \
             in-process parent.",
            "{read}",
        );
        goroutines_unread.push(Vec::new(), t, k.count(KernelCount::GoroutinesUnread));
        let mut not_parsed = Metric::counter(
            "sonde.connections.not_parsed",
            "Connections whose bytes stopped being copied, by who decided: first_bytes (the kernel: the \
             first bytes of a direction start no message sonde parses), agent (sonde, after reading \
             them: not selected, not a protocol it parses, TLS that no hook decrypts).",
            "{connection}",
        );
        not_parsed.push(reason("first_bytes"), t, k.count(KernelCount::ConnsRefusedByFirstBytes)).push(
            reason("agent"),
            t,
            p.kernel_verdicts as f64,
        );
        let mut tcp_options = Metric::counter(
            "sonde.propagation.tcp_options",
            "Trace contexts in TCP options (--context-propagation tcp), by outcome: written (on the \
             segment a request began), not_written (no segment began at the request, or it had no \
             option room), received (read from a segment), matched (given to the request that began \
             there).",
            "{context}",
        );
        let outcome = |o: &'static str| vec![KeyValue::str("outcome", o)];
        tcp_options
            .push(outcome("written"), t, k.count(KernelCount::OptionsWritten))
            .push(outcome("not_written"), t, k.count(KernelCount::OptionsNotWritten))
            .push(outcome("received"), t, k.count(KernelCount::OptionsReceived))
            .push(outcome("matched"), t, k.count(KernelCount::OptionsMatched));
        let mut headers = Metric::counter(
            "sonde.propagation.headers",
            "Requests given a traceparent header (--context-propagation headers), and those left as \
             written, by outcome: injected, not_whole_head (the send that began the head did not hold \
             all of it, or the head is longer than 1 KiB), already_present (the head has a \
             traceparent: the receiver follows it), forwarded (the head forwards the one its \
             thread's server request came with, as a proxy does: its parent id was rewritten to \
             name the proxy's own CLIENT span), failed (the kernel could not make room).",
            "{request}",
        );
        headers
            .push(outcome("injected"), t, k.count(KernelCount::HeadersInjected))
            .push(outcome("not_whole_head"), t, k.count(KernelCount::HeadersNotWholeHead))
            .push(outcome("already_present"), t, k.count(KernelCount::HeadersAlreadyPresent))
            .push(outcome("forwarded"), t, k.count(KernelCount::HeadersForwarded))
            .push(outcome("failed"), t, k.count(KernelCount::HeadersFailed));
        let mut without_context = Metric::counter(
            "sonde.propagation.without_context",
            "Client requests the kernel gave no trace context, so that with --context-propagation on \
             they went without one on the wire: a head begun in a write too short to show a request \
             line, a process whose threads serve several requests at once, a socket connected \
             before sonde started. (With propagation off, every client request.)",
            "{request}",
        );
        without_context.push(Vec::new(), t, p.link.clients_without_context as f64);
        let mut enrolled = Metric::counter(
            "sonde.propagation.sockets",
            "Client sockets of traced processes enrolled for traceparent headers, by outcome: enrolled, \
             not_enrolled (the SOCKHASH was full, or another program's verdict runs on the socket: \
             its requests get no header).",
            "{socket}",
        );
        enrolled.push(outcome("enrolled"), t, k.count(KernelCount::SocketsEnrolled)).push(
            outcome("not_enrolled"),
            t,
            k.count(KernelCount::SocketsNotEnrolled),
        );
        let mut events =
            Metric::counter("sonde.events.received", "Events read from the ring buffer.", "{event}");
        events.push(Vec::new(), t, p.events as f64);
        let mut lost = Metric::counter(
            "sonde.events.lost",
            "Events sonde received but could not use, by reason.",
            "{event}",
        );
        lost.push(reason("undecodable"), t, p.decode_errors as f64)
            .push(reason("sequence_gap"), t, p.conn.sequence_gaps as f64)
            .push(reason("data_without_open"), t, p.conn.data_without_open as f64);

        let c = &p.conn;
        let mut conns = Metric::gauge(
            "sonde.connections.tracked",
            "TCP connections sonde holds state for.",
            "{connection}",
        );
        conns.push(Vec::new(), t, p.connections as f64);
        let mut opened = Metric::counter(
            "sonde.connections.opened",
            "TCP connections sonde began to track.",
            "{connection}",
        );
        opened.push(Vec::new(), t, c.opened as f64);
        let mut ended = Metric::counter(
            "sonde.connections.ended",
            "Tracked connections that ended, by how sonde learnt it: closed (a close, or their process \
             exited), close_missed (their close was lost; the fd was reused or the kernel no longer \
             had them), forgotten (silent too long, or over the table's limit).",
            "{connection}",
        );
        ended
            .push(reason("closed"), t, c.closed as f64)
            .push(reason("close_missed"), t, c.closes_missed as f64)
            .push(reason("forgotten"), t, c.evicted as f64);

        let h = &c.parse;
        let mut parse = Metric::counter(
            "sonde.http.parse_errors",
            "Bytes on a traced connection that were not valid HTTP/1.x where a message had to be.",
            "{error}",
        );
        parse.push(Vec::new(), t, h.parse_errors as f64);
        let mut anomalies = Metric::counter(
            "sonde.http.anomalies",
            "What the HTTP parsers met besides errors, by kind: resync (found a message start again \
             after losing its place), dropped_request (too many pipelined requests waiting), \
             orphan_response (a response with no request waiting), truncated_head (a head only partly \
             captured), framing_lost (a capture gap hid where a message ends).",
            "{event}",
        );
        anomalies
            .push(kind("resync"), t, h.resyncs as f64)
            .push(kind("dropped_request"), t, h.dropped_requests as f64)
            .push(kind("orphan_response"), t, h.orphan_responses as f64)
            .push(kind("truncated_head"), t, h.truncated_heads as f64)
            .push(kind("framing_lost"), t, h.framing_lost as f64);
        let mut skipped = Metric::counter(
            "sonde.http.skipped",
            "Captured bytes the HTTP parsers passed over while looking for a message start.",
            "By",
        );
        skipped.push(Vec::new(), t, h.skipped_bytes as f64);

        let mut spans =
            Metric::counter("sonde.spans.created", "Spans made from HTTP exchanges, by kind.", "{span}");
        spans.push(vec![KeyValue::str("span.kind", "server")], t, p.spans.server_spans as f64).push(
            vec![KeyValue::str("span.kind", "client")],
            t,
            p.spans.client_spans as f64,
        );
        let l = &p.link;
        let mut linked = Metric::counter(
            "sonde.spans.linked",
            "Where spans' parents came from: traceparent (the caller's header), tcp_option (the \
             context the caller's sonde put in a TCP option), stitched (a client span of another \
             process on this host), adopted (such a client span seen only after the \
             server request had started a trace), thread (the request the process was serving), \
             none (the span starts a trace).",
            "{span}",
        );
        let source = |s: &'static str| vec![KeyValue::str("source", s)];
        linked
            .push(source("traceparent"), t, l.from_header as f64)
            .push(source("tcp_option"), t, l.from_tcp_option as f64)
            .push(source("stitched"), t, l.stitched as f64)
            .push(source("adopted"), t, l.adopted as f64)
            .push(source("thread"), t, l.in_process as f64)
            .push(source("none"), t, l.roots as f64);
        let mut unparented = Metric::counter(
            "sonde.spans.unparented",
            "Client spans given no in-process parent: their process, whose threads are shared by \
             requests, was serving several at once (by why its threads count as shared).",
            "{span}",
        );
        for (count, why) in l.unparented_shared.iter().zip(crate::link::SharedThreads::ALL) {
            unparented.push(reason(why.as_str()), t, *count as f64);
        }
        let mut invalid = Metric::counter(
            "sonde.traceparent.invalid",
            "traceparent headers that did not parse; their request starts a trace, as W3C Trace Context says.",
            "{header}",
        );
        invalid.push(Vec::new(), t, l.invalid_traceparent as f64);
        let mut invalid_state = Metric::counter(
            "sonde.tracestate.invalid",
            "tracestate headers that did not parse; they are discarded whole, as W3C Trace Context says.",
            "{header}",
        );
        invalid_state.push(Vec::new(), t, l.invalid_tracestate as f64);
        let mut expired = Metric::counter(
            "sonde.requests.expired",
            "Requests whose trace context was forgotten before their exchange ended (never answered, \
             or over the limit of requests in progress).",
            "{request}",
        );
        expired.push(Vec::new(), t, l.expired as f64);
        let mut inherited = Metric::counter(
            "sonde.threads.inherited",
            "Threads started while their parent served a request, whose calls then count as that request's.",
            "{thread}",
        );
        inherited.push(Vec::new(), t, l.spawned_workers as f64);
        let mut unsampled = Metric::counter(
            "sonde.spans.unsampled",
            "Exchanges whose trace is not sampled, by the caller's traceparent or by the sampler \
             (--traces-sampler): counted in metrics, no span made.",
            "{span}",
        );
        unsampled.push(Vec::new(), t, p.spans.unsampled as f64);
        let mut shed = Metric::counter(
            "sonde.spans.shed",
            "Spans of sampled traces not made because sonde was falling behind the kernel's events \
             (its ring buffer filling): chosen by trace id, their exchanges still counted in the \
             request metrics.",
            "{span}",
        );
        shed.push(Vec::new(), t, p.spans_shed as f64);
        let mut exchanges = Metric::counter(
            "sonde.exchanges.ended",
            "HTTP exchanges that ended, by span kind: each is counted in the request metrics, \
             whether its trace is sampled or not.",
            "{exchange}",
        );
        exchanges.push(vec![KeyValue::str("span.kind", "server")], t, p.exchanges_ended.server as f64).push(
            vec![KeyValue::str("span.kind", "client")],
            t,
            p.exchanges_ended.client as f64,
        );
        let mut left = Metric::counter(
            "sonde.exchanges.left_to_sdk",
            "Exchanges of processes with an OpenTelemetry SDK of their own, whose spans are the SDK's \
             (--sdk-processes skip).",
            "{exchange}",
        );
        left.push(Vec::new(), t, p.sdk_skipped as f64);

        let mut exported =
            Metric::counter("sonde.spans.exported", "Spans the OTLP collector accepted.", "{span}");
        exported.push(Vec::new(), t, load(&e.spans_exported));
        let mut printed = Metric::counter(
            "sonde.spans.printed",
            "Spans handed to the terminal view (tree or JSON).",
            "{span}",
        );
        printed.push(Vec::new(), t, load(&e.spans_printed));
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
        let mut requests = Metric::counter(
            "sonde.export.requests",
            "OTLP trace export requests, by outcome: ok (accepted), failed (an attempt that failed; \
             retried ones count once per attempt).",
            "{request}",
        );
        let outcome = |o: &'static str| vec![KeyValue::str("outcome", o)];
        requests.push(outcome("ok"), t, load(&e.export_requests_ok)).push(
            outcome("failed"),
            t,
            load(&e.export_requests_failed),
        );

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

        out.extend([
            kernel,
            copied,
            not_copied,
            body_skipped,
            goroutines_unread,
            not_parsed,
            tcp_options,
            headers,
            without_context,
            enrolled,
            events,
            lost,
            conns,
            opened,
            ended,
            parse,
            anomalies,
            skipped,
            spans,
            linked,
            unparented,
            invalid,
            invalid_state,
            expired,
            inherited,
            unsampled,
            shed,
            exchanges,
            left,
            exported,
            printed,
            dropped,
            queue,
            requests,
            points,
            points_dropped,
            scrapes,
        ]);
        if let Some(store) = store {
            out.extend(store_metrics(t, store));
        }
        out.extend(process_usage(t));
    }
}

/// What the metrics store says about itself (only when metrics are wanted, and so kept).
fn store_metrics(t: u64, store: &StoreCounts) -> [Metric; 3] {
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
    [waiting, overflow, evicted]
}

/// The periodic log line: every metric of `metrics` by its name, its points as
/// `name{key=value}=N`; a metric whose points are all zero is written once as `name=0`, so that
/// the line stays short and still names everything.
pub fn log_line(metrics: &[Metric]) -> String {
    use std::fmt::Write as _;
    let mut line = String::new();
    for metric in metrics {
        // Histograms are the traced processes' (RED); sonde's own are counters and gauges.
        let (Data::Counter(points) | Data::Gauge(points)) = &metric.data else {
            continue;
        };
        let nonzero: Vec<_> = points.iter().filter(|p| p.value != 0.0).collect();
        if nonzero.is_empty() {
            let _ = write!(line, " {}=0", metric.name);
            continue;
        }
        for point in nonzero {
            let _ = write!(line, " {}", metric.name);
            if !point.attributes.is_empty() {
                let labels: Vec<String> = point
                    .attributes
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, attr_text(&kv.value)))
                    .collect();
                let _ = write!(line, "{{{}}}", labels.join(","));
            }
            let _ = write!(line, "={}", point.value);
        }
    }
    line.trim_start().to_owned()
}

fn attr_text(value: &AttrValue) -> String {
    match value {
        AttrValue::Str(text) => text.to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
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
        let mut cpu = Metric::counter(metric::PROCESS_CPU_TIME, "CPU time sonde used.", "s");
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
        let mut rss = Metric::gauge(metric::PROCESS_MEMORY_USAGE, "sonde's resident memory.", "By");
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

    /// The one list reaches every output: each of sonde's own metrics is in the periodic log line,
    /// in an OTLP export and in the Prometheus exposition.
    #[test]
    fn every_own_metric_is_reported_on_all_three_outputs() {
        use prost::Message as _;

        let store = StoreCounts {
            series_overflowed: 1,
            routes_overflowed: 0,
            processes_evicted: 0,
            graph_waiting: 2,
        };
        let mut metrics = Vec::new();
        OwnSources::default().collect(1, Some(&store), &mut metrics);
        assert!(metrics.len() >= 25, "{} metrics", metrics.len());

        let line = log_line(&metrics);
        let resource = std::sync::Arc::new(crate::process::own_resource());
        let resources = [crate::metrics::model::ResourceMetrics { resource, metrics: metrics.clone() }];
        let otlp: Vec<String> = crate::export::otlp::metrics::requests(&resources, 2, usize::MAX)
            .into_iter()
            .flat_map(|(bytes, _)| {
                let request =
                    opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::decode(
                        bytes,
                    )
                    .expect("a valid request");
                request.resource_metrics.into_iter().flat_map(|r| r.scope_metrics).flat_map(|s| s.metrics)
            })
            .map(|m| m.name)
            .collect();
        let prometheus = crate::export::prometheus::text::render(&resources);
        for metric in &metrics {
            assert!(
                line.split(' ').any(|field| field.starts_with(metric.name)),
                "{} not in the log: {line}",
                metric.name
            );
            assert!(otlp.iter().any(|n| n == metric.name), "{} not in the OTLP export", metric.name);
            let counter = matches!(metric.data, Data::Counter(_));
            let exposed = crate::export::prometheus::text::metric_name(metric.name, metric.unit, counter);
            assert!(
                prometheus.contains(&format!("# TYPE {exposed} ")),
                "{exposed} not exposed:\n{prometheus}"
            );
        }
        // Zeros are written once per metric; values with their labels.
        assert!(line.contains("sonde.events.received=0"), "{line}");
        assert!(line.contains("sonde.metrics.overflowed{limit=series}=1"), "{line}");
        assert!(!line.contains("limit=routes"), "{line}");
    }

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100 1000 50";
        assert_eq!(cpu_ticks(stat), Some((17, 5)));
        assert_eq!(cpu_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&own).is_some());
    }
}
