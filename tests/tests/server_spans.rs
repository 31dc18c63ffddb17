//! Privileged: the real sonde binary traces real servers hit by real clients, and the spans are
//! checked at a real OTLP receiver. Needs root and a built binary (`cargo xtask test` does both).

use std::time::Duration;

use sonde_tests::{
    harness::{self, Sonde, curl, raw_exchange, read_ok_reply},
    receiver::{ReceivedSpan, Receiver, Transport},
};

const WAIT: Duration = Duration::from_secs(20);

/// sonde, exporting over gRPC to `receiver`, limited to connections on `port`.
fn sonde_grpc(receiver: &Receiver, port: u16, extra: &[&str]) -> Sonde {
    let endpoint = receiver.grpc_endpoint();
    let port = port.to_string();
    let mut args = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--port", &port];
    args.extend_from_slice(extra);
    Sonde::start(&args)
}

fn server_spans(spans: &[ReceivedSpan], port: u16) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.kind_name() == "SERVER" && s.attr("server.port").as_deref() == Some(&port.to_string()))
        .cloned()
        .collect()
}

/// Waits until `n` server spans for `port` arrived, then a little longer to catch extras.
async fn expect_spans(receiver: &Receiver, port: u16, n: usize) -> Vec<ReceivedSpan> {
    receiver.wait_for(|s| server_spans(s, port).len() >= n, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = server_spans(&receiver.spans(), port);
    assert_eq!(spans.len(), n, "expected exactly {n} server spans on port {port}, got {spans:#?}");
    spans
}

fn stop_cleanly(mut sonde: Sonde) {
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn python_http_server_gets_one_span_per_request() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server(&[("OTEL_SERVICE_NAME", "static-files")]);
    // Only the server: curl's CLIENT span would otherwise be the parent (see tests/traces.rs).
    let pid = server.pid().to_string();
    let sonde = sonde_grpc(&receiver, server.port, &["--pid", &pid]);
    let base = format!("http://127.0.0.1:{}", server.port);
    curl(&[&format!("{base}/index.html?user=secret")]);
    curl(&["-o", "/dev/null", &format!("{base}/missing")]);

    let mut spans = expect_spans(&receiver, server.port, 2).await;
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    let (ok, missing) = (&spans[0], &spans[1]);
    assert_eq!(ok.span.name, "GET");
    assert_eq!(ok.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(ok.attr("url.path").as_deref(), Some("/index.html"));
    assert_eq!(ok.attr("url.query"), None, "query strings are not exported by default");
    assert_eq!(ok.attr("url.scheme").as_deref(), Some("http"));
    assert_eq!(ok.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(ok.attr("server.port"), Some(server.port.to_string()));
    assert_eq!(ok.attr("client.address").as_deref(), Some("127.0.0.1"));
    assert!(ok.attr("user_agent.original").is_some_and(|ua| ua.starts_with("curl/")));
    assert_eq!(ok.resource.get("service.name").map(String::as_str), Some("static-files"));
    assert_eq!(ok.resource.get("process.pid"), Some(&server.pid().to_string()));
    assert!(ok.resource.get("process.executable.name").is_some_and(|n| n.starts_with("python3")));
    assert!(ok.resource.get("process.command_line").is_some_and(|c| c.contains("http.server")));
    assert_eq!(ok.resource.get("telemetry.sdk.name").map(String::as_str), Some("sonde"));
    assert!(ok.resource.contains_key("host.name"));
    assert_eq!(ok.parent_span_id_hex(), None);
    assert_eq!(ok.via, Transport::Grpc);
    assert!(ok.duration() > Duration::ZERO && ok.duration() < Duration::from_secs(5));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(now.abs_diff(ok.span.start_time_unix_nano) < 60_000_000_000, "wall-clock timestamps");

    assert_eq!(missing.attr("url.path").as_deref(), Some("/missing"));
    assert_eq!(missing.attr("http.response.status_code").as_deref(), Some("404"));
    assert_eq!(missing.span.status.as_ref().map(|s| s.code).unwrap_or(0), 0, "404 is not a server error");
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_over_http_protobuf_and_5xx_is_an_error() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::nginx();
    let endpoint = receiver.http_endpoint();
    let port = server.port.to_string();
    let sonde =
        Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "http/protobuf", "--port", &port]);
    let base = format!("http://127.0.0.1:{}", server.port);
    curl(&[&format!("{base}/index.html")]);
    curl(&["-o", "/dev/null", &format!("{base}/fail")]);

    let mut spans = expect_spans(&receiver, server.port, 2).await;
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/index.html"));
    assert_eq!(spans[0].attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(spans[0].resource.get("service.name").map(String::as_str), Some("nginx"));
    assert_eq!(spans[0].via, Transport::Http);
    assert_eq!(spans[1].attr("http.response.status_code").as_deref(), Some("500"));
    assert_eq!(spans[1].span.status.as_ref().map(|s| s.code), Some(2), "5xx → status ERROR");
    assert_eq!(spans[1].attr("error.type").as_deref(), Some("500"));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_parents_the_span_and_invalid_ones_start_new_traces() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    // Only the server: curl's CLIENT span would otherwise parent the headerless and invalid ones.
    let pid = server.pid().to_string();
    let sonde = sonde_grpc(&receiver, server.port, &["--pid", &pid]);
    let url = format!("http://127.0.0.1:{}/", server.port);
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    curl(&["-H", &format!("traceparent: {valid}"), "-H", "tracestate: vendor=abc", &format!("{url}valid")]);
    let invalid = [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",    // wrong length
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", // bad hex
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // uppercase
    ];
    for (i, tp) in invalid.iter().enumerate() {
        curl(&["-H", &format!("traceparent: {tp}"), &format!("{url}invalid{i}")]);
    }
    let spans = expect_spans(&receiver, server.port, 1 + invalid.len()).await;
    let child = spans.iter().find(|s| s.attr("url.path").as_deref() == Some("/valid")).unwrap();
    assert_eq!(child.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(child.parent_span_id_hex().as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(child.span.trace_state, "vendor=abc");
    for s in spans.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/invalid"))) {
        assert_eq!(s.parent_span_id_hex(), None, "{:?} must be a root", s.attr("url.path"));
        assert_ne!(s.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_and_pipelining() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::nginx();
    // Opt-in attributes: the body size shows the 3 MiB sendfile body was stepped over exactly.
    let sonde = sonde_grpc(&receiver, server.port, &["--opt-in-attributes"]);
    let base = format!("http://127.0.0.1:{}", server.port);
    // curl reuses one connection for several URLs; file bodies go out with sendfile(2), which
    // sonde sees as a byte count, so the next response on the connection still pairs right.
    let urls = ["/a", "/index.html", "/big.bin", "/b", "/index.html"].map(|p| format!("{base}{p}"));
    let mut args: Vec<&str> = urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]).collect();
    args.insert(0, "-sS");
    curl(&args);
    let spans = expect_spans(&receiver, server.port, 5).await;
    let ports: std::collections::HashSet<_> = spans.iter().map(|s| s.attr("network.peer.port")).collect();
    assert_eq!(ports.len(), 1, "one keep-alive connection: {spans:#?}");
    let mut by_start = spans.clone();
    by_start.sort_by_key(|s| s.span.start_time_unix_nano);
    let seen: Vec<_> = by_start
        .iter()
        .map(|s| (s.attr("url.path").unwrap(), s.attr("http.response.status_code").unwrap()))
        .collect();
    let expected =
        [("/a", "404"), ("/index.html", "200"), ("/big.bin", "200"), ("/b", "404"), ("/index.html", "200")];
    assert_eq!(seen, expected.map(|(p, c)| (p.to_string(), c.to_string())));
    let big = by_start.iter().find(|s| s.attr("url.path").as_deref() == Some("/big.bin")).unwrap();
    assert_eq!(big.attr("http.response.body.size").as_deref(), Some("3145728"));

    // Three requests in one write: nginx answers them in order on the same connection.
    let pipelined = b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(server.port, &[pipelined], Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&reply).matches("HTTP/1.1 ").count(), 3);
    let spans = expect_spans(&receiver, server.port, 8).await;
    let mut paths: Vec<_> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    paths.sort();
    let expected = ["/a", "/b", "/big.bin", "/index.html", "/index.html", "/index.html", "/p1", "/p2"];
    assert_eq!(paths, expected);
    let p: Vec<_> =
        spans.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/p"))).collect();
    assert!(p.iter().all(|s| s.attr("http.response.status_code").as_deref() == Some("404")));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_megabyte_upload_and_byte_by_byte_headers() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    let sonde = sonde_grpc(&receiver, server.port, &[]);
    let dir = harness::TempDir::new("upload");
    let file = dir.path.join("body");
    std::fs::write(&file, vec![b'x'; 1 << 20]).unwrap();
    let reply = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://127.0.0.1:{}/upload", server.port),
    ]);
    assert_eq!(reply.trim(), "received 1048576");

    // Every byte of the request its own write (and its own read on the server).
    let request =
        b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bytewise\r\nConnection: close\r\n\r\n";
    let parts: Vec<&[u8]> = request.chunks(1).collect();
    let reply = raw_exchange(server.port, &parts, Duration::from_secs(5));
    assert!(reply.starts_with(b"HTTP/1.1 200"));

    let spans = expect_spans(&receiver, server.port, 2).await;
    let upload = spans.iter().find(|s| s.attr("url.path").as_deref() == Some("/upload")).unwrap();
    assert_eq!(upload.attr("http.request.method").as_deref(), Some("POST"));
    assert_eq!(upload.attr("http.response.status_code").as_deref(), Some("200"));
    let slow = spans.iter().find(|s| s.attr("url.path").as_deref() == Some("/slow")).unwrap();
    assert_eq!(slow.attr("user_agent.original").as_deref(), Some("bytewise"));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_longer_than_the_capture_still_give_a_span() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    let sonde = sonde_grpc(&receiver, server.port, &["--capture-bytes", "512"]);
    let filler = "v".repeat(2000);
    let mut args: Vec<String> =
        (0..4).flat_map(|i| ["-H".to_string(), format!("X-Filler-{i}: {filler}")]).collect();
    args.push(format!("http://127.0.0.1:{}/big-headers", server.port));
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let spans = expect_spans(&receiver, server.port, 1).await;
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/big-headers"));
    assert_eq!(spans[0].attr("http.response.status_code").as_deref(), Some("200"));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_tls_bytes_make_no_span_and_no_crash() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::nginx();
    let sonde = sonde_grpc(&receiver, server.port, &[]);
    let mut noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    noise[0] = 0xfe;
    raw_exchange(server.port, &[&noise], Duration::from_secs(2));
    // The start of a TLS 1.2/1.3 ClientHello.
    let client_hello =
        [0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03, 0x7a, 0x11, 0x22, 0x33];
    raw_exchange(server.port, &[&client_hello], Duration::from_secs(2));
    raw_exchange(server.port, &[b"GET /\r\n"], Duration::from_secs(2)); // HTTP/0.9
    // sonde is still alive and still tracing: a real request afterwards gets its span.
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{}/after-garbage", server.port)]);
    let spans = expect_spans(&receiver, server.port, 1).await;
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/after-garbage"));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_opened_before_sonde_started() {
    use std::io::Write;
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    conn.write_all(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_ok_reply(&mut conn);

    let sonde = sonde_grpc(&receiver, server.port, &[]);
    conn.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_ok_reply(&mut conn);
    let spans = expect_spans(&receiver, server.port, 1).await;
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/after"));
    assert_eq!(spans[0].attr("http.response.status_code").as_deref(), Some("200"));
    drop(conn);
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_syscall_tracepoints_work_as_the_fallback() {
    per_syscall_hooks_trace_from_the_next_read("tracepoints", "hooks=syscall tracepoints kernel=").await;
}

/// The hook set of kernels before 6.3: no socket tracepoint, the socket behind each fd found in the
/// task's fd table. Files, pipes and UDP must not be taken for TCP (the python app reads files).
#[tokio::test(flavor = "multi_thread")]
async fn the_fd_table_walk_finds_the_sockets_without_socket_tracepoints() {
    per_syscall_hooks_trace_from_the_next_read("fd-walk", "hooks=syscall tracepoints with the fd-table walk")
        .await;
}

/// With `--hooks HOOKS` (entry and exit tracepoints of each syscall), a connection whose server
/// was already blocked in read() when sonde attached is traced from its next read on.
async fn per_syscall_hooks_trace_from_the_next_read(hooks: &str, log: &str) {
    use std::io::Write;
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    conn.write_all(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_ok_reply(&mut conn);

    let sonde = sonde_grpc(&receiver, server.port, &["--hooks", hooks]);
    assert!(sonde.stderr().contains(log), "{}", sonde.stderr());
    // The server thread was already blocked in read() when sonde attached: with per-syscall
    // tracepoints that read's arguments are unknown, so /lost cannot be seen; /seen can.
    for path in ["/lost", "/seen"] {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        read_ok_reply(&mut conn);
    }
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{}/fresh", server.port)]);
    let spans = expect_spans(&receiver, server.port, 2).await;
    let mut paths: Vec<_> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    paths.sort();
    assert_eq!(paths, ["/fresh", "/seen"]);
    drop(conn);
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_peers_have_their_addresses() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_http_server_on("::1", &[]);
    let sonde = sonde_grpc(&receiver, server.port, &[]);
    curl(&["-g", &format!("http://[::1]:{}/index.html", server.port)]);
    let spans = expect_spans(&receiver, server.port, 1).await;
    assert_eq!(spans[0].attr("client.address").as_deref(), Some("::1"));
    assert_eq!(spans[0].attr("network.peer.address").as_deref(), Some("::1"));
    assert_eq!(spans[0].attr("server.address").as_deref(), Some("::1"), "from the Host header [::1]:port");
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_selection_traces_only_the_chosen_process() {
    let receiver = Receiver::start().await.unwrap();
    let chosen = harness::python_http_server(&[("OTEL_SERVICE_NAME", "chosen")]);
    let other = harness::python_http_server(&[("OTEL_SERVICE_NAME", "other")]);
    let endpoint = receiver.grpc_endpoint();
    let pid = chosen.pid().to_string();
    // No --port: the kernel's pid bitmap alone decides.
    let sonde = Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid]);
    for _ in 0..3 {
        curl(&[&format!("http://127.0.0.1:{}/index.html", other.port)]);
        curl(&[&format!("http://127.0.0.1:{}/index.html", chosen.port)]);
    }
    let spans = expect_spans(&receiver, chosen.port, 3).await;
    assert!(spans.iter().all(|s| s.resource.get("service.name").map(String::as_str) == Some("chosen")));
    let all = receiver.spans();
    assert!(
        all.iter().all(|s| s.resource.get("process.pid") == Some(&pid)),
        "only the selected process is traced: {all:#?}"
    );
    stop_cleanly(sonde);
}
