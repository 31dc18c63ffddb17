//! Streams from both directions of a connection: gRPC calls and plain HTTP/2 requests, interleaved,
//! reset, cut, split at every offset, and joined late — every field sonde reports is the right one.

use sonde_common::Direction::{self, Egress, Ingress};

use super::{IndexingEncoder, frame};
use crate::{
    http::Chunk,
    http2::{Ending, Http2Connection, StreamExchange, frame::PREFACE},
};

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A conversation as a traced server sees it: the client's bytes are read (Ingress), its own
/// written (Egress). Each side has its own HPACK encoder, as a real peer does.
struct Conversation {
    client: IndexingEncoder,
    server: IndexingEncoder,
    chunks: Vec<(Direction, Vec<u8>)>,
}

impl Conversation {
    fn new() -> Self {
        let mut c = Conversation {
            client: IndexingEncoder::new(),
            server: IndexingEncoder::new(),
            chunks: Vec::new(),
        };
        c.chunks.push((Ingress, [PREFACE, &frame(0x4, 0, 0, &[])].concat()));
        c.chunks.push((Egress, frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])));
        c
    }

    fn headers(&mut self, direction: Direction, stream: u32, fields: &[(&str, &str)], flags: u8) {
        let encoder = if direction == Ingress { &mut self.client } else { &mut self.server };
        let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        self.chunks.push((direction, frame(0x1, flags | END_HEADERS, stream, &block)));
    }

    fn data(&mut self, direction: Direction, stream: u32, len: usize, flags: u8) {
        self.chunks.push((direction, frame(0x0, flags, stream, &vec![0; len])));
    }

    fn grpc_request(&mut self, stream: u32, method: &str, traceparent: Option<&str>) {
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "greeter:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        if let Some(tp) = traceparent {
            fields.push(("traceparent", tp));
        }
        self.headers(Ingress, stream, &fields, 0);
        self.data(Ingress, stream, 12, END_STREAM);
    }

    fn grpc_response(&mut self, stream: u32, status: &str) {
        self.headers(Egress, stream, &[(":status", "200"), ("content-type", "application/grpc")], 0);
        self.data(Egress, stream, 20, 0);
        self.headers(Egress, stream, &[("grpc-status", status), ("grpc-message", "")], END_STREAM);
    }

    /// Every byte, fed in the recorded chunks.
    fn run(&self) -> (Vec<StreamExchange>, Http2Connection) {
        let mut conn = Http2Connection::new(Ingress, true);
        let mut out = Vec::new();
        for (i, (direction, bytes)) in self.chunks.iter().enumerate() {
            conn.feed(*direction, chunk(i as u64, bytes), &mut out);
        }
        (out, conn)
    }
}

fn chunk(ts: u64, data: &[u8]) -> Chunk<'_> {
    Chunk { ts_ns: ts, tid: 7, data, len: data.len() as u32 }
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn a_unary_grpc_call_is_one_stream_with_its_method_status_and_trace_context() {
    let mut c = Conversation::new();
    c.grpc_request(1, "/helloworld.Greeter/SayHello", Some(TRACEPARENT));
    c.grpc_response(1, "0");
    let (out, mut conn) = c.run();
    assert_eq!(out.len(), 1, "{out:?}");
    let ex = &out[0];
    assert_eq!((ex.stream, ex.ending, ex.request_direction), (1, Ending::Complete, Ingress));
    let request = &ex.request.headers;
    assert_eq!(request.method.as_deref(), Some("POST"));
    assert_eq!(request.path.as_deref(), Some("/helloworld.Greeter/SayHello"));
    assert_eq!(request.authority.as_deref(), Some("greeter:50051"));
    assert_eq!(request.content_type.as_deref(), Some("application/grpc"));
    assert_eq!(request.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(request.unknown_fields, 0);
    assert_eq!(ex.request.body_bytes, 12);
    let response = ex.response.as_ref().unwrap();
    assert_eq!((response.headers.status, response.headers.grpc_status), (Some(200), Some(0)));
    assert_eq!(response.body_bytes, 20);
    assert!(ex.request.start_ns <= ex.request.end_ns && ex.request.end_ns <= response.start_ns);
    assert!(response.start_ns < response.end_ns);
    let started: Vec<_> = conn.take_started().collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(conn.open_streams(), 0);
}

#[test]
fn a_hundred_interleaved_streams_each_get_their_own_response() {
    let mut c = Conversation::new();
    for i in 0..100u32 {
        c.grpc_request(2 * i + 1, &format!("/svc.Echo/Call{i}"), None);
    }
    // Answered in reverse order, each with its own status.
    for i in (0..100u32).rev() {
        c.grpc_response(2 * i + 1, &(i % 17).to_string());
    }
    let (out, _) = c.run();
    assert_eq!(out.len(), 100);
    for ex in &out {
        let i = (ex.stream - 1) / 2;
        assert_eq!(ex.request.headers.path, Some(format!("/svc.Echo/Call{i}")));
        assert_eq!(ex.response.as_ref().unwrap().headers.grpc_status, Some(i % 17));
        assert_eq!(ex.ending, Ending::Complete);
    }
}

#[test]
fn split_at_every_offset_the_streams_are_the_same() {
    let mut c = Conversation::new();
    c.grpc_request(1, "/a.B/C", Some(TRACEPARENT));
    c.grpc_request(3, "/a.B/D", None);
    c.grpc_response(3, "5");
    c.grpc_response(1, "0");
    let (expected, _) = c.run();
    assert_eq!(expected.len(), 2);
    // Each direction's bytes as one stream, cut in two at every offset; the directions alternate
    // chunk by chunk as they were recorded.
    for cut in 1..60 {
        let mut conn = Http2Connection::new(Ingress, true);
        let mut out = Vec::new();
        for (i, (direction, bytes)) in c.chunks.iter().enumerate() {
            let at = cut.min(bytes.len());
            conn.feed(*direction, chunk(i as u64, &bytes[..at]), &mut out);
            conn.feed(*direction, chunk(i as u64, &bytes[at..]), &mut out);
        }
        assert_eq!(out, expected, "cut at {cut}");
    }
}

#[test]
fn a_trailers_only_response_ends_the_stream_with_its_status() {
    let mut c = Conversation::new();
    c.grpc_request(1, "/a.B/Missing", None);
    c.headers(
        Egress,
        1,
        &[(":status", "200"), ("grpc-status", "12"), ("grpc-message", "unknown method")],
        END_STREAM,
    );
    let (out, _) = c.run();
    let response = &out[0].response.as_ref().unwrap().headers;
    assert_eq!(response.grpc_status, Some(12));
    assert_eq!(response.grpc_message.as_deref(), Some("unknown method"));
    assert_eq!(out[0].ending, Ending::Complete);
}

#[test]
fn resets_goaways_and_closes_end_streams_that_did_not_finish() {
    let mut c = Conversation::new();
    c.grpc_request(1, "/a.B/Cancelled", None);
    c.grpc_request(3, "/a.B/Refused", None);
    c.grpc_request(5, "/a.B/Open", None);
    c.headers(Egress, 5, &[(":status", "200")], 0);
    // The client cancels stream 1 (CANCEL, 0x8); the server says it processed only up to 1.
    c.chunks.push((Ingress, frame(0x3, 0, 1, &8u32.to_be_bytes())));
    c.chunks.push((Egress, frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0])));
    let (mut out, mut conn) = c.run();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!((out[0].stream, out[0].ending), (1, Ending::Reset { code: 8, by: Ingress }));
    assert_eq!((out[1].stream, out[1].ending), (3, Ending::Cut));
    assert_eq!((out[2].stream, out[2].ending), (5, Ending::Cut));
    assert_eq!(out[2].response.as_ref().unwrap().headers.status, Some(200));
    conn.close(99, &mut out);
    assert_eq!(out.len(), 3, "nothing was left open");
}

