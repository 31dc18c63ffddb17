//! Privileged: a CLIENT span gets an in-process parent only when it is certain to be right. In
//! services that serve several requests at once on a few threads — Go's goroutines, Node's event
//! loop — the thread that writes a call is not tied to one request, and a guessed parent joins the
//! traces of two requests ("cross-links"), which is worse than no parent. Checked through a chain
//! curl → A → B → C of plain services under concurrent requests, link by link, at a real OTLP
//! receiver; sequential requests must still make whole traces, so dropping every parent fails too.

use std::time::Duration;

use sonde_tests::{
    chains::{self, Behaviour, Runtime},
    harness::{Guard, Sonde, curl},
    receiver::{ReceivedSpan, Receiver},
    trace_check::{self, LinkReport},
};

const SERVICES: [&str; 3] = ["svc-a", "svc-b", "svc-c"];
const SEQUENTIAL: u32 = 5;
const CONCURRENT: u32 = 20;
/// Spans per request: a SERVER span in each service, a CLIENT span for each of the two calls.
const SPANS_PER_REQUEST: usize = 5;
const WAIT: Duration = Duration::from_secs(30);

/// curl → A → B → C in `runtime`. C holds each request 20–50 ms before answering, so that
/// concurrent requests are in flight in every service at once and their reads and writes
/// interleave on the same threads.
fn chain(runtime: Runtime) -> [Guard; 3] {
    let slow = Behaviour { delay_ms: 20, jitter_ms: 30, parallel: false };
    let c = chains::chain_service(runtime, "svc-c", slow, &[]);
    let b = chains::chain_service(runtime, "svc-b", Behaviour::default(), &[c.url("")]);
    let a = chains::chain_service(runtime, "svc-a", Behaviour::default(), &[b.url("")]);
    [a, b, c]
}

/// The spans of the chain's own processes (another test's services may have the same names).
fn chain_spans(spans: &[ReceivedSpan], chain: &[Guard]) -> Vec<ReceivedSpan> {
    let pids: Vec<String> = chain.iter().map(|g| g.pid().to_string()).collect();
    spans
        .iter()
        .filter(|s| SERVICES.contains(&trace_check::service(s)))
        .filter(|s| s.resource.get("process.pid").is_some_and(|pid| pids.contains(pid)))
        .cloned()
        .collect()
}

/// Sequential requests, then concurrent ones, through a chain in `runtime`: no span
/// is parented by another request's span, and each sequential request is one whole trace.
/// `extra`: more arguments for sonde (`--context-propagation tcp`: the kernel chooses the ids, and
/// must be as careful as user space).
async fn no_cross_links_under_concurrent_requests(runtime: Runtime, extra: &[&str]) {
    let receiver = Receiver::start().await.unwrap();
    let chain = chain(runtime);
    let a = &chain[0];
    // Only the chain's processes: curl and this test's own requests are not traced, so A's SERVER
    // span is each trace's root (as in tests/tests/traces.rs).
    let args = [&["--exe", runtime.exe_glob()][..], extra].concat();
    let (sonde, _) = Sonde::start_exporting(&receiver.grpc_endpoint(), "grpc", &args);

    // The first of these finds no connection to keep alive: Go dials one and starts its goroutines
    // on whichever thread is free, often one that never read the request. With one request in
    // flight the parent is still certain, and must be found.
    for n in 1..=SEQUENTIAL {
        let reply = curl(&[&a.url(&format!("/req/{n}"))]);
        assert!(reply.contains("200"), "/req/{n}: {reply}");
    }
    let port = a.port;
    let ns: Vec<u32> = (SEQUENTIAL + 1..=SEQUENTIAL + CONCURRENT).collect();
    let replies = tokio::task::spawn_blocking(move || chains::concurrent_requests(port, ns)).await.unwrap();
    for (n, status) in &replies {
        assert!(status.starts_with("HTTP/1.1 200"), "/req/{n}: {status:?}");
    }

    let expected = (SEQUENTIAL + CONCURRENT) as usize * SPANS_PER_REQUEST;
    receiver.wait_for(|s| chain_spans(s, &chain).len() >= expected, WAIT).await;
    // Then a little longer, for any span still on its way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = chain_spans(&receiver.spans(), &chain);

    let report = LinkReport::of(&spans);
    let broken: Vec<String> = (1..=SEQUENTIAL)
        .filter_map(|n| trace_check::whole_chain_fault(&spans, &format!("/req/{n}"), &SERVICES))
        .collect();
    println!("{runtime:?} chain, {SEQUENTIAL} sequential then {CONCURRENT} concurrent requests:\n{report}");
    println!(
        "{runtime:?}: {} cross-links, {} misplaced, of {} spans; sequential requests not whole: {broken:?}",
        report.cross_links.len(),
        report.misplaced.len(),
        spans.len(),
    );
    assert_eq!(report.wrong(), 0, "spans parented by another request's span, or out of place (table above)");
    assert!(broken.is_empty(), "sequential requests are whole traces:\n{}", broken.join("\n"));
    assert_eq!(spans.len(), expected, "{SPANS_PER_REQUEST} spans per request (table above)");
    drop(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn go_chain_under_concurrent_requests_has_no_cross_links() {
    // Goroutines not followed: the rule for shared threads alone (tests/tests/goroutines.rs follows
    // them).
    no_cross_links_under_concurrent_requests(Runtime::Go, &["--go", "off"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn go_chain_with_propagation_has_no_cross_links() {
    no_cross_links_under_concurrent_requests(Runtime::Go, &["--context-propagation", "tcp"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_chain_with_propagation_has_no_cross_links() {
    no_cross_links_under_concurrent_requests(Runtime::Node, &["--context-propagation", "tcp"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_chain_under_concurrent_requests_has_no_cross_links() {
    no_cross_links_under_concurrent_requests(Runtime::Node, &[]).await;
}
