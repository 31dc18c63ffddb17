//! Trace context in a `traceparent` header (`--context-propagation headers`): the line goes into
//! the request head a traced process sends, right after its request line, by an `sk_msg` program
//! on the client sockets of traced processes.
//!
//! - Enrolment: a traced task's connect files its socket (`connecting`, at the SYN_SENT
//!   transition, which runs in that task); once established, the sockops program puts it in
//!   `CLIENT_SOCKS` (`established`). Server sockets and sockets of untraced processes are never
//!   enrolled: on kernels where membership alone changes a socket's behaviour (see the agent's
//!   SOCKHASH self-test), the fewer the better.
//! - The line: `ctx::before_send` chose the request's ids at the send's syscall entry and filed the
//!   line in `HEADER_OUT`; the `sk_msg` program, inside the same send, takes it.
//! - The rules: a line is written only when the send begins with a request line and holds the
//!   whole head (within `HEAD_WINDOW` bytes), and the head has no `traceparent` yet. Otherwise the
//!   send is left as it is, and why is counted. Bodies, pipelined requests after the first and
//!   responses are never touched; the application's send returns the bytes it wrote.
//! - Failure: if room was made but could not be filled, it is taken out again; only if that too
//!   fails is the send refused (the application sees an error rather than a corrupted request).

use aya_ebpf::{
    bindings::{
        BPF_ANY,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::generated::bpf_msg_pull_data,
    macros::sk_msg,
    programs::{SkMsgContext, SockOpsContext},
};
use sonde_common::{
    KernelCount,
    first_bytes::{PROBE_BYTES, starts_request},
    propagation::{
        CARRY_HEADER, HEAD_WINDOW, HeaderIds, HeaderOutcome, TRACEPARENT_LINE_LEN, hex_digit,
        traceparent_line,
    },
};

use crate::{
    filter,
    maps::{CLIENT_SOCKS, HEADER_AT, HEADER_OUT, HeadOffsets, PROPAGATE, TO_ENROL, count, global_u32},
};

/// The line start before a `traceparent:` header, as the scan's two windows hold it: the newest 8
/// bytes (`"eparent:"`) and the 5 before them (`"\ntrac"`), newest lowest in both. Letters are
/// compared with bit 5 set on both sides (`CASE`), which is exactly a case-insensitive comparison
/// for letters, with no branch.
const NAME_NEWEST: u64 = u64::from_be_bytes(*b"eparent:");
const NAME_NEWEST_CASE: u64 = u64::from_be_bytes(*b"\x20\x20\x20\x20\x20\x20\x20\0");
const NAME_OLDER: u64 = u64::from_be_bytes([0, 0, 0, b'\n', b't', b'r', b'a', b'c']);
const NAME_OLDER_CASE: u64 = u64::from_be_bytes(*b"\0\0\0\0\x20\x20\x20\x20");
const NAME_OLDER_MASK: u64 = 0xff_ffff_ffff;

/// Whether header propagation is on.
#[inline(always)]
pub fn carries_header() -> bool {
    global_u32(&PROPAGATE) & CARRY_HEADER != 0
}

/// Task `tgid` is connecting TCP socket `sock` (SYN_SENT, in the connecting task).
#[inline(always)]
pub fn connecting(tgid: u32, sock: u64) {
    if carries_header() && filter::traced(tgid) {
        let _ = TO_ENROL.insert(&sock, &1, 0);
    }
}

/// Client socket `sock` is established (sockops, often in softirq): enrolled if a traced task
/// connected it.
#[inline(always)]
pub fn established(ctx: &SockOpsContext, sock: u64) {
    if !carries_header() {
        return;
    }
    // SAFETY: only whether an entry exists is looked at.
    if unsafe { TO_ENROL.get(&sock) }.is_none() {
        return;
    }
    let _ = TO_ENROL.remove(&sock);
    let mut key = sock;
    // SAFETY: `ctx.ops` is the program's context, which the helper takes as it is.
    let enrolled = CLIENT_SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY as u64).is_ok();
    count(if enrolled { KernelCount::SocketsEnrolled } else { KernelCount::SocketsNotEnrolled }, 1);
}

