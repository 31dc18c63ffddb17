//! TLS plaintext where the process hands it to its TLS library (OpenSSL's `SSL_read`/`SSL_write`
//! and their `_ex` variants, uprobes on the shared library), tied to the TCP connection it travels
//! on, so that it goes through the same HTTP pipeline as plaintext sockets.
//!
//! Which connection: the socket the same thread reads or writes inside the call (`in_call`, from
//! the socket hooks), else the fd `SSL_set_fd` gave the object, else the one an earlier call of the
//! same object used (`TLS_SOCKETS`). The ciphertext moved inside any TLS call (handshake and
//! shutdown included) marks the connection TLS in `CONNS`: from then on its ciphertext is not sent.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    maps::Array,
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::debug;
use sonde_common::{ActiveIo, Direction, DropReason, IoBuf, TlsCall, TlsCallKind, TlsKey};

use crate::{
    conn, ctx, filter,
    goroutines::{self, worker},
    io,
    maps::{TLS_CALLS, TLS_EXCLUDED, TLS_PIDS, TLS_SOCKETS, Worker, count_drop},
};

/// Entry of a TLS call on `ssl`. `buf`: the plaintext buffer; `len_out`: where an `_ex` variant
/// stores its byte count (0 when the return value is the count).
#[inline(always)]
pub fn enter(ssl: u64, buf: u64, len_out: u64, direction: Direction, kind: TlsCallKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if ssl == 0 || !filter::traced(tgid) || bit_set(&TLS_EXCLUDED, tgid) {
        return;
    }
    let Some(who) = worker(pid_tgid) else {
        return;
    };
    if kind == TlsCallKind::Control
        // SAFETY: the entry of this worker, which only its own hooks write; its element stays
        // mapped while the program runs, and one byte of it is read at once.
        && let Some(outer) = unsafe { TLS_CALLS.get(&who) }
        && outer.kind == TlsCallKind::Data as u8
    {
        // A handshake run from inside a read or write: the outer call keeps its record.
        return;
    }
    mark_process(tgid);
    if kind == TlsCallKind::Data {
        ctx::tls_call_starts(&who, direction);
    }
    let call = TlsCall {
        ssl,
        buf,
        len_out,
        sock: 0,
        fd: -1,
        direction: direction as u8,
        kind: kind as u8,
        family: 0,
        became_tls: 0,
        sent: 0,
        _pad: [0; 7],
    };
    if TLS_CALLS.insert(&who, &call, 0).is_err() {
        count_drop(DropReason::ActiveMapFull);
    }
}

/// Sets the process's bit in `TLS_PIDS` (read first: the word is shared by 64 processes, and a
/// store on every call would bounce its cache line between CPUs).
#[inline(always)]
fn mark_process(tgid: u32) {
    if let Some(word) = TLS_PIDS.get_ptr_mut(tgid / 64) {
        let bit = 1u64 << (tgid % 64);
        // SAFETY: `word` is the non-null, aligned pointer to an array element the lookup just
        // returned; array values are never freed. The read-modify-write is not atomic: racing with
        // another CPU it can lose another process's bit, which that process's next TLS call sets
        // again.
        unsafe {
            if *word & bit == 0 {
                *word |= bit;
            }
        }
    }
}

#[inline(always)]
fn bit_set(bitmap: &Array<u64>, tgid: u32) -> bool {
    bitmap.get(tgid / 64).is_some_and(|word| word & (1u64 << (tgid % 64)) != 0)
}

/// From the socket hooks: is this thread (or goroutine) inside a TLS call? If so, the call learns
/// its socket.
#[inline(always)]
pub fn in_call(pid_tgid: u64, fd: i32, sock: u64, family: u16) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    if !bit_set(&TLS_PIDS, tgid) {
        return false;
    }
    let Some(who) = worker(pid_tgid) else {
        return false;
    };
    let Some(call) = TLS_CALLS.get_ptr_mut(&who) else {
        return false;
    };
    // SAFETY: `call` is the non-null, aligned value pointer the lookup just returned, into the LRU
    // map's preallocated elements, which stay mapped while the program runs; its key is the
    // running worker, so no other worker's program writes it.
    unsafe {
        (*call).fd = fd;
        (*call).sock = sock;
        (*call).family = family as u8;
    }
    true
}

