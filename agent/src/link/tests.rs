use sonde_common::{Direction, Role};

use super::*;
use crate::http::{Exchange, Request, RequestHead, Response, ResponseHead};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn conn(id: u64, pid: u32, role: Role, local: &str, remote: &str) -> ConnInfo {
    ConnInfo { id, pid, fd: 5, role, local: local.parse().ok(), remote: remote.parse().ok(), tls: false }
}

fn head(target: &str, traceparent: Option<&str>) -> RequestHead {
    RequestHead {
        method: "GET".into(),
        target: target.into(),
        minor_version: 1,
        host: None,
        user_agent: None,
        traceparent: traceparent.map(Into::into),
        tracestate: None,
        content_length: None,
        truncated: false,
    }
}

fn started(direction: Direction, ordinal: u32, tid: u32, h: &RequestHead) -> Started {
    Started {
        direction,
        ordinal,
        from_start: true,
        tid,
        start_ns: 1_000,
        fingerprint: Started::fingerprint_of(h),
        traceparent: h.traceparent.clone(),
        tracestate: h.traceparent.as_ref().and(h.tracestate.clone()),
        otlp_export: Started::is_otlp_export(h),
        kernel: None,
    }
}

fn exchange(direction: Direction, ordinal: u32, tid: u32, h: &RequestHead) -> Exchange {
    Exchange {
        request_direction: direction,
        request: Request { head: h.clone(), start_ns: 1_000, end_ns: 1_000, body_bytes: 0, ordinal, tid },
        response: Some(Response {
            head: ResponseHead { status: 200, minor_version: 1, content_length: Some(0), truncated: false },
            start_ns: 2_000,
            end_ns: 2_000,
            body_bytes: 0,
        }),
    }
}

/// The exchange's context: at once, or (a server request waiting for its client) once the
/// linker gives up waiting.
fn finish(linker: &mut Linker, conn: &ConnInfo, exchange: &Exchange) -> SpanContext {
    match linker.finished(conn, exchange) {
        Link::Now(context) => context,
        Link::Later(key) => {
            linker.stop_waiting(None);
            let late: Vec<_> = linker.take_late().collect();
            assert_eq!(late.len(), 1);
            assert_eq!(late[0].0, key);
            late[0].1.clone()
        }
        Link::Unknown => panic!("the linker does not know the request"),
    }
}

/// A service: server connection `front` (request read by `tid`), client connection `back`.
struct Hop {
    front: ConnInfo,
    back: ConnInfo,
    tid: u32,
}

#[test]
fn a_chain_on_one_host_is_one_trace() {
    // curl → A (pid 10) → B (pid 20); loopback 4-tuples mirror each other.
    let a = Hop {
        front: conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000"),
        back: conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001"),
        tid: 11,
    };
    let b_front = conn(3, 20, Role::Server, "127.0.0.1:8001", "127.0.0.1:40001");
    let (ha, hb) = (head("/a", None), head("/b", None));
    let mut linker = Linker::default();

    linker.started(&a.front, &started(Direction::Ingress, 0, a.tid, &ha));
    linker.started(&a.back, &started(Direction::Egress, 0, a.tid, &hb));
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &hb));

    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &hb));
    let a_client = finish(&mut linker, &a.back, &exchange(Direction::Egress, 0, a.tid, &hb));
    let a_server = finish(&mut linker, &a.front, &exchange(Direction::Ingress, 0, a.tid, &ha));

    assert_eq!(a_server.parent_span_id, None, "A's server span is the root");
    assert_eq!(a_client.parent_span_id, Some(a_server.span_id), "in-process parent");
    assert_eq!(b_server.parent_span_id, Some(a_client.span_id), "stitched to A's client span");
    assert!([&a_client, &b_server].iter().all(|c| c.trace_id == a_server.trace_id));
    let stats = linker.stats();
    assert_eq!((stats.stitched, stats.in_process, stats.roots), (1, 1, 1));
    assert_eq!(linker.requests.len(), 0);
    assert!(linker.handling.is_empty());
}

#[test]
fn the_server_side_may_arrive_before_its_client() {
    // The two CPUs raced: B's read is in the ring buffer before A's write.
    let a_back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let b_front = conn(3, 20, Role::Server, "127.0.0.1:8001", "127.0.0.1:40001");
    let h = head("/b", None);
    let mut linker = Linker::default();
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h));
    let a_client = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h));
    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h));
    assert_eq!(b_server.parent_span_id, Some(a_client.span_id));
    assert_eq!(b_server.trace_id, a_client.trace_id);
}

