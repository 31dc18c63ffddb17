//! Captures shorter than what the syscall moved: the bytes past `data` are unknown.

use super::Peer::{Client, Server};
use super::*;

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: t/1\r\n\r\n";
const GET_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// `CHUNKED` with its data "Mozilla" cut after `captured` bytes.
const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7;a=b\r\nMozilla\r\n9\r\nDeveloper\r\n0\r\n\r\n";

fn at(i: u64) -> u64 {
    i * SEGMENT_NS
}

#[test]
fn content_length_body_counts_uncaptured_bytes() {
    let response = wire::NGINX_KEEPALIVE[1].1;
    let head_len = response.len() - 57;
    // (captured bytes of the response, or None for a chunk that captured nothing of it)
    for captured in [head_len, head_len + 1, head_len + 56] {
        let feeds = [
            Feed::whole(Client, at(1), wire::NGINX_KEEPALIVE[0].1),
            Feed::cut(Server, at(2), response, captured),
            Feed::whole(Client, at(3), wire::NGINX_KEEPALIVE[2].1),
            Feed::whole(Server, at(4), wire::NGINX_KEEPALIVE[3].1),
        ];
        let mut run = Run::new(Some(Direction::Ingress));
        run.feed(View::Server, &feeds);
        let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
        let want_all = [
            want("GET /", (1, 1), 0, Some((200, (2, 2), 57))),
            want("GET /empty", (3, 3), 0, Some((204, (4, 4), 0))),
        ];
        assert_eq!(got, want_all, "captured {captured}");
        assert_eq!(run.stats().framing_lost, 0);
    }

    // The body arrives in a later chunk that captured nothing at all.
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::whole(Server, at(2), b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        Feed { peer: Server, ts: at(3), data: Vec::new(), len: 1000 },
        Feed::whole(Client, at(4), GET_B),
        Feed::whole(Server, at(5), OK_5),
    ];
    let got: Vec<Summary> = run_closed(View::Server, &feeds).iter().map(summary).collect();
    assert_eq!(
        got,
        [
            want("GET /a", (1, 1), 0, Some((200, (2, 3), 1000))),
            want("GET /b", (4, 4), 0, Some((200, (5, 5), 5)))
        ]
    );
}

#[test]
fn gap_past_the_end_of_a_body_loses_the_place_until_a_chunk_start() {
    // The syscall moved the end of this response and, uncaptured, the start of another.
    let mut bigger = OK_5.to_vec();
    bigger.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nworld");
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::whole(Client, at(1) + 1, GET_B),
        Feed::cut(Server, at(2), &bigger, OK_5.len()),
        Feed::whole(Client, at(3), GET),
        Feed::whole(Server, at(4), OK_5),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds).close(at(5));
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    // The second response went unseen, so the third pairs with the second request: the cost of a
    // gap that hides a message start, bounded to this stretch of the connection.
    assert_eq!(
        got,
        [
            want("GET /a", (1, 1), 0, Some((200, (2, 2), 5))),
            want("GET /b", (1, 1), 0, Some((200, (4, 4), 5))),
            want("GET /a", (3, 3), 0, None),
        ]
    );
    assert_eq!((run.stats().framing_lost, run.stats().resyncs, run.stats().parse_errors), (1, 1, 0));
}

#[test]
fn chunked_body_gaps() {
    let mozilla = CHUNKED.iter().position(|&b| b == b'M').unwrap_or_default();

    // Gap inside chunk data, then the rest captured: framing kept, exact end.
    for captured in [mozilla + 1, mozilla + 3, mozilla + 6] {
        let first = &CHUNKED[..mozilla + 7];
        let feeds = [
            Feed::whole(Client, at(1), GET),
            Feed::cut(Server, at(2), first, captured),
            Feed::whole(Server, at(3), &CHUNKED[mozilla + 7..]),
            Feed::whole(Client, at(4), GET_B),
            Feed::whole(Server, at(5), OK_5),
        ];
        let mut run = Run::new(Some(Direction::Ingress));
        run.feed(View::Server, &feeds);
        let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
        assert_eq!(
            got,
            [
                want("GET /a", (1, 1), 0, Some((200, (2, 3), 16))),
                want("GET /b", (4, 4), 0, Some((200, (5, 5), 5)))
            ],
            "captured {captured}"
        );
        assert_eq!(run.stats().framing_lost, 0);
    }

    // A gap covering the CRLF after the data (and nothing more) keeps the framing too.
    for extra in [1, 2] {
        let feeds = [
            Feed::whole(Client, at(1), GET),
            Feed::cut(Server, at(2), &CHUNKED[..mozilla + 7 + extra], mozilla + 2),
            Feed::whole(Server, at(3), &CHUNKED[mozilla + 7 + extra..]),
        ];
        let got: Vec<Summary> = run_closed(View::Server, &feeds).iter().map(summary).collect();
        assert_eq!(got, [want("GET /a", (1, 1), 0, Some((200, (2, 3), 16)))], "CRLF gap {extra}");
    }

    // A gap that may hide a chunk-size line: the end is unknown, so the response ends when the
    // next request starts, at its last chunk seen.
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::cut(Server, at(2), &CHUNKED[..mozilla + 12], mozilla + 2),
        Feed::whole(Server, at(3), &CHUNKED[mozilla + 12..]),
        Feed::whole(Client, at(4), GET_B),
        Feed::whole(Server, at(5), OK_5),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds[..3]);
    assert!(run.exchanges.is_empty(), "the end of the first response is not known yet");
    run.feed(View::Server, &feeds[3..]);
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    let rest = (CHUNKED.len() - (mozilla + 12)) as u64;
    assert_eq!(
        got,
        [
            want("GET /a", (1, 1), 0, Some((200, (2, 3), 2 + 10 + rest))),
            want("GET /b", (4, 4), 0, Some((200, (5, 5), 5))),
        ]
    );
    assert_eq!((run.stats().framing_lost, run.stats().resyncs), (1, 1));
}