/// The socket hooks found that the thread's current call made its connection TLS.
#[inline(always)]
pub fn became_tls(pid_tgid: u64) {
    let Some(who) = worker(pid_tgid) else {
        return;
    };
    if let Some(call) = TLS_CALLS.get_ptr_mut(&who) {
        // SAFETY: as in `in_call`: this thread's own entry, from the lookup just above.
        unsafe { (*call).became_tls = 1 };
    }
}

/// A thread exits: a call it was in will never return. (A goroutine's calls outlive its threads;
/// its record goes at its return, or when its `g` starts another goroutine, `go_newproc1_return`.)
#[inline(always)]
pub fn thread_exit(pid_tgid: u64) {
    if bit_set(&TLS_PIDS, (pid_tgid >> 32) as u32) {
        let _ = TLS_CALLS.remove(&Worker::thread(pid_tgid as u32));
    }
}

/// Return of a handshake or shutdown: forget the call, remember its socket.
#[inline(always)]
pub fn control_return() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(who) = worker(pid_tgid) else {
        return;
    };
    // SAFETY: this worker's own entry (only its hooks write it), copied out at once, before it is
    // removed; the element stays mapped while the program runs.
    let Some(call) = (unsafe { TLS_CALLS.get(&who) }).copied() else {
        return;
    };
    if call.kind != TlsCallKind::Control as u8 {
        return;
    }
    let _ = TLS_CALLS.remove(&who);
    if call.fd >= 0 {
        remember_socket((pid_tgid >> 32) as u32, call.ssl, call.fd);
    }
}

