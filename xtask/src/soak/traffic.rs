//! The soak's traffic: one oha per kind of use, all at fixed rates and all running for the whole
//! soak, so that every path through sonde (keep-alive, a connection per request, error responses,
//! TLS with and without handshakes) is exercised at once. Each oha runs for bounded segments of
//! at most `SEGMENT`, back to back: oha keeps every latency in memory until it exits, and a
//! segment's end is also when its counts become known and when a stop request is honoured.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::bench::load::{self, Load};

/// The longest an oha process runs; also the longest a stop request waits.
const SEGMENT: Duration = Duration::from_secs(30);
/// A segment shorter than this is not worth starting a process for.
const MIN_SEGMENT: Duration = Duration::from_secs(1);

/// One kind of traffic: a share of the total rate, a way of connecting, a path.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stream {
    pub name: &'static str,
    /// Per mille of the total rate.
    pub share: u32,
    /// oha workers (connections in flight at most).
    pub connections: u32,
    pub keepalive: bool,
    pub tls: bool,
    pub path: &'static str,
}

/// Shares add up to 1000. Concurrency adds up to 50, so at most ~50 connections are open at once:
/// what sonde's per-connection state should stay near, whatever the run's length.
pub const STREAMS: &[Stream] = &[
    Stream {
        name: "keep-alive",
        share: 400,
        connections: 20,
        keepalive: true,
        tls: false,
        path: "/index.html",
    },
    Stream {
        name: "new-conn",
        share: 200,
        connections: 10,
        keepalive: false,
        tls: false,
        path: "/index.html",
    },
    // nginx has no such file: a 404 on a keep-alive connection.
    Stream { name: "404", share: 100, connections: 5, keepalive: true, tls: false, path: "/soak-missing" },
    Stream { name: "https", share: 250, connections: 10, keepalive: true, tls: true, path: "/index.html" },
    // A TLS handshake per request: TLS state is made and dropped all the time.
    Stream {
        name: "https new-conn",
        share: 50,
        connections: 5,
        keepalive: false,
        tls: true,
        path: "/index.html",
    },
];

/// What one stream's oha runs reported, added up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamTotals {
    pub name: &'static str,
    pub rate: u32,
    /// Responses received (any status).
    pub requests: u64,
    /// Failed requests plus non-2xx responses (all of them for the 404 stream).
    pub errors: u64,
    pub segments: u32,
    /// oha runs that failed (no counts from those).
    pub failed_segments: u32,
    pub last_failure: Option<String>,
    /// The worst segment's p99 latency (µs): a latency that degrades over the soak shows here.
    pub worst_p99_us: f64,
}

/// The streams, running in their own threads until `deadline` or a stop.
pub struct Traffic {
    totals: Vec<Arc<Mutex<StreamTotals>>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Traffic {
    /// `rate`: total requests per second, split by the streams' shares.
    pub fn start(http_port: u16, tls_port: u16, rate: u32, deadline: Instant, work: &Path) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut totals = Vec::new();
        let mut threads = Vec::new();
        for stream in STREAMS {
            let (scheme, port) = if stream.tls { ("https", tls_port) } else { ("http", http_port) };
            let url = format!("{scheme}://127.0.0.1:{port}{}", stream.path);
            let stream_rate = (u64::from(rate) * u64::from(stream.share) / 1000).max(1) as u32;
            let load = Load {
                rate: Some(stream_rate),
                connections: stream.connections,
                keepalive: stream.keepalive,
            };
            let total = Arc::new(Mutex::new(StreamTotals {
                name: stream.name,
                rate: stream_rate,
                ..Default::default()
            }));
            totals.push(total.clone());
            let (stop, work) = (stop.clone(), work.to_path_buf());
            threads.push(std::thread::spawn(move || drive(&load, &url, deadline, &stop, &total, &work)));
        }
        Traffic { totals, threads, stop }
    }

    /// Responses the streams' finished segments received.
    pub fn completed(&self) -> u64 {
        self.snapshot().iter().map(|t| t.requests).sum()
    }

    pub fn snapshot(&self) -> Vec<StreamTotals> {
        self.totals.iter().map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).clone()).collect()
    }

    /// Waits for the running segments to end (at most `SEGMENT` after a stop or the deadline).
    pub fn finish(mut self, stop_early: bool) -> Vec<StreamTotals> {
        if stop_early {
            self.stop.store(true, Ordering::Relaxed);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Traffic {
    /// An early return must not leave load running: stop and wait (the segments are bounded).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn drive(
    load: &Load,
    url: &str,
    deadline: Instant,
    stop: &AtomicBool,
    total: &Mutex<StreamTotals>,
    work: &Path,
) {
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < MIN_SEGMENT {
            break;
        }
        let result = load::run(load, url, left.min(SEGMENT), None, work);
        let mut t = total.lock().unwrap_or_else(PoisonError::into_inner);
        t.segments += 1;
        match result {
            Ok(r) => {
                t.requests += r.requests;
                t.errors += r.errors;
                if r.p99_us.is_finite() {
                    t.worst_p99_us = t.worst_p99_us.max(r.p99_us);
                }
            }
            Err(e) => {
                t.failed_segments += 1;
                t.last_failure = Some(format!("{e:#}"));
                drop(t);
                // Do not spin on a load generator that cannot start.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
