//! The intake thread's scheduling policy as the ring fills. sonde's threads run in `SCHED_BATCH`
//! (see `run::yield_to_traced_processes`): woken, they wait for the running task's slice to end
//! instead of preempting it, which keeps sonde out of the traced services' latency. On a saturated
//! host that wait is long — measured on the bench's node-wide saturation, the intake thread spent
//! ~30 ms between a wake-up and running, slept through more than half of each second, and the
//! ring overflowed meanwhile, taking requests out of the metrics. So while the ring is more than a
//! quarter full the intake thread is an ordinary task (`SCHED_OTHER`), whose wake-ups preempt like
//! anyone's; once it has kept the ring under an eighth for a second, it yields again.

use std::time::{Duration, Instant};

/// Fill above which the reader is falling behind: the kernel wakes it at a sixteenth, so in steady
/// state a drain starts well below this.
const BEHIND: f64 = 0.25;
/// Fill below which the reader has caught up: woken at a sixteenth, it starts a little above that.
const CAUGHT_UP: f64 = 1.0 / 8.0;
/// How long the reader stays caught up before it yields again.
const YIELD_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct CatchUp {
    /// Since when the reader has been an ordinary task (None: yielding, in `SCHED_BATCH`).
    hurrying: Option<Instant>,
    /// When the fill last was above `CAUGHT_UP` while hurrying.
    last_behind: Option<Instant>,
}

impl CatchUp {
    /// Before a drain, with `fill` of the ring unread.
    pub fn update(&mut self, fill: f64, now: Instant) {
        match self.hurrying {
            None if fill >= BEHIND && set_policy(libc::SCHED_OTHER) => {
                tracing::debug!(fill, "reading events at normal priority until the ring buffer empties");
                self.hurrying = Some(now);
                self.last_behind = Some(now);
            }
            Some(_) if fill > CAUGHT_UP => self.last_behind = Some(now),
            Some(since) if self.last_behind.is_some_and(|t| now.duration_since(t) >= YIELD_AFTER) => {
                set_policy(libc::SCHED_BATCH);
                tracing::debug!(after = ?now.duration_since(since), "caught up: yielding to the traced processes again");
                self.hurrying = None;
            }
            _ => {}
        }
    }
}

/// Sets the calling thread's policy; false (logged) when the kernel refuses.
fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` lives for the call.
    let ok = unsafe { libc::sched_setscheduler(0, policy, &param) } == 0;
    if !ok {
        tracing::debug!(policy, error = %std::io::Error::last_os_error(), "sched_setscheduler failed");
    }
    ok
}
