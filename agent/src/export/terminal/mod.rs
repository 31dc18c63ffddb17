//! `--print tree`, the default without a collector: spans are grouped by trace and each trace is
//! printed as a waterfall once it has been quiet for a moment (no new span for `idle`), so that
//! the server span, which ends last, joins its client spans before the trace is shown.

mod render;

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

pub(crate) use render::Style;
use render::render_trace;

use super::printer::SpanPrinter;
use crate::span::model::{Span, TraceId};

pub(crate) struct TreePrinter<W> {
    out: W,
    pending: PendingTraces,
    style: Style,
}

impl<W: Write> TreePrinter<W> {
    pub(crate) fn new(out: W, style: Style, idle: Duration, max_pending_spans: usize) -> Self {
        Self { out, pending: PendingTraces::new(idle, max_pending_spans), style }
    }

    fn print(&mut self, traces: Vec<Vec<Span>>) -> io::Result<()> {
        if traces.is_empty() {
            return Ok(());
        }
        for spans in traces {
            render_trace(&mut self.out, &spans, self.style)?;
        }
        self.out.flush()
    }
}

impl<W: Write + Send> SpanPrinter for TreePrinter<W> {
    fn span(&mut self, span: Span, now: Instant) -> io::Result<()> {
        let evicted = self.pending.insert(span, now);
        self.print(evicted)
    }

    fn tick(&mut self, now: Instant) -> io::Result<()> {
        let idle = self.pending.take_idle(now);
        self.print(idle)
    }

    fn finish(&mut self) -> io::Result<()> {
        let all = self.pending.take_all();
        self.print(all)
    }
}

struct PendingTrace {
    spans: Vec<Span>,
    first_seen: Instant,
    last_seen: Instant,
}

/// Spans waiting for their trace to go quiet, bounded in total: past `max_spans` the oldest
/// traces are printed early (incomplete) rather than memory growing with a busy host.
pub(crate) struct PendingTraces {
    traces: HashMap<TraceId, PendingTrace>,
    spans: usize,
    idle: Duration,
    max_spans: usize,
}

impl PendingTraces {
    pub(crate) fn new(idle: Duration, max_spans: usize) -> Self {
        Self { traces: HashMap::new(), spans: 0, idle, max_spans: max_spans.max(1) }
    }

    /// Adds a span; returns the traces pushed out by the bound, oldest first.
    pub(crate) fn insert(&mut self, span: Span, now: Instant) -> Vec<Vec<Span>> {
        let trace = self.traces.entry(span.trace_id).or_insert_with(|| PendingTrace {
            spans: Vec::new(),
            first_seen: now,
            last_seen: now,
        });
        trace.spans.push(span);
        trace.last_seen = now;
        self.spans += 1;

        let mut evicted = Vec::new();
        while self.spans > self.max_spans {
            let Some(oldest) = self.traces.iter().min_by_key(|(_, t)| t.first_seen).map(|(id, _)| *id) else {
                break;
            };
            evicted.extend(self.remove(&oldest));
        }
        evicted
    }

    /// Removes and returns the traces that have had no new span for `idle`, oldest first.
    pub(crate) fn take_idle(&mut self, now: Instant) -> Vec<Vec<Span>> {
        let mut quiet: Vec<(Instant, TraceId)> = self
            .traces
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_seen) >= self.idle)
            .map(|(id, t)| (t.first_seen, *id))
            .collect();
        quiet.sort_by_key(|&(first_seen, id)| (first_seen, id.to_bytes()));
        quiet.iter().filter_map(|(_, id)| self.remove(id)).collect()
    }

    /// Removes and returns every trace, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<Vec<Span>> {
        let mut all: Vec<PendingTrace> = self.traces.drain().map(|(_, t)| t).collect();
        all.sort_by_key(|t| t.first_seen);
        self.spans = 0;
        all.into_iter().map(|t| t.spans).collect()
    }

    fn remove(&mut self, id: &TraceId) -> Option<Vec<Span>> {
        let trace = self.traces.remove(id)?;
        self.spans -= trace.spans.len();
        Some(trace.spans)
    }
}

#[cfg(test)]
mod tests {
    use super::render::human_duration;
    use super::*;
    use crate::export::testutil::{T0, resource, span};
    use crate::span::model::{SpanKind, Status};

