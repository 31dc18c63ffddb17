//! Trace context chosen in the kernel (`--context-propagation tcp`; see `sonde_common::propagation`
//! for why the kernel and not user space decides).
//!
//! - A traced thread reads the head of a server request: the request gets a new span id, in the
//!   trace its caller put in a TCP option of the segment the head began (`TCP_IN`, filled by
//!   `tcpopt.rs`), or in a new trace. The thread serves it (`SERVING`) until it writes to that
//!   connection again — its answer.
//! - A traced thread is about to write a request head on a connection it opened: the request gets a
//!   new span id, in the trace of the request the thread serves, or in a new trace. The context is
//!   filed for the segment that will begin at the request's first byte (`TCP_OUT`), before any of
//!   it is sent, and the ids wait for the write's data event (`CLIENT_IDS`).
//!
//! Either way a [`ContextEvent`] goes out just before the data event, so that user space exports
//! the spans with the very ids that went on the wire. TLS connections get no context yet: their
//! plaintext is seen in the library call, and the bytes of one request are written later.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user};
use sonde_common::{
    ActiveIo, Direction, EventHeader, EventKind, IoBuf, KernelCount, Role, TlsCallKind, Verdict, conn_key,
    first_bytes::{PROBE_BYTES, starts_request},
    propagation::{
        CARRY_HEADER, CARRY_TCP_OPTION, ContextEvent, FLAG_SAMPLED, HeaderIds, HeaderOutcome, Ids, Origin,
        WireContext,
    },
};

use crate::{
    emit, fdsock, filter,
    goroutines::{self, worker},
    maps::{
        CLIENT_IDS, CONNS, GO_GOROUTINES, GO_PROCS, HEADER_OUT, HEADER_SCANS, HeaderScan, OFF_TCP_COPIED_SEQ,
        OFF_TCP_WRITE_SEQ, PROPAGATE, SERVING, SHARED_THREADS, TCP_IN, TCP_OUT, TLS_CALLS, TLS_RECEIVED,
        Worker, count, global_u32,
    },
    traceparent,
};

// `struct user_msghdr`: msg_iov at 16; `struct iovec`: base, len.
const MSGHDR_IOV: u64 = 16;

/// Whether contexts are chosen at all: for every traced process with propagation, for the Go
/// programs whose goroutines are followed without it.
#[inline(always)]
pub fn enabled() -> bool {
    global_u32(&PROPAGATE) != 0 || global_u32(&GO_GOROUTINES) != 0
}

/// Whether contexts are chosen for process `tgid`'s requests.
#[inline(always)]
fn chosen_for(tgid: u32) -> bool {
    global_u32(&PROPAGATE) != 0 || goroutines::followed(tgid)
}

