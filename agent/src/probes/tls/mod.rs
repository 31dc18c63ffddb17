//! TLS libraries: finding the OpenSSL files processes map, hooking each file once (a uprobe on a
//! file fires in every process that maps it, started before or after), and telling which
//! processes speak TLS that sonde cannot see.
//!
//! Discovery: every process's `/proc/PID/maps` at start-up, then the process of each `Mapped`
//! event (the kernel reports executable file mappings: a program's libraries at exec, a `dlopen`
//! later). A file is known by (device, inode), so the same library seen through different paths —
//! `/lib` and `/usr/lib`, or a container's root — is hooked once.

use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

mod entry;

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use sonde_common::PID_LIMIT;

use super::{ProbeError, Programs};

/// One hooked library function: the program on its entry and, where the result matters, the one
/// on its return.
struct Hook {
    symbol: &'static str,
    entry: &'static str,
    ret: Option<&'static str>,
}

const fn hook(symbol: &'static str, entry: &'static str, ret: Option<&'static str>) -> Hook {
    Hook { symbol, entry, ret }
}

/// The plaintext calls, hooked where they are exported (OpenSSL 1.1 and 3 export all four;
/// `SSL_read`/`SSL_write` are required) unless the internal functions behind them are found
/// (`entry.rs`): then those two hooks replace these four.
const EXPORTED_DATA_HOOKS: &[Hook] = &[
    hook("SSL_read", "ssl_read_enter", Some("ssl_data_return")),
    hook("SSL_write", "ssl_write_enter", Some("ssl_data_return")),
    hook("SSL_read_ex", "ssl_read_ex_enter", Some("ssl_data_return")),
    hook("SSL_write_ex", "ssl_write_ex_enter", Some("ssl_data_return")),
];
const REQUIRED: usize = 2;

/// Which socket an `SSL` object uses, and when it goes away; hooked where present.
const CONTROL_HOOKS: &[Hook] = &[
    hook("SSL_do_handshake", "ssl_control_enter", Some("ssl_control_return")),
    hook("SSL_shutdown", "ssl_control_enter", Some("ssl_control_return")),
    hook("SSL_set_fd", "ssl_set_fd", None),
    hook("SSL_free", "ssl_free", None),
];

/// OpenSSL's libssl (`libssl.so.3`, `libssl.so.1.1`, …); not NSS's `libssl3.so`.
pub fn is_openssl(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|name| name.starts_with("libssl.so"))
}

/// The OpenSSL libraries in a `/proc/PID/maps` text, as paths in the process's mount namespace
/// (each once; deleted files left out).
pub fn openssl_in_maps(maps: &str) -> Vec<&str> {
    let mut found: Vec<&str> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode pathname — the path may contain spaces.
        let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim_start) else {
            continue;
        };
        if path.starts_with('/')
            && !path.ends_with(" (deleted)")
            && is_openssl(path)
            && !found.contains(&path)
        {
            found.push(path);
        }
    }
    found
}

/// OpenSSL's libssl is under 1 MiB; anything this large is not one.
const MAX_LIBRARY_BYTES: u64 = 64 << 20;

/// Opens a library file for reading without blocking on a FIFO or a device.
fn open_library(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)
}

/// Where libraries of the host usually live: hooked at start-up even when no process maps them
/// yet, so that a process started later is seen from its first call.
const SYSTEM_LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];

pub struct TlsOptions {
    /// Library paths or executables (name or path) whose TLS is not hooked.
    pub exclude: Vec<glob::Pattern>,
    /// Hook the exported read/write functions even where the cheaper internal ones are found
    /// (tests keep the fallback working with it).
    pub exported_only: bool,
}

/// Whether `--tls-exclude` (`exclude`) names `path`, by its path or its file name.
pub fn excluded(exclude: &[glob::Pattern], path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    exclude.iter().any(|p| p.matches(path) || p.matches(name))
}

pub struct TlsHooks {
    programs: Programs,
    exported_only: bool,
    exclude: Vec<glob::Pattern>,
    /// (device, inode) of every library hooked, and those that could not be (not retried).
    hooked: HashMap<(u64, u64), PathBuf>,
    failed: HashSet<(u64, u64)>,
    /// The kernel's bitmap of processes whose TLS calls are ignored (`--tls-exclude` on an
    /// executable), with the words as last written.
    excluded_pids: Option<(Array<MapData, u64>, HashMap<u32, u64>)>,
    /// Processes already told about (TLS sonde cannot see).
    warned: HashSet<u32>,
}

