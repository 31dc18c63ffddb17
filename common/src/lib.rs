//! Types shared by the kernel programs (`sonde-ebpf`) and the agent: ring-buffer event layouts, map
//! names, and the load-time switches the agent writes into the programs' globals.
//!
//! Every event starts with an [`EventHeader`]; its `kind` says which struct it is. All structs are
//! `#[repr(C)]` with explicit padding so both sides agree byte for byte.
#![no_std]

pub mod first_bytes;
pub mod propagation;

/// Largest number of payload bytes one data event can carry (a power of two: the kernel side masks
/// lengths with `MAX_CAPTURE - 1` so the verifier can bound them).
pub const MAX_CAPTURE: usize = 16 * 1024;
/// Payload bytes copied per syscall unless the user asks for another figure: enough for request and
/// response headers of a few KiB to arrive whole.
pub const DEFAULT_CAPTURE: u32 = 8 * 1024;
/// Highest pid + 1 on 64-bit Linux (`PID_MAX_LIMIT`): the `--pid` selection is a bitmap this long.
pub const PID_LIMIT: u32 = 4 * 1024 * 1024;
/// u64 words of that bitmap.
pub const PID_BITMAP_WORDS: u32 = PID_LIMIT / 64;
/// How many iovec entries of a `readv`/`writev`/`recvmsg`/`sendmsg` are copied (bounded loop).
pub const MAX_IOVECS: u32 = 8;
/// Socket address families (`include/linux/socket.h`), as the kernel reports them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Map names, shared so the agent looks up exactly what the programs define.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const DROPS: &str = "DROPS";
    pub const NULL_HITS: &str = "NULL_HITS";
    pub const SELECTED_PIDS: &str = "SELECTED_PIDS";
    pub const CONNS: &str = "CONNS";
    pub const SKIPS: &str = "SKIPS";
    pub const ACTIVE_IO: &str = "ACTIVE_IO";
    pub const ACTIVE_CONNECT: &str = "ACTIVE_CONNECT";
    pub const SCRATCH: &str = "SCRATCH";
    pub const TLS_CALLS: &str = "TLS_CALLS";
    pub const TLS_SOCKETS: &str = "TLS_SOCKETS";
    pub const TLS_PIDS: &str = "TLS_PIDS";
    pub const TLS_EXCLUDED: &str = "TLS_EXCLUDED";
    pub const AGENT_SOCKS: &str = "AGENT_SOCKS";
    pub const AGENT_ENDPOINTS: &str = "AGENT_ENDPOINTS";
    pub const COUNTS: &str = "COUNTS";
    pub const TCP_OUT: &str = "TCP_OUT";
    pub const TCP_IN: &str = "TCP_IN";
    pub const SERVING: &str = "SERVING";
    pub const CLIENT_IDS: &str = "CLIENT_IDS";
    pub const GO_PROCS: &str = "GO_PROCS";
    pub const SHARED_THREADS: &str = "SHARED_THREADS";
    pub const TLS_RECEIVED: &str = "TLS_RECEIVED";
    pub const HEADER_SCANS: &str = "HEADER_SCANS";
    pub const CLIENT_SOCKS: &str = "CLIENT_SOCKS";
    pub const HEADER_SCAN_JUMP: &str = "HEADER_SCAN_JUMP";
}

