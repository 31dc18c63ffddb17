//! Privileged: how the real sonde binary starts, prints, survives a missing collector and stops.

use std::{process::Command, time::Duration};

use sonde_tests::{
    harness::{self, Sonde, curl, eventually},
    receiver::Receiver,
};

#[test]
fn print_json_writes_one_span_per_line() {
    let server = harness::python_app(&[("OTEL_SERVICE_NAME", "json-demo")]);
    let port = server.port.to_string();
    let mut sonde = Sonde::start(&["--print", "json", "--port", &port]);
    curl(&[&format!("http://127.0.0.1:{port}/one")]);
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/status/503")]);
    assert!(
        eventually(Duration::from_secs(20), || sonde.stdout().lines().count() >= 4),
        "{}",
        sonde.stderr()
    );
    assert!(sonde.stop().success());

    let all: Vec<serde_json::Value> = sonde
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON span"))
        .collect();
    // curl's side of the same two requests (selected by --port too) are CLIENT spans.
    let (lines, clients): (Vec<_>, Vec<_>) = all.into_iter().partition(|span| span["kind"] == "SERVER");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(clients.len(), 2, "{clients:#?}");
    assert!(
        clients.iter().all(|c| c["kind"] == "CLIENT" && c["resource"]["process.executable.name"] == "curl")
    );
    let one = &lines[0];
    assert_eq!(one["name"], "GET");
    assert_eq!(one["kind"], "SERVER");
    assert_eq!(one["attributes"]["url.path"], "/one");
    assert_eq!(one["attributes"]["http.response.status_code"], 200);
    assert_eq!(one["resource"]["service.name"], "json-demo");
    assert_eq!(one["trace_id"].as_str().map(str::len), Some(32));
    assert_eq!(one["span_id"].as_str().map(str::len), Some(16));
    // curl is traced too: its CLIENT span is the parent (same-host stitching).
    let caller = clients.iter().find(|c| c["trace_id"] == one["trace_id"]).expect("curl's span in the trace");
    assert_eq!(one["parent_span_id"], caller["span_id"]);
    assert!(caller["parent_span_id"].is_null());
    assert!(one["end_unix_nano"].as_u64() >= one["start_unix_nano"].as_u64());
    assert_eq!(lines[1]["status"], "ERROR");
    assert_eq!(lines[1]["attributes"]["http.response.status_code"], 503);
}

#[test]
fn without_a_collector_the_terminal_shows_a_waterfall() {
    let server = harness::python_app(&[("OTEL_SERVICE_NAME", "waterfall-demo")]);
    let port = server.port.to_string();
    let mut sonde = Sonde::start(&["--port", &port]);
    curl(&[&format!("http://127.0.0.1:{port}/tree")]);
    assert!(
        eventually(Duration::from_secs(20), || sonde.stdout().contains("waterfall-demo")),
        "{}",
        sonde.stderr()
    );
    assert!(sonde.stop().success());
    let out = sonde.stdout();
    let line = out.lines().find(|l| l.contains("waterfall-demo")).unwrap();
    assert!(line.contains("GET"), "{out}");
    assert!(line.contains('█') || line.contains('#'), "a duration bar: {out}");
    assert!(out.contains("trace "), "a header line per trace: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_what_is_pending() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    let port = server.port.to_string();
    let endpoint = receiver.grpc_endpoint();
    let mut sonde = Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--port", &port]);
    curl(&[&format!("http://127.0.0.1:{port}/last-words")]);
    // Well inside the 1 s batch delay: the span is still queued when the signal arrives.
    std::thread::sleep(Duration::from_millis(100));
    sonde.stop_cleanly();
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.attr("url.path").as_deref() == Some("/last-words")),
        "the pending span was flushed at SIGTERM: {spans:#?}\n{}",
        sonde.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_is_retried_and_nothing_crashes() {
    let server = harness::python_app(&[]);
    let port = server.port.to_string();
    let (grpc_port, http_port) = (harness::free_port(), harness::free_port());
    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    let mut sonde = Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--port", &port]);
    for i in 0..3 {
        curl(&[&format!("http://127.0.0.1:{port}/while-down/{i}")]);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The collector comes up: the queued spans are delivered by the retries.
    let receiver = Receiver::start_on(([127, 0, 0, 1], grpc_port).into(), ([127, 0, 0, 1], http_port).into())
        .await
        .unwrap();
    let spans = receiver
        .wait_for(
            |s| {
                s.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/while-down"))).count()
                    >= 3
            },
            Duration::from_secs(30),
        )
        .await;
    let delivered =
        spans.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/while-down"))).count();
    assert_eq!(delivered, 3, "{}", sonde.stderr());
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_costs_dropped_spans_not_a_crash() {
    let server = harness::python_app(&[]);
    let port = server.port.to_string();
    let endpoint = format!("http://127.0.0.1:{}", harness::free_port());
    let mut sonde = Sonde::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--port",
        &port,
        "--max-queue-spans",
        "2",
    ]);
    for i in 0..10 {
        curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/lost/{i}")]);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sonde.stop_cleanly();
    let log = sonde.stderr();
    let counters =
        log.lines().find(|l| l.contains("counters") && l.contains("state=\"stopped\"")).expect(&log);
    assert!(counters.contains("sonde.spans.created{span.kind=server}=10"), "{counters}");
    assert!(!counters.contains("sonde.spans.dropped=0"), "drops are counted: {counters}");
}

#[test]
fn without_privileges_it_names_the_missing_capabilities() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(harness::sonde_bin())
        .arg("run")
        .output()
        .expect("running setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing capabilities") && err.contains("CAP_BPF"), "{err}");
}