    fn three_span_trace() -> Vec<Span> {
        let (front, cart) = (resource(1, "frontend"), resource(2, "cart-service-with-a-long-name"));
        let mut root = span(&front, 1, Some(9), SpanKind::Server, "GET /checkout");
        root.start_unix_ns = T0;
        root.end_unix_ns = T0 + 4_000_000;
        let mut client = span(&front, 2, Some(1), SpanKind::Client, "GET");
        client.start_unix_ns = T0 + 1_000_000;
        client.end_unix_ns = T0 + 3_000_000;
        let mut server = span(&cart, 3, Some(2), SpanKind::Server, "GET /cart/items");
        server.start_unix_ns = T0 + 2_000_000;
        server.end_unix_ns = T0 + 2_900_000;
        server.status = Status::Error { message: "HTTP 503".into() };
        server.attributes[1] = crate::span::model::KeyValue::int("http.response.status_code", 503);
        // Arrival order: innermost first, as the spans end.
        vec![server, client, root]
    }

    fn render(spans: &[Span], color: bool) -> String {
        let mut out = Vec::new();
        render_trace(&mut out, spans, Style { color }).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_a_waterfall() {
        let text = render(&three_span_trace(), false);
        let expected = "\
trace 4bf92f3577b34da6a3ce929d0e0e4736  12:00:00.000 UTC  3 spans  4.00ms  ↑ remote parent
frontend       srv ↑ GET /checkout                    ████████████████████████████  4.00ms OK 200
frontend       cli └─ GET                                    ██████████████         2.00ms OK 200
cart-service-… srv    └─ GET /cart/items                            ███████          900µs ERROR 503

";
        assert_eq!(text, expected, "\n{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line:?}");
        }
        assert!(!text.contains('\x1b'), "no color unless asked");
        assert!(render(&three_span_trace(), true).contains("\x1b[1;31mERROR 503\x1b[0m"));
    }

    #[test]
    fn siblings_in_start_order_and_orphans_as_roots() {
        let r = resource(1, "svc");
        let root = span(&r, 1, None, SpanKind::Server, "GET /");
        let a = span(&r, 3, Some(1), SpanKind::Client, "second");
        let b = span(&r, 2, Some(1), SpanKind::Client, "first");
        let orphan = span(&r, 5, Some(4), SpanKind::Server, "orphan");
        let mut looped = span(&r, 6, Some(6), SpanKind::Server, "self-parent");
        looped.start_unix_ns = T0;
        let text = render(&[a, orphan, root, b, looped], false);
        let names: Vec<&str> = text
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l[19..].split("  ").next().unwrap())
            .collect();
        assert_eq!(names, ["self-parent", "GET /", "├─ first", "└─ second", "↑ orphan"]);
    }

    #[test]
    fn durations_are_short() {
        let cases = [
            (0, "0ns"),
            (850, "850ns"),
            (12_345, "12.3µs"),
            (1_204_000, "1.20ms"),
            (245_000_000, "245ms"),
            (1_500_000_000, "1.50s"),
            (123_000_000_000, "2m03s"),
            (3_900_000_000_000, "1h05m"),
        ];
        for (ns, want) in cases {
            assert_eq!(human_duration(ns), want);
        }
    }

    #[test]
    fn traces_print_when_quiet_or_when_too_many_are_pending() {
        let r = resource(1, "svc");
        let t = Instant::now();
        let idle = Duration::from_secs(1);
        let mut pending = PendingTraces::new(idle, 3);
        let other_trace = |id: u8| {
            let mut s = span(&r, id, None, SpanKind::Server, "x");
            s.trace_id = TraceId::from_bytes([id; 16]);
            s
        };
        assert!(pending.insert(span(&r, 1, None, SpanKind::Server, "a"), t).is_empty());
        assert!(pending.insert(other_trace(7), t + Duration::from_millis(100)).is_empty());
        let later = t + Duration::from_millis(900);
        assert!(pending.insert(span(&r, 2, Some(1), SpanKind::Client, "b"), later).is_empty());

        // The first trace got a span at 900 ms, so only the other one is quiet at 1.1 s.
        let quiet = pending.take_idle(t + Duration::from_millis(1100));
        assert_eq!(quiet.len(), 1);
        assert_eq!(quiet[0][0].trace_id, TraceId::from_bytes([7; 16]));
        assert!(pending.take_idle(t + Duration::from_millis(1800)).is_empty());
        assert_eq!(pending.take_idle(t + Duration::from_millis(1900))[0].len(), 2);

        // Over the bound, the oldest trace is printed early.
        for id in 1..=3 {
            assert!(pending.insert(other_trace(id), t + Duration::from_millis(u64::from(id))).is_empty());
        }
        let evicted = pending.insert(other_trace(4), t + Duration::from_millis(4));
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0][0].trace_id, TraceId::from_bytes([1; 16]));
        assert_eq!(pending.take_all().len(), 3);
        assert_eq!(pending.spans, 0);
    }
}
