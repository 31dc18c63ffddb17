//! Where the data hooks go in one OpenSSL file.
//!
//! A uprobe replaces an instruction with a breakpoint; after the trap the kernel either emulates
//! the instruction it replaced (branches, nops, `push`) or single-steps a copy of it out of line,
//! which is a second trap. On the VMs this project runs on that second trap is most of the cost: a
//! hook (entry and return) on `SSL_read_ex`, which starts with `sub $8,%rsp`, costs 17.9 µs per
//! call; on the internal function it calls, which starts with `push %r13`, 2.7 µs
//! (docs/performance.md, "HTTPS").
//!
//! OpenSSL's `SSL_read` and `SSL_read_ex` both call one internal function with the `_ex`
//! arguments — `ssl_read_internal(s, buf, num, *readbytes)`, 1 on success — and the same holds for
//! writes. Hooking it covers both exported functions at the lower cost. It is not exported, so it
//! is found through the exported functions' machine code, and only when that code has exactly the
//! expected shape; anything else (another compiler, another OpenSSL, another architecture) falls
//! back to the exported functions.

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

/// File offsets of the internal read and write functions, when they can be hooked cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Internal {
    pub read: u64,
    pub write: u64,
}

/// What a library file is, for hooking.
#[derive(Debug, PartialEq, Eq)]
pub enum Library {
    /// Not an ELF object for this machine's architecture (its registers would be misread).
    Foreign,
    /// Hookable; with the internal functions when they were found.
    Native(Option<Internal>),
}

/// Reads the library `data` (the whole file).
pub fn inspect(data: &[u8]) -> Library {
    let Ok(elf) = object::File::parse(data) else {
        return Library::Foreign;
    };
    let native = match elf.architecture() {
        object::Architecture::X86_64 => cfg!(target_arch = "x86_64"),
        object::Architecture::Aarch64 => cfg!(target_arch = "aarch64"),
        _ => false,
    };
    if !native || !elf.is_64() {
        return Library::Foreign;
    }
    Library::Native(if cfg!(target_arch = "x86_64") { internal_functions(&elf, data) } else { None })
}

/// Finds `Internal` in an x86_64 library; None when the code does not have the known shape.
fn internal_functions(elf: &object::File<'_>, data: &[u8]) -> Option<Internal> {
    let code = |vaddr: u64, len: u64| -> Option<&[u8]> {
        elf.segments().find_map(|seg| {
            let (start, size) = seg.file_range();
            let inside = vaddr.checked_sub(seg.address()).filter(|&o| o + len <= size)?;
            data.get(usize::try_from(start + inside).ok()?..usize::try_from(start + inside + len).ok()?)
        })
    };
    let symbol = |name: &str| elf.dynamic_symbols().find(|s| s.name() == Ok(name)).map(|s| s.address());
    let file_offset = |vaddr: u64| {
        elf.segments().find_map(|seg| {
            let (start, size) = seg.file_range();
            vaddr.checked_sub(seg.address()).filter(|&o| o < size).map(|o| start + o)
        })
    };
    let mut found = [0u64; 2];
    let pairs = [("SSL_read_ex", "SSL_read"), ("SSL_write_ex", "SSL_write")];
    for (slot, (ex, plain)) in found.iter_mut().zip(pairs) {
        let (ex, plain) = (symbol(ex)?, symbol(plain)?);
        let target = first_call(ex, code(ex, 16)?)?;
        let push = push_at(code(target, 6)?)?;
        if !calls(plain, code(plain, PLAIN_SCAN).unwrap_or(&[]), target) {
            return None;
        }
        // After an `endbr64` the stack is still as the caller left it, which the return probe
        // needs (it replaces the return address at the stack pointer).
        *slot = file_offset(target + push)?;
    }
    Some(Internal { read: found[0], write: found[1] })
}

/// How far into `SSL_read`/`SSL_write` the call to the internal function is looked for (it
/// follows a stack-protector load and an argument check).
const PLAIN_SCAN: u64 = 128;

