//! Loading and attaching the kernel programs: prerequisites, the choice of hook set, the globals
//! and map sizes the programs are built with, and read access to their maps.

use std::borrow::Cow;

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
mod features;
pub mod go;
mod hooks;
mod kernel_log;
pub mod prereq;
pub mod propagation;
pub mod sockhash_check;
mod sockhash_stand_in;
pub mod tls;

pub use attach::Programs;
pub use features::{Features, describe_goroutine_registers};
pub use hooks::{HookChoice, HookSet};

/// The hook set `choice` gives on a kernel with `features`, on this architecture.
pub fn choose_hooks(choice: HookChoice, features: &Features) -> Result<HookSet, prereq::PrereqError> {
    hooks::choose(choice, features, std::env::consts::ARCH == "x86_64")
}
pub use tls::TlsOptions;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::ProgramError,
};
use sonde_common::{GoRegisters, MAX_CAPTURE, PID_BITMAP_WORDS, PID_LIMIT, globals, maps};

use crate::metrics::own::KernelReading;

/// The kernel object built by `build.rs` (empty when the build was skipped with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde"));

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
    #[error("preparing the eBPF object: {reason}")]
    Object { reason: String },
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
    #[error("the fd-table walk: {0}")]
    FdWalk(#[from] btf_offsets::BtfError),
    #[error("context propagation needs the cgroup {path}: {reason} (choose one with --cgroup)")]
    Cgroup { path: std::path::PathBuf, reason: String },
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
    /// Put trace context on the wire in a TCP option (None: `--context-propagation off`).
    pub propagation: Option<propagation::PropagationOptions>,
    /// Follow the goroutines of Go programs (`--go on`), where the kernel allows it.
    pub go: bool,
}

/// The kernel's per-(tgid, fd) tables that user space writes to.
pub struct KernelTables {
    /// Connection state (`CONNS`): forgotten entries, verdicts.
    pub conns: BpfHashMap<MapData, u64, sonde_common::ConnState>,
    /// Where bodies end (`SKIPS`).
    pub skips: BpfHashMap<MapData, u64, sonde_common::SkipTo>,
    /// Processes whose requests get no context from the request their thread serves
    /// (`SHARED_THREADS`): tgid → why (`link::SharedThreads`).
    pub shared_threads: BpfHashMap<MapData, u32, u8>,
}

pub struct Probes {
    ebpf: Ebpf,
    pub hooks: HookSet,
    tls: Option<tls::TlsHooks>,
    go: Option<go::GoHooks>,
    /// The kernel programs' diagnostics, when the log filter enables any.
    kernel_log: Option<kernel_log::KernelLog>,
}

impl Probes {
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        prereq::check_capabilities(options.propagation.is_some())?;
        prereq::ensure_tracefs()?;
        prereq::raise_memlock();
        let features = Features::detect();
        let chosen = choose_hooks(options.hooks, &features)?;
        // The walk's offsets are written into the programs, so it is decided before load.
        let fd_walk = match chosen {
            HookSet::FdWalk => btf_offsets::fd_walk_offsets(&btf_offsets::vmlinux()?)?,
            HookSet::Sock | HookSet::Tracepoints => sonde_common::FdWalk::default(),
        };

        let propagation = if options.propagation.is_some() { Some(propagation::offsets()?) } else { None };

        let tls_excludes = options.tls.as_ref().is_some_and(|t| !t.exclude.is_empty());
        let log_level = kernel_log::level_from_filter();
        let go_wanted = if options.go { features.goroutine_registers() } else { GoRegisters::OFF };
        let Loaded { mut ebpf, fork_child_offset, state_offsets, go_registers } =
            load_object(options, &fd_walk, propagation.as_ref(), go_wanted, log_level)?;
        let go = go_registers != GoRegisters::OFF;
        if options.go && !go {
            tracing::warn!(
                "goroutines of Go programs are {}; a Go program's client spans get an in-process parent only while it serves one request at a time",
                features::describe_goroutine_registers(go_registers)
            );
        }
        let capture = options.capture_bytes.min(MAX_CAPTURE as u32);

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

