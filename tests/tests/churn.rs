//! Privileged: connection churn. 100,000 short connections and 10,000 idle keep-alive ones through
//! a traced nginx: every request gets its span, and afterwards the kernel's connection map, sonde's
//! connection table and its memory are back where they started.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use sonde_tests::{
    bpf_maps,
    harness::{self, Sonde, TempDir, eventually},
    prometheus,
    receiver::Receiver,
};

const SHORT_CONNECTIONS: usize = 100_000;
const IDLE_CONNECTIONS: usize = 10_000;
const CLIENT_THREADS: usize = 4;
/// 10,000 idle connections take ~23 MiB of sonde's memory; "back to the baseline" allows 4.
const HEAP_SLACK_KIB: u64 = 4 * 1024;

/// Room for the idle connections on our end: the soft limit up to the hard one (20,000 here; a
/// higher hard limit would need CAP_SYS_RESOURCE, which a container may not grant).
fn raise_open_files() {
    // SAFETY: `rlimit` is two integers, for which all-zero bytes are a valid value.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: plain get of our own limit into a live out-parameter.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: plain set of our own limit from a live, initialised struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "raising RLIMIT_NOFILE");
    assert!(limit.rlim_cur as usize > IDLE_CONNECTIONS + 1_000, "too few open files allowed: {limit:?}");
}

fn nginx() -> harness::Guard {
    let dir = TempDir::new("nginx-churn");
    let port = harness::free_port();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 15000;
pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 14000; }}
http {{
  access_log off;
  keepalive_requests 1000000; keepalive_timeout 600s;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}
}}
",
        d = dir.path.display()
    );
    harness::start_nginx(dir, port, &conf)
}

/// One request on a new connection, `Connection: close`: nginx answers and closes first.
fn short_request(port: u16, path: &str) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(conn, "GET {path} HTTP/1.1\r\nHost: churn\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).expect("reading the reply");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}

/// `count` short connections spread over a few threads.
fn short_connections(port: u16, count: usize, path: &'static str) {
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            std::thread::spawn(move || (0..count / CLIENT_THREADS).for_each(|_| short_request(port, path)))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("a client thread"));
}

/// sonde's gauge of the connections it tracks, from its Prometheus endpoint.
fn tracked(prom: SocketAddr) -> f64 {
    prometheus::value(prom, "sonde_connections_tracked")
}

struct Level {
    kernel_conns: usize,
    tracked: f64,
    /// The heap (`RssAnon`): all resident memory less the ring buffer's shared pages, which stay
    /// resident once touched (twice the ring's size) and would hide what was freed.
    heap_kib: u64,
}

fn level(sonde: &Sonde, prom: SocketAddr) -> Level {
    Level {
        kernel_conns: bpf_maps::entries_of(sonde.pid(), "CONNS"),
        tracked: tracked(prom),
        heap_kib: harness::status_kib(sonde.pid(), "RssAnon"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_leaves_the_connection_maps_and_memory_at_their_baseline() {
    raise_open_files();
    let receiver = Receiver::start().await.unwrap();
    let nginx = nginx();
    let port = nginx.port;
    let pid = nginx.pid().to_string();
    let (mut sonde, prom) = Sonde::start_exporting(
        &receiver.grpc_endpoint(),
        "grpc",
        &["--pid", &pid, "--max-queue-spans", "200000"],
    );

    // Warm up (first-use allocations, the process cache), then take the baseline.
    tokio::task::spawn_blocking(move || short_connections(port, 2_000, "/warm")).await.unwrap();
    receiver.wait_for(|s| s.len() >= 2_000, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = level(&sonde, prom);
    eprintln!(
        "baseline: CONNS {} entries, {} tracked, heap {} KiB",
        base.kernel_conns, base.tracked, base.heap_kib
    );

    // 100k short connections: nginx reuses the same few fds and the 28k ephemeral ports recur, so
    // every one of them is a reuse of an fd and of a 4-tuple that was traced before.
    let started = Instant::now();
    tokio::task::spawn_blocking(move || short_connections(port, SHORT_CONNECTIONS, "/short")).await.unwrap();
    eprintln!("{SHORT_CONNECTIONS} short connections in {:?}", started.elapsed());
    let wanted = 2_000 + SHORT_CONNECTIONS;
    let spans = receiver.wait_for(|s| s.len() >= wanted, Duration::from_secs(60)).await;
    let short: Vec<_> = spans.iter().filter(|s| s.attr("url.path").as_deref() == Some("/short")).collect();
    assert_eq!(short.len(), SHORT_CONNECTIONS, "one span per short connection");
    assert!(
        short.iter().all(|s| s.attr("http.response.status_code").as_deref() == Some("200")),
        "every short request was answered 200"
    );
    let after_short = level(&sonde, prom);

    // 10k keep-alive connections, one request each, then idle.
    let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..IDLE_CONNECTIONS)
            .map(|_| {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
                write!(conn, "GET /idle HTTP/1.1\r\nHost: churn\r\n\r\n").unwrap();
                let mut reply = [0u8; 512];
                let n = conn.read(&mut reply).expect("reading the reply");
                assert!(reply[..n].starts_with(b"HTTP/1.1 200"));
                conn
            })
            .collect()
    })
    .await
    .unwrap();
    let wanted = wanted + IDLE_CONNECTIONS;
    let spans = receiver.wait_for(|s| s.len() >= wanted, Duration::from_secs(60)).await;
    assert_eq!(spans.len(), wanted, "one span per idle connection's request");
    let busy = level(&sonde, prom);
    assert!(
        busy.kernel_conns >= IDLE_CONNECTIONS,
        "the kernel tracks the idle connections: {}",
        busy.kernel_conns
    );
    assert!(busy.tracked >= IDLE_CONNECTIONS as f64, "sonde tracks the idle connections: {}", busy.tracked);
    drop(idle);

    // Closed: nginx sees each close; back to the baseline within a few sweeps. Memory too: the
    // table gives back its slots and the freed heap goes back to the kernel (a few MiB of slack
    // for what the allocator keeps and the pages of the ring buffer touched meanwhile).
    let back = |now: &Level| {
        now.kernel_conns <= base.kernel_conns + 16
            && now.tracked <= base.tracked + 16.0
            && now.heap_kib <= base.heap_kib + HEAP_SLACK_KIB
    };
    let mut now = level(&sonde, prom);
    eventually(Duration::from_secs(20), || {
        now = level(&sonde, prom);
        back(&now)
    });
    eprintln!(
        "CONNS entries: baseline {}, after {SHORT_CONNECTIONS} short {}, with {IDLE_CONNECTIONS} idle {}, after {}",
        base.kernel_conns, after_short.kernel_conns, busy.kernel_conns, now.kernel_conns
    );
    eprintln!(
        "tracked: baseline {}, after short {}, with idle {}, after {}",
        base.tracked, after_short.tracked, busy.tracked, now.tracked
    );
    eprintln!(
        "heap KiB: baseline {}, after short {}, with idle {}, after {}",
        base.heap_kib, after_short.heap_kib, busy.heap_kib, now.heap_kib
    );
    assert!(now.kernel_conns <= base.kernel_conns + 16, "kernel connection map back to its baseline");
    assert!(now.tracked <= base.tracked + 16.0, "sonde's connection table back to its baseline");
    assert!(now.heap_kib <= base.heap_kib + HEAP_SLACK_KIB, "sonde's memory back to its baseline");
    sonde.stop_cleanly();
}
