//! Intake: the ring buffer the kernel programs fill, drained by one thread that decodes each record
//! and hands it on. Wake-ups are batched in the kernel, so the reader also polls on a short timer.

mod decode;

pub use decode::{DecodeError, Event, decode, direction as direction_of};

use std::{
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

/// Longest a finished event waits in the ring buffer when the kernel did not wake us.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What the reader calls: `event` per record, `tick` about every `tick_every` (timeouts, stats).
pub trait Sink {
    fn event(&mut self, event: Event<'_>);
    fn decode_error(&mut self, error: DecodeError);
    fn tick(&mut self);
}

/// Drains `ring` into `sink` until `stop` is set; then drains once more and returns.
pub fn run(mut ring: RingBuf<MapData>, sink: &mut impl Sink, stop: &AtomicBool, tick_every: Duration) {
    let fd = ring.as_raw_fd();
    let mut last_tick = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(event) => sink.event(event),
                Err(e) => sink.decode_error(e),
            }
        }
        if last_tick.elapsed() >= tick_every {
            sink.tick();
            last_tick = Instant::now();
        }
        if stopping {
            return;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call. EINTR and timeouts just loop.
        unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as libc::c_int) };
    }
}
