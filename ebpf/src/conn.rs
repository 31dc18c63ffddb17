//! Connection tracking per (tgid, fd): roles from accept/connect, an `Open` event the first time a
//! TCP socket carries data on an fd, a `Close` event when a tracked fd is closed.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    bpf_probe_read_kernel_buf,
};
use sonde_common::{
    AF_INET, AF_INET6, CloseEvent, ConnEvent, ConnState, Direction, EventHeader, EventKind, KernelCount,
    Role, SKIP_MIN_CALL_BYTES, Verdict, conn_key,
};

use crate::{
    emit,
    maps::{
        CONNS, OFF_TASK_GROUP_LEADER, OFF_TASK_START_BOOTTIME, OFF_V6_DADDR, OFF_V6_RCV_SADDR, SKIPS, count,
        global_u32,
    },
    own,
};

/// Both directions' bits of `ConnState::unprobed`.
const BOTH_DIRECTIONS: u8 = 0b11;
/// A call moving this much, on a connection whose body end user space has not given, wakes user
/// space at once (once until a skipped body ends): a transfer this size is worth skipping soon.
/// The wake-up costs the thread ~1.4 µs, less than copying one such call.
const WAKE_CALL_BYTES: u64 = 16 * 1024;

// `struct sock_common` starts with these fields in every kernel since 3.x (their order is part of
// the hash-table lookup fast path), so their offsets need no BTF: skc_daddr, skc_rcv_saddr,
// skc_hash, skc_dport (network order), skc_num (host order).
const OFF_DADDR: usize = 0;
const OFF_RCV_SADDR: usize = 4;
const OFF_DPORT: usize = 12;
const OFF_NUM: usize = 14;

/// When the current process started: `current->group_leader->start_boottime` (0 if the offsets
/// are unknown). Two reads, once per new connection.
#[inline(always)]
fn process_start_ns() -> u64 {
    let leader_off = global_u32(&OFF_TASK_GROUP_LEADER) as usize;
    let start_off = global_u32(&OFF_TASK_START_BOOTTIME) as usize;
    if leader_off == 0 || start_off == 0 {
        return 0;
    }
    // SAFETY: a helper without arguments: it returns the address of the current task and reads
    // no memory.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: `task + leader_off` is not dereferenced here: the helper copies through the kernel's
    // fault-tolerant copy, so an offset that does not match this kernel gives a wrong value or an
    // error (handled), never a fault; every bit pattern is a valid pointer value to copy.
    let Ok(leader) = (unsafe { bpf_probe_read_kernel(task.add(leader_off) as *const *const u8) }) else {
        return 0;
    };
    // SAFETY: as above: `leader` may be anything, the helper copies 8 bytes or fails, and any u64
    // is a valid result.
    (unsafe { bpf_probe_read_kernel(leader.add(start_off) as *const u64) }).unwrap_or(0)
}

/// `accept`/`accept4` returned `fd`: if it turns out to carry TCP data, this process is its server.
#[inline(always)]
pub fn on_accept(tgid: u32, fd: i64) {
    remember_role(tgid, fd, Role::Server);
}

/// `connect` to an inet address succeeded or is in progress on `fd`.
#[inline(always)]
pub fn on_connect(tgid: u32, fd: i64) {
    remember_role(tgid, fd, Role::Client);
}

#[inline(always)]
fn remember_role(tgid: u32, fd: i64, role: Role) {
    if fd < 0 {
        return;
    }
    let state = ConnState::with_role(role);
    // Overwrites a stale entry for a reused fd: the next data event then sees a new socket.
    let _ = CONNS.insert(&conn_key(tgid, fd as u32), &state, 0);
}