/// Return of a data call with its return value: the plaintext it moved becomes a data event of
/// its connection.
#[inline(always)]
pub fn data_return(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(who) = worker(pid_tgid) else {
        return;
    };
    // SAFETY: this worker's own entry (only its hooks write it), copied out at once, before it is
    // removed; the element stays mapped while the program runs.
    let Some(call) = (unsafe { TLS_CALLS.get(&who) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&who);
    if call.kind != TlsCallKind::Data as u8 || call.sent != 0 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let len = if call.len_out != 0 {
        // `_ex`: 1 on success, the count in *len_out.
        if ret != 1 {
            return;
        }
        // SAFETY: `len_out` is the `size_t *` the process passed to the `_ex` call, never
        // dereferenced: the helper copies 8 bytes of user memory or fails (read as 0: no event).
        unsafe { bpf_probe_read_user(call.len_out as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return;
    };
    if len == 0 {
        return;
    }
    let fd = if call.fd >= 0 {
        call.fd
    } else {
        match known_socket(tgid, call.ssl) {
            Some(fd) => fd,
            None => {
                count_drop(DropReason::TlsNoSocket);
                return;
            }
        }
    };
    send_plaintext(pid_tgid, &call, fd, len);
}

/// The fd of TLS object `ssl` of process `tgid`, if known.
#[inline(always)]
fn known_socket(tgid: u32, ssl: u64) -> Option<i32> {
    let key = TlsKey { ssl, tgid, _pad: 0 };
    // SAFETY: the fd is copied out of the element at once, while it stays mapped; if another CPU
    // removed and reused it meanwhile, the i32 read is another key's fd, a wrong connection for one
    // event, nothing unsound.
    (unsafe { TLS_SOCKETS.get(&key) }).copied()
}

/// The `len` plaintext bytes of `call` become a data event of the connection on `fd`.
#[inline(always)]
fn send_plaintext(pid_tgid: u64, call: &TlsCall, fd: i32, len: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let outcome = conn::on_tls_data(tgid, fd, len);
    let seq = match outcome.action {
        conn::Action::Send => outcome.seq,
        conn::Action::NoConnection => {
            count_drop(DropReason::TlsNoSocket);
            return;
        }
        _ => return,
    };
    if call.became_tls != 0 {
        // SSL_set_fd and the handshake normally tell which socket an object uses; for one set up
        // before sonde started, the call that found its connection does, once (not a map lookup
        // on every call).
        remember_socket(tgid, call.ssl, fd);
    }
    let plaintext = ActiveIo {
        buf: call.buf,
        sock: call.sock,
        fd,
        iovcnt: 0,
        direction: call.direction,
        buf_kind: IoBuf::Plain as u8,
        is_tcp: 1,
        family: call.family,
        length_only: 0,
        _pad: [0; 3],
    };
    ctx::on_data(pid_tgid, &plaintext, len, seq, outcome.role, true);
    let how = io::DataEventHow { seq, offset: 0, tls: true, probe: false, wake: false };
    io::emit_data(tgid, pid_tgid as u32, &plaintext, len, how);
}

/// `SSL_set_fd(ssl, fd)`.
#[inline(always)]
pub fn set_fd(ctx: &ProbeContext, ssl: u64, fd: i64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if ssl != 0 && fd >= 0 && filter::traced(tgid) {
        remember_socket(tgid, ssl, fd as i32);
        debug!(ctx, "TLS object {:x} of process {} is on fd {}", ssl, tgid, fd);
    }
}

/// `SSL_free(ssl)`.
#[inline(always)]
pub fn free(ssl: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TLS_SOCKETS.remove(&TlsKey { ssl, tgid, _pad: 0 });
}

/// Writes only when the fd changed: one lookup instead of an update on every call.
#[inline(always)]
fn remember_socket(tgid: u32, ssl: u64, fd: i32) {
    let key = TlsKey { ssl, tgid, _pad: 0 };
    // SAFETY: the i32 is copied out at once, while the element stays mapped; a stale read only
    // makes the insert below happen or not.
    if unsafe { TLS_SOCKETS.get(&key) }.is_some_and(|&known| known == fd) {
        return;
    }
    let _ = TLS_SOCKETS.insert(&key, &fd, 0);
}

// Entry points. The agent attaches them to each OpenSSL library file (libssl.so.3, .so.1.1): the
// same program serves a function in every file.

/// `SSL_read(ssl, buf, num)`.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 0), arg(&ctx, 1), 0, Direction::Ingress, TlsCallKind::Data);
    0
}

/// `SSL_read_ex(ssl, buf, num, *readbytes)`.
#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 3), Direction::Ingress, TlsCallKind::Data);
    0
}

/// `SSL_write(ssl, buf, num)`.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 0), arg(&ctx, 1), 0, Direction::Egress, TlsCallKind::Data);
    0
}

/// `SSL_write_ex(ssl, buf, num, *written)`.
#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 3), Direction::Egress, TlsCallKind::Data);
    0
}

/// Return of any of the four data calls. They return C `int`: the upper half of the register is
/// not part of it (a -1 read as 64 bits is 4294967295).
#[uretprobe]
pub fn ssl_data_return(ctx: RetProbeContext) -> u32 {
    data_return(ctx.ret::<u64>() as i32 as i64);
    0
}

/// `SSL_do_handshake(ssl)`, `SSL_shutdown(ssl)`.
#[uprobe]
pub fn ssl_control_enter(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 0), 0, 0, Direction::Ingress, TlsCallKind::Control);
    0
}

#[uretprobe]
pub fn ssl_control_return(_ctx: RetProbeContext) -> u32 {
    control_return();
    0
}

/// `SSL_set_fd(ssl, fd)`.
#[uprobe]
pub fn ssl_set_fd(ctx: ProbeContext) -> u32 {
    set_fd(&ctx, arg(&ctx, 0), arg(&ctx, 1) as i32 as i64);
    0
}

/// `SSL_free(ssl)`.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    free(arg(&ctx, 0));
    0
}

