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

/// Machine-wide CPU time from the first line of /proc/stat, in ticks.
pub struct CpuTimes {
    busy: u64,
    steal: u64,
    total: u64,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        let total: u64 = (0..8).map(at).sum();
        CpuTimes { busy: total - at(3) - at(4) - at(7), steal: at(7), total }
    }

    /// (busy %, steal %) of the machine since `before`.
    pub fn busy_and_steal_since(&self, before: &CpuTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / total * 100.0;
        (pct(self.busy, before.busy), pct(self.steal, before.steal))
    }
}
