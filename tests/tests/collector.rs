//! Privileged: what sonde does when its collector misbehaves — refuses for a while (with an error
//! worth retrying, or one that is not), answers slowly, or goes away and comes back. Each test
//! traces its own server (`--pid`), points sonde at an in-process OTLP receiver told how to
//! misbehave, and checks three things: the spans that could wait arrive once the collector is
//! well, the ones that could not are counted (on sonde's Prometheus endpoint and in its last
//! `counters` log line), and sonde keeps to its bounds (attempts, queue, memory) meanwhile.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use sonde_tests::{
    harness::{self, Guard, Sonde, eventually, free_port, read_ok_reply},
    prometheus::{self, Sample},
    receiver::{ReceivedSpan, Receiver, Refusal, Transport},
};

const WAIT: Duration = Duration::from_secs(30);

/// sonde tracing `server` only, exporting spans to `receiver` over `transport` (no OTLP metrics,
/// so that every request the receiver sees carries spans), with its Prometheus endpoint on a free
/// loopback port, which is returned.
fn sonde_for(
    receiver: &Receiver,
    transport: Transport,
    server: &Guard,
    extra: &[&str],
) -> (Sonde, SocketAddr) {
    let (endpoint, protocol) = match transport {
        Transport::Grpc => (receiver.grpc_endpoint(), "grpc"),
        Transport::Http => (receiver.http_endpoint(), "http/protobuf"),
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    let pid = server.pid().to_string();
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        protocol,
        "--otlp-metrics",
        "off",
        "--prometheus-listen",
        &listen,
        "--print",
        "none",
        "--pid",
        &pid,
    ];
    args.extend_from_slice(extra);
    (Sonde::start(&args), listen.parse().unwrap())
}

/// `n` requests `GET {prefix}/{i}` one after the other on one keep-alive connection to
/// `tests/servers/app.py`, each answered before the next is sent.
async fn requests(port: u16, prefix: &str, n: usize) {
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = connect(port);
        for i in 0..n {
            get(&mut conn, &format!("{prefix}/{i}"));
        }
    })
    .await
    .expect("the request thread");
}

fn connect(port: u16) -> TcpStream {
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the app");
    conn.set_nodelay(true).unwrap();
    conn
}

/// One `GET path` on `conn`, in one write (several small ones would each wait for an ACK).
fn get(conn: &mut TcpStream, path: &str) {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .expect("sending a request");
    read_ok_reply(conn);
}

/// The received spans whose `url.path` starts with `prefix`.
fn under<'a>(spans: &'a [ReceivedSpan], prefix: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with(prefix))).collect()
}

/// Waits until `n` spans under `prefix` arrived (or `WAIT` passed); returns all spans.
async fn arrived(receiver: &Receiver, prefix: &str, n: usize) -> Vec<ReceivedSpan> {
    receiver.wait_for(|s| under(s, prefix).len() >= n, WAIT).await
}

/// One scrape of sonde's Prometheus endpoint.
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, _, body) = prometheus::scrape(addr).expect("scraping sonde");
    assert_eq!(status, 200, "{body}");
    prometheus::parse_exposition(&body).unwrap_or_else(|e| panic!("{e:#}\n{body}"))
}

/// A sample's value in one scrape (`None` if the series is not there).
fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    all.iter().find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v))).map(|s| s.value)
}

/// `sonde_spans_dropped_total{reason}` now.
fn dropped(prom: SocketAddr, reason: &str) -> f64 {
    value(&scrape(prom), "sonde_spans_dropped_total", &[("reason", reason)]).unwrap_or(f64::NAN)
}

/// Waits until `sonde_spans_dropped_total{reason}` is `want` (the endpoint renders at most once a
/// second); returns the last value seen.
fn wait_dropped(prom: SocketAddr, reason: &str, want: f64) -> f64 {
    let mut last = f64::NAN;
    eventually(WAIT, || {
        last = dropped(prom, reason);
        last == want
    });
    last
}

