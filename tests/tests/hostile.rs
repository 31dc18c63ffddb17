//! Privileged: hostile input on a traced port — garbage, TLS on plaintext, HTTP/0.9, a 1 MiB
//! header line, 100k headers, a broken chunk size — does not crash sonde, invents no span, and
//! leaves the other connections traced.

use std::{io::Write as _, net::TcpStream, time::Duration};

use sonde_tests::{
    harness::{self, Sonde, curl, raw_exchange, read_ok_reply},
    receiver::Receiver,
};

/// sonde's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_invents_no_span_and_breaks_nothing() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "hostile")]);
    let endpoint = receiver.grpc_endpoint();
    let pid = app.pid().to_string();
    let mut sonde = Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid]);
    let port = app.port;

    // A good keep-alive connection, open across the whole attack.
    let mut good = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(good, "GET /good/before HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
    read_ok_reply(&mut good);

    let mut random = vec![0u8; 64 * 1024];
    let mut x: u32 = 0x9e37_79b9;
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let client_hello: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03GET / HTTP/1.1\r\n\r\n";
    let long_line =
        [b"GET /long HTTP/1.1\r\nX-Long: ".as_slice(), &vec![b'a'; 1 << 20], b"\r\n\r\n"].concat();
    let many_headers =
        [b"GET /many HTTP/1.1\r\n".as_slice(), &b"X-H: v\r\n".repeat(100_000), b"\r\n"].concat();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("TLS on plaintext", client_hello.to_vec()),
        ("HTTP/0.9", b"GET /zero-nine\r\n".to_vec()),
        ("1 MiB header line", long_line),
        ("100k headers", many_headers),
        ("broken chunk size", b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()),
        ("response bytes sent as a request", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in &inputs {
        let bytes = bytes.clone();
        let answer =
            tokio::task::spawn_blocking(move || raw_exchange(port, &[&bytes], Duration::from_secs(2)))
                .await
                .unwrap();
        eprintln!("{what}: the server answered {} bytes", answer.len());
    }

    write!(good, "GET /good/after HTTP/1.1\r\nHost: app\r\n\r\n").unwrap();
    read_ok_reply(&mut good);
    curl(&["-o", "/dev/null", &app.url("/good/new-connection")]);

    receiver
        .wait_for(
            |s| s.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/good/"))).count() >= 3,
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = receiver.spans();
    let paths: Vec<_> = spans.iter().map(|s| s.attr("url.path").unwrap_or_default()).collect();
    for good in ["/good/before", "/good/after", "/good/new-connection"] {
        assert!(paths.iter().any(|p| p == good), "{good} traced: {paths:?}");
    }
    // Only real requests that got a real response may have spans: the three good ones, and the
    // heads the server itself answered (the 1 MiB line, 100k headers, the broken chunked POST).
    let allowed = ["/good/before", "/good/after", "/good/new-connection", "/long", "/many", "/upload"];
    let invented: Vec<_> = paths.iter().filter(|p| !allowed.contains(&p.as_str())).collect();
    assert!(invented.is_empty(), "spans invented from hostile bytes: {invented:?}\n{spans:#?}");
    let rss = rss_kib(sonde.pid());
    assert!(rss < 200 * 1024, "sonde's RSS after the attack: {rss} KiB");
    sonde.stop_cleanly();
}