#[test]
fn a_traceparent_wins_over_stitching() {
    let a_back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let b_front = conn(3, 20, Role::Server, "127.0.0.1:8001", "127.0.0.1:40001");
    let h = head("/b", Some(TRACEPARENT));
    let mut linker = Linker::default();
    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h));
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    let a_client = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h));
    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h));
    assert_eq!(b_server.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(b_server.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
    // The client wrote that header itself: the header names its span.
    assert_eq!(a_client.span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(a_client.trace_id, b_server.trace_id);
}

#[test]
fn keep_alive_requests_pair_in_order_and_by_method_and_target() {
    let a_back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let b_front = conn(3, 20, Role::Server, "127.0.0.1:8001", "127.0.0.1:40001");
    let (h1, h2) = (head("/one", None), head("/two", None));
    let mut linker = Linker::default();
    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h1));
    linker.started(&a_back, &started(Direction::Egress, 1, 11, &h2));
    // B joined late (sonde started mid-connection): its ordinals are not A's.
    linker.started(&b_front, &Started { from_start: false, ..started(Direction::Ingress, 0, 21, &h2) });
    let one = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h1));
    let two = finish(&mut linker, &a_back, &exchange(Direction::Egress, 1, 11, &h2));
    let b = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h2));
    assert_eq!(b.parent_span_id, Some(two.span_id));
    assert_ne!(one.trace_id, two.trace_id, "two client calls without a server request are two traces");
    assert_eq!(linker.stitcher.len(), 0, "the skipped record went with the match");
}

