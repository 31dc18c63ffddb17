use sonde_common::{CloseEvent, EventHeader, EventKind, Role};

use super::*;

const SOCK: u64 = 0xffff_8880_1234_0000;

fn open_event(fd: i32, sock: u64) -> ConnEvent {
    open_event_as(fd, sock, Role::Server)
}

fn open_event_as(fd: i32, sock: u64, role: Role) -> ConnEvent {
    let mut local = [0u8; 16];
    local[..4].copy_from_slice(&[127, 0, 0, 1]);
    ConnEvent {
        header: EventHeader { ts_ns: 1, tgid: 100, tid: 100, fd, kind: EventKind::Open as u32 },
        sock,
        family: 2,
        local_port: 8080,
        remote_port: 50000,
        role: role as u8,
        _pad: 0,
        local_addr: local,
        remote_addr: local,
        comm: [0; 16],
        start_ns: 0,
    }
}

fn data(table: &mut ConnTable, fd: i32, seq: u32, direction: Direction, bytes: &[u8], out: &mut Effects) {
    data_from(table, fd, seq, direction, bytes, false, out);
}

/// `tls`: plaintext from the TLS library hooks.
fn data_from(
    table: &mut ConnTable,
    fd: i32,
    seq: u32,
    direction: Direction,
    bytes: &[u8],
    tls: bool,
    out: &mut Effects,
) {
    let event = DataEvent {
        header: EventHeader { ts_ns: 10 + seq as u64, tgid: 100, tid: 100, fd, kind: EventKind::Data as u32 },
        len: bytes.len() as u32,
        captured: bytes.len() as u32,
        direction: direction as u8,
        tls: tls as u8,
        _pad: [0; 2],
        seq,
        offset: 0,
    };
    table.data(&event, direction, bytes, out);
}

/// A call that moved `len` bytes, `offset` bytes into its direction, of which `bytes` were copied.
fn data_at(
    table: &mut ConnTable,
    seq: u32,
    direction: Direction,
    bytes: &[u8],
    len: u32,
    offset: u64,
    out: &mut Effects,
) {
    let event = DataEvent {
        header: EventHeader {
            ts_ns: 10 + seq as u64,
            tgid: 100,
            tid: 100,
            fd: 5,
            kind: EventKind::Data as u32,
        },
        len,
        captured: bytes.len() as u32,
        direction: direction as u8,
        tls: 0,
        _pad: [0; 2],
        seq,
        offset,
    };
    table.data(&event, direction, bytes, out);
}

const REQUEST: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn one_exchange_per_request_and_response() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    data(&mut table, 5, 2, Direction::Egress, RESPONSE, &mut out);
    assert_eq!(out.finished.len(), 1);
    assert_eq!(out.finished[0].exchange.request.head.target, "/a");
    assert_eq!(out.finished[0].conn.local_port(), Some(8080));
}

#[test]
fn a_sequence_gap_drops_what_the_parser_held() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    // Event 2 (this request's response) and 3 (the next request) were dropped in the kernel:
    // the response below belongs to a request we never saw, so it must not pair with /a.
    data(&mut table, 5, 4, Direction::Egress, RESPONSE, &mut out);
    assert!(out.finished.is_empty(), "{:?}", out.finished.iter().map(|f| &f.exchange).collect::<Vec<_>>());
    assert_eq!(table.stats().sequence_gaps, 1);
    // Back in sync at the next request.
    data(&mut table, 5, 5, Direction::Ingress, REQUEST, &mut out);
    data(&mut table, 5, 6, Direction::Egress, RESPONSE, &mut out);
    assert_eq!(out.finished.len(), 1);
}

/// Requests are known elsewhere (the linker) by connection and ordinal: a request read after a
/// gap must not get the ordinal of one read before it, which may still be in flight.
#[test]
fn request_ordinals_never_restart_on_a_connection() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    let mut ordinals = Vec::new();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    ordinals.extend(out.started.drain(..).map(|(_, s)| s.ordinal));
    // Events 2 and 3 were dropped: the parser starts over, with /a still unanswered.
    data(&mut table, 5, 4, Direction::Ingress, REQUEST, &mut out);
    ordinals.extend(out.started.drain(..).map(|(_, s)| s.ordinal));
    // The TLS hooks take the connection over: the parser starts over once more.
    data_from(&mut table, 5, 5, Direction::Ingress, REQUEST, true, &mut out);
    ordinals.extend(out.started.drain(..).map(|(_, s)| s.ordinal));
    assert_eq!(ordinals, [0, 1, 2]);
}

