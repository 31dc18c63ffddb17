//! The chunked transfer coding (RFC 9112 §7.1), decoded a byte at a time so that a body split
//! anywhere needs no buffering: a chunk size is accumulated digit by digit, extensions and trailer
//! fields are only counted (bounded), never stored.

/// Where in a chunked body the decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the hex digits of a chunk size.
    Size {
        value: u64,
        digits: u32,
    },
    /// After the digits: optional whitespace, then `;` extensions, up to the line end.
    SizeRest {
        value: u64,
        in_ext: bool,
    },
    /// Saw the CR ending a size line.
    SizeLf {
        value: u64,
    },
    /// Inside chunk data.
    Data {
        left: u64,
    },
    /// After chunk data: its CRLF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer field lines, then an empty line.
    Trailer {
        line_empty: bool,
    },
    TrailerLf {
        line_empty: bool,
    },
    Done,
}

/// What went wrong in the framing; the stream turns it into a `ParseError`.
pub(super) type Violation = &'static str;

/// A capture gap hid framing bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FramingLost;

/// What [`Chunked::advance`] did with the bytes it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Progress {
    /// Bytes that belong to this body (the rest belongs to what follows it).
    pub used: usize,
    /// Chunk-data bytes among them.
    pub payload: u64,
    /// The body ended within them.
    pub done: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Chunked {
    state: State,
    /// Bytes of the current size line, or of all trailer lines: capped so that a peer cannot keep
    /// the decoder in one line forever.
    line_bytes: usize,
    max_line_bytes: usize,
}

impl Chunked {
    pub(super) fn new(max_line_bytes: usize) -> Self {
        Self { state: State::Size { value: 0, digits: 0 }, line_bytes: 0, max_line_bytes }
    }

    /// Data bytes of the current chunk still to come (None outside chunk data).
    pub(super) fn data_left(&self) -> Option<u64> {
        match self.state {
            State::Data { left } => Some(left),
            _ => None,
        }
    }

    /// Consumes body bytes from the front of `data`.
    pub(super) fn advance(&mut self, data: &[u8]) -> Result<Progress, Violation> {
        let mut used = 0;
        let mut payload = 0u64;
        while used < data.len() {
            if let State::Data { left } = self.state {
                // The only state that can cover many bytes at once: skip them in one step.
                let take = left.min((data.len() - used) as u64);
                used += take as usize;
                payload += take;
                self.state = if take == left { State::DataCr } else { State::Data { left: left - take } };
                continue;
            }
            let byte = data[used];
            used += 1;
            self.step(byte)?;
            if self.state == State::Done {
                return Ok(Progress { used, payload, done: true });
            }
        }
        Ok(Progress { used, payload, done: false })
    }

    /// One framing byte (anything but chunk data).
    fn step(&mut self, byte: u8) -> Result<(), Violation> {
        self.line_bytes += 1;
        if self.line_bytes > self.max_line_bytes {
            return Err("chunk-size line or trailer section too long");
        }
        self.state = match self.state {
            State::Size { value, digits } => match (byte as char).to_digit(16) {
                Some(digit) => {
                    // 16 hex digits fill a u64; more (other than leading zeros) cannot be a size.
                    if value > u64::MAX >> 4 {
                        return Err("chunk size overflows 64 bits");
                    }
                    State::Size { value: (value << 4) | u64::from(digit), digits: digits + 1 }
                }
                None if digits == 0 => {
                    return Err("chunk-size line does not start with a hex digit");
                }
                None => return self.after_size(value, false, byte),
            },
            State::SizeRest { value, in_ext } => return self.after_size(value, in_ext, byte),
            State::SizeLf { value } => match byte {
                b'\n' => self.chunk_starts(value),
                _ => return Err("CR not followed by LF in a chunk-size line"),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                // A bare LF: lenient like the head parser.
                b'\n' => self.next_size(),
                _ => return Err("chunk data not followed by CRLF"),
            },
            State::DataLf => match byte {
                b'\n' => self.next_size(),
                _ => return Err("chunk data not followed by CRLF"),
            },
            State::Trailer { line_empty } => match byte {
                b'\r' => State::TrailerLf { line_empty },
                b'\n' => Self::trailer_line_end(line_empty),
                _ => State::Trailer { line_empty: false },
            },
            State::TrailerLf { line_empty } => match byte {
                b'\n' => Self::trailer_line_end(line_empty),
                _ => return Err("CR not followed by LF in the trailer section"),
            },
            // Data is consumed in advance(); Done is never stepped.
            State::Data { .. } | State::Done => self.state,
        };
        Ok(())
    }

    /// A byte after the digits of a size line: BWS, `;` extensions, or the line end.
    fn after_size(&mut self, value: u64, in_ext: bool, byte: u8) -> Result<(), Violation> {
        self.state = match byte {
            b'\r' => State::SizeLf { value },
            b'\n' => self.chunk_starts(value),
            b';' => State::SizeRest { value, in_ext: true },
            b' ' | b'\t' => State::SizeRest { value, in_ext },
            _ if in_ext => State::SizeRest { value, in_ext },
            _ => return Err("invalid byte after a chunk size"),
        };
        Ok(())
    }

    fn chunk_starts(&mut self, size: u64) -> State {
        self.line_bytes = 0;
        if size == 0 { State::Trailer { line_empty: true } } else { State::Data { left: size } }
    }

    fn next_size(&mut self) -> State {
        self.line_bytes = 0;
        State::Size { value: 0, digits: 0 }
    }

    fn trailer_line_end(line_empty: bool) -> State {
        if line_empty { State::Done } else { State::Trailer { line_empty: true } }
    }

