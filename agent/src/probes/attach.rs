//! Attaching programs to hooks: the choice between the two hook sets, with a clean fallback, and
//! the null probe that puts counting-only programs on the very same hooks.

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, TracePoint},
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

impl Programs {
    fn tracepoint(self, tracepoint: &'static str) -> &'static str {
        match self {
            Programs::Sonde => tracepoint,
            Programs::NullProbe => "null_tracepoint",
        }
    }

    fn tp_btf(self, target: &'static str) -> &'static str {
        match (self, target) {
            (Programs::Sonde, "sys_enter") => "tp_btf_sys_enter",
            (Programs::Sonde, _) => "tp_btf_sys_exit",
            (Programs::NullProbe, "sys_enter") => "null_sys_enter",
            (Programs::NullProbe, _) => "null_sys_exit",
        }
    }
}

/// The syscall tracepoints of the classic hook set; each has a program of the same name.
const SYSCALL_TRACEPOINTS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_close",
];
pub const SOCK_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];

const BTF_TARGETS: &[&str] = &["sys_enter", "sys_exit"];

/// Attaches the socket tracepoints and the chosen syscall hook set; returns the set in use.
pub fn attach(ebpf: &mut Ebpf, choice: HookChoice, programs: Programs) -> Result<HookSet, ProbeError> {
    for tp in SOCK_TRACEPOINTS {
        attach_tracepoint(ebpf, programs.tracepoint(tp), "sock", tp)?;
    }
    match choice {
        HookChoice::Tracepoints => attach_syscall_tracepoints(ebpf, programs),
        HookChoice::TpBtf => attach_tp_btf(ebpf, programs),
        HookChoice::Auto if std::env::consts::ARCH != "x86_64" => attach_syscall_tracepoints(ebpf, programs),
        HookChoice::Auto => attach_tp_btf(ebpf, programs).or_else(|e| {
            tracing::info!(error = %e, "tp_btf unavailable; using syscall tracepoints");
            attach_syscall_tracepoints(ebpf, programs)
        }),
    }
}

/// Loads `program` on first use (one tracepoint program may serve many tracepoints) and attaches it.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<(), ProbeError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram { program })?
        .try_into()
        .map_err(|source| ProbeError::LoadProgram { program, source })?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| ProbeError::LoadProgram { program, source })?;
    }
    prog.attach(category, name).map_err(|source| ProbeError::Attach {
        program,
        target: format!("{category}/{name}"),
        source,
    })?;
    Ok(())
}

fn attach_syscall_tracepoints(ebpf: &mut Ebpf, programs: Programs) -> Result<HookSet, ProbeError> {
    for tp in SYSCALL_TRACEPOINTS {
        attach_tracepoint(ebpf, programs.tracepoint(tp), "syscalls", tp)?;
    }
    Ok(HookSet::Tracepoints)
}

fn attach_tp_btf(ebpf: &mut Ebpf, programs: Programs) -> Result<HookSet, ProbeError> {
    let btf = Btf::from_sys_fs()?;
    let mut attached = Vec::new();
    for &target in BTF_TARGETS {
        let program = programs.tp_btf(target);
        let result = (|| {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|source| ProbeError::LoadProgram { program, source })?;
            prog.load(target, &btf).map_err(|source| ProbeError::LoadProgram { program, source })?;
            prog.attach().map_err(|source| ProbeError::Attach {
                program,
                target: format!("tp_btf/{target}"),
                source,
            })
        })();
        match result {
            Ok(link) => attached.push((program, link)),
            Err(e) => {
                // Undo a half attach so the fallback does not see syscalls twice.
                for (program, link) in attached {
                    if let Some(Ok(p)) = ebpf.program_mut(program).map(<&mut BtfTracePoint>::try_from) {
                        let _ = p.detach(link);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(HookSet::TpBtf)
}
