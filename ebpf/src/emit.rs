//! Writing events to the ring buffer, with batched wake-ups and counted drops.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use sonde_common::DropReason;

use crate::maps::{EVENTS, WAKEUP_BYTES, count_drop, global_u64};

/// Wake the reader only when the fill level crosses a multiple of the threshold; it also polls on
/// a short timer. A wake-up costs the traced thread ~1.4 µs here: per-event wake-ups, or one per
/// event while the reader lags behind the threshold, are what this avoids. Every multiple, not
/// only the first: a wake-up can be lost (measured on 6.18 with a 4 MiB ring: after the first
/// drain no wake-up at the first threshold reached the reader, which then read only when its
/// 200 ms poll timed out, a quarter of the ring at a time), and the next multiple tries again.
#[inline(always)]
pub fn wakeup_flags(size: u64) -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = global_u64(&WAKEUP_BYTES);
    if threshold != 0 && pending / threshold != (pending + size) / threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copy a fixed-size event into the ring buffer; false (and counted) when it is full.
#[inline(always)]
pub fn output<T>(event: &T) -> bool {
    let size = core::mem::size_of::<T>() as u64;
    if EVENTS.output::<T>(event, wakeup_flags(size)).is_err() {
        count_drop(DropReason::RingFull);
        return false;
    }
    true
}

/// Copy a rare event into the ring buffer and wake the reader now.
#[inline(always)]
pub fn output_now<T>(event: &T) -> bool {
    if EVENTS.output::<T>(event, BPF_RB_FORCE_WAKEUP as u64).is_err() {
        count_drop(DropReason::RingFull);
        return false;
    }
    true
}

/// Copy `bytes` (a prefix of the scratch buffer) into the ring buffer, waking the reader now with
/// `wake`; false (and counted) when it is full.
#[inline(always)]
pub fn output_bytes(bytes: &[u8], wake: bool) -> bool {
    let flags = if wake { BPF_RB_FORCE_WAKEUP as u64 } else { wakeup_flags(bytes.len() as u64) };
    if EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count_drop(DropReason::RingFull);
        return false;
    }
    true
}