/// A counter of sonde's last `counters` log line (at exit), e.g. `sonde.spans.exported`.
fn final_counter(sonde: &Sonde, name: &str) -> u64 {
    let log = sonde.stderr();
    let line = log
        .lines()
        .rfind(|l| l.contains("counters") && l.contains("state=\"stopped\""))
        .unwrap_or_else(|| panic!("no final counters line:\n{log}"));
    // Every series of the metric, whatever its labels: `name=N` or `name{reason=…}=N`.
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.rsplit_once('='))
        .filter(|(key, _)| *key == name || key.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|(_, value)| value.parse().ok())
        .collect();
    assert!(!values.is_empty(), "no {name} in {line}");
    values.iter().sum()
}

/// The most attempts one batch can make within `window` of its first one: sonde's back-off starts
/// at 100 ms and doubles to 5 s, each delay jittered down to half of it, so the quickest possible
/// attempts are at 0, 0.05, 0.15, 0.35, 0.75, 1.55, 3.15 s and then every 2.5 s.
fn max_attempts(window: Duration) -> usize {
    7 + (window.saturating_sub(Duration::from_millis(3150)).as_secs_f64() / 2.5).ceil() as usize
}

async fn a_refusing_collector_is_retried_with_back_off_and_what_cannot_wait_is_counted(transport: Transport) {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[]);
    let (mut sonde, prom) = sonde_for(&receiver, transport, &app, &["--max-queue-spans", "5"]);
    requests(app.port, "/before", 1).await;
    let spans = arrived(&receiver, "/before", 1).await;
    assert_eq!(under(&spans, "/before").len(), 1, "a healthy start: {spans:#?}\n{}", sonde.stderr());

    // The collector starts refusing (gRPC UNAVAILABLE, HTTP 503): the batch with the first span
    // is retried with back-off, and holds no queue room meanwhile.
    receiver.refuse_requests(Refusal::Unavailable);
    let refusing_since = Instant::now();
    requests(app.port, "/first", 1).await;
    assert!(
        eventually(WAIT, || receiver.refused_requests() >= 1),
        "the refused export is tried: {}",
        sonde.stderr()
    );
    // 30 more while it is being retried: the queue holds 5, the other 25 cannot wait.
    requests(app.port, "/during", 30).await;
    let queue_full = wait_dropped(prom, "queue_full", 25.0);
    assert_eq!(queue_full, 25.0, "dropped and counted: {}", sonde.stderr());

    // Some seconds of refusals: attempts are spaced by the back-off, not a hot loop.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(refusing_since.elapsed())).await;
    let refused = receiver.refused_requests();
    receiver.accept_requests();
    let window = refusing_since.elapsed();
    eprintln!("{transport:?}: {refused} refused requests in {window:?}");
    assert!(
        (3..=max_attempts(window)).contains(&refused),
        "{refused} refused requests in {window:?}, at most {} with back-off",
        max_attempts(window)
    );

    // The collector is well again: the retried batch and the 5 queued spans arrive, then new ones.
    arrived(&receiver, "/during", 5).await;
    requests(app.port, "/after", 3).await;
    let spans = arrived(&receiver, "/after", 3).await;
    let count = |prefix| under(&spans, prefix).len();
    assert_eq!(
        (count("/before"), count("/first"), count("/during"), count("/after")),
        (1, 1, 5, 3),
        "{spans:#?}\n{}",
        sonde.stderr()
    );
    assert_eq!(dropped(prom, "export_failed"), 0.0, "the retried batch was not given up");

    sonde.stop_cleanly();
    assert_eq!(final_counter(&sonde, "sonde.spans.dropped"), 25, "{}", sonde.stderr());
    assert_eq!(final_counter(&sonde, "sonde.spans.exported"), 10);
    assert_eq!(
        final_counter(&sonde, "sonde.spans.created{span.kind=server}"),
        35,
        "every span exported or counted as dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_answering_unavailable_is_retried_with_back_off_and_what_cannot_wait_is_counted() {
    a_refusing_collector_is_retried_with_back_off_and_what_cannot_wait_is_counted(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_answering_503_is_retried_with_back_off_and_what_cannot_wait_is_counted() {
    a_refusing_collector_is_retried_with_back_off_and_what_cannot_wait_is_counted(Transport::Http).await;
}

async fn a_batch_the_collector_calls_invalid_is_dropped_and_counted_not_retried(transport: Transport) {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[]);
    let (mut sonde, prom) = sonde_for(&receiver, transport, &app, &[]);
    requests(app.port, "/before", 1).await;
    arrived(&receiver, "/before", 1).await;

    // gRPC INVALID_ARGUMENT, HTTP 400: sending the same batch again cannot help.
    receiver.refuse_requests(Refusal::InvalidArgument);
    requests(app.port, "/invalid", 10).await;
    let export_failed = wait_dropped(prom, "export_failed", 10.0);
    assert_eq!(export_failed, 10.0, "{}", sonde.stderr());
    // Longer than the first few back-off delays: a retry would show up as spans refused twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.refused_spans(), 10, "each span refused once, none retried");
    let batches = receiver.refused_requests();
    eprintln!("{transport:?}: 10 spans refused in {batches} requests");
    assert!((1..=10).contains(&batches), "{batches} refused requests for 10 spans");

    receiver.accept_requests();
    requests(app.port, "/after", 3).await;
    let spans = arrived(&receiver, "/after", 3).await;
    let count = |prefix| under(&spans, prefix).len();
    assert_eq!((count("/before"), count("/invalid"), count("/after")), (1, 0, 3), "{spans:#?}");
    assert_eq!(dropped(prom, "queue_full"), 0.0);

    sonde.stop_cleanly();
    let log = sonde.stderr();
    assert!(log.contains("not retryable"), "the refusal is logged as final:\n{log}");
    assert_eq!(final_counter(&sonde, "sonde.spans.dropped"), 10, "{log}");
    assert_eq!(final_counter(&sonde, "sonde.spans.exported"), 4, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_the_collector_answers_invalid_argument_is_dropped_and_counted_not_retried() {
    a_batch_the_collector_calls_invalid_is_dropped_and_counted_not_retried(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_the_collector_answers_400_is_dropped_and_counted_not_retried() {
    a_batch_the_collector_calls_invalid_is_dropped_and_counted_not_retried(Transport::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_collector_costs_counted_drops_not_memory_or_the_apps_requests() {
    const MAX_QUEUE: f64 = 20.0;
    // sonde's largest export request (the SDK default); a batch being sent is out of the queue.
    const MAX_BATCH: f64 = 512.0;
    const RATE: u32 = 20;
    const LOAD: Duration = Duration::from_secs(12);

    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[]);
    let (mut sonde, prom) = sonde_for(&receiver, Transport::Grpc, &app, &["--max-queue-spans", "20"]);
    requests(app.port, "/warm-up", 20).await;
    arrived(&receiver, "/warm-up", 20).await;
    let baseline = harness::status_kib(sonde.pid(), "VmRSS");

    // Each export is answered after 2.5 s (well inside sonde's 10 s export timeout), while the
    // app takes 20 requests a second: more spans than one export per 2.5 s can carry.
    receiver.set_response_delay(Duration::from_millis(2500));
    let port = app.port;
    let load = tokio::task::spawn_blocking(move || {
        let mut conn = connect(port);
        let started = Instant::now();
        let (mut sent, mut slowest) = (0, Duration::ZERO);
        while started.elapsed() < LOAD {
            let asked = Instant::now();
            get(&mut conn, &format!("/steady/{sent}"));
            slowest = slowest.max(asked.elapsed());
            sent += 1;
            let next = started + Duration::from_secs(1) * sent / RATE;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (sent, slowest)
    });
    let (mut rss, mut depth) = (Vec::new(), Vec::new());
    while !load.is_finished() {
        rss.push(harness::status_kib(sonde.pid(), "VmRSS"));
        depth.push(value(&scrape(prom), "sonde_export_queue_size", &[]).unwrap_or(f64::NAN));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every request was answered: a failed one panics the load thread.
    let (sent, slowest) = load.await.expect("the load thread");

    let queue_full = dropped(prom, "queue_full");
    let deepest = depth.iter().copied().fold(0.0, f64::max);
    let peak = rss.iter().copied().max().unwrap_or(baseline);
    let third = rss.len() / 3;
    let (early, late) = (&rss[..third], &rss[rss.len() - third..]);
    let (early_max, late_max) = (early.iter().max(), late.iter().max());
    // Figures for docs/reliability.md; not asserted (timings on a shared machine).
    eprintln!(
        "slow collector: {sent} requests (slowest {slowest:?}), queue_full={queue_full}, deepest queue \
         {deepest}, RSS {baseline} KiB at rest, peak {peak} KiB, early max {early_max:?}, late max {late_max:?}"
    );
    assert!(queue_full > 0.0, "the queue overflowed and it was counted: {}", sonde.stderr());
    assert!(deepest <= MAX_QUEUE + MAX_BATCH, "queue depth samples {depth:?}");
    assert!(peak < baseline + 64 * 1024, "RSS {baseline} KiB at rest, {peak} KiB peak: {rss:?}");
    assert!(
        late_max <= early_max.map(|m| m + 16 * 1024).as_ref(),
        "RSS grows while the collector is slow: {rss:?}"
    );

    // The collector speeds up: new spans arrive promptly again.
    receiver.set_response_delay(Duration::ZERO);
    requests(app.port, "/fast", 5).await;
    let spans = arrived(&receiver, "/fast", 5).await;
    assert_eq!(under(&spans, "/fast").len(), 5, "{}", sonde.stderr());

    sonde.stop_cleanly();
    let exported = final_counter(&sonde, "sonde.spans.exported");
    let lost = final_counter(&sonde, "sonde.spans.dropped");
    assert_eq!(exported as usize, receiver.spans().len(), "what sonde counts as exported arrived");
    assert_eq!(
        exported + lost,
        final_counter(&sonde, "sonde.spans.created{span.kind=server}"),
        "every span exported or counted as dropped:\n{}",
        sonde.stderr()
    );
}

async fn a_collector_that_goes_down_mid_run_gets_the_spans_when_it_is_back(transport: Transport) {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[]);
    let (mut sonde, prom) = sonde_for(&receiver, transport, &app, &[]);
    requests(app.port, "/before", 3).await;
    let spans = arrived(&receiver, "/before", 3).await;
    assert_eq!(under(&spans, "/before").len(), 3, "{}", sonde.stderr());
    // Down only once sonde knows they arrived: a collector that stops between taking an export and
    // answering it gets it again later (OTLP retries a failed export), which is not under test here.
    let answered = eventually(WAIT, || value(&scrape(prom), "sonde_spans_exported_total", &[]) == Some(3.0));
    assert!(
        answered,
        "sonde saw the first 3 spans accepted: {:?}",
        value(&scrape(prom), "sonde_spans_exported_total", &[])
    );

    // The collector goes away: its ports close and the connection sonde holds is shut.
    let (grpc, http) = (receiver.grpc_addr(), receiver.http_addr());
    receiver.shut_down().await;
    requests(app.port, "/while-down", 3).await;
    // Long enough for the first exports to fail against the closed port.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // It comes back on the same ports; what was queued arrives, and what comes next.
    let receiver = Receiver::start_on(grpc, http).await.expect("the collector's ports free again");
    let spans = arrived(&receiver, "/while-down", 3).await;
    assert_eq!(under(&spans, "/while-down").len(), 3, "{spans:#?}\n{}", sonde.stderr());
    requests(app.port, "/after", 3).await;
    let spans = arrived(&receiver, "/after", 3).await;
    let count = |prefix| under(&spans, prefix).len();
    assert_eq!((count("/before"), count("/while-down"), count("/after")), (0, 3, 3), "{spans:#?}");
    let log = sonde.stderr();
    assert!(log.contains("retrying with back-off"), "the outage is logged:\n{log}");
    assert!(log.contains("accepting spans again"), "and the recovery:\n{log}");
    assert_eq!(dropped(prom, "export_failed") + dropped(prom, "queue_full"), 0.0, "nothing lost:\n{log}");

    sonde.stop_cleanly();
    assert_eq!(final_counter(&sonde, "sonde.spans.exported"), 9);
    assert_eq!(final_counter(&sonde, "sonde.spans.dropped"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_collector_that_goes_down_mid_run_gets_the_spans_when_it_is_back() {
    a_collector_that_goes_down_mid_run_gets_the_spans_when_it_is_back(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_collector_that_goes_down_mid_run_gets_the_spans_when_it_is_back() {
    a_collector_that_goes_down_mid_run_gets_the_spans_when_it_is_back(Transport::Http).await;
}
