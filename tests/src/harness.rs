//! Processes the integration tests start: the real `sonde` binary, real servers, real clients.
//! Every child is killed when its guard drops, so a failing test leaves nothing running.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The binary under test: `SONDE_BIN` (set by `cargo xtask test`) or the workspace's release build.
/// `d` stretched by `SONDE_TEST_PATIENCE` (a factor, default 1): the kernel matrix runs the tests
/// in emulated guests whose root filesystem is shared over 9p, where starting a Python server
/// takes ten seconds. Every wait in the harness is a deadline for something to happen, never a
/// fixed sleep, so a larger factor only makes a failure slower to report.
pub fn patience(d: Duration) -> Duration {
    let factor = std::env::var("SONDE_TEST_PATIENCE").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(1.0);
    d.mul_f64(factor.clamp(1.0, 100.0))
}

pub fn sonde_bin() -> PathBuf {
    std::env::var_os("SONDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sonde"))
}

/// Whether sonde follows the goroutines of Go programs on this kernel: it reads a goroutine's
/// register from the task's saved registers, with `bpf_task_pt_regs` (5.15) or, before, at the top
/// of the task's kernel stack; `sonde check-kernel` says which. Prints why not.
pub fn goroutines_followed() -> bool {
    let out = std::process::Command::new(sonde_bin())
        .arg("check-kernel")
        .output()
        .expect("running sonde check-kernel");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("goroutines: followed") {
        return true;
    }
    eprintln!("SKIPPED: goroutines are not followed on this kernel:\n{text}");
    false
}

pub fn servers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("servers")
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding port 0")
}

/// A running `sonde run`, stopped with SIGTERM when dropped.
pub struct Sonde {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Sonde {
    /// Starts `sonde run ARGS` and waits until it reports that tracing started.
    pub fn start(args: &[&str]) -> Sonde {
        Self::start_with_env(args, &[])
    }

    /// `sonde run` exporting over OTLP to `endpoint` (`protocol`: `grpc` or `http/protobuf`),
    /// serving its own metrics on a free Prometheus port, printing nothing; `extra` is appended.
    /// Returns the Prometheus address too.
    pub fn start_exporting(endpoint: &str, protocol: &str, extra: &[&str]) -> (Sonde, SocketAddr) {
        let prometheus = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = prometheus.to_string();
        let mut args = vec!["--otlp-endpoint", endpoint, "--otlp-protocol", protocol];
        args.extend(["--prometheus-listen", &listen, "--print", "none"]);
        args.extend_from_slice(extra);
        (Sonde::start(&args), prometheus)
    }

    /// `start` with `env` added to sonde's environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Sonde {
        Self::start_through(&[], args, env)
    }