/// Names of the globals the agent sets with `EbpfLoader::set_global` before loading.
pub mod globals {
    /// The agent's own tgid: its I/O is never captured.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// Payload bytes to copy per syscall (clamped to `MAX_CAPTURE`).
    pub const CAPTURE_BYTES: &str = "CAPTURE_BYTES";
    /// Non-zero: only processes whose bit is set in `SELECTED_PIDS` are traced.
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    /// Ring-buffer fill level (bytes) at which the producer wakes the reader; below it the reader
    /// polls on a short timer, so wake-ups are batched instead of paid once per event.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// Offsets inside `struct sock` of the IPv6 addresses, resolved from the kernel's BTF at load time.
    pub const OFF_V6_DADDR: &str = "OFF_V6_DADDR";
    pub const OFF_V6_RCV_SADDR: &str = "OFF_V6_RCV_SADDR";
    /// Offset of `child_pid` in the `sched:sched_process_fork` record (it moved between kernel
    /// versions), read from the tracepoint's format file at load time.
    pub const OFF_FORK_CHILD_PID: &str = "OFF_FORK_CHILD_PID";
    /// Offset of `group_dead` in the `sched:sched_process_exit` record (Linux 6.16 and later; 0
    /// where it is missing, and then a process counts as gone when its main thread exits).
    pub const OFF_EXIT_GROUP_DEAD: &str = "OFF_EXIT_GROUP_DEAD";
    /// Offsets inside `struct task_struct` of `group_leader` and `start_boottime`, from the
    /// kernel's BTF at load time (0: unknown, and `ConnEvent::start_ns` stays 0).
    pub const OFF_TASK_GROUP_LEADER: &str = "OFF_TASK_GROUP_LEADER";
    pub const OFF_TASK_START_BOOTTIME: &str = "OFF_TASK_START_BOOTTIME";
    /// Offsets of `sport`, `dport` and `saddr_v6` in the `sock:inet_sock_set_state` record, read from the
    /// tracepoint's format file at load time (0: unknown, and sonde's own connections are not
    /// recognised at their other end).
    pub const OFF_STATE_SPORT: &str = "OFF_STATE_SPORT";
    pub const OFF_STATE_DPORT: &str = "OFF_STATE_DPORT";
    pub const OFF_STATE_SADDR_V6: &str = "OFF_STATE_SADDR_V6";
    /// A [`FdWalk`](super::FdWalk): the offsets that lead from the current task to the socket
    /// behind an fd, from the kernel's BTF; all zero unless the hook set finds sockets that way.
    pub const FD_WALK: &str = "FD_WALK";
    /// Non-zero: trace context goes on the wire in a TCP option (`--context-propagation tcp`).
    pub const PROPAGATE: &str = "PROPAGATE";
    /// How the goroutines of Go programs are followed (`--go on`): a [`GoRegisters`](super::GoRegisters)
    /// value, `OFF` where the kernel gives no way to read a task's saved user registers.
    pub const GO_GOROUTINES: &str = "GO_GOROUTINES";
    /// Offset of `stack` inside `struct task_struct`, from the kernel's BTF: where a task's saved
    /// user registers are found without `bpf_task_pt_regs` (`GoRegisters::TASK_STACK`).
    pub const OFF_TASK_STACK: &str = "OFF_TASK_STACK";
    /// The same walk as `FD_WALK`, for context propagation alone: it finds the socket a request is
    /// about to be written to, whatever the hook set (`FD_WALK` stays off where the socket
    /// tracepoints say which fds are sockets).
    pub const SEND_FD_WALK: &str = "SEND_FD_WALK";
    /// Offsets inside `struct tcp_sock` of `write_seq` (the sequence number the next byte written
    /// will get) and `copied_seq` (of the next byte a read will return), from the kernel's BTF.
    pub const OFF_TCP_WRITE_SEQ: &str = "OFF_TCP_WRITE_SEQ";
    pub const OFF_TCP_COPIED_SEQ: &str = "OFF_TCP_COPIED_SEQ";
}

/// Byte offsets, from the running kernel's BTF, of the fields on the way from the current task to
/// the `struct sock` behind one of its fds: `task->files->fdt->fd[fd]` is a `struct file`, whose
/// `private_data` is a `struct socket` when the file is a socket (and its `file` points back),
/// whose `sk` is the `struct sock`. Used by the syscall hook set on kernels without the socket
/// tracepoints (before 6.3). `task_files == 0`: the walk is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdWalk {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_protocol: u32,
}

impl FdWalk {
    /// The walk switched off (what the programs are built with, until the agent writes offsets).
    pub const OFF: FdWalk = FdWalk {
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_type: 0,
        socket_file: 0,
        socket_sk: 0,
        sock_family: 0,
        sock_protocol: 0,
    };
}

