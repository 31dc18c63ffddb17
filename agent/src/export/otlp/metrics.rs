//! OTLP metrics: the collected metrics as one `ExportMetricsServiceRequest` (cumulative
//! temporality), sent every interval and once more at shutdown. Built with opentelemetry-proto's
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

/// The encoded request for `resources` as of `now_unix_ns`, and how many data points it holds.
pub(crate) fn request(resources: &[ResourceMetrics], now_unix_ns: u64) -> (Bytes, usize) {
    let mut points = 0;
    let resource_metrics = resources
        .iter()
        .filter(|rm| !rm.metrics.is_empty())
        .map(|rm| {
            points += rm.metrics.iter().map(Metric::points).sum::<usize>();
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
                    metrics: rm.metrics.iter().map(|m| metric(m, now_unix_ns)).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    let request = ExportMetricsServiceRequest { resource_metrics };
    (Bytes::from(request.encode_to_vec()), points)
}

fn metric(m: &Metric, now: u64) -> proto::Metric {
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
            data_points: numbers(points),
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        }),
        Data::Gauge(points) => metric::Data::Gauge(proto::Gauge { data_points: numbers(points) }),
        Data::Histogram(points) => metric::Data::Histogram(proto::Histogram {
            data_points: points
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
        let (bytes, points) =
            request(&[ResourceMetrics { resource, metrics: vec![hist, counter, gauge] }], 9);
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
}
