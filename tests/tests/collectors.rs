//! Privileged: sonde and the collectors on its host. A collector on the same node (the usual
//! agent-mode DaemonSet) is a process like any other, and sonde traces it: its own exports must
//! make no span and no metric there — or each export makes a span that the next export carries, for
//! ever — while the collector's other traffic, and a proxy that forwards OTLP, stay traced.

use std::{net::SocketAddr, time::Duration};

use sonde_tests::{
    bpf_maps,
    harness::{self, Sonde, TempDir, curl, free_port},
    prometheus,
    receiver::{ReceivedSpan, Receiver},
};

const WAIT: Duration = Duration::from_secs(20);
/// Export rounds to let pass: traces leave within a second, metrics every `--metrics-interval`.
const ROUNDS: Duration = Duration::from_secs(4);

/// curl POSTs an empty OTLP/HTTP export (a valid, empty protobuf message) to `url`; returns the
/// status code it got.
fn post_empty_export(url: &str) -> String {
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/x-protobuf",
        "--data-binary",
        "",
        url,
    ]);
    out.trim().to_owned()
}

fn is_otlp_path(path: Option<&str>) -> bool {
    path.is_some_and(|p| p.ends_with("/v1/traces") || p.ends_with("/v1/metrics"))
}

/// sonde exports traces and metrics over OTLP/HTTP to `receiver`, which runs in this (traced)
/// process: none of sonde's requests may come back as a span or a RED series, whatever the
/// receiver's address; a request to the same receiver from another process still does.
async fn exports_leave_no_trace_at(receiver: Receiver) {
    let server = harness::python_http_server(&[("OTEL_SERVICE_NAME", "storefront")]);
    let me = std::process::id().to_string();
    let server_pid = server.pid().to_string();
    // `--sdk-processes trace`: nothing here may be skipped as "left to its own SDK".
    let (mut sonde, prom) = Sonde::start_exporting(
        &receiver.http_endpoint(),
        "http/protobuf",
        &["--pid", &me, "--pid", &server_pid, "--metrics-interval", "1s", "--sdk-processes", "trace"],
    );
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &server.url("/index.html")]);
    }
    // A client of the receiver that is not sonde: its request is the receiver's to trace.
    assert_eq!(post_empty_export(&receiver.http_traces_url()), "200", "the receiver took curl's export");
    let port = server.port.to_string();
    receiver.wait_for(|s| s.iter().any(|s| s.attr("server.port").as_deref() == Some(&port)), WAIT).await;
    tokio::time::sleep(ROUNDS).await;

    let spans = receiver.spans();
    let received: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind_name() == "SERVER" && s.resource.get("process.pid") == Some(&me))
        .collect();
    let paths: Vec<Option<String>> = received.iter().map(|s| s.attr("url.path")).collect();
    assert_eq!(
        paths.iter().filter(|p| is_otlp_path(p.as_deref())).count(),
        1,
        "exactly one export reached the receiver as a span, curl's: {paths:?}"
    );
    let series = receiver.latest("http.server.request.duration");
    let otlp_series: Vec<_> = series
        .iter()
        .filter(|p| p.resource.get("process.pid") == Some(&me) && is_otlp_path(p.attr("http.route")))
        .collect();
    assert!(otlp_series.len() <= 1, "RED series of sonde's exports: {otlp_series:#?}");
    let counts: f64 = otlp_series.iter().map(|p| p.count as f64).sum();
    assert!(counts <= 1.0, "sonde's exports were counted as requests: {otlp_series:#?}");
    // The same at the Prometheus endpoint.
    let (_, _, body) = prometheus::scrape(prom).expect("scraping sonde");
    let samples = prometheus::parse_exposition(&body).expect("exposition format");
    let counted: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "http_server_request_duration_seconds_count" && is_otlp_path(s.label("http_route"))
        })
        .map(|s| s.value)
        .sum();
    assert!(counted <= 1.0, "Prometheus counts sonde's exports as requests ({counted})");
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_to_a_traced_collector_over_ipv4_make_no_spans_or_metrics() {
    exports_leave_no_trace_at(Receiver::start().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_to_a_traced_collector_over_ipv6_make_no_spans_or_metrics() {
    let any = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    exports_leave_no_trace_at(Receiver::start_on(any, any).await.unwrap()).await;
}

/// nginx in front of a collector forwards `POST /v1/traces`: it receives them too, so it is not a
/// process with an SDK of its own, and its other requests keep their spans.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_in_front_of_a_collector_keeps_its_spans() {
    let receiver = Receiver::start().await.unwrap();
    let upstream = receiver.http_addr();
    let dir = TempDir::new("otlp-proxy");
    let port = free_port();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port};
    location /v1/ {{ proxy_pass http://{upstream}; proxy_http_version 1.1; }}
    location = /hello {{ return 200 'hello'; }}
  }}
}}
",
        d = dir.path.display()
    );
    let nginx = harness::start_nginx(dir, port, &conf);
    let pid = nginx.pid().to_string();
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &receiver.grpc_endpoint(),
        "--otlp-protocol",
        "grpc",
        "--pid",
        &pid,
        "--print",
        "none",
    ]);
    let posted = post_empty_export(&format!("http://127.0.0.1:{port}/v1/traces"));
    assert_eq!(posted, "200", "nginx forwarded the export");
    // Wait until the forwarded export was seen (nginx's CLIENT span of it)…
    let forwarded = |s: &ReceivedSpan| {
        s.kind_name() == "CLIENT" && s.attr("url.full").is_some_and(|u| u.ends_with("/v1/traces"))
    };
    receiver.wait_for(|s| s.iter().any(forwarded), WAIT).await;
    // …then ask nginx for something else: it is still traced.
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/hello")]);
    let hello =
        |s: &ReceivedSpan| s.kind_name() == "SERVER" && s.attr("url.path").as_deref() == Some("/hello");
    let spans = receiver.wait_for(|s| s.iter().any(hello), WAIT).await;
    assert!(spans.iter().any(hello), "nginx was taken for a process with its own SDK:\n{}", sonde.stderr());
    sonde.stop_cleanly();
    drop(nginx);
}