/// Which kind of event follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`DataEvent`] followed by `captured` payload bytes.
    Data = 1,
    /// [`ConnEvent`]: the first time a TCP socket is seen on (tgid, fd).
    Open = 2,
    /// [`CloseEvent`]: a tracked (tgid, fd) was closed.
    Close = 3,
    /// [`SpawnEvent`]: a thread of a traced process started a thread or process.
    Spawn = 4,
    /// A bare [`EventHeader`]: a traced process is mapping a file executable (loading a shared
    /// library), so the agent looks for a TLS library to hook in it.
    Mapped = 5,
    /// [`ExitEvent`]: a thread of a traced process exited.
    Exit = 6,
    /// [`ContextEvent`](propagation::ContextEvent): the trace context the kernel gave the request
    /// that the next data event of (tgid, fd) begins with.
    Context = 7,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Open),
            3 => Some(Self::Close),
            4 => Some(Self::Spawn),
            5 => Some(Self::Mapped),
            6 => Some(Self::Exit),
            7 => Some(Self::Context),
            _ => None,
        }
    }
}

/// Direction of a data event, seen from the traced process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process read these bytes from the socket.
    Ingress = 0,
    /// The process wrote these bytes to the socket.
    Egress = 1,
}

/// How the connection came to be, when the kernel saw it happen.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Existed before sonde started, or was created by a call sonde does not hook.
    Unknown = 0,
    /// Returned by `accept`/`accept4`.
    Server = 1,
    /// Opened with `connect`.
    Client = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Server,
            2 => Self::Client,
            _ => Self::Unknown,
        }
    }
}

/// Why the kernel side dropped something; index into the per-CPU `DROPS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ring buffer had no room for the event.
    RingFull = 0,
    /// A per-thread map was full, so a syscall could not be followed.
    ActiveMapFull = 1,
    /// A copy from user memory failed (payload lost, length still reported).
    CopyFailed = 2,
    /// TLS plaintext whose socket was never seen (no `SSL_set_fd`, no socket I/O inside a TLS
    /// call of that `SSL`, e.g. memory BIOs): it cannot be tied to a connection.
    TlsNoSocket = 3,
}
pub const DROP_REASONS: u32 = 4;

/// What the kernel side counts besides drops; index into the per-CPU `COUNTS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCount {
    /// Payload bytes copied into the ring buffer.
    BytesCopied = 0,
    /// Bytes that moved on connections with a [`Verdict`], not copied.
    BytesNotCopied = 1,
    /// Connections whose first bytes of a direction start nothing sonde parses.
    ConnsRefusedByFirstBytes = 2,
    /// Body bytes user space knew the length of, moved without an event (see [`SkipTo`]).
    BodyBytesSkipped = 3,
    /// Trace contexts written into a TCP option of the segment their request began.
    OptionsWritten = 4,
    /// Requests whose context could not go on the wire: their first byte did not begin a segment,
    /// or the segment had no room for the option (SACK blocks, other options).
    OptionsNotWritten = 5,
    /// Trace contexts read from a TCP option of a received segment.
    OptionsReceived = 6,
    /// Received contexts given to the request that began at their segment.
    OptionsMatched = 7,
    /// `traceparent` headers written into requests.
    HeadersInjected = 8,
    /// Requests not given a header: the send that began the head did not hold all of it (or its
    /// first `propagation::HEAD_WINDOW` bytes did not).
    HeadersNotWholeHead = 9,
    /// Requests not given a header: the head already has a `traceparent` (the receiver follows it).
    HeadersAlreadyPresent = 10,
    /// Requests not given a header: the kernel could not make room for it; the send went out as the
    /// application wrote it.
    HeadersFailed = 11,
    /// Client sockets of traced processes enrolled for header propagation.
    SocketsEnrolled = 12,
    /// Client sockets that could not be enrolled (the SOCKHASH is full, or another program's
    /// verdict already runs on the socket): their requests get no header.
    SocketsNotEnrolled = 13,
    /// Requests that forwarded the `traceparent` their thread's server request came with (a
    /// proxy): its parent id was rewritten in place to name the request's own CLIENT span.
    HeadersForwarded = 14,
    /// Goroutines of followed Go programs not read: where the task's saved user registers should
    /// have been (`GoRegisters::TASK_STACK`) the kernel stack held something else. Their work goes
    /// to nobody (no in-process parent), never to a guessed goroutine.
    GoroutinesUnread = 15,
}
pub const KERNEL_COUNTS: u32 = 16;

