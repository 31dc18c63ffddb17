//! `cargo xtask kernels`: the kernel matrix. Each Debian kernel boots under QEMU (KVM when the CPU
//! offers it, TCG otherwise) with the host's root filesystem shared read-only (virtme-ng), and the
//! privileged tests chosen for the matrix run inside the guest against the real sonde binary; the
//! running kernel runs them directly. Prints a kernel × test table and fails if any cell failed.
//!
//! Kernels come from Debian's archive as `linux-image-*-amd64-unsigned` packages (the generic
//! flavour: it has the 9p modules virtme-ng needs), unpacked under `KERNEL_CACHE` with their
//! modules linked into /lib/modules, so the guest finds them on the shared root.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build, setup, sh};

#[derive(clap::Args)]
pub struct Options {
    /// Kernels to run: 5.10, 6.1, 6.12, host (repeatable; default: all of them).
    #[arg(long = "kernel", value_name = "SPEC")]
    kernels: Vec<String>,
    /// Only the quick subset of tests (what `cargo xtask test` runs on 5.10 and 6.1).
    #[arg(long)]
    quick: bool,
}

/// A Debian kernel of the matrix: the newest package named `prefix…-amd64-unsigned`.
struct Debian {
    spec: &'static str,
    prefix: &'static str,
}

const DEBIAN: &[Debian] = &[
    Debian { spec: "5.10", prefix: "linux-image-5.10.0-" },
    Debian { spec: "6.1", prefix: "linux-image-6.1.0-" },
    Debian { spec: "6.12", prefix: "linux-image-6.12." },
];

/// bullseye has 5.10, bookworm 6.1, bookworm-backports 6.12.
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
";

/// Not under /var/cache: virtme-ng's init mounts a tmpfs there in the guest, which would hide the
/// kernel's modules (veth, nftables) that `/lib/modules/<release>` links to.
const KERNEL_CACHE: &str = "/var/lib/sonde/kernels";

/// How much longer than on the host the tests may wait for each thing inside an emulated guest:
/// under TCG, with the root filesystem on 9p, a Python server takes 2–5 s to start on 6.1 and
/// about 10 s on 5.10.
const GUEST_PATIENCE: u32 = 6;

/// Which runs of the matrix take a test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Set {
    /// Every run.
    Quick,
    /// Full runs only.
    Full,
    /// Quick runs on this kernel; full runs everywhere.
    QuickOn(&'static str),
}

impl Set {
    fn takes(self, spec: &str, quick: bool) -> bool {
        match self {
            Set::Quick => true,
            Set::Full => !quick,
            Set::QuickOn(only) => !quick || spec == only,
        }
    }
}