/// Entry of a write-family syscall on `fd`, `count` being its third argument (a byte count, or an
/// iovec count): if a traced thread is about to write a request head on a connection it opened,
/// its context is chosen and filed for the wire.
#[inline(always)]
pub fn before_send(pid_tgid: u64, fd: i32, buf: u64, count: u64, kind: IoBuf) {
    if !enabled() || fd < 0 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    if !filter::traced(tgid) || !chosen_for(tgid) {
        return;
    }
    // SAFETY: copied out at once from the LRU map's preallocated element, which stays mapped while
    // the program runs; `ConnState` is plain integers, valid for any bytes another CPU writes.
    let Some(state) = (unsafe { CONNS.get(&conn_key(tgid, fd as u32)) }).copied() else {
        return;
    };
    // A connection seen from its connect, still copied, not one of sonde's own (a TLS one's
    // first-bytes verdict judged its ciphertext: its plaintext is still wanted).
    let wanted = if state.tls != 0 {
        state.verdict != Verdict::Unwanted as u8
    } else {
        state.verdict == Verdict::Copy as u8
    };
    if state.role != Role::Client as u8 || state.peer_is_agent != 0 || !wanted {
        return;
    }
    let first =
        if state.tls != 0 { tls_plaintext(pid_tgid, fd) } else { first_bytes(buf, kind as u8, count) };
    let Some((first, n)) = first else {
        return;
    };
    if !starts_request(&first, n) {
        return;
    }
    // In a Go program whose goroutines are followed, the goroutine says whom it works for.
    // SAFETY: only whether an entry exists is looked at.
    if !goroutines::followed(tgid) && unsafe { SHARED_THREADS.get(&tgid) }.is_some() {
        return;
    }
    let Some(who) = worker(pid_tgid) else {
        return;
    };
    let carry = global_u32(&PROPAGATE);
    // The socket is known once data moved on the fd; before the first write, the fd table says
    // (only the carriers need it).
    let sock = if state.sock != 0 || carry == 0 {
        state.sock
    } else {
        match fdsock::tcp_socket(fdsock::Walk::Send, fd) {
            Some((sock, _)) => sock,
            None => return,
        }
    };
    // SAFETY: copied out at once; only this worker's hooks (and its parent's, at its start) write
    // its entry.
    let serving = (unsafe { SERVING.get(&who) }).copied();
    let mut ids = match &serving {
        Some(serving) => Ids { parent_id: serving.span_id, origin: Origin::Serving as u8, ..*serving },
        None => new_trace(),
    };
    ids.span_id = random_span_id();
    ids.fd = fd;
    // Without propagation nothing goes on the wire: the ids are only for the linker.
    let mut filed = carry == 0;
    if carry & CARRY_TCP_OPTION != 0
        && let Some(write_seq) = read_u32(sock, global_u32(&OFF_TCP_WRITE_SEQ))
    {
        let wire = WireContext {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            seq: write_seq,
            flags: ids.flags,
            _pad: [0; 3],
        };
        filed |= TCP_OUT.insert(&sock, &wire, 0).is_ok();
    }
    // A TLS socket's sends are ciphertext: no header can go in.
    if carry & CARRY_HEADER != 0 && state.tls == 0 {
        let header = HeaderIds {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            // The caller of the request this thread serves, as its header named it.
            forwarded_parent: serving.map_or([0; 8], |s| s.parent_id),
            flags: ids.flags,
            outcome: HeaderOutcome::None as u8,
            _pad: [0; 6],
        };
        filed |= HEADER_OUT.insert(&sock, &header, 0).is_ok();
    }
    if filed {
        let _ = CLIENT_IDS.insert(&who, &ids, 0);
    }
}

/// For a write of TLS ciphertext: the first bytes of the plaintext the TLS library call it is
/// inside is writing, once per call (the record that begins the request is its first write; a
/// context already filed in this call, `CLIENT_IDS`, means a later write of the same call).
#[inline(always)]
fn tls_plaintext(pid_tgid: u64, fd: i32) -> Option<([u8; PROBE_BYTES], usize)> {
    let who = worker(pid_tgid)?;
    // SAFETY: copied out at once; only this worker's hooks write its entry.
    let call = (unsafe { TLS_CALLS.get(&who) }).copied()?;
    // A call whose plaintext went out at its entry chose its context there.
    if call.kind != TlsCallKind::Data as u8 || call.direction != Direction::Egress as u8 || call.sent != 0 {
        return None;
    }
    // SAFETY: only whether an entry exists, and its fd, is looked at.
    if unsafe { CLIENT_IDS.get(&who) }.is_some_and(|ids| ids.fd == fd) {
        return None;
    }
    // A request head is longer than the bytes looked at.
    first_bytes(call.buf, IoBuf::Plain as u8, PROBE_BYTES as u64)
}

/// A TLS library data call of worker `who` starts: what an earlier call left unclaimed (it failed,
/// or its plaintext began no request) is stale.
#[inline(always)]
pub fn tls_call_starts(who: &Worker, direction: Direction) {
    if !enabled() {
        return;
    }
    if direction == Direction::Egress {
        let _ = CLIENT_IDS.remove(who);
    } else {
        let _ = TLS_RECEIVED.remove(who);
    }
}

