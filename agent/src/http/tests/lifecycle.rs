//! The life of a connection: upgrades, interim responses, pipelining limits, close and idle.

use super::Peer::{Client, Server};
use super::*;

const GET: &[u8] = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
const OK_2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn at(i: u64) -> u64 {
    i * SEGMENT_NS
}

fn summaries(run: &Run) -> Vec<Summary> {
    run.exchanges.iter().map(summary).collect()
}

#[test]
fn websocket_upgrade_ends_http() {
    let feeds = [
        Feed::whole(
            Client,
            at(1),
            b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ),
        Feed::whole(
            Server,
            at(2),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05hello",
        ),
        Feed::whole(Client, at(3), b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"),
        Feed::whole(Client, at(4), GET),
        Feed::whole(Server, at(5), OK_2),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds[..2]);
    assert_eq!(summaries(&run), [want("GET /chat", (1, 1), 0, Some((101, (2, 2), 0)))]);
    assert!(!run.conn.is_http());
    run.feed(View::Server, &feeds[2..]).close(at(6));
    assert_eq!(run.exchanges.len(), 1, "frames after the upgrade are not HTTP");
    assert_eq!(run.stats().parse_errors, 0);
}

#[test]
fn connect_tunnels() {
    let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    // 2xx: a tunnel, TLS from then on.
    let mut run = Run::new(Some(Direction::Egress));
    run.feed(
        View::Client,
        &[
            Feed::whole(Client, at(1), connect),
            Feed::whole(Server, at(2), b"HTTP/1.1 200 Connection Established\r\n\r\n"),
            Feed::whole(Client, at(3), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ],
    );
    assert_eq!(summaries(&run), [want("CONNECT example.com:443", (1, 1), 0, Some((200, (2, 2), 0)))]);
    assert!(!run.conn.is_http());
    // 407: still HTTP, the next request follows.
    let mut run = Run::new(Some(Direction::Egress));
    run.feed(
        View::Client,
        &[
            Feed::whole(Client, at(1), connect),
            Feed::whole(
                Server,
                at(2),
                b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\ndeny",
            ),
            Feed::whole(Client, at(3), GET),
            Feed::whole(Server, at(4), OK_2),
        ],
    );
    assert_eq!(
        summaries(&run),
        [
            want("CONNECT example.com:443", (1, 1), 0, Some((407, (2, 2), 4))),
            want("GET /ok", (3, 3), 0, Some((200, (4, 4), 2))),
        ]
    );
    assert!(run.conn.is_http());
}

#[test]
fn interim_responses_are_skipped() {
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::whole(Server, at(2), b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"),
        Feed::whole(
            Server,
            at(3),
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    assert_eq!(summaries(&run), [want("GET /ok", (1, 1), 0, Some((200, (3, 3), 2)))]);

    // A final response to an Expect: 100-continue that the server refuses: the body never comes.
    let feeds = [
        Feed::whole(
            Client,
            at(1),
            b"PUT /big HTTP/1.1\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
        ),
        Feed::whole(Server, at(2), b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    assert!(run.exchanges.is_empty(), "held while the request body may still come");
    run.close(at(3));
    assert_eq!(summaries(&run), [want("PUT /big", (1, 1), 0, Some((417, (2, 2), 0)))]);
}

#[test]
fn early_response_is_held_until_the_request_ends() {
    let head = b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234";
    let early = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
    // The rest of the body comes, then the next exchange: all in order.
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(
        View::Server,
        &[
            Feed::whole(Client, at(1), head),
            Feed::whole(Server, at(2), early),
            Feed::whole(Client, at(3), b"56789"),
            Feed::whole(Client, at(4), GET),
            Feed::whole(Server, at(5), OK_2),
        ],
    );
    assert_eq!(
        summaries(&run),
        [
            want("POST /up", (1, 3), 10, Some((401, (2, 2), 0))),
            want("GET /ok", (4, 4), 0, Some((200, (5, 5), 2)))
        ]
    );
    // The rest of the body never comes: idle ends it.
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &[Feed::whole(Client, at(1), head), Feed::whole(Server, at(2), early)]);
    assert!(run.exchanges.is_empty());
    run.flush_idle();
    assert_eq!(summaries(&run), [want("POST /up", (1, 1), 5, Some((401, (2, 2), 0)))]);
}

#[test]
fn pipelining_cap_drops_the_oldest() {
    let limits = Limits { max_head_bytes: 1024, max_pipelined: 2 };
    let requests: Vec<u8> =
        [&b"GET /1 HTTP/1.1\r\n\r\n"[..], b"GET /2 HTTP/1.1\r\n\r\n", b"GET /3 HTTP/1.1\r\n\r\n"].concat();
    let mut run = Run::with_limits(Some(Direction::Ingress), limits);
    run.feed(View::Server, &[Feed::whole(Client, at(1), &requests)]);
    assert_eq!(run.conn.pending_requests(), 2);
    assert_eq!(run.stats().dropped_requests, 1);
    run.feed(View::Server, &[Feed::whole(Server, at(2), &OK_2.repeat(3))]).close(at(3));
    // Responses pair FIFO with what is left; the third response finds no request.
    let lines: Vec<String> = summaries(&run).into_iter().map(|s| s.0).collect();
    assert_eq!(lines, ["GET /2", "GET /3"]);
    assert_eq!(run.stats().orphan_responses, 1);
}

#[test]
fn close_and_idle() {
    // Requests without a response are reported at close, with none.
    let mut run = Run::new(Some(Direction::Ingress));
    let two = [GET, b"GET /two HTTP/1.1\r\n\r\n"].concat();
    run.feed(View::Server, &[Feed::whole(Client, at(1), &two)]);
    run.flush_idle();
    assert!(run.exchanges.is_empty(), "idle does not give up on requests");
    run.close(at(2));
    assert_eq!(summaries(&run), [want("GET /ok", (1, 1), 0, None), want("GET /two", (1, 1), 0, None)]);
    assert!(!run.conn.is_http() && run.conn.seen_http());
    // Closing again, or feeding after close, changes nothing.
    run.close(at(3));
    run.feed(View::Server, &[Feed::whole(Server, at(4), OK_2)]);
    assert_eq!(run.exchanges.len(), 2);

    // A response in progress at close is reported as far as it came.
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(
        View::Server,
        &[
            Feed::whole(Client, at(1), GET),
            Feed::whole(Server, at(2), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        ],
    );
    run.close(at(3));
    assert_eq!(summaries(&run), [want("GET /ok", (1, 1), 0, Some((200, (2, 2), 3)))]);

    // A body until close: idle ends it at its last chunk, and close does not repeat it.
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(
        View::Server,
        &[
            Feed::whole(Client, at(1), GET),
            Feed::whole(Server, at(2), b"HTTP/1.0 200 OK\r\n\r\nfirst "),
            Feed::whole(Server, at(3), b"second"),
        ],
    );
    assert!(run.exchanges.is_empty());
    run.flush_idle();
    assert_eq!(summaries(&run), [want("GET /ok", (1, 1), 0, Some((200, (2, 3), 12)))]);
    run.feed(View::Server, &[Feed::whole(Server, at(4), b"late bytes")]).close(at(5));
    assert_eq!(run.exchanges.len(), 1);
}

#[test]
fn unknown_transfer_coding_on_a_request() {
    // RFC 9112 §6.3: the server answers 400 and closes; the request ends where the answer starts.
    let feeds = [
        Feed::whole(Client, at(1), b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00"),
        Feed::whole(Client, at(2), b"\x00\x00\x00\x00"),
        Feed::whole(
            Server,
            at(3),
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        Feed::whole(Client, at(4), b"\x03\x00"),
    ];
    let got = run_closed(View::Server, &feeds);
    assert_eq!(
        got.iter().map(summary).collect::<Vec<_>>(),
        [want("POST /x", (1, 2), 8, Some((400, (3, 3), 0)))]
    );
}

#[test]
fn empty_lines_between_messages_and_empty_chunks() {
    let feeds = [
        Feed::whole(Client, at(1), b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\r\n"),
        Feed::whole(Server, at(2), b""),
        Feed::whole(Server, at(3), OK_2),
        Feed::whole(Client, at(4), b"\r\n"),
        Feed::whole(Client, at(5), GET),
        Feed::whole(Server, at(6), OK_2),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    assert_eq!(
        summaries(&run),
        [
            want("POST /a", (1, 1), 2, Some((200, (3, 3), 2))),
            want("GET /ok", (5, 5), 0, Some((200, (6, 6), 2)))
        ]
    );
    assert_eq!(run.stats().parse_errors, 0);
}

#[test]
fn head_requests_in_a_pipeline() {
    let requests = [&b"HEAD /a HTTP/1.1\r\n\r\n"[..], GET].concat();
    let responses = [&b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"[..], OK_2].concat();
    let got = run_closed(
        View::Server,
        &[Feed::whole(Client, at(1), &requests), Feed::whole(Server, at(2), &responses)],
    );
    assert_eq!(
        got.iter().map(summary).collect::<Vec<_>>(),
        [
            want("HEAD /a", (1, 1), 0, Some((200, (2, 2), 0))),
            want("GET /ok", (1, 1), 0, Some((200, (2, 2), 2)))
        ]
    );
}

#[test]
fn limits_are_clamped() {
    let mut run = Run::with_limits(Some(Direction::Ingress), Limits { max_head_bytes: 0, max_pipelined: 0 });
    run.feed(View::Server, &[Feed::whole(Client, at(1), GET), Feed::whole(Server, at(2), OK_2)]);
    assert_eq!(run.exchanges.len(), 1);
    assert_eq!(Limits::default(), Limits { max_head_bytes: 65536, max_pipelined: 64 });
}
