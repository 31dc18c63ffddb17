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

/// The ids of one request's span. Value of `SERVING` (pid_tgid → the server request the thread is
/// serving, until it writes to that connection again) and of `CLIENT_IDS` (pid_tgid → the client
/// request it is writing, from the syscall's entry to its data event).
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
    pub _pad: [u8; 2],
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