/// How the kernel programs read the running goroutine's `g` (R14 of the task's saved user
/// registers) at the socket and syscall hooks: the value of the `GO_GOROUTINES` global.
pub struct GoRegisters;

impl GoRegisters {
    /// Goroutines are not followed.
    pub const OFF: u32 = 0;
    /// Through `bpf_task_pt_regs` (Linux 5.15).
    pub const HELPER: u32 = 1;
    /// At the top of the task's kernel stack (`task->stack`), where x86_64 saves them on entry from
    /// user space — what `bpf_task_pt_regs` computes, for kernels without it (5.10–5.14); each
    /// read checks the user-mode segment selectors saved beside them.
    pub const TASK_STACK: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the syscall returned.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// An [`EventKind`].
    pub kind: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub header: EventHeader,
    /// Bytes the syscall really moved (its return value).
    pub len: u32,
    /// Bytes that follow this struct in the ring buffer (`<= len`, `<= CAPTURE_BYTES`).
    pub captured: u32,
    /// A [`Direction`].
    pub direction: u8,
    /// 1: plaintext of a TLS connection, captured where the process handed it to (or got it from)
    /// its TLS library; `len` is then the TLS call's byte count, not a syscall's.
    pub tls: u8,
    pub _pad: [u8; 2],
    /// Per-connection sequence number (1 for the first data after `Open`): a gap tells user space
    /// that events of this connection were dropped, so its parser state cannot be trusted.
    pub seq: u32,
    /// Bytes of this direction the socket moved before this call, counted from the first the
    /// kernel saw (0 for TLS plaintext). More than user space counted: the kernel skipped them,
    /// as user space asked (`SkipTo`), without an event.
    pub offset: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// Kernel address of the `struct sock`: tells a reused fd from the old connection.
    pub sock: u64,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// A [`Role`].
    pub role: u8,
    pub _pad: u8,
    /// IPv4 addresses use the first 4 bytes; network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// The thread's command name (`comm`, NUL-padded): names a process that exits before user
    /// space reads its /proc entry (a curl call is over in milliseconds).
    pub comm: [u8; 16],
    /// When the process started: its main thread's `start_boottime`, ns since boot (what
    /// /proc/PID/stat's field 22 gives in clock ticks). Tells this process from a later one that
    /// took its pid before user space read /proc. 0 when the kernel's BTF gave no offsets.
    pub start_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub header: EventHeader,
    /// Sequence number of the connection's last data event: if it never arrived, what the parser
    /// holds (a request "without response") is an artefact of the loss, not of the peer.
    pub last_seq: u32,
    pub _pad: u32,
}

/// `sched:sched_process_fork` in a traced process: the header's `tid` started `child_tid` (a thread
/// of the same process, or a new process). A thread started while its parent handles a request
/// makes that request's calls (worker threads).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpawnEvent {
    pub header: EventHeader,
    pub child_tid: u32,
    pub _pad: u32,
}

/// `sched:sched_process_exit` in a traced process: the header's thread exited; with `group_dead`
/// set, it was the last one and the process is gone. A process's fds are closed without a `close`
/// call at exit, and its pid (and a thread's id) may be handed out again at once: whatever is
/// kept per process or per thread must end here, or a newcomer with the same id would inherit it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub group_dead: u32,
    pub _pad: u32,
}

/// Syscall arguments kept from entry to exit, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActiveIo {
    /// User pointer: the buffer, or the iovec array, or the msghdr.
    pub buf: u64,
    /// The TCP socket behind the fd: set by the `sock:sock_{send,recv}_length` tracepoint, or
    /// found at exit by walking the task's fd table (`FdWalk`).
    pub sock: u64,
    pub fd: i32,
    /// iovec count for readv/writev.
    pub iovcnt: u32,
    /// A [`Direction`].
    pub direction: u8,
    /// An [`IoBuf`].
    pub buf_kind: u8,
    /// 1 once `sock` is known to be a TCP socket.
    pub is_tcp: u8,
    pub family: u8,
    /// 1 for a MSG_TRUNC read: TCP discarded the bytes, the buffer holds none of them.
    pub length_only: u8,
    pub _pad: [u8; 3],
}