/// The tests of the matrix, as (test binary, test name): what sonde does on 6.18, each once.
/// Quick ones run in CI.
const TESTS: &[(&str, &str, Set)] = &[
    ("programs", "every_program_passes_the_verifier_or_its_feature_is_missing", Set::Quick),
    ("programs", "the_sockhash_verdict_agrees_with_an_independent_probe", Set::Quick),
    // 5.10 and 6.1 run the same hook set (the fd-table walk): what differs between them is the
    // verifier (above) and the SOCKHASH's behaviour (propagation, below). The basics run quick on
    // the oldest kernel alone, to keep `cargo xtask test` near 45 minutes; full runs take both.
    ("server_spans", "python_http_server_gets_one_span_per_request", Set::QuickOn("5.10")),
    ("traces", "a_chain_of_plain_services_is_one_trace", Set::QuickOn("5.10")),
    ("tls", "python_https_server_and_curl_get_server_and_client_spans", Set::QuickOn("5.10")),
    ("lifecycle", "kill_9_leaves_no_programs_or_maps_behind", Set::QuickOn("5.10")),
    ("copy_cost", "connections_sonde_cannot_parse_stop_being_copied", Set::QuickOn("5.10")),
    ("traces", "calls_from_a_worker_thread_belong_to_the_request_that_started_it", Set::Full),
    ("collectors", "exports_to_a_traced_collector_over_ipv4_make_no_spans_or_metrics", Set::Full),
    (
        "collectors",
        "a_socket_reusing_the_address_of_an_own_socket_whose_close_went_unseen_is_traced",
        Set::Full,
    ),
    ("reuse", "a_reused_pid_starts_clean", Set::Full),
    ("server_spans", "ipv6_peers_have_their_addresses", Set::Full),
    ("overload", "a_full_ring_sheds_spans_and_still_counts_every_request", Set::Full),
    (
        "lifecycle",
        "kill_9_with_propagation_mid_traffic_leaves_connections_working_and_nothing_attached",
        Set::Full,
    ),
    // Header propagation runs only on kernels whose SOCKHASH self-test passes, which this host's
    // does not: the guests are where it is shown.
    (
        "propagation",
        "headers_are_refused_where_a_sockhash_harms_sockets_and_all_falls_back_to_the_tcp_option",
        Set::Quick,
    ),
    ("propagation", "a_written_header_changes_no_other_byte_of_what_the_server_reads", Set::Quick),
    // Quick on 6.1 alone; both kernels in full runs.
    (
        "propagation",
        "three_hosts_joined_by_traceparent_headers_make_one_trace_per_request",
        Set::QuickOn("6.1"),
    ),
    // The Python SDK takes one to three minutes to start on 5.10 under TCG: quick on 6.1.
    (
        "propagation",
        "an_sdk_service_called_by_a_plain_client_continues_sondes_client_span",
        Set::QuickOn("6.1"),
    ),
    // Goroutines are read at the syscall hooks: on 5.10 from the top of the task's kernel stack
    // (no bpf_task_pt_regs), on 6.1 with the helper, as on the host.
    ("goroutines", "calls_from_goroutines_a_handler_starts_are_its_children", Set::QuickOn("5.10")),
    // Go's crypto/tls, its calls keyed by goroutine: ~3.5 min on 6.1 under TCG (four builds).
    (
        "goroutines",
        "go_https_chains_of_each_toolchain_stripped_or_not_make_whole_traces_under_concurrent_requests",
        Set::Full,
    ),
    ("propagation", "a_go_clients_written_header_names_its_own_client_span", Set::Full),
    (
        "propagation",
        "three_hosts_behind_a_service_address_and_a_tls_proxy_make_one_trace_per_request",
        Set::Full,
    ),
];

/// What `cargo xtask kernels` needs beyond the tests' own tools.
const APT_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static", "debian-archive-keyring"];
const VIRTME_NG: (&str, &str) = ("virtme-ng", "1.42");

pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::all()?;
    let specs: Vec<String> = if options.kernels.is_empty() {
        DEBIAN.iter().map(|d| d.spec.to_owned()).chain(["host".to_owned()]).collect()
    } else {
        options.kernels.clone()
    };
    let table = matrix(&specs, options.quick)?;
    print_table(&table);
    let failed: Vec<String> = table
        .iter()
        .flat_map(|(kernel, cells)| {
            cells.iter().filter(|(_, ok)| !**ok).map(move |(test, _)| format!("{test} on {kernel}"))
        })
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The CI subset: the quick tests on the oldest kernel and on the LTS most nodes run.
pub fn ci() -> anyhow::Result<()> {
    run(&Options { kernels: vec!["5.10".into(), "6.1".into()], quick: true })
}

type Table = BTreeMap<String, BTreeMap<String, bool>>;