        let hooks = attach::attach(&mut ebpf, chosen, options.hooks, options.programs)?;
        if let Some(propagation_options) = &options.propagation {
            propagation::attach(&mut ebpf, hooks, propagation_options)?;
        }
        if fork_child_offset != 0 {
            attach::attach_thread_starts(&mut ebpf, options.programs);
        } else {
            tracing::warn!(
                "sched:sched_process_fork has no child_pid field here: calls made by worker threads start their own traces"
            );
        }
        attach::attach_exits(&mut ebpf, options.programs);
        if state_offsets {
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
        // Go programs are hooked as the data flow selects them (`ProbeNotice::Goroutines`): a uprobe
        // costs every process that runs the executable, selected or not.
        let go = if go {
            Some(go::GoHooks::new(
                &mut ebpf,
                hooks,
                options.propagation.is_some(),
                options.tls.as_ref().map(|t| t.exclude.clone()),
            )?)
        } else {
            None
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
            kernel = %features,
            programs = ?options.programs,
            capture_bytes = capture,
            tls_libraries = tls.as_ref().map_or(0, tls::TlsHooks::hooked_libraries),
            go_executables = go.as_ref().map_or(0, go::GoHooks::hooked_executables),
            "kernel programs attached"
        );
        Ok(Self { ebpf, hooks, tls, go, kernel_log })
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
        if let Some(go) = self.go.as_mut() {
            go.sweep(crate::process::alive);
        }
    }

    /// What the data flow noticed about a process: it loaded a library, sent ciphertext no hook
    /// decrypted, or runs goroutines.
    pub fn notice(&mut self, notice: ProbeNotice) {
        match notice {
            ProbeNotice::Mapped(pid) => {
                if let Some(tls) = self.tls.as_mut() {
                    tls.scan_process(&mut self.ebpf, pid);
                }
            }
            ProbeNotice::Ciphertext(pid) => {
                if let Some(go) = self.go.as_mut() {
                    // Its goroutines' notice may come after this one.
                    go.process(&mut self.ebpf, pid);
                    if go.reads_tls(pid) {
                        return;
                    }
                }
                if let Some(tls) = self.tls.as_mut() {
                    tls.ciphertext_seen(pid);
                }
            }
            ProbeNotice::Goroutines(pid) => {
                if let Some(go) = self.go.as_mut() {
                    go.process(&mut self.ebpf, pid);
                }
            }
        }
    }

    /// The ring buffer of events (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map(maps::EVENTS).ok_or(ProbeError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map { name: maps::EVENTS, source })
    }

    /// The kernel's tables the intake thread writes to (can be taken once).
    pub fn take_tables(&mut self) -> Result<KernelTables, ProbeError> {
        Ok(KernelTables {
            conns: self.take_hash_map(maps::CONNS)?,
            skips: self.take_hash_map(maps::SKIPS)?,
            shared_threads: self.take_hash_map(maps::SHARED_THREADS)?,
        })
    }

    fn take_hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<MapData, K, V>, ProbeError> {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })
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

    /// The kernel side's counters, summed over CPUs: drops per `DropReason`, and the rest per
    /// `KernelCount`.
    pub fn kernel_reading(&self) -> KernelReading {
        let mut reading = KernelReading::default();
        for (i, slot) in reading.drops.iter_mut().enumerate() {
            *slot = self.per_cpu_sum(maps::DROPS, i as u32);
        }
        for (i, slot) in reading.counts.iter_mut().enumerate() {
            *slot = self.per_cpu_sum(maps::COUNTS, i as u32);
        }
        reading
    }
}

/// Sent by the intake thread to the thread that holds the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeNotice {
    /// The process mapped an executable file (maybe a TLS library).
    Mapped(u32),
    /// The process sent or received TLS ciphertext on a connection no TLS hook spoke for.
    Ciphertext(u32),
    /// The process is a Go program (its goroutines may be followed).
    Goroutines(u32),
}

/// The kernel struct offsets the programs need, from the kernel's BTF; zeros (and a warning
/// saying what is lost) for what cannot be found.
/// The object loaded (not attached), with what the programs need written in before load.
struct Loaded {
    ebpf: Ebpf,
    /// Where `child_pid` sits in the `sched_process_fork` record (0: the field is missing).
    fork_child_offset: u32,
    /// Whether the `inet_sock_set_state` record has the fields `own.rs` reads.
    state_offsets: bool,
    /// How goroutines are followed (`GoRegisters`): as asked, or off where the task's stack offset
    /// was asked for and BTF did not give it.
    go_registers: u32,
}

