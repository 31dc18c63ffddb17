use std::sync::Arc;

use sonde_common::{Direction, Role};

use super::*;
use crate::http::{Request, RequestHead, Response, ResponseHead};
use crate::span::model::{AttrValue, SpanId, TraceFlags, TraceId};

fn head(method: &str, target: &str) -> RequestHead {
    RequestHead {
        method: method.to_owned().into(),
        target: target.into(),
        minor_version: 1,
        host: Some("shop.local:8080".into()),
        user_agent: Some("curl/7.88.1".into()),
        traceparent: None,
        tracestate: None,
        content_length: None,
        truncated: false,
    }
}

fn exchange(request: RequestHead, status: Option<u16>) -> Exchange {
    Exchange {
        request_direction: Direction::Ingress,
        request: Request { head: request, start_ns: 1_000, end_ns: 1_500, body_bytes: 0, ordinal: 0, tid: 1 },
        response: status.map(|status| Response {
            head: ResponseHead { status, minor_version: 1, content_length: Some(5), truncated: false },
            start_ns: 2_000,
            end_ns: 3_000,
            body_bytes: 5,
        }),
    }
}

fn conn() -> ConnInfo {
    ConnInfo {
        id: 1,
        pid: 7,
        fd: 4,
        role: Role::Server,
        local: Some("127.0.0.1:8080".parse().unwrap()),
        remote: Some("127.0.0.1:51000".parse().unwrap()),
        tls: false,
    }
}

fn resource() -> Arc<Resource> {
    Arc::new(Resource { id: 1, service_name: "shop".into(), attributes: vec![] })
}

fn root() -> SpanContext {
    SpanContext {
        trace_id: TraceId::from_bytes([7; 16]),
        span_id: SpanId::from_bytes([8; 8]),
        parent_span_id: None,
        flags: TraceFlags::SAMPLED,
        trace_state: String::new(),
    }
}

fn build(ex: &Exchange, options: AssembleOptions) -> Option<Span> {
    Assembler::new(options).span(ex, &conn(), resource(), &WallClock::sample(), root())
}

fn attr(span: &Span, key: &str) -> Option<AttrValue> {
    span.attributes.iter().find(|kv| kv.key == key).map(|kv| kv.value.clone())
}

fn s(v: &str) -> Option<AttrValue> {
    Some(AttrValue::Str(v.to_owned().into()))
}

fn i(v: i64) -> Option<AttrValue> {
    Some(AttrValue::Int(v))
}

#[test]
fn server_span_follows_the_conventions() {
    let span = build(&exchange(head("GET", "/cart/42?token=secret"), Some(200)), AssembleOptions::default())
        .unwrap();
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.status, Status::Unset);
    assert_eq!(span.duration_ns(), 2_000);
    assert_eq!(attr(&span, "http.request.method"), s("GET"));
    assert_eq!(attr(&span, "url.path"), s("/cart/42"));
    assert_eq!(attr(&span, "url.query"), None, "query strings are not exported by default");
    assert_eq!(attr(&span, "url.scheme"), s("http"));
    assert_eq!(attr(&span, "http.response.status_code"), i(200));
    assert_eq!(attr(&span, "server.address"), s("shop.local"));
    assert_eq!(attr(&span, "server.port"), i(8080));
    assert_eq!(attr(&span, "client.address"), s("127.0.0.1"));
    assert_eq!(attr(&span, "network.peer.port"), i(51000));
    assert_eq!(attr(&span, "network.protocol.version"), s("1.1"));
    assert_eq!(attr(&span, "user_agent.original"), s("curl/7.88.1"));
    for opt_in in ["client.port", "network.transport", "network.type", "http.response.body.size"] {
        assert_eq!(attr(&span, opt_in), None, "{opt_in} is Opt-In");
    }
    assert_eq!(attr(&span, "network.protocol.name"), None, "only due when not http");

    let options = AssembleOptions { capture_query: true, ..AssembleOptions::default() };
    let with_query = build(&exchange(head("GET", "/a?b=1"), Some(200)), options).unwrap();
    assert_eq!(attr(&with_query, "url.query"), s("b=1"));

    let options = AssembleOptions { opt_in_attributes: true, ..AssembleOptions::default() };
    let opted = build(&exchange(head("GET", "/a"), Some(200)), options).unwrap();
    assert_eq!(attr(&opted, "client.port"), i(51000));
    assert_eq!(attr(&opted, "network.transport"), s("tcp"));
    assert_eq!(attr(&opted, "network.type"), s("ipv4"));
}

#[test]
fn five_hundreds_are_errors_four_hundreds_are_not() {
    let span = build(&exchange(head("POST", "/pay"), Some(503)), AssembleOptions::default()).unwrap();
    assert!(matches!(span.status, Status::Error { .. }));
    assert_eq!(attr(&span, "error.type"), s("503"));
    let span = build(&exchange(head("POST", "/pay"), Some(404)), AssembleOptions::default()).unwrap();
    assert_eq!(span.status, Status::Unset);
    let span = build(&exchange(head("POST", "/pay"), None), AssembleOptions::default()).unwrap();
    assert!(matches!(span.status, Status::Error { .. }));
}

#[test]
fn the_context_is_the_span_identity_and_unsampled_traces_are_not_exported() {
    let context = SpanContext {
        parent_span_id: Some(SpanId::from_bytes([9; 8])),
        trace_state: "vendor=1".into(),
        ..root()
    };
    let ex = exchange(head("GET", "/"), Some(200));
    let span =
        Assembler::default().span(&ex, &conn(), resource(), &WallClock::sample(), context.clone()).unwrap();
    assert_eq!(
        (span.trace_id, span.span_id, span.parent_span_id),
        (TraceId::from_bytes([7; 16]), SpanId::from_bytes([8; 8]), Some(SpanId::from_bytes([9; 8])))
    );
    assert_eq!(span.trace_state, "vendor=1");
    let mut assembler = Assembler::default();
    assert!(
        assembler
            .span(
                &ex,
                &conn(),
                resource(),
                &WallClock::sample(),
                SpanContext { flags: TraceFlags::NOT_SAMPLED, ..context }
            )
            .is_none()
    );
    assert_eq!(assembler.stats().unsampled, 1);
}

