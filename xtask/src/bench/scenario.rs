//! What the bench runs: scenarios (one way of loading nginx, or a Go service, each) and profiles
//! (how many rounds of how long). Rates are fixed numbers, not fractions of a measured maximum, so runs on different
//! days and machines measure the same thing. The high rates sit at about half of what untraced
//! nginx serves on the 2-core machines this project runs on (~20k req/s keep-alive, ~9k new
//! connections/s with wrk), so latency is measured below saturation, where it means something.

use std::time::Duration;

use serde::Serialize;

use super::load::Load;

#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub load: Load,
    /// HTTPS (nginx's TLS port): sonde reads the plaintext through its OpenSSL hooks.
    pub tls: bool,
    /// More arguments for `sonde run` in this scenario's sonde variant.
    pub sonde_args: &'static [&'static str],
    pub server: Server,
}

/// Which server a scenario loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Server {
    Nginx,
    /// A plain Go `net/http` service (`goserver.rs`): sonde follows its goroutines (and with
    /// `tls`, reads its `crypto/tls`).
    Go,
}

const fn scenario(name: &'static str, rate: Option<u32>, connections: u32, keepalive: bool) -> Scenario {
    Scenario {
        name,
        load: Load { rate, connections, keepalive },
        tls: false,
        sonde_args: &[],
        server: Server::Nginx,
    }
}

const fn https(name: &'static str, rate: Option<u32>, connections: u32) -> Scenario {
    Scenario {
        name,
        load: Load { rate, connections, keepalive: true },
        tls: true,
        sonde_args: &[],
        server: Server::Nginx,
    }
}

/// The Go service over 50 keep-alive connections, over HTTPS with `tls`.
const fn go(name: &'static str, rate: Option<u32>, tls: bool) -> Scenario {
    Scenario {
        name,
        load: Load { rate, connections: 50, keepalive: true },
        tls,
        sonde_args: &[],
        server: Server::Go,
    }
}

/// `--context-propagation tcp` beside a scenario without it: what choosing contexts in the kernel
/// costs nginx's side (each request read gets ids; the load generator is not traced, so no
/// request it writes carries an option, and nginx's sockets run the sockops program only when
/// one arrives).
const fn with_propagation(name: &'static str, rate: Option<u32>, keepalive: bool) -> Scenario {
    Scenario {
        name,
        load: Load { rate, connections: 50, keepalive },
        tls: false,
        sonde_args: &["--context-propagation", "tcp"],
        server: Server::Nginx,
    }
}

/// Saturation (wrk) and fixed rates (oha), keep-alive and a new connection per request, 1,000
/// idle-ish keep-alive connections for memory, and HTTPS keep-alive (the uprobes' own cost: wrk
/// uses OpenSSL too, so its calls trap into the hooks as well — as any OpenSSL client's on a
/// traced host would; oha's TLS is rustls, compiled in).
const ALL: &[Scenario] = &[
    scenario("max keep-alive", None, 50, true),
    scenario("max new-conn", None, 50, false),
    scenario("2k/s keep-alive", Some(2_000), 50, true),
    scenario("10k/s keep-alive", Some(10_000), 50, true),
    scenario("2k/s new-conn", Some(2_000), 50, false),
    scenario("5k/s new-conn", Some(5_000), 50, false),
    scenario("max 1000 conns", None, 1_000, true),
    https("max https", None, 50),
    https("2k/s https", Some(2_000), 50),
    with_propagation("max keep-alive +tcp context", None, true),
    with_propagation("2k/s new-conn +tcp context", Some(2_000), false),
    go("max keep-alive go", None, false),
    go("2k/s keep-alive go", Some(2_000), false),
    go("max keep-alive go https", None, true),
    go("2k/s keep-alive go https", Some(2_000), true),
];

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub name: &'static str,
    /// A/B rounds: each round runs every variant once, alternating the order.
    pub rounds: u32,
    pub run: Duration,
    /// Extra rounds of null probe and sonde with BPF run-time statistics on, and their length.
    pub kernel_rounds: u32,
    pub kernel_run: Duration,
    /// Untimed load before the first round of a scenario (connections, caches, CPU frequency).
    pub warmup: Duration,
    pub scenarios: Vec<Scenario>,
    /// Rounds of bulk non-HTTP TCP (iperf3) with sonde tracing the whole node, and their length.
    pub bulk_rounds: u32,
    pub bulk_run: Duration,
    /// Rounds of large downloads (nginx → curl) with sonde tracing the whole node.
    pub download_rounds: u32,
    /// Rounds of wrk saturating nginx with sonde tracing the whole node, and their length.
    pub saturation_rounds: u32,
    pub saturation_run: Duration,
}

impl Profile {
    pub fn full() -> Profile {
        Profile {
            name: "full",
            rounds: 5,
            run: Duration::from_secs(10),
            kernel_rounds: 3,
            kernel_run: Duration::from_secs(4),
            warmup: Duration::from_secs(2),
            scenarios: ALL.to_vec(),
            bulk_rounds: 3,
            bulk_run: Duration::from_secs(4),
            download_rounds: 3,
            saturation_rounds: 3,
            saturation_run: Duration::from_secs(10),
        }
    }

    /// A first look in under 3 minutes.
    pub fn quick() -> Profile {
        Profile {
            name: "quick",
            rounds: 2,
            run: Duration::from_secs(2),
            kernel_rounds: 1,
            kernel_run: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            scenarios: ALL.to_vec(),
            bulk_rounds: 2,
            bulk_run: Duration::from_secs(2),
            download_rounds: 2,
            saturation_rounds: 2,
            saturation_run: Duration::from_secs(3),
        }
    }

    /// Keeps the harness working (`cargo xtask test`): seconds, numbers without meaning.
    pub fn smoke() -> Profile {
        Profile {
            name: "smoke",
            rounds: 1,
            run: Duration::from_secs(1),
            kernel_rounds: 1,
            kernel_run: Duration::from_secs(1),
            warmup: Duration::ZERO,
            scenarios: vec![ALL[0].clone(), ALL[2].clone(), ALL[7].clone(), ALL[11].clone(), ALL[13].clone()],
            bulk_rounds: 1,
            bulk_run: Duration::from_secs(1),
            download_rounds: 1,
            saturation_rounds: 1,
            saturation_run: Duration::from_secs(1),
        }
    }
}
