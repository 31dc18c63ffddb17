//! The Go runtime's function table (`.gopclntab`), which every Go binary keeps for stack traces and
//! the garbage collector — also when it is stripped with `-s -w`, which removes `.symtab` and
//! DWARF. It names every function and gives its entry address, so sonde finds the functions it
//! hooks without a symbol table.
//!
//! Layout (Go's `runtime/symtab.go`, `cmd/link/internal/ld/pcln.go`), for the versions sonde reads:
//!
//! ```text
//! magic u32 | 0 u8 | 0 u8 | pc quantum u8 | pointer size u8 | nfunc uintptr | nfiles uintptr
//! [text start uintptr: 1.18 on] | funcnametab | cutab | filetab | pctab | functab  (offsets, uintptr)
//! ```
//!
//! `functab` holds `nfunc + 1` pairs (entry, offset of the function's `_func` from `functab`): two
//! `u32` from 1.18 on (entry relative to the text start), two `uintptr` before. A `_func` begins
//! with its entry (same width as in the pair) and the offset of its name in `funcnametab`, an
//! `i32`. The last pair's entry is the end of the last function.

use std::collections::HashMap;

/// Go 1.16 and 1.17.
const MAGIC_1_16: u32 = 0xffff_fffa;
/// Go 1.18 and 1.19.
const MAGIC_1_18: u32 = 0xffff_fff0;
/// Go 1.20 on (the table's layout did not change; the magic says the runtime's own did).
const MAGIC_1_20: u32 = 0xffff_fff1;

/// Where a function's code is, as virtual addresses of the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncRange {
    pub entry: u64,
    /// The next function's entry: this one's code, padding included, ends before it.
    pub end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("the function table is {0} bytes, too short for its header")]
    Short(usize),
    #[error("unknown function table magic {0:#x}: Go 1.16 or later is needed")]
    Magic(u32),
    #[error("the function table is for {0}-byte pointers; only 8-byte ones are read")]
    PointerSize(u8),
    #[error("the function table's {what} at {at} lies outside its {len} bytes")]
    OutOfBounds { what: &'static str, at: u64, len: usize },
}

/// The table's header, its offsets resolved.
struct Header {
    /// 1.18 on: 32-bit entries relative to `text_start`.
    relative: bool,
    nfunc: u64,
    text_start: u64,
    funcnametab: u64,
    functab: u64,
}

/// Finds `wanted` functions by name in `table` (the bytes of `.gopclntab`). Names not in the
/// table are absent from the answer.
pub fn find(table: &[u8], wanted: &[&str]) -> Result<HashMap<String, FuncRange>, PclntabError> {
    let header = header(table)?;
    let pair = if header.relative { 8 } else { 16 };
    let mut found = HashMap::new();
    for i in 0..header.nfunc {
        let at = header.functab + i * pair;
        let (entry, func_offset) = read_pair(table, at, header.relative)?;
        let (end, _) = read_pair(table, at + pair, header.relative)?;
        // `_func.nameoff` follows `_func.entry(off)`.
        let name_at = header.functab + func_offset + if header.relative { 4 } else { 8 };
        let name_offset = u64::from(u32_at(table, name_at, "a function's name offset")?);
        let name = c_string(table, header.funcnametab + name_offset)?;
        if let Some(&w) = wanted.iter().find(|w| w.as_bytes() == name) {
            let base = if header.relative { header.text_start } else { 0 };
            found.insert(w.to_owned(), FuncRange { entry: base + entry, end: base + end });
            if found.len() == wanted.len() {
                break;
            }
        }
    }
    Ok(found)
}

fn header(table: &[u8]) -> Result<Header, PclntabError> {
    if table.len() < 8 {
        return Err(PclntabError::Short(table.len()));
    }
    let magic = u32_at(table, 0, "the magic")?;
    let relative = match magic {
        MAGIC_1_16 => false,
        MAGIC_1_18 | MAGIC_1_20 => true,
        other => return Err(PclntabError::Magic(other)),
    };
    if table[7] != 8 {
        return Err(PclntabError::PointerSize(table[7]));
    }
    let word = |i: u64| u64_at(table, 8 + i * 8, "a header word");
    let nfunc = word(0)?;
    // 1.18 on: nfiles, text start, then the offsets; before: nfiles, then the offsets.
    let (text_start, first_offset) = if relative { (word(2)?, 3) } else { (0, 2) };
    Ok(Header {
        relative,
        nfunc,
        text_start,
        funcnametab: word(first_offset)?,
        functab: word(first_offset + 4)?,
    })
}

