//! Handing freed heap back to the kernel. glibc keeps freed pages mapped, so a burst (BTF parsing
//! at load, 10,000 connections closing at once) would stay in sonde's RSS for the rest of its
//! life if nothing asked for them back.

/// Returns free heap pages to the kernel (`malloc_trim`). Walks the heap: call it after a burst
/// was freed, not per event. What it cannot return — the free top of a thread's own arena, when
/// something still live sits above it — stays mapped for the next burst to reuse.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments beyond the pad size; only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
