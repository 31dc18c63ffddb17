//! Privileged: HTTPS. Real TLS servers and clients (Python's `ssl`, nginx and curl, all through
//! the system's OpenSSL), the real sonde with its OpenSSL hooks, spans checked at a real OTLP
//! receiver.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use sonde_tests::{
    harness::{Sonde, TempDir, curl, python_app},
    receiver::{ReceivedSpan, Receiver},
    tls::{Certificate, https_url, nginx_tls, private_libssl, python_tls_app, python_tls_app_with},
};

const WAIT: Duration = Duration::from_secs(20);

fn sonde_for_port(receiver: &Receiver, port: u16, extra: &[&str]) -> Sonde {
    let endpoint = receiver.grpc_endpoint();
    let port = port.to_string();
    let mut args = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--port", &port];
    args.extend_from_slice(extra);
    Sonde::start(&args)
}

fn of_kind(spans: &[ReceivedSpan], kind: &str) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.kind_name() == kind).cloned().collect()
}

/// Waits until `n` spans of `kind` arrived, then a little longer to catch extras; exactly `n`.
async fn expect(receiver: &Receiver, kind: &str, n: usize) -> Vec<ReceivedSpan> {
    receiver.wait_for(|s| of_kind(s, kind).len() >= n, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut spans = of_kind(&receiver.spans(), kind);
    assert_eq!(spans.len(), n, "expected exactly {n} {kind} spans, got {spans:#?}");
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    spans
}

fn stop_cleanly(mut sonde: Sonde) -> String {
    sonde.stop_cleanly();
    sonde.stderr()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_https_server_and_curl_get_server_and_client_spans() {
    let log = server_and_client_spans(&[]).await;
    // Where the machine code has the known shape (Debian's x86_64 build does), the cheaper
    // internal functions serve; elsewhere the exported ones.
    let debian_12 = std::fs::read_to_string("/etc/debian_version").is_ok_and(|v| v.starts_with("12."));
    if cfg!(target_arch = "x86_64") && debian_12 {
        assert!(log.contains("data_hooks=\"internal\""), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exported_functions_serve_where_the_internal_ones_are_not_found() {
    let log = server_and_client_spans(&["--tls-exported-hooks"]).await;
    assert!(log.contains("data_hooks=\"exported\""), "{log}");
}

/// curl → Python's `ssl` server: one SERVER and one CLIENT span, linked. Returns sonde's log.
async fn server_and_client_spans(extra: &[&str]) -> String {
    let receiver = Receiver::start().await.unwrap();
    let server = python_tls_app(&[("OTEL_SERVICE_NAME", "secure-app")]);
    let sonde = sonde_for_port(&receiver, server.port, extra);
    let url = https_url(server.port, "/status/201?token=secret");
    assert_eq!(curl(&["-k", &url]), "status 201\n");

    let server_span = expect(&receiver, "SERVER", 1).await.remove(0);
    assert_eq!(server_span.attr("url.scheme").as_deref(), Some("https"));
    assert_eq!(server_span.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(server_span.attr("url.path").as_deref(), Some("/status/201"));
    assert_eq!(server_span.attr("url.query"), None);
    assert_eq!(server_span.attr("http.response.status_code").as_deref(), Some("201"));
    assert_eq!(server_span.attr("server.port"), Some(server.port.to_string()));
    assert!(server_span.attr("user_agent.original").is_some_and(|ua| ua.starts_with("curl/")));
    assert_eq!(server_span.resource.get("service.name").map(String::as_str), Some("secure-app"));

    let client_span = expect(&receiver, "CLIENT", 1).await.remove(0);
    assert_eq!(client_span.resource.get("process.executable.name").map(String::as_str), Some("curl"));
    assert_eq!(client_span.attr("url.full"), Some(https_url(server.port, "/status/201")));
    assert_eq!(client_span.attr("http.response.status_code").as_deref(), Some("201"));
    assert_eq!(client_span.attr("server.port"), Some(server.port.to_string()));
    // The same connection seen from both ends: linked as plaintext ones are.
    assert_eq!(server_span.trace_id_hex(), client_span.trace_id_hex());
    assert_eq!(server_span.parent_span_id_hex(), Some(client_span.span_id_hex()));
    let log = stop_cleanly(sonde);
    assert!(log.contains("TLS library hooked"), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_with_tls_and_keep_alive_gives_one_span_per_request() {
    let receiver = Receiver::start().await.unwrap();
    let server = nginx_tls();
    let pid = server.pid().to_string();
    let sonde = sonde_for_port(&receiver, server.port, &["--pid", &pid]);
    let urls: Vec<String> = (1..=5).map(|i| https_url(server.port, &format!("/keep/{i}"))).collect();
    // curl sends the five requests on one connection, one after the other.
    let mut args = vec!["-k", "-s"];
    args.extend(urls.iter().map(String::as_str));
    assert_eq!(curl(&args), "ok\n".repeat(5));

    let spans = expect(&receiver, "SERVER", 5).await;
    let paths: Vec<_> = spans.iter().map(|s| s.attr("url.path").unwrap_or_default()).collect();
    assert_eq!(paths, ["/keep/1", "/keep/2", "/keep/3", "/keep/4", "/keep/5"]);
    for span in &spans {
        assert_eq!(span.attr("url.scheme").as_deref(), Some("https"));
        assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(span.resource.get("service.name").map(String::as_str), Some("nginx"));
    }
    let ports: std::collections::HashSet<_> = spans.iter().map(|s| s.attr("network.peer.port")).collect();
    assert_eq!(ports.len(), 1, "one keep-alive connection: {ports:?}");
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_server_started_after_sonde_with_a_library_of_its_own_is_traced() {
    let receiver = Receiver::start().await.unwrap();
    let lib_dir = TempDir::new("private-libssl");
    let library = private_libssl(&lib_dir.path);
    // Any port: the server does not exist yet. Its pid is not known either, so no selection.
    let sonde = Sonde::start(&["--otlp-endpoint", &receiver.grpc_endpoint(), "--otlp-protocol", "grpc"]);
    assert!(!sonde.stderr().contains(&*library.to_string_lossy()), "the copy is new to sonde");

    let lib_dir_text = lib_dir.path.to_string_lossy().into_owned();
    let server = python_tls_app(&[("LD_LIBRARY_PATH", &lib_dir_text)]);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(maps.contains(&*library.to_string_lossy()), "the server loaded the copy:\n{maps}");
    // sonde saw the library being mapped and hooked it (the log line is the proof; waiting for it
    // keeps the test from racing the hook with the first request).
    let deadline = std::time::Instant::now() + WAIT;
    while !sonde.stderr().contains(&format!("library=\"{}\"", library.display())) {
        assert!(std::time::Instant::now() < deadline, "the new library was not hooked:\n{}", sonde.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    curl(&["-k", "-o", "/dev/null", &https_url(server.port, "/late")]);

    receiver
        .wait_for(
            |spans| {
                spans
                    .iter()
                    .any(|s| s.kind_name() == "SERVER" && s.attr("url.path").as_deref() == Some("/late"))
            },
            WAIT,
        )
        .await;
    let spans = receiver.spans();
    let server_span =
        spans.iter().find(|s| s.kind_name() == "SERVER" && s.attr("url.path").as_deref() == Some("/late"));
    let server_span = server_span.unwrap_or_else(|| panic!("no span for /late: {spans:#?}"));
    assert_eq!(server_span.attr("url.scheme").as_deref(), Some("https"));
    assert_eq!(server_span.resource.get("process.pid"), Some(&server.pid().to_string()));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traceparent_inside_tls_parents_the_server_span() {
    let receiver = Receiver::start().await.unwrap();
    let server = python_tls_app(&[]);
    let pid = server.pid().to_string();
    let sonde = sonde_for_port(&receiver, server.port, &["--pid", &pid]);
    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let header = format!("traceparent: 00-{trace_id}-{parent_id}-01");
    curl(&["-k", "-o", "/dev/null", "-H", &header, &https_url(server.port, "/traced")]);

    let span = expect(&receiver, "SERVER", 1).await.remove(0);
    assert_eq!(span.trace_id_hex(), trace_id);
    assert_eq!(span.parent_span_id_hex().as_deref(), Some(parent_id));
    assert_eq!(span.attr("url.scheme").as_deref(), Some("https"));
    stop_cleanly(sonde);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_ciphertext_never_makes_a_span() {
    // With the hooks off, sonde sees only the ciphertext of the HTTPS connections: it must not be
    // parsed into anything, and the service must not notice. A plaintext request in the same run
    // shows that sonde was tracing meanwhile.
    let receiver = Receiver::start().await.unwrap();
    let server = python_tls_app(&[]);
    let plain = python_app(&[]);
    let plain_port = plain.port.to_string();
    let sonde = sonde_for_port(&receiver, server.port, &["--port", &plain_port, "--tls", "off"]);
    for status in [200, 201, 404] {
        let reply = curl(&["-k", &https_url(server.port, &format!("/status/{status}"))]);
        assert_eq!(reply, format!("status {status}\n"));
    }
    curl(&["-o", "/dev/null", &plain.url("/plain")]);

    let spans = expect(&receiver, "SERVER", 1).await;
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/plain"));
    assert!(receiver.spans().iter().all(|s| s.attr("server.port") != Some(server.port.to_string())));
    let log = stop_cleanly(sonde);
    assert!(!log.contains("TLS library hooked"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_compiled_into_a_program_is_reported_once_and_gives_no_span() {
    let receiver = Receiver::start().await.unwrap();
    let dir = TempDir::new("rustls");
    let certificate = Certificate::new(&dir.path);
    let server = python_tls_app_with(&certificate, &[]);
    let sonde = sonde_for_port(&receiver, server.port, &[]);
    // Two processes, the first with two connections: one report per process, not per
    // connection. Each stays alive 2 s so that sonde can still read its /proc entry.
    let mut pids = Vec::new();
    for connections in ["2", "1"] {
        let child = Command::new(env!("CARGO_BIN_EXE_rustls-get"))
            .arg(server.port.to_string())
            .arg(&certificate.cert)
            .args(["2000", connections])
            .stdout(Stdio::piped())
            .spawn()
            .expect("running rustls-get");
        pids.push(child.id());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let statuses =
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| *l == "HTTP/1.1 200 OK").count();
        assert_eq!(statuses.to_string(), connections);
    }

    // The server's side uses OpenSSL: its spans are there; the client's TLS is invisible.
    let spans = expect(&receiver, "SERVER", 3).await;
    assert!(spans.iter().all(|s| s.attr("url.path").as_deref() == Some("/from-rustls")));
    assert!(of_kind(&receiver.spans(), "CLIENT").is_empty(), "no span from ciphertext");
    let log = stop_cleanly(sonde);
    let reports: Vec<&str> =
        log.lines().filter(|l| l.contains("speaks TLS through a library sonde cannot hook")).collect();
    assert_eq!(reports.len(), 2, "once per process:\n{log}");
    for (report, pid) in reports.iter().zip(&pids) {
        assert!(report.contains(&format!("pid={pid}")), "{report}");
        assert!(report.contains("rustls-get"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_exclude_opts_out_a_process_or_a_library() {
    // An executable: the kernel ignores the server's TLS calls; curl's are still traced.
    let receiver = Receiver::start().await.unwrap();
    let server = python_tls_app(&[]);
    let sonde = sonde_for_port(&receiver, server.port, &["--tls-exclude", "python3*"]);
    curl(&["-k", "-o", "/dev/null", &https_url(server.port, "/excluded-process")]);
    let client = expect(&receiver, "CLIENT", 1).await.remove(0);
    assert_eq!(client.attr("url.full"), Some(https_url(server.port, "/excluded-process")));
    assert!(of_kind(&receiver.spans(), "SERVER").is_empty(), "{:#?}", receiver.spans());
    let log = stop_cleanly(sonde);
    assert!(log.contains("TLS of this process is not traced (--tls-exclude)"), "{log}");
    assert!(log.contains(&format!("pid={}", server.pid())), "{log}");
    drop(server);

    // A library: a server loading its own copy from an excluded directory is not hooked at all.
    let receiver = Receiver::start().await.unwrap();
    let lib_dir = TempDir::new("excluded-libssl");
    let library = private_libssl(&lib_dir.path);
    let pattern = format!("{}/*", lib_dir.path.display());
    let sonde = Sonde::start(&[
        "--otlp-endpoint",
        &receiver.grpc_endpoint(),
        "--otlp-protocol",
        "grpc",
        "--tls-exclude",
        &pattern,
    ]);
    let lib_dir_text = lib_dir.path.to_string_lossy().into_owned();
    let server = python_tls_app(&[("LD_LIBRARY_PATH", &lib_dir_text)]);
    let deadline = std::time::Instant::now() + WAIT;
    let refused = format!("TLS library not hooked (--tls-exclude) library=\"{}\"", library.display());
    while !sonde.stderr().contains(&refused) {
        assert!(std::time::Instant::now() < deadline, "no exclusion logged:\n{}", sonde.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = https_url(server.port, "/excluded-library");
    curl(&["-k", "-o", "/dev/null", &url]);
    // No selection in this run: other processes' spans may arrive too.
    receiver.wait_for(|spans| spans.iter().any(|s| s.attr("url.full").as_ref() == Some(&url)), WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server_port = server.port.to_string();
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.kind_name() != "SERVER" || s.attr("server.port") != Some(server_port.clone()))
    );
    let log = stop_cleanly(sonde);
    // No selection in this run: only the server's own line matters.
    let about_server = format!("pid={}", server.pid());
    let reports =
        log.lines().filter(|l| l.contains("speaks TLS through a library") && l.contains(&about_server));
    assert_eq!(reports.count(), 0, "excluded on purpose:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_connection_opened_before_sonde_started_is_traced_from_its_next_request() {
    use std::io::{BufRead, BufReader, Write};
    let receiver = Receiver::start().await.unwrap();
    let server = python_tls_app(&[]);
    let mut client = Command::new("python3")
        .arg(sonde_tests::harness::servers_dir().join("tls_client.py"))
        .arg(server.port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting tests/servers/tls_client.py");
    let mut input = client.stdin.take().unwrap();
    let mut output = BufReader::new(client.stdout.take().unwrap());
    let mut get = |path: &str| {
        writeln!(input, "{path}").unwrap();
        let mut status = String::new();
        output.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status:?}");
    };
    get("/before");

    // Handshake and SSL_set_fd are over: the connection is known only from what follows. The
    // server thread sits in SSL_read (in its read syscall) while the hooks are attached, so the
    // return of that one call is not seen: the first request may be lost, never misread.
    let pid = server.pid().to_string();
    let sonde = sonde_for_port(&receiver, server.port, &["--pid", &pid]);
    get("/first-after");
    get("/second-after");
    get("/third-after");
    receiver
        .wait_for(|s| s.iter().any(|s| s.attr("url.path").as_deref() == Some("/third-after")), WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = of_kind(&receiver.spans(), "SERVER");
    let paths: Vec<_> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    assert!(paths.ends_with(&["/second-after".into(), "/third-after".into()]), "{paths:?}");
    assert!(paths.iter().all(|p| p.ends_with("-after")), "{paths:?}");
    for span in &spans {
        assert_eq!(span.attr("url.scheme").as_deref(), Some("https"));
        assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"));
    }
    drop(input);
    let _ = client.wait();
    stop_cleanly(sonde);
}