/// `[endbr64] [sub $imm8,%rsp] call|jmp rel32` at the start of `code` (at `vaddr`): the target.
fn first_call(vaddr: u64, code: &[u8]) -> Option<u64> {
    let mut at = 0;
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        at += 4;
    }
    if code.get(at..at + 3) == Some(&[0x48, 0x83, 0xec]) {
        at += 4;
    }
    match code.get(at)? {
        0xe8 | 0xe9 => rel32_target(vaddr, code, at),
        _ => None,
    }
}

/// The target of the `call`/`jmp rel32` whose opcode is at `code[at]`.
fn rel32_target(vaddr: u64, code: &[u8], at: usize) -> Option<u64> {
    let rel = i32::from_le_bytes(code.get(at + 1..at + 5)?.try_into().ok()?);
    (vaddr + at as u64 + 5).checked_add_signed(rel.into())
}

/// Where the function's first `push %reg` is (`50+r`, or `41 50+r` for r8–r15: an instruction
/// the kernel emulates): at its start, or after an `endbr64` (builds with `-fcf-protection`).
fn push_at(code: &[u8]) -> Option<u64> {
    let is_push = |c: &[u8]| matches!(c, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]);
    if is_push(code) {
        Some(0)
    } else if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) && is_push(&code[4..]) {
        Some(4)
    } else {
        None
    }
}

/// Whether `code` (at `vaddr`) holds a `call rel32` to `target`.
fn calls(vaddr: u64, code: &[u8], target: u64) -> bool {
    (0..code.len()).any(|at| code[at] == 0xe8 && rel32_target(vaddr, code, at) == Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_openssl_compiles_to() {
        // Debian 12's libssl.so.3: SSL_read_ex at 0x354c0 is `sub $0x8,%rsp; call 0x35290`.
        let ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2];
        assert_eq!(first_call(0x354c0, &ex), Some(0x35290));
        let with_endbr = [0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x10, 0x00, 0x00, 0x00];
        assert_eq!(first_call(0x1000, &with_endbr), Some(0x1000 + 4 + 5 + 0x10));
        // Anything else is not guessed at.
        assert_eq!(first_call(0x1000, &[0x55, 0x48, 0x89, 0xe5]), None);
        assert_eq!(first_call(0x1000, &[0x48, 0x83, 0xec, 0x08]), None);

        assert_eq!(push_at(&[0x41, 0x55]), Some(0));
        assert_eq!(push_at(&[0x53]), Some(0));
        assert_eq!(push_at(&[0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x57]), Some(4));
        assert_eq!(push_at(&[0x48, 0x83]), None);
        assert_eq!(push_at(&[0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83]), None);

        // SSL_read at 0x35430 calls 0x35290 from 0x3544e.
        let mut plain = vec![0x90; 0x1e];
        plain.extend_from_slice(&[0xe8, 0x3d, 0xfe, 0xff, 0xff]);
        assert!(calls(0x35430, &plain, 0x35290));
        assert!(!calls(0x35430, &plain, 0x35291));
    }

    #[test]
    fn finds_the_internal_functions_of_the_system_library() {
        let system = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Ok(data) = std::fs::read(system) else {
            eprintln!("skipped: no {}", system.display());
            return;
        };
        match inspect(&data) {
            Library::Native(Some(internal)) => {
                for offset in [internal.read, internal.write] {
                    assert_eq!(push_at(&data[offset as usize..]), Some(0), "{internal:?}");
                }
                assert_ne!(internal.read, internal.write);
            }
            // Debian 12's build has the shape (the numbers in docs/performance.md come from it).
            other => assert!(
                !std::fs::read_to_string("/etc/debian_version").is_ok_and(|v| v.starts_with("12.")),
                "{other:?}"
            ),
        }
        assert_eq!(inspect(b"not an ELF file"), Library::Foreign);
    }
}