#[test]
fn truncated_request_head() {
    let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nUser-Agent: t/1\r\n\r\n0123456789";
    let captured = 40; // "...Host: h\r\nContent-Len"
    let feeds = [
        Feed::cut(Client, at(1), head, captured),
        Feed::whole(Client, at(2), b"more body"),
        Feed::whole(Server, at(3), OK_5),
        Feed::whole(Client, at(4), GET_B),
        Feed::whole(Server, at(5), OK_5),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds).close(at(6));
    let first = &run.exchanges[0];
    let want_head = RequestHead {
        method: "POST".into(),
        target: "/upload".into(),
        minor_version: 1,
        host: Some("h".into()),
        user_agent: None,
        traceparent: None,
        tracestate: None,
        content_length: None,
        truncated: true,
    };
    assert_eq!(first.request.head, want_head);
    // The end was unknown: the response's start ended the request at its last chunk.
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            want("POST /upload", (1, 2), 9, Some((200, (3, 3), 5))),
            want("GET /b", (4, 4), 0, Some((200, (5, 5), 5))),
        ]
    );
    assert_eq!(run.stats().truncated_heads, 1);

    // Captured bytes end inside the request line: not a request we can report; the response to
    // it keeps its place, so the next exchange pairs right.
    let feeds = [
        Feed::cut(Client, at(1), head, 8),
        Feed::whole(Server, at(2), OK_5),
        Feed::whole(Client, at(3), GET_B),
        Feed::whole(Server, at(4), OK_5),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, [want("GET /b", (3, 3), 0, Some((200, (4, 4), 5)))]);
    assert_eq!(run.stats().last_error, Some(ParseError::TruncatedStartLine { kind: MessageKind::Request }));
}

#[test]
fn truncated_response_head() {
    let response = b"HTTP/1.1 503 Service Unavailable\r\nServer: nginx\r\nContent-Length: 5\r\n\r\nbusy!";
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::cut(Server, at(2), response, 45),
        Feed::whole(Server, at(3), b"tail of something"),
    ];
    // Unknown end: it ends at the next request...
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    assert!(run.exchanges.is_empty());
    run.feed(View::Server, &[Feed::whole(Client, at(4), GET_B), Feed::whole(Server, at(5), OK_5)]);
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            want("GET /a", (1, 1), 0, Some((503, (2, 3), 17))),
            want("GET /b", (4, 4), 0, Some((200, (5, 5), 5)))
        ]
    );
    let head = run.exchanges[0].response.as_ref().map(|r| r.head.clone());
    assert_eq!(
        head,
        Some(ResponseHead { status: 503, minor_version: 1, content_length: None, truncated: true })
    );

    // ... or when idle ...
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds).flush_idle();
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, [want("GET /a", (1, 1), 0, Some((503, (2, 3), 17)))]);
    run.close(at(9));
    assert_eq!(run.exchanges.len(), 1, "flushed once, not again at close");

    // ... or at close.
    let got: Vec<Summary> = run_closed(View::Server, &feeds).iter().map(summary).collect();
    assert_eq!(got, [want("GET /a", (1, 1), 0, Some((503, (2, 3), 17)))]);

    // A truncated 204 still has no body: reported at once. What follows in the gap is unknown, so
    // the next response is found at a chunk start.
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::whole(Client, at(1) + 1, GET_B),
        Feed::cut(Server, at(2), b"HTTP/1.1 204 No Content\r\nServer: nginx\r\nDate: x\r\n\r\n", 30),
        Feed::whole(Server, at(3), OK_5),
    ];
    let got: Vec<Summary> = run_closed(View::Server, &feeds).iter().map(summary).collect();
    assert_eq!(
        got,
        [
            want("GET /a", (1, 1), 0, Some((204, (2, 2), 0))),
            want("GET /b", (1, 1), 0, Some((200, (3, 3), 5)))
        ]
    );
}
