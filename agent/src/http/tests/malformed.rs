//! Broken, hostile and foreign bytes: no exchange is invented, nothing panics, memory stays
//! bounded, and a valid message at a chunk start gets the connection back in sync.

use super::Peer::{Client, Server};
use super::*;

const GET: &[u8] = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
const OK_2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The start of a TLS 1.3 ClientHello as curl sends it.
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x1b\x5c\x7e\xd0\x11\x42\x9f\
    \x20\xc4\x6e\x55\x0d\x18\x33\x9a\x13\x02\x13\x03\x13\x01\xc0\x2c\xc0\x30\x00\x9f\xcc\xa9\xcc\xa8\
    \x00\x00\x00\x0e\x00\x0c\x00\x00\x09localhost";

fn at(i: u64) -> u64 {
    i * SEGMENT_NS
}

/// Feeds random bytes in random chunk sizes (with random capture gaps) to both directions.
fn random_conversation(seed: u64, requests_from: Option<Direction>) -> Run {
    let mut rng = Prng::new(seed);
    let mut run = Run::with_limits(requests_from, Limits { max_head_bytes: 4096, max_pipelined: 8 });
    for i in 0..200u64 {
        let peer = if rng.below(2) == 0 { Client } else { Server };
        let n = rng.below(600);
        let data = rng.bytes(n);
        let len = (data.len() + if rng.below(4) == 0 { rng.below(5000) } else { 0 }) as u32;
        run.feed(View::Server, &[Feed { peer, ts: i, data, len }]);
        if rng.below(50) == 0 {
            run.flush_idle();
        }
    }
    run.close(1000);
    run
}

#[test]
fn random_bytes_give_nothing() {
    for seed in 1..=200 {
        for requests_from in [None, Some(Direction::Ingress), Some(Direction::Egress)] {
            let run = random_conversation(seed, requests_from);
            assert!(run.exchanges.is_empty(), "seed {seed}: {:?}", run.exchanges);
            assert_eq!(run.conn.buffered_bytes(), 0, "closed connections hold nothing");
        }
    }
}

#[test]
fn random_bytes_between_valid_exchanges() {
    // Garbage, then a request at a chunk start: back in sync every time.
    let mut rng = Prng::new(7);
    let mut feeds = Vec::new();
    for round in 0..50u64 {
        let n = 1 + rng.below(300);
        let garbage = rng.bytes(n);
        let peer = if rng.below(2) == 0 { Client } else { Server };
        feeds.push(Feed::whole(peer, at(round * 3 + 1), &garbage));
        feeds.push(Feed::whole(Client, at(round * 3 + 2), GET));
        feeds.push(Feed::whole(Server, at(round * 3 + 3), OK_2));
    }
    // A known-role connection whose first bytes are not HTTP is given up, so this one starts
    // with a good exchange.
    let mut good_first = vec![Feed::whole(Client, 1, GET), Feed::whole(Server, 2, OK_2)];
    good_first.extend(feeds);
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &good_first);
    assert_eq!(run.exchanges.len(), 51, "{:?}", run.stats());
    assert!(run.exchanges.iter().all(|e| e.response.as_ref().is_some_and(|r| r.body_bytes == 2)));
    assert!(run.stats().parse_errors >= 40 && run.stats().resyncs >= 40, "{:?}", run.stats());
}

