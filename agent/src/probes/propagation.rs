//! The kernel side of `--context-propagation tcp`: the offsets the programs need, the sockops
//! program on the cgroup, and — with the socket hook set, which has no syscall entry hooks — the
//! entry hooks of the write family that file a request's context before its bytes leave.
//!
//! Other programs on the cgroup, a second sonde's included, keep running beside it.
//! Nothing is pinned: the cgroup attachment is a BPF link owned by this process, so an exiting or
//! killed sonde leaves every socket as it was.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, SockOps},
};

use super::{HookSet, ProbeError, attach, btf_offsets};

/// What propagation needs at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropagationOptions {
    /// The cgroup v2 directory whose sockets the sockops program acts on (None: the root).
    pub cgroup: Option<PathBuf>,
}

/// Where the cgroup v2 root is mounted: alone, or beside the v1 hierarchies (a hybrid host).
const CGROUP2_ROOTS: &[&str] = &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// Offsets from the kernel's BTF, written into the programs before load.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub write_seq: u32,
    pub copied_seq: u32,
    pub fd_walk: sonde_common::FdWalk,
}

pub fn offsets() -> Result<Offsets, ProbeError> {
    let data = btf_offsets::vmlinux()?;
    let tcp_sock = btf_offsets::struct_members(&data, "tcp_sock")?;
    let field = |member: &'static str| {
        tcp_sock
            .get(member)
            .copied()
            .ok_or(btf_offsets::BtfError::MemberNotFound { structure: "tcp_sock", member })
    };
    Ok(Offsets {
        write_seq: field("write_seq")?,
        copied_seq: field("copied_seq")?,
        fd_walk: btf_offsets::fd_walk_offsets(&data)?,
    })
}

/// For the socket hook set: the write-family entries that file a request's context.
const SEND_ENTRIES: &[(&str, &str)] = &[
    ("ctx_enter_write", "sys_enter_write"),
    ("ctx_enter_sendto", "sys_enter_sendto"),
    ("ctx_enter_writev", "sys_enter_writev"),
    ("ctx_enter_sendmsg", "sys_enter_sendmsg"),
];

/// For the socket hook set: the read-family exits that read a request's `traceparent` header (its
/// trace replaces the one the kernel gave the request its thread serves).
const HEADER_SCAN: &str = "ctx_exit_read";
const READ_EXITS: &[&str] = &["sys_exit_read", "sys_exit_recvfrom", "sys_exit_readv", "sys_exit_recvmsg"];

/// Whether `program` serves only the socket hook set's propagation, so that a kernel without that
/// set never needs it (`sonde check-kernel`).
pub fn only_for_sock_set(program: &str) -> bool {
    program == HEADER_SCAN || SEND_ENTRIES.iter().any(|&(p, _)| p == program)
}

/// Whether the kernel reads `traceparent` headers with `hooks`: with the socket hook set, whose
/// capture runs inside the read syscall, before its exit. (With the syscall hook sets the capture
/// is at the exit itself; the header is then read by user space alone.)
pub fn scans_headers(hooks: HookSet) -> bool {
    hooks == HookSet::Sock
}

/// Attaches the sockops program to `options.cgroup` (alongside whatever else runs there) and, for
/// the socket hook set, the entry hooks.
pub fn attach(ebpf: &mut Ebpf, hooks: HookSet, options: &PropagationOptions) -> Result<(), ProbeError> {
    let (path, cgroup) = match &options.cgroup {
        Some(path) => (path.clone(), open_cgroup(path)?),
        None => cgroup2_root()?,
    };
    let program = "tcp_context";
    let prog = loaded_program!(ebpf, program, SockOps);
    // A BPF link (kernels from 5.7, and sonde needs 5.8): the kernel runs every program linked to a
    // cgroup, as with BPF_F_ALLOW_MULTI, and refuses flags on a link — hence the default mode,
    // which passes none.
    prog.attach(&cgroup, CgroupAttachMode::Single).map_err(|source| ProbeError::Attach {
        program,
        target: format!("cgroup {}", path.display()),
        source,
    })?;
    tracing::info!(cgroup = %path.display(), "context propagation: TCP option on the sockets of this cgroup");
    if hooks == HookSet::Sock {
        for &(program, tracepoint) in SEND_ENTRIES {
            attach::attach_tracepoint(ebpf, program, "syscalls", tracepoint)?;
        }
        // Optional: without it, a request's header joins its calls to the header's trace on this
        // host only.
        for tracepoint in READ_EXITS {
            if let Err(e) = attach::attach_tracepoint(ebpf, HEADER_SCAN, "syscalls", tracepoint) {
                tracing::warn!(error = %e, "traceparent headers are not read in the kernel: a request's calls join its header's trace on this host only");
                break;
            }
        }
    }
    Ok(())
}

/// The first cgroup v2 root of `CGROUP2_ROOTS`; the error names the first place looked.
fn cgroup2_root() -> Result<(PathBuf, std::fs::File), ProbeError> {
    let mut first_error = None;
    for root in CGROUP2_ROOTS {
        match open_cgroup(Path::new(root)) {
            Ok(dir) => return Ok((PathBuf::from(root), dir)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("CGROUP2_ROOTS is not empty"))
}

fn open_cgroup(path: &Path) -> Result<std::fs::File, ProbeError> {
    let error = |reason: String| ProbeError::Cgroup { path: path.to_owned(), reason };
    let dir = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    // cgroup v2 directories live on a cgroup2 file system.
    // SAFETY: `statfs` is plain integers, valid zeroed; `fstatfs` writes it for an open fd.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor for the call's duration, `stat` a valid out-pointer.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut stat) } != 0 {
        return Err(error(std::io::Error::last_os_error().to_string()));
    }
    if stat.f_type != libc::CGROUP2_SUPER_MAGIC {
        return Err(error("not a cgroup v2 directory (sockops programs attach to cgroup v2 only)".into()));
    }
    Ok(dir)
}