/// What `ActiveIo::buf` points at.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBuf {
    Plain = 0,
    Iovec = 1,
    Msghdr = 2,
    /// `sendfile`: the bytes come from another file, not from user memory; only the count is sent,
    /// so the HTTP parser can step over a body it never sees.
    None = 3,
}

/// Per-(tgid, fd) state of a TCP connection in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    /// 0 until the first data proves the fd is a TCP socket (accept/connect only set the role).
    pub sock: u64,
    /// Sequence number of the last data event of this connection (1 for the first after `Open`).
    pub seq: u32,
    /// A [`Role`].
    pub role: u8,
    /// 1 once TLS calls were seen on this connection: its ciphertext is no longer sent (the
    /// plaintext comes from the TLS library's hooks).
    pub tls: u8,
    /// 1 when the other end is one of sonde's own sockets (an export to a collector on this host):
    /// nothing of the connection is sent, ever.
    pub peer_is_agent: u8,
    /// A [`Verdict`]: whether the socket's bytes are still copied.
    pub verdict: u8,
    /// One bit per [`Direction`] (`1 << direction`): the first bytes of that direction are still to
    /// be looked at. Set only for a connection seen from its start (accept/connect).
    pub unprobed: u8,
    /// 1 once a large call woke user space early for this connection's body (see the kernel's
    /// `WAKE_CALL_BYTES`); 0 again when a skipped body ends.
    pub woken: u8,
    pub _pad: [u8; 6],
    /// Bytes the socket moved so far, per [`Direction`] (`DataEvent::offset`).
    pub moved: [u64; 2],
}

impl ConnState {
    /// A connection as accept/connect leave it, before any data: its role alone. Its first data
    /// fills in the socket and, for a known role, the directions to probe.
    pub const fn with_role(role: Role) -> Self {
        Self {
            sock: 0,
            seq: 0,
            role: role as u8,
            tls: 0,
            peer_is_agent: 0,
            verdict: 0,
            unprobed: 0,
            woken: 0,
            _pad: [0; 6],
            moved: [0; 2],
        }
    }
}

/// User space, per (tgid, fd): the bytes of socket `sock` before `until[direction]` (in
/// `DataEvent::offset` terms) are the body of a message whose length it knows, and need no event.
/// The kernel skips a call that lies wholly before that point and reports the one that reaches it,
/// so the message's end keeps its time; user space reads the skipped bytes from the next event's
/// offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkipTo {
    pub sock: u64,
    pub until: [u64; 2],
}

/// Calls moving fewer bytes than this are never skipped: they cost less to report than the lookup
/// that would skip them, and a connection of small messages never pays for it.
pub const SKIP_MIN_CALL_BYTES: u64 = 1024;

/// Whether the bytes of a connection's socket are still copied to user space. Only a new socket on
/// the fd starts over: a verdict is never undone mid-stream.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Copied.
    Copy = 0,
    /// The kernel saw the first bytes of a direction, and they start no message of a protocol
    /// sonde parses (binary, TLS ciphertext outside a hooked library): socket bytes are no longer
    /// copied. Plaintext from the TLS library hooks still is.
    FirstBytes = 1,
    /// User space said it will not parse the connection (not selected, not a protocol it parses,
    /// TLS no hook decrypts): nothing more of it is copied, TLS plaintext included.
    Unwanted = 2,
}

/// One of sonde's own connections as its other end sees it: sonde's address and port (IPv4 as
/// IPv4-mapped IPv6, `::ffff:a.b.c.d`) and the port sonde connected to, all ports in host order.
/// Key of `AGENT_ENDPOINTS`. The port connected to is part of the key because another process may
/// use the same local port towards another server (Linux shares an ephemeral port between
/// destinations); it is the destination's port rather than its address because a DNAT (a
/// Kubernetes Service, a hostPort) changes the address the other end sees, and seldom the port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub peer_port: u16,
}

