//! Privileged: in Go programs sonde follows goroutines (`--go on`, the default), so a handler's
//! client requests are children of the request it serves even while the program serves many at
//! once on a few threads. Checked through curl-like clients → Go A → Go B → Go C of plain `net/http`
//! services (tests/servers/go/chain.go), built by each Go toolchain the tests install, with a
//! symbol table and stripped of it, at a real OTLP receiver: every request one whole trace, no
//! span parented by another request's — over plain HTTP, and over HTTPS through Go's `crypto/tls`.

use std::{path::Path, time::Duration};

use sonde_tests::{
    chains::{
        self, Behaviour, GO_EXE, GO_TOOLCHAINS, build_go_chain, go_chain_service, go_https_chain_service,
    },
    harness::{Guard, Sonde, TempDir},
    receiver::{ReceivedSpan, Receiver},
    tls::{Certificate, https_url},
    trace_check::{self, LinkReport},
};

const SERVICES: [&str; 3] = ["svc-a", "svc-b", "svc-c"];

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

/// The spans of `chain` once `expected` of them arrived, with what straggled in 1.5 s after.
async fn settled_chain_spans(receiver: &Receiver, chain: &[Guard], expected: usize) -> Vec<ReceivedSpan> {
    receiver.wait_for(|s| chain_spans(s, chain).len() >= expected, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    chain_spans(&receiver.spans(), chain)
}

/// How the chain is spoken to: plain HTTP, or HTTPS through Go's `crypto/tls` (self-signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// The services of one chain, as `scheme` has them speak.
struct Services {
    scheme: Scheme,
    certificate: Option<(TempDir, Certificate)>,
}

impl Services {
    fn new(scheme: Scheme) -> Services {
        let certificate = (scheme == Scheme::Https).then(|| {
            let dir = TempDir::new("go-chain-tls");
            let certificate = Certificate::new(&dir.path);
            (dir, certificate)
        });
        Services { scheme, certificate }
    }

    fn start(&self, binary: &Path, name: &str, behaviour: Behaviour, downstreams: &[&Guard]) -> Guard {
        let urls: Vec<String> = downstreams.iter().map(|d| self.url(d.port, "")).collect();
        match &self.certificate {
            Some((_, certificate)) => go_https_chain_service(binary, certificate, name, behaviour, &urls),
            None => go_chain_service(binary, name, behaviour, &urls),
        }
    }

    fn url(&self, port: u16, path: &str) -> String {
        match self.scheme {
            Scheme::Http => format!("http://127.0.0.1:{port}{path}"),
            Scheme::Https => https_url(port, path),
        }
    }

    /// sonde hooks a Go executable when it first sees one of its processes move bytes, and follows
    /// each process of it from then on. So each service is asked `/status` until its span arrives
    /// (a connection between them opened before that would lose the message its pending read was
    /// waiting for: a TLS read entered before its hook returns unseen), then a request goes
    /// through the chain, not one of the checked ones.
    async fn warm_up(&self, chain: &[Guard], receiver: &Receiver) {
        for service in chain {
            let pid = service.pid().to_string();
            let seen = |spans: &[ReceivedSpan]| {
                spans.iter().any(|s| {
                    s.resource.get("process.pid") == Some(&pid)
                        && s.attr("url.path").as_deref() == Some("/status")
                })
            };
            for _ in 0..10 {
                let url = self.url(service.port, "/status");
                tokio::task::spawn_blocking(move || sonde_tests::harness::curl(&["-k", "--http1.1", &url]))
                    .await
                    .unwrap();
                if seen(&receiver.wait_for(&seen, Duration::from_secs(2)).await) {
                    break;
                }
            }
        }
        let url = self.url(chain[0].port, "/req/0");
        let reply =
            tokio::task::spawn_blocking(move || sonde_tests::harness::curl(&["-ik", "--http1.1", &url]))
                .await
                .unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "warm-up request: {reply}");
    }

    /// `GET /req/{n}` for each of `ns` at once.
    async fn concurrent_requests(&self, port: u16, ns: Vec<u32>) {
        let scheme = self.scheme;
        let replies = tokio::task::spawn_blocking(move || match scheme {
            Scheme::Http => chains::concurrent_requests(port, ns),
            Scheme::Https => chains::concurrent_https_requests(port, ns),
        })
        .await
        .unwrap();
        for (n, status) in &replies {
            assert!(status.starts_with("HTTP/1.1 200"), "/req/{n}: {status:?}");
        }
    }
}