#[test]
fn threads_keep_their_own_server_requests() {
    let front = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let front2 = conn(4, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40002");
    let back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let back2 = conn(5, 10, Role::Client, "127.0.0.1:40003", "127.0.0.1:8001");
    let h = head("/", None);
    let mut linker = Linker::default();
    linker.started(&front, &started(Direction::Ingress, 0, 11, &h));
    linker.started(&front2, &started(Direction::Ingress, 0, 12, &h));
    linker.started(&back2, &started(Direction::Egress, 0, 12, &h));
    linker.started(&back, &started(Direction::Egress, 0, 11, &h));
    let c1 = finish(&mut linker, &back, &exchange(Direction::Egress, 0, 11, &h));
    let c2 = finish(&mut linker, &back2, &exchange(Direction::Egress, 0, 12, &h));
    let s1 = finish(&mut linker, &front, &exchange(Direction::Ingress, 0, 11, &h));
    let s2 = finish(&mut linker, &front2, &exchange(Direction::Ingress, 0, 12, &h));
    assert_eq!(c1.parent_span_id, Some(s1.span_id));
    assert_eq!(c2.parent_span_id, Some(s2.span_id));
    assert_ne!(s1.trace_id, s2.trace_id);

    // Answered: the thread's next call has no parent.
    linker.started(&back, &started(Direction::Egress, 1, 11, &h));
    let later = finish(&mut linker, &back, &exchange(Direction::Egress, 1, 11, &h));
    assert_eq!(later.parent_span_id, None);
}

#[test]
fn a_thread_or_process_that_exits_leaves_nothing_to_a_newcomer_with_its_id() {
    let h = head("/", None);
    let mut linker = Linker::default();
    // Thread 11 of pid 10, then pid 20's main thread, read requests and exit unanswered.
    linker.started(
        &conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000"),
        &started(Direction::Ingress, 0, 11, &h),
    );
    linker.started(
        &conn(2, 20, Role::Server, "127.0.0.1:8002", "127.0.0.1:40002"),
        &started(Direction::Ingress, 0, 20, &h),
    );
    linker.thread_exited(10, 11);
    linker.thread_exited(20, 20);
    linker.process_exited(20);
    // The next thread 11 of pid 10, and the next process 20, call out.
    let call = conn(3, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    linker.started(&call, &started(Direction::Egress, 0, 11, &h));
    assert_eq!(finish(&mut linker, &call, &exchange(Direction::Egress, 0, 11, &h)).parent_span_id, None);
    let call = conn(4, 20, Role::Client, "127.0.0.1:40003", "127.0.0.1:8001");
    linker.started(&call, &started(Direction::Egress, 0, 20, &h));
    assert_eq!(finish(&mut linker, &call, &exchange(Direction::Egress, 0, 20, &h)).parent_span_id, None);
}

#[test]
fn unsampled_callers_keep_their_children_unsampled() {
    let front = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let (hs, hc) = (head("/", Some(unsampled)), head("/down", None));
    let mut linker = Linker::default();
    linker.started(&front, &started(Direction::Ingress, 0, 11, &hs));
    linker.started(&back, &started(Direction::Egress, 0, 11, &hc));
    assert!(!finish(&mut linker, &back, &exchange(Direction::Egress, 0, 11, &hc)).sampled());
    assert!(!finish(&mut linker, &front, &exchange(Direction::Ingress, 0, 11, &hs)).sampled());
}

#[test]
fn invalid_traceparents_start_new_traces_and_tracestate_follows_the_header() {
    let front = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let mut linker = Linker::default();
    for (i, bad) in ["garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"].iter().enumerate()
    {
        let h = head("/", Some(bad));
        linker.started(&front, &started(Direction::Ingress, i as u32, 11, &h));
        let ctx = finish(&mut linker, &front, &exchange(Direction::Ingress, i as u32, 11, &h));
        assert_eq!(ctx.parent_span_id, None, "{bad}");
        assert_ne!(ctx.trace_id, TraceId::INVALID);
    }
    assert_eq!(linker.stats().invalid_traceparent, 2);

    let mut h = head("/", Some(TRACEPARENT));
    h.tracestate = Some("vendor=1".into());
    let back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let call = head("/down", None);
    linker.started(&front, &started(Direction::Ingress, 2, 11, &h));
    linker.started(&back, &started(Direction::Egress, 0, 11, &call));
    let child = finish(&mut linker, &back, &exchange(Direction::Egress, 0, 11, &call));
    let ctx = finish(&mut linker, &front, &exchange(Direction::Ingress, 2, 11, &h));
    assert_eq!(ctx.trace_state, "vendor=1");
    assert_eq!(child.trace_state, "vendor=1", "children carry the trace's vendor state on");

    // tracestate without a valid traceparent is ignored, as the spec says.
    h.traceparent = Some("garbage".into());
    linker.started(&front, &started(Direction::Ingress, 3, 11, &h));
    assert_eq!(finish(&mut linker, &front, &exchange(Direction::Ingress, 3, 11, &h)).trace_state, "");
}

#[test]
fn unfinished_requests_expire() {
    let front = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let h = head("/", None);
    let mut linker = Linker::default();
    linker.started(&front, &started(Direction::Ingress, 0, 11, &h));
    linker.started(&back, &started(Direction::Egress, 0, 11, &h));
    linker.sweep(1_000 + REQUEST_TTL_NS);
    assert!(linker.requests.is_empty() && linker.handling.is_empty());
    assert_eq!(linker.stitcher.len(), 0);
    assert_eq!(linker.stats().expired, 2);
    assert!(matches!(linker.finished(&front, &exchange(Direction::Ingress, 0, 11, &h)), Link::Unknown));
}

#[test]
fn a_thread_started_while_handling_a_request_works_for_it() {
    let front = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let h = head("/", None);
    let mut linker = Linker::default();
    linker.spawned(10, 11, 99); // before any request: nothing to inherit
    linker.started(&front, &started(Direction::Ingress, 0, 11, &h));
    linker.spawned(10, 11, 12);
    linker.started(&back, &started(Direction::Egress, 0, 12, &h));
    let call = finish(&mut linker, &back, &exchange(Direction::Egress, 0, 12, &h));
    let server = finish(&mut linker, &front, &exchange(Direction::Ingress, 0, 11, &h));
    assert_eq!(call.parent_span_id, Some(server.span_id));
    assert_eq!(linker.stats().spawned_workers, 1);

    // The request is answered: the worker's later calls are its own.
    linker.started(&back, &started(Direction::Egress, 1, 12, &h));
    let later = finish(&mut linker, &back, &exchange(Direction::Egress, 1, 12, &h));
    assert_eq!(later.parent_span_id, None);
    linker.started(&back, &started(Direction::Egress, 2, 99, &h));
    assert_eq!(finish(&mut linker, &back, &exchange(Direction::Egress, 2, 99, &h)).parent_span_id, None);
}

/// An event loop reads a second request before answering the first: its next call may be made
/// for either, so it gets no in-process parent — not the request read last (measured: Node.js and
/// Go services cross-linked traces that way under concurrent requests).
#[test]
fn a_thread_serving_two_requests_at_once_parents_no_call() {
    let front_a = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let front_b = conn(2, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40002");
    let back = conn(3, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let (ha, hb, hc) = (head("/a", None), head("/b", None), head("/c", None));
    let mut linker = Linker::default();

    linker.started(&front_a, &started(Direction::Ingress, 0, 11, &ha));
    linker.started(&front_b, &started(Direction::Ingress, 0, 11, &hb));
    linker.started(&back, &started(Direction::Egress, 0, 11, &hc));
    let call = finish(&mut linker, &back, &exchange(Direction::Egress, 0, 11, &hc));
    assert_eq!(call.parent_span_id, None, "made for /a or /b: nobody can tell");
    assert_eq!(linker.stats().unparented_shared[SharedThreads::EventLoop as usize], 1);

    // With one request left in progress, the process can only be working for it.
    let a = finish(&mut linker, &front_a, &exchange(Direction::Ingress, 0, 11, &ha));
    linker.started(&back, &started(Direction::Egress, 1, 11, &hc));
    let call = finish(&mut linker, &back, &exchange(Direction::Egress, 1, 11, &hc));
    let b = finish(&mut linker, &front_b, &exchange(Direction::Ingress, 0, 11, &hb));
    assert_eq!(call.parent_span_id, Some(b.span_id));
    assert_eq!(call.trace_id, b.trace_id);
    assert_ne!(a.trace_id, b.trace_id);
    assert!(linker.serving.is_empty());
}

/// In a Go program the thread that writes a call is any thread: a request read by thread 11 and
/// one read by thread 12, then a call written by thread 12, may well be the first request's.
#[test]
fn a_go_program_parents_calls_only_while_it_serves_one_request() {
    let front_a = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40000");
    let front_b = conn(2, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:40002");
    let back = conn(3, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let (ha, hb, hc) = (head("/a", None), head("/b", None), head("/c", None));
    let mut linker = Linker::default();
    linker.threads_shared(10, SharedThreads::GoRuntime);

    // One request at a time: its calls are its own, whichever thread writes them.
    linker.started(&front_a, &started(Direction::Ingress, 0, 11, &ha));
    linker.started(&back, &started(Direction::Egress, 0, 13, &hc));
    let call = finish(&mut linker, &back, &exchange(Direction::Egress, 0, 13, &hc));
    let a = finish(&mut linker, &front_a, &exchange(Direction::Ingress, 0, 11, &ha));
    assert_eq!(call.parent_span_id, Some(a.span_id));

    // Two at once, each read by its own thread: the writing thread says nothing.
    linker.started(&front_a, &started(Direction::Ingress, 1, 11, &ha));
    linker.started(&front_b, &started(Direction::Ingress, 0, 12, &hb));
    linker.spawned(10, 12, 14);
    linker.started(&back, &started(Direction::Egress, 1, 12, &hc));
    linker.started(&back, &started(Direction::Egress, 2, 14, &hc));
    for ordinal in [1, 2] {
        let call = finish(&mut linker, &back, &exchange(Direction::Egress, ordinal, 12, &hc));
        assert_eq!(call.parent_span_id, None);
    }
    assert_eq!(linker.stats().unparented_shared[SharedThreads::GoRuntime as usize], 2);
    assert_eq!(linker.stats().spawned_workers, 0, "the runtime's threads work for nobody");
}

/// A connection A (pid 10) → B (pid 20) on this host, as each end sees it.
fn same_host_pair() -> (ConnInfo, ConnInfo) {
    (
        conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001"),
        conn(3, 20, Role::Server, "127.0.0.1:8001", "127.0.0.1:40001"),
    )
}

#[test]
fn a_server_request_that_ends_before_its_client_is_seen_waits_for_it() {
    // B, woken by A's write, preempted A on its CPU and answered before A's write was recorded.
    let (a_back, b_front) = same_host_pair();
    let h = head("/b", None);
    let mut linker = Linker::default();
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    let Link::Later(key) = linker.finished(&b_front, &exchange(Direction::Ingress, 0, 21, &h)) else {
        panic!("B's request waits for its client");
    };
    assert_eq!(linker.take_late().count(), 0);
    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h));
    let late: Vec<_> = linker.take_late().collect();
    let a_client = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h));
    assert_eq!(late.len(), 1);
    let (late_key, b_server) = &late[0];
    assert_eq!(*late_key, key);
    assert_eq!(b_server.parent_span_id, Some(a_client.span_id));
    assert_eq!(b_server.trace_id, a_client.trace_id);
    assert_eq!(linker.stats().adopted, 1);
    assert_eq!(linker.stitcher.len(), 0, "the record went to the waiting request");
}

#[test]
fn a_waiting_request_takes_only_the_client_request_at_its_position() {
    // A's first request was lost with a full ring; its second, same method and target, came
    // after B had answered the first: it is not the first one's parent.
    let (a_back, b_front) = same_host_pair();
    let h = head("/b", None);
    let mut linker = Linker::default();
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    assert!(matches!(linker.finished(&b_front, &exchange(Direction::Ingress, 0, 21, &h)), Link::Later(_)));
    // The gap made A's parser start over: its ordinals no longer say positions.
    linker.started(&a_back, &Started { from_start: false, ..started(Direction::Egress, 0, 11, &h) });
    assert_eq!(linker.take_late().count(), 0);
    linker.stop_waiting(None);
    let late: Vec<_> = linker.take_late().collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].1.parent_span_id, None, "B's request starts a trace");
    assert_eq!((linker.stats().stitched, linker.stats().adopted), (0, 0));
}