// Go's `crypto/tls`, compiled into each Go program: uprobes on each Go executable whose goroutines
// sonde follows (`probes/go/hooks.rs`). Under Go's register calling convention a method's receiver
// and arguments are in RAX, RBX, RCX…, and at a return its results are in RAX, RBX…. Returns are
// caught with uprobes on each RET instruction of the function: a uretprobe replaces the return
// address on the stack, and the Go runtime moves goroutine stacks.

/// `crypto/tls.(*Conn).Read(c, b []byte) (int, error)`: RAX is `c`, RBX `b`'s array.
#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, Direction::Ingress, TlsCallKind::Data);
    0
}

/// `crypto/tls.(*Conn).Write(c, b []byte) (int, error)`: as `Read`, RCX `b`'s length.
///
/// Where the connection's socket is known, the plaintext is sent here, before its first byte
/// reaches the wire: at a return the goroutine may get back to its thread after the peer has
/// answered (Go's scheduler runs many goroutines on few threads), and an answer read before its
/// request pairs with nothing. The write's trace context is chosen here too, as for a socket write.
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !goroutines::followed(tgid) {
        return 0;
    }
    // SAFETY: the probe's own saved registers, valid for the program run.
    let (conn, buf, len) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).rcx) };
    let Some(who) = worker(pid_tgid) else {
        return 0;
    };
    // SAFETY: copied out at once; only this worker's hooks write its entry.
    if let Some(call) = (unsafe { TLS_CALLS.get(&who) }).copied()
        && call.kind == TlsCallKind::Data as u8
        && call.ssl == conn
        && call.buf == buf
    {
        // The runtime grew the goroutine's stack and ran the function again from its entry.
        return 0;
    }
    enter(conn, buf, 0, Direction::Egress, TlsCallKind::Data);
    let Some(call) = TLS_CALLS.get_ptr_mut(&who) else {
        return 0;
    };
    let Some(fd) = known_socket(tgid, conn) else {
        // A connection whose handshake sonde did not see: this call finds its socket, for the
        // later ones.
        // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated
        // elements; this worker's own entry, which only its hooks write.
        unsafe { (*call).became_tls = 1 };
        return 0;
    };
    if len == 0 {
        return 0;
    }
    ctx::before_send(pid_tgid, fd, buf, len, IoBuf::Plain);
    // SAFETY: as above; copied out right after the write.
    let call = unsafe {
        (*call).sent = 1;
        *call
    };
    send_plaintext(pid_tgid, &call, fd, len);
    0
}

/// `crypto/tls.(*Conn).clientHandshake(c, ctx) error` and `serverHandshake`: every handshake,
/// whether a `Read` or `Write` runs it or the program (`net/http`'s server does, before its first
/// read).
#[uprobe]
pub fn go_tls_handshake(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, Direction::Ingress, TlsCallKind::Control);
    0
}

/// A RET of `Read` or `Write`: RAX is the byte count.
#[uprobe]
pub fn go_tls_data_return(ctx: ProbeContext) -> u32 {
    // SAFETY: the probe's own saved registers, valid for the program run.
    data_return(unsafe { (*ctx.regs).rax } as i64);
    0
}

/// A RET of `clientHandshake` or `serverHandshake`.
#[uprobe]
pub fn go_tls_control_return(_ctx: ProbeContext) -> u32 {
    control_return();
    0
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, direction: Direction, kind: TlsCallKind) {
    // Only where goroutines are followed: keyed by thread, the call's record would stay behind
    // when its goroutine moves, for another goroutine on that thread to use.
    if !goroutines::followed((bpf_get_current_pid_tgid() >> 32) as u32) {
        return;
    }
    // SAFETY: the probe's own saved registers, valid for the program run.
    let (conn, buf) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx) };
    let buf = if kind == TlsCallKind::Data { buf } else { 0 };
    enter(conn, buf, 0, direction, kind);
}

/// A goroutine starts on `g`, which an exited one may have left inside a TLS call.
#[inline(always)]
pub fn goroutine_starts(g: &Worker) {
    if bit_set(&TLS_PIDS, g.tgid) {
        let _ = TLS_CALLS.remove(g);
    }
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg(n).unwrap_or(0)
}
