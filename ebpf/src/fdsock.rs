//! The TCP socket behind an fd, found by walking the current task's fd table — for the syscall
//! hook set on kernels without the `sock:sock_{send,recv}_length` tracepoints (before 6.3), where
//! nothing else tells a socket read from a file or pipe read.
//!
//! `task->files->fdt`, bounded by `fdt->max_fds`, then `fdt->fd[fd]` is the `struct file`. A
//! socket's file has the `struct socket` as `private_data` and the socket points back at its file:
//! that back-pointer is what proves the file is a socket (any other file's `private_data` is
//! something else, whose bytes at that offset are not this file's address). Then the socket must
//! be a stream socket whose `struct sock` is AF_INET/AF_INET6 and IPPROTO_TCP.
//!
//! Walked afresh at every read or write that moved bytes, so an fd reused by dup2, dup3,
//! close_range or exec can never be mistaken for the socket it held before. The offsets come from
//! the kernel's BTF at load (`FD_WALK`); every read goes through `bpf_probe_read_kernel`, which
//! fails cleanly on a bad address, so a wrong offset loses the capture, never the kernel.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use sonde_common::{AF_INET, AF_INET6, FdWalk};

use crate::maps::{FD_WALK, SEND_FD_WALK};

const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;

/// Which of the two walks: the capture's (`FD_WALK`), or context propagation's (`SEND_FD_WALK`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    Capture,
    Send,
}

#[inline(always)]
fn offsets(walk: Walk) -> FdWalk {
    let global = if walk == Walk::Capture { &FD_WALK } else { &SEND_FD_WALK };
    // SAFETY: a reference to a static, read volatile so that the value the agent wrote before load
    // is used rather than the zeros it was compiled with.
    unsafe { core::ptr::read_volatile(global) }
}

/// `T` at `base + offset` in kernel memory, or None when the helper cannot read it.
#[inline(always)]
fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: the pointer is only handed to the helper, which copies through the kernel's
    // fault-tolerant path and fails on an unmapped address; `T` is an integer, valid for any bytes.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The `struct sock` address and address family of the TCP socket behind the current task's
/// `fd`, or None when `fd` is anything else (or the walk is off).
#[inline(always)]
pub fn tcp_socket(walk: Walk, fd: i32) -> Option<(u64, u16)> {
    let o = offsets(walk);
    if o.task_files == 0 || fd < 0 {
        return None;
    }
    // SAFETY: a helper without arguments: it returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, o.task_files)?;
    let fdt: u64 = read(files, o.files_fdt)?;
    let max_fds: u32 = read(fdt, o.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt, o.fdt_fd)?;
    let file: u64 = read(fd_array, (fd as u32) * 8)?;
    let socket: u64 = read(file, o.file_private_data)?;
    let back: u64 = read(socket, o.socket_file)?;
    if back != file {
        return None;
    }
    let kind: u16 = read(socket, o.socket_type)?;
    if kind != SOCK_STREAM {
        return None;
    }
    let sock: u64 = read(socket, o.socket_sk)?;
    let family: u16 = read(sock, o.sock_family)?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let protocol: u16 = read(sock, o.sock_protocol)?;
    (protocol == IPPROTO_TCP).then_some((sock, family))
}