#[test]
fn waiting_ends_a_grace_later_in_event_time_or_by_the_clock_when_events_stop() {
    let (a_back, b_front) = same_host_pair();
    let (h, other) = (head("/b", None), head("/other", None));
    let mut linker = Linker::default();
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    assert!(matches!(linker.finished(&b_front, &exchange(Direction::Ingress, 0, 21, &h)), Link::Later(_)));
    let ended = 2_000;
    linker.expire_late(ended + open::GRACE_NS);
    assert_eq!(linker.take_late().count(), 0, "the clock allows a second grace");
    // Events go on: one a grace after B's answer ends the wait.
    let later = Started { start_ns: ended + open::GRACE_NS, ..started(Direction::Egress, 0, 11, &other) };
    linker.started(&a_back, &later);
    linker.expire_late(0);
    let late: Vec<_> = linker.take_late().collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].1.parent_span_id, None);

    // No events: the clock ends it.
    let mut linker = Linker::default();
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    assert!(matches!(linker.finished(&b_front, &exchange(Direction::Ingress, 0, 21, &h)), Link::Later(_)));
    linker.expire_late(ended + 2 * open::GRACE_NS);
    assert_eq!(linker.take_late().count(), 1);
}

#[test]
fn only_requests_from_addresses_of_this_host_wait() {
    let h = head("/b", None);
    let mut linker = Linker::default();
    let remote = conn(3, 20, Role::Server, "10.0.0.5:8001", "10.0.0.9:40001");
    linker.started(&remote, &started(Direction::Ingress, 0, 21, &h));
    let Link::Now(context) = linker.finished(&remote, &exchange(Direction::Ingress, 0, 21, &h)) else {
        panic!("a peer elsewhere is not waited for");
    };
    assert_eq!(context.parent_span_id, None);
    // Once 10.0.0.9 is seen as this host's end of a connection (a pod on this node), it is waited for.
    let pod = conn(4, 30, Role::Client, "10.0.0.9:40002", "10.0.0.5:8001");
    linker.started(&pod, &started(Direction::Egress, 0, 31, &head("/x", None)));
    linker.started(&remote, &started(Direction::Ingress, 1, 21, &h));
    assert!(matches!(linker.finished(&remote, &exchange(Direction::Ingress, 1, 21, &h)), Link::Later(_)));
}

