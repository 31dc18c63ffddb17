//! `cargo build --release` of the agent; its build.rs compiles the kernel programs with nightly.

use std::path::PathBuf;

use crate::sh;

/// Builds sonde and returns where cargo put it: under `CARGO_TARGET_DIR` when that is set
/// (relative to the workspace, where cargo runs), else under target/.
pub fn release() -> anyhow::Result<PathBuf> {
    sh::run(sh::cargo().args(["build", "--release", "-p", "sonde"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| sh::root().join("target"), |dir| sh::root().join(dir));
    Ok(target.join("release/sonde"))
}
