//! Explicit-bucket histograms, as OTLP and Prometheus both carry them.

/// The bucket boundaries the HTTP semantic conventions advise for `http.*.request.duration`, in
/// seconds (https://opentelemetry.io/docs/specs/semconv/http/http-metrics/).
pub const HTTP_DURATION_BOUNDS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// A cumulative histogram: counts per bucket (the last one unbounded above), sum, min and max.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` counts; bucket `i` holds values `bounds[i-1] < v <= bounds[i]`.
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], count: 0, sum: 0.0, min: f64::INFINITY, max: 0.0 }
    }

    pub fn record(&mut self, value: f64) {
        // Upper bounds are inclusive, as in both OTLP and Prometheus (`le`).
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket] += 1;
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds `other`'s observations (same bounds) to this one.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Per bucket, not cumulative (OTLP's form; Prometheus sums them up).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// None before the first observation.
    pub fn min_max(&self) -> Option<(f64, f64)> {
        (self.count > 0).then_some((self.min, self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_inclusive_upper_buckets() {
        let mut h = Histogram::new(HTTP_DURATION_BOUNDS);
        for v in [0.0, 0.005, 0.0051, 0.3, 10.0, 11.0] {
            h.record(v);
        }
        let c = h.counts();
        assert_eq!(c.len(), HTTP_DURATION_BOUNDS.len() + 1);
        assert_eq!((c[0], c[1], c[7], c[13], c[14]), (2, 1, 1, 1, 1));
        assert_eq!(h.count(), 6);
        assert_eq!(h.min_max(), Some((0.0, 11.0)));
        assert!((h.sum() - 21.3101).abs() < 1e-9);

        let mut total = Histogram::new(HTTP_DURATION_BOUNDS);
        assert_eq!(total.min_max(), None);
        total.merge(&h);
        total.merge(&h);
        assert_eq!(total.count(), 12);
        assert_eq!(total.counts()[0], 4);
    }
}