#[sk_msg]
pub fn inject_traceparent(ctx: SkMsgContext) -> u32 {
    match inject(&ctx) {
        Ok(()) => SK_PASS,
        Err(()) => SK_DROP,
    }
}

/// Writes the header filed for this socket, if any, into the send when the rules allow, and says
/// what it did in the filed entry. `Err` only when the send can no longer go out as the
/// application wrote it.
#[inline(always)]
fn inject(ctx: &SkMsgContext) -> Result<(), ()> {
    // SAFETY: the program's context; the verifier checks the field load. The address is a key.
    let sock = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    let Some(entry) = HEADER_OUT.get_ptr_mut(&sock) else {
        return Ok(());
    };
    // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated elements,
    // which stay mapped while the program runs; only this send's syscall uses the entry now.
    let ids = unsafe { *entry };
    if ids.outcome != HeaderOutcome::None as u8 {
        // A later send of the same syscall (a large write goes in pieces): the head was the first.
        return Ok(());
    }
    let outcome = decide(ctx, &ids)?;
    // SAFETY: as above.
    unsafe { (*entry).outcome = outcome as u8 };
    Ok(())
}

/// Writes the header into the send, or rewrites a forwarded one, when the rules allow.
#[inline(always)]
fn decide(ctx: &SkMsgContext, ids: &HeaderIds) -> Result<HeaderOutcome, ()> {
    let window = core::cmp::min(ctx.size(), HEAD_WINDOW);
    if ctx.data_end() - ctx.data() < window as usize
        // SAFETY: the program's context; the helper makes the message's first `window` bytes one
        // linear run, or fails and leaves the message as it was.
        && unsafe { bpf_msg_pull_data(ctx.msg, 0, window, 0) } != 0
    {
        count(KernelCount::HeadersFailed, 1);
        return Ok(HeaderOutcome::Left);
    }
    let Some(at) = HEADER_AT.get_ptr_mut(0) else {
        return Ok(HeaderOutcome::Left);
    };
    let Some(head) = scan(ctx, at) else {
        // Not a request head: nothing to count (a context was filed for a request, so this is a
        // send the kernel saw differently; it is left alone).
        return Ok(HeaderOutcome::Left);
    };
    if head.ended == 0 {
        count(KernelCount::HeadersNotWholeHead, 1);
        return Ok(HeaderOutcome::Left);
    }
    // SAFETY: this CPU's element of a per-CPU array, written by the scan just now.
    let (name_end, names) = unsafe { ((*at).name_end, (*at).names) };
    if names == 0 {
        let line = traceparent_line(&ids.trace_id, &ids.span_id, ids.flags);
        // SAFETY: this CPU's element of a per-CPU array, written by the scan just now.
        let request_line_end = unsafe { (*at).request_line_end };
        if request_line_end == 0 || request_line_end > HEAD_WINDOW {
            return Ok(HeaderOutcome::Left);
        }
        return write_line(ctx, request_line_end, &line);
    }
    if names == 1 && ids.forwarded_parent != [0; 8] && rewrite_forwarded(ctx, name_end, ids) {
        count(KernelCount::HeadersForwarded, 1);
        return Ok(HeaderOutcome::Forwarded);
    }
    count(KernelCount::HeadersAlreadyPresent, 1);
    Ok(HeaderOutcome::Left)
}

