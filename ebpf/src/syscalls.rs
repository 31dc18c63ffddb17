//! x86_64 syscall numbers and the `struct pt_regs` slots of their arguments, for the socket hook
//! set: at a socket tracepoint it reads which syscall the task is in, and that syscall's
//! arguments, from the registers saved when the task entered the kernel.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_task_pt_regs};
use sonde_common::{Direction, IoBuf};

const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDFILE: u64 = 40;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;

// `struct pt_regs` on x86_64, in u64 slots: the arguments are di, si, dx (r10, r8, r9 unused).
const REG_DX: usize = 12;
const REG_SI: usize = 13;
const REG_DI: usize = 14;
const REG_ORIG_AX: usize = 15;
const REG_CS: usize = 17;
/// The code segment of 32-bit (ia32 compat) tasks: their syscall numbers and argument registers
/// differ, so their syscalls are not read with this table.
const USER32_CS: u64 = 0x23;

/// The read/write-family syscall the current task is in, with the arguments sonde uses.
pub struct IoSyscall {
    pub direction: Direction,
    pub kind: IoBuf,
    pub fd: u64,
    pub buf: u64,
    /// The third argument: the iovec count for readv/writev.
    pub count: u64,
}

/// None when the task is not in one of the read/write-family syscalls (io_uring workers,
/// splice, kernel-internal socket I/O, ia32 tasks).
#[inline(always)]
pub fn current_io_syscall() -> Option<IoSyscall> {
    // The task's user registers, saved at kernel entry; syscalls read their arguments from
    // them and leave them as they were.
    // SAFETY: the current task's BTF pointer is valid for the whole program run, and
    // `bpf_task_pt_regs` only computes where that task's saved user registers are; the verifier
    // types the result as `struct pt_regs *`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return None;
    }
    // Direct loads: the verifier knows `regs` is a `struct pt_regs *` from BTF.
    // SAFETY: `regs` is non-null (checked above) and `slot` one of the constant slots of x86_64's
    // 21-slot `struct pt_regs`; the verifier checks each load against the BTF type and runs it as a
    // probe load, so a bad address would read 0, not fault.
    let reg = |slot: usize| unsafe { *regs.add(slot) };
    if reg(REG_CS) == USER32_CS {
        return None;
    }
    let (direction, kind) = match reg(REG_ORIG_AX) {
        NR_READ | NR_RECVFROM => (Direction::Ingress, IoBuf::Plain),
        NR_READV => (Direction::Ingress, IoBuf::Iovec),
        NR_RECVMSG => (Direction::Ingress, IoBuf::Msghdr),
        NR_WRITE | NR_SENDTO => (Direction::Egress, IoBuf::Plain),
        NR_WRITEV => (Direction::Egress, IoBuf::Iovec),
        NR_SENDMSG => (Direction::Egress, IoBuf::Msghdr),
        // sendfile(out_fd, in_fd, offset, count): the body comes from a file, not a buffer.
        NR_SENDFILE => (Direction::Egress, IoBuf::None),
        _ => return None,
    };
    Some(IoSyscall { direction, kind, fd: reg(REG_DI), buf: reg(REG_SI), count: reg(REG_DX) })
}
