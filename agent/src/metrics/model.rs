//! What a collection of the metrics looks like to the exporters (OTLP and Prometheus): OTel's
//! metric data model, cumulative, grouped by resource.

use std::sync::Arc;

use super::histogram::Histogram;
use crate::span::model::{KeyValue, Resource};

/// The metrics of one resource (a traced process, or sonde itself).
#[derive(Clone, Debug)]
pub struct ResourceMetrics {
    pub resource: Arc<Resource>,
    pub metrics: Vec<Metric>,
}

#[derive(Clone, Debug)]
pub struct Metric {
    /// The OTel name (`http.server.request.duration`); the Prometheus name is derived from it.
    pub name: &'static str,
    pub description: &'static str,
    /// UCUM, as OTel wants it (`s`, `By`, `{request}`).
    pub unit: &'static str,
    pub data: Data,
}

#[derive(Clone, Debug)]
pub enum Data {
    /// A monotonic cumulative sum.
    Counter(Vec<Point<f64>>),
    /// A value as it is now.
    Gauge(Vec<Point<f64>>),
    Histogram(Vec<Point<Histogram>>),
}

/// One series: its attributes, since when it counts (Unix ns), and its value.
#[derive(Clone, Debug)]
pub struct Point<T> {
    pub attributes: Vec<KeyValue>,
    pub start_unix_ns: u64,
    pub value: T,
}

impl Metric {
    pub fn counter(name: &'static str, description: &'static str, unit: &'static str) -> Self {
        Self { name, description, unit, data: Data::Counter(Vec::new()) }
    }

    pub fn gauge(name: &'static str, description: &'static str, unit: &'static str) -> Self {
        Self { name, description, unit, data: Data::Gauge(Vec::new()) }
    }

    pub fn histogram(name: &'static str, description: &'static str, unit: &'static str) -> Self {
        Self { name, description, unit, data: Data::Histogram(Vec::new()) }
    }

    /// Adds a point to a counter or gauge (ignored on a histogram: a programming error).
    pub fn push(&mut self, attributes: Vec<KeyValue>, start_unix_ns: u64, value: f64) -> &mut Self {
        match &mut self.data {
            Data::Counter(points) | Data::Gauge(points) => {
                points.push(Point { attributes, start_unix_ns, value })
            }
            Data::Histogram(_) => debug_assert!(false, "{} is a histogram", self.name),
        }
        self
    }

    pub fn points(&self) -> usize {
        match &self.data {
            Data::Counter(p) | Data::Gauge(p) => p.len(),
            Data::Histogram(p) => p.len(),
        }
    }
}
