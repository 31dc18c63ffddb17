//! Kernel-side cost measured directly: with BPF run-time statistics on, the kernel adds up each
//! program's `run_time_ns` and `run_cnt`, shown in the fdinfo of every program fd. The programs a
//! tracer holds are found through its own /proc/PID/fd (Debian's bpftool does not list holders),
//! their names through `bpftool prog show`. Statistics are switched on with `BPF_ENABLE_STATS`,
//! which returns an fd: they stay on while it is open and go off when it closes (even if the bench
//! dies), unlike the `kernel.bpf_stats_enabled` sysctl. The accounting itself costs two clock reads
//! per program run, paid by the null probe and sonde alike, never by the untraced runs.

use std::{os::fd::FromRawFd as _, process::Command};

use anyhow::Context as _;
use serde::Serialize;

/// `BPF_ENABLE_STATS` from `enum bpf_cmd` (Linux 5.8).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME` from `enum bpf_stats_type`.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Statistics are on while this lives.
pub struct StatsOn(#[expect(dead_code, reason = "held for its Drop, which closes the fd")] std::fs::File);

impl StatsOn {
    pub fn enable() -> anyhow::Result<StatsOn> {
        // `union bpf_attr`: only `enable_stats.type` is set; the rest must be zero.
        let mut attr = [0u8; 64];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(2) reads `attr.len()` bytes from a buffer we own.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), attr.len()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
        }
        // SAFETY: a fresh fd that only we own.
        Ok(StatsOn(unsafe { std::fs::File::from_raw_fd(fd as i32) }))
    }
}

/// The programs one process holds, added up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelStats {
    pub programs: Vec<String>,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Sums the run-time statistics of the BPF programs `pid` holds.
pub fn of_pid(pid: u32) -> anyhow::Result<KernelStats> {
    let names = programs();
    let mut stats = KernelStats::default();
    for p in held_programs(pid)? {
        let name = names.iter().find(|(id, _, _)| *id == p.id).map(|(_, n, _)| n.clone());
        stats.programs.push(name.unwrap_or_else(|| format!("#{}", p.id)));
        stats.run_cnt += p.run_cnt;
        stats.run_time_ns += p.run_time_ns;
    }
    stats.programs.sort();
    Ok(stats)
}

fn held_program_ids(pid: u32) -> Vec<u64> {
    held_programs(pid).unwrap_or_default().into_iter().map(|p| p.id).collect()
}

struct Held {
    id: u64,
    run_cnt: u64,
    run_time_ns: u64,
}

/// The program fds in /proc/PID/fd, with what their fdinfo says.
fn held_programs(pid: u32) -> anyhow::Result<Vec<Held>> {
    let dir = format!("/proc/{pid}/fd");
    let mut held = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let fd = entry?.file_name();
        let fd = fd.to_string_lossy();
        let is_prog = std::fs::read_link(format!("{dir}/{fd}"))
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
        let Some(info) =
            is_prog.then(|| std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()).flatten()
        else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        held.push(Held {
            id: field("prog_id"),
            run_cnt: field("run_cnt"),
            run_time_ns: field("run_time_ns"),
        });
    }
    Ok(held)
}

/// (id, name, type) of every loaded BPF program, from bpftool.
fn programs() -> Vec<(u64, String, String)> {
    let Ok(out) = crate::sh::output(Command::new("bpftool").args(["--json", "prog", "show"])) else {
        return Vec::new();
    };
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    progs
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("?").to_owned();
            (p["id"].as_u64().unwrap_or(0), s("name"), s("type"))
        })
        .collect()
}

/// Programs on tracing hooks that none of `own` holds (another sonde on a shared machine): they
/// slow every variant alike, but the reader should know.
pub fn foreign_programs(own: &[u32]) -> Vec<String> {
    let ours: Vec<u64> = own.iter().flat_map(|pid| held_program_ids(*pid)).collect();
    programs()
        .into_iter()
        .filter(|(_, _, ty)| matches!(ty.as_str(), "tracing" | "tracepoint" | "raw_tracepoint" | "kprobe"))
        .filter(|(id, _, _)| !ours.contains(id))
        .map(|(id, name, ty)| format!("{name} ({ty}, id {id})"))
        .collect()
}