    /// `gap` bytes of the body went by uncaptured. Ok(payload) when the framing survives it: the gap
    /// stays inside chunk data and its CRLF, whose lengths are known. Err when it may hide a
    /// chunk-size line or trailer: from then on the end of the body cannot be known.
    pub(super) fn skip_gap(&mut self, gap: u64) -> Result<u64, FramingLost> {
        let (payload, framing_left) = match self.state {
            State::Data { left } if gap <= left => {
                self.state = if gap == left { State::DataCr } else { State::Data { left: left - gap } };
                return Ok(gap);
            }
            State::Data { left } => (left, gap - left),
            State::DataCr => (0, gap),
            State::DataLf => (0, gap + 1),
            _ => return if gap == 0 { Ok(0) } else { Err(FramingLost) },
        };
        // `framing_left` counts from the start of the CRLF after the data.
        match framing_left {
            1 => self.state = State::DataLf,
            2 => self.state = self.next_size(),
            _ => return Err(FramingLost),
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (bytes used, payload bytes, done)
    type Decoded = Result<(usize, u64, bool), Violation>;

    /// Decodes `body` fed in pieces of `step` bytes.
    fn decode(body: &[u8], step: usize) -> Decoded {
        let mut dec = Chunked::new(1024);
        let (mut used, mut payload) = (0, 0);
        for piece in body.chunks(step.max(1)) {
            let p = dec.advance(piece)?;
            used += p.used;
            payload += p.payload;
            if p.done {
                return Ok((used, payload, true));
            }
        }
        Ok((used, payload, false))
    }

    #[test]
    fn bodies() {
        let cases: &[(&str, &[u8], Decoded)] = &[
            ("empty", b"0\r\n\r\n", Ok((5, 0, true))),
            ("two chunks", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", Ok((26, 11, true))),
            ("extensions", b"5;a=b;c=\"d;e\"\r\nhello\r\n0;last\r\n\r\n", Ok((32, 5, true))),
            ("bws before ext", b"5 ;a\r\nhello\r\n0\r\n\r\n", Ok((18, 5, true))),
            ("trailers", b"1\r\nx\r\n0\r\nExpires: never\r\nX-A: b\r\n\r\n", Ok((35, 1, true))),
            ("bare LF", b"1\nx\n0\n\n", Ok((7, 1, true))),
            ("upper hex", b"A\r\n0123456789\r\n0\r\n\r\n", Ok((20, 10, true))),
            ("leading zeros", b"00000000000000000001\r\nx\r\n0\r\n\r\n", Ok((30, 1, true))),
            ("huge size", b"ffffffffffffffff\r\nabc", Ok((21, 3, false))),
            ("unfinished", b"5\r\nhel", Ok((6, 3, false))),
            ("overflow", b"10000000000000000\r\n", Err("chunk size overflows 64 bits")),
            ("no digits", b"\r\n", Err("chunk-size line does not start with a hex digit")),
            ("not hex", b"xyz\r\n", Err("chunk-size line does not start with a hex digit")),
            ("junk after size", b"5x\r\nhello\r\n", Err("invalid byte after a chunk size")),
            ("negative", b"-5\r\n", Err("chunk-size line does not start with a hex digit")),
            ("data too long", b"2\r\nabc\r\n", Err("chunk data not followed by CRLF")),
            ("CR then junk", b"2\rx", Err("CR not followed by LF in a chunk-size line")),
        ];
        for (name, body, want) in cases {
            for step in [1, 2, 3, 7, body.len()] {
                assert_eq!(decode(body, step), *want, "{name}, pieces of {step}");
            }
        }
    }

    #[test]
    fn long_lines_are_errors() {
        let mut ext = b"1;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(decode(&ext, 100), Err("chunk-size line or trailer section too long"));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..200 {
            trailers.extend_from_slice(b"X-Long: abcdefgh\r\n");
        }
        assert_eq!(decode(&trailers, 100), Err("chunk-size line or trailer section too long"));
    }

    #[test]
    fn gaps() {
        // (bytes before the gap, gap, payload counted or framing lost, bytes after the gap, done)
        type Case = (&'static [u8], u64, Result<u64, FramingLost>, &'static [u8], bool);
        let cases: &[Case] = &[
            (b"a\r\n01234", 3, Ok(3), b"89\r\n0\r\n\r\n", true),
            (b"a\r\n01234", 5, Ok(5), b"\r\n0\r\n\r\n", true),
            (b"a\r\n01234", 6, Ok(5), b"\n0\r\n\r\n", true),
            (b"a\r\n01234", 7, Ok(5), b"0\r\n\r\n", true),
            (b"a\r\n01234", 8, Err(FramingLost), b"", false),
            (b"a\r\n0123456789", 2, Ok(0), b"0\r\n\r\n", true),
            (b"a\r\n0123456789\r", 1, Ok(0), b"0\r\n\r\n", true),
            (b"a\r", 1, Err(FramingLost), b"", false),
            (b"0\r\n", 2, Err(FramingLost), b"", false),
        ];
        for (before, gap, want, after, done) in cases {
            let mut dec = Chunked::new(1024);
            assert!(dec.advance(before).is_ok());
            assert_eq!(dec.skip_gap(*gap), *want, "{:?} + {gap}", String::from_utf8_lossy(before));
            if want.is_ok() {
                assert_eq!(
                    dec.advance(after).map(|p| p.done),
                    Ok(*done),
                    "{:?}",
                    String::from_utf8_lossy(before)
                );
            }
        }
    }
}
