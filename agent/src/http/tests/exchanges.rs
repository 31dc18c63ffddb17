//! Real conversations: the exchanges they give, seen from either end, fed whole, split at every
//! offset, and one byte per chunk.

use super::Peer::{Client, Server};
use super::*;

struct Case {
    name: &'static str,
    segs: Vec<(Peer, Vec<u8>)>,
    want: Vec<Summary>,
    /// How many of the exchanges come out only when the connection closes.
    at_close: usize,
}

/// nginx answering a 100 000-byte upload with 413 after 1000 bytes, before the body is through.
fn nginx_early_413() -> Vec<(Peer, Vec<u8>)> {
    let mut first = b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\
        Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
        .to_vec();
    first.extend(std::iter::repeat_n(b'x', 1000));
    let response = b"HTTP/1.1 413 Request Entity Too Large\r\nServer: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:32 GMT\r\nContent-Type: text/html\r\nContent-Length: 183\r\n\
        Connection: close\r\n\r\n<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n\
        <body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n\
        <hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n";
    vec![(Client, first), (Server, response.to_vec()), (Client, vec![b'y'; 1000])]
}

fn cases() -> Vec<Case> {
    let case =
        |name, segs: &[(Peer, &[u8])], want, at_close| Case { name, segs: owned(segs), want, at_close };
    vec![
        case("nginx GET", wire::NGINX_GET, vec![want("GET /", (1, 1), 0, Some((200, (2, 2), 57)))], 0),
        case("nginx HEAD", wire::NGINX_HEAD, vec![want("HEAD /", (1, 1), 0, Some((200, (2, 2), 0)))], 0),
        case("nginx 204", wire::NGINX_204, vec![want("GET /empty", (1, 1), 0, Some((204, (2, 2), 0)))], 0),
        case("nginx 304", wire::NGINX_304, vec![want("GET /", (1, 1), 0, Some((304, (2, 2), 0)))], 0),
        case(
            "nginx chunked",
            wire::NGINX_CHUNKED,
            vec![want("GET /chunked", (1, 1), 0, Some((200, (2, 2), 57)))],
            0,
        ),
        case(
            "nginx keep-alive",
            wire::NGINX_KEEPALIVE,
            vec![
                want("GET /", (1, 1), 0, Some((200, (2, 2), 57))),
                want("GET /empty", (3, 3), 0, Some((204, (4, 4), 0))),
            ],
            0,
        ),
        case(
            "nginx HTTP/1.0",
            wire::NGINX_HTTP10,
            vec![want("GET /", (1, 1), 0, Some((200, (2, 2), 57)))],
            0,
        ),
        case(
            "nginx pipelined",
            wire::NGINX_PIPELINED,
            vec![
                want("GET /", (1, 1), 0, Some((200, (2, 2), 57))),
                want("GET /empty", (1, 1), 0, Some((204, (2, 2), 0))),
                want("GET /page.txt", (1, 1), 0, Some((200, (2, 2), 57))),
            ],
            0,
        ),
        case(
            "nginx chunked request",
            wire::NGINX_CHUNKED_REQUEST,
            vec![want("POST /items", (1, 1), 31, Some((201, (2, 2), 15)))],
            0,
        ),
        case(
            "nginx traced",
            wire::NGINX_TRACED,
            vec![want("GET /page.txt?lang=en&q=1", (1, 1), 0, Some((200, (2, 2), 57)))],
            0,
        ),
        case(
            "python GET",
            wire::PYTHON_GET,
            vec![want("GET /index.html", (1, 1), 0, Some((200, (2, 3), 57)))],
            0,
        ),
        case(
            "python 404",
            wire::PYTHON_404,
            vec![want("GET /missing", (1, 1), 0, Some((404, (2, 2), 335)))],
            0,
        ),
        case(
            "python 100-continue",
            wire::PYTHON_EXPECT,
            vec![want("POST /items", (1, 3), 16, Some((201, (4, 5), 15)))],
            0,
        ),
        case(
            "chunked with extensions and trailers",
            wire::RAW_CHUNKED_TRAILERS,
            vec![want("GET /stream", (1, 1), 0, Some((200, (2, 2), 23)))],
            0,
        ),
        case(
            "body until close",
            wire::RAW_CLOSE,
            vec![want("GET /stream", (1, 1), 0, Some((200, (2, 2), 33)))],
            1,
        ),
        Case {
            name: "early 413",
            segs: nginx_early_413(),
            want: vec![want("POST /upload", (1, 3), 2000, Some((413, (2, 2), 183)))],
            at_close: 1,
        },
    ]
}

#[test]
fn captures_are_intact() {
    // Lengths the recording proxy printed: the literals reproduce the captured bytes.
    type Conversation = &'static [(Peer, &'static [u8])];
    let lengths: &[(Conversation, &[usize])] = &[
        (wire::NGINX_GET, &[79, 293]),
        (wire::NGINX_HEAD, &[80, 236]),
        (wire::NGINX_204, &[84, 110]),
        (wire::NGINX_304, &[109, 179]),
        (wire::NGINX_CHUNKED, &[86, 223]),
        (wire::NGINX_KEEPALIVE, &[79, 293, 84, 110]),
        (wire::NGINX_HTTP10, &[79, 288]),
        (wire::NGINX_PIPELINED, &[217, 697]),
        (wire::NGINX_CHUNKED_REQUEST, &[187, 174]),
        (wire::NGINX_TRACED, &[222, 294]),
        (wire::PYTHON_GET, &[89, 185, 57]),
        (wire::PYTHON_404, &[86, 520]),
        (wire::PYTHON_EXPECT, &[159, 25, 16, 149, 15]),
        (wire::RAW_CHUNKED_TRAILERS, &[85, 198]),
        (wire::RAW_CLOSE, &[85, 97]),
    ];
    for (segs, want) in lengths {
        let got: Vec<usize> = segs.iter().map(|(_, d)| d.len()).collect();
        assert_eq!(got, *want);
    }
    let early: Vec<usize> = nginx_early_413().iter().map(|(_, d)| d.len()).collect();
    assert_eq!(early, [1112, 348, 1000]);
}

