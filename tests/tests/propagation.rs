//! Privileged: trace context across hosts (`--context-propagation tcp|headers`). Hosts on one kernel
//! (`sonde_tests::hosts`: a network namespace and a cgroup each), one sonde per host that selects
//! only its host's processes and attaches to its host's cgroup, all exporting to one receiver.
//!
//! Plain services, none propagating anything. No sonde sees both ends of a connection between
//! hosts, so same-host stitching cannot join a trace across them: with `off` a trace breaks at each
//! host boundary, with `tcp` the context in the TCP option joins it, curl's CLIENT span at the
//! root; with `headers`, a `traceparent` header the kernel writes into each request does.
//!
//! `headers` runs only where the kernel lets a socket sit in a SOCKHASH unharmed (sonde's start-up
//! self-test): elsewhere its tests check that sonde refuses it and say so.

use std::{path::Path, time::Duration};

use sonde_tests::{
    harness::{self, Guard, Sonde, TempDir},
    hosts::{self, Host},
    prometheus,
    receiver::{ReceivedSpan, Receiver},
    tls::Certificate,
    trace_check::{self, spans_about},
};

const WAIT: Duration = Duration::from_secs(30);
const REQUESTS: u32 = 3;

/// `tests/servers/chain.py` as `name` in `host`, listening on `bind`, calling `downstream`;
/// serving HTTPS with `tls`.
fn service(host: &Host, name: &str, bind: &str, downstream: &[String], tls: Option<&Certificate>) -> Guard {
    let port = harness::free_port();
    let mut command = host.command("python3");
    command
        .arg(harness::servers_dir().join("chain.py"))
        .arg(port.to_string())
        .args(downstream)
        .env("OTEL_SERVICE_NAME", name)
        .env("CHAIN_BIND", bind)
        .env("CHAIN_TLS", tls.map_or(String::new(), |c| format!("{} {}", c.cert.display(), c.key.display())));
    let guard = Guard::of(host.spawn(&mut command), port);
    host.wait_listening(bind, port);
    guard
}

/// nginx in `host`, one process, on `bind`:`port` (with TLS, given a certificate), proxying
/// everything to `upstream`.
fn nginx_proxy(
    host: &Host,
    dir: &Path,
    bind: &str,
    certificate: Option<&Certificate>,
    upstream: &str,
) -> Guard {
    let port = harness::free_port();
    let tls = certificate.map_or(String::new(), |c| {
        format!("ssl; ssl_certificate {}; ssl_certificate_key {}", c.cert.display(), c.key.display())
    });
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen {bind}:{port} {tls};
    location / {{ proxy_pass {upstream}; }}
  }}
}}
",
        d = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut command = host.command("nginx");
    command.arg("-c").arg(&conf_path).arg("-p").arg(dir);
    let guard = Guard::of(host.spawn(&mut command), port);
    host.wait_listening(bind, port);
    guard
}

/// The one span of `service` and `kind` about `path`, if there is exactly one.
fn one<'a>(
    spans: &'a [ReceivedSpan],
    path: &str,
    service: &str,
    kind: &'static str,
) -> Result<&'a ReceivedSpan, String> {
    match spans_about(spans, path).get(&(service.to_owned(), kind)).map(Vec::as_slice) {
        Some([span]) => Ok(span),
        other => Err(format!("{path}: {} {kind} spans from {service}", other.map_or(0, <[_]>::len))),
    }
}

/// A span expected in a trace: the path it is about, its service and kind.
type Hop = (String, &'static str, &'static str);

