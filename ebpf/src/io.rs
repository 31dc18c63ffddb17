//! The read/write family on TCP sockets, two ways:
//! - socket hook set (`on_sock_io`): everything happens in the `sock:sock_{send,recv}_length`
//!   tracepoint, which fires inside the syscall once the bytes have moved: it knows the socket and
//!   the byte count, and reads the syscall's arguments from the task's saved registers. One
//!   program run per socket read or write, no state between hooks, nothing for other fds.
//! - syscall tracepoint hook set (`enter`, `on_sock_length`, `exit`): arguments are kept at
//!   syscall entry, the socket tracepoint says whether the fd is a TCP socket, and at exit the
//!   bytes really moved are copied. Without socket tracepoints (before 6.3) the exit finds the
//!   socket itself, by walking the task's fd table (`fdsock`).
//!
//! Either way a bounded prefix of the bytes goes into a data event.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
    bpf_probe_read_user_buf,
};
use sonde_common::{
    AF_INET, AF_INET6, ActiveIo, DataEvent, Direction, DropReason, EventHeader, EventKind, IoBuf,
    KernelCount, MAX_CAPTURE, MAX_IOVECS,
    first_bytes::{PROBE_BYTES, may_start_message},
};

use crate::{
    conn::{self, Bytes},
    ctx, emit, fdsock, filter,
    maps::{ACTIVE_IO, CAPTURE_BYTES, HEADER_BYTES, SCRATCH, count, count_drop, global_u32},
    syscalls, tls,
};

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// TCP discards the data of a MSG_TRUNC read and only returns its length.
const MSG_TRUNC: i32 = 0x20;

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

// `struct user_msghdr`: msg_name, msg_namelen (+pad), msg_iov, msg_iovlen, …
const MSGHDR_IOV: usize = 16;
const MSGHDR_IOVLEN: usize = 24;

/// Entry of read/write/readv/writev/recvfrom/sendto/recvmsg/sendmsg; `flags` are a receive's
/// `MSG_*` flags (0 for the others).
#[inline(always)]
pub fn enter(pid_tgid: u64, fd: u64, buf: u64, iovcnt: u64, flags: u64, direction: Direction, kind: IoBuf) {
    let tgid = (pid_tgid >> 32) as u32;
    let fd = fd as i64 as i32;
    if fd < 0 || !filter::traced(tgid) {
        return;
    }
    // The socket tracepoint, when there is one, says the same from the flags it sees.
    let flags = flags as i32;
    let receive = direction == Direction::Ingress;
    if receive && flags & MSG_PEEK != 0 {
        return;
    }
    let active = ActiveIo {
        buf,
        sock: 0,
        fd,
        iovcnt: iovcnt as u32,
        direction: direction as u8,
        buf_kind: kind as u8,
        is_tcp: 0,
        family: 0,
        length_only: (receive && flags & MSG_TRUNC != 0) as u8,
        _pad: [0; 3],
    };
    if ACTIVE_IO.insert(&pid_tgid, &active, 0).is_err() {
        count_drop(DropReason::ActiveMapFull);
    }
    if direction == Direction::Egress {
        ctx::before_send(pid_tgid, fd, buf, iovcnt, kind);
    }
}

/// `sock:sock_{recv,send}_length` inside the syscall: the socket behind the fd, and its protocol.
#[inline(always)]
pub fn on_sock_length(
    pid_tgid: u64,
    direction: Direction,
    sock: u64,
    family: u16,
    protocol: u16,
    flags: i32,
) {
    let (tcp, length_only) = classify(direction, family, protocol, flags);
    let Some(active) = ACTIVE_IO.get_ptr_mut(&pid_tgid) else {
        return;
    };
    // SAFETY: `active` is the non-null, aligned value pointer the lookup just returned, into the
    // LRU map's preallocated elements, which stay mapped while the program runs. The key is this
    // thread's pid_tgid, so no other program writes the entry meanwhile (the same thread's hooks
    // run one after another; were the element evicted and reused by another CPU, these writes
    // would still land inside it); the `&mut` ends with this function.
    let active = unsafe { &mut *active };
    if active.direction != direction as u8 {
        return;
    }
    if tcp {
        active.sock = sock;
        active.family = family as u8;
        active.is_tcp = 1;
        active.length_only = length_only;
    }
}

/// Whether a socket tracepoint hit is TCP data worth capturing, and whether only its length is
/// known (a MSG_TRUNC read: TCP discarded the bytes, the buffer holds none of them).
#[inline(always)]
fn classify(direction: Direction, family: u16, protocol: u16, flags: i32) -> (bool, u8) {
    // A MSG_PEEK read leaves the bytes in the socket: the real read that follows reports them.
    let peek = direction == Direction::Ingress && flags & MSG_PEEK != 0;
    let tcp = protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6) && !peek;
    let length_only = (direction == Direction::Ingress && flags & MSG_TRUNC != 0) as u8;
    (tcp, length_only)
}