#[test]
fn a_stitch_in_time_also_needs_the_same_position_when_both_ends_know_it() {
    let (a_back, b_front) = same_host_pair();
    let h = head("/b", None);
    let mut linker = Linker::default();
    linker.started(&a_back, &started(Direction::Egress, 1, 11, &h));
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, &h));
    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h));
    assert_eq!(b_server.parent_span_id, None);
}

#[test]
fn at_most_so_many_traces_are_open() {
    let h = head("/b", None);
    let mut linker = Linker::default();
    for id in 0..=open::MAX_OPEN as u64 {
        let port = 20_000 + id as u16;
        let front = conn(id, 20, Role::Server, "127.0.0.1:8001", &format!("127.0.0.1:{port}"));
        linker.started(&front, &started(Direction::Ingress, 0, 21, &h));
        let link = linker.finished(&front, &exchange(Direction::Ingress, 0, 21, &h));
        let waits = (id as usize) < open::MAX_OPEN;
        assert_eq!(matches!(link, Link::Later(_)), waits, "request {id}");
    }
}

/// B → C: B's request read (pid 20, thread 21) and its call to C (pid 30) seen, A's write to B not
/// yet. Returns (A's connection to B, B's front, B's back, C's front).
fn b_called_c_before_a_was_seen(
    linker: &mut Linker,
    h: &RequestHead,
) -> (ConnInfo, ConnInfo, ConnInfo, ConnInfo) {
    let (a_back, b_front) = same_host_pair();
    let b_back = conn(4, 20, Role::Client, "127.0.0.1:40002", "127.0.0.1:8002");
    let c_front = conn(5, 30, Role::Server, "127.0.0.1:8002", "127.0.0.1:40002");
    linker.started(&b_front, &started(Direction::Ingress, 0, 21, h));
    linker.started(&b_back, &started(Direction::Egress, 0, 21, h));
    linker.started(&c_front, &started(Direction::Ingress, 0, 31, h));
    (a_back, b_front, b_back, c_front)
}

#[test]
fn a_call_made_before_the_callers_write_is_seen_joins_the_callers_trace() {
    // B, woken by A's write, preempted A on its CPU and got as far as calling C (whose answer
    // came too) before A's write was recorded.
    let h = head("/b", None);
    let mut linker = Linker::default();
    let (a_back, b_front, b_back, c_front) = b_called_c_before_a_was_seen(&mut linker, &h);
    let Link::Later(c_key) = linker.finished(&c_front, &exchange(Direction::Ingress, 0, 31, &h)) else {
        panic!("C's request is in an open trace: held");
    };
    assert_eq!(linker.take_late().count(), 0);

    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h));
    let late: Vec<_> = linker.take_late().collect();
    let b_client = finish(&mut linker, &b_back, &exchange(Direction::Egress, 0, 21, &h));
    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h));
    let a_client = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h));
    assert_eq!(late.len(), 1);
    let (key, c_server) = &late[0];
    assert_eq!(*key, c_key);
    assert_eq!(b_server.parent_span_id, Some(a_client.span_id), "B hangs under A's call");
    assert_eq!(b_client.parent_span_id, Some(b_server.span_id));
    assert_eq!(c_server.parent_span_id, Some(b_client.span_id));
    for span in [&b_server, &b_client, c_server] {
        assert_eq!(span.trace_id, a_client.trace_id);
    }
    assert_eq!(linker.stats().roots, 1, "A's call alone started a trace");
    assert_eq!((linker.stats().stitched, linker.stats().adopted), (1, 1), "C in time, B late");
    assert_eq!(linker.open.len(), 0);
}

