//! Privileged: every kernel program through this kernel's verifier (`sonde check-kernel`), the one
//! test of the kernel matrix that covers the optional programs too. A program may be refused only
//! where it needs a feature the kernel lacks, and then `run` must not choose the set it belongs to.

use std::process::Command;

use sonde_tests::harness::sonde_bin;

#[test]
fn every_program_passes_the_verifier_or_its_feature_is_missing() {
    let out = Command::new(sonde_bin()).arg("check-kernel").output().expect("running sonde check-kernel");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-kernel failed:\n{stdout}\n{stderr}");
    let programs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("program ")).collect();
    // The object's programs: the read/write family's 18 tracepoints, connection life cycle, the
    // socket sets, fork/exit/mmap/state hooks, the TLS uprobes and the null probe's.
    assert!(programs.len() >= 35, "too few programs checked:\n{stdout}");
    for always in
        ["sys_exit_read", "sys_enter_connect", "sched_process_exit", "inet_sock_set_state", "ssl_set_fd"]
    {
        assert!(
            programs.iter().any(|l| l.starts_with(&format!("program {always}: loaded"))),
            "{always} did not load:\n{stdout}"
        );
    }
    let hooks = stdout.lines().find_map(|l| l.strip_prefix("hooks: ")).unwrap_or("");
    assert!(!hooks.starts_with("none"), "no hook set on this kernel:\n{stdout}");
    if programs.iter().any(|l| l.contains("refused, as expected")) {
        assert_ne!(hooks, "socket tracepoints", "the socket set was chosen without its programs:\n{stdout}");
    }
}

/// `check-kernel`'s SOCKHASH verdict (whether header propagation may enrol sockets on this
/// kernel) against the same experiment made without sonde (`tests/servers/sockhash_probe.py`,
/// through the raw bpf syscall): a socket in a SOCKHASH must keep FIONREAD and epoll readiness.
#[test]
fn the_sockhash_verdict_agrees_with_an_independent_probe() {
    let out = Command::new(sonde_bin()).arg("check-kernel").output().expect("running sonde check-kernel");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict = stdout.lines().find_map(|l| l.strip_prefix("sockhash: ")).unwrap_or_else(|| {
        panic!("no sockhash verdict:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let probe = Command::new("python3")
        .arg(sonde_tests::harness::servers_dir().join("sockhash_probe.py"))
        .output()
        .expect("running sockhash_probe.py");
    let found = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "sockhash_probe.py: {found}{}", String::from_utf8_lossy(&probe.stderr));
    let fionread_right = found.lines().any(|l| l == "fionread 4096");
    let readiness_right = found.lines().any(|l| l == "readiness ok");
    eprintln!("sockhash on this kernel: {verdict} (independent probe: {})", found.replace('\n', ", "));
    match (fionread_right, readiness_right) {
        (true, true) => assert!(verdict.starts_with("harmless"), "{verdict} against {found}"),
        (false, _) => assert!(
            verdict.starts_with("harmful") && verdict.contains("FIONREAD"),
            "{verdict} against {found}"
        ),
        (true, false) => {
            assert!(verdict.starts_with("harmful") && verdict.contains("epoll"), "{verdict} against {found}")
        }
    }
}
