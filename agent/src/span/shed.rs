//! Shedding spans when sonde falls behind. The ring buffer staying full means the intake thread
//! handles events more slowly than the kernel writes them; once it is full, the kernel drops
//! events, and with them requests the metrics never count. Of the intake thread's work per
//! exchange, the span — assembling it, encoding it, and the export thread's and the collector's
//! work after that — is the part that can go without losing a request from the metrics. So while
//! the ring stays more than three quarters full from one drain to the next, spans are made for a shrinking
//! share of traces, chosen by trace id as the ratio sampler chooses them: the traces kept at a
//! lower share are among those kept at a higher one, so a trace whose spans all end while shedding
//! lasts is kept or dropped whole. A single burst that one drain clears sheds nothing. Shed spans
//! are counted; every exchange is still counted in the metrics.

use std::time::{Duration, Instant};

use opentelemetry::trace::TraceId;

use crate::link::sampler::Rule;

/// Fill at which spans start to go, when the drain before began above it too: a quarter of the
/// ring is all the room left before the kernel drops events (requests and all). A reader that
/// catches up by itself — a burst, a busy moment — rarely stays this far behind (at half, the
/// bench's saturated HTTPS rounds shed 90 % of spans although nothing was dropped).
const BEHIND: f64 = 0.75;
/// Fill below which spans come back (at `GROW_EVERY`): the reader is woken at a sixteenth, and a
/// reader that keeps up starts its drains not far above that.
const CAUGHT_UP: f64 = 0.25;
/// Below this share every span is shed (halving from 1.0, the tenth step).
const MIN_SHARE: f64 = 1.0 / 1024.0;
/// The share kept grows back at most this often (doubling), so that recovery does not swing the
/// ring straight back into shedding.
const GROW_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Shedder {
    /// The share of traces whose spans are made, 0.0 to 1.0.
    share: f64,
    /// The last drain began with the ring at least `BEHIND` full.
    was_behind: bool,
    last_grown: Instant,
    /// Spans not made because of shedding.
    shed: u64,
}

impl Default for Shedder {
    fn default() -> Self {
        Shedder { share: 1.0, was_behind: false, last_grown: Instant::now(), shed: 0 }
    }
}

impl Shedder {
    /// Before a drain: `fill` is the ring's share waiting to be read (see `intake::RingFill`).
    pub fn update(&mut self, fill: f64, now: Instant) {
        let behind = fill >= BEHIND;
        let still_behind = behind && self.was_behind;
        self.was_behind = behind;
        if still_behind {
            self.share = if self.share / 2.0 < MIN_SHARE { 0.0 } else { self.share / 2.0 };
            self.last_grown = now;
        } else if fill <= CAUGHT_UP && self.share < 1.0 && now.duration_since(self.last_grown) >= GROW_EVERY {
            self.share = (self.share * 2.0).clamp(MIN_SHARE, 1.0);
            self.last_grown = now;
        }
    }

    /// Whether the span of a sampled trace `trace_id` is made; counts it if not.
    pub fn keeps(&mut self, trace_id: TraceId) -> bool {
        let keep = Rule::Ratio(self.share).keeps(trace_id);
        self.shed += u64::from(!keep);
        keep
    }

    pub fn shed(&self) -> u64 {
        self.shed
    }

    /// The share of traces whose spans are made now.
    pub fn share(&self) -> f64 {
        self.share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl Iterator<Item = TraceId> {
        (1..=4096u64).map(|i| TraceId::from(u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | (1 << 100)))
    }

    #[test]
    fn halves_while_behind_and_grows_back_slowly_once_caught_up() {
        let (mut shedder, t0) = (Shedder::default(), Instant::now());
        shedder.update(0.3, t0);
        assert_eq!(shedder.share(), 1.0, "between the marks nothing changes");
        shedder.update(0.9, t0);
        assert_eq!(shedder.share(), 1.0, "one drain may clear a burst");
        shedder.update(0.3, t0);
        shedder.update(0.9, t0);
        assert_eq!(shedder.share(), 1.0, "nor was the one before behind");
        shedder.update(0.8, t0);
        shedder.update(0.75, t0);
        assert_eq!(shedder.share(), 0.25);
        shedder.update(0.01, t0 + Duration::from_millis(500));
        assert_eq!(shedder.share(), 0.25, "not a second since the last change");
        shedder.update(0.01, t0 + GROW_EVERY);
        assert_eq!(shedder.share(), 0.5);
        shedder.update(0.3, t0 + 3 * GROW_EVERY);
        assert_eq!(shedder.share(), 0.5, "not caught up yet");
    }

    #[test]
    fn sheds_everything_at_the_bottom_and_comes_back() {
        let (mut shedder, t0) = (Shedder::default(), Instant::now());
        for _ in 0..12 {
            shedder.update(1.0, t0);
        }
        assert_eq!(shedder.share(), 0.0);
        assert!(ids().all(|id| !shedder.keeps(id)));
        assert_eq!(shedder.shed(), 4096);
        shedder.update(0.0, t0 + GROW_EVERY);
        assert_eq!(shedder.share(), MIN_SHARE);
    }

    #[test]
    fn a_trace_kept_at_a_lower_share_is_kept_at_every_higher_one() {
        let mut shedder = Shedder::default();
        let t0 = Instant::now();
        let mut kept_at = Vec::new();
        shedder.update(1.0, t0);
        for step in 0..6 {
            kept_at.push(ids().filter(|&id| shedder.keeps(id)).collect::<Vec<_>>());
            shedder.update(1.0, t0 + Duration::from_millis(step));
        }
        for pair in kept_at.windows(2) {
            let (higher, lower) = (&pair[0], &pair[1]);
            assert!(lower.iter().all(|id| higher.contains(id)));
            // About half as many at each step (4096 ids: within a few percent).
            let ratio = lower.len() as f64 / higher.len() as f64;
            assert!((0.4..0.6).contains(&ratio), "{} of {}", lower.len(), higher.len());
        }
    }
}
