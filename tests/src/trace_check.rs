//! Checks on the parent links between the spans of requests that each carry their own number
//! down a call chain (`/req/{n}`, `/start/{n}` → `/{n}`): a span whose parent belongs to another
//! request is a cross-link — two traces stitched together wrongly, worse than no parent at all.

use std::{collections::BTreeMap, collections::HashMap, fmt};

use crate::receiver::ReceivedSpan;

pub fn service(span: &ReceivedSpan) -> &str {
    span.resource.get("service.name").map(String::as_str).unwrap_or("")
}

/// The path a span is about: `url.path` (SERVER spans), else the path of `url.full` (CLIENT spans).
pub fn request_path(span: &ReceivedSpan) -> Option<String> {
    if let Some(path) = span.attr("url.path") {
        return Some(path);
    }
    let full = span.attr("url.full")?;
    let after_scheme = full.split_once("://").map_or(full.as_str(), |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    Some(path.split(['?', '#']).next().unwrap_or(path).to_owned())
}

/// One span and the parent it names, when that parent is among the spans checked.
#[derive(Clone, Debug)]
pub struct BadLink {
    pub why: &'static str,
    pub service: String,
    pub kind: &'static str,
    pub path: String,
    pub parent_service: String,
    pub parent_kind: &'static str,
    pub parent_path: String,
}

impl fmt::Display for BadLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ← parent {} {} {} ({})",
            self.service,
            self.kind,
            self.path,
            self.parent_service,
            self.parent_kind,
            self.parent_path,
            self.why
        )
    }
}

/// How the spans of one service and kind were parented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCount {
    pub spans: usize,
    /// Parent among the spans, of the same request, where it belongs.
    pub right: usize,
    /// Parent among the spans, of another request, or of the wrong kind or process.
    pub wrong: usize,
    /// No parent: the span starts a trace.
    pub unparented: usize,
    /// A parent id that none of the spans has (not exported, or from outside the set).
    pub dangling: usize,
}

/// Every parent link among a set of spans, judged.
#[derive(Clone, Debug, Default)]
pub struct LinkReport {
    /// (service, kind) → counts.
    pub hops: BTreeMap<(String, &'static str), HopCount>,
    /// Parent of another request: the traces of two requests are joined.
    pub cross_links: Vec<BadLink>,
    /// Parent of the same request but not where it belongs (a CLIENT span's parent must be a
    /// SERVER span of its own service; a SERVER span's a CLIENT span of another), or in another
    /// trace than the child.
    pub misplaced: Vec<BadLink>,
}

impl LinkReport {
    /// Judges the parent of every span in `spans`.
    pub fn of(spans: &[ReceivedSpan]) -> LinkReport {
        let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id_hex(), s)).collect();
        let mut report = LinkReport::default();
        for span in spans {
            let hop = report.hops.entry((service(span).to_owned(), span.kind_name())).or_default();
            hop.spans += 1;
            let Some(parent_id) = span.parent_span_id_hex() else {
                hop.unparented += 1;
                continue;
            };
            let Some(parent) = by_id.get(&parent_id) else {
                hop.dangling += 1;
                continue;
            };
            let path = request_path(span).unwrap_or_default();
            let parent_path = request_path(parent).unwrap_or_default();
            let in_place = match span.kind_name() {
                "CLIENT" => parent.kind_name() == "SERVER" && service(parent) == service(span),
                "SERVER" => parent.kind_name() == "CLIENT" && service(parent) != service(span),
                _ => true,
            };
            let why = if path != parent_path {
                "another request"
            } else if !in_place {
                "wrong kind or process"
            } else if parent.trace_id_hex() != span.trace_id_hex() {
                "another trace"
            } else {
                hop.right += 1;
                continue;
            };
            hop.wrong += 1;
            let bad = BadLink {
                why,
                service: service(span).to_owned(),
                kind: span.kind_name(),
                path,
                parent_service: service(parent).to_owned(),
                parent_kind: parent.kind_name(),
                parent_path,
            };
            if why == "another request" {
                report.cross_links.push(bad);
            } else {
                report.misplaced.push(bad);
            }
        }
        report
    }

    /// Links to the wrong request or place: what must be zero.
    pub fn wrong(&self) -> usize {
        self.cross_links.len() + self.misplaced.len()
    }
}

impl fmt::Display for LinkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:<7} {:>6} {:>6} {:>6} {:>11} {:>9}",
            "service", "kind", "spans", "right", "wrong", "unparented", "dangling"
        )?;
        for ((service, kind), h) in &self.hops {
            writeln!(
                f,
                "{service:<10} {kind:<7} {:>6} {:>6} {:>6} {:>11} {:>9}",
                h.spans, h.right, h.wrong, h.unparented, h.dangling
            )?;
        }
        for bad in self.cross_links.iter().chain(&self.misplaced) {
            writeln!(f, "  {bad}")?;
        }
        Ok(())
    }
}

/// The spans about `path`, grouped by (service, kind).
pub fn spans_about<'a>(
    spans: &'a [ReceivedSpan],
    path: &str,
) -> BTreeMap<(String, &'static str), Vec<&'a ReceivedSpan>> {
    let mut found: BTreeMap<(String, &'static str), Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in spans.iter().filter(|s| request_path(s).as_deref() == Some(path)) {
        found.entry((service(span).to_owned(), span.kind_name())).or_default().push(span);
    }
    found
}

/// Why the request for `path` through `services` (the first one called from outside, each calling
/// the next) is not one whole trace: one SERVER span per service, one CLIENT span per call, each
/// the child of the one before, the first SERVER span the root. `None` when it is whole.
pub fn whole_chain_fault(spans: &[ReceivedSpan], path: &str, services: &[&str]) -> Option<String> {
    let found = spans_about(spans, path);
    let one = |service: &str, kind: &'static str| -> Result<&ReceivedSpan, String> {
        match found.get(&(service.to_owned(), kind)).map(Vec::as_slice) {
            Some([span]) => Ok(span),
            other => Err(format!("{path}: {} {kind} spans from {service}", other.map_or(0, <[_]>::len))),
        }
    };
    let mut chain = Vec::new();
    for (i, service) in services.iter().enumerate() {
        match one(service, "SERVER") {
            Ok(span) => chain.push(span),
            Err(e) => return Some(e),
        }
        if i + 1 < services.len() {
            match one(service, "CLIENT") {
                Ok(span) => chain.push(span),
                Err(e) => return Some(e),
            }
        }
    }
    if let Some(parent) = chain[0].parent_span_id_hex() {
        return Some(format!("{path}: {} SERVER has parent {parent}, expected the root", services[0]));
    }
    for pair in chain.windows(2) {
        let (parent, child) = (pair[0], pair[1]);
        if child.trace_id_hex() != parent.trace_id_hex()
            || child.parent_span_id_hex() != Some(parent.span_id_hex())
        {
            return Some(format!(
                "{path}: {} {} is not the child of {} {} (trace {} vs {}, parent {:?} vs span {})",
                service(child),
                child.kind_name(),
                service(parent),
                parent.kind_name(),
                child.trace_id_hex(),
                parent.trace_id_hex(),
                child.parent_span_id_hex(),
                parent.span_id_hex()
            ));
        }
    }
    None
}
