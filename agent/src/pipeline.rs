//! The user-space data flow on the intake thread: kernel events → connection table → HTTP
//! exchanges → trace context → spans → export queue. Single-threaded on purpose: per-connection state needs no
//! locks, and the export queue is the only hand-off (non-blocking, drops counted).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use sonde_common::{SkipTo, Verdict};

use crate::{
    config::SdkProcesses,
    conn::{ConnInfo, ConnStats, ConnTable, Effects, Finished, select::Selector},
    export::SpanSink,
    http::{Exchange, Started},
    intake::{self, DecodeError, Event},
    link::{
        Link, LinkStats, Linker, RequestKey, SharedThreads, SpanContext, kernel::KernelContexts,
        sampler::Sampler,
    },
    metrics::Metrics,
    probes::{KernelTables, ProbeNotice},
    process::ProcessCache,
    span::{
        AssembleStats, Assembler,
        clock::{WallClock, monotonic_ns},
        model::Span,
        shed::Shedder,
    },
};

/// `BPF_EXIST`: update an element only if it is there (a closed connection is not brought back).
const BPF_EXIST: u64 = 2;

/// What the intake thread has counted, as of its last tick: one snapshot, published whole, read
/// by `metrics::own` (which describes every counter once, for the log line, OTLP and Prometheus).
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineCounts {
    /// Events read from the ring buffer.
    pub events: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Connections tracked now (a gauge).
    pub connections: u64,
    /// Exchanges of processes with their own SDK, left to it (`--sdk-processes skip`).
    pub sdk_skipped: u64,
    /// Exchanges that ended and were counted (request metrics, when on), sampled or not: server
    /// side, then client side.
    pub exchanges_ended: ExchangeCounts,
    /// Sampled spans not made because sonde was falling behind (`span::shed`).
    pub spans_shed: u64,
    /// Connections the kernel was told to stop copying (`Effects::kernel_verdicts`).
    pub kernel_verdicts: u64,
    pub conn: ConnStats,
    pub link: LinkStats,
    pub spans: AssembleStats,
}

/// Exchanges by the side sonde saw them from.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExchangeCounts {
    pub server: u64,
    pub client: u64,
}

/// The snapshot shared with the main thread.
#[derive(Debug, Default)]
pub struct PipelineStats(std::sync::Mutex<PipelineCounts>);

impl PipelineStats {
    pub fn read(&self) -> PipelineCounts {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, counts: PipelineCounts) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = counts;
    }
}

pub struct Pipeline {
    conns: ConnTable,
    linker: Linker,
    processes: ProcessCache,
    assembler: Assembler,
    selector: Selector,
    clock: WallClock,
    sink: SpanSink,
    stats: Arc<PipelineStats>,
    sdk_processes: SdkProcesses,
    sdk_skipped: u64,
    exchanges_ended: ExchangeCounts,
    kernel_verdicts: u64,
    events: u64,
    decode_errors: u64,
    /// What the connection table gave and the pipeline has not applied yet.
    effects: Effects,
    /// Spans made since the last hand-off to the exporter (see `intake::Sink::drained`).
    outbox: Vec<Span>,
    /// Exchanges held in open traces until they settle (`Link::Later`, `link::open`).
    awaiting_parent: HashMap<RequestKey, Finished>,
    /// The kernel's tables: connections forgotten (so the kernel announces them again) or refused,
    /// and where bodies end.
    kernel: Option<KernelTables>,
    last_process_sweep: Instant,
    last_reconcile: Instant,
    last_conn_sweep: Instant,
    /// Most connections tracked since freed heap was last handed back (`RELEASE_AFTER_CLOSING`).
    conns_high_water: usize,
    last_hand_off: Instant,
    /// Where TLS notices go (the thread that holds the probes), and those not yet sent: a
    /// process loading its libraries maps a dozen files in a row, one notice is enough.
    probe_notices: Option<tokio::sync::mpsc::Sender<ProbeNotice>>,
    pending_notices: HashSet<ProbeNotice>,
    /// Where every finished exchange is counted, sampled or not (None: no metrics wanted).
    metrics: Option<Metrics>,
    /// Fewer spans while the ring buffer fills (see `span::shed`).
    shedder: Shedder,
    /// The ring was more than `BACKLOG` full when the last drain began: what is read is behind
    /// the clock.
    backlogged: bool,
    /// When the kernel wrote the newest event read so far.
    newest_event_ns: u64,
    /// Ids the kernel gave requests, waiting for the data events that begin them.
    kernel_contexts: KernelContexts,
}

