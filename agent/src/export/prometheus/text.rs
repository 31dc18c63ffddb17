//! The Prometheus text exposition format (0.0.4), with names and labels derived from OTel's as
//! the OpenTelemetry-to-Prometheus compatibility spec says
//! (https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/):
//! dots become underscores, the unit becomes a suffix (`s` → `_seconds`, `By` → `_bytes`,
//! annotations like `{request}` are dropped), counters end in `_total`; all of a resource's
//! attributes are on a `target_info` series. One departure: the spec maps `service.name` and
//! `service.instance.id` to `job` and `instance`, which the scraping Prometheus sets itself (to
//! sonde); here they are the labels `service_name` and `service_instance_id` of each series.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    metrics::{
        histogram::Histogram,
        model::{Data, ResourceMetrics},
    },
    span::model::{AttrValue, KeyValue},
};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One family's series, label text → value; identical label sets (two resources that look alike
/// to Prometheus) are added up rather than exposed twice, which Prometheus would reject.
enum Series {
    Number(BTreeMap<String, f64>),
    Histogram(BTreeMap<String, Histogram>),
}

struct Family {
    kind: &'static str,
    help: &'static str,
    series: Series,
}

pub fn render(resources: &[ResourceMetrics]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut target_info = BTreeMap::new();
    for rm in resources {
        let identity = resource_labels(&rm.resource.attributes);
        let mut info: Vec<(String, String)> =
            rm.resource.attributes.iter().map(|kv| (label_name(&kv.key), value_text(&kv.value))).collect();
        info.sort();
        info.dedup_by(|a, b| a.0 == b.0);
        target_info.insert(label_text(&info), 1.0);

        for metric in &rm.metrics {
            let (kind, suffix_total) = match &metric.data {
                Data::Counter(_) => ("counter", true),
                Data::Gauge(_) => ("gauge", false),
                Data::Histogram(_) => ("histogram", false),
            };
            let name = metric_name(metric.name, metric.unit, suffix_total);
            let family = families.entry(name).or_insert_with(|| Family {
                kind,
                help: metric.description,
                series: match &metric.data {
                    Data::Histogram(_) => Series::Histogram(BTreeMap::new()),
                    _ => Series::Number(BTreeMap::new()),
                },
            });
            match (&metric.data, &mut family.series) {
                (Data::Counter(points) | Data::Gauge(points), Series::Number(series)) => {
                    for p in points {
                        *series.entry(series_labels(&identity, &p.attributes)).or_default() += p.value;
                    }
                }
                (Data::Histogram(points), Series::Histogram(series)) => {
                    for p in points {
                        series
                            .entry(series_labels(&identity, &p.attributes))
                            .and_modify(|h| h.merge(&p.value))
                            .or_insert_with(|| p.value.clone());
                    }
                }
                // Two metrics of different kinds map to one name: keep the first.
                _ => {}
            }
        }
    }

    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# HELP target_info Attributes of the resources whose metrics follow.");
    let _ = writeln!(out, "# TYPE target_info gauge");
    for labels in target_info.keys() {
        let _ = writeln!(out, "target_info{labels} 1");
    }
    for (name, family) in &families {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        match &family.series {
            Series::Number(series) => {
                for (labels, value) in series {
                    let _ = writeln!(out, "{name}{labels} {}", number(*value));
                }
            }
            Series::Histogram(series) => {
                for (labels, h) in series {
                    write_histogram(&mut out, name, labels, h);
                }
            }
        }
    }
    out
}

fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    // `labels` is `{a="b"}` or empty; `le` joins the others.
    let with_le = |le: &str| match labels.strip_suffix('}') {
        Some(open) => format!("{open},le=\"{le}\"}}"),
        None => format!("{{le=\"{le}\"}}"),
    };
    let mut cumulative = 0;
    for (bound, count) in h.bounds().iter().zip(h.counts()) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{} {cumulative}", with_le(&number(*bound)));
    }
    let _ = writeln!(out, "{name}_bucket{} {}", with_le("+Inf"), h.count());
    let _ = writeln!(out, "{name}_sum{labels} {}", number(h.sum()));
    let _ = writeln!(out, "{name}_count{labels} {}", h.count());
}

/// `service_name` and `service_instance_id` of a resource, which tell its series apart.
fn resource_labels(attributes: &[KeyValue]) -> Vec<(String, String)> {
    ["service.name", "service.instance.id"]
        .iter()
        .filter_map(|key| attributes.iter().find(|kv| kv.key == *key))
        .map(|kv| (label_name(&kv.key), value_text(&kv.value)))
        .collect()
}

fn series_labels(identity: &[(String, String)], attributes: &[KeyValue]) -> String {
    let mut labels: Vec<(String, String)> = identity.to_vec();
    labels.extend(attributes.iter().map(|kv| (label_name(&kv.key), value_text(&kv.value))));
    labels.sort();
    labels.dedup_by(|a, b| a.0 == b.0);
    label_text(&labels)
}

