//! Bodies the kernel need not report. Once a message's framing says how many body bytes are still
//! to come (a Content-Length, a chunk size), the calls that move only those bytes tell sonde
//! nothing but their count: the kernel is asked to skip them (`SkipTo`), and reports the call that
//! reaches the body's end, so the message's end keeps its time. What it skipped shows as a jump in
//! the next event's offset, which the parser takes as uncaptured body bytes — as it takes any gap.

use sonde_common::{DataEvent, Direction, SkipTo};

/// Bodies with less than this still to come are copied as they are: asking the kernel costs a
/// map update (a syscall), which a few calls' copies do not outweigh.
pub const MIN_BODY_TO_SKIP: u64 = 256 * 1024;

/// One connection's offsets, per direction (`Direction as usize`).
#[derive(Debug, Default)]
pub struct BodySkip {
    /// Where the next event should start (`DataEvent::offset`), once one was seen.
    next_offset: [Option<u64>; 2],
    /// Where the kernel was last told a body ends.
    until: [u64; 2],
}

impl BodySkip {
    /// Bytes the kernel moved before `event` without reporting them (0 when none, or for TLS
    /// plaintext, whose events carry no offset). A count that went backwards (the kernel started
    /// its count over for this socket) is taken as the new start.
    pub fn skipped_before(&mut self, event: &DataEvent, direction: Direction) -> u64 {
        if event.tls != 0 {
            return 0;
        }
        let d = direction as usize;
        let skipped = self.next_offset[d].map_or(0, |expected| event.offset.saturating_sub(expected));
        self.next_offset[d] = Some(event.offset.saturating_add(u64::from(event.len)));
        skipped
    }

    /// The kernel's count started over (its entry for the connection was renewed).
    pub fn restart_counts(&mut self) {
        *self = Self::default();
    }

    /// `body_left` bytes of the current message in `direction` are still to come: the new end to
    /// give the kernel, if it is worth it and not given already.
    pub fn body_ahead(&mut self, direction: Direction, body_left: Option<u64>, sock: u64) -> Option<SkipTo> {
        let d = direction as usize;
        let left = body_left.filter(|&left| left >= MIN_BODY_TO_SKIP)?;
        let until = self.next_offset[d]?.checked_add(left)?;
        if until <= self.until[d] {
            return None;
        }
        self.until[d] = until;
        Some(SkipTo { sock, until: self.until })
    }
}

#[cfg(test)]
mod tests {
    use sonde_common::{EventHeader, EventKind};

    use super::*;

    fn event(offset: u64, len: u32) -> DataEvent {
        DataEvent {
            header: EventHeader { ts_ns: 1, tgid: 1, tid: 1, fd: 3, kind: EventKind::Data as u32 },
            len,
            captured: 0,
            direction: Direction::Ingress as u8,
            tls: 0,
            _pad: [0; 2],
            seq: 1,
            offset,
        }
    }

    #[test]
    fn a_jump_in_offset_is_what_the_kernel_skipped() {
        let mut skip = BodySkip::default();
        assert_eq!(
            skip.skipped_before(&event(100, 50), Direction::Ingress),
            0,
            "the first event sets the start"
        );
        assert_eq!(skip.skipped_before(&event(150, 50), Direction::Ingress), 0);
        assert_eq!(skip.skipped_before(&event(1_000, 10), Direction::Ingress), 800);
        assert_eq!(skip.skipped_before(&event(0, 10), Direction::Ingress), 0, "a count started over");
        assert_eq!(skip.skipped_before(&event(10, 10), Direction::Ingress), 0);
        assert_eq!(skip.skipped_before(&event(5, 10), Direction::Egress), 0, "directions apart");
        assert_eq!(skip.skipped_before(&DataEvent { tls: 1, ..event(99, 1) }, Direction::Ingress), 0, "TLS");
    }

    #[test]
    fn only_long_bodies_are_skipped_and_each_end_is_given_once() {
        let mut skip = BodySkip::default();
        assert_eq!(skip.body_ahead(Direction::Ingress, Some(1 << 20), 7), None, "no offset known yet");
        skip.skipped_before(&event(0, 1_000), Direction::Ingress);
        assert_eq!(skip.body_ahead(Direction::Ingress, Some(MIN_BODY_TO_SKIP - 1), 7), None);
        assert_eq!(skip.body_ahead(Direction::Ingress, None, 7), None);
        let first = skip.body_ahead(Direction::Ingress, Some(1 << 20), 7).unwrap();
        assert_eq!(first, SkipTo { sock: 7, until: [1_000 + (1 << 20), 0] });
        assert_eq!(skip.body_ahead(Direction::Ingress, Some(1 << 20), 7), None, "given already");
        skip.skipped_before(&event(1_000 + (1 << 20), 100), Direction::Ingress);
        let second = skip.body_ahead(Direction::Ingress, Some(1 << 20), 7).unwrap();
        assert_eq!(second.until[0], 1_100 + (2 << 20));
    }
}