/// A backlog beyond which the time of the events read, not the clock, says how long a connection
/// or a request has been silent: their next events may be waiting in the ring. Woken at a
/// sixteenth, a reader that keeps up starts its drains not far above that.
const BACKLOG: f64 = 1.0 / 8.0;

const PROCESS_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often connections silent for `QUIET_NS` are checked against the kernel's table.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
const QUIET_NS: u64 = 5_000_000_000;
/// Spans go to the exporter in chunks of at least this many, or after `HAND_OFF_EVERY`: each
/// hand-off wakes the export thread, and at low rates a wake-up per ring drain cost more than
/// the spans it carried. The exporter batches for up to a second anyway.
const HAND_OFF_SPANS: usize = 512;
const HAND_OFF_EVERY: Duration = Duration::from_millis(100);
/// Idle responses are finished and dead connections dropped at this pace.
const CONN_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Freed heap is handed back to the kernel once this many connections closed since the last time.
const RELEASE_AFTER_CLOSING: usize = 256;

impl Pipeline {
    pub fn new(
        assembler: Assembler,
        selector: Selector,
        sink: SpanSink,
        stats: Arc<PipelineStats>,
        kernel: Option<KernelTables>,
        sdk_processes: SdkProcesses,
    ) -> Self {
        Self {
            conns: ConnTable::default(),
            linker: Linker::default(),
            processes: ProcessCache::new(),
            assembler,
            selector,
            clock: WallClock::sample(),
            sink,
            stats,
            sdk_processes,
            sdk_skipped: 0,
            exchanges_ended: ExchangeCounts::default(),
            kernel_verdicts: 0,
            events: 0,
            decode_errors: 0,
            effects: Effects::default(),
            outbox: Vec::new(),
            awaiting_parent: HashMap::new(),
            kernel,
            last_process_sweep: Instant::now(),
            last_reconcile: Instant::now(),
            last_conn_sweep: Instant::now(),
            conns_high_water: 0,
            last_hand_off: Instant::now(),
            probe_notices: None,
            pending_notices: HashSet::new(),
            metrics: None,
            shedder: Shedder::default(),
            backlogged: false,
            newest_event_ns: 0,
            kernel_contexts: KernelContexts::default(),
        }
    }

    /// Resources carry the Kubernetes metadata of `pods`.
    pub fn with_pods(mut self, pods: crate::metadata::Pods) -> Self {
        self.processes = ProcessCache::with_pods(pods);
        self
    }

