//! Privileged: in Go programs sonde follows goroutines (`--go on`, the default), so a handler's
//! client requests are children of the request it serves even while the program serves many at
//! once on a few threads. Checked through curl-like clients → Go A → Go B → Go C of plain `net/http`
//! services (tests/servers/go/chain.go), built by each Go toolchain the tests install, with a
//! symbol table and stripped of it, at a real OTLP receiver: every request one whole trace, no
//! span parented by another request's.

use std::{path::Path, time::Duration};

use sonde_tests::{
    chains::{self, Behaviour, GO_EXE, GO_TOOLCHAINS, build_go_chain, go_chain_service},
    harness::{Guard, Sonde},
    receiver::{ReceivedSpan, Receiver},
    trace_check::{self, LinkReport},
};

const SERVICES: [&str; 3] = ["svc-a", "svc-b", "svc-c"];

/// Whether this kernel lets sonde follow goroutines: it reads a goroutine's register with
/// `bpf_task_pt_regs` (5.15), which `sonde check-kernel` reports as `task_regs`. Where it is
/// missing sonde says so and parents as with `--go off` (tests/tests/parenting.rs covers that).
fn goroutines_followed_here() -> bool {
    let out =
        std::process::Command::new(sonde_tests::harness::sonde_bin()).arg("check-kernel").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("task_regs=yes") {
        return true;
    }
    eprintln!("SKIPPED: this kernel has no bpf_task_pt_regs, so goroutines are not followed:\n{text}");
    false
}
const CONCURRENT: u32 = 50;
const WAIT: Duration = Duration::from_secs(60);

/// The spans of `chain`'s own processes.
fn chain_spans(spans: &[ReceivedSpan], chain: &[Guard]) -> Vec<ReceivedSpan> {
    let pids: Vec<String> = chain.iter().map(|g| g.pid().to_string()).collect();
    spans
        .iter()
        .filter(|s| s.resource.get("process.pid").is_some_and(|pid| pids.contains(pid)))
        .cloned()
        .collect()
}

/// sonde hooks a Go executable when it first sees one of its processes move bytes: a request
/// through the chain (not one of the checked ones), then a moment for the hooks to go in.
fn warm_up(port: u16) {
    let reply = sonde_tests::harness::curl(&[&format!("http://127.0.0.1:{port}/req/0")]);
    assert!(reply.contains("200"), "warm-up request: {reply}");
    std::thread::sleep(Duration::from_secs(1));
}

