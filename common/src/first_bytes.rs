//! The kernel's side of "a connection sonde cannot parse costs nothing": the first bytes of each
//! direction of a connection seen from its start either may begin a message of a protocol sonde
//! parses, or they may not, and then the connection's socket bytes stop being copied
//! (`Verdict::FirstBytes`). The test is deliberately looser than the parsers in user space, which
//! refuse the rest themselves (`Verdict::Unwanted`): a wrong "no" here loses a connection's spans,
//! a wrong "yes" costs a few copies until user space has looked. Each protocol sonde learns to
//! parse adds its first bytes here.

/// How many first bytes are looked at.
pub const PROBE_BYTES: usize = 8;

/// Whether the first `n` bytes of a direction (`n` ≥ 1, at most `PROBE_BYTES` of them looked at)
/// may begin a message sonde parses. HTTP/1.x: a request line begins with a method token of
/// capital letters and a space (`GET `, `OPTIONS `, and HTTP/2's preface `PRI `), a status line
/// with `HTTP/`. Bytes that end while still capitals are a prefix of one: a first read of one
/// byte is never refused.
#[inline(always)]
pub fn may_start_message(bytes: &[u8; PROBE_BYTES], n: usize) -> bool {
    // Unrolled by hand, each position a constant. As a loop, LLVM turns its `i < n` into `i != n`,
    // which the verifiers before 6.3 cannot bound: they walk past the array and refuse the program.
    at(bytes, n, 0)
        .or_else(|| at(bytes, n, 1))
        .or_else(|| at(bytes, n, 2))
        .or_else(|| at(bytes, n, 3))
        .or_else(|| at(bytes, n, 4))
        .or_else(|| at(bytes, n, 5))
        .or_else(|| at(bytes, n, 6))
        .or_else(|| at(bytes, n, 7))
        .unwrap_or(true)
}

/// The answer, if position `i` gives one: past the bytes there are (still a prefix), or a byte
/// that is no capital letter (which ends a method token, or refuses).
#[inline(always)]
fn at(bytes: &[u8; PROBE_BYTES], n: usize, i: usize) -> Option<bool> {
    if i >= n {
        return Some(true);
    }
    let b = bytes[i];
    if b.is_ascii_uppercase() {
        return None;
    }
    Some(i > 0 && (b == b' ' || (i == 4 && b == b'/' && bytes[..4] == *b"HTTP")))
}

/// Whether the first `n` bytes of a write or read (at most `PROBE_BYTES` looked at) are the start
/// of an HTTP/1.x request head: a method token of capital letters, whole, and the space after it
/// (HTTP/2's preface `PRI ` is not a request; methods longer than seven letters, WebDAV's, do
/// not fit in the bytes looked at). Stricter than [`may_start_message`]: this decides
/// that a request begins here, and a trace context is given to it.
#[inline(always)]
pub fn starts_request(bytes: &[u8; PROBE_BYTES], n: usize) -> bool {
    // Unrolled by hand for the verifiers before 6.3, as in `may_start_message`.
    let space = method_end(bytes, n, 1)
        .or_else(|| method_end(bytes, n, 2))
        .or_else(|| method_end(bytes, n, 3))
        .or_else(|| method_end(bytes, n, 4))
        .or_else(|| method_end(bytes, n, 5))
        .or_else(|| method_end(bytes, n, 6))
        .or_else(|| method_end(bytes, n, 7));
    match space {
        Some(Some(3)) => bytes[..3] != *b"PRI",
        Some(Some(_)) => bytes[0].is_ascii_uppercase(),
        _ => false,
    }
}

/// Some(Some(i)): the method token ends with a space at `i`; Some(None): it cannot be a request
/// (a byte that is neither a capital nor that space, or too few bytes); None: read on.
#[inline(always)]
fn method_end(bytes: &[u8; PROBE_BYTES], n: usize, i: usize) -> Option<Option<usize>> {
    if i >= n {
        return Some(None);
    }
    match bytes[i] {
        b' ' => Some(Some(i)),
        b if b.is_ascii_uppercase() => None,
        _ => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8]) -> bool {
        let mut first = [0u8; PROBE_BYTES];
        let n = bytes.len().min(PROBE_BYTES);
        first[..n].copy_from_slice(&bytes[..n]);
        may_start_message(&first, n)
    }

    #[test]
    fn http_starts_pass_whole_or_cut_short() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"OPTIONS * HTTP/1.1",
            b"PROPFIND /x HTTP/1.1",
            b"HTTP/1.1 200 OK",
            b"PRI * HTTP/2.0",
        ] {
            for n in 1..=start.len() {
                assert!(check(&start[..n]), "{:?}", core::str::from_utf8(&start[..n]));
            }
        }
    }

    fn request(bytes: &[u8]) -> bool {
        let mut first = [0u8; PROBE_BYTES];
        let n = bytes.len().min(PROBE_BYTES);
        first[..n].copy_from_slice(&bytes[..n]);
        starts_request(&first, n)
    }

    #[test]
    fn only_whole_request_methods_start_a_request() {
        for yes in [&b"GET / HTTP/1.1\r\n"[..], b"POST /x", b"OPTIONS *", b"M /"] {
            assert!(request(yes), "{:?}", core::str::from_utf8(yes));
        }
        for no in [
            &b"HTTP/1.1 200 OK"[..],
            b"PRI * HTTP/2.0",
            b"GE",
            b"GET",
            b" GET /",
            b"get / ",
            b"GET\t/",
            b"PROPFIND /", // longer than the bytes looked at: WebDAV methods get no context
            b"ABCDEFGH ",
            b"\x16\x03\x01\x02\x00",
            b"",
        ] {
            assert!(!request(no), "{:?}", no);
        }
    }

    #[test]
    fn other_protocols_are_refused() {
        for other in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01"[..], // TLS ClientHello
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",      // PostgreSQL SSLRequest (no parser yet)
            b"abcdefghijklmnopqrstuvwxyz234567",      // iperf3's cookie
            b"220 smtp.example ESMTP",                // a server speaks first
            b"SSH-2.0-OpenSSH_9.2",
            b"get / HTTP/1.1",
            b" GET /",
            b"HTTPS/1.1",
            b"GET\t/",
        ] {
            assert!(!check(other), "{:?}", other);
        }
    }
}
