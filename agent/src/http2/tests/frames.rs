//! The frame reader fed whole, split at every offset and byte by byte, with bytes the kernel did
//! not capture inside payloads and where a frame header would be.

use super::frame;
use crate::http2::frame::{BlockKind, Frame, FrameReader, MAX_BLOCK, PREFACE};

/// A client's first bytes: the preface, SETTINGS, a request whose block is padded, has a priority
/// and continues in a CONTINUATION, its body in two DATA frames, a WINDOW_UPDATE and a PING.
fn client_bytes() -> (Vec<u8>, Vec<Frame>) {
    let block = b"\x82\x86\x84\x41\x0fwww.example.com".to_vec();
    let (first, second) = block.split_at(5);
    let mut headers = vec![3]; // pad length
    headers.extend([0x80, 0, 0, 1, 16]); // exclusive dependency on stream 1, weight 16
    headers.extend(first);
    headers.extend([0, 0, 0]);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[0, 1, 0, 0, 0x20, 0, 0, 3, 0, 0, 0, 100]));
    bytes.extend(frame(0x1, 0x8 | 0x20, 3, &headers));
    bytes.extend(frame(0x9, 0x4, 3, second));
    bytes.extend(frame(0x0, 0, 3, &[7; 300]));
    bytes.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
    bytes.extend(frame(0x0, 0x1, 3, &[8; 20]));
    bytes.extend(frame(0x6, 0, 0, &[1; 8]));
    let expected = vec![
        Frame::HeaderTableSize(8192),
        Frame::Block { kind: BlockKind::Headers, stream: 3, block, whole: true, end_stream: false },
        Frame::Data { stream: 3, len: 300, end_stream: false },
        Frame::Data { stream: 3, len: 20, end_stream: true },
    ];
    (bytes, expected)
}

fn read(reader: &mut FrameReader, chunks: &[(&[u8], usize)]) -> Vec<Frame> {
    let mut out = Vec::new();
    for &(data, uncaptured) in chunks {
        reader.feed(data, uncaptured, &mut out);
    }
    out
}

#[test]
fn frames_read_the_same_whole_split_anywhere_and_byte_by_byte() {
    let (bytes, expected) = client_bytes();
    assert_eq!(read(&mut FrameReader::new(true), &[(&bytes, 0)]), expected);
    for cut in 1..bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(read(&mut FrameReader::new(true), &[(a, 0), (b, 0)]), expected, "cut at {cut}");
    }
    let mut reader = FrameReader::new(true);
    let bytes_one_by_one: Vec<(&[u8], usize)> = bytes.chunks(1).map(|c| (c, 0)).collect();
    assert_eq!(read(&mut reader, &bytes_one_by_one), expected);
    assert!(!reader.desynced());
}

#[test]
fn bytes_not_captured_inside_a_data_payload_only_count() {
    let (bytes, expected) = client_bytes();
    // The first DATA frame's payload starts 9 bytes after the CONTINUATION's end.
    let data_at = bytes.windows(4).position(|w| w == [7, 7, 7, 7]).unwrap();
    for captured in 0..300 {
        let cut = data_at + captured;
        let chunks = [(&bytes[..cut], 300 - captured), (&bytes[data_at + 300..], 0)];
        assert_eq!(read(&mut FrameReader::new(true), &chunks), expected, "{captured} bytes captured");
    }
}

#[test]
fn bytes_not_captured_inside_a_header_block_lose_it_and_the_next_frames_still_read() {
    let (bytes, expected) = client_bytes();
    let block_at = bytes.windows(2).position(|w| w == [0x82, 0x86]).unwrap();
    let chunks = [(&bytes[..block_at + 1], 1), (&bytes[block_at + 2..], 0)];
    let frames = read(&mut FrameReader::new(true), &chunks);
    assert_eq!(
        frames[1],
        Frame::Block {
            kind: BlockKind::Headers,
            stream: 3,
            block: Vec::new(),
            whole: false,
            end_stream: false
        }
    );
    assert_eq!(frames[2..], expected[2..]);
}

