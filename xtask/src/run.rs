//! `cargo xtask run -- <args>`: set up, build, and start tracing in the foreground.

use std::process::Command;

use crate::{build, setup, sh};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::toolchain()?;
    let sonde = build::release()?;
    let mut cmd = Command::new(sonde);
    cmd.arg("run").args(args);
    sh::run(&mut cmd)
}
