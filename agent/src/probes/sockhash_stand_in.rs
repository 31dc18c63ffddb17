//! The SOCKHASH of header propagation (`CLIENT_SOCKS`) only when header propagation is on.
//!
//! The kernel creates a SOCKHASH only for a holder of CAP_NET_ADMIN, and the loader creates every
//! map of the object. Without headers, sonde must run with CAP_BPF and CAP_PERFMON alone (the
//! non-privileged DaemonSet), so the map's definition is rewritten into a one-entry hash map before
//! load. Nothing uses it then: the programs that would (the header writer, enrolment in the sockops
//! program) are not loaded, or sit behind the `PROPAGATE` global, which the verifier knows is 0
//! and so never walks.

use std::borrow::Cow;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `BPF_MAP_TYPE_HASH`.
const HASH: u32 = 1;

/// `elf` with map `name`'s type (the first u32 of its `bpf_map_def` in the `maps` section) made a
/// hash map.
pub fn with_hash_map_for(elf: &[u8], name: &str) -> Result<Vec<u8>, String> {
    let file = object::File::parse(elf).map_err(|e| format!("reading the eBPF object: {e}"))?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .ok_or_else(|| format!("no symbol {name} in the eBPF object"))?;
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(|| format!("{name} is in no section"))?;
    if section.name() != Ok("maps") {
        return Err(format!("{name} is not in the maps section"));
    }
    let (start, size) = section.file_range().ok_or_else(|| "the maps section has no bytes".to_owned())?;
    let offset = symbol.address().checked_sub(section.address()).filter(|o| o + 4 <= size);
    let offset = offset.ok_or_else(|| format!("{name} lies outside the maps section"))?;
    let at = usize::try_from(start + offset).map_err(|e| e.to_string())?;
    let mut patched = Cow::Borrowed(elf).into_owned();
    patched[at..at + 4].copy_from_slice(&HASH.to_le_bytes());
    Ok(patched)
}
