//! Privileged: when sonde falls behind the kernel's events, it sheds spans, never requests. sonde
//! is stopped (SIGSTOP) while nginx answers requests that fill four fifths of its ring buffer;
//! continued, it finds the ring still more than three quarters full after its first drain and makes spans
//! for a shrinking share of the traces — yet the request metrics count every request, and the
//! kernel dropped nothing.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use sonde_tests::{
    harness::{self, Sonde, eventually},
    prometheus,
    receiver::{ReceivedPoint, Receiver, server_requests_counted},
};

/// 32 MiB of ring. Each request leaves three records here (nginx reads the request, reads again
/// until EAGAIN, writes the response head), ~450 bytes in all, so `REQUESTS` fill ~80 % of the
/// ring; a drain reads at most 4096 records (~2 % of it), so the next drains still begin more than
/// three quarters full, and the kernel drops nothing (checked).
const RING_BYTES: &str = "33554432";
const REQUESTS: u64 = 60_000;
const ASKERS: u64 = 8;
/// nginx closes a keep-alive connection after 1000 requests.
const PER_CONNECTION: u64 = 750;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_ring_sheds_spans_and_still_counts_every_request() {
    let receiver = Receiver::start().await.unwrap();
    let nginx = harness::nginx();
    let pid = nginx.pid().to_string();
    let (mut sonde, prom) = Sonde::start_exporting(
        &receiver.grpc_endpoint(),
        "grpc",
        &["--pid", &pid, "--ring-buffer-bytes", RING_BYTES, "--metrics-interval", "1s"],
    );
    let mut warm_up = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    ask(&mut warm_up, "/index.html?warm-up");
    receiver.wait_for(|s| !s.is_empty(), Duration::from_secs(20)).await;

    signal(&sonde, libc::SIGSTOP);
    let port = nginx.port;
    let asked = tokio::task::spawn_blocking(move || {
        let askers: Vec<_> = (0..ASKERS)
            .map(|a| {
                std::thread::spawn(move || {
                    for c in 0..REQUESTS / ASKERS / PER_CONNECTION {
                        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        conn.set_nodelay(true).unwrap();
                        for i in 0..PER_CONNECTION {
                            ask(&mut conn, &format!("/index.html?{a}-{c}-{i}"));
                        }
                    }
                })
            })
            .collect();
        askers.into_iter().try_for_each(std::thread::JoinHandle::join)
    })
    .await;
    signal(&sonde, libc::SIGCONT);
    asked.unwrap().unwrap();

    let all = REQUESTS + 1;

    let counted = |points: &[ReceivedPoint]| server_requests_counted(points, &pid);
    let points = receiver.wait_for_points(|p| counted(p) >= all, Duration::from_secs(30)).await;

    assert_eq!(counted(&points), all, "every request is counted in the metrics");
    // sonde's own counters are published at its next tick.
    let mut ended = 0.0;
    let published = eventually(Duration::from_secs(10), || {
        ended = sum(prom, "sonde_exchanges_ended_total");
        ended >= all as f64
    });
    assert!(published && ended == all as f64, "sonde counted {ended} exchanges for {all} requests");
    let dropped = sum(prom, "sonde_kernel_events_dropped_total");
    assert_eq!(dropped, 0.0, "the ring overflowed: the test's requests are too many for its size");

    let shed = sum(prom, "sonde_spans_shed_total");
    let created = sum(prom, "sonde_spans_created_total");
    eprintln!("{all} requests counted, {created} spans made, {shed} shed");
    assert!(shed > 0.0, "a ring staying more than half full sheds spans:\n{}", sonde.stderr());
    assert!(created > 0.0, "the first drain sheds nothing: {created} spans made");
    assert_eq!(created + shed, all as f64, "each exchange has its span or is counted as shed");
    assert!(sonde.stderr().contains("falling behind"), "the log says so:\n{}", sonde.stderr());
    sonde.stop_cleanly();
}

/// One keep-alive request for `path`, and its whole reply.
fn ask(conn: &mut TcpStream, path: &str) {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: overload\r\n\r\n").unwrap();
    let (mut reply, mut buf) = (Vec::new(), [0u8; 4096]);
    while !reply.ends_with(b"hello from nginx\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "nginx closed the connection: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}

fn signal(sonde: &Sonde, signal: libc::c_int) {
    // SAFETY: signalling the sonde this test started, by its pid.
    assert_eq!(unsafe { libc::kill(sonde.pid() as i32, signal) }, 0);
}

/// The sum of every series of counter `name` at sonde's Prometheus endpoint.
fn sum(prom: SocketAddr, name: &str) -> f64 {
    let (_, _, body) = prometheus::scrape(prom).expect("scraping sonde");
    let samples = prometheus::parse_exposition(&body).expect("exposition format");
    samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}
