//! What the running kernel offers sonde, probed at start-up rather than read off its version
//! number: distribution kernels backport features (RHEL above all), and a version check would
//! refuse kernels that have everything or start on kernels that lack something.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};

use sonde_common::GoRegisters;

use super::{attach, btf_offsets, prereq};

/// The kernel features the hook sets depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The BPF ring buffer (Linux 5.8): every event goes through one, so sonde needs it.
    pub ring_buffer: bool,
    /// `sock:sock_send_length` and `sock:sock_recv_length` (Linux 6.3): they tell socket reads
    /// and writes from all other fd I/O.
    pub sock_tracepoints: bool,
    /// `bpf_task_pt_regs` (5.15) and `bpf_get_current_task_btf` (5.11): the socket hook set reads
    /// the syscall's arguments from the task's saved registers.
    pub task_regs: bool,
    /// `/sys/kernel/btf/vmlinux`, the source of every struct offset sonde reads.
    pub btf: bool,
}

impl Features {
    pub fn detect() -> Self {
        let tracepoint_helper = |helper: BpfHelper| {
            is_helper_supported(ProgramType::TracePoint, helper).unwrap_or_else(|e| {
                tracing::debug!(error = %e, ?helper, "probing a BPF helper failed; taken as missing");
                false
            })
        };
        Features {
            ring_buffer: is_map_supported(MapType::RingBuf).unwrap_or(false),
            sock_tracepoints: attach::SOCK_TRACEPOINTS.iter().all(|tp| prereq::tracepoint_exists("sock", tp)),
            task_regs: tracepoint_helper(BpfHelper::BPF_FUNC_task_pt_regs)
                && tracepoint_helper(BpfHelper::BPF_FUNC_get_current_task_btf),
            btf: std::path::Path::new(btf_offsets::VMLINUX_BTF).exists(),
        }
    }

    /// How the running goroutine's register can be read at the socket and syscall hooks here (a
    /// `GoRegisters` value): with `bpf_task_pt_regs`, else from the top of the task's kernel stack
    /// (x86_64, whose layout sonde knows, with the stack's offset from BTF).
    pub fn goroutine_registers(&self) -> u32 {
        if self.task_regs {
            GoRegisters::HELPER
        } else if self.btf && cfg!(target_arch = "x86_64") {
            GoRegisters::TASK_STACK
        } else {
            GoRegisters::OFF
        }
    }
}

/// What `sonde check-kernel` and the start-up log say of a `GoRegisters` value.
pub fn describe_goroutine_registers(how: u32) -> &'static str {
    match how {
        GoRegisters::HELPER => "followed (saved registers through bpf_task_pt_regs)",
        GoRegisters::TASK_STACK => {
            "followed (saved registers found at the top of the task's kernel stack: no bpf_task_pt_regs)"
        }
        _ => {
            "not followed (no way to read a task's saved registers: no bpf_task_pt_regs, and no BTF on x86_64)"
        }
    }
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "ring_buffer={} sock_tracepoints={} task_regs={} btf={}",
            yes_no(self.ring_buffer),
            yes_no(self.sock_tracepoints),
            yes_no(self.task_regs),
            yes_no(self.btf),
        )
    }
}