/// `close(fd)`: tell user space if the fd was a tracked connection, and forget it.
#[inline(always)]
pub fn on_close(tgid: u32, tid: u32, fd: i64) {
    if fd < 0 {
        return;
    }
    let key = conn_key(tgid, fd as u32);
    // SAFETY: the reference points into the map's preallocated elements (an LRU map always
    // preallocates), which stay mapped while the program runs; it is read once, just below, before
    // the entry is removed. Another CPU removing or reusing the element meanwhile can only change
    // the bytes read: `ConnState` is plain integers, valid for any bytes.
    let Some(state) = (unsafe { CONNS.get(&key) }) else {
        return;
    };
    // A connection to sonde itself was never announced: nothing to close.
    let (tracked, last_seq) = (state.sock != 0 && state.peer_is_agent == 0, state.seq);
    let _ = CONNS.remove(&key);
    // The fd's next socket starts at offset 0: a body end left here would skip its first bytes.
    let _ = SKIPS.remove(&key);
    if tracked {
        let event = CloseEvent {
            header: EventHeader {
                // SAFETY: a helper without arguments that only returns the monotonic clock.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                tgid,
                tid,
                fd: fd as i32,
                kind: EventKind::Close as u32,
            },
            last_seq,
            _pad: 0,
        };
        emit::output(&event);
    }
}

/// What moved on a socket, as the socket hooks see it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bytes {
    /// Bytes to send to user space (plaintext HTTP, or whatever the process speaks).
    Plain,
    /// Ciphertext moved inside a TLS library call: the connection is TLS, its plaintext comes
    /// from the library hooks, and these bytes are not sent.
    TlsCiphertext,
}

/// What to do with bytes that moved on a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    /// Send them, with `Outcome::seq`.
    Send,
    /// Nothing to send: TLS ciphertext, a connection with a verdict, or the `Open` did not fit in
    /// the ring (then the socket stays unrecorded, so the next data tries again, and this data is
    /// not worth sending).
    Skip,
    /// TLS ciphertext that made the connection TLS (new, or known until now as plaintext).
    BecameTls,
    /// TLS plaintext of a connection never announced (see `on_tls_data`).
    NoConnection,
}

/// An [`Action`] and, for `Send`, the event's sequence number, its bytes' offset in their
/// direction, whether they are the first of their direction on a connection seen from its start
/// (then they also decide whether it is worth copying: `probed`), and whether user space should be
/// woken for it at once (`wake`: the first large call of a body it may skip). Every byte is always
/// written, with no padding: kernels before 6.3 refuse a program that reads stack bytes never
/// written, and copying an enum with fields, or a struct with padding, does that.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Outcome {
    pub action: Action,
    pub probe: bool,
    pub wake: bool,
    /// The connection's [`Role`].
    pub role: u8,
    pub seq: u32,
    pub offset: u64,
}

impl Outcome {
    const SKIP: Outcome = Outcome::nothing(Action::Skip);
    const BECAME_TLS: Outcome = Outcome::nothing(Action::BecameTls);
    const NO_CONNECTION: Outcome = Outcome::nothing(Action::NoConnection);

    const fn nothing(action: Action) -> Outcome {
        Outcome { action, probe: false, wake: false, role: 0, seq: 0, offset: 0 }
    }

    fn send(seq: u32, probe: bool, offset: u64, role: u8) -> Outcome {
        Outcome { action: Action::Send, probe, wake: false, role, seq, offset }
    }
}

