//! The `traceparent` header of a server request, read in the kernel (`--context-propagation`): a
//! request that carries one belongs to the header's trace, and the requests its thread writes
//! while serving it must carry that trace too — user space, which parses the header as well, learns
//! of it too late to say so.
//!
//! A program of its own, at the exit of the read syscalls (`ctx::after_read`), not inlined into the
//! capture: the scan and the parse there made the capture programs too large for the verifier. The
//! capture files the request's buffer (`HEADER_SCANS`); by the syscall's exit, before the thread
//! can write anything, the header's trace replaces the one the serving context was given.
//!
//! Bounded: the first `SCAN_BYTES` of the read are copied once into a per-CPU buffer and searched
//! a word at a time for line starts; only a line that starts with `traceparent:` (any case) is
//! parsed. The first one wins, as in user space (W3C Trace Context: a repeated header keeps the
//! first). A header further in is not seen here; user space still finds it (see `link::rename`).

use aya_ebpf::{helpers::bpf_probe_read_user_buf, macros::map, maps::PerCpuArray};
use sonde_common::propagation::Ids;

/// Bytes of a request head searched (SDK clients write their `traceparent` among few headers; a
/// header further in is found by user space alone).
const SCAN_BYTES: usize = 512;
/// `traceparent:`, two optional spaces, and the 55-character value.
const TAIL_BYTES: usize = 12 + 2 + 55;
/// The buffer: the scanned bytes and room for a header found at their very end.
const BUFFER_BYTES: usize = SCAN_BYTES + 128;

#[repr(C)]
pub struct Head {
    bytes: [u8; BUFFER_BYTES],
    /// Where the header's line starts (found by the scan; read back from memory, so that the
    /// verifier checks the parse once, not once per position it could be found at).
    found: u64,
}

#[map]
static HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

const NAME: &[u8; 12] = b"traceparent:";
/// `traceparent:` in little-endian words: `tracepar`, then `ent:`; compared after setting bit 5 of
/// every byte (ASCII letters to lower case; ':' keeps it).
const NAME_HEAD: u64 = u64::from_le_bytes(*b"tracepar");
const NAME_TAIL: u32 = u32::from_le_bytes(*b"ent:");
const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The context of the `traceparent` header among the first bytes of the `len` bytes at `buf` (a
/// request head in the reading process's memory), when there is a valid one.
#[inline(always)]
pub fn in_head(buf: u64, len: u64) -> Option<Ids> {
    let head = HEAD.get_ptr_mut(0)?;
    // SAFETY: this CPU's element of a per-CPU array, checked by the lookup, never freed; programs
    // on other CPUs use their own; the `&mut` ends with this function.
    let head = unsafe { &mut *head };
    let n = core::cmp::min(len, SCAN_BYTES as u64) as usize;
    // Read back from the stack, so that the compiler knows nothing of n's bounds: it then keeps
    // the checks below as they are written, which the verifiers before 6.3 need to bound n where
    // they reload it, and the scan's own loop bound.
    // SAFETY: a read of a local just written.
    let n = unsafe { core::ptr::read_volatile(&n) };
    if !(TAIL_BYTES..=SCAN_BYTES).contains(&n) {
        return None;
    }
    let dst = &mut head.bytes[..n];
    // SAFETY: `buf` is the process's own buffer, which the read just filled, never dereferenced:
    // the helper copies `n` bytes of user memory or fails.
    unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) }.ok()?;
    head.found = u64::MAX;
    find_line(head, n);
    let start = head.found;
    if start > (SCAN_BYTES - 1) as u64 || start as usize + TAIL_BYTES > n {
        return None;
    }
    parse(&head.bytes[(start as usize & (SCAN_BYTES - 1))..][..TAIL_BYTES + 1])
}

/// Sets `head.found` to the start of the first line of `head.bytes[..n]` that begins with
/// `traceparent:`, if any. Only the first line start of each 8-byte word is looked at: a header
/// line shorter than 8 bytes just before the one sought hides it (a missing link, never a wrong one:
/// user space reads the header too). Few branches per word, none nested: the verifier walks each.
#[inline(always)]
fn find_line(head: &mut Head, n: usize) {
    for w in 0..SCAN_BYTES / 8 {
        let at = w * 8;
        if at + 8 + NAME.len() > n {
            return;
        }
        let word = u64::from_le_bytes([
            head.bytes[at],
            head.bytes[at + 1],
            head.bytes[at + 2],
            head.bytes[at + 3],
            head.bytes[at + 4],
            head.bytes[at + 5],
            head.bytes[at + 6],
            head.bytes[at + 7],
        ]);
        // Bit 7 of each byte of `word` that is a newline (the classic zero-byte test on
        // word ^ '\n'; its lowest set bit is exact).
        let x = word ^ NEWLINES;
        let newlines = x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS;
        if newlines == 0 {
            continue;
        }
        // The first newline's byte index, without a loop: its bit alone, moved to bit 8k, times
        // a constant whose byte 7-k is k.
        let lowest = (newlines & newlines.wrapping_neg()) >> 7;
        let k = (lowest.wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize & 7;
        let start = at + k + 1;
        if is_name(&head.bytes, start) {
            head.found = start as u64;
            return;
        }
    }
}

/// Whether `traceparent:` (any case) starts at `at`: two word compares, not twelve byte ones —
/// the verifier walks every branch of the scan, and refuses too many.
#[inline(always)]
fn is_name(bytes: &[u8; BUFFER_BYTES], at: usize) -> bool {
    let b = &bytes[at..at + NAME.len()];
    let head = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let tail = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    head | 0x2020_2020_2020_2020 == NAME_HEAD && tail | 0x2020_2020 == NAME_TAIL
}

/// `traceparent:`, up to two spaces, then `00-<32 hex>-<16 hex>-<2 hex>` (lower-case hex, as W3C
/// asks; a version other than 00 is read the same way, except ff, which is invalid). The hex digits
/// go through a table, and their validity is checked once at the end: a branch per digit would
/// give the verifier 2^50 paths to walk.
#[inline(always)]
fn parse(line: &[u8]) -> Option<Ids> {
    let mut v = NAME.len();
    if line[v] == b' ' {
        v += 1;
    }
    if line[v] == b' ' {
        v += 1;
    }
    let value = &line[v..];
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    // Bit 4 set in any digit's table entry: not a hex digit.
    let mut bad = 0u8;
    let mut byte = |at: usize| {
        let (high, low) = (HEX[value[at] as usize], HEX[value[at + 1] as usize]);
        bad |= high | low;
        (high << 4) | (low & 0x0f)
    };
    let version = byte(0);
    let flags = byte(53);
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = byte(3 + 2 * i);
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = byte(36 + 2 * i);
    }
    if bad & INVALID != 0 || version == 0xff || trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Ids { trace_id, span_id: [0; 8], parent_id, fd: 0, flags, origin: 0, header: 0, _pad: 0 })
}

/// Marks a byte that is not a lower-case hex digit in `HEX`.
const INVALID: u8 = 0x10;

/// Hex digit → its value; `INVALID` for any other byte.
static HEX: [u8; 256] = hex_table();

const fn hex_table() -> [u8; 256] {
    let mut table = [INVALID; 256];
    let mut c = 0;
    while c < 10 {
        table[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        table[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    table
}
