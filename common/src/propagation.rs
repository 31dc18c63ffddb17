//! Trace context on the wire, chosen in the kernel (`--context-propagation tcp`).
//!
//! User space learns of a request up to a few hundred milliseconds after it was written, too late
//! to say which context it carries. So the kernel decides, at the moment a traced thread writes a
//! request head: the request's trace is the one of the server request the thread is serving (its
//! [`Ids`] in `SERVING`), or a new one; its CLIENT span id is drawn there. The context goes into a
//! TCP option of the segment the request begins (`TCP_OUT`, written by the sockops program), and
//! the same ids reach user space in a [`ContextEvent`], so that the span sonde exports is the one
//! the wire names. On the receiving host the option is read from the segment (`TCP_IN`) and given
//! to the request that begins at its sequence number.

use crate::EventHeader;

/// TCP option kind, the one OBI/Beyla uses (unassigned by IANA), so that sonde and those agents
/// read each other's options.
pub const TCP_OPTION_KIND: u8 = 25;
/// Kind, length, 16-byte trace id, 8-byte span id: a sampled context.
pub const TCP_OPTION_LEN: u8 = 26;
/// The same and a W3C trace-flags byte (written for unsampled contexts; both forms are read).
pub const TCP_OPTION_LEN_FLAGS: u8 = 27;
/// W3C trace flags: sampled.
pub const FLAG_SAMPLED: u8 = 1;

/// Bits of the kernel's `PROPAGATE` global: which carriers go on the wire.
pub const CARRY_TCP_OPTION: u32 = 1;
pub const CARRY_HEADER: u32 = 2;

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`, the line written into a request head after its
/// request line (`--context-propagation headers`).
pub const TRACEPARENT_LINE_LEN: usize = 70;
/// How far into a send the kernel looks for the end of a request head, and for a `traceparent`
/// already in it, before it writes one: a head longer than this gets none.
pub const HEAD_WINDOW: u32 = 1024;
/// The line, padded to a multiple of 8 bytes.
pub type TraceparentLine = [u8; 72];

/// The `traceparent` line naming span `span_id` of trace `trace_id`, in the first
/// `TRACEPARENT_LINE_LEN` bytes. Written so that the kernel can run it: no tables, no slices of
/// variable length.
#[inline(always)]
pub fn traceparent_line(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> TraceparentLine {
    let mut line = [0u8; 72];
    line[..16].copy_from_slice(b"traceparent: 00-");
    let mut i = 0;
    while i < 16 {
        line[16 + 2 * i] = hex_digit(trace_id[i] >> 4);
        line[17 + 2 * i] = hex_digit(trace_id[i] & 0xf);
        i += 1;
    }
    line[48] = b'-';
    let mut i = 0;
    while i < 8 {
        line[49 + 2 * i] = hex_digit(span_id[i] >> 4);
        line[50 + 2 * i] = hex_digit(span_id[i] & 0xf);
        i += 1;
    }
    line[65] = b'-';
    line[66] = hex_digit(flags >> 4);
    line[67] = hex_digit(flags & 0xf);
    line[68] = b'\r';
    line[69] = b'\n';
    line
}

/// The lowercase hex digit of `nibble` (0..16), without a branch or a table.
#[inline(always)]
pub const fn hex_digit(nibble: u8) -> u8 {
    // 39 more above 9: b'a' - b'0' - 10. The shift makes 0xff for nibbles above 9, 0 otherwise.
    let above_nine = ((9i16 - nibble as i16) >> 8) as u8;
    b'0' + nibble + (above_nine & 39)
}

/// Where a request's trace came from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A new trace, made in the kernel.
    New = 0,
    /// A server request: the context its caller put in a TCP option.
    TcpOption = 1,
    /// A client request: the server request its thread is serving.
    Serving = 2,
}

impl Origin {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::New),
            1 => Some(Self::TcpOption),
            2 => Some(Self::Serving),
            _ => None,
        }
    }
}

/// The ids of one request's span. Value of `SERVING` (worker: a thread, or a goroutine → the server
/// request it is serving, until it writes to that connection again) and of `CLIENT_IDS` (worker →
/// the client request it is writing, from the syscall's entry to its data event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zeros: none (the request starts a trace).
    pub parent_id: [u8; 8],
    /// The connection's fd in the thread's process.
    pub fd: i32,
    /// W3C trace flags.
    pub flags: u8,
    /// An [`Origin`].
    pub origin: u8,
    /// For a client request, what became of its `traceparent` header (a [`HeaderOutcome`]).
    pub header: u8,
    pub _pad: u8,
}

/// What the kernel did with a client request's `traceparent` header
/// (`--context-propagation headers`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderOutcome {
    /// Nothing: no header carrier, or the send was left as written.
    None = 0,
    /// A header with the request's ids went in after the request line.
    Written = 1,
    /// The request already had the header its thread's server request came with (a proxy
    /// forwarding it): its parent id now names the request's own CLIENT span.
    Forwarded = 2,
    /// Looked at and left as written (the reason is counted).
    Left = 3,
}

impl HeaderOutcome {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Written,
            2 => Self::Forwarded,
            3 => Self::Left,
            _ => Self::None,
        }
    }
}

/// Value of the kernel's `HEADER_OUT` map: the ids a client request's header names, from the
/// send's syscall entry to its exit (the `sk_msg` program in between writes the header and says
/// what it did).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The parent id of the `traceparent` the writing thread's server request came with (all
    /// zeros: none known): a request carrying that very header forwards it.
    pub forwarded_parent: [u8; 8],
    pub flags: u8,
    /// A [`HeaderOutcome`], set by the `sk_msg` program.
    pub outcome: u8,
    pub _pad: [u8; 6],
}

/// A context bound to a byte of a TCP stream: value of `TCP_OUT` (socket → the context to write
/// on the segment that begins at `seq`) and `TCP_IN` (socket → the context read from the segment
/// that began at `seq`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// TCP sequence number of the request's first byte.
    pub seq: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// Sent just before the data event whose bytes begin a request the kernel gave a context to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEvent {
    pub header: EventHeader,
    pub ids: Ids,
    /// The sequence number of that data event on its connection (`DataEvent::seq`).
    pub data_seq: u32,
    /// A [`Direction`](crate::Direction): Egress for a client request, Ingress for a server one.
    pub direction: u8,
    pub _pad: [u8; 3],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traceparent_line_is_the_w3c_form() {
        let trace_id =
            [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
        let span_id = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        let line = traceparent_line(&trace_id, &span_id, FLAG_SAMPLED);
        assert_eq!(
            &line[..TRACEPARENT_LINE_LEN],
            b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
        );
        assert_eq!(line[TRACEPARENT_LINE_LEN..], [0, 0]);
    }

    #[test]
    fn every_nibble_has_its_digit() {
        let mut digits = [0u8; 16];
        for (nibble, digit) in digits.iter_mut().enumerate() {
            *digit = hex_digit(nibble as u8);
        }
        assert_eq!(&digits, b"0123456789abcdef");
    }
}