    /// `start_with_env`, through `wrapper` (a command that runs its last argument as a program,
    /// e.g. `setpriv …`), so that sonde runs with what the wrapper set up.
    pub fn start_through(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Sonde {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(sonde_bin());
                c
            }
            None => Command::new(sonde_bin()),
        };
        let mut child = command
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e} (run `cargo xtask build`)", sonde_bin().display()));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let sonde = Sonde { child: Some(child), stderr, stdout };
        sonde.wait_started(Instant::now() + patience(Duration::from_secs(60)))
    }

    fn wait_started(mut self, deadline: Instant) -> Sonde {
        loop {
            if self.stderr().contains("tracing started") {
                return self;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("sonde exited with {status} before tracing started:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "sonde did not start tracing in time:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `stop`, and fail the test unless sonde exited successfully (its log in the message).
    pub fn stop_cleanly(&mut self) {
        let status = self.stop();
        assert!(status.success(), "sonde exited with {status}:\n{}", self.stderr());
    }

    /// SIGTERM, then wait (bounded) for the exit; returns the status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("sonde already stopped");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        loop {
            if let Some(status) = child.try_wait().expect("waiting for sonde") {
                // Let the readers catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sonde did not exit within 20 s of SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sonde {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut b = out.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

/// A child process killed when dropped (servers).
pub struct Guard {
    pub child: Child,
    pub port: u16,
    pub(crate) _dir: Option<TempDir>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guard {
    /// A server started by the caller, listening (or about to) on `port`.
    pub fn of(child: Child, port: u16) -> Guard {
        Guard { child, port, _dir: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Waits until something accepts connections on 127.0.0.1:port.
pub fn wait_listening(port: u16) {
    wait_listening_on("127.0.0.1", port)
}

pub fn wait_listening_on(ip: &str, port: u16) {
    wait_listening_within(ip, port, Duration::from_secs(20));
}

/// Waits up to `limit` (stretched by the patience factor) until something accepts connections on
/// ip:port.
pub fn wait_listening_within(ip: &str, port: u16, limit: Duration) {
    let ip: std::net::IpAddr = ip.parse().expect("an IP address");
    let deadline = Instant::now() + patience(limit);
    while TcpStream::connect((ip, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `python3 -m http.server PORT` on 127.0.0.1 in a scratch directory holding `index.html`.
pub fn python_http_server(env: &[(&str, &str)]) -> Guard {
    python_http_server_on("127.0.0.1", env)
}

/// `python3 -m http.server PORT --bind ADDR` (e.g. `::1`).
pub fn python_http_server_on(bind: &str, env: &[(&str, &str)]) -> Guard {
    let dir = TempDir::new("http-server");
    std::fs::write(dir.path.join("index.html"), "<h1>hello from python</h1>\n").unwrap();
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", bind])
        .current_dir(&dir.path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting python3 -m http.server");
    wait_listening_on(bind, port);
    Guard { child, port, _dir: Some(dir) }
}

/// `tests/servers/app.py`: keep-alive, chosen statuses, chunked uploads.
pub fn python_app(env: &[(&str, &str)]) -> Guard {
    python_server("app.py", &[], env)
}

/// `python3 tests/servers/SCRIPT PORT ARGS…` with `env`, once it listens on 127.0.0.1:PORT.
pub fn python_server(script: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Guard {
    let port = free_port();
    let child = Command::new("python3")
        .arg(servers_dir().join(script))
        .arg(port.to_string())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting tests/servers/{script}: {e}"));
    wait_listening(port);
    Guard { child, port, _dir: None }
}

/// `tests/servers/chain.py`: one service of a call chain (see the script), named `name`
/// (`OTEL_SERVICE_NAME`), calling each of `downstreams` (base URLs) per request.
pub fn chain_service(name: &str, extra: &[&str], downstreams: &[String]) -> Guard {
    let port = free_port();
    let child = Command::new("python3")
        .arg(servers_dir().join("chain.py"))
        .arg(port.to_string())
        .args(extra)
        .args(downstreams)
        .env("OTEL_SERVICE_NAME", name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tests/servers/chain.py");
    wait_listening(port);
    Guard { child, port, _dir: None }
}

/// The standard variables an OpenTelemetry SDK reads: traces only, over OTLP/HTTP to
/// `traces_url`, exported every 200 ms.
fn sdk_env<'a>(name: &'a str, traces_url: &'a str) -> [(&'static str, &'a str); 7] {
    [
        ("OTEL_SERVICE_NAME", name),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_LOGS_EXPORTER", "none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]
}

/// `tests/servers/sdk_app.py` under `opentelemetry-instrument`: a Flask service with
/// OpenTelemetry's Python SDK, exporting its spans over OTLP/HTTP to `traces_url`.
pub fn sdk_python_service(name: &str, traces_url: &str, downstreams: &[String]) -> Guard {
    let port = free_port();
    // `opentelemetry-instrument` itself, run through the module so that no PATH shim is needed.
    let launcher = "import sys; from opentelemetry.instrumentation.auto_instrumentation import run; \
                    sys.argv[0] = 'opentelemetry-instrument'; run()";
    let child = Command::new("python3")
        .args(["-c", launcher, "python3"])
        .arg(servers_dir().join("sdk_app.py"))
        .arg(port.to_string())
        .args(downstreams)
        .envs(sdk_env(name, traces_url))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tests/servers/sdk_app.py under opentelemetry-instrument");
    // The SDK imports hundreds of modules at start: a second here, but one to three minutes in an
    // emulated guest whose root is on 9p.
    wait_listening_within("127.0.0.1", port, Duration::from_secs(60));
    Guard { child, port, _dir: None }
}

/// `tests/servers/node/sdk_app.js` with OpenTelemetry's zero-code instrumentation for Node
/// (`--require @opentelemetry/auto-instrumentations-node/register`), exporting its spans over
/// OTLP/HTTP to `traces_url`.
pub fn sdk_node_service(name: &str, traces_url: &str, downstreams: &[String]) -> Guard {
    let port = free_port();
    let dir = servers_dir().join("node");
    let child = Command::new("node")
        .args(["--require", "@opentelemetry/auto-instrumentations-node/register", "sdk_app.js"])
        .arg(port.to_string())
        .args(downstreams)
        .current_dir(&dir)
        .envs(sdk_env(name, traces_url))
        // Only HTTP: the other instrumentations (fs, dns, net) would add spans no test asks for.
        .env("OTEL_NODE_ENABLED_INSTRUMENTATIONS", "http")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tests/servers/node/sdk_app.js");
    wait_listening(port);
    Guard { child, port, _dir: None }
}

/// `tests/servers/reset.py`: reads a request, then resets the connection.
pub fn resetting_server() -> Guard {
    python_server("reset.py", &[], &[])
}

/// nginx (Debian) in the foreground with its own config, serving a static file and `/fail` → 500.
/// `sendfile on` as in Debian's default config: file bodies leave through sendfile(2), not write.
pub fn nginx() -> Guard {
    let dir = TempDir::new("nginx");
    let port = free_port();
    std::fs::write(dir.path.join("index.html"), "hello from nginx\n").unwrap();
    std::fs::write(dir.path.join("big.bin"), vec![b'z'; 3 << 20]).unwrap();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port};
    root {d};
    location = /fail {{ return 500; }}
  }}
}}
",
        d = dir.path.display()
    );
    start_nginx(dir, port, &conf)
}

/// nginx in the foreground with `conf` (written to `dir`, its prefix), once it listens on `port`.
pub fn start_nginx(dir: TempDir, port: u16, conf: &str) -> Guard {
    let conf_path = dir.path.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("nginx")
        .args(["-c", &conf_path.to_string_lossy(), "-p", &dir.path.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx (apt-get install nginx-light; `cargo xtask setup` does it)");
    wait_listening(port);
    Guard { child, port, _dir: Some(dir) }
}

/// Runs curl with `args`; returns stdout. Fails the test if curl fails.
pub fn curl(args: &[&str]) -> String {
    let out =
        Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("running curl");
    assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `parts` to a new connection one after the other (TCP_NODELAY, so each is its own segment
/// and its own syscall), then reads until the peer closes or `read_timeout` passes.
pub fn raw_exchange(port: u16, parts: &[&[u8]], read_timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    s.set_nodelay(true).unwrap();
    for part in parts {
        // Peer may close on garbage; later writes then fail, which is fine.
        if s.write_all(part).is_err() {
            break;
        }
    }
    s.set_read_timeout(Some(read_timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Reads one whole `200 ok` reply of `tests/servers/app.py` (it writes the head and the body
/// separately, so one read may not hold both).
pub fn read_ok_reply(conn: &mut TcpStream) {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"\r\n\r\nok\n") {
        let n = conn.read(&mut buf).expect("reading the reply");
        assert!(n > 0, "server closed early: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("sonde-test-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&path).unwrap();
        // nginx workers may drop privileges; let them read the files.
        let _ = Command::new("chmod").args(["-R", "755"]).arg(&path).status();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A cgroup named as a container runtime names a container's (`docker-<id>.scope`,
/// `cri-containerd-<id>.scope`), so that processes moved into it have that container id in
/// /proc/PID/cgroup. Removed when dropped (once its processes are gone).
pub struct ContainerCgroup {
    dir: PathBuf,
}

impl ContainerCgroup {
    /// `runtime_prefix` is e.g. `docker` or `cri-containerd`. Under the cgroup v2 hierarchy (pure,
    /// or the hybrid `unified` mount), else cgroup v1's `pids` controller.
    pub fn create(runtime_prefix: &str, id: &str) -> ContainerCgroup {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a writable cgroup hierarchy (run as root)");
        let dir = root.join(format!("{runtime_prefix}-{id}.scope"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        ContainerCgroup { dir }
    }

    /// Its directory (a cgroup v2 one where the host has v2).
    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A `/proc/PID/status` quantity in KiB: `VmRSS` (all resident memory, the ring buffer's shared
/// pages included), `RssAnon` (the heap and stacks: what a leak would grow), `VmHWM` (peak).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line.split_whitespace().next().and_then(|v| v.parse().ok()).expect("a number of kB")
}

/// How many TCP connections (sockets other than its listeners) `pid` holds open now.
pub fn open_connections(pid: u32, listeners: usize) -> usize {
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing /proc/PID/fd")
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .count();
    sockets.saturating_sub(listeners)
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes; its last answer.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience(timeout);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}
