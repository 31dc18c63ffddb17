//! Ring-buffer records → typed events. Total: a short or unknown record is an error, never a panic.

use sonde_common::{
    CloseEvent, ConnEvent, DataEvent, Direction, EventHeader, EventKind, ExitEvent, SpawnEvent,
    propagation::ContextEvent,
};

#[derive(Debug)]
pub enum Event<'a> {
    Data {
        event: DataEvent,
        payload: &'a [u8],
    },
    Open(ConnEvent),
    Close(CloseEvent),
    Spawn(SpawnEvent),
    /// The process of the header mapped an executable file.
    Mapped(EventHeader),
    Exit(ExitEvent),
    /// The ids the kernel gave the request the next data event of its fd begins.
    Context(ContextEvent),
}

impl Event<'_> {
    /// When the kernel wrote it (`CLOCK_MONOTONIC`, ns).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Data { event, .. } => event.header.ts_ns,
            Event::Open(e) => e.header.ts_ns,
            Event::Close(e) => e.header.ts_ns,
            Event::Spawn(e) => e.header.ts_ns,
            Event::Mapped(header) => header.ts_ns,
            Event::Exit(e) => e.header.ts_ns,
            Event::Context(e) => e.header.ts_ns,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for a {what}")]
    Short { what: &'static str, len: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("data event claims {claimed} captured bytes but carries {carried}")]
    BadCapture { claimed: u32, carried: usize },
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short { what, len: bytes.len() });
    }
    // SAFETY: length checked above; T is a plain #[repr(C)] struct of integers, valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read(bytes, "header")?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Data) => {
            let event: DataEvent = read(bytes, "data event")?;
            let payload = &bytes[size_of::<DataEvent>()..];
            let claimed = event.captured as usize;
            if claimed > payload.len() || event.direction > Direction::Egress as u8 || event.tls > 1 {
                return Err(DecodeError::BadCapture { claimed: event.captured, carried: payload.len() });
            }
            Ok(Event::Data { event, payload: &payload[..claimed] })
        }
        Some(EventKind::Open) => Ok(Event::Open(read(bytes, "open event")?)),
        Some(EventKind::Close) => Ok(Event::Close(read(bytes, "close event")?)),
        Some(EventKind::Spawn) => Ok(Event::Spawn(read(bytes, "spawn event")?)),
        Some(EventKind::Mapped) => Ok(Event::Mapped(header)),
        Some(EventKind::Exit) => Ok(Event::Exit(read(bytes, "exit event")?)),
        Some(EventKind::Context) => Ok(Event::Context(read(bytes, "context event")?)),
        None => Err(DecodeError::UnknownKind(header.kind)),
    }
}

pub fn direction(event: &DataEvent) -> Direction {
    if event.direction == Direction::Egress as u8 { Direction::Egress } else { Direction::Ingress }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32) -> EventHeader {
        EventHeader { ts_ns: 7, tgid: 1, tid: 2, fd: 3, kind }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn round_trips_every_kind() {
        let data = DataEvent {
            header: header(1),
            len: 10,
            captured: 3,
            direction: 1,
            tls: 0,
            _pad: [0; 2],
            seq: 1,
            offset: 0,
        };
        let mut raw = bytes_of(&data);
        raw.extend_from_slice(b"abcdef");
        match decode(&raw).unwrap() {
            Event::Data { event, payload } => {
                assert_eq!(payload, b"abc");
                assert_eq!(event.len, 10);
                assert_eq!(direction(&event), Direction::Egress);
            }
            other => panic!("{other:?}"),
        }
        let open = ConnEvent {
            header: header(2),
            sock: 0xffff_8880_0000_0000,
            family: 2,
            local_port: 80,
            remote_port: 5555,
            role: 1,
            _pad: 0,
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [0; 16],
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            start_ns: 12_340_000_000,
        };
        match decode(&bytes_of(&open)).unwrap() {
            Event::Open(e) => {
                assert_eq!((e.local_port, e.remote_port, e.sock), (80, 5555, open.sock))
            }
            other => panic!("{other:?}"),
        }
        let close = CloseEvent { header: header(3), last_seq: 9, _pad: 0 };
        assert!(
            matches!(decode(&bytes_of(&close)).unwrap(), Event::Close(c) if c.header.fd == 3 && c.last_seq == 9)
        );
        assert!(matches!(decode(&bytes_of(&header(3))), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn rejects_bad_records() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        assert_eq!(decode(&bytes_of(&header(99))).unwrap_err(), DecodeError::UnknownKind(99));
        let data = DataEvent {
            header: header(1),
            len: 10,
            captured: 9,
            direction: 0,
            tls: 0,
            _pad: [0; 2],
            seq: 1,
            offset: 0,
        };
        assert!(matches!(decode(&bytes_of(&data)), Err(DecodeError::BadCapture { .. })));
        assert!(matches!(decode(&bytes_of(&header(2))), Err(DecodeError::Short { .. })));
    }
}