/// TLS ciphertext of `len` bytes was just read from `sock` inside a TLS library call: if a TCP
/// option's segment began at its first byte, the context waits for the call's plaintext.
#[inline(always)]
pub fn ciphertext_read(pid_tgid: u64, sock: u64, len: u64) {
    if !enabled() {
        return;
    }
    if let Some(ids) = received(sock, len)
        && let Some(who) = worker(pid_tgid)
    {
        let _ = TLS_RECEIVED.insert(&who, &ids, 0);
    }
}

/// Bytes that moved on a connection of role `role` were just numbered `seq` for their data event,
/// which follows: the context event that goes before it, if they begin a request the kernel gave a
/// context to; and the end of serving, when a server writes its answer.
#[inline(always)]
///
/// `tls`: the bytes are TLS plaintext, from the library call (a context received for them came with
/// the ciphertext, `ciphertext_read`).
pub fn on_data(pid_tgid: u64, active: &ActiveIo, len: u64, seq: u32, role: u8, tls: bool) {
    if !enabled() || !chosen_for((pid_tgid >> 32) as u32) {
        return;
    }
    let egress = active.direction == Direction::Egress as u8;
    if egress && role == Role::Client as u8 {
        let Some(who) = worker(pid_tgid) else {
            return;
        };
        // SAFETY: copied out at once; only this worker's hooks write its entry.
        let Some(mut ids) = (unsafe { CLIENT_IDS.get(&who) }).copied() else {
            return;
        };
        let _ = CLIENT_IDS.remove(&who);
        // What the `sk_msg` program, inside this send, did with the header.
        // SAFETY: copied out at once from the LRU element; plain integers.
        if let Some(header) = (unsafe { HEADER_OUT.get(&active.sock) }).copied() {
            let _ = HEADER_OUT.remove(&active.sock);
            ids.header = header.outcome;
        }
        if ids.fd == active.fd {
            send_event(pid_tgid, &ids, seq, Direction::Egress);
        }
    } else if egress && role == Role::Server as u8 {
        let Some(who) = worker(pid_tgid) else {
            return;
        };
        // SAFETY: as above.
        if unsafe { SERVING.get(&who) }.is_some_and(|s| s.fd == active.fd) {
            let _ = SERVING.remove(&who);
        }
    } else if !egress && role == Role::Server as u8 && active.length_only == 0 {
        server_read(pid_tgid, active, len, seq, tls);
    }
}

/// A server read of `len` bytes: if they begin a request head, its ids, from the TCP option of the
/// segment it began or new; the thread serves it from now on.
#[inline(always)]
fn server_read(pid_tgid: u64, active: &ActiveIo, len: u64, seq: u32, tls: bool) {
    let Some((first, n)) = first_bytes(active.buf, active.buf_kind, len) else {
        return;
    };
    if !starts_request(&first, n) {
        return;
    }
    let Some(who) = worker(pid_tgid) else {
        return;
    };
    let received = if tls {
        // SAFETY: copied out at once; only this worker's hooks write its entry.
        let ids = (unsafe { TLS_RECEIVED.get(&who) }).copied();
        let _ = TLS_RECEIVED.remove(&who);
        ids
    } else {
        received(active.sock, len)
    };
    let mut ids = received.unwrap_or_else(new_trace);
    ids.span_id = random_span_id();
    ids.fd = active.fd;
    // SAFETY: only the fd of the copied-out entry is looked at.
    // (A thread started for a request, fd -1, answers on no connection: it may read requests of
    // its own.)
    if unsafe { SERVING.get(&who) }.is_some_and(|s| s.fd >= 0 && s.fd != active.fd) {
        // A request read while one from another connection is unanswered: the thread serves
        // several at once (an event loop), and the one it read last says nothing about its calls.
        let _ = SHARED_THREADS.insert(&((pid_tgid >> 32) as u32), &1, 0);
    }
    let _ = SERVING.insert(&who, &ids, 0);
    send_event(pid_tgid, &ids, seq, Direction::Ingress);
    // The header scan runs only with propagation (`ctx_exit_read`, through `HEADER_SCAN_JUMP`);
    // a Go program followed without it would file scans nobody reads.
    if !tls
        && global_u32(&PROPAGATE) != 0
        && let Some((addr, n)) = first_segment(active.buf, active.buf_kind, len)
    {
        let _ = HEADER_SCANS.insert(&pid_tgid, &HeaderScan { addr, len: n, who }, 0);
    }
}