/// (programs, maps) loaded in the kernel right now, from `bpftool … show -j`.
fn bpf_objects() -> (usize, usize) {
    let count = |what: &str| {
        let out = Command::new("bpftool").args([what, "show", "-j"]).output().expect("running bpftool");
        assert!(out.status.success(), "bpftool {what} show: {}", String::from_utf8_lossy(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
        list.as_array().map_or(0, Vec::len)
    };
    (count("prog"), count("map"))
}

#[test]
fn kill_9_leaves_no_programs_or_maps_behind() {
    let before = bpf_objects();
    let mut sonde = Sonde::start(&["--pid", "1", "--print", "none"]);
    let running = bpf_objects();
    assert!(
        running.0 > before.0 && running.1 > before.1,
        "sonde's programs and maps loaded: {before:?} → {running:?}"
    );
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(sonde.pid() as i32, libc::SIGKILL) };
    // Reaps it (the SIGTERM this sends finds it gone already).
    let _ = sonde.stop();
    // The kernel frees them once the last fd closes (after an RCU grace period).
    let mut now = running;
    let gone = eventually(Duration::from_secs(10), || {
        now = bpf_objects();
        now.0 <= before.0 && now.1 <= before.1
    });
    assert!(gone, "after kill -9: {before:?} before, {now:?} now");
}

/// The sock_ops programs attached to `cgroup`, by id: what `bpftool cgroup show` lists and, where
/// its query fails (Linux 5.10 refuses the query flags of Debian 12's bpftool), the cgroup links
/// `bpftool link show` lists.
fn cgroup_sock_ops(cgroup: &str) -> Vec<u64> {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool").args(args).arg("-j").output().expect("running bpftool");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let sock_ops =
        |p: &serde_json::Value| p["attach_type"] == "cgroup_sock_ops" || p["attach_type"] == "sock_ops";
    let attached = json(&["cgroup", "show", cgroup]);
    let mut ids: Vec<u64> = attached
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| sock_ops(p))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    if ids.is_empty() {
        // Which cgroup a link is on is its `cgroup_id`: the inode number of the directory.
        use std::os::unix::fs::MetadataExt as _;
        let cgroup_id = std::fs::metadata(cgroup).map(|m| m.ino()).unwrap_or(0);
        let links = json(&["link", "show"]);
        ids = links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["type"] == "cgroup" && sock_ops(l) && l["cgroup_id"].as_u64() == Some(cgroup_id))
            .filter_map(|l| l["prog_id"].as_u64())
            .collect();
    }
    ids
}

