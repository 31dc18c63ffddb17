//! Privileged: what sonde cannot parse stops being copied in the kernel, and what it can still is.
//! - A connection seen from its start whose first bytes are binary: the kernel refuses it at once
//!   (`first_bytes`), and its next 16 MiB each way are not copied.
//! - A connection made before sonde started (it cannot be judged by its first bytes): user space
//!   gives up on it, tells the kernel (`agent`), and the copying stops there too.
//! - An HTTP request whose first write (and the server's first read) is one byte still gives both
//!   its spans: a first read that is short is never refused. Its client socket takes the fd number
//!   of a refused connection just closed: a verdict ends with its socket.
//! - A 100 MiB response body, whose length its head gives, is not copied: the kernel skips the
//!   calls inside it, and both spans still count every byte and end when the body does.
//!
//! The kernel's byte counters are sonde's own metrics (`sonde_kernel_copied_bytes_total`,
//! `sonde_kernel_not_copied_bytes_total`); only the processes started here are traced.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use sonde_tests::{
    harness::{self, Sonde, eventually},
    prometheus,
    receiver::Receiver,
};

const MIB: f64 = 1024.0 * 1024.0;
/// What one connection may still copy once refused: the first event of each direction (at most
/// the default 8 KiB capture each) and a little slack for the other traced traffic.
const AFTER_REFUSAL: f64 = 64.0 * 1024.0;
/// bulk_pair.py's writes and reads.
const BLOCK: f64 = 64.0 * 1024.0;

/// `tests/servers/bulk_pair.py`, driven line by line.
struct BulkPair {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl BulkPair {
    fn start(connect_now: bool) -> BulkPair {
        let mut command = Command::new("python3");
        command.arg(harness::servers_dir().join("bulk_pair.py"));
        if connect_now {
            command.arg("--connect-now");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tests/servers/bulk_pair.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut pair = BulkPair { child, stdin, stdout };
        assert_eq!(pair.answer(), "ready");
        pair
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn run(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.answer()
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "bulk_pair.py ended early");
        line.trim().to_owned()
    }
}

impl Drop for BulkPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's counters as sonde exports them.
#[derive(Debug, Clone, Copy)]
struct Counters {
    copied: f64,
    not_copied: f64,
    body_skipped: f64,
    refused_by_first_bytes: f64,
    refused_by_agent: f64,
}

fn counters(prom: SocketAddr) -> Counters {
    let (_, _, body) = prometheus::scrape(prom).expect("scraping sonde");
    let samples = prometheus::parse_exposition(&body).expect("exposition format");
    let value = |name: &str, reason: Option<&str>| {
        samples
            .iter()
            .filter(|s| s.name == name && reason.is_none_or(|r| s.label("reason") == Some(r)))
            .map(|s| s.value)
            .sum::<f64>()
    };
    Counters {
        copied: value("sonde_kernel_copied_bytes_total", None),
        not_copied: value("sonde_kernel_not_copied_bytes_total", None),
        body_skipped: value("sonde_kernel_body_skipped_bytes_total", None),
        refused_by_first_bytes: value("sonde_connections_not_parsed_total", Some("first_bytes")),
        refused_by_agent: value("sonde_connections_not_parsed_total", Some("agent")),
    }
}

/// Sends `mib` MiB through `pair` and returns the counters once sonde has published the kernel's
/// reading that includes them (both ends of the pair are traced: 2 × `mib` MiB not copied, but for
/// the first write and read of a connection just refused).
fn send_uncopied(pair: &mut BulkPair, mib: u32, prom: SocketAddr) -> Counters {
    let before = settled(prom);
    assert_eq!(pair.run(&format!("send {mib}")), "sent");
    let moved = 2.0 * f64::from(mib) * MIB - 2.0 * BLOCK;
    let mut now = before;
    let settled = eventually(Duration::from_secs(10), || {
        now = counters(prom);
        now.not_copied - before.not_copied >= moved
    });
    assert!(settled, "{} MiB moved, not copied: {before:?} → {now:?}", 2 * mib);
    assert!(
        now.copied - before.copied < AFTER_REFUSAL,
        "{} MiB moved on a refused connection, yet {} bytes were copied: {before:?} → {now:?}",
        2 * mib,
        now.copied - before.copied
    );
    now
}

/// The counters once the kernel's byte counts have stayed put for longer than sonde takes to
/// publish a new reading (every second): what was copied before now is all in them.
fn settled(prom: SocketAddr) -> Counters {
    let mut last = counters(prom);
    let mut since = Instant::now();
    let still = eventually(Duration::from_secs(30), || {
        let now = counters(prom);
        if (now.copied, now.not_copied) != (last.copied, last.not_copied) {
            since = Instant::now();
        }
        last = now;
        since.elapsed() >= Duration::from_millis(1500)
    });
    assert!(still, "the kernel's byte counts never settled: {last:?}");
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_sonde_cannot_parse_stop_being_copied() {
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "copy-cost")]);
    let mut old = BulkPair::start(true);
    let mut fresh = BulkPair::start(false);
    let (app_pid, old_pid, fresh_pid) = (app.pid().to_string(), old.pid(), fresh.pid());
    let (mut sonde, prom) = Sonde::start_exporting(
        &receiver.grpc_endpoint(),
        "grpc",
        &["--pid", &app_pid, "--pid", &old_pid, "--pid", &fresh_pid],
    );

