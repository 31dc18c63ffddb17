//! Privileged: trace context across hosts (`--context-propagation tcp`). Two hosts on one kernel,
//! each with one sonde that selects only its own processes and attaches to its own cgroup, both
//! exporting to one receiver:
//! - host A: the root network namespace and a cgroup of its own; curl calls svc-a there;
//! - host B: a network namespace of its own (198.18.0.2, behind a veth pair) and its own cgroup;
//!   svc-a calls svc-b there.
//!
//! Plain services, none propagating anything. Neither sonde sees the other end of the A → B
//! connection, so same-host stitching cannot join the two halves: with `off` the trace breaks at
//! the host boundary, with `tcp` the context in the TCP option joins it, curl's CLIENT span at the
//! root.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use sonde_tests::{
    harness::{self, ContainerCgroup, Guard, Sonde, TempDir},
    receiver::{ReceivedSpan, Receiver},
    tls::Certificate,
    trace_check::{self, spans_about},
};

const WAIT: Duration = Duration::from_secs(30);
const REQUESTS: u32 = 3;
const HOST_B_ADDR: &str = "198.18.0.2";
const HOST_A_ADDR: &str = "198.18.0.1";

/// Host B's network namespace and the veth pair to it; removed when dropped.
struct Netns {
    name: String,
    veth: String,
}

