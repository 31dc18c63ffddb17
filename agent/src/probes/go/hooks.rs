//! Following goroutines: each Go executable that selected processes run is hooked once, when the
//! first of them is seen (a uprobe on a file fires in every process that runs it, started before or
//! after), then each such process is named to the kernel (`GO_PROCS`), which from then on keys the
//! requests its goroutines serve by goroutine instead of by thread (`ebpf/src/goroutines.rs`).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use sonde_common::maps::GO_PROCS;

use super::{Function, GoBinary, GoBinaryError, NEWPROC1, REQUEST_WRITE, ROUND_TRIP};
use crate::probes::{HookSet, ProbeError, propagation};

/// The uprobes, as (function, program, on its return).
const HOOKS: &[(&str, &str, bool)] = &[
    (NEWPROC1, "go_newproc1", false),
    (NEWPROC1, "go_newproc1_return", true),
    (ROUND_TRIP, "go_round_trip", false),
    (REQUEST_WRITE, "go_request_write", false),
];

pub struct GoHooks {
    /// The kernel's table of followed processes: tgid → generation.
    procs: BpfHashMap<MapData, u32, u32>,
    /// (device, inode) of every executable looked at: whether it is hooked.
    executables: HashMap<(u64, u64), bool>,
    followed: HashSet<u32>,
    /// The last generation handed out (never 0).
    generation: u32,
    hooks: HookSet,
    /// Whether the socket hook set's write-family entries are attached (`attach_send_entries`):
    /// with propagation from the start, else with the first Go program followed — until then,
    /// no process pays for them.
    send_entries: bool,
}

impl GoHooks {
    /// `send_entries`: already attached (propagation is on).
    pub fn new(ebpf: &mut Ebpf, hooks: HookSet, send_entries: bool) -> Result<Self, ProbeError> {
        let map = ebpf.take_map(GO_PROCS).ok_or(ProbeError::MissingMap(GO_PROCS))?;
        let procs = BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name: GO_PROCS, source })?;
        Ok(Self {
            procs,
            executables: HashMap::new(),
            followed: HashSet::new(),
            generation: 0,
            hooks,
            send_entries,
        })
    }

    /// Process `pid` was seen: if it runs a Go executable sonde can hook, hook it (once) and
    /// follow the process's goroutines.
    pub fn process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.followed.contains(&pid) {
            return;
        }
        // Through the process's own link: a container's executable is not at its path on the host.
        let exe = format!("/proc/{pid}/exe");
        let Ok(meta) = std::fs::metadata(&exe) else { return };
        let key = (meta.dev(), meta.ino());
        let hooked = match self.executables.get(&key) {
            Some(&hooked) => hooked,
            None => {
                let hooked = hook_executable(ebpf, Path::new(&exe), pid);
                self.executables.insert(key, hooked);
                hooked
            }
        };
        if !hooked {
            return;
        }
        if !self.send_entries {
            if let Err(e) = propagation::attach_send_entries(ebpf, self.hooks) {
                tracing::warn!(error = %e, "cannot follow the goroutines of Go programs");
                return;
            }
            self.send_entries = true;
        }
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        match self.procs.insert(pid, self.generation, 0) {
            Ok(()) => {
                self.followed.insert(pid);
            }
            Err(e) => tracing::warn!(pid, error = %e, "cannot follow the goroutines of a Go program"),
        }
    }

    /// Forget processes that exited (the kernel removes their entries itself where it sees the
    /// exit; this catches the rest).
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self.followed.iter().copied().filter(|&pid| !alive(pid)).collect();
        for pid in gone {
            self.followed.remove(&pid);
            let _ = self.procs.remove(&pid);
        }
    }

    /// How many Go executables are hooked.
    pub fn hooked_executables(&self) -> usize {
        self.executables.values().filter(|&&hooked| hooked).count()
    }
}

/// Hooks the executable at `path` (of process `pid`) if it is a Go program sonde reads; false, and
/// said why where that is news, otherwise.
fn hook_executable(ebpf: &mut Ebpf, path: &Path, pid: u32) -> bool {
    let binary = match super::inspect(path) {
        Ok(binary) => binary,
        Err(GoBinaryError::NotGo { .. } | GoBinaryError::Elf { .. } | GoBinaryError::Read { .. }) => {
            return false;
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "a Go program whose goroutines cannot be followed: its client spans get no in-process parent while it serves several requests");
            return false;
        }
    };
    let exe = std::fs::read_link(path).unwrap_or_else(|_| path.to_path_buf());
    let Some(functions) = needed(&binary) else {
        tracing::info!(
            pid,
            exe = %exe.display(),
            go = %binary.version_text,
            "a Go program whose goroutines are not followed (Go 1.17 or later with net/http's client is needed)"
        );
        return false;
    };
    for &(function, program, _) in HOOKS {
        let f = functions[function];
        if let Err(e) = attach(ebpf, program, path, f.file_offset) {
            tracing::warn!(pid, exe = %exe.display(), error = %e, "cannot hook a Go program: its goroutines are not followed");
            return false;
        }
    }
    tracing::info!(pid, exe = %exe.display(), go = %binary.version_text, "following the goroutines of a Go program");
    true
}

/// The functions every hook needs, if the binary is one sonde reads and has them all.
fn needed(binary: &GoBinary) -> Option<HashMap<&'static str, Function>> {
    if !binary.supported() {
        return None;
    }
    HOOKS.iter().map(|&(name, _, _)| Some((name, *binary.functions.get(name)?))).collect()
}

fn attach(ebpf: &mut Ebpf, program: &'static str, path: &Path, offset: u64) -> Result<(), ProbeError> {
    let prog = loaded_program!(ebpf, program, UProbe);
    prog.attach(UProbeAttachLocation::AbsoluteOffset(offset), path, UProbeScope::AllProcesses)
        .map(drop)
        .map_err(|source| ProbeError::Attach {
            program,
            target: format!("{}:{offset:#x}", path.display()),
            source,
        })
}
