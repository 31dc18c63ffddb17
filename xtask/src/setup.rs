//! Idempotent setup: each step checks first and is skipped when already done, so a second run
//! takes about a second. Everything the build and the tests use is installed here.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::sh;

/// Debian packages the tests drive: real servers and clients.
/// `openssl`: the TLS tests make their certificates with it (and it brings libssl, which they hook).
/// `prometheus` scrapes sonde's endpoint in the metrics tests (a real Prometheus, queried by PromQL).
/// `golang-1.19-go` (bookworm main, at /usr/lib/go-1.19) builds the Go `net/http` chain service of
/// the parenting tests (tests/servers/go, no modules).
/// `nftables`: the propagation tests reach a host through a DNAT address, as a Kubernetes Service.
/// `binutils`: `readelf`, which the Go binary tests check sonde's file offsets against.
const APT_PACKAGES: &[&str] = &[
    "binutils",
    "nginx-light",
    "curl",
    "iproute2",
    "python3",
    "libcap2-bin",
    "openssl",
    "prometheus",
    "golang-1.19-go",
    "nftables",
];
/// Debian packages from bookworm-backports, read through a source list of sonde's own so that the
/// machine's apt configuration stays as it is: `golang-1.23-go` (at /usr/lib/go-1.23), the second
/// Go toolchain the Go binary tests build with (Go 1.20 changed the runtime's function table).
const BACKPORTS_PACKAGES: &[&str] = &["golang-1.23-go"];
const BACKPORTS_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
";
const BACKPORTS_DIR: &str = "/var/lib/sonde/apt-backports";
/// bpf-linker release known to work with the nightly's LLVM (see docs/development.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// What `cargo xtask bench` drives and reads: wrk for saturation, bpftool for BPF run-time stats,
/// openssl for the HTTPS scenarios' certificate, Go for the Go scenarios' service.
/// golang-1.19-go builds the Go scenarios' service.
const BENCH_APT_PACKAGES: &[&str] = &["nginx-light", "wrk", "bpftool", "openssl", "iperf3", "golang-1.19-go"];
/// The fixed-rate load generator (Debian's `hey` reports latency to 0.1 ms only and tops out below
/// 20k req/s here). It does not build without its TLS feature, so the default features stay.
const OHA_VERSION: &str = "1.16.0";
/// The OTel collector the bench exports to (a Rust binary in a PyPI wheel).
const ROTEL_VERSION: &str = "0.0.1a15";
/// An OpenTelemetry-instrumented Python service for the interop tests (Flask + requests under
/// `opentelemetry-instrument`, exporting OTLP/HTTP): (package, version) as pip names them.
const PYTHON_SDK_PACKAGES: &[(&str, &str)] = &[
    ("flask", "3.1.3"),
    ("requests", "2.34.2"),
    ("opentelemetry-distro", "0.66b1"),
    ("opentelemetry-exporter-otlp-proto-http", "1.45.1"),
    ("opentelemetry-instrumentation-flask", "0.66b1"),
    ("opentelemetry-instrumentation-requests", "0.66b1"),
];
/// What checks `deploy/`: Helm's own Go SDK, bound for Python (renders and lints the chart offline,
/// no helm binary), and the Kubernetes API schemas of every release (validates what it renders).
const DEPLOY_CHECK_PACKAGES: &[(&str, &str)] =
    &[("helm-python-sdk", "0.2.2"), ("kubernetes-validate", "1.37.0")];
/// `@opentelemetry/auto-instrumentations-node`, as in tests/servers/node/package.json.
const NODE_SDK_VERSION: &str = "0.82.0";

pub fn all() -> anyhow::Result<()> {
    toolchain()?;
    test_tools()
}

/// What `cargo xtask build` needs: nightly with rust-src, and bpf-linker.
pub fn toolchain() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()
}

/// What the tests need beyond the build (the bench's smoke run included).
pub fn test_tools() -> anyhow::Result<()> {
    apt_packages(&[APT_PACKAGES, BENCH_APT_PACKAGES].concat())?;
    backports_packages(BACKPORTS_PACKAGES)?;
    cargo_fuzz()?;
    pip_packages(PYTHON_SDK_PACKAGES)?;
    pip_packages(DEPLOY_CHECK_PACKAGES)?;
    node_sdk()?;
    bench_extras()
}

/// What `cargo xtask bench` needs beyond the build.
pub fn bench_tools() -> anyhow::Result<()> {
    apt_packages(BENCH_APT_PACKAGES)?;
    bench_extras()
}