/// sonde knows its own sockets by their kernel address. If the close of one goes unseen (a
/// tracepoint's program is skipped when it fires in a softirq that interrupted another of sonde's
/// programs), the address can next belong to a socket of another process. Such a stale entry is
/// planted here for the test's own socket, with the endpoint the dead socket had: the socket's
/// connect must clear both, and its request to a traced server must keep its span.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_reusing_the_address_of_an_own_socket_whose_close_went_unseen_is_traced() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server(&[]);
    let server_pid = server.pid().to_string();
    let (mut sonde, _) = Sonde::start_exporting(
        &receiver.http_endpoint(),
        "http/protobuf",
        &["--pid", &server_pid, "--sdk-processes", "trace"],
    );
    let maps = bpf_maps::maps_of(sonde.pid());
    let (socks, endpoints) = (maps["AGENT_SOCKS"], maps["AGENT_ENDPOINTS"]);

    // A socket connected once, so that the kernel lists its address, then disconnected: the same
    // kernel socket connects again below.
    let socket = RawSocket::new();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.connect(elsewhere.local_addr().unwrap().port());
    let address = socket.kernel_address();
    socket.disconnect();
    // What a missed close leaves: the dead socket's entry, established, and its endpoint —
    // `Endpoint` is the IPv4-mapped address, its port, the port it connected to, in host order.
    let dead_endpoint: Vec<u8> = [&[0u8; 10][..], &[0xff, 0xff, 127, 0, 0, 1], &45_678u16.to_ne_bytes()]
        .concat()
        .into_iter()
        .chain(server.port.to_ne_bytes())
        .collect();
    bpf_maps::update(socks, &address.to_ne_bytes(), &dead_endpoint);
    bpf_maps::update(endpoints, &dead_endpoint, &[1]);

    socket.connect(server.port);
    assert!(!bpf_maps::holds(socks, &address.to_ne_bytes()), "the reused address is still sonde's");
    assert!(!bpf_maps::holds(endpoints, &dead_endpoint), "the dead socket's endpoint is still filed");
    socket.send(b"GET /reused HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    socket.read_to_end();
    let is_the_request = |s: &ReceivedSpan| s.attr("url.path").as_deref() == Some("/reused");
    let spans = receiver.wait_for(|s| s.iter().any(is_the_request), WAIT).await;
    assert!(
        spans.iter().any(is_the_request),
        "no span for the request on the reused socket: {spans:#?}\n{}",
        sonde.stderr()
    );
    sonde.stop_cleanly();
}

/// A TCP socket driven through libc, because the standard library cannot disconnect one and
/// connect it again (`connect` to `AF_UNSPEC`).
struct RawSocket(libc::c_int);

impl RawSocket {
    fn new() -> Self {
        // SAFETY: a plain socket(2) call; the fd is owned by the value and closed at its drop.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        Self(fd)
    }

    fn connect(&self, port: u16) {
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
            sin_zero: [0; 8],
        };
        // SAFETY: `to` is a valid sockaddr_in of the size given.
        let r = unsafe {
            libc::connect(self.0, (&raw const to).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
        };
        assert_eq!(r, 0, "connect to port {port}: {}", std::io::Error::last_os_error());
    }

    /// connect(2) to `AF_UNSPEC`: the kernel closes the connection and keeps the socket.
    fn disconnect(&self) {
        // SAFETY: an all-zero sockaddr is a valid value; its family is set below.
        let mut unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        // SAFETY: `unspec` is a valid sockaddr of the size given.
        let r = unsafe {
            libc::connect(self.0, &raw const unspec, size_of::<libc::sockaddr>() as libc::socklen_t)
        };
        assert_eq!(r, 0, "disconnect: {}", std::io::Error::last_os_error());
    }

    fn local_port(&self) -> u16 {
        // SAFETY: an all-zero sockaddr_in is a valid value for getsockname to fill.
        let mut me: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `me` and `len` describe a buffer of the size given.
        let r = unsafe { libc::getsockname(self.0, (&raw mut me).cast(), &raw mut len) };
        assert_eq!(r, 0, "getsockname: {}", std::io::Error::last_os_error());
        u16::from_be(me.sin_port)
    }

    /// The kernel address of the socket (what sonde keys its own sockets by), from /proc/net/tcp,
    /// which shows it to root only while `kernel.kptr_restrict` is 1.
    fn kernel_address(&self) -> u64 {
        const RESTRICT: &str = "/proc/sys/kernel/kptr_restrict";
        let before = std::fs::read_to_string(RESTRICT).unwrap();
        std::fs::write(RESTRICT, "1").unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp");
        std::fs::write(RESTRICT, before.trim()).unwrap();
        let local = format!(":{:04X}", self.local_port());
        let line = table
            .unwrap()
            .lines()
            .find(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&local)))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no socket on local port {local} in /proc/net/tcp"));
        let pointer = line.split_whitespace().nth(11).expect("a socket address column");
        u64::from_str_radix(pointer, 16).expect("a hexadecimal socket address")
    }

    fn send(&self, bytes: &[u8]) {
        // SAFETY: `bytes` is valid for its length.
        let n = unsafe { libc::write(self.0, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize, "write: {}", std::io::Error::last_os_error());
    }

    fn read_to_end(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is this value's own.
        unsafe { libc::close(self.0) };
    }
}