#[test]
fn tls_is_not_http() {
    for view in [View::Server, View::Client] {
        let mut run = Run::new(Some(view.requests_from()));
        run.feed(view, &[Feed::whole(Client, 1, CLIENT_HELLO)]);
        assert!(!run.conn.is_http(), "{view:?}");
        run.feed(view, &[Feed::whole(Server, 2, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03")]);
        run.feed(view, &[Feed::whole(Client, 3, GET), Feed::whole(Server, 4, OK_2)]);
        run.close(5);
        assert!(run.exchanges.is_empty());
        assert_eq!(run.stats().parse_errors, 1);
    }
    // Role unknown: a few turns of the conversation without a message start.
    let mut run = Run::new(None);
    for i in 0..3 {
        run.feed(
            View::Server,
            &[Feed::whole(Client, 2 * i, CLIENT_HELLO), Feed::whole(Server, 2 * i + 1, b"\x17\x03\x03")],
        );
    }
    assert!(!run.conn.is_http());
    assert!(run.exchanges.is_empty());
    assert_eq!(run.stats().parse_errors, 0, "joining a connection is not an error");
}

#[test]
fn unknown_role_stays_open_for_a_long_one_way_stream() {
    // Joined in the middle of a big download: many chunks, one direction, no turn.
    let mut run = Run::new(None);
    let mut rng = Prng::new(3);
    for i in 0..100 {
        run.feed(View::Client, &[Feed::whole(Server, i, &rng.bytes(4096))]);
    }
    assert!(run.conn.is_http());
    run.feed(View::Client, &[Feed::whole(Client, 200, GET), Feed::whole(Server, 201, OK_2)]);
    assert_eq!(run.exchanges.len(), 1);
    assert_eq!(run.exchanges[0].request_direction, Direction::Egress);
}

#[test]
fn unknown_role_gives_up_after_megabytes_without_a_message_start() {
    // A bulk stream of another protocol joined mid-way: no turn ever comes, the bytes do.
    let mut run = Run::new(None);
    let mut rng = Prng::new(4);
    let mib = rng.bytes(1 << 20);
    for i in 0..3 {
        run.feed(View::Client, &[Feed::cut(Server, i, &mib, 4096)]);
    }
    assert!(run.conn.is_http(), "3 MiB: still joining");
    run.feed(View::Client, &[Feed::cut(Server, 3, &mib, 4096)]);
    assert!(!run.conn.is_http(), "4 MiB without a message start is another protocol");
}

#[test]
fn http_09_gives_nothing() {
    let feeds = [
        Feed::whole(Client, at(1), b"GET /\r\n"),
        Feed::whole(Server, at(2), b"<html>hello</html>\n"),
        Feed::whole(Client, at(3), b"GET /\r\n"),
    ];
    for requests_from in [None, Some(Direction::Ingress)] {
        let mut run = Run::new(requests_from);
        run.feed(View::Server, &feeds).close(at(4));
        assert!(run.exchanges.is_empty(), "{requests_from:?}");
    }
}

#[test]
fn invalid_chunk_sizes() {
    let bad_bodies: &[&[u8]] =
        &[b"zz\r\nhello\r\n0\r\n\r\n", b"5x\r\nhello\r\n", b"10000000000000000\r\n", b"\r\n\r\n"];
    for body in bad_bodies {
        let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        response.extend_from_slice(body);
        let feeds = [
            Feed::whole(Client, at(1), GET),
            Feed::whole(Server, at(2), &response),
            Feed::whole(Client, at(3), GET),
            Feed::whole(Server, at(4), OK_2),
        ];
        let mut run = Run::new(Some(Direction::Ingress));
        run.feed(View::Server, &feeds);
        // The broken response is still this request's: it ends where the next request starts, and
        // the bytes after its head count as its body (an estimate once framing is lost).
        let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
        let broken_body = body.len() as u64;
        assert_eq!(
            got,
            [
                want("GET /ok", (1, 1), 0, Some((200, (2, 2), broken_body))),
                want("GET /ok", (3, 3), 0, Some((200, (4, 4), 2))),
            ],
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(run.stats().parse_errors, 1);
        assert!(matches!(
            run.stats().last_error,
            Some(ParseError::BadChunkedBody { kind: MessageKind::Response, .. })
        ));
    }
}

#[test]
fn huge_sizes_allocate_nothing() {
    // Content-Length of 10^18: the body is counted as it comes, never reserved.
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(
        View::Server,
        &[
            Feed::whole(
                Client,
                at(1),
                b"POST /up HTTP/1.1\r\nContent-Length: 1000000000000000000\r\n\r\nabc",
            ),
            Feed::whole(
                Server,
                at(2),
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
        ],
    );
    assert!(run.conn.buffered_bytes() <= 1024, "{}", run.conn.buffered_bytes());
    run.close(at(3));
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, [want("POST /up", (1, 1), 3, Some((413, (2, 2), 0)))]);
    assert_eq!(run.exchanges[0].request.head.content_length, Some(1_000_000_000_000_000_000));

    // Chunk size ffffffffffffffff: as large as a size can be, and counted the same way.
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(
        View::Server,
        &[
            Feed::whole(Client, at(1), GET),
            Feed::whole(
                Server,
                at(2),
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabcd",
            ),
            Feed { peer: Server, ts: at(3), data: Vec::new(), len: u32::MAX },
        ],
    );
    assert!(run.exchanges.is_empty());
    run.close(at(4));
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(got, [want("GET /ok", (1, 1), 0, Some((200, (2, 3), 4 + u64::from(u32::MAX))))]);
}

#[test]
fn oversize_heads() {
    // 100 000 header lines: past max_head_bytes long before httparse sees them.
    let mut huge = b"GET /huge HTTP/1.1\r\n".to_vec();
    for i in 0..100_000 {
        huge.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    // 200 small header lines: within the byte limit, past httparse's fixed header array.
    let mut many = b"GET /many HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let cases: &[(&[u8], ParseError)] = &[
        (&huge, ParseError::HeadTooLarge { kind: MessageKind::Request, limit: 64 * 1024 }),
        (&many, ParseError::BadHead { kind: MessageKind::Request, source: httparse::Error::TooManyHeaders }),
    ];
    let rejection = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n";
    for (head, error) in cases {
        for step in [head.len(), 8192, 1] {
            let mut feeds: Vec<Feed> = Vec::new();
            for (k, piece) in head.chunks(step).enumerate() {
                feeds.push(Feed::whole(Client, at(1) + k as u64, piece));
            }
            if step == 1 && head.len() > 100_000 {
                feeds.truncate(70_000); // enough to pass the limit; keeps the test quick
            }
            feeds.push(Feed::whole(Server, at(2), rejection));
            feeds.push(Feed::whole(Client, at(3), GET));
            feeds.push(Feed::whole(Server, at(4), OK_2));
            let mut run = Run::new(Some(Direction::Ingress));
            run.feed(View::Server, &feeds);
            let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
            // The 431 answers the rejected head, so the next response pairs with the next request.
            assert_eq!(
                got,
                [want("GET /ok", (3, 3), 0, Some((200, (4, 4), 2)))],
                "{error} in pieces of {step}"
            );
            assert_eq!((run.stats().parse_errors, run.stats().last_error), (1, Some(*error)));
            assert_eq!(run.stats().resyncs, 1);
        }
    }
}

#[test]
fn garbage_where_a_message_must_start() {
    // Garbage after a good exchange: the direction desyncs, and a request that begins mid-chunk
    // is not trusted; one at a chunk start is.
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::whole(Server, at(2), OK_2),
        Feed::whole(Client, at(3), b"garbage GET /mid HTTP/1.1\r\n\r\n"),
        Feed::whole(Client, at(4), b"GET /next HTTP/1.1\r\n\r\n"),
        Feed::whole(Server, at(5), OK_2),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            want("GET /ok", (1, 1), 0, Some((200, (2, 2), 2))),
            want("GET /next", (4, 4), 0, Some((200, (5, 5), 2)))
        ]
    );
    assert_eq!((run.stats().parse_errors, run.stats().resyncs), (1, 1));
    assert_eq!(run.stats().last_error, Some(ParseError::NotAMessageStart { kind: MessageKind::Request }));

    // Lowercase methods, HTTP/2 preface and unknown methods are not requests.
    for first in
        [&b"get / HTTP/1.1\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"PROPFIND / HTTP/1.1\r\n\r\n"]
    {
        let mut run = Run::new(Some(Direction::Ingress));
        run.feed(View::Server, &[Feed::whole(Client, 1, first), Feed::whole(Server, 2, OK_2)]).close(3);
        assert!(run.exchanges.is_empty());
        assert!(!run.conn.is_http());
    }
}

#[test]
fn responses_without_requests() {
    // Joined mid-connection: a response first, then a normal exchange.
    for requests_from in [None, Some(Direction::Ingress)] {
        let feeds = [
            Feed::whole(Server, at(1), OK_2),
            Feed::whole(Server, at(2), b"HTTP/1.1 200 OK\r\n\r\nuntil close... or the next request"),
            Feed::whole(Client, at(3), GET),
            Feed::whole(Server, at(4), OK_2),
        ];
        let mut run = Run::new(requests_from);
        run.feed(View::Server, &feeds).close(at(5));
        let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
        assert_eq!(got, [want("GET /ok", (3, 3), 0, Some((200, (4, 4), 2)))], "{requests_from:?}");
        assert_eq!(run.stats().orphan_responses, 2);
        assert_eq!(run.stats().parse_errors, 0);
    }
}

#[test]
fn bad_response_heads_keep_pairing_aligned() {
    let feeds = [
        Feed::whole(Client, at(1), GET),
        Feed::whole(Client, at(1) + 1, b"GET /second HTTP/1.1\r\n\r\n"),
        Feed::whole(Server, at(2), b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nxx"),
        Feed::whole(Server, at(3), OK_2),
    ];
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &feeds);
    let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
    assert_eq!(
        got,
        [want("GET /ok", (1, 1), 0, None), want("GET /second", (1, 1), 0, Some((200, (3, 3), 2)))]
    );
    assert_eq!(run.stats().last_error, Some(ParseError::BadContentLength { kind: MessageKind::Response }));
}