fn bench_extras() -> anyhow::Result<()> {
    oha()?;
    rotel()
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = sh::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.is_empty() {
        sh::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        sh::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

pub fn cargo_home_bin(tool: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin").join(tool)
}

/// bpf-linker links against libLLVM; the nightly ships its own, so a prefix of two symlinks to it
/// is all `llvm-sys` needs, and the linker's LLVM always matches the nightly's.
fn bpf_linker() -> anyhow::Result<()> {
    if sh::succeeds(Command::new(cargo_home_bin("bpf-linker")).arg("--version")) {
        return Ok(());
    }
    let sysroot = sh::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm_so = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let version = sh::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let prefix = PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sonde/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [PathBuf::from("libLLVM.so"), PathBuf::from(llvm_so.file_name().unwrap_or_default())] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_so, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    sh::run(
        Command::new("cargo")
            .args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if sh::succeeds(Command::new(cargo_home_bin("cargo-fuzz")).arg("--version")) {
        return Ok(());
    }
    sh::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

fn oha() -> anyhow::Result<()> {
    let version = sh::output(Command::new(cargo_home_bin("oha")).arg("--version")).unwrap_or_default();
    if version.contains(OHA_VERSION) {
        return Ok(());
    }
    sh::run(Command::new("cargo").args(["install", "oha", "--version", OHA_VERSION, "--locked"]))
}

fn rotel() -> anyhow::Result<()> {
    let installed = sh::output(
        Command::new("python3").args(["-c", "import importlib.metadata as m; print(m.version('rotel'))"]),
    )
    .unwrap_or_default();
    if installed.trim() == ROTEL_VERSION {
        return Ok(());
    }
    sh::run(Command::new("python3").args(["-m", "pip", "install", &format!("rotel=={ROTEL_VERSION}")]))
}

/// Installs `packages` (pip name, version) unless exactly these versions are there.
pub fn pip_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let query = format!(
        "import importlib.metadata as m; print(' '.join(m.version(p) for p in {:?}))",
        packages.iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );
    let installed = sh::output(Command::new("python3").args(["-c", &query])).unwrap_or_default();
    let wanted = packages.iter().map(|(_, v)| *v).collect::<Vec<_>>().join(" ");
    if installed.trim() == wanted {
        return Ok(());
    }
    let pins = packages.iter().map(|(p, v)| format!("{p}=={v}"));
    sh::run(Command::new("python3").args(["-m", "pip", "install"]).args(pins))
}

/// OpenTelemetry's zero-code instrumentation for Node, for the interop tests, as
/// `tests/servers/node/package-lock.json` pins it. Node and npm come from Debian unless present.
fn node_sdk() -> anyhow::Result<()> {
    if sh::output(Command::new("npm").arg("--version")).is_err() {
        apt_packages(&["nodejs", "npm"])?;
    }
    let dir = sh::root().join("tests/servers/node");
    let installed = std::fs::read_to_string(
        dir.join("node_modules/@opentelemetry/auto-instrumentations-node/package.json"),
    )
    .unwrap_or_default();
    if installed.contains(&format!("\"version\": \"{NODE_SDK_VERSION}\"")) {
        return Ok(());
    }
    sh::run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir))
}

/// Installs `packages` from bookworm-backports (see `BACKPORTS_SOURCES`), once.
fn backports_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_packages(&["debian-archive-keyring"])?;
    let dir = PathBuf::from(BACKPORTS_DIR);
    let lists = dir.join("lists");
    std::fs::create_dir_all(lists.join("partial"))
        .with_context(|| format!("creating {}", lists.display()))?;
    let sources = dir.join("sources.list");
    std::fs::write(&sources, BACKPORTS_SOURCES).with_context(|| format!("writing {}", sources.display()))?;
    let options = [
        format!("-oDir::Etc::sourcelist={}", sources.display()),
        "-oDir::Etc::sourceparts=-".to_owned(),
        format!("-oDir::State::Lists={}", lists.display()),
    ];
    sh::run(Command::new("apt-get").args(&options).args(["update", "-qq"]))?;
    sh::run(
        Command::new("apt-get")
            .args(&options)
            .args(["install", "-y", "--no-install-recommends", "-t", "bookworm-backports"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    sh::output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

pub fn apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    sh::run(Command::new("apt-get").arg("update"))?;
    sh::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // The nginx and prometheus packages start system instances (ports 80 and 9090); the tests run
    // their own.
    for service in ["nginx", "prometheus"] {
        let _ = sh::succeeds(Command::new("systemctl").args(["disable", "--now", service]));
    }
    Ok(())
}
