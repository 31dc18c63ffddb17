//! One trace as a waterfall, for a person watching `sonde run`. Fits 100 columns:
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736  12:00:00.001 UTC  3 spans  3.00ms
//! frontend       srv GET /checkout                      ██████████████████████████  3.00ms OK 200
//! frontend       cli └─ GET                                      █████████          1.00ms OK 200
//! cart           srv    └─ GET /cart                                      █████████ 1.00ms ERROR 503
//! ```
//!
//! Children are indented under their parent. A span whose parent is not in the trace (it came in
//! a `traceparent` from a process sonde does not see, or was dropped) is shown as a root marked
//! `↑`. Bars are placed and scaled on the trace's own time range.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::semconv::attr;
use crate::span::model::{AttrValue, Span, SpanId, SpanKind, Status};

const SERVICE_W: usize = 14;
const NAME_W: usize = 34;
const BAR_W: usize = 28;
const DURATION_W: usize = 7;
/// The marker of a span whose parent is elsewhere.
const REMOTE: &str = "↑ ";

#[derive(Clone, Copy, Debug)]
pub(crate) struct Style {
    /// ANSI colors; only when stdout is a terminal.
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }
}

/// Writes the header and one line per span, then a blank line.
pub(crate) fn render_trace(out: &mut impl Write, spans: &[Span], style: Style) -> io::Result<()> {
    let Some(first) = spans.first() else {
        return Ok(());
    };
    let t0 = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let t1 = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0).max(t0);
    let rows = tree_order(spans);
    let any_remote = rows.iter().any(|r| r.remote);

    let mut header = format!(
        "trace {}  {}  {} span{}  {}",
        first.trace_id,
        utc_time_of_day(t0),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        human_duration(t1 - t0),
    );
    if any_remote {
        header.push_str(&format!("  {}remote parent", REMOTE));
    }
    writeln!(out, "{}", style.paint("1", &header))?;

    let range = (t1 - t0).max(1);
    for row in &rows {
        let span = &spans[row.index];
        let error = matches!(span.status, Status::Error { .. });
        let service = pad(&span.resource.service_name, SERVICE_W);
        let kind = match span.kind {
            SpanKind::Server => "srv",
            SpanKind::Client => "cli",
        };
        let marker = if row.remote { REMOTE } else { "" };
        let glyphs = tree_glyphs(&row.prefix);
        let name = pad(&format!("{marker}{}", display_name(span)), NAME_W - glyphs.chars().count());
        let bar = bar(span.start_unix_ns - t0, span.end_unix_ns.max(span.start_unix_ns) - t0, range);
        let duration = format!("{:>DURATION_W$}", human_duration(span.duration_ns()));
        let status = status_text(span);
        writeln!(
            out,
            "{} {} {}{} {} {} {}",
            style.paint("36", &service),
            style.paint("2", kind),
            style.paint("2", &glyphs),
            name,
            style.paint(if error { "31" } else { "32" }, &bar),
            duration,
            style.paint(if error { "1;31" } else { "32" }, &status),
        )?;
    }
    writeln!(out)
}

/// The span name, plus what was asked for when the name does not carry a route — the path on a
/// server (`GET` → `GET /cart/42`), the URL without its scheme on a client (`GET cart:8080/42`):
/// a person reading the waterfall wants to know which request each line is.
fn display_name(span: &Span) -> String {
    let text = |key: &str| match span.attributes.iter().find(|kv| kv.key == key).map(|kv| &kv.value) {
        Some(crate::span::model::AttrValue::Str(t)) => Some(t.to_string()),
        _ => None,
    };
    let what = text(attr::URL_PATH)
        .or_else(|| text(attr::URL_FULL).map(|u| u.trim_start_matches("http://").to_owned()));
    match what {
        Some(what) if !span.name.contains(' ') => format!("{} {what}", span.name),
        _ => span.name.clone(),
    }
}

struct Row {
    index: usize,
    /// Tree glyphs before the name: `│  ├─ `.
    prefix: String,
    remote: bool,
}

