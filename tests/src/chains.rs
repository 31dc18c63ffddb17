//! Call-chain services in other runtimes than Python's thread per request — Go's `net/http`
//! (goroutines on a few threads) and Node's `http` (one event loop) — each the same small service:
//! `GET /req/{n}` calls `GET DOWNSTREAM/req/{n}` on each downstream over keep-alive connections,
//! then answers 200 (see `tests/servers/go/chain.go` and `tests/servers/node/chain.js`).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Barrier, OnceLock},
    time::Duration,
};

use crate::{
    harness::{Guard, free_port, servers_dir, wait_listening},
    tls::Certificate,
};

/// Debian's `golang-1.19-go` (`cargo xtask setup` installs it); `SONDE_TEST_GO` overrides it.
const GO: &str = "/usr/lib/go-1.19/bin/go";
/// The Go service's executable name, for sonde's `--exe`.
pub const GO_EXE: &str = "sonde-chain-go";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Go,
    Node,
}

impl Runtime {
    /// The `--exe` glob that selects this runtime's services (and not curl or the test itself).
    pub fn exe_glob(self) -> &'static str {
        match self {
            Runtime::Go => GO_EXE,
            Runtime::Node => "node",
        }
    }
}

/// How one service of the chain behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Wait this long before answering (after the downstream calls)…
    pub delay_ms: u32,
    /// …plus a random part of this.
    pub jitter_ms: u32,
    /// Call the downstreams all at once instead of one after the other.
    pub parallel: bool,
}

/// One service of a chain in `runtime`, named `name` (`OTEL_SERVICE_NAME`), calling each of
/// `downstreams` (base URLs) per request; killed when the guard drops.
pub fn chain_service(runtime: Runtime, name: &str, behaviour: Behaviour, downstreams: &[String]) -> Guard {
    start_service(runtime, None, None, name, behaviour, downstreams)
}

/// The Go chain service as built into `binary` (by another toolchain, or stripped: see
/// [`build_go_chain`]), as [`chain_service`] starts it.
pub fn go_chain_service(binary: &Path, name: &str, behaviour: Behaviour, downstreams: &[String]) -> Guard {
    start_service(Runtime::Go, Some(binary), None, name, behaviour, downstreams)
}

/// [`go_chain_service`] serving HTTPS with `certificate` (Go's `crypto/tls`); its downstreams are
/// `https://` URLs ([`crate::tls::https_url`]), whose certificates it does not check.
pub fn go_https_chain_service(
    binary: &Path,
    certificate: &Certificate,
    name: &str,
    behaviour: Behaviour,
    downstreams: &[String],
) -> Guard {
    start_service(Runtime::Go, Some(binary), Some(certificate), name, behaviour, downstreams)
}

fn start_service(
    runtime: Runtime,
    go_binary: Option<&Path>,
    certificate: Option<&Certificate>,
    name: &str,
    behaviour: Behaviour,
    downstreams: &[String],
) -> Guard {
    let port = free_port();
    let mut command = match runtime {
        Runtime::Go => {
            let mut c = Command::new(go_binary.unwrap_or_else(|| go_chain_binary()));
            c.args(["-delay", &format!("{}ms", behaviour.delay_ms)]);
            c.args(["-jitter", &format!("{}ms", behaviour.jitter_ms)]);
            if behaviour.parallel {
                c.arg("-parallel");
            }
            if let Some(certificate) = certificate {
                c.arg("-cert").arg(&certificate.cert).arg("-key").arg(&certificate.key);
            }
            c
        }
        Runtime::Node => {
            let mut c = Command::new("node");
            c.arg(servers_dir().join("node/chain.js"));
            c.args(["--delay", &behaviour.delay_ms.to_string()]);
            c.args(["--jitter", &behaviour.jitter_ms.to_string()]);
            if behaviour.parallel {
                c.arg("--parallel");
            }
            c
        }
    };
    let child = command
        .arg(port.to_string())
        .args(downstreams)
        .env("OTEL_SERVICE_NAME", name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the {runtime:?} chain service {name}: {e}"));
    let guard = Guard { child, port, _dir: None };
    wait_listening(port);
    guard
}

/// `tests/servers/go/chain.go`, built once per source: cached under the target directory by the
/// hash of the source, so only its first use on a machine pays for the compiler.
pub fn go_chain_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let go = std::env::var_os("SONDE_TEST_GO").map_or_else(|| PathBuf::from(GO), PathBuf::from);
        build_go_chain(&go, false)
    })
}

