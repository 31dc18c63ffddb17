//! `cargo xtask test`: every check CI makes, in order of cost — formatting, lints, unit tests, the
//! deploy/ checks, the privileged integration tests against the real binary, the kernel matrix's
//! quick subset on 5.10 and 6.1, a few seconds of the bench harness (it
//! must still produce numbers; what they are is not tested), then a short fuzzing run.

use std::process::Command;

use crate::{bench, build, fuzz, kernels, setup, sh, soak};

pub fn all(fuzz_seconds: u32) -> anyhow::Result<()> {
    setup::all()?;
    sh::run(sh::cargo().args(["fmt", "--all", "--check"]))?;
    sh::run(sh::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "sonde-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh::run(sh::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "sonde-ebpf",
        "--exclude",
        "sonde-tests",
    ]))?;
    let sonde = build::release()?;
    deploy(&sonde)?;
    privileged(&sonde)?;
    kernels::ci()?;
    bench::smoke(&sonde)?;
    soak::smoke(&sonde)?;
    fuzz::run(fuzz::TARGETS, std::time::Duration::from_secs(fuzz_seconds.into()))
}

/// The integration tests start the real `sonde` (root, real kernel) against real servers. One at a
/// time: each one's sonde sees every process's traffic, so parallel tests would only add noise.
fn privileged(sonde: &std::path::Path) -> anyhow::Result<()> {
    sh::run(sh::cargo().args(["test", "-p", "sonde-tests", "--", "--test-threads=1"]).env("SONDE_BIN", sonde))
}

/// The Helm chart renders and lints, every manifest validates against the Kubernetes schemas, the
/// DaemonSet keeps its security promises, its configuration passes `sonde config check`, and
/// deploy/kubernetes/sonde.yaml is the chart's current rendering.
fn deploy(sonde: &std::path::Path) -> anyhow::Result<()> {
    sh::run(Command::new("python3").arg(sh::root().join("deploy/check.py")).arg("--sonde").arg(sonde))
}
