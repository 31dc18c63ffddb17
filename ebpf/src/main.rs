//! sonde's kernel programs. Entry points are thin: they read the hook's arguments and call the
//! shared bodies in `io` (read/write family) and `conn` (accept/connect/close).
//!
//! Three hook sets carry the same bodies; the agent attaches one of them. All use the `syscalls/`
//! tracepoints of accept, accept4, connect and close.
//! - socket hook set (x86_64, kernel ≥ 6.3): `sock:sock_{send,recv}_length`, which fire only for
//!   socket reads and writes, capture the data themselves, reading the syscall's arguments from
//!   the task's saved registers (`syscalls.rs`). No hook on the read and write syscalls at all, so
//!   file, pipe and other fd I/O costs nothing.
//! - syscall tracepoint hook set (any architecture, kernel ≥ 6.3): entry and exit tracepoints of
//!   each read/write-family syscall, with the socket tracepoints in between saying which fds are
//!   TCP.
//! - fd-walk hook set (any kernel with the BPF ring buffer, 5.8 on): the same entry and exit
//!   tracepoints; at exit the socket behind the fd is found in the task's fd table (`fdsock.rs`).
#![no_std]
#![no_main]

mod conn;
mod ctx;
mod emit;
mod fdsock;
mod filter;
mod goroutines;
mod inject;
mod io;
mod maps;
mod null;
mod own;
mod syscalls;
mod tcpopt;
mod tls;
mod traceparent;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use sonde_common::{AF_INET, AF_INET6, Direction, EventHeader, EventKind, ExitEvent, IoBuf, SpawnEvent};

use crate::maps::{ACTIVE_CONNECT, HEADER_SCAN_JUMP};

/// Syscall tracepoints put the arguments after the 8-byte common header and the syscall number.
const ARG0: usize = 16;

/// A field of the tracepoint record at `offset` (aligned to its size). A direct load: the verifier
/// allows reads of a tracepoint's context, and `read_at` would cost a `bpf_probe_read_kernel`
/// call per field, which showed in profiles of the hottest programs.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: a load from the tracepoint's record, valid for the program run. Callers pass constant
    // offsets of fields inside the record (its format file) and integer `T`s, valid for any bytes.
    // The verifier only accepts constant, size-aligned context loads below `PERF_MAX_TRACE_SIZE`,
    // the size of the per-CPU buffer the record is built in, and refuses to load a program with
    // any other: a wrong offset reads stale bytes of that buffer, it cannot fault.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    field(ctx, ARG0 + 8 * n)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    field(ctx, ARG0)
}

/// One entry and one exit tracepoint per read/write-family syscall. `$count` is the argument that
/// holds the iovec count (only meaningful for `IoBuf::Iovec`), `$flags` the one with the `MSG_*`
/// flags of a receive (None: the syscall has none).
macro_rules! io_tracepoints {
    ($enter:ident, $exit:ident, $dir:expr, $kind:expr, $count:expr, $flags:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            let flags: Option<usize> = $flags;
            let flags = flags.map_or(0, |n| arg(&ctx, n));
            io::enter(
                bpf_get_current_pid_tgid(),
                arg(&ctx, 0),
                arg(&ctx, 1),
                arg(&ctx, $count),
                flags,
                $dir,
                $kind,
            );
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            io::exit(bpf_get_current_pid_tgid(), ret(&ctx));
            if $dir == Direction::Ingress && ctx::enabled() {
                // SAFETY: the context is this program's own; a missing entry makes the call
                // return, and then the program simply ends.
                unsafe { HEADER_SCAN_JUMP.tail_call(&ctx, 0) };
            }
            0
        }
    };
}

io_tracepoints!(sys_enter_read, sys_exit_read, Direction::Ingress, IoBuf::Plain, 2, None);
// recvfrom(fd, buf, size, flags, addr, addr_len)
io_tracepoints!(sys_enter_recvfrom, sys_exit_recvfrom, Direction::Ingress, IoBuf::Plain, 2, Some(3));
io_tracepoints!(sys_enter_readv, sys_exit_readv, Direction::Ingress, IoBuf::Iovec, 2, None);
// recvmsg(fd, msg, flags)
io_tracepoints!(sys_enter_recvmsg, sys_exit_recvmsg, Direction::Ingress, IoBuf::Msghdr, 2, Some(2));
io_tracepoints!(sys_enter_write, sys_exit_write, Direction::Egress, IoBuf::Plain, 2, None);
io_tracepoints!(sys_enter_sendto, sys_exit_sendto, Direction::Egress, IoBuf::Plain, 2, None);
io_tracepoints!(sys_enter_writev, sys_exit_writev, Direction::Egress, IoBuf::Iovec, 2, None);
io_tracepoints!(sys_enter_sendmsg, sys_exit_sendmsg, Direction::Egress, IoBuf::Msghdr, 2, None);
// sendfile(out_fd, in_fd, offset, count): a static file server's response body.
io_tracepoints!(sys_enter_sendfile64, sys_exit_sendfile64, Direction::Egress, IoBuf::None, 3, None);