/// Loads the object with its globals (offsets from the kernel's BTF and tracepoint formats, the
/// options, the fd-table walk's offsets, the kernel log level) and map sizes. Programs are loaded
/// into the kernel later, on first use.
fn load_object(
    options: &ProbeOptions,
    fd_walk: &sonde_common::FdWalk,
    propagation: Option<&propagation::Offsets>,
    go_registers: u32,
    log_level: u8,
) -> Result<Loaded, ProbeError> {
    let propagate: u32 = options.propagation.as_ref().map_or(0, |p| p.carriers.bits());
    let headers = options.propagation.as_ref().is_some_and(|p| p.carriers.header);
    let object: Cow<[u8]> = if headers {
        Cow::Borrowed(EBPF_OBJECT)
    } else {
        Cow::Owned(
            sockhash_stand_in::with_hash_map_for(EBPF_OBJECT, maps::CLIENT_SOCKS)
                .map_err(|reason| ProbeError::Object { reason })?,
        )
    };
    let propagation = propagation.copied().unwrap_or_default();
    let (v6, task) = kernel_offsets();
    let go_registers = if go_registers == GoRegisters::TASK_STACK && task.stack == 0 {
        GoRegisters::OFF
    } else {
        go_registers
    };
    let agent_tgid = std::process::id();
    let field = |category: &str, tracepoint: &str, field: &str| {
        prereq::tracepoint_field_offset(category, tracepoint, field).unwrap_or(0)
    };
    let fork_child_offset = field("sched", "sched_process_fork", "child_pid");
    let exit_group_dead_offset = field("sched", "sched_process_exit", "group_dead");
    let state_sport_offset = field("sock", "inet_sock_set_state", "sport");
    let state_dport_offset = field("sock", "inet_sock_set_state", "dport");
    let state_saddr_offset = field("sock", "inet_sock_set_state", "saddr_v6");
    let capture = options.capture_bytes.min(MAX_CAPTURE as u32);
    let filter_pids: u32 = (!options.pids.is_empty()).into();
    let wakeup_bytes: u64 = (ring_size(options.ring_bytes) / 16) as u64;
    let tls_excludes = options.tls.as_ref().is_some_and(|t| !t.exclude.is_empty());
    let cpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(256).max(1);
    let ebpf = EbpfLoader::new()
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
        .override_global(globals::FD_WALK, fd_walk, true)
        .override_global(globals::PROPAGATE, &propagate, true)
        .override_global(globals::GO_GOROUTINES, &go_registers, true)
        .override_global(globals::OFF_TASK_STACK, &task.stack, true)
        .override_global(globals::OFF_TCP_WRITE_SEQ, &propagation.write_seq, true)
        .override_global(globals::OFF_TCP_COPIED_SEQ, &propagation.copied_seq, true)
        .override_global(globals::SEND_FD_WALK, &propagation.fd_walk, true)
        .map_max_entries(maps::EVENTS, ring_size(options.ring_bytes))
        .map_max_entries(maps::SCRATCH, cpus)
        .map_max_entries(maps::SELECTED_PIDS, if filter_pids != 0 { PID_BITMAP_WORDS } else { 1 })
        .map_max_entries(maps::TLS_PIDS, if options.tls.is_some() { PID_BITMAP_WORDS } else { 1 })
        .map_max_entries(maps::TLS_EXCLUDED, if tls_excludes { PID_BITMAP_WORDS } else { 1 })
        .map_max_entries(maps::CLIENT_SOCKS, if headers { 65535 } else { 1 })
        .load(&object)?;
    Ok(Loaded {
        ebpf,
        fork_child_offset,
        state_offsets: state_sport_offset != 0 && state_dport_offset != 0 && state_saddr_offset != 0,
        go_registers,
    })
}