fn matrix(specs: &[String], quick: bool) -> anyhow::Result<Table> {
    for spec in specs {
        if spec != "host" && !DEBIAN.iter().any(|d| d.spec == spec) {
            bail!("unknown kernel {spec:?}: the matrix has 5.10, 6.1, 6.12 and host");
        }
    }
    if specs.iter().any(|s| s != "host") {
        setup::apt_packages(APT_PACKAGES)?;
        setup::pip_packages(&[VIRTME_NG])?;
    }
    let sonde = build::release()?;
    let binaries = test_binaries()?;
    let mut table = Table::new();
    for spec in specs {
        let tests: Vec<(PathBuf, &str, &str)> = TESTS
            .iter()
            .filter(|(_, _, set)| set.takes(spec, quick))
            .map(|&(binary, name, _)| {
                let path = binaries.get(binary).with_context(|| format!("no test binary {binary}"))?;
                Ok((path.clone(), binary, name))
            })
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        let output = if spec == "host" {
            sh::output(Command::new("bash").arg(guest_script(&sonde, &tests, 1)?))?
        } else {
            let vmlinuz = debian_kernel(DEBIAN.iter().find(|d| d.spec == spec).expect("checked above"))?;
            let patience = if kvm_usable() { 2 } else { GUEST_PATIENCE };
            boot(&vmlinuz, &guest_script(&sonde, &tests, patience)?)?
        };
        let (release, cells) = parse(&output);
        let hooks = output.lines().find_map(|l| l.trim().strip_prefix("MATRIX-HOOKS ")).unwrap_or("?");
        let goroutines =
            output.lines().find_map(|l| l.trim().strip_prefix("MATRIX-GOROUTINES ")).unwrap_or("?");
        eprintln!(
            "kernel {spec} ({release}): hooks={hooks}, goroutines {goroutines}, {} tests in {:.0?}",
            cells.len(),
            started.elapsed()
        );
        // Where the time goes: CI's budget is mostly these guests.
        for line in output.lines().filter_map(|l| l.trim().strip_prefix("MATRIX-SECONDS ")) {
            eprintln!("  {line} s");
        }
        if cells.len() != tests.len() || cells.values().any(|ok| !ok) {
            eprintln!("{}", output.lines().filter(|l| !l.starts_with('[')).collect::<Vec<_>>().join("\n"));
        }
        let mut row: BTreeMap<String, bool> =
            tests.iter().map(|(_, binary, name)| (format!("{binary}::{name}"), false)).collect();
        row.extend(cells);
        table.insert(format!("{spec} ({release})"), row);
    }
    Ok(table)
}

/// The integration tests' executables by name, built without running them.
fn test_binaries() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let out =
        sh::output(sh::cargo().args(["test", "-p", "sonde-tests", "--no-run", "--message-format=json"]))?;
    let mut binaries = BTreeMap::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(path)) = (
            message.pointer("/target/name").and_then(|v| v.as_str()),
            message.get("executable").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        binaries.insert(name.to_owned(), PathBuf::from(path));
    }
    Ok(binaries)
}

/// A script that runs each test once and prints `MATRIX <binary>::<name> ok|FAILED`, with the
/// failing test's output indented below it. Inside a guest the host's files are there but not its
/// environment, so PATH is written in — with Python's own directory first: a version manager's
/// `python3` shim costs seconds per start on the guest's 9p root. `SONDE_TEST_PATIENCE` stretches
/// the tests' deadlines for the emulated guest (the host run takes them as they are).
fn guest_script(sonde: &Path, tests: &[(PathBuf, &str, &str)], patience: u32) -> anyhow::Result<PathBuf> {
    let dir = sh::root().join("target/kernels");
    std::fs::create_dir_all(&dir)?;
    let python = sh::output(
        Command::new("python3").args(["-c", "import os, sys; print(os.path.dirname(sys.executable))"]),
    )?;
    let path = format!("{}:{}", python.trim(), std::env::var("PATH").unwrap_or_default());
    let mut script = format!(
        "#!/bin/bash\nset -u\nexport PATH='{path}' SONDE_BIN='{}' RUST_BACKTRACE=1 SONDE_TEST_PATIENCE={patience}\n\
         ip link set lo up 2>/dev/null\n\
         mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n\
         echo \"MATRIX-KERNEL $(uname -r)\"\n\
         kernel=$(\"$SONDE_BIN\" check-kernel 2>/dev/null)\n\
         echo \"MATRIX-HOOKS $(sed -n 's/^hooks: //p' <<<\"$kernel\")\"\n\
         echo \"MATRIX-GOROUTINES $(sed -n 's/^goroutines: //p' <<<\"$kernel\")\"\n",
        sonde.display()
    );
    for (binary_path, binary, name) in tests {
        let log = format!("/tmp/sonde-matrix-{binary}-{name}.log");
        script.push_str(&format!(
            "started=$SECONDS\n\
             if timeout 900 '{}' --exact '{name}' --test-threads=1 >'{log}' 2>&1 && grep -q '1 passed' '{log}'; \
             then echo 'MATRIX {binary}::{name} ok'; \
             else echo 'MATRIX {binary}::{name} FAILED'; tail -n 60 '{log}' | sed 's/^/    | /'; fi\n\
             echo \"MATRIX-SECONDS {binary}::{name} $((SECONDS - started))\"\n",
            binary_path.display()
        ));
    }
    let file = dir.join(format!("run-tests-x{patience}.sh"));
    std::fs::write(&file, script)?;
    Ok(file)
}

