//! `sonde demo`: a chain of four plain local services — gateway → auth, gateway → cart →
//! payments, payments deliberately slow — traced by sonde while a few requests go through it.
//! The services and the client that sends the requests are child processes running `sonde
//! demo-service` (separate processes: sonde traces neither itself nor the other end of its own
//! connections); the services are selected by pid so nothing else on the host shows up.

pub mod service;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{config::DemoArgs, run};

/// Pause between two requests through the chain.
const BETWEEN_REQUESTS: Duration = Duration::from_millis(300);
/// After the last request: long enough for its trace to be printed and exported.
const LINGER: Duration = Duration::from_millis(2500);

/// A demo service process, ended when dropped.
struct Service {
    child: Child,
    addr: SocketAddr,
}

impl Service {
    fn start(exe: &Path, name: &str, delay_ms: u64, calls: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args(["demo-service", "--delay-ms", &delay_ms.to_string()]);
        for call in calls {
            cmd.args(["--call", &call.to_string()]);
        }
        let mut child = cmd
            .env("OTEL_SERVICE_NAME", name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the demo's {name} service"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("demo service stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line.trim().parse().with_context(|| format!("{name} did not report its port"))?;
        Ok(Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the sonde binary")?;
    let payments = Service::start(&exe, "payments", args.slow_ms, &[])?;
    let auth = Service::start(&exe, "auth", 5, &[])?;
    let cart = Service::start(&exe, "cart", 10, &[payments.addr])?;
    let gateway = Service::start(&exe, "gateway", 2, &[auth.addr, cart.addr])?;
    eprintln!(
        "sonde demo: gateway ({}) → auth, gateway → cart → payments; payments takes {} ms. \
         {} requests, then the demo ends.",
        gateway.addr, args.slow_ms, args.requests
    );
    let mut run_args = args.run;
    run_args.pids = [&payments, &auth, &cart, &gateway].iter().map(|s| s.child.id()).collect();
    let (requests, entry) = (args.requests, gateway.addr);
    run::run_with(run_args, move |stop| {
        std::thread::spawn(move || {
            // A client process of its own, not traced: the gateway's SERVER span is each
            // trace's root.
            let sent = Command::new(&exe)
                .args(["demo-service", "--send", &requests.to_string(), "--call", &entry.to_string()])
                .args(["--delay-ms", &BETWEEN_REQUESTS.as_millis().to_string()])
                .status();
            if let Err(e) = sent {
                eprintln!("sonde demo: the client did not run: {e}");
            }
            std::thread::sleep(LINGER);
            stop.stop();
        });
    })
}
