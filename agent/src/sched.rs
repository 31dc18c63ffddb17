//! How sonde's threads share the CPU with the processes they trace.
//!
//! sonde's work comes in bursts: a drain of the ring buffer, an export batch, each a millisecond or
//! so of CPU. An ordinary thread (`SCHED_OTHER`) or a `SCHED_BATCH` one that is running when the
//! traced server wakes up keeps its CPU until its slice ends, and the request waits behind it:
//! measured at 10k requests/s keep-alive, sonde's bursts took nginx's p99 from 0.40–0.47 ms to
//! 0.43–0.97 ms in `SCHED_BATCH`, and to 0.38–0.60 ms in `SCHED_IDLE`, whose threads any waking
//! task preempts at once (docs/performance.md, "Tail latency").
//!
//! So while sonde keeps up, its busy threads run *calm*: the export worker `SCHED_IDLE` where the
//! process may leave that policy again, else `SCHED_BATCH`; the intake thread `SCHED_BATCH`, as it
//! must answer the kernel within milliseconds when a large body starts (`join_current_as_reader`).
//! The main thread stays in `SCHED_BATCH` too: it hooks the TLS library of a process that just
//! started, and an idle-class thread on a busy host would do that after the first requests.
//! Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or an `RLIMIT_NICE` of 20, which the DaemonSet does not
//! grant; `SCHED_BATCH` ↔ `SCHED_OTHER` needs nothing. When the ring buffer or the export queue passes a
//! quarter full they *hurry*: ordinary tasks, whose wake-ups preempt like anyone's — on a saturated
//! host a calm reader waits tens of milliseconds for a CPU while the ring overflows. That is
//! decided by a watchdog, an ordinary thread that only looks at the two fills every 20 ms: a calm
//! reader cannot be relied on to notice in time that it is behind. Once both have
//! stayed under an eighth for a while they calm down again; the while doubles each time a hurry
//! follows soon after the last one, so that a host saturated for minutes is not left to fill the
//! ring every few seconds.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Backlog (of the ring buffer or the export queue) above which sonde is falling behind. The kernel
/// wakes the reader at each sixteenth, so in steady state a drain starts well below this.
const BEHIND: f64 = 0.25;
/// Backlog below which sonde has caught up.
const CAUGHT_UP: f64 = 1.0 / 8.0;
/// How long sonde stays caught up before it calms down, at first…
const CALM_AFTER: Duration = Duration::from_secs(1);
/// …and at most, when hurries keep coming back.
const CALM_AFTER_MAX: Duration = Duration::from_secs(64);
/// A hurry that starts within this long of calming down doubles the wait before the next calm.
const RELAPSE: Duration = Duration::from_secs(10);

/// The policy sonde's busy threads run in while sonde keeps up, and the threads that follow the
/// watchdog's decisions. Shared by the watchdog and the threads that join.
#[derive(Debug)]
pub struct Sched {
    calm: libc::c_int,
    /// The threads that hurry and calm down together (the intake thread and the export worker):
    /// thread id, and the policy each runs while calm.
    workers: Mutex<Vec<(libc::pid_t, libc::c_int)>>,
}

