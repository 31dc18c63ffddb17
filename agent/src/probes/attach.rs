//! Attaching programs to hooks: the choice between the two hook sets, with a clean fallback, and
//! the null probe that puts counting-only programs on the very same hooks.

use aya::{
    Ebpf,
    programs::{TracePoint, trace_point::TracePointLinkId},
};

use super::{HookChoice, HookSet, ProbeError};

/// Which programs serve the hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// sonde's capture programs.
    Sonde,
    /// Programs that only count their hits (`ebpf/src/null.rs`): the floor of hooking at all.
    NullProbe,
}

/// One hook: a tracepoint and the sonde program that serves it.
struct Hook {
    category: &'static str,
    name: &'static str,
    program: &'static str,
}

const fn hook(category: &'static str, name: &'static str, program: &'static str) -> Hook {
    Hook { category, name, program }
}

/// A syscall tracepoint served by the program of the same name.
const fn syscall(name: &'static str) -> Hook {
    hook("syscalls", name, name)
}

/// Connection life cycle, in both hook sets.
const CONN_HOOKS: &[Hook] = &[
    syscall("sys_exit_accept"),
    syscall("sys_exit_accept4"),
    syscall("sys_enter_connect"),
    syscall("sys_exit_connect"),
    syscall("sys_enter_close"),
];

/// Socket hook set: data is captured where the socket layer reports it.
const SOCK_CAPTURE_HOOKS: &[Hook] = &[
    hook("sock", "sock_send_length", "sock_send_capture"),
    hook("sock", "sock_recv_length", "sock_recv_capture"),
];

/// Syscall tracepoint hook set: the socket tracepoints between the syscalls' entry and exit.
const SOCK_LENGTH_HOOKS: &[Hook] = &[
    hook("sock", "sock_send_length", "sock_send_length"),
    hook("sock", "sock_recv_length", "sock_recv_length"),
];

/// Syscall tracepoint and fd-walk hook sets: entry and exit of every read/write-family syscall.
const SYSCALL_IO_HOOKS: &[Hook] = &[
    syscall("sys_enter_read"),
    syscall("sys_exit_read"),
    syscall("sys_enter_recvfrom"),
    syscall("sys_exit_recvfrom"),
    syscall("sys_enter_readv"),
    syscall("sys_exit_readv"),
    syscall("sys_enter_recvmsg"),
    syscall("sys_exit_recvmsg"),
    syscall("sys_enter_write"),
    syscall("sys_exit_write"),
    syscall("sys_enter_sendto"),
    syscall("sys_exit_sendto"),
    syscall("sys_enter_writev"),
    syscall("sys_exit_writev"),
    syscall("sys_enter_sendmsg"),
    syscall("sys_exit_sendmsg"),
    syscall("sys_enter_sendfile64"),
    syscall("sys_exit_sendfile64"),
];

/// Whether `program` reads the task's saved registers (`bpf_task_pt_regs`, 5.15 on): the socket
/// set's capture programs, which a kernel without that helper refuses to load.
pub fn needs_task_regs(program: &str) -> bool {
    SOCK_CAPTURE_HOOKS.iter().any(|h| h.program == program)
}

/// The tracepoints the socket and syscall tracepoint hook sets need (added in 6.3).
pub const SOCK_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];

/// Attaches the `chosen` hook set; returns the set in use. Chosen by `auto`, the socket set falls
/// back to the syscall tracepoints if the kernel refuses it after all (a verifier that differs).
pub fn attach(
    ebpf: &mut Ebpf,
    chosen: HookSet,
    choice: HookChoice,
    programs: Programs,
) -> Result<HookSet, ProbeError> {
    match attach_set(ebpf, chosen, programs) {
        Err(e) if chosen == HookSet::Sock && choice == HookChoice::Auto => {
            tracing::info!(error = %e, "socket hook set unavailable; using syscall tracepoints");
            attach_set(ebpf, HookSet::Tracepoints, programs)?;
            Ok(HookSet::Tracepoints)
        }
        result => result.map(|()| chosen),
    }
}