/// 50 concurrent requests through A → B → C built into `binary`, spoken to with `scheme`:
/// (whole traces, report, faults, spans whose `url.scheme` is not `scheme`'s).
async fn chain_under_load(binary: &Path, scheme: Scheme) -> (usize, LinkReport, Vec<String>, usize) {
    let receiver = Receiver::start().await.unwrap();
    let services = Services::new(scheme);
    // C holds each request 20–50 ms, so that all of them are in flight in every service at once.
    let slow = Behaviour { delay_ms: 20, jitter_ms: 30, parallel: false };
    let c = services.start(binary, "svc-c", slow, &[]);
    let b = services.start(binary, "svc-b", Behaviour::default(), &[&c]);
    let a = services.start(binary, "svc-a", Behaviour::default(), &[&b]);
    let (mut sonde, _) = Sonde::start_exporting(&receiver.grpc_endpoint(), "grpc", &["--exe", GO_EXE]);
    let chain = [a, b, c];
    let port = chain[0].port;
    services.warm_up(&chain, &receiver).await;

    services.concurrent_requests(port, (1..=CONCURRENT).collect()).await;
    let spans = settled_chain_spans(&receiver, &chain, CONCURRENT as usize * 5).await;
    sonde.stop();
    let faults: Vec<String> = (1..=CONCURRENT)
        .filter_map(|n| trace_check::whole_chain_fault(&spans, &format!("/req/{n}"), &SERVICES))
        .collect();
    if !faults.is_empty() {
        // What sonde counted (drops, gaps, links by source) says where a link was lost.
        let log = sonde.stderr();
        println!("sonde's counters: {}", log.lines().rfind(|l| l.contains(" counters ")).unwrap_or(""));
    }
    let want = match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    // Servers say it in `url.scheme`, clients in `url.full`.
    let other_scheme = spans
        .iter()
        .filter(|s| {
            s.attr("url.scheme").as_deref() != Some(want)
                && !s.attr("url.full").is_some_and(|url| url.starts_with(&format!("{want}://")))
        })
        .count();
    (CONCURRENT as usize - faults.len(), LinkReport::of(&spans), faults, other_scheme)
}