/// A TLS library call in progress on one worker (`TLS_CALLS`: a thread, or a goroutine of a Go
/// program), from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsCall {
    /// The library's connection object (OpenSSL's `SSL *`).
    pub ssl: u64,
    /// The plaintext buffer (data calls).
    pub buf: u64,
    /// `size_t *` where the `_ex` variants store the byte count; 0 when the return value is it.
    pub len_out: u64,
    /// The TCP socket the thread read or wrote inside the call (0 until it did).
    pub sock: u64,
    /// Its fd (-1 until seen).
    pub fd: i32,
    /// A [`Direction`].
    pub direction: u8,
    /// A [`TlsCallKind`].
    pub kind: u8,
    pub family: u8,
    /// 1 when this call's socket I/O made its connection TLS (found an `SSL` set up before sonde
    /// started): its socket is remembered for the object's later calls.
    pub became_tls: u8,
    /// 1 when the call's plaintext was sent at its entry (a Go write whose socket was known): its
    /// socket I/O and its return send nothing more.
    pub sent: u8,
    pub _pad: [u8; 7],
}

/// What a TLS call moves.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCallKind {
    /// `SSL_read`/`SSL_write` and their `_ex` variants: plaintext in `buf`.
    Data = 0,
    /// Handshake or shutdown: ciphertext only, but it tells which socket the `SSL` uses.
    Control = 1,
}

/// Key of `TLS_SOCKETS`: one library connection object of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Key of the `CONNS` map.
#[inline(always)]
pub fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// `aya::Pod`: the map values and keys the agent reads or writes. Each is `#[repr(C)]`, `Copy`, made
/// of integers and integer arrays only (valid for any bytes), with its padding spelled out as `_pad`
/// fields so that no byte is uninitialised (`layouts_have_no_implicit_padding` checks the sizes).
#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: u64, u64, i32, u32, five u8 and `_pad: [u8; 3]`: 32 bytes, no implicit padding.
    unsafe impl aya::Pod for ActiveIo {}
    // SAFETY: u64, u32, six u8, `_pad: [u8; 6]` and `[u64; 2]`: 40 bytes, no implicit padding.
    unsafe impl aya::Pod for ConnState {}
    // SAFETY: u64 and `[u64; 2]`: 24 bytes, no padding.
    unsafe impl aya::Pod for SkipTo {}
    // SAFETY: `[u8; 16]` and two u16: 20 bytes, alignment 2, no implicit padding.
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: four u64, an i32, five u8 and `_pad: [u8; 7]`: 48 bytes, no implicit padding.
    unsafe impl aya::Pod for TlsCall {}
    // SAFETY: u64, u32 and `_pad: u32`: 16 bytes, no implicit padding.
    unsafe impl aya::Pod for TlsKey {}
    // SAFETY: ten u32: 40 bytes, no implicit padding.
    unsafe impl aya::Pod for FdWalk {}
    // SAFETY: `[u8; 16]`, two `[u8; 8]`, an i32 and four u8: 40 bytes, no implicit padding.
    unsafe impl aya::Pod for propagation::Ids {}
    // SAFETY: `[u8; 16]`, `[u8; 8]`, a u32 and four u8: 32 bytes, no implicit padding.
    unsafe impl aya::Pod for propagation::WireContext {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<DataEvent>(), 48);
        assert_eq!(size_of::<ConnEvent>(), 96);
        assert_eq!(size_of::<CloseEvent>(), 32);
        assert_eq!(size_of::<SpawnEvent>(), 32);
        assert_eq!(size_of::<ExitEvent>(), 32);
        assert_eq!(size_of::<ActiveIo>(), 32);
        assert_eq!(size_of::<ConnState>(), 40);
        assert_eq!(size_of::<SkipTo>(), 24);
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<TlsCall>(), 48);
        assert_eq!(size_of::<TlsKey>(), 16);
        assert_eq!(size_of::<FdWalk>(), 40);
        assert_eq!(size_of::<propagation::Ids>(), 40);
        assert_eq!(size_of::<propagation::WireContext>(), 32);
        assert_eq!(size_of::<propagation::ContextEvent>(), 72);
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EventKind::Data,
            EventKind::Open,
            EventKind::Close,
            EventKind::Spawn,
            EventKind::Mapped,
            EventKind::Exit,
            EventKind::Context,
        ] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
        for r in [Role::Unknown, Role::Server, Role::Client] {
            assert_eq!(Role::from_u8(r as u8), r);
        }
    }
}
