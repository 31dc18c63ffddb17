//! Offsets of kernel struct fields the programs read, from the running kernel's BTF: the IPv6
//! addresses of `struct sock`, the task fields behind process start times, and the way from a task
//! to the socket behind one of its fds.
//!
//! Rust eBPF has no CO-RE field relocations, so the agent resolves the offsets it needs here
//! and passes them to the programs as globals. The BTF walk is deliberately minimal: it reads the
//! type section just far enough to find one struct's members (format: kernel
//! Documentation/bpf/btf.rst). aya-obj parses BTF too but keeps member access crate-private.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read { path: &'static str, source: std::io::Error },
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not found in the kernel's BTF")]
    StructNotFound(&'static str),
    #[error("struct {structure} has no member {member} in the kernel's BTF")]
    MemberNotFound { structure: &'static str, member: &'static str },
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets inside `struct sock` (whose first member is `struct sock_common`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
}

/// The running kernel's BTF, raw.
pub fn vmlinux() -> Result<Vec<u8>, BtfError> {
    std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Read { path: VMLINUX_BTF, source })
}

pub fn sock_offsets(data: &[u8]) -> Result<SockOffsets, BtfError> {
    let members = struct_members(data, "sock_common")?;
    let get = |name: &str| members.get(name).copied().ok_or(BtfError::StructNotFound("sock_common.skc_v6_*"));
    Ok(SockOffsets { v6_daddr: get("skc_v6_daddr")?, v6_rcv_saddr: get("skc_v6_rcv_saddr")? })
}

/// Byte offsets inside `struct task_struct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub group_leader: u32,
    pub start_boottime: u32,
    /// The kernel stack, whose top holds the task's saved user registers.
    pub stack: u32,
}

pub fn task_offsets(data: &[u8]) -> Result<TaskOffsets, BtfError> {
    let members = struct_members(data, "task_struct")?;
    let get = |name: &str| {
        members
            .get(name)
            .copied()
            .ok_or(BtfError::StructNotFound("task_struct.group_leader/start_boottime/stack"))
    };
    Ok(TaskOffsets {
        group_leader: get("group_leader")?,
        start_boottime: get("start_boottime")?,
        stack: get("stack")?,
    })
}

/// The offsets of `sonde_common::FdWalk`, for kernels without the socket tracepoints.
pub fn fd_walk_offsets(data: &[u8]) -> Result<sonde_common::FdWalk, BtfError> {
    let field = |structure: &'static str, member: &'static str| -> Result<u32, BtfError> {
        struct_members(data, structure)?
            .get(member)
            .copied()
            .ok_or(BtfError::MemberNotFound { structure, member })
    };
    Ok(sonde_common::FdWalk {
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdt_max_fds: field("fdtable", "max_fds")?,
        fdt_fd: field("fdtable", "fd")?,
        file_private_data: field("file", "private_data")?,
        socket_type: field("socket", "type")?,
        socket_file: field("socket", "file")?,
        socket_sk: field("socket", "sk")?,
        sock_family: field("sock_common", "skc_family")?,
        sock_protocol: field("sock", "sk_protocol")?,
    })
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Member name → byte offset of the first struct called `name` in a raw BTF blob.
pub fn struct_members(data: &[u8], name: &'static str) -> Result<HashMap<String, u32>, BtfError> {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u16_at(0) != Some(BTF_MAGIC) {
        return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
    }
    let header = |o| u32_at(o).ok_or(BtfError::Malformed("short header")).map(|v| v as usize);
    let hdr_len = header(4)?;
    let (type_off, type_len, str_off, str_len) = (header(8)?, header(12)?, header(16)?, header(20)?);
    let types = hdr_len + type_off;
    let strings = data
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or(BtfError::Malformed("string section out of bounds"))?;
    let string_at = |off: u32| -> Option<&str> {
        let rest = strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    };

    let mut pos = types;
    let end = types + type_len;
    while pos + 12 <= end {
        let (Some(name_off), Some(info)) = (u32_at(pos), u32_at(pos + 4)) else {
            return Err(BtfError::Malformed("truncated type"));
        };
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 == 1;
        pos += 12;
        if kind == KIND_STRUCT && string_at(name_off) == Some(name) {
            let mut members = HashMap::new();
            for i in 0..vlen {
                let m = pos + i * 12;
                let (Some(m_name), Some(m_off)) = (u32_at(m), u32_at(m + 8)) else {
                    return Err(BtfError::Malformed("truncated member"));
                };
                // With kind_flag set, the low 24 bits are the bit offset and the top 8 a bitfield size.
                let bits = if kflag { m_off & 0x00ff_ffff } else { m_off };
                if let Some(n) = string_at(m_name).filter(|n| !n.is_empty()) {
                    members.insert(n.to_owned(), bits / 8);
                }
            }
            return Ok(members);
        }
        pos += extra_bytes(kind, vlen);
    }
    Err(BtfError::StructNotFound(name))
}

/// Bytes that follow the 12-byte common part of a BTF type of this kind.
fn extra_bytes(kind: u32, vlen: usize) -> usize {
    match kind {
        1 => 4,             // INT
        3 => 12,            // ARRAY
        4 | 5 => 12 * vlen, // STRUCT, UNION
        6 => 8 * vlen,      // ENUM
        13 => 8 * vlen,     // FUNC_PROTO
        14 => 4,            // VAR
        15 => 12 * vlen,    // DATASEC
        17 => 4,            // DECL_TAG
        19 => 12 * vlen,    // ENUM64
        _ => 0,             // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(struct_members(b"not btf at all, no", "x"), Err(BtfError::Malformed(_))));
        assert!(matches!(struct_members(&[], "x"), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn finds_sock_common_on_this_kernel() {
        // Every kernel sonde supports has BTF; the IPv6 fields sit after the 16-byte v4 block.
        let Ok(data) = vmlinux() else {
            eprintln!("SKIPPED: {VMLINUX_BTF} not readable here");
            return;
        };
        let offsets = sock_offsets(&data).unwrap();
        assert!(offsets.v6_daddr >= 16);
        assert_eq!(offsets.v6_rcv_saddr, offsets.v6_daddr + 16);
    }

    #[test]
    fn finds_the_way_from_a_task_to_its_sockets_on_this_kernel() {
        let Ok(data) = vmlinux() else {
            eprintln!("SKIPPED: {VMLINUX_BTF} not readable here");
            return;
        };
        let o = fd_walk_offsets(&data).unwrap();
        // Layouts every supported kernel shares: `files_struct` opens with its count and a flag,
        // `sock_common` with the 16-byte v4 block, and `socket.file` follows `type`.
        assert!(o.task_files > 0 && o.files_fdt > 0 && o.fdt_fd > o.fdt_max_fds);
        assert_eq!(o.sock_family, 16);
        assert!(o.socket_file > o.socket_type && o.socket_sk > o.socket_file);
        assert!(o.sock_protocol > o.sock_family);
    }

    #[test]
    fn finds_task_struct_on_this_kernel() {
        let Ok(data) = vmlinux() else {
            eprintln!("SKIPPED: {VMLINUX_BTF} not readable here");
            return;
        };
        let offsets = task_offsets(&data).unwrap();
        // Both sit well past the scheduler's fields at the start of task_struct.
        assert!(offsets.group_leader > 64 && offsets.start_boottime > 64, "{offsets:?}");
        assert_ne!(offsets.group_leader, offsets.start_boottime);
        // `stack` follows `state` (and, with THREAD_INFO_IN_TASK, `thread_info`) at the start.
        assert!(offsets.stack > 0 && offsets.stack < 64, "{offsets:?}");
    }
}
