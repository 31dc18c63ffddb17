//! Kernel timestamps are CLOCK_MONOTONIC (`bpf_ktime_get_ns`); spans need Unix time. The offset
//! between the two clocks is sampled now and then, so NTP adjustments are followed.

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC) as u64
}

#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::sample()
    }
}

impl WallClock {
    pub fn sample() -> Self {
        // Realtime read between two monotonic reads: the midpoint pairs them within a few ns.
        let m1 = now(libc::CLOCK_MONOTONIC);
        let r = now(libc::CLOCK_REALTIME);
        let m2 = now(libc::CLOCK_MONOTONIC);
        Self { offset_ns: r - (m1 + m2) / 2 }
    }

    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_now_to_now() {
        let clock = WallClock::sample();
        let unix = clock.unix_ns(monotonic_ns());
        let sys =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(unix.abs_diff(sys) < 50_000_000, "{unix} vs {sys}");
    }
}
