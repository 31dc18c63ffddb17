//! OTLP metrics: the collected metrics as `ExportMetricsServiceRequest`s of at most
//! `MAX_POINTS_PER_REQUEST` points (cumulative temporality), sent every interval and once more at shutdown. Built with opentelemetry-proto's
//! types: a request per interval is far from the per-span volume that made traces hand-encoded.

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value},
    metrics::v1::{
        self as proto, AggregationTemporality, HistogramDataPoint, NumberDataPoint, metric, number_data_point,
    },
    resource::v1::Resource as ProtoResource,
};
use prost::Message as _;

use super::encode::{SCOPE_NAME, SCOPE_VERSION};
use crate::{
    metrics::model::{Data, Metric, Point, ResourceMetrics},
    span::model::{AttrValue, KeyValue},
};

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

/// Data points per request: a histogram point is about 400 bytes, so a request stays well under
/// the 4 MiB a collector's gRPC receiver takes by default.
pub(crate) const MAX_POINTS_PER_REQUEST: usize = 2000;

/// The encoded requests for `resources` as of `now_unix_ns`, each with how many data points it
/// holds: at most `max_points` per request, a metric's points split across requests if need be.
pub(crate) fn requests(
    resources: &[ResourceMetrics],
    now_unix_ns: u64,
    max_points: usize,
) -> Vec<(Bytes, usize)> {
    let max_points = max_points.max(1);
    let mut out = Vec::new();
    let mut current: Vec<proto::ResourceMetrics> = Vec::new();
    let mut points = 0;
    let mut flush = |current: &mut Vec<proto::ResourceMetrics>, points: &mut usize| {
        if *points > 0 {
            let request = ExportMetricsServiceRequest { resource_metrics: std::mem::take(current) };
            out.push((Bytes::from(request.encode_to_vec()), *points));
        }
        current.clear();
        *points = 0;
    };
    for rm in resources {
        // A resource's first piece in this request opens its entry; later pieces join it.
        let mut opened = false;
        for m in &rm.metrics {
            let n = m.points();
            let mut from = 0;
            while from < n {
                if !opened {
                    current.push(resource_entry(rm));
                    opened = true;
                }
                let take = (max_points - points).min(n - from);
                let entry = current.last_mut().expect("opened above");
                entry.scope_metrics[0].metrics.push(metric(m, from..from + take, now_unix_ns));
                points += take;
                from += take;
                if points == max_points {
                    flush(&mut current, &mut points);
                    opened = false;
                }
            }
        }
    }
    flush(&mut current, &mut points);
    out
}

