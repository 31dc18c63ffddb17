//! The W3C Trace Context `traceparent` header (<https://www.w3.org/TR/trace-context/#traceparent-header>):
//! `version-traceid-parentid-flags`, lowercase hex, e.g.
//! `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.

// opentelemetry's own id types, named directly: the fuzz harness compiles this module alone.
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// Length of a version-00 value; later versions may append `-` and more fields.
const V00_LEN: usize = 55;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: TraceFlags,
}

impl TraceParent {
    /// The caller recorded this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags.is_sampled()
    }
}

/// Why a `traceparent` value is rejected. The spec says to then start a new trace, ignoring it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("traceparent is empty")]
    Empty,
    #[error("traceparent is {len} bytes long; version {version:02x} needs {}", if *version == 0 { "exactly 55" } else { "at least 55" })]
    Length { version: u8, len: usize },
    #[error("traceparent {field} is not {digits} lowercase hex digits")]
    NotHex { field: &'static str, digits: usize },
    #[error("traceparent lacks the '-' after its {field}")]
    MissingDash { field: &'static str },
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
}

/// Parses a `traceparent` value (surrounding spaces and tabs allowed, as in any field value).
pub fn parse(value: &str) -> Result<TraceParent, TraceParentError> {
    let v = value.trim_matches([' ', '\t']).as_bytes();
    if v.is_empty() {
        return Err(TraceParentError::Empty);
    }
    let [version] = hex::<1>(v.get(..2), "version")?;
    if version == 0xff {
        return Err(TraceParentError::ForbiddenVersion);
    }
    // Version 00 is exactly 55 bytes; a later version may carry more fields after a '-' (the spec
    // asks parsers to read the fields they know from such values).
    let length_ok = match v.len().cmp(&V00_LEN) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => true,
        std::cmp::Ordering::Greater => version != 0 && v[V00_LEN] == b'-',
    };
    if !length_ok {
        return Err(TraceParentError::Length { version, len: v.len() });
    }
    dash(v, 2, "version")?;
    let trace_id = hex::<16>(v.get(3..35), "trace-id")?;
    dash(v, 35, "trace-id")?;
    let parent_id = hex::<8>(v.get(36..52), "parent-id")?;
    dash(v, 52, "parent-id")?;
    let [flags] = hex::<1>(v.get(53..55), "trace-flags")?;
    if trace_id == [0; 16] {
        return Err(TraceParentError::ZeroTraceId);
    }
    if parent_id == [0; 8] {
        return Err(TraceParentError::ZeroParentId);
    }
    Ok(TraceParent {
        version,
        trace_id: TraceId::from_bytes(trace_id),
        parent_id: SpanId::from_bytes(parent_id),
        flags: TraceFlags::new(flags),
    })
}

/// A version-00 `traceparent` value for the given ids and flags (opentelemetry's ids print as
/// zero-padded lowercase hex).
pub fn format(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    format!("00-{trace_id}-{span_id}-{flags:02x}")
}

fn dash(v: &[u8], at: usize, field: &'static str) -> Result<(), TraceParentError> {
    if v.get(at) == Some(&b'-') { Ok(()) } else { Err(TraceParentError::MissingDash { field }) }
}

/// Decodes exactly `2 * N` lowercase hex digits; the spec rejects uppercase.
fn hex<const N: usize>(digits: Option<&[u8]>, field: &'static str) -> Result<[u8; N], TraceParentError> {
    let not_hex = TraceParentError::NotHex { field, digits: 2 * N };
    let digits = digits.filter(|d| d.len() == 2 * N).ok_or(not_hex)?;
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(not_hex),
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: TraceId = TraceId::from_bytes([
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
    ]);
    const PARENT: SpanId = SpanId::from_bytes([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);

    #[test]
    fn values() {
        use TraceParentError::*;
        let ok = |version, flags| {
            Ok(TraceParent { version, trace_id: TRACE, parent_id: PARENT, flags: TraceFlags::new(flags) })
        };
        let cases: &[(&str, &str, Result<TraceParent, TraceParentError>)] = &[
            ("sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ok(0, 1)),
            ("unsampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", ok(0, 0)),
            ("other flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", ok(0, 9)),
            ("spaces around", " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t", ok(0, 1)),
            ("future version", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ok(0xcc, 1)),
            (
                "future version, extra fields",
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be",
                ok(0xcc, 1),
            ),
            (
                "future version, extra bytes without dash",
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                Err(Length { version: 0xcc, len: 56 }),
            ),
            (
                "version 00 with extra fields",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                Err(Length { version: 0, len: 61 }),
            ),
            ("version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Err(ForbiddenVersion)),
            (
                "short",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                Err(Length { version: 0, len: 54 }),
            ),
            (
                "short trace-id",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01-",
                Err(NotHex { field: "trace-id", digits: 32 }),
            ),
            (
                "uppercase",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Err(NotHex { field: "trace-id", digits: 32 }),
            ),
            (
                "uppercase version",
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Err(NotHex { field: "version", digits: 2 }),
            ),
            (
                "non-hex parent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                Err(NotHex { field: "parent-id", digits: 16 }),
            ),
            (
                "non-hex flags",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                Err(NotHex { field: "trace-flags", digits: 2 }),
            ),
            ("zero trace-id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", Err(ZeroTraceId)),
            ("zero parent-id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", Err(ZeroParentId)),
            (
                "missing dashes",
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                Err(MissingDash { field: "version" }),
            ),
            (
                "missing last dash",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7001",
                Err(MissingDash { field: "parent-id" }),
            ),
            (
                "no dashes",
                "004bf92f3577b34da6a3ce929d0e0e473600f067aa0ba902b701",
                Err(Length { version: 0, len: 52 }),
            ),
            ("empty", "", Err(Empty)),
            ("blank", "  ", Err(Empty)),
            ("one byte", "0", Err(NotHex { field: "version", digits: 2 })),
            (
                "not ascii",
                "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
                Err(NotHex { field: "trace-id", digits: 32 }),
            ),
        ];
        for (name, value, want) in cases {
            assert_eq!(parse(value), *want, "{name}: {value:?}");
        }
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok_and(|t| t.sampled()));
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").is_ok_and(|t| !t.sampled()));
    }

    #[test]
    fn format_round_trips() {
        let cases: &[(TraceId, SpanId, u8)] = &[
            (TRACE, PARENT, 1),
            (TRACE, PARENT, 0),
            (TraceId::from_bytes([0xff; 16]), SpanId::from_bytes([0x01; 8]), 0xfe),
            (TraceId::from(1), SpanId::from_bytes([0x80; 8]), 3),
        ];
        for &(trace_id, span_id, flags) in cases {
            let flags = TraceFlags::new(flags);
            let value = format(trace_id, span_id, flags);
            assert_eq!(value.len(), V00_LEN);
            let parsed = parse(&value);
            assert_eq!(
                parsed,
                Ok(TraceParent { version: 0, trace_id, parent_id: span_id, flags }),
                "{value}"
            );
        }
        assert_eq!(
            format(TRACE, PARENT, TraceFlags::SAMPLED),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            format(TraceId::from(1), SpanId::from(2), TraceFlags::new(3)),
            format!("00-{:032x}-{:016x}-03", 1, 2)
        );
    }
}