/// `MATRIX-KERNEL` and `MATRIX` lines of a run: the kernel release, and test → passed.
fn parse(output: &str) -> (String, BTreeMap<String, bool>) {
    let release = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("MATRIX-KERNEL "))
        .unwrap_or("did not boot")
        .to_owned();
    let cells = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("MATRIX "))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(test, status)| (test.to_owned(), status == "ok"))
        .collect();
    (release, cells)
}

fn print_table(table: &Table) {
    let tests: Vec<&String> = table
        .values()
        .flat_map(|row| row.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let width = tests.iter().map(|t| t.len()).max().unwrap_or(4).max(4);
    let kernels: Vec<&String> = table.keys().collect();
    print!("{:width$}", "test");
    for k in &kernels {
        print!("  {k}");
    }
    println!();
    for test in tests {
        print!("{test:width$}");
        for k in &kernels {
            let cell = match table[*k].get(test) {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "-",
            };
            print!("  {cell:<w$}", w = k.len());
        }
        println!();
    }
}

/// Boots `vmlinuz` with the host's root filesystem and runs `script`; returns what it printed.
/// QEMU's exit status is not the script's: the caller reads the `MATRIX` lines.
fn boot(vmlinuz: &Path, script: &Path) -> anyhow::Result<String> {
    match boot_once(vmlinuz, script)? {
        Guest::NoBoot(_) => {
            // Seen once under TCG: a guest that never came up, QEMU busy and silent for good.
            eprintln!("the guest printed no kernel release within {BOOT_DEADLINE:?}: booting it once more");
            Ok(boot_once(vmlinuz, script)?.output())
        }
        guest => Ok(guest.output()),
    }
}

/// How long a guest may take to boot and print its kernel release.
const BOOT_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// How long a guest may take over one test: more than the test's own `timeout 900`.
const TEST_DEADLINE: Duration = Duration::from_secs(17 * 60);

/// What a guest printed, and whether it ran to its end.
enum Guest {
    Finished(String),
    /// No `MATRIX-KERNEL` line within `BOOT_DEADLINE`: stopped.
    NoBoot(String),
    /// No test ended within `TEST_DEADLINE`: stopped (its missing tests count as failed).
    Stalled(String),
}

impl Guest {
    fn output(self) -> String {
        match self {
            Guest::Finished(out) | Guest::NoBoot(out) | Guest::Stalled(out) => out,
        }
    }
}

/// One boot, its output read as it comes, the guest stopped (its whole process group: virtme-ng
/// and QEMU) when it does not boot or a test never ends.
fn boot_once(vmlinuz: &Path, script: &Path) -> anyhow::Result<Guest> {
    use std::{io::BufRead as _, os::unix::process::CommandExt as _, process::Stdio, sync::mpsc};
    let mut vng = Command::new("python3");
    vng.args(["-c", "import sys; from virtme_ng.run import main; sys.argv[0] = 'vng'; sys.exit(main())"])
        .args(["-v", "--run"])
        .arg(vmlinuz)
        .args(["--memory", "3G", "--cpus", "2", "--exec"])
        .arg(format!("bash {}", script.display()));
    if !kvm_usable() {
        vng.arg("--disable-kvm");
    }
    eprintln!("+ {}", sh::describe(&vng));
    let mut child = vng
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting virtme-ng")?;
    let (lines, received) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("virtme-ng's stdout")?;
    let stderr = child.stderr.take().context("virtme-ng's stderr")?;
    let readers = [
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                std::io::BufReader::new(stdout).lines().map_while(Result::ok).try_for_each(|l| lines.send(l))
            }
        }),
        std::thread::spawn(move || {
            std::io::BufReader::new(stderr).lines().map_while(Result::ok).try_for_each(|l| lines.send(l))
        }),
    ];
    let mut output = String::new();
    let (mut booted, mut since) = (false, Instant::now());
    let stalled = loop {
        let deadline = if booted { TEST_DEADLINE } else { BOOT_DEADLINE };
        match received.recv_timeout(deadline.saturating_sub(since.elapsed())) {
            Ok(line) => {
                let trimmed = line.trim();
                if trimmed.starts_with("MATRIX-KERNEL ") {
                    booted = true;
                    since = Instant::now();
                } else if trimmed.starts_with("MATRIX ") {
                    since = Instant::now();
                }
                output.push_str(&line);
                output.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) => break Some(booted),
        }
    };
    if stalled.is_some() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
    }
    let _ = child.wait();
    for reader in readers {
        let _ = reader.join();
    }
    Ok(match stalled {
        None => Guest::Finished(output),
        Some(false) => Guest::NoBoot(output),
        Some(true) => {
            eprintln!("the guest finished no test within {TEST_DEADLINE:?}: stopped");
            Guest::Stalled(output)
        }
    })
}

