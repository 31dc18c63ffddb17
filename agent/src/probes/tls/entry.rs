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

/// Finds `Internal` in the library at `path`; None when the code does not have the known shape.
pub fn internal_functions(path: &std::path::Path) -> Option<Internal> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let data = std::fs::read(path).ok()?;
    let elf = object::File::parse(&*data).ok()?;
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
    for (slot, (ex, plain)) in
        found.iter_mut().zip([("SSL_read_ex", "SSL_read"), ("SSL_write_ex", "SSL_write")])
    {
        let (ex, plain) = (symbol(ex)?, symbol(plain)?);
        let target = first_call(ex, code(ex, 16)?)?;
        if !starts_with_push(code(target, 2)?)
            || !calls(plain, code(plain, PLAIN_SCAN).unwrap_or(&[]), target)
        {
            return None;
        }
        *slot = file_offset(target)?;
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

/// `push %reg` (`50+r`, or `41 50+r` for r8–r15): an instruction the kernel emulates.
fn starts_with_push(code: &[u8]) -> bool {
    matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..])
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

        assert!(starts_with_push(&[0x41, 0x55]));
        assert!(starts_with_push(&[0x53]));
        assert!(!starts_with_push(&[0x48, 0x83]));
        assert!(!starts_with_push(&[0xf3, 0x0f]));

        // SSL_read at 0x35430 calls 0x35290 from 0x3544e.
        let mut plain = vec![0x90; 0x1e];
        plain.extend_from_slice(&[0xe8, 0x3d, 0xfe, 0xff, 0xff]);
        assert!(calls(0x35430, &plain, 0x35290));
        assert!(!calls(0x35430, &plain, 0x35291));
    }

    #[test]
    fn finds_the_internal_functions_of_the_system_library_or_declines() {
        let system = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !system.exists() {
            return;
        }
        // Whatever the build, an answer must point at pushes inside the file.
        if let Some(internal) = internal_functions(system) {
            let data = std::fs::read(system).unwrap();
            for offset in [internal.read, internal.write] {
                assert!(starts_with_push(&data[offset as usize..]), "{internal:?}");
            }
            assert_ne!(internal.read, internal.write);
        }
    }
}
