//! Builds the kernel programs (`sonde-ebpf`) with the nightly toolchain and bpf-linker, and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what this needs.
//!
//! The nested build is the one `aya_build::build_ebpf` (aya-build 0.2.0) runs — same command, flags,
//! target directory layout and `rerun-if-changed` — done here so that its output stays quiet: aya-build
//! forwards every line of the nested cargo as a `cargo:warning`, some 40 `warning:` lines per build.
//! Here that output is kept and printed only when the nested build fails; on success only the
//! compiler's own warnings about the kernel programs are passed on (there are none today).
//!
//! `AYA_BUILD_SKIP=1` skips the nested build (for `cargo check`/clippy/unit tests without nightly);
//! an empty object is written so the agent still compiles, and it refuses to load at run time.

use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader, ErrorKind},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message, diagnostic::DiagnosticLevel};

/// The toolchain the kernel programs build with (`rustup run nightly …`).
const TOOLCHAIN: &str = "nightly";

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
    let root_dir =
        ebpf.manifest_path.parent().context("sonde-ebpf manifest has no parent directory")?.to_owned();
    // The build-dependency on sonde-ebpf rebuilds the agent when its library or dependencies change;
    // this covers its binary (the kernel programs) too.
    println!("cargo:rerun-if-changed={root_dir}");
    build_ebpf("sonde-ebpf", &out_dir)
        .context("building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)")
}

/// `cargo build --release` of `package`'s binaries for the BPF target, each copied to `out_dir/<bin name>`.
fn build_ebpf(package: &str, out_dir: &Path) -> anyhow::Result<()> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian {other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") { "riscv64" } else { arch.as_str() };
    // Kept apart from the copies in OUT_DIR (the package and its binary may share a name).
    let target_dir = out_dir.join("aya-build").join("target").join(package);

    // What the nested build said, printed only if it fails.
    let mut log = Vec::new();
    let nested = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .args(["build", "--package", package, "--bins", "--message-format=json", "--release"])
            .args(["--target", target, "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags(arch))
            // The outer cargo's compiler settings would override the toolchain chosen above.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut cmd = nested("rustup", &["run", TOOLCHAIN, "cargo"]);
    let mut child = match cmd.spawn() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            log.push(format!("rustup not found: building with the cargo on PATH, which must be {TOOLCHAIN}"));
            cmd = nested("cargo", &[]);
            cmd.spawn()
        }
        spawned => spawned,
    }
    .with_context(|| format!("starting {cmd:?}"))?;

    let stderr = BufReader::new(child.stderr.take().context("nested cargo's stderr")?);
    let stderr = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut warnings = Vec::new();
    let mut executables = Vec::new();
    let stdout = BufReader::new(child.stdout.take().context("nested cargo's stdout")?);
    for message in Message::parse_stream(stdout) {
        match message.context("reading the nested cargo's JSON messages")? {
            Message::CompilerArtifact(Artifact { executable: Some(executable), target, .. }) => {
                executables.push((target.name, executable.into_std_path_buf()));
            }
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                let rendered = message.rendered.unwrap_or(message.message).trim_end().to_owned();
                if message.level == DiagnosticLevel::Warning {
                    warnings.push(rendered.clone());
                }
                log.push(rendered);
            }
            Message::TextLine(line) => log.push(line),
            _ => {}
        }
    }
    let status = child.wait().with_context(|| format!("waiting for {cmd:?}"))?;
    log.extend(stderr.join().unwrap_or_default());
    if !status.success() {
        eprintln!("{}", log.join("\n"));
        bail!("{cmd:?} failed: {status}");
    }
    for line in warnings.iter().flat_map(|w| w.lines()) {
        println!("cargo:warning={line}");
    }
    if executables.is_empty() {
        bail!("{cmd:?} built no binary\n{}", log.join("\n"));
    }
    for (name, binary) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&binary, &dst)
            .with_context(|| format!("copying {} to {}", binary.display(), dst.display()))?;
    }
    Ok(())
}

/// The flags aya-build passes: the target architecture as a cfg, full debug info, and BTF from it.
fn rustflags(arch: &str) -> OsString {
    // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f.
    [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()]
        .join("\x1f")
        .into()
}
