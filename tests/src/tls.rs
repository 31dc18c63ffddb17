//! HTTPS peers for the TLS tests: a self-signed certificate made per test, Python's `ssl` server
//! (OpenSSL through `_ssl`), nginx with TLS, and a client whose TLS is statically linked (rustls).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::harness::{Guard, TempDir, free_port, python_server, start_nginx};

/// A self-signed certificate for `localhost` / 127.0.0.1 and its key, in `dir`.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificate {
    pub fn new(dir: &Path) -> Certificate {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // An end-entity certificate: rustls refuses a CA certificate presented by a server.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl (apt-get install openssl; `cargo xtask setup` does it)");
        assert!(status.success(), "openssl req failed");
        Certificate { cert, key }
    }
}

/// `https://127.0.0.1:PORT` + `path`.
pub fn https_url(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// `tests/servers/app.py --tls`: keep-alive, chosen statuses, over Python's `ssl` (OpenSSL).
/// `env` reaches the server (e.g. `LD_LIBRARY_PATH` for a library of its own).
pub fn python_tls_app(env: &[(&str, &str)]) -> Guard {
    let dir = TempDir::new("tls-app");
    let certificate = Certificate::new(&dir.path);
    let mut server = python_tls_app_with(&certificate, env);
    server._dir = Some(dir);
    server
}

/// `python_tls_app` presenting `certificate` (for clients that verify it).
pub fn python_tls_app_with(certificate: &Certificate, env: &[(&str, &str)]) -> Guard {
    let args = ["--tls".as_ref(), certificate.cert.as_os_str(), certificate.key.as_os_str()];
    python_server("app.py", &args, env)
}

/// nginx with TLS on a self-signed certificate, keep-alive, answering `ok` to everything.
pub fn nginx_tls() -> Guard {
    let dir = TempDir::new("nginx-tls");
    let certificate = Certificate::new(&dir.path);
    let port = free_port();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ return 200 \"ok\\n\"; }}
  }}
}}
",
        d = dir.path.display(),
        cert = certificate.cert.display(),
        key = certificate.key.display(),
    );
    start_nginx(dir, port, &conf)
}

/// A copy of the system's OpenSSL library in a directory of its own: a process started with
/// `LD_LIBRARY_PATH` set to it loads a file sonde has not hooked yet.
pub fn private_libssl(dir: &Path) -> PathBuf {
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib/aarch64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("libssl.so.3 (apt-get install libssl3)");
    let copy = dir.join("libssl.so.3");
    std::fs::copy(&system, &copy).expect("copying libssl.so.3");
    copy
}