impl Sched {
    /// `SCHED_IDLE` when a thread of this process can leave it again (tried on a throw-away
    /// thread), else `SCHED_BATCH`.
    pub fn detect() -> Arc<Sched> {
        let idle_is_reversible = std::thread::Builder::new()
            .name("sonde-sched-probe".into())
            .spawn(|| set(0, libc::SCHED_IDLE) && set(0, libc::SCHED_OTHER))
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false);
        let calm = if idle_is_reversible { libc::SCHED_IDLE } else { libc::SCHED_BATCH };
        tracing::debug!(policy = name(calm), "the export thread runs in this policy while sonde keeps up");
        Arc::new(Sched { calm, workers: Mutex::new(Vec::new()) })
    }

    /// The calling thread hurries and calms down with the others from now on; it starts calm.
    pub fn join_current(&self) {
        self.join_current_calm(self.calm);
    }

    /// As `join_current`, for the thread that reads the ring buffer: calm for it is `SCHED_BATCH`
    /// even where the others idle. When a large body starts, the kernel wakes the reader at once
    /// so that it reads the head and says where the body ends before much of it is copied; an
    /// idle-class reader on CPUs busy moving that body answered too late (tests/copy_cost.rs: 87 %
    /// of a 100 MiB body skipped instead of ≥ 90 %, in one run of three).
    pub fn join_current_as_reader(&self) {
        self.join_current_calm(libc::SCHED_BATCH);
    }

    fn join_current_calm(&self, calm: libc::c_int) {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        set(tid, calm);
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).push((tid, calm));
    }

    /// The calling thread is ending: it no longer follows.
    pub fn leave_current(&self) {
        // SAFETY: as in `join_current`.
        let tid = unsafe { libc::gettid() };
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).retain(|&(t, _)| t != tid);
    }

    /// Sets every worker to `policy`, or to its own calm policy with `None`; false if the kernel
    /// refused any.
    fn set_all(&self, policy: Option<libc::c_int>) -> bool {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        // Every one is set, even after a refusal.
        workers.iter().map(|&(tid, calm)| set(tid, policy.unwrap_or(calm))).filter(|ok| !ok).count() == 0
    }

    /// Every worker and the calling thread become ordinary tasks, for good: at shutdown, when what
    /// is left must be flushed in time.
    pub fn hurry_for_good(&self) {
        set(0, libc::SCHED_OTHER);
        self.set_all(Some(libc::SCHED_OTHER));
    }
}

/// How often the watchdog looks at the backlog. At saturation the bench fills a quarter of the
/// default 4 MiB ring in ~30 ms and the rest in ~90 ms; a calm reader may not run for longer
/// than that, so the decision to hurry cannot be its own.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// Starts the watchdog: an ordinary thread that wakes every `WATCH_EVERY`, reads `backlog` (the
/// larger of the ring buffer's and the export queue's fill, 0 to 1) and makes the workers hurry or
/// calm down, until `stop` is set. It does nothing else: a few microseconds per wake-up.
pub fn watch(
    sched: Arc<Sched>,
    backlog: impl Fn() -> f64 + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("sonde-sched".into()).spawn(move || {
        set(0, libc::SCHED_OTHER);
        let mut catch_up = CatchUp::new(sched);
        while !stop.load(Ordering::Relaxed) {
            catch_up.update(backlog(), Instant::now());
            std::thread::sleep(WATCH_EVERY);
        }
    })
}

/// The watchdog's state: hurries and calms down as the backlog says.
#[derive(Debug)]
struct CatchUp {
    sched: Arc<Sched>,
    /// Since when sonde has been hurrying (None: calm).
    hurrying: Option<Instant>,
    /// When the backlog last was above `CAUGHT_UP` while hurrying.
    last_behind: Option<Instant>,
    /// When sonde last calmed down.
    calmed: Option<Instant>,
    /// How long sonde must stay caught up before it calms down.
    calm_after: Duration,
}

impl CatchUp {
    fn new(sched: Arc<Sched>) -> CatchUp {
        CatchUp { sched, hurrying: None, last_behind: None, calmed: None, calm_after: CALM_AFTER }
    }

    /// With `backlog` the larger of the ring buffer's and the export queue's fill (0 to 1).
    fn update(&mut self, backlog: f64, now: Instant) {
        match self.hurrying {
            None if backlog >= BEHIND && self.sched.set_all(Some(libc::SCHED_OTHER)) => {
                let relapse = self.calmed.is_some_and(|t| now.duration_since(t) < RELAPSE);
                self.calm_after =
                    if relapse { (self.calm_after * 2).min(CALM_AFTER_MAX) } else { CALM_AFTER };
                tracing::debug!(backlog, calm_after = ?self.calm_after, "falling behind: sonde's threads run at normal priority");
                self.hurrying = Some(now);
                self.last_behind = Some(now);
            }
            Some(_) if backlog > CAUGHT_UP => self.last_behind = Some(now),
            Some(since) if self.last_behind.is_some_and(|t| now.duration_since(t) >= self.calm_after) => {
                self.sched.set_all(None);
                tracing::debug!(after = ?now.duration_since(since), "caught up: yielding to the traced processes again");
                self.hurrying = None;
                self.calmed = Some(now);
            }
            _ => {}
        }
    }

    /// Whether sonde is hurrying now.
    #[cfg(test)]
    fn hurrying(&self) -> bool {
        self.hurrying.is_some()
    }
}