/// Depth-first from the roots, siblings by start time. Spans whose parent is missing are roots;
/// spans caught in a parent cycle (broken ids) are printed as roots too rather than lost.
fn tree_order(spans: &[Span]) -> Vec<Row> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].start_unix_ns, spans[i].span_id.to_bytes()));
    let ids: HashMap<SpanId, usize> = order.iter().rev().map(|&i| (spans[i].span_id, i)).collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in &order {
        match spans[i].parent_span_id {
            Some(p) if p != spans[i].span_id && ids.contains_key(&p) => {
                children.entry(p).or_default().push(i);
            }
            _ => roots.push(i),
        }
    }

    let mut rows = Vec::with_capacity(spans.len());
    let mut visited = vec![false; spans.len()];
    // (span, glyphs for its own line, glyphs its children continue with)
    let mut stack: Vec<(usize, String, String)> = Vec::new();
    let mut roots = roots.into_iter();
    let mut leftovers = order.iter();
    loop {
        if stack.is_empty() {
            // Next root, or a span not reached from any root.
            let next = roots.by_ref().find(|&r| !visited[r]);
            let next = next.or_else(|| leftovers.by_ref().copied().find(|&i| !visited[i]));
            let Some(root) = next else { break };
            stack.push((root, String::new(), String::new()));
        }
        let Some((i, prefix, continuation)) = stack.pop() else {
            break;
        };
        if std::mem::replace(&mut visited[i], true) {
            continue;
        }
        let remote = spans[i].parent_span_id.is_some_and(|p| p != spans[i].span_id && !ids.contains_key(&p));
        rows.push(Row { index: i, prefix, remote });
        if let Some(kids) = children.get(&spans[i].span_id) {
            let kids: Vec<usize> = kids.iter().copied().filter(|&k| !visited[k]).collect();
            // Pushed in reverse so the earliest child is printed first.
            for (n, &k) in kids.iter().enumerate().rev() {
                let last = n + 1 == kids.len();
                let own = format!("{continuation}{}", if last { "└─ " } else { "├─ " });
                let next = format!("{continuation}{}", if last { "   " } else { "│  " });
                stack.push((k, own, next));
            }
        }
    }
    rows
}

fn bar(start: u64, end: u64, range: u64) -> String {
    let cell = |t: u64, round_up: bool| {
        let scaled = u128::from(t) * BAR_W as u128;
        let cells =
            scaled / u128::from(range) + u128::from(round_up && !scaled.is_multiple_of(u128::from(range)));
        usize::try_from(cells).unwrap_or(BAR_W).min(BAR_W)
    };
    let from = cell(start, false).min(BAR_W - 1);
    let to = cell(end, true).max(from + 1);
    format!("{}{}{}", " ".repeat(from), "█".repeat(to - from), " ".repeat(BAR_W - to))
}

/// `OK 200`, `ERROR 503`, `ERROR`.
fn status_text(span: &Span) -> String {
    let code = span.attributes.iter().find_map(|kv| match &kv.value {
        AttrValue::Int(c) if kv.key == attr::HTTP_RESPONSE_STATUS_CODE => Some(*c),
        _ => None,
    });
    let word = match span.status {
        Status::Unset => "OK",
        Status::Error { .. } => "ERROR",
    };
    match code {
        Some(c) => format!("{word} {c}"),
        None => word.to_owned(),
    }
}

/// Three significant digits: `850ns`, `12.3µs`, `1.20ms`, `245ms`, `1.50s`, `2m03s`, `1h05m`.
pub(crate) fn human_duration(ns: u64) -> String {
    fn sig3(v: f64, unit: &str) -> String {
        if v < 10.0 {
            format!("{v:.2}{unit}")
        } else if v < 100.0 {
            format!("{v:.1}{unit}")
        } else {
            format!("{v:.0}{unit}")
        }
    }
    let f = ns as f64;
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => sig3(f / 1e3, "µs"),
        1_000_000..1_000_000_000 => sig3(f / 1e6, "ms"),
        1_000_000_000..60_000_000_000 => sig3(f / 1e9, "s"),
        _ => {
            let secs = ns / 1_000_000_000;
            if secs < 3600 {
                format!("{}m{:02}s", secs / 60, secs % 60)
            } else {
                format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
            }
        }
    }
}

/// `HH:MM:SS.mmm UTC`: no time-zone database needed, and unambiguous.
fn utc_time_of_day(unix_ns: u64) -> String {
    let ms = unix_ns / 1_000_000;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// The tree glyphs, cut from the left on very deep trees so the name keeps most of its column.
fn tree_glyphs(prefix: &str) -> String {
    const MAX: usize = NAME_W / 2;
    let n = prefix.chars().count();
    if n <= MAX {
        prefix.to_owned()
    } else {
        format!("…{}", prefix.chars().skip(n - (MAX - 1)).collect::<String>())
    }
}

/// Pads or cuts to exactly `width` characters, marking a cut with `…`.
fn pad(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        format!("{s:<width$}")
    } else {
        let mut cut: String = s.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}
