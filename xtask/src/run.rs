//! `cargo xtask run|demo -- <args>`: set up, build, and start tracing in the foreground.

use std::process::Command;

use crate::{build, setup, sh};

/// `sonde <command> <args>` with a freshly built binary.
pub fn run(command: &str, args: &[String]) -> anyhow::Result<()> {
    setup::toolchain()?;
    let sonde = build::release()?;
    let mut cmd = Command::new(sonde);
    cmd.arg(command).args(args);
    sh::run(&mut cmd)
}