#[test]
fn whole_segments_from_both_ends() {
    for case in cases() {
        for view in [View::Server, View::Client] {
            let mut run = Run::new(Some(view.requests_from()));
            run.feed(view, &whole_segments(&case.segs));
            let before_close = run.exchanges.len();
            run.close(u64::MAX);
            let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
            assert_eq!(got, case.want, "{} ({view:?})", case.name);
            assert_eq!(
                before_close,
                case.want.len() - case.at_close,
                "{} ({view:?}): before close",
                case.name
            );
            assert!(
                run.exchanges.iter().all(|e| e.request_direction == view.requests_from()),
                "{}",
                case.name
            );
            assert_eq!(run.stats().parse_errors, 0, "{}: {:?}", case.name, run.stats());
            assert!(run.conn.seen_http());
        }
    }
}

#[test]
fn role_learnt_from_the_first_request() {
    for case in cases() {
        for view in [View::Server, View::Client] {
            let mut run = Run::new(None);
            run.feed(view, &whole_segments(&case.segs)).close(u64::MAX);
            let got: Vec<Summary> = run.exchanges.iter().map(summary).collect();
            assert_eq!(got, case.want, "{} ({view:?})", case.name);
            assert!(
                run.exchanges.iter().all(|e| e.request_direction == view.requests_from()),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn split_at_every_offset() {
    for case in cases() {
        let baseline: Vec<Exchange> =
            run_closed(View::Server, &whole_segments(&case.segs)).iter().map(coarse).collect();
        for (i, (_, data)) in case.segs.iter().enumerate() {
            for at in 1..data.len() {
                let got: Vec<Exchange> =
                    run_closed(View::Server, &split_segment(&case.segs, i, at)).iter().map(coarse).collect();
                assert_eq!(got, baseline, "{}: segment {i} split at {at}", case.name);
            }
        }
    }
}

#[test]
fn one_byte_per_chunk() {
    for case in cases() {
        for view in [View::Server, View::Client] {
            let baseline: Vec<Exchange> =
                run_closed(view, &whole_segments(&case.segs)).iter().map(coarse).collect();
            let got: Vec<Exchange> = run_closed(view, &bytewise(&case.segs)).iter().map(coarse).collect();
            assert_eq!(got, baseline, "{} ({view:?})", case.name);
        }
    }
}

#[test]
fn exact_exchange() {
    let mut run = Run::new(Some(Direction::Egress));
    run.feed(View::Client, &whole_segments(&owned(wire::NGINX_TRACED)));
    let want = Exchange {
        request_direction: Direction::Egress,
        request: Request {
            head: RequestHead {
                method: "GET".into(),
                target: "/page.txt?lang=en&q=1".into(),
                minor_version: 1,
                host: Some("127.0.0.1:18099".into()),
                user_agent: Some("curl/7.88.1".into()),
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
                content_length: None,
                truncated: false,
            },
            start_ns: 1000,
            end_ns: 1000,
            body_bytes: 0,
            ordinal: 0,
            tid: 1,
        },
        response: Some(Response {
            head: ResponseHead { status: 200, minor_version: 1, content_length: Some(57), truncated: false },
            start_ns: 2000,
            end_ns: 2000,
            body_bytes: 57,
        }),
    };
    assert_eq!(run.exchanges, [want]);

    // Timestamps follow the chunks holding first and last bytes.
    let python = owned(wire::PYTHON_EXPECT);
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &whole_segments(&python));
    let ex = &run.exchanges[0];
    assert_eq!((ex.request.start_ns, ex.request.end_ns), (1000, 3000));
    let response = ex.response.as_ref().map(|r| (r.start_ns, r.end_ns, r.head.minor_version));
    assert_eq!(response, Some((4000, 5000, 1)));

    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &whole_segments(&owned(wire::NGINX_HTTP10)));
    assert_eq!(run.exchanges[0].request.head.minor_version, 0);
    let mut run = Run::new(Some(Direction::Ingress));
    run.feed(View::Server, &whole_segments(&owned(wire::PYTHON_GET)));
    assert_eq!(run.exchanges[0].response.as_ref().map(|r| r.head.minor_version), Some(0));
}

#[test]
fn split_heads_cost_linear_time() {
    // A 6 KiB head one byte per chunk, repeated: quadratic rescanning would take seconds here.
    let mut head = b"GET /big HTTP/1.1\r\nHost: h\r\n".to_vec();
    while head.len() < 6 * 1024 {
        head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let response = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
    let mut segs = Vec::new();
    for _ in 0..20 {
        segs.push((Client, head.clone()));
        segs.push((Server, response.clone()));
    }
    let started = std::time::Instant::now();
    let exchanges = run_closed(View::Server, &bytewise(&segs));
    assert_eq!(exchanges.len(), 20);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}