/// Exit of a read syscall: if the thread just read a request head (`HEADER_SCANS`) with a valid
/// `traceparent` header, the request it serves is in the header's trace — its calls carry that
/// trace, the parent stays the server span's id (the header wins over a TCP option, as in user
/// space, which reads the header itself for the server span).
#[inline(always)]
pub fn after_read(pid_tgid: u64) {
    let Some(scan) = HEADER_SCANS.get_ptr(&pid_tgid) else {
        return;
    };
    // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated elements,
    // which stay mapped while the program runs; only this thread's hooks write its entry, and it is
    // removed below, after its last use. Plain integers, valid for any bytes.
    let (addr, len) = unsafe { ((*scan).addr, (*scan).len) };
    if let Some(header) = traceparent::in_head(addr, len)
        // SAFETY: as above; the key is read from the map's element in place (this program's stack
        // is nearly all the scan's).
        && let Some(serving) = SERVING.get_ptr_mut(unsafe { &(*scan).who })
    {
        // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated
        // elements; only this thread's hooks (and its parent's, at its start) write its entry.
        unsafe {
            (*serving).trace_id = header.trace_id;
            (*serving).parent_id = header.parent_id;
            (*serving).flags = header.flags;
        }
    }
    let _ = HEADER_SCANS.remove(&pid_tgid);
}

/// Thread `parent_tid` started `child_tid` (a thread or a process): started while the parent
/// serves a request, the child works for it, as a worker thread made per request does.
#[inline(always)]
pub fn spawned(parent_tid: u32, child_tid: u32) {
    // Threads serve requests in the kernel's tables only with propagation (in a followed Go
    // program goroutines do, started through `go_newproc1_return`).
    if global_u32(&PROPAGATE) == 0 {
        return;
    }
    // SAFETY: copied out at once from the LRU element; plain integers.
    if let Some(ids) = (unsafe { SERVING.get(&Worker::thread(parent_tid)) }).copied() {
        // The child answers on no connection: it serves the request until it exits or reads one.
        let _ = SERVING.insert(&Worker::thread(child_tid), &Ids { fd: -1, ..ids }, 0);
    }
}

/// A thread exited (the last one of its process, with `process_gone`): what was kept for it goes,
/// before its id is handed out again.
#[inline(always)]
pub fn exited(pid_tgid: u64, process_gone: bool) {
    if !enabled() {
        return;
    }
    let _ = SERVING.remove(&Worker::thread(pid_tgid as u32));
    let _ = CLIENT_IDS.remove(&Worker::thread(pid_tgid as u32));
    if process_gone {
        let _ = SHARED_THREADS.remove(&((pid_tgid >> 32) as u32));
        let _ = GO_PROCS.remove(&((pid_tgid >> 32) as u32));
    }
}

/// The context received for the read that just returned `len` bytes of `sock`, when its first byte
/// began the segment that carried it. A context for an earlier byte is stale (its read began
/// elsewhere) and goes; one for a later byte waits for its read.
#[inline(always)]
fn received(sock: u64, len: u64) -> Option<Ids> {
    // SAFETY: copied out at once from the LRU element; plain integers.
    let wire = (unsafe { TCP_IN.get(&sock) }).copied()?;
    // The read moved `len` bytes: the next byte to read is now `copied_seq`.
    let start = read_u32(sock, global_u32(&OFF_TCP_COPIED_SEQ))?.wrapping_sub(len as u32);
    let ahead = wire.seq.wrapping_sub(start) as i32;
    if ahead > 0 {
        return None;
    }
    let _ = TCP_IN.remove(&sock);
    if ahead < 0 {
        return None;
    }
    count(KernelCount::OptionsMatched, 1);
    Some(Ids {
        trace_id: wire.trace_id,
        span_id: [0; 8],
        parent_id: wire.span_id,
        fd: 0,
        flags: wire.flags,
        origin: Origin::TcpOption as u8,
        header: 0,
        _pad: 0,
    })
}

