//! The connection table: one entry per (process, fd) the kernel reported as a TCP socket, holding
//! what the kernel said about it (addresses, role) and the HTTP parser state of both directions.
//!
//! Entries end with the kernel's `Close`, with a new `Open` on the same fd (reuse), when their
//! process is gone, or after a long silence; memory stays bounded by `MAX_CONNECTIONS`.

mod info;
pub mod select;
mod skip;

pub use info::ConnInfo;
use skip::BodySkip;

use foldhash::{HashMap, HashMapExt as _, HashSet};

use sonde_common::{CloseEvent, ConnEvent, DataEvent, Direction, Role, SkipTo, Verdict, conn_key};

use crate::http::{Chunk, Exchange, HttpConnection, Limits, ParseStats, Started};

/// Beyond this many tracked connections the least recently active are dropped.
pub const MAX_CONNECTIONS: usize = 65_536;
/// A response whose end cannot be known (framing lost) is closed after this much silence.
pub const IDLE_FLUSH_NS: u64 = 1_000_000_000;
/// A connection silent this long is forgotten (its close was never seen).
pub const FORGET_AFTER_NS: u64 = 15 * 60 * 1_000_000_000;

/// A finished exchange and the connection it happened on.
pub struct Finished {
    pub conn: ConnInfo,
    pub exchange: Exchange,
}