/// Puts the calling thread (and those it starts, which inherit the policy) in `SCHED_BATCH` for
/// start-up: it keeps its fair share of CPU, but waking up never preempts the process that is
/// running — on a busy host that is the traced service. Once running, the busy threads follow the
/// watchdog.
pub fn yield_to_traced_processes() {
    set(0, libc::SCHED_BATCH);
}

/// Sets thread `tid`'s policy (0: the calling thread); false (logged) when the kernel refuses.
fn set(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives for the call; a tid that is gone only makes the call fail.
    let ok = unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0;
    if !ok {
        tracing::debug!(tid, policy = name(policy), error = %std::io::Error::last_os_error(), "sched_setscheduler failed");
    }
    ok
}

fn name(policy: libc::c_int) -> &'static str {
    match policy {
        libc::SCHED_IDLE => "SCHED_IDLE",
        libc::SCHED_BATCH => "SCHED_BATCH",
        libc::SCHED_OTHER => "SCHED_OTHER",
        _ => "other",
    }
}

/// The calling thread's policy, as the kernel has it.
#[cfg(test)]
fn current_policy() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own, so that policy changes stay there.
    fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("test thread")
    }

    #[test]
    fn hurries_past_a_quarter_and_calms_down_after_a_second_caught_up() {
        on_own_thread(|| {
            let sched = Sched::detect();
            let calm = sched.calm;
            sched.join_current();
            let mut c = CatchUp::new(sched);
            assert_eq!(current_policy(), calm);
            let t0 = Instant::now();
            c.update(0.1, t0);
            assert!(!c.hurrying());
            c.update(0.3, t0);
            assert!(c.hurrying());
            assert_eq!(current_policy(), libc::SCHED_OTHER);
            // Still above an eighth: the second counts from here.
            c.update(0.2, t0 + Duration::from_millis(500));
            c.update(0.05, t0 + Duration::from_millis(1400));
            assert!(c.hurrying());
            c.update(0.05, t0 + Duration::from_millis(1500));
            assert!(!c.hurrying());
            assert_eq!(current_policy(), calm);
        });
    }

    #[test]
    fn a_hurry_soon_after_calming_down_doubles_the_wait() {
        on_own_thread(|| {
            let mut c = CatchUp::new(Sched::detect());
            let mut t = Instant::now();
            let mut waits = Vec::new();
            for _ in 0..8 {
                c.update(0.5, t);
                assert!(c.hurrying());
                waits.push(c.calm_after);
                t += c.calm_after;
                c.update(0.0, t);
                assert!(!c.hurrying());
                t += Duration::from_secs(1);
            }
            let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
            assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 64]);
            // A hurry long after the last one starts over.
            t += RELAPSE;
            c.update(0.5, t);
            assert_eq!(c.calm_after, CALM_AFTER);
        });
    }

    #[test]
    fn workers_hurry_when_the_watchdog_sees_a_backlog() {
        let sched = Sched::detect();
        let calm = sched.calm;
        let (joined_tx, joined_rx) = std::sync::mpsc::channel();
        let (check_tx, check_rx) = std::sync::mpsc::channel::<()>();
        let (policy_tx, policy_rx) = std::sync::mpsc::channel();
        let worker = {
            let sched = Arc::clone(&sched);
            std::thread::spawn(move || {
                sched.join_current();
                joined_tx.send(()).unwrap();
                while check_rx.recv().is_ok() {
                    policy_tx.send(current_policy()).unwrap();
                }
                sched.leave_current();
            })
        };
        joined_rx.recv().unwrap();
        let ask = || {
            check_tx.send(()).unwrap();
            policy_rx.recv().unwrap()
        };
        assert_eq!(ask(), calm);
        let backlog = Arc::new(std::sync::Mutex::new(0.0));
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = watch(
            Arc::clone(&sched),
            {
                let b = Arc::clone(&backlog);
                move || *b.lock().unwrap()
            },
            Arc::clone(&stop),
        )
        .unwrap();
        *backlog.lock().unwrap() = 0.9;
        let deadline = Instant::now() + Duration::from_secs(5);
        while ask() != libc::SCHED_OTHER {
            assert!(Instant::now() < deadline, "the worker never hurried");
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        watchdog.join().unwrap();
        drop(check_tx);
        worker.join().unwrap();
        assert!(sched.workers.lock().unwrap().is_empty());
    }
}
