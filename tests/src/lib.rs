//! Shared pieces of sonde's privileged integration tests.
pub mod bpf_maps;
pub mod chains;
pub mod harness;
pub mod hosts;
pub mod kubeapi;
pub mod prometheus;
pub mod receiver;
pub mod tls;
pub mod trace_check;