/// What the table's work gave, for the caller to apply in this order (`Pipeline::apply`):
/// 1. `started`: request heads, given their trace context before any exchange ends — an exchange
///    may start and end in one chunk, and its span must find its request;
/// 2. `finished`: exchanges that ended, made into spans and metrics;
/// 3. `ciphertext_pids`, `kernel_forgets` and `kernel_verdicts`: notices for the TLS hooks and the
///    kernel's table.
///
/// This is where a protocol's parser output joins the data flow: the table adds, the pipeline
/// drains, and nothing is kept here between two events.
#[derive(Default)]
pub struct Effects {
    /// Requests whose head was seen, with their connection, in order.
    pub started: Vec<(ConnInfo, Started)>,
    pub finished: Vec<Finished>,
    /// Processes whose connections began with TLS ciphertext that no hook decrypted.
    pub ciphertext_pids: Vec<u32>,
    /// (tgid, fd) keys whose kernel-side state should be forgotten, so that the kernel announces
    /// the connection again (`Open`): connections dropped here, or data for one never heard of.
    pub kernel_forgets: Vec<u64>,
    /// (tgid, fd) key, socket and verdict of connections sonde will not parse: the kernel stops
    /// copying their bytes (only if it still holds that socket on the fd).
    pub kernel_verdicts: Vec<(u64, u64, Verdict)>,
    /// (tgid, fd) key and where the bodies in progress end: the kernel need not report the calls
    /// before (see `skip`).
    pub kernel_skips: Vec<(u64, SkipTo)>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ConnStats {
    pub opened: u64,
    pub closed: u64,
    /// Data for a (tgid, fd) whose `Open` we never got (dropped in the kernel).
    pub data_without_open: u64,
    pub evicted: u64,
    /// Data events that showed earlier ones of their connection were dropped.
    pub sequence_gaps: u64,
    /// Connections that ended without their `Close`: replaced by a new `Open` on their fd, or
    /// gone from the kernel's table.
    pub closes_missed: u64,
    /// What the HTTP parsers of all connections counted (see `http::ParseStats`).
    pub parse: ParseStats,
}

struct Connection {
    info: ConnInfo,
    /// Kernel address of the socket: a second `Open` for the same socket is not a new connection.
    sock: u64,
    http: HttpConnection,
    /// The kernel's sequence number expected on the next data event.
    next_seq: u32,
    /// Body bytes the kernel skips, and how to read its offsets.
    body_skip: BodySkip,
    last_seen_ns: u64,
    /// Passed the port/process filter.
    selected: bool,
    /// Not selected, not HTTP, or TLS that no hook decrypts: data is ignored (and the kernel told,
    /// see `refuse`).
    ignored: bool,
    flushed_idle: bool,
}

#[derive(Default)]
pub struct ConnTable {
    conns: HashMap<u64, Connection>,
    stats: ConnStats,
    /// Exchanges of one feed, reused to spare an allocation per event.
    scratch: Vec<Exchange>,
    /// Keys already asked about since the last sweep: one request per key and second is enough.
    forget_requested: HashSet<u64>,
    /// The id the next connection gets (see `ConnInfo::id`).
    next_id: u64,
}

fn requests_from(role: Role) -> Option<Direction> {
    match role {
        Role::Server => Some(Direction::Ingress),
        Role::Client => Some(Direction::Egress),
        Role::Unknown => None,
    }
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Whether the connection on (tgid, fd) was selected for tracing; None when it is not known.
    pub fn selected(&self, tgid: u32, fd: i32) -> Option<bool> {
        self.conns.get(&conn_key(tgid, fd as u32)).map(|conn| conn.selected)
    }

    /// A TCP socket first seen on (tgid, fd). `selected` says whether its data should be parsed.
    pub fn open(&mut self, event: &ConnEvent, selected: bool, out: &mut Effects) {
        let key = conn_key(event.header.tgid, event.header.fd as u32);
        self.forget_requested.remove(&key);
        if let Some(conn) = self.conns.get_mut(&key)
            && conn.sock == event.sock
            && Role::from_u8(event.role) == Role::Unknown
        {
            // The kernel lost its entry (LRU eviction, or we asked it to forget) and announced the
            // same socket again: same connection, parser state intact, numbering restarts. With a
            // role, accept/connect just happened: a new socket that got the freed one's address.
            conn.next_seq = 1;
            conn.body_skip.restart_counts();
            return;
        }
        if let Some(mut old) = self.conns.remove(&key) {
            // The fd was reused without a close we saw: its Close was dropped (or the fd was
            // replaced with dup2). Requests it left unanswered may have been answered in what was
            // lost, so only exchanges that did complete are kept.
            self.stats.closes_missed += 1;
            finish_completed(&mut old, event.header.ts_ns, &mut out.finished);
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.evict_oldest(&mut out.kernel_forgets);
        }
        self.stats.opened += 1;
        self.next_id += 1;
        let info = ConnInfo { id: self.next_id, ..ConnInfo::from_event(event) };
        let mut conn = Connection {
            http: HttpConnection::new(requests_from(info.role), Limits::default()),
            info,
            sock: event.sock,
            next_seq: 1,
            body_skip: BodySkip::default(),
            last_seen_ns: event.header.ts_ns,
            selected,
            ignored: false,
            flushed_idle: false,
        };
        if !selected {
            refuse(key, &mut conn, Verdict::Unwanted, out);
        }
        self.conns.insert(key, conn);
    }

    pub fn data(&mut self, event: &DataEvent, direction: Direction, payload: &[u8], out: &mut Effects) {
        let key = conn_key(event.header.tgid, event.header.fd as u32);
        let Some(conn) = self.conns.get_mut(&key) else {
            // Its `Open` was lost: ask the kernel to announce it again (once per key and sweep).
            self.stats.data_without_open += 1;
            if self.forget_requested.insert(key) {
                out.kernel_forgets.push(key);
            }
            return;
        };
        conn.last_seen_ns = event.header.ts_ns;
        conn.flushed_idle = false;
        if event.seq != conn.next_seq {
            // Events of this connection were dropped (ring buffer full): whatever the parser holds
            // may pair the wrong request and response. Start over; it resyncs at the next message.
            self.stats.sequence_gaps += 1;
            // Learning mode, not a fresh connection: the next chunk may well be mid-message.
            conn.http.restart(None, Limits::default());
        }
        conn.next_seq = event.seq.wrapping_add(1);
        match (event.tls != 0, conn.info.tls) {
            (true, false) => {
                // The TLS library hooks speak for this connection from now on: whatever the parser
                // made of ciphertext that reached us first (a handshake made before the library
                // was hooked) is void.
                conn.info.tls = true;
                conn.http.restart(requests_from(conn.info.role), Limits::default());
                conn.ignored = !conn.selected;
            }
            // Ciphertext of a TLS connection, sent before the kernel knew: parsed once, as plaintext.
            (false, true) => return,
            (false, false) if event.seq == 1 && looks_like_tls(payload) => {
                // Its plaintext may still come, once the process's TLS library is hooked.
                refuse(key, conn, Verdict::FirstBytes, out);
                if conn.selected {
                    out.ciphertext_pids.push(conn.info.pid);
                }
                return;
            }
            _ => {}
        }
        if conn.ignored {
            return;
        }
        let (ts_ns, tid) = (event.header.ts_ns, event.header.tid);
        let before = *conn.http.stats();
        let mut skipped = conn.body_skip.skipped_before(event, direction);
        while skipped > 0 {
            // Bytes the kernel moved unreported: to the parser, uncaptured ones.
            let len = skipped.min(u64::from(u32::MAX)) as u32;
            conn.http.feed(direction, Chunk { ts_ns, tid, data: &[], len }, &mut self.scratch);
            skipped -= u64::from(len);
        }
        conn.http.feed(direction, Chunk { ts_ns, tid, data: payload, len: event.len }, &mut self.scratch);
        self.stats.parse.add_since(&before, conn.http.stats());
        if !conn.info.tls
            && let Some(skip) =
                conn.body_skip.body_ahead(direction, conn.http.body_left(direction), conn.sock)
        {
            out.kernel_skips.push((key, skip));
        }
        let info = conn.info;
        out.started.extend(conn.http.take_started().map(|started| (info, started)));
        out.finished.extend(self.scratch.drain(..).map(|exchange| Finished { conn: conn.info, exchange }));
        if !conn.http.is_http() {
            refuse(key, conn, Verdict::Unwanted, out);
        }
    }

    pub fn close(&mut self, event: &CloseEvent, out: &mut Effects) {
        let key = conn_key(event.header.tgid, event.header.fd as u32);
        if let Some(mut conn) = self.conns.remove(&key) {
            self.stats.closed += 1;
            // An ignored connection's numbers mean nothing: writing the verdict may have put back
            // an older one.
            if !conn.ignored && event.last_seq.wrapping_add(1) != conn.next_seq {
                // The last events were dropped: unanswered requests may well have been answered.
                self.stats.sequence_gaps += 1;
                return;
            }
            finish(&mut conn, event.header.ts_ns, &mut out.finished);
        }
    }

    /// Periodic upkeep at monotonic time `now_ns`: finish responses that went quiet, forget
    /// connections of exited processes and ones silent for `FORGET_AFTER_NS`.
    pub fn sweep(&mut self, now_ns: u64, process_alive: impl Fn(u32) -> bool, out: &mut Effects) {
        self.forget_requested.clear();
        let mut gone = Vec::new();
        // Many connections share a process: ask about each pid once per sweep.
        let mut alive: HashMap<u32, bool> = HashMap::new();
        for (key, conn) in &mut self.conns {
            let idle = now_ns.saturating_sub(conn.last_seen_ns);
            let pid_alive = *alive.entry(conn.info.pid).or_insert_with(|| process_alive(conn.info.pid));
            if idle >= FORGET_AFTER_NS || !pid_alive {
                gone.push(*key);
            } else if idle >= IDLE_FLUSH_NS && !conn.flushed_idle && !conn.ignored {
                let mut exchanges = Vec::new();
                conn.http.flush_idle(&mut exchanges);
                out.finished
                    .extend(exchanges.into_iter().map(|exchange| Finished { conn: conn.info, exchange }));
                conn.flushed_idle = true;
            }
        }
        for key in gone {
            if self.end(key, out) {
                self.stats.evicted += 1;
            }
        }
    }

    /// `pid` exited: its connections end as if closed (the kernel closed them without a `close`
    /// call), and the kernel forgets them too. One pass over the table, once per traced process
    /// that exits.
    pub fn process_exited(&mut self, pid: u32, out: &mut Effects) {
        let gone: Vec<u64> = self.conns.keys().copied().filter(|key| (key >> 32) as u32 == pid).collect();
        for key in gone {
            if self.end(key, out) {
                self.stats.closed += 1;
            }
        }
    }

    /// Ends the connection at `key` where it was last seen: what it holds is finished, and the
    /// kernel is asked to forget it too. False when there was none.
    fn end(&mut self, key: u64, out: &mut Effects) -> bool {
        let Some(mut conn) = self.conns.remove(&key) else {
            return false;
        };
        let ts = conn.last_seen_ns;
        finish(&mut conn, ts, &mut out.finished);
        out.kernel_forgets.push(key);
        true
    }

    /// Keys and sockets of the connections silent for `idle_ns`: those whose `Close` may have
    /// been lost with dropped events (see `closed_unseen`).
    pub fn quiet(&self, now_ns: u64, idle_ns: u64) -> Vec<(u64, u64)> {
        self.conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) >= idle_ns)
            .map(|(key, c)| (*key, c.sock))
            .collect()
    }

    /// The kernel no longer tracks this connection, or tracks another socket on its fd: its
    /// `Close` was dropped (ring buffer full). It ends as if closed, keeping only exchanges that
    /// completed (its last responses may have been lost with the close).
    pub fn closed_unseen(&mut self, key: u64, out: &mut Effects) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        self.stats.closes_missed += 1;
        let ts = conn.last_seen_ns;
        finish_completed(&mut conn, ts, &mut out.finished);
    }

    /// Gives back the slots of a table that was much larger than it is now (a HashMap never
    /// shrinks by itself); true when it did, so the caller can hand the freed heap back too.
    pub fn shrink_if_sparse(&mut self) -> bool {
        const MIN_SLOTS: usize = 1024;
        let (len, slots) = (self.conns.len(), self.conns.capacity());
        if slots <= MIN_SLOTS || slots <= 4 * len {
            return false;
        }
        self.conns.shrink_to((2 * len).max(MIN_SLOTS / 2));
        self.forget_requested.shrink_to(MIN_SLOTS / 2);
        true
    }

    fn evict_oldest(&mut self, forget: &mut Vec<u64>) {
        let mut ages: Vec<u64> = self.conns.values().map(|c| c.last_seen_ns).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 8];
        let before = self.conns.len();
        self.conns.retain(|key, c| {
            let keep = c.last_seen_ns > cutoff;
            if !keep {
                forget.push(*key);
            }
            keep
        });
        self.stats.evicted += (before - self.conns.len()) as u64;
    }
}