/// Why `hops` are not one trace, each span the child of the one before (and the first the root,
/// with `rooted`); None when they are.
fn chain_fault(spans: &[ReceivedSpan], hops: &[Hop], rooted: bool) -> Option<String> {
    let chain: Vec<&ReceivedSpan> =
        match hops.iter().map(|(path, service, kind)| one(spans, path, service, kind)).collect() {
            Ok(chain) => chain,
            Err(e) => return Some(e),
        };
    if let Some(parent) = chain[0].parent_span_id_hex().filter(|_| rooted) {
        return Some(format!("{hops:?}: the first span has parent {parent}, expected the root"));
    }
    chain.windows(2).find_map(|pair| {
        let (parent, child) = (pair[0], pair[1]);
        let linked = child.trace_id_hex() == parent.trace_id_hex()
            && child.parent_span_id_hex() == Some(parent.span_id_hex());
        (!linked).then(|| {
            format!(
                "{} {} {:?} is not the child of {} {} (trace {} vs {}, parent {:?} vs span {})",
                trace_check::service(child),
                child.kind_name(),
                trace_check::request_path(child),
                trace_check::service(parent),
                parent.kind_name(),
                child.trace_id_hex(),
                parent.trace_id_hex(),
                child.parent_span_id_hex(),
                parent.span_id_hex()
            )
        })
    })
}

/// curl → svc-a, on the first host: the hops every test's requests start with.
fn first_hops(n: u32) -> Vec<Hop> {
    let (outer, inner) = (format!("/req/{n}"), format!("/{n}"));
    vec![(outer.clone(), "curl", "CLIENT"), (outer, "svc-a", "SERVER"), (inner, "svc-a", "CLIENT")]
}

/// `sonde run` for one host: its cgroup, exporting to `receiver`, with `selection`.
fn sonde_for(host: &Host, receiver: &Receiver, mode: &str, selection: &[&str]) -> Sonde {
    let endpoint = receiver.grpc_endpoint();
    let cgroup = host.cgroup.path().display().to_string();
    let common = ["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--context-propagation", mode];
    Sonde::start(&[&common[..], &["--cgroup", &cgroup], selection].concat())
}

/// curl in `host` for `/req/0..REQUESTS` on `url`, with `headers` (`-H` values, for request `n`).
fn requests_from(host: &Host, url: &str, headers: impl Fn(u32) -> Vec<String>) {
    for n in 0..REQUESTS {
        let headers: String = headers(n).iter().map(|h| format!(" -H '{h}'")).collect();
        let curl = format!("exec curl -sS -o /dev/null --max-time 20{headers} {url}/req/{n}");
        assert!(host.run(&curl), "request {n}");
    }
}

/// Waits until `count` spans of `services` arrived; then all spans received.
async fn spans_of(receiver: &Receiver, services: &[&str], count: usize) -> Vec<ReceivedSpan> {
    let ours =
        |spans: &[ReceivedSpan]| spans.iter().filter(|s| services.contains(&trace_check::service(s))).count();
    receiver.wait_for(|s| ours(s) >= count, WAIT).await;
    receiver.spans()
}