impl Netns {
    fn create() -> Netns {
        let id = std::process::id();
        let ns = Netns { name: format!("sonde-b-{id}"), veth: format!("sb{id}") };
        let peer = format!("sbp{id}");
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("running ip");
            assert!(status.success(), "ip {}", args.join(" "));
        };
        ip(&["netns", "add", &ns.name]);
        ip(&["link", "add", &ns.veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{HOST_A_ADDR}/30"), "dev", &ns.veth]);
        ip(&["link", "set", &ns.veth, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{HOST_B_ADDR}/30"), "dev", &peer]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A cgroup id as container runtimes write them: 64 hex digits.
fn container_id(tag: u8) -> String {
    format!("{:02x}{:062x}", tag, std::process::id())
}

/// `tests/servers/chain.py` as `name`, run by `prefix` (e.g. `ip netns exec NS`), listening on
/// `bind`, moved into `cgroup` at once (before it makes any connection).
/// `tls`: serve HTTPS with this certificate and key.
fn service(
    prefix: &[&str],
    cgroup: &ContainerCgroup,
    name: &str,
    bind: &str,
    downstream: &[String],
    tls: Option<&Certificate>,
) -> Guard {
    let port = harness::free_port();
    let (program, args) = prefix.split_first().map_or(("python3", &[][..]), |(p, rest)| (*p, rest));
    let mut command = Command::new(program);
    if !prefix.is_empty() {
        command.args(args).arg("python3");
    }
    let child = command
        .arg(harness::servers_dir().join("chain.py"))
        .arg(port.to_string())
        .args(downstream)
        .env("OTEL_SERVICE_NAME", name)
        .env("CHAIN_BIND", bind)
        .env("CHAIN_TLS", tls.map_or(String::new(), |c| format!("{} {}", c.cert.display(), c.key.display())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tests/servers/chain.py");
    cgroup.add(child.id());
    let guard = Guard::of(child, port);
    // Host B's address is reachable from host A over the veth pair.
    harness::wait_listening_on(bind, port);
    guard
}

/// `curl URL` from host A's cgroup.
fn curl_from(cgroup: &ContainerCgroup, url: &str) {
    let script =
        format!("echo $$ > {}/cgroup.procs && exec curl -s -o /dev/null {url}", cgroup.path().display());
    let status = Command::new("sh").args(["-c", &script]).status().expect("running curl");
    assert!(status.success(), "curl {url}");
}

/// The one span of `service` and `kind` about `path`, if there is exactly one.
fn one<'a>(
    spans: &'a [ReceivedSpan],
    path: &str,
    service: &str,
    kind: &str,
) -> Result<&'a ReceivedSpan, String> {
    match spans_about(spans, path).get(&(service.to_owned(), kind_of(kind))).map(Vec::as_slice) {
        Some([span]) => Ok(span),
        other => Err(format!("{path}: {} {kind} spans from {service}", other.map_or(0, <[_]>::len))),
    }
}

fn kind_of(kind: &str) -> &'static str {
    if kind == "SERVER" { "SERVER" } else { "CLIENT" }
}

/// Why request `n` is not one trace curl → svc-a → svc-b, each span the child of the one before
/// and curl's CLIENT span the root; None when it is.
fn whole_trace_fault(spans: &[ReceivedSpan], n: u32) -> Option<String> {
    let (outer, inner) = (format!("/req/{n}"), format!("/{n}"));
    let chain = [
        one(spans, &outer, "curl", "CLIENT"),
        one(spans, &outer, "svc-a", "SERVER"),
        one(spans, &inner, "svc-a", "CLIENT"),
        one(spans, &inner, "svc-b", "SERVER"),
    ];
    let chain: Vec<&ReceivedSpan> = match chain.into_iter().collect() {
        Ok(chain) => chain,
        Err(e) => return Some(e),
    };
    if let Some(parent) = chain[0].parent_span_id_hex() {
        return Some(format!("request {n}: curl's CLIENT span has parent {parent}, expected the root"));
    }
    chain.windows(2).find_map(|pair| {
        let (parent, child) = (pair[0], pair[1]);
        let linked = child.trace_id_hex() == parent.trace_id_hex()
            && child.parent_span_id_hex() == Some(parent.span_id_hex());
        (!linked).then(|| {
            format!(
                "request {n}: {} {} is not the child of {} {} (trace {} vs {}, parent {:?} vs span {})",
                trace_check::service(child),
                child.kind_name(),
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

/// Both hosts and their services; one sonde per host in `mode`, exporting to `receiver`; the
/// requests through them; the spans received.
/// `https`: svc-a calls svc-b over HTTPS.
async fn traced_requests(mode: &str, tag: u8, https: bool) -> Vec<ReceivedSpan> {
    let receiver = Receiver::start().await.unwrap();
    let netns = Netns::create();
    let dir = TempDir::new("propagation");
    let certificate = https.then(|| Certificate::new(&dir.path));
    let (a_id, b_id) = (container_id(tag), container_id(tag + 1));
    let (host_a, host_b) =
        (ContainerCgroup::create("docker", &a_id), ContainerCgroup::create("docker", &b_id));
    let in_b = ["ip", "netns", "exec", &netns.name];
    let b = service(&in_b, &host_b, "svc-b", HOST_B_ADDR, &[], certificate.as_ref());
    let scheme = if https { "https" } else { "http" };
    let b_url = format!("{scheme}://{HOST_B_ADDR}:{}", b.port);
    let a = service(&[], &host_a, "svc-a", "127.0.0.1", &[b_url], None);

    let endpoint = receiver.grpc_endpoint();
    let common = ["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--context-propagation", mode];
    let a_cgroup = host_a.path().display().to_string();
    let b_cgroup = host_b.path().display().to_string();
    let b_pid = b.pid().to_string();
    let mut sonde_a =
        Sonde::start(&[&common[..], &["--cgroup", &a_cgroup, "--exclude-container", &b_id]].concat());
    let mut sonde_b = Sonde::start(&[&common[..], &["--cgroup", &b_cgroup, "--pid", &b_pid]].concat());

    for n in 0..REQUESTS {
        curl_from(&host_a, &a.url(&format!("/req/{n}")));
    }
    // Four spans per request, from the two sondes.
    let want = 4 * REQUESTS as usize;
    let ours = |spans: &[ReceivedSpan]| {
        spans.iter().filter(|s| ["curl", "svc-a", "svc-b"].contains(&trace_check::service(s))).count()
    };
    receiver.wait_for(|s| ours(s) >= want, WAIT).await;
    sonde_a.stop_cleanly();
    sonde_b.stop_cleanly();
    drop((a, b));
    receiver.spans()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_crosses_hosts_in_a_tcp_option_and_breaks_without_it() {
    let spans = traced_requests("tcp", 0xa0, false).await;
    for n in 0..REQUESTS {
        if let Some(fault) = whole_trace_fault(&spans, n) {
            panic!("with --context-propagation tcp: {fault}\n{spans:#?}");
        }
    }

    // The same without propagation: svc-b's sonde never saw the caller, so its server spans start
    // traces of their own — the break the option mends.
    let spans = traced_requests("off", 0xb0, false).await;
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
    let spans = traced_requests("tcp", 0xc0, true).await;
    for n in 0..REQUESTS {
        if let Some(fault) = whole_trace_fault(&spans, n) {
            panic!("with --context-propagation tcp over HTTPS: {fault}\n{spans:#?}");
        }
        let server_b = one(&spans, &format!("/{n}"), "svc-b", "SERVER").unwrap();
        assert_eq!(server_b.attr("url.scheme").as_deref(), Some("https"), "request {n}");
    }
}