/// `len` bytes moved in `direction` on a TCP socket `sock` through (tgid, fd). Emits `Open` first
/// the time this socket is seen on this fd — including connections that existed before sonde
/// started.
#[inline(always)]
pub fn on_data(
    tgid: u32,
    tid: u32,
    fd: i32,
    sock: u64,
    family: u16,
    direction: u8,
    len: u64,
    bytes: Bytes,
) -> Outcome {
    let key = conn_key(tgid, fd as u32);
    let tls = bytes == Bytes::TlsCiphertext;
    let bit = 1u8 << (direction & 1);
    let role = match CONNS.get_ptr_mut(&key) {
        // SAFETY: `state` is the non-null, aligned value pointer the lookup just returned, into the
        // map's preallocated elements, which stay mapped while the program runs. Threads of one
        // process on other CPUs may update the same entry at once; its fields are plain integers,
        // so a race loses an update (see the `seq` note below), nothing worse.
        Some(state) => unsafe {
            if (*state).sock == sock {
                if (*state).peer_is_agent != 0 {
                    return Outcome::SKIP;
                }
                if tls {
                    let was = (*state).tls;
                    (*state).tls = 1;
                    return if was == 0 { Outcome::BECAME_TLS } else { Outcome::SKIP };
                }
                if (*state).tls != 0 {
                    if direction == Direction::Ingress as u8 && crate::goroutines::followed(tgid) {
                        // Ciphertext read outside every TLS call sonde saw: in a Go program, a
                        // read entered before its hooks were, whose plaintext is lost. A gap in
                        // the numbers makes user space start over rather than pair an answer with
                        // the wrong request. (Writes outside calls are the alert `Close` sends.)
                        (*state).seq = (*state).seq.wrapping_add(1);
                    }
                    return Outcome::SKIP;
                }
                if (*state).verdict != Verdict::Copy as u8 {
                    count(KernelCount::BytesNotCopied, len);
                    return Outcome::SKIP;
                }
                let d = (direction & 1) as usize;
                let offset = (*state).moved[d];
                let end = offset.wrapping_add(len);
                (*state).moved[d] = end;
                let mut wake = false;
                if len >= SKIP_MIN_CALL_BYTES {
                    match known_body_end(key, sock, d) {
                        Some(until) if end < until => {
                            count(KernelCount::BodyBytesSkipped, len);
                            return Outcome::SKIP;
                        }
                        // This call ends a skipped body: the next one may wake user space again.
                        Some(until) if offset < until => (*state).woken = 0,
                        _ => {}
                    }
                    // The first large call of a body user space does not know the end of yet: the
                    // sooner it reads the head, the fewer calls are copied before it can tell.
                    if len >= WAKE_CALL_BYTES && (*state).woken == 0 {
                        (*state).woken = 1;
                        wake = true;
                    }
                }
                // Not atomic: two threads writing one socket at once may share a number, which
                // user space reads as a gap and answers with a resync — safe, just rare.
                (*state).seq = (*state).seq.wrapping_add(1);
                let mut outcome =
                    Outcome::send((*state).seq, (*state).unprobed & bit != 0, offset, (*state).role);
                outcome.wake = wake;
                return outcome;
            }
            // sock 0: accept/connect told us the role. Another socket: the fd was reused without a
            // close we saw (dup2, close_range), so the old role does not apply.
            if (*state).sock == 0 { Role::from_u8((*state).role) } else { Role::Unknown }
        },
        None => Role::Unknown,
    };
    let mut event = ConnEvent {
        header: EventHeader {
            // SAFETY: a helper without arguments that only returns the monotonic clock.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd,
            kind: EventKind::Open as u32,
        },
        sock,
        family,
        local_port: 0,
        remote_port: 0,
        role: role as u8,
        _pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        start_ns: process_start_ns(),
    };
    read_addresses(sock, family, &mut event);
    if own::peer_is_agent(family, &event.remote_addr, event.remote_port, event.local_port) {
        // sonde's own export (or API call): remembered, so that its later data costs one lookup,
        // and never announced.
        let state = ConnState { sock, peer_is_agent: 1, ..ConnState::with_role(role) };
        let _ = CONNS.insert(&key, &state, 0);
        return Outcome::SKIP;
    }
    if !emit::output(&event) {
        return Outcome::SKIP;
    }
    // A TLS connection's first plaintext event gets number 1.
    let seq = if tls { 0 } else { 1 };
    // Only a connection seen from its first byte can be judged by its first bytes: one that existed
    // before sonde started may be in the middle of a body.
    let unprobed = if role == Role::Unknown || tls { 0 } else { BOTH_DIRECTIONS };
    let mut state = ConnState { sock, seq, tls: tls as u8, unprobed, ..ConnState::with_role(role) };
    state.moved[(direction & 1) as usize] = len;
    let _ = CONNS.insert(&key, &state, 0);
    // A body end user space gave for the fd's previous socket says nothing about this one.
    let _ = SKIPS.remove(&key);
    if tls { Outcome::BECAME_TLS } else { Outcome::send(seq, unprobed != 0, 0, role as u8) }
}