    /// Counts every finished exchange in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Which traces are exported (the default: `parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.linker = Linker::new(sampler);
        self
    }

    /// Library loads, undecrypted TLS and Go programs go to `notices` (see `probes::ProbeNotice`).
    pub fn with_probe_notices(mut self, notices: tokio::sync::mpsc::Sender<ProbeNotice>) -> Self {
        self.probe_notices = Some(notices);
        self
    }

    fn send_notices(&mut self) {
        let Some(sender) = &self.probe_notices else {
            self.pending_notices.clear();
            return;
        };
        for notice in self.pending_notices.drain() {
            // Full: the holder of the probes is behind; a process mapping more files asks again.
            if sender.try_send(notice).is_err() {
                tracing::debug!(?notice, "probe notice dropped");
            }
        }
    }

    /// Requests whose head was just seen get their trace context before any exchange ends. A
    /// process left to its SDK gets none: no span of sonde's may name one of its spans as parent
    /// (its own `traceparent` headers link what it calls).
    fn link_started(&mut self, started: impl Iterator<Item = (ConnInfo, Started)>) {
        for (conn, request) in started {
            if request.otlp_export && request.direction == sonde_common::Direction::Ingress {
                self.processes.mark_otlp_receiver(conn.pid);
            }
            if !left_to_sdk(self.sdk_processes, &mut self.processes, conn.pid) {
                self.linker.started(&conn, &request);
            }
        }
    }

    fn emit(&mut self, finished: impl Iterator<Item = Finished>) {
        let now = Instant::now();
        for Finished { conn, exchange } in finished {
            if exports_traces(&exchange) {
                self.processes.mark_own_sdk(conn.pid, "it exports OTLP/HTTP traces");
            }
            // Taken in any case: a process marked mid-request leaves nothing behind in the linker.
            let link = self.linker.finished(&conn, &exchange);
            if left_to_sdk(self.sdk_processes, &mut self.processes, conn.pid) {
                // Its spans are the SDK's, its requests still count (outside the service graph,
                // which pairs sonde's spans).
                self.count_ended(&exchange);
                if let Some(metrics) = &self.metrics {
                    metrics.record(&exchange, &conn, &self.processes.resource(conn.pid), None, now);
                }
                self.sdk_skipped += 1;
                continue;
            }
            let context = match link {
                Link::Now(context) => context,
                Link::Later(key) => {
                    self.awaiting_parent.insert(key, Finished { conn, exchange });
                    continue;
                }
                // Unknown to the linker (forgotten under its bounds): a trace of its own.
                Link::Unknown => self.linker.root_context(),
            };
            self.export(&conn, &exchange, context, now);
        }
    }

    /// Exchanges that waited for their parent, now that the linker knows it.
    fn emit_late(&mut self) {
        if !self.linker.has_late() {
            return;
        }
        let now = Instant::now();
        let late: Vec<(RequestKey, SpanContext)> = self.linker.take_late().collect();
        for (key, context) in late {
            if let Some(Finished { conn, exchange }) = self.awaiting_parent.remove(&key) {
                self.export(&conn, &exchange, context, now);
            }
        }
    }

    /// The span and the metrics of one exchange.
    fn export(&mut self, conn: &ConnInfo, exchange: &Exchange, context: SpanContext, now: Instant) {
        let resource = self.processes.resource(conn.pid);
        self.count_ended(exchange);
        if let Some(metrics) = &self.metrics {
            metrics.record(exchange, conn, &resource, Some(&context), now);
        }
        // An unsampled trace is the assembler's to count.
        if context.sampled() && !self.shedder.keeps(context.trace_id) {
            return;
        }
        if let Some(span) = self.assembler.span(exchange, conn, resource, &self.clock, context) {
            self.outbox.push(span);
        }
    }

    /// The time silences are measured against: the clock, or while the ring is backlogged the
    /// time of the newest event read (what came after is still waiting to be read).
    fn events_now_ns(&self) -> u64 {
        if self.backlogged { self.newest_event_ns } else { monotonic_ns() }
    }

    /// Makes fewer spans while the ring fills, and says when that starts and ends.
    fn shed_if_behind(&mut self, fill: f64) {
        let before = self.shedder.share();
        self.shedder.update(fill, Instant::now());
        let after = self.shedder.share();
        if before == 1.0 && after < 1.0 {
            tracing::warn!(
                ring_fill = format!("{:.0} %", fill * 100.0),
                "falling behind the kernel's events: making spans for fewer traces, still counting \
                 every request in the metrics (sonde.spans.shed)"
            );
        } else if before < 1.0 && after == 1.0 {
            tracing::info!(shed = self.shedder.shed(), "caught up: making every sampled span again");
        }
    }

    fn count_ended(&mut self, exchange: &Exchange) {
        match exchange.request_direction {
            sonde_common::Direction::Ingress => self.exchanges_ended.server += 1,
            sonde_common::Direction::Egress => self.exchanges_ended.client += 1,
        }
    }

    fn hand_off(&mut self) {
        if !self.outbox.is_empty() {
            self.sink.send_all(std::mem::take(&mut self.outbox));
        }
        self.last_hand_off = Instant::now();
    }

    fn hand_off_if_due(&mut self) {
        if self.outbox.len() >= HAND_OFF_SPANS || self.last_hand_off.elapsed() >= HAND_OFF_EVERY {
            self.hand_off();
        }
    }

    /// A thread of a traced process exited; with `process_gone`, the whole process. Its fds were
    /// closed with no `close` we could see, and its pid and tids may be handed out again at once:
    /// what is kept under them ends now, so a newcomer with the same ids starts clean.
    fn exited(&mut self, pid: u32, tid: u32, process_gone: bool) {
        self.linker.thread_exited(pid, tid);
        if !process_gone || !self.processes.knows(pid) {
            // Never traced (its connections, if any, were ignored): the periodic sweep will do.
            return;
        }
        self.linker.process_exited(pid);
        self.conns.process_exited(pid, &mut self.effects);
        // Its last exchanges are assembled while its resource is still cached, those held in
        // open traces too.
        self.apply();
        self.linker.stop_waiting(Some(pid));
        self.emit_late();
        self.processes.exited(pid);
    }

    /// A `Close` dropped with other events (ring buffer full) would leave its connection here
    /// until `FORGET_AFTER_NS`. The kernel's own table knows better: a connection it no longer
    /// tracks, or tracks with another socket on the fd, is over. Only quiet connections are
    /// asked about — one map lookup each, every `RECONCILE_EVERY`.
    fn reconcile_with_kernel(&mut self) {
        let Some(map) = self.kernel.as_ref().map(|k| &k.conns) else {
            return;
        };
        if self.backlogged {
            // The kernel's table is as of now, what is read is not: a connection closed since
            // may still have events waiting.
            return;
        }
        for (key, sock) in self.conns.quiet(monotonic_ns(), QUIET_NS) {
            let over = match map.get(&key, 0) {
                Ok(state) => state.sock != sock,
                Err(aya::maps::MapError::KeyNotFound) => true,
                // Any other error says nothing about the connection.
                Err(_) => false,
            };
            if over {
                self.conns.closed_unseen(key, &mut self.effects);
            }
        }
        self.apply();
    }

    /// Applies what the connection table gave, in the one order that is right (see
    /// `conn::Effects`): trace context for new requests, then spans and metrics for finished
    /// exchanges, then the notices for other stages.
    fn apply(&mut self) {
        let mut effects = std::mem::take(&mut self.effects);
        self.link_started(effects.started.drain(..));
        self.emit_late();
        if !effects.finished.is_empty() {
            self.emit(effects.finished.drain(..));
        }
        self.pending_notices.extend(effects.ciphertext_pids.drain(..).map(ProbeNotice::Ciphertext));
        self.forget_in_kernel(effects.kernel_forgets.drain(..));
        self.verdicts_to_kernel(effects.kernel_verdicts.drain(..));
        self.shared_threads_to_kernel();
        self.skips_to_kernel(effects.kernel_skips.drain(..));
        // The emptied vectors go back, with their allocations.
        self.effects = effects;
    }

    fn forget_in_kernel(&mut self, keys: impl Iterator<Item = u64>) {
        let Some(map) = self.kernel.as_mut().map(|k| &mut k.conns) else {
            return;
        };
        for key in keys {
            // Already gone is fine: the kernel may have closed or evicted it meanwhile.
            let _ = map.remove(&key);
        }
    }

    /// Tells the kernel which connections not to copy any more. Read, then written back whole: a
    /// kernel update in between (a sequence number, a TLS mark) may be lost, which costs one
    /// duplicate `BecameTls` at worst, since an ignored connection's numbers are not checked.
    /// The socket check keeps the verdict off a new connection that took the fd meanwhile.
    fn verdicts_to_kernel(&mut self, verdicts: impl Iterator<Item = (u64, u64, Verdict)>) {
        let Some(map) = self.kernel.as_mut().map(|k| &mut k.conns) else {
            return;
        };
        for (key, sock, verdict) in verdicts {
            let Ok(mut state) = map.get(&key, 0) else {
                continue;
            };
            // A connection the kernel already refused by its first bytes is left as it is.
            if state.sock != sock || state.verdict != Verdict::Copy as u8 {
                continue;
            }
            state.verdict = verdict as u8;
            if map.insert(key, state, BPF_EXIST).is_ok() {
                self.kernel_verdicts += 1;
            }
        }
    }

    /// Tells the kernel which processes share their threads among requests, so that it gives their
    /// requests no context from the request a thread serves. The kernel removes an entry when its
    /// process exits; a failed write leaves the kernel's own detection (event loops) alone.
    fn shared_threads_to_kernel(&mut self) {
        let mut map = self.kernel.as_mut().map(|k| &mut k.shared_threads);
        for (pid, why) in self.linker.take_newly_shared() {
            if let Some(map) = map.as_deref_mut() {
                let _ = map.insert(pid, why as u8, 0);
            }
        }
    }

    /// Tells the kernel where bodies end, so that it skips the calls before. The kernel checks the
    /// socket, and drops the entry when the fd is closed or gets a new socket. A failed write only
    /// means the body's calls are reported as before.
    fn skips_to_kernel(&mut self, skips: impl Iterator<Item = (u64, SkipTo)>) {
        let Some(map) = self.kernel.as_mut().map(|k| &mut k.skips) else {
            return;
        };
        for (key, skip) in skips {
            let _ = map.insert(key, skip, 0);
        }
    }

    fn publish_stats(&self) {
        self.stats.publish(PipelineCounts {
            events: self.events,
            decode_errors: self.decode_errors,
            connections: self.conns.len() as u64,
            sdk_skipped: self.sdk_skipped,
            exchanges_ended: self.exchanges_ended,
            spans_shed: self.shedder.shed(),
            kernel_verdicts: self.kernel_verdicts,
            conn: self.conns.stats(),
            link: self.linker.stats(),
            spans: self.assembler.stats(),
        });
    }
}