fn read_pair(table: &[u8], at: u64, relative: bool) -> Result<(u64, u64), PclntabError> {
    if relative {
        Ok((
            u64::from(u32_at(table, at, "a function's entry")?),
            u64::from(u32_at(table, at + 4, "a function's entry")?),
        ))
    } else {
        Ok((u64_at(table, at, "a function's entry")?, u64_at(table, at + 8, "a function's entry")?))
    }
}

fn bytes_at<const N: usize>(table: &[u8], at: u64, what: &'static str) -> Result<[u8; N], PclntabError> {
    usize::try_from(at)
        .ok()
        .and_then(|start| table.get(start..start.checked_add(N)?))
        .and_then(|b| b.try_into().ok())
        .ok_or(PclntabError::OutOfBounds { what, at, len: table.len() })
}

fn u32_at(table: &[u8], at: u64, what: &'static str) -> Result<u32, PclntabError> {
    bytes_at(table, at, what).map(u32::from_le_bytes)
}

fn u64_at(table: &[u8], at: u64, what: &'static str) -> Result<u64, PclntabError> {
    bytes_at(table, at, what).map(u64::from_le_bytes)
}

/// The NUL-terminated name at `at`.
fn c_string(table: &[u8], at: u64) -> Result<&[u8], PclntabError> {
    let out = || PclntabError::OutOfBounds { what: "a function's name", at, len: table.len() };
    let start = usize::try_from(at).ok().filter(|&s| s < table.len()).ok_or_else(out)?;
    let rest = &table[start..];
    let end = memchr::memchr(0, rest).ok_or_else(out)?;
    Ok(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.18-style table with two functions, "a.f" at text+0x10 and "b.g" at text+0x40, ending
    /// at text+0x80.
    fn table_1_18(magic: u32) -> Vec<u8> {
        let text = 0x40_1000u64;
        let mut t = Vec::new();
        t.extend_from_slice(&magic.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        let header_words = 8u64;
        let funcnametab = 8 + header_words * 8;
        let names = b"a.f\0b.g\0";
        let functab = funcnametab + names.len() as u64;
        for w in [2, 0, text, funcnametab, 0, 0, 0, functab] {
            t.extend_from_slice(&u64::to_le_bytes(w));
        }
        t.extend_from_slice(names);
        // functab: 3 pairs, then two `_func`s (entryoff, nameoff).
        let funcs: u32 = 3 * 8;
        for (entry, func) in [(0x10u32, funcs), (0x40, funcs + 8), (0x80, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&func.to_le_bytes());
        }
        for (entry, name) in [(0x10u32, 0u32), (0x40, 4)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        t
    }

    #[test]
    fn functions_are_found_by_name_with_their_ranges() {
        for magic in [MAGIC_1_18, MAGIC_1_20] {
            let found = find(&table_1_18(magic), &["b.g", "a.f", "c.missing"]).expect("a valid table");
            assert_eq!(found.len(), 2);
            assert_eq!(found["a.f"], FuncRange { entry: 0x40_1010, end: 0x40_1040 });
            assert_eq!(found["b.g"], FuncRange { entry: 0x40_1040, end: 0x40_1080 });
        }
    }

    #[test]
    fn garbage_gives_an_error_not_a_panic() {
        assert_eq!(find(&[1, 2, 3], &["x"]), Err(PclntabError::Short(3)));
        let mut t = table_1_18(MAGIC_1_18);
        assert!(matches!(find(&t[..40], &["a.f"]), Err(PclntabError::OutOfBounds { .. })));
        t[0] = 0;
        assert!(matches!(find(&t, &["a.f"]), Err(PclntabError::Magic(_))));
        let mut t = table_1_18(MAGIC_1_18);
        t[7] = 4;
        assert_eq!(find(&t, &["a.f"]), Err(PclntabError::PointerSize(4)));
        // Every truncation of a valid table is an error or a partial answer, never a panic.
        let t = table_1_18(MAGIC_1_18);
        for n in 0..t.len() {
            let _ = find(&t[..n], &["a.f", "b.g"]);
        }
    }
}