/// Two hosts: curl → svc-a on A, svc-a → svc-b on B (over HTTPS with `https`); one sonde per host
/// in `mode`; curl sends `headers`. The spans received.
async fn two_hosts(mode: &str, https: bool, headers: impl Fn(u32) -> Vec<String>) -> Vec<ReceivedSpan> {
    let receiver = Receiver::start().await.unwrap();
    let (a, b) = (Host::create(), Host::create());
    hosts::link(&a, "198.18.0.1", &b, "198.18.0.2");
    let dir = TempDir::new("propagation");
    let certificate = https.then(|| Certificate::new(&dir.path));
    let svc_b = service(&b, "svc-b", "198.18.0.2", &[], certificate.as_ref());
    let scheme = if https { "https" } else { "http" };
    let svc_a = service(&a, "svc-a", "127.0.0.1", &[format!("{scheme}://198.18.0.2:{}", svc_b.port)], None);

    let mut sondes = [
        sonde_for(&a, &receiver, mode, &["--exclude-container", &b.id]),
        sonde_for(&b, &receiver, mode, &["--pid", &svc_b.pid().to_string()]),
    ];
    requests_from(&a, &svc_a.url(""), headers);
    let spans = spans_of(&receiver, &["curl", "svc-a", "svc-b"], 4 * REQUESTS as usize).await;
    sondes.iter_mut().for_each(Sonde::stop_cleanly);
    spans
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_crosses_hosts_in_a_tcp_option_and_breaks_without_it() {
    let spans = two_hosts("tcp", false, |_| Vec::new()).await;
    for n in 0..REQUESTS {
        let mut hops = first_hops(n);
        hops.push((format!("/{n}"), "svc-b", "SERVER"));
        if let Some(fault) = chain_fault(&spans, &hops, true) {
            panic!("with --context-propagation tcp, request {n}: {fault}\n{spans:#?}");
        }
    }

    // The same without propagation: svc-b's sonde never saw the caller, so its server spans start
    // traces of their own — the break the option mends.
    let spans = two_hosts("off", false, |_| Vec::new()).await;
    for n in 0..REQUESTS {
        let server_b = one(&spans, &format!("/{n}"), "svc-b", "SERVER").unwrap();
        let client_a = one(&spans, &format!("/{n}"), "svc-a", "CLIENT").unwrap();
        assert_eq!(
            server_b.parent_span_id_hex(),
            None,
            "request {n}: svc-b's SERVER span has a parent without propagation"
        );
        assert_ne!(server_b.trace_id_hex(), client_a.trace_id_hex(), "request {n}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_tcp_option_carries_the_context_too() {
    // TLS changes no TCP header: the option goes with the record that begins the request, and
    // OpenSSL's hooks tie it to the plaintext on both sides.
    let spans = two_hosts("tcp", true, |_| Vec::new()).await;
    for n in 0..REQUESTS {
        let mut hops = first_hops(n);
        hops.push((format!("/{n}"), "svc-b", "SERVER"));
        if let Some(fault) = chain_fault(&spans, &hops, true) {
            panic!("with --context-propagation tcp over HTTPS, request {n}: {fault}\n{spans:#?}");
        }
        let server_b = one(&spans, &format!("/{n}"), "svc-b", "SERVER").unwrap();
        assert_eq!(server_b.attr("url.scheme").as_deref(), Some("https"), "request {n}");
    }
}

/// Three hosts, as a cluster has them: curl → svc-a on A; A reaches svc-b on B through a DNAT
/// address (as a Kubernetes Service is reached: no 4-tuple matches between the two ends); svc-b
/// calls nginx on C (over HTTPS with `https`), which proxies to svc-c on C. One sonde per host in
/// `mode`.
async fn three_hosts(mode: &str, https: bool) -> Vec<ReceivedSpan> {
    const SERVICE_ADDR: &str = "198.19.0.10";
    let receiver = Receiver::start().await.unwrap();
    let (a, b, c) = (Host::create(), Host::create(), Host::create());
    hosts::link(&a, "198.18.1.1", &b, "198.18.1.2");
    hosts::link(&b, "198.18.2.1", &c, "198.18.2.2");
    let dir = TempDir::new("propagation-c");
    let certificate = Certificate::new(&dir.path);

    let svc_c = service(&c, "svc-c", "127.0.0.1", &[], None);
    let upstream = format!("http://127.0.0.1:{}", svc_c.port);
    let nginx = nginx_proxy(&c, &dir.path, "198.18.2.2", https.then_some(&certificate), &upstream);
    let scheme = if https { "https" } else { "http" };
    let svc_b = service(&b, "svc-b", "198.18.1.2", &[format!("{scheme}://198.18.2.2:{}", nginx.port)], None);
    // The Service address: routed towards B, rewritten to svc-b's own before it leaves A.
    let status =
        a.command("ip").args(["route", "add", &format!("{SERVICE_ADDR}/32"), "via", "198.18.1.2"]).status();
    assert!(status.is_ok_and(|s| s.success()), "a route to the Service address");
    a.nft(&format!(
        "table ip sonde_test {{
  chain output {{
    type nat hook output priority -100;
    ip daddr {SERVICE_ADDR} tcp dport 80 dnat to 198.18.1.2:{}
  }}
}}
",
        svc_b.port
    ));
    let svc_a = service(&a, "svc-a", "127.0.0.1", &[format!("http://{SERVICE_ADDR}:80")], None);

    let (b_pid, nginx_pid, c_pid) =
        (svc_b.pid().to_string(), nginx.pid().to_string(), svc_c.pid().to_string());
    let mut sondes = [
        sonde_for(&a, &receiver, mode, &["--exclude-container", &b.id, "--exclude-container", &c.id]),
        sonde_for(&b, &receiver, mode, &["--pid", &b_pid]),
        sonde_for(&c, &receiver, mode, &["--pid", &nginx_pid, "--pid", &c_pid]),
    ];
    requests_from(&a, &svc_a.url(""), |_| Vec::new());
    // curl, svc-a ×2, svc-b ×2, nginx ×2, svc-c.
    let spans =
        spans_of(&receiver, &["curl", "svc-a", "svc-b", "nginx", "svc-c"], 8 * REQUESTS as usize).await;
    sondes.iter_mut().for_each(Sonde::stop_cleanly);
    drop((svc_a, svc_b, nginx, svc_c));
    spans
}

/// Each request of `three_hosts` is one trace, every span the child of the one before: curl, svc-a
/// (A), svc-b (B), nginx and svc-c (C).
fn assert_three_host_chains(spans: &[ReceivedSpan], mode: &str) {
    for n in 0..REQUESTS {
        let inner = format!("/{n}");
        let mut hops = first_hops(n);
        hops.extend([
            (inner.clone(), "svc-b", "SERVER"),
            (inner.clone(), "svc-b", "CLIENT"),
            (inner.clone(), "nginx", "SERVER"),
            (inner.clone(), "nginx", "CLIENT"),
            (inner, "svc-c", "SERVER"),
        ]);
        if let Some(fault) = chain_fault(spans, &hops, true) {
            // The spans first: a failure's last lines (all the kernel matrix shows) say why.
            panic!("{spans:#?}\nwith --context-propagation {mode}, request {n}: {fault}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_behind_a_service_address_and_a_tls_proxy_make_one_trace_per_request() {
    let spans = three_hosts("tcp", true).await;
    assert_three_host_chains(&spans, "tcp");

    // Without propagation the trace breaks at each host boundary: B's and C's server spans start
    // traces of their own.
    let spans = three_hosts("off", true).await;
    for n in 0..REQUESTS {
        for service in ["svc-b", "nginx"] {
            let server = one(&spans, &format!("/{n}"), service, "SERVER").unwrap();
            assert_eq!(
                server.parent_span_id_hex(),
                None,
                "request {n}: {service}'s SERVER span has a parent"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_a_traceparent_header_takes_its_trace_across_hosts() {
    // curl sends a header (as an instrumented caller would): svc-a's server span is its child, and
    // the call svc-a makes goes on the wire in the header's trace — the kernel read the header —
    // so svc-b's server span, on the other host, is in that trace too.
    let trace = |n: u32| format!("4bf92f3577b34da6a3ce929d0e0e47{n:02x}");
    const CALLER: &str = "00f067aa0ba902b7";
    let spans = two_hosts("tcp", false, |n| vec![format!("traceparent: 00-{}-{CALLER}-01", trace(n))]).await;
    for n in 0..REQUESTS {
        let (outer, inner) = (format!("/req/{n}"), format!("/{n}"));
        let server_a = one(&spans, &outer, "svc-a", "SERVER").unwrap();
        assert_eq!(
            (server_a.trace_id_hex(), server_a.parent_span_id_hex()),
            (trace(n), Some(CALLER.to_owned()))
        );
        let hops =
            [(outer, "svc-a", "SERVER"), (inner.clone(), "svc-a", "CLIENT"), (inner, "svc-b", "SERVER")];
        // The chain below the header's span: svc-a's server span is its first link, not a root.
        if let Some(fault) = chain_fault(&spans, &hops, false) {
            panic!("request {n}: {fault}\n{spans:#?}");
        }
    }
}

/// Whether this kernel lets sonde write headers: the SOCKHASH self-test's verdict, and whether
/// the verifier takes the program that writes them, as `sonde check-kernel` prints both.
fn headers_allowed() -> bool {
    let out = std::process::Command::new(harness::sonde_bin()).arg("check-kernel").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let verdict = text.lines().find(|l| l.starts_with("sockhash:")).unwrap_or_else(|| panic!("{text}"));
    let writer = text
        .lines()
        .find(|l| l.starts_with("program inject_traceparent:"))
        .unwrap_or_else(|| panic!("{text}"));
    eprintln!("{verdict}\n{writer}");
    if verdict.starts_with("sockhash: harmless") && !writer.ends_with(": loaded") {
        // The self-test passes but the verifier refuses the writer: sonde must say so at start.
        let out = std::process::Command::new(harness::sonde_bin())
            .args(["run", "--context-propagation", "headers", "--print", "none", "--pid", "1"])
            .output_with_timeout(Duration::from_secs(30))
            .expect("sonde stops when it cannot load the header writer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("inject_traceparent"), "{stderr}");
        return false;
    }
    verdict.starts_with("sockhash: harmless")
}

#[test]
fn headers_are_refused_where_a_sockhash_harms_sockets_and_all_falls_back_to_the_tcp_option() {
    let allowed = headers_allowed();
    let out = std::process::Command::new(harness::sonde_bin())
        .args(["run", "--context-propagation", "headers", "--print", "none", "--pid", "1"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output_with_timeout(Duration::from_secs(3));
    if allowed {
        assert!(out.is_none(), "sonde stopped with headers on a kernel that allows them: {out:?}");
        let mut all = Sonde::start(&["--context-propagation", "all", "--print", "none", "--pid", "1"]);
        assert!(all.stderr().contains("SOCKHASH self-test passed"), "{}", all.stderr());
        let log = all.stderr();
        assert!(log.contains("tcp_option=true") && log.contains("traceparent_header=true"), "{log}");
        all.stop_cleanly();
    } else {
        let out = out.expect("sonde refuses headers at once on this kernel");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("--context-propagation headers is refused on this kernel"), "{stderr}");
        assert!(stderr.contains("SOCKHASH") && stderr.contains("--context-propagation tcp"), "{stderr}");
        let mut all = Sonde::start(&["--context-propagation", "all", "--print", "none", "--pid", "1"]);
        let log = all.stderr();
        assert!(log.contains("SOCKHASH self-test failed"), "{log}");
        assert!(log.contains("tcp_option=true") && log.contains("traceparent_header=false"), "{log}");
        all.stop_cleanly();
    }
}

/// `output()` of a command that may run for good: None if still running after `limit` (then
/// killed).
trait OutputWithTimeout {
    fn output_with_timeout(&mut self, limit: Duration) -> Option<std::process::Output>;
}

impl OutputWithTimeout for std::process::Command {
    fn output_with_timeout(&mut self, limit: Duration) -> Option<std::process::Output> {
        let mut child =
            self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + harness::patience(limit);
        while std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return Some(child.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        None
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_joined_by_traceparent_headers_make_one_trace_per_request() {
    if !headers_allowed() {
        eprintln!("headers are refused on this kernel (see the test above): nothing to show here");
        return;
    }
    // nginx forwards the header it received: the kernel rewrites its parent id to name nginx's
    // own CLIENT span, so that svc-c is that span's child.
    let spans = three_hosts("headers", false).await;
    assert_three_host_chains(&spans, "headers");
}

#[test]
fn a_written_header_changes_no_other_byte_of_what_the_server_reads() {
    if !headers_allowed() {
        eprintln!("headers are refused on this kernel: nothing to show here");
        return;
    }
    let server = harness::python_server("body_hash.py", &[], &[]);
    let prometheus = std::net::SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
    let listen = prometheus.to_string();
    let mut sonde = Sonde::start(&[
        "--context-propagation",
        "headers",
        "--print",
        "none",
        "--prometheus-listen",
        &listen,
    ]);
    let out = std::process::Command::new("python3")
        .arg(harness::servers_dir().join("bytes_client.py"))
        .arg(server.port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every request left as written is counted, by why (user space counts the one whose head began
    // in a one-byte write: the kernel gave it no context at all).
    let counted = |name: &str, outcome: Option<&str>| -> f64 {
        let (_, _, body) = prometheus::scrape(prometheus).unwrap();
        prometheus::parse_exposition(&body)
            .unwrap()
            .iter()
            .filter(|s| {
                s.name == name
                    && outcome.is_none_or(|o| s.labels.get("outcome").map(String::as_str) == Some(o))
            })
            .map(|s| s.value)
            .sum()
    };
    let deadline = std::time::Instant::now() + harness::patience(WAIT);
    let wanted = |c: &dyn Fn(&str, Option<&str>) -> f64| {
        c("sonde_propagation_headers_total", Some("injected")) >= 3.0
            && c("sonde_propagation_headers_total", Some("already_present")) >= 1.0
            && c("sonde_propagation_without_context_total", None) >= 1.0
    };
    while !wanted(&counted) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(wanted(&counted), "{}", prometheus::scrape(prometheus).unwrap().2);
    sonde.stop_cleanly();
    let traceparents = |case: &str, i: usize| -> Vec<String> {
        report[case]["replies"][i]["traceparents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    for case in ["large_post", "chunked", "pipelined", "with_traceparent", "byte_by_byte"] {
        let sent = report[case]["sent"].as_array().unwrap();
        for (i, hash) in sent.iter().enumerate() {
            assert_eq!(
                &report[case]["replies"][i]["sha256"], hash,
                "{case} #{i}: the body changed\n{report:#}"
            );
        }
    }
    let valid = |v: &str| v.len() == 55 && v.starts_with("00-") && v.ends_with("-01");
    for case in ["large_post", "chunked"] {
        let tp = traceparents(case, 0);
        assert!(tp.len() == 1 && valid(&tp[0]), "{case}: one header written: {tp:?}");
    }
    let first = traceparents("pipelined", 0);
    assert!(first.len() == 1 && valid(&first[0]), "the first pipelined request: {first:?}");
    assert!(traceparents("pipelined", 1).is_empty() && traceparents("pipelined", 2).is_empty(), "{report:#}");
    assert_eq!(
        traceparents("with_traceparent", 0),
        [report["traceparent"].as_str().unwrap()],
        "forwarded as it was, once"
    );
    assert!(traceparents("byte_by_byte", 0).is_empty(), "a head written a byte at a time gets no header");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_service_called_by_a_plain_client_continues_sondes_client_span() {
    if !headers_allowed() {
        eprintln!("headers are refused on this kernel: nothing to show here");
        return;
    }
    let receiver = Receiver::start().await.unwrap();
    let sdk = harness::sdk_python_service("svc-sdk", &receiver.http_traces_url(), &[]);
    let endpoint = receiver.grpc_endpoint();
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--context-propagation",
        "headers",
        "--print",
        "none",
    ]);
    for n in 0..REQUESTS {
        harness::curl(&["-sS", "-o", "/dev/null", &sdk.url(&format!("/req/{n}"))]);
    }
    let spans = spans_of(&receiver, &["curl", "svc-sdk"], 2 * REQUESTS as usize).await;
    sonde.stop_cleanly();
    // The SDK's spans carry no path sonde reads: each of its SERVER spans must be the child of one
    // of curl's CLIENT spans, one each.
    let of = |service: &str, kind: &str| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|s| trace_check::service(s) == service && s.kind_name() == kind).collect()
    };
    let (clients, servers) = (of("curl", "CLIENT"), of("svc-sdk", "SERVER"));
    assert_eq!((clients.len(), servers.len()), (REQUESTS as usize, REQUESTS as usize), "{spans:#?}");
    for client in &clients {
        let children: Vec<_> = servers
            .iter()
            .filter(|s| {
                s.trace_id_hex() == client.trace_id_hex()
                    && s.parent_span_id_hex() == Some(client.span_id_hex())
            })
            .collect();
        assert_eq!(children.len(), 1, "curl's span {} has no SDK child\n{spans:#?}", client.span_id_hex());
    }
}

/// A Go service whose handlers call an SDK service, under concurrent requests: the `traceparent`
/// sonde writes into each Go client request names that request's CLIENT span — the child of the
/// handler's SERVER span, found through goroutines — so the SDK's SERVER span continues the right
/// trace. Needs header propagation and followed goroutines.
#[tokio::test(flavor = "multi_thread")]
async fn a_go_clients_written_header_names_its_own_client_span() {
    if !headers_allowed() {
        eprintln!("headers are refused on this kernel: nothing to show here");
        return;
    }
    if !harness::goroutines_followed() {
        return;
    }
    const CONCURRENT: u32 = 10;
    let receiver = Receiver::start().await.unwrap();
    let sdk = harness::sdk_python_service("svc-sdk", &receiver.http_traces_url(), &[]);
    let go = sonde_tests::chains::chain_service(
        sonde_tests::chains::Runtime::Go,
        "svc-go",
        sonde_tests::chains::Behaviour::default(),
        &[sdk.url("")],
    );
    let endpoint = receiver.grpc_endpoint();
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--context-propagation",
        "headers",
        "--print",
        "none",
        "--exe",
        sonde_tests::chains::GO_EXE,
    ]);
    // sonde hooks the Go executable when it first sees it move bytes.
    harness::curl(&["-sS", "-o", "/dev/null", &go.url("/req/0")]);
    std::thread::sleep(Duration::from_secs(2));
    let urls: Vec<String> = (1..=CONCURRENT).map(|n| go.url(&format!("/req/{n}"))).collect();
    std::thread::scope(|scope| {
        for url in &urls {
            scope.spawn(move || harness::curl(&["-sS", "-o", "/dev/null", url]));
        }
    });
    let spans = spans_of(&receiver, &["svc-go", "svc-sdk"], 3 * (CONCURRENT as usize + 1)).await;
    sonde.stop_cleanly();
    let of = |service: &str, kind: &str| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|s| trace_check::service(s) == service && s.kind_name() == kind).collect()
    };
    let (servers, clients, sdk_servers) =
        (of("svc-go", "SERVER"), of("svc-go", "CLIENT"), of("svc-sdk", "SERVER"));
    let mut faults = Vec::new();
    for n in 1..=CONCURRENT {
        let path = format!("/req/{n}");
        let about = spans_about(&spans, &path);
        let (Some([server]), Some([client])) = (
            about.get(&("svc-go".to_owned(), "SERVER")).map(Vec::as_slice),
            about.get(&("svc-go".to_owned(), "CLIENT")).map(Vec::as_slice),
        ) else {
            faults.push(format!("{path}: not one SERVER and one CLIENT span from svc-go"));
            continue;
        };
        if client.parent_span_id_hex() != Some(server.span_id_hex()) {
            faults.push(format!("{path}: svc-go's CLIENT span is not the child of its SERVER span"));
        }
        let children = sdk_servers
            .iter()
            .filter(|s| {
                s.trace_id_hex() == client.trace_id_hex()
                    && s.parent_span_id_hex() == Some(client.span_id_hex())
            })
            .count();
        if children != 1 {
            faults.push(format!("{path}: svc-go's CLIENT span has {children} SDK children"));
        }
    }
    assert!(
        faults.is_empty(),
        "{}\n({} SERVER, {} CLIENT, {} SDK spans)",
        faults.join("\n"),
        servers.len(),
        clients.len(),
        sdk_servers.len()
    );
}
