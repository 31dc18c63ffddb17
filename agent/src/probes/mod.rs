//! Loading and attaching the kernel programs: prerequisites, the choice of hook set, the globals
//! and map sizes the programs are built with, and read access to their maps.

/// `$program` of the object as a `$kind` (`TracePoint`, `UProbe`), loaded into the kernel on first
/// use: one program may serve many hooks.
macro_rules! loaded_program {
    ($ebpf:expr, $program:expr, $kind:ty) => {{
        let program: &'static str = $program;
        let prog: &mut $kind = $ebpf
            .program_mut(program)
            .ok_or(ProbeError::MissingProgram { program })?
            .try_into()
            .map_err(|source| ProbeError::LoadProgram { program, source })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| ProbeError::LoadProgram { program, source })?;
        }
        prog
    }};
}

mod attach;
pub mod btf_offsets;
mod kernel_log;
pub mod prereq;
pub mod tls;

pub use attach::Programs;
pub use tls::TlsOptions;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::ProgramError,
};
use sonde_common::{DROP_REASONS, MAX_CAPTURE, PID_BITMAP_WORDS, PID_LIMIT, globals, maps};

/// The kernel object built by `build.rs` (empty when the build was skipped with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde"));

/// Which hooks see socket reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// The socket hook set where the kernel allows it (x86_64), else syscall tracepoints.
    Auto,
    /// Capture in the socket tracepoints, with the syscall's arguments read from the task's saved
    /// registers: one program run per socket read or write, nothing for any other syscall.
    Sock,
    /// Entry and exit tracepoints of each read/write syscall (`syscalls/sys_{enter,exit}_*`):
    /// works on every architecture, costs a map update per read or write of any fd.
    Tracepoints,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSet {
    Sock,
    Tracepoints,
}

