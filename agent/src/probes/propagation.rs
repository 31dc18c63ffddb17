//! The kernel side of `--context-propagation`: the offsets the programs need, the sockops program
//! on the cgroup (TCP options; enrolment of client sockets for headers), the `sk_msg` program that
//! writes `traceparent` headers, and — with the socket hook set, which has no syscall entry hooks —
//! the entry hooks of the write family that file a request's context before its bytes leave.
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
    maps::{MapData, ProgramArray, SockHash},
    programs::{CgroupAttachMode, ProgramError, SkMsg, SockOps, TracePoint},
};

use sonde_common::maps::{CLIENT_SOCKS, HEADER_SCAN_JUMP};

use super::{HookSet, ProbeError, attach, btf_offsets};

/// What propagation needs at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropagationOptions {
    /// The cgroup v2 directory whose sockets the sockops program acts on (None: the root).
    pub cgroup: Option<PathBuf>,
    pub carriers: Carriers,
}

/// What carries the context on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carriers {
    /// A TCP header option on the segment each request begins.
    pub tcp_option: bool,
    /// A `traceparent` header in each plaintext request head.
    pub header: bool,
}

impl Carriers {
    /// The kernel's `PROPAGATE` global.
    pub fn bits(self) -> u32 {
        let mut bits = 0;
        if self.tcp_option {
            bits |= sonde_common::propagation::CARRY_TCP_OPTION;
        }
        if self.header {
            bits |= sonde_common::propagation::CARRY_HEADER;
        }
        bits
    }
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
    SEND_ENTRIES.iter().any(|&(p, _)| p == program)
}

/// Whether `program` is optional: without it, propagation works but a request's calls join its
/// `traceparent` header's trace on this host only (`sonde check-kernel`).
///
/// The header writer too: a kernel whose verifier refuses it runs every mode but `headers`, and
/// sonde refuses that mode at start-up with the verifier's reason.
pub fn optional(program: &str) -> bool {
    program == HEADER_SCAN || program == HEADER_WRITER
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
    if options.carriers.header {
        attach_header_writer(ebpf)?;
    }
    tracing::info!(
        cgroup = %path.display(),
        tcp_option = options.carriers.tcp_option,
        traceparent_header = options.carriers.header,
        "context propagation on the sockets of this cgroup"
    );
    attach_send_entries(ebpf, hooks)?;
    if hooks == HookSet::Sock {
        // Optional: without it, a request's header joins its calls to the header's trace on this
        // host only.
        for tracepoint in READ_EXITS {
            if let Err(e) = attach::attach_tracepoint(ebpf, HEADER_SCAN, "syscalls", tracepoint) {
                warn_no_header_scan(&e);
                break;
            }
        }
    } else if let Err(e) = fill_header_scan_jump(ebpf) {
        warn_no_header_scan(&e);
    }
    Ok(())
}

/// For the socket hook set, the entries of the write-family syscalls, where a request's context is
/// chosen before its bytes leave (with propagation, and for the Go programs whose goroutines are
/// followed). The syscall hook sets choose it in their own entry programs.
pub fn attach_send_entries(ebpf: &mut Ebpf, hooks: HookSet) -> Result<(), ProbeError> {
    if hooks == HookSet::Sock {
        for &(program, tracepoint) in SEND_ENTRIES {
            attach::attach_tracepoint(ebpf, program, "syscalls", tracepoint)?;
        }
    }
    Ok(())
}

/// The `sk_msg` program that writes `traceparent` headers, on the SOCKHASH the sockops program
/// enrols the client sockets of traced processes in. Attached to the map, which this process alone
/// holds: when it exits, the map and every enrolment go with it.
fn attach_header_writer(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let map = ebpf.map(CLIENT_SOCKS).ok_or(ProbeError::MissingMap(CLIENT_SOCKS))?;
    let sockets: SockHash<&MapData, u64> =
        SockHash::try_from(map).map_err(|source| ProbeError::Map { name: CLIENT_SOCKS, source })?;
    let fd = sockets.fd().try_clone().map_err(|e| ProbeError::Attach {
        program: HEADER_WRITER,
        target: CLIENT_SOCKS.into(),
        source: ProgramError::IOError(e),
    })?;
    let prog = loaded_program!(ebpf, HEADER_WRITER, SkMsg);
    prog.attach(&fd).map_err(|source| ProbeError::Attach {
        program: HEADER_WRITER,
        target: CLIENT_SOCKS.into(),
        source,
    })?;
    Ok(())
}

const HEADER_WRITER: &str = "inject_traceparent";

/// With the syscall hook sets the capture runs at the read syscalls' exits: their programs end in
/// a tail call to the header scan, through this table.
fn fill_header_scan_jump(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let fd = {
        let prog = loaded_program!(ebpf, HEADER_SCAN, TracePoint);
        prog.fd()
            .map_err(|source| ProbeError::LoadProgram { program: HEADER_SCAN, source })?
            .try_clone()
            .map_err(|e| ProbeError::LoadProgram { program: HEADER_SCAN, source: ProgramError::IOError(e) })?
    };
    let map = ebpf.map_mut(HEADER_SCAN_JUMP).ok_or(ProbeError::MissingMap(HEADER_SCAN_JUMP))?;
    let mut jump: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(|source| ProbeError::Map { name: HEADER_SCAN_JUMP, source })?;
    jump.set(0, &fd, 0).map_err(|source| ProbeError::Map { name: HEADER_SCAN_JUMP, source })
}

fn warn_no_header_scan(error: &ProbeError) {
    tracing::warn!(error = %error, "traceparent headers are not read in the kernel: a request's calls join its header's trace on this host only");
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