/// sonde will not parse `conn` (any more): its data is ignored here, and the kernel is told to stop
/// copying it.
fn refuse(key: u64, conn: &mut Connection, verdict: Verdict, out: &mut Effects) {
    if !conn.ignored {
        conn.ignored = true;
        out.kernel_verdicts.push((key, conn.sock, verdict));
    }
}

/// A TLS record header (RFC 8446 §5.1): content type change_cipher_spec, alert, handshake or
/// application_data, protocol version 3.x, a length. No HTTP message starts with these bytes.
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, 0x00..=0x04, _, _, ..])
}

/// `finish`, for a connection whose close was not seen: unanswered requests may well have been
/// answered in what was lost, so only exchanges that completed are kept.
fn finish_completed(conn: &mut Connection, ts_ns: u64, out: &mut Vec<Finished>) {
    let first = out.len();
    finish(conn, ts_ns, out);
    let mut i = first;
    while i < out.len() {
        if out[i].exchange.response.is_none() {
            out.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

fn finish(conn: &mut Connection, ts_ns: u64, out: &mut Vec<Finished>) {
    if conn.ignored {
        return;
    }
    let mut exchanges = Vec::new();
    conn.http.close(ts_ns, &mut exchanges);
    out.extend(exchanges.into_iter().map(|exchange| Finished { conn: conn.info, exchange }));
}

#[cfg(test)]
mod tests;
