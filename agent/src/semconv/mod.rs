//! What the OpenTelemetry semantic conventions ask of sonde's spans and metrics, in one place, so
//! that a span and the metric series behind it are derived by the same rules.

pub use crate::http::Target;
