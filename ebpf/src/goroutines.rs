//! Goroutines of Go programs: who works for a request there. Go runs goroutines on a few threads,
//! and `net/http` writes a client request from a goroutine of its own, so the thread says nothing;
//! the goroutine does, with three uprobes that carry a request's context from goroutine to
//! goroutine:
//!
//! - `runtime.newproc1` (entry and return): a goroutine started by one that works for a request
//!   works for it too — and a new goroutine whose `g` an exited one used starts clean.
//! - `net/http.(*persistConn).roundTrip`, in the goroutine that issued a client request: the
//!   request (`*http.Request`, the first field of its `transportRequest`) belongs to the server
//!   request that goroutine serves.
//! - `net/http.(*Request).write`, in the transport's write goroutine: it works for that server
//!   request while it writes this one, so the write's context is chosen as for a thread.
//!
//! Under Go's register calling convention (1.17 on, amd64) the arguments are in RAX, RBX, RCX…,
//! a result in RAX, and the running goroutine's `g` in R14 — in Go code and at the syscalls its
//! runtime makes, where the socket and syscall hooks read it from the task's saved registers
//! (`worker`): with `bpf_task_pt_regs` from 5.15, from the top of the task's kernel stack before.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    programs::{ProbeContext, RetProbeContext},
};
use sonde_common::{GoRegisters, KernelCount, propagation::Ids};

use crate::maps::{
    CLIENT_IDS, GO_GOROUTINES, GO_NEWPROC, GO_PROCS, GO_REQUESTS, GO_WRITING, OFF_TASK_STACK, SERVING,
    Worker, count, global_u32,
};

/// `struct pt_regs` on x86_64, in u64 slots: r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx,
/// dx, si, di, orig_ax, ip, cs, flags, sp, ss.
const REG_R14: usize = 1;
const REG_CS: usize = 17;
const REG_SS: usize = 20;
const PT_REGS_SLOTS: usize = 21;
/// x86_64's kernel stacks: four pages (`THREAD_SIZE`; eight with KASAN, whose kernels fail the
/// selector check below and follow no goroutine).
const THREAD_SIZE: u64 = 16 * 1024;
/// The selectors saved with user-mode registers on x86_64 (`__USER_CS`, `__USER_DS`).
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;

/// Who is running for `pid_tgid`: its goroutine in a Go program sonde follows, else its thread.
/// None for a followed Go program whose goroutine cannot be read: nobody, rather than a thread
/// that goroutines share.
#[inline(always)]
pub fn worker(pid_tgid: u64) -> Option<Worker> {
    let thread = Worker::thread(pid_tgid as u32);
    // A constant of the object: the verifier drops the branches not taken, so kernels without
    // `bpf_task_pt_regs` (or any way to read the registers) still take the programs.
    let how = global_u32(&GO_GOROUTINES);
    if how == GoRegisters::OFF {
        return Some(thread);
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once from the map's element; a plain integer.
    let Some(generation) = (unsafe { GO_PROCS.get(&tgid) }).copied() else {
        return Some(thread);
    };
    let g = if how == GoRegisters::HELPER { r14_by_helper()? } else { r14_from_task_stack()? };
    (g != 0).then_some(Worker { id: g, tgid, generation })
}

/// The current task's saved user R14, through `bpf_task_pt_regs` (5.15).
#[inline(always)]
fn r14_by_helper() -> Option<u64> {
    // SAFETY: the current task's BTF pointer is valid for the whole program run;
    // `bpf_task_pt_regs` only computes where its saved user registers are, typed by the verifier
    // as `struct pt_regs *`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return None;
    }
    // SAFETY: non-null (checked), a constant slot of x86_64's `struct pt_regs`; the verifier checks
    // the load against the BTF type and runs it as a probe load.
    Some(unsafe { *regs.add(REG_R14) })
}

