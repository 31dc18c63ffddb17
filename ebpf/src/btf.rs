//! The cheaper hook set: `tp_btf/sys_enter` and `tp_btf/sys_exit` see every syscall of every
//! process (~15 ns per hit here against ~35 ns for a syscall tracepoint) and dispatch on the
//! number. The numbers and the `pt_regs` layout are x86_64's; the agent attaches this set only there.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext};
use sonde_common::{Direction, IoBuf};

use crate::{io, on_accept_exit, on_close_enter, on_connect_enter, on_connect_exit};

const NR_READ: i64 = 0;
const NR_WRITE: i64 = 1;
const NR_CLOSE: i64 = 3;
const NR_READV: i64 = 19;
const NR_WRITEV: i64 = 20;
const NR_SENDFILE: i64 = 40;
const NR_CONNECT: i64 = 42;
const NR_ACCEPT: i64 = 43;
const NR_SENDTO: i64 = 44;
const NR_RECVFROM: i64 = 45;
const NR_SENDMSG: i64 = 46;
const NR_RECVMSG: i64 = 47;
const NR_ACCEPT4: i64 = 288;

// `struct pt_regs` on x86_64, in u64 slots: syscall arguments are di, si, dx (r10, r8, r9 unused here).
const REG_DX: usize = 12;
const REG_SI: usize = 13;
const REG_DI: usize = 14;
const REG_ORIG_AX: usize = 15;
const REG_CS: usize = 17;
/// The code segment of 32-bit (ia32 compat) tasks: their syscall numbers and argument registers
/// differ, so their syscalls are not read with this table.
const USER32_CS: u64 = 0x23;

#[inline(always)]
fn reg(regs: *const u64, slot: usize) -> u64 {
    // A direct load: the verifier knows `regs` is a `struct pt_regs *` from BTF.
    unsafe { *regs.add(slot) }
}

#[btf_tracepoint(function = "sys_enter")]
pub fn tp_btf_sys_enter(ctx: BtfTracePointContext) -> u32 {
    let regs: *const u64 = ctx.arg(0);
    let nr: i64 = ctx.arg(1);
    if reg(regs, REG_CS) == USER32_CS {
        return 0;
    }
    if let Some((direction, kind)) = io_syscall(nr) {
        io::enter(
            bpf_get_current_pid_tgid(),
            reg(regs, REG_DI),
            reg(regs, REG_SI),
            reg(regs, REG_DX),
            direction,
            kind,
        );
        return 0;
    }
    match nr {
        NR_CONNECT => {
            on_connect_enter(reg(regs, REG_DI), reg(regs, REG_SI));
            return 0;
        }
        NR_CLOSE => on_close_enter(reg(regs, REG_DI)),
        _ => {}
    }
    0
}

/// Direction and buffer shape of the read/write-family syscalls.
#[inline(always)]
fn io_syscall(nr: i64) -> Option<(Direction, IoBuf)> {
    match nr {
        NR_READ | NR_RECVFROM => Some((Direction::Ingress, IoBuf::Plain)),
        NR_READV => Some((Direction::Ingress, IoBuf::Iovec)),
        NR_RECVMSG => Some((Direction::Ingress, IoBuf::Msghdr)),
        NR_WRITE | NR_SENDTO => Some((Direction::Egress, IoBuf::Plain)),
        NR_WRITEV => Some((Direction::Egress, IoBuf::Iovec)),
        NR_SENDMSG => Some((Direction::Egress, IoBuf::Msghdr)),
        NR_SENDFILE => Some((Direction::Egress, IoBuf::None)),
        _ => None,
    }
}

#[btf_tracepoint(function = "sys_exit")]
pub fn tp_btf_sys_exit(ctx: BtfTracePointContext) -> u32 {
    let regs: *const u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if reg(regs, REG_CS) == USER32_CS {
        return 0;
    }
    let nr = reg(regs, REG_ORIG_AX) as i64;
    if let Some((direction, kind)) = io_syscall(nr) {
        // The saved argument registers are still the entry values: a syscall that entered
        // before sonde attached can still be read.
        let late = io::LateArgs {
            fd: reg(regs, REG_DI),
            buf: reg(regs, REG_SI),
            count: reg(regs, REG_DX),
            direction,
            kind,
        };
        io::exit(bpf_get_current_pid_tgid(), ret, Some(late));
        return 0;
    }
    match nr {
        NR_ACCEPT | NR_ACCEPT4 => on_accept_exit(ret),
        NR_CONNECT => on_connect_exit(ret),
        _ => {}
    }
    0
}
