//! Privileged: a pid or a thread id handed out again never carries what its previous owner left
//! behind — an unanswered request, the service it belonged to, a request it was handling. The
//! ids are forced through /proc/sys/kernel/ns_last_pid, as a busy host or a small `pid_max`
//! would hand them out sooner or later.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sonde_tests::{
    harness::{self, Sonde, curl, free_port, wait_listening},
    receiver::{ReceivedSpan, Receiver},
};

/// A child process killed when dropped (the test may panic).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tests/servers/reuse.py PORT MODE CALL_PORT` as `service`.
fn reuse_py(port: u16, mode: &str, call_port: u16, service: &str) -> Killed {
    let child = Command::new("python3")
        .arg(harness::servers_dir().join("reuse.py"))
        .args([port.to_string(), mode.to_owned(), call_port.to_string()])
        .env("OTEL_SERVICE_NAME", service)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting tests/servers/reuse.py");
    Killed(child)
}

/// Makes the kernel hand out `pid` next (if nobody else forks first).
fn force_next_pid(pid: u32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("writing ns_last_pid");
}

/// Sends a request the server will read and leave unanswered.
fn leave_unanswered(port: u16, path: &str) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(conn, "GET {path} HTTP/1.1\r\nHost: reuse\r\n\r\n").unwrap();
    conn
}

/// The span of `kind` for a request to `path` (a CLIENT span names it in `url.full`).
fn find<'a>(spans: &'a [ReceivedSpan], kind: &str, path: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| {
        s.kind_name() == kind
            && (s.attr("url.path").as_deref() == Some(path)
                || s.attr("url.full").is_some_and(|url| url.ends_with(path)))
    })
}

fn sonde_for(receiver: &Receiver, ports: &[u16]) -> Sonde {
    let endpoint = receiver.grpc_endpoint();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc", "--print", "none"];
    for port in &ports {
        args.extend(["--port", port]);
    }
    Sonde::start(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_pid_starts_clean() {
    let receiver = Receiver::start().await.unwrap();
    let callee = harness::python_app(&[("OTEL_SERVICE_NAME", "callee")]);
    let (old_port, new_port) = (free_port(), free_port());
    let mut sonde = sonde_for(&receiver, &[old_port, new_port, callee.port]);

    // The old owner reads a request on its main thread and exits without answering it: the
    // kernel closes its socket, with no close() call for the probes to see.
    let mut old = reuse_py(old_port, "vanish", callee.port, "old-owner");
    wait_listening(old_port);
    let _unanswered = leave_unanswered(old_port, "/left-unanswered");
    old.0.wait().expect("the old owner exits");
    let pid = old.0.id();

    // The newcomer gets the same pid (and so the same main thread id). It calls the callee from
    // that thread before serving anything, then serves on the fd number the old owner used.
    let mut newcomer = None;
    for _ in 0..50 {
        force_next_pid(pid);
        let child = reuse_py(new_port, "call-then-serve", callee.port, "newcomer");
        if child.0.id() == pid {
            newcomer = Some(child);
            break;
        }
    }
    let newcomer = newcomer.unwrap_or_else(|| panic!("pid {pid} was not handed out again in 50 tries"));
    wait_listening(new_port);
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{new_port}/to-newcomer")]);

    let spans = receiver
        .wait_for(
            |s| {
                find(s, "SERVER", "/to-newcomer").is_some()
                    && find(s, "CLIENT", "/newcomer-call").is_some()
                    && find(s, "SERVER", "/newcomer-call").is_some()
            },
            Duration::from_secs(20),
        )
        .await;
    let served = find(&spans, "SERVER", "/to-newcomer").unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(served.resource.get("service.name").map(String::as_str), Some("newcomer"), "{served:#?}");
    assert_eq!(served.resource.get("process.pid").map(String::as_str), Some(pid.to_string().as_str()));
    let call = find(&spans, "CLIENT", "/newcomer-call").unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(call.resource.get("service.name").map(String::as_str), Some("newcomer"), "{call:#?}");
    assert_eq!(
        call.parent_span_id_hex(),
        None,
        "the newcomer's call is not a child of the request its pid's old owner left unanswered"
    );
    assert_eq!(served.attr("http.response.status_code").as_deref(), Some("200"));
    // The old owner's request ended with it: reported on its own, as a request the server never
    // answered, not paired with anything of the newcomer's, and not in the newcomer's name even
    // if sonde read /proc/PID only after the newcomer had it (the kernel's start time tells).
    if let Some(left) = find(&spans, "SERVER", "/left-unanswered") {
        assert_eq!(left.attr("http.response.status_code"), None, "{left:#?}");
        assert_eq!(left.attr("error.type").as_deref(), Some("connection_closed"), "{left:#?}");
        assert_ne!(left.resource.get("service.name").map(String::as_str), Some("newcomer"), "{left:#?}");
    }
    drop(newcomer);
    sonde.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_thread_id_starts_clean() {
    let receiver = Receiver::start().await.unwrap();
    let callee = harness::python_app(&[("OTEL_SERVICE_NAME", "callee")]);
    let port = free_port();
    let mut sonde = sonde_for(&receiver, &[port, callee.port]);

    // A thread reads a request and exits without answering; the next thread with its id calls
    // the callee.
    let mut server = reuse_py(port, "thread-reuse", callee.port, "threads");
    wait_listening(port);
    let _unanswered = leave_unanswered(port, "/thread-left-unanswered");
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("reused"), "the thread id was not handed out again: {line}");

    let spans = receiver
        .wait_for(
            |s| find(s, "CLIENT", "/thread-call").is_some() && find(s, "SERVER", "/thread-call").is_some(),
            Duration::from_secs(20),
        )
        .await;
    let call = find(&spans, "CLIENT", "/thread-call").unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(
        call.parent_span_id_hex(),
        None,
        "the call is not a child of the request the thread id's old owner left unanswered"
    );
    drop(server);
    sonde.stop_cleanly();
}