/// The chain under load for each toolchain's build, with symbols and without: what went wrong.
async fn every_build_under_load(scheme: Scheme) -> Vec<String> {
    let mut failures = Vec::new();
    for go in GO_TOOLCHAINS.iter().map(Path::new) {
        for stripped in [false, true] {
            let binary = build_go_chain(go, stripped);
            let (whole, report, faults, other_scheme) = chain_under_load(&binary, scheme).await;
            let build = format!("{} {}", go.display(), if stripped { "-s -w" } else { "with symbols" });
            println!("{scheme:?}, {build}: {whole} of {CONCURRENT} requests whole\n{report}");
            if report.wrong() != 0 {
                failures
                    .push(format!("{build}: {} spans parented by another request's span", report.wrong()));
            }
            if !faults.is_empty() {
                failures.push(format!("{build}: {} requests not whole, e.g. {}", faults.len(), faults[0]));
            }
            if other_scheme != 0 {
                failures.push(format!("{build}: {other_scheme} spans whose url.scheme is not {scheme:?}'s"));
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread")]
async fn go_chains_of_each_toolchain_stripped_or_not_make_whole_traces_under_concurrent_requests() {
    if !sonde_tests::harness::goroutines_followed() {
        return;
    }
    let failures = every_build_under_load(Scheme::Http).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same over HTTPS: sonde reads Go's `crypto/tls` plaintext, server side and client side, with
/// the calls keyed by goroutine.
#[tokio::test(flavor = "multi_thread")]
async fn go_https_chains_of_each_toolchain_stripped_or_not_make_whole_traces_under_concurrent_requests() {
    if !sonde_tests::harness::goroutines_followed() {
        return;
    }
    let failures = every_build_under_load(Scheme::Https).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A handler that calls two services at once, each from a goroutine it starts: both CLIENT spans
/// are children of its SERVER span.
#[tokio::test(flavor = "multi_thread")]
async fn calls_from_goroutines_a_handler_starts_are_its_children() {
    if !sonde_tests::harness::goroutines_followed() {
        return;
    }
    let receiver = Receiver::start().await.unwrap();
    let binary = build_go_chain(Path::new(GO_TOOLCHAINS[0]), false);
    let services = Services::new(Scheme::Http);
    let callee = Behaviour { delay_ms: 10, jitter_ms: 20, parallel: false };
    let c = services.start(&binary, "svc-c", callee, &[]);
    let b = services.start(&binary, "svc-b", callee, &[]);
    let fan_out = Behaviour { parallel: true, ..Behaviour::default() };
    let a = services.start(&binary, "svc-a", fan_out, &[&b, &c]);
    let (sonde, _) = Sonde::start_exporting(&receiver.grpc_endpoint(), "grpc", &["--exe", GO_EXE]);
    let chain = [a, b, c];
    let port = chain[0].port;
    services.warm_up(&chain, &receiver).await;
    services.concurrent_requests(port, (1..=20).collect()).await;
    // Per request: A's SERVER span, its two CLIENT spans, B's and C's SERVER spans.
    let spans = settled_chain_spans(&receiver, &chain, 20 * 5).await;
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

/// A request that arrives while its connection's previous one is still being handled: Go's server
/// reads its first byte in the background, and the goroutine that serves it reads the rest. The
/// handler's call for it is still its child, while another request is in progress in the same
/// service.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_first_byte_a_background_read_took_still_parents_its_calls() {
    if !sonde_tests::harness::goroutines_followed() {
        return;
    }
    let receiver = Receiver::start().await.unwrap();
    let binary = build_go_chain(Path::new(GO_TOOLCHAINS[0]), false);
    let services = Services::new(Scheme::Http);
    let b = services.start(&binary, "svc-b", Behaviour { delay_ms: 400, jitter_ms: 0, parallel: false }, &[]);
    let a = services.start(&binary, "svc-a", Behaviour::default(), &[&b]);
    let (sonde, _) = Sonde::start_exporting(&receiver.grpc_endpoint(), "grpc", &["--exe", GO_EXE]);
    let chain = [a, b];
    services.warm_up(&chain, &receiver).await;
    let port = chain[0].port;
    // One connection: /req/1, and 150 ms later, while A waits for B, /req/11 behind it, which A
    // reads when /req/1 is answered (at 400 ms). Another: /req/5 alone at 250 ms, still in A when
    // /req/11 calls B — two requests in progress, so that "the only one" cannot stand in for
    // knowing which.
    let replies = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let both = scope.spawn(move || pipelined(port, &[(1, 0), (11, 150)]));
            let alone = scope.spawn(move || pipelined(port, &[(5, 250)]));
            [both.join().expect("a client thread"), alone.join().expect("a client thread")]
        })
    })
    .await
    .unwrap();
    for (reply, answers) in replies.iter().zip([2, 1]) {
        assert_eq!(reply.matches("HTTP/1.1 200").count(), answers, "the answers on a connection: {reply}");
    }
    let paths = ["/req/1", "/req/11", "/req/5"];
    // Per request: A's SERVER and CLIENT spans, B's SERVER span.
    let spans = settled_chain_spans(&receiver, &chain, paths.len() * 3).await;
    drop(sonde);
    let report = LinkReport::of(&spans);
    println!("{report}");
    assert_eq!(report.wrong(), 0, "spans parented by another request's span (table above)");
    let faults: Vec<String> = paths
        .iter()
        .filter_map(|path| trace_check::whole_chain_fault(&spans, path, &SERVICES[..2]))
        .collect();
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

/// On one connection to `port`, for each `(n, at_ms)`: `GET /req/{n}` at `at_ms` after the start
/// (the last with `Connection: close`), without waiting for answers; everything the server answered.
fn pipelined(port: u16, requests: &[(u32, u64)]) -> String {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut stream = None;
    for (i, &(n, at_ms)) in requests.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(at_ms).saturating_sub(start.elapsed()));
        let stream = stream.get_or_insert_with(|| {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to svc-a");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        });
        let close = if i + 1 == requests.len() { "Connection: close\r\n" } else { "" };
        let head = format!("GET /req/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}\r\n");
        stream.write_all(head.as_bytes()).unwrap();
    }
    let mut reply = String::new();
    let _ = stream.expect("one request at least").read_to_string(&mut reply);
    reply
}

/// `--tls-exclude` naming a Go executable leaves its `crypto/tls` unhooked (no uprobe, no cost):
/// its HTTPS gives no span, and sonde says why.
#[tokio::test(flavor = "multi_thread")]
async fn tls_exclude_leaves_a_go_programs_crypto_tls_unhooked() {
    if !sonde_tests::harness::goroutines_followed() {
        return;
    }
    let receiver = Receiver::start().await.unwrap();
    let binary = build_go_chain(Path::new(GO_TOOLCHAINS[0]), false);
    let https = Services::new(Scheme::Https);
    let service = https.start(&binary, "svc-excluded", Behaviour::default(), &[]);
    let (sonde, _) = Sonde::start_exporting(
        &receiver.grpc_endpoint(),
        "grpc",
        &["--exe", GO_EXE, "--tls-exclude", GO_EXE],
    );
    let pid = service.pid().to_string();
    let url = https.url(service.port, "/req/1");
    for _ in 0..5 {
        let url = url.clone();
        tokio::task::spawn_blocking(move || sonde_tests::harness::curl(&["-k", "--http1.1", &url]))
            .await
            .unwrap();
    }
    // The log line says the process was seen and its TLS left alone.
    let deadline = std::time::Instant::now() + sonde_tests::harness::patience(Duration::from_secs(10));
    while !sonde.stderr().contains("crypto/tls of this Go program is not hooked (--tls-exclude)") {
        assert!(
            std::time::Instant::now() < deadline,
            "no exclusion line in sonde's log:\n{}",
            sonde.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from_it = receiver.spans().iter().filter(|s| s.resource.get("process.pid") == Some(&pid)).count();
    drop(sonde);
    assert_eq!(from_it, 0, "spans from a Go program whose crypto/tls is excluded");
}