/// A proxy forwards the header its own request came with: the one `traceparent` line of the head,
/// whose name ends at offset `name_end`, is the writing thread's server request's, exactly (trace
/// id and parent id). Then its parent id is rewritten in place to this request's own span id, so
/// that the next hop is the child of the proxy's CLIENT span, not of the proxy's caller. Same
/// length: no byte moves. Whether it was rewritten.
#[inline(always)]
fn rewrite_forwarded(ctx: &SkMsgContext, name_end: u32, ids: &HeaderIds) -> bool {
    if name_end >= HEAD_WINDOW {
        return false;
    }
    let data_end = ctx.data_end();
    let mut value = ctx.data() + name_end as usize + 1;
    if value + 1 > data_end {
        return false;
    }
    // SAFETY: the bounds check just above covers this byte of the message.
    if unsafe { *(value as *const u8) } == b' ' {
        value += 1;
    }
    if value + VALUE_LEN > data_end {
        return false;
    }
    let v = value as *mut u8;
    // SAFETY (every access below): the bounds check above covers the `VALUE_LEN` bytes from
    // `value`, which sk_msg programs may read and write.
    let at = |i: usize| unsafe { *v.add(i) };
    if at(0) != b'0' || at(1) != b'0' || at(2) != b'-' || at(35) != b'-' || at(52) != b'-' {
        return false;
    }
    for i in 0..16 {
        let b = ids.trace_id[i];
        if at(3 + 2 * i) != hex_digit(b >> 4) || at(4 + 2 * i) != hex_digit(b & 0xf) {
            return false;
        }
    }
    for i in 0..8 {
        let b = ids.forwarded_parent[i];
        if at(36 + 2 * i) != hex_digit(b >> 4) || at(37 + 2 * i) != hex_digit(b & 0xf) {
            return false;
        }
    }
    for i in 0..8 {
        let b = ids.span_id[i];
        // SAFETY: as above.
        unsafe {
            *v.add(36 + 2 * i) = hex_digit(b >> 4);
            *v.add(37 + 2 * i) = hex_digit(b & 0xf);
        }
    }
    true
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
const VALUE_LEN: usize = 55;

/// `x`, as a number the compiler knows nothing about (read back from the stack).
#[inline(always)]
fn opaque(x: u64) -> u64 {
    // SAFETY: a read of a local just written.
    unsafe { core::ptr::read_volatile(&x) }
}
/// What the scan of a request head found. Flags only: a position kept here would be a number the
/// verifier knows exactly at every loop exit, and it would check the rest of the program once for
/// each; the positions go to `HEADER_AT` ([`HeadOffsets`]) instead.
struct Head {
    /// 1: the request line ends within the window.
    request_line: u32,
    /// 1: the blank line that ends the head is within the window.
    ended: u32,
}

/// Looks through the first `HEAD_WINDOW` bytes of the send (made linear before). None when the send
/// does not begin with a request line.
///
/// Written for the verifier of kernels without `bpf_loop`, which walks every iteration and keeps a
/// state apart for every value it knows exactly and has seen decide a branch: the loops keep no
/// such value but their index. The first finds the end of the request line and nothing else; the
/// second looks at the whole window again, through two rolling windows of the last bytes, which
/// the verifier never knows.
#[inline(always)]
fn scan(ctx: &SkMsgContext, at_slot: *mut HeadOffsets) -> Option<Head> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + PROBE_BYTES > data_end {
        return None;
    }
    let mut first = [0u8; PROBE_BYTES];
    // SAFETY: the bounds check above covers these `PROBE_BYTES` bytes of the message.
    unsafe { core::ptr::copy_nonoverlapping(data as *const u8, first.as_mut_ptr(), PROBE_BYTES) };
    if !starts_request(&first, PROBE_BYTES) {
        return None;
    }
    let mut head = Head { request_line: 0, ended: 0 };
    let mut names: u32 = 0;
    let mut name_end: u32 = 0;
    for i in 0..HEAD_WINDOW {
        let at = data + i as usize;
        if at + 1 > data_end {
            return Some(head);
        }
        // SAFETY: the bounds check just above covers this byte of the message.
        if unsafe { *(at as *const u8) } == b'\n' {
            head.request_line = 1;
            // SAFETY: this CPU's element of a per-CPU array (`HEADER_AT`), checked by its lookup.
            unsafe { (*at_slot).request_line_end = i + 1 };
            break;
        }
    }
    if head.request_line == 0 {
        return Some(head);
    }
    // The newest 8 bytes seen, newest lowest; and the 8 before them.
    let mut newest: u64 = 0;
    let mut older: u64 = 0;
    for i in 0..HEAD_WINDOW {
        let at = data + i as usize;
        if at + 1 > data_end {
            break;
        }
        // SAFETY: the bounds check just above covers this byte of the message.
        let c = unsafe { *(at as *const u8) };
        older = (older << 8) | (newest >> 56);
        newest = (newest << 8) | c as u64;
        // One branch each, on values the verifier cannot know (it keeps a pending state per branch
        // and iteration, and a state apart for each bit pattern it learns from a branch): a blank
        // line, `\r\n` or a bare `\n`, ends the head...
        if ((newest & 0xffff_ffff) ^ 0x0d0a_0d0a) * ((newest & 0xffff) ^ 0x0a0a) == 0 {
            head.ended = 1;
            break;
        }
        // ...and, with no branch at all, whether a line begins with `traceparent:` (a branch
        // here, with the write it guards, makes the verifier walk the rest of the loop again for
        // every position a match could be at).
        let name = ((newest | NAME_NEWEST_CASE) ^ NAME_NEWEST)
            | (((older & NAME_OLDER_MASK) | NAME_OLDER_CASE) ^ NAME_OLDER);
        // All ones where the line is not a `traceparent` one, 0 where it is: `x | -x` has its top
        // bit set for any x but 0, and the arithmetic shift spreads it. Read back from the stack,
        // so that the compiler, not knowing it is 0 or all ones, does not make a branch of it.
        let spread = name | name.wrapping_neg();
        let keep = opaque(((spread as i64) >> 63) as u64);
        names = names.wrapping_add(keep.wrapping_add(1) as u32);
        name_end = ((name_end as u64 & keep) | (i as u64 & !keep)) as u32;
    }
    // SAFETY: this CPU's element of a per-CPU array (`HEADER_AT`), checked by its lookup.
    unsafe {
        (*at_slot).names = names;
        (*at_slot).name_end = name_end;
    }
    Some(head)
}

