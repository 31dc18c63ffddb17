//! Maps and load-time globals. Sizes here are defaults; the agent resizes `EVENTS` and `SCRATCH`
//! at load time (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use sonde_common::{
    ActiveIo, ConnState, DROP_REASONS, DataEvent, Endpoint, KERNEL_COUNTS, KernelCount, MAX_CAPTURE, SkipTo,
    TlsCall, TlsKey,
    propagation::{HeaderIds, Ids, WireContext},
};

/// LRU maps keep one LRU list per CPU: with the shared list, a CPU whose free list runs dry evicts
/// live entries long before the map is full — an in-flight syscall would vanish without a trace.
const NO_COMMON_LRU: u32 = aya_ebpf::bindings::BPF_F_NO_COMMON_LRU;

/// Every event for user space. Power-of-two multiple of the page size; user space sets the size
/// at load (`--ring-buffer-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per-CPU counters indexed by `DropReason`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Per-CPU counters indexed by `KernelCount`: what was copied, and what was not.
#[map]
pub static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_COUNTS, 0);

/// tgids to trace when `FILTER_PIDS` is set: a bitmap, word `tgid / 64`, bit `tgid % 64`. An array
/// lookup is inlined by the verifier — a hash lookup here cost ~120 ns on every socket read and
/// write of every process. The agent sizes it to `PID_BITMAP_WORDS` (512 KiB) only when a filter
/// is set.
#[map]
pub static SELECTED_PIDS: Array<u64> = Array::with_max_entries(1, 0);

/// (tgid << 32 | fd) → connection state. LRU: a close we never saw must not leak an entry forever.
#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, NO_COMMON_LRU);

/// (tgid << 32 | fd) → where a body whose length user space knows ends: the calls before it are
/// not reported (see `SkipTo`). Written by user space only; the kernel removes an entry when its
/// fd is closed or gets a new socket. LRU: an entry evicted early only means bytes are copied.
#[map]
pub static SKIPS: LruHashMap<u64, SkipTo> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// pid_tgid → arguments of an in-flight read/write-family syscall, from entry to exit (syscall
/// tracepoint hook set only; the socket hook set needs no state between hooks). LRU: a
/// thread killed inside a syscall never reaches its exit, and its entry must not stay forever.
#[map]
pub static ACTIVE_IO: LruHashMap<u64, ActiveIo> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// pid_tgid → fd of an in-flight `connect` to an AF_INET/AF_INET6 address.
#[map]
pub static ACTIVE_CONNECT: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, NO_COMMON_LRU);

/// The TLS library call a worker is in (entry to return): a thread's, or in a Go program sonde
/// follows a goroutine's, which may move to another thread inside the call (Go's `crypto/tls`
/// parks a reader until its socket has bytes). LRU for the same reason as `ACTIVE_IO`.
#[map]
pub static TLS_CALLS: LruHashMap<Worker, TlsCall> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// (tgid, `SSL *`) → the fd of its socket, from `SSL_set_fd` or from socket I/O inside one of its
/// calls: a read served from the library's buffer makes no syscall that would tell. Removed by
/// `SSL_free`; LRU for objects whose free was missed.
#[map]
pub static TLS_SOCKETS: LruHashMap<TlsKey, i32> = LruHashMap::with_max_entries(65536, NO_COMMON_LRU);

/// tgids that made a TLS library call, a bitmap like `SELECTED_PIDS`: socket I/O of every other
/// process skips the `TLS_CALLS` lookup (an inlined array load instead of a hash lookup). Sized to
/// `PID_BITMAP_WORDS` by the agent when TLS is hooked. A stale bit (pid reused) costs a lookup.
#[map]
pub static TLS_PIDS: Array<u64> = Array::with_max_entries(1, 0);

/// tgids whose TLS calls are ignored (`--tls-exclude` on their executable), a bitmap like
/// `SELECTED_PIDS`, kept by the agent; one empty word when nothing is excluded.
#[map]
pub static TLS_EXCLUDED: Array<u64> = Array::with_max_entries(1, 0);

/// Kernel address of each TCP socket sonde itself connected → its local endpoint once established
/// (see `own.rs`). Not LRU: an entry evicted while its connection lives would let the other end's
/// traffic be traced; sonde holds a handful of connections, and each entry goes at its close.
#[map]
pub static AGENT_SOCKS: HashMap<u64, Endpoint> = HashMap::with_max_entries(4096, 0);

/// The local endpoints of sonde's own established connections: a connection whose peer is one of
/// them is never traced.
#[map]
pub static AGENT_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(4096, 0);

