//! The null probe, for `cargo xtask bench`: programs on exactly the hooks sonde uses that only count
//! their hits. The difference between a run with these and a run with sonde's real programs is
//! sonde's own kernel-side cost; the difference to an untraced run is the floor of hooking at all.

use aya_ebpf::{
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};

#[map]
pub static NULL_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn hit() {
    if let Some(c) = NULL_HITS.get_ptr_mut(0) {
        // SAFETY: `c` is this CPU's copy of the one per-CPU counter, non-null and aligned from the
        // lookup just above; array values are never freed, and no other CPU writes this copy.
        unsafe { *c += 1 };
    }
}

/// Attached to every tracepoint of the hook set in use.
#[tracepoint]
pub fn null_tracepoint(_ctx: TracePointContext) -> u32 {
    hit();
    0
}

/// Attached where sonde attaches its TLS library entry and return probes.
#[uprobe]
pub fn null_uprobe(_ctx: ProbeContext) -> u32 {
    hit();
    0
}

#[uretprobe]
pub fn null_uretprobe(_ctx: RetProbeContext) -> u32 {
    hit();
    0
}
