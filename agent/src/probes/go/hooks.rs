//! Following goroutines: each Go executable that selected processes run is hooked once, when the
//! first of them is seen (a uprobe on a file fires in every process that runs it, started before or
//! after), then each such process is named to the kernel (`GO_PROCS`), which from then on keys the
//! requests its goroutines serve by goroutine instead of by thread (`ebpf/src/goroutines.rs`). With
//! `--tls on`, an executable that has Go's `crypto/tls` is hooked there too, so that its HTTPS is
//! read as plaintext (`ebpf/src/tls.rs`), the TLS calls keyed by goroutine as well.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use sonde_common::maps::GO_PROCS;

use super::{
    Function, GoBinary, GoBinaryError, NEWPROC1, REQUEST_WRITE, ROUND_TRIP, TLS_CLIENT_HANDSHAKE, TLS_READ,
    TLS_SERVER_HANDSHAKE, TLS_WRITE,
};
use crate::probes::{HookSet, ProbeError, propagation};

/// The uprobes that follow goroutines, as (function, program, on its return).
const HOOKS: &[(&str, &str, bool)] = &[
    (NEWPROC1, "go_newproc1", false),
    (NEWPROC1, "go_newproc1_return", true),
    (ROUND_TRIP, "go_round_trip", false),
    (REQUEST_WRITE, "go_request_write", false),
];

/// The uprobes on `crypto/tls`, as (function, program at its entry, program at each of its RET
/// instructions, whether the binary may lack it). The handshakes come first: a call must never be
/// entered where its return is not caught (its record would make the goroutine's later socket I/O
/// look like ciphertext). The handshakes proper, not `handshakeContext`, which every `Read` and
/// `Write` calls first (two more traps per call, ~1–5 µs each, to learn that it is done); a
/// program that is only a TLS client or only a server has only one of them.
const TLS_HOOKS: &[(&str, &str, &str, bool)] = &[
    (TLS_CLIENT_HANDSHAKE, "go_tls_handshake", "go_tls_control_return", true),
    (TLS_SERVER_HANDSHAKE, "go_tls_handshake", "go_tls_control_return", true),
    (TLS_READ, "go_tls_read", "go_tls_data_return", false),
    (TLS_WRITE, "go_tls_write", "go_tls_data_return", false),
];

/// What sonde hooked in one Go executable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hooked {
    goroutines: bool,
    tls: bool,
}

pub struct GoHooks {
    /// The kernel's table of followed processes: tgid → generation.
    procs: BpfHashMap<MapData, u32, u32>,
    /// (device, inode) of every executable looked at: what is hooked in it.
    executables: HashMap<(u64, u64), Hooked>,
    /// Followed processes: whether their `crypto/tls` is hooked too.
    followed: HashMap<u32, bool>,
    /// With `--tls on`, `crypto/tls` is hooked, except in the executables `--tls-exclude` names.
    tls: Option<Vec<glob::Pattern>>,
    /// The last generation handed out (never 0).
    generation: u32,
    hooks: HookSet,
    /// Whether the socket hook set's write-family entries are attached (`attach_send_entries`):
    /// with propagation from the start, else with the first Go program followed — until then,
    /// no process pays for them.
    send_entries: bool,
}

