//! Shared pieces of sonde's privileged integration tests.
pub mod receiver;
pub mod harness;