#[test]
fn bytes_not_captured_where_a_frame_header_is_stop_the_direction() {
    let (bytes, expected) = client_bytes();
    let data_end = bytes.windows(4).position(|w| w == [7, 7, 7, 7]).unwrap() + 300;
    // Uncaptured bytes run past the DATA payload into the WINDOW_UPDATE's header.
    let mut reader = FrameReader::new(true);
    let frames = read(&mut reader, &[(&bytes[..data_end - 10], 14), (&bytes[data_end + 4..], 0)]);
    assert_eq!(frames[..2], expected[..2]);
    assert!(matches!(frames.last(), Some(Frame::Desync(_))), "{frames:?}");
    assert!(reader.desynced());
    assert!(frames.iter().all(|f| !matches!(f, Frame::Data { len: 20, .. })), "nothing is read after");
}

#[test]
fn frames_that_break_the_rules_stop_the_direction() {
    let headers = |stream| frame(0x1, 0, stream, &[0x82]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"PRI * HTTP/1.1\r\n".to_vec(), "not the preface"),
        ([PREFACE, &headers(0)].concat(), "HEADERS on stream 0"),
        ([PREFACE, &frame(0x4, 0, 1, &[])].concat(), "SETTINGS on a stream"),
        ([PREFACE, &headers(1), &frame(0x0, 0, 1, &[1])].concat(), "DATA inside a header block"),
        ([PREFACE, &frame(0x9, 0x4, 1, &[0x82])].concat(), "CONTINUATION outside a block"),
        ([PREFACE, &headers(1), &frame(0x9, 0x4, 3, &[0x82])].concat(), "CONTINUATION of another stream"),
    ];
    for (bytes, what) in cases {
        let frames = read(&mut FrameReader::new(true), &[(&bytes, 0)]);
        assert!(matches!(frames.last(), Some(Frame::Desync(_))), "{what}: {frames:?}");
    }
}

#[test]
fn stream_ends_resets_goaway_and_server_pushes_are_read() {
    let mut bytes = frame(0x1, 0x4 | 0x1, 1, &[0x88]);
    bytes.extend(frame(0x5, 0x4 | 0x8, 1, &[1, 0, 0, 0, 2, 0x82, 0]));
    bytes.extend(frame(0x3, 0, 5, &8u32.to_be_bytes()));
    bytes.extend(frame(0x7, 0, 0, &[0, 0, 0, 7, 0, 0, 0, 2, b'b', b'y', b'e']));
    bytes.extend(frame(0x4, 0x1, 0, &[]));
    let frames = read(&mut FrameReader::new(false), &[(&bytes, 0)]);
    assert_eq!(
        frames,
        vec![
            Frame::Block {
                kind: BlockKind::Headers,
                stream: 1,
                block: vec![0x88],
                whole: true,
                end_stream: true
            },
            Frame::Block {
                kind: BlockKind::PushPromise,
                stream: 1,
                block: vec![0x82],
                whole: true,
                end_stream: false
            },
            Frame::RstStream { stream: 5, code: 8 },
            Frame::GoAway { last_stream: 7, code: 2 },
        ]
    );
}

#[test]
fn a_block_longer_than_the_bound_is_lost_and_memory_stays_bounded() {
    let mut bytes = frame(0x1, 0, 1, &vec![0x82; MAX_BLOCK - 10]);
    bytes.extend(frame(0x9, 0x4, 1, &[0x82; 20]));
    bytes.extend(frame(0x1, 0x4, 3, &[0x82]));
    let mut reader = FrameReader::new(false);
    let mut out = Vec::new();
    for chunk in bytes.chunks(4096) {
        reader.feed(chunk, 0, &mut out);
        assert!(reader.held_bytes() <= 2 * MAX_BLOCK + 8192, "{}", reader.held_bytes());
    }
    assert!(matches!(out[0], Frame::Block { whole: false, stream: 1, .. }), "{:?}", out[0]);
    assert_eq!(
        out[1],
        Frame::Block {
            kind: BlockKind::Headers,
            stream: 3,
            block: vec![0x82],
            whole: true,
            end_stream: false
        }
    );
}
