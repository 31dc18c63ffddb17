//! The Go workload: the tests' plain `net/http` service (tests/servers/go/chain.go) with no
//! downstream, built by Debian's Go 1.19, answering `GET /req/1` at once. sonde follows its
//! goroutines (three uprobes in the executable, the goroutine read at every socket hook), which
//! is what this workload adds to nginx's. `GET /status` answers how many `/req/` requests it
//! served (on the traced port: each run's two status queries are two spans among tens of
//! thousands). Over HTTPS (crypto/tls, a self-signed certificate) sonde also reads the plaintext
//! through its uprobes in the executable's `crypto/tls`; `/status` is then asked on a plain port
//! of the same process.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use super::procs::{self, ChildGuard};
use crate::sh;

/// Debian's `golang-1.19-go` (`cargo xtask setup` installs it).
const GO: &str = "/usr/lib/go-1.19/bin/go";

pub struct GoServer {
    pub port: u16,
    /// The plain HTTP port `/status` is asked on (`port` itself unless over HTTPS).
    status_port: u16,
    tls: bool,
    guard: ChildGuard,
}

impl GoServer {
    /// Builds the service into `work` and starts it, pinned to `cpus`; with `tls`, serving HTTPS.
    pub fn start(cpus: Option<&str>, work: &Path, tls: bool) -> anyhow::Result<GoServer> {
        let binary = work.join("sonde-bench-go");
        let out = Command::new(GO)
            .args(["build", "-o"])
            .arg(&binary)
            .arg(sh::root().join("tests/servers/go/chain.go"))
            // The standard library only: no modules, no toolchain download.
            .env("GO111MODULE", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", sh::root().join("target/test-servers/go-cache"))
            .env("GOPATH", work.join("go-path"))
            .output()
            .with_context(|| format!("running {GO} (cargo xtask setup installs golang-1.19-go)"))?;
        anyhow::ensure!(out.status.success(), "go build: {}", String::from_utf8_lossy(&out.stderr));
        let free_port = || -> anyhow::Result<u16> {
            Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
        };
        let port = free_port()?;
        let mut status_port = port;
        let mut cmd = procs::pinned(cpus, &binary.to_string_lossy());
        if tls {
            let dir = work.join("go-tls");
            std::fs::create_dir_all(&dir)?;
            super::nginx::self_signed_certificate(&dir)?;
            status_port = free_port()?;
            cmd.arg("-cert").arg(dir.join("cert.pem")).arg("-key").arg(dir.join("key.pem"));
            cmd.args(["-plain", &status_port.to_string()]);
        }
        cmd.arg(port.to_string())
            .env("OTEL_SERVICE_NAME", "bench-go")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let guard = ChildGuard::spawn("the Go server", &mut cmd)?;
        let server = GoServer { port, status_port, tls, guard };
        for port in [port, status_port] {
            procs::wait_listening(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(20))?;
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/req/1", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn status_port(&self) -> u16 {
        self.status_port
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn status(&self) -> Status {
        Status { port: self.status_port }
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.guard.check_alive()
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.guard.terminate(Duration::from_secs(5));
    }
}

/// The service's `/status`.
#[derive(Clone, Copy)]
pub struct Status {
    port: u16,
}

impl Status {
    /// `/req/` requests answered so far.
    pub fn requests(self) -> anyhow::Result<u64> {
        let reply = procs::get_status(self.port)?;
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        body.trim().parse().with_context(|| format!("unexpected /status reply:\n{reply}"))
    }
}