impl TlsHooks {
    pub fn new(programs: Programs, options: &TlsOptions, excluded_pids: Option<Array<MapData, u64>>) -> Self {
        Self {
            programs,
            exported_only: options.exported_only,
            exclude: options.exclude.clone(),
            hooked: HashMap::new(),
            failed: HashSet::new(),
            excluded_pids: excluded_pids.map(|map| (map, HashMap::new())),
            warned: HashSet::new(),
        }
    }

    fn excluded(&self, path: &str) -> bool {
        excluded(&self.exclude, path)
    }

    /// Start-up: the host's system libraries, then what every running process maps.
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) {
        for dir in SYSTEM_LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.to_str().is_some_and(is_openssl) && !path.is_symlink() {
                    self.hook_file(ebpf, &path.to_string_lossy(), &path);
                }
            }
        }
        let Ok(procs) = std::fs::read_dir("/proc") else { return };
        for entry in procs.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                self.scan_process(ebpf, pid);
            }
        }
    }

    /// A process mapped an executable file: hook the TLS libraries it maps that are new, and
    /// apply `--tls-exclude` to its executable.
    pub fn scan_process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return };
        let libraries = openssl_in_maps(&maps);
        if libraries.is_empty() {
            return;
        }
        // Reached through the process's root: a container's files are not at the same path on
        // the host (or in sonde's own container).
        for path in libraries {
            let on_host = PathBuf::from(format!("/proc/{pid}/root{path}"));
            self.hook_file(ebpf, path, &on_host);
        }
        self.update_exclusion(pid);
    }

    /// Sets or clears the process's bit in the kernel's exclusion bitmap (a pid reused by another
    /// program is re-evaluated: exec maps its libraries anew, which brings it here).
    fn update_exclusion(&mut self, pid: u32) {
        if self.exclude.is_empty() || pid >= PID_LIMIT {
            return;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let exe = exe.as_deref().and_then(Path::to_str).unwrap_or("");
        let excluded = !exe.is_empty() && self.excluded(exe);
        let Some((map, words)) = self.excluded_pids.as_mut() else { return };
        let word = words.entry(pid / 64).or_insert(0);
        let bit = 1u64 << (pid % 64);
        let updated = if excluded { *word | bit } else { *word & !bit };
        if updated != *word {
            *word = updated;
            if let Err(e) = map.set(pid / 64, updated, 0) {
                tracing::warn!(pid, error = %e, "could not update the TLS exclusion of a process");
            } else if excluded {
                tracing::info!(pid, exe, "TLS of this process is not traced (--tls-exclude)");
            }
        }
    }

    /// `path` as the process sees it, `on_host` where sonde opens it.
    fn hook_file(&mut self, ebpf: &mut Ebpf, path: &str, on_host: &Path) {
        // The path comes from a process sonde does not control (a container can put a FIFO or
        // a device there): opened once, without blocking, and only a regular file of library
        // size is read; the attach goes through the same open file.
        let Ok(file) = open_library(on_host) else { return };
        let Ok(meta) = file.metadata() else { return };
        let id = (meta.dev(), meta.ino());
        if self.hooked.contains_key(&id) || self.failed.contains(&id) {
            return;
        }
        if self.excluded(path) {
            tracing::info!(library = path, "TLS library not hooked (--tls-exclude)");
            self.failed.insert(id);
            return;
        }
        let mut data = Vec::new();
        if !meta.is_file() || meta.len() > MAX_LIBRARY_BYTES || (&file).read_to_end(&mut data).is_err() {
            tracing::warn!(library = path, "not a library file: not hooked");
            self.failed.insert(id);
            return;
        }
        let internal = match entry::inspect(&data) {
            entry::Library::Foreign => {
                tracing::info!(library = path, "TLS library of another architecture: not hooked");
                self.failed.insert(id);
                return;
            }
            entry::Library::Native(internal) => internal.filter(|_| !self.exported_only),
        };
        let via = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match attach_file(ebpf, &via, self.programs, internal) {
            Ok((functions, data_hooks)) => {
                tracing::info!(library = path, functions, data_hooks, "TLS library hooked");
                self.hooked.insert(id, on_host.to_owned());
            }
            Err(e) => {
                tracing::warn!(library = path, error = %e, "TLS library could not be hooked: its HTTPS traffic is not traced");
                self.failed.insert(id);
            }
        }
    }

    /// A process sent TLS ciphertext that no hook decrypted. Said once per process when it maps no
    /// hooked library: its TLS is statically linked (Go's crypto/tls, BoringSSL, rustls) or of a
    /// library sonde does not hook.
    pub fn ciphertext_seen(&mut self, pid: u32) {
        if self.warned.contains(&pid) {
            return;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return };
        let hooked_or_excluded = openssl_in_maps(&maps).iter().any(|path| {
            std::fs::metadata(format!("/proc/{pid}/root{path}")).is_ok_and(|m| {
                self.hooked.contains_key(&(m.dev(), m.ino())) || self.failed.contains(&(m.dev(), m.ino()))
            })
        });
        if hooked_or_excluded {
            return;
        }
        self.warned.insert(pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        tracing::warn!(
            pid,
            exe,
            "this process speaks TLS through a library sonde cannot hook (statically linked: Go crypto/tls, \
             BoringSSL, rustls…): its HTTPS requests are not traced"
        );
    }

    /// Forget processes that exited.
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool) {
        self.warned.retain(|&pid| alive(pid));
    }

    pub fn hooked_libraries(&self) -> usize {
        self.hooked.len()
    }
}

