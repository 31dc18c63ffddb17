//! How full the ring buffer is: the bytes the kernel has written and the reader not yet consumed.
//! The kernel shares both positions with user space in the ring's first two pages (the consumer's,
//! then the producer's); a second, read-only mapping of them reads the fill without touching the
//! reader's own. aya does not expose these positions.

use std::{
    os::fd::RawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

pub struct RingFill {
    pages: NonNull<libc::c_void>,
    page_size: usize,
    capacity: u64,
}

// SAFETY: the mapping is read-only and read through atomics; it lives as long as the value.
unsafe impl Send for RingFill {}

impl RingFill {
    /// The positions of the ring buffer `fd` of `capacity` bytes.
    pub fn new(fd: RawFd, capacity: u64) -> std::io::Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh shared read-only mapping of the map's first two pages, which the kernel
        // allows for any ring buffer fd (only the consumer page may be mapped writable).
        let at = unsafe {
            libc::mmap(std::ptr::null_mut(), 2 * page_size, libc::PROT_READ, libc::MAP_SHARED, fd, 0)
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let pages = NonNull::new(at).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(RingFill { pages, page_size, capacity: capacity.max(1) })
    }

    /// The share of the ring written and not yet read, 0.0 to 1.0.
    pub fn fraction(&self) -> f64 {
        let position = |offset: usize| {
            // SAFETY: both positions are 8-byte aligned u64s at the start of their page, inside
            // the mapping; the kernel and the reader update them atomically.
            unsafe { (*self.pages.as_ptr().byte_add(offset).cast::<AtomicU64>()).load(Ordering::Acquire) }
        };
        let consumer = position(0);
        let producer = position(self.page_size);
        (producer.saturating_sub(consumer) as f64 / self.capacity as f64).min(1.0)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.pages.as_ptr(), 2 * self.page_size) };
    }
}