/// Kernel address of a TCP socket → the trace context to put in a TCP option of the segment that
/// begins at its `seq` (a request's first byte), from the request's write until that segment is
/// sent. LRU: a request whose segment never came (the socket closed) must not hold an entry.
#[map]
pub static TCP_OUT: LruHashMap<u64, WireContext> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// Kernel address of a TCP socket → the trace context read from a TCP option of a segment that
/// began at its `seq`, until a read returns that byte. LRU for sockets closed before.
#[map]
pub static TCP_IN: LruHashMap<u64, WireContext> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// Kernel address of a TCP socket → the ids for the `traceparent` header of the request head its
/// send carries, from the send's syscall entry to its exit; the `sk_msg` program that runs inside
/// the send writes the header and says so in the entry. LRU: an entry whose exit went unseen must
/// not stay.
#[map]
pub static HEADER_OUT: LruHashMap<u64, HeaderIds> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// Where the scan of a send found the end of the request line and a `traceparent` line, for the
/// `sk_msg` program to read back after its loops (as numbers the verifier does not know, so that
/// it checks what follows once, not once per position).
#[map]
pub static HEADER_AT: PerCpuArray<HeadOffsets> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct HeadOffsets {
    /// Just after the request line's `\n`.
    pub request_line_end: u32,
    /// Where the `:` of the (last) `traceparent` line's name is.
    pub name_end: u32,
    /// How many lines are named `traceparent`.
    pub names: u32,
}

/// Kernel address of a TCP socket a traced process is connecting → enrol it in `CLIENT_SOCKS` once
/// established. Filed in the connecting task (the SYN_SENT transition), because the sockops
/// callback at establishment runs in softirq, where the task is anyone's.
#[map]
pub static TO_ENROL: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// The client sockets of traced processes whose sends the `sk_msg` program sees (header
/// propagation), keyed by their kernel address. Never pinned: when sonde exits the map goes, and
/// the kernel gives every socket back its own send path. The kernel removes a socket that closes.
#[map]
pub static CLIENT_SOCKS: SockHash<u64> = SockHash::with_max_entries(65535, 0);

/// Who works for a request: a thread, or in a Go program a goroutine (see [`Worker`]) → the ids of
/// the server request it read last, until it writes to that connection (its answer). A request it
/// writes meanwhile is that request's child. A thread or goroutine it starts meanwhile works for the
/// same request.
#[map]
pub static SERVING: LruHashMap<Worker, Ids> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// A thread (`tgid` and `generation` 0, `id` its thread id, which the kernel gives no other thread
/// while it lives), or a goroutine of a Go program sonde follows (`id` the address of its `g`, which
/// the Go runtime hands to a new goroutine once this one exits — every start goes through
/// `go_newproc1_return`, which sets or clears the entry; `generation` the process's entry in
/// `GO_PROCS`, so that a reused pid never meets an older process's goroutines).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Worker {
    pub id: u64,
    pub tgid: u32,
    pub generation: u32,
}

impl Worker {
    /// Thread `tid` as a worker (a child gets an entry before it knows its own process id).
    #[inline(always)]
    pub fn thread(tid: u32) -> Worker {
        Worker { id: tid as u64, tgid: 0, generation: 0 }
    }
}

/// tgid → generation (non-zero): the Go programs whose goroutines sonde follows, written by the
/// agent once their uprobes are attached.
#[map]
pub static GO_PROCS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// A Go client request (`id` the address of its `http.Request`) → the ids of the server request
/// the goroutine that issued it was serving (a trace id of zeros: none): from
/// `(*persistConn).roundTrip`, in that goroutine, to `(*Request).write`, in the transport's write
/// goroutine.
#[map]
pub static GO_REQUESTS: LruHashMap<Worker, Ids> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// A transport's write goroutine → the address of the `http.Request` it last took from
/// `GO_REQUESTS`: when the runtime grows its stack at `(*Request).write`'s entry and runs the
/// function again, the second run finds the request taken and must leave the context it gave.
#[map]
pub static GO_WRITING: LruHashMap<Worker, u64> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// pid_tgid → the `g` that called `runtime.newproc1`, from its entry to its return (which gives the
/// new goroutine's `g`).
#[map]
pub static GO_NEWPROC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, NO_COMMON_LRU);

/// Worker (as in `TLS_CALLS`) → the context of a TCP option whose segment began at a TLS record that
/// a read inside its current TLS library call returned: the request the call's plaintext begins
/// gets it.
#[map]
pub static TLS_RECEIVED: LruHashMap<Worker, Ids> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// A request head a thread just read, for the read syscall's exit to look for a `traceparent`
/// header in (`traceparent.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderScan {
    /// The head's buffer in the reading process, and its length.
    pub addr: u64,
    pub len: u64,
    /// Who serves the request: the scan's program has no stack left to find out again.
    pub who: Worker,
}