fn resource_entry(rm: &ResourceMetrics) -> proto::ResourceMetrics {
    proto::ResourceMetrics {
        resource: Some(ProtoResource {
            attributes: rm.resource.attributes.iter().map(key_value).collect(),
            ..Default::default()
        }),
        scope_metrics: vec![proto::ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.into(),
                version: SCOPE_VERSION.into(),
                ..Default::default()
            }),
            metrics: Vec::new(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// `m` with its data points in `range` only.
fn metric(m: &Metric, range: std::ops::Range<usize>, now: u64) -> proto::Metric {
    // Counts (units like `{request}`) go as integers, measurements (`s`, `By`) as doubles.
    let integer = m.unit.starts_with('{');
    let numbers = |points: &[Point<f64>]| -> Vec<NumberDataPoint> {
        points
            .iter()
            .map(|p| NumberDataPoint {
                attributes: p.attributes.iter().map(key_value).collect(),
                start_time_unix_nano: p.start_unix_ns,
                time_unix_nano: now,
                value: Some(if integer {
                    number_data_point::Value::AsInt(p.value as i64)
                } else {
                    number_data_point::Value::AsDouble(p.value)
                }),
                ..Default::default()
            })
            .collect()
    };
    let data = match &m.data {
        Data::Counter(points) => metric::Data::Sum(proto::Sum {
            data_points: numbers(&points[range]),
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        }),
        Data::Gauge(points) => metric::Data::Gauge(proto::Gauge { data_points: numbers(&points[range]) }),
        Data::Histogram(points) => metric::Data::Histogram(proto::Histogram {
            data_points: points[range]
                .iter()
                .map(|p| {
                    let h = &p.value;
                    let (min, max) = h.min_max().unzip();
                    HistogramDataPoint {
                        attributes: p.attributes.iter().map(key_value).collect(),
                        start_time_unix_nano: p.start_unix_ns,
                        time_unix_nano: now,
                        count: h.count(),
                        sum: Some(h.sum()),
                        bucket_counts: h.counts().to_vec(),
                        explicit_bounds: h.bounds().to_vec(),
                        min,
                        max,
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: CUMULATIVE,
        }),
    };
    proto::Metric {
        name: m.name.into(),
        description: m.description.into(),
        unit: m.unit.into(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

fn key_value(kv: &KeyValue) -> ProtoKeyValue {
    let value = match &kv.value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    ProtoKeyValue { key: kv.key.to_string(), value: Some(AnyValue { value: Some(value) }) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::histogram::{HTTP_DURATION_BOUNDS, Histogram};
    use crate::span::model::Resource;

    #[test]
    fn encodes_sums_gauges_and_histograms_cumulatively() {
        let mut h = Histogram::new(HTTP_DURATION_BOUNDS);
        h.record(0.02);
        let mut hist = Metric::histogram("http.server.request.duration", "d", "s");
        hist.data = Data::Histogram(vec![Point {
            attributes: vec![KeyValue::str("http.route", "/users/{id}")],
            start_unix_ns: 5,
            value: h,
        }]);
        let mut counter = Metric::counter("sonde.events.received", "e", "{event}");
        counter.push(Vec::new(), 5, 3.0);
        let mut gauge = Metric::gauge("process.memory.usage", "m", "By");
        gauge.push(Vec::new(), 5, 1024.0);
        let resource = Arc::new(Resource {
            id: 1,
            service_name: "shop".into(),
            attributes: vec![KeyValue::str("service.name", "shop")],
        });
        let mut requests =
            requests(&[ResourceMetrics { resource, metrics: vec![hist, counter, gauge] }], 9, 100);
        assert_eq!(requests.len(), 1);
        let (bytes, points) = requests.remove(0);
        assert_eq!(points, 3);
        let decoded = ExportMetricsServiceRequest::decode(bytes).unwrap();
        let scope = &decoded.resource_metrics[0].scope_metrics[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "sonde");
        let metrics = &scope.metrics;
        let Some(metric::Data::Histogram(h)) = &metrics[0].data else { panic!("{:?}", metrics[0]) };
        assert_eq!(h.aggregation_temporality, CUMULATIVE);
        let p = &h.data_points[0];
        assert_eq!((p.count, p.start_time_unix_nano, p.time_unix_nano), (1, 5, 9));
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts[2], 1);
        let Some(metric::Data::Sum(s)) = &metrics[1].data else { panic!() };
        assert!(s.is_monotonic);
        assert_eq!(s.data_points[0].value, Some(number_data_point::Value::AsInt(3)));
        let Some(metric::Data::Gauge(g)) = &metrics[2].data else { panic!() };
        assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(1024.0)));
    }

    #[test]
    fn splits_requests_by_data_points() {
        let resource = |id: u64| {
            Arc::new(Resource {
                id,
                service_name: format!("s{id}"),
                attributes: vec![KeyValue::int("n", id as i64)],
            })
        };
        let counter = |points: usize| {
            let mut m = Metric::counter("c", "c", "{x}");
            for i in 0..points {
                m.push(vec![KeyValue::int("i", i as i64)], 1, i as f64);
            }
            m
        };
        let resources = [
            ResourceMetrics { resource: resource(1), metrics: vec![counter(3), counter(4)] },
            ResourceMetrics { resource: resource(2), metrics: vec![] },
            ResourceMetrics { resource: resource(3), metrics: vec![counter(2)] },
        ];
        let out = requests(&resources, 9, 5);
        assert_eq!(out.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [5, 4]);
        let decoded: Vec<_> =
            out.into_iter().map(|(b, _)| ExportMetricsServiceRequest::decode(b).unwrap()).collect();
        let shape = |r: &ExportMetricsServiceRequest| -> Vec<(i64, Vec<usize>)> {
            r.resource_metrics
                .iter()
                .map(|rm| {
                    let id = rm.resource.as_ref().unwrap().attributes[0].value.clone().unwrap().value;
                    let Some(any_value::Value::IntValue(id)) = id else { panic!() };
                    let sizes = rm.scope_metrics[0]
                        .metrics
                        .iter()
                        .map(|m| match &m.data {
                            Some(metric::Data::Sum(s)) => s.data_points.len(),
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    (id, sizes)
                })
                .collect()
        };
        // Resource 1's second counter is cut after 2 of its 4 points; resource 2 has nothing.
        assert_eq!(shape(&decoded[0]), [(1, vec![3, 2])]);
        assert_eq!(shape(&decoded[1]), [(1, vec![2]), (3, vec![2])]);
        assert!(requests(&resources[1..2], 9, 5).is_empty());
    }
}