#[test]
fn an_informational_response_is_skipped_and_plain_http2_keeps_its_status() {
    let mut c = Conversation::new();
    c.headers(
        Ingress,
        1,
        &[(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "example.com")],
        END_STREAM,
    );
    c.headers(Egress, 1, &[(":status", "103"), ("link", "</style.css>; rel=preload")], 0);
    c.headers(Egress, 1, &[(":status", "404"), ("content-type", "text/html")], 0);
    c.data(Egress, 1, 100, END_STREAM);
    let (out, _) = c.run();
    assert_eq!(out.len(), 1);
    let response = out[0].response.as_ref().unwrap();
    assert_eq!(response.headers.status, Some(404));
    assert_eq!(response.body_bytes, 100);
    assert_eq!(out[0].request.headers.method.as_deref(), Some("GET"));
}

#[test]
fn joined_late_every_method_and_path_reported_is_right() {
    let mut c = Conversation::new();
    for i in 0..40u32 {
        // Few distinct methods: later requests reference the table entries earlier ones inserted.
        c.grpc_request(2 * i + 1, &format!("/svc.Echo/Call{}", i % 5), None);
        c.grpc_response(2 * i + 1, &(i % 3).to_string());
    }
    let (all, _) = c.run();
    assert_eq!(all.len(), 40);
    let mut partly_known = 0;
    // Join at every request's first chunk: from there on, the tables hold entries never seen.
    let starts: Vec<usize> = c
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, (d, bytes))| *d == Ingress && bytes[3] == 0x1)
        .map(|(i, _)| i)
        .collect();
    for &join in &starts {
        let mut conn = Http2Connection::new(Ingress, false);
        let mut out = Vec::new();
        for (i, (direction, bytes)) in c.chunks.iter().enumerate().skip(join) {
            conn.feed(*direction, chunk(i as u64, bytes), &mut out);
        }
        for ex in &out {
            let truth = &all[((ex.stream - 1) / 2) as usize];
            let (h, t) = (&ex.request.headers, &truth.request.headers);
            assert!(h.path.is_none() || h.path == t.path, "joined at {join}: {h:?} for {t:?}");
            assert!(h.method.is_none() || h.method == t.method, "joined at {join}: {h:?}");
            let (r, rt) = (&ex.response.as_ref().unwrap().headers, &truth.response.as_ref().unwrap().headers);
            assert!(r.grpc_status.is_none() || r.grpc_status == rt.grpc_status, "joined at {join}: {r:?}");
            partly_known += usize::from(h.path.is_none());
        }
        assert_eq!(out.len(), all.len() - starts.iter().position(|&s| s == join).unwrap());
    }
    assert!(partly_known > 0, "joining late leaves some paths unknown");
}
