//! Builds the kernel programs (`sonde-ebpf`) with the nightly toolchain and bpf-linker, and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what this needs.
//!
//! `AYA_BUILD_SKIP=1` skips the nested build (for `cargo check`/clippy/unit tests without nightly);
//! an empty object is written so the agent still compiles, and it refuses to load at run time.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v != "0") {
        fs::write(out_dir.join("sonde"), []).context("writing the placeholder eBPF object")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sonde-ebpf")
        .ok_or_else(|| anyhow!("sonde-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .context("sonde-ebpf manifest has no parent directory")?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package { name: "sonde-ebpf", root_dir: &root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)")
}