impl intake::Sink for Pipeline {
    fn event(&mut self, event: Event<'_>) {
        self.events += 1;
        self.newest_event_ns = self.newest_event_ns.max(event.ts_ns());
        match event {
            Event::Open(open) => {
                let info = crate::conn::ConnInfo::from_event(&open);
                let comm = comm_text(&open.comm);
                let processes = &mut self.processes;
                let started = open.start_ns;
                let selected = self.selector.accepts(&info, || processes.subject(info.pid, comm, started));
                if selected {
                    // Read /proc now, while the process most likely exists (it may be short-lived).
                    self.processes.observe(info.pid, comm, started);
                    if self.processes.runs_goroutines(info.pid) {
                        self.linker.threads_shared(info.pid, SharedThreads::GoRuntime);
                        self.pending_notices.insert(ProbeNotice::Goroutines(info.pid));
                    }
                }
                self.conns.open(&open, selected, &mut self.effects);
            }
            Event::Data { event, payload } => {
                let direction = intake::direction_of(&event);
                let context = self.kernel_contexts.take(&event);
                let before = self.effects.started.len();
                self.conns.data(&event, direction, payload, &mut self.effects);
                if let Some(context) = context {
                    // The request this data event begins: the first it started in that direction.
                    let begun = self.effects.started[before..].iter_mut().find(|(conn, started)| {
                        conn.pid == event.header.tgid && started.direction as u8 == context.direction
                    });
                    match begun {
                        Some((_, started)) => started.kernel = Some(context),
                        // Only the start of the head was read (its request line alone, say).
                        None => self.kernel_contexts.carry(context, &event),
                    }
                }
            }
            Event::Context(context) => {
                if context.direction == sonde_common::Direction::Egress as u8
                    && self.conns.selected(context.header.tgid, context.header.fd) == Some(false)
                {
                    // A request of a process not selected: its span is never exported, so a server
                    // on this host must not name it as parent.
                    self.linker.unexported(crate::span::model::SpanId::from_bytes(context.ids.span_id));
                }
                self.kernel_contexts.file(&context);
            }
            Event::Close(close) => self.conns.close(&close, &mut self.effects),
            Event::Spawn(spawn) => self.linker.spawned(spawn.header.tgid, spawn.header.tid, spawn.child_tid),
            Event::Mapped(header) => {
                self.pending_notices.insert(ProbeNotice::Mapped(header.tgid));
            }
            Event::Exit(exit) => self.exited(exit.header.tgid, exit.header.tid, exit.group_dead != 0),
        }
        self.apply();
    }

