//! The span sonde hands to its exporters: OTel's data model, without an SDK behind it, because every
//! traced process is its own resource and the SDK exporters bind one resource per exporter.

use std::borrow::Cow;
use std::sync::Arc;

/// Trace and span ids and the W3C flags are opentelemetry's own types, so every part of sonde (the
/// linker, both encoders, the terminal view) agrees on byte order and hex form.
pub use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
    Bool(bool),
}

/// A string attribute value. Most values on a span are literals (`"http"`, `"tcp"`) or the same
/// for every span of a connection (addresses): those are shared rather than copied per span.
/// Compared by content, whichever way it is held.
#[derive(Clone, Debug, Eq)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::hash::Hash for Text {
    /// By content, as `Eq` compares.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Self {
        Text::Shared(s)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Cow<'static, str>,
    pub value: AttrValue,
}

impl KeyValue {
    pub fn str(key: impl Into<Cow<'static, str>>, value: impl Into<Text>) -> Self {
        Self { key: key.into(), value: AttrValue::Str(value.into()) }
    }
    pub fn int(key: impl Into<Cow<'static, str>>, value: i64) -> Self {
        Self { key: key.into(), value: AttrValue::Int(value) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error { message: String },
}

/// The resource of one traced process (OTel resource semantic conventions).
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// Stable identity for grouping spans of the same process in one export request.
    pub id: u64,
    /// Shown by the terminal view; also present in `attributes` as `service.name`.
    pub service_name: String,
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C trace-flags (bit 0 = sampled) as received or chosen.
    pub trace_flags: TraceFlags,
    /// W3C `tracestate` received with the parent, passed through unchanged.
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    /// Unix epoch nanoseconds.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
    pub resource: Arc<Resource>,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }
}