fn label_text(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape_value(v));
    }
    s.push('}');
    s
}

/// The Prometheus name of an OTel metric.
pub fn metric_name(name: &str, unit: &str, counter: bool) -> String {
    let mut out = sanitize(name);
    let suffix = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "1" if !counter => "ratio",
        _ => "",
    };
    let base = out.strip_suffix("_total").map(str::to_owned);
    if let Some(b) = base {
        out = b;
    }
    if !suffix.is_empty() && !out.ends_with(&format!("_{suffix}")) {
        out.push('_');
        out.push_str(suffix);
    }
    if counter {
        out.push_str("_total");
    }
    out
}

/// A label name: `[a-zA-Z_][a-zA-Z0-9_]*`, anything else becomes `_`.
fn label_name(key: &str) -> String {
    // Metric names may hold ':', label names may not.
    let s = sanitize(key).replace(':', "_");
    if s.starts_with(|c: char| c.is_ascii_digit()) { format!("key_{s}") } else { s }
}

fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' })
        .collect();
    // Runs of underscores come out as one, as the spec's examples show.
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out
}

fn value_text(value: &AttrValue) -> String {
    match value {
        AttrValue::Str(s) => s.to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::{
        histogram::HTTP_DURATION_BOUNDS,
        model::{Metric, Point},
    };
    use crate::span::model::Resource;

    #[test]
    fn names_follow_the_compatibility_spec() {
        assert_eq!(
            metric_name("http.server.request.duration", "s", false),
            "http_server_request_duration_seconds"
        );
        assert_eq!(metric_name("sonde.events.received", "{event}", true), "sonde_events_received_total");
        assert_eq!(
            metric_name("traces_service_graph_request_total", "{request}", true),
            "traces_service_graph_request_total"
        );
        assert_eq!(
            metric_name("traces_service_graph_request_server", "s", false),
            "traces_service_graph_request_server_seconds"
        );
        assert_eq!(metric_name("process.cpu.time", "s", true), "process_cpu_time_seconds_total");
        assert_eq!(metric_name("process.memory.usage", "By", false), "process_memory_usage_bytes");
        assert_eq!(label_name("http.response.status_code"), "http_response_status_code");
        assert_eq!(label_name("9lives"), "key_9lives");
    }

    fn resource(pid: i64, service: &'static str) -> Arc<Resource> {
        Arc::new(Resource {
            id: pid as u64,
            service_name: service.into(),
            attributes: vec![
                KeyValue::str("service.name", service),
                KeyValue::str("service.instance.id", format!("h:{pid}")),
                KeyValue::int("process.pid", pid),
            ],
        })
    }

    #[test]
    fn renders_counters_and_cumulative_histogram_buckets() {
        let mut h = Histogram::new(HTTP_DURATION_BOUNDS);
        h.record(0.003);
        h.record(0.2);
        let mut hist = Metric::histogram("http.server.request.duration", "Duration of \"x\".", "s");
        hist.data = Data::Histogram(vec![Point {
            attributes: vec![
                KeyValue::str("http.route", "/a\"b\\c"),
                KeyValue::int("http.response.status_code", 200),
            ],
            start_unix_ns: 0,
            value: h,
        }]);
        let mut counter = Metric::counter("sonde.events.received", "Events.", "{event}");
        counter.push(Vec::new(), 0, 5.0);
        let text = render(&[ResourceMetrics { resource: resource(7, "shop"), metrics: vec![hist, counter] }]);
        let labels = r#"http_response_status_code="200",http_route="/a\"b\\c",service_instance_id="h:7",service_name="shop""#;
        for line in [
            "# TYPE http_server_request_duration_seconds histogram".to_owned(),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.25\"}} 2"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("http_server_request_duration_seconds_count{{{labels}}} 2"),
            "# TYPE sonde_events_received_total counter".to_owned(),
            r#"sonde_events_received_total{service_instance_id="h:7",service_name="shop"} 5"#.to_owned(),
            r#"target_info{process_pid="7",service_instance_id="h:7",service_name="shop"} 1"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn series_that_look_alike_are_added_up() {
        let mut a = Metric::counter("x", "X.", "1");
        a.push(Vec::new(), 0, 2.0);
        let mut b = a.clone();
        b.push(Vec::new(), 0, 1.0);
        let r = resource(1, "s");
        let text = render(&[
            ResourceMetrics { resource: r.clone(), metrics: vec![a] },
            ResourceMetrics { resource: r, metrics: vec![b] },
        ]);
        assert!(text.contains(r#"x_total{service_instance_id="h:1",service_name="s"} 5"#), "{text}");
        assert_eq!(text.matches("x_total{").count(), 1);
    }
}
