//! Handing freed heap back to the kernel. glibc keeps freed pages mapped, so a burst (BTF parsing
//! at load, 10,000 connections closing at once) would stay in sonde's RSS for the rest of its
//! life if nothing asked for them back.

/// One malloc arena for every thread. glibc gives each thread that allocates its own arena, and
/// `malloc_trim` cannot return the free top of those: after a burst of spans, encoded on the
/// intake thread and freed on the export thread, ~10 MiB stayed resident for good (the churn
/// test). In the main arena the top is returned too. The threads that allocate (intake and
/// export) rarely do at the same moment, so sharing the arena's lock costs little. Call first
/// thing, before any thread starts.
pub fn single_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: sets a malloc tuning parameter; valid at any time, meant for before threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns free heap pages to the kernel (`malloc_trim`). Walks the heap: call it after a burst
/// was freed, not per event. Freed memory that shares a page with something still live stays
/// mapped for the next burst to reuse.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments beyond the pad size; only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