/// One program of the object, as this kernel's verifier took it (`sonde check-kernel`).
pub struct ProgramCheck {
    pub name: String,
    /// None: loaded; else the verifier's (or the loader's) refusal.
    pub refused: Option<String>,
    /// The program needs a feature this kernel lacks, so its refusal is expected.
    pub needs_missing_feature: bool,
}

/// Loads every program of the object, as the most demanding configuration would (the fd-table
/// walk's offsets and every kernel log statement on, so that the verifier sees that code too),
/// without attaching any. The kernel's features come back beside the programs, with how goroutines
/// are read here (a `GoRegisters` value, as the load settled it).
pub fn check_programs() -> Result<(Features, u32, Vec<ProgramCheck>), ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    prereq::check_capabilities(false)?;
    prereq::ensure_tracefs()?;
    prereq::raise_memlock();
    let features = Features::detect();
    let wanted = features.goroutine_registers();
    let fd_walk =
        btf_offsets::vmlinux().and_then(|data| btf_offsets::fd_walk_offsets(&data)).unwrap_or_default();
    let options = ProbeOptions {
        hooks: HookChoice::Auto,
        capture_bytes: MAX_CAPTURE as u32,
        ring_bytes: 1 << 20,
        pids: vec![1],
        programs: Programs::Sonde,
        tls: Some(TlsOptions {
            exclude: vec![glob::Pattern::new("/nonexistent/*").expect("a valid glob")],
            exported_only: false,
        }),
        propagation: Some(propagation::PropagationOptions {
            cgroup: None,
            carriers: propagation::Carriers { tcp_option: true, header: true },
        }),
        go: wanted != GoRegisters::OFF,
    };
    // Propagation on, so that the verifier sees its code paths too.
    let propagation = propagation::offsets().unwrap_or_default();
    let mut loaded =
        load_object(&options, &fd_walk, Some(&propagation), wanted, aya_log::Level::Trace as u8)?;
    let mut checks = Vec::new();
    for (name, program) in loaded.ebpf.programs_mut() {
        let result = match program {
            aya::programs::Program::TracePoint(p) => p.load(),
            aya::programs::Program::UProbe(p) => p.load(),
            aya::programs::Program::SockOps(p) => p.load(),
            aya::programs::Program::SkMsg(p) => p.load(),
            _ => continue,
        };
        checks.push(ProgramCheck {
            name: name.to_owned(),
            // The verifier's log is long; its last lines say why.
            refused: result.err().map(|e| verifier_summary(&e)),
            needs_missing_feature: (attach::needs_task_regs(name) && !features.task_regs)
                || (propagation::only_for_sock_set(name) && !features.sock_tracepoints)
                || propagation::optional(name),
        });
    }
    checks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((features, loaded.go_registers, checks))
}

/// Lines of a refused program's verifier log that `check-kernel` prints unless
/// SONDE_VERIFIER_LOG_LINES asks for more.
const VERIFIER_LOG_LINES: usize = 4;

/// The error and the last lines of the verifier's log, if any: `VERIFIER_LOG_LINES` of them,
/// shortened to one line's worth, or as many as SONDE_VERIFIER_LOG_LINES says, whole (for whoever
/// has to find out why a kernel refused a program).
fn verifier_summary(error: &ProgramError) -> String {
    let lines = std::env::var("SONDE_VERIFIER_LOG_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(VERIFIER_LOG_LINES);
    let text = match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> =
                log.lines().rev().take(lines).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{io_error}: {}", tail.join(" / "))
        }
        other => other.to_string(),
    };
    if lines > VERIFIER_LOG_LINES { text } else { text.chars().take(600).collect() }
}

fn kernel_offsets() -> (btf_offsets::SockOffsets, btf_offsets::TaskOffsets) {
    const NO_IPV6: &str = "IPv6 addresses will be missing from spans";
    const NO_START: &str = "process start times are not read: a process that exits and has its pid taken within a poll may be described by its successor's /proc; without bpf_task_pt_regs, goroutines are not followed";
    let none = (
        btf_offsets::SockOffsets { v6_daddr: 0, v6_rcv_saddr: 0 },
        btf_offsets::TaskOffsets { group_leader: 0, start_boottime: 0, stack: 0 },
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

/// The ring buffer's size for a requested one.
pub fn ring_size(requested: u32) -> u32 {
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