/// KVM needs /dev/kvm and a CPU with virtualisation extensions (a guest often has the device
/// without them).
fn kvm_usable() -> bool {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Path::new("/dev/kvm").exists() && cpu.split_whitespace().any(|w| w == "vmx" || w == "svm")
}

/// The newest package of `kernel` unpacked under `KERNEL_CACHE` (downloaded once), its modules
/// linked into /lib/modules; returns its vmlinuz.
fn debian_kernel(kernel: &Debian) -> anyhow::Result<PathBuf> {
    let cache = Path::new(KERNEL_CACHE);
    let lists = cache.join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    let sources = cache.join("sources.list");
    std::fs::write(&sources, SOURCES)?;
    let apt_options = [
        format!("-oDir::Etc::sourcelist={}", sources.display()),
        "-oDir::Etc::sourceparts=-".to_owned(),
        format!("-oDir::State::Lists={}", lists.display()),
        format!("-oDir::Cache={}", cache.join("apt").display()),
    ];
    let fresh = std::fs::metadata(lists.join("lock"))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or(Duration::MAX) < Duration::from_secs(24 * 3600));
    let has_lists =
        std::fs::read_dir(&lists)?.flatten().any(|e| e.file_name().to_string_lossy().ends_with("Packages"));
    if !(fresh && has_lists) {
        sh::run(Command::new("apt-get").args(&apt_options).args(["update", "-qq"]))?;
    }
    let names = sh::output(Command::new("apt-cache").args(&apt_options).args(["pkgnames", kernel.prefix]))?;
    let package = names
        .lines()
        .filter(|n| n.ends_with("-amd64-unsigned") && !n.contains("-rt-") && !n.contains("-cloud-"))
        .max_by_key(|n| version_key(n))
        .with_context(|| format!("no {}*-amd64-unsigned package in Debian's lists", kernel.prefix))?
        .to_owned();
    let release = package.trim_start_matches("linux-image-").trim_end_matches("-unsigned").to_owned();
    let root = cache.join(&package);
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        let download = cache.join("download");
        std::fs::create_dir_all(&download)?;
        sh::run(
            Command::new("apt-get")
                .args(&apt_options)
                .args(["download", "-qq", &package])
                .current_dir(&download),
        )?;
        let deb = std::fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        let unpacking = cache.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&unpacking);
        sh::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))?;
        sh::run(Command::new("depmod").arg("-b").arg(&unpacking).arg(&release))?;
        std::fs::rename(&unpacking, &root)?;
        let _ = std::fs::remove_file(&deb);
    }
    let modules = Path::new("/lib/modules").join(&release);
    if std::fs::symlink_metadata(&modules).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&modules)?;
    }
    if !modules.exists() {
        std::fs::create_dir_all("/lib/modules")?;
        std::os::unix::fs::symlink(root.join("lib/modules").join(&release), &modules)
            .with_context(|| format!("linking {}", modules.display()))?;
    }
    Ok(vmlinuz)
}

/// Orders package names by the numbers in them: `5.10.0-32` after `5.10.0-9`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_wins_by_its_numbers() {
        let names = ["linux-image-5.10.0-9-amd64-unsigned", "linux-image-5.10.0-32-amd64-unsigned"];
        assert_eq!(names.iter().max_by_key(|n| version_key(n)), Some(&names[1]));
    }

    #[test]
    fn results_are_read_from_the_matrix_lines() {
        let out = "[  1.0] boot noise\nMATRIX-KERNEL 6.1.0-50-amd64\nMATRIX a::b ok\nMATRIX a::c FAILED\n    | why\n";
        let (release, cells) = parse(out);
        assert_eq!(release, "6.1.0-50-amd64");
        assert_eq!(
            cells.into_iter().collect::<Vec<_>>(),
            [("a::b".to_owned(), true), ("a::c".to_owned(), false)]
        );
    }
}
