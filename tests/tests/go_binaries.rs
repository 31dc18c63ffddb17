//! Go programs as sonde reads them (`sonde check-binary`): the Go release that built a binary and
//! where the functions sonde hooks are, checked against the Go toolchain's own `go tool nm`, for
//! each toolchain the tests install (1.19 and 1.23: the runtime's function table changed in 1.20),
//! with a symbol table and stripped of it (`-s -w`: only Go's own tables are left).

use std::{collections::BTreeMap, path::Path, process::Command};

use sonde_tests::{
    chains::{GO_TOOLCHAINS, build_go_chain},
    harness::sonde_bin,
};

/// What `sonde check-binary` says of one function: its entry, its file offset, its RET instructions.
type Found = (u64, u64, Vec<u64>);

/// `sonde check-binary PATH`: (version line, function name → what it found).
fn check_binary(path: &Path) -> (String, BTreeMap<String, Found>) {
    let out =
        Command::new(sonde_bin()).arg("check-binary").arg(path).output().expect("running sonde check-binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sonde check-binary {}: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("a hex number");
    let functions = lines
        .filter_map(|l| {
            // function NAME: entry 0x…, file offset 0x…, N bytes, returns at 0x… 0x… (…)
            let (name, rest) = l.strip_prefix("function ")?.split_once(": entry ")?;
            let (entry, rest) = rest.split_once(", file offset ")?;
            let (offset, rest) = rest.split_once(',')?;
            let (_, rest) = rest.split_once("returns at ")?;
            let (returns, _) = rest.split_once(" (")?;
            Some((name.to_owned(), (hex(entry), hex(offset), returns.split(' ').map(hex).collect())))
        })
        .collect();
    (first, functions)
}

/// The text symbols of `binary`, as `go tool nm` of the toolchain that built it prints them.
fn go_nm(go: &Path, binary: &Path) -> BTreeMap<String, u64> {
    let out = Command::new(go).args(["tool", "nm"]).arg(binary).output().expect("running go tool nm");
    assert!(out.status.success(), "go tool nm: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            (fields.next()? == "T").then_some(())?;
            Some((fields.collect::<Vec<_>>().join(" "), address))
        })
        .collect()
}

/// The addresses of the RET instructions of function `name` in `binary`, as `objdump` decodes it
/// (through the symbol table).
fn objdump_returns(binary: &Path, name: &str) -> Vec<u64> {
    let out = Command::new("objdump")
        .arg(format!("--disassemble={name}"))
        .arg(binary)
        .output()
        .expect("running objdump (binutils; `cargo xtask setup` installs it)");
    assert!(out.status.success(), "objdump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // `  4c1a2b:\tc3                   \tret` (`retq` in older binutils)
            let (address, rest) = l.trim_start().split_once(':')?;
            let mnemonic = rest.split('\t').nth(2)?.split_whitespace().next()?;
            matches!(mnemonic, "ret" | "retq").then(|| u64::from_str_radix(address, 16).ok())?
        })
        .collect()
}

/// The file offset of a virtual address, from the ELF program headers as `readelf` prints them.
fn readelf_file_offset(binary: &Path, address: u64) -> u64 {
    let out = Command::new("readelf").args(["-lW"]).arg(binary).output().expect("running readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (offset, vaddr, filesz) = (hex(f[1]), hex(f[2]), hex(f[4]));
            (address >= vaddr && address < vaddr + filesz).then(|| offset + (address - vaddr))
        })
        .unwrap_or_else(|| panic!("{address:#x} is in no LOAD segment of {}", binary.display()))
}

#[test]
fn go_functions_are_found_in_binaries_with_and_without_symbols() {
    let mut checked = 0;
    for go in GO_TOOLCHAINS.iter().map(Path::new) {
        if !go.exists() {
            // Both are installed by `cargo xtask setup`, which `cargo xtask test` runs first.
            panic!("{} is not installed: run `cargo xtask setup`", go.display());
        }
        let version =
            Command::new(go).arg("version").env("GOTOOLCHAIN", "local").output().expect("go version");
        let version = String::from_utf8_lossy(&version.stdout);
        // `go version go1.19.8 linux/amd64`
        let release = version.split_whitespace().nth(2).expect("a go version line").to_owned();

        let plain = build_go_chain(go, false);
        let stripped = build_go_chain(go, true);
        let symbols = go_nm(go, &plain);
        let (first, found) = check_binary(&plain);
        assert!(
            first.contains(&format!("built by {release} (with a symbol table), read by sonde")),
            "{first}"
        );
        // chain.go serves and calls over HTTP: every function is there, where the toolchain says.
        for (name, (entry, offset, returns)) in &found {
            assert_eq!(Some(entry), symbols.get(name), "{name} in {release}");
            assert_eq!(*offset, readelf_file_offset(&plain, *entry), "{name}'s file offset in {release}");
            assert!(!returns.is_empty(), "{name} in {release}: no RET found");
            assert_eq!(returns, &objdump_returns(&plain, name), "{name}'s RET instructions in {release}");
        }
        for name in [
            "runtime.newproc1",
            "net/http.(*persistConn).roundTrip",
            "net/http.(*Request).write",
            "crypto/tls.(*Conn).Read",
            "crypto/tls.(*Conn).Write",
            "crypto/tls.(*Conn).clientHandshake",
            "crypto/tls.(*Conn).serverHandshake",
        ] {
            assert!(found.contains_key(name), "{name} not found in the {release} build");
        }

        // Stripping removes the symbol table, not the code: the same functions at the same places.
        let nm_stripped = Command::new(go).args(["tool", "nm"]).arg(&stripped).output().expect("go tool nm");
        assert!(!nm_stripped.status.success(), "the stripped {release} build still has symbols");
        let (first, found_stripped) = check_binary(&stripped);
        assert!(first.contains("(stripped of its symbol table), read by sonde"), "{first}");
        assert_eq!(found_stripped, found, "{release}: stripped against not");
        checked += 1;
    }
    assert_eq!(checked, GO_TOOLCHAINS.len());
}

#[test]
fn what_is_not_a_go_program_is_a_clear_error() {
    let dir = sonde_tests::harness::TempDir::new("go-binaries");
    let garbage = dir.path.join("garbage");
    std::fs::write(&garbage, b"\x7fELF but not really").unwrap();
    let cases = [
        (Path::new("/bin/sh").to_path_buf(), "is not a Go program"),
        (garbage, "is not an ELF file sonde reads"),
        (dir.path.join("missing"), "cannot read"),
    ];
    for (path, expected) in cases {
        let out = Command::new(sonde_bin()).arg("check-binary").arg(&path).output().expect("running sonde");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", path.display());
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
    }
}