/// Socket hook set: a TCP socket read or write that just moved `ret` bytes, inside the syscall.
#[inline(always)]
pub fn on_sock_io(direction: Direction, sock: u64, family: u16, protocol: u16, ret: i64, flags: i32) {
    if ret <= 0 {
        return;
    }
    let (true, length_only) = classify(direction, family, protocol, flags) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !filter::traced(tgid) {
        return;
    }
    let Some(call) = syscalls::current_io_syscall() else {
        return;
    };
    if call.direction != direction {
        return;
    }
    let fd = call.fd as i64 as i32;
    if fd < 0 {
        return;
    }
    let active = ActiveIo {
        buf: call.buf,
        sock,
        fd,
        iovcnt: call.count as u32,
        direction: direction as u8,
        buf_kind: call.kind as u8,
        is_tcp: 1,
        family: family as u8,
        length_only,
        _pad: [0; 3],
    };
    capture(pid_tgid, &active, ret as u64);
}

/// Exit of the read/write family with the syscall's return value.
#[inline(always)]
pub fn exit(pid_tgid: u64, ret: i64) {
    // SAFETY: copied out at once, before the entry is removed; the element stays mapped while the
    // program runs, and only this thread's hooks use its pid_tgid key.
    let Some(mut active) = (unsafe { ACTIVE_IO.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = ACTIVE_IO.remove(&pid_tgid);
    if ret <= 0 {
        return;
    }
    if active.is_tcp == 0 {
        // No socket tracepoint said so; on kernels without them, ask the fd table.
        let Some((sock, family)) = fdsock::tcp_socket(fdsock::Walk::Capture, active.fd) else {
            return;
        };
        active.sock = sock;
        active.family = family as u8;
        active.is_tcp = 1;
    }
    capture(pid_tgid, &active, ret as u64);
}

/// `len` bytes moved on a TCP socket, as `active` describes: the connection's sequence number
/// (and its `Open`, the first time), then the data event. Both hook sets end here. Inside a TLS
/// library call the bytes are ciphertext: they only tell the call which socket it uses.
#[inline(always)]
fn capture(pid_tgid: u64, active: &ActiveIo, len: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let family = active.family as u16;
    let bytes = if tls::in_call(pid_tgid, active.fd, active.sock, family) {
        Bytes::TlsCiphertext
    } else {
        Bytes::Plain
    };
    let outcome = conn::on_data(tgid, tid, active.fd, active.sock, family, active.direction, len, bytes);
    match outcome.action {
        conn::Action::Send => {
            ctx::on_data(pid_tgid, active, len, outcome.seq, outcome.role, false);
            let how = DataEventHow {
                seq: outcome.seq,
                offset: outcome.offset,
                tls: false,
                probe: outcome.probe,
                wake: outcome.wake,
            };
            if let Some(starts) = emit_data(tgid, tid, active, len, how) {
                conn::probed(tgid, active.fd, active.sock, active.direction, starts);
            }
        }
        conn::Action::BecameTls => tls::became_tls(pid_tgid),
        conn::Action::Skip | conn::Action::NoConnection => {}
    }
    if bytes == Bytes::TlsCiphertext && active.direction == sonde_common::Direction::Ingress as u8 {
        ctx::ciphertext_read(pid_tgid, active.sock, len);
    }
}

/// How a data event is numbered and sent.
pub struct DataEventHow {
    /// Its number on the connection.
    pub seq: u32,
    /// Where its bytes start in their direction (0 for TLS plaintext).
    pub offset: u64,
    /// TLS plaintext from the library hooks.
    pub tls: bool,
    /// Its first bytes decide whether the connection is worth copying (`first_bytes`).
    pub probe: bool,
    /// Wake user space now rather than when the ring fills (see `conn::Outcome::wake`).
    pub wake: bool,
}

/// The data event for `len` bytes at `active.buf`, a bounded prefix of them copied. With
/// `how.probe`, and some bytes copied, whether they may begin a message sonde parses.
#[inline(always)]
pub fn emit_data(tgid: u32, tid: u32, active: &ActiveIo, len: u64, how: DataEventHow) -> Option<bool> {
    let DataEventHow { seq, offset, tls, probe, wake } = how;
    // SAFETY: a helper without arguments that returns the current CPU's id (tracing programs run
    // with migration disabled, so it stays this program's CPU).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let scratch = SCRATCH.get_ptr_mut(cpu)?;
    // SAFETY: `scratch` is the non-null, aligned pointer to this CPU's `Scratch` slot that the
    // lookup just returned (it fails for a CPU id past `max_entries`); array values are never
    // freed. Programs on other CPUs use their own slot; the `&mut` ends with this function.
    let bytes = unsafe { &mut (*scratch).bytes };
    let limit = core::cmp::min(global_u32(&CAPTURE_BYTES) as u64, MAX_CAPTURE as u64);
    let want = core::cmp::min(len, limit) as usize;
    let captured = match active.buf_kind {
        _ if active.length_only != 0 => 0,
        k if k == IoBuf::Plain as u8 => copy_plain(bytes, active.buf, want),
        k if k == IoBuf::Iovec as u8 => copy_iovecs(bytes, active.buf, active.iovcnt as u64, want),
        k if k == IoBuf::None as u8 => 0,
        _ => copy_msghdr(bytes, active.buf, want),
    };
    let event = DataEvent {
        header: EventHeader {
            // SAFETY: a helper without arguments that only returns the monotonic clock.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd: active.fd,
            kind: EventKind::Data as u32,
        },
        len: core::cmp::min(len, u32::MAX as u64) as u32,
        captured: captured as u32,
        direction: active.direction,
        tls: tls as u8,
        _pad: [0; 2],
        seq,
        offset,
    };
    // SAFETY: `bytes` is `SCRATCH_BYTES` long, more than `size_of::<DataEvent>()` (`HEADER_BYTES`),
    // and the unaligned write needs no alignment.
    unsafe { core::ptr::write_unaligned(bytes.as_mut_ptr() as *mut DataEvent, event) };
    let captured = core::cmp::min(captured, MAX_CAPTURE);
    let total = HEADER_BYTES + captured;
    let starts = if probe && captured > 0 {
        let mut first = [0u8; PROBE_BYTES];
        first.copy_from_slice(&bytes[HEADER_BYTES..HEADER_BYTES + PROBE_BYTES]);
        Some(may_start_message(&first, captured))
    } else {
        None
    };
    if emit::output_bytes(&bytes[..total], wake) {
        count(KernelCount::BytesCopied, captured as u64);
    }
    starts
}

#[inline(always)]
fn copy_plain(bytes: &mut [u8; crate::maps::SCRATCH_BYTES], src: u64, want: usize) -> usize {
    let n = core::cmp::min(want, MAX_CAPTURE);
    if n == 0 {
        return 0;
    }
    let dst = &mut bytes[HEADER_BYTES..HEADER_BYTES + n];
    // SAFETY: `src` is the process's own buffer pointer from the syscall or TLS call and is never
    // dereferenced: the helper copies `dst.len()` bytes from user memory or fails (counted), it
    // cannot fault; `dst` is a checked slice of the scratch buffer.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, dst) }.is_err() {
        count_drop(DropReason::CopyFailed);
        return 0;
    }
    n
}

#[inline(always)]
fn copy_msghdr(bytes: &mut [u8; crate::maps::SCRATCH_BYTES], msghdr: u64, want: usize) -> usize {
    // SAFETY: `msghdr` is the process's `struct user_msghdr *` argument, never dereferenced: the
    // helper copies from user memory or fails (handled below), and any u64 is a valid result.
    let iov = unsafe { bpf_probe_read_user((msghdr as usize + MSGHDR_IOV) as *const u64) };
    // SAFETY: as for `iov`, 8 bytes further into the same user struct.
    let iovlen = unsafe { bpf_probe_read_user((msghdr as usize + MSGHDR_IOVLEN) as *const u64) };
    match (iov, iovlen) {
        (Ok(iov), Ok(iovlen)) => copy_iovecs(bytes, iov, iovlen, want),
        _ => {
            count_drop(DropReason::CopyFailed);
            0
        }
    }
}

/// Gather up to `want` bytes from the first `MAX_IOVECS` iovecs.
#[inline(always)]
fn copy_iovecs(bytes: &mut [u8; crate::maps::SCRATCH_BYTES], iov: u64, iovcnt: u64, want: usize) -> usize {
    let mut off: usize = 0;
    for i in 0..MAX_IOVECS as u64 {
        if i >= iovcnt || off >= want || off >= MAX_CAPTURE {
            break;
        }
        // SAFETY: the process's iovec array, entry `i < iovcnt`, copied from user memory by the
        // helper or not at all (counted); `Iovec` is two u64s, valid for any bytes.
        let Ok(v) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const Iovec) }) else {
            count_drop(DropReason::CopyFailed);
            break;
        };
        let take = core::cmp::min(v.len as usize, want - off);
        let take = core::cmp::min(take, MAX_CAPTURE);
        if take == 0 {
            continue;
        }
        // off < MAX_CAPTURE and take <= MAX_CAPTURE: inside the 2 * MAX_CAPTURE scratch area.
        let start = HEADER_BYTES + (off & (MAX_CAPTURE - 1));
        let dst = &mut bytes[start..start + take];
        // SAFETY: `v.base` is a user address from the process's iovec, never dereferenced: the
        // helper copies from user memory or fails (counted); `dst` is a checked slice of scratch.
        if unsafe { bpf_probe_read_user_buf(v.base as *const u8, dst) }.is_err() {
            count_drop(DropReason::CopyFailed);
            break;
        }
        off += take;
    }
    core::cmp::min(off, MAX_CAPTURE)
}