#[test]
fn a_repeated_open_of_the_same_socket_keeps_the_parser() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    // Re-announced by the kernel (no accept/connect seen, so no role).
    table.open(&open_event_as(5, SOCK, Role::Unknown), true, &mut out);
    data(&mut table, 5, 1, Direction::Egress, RESPONSE, &mut out);
    assert_eq!(out.finished.len(), 1, "the pending request survived the second Open");

    // A different socket on the same fd is a new connection: the old one is finished first, but
    // without its unanswered request (its Close was lost, so maybe its response was too).
    data(&mut table, 5, 2, Direction::Ingress, REQUEST, &mut out);
    table.open(&open_event(5, SOCK + 64), true, &mut out);
    assert_eq!(out.finished.len(), 1);
    assert_eq!(table.stats().closes_missed, 1);
}

#[test]
fn data_without_open_asks_the_kernel_once_per_sweep() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    data(&mut table, 9, 7, Direction::Ingress, REQUEST, &mut out);
    data(&mut table, 9, 8, Direction::Ingress, REQUEST, &mut out);
    assert_eq!(out.kernel_forgets.drain(..).collect::<Vec<_>>(), [conn_key(100, 9)]);
    assert_eq!(table.stats().data_without_open, 2);
    table.sweep(0, |_| true, &mut out);
    data(&mut table, 9, 9, Direction::Ingress, REQUEST, &mut out);
    assert_eq!(out.kernel_forgets.drain(..).count(), 1);
    assert!(out.finished.is_empty());
}

#[test]
fn connections_of_dead_processes_are_forgotten_here_and_in_the_kernel() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    table.sweep(5, |_| false, &mut out);
    assert!(table.is_empty());
    assert_eq!(out.kernel_forgets.drain(..).collect::<Vec<_>>(), [conn_key(100, 5)]);
}

#[test]
fn an_exited_process_loses_its_connections_at_once_and_only_its_own() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    table.open(&open_event(6, SOCK + 64), true, &mut out);
    let mut other = open_event(5, SOCK + 128);
    other.header.tgid = 101;
    table.open(&other, true, &mut out);
    table.process_exited(100, &mut out);
    assert_eq!(table.len(), 1, "pid 101's connection stays");
    let mut forgotten: Vec<u64> = out.kernel_forgets.drain(..).collect();
    forgotten.sort_unstable();
    assert_eq!(forgotten, [conn_key(100, 5), conn_key(100, 6)]);
}

#[test]
fn a_connection_whose_close_was_lost_ends_when_the_kernel_says_so() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    table.open(&open_event(6, SOCK + 64), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    data(&mut table, 5, 2, Direction::Egress, RESPONSE, &mut out);
    data(&mut table, 5, 3, Direction::Ingress, REQUEST, &mut out);
    assert_eq!(out.finished.len(), 1);
    // Only connections quiet long enough are asked about.
    assert_eq!(table.quiet(13, 5).len(), 1, "fd 6 (seen at 1) is quiet, fd 5 (seen at 13) is not");
    let mut quiet = table.quiet(100, 5);
    quiet.sort_unstable();
    assert_eq!(quiet, [(conn_key(100, 5), SOCK), (conn_key(100, 6), SOCK + 64)]);
    // The kernel no longer has fd 5: its unanswered request may have been answered in what was lost.
    table.closed_unseen(conn_key(100, 5), &mut out);
    assert_eq!(out.finished.len(), 1, "no exchange invented from the unanswered request");
    assert_eq!(table.len(), 1);
    assert_eq!(table.stats().closes_missed, 1);
}

#[test]
fn a_table_that_emptied_gives_its_slots_back() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    for fd in 0..5_000 {
        table.open(&open_event(fd, SOCK + 64 * fd as u64), true, &mut out);
    }
    assert!(!table.shrink_if_sparse(), "full: nothing to give back");
    table.process_exited(100, &mut out);
    let _ = out.kernel_forgets.drain(..).count();
    assert!(table.shrink_if_sparse());
    assert!(table.conns.capacity() <= 1024, "{}", table.conns.capacity());
    assert!(!table.shrink_if_sparse(), "once is enough");
}

fn close(table: &mut ConnTable, fd: i32, last_seq: u32, out: &mut Effects) {
    let header = EventHeader { ts_ns: 99, tgid: 100, tid: 100, fd, kind: EventKind::Close as u32 };
    table.close(&CloseEvent { header, last_seq, _pad: 0 }, out);
}