/// Entry of a write-family syscall for context propagation alone, with the socket hook set (which
/// has no entry hooks of its own, and captures only after the bytes may have left): the request's
/// context must be filed before its first segment is sent.
macro_rules! send_entry {
    ($name:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            ctx::before_send(
                bpf_get_current_pid_tgid(),
                arg(&ctx, 0) as i64 as i32,
                arg(&ctx, 1),
                arg(&ctx, 2),
                $kind,
            );
            0
        }
    };
}

send_entry!(ctx_enter_write, IoBuf::Plain);
send_entry!(ctx_enter_sendto, IoBuf::Plain);
send_entry!(ctx_enter_writev, IoBuf::Iovec);
send_entry!(ctx_enter_sendmsg, IoBuf::Msghdr);

/// Exit of a read-family syscall, for context propagation alone: a request head the thread just
/// read may carry a `traceparent` header, whose trace its calls must carry (`ctx::after_read`).
/// Its own program, so that the header's scan stays out of the capture programs.
#[tracepoint]
pub fn ctx_exit_read(_ctx: TracePointContext) -> u32 {
    ctx::after_read(bpf_get_current_pid_tgid());
    0
}

/// Goroutines of Go programs (`goroutines.rs`): uprobes on each Go executable sonde follows.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    goroutines::newproc1_enter(&ctx, bpf_get_current_pid_tgid());
    0
}

#[uretprobe]
pub fn go_newproc1_return(ctx: RetProbeContext) -> u32 {
    goroutines::newproc1_return(&ctx, bpf_get_current_pid_tgid());
    0
}

#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    goroutines::round_trip(&ctx, bpf_get_current_pid_tgid());
    0
}

#[uprobe]
pub fn go_request_write(ctx: ProbeContext) -> u32 {
    goroutines::request_write(&ctx, bpf_get_current_pid_tgid());
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(ret(&ctx));
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(ret(&ctx));
    0
}

#[inline(always)]
fn on_accept_exit(fd: i64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if filter::traced(tgid) {
        conn::on_accept(tgid, fd);
    }
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    on_connect_enter(arg(&ctx, 0), arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    on_connect_exit(ret(&ctx));
    0
}

const EINPROGRESS: i64 = 115;

#[inline(always)]
fn on_connect_enter(fd: u64, sockaddr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !filter::traced((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: `sockaddr` is connect's user pointer, never dereferenced: the helper copies two bytes
    // of user memory or fails (then the connect is not followed).
    let Ok(family) = (unsafe { bpf_probe_read_user(sockaddr as *const u16) }) else {
        return;
    };
    if family == AF_INET || family == AF_INET6 {
        let _ = ACTIVE_CONNECT.insert(&pid_tgid, &(fd as u32), 0);
    }
}

#[inline(always)]
fn on_connect_exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once, before the entry is removed; the element stays mapped while the
    // program runs, and only this thread's hooks use its pid_tgid key.
    let Some(fd) = (unsafe { ACTIVE_CONNECT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = ACTIVE_CONNECT.remove(&pid_tgid);
    if ret == 0 || ret == -EINPROGRESS {
        conn::on_connect((pid_tgid >> 32) as u32, fd as i64);
    }
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    on_close_enter(arg(&ctx, 0));
    0
}

#[inline(always)]
fn on_close_enter(fd: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    conn::on_close((pid_tgid >> 32) as u32, pid_tgid as u32, fd as i64 as i32 as i64);
}

/// `sched:sched_process_fork`, in the parent's context: tell user space which thread started
/// which (the child's id is read at the offset the format file gave; it moved between kernels).
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let offset = maps::global_u32(&maps::OFF_FORK_CHILD_PID) as usize;
    if offset == 0 || offset > 64 || !filter::traced(tgid) {
        return 0;
    }
    // SAFETY: the record's `child_pid` at the offset its format file gave (bounded to 1..=64),
    // copied by the helper, which fails instead of faulting; any i32 is a valid result.
    let Ok(child) = (unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u8).add(offset) as *const i32) })
    else {
        return 0;
    };
    let event = SpawnEvent {
        header: EventHeader {
            // SAFETY: a helper without arguments that only returns the monotonic clock.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid: pid_tgid as u32,
            fd: -1,
            kind: EventKind::Spawn as u32,
        },
        child_tid: child as u32,
        _pad: 0,
    };
    emit::output(&event);
    ctx::spawned(pid_tgid as u32, child as u32);
    0
}

