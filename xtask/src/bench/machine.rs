//! Where and when a bench ran: enough to tell two reports apart, and to see if the machine was busy.

use std::process::Command;

use serde::Serialize;

use crate::sh;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// UTC, ISO 8601.
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    /// `git describe` of the tree the sonde binary was built from (`-dirty` when edited).
    pub sonde_commit: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
    /// BPF programs someone else had attached to tracing hooks (they slow every variant alike).
    pub foreign_bpf_programs: Vec<String>,
}

impl Machine {
    pub fn probe() -> Machine {
        let out = |cmd: &mut Command| sh::output(cmd).map(|s| s.trim().to_owned()).unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix(" kB")?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            date: out(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
            kernel: out(Command::new("uname").arg("-r")),
            cpu: cpuinfo
                .lines()
                .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_owned()))
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: (mem_kib / (1 << 20) as f64 * 10.0).round() / 10.0,
            sonde_commit: out(sh::git().args(["describe", "--always", "--dirty"])),
            loadavg_before: loadavg(),
            ..Machine::default()
        }
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
