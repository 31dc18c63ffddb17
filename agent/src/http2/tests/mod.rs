//! HTTP/2 from bytes: frames, then streams.

mod frames;
mod streams;

/// A frame of `kind` with `flags` on `stream` (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK encoder that indexes every field it sends, as gRPC's encoders do with `:path`: a field
/// already in its table goes as an index, any other as a literal inserted into the table (its name
/// indexed where the static table has it). No Huffman coding.
struct IndexingEncoder {
    /// Newest first.
    table: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
}

impl IndexingEncoder {
    const LIMIT: usize = 4096;

    fn new() -> Self {
        IndexingEncoder { table: Default::default(), size: 0 }
    }

    fn encode<'a>(&mut self, fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
        use crate::http2::hpack::STATIC_TABLE;
        let mut out = Vec::new();
        for (name, value) in fields {
            let dynamic = self.table.iter().position(|(n, v)| n == name && v == value);
            if let Some(i) = dynamic {
                out.extend(integer(0x80, 7, STATIC_TABLE.len() + 1 + i));
                continue;
            }
            match STATIC_TABLE.iter().position(|(n, _)| n.as_bytes() == name) {
                Some(i) => out.extend(integer(0x40, 6, i + 1)),
                None => {
                    out.push(0x40);
                    out.extend(integer(0, 7, name.len()));
                    out.extend(name);
                }
            }
            out.extend(integer(0, 7, value.len()));
            out.extend(value);
            let size = name.len() + value.len() + 32;
            while self.size + size > Self::LIMIT {
                let (n, v) = self.table.pop_back().expect("an entry to evict");
                self.size -= n.len() + v.len() + 32;
            }
            self.table.push_front((name.to_vec(), value.to_vec()));
            self.size += size;
        }
        out
    }
}

/// RFC 7541 §5.1: `value` with an `n`-bit prefix, the first byte's other bits `flags`.
fn integer(flags: u8, n: u8, value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}
