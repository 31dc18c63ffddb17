//! The Go version a binary was built with, from its `.go.buildinfo` section (what `go version
//! FILE` prints; Go's `debug/buildinfo`). Kept in stripped binaries too.
//!
//! The section starts with a 32-byte header: the magic `"\xff Go buildinf:"`, the pointer size, and
//! flags. From Go 1.18 on (flag bit 1) the version follows the header inline, as a length (a
//! uvarint) and its bytes. Before, the header holds the address of a Go string header (data
//! address, length) that points at the version.

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_VERSION_INLINE: u8 = 0x2;

/// The Go release a binary names, e.g. `go1.19.8` → 1.19.8. Pre-releases (`go1.21rc2`) count as
/// their release; a development toolchain (`devel …`) is not a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub fn parse(text: &str) -> Option<GoVersion> {
        let rest = text.strip_prefix("go")?;
        // `go1.21rc2`, `go1.22.0 X:nocoverageredesign`: the release is the leading digits and dots.
        let end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let mut parts = rest[..end].split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(GoVersion { major, minor, patch })
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Where the version string is, as found in the section.
#[derive(Debug, PartialEq, Eq)]
pub enum VersionAt<'a> {
    /// Go 1.18 on: the version itself.
    Inline(&'a str),
    /// Before: the virtual address of a Go string header, little-endian and 8-byte pointers.
    StringHeader(u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("the .go.buildinfo section does not start with Go's magic")]
    Magic,
    #[error("the .go.buildinfo section is for a big-endian or {0}-byte-pointer target")]
    Target(u8),
    #[error("the .go.buildinfo section is cut short")]
    Short,
    #[error("the version in .go.buildinfo is not text")]
    NotText,
}

/// Reads the header of `section` (the bytes of `.go.buildinfo`).
pub fn version_at(section: &[u8]) -> Result<VersionAt<'_>, BuildInfoError> {
    if !section.starts_with(MAGIC) {
        return Err(BuildInfoError::Magic);
    }
    let header = section.get(..HEADER_LEN).ok_or(BuildInfoError::Short)?;
    let (pointer_size, flags) = (header[14], header[15]);
    if flags & FLAG_VERSION_INLINE != 0 {
        let (len, used) = uvarint(&section[HEADER_LEN..]).ok_or(BuildInfoError::Short)?;
        let start = HEADER_LEN + used;
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|len| section.get(start..start.checked_add(len)?))
            .ok_or(BuildInfoError::Short)?;
        return std::str::from_utf8(bytes).map(VersionAt::Inline).map_err(|_| BuildInfoError::NotText);
    }
    if pointer_size != 8 || flags & FLAG_BIG_ENDIAN != 0 {
        return Err(BuildInfoError::Target(pointer_size));
    }
    let address = u64::from_le_bytes(header[16..24].try_into().map_err(|_| BuildInfoError::Short)?);
    Ok(VersionAt::StringHeader(address))
}

/// Go's `encoding/binary.Uvarint`: the value and the bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u8) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&[8, flags]);
        h.resize(HEADER_LEN, 0);
        h
    }

    #[test]
    fn versions_parse_as_releases() {
        let v = |major, minor, patch| Some(GoVersion { major, minor, patch });
        assert_eq!(GoVersion::parse("go1.19.8"), v(1, 19, 8));
        assert_eq!(GoVersion::parse("go1.23.4 X:nocoverageredesign"), v(1, 23, 4));
        assert_eq!(GoVersion::parse("go1.21rc2"), v(1, 21, 0));
        assert_eq!(GoVersion::parse("go1.17"), v(1, 17, 0));
        assert_eq!(GoVersion::parse("devel go1.22-abc"), None);
        assert_eq!(GoVersion::parse(""), None);
        assert!(GoVersion::parse("go1.17").unwrap() < GoVersion::parse("go1.19.8").unwrap());
        assert_eq!(GoVersion::parse("go1.19.8").unwrap().to_string(), "1.19.8");
    }

    #[test]
    fn the_version_is_read_inline_or_found_by_address() {
        let mut s = header(FLAG_VERSION_INLINE);
        s.push(8);
        s.extend_from_slice(b"go1.19.8");
        s.extend_from_slice(&[0, 0]);
        assert_eq!(version_at(&s), Ok(VersionAt::Inline("go1.19.8")));

        let mut s = header(0);
        s[16..24].copy_from_slice(&0x6a_1f20u64.to_le_bytes());
        assert_eq!(version_at(&s), Ok(VersionAt::StringHeader(0x6a_1f20)));
    }

    #[test]
    fn a_damaged_section_is_an_error() {
        assert_eq!(version_at(b"\x7fELF"), Err(BuildInfoError::Magic));
        assert_eq!(version_at(MAGIC), Err(BuildInfoError::Short));
        let mut s = header(FLAG_VERSION_INLINE);
        s.push(200);
        assert_eq!(version_at(&s), Err(BuildInfoError::Short));
        let mut s = header(FLAG_VERSION_INLINE);
        s.extend_from_slice(&[2, 0xff, 0xfe]);
        assert_eq!(version_at(&s), Err(BuildInfoError::NotText));
        let mut s = header(0);
        s[14] = 4;
        assert_eq!(version_at(&s), Err(BuildInfoError::Target(4)));
    }
}