/// Makes room after the request line (which ends at `at`) and writes `line` there.
#[inline(always)]
fn write_line(ctx: &SkMsgContext, at: u32, line: &[u8; 72]) -> Result<HeaderOutcome, ()> {
    const LEN: u32 = TRACEPARENT_LINE_LEN as u32;
    if ctx.push_data(at, LEN, 0).is_err() {
        count(KernelCount::HeadersFailed, 1);
        return Ok(HeaderOutcome::Left);
    }
    // The whole head, the new room in it, made one linear run again: left in pieces, the room's
    // own page is sent after the request line as a segment apart, and the receiver may read the
    // request line alone — a head in two reads, whose header neither its kernel nor its sonde then
    // ties to the request's first bytes.
    let head = core::cmp::min(ctx.size(), HEAD_WINDOW + LEN);
    // SAFETY: the program's context; the helper makes the message's first `head` bytes one linear
    // run starting at `data`, or fails.
    let pulled = unsafe { bpf_msg_pull_data(ctx.msg, 0, head, 0) } == 0;
    let data = ctx.data();
    // `at` is at most HEAD_WINDOW (the caller checked); the mask says so to the verifier.
    let at = (at & (2 * HEAD_WINDOW - 1)) as usize;
    let room = data + at;
    if !pulled || room + TRACEPARENT_LINE_LEN > ctx.data_end() {
        count(KernelCount::HeadersFailed, 1);
        // The room holds no header: take it out, or the request must not leave.
        return ctx.pop_data(at as u32, LEN, 0).map(|()| HeaderOutcome::Left).map_err(|_| ());
    }
    // SAFETY: the bounds check above covers these bytes of the message, which sk_msg programs may
    // write.
    unsafe { core::ptr::copy_nonoverlapping(line.as_ptr(), room as *mut u8, TRACEPARENT_LINE_LEN) };
    count(KernelCount::HeadersInjected, 1);
    Ok(HeaderOutcome::Written)
}
