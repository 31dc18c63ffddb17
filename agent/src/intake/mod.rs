//! Intake: the ring buffer the kernel programs fill, drained by one thread that decodes each record
//! and hands it on. Wake-ups are batched in the kernel, so the reader also polls on a short timer.

mod decode;
mod fill;

pub use decode::{DecodeError, Event, decode, direction as direction_of};
pub use fill::RingFill;

use std::{
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

/// Longest a finished event waits in the ring buffer when the kernel did not wake us (it does once
/// a sixteenth of the ring is full). Events carry kernel timestamps, so waiting changes no span,
/// and spans wait up to a second for their export batch anyway. Fewer, larger drains run on warm
/// caches: 20 → 200 ms took sonde's CPU per span at 2k req/s from 8.1–10.1 to 5.6–6.5 µs, at
/// 10k/s from 6.4–6.6 to 5.5–5.8 µs (interleaved runs, docs/performance.md).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Records handled between two looks at the clock and at `stop`: under sustained overload the ring
/// never empties, and timeouts, counters and shutdown must still get their turn.
const DRAIN_BATCH: usize = 4096;
/// At shutdown, what is in the ring is drained for at most this long (traffic goes on meanwhile).
const STOP_DRAIN: Duration = Duration::from_secs(1);

/// What the reader calls: `backlog` before each run of records with the share of the ring they
/// fill, `event` per record, `drained` after each run (up to `DRAIN_BATCH`: a natural point to
/// hand on what they produced), `tick` about every `tick_every` (timeouts, stats), and `stopped`
/// once, after the last record.
pub trait Sink {
    fn backlog(&mut self, fill: f64);
    fn event(&mut self, event: Event<'_>);
    fn decode_error(&mut self, error: DecodeError);
    fn drained(&mut self);
    fn tick(&mut self);
    fn stopped(&mut self);
}

/// Drains `ring` (of `capacity` bytes) into `sink` until `stop` is set; then drains what is left
/// (bounded) and returns.
pub fn run(
    mut ring: RingBuf<MapData>,
    capacity: u64,
    sink: &mut impl Sink,
    stop: &AtomicBool,
    tick_every: Duration,
) {
    let fd = ring.as_raw_fd();
    let fill = RingFill::new(fd, capacity)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot read the ring buffer's fill: no span shedding"))
        .ok();
    let mut last_tick = Instant::now();
    let mut stop_deadline = None;
    loop {
        if stop_deadline.is_none() && stop.load(Ordering::Relaxed) {
            stop_deadline = Some(Instant::now() + STOP_DRAIN);
        }
        if let Some(fill) = fill.as_ref().map(RingFill::fraction) {
            sink.backlog(fill);
        }
        let mut drained = 0;
        while drained < DRAIN_BATCH
            && let Some(item) = ring.next()
        {
            match decode(&item) {
                Ok(event) => sink.event(event),
                Err(e) => sink.decode_error(e),
            }
            drained += 1;
        }
        if drained > 0 {
            sink.drained();
        }
        if last_tick.elapsed() >= tick_every {
            sink.tick();
            last_tick = Instant::now();
        }
        if stop_deadline.is_some_and(|deadline| drained < DRAIN_BATCH || Instant::now() >= deadline) {
            sink.stopped();
            return;
        }
        if drained == DRAIN_BATCH {
            // More is waiting: no sleep.
            continue;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call. EINTR and timeouts just loop.
        unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as libc::c_int) };
    }
}