#[test]
fn an_open_trace_no_caller_claims_stands_on_its_own() {
    let h = head("/b", None);
    let mut linker = Linker::default();
    let (a_back, b_front, b_back, c_front) = b_called_c_before_a_was_seen(&mut linker, &h);
    assert!(matches!(linker.finished(&c_front, &exchange(Direction::Ingress, 0, 31, &h)), Link::Later(_)));
    // The grace passes in event time; then A writes its next request on the connection.
    let later = Started { start_ns: 1_000 + open::GRACE_NS, ..started(Direction::Egress, 1, 11, &h) };
    linker.started(&a_back, &later);
    linker.expire_late(0);
    let late: Vec<_> = linker.take_late().collect();
    let b_client = finish(&mut linker, &b_back, &exchange(Direction::Egress, 0, 21, &h));
    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h));
    assert_eq!(late.len(), 1);
    let c_server = &late[0].1;
    assert_eq!(b_server.parent_span_id, None, "B's request started the trace");
    assert_eq!(c_server.parent_span_id, Some(b_client.span_id));
    assert!([&b_client, c_server].iter().all(|c| c.trace_id == b_server.trace_id));
}

#[test]
fn an_open_trace_adopted_by_one_still_open_waits_on_with_it() {
    // curl (not traced) → A → B → C, both of A's and B's writes seen late.
    let h = head("/b", None);
    let mut linker = Linker::default();
    let a_front = conn(1, 10, Role::Server, "127.0.0.1:8000", "127.0.0.1:39999");
    linker.started(&a_front, &started(Direction::Ingress, 0, 11, &h));
    let (a_back, b_front, b_back, c_front) = b_called_c_before_a_was_seen(&mut linker, &h);
    assert!(matches!(linker.finished(&c_front, &exchange(Direction::Ingress, 0, 31, &h)), Link::Later(_)));
    // A's call: A's own request opens a trace, which adopts B's.
    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h));
    assert_eq!(linker.take_late().count(), 0, "C's span waits on, in A's open trace");
    assert_eq!(linker.open.len(), 1);
    for (conn, direction, tid) in [
        (&b_back, Direction::Egress, 21),
        (&b_front, Direction::Ingress, 21),
        (&a_back, Direction::Egress, 11),
    ] {
        assert!(matches!(linker.finished(conn, &exchange(direction, 0, tid, &h)), Link::Later(_)));
    }
    let Link::Later(a_key) = linker.finished(&a_front, &exchange(Direction::Ingress, 0, 11, &h)) else {
        panic!("A's request is its open trace's root");
    };
    linker.stop_waiting(None);
    let late: Vec<_> = linker.take_late().collect();
    assert_eq!(late.len(), 5, "A's curl never shows: the trace closes with all five spans");
    let a_server = &late.iter().find(|(key, _)| *key == a_key).unwrap().1;
    assert_eq!(a_server.parent_span_id, None);
    assert!(late.iter().all(|(_, c)| c.trace_id == a_server.trace_id));
    assert_eq!(late.iter().filter(|(_, c)| c.parent_span_id.is_none()).count(), 1);
}

fn kernel_context(direction: Direction, trace: u8, span: u8, parent: Option<u8>) -> kernel::KernelContext {
    kernel::KernelContext {
        direction,
        trace_id: TraceId::from_bytes([trace; 16]),
        span_id: SpanId::from_bytes([span; 8]),
        parent_span_id: parent.map(|p| SpanId::from_bytes([p; 8])),
        flags: TraceFlags::SAMPLED,
        origin: if parent.is_some() {
            sonde_common::propagation::Origin::TcpOption
        } else {
            sonde_common::propagation::Origin::New
        },
        header: sonde_common::propagation::HeaderOutcome::None,
    }
}

fn with_kernel(started: Started, k: kernel::KernelContext) -> Started {
    let event = sonde_common::propagation::ContextEvent {
        header: sonde_common::EventHeader { ts_ns: 1, tgid: 1, tid: 1, fd: 5, kind: 7 },
        ids: sonde_common::propagation::Ids {
            trace_id: k.trace_id.to_bytes(),
            span_id: k.span_id.to_bytes(),
            parent_id: k.parent_span_id.map_or([0; 8], |p| p.to_bytes()),
            fd: 5,
            flags: k.flags.to_u8(),
            origin: k.origin as u8,
            header: k.header as u8,
            _pad: 0,
        },
        data_seq: 1,
        direction: k.direction as u8,
        _pad: [0; 3],
    };
    Started { kernel: Some(event), ..started }
}