/// Attaches every hook present in the file: the number of functions hooked, and where the data
/// hooks went (`internal` or `exported`).
fn attach_file(
    ebpf: &mut Ebpf,
    path: &Path,
    programs: Programs,
    internal: Option<entry::Internal>,
) -> Result<(usize, &'static str), ProbeError> {
    let mut functions = 0;
    let data_hooks = match internal {
        Some(internal) => {
            // The internal functions take the `_ex` arguments (a count pointer) and return 1.
            for (offset, entry) in
                [(internal.read, "ssl_read_ex_enter"), (internal.write, "ssl_write_ex_enter")]
            {
                let at = Location::Offset(offset);
                attach_hook(ebpf, path, at, entry, Some("ssl_data_return"), programs)?;
                functions += 1;
            }
            "internal"
        }
        None => {
            for (i, hook) in EXPORTED_DATA_HOOKS.iter().enumerate() {
                match attach_hook(ebpf, path, Location::Symbol(hook.symbol), hook.entry, hook.ret, programs) {
                    Ok(()) => functions += 1,
                    Err(e) if i < REQUIRED => return Err(e),
                    Err(e) => {
                        tracing::debug!(symbol = hook.symbol, error = %e, "optional TLS function not hooked")
                    }
                }
            }
            "exported"
        }
    };
    for hook in CONTROL_HOOKS {
        match attach_hook(ebpf, path, Location::Symbol(hook.symbol), hook.entry, hook.ret, programs) {
            Ok(()) => functions += 1,
            Err(e) => tracing::debug!(symbol = hook.symbol, error = %e, "optional TLS function not hooked"),
        }
    }
    Ok((functions, data_hooks))
}

#[derive(Clone, Copy)]
enum Location {
    Symbol(&'static str),
    /// A file offset.
    Offset(u64),
}

/// One function's entry program, and its return program first: an entry whose return is not
/// hooked yet would leave the call's record behind in the kernel.
fn attach_hook(
    ebpf: &mut Ebpf,
    path: &Path,
    at: Location,
    entry: &'static str,
    ret: Option<&'static str>,
    programs: Programs,
) -> Result<(), ProbeError> {
    if let Some(ret) = ret {
        attach_uprobe(ebpf, program_for(ret, programs, true), at, path)?;
    }
    attach_uprobe(ebpf, program_for(entry, programs, false), at, path)
}

fn program_for(program: &'static str, programs: Programs, ret: bool) -> &'static str {
    match (programs, ret) {
        (Programs::Sonde, _) => program,
        (Programs::NullProbe, false) => "null_uprobe",
        (Programs::NullProbe, true) => "null_uretprobe",
    }
}

fn attach_uprobe(
    ebpf: &mut Ebpf,
    program: &'static str,
    at: Location,
    path: &Path,
) -> Result<(), ProbeError> {
    let prog = loaded_program!(ebpf, program, UProbe);
    let (location, name) = match at {
        Location::Symbol(symbol) => (UProbeAttachLocation::Symbol(symbol), symbol.to_owned()),
        Location::Offset(offset) => (UProbeAttachLocation::AbsoluteOffset(offset), format!("{offset:#x}")),
    };
    prog.attach(location, path, UProbeScope::AllProcesses).map(drop).map_err(|source| ProbeError::Attach {
        program,
        target: format!("{}:{name}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_openssl_in_maps_once() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00001000 fe:01 99 /usr/lib/x86_64-linux-gnu/libssl3.so
7f0000005000-7f0000006000 r-xp 00001000 fe:01 77 /opt/my app/lib/libssl.so.1.1
7f0000007000-7f0000008000 r-xp 00001000 fe:01 78 /tmp/libssl.so.3 (deleted)
7f0000009000-7f000000a000 rw-p 00000000 00:00 0 
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            openssl_in_maps(maps),
            ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/opt/my app/lib/libssl.so.1.1"]
        );
    }
}
