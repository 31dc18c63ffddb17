//! Trace context in a TCP header option (`--context-propagation tcp`): a sockops program on the
//! cgroup the agent names (`--cgroup`), attached with `BPF_F_ALLOW_MULTI` so that other programs
//! there, a second sonde's included, keep running. The same program enrols the client sockets of
//! traced processes for header propagation (`inject.rs`).
//!
//! Wire format (OBI/Beyla's, so that either agent reads the other's): kind 25, length 26, the
//! 16-byte trace id and the 8-byte span id of the CLIENT span; length 27 adds a W3C flags byte.
//! 26 bytes padded to 28 fit exactly beside the timestamps option (12 of the 40 option bytes); a
//! segment that also carries SACK blocks has no room, and the context is not sent (counted).
//!
//! - Client sockets (`ACTIVE_ESTABLISHED`) ask for the option callbacks on every segment they
//!   send; a segment gets the option only when a context is filed for the socket (`TCP_OUT`, by
//!   `ctx::before_send`) and the segment begins at the request's first byte — never a retransmit
//!   of it (the entry is gone once written), never a segment that began before the request.
//! - Server sockets (`PASSIVE_ESTABLISHED`) ask to see segments with options Linux does not know:
//!   a kind-25 option is filed with the segment's sequence number (`TCP_IN`), for `ctx` to give to
//!   the request read from there.
//!
//! The program changes no byte of any application's stream, and with no context filed it writes
//! nothing: an option is only ever added to a segment of a traced process's request.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_HDR_OPT_CB,
        BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, bpf_sock_ops,
    },
    helpers::generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use sonde_common::{
    KernelCount,
    propagation::{
        CARRY_TCP_OPTION, FLAG_SAMPLED, TCP_OPTION_KIND, TCP_OPTION_LEN, TCP_OPTION_LEN_FLAGS, WireContext,
    },
};

use crate::{
    ctx, inject,
    maps::{PROPAGATE, TCP_IN, TCP_OUT, count, global_u32},
};

/// `TCPHDR_SYN`: handshake segments never carry a context.
const TCP_FLAG_SYN: u32 = 0x02;
/// Option bytes: kind, length, trace id, span id, flags (written only in the 27-byte form).
const OPTION_BYTES: usize = 27;

#[sock_ops]
pub fn tcp_context(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if global_u32(&PROPAGATE) & CARRY_TCP_OPTION != 0 {
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
            }
            inject::established(&ctx, sock_key(ctx.ops));
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => reserve(&ctx),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => write(&ctx),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => parse(&ctx),
        _ => {}
    }
    1
}

/// The socket's kernel address: the key `ctx.rs` files contexts under (the address the socket
/// tracepoints and the fd walk report).
#[inline(always)]
fn sock_key(ops: *mut bpf_sock_ops) -> u64 {
    // SAFETY: `ops` is the program's context; the verifier checks the field load.
    unsafe { (*ops).__bindgen_anon_2.sk as u64 }
}

/// The TCP sequence number of the segment the callback is about: bytes 4..8 of its TCP header.
#[inline(always)]
fn segment_seq(ops: *mut bpf_sock_ops) -> Option<u32> {
    // SAFETY: `ops` is the program's context; `skb_data`/`skb_data_end` bound the segment's TCP
    // header, and the bytes are read only after the bounds check the verifier requires.
    unsafe {
        let data = (*ops).__bindgen_anon_3.skb_data as usize;
        let end = (*ops).__bindgen_anon_4.skb_data_end as usize;
        if data + 8 > end {
            return None;
        }
        let p = data as *const u8;
        Some(u32::from_be_bytes([*p.add(4), *p.add(5), *p.add(6), *p.add(7)]))
    }
}

#[inline(always)]
fn syn(ctx: &SockOpsContext) -> bool {
    // SAFETY: `ops` is the program's context; the verifier checks the field load.
    unsafe { (*ctx.ops).skb_tcp_flags & TCP_FLAG_SYN != 0 }
}

