//! Go programs, as sonde reads them: which Go release built a binary and where the functions are
//! that sonde hooks to follow goroutines and requests through them. The binary's own tables are
//! enough — the build info and the runtime's function table stay in binaries stripped with
//! `-s -w` — so no symbol table or DWARF is needed.

mod buildinfo;
mod hooks;
mod pclntab;
mod returns;

use std::{collections::BTreeMap, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ReadCache};

pub use buildinfo::GoVersion;
pub use hooks::GoHooks;
pub use pclntab::FuncRange;

/// The oldest release sonde reads: Go 1.17 brought the register-based calling convention on amd64
/// (arguments in RAX, RBX, …, the current goroutine in R14), which the hooks rely on.
pub const OLDEST: GoVersion = GoVersion { major: 1, minor: 17, patch: 0 };

pub const NEWPROC1: &str = "runtime.newproc1";
pub const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
pub const REQUEST_WRITE: &str = "net/http.(*Request).write";
pub const TLS_READ: &str = "crypto/tls.(*Conn).Read";
pub const TLS_WRITE: &str = "crypto/tls.(*Conn).Write";
pub const TLS_CLIENT_HANDSHAKE: &str = "crypto/tls.(*Conn).clientHandshake";
pub const TLS_SERVER_HANDSHAKE: &str = "crypto/tls.(*Conn).serverHandshake";

/// The functions sonde hooks (`hooks.rs`), and what each one tells.
pub const FUNCTIONS: &[(&str, &str)] = &[
    (NEWPROC1, "a goroutine starts another, which works for the same request"),
    (ROUND_TRIP, "a goroutine issues a client request, for the request it serves"),
    (REQUEST_WRITE, "the transport's write goroutine writes that client request"),
    (TLS_READ, "HTTPS: the plaintext a TLS connection's reader gets"),
    (TLS_WRITE, "HTTPS: the plaintext a TLS connection's writer gives"),
    (TLS_CLIENT_HANDSHAKE, "HTTPS: a client's handshake, which tells the connection's socket"),
    (TLS_SERVER_HANDSHAKE, "HTTPS: a server's handshake, which tells the connection's socket"),
];

/// A function found in a binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its code, as virtual addresses.
    pub range: FuncRange,
    /// Where its entry is in the file: what a uprobe is attached at.
    pub file_offset: u64,
    /// The virtual addresses of its RET instructions, where its returns are caught; None when its
    /// code could not be decoded.
    pub returns: Option<Vec<u64>>,
}

impl Function {
    /// Where its RET instructions are in the file.
    pub fn return_offsets(&self) -> Option<Vec<u64>> {
        let returns = self.returns.as_ref()?;
        Some(returns.iter().map(|&address| self.file_offset + (address - self.range.entry)).collect())
    }
}

/// What sonde knows of one Go binary.
#[derive(Debug)]
pub struct GoBinary {
    /// The version string as the binary names it (`go1.19.8`).
    pub version_text: String,
    /// That version as a release, if it is one.
    pub version: Option<GoVersion>,
    /// Whether the binary has a symbol table (`-s` removes it; sonde does not need it).
    pub has_symbols: bool,
    /// The [`FUNCTIONS`] found, by name.
    pub functions: BTreeMap<&'static str, Function>,
}

impl GoBinary {
    /// Whether sonde can hook this binary: a Go release it reads, for amd64.
    pub fn supported(&self) -> bool {
        self.version.is_some_and(|v| v >= OLDEST)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GoBinaryError {
    #[error("cannot read {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not an ELF file sonde reads")]
    Elf { path: String, source: object::Error },
    #[error("{path} is not a Go program (it has no .go.buildinfo section)")]
    NotGo { path: String },
    #[error("{path} is built for {arch:?}; sonde reads Go programs for x86-64")]
    Architecture { path: String, arch: object::Architecture },
    #[error("{path}: its Go build info cannot be read")]
    BuildInfo { path: String, source: buildinfo::BuildInfoError },
    #[error("{path}: the Go version's address {address:#x} is not in the file")]
    VersionAddress { path: String, address: u64 },
    #[error("{path} has no Go function table (.gopclntab)")]
    NoFunctionTable { path: String },
    #[error("{path}: its Go function table cannot be read")]
    FunctionTable { path: String, source: pclntab::PclntabError },
}

/// Reads the Go binary at `path`: its version and where the [`FUNCTIONS`] are. Reads the ELF
/// headers and the two Go sections, not the whole file.
pub fn inspect(path: &Path) -> Result<GoBinary, GoBinaryError> {
    let shown = path.display().to_string();
    let file =
        std::fs::File::open(path).map_err(|source| GoBinaryError::Read { path: shown.clone(), source })?;
    let cache = ReadCache::new(file);
    let elf =
        object::File::parse(&cache).map_err(|source| GoBinaryError::Elf { path: shown.clone(), source })?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(GoBinaryError::Architecture { path: shown, arch: elf.architecture() });
    }
    let section_bytes = |name: &str| elf.section_by_name(name).and_then(|s| s.data().ok());
    let buildinfo =
        section_bytes(".go.buildinfo").ok_or_else(|| GoBinaryError::NotGo { path: shown.clone() })?;
    let version_text = match buildinfo::version_at(buildinfo)
        .map_err(|source| GoBinaryError::BuildInfo { path: shown.clone(), source })?
    {
        buildinfo::VersionAt::Inline(text) => text.to_owned(),
        buildinfo::VersionAt::StringHeader(address) => string_at(&elf, address)
            .ok_or_else(|| GoBinaryError::VersionAddress { path: shown.clone(), address })?,
    };
    let table =
        section_bytes(".gopclntab").ok_or_else(|| GoBinaryError::NoFunctionTable { path: shown.clone() })?;
    let names: Vec<&str> = FUNCTIONS.iter().map(|&(name, _)| name).collect();
    let found = pclntab::find(table, &names)
        .map_err(|source| GoBinaryError::FunctionTable { path: shown.clone(), source })?;
    let functions = FUNCTIONS
        .iter()
        .filter_map(|&(name, _)| {
            let range = *found.get(name)?;
            let code = bytes_at(&elf, range.entry, range.end.checked_sub(range.entry)?);
            let returns = code.and_then(|code| returns::ret_addresses(code, range));
            Some((name, Function { range, file_offset: file_offset(&elf, range.entry)?, returns }))
        })
        .collect();
    Ok(GoBinary {
        version: GoVersion::parse(&version_text),
        version_text,
        has_symbols: elf.symbol_table().is_some(),
        functions,
    })
}

/// The file offset of virtual address `address`: through the loadable segment that maps it.
fn file_offset<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>, address: u64) -> Option<u64> {
    elf.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (address >= start && address - start < size).then(|| offset + (address - start))
    })
}

/// The Go string whose header (data address, length) is at virtual address `address`.
fn string_at<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>, address: u64) -> Option<String> {
    let header = bytes_at(elf, address, 16)?;
    let data = u64::from_le_bytes(header[..8].try_into().ok()?);
    let len = u64::from_le_bytes(header[8..].try_into().ok()?);
    // A version string is short; anything longer is not one.
    let bytes = bytes_at(elf, data, len.min(256))?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn bytes_at<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
    len: u64,
) -> Option<&'data [u8]> {
    elf.sections().find_map(|section| section.data_range(address, len).ok().flatten())
}
