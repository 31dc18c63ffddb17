//! Where a Go function returns: the addresses of its RET instructions, found by decoding its code.
//! A uretprobe would replace the return address on the goroutine's stack, and the Go runtime moves
//! goroutine stacks (copying them as they grow), taking the replaced address along: the return
//! would then jump into the kernel's trampoline from a stack it no longer knows. A uprobe on each
//! RET sees the same registers as a return probe, and changes nothing on the stack.
//!
//! Go's compiler puts no data among a function's instructions (jump tables live in read-only data),
//! so decoding from the entry to the next function's finds every instruction; the padding between
//! functions is INT3.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use super::FuncRange;

/// The virtual addresses of the RET instructions in `code`, the bytes of function `range`. None if
/// some bytes are no instruction: then the code is not what sonde took it for, and no return of it
/// can be trusted to be found.
pub fn ret_addresses(code: &[u8], range: FuncRange) -> Option<Vec<u64>> {
    let mut decoder = Decoder::with_ip(64, code, range.entry, DecoderOptions::NONE);
    let mut returns = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return None;
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            returns.push(instruction.ip());
        }
    }
    Some(returns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: FuncRange = FuncRange { entry: 0x40_1000, end: 0x40_1010 };

    #[test]
    fn every_ret_is_found_and_nothing_else() {
        // mov rax, rbx; ret; add rsp, 0x18; ret 8; int3; int3
        let code = [0x48, 0x89, 0xd8, 0xc3, 0x48, 0x83, 0xc4, 0x18, 0xc2, 0x08, 0x00, 0xcc, 0xcc];
        assert_eq!(ret_addresses(&code, AT), Some(vec![0x40_1003, 0x40_1008]));
    }

    #[test]
    fn a_c3_byte_inside_an_instruction_is_no_return() {
        // mov eax, 0xc3c3c3c3; jmp rel8 -2 (0xeb 0xc3 would be a jump back); ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xeb, 0xc3, 0xc3];
        assert_eq!(ret_addresses(&code, AT), Some(vec![0x40_1007]));
    }

    #[test]
    fn bytes_that_are_no_instruction_give_no_answer() {
        // 0x06 (push es) does not exist in 64-bit mode.
        assert_eq!(ret_addresses(&[0xc3, 0x06, 0xc3], AT), None);
    }

    #[test]
    fn a_truncated_instruction_gives_no_answer() {
        // mov eax, imm32 cut after two bytes of its immediate.
        assert_eq!(ret_addresses(&[0xc3, 0xb8, 0x01, 0x02], AT), None);
    }
}