/// `sched:sched_process_exit`, in the exiting thread: a TLS call it was in will never return, and
/// its record must not make a later thread with the same id look like it is in one. User space
/// hears of the exits of traced processes' threads, so that nothing it keeps per thread or per
/// process outlives them (the fds a process still holds are closed with no `close` call).
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    tls::thread_exit(pid_tgid);
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if !filter::traced(tgid) {
        return 0;
    }
    let offset = maps::global_u32(&maps::OFF_EXIT_GROUP_DEAD) as usize;
    let group_dead = if offset == 0 || offset > 64 {
        // A kernel without the field: the main thread's exit stands for the process's.
        tid == tgid
    } else {
        // A variable offset: not a direct context load, which the verifier wants constant.
        // SAFETY: the record's `group_dead` at the offset its format file gave (bounded to
        // 1..=64), copied by the helper, which fails (read as 0) instead of faulting.
        (unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u8).add(offset)) }).unwrap_or(0u8) != 0
    };
    let event = ExitEvent {
        header: EventHeader {
            // SAFETY: a helper without arguments that only returns the monotonic clock.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd: -1,
            kind: EventKind::Exit as u32,
        },
        group_dead: group_dead.into(),
        _pad: 0,
    };
    emit::output(&event);
    ctx::exited(pid_tgid, group_dead);
    0
}

const PROT_EXEC: u64 = 4;

/// `mmap(addr, len, prot, flags, fd, off)` of a file, executable: a traced process is loading a
/// shared library (a program's own libraries at start, or a `dlopen` later — Python imports `ssl`
/// long after exec). The agent looks for a TLS library to hook in its maps. Rare enough to wake
/// the reader at once: a server's first TLS connection may follow within milliseconds.
#[tracepoint]
pub fn mmap_exec(ctx: TracePointContext) -> u32 {
    let (prot, fd) = (arg(&ctx, 2), arg(&ctx, 4) as i64 as i32);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if prot & PROT_EXEC == 0 || fd < 0 || !filter::traced(tgid) {
        return 0;
    }
    let event = EventHeader {
        // SAFETY: a helper without arguments that only returns the monotonic clock.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid: pid_tgid as u32,
        fd,
        kind: EventKind::Mapped as u32,
    };
    emit::output_now(&event);
    0
}

/// `sock:inet_sock_set_state`: skaddr at 8, oldstate at 16, newstate at 20 in every kernel that
/// has it (4.16 on); the addresses' offsets come from the format file (see `own.rs`).
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let (sock, old, new) = (field(&ctx, 8), field(&ctx, 16), field(&ctx, 20));
    own::on_state_change(&ctx, sock, old, new);
    if new == own::TCP_SYN_SENT {
        inject::connecting((bpf_get_current_pid_tgid() >> 32) as u32, sock);
    }
    0
}

// `sock:sock_{send,recv}_length`: sk at 8, family at 16, protocol at 18, ret at 20, flags at 24.
struct SockLength {
    sock: u64,
    family: u16,
    protocol: u16,
    ret: i32,
    flags: i32,
}

#[inline(always)]
fn sock_length(ctx: &TracePointContext) -> SockLength {
    let sock = field::<u64>(ctx, 8);
    let family_protocol_ret = field::<u64>(ctx, 16);
    SockLength {
        sock,
        family: family_protocol_ret as u16,
        protocol: (family_protocol_ret >> 16) as u16,
        ret: (family_protocol_ret >> 32) as i32,
        flags: field::<i32>(ctx, 24),
    }
}

/// Socket hook set: capture at the socket tracepoint.
#[tracepoint]
pub fn sock_send_capture(ctx: TracePointContext) -> u32 {
    let s = sock_length(&ctx);
    io::on_sock_io(Direction::Egress, s.sock, s.family, s.protocol, s.ret as i64, s.flags);
    0
}

#[tracepoint]
pub fn sock_recv_capture(ctx: TracePointContext) -> u32 {
    let s = sock_length(&ctx);
    io::on_sock_io(Direction::Ingress, s.sock, s.family, s.protocol, s.ret as i64, s.flags);
    0
}

/// Syscall tracepoint hook set: note the TCP socket for the syscall's exit.
#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    on_sock_length(&ctx, Direction::Egress);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    on_sock_length(&ctx, Direction::Ingress);
    0
}

#[inline(always)]
fn on_sock_length(ctx: &TracePointContext, direction: Direction) {
    let s = sock_length(ctx);
    io::on_sock_length(bpf_get_current_pid_tgid(), direction, s.sock, s.family, s.protocol, s.flags);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