/// 50 concurrent requests through A → B → C built into `binary`: (whole traces, report, faults).
async fn chain_under_load(binary: &Path) -> (usize, LinkReport, Vec<String>) {
    let receiver = Receiver::start().await.unwrap();
    // C holds each request 20–50 ms, so that all of them are in flight in every service at once.
    let slow = Behaviour { delay_ms: 20, jitter_ms: 30, parallel: false };
    let c = go_chain_service(binary, "svc-c", slow, &[]);
    let b = go_chain_service(binary, "svc-b", Behaviour::default(), &[c.url("")]);
    let a = go_chain_service(binary, "svc-a", Behaviour::default(), &[b.url("")]);
    let (sonde, _) = Sonde::start_exporting(&receiver.grpc_endpoint(), "grpc", &["--exe", GO_EXE]);
    let chain = [a, b, c];
    let port = chain[0].port;
    warm_up(port);

    let ns: Vec<u32> = (1..=CONCURRENT).collect();
    let replies = tokio::task::spawn_blocking(move || chains::concurrent_requests(port, ns)).await.unwrap();
    for (n, status) in &replies {
        assert!(status.starts_with("HTTP/1.1 200"), "/req/{n}: {status:?}");
    }
    let expected = CONCURRENT as usize * 5;
    receiver.wait_for(|s| chain_spans(s, &chain).len() >= expected, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = chain_spans(&receiver.spans(), &chain);
    drop(sonde);
    let faults: Vec<String> = (1..=CONCURRENT)
        .filter_map(|n| trace_check::whole_chain_fault(&spans, &format!("/req/{n}"), &SERVICES))
        .collect();
    (CONCURRENT as usize - faults.len(), LinkReport::of(&spans), faults)
}

#[tokio::test(flavor = "multi_thread")]
async fn go_chains_of_each_toolchain_stripped_or_not_make_whole_traces_under_concurrent_requests() {
    if !goroutines_followed_here() {
        return;
    }
    let mut failures = Vec::new();
    for go in GO_TOOLCHAINS.iter().map(Path::new) {
        for stripped in [false, true] {
            let binary = build_go_chain(go, stripped);
            let (whole, report, faults) = chain_under_load(&binary).await;
            let build = format!("{} {}", go.display(), if stripped { "-s -w" } else { "with symbols" });
            println!("{build}: {whole} of {CONCURRENT} requests whole\n{report}");
            if report.wrong() != 0 {
                failures
                    .push(format!("{build}: {} spans parented by another request's span", report.wrong()));
            }
            if !faults.is_empty() {
                failures.push(format!("{build}: {} requests not whole, e.g. {}", faults.len(), faults[0]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A handler that calls two services at once, each from a goroutine it starts: both CLIENT spans
/// are children of its SERVER span.
#[tokio::test(flavor = "multi_thread")]
async fn calls_from_goroutines_a_handler_starts_are_its_children() {
    if !goroutines_followed_here() {
        return;
    }
    let receiver = Receiver::start().await.unwrap();
    let binary = build_go_chain(Path::new(GO_TOOLCHAINS[0]), false);
    let c =
        go_chain_service(&binary, "svc-c", Behaviour { delay_ms: 10, jitter_ms: 20, parallel: false }, &[]);
    let b =
        go_chain_service(&binary, "svc-b", Behaviour { delay_ms: 10, jitter_ms: 20, parallel: false }, &[]);
    let fan_out = Behaviour { parallel: true, ..Behaviour::default() };
    let a = go_chain_service(&binary, "svc-a", fan_out, &[b.url(""), c.url("")]);
    let (sonde, _) = Sonde::start_exporting(&receiver.grpc_endpoint(), "grpc", &["--exe", GO_EXE]);
    let chain = [a, b, c];
    let port = chain[0].port;
    warm_up(port);
    let ns: Vec<u32> = (1..=20).collect();
    let replies = tokio::task::spawn_blocking(move || chains::concurrent_requests(port, ns)).await.unwrap();
    for (n, status) in &replies {
        assert!(status.starts_with("HTTP/1.1 200"), "/req/{n}: {status:?}");
    }
    // Per request: A's SERVER span, its two CLIENT spans, B's and C's SERVER spans.
    receiver.wait_for(|s| chain_spans(s, &chain).len() >= 20 * 5, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = chain_spans(&receiver.spans(), &chain);
    drop(sonde);
    let report = LinkReport::of(&spans);
    println!("{report}");
    assert_eq!(report.wrong(), 0, "spans parented by another request's span (table above)");
    let mut faults = Vec::new();
    for n in 1..=20 {
        let path = format!("/req/{n}");
        let found = trace_check::spans_about(&spans, &path);
        let get = |service: &str, kind: &'static str| {
            found.get(&(service.to_owned(), kind)).cloned().unwrap_or_default()
        };
        let (server, clients) = (get("svc-a", "SERVER"), get("svc-a", "CLIENT"));
        let [server] = server.as_slice() else {
            faults.push(format!("{path}: {} SERVER spans from svc-a", server.len()));
            continue;
        };
        if clients.len() != 2 {
            faults.push(format!("{path}: {} CLIENT spans from svc-a", clients.len()));
        }
        for client in &clients {
            if client.parent_span_id_hex() != Some(server.span_id_hex())
                || client.trace_id_hex() != server.trace_id_hex()
            {
                faults.push(format!("{path}: a CLIENT span of svc-a is not the child of its SERVER span"));
            }
        }
        for downstream in ["svc-b", "svc-c"] {
            let servers = get(downstream, "SERVER");
            if !servers
                .iter()
                .all(|s| clients.iter().any(|c| s.parent_span_id_hex() == Some(c.span_id_hex())))
                || servers.len() != 1
            {
                faults.push(format!(
                    "{path}: {downstream}'s SERVER span is not the child of one of svc-a's CLIENT spans"
                ));
            }
        }
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}
