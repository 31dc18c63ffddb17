//! Privileged: what a span's resource says of its process — the process's own
//! `OTEL_RESOURCE_ATTRIBUTES`, and `container.id` for a process in a container's cgroup — checked
//! at a real OTLP receiver.

use std::time::Duration;

use sonde_tests::{
    harness::{self, ContainerCgroup, Sonde, curl},
    receiver::{ReceivedSpan, Receiver},
};

const WAIT: Duration = Duration::from_secs(20);

async fn one_server_span(receiver: &Receiver, port: u16) -> ReceivedSpan {
    let port = port.to_string();
    let is_ours =
        |s: &ReceivedSpan| s.kind_name() == "SERVER" && s.attr("server.port").as_deref() == Some(&port);
    let spans = receiver.wait_for(|s| s.iter().any(is_ours), WAIT).await;
    spans.into_iter().find(is_ours).unwrap_or_else(|| panic!("no server span on port {port}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_in_a_container_cgroup_gets_container_id_and_its_resource_attributes() {
    let receiver = Receiver::start().await.unwrap();
    let id = "5a1e".repeat(16);
    let cgroup = ContainerCgroup::create("docker", &id);
    let server = harness::python_http_server(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.name=from-attributes,deployment.environment.name=staging,host.name=spoofed",
    )]);
    // Before sonde first sees the process, which is when it reads the cgroup.
    cgroup.add(server.pid());
    let endpoint = receiver.grpc_endpoint();
    let pid = server.pid().to_string();
    let mut sonde = Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid]);
    curl(&["-o", "/dev/null", &server.url("/index.html")]);

    let span = one_server_span(&receiver, server.port).await;
    let resource = |k: &str| span.resource.get(k).map(String::as_str);
    assert_eq!(resource("container.id"), Some(id.as_str()), "{:?}", span.resource);
    assert_eq!(resource("service.name"), Some("from-attributes"));
    assert_eq!(resource("deployment.environment.name"), Some("staging"));
    assert_ne!(resource("host.name"), Some("spoofed"), "sonde's own facts stand");

    // A process outside any container has no container.id.
    let plain = harness::python_http_server(&[]);
    let plain_pid = plain.pid().to_string();
    sonde.stop_cleanly();
    let mut sonde =
        Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &plain_pid]);
    curl(&["-o", "/dev/null", &plain.url("/index.html")]);
    let span = one_server_span(&receiver, plain.port).await;
    assert_eq!(span.resource.get("container.id"), None, "{:?}", span.resource);
    sonde.stop_cleanly();
    drop(server);
}

/// The effective capability set of `pid`, from /proc/PID/status.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_owned();
    u64::from_str_radix(&hex, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_with_only_the_capabilities_it_names_not_privileged() {
    const CAP_DAC_READ_SEARCH: u32 = 2;
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server(&[("OTEL_SERVICE_NAME", "capabilities")]);
    let endpoint = receiver.grpc_endpoint();
    let pid = server.pid().to_string();
    // Root, but with a bounding set of the four capabilities the README names: no
    // CAP_SYS_ADMIN, nothing else of a privileged container.
    let wrapper = [
        "setpriv",
        "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search",
        "--inh-caps=-all",
        "--",
    ];
    let args = ["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid];
    let mut sonde = Sonde::start_through(&wrapper, &args, &[]);
    let caps = effective_caps(sonde.pid());
    let wanted =
        [CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF].iter().fold(0u64, |a, c| a | 1 << c);
    assert_eq!(caps, wanted, "sonde runs with exactly these capabilities: {caps:#x}");
    assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0);
    curl(&["-o", "/dev/null", &server.url("/index.html")]);
    let span = one_server_span(&receiver, server.port).await;
    assert_eq!(span.resource.get("service.name").map(String::as_str), Some("capabilities"), "environ read");
    sonde.stop_cleanly();

    // One fewer, and sonde says which is missing instead of starting.
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all,+bpf,+perfmon,+dac_read_search", "--inh-caps=-all", "--"])
        .arg(harness::sonde_bin())
        .args(["run", "--pid", &pid])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("missing capabilities: CAP_SYS_PTRACE"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn selection_by_container_and_exclusions_limits_which_processes_get_spans() {
    let receiver = Receiver::start().await.unwrap();
    let id = "c0ffee00".repeat(8);
    let cgroup = ContainerCgroup::create("docker", &id);
    let inside = harness::python_http_server(&[("OTEL_SERVICE_NAME", "inside")]);
    let excluded = harness::python_http_server(&[("OTEL_SERVICE_NAME", "inside-but-excluded")]);
    let outside = harness::python_http_server(&[("OTEL_SERVICE_NAME", "outside")]);
    cgroup.add(inside.pid());
    cgroup.add(excluded.pid());
    let endpoint = receiver.grpc_endpoint();
    let excluded_port = excluded.port.to_string();
    // The short id, as `docker ps` shows it; the port exclusion wins over the container match.
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--container",
        &id[..12],
        "--exclude-port",
        &excluded_port,
    ]);
    for server in [&inside, &excluded, &outside] {
        curl(&["-o", "/dev/null", &server.url("/index.html")]);
    }
    let span = one_server_span(&receiver, inside.port).await;
    assert_eq!(span.resource.get("container.id"), Some(&id));
    // Give the others time to show up, were they traced.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let names: Vec<_> =
        receiver.spans().iter().filter_map(|s| s.resource.get("service.name").cloned()).collect();
    assert!(names.iter().all(|n| n == "inside"), "{names:?}");
    sonde.stop_cleanly();
    drop((inside, excluded, outside));
}

#[tokio::test(flavor = "multi_thread")]
async fn sonde_never_traces_itself() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server(&[("OTEL_SERVICE_NAME", "not-sonde")]);
    // No selection but this test process (which serves the receiver): sonde's own OTLP/HTTP
    // requests are HTTP/1.1 a tracer could take for a client's.
    let endpoint = receiver.http_endpoint();
    let me = std::process::id().to_string();
    // `--sdk-processes trace`: otherwise a process POSTing /v1/traces is left to "its SDK", which
    // would hide sonde's own requests even if sonde did trace itself.
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--exclude-pid",
        &me,
        "--sdk-processes",
        "trace",
    ]);
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &server.url("/index.html")]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let port = server.port.to_string();
    receiver.wait_for(|s| s.iter().any(|s| s.attr("server.port").as_deref() == Some(&port)), WAIT).await;
    // Several export rounds, each an HTTP request of sonde's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sonde_pid = sonde.pid().to_string();
    let spans = receiver.spans();
    assert!(spans.iter().any(|s| s.attr("server.port").as_deref() == Some(&port)), "the server was traced");
    let own: Vec<_> = spans.iter().filter(|s| s.resource.get("process.pid") == Some(&sonde_pid)).collect();
    assert!(own.is_empty(), "sonde traced its own requests: {own:#?}");
    sonde.stop_cleanly();
}