/// Where the body in progress in `direction` on (tgid, fd) ends, if user space knows (`SkipTo`):
/// calls that end before it are skipped, the one that reaches it is reported.
#[inline(always)]
fn known_body_end(key: u64, sock: u64, direction: usize) -> Option<u64> {
    // SAFETY: the lookup's reference points into the LRU map's preallocated elements, which stay
    // mapped while the program runs; user space rewriting the entry meanwhile can only change the
    // integers read (any value is valid: a wrong one copies or skips one call).
    let skip = unsafe { SKIPS.get(&key) }?;
    if skip.sock == sock { Some(skip.until[direction]) } else { None }
}

/// The first bytes of `direction` on (tgid, fd) were looked at: `starts` says whether they begin a
/// message of a protocol sonde parses. If not, the socket's bytes are no longer copied.
#[inline(always)]
pub fn probed(tgid: u32, fd: i32, sock: u64, direction: u8, starts: bool) {
    let Some(state) = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32)) else {
        return;
    };
    // SAFETY: as in `on_data`: the lookup's non-null, aligned pointer into preallocated elements;
    // plain integer fields, so a racing update loses a write at worst.
    unsafe {
        if (*state).sock != sock {
            return;
        }
        (*state).unprobed &= !(1u8 << (direction & 1));
        if !starts && (*state).verdict == Verdict::Copy as u8 {
            (*state).verdict = Verdict::FirstBytes as u8;
            count(KernelCount::ConnsRefusedByFirstBytes, 1);
        }
    }
}

/// `len` bytes of TLS plaintext for (tgid, fd): `Send` with the sequence number for its data
/// event (the connection is marked TLS from now on), `Skip` when user space does not want the
/// connection, `NoConnection` when it was never announced (its socket is known only through its
/// ciphertext, and none was seen).
#[inline(always)]
pub fn on_tls_data(tgid: u32, fd: i32, len: u64) -> Outcome {
    let Some(state) = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32)) else {
        return Outcome::NO_CONNECTION;
    };
    // SAFETY: `state` comes from the lookup just above: non-null, aligned, into the map's
    // preallocated elements, which stay mapped while the program runs. Plain integer fields: a
    // write racing with another thread's on another CPU loses an update (a sequence gap that user
    // space resyncs on), it cannot go outside the value.
    unsafe {
        if (*state).sock == 0 || (*state).peer_is_agent != 0 {
            return Outcome::NO_CONNECTION;
        }
        // A `FirstBytes` verdict judged the ciphertext; the plaintext is what sonde wants.
        if (*state).verdict == Verdict::Unwanted as u8 {
            count(KernelCount::BytesNotCopied, len);
            return Outcome::SKIP;
        }
        (*state).tls = 1;
        (*state).seq = (*state).seq.wrapping_add(1);
        Outcome::send((*state).seq, false, 0, (*state).role)
    }
}

#[inline(always)]
fn read_addresses(sock: u64, family: u16, event: &mut ConnEvent) {
    let base = sock as *const u8;
    // SAFETY: `sock` is the `struct sock *` the socket tracepoint gave, and it is never
    // dereferenced: every read goes through `bpf_probe_read_kernel*`, which fails (handled: the
    // field stays 0) instead of faulting. Offsets are the fixed `sock_common` ones or the BTF ones
    // the agent wrote (used only when non-zero); destinations are the 4- or 16-byte address arrays.
    unsafe {
        if let Ok(port) = bpf_probe_read_kernel(base.add(OFF_DPORT) as *const u16) {
            event.remote_port = u16::from_be(port);
        }
        if let Ok(port) = bpf_probe_read_kernel(base.add(OFF_NUM) as *const u16) {
            event.local_port = port;
        }
        if family == AF_INET {
            let _ = bpf_probe_read_kernel_buf(base.add(OFF_DADDR), &mut event.remote_addr[..4]);
            let _ = bpf_probe_read_kernel_buf(base.add(OFF_RCV_SADDR), &mut event.local_addr[..4]);
        } else if family == AF_INET6 {
            let daddr = global_u32(&OFF_V6_DADDR) as usize;
            let saddr = global_u32(&OFF_V6_RCV_SADDR) as usize;
            if daddr != 0 && saddr != 0 {
                let _ = bpf_probe_read_kernel_buf(base.add(daddr), &mut event.remote_addr);
                let _ = bpf_probe_read_kernel_buf(base.add(saddr), &mut event.local_addr);
            }
        }
    }
}