/// Thread starts (`sched:sched_process_fork`), for calls made by worker threads: optional — without
/// it, only the thread that read a request parents its calls. False (and logged) when unavailable.
pub fn attach_thread_starts(ebpf: &mut Ebpf, programs: Programs) -> bool {
    let program = match programs {
        Programs::Sonde => "sched_process_fork",
        Programs::NullProbe => "null_tracepoint",
    };
    match attach_tracepoint(ebpf, program, "sched", "sched_process_fork") {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "thread starts are not seen: calls made by worker threads start their own traces");
            false
        }
    }
}

/// Thread and process exits (`sched:sched_process_exit`): what sonde keeps per process or thread
/// ends with them, before a reused pid or tid could inherit it; a TLS call the thread was in will
/// never return. Optional — without it, exited processes are noticed by a periodic check.
pub fn attach_exits(ebpf: &mut Ebpf, programs: Programs) {
    let program = match programs {
        Programs::Sonde => "sched_process_exit",
        Programs::NullProbe => "null_tracepoint",
    };
    if let Err(e) = attach_tracepoint(ebpf, program, "sched", "sched_process_exit") {
        tracing::warn!(
            error = %e,
            "process exits are not seen: their connections are dropped within a second, and a thread killed inside a TLS call leaves its record"
        );
    }
}

/// sonde's own connections (`sock:inet_sock_set_state`), so that their other end is not traced: a
/// collector on this host would otherwise get a span for every export, which sonde would export in
/// the next one (`ebpf/src/own.rs`). Optional — logged when unavailable.
pub fn attach_own_connections(ebpf: &mut Ebpf, programs: Programs) {
    let program = match programs {
        Programs::Sonde => "inet_sock_set_state",
        Programs::NullProbe => return,
    };
    if let Err(e) = attach_tracepoint(ebpf, program, "sock", "inet_sock_set_state") {
        tracing::warn!(
            error = %e,
            "sonde's own connections are not recognised: a collector on this host that sonde exports to gets spans of sonde's exports"
        );
    }
}

/// The tracepoint the TLS hooks need besides the library's: executable file mappings
/// (`syscalls:sys_enter_mmap`, for libraries loaded after start-up). Optional, logged when
/// unavailable.
pub fn attach_tls_helpers(ebpf: &mut Ebpf, programs: Programs) {
    let helpers =
        [("mmap_exec", "syscalls", "sys_enter_mmap", "TLS libraries loaded after start-up are not hooked")];
    for (program, category, name, consequence) in helpers {
        let program = match programs {
            Programs::Sonde => program,
            Programs::NullProbe => "null_tracepoint",
        };
        if let Err(e) = attach_tracepoint(ebpf, program, category, name) {
            tracing::warn!(error = %e, "{category}:{name} unavailable: {consequence}");
        }
    }
}

/// Attaches every hook of `set`, or none: on an error the ones already attached are detached.
fn attach_set(ebpf: &mut Ebpf, set: HookSet, programs: Programs) -> Result<(), ProbeError> {
    let (io_hooks, between): (&[Hook], &[Hook]) = match set {
        HookSet::Sock => (SOCK_CAPTURE_HOOKS, &[]),
        HookSet::Tracepoints => (SYSCALL_IO_HOOKS, SOCK_LENGTH_HOOKS),
        HookSet::FdWalk => (SYSCALL_IO_HOOKS, &[]),
    };
    let mut attached: Vec<(&'static str, TracePointLinkId)> = Vec::new();
    for hook in between.iter().chain(io_hooks).chain(CONN_HOOKS) {
        let program = match programs {
            Programs::Sonde => hook.program,
            Programs::NullProbe => "null_tracepoint",
        };
        match attach_tracepoint(ebpf, program, hook.category, hook.name) {
            Ok(link) => attached.push((program, link)),
            Err(e) => {
                for (program, link) in attached {
                    if let Some(Ok(p)) = ebpf.program_mut(program).map(<&mut TracePoint>::try_from) {
                        let _ = p.detach(link);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Loads `program` on first use (one tracepoint program may serve many tracepoints) and attaches it.
pub(super) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<TracePointLinkId, ProbeError> {
    let prog = loaded_program!(ebpf, program, TracePoint);
    prog.attach(category, name).map_err(|source| ProbeError::Attach {
        program,
        target: format!("{category}/{name}"),
        source,
    })
}