/// The Go toolchains the Go binary tests build with: Debian's `golang-1.19-go` and, from
/// bookworm-backports, `golang-1.23-go` (`cargo xtask setup` installs both).
pub const GO_TOOLCHAINS: &[&str] = &[GO, "/usr/lib/go-1.23/bin/go"];

/// `tests/servers/go/chain.go` built by the toolchain `go`, with `-s -w` (no symbol table, no
/// DWARF) when `stripped`; cached like [`go_chain_binary`].
pub fn build_go_chain(go: &Path, stripped: bool) -> PathBuf {
    let source = servers_dir().join("go/chain.go");
    let text = std::fs::read(&source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
    let ldflags = if stripped { "-s -w" } else { "" };
    let key = fnv1a(&[&text, go.as_os_str().as_encoded_bytes(), ldflags.as_bytes()]);
    let root = target_dir().join("test-servers");
    let dir = root.join(format!("go-chain-{key:016x}"));
    let binary = dir.join(GO_EXE);
    if binary.exists() {
        return binary;
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    // Built under a name of its own, then renamed: a concurrent test run never starts half a file.
    let partial = dir.join(format!("{GO_EXE}.partial-{}", std::process::id()));
    let out = Command::new(go)
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(&partial)
        .arg(&source)
        // No modules: the source imports the standard library only, and there is no module proxy.
        .env("GO111MODULE", "off")
        // The toolchain installed, never one fetched (there is no network for it).
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", root.join("go-cache"))
        .env("GOPATH", root.join("go-path"))
        .output()
        .unwrap_or_else(|e| {
            panic!("running {}: {e} (`cargo xtask setup` installs the Go toolchains)", go.display())
        });
    assert!(out.status.success(), "go build {}:\n{}", source.display(), String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&partial, &binary).unwrap_or_else(|e| panic!("renaming {}: {e}", partial.display()));
    binary
}

/// `CARGO_TARGET_DIR` when set, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`, so the cache key is too.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that moving bytes from one part to the next changes the key.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `GET /req/{n}` on the service at `port` (the chain's first) from each of `ns`, all at once (released together by a barrier), each on a
/// connection of its own; returns each reply's status line.
pub fn concurrent_requests(port: u16, ns: Vec<u32>) -> Vec<(u32, String)> {
    concurrent(ns, |n, barrier| {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connecting to A");
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let request = format!("GET /req/{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        barrier.wait();
        conn.write_all(request.as_bytes()).expect("sending the request");
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        reply.lines().next().unwrap_or("").to_owned()
    })
}

/// [`concurrent_requests`] over HTTPS (HTTP/1.1), each from a `curl` of its own.
pub fn concurrent_https_requests(port: u16, ns: Vec<u32>) -> Vec<(u32, String)> {
    concurrent(ns, |n, barrier| {
        let url = crate::tls::https_url(port, &format!("/req/{n}"));
        let mut curl = Command::new("curl");
        curl.args(["-sSik", "--http1.1", "--max-time", "20", &url]);
        barrier.wait();
        let out = curl.output().expect("running curl");
        let reply = String::from_utf8_lossy(&out.stdout);
        reply.lines().next().unwrap_or("").trim_end().to_owned()
    })
}

/// `request(n, barrier)` for each of `ns`, each on a thread of its own; a request waits at the
/// barrier just before it is sent, so that all are sent at once.
fn concurrent(ns: Vec<u32>, request: impl Fn(u32, &Barrier) -> String + Sync) -> Vec<(u32, String)> {
    let barrier = Barrier::new(ns.len());
    std::thread::scope(|scope| {
        let (barrier, request) = (&barrier, &request);
        let threads: Vec<_> = ns.into_iter().map(|n| scope.spawn(move || (n, request(n, barrier)))).collect();
        threads.into_iter().map(|t| t.join().expect("a request thread")).collect()
    })
}
