//! The workload: Debian's nginx, one worker in the foreground with its own config, serving a
//! 17-byte static file on loopback (sendfile on, as in Debian's default config). A second port,
//! which sonde does not trace, serves `stub_status`: how many requests nginx itself answered.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use super::procs::{self, ChildGuard};

use anyhow::Context as _;

pub struct Nginx {
    pub port: u16,
    /// The same site over TLS (a self-signed certificate made at start).
    pub tls_port: u16,
    status_port: u16,
    guard: ChildGuard,
    dir: PathBuf,
}

impl Nginx {
    /// `cpus`: pin the worker there (taskset), so it does not trade cores with the load generator.
    pub fn start(cpus: Option<&str>) -> anyhow::Result<Nginx> {
        let free = || anyhow::Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port());
        let (port, tls_port, status_port) = (free()?, free()?, free()?);
        let dir = std::env::temp_dir().join(format!("sonde-bench-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("index.html"), "hello from nginx\n")?;
        self_signed_certificate(&dir)?;
        let d = dir.display();
        // 1,000 keep-alive connections need worker_connections (and descriptors) to spare.
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {d};
  }}
  server {{
    listen 127.0.0.1:{tls_port} ssl backlog=4096;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    root {d};
  }}
  server {{
    listen 127.0.0.1:{status_port};
    location = /status {{ stub_status; }}
  }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        // nginx may drop privileges to www-data: let it read the files.
        let _ = Command::new("chmod").args(["-R", "755"]).arg(&dir).status();
        let mut cmd = procs::pinned(cpus, "nginx");
        cmd.args(["-c", &conf_path.to_string_lossy(), "-p", &dir.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let guard = ChildGuard::spawn("nginx", &mut cmd)?;
        let nginx = Nginx { port, tls_port, status_port, guard, dir };
        procs::wait_listening(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(20))?;
        Ok(nginx)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/index.html", self.port)
    }

    /// The URL of a file of `bytes` zeros (sparse: it takes no disk), made on first use.
    pub fn large_file_url(&self, bytes: u64) -> anyhow::Result<String> {
        let name = format!("zeros-{bytes}.bin");
        let path = self.dir.join(&name);
        if !path.exists() {
            std::fs::File::create(&path)?.set_len(bytes)?;
        }
        Ok(format!("http://127.0.0.1:{}/{name}", self.port))
    }

    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}/index.html", self.tls_port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn status(&self) -> Status {
        Status { port: self.status_port }
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.guard.check_alive()
    }
}

/// nginx's `stub_status` port.
#[derive(Clone, Copy)]
pub struct Status {
    port: u16,
}

impl Status {
    /// Requests nginx has answered so far (this query included).
    pub fn requests(self) -> anyhow::Result<u64> {
        let body = procs::get_status(self.port)?;
        parse_requests(&body).with_context(|| format!("unexpected stub_status:\n{body}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The guard is dropped after this body: kill nginx first, then its files.
        let _ = self.guard.terminate(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// cert.pem and key.pem in `dir`, for 127.0.0.1.
pub(super) fn self_signed_certificate(dir: &std::path::Path) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?;
    anyhow::ensure!(status.success(), "openssl req failed");
    Ok(())
}

/// `…server accepts handled requests\n 5 5 42 \n…` → 42.
fn parse_requests(status: &str) -> Option<u64> {
    let mut lines = status.lines().skip_while(|l| !l.contains("accepts handled requests"));
    lines.nth(1)?.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stub_status() {
        let body = "HTTP/1.1 200 OK\r\n\r\nActive connections: 1 \nserver accepts handled requests\n \
                    5 5 42 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(super::parse_requests(body), Some(42));
    }
}