impl std::fmt::Display for HookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookSet::Sock => "socket tracepoints",
            HookSet::Tracepoints => "syscall tracepoints",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Prereq(#[from] prereq::PrereqError),
    #[error(
        "this sonde binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("loading program {program}: {source}")]
    LoadProgram { program: &'static str, source: ProgramError },
    #[error("attaching program {program} to {target}: {source}")]
    Attach { program: &'static str, target: String, source: ProgramError },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
}

/// The words of the kernel's pid bitmap that have a bit set (pids ≥ `PID_LIMIT` cannot exist).
fn pid_bitmap(pids: &[u32]) -> std::collections::BTreeMap<u32, u64> {
    let mut words = std::collections::BTreeMap::new();
    for &pid in pids.iter().filter(|&&pid| pid < PID_LIMIT) {
        *words.entry(pid / 64).or_insert(0u64) |= 1 << (pid % 64);
    }
    words
}

pub struct ProbeOptions {
    pub hooks: HookChoice,
    /// Payload bytes copied per syscall (clamped to `MAX_CAPTURE`).
    pub capture_bytes: u32,
    /// Ring-buffer size in bytes (rounded up to a power of two ≥ one page).
    pub ring_bytes: u32,
    /// Only these tgids are traced when non-empty.
    pub pids: Vec<u32>,
    /// sonde's programs, or the counting-only null probe (benchmarks).
    pub programs: Programs,
    /// Hook TLS libraries (None: `--tls off`).
    pub tls: Option<TlsOptions>,
}

/// The kernel's per-(tgid, fd) connection state (`CONNS`).
pub type KernelConns = BpfHashMap<MapData, u64, sonde_common::ConnState>;

pub struct Probes {
    ebpf: Ebpf,
    pub hooks: HookSet,
    tls: Option<tls::TlsHooks>,
    /// The kernel programs' diagnostics, when the log filter enables any.
    kernel_log: Option<kernel_log::KernelLog>,
}

impl Probes {
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        prereq::check_capabilities()?;
        prereq::check_kernel()?;
        prereq::ensure_tracefs()?;
        for tp in attach::SOCK_TRACEPOINTS {
            if !prereq::tracepoint_exists("sock", tp) {
                return Err(prereq::PrereqError::MissingTracepoint(tp).into());
            }
        }
        prereq::raise_memlock();

        let (v6, task) = kernel_offsets();
        let agent_tgid = std::process::id();
        let fork_child_offset =
            prereq::tracepoint_field_offset("sched", "sched_process_fork", "child_pid").unwrap_or(0);
        let exit_group_dead_offset =
            prereq::tracepoint_field_offset("sched", "sched_process_exit", "group_dead").unwrap_or(0);
        let state_sport_offset =
            prereq::tracepoint_field_offset("sock", "inet_sock_set_state", "sport").unwrap_or(0);
        let state_dport_offset =
            prereq::tracepoint_field_offset("sock", "inet_sock_set_state", "dport").unwrap_or(0);
        let state_saddr_offset =
            prereq::tracepoint_field_offset("sock", "inet_sock_set_state", "saddr_v6").unwrap_or(0);
        let capture = options.capture_bytes.min(MAX_CAPTURE as u32);
        let filter_pids: u32 = (!options.pids.is_empty()).into();
        let wakeup_bytes: u64 = (ring_size(options.ring_bytes) / 16) as u64;
        let tls_excludes = options.tls.as_ref().is_some_and(|t| !t.exclude.is_empty());
        let cpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(256).max(1);
        let log_level = kernel_log::level_from_filter();
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &log_level, false)
            .override_global(globals::AGENT_TGID, &agent_tgid, true)
            .override_global(globals::CAPTURE_BYTES, &capture, true)
            .override_global(globals::FILTER_PIDS, &filter_pids, true)
            .override_global(globals::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(globals::OFF_V6_DADDR, &v6.v6_daddr, true)
            .override_global(globals::OFF_V6_RCV_SADDR, &v6.v6_rcv_saddr, true)
            .override_global(globals::OFF_FORK_CHILD_PID, &fork_child_offset, true)
            .override_global(globals::OFF_EXIT_GROUP_DEAD, &exit_group_dead_offset, true)
            .override_global(globals::OFF_TASK_GROUP_LEADER, &task.group_leader, true)
            .override_global(globals::OFF_TASK_START_BOOTTIME, &task.start_boottime, true)
            .override_global(globals::OFF_STATE_SPORT, &state_sport_offset, true)
            .override_global(globals::OFF_STATE_DPORT, &state_dport_offset, true)
            .override_global(globals::OFF_STATE_SADDR_V6, &state_saddr_offset, true)
            .map_max_entries(maps::EVENTS, ring_size(options.ring_bytes))
            .map_max_entries(maps::SCRATCH, cpus)
            .map_max_entries(maps::SELECTED_PIDS, if filter_pids != 0 { PID_BITMAP_WORDS } else { 1 })
            .map_max_entries(maps::TLS_PIDS, if options.tls.is_some() { PID_BITMAP_WORDS } else { 1 })
            .map_max_entries(maps::TLS_EXCLUDED, if tls_excludes { PID_BITMAP_WORDS } else { 1 })
            .load(EBPF_OBJECT)?;

        if !options.pids.is_empty() {
            let mut selected: BpfArray<_, u64> = BpfArray::try_from(
                ebpf.map_mut(maps::SELECTED_PIDS).ok_or(ProbeError::MissingMap(maps::SELECTED_PIDS))?,
            )
            .map_err(|source| ProbeError::Map { name: maps::SELECTED_PIDS, source })?;
            for (word, bits) in pid_bitmap(&options.pids) {
                selected
                    .set(word, bits, 0)
                    .map_err(|source| ProbeError::Map { name: maps::SELECTED_PIDS, source })?;
            }
        }

        let hooks = attach::attach(&mut ebpf, options.hooks, options.programs)?;
        if fork_child_offset != 0 {
            attach::attach_thread_starts(&mut ebpf, options.programs);
        } else {
            tracing::warn!(
                "sched:sched_process_fork has no child_pid field here: calls made by worker threads start their own traces"
            );
        }
        attach::attach_exits(&mut ebpf, options.programs);
        if state_sport_offset != 0 && state_dport_offset != 0 && state_saddr_offset != 0 {
            attach::attach_own_connections(&mut ebpf, options.programs);
        } else {
            tracing::warn!(
                "sock:inet_sock_set_state is missing or has no sport/saddr_v6: a collector on this host that sonde exports to gets spans of sonde's exports"
            );
        }
        let tls = match &options.tls {
            Some(tls_options) => {
                let excluded = if tls_excludes {
                    let map = ebpf
                        .take_map(maps::TLS_EXCLUDED)
                        .ok_or(ProbeError::MissingMap(maps::TLS_EXCLUDED))?;
                    Some(
                        BpfArray::try_from(map)
                            .map_err(|source| ProbeError::Map { name: maps::TLS_EXCLUDED, source })?,
                    )
                } else {
                    None
                };
                let mut hooks = tls::TlsHooks::new(options.programs, tls_options, excluded);
                attach::attach_tls_helpers(&mut ebpf, options.programs);
                hooks.scan_all(&mut ebpf);
                Some(hooks)
            }
            None => None,
        };
        let kernel_log = (log_level != 0)
            .then(|| {
                kernel_log::KernelLog::start(&mut ebpf)
                    .inspect_err(|error| tracing::warn!(%error, "the kernel programs' log cannot be read"))
                    .ok()
            })
            .flatten();
        // Loading parsed the kernel's BTF: megabytes, freed now.
        crate::heap::release_freed();
        tracing::info!(
            hooks = %hooks,
            programs = ?options.programs,
            capture_bytes = capture,
            tls_libraries = tls.as_ref().map_or(0, tls::TlsHooks::hooked_libraries),
            "kernel programs attached"
        );
        Ok(Self { ebpf, hooks, tls, kernel_log })
    }

    /// Logs what the kernel programs wrote to their log since the last call.
    pub fn drain_kernel_log(&mut self) {
        if let Some(log) = self.kernel_log.as_mut() {
            log.drain();
        }
    }

    /// Periodic upkeep: forget what was noted about processes that exited.
    pub fn sweep(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.sweep(crate::process::alive);
        }
    }

    /// What the data flow noticed about TLS: a process loaded a library, or sent ciphertext no
    /// hook decrypted.
    pub fn tls_notice(&mut self, notice: TlsNotice) {
        let Some(tls) = self.tls.as_mut() else { return };
        match notice {
            TlsNotice::Mapped(pid) => tls.scan_process(&mut self.ebpf, pid),
            TlsNotice::Ciphertext(pid) => tls.ciphertext_seen(pid),
        }
    }

    /// The ring buffer of events (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map(maps::EVENTS).ok_or(ProbeError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map { name: maps::EVENTS, source })
    }

    /// The kernel's connection table, for the intake thread to forget entries (can be taken once).
    pub fn take_conns(&mut self) -> Result<KernelConns, ProbeError> {
        let map = self.ebpf.take_map(maps::CONNS).ok_or(ProbeError::MissingMap(maps::CONNS))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name: maps::CONNS, source })
    }

    /// Hits counted by the null probe, summed over CPUs.
    pub fn null_hits(&self) -> u64 {
        self.per_cpu_sum(maps::NULL_HITS, 0)
    }

    fn per_cpu_sum(&self, map: &str, index: u32) -> u64 {
        let Some(map) = self.ebpf.map(map) else {
            return 0;
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        array.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0)
    }

    /// Kernel-side drops per `DropReason`, summed over CPUs.
    pub fn drops(&self) -> [u64; DROP_REASONS as usize] {
        let mut out = [0u64; DROP_REASONS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.per_cpu_sum(maps::DROPS, i as u32);
        }
        out
    }
}