/// The current task's saved user R14, from the top of its kernel stack — where x86_64 saves a
/// task's user registers when it enters the kernel, and what `bpf_task_pt_regs` computes. The
/// `cs` and `ss` saved with them must be user mode's, else (another stack size or layout) the
/// read is counted and nobody is returned.
#[inline(always)]
fn r14_from_task_stack() -> Option<u64> {
    let stack_off = global_u32(&OFF_TASK_STACK) as u64;
    if stack_off == 0 {
        return None;
    }
    // SAFETY: a helper without arguments: it returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: kernel addresses handed to the helper, never dereferenced: it copies through the
    // kernel's fault-tolerant path or fails (a wrong offset reads wrong bytes, caught below); the
    // results are plain integers, valid for any bytes.
    let stack = unsafe { bpf_probe_read_kernel((task + stack_off) as *const u64) }.ok()?;
    let regs = stack + THREAD_SIZE - (PT_REGS_SLOTS * 8) as u64;
    let slot = |i: usize| {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel((regs + (i * 8) as u64) as *const u64) }.unwrap_or(0)
    };
    if slot(REG_CS) != USER_CS || slot(REG_SS) != USER_DS {
        count(KernelCount::GoroutinesUnread, 1);
        return None;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((regs + (REG_R14 * 8) as u64) as *const u64) }.ok()
}

/// Whether `tgid` is a Go program whose goroutines are followed.
#[inline(always)]
pub fn followed(tgid: u32) -> bool {
    // SAFETY: only whether an entry exists is looked at.
    global_u32(&GO_GOROUTINES) != GoRegisters::OFF && unsafe { GO_PROCS.get(&tgid) }.is_some()
}

/// The current process's generation in `GO_PROCS`; 0: its goroutines are not followed.
///
/// Plain integers rather than `Option<Worker>`s: with two of those LLVM reads the payload of a
/// `None` it never wrote, which verifiers before 6.3 refuse (stack bytes never written).
#[inline(always)]
fn generation(pid_tgid: u64) -> u32 {
    // SAFETY: copied out at once; a plain integer.
    (unsafe { GO_PROCS.get(&((pid_tgid >> 32) as u32)) }).copied().unwrap_or(0)
}

/// Goroutine (or request) `id` of the current process, followed in `generation`.
#[inline(always)]
fn goroutine(pid_tgid: u64, generation: u32, id: u64) -> Worker {
    Worker { id, tgid: (pid_tgid >> 32) as u32, generation }
}

/// `worker` works for the server request `ids` name, on no connection of its own (fd -1) — or,
/// with none, for none: an entry left from an earlier goroutine on the same `g`, or an earlier
/// request, must never stand. A reference, not an `Option<Ids>` (see [`generation`]).
#[inline(always)]
fn work_for(worker: &Worker, ids: Option<&Ids>) {
    match ids {
        Some(ids) => {
            let ids = Ids { fd: -1, ..*ids };
            let _ = SERVING.insert(worker, &ids, 0);
        }
        None => {
            let _ = SERVING.remove(worker);
        }
    }
}

/// `runtime.newproc1(fn, callergp, callerpc, …) *g`, on the system stack: the caller's `g` is its
/// second argument (RBX), kept until the return gives the new one.
#[inline(always)]
pub fn newproc1_enter(ctx: &ProbeContext, pid_tgid: u64) {
    // SAFETY: the probe's own saved registers, valid for the program run.
    let callergp = unsafe { (*ctx.regs).rbx };
    let _ = GO_NEWPROC.insert(&pid_tgid, &callergp, 0);
}

