//! The fuzz targets' harness. The HTTP module is compiled in from its source file, so fuzzing needs
//! neither the agent's dependencies nor its eBPF build; the module uses only `super::` paths and
//! `sonde_common`, which keeps that possible.

#[path = "../../src/http/mod.rs"]
pub mod http;
#[path = "../../src/http2/mod.rs"]
pub mod http2;

use http::{Chunk, Direction, Exchange, HttpConnection, Limits};

/// Runs one fuzz input through an [`HttpConnection`] and checks what must hold for any input.
///
/// Input: a mode byte, then records. Mode bits 0–1 pick the role (0 and 3: unknown, 1: requests
/// arrive, 2: requests leave); bit 2 picks small limits (256-byte heads, 4 queued requests), so
/// that the limits are reached often. A record is `op, len_hi, len_lo, gap` and `len` data bytes
/// (fewer if the input ends): op bit 0 is the direction (0 Ingress, 1 Egress); op bits 1–2 = 3
/// means "idle" (flush_idle, no data follows); `gap * 64` uncaptured bytes follow the data.
pub fn run_http_connection(input: &[u8]) {
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    let requests_from = match mode & 3 {
        1 => Some(Direction::Ingress),
        2 => Some(Direction::Egress),
        _ => None,
    };
    let limits = if mode & 4 != 0 {
        Limits {
            max_head_bytes: 256,
            max_pipelined: 4,
        }
    } else {
        Limits::default()
    };
    let mut conn = HttpConnection::new(requests_from, limits);
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let [op, hi, lo, gap, tail @ ..] = rest {
        ts += 1;
        if op & 6 == 6 {
            conn.flush_idle(&mut out);
            rest = tail;
        } else {
            let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
            let (data, after) = tail.split_at(n);
            let direction = if op & 1 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let len = n as u32 + u32::from(*gap) * 64;
            conn.feed(
                direction,
                Chunk {
                    ts_ns: ts,
                    tid: 1,
                    data,
                    len,
                },
                &mut out,
            );
            // Every request head completed by this chunk, each at most once.
            let started = conn.take_started().count();
            assert!(started <= data.len().max(1), "{started} heads from {} bytes", data.len());
            rest = after;
        }
        check(&conn, &limits, &out, ts);
    }
    conn.close(ts + 1, &mut out);
    check(&conn, &limits, &out, ts + 1);
    assert_eq!(conn.pending_requests(), 0, "close reports every request");
    assert_eq!(conn.buffered_bytes(), 0, "close frees the head buffers");
}

fn check(conn: &HttpConnection, limits: &Limits, out: &[Exchange], now: u64) {
    // Head buffers: one per direction, whose capacity may have doubled past the limit.
    assert!(conn.buffered_bytes() <= 4 * limits.max_head_bytes.max(64));
    assert!(conn.pending_requests() <= limits.max_pipelined.max(1));
    for ex in out {
        assert!(
            ex.request.start_ns <= ex.request.end_ns && ex.request.end_ns <= now,
            "{ex:?}"
        );
        if let Some(r) = &ex.response {
            assert!(r.start_ns <= r.end_ns && r.end_ns <= now, "{ex:?}");
        }
    }
}

/// Parses a `traceparent` value and checks that whatever is accepted formats back the same way.
pub fn run_traceparent(input: &[u8]) {
    let Ok(value) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(tp) = http::traceparent::parse(value) {
        let formatted = http::traceparent::format(tp.trace_id, tp.parent_id, tp.flags);
        let again = http::traceparent::parse(&formatted);
        assert_eq!(
            again.map(|t| (t.trace_id, t.parent_id, t.flags)),
            Ok((tp.trace_id, tp.parent_id, tp.flags))
        );
        if tp.version == 0 {
            assert_eq!(formatted, value.trim_matches([' ', '\t']));
        }
    }
    // Any ids format to something that parses, unless they are the forbidden all-zero ones.
    if let [t @ .., p0, p1, p2, p3, p4, p5, p6, p7, flags] = input
        && t.len() >= 16
    {
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&t[..16]);
        let parent_id = [*p0, *p1, *p2, *p3, *p4, *p5, *p6, *p7];
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
        let formatted = http::traceparent::format(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(parent_id),
            TraceFlags::new(*flags),
        );
        let parsed = http::traceparent::parse(&formatted);
        let zero = trace_id == [0; 16] || parent_id == [0; 8];
        assert_eq!(parsed.is_ok(), !zero);
    }
}

/// Runs both directions of an HTTP/2 connection through [`http2::Http2Connection`]: what must
/// hold for any bytes is bounded memory, ordered timestamps, every stream reported once, no panic.
///
/// Input: a mode byte (bit 0: requests leave, i.e. the traced process is the client; bit 1: the
/// connection was seen from its start, so the requests' direction begins with the preface), then
/// records `op, len_hi, len_lo, gap` and `len` data bytes: op bit 0 is the direction (0 Ingress,
/// 1 Egress); `gap * 64` uncaptured bytes follow the data.
pub fn run_http2(input: &[u8]) {
    use http2::{
        Http2Connection, MAX_OPEN_STREAMS,
        frame::MAX_BLOCK,
        hpack::MAX_TABLE_SIZE,
    };
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    let requests_from = if mode & 1 != 0 { Direction::Egress } else { Direction::Ingress };
    let mut conn = Http2Connection::new(requests_from, mode & 2 != 0);
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let [op, hi, lo, gap, tail @ ..] = rest {
        ts += 1;
        let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (data, after) = tail.split_at(n);
        let direction = if op & 1 == 0 { Direction::Ingress } else { Direction::Egress };
        let len = n as u32 + u32::from(*gap) * 64;
        conn.feed(direction, Chunk { ts_ns: ts, tid: 1, data, len }, &mut out);
        let _ = conn.take_started().count();
        assert!(conn.open_streams() <= MAX_OPEN_STREAMS);
        assert!(conn.held_bytes() <= 2 * (2 * MAX_BLOCK + 8192) + 2 * MAX_TABLE_SIZE, "{}", conn.held_bytes());
        rest = after;
    }
    conn.close(ts + 1, &mut out);
    assert_eq!(conn.open_streams(), 0);
    let mut streams = std::collections::HashSet::new();
    for ex in &out {
        assert!(streams.insert(ex.stream), "stream {} reported twice", ex.stream);
        assert!(ex.request.start_ns <= ex.request.end_ns && ex.request.end_ns <= ts + 1, "{ex:?}");
        if let Some(r) = &ex.response {
            assert!(r.start_ns <= r.end_ns && r.end_ns <= ts + 1, "{ex:?}");
        }
    }
}
