//! sonde's agent, one module per stage of the data flow:
//!
//! `probes` (load and attach the kernel programs) → `intake` (ring buffer → events) → `conn`
//! (connection table) → `http` (HTTP/1.x parsing per direction) → `link` (trace context: ids and
//! parents, in-process and across processes on this host) → `span` (span assembly) → `export`
//! (OTLP, terminal, JSON). `process` supplies the resource of each traced process;
//! `config` holds the command line and environment.

pub mod config;
pub mod conn;
pub mod demo;
pub mod export;
pub mod heap;
pub mod http;
pub mod http2;
pub mod intake;
pub mod link;
pub mod metadata;
pub mod metrics;
pub mod pipeline;
pub mod probes;
pub mod process;
pub mod run;
pub mod sched;
pub mod semconv;
pub mod span;