/// `GET /keep/{n}` on a keep-alive connection, and its `ok` reply.
fn keep_alive_request(conn: &mut std::net::TcpStream, n: u32) {
    use std::io::Write as _;
    let head = format!("GET /keep/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    conn.write_all(head.as_bytes()).expect("the connection still takes requests");
    harness::read_ok_reply(conn);
}

#[test]
fn kill_9_with_propagation_mid_traffic_leaves_connections_working_and_nothing_attached() {
    let server = harness::python_app(&[]);
    let connect = || {
        let conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn
    };
    // Keep-alive connections of this (traced) process: one from before sonde started, one opened
    // while it runs (its requests carry a context in a TCP option, and where the kernel passes the
    // SOCKHASH self-test, in a header too: its socket sits in sonde's SOCKHASH until the kill).
    let mut early = connect();
    keep_alive_request(&mut early, 0);
    let before = bpf_objects();
    let mut sonde = Sonde::start(&["--context-propagation", "all", "--print", "none"]);
    // The cgroup v2 root it found (where the hierarchy is mounted differs between hosts).
    let cgroup = sonde
        .stderr()
        .lines()
        .find(|l| l.contains("context propagation"))
        .and_then(|l| l.split("cgroup=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("sonde names the cgroup it attached to:\n{}", sonde.stderr()));
    let attached = cgroup_sock_ops(&cgroup);
    assert!(!attached.is_empty(), "sonde's sock_ops program is attached to {cgroup}: {attached:?}");
    let mut late = connect();
    for n in 1..=20 {
        keep_alive_request(&mut early, n);
        keep_alive_request(&mut late, n);
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(sonde.pid() as i32, libc::SIGKILL) };
    for n in 21..=40 {
        keep_alive_request(&mut early, n);
        keep_alive_request(&mut late, n);
    }
    let _ = sonde.stop();
    let mut now = (bpf_objects(), cgroup_sock_ops(&cgroup));
    let gone = eventually(Duration::from_secs(10), || {
        now = (bpf_objects(), cgroup_sock_ops(&cgroup));
        now.0.0 <= before.0 && now.0.1 <= before.1 && now.1.iter().all(|id| !attached.contains(id))
    });
    assert!(gone, "after kill -9: {before:?} before, {now:?} now (attached: {attached:?})");
    for n in 41..=45 {
        keep_alive_request(&mut early, n);
        keep_alive_request(&mut late, n);
    }
    assert_eq!(curl(&[&server.url("/after")]), "ok\n", "a new connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_side_by_side_both_trace_and_one_leaving_does_not_stop_the_other() {
    let (first, second) = (Receiver::start().await.unwrap(), Receiver::start().await.unwrap());
    let server = harness::python_http_server(&[]);
    let pid = server.pid().to_string();
    let start = |r: &Receiver| {
        let endpoint = r.grpc_endpoint();
        Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid])
    };
    // As in a rolling update: the new one starts before the old one stops.
    let mut old = start(&first);
    let mut new = start(&second);
    curl(&["-o", "/dev/null", &server.url("/one")]);
    for (name, r) in [("old", &first), ("new", &second)] {
        let spans = path_in(r, "/one").await;
        assert!(
            spans.iter().any(|s| s.attr("url.path").as_deref() == Some("/one")),
            "{name} instance: {spans:#?}"
        );
    }
    old.stop_cleanly();
    curl(&["-o", "/dev/null", &server.url("/two")]);
    let spans = path_in(&second, "/two").await;
    assert!(
        spans.iter().any(|s| s.attr("url.path").as_deref() == Some("/two")),
        "{spans:#?}\n{}",
        new.stderr()
    );
    new.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_query_strings_and_bodies_are_never_exported() {
    let receiver = Receiver::start().await.unwrap();
    let server = harness::python_app(&[]);
    let endpoint = receiver.grpc_endpoint();
    let pid = server.pid().to_string();
    let mut sonde = Sonde::start(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--pid", &pid]);
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Authorization: Bearer s3cret-authorization",
        "-H",
        "Cookie: session=s3cret-cookie",
        "-H",
        "X-Api-Key: s3cret-header",
        "-d",
        "password=s3cret-body",
        &server.url("/upload?token=s3cret-query"),
    ]);
    let spans =
        receiver.wait_for(|s| s.iter().any(|s| s.kind_name() == "SERVER"), Duration::from_secs(20)).await;
    let server_span = spans.iter().find(|s| s.kind_name() == "SERVER").expect("a server span");
    assert_eq!(server_span.attr("url.path").as_deref(), Some("/upload"));
    let everything = format!("{spans:?}");
    assert!(!everything.contains("s3cret"), "a secret was exported: {everything}");

    // Attribute values are capped in length, whatever the request carries: a 6 KiB path, a
    // 5 KiB User-Agent.
    let long_path = format!("/long/{}", "p".repeat(6000));
    curl(&["-o", "/dev/null", "-A", &"u".repeat(5000), &server.url(&long_path)]);
    let spans = receiver
        .wait_for(
            |s| {
                s.iter().any(|s| {
                    s.kind_name() == "SERVER" && s.attr("url.path").is_some_and(|p| p.starts_with("/long/"))
                })
            },
            Duration::from_secs(20),
        )
        .await;
    let long = spans
        .iter()
        .find(|s| s.kind_name() == "SERVER" && s.attr("url.path").is_some_and(|p| p.starts_with("/long/")))
        .expect("the long request's span");
    let (path, agent) =
        (long.attr("url.path").unwrap(), long.attr("user_agent.original").unwrap_or_default());
    assert!(path.len() <= 2048 && path.starts_with("/long/ppp"), "url.path of {} bytes", path.len());
    assert!(agent.len() <= 2048 && agent.starts_with("uuu"), "user_agent.original of {} bytes", agent.len());
    sonde.stop_cleanly();
}

/// The spans at `r` once one has `url.path` `path` (or after 20 s).
async fn path_in(r: &Receiver, path: &str) -> Vec<sonde_tests::receiver::ReceivedSpan> {
    r.wait_for(|s| s.iter().any(|s| s.attr("url.path").as_deref() == Some(path)), Duration::from_secs(20))
        .await
}
