//! Which hook set sees socket reads and writes: chosen from the kernel's features (`Features`), or
//! as the user asked (`--hooks`), with an error that names what the kernel lacks.

use super::{features::Features, prereq::PrereqError};

/// Which hooks see socket reads and writes (`--hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// The cheapest set this kernel allows: `sock`, else `tracepoints`, else `fd-walk`.
    Auto,
    /// Capture in the socket tracepoints (Linux 6.3+, x86_64), with the syscall's arguments read
    /// from the task's saved registers: one program run per socket read or write, nothing for any
    /// other syscall.
    Sock,
    /// Entry and exit tracepoints of each read/write syscall, with the socket tracepoints (Linux
    /// 6.3+) saying which fds are TCP: any architecture; a map update per read or write of any fd.
    Tracepoints,
    /// Entry and exit tracepoints of each read/write syscall, the socket behind the fd found by
    /// walking the task's fd table at exit: any kernel with the BPF ring buffer and BTF (5.8+).
    /// A map update and up to ten kernel reads per read or write of any fd.
    FdWalk,
}

/// The hook set in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSet {
    Sock,
    Tracepoints,
    FdWalk,
}

impl std::fmt::Display for HookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookSet::Sock => "socket tracepoints",
            HookSet::Tracepoints => "syscall tracepoints",
            HookSet::FdWalk => "syscall tracepoints with the fd-table walk",
        })
    }
}

/// The set to attach for `choice` on a kernel with `features` (`x86_64`: the socket set reads that
/// architecture's saved registers), or why there is none.
pub fn choose(choice: HookChoice, features: &Features, x86_64: bool) -> Result<HookSet, PrereqError> {
    if !features.ring_buffer {
        return Err(PrereqError::Missing {
            what: "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
            why: "sonde needs Linux 5.8 or newer, or a kernel with the ring buffer backported",
        });
    }
    let sock_ok = || -> Result<HookSet, PrereqError> {
        if !features.sock_tracepoints {
            return Err(SOCK_TRACEPOINTS_MISSING);
        }
        if !features.task_regs {
            return Err(PrereqError::Missing {
                what: "the bpf_task_pt_regs and bpf_get_current_task_btf helpers (Linux 5.15)",
                why: "--hooks sock reads the syscall's arguments from the task's registers; use --hooks tracepoints",
            });
        }
        if !x86_64 {
            return Err(PrereqError::Missing {
                what: "x86_64",
                why: "--hooks sock reads x86_64's saved registers; use --hooks tracepoints",
            });
        }
        Ok(HookSet::Sock)
    };
    let tracepoints_ok =
        || if features.sock_tracepoints { Ok(HookSet::Tracepoints) } else { Err(SOCK_TRACEPOINTS_MISSING) };
    let fd_walk_ok = || {
        if features.btf {
            Ok(HookSet::FdWalk)
        } else {
            Err(PrereqError::Missing {
                what: "BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)",
                why: "the fd-table walk takes its struct offsets from it",
            })
        }
    };
    match choice {
        HookChoice::Sock => sock_ok(),
        HookChoice::Tracepoints => tracepoints_ok(),
        HookChoice::FdWalk => fd_walk_ok(),
        HookChoice::Auto => sock_ok().or_else(|_| tracepoints_ok()).or_else(|_| {
            fd_walk_ok().map_err(|_| PrereqError::Missing {
                what: "the socket tracepoints (Linux 6.3) and BTF",
                why: "without either, nothing tells a socket's reads and writes from a file's",
            })
        }),
    }
}

const SOCK_TRACEPOINTS_MISSING: PrereqError = PrereqError::Missing {
    what: "the sock:sock_send_length and sock:sock_recv_length tracepoints (Linux 6.3)",
    why: "this hook set needs them; --hooks fd-walk works without",
};

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Features = Features { ring_buffer: true, sock_tracepoints: true, task_regs: true, btf: true };

    #[test]
    fn auto_takes_the_cheapest_set_the_kernel_allows() {
        let linux_6_1 = Features { sock_tracepoints: false, ..ALL };
        let linux_5_10 = Features { sock_tracepoints: false, task_regs: false, ..ALL };
        let backported = Features { task_regs: false, ..ALL };
        let cases = [
            (ALL, true, HookSet::Sock),
            (ALL, false, HookSet::Tracepoints),
            (backported, true, HookSet::Tracepoints),
            (linux_6_1, true, HookSet::FdWalk),
            (linux_5_10, true, HookSet::FdWalk),
        ];
        for (features, x86_64, want) in cases {
            assert_eq!(
                choose(HookChoice::Auto, &features, x86_64).unwrap(),
                want,
                "{features} x86_64={x86_64}"
            );
        }
    }

    #[test]
    fn a_set_the_kernel_cannot_run_is_an_error_naming_what_is_missing() {
        let old = Features { sock_tracepoints: false, task_regs: false, ..ALL };
        let cases: [(HookChoice, Features, &str); 5] = [
            (HookChoice::Sock, old, "sock:sock_send_length"),
            (HookChoice::Tracepoints, old, "Linux 6.3"),
            (HookChoice::Sock, Features { task_regs: false, ..ALL }, "bpf_task_pt_regs"),
            (HookChoice::FdWalk, Features { btf: false, ..ALL }, "BTF"),
            (HookChoice::Auto, Features { ring_buffer: false, ..ALL }, "Linux 5.8"),
        ];
        for (choice, features, needle) in cases {
            let error = choose(choice, &features, true).unwrap_err().to_string();
            assert!(error.contains(needle), "{choice:?} on {features}: {error}");
        }
        assert_eq!(choose(HookChoice::FdWalk, &ALL, false).unwrap(), HookSet::FdWalk);
        let none = Features { sock_tracepoints: false, btf: false, ..ALL };
        assert!(choose(HookChoice::Auto, &none, true).unwrap_err().to_string().contains("and BTF"));
    }
}
