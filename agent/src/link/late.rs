//! Server requests whose same-host client is seen only after they ended. Both ends of a connection
//! on this host reach sonde through one ring buffer, but a write is put there once the kernel has
//! delivered its bytes: the server's thread, woken by them, may preempt the writer on its CPU and
//! read, answer and finish before the writer's event is recorded. Such a server request waits here,
//! for a short while in event time, for its client's record; then it starts a trace of its own.
//!
//! A late match is stricter than a stitch made in time: the waiting request and the client
//! request must be the same position on a connection both ends saw from its first byte, with
//! nothing lost. A client request written after the server had answered (the next one on a
//! keep-alive connection, its predecessor's record lost) could otherwise take the place of the one
//! that never came — and a wrong parent is worse than none.

use std::collections::{HashMap, VecDeque};

use super::{InProgress, RequestKey, stitch::TupleKey};

/// How long, in event time, a server request waits for its client: a writer preempted by the
/// reader it woke gets its CPU back within a scheduler slice or two, a few milliseconds on a busy
/// machine; this leaves ample room and keeps the span's export late by a fraction of a second.
pub const GRACE_NS: u64 = 200_000_000;
/// Requests waiting at once; beyond it a request starts its trace at once (a missing link, never
/// a wrong one) — at this many, the node is serving thousands of unlinked requests a second.
pub const MAX_WAITING: usize = 4096;

struct Waiting {
    key: RequestKey,
    request: InProgress,
}

#[derive(Default)]
pub struct LateStitch {
    /// By the 4-tuple under which the client would file its record, in the order they ended.
    by_upstream: HashMap<TupleKey, VecDeque<Waiting>>,
    /// (deadline, upstream, request) in the order they began to wait.
    deadlines: VecDeque<(u64, TupleKey, RequestKey)>,
    len: usize,
}

impl LateStitch {
    /// Whether one more request may wait.
    pub fn has_room(&self) -> bool {
        self.len < MAX_WAITING
    }

    /// `request` (a server request with no parent yet, ended at `ended_ns`) waits for a client
    /// request on `upstream`.
    pub fn wait(&mut self, upstream: TupleKey, key: RequestKey, request: InProgress, ended_ns: u64) {
        self.by_upstream.entry(upstream).or_default().push_back(Waiting { key, request });
        self.deadlines.push_back((ended_ns.saturating_add(GRACE_NS), upstream, key));
        self.len += 1;
    }

    /// The waiting request a client request just seen on `upstream` caused: same method and
    /// target, same position on the connection.
    pub fn take(
        &mut self,
        upstream: &TupleKey,
        fingerprint: u64,
        position: Option<u32>,
    ) -> Option<(RequestKey, InProgress)> {
        let position = position?;
        let waiting = self.take_first(upstream, |w| {
            w.request.fingerprint == fingerprint && w.request.position == Some(position)
        })?;
        Some((waiting.key, waiting.request))
    }

    /// Requests whose deadline is at or before `horizon_ns`, oldest first.
    pub fn expire(&mut self, horizon_ns: u64, out: &mut Vec<(RequestKey, InProgress)>) {
        while let Some(&(deadline, upstream, key)) = self.deadlines.front() {
            if deadline > horizon_ns {
                break;
            }
            self.deadlines.pop_front();
            if let Some(waiting) = self.take_first(&upstream, |w| w.key == key) {
                out.push((key, waiting.request));
            }
        }
    }

    /// Every waiting request of `pid`, or all with None.
    pub fn give_up(&mut self, pid: Option<u32>, out: &mut Vec<(RequestKey, InProgress)>) {
        let deadlines = std::mem::take(&mut self.deadlines);
        for (deadline, upstream, key) in deadlines {
            let of_pid = |w: &Waiting| w.key == key && pid.is_none_or(|pid| w.request.pid == pid);
            match self.take_first(&upstream, of_pid) {
                Some(waiting) => out.push((key, waiting.request)),
                None => self.deadlines.push_back((deadline, upstream, key)),
            }
        }
    }

    /// Removes and returns the first request waiting on `upstream` that `which` picks.
    fn take_first(&mut self, upstream: &TupleKey, which: impl Fn(&Waiting) -> bool) -> Option<Waiting> {
        let queue = self.by_upstream.get_mut(upstream)?;
        let at = queue.iter().position(which)?;
        let waiting = queue.remove(at)?;
        if queue.is_empty() {
            self.by_upstream.remove(upstream);
        }
        self.len -= 1;
        Some(waiting)
    }

    pub fn len(&self) -> usize {
        self.len
    }
}