/// Sent by the intake thread to the thread that holds the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsNotice {
    /// The process mapped an executable file (maybe a TLS library).
    Mapped(u32),
    /// The process sent or received TLS ciphertext on a connection no TLS hook spoke for.
    Ciphertext(u32),
}

/// The kernel struct offsets the programs need, from the kernel's BTF; zeros (and a warning
/// saying what is lost) for what cannot be found.
fn kernel_offsets() -> (btf_offsets::SockOffsets, btf_offsets::TaskOffsets) {
    const NO_IPV6: &str = "IPv6 addresses will be missing from spans";
    const NO_START: &str = "process start times are not read: a process that exits and has its pid taken within a poll may be described by its successor's /proc";
    let none = (
        btf_offsets::SockOffsets { v6_daddr: 0, v6_rcv_saddr: 0 },
        btf_offsets::TaskOffsets { group_leader: 0, start_boottime: 0 },
    );
    let data = match btf_offsets::vmlinux() {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(error = %e, "{NO_IPV6}; {NO_START}");
            return none;
        }
    };
    let sock = btf_offsets::sock_offsets(&data).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "{NO_IPV6}");
        none.0
    });
    let task = btf_offsets::task_offsets(&data).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "{NO_START}");
        none.1
    });
    (sock, task)
}

fn ring_size(requested: u32) -> u32 {
    requested.max(4096).checked_next_power_of_two().unwrap_or(1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_bitmap_sets_one_bit_per_pid() {
        let words = pid_bitmap(&[1, 63, 64, 130, PID_LIMIT - 1, PID_LIMIT]);
        let expected = [(0, 1 << 1 | 1 << 63), (1, 1), (2, 1 << 2), (PID_BITMAP_WORDS - 1, 1 << 63)];
        assert_eq!(words.into_iter().collect::<Vec<_>>(), expected);
    }
}
