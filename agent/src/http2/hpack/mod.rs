//! HPACK (RFC 7541), the header compression of HTTP/2, decoded by an observer that may have joined
//! the connection late.
//!
//! Each direction of a connection has its own dynamic table, filled by the header blocks sent in
//! that direction; a field may be a reference to an entry inserted by an earlier block. sonde sees
//! a connection's blocks only from the moment it started (or from a loss), so the entries inserted
//! before are unknown to it. Two facts make the rest exact:
//! - a dynamic index counts from the newest entry, and every entry inserted since sonde began
//!   following is newer than every entry it did not see: an index up to the number of insertions
//!   seen names one of them, exactly;
//! - an encoder references only live entries, so eviction never makes such an index name another
//!   entry. sonde evicts by a lower bound of each entry's size (a name it never saw counts as
//!   empty): it may drop an entry the peer still has, which then reads as unknown, never keep one
//!   in the wrong place.
//!
//! A reference past what sonde saw gives [`Text::Unknown`], never a guess. A block sonde could not
//! decode whole (lost, truncated, malformed) leaves the table in a state it cannot follow: the
//! decoder forgets every entry ([`Decoder::lose`]) and knows again only what is inserted after.

mod static_table;

#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

pub use static_table::STATIC as STATIC_TABLE;
use static_table::STATIC;

/// The dynamic table's size limit until a `SETTINGS_HEADER_TABLE_SIZE` says otherwise (RFC 9113,
/// §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// The most table bytes sonde follows per direction, whatever the peer's SETTINGS allow: entries
/// past it read as unknown.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// The longest name or value sonde decodes; a longer string ends the block as malformed.
pub const MAX_STRING: usize = 16 * 1024;
/// The most fields sonde takes from one block.
pub const MAX_FIELDS: usize = 256;
/// What RFC 7541 §4.1 adds to an entry's name and value lengths to give its size.
const ENTRY_OVERHEAD: usize = 32;

/// A header field's name or value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// From the static table.
    Static(&'static str),
    /// Sent in this block, or in a table entry sonde saw inserted.
    Bytes(Arc<[u8]>),
    /// In a table entry inserted before sonde began following the direction: unknown.
    Unknown,
}

impl Text {
    /// The bytes, where known.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Text::Static(s) => Some(s.as_bytes()),
            Text::Bytes(b) => Some(b),
            Text::Unknown => None,
        }
    }

    /// A lower bound of the length (an unknown text counts as empty).
    fn len_at_least(&self) -> usize {
        self.bytes().map_or(0, <[u8]>::len)
    }
}

/// One decoded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Text,
    pub value: Text,
}

/// Why a header block could not be decoded whole. The decoder has forgotten its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer longer than HPACK allows")]
    Integer,
    #[error("a Huffman-coded string that does not decode")]
    Huffman,
    #[error("a field with index 0")]
    IndexZero,
    #[error("an index past the table of a direction followed from its start")]
    PastTable,
    #[error("a table size update past the SETTINGS limit, or after the block's first field")]
    SizeUpdate,
    #[error("a string longer than {MAX_STRING} bytes")]
    StringTooLong,
    #[error("more than {MAX_FIELDS} fields in one block")]
    TooManyFields,
}

struct Entry {
    name: Text,
    value: Text,
    /// A lower bound of the entry's size in the peer's table (RFC 7541 §4.1).
    size: usize,
}

/// The decoding side of one direction's dynamic table.
pub struct Decoder {
    /// The entries inserted since sonde began following, newest first.
    entries: VecDeque<Entry>,
    /// A lower bound of the bytes `entries` take in the peer's table.
    size: usize,
    /// The table's size limit (size updates, bounded by `settings_limit` and `MAX_TABLE_SIZE`).
    limit: usize,
    /// The limit the receiver's `SETTINGS_HEADER_TABLE_SIZE` allows the sender, once seen.
    settings_limit: Option<usize>,
    /// Whether the table may hold entries sonde did not see inserted: joined mid-connection, or
    /// after a loss.
    missed_insertions: bool,
    /// Blocks this decoder could not follow.
    losses: u64,
}

