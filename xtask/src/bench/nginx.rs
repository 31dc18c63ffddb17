//! The workload: Debian's nginx, one worker in the foreground with its own config, serving a
//! 17-byte static file on loopback (sendfile on, as in Debian's default config).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use super::procs::{self, ChildGuard};

pub struct Nginx {
    pub port: u16,
    guard: ChildGuard,
    dir: PathBuf,
}

impl Nginx {
    /// `cpus`: pin the worker there (taskset), so it does not trade cores with the load generator.
    pub fn start(cpus: Option<&str>) -> anyhow::Result<Nginx> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("sonde-bench-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("index.html"), "hello from nginx\n")?;
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
        let nginx = Nginx { port, guard, dir };
        procs::wait_listening(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(20))?;
        Ok(nginx)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/index.html", self.port)
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.guard.check_alive()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The guard is dropped after this body: kill nginx first, then its files.
        let _ = self.guard.terminate(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
