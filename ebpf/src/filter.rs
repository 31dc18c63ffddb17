//! Which processes are traced: never the agent itself; when a pid filter is set, only those tgids.

use crate::maps::{AGENT_TGID, FILTER_PIDS, SELECTED_PIDS, global_u32};

#[inline(always)]
pub fn traced(tgid: u32) -> bool {
    if tgid == global_u32(&AGENT_TGID) {
        return false;
    }
    if global_u32(&FILTER_PIDS) != 0 {
        return SELECTED_PIDS.get(tgid / 64).is_some_and(|word| word & (1u64 << (tgid % 64)) != 0);
    }
    true
}