#[inline(always)]
pub fn newproc1_return(ctx: &RetProbeContext, pid_tgid: u64) {
    // SAFETY: copied out at once; only this thread's probes write its entry.
    let Some(callergp) = (unsafe { GO_NEWPROC.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = GO_NEWPROC.remove(&pid_tgid);
    // SAFETY: the probe's own saved registers; RAX holds the result.
    let newg = unsafe { (*ctx.regs).rax };
    let generation = generation(pid_tgid);
    if generation == 0 || callergp == 0 || newg == 0 {
        return;
    }
    let (parent, child) = (goroutine(pid_tgid, generation, callergp), goroutine(pid_tgid, generation, newg));
    crate::tls::goroutine_starts(&child);
    let _ = GO_WRITING.remove(&child);
    let _ = CLIENT_IDS.remove(&child);
    // The child answers on no connection: it works for the request until it reads one of its own.
    // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated elements,
    // read at once; `Ids` is plain integers, valid for any bytes another CPU writes.
    work_for(&child, unsafe { SERVING.get(&parent) });
}

/// `net/http.(*persistConn).roundTrip(pc, treq *transportRequest)`, in the goroutine that issued
/// the request: RBX is `treq`, whose first field is the `*http.Request` the write goroutine writes.
#[inline(always)]
pub fn round_trip(ctx: &ProbeContext, pid_tgid: u64) {
    // SAFETY: the probe's own saved registers.
    let (g, treq) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rbx) };
    // SAFETY: `treq` is a user address, never dereferenced: the helper copies 8 bytes or fails.
    let Ok(request) = (unsafe { bpf_probe_read_user(treq as *const u64) }) else {
        return;
    };
    let generation = generation(pid_tgid);
    if generation == 0 || g == 0 || request == 0 {
        return;
    }
    let (issuer, request) = (goroutine(pid_tgid, generation, g), goroutine(pid_tgid, generation, request));
    // Filed even when the issuer serves nothing (a trace id of zeros): every request the transport
    // writes has its entry, so that `request_write` can tell a new request at a reused address
    // from its own entry run again.
    // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated elements,
    // copied out at once; `Ids` is plain integers, valid for any bytes another CPU writes.
    let _ = GO_REQUESTS.insert(&request, unsafe { SERVING.get(&issuer) }.unwrap_or(&SERVES_NOTHING), 0);
}

/// In `GO_REQUESTS`: the goroutine that issued the request served none.
const SERVES_NOTHING: Ids = Ids {
    trace_id: [0; 16],
    span_id: [0; 8],
    parent_id: [0; 8],
    fd: -1,
    flags: 0,
    origin: 0,
    header: 0,
    _pad: 0,
};

/// `net/http.(*Request).write(r, w, …)`, in the transport's write goroutine: RAX is `r`. The
/// goroutine works for `r`'s server request while it writes it — or for none.
///
/// Like every Go function's entry, this one runs twice when the goroutine's stack must grow first
/// (the runtime copies the stack and starts the function over): the second run finds `r` taken by
/// this goroutine (`GO_WRITING`) and keeps the context the first one gave. A new request at the
/// same address is never taken for that: `roundTrip` filed it (`GO_REQUESTS`), whoever issued it.
#[inline(always)]
pub fn request_write(ctx: &ProbeContext, pid_tgid: u64) {
    // SAFETY: the probe's own saved registers.
    let (g, request) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    let generation = generation(pid_tgid);
    if generation == 0 || g == 0 || request == 0 {
        return;
    }
    let writer = goroutine(pid_tgid, generation, g);
    let key = goroutine(pid_tgid, generation, request);
    // SAFETY: the lookup's non-null, aligned pointer into the LRU map's preallocated elements,
    // read at once; `Ids` is plain integers, valid for any bytes another CPU writes.
    let filed = unsafe { GO_REQUESTS.get(&key) };
    // SAFETY: copied out at once; only this goroutine's hooks write its entry.
    if filed.is_none() && unsafe { GO_WRITING.get(&writer) }.is_some_and(|&taken| taken == request) {
        return;
    }
    // None: a request the transport did not issue, or whose issuer served none.
    work_for(&writer, filed.filter(|ids| ids.trace_id != SERVES_NOTHING.trace_id));
    // Taken once: a later `write` of a request at this address (one written outside the transport,
    // after this one was freed) must not find it. A retry goes through `roundTrip` again.
    let _ = GO_REQUESTS.remove(&key);
    let _ = GO_WRITING.insert(&writer, &request, 0);
}