/// pid_tgid → the request head its thread just read.
#[map]
pub static HEADER_SCANS: LruHashMap<u64, HeaderScan> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// Index 0: the header scan (`ctx_exit_read`), for the read syscalls' exit programs of the syscall
/// hook sets to end in, after their capture filed the head (`HEADER_SCANS`). A tail call, not a
/// second program on the tracepoint: the scan must run after the capture, and the kernel promises
/// no order between two programs on one tracepoint. Empty where the kernel refuses the scan.
#[map]
pub static HEADER_SCAN_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// tgids whose threads are not each tied to one request, so that the request a thread serves says
/// nothing about the requests it writes: their requests get no context (a missing link, never a
/// wrong one). Written by the kernel (a thread read a request while one it read on another
/// connection was unanswered: an event loop) and by the agent (a Go runtime, an event loop it
/// noticed); removed when the process exits.
#[map]
pub static SHARED_THREADS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Worker (as in `SERVING`) → the ids given to the request head it is writing, from the syscall's
/// entry (or a TLS write's) to its data event — which a goroutine may send from another thread:
/// Go's `crypto/tls` `Write` returns where the scheduler resumes it.
#[map]
pub static CLIENT_IDS: LruHashMap<Worker, Ids> = LruHashMap::with_max_entries(16384, NO_COMMON_LRU);

/// Room to build one data event: header plus up to `2 * MAX_CAPTURE` bytes, because the verifier
/// bounds an iovec copy at (offset < MAX) + (len <= MAX). Larger than the 32 KiB a per-CPU value
/// may be, so it is an array indexed by CPU id; `max_entries` is set to the CPU count at load.
#[repr(C)]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_BYTES],
}
pub const HEADER_BYTES: usize = core::mem::size_of::<DataEvent>();
pub const SCRATCH_BYTES: usize = HEADER_BYTES + 2 * MAX_CAPTURE;

#[map]
pub static SCRATCH: Array<Scratch> = Array::with_max_entries(256, 0);

// Globals written by the agent before load (names in `sonde_common::globals`). Read them with
// `read_volatile`, or the compiler folds in the zero they were compiled with.
#[unsafe(no_mangle)]
pub static AGENT_TGID: u32 = 0;
#[unsafe(no_mangle)]
pub static CAPTURE_BYTES: u32 = sonde_common::DEFAULT_CAPTURE;
#[unsafe(no_mangle)]
pub static FILTER_PIDS: u32 = 0;
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 256 * 1024;
#[unsafe(no_mangle)]
pub static OFF_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_V6_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_FORK_CHILD_PID: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_EXIT_GROUP_DEAD: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_TASK_GROUP_LEADER: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_TASK_START_BOOTTIME: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_STATE_SPORT: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_STATE_DPORT: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_STATE_SADDR_V6: u32 = 0;
#[unsafe(no_mangle)]
pub static FD_WALK: sonde_common::FdWalk = sonde_common::FdWalk::OFF;
/// Which carriers of trace context go on the wire (`propagation::CARRY_*` bits); 0: none.
#[unsafe(no_mangle)]
pub static PROPAGATE: u32 = 0;
/// A `GoRegisters` value: whether goroutines of the Go programs in `GO_PROCS` are followed, and how
/// their register is read at the socket and syscall hooks.
#[unsafe(no_mangle)]
pub static GO_GOROUTINES: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_TASK_STACK: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_TCP_WRITE_SEQ: u32 = 0;
#[unsafe(no_mangle)]
pub static OFF_TCP_COPIED_SEQ: u32 = 0;
#[unsafe(no_mangle)]
pub static SEND_FD_WALK: sonde_common::FdWalk = sonde_common::FdWalk::OFF;

#[inline(always)]
pub fn global_u32(g: &u32) -> u32 {
    // SAFETY: `g` is a reference to one of the statics above: valid, aligned, initialised. The
    // volatile read only keeps the compiler from folding in the value it was compiled with.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub fn global_u64(g: &u64) -> u64 {
    // SAFETY: as in `global_u32`: a reference to a static, read volatile so that the value the
    // agent wrote before load is the one used.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub fn count(what: KernelCount, n: u64) {
    if let Some(c) = COUNTS.get_ptr_mut(what as u32) {
        // SAFETY: as in `count_drop`: this CPU's slot of a per-CPU array, checked in bounds by the
        // lookup, never freed, written by no other CPU.
        unsafe { *c += n };
    }
}

#[inline(always)]
pub fn count_drop(reason: sonde_common::DropReason) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: `c` is this CPU's counter of a per-CPU array, non-null and aligned (the lookup
        // checked `reason < DROP_REASONS`); array values are never freed, and no other CPU writes
        // this CPU's copy.
        unsafe { *c += 1 };
    }
}