impl GoHooks {
    /// `send_entries`: already attached (propagation is on); `tls`: hook `crypto/tls` too, except
    /// in the executables these `--tls-exclude` globs name.
    pub fn new(
        ebpf: &mut Ebpf,
        hooks: HookSet,
        send_entries: bool,
        tls: Option<Vec<glob::Pattern>>,
    ) -> Result<Self, ProbeError> {
        let map = ebpf.take_map(GO_PROCS).ok_or(ProbeError::MissingMap(GO_PROCS))?;
        let procs = BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name: GO_PROCS, source })?;
        Ok(Self {
            procs,
            executables: HashMap::new(),
            followed: HashMap::new(),
            tls,
            generation: 0,
            hooks,
            send_entries,
        })
    }

    /// Process `pid` was seen: if it runs a Go executable sonde can hook, hook it (once) and
    /// follow the process's goroutines.
    pub fn process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.followed.contains_key(&pid) {
            return;
        }
        // Through the process's own link: a container's executable is not at its path on the host.
        let exe = format!("/proc/{pid}/exe");
        let Ok(meta) = std::fs::metadata(&exe) else { return };
        let key = (meta.dev(), meta.ino());
        let hooked = match self.executables.get(&key) {
            Some(&hooked) => hooked,
            None => {
                let hooked = hook_executable(ebpf, Path::new(&exe), pid, self.tls.as_deref());
                self.executables.insert(key, hooked);
                hooked
            }
        };
        if !hooked.goroutines {
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
                self.followed.insert(pid, hooked.tls);
            }
            Err(e) => tracing::warn!(pid, error = %e, "cannot follow the goroutines of a Go program"),
        }
    }

    /// Forget processes that exited (the kernel removes their entries itself where it sees the
    /// exit; this catches the rest).
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self.followed.keys().copied().filter(|&pid| !alive(pid)).collect();
        for pid in gone {
            self.followed.remove(&pid);
            let _ = self.procs.remove(&pid);
        }
    }

    /// How many Go executables are hooked.
    pub fn hooked_executables(&self) -> usize {
        self.executables.values().filter(|hooked| hooked.goroutines).count()
    }

    /// Whether sonde reads the plaintext of process `pid`'s `crypto/tls`.
    pub fn reads_tls(&self, pid: u32) -> bool {
        self.followed.get(&pid).copied().unwrap_or(false)
    }
}

/// Hooks the executable at `path` (of process `pid`) if it is a Go program sonde reads, and its
/// `crypto/tls` with `tls` (the `--tls-exclude` globs) unless they name it; says why not where
/// that is news.
fn hook_executable(ebpf: &mut Ebpf, path: &Path, pid: u32, tls: Option<&[glob::Pattern]>) -> Hooked {
    let binary = match super::inspect(path) {
        Ok(binary) => binary,
        Err(GoBinaryError::NotGo { .. } | GoBinaryError::Elf { .. } | GoBinaryError::Read { .. }) => {
            return Hooked::default();
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "a Go program whose goroutines cannot be followed: its client spans get no in-process parent while it serves several requests");
            return Hooked::default();
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
        return Hooked::default();
    };
    for &(function, program, _) in HOOKS {
        if let Err(e) = attach(ebpf, program, path, functions[function].file_offset) {
            tracing::warn!(pid, exe = %exe.display(), error = %e, "cannot hook a Go program: its goroutines are not followed");
            return Hooked::default();
        }
    }
    let tls = match tls {
        Some(exclude) if crate::probes::tls::excluded(exclude, &exe.to_string_lossy()) => {
            tracing::info!(pid, exe = %exe.display(), "crypto/tls of this Go program is not hooked (--tls-exclude)");
            false
        }
        Some(_) => hook_tls(ebpf, path, &binary, pid),
        None => false,
    };
    tracing::info!(pid, exe = %exe.display(), go = %binary.version_text, https = tls, "following the goroutines of a Go program");
    Hooked { goroutines: true, tls }
}

/// Hooks `crypto/tls` in `binary`, if it has it: each function's returns, then its entry.
fn hook_tls(ebpf: &mut Ebpf, path: &Path, binary: &GoBinary, pid: u32) -> bool {
    let mut found = Vec::new();
    for &(name, entry, ret, optional) in TLS_HOOKS {
        let Some(function) = binary.functions.get(name) else {
            if optional {
                continue;
            }
            // A program with no TLS (or one that never reads or writes it) has none of them.
            return false;
        };
        match function.return_offsets() {
            Some(returns) if !returns.is_empty() => found.push((function.file_offset, returns, entry, ret)),
            _ => {
                tracing::warn!(
                    pid,
                    function = name,
                    "a Go program whose HTTPS sonde cannot read: the returns of a crypto/tls function were not found"
                );
                return false;
            }
        }
    }
    for (offset, returns, entry, ret) in found {
        let attached = returns.iter().try_for_each(|&at| attach(ebpf, ret, path, at));
        if let Err(e) = attached.and_then(|()| attach(ebpf, entry, path, offset)) {
            tracing::warn!(pid, error = %e, "cannot hook a Go program's crypto/tls: its HTTPS is not read");
            return false;
        }
    }
    true
}

/// The functions every goroutine hook needs, if the binary is one sonde reads and has them all.
fn needed(binary: &GoBinary) -> Option<HashMap<&'static str, &Function>> {
    if !binary.supported() {
        return None;
    }
    HOOKS.iter().map(|&(name, _, _)| Some((name, binary.functions.get(name)?))).collect()
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