#[test]
fn client_span_follows_the_conventions() {
    let mut ex = exchange(head("GET", "/cart/42?token=secret"), Some(200));
    ex.request_direction = Direction::Egress;
    // Seen from the client: the peer is the server.
    let client = ConnInfo {
        role: Role::Client,
        local: Some("127.0.0.1:51000".parse().unwrap()),
        remote: Some("127.0.0.1:8080".parse().unwrap()),
        ..conn()
    };
    let mut assembler = Assembler::default();
    let span = assembler.span(&ex, &client, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(span.name, "GET");
    assert_eq!(span.duration_ns(), 2_000, "first byte of the request to last byte of the response");
    assert_eq!(attr(&span, "url.full"), s("http://shop.local:8080/cart/42"), "no query by default");
    assert_eq!(attr(&span, "server.address"), s("shop.local"));
    assert_eq!(attr(&span, "server.port"), i(8080));
    assert_eq!(attr(&span, "network.peer.address"), s("127.0.0.1"));
    assert_eq!(attr(&span, "network.peer.port"), i(8080));
    assert_eq!(attr(&span, "http.response.status_code"), i(200));
    for absent in ["url.path", "client.address", "user_agent.original", "url.scheme"] {
        assert_eq!(attr(&span, absent), None, "{absent}");
    }
    let with_query = AssembleOptions { capture_query: true, ..Default::default() };
    let span =
        Assembler::new(with_query).span(&ex, &client, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(attr(&span, "url.full"), s("http://shop.local:8080/cart/42?token=secret"));

    // Without a Host header the URL names the peer; 4xx is a client error; no response is one too.
    ex.request.head.host = None;
    ex.response.as_mut().unwrap().head.status = 404;
    let span = assembler.span(&ex, &client, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(attr(&span, "url.full"), s("http://127.0.0.1:8080/cart/42"));
    assert!(matches!(span.status, Status::Error { .. }));
    assert_eq!(attr(&span, "error.type"), s("404"));
    ex.response = None;
    let span = assembler.span(&ex, &client, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(attr(&span, "error.type"), s("connection_closed"));
    assert_eq!(assembler.stats().client_spans, 3);
}

#[test]
fn odd_methods() {
    let span =
        build(&exchange(head("PURGE", "http://cache/x?y"), Some(200)), AssembleOptions::default()).unwrap();
    assert_eq!(span.name, "HTTP");
    assert_eq!(attr(&span, "http.request.method"), s("_OTHER"));
    assert_eq!(attr(&span, "http.request.method_original"), s("PURGE"));
    assert_eq!(attr(&span, "url.path"), s("/x"));
}

#[test]
fn host_and_target_forms() {
    assert_eq!(split_host("[::1]:8443"), Some(("::1", Some(8443))));
    assert_eq!(split_host("example.com"), Some(("example.com", None)));
    assert_eq!(split_host("::1"), Some(("::1", None)));
    assert_eq!(split_host(" "), None);
    let mut h = head("GET", "http://proxy.example/x?y");
    assert_eq!(full_url(&h, "http", None, false), "http://proxy.example/x");
    h.target = "/v?q".into();
    h.host = None;
    assert_eq!(full_url(&h, "http", Some("[::1]:81".parse().unwrap()), true), "http://[::1]:81/v?q");
    assert_eq!(
        full_url(&h, "https", Some("127.0.0.1:443".parse().unwrap()), false),
        "https://127.0.0.1:443/v"
    );
    // A path or a query that holds a URL is still a path on the host the request went to.
    h.host = Some("shop.local".into());
    h.target = "/redirect/http://x/1".into();
    assert_eq!(full_url(&h, "http", None, false), "http://shop.local/redirect/http://x/1");
    h.target = "/login?next=http://x/a".into();
    assert_eq!(full_url(&h, "http", None, false), "http://shop.local/login");
    assert_eq!(full_url(&h, "http", None, true), "http://shop.local/login?next=http://x/a");
    h.target = "http://proxy.example?y".into();
    assert_eq!(full_url(&h, "http", None, true), "http://proxy.example/?y");
    let long = "é".repeat(MAX_ATTRIBUTE_BYTES);
    assert!(capped(&long).len() <= MAX_ATTRIBUTE_BYTES);
}

#[test]
fn tls_connections_are_https() {
    let ex = exchange(head("GET", "/a"), Some(200));
    let tls = ConnInfo { tls: true, ..conn() };
    let mut assembler = Assembler::default();
    let span = assembler.span(&ex, &tls, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(attr(&span, "url.scheme"), s("https"));

    let mut ex = ex;
    ex.request_direction = Direction::Egress;
    let client = ConnInfo { role: Role::Client, ..tls };
    let span = assembler.span(&ex, &client, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(attr(&span, "url.full"), s("https://shop.local:8080/a"));
    assert_eq!(attr(&span, "url.scheme"), None, "Opt-In on client spans");
    let options = AssembleOptions { opt_in_attributes: true, ..AssembleOptions::default() };
    let span = Assembler::new(options).span(&ex, &client, resource(), &WallClock::sample(), root()).unwrap();
    assert_eq!(attr(&span, "url.scheme"), s("https"));
}
