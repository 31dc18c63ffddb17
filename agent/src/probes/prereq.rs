//! What the kernel and the process must offer before anything is loaded, each checked with an
//! error that says what is missing and how to fix it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    #[error(
        "missing capabilities: {missing}. Run sonde as root, or grant them \
         (e.g. `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep sonde`)"
    )]
    Capabilities { missing: String },
    #[error("this kernel lacks {what}: {why}")]
    Missing { what: &'static str, why: &'static str },
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {source} (mount it with `mount -t tracefs tracefs /sys/kernel/tracing`)"
    )]
    Tracefs { source: std::io::Error },
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// CAP_BPF + CAP_PERFMON load and attach the programs (CAP_SYS_ADMIN covers both on kernels before
/// 5.8's split); CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH read other users' /proc/PID/{environ,exe}.
/// `propagation`: context propagation is on, whose sockops program needs CAP_NET_ADMIN to load and
/// to attach to a cgroup.
pub fn check_capabilities(propagation: bool) -> Result<(), PrereqError> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        for (cap, name) in [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")] {
            if !has(cap) {
                missing.push(name);
            }
        }
    }
    for (cap, name) in [(CAP_SYS_PTRACE, "CAP_SYS_PTRACE"), (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH")] {
        if !has(cap) {
            missing.push(name);
        }
    }
    if propagation && !has(CAP_NET_ADMIN) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_NET_ADMIN (for --context-propagation)");
    }
    if missing.is_empty() { Ok(()) } else { Err(PrereqError::Capabilities { missing: missing.join(", ") }) }
}

/// Mounts tracefs where it is missing (container images and minimal hosts often lack it).
pub fn ensure_tracefs() -> Result<(), PrereqError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status()
        .map_err(|source| PrereqError::Tracefs { source })?;
    if status.success() && Path::new(TRACEFS).join("events").is_dir() {
        tracing::info!(path = TRACEFS, "mounted tracefs");
        Ok(())
    } else {
        Err(PrereqError::Tracefs { source: std::io::Error::other(format!("mount exited with {status}")) })
    }
}

pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS).join("events").join(category).join(name).is_dir()
}

/// Offset of `field` in a tracepoint's record, from its tracefs `format` file (lines like
/// `\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;`). None if absent or unreadable.
pub fn tracepoint_field_offset(category: &str, name: &str, field: &str) -> Option<u32> {
    let path = Path::new(TRACEFS).join("events").join(category).join(name).join("format");
    let format = std::fs::read_to_string(path).ok()?;
    format_field_offset(&format, field)
}

fn format_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        let declared = declaration.rsplit([' ', '*']).next()?;
        // An array is declared with its length: `__u8 saddr_v6[16]`.
        if declared.split('[').next() != Some(field) {
            return None;
        }
        parts.find_map(|p| p.trim().strip_prefix("offset:")).and_then(|o| o.parse().ok())
    })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raising it is harmless elsewhere.
pub fn raise_memlock() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels ≥ 5.11)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_from_format_files() {
        // 6.x, then 5.x: `child_pid` moved when the comm fields became __data_loc.
        let new = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(format_field_offset(new, "child_pid"), Some(20));
        assert_eq!(format_field_offset(old, "child_pid"), Some(44));
        assert_eq!(format_field_offset(old, "parent_pid"), Some(24));
        assert_eq!(format_field_offset(new, "nope"), None);
        let state = "\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n";
        assert_eq!(format_field_offset(state, "saddr_v6"), Some(40));
        assert_eq!(format_field_offset(state, "saddr"), Some(32));
        assert_eq!(format_field_offset(state, "sport"), Some(24));
    }
}