#[test]
fn close_reports_unanswered_requests_unless_events_were_lost() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    close(&mut table, 5, 1, &mut out);
    assert_eq!(out.finished.len(), 1, "the peer really closed before a response");
    assert!(out.finished[0].exchange.response.is_none());

    out.finished.clear();
    table.open(&open_event(6, SOCK + 64), true, &mut out);
    data(&mut table, 6, 1, Direction::Ingress, REQUEST, &mut out);
    // Event 2, the response, was dropped: no false "closed before a response".
    close(&mut table, 6, 2, &mut out);
    assert!(out.finished.is_empty());
    assert_eq!(table.stats().sequence_gaps, 1);
}

#[test]
fn a_new_accept_that_reuses_a_freed_socket_address_is_a_new_connection() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, REQUEST, &mut out);
    // Its Close was dropped; accept returned fd 5 again and the new socket got the same address.
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Egress, RESPONSE, &mut out);
    assert!(
        out.finished.is_empty(),
        "the old request must not take this response, nor be reported unanswered"
    );
}

/// A ClientHello's first bytes: handshake record, TLS 1.0 record version, length.
const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

#[test]
fn tls_plaintext_replaces_the_ciphertext_of_its_connection() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    // A handshake that reached user space (made before the library was hooked) is not parsed,
    // and its process is reported as speaking TLS.
    data(&mut table, 5, 1, Direction::Ingress, CLIENT_HELLO, &mut out);
    assert_eq!(out.ciphertext_pids.drain(..).collect::<Vec<_>>(), [100]);
    data_from(&mut table, 5, 2, Direction::Ingress, REQUEST, true, &mut out);
    // Ciphertext that slipped through after the switch is not parsed a second time.
    data(&mut table, 5, 3, Direction::Egress, &[0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3], &mut out);
    data_from(&mut table, 5, 4, Direction::Egress, RESPONSE, true, &mut out);
    assert_eq!(out.finished.len(), 1);
    assert!(out.finished[0].conn.tls);
    assert_eq!(out.finished[0].exchange.response.as_ref().map(|r| r.head.status), Some(200));
}

#[test]
fn ciphertext_without_hooks_makes_no_exchange() {
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data(&mut table, 5, 1, Direction::Ingress, CLIENT_HELLO, &mut out);
    data(&mut table, 5, 2, Direction::Egress, &[0x16, 0x03, 0x03, 0x00, 0x7a, 2], &mut out);
    data(&mut table, 5, 3, Direction::Ingress, &[0x17, 0x03, 0x03, 0x00, 0x30, 7], &mut out);
    close(&mut table, 5, 3, &mut out);
    assert!(out.finished.is_empty());
    assert_eq!(out.ciphertext_pids.drain(..).count(), 1);
}

#[test]
fn a_long_body_is_skipped_by_the_kernel_and_counted_whole() {
    const BODY: u64 = 100 << 20;
    let mut table = ConnTable::default();
    let mut out = Effects::default();
    table.open(&open_event(5, SOCK), true, &mut out);
    data_at(&mut table, 1, Direction::Ingress, REQUEST, REQUEST.len() as u32, 0, &mut out);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
    let first = [head.as_bytes(), &[b'x'; 1000]].concat();
    data_at(&mut table, 2, Direction::Egress, &first, 65536, 0, &mut out);
    // The kernel is told where the body ends: after the 64 KiB this call moved.
    let body_end = head.len() as u64 + BODY;
    assert_eq!(out.kernel_skips.len(), 1);
    assert_eq!(out.kernel_skips[0].1.until, [0, body_end]);
    assert_eq!(out.kernel_skips[0].1.sock, SOCK);
    assert!(out.finished.is_empty());
    // It reports the call that reaches the end, numbered next: all between was body.
    let last_offset = body_end - 4096;
    data_at(&mut table, 3, Direction::Egress, &[b'x'; 100], 4096, last_offset, &mut out);
    assert_eq!(out.finished.len(), 1, "the response ended with the reported call");
    let response = out.finished[0].exchange.response.as_ref().unwrap();
    assert_eq!(response.body_bytes, BODY);
    assert_eq!(response.end_ns, 13, "the time of the call that reached the end");
    assert_eq!(table.stats().sequence_gaps, 0);
    assert_eq!(out.kernel_skips.len(), 1, "a body end is given once");
}