    fn decode_error(&mut self, error: DecodeError) {
        self.decode_errors += 1;
        if self.decode_errors.is_power_of_two() {
            tracing::warn!(%error, count = self.decode_errors, "undecodable ring-buffer records");
        }
    }

    fn backlog(&mut self, fill: f64) {
        self.backlogged = fill > BACKLOG;
        self.shed_if_behind(fill);
    }

    fn drained(&mut self) {
        self.linker.expire_late(self.events_now_ns());
        self.emit_late();
        self.hand_off_if_due();
        self.send_notices();
    }

    fn tick(&mut self) {
        self.clock = WallClock::sample();
        // A quiet ring calls no `drained`.
        self.linker.expire_late(self.events_now_ns());
        self.emit_late();
        if self.last_conn_sweep.elapsed() >= CONN_SWEEP_EVERY {
            let now = self.events_now_ns();
            self.conns.sweep(now, crate::process::alive, &mut self.effects);
            self.linker.sweep(now);
            self.apply();
            if let Some(metrics) = &self.metrics {
                metrics.upkeep(crate::process::alive);
            }
            self.hand_off();
            let shrunk = self.conns.shrink_if_sparse();
            self.conns_high_water = self.conns_high_water.max(self.conns.len());
            if shrunk || self.conns_high_water - self.conns.len() >= RELEASE_AFTER_CLOSING {
                // Many connections closed since the last time: their parser buffers (up to a
                // 64 KiB head each) were freed, and glibc would keep all of it mapped.
                tracing::debug!(
                    from = self.conns_high_water,
                    to = self.conns.len(),
                    "connections closed: handing freed heap back"
                );
                crate::heap::release_freed();
                self.conns_high_water = self.conns.len();
            }
            self.last_conn_sweep = Instant::now();
        }
        if self.last_reconcile.elapsed() >= RECONCILE_EVERY {
            self.reconcile_with_kernel();
            self.last_reconcile = Instant::now();
        }
        if self.last_process_sweep.elapsed() >= PROCESS_SWEEP_EVERY {
            self.processes.sweep();
            self.last_process_sweep = Instant::now();
        }
        self.hand_off_if_due();
        self.publish_stats();
    }

    fn stopped(&mut self) {
        self.linker.stop_waiting(None);
        self.emit_late();
        self.hand_off();
        self.publish_stats();
    }
}

/// Whether sonde leaves `pid`'s spans to the SDK it runs.
fn left_to_sdk(mode: SdkProcesses, processes: &mut ProcessCache, pid: u32) -> bool {
    mode == SdkProcesses::Skip && processes.has_own_sdk(pid)
}

/// An OTLP/HTTP trace export (`POST …/v1/traces`) sent by this process.
fn exports_traces(exchange: &Exchange) -> bool {
    let request = &exchange.request.head;
    exchange.request_direction == sonde_common::Direction::Egress
        && request.method == "POST"
        && crate::semconv::Target::parse(&request.target).path.ends_with("/v1/traces")
}

/// The NUL-padded `comm` of a kernel event as text (None when empty or not UTF-8).
fn comm_text(comm: &[u8; 16]) -> Option<&str> {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    std::str::from_utf8(&comm[..len]).ok().filter(|c| !c.is_empty())
}