/// Room for the option on a segment of a socket with a context waiting.
#[inline(always)]
fn reserve(ctx: &SockOpsContext) {
    if syn(ctx) || !ctx::enabled() {
        return;
    }
    // SAFETY: only whether an entry exists is looked at.
    if unsafe { TCP_OUT.get(&sock_key(ctx.ops)) }.is_none() {
        return;
    }
    // SAFETY: `ops` is the program's context, as the helper wants.
    if unsafe { bpf_reserve_hdr_opt(ctx.ops, TCP_OPTION_LEN as u32, 0) } != 0 {
        count(KernelCount::OptionsNotWritten, 1);
        let _ = TCP_OUT.remove(&sock_key(ctx.ops));
    }
}

/// Writes the option on the segment that begins at the request's first byte.
#[inline(always)]
fn write(ctx: &SockOpsContext) {
    if syn(ctx) || !ctx::enabled() {
        return;
    }
    let key = sock_key(ctx.ops);
    // SAFETY: copied out at once from the LRU element; plain integers.
    let Some(wire) = (unsafe { TCP_OUT.get(&key) }).copied() else {
        return;
    };
    let Some(seq) = segment_seq(ctx.ops) else {
        return;
    };
    let ahead = wire.seq.wrapping_sub(seq) as i32;
    if ahead > 0 {
        // A segment of earlier bytes: the request's own is still to come.
        return;
    }
    // Written once: a retransmit of this segment must not carry it again.
    let _ = TCP_OUT.remove(&key);
    if ahead < 0 {
        // The request's first byte went out inside an earlier segment (coalesced with the bytes
        // before it): no segment begins at it.
        count(KernelCount::OptionsNotWritten, 1);
        return;
    }
    let mut option = [0u8; OPTION_BYTES];
    option[0] = TCP_OPTION_KIND;
    option[1] = TCP_OPTION_LEN;
    option[2..18].copy_from_slice(&wire.trace_id);
    option[18..26].copy_from_slice(&wire.span_id);
    // SAFETY: `ops` is the program's context; `option` is a stack array of `TCP_OPTION_LEN` or
    // more bytes, which the helper only reads.
    let stored = unsafe { bpf_store_hdr_opt(ctx.ops, option.as_ptr() as *const _, TCP_OPTION_LEN as u32, 0) };
    count(if stored == 0 { KernelCount::OptionsWritten } else { KernelCount::OptionsNotWritten }, 1);
}

/// Files a received kind-25 option with its segment's sequence number.
#[inline(always)]
fn parse(ctx: &SockOpsContext) {
    if !ctx::enabled() {
        return;
    }
    let mut option = [0u8; OPTION_BYTES + 1];
    option[0] = TCP_OPTION_KIND;
    // SAFETY: `ops` is the program's context; `option` is a writable stack array of the length
    // passed, whose first byte names the option kind to search for.
    let found = unsafe { bpf_load_hdr_opt(ctx.ops, option.as_mut_ptr() as *mut _, option.len() as u32, 0) };
    let len = option[1];
    if found < TCP_OPTION_LEN as i64 || (len != TCP_OPTION_LEN && len != TCP_OPTION_LEN_FLAGS) {
        return;
    }
    let Some(seq) = segment_seq(ctx.ops) else {
        return;
    };
    let mut wire = WireContext {
        trace_id: [0; 16],
        span_id: [0; 8],
        seq,
        flags: if len == TCP_OPTION_LEN_FLAGS { option[26] } else { FLAG_SAMPLED },
        _pad: [0; 3],
    };
    wire.trace_id.copy_from_slice(&option[2..18]);
    wire.span_id.copy_from_slice(&option[18..26]);
    if wire.trace_id == [0; 16] || wire.span_id == [0; 8] {
        return;
    }
    let key = sock_key(ctx.ops);
    // A segmentation offload copies the header, option included, to every segment of a large
    // write: the first of them (the lowest sequence number) is where the request began.
    // SAFETY: copied out at once from the LRU element; plain integers.
    if let Some(held) = (unsafe { TCP_IN.get(&key) }).copied()
        && held.span_id == wire.span_id
    {
        return;
    }
    count(KernelCount::OptionsReceived, 1);
    let _ = TCP_IN.insert(&key, &wire, 0);
}
