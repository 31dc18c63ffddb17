//! `cargo build --release` of the agent; its build.rs compiles the kernel programs with nightly.

use std::path::PathBuf;

use crate::sh;

pub fn release() -> anyhow::Result<PathBuf> {
    sh::run(sh::cargo().args(["build", "--release", "-p", "sonde"]))?;
    Ok(sh::root().join("target/release/sonde"))
}