impl Decoder {
    /// A decoder for a direction followed from the connection's start (`from_start`), or joined
    /// later.
    pub fn new(from_start: bool) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            limit: DEFAULT_TABLE_SIZE,
            settings_limit: None,
            missed_insertions: !from_start,
            losses: 0,
        }
    }

    /// The receiver's `SETTINGS_HEADER_TABLE_SIZE`: the most a size update may ask for.
    pub fn set_settings_limit(&mut self, bytes: u32) {
        self.settings_limit = Some(bytes as usize);
    }

    /// A block of this direction was lost or cut: its insertions are unknown, and so is every
    /// entry sonde knew (their indices moved by an unknown count).
    pub fn lose(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.missed_insertions = true;
        self.losses += 1;
    }

    /// A lower bound of the bytes the table's entries take (their names and values take less).
    pub fn table_bytes(&self) -> usize {
        self.size
    }

    /// Blocks this decoder could not follow.
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// Decodes one whole header block (a HEADERS or PUSH_PROMISE fragment and its CONTINUATIONs)
    /// into `fields`. On an error the fields decoded so far stay in `fields` and the table is
    /// forgotten ([`Decoder::lose`]).
    pub fn decode(&mut self, block: &[u8], fields: &mut Vec<Field>) -> Result<(), HpackError> {
        let result = self.decode_fields(block, fields);
        if result.is_err() {
            self.lose();
        }
        result
    }

    fn decode_fields(&mut self, block: &[u8], fields: &mut Vec<Field>) -> Result<(), HpackError> {
        let mut input = Input { bytes: block, at: 0 };
        let mut first = true;
        while let Some(&byte) = input.bytes.get(input.at) {
            if byte & 0xe0 == 0x20 {
                // §6.3: a dynamic table size update, only before the block's first field.
                if !first {
                    return Err(HpackError::SizeUpdate);
                }
                let size = input.integer(5)?;
                if self.settings_limit.is_some_and(|limit| size > limit) {
                    return Err(HpackError::SizeUpdate);
                }
                self.limit = size.min(MAX_TABLE_SIZE);
                self.evict(0);
                continue;
            }
            first = false;
            if fields.len() >= MAX_FIELDS {
                return Err(HpackError::TooManyFields);
            }
            let field = if byte & 0x80 != 0 {
                // §6.1: an indexed field.
                let index = input.integer(7)?;
                let (name, value) = self.lookup(index)?;
                Field { name, value }
            } else {
                // §6.2: a literal; 01: with incremental indexing, 0000 / 0001: without, never.
                let (prefix, insert) = if byte & 0x40 != 0 { (6, true) } else { (4, false) };
                let index = input.integer(prefix)?;
                let name = if index == 0 { input.string()? } else { self.lookup(index)?.0 };
                let value = input.string()?;
                if insert {
                    self.insert(name.clone(), value.clone());
                }
                Field { name, value }
            };
            fields.push(field);
        }
        Ok(())
    }

    /// The name and value at `index` (static 1–61, then dynamic, newest first).
    fn lookup(&self, index: usize) -> Result<(Text, Text), HpackError> {
        if index == 0 {
            return Err(HpackError::IndexZero);
        }
        if let Some(&(name, value)) = STATIC.get(index - 1) {
            return Ok((Text::Static(name), Text::Static(value)));
        }
        match self.entries.get(index - STATIC.len() - 1) {
            Some(entry) => Ok((entry.name.clone(), entry.value.clone())),
            None if self.missed_insertions => Ok((Text::Unknown, Text::Unknown)),
            None => Err(HpackError::PastTable),
        }
    }

    /// §4.4: a new entry evicts the oldest until it fits; one larger than the table empties it.
    fn insert(&mut self, name: Text, value: Text) {
        let size = name.len_at_least() + value.len_at_least() + ENTRY_OVERHEAD;
        if size > self.limit {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.entries.push_front(Entry { name, value, size });
        self.size += size;
    }

    /// Evicts the oldest entries until `room` more bytes fit under the limit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.limit {
            match self.entries.pop_back() {
                Some(entry) => self.size -= entry.size,
                None => break,
            }
        }
    }
}

/// A header block being read.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Input<'_> {
    /// §5.1: an integer with an `n`-bit prefix, starting at the current byte.
    fn integer(&mut self, n: u8) -> Result<usize, HpackError> {
        let mask = (1usize << n) - 1;
        let first = *self.bytes.get(self.at).ok_or(HpackError::Truncated)?;
        self.at += 1;
        let mut value = first as usize & mask;
        if value < mask {
            return Ok(value);
        }
        // Continuation bytes, 7 bits each; more than 2^28 is past any size or index sonde keeps.
        for shift in (0..28).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or(HpackError::Truncated)?;
            self.at += 1;
            value += ((byte & 0x7f) as usize) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HpackError::Integer)
    }

    /// §5.2: a string literal, Huffman-coded or not.
    fn string(&mut self) -> Result<Text, HpackError> {
        let huffman = self.bytes.get(self.at).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        if len > MAX_STRING {
            return Err(HpackError::StringTooLong);
        }
        let raw = self.bytes.get(self.at..self.at + len).ok_or(HpackError::Truncated)?;
        self.at += len;
        if !huffman {
            return Ok(Text::Bytes(raw.into()));
        }
        let decoded = HUFFMAN.with_borrow_mut(|h| h.decode(raw)).map_err(|_| HpackError::Huffman)?;
        Ok(Text::Bytes(decoded.into()))
    }
}

thread_local! {
    /// The Huffman code's decoding tables, built once per thread.
    static HUFFMAN: std::cell::RefCell<loona_hpack::huffman::HuffmanDecoder> =
        std::cell::RefCell::new(loona_hpack::huffman::HuffmanDecoder::new());
}
