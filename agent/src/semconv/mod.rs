//! What the OpenTelemetry semantic conventions ask of sonde's spans and metrics, in one place, so
//! that a span and the metric series behind it are derived by the same rules: the attribute and
//! metric names (from `opentelemetry-semantic-conventions`, the conventions' own generated
//! constants) and the request target, parsed once ([`Target`]). Resource attributes (the process,
//! the host, the Kubernetes pod) come from the same crate's `resource` module.

pub use crate::http::Target;
pub use opentelemetry_semantic_conventions::{attribute as attr, metric, resource};