#[inline(always)]
fn send_event(pid_tgid: u64, ids: &Ids, data_seq: u32, direction: Direction) {
    let event = ContextEvent {
        header: EventHeader {
            // SAFETY: a helper without arguments that only returns the monotonic clock.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            fd: ids.fd,
            kind: EventKind::Context as u32,
        },
        ids: *ids,
        data_seq,
        direction: direction as u8,
        _pad: [0; 3],
    };
    emit::output(&event);
}

/// Ids of a request that starts a trace (its span id is drawn by the caller).
#[inline(always)]
fn new_trace() -> Ids {
    let mut trace_id = [0u8; 16];
    for i in 0..4 {
        // SAFETY: a helper without arguments that returns a pseudo-random number.
        let r = unsafe { bpf_get_prandom_u32() };
        trace_id[i * 4..i * 4 + 4].copy_from_slice(&r.to_ne_bytes());
    }
    // W3C: an all-zero trace id is invalid.
    trace_id[15] |= 1;
    Ids {
        trace_id,
        span_id: [0; 8],
        parent_id: [0; 8],
        fd: 0,
        flags: FLAG_SAMPLED,
        origin: Origin::New as u8,
        header: 0,
        _pad: 0,
    }
}

#[inline(always)]
fn random_span_id() -> [u8; 8] {
    // SAFETY: helpers without arguments that return pseudo-random numbers.
    let (a, b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    // Never all zeros (the invalid id).
    let v = ((a as u64) << 32) | b as u64 | 1;
    v.to_ne_bytes()
}

/// Where the bytes a call moves begin, and how many are there: the buffer, or the first iovec.
/// `count` is the call's byte count for a plain buffer (its iovec count otherwise, and the first
/// iovec's length bounds them).
#[inline(always)]
fn first_segment(buf: u64, kind: u8, count: u64) -> Option<(u64, u64)> {
    if kind == IoBuf::Plain as u8 {
        Some((buf, count))
    } else if kind == IoBuf::Iovec as u8 {
        first_iovec(buf)
    } else if kind == IoBuf::Msghdr as u8 {
        // SAFETY: the process's `struct user_msghdr *`, never dereferenced: the helper copies from
        // user memory or fails; any u64 is a valid result.
        let iov = unsafe { bpf_probe_read_user((buf + MSGHDR_IOV) as *const u64) }.ok()?;
        first_iovec(iov)
    } else {
        None
    }
}

/// The first bytes a call moves (up to `PROBE_BYTES`) and how many of them count (see
/// `first_segment`).
#[inline(always)]
fn first_bytes(buf: u64, kind: u8, count: u64) -> Option<([u8; PROBE_BYTES], usize)> {
    let (addr, len) = first_segment(buf, kind, count)?;
    // SAFETY: a user address from the syscall's arguments, never dereferenced: the helper copies
    // from user memory or fails (a buffer shorter than PROBE_BYTES at the end of a mapping: then
    // no context, which is safe).
    let bytes = unsafe { bpf_probe_read_user(addr as *const [u8; PROBE_BYTES]) }.ok()?;
    Some((bytes, core::cmp::min(len, PROBE_BYTES as u64) as usize))
}

/// Base and length of the first iovec at `iov`.
#[inline(always)]
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: the process's iovec array, never dereferenced: the helper copies two u64 from user
    // memory or fails.
    let v = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((v[0], v[1]))
}

/// A u32 field at `offset` of a kernel struct; None when the offset is unknown or unreadable.
#[inline(always)]
fn read_u32(base: u64, offset: u32) -> Option<u32> {
    if base == 0 || offset == 0 {
        return None;
    }
    // SAFETY: the pointer is only handed to the helper, which copies through the kernel's
    // fault-tolerant path and fails on a bad address; any u32 is a valid result.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u32) }.ok()
}
