//! Privileged: sonde restarted mid-traffic — killed with SIGKILL, stopped with SIGTERM, started
//! again — while requests keep flowing on keep-alive connections it never saw open and on new
//! ones. A new instance joins connections mid-stream: it must not pair a response with the wrong
//! request, nor make a span from half an exchange.

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use sonde_tests::{
    harness::{self, Sonde},
    receiver::Receiver,
};

/// Statuses the requests ask for, in turn; the path says which one the answer must carry.
const CODES: [u16; 5] = [200, 201, 404, 500, 503];

/// Reads one response of app.py (head, then a body of Content-Length bytes); its status.
fn read_response(conn: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut byte).expect("reading a response");
        assert!(n > 0, "the server closed mid-response");
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .expect("app.py sends Content-Length");
    while buf.len() < head_end + length {
        let n = conn.read(&mut byte).expect("reading a body");
        assert!(n > 0, "the server closed mid-body");
        buf.extend_from_slice(&byte[..n]);
    }
    head[9..12].parse().expect("a status code")
}

/// Requests `/status/<code>/<n>` until told to stop, alternating between one keep-alive
/// connection (opened before any sonde runs) and a new connection per request, ~200 a second.
fn traffic(port: u16, stop: Arc<AtomicBool>, sent: Arc<AtomicU32>) {
    let mut keep_alive = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let code = CODES[n as usize % CODES.len()];
        let request = format!("GET /status/{code}/{n} HTTP/1.1\r\nHost: restart\r\n\r\n");
        let status = if n.is_multiple_of(2) {
            keep_alive.write_all(request.as_bytes()).unwrap();
            read_response(&mut keep_alive)
        } else {
            let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
            fresh.write_all(request.as_bytes()).unwrap();
            read_response(&mut fresh)
        };
        assert_eq!(status, code);
        n += 1;
        sent.store(n, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_mid_traffic_make_no_bogus_spans() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "restarted")]);
    let endpoint = receiver.grpc_endpoint();
    let pid = app.pid().to_string();
    let start = || {
        Sonde::start(&[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--pid",
            &pid,
            "--print",
            "none",
        ])
    };

    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let load = {
        let (port, stop, sent) = (app.port, stop.clone(), sent.clone());
        std::thread::spawn(move || traffic(port, stop, sent))
    };
    // Traffic first: the keep-alive connection predates every sonde.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(first); // SIGKILL, mid-request most likely
    let mut second = start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.stop_cleanly(); // SIGTERM
    let mut third = start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.join().expect("every request got the status it asked for");
    let sent = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    third.stop_cleanly();

    let spans = receiver.spans();
    let mut seen = HashSet::new();
    for span in &spans {
        let path = span.attr("url.path").unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        assert!(
            parts.len() == 4 && parts[1] == "status",
            "a span for a request that was never sent: {path}\n{span:#?}"
        );
        let (code, n): (u16, u32) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
        assert!(n < sent, "request {n} was never sent ({sent} were)");
        assert_eq!(
            span.attr("http.response.status_code").as_deref(),
            Some(code.to_string().as_str()),
            "the response paired with {path} is another request's: {span:#?}"
        );
        assert_eq!(span.attr("http.request.method").as_deref(), Some("GET"));
        // Instances never ran side by side: one span per request at most.
        assert!(seen.insert(n), "request {n} has two spans");
    }
    // Each instance traced two seconds of the six, start-up aside.
    eprintln!("{} spans for {sent} requests over three sonde instances", spans.len());
    assert!(spans.len() as u32 >= sent / 4, "{} spans for {sent} requests", spans.len());
    let keep_alive = spans
        .iter()
        .filter(|s| s.attr("url.path").is_some_and(|p| p.ends_with(['0', '2', '4', '6', '8'])))
        .count();
    assert!(keep_alive > 0, "requests on the keep-alive connection that predates sonde are traced too");
}