#[test]
fn the_ids_the_kernel_put_on_the_wire_are_the_ids_exported() {
    // A (pid 10) read a request whose TCP option named span 0x0c of trace 0x01 (its caller on
    // another host), then wrote a request of its own, given span 0x0e under its server span 0x0d.
    let a = Hop {
        front: conn(1, 10, Role::Server, "198.18.0.2:8000", "198.18.0.1:40000"),
        back: conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001"),
        tid: 11,
    };
    let (ha, hb) = (head("/a", None), head("/b", None));
    let mut linker = Linker::default();
    let server = kernel_context(Direction::Ingress, 1, 0x0d, Some(0x0c));
    let client = kernel_context(Direction::Egress, 1, 0x0e, Some(0x0d));
    linker.started(&a.front, &with_kernel(started(Direction::Ingress, 0, a.tid, &ha), server));
    linker.started(&a.back, &with_kernel(started(Direction::Egress, 0, a.tid, &hb), client));
    let a_client = finish(&mut linker, &a.back, &exchange(Direction::Egress, 0, a.tid, &hb));
    let a_server = finish(&mut linker, &a.front, &exchange(Direction::Ingress, 0, a.tid, &ha));
    assert_eq!(
        (a_server.trace_id, a_server.span_id, a_server.parent_span_id),
        (server.trace_id, server.span_id, server.parent_span_id)
    );
    assert_eq!(
        (a_client.trace_id, a_client.span_id, a_client.parent_span_id),
        (client.trace_id, client.span_id, client.parent_span_id)
    );
    let stats = linker.stats();
    assert_eq!((stats.from_tcp_option, stats.in_process, stats.roots, stats.stitched), (1, 1, 0, 0));
}

#[test]
fn a_server_request_that_came_without_context_is_stitched_and_its_kernel_trace_follows() {
    // A (pid 10) wrote with no context on the wire (its threads are shared); B (pid 20) read the
    // request, which the kernel gave trace 7 and span 0x0b, then called on under them.
    let a_back = conn(2, 10, Role::Client, "127.0.0.1:40001", "127.0.0.1:8001");
    let b = Hop {
        front: conn(3, 20, Role::Server, "127.0.0.1:8001", "127.0.0.1:40001"),
        back: conn(4, 20, Role::Client, "127.0.0.1:40002", "198.18.0.2:80"),
        tid: 21,
    };
    let (h, hc) = (head("/b", None), head("/c", None));
    let mut linker = Linker::default();
    linker.started(&a_back, &started(Direction::Egress, 0, 11, &h));
    let fresh = kernel_context(Direction::Ingress, 7, 0x0b, None);
    linker.started(&b.front, &with_kernel(started(Direction::Ingress, 0, b.tid, &h), fresh));
    let call = kernel_context(Direction::Egress, 7, 0x0c, Some(0x0b));
    linker.started(&b.back, &with_kernel(started(Direction::Egress, 0, b.tid, &hc), call));
    let a_client = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h));
    let b_call = finish(&mut linker, &b.back, &exchange(Direction::Egress, 0, b.tid, &hc));
    let b_server = finish(&mut linker, &b.front, &exchange(Direction::Ingress, 0, b.tid, &h));
    assert_eq!(b_server.span_id, fresh.span_id, "the id its calls name as parent");
    assert_eq!((b_server.trace_id, b_server.parent_span_id), (a_client.trace_id, Some(a_client.span_id)));
    assert_eq!(
        (b_call.trace_id, b_call.span_id, b_call.parent_span_id),
        (a_client.trace_id, call.span_id, Some(b_server.span_id))
    );
    assert_eq!(linker.stats().stitched, 1);
    // A later hop of kernel trace 7 on this host (the context its call carried) joins too.
    let c_front = conn(5, 30, Role::Server, "127.0.0.1:8002", "127.0.0.1:40003");
    let onward = kernel_context(Direction::Ingress, 7, 0x0d, Some(0x0c));
    linker.started(&c_front, &with_kernel(started(Direction::Ingress, 0, 31, &hc), onward));
    let c_server = finish(&mut linker, &c_front, &exchange(Direction::Ingress, 0, 31, &hc));
    assert_eq!((c_server.trace_id, c_server.parent_span_id), (a_client.trace_id, Some(call.span_id)));
}