    // Seen from its start: refused by its first bytes.
    assert_eq!(fresh.run("connect"), "connected");
    let fresh_counts = send_uncopied(&mut fresh, 16, prom);
    assert!(fresh_counts.refused_by_first_bytes >= 2.0, "both ends refused: {fresh_counts:?}");

    // Made before sonde started: user space gives up after 4 MiB of a one-way stream without an
    // HTTP message start, and the kernel stops there.
    assert_eq!(old.run("send 8"), "sent");
    let mut now = fresh_counts;
    let told = eventually(Duration::from_secs(10), || {
        now = counters(prom);
        now.refused_by_agent >= 2.0
    });
    assert!(told, "sonde told the kernel about both ends of the old connection: {now:?}");
    send_uncopied(&mut old, 16, prom);

    // HTTP beside them, begun with a one-byte write and read, on the fd a refused connection held.
    assert_eq!(fresh.run("close"), "closed");
    let status = fresh.run(&format!("http {} /one-byte", app.port));
    assert!(status.starts_with("HTTP/1.") && status.contains(" 200"), "{status}");
    // Server spans have `url.path`, client spans `url.full`.
    let one_byte = |s: &&sonde_tests::receiver::ReceivedSpan| {
        s.attr("url.path").as_deref() == Some("/one-byte")
            || s.attr("url.full").is_some_and(|u| u.ends_with("/one-byte"))
    };
    receiver.wait_for(|spans| spans.iter().filter(one_byte).count() >= 2, Duration::from_secs(20)).await;
    let spans = receiver.spans();
    let mut kinds: Vec<&str> = spans.iter().filter(one_byte).map(|s| s.kind_name()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["CLIENT", "SERVER"], "both sides of the one-byte request are traced");
    for span in spans.iter().filter(one_byte) {
        assert_eq!(span.attr("http.response.status_code").as_deref(), Some("200"), "{span:?}");
    }
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_body_is_not_copied_and_its_spans_are_whole() {
    const BODY: u64 = 100 << 20;
    /// What the 100 MiB may still copy, both ends together: heads, the calls made before sonde
    /// told the kernel where the body ends (milliseconds of a loopback transfer), the last call.
    const COPIED_AT_MOST: f64 = 2.0 * MIB;
    let receiver = Receiver::start().await.unwrap();
    let app = harness::python_app(&[("OTEL_SERVICE_NAME", "long-body")]);
    let mut client = BulkPair::start(false);
    let (mut sonde, prom) = Sonde::start_exporting(
        &receiver.grpc_endpoint(),
        "grpc",
        &["--pid", &app.pid().to_string(), "--pid", &client.pid(), "--opt-in-attributes"],
    );
    let before = settled(prom);
    let path = format!("/bytes/{BODY}");
    let reply = client.run(&format!("get {} {path}", app.port));
    assert!(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"), "{reply}");
    let whole = |s: &&sonde_tests::receiver::ReceivedSpan| {
        s.attr("url.path").as_deref() == Some(path.as_str())
            || s.attr("url.full").is_some_and(|u| u.ends_with(path.as_str()))
    };
    receiver.wait_for(|spans| spans.iter().filter(whole).count() >= 2, Duration::from_secs(20)).await;
    let now = settled(prom);
    let spans = receiver.spans();
    let mut kinds: Vec<&str> = spans.iter().filter(whole).map(|s| s.kind_name()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["CLIENT", "SERVER"]);
    for span in spans.iter().filter(whole) {
        assert_eq!(span.attr("http.response.body.size"), Some(BODY.to_string()), "{span:?}");
    }
    let copied = now.copied - before.copied;
    assert!(copied < COPIED_AT_MOST, "{copied} bytes copied for a 100 MiB body: {before:?} → {now:?}");
    let skipped = now.body_skipped - before.body_skipped;
    // Calls made before the kernel was told are reported (copying their first 8 KiB): a few MiB.
    assert!(skipped >= 0.9 * 2.0 * BODY as f64, "{skipped} body bytes skipped: {before:?} → {now:?}");
    sonde.stop_cleanly();
}