#[test]
fn a_header_wins_over_the_kernel_ids_on_both_sides() {
    let a_back = conn(2, 10, Role::Client, "127.0.0.1:40001", "198.18.0.2:8001");
    let b_front = conn(3, 20, Role::Server, "198.18.0.2:8001", "198.18.0.1:40001");
    let h = head("/b", Some(TRACEPARENT));
    let mut linker = Linker::default();
    let client = kernel_context(Direction::Egress, 1, 0x0e, None);
    let server = kernel_context(Direction::Ingress, 1, 0x0d, Some(0x0e));
    linker.started(&a_back, &with_kernel(started(Direction::Egress, 0, 11, &h), client));
    linker.started(&b_front, &with_kernel(started(Direction::Ingress, 0, 21, &h), server));
    let a_client = finish(&mut linker, &a_back, &exchange(Direction::Egress, 0, 11, &h));
    let b_server = finish(&mut linker, &b_front, &exchange(Direction::Ingress, 0, 21, &h));
    // The client wrote the header itself: it names the client span, as without propagation.
    assert_eq!(a_client.span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(b_server.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(b_server.parent_span_id, Some(a_client.span_id));
    // The server span keeps the id the kernel gave it: that is the parent its calls carry.
    assert_eq!(b_server.span_id, server.span_id);
}

#[test]
fn calls_of_a_request_with_a_header_follow_the_header_on_this_host() {
    // The kernel reads no headers: B's call went out in the kernel's trace (1), under B's span.
    let b = Hop {
        front: conn(3, 20, Role::Server, "198.18.0.2:8001", "198.18.0.1:40001"),
        back: conn(4, 20, Role::Client, "127.0.0.1:40002", "127.0.0.1:8002"),
        tid: 21,
    };
    let c_front = conn(5, 30, Role::Server, "127.0.0.1:8002", "127.0.0.1:40002");
    let (h, hc) = (head("/b", Some(TRACEPARENT)), head("/c", None));
    let mut linker = Linker::default();
    let server = kernel_context(Direction::Ingress, 1, 0x0d, None);
    let call = kernel_context(Direction::Egress, 1, 0x0e, Some(0x0d));
    let onward = kernel_context(Direction::Ingress, 1, 0x0f, Some(0x0e));
    linker.started(&b.front, &with_kernel(started(Direction::Ingress, 0, b.tid, &h), server));
    linker.started(&b.back, &with_kernel(started(Direction::Egress, 0, b.tid, &hc), call));
    linker.started(&c_front, &with_kernel(started(Direction::Ingress, 0, 31, &hc), onward));
    let b_server = finish(&mut linker, &b.front, &exchange(Direction::Ingress, 0, b.tid, &h));
    let b_call = finish(&mut linker, &b.back, &exchange(Direction::Egress, 0, b.tid, &hc));
    let c_server = finish(&mut linker, &c_front, &exchange(Direction::Ingress, 0, 31, &hc));
    assert_eq!(b_server.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!((b_call.trace_id, b_call.parent_span_id), (b_server.trace_id, Some(b_server.span_id)));
    assert_eq!((c_server.trace_id, c_server.parent_span_id), (b_server.trace_id, Some(b_call.span_id)));
}

#[test]
fn a_proxy_forwarding_its_callers_header_is_the_parent_when_the_kernel_rewrote_it() {
    // P (pid 40, a proxy) read a request with a header, and its thread forwarded that header on its
    // own request; the kernel rewrote the header's parent id to the span it gave that request
    // (0x0e), so Q, which reads the rewritten header, is the child of P's CLIENT span.
    let p = Hop {
        front: conn(6, 40, Role::Server, "198.18.0.2:8001", "198.18.0.1:40001"),
        back: conn(7, 40, Role::Client, "127.0.0.1:40005", "127.0.0.1:8005"),
        tid: 41,
    };
    let h = head("/p", Some(TRACEPARENT));
    let mut linker = Linker::default();
    let trace =
        [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
    let server = kernel_context(Direction::Ingress, 1, 0x0d, None);
    let mut forward = kernel_context(Direction::Egress, 1, 0x0e, Some(0x0d));
    forward.trace_id = TraceId::from_bytes(trace);
    forward.header = sonde_common::propagation::HeaderOutcome::Forwarded;
    linker.started(&p.front, &with_kernel(started(Direction::Ingress, 0, p.tid, &h), server));
    linker.started(&p.back, &with_kernel(started(Direction::Egress, 0, p.tid, &h), forward));
    let p_client = finish(&mut linker, &p.back, &exchange(Direction::Egress, 0, p.tid, &h));
    let p_server = finish(&mut linker, &p.front, &exchange(Direction::Ingress, 0, p.tid, &h));
    assert_eq!(p_server.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        (p_client.trace_id, p_client.span_id, p_client.parent_span_id),
        (p_server.trace_id, forward.span_id, Some(p_server.span_id)),
        "the id the rewritten header names, under the proxy's SERVER span"
    );
}
